//! The run's log lines: one structured `tracing` line per event worth
//! reading (the JSON log's fields are what tests and tools parse).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lazyavg_common::params::digest;
use lazyavg_common::telemetry::error_chain;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use super::{Observer, RunEvent};
use crate::edge;
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
            RunEvent::ContributionRejected { worker, name, rejection } => {
                let code = edge::code(rejection.reason);
                warn!(worker, name, ?code, error = rejection.message, "refused a worker message");
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
            RunEvent::RoundStarted { epoch, round, workers } => {
                debug!(epoch, round, workers = workers.len(), "round started");
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
            | RunEvent::WeightsReceived { .. }
            | RunEvent::WeightsSent { .. }
            | RunEvent::RunEnded { .. } => {}
        }
        Ok(())
    }
}

/// How often one kind of refusal is logged at most: a client that retries a
/// refused call in a loop must not fill the disk with the same line.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The service's refusals of Joins, sessions and downloads, logged in
/// summary: the first of each kind (call and status code) at once, then at
/// most one line per [`REFUSAL_LOG_INTERVAL`] counting those in between
/// (written by [`RefusalLog::flush`] when no refusal comes to write it).
/// Kinds are few (calls × codes), so it stays small however many clients
/// are refused.
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// By kind: when it was last logged, and the refusals since.
    kinds: HashMap<(&'static str, Code), (Instant, u64)>,
}

impl RefusalLog {
    /// Counts a refusal of `call`, and logs it if its kind is due.
    pub fn refused(&mut self, call: &'static str, status: &Status, now: Instant) {
        if let Some(refused) = self.due(call, status.code(), now) {
            warn!(call, code = ?status.code(), error = status.message(), refused, "refused a client");
        }
    }

    /// Logs the refusals counted and not yet logged, of every kind whose
    /// line is due (`all`: of every kind, as the run ends), so the tail of a
    /// burst is counted too.
    pub fn flush(&mut self, now: Instant, all: bool) {
        for ((call, code), refused) in self.pending(now, all) {
            warn!(call, code = ?code, refused, "refused a client");
        }
    }

    /// The kinds [`RefusalLog::flush`] logs, and their counts.
    fn pending(&mut self, now: Instant, all: bool) -> Vec<((&'static str, Code), u64)> {
        let mut pending = Vec::new();
        for (&kind, (last, count)) in &mut self.kinds {
            if *count > 0 && (all || now.saturating_duration_since(*last) >= REFUSAL_LOG_INTERVAL) {
                *last = now;
                pending.push((kind, std::mem::take(count)));
            }
        }
        pending
    }

    /// The refusals of this kind to report (this one included) if a line is
    /// due now; `None` while it is not.
    fn due(&mut self, call: &'static str, code: Code, now: Instant) -> Option<u64> {
        match self.kinds.get_mut(&(call, code)) {
            Some((last, count)) => {
                *count += 1;
                if now.saturating_duration_since(*last) < REFUSAL_LOG_INTERVAL {
                    return None;
                }
                *last = now;
                Some(std::mem::take(count))
            }
            None => {
                self.kinds.insert((call, code), (now, 0));
                Some(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_refusals_are_summarised() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(log.due("Join", Code::ResourceExhausted, at(0)), Some(1));
        assert_eq!(log.due("Session", Code::ResourceExhausted, at(1)), Some(1), "another kind");
        for ms in 2..10_000 {
            assert_eq!(log.due("Join", Code::ResourceExhausted, at(ms)), None);
        }
        assert_eq!(log.due("Join", Code::ResourceExhausted, at(10_000)), Some(9999));
        assert_eq!(log.due("Join", Code::ResourceExhausted, at(10_001)), None);
        assert_eq!(log.kinds.len(), 2);
        // The tail of the burst: written when due, or when the run ends.
        assert_eq!(log.pending(at(10_002), false), []);
        assert_eq!(log.pending(at(20_001), false), [(("Join", Code::ResourceExhausted), 1)]);
        assert_eq!(log.due("Join", Code::ResourceExhausted, at(20_002)), None);
        assert_eq!(log.pending(at(20_003), true), [(("Join", Code::ResourceExhausted), 1)]);
        assert_eq!(log.pending(at(40_000), true), []);
    }
}
