//! The lazyavg coordinator: it owns the run. Workers dial in; every epoch it
//! deals out a fresh split of the training set, every K minibatches it pulls
//! the workers' weights, averages them and pushes the average back, and after
//! every epoch it evaluates the average on the test set.
//!
//! # Layout
//! - [`config`]: flags and config file, merged and validated.
//! - [`schedule`]: the epoch's permutation and shards (pure).
//! - [`round`]: one averaging round as a state machine (pure).
//! - [`aggregate`]: the rules that combine a round's contributions, one unit each.
//! - [`screen`]: each contribution's update norm against the median: who is far from the others.
//! - [`sync_every`]: the sync interval, K minibatches or an epoch.
//! - [`init`]: shared or independent starting weights (`--init`).
//! - [`registry`]: joined workers and their sessions (pure).
//! - [`service`]: the gRPC handlers, turning sessions into events.
//! - [`driver`]: the training loop that consumes those events.
//! - [`push`]: weights for a session that has not answered yet, in slices
//!   small enough that a stalled one holds little of its own.
//! - [`data`]: loading (or fetching) the data, packing the training set.
//! - [`checkpoint`]: where a run stands, for `--resume`.
//! - [`run_dir`]: the run's files, and never writing over an earlier run's.
//! - [`observe`]: the run's events, and the observer seam every output hangs on.
//! - [`metrics`], [`dump`], [`progress`], [`observe::log`], [`observe::exporter`],
//!   [`observe::health`]: the outputs — what the run writes, shows and serves.
//! - [`spawn`]: local workers for one-machine runs.
//! - [`ending`]: the run's end told to the workers that missed its Stop (`--end-grace`).

