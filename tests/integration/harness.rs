//! Running clusters in tests: starting a coordinator and waiting until it
//! listens, starting workers with empty caches, waiting for log lines and
//! exits, and reading what a run wrote.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::*;

/// Generous bound on a whole run (seconds each on two cores), for slow machines.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on start-up: parsing flags, loading MNIST, binding.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Training set size.
pub const N_TRAIN: u64 = 60_000;
/// Log filter for processes whose debug lines a test reads (only ours: the
/// HTTP/2 stack's debug lines would swamp them).
pub const DEBUG_LOG: &str = "info,lazyavg_coordinator=debug,lazyavg_worker=debug";

/// Held for its whole length by every test that trains: one that starts
/// `lazyavg train` or `lazyavg bench`, or a coordinator whose run gets a
/// worker (spawned or not). Training takes every core it is given, so two such
/// tests at once on a small machine would only slow each other down towards
/// their deadlines. Tests whose processes refuse or fail before any training
/// (bad flags, bad files, a worker with no coordinator, a spawned worker that
/// cannot start) do not take it, and run beside the others.
pub static HEAVY: Mutex<()> = Mutex::new(());

pub fn heavy() -> MutexGuard<'static, ()> {
    // A failed test must not fail the others.
    HEAVY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a coordinator on `bind` writing to `out`, with `args` after the
/// standard ones, and waits until it listens.
pub fn start_coordinator(out: &Path, bind: &str, args: &[&str], rust_log: &str) -> Coordinator {
    spawn_coordinator(coordinator_command(out, bind, args, rust_log), out)
}

/// The command [`start_coordinator`] runs, for tests that add environment
/// variables or flags to it before [`spawn_coordinator`].
pub fn coordinator_command(out: &Path, bind: &str, args: &[&str], rust_log: &str) -> Command {
    let mut cmd = lazyavg();
    cmd.args(["--log-format", "json", "coordinator", "--bind", bind, "--data-dir"])
        .arg(mnist_dir())
        .arg("--out")
        .arg(out)
        .args(args)
        .env("RUST_LOG", rust_log);
    cmd
}

/// Starts a one-machine run (`--spawn-workers` among `args`) writing to
/// `out`, whose local workers cache the training set in `cache`; does not wait.
pub fn spawn_local_run(out: &Path, args: &[&str], cache: &Path) -> Proc {
    let mut cmd = coordinator_command(out, "127.0.0.1:0", args, "info");
    cmd.env("LAZYAVG_CACHE_DIR", cache);
    Proc::spawn("coordinator", cmd)
}

/// Starts the coordinator `cmd` (which writes to `out`) and waits until it listens.
pub fn spawn_coordinator(cmd: Command, out: &Path) -> Coordinator {
    let mut proc = Proc::spawn("coordinator", cmd);
    let listening = wait_for_line(&mut proc, "listening", START_TIMEOUT);
    let addr = listening["addr"].as_str().unwrap_or_else(|| panic!("no addr in {listening}")).to_owned();
    Coordinator { proc, addr, out: out.to_owned() }
}

pub struct Coordinator {
    pub proc: Proc,
    /// `IP:PORT` it listens on.
    pub addr: String,
    pub out: PathBuf,
}

/// Starts a worker for the coordinator at `addr` with `cache` as its cache directory.
pub fn start_worker(name: &str, addr: &str, cache: &Path, rust_log: &str) -> Proc {
    Proc::spawn(name, worker_command(&format!("http://{addr}"), cache, rust_log))
}

/// The command [`start_worker`] runs, for the coordinator at `url`
/// (`http://` or `https://`), for tests that add flags to it.
pub fn worker_command(url: &str, cache: &Path, rust_log: &str) -> Command {
    fs::create_dir_all(cache).expect("creating the cache directory");
    let mut cmd = lazyavg();
    cmd.args(["--log-format", "json", "worker", "--coordinator", url])
        .env("LAZYAVG_CACHE_DIR", cache)
        .env("RUST_LOG", rust_log)
        .env_remove("LAZYAVG_COORDINATOR")
        .env_remove("LAZYAVG_WORKER_NAME");
    cmd
}

