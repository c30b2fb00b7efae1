//! Centered clipping (Karimireddy, He and Jaggi, "Learning from History for
//! Byzantine Robust Optimization", ICML 2021): starting from an estimate v
//! of the honest update, iterate v ← v + meanᵢ clip_τ(Δᵢ − v), where clip_τ
//! shrinks a vector to norm τ at most. However far an update lies, it moves
//! v by τ/n per iteration at most, in norm; the honest ones, within τ of v,
//! pull v to their mean.
//!
//! Here v starts at the coordinate-wise median of the updates (robust
//! whatever the outliers), and τ is the median distance of the updates from
//! it: the spread of honest updates, a learning-rate-sized quantity, with
//! no setting to tune. The bias one outlier can add per round is then about
//! τ/(n − 1), against the coordinate-wise rules' per-coordinate shift that
//! adds up over every coordinate.

use super::{Coordinatewise, Median, UpdateRule};

/// Iterations of the clipped step: the first does most of the work; a few
/// more settle v where the honest updates' pull balances the clipped ones.
const ITERATIONS: usize = 3;

/// The centered-clipping rule (`--aggregate centered-clip`).
#[derive(Debug, Clone, Copy)]
pub struct CenteredClip;

/// Euclidean distance of `a` from `b`, in f64.
fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum::<f64>().sqrt()
}

/// The median of `values` (the upper middle one for an even count), which
/// are reordered.
fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    values[values.len() / 2]
}

impl UpdateRule for CenteredClip {
    fn combine(&self, updates: &[&[f32]], samples: &[u64], out: &mut [f32]) {
        Coordinatewise::new(Median).combine(updates, samples, out);
        let mut distances: Vec<f64> = updates.iter().map(|u| distance(u, out)).collect();
        let tau = median(&mut distances);
        let n = updates.len() as f64;
        for _ in 0..ITERATIONS {
            // Each update's share of its difference from v: 1 within τ.
            let shares: Vec<f64> = updates
                .iter()
                .map(|u| {
                    let d = distance(u, out);
                    if d <= tau { 1.0 } else { tau / d }
                })
                .collect();
            for (i, v) in out.iter_mut().enumerate() {
                let current = f64::from(*v);
                let step: f64 = updates.iter().zip(&shares).map(|(u, s)| s * (f64::from(u[i]) - current)).sum();
                *v = (current + step / n) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use lazyavg_common::rng::StreamRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// `n` honest updates: a common direction plus noise of about `spread`.
    fn honest(n: usize, len: usize, spread: f32, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = StreamRng::seed_from_u64(seed);
        let common: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
        (0..n).map(|_| common.iter().map(|c| c + spread * rng.random_range(-1.0f32..1.0)).collect()).collect()
    }

    fn mean(updates: &[Vec<f32>]) -> Vec<f32> {
        let len = updates[0].len();
        (0..len).map(|i| updates.iter().map(|u| u[i]).sum::<f32>() / updates.len() as f32).collect()
    }

    #[test]
    fn without_outliers_it_is_close_to_the_mean() {
        let updates = honest(5, 200, 0.1, 1);
        let refs: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
        let mut out = vec![0.0; 200];
        CenteredClip.combine(&refs, &[1; 5], &mut out);
        let spread = distance(&updates[0], &mean(&updates));
        assert!(distance(&out, &mean(&updates)) < 0.1 * spread, "{}", distance(&out, &mean(&updates)));
    }

    #[test]
    fn a_huge_update_moves_it_by_a_fraction_of_the_honest_spread() {
        let updates = honest(4, 200, 0.1, 2);
        let truth = mean(&updates);
        let spread = updates.iter().map(|u| distance(u, &truth)).fold(0.0, f64::max);
        for hostile in [1e2f32, 1e6, -1e6] {
            let attack: Vec<f32> = updates[0].iter().map(|v| v * hostile).collect();
            let mut refs: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
            refs.push(&attack);
            let mut out = vec![0.0; 200];
            CenteredClip.combine(&refs, &[1; 5], &mut out);
            let bias = distance(&out, &truth);
            assert!(bias < 0.5 * spread, "×{hostile}: bias {bias} against an honest spread of {spread}");
        }
    }

    #[test]
    fn identical_updates_are_their_own_combination() {
        let u = [0.5f32, -1.0, 2.0];
        let mut out = [0.0; 3];
        CenteredClip.combine(&[&u, &u, &u], &[1; 3], &mut out);
        assert_eq!(out, u);
    }
}
