//! `lazyavg coordinator` and `lazyavg worker`: configuration is resolved and
//! validated first, then the async runtime starts, sockets open and the
//! library crates take over. Signals become a shutdown future.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use lazyavg_common::telemetry::LogFormat;
use lazyavg_coordinator::signal::interrupted;
use lazyavg_coordinator::spawn::LocalWorkers;
use lazyavg_coordinator::{Launch, Secrets, Settings, Shutdown, checkpoint, run_dir};
use tokio::net::TcpListener;

use crate::cli::CoordinatorArgs;
use lazyavg_worker::WorkerArgs;

/// Runs the coordinator's `future` as a task of a two-thread runtime, not
/// on the calling thread: the driver then shares the runtime's threads
/// with the sessions whose events it takes, and a session that wakes it
/// hands over on its own thread instead of waking a parked main thread.
/// With the workers' runtime below, a default 2-worker round went from
/// 0.83 to 0.64 ms (docs/performance.md, "Tenth cut"). Two threads, not
/// one: a long step of the driver (a robust rule's round of a big model)
/// leaves the other to the sessions, health checks and metrics.
pub fn run_coordinator<F>(future: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let task = runtime.spawn(future);
    let result = runtime.block_on(task).unwrap_or_else(|joined| std::panic::resume_unwind(joined.into_panic()));
    shut_down(runtime);
    result
}

/// Runs `future` (a worker, or `lazyavg status`) on the calling thread
/// alone: a worker's async side is one connection to the coordinator, its
/// session trains between the connection's messages (slow minibatches, and
/// with `--align` all, go to the blocking pool), and with every task on one thread
/// a message between the connection's task and the session's is a hand-over,
/// not a futex wake-up of another thread on a busy core.
pub fn run_single_threaded<F: Future<Output = anyhow::Result<()>>>(future: F) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    let result = runtime.block_on(future);
    shut_down(runtime);
    result
}

/// Drops `runtime` without waiting for the blocking pool: a worker's watch
/// on standard input (`--exit-with-stdin`) is a blocking read that cannot
/// be cancelled, and waiting for it kept a failed local worker alive, and
/// its coordinator waiting for it, until the coordinator itself exited.
fn shut_down(runtime: tokio::runtime::Runtime) {
    runtime.shutdown_background();
}

/// Gives the coordinator's process one malloc arena (glibc). Its memory is
/// a few model-sized buffers and a stream of short-lived message buffers
/// that the runtime's threads allocate and free; with an arena per thread,
/// each keeps freed buffers of its own: 10 to 40 MiB of the peak with a
/// 20M-parameter model on 2 cores, rounds as fast; a flood of clients
/// takes less, and the next flood reuses it (docs/performance.md). Call it
/// before any other thread starts.
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: sets one of glibc's allocator parameters, before other
        // threads exist to allocate meanwhile.
        let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        if set == 0 {
            tracing::debug!("glibc refused M_ARENA_MAX 1; the coordinator keeps an arena per thread");
        }
    }
}

/// How long a coordinator whose local worker exited may take to fail with
/// its own error (it first gives its workers a moment to close).
const OWN_ERROR_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

pub async fn coordinator(args: CoordinatorArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let (file, resume) = starting_settings(&args)?;
    let launch = Launch {
        spawn_workers: args.spawn_workers,
        resume,
        restartable: args.resume_existing,
        checkpoint_faults: args.inject_checkpoint_fault.clone(),
    };
    // Listening for signals from the start: one while the data loads (or
    // downloads) stops the command as one during training does.
    let mut shutdown: Shutdown = Box::pin(interrupted());
    let config = file.overlay(&args.settings)?.resolve(&launch)?;
    let secrets = Secrets::load(&config)?;
    // Before anything listens or starts; `run` checks again for its other callers.
    run_dir::check_out(&config)?;
    let prepared = tokio::select! {
        prepared = lazyavg_coordinator::prepare(&config) => prepared?,
        signal = &mut shutdown => return Err(lazyavg_coordinator::Error::Interrupted(signal).into()),
    };
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| lazyavg_coordinator::Error::Bind { addr: config.bind, source })?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let token = secrets.token.clone();
    let (serving_tx, serving) = tokio::sync::oneshot::channel();
    let run = lazyavg_coordinator::run(config, secrets, prepared, listener, shutdown, Some(serving_tx));
    if args.spawn_workers == 0 {
        run.await?;
        return Ok(());
    }
    tokio::pin!(run);
    // Local workers start once the run serves: one that its own checks refuse
    // (a data directory without MNIST, a batch bigger than a shard) then fails
    // alone, not amid its workers' warnings that nothing answers.
    tokio::select! {
        biased;
        result = &mut run => {
            result?;
            return Ok(());
        }
        _ = serving => {}
    }
    let mut local = LocalWorkers::start(args.spawn_workers, dialable(addr), log_format.name(), token.as_ref())?;
    tokio::select! {
        result = &mut run => { result?; }
        failure = local.failure() => {
            // Workers also exit when the run itself failed and told them to
            // stop: that error, if it comes at once, is the one to report.
            if let Ok(Err(err)) = tokio::time::timeout(OWN_ERROR_GRACE, &mut run).await {
                return Err(err.into());
            }
            return Err(failure.into());
        }
    }
    Ok(())
}

/// The settings a run starts from, before its flags, and whether it resumes:
/// with `--resume DIR`, or with `--resume-existing` and a checkpoint in its
/// directory, the run's own `config.toml`; else `--config`, if given.
fn starting_settings(args: &CoordinatorArgs) -> anyhow::Result<(Settings, bool)> {
    if let Some(dir) = &args.resume {
        return Ok((settings_of_run(dir)?, true));
    }
    let file = match &args.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    if !args.resume_existing {
        return Ok((file, false));
    }
    let Some(out) = args.settings.out.as_ref().or(file.out.as_ref()) else {
        anyhow::bail!("--resume-existing needs the run's directory: --out DIR, or `out` in --config");
    };
    if checkpoint::exists(out) { Ok((settings_of_run(out)?, true)) } else { Ok((file, false)) }
}

