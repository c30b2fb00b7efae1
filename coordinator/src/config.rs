//! The coordinator's settings: flags and config-file keys (the same names),
//! merged (flags win) and validated into a [`CoordinatorConfig`] before any
//! socket opens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use lazyavg_common::config::{TrainConfig, TrainSettings};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Port the coordinator listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7070;

/// Flags of `lazyavg coordinator`; a TOML file given with `--config` may set
/// any of them under the same name (with `_` for `-`).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
pub struct Settings {
    /// Workers to train with: the epoch is split into this many shards [default: --spawn-workers, or 2].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Average the weights every K minibatches (K is the sync interval) [default: 16].
    #[arg(long, value_name = "K")]
    pub sync_every: Option<usize>,

    /// Passes over the training set [default: 10].
    #[arg(long, value_name = "E")]
    pub epochs: Option<usize>,

    #[command(flatten)]
    #[serde(flatten)]
    pub train: TrainSettings,

    /// Address to listen on for workers [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: Option<SocketAddr>,

    /// Directory of the four MNIST-layout IDX files; fetched there if missing [default: data/mnist].
    #[arg(long, env = "LAZYAVG_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Check the data files' SHA-256 before training.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,

    /// Where metrics.jsonl, model.safetensors and config.toml go [default: runs/<UTC timestamp>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Also write one metrics.jsonl line per averaging round.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metrics_rounds: bool,

    /// Debugging: write every contribution and average of the first N rounds as raw f32 under <out>/rounds.
    #[arg(long, value_name = "N", hide = true)]
    pub dump_rounds: Option<usize>,
}

/// The validated configuration a coordinator runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorConfig {
    pub train: TrainConfig,
    pub workers: usize,
    pub sync_every: usize,
    pub epochs: usize,
    pub bind: SocketAddr,
    pub data_dir: PathBuf,
    pub verify: bool,
    pub out_dir: PathBuf,
    pub metrics_rounds: bool,
    pub dump_rounds: usize,
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

    /// `self` with every setting given in `over` replacing its own.
    pub fn overlay(self, over: &Settings) -> Result<Settings> {
        let to_table = |s: &Settings| toml::Table::try_from(s).map_err(|e| Error::Config(e.to_string()));
        let mut merged = to_table(&self)?;
        merged.extend(to_table(over)?);
        merged.try_into().map_err(|e: toml::de::Error| Error::Config(e.to_string()))
    }

    /// Applies defaults and validates. `spawn_workers` is the number of local
    /// workers the coordinator starts itself (the default for `workers`).
    pub fn resolve(&self, spawn_workers: usize) -> Result<CoordinatorConfig> {
        let train = self.train.resolve()?;
        let workers = self.workers.unwrap_or(if spawn_workers > 0 { spawn_workers } else { 2 });
        let positive = |value: usize, flag: &str| {
            if value == 0 { Err(Error::Config(format!("invalid {flag}: must be at least 1"))) } else { Ok(value) }
        };
        Ok(CoordinatorConfig {
            train,
            workers: positive(workers, "--workers")?,
            sync_every: positive(self.sync_every.unwrap_or(16), "--sync-every")?,
            epochs: positive(self.epochs.unwrap_or(10), "--epochs")?,
            bind: self.bind.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))),
            data_dir: self.data_dir.clone().unwrap_or_else(|| PathBuf::from("data/mnist")),
            verify: self.verify,
            out_dir: self.out.clone().unwrap_or_else(default_out_dir),
            metrics_rounds: self.metrics_rounds,
            dump_rounds: self.dump_rounds.unwrap_or(0),
        })
    }
}

impl CoordinatorConfig {
    /// Every setting, as a config file that reproduces this run.
    pub fn to_settings(&self) -> Settings {
        Settings {
            workers: Some(self.workers),
            sync_every: Some(self.sync_every),
            epochs: Some(self.epochs),
            train: TrainSettings::from_config(&self.train),
            bind: Some(self.bind),
            data_dir: Some(self.data_dir.clone()),
            verify: self.verify,
            out: Some(self.out_dir.clone()),
            metrics_rounds: self.metrics_rounds,
            dump_rounds: (self.dump_rounds > 0).then_some(self.dump_rounds),
        }
    }

    /// Samples each worker trains between two averaging rounds.
    pub fn samples_per_round(&self) -> usize {
        self.sync_every * self.train.batch_size
    }
}

/// `runs/<UTC timestamp>`, e.g. `runs/2026-11-28T10-15-00Z`.
fn default_out_dir() -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "-");
    PathBuf::from("runs").join(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "epochs = 3\nlr = 0.2\nhidden = [64, 32]\nverify = true\n").unwrap();
        let file = Settings::from_file(&path).unwrap();
        let flags = Settings { epochs: Some(5), ..Settings::default() };
        let config = file.overlay(&flags).unwrap().resolve(3).unwrap();
        assert_eq!((config.epochs, config.train.lr, config.workers, config.sync_every), (5, 0.2, 3, 16));
        assert_eq!(config.train.hidden, vec![64, 32]);
        assert!(config.verify);
        // The recorded settings reproduce the configuration.
        assert_eq!(config.to_settings().resolve(0).unwrap(), config);
    }

    #[test]
    fn unknown_keys_and_nonsense_values_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "lr = 0.1\nsync_evry = 4\n").unwrap();
        let err = Settings::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("unknown key `sync_evry`"), "{err}");
        let bad = |s: Settings| s.resolve(0).unwrap_err().to_string();
        assert!(bad(Settings { sync_every: Some(0), ..Settings::default() }).contains("--sync-every"));
        assert!(bad(Settings { workers: Some(0), ..Settings::default() }).contains("--workers"));
        let lr = Settings { train: TrainSettings { lr: Some(-1.0), ..TrainSettings::default() }, ..Settings::default() };
        assert!(bad(lr).contains("--lr"));
    }
}
