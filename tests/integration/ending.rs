//! Workers that always end: one that missed the end of its run, one started
//! after the end, and one pointed at a server that is not a coordinator each
//! exit by themselves, with their documented status (docs/operations.md):
//! 0 with `the run is over` logged, 4 the coordinator unreachable, 5 not a
//! coordinator.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::support::*;

/// Bound on a worker's exit once it may exit: a few reconnection attempts
/// (and, for status 4, the 2 s of `--give-up-after` below).
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// What a worker that learns the run completed without it logs; it exits 0.
const RUN_OVER: &str = "the run is over: the coordinator says the run has completed";
const UNREACHABLE: i32 = 4;
const NOT_COORDINATOR: i32 = 5;
const LINGERING: &str = "serving the final metrics (--metrics-linger)";
/// What a coordinator that waits for the workers that missed its run's end logs.
const GRACE: &str = "telling the workers that missed the run's end that it is over (--end-grace)";

/// A coordinator that lingers for long after its run (so its end can be
/// asked for), with `args` after that.
fn lingering_coordinator(out: &std::path::Path, args: &[&str]) -> Coordinator {
    let linger = ["--metrics-bind", "127.0.0.1:0", "--metrics-linger", "300s"];
    let args: Vec<&str> = linger.iter().chain(args).copied().collect();
    start_coordinator(out, "127.0.0.1:0", &args, "info")
}

/// Two workers stopped (SIGSTOP) through the end of their run, dropped by
/// the coordinator (fallen behind, or silent), then continued: the one
/// continued while the coordinator still lingers is told that the run has
/// completed and exits 0 at once, saying so; the one continued after the coordinator
/// exited gives up after `--give-up-after` with status 4. Before, both
/// retried for ever.
#[test]
fn workers_stopped_while_their_run_ends_exit_once_continued() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let args = ["--workers", "3", "--epochs", "3", "--round-timeout", "1s"];
    let mut coordinator = lingering_coordinator(&tmp.path().join("out"), &args);
    let url = format!("http://{}", coordinator.addr);
    let cache = |i: usize| tmp.path().join(format!("cache-{i}"));
    let mut trains = start_worker("trains", &coordinator.addr, &cache(1), "info");
    let mut told = start_worker("told", &coordinator.addr, &cache(2), "info");
    let mut gives_up = worker_command(&url, &cache(3), "info");
    gives_up.args(["--give-up-after", "2s"]);
    let mut gives_up = Proc::spawn("gives-up", gives_up);
    wait_for_match(&mut coordinator.proc, "epoch done", RUN_TIMEOUT, |l| l["epoch"] == 1);

    let stopped = [joined_id(&told), joined_id(&gives_up)];
    told.signal("STOP");
    gives_up.signal("STOP");
    for id in stopped {
        wait_for_match(&mut coordinator.proc, "worker left", RUN_TIMEOUT, |l: &Value| l["worker"] == id);
    }
    wait_for_line(&mut coordinator.proc, LINGERING, RUN_TIMEOUT);
    expect_success(&mut [&mut trains]);

    told.signal("CONT");
    assert_eq!(told.wait(EXIT_TIMEOUT), 0, "{}", told.dump());
    let over = logged(&told, RUN_OVER);
    assert_eq!(over.len(), 1, "{}", told.dump());
    assert_eq!(over[0]["coordinator"].as_str(), Some(url.as_str()), "{}", over[0]);

    coordinator.proc.signal("TERM");
    expect_success(&mut [&mut coordinator.proc]);
    gives_up.signal("CONT");
    expect_exit_within(&mut gives_up, EXIT_TIMEOUT, UNREACHABLE, "coordinator unreachable since ");
    let last = last_line(&gives_up);
    assert!(last.contains("--give-up-after 2s); giving up: cannot reach the coordinator"), "{}", gives_up.dump());
}

/// Without `--metrics-bind` (so without a linger): a worker stopped
/// (SIGSTOP) through the end of its run, dropped by the coordinator, then
/// continued, is told that the run is over and exits 0. The coordinator
/// stays up for `--end-grace` (300 s here) because that worker missed the
/// Stop, and exits as soon as it has been told. Before, the worker found
/// nothing listening and gave up with status 4.
#[test]
fn a_worker_that_missed_the_end_is_told_without_a_linger() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let args = ["--workers", "2", "--epochs", "3", "--round-timeout", "1s", "--end-grace", "300s"];
    let mut coordinator = start_coordinator(&tmp.path().join("out"), "127.0.0.1:0", &args, "info");
    let mut trains = start_worker("trains", &coordinator.addr, &tmp.path().join("cache-1"), "info");
    let mut stopped = start_worker("stopped", &coordinator.addr, &tmp.path().join("cache-2"), "info");
    wait_for_match(&mut coordinator.proc, "epoch done", RUN_TIMEOUT, |l| l["epoch"] == 1);

    let id = joined_id(&stopped);
    stopped.signal("STOP");
    wait_for_match(&mut coordinator.proc, "worker left", RUN_TIMEOUT, |l: &Value| l["worker"] == id);
    let grace = wait_for_line(&mut coordinator.proc, GRACE, RUN_TIMEOUT);
    assert_eq!(grace["workers"], 1, "{grace}");
    expect_success(&mut [&mut trains]);

    stopped.signal("CONT");
    assert_eq!(stopped.wait(EXIT_TIMEOUT), 0, "{}", stopped.dump());
    assert_eq!(logged(&stopped, RUN_OVER).len(), 1, "{}", stopped.dump());
    // Told, it is waited for no longer: the coordinator ends well before its 300 s.
    assert_eq!(coordinator.proc.wait(EXIT_TIMEOUT), 0, "{}", coordinator.proc.dump());
}

