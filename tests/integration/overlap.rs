//! `--overlap`: each worker's next pulls go out as soon as its weights are
//! in, before the round's average, which the worker then applies as a
//! correction. Accuracy and the one-use-per-image accounting must be what
//! they are without it, also when a worker dies mid-epoch (and training
//! pauses for lack of workers), and a round abandoned while a pull ahead is
//! out must be redone with that pull's work.

use std::time::Duration;

use lazyavg_proto::chunks::weight_chunks;
use lazyavg_proto::pb;
use lazyavg_proto::pb::coordinator_client::CoordinatorClient;
use lazyavg_proto::pb::coordinator_message::Kind as Order;
use lazyavg_proto::pb::worker_message::Kind as Reply;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::harness::*;
use crate::support::*;

/// Bound on anything that happens within an epoch or two.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Samples per round at the defaults: K = 16 minibatches of 32.
const SAMPLES_PER_ROUND: u64 = 16 * 32;

/// How many averages `worker` applied on top of training it did after
/// sending its weights (logged at debug level).
fn corrections(worker: &Proc) -> usize {
    logged(worker, "average applied as a correction").len()
}

#[test]
fn two_workers_with_overlap_train_two_epochs_to_97_percent() {
    let _heavy = heavy();
    let run = run_cluster(2, &["--epochs", "2", "--overlap"], DEBUG_LOG);
    let coordinator = &run.coordinator;
    let epochs = epoch_metrics(&coordinator.out);
    assert_eq!(epochs.iter().map(|e| u64_field(e, "epoch")).collect::<Vec<_>>(), [1, 2], "{epochs:?}");
    for epoch in &epochs {
        assert_each_image_once(epoch, N_TRAIN);
        assert_eq!(u64_field(epoch, "workers"), 2, "{epoch}");
    }
    let accuracy = f64_field(&epochs[1], "accuracy");
    eprintln!("accuracy with --overlap after two epochs: {accuracy}");
    assert!(accuracy >= 0.97, "two epochs with --overlap reached only {accuracy}\n{}", coordinator.proc.dump());
    assert!(logged(&coordinator.proc, "round abandoned; redoing it with the workers left").is_empty());
    // The pulls really went out ahead: the workers trained while averages
    // were made, and applied them as corrections (about one per round).
    let rounds = logged(&coordinator.proc, "round averaged").len();
    for worker in &run.workers {
        let corrected = corrections(worker);
        assert!(corrected > rounds / 2, "{} applied {corrected} of {rounds} averages as corrections", worker.name);
        let stopped = logged(worker, "stopped by the coordinator");
        let stopped = stopped.first().expect("stopped by the coordinator");
        assert!((0.0..1.0).contains(&f64_field(stopped, "idle_share")), "{}", worker.dump());
    }
}

#[test]
fn with_overlap_sigkill_of_one_of_three_workers_mid_epoch_loses_no_image() {
    let _heavy = heavy();
    let KilledRun { coordinator, victim_id, _tmp, .. } =
        run_three_killing_one_in_epoch_2(&["--epochs", "3", "--overlap"]);
    let log = &coordinator.proc;
    let left = about_worker(log, "worker left", victim_id);
    assert_eq!(left.len(), 1, "{}", log.dump());
    assert_eq!(u64_field(&left[0], "epoch"), 2, "killed in epoch 2: {}", left[0]);
    let abandoned = logged(log, "round abandoned; redoing it with the workers left");
    eprintln!("rounds abandoned: {abandoned:?}");

    let epochs = epoch_metrics(&coordinator.out);
    assert_eq!(epochs.iter().map(|e| u64_field(e, "epoch")).collect::<Vec<_>>(), [1, 2, 3], "{epochs:?}");
    for epoch in &epochs {
        assert_each_image_once(epoch, N_TRAIN);
    }
    let name = left[0]["name"].as_str().expect("name").to_owned();
    // What it trained and had averaged before it died counts; the rest went to the others.
    assert_eq!(samples_of(&epochs[1], &name), u64_field(&left[0], "trained"), "{}", epochs[1]);
    assert_eq!(samples_of(&epochs[1], &name) + u64_field(&left[0], "remaining"), N_TRAIN / 3, "{}", left[0]);
    assert_eq!(u64_field(&epochs[2], "workers"), 2, "{}", epochs[2]);
    let accuracy = f64_field(&epochs[2], "accuracy");
    assert!(accuracy >= 0.97, "accuracy {accuracy} after three epochs\n{}", log.dump());
}

