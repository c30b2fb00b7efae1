//! Coordinate-wise rules: one statistic per coordinate of the updates that
//! ignores sample counts. Both statistics here are translation-equivariant,
//! so on updates they give what they gave on weights (up to rounding): a
//! minority of outliers never wins a coordinate, but a large one still picks
//! the honest value on its side in every coordinate, every round (see
//! [`super::CenteredClip`], which bounds that).

use std::fmt;

use super::UpdateRule;

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

/// The mean after dropping, from each end, as many values as a minority of
/// hostile workers can have: under a third of them (at least one each from
/// 3 values on). Two identical hostile values among 7 survive a trim of one
/// each way and drag every coordinate every round: a fifth was too few.
#[derive(Debug, Clone, Copy)]
pub struct TrimmedMean;

/// Values dropped from each end by the trimmed mean of `n` values: the
/// most hostile ones, f, that n > 3f allows.
fn trimmed(n: usize) -> usize {
    if n >= 3 { ((n - 1) / 3).max(1) } else { 0 }
}

impl Statistic for TrimmedMean {
    fn of(&self, sorted: &[f32]) -> f32 {
        let n = sorted.len();
        let kept = &sorted[trimmed(n)..n - trimmed(n)];
        (kept.iter().map(|&v| f64::from(v)).sum::<f64>() / kept.len() as f64) as f32
    }
}

/// Applies `S` coordinate by coordinate.
#[derive(Debug)]
pub struct Coordinatewise<S> {
    statistic: S,
}

impl<S: Statistic> Coordinatewise<S> {
    pub fn new(statistic: S) -> Self {
        Coordinatewise { statistic }
    }
}

impl<S: Statistic> UpdateRule for Coordinatewise<S> {
    fn combine(&self, updates: &[&[f32]], _samples: &[u64], out: &mut [f32]) {
        let mut column = vec![0.0f32; updates.len()];
        for (i, o) in out.iter_mut().enumerate() {
            for (c, update) in column.iter_mut().zip(updates) {
                *c = update[i];
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
        let two_hostile = [-100.0, -100.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(TrimmedMean.of(&two_hostile), 2.0, "two of 7 dropped each way");
    }

    #[test]
    fn each_coordinate_is_taken_on_its_own() {
        let mut out = [0.0; 2];
        Coordinatewise::new(Median).combine(&[&[1.0, 30.0], &[2.0, 10.0], &[9.0, 20.0]], &[1, 1, 1], &mut out);
        assert_eq!(out, [2.0, 20.0]);
    }
}
