//! `--spawn-workers N`: local worker processes for one-machine runs. They die
//! with the coordinator: killed when it ends or fails, and — should it be
//! killed outright — they see their standard input (a pipe from it) close and
//! exit by themselves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use lazyavg_proto::auth::{TOKEN_ENV, TOKEN_FILE_ENV, Token};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::info;

use crate::error::{Error, Result};

/// The running local workers.
#[derive(Debug)]
pub struct LocalWorkers {
    exits: mpsc::Receiver<(String, ExitStatus)>,
}

impl LocalWorkers {
    /// Starts `count` workers of this same binary connected to `addr`.
    /// `log_format` is passed on so their lines match the coordinator's, and
    /// the run's `token`, if any, in their environment.
    pub fn start(count: usize, addr: SocketAddr, log_format: &str, token: Option<&Token>) -> Result<Self> {
        let exe = std::env::current_exe().map_err(|source| Error::SpawnWorker { index: 0, source })?;
        let (tx, exits) = mpsc::channel(count.max(1));
        for index in 1..=count {
            let name = format!("local-{index}");
            let child = spawn_one(&exe, addr, &name, log_format, token)
                .map_err(|source| Error::SpawnWorker { index, source })?;
            info!(name, pid = child.id(), "started local worker");
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut child: Child = child;
                // `wait` would close the child's stdin; holding it keeps the
                // pipe open for as long as this process lives.
                let _stdin = child.stdin.take();
                if let Ok(status) = child.wait().await {
                    let _ = tx.send((name, status)).await;
                }
            });
        }
        Ok(LocalWorkers { exits })
    }

    /// Resolves when a local worker exits with a failure (as an error naming it).
    pub async fn failure(&mut self) -> Error {
        loop {
            match self.exits.recv().await {
                Some((name, status)) if !status.success() => return Error::WorkerExited { name, status },
                Some(_) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    }
}

fn spawn_one(
    exe: &PathBuf,
    addr: SocketAddr,
    name: &str,
    log_format: &str,
    token: Option<&Token>,
) -> std::io::Result<Child> {
    let mut command = Command::new(exe);
    if let Some(token) = token {
        // The environment, not a flag: `ps` shows arguments to every user.
        command.env(TOKEN_ENV, token.secret()).env_remove(TOKEN_FILE_ENV);
    }
    command
        .args(["--log-format", log_format, "worker", "--coordinator", &format!("http://{addr}"), "--name", name])
        .arg("--exit-with-stdin")
        .stdin(Stdio::piped())
        // Local workers' lines share the coordinator's terminal: only their warnings, unless asked.
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()))
        .kill_on_drop(true)
        .spawn()
}
