//! The lazyavg worker. It dials the coordinator (retrying with backoff until
//! it answers), learns the run's model and hyperparameters, downloads or
//! finds in its cache the training set, and then trains whatever range of
//! its shard the coordinator pulls, sending its weights back each round. If
//! the connection breaks it reconnects by itself and joins again.
//!
//! # Layout
//! - [`config`]: flags, validated.
//! - [`backoff`]: jittered exponential backoff between attempts.
//! - [`give_up`]: when to stop waiting for a coordinator.
//! - [`hint`]: the likely cause of a failure to reach the coordinator, for its log.
//! - [`peer`]: what answered when Join failed (a completed run, a server
//!   that is not a coordinator, or no answer).
//! - [`cache`]: the training set, downloaded once and kept on disk.
//! - [`replica`]: the model replica and its shard (synchronous).
//! - [`session`]: the command loop of one connection.
//! - [`metrics`]: `--metrics-bind`'s Prometheus metrics.

pub mod backoff;
pub mod cache;
pub mod config;
pub mod error;
pub mod give_up;
pub mod hint;
pub mod metrics;
pub mod peer;
pub mod replica;
pub mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lazyavg_common::config::RunSpec;
use lazyavg_common::dataset::Dataset;
use lazyavg_common::telemetry::error_chain;
use lazyavg_proto::auth::SendToken;
use lazyavg_proto::pb::coordinator_client::CoordinatorClient;
use lazyavg_proto::transport::{
    CONNECTION_WINDOW, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_FRAME, MAX_MESSAGE_BYTES, STREAM_WINDOW,
};
use lazyavg_proto::{PROTOCOL_VERSION, ProtoError, pb, scrape};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::backoff::Backoff;
pub use crate::config::{ConnectArgs, Connection, WorkerArgs, WorkerConfig};
pub use crate::error::{Error, Result};
use crate::metrics::WorkerMetrics;
use crate::peer::JoinFailure;

/// The coordinator's client, presenting the token on every call.
pub type Client = CoordinatorClient<InterceptedService<Channel, SendToken>>;
use crate::session::Ending;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Works for the coordinator until the run completes, a non-retryable error
/// occurs, or `shutdown` resolves (with the signal's name).
pub async fn run(config: WorkerConfig, shutdown: impl Future<Output = &'static str>) -> Result<()> {
    let metrics = WorkerMetrics::default();
    let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
    if let Some(bind) = config.metrics_bind {
        serve_metrics(bind, &metrics, metrics_stopped).await?;
    }
    let result = tokio::select! {
        result = work(&config, &metrics) => result,
        signal = shutdown => Err(Error::Interrupted(signal)),
    };
    let _ = stop_metrics.send(());
    result
}

/// Binds `--metrics-bind` and serves `metrics` there until `stop`.
async fn serve_metrics(bind: SocketAddr, metrics: &WorkerMetrics, stop: oneshot::Receiver<()>) -> Result<()> {
    let listener = TcpListener::bind(bind).await.map_err(|source| Error::MetricsBind { addr: bind, source })?;
    let addr = listener.local_addr().map_err(|source| Error::MetricsBind { addr: bind, source })?;
    let mut registry = Registry::with_prefix("lazyavg");
    metrics.register(&mut registry);
    info!(%addr, "serving metrics");
    tokio::spawn(async move {
        let stopped = async {
            let _ = stop.await;
        };
        if let Err(e) = scrape::serve(listener, Arc::new(Mutex::new(registry)), stopped).await {
            warn!(error = %e, "the metrics server failed; the worker goes on without it");
        }
    });
    Ok(())
}

