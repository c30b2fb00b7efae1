//! SIGINT and SIGTERM, the signals that stop a run: the one place that
//! listens for them, for the coordinator's linger and for the `lazyavg`
//! command's shutdown futures (coordinator and worker alike).

use tokio::signal::unix::{SignalKind, signal};

/// Resolves with the name of the first of SIGINT and SIGTERM to arrive,
/// which the command's exit status reports.
pub async fn interrupted() -> &'static str {
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => drop(term.recv().await),
            // Without a handler SIGTERM still ends the process, by its default action.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        () = terminate => "SIGTERM",
    }
}
