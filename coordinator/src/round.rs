//! One averaging round as a state machine: who is expected, what has arrived,
//! and the running weighted sum. Pure: no I/O, no clock.
//!
//! Contributions are added into ONE running f64 sum as their chunks arrive, so
//! memory is O(model) whatever the number of workers. Each worker's weight is
//! the number of samples the coordinator's own shard table says it trained
//! this round, never what the worker claims. Accumulating in f64 makes the
//! result independent of arrival order in practice (and exactly so for two
//! workers, since addition is commutative), which keeps seeded runs reproducible.

use std::collections::BTreeMap;

use lazyavg_proto::chunks::{ChunkCursor, decode_values};
use lazyavg_proto::{ProtoError, pb};

pub type WorkerId = u64;

/// Why a message was not taken into the round.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RoundError {
    #[error("stale: epoch {epoch} round {round} is over (now epoch {now_epoch} round {now_round})")]
    Stale { epoch: u64, round: u64, now_epoch: u64, now_round: u64 },
    #[error("epoch {epoch} round {round} has not started (now epoch {now_epoch} round {now_round})")]
    Future { epoch: u64, round: u64, now_epoch: u64, now_round: u64 },
    #[error("worker {0} is not part of this round")]
    NotInRound(WorkerId),
    #[error("worker {0} already sent its contribution to this round")]
    Duplicate(WorkerId),
    #[error("worker {worker} sent a non-finite value at parameter {index}")]
    NonFinite { worker: WorkerId, index: usize },
    #[error(transparent)]
    Chunk(#[from] ProtoError),
    #[error("no worker contributed to epoch {epoch} round {round}")]
    Empty { epoch: u64, round: u64 },
    #[error("epoch {epoch} round {round} must be redone: a worker left after part of its weights were summed")]
    Tainted { epoch: u64, round: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Receiving,
    Complete,
    Excluded,
}

#[derive(Debug, Clone)]
struct Part {
    weight: u64,
    cursor: ChunkCursor,
    state: State,
    loss_sum: f64,
    train_seconds: f64,
    reported: bool,
}

/// What a finished round produced besides the average itself.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundSummary {
    pub epoch: u64,
    pub round: u64,
    /// Workers whose weights are in the average, with their sample counts.
    pub contributors: Vec<(WorkerId, u64)>,
    pub samples: u64,
    pub loss_sum: f64,
    /// Mean over contributors of the seconds they spent training this round.
    pub mean_train_seconds: f64,
}

/// An open round.
#[derive(Debug)]
pub struct Round {
    epoch: u64,
    round: u64,
    parts: BTreeMap<WorkerId, Part>,
    sum: Vec<f64>,
    tainted: bool,
}

impl Round {
    /// A round over `participants` (worker, samples trained since the last
    /// sync) for a model of `len` parameters. `sum` is a buffer to reuse
    /// (cleared and resized here) so rounds do not reallocate.
    pub fn new(epoch: u64, round: u64, participants: &[(WorkerId, u64)], len: usize, mut sum: Vec<f64>) -> Self {
        sum.clear();
        sum.resize(len, 0.0);
        let parts = participants
            .iter()
            .map(|&(id, weight)| {
                let part = Part {
                    weight,
                    cursor: ChunkCursor::new(epoch, round, len),
                    state: State::Waiting,
                    loss_sum: 0.0,
                    train_seconds: 0.0,
                    reported: false,
                };
                (id, part)
            })
            .collect();
        Round { epoch, round, parts, sum, tainted: false }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn round(&self) -> u64 {
        self.round
    }

    /// The workers still expected to contribute.
    pub fn participants(&self) -> impl Iterator<Item = WorkerId> + '_ {
        self.parts.iter().filter(|(_, p)| p.state != State::Excluded).map(|(&id, _)| id)
    }

    /// Workers that have not finished sending (for timeouts and logs).
    pub fn missing(&self) -> Vec<WorkerId> {
        self.parts
            .iter()
            .filter(|(_, p)| matches!(p.state, State::Waiting | State::Receiving))
            .map(|(&id, _)| id)
            .collect()
    }

