//! `lazyavg-bench hostile`: a client that joins a run as a worker would, with
//! the worker's own connection code, and answers every pull with an attack
//! instead of trained weights. It trains nothing: each attack is built from
//! the averages the coordinator sent it, so it is always finite, of the
//! right length and on time, which is what makes it hard to tell from a
//! worker.

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use lazyavg_common::rng::{self, Purpose, StreamRng};
use lazyavg_proto::chunks::{Chunk, ChunkCursor, decode_into, weight_chunks};
use lazyavg_proto::pb::coordinator_message::Kind as Command;
use lazyavg_proto::pb::worker_message::Kind as Reply;
use lazyavg_proto::{PROTOCOL_VERSION, pb};
use rand::RngExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::info;

use crate::cli::HostileArgs;

/// What the client sends instead of its weights; F is `--factor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Attack {
    /// F × the last average received (the scaling attack; F = 100 by default).
    Scale,
    /// Uniform random values in ±F (1e6 by default).
    Noise,
    /// The last average minus F × the last round's update: the update the
    /// others made together, flipped and scaled (w̄ − F·Δ; F = 10 by default).
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
    fn new(first: &Chunk) -> Self {
        let total = first.total as usize;
        Incoming { cursor: ChunkCursor::new(first.epoch, first.round, total), values: vec![0.0; total] }
    }
}

impl Attack {
    /// The attack's factor when `--factor` is not given.
    pub fn default_factor(self) -> f32 {
        match self {
            Attack::Scale => 100.0,
            Attack::Noise => 1e6,
            Attack::Signflip => 10.0,
        }
    }

    /// The values to send instead of weights, from what the client has
    /// seen, the attack sized by `factor`.
    fn values(self, factor: f32, seen: &Seen, noise: &mut StreamRng) -> Vec<f32> {
        match self {
            Attack::Scale => seen.last.iter().map(|w| factor * w).collect(),
            Attack::Noise => seen.last.iter().map(|_| noise.random_range(-factor..factor)).collect(),
            Attack::Signflip if seen.before.len() != seen.last.len() => seen.last.clone(),
            Attack::Signflip => seen.last.iter().zip(&seen.before).map(|(w, b)| w - factor * (w - b)).collect(),
        }
    }
}

/// Joins the run at `--coordinator` and attacks every round until the
/// coordinator stops the run or the session ends.
pub fn run(args: &HostileArgs) -> Result<()> {
    let connection = args.connect.resolve().context("--coordinator")?;
    let factor = args.factor.unwrap_or_else(|| args.attack.default_factor());
    if !(factor.is_finite() && factor > 0.0) {
        bail!("invalid --factor: must be positive and finite, got {factor}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(async {
        let mut client = lazyavg_worker::connect(&connection).await?;
        let join = pb::JoinRequest { protocol_version: PROTOCOL_VERSION, name: args.name.clone() };
        let id = client.join(join).await.context("Join")?.into_inner().worker_id;
        let (outbox, replies) = mpsc::channel(64);
        let send = |kind| {
            let outbox = outbox.clone();
            async move {
                outbox
                    .send(pb::WorkerMessage { kind: Some(kind), ..Default::default() })
                    .await
                    .context("the session closed")
            }
        };
        send(Reply::Attach(pb::Attach { worker_id: id, shared_memory: false })).await?;
        let mut inbound = client.session(ReceiverStream::new(replies)).await.context("Session")?.into_inner();
        info!(worker = id, name = args.name, attack = ?args.attack, factor, "joined the run");
        let mut noise = rng::stream(args.seed, Purpose::HostileNoise);
        let mut seen = Seen::default();
        let mut incoming: Option<Incoming> = None;
        while let Some(message) = inbound.message().await.context("Session")? {
            match message.kind {
                Some(Command::Average(chunk)) => {
                    let chunk = Chunk::from(chunk);
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
                    let values = args.attack.values(factor, &seen, &mut noise);
                    for chunk in weight_chunks(pull.epoch, pull.round, &values) {
                        send(Reply::Weights(chunk.into())).await?;
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
        let values =
            |attack: Attack, seen: &Seen, noise: &mut StreamRng| attack.values(attack.default_factor(), seen, noise);
        assert_eq!(values(Attack::Scale, &seen, &mut noise), [100.0, -200.0]);
        assert_eq!(values(Attack::Signflip, &seen, &mut noise), [-4.0, 8.0]);
        assert_eq!(Attack::Signflip.values(3.0, &seen, &mut noise), [-0.5, 1.0]);
        let first = Seen { last: vec![1.0], before: Vec::new() };
        assert_eq!(values(Attack::Signflip, &first, &mut noise), [1.0], "no update seen yet");
        let random = values(Attack::Noise, &seen, &mut noise);
        assert!(random.iter().all(|v| v.abs() <= 1e6) && random[0] != random[1]);
        assert!(Attack::Noise.values(0.5, &seen, &mut noise).iter().all(|v| v.abs() <= 0.5));
    }
}
