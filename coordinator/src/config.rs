//! The coordinator's settings: flags and config-file keys (the same names),
//! merged (flags win) and validated into a [`CoordinatorConfig`] before any
//! socket opens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use lazyavg_common::config::{LrScaling, ModelSettings, TrainConfig, TrainSettings};

use crate::checkpoint::{Fault, InjectedFault};
use lazyavg_common::outer::{OuterOptimizer, OuterRule};
use lazyavg_proto::auth::{TOKEN_ENV, TOKEN_FILE_ENV, Token};
use lazyavg_proto::tls::ServerTls;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::init::Init;
use crate::registry::Limits;
use crate::round::Aggregate;
use crate::screen::DEFAULT_OUTLIER_FACTOR;
use crate::sync_every::EPOCH_SAMPLES;
pub use crate::sync_every::SyncEvery;
use lazyavg_common::matching::AlignMethod;

/// Port the coordinator listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7070;

/// A round normally takes milliseconds; a worker silent for this long is
/// hung, stopped or cut off, and the others should not wait for it.
const DEFAULT_ROUND_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_METRICS_LINGER: Duration = Duration::from_secs(15);
/// Three of a worker's longest reconnection pauses (5 s): a worker cut off
/// near the end is back within it, and a run whose worker died for good
/// ends only 15 s late (one whose workers all read the Stop, at once).
const DEFAULT_END_GRACE: Duration = Duration::from_secs(15);

/// Off by default: a cut-off relative to the other workers can drop a healthy
/// worker that the OS merely descheduled, which changes a seeded run's numbers.
const DEFAULT_STRAGGLER_FACTOR: f64 = 0.0;
/// The smallest `--outlier-factor`: honest updates of one round differ by up
/// to about 2× in norm, so a lower cut would leave honest workers out.
const MIN_OUTLIER_FACTOR: f64 = 2.0;

/// Outer step settings for `--outer-optimizer sgd|nesterov`. DiLoCo's lr 0.7
/// and momentum 0.9 assume hundreds of local steps per round; at K = 16 with
/// local momentum 0.9, outer momentum 0.9 diverged with 2 workers, 0.5 did
/// not. Over 3 seeds (docs/tuning.md), lr 0.9 beat 0.7 at 8 and 16 workers and 1.1
/// at 16 (at 8, 1.1 ended higher but reached 98% an epoch later), and
/// momentum 0.5 beat 0.6 and 0.7.
const DEFAULT_OUTER_LR: f32 = 0.9;
const DEFAULT_OUTER_MOMENTUM: f32 = 0.5;

/// From this many workers on, the default outer step is Nesterov rather than
/// the plain average. Measured over 3 seeds at K = 16 (docs/tuning.md): with 8
/// workers it reaches 98% an epoch sooner (5 vs 6) and ends higher (98.31% vs
/// 98.15%); with 1 to 4 it is no better and a little worse alone.
const NESTEROV_FROM_WORKERS: usize = 8;

/// The outer step a cluster of `workers` gets unless told otherwise.
fn default_outer_rule(workers: usize) -> OuterRule {
    if workers >= NESTEROV_FROM_WORKERS { OuterRule::Nesterov } else { OuterRule::Avg }
}

/// The most minibatches a round covers across the whole cluster: the default
/// sync interval is `--sync-every 16` until N workers would exceed this
/// (N > 8), then `MINIBATCHES_PER_ROUND / N`. Each round is one step of the
/// outer optimiser, and a larger cluster at a fixed K takes fewer of them per
/// epoch (MNIST at batch 32: 14.6 rounds an epoch with 8 workers, 5.9 with 20).
/// Measured over 5 seeds (docs/tuning.md): at 20 workers K = 16 reached 98% on only 3
/// of 5 and ended at 97.99%, K = 6 on all by epoch 7, ending at 98.17%, in
/// about the same time; at 16 workers K = 8 ends at 98.23% against 98.17%;
/// up to 12 the interval makes no difference beyond the seeds' spread. K = 4
/// ends a little higher still but moves twice the bytes and took longer.
const MINIBATCHES_PER_ROUND: usize = 128;
const DEFAULT_SYNC_EVERY: usize = 16;

