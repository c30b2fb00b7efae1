//! [`Settings`] → [`CoordinatorConfig`]: defaults applied and every value
//! checked before any socket opens. Pure: it reads no file, no environment
//! and no clock, so a refused setting is a unit test.

use std::net::SocketAddr;
use std::path::PathBuf;

use lazyavg_common::config::TrainConfig;
use lazyavg_common::matching::AlignMethod;
use lazyavg_common::outer::OuterSettings;

use super::defaults::*;
use super::{CoordinatorConfig, Settings, SyncEvery};
use crate::checkpoint::InjectedFault;
use crate::error::{Error, Result};
use crate::round::Aggregate;
use crate::screen::DEFAULT_OUTLIER_FACTOR;
use crate::sync_every::EPOCH_SAMPLES;

/// How this process starts the run: the command line beyond the settings,
/// none of it recorded in the run's config.toml.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Launch {
    /// `--spawn-workers`: local workers the coordinator starts itself (the
    /// default for `workers`).
    pub spawn_workers: usize,
    /// The run continues from the checkpoint in its directory.
    pub resume: bool,
    /// `--resume-existing`: started as a service that is restarted.
    pub restartable: bool,
    /// `--inject-checkpoint-fault` (tests only).
    pub checkpoint_faults: Vec<InjectedFault>,
}

impl Settings {
    /// Applies defaults and validates. The token and TLS files are read by
    /// the step after this one, [`Secrets::load`](super::Secrets::load).
    pub fn resolve(&self, launch: &Launch) -> Result<CoordinatorConfig> {
        let mut train = self.train.resolve()?;
        let (aggregate, outlier_factor) = self.screen()?;
        let bind = self.addresses(launch.spawn_workers)?;
        let (workers, min_workers) = self.cluster_size(launch.spawn_workers)?;
        let lr_scaling = self.lr_scaling.unwrap_or_default();
        train.lr_scale = lr_scaling.factor(workers);
        Ok(CoordinatorConfig {
            sync_every: self.sync_interval(workers, &train)?,
            align: self.align()?,
            align_images: positive(self.align_images.unwrap_or(DEFAULT_ALIGN_IMAGES), "--align-images")?,
            limits: self.limits(workers)?,
            outer: self.outer_step(workers)?,
            epochs: self.epochs()?,
            round_timeout: self.round_timeout()?,
            straggler_factor: self.straggler_factor()?,
            max_wait: within_longest_wait(self.max_wait.unwrap_or(DEFAULT_MAX_WAIT), "--max-wait")?,
            metrics_linger: within_longest_wait(
                self.metrics_linger.unwrap_or(DEFAULT_METRICS_LINGER),
                "--metrics-linger",
            )?,
            end_grace: within_longest_wait(self.end_grace.unwrap_or(DEFAULT_END_GRACE), "--end-grace")?,
            train,
            model: self.train.model.clone(),
            lr_scaling,
            workers,
            overlap: self.overlap,
            aggregate,
            drop_outliers: self.drop_outliers || aggregate.leaves_out_outliers(),
            outlier_factor,
            init: self.init.unwrap_or_default(),
            min_workers,
            bind,
            shared_memory: !self.no_shared_memory,
            metrics_bind: self.metrics_bind,
            token_file: self.token_file.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_client_ca: self.tls_client_ca.clone(),
            insecure: self.insecure,
            data_dir: self.data_dir.clone().unwrap_or_else(|| PathBuf::from("data/mnist")),
            fetch: self.fetch || self.data_dir.is_none(),
            verify: self.verify,
            out: self.out.clone(),
            metrics_rounds: self.metrics_rounds,
            dump_rounds: self.dump_rounds.unwrap_or(0),
            bench_rounds: self.bench_rounds.unwrap_or(0),
            resume: launch.resume,
            restartable: launch.restartable,
            checkpoint_faults: launch.checkpoint_faults.clone(),
        })
    }

    /// `--aggregate` and `--outlier-factor`, checked against `--drop-outliers`.
    fn screen(&self) -> Result<(Aggregate, f64)> {
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
        Ok((aggregate, outlier_factor))
    }