    fn check_round(&self, epoch: u64, round: u64) -> Result<(), RoundError> {
        let (now_epoch, now_round) = (self.epoch, self.round);
        match (epoch, round).cmp(&(now_epoch, now_round)) {
            std::cmp::Ordering::Less => Err(RoundError::Stale { epoch, round, now_epoch, now_round }),
            std::cmp::Ordering::Greater => Err(RoundError::Future { epoch, round, now_epoch, now_round }),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    fn part(&mut self, worker: WorkerId) -> Result<&mut Part, RoundError> {
        match self.parts.get_mut(&worker) {
            Some(p) if p.state != State::Excluded => Ok(p),
            _ => Err(RoundError::NotInRound(worker)),
        }
    }

    /// Takes a worker's report on its training for this round.
    pub fn report(&mut self, worker: WorkerId, report: &pb::RoundReport) -> Result<(), RoundError> {
        self.check_round(report.epoch, report.round)?;
        let part = self.part(worker)?;
        if part.reported {
            return Err(RoundError::Duplicate(worker));
        }
        part.reported = true;
        part.loss_sum = if report.loss_sum.is_finite() { report.loss_sum } else { 0.0 };
        part.train_seconds = if report.train_seconds.is_finite() { report.train_seconds.max(0.0) } else { 0.0 };
        Ok(())
    }

    /// Adds one chunk of a worker's weights into the running sum. A chunk with
    /// a non-finite value excludes the worker from the round (and taints the
    /// round if some of its chunks were already summed).
    pub fn accept(&mut self, worker: WorkerId, chunk: &pb::WeightsChunk) -> Result<(), RoundError> {
        self.check_round(chunk.epoch, chunk.round)?;
        let part = self.part(worker)?;
        if part.state == State::Complete {
            return Err(RoundError::Duplicate(worker));
        }
        let range = part.cursor.advance(chunk)?;
        if let Some(bad) = decode_values(&chunk.data).position(|v| !v.is_finite()) {
            let summed = part.state == State::Receiving;
            part.state = State::Excluded;
            self.tainted |= summed;
            return Err(RoundError::NonFinite { worker, index: range.start + bad });
        }
        let weight = part.weight as f64;
        part.state = if part.cursor.is_complete() { State::Complete } else { State::Receiving };
        for (acc, v) in self.sum[range].iter_mut().zip(decode_values(&chunk.data)) {
            *acc += weight * f64::from(v);
        }
        Ok(())
    }

    /// Drops a worker that left or timed out. Its weights are discarded; if
    /// some were already summed, the round is tainted and must be redone.
    pub fn exclude(&mut self, worker: WorkerId) {
        if let Some(part) = self.parts.get_mut(&worker) {
            self.tainted |= part.state == State::Receiving;
            if part.state != State::Complete {
                part.state = State::Excluded;
            }
        }
    }

    /// True when every participant still in the round has sent everything.
    pub fn is_complete(&self) -> bool {
        self.parts.values().all(|p| matches!(p.state, State::Complete | State::Excluded))
    }

    /// Writes the sample-weighted mean into `out` and returns the summary and
    /// the sum buffer for reuse. Call when [`is_complete`](Self::is_complete)
    /// (or at the round's deadline, after excluding the missing workers).
    pub fn finish(self, out: &mut [f32]) -> (Result<RoundSummary, RoundError>, Vec<f64>) {
        let (epoch, round) = (self.epoch, self.round);
        if self.tainted {
            return (Err(RoundError::Tainted { epoch, round }), self.sum);
        }
        let done: Vec<(WorkerId, &Part)> =
            self.parts.iter().filter(|(_, p)| p.state == State::Complete).map(|(&id, p)| (id, p)).collect();
        let samples: u64 = done.iter().map(|(_, p)| p.weight).sum();
        if done.is_empty() || samples == 0 {
            return (Err(RoundError::Empty { epoch, round }), self.sum);
        }
        let scale = 1.0 / samples as f64;
        for (o, &s) in out.iter_mut().zip(&self.sum) {
            *o = (s * scale) as f32;
        }
        let summary = RoundSummary {
            epoch,
            round,
            contributors: done.iter().map(|(id, p)| (*id, p.weight)).collect(),
            samples,
            loss_sum: done.iter().map(|(_, p)| p.loss_sum).sum(),
            mean_train_seconds: done.iter().map(|(_, p)| p.train_seconds).sum::<f64>() / done.len() as f64,
        };
        (Ok(summary), self.sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazyavg_proto::chunks::{VALUES_PER_CHUNK, weight_chunks};

    fn send(round: &mut Round, worker: WorkerId, params: &[f32]) -> Result<(), RoundError> {
        for chunk in weight_chunks(round.epoch, round.round, params) {
            round.accept(worker, &chunk)?;
        }
        Ok(())
    }

    #[test]
    fn average_is_weighted_by_coordinator_counts() {
        let mut round = Round::new(1, 0, &[(1, 30), (2, 10)], 3, Vec::new());
        send(&mut round, 1, &[1.0, 2.0, -4.0]).unwrap();
        assert!(!round.is_complete());
        send(&mut round, 2, &[5.0, 2.0, 4.0]).unwrap();
        assert!(round.is_complete());
        let mut avg = [0.0; 3];
        let summary = round.finish(&mut avg).0.unwrap();
        assert_eq!(avg, [2.0, 2.0, -2.0]);
        assert_eq!(summary.samples, 40);
        assert_eq!(summary.contributors, vec![(1, 30), (2, 10)]);
    }

    #[test]
    fn arrival_order_does_not_change_the_average() {
        let a: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos()).collect();
        let run = |first: (WorkerId, &[f32]), second: (WorkerId, &[f32])| {
            let mut round = Round::new(1, 0, &[(1, 7), (2, 9)], 1000, Vec::new());
            send(&mut round, first.0, first.1).unwrap();
            send(&mut round, second.0, second.1).unwrap();
            let mut out = vec![0.0; 1000];
            round.finish(&mut out).0.unwrap();
            out
        };
        assert_eq!(run((1, &a), (2, &b)), run((2, &b), (1, &a)));
    }

    #[test]
    fn stale_future_duplicate_and_strangers_are_refused() {
        let mut round = Round::new(2, 5, &[(1, 1)], 2, Vec::new());
        let chunk = |epoch, r| weight_chunks(epoch, r, &[1.0, 1.0]).next().unwrap();
        assert!(matches!(round.accept(1, &chunk(2, 4)), Err(RoundError::Stale { .. })));
        assert!(matches!(round.accept(1, &chunk(1, 9)), Err(RoundError::Stale { .. })));
        assert!(matches!(round.accept(1, &chunk(2, 6)), Err(RoundError::Future { .. })));
        assert_eq!(round.accept(9, &chunk(2, 5)), Err(RoundError::NotInRound(9)));
        round.accept(1, &chunk(2, 5)).unwrap();
        assert_eq!(round.accept(1, &chunk(2, 5)), Err(RoundError::Duplicate(1)));
        let mut out = [0.0; 2];
        assert_eq!(round.finish(&mut out).0.unwrap().samples, 1);
        assert_eq!(out, [1.0, 1.0]);
    }

    #[test]
    fn wrong_length_is_refused() {
        let mut round = Round::new(1, 0, &[(1, 1)], 3, Vec::new());
        let err = send(&mut round, 1, &[1.0, 2.0]).unwrap_err();
        assert!(err.to_string().contains("declares 2 values but the model has 3"), "{err}");
    }

    #[test]
    fn non_finite_worker_is_excluded_and_the_rest_averaged() {
        let mut round = Round::new(1, 0, &[(1, 1), (2, 1)], 2, Vec::new());
        assert_eq!(send(&mut round, 1, &[1.0, f32::NAN]), Err(RoundError::NonFinite { worker: 1, index: 1 }));
        send(&mut round, 2, &[3.0, 4.0]).unwrap();
        assert!(round.is_complete());
        let mut out = [0.0; 2];
        let summary = round.finish(&mut out).0.unwrap();
        assert_eq!((out, summary.contributors), ([3.0, 4.0], vec![(2, 1)]));
    }

    #[test]
    fn a_half_summed_contribution_taints_the_round() {
        let len = VALUES_PER_CHUNK + 1;
        let mut round = Round::new(1, 0, &[(1, 1), (2, 1)], len, Vec::new());
        let mut bad = vec![0.5f32; len];
        bad[len - 1] = f32::INFINITY;
        assert!(send(&mut round, 1, &bad).is_err());
        send(&mut round, 2, &vec![1.0; len]).unwrap();
        let mut out = vec![0.0; len];
        assert!(matches!(round.finish(&mut out).0, Err(RoundError::Tainted { .. })));
    }

    #[test]
    fn excluded_workers_do_not_block_completion() {
        let mut round = Round::new(1, 0, &[(1, 2), (2, 2)], 1, Vec::new());
        send(&mut round, 1, &[2.0]).unwrap();
        assert_eq!(round.missing(), vec![2]);
        round.exclude(2);
        assert!(round.is_complete());
        let mut out = [0.0];
        round.finish(&mut out).0.unwrap();
        assert_eq!(out, [2.0]);
    }
}