/// The sync interval a cluster of `workers` gets unless told otherwise.
fn default_sync_every(workers: usize) -> usize {
    (MINIBATCHES_PER_ROUND / workers.max(1)).clamp(1, DEFAULT_SYNC_EVERY)
}

/// `--align activations` compares units on this many training images: enough
/// for stable correlations of a few hundred units, a few ms of forward passes.
const DEFAULT_ALIGN_IMAGES: usize = 1000;

/// How long a run may stay paused for lack of workers before it gives up.
/// Local workers `--spawn-workers` may start: each is a process holding the
/// whole training set, so more is a typo, not a cluster.
const MAX_SPAWN_WORKERS: usize = 256;

const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(300);

/// Pending Joins and open sessions allowed by default: a 20-worker run has
/// 20 of each, and as many again while all of them reconnect at once, with
/// room to spare; a larger run gets twice its `--workers`. Each session may
/// hold about one model copy queued for a worker that does not read.
const DEFAULT_MAX_CLIENTS: usize = 64;

/// The largest `--max-pending-joins` or `--max-sessions`: more is surely a
/// typo, and would no longer bound the coordinator's memory.
const MOST_CLIENTS: usize = 100_000;

/// A worker attaches within a second or two of its Join, once it holds the
/// training set (the deadline counts from the end of a download).
const DEFAULT_ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest `--round-timeout` or `--max-wait`: more is surely a typo, and
/// deadlines computed from it must not overflow the clock.
const LONGEST_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);

