//! A run, phase by phase: [`prepare`] checks it before anything listens
//! (the data against the model, the checkpoint it resumes), then [`run`]
//! makes its directory, serves it (the gRPC server that workers join),
//! drives it (the training loop, while the server runs) and finishes it
//! (the model saved, the workers that missed the end told, the server
//! closed).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lazyavg_common::config::{ModelSettings, RunSpec};
use lazyavg_common::matching::AlignMethod;
use lazyavg_common::model::Network;
use lazyavg_common::model_file;
use lazyavg_proto::lane::Board;
use lazyavg_proto::pb;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::checkpoint::{self, Checkpoint};
use crate::config::{CoordinatorConfig, Secrets, Settings};
use crate::driver::{self, RunSummary, Shutdown};
use crate::ending::RunEnd;
use crate::error::{Error, Result};
use crate::gate::{self, Gate};
use crate::observe::board::StatusBoard;
use crate::observe::exporter::Exporter;
use crate::observe::health::Health;
use crate::observe::{self, Observer, Observers};
use crate::server::{Server, outbox_capacity, serve_metrics};
use crate::service::{Event, Shared};
use crate::{data, dump, metrics, progress, registry, round, run_dir, signal};

/// Runs a whole training run, `prepared`, on an already bound `listener`
/// (tests bind port 0) until it completes or `shutdown` resolves. A new run
/// (not `resume`) refuses an `out` that holds an earlier run's results.
/// `serving`, if given, is told once workers can join: `--spawn-workers`
/// starts its workers then.
pub async fn run(
    config: CoordinatorConfig,
    secrets: Secrets,
    prepared: Prepared,
    listener: TcpListener,
    shutdown: Shutdown,
    serving: Option<oneshot::Sender<()>>,
) -> Result<RunSummary> {
    let started = Instant::now();
    run_dir::check_out(&config)?;
    let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
    let exporter = match config.metrics_bind {
        Some(bind) => Some(serve_metrics(bind, metrics_stopped).await?),
        None => None,
    };
    // Once every port is bound: a run that cannot listen writes nothing.
    let Prepared { ready: prepared, start } = prepared;
    run_dir::prepare(&prepared.out_dir, prepared.recorded.clone())?;
    let (mut server, wiring) = serve(&config, &secrets, &prepared, listener).await?;
    if let Some(serving) = serving {
        let _ = serving.send(());
    }
    let result = drive(&config, &prepared, start, wiring, exporter, &mut server, shutdown).await;
    let result = finish(&config, &prepared, server, result, started).await;
    let _ = stop_metrics.send(());
    result
}

/// What a run readies, and checks, before it listens.
pub struct Prepared {
    ready: Ready,
    /// Where training starts: the model's initial weights, or the checkpoint resumed.
    start: Checkpoint,
}

/// What the run's phases share.
struct Ready {
    /// The run directory (made by [`run`]).
    out_dir: PathBuf,
    /// What its config.toml records.
    recorded: Settings,
    data: data::Prepared,
    /// What every worker is told to train.
    spec: RunSpec,
    mlp: Network,
}

/// Loads the data, builds the model and finds where training starts,
/// writing nothing: a run refused by its data (a shape or class count the
/// model does not take), its model or its checkpoint fails here, before
/// any socket opens, and leaves its directory as it was.
pub async fn prepare(config: &CoordinatorConfig) -> Result<Prepared> {
    let data = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || data::prepare(&config)).await.expect("data loading does not panic")?
    };
    let shard = data.n_train / config.workers;
    let which = format!("a worker's shard ({} training images / {} workers)", data.n_train, config.workers);
    config.train.check_batch_fits(shard, &which)?;
    let model = config.model.resolve(data.input, data.label_count)?;
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
    // A run without --out gets a directory of its own, named for when it starts.
    let out_dir = config.out.clone().unwrap_or_else(|| run_dir::timestamped_run_dir(""));
    let start = if config.resume {
        resume_from(&out_dir, &mlp, data.n_train, config.epochs)?
    } else {
        let params = mlp.init(config.train.seed);
        Checkpoint { epoch: 0, remaining: Vec::new(), round: 0, params, outer_velocity: Vec::new() }
    };
    let mut recorded = config.to_settings();
    // config.toml records the model in full, not the flags that chose it.
    recorded.train.model = ModelSettings::recorded(&model);
    Ok(Prepared { ready: Ready { out_dir, recorded, data, spec, mlp }, start })
}

