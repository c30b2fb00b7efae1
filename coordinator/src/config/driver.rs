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

/// What [`crate::driver::Driver`] runs by.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverConfig {
    /// How workers train: the seed deals the epochs, the peak rate names a divergence.
    pub train: TrainConfig,
    /// The workers to wait for before training.
    pub workers: usize,
    /// With the batch size, the samples between two rounds.
    pub sync_every: SyncEvery,
    /// The last epoch to train.
    pub epochs: usize,
    /// How long a round waits for a silent worker.
    pub round_timeout: Duration,
    /// `--straggler-factor`: 0 waits for every worker up to `round_timeout`.
    pub straggler_factor: f64,
    /// `--overlap`: each worker's next pull goes out before the round's average.
    pub overlap: bool,
    /// The outer step, built into an optimiser when the driver starts.
    pub outer: OuterSettings,
    /// How a round combines its contributions.
    pub aggregate: Aggregate,
    /// Rounds leave out outliers.
    pub drop_outliers: bool,
    /// `--outlier-factor`: infinite when the screen is off.
    pub outlier_factor: f64,
    /// How contributions are matched to the last broadcast.
    pub align: AlignMethod,
    /// Where workers start.
    pub init: Init,
    /// Training pauses below this many workers.
    pub min_workers: usize,
    /// How long it may stay paused.
    pub max_wait: Duration,
    /// Where workers connect (for port 0, the port the OS chose): named
    /// while the run waits for them.
    pub bind: SocketAddr,
    /// The run directory, where checkpoints go.
    pub out_dir: PathBuf,
    /// `--bench-rounds`: time this many rounds instead of training.
    pub bench_rounds: usize,
    /// Workers stopped by a signal are told the run goes on after a restart.
    pub restartable: bool,
    /// `--inject-checkpoint-fault` (tests only).
    pub checkpoint_faults: Vec<InjectedFault>,
}

impl CoordinatorConfig {
    /// The driver's part of this configuration, for a run that listens at
    /// `bind` and whose directory is `out_dir`.
    pub fn driver(&self, bind: SocketAddr, out_dir: PathBuf) -> DriverConfig {
        DriverConfig {
            train: self.train.clone(),
            workers: self.workers,
            sync_every: self.sync_every,
            epochs: self.epochs,
            round_timeout: self.round_timeout,
            straggler_factor: self.straggler_factor,
            overlap: self.overlap,
            outer: self.outer,
            aggregate: self.aggregate,
            drop_outliers: self.drop_outliers,
            outlier_factor: self.outlier_factor,
            align: self.align,
            init: self.init,
            min_workers: self.min_workers,
            max_wait: self.max_wait,
            bind,
            out_dir,
            bench_rounds: self.bench_rounds,
            restartable: self.restartable,
            checkpoint_faults: self.checkpoint_faults.clone(),
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
