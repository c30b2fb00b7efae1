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
//!
//! Each tensor axis's share of the scores is kept and recomputed only when a
//! group it depends on has changed (the first layer's weights depend on no
//! other group, so their share, most of the work, is computed once), and a
//! group none of whose neighbours changed since its last solve is skipped.

use tracing::debug;

use crate::error::Result;
use crate::matmul::{Matrix, matmul};
use rand::seq::SliceRandom;

use crate::rng::{self, Purpose};

use super::assignment;
use super::permutation::{Permutation, gather_axis, unit_major};
use super::spec::{PermutationSpec, TensorAxis};

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
    let mut shares: Vec<Vec<Share>> = (0..spec.groups.len())
        .map(|g| spec.groups[g].axes.iter().map(|axis| Share::new(spec, g, axis, reference)).collect())
        .collect();
    // How often each group has changed, and what its neighbours' counts were when it was last solved.
    let mut versions = vec![0u64; spec.groups.len()];
    let mut solved_at: Vec<Option<Vec<u64>>> = vec![None; spec.groups.len()];
    let mut rng = rng::stream(seed, Purpose::MatchingOrder);
    let mut order: Vec<usize> = (0..spec.groups.len()).collect();
    for pass in 1..=max_passes {
        order.shuffle(&mut rng);
        let mut improved = false;
        for &g in &order {
            let mut seen: Vec<u64> = versions.clone();
            seen[g] = 0;
            if solved_at[g].as_ref() == Some(&seen) {
                continue;
            }
            let n = spec.groups[g].size;
            let mut scores = vec![0.0f64; n * n];
            for share in &mut shares[g] {
                for (s, &p) in scores.iter_mut().zip(share.product(other, &perm, &versions)) {
                    *s += p;
                }
            }
            let best = assignment::maximise(&scores, n)?;
            let (old, new) = (assignment::total(&scores, perm.group(g)), assignment::total(&scores, &best));
            solved_at[g] = Some(seen);
            if new - old > RELATIVE_TOLERANCE * old.abs().max(1.0) {
                perm.set_group(g, best);
                versions[g] += 1;
                improved = true;
            }
        }
        if !improved {
            debug!(passes = pass, "weight matching settled");
            return Ok(perm);
        }
    }
    debug!(max_passes, "weight matching stopped while still improving");
    Ok(perm)
}

/// One tensor axis's share of a group's scores: the inner products of the
/// reference's units with the other model's along that axis, the tensor's
/// other axes permuted by their own groups.
struct Share {
    axis: TensorAxis,
    /// The other groups acting on the same tensor, and along which axis.
    neighbours: Vec<(usize, TensorAxis)>,
    /// The reference's tensor, unit-major (`[units, rest]`).
    reference: Vec<f32>,
    /// The last product and the neighbours' versions it was computed with.
    cached: Option<(Vec<u64>, Vec<f64>)>,
}

impl Share {
    fn new(spec: &PermutationSpec, g: usize, axis: &TensorAxis, reference: &[f32]) -> Self {
        let neighbours = spec
            .groups
            .iter()
            .enumerate()
            .filter(|&(h, _)| h != g)
            .flat_map(|(h, group)| group.axes.iter().filter(|a| a.range == axis.range).map(move |a| (h, a.clone())))
            .collect();
        Share {
            axis: axis.clone(),
            neighbours,
            reference: unit_major(&reference[axis.range.clone()], axis),
            cached: None,
        }
    }

    /// `[units, units]`: the reference's unit-major rows times the other
    /// model's, recomputed only if a neighbour changed since the last call.
    fn product(&mut self, other: &[f32], perm: &Permutation, versions: &[u64]) -> &[f64] {
        let key: Vec<u64> = self.neighbours.iter().map(|&(h, _)| versions[h]).collect();
        if self.cached.as_ref().is_none_or(|(seen, _)| *seen != key) {
            let mut tensor = other[self.axis.range.clone()].to_vec();
            let mut scratch = Vec::new();
            for (h, axis) in &self.neighbours {
                gather_axis(&mut tensor, axis, perm.group(*h), &mut scratch);
            }
            let rows = unit_major(&tensor, &self.axis);
            let n = self.axis.split().1;
            let rest = rows.len() / n;
            let mut product = vec![0.0f32; n * n];
            // [n, rest] · [rest, n]
            matmul(Matrix::new(&self.reference, n, rest), Matrix::new(&rows, n, rest).t(), &mut product);
            self.cached = Some((key, product.into_iter().map(f64::from).collect()));
        }
        self.cached.as_ref().map_or(&[], |(_, product)| product.as_slice())
    }
}
