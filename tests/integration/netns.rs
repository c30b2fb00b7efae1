//! Separate hosts: the coordinator and three workers each in a network
//! namespace of their own, joined by veth pairs to one bridge, each with its
//! own address. One worker's link is cut for longer than the round timeout
//! and then restored: training goes on meanwhile and the worker rejoins.
//!
//! Creating namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); where
//! the kernel refuses, the test says why and skips. Everything it creates is
//! named after this process's id and removed when the test ends, pass or fail.

use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::harness::*;
use crate::support::*;

/// How long the worker's link stays down: well past the round timeout (1 s),
/// well short of the HTTP/2 keepalive that would drop its session (15 s).
const CUT: Duration = Duration::from_secs(3);

/// The namespaces, veth pairs and bridge of one test network.
struct TestNetwork {
    tag: String,
    hosts: Vec<String>,
}

impl TestNetwork {
    /// Creates `hosts` namespaces on subnet 10.77.<k>.0/24, host `i` at
    /// 10.77.<k>.<10 + i>. Returns the reason on failure (after cleaning up).
    fn create(hosts: usize) -> Result<TestNetwork, String> {
        let tag = format!("{}", std::process::id() % 100_000);
        let net = TestNetwork { hosts: (0..hosts).map(|i| format!("lza{tag}h{i}")).collect(), tag };
        net.ip(&["link", "add", &net.bridge(), "type", "bridge"])?;
        net.ip(&["link", "set", &net.bridge(), "up"])?;
        for (i, host) in net.hosts.iter().enumerate() {
            let (inside, outside) = (format!("lzi{}h{i}", net.tag), net.peer(i));
            net.ip(&["netns", "add", host])?;
            net.ip(&["link", "add", &inside, "type", "veth", "peer", "name", &outside])?;
            net.ip(&["link", "set", &inside, "netns", host])?;
            net.ip(&["link", "set", &outside, "master", &net.bridge(), "up"])?;
            net.ip(&["-n", host, "addr", "add", &format!("{}/24", net.addr(i)), "dev", &inside])?;
            net.ip(&["-n", host, "link", "set", &inside, "up"])?;
            net.ip(&["-n", host, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("lzb{}", self.tag)
    }

    /// The root-namespace end of host `i`'s cable.
    fn peer(&self, i: usize) -> String {
        format!("lzo{}h{i}", self.tag)
    }

    fn addr(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.tag.parse::<u32>().unwrap_or(0) % 250, 10 + i)
    }

    /// Runs `ip ARGS`; an error carries what `ip` said.
    fn ip(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }

    /// `lazyavg ARGS` inside host `i`.
    fn lazyavg(&self, i: usize, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[i], env!("CARGO_BIN_EXE_lazyavg")]).args(args);
        cmd
    }

    /// Unplugs (`false`) or plugs back (`true`) host `i`'s cable.
    fn set_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.ip(&["link", "set", &self.peer(i), state]).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth pair with it.
        for host in &self.hosts {
            let _ = self.ip(&["netns", "del", host]);
        }
        let _ = self.ip(&["link", "del", &self.bridge()]);
    }
}

#[test]
fn a_worker_whose_link_is_cut_rejoins_while_training_goes_on() {
    let _heavy = heavy();
    let net = match TestNetwork::create(4) {
        Ok(net) => net,
        Err(why) => {
            eprintln!(
                "SKIPPED a_worker_whose_link_is_cut_rejoins_while_training_goes_on: the kernel refused a test network ({why})"
            );
            return;
        }
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let bind = format!("{}:0", net.addr(0));
    let mut coordinator_command = net.lazyavg(
        0,
        &[
            "--log-format",
            "json",
            "coordinator",
            "--insecure",
            "--workers",
            "3",
            "--epochs",
            "10",
            "--round-timeout",
            "1s",
            "--bind",
            &bind,
            "--data-dir",
            &mnist_dir().display().to_string(),
            "--out",
            &out.display().to_string(),
        ],
    );
    // Debug lines: "round averaged", the evidence that training went on.
    coordinator_command.env("RUST_LOG", DEBUG_LOG);
    let mut coordinator = Proc::spawn("coordinator", coordinator_command);
    let listening = wait_for_line(&mut coordinator, "listening", START_TIMEOUT);
    let addr = listening["addr"].as_str().expect("addr").to_owned();
    assert!(addr.starts_with(&net.addr(0)), "the coordinator listens on its own host's address: {addr}");
    let mut workers: Vec<Proc> = (1..=3)
        .map(|i| {
            let cache = tmp.path().join(format!("cache-{i}"));
            let mut cmd =
                net.lazyavg(i, &["--log-format", "json", "worker", "--coordinator", &format!("http://{addr}")]);
            cmd.env("LAZYAVG_CACHE_DIR", &cache).env("LAZYAVG_WORKER_NAME", format!("host-{i}"));
            Proc::spawn(&format!("host-{i}"), cmd)
        })
        .collect();
    for worker in &mut workers {
        wait_for_line(worker, "joined the run", START_TIMEOUT);
    }
    wait_for_line(&mut coordinator, "epoch done", RUN_TIMEOUT);

    net.set_link(3, false);
    let missed =
        wait_for_line(&mut coordinator, "worker missed the round deadline; closing the round without it", RUN_TIMEOUT);
    assert_eq!(missed["name"], "host-3", "{missed}");
    thread::sleep(CUT);
    // The rounds the other two averaged after the one that dropped host-3,
    // while its link was still down: logged by the averaging, not by the
    // close that dropped it.
    let position = |line: &serde_json::Value| (u64_field(line, "epoch"), u64_field(line, "round"));
    let rounds_during_cut: Vec<serde_json::Value> = logged(&coordinator, "round averaged")
        .into_iter()
        .filter(|round| position(round) > position(&missed))
        .collect();
    net.set_link(3, true);

    let mut procs: Vec<&mut Proc> = std::iter::once(&mut coordinator).chain(workers.iter_mut()).collect();
    expect_success(&mut procs);
    assert!(!rounds_during_cut.is_empty(), "training went on while host-3 was cut off\n{}", coordinator.dump());
    for round in &rounds_during_cut {
        assert_eq!(u64_field(round, "contributors"), 2, "a round averaged without host-3: {round}");
    }
    let epochs = epoch_metrics(&out);
    assert_eq!(epochs.len(), 10);
    for epoch in &epochs {
        assert_eq!(u64_field(epoch, "distinct_images"), N_TRAIN, "{epoch}");
        assert_eq!(u64_field(epoch, "repeated_images"), 0, "{epoch}");
    }
    let last = epochs.last().expect("epochs");
    assert!(
        last["samples_by_worker"]["host-3"].as_u64().is_some_and(|n| n > 0),
        "host-3 trained again after its link came back: {last}"
    );
}