/// The gRPC client of a worker that trains nothing: it joins, sends back the
/// weights it was given for its first pull, and leaves once they are in (the
/// pull ahead says so). Returns its id and the two pulls.
async fn contribute_once_and_leave(addr: &str) -> (u64, [pb::PullWeights; 2]) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connecting to the coordinator");
    let mut client = CoordinatorClient::new(channel).max_decoding_message_size(8 << 20);
    let join = pb::JoinRequest { protocol_version: lazyavg_proto::PROTOCOL_VERSION, name: "test-client".into() };
    let id = client.join(join).await.expect("Join").into_inner().worker_id;
    let (outbox, replies) = mpsc::channel(16);
    let send = |kind: Reply| outbox.send(pb::WorkerMessage { kind: Some(kind), ..Default::default() });
    send(Reply::Attach(pb::Attach { worker_id: id, shared_memory: false })).await.expect("the request stream is open");
    let mut inbound = client.session(ReceiverStream::new(replies)).await.expect("Session").into_inner();
    let mut weights: Vec<f32> = Vec::new();
    let pull = loop {
        let next = tokio::time::timeout(EVENT_TIMEOUT, inbound.message()).await.expect("a command in time");
        match next.expect("the session is open").and_then(|m| m.kind) {
            Some(Order::Average(chunk)) => {
                weights.resize(chunk.total as usize, 0.0);
                let values = chunk.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")));
                for (w, v) in weights[chunk.offset as usize..].iter_mut().zip(values) {
                    *w = v;
                }
            }
            Some(Order::Shard(_)) => {}
            Some(Order::Pull(pull)) => break pull,
            other => panic!("waiting for a pull, got {other:?}"),
        }
    };
    let report = pb::RoundReport { epoch: pull.epoch, round: pull.round, ..Default::default() };
    send(Reply::Report(report)).await.expect("the request stream is open");
    for chunk in weight_chunks(pull.epoch, pull.round, &weights) {
        send(Reply::Weights(chunk.into())).await.expect("the request stream is open");
    }
    // Once they are all in, the next pull comes at once, ahead of the average.
    let next = tokio::time::timeout(EVENT_TIMEOUT, inbound.message()).await.expect("a command in time");
    let Some(Order::Pull(ahead)) = next.expect("the session is open").and_then(|m| m.kind) else {
        panic!("the pull ahead did not come next");
    };
    // Leaving closes both directions of the session.
    drop((outbox, inbound));
    (id, [pull, ahead])
}