    /// `--bind` (its default), checked against `--metrics-bind` and against
    /// TLS for local workers.
    fn addresses(&self, spawn_workers: usize) -> Result<SocketAddr> {
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
        if let Some(metrics) = self.metrics_bind
            && metrics.port() != 0
            && metrics.port() == bind.port()
            && (metrics.ip() == bind.ip() || metrics.ip().is_unspecified() || bind.ip().is_unspecified())
        {
            return Err(Error::Config(format!(
                "--metrics-bind {metrics} is the gRPC address (--bind {bind}): give it another port"
            )));
        }
        Ok(bind)
    }

    /// `--workers` and `--min-workers`.
    fn cluster_size(&self, spawn_workers: usize) -> Result<(usize, usize)> {
        let workers = positive(self.workers.unwrap_or(if spawn_workers > 0 { spawn_workers } else { 2 }), "--workers")?;
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
        Ok((workers, min_workers))
    }

    /// `--sync-every`, by default smaller for a larger cluster.
    fn sync_interval(&self, workers: usize, train: &TrainConfig) -> Result<SyncEvery> {
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
        Ok(sync_every)
    }

    /// `--align`, which `--overlap` rules out.
    fn align(&self) -> Result<AlignMethod> {
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
        Ok(align)
    }

    /// `--outer-optimizer`, `--outer-lr` and `--outer-momentum`, by default
    /// Nesterov for a larger cluster.
    fn outer_step(&self, workers: usize) -> Result<OuterSettings> {
        Ok(OuterSettings::new(
            self.outer_optimizer.unwrap_or_else(|| default_outer_rule(workers)),
            self.outer_lr.unwrap_or(DEFAULT_OUTER_LR),
            self.outer_momentum.unwrap_or(DEFAULT_OUTER_MOMENTUM),
        )?)
    }

    fn epochs(&self) -> Result<usize> {
        match self.epochs.unwrap_or(10) {
            // The protocol carries the epoch count in 32 bits.
            e if (1..=u32::MAX as usize).contains(&e) => Ok(e),
            e => Err(Error::Config(format!("invalid --epochs: must be 1 to {}, got {e}", u32::MAX))),
        }
    }

    fn round_timeout(&self) -> Result<std::time::Duration> {
        match within_longest_wait(self.round_timeout.unwrap_or(DEFAULT_ROUND_TIMEOUT), "--round-timeout")? {
            t if t.is_zero() => Err(Error::Config("invalid --round-timeout: must be above 0".into())),
            t => Ok(t),
        }
    }

    fn straggler_factor(&self) -> Result<f64> {
        match self.straggler_factor.unwrap_or(DEFAULT_STRAGGLER_FACTOR) {
            f if f == 0.0 || (1.0..=MAX_STRAGGLER_FACTOR).contains(&f) => Ok(f),
            f => Err(Error::Config(format!(
                "invalid --straggler-factor: must be 0 or 1 to {MAX_STRAGGLER_FACTOR}, got {f}"
            ))),
        }
    }
}

/// `value`, unless it is 0.
fn positive(value: usize, flag: &str) -> Result<usize> {
    if value == 0 { Err(Error::Config(format!("invalid {flag}: must be at least 1"))) } else { Ok(value) }
}