/// The checkpoint in `out_dir`, checked against the model and the `n_train`
/// training images.
fn resume_from(out_dir: &Path, mlp: &Network, n_train: usize, epochs: usize) -> Result<Checkpoint> {
    let checkpoint = checkpoint::load(out_dir, mlp.spec())?;
    if let Some(&bad) = checkpoint.remaining.iter().find(|&&i| i as usize >= n_train) {
        return Err(Error::Config(format!(
            "{}: checkpoint lists image {bad} but the training set has {n_train}",
            out_dir.display(),
        )));
    }
    let (epoch, remaining) = checkpoint.next_epoch();
    let digest = lazyavg_common::params::digest(&checkpoint.params);
    if epoch > epochs as u64 {
        info!(epochs = checkpoint.epoch, digest, "the run had trained every epoch; it ends again without workers");
    } else {
        let remaining = remaining.map_or(n_train, <[u32]>::len);
        info!(epoch, remaining, digest, "resuming from checkpoint");
    }
    Ok(checkpoint)
}

/// What the driver takes over from [`serve`]: the service's events, the
/// outputs the service answers from, and where workers connect (for port 0,
/// the port the OS chose).
struct Wiring {
    events: mpsc::Receiver<Event>,
    lane_board: Option<Arc<Board>>,
    frontier: gate::Publisher,
    health: Health,
    board: StatusBoard,
    addr: SocketAddr,
}

/// How many events of the service (most of them weight chunks, up to 512
/// KiB each) may wait for the driver. Each holds its session's receive buffer,
/// so this bounds what the coordinator holds beyond its own buffers: at
/// 1024 it held most of a round's contributions of a 20M-parameter model
/// from 8 workers (docs/performance.md, "Where a round's time and memory
/// go"); at 64, 8 workers' chunks of that model still held 110 MB more than
/// at 16, which rounds as fast within the noise. A session whose events wait
/// stops reading its stream, and HTTP/2 flow control makes its worker wait.
const EVENT_QUEUE: usize = 16;

/// Starts the gRPC server on `listener`, and reports it SERVING: from here
/// on, workers can join.
async fn serve(
    config: &CoordinatorConfig,
    secrets: &Secrets,
    prepared: &Ready,
    listener: TcpListener,
) -> Result<(Server, Wiring)> {
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let (frontier, gate) = gate::channel();
    let board = StatusBoard::default();
    let lane_board = if config.shared_memory { make_lane_board() } else { None };
    let shared = share(config, prepared, events_tx.clone(), gate, &board, lane_board.clone());
    warn_of_risks(config, secrets);
    // config.toml keeps the port as given, so a run repeated from it (or a
    // --spawn-workers run resumed) takes a free port again.
    let addr = listener.local_addr().map_err(|e| Error::io("listener", e))?;
    let (server, health_reporter) = Server::start(listener, secrets, shared)?;
    // SERVING before "listening" is logged: whoever waits for that line may probe at once.
    let health = Health::serving(health_reporter).await;
    let out_dir = &prepared.out_dir;
    run_dir::write_address(out_dir, addr, secrets.tls.is_some())?;
    let mlp = &prepared.mlp;
    info!(%addr, architecture = %mlp.spec(), parameters = mlp.len(), out = %out_dir.display(), "listening");
    Ok((server, Wiring { events, lane_board, frontier, health, board, addr }))
}

/// The board the weights for workers with a lane go on; without it they go
/// into each lane.
fn make_lane_board() -> Option<Arc<Board>> {
    Board::create().inspect_err(|err| debug!(error = %err, "no board; weights go into each lane")).ok()
}

