//! Norm clipping before the mean, streamed: each update Δᵢ = wᵢ − w̄ is
//! added into ONE running f64 sum as its chunks arrive, O(model) memory like
//! the mean, and no contribution may add more than a norm of τ to it.
//!
//! A streamed contribution's norm is known only once all of it has arrived,
//! too late to scale what was already summed. So each contribution has a
//! budget of τ: its chunks are added whole while their running norm stays
//! within τ, the chunk that crosses it is scaled to spend exactly what is
//! left, and the rest adds nothing. What one contribution adds then has a
//! norm of τ at most, the bound of clipping to τ, however large or however
//! ordered its values; a contribution within τ is added exactly, as the
//! mean would.
//!
//! τ is [`CLIP_FACTOR`] times the median update norm of the last finished
//! round (the lower middle one for an even count), and in a process's first
//! round, with nothing to go by (a resumed run starts afresh),
//! [`FIRST_ROUND_FACTOR`] times the norm of the starting weights.

use std::collections::BTreeMap;
use std::ops::Range;

use lazyavg_proto::chunks::Values;

use super::Aggregator;
use crate::round::WorkerId;

/// τ over the last round's median update norm: in a fault-free 5-worker
/// run 99% of the honest updates were within 1.9× the last round's median
/// (the largest 2.4×), so they are added whole, while a hostile one adds at
/// most twice an honest update.
pub const CLIP_FACTOR: f64 = 2.0;

/// τ over the norm of the starting weights in the first round: an update
/// larger than twice the weights it started from cannot be a round of
/// training, while a worker that started from its own seed (`--init
/// independent`), about √2 times the weights away, is not cut.
pub const FIRST_ROUND_FACTOR: f64 = 2.0;

/// What one contribution has added so far this round.
#[derive(Debug, Clone, Copy, Default)]
struct Budget {
    /// Squared norm of what was added to the sum: τ² at most.
    spent: f64,
    /// Squared norm of the whole update seen so far, clipped or not.
    seen: f64,
}

/// The norm-clipping rule (`--aggregate norm-clip`).
#[derive(Debug, Default)]
pub struct NormClip {
    /// Σ samplesᵢ · (clipped Δᵢ).
    sum: Vec<f64>,
    budgets: BTreeMap<WorkerId, Budget>,
    /// τ of the open round.
    threshold: f64,
    /// The last finished round's median update norm.
    last_median: Option<f64>,
}

/// The median of `values`, the lower middle one for an even count: with
/// two workers, one of them hostile, τ then follows the smaller update.
fn lower_median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_unstable_by(f64::total_cmp);
    values.get(values.len().saturating_sub(1) / 2).copied()
}

impl Aggregator for NormClip {
    fn reset(&mut self, start: &[f32]) {
        self.sum.clear();
        self.sum.resize(start.len(), 0.0);
        self.budgets.clear();
        self.threshold = match self.last_median {
            Some(median) => CLIP_FACTOR * median,
            None => FIRST_ROUND_FACTOR * start.iter().map(|&w| f64::from(w).powi(2)).sum::<f64>().sqrt(),
        };
    }

    fn add(
        &mut self,
        worker: WorkerId,
        samples: u64,
        range: Range<usize>,
        values: Values<'_>,
        start: &[f32],
        squared: f64,
    ) {
        let budget = self.budgets.entry(worker).or_default();
        budget.seen += squared;
        let left = (self.threshold * self.threshold - budget.spent).max(0.0);
        let share = if squared <= left {
            budget.spent += squared;
            1.0
        } else {
            budget.spent += left;
            (left / squared).sqrt()
        };
        if share == 0.0 {
            return;
        }
        let weight = samples as f64 * share;
        for ((acc, v), &s) in self.sum[range].iter_mut().zip(values.iter()).zip(start) {
            *acc += weight * (f64::from(v) - f64::from(s));
        }
    }

    /// A sum cannot give back a contribution.
    fn forget(&mut self, _worker: WorkerId) -> bool {
        false
    }

