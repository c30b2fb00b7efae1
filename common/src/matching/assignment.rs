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
    let costs = Array2::from_shape_fn((n, n), |(i, j)| -scores[i * n + j]);
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
    use crate::rng::Rng;

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
        let mut rng = Rng::seed_from(8);
        for n in 1..=6 {
            for _ in 0..20 {
                let scores: Vec<f64> = (0..n * n).map(|_| rng.normal()).collect();
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