/// A port on 127.0.0.1 that was free a moment ago (the OS chose it), as
/// `127.0.0.1:PORT`, for a coordinator that must listen there again after a restart.
pub fn reserve_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("reserving a port");
    format!("127.0.0.1:{}", listener.local_addr().expect("local address").port())
}

/// Starts workers `<name>-1` to `<name>-<n>` for the coordinator at `addr`;
/// worker `i` caches in `<dir>/cache-<i>`.
pub fn start_workers(name: &str, n: usize, addr: &str, dir: &Path, rust_log: &str) -> Vec<Proc> {
    (1..=n).map(|i| start_worker(&format!("{name}-{i}"), addr, &dir.join(format!("cache-{i}")), rust_log)).collect()
}

/// The JSON log lines of `proc` whose message is `message`.
pub fn logged(proc: &Proc, message: &str) -> Vec<Value> {
    proc.json_lines().into_iter().filter(|line| line["message"] == message).collect()
}

/// Waits until `proc` logs `message` and returns that line; fails at once if
/// the process exits first.
pub fn wait_for_line(proc: &mut Proc, message: &str, timeout: Duration) -> Value {
    wait_for_match(proc, message, timeout, |_| true)
}

/// Waits until `proc` logs `message` in a line for which `matches` holds and
/// returns the first such line; fails at once if the process exits first.
pub fn wait_for_match(proc: &mut Proc, message: &str, timeout: Duration, matches: impl Fn(&Value) -> bool) -> Value {
    let what = format!("{} to log {message:?}", proc.name);
    let find = |proc: &Proc| logged(proc, message).into_iter().find(|line| matches(line));
    let found = wait_until(&what, timeout, || match find(proc) {
        Some(line) => Some(Some(line)),
        None => proc.try_exit_code().map(|_| None),
    });
    if let Some(line) = found {
        return line;
    }
    // It exited; its last lines may only now have been read.
    let code = proc.wait(Duration::from_secs(10));
    find(proc).unwrap_or_else(|| panic!("{} exited with {code} before logging {message:?}\n{}", proc.name, proc.dump()))
}

/// Waits until every process has exited and asserts that each exited with 0.
/// Fails as soon as one exits otherwise (a crashed worker would leave the
/// coordinator waiting until the deadline), showing everyone's output.
pub fn expect_success(procs: &mut [&mut Proc]) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let codes: Vec<Option<i32>> = procs.iter_mut().map(|p| p.try_exit_code()).collect();
        if codes.iter().all(Option::is_some) || codes.iter().any(|c| c.is_some_and(|c| c != 0)) {
            break;
        }
        if Instant::now() >= deadline {
            let running: Vec<&str> =
                procs.iter().zip(&codes).filter(|(_, c)| c.is_none()).map(|(p, _)| p.name.as_str()).collect();
            panic!("still running after {RUN_TIMEOUT:?}: {running:?}\n{}", dumps(procs));
        }
        thread::sleep(Duration::from_millis(50));
    }
    let mut failures = Vec::new();
    for proc in procs.iter_mut() {
        // Reads the rest of the output of those that exited; the others are killed on drop.
        match proc.try_exit_code() {
            Some(_) => {
                let code = proc.wait(Duration::from_secs(10));
                if code != 0 {
                    failures.push(format!("{} exited with {code}", proc.name));
                }
            }
            None => failures.push(format!("{} was still running", proc.name)),
        }
    }
    assert!(failures.is_empty(), "{}\n{}", failures.join("; "), dumps(procs));
}

/// The last line a process wrote (its `lazyavg: ...` error line when it failed).
pub fn last_line(proc: &Proc) -> String {
    proc.lines().last().cloned().unwrap_or_default()
}

/// Asserts that `proc` exits with `expected` and its last line names `needle`.
pub fn expect_exit(proc: &mut Proc, expected: i32, needle: &str) {
    expect_exit_within(proc, RUN_TIMEOUT, expected, needle)
}

