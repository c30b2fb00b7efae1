//! Activation matching (Git Re-Basin's algorithm 1; Li et al. 2016): pair the
//! hidden units of two models that respond alike to the same images.
//!
//! The score of pairing the reference's unit `i` with the other model's unit
//! `j` is the Pearson correlation of their post-ReLU activations over the same
//! images. Reordering a model's units does not change what any unit computes,
//! only its index, so each group's correlations do not depend on how the
//! groups below were matched: one assignment per group, from the input
//! upwards, is the whole algorithm.

use crate::error::{Error, Result};
use crate::matmul::{Matrix, matmul};

use super::assignment;
use super::permutation::Permutation;
use super::spec::PermutationSpec;

/// Added to every unit's score for staying where it is, so that a tie keeps
/// the order: dead units correlate 0 with everything, and without it a
/// model matched with itself came back with its dead units swapped (under
/// `--align activations`, a `Realign` nearly every round although nothing
/// moved). Far below any correlation difference that means something, so
/// it decides nothing else.
const STAY_BONUS: f64 = 1e-6;

/// The permutation of the other model's units that maximises the summed
/// correlation with the reference's, per group. `reference[g]` and `other[g]`
/// are group `g`'s activations, `[units, samples]` row-major, over the same
/// `samples` images in the same order.
pub fn match_activations(
    spec: &PermutationSpec,
    reference: &[Vec<f32>],
    other: &[Vec<f32>],
    samples: usize,
) -> Result<Permutation> {
    if reference.len() != spec.groups.len() || other.len() != spec.groups.len() {
        return Err(Error::Matching(format!(
            "activations of {} and {} groups for a model of {}",
            reference.len(),
            other.len(),
            spec.groups.len()
        )));
    }
    let mut perm = Permutation::identity(spec);
    for (g, group) in spec.groups.iter().enumerate() {
        let n = group.size;
        for (acts, which) in [(&reference[g], "reference"), (&other[g], "other")] {
            if acts.len() != n * samples {
                return Err(Error::Matching(format!(
                    "the {which} model's group {g} has {} activations, expected {n} units × {samples} samples",
                    acts.len()
                )));
            }
        }
        let mut scores = correlations(&reference[g], &other[g], n, samples);
        for i in 0..n {
            scores[i * n + i] += STAY_BONUS;
        }
        perm.set_group(g, assignment::maximise(&scores, n)?);
    }
    Ok(perm)
}

/// The `n × n` Pearson correlations between the rows of `a` and of `b`
/// (`[n, samples]` each). A unit that never varies on these images (a dead
/// ReLU) correlates 0 with everything: only [`STAY_BONUS`] keeps it in place.
fn correlations(a: &[f32], b: &[f32], n: usize, samples: usize) -> Vec<f64> {
    let (za, zb) = (standardised(a, samples), standardised(b, samples));
    let mut product = vec![0.0f32; n * n];
    matmul(Matrix::new(&za, n, samples), Matrix::new(&zb, n, samples).t(), &mut product);
    product.into_iter().map(f64::from).collect()
}

/// Each row minus its mean, divided by its norm (so that inner products of
/// two rows are their correlation); rows without variance become zeros.
fn standardised(rows: &[f32], samples: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows.chunks_exact(samples.max(1)) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / samples as f64;
        let norm = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>().sqrt();
        // Variance below f32 rounding of the mean is no variance.
        let scale = if norm > 1e-6 * (mean.abs() + 1.0) { 1.0 / norm } else { 0.0 };
        out.extend(row.iter().map(|&v| ((f64::from(v) - mean) * scale) as f32));
    }
    out
}