/// The largest `--straggler-factor`: a grace of 1000× the quorum's time is
/// already no cut-off at all.
const MAX_STRAGGLER_FACTOR: f64 = 1000.0;

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

    /// Give up (exit non-zero) after training was paused this long for lack of workers [default: 5m].
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
    pub outer: OuterOptimizer,
    /// The settings `outer` was made from (recorded in config.toml).
    pub outer_settings: (OuterRule, f32, f32),
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
    /// `--metrics-bind`: where `/metrics` is served, if anywhere.
    pub metrics_bind: Option<SocketAddr>,
    /// How long the metrics are served after the run ends.
    pub metrics_linger: Duration,
    /// `--end-grace`: how long a completed run waits to tell the workers that missed its end.
    pub end_grace: Duration,
    pub token: Option<Token>,
    pub token_file: Option<PathBuf>,
    pub tls: Option<ServerTls>,
    /// Where `tls` was read from (recorded in the run's config.toml).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub insecure: bool,
    pub data_dir: PathBuf,
    /// Fetch MNIST into `data_dir` if files are missing: `--fetch`, or no `--data-dir` given.
    pub fetch: bool,
    pub verify: bool,
    pub out_dir: PathBuf,
    pub metrics_rounds: bool,
    pub dump_rounds: usize,
    pub bench_rounds: usize,
    /// Continue the run in `out_dir` from its checkpoint (`--resume`).
    pub resume: bool,
    /// Started with `--resume-existing`, as a service that is restarted: a
    /// new run may replace the epochs recorded by an earlier start that left
    /// no checkpoint, and workers are told a stop by a signal is not the end.
    pub restartable: bool,
    /// `--inject-checkpoint-fault` (tests only).
    pub checkpoint_faults: Vec<InjectedFault>,
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

    /// Applies defaults and validates. `spawn_workers` is the number of local
    /// workers the coordinator starts itself (the default for `workers`).
    /// Without `--token-file` the token comes from [`TOKEN_ENV`].
    pub fn resolve(&self, spawn_workers: usize) -> Result<CoordinatorConfig> {
        self.resolve_in(spawn_workers, std::env::var(TOKEN_ENV).ok().as_deref())
    }

    /// [`Settings::resolve`] with `env_token` standing for the value of
    /// [`TOKEN_ENV`], so that tests do not depend on the environment.
    fn resolve_in(&self, spawn_workers: usize, env_token: Option<&str>) -> Result<CoordinatorConfig> {
        let mut train = self.train.resolve()?;
        let aggregate = self.aggregate.unwrap_or_default();
        let outlier_factor = self.outlier_factor.unwrap_or(DEFAULT_OUTLIER_FACTOR);
        if outlier_factor.is_nan() || outlier_factor < MIN_OUTLIER_FACTOR {
            return Err(Error::Config(format!(
                "invalid --outlier-factor: must be at least {MIN_OUTLIER_FACTOR} (honest updates differ by up to \
                 about 2×; inf turns the screen off), got {outlier_factor}"
            )));
        }
        if self.drop_outliers && outlier_factor == f64::INFINITY {
            return Err(Error::Config(
                "--drop-outliers with --outlier-factor inf would leave nothing out: drop one of them".into(),
            ));
        }
        if self.drop_outliers && aggregate == Aggregate::NormClip {
            return Err(Error::Config(
                "--drop-outliers is for --aggregate mean: norm-clip streams each contribution into its sum and \
                 bounds it instead of leaving it out"
                    .into(),
            ));
        }
        if spawn_workers > 0 && (self.tls_cert.is_some() || self.tls_client_ca.is_some()) {
            return Err(Error::Config(
                "--spawn-workers starts its workers on this machine over plain loopback; TLS is for workers \
                 elsewhere: drop the --tls-* flags, or start the workers with `lazyavg worker`"
                    .into(),
            ));
        }
        // The local workers of --spawn-workers are told the port: a free one
        // lets two one-machine runs (or tests) run side by side.
        let default_port = if spawn_workers > 0 { 0 } else { DEFAULT_PORT };
        let bind = self.bind.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)));
        let token = Token::load(self.token_file.as_deref(), env_token).map_err(Error::Config)?;
        let tls = ServerTls::load(self.tls_cert.as_deref(), self.tls_key.as_deref(), self.tls_client_ca.as_deref())
            .map_err(Error::Config)?;
        if !bind.ip().is_loopback() && token.is_none() && tls.is_none() && !self.insecure {
            return Err(Error::Config(format!(
                "--bind {bind} would let anyone who can reach it join the run: give --token-file (or {TOKEN_ENV}) \
                 or --tls-cert/--tls-key, or --insecure on a network you trust"
            )));
        }
        if let Some(metrics) = self.metrics_bind
            && metrics.port() != 0
            && metrics.port() == bind.port()
            && (metrics.ip() == bind.ip() || metrics.ip().is_unspecified() || bind.ip().is_unspecified())
        {
            return Err(Error::Config(format!(
                "--metrics-bind {metrics} is the gRPC address (--bind {bind}): give it another port"
            )));
        }
        let workers = self.workers.unwrap_or(if spawn_workers > 0 { spawn_workers } else { 2 });
        let positive = |value: usize, flag: &str| {
            if value == 0 { Err(Error::Config(format!("invalid {flag}: must be at least 1"))) } else { Ok(value) }
        };
        let workers = positive(workers, "--workers")?;
        if spawn_workers > MAX_SPAWN_WORKERS {
            return Err(Error::Config(format!(
                "invalid --spawn-workers: at most {MAX_SPAWN_WORKERS} local workers, got {spawn_workers}"
            )));
        }
        let min_workers = positive(self.min_workers.unwrap_or(1), "--min-workers")?;
        if min_workers > workers {
            return Err(Error::Config(format!(
                "invalid --min-workers: {min_workers} is more than the {workers} workers (--workers) the run waits for"
            )));
        }
        let sync_every = self.sync_every.unwrap_or_else(|| SyncEvery::Minibatches(default_sync_every(workers)));
        if let SyncEvery::Minibatches(k) = sync_every {
            positive(k, "--sync-every")?;
            // Far above any dataset, and safe to multiply by any number of workers.
            if k.checked_mul(train.batch_size).is_none_or(|samples| samples > EPOCH_SAMPLES) {
                return Err(Error::Config(format!(
                    "invalid --sync-every: {k} minibatches of {} samples is more than {EPOCH_SAMPLES} samples a round",
                    train.batch_size,
                )));
            }
        }
        let align = self.align.unwrap_or_default();
        if align != AlignMethod::None && self.overlap {
            // Under --overlap a worker trains on past the weights it sent, in
            // its own unit order, and adds that training to the average as a
            // correction: permuting the contribution would mix two orders.
            return Err(Error::Config(format!(
                "--align {align} cannot be combined with --overlap: a worker trains on in its own unit order \
                 while its contribution is matched; drop one of them"
            )));
        }
        let align_images = positive(self.align_images.unwrap_or(DEFAULT_ALIGN_IMAGES), "--align-images")?;
        let limits = self.limits(workers)?;
        let outer_settings = (
            self.outer_optimizer.unwrap_or_else(|| default_outer_rule(workers)),
            self.outer_lr.unwrap_or(DEFAULT_OUTER_LR),
            self.outer_momentum.unwrap_or(DEFAULT_OUTER_MOMENTUM),
        );
        let lr_scaling = self.lr_scaling.unwrap_or_default();
        train.lr_scale = lr_scaling.factor(workers);
        Ok(CoordinatorConfig {
            train,
            model: self.train.model.clone(),
            lr_scaling,
            workers,
            sync_every,
            epochs: match self.epochs.unwrap_or(10) {
                // The protocol carries the epoch count in 32 bits.
                e if (1..=u32::MAX as usize).contains(&e) => e,
                e => return Err(Error::Config(format!("invalid --epochs: must be 1 to {}, got {e}", u32::MAX))),
            },
            round_timeout: match within_longest_wait(
                self.round_timeout.unwrap_or(DEFAULT_ROUND_TIMEOUT),
                "--round-timeout",
            )? {
                t if t.is_zero() => return Err(Error::Config("invalid --round-timeout: must be above 0".into())),
                t => t,
            },
            straggler_factor: match self.straggler_factor.unwrap_or(DEFAULT_STRAGGLER_FACTOR) {
                f if f == 0.0 || (1.0..=MAX_STRAGGLER_FACTOR).contains(&f) => f,
                f => {
                    return Err(Error::Config(format!(
                        "invalid --straggler-factor: must be 0 or 1 to {MAX_STRAGGLER_FACTOR}, got {f}"
                    )));
                }
            },
            overlap: self.overlap,
            outer: OuterOptimizer::new(outer_settings.0, outer_settings.1, outer_settings.2)?,
            outer_settings,
            aggregate,
            drop_outliers: self.drop_outliers || aggregate.leaves_out_outliers(),
            outlier_factor,
            align,
            align_images,
            init: self.init.unwrap_or_default(),
            min_workers,
            max_wait: within_longest_wait(self.max_wait.unwrap_or(DEFAULT_MAX_WAIT), "--max-wait")?,
            limits,
            bind,
            metrics_bind: self.metrics_bind,
            metrics_linger: within_longest_wait(
                self.metrics_linger.unwrap_or(DEFAULT_METRICS_LINGER),
                "--metrics-linger",
            )?,
            end_grace: within_longest_wait(self.end_grace.unwrap_or(DEFAULT_END_GRACE), "--end-grace")?,
            token,
            token_file: self.token_file.clone(),
            tls,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_client_ca: self.tls_client_ca.clone(),
            insecure: self.insecure,
            data_dir: self.data_dir.clone().unwrap_or_else(|| PathBuf::from("data/mnist")),
            fetch: self.fetch || self.data_dir.is_none(),
            verify: self.verify,
            out_dir: self.out.clone().unwrap_or_else(|| timestamped_run_dir("")),
            metrics_rounds: self.metrics_rounds,
            dump_rounds: self.dump_rounds.unwrap_or(0),
            bench_rounds: self.bench_rounds.unwrap_or(0),
            resume: false,
            restartable: false,
            checkpoint_faults: Vec::new(),
        })
    }
}

