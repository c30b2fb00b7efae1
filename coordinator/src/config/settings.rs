//! The coordinator's settings as given: flags and config-file keys (the
//! same names), a file read, and flags laid over a file (flags win).
//! `resolve` turns them into a [`CoordinatorConfig`](super::CoordinatorConfig).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use lazyavg_common::config::{LrScaling, TrainSettings};
use lazyavg_common::matching::AlignMethod;
use lazyavg_common::outer::OuterRule;
use lazyavg_proto::auth::TOKEN_FILE_ENV;
use serde::{Deserialize, Serialize};

use super::{Init, SyncEvery};
use crate::error::{Error, Result};
use crate::round::Aggregate;

/// Flags of `lazyavg coordinator`; a TOML file given with `--config` may set
/// any of them under the same name (with `_` for `-`).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
pub struct Settings {
    /// Workers to wait for before training; each epoch is split among those connected [default: --spawn-workers, or 2].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Average the weights every K minibatches (K is the sync interval), or once per epoch with `epoch` [default: 16 up to 8 workers, then 128/N].
    #[arg(long, value_name = "K|epoch")]
    pub sync_every: Option<SyncEvery>,

    /// Passes over the training set [default: 10].
    #[arg(long, value_name = "E")]
    pub epochs: Option<usize>,

    #[command(flatten)]
    #[serde(flatten)]
    pub train: TrainSettings,

    /// How the workers' learning rate grows with --workers N: none, linear (lr·N) or sqrt (lr·√N) [default: sqrt].
    #[arg(long, value_name = "RULE")]
    pub lr_scaling: Option<LrScaling>,

    /// Once half the workers have answered a round, wait for the rest F times as long as that took, then go on without them; 0 waits up to --round-timeout [default: 0].
    #[arg(long, value_name = "F")]
    pub straggler_factor: Option<f64>,

    /// The coordinator's step on each round's averaged update: avg (the average itself), sgd or nesterov [default: avg below 8 workers, nesterov from 8].
    #[arg(long, value_name = "RULE")]
    pub outer_optimizer: Option<OuterRule>,

    /// Learning rate of the outer sgd/nesterov step on the pseudo-gradient (before − average) [default: 0.9].
    #[arg(long, value_name = "LR")]
    pub outer_lr: Option<f32>,

    /// Momentum of the outer sgd/nesterov step [default: 0.5].
    #[arg(long, value_name = "M")]
    pub outer_momentum: Option<f32>,

    /// How rounds combine the weights: mean (sample-weighted, exact), or a rule robust to hostile workers on the updates: median, trimmed-mean, centered-clip, or norm-clip (streamed like the mean, O(model) memory) [default: mean].
    #[arg(long, value_name = "RULE")]
    pub aggregate: Option<Aggregate>,

    /// With --aggregate mean: leave out of each round a contribution whose update (weights minus the round's start) is --outlier-factor times the median update's norm or more, as non-finite ones are; the mean then keeps every contribution whole, a model copy per worker (median, trimmed-mean and centered-clip always leave such outliers out).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_outliers: bool,

    /// A contribution whose update norm is F times the round's median or more is an outlier: warned about, counted in the metrics, left out by the rules that keep contributions whole, and its worker trains no more of that epoch; at least 2; inf turns the screen off [default: 10].
    #[arg(long, value_name = "F")]
    pub outlier_factor: Option<f64>,

    /// Before a contribution is averaged, match its hidden units to the weights last broadcast: none, weights (weight matching) or activations (on --align-images training images) [default: none].
    #[arg(long, value_name = "METHOD")]
    pub align: Option<AlignMethod>,

    /// --align activations: how many training images (drawn once from --seed) the units' activations are compared on [default: 1000].
    #[arg(long, value_name = "M")]
    pub align_images: Option<usize>,

    /// Where workers start: shared (all from the coordinator's initial weights) or independent (each from its own seed, until the first average) [default: shared].
    #[arg(long, value_name = "INIT")]
    pub init: Option<Init>,

    /// Pause training while fewer than M workers are connected [default: 1].
    #[arg(long, value_name = "M")]
    pub min_workers: Option<usize>,

    /// Give up (exit non-zero) after training was paused this long for lack of workers (or of one trusted with the images of workers that left) [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub max_wait: Option<Duration>,

