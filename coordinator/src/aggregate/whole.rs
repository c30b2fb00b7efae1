//! The robust rules' common part: every contribution kept whole, O(workers ×
//! model), and combined at the end of the round as updates Δᵢ = wᵢ − w̄
//! relative to the weights w̄ the round started from, the result being
//! w̄ + rule(Δ). Working on updates keeps the numbers the rule compares
//! learning-rate-sized, and lets a rule bound an update's norm (a weight
//! vector's norm says nothing about how far a worker strayed).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use lazyavg_proto::chunks::Values;

use super::Aggregator;
use crate::round::WorkerId;

/// A rule over the whole updates of one round.
pub trait UpdateRule: fmt::Debug + Send {
    /// Writes the combination of `updates` (at least one, each as long as
    /// `out`), trained on `samples` respectively, into `out`.
    fn combine(&self, updates: &[&[f32]], samples: &[u64], out: &mut [f32]);
}

/// Keeps every contribution whole and combines their updates by `R`.
#[derive(Debug)]
pub struct Whole<R> {
    rule: R,
    len: usize,
    values: BTreeMap<WorkerId, Vec<f32>>,
    /// Buffers of earlier rounds' contributions, reused by the next ones.
    spare: Vec<Vec<f32>>,
}

impl<R: UpdateRule> Whole<R> {
    pub fn new(rule: R) -> Self {
        Whole { rule, len: 0, values: BTreeMap::new(), spare: Vec::new() }
    }
}

impl<R: UpdateRule> Aggregator for Whole<R> {
    fn reset(&mut self, start: &[f32]) {
        self.len = start.len();
        self.spare.extend(std::mem::take(&mut self.values).into_values());
    }

    fn add(
        &mut self,
        worker: WorkerId,
        _samples: u64,
        range: Range<usize>,
        values: Values<'_>,
        _start: &[f32],
        _squared: f64,
    ) {
        let Whole { len, values: contributions, spare, .. } = self;
        let buffer = contributions.entry(worker).or_insert_with(|| {
            // Every position is written before the round combines it.
            let mut buffer = spare.pop().unwrap_or_default();
            buffer.resize(*len, 0.0);
            buffer
        });
        values.decode_into(&mut buffer[range]);
    }

    fn forget(&mut self, worker: WorkerId) -> bool {
        self.spare.extend(self.values.remove(&worker));
        true
    }

    fn finish(&mut self, start: &[f32], contributors: &[(WorkerId, u64)], out: &mut [f32]) {
        let mut samples = Vec::with_capacity(contributors.len());
        for (id, s) in contributors {
            if let Some(values) = self.values.get_mut(id) {
                for (v, &w) in values.iter_mut().zip(start) {
                    *v -= w;
                }
                samples.push(*s);
            }
        }
        let updates: Vec<&[f32]> =
            contributors.iter().filter_map(|(id, _)| self.values.get(id)).map(Vec::as_slice).collect();
        self.rule.combine(&updates, &samples, out);
        for (o, &w) in out.iter_mut().zip(start) {
            *o += w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Coordinatewise, Median};
    use lazyavg_proto::chunks::encode_values as le;

    #[test]
    fn only_the_named_contributors_count_and_a_forgotten_one_is_gone() {
        let mut median = Whole::new(Coordinatewise::new(Median));
        median.reset(&[0.0; 2]);
        median.add(1, 5, 0..2, Values::new(&le(&[1.0, 10.0])), &[0.0; 2], 0.0);
        median.add(2, 5, 0..1, Values::new(&le(&[3.0])), &[0.0], 0.0);
        median.add(2, 5, 1..2, Values::new(&le(&[30.0])), &[0.0], 0.0);
        median.add(3, 5, 0..2, Values::new(&le(&[1e9, 1e9])), &[0.0; 2], 0.0);
        assert!(median.forget(3));
        let mut out = [0.0; 2];
        median.finish(&[0.0, 0.0], &[(1, 5), (2, 5), (3, 5)], &mut out);
        assert_eq!(out, [2.0, 20.0]);
    }

    #[test]
    fn the_rule_sees_updates_and_the_start_is_added_back() {
        let start = [1.0, -3.0];
        let mut median = Whole::new(Coordinatewise::new(Median));
        for round in 0..2 {
            median.reset(&start);
            median.add(1, 1, 0..2, Values::new(&le(&[1.5, -2.0])), &start, 0.0);
            median.add(2, 1, 0..2, Values::new(&le(&[0.5, -4.0])), &start, 0.0);
            median.add(3, 1, 0..2, Values::new(&le(&[1.0, -3.5])), &start, 0.0);
            let mut out = [0.0; 2];
            median.finish(&start, &[(1, 1), (2, 1), (3, 1)], &mut out);
            assert_eq!(out, [1.0, -3.5], "round {round}");
        }
        assert!(median.spare.is_empty(), "the second round reused the first one's buffers");
    }
}