/// The state the service's handlers share, the driver's event channel among it.
fn share(
    config: &CoordinatorConfig,
    prepared: &Ready,
    events: mpsc::Sender<Event>,
    gate: Gate,
    board: &StatusBoard,
    lane_board: Option<Arc<Board>>,
) -> Arc<Shared> {
    let dataset = prepared.data.offer.clone();
    let registry = registry::Registry::new(config.limits, dataset.len);
    Arc::new(Shared {
        run_config: pb::RunConfig::from(&prepared.spec),
        dataset,
        registry: Mutex::new(registry),
        events,
        gate,
        outbox_capacity: outbox_capacity(prepared.mlp.len()),
        attach_timeout: config.limits.attach_timeout,
        shared_memory: config.shared_memory,
        model_bytes: 4 * prepared.mlp.len(),
        lane_board,
        status: board.view(),
        refusals: Mutex::default(),
        end: Default::default(),
    })
}

/// Warns of what the configuration allows but whoever runs it should know.
fn warn_of_risks(config: &CoordinatorConfig, secrets: &Secrets) {
    if !config.bind.ip().is_loopback() && secrets.token.is_none() && secrets.tls.is_none() {
        warn!(bind = %config.bind, "--insecure: no token is required; anyone who can reach this port can join the run");
    }
    if config.aggregate != round::Aggregate::Mean && config.workers < 3 {
        warn!(
            workers = config.workers,
            "--aggregate: a robust rule needs an honest majority, 3 workers or more; with fewer, no rule can tell \
             an honest worker from a hostile one"
        );
    }
}

/// Trains: the driver runs the run to its end, unless the server fails first.
async fn drive(
    config: &CoordinatorConfig,
    prepared: &Ready,
    start: Checkpoint,
    wiring: Wiring,
    exporter: Option<Exporter>,
    server: &mut Server,
    shutdown: Shutdown,
) -> Result<RunSummary> {
    let out_dir = &prepared.out_dir;
    let observers = outputs(config, out_dir, &start, wiring.health, wiring.board, exporter)?;
    let driver = driver::Driver::new(
        config.driver(wiring.addr, out_dir.clone()),
        prepared.mlp.clone(),
        start,
        Arc::clone(&prepared.data.test),
        prepared.data.n_train,
        wiring.events,
        wiring.lane_board,
        wiring.frontier,
        shutdown,
        observers,
    );
    tokio::select! {
        result = driver.run() => result,
        err = server.failed() => Err(err),
    }
}

/// Every output of the run, fed its events: logs, progress, its files, and
/// what the service and `/metrics` answer.
fn outputs(
    config: &CoordinatorConfig,
    out_dir: &Path,
    start: &Checkpoint,
    health: Health,
    board: StatusBoard,
    exporter: Option<Exporter>,
) -> Result<Observers> {
    let mut outputs: Vec<Box<dyn Observer>> = vec![
        Box::new(observe::log::Log),
        Box::new(progress::EpochProgress::default()),
        Box::new(metrics::MetricsFile::open(out_dir, config.resume.then_some(start), config.metrics_rounds)?),
        Box::new(health),
        Box::new(board),
    ];
    if config.dump_rounds > 0 {
        outputs.push(Box::new(dump::RoundDump::new(out_dir.join("rounds"), config.dump_rounds)?));
    }
    if let Some(exporter) = exporter {
        outputs.push(Box::new(exporter));
    }
    Ok(Observers::new(outputs))
}

/// Ends the run as the driver left it: a completed run refuses Joins from
/// then on, saves its model and lingers (see [`linger`]); then the server closes.
async fn finish(
    config: &CoordinatorConfig,
    prepared: &Ready,
    server: Server,
    result: Result<RunSummary>,
    started: Instant,
) -> Result<RunSummary> {
    if let Ok(summary) = &result {
        // From the end of training, not of the model's save: a Join in
        // between would join a run that has nothing left to train.
        let pending = server.shared.registry().pending_names(Instant::now());
        server.shared.end.complete(summary.untold.iter().cloned().chain(pending));
    }
    let out_dir = &prepared.out_dir;
    let result = result.and_then(|summary| {
        model_file::save(&out_dir.join(run_dir::MODEL_FILE), prepared.mlp.spec(), &summary.params)?;
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
        linger(&server.shared.end, config.metrics_bind.map(|_| config.metrics_linger), config.end_grace).await;
    }
    server.close().await;
    result
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
        _ = signal::interrupted() => {}
    }
    let untold = end.untold();
    if grace.is_some() && untold > 0 {
        info!(
            workers = untold,
            "workers that missed the run's end were not told; they give up after their --give-up-after"
        );
    }
}
