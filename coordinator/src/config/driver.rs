//! The training loop's own configuration: only what the driver reads, so
//! that what it depends on is seen at a glance, and the two values known
//! only once the run has started (the address it listens on, the directory
//! it made) are filled in by construction rather than patched.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use lazyavg_common::config::TrainConfig;
use lazyavg_common::matching::AlignMethod;
use lazyavg_common::outer::OuterSettings;

use super::{CoordinatorConfig, Init, SyncEvery};
use crate::checkpoint::{Fault, InjectedFault};
use crate::round::Aggregate;
use crate::sync_every::EPOCH_SAMPLES;

/// What [`crate::driver::Driver`] runs by, grouped by what it decides:
/// who trains and for how long, what a round does, where the run stands.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverConfig {
    /// The workers to wait for before training.
    pub workers: usize,
    /// Training pauses below this many workers...
    pub min_workers: usize,
    /// ...for this long at most.
    pub max_wait: Duration,
    /// How workers train: the seed deals the epochs, the peak rate names a divergence.
    pub train: TrainConfig,
    /// Where workers start.
    pub init: Init,
    /// The last epoch to train.
    pub epochs: usize,
    /// `--bench-rounds`: time this many rounds instead of training.
    pub bench_rounds: usize,

    /// With the batch size, the samples between two rounds.
    pub sync_every: SyncEvery,
    /// `--overlap`: each worker's next pull goes out before the round's average.
    pub overlap: bool,
    /// How long a round waits for a silent worker.
    pub round_timeout: Duration,
    /// `--straggler-factor`: 0 waits for every worker up to `round_timeout`.
    pub straggler_factor: f64,
    /// How contributions are matched to the last broadcast.
    pub align: AlignMethod,
    /// `--outlier-factor`: infinite when the screen is off.
    pub outlier_factor: f64,
    /// Rounds leave out outliers.
    pub drop_outliers: bool,
    /// How a round combines its contributions.
    pub aggregate: Aggregate,
    /// The outer step, built into an optimiser when the driver starts.
    pub outer: OuterSettings,

    /// Where workers connect (for port 0, the port the OS chose): named
    /// while the run waits for them.
    pub bind: SocketAddr,
    /// The run directory, where checkpoints go.
    pub out_dir: PathBuf,
    /// `--inject-checkpoint-fault` (tests only).
    pub checkpoint_faults: Vec<InjectedFault>,
    /// Workers stopped by a signal are told the run goes on after a restart.
    pub restartable: bool,
}

impl CoordinatorConfig {
    /// The driver's part of this configuration, for a run that listens at
    /// `bind` and whose directory is `out_dir`.
    pub fn driver(&self, bind: SocketAddr, out_dir: PathBuf) -> DriverConfig {
        DriverConfig {
            workers: self.workers,
            min_workers: self.min_workers,
            max_wait: self.max_wait,
            train: self.train.clone(),
            init: self.init,
            epochs: self.epochs,
            bench_rounds: self.bench_rounds,
            sync_every: self.sync_every,
            overlap: self.overlap,
            round_timeout: self.round_timeout,
            straggler_factor: self.straggler_factor,
            align: self.align,
            outlier_factor: self.outlier_factor,
            drop_outliers: self.drop_outliers,
            aggregate: self.aggregate,
            outer: self.outer,
            bind,
            out_dir,
            checkpoint_faults: self.checkpoint_faults.clone(),
            restartable: self.restartable,
        }
    }
}

impl DriverConfig {
    /// The fault `--inject-checkpoint-fault` puts in the checkpoint of `epoch`.
    pub fn checkpoint_fault(&self, epoch: u64) -> Option<Fault> {
        self.checkpoint_faults.iter().find(|f| f.epoch == epoch).map(|f| f.fault)
    }

    /// Samples each worker trains between two averaging rounds.
    pub fn samples_per_round(&self) -> usize {
        match self.sync_every {
            SyncEvery::Minibatches(k) => k * self.train.batch_size,
            SyncEvery::Epoch => EPOCH_SAMPLES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Launch, Settings};

    #[test]
    fn an_epoch_interval_is_one_round_per_shard_and_is_recorded_as_a_word() {
        let config = Settings { sync_every: Some(SyncEvery::Epoch), ..Settings::default() }
            .resolve(&Launch::spawning(2))
            .unwrap();
        let driver = config.driver(config.bind, PathBuf::from("run"));
        assert!(driver.samples_per_round() >= 60_000, "more than any shard");
        let settings = config.to_settings();
        assert_eq!(settings.resolve(&Launch::default()).unwrap().sync_every, SyncEvery::Epoch);
        assert!(toml::to_string(&settings).unwrap().contains("sync_every = \"epoch\""));
        assert_eq!((config.align, config.init), (AlignMethod::None, Init::Shared), "both off by default");
    }
}
