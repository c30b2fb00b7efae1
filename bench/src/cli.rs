//! Command-line flags of `lazyavg-bench`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use lazyavg_coordinator::aggregate::Aggregate;
use lazyavg_worker::ConnectArgs;

use crate::hostile::Attack;

/// Benchmarks of lazyavg that drive its binary from outside, as a user would.
#[derive(Debug, Parser)]
#[command(name = "lazyavg-bench", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Example: lazyavg-bench scaling --workers 1,2,4 --seeds 1,2,3 -- --epochs 5 --sync-every 8
    Scaling(ScalingArgs),
    /// A hostile client for tests and benchmarks: joins a run like a worker and answers every pull with an attack.
    ///
    /// It speaks the protocol with the worker's own connection code, trains nothing, and sends values
    /// built from the averages it received: finite, of the right length, on time. It exits 0 when
    /// the coordinator stops the run.
    ///
    /// Example: lazyavg-bench hostile --coordinator http://127.0.0.1:7070 --attack scale
    Hostile(HostileArgs),
    /// The coordinator's own work in a round: contributions combined in this process, no messages.
    ///
    /// N workers' weights of a model with P parameters go chunk by chunk into a round of the
    /// coordinator's, each worker's in turn, and the round combines them and steps the model, R
    /// times; prints the median, 10th and 90th percentile of a round's time. Between rounds it
    /// writes 2 MiB elsewhere, so that a round finds its buffers out of the core's L2 as between
    /// real rounds.
    ///
    /// Example: lazyavg-bench combine --workers 8
    Combine(CombineArgs),
}

#[derive(Debug, Args)]
pub struct CombineArgs {
    /// Workers contributing to each round.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub workers: u64,

    /// Parameters of the model (default: the default MLP's).
    #[arg(long, default_value_t = 199_210, value_parser = parse_positive)]
    pub parameters: usize,

    /// Rounds to time.
    #[arg(long, default_value_t = 3000, value_parser = parse_positive)]
    pub rounds: usize,

    /// How the round combines the contributions, as the coordinator's --aggregate.
    #[arg(long, value_enum, default_value = "mean")]
    pub aggregate: Aggregate,
}

/// A count of at least 1.
fn parse_positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

#[derive(Debug, Args)]
pub struct HostileArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// The attack: scale (F × the last average), noise (uniform ±F) or signflip (w̄ − F·Δ).
    #[arg(long, value_enum, default_value = "scale")]
    pub attack: Attack,

    /// F, the attack's size [default: 100 for scale, 1e6 for noise, 10 for signflip].
    #[arg(long, value_name = "F")]
    pub factor: Option<f32>,

    /// Name it joins under (the coordinator's warnings name it).
    #[arg(long, default_value = "hostile")]
    pub name: String,

    /// Seed of the noise attack's values.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct ScalingArgs {
    /// The lazyavg binary to run [default: `lazyavg` next to this executable].
    #[arg(long, value_name = "PATH")]
    pub lazyavg: Option<PathBuf>,

    /// Directory holding the four MNIST-layout IDX files (raw or .gz).
    #[arg(long = "data-dir", visible_alias = "dir", env = "LAZYAVG_DATA_DIR", default_value = "data/mnist")]
    pub data_dir: PathBuf,

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