/// A worker leaves after its weights for round 1 are in: the round is
/// abandoned (its weights are in the sum but its images go to the other),
/// while the real worker, whose weights came in after, already trains the pull
/// sent ahead for round 2. Round 2, the redo, lifts that pull's wait instead
/// of asking again, and weighs the real worker's weights by both rounds'
/// samples; nothing is trained twice.
#[test]
fn a_round_abandoned_with_a_pull_ahead_is_redone_with_its_work() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let args = ["--workers", "2", "--epochs", "1", "--overlap", "--metrics-rounds"];
    let mut coordinator = start_coordinator(&tmp.path().join("out"), "127.0.0.1:0", &args, DEBUG_LOG);
    let mut worker = start_worker("worker", &coordinator.addr, &tmp.path().join("cache"), DEBUG_LOG);
    wait_for_line(&mut coordinator.proc, "worker joined", START_TIMEOUT);
    // Held until the test client has come and gone, so its weights for round
    // 1 are in first and it leaves before the real worker's arrive.
    worker.signal("STOP");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let (client_id, [pull, ahead]) = runtime.block_on(contribute_once_and_leave(&coordinator.addr));
    drop(runtime);
    let range = |p: &pb::PullWeights| (p.epoch, p.round, p.train_from, p.train_until, p.after_round);
    assert_eq!(range(&pull), (1, 1, 0, SAMPLES_PER_ROUND, 0), "{pull:?}");
    assert_eq!(range(&ahead), (1, 2, SAMPLES_PER_ROUND, 2 * SAMPLES_PER_ROUND, 1), "{ahead:?}");
    wait_for_match(&mut coordinator.proc, "worker left", EVENT_TIMEOUT, |l| l["worker"] == client_id);
    worker.signal("CONT");
    expect_success(&mut [&mut coordinator.proc, &mut worker]);

    let log = &coordinator.proc;
    let abandoned = logged(log, "round abandoned; redoing it with the workers left");
    assert_eq!(abandoned.len(), 1, "{}", log.dump());
    assert_eq!((u64_field(&abandoned[0], "epoch"), u64_field(&abandoned[0], "round")), (1, 1), "{}", abandoned[0]);
    let handed = logged(log, "handed the worker's untrained images to the others");
    assert_eq!(handed.first().map(|l| u64_field(l, "images")), Some(N_TRAIN / 2), "{}", log.dump());
    // The real worker's pull for round 2 was sent ahead, then again to lift the wait.
    let lifted = logged(&worker, "wait lifted");
    assert_eq!(lifted.len(), 1, "{}", worker.dump());
    assert_eq!((u64_field(&lifted[0], "epoch"), u64_field(&lifted[0], "round")), (1, 2), "{}", lifted[0]);

    let path = coordinator.out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).expect("metrics.jsonl");
    let rounds: Vec<Value> =
        text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|r| r["kind"] == "round").collect();
    assert!(!rounds.iter().any(|r| r["round"] == 1), "an abandoned round was recorded: {rounds:?}");
    let redo = rounds.iter().find(|r| r["round"] == 2).unwrap_or_else(|| panic!("no round 2: {rounds:?}"));
    assert_eq!(u64_field(redo, "contributors"), 1, "{redo}");
    assert_eq!(u64_field(redo, "samples"), 2 * SAMPLES_PER_ROUND, "rounds 1 and 2 in one contribution: {redo}");
    assert!(f64_field(redo, "train_loss") > 0.0, "{redo}");
    // Then one round's worth per round again, pulled ahead again.
    assert_eq!(rounds.iter().find(|r| r["round"] == 3).map(|r| u64_field(r, "samples")), Some(SAMPLES_PER_ROUND));
    assert!(corrections(&worker) > rounds.len() / 2, "{}", worker.dump());

    let epochs = epoch_metrics(&coordinator.out);
    assert_eq!(epochs.len(), 1, "{epochs:?}");
    assert_each_image_once(&epochs[0], N_TRAIN);
    assert_eq!(samples_of(&epochs[0], "test-client"), 0, "{}", epochs[0]);
    assert!(f64_field(&epochs[0], "accuracy") >= 0.9, "{}", epochs[0]);
}

