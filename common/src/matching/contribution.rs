//! `--align` in a cluster: before a worker sends its weights for a round, it
//! matches their hidden units to the round's start and reorders them, its
//! momentum alike, so that every contribution reaches the coordinator in
//! one common order.
//!
//! The round's start is the average every worker of the round began from
//! (the coordinator's own weights, never another worker's), so a hostile
//! contribution cannot move anyone else's alignment. Matching on the worker
//! keeps the coordinator at one running sum, O(model) whatever the number of
//! workers, and spends the workers' cores rather than the coordinator's
//! event loop.

use std::fmt;
use std::sync::Arc;

use crate::dataset::Dataset;
use crate::error::Result;
use crate::model::Network;
use crate::rng::{self, Purpose};

use super::merge::{ActivationAlignment, Align, WeightAlignment};
use super::permutation::{Permutation, apply};
use super::spec::PermutationSpec;

/// How a contribution's hidden units are matched to the round's start (`--align`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlignMethod {
    /// No matching: the plain average, bit for bit as without the flag.
    #[default]
    None,
    /// Weight matching: coordinate descent over the layers, on weights alone.
    Weights,
    /// Activation matching: correlations of the units' outputs on training images.
    Activations,
}

impl AlignMethod {
    /// The method `name` names, as [`fmt::Display`] writes it.
    pub fn parse(name: &str) -> Option<Self> {
        [AlignMethod::None, AlignMethod::Weights, AlignMethod::Activations]
            .into_iter()
            .find(|method| method.to_string() == name)
    }
}

impl fmt::Display for AlignMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AlignMethod::None => "none",
            AlignMethod::Weights => "weights",
            AlignMethod::Activations => "activations",
        })
    }
}

/// Weight matching in a round: its seed only orders the layers it visits,
/// and a few passes settle it (see `match_weights`).
const WEIGHT_MATCHING_PASSES: usize = 8;

/// Activation matching on a fixed sample of the training set, owned so that
/// it can live as long as the run.
struct OnImages {
    net: Network,
    train: Arc<Dataset>,
    indices: Vec<u32>,
}

impl Align for OnImages {
    fn align(&self, reference: &[f32], other: &[f32]) -> Result<Permutation> {
        let indices = self.indices.clone();
        ActivationAlignment { mlp: self.net.clone(), data: &self.train, indices }.align(reference, other)
    }
}

/// How one worker matches its contributions, built once for the run.
pub struct ContributionAligner {
    method: Box<dyn Align + Send + Sync>,
    spec: PermutationSpec,
}

impl fmt::Debug for ContributionAligner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContributionAligner").field("groups", &self.spec.sizes()).finish_non_exhaustive()
    }
}

impl ContributionAligner {
    /// The matching of `method` for a run of `net` seeded with `seed`; `None`
    /// for `--align none`. Activation matching compares units on `images`
    /// images of `train` drawn from the seed, the same images on every worker.
    pub fn for_run(method: AlignMethod, net: &Network, seed: u64, train: &Arc<Dataset>, images: usize) -> Option<Self> {
        let spec = net.permutation_spec();
        let method: Box<dyn Align + Send + Sync> = match method {
            AlignMethod::None => return None,
            AlignMethod::Weights => {
                Box::new(WeightAlignment { spec: spec.clone(), seed, max_passes: WEIGHT_MATCHING_PASSES })
            }
            AlignMethod::Activations => {
                let mut order = rng::permutation(train.len(), &mut rng::stream(seed, Purpose::MatchingImages));
                order.truncate(images);
                Box::new(OnImages { net: net.clone(), train: Arc::clone(train), indices: order })
            }
        };
        Some(ContributionAligner { method, spec })
    }

    /// The reordering of `params`'s hidden units that matches them to `start`.
    pub fn find(&self, start: &[f32], params: &[f32]) -> Result<Permutation> {
        self.method.align(start, params)
    }

    /// Applies `perm` to `buf`: the parameters, or the optimiser's momentum
    /// (which must follow them, so that it goes on pushing each unit as before).
    pub fn reorder(&self, perm: &Permutation, buf: &mut [f32]) -> Result<()> {
        apply(&self.spec, perm, buf)
    }
}
