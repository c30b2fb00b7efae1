//! The run's servers: the gRPC server (the coordinator's service behind
//! the token check, next to the standard health service), from its start on
//! the run's listener to its close at the run's end; and `/metrics`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lazyavg_common::telemetry::error_chain;
use lazyavg_proto::auth::RequireToken;
use lazyavg_proto::pb::coordinator_server::CoordinatorServer;
use lazyavg_proto::scrape;
use lazyavg_proto::transport::{
    CONNECTION_WINDOW, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_FRAME, MAX_MESSAGE_BYTES, STREAM_WINDOW,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::config::Secrets;
use crate::error::{Error, Result};
use crate::observe::exporter::Exporter;
use crate::observe::log::REFUSAL_LOG_INTERVAL;
use crate::push;
use crate::service::{CoordinatorService, Shared};

/// The gRPC server's task: it returns when told to stop, or when it fails.
type ServerTask = JoinHandle<std::result::Result<(), tonic::transport::Error>>;

/// The gRPC server, while it runs, and what its handlers share with the driver.
pub(crate) struct Server {
    pub(crate) shared: Arc<Shared>,
    task: ServerTask,
    /// `task` has returned (it failed), and is not awaited again.
    ended: bool,
    stop: oneshot::Sender<()>,
    refusals_flusher: JoinHandle<()>,
}

impl Server {
    /// Serves `shared` on `listener` until [`Server::close`]; returns the
    /// reporter of the health service served next to it.
    pub(crate) fn start(
        listener: TcpListener,
        secrets: &Secrets,
        shared: Arc<Shared>,
    ) -> Result<(Server, HealthReporter)> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (task, health_reporter) = spawn(listener, secrets, Arc::clone(&shared), stopped)?;
        let refusals_flusher = tokio::spawn(flush_refusals(Arc::clone(&shared)));
        Ok((Server { shared, task, ended: false, stop, refusals_flusher }, health_reporter))
    }

    /// Resolves if the server returns before it is told to stop: it failed,
    /// and the workers cannot reach the run any more.
    pub(crate) async fn failed(&mut self) -> Error {
        let served = (&mut self.task).await;
        self.ended = true;
        match served {
            Ok(Err(err)) => Error::Serve(err),
            Ok(Ok(())) => Error::ServerStopped("it returned".into()),
            Err(join) => Error::ServerStopped(join.to_string()),
        }
    }

    /// Stops the server, giving the workers' sessions (told to stop) a
    /// moment to close cleanly, then logs the refusals not logged yet.
    pub(crate) async fn close(self) {
        let _ = self.stop.send(());
        if !self.ended
            && let Ok(Ok(Err(err))) = tokio::time::timeout(Duration::from_secs(2), self.task).await
        {
            warn!(error = %error_chain(&err), "the gRPC server failed while closing");
        }
        self.refusals_flusher.abort();
        self.shared.refusals().flush(Instant::now(), true);
    }
}

/// Spawns the gRPC server, serving until `stopped`: the coordinator's
/// service behind the token check, and the standard health service, whose
/// reporter it returns.
fn spawn(
    listener: TcpListener,
    secrets: &Secrets,
    shared: Arc<Shared>,
    stopped: oneshot::Receiver<()>,
) -> Result<(ServerTask, HealthReporter)> {
    let service = CoordinatorServer::new(CoordinatorService::new(shared))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let service = InterceptedService::new(service, RequireToken(secrets.token.clone()));
    // Without TCP_NODELAY a small message waits for the peer's delayed ACK (~40 ms):
    // that stalled every round behind a weights transfer.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(KEEPALIVE_INTERVAL));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &secrets.tls {
        builder = builder.tls_config(tls.config())?;
        info!(mutual = tls.requires_client_certificates(), "TLS on");
    }
    let task = tokio::spawn(
        builder
            .max_frame_size(Some(MAX_FRAME))
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(service)
            .add_service(health_service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    Ok((task, health_reporter))
}

/// Writes the refusals counted since their kind's last log line, every
/// [`REFUSAL_LOG_INTERVAL`]: a burst that stops is then still counted.
async fn flush_refusals(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(REFUSAL_LOG_INTERVAL);
    loop {
        tick.tick().await;
        shared.refusals().flush(Instant::now(), false);
    }
}

/// Binds `--metrics-bind` and serves the run's metrics there until `stop`;
/// returns the exporter that keeps them current.
pub(crate) async fn serve_metrics(bind: SocketAddr, stop: oneshot::Receiver<()>) -> Result<Exporter> {
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
pub(crate) fn outbox_capacity(parameters: usize) -> usize {
    4 * push::messages(parameters) + 64
}