    /// w̄ + Σ samplesᵢ · clipped Δᵢ / Σ samplesᵢ; the contributors' update
    /// norms set the next round's τ.
    fn finish(&mut self, start: &[f32], contributors: &[(WorkerId, u64)], out: &mut [f32]) {
        let samples: u64 = contributors.iter().map(|&(_, s)| s).sum();
        let scale = 1.0 / samples as f64;
        for ((o, &sum), &w) in out.iter_mut().zip(&self.sum).zip(start) {
            *o = (f64::from(w) + sum * scale) as f32;
        }
        let norms = contributors.iter().filter_map(|(id, _)| self.budgets.get(id)).map(|b| b.seen.sqrt()).collect();
        self.last_median = lower_median(norms).or(self.last_median);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::screen::squared_distance;
    use lazyavg_proto::chunks::encode_values as le;

    fn norm(values: &[f32]) -> f64 {
        values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt()
    }

    /// One round: each contribution added in chunks of `chunk` values.
    fn round(
        rule: &mut NormClip,
        start: &[f32],
        contributions: &[(WorkerId, u64, Vec<f32>)],
        chunk: usize,
    ) -> Vec<f32> {
        rule.reset(start);
        for (id, samples, values) in contributions {
            for offset in (0..start.len()).step_by(chunk) {
                let range = offset..(offset + chunk).min(start.len());
                let bytes = le(&values[range.clone()]);
                let (values, start) = (Values::new(&bytes), &start[range.clone()]);
                rule.add(*id, *samples, range, values, start, squared_distance(values, start));
            }
        }
        let mut out = vec![0.0; start.len()];
        let done: Vec<(WorkerId, u64)> = contributions.iter().map(|(id, s, _)| (*id, *s)).collect();
        rule.finish(start, &done, &mut out);
        out
    }

    #[test]
    fn updates_within_the_bound_give_the_weighted_mean() {
        let start = [1.0f32, 2.0, 3.0];
        let mut rule = NormClip::default();
        let out = round(&mut rule, &start, &[(1, 3, vec![1.5, 2.0, 3.0]), (2, 1, vec![1.0, 2.5, 2.0])], 2);
        assert_eq!(out, [1.375, 2.125, 2.75]);
        assert!((rule.threshold - 2.0 * norm(&start)).abs() < 1e-9, "the first round's bound");
    }

    #[test]
    fn a_huge_update_adds_at_most_the_bound_whatever_its_chunks() {
        let len = 10;
        let start = vec![0.0f32; len];
        let honest = |v: f32| (1, 1, vec![v; len]);
        let mut rule = NormClip::default();
        // A first round of honest updates of norm √10 sets τ = 2√10.
        round(&mut rule, &start, &[honest(1.0), (2, 1, vec![1.0; len]), (3, 1, vec![1.0; len])], 3);
        for chunk in [1, 3, len] {
            let mut clipped = NormClip { last_median: rule.last_median, ..NormClip::default() };
            let hostile = (3, 1, vec![-1e6f32; len]);
            let out = round(&mut clipped, &start, &[honest(1.0), (2, 1, vec![1.0; len]), hostile], chunk);
            let tau = clipped.threshold;
            assert!((tau - 2.0 * norm(&[1.0; 10])).abs() < 1e-9);
            // The honest two add 2·Δ; the hostile one at most τ in norm.
            let hostile_share: Vec<f32> = out.iter().map(|&o| 3.0 * o - 2.0).collect();
            assert!((norm(&hostile_share) - tau).abs() < 1e-3 * tau, "chunks of {chunk}: {out:?}");
        }
    }

    #[test]
    fn the_bound_follows_the_last_rounds_median_update() {
        let start = [0.0f32; 2];
        let mut rule = NormClip::default();
        round(&mut rule, &start, &[(1, 1, vec![3.0, 4.0]), (2, 1, vec![0.0, 1.0]), (3, 1, vec![60.0, 80.0])], 1);
        rule.reset(&start);
        assert_eq!(rule.threshold, 2.0 * 5.0, "twice the median of 1, 5 and 100");
        round(&mut rule, &start, &[(1, 1, vec![3.0, 4.0]), (2, 1, vec![60.0, 80.0])], 2);
        rule.reset(&start);
        assert_eq!(rule.threshold, 2.0 * 5.0, "of two updates, the smaller sets the bound");
    }
}