impl Settings {
    /// The bounds on what the service keeps for a run of `workers`.
    fn limits(&self, workers: usize) -> Result<Limits> {
        let default = DEFAULT_MAX_CLIENTS.max(workers.saturating_mul(2));
        let bounded = |value: Option<usize>, least: usize, flag: &str| match value.unwrap_or(default) {
            n if (least..=MOST_CLIENTS).contains(&n) => Ok(n),
            n => Err(Error::Config(format!("invalid {flag}: must be {least} to {MOST_CLIENTS}, got {n}"))),
        };
        let attach_timeout =
            within_longest_wait(self.attach_timeout.unwrap_or(DEFAULT_ATTACH_TIMEOUT), "--attach-timeout")?;
        if attach_timeout.is_zero() {
            return Err(Error::Config("invalid --attach-timeout: must be above 0".into()));
        }
        Ok(Limits {
            max_pending_joins: bounded(self.max_pending_joins, 1, "--max-pending-joins")?,
            // Every worker of the run holds a session.
            max_sessions: bounded(self.max_sessions, workers, "--max-sessions (at least --workers)")?,
            attach_timeout,
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
            round_timeout: Some(self.round_timeout),
            straggler_factor: Some(self.straggler_factor),
            overlap: self.overlap,
            outer_optimizer: Some(self.outer_settings.0),
            outer_lr: Some(self.outer_settings.1),
            outer_momentum: Some(self.outer_settings.2),
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
            out: Some(self.out_dir.clone()),
            metrics_rounds: self.metrics_rounds,
            dump_rounds: (self.dump_rounds > 0).then_some(self.dump_rounds),
            bench_rounds: (self.bench_rounds > 0).then_some(self.bench_rounds),
        }
    }

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

/// `wait`, unless it is longer than [`LONGEST_WAIT`].
fn within_longest_wait(wait: Duration, flag: &str) -> Result<Duration> {
    if wait > LONGEST_WAIT {
        let longest = humantime::format_duration(LONGEST_WAIT);
        return Err(Error::Config(format!(
            "invalid {flag}: must be at most {longest}, got {}",
            humantime::format_duration(wait)
        )));
    }
    Ok(wait)
}

/// `runs/<prefix><UTC timestamp>`, e.g. `runs/2026-11-28T10-15-00Z`: where
/// a run's files go unless told otherwise. A second run started in the same
/// second gets `-2` (then `-3`, …) rather than the first one's directory.
pub fn timestamped_run_dir(prefix: &str) -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "-");
    let base = PathBuf::from("runs").join(format!("{prefix}{stamp}"));
    let (mut dir, mut n) = (base.clone(), 1);
    while dir.exists() {
        n += 1;
        dir = base.with_file_name(format!("{prefix}{stamp}-{n}"));
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let config = file.overlay(&flags).unwrap().resolve_in(3, None).unwrap();
        assert_eq!((config.epochs, config.train.lr, config.workers), (5, 0.2, 3));
        assert_eq!(config.sync_every, SyncEvery::Minibatches(16));
        assert_eq!(config.model.hidden, Some(vec![64, 32]));
        assert!(config.verify);
        assert_eq!(config.round_timeout, Duration::from_secs(2));
        assert!(
            config.overlap && !Settings::default().resolve_in(0, None).unwrap().overlap,
            "--overlap is off by default"
        );
        // The recorded settings reproduce the configuration.
        assert_eq!(config.to_settings().resolve_in(0, None).unwrap(), config);
    }

