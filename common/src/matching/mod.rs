//! Matching the hidden units of separately trained models, and merging them.
//!
//! Any reordering of a hidden layer's units (with the same reordering of the
//! next layer's inputs) leaves a network's function unchanged, so unit `i` of
//! one model need not compute the feature of unit `i` of another, and their
//! plain average mixes unrelated features. Matching units first (Git
//! Re-Basin, Ainsworth et al., ICLR 2023) makes the average work.
//!
//! # Layout
//! - [`spec`]: which (tensor, axis) pairs each permutable group moves; a
//!   network declares its spec ([`crate::model::Network::permutation_spec`]), everything else is
//!   written once against it.
//! - [`permutation`]: [`Permutation`] and [`apply`], for parameters or any
//!   buffer of the same layout (optimiser momentum).
//! - [`assignment`]: the linear assignment problem (the `lapjv` crate).
//! - [`weight`]: weight matching, coordinate descent over the groups.
//! - [`activation`]: activation matching, correlations over images.
//! - [`merge`](mod@merge): the [`Align`] seam and the N-model weighted average.
//! - [`repair`](mod@repair): REPAIR, resetting merged units' statistics.
//! - [`contribution`]: `--align`, a worker's contribution matched to its round's start.

pub mod activation;
pub mod assignment;
pub mod contribution;
pub mod merge;
pub mod permutation;
pub mod repair;
pub mod spec;
pub mod weight;

pub use activation::match_activations;
pub use contribution::{AlignMethod, ContributionAligner};
pub use merge::{ActivationAlignment, Align, Input, Merged, NoAlignment, WeightAlignment, merge, merge_many};
pub use permutation::{Permutation, apply};
pub use repair::repair;
pub use spec::{Group, PermutationSpec, TensorAxis};
pub use weight::match_weights;

#[cfg(test)]
mod tests;