/// [`expect_exit`] within `timeout`.
pub fn expect_exit_within(proc: &mut Proc, timeout: Duration, expected: i32, needle: &str) {
    let code = proc.wait(timeout);
    assert_eq!(code, expected, "{} exited with {code}\n{}", proc.name, proc.dump());
    let last = last_line(proc);
    assert!(
        last.starts_with("lazyavg: ") && last.contains(needle),
        "{} did not end with {needle:?}\n{}",
        proc.name,
        proc.dump()
    );
}

pub fn dumps(procs: &[&mut Proc]) -> String {
    procs.iter().map(|p| p.dump()).collect::<Vec<_>>().join("\n")
}

/// A finished run: a coordinator and its workers, all exited 0.
pub struct Run {
    pub _tmp: tempfile::TempDir,
    pub coordinator: Coordinator,
    pub workers: Vec<Proc>,
    /// Each worker's cache directory, empty when it started.
    pub caches: Vec<PathBuf>,
}

/// Runs a coordinator with `args` (and `--workers N`) and `workers` workers
/// with empty caches to completion; every process must exit 0.
pub fn run_cluster(workers: usize, args: &[&str], rust_log: &str) -> Run {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = workers.to_string();
    let all_args: Vec<&str> = ["--workers", n.as_str()].into_iter().chain(args.iter().copied()).collect();
    let mut coordinator = start_coordinator(&tmp.path().join("out"), "127.0.0.1:0", &all_args, rust_log);
    let caches: Vec<PathBuf> = (1..=workers).map(|i| tmp.path().join(format!("cache-{i}"))).collect();
    let mut workers: Vec<Proc> = caches
        .iter()
        .enumerate()
        .map(|(i, cache)| start_worker(&format!("worker-{}", i + 1), &coordinator.addr, cache, rust_log))
        .collect();
    let mut procs: Vec<&mut Proc> = std::iter::once(&mut coordinator.proc).chain(workers.iter_mut()).collect();
    expect_success(&mut procs);
    Run { _tmp: tmp, coordinator, workers, caches }
}

/// The epoch records of `<out>/metrics.jsonl`.
pub fn epoch_metrics(out: &Path) -> Vec<Value> {
    let path = out.join("metrics.jsonl");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?} in {}: {e}", path.display())))
        .filter(|record| record["kind"] == "epoch")
        .collect()
}

pub fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A raw little-endian f32 file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(bytes.len() % 4, 0, "{} is not a whole number of f32", path.display());
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn f64_field(line: &Value, field: &str) -> f64 {
    line[field].as_f64().unwrap_or_else(|| panic!("no number {field} in {line}"))
}

pub fn u64_field(line: &Value, field: &str) -> u64 {
    line[field].as_u64().unwrap_or_else(|| panic!("no integer {field} in {line}"))
}

/// The worker id a worker process was given (its first "joined the run").
pub fn joined_id(worker: &Proc) -> u64 {
    logged(worker, "joined the run")
        .first()
        .map(|l| u64_field(l, "worker"))
        .unwrap_or_else(|| panic!("{} has not joined\n{}", worker.name, worker.dump()))
}

/// The lines of `proc` logging `message` for worker `id`.
pub fn about_worker(proc: &Proc, message: &str, id: u64) -> Vec<Value> {
    logged(proc, message).into_iter().filter(|l| l["worker"] == id).collect()
}

/// Samples trained by `name` in an epoch record (0 when it trained nothing).
pub fn samples_of(epoch: &Value, name: &str) -> u64 {
    epoch["samples_by_worker"].get(name).and_then(Value::as_u64).unwrap_or(0)
}

