//! `lazyavg status`: a real 3-worker run behind a token, looked at from
//! outside; a worker SIGSTOPped mid-run is shown late before the round's
//! deadline drops it.

use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::harness::*;
use crate::support::*;

/// Far beyond how long the stopped worker's line takes to say "late".
const ROUND_TIMEOUT: &str = "30s";

/// Runs `lazyavg status` once against `addr`, with `token_file` if given.
fn status(addr: &str, token_file: Option<&Path>) -> Output {
    let mut cmd = lazyavg();
    cmd.args(["status", "--coordinator", &format!("http://{addr}")])
        .env_remove("LAZYAVG_TOKEN")
        .env_remove("LAZYAVG_TOKEN_FILE")
        .env_remove("LAZYAVG_COORDINATOR");
    if let Some(file) = token_file {
        cmd.arg("--token-file").arg(file);
    }
    cmd.output().expect("running lazyavg status")
}

/// The screen, asserting the command succeeded.
fn screen(addr: &str, token_file: &Path) -> String {
    let output = status(addr, Some(token_file));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "lazyavg status failed: {stderr}");
    String::from_utf8(output.stdout).expect("UTF-8 screen")
}

/// The state column of `worker`'s line.
fn state_of<'a>(screen: &'a str, worker: &str) -> Option<&'a str> {
    let line = screen.lines().find(|l| l.split_whitespace().next() == Some(worker))?;
    line.split_whitespace().nth(2)
}

#[test]
fn status_shows_every_worker_and_a_stopped_one_as_late_within_the_round_timeout() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let token = tmp.path().join("token");
    fs::write(&token, "lazyavg-status-test-token\n").expect("writing the token");
    let token_arg = token.to_str().expect("UTF-8 path");
    // Stopped below, long before its end.
    let args = ["--workers", "3", "--epochs", "100000", "--hidden", "16", "--round-timeout", ROUND_TIMEOUT];
    let mut cmd = coordinator_command(&tmp.path().join("out"), "127.0.0.1:0", &args, "info");
    cmd.args(["--token-file", token_arg]).env_remove("LAZYAVG_TOKEN").env_remove("LAZYAVG_TOKEN_FILE");
    let mut coordinator = spawn_coordinator(cmd, &tmp.path().join("out"));
    let url = format!("http://{}", coordinator.addr);
    let mut workers: Vec<Proc> = (1..=3)
        .map(|i| {
            let name = format!("worker-{i}");
            let mut cmd = worker_command(&url, &tmp.path().join(format!("cache-{i}")), "info");
            cmd.args(["--name", &name, "--token-file", token_arg]).env_remove("LAZYAVG_TOKEN");
            Proc::spawn(&name, cmd)
        })
        .collect();
    wait_for_line(&mut coordinator.proc, "epoch done", RUN_TIMEOUT);

    let first = screen(&coordinator.addr, &token);
    assert!(first.contains("test accuracy ") && !first.contains("not evaluated yet"), "{first}");
    for i in 1..=3 {
        let state = state_of(&first, &format!("worker-{i}"));
        assert!(matches!(state, Some("training" | "answering")), "worker-{i}: {state:?}\n{first}");
    }
    // The token is required, as for every call.
    let refused = status(&coordinator.addr, None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("token"), "without the token: {stderr}");

    workers[1].signal("STOP");
    let stopped = std::time::Instant::now();
    let late = wait_until("worker-2 to be shown late", Duration::from_secs(20), || {
        let screen = screen(&coordinator.addr, &token);
        (state_of(&screen, "worker-2") == Some("late")).then_some(screen)
    });
    eprintln!("late after {:?}:\n{late}", stopped.elapsed());
    assert!(
        logged(&coordinator.proc, "worker missed the round deadline; closing the round without it").is_empty(),
        "shown late only after the deadline dropped it\n{}",
        coordinator.proc.dump()
    );
    for other in ["worker-1", "worker-3"] {
        assert_ne!(state_of(&late, other), Some("late"), "{late}");
    }
    workers[1].signal("CONT");
    coordinator.proc.signal("INT");
    coordinator.proc.wait(RUN_TIMEOUT);
}
