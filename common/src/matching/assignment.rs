//! The linear assignment problem behind every matching, solved by the
//! `lapjv` crate (Jonker–Volgenant, shortest augmenting paths, O(n³)).
//!
//! Chosen by measurement against `lsap` (SciPy's algorithm) on random and
//! real score matrices of 200 and 1000 units (docs/merging.md,
//! `cargo run --release -p lazyavg-common --example assignment`).

use ndarray::Array2;

use crate::error::{Error, Result};

/// The reordering `p` that maximises `Σ_i scores[i, p[i]]`, for a square
/// row-major `n × n` matrix of finite scores.
pub fn maximise(scores: &[f64], n: usize) -> Result<Vec<u32>> {
    if scores.len() != n * n {
        return Err(Error::Matching(format!("a score matrix of {} values is not {n} × {n}", scores.len())));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(Error::Matching(format!("score [{}, {}] is {}, not finite", i / n, i % n, scores[i])));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    // lapjv minimises; negated scores turn the maximum into its minimum.
    let mut costs = Array2::from_shape_fn((n, n), |(i, j)| -scores[i * n + j]);
    // Subtracting a constant from a row or a column changes every assignment's
    // total by the same amount, so the optimum stays; but costs whose row and
    // column minima are 0 cut lapjv's time on the score matrices of trained
    // nets 2.4–3.2× (their units differ much in norm, which makes whole rows
    // and columns score high), measured with the same permutations found.
    for mut row in costs.rows_mut() {
        let min = row.iter().copied().fold(f64::INFINITY, f64::min);
        row.mapv_inplace(|c| c - min);
    }
    for mut col in costs.columns_mut() {
        let min = col.iter().copied().fold(f64::INFINITY, f64::min);
        col.mapv_inplace(|c| c - min);
    }
    let (rows, _) =
        lapjv::lapjv(&costs).map_err(|e| Error::Matching(format!("assignment of {n} units failed: {e}")))?;
    Ok(rows.into_iter().map(|j| j as u32).collect())
}

/// `Σ_i scores[i, p[i]]`.
pub fn total(scores: &[f64], p: &[u32]) -> f64 {
    let n = p.len();
    p.iter().enumerate().map(|(i, &j)| scores[i * n + j as usize]).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_distr::StandardNormal;

    use crate::rng::StreamRng;

    /// Every reordering of `0..n`, for the brute-force reference.
    fn reorderings(n: usize) -> Vec<Vec<u32>> {
        if n == 0 {
            return vec![Vec::new()];
        }
        let mut all = Vec::new();
        for rest in reorderings(n - 1) {
            for at in 0..n {
                let mut p = rest.clone();
                p.insert(at, (n - 1) as u32);
                all.push(p);
            }
        }
        all
    }

    #[test]
    fn finds_the_best_of_every_reordering() {
        let mut rng = StreamRng::seed_from_u64(8);
        for n in 1..=6 {
            for _ in 0..20 {
                let scores: Vec<f64> = (0..n * n).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
                let best = reorderings(n).iter().map(|p| total(&scores, p)).fold(f64::NEG_INFINITY, f64::max);
                let got = maximise(&scores, n).unwrap();
                assert!((total(&scores, &got) - best).abs() < 1e-9, "n = {n}: {got:?}");
            }
        }
    }

    #[test]
    fn refuses_non_finite_and_non_square_scores() {
        let err = maximise(&[1.0, f64::NAN, 0.0, 0.0], 2).unwrap_err().to_string();
        assert_eq!(err, "score [0, 1] is NaN, not finite");
        assert!(maximise(&[1.0; 3], 2).unwrap_err().to_string().contains("not 2 × 2"));
    }
}
