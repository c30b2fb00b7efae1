//! The coordinator's configuration, in layers (as fd and ripgrep build theirs):
//! flags and config file as given, one pure step that validates them into
//! plain values, and one step after it that reads the secrets those values
//! name. Whatever holds state (the outer optimiser with its velocity, the run
//! directory) is built where it is used, from these values.
//!
//! - `settings`: the flags and config-file keys ([`Settings`]), a file's
//!   reading, and flags laid over a file.
//! - `resolve`: [`Settings`] and the [`Launch`] → [`CoordinatorConfig`],
//!   defaults applied and every value checked; no file, environment or clock.
//! - `secrets`: the token and TLS material the configuration names ([`Secrets`]).
//! - `driver`: the part that the training loop reads ([`DriverConfig`]).
//! - `limits`: what the service keeps for its clients.
//! - `defaults`: the defaults and bounds, each with its reason.

mod defaults;
mod driver;
mod limits;
mod resolve;
mod secrets;
mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use lazyavg_common::config::{LrScaling, ModelSettings, TrainConfig, TrainSettings};
use lazyavg_common::matching::AlignMethod;
use lazyavg_common::outer::OuterSettings;

use crate::checkpoint::InjectedFault;
pub use crate::init::Init;
use crate::registry::Limits;
use crate::round::Aggregate;
pub use crate::sync_every::SyncEvery;
pub use defaults::DEFAULT_PORT;
pub use driver::DriverConfig;
pub use resolve::Launch;
pub use secrets::Secrets;
pub use settings::Settings;

/// The validated configuration a coordinator runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorConfig {
    /// How workers train; its `lr_scale` comes from `lr_scaling` and `workers`.
    pub train: TrainConfig,
    /// The model, as given; once the data is loaded, its full description
    /// (which config.toml records).
    pub model: ModelSettings,
    pub lr_scaling: LrScaling,
    pub workers: usize,
    pub sync_every: SyncEvery,
    pub epochs: usize,
    pub round_timeout: Duration,
    pub straggler_factor: f64,
    /// `--overlap`: each worker's next pull goes out before the round's average.
    pub overlap: bool,
    /// `--outer-optimizer`, `--outer-lr` and `--outer-momentum`; the driver
    /// builds the optimiser from them.
    pub outer: OuterSettings,
    pub aggregate: Aggregate,
    /// Rounds leave out outliers (`--drop-outliers`, and always with a rule
    /// that keeps contributions whole).
    pub drop_outliers: bool,
    /// `--outlier-factor`: infinite when the screen is off.
    pub outlier_factor: f64,
    pub align: AlignMethod,
    pub align_images: usize,
    pub init: Init,
    pub min_workers: usize,
    pub max_wait: Duration,
    /// What the service keeps for its clients (`--max-pending-joins`,
    /// `--max-sessions`, `--attach-timeout`).
    pub limits: Limits,
    pub bind: SocketAddr,
    /// Workers on this machine get a shared-memory lane for their weights
    /// (off with `--no-shared-memory`).
    pub shared_memory: bool,
    /// `--metrics-bind`: where `/metrics` is served, if anywhere.
    pub metrics_bind: Option<SocketAddr>,
    /// How long the metrics are served after the run ends.
    pub metrics_linger: Duration,
    /// `--end-grace`: how long a completed run waits to tell the workers that missed its end.
    pub end_grace: Duration,
    /// Where the token is read from, if not from the environment (see [`Secrets`]).
    pub token_file: Option<PathBuf>,
    /// Where the TLS material is read from (see [`Secrets`]).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub insecure: bool,
    pub data_dir: PathBuf,
    /// Fetch MNIST into `data_dir` if files are missing: `--fetch`, or no `--data-dir` given.
    pub fetch: bool,
    pub verify: bool,
    /// `--out`: the run directory; without it, the run makes one of its own,
    /// named for the time it starts.
    pub out: Option<PathBuf>,
    pub metrics_rounds: bool,
    pub dump_rounds: usize,
    pub bench_rounds: usize,
    /// Continue the run in `out` from its checkpoint (`--resume`).
    pub resume: bool,
    /// Started with `--resume-existing`, as a service that is restarted: a
    /// new run may replace the epochs recorded by an earlier start that left
    /// no checkpoint, and workers are told a stop by a signal is not the end.
    pub restartable: bool,
    /// `--inject-checkpoint-fault` (tests only).
    pub checkpoint_faults: Vec<InjectedFault>,
}

impl CoordinatorConfig {
    /// Every setting, as a config file that reproduces this run (the run
    /// directory adds the directory it made, see [`crate::run_dir::prepare`]).
    pub fn to_settings(&self) -> Settings {
        Settings {
            workers: Some(self.workers),
            sync_every: Some(self.sync_every),
            epochs: Some(self.epochs),
            round_timeout: Some(self.round_timeout),
            straggler_factor: Some(self.straggler_factor),
            overlap: self.overlap,
            outer_optimizer: Some(self.outer.rule()),
            outer_lr: Some(self.outer.lr()),
            outer_momentum: Some(self.outer.momentum()),
            aggregate: Some(self.aggregate),
            // The flag as given: the rules that leave outliers out always
            // do, and a resume may switch to one that does not.
            drop_outliers: self.drop_outliers && self.aggregate == Aggregate::Mean,
            outlier_factor: Some(self.outlier_factor),
            align: Some(self.align),
            align_images: Some(self.align_images),
            init: Some(self.init),
            min_workers: Some(self.min_workers),
            max_wait: Some(self.max_wait),
            max_pending_joins: Some(self.limits.max_pending_joins),
            max_sessions: Some(self.limits.max_sessions),
            attach_timeout: Some(self.limits.attach_timeout),
            train: TrainSettings::from_config(&self.train, &self.model),
            lr_scaling: Some(self.lr_scaling),
            bind: Some(self.bind),
            no_shared_memory: !self.shared_memory,
            metrics_bind: self.metrics_bind,
            metrics_linger: Some(self.metrics_linger),
            end_grace: Some(self.end_grace),
            token_file: self.token_file.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_client_ca: self.tls_client_ca.clone(),
            insecure: self.insecure,
            data_dir: Some(self.data_dir.clone()),
            fetch: self.fetch,
            verify: self.verify,
            out: self.out.clone(),
            metrics_rounds: self.metrics_rounds,
            dump_rounds: (self.dump_rounds > 0).then_some(self.dump_rounds),
            bench_rounds: (self.bench_rounds > 0).then_some(self.bench_rounds),
        }
    }
}