    /// Close a round without the workers that have not answered after this long, e.g. 10s, 500ms [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub round_timeout: Option<Duration>,

    /// Refuse (RESOURCE_EXHAUSTED) a Join while this many Joins wait to attach [default: 64, or twice --workers if more].
    #[arg(long, value_name = "N")]
    pub max_pending_joins: Option<usize>,

    /// Refuse (RESOURCE_EXHAUSTED) a session while this many are open, attached or not; at least --workers [default: 64, or twice --workers if more].
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<usize>,

    /// Forget a Join that has not attached this long after it (or after its last dataset download), and close a session that has not sent Attach this long after it opened [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub attach_timeout: Option<Duration>,

    /// Overlap communication with compute: pull a worker's next round as soon as its weights for this one are in, so it trains on while the others report and the average is made; it applies that average as a correction when it arrives [default: off].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overlap: bool,

    /// Address to listen on for workers [default: 127.0.0.1:7070; with --spawn-workers, a free loopback port].
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: Option<SocketAddr>,

    /// Send weights to and from workers on this machine over gRPC too, instead of through a shared-memory lane each (4 MiB, and twice a model of up to 8 MiB; only the same user's processes can open it); workers elsewhere always use gRPC [default: lanes on].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_shared_memory: bool,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (plain HTTP, no token: keep it on loopback or a monitoring network) [default: off].
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_bind: Option<SocketAddr>,

    /// With --metrics-bind: keep serving the metrics this long after the run ends, so that a scrape sees its final state (accuracy, lazyavg_run_active 0); a worker that joins meanwhile is told the run has completed [default: 15s, a common scrape interval].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub metrics_linger: Option<Duration>,

    /// After a completed run, keep answering this long while workers of the run missed its end (gone before the Stop, or not closing after it), telling each that joins that the run is over (it exits 0); the coordinator exits as soon as each has been told, at once if none missed it; 0: exit at once [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub end_grace: Option<Duration>,

    /// Directory of the four MNIST-layout IDX files [default: data/mnist, where missing files are fetched; see --fetch].
    #[arg(long, env = "LAZYAVG_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Download MNIST into --data-dir when its files are missing [default: only when --data-dir is not given, so a mistyped one is refused, not filled].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fetch: bool,

    /// Check the data files' SHA-256 before training.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,

    /// File holding the shared secret workers must present (or set LAZYAVG_TOKEN) [default: none].
    #[arg(long, env = TOKEN_FILE_ENV, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// PEM certificate (chain) the coordinator presents; turns on TLS (with --tls-key).
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate: require workers to present a client certificate it signed (mutual TLS).
    #[arg(long, value_name = "PATH")]
    pub tls_client_ca: Option<PathBuf>,

    /// Allow binding a non-loopback address without a token: anyone who can reach the port may join.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,

    /// Where metrics.jsonl, model.safetensors and config.toml go [default: runs/UTC-TIMESTAMP].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Also write one metrics.jsonl line per averaging round.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metrics_rounds: bool,

    /// Debugging: write every contribution and average of the first N rounds as raw f32 under OUT/rounds.
    ///
    /// Hidden from `--help`: a hook for tests (they recompute the average bit for bit) and for
    /// debugging the aggregation, not a setting of a training run.
    #[arg(long, value_name = "N", hide = true)]
    pub dump_rounds: Option<usize>,

    /// Benchmark: instead of training, time N averaging rounds in which no worker trains, then exit.
    ///
    /// Hidden from `--help`: used by `bench/rounds.sh` to measure the cost of a round; a run
    /// with it trains nothing.
    #[arg(long, value_name = "N", hide = true)]
    pub bench_rounds: Option<usize>,
}

