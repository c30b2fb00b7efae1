//! `--init`: where the workers' models start.

use lazyavg_common::model::Network;
use lazyavg_common::rng::{self, Purpose};
use serde::{Deserialize, Serialize};

use crate::round::WorkerId;

/// Where the workers' models start (`--init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// Every worker from the coordinator's initial weights.
    #[default]
    Shared,
    /// The first worker to attach from the coordinator's initial weights,
    /// every other from weights drawn with its own seed (derived from --seed
    /// and its id): models trained apart until the first average, whose
    /// hidden units do not correspond (see --align). The first worker's
    /// start is the coordinator's, so the first round's reference for
    /// --align is a model that one contribution grew from.
    Independent,
}

/// The weights `worker` starts from under `--init independent` when it is
/// not the first: the model's init, drawn from a stream of its own.
pub fn independent_start(mlp: &Network, seed: u64, worker: WorkerId) -> Vec<f32> {
    mlp.init_with(&mut rng::stream(seed, Purpose::WorkerInit(worker)))
}

#[cfg(test)]
mod tests {
    use lazyavg_common::spec::ModelSpec;

    use super::*;

    #[test]
    fn each_worker_draws_its_own_start_and_the_same_one_every_time() {
        let mlp = ModelSpec::from_widths(&[4, 3, 2]).unwrap().build().unwrap();
        let shared = mlp.init(7);
        let (one, two) = (independent_start(&mlp, 7, 1), independent_start(&mlp, 7, 2));
        assert_ne!(one, two);
        assert_ne!(one, shared);
        assert_eq!(one, independent_start(&mlp, 7, 1), "seeded");
        assert_ne!(one, independent_start(&mlp, 8, 1), "from the run's seed");
    }
}