    #[test]
    fn a_model_table_is_read_from_a_file_and_a_model_flag_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "epochs = 2\n[model]\nlayers = [\"dense 30\", \"relu\", \"dense 10\"]\nclasses = 10\n")
            .unwrap();
        let file = Settings::from_file(&path).unwrap();
        let mnist = lazyavg_common::spec::InputShape { channels: 1, height: 28, width: 28 };
        let config = file.clone().overlay(&Settings::default()).unwrap().resolve_in(1, None).unwrap();
        assert_eq!(config.model.resolve(mnist, 10).unwrap().to_string(), "784-30-10");
        let hidden = ModelSettings { hidden: Some(vec![8]), ..ModelSettings::default() };
        let flags =
            Settings { train: TrainSettings { model: hidden, ..TrainSettings::default() }, ..Settings::default() };
        let config = file.overlay(&flags).unwrap().resolve_in(1, None).unwrap();
        assert_eq!(config.model.resolve(mnist, 10).unwrap().to_string(), "784-8-10");
    }

    #[test]
    fn a_named_model_in_a_file_brings_its_defaults_and_flags_override_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "model = \"lenet5\"\n").unwrap();
        let file = Settings::from_file(&path).unwrap();
        let config = file.clone().overlay(&Settings::default()).unwrap().resolve_in(2, None).unwrap();
        assert_eq!((config.train.lr, config.train.peak_lr()), (0.025, 0.025 * 2f32.sqrt()));
        assert_eq!(config.to_settings().resolve_in(0, None).unwrap().train.lr, 0.025, "a run records its rate");
        let flags =
            Settings { train: TrainSettings { lr: Some(0.01), ..TrainSettings::default() }, ..Settings::default() };
        assert_eq!(file.overlay(&flags).unwrap().resolve_in(2, None).unwrap().train.lr, 0.01);
        assert_eq!(Settings::default().resolve_in(2, None).unwrap().train.lr, 0.05, "the MLP's");
    }

    #[test]
    fn the_cluster_size_sets_the_learning_rate_scale_and_the_outer_step() {
        let resolve = |settings: Settings, n: usize| settings.resolve_in(n, None).unwrap();
        let two = resolve(Settings::default(), 2);
        assert_eq!((two.train.lr_scale, two.outer_settings.0), (2f32.sqrt(), OuterRule::Avg));
        let eight = resolve(Settings::default(), 8);
        assert_eq!((eight.train.peak_lr(), eight.outer_settings.0), (0.05 * 8f32.sqrt(), OuterRule::Nesterov));
        let chosen = Settings {
            lr_scaling: Some(LrScaling::None),
            outer_optimizer: Some(OuterRule::Avg),
            ..Settings::default()
        };
        let eight = resolve(chosen, 8);
        assert_eq!((eight.train.lr_scale, eight.outer_settings.0), (1.0, OuterRule::Avg));
        let again = eight.to_settings().resolve_in(0, None).unwrap();
        assert_eq!((again.train, again.outer_settings), (eight.train, eight.outer_settings));
    }

    #[test]
    fn rounds_come_more_often_beyond_eight_workers_unless_told() {
        let sync_every = |settings: Settings, n: usize| settings.resolve_in(n, None).unwrap().sync_every.to_string();
        let interval: Vec<String> = [1, 2, 8, 9, 12, 16, 20, 200].map(|n| sync_every(Settings::default(), n)).into();
        assert_eq!(interval, [16, 16, 16, 14, 10, 8, 6, 1].map(|k: usize| k.to_string()));
        assert_eq!(
            sync_every(Settings { sync_every: Some(SyncEvery::Minibatches(16)), ..Settings::default() }, 16),
            "16"
        );
        let sixteen = Settings::default().resolve_in(16, None).unwrap();
        assert_eq!(
            sixteen.to_settings().resolve_in(0, None).unwrap().sync_every,
            SyncEvery::Minibatches(8),
            "a resumed run keeps its interval"
        );
    }

    #[test]
    fn an_epoch_interval_is_one_round_per_shard_and_is_recorded_as_a_word() {
        let config =
            Settings { sync_every: Some(SyncEvery::Epoch), ..Settings::default() }.resolve_in(2, None).unwrap();
        assert!(config.samples_per_round() >= 60_000, "more than any shard");
        let settings = config.to_settings();
        assert_eq!(settings.resolve_in(0, None).unwrap().sync_every, SyncEvery::Epoch);
        assert!(toml::to_string(&settings).unwrap().contains("sync_every = \"epoch\""));
        assert_eq!((config.align, config.init), (AlignMethod::None, Init::Shared), "both off by default");
    }

    #[test]
    fn metrics_are_off_by_default_and_never_on_the_grpc_port() {
        assert_eq!(Settings::default().resolve(0).unwrap().metrics_bind, None);
        let addr = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let with = |bind: &str, metrics: &str| Settings {
            bind: addr(bind),
            metrics_bind: addr(metrics),
            ..Settings::default()
        };
        let config = with("127.0.0.1:7070", "127.0.0.1:9091").resolve(0).unwrap();
        assert_eq!(config.metrics_bind, addr("127.0.0.1:9091"));
        assert_eq!(config.to_settings().resolve(0).unwrap().metrics_bind, config.metrics_bind, "kept in config.toml");
        assert!(with("127.0.0.1:0", "127.0.0.1:0").resolve(0).is_ok(), "both chosen by the OS");
        for (bind, metrics) in [("127.0.0.1:7070", "127.0.0.1:7070"), ("127.0.0.1:7070", "0.0.0.0:7070")] {
            let err = with(bind, metrics).resolve(0).unwrap_err().to_string();
            assert!(err.contains("--metrics-bind") && err.contains("another port"), "{err}");
        }
    }

    #[test]
    fn the_shipped_systemd_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/coordinator.toml");
        let settings = Settings::from_file(&path).unwrap();
        assert!(settings.resolve_in(0, None).unwrap_err().to_string().contains("--token-file"));
        // The unit passes the token file (a systemd credential); stand in one of our own.
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
        let from_env = settings.resolve_in(0, Some("0123456789abcdef0123")).unwrap();
        assert!(from_env.token.is_some(), "{TOKEN_ENV} stands in for the file");
        let short = settings.resolve_in(0, Some("short")).unwrap_err().to_string();
        assert!(short.contains(TOKEN_ENV), "{short}");
        let config = Settings { token_file: Some(token), ..settings }.resolve_in(0, None).unwrap();
        assert_eq!(config.bind.port(), DEFAULT_PORT);
        assert!(config.token.is_some());
    }

    #[test]
    fn unknown_keys_and_nonsense_values_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "lr = 0.1\nsync_evry = 4\n").unwrap();
        let err = Settings::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("unknown key `sync_evry`"), "{err}");
        let bad = |s: Settings| s.resolve_in(0, None).unwrap_err().to_string();
        assert!(
            bad(Settings { sync_every: Some(SyncEvery::Minibatches(0)), ..Settings::default() })
                .contains("--sync-every")
        );
        assert!(bad(Settings { workers: Some(0), ..Settings::default() }).contains("--workers"));
        let tls = Settings { tls_cert: Some("server.pem".into()), ..Settings::default() };
        assert!(tls.resolve_in(2, None).unwrap_err().to_string().contains("--spawn-workers"));
        let year = Duration::from_secs(365 * 24 * 3600);
        assert!(bad(Settings { round_timeout: Some(year), ..Settings::default() }).contains("--round-timeout"));
        assert!(bad(Settings { max_wait: Some(year), ..Settings::default() }).contains("--max-wait"));
        assert!(bad(Settings { straggler_factor: Some(1e300), ..Settings::default() }).contains("--straggler-factor"));
        assert!(bad(Settings { epochs: Some(1 << 40), ..Settings::default() }).contains("--epochs"));
        assert!(
            bad(Settings { sync_every: Some(SyncEvery::Minibatches(1 << 62)), ..Settings::default() })
                .contains("--sync-every")
        );
        assert!(
            bad(Settings { sync_every: Some(SyncEvery::Minibatches(1 << 28)), ..Settings::default() })
                .contains("--sync-every")
        );
        let both = Settings { align: Some(AlignMethod::Weights), overlap: true, ..Settings::default() };
        assert!(bad(both).contains("--align weights cannot be combined with --overlap"));
        assert!(bad(Settings { align_images: Some(0), ..Settings::default() }).contains("--align-images"));
        let min = Settings { workers: Some(1), min_workers: Some(3), ..Settings::default() };
        assert!(bad(min).contains("--min-workers"));
        assert!(Settings::default().resolve_in(100_000, None).unwrap_err().to_string().contains("--spawn-workers"));
        let lr =
            Settings { train: TrainSettings { lr: Some(-1.0), ..TrainSettings::default() }, ..Settings::default() };
        assert!(bad(lr).contains("--lr"));
        assert!(bad(Settings { max_pending_joins: Some(0), ..Settings::default() }).contains("--max-pending-joins"));
        let few = Settings { workers: Some(20), max_sessions: Some(19), ..Settings::default() };
        assert!(bad(few).contains("--max-sessions (at least --workers): must be 20 to"));
        let never = Settings { attach_timeout: Some(Duration::ZERO), ..Settings::default() };
        assert!(bad(never).contains("--attach-timeout"));
    }

    #[test]
    fn client_limits_fit_twenty_workers_and_grow_with_larger_runs() {
        let limits = |workers: usize| Settings::default().resolve_in(workers, None).unwrap().limits;
        let twenty = limits(20);
        assert_eq!((twenty.max_pending_joins, twenty.max_sessions), (64, 64));
        assert_eq!(twenty.attach_timeout, Duration::from_secs(60));
        assert_eq!(limits(100).max_sessions, 200);
        let chosen =
            Settings { max_sessions: Some(5), attach_timeout: Some(Duration::from_secs(2)), ..Settings::default() };
        let config = chosen.resolve_in(2, None).unwrap();
        assert_eq!((config.limits.max_sessions, config.limits.attach_timeout), (5, Duration::from_secs(2)));
        assert_eq!(config.to_settings().resolve_in(0, None).unwrap().limits, config.limits, "kept in config.toml");
    }
}
