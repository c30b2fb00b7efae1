//! SIGINT and SIGTERM, the signals that stop a run: the one place that
//! listens for them, for the coordinator's linger and for the `lazyavg`
//! command's shutdown futures (coordinator and worker alike).

use std::future::Future;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Starts listening for SIGINT and SIGTERM at once (from here on neither
/// ends the process by its default action, even while nothing polls the
/// future yet, e.g. while the data loads) and resolves with the name of the
/// first to arrive, which the command's exit status reports. Call it from
/// within the runtime.
pub fn interrupted() -> impl Future<Output = &'static str> + Send + 'static {
    let interrupt = signal(SignalKind::interrupt()).ok();
    let terminate = signal(SignalKind::terminate()).ok();
    async move {
        tokio::select! {
            () = arrival(interrupt) => "SIGINT",
            () = arrival(terminate) => "SIGTERM",
        }
    }
}

/// Resolves when `signal` arrives; never without a handler (the signal then
/// still ends the process by its default action).
async fn arrival(signal: Option<Signal>) {
    match signal {
        Some(mut signal) => drop(signal.recv().await),
        None => std::future::pending().await,
    }
}
