//! Merging N models into one: align each to a reference, then average.

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::model::{Mlp, Workspace};
use crate::params::{Architecture, first_non_finite};

use super::activation::match_activations;
use super::permutation::{Permutation, apply};
use super::spec::PermutationSpec;
use super::weight::match_weights;

/// One model to merge: a name for messages (its file), its architecture and
/// parameters.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub name: &'a str,
    pub arch: &'a Architecture,
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
    pub mlp: Mlp,
    pub data: &'a Dataset,
    pub indices: Vec<u32>,
}

impl Align for ActivationAlignment<'_> {
    fn align(&self, reference: &[f32], other: &[f32]) -> Result<Permutation> {
        let mut ws = Workspace::new(self.mlp.arch(), 256);
        let spec = PermutationSpec::mlp(self.mlp.layout());
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

/// Aligns every input to the first (then, for each of `refinements` more
/// rounds, to the running merge) and returns their average weighted by
/// `weights` (one positive weight per input; they need not sum to 1).
///
/// Refused: fewer than two inputs, architectures that differ (both named),
/// a non-finite parameter (input and index named), a weight count that is
/// not the input count, or a weight that is not positive and finite.
pub fn merge(
    spec: &PermutationSpec,
    inputs: &[Input<'_>],
    weights: &[f64],
    align: &dyn Align,
    refinements: usize,
) -> Result<Merged> {
    check(inputs, weights)?;
    let total: f64 = weights.iter().sum();
    let mut permutations = vec![Permutation::identity(spec)];
    for input in &inputs[1..] {
        permutations.push(align.align(inputs[0].params, input.params)?);
    }
    let mut params = average(spec, inputs, weights, total, &permutations)?;
    for _ in 0..refinements {
        permutations = inputs.iter().map(|input| align.align(&params, input.params)).collect::<Result<_>>()?;
        params = average(spec, inputs, weights, total, &permutations)?;
    }
    Ok(Merged { params, permutations })
}

/// `Σ w_i π_i(θ_i) / Σ w_i`, accumulated in f64.
fn average(
    spec: &PermutationSpec,
    inputs: &[Input<'_>],
    weights: &[f64],
    total: f64,
    permutations: &[Permutation],
) -> Result<Vec<f32>> {
    let mut sum = vec![0.0f64; spec.len];
    let mut permuted = vec![0.0f32; spec.len];
    for ((input, &w), perm) in inputs.iter().zip(weights).zip(permutations) {
        permuted.copy_from_slice(input.params);
        apply(spec, perm, &mut permuted)?;
        for (s, &v) in sum.iter_mut().zip(&permuted) {
            *s += w / total * f64::from(v);
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
        if input.arch != first.arch {
            return refuse(format!("{} is {} but {} is {}", first.name, first.arch, input.name, input.arch));
        }
        first.arch.layout().check_len(first.arch, input.params)?;
        if let Some(i) = first_non_finite(input.params) {
            return refuse(format!("{} has parameter {i} = {}, not finite", input.name, input.params[i]));
        }
    }
    Ok(())
}