async fn work(config: &WorkerConfig, metrics: &WorkerMetrics) -> Result<()> {
    let seed = u64::from(std::process::id()) ^ std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos() as u64);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), seed);
    let mut dataset = None;
    let mut joined = false;
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            metrics.reconnects.inc();
        }
        backoff.attempt_starts();
        match attempt(config, &mut backoff, &mut dataset, &mut joined, metrics).await {
            Ok(Ending::Completed) => {
                info!("training complete");
                return Ok(());
            }
            Ok(Ending::Aborted(reason)) => return Err(Error::Aborted(reason)),
            // The run completed without this worker hearing its Stop (it was
            // stopped, or cut off, near the end) or before it started: it is
            // done as well, and a success to a service manager or a Job.
            Err(Error::RunOver { url }) => {
                info!(coordinator = url, "the run is over: the coordinator says the run has completed");
                return Ok(());
            }
            Ok(Ending::Suspended(reason)) => {
                let delay = backoff.next_delay();
                let delay = config.give_up_after.pause(joined, backoff.failing_for(), delay);
                give_up_if_due(config, &backoff, joined, || Error::Aborted(reason.clone()))?;
                warn!(
                    reason,
                    retry_in_ms = delay.as_millis() as u64,
                    "the coordinator stopped; waiting for it to continue the run"
                );
                tokio::time::sleep(delay).await;
            }
            Err(err) if err.is_retryable() => {
                let error = error_chain(&err);
                let cause = hint::likely_cause(&err, joined);
                let delay = backoff.next_delay();
                let delay = config.give_up_after.pause(joined, backoff.failing_for(), delay);
                let failing_for = backoff.failing_for();
                give_up_if_due(config, &backoff, joined, || err)?;
                let since = std::time::SystemTime::now().checked_sub(failing_for).unwrap_or(std::time::UNIX_EPOCH);
                warn!(
                    error,
                    coordinator = %config.connection.coordinator,
                    since = %humantime::format_rfc3339_seconds(since),
                    hint = cause.map(|cause| format!("{cause}; the worker {}", hint::how_long(config.give_up_after.limit(joined)))),
                    retry_in_ms = delay.as_millis() as u64,
                    "no session with the coordinator; retrying"
                );
                tokio::time::sleep(delay).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Fails with `GaveUp` once the attempts have been failing for
/// `--give-up-after` (since the coordinator was lost, or since the start),
/// by default only once the worker has `joined` (see [`give_up`]); `last` is
/// why this one failed.
fn give_up_if_due(config: &WorkerConfig, backoff: &Backoff, joined: bool, last: impl FnOnce() -> Error) -> Result<()> {
    let waited = backoff.failing_for();
    match config.give_up_after.due(joined, waited) {
        Some(limit) => {
            let since = std::time::SystemTime::now().checked_sub(waited).unwrap_or(std::time::UNIX_EPOCH);
            Err(Error::GaveUp { since, waited, limit, last: Box::new(last()) })
        }
        None => Ok(()),
    }
}

/// A client of the coordinator `connection` names, with its TLS and token:
/// the worker's, and `lazyavg status`'s.
pub async fn connect(connection: &Connection) -> Result<Client> {
    let url = connection.coordinator.to_string();
    let mut endpoint = Endpoint::from(connection.coordinator.clone());
    if let Some(tls) = &connection.tls {
        let domain = connection.coordinator.host().unwrap_or_default();
        endpoint =
            endpoint.tls_config(tls.config(domain)).map_err(|source| Error::Connect { url: url.clone(), source })?;
    }
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|source| Error::Connect { url: url.clone(), source })?;
    let client = CoordinatorClient::with_interceptor(channel, SendToken(connection.token.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Ok(client)
}

/// The error of a Join that failed with `status`: the run is over, the
/// server is not a coordinator, or a refusal (retried unless its code says
/// it will not heal).
async fn join_failed(connection: &Connection, status: tonic::Status) -> Error {
    // As given: `Uri` shows `http://host:port` with a path of `/`.
    let url = connection.coordinator.to_string().trim_end_matches('/').to_owned();
    match peer::classify(&status) {
        JoinFailure::RunOver => Error::RunOver { url },
        JoinFailure::NotCoordinator(why) => Error::NotCoordinator { url, why },
        JoinFailure::NoAnswer => match peer::probe(&connection.coordinator, CONNECT_TIMEOUT).await {
            Some(why) => Error::NotCoordinator { url, why },
            None => Error::Lost { call: "Join", status },
        },
        JoinFailure::Answered => Error::Refused { call: "Join", status },
    }
}

/// The error of a connection that failed: `err`, a network fault retried,
/// unless the address was given as `https://` and the server answered the
/// TLS handshake with something else: then it is not a coordinator as
/// given (one without TLS, or another server), and that is not retried.
async fn connect_failed(connection: &Connection, err: Error) -> Error {
    if !peer::not_tls(&error_chain(&err)) {
        return err;
    }
    match peer::probe_without_tls(&connection.coordinator, CONNECT_TIMEOUT).await {
        Some(why) => {
            let url = connection.coordinator.to_string().trim_end_matches('/').to_owned();
            Error::NotCoordinator { url, why }
        }
        None => err,
    }
}

/// One connection: Join, get the data, run the session.
async fn attempt(
    config: &WorkerConfig,
    backoff: &mut Backoff,
    dataset: &mut Option<(String, Arc<Dataset>)>,
    joined: &mut bool,
    metrics: &WorkerMetrics,
) -> Result<Ending> {
    let mut client = match connect(&config.connection).await {
        Ok(client) => client,
        Err(err) => return Err(connect_failed(&config.connection, err).await),
    };
    let url = config.connection.coordinator.to_string();
    let join = pb::JoinRequest { protocol_version: PROTOCOL_VERSION, name: config.name.clone() };
    let reply = match client.join(join).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => return Err(join_failed(&config.connection, status).await),
    };
    *joined = true;
    backoff.answered();
    let missing = |what: &str| Error::Protocol(ProtoError::Config(format!("the handshake reply has no {what}")));
    let spec = RunSpec::try_from(reply.config.ok_or_else(|| missing("run configuration"))?)?;
    let info = reply.dataset.ok_or_else(|| missing("dataset"))?;
    let data = match dataset {
        Some((sha, data)) if *sha == info.sha256 => Arc::clone(data),
        _ => {
            let data = Arc::new(cache::load_or_fetch(&mut client, &config.cache_dir, reply.worker_id, &info).await?);
            *dataset = Some((info.sha256.clone(), Arc::clone(&data)));
            data
        }
    };
    info!(worker = reply.worker_id, coordinator = url, architecture = %spec.model, "joined the run");
    session::run(&mut client, reply.worker_id, &spec, data, config.slowdown, metrics, || backoff.reset()).await
}
