//! What happens in a run, told once: the driver emits a [`RunEvent`] at each
//! step that someone watches, and every output — the log lines, the progress
//! bar, `metrics.jsonl`, the round dumps, the Prometheus metrics, the gRPC
//! health status — is an [`Observer`] that turns the events it cares about
//! into its own form. A new output is one more observer; the driver does not
//! change.

pub mod board;
pub mod exporter;
pub mod health;
pub mod log;

use std::cell::OnceCell;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use lazyavg_common::telemetry::error_chain;
use lazyavg_proto::chunks::Chunk;
use tracing::warn;

use crate::checkpoint::Checkpoint;
use crate::command::Rejection;
use crate::error::{Error, Result};
use crate::metrics::EpochRecord;
use crate::round::{RoundError, RoundSummary, WorkerId};

/// One step of a run, as the outputs see it. Borrowed: an event costs
/// nothing to emit, whoever is watching.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// A worker opened its session from `address`; `workers` is the count with it.
    WorkerJoined {
        id: WorkerId,
        name: &'a str,
        address: &'a str,
        workers: usize,
    },
    /// A worker's session ended. `trained` is what it trained this epoch,
    /// `remaining` the images of its shard it left untrained, `workers` the
    /// count without it.
    WorkerLeft {
        id: WorkerId,
        name: &'a str,
        reason: &'a str,
        epoch: u64,
        trained: u64,
        remaining: usize,
        workers: usize,
    },
    /// An epoch begins, planned at `rounds` rounds.
    EpochStarted {
        epoch: u64,
        rounds: u64,
    },
    /// The epoch's shards went out, by worker.
    ShardsDealt {
        epoch: u64,
        shards: &'a [(WorkerId, &'a [u32])],
    },
    /// Pulls for a round went out to `workers`.
    RoundStarted {
        epoch: u64,
        round: u64,
        workers: &'a [WorkerId],
    },
    /// A chunk of a worker's weights was taken into the open round;
    /// `values` are its bytes as the round checked and summed them (the
    /// chunk's own may still be in a shared-memory slot the worker writes).
    WeightsReceived {
        worker: WorkerId,
        chunk: &'a Chunk,
        values: &'a [u8],
    },
    /// Parameters went out to workers (averages, or the model to a newcomer).
    WeightsSent {
        bytes: u64,
    },
    /// A worker's message was refused.
    ContributionRejected {
        worker: WorkerId,
        name: &'a str,
        rejection: &'a Rejection,
    },
    /// A round's average is made and pushed.
    RoundCompleted(&'a RoundDone<'a>),
    /// A round had to be given up; it is redone with the workers left.
    RoundAbandoned {
        epoch: u64,
        round: u64,
        error: &'a RoundError,
    },
    /// An epoch is evaluated on the test set (emitted by its close, off the driver).
    EpochEvaluated(&'a EpochRecord),
    CheckpointWritten {
        checkpoint: &'a Checkpoint,
        path: &'a Path,
    },
    CheckpointFailed {
        error: &'a Error,
    },
    /// Training is over (completed or not); the coordinator now drains.
    RunEnded {
        completed: bool,
    },
}

/// A completed round: its summary, its wall time and the parameters every
/// worker now holds.
#[derive(Debug)]
pub struct RoundDone<'a> {
    pub summary: &'a RoundSummary,
    pub seconds: f64,
    pub params: &'a [f32],
    /// Computed for the first observer that asks, then shared.
    digest: OnceCell<String>,
}

impl<'a> RoundDone<'a> {
    pub fn new(summary: &'a RoundSummary, seconds: f64, params: &'a [f32]) -> Self {
        RoundDone { summary, seconds, params, digest: OnceCell::new() }
    }

    /// SHA-256 of `params` (hashing a large model is not free: only on demand).
    pub fn digest(&self) -> &str {
        self.digest.get_or_init(|| lazyavg_common::params::digest(self.params))
    }

    /// Mean training loss of the round's samples.
    pub fn train_loss(&self) -> f64 {
        self.summary.loss_sum / self.summary.samples.max(1) as f64
    }
}

/// One output of the run.
pub trait Observer: Send {
    /// Takes in `event`. An error stops the run: only outputs the run must
    /// not go on without (`metrics.jsonl`, asked-for dumps) return one.
    fn observe(&mut self, event: &RunEvent<'_>) -> Result<()>;
}

/// Every observer of a run. Clones share them: an epoch's close emits from
/// the blocking pool while the driver goes on. A std mutex: it is held only
/// while the observers take in one event, never across an await.
#[derive(Clone)]
pub struct Observers(Arc<Mutex<Vec<Box<dyn Observer>>>>);

impl Observers {
    pub fn new(observers: Vec<Box<dyn Observer>>) -> Self {
        Observers(Arc::new(Mutex::new(observers)))
    }

    /// Gives `event` to every observer, in order; returns the first error
    /// after all of them have seen it.
    pub fn emit(&self, event: &RunEvent<'_>) -> Result<()> {
        let mut observers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        observers.iter_mut().map(|o| o.observe(event)).fold(Ok(()), Result::and)
    }

    /// [`Observers::emit`] for events no output may stop the run on: a
    /// failure is logged.
    pub fn notify(&self, event: &RunEvent<'_>) {
        if let Err(e) = self.emit(event) {
            warn!(error = %error_chain(&e), "an output of the run failed");
        }
    }
}
