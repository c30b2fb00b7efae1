//! The worker's flags. A worker needs only the coordinator's address: the
//! model, hyperparameters and data come from the coordinator.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use lazyavg_proto::MAX_WORKER_NAME_BYTES;
use lazyavg_proto::auth::{TOKEN_ENV, TOKEN_FILE_ENV, Token};
use lazyavg_proto::tls::ClientTls;
use tonic::transport::Uri;

use crate::error::{Error, Result};
use crate::give_up::GiveUpAfter;

/// `--debug-slowdown` beyond this would only make a test wait forever (and
/// the pause, train time × factor, overflow).
const MAX_SLOWDOWN: f64 = 1000.0;

/// How to reach a coordinator, for `lazyavg worker` and `lazyavg status` alike.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Coordinator URL, e.g. http://10.0.0.1:7070.
    #[arg(long, env = "LAZYAVG_COORDINATOR", value_name = "URL")]
    pub coordinator: String,

    /// File holding the coordinator's shared secret (or set LAZYAVG_TOKEN).
    #[arg(long, env = TOKEN_FILE_ENV, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// PEM CA certificate that signed the coordinator's certificate (with an https:// URL).
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate for a coordinator that requires one (mutual TLS), with --tls-key.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
}

/// A validated [`ConnectArgs`].
#[derive(Debug, Clone)]
pub struct Connection {
    pub coordinator: Uri,
    pub token: Option<Token>,
    pub tls: Option<ClientTls>,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Name shown in the coordinator's logs [default: host name and process id].
    #[arg(long, env = "LAZYAVG_WORKER_NAME", value_name = "NAME")]
    pub name: Option<String>,

    /// Where the downloaded training set is cached [default: $XDG_CACHE_HOME/lazyavg or ~/.cache/lazyavg].
    #[arg(long, env = "LAZYAVG_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (plain HTTP, no token) [default: off].
    #[arg(long, env = "LAZYAVG_WORKER_METRICS_BIND", value_name = "ADDR:PORT")]
    pub metrics_bind: Option<SocketAddr>,

    // The default lets workers start before their coordinator, yet makes a worker that
    // missed the end of its run exit; why 10 minutes: `give_up::DEFAULT_AFTER_JOINING`.
    /// Give up (exit 4) after failing to reach the coordinator for this long, e.g. 90s, or `never` [default: 10m once the worker has joined the run, never before it has].
    #[arg(long, env = "LAZYAVG_GIVE_UP_AFTER", value_name = "DURATION|never", value_parser = GiveUpAfter::parse)]
    pub give_up_after: Option<GiveUpAfter>,

    /// Testing: after each pull, idle for (F - 1) times the training time, to act as a worker F times slower.
    ///
    /// Hidden from `--help`: fault injection for the straggler tests and `bench/straggler.sh`;
    /// no real worker wants to be slower.
    #[arg(long, value_name = "F", hide = true)]
    pub debug_slowdown: Option<f64>,

    /// Exit when standard input closes (set by `--spawn-workers`, so local workers die with their coordinator).
    ///
    /// Hidden from `--help`: the coordinator sets it on the workers it starts; a worker started
    /// by hand or by a service manager has no such parent.
    #[arg(long, hide = true)]
    pub exit_with_stdin: bool,
}

/// The validated worker configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub connection: Connection,
    pub name: String,
    pub cache_dir: PathBuf,
    /// How long to go on retrying without a coordinator.
    pub give_up_after: GiveUpAfter,
    /// 1 normally; F > 1 makes the worker F times slower (for straggler tests).
    pub slowdown: f64,
    pub exit_with_stdin: bool,
    /// `--metrics-bind`: where `/metrics` is served, if anywhere.
    pub metrics_bind: Option<SocketAddr>,
}