/// A worker stopped (SIGSTOP) while it holds pulls sent ahead misses the
/// round deadline and is left behind; once continued it answers those pulls
/// late (refused), applies the averages it missed, and trains its whole shard
/// of the next epoch.
#[test]
fn with_overlap_a_stopped_worker_is_left_behind_and_rejoins() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let args = ["--workers", "2", "--epochs", "3", "--round-timeout", "1s", "--overlap"];
    let mut coordinator = start_coordinator(&tmp.path().join("out"), "127.0.0.1:0", &args, DEBUG_LOG);
    let mut workers = start_workers("worker", 2, &coordinator.addr, tmp.path(), "info");
    wait_for_match(&mut coordinator.proc, "epoch done", EVENT_TIMEOUT, |l| l["epoch"] == 1);
    let id = joined_id(&workers[1]);
    workers[1].signal("STOP");
    let missed = "worker missed the round deadline; closing the round without it";
    wait_for_match(&mut coordinator.proc, missed, EVENT_TIMEOUT, |l| l["worker"] == id);
    // Held until a few rounds closed without it.
    wait_until("three rounds without the stopped worker", EVENT_TIMEOUT, || {
        let lines = coordinator.proc.json_lines();
        let from = lines.iter().position(|l| l["message"] == missed)?;
        (lines[from..].iter().filter(|l| l["message"] == "round averaged").count() >= 3).then_some(())
    });
    workers[1].signal("CONT");
    let mut procs: Vec<&mut Proc> = std::iter::once(&mut coordinator.proc).chain(workers.iter_mut()).collect();
    expect_success(&mut procs);

    let log = &coordinator.proc;
    let name = logged(log, "worker joined")
        .iter()
        .find(|l| l["worker"] == id)
        .and_then(|l| l["name"].as_str().map(str::to_owned))
        .expect("its name");
    let handed = logged(log, "handed the worker's untrained images to the others");
    assert!(handed.iter().any(|l| l["name"] == name.as_str()), "{}", log.dump());
    assert!(
        !about_worker(log, "refused a worker message", id).is_empty(),
        "its late weights were taken\n{}",
        log.dump()
    );
    let epochs = epoch_metrics(&coordinator.out);
    assert_eq!(epochs.iter().map(|e| u64_field(e, "epoch")).collect::<Vec<_>>(), [1, 2, 3], "{epochs:?}");
    for epoch in &epochs {
        assert_each_image_once(epoch, N_TRAIN);
    }
    assert!(samples_of(&epochs[1], &name) < N_TRAIN / 2, "{}", epochs[1]);
    assert_eq!(samples_of(&epochs[2], &name), N_TRAIN / 2, "it trains its whole shard in epoch 3: {}", epochs[2]);
    assert!(f64_field(&epochs[2], "accuracy") >= 0.97, "{}", epochs[2]);
}

/// With `--min-workers`, a worker's death pauses training while the others
/// answer the pulls they were sent ahead. Those answers are kept for the
/// round after the pause: they used to be refused ("no round is open"), and
/// that round then waited for weights that never came again.
#[test]
fn with_overlap_answers_that_come_during_a_pause_count_after_it() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let args = ["--workers", "3", "--min-workers", "3", "--epochs", "2", "--overlap"];
    let mut coordinator = start_coordinator(&out, "127.0.0.1:0", &args, DEBUG_LOG);
    let mut workers = start_workers("worker", 3, &coordinator.addr, tmp.path(), "info");
    wait_for_match(&mut coordinator.proc, "round averaged", EVENT_TIMEOUT, |l| l["epoch"] == 1 && l["round"] == 5);
    let mut victim = workers.remove(1);
    victim.signal("KILL");
    assert_eq!(victim.wait(Duration::from_secs(10)), -1, "killed by a signal");
    wait_for_line(&mut coordinator.proc, "too few workers; training paused", EVENT_TIMEOUT);
    workers.push(start_worker("replacement", &coordinator.addr, &tmp.path().join("cache-r"), "info"));
    let mut procs: Vec<&mut Proc> = std::iter::once(&mut coordinator.proc).chain(workers.iter_mut()).collect();
    expect_success(&mut procs);

    let log = &coordinator.proc;
    assert!(logged(log, "refused a worker message").is_empty(), "{}", log.dump());
    assert!(logged(log, "worker missed the round deadline; closing the round without it").is_empty(), "{}", log.dump());
    let epochs = epoch_metrics(&out);
    assert_eq!(epochs.len(), 2, "{epochs:?}");
    for epoch in &epochs {
        assert_each_image_once(epoch, N_TRAIN);
    }
}
