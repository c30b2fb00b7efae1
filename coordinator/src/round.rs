//! One averaging round as a state machine: who is expected, what has arrived,
//! and how the contributions are combined. Pure: no I/O, no clock.
//!
//! Each chunk is read in place and handed to the round's [`Aggregator`]
//! (`--aggregate`, see [`crate::aggregate`]); with the default mean that is
//! ONE running f64 sum, O(model) memory whatever the number of workers, and
//! only over the positions some but not all workers have sent: the round
//! tells the aggregator how far every worker still in it has come, and the
//! model ([`ModelState`]) is stepped at those positions at once, in place:
//! the round needs no buffer for its average. A worker that leaves once
//! positions were stepped with it (its part cannot be taken out of a sum)
//! then counts for the positions it sent; before that, it spoils the round,
//! which is redone from the untouched model. Each
//! worker's weight is the number of samples the coordinator's own shard table
//! says it trained this round, never what the worker claims.
//! Under `--align` the workers match their own contributions to the round's
//! start before sending them (`lazyavg_common::matching::contribution`): the
//! round only counts, from their reports, whose units moved.

use std::collections::BTreeMap;
use std::ops::Range;

use lazyavg_proto::ProtoError;
use lazyavg_proto::chunks::{Chunk, ChunkCursor, Values};
use lazyavg_proto::message::Report;

pub use crate::aggregate::Aggregate;
use crate::aggregate::{Aggregator, Settling};
use crate::gate::{AHEAD, Frontier};
use crate::model_state::ModelState;
use crate::screen::{self, UpdateNorm};

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
    /// No worker sent usable weights and some sent non-finite ones: they
    /// would send the same again, so redoing the round cannot help.
    #[error("training diverged: no usable weights in epoch {epoch} round {round}, some were non-finite")]
    Diverged { epoch: u64, round: u64 },
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
    /// `--align`: the worker's report said matching moved units, and took this long.
    realigned: bool,
    align_seconds: f64,
    reported: bool,
    /// ‖w − start‖² of what has arrived.
    update_sq: f64,
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
    /// `--align`: how many contributors reported that matching moved units.
    pub realigned: usize,
    /// `--align`: the contributors' seconds spent matching, summed.
    pub align_seconds: f64,
    /// Every complete contribution's update norm relative to the median
    /// (outliers left out included).
    pub updates: Vec<UpdateNorm>,
    /// Outliers left out of the combination (see [`Round::dropping_outliers`]).
    pub dropped: Vec<WorkerId>,
}

/// The rule a round combines by and, for a rule that does not settle, the
/// buffer it writes the result into, handed from each round to the next
/// with their memory.
#[derive(Debug)]
pub struct Combiner {
    pub aggregator: Box<dyn Aggregator>,
    /// The last finished round's result before the outer step (scratch
    /// after it); empty for a rule that settles.
    pub average: Vec<f32>,
    /// The chunk being taken, copied from wherever it came as it is
    /// measured ([`screen::copy_measuring`]): reused chunk after chunk, or
    /// kept by the rule, which leaves one of its own in its place
    /// ([`Aggregator::add_buffer`]).
    copy: Vec<u8>,
}

impl From<Box<dyn Aggregator>> for Combiner {
    fn from(aggregator: Box<dyn Aggregator>) -> Self {
        Combiner { aggregator, average: Vec::new(), copy: Vec::new() }
    }
}

/// An open round.
#[derive(Debug)]
pub struct Round {
    epoch: u64,
    round: u64,
    parts: BTreeMap<WorkerId, Part>,
    /// The model's length.
    len: usize,
    combiner: Combiner,
    /// Positions below this are settled: where anyone counted for them,
    /// the model there is this round's result.
    settled: usize,
    /// Whether any position was stepped.
    stepped: bool,
    /// Workers that left with part of their weights summed after positions
    /// were stepped: how far each had sent, and its samples. They count for
    /// those positions.
    departed: Vec<(usize, u64)>,
    tainted: bool,
    /// Workers excluded for sending a non-finite value.
    non_finite: Vec<WorkerId>,
    /// An update norm this many times the median's makes an outlier.
    outlier_factor: f64,
    /// Leave outliers out (see [`screen`]).
    drop_outliers: bool,
}

impl Round {
    /// A round combining contributions by `combiner`, reset here (so the
    /// one a finished round gave back is reused with its buffers: at 20M
    /// parameters a fresh one each round cost a tenth of the coordinator's
    /// CPU in page faults; docs/performance.md), for workers that all started
    /// from `start` (the weights last broadcast). The round is then given
    /// the model at every call that may step it, `start` until it does.
    pub fn with(
        epoch: u64,
        round: u64,
        participants: &[(WorkerId, u64)],
        start: &[f32],
        mut combiner: Combiner,
    ) -> Self {
        let len = start.len();
        combiner.aggregator.reset(start);
        if combiner.aggregator.settles() {
            combiner.average = Vec::new();
        } else {
            combiner.average.resize(len, 0.0);
        }
        let parts = participants
            .iter()
            .map(|&(id, weight)| {
                let part = Part {
                    weight,
                    cursor: ChunkCursor::new(epoch, round, len),
                    state: State::Waiting,
                    loss_sum: 0.0,
                    train_seconds: 0.0,
                    realigned: false,
                    align_seconds: 0.0,
                    reported: false,
                    update_sq: 0.0,
                };
                (id, part)
            })
            .collect();
        Round {
            epoch,
            round,
            parts,
            len,
            combiner,
            settled: 0,
            stepped: false,
            departed: Vec::new(),
            tainted: false,
            non_finite: Vec::new(),
            outlier_factor: screen::DEFAULT_OUTLIER_FACTOR,
            drop_outliers: false,
        }
    }

