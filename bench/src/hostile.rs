//! `lazyavg-bench hostile`: a client that joins a run as a worker would, with
//! the worker's own connection code, and answers every pull with an attack
//! instead of trained weights. It trains nothing: each attack is built from
//! the averages the coordinator sent it, so it is always finite, of the
//! right length and on time, which is what makes it hard to tell from a
//! worker.

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use lazyavg_common::rng::{self, Purpose, StreamRng};
use lazyavg_proto::chunks::{ChunkCursor, decode_into, weight_chunks};
use lazyavg_proto::pb::coordinator_message::Kind as Command;
use lazyavg_proto::pb::worker_message::Kind as Reply;
use lazyavg_proto::{PROTOCOL_VERSION, pb};
use rand::RngExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::info;

use crate::cli::HostileArgs;

/// What the client sends instead of its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Attack {
    /// 100 × the last average received (the scaling attack).
    Scale,
    /// Uniform random values in ±1e6.
    Noise,
    /// The last average minus 10 × the last round's update: the update the
    /// others made together, flipped and scaled (w̄ − 10·Δ).
    Signflip,
}

/// The averages the client has seen: the last one, and the one before.
#[derive(Debug, Default)]
struct Seen {
    last: Vec<f32>,
    before: Vec<f32>,
}

/// An average whose chunks are arriving.
#[derive(Debug)]
struct Incoming {
    cursor: ChunkCursor,
    values: Vec<f32>,
}

impl Incoming {
    /// The average whose first chunk is `first`.
    fn new(first: &pb::WeightsChunk) -> Self {
        let total = first.total as usize;
        Incoming { cursor: ChunkCursor::new(first.epoch, first.round, total), values: vec![0.0; total] }
    }
}

impl Attack {
    /// The values to send instead of weights, from what the client has seen.
    fn values(self, seen: &Seen, noise: &mut StreamRng) -> Vec<f32> {
        match self {
            Attack::Scale => seen.last.iter().map(|w| 100.0 * w).collect(),
            Attack::Noise => seen.last.iter().map(|_| noise.random_range(-1e6f32..1e6)).collect(),
            Attack::Signflip if seen.before.len() != seen.last.len() => seen.last.clone(),
            Attack::Signflip => seen.last.iter().zip(&seen.before).map(|(w, b)| w - 10.0 * (w - b)).collect(),
        }
    }
}

/// Joins the run at `--coordinator` and attacks every round until the
/// coordinator stops the run or the session ends.
pub fn run(args: &HostileArgs) -> Result<()> {
    let connection = args.connect.resolve().context("--coordinator")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(async {
        let mut client = lazyavg_worker::connect(&connection).await?;
        let join = pb::JoinRequest { protocol_version: PROTOCOL_VERSION, name: args.name.clone() };
        let id = client.join(join).await.context("Join")?.into_inner().worker_id;
        let (outbox, replies) = mpsc::channel(64);
        let send = |kind| {
            let outbox = outbox.clone();
            async move { outbox.send(pb::WorkerMessage { kind: Some(kind) }).await.context("the session closed") }
        };
        send(Reply::Attach(pb::Attach { worker_id: id })).await?;
        let mut inbound = client.session(ReceiverStream::new(replies)).await.context("Session")?.into_inner();
        info!(worker = id, name = args.name, attack = ?args.attack, "joined the run");
        let mut noise = rng::stream(args.seed, Purpose::HostileNoise);
        let mut seen = Seen::default();
        let mut incoming: Option<Incoming> = None;
        while let Some(message) = inbound.message().await.context("Session")? {
            match message.kind {
                Some(Command::Average(chunk)) => {
                    let mut partial = match incoming.take() {
                        Some(partial) if chunk.offset > 0 => partial,
                        _ => Incoming::new(&chunk),
                    };
                    let range = partial.cursor.advance(&chunk)?;
                    decode_into(&mut partial.values[range], &chunk.data);
                    if partial.cursor.is_complete() {
                        seen.before = std::mem::replace(&mut seen.last, partial.values);
                    } else {
                        incoming = Some(partial);
                    }
                }
                Some(Command::Pull(pull)) => {
                    if seen.last.is_empty() {
                        bail!("pulled for epoch {} round {} before any weights came", pull.epoch, pull.round);
                    }
                    let samples = pull.train_until.saturating_sub(pull.train_from);
                    let report =
                        pb::RoundReport { epoch: pull.epoch, round: pull.round, samples, ..Default::default() };
                    send(Reply::Report(report)).await?;
                    let values = args.attack.values(&seen, &mut noise);
                    for chunk in weight_chunks(pull.epoch, pull.round, &values) {
                        send(Reply::Weights(chunk)).await?;
                    }
                }
                Some(Command::Stop(stop)) => {
                    info!(reason = stop.reason, completed = stop.completed, "stopped by the coordinator");
                    return Ok(());
                }
                _ => {}
            }
        }
        bail!("the coordinator closed the session without a Stop")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attack_is_built_from_the_averages_seen() {
        let seen = Seen { last: vec![1.0, -2.0], before: vec![0.5, -1.0] };
        let mut noise = rng::stream(1, Purpose::HostileNoise);
        assert_eq!(Attack::Scale.values(&seen, &mut noise), [100.0, -200.0]);
        assert_eq!(Attack::Signflip.values(&seen, &mut noise), [-4.0, 8.0]);
        let first = Seen { last: vec![1.0], before: Vec::new() };
        assert_eq!(Attack::Signflip.values(&first, &mut noise), [1.0], "no update seen yet");
        let random = Attack::Noise.values(&seen, &mut noise);
        assert!(random.iter().all(|v| v.abs() <= 1e6) && random[0] != random[1]);
    }
}