/// Asserts that each epoch record used exactly `images` distinct images, each once.
pub fn assert_each_image_once(epoch: &Value, images: u64) {
    assert_eq!(u64_field(epoch, "samples"), images, "samples: {epoch}");
    assert_eq!(u64_field(epoch, "distinct_images"), images, "distinct images: {epoch}");
    assert_eq!(u64_field(epoch, "repeated_images"), 0, "repeated images: {epoch}");
    let by_worker: u64 =
        epoch["samples_by_worker"].as_object().expect("samples_by_worker").values().filter_map(Value::as_u64).sum();
    assert_eq!(by_worker, images, "samples_by_worker does not add up: {epoch}");
}

/// Milliseconds (0..=max) from the clock's nanoseconds: a fresh point each run.
pub fn clock_millis(max: u32) -> u64 {
    u64::from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").subsec_nanos() % (max + 1))
}

/// A finished run of a coordinator with `--workers 3` and `args` in which
/// the second worker was SIGKILLed early in epoch 2; the coordinator and the
/// other two workers exited 0.
pub struct KilledRun {
    pub _tmp: tempfile::TempDir,
    pub coordinator: Coordinator,
    /// The killed worker (reaped) and its worker id.
    pub victim: Proc,
    pub victim_id: u64,
}

/// Runs three workers with `args`, kills the second once epoch 1 is done
/// (its line comes a few rounds into epoch 2) and a random 0–300 ms more
/// have passed, and waits for the rest to finish.
pub fn run_three_killing_one_in_epoch_2(args: &[&str]) -> KilledRun {
    let tmp = tempfile::tempdir().expect("tempdir");
    let all_args: Vec<&str> = ["--workers", "3"].into_iter().chain(args.iter().copied()).collect();
    let mut coordinator = start_coordinator(&tmp.path().join("out"), "127.0.0.1:0", &all_args, "info");
    let mut workers = start_workers("worker", 3, &coordinator.addr, tmp.path(), "info");
    wait_for_match(&mut coordinator.proc, "epoch done", Duration::from_secs(60), |l| l["epoch"] == 1);
    let delay = Duration::from_millis(clock_millis(300));
    eprintln!("killing {} {delay:?} after epoch 1", workers[1].name);
    thread::sleep(delay);
    let mut victim = workers.remove(1);
    let victim_id = joined_id(&victim);
    victim.signal("KILL");
    assert_eq!(victim.wait(Duration::from_secs(10)), -1, "killed by a signal");
    let mut procs: Vec<&mut Proc> = std::iter::once(&mut coordinator.proc).chain(workers.iter_mut()).collect();
    expect_success(&mut procs);
    KilledRun { _tmp: tmp, coordinator, victim, victim_id }
}

/// The address the coordinator serves `/metrics` on (its "serving metrics" line).
pub fn metrics_addr(coordinator: &Proc) -> String {
    let line = logged(coordinator, "serving metrics").into_iter().next();
    let line = line.unwrap_or_else(|| panic!("no \"serving metrics\" line\n{}", coordinator.dump()));
    line["addr"].as_str().unwrap_or_else(|| panic!("no addr in {line}")).to_owned()
}

/// `GET path` on `addr` over plain HTTP/1.0 (no chunked replies to decode)
/// accepting `accept`: the status
/// code and body, or `None` if the server cannot be reached (not up yet, or gone).
pub fn http_get(addr: &str, path: &str, accept: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// One scrape of `/metrics` in the classic text format, if the server answers.
pub fn scrape(addr: &str) -> Option<String> {
    scrape_as(addr, "*/*")
}

pub fn scrape_as(addr: &str, accept: &str) -> Option<String> {
    match http_get(addr, "/metrics", accept)? {
        (200, body) => Some(body),
        (code, body) => panic!("/metrics answered {code}: {body}"),
    }
}

/// The samples of `name` in an exposition: (labels as written, value).
pub fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let value = value.split_whitespace().next()?.parse().ok()?;
            Some((labels.to_owned(), value))
        })
        .collect()
}

/// The value of the unlabelled sample `name`.
pub fn value(text: &str, name: &str) -> Option<f64> {
    samples(text, name).into_iter().find(|(labels, _)| labels.is_empty()).map(|(_, v)| v)
}
