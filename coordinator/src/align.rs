//! `--align`: before a worker's contribution enters a round's average, its
//! hidden units are matched to the weights the coordinator last broadcast
//! and permuted into their order (see `lazyavg_common::matching`).
//!
//! The reference is what every worker started the round from, so each
//! contribution is brought into one common order, and the permutation is
//! sent back so the worker's momentum follows (`Realign`). It combines with
//! every `--aggregate` rule: alignment only reorders a contribution (the
//! function it computes is unchanged) before the rule sees it, and a hostile
//! contribution cannot move another's alignment, whose reference is the
//! coordinator's own. A contribution is held whole only while it arrives and
//! is aligned; the mean stays one running sum. `--overlap` is refused with
//! it (see `config`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lazyavg_common::dataset::Dataset;
use lazyavg_common::matching::{ActivationAlignment, Align, Permutation, PermutationSpec, WeightAlignment, apply};
use lazyavg_common::model::Network;
use lazyavg_common::rng::{self, Purpose};

/// How a contribution's hidden units are matched to the reference (`--align`).
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

impl fmt::Display for AlignMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AlignMethod::None => "none",
            AlignMethod::Weights => "weights",
            AlignMethod::Activations => "activations",
        })
    }
}

/// How weight matching is run in a round: its seed only orders the layers
/// it visits, and a few passes settle it (see `match_weights`).
const WEIGHT_MATCHING_PASSES: usize = 8;

/// What a run matches contributions with, built once.
pub struct Alignment {
    method: Arc<dyn Align + Send + Sync>,
    spec: PermutationSpec,
}

impl fmt::Debug for Alignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alignment").field("groups", &self.spec.sizes()).finish_non_exhaustive()
    }
}

/// Activation matching on a fixed sample of the training set, owned so that
/// it can live as long as the run.
struct OnImages {
    mlp: Network,
    train: Arc<Dataset>,
    indices: Vec<u32>,
}

impl Align for OnImages {
    fn align(&self, reference: &[f32], other: &[f32]) -> lazyavg_common::Result<Permutation> {
        let indices = self.indices.clone();
        ActivationAlignment { mlp: self.mlp.clone(), data: &self.train, indices }.align(reference, other)
    }
}

impl Alignment {
    /// The alignment of `method` for a run of `mlp` seeded with `seed`;
    /// `None` for `--align none` (and for activations without `train`,
    /// which the caller loads for that method). Activation matching compares
    /// units on `images` images of `train` drawn once from the seed.
    pub fn for_run(
        method: AlignMethod,
        mlp: &Network,
        seed: u64,
        train: Option<Arc<Dataset>>,
        images: usize,
    ) -> Option<Self> {
        let spec = mlp.permutation_spec();
        let method: Arc<dyn Align + Send + Sync> = match (method, train) {
            (AlignMethod::None, _) | (AlignMethod::Activations, None) => return None,
            (AlignMethod::Weights, _) => {
                Arc::new(WeightAlignment { spec: spec.clone(), seed, max_passes: WEIGHT_MATCHING_PASSES })
            }
            (AlignMethod::Activations, Some(train)) => {
                let mut order = rng::permutation(train.len(), &mut rng::stream(seed, Purpose::MatchingImages));
                order.truncate(images);
                Arc::new(OnImages { mlp: mlp.clone(), train, indices: order })
            }
        };
        Some(Alignment { method, spec })
    }

    /// The groups of units that may be reordered (how a `Realign` is laid out).
    pub fn spec(&self) -> &PermutationSpec {
        &self.spec
    }

    /// An aligner for one round whose contributions are matched to `reference`.
    pub fn start(&self, reference: &[f32]) -> Aligner {
        Aligner {
            method: Arc::clone(&self.method),
            spec: self.spec.clone(),
            reference: reference.to_vec(),
            spent: Duration::ZERO,
        }
    }
}

/// Matches one round's contributions to its reference, the weights the
/// coordinator broadcast before the round, and times it.
pub struct Aligner {
    method: Arc<dyn Align + Send + Sync>,
    spec: PermutationSpec,
    reference: Vec<f32>,
    spent: Duration,
}

impl fmt::Debug for Aligner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aligner").field("spent", &self.spent).finish_non_exhaustive()
    }
}

impl Aligner {
    /// Reorders the hidden units of `params` (a whole contribution) to
    /// match the reference; returns the reordering applied.
    pub fn align(&mut self, params: &mut [f32]) -> lazyavg_common::Result<Permutation> {
        let started = Instant::now();
        let perm = self.method.align(&self.reference, params)?;
        apply(&self.spec, &perm, params)?;
        self.spent += started.elapsed();
        Ok(perm)
    }

    /// Time spent matching so far.
    pub fn spent(&self) -> Duration {
        self.spent
    }
}