impl ConnectArgs {
    pub fn resolve(&self) -> Result<Connection> {
        let url = &self.coordinator;
        let bad = |problem: &str| Error::Address { url: url.clone(), problem: problem.to_owned() };
        let coordinator: Uri = url.parse().map_err(|e: tonic::codegen::http::uri::InvalidUri| bad(&e.to_string()))?;
        let tls = ClientTls::load(self.tls_ca.as_deref(), self.tls_cert.as_deref(), self.tls_key.as_deref())
            .map_err(Error::Setting)?;
        match (coordinator.scheme_str(), &tls) {
            (Some("http"), None) | (Some("https"), Some(_)) => {}
            (Some("https"), None) => {
                return Err(bad("https:// needs --tls-ca (the CA of the coordinator's certificate)"));
            }
            (Some("http"), Some(_)) => return Err(bad("use https:// with --tls-ca")),
            _ => return Err(bad("must start with http:// or https://")),
        }
        if coordinator.host().is_none() {
            return Err(bad("has no host"));
        }
        // `Uri::port` hides a port out of range as no port at all.
        let authority = coordinator.authority().map_or("", |a| a.as_str());
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, host_port)| host_port);
        let after_host = host_port.rsplit_once(']').map_or(host_port, |(_, rest)| rest);
        if after_host.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_err()) {
            return Err(bad("the port must be a number from 0 to 65535"));
        }
        let token = Token::load(self.token_file.as_deref(), std::env::var(TOKEN_ENV).ok().as_deref())
            .map_err(Error::Setting)?;
        Ok(Connection { coordinator, token, tls })
    }
}

impl WorkerArgs {
    pub fn resolve(&self) -> Result<WorkerConfig> {
        let name = self.name.clone().unwrap_or_else(default_name);
        if name.len() > MAX_WORKER_NAME_BYTES {
            return Err(Error::Setting(format!(
                "invalid --name: {} bytes, the coordinator accepts at most {MAX_WORKER_NAME_BYTES}",
                name.len()
            )));
        }
        Ok(WorkerConfig {
            connection: self.connect.resolve()?,
            name,
            cache_dir: self.cache_dir.clone().unwrap_or_else(default_cache_dir),
            slowdown: match self.debug_slowdown {
                None => 1.0,
                Some(f) if (1.0..=MAX_SLOWDOWN).contains(&f) => f,
                Some(f) => {
                    return Err(Error::Setting(format!(
                        "invalid --debug-slowdown: must be between 1 and {MAX_SLOWDOWN}, got {f}"
                    )));
                }
            },
            give_up_after: self.give_up_after.unwrap_or(GiveUpAfter::Default),
            exit_with_stdin: self.exit_with_stdin,
            metrics_bind: self.metrics_bind,
        })
    }
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("lazyavg")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> WorkerArgs {
        WorkerArgs {
            connect: ConnectArgs {
                coordinator: url.to_owned(),
                token_file: None,
                tls_ca: None,
                tls_cert: None,
                tls_key: None,
            },
            name: Some("w".into()),
            cache_dir: None,
            give_up_after: None,
            debug_slowdown: None,
            exit_with_stdin: false,
            metrics_bind: None,
        }
    }

    #[test]
    fn a_name_the_coordinator_would_refuse_is_refused_here() {
        let named = |name: String| WorkerArgs { name: Some(name), ..args("http://127.0.0.1:7070") };
        assert!(named("x".repeat(MAX_WORKER_NAME_BYTES)).resolve().is_ok());
        let err = named("x".repeat(300)).resolve().unwrap_err().to_string();
        assert_eq!(err, "invalid --name: 300 bytes, the coordinator accepts at most 256");
    }

    #[test]
    fn coordinator_url_is_checked() {
        assert!(args("http://127.0.0.1:7070").resolve().is_ok());
        let err = args("127.0.0.1:7070").resolve().unwrap_err().to_string();
        assert!(err.contains("http://"), "{err}");
        assert!(args("http://").resolve().is_err());
        for url in ["http://127.0.0.1:99999", "http://[::1]:70000", "http://host:x"] {
            let err = args(url).resolve().unwrap_err().to_string();
            assert!(err.contains("port"), "{url}: {err}");
        }
        assert!(args("http://[::1]:7070").resolve().is_ok());
        assert!(args("http://coordinator").resolve().is_ok());
    }
}
