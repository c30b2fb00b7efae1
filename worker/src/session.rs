//! One session with the coordinator: attach, then obey its commands until it
//! says stop or the stream breaks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lazyavg_common::config::RunSpec;
use lazyavg_common::dataset::Dataset;
use lazyavg_common::params::digest;
use lazyavg_proto::chunks::{ChunkCursor, weight_chunks};
use lazyavg_proto::pb;
use lazyavg_proto::pb::coordinator_message::Kind as Command;
use lazyavg_proto::pb::worker_message::Kind as Reply;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::Client;
use crate::error::{Error, Result};
use crate::replica::Replica;

/// How a session ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The run completed.
    Completed,
    /// The coordinator stopped the run early, for this reason.
    Aborted(String),
}

/// Runs a session for worker `id`. `attached` is called once the coordinator
/// has accepted the session (the caller resets its backoff then).
pub async fn run(
    client: &mut Client,
    id: u64,
    spec: &RunSpec,
    data: Arc<Dataset>,
    slowdown: f64,
    attached: impl FnOnce(),
) -> Result<Ending> {
    let (outbox, replies) = mpsc::channel(64);
    send(&outbox, Reply::Attach(pb::Attach { worker_id: id })).await?;
    let mut inbound =
        client.session(ReceiverStream::new(replies)).await.map_err(Error::refused("Session"))?.into_inner();
    attached();
    let started = Instant::now();
    let mut replica = Some(Replica::new(spec, data)?);
    let mut incoming: Option<ChunkCursor> = None;
    while let Some(message) = inbound.message().await.map_err(Error::refused("Session"))? {
        let Some(kind) = message.kind else { continue };
        let current = replica.as_mut().expect("the replica is back after every pull");
        match kind {
            Command::Shard(shard) => current.assign(&shard)?,
            Command::Pull(pull) => {
                let (back, report) = train_off_runtime(replica.take().expect("replica present"), pull).await;
                let back = replica.insert(back);
                let report = report?;
                if slowdown > 1.0 {
                    tokio::time::sleep(Duration::from_secs_f64(report.train_seconds * (slowdown - 1.0))).await;
                }
                send(&outbox, Reply::Report(report)).await?;
                for chunk in weight_chunks(pull.epoch, pull.round, back.params()) {
                    send(&outbox, Reply::Weights(chunk)).await?;
                }
            }
            Command::Average(chunk) => {
                let mut cursor = match incoming.take() {
                    Some(cursor) if chunk.offset > 0 => cursor,
                    _ => ChunkCursor::new(chunk.epoch, chunk.round, current.len()),
                };
                let range = cursor.advance(&chunk)?;
                current.receive(range, &chunk.data);
                if cursor.is_complete() {
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        debug!(
                            epoch = chunk.epoch,
                            round = chunk.round,
                            digest = digest(current.params()),
                            "weights applied"
                        );
                    }
                } else {
                    incoming = Some(cursor);
                }
            }
            Command::Rejected(rejected) => {
                warn!(code = rejected.code, error = rejected.message, "the coordinator refused a message")
            }
            Command::Stop(stop) => {
                let train_seconds = replica.as_ref().map_or(0.0, |r| r.train_seconds);
                let wall = started.elapsed().as_secs_f64();
                info!(
                    reason = stop.reason,
                    train_seconds,
                    idle_share = (1.0 - train_seconds / wall.max(f64::EPSILON)).clamp(0.0, 1.0),
                    "stopped by the coordinator"
                );
                return Ok(if stop.completed { Ending::Completed } else { Ending::Aborted(stop.reason) });
            }
        }
    }
    Err(Error::SessionEnded)
}

/// Runs the CPU-heavy training of a pull on the blocking pool and hands the
/// replica back.
async fn train_off_runtime(mut replica: Replica, pull: pb::PullWeights) -> (Replica, Result<pb::RoundReport>) {
    tokio::task::spawn_blocking(move || {
        let report = replica.train(&pull);
        (replica, report)
    })
    .await
    .expect("training does not panic")
}

async fn send(outbox: &mpsc::Sender<pb::WorkerMessage>, kind: Reply) -> Result<()> {
    outbox.send(pb::WorkerMessage { kind: Some(kind) }).await.map_err(|_| Error::SessionEnded)
}