#[cfg(test)]
impl Launch {
    /// A new run with `spawn_workers` local workers.
    pub(crate) fn spawning(spawn_workers: usize) -> Launch {
        Launch { spawn_workers, ..Launch::default() }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lazyavg_common::config::{LrScaling, TrainSettings};
    use lazyavg_common::outer::OuterRule;

    use super::*;

    #[test]
    fn the_cluster_size_sets_the_learning_rate_scale_and_the_outer_step() {
        let resolve = |settings: Settings, n: usize| settings.resolve(&Launch::spawning(n)).unwrap();
        let two = resolve(Settings::default(), 2);
        assert_eq!((two.train.lr_scale, two.outer.rule()), (2f32.sqrt(), OuterRule::Avg));
        let eight = resolve(Settings::default(), 8);
        assert_eq!((eight.train.peak_lr(), eight.outer.rule()), (0.05 * 8f32.sqrt(), OuterRule::Nesterov));
        let chosen = Settings {
            lr_scaling: Some(LrScaling::None),
            outer_optimizer: Some(OuterRule::Avg),
            ..Settings::default()
        };
        let eight = resolve(chosen, 8);
        assert_eq!((eight.train.lr_scale, eight.outer.rule()), (1.0, OuterRule::Avg));
        let again = eight.to_settings().resolve(&Launch::default()).unwrap();
        assert_eq!((again.train, again.outer), (eight.train, eight.outer));
    }

    #[test]
    fn rounds_come_more_often_beyond_eight_workers_unless_told() {
        let sync_every =
            |settings: Settings, n: usize| settings.resolve(&Launch::spawning(n)).unwrap().sync_every.to_string();
        let interval: Vec<String> = [1, 2, 8, 9, 12, 16, 20, 200].map(|n| sync_every(Settings::default(), n)).into();
        assert_eq!(interval, [16, 16, 16, 14, 10, 8, 6, 1].map(|k: usize| k.to_string()));
        assert_eq!(
            sync_every(Settings { sync_every: Some(SyncEvery::Minibatches(16)), ..Settings::default() }, 16),
            "16"
        );
        let sixteen = Settings::default().resolve(&Launch::spawning(16)).unwrap();
        assert_eq!(
            sixteen.to_settings().resolve(&Launch::default()).unwrap().sync_every,
            SyncEvery::Minibatches(8),
            "a resumed run keeps its interval"
        );
    }

    #[test]
    fn metrics_are_off_by_default_and_never_on_the_grpc_port() {
        assert_eq!(Settings::default().resolve(&Launch::default()).unwrap().metrics_bind, None);
        let addr = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let with = |bind: &str, metrics: &str| Settings {
            bind: addr(bind),
            metrics_bind: addr(metrics),
            ..Settings::default()
        };
        let config = with("127.0.0.1:7070", "127.0.0.1:9091").resolve(&Launch::default()).unwrap();
        assert_eq!(config.metrics_bind, addr("127.0.0.1:9091"));
        assert_eq!(
            config.to_settings().resolve(&Launch::default()).unwrap().metrics_bind,
            config.metrics_bind,
            "kept in config.toml"
        );
        assert!(with("127.0.0.1:0", "127.0.0.1:0").resolve(&Launch::default()).is_ok(), "both chosen by the OS");
        for (bind, metrics) in [("127.0.0.1:7070", "127.0.0.1:7070"), ("127.0.0.1:7070", "0.0.0.0:7070")] {
            let err = with(bind, metrics).resolve(&Launch::default()).unwrap_err().to_string();
            assert!(err.contains("--metrics-bind") && err.contains("another port"), "{err}");
        }
    }

    #[test]
    fn unknown_keys_and_nonsense_values_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "lr = 0.1\nsync_evry = 4\n").unwrap();
        let err = Settings::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("unknown key `sync_evry`"), "{err}");
        let bad = |s: Settings| s.resolve(&Launch::default()).unwrap_err().to_string();
        assert!(
            bad(Settings { sync_every: Some(SyncEvery::Minibatches(0)), ..Settings::default() })
                .contains("--sync-every")
        );
        assert!(bad(Settings { workers: Some(0), ..Settings::default() }).contains("--workers"));
        let tls = Settings { tls_cert: Some("server.pem".into()), ..Settings::default() };
        assert!(tls.resolve(&Launch::spawning(2)).unwrap_err().to_string().contains("--spawn-workers"));
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
        assert!(
            Settings::default()
                .resolve(&Launch::spawning(100_000))
                .unwrap_err()
                .to_string()
                .contains("--spawn-workers")
        );
        let lr =
            Settings { train: TrainSettings { lr: Some(-1.0), ..TrainSettings::default() }, ..Settings::default() };
        assert!(bad(lr).contains("--lr"));
        assert!(bad(Settings { max_pending_joins: Some(0), ..Settings::default() }).contains("--max-pending-joins"));
        let few = Settings { workers: Some(20), max_sessions: Some(19), ..Settings::default() };
        assert!(bad(few).contains("--max-sessions (at least --workers): must be 20 to"));
        let never = Settings { attach_timeout: Some(Duration::ZERO), ..Settings::default() };
        assert!(bad(never).contains("--attach-timeout"));
    }
}
