//! How a round combines its contributions: one small unit per rule behind
//! [`Aggregator`], chosen once from `--aggregate` by [`Aggregate::aggregator`].
//!
//! A round feeds an aggregator values read in place, position range by
//! position range, as chunks arrive: so the mean and norm clipping keep one
//! running f64 sum, O(model) whatever the number of workers (the mean only
//! over the positions some but not all workers have sent), while the other robust
//! rules keep every contribution whole ([`Whole`]) and combine the updates
//! relative to the round's start.

mod clip;
mod coordinatewise;
mod mean;
mod norm_clip;
mod whole;

use std::fmt;
use std::ops::Range;

pub use clip::CenteredClip;
pub use coordinatewise::{Coordinatewise, Median, Statistic, TrimmedMean};
pub use mean::{UpdateMean, WeightedMean};
pub use norm_clip::NormClip;
pub use whole::{UpdateRule, Whole};

use lazyavg_proto::chunks::Values;

use crate::round::WorkerId;

/// Where a rule that settles hands finished positions: the first position
/// and the combined values from there.
pub type Settled<'a> = dyn FnMut(usize, &[f32]) + 'a;

/// The positions a contribution's chunk finishes: those below `upto` have
/// then come from every worker that counts for them, which trained
/// `samples` in all, and their combination goes to `out` (as in
/// [`Aggregator::settle`]).
pub struct Settling<'a, 'b> {
    pub upto: usize,
    pub samples: u64,
    pub out: &'a mut Settled<'b>,
}

/// One rule for combining the workers' weights into a round's result.
pub trait Aggregator: fmt::Debug + Send {
    /// Starts a new round from `start` (the weights last broadcast, which
    /// every contributor started from), keeping buffers.
    fn reset(&mut self, start: &[f32]);

    /// Takes positions `range` of `worker`'s contribution, trained on
    /// `samples` (the coordinator's count), read in place from the chunk
    /// that brought them; `start` is the round's start at those positions,
    /// and `squared` is ‖values − start‖², which the round measures for its
    /// screen anyway. Each position of a worker comes once.
    fn add(
        &mut self,
        worker: WorkerId,
        samples: u64,
        range: Range<usize>,
        values: Values<'_>,
        start: &[f32],
        squared: f64,
    );

    /// As [`add`], with the values in the first `4 · range.len()` bytes of
    /// `copy`, the round's own copy of the chunk: a rule that would copy
    /// them may keep the buffer instead, leaving one of its own (of any
    /// length) in its place for the round's next chunk.
    ///
    /// [`add`]: Aggregator::add
    fn add_buffer(
        &mut self,
        worker: WorkerId,
        samples: u64,
        range: Range<usize>,
        copy: &mut Vec<u8>,
        start: &[f32],
        squared: f64,
    ) {
        let values = Values::new(&copy[..4 * range.len()]);
        self.add(worker, samples, range, values, start, squared);
    }

    /// Whether the rule finishes positions as they settle ([`settle`]), so
    /// that a round can step the model there at once and needs no buffer for
    /// its whole result; such a rule is never [`finish`]ed by a round.
    ///
    /// [`settle`]: Aggregator::settle
    /// [`finish`]: Aggregator::finish
    fn settles(&self) -> bool {
        false
    }

    /// Positions up to `upto` have come from every worker that counts for
    /// them, which trained `samples` in all: a rule that [`settles`] hands
    /// their combination to `out` (first position, values) and lets go of
    /// what it kept for them. `upto` only grows within a round; positions
    /// between two calls share one sample total.
    ///
    /// [`settles`]: Aggregator::settles
    fn settle(&mut self, _upto: usize, _samples: u64, _out: &mut Settled<'_>) {}

    /// [`add`] and then [`settle`] in one, for a chunk that finishes
    /// positions: a rule that can combines those positions as it takes
    /// them, in one pass, instead of adding them to a sum that the settle
    /// reads back. Returns false, having done nothing, where the rule does
    /// not (the round then adds and settles).
    ///
    /// [`add`]: Aggregator::add
    /// [`settle`]: Aggregator::settle
    fn add_settling(&mut self, _samples: u64, _range: Range<usize>, _values: Values<'_>, _: Settling<'_, '_>) -> bool {
        false
    }

    /// Drops everything `worker` added. Returns false when that cannot be
    /// undone (a running sum): then the round either keeps the worker for
    /// the positions it sent (once some have settled) or is spoiled.
    fn forget(&mut self, worker: WorkerId) -> bool;

    /// Writes the combination of the complete contributions of `contributors`
    /// (worker, samples) into `out` (the positions not settled yet); called
    /// once, with at least one contributor and a positive sample total. `start` is what every
    /// contributor started the round from (the weights last broadcast), the
    /// origin of the updates that robust rules compare.
    fn finish(&mut self, start: &[f32], contributors: &[(WorkerId, u64)], out: &mut [f32]);
}

/// How a round combines the workers' weights (`--aggregate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregate {
    /// Sample-weighted mean: the exact lazy-aggregation update, O(model) memory.
    #[default]
    Mean,
    /// Coordinate-wise median of the updates: a minority of bad workers
    /// never wins a coordinate, but can tilt each one.
    Median,
    /// Coordinate-wise mean of the updates after dropping the largest and
    /// smallest values, as many as under a third of the workers (at least
    /// one each from 3 workers on).
    TrimmedMean,
    /// Centered clipping of the updates around their median, by their median
    /// distance from it: the bias a minority can add stays a fraction of the
    /// honest updates' spread.
    CenteredClip,
    /// The mean of the updates, each clipped as it streams in to twice the
    /// last round's median update norm: O(model) memory like the mean, and
    /// no contribution moves the average by more than that.
    NormClip,
}

impl Aggregate {
    /// The unit that implements this rule: the one place the flag is branched
    /// on. With `drop_outliers`, a round may leave a whole contribution out
    /// at its end: the mean then keeps them whole too.
    pub fn aggregator(self, drop_outliers: bool) -> Box<dyn Aggregator> {
        match self {
            Aggregate::Mean if drop_outliers => Box::new(Whole::new(UpdateMean)),
            Aggregate::Mean => Box::new(WeightedMean::default()),
            Aggregate::Median => Box::new(Whole::new(Coordinatewise::new(Median))),
            Aggregate::TrimmedMean => Box::new(Whole::new(Coordinatewise::new(TrimmedMean))),
            Aggregate::CenteredClip => Box::new(Whole::new(CenteredClip)),
            Aggregate::NormClip => Box::new(NormClip::default()),
        }
    }

    /// Whether the rule keeps contributions whole and so leaves outliers out
    /// of a round; a streamed rule (the mean, norm clipping) has summed them.
    pub fn leaves_out_outliers(self) -> bool {
        matches!(self, Aggregate::Median | Aggregate::TrimmedMean | Aggregate::CenteredClip)
    }

    /// Whether the rule is robust while streaming: it keeps an outlier in
    /// the round, bounded, having summed it before its norm was known.
    pub fn bounds_outliers(self) -> bool {
        matches!(self, Aggregate::NormClip)
    }
}