pub mod aggregate;
pub mod checkpoint;
pub mod command;
pub mod config;
pub mod data;
pub mod driver;
pub mod dump;
pub mod edge;
pub mod ending;
pub mod epoch;
pub mod error;
pub mod init;
pub mod metrics;
pub mod observe;
pub mod progress;
pub mod push;
pub mod registry;
pub mod round;
pub mod run_dir;
pub mod schedule;
pub mod screen;
pub mod service;
pub mod spawn;
pub mod sync_every;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lazyavg_common::config::{ModelSettings, RunSpec};
use lazyavg_common::matching::AlignMethod;
use lazyavg_common::model_file;
use lazyavg_common::telemetry::error_chain;
use lazyavg_proto::auth::RequireToken;
use lazyavg_proto::pb;
use lazyavg_proto::pb::coordinator_server::CoordinatorServer;
use lazyavg_proto::scrape;
use lazyavg_proto::transport::{
    CONNECTION_WINDOW, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_FRAME, MAX_MESSAGE_BYTES, STREAM_WINDOW,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::checkpoint::Checkpoint;
pub use crate::config::{CoordinatorConfig, Settings};
pub use crate::driver::{RunSummary, Shutdown};
use crate::ending::RunEnd;
pub use crate::error::{Error, Result};
use crate::observe::board::StatusBoard;
use crate::observe::exporter::Exporter;
use crate::observe::health::Health;
use crate::observe::log::REFUSAL_LOG_INTERVAL;
use crate::observe::{Observer, Observers};
use crate::service::{CoordinatorService, Shared};

/// Runs a whole training run on an already bound `listener` (tests bind port
/// 0) until it completes or `shutdown` resolves. A new run (not `resume`)
/// refuses an `out_dir` that holds an earlier run's results. `serving`, if
/// given, is told once the run's data and checks have passed and workers can
/// join: `--spawn-workers` starts its workers then, so that a run refused by
/// its own checks fails before any worker starts.
pub async fn run(
    mut config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: Shutdown,
    serving: Option<oneshot::Sender<()>>,
) -> Result<RunSummary> {
    let started = Instant::now();
    if !config.resume {
        run_dir::ensure_no_results(&config.out_dir, config.restartable)?;
    }
    let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
    let exporter = match config.metrics_bind {
        Some(bind) => Some(serve_metrics(bind, metrics_stopped).await?),
        None => None,
    };
    let data = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || data::prepare(&config)).await.expect("data loading does not panic")?
    };
    let shard = data.n_train / config.workers;
    let which = format!("a worker's shard ({} training images / {} workers)", data.n_train, config.workers);
    config.train.check_batch_fits(shard, &which)?;
    let model = config.model.resolve(data.input, data.label_count)?;
    // config.toml records the model in full, not the flags that chose it.
    config.model = ModelSettings::recorded(&model);
    let spec = RunSpec {
        train: config.train.clone(),
        model: model.clone(),
        epochs: config.epochs,
        align: config.align,
        align_images: config.align_images,
    };
    let mlp = model.build()?;
    if config.align == AlignMethod::Activations {
        mlp.check_dense_only("--align activations")?;
    }
    // The checkpoint first: a run that cannot resume leaves its directory as it was.
    let start = if config.resume {
        let out_dir = &config.out_dir;
        let checkpoint = checkpoint::load(out_dir, mlp.spec())?;
        if let Some(&bad) = checkpoint.remaining.iter().find(|&&i| i as usize >= data.n_train) {
            return Err(Error::Config(format!(
                "{}: checkpoint lists image {bad} but the training set has {}",
                out_dir.display(),
                data.n_train
            )));
        }
        let (epoch, remaining) = checkpoint.next_epoch();
        let digest = lazyavg_common::params::digest(&checkpoint.params);
        if epoch > config.epochs as u64 {
            info!(epochs = checkpoint.epoch, digest, "the run had trained every epoch; it ends again without workers");
        } else {
            let remaining = remaining.map_or(data.n_train, <[u32]>::len);
            info!(epoch, remaining, digest, "resuming from checkpoint");
        }
        checkpoint
    } else {
        let params = mlp.init(config.train.seed);
        Checkpoint { epoch: 0, remaining: Vec::new(), round: 0, params, outer_velocity: Vec::new() }
    };
    let out_dir = run_dir::prepare(&config)?;

    let (events_tx, events) = mpsc::channel(1024);
    let board = StatusBoard::default();
    let registry = registry::Registry::new(config.limits, data.offer.blob.len() as u64);
    let shared = Arc::new(Shared {
        run_config: pb::RunConfig::from(&spec),
        dataset: data.offer,
        registry: Mutex::new(registry),
        events: events_tx.clone(),
        outbox_capacity: outbox_capacity(mlp.len()),
        attach_timeout: config.limits.attach_timeout,
        status: board.view(),
        refusals: Mutex::default(),
        end: Default::default(),
    });
    let refusals_flusher = tokio::spawn(flush_refusals(Arc::clone(&shared)));
    let service = CoordinatorServer::new(CoordinatorService::new(Arc::clone(&shared)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let service = InterceptedService::new(service, RequireToken(config.token.clone()));
    if !config.bind.ip().is_loopback() && config.token.is_none() && config.tls.is_none() {
        warn!(bind = %config.bind, "--insecure: no token is required; anyone who can reach this port can join the run");
    }
    if config.aggregate != round::Aggregate::Mean && config.workers < 3 {
        warn!(
            workers = config.workers,
            "--aggregate: a robust rule needs an honest majority, 3 workers or more; with fewer, no rule can tell \
             an honest worker from a hostile one"
        );
    }
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let addr = listener.local_addr().map_err(|e| Error::io("listener", e))?;
    // From here on `bind` is where workers connect: for port 0, the port the
    // OS chose. config.toml keeps the port as given, so a run repeated from
    // it (or a --spawn-workers run resumed) takes a free port again.
    config.bind = addr;
    // Without TCP_NODELAY a small message waits for the peer's delayed ACK (~40 ms):
    // that stalled every round behind a weights transfer.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(KEEPALIVE_INTERVAL));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.config())?;
        info!(mutual = tls.requires_client_certificates(), "TLS on");
    }
    let mut server = tokio::spawn(
        builder
            .max_frame_size(Some(MAX_FRAME))
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(service)
            .add_service(health_service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = server_stopped.await;
            }),
    );
    // SERVING before "listening" is logged: whoever waits for that line may probe at once.
    let health = Health::serving(health_reporter).await;
    run_dir::write_address(&out_dir, addr, config.tls.is_some())?;
    info!(%addr, architecture = %mlp.spec(), parameters = mlp.len(), out = %out_dir.display(), "listening");
    if let Some(serving) = serving {
        let _ = serving.send(());
    }

    let metrics_linger = config.metrics_bind.map(|_| config.metrics_linger);
    let end_grace = config.end_grace;
    let mut outputs: Vec<Box<dyn Observer>> = vec![
        Box::new(observe::log::Log),
        Box::new(progress::EpochProgress::default()),
        Box::new(metrics::MetricsFile::open(&out_dir, config.resume.then_some(&start), config.metrics_rounds)?),
        Box::new(health),
        Box::new(board),
    ];
    if config.dump_rounds > 0 {
        outputs.push(Box::new(dump::RoundDump::new(out_dir.join("rounds"), config.dump_rounds)?));
    }
    if let Some(exporter) = exporter {
        outputs.push(Box::new(exporter));
    }
    let driver = driver::Driver::new(
        config,
        mlp.clone(),
        start,
        data.test,
        data.n_train,
        (events_tx, events),
        shutdown,
        Observers::new(outputs),
    );
    let mut server_ended = false;
    let result = tokio::select! {
        result = driver.run() => result,
        // The server ends only when told to, below: before that it failed,
        // and the workers cannot reach the run any more.
        served = &mut server => {
            server_ended = true;
            Err(match served {
                Ok(Err(err)) => Error::Serve(err),
                Ok(Ok(())) => Error::ServerStopped("it returned".into()),
                Err(join) => Error::ServerStopped(join.to_string()),
            })
        }
    };

    if let Ok(summary) = &result {
        // From the end of training, not of the model's save: a Join in
        // between would join a run that has nothing left to train.
        let pending = shared.registry().pending_names(Instant::now());
        shared.end.complete(summary.untold.iter().cloned().chain(pending));
    }
    let model_path = out_dir.join(run_dir::MODEL_FILE);
    let result = result.and_then(|summary| {
        model_file::save(&model_path, mlp.spec(), &summary.params)?;
        info!(
            accuracy = summary.last.accuracy,
            test_loss = summary.last.loss,
            epochs = summary.epochs,
            seconds = started.elapsed().as_secs_f64(),
            out = %out_dir.display(),
            "training complete"
        );
        Ok(summary)
    });
    if result.is_ok() {
        linger(&shared.end, metrics_linger, end_grace).await;
    }
    // Workers were told to stop; give their sessions a moment to close cleanly.
    let _ = stop_server.send(());
    if !server_ended && let Ok(Ok(Err(err))) = tokio::time::timeout(Duration::from_secs(2), server).await {
        warn!(error = %error_chain(&err), "the gRPC server failed while closing");
    }
    let _ = stop_metrics.send(());
    refusals_flusher.abort();
    shared.refusals().flush(std::time::Instant::now(), true);
    result
}

