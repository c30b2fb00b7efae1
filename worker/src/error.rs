//! The worker's errors, and which of them a reconnect can cure.

use std::path::PathBuf;

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid --coordinator {url:?}: {problem}")]
    Address { url: String, problem: String },
    /// A setting that cannot be used (token, TLS files, flags).
    #[error("{0}")]
    Setting(String),
    #[error("cannot listen on --metrics-bind {addr}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the coordinator at {url}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the coordinator refused {call}: {}", status.message())]
    Refused { call: &'static str, status: Status },
    /// A call that failed below gRPC (the connection refused, reset or
    /// closed): no answer, not a refusal.
    #[error("{call} failed without an answer from the coordinator: {}", status.message())]
    Lost { call: &'static str, status: Status },
    #[error(transparent)]
    Protocol(#[from] lazyavg_proto::ProtoError),
    #[error(transparent)]
    Lane(#[from] lazyavg_proto::lane::LaneError),
    #[error("dataset download: {0}")]
    Dataset(String),
    #[error("dataset cache {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Common(#[from] lazyavg_common::Error),
    #[error("the coordinator ended the session")]
    SessionEnded,
    #[error("the coordinator stopped the run: {0}")]
    Aborted(String),
    #[error("stopped by {0}")]
    Interrupted(&'static str),
    /// The coordinator refused Join because its run has completed: this
    /// worker missed the end (or started after it).
    #[error("the run is over: the coordinator at {url} says the run has completed")]
    RunOver { url: String },
    /// `--coordinator` answered, but not as a lazyavg coordinator.
    #[error("{url}: not a lazyavg coordinator: {why}")]
    NotCoordinator { url: String, why: String },
    /// No coordinator for `--give-up-after` (see [`crate::give_up`]).
    #[error(
        "coordinator unreachable since {} (for {}s, --give-up-after {}); giving up",
        humantime::format_rfc3339_seconds(*since),
        waited.as_secs(),
        humantime::format_duration(*limit)
    )]
    GaveUp {
        since: std::time::SystemTime,
        waited: std::time::Duration,
        limit: std::time::Duration,
        #[source]
        last: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether connecting again (with backoff) may succeed: the network or the
    /// coordinator went away, or it lost track of us (e.g. it restarted).
    /// A shared-memory lane that failed heals with the next session's.
    /// A protocol-version mismatch, a wrong token, a broken cache disk, a
    /// deliberate stop, a completed run or a server that is not a
    /// coordinator will not heal by retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Lost { .. } | Error::SessionEnded | Error::Dataset(_) => true,
            // A new session gets a new lane, or none.
            Error::Lane(_) => true,
            Error::Refused { call, status } => {
                !(status.code() == Code::Unauthenticated
                    || *call == "Join" && matches!(status.code(), Code::FailedPrecondition | Code::InvalidArgument))
            }
            _ => false,
        }
    }

    /// The error of `call` failing with `status`: [`Error::Lost`] when tonic
    /// made the status up itself (it then carries the underlying error as
    /// its source; a server's status travels as headers, without one), else
    /// the coordinator's refusal.
    pub fn refused(call: &'static str) -> impl FnOnce(Status) -> Error {
        move |status| {
            if std::error::Error::source(&status).is_some() {
                Error::Lost { call, status }
            } else {
                Error::Refused { call, status }
            }
        }
    }
}
