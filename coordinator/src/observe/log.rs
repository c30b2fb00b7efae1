//! The run's log lines: one structured `tracing` line per event worth
//! reading (the JSON log's fields are what tests and tools parse).

use lazyavg_common::params::digest;
use lazyavg_common::telemetry::error_chain;
use tracing::{debug, info, warn};

use super::{Observer, RunEvent};
use crate::error::Result;

/// Writes the log lines; holds nothing.
#[derive(Debug, Default)]
pub struct Log;

impl Observer for Log {
    fn observe(&mut self, event: &RunEvent<'_>) -> Result<()> {
        match *event {
            RunEvent::WorkerJoined { id, name, workers, .. } => info!(worker = id, name, workers, "worker joined"),
            RunEvent::WorkerLeft { id, name, reason, epoch, trained, remaining, .. } => {
                info!(worker = id, name, reason, epoch, trained, remaining, "worker left");
            }
            RunEvent::ContributionRejected { worker, name, status, .. } => {
                warn!(worker, name, code = ?status.code(), error = status.message(), "refused a worker message");
            }
            RunEvent::RoundCompleted(done) => {
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let summary = done.summary;
                    debug!(
                        epoch = summary.epoch,
                        round = summary.round,
                        samples = summary.samples,
                        contributors = summary.contributors.len(),
                        seconds = done.seconds,
                        digest = done.digest(),
                        "round averaged"
                    );
                }
            }
            RunEvent::RoundAbandoned { epoch, round, error } => {
                warn!(epoch, round, error = %error_chain(error), "round abandoned; redoing it with the workers left");
            }
            RunEvent::EpochEvaluated(record) => info!(
                epoch = record.epoch,
                rounds = record.rounds,
                train_loss = record.train_loss,
                test_loss = record.test_loss,
                accuracy = record.accuracy,
                samples_per_s = record.samples_per_s.round(),
                sync_share = record.sync_share,
                workers = record.workers,
                "epoch done"
            ),
            RunEvent::CheckpointWritten { checkpoint, path } => info!(
                epoch = checkpoint.epoch,
                remaining = checkpoint.remaining.len(),
                digest = digest(&checkpoint.params),
                path = %path.display(),
                "checkpoint written"
            ),
            RunEvent::CheckpointFailed { error } => warn!(error = %error_chain(error), "cannot write checkpoint"),
            RunEvent::EpochStarted { .. }
            | RunEvent::ShardsDealt { .. }
            | RunEvent::RoundStarted { .. }
            | RunEvent::WeightsReceived { .. }
            | RunEvent::WeightsSent { .. }
            | RunEvent::RunEnded { .. } => {}
        }
        Ok(())
    }
}