/// Writes the refusals counted since their kind's last log line, every
/// [`REFUSAL_LOG_INTERVAL`]: a burst that stops is then still counted.
async fn flush_refusals(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(REFUSAL_LOG_INTERVAL);
    loop {
        tick.tick().await;
        shared.refusals().flush(std::time::Instant::now(), false);
    }
}

/// Keeps the gRPC server up after a completed run, refusing Joins as
/// completed, for the longer of the metrics' linger and the end's grace
/// (which ends once every worker that missed the Stop has been told): such
/// a worker (stopped, or cut off near the end) then learns that the run is
/// over instead of finding nothing and giving up. A signal ends both.
async fn linger(end: &RunEnd, metrics_linger: Option<Duration>, end_grace: Duration) {
    let metrics_linger = metrics_linger.filter(|l| !l.is_zero());
    if let Some(linger) = metrics_linger {
        info!(seconds = linger.as_secs_f64(), "serving the final metrics (--metrics-linger)");
    }
    let untold = end.untold();
    let grace = (untold > 0).then_some(end_grace).filter(|g| !g.is_zero());
    if let Some(grace) = grace {
        info!(
            workers = untold,
            seconds = grace.as_secs_f64(),
            "telling the workers that missed the run's end that it is over (--end-grace)"
        );
    }
    let metrics = async {
        if let Some(linger) = metrics_linger {
            tokio::time::sleep(linger).await;
        }
    };
    let told = async {
        if let Some(grace) = grace {
            end.all_told_within(grace).await;
        }
    };
    tokio::select! {
        _ = futures::future::join(metrics, told) => {}
        () = interrupted() => {}
    }
    let untold = end.untold();
    if grace.is_some() && untold > 0 {
        info!(
            workers = untold,
            "workers that missed the run's end were not told; they give up after their --give-up-after"
        );
    }
}

/// SIGINT or SIGTERM: ends the linger at once.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => drop(term.recv().await),
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Binds `--metrics-bind` and serves the run's metrics there until `stop`;
/// returns the exporter that keeps them current.
async fn serve_metrics(bind: SocketAddr, stop: oneshot::Receiver<()>) -> Result<Exporter> {
    let listener = TcpListener::bind(bind).await.map_err(|source| Error::Bind { addr: bind, source })?;
    let addr = listener.local_addr().map_err(|e| Error::io("metrics listener", e))?;
    let registry = Arc::new(Mutex::new(Registry::with_prefix("lazyavg")));
    let exporter = Exporter::new(Arc::clone(&registry));
    if !addr.ip().is_loopback() {
        warn!(%addr, "metrics are served without a token or TLS to anyone who can reach this address");
    }
    info!(%addr, "serving metrics");
    tokio::spawn(async move {
        if let Err(e) = scrape::serve(listener, registry, async {
            let _ = stop.await;
        })
        .await
        {
            warn!(error = %e, "the metrics server failed; the run goes on without it");
        }
    });
    Ok(exporter)
}

/// Commands queued per worker before it counts as fallen behind: a few
/// rounds' worth of averages, however many messages the model takes.
fn outbox_capacity(parameters: usize) -> usize {
    4 * push::messages(parameters) + 64
}
