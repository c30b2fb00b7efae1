//! The sample-weighted mean, Σ samples_i · w_i / Σ samples_i, in ONE running
//! f64 sum added into as values arrive. Accumulating in f64 makes the result
//! independent of arrival order in practice (and exactly so for two workers,
//! since addition is commutative), which keeps seeded runs reproducible.

use std::ops::Range;

use lazyavg_proto::chunks::Values;

use super::{Aggregator, UpdateRule};
use crate::round::WorkerId;

#[derive(Debug, Default)]
pub struct WeightedMean {
    sum: Vec<f64>,
}

impl Aggregator for WeightedMean {
    fn reset(&mut self, start: &[f32]) {
        self.sum.clear();
        self.sum.resize(start.len(), 0.0);
    }

    fn add(
        &mut self,
        _worker: WorkerId,
        samples: u64,
        range: Range<usize>,
        values: Values<'_>,
        _start: &[f32],
        _squared: f64,
    ) {
        let weight = samples as f64;
        for (acc, v) in self.sum[range].iter_mut().zip(values.iter()) {
            *acc += weight * f64::from(v);
        }
    }

    /// A sum cannot give back a contribution.
    fn forget(&mut self, _worker: WorkerId) -> bool {
        false
    }

    /// The mean of the weights themselves, not of updates: bit for bit what
    /// it has always been.
    fn finish(&mut self, _start: &[f32], contributors: &[(WorkerId, u64)], out: &mut [f32]) {
        let samples: u64 = contributors.iter().map(|&(_, s)| s).sum();
        let scale = 1.0 / samples as f64;
        for (o, &s) in out.iter_mut().zip(&self.sum) {
            *o = (s * scale) as f32;
        }
    }
}

/// The sample-weighted mean of whole updates: the mean for a round that may
/// leave an outlier out once every contribution is in (`--drop-outliers`),
/// which a running sum cannot. It costs what the robust rules cost, a copy of
/// every contribution, and equals the running mean up to rounding.
#[derive(Debug, Clone, Copy)]
pub struct UpdateMean;

impl UpdateRule for UpdateMean {
    fn combine(&self, updates: &[&[f32]], samples: &[u64], out: &mut [f32]) {
        let scale = 1.0 / samples.iter().sum::<u64>() as f64;
        for (i, o) in out.iter_mut().enumerate() {
            let sum: f64 = updates.iter().zip(samples).map(|(u, &s)| s as f64 * f64::from(u[i])).sum();
            *o = (sum * scale) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazyavg_proto::chunks::encode_values as le;

    #[test]
    fn the_update_mean_weighs_by_samples() {
        let mut out = [0.0; 2];
        UpdateMean.combine(&[&[1.0, -1.0], &[5.0, 3.0]], &[3, 1], &mut out);
        assert_eq!(out, [2.0, 0.0]);
    }

    #[test]
    fn chunks_in_any_order_give_the_weighted_mean_and_a_reset_clears_it() {
        let mut mean = WeightedMean { sum: vec![7.0; 5] };
        mean.reset(&[0.0; 3]);
        mean.add(2, 1, 1..3, Values::new(&le(&[4.0, 8.0])), &[0.0; 2], 0.0);
        mean.add(1, 3, 0..3, Values::new(&le(&[1.0, 2.0, 4.0])), &[0.0; 3], 0.0);
        mean.add(2, 1, 0..1, Values::new(&le(&[5.0])), &[0.0], 0.0);
        let mut out = [0.0; 3];
        mean.finish(&[0.0; 3], &[(1, 3), (2, 1)], &mut out);
        assert_eq!(out, [2.0, 2.5, 5.0]);
        assert!(!mean.forget(1), "a running sum cannot give a contribution back");
        mean.reset(&[0.0; 2]);
        mean.add(1, 2, 0..2, Values::new(&le(&[1.0, -1.0])), &[0.0; 2], 0.0);
        let mut out = [0.0; 2];
        mean.finish(&[0.0; 2], &[(1, 2)], &mut out);
        assert_eq!(out, [1.0, -1.0]);
    }
}
