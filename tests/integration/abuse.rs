//! Clients that try to exhaust the coordinator during a real 2-worker run,
//! with a gRPC client of our own: a flood of Joins with long names, Joins
//! that never attach, sessions that never attach, and sessions that attach
//! and then neither read nor answer. Each is refused or forgotten; the
//! coordinator's resident memory (`VmRSS` of `/proc/<pid>/status`) stays
//! bounded, and the real workers' run completes as usual.

use std::fs;
use std::thread;
use std::time::Duration;

use lazyavg_proto::pb;
use lazyavg_proto::pb::worker_message::Kind as Reply;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::faults::{Client, connect, join};
use crate::harness::*;
use crate::support::*;

/// Bound on the coordinator's growth while it is abused.
const MEBIBYTE: u64 = 1 << 20;
/// How long a session that never attaches may wait for its answer: five
/// times the `--attach-timeout` given.
const IDLE_SESSION_BOUND: Duration = Duration::from_secs(10);
/// The `--max-sessions` of the stalled sessions' test (the default for 2 workers).
const SESSION_CAP: u64 = 64;
/// Bound on anything that happens within an epoch or two.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Resident memory of process `pid`, in bytes; `None` once it has exited.
fn read_rss(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?;
    kb.parse::<u64>().ok().map(|kb| kb * 1024)
}