/// A worker started after the run completed, while its coordinator still
/// serves (`--metrics-linger`), exits at once with status 0 and says so;
/// before, it retried for ever.
#[test]
fn a_worker_started_after_the_run_completed_exits_at_once() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut coordinator = lingering_coordinator(&tmp.path().join("out"), &["--workers", "1", "--epochs", "1"]);
    let mut worker = start_worker("worker", &coordinator.addr, &tmp.path().join("cache-1"), "info");
    wait_for_line(&mut coordinator.proc, LINGERING, RUN_TIMEOUT);
    expect_success(&mut [&mut worker]);
    // Its one worker read the Stop: no grace is needed (the coordinator
    // lingers for its metrics only).
    assert!(logged(&coordinator.proc, GRACE).is_empty(), "{}", coordinator.proc.dump());

    let mut late = start_worker("late", &coordinator.addr, &tmp.path().join("cache-2"), "info");
    assert_eq!(late.wait(EXIT_TIMEOUT), 0, "{}", late.dump());
    assert_eq!(logged(&late, RUN_OVER).len(), 1, "{}", late.dump());
    assert!(logged(&late, "joined the run").is_empty(), "{}", late.dump());
    // The run itself is not disturbed: the coordinator still lingers, then ends well.
    assert!(coordinator.proc.try_exit_code().is_none(), "{}", coordinator.proc.dump());
    coordinator.proc.signal("TERM");
    expect_success(&mut [&mut coordinator.proc]);
}

/// Python's own `http.server` (HTTP/1 only), bound to a port the OS chose.
fn http1_server() -> (Proc, String) {
    let script = "import http.server, sys\n\
                  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n\
                  print(f'port {server.server_address[1]}', file=sys.stderr, flush=True)\n\
                  server.serve_forever()\n";
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", script]).current_dir(std::env::temp_dir());
    let server = Proc::spawn("http.server", cmd);
    let port = wait_until("http.server to listen", START_TIMEOUT, || {
        server.lines().iter().find_map(|l| l.strip_prefix("port ").map(str::to_owned))
    });
    (server, format!("http://127.0.0.1:{port}"))
}

/// A gRPC server with no lazyavg service (only grpc.health.v1), on a port
/// the OS chose; it serves as long as the runtime lives.
fn grpc_server_without_our_service() -> (tokio::runtime::Runtime, String) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("binding a port");
    let addr = listener.local_addr().expect("local address");
    let (_, health) = tonic_health::server::health_reporter();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    runtime.spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming));
    (runtime, format!("http://{addr}"))
}

/// A worker pointed at a server that is not a lazyavg coordinator names it
/// as such and exits with status 5 without retrying, and without
/// `--give-up-after`: an HTTP/1 server, and a gRPC server without our
/// service. Before, it retried for ever ("the coordinator refused Join:
/// transport error").
#[test]
fn a_worker_pointed_at_a_server_that_is_not_a_coordinator_exits_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_http, http_url) = http1_server();
    let (_grpc, grpc_url) = grpc_server_without_our_service();
    let cases = [
        (http_url, "an HTTP/1 server answered the HTTP/2 preface with \""),
        (grpc_url, "it has no lazyavg.v1.Coordinator service"),
    ];
    for (i, (url, why)) in cases.into_iter().enumerate() {
        let mut worker = Proc::spawn("worker", worker_command(&url, &tmp.path().join(format!("cache-{i}")), "info"));
        let said = format!("{url}: not a lazyavg coordinator: {why}");
        expect_exit_within(&mut worker, EXIT_TIMEOUT, NOT_COORDINATOR, &said);
        assert!(logged(&worker, "no session with the coordinator; retrying").is_empty(), "{}", worker.dump());
    }
}

/// A worker pointed at a port where nothing listens (a mistyped port, or a
/// coordinator not started yet) says so in its first warning: where it
/// tries, since when, the likely cause, and that it waits for ever unless
/// `--give-up-after` says otherwise. Its name is checked before it dials.
#[test]
fn a_worker_where_nothing_listens_says_why_in_its_first_warning() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port to free");
        listener.local_addr().expect("its address").to_string()
    };
    let mut worker = start_worker("lost", &addr, &tmp.path().join("cache"), "info");
    let warning = wait_for_line(&mut worker, "no session with the coordinator; retrying", START_TIMEOUT);
    assert!(warning["coordinator"].as_str().is_some_and(|c| c.contains(&addr)), "{warning}");
    assert!(warning["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{warning}");
    let hint = warning["hint"].as_str().unwrap_or_else(|| panic!("no hint in {warning}"));
    assert!(hint.starts_with("nothing listens at that address"), "{hint}");
    assert!(hint.contains("--give-up-after DURATION"), "{hint}");

    let long_name = "n".repeat(300);
    let mut cmd = worker_command(&format!("http://{addr}"), &tmp.path().join("cache"), "info");
    cmd.args(["--name", &long_name]);
    let mut named = Proc::spawn("long-name", cmd);
    expect_exit(&mut named, 1, "invalid --name: 300 bytes, the coordinator accepts at most 256");
}