/// The settings a run in `dir` was started with.
fn settings_of_run(dir: &Path) -> anyhow::Result<Settings> {
    Ok(Settings { out: Some(dir.to_path_buf()), ..Settings::from_file(&dir.join(run_dir::CONFIG_FILE))? })
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

/// Resolves with the name of the first of SIGINT and SIGTERM (listened for
/// from this call on) and, with `watch_stdin`, of standard input closing:
/// the parent is gone.
fn shutdown_signal(watch_stdin: bool) -> impl Future<Output = &'static str> {
    let interrupted = interrupted();
    let parent_gone = async move {
        if !watch_stdin {
            return std::future::pending::<()>().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await.is_ok_and(|n| n > 0) {}
    };
    async move {
        tokio::select! {
            signal = interrupted => signal,
            () = parent_gone => "the coordinator exiting (standard input closed)",
        }
    }
}

/// The exit statuses of `lazyavg`, as docs/operations.md lists them. A
/// service manager tells by them whether restarting a worker can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Any failure without a status of its own. (0 is success: the run
    /// completed; 2 is a command line clap refused.)
    Failure = 1,
    /// A worker gave up on a coordinator it could not reach for
    /// `--give-up-after` (by default 10 minutes once it has joined).
    Unreachable = 4,
    /// A worker's `--coordinator` answered, but is not a lazyavg coordinator:
    /// a configuration error that no retry cures.
    NotCoordinator = 5,
    /// SIGINT (the shell's convention: 128 + 2).
    Interrupted = 130,
    /// SIGTERM (128 + 15).
    Terminated = 143,
}

impl Exit {
    /// The status `err` ends the process with.
    pub fn of(err: &anyhow::Error) -> Exit {
        use lazyavg_coordinator::Error as Coordinator;
        use lazyavg_worker::Error as Worker;
        if let Some(Coordinator::Interrupted(signal)) = err.downcast_ref::<Coordinator>() {
            return Exit::signalled(signal);
        }
        match err.downcast_ref::<Worker>() {
            Some(Worker::Interrupted(signal)) => Exit::signalled(signal),
            Some(Worker::GaveUp { .. }) => Exit::Unreachable,
            Some(Worker::NotCoordinator { .. }) => Exit::NotCoordinator,
            _ => Exit::Failure,
        }
    }

    /// Stopped by `signal` (or by standard input closing, a failure).
    fn signalled(signal: &str) -> Exit {
        match signal {
            "SIGINT" => Exit::Interrupted,
            "SIGTERM" => Exit::Terminated,
            _ => Exit::Failure,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn coordinator_args(args: &[&str]) -> CoordinatorArgs {
        match Cli::try_parse_from(["lazyavg", "coordinator"].iter().chain(args)).expect("valid flags").command {
            Command::Coordinator(args) => *args,
            other => panic!("parsed as {other:?}"),
        }
    }

    /// What a service restarting `lazyavg coordinator --config FILE
    /// --resume-existing` gets: a new run until there is a checkpoint in the
    /// file's `out`, then that run, with the settings it was started with.
    #[test]
    fn resume_existing_continues_the_run_in_out_once_it_has_a_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        let file = tmp.path().join("coordinator.toml");
        std::fs::write(&file, format!("epochs = 4\nout = {:?}\n", out.to_str().unwrap())).unwrap();
        let args = coordinator_args(&["--config", file.to_str().unwrap(), "--resume-existing"]);

        let (settings, resume) = starting_settings(&args).unwrap();
        assert_eq!((settings.epochs, resume), (Some(4), false), "no checkpoint yet: a new run from the file");

        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join(run_dir::CONFIG_FILE), "epochs = 7\n").unwrap();
        std::fs::write(out.join(checkpoint::CURRENT), "").unwrap();
        let (settings, resume) = starting_settings(&args).unwrap();
        assert_eq!((settings.epochs, resume), (Some(7), true), "the run's own settings, resumed");
        assert_eq!(settings.out, Some(out));

        let err = starting_settings(&coordinator_args(&["--resume-existing"])).unwrap_err();
        assert!(err.to_string().contains("--out DIR"), "{err}");
    }

    #[test]
    fn each_way_a_worker_ends_has_its_documented_status() {
        use lazyavg_worker::Error as Worker;
        let url = || "http://c:7070".to_owned();
        let gave_up = Worker::GaveUp {
            since: std::time::SystemTime::now(),
            waited: std::time::Duration::from_secs(600),
            limit: std::time::Duration::from_secs(600),
            last: Box::new(Worker::SessionEnded),
        };
        let cases = [
            (gave_up, Exit::Unreachable, 4),
            (Worker::NotCoordinator { url: url(), why: "HTTP/1".into() }, Exit::NotCoordinator, 5),
            (Worker::Interrupted("SIGINT"), Exit::Interrupted, 130),
            (Worker::Interrupted("SIGTERM"), Exit::Terminated, 143),
            (Worker::SessionEnded, Exit::Failure, 1),
        ];
        for (err, exit, code) in cases {
            let err = anyhow::Error::from(err);
            assert_eq!((Exit::of(&err), Exit::of(&err) as u8), (exit, code), "{err:#}");
        }
        let coordinator = anyhow::Error::from(lazyavg_coordinator::Error::Interrupted("SIGTERM"));
        assert_eq!(Exit::of(&coordinator), Exit::Terminated);
    }
}
