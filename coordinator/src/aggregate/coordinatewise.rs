//! Robust rules: every contribution kept whole, O(workers × model), then one
//! statistic per coordinate that ignores sample counts. That is the price of
//! a model that one broken or hostile worker cannot drag away.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use super::Aggregator;
use crate::round::WorkerId;

/// A statistic of one coordinate's values across workers.
pub trait Statistic: fmt::Debug + Send {
    /// The statistic of `sorted` (ascending, at least one value).
    fn of(&self, sorted: &[f32]) -> f32;
}

/// The middle value (the mean of the two middle ones for an even count).
#[derive(Debug, Clone, Copy)]
pub struct Median;

impl Statistic for Median {
    fn of(&self, sorted: &[f32]) -> f32 {
        let n = sorted.len();
        if n % 2 == 1 {
            sorted[n / 2]
        } else {
            ((f64::from(sorted[n / 2 - 1]) + f64::from(sorted[n / 2])) / 2.0) as f32
        }
    }
}

/// The mean after dropping the largest and smallest fifth (at least one
/// each from 3 values on).
#[derive(Debug, Clone, Copy)]
pub struct TrimmedMean;

/// Values dropped from each end by the trimmed mean of `n` values.
fn trimmed(n: usize) -> usize {
    if n >= 3 { (n / 5).max(1) } else { 0 }
}

impl Statistic for TrimmedMean {
    fn of(&self, sorted: &[f32]) -> f32 {
        let n = sorted.len();
        let kept = &sorted[trimmed(n)..n - trimmed(n)];
        (kept.iter().map(|&v| f64::from(v)).sum::<f64>() / kept.len() as f64) as f32
    }
}

/// Keeps every contribution whole and applies `S` coordinate by coordinate.
#[derive(Debug)]
pub struct Coordinatewise<S> {
    statistic: S,
    len: usize,
    values: BTreeMap<WorkerId, Vec<f32>>,
}

impl<S: Statistic> Coordinatewise<S> {
    pub fn new(statistic: S) -> Self {
        Coordinatewise { statistic, len: 0, values: BTreeMap::new() }
    }
}

impl<S: Statistic> Aggregator for Coordinatewise<S> {
    fn reset(&mut self, len: usize) {
        self.len = len;
        self.values.clear();
    }

    fn add(&mut self, worker: WorkerId, _samples: u64, range: Range<usize>, values: &[f32]) {
        let len = self.len;
        let buffer = self.values.entry(worker).or_insert_with(|| vec![0.0; len]);
        buffer[range].copy_from_slice(values);
    }

    fn forget(&mut self, worker: WorkerId) -> bool {
        self.values.remove(&worker);
        true
    }

    fn finish(&mut self, contributors: &[(WorkerId, u64)], out: &mut [f32]) {
        let inputs: Vec<&[f32]> =
            contributors.iter().filter_map(|(id, _)| self.values.get(id)).map(Vec::as_slice).collect();
        let mut column = vec![0.0f32; inputs.len()];
        for (i, o) in out.iter_mut().enumerate() {
            for (c, input) in column.iter_mut().zip(&inputs) {
                *c = input[i];
            }
            column.sort_unstable_by(f32::total_cmp);
            *o = self.statistic.of(&column);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_trimmed_mean_of_known_columns() {
        assert_eq!(Median.of(&[1.0, 5.0, 9.0]), 5.0);
        assert_eq!(Median.of(&[1.0, 2.0, 4.0, 100.0]), 3.0);
        assert_eq!(TrimmedMean.of(&[1.0, 2.0]), 1.5, "nothing dropped from two values");
        assert_eq!(TrimmedMean.of(&[-100.0, 1.0, 2.0, 3.0, 100.0]), 2.0);
    }

    #[test]
    fn only_the_named_contributors_count_and_a_forgotten_one_is_gone() {
        let mut median = Coordinatewise::new(Median);
        median.reset(2);
        median.add(1, 5, 0..2, &[1.0, 10.0]);
        median.add(2, 5, 0..1, &[3.0]);
        median.add(2, 5, 1..2, &[30.0]);
        median.add(3, 5, 0..2, &[1e9, 1e9]);
        assert!(median.forget(3));
        let mut out = [0.0; 2];
        median.finish(&[(1, 5), (2, 5), (3, 5)], &mut out);
        assert_eq!(out, [2.0, 20.0]);
        median.finish(&[(2, 5)], &mut out);
        assert_eq!(out, [3.0, 30.0]);
    }
}