impl Settings {
    /// Reads a TOML config file. Unknown keys are refused by name.
    pub fn from_file(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let table: toml::Table = text.parse().map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let known = Self::keys();
        if let Some(key) = table.keys().find(|k| !known.contains(k)) {
            return Err(Error::Config(format!(
                "{}: unknown key `{key}` (known keys: {})",
                path.display(),
                known.join(", ")
            )));
        }
        table.try_into().map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The config-file keys: the flags' names with `_` for `-`.
    fn keys() -> Vec<String> {
        let cmd = <Settings as Args>::augment_args(clap::Command::new("settings"));
        cmd.get_arguments().map(|a| a.get_id().as_str().to_owned()).filter(|id| id != "help").collect()
    }

    /// `self` with every setting given in `over` replacing its own. A model
    /// given in `over` (`model` or `hidden`) replaces both of `self`'s: a
    /// resumed run's recorded `[model]` gives way to `--hidden`.
    pub fn overlay(self, over: &Settings) -> Result<Settings> {
        let to_table = |s: &Settings| toml::Table::try_from(s).map_err(|e| Error::Config(e.to_string()));
        let mut merged = to_table(&self)?;
        let over = to_table(over)?;
        if over.contains_key("model") || over.contains_key("hidden") {
            merged.remove("model");
            merged.remove("hidden");
        }
        merged.extend(over);
        merged.try_into().map_err(|e: toml::de::Error| Error::Config(e.to_string()))
    }
}

/// Durations in config files as humantime strings ("10s", "500ms").
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use lazyavg_common::config::ModelSettings;

    use super::*;
    use crate::config::Launch;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(
            &path,
            "epochs = 3\nlr = 0.2\nhidden = [64, 32]\nverify = true\nround_timeout = \"2s\"\noverlap = true\n",
        )
        .unwrap();
        let file = Settings::from_file(&path).unwrap();
        let flags = Settings { epochs: Some(5), ..Settings::default() };
        let config = file.overlay(&flags).unwrap().resolve(&Launch::spawning(3)).unwrap();
        assert_eq!((config.epochs, config.train.lr, config.workers), (5, 0.2, 3));
        assert_eq!(config.sync_every, SyncEvery::Minibatches(16));
        assert_eq!(config.model.hidden, Some(vec![64, 32]));
        assert!(config.verify);
        assert_eq!(config.round_timeout, Duration::from_secs(2));
        assert!(
            config.overlap && !Settings::default().resolve(&Launch::default()).unwrap().overlap,
            "--overlap is off by default"
        );
        // The recorded settings reproduce the configuration.
        assert_eq!(config.to_settings().resolve(&Launch::default()).unwrap(), config);
    }

    #[test]
    fn a_model_table_is_read_from_a_file_and_a_model_flag_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "epochs = 2\n[model]\nlayers = [\"dense 30\", \"relu\", \"dense 10\"]\nclasses = 10\n")
            .unwrap();
        let file = Settings::from_file(&path).unwrap();
        let mnist = lazyavg_common::spec::InputShape { channels: 1, height: 28, width: 28 };
        let config = file.clone().overlay(&Settings::default()).unwrap().resolve(&Launch::spawning(1)).unwrap();
        assert_eq!(config.model.resolve(mnist, 10).unwrap().to_string(), "784-30-10");
        let hidden = ModelSettings { hidden: Some(vec![8]), ..ModelSettings::default() };
        let flags =
            Settings { train: TrainSettings { model: hidden, ..TrainSettings::default() }, ..Settings::default() };
        let config = file.overlay(&flags).unwrap().resolve(&Launch::spawning(1)).unwrap();
        assert_eq!(config.model.resolve(mnist, 10).unwrap().to_string(), "784-8-10");
    }

    #[test]
    fn a_named_model_in_a_file_brings_its_defaults_and_flags_override_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "model = \"lenet5\"\n").unwrap();
        let file = Settings::from_file(&path).unwrap();
        let config = file.clone().overlay(&Settings::default()).unwrap().resolve(&Launch::spawning(2)).unwrap();
        assert_eq!((config.train.lr, config.train.peak_lr()), (0.025, 0.025 * 2f32.sqrt()));
        assert_eq!(config.to_settings().resolve(&Launch::default()).unwrap().train.lr, 0.025, "a run records its rate");
        let flags =
            Settings { train: TrainSettings { lr: Some(0.01), ..TrainSettings::default() }, ..Settings::default() };
        assert_eq!(file.overlay(&flags).unwrap().resolve(&Launch::spawning(2)).unwrap().train.lr, 0.01);
        assert_eq!(Settings::default().resolve(&Launch::spawning(2)).unwrap().train.lr, 0.05, "the MLP's");
    }
}