    /// This round calling an outlier a contribution whose update norm is
    /// `factor` times the median or more (`--outlier-factor`; infinite: none).
    pub fn outliers_at(mut self, factor: f64) -> Self {
        self.outlier_factor = factor;
        self
    }

    /// This round leaving its outliers out of its combination. The
    /// aggregator must be able to forget a whole contribution.
    pub fn dropping_outliers(mut self) -> Self {
        self.drop_outliers = true;
        self
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn round(&self) -> u64 {
        self.round
    }

    /// Workers whose whole contribution has arrived.
    pub fn completed(&self) -> usize {
        self.parts.values().filter(|p| p.state == State::Complete).count()
    }

    /// Whether all of `worker`'s weights have arrived (and it is still in the round).
    pub fn has_sent(&self, worker: WorkerId) -> bool {
        self.parts.get(&worker).is_some_and(|p| p.state == State::Complete)
    }

    /// Workers that have not finished sending (for timeouts and logs).
    pub fn missing(&self) -> Vec<WorkerId> {
        self.parts
            .iter()
            .filter(|(_, p)| matches!(p.state, State::Waiting | State::Receiving))
            .map(|(&id, _)| id)
            .collect()
    }

    /// How far every worker still in the round has sent (all of it when
    /// none is left), for the sessions' gates ([`crate::gate`]).
    pub fn frontier(&self) -> Frontier {
        let upto = self.in_round().map(|p| p.cursor.received()).min().unwrap_or(self.len);
        Frontier { epoch: self.epoch, round: self.round, upto }
    }

    /// Workers the round is not waiting for: their weights are all in, or
    /// they wait at the gate for slower ones (for the straggler deadline,
    /// which otherwise could never see half the workers done early).
    pub fn ready(&self) -> usize {
        let limit = self.frontier().upto + AHEAD;
        self.parts
            .values()
            .filter(|p| p.state == State::Complete || (p.state == State::Receiving && p.cursor.received() >= limit))
            .count()
    }

    /// The workers that keep others waiting at the gate: those at the
    /// frontier. When the frontier is 0 they are silent and leaving them out
    /// spoils nothing; past 0 they have sent part of their weights, which a
    /// running sum keeps for the positions they sent (see `forget`). Empty
    /// when no worker is held: then whoever is missing is merely slow.
    pub fn holding_back(&self) -> Vec<WorkerId> {
        let upto = self.frontier().upto;
        let sending = || self.parts.iter().filter(|(_, p)| matches!(p.state, State::Waiting | State::Receiving));
        if !sending().any(|(_, p)| p.cursor.received() >= upto + AHEAD) {
            return Vec::new();
        }
        sending().filter(|(_, p)| p.cursor.received() == upto).map(|(&id, _)| id).collect()
    }

    fn in_round(&self) -> impl Iterator<Item = &Part> {
        self.parts.values().filter(|p| p.state != State::Excluded)
    }

    fn check_round(&self, epoch: u64, round: u64) -> Result<(), RoundError> {
        let (now_epoch, now_round) = (self.epoch, self.round);
        match (epoch, round).cmp(&(now_epoch, now_round)) {
            std::cmp::Ordering::Less => Err(RoundError::Stale { epoch, round, now_epoch, now_round }),
            std::cmp::Ordering::Greater => Err(RoundError::Future { epoch, round, now_epoch, now_round }),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// A participant still in the round (a function of the parts alone, so
    /// that the rest of the round can be read while it is borrowed).
    fn part(parts: &mut BTreeMap<WorkerId, Part>, worker: WorkerId) -> Result<&mut Part, RoundError> {
        match parts.get_mut(&worker) {
            Some(p) if p.state != State::Excluded => Ok(p),
            _ => Err(RoundError::NotInRound(worker)),
        }
    }

    /// Takes a worker's report on its training for this round.
    pub fn report(&mut self, worker: WorkerId, report: &Report) -> Result<(), RoundError> {
        self.check_round(report.epoch, report.round)?;
        let part = Self::part(&mut self.parts, worker)?;
        if part.reported {
            return Err(RoundError::Duplicate(worker));
        }
        part.reported = true;
        part.loss_sum = if report.loss_sum.is_finite() { report.loss_sum } else { 0.0 };
        part.train_seconds = if report.train_seconds.is_finite() { report.train_seconds.max(0.0) } else { 0.0 };
        part.realigned = report.realigned;
        part.align_seconds = if report.align_seconds.is_finite() { report.align_seconds.max(0.0) } else { 0.0 };
        Ok(())
    }

    /// Adds one chunk of a worker's weights into the running sum, stepping
    /// `model` (the round's start where it has not stepped it) at the
    /// positions that settles. A chunk with a non-finite value excludes the
    /// worker from the round.
    pub fn accept(&mut self, worker: WorkerId, chunk: &Chunk, model: &mut ModelState) -> Result<(), RoundError> {
        self.accept_seen(worker, chunk, model, |_| {})
    }

    /// [`accept`](Self::accept), showing `seen` the chunk's values as they
    /// were checked and will be combined (the chunk's own bytes may be in a
    /// shared-memory slot the worker writes), only if they are taken.
    pub fn accept_seen(
        &mut self,
        worker: WorkerId,
        chunk: &Chunk,
        model: &mut ModelState,
        seen: impl FnOnce(&[u8]),
    ) -> Result<(), RoundError> {
        self.check_round(chunk.epoch, chunk.round)?;
        let part = Self::part(&mut self.parts, worker)?;
        if part.state == State::Complete {
            return Err(RoundError::Duplicate(worker));
        }
        let range = part.cursor.advance(chunk)?;
        // One pass over the chunk's bytes copies them out of reach of the
        // sender (a shared-memory lane's slot), measures the update and
        // checks every value: from a finite start the distance is finite
        // exactly when they all are, so only then are they searched. (A
        // start that overflowed makes every distance infinite, not the
        // values bad.) Under --align the worker matched its weights to this
        // same start.
        let start = &model.params[range.clone()];
        let taken = 4 * range.len();
        if self.combiner.copy.len() < taken {
            self.combiner.copy.resize(taken, 0);
        }
        let copy = &mut self.combiner.copy[..taken];
        let squared = screen::copy_measuring(Values::new(&chunk.data), start, copy);
        let values = Values::new(copy);
        if let Some(bad) = (!squared.is_finite()).then(|| values.first_non_finite()).flatten() {
            let previous = part.state;
            part.state = State::Excluded;
            self.non_finite.push(worker);
            self.forget(worker, previous, range.start);
            self.settle(model);
            return Err(RoundError::NonFinite { worker, index: range.start + bad });
        }
        part.update_sq += squared;
        part.state = if part.cursor.is_complete() { State::Complete } else { State::Receiving };
        let samples = part.weight;
        seen(&self.combiner.copy[..taken]);
        if !self.add_settling(samples, range.clone(), model) {
            let (aggregator, copy) = (&mut self.combiner.aggregator, &mut self.combiner.copy);
            aggregator.add_buffer(worker, samples, range.clone(), copy, &model.params[range], squared);
            self.settle(model);
        }
        Ok(())
    }

    /// The chunk just taken, at `range`, added and the positions it
    /// finishes settled in one call, where the rule can and every position
    /// settles with one sample total (no worker left partway). False,
    /// having done nothing, otherwise.
    fn add_settling(&mut self, samples: u64, range: Range<usize>, model: &mut ModelState) -> bool {
        if self.tainted || !self.departed.is_empty() || !self.combiner.aggregator.settles() {
            return false;
        }
        let (upto, settled) = (self.frontier().upto, self.settled);
        let in_round = self.in_round().map(|p| p.weight).sum();
        let combiner = &mut self.combiner;
        let values = Values::new(&combiner.copy[..4 * range.len()]);
        let out = &mut |at, combined: &[f32]| model.fold(at, combined);
        let settling = Settling { upto, samples: in_round, out };
        if !combiner.aggregator.add_settling(samples, range, values, settling) {
            return false;
        }
        self.settled = upto.max(settled);
        self.stepped |= in_round > 0 && upto > settled;
        true
    }

    /// Steps `model` at the positions every worker that counts for them has
    /// sent (its weights come in order): those still in the round, and
    /// those that left after positions were stepped with them, as far as
    /// they had sent. A spoiled round is settled all the same, so that the
    /// aggregator's memory stays bounded, but steps nothing.
    fn settle(&mut self, model: &mut ModelState) {
        let upto = self.frontier().upto;
        let in_round = self.in_round().map(|p| p.weight).sum();
        self.settle_to(upto, in_round, model);
    }

    /// Settles positions up to `upto`, where the workers still counted in
    /// the round trained `in_round` samples, in stretches that the same
    /// departed workers count for.
    fn settle_to(&mut self, upto: usize, in_round: u64, model: &mut ModelState) {
        if !self.combiner.aggregator.settles() {
            return;
        }
        while self.settled < upto {
            let at = self.settled;
            let counted = || self.departed.iter().filter(|&&(sent, _)| sent > at);
            let next = counted().map(|&(sent, _)| sent).min().unwrap_or(upto).min(upto);
            let samples = in_round + counted().map(|&(_, samples)| samples).sum::<u64>();
            let aggregator = &mut self.combiner.aggregator;
            if self.tainted {
                aggregator.settle(next, samples, &mut |_, _| {});
            } else {
                aggregator.settle(next, samples, &mut |at, combined| model.fold(at, combined));
                self.stepped |= samples > 0;
            }
            self.settled = next;
        }
    }

    /// Drops what a worker contributed, its state having been `previous`
    /// and its weights summed up to position `sent`. An aggregator that
    /// cannot give back a partly added contribution (a running sum) keeps
    /// it for those positions once the round has stepped some (they
    /// cannot be stepped back), and is spoiled by it before.
    fn forget(&mut self, worker: WorkerId, previous: State, sent: usize) {
        let added = matches!(previous, State::Complete | State::Receiving) && sent > 0;
        if !added || self.combiner.aggregator.forget(worker) {
            return;
        }
        match self.parts.get(&worker) {
            Some(part) if self.stepped => self.departed.push((sent, part.weight)),
            _ => self.tainted = true,
        }
    }

    /// Drops a worker that left or timed out. Its weights are discarded
    /// where they can be, even complete ones (the driver hands all its
    /// untrained images to the others, so they should not be in this round
    /// too); a running sum keeps them where the round has stepped the model
    /// with them or will, and its images are then trained twice: see
    /// [`forget`](Self::forget).
    pub fn exclude(&mut self, worker: WorkerId, model: &mut ModelState) {
        let Some(part) = self.parts.get_mut(&worker) else { return };
        let previous = part.state;
        if previous != State::Excluded {
            part.state = State::Excluded;
            let sent = part.cursor.received();
            self.forget(worker, previous, sent);
            // The others' positions may now be all there is.
            self.settle(model);
        }
    }

    /// The workers excluded for sending non-finite values: they would send
    /// the same weights again if the round were redone.
    pub fn non_finite(&self) -> &[WorkerId] {
        &self.non_finite
    }

    /// Whether the round has stepped the model somewhere: then it can no
    /// longer be given up, and [`finish`](Self::finish) completes it with
    /// whoever counts, even nobody whole.
    pub fn stepped(&self) -> bool {
        self.stepped
    }

    /// True when every participant still in the round has sent everything.
    pub fn is_complete(&self) -> bool {
        self.parts.values().all(|p| matches!(p.state, State::Complete | State::Excluded))
    }

    /// Combines the contributions and steps `model` to the round's result,
    /// returning the summary and the combiner, for reuse. Call when
    /// [`is_complete`](Self::is_complete) (or at the round's deadline, after
    /// excluding the missing workers); only complete contributions count as
    /// contributors. A failed round leaves `model` as it was: one that
    /// [`stepped`](Self::stepped) it never fails.
    pub fn finish(mut self, model: &mut ModelState) -> (Result<RoundSummary, RoundError>, Combiner) {
        // A worker caught mid-transfer has part of its weights in the aggregator.
        let partial: Vec<(WorkerId, usize)> = self
            .parts
            .iter()
            .filter(|(_, p)| p.state == State::Receiving)
            .map(|(&id, p)| (id, p.cursor.received()))
            .collect();
        for (id, sent) in partial {
            self.forget(id, State::Receiving, sent);
        }
        let norms: Vec<(WorkerId, f64)> = self
            .parts
            .iter()
            .filter(|(_, p)| p.state == State::Complete)
            .map(|(&id, p)| (id, p.update_sq.sqrt()))
            .collect();
        let updates = screen::relative(&norms, self.outlier_factor);
        let mut dropped = Vec::new();
        if self.drop_outliers {
            for outlier in updates.iter().filter(|u| u.outlier) {
                if let Some(part) = self.parts.get_mut(&outlier.worker) {
                    part.state = State::Excluded;
                }
                self.forget(outlier.worker, State::Complete, self.len);
                dropped.push(outlier.worker);
            }
        }
        let done: Vec<(WorkerId, u64)> =
            self.parts.iter().filter(|(_, p)| p.state == State::Complete).map(|(&id, p)| (id, p.weight)).collect();
        let samples: u64 = done.iter().map(|&(_, s)| s).sum();
        let (epoch, round) = (self.epoch, self.round);
        // A round that stepped the model cannot be given up; else, with no
        // usable weights, a redo cannot help whatever else happened.
        let failure = if self.stepped {
            None
        } else if done.is_empty() && !self.non_finite.is_empty() {
            Some(RoundError::Diverged { epoch, round })
        } else if self.tainted {
            Some(RoundError::Tainted { epoch, round })
        } else if done.is_empty() || samples == 0 {
            Some(RoundError::Empty { epoch, round })
        } else {
            None
        };
        if failure.is_none() {
            if self.combiner.aggregator.settles() {
                self.settle_to(self.len, samples, model);
            } else {
                let combiner = &mut self.combiner;
                combiner.aggregator.finish(&model.params, &done, &mut combiner.average);
                model.step(&mut combiner.average);
            }
        }
        let Round { parts, combiner, .. } = self;
        if let Some(err) = failure {
            return (Err(err), combiner);
        }
        let summary = RoundSummary {
            epoch,
            round,
            samples,
            loss_sum: done.iter().map(|(id, _)| parts[id].loss_sum).sum(),
            mean_train_seconds: done.iter().map(|(id, _)| parts[id].train_seconds).sum::<f64>()
                / done.len().max(1) as f64,
            realigned: done.iter().filter(|(id, _)| parts[id].realigned).count(),
            align_seconds: done.iter().map(|(id, _)| parts[id].align_seconds).sum(),
            contributors: done,
            updates,
            dropped,
        };
        (Ok(summary), combiner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use lazyavg_common::outer::{OuterOptimizer, OuterRule, OuterSettings};
    use lazyavg_proto::chunks::{VALUES_PER_CHUNK, weight_chunks};

    /// A round with the model it steps, by plain averaging: the model after
    /// the round is its average.
    struct Open {
        round: Round,
        model: ModelState,
    }

    impl std::ops::Deref for Open {
        type Target = Round;

        fn deref(&self) -> &Round {
            &self.round
        }
    }

    impl Open {
        /// A mean round over `participants` (worker, samples trained since
        /// the last sync) for a model of `len` parameters started from zeros.
        fn new(epoch: u64, round: u64, participants: &[(WorkerId, u64)], len: usize) -> Self {
            Self::aggregating(epoch, round, participants, len, Aggregate::Mean)
        }

        /// A round combining contributions by `rule`, for a model of `len`
        /// parameters started from zeros.
        fn aggregating(epoch: u64, round: u64, participants: &[(WorkerId, u64)], len: usize, rule: Aggregate) -> Self {
            Self::with(epoch, round, participants, &vec![0.0; len], rule.aggregator(false).into())
        }

        fn with(epoch: u64, round: u64, participants: &[(WorkerId, u64)], start: &[f32], combiner: Combiner) -> Self {
            let averaging = OuterSettings::new(OuterRule::Avg, 1.0, 0.0).expect("valid settings");
            let model = ModelState::new(start.to_vec(), OuterOptimizer::new(averaging));
            Open { round: Round::with(epoch, round, participants, start, combiner), model }
        }

        fn dropping_outliers(self) -> Self {
            Open { round: self.round.dropping_outliers(), ..self }
        }

        fn accept(&mut self, worker: WorkerId, chunk: &Chunk) -> Result<(), RoundError> {
            self.round.accept(worker, chunk, &mut self.model)
        }

        fn exclude(&mut self, worker: WorkerId) {
            self.round.exclude(worker, &mut self.model)
        }
    }

    /// Finishes `open`, copying the model it made into `out`.
    fn finish_into(open: Open, out: &mut [f32]) -> (Result<RoundSummary, RoundError>, Combiner) {
        let Open { round, mut model } = open;
        let (result, combiner) = round.finish(&mut model);
        if result.is_ok() {
            out.copy_from_slice(&model.params);
        }
        (result, combiner)
    }

    fn send(round: &mut Open, worker: WorkerId, params: &[f32]) -> Result<(), RoundError> {
        for chunk in weight_chunks(round.epoch(), round.round(), params) {
            round.accept(worker, &chunk)?;
        }
        Ok(())
    }

    #[test]
    fn average_is_weighted_by_coordinator_counts() {
        let mut round = Open::new(1, 0, &[(1, 30), (2, 10)], 3);
        send(&mut round, 1, &[1.0, 2.0, -4.0]).unwrap();
        assert!(!round.is_complete());
        assert!(round.has_sent(1) && !round.has_sent(2) && !round.has_sent(3));
        send(&mut round, 2, &[5.0, 2.0, 4.0]).unwrap();
        assert!(round.is_complete() && round.has_sent(2));
        let mut avg = [0.0; 3];
        let summary = finish_into(round, &mut avg).0.unwrap();
        assert_eq!(avg, [2.0, 2.0, -2.0]);
        assert_eq!(summary.samples, 40);
        assert_eq!(summary.contributors, vec![(1, 30), (2, 10)]);
    }

    #[test]
    fn arrival_order_does_not_change_the_average() {
        let a: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos()).collect();
        let run = |first: (WorkerId, &[f32]), second: (WorkerId, &[f32])| {
            let mut round = Open::new(1, 0, &[(1, 7), (2, 9)], 1000);
            send(&mut round, first.0, first.1).unwrap();
            send(&mut round, second.0, second.1).unwrap();
            let mut out = vec![0.0; 1000];
            finish_into(round, &mut out).0.unwrap();
            out
        };
        assert_eq!(run((1, &a), (2, &b)), run((2, &b), (1, &a)));
    }

    #[test]
    fn stale_future_duplicate_and_strangers_are_refused() {
        let mut round = Open::new(2, 5, &[(1, 1)], 2);
        let chunk = |epoch, r| weight_chunks(epoch, r, &[1.0, 1.0]).next().unwrap();
        assert!(matches!(round.accept(1, &chunk(2, 4)), Err(RoundError::Stale { .. })));
        assert!(matches!(round.accept(1, &chunk(1, 9)), Err(RoundError::Stale { .. })));
        assert!(matches!(round.accept(1, &chunk(2, 6)), Err(RoundError::Future { .. })));
        assert_eq!(round.accept(9, &chunk(2, 5)), Err(RoundError::NotInRound(9)));
        round.accept(1, &chunk(2, 5)).unwrap();
        assert_eq!(round.accept(1, &chunk(2, 5)), Err(RoundError::Duplicate(1)));
        let mut out = [0.0; 2];
        assert_eq!(finish_into(round, &mut out).0.unwrap().samples, 1);
        assert_eq!(out, [1.0, 1.0]);
    }

    #[test]
    fn wrong_length_is_refused() {
        let mut round = Open::new(1, 0, &[(1, 1)], 3);
        let err = send(&mut round, 1, &[1.0, 2.0]).unwrap_err();
        assert!(err.to_string().contains("declares 2 values but the model has 3"), "{err}");
    }

    #[test]
    fn non_finite_worker_is_excluded_and_the_rest_averaged() {
        let mut round = Open::new(1, 0, &[(1, 1), (2, 1)], 2);
        assert_eq!(send(&mut round, 1, &[1.0, f32::NAN]), Err(RoundError::NonFinite { worker: 1, index: 1 }));
        send(&mut round, 2, &[3.0, 4.0]).unwrap();
        assert!(round.is_complete());
        let mut out = [0.0; 2];
        let summary = finish_into(round, &mut out).0.unwrap();
        assert_eq!((out, summary.contributors), ([3.0, 4.0], vec![(2, 1)]));
    }

    #[test]
    fn a_round_with_only_non_finite_weights_has_diverged() {
        let mut round = Open::new(1, 4, &[(1, 1), (2, 1)], 2);
        assert!(send(&mut round, 1, &[f32::INFINITY, 0.0]).is_err());
        assert!(send(&mut round, 2, &[0.0, f32::NAN]).is_err());
        assert!(round.is_complete());
        assert_eq!(finish_into(round, &mut [0.0; 2]).0.unwrap_err(), RoundError::Diverged { epoch: 1, round: 4 });
        let mut silent = Open::new(1, 5, &[(1, 1)], 2);
        silent.exclude(1);
        assert_eq!(finish_into(silent, &mut [0.0; 2]).0.unwrap_err(), RoundError::Empty { epoch: 1, round: 5 });
    }

    #[test]
    fn a_half_summed_contribution_taints_the_round() {
        let len = VALUES_PER_CHUNK + 1;
        let mut round = Open::new(1, 0, &[(1, 1), (2, 1)], len);
        let mut bad = vec![0.5f32; len];
        bad[len - 1] = f32::INFINITY;
        assert!(send(&mut round, 1, &bad).is_err());
        send(&mut round, 2, &vec![1.0; len]).unwrap();
        assert_eq!(round.non_finite(), [1], "named, so a redo can go on without it");
        let mut out = vec![0.0; len];
        assert!(matches!(finish_into(round, &mut out).0, Err(RoundError::Tainted { .. })));

        // When no worker is left with usable weights, a redo cannot help.
        let mut round = Open::new(1, 1, &[(1, 1)], len);
        let mut worse = bad.clone();
        worse[0] = f32::NAN;
        assert!(send(&mut round, 1, &worse).is_err());
        assert_eq!(finish_into(round, &mut out).0.unwrap_err(), RoundError::Diverged { epoch: 1, round: 1 });

        // A lone worker whose first chunk was finite stepped the model
        // there: the round completes with it, for what it sent.
        let mut round = Open::new(1, 2, &[(1, 1)], len);
        assert!(send(&mut round, 1, &bad).is_err());
        assert!(round.stepped());
        let summary = finish_into(round, &mut out).0.expect("a stepped round completes");
        assert!(summary.contributors.is_empty());
        assert!(out[..VALUES_PER_CHUNK].iter().all(|&w| w == 0.5) && out[len - 1] == 0.0);
    }

    #[test]
    fn median_and_trimmed_mean_resist_one_hostile_worker() {
        let honest = [[1.0f32, -2.0], [1.2, -2.2], [0.8, -1.8], [1.1, -2.1]];
        let hostile = [1e30f32, 1e30];
        for rule in [Aggregate::Median, Aggregate::TrimmedMean, Aggregate::CenteredClip] {
            let ids: Vec<(WorkerId, u64)> = (1..=5).map(|id| (id, 10)).collect();
            let mut round = Open::aggregating(1, 0, &ids, 2, rule);
            for (id, w) in (1..=4).zip(honest.iter()) {
                send(&mut round, id, w).unwrap();
            }
            send(&mut round, 5, &hostile).unwrap();
            let mut out = [0.0; 2];
            finish_into(round, &mut out).0.unwrap();
            // Each coordinate stays within what the honest workers sent.
            assert!((0.8..=1.2).contains(&out[0]) && (-2.2..=-1.8).contains(&out[1]), "{rule:?}: {out:?}");
        }
        let mut mean = Open::aggregating(1, 0, &[(1, 1), (2, 1)], 1, Aggregate::Mean);
        send(&mut mean, 1, &[1.0]).unwrap();
        send(&mut mean, 2, &[1e30]).unwrap();
        let mut out = [0.0];
        finish_into(mean, &mut out).0.unwrap();
        assert!(out[0] > 1e29, "the plain mean follows the outlier");
    }

    #[test]
    fn a_scaled_contribution_is_named_and_left_out_when_asked() {
        let start = [1.0f32, -1.0];
        let honest = [[1.1f32, -0.9], [1.12, -0.92], [1.08, -0.88], [1.1, -0.9]];
        let ids: Vec<(WorkerId, u64)> = (1..=5).map(|id| (id, 10)).collect();
        let rules = [Aggregate::Mean, Aggregate::Median, Aggregate::TrimmedMean, Aggregate::CenteredClip];
        for (rule, drop) in rules.map(|r| (r, true)).into_iter().chain([(Aggregate::Mean, false)]) {
            let mut round = Open::with(1, 0, &ids, &start, rule.aggregator(drop).into());
            if drop {
                round = round.dropping_outliers();
            }
            for (id, w) in (1..=4).zip(honest.iter()) {
                send(&mut round, id, w).unwrap();
            }
            send(&mut round, 5, &start.map(|w| 100.0 * w)).unwrap();
            let mut out = [0.0; 2];
            let summary = finish_into(round, &mut out).0.unwrap();
            let named: Vec<WorkerId> = summary.updates.iter().filter(|u| u.outlier).map(|u| u.worker).collect();
            assert_eq!(named, [5], "{rule:?}: {:?}", summary.updates);
            if drop {
                assert_eq!(summary.dropped, [5]);
                assert_eq!(summary.contributors.len(), 4);
                assert!((out[0] - 1.1).abs() < 0.02 && (out[1] + 0.9).abs() < 0.02, "{rule:?}: {out:?}");
            } else {
                assert!(summary.dropped.is_empty() && out[0] > 10.0, "the plain mean follows it: {out:?}");
            }
        }
    }

    #[test]
    fn finite_values_are_taken_even_from_a_start_that_overflowed() {
        let start = [f32::INFINITY, 1.0];
        let mut round = Open::with(1, 0, &[(1, 1), (2, 1)], &start, Aggregate::Mean.aggregator(false).into());
        send(&mut round, 1, &[1.0, 2.0]).unwrap();
        assert_eq!(send(&mut round, 2, &[3.0, f32::NAN]), Err(RoundError::NonFinite { worker: 2, index: 1 }));
        let mut out = [0.0; 2];
        let summary = finish_into(round, &mut out).0.unwrap();
        assert_eq!((summary.contributors, out), (vec![(1, 1)], [1.0, 2.0]));
    }

    #[test]
    fn a_chunk_is_shown_as_checked_only_when_it_is_taken_whoever_keeps_its_copy() {
        let len = VALUES_PER_CHUNK + 3;
        let mut round = Open::new(1, 0, &[(1, 1), (2, 1)], len);
        let ones: Vec<f32> = (0..len).map(|i| 1.0 + i as f32).collect();
        let mut bad = vec![2.0; len];
        bad[7] = f32::NAN;
        let (mut shown_chunks, mut refused) = (0, 0);
        for (worker, params) in [(1, &ones), (2, &bad)] {
            for chunk in weight_chunks(1, 0, params) {
                let mut shown = None;
                let taken = round.round.accept_seen(worker, &chunk, &mut round.model, |v| shown = Some(v.to_vec()));
                // The mean keeps worker 1's first chunk (a whole block) as
                // the round copied it: what was shown is what was sent.
                match taken {
                    Ok(()) => {
                        assert!(shown.as_deref() == Some(&chunk.data[..]), "worker {worker}: shown as sent");
                        shown_chunks += 1;
                    }
                    Err(_) => {
                        assert!(shown.is_none(), "worker {worker}: a refused chunk is not shown");
                        refused += 1;
                    }
                }
            }
        }
        assert_eq!((shown_chunks, refused), (2, 2), "worker 1's chunks taken, worker 2's refused");
        let mut out = vec![0.0; len];
        let summary = finish_into(round, &mut out).0.expect("worker 1 counts");
        assert_eq!(summary.contributors, vec![(1, 1)]);
        assert!(out == ones, "worker 1's weights alone");
    }

    #[test]
    fn a_mean_round_steps_the_model_in_place_with_no_buffer_for_its_average() {
        let len = 2 * VALUES_PER_CHUNK + 5;
        let mut round = Open::new(1, 1, &[(1, 1), (2, 3)], len);
        let before = Arc::as_ptr(&round.model.params);
        assert!(round.combiner.average.is_empty(), "no model-sized buffer");
        let (ones, fives): (Vec<Chunk>, Vec<Chunk>) =
            (weight_chunks(1, 1, &vec![1.0; len]).collect(), weight_chunks(1, 1, &vec![5.0; len]).collect());
        round.accept(1, &ones[0]).unwrap();
        assert_eq!(round.model.params[0], 0.0, "not settled before every worker sent it");
        round.accept(2, &fives[0]).unwrap();
        assert_eq!(round.model.params[..VALUES_PER_CHUNK], vec![4.0; VALUES_PER_CHUNK], "stepped at once");
        assert_eq!(round.model.params[VALUES_PER_CHUNK], 0.0);
        // A push still holding the weights keeps what it holds.
        let pushed = Arc::clone(&round.model.params);
        for (one, five) in ones[1..].iter().zip(&fives[1..]) {
            round.accept(1, one).unwrap();
            round.accept(2, five).unwrap();
        }
        assert!(pushed[VALUES_PER_CHUNK..].iter().all(|&w| w == 0.0), "copied on write");
        drop(pushed);
        let (ptr, mut out) = (Arc::as_ptr(&round.model.params), vec![0.0; len]);
        let (result, combiner) = finish_into(round, &mut out);
        assert!(result.is_ok() && out.iter().all(|&w| w == 4.0));
        assert!(combiner.average.is_empty());
        assert_ne!(before, ptr, "the copy made for the push is the model now");
    }

    #[test]
    fn a_worker_that_leaves_after_positions_were_stepped_counts_for_what_it_sent() {
        let len = 3 * VALUES_PER_CHUNK;
        let mut round = Open::new(1, 0, &[(1, 1), (2, 1), (3, 2)], len);
        let chunks = |v: f32| weight_chunks(1, 0, &vec![v; len]).collect::<Vec<Chunk>>();
        let (one, two, three) = (chunks(1.0), chunks(2.0), chunks(4.0));
        for (worker, chunks) in [(1, &one), (2, &two), (3, &three)] {
            round.accept(worker, &chunks[0]).unwrap();
        }
        // Worker 1 sends its second chunk and leaves; 2 and 3 go on.
        round.accept(1, &one[1]).unwrap();
        round.exclude(1);
        send_rest(&mut round, 2, &two[1..]);
        send_rest(&mut round, 3, &three[1..]);
        let mut out = vec![0.0; len];
        let summary = finish_into(round, &mut out).0.expect("not redone: positions were stepped with worker 1");
        assert_eq!(summary.contributors, [(2, 1), (3, 2)]);
        let (with, without) = ((1.0 + 2.0 + 8.0) / 4.0, (2.0 + 8.0) / 3.0);
        let stretch = |chunk: usize| &out[chunk * VALUES_PER_CHUNK..(chunk + 1) * VALUES_PER_CHUNK];
        assert!(stretch(0).iter().chain(stretch(1)).all(|&w| w == with), "{} {}", stretch(0)[0], stretch(1)[0]);
        assert!(stretch(2).iter().all(|&w| w == without as f32), "{}", stretch(2)[0]);
    }

    #[test]
    fn a_round_that_stepped_the_model_is_not_given_up_when_everyone_leaves() {
        let len = 3 * VALUES_PER_CHUNK;
        let mut round = Open::new(1, 0, &[(1, 1), (2, 3)], len);
        let (ones, fives): (Vec<Chunk>, Vec<Chunk>) =
            (weight_chunks(1, 0, &vec![1.0; len]).collect(), weight_chunks(1, 0, &vec![5.0; len]).collect());
        round.accept(1, &ones[0]).unwrap();
        assert!(!round.stepped());
        round.accept(2, &fives[0]).unwrap();
        assert!(round.stepped());
        round.accept(2, &fives[1]).unwrap();
        round.exclude(1);
        round.exclude(2);
        let mut out = vec![0.0; len];
        let summary = finish_into(round, &mut out).0.expect("completed with whoever counts");
        assert!(summary.contributors.is_empty() && summary.samples == 0);
        assert_eq!(summary.mean_train_seconds, 0.0);
        let stretch = |chunk: usize| &out[chunk * VALUES_PER_CHUNK..(chunk + 1) * VALUES_PER_CHUNK];
        assert!(stretch(0).iter().all(|&w| w == 4.0), "both: {}", stretch(0)[0]);
        assert!(stretch(1).iter().all(|&w| w == 5.0), "worker 2 alone: {}", stretch(1)[0]);
        assert!(stretch(2).iter().all(|&w| w == 0.0), "nobody sent it: the start");
    }

    #[test]
    fn a_spoiled_round_leaves_the_model_as_it_was() {
        let len = 2 * VALUES_PER_CHUNK;
        let mut round = Open::new(1, 0, &[(1, 1), (2, 1)], len);
        let first = weight_chunks(1, 0, &vec![9.0; len]).next().unwrap();
        round.accept(1, &first).unwrap();
        round.exclude(1);
        send(&mut round, 2, &vec![1.0; len]).unwrap();
        let Open { round, mut model } = round;
        assert!(matches!(round.finish(&mut model).0, Err(RoundError::Tainted { .. })));
        assert!(model.params.iter().all(|&w| w == 0.0), "settled all the same, but nothing stepped");
    }

    fn send_rest(round: &mut Open, worker: WorkerId, chunks: &[Chunk]) {
        for chunk in chunks {
            round.accept(worker, chunk).unwrap();
        }
    }

    #[test]
    fn norm_clipping_names_a_scaled_contribution_and_bounds_it_without_leaving_it_out() {
        let start = [1.0f32, -1.0];
        let honest = [[1.1f32, -0.9], [1.12, -0.92], [1.08, -0.88], [1.1, -0.9]];
        let ids: Vec<(WorkerId, u64)> = (1..=5).map(|id| (id, 10)).collect();
        let mut aggregator: Combiner = Aggregate::NormClip.aggregator(false).into();
        let mut out = [0.0; 2];
        for round in 0..2 {
            let mut open = Open::with(1, round, &ids, &start, aggregator);
            for (id, w) in (1..=4).zip(honest.iter()) {
                send(&mut open, id, w).unwrap();
            }
            // The first round sets the bound, twice its median update norm.
            let fifth = if round == 0 { honest[0] } else { start.map(|w| 100.0 * w) };
            send(&mut open, 5, &fifth).unwrap();
            let (summary, back) = finish_into(open, &mut out);
            aggregator = back;
            let summary = summary.unwrap();
            assert!(summary.dropped.is_empty() && summary.contributors.len() == 5);
            let named: Vec<WorkerId> = summary.updates.iter().filter(|u| u.outlier).map(|u| u.worker).collect();
            assert_eq!(named, if round == 0 { vec![] } else { vec![5] });
        }
        // The honest four add 4 · (0.1, 0.1) over 5 workers; the ×100 one at
        // most τ = 2 · 0.1·√2 in norm (the first round's median), over 5.
        let bias = ((out[0] - 1.08).powi(2) + (out[1] + 0.92).powi(2)).sqrt();
        let tau = 2.0 * 0.1 * 2f32.sqrt();
        assert!(bias <= tau / 5.0 + 1e-4, "{out:?}: bias {bias}");
        assert!(bias > tau / 5.0 - 1e-3, "its budget is spent: {out:?}");
    }

    #[test]
    fn a_robust_round_forgets_a_worker_that_left_mid_transfer() {
        let len = VALUES_PER_CHUNK + 1;
        let mut round = Open::aggregating(1, 0, &[(1, 1), (2, 1), (3, 1)], len, Aggregate::Median);
        let first = weight_chunks(1, 0, &vec![9.0; len]).next().unwrap();
        round.accept(1, &first).unwrap();
        round.exclude(1);
        send(&mut round, 2, &vec![1.0; len]).unwrap();
        send(&mut round, 3, &vec![3.0; len]).unwrap();
        let mut out = vec![0.0; len];
        finish_into(round, &mut out).0.unwrap();
        assert!(out.iter().all(|&v| v == 2.0));
    }

    #[test]
    fn a_complete_contribution_of_a_worker_that_left_is_discarded() {
        let mut mean = Open::new(1, 0, &[(1, 1), (2, 1)], 1);
        send(&mut mean, 1, &[2.0]).unwrap();
        mean.exclude(1);
        assert!(!mean.has_sent(1), "an excluded worker's weights do not count");
        send(&mut mean, 2, &[4.0]).unwrap();
        let mut out = [0.0];
        assert!(matches!(finish_into(mean, &mut out).0, Err(RoundError::Tainted { .. })));
        let mut median = Open::aggregating(1, 0, &[(1, 1), (2, 1)], 1, Aggregate::Median);
        send(&mut median, 1, &[2.0]).unwrap();
        median.exclude(1);
        send(&mut median, 2, &[4.0]).unwrap();
        let summary = finish_into(median, &mut out).0.unwrap();
        assert_eq!((out, summary.contributors), ([4.0], vec![(2, 1)]));
    }

    #[test]
    fn the_frontier_is_the_slowest_worker_still_in_the_round_and_names_who_holds_the_others() {
        let len = AHEAD + 3 * VALUES_PER_CHUNK;
        let mut round = Open::new(1, 2, &[(1, 1), (2, 1), (3, 1)], len);
        let chunks: Vec<Chunk> = weight_chunks(1, 2, &vec![1.0; len]).collect();
        let upto = |round: &Open| round.frontier().upto;
        assert_eq!(round.frontier(), Frontier { epoch: 1, round: 2, upto: 0 });
        // 1 sends as far as the gate lets it, 2 one chunk, 3 nothing.
        for chunk in &chunks[..AHEAD / VALUES_PER_CHUNK] {
            round.accept(1, chunk).unwrap();
        }
        round.accept(2, &chunks[0]).unwrap();
        assert_eq!(upto(&round), 0);
        assert_eq!(round.ready(), 1, "1 waits at the gate");
        assert_eq!(round.holding_back(), [3], "the silent one holds 1 back; 2 is sending");
        // Without 3, 1 is free again: nobody is held.
        round.exclude(3);
        assert_eq!(upto(&round), VALUES_PER_CHUNK);
        assert!(round.holding_back().is_empty());
        for chunk in &chunks[AHEAD / VALUES_PER_CHUNK..] {
            round.accept(1, chunk).unwrap();
        }
        for chunk in &chunks[1..] {
            round.accept(2, chunk).unwrap();
        }
        assert_eq!(upto(&round), len);
        let mut out = vec![0.0; len];
        finish_into(round, &mut out).0.unwrap();
        assert!(out.iter().all(|&v| v == 1.0));
        // With nobody left, everything is let through.
        let mut empty = Open::new(1, 3, &[(1, 1)], 5);
        empty.exclude(1);
        assert_eq!(upto(&empty), 5);
    }

    #[test]
    fn excluded_workers_do_not_block_completion() {
        let mut round = Open::new(1, 0, &[(1, 2), (2, 2)], 1);
        send(&mut round, 1, &[2.0]).unwrap();
        assert_eq!(round.missing(), vec![2]);
        round.exclude(2);
        assert!(round.is_complete());
        let mut out = [0.0];
        finish_into(round, &mut out).0.unwrap();
        assert_eq!(out, [2.0]);
    }
}