fn rss(pid: u32) -> u64 {
    read_rss(pid).unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The resident memory of a process from now on: where it started, and the
/// highest value seen, sampled every 10 ms until [`RssWatch::peak`].
struct RssWatch {
    start: u64,
    stop: Arc<AtomicBool>,
    sampler: thread::JoinHandle<u64>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let sampler = thread::spawn(move || {
            let mut peak = 0;
            while !stopped.load(Ordering::Relaxed) {
                peak = peak.max(read_rss(pid).unwrap_or(0));
                thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        RssWatch { start: rss(pid), stop, sampler }
    }

    /// Ends the sampling; the highest value seen.
    fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.sampler.join().expect("the RSS watcher")
    }
}

/// A real 2-worker run of 3 epochs with `args` added, once its coordinator
/// has logged `ready` in a line for which `matches` holds; its directory
/// lives as long as the returned guard.
fn two_worker_run(
    epochs: &str,
    args: &[&str],
    ready: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> (tempfile::TempDir, Coordinator, Vec<Proc>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let args = [&["--workers", "2", "--epochs", epochs], args].concat();
    let mut coordinator = start_coordinator(&out, "127.0.0.1:0", &args, "info");
    let workers = start_workers("worker", 2, &coordinator.addr, tmp.path(), "info");
    wait_for_match(&mut coordinator.proc, ready, EVENT_TIMEOUT, matches);
    (tmp, coordinator, workers)
}

/// The test's own async runtime, for its gRPC clients.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A session whose request stream stays open and silent: `first` (if any)
/// is its only message. Resolves with the coordinator's answer to it.
async fn open_session(
    client: &mut Client,
    first: Option<Reply>,
) -> (Result<tonic::Streaming<pb::CoordinatorMessage>, Status>, mpsc::Sender<pb::WorkerMessage>) {
    let (outbox, replies) = mpsc::channel(1);
    if let Some(kind) = first {
        outbox
            .send(pb::WorkerMessage { kind: Some(kind), ..Default::default() })
            .await
            .expect("the request stream is open");
    }
    let answer = client.session(ReceiverStream::new(replies)).await.map(tonic::Response::into_inner);
    (answer, outbox)
}

/// The codes of `results`, counted.
fn tally(results: impl IntoIterator<Item = Code>) -> Vec<(Code, usize)> {
    let mut counts: Vec<(Code, usize)> = Vec::new();
    for code in results {
        match counts.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => counts.push((code, 1)),
        }
    }
    counts
}

fn count(counts: &[(Code, usize)], code: Code) -> usize {
    counts.iter().find(|(c, _)| *c == code).map_or(0, |(_, n)| *n)
}

/// What the flood of [`flood`] got back.
#[derive(Debug)]
struct Flood {
    long_names: Vec<(Code, usize)>,
    long_name_message: String,
    short_names: Vec<(Code, usize)>,
    /// A Join right after the flood of Joins, as a worker reconnecting then would.
    join_after: Code,
    idle_sessions: Vec<(Code, usize)>,
    /// An id whose Join was accepted, attached after the deadline.
    late_attach: Code,
}

/// 10,000 Joins with 4 KB names, 1,000 with short names that never attach,
/// and 500 sessions that never send Attach, each batch from 8 connections.
async fn flood(addr: &str) -> Flood {
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(connect(addr).await);
    }
    let long = "n".repeat(4096);
    let mut joins = JoinSet::new();
    for client in &clients {
        let (mut client, long) = (client.clone(), long.clone());
        joins.spawn(async move {
            let mut refused = Vec::new();
            for _ in 0..10_000 / 8 {
                refused.push(join(&mut client, lazyavg_proto::PROTOCOL_VERSION, &long).await.map(|_| ()));
            }
            refused
        });
    }
    let long_results: Vec<Result<(), Status>> = joins.join_all().await.into_iter().flatten().collect();
    let long_name_message =
        long_results.iter().find_map(|r| r.as_ref().err()).map(|s| s.message().to_owned()).unwrap_or_default();
    let long_names = tally(long_results.iter().map(|r| r.as_ref().map_or_else(Status::code, |()| Code::Ok)));

    let mut short = Vec::new();
    for i in 0..1000 {
        short.push(join(&mut clients[i % 8], lazyavg_proto::PROTOCOL_VERSION, &format!("never-attaches-{i}")).await);
    }
    let accepted = short.iter().find_map(|r| r.as_ref().ok().copied()).expect("some short Join was accepted");
    let join_after = join(&mut clients[0], lazyavg_proto::PROTOCOL_VERSION, "reconnecting")
        .await
        .map_or_else(|s| s.code(), |_| Code::Ok);
    let short_names = tally(short.iter().map(|r| r.as_ref().map_or_else(Status::code, |_| Code::Ok)));

    let mut sessions = JoinSet::new();
    for i in 0..500 {
        let mut client = clients[i % 8].clone();
        sessions.spawn(async move {
            // Still open well past the deadline counts as `Ok`, and fails the test.
            match tokio::time::timeout(IDLE_SESSION_BOUND, open_session(&mut client, None)).await {
                Ok((answer, _silent)) => answer.map_or_else(|s| s.code(), |_| Code::Ok),
                Err(_) => Code::Ok,
            }
        });
    }
    let idle_sessions = tally(sessions.join_all().await);
    // The sessions' deadline has passed, and so has the Joins'.
    let (late, _outbox) =
        open_session(&mut clients[0], Some(Reply::Attach(pb::Attach { worker_id: accepted, shared_memory: false })))
            .await;
    Flood {
        long_names,
        long_name_message,
        short_names,
        join_after,
        idle_sessions,
        late_attach: late.map_or_else(|s| s.code(), |_| Code::Ok),
    }
}

#[test]
fn floods_of_joins_and_idle_sessions_take_bounded_memory_that_the_next_flood_reuses() {
    let _heavy = heavy();
    let args = ["--attach-timeout", "2s"];
    // Measured from the end of the first epoch, when the rounds' own buffers
    // are in place (they took 4.5–7.5 MB when measured from the workers'
    // joining), and long enough to outlast three floods.
    let (_tmp, mut coordinator, mut workers) = two_worker_run("16", &args, "epoch done", |l| l["epoch"] == 1);
    let pid = coordinator.proc.pid();
    let start = rss(pid);
    let runtime = runtime();
    let mut peaks = Vec::new();
    for _ in 0..3 {
        let watch = RssWatch::start(pid);
        assert_refused_or_forgotten(&runtime.block_on(flood(&coordinator.addr)));
        peaks.push(watch.peak());
    }
    drop(runtime);
    eprintln!("coordinator RSS: start {start}, each flood's peak {peaks:?} bytes");

    // glibc keeps what a flood took for later (measured with the
    // coordinator's one arena: 4–11 MiB after the first flood, 0–2.4 more
    // after each of the next two, 7–10 MiB in all after eight, the last
    // three adding nothing): what clients can take is bounded, however
    // often they try.
    assert!(peaks.iter().all(|&peak| peak < start + 28 * MEBIBYTE), "grew from {start} to {peaks:?} bytes");
    assert!(peaks[2] < peaks[1] + 4 * MEBIBYTE, "a third flood still grew the coordinator: {peaks:?} bytes");

    assert_the_run_completes_as_usual(&mut coordinator, &mut workers, 16);
    // One summary line per kind of refusal and 10 s, not one per client.
    let refusals = logged(&coordinator.proc, "refused a client");
    assert!((2..=30).contains(&refusals.len()), "{refusals:?}");
}

/// What the coordinator answers a [`flood`]: each kind refused or forgotten,
/// with room kept for a worker joining right after it.
fn assert_refused_or_forgotten(flood: &Flood) {
    assert_eq!(flood.long_names, [(Code::InvalidArgument, 10_000)], "{flood:?}");
    assert!(flood.long_name_message.contains("4096 bytes; the limit is 256"), "{flood:?}");
    // Past the default cap on pending Joins (64) the oldest pending one makes
    // room: the coordinator keeps 64, and a worker joining right after the
    // flood is not kept out.
    assert_eq!(flood.short_names, [(Code::Ok, 1000)], "{flood:?}");
    assert_eq!(flood.join_after, Code::Ok, "{flood:?}");
    // The default cap on sessions (64, two of them the real workers'): the
    // rest are refused at once, those admitted closed at the deadline.
    let closed = count(&flood.idle_sessions, Code::DeadlineExceeded);
    assert!((1..=62).contains(&closed), "{flood:?}");
    assert_eq!(closed + count(&flood.idle_sessions, Code::ResourceExhausted), 500, "{flood:?}");
    assert_eq!(flood.late_attach, Code::FailedPrecondition, "a Join past its deadline was kept: {flood:?}");
}

/// What [`stalled_sessions`] got back.
#[derive(Debug)]
struct Stalled {
    /// Ids of the sessions admitted.
    attached: Vec<u64>,
    refused: Vec<(Code, usize)>,
}

/// A client whose HTTP/2 windows are the protocol's smallest default
/// (64 KiB): an unread stream takes no more than that from the coordinator,
/// which keeps the rest of what it sends, as for a client that stopped
/// reading its socket.
async fn connect_narrow(addr: &str) -> Client {
    const NARROW: u32 = 65_535;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .initial_stream_window_size(NARROW)
        .initial_connection_window_size(NARROW)
        .connect()
        .await
        .expect("connecting to the coordinator");
    Client::new(channel)
}

/// 200 clients that Join, Attach, and then neither read nor answer, each on
/// a connection of its own (a stalled stream would stall the unary calls of
/// a shared one) with narrow windows; returns once every one has its answer,
/// keeping the admitted sessions open (unread) until `release` resolves.
async fn stalled_sessions(addr: &str, release: tokio::sync::oneshot::Receiver<()>, report: mpsc::Sender<Stalled>) {
    let mut attached = Vec::new();
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for i in 0..200 {
        let mut client = connect_narrow(addr).await;
        let id = match join(&mut client, lazyavg_proto::PROTOCOL_VERSION, &format!("stalled-{i}")).await {
            Ok(id) => id,
            Err(status) => {
                refused.push(status.code());
                continue;
            }
        };
        match open_session(&mut client, Some(Reply::Attach(pb::Attach { worker_id: id, shared_memory: false }))).await {
            (Ok(unread), outbox) => {
                attached.push(id);
                held.push((unread, outbox, client));
            }
            (Err(status), _) => refused.push(status.code()),
        }
    }
    report.send(Stalled { attached, refused: tally(refused) }).await.expect("the test waits for the report");
    let _ = release.await;
    drop(held);
}

#[test]
fn sessions_that_never_read_nor_answer_are_dropped_at_the_round_deadline() {
    let _heavy = heavy();
    // From a steady state: an epoch trained, evaluated and checkpointed.
    let cap = SESSION_CAP.to_string();
    let args = ["--round-timeout", "1s", "--max-sessions", &cap];
    let (_tmp, mut coordinator, mut workers) = two_worker_run("3", &args, "epoch done", |l| l["epoch"] == 1);
    let pid = coordinator.proc.pid();
    let watch = RssWatch::start(pid);
    let start = watch.start;
    let runtime = runtime();
    let (release, released) = tokio::sync::oneshot::channel();
    let (report, mut reported) = mpsc::channel(1);
    let addr = coordinator.addr.clone();
    runtime.spawn(async move { stalled_sessions(&addr, released, report).await });
    let stalled = runtime.block_on(reported.recv()).expect("the stalled sessions' report");
    // Each admitted session is dropped at the deadline of its first round
    // (from the next epoch on, when it gets a shard), still unread.
    let left_lines = wait_until("every stalled session dropped", EVENT_TIMEOUT, || {
        let left = logged(&coordinator.proc, "worker left");
        stalled.attached.iter().all(|&id| left.iter().any(|l| l["worker"] == id)).then_some(left)
    });
    let _ = release.send(());
    drop(runtime);
    let reasons: Vec<&str> = stalled
        .attached
        .iter()
        .filter_map(|&id| left_lines.iter().find(|l| l["worker"] == id).and_then(|l| l["reason"].as_str()))
        .collect();
    let peak = watch.peak();
    let after = rss(pid);
    eprintln!("coordinator RSS: start {start}, peak {peak}, after {after} bytes; {stalled:?}; reasons {reasons:?}");
    // Dropped at their first round's deadline (no average was queued for
    // them meanwhile, so none fell behind first).
    assert_eq!(reasons.len(), stalled.attached.len(), "{reasons:?}");
    assert!(
        reasons.iter().all(|r| *r == "has not answered a pull on this session by the --round-timeout deadline"),
        "{reasons:?}"
    );

    // The session cap, two of them the real workers'.
    assert!(!stalled.attached.is_empty() && stalled.attached.len() <= SESSION_CAP as usize - 2, "{stalled:?}");
    let refused: usize = stalled.refused.iter().map(|(_, n)| n).sum();
    assert_eq!(stalled.attached.len() + refused, 200, "{stalled:?}");
    assert!(stalled.refused.iter().all(|(code, _)| *code == Code::ResourceExhausted), "{stalled:?}");
    // Within the session cap times one model copy (784-200-200-10 in f32):
    // the sessions' queues share one copy per version, and a stream holds
    // of its own only a few of the 64 KiB messages the coordinator sends a
    // session that has not answered a pull.
    // Measured: 12 MB for the 62 sessions admitted (96 MB when a stream
    // kept a whole model of its own; 137 MB, never given back, before the
    // session cap).
    let model = 4 * (784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10);
    let bound = SESSION_CAP * model;
    assert!(peak < start + bound, "grew from {start} to {peak} bytes, more than {SESSION_CAP} models of {model} bytes");

    assert_the_run_completes_as_usual(&mut coordinator, &mut workers, 3);
}

/// The abused 2-worker run still completes its epochs, each image trained
/// once per epoch, to its usual accuracy.
fn assert_the_run_completes_as_usual(coordinator: &mut Coordinator, workers: &mut [Proc], epochs: usize) {
    let mut procs: Vec<&mut Proc> = std::iter::once(&mut coordinator.proc).chain(workers.iter_mut()).collect();
    expect_success(&mut procs);
    let records = epoch_metrics(&coordinator.out);
    assert_eq!(records.len(), epochs, "{records:?}");
    for epoch in &records {
        assert_each_image_once(epoch, N_TRAIN);
    }
    let accuracy = f64_field(&records[epochs - 1], "accuracy");
    assert!(accuracy >= 0.96, "accuracy {accuracy}\n{}", coordinator.proc.dump());
}
