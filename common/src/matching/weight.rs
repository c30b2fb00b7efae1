//! Weight matching (Git Re-Basin, Ainsworth et al. 2023, algorithm 2): reorder
//! one model's units so that its weights line up with a reference's.
//!
//! For a group `g`, the score of pairing the reference's unit `i` with the
//! other model's unit `j` is the inner product of everything that indexes
//! those units (incoming weights and bias, outgoing weights), with every other
//! group of the other model already permuted. Each group's best pairing is a
//! linear assignment problem; since the scores of one group depend on the
//! permutations of its neighbours, groups are solved in turn, in a seeded
//! random order, until a whole pass improves none (coordinate descent on
//! `Σ ⟨θ_ref, π(θ_other)⟩`, which therefore terminates).

use crate::error::Result;
use crate::model::{Matrix, matmul};
use crate::rng::Rng;

use super::assignment;
use super::permutation::{Permutation, apply, unit_major};
use super::spec::PermutationSpec;

/// An improvement smaller than this share of the score is rounding, not progress.
const RELATIVE_TOLERANCE: f64 = 1e-9;

/// The permutation of `other`'s units that best aligns its weights with
/// `reference`'s (both buffers laid out as `spec` says). Visits the groups in
/// an order drawn from `seed`, for at most `max_passes` passes.
pub fn match_weights(
    spec: &PermutationSpec,
    reference: &[f32],
    other: &[f32],
    seed: u64,
    max_passes: usize,
) -> Result<Permutation> {
    let mut perm = Permutation::identity(spec);
    // `other` with every group but the one being solved permuted.
    let mut others_permuted = other.to_vec();
    let mut rng = Rng::seed_from(seed);
    let mut order: Vec<usize> = (0..spec.groups.len()).collect();
    for _ in 0..max_passes {
        rng.shuffle(&mut order);
        let mut improved = false;
        for &g in &order {
            let mut without_g = perm.clone();
            without_g.set_group(g, (0..spec.groups[g].size as u32).collect());
            others_permuted.copy_from_slice(other);
            apply(spec, &without_g, &mut others_permuted)?;
            let scores = group_scores(spec, g, reference, &others_permuted);
            let n = spec.groups[g].size;
            let best = assignment::maximise(&scores, n)?;
            let (old, new) = (assignment::total(&scores, perm.group(g)), assignment::total(&scores, &best));
            if new - old > RELATIVE_TOLERANCE * old.abs().max(1.0) {
                perm.set_group(g, best);
                improved = true;
            }
        }
        if !improved {
            break;
        }
    }
    Ok(perm)
}

/// `scores[i, j]`: the inner product of the reference's unit `i` with the
/// other model's unit `j` over every tensor axis of group `g`.
fn group_scores(spec: &PermutationSpec, g: usize, reference: &[f32], other: &[f32]) -> Vec<f64> {
    let n = spec.groups[g].size;
    let mut scores = vec![0.0f64; n * n];
    let mut product = vec![0.0f32; n * n];
    for axis in &spec.groups[g].axes {
        let (a, b) = (unit_major(reference, axis), unit_major(other, axis));
        let rest = a.len() / n;
        // [n, rest] · [rest, n]
        matmul(Matrix::new(&a, n, rest), Matrix::new(&b, n, rest).t(), &mut product);
        for (s, &p) in scores.iter_mut().zip(&product) {
            *s += f64::from(p);
        }
    }
    scores
}
