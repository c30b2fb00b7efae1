//! A reordering of every group's units, and its application to a buffer.

use crate::error::{Error, Result};
use crate::rng::Rng;

use super::spec::{PermutationSpec, TensorAxis};

/// One reordering per group of a [`PermutationSpec`]: after [`apply`], unit
/// `i` of group `g` holds what unit `groups[g][i]` held before (a gather, as
/// `w[perm]` in NumPy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permutation {
    groups: Vec<Vec<u32>>,
}

impl Permutation {
    /// Checks that every group is a reordering of `0..len`.
    pub fn new(groups: Vec<Vec<u32>>) -> Result<Self> {
        for (g, p) in groups.iter().enumerate() {
            let mut seen = vec![false; p.len()];
            for &j in p {
                match seen.get_mut(j as usize) {
                    Some(s) if !*s => *s = true,
                    _ => {
                        return Err(Error::Matching(format!(
                            "group {g} of {} units maps two units to {j}, or {j} is out of range",
                            p.len()
                        )));
                    }
                }
            }
        }
        Ok(Permutation { groups })
    }

    /// The permutation that moves nothing.
    pub fn identity(spec: &PermutationSpec) -> Self {
        Permutation { groups: spec.groups.iter().map(|g| (0..g.size as u32).collect()).collect() }
    }

    /// A uniformly random permutation of every group (for tests and benchmarks).
    pub fn random(spec: &PermutationSpec, rng: &mut Rng) -> Self {
        let mut perm = Self::identity(spec);
        for p in &mut perm.groups {
            rng.shuffle(p);
        }
        perm
    }

    /// Group `g`'s reordering.
    pub fn group(&self, g: usize) -> &[u32] {
        &self.groups[g]
    }

    /// Replaces group `g`'s reordering (`p` must be a reordering of the same units).
    pub(crate) fn set_group(&mut self, g: usize, p: Vec<u32>) {
        debug_assert_eq!(p.len(), self.groups[g].len());
        self.groups[g] = p;
    }

    /// `self ∘ first`: applying the result is applying `first`, then `self`.
    pub fn compose(&self, first: &Permutation) -> Self {
        let groups = self
            .groups
            .iter()
            .zip(&first.groups)
            .map(|(outer, inner)| outer.iter().map(|&i| inner[i as usize]).collect())
            .collect();
        Permutation { groups }
    }

    /// The permutation that undoes this one.
    pub fn inverse(&self) -> Self {
        let groups = self
            .groups
            .iter()
            .map(|p| {
                let mut inv = vec![0u32; p.len()];
                for (i, &j) in p.iter().enumerate() {
                    inv[j as usize] = i as u32;
                }
                inv
            })
            .collect();
        Permutation { groups }
    }

    /// Whether every group is left as it is.
    pub fn is_identity(&self) -> bool {
        self.groups.iter().all(|p| p.iter().enumerate().all(|(i, &j)| i as u32 == j))
    }

    /// Fails unless this permutation has a group of the right size for each of `spec`'s.
    fn check(&self, spec: &PermutationSpec) -> Result<()> {
        let sizes: Vec<usize> = self.groups.iter().map(Vec::len).collect();
        if sizes != spec.sizes() {
            return Err(Error::Matching(format!(
                "a permutation of groups of {sizes:?} units does not fit a model whose groups have {:?}",
                spec.sizes()
            )));
        }
        Ok(())
    }
}

/// Reorders the units of `buf` (model parameters, or any buffer of the same
/// layout such as optimiser momentum) by `perm`. A permuted model computes the
/// same function as the original.
pub fn apply(spec: &PermutationSpec, perm: &Permutation, buf: &mut [f32]) -> Result<()> {
    perm.check(spec)?;
    if buf.len() != spec.len {
        return Err(Error::Matching(format!(
            "a buffer of {} values does not fit a model of {} parameters",
            buf.len(),
            spec.len
        )));
    }
    let mut scratch = Vec::new();
    for (group, p) in spec.groups.iter().zip(&perm.groups) {
        for axis in &group.axes {
            gather_axis(&mut buf[axis.range.clone()], axis, p, &mut scratch);
        }
    }
    Ok(())
}

/// `tensor[o, i, k] = old[o, p[i], k]` with the tensor read as `[outer, units, inner]`.
fn gather_axis(tensor: &mut [f32], axis: &TensorAxis, p: &[u32], scratch: &mut Vec<f32>) {
    let (outer, units, inner) = axis.split();
    debug_assert_eq!(units, p.len());
    scratch.clear();
    scratch.extend_from_slice(tensor);
    for o in 0..outer {
        let base = o * units * inner;
        for (i, &j) in p.iter().enumerate() {
            let dst = base + i * inner;
            let src = base + j as usize * inner;
            tensor[dst..dst + inner].copy_from_slice(&scratch[src..src + inner]);
        }
    }
}

/// The tensor read as `[units, rest]`, unit-major: row `i` holds every value
/// that indexes unit `i` along `axis`, in a fixed order (the scores of weight
/// matching are inner products of these rows).
pub(crate) fn unit_major(buf: &[f32], axis: &TensorAxis) -> Vec<f32> {
    let tensor = &buf[axis.range.clone()];
    let (outer, units, inner) = axis.split();
    let mut rows = vec![0.0; tensor.len()];
    for u in 0..units {
        for o in 0..outer {
            let src = (o * units + u) * inner;
            let dst = (u * outer + o) * inner;
            rows[dst..dst + inner].copy_from_slice(&tensor[src..src + inner]);
        }
    }
    rows
}
