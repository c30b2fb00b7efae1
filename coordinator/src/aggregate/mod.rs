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

    /// Positions `0..upto` have come from every worker still in the round,
    /// which trained `samples` in all. A rule that cannot [`forget`]
    /// (a running sum) may finish those positions into `out` now and let go
    /// of what it kept for them: the round is spoiled anyway if one of those
    /// workers leaves after all. `upto` only grows within a round.
    ///
    /// [`forget`]: Aggregator::forget
    fn settle(&mut self, _upto: usize, _samples: u64, _out: &mut [f32]) {}

    /// Drops everything `worker` added. Returns false when that cannot be
    /// undone (a running sum): the round is then spoiled if anything was added.
    fn forget(&mut self, worker: WorkerId) -> bool;

    /// Writes the combination of the complete contributions of `contributors`
    /// (worker, samples) into `out`; called once, with at least one
    /// contributor and a positive sample total. `start` is what every
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
