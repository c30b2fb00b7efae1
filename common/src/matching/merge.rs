//! Merging N models into one: align each to a reference, then average.

use tracing::debug;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::model::{Network, Workspace};
use crate::params::first_non_finite;
use crate::spec::ModelSpec;

use super::activation::match_activations;
use super::permutation::{Permutation, apply};
use super::spec::PermutationSpec;
use super::weight::match_weights;

/// One model to merge: a name for messages (its file), its architecture and
/// parameters.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub name: &'a str,
    pub arch: &'a ModelSpec,
    pub params: &'a [f32],
}

/// How to find the permutation that lines a model up with a reference: the
/// seam for a new matching method.
pub trait Align {
    /// The permutation of `other`'s units that best matches `reference`.
    fn align(&self, reference: &[f32], other: &[f32]) -> Result<Permutation>;
}

/// No matching: merging with it is the naive average.
#[derive(Debug, Clone)]
pub struct NoAlignment {
    pub spec: PermutationSpec,
}

impl Align for NoAlignment {
    fn align(&self, _: &[f32], _: &[f32]) -> Result<Permutation> {
        Ok(Permutation::identity(&self.spec))
    }
}

/// [`match_weights`] with a seed for its order of groups.
#[derive(Debug, Clone)]
pub struct WeightAlignment {
    pub spec: PermutationSpec,
    pub seed: u64,
    /// The most passes over all groups (weight matching usually settles in a few).
    pub max_passes: usize,
}

impl Align for WeightAlignment {
    fn align(&self, reference: &[f32], other: &[f32]) -> Result<Permutation> {
        match_weights(&self.spec, reference, other, self.seed, self.max_passes)
    }
}

/// [`match_activations`] of an MLP over the images at `indices` of `data`.
#[derive(Debug, Clone)]
pub struct ActivationAlignment<'a> {
    pub mlp: Network,
    pub data: &'a Dataset,
    pub indices: Vec<u32>,
}

impl Align for ActivationAlignment<'_> {
    fn align(&self, reference: &[f32], other: &[f32]) -> Result<Permutation> {
        self.mlp.check_dense_only("activation matching")?;
        let mut ws = Workspace::for_inference(&self.mlp, 256);
        let spec = self.mlp.permutation_spec();
        let acts_ref = self.mlp.hidden_activations(reference, self.data, &self.indices, &mut ws);
        let acts_other = self.mlp.hidden_activations(other, self.data, &self.indices, &mut ws);
        match_activations(&spec, &acts_ref, &acts_other, self.indices.len())
    }
}

/// The merged parameters and the permutation applied to each input.
#[derive(Debug, Clone)]
pub struct Merged {
    pub params: Vec<f32>,
    pub permutations: Vec<Permutation>,
}

/// Aligns every input to the first and returns their average weighted by
/// `weights` (one positive weight per input; they need not sum to 1).
///
/// Refused: fewer than two inputs, architectures that differ (both named),
/// a non-finite parameter (input and index named), a weight count that is
/// not the input count, or a weight that is not positive and finite.
pub fn merge(spec: &PermutationSpec, inputs: &[Input<'_>], weights: &[f64], align: &dyn Align) -> Result<Merged> {
    check(inputs, weights)?;
    let mut permutations = vec![Permutation::identity(spec)];
    for input in &inputs[1..] {
        permutations.push(align.align(inputs[0].params, input.params)?);
    }
    let params = average(spec, inputs, weights, &permutations, None)?;
    Ok(Merged { params, permutations })
}

/// MergeMany (Git Re-Basin, Ainsworth et al., ICLR 2023, algorithm 3): starts
/// from every input aligned to the first, then re-aligns each input in turn
/// to the weighted average of the OTHERS (so that no input is its own
/// reference, as the first is in [`merge`]) until a whole round changes no
/// permutation or `max_rounds` rounds have run; returns the weighted average
/// and the number of rounds run. Refuses what [`merge`] refuses.
pub fn merge_many(
    spec: &PermutationSpec,
    inputs: &[Input<'_>],
    weights: &[f64],
    align: &dyn Align,
    max_rounds: usize,
) -> Result<(Merged, usize)> {
    let Merged { mut permutations, .. } = merge(spec, inputs, weights, align)?;
    let mut rounds = 0;
    while rounds < max_rounds {
        rounds += 1;
        let mut changed = false;
        for i in 0..inputs.len() {
            let reference = average(spec, inputs, weights, &permutations, Some(i))?;
            let perm = align.align(&reference, inputs[i].params)?;
            if perm != permutations[i] {
                permutations[i] = perm;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    debug!(rounds, "MergeMany settled");
    let params = average(spec, inputs, weights, &permutations, None)?;
    Ok((Merged { params, permutations }, rounds))
}

/// `Σ w_i π_i(θ_i) / Σ w_i` over all inputs but `skip`, accumulated in f64.
fn average(
    spec: &PermutationSpec,
    inputs: &[Input<'_>],
    weights: &[f64],
    permutations: &[Permutation],
    skip: Option<usize>,
) -> Result<Vec<f32>> {
    let kept = |i: &usize| Some(*i) != skip;
    let total: f64 = (0..inputs.len()).filter(kept).map(|i| weights[i]).sum();
    let mut sum = vec![0.0f64; spec.len];
    let mut permuted = vec![0.0f32; spec.len];
    for i in (0..inputs.len()).filter(kept) {
        permuted.copy_from_slice(inputs[i].params);
        apply(spec, &permutations[i], &mut permuted)?;
        for (s, &v) in sum.iter_mut().zip(&permuted) {
            *s += weights[i] / total * f64::from(v);
        }
    }
    Ok(sum.into_iter().map(|v| v as f32).collect())
}

/// The refusals of [`merge`].
fn check(inputs: &[Input<'_>], weights: &[f64]) -> Result<()> {
    let refuse = |problem: String| Err(Error::Matching(format!("cannot merge: {problem}")));
    if inputs.len() < 2 {
        return refuse(format!("{} model(s) given, at least two needed", inputs.len()));
    }
    if weights.len() != inputs.len() {
        return refuse(format!("{} weights for {} models", weights.len(), inputs.len()));
    }
    if let Some((w, input)) = weights.iter().zip(inputs).find(|(w, _)| !(w.is_finite() && **w > 0.0)) {
        return refuse(format!("the weight of {} is {w}; weights must be positive", input.name));
    }
    let first = &inputs[0];
    for input in inputs {
        if !input.arch.same_network(first.arch) {
            return refuse(format!("{} is {} but {} is {}", first.name, first.arch, input.name, input.arch));
        }
        first.arch.layout()?.check_len(first.arch, input.params)?;
        if let Some(i) = first_non_finite(input.params) {
            return refuse(format!("{} has parameter {i} = {}, not finite", input.name, input.params[i]));
        }
    }
    Ok(())
}
