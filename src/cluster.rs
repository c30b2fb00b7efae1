//! `lazyavg coordinator` and `lazyavg worker`: configuration is resolved and
//! validated first, then the async runtime starts, sockets open and the
//! library crates take over. Signals become a shutdown future.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use lazyavg_common::telemetry::LogFormat;
use lazyavg_coordinator::spawn::LocalWorkers;
use lazyavg_coordinator::{Settings, Shutdown, checkpoint, run_dir};
use tokio::net::TcpListener;

use crate::cli::CoordinatorArgs;
use lazyavg_worker::WorkerArgs;

/// Runs `future` on a multi-threaded runtime (training itself runs on the
/// blocking pool, so a small runtime is enough).
pub fn block_on<F: Future<Output = anyhow::Result<()>>>(future: F) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(future);
    // Without waiting for the blocking pool: a worker's watch on standard
    // input (`--exit-with-stdin`) is a blocking read that cannot be
    // cancelled, and waiting for it kept a failed local worker alive, and
    // its coordinator waiting for it, until the coordinator itself exited.
    runtime.shutdown_background();
    result
}

pub async fn coordinator(args: CoordinatorArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let resume = match (&args.resume, &args.settings.out) {
        (Some(dir), _) => Some(dir),
        (None, Some(out)) if args.resume_existing && checkpoint::exists(out) => Some(out),
        _ => None,
    };
    let file = match (&args.config, resume) {
        (Some(path), _) => Settings::from_file(path)?,
        (None, Some(dir)) => Settings { out: Some(dir.clone()), ..Settings::from_file(&dir.join(run_dir::CONFIG_FILE))? },
        (None, None) => Settings::default(),
    };
    let mut config = file.overlay(&args.settings)?.resolve(args.spawn_workers)?;
    config.resume = resume.is_some();
    if !config.resume {
        // Before anything listens or starts; `run` checks again for its other callers.
        run_dir::ensure_no_results(&config.out_dir)?;
    }
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| lazyavg_coordinator::Error::Bind { addr: config.bind, source })?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let shutdown: Shutdown = Box::pin(shutdown_signal(false));
    let token = config.token.clone();
    let run = lazyavg_coordinator::run(config, listener, shutdown);
    if args.spawn_workers == 0 {
        run.await?;
        return Ok(());
    }
    let mut local = LocalWorkers::start(args.spawn_workers, dialable(addr), log_format.name(), token.as_ref())?;
    tokio::select! {
        result = run => { result?; }
        failure = local.failure() => return Err(failure.into()),
    }
    Ok(())
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let shutdown = shutdown_signal(config.exit_with_stdin);
    lazyavg_worker::run(config, shutdown).await?;
    Ok(())
}

/// The address a local process dials for a listener bound to `addr`
/// (loopback when bound to all interfaces).
fn dialable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() { SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())) } else { addr }
}

/// Resolves with the name of the first of SIGINT and SIGTERM (and, with
/// `watch_stdin`, of standard input closing: the parent is gone).
async fn shutdown_signal(watch_stdin: bool) -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let parent_gone = async {
        if !watch_stdin {
            return std::future::pending::<()>().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await.is_ok_and(|n| n > 0) {}
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate => "SIGTERM",
        _ = parent_gone => "the coordinator exiting (standard input closed)",
    }
}

/// 130 after SIGINT and 143 after SIGTERM (the shell's convention), 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    let signal = err
        .downcast_ref::<lazyavg_coordinator::Error>()
        .and_then(|e| match e {
            lazyavg_coordinator::Error::Interrupted(s) => Some(*s),
            _ => None,
        })
        .or_else(|| match err.downcast_ref::<lazyavg_worker::Error>() {
            Some(lazyavg_worker::Error::Interrupted(s)) => Some(*s),
            _ => None,
        });
    match signal {
        Some("SIGINT") => ExitCode::from(130),
        Some("SIGTERM") => ExitCode::from(143),
        _ => ExitCode::FAILURE,
    }
}
