//! The coordinator's errors, and their one mapping to gRPC statuses.

use std::net::SocketAddr;
use std::path::PathBuf;

use tonic::Status;

use crate::registry::RegistryError;
use crate::round::RoundError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Common(#[from] lazyavg_common::Error),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot keep the training set for workers to download in a temporary file in {}: set TMPDIR to a writable directory with room for {bytes} bytes",
        dir.display()
    )]
    Spool {
        dir: PathBuf,
        bytes: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{} already holds a run ({file}): continue it with --resume {}, or choose another --out", dir.display(), dir.display())]
    RunExists { dir: PathBuf, file: &'static str },
    #[error("gRPC server failed")]
    Serve(#[from] tonic::transport::Error),
    #[error("the gRPC server stopped before the run ended: {0}")]
    ServerStopped(String),
    #[error("cannot start local worker {index}")]
    SpawnWorker {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("local worker {name} exited with {status} before training finished")]
    WorkerExited { name: String, status: std::process::ExitStatus },
    #[error(
        "{cause}; the peak learning rate was {peak_lr} (--lr times the --lr-scaling factor): lower --lr or --lr-scaling"
    )]
    Diverged { cause: RoundError, peak_lr: f32 },
    #[error(
        "{cause}, after worker {name} sent an update {ratio:.0}× the median update's norm in epoch {epoch} round {round}: \
         its contributions, far from the others', are the likely cause, not the learning rate; leave such \
         contributions out (--drop-outliers, or a robust --aggregate) or keep that worker out"
    )]
    DivergedAfterOutlier { cause: RoundError, name: String, ratio: f64, epoch: u64, round: u64 },
    #[error("stopped by {0} before training finished")]
    Interrupted(&'static str),
    #[error("only {alive} of the {min} workers needed (--min-workers) after waiting {}; giving up", humantime::format_duration(*waited))]
    TooFewWorkers { alive: usize, min: usize, waited: std::time::Duration },
    #[error(
        "{images} images of the epoch have no worker to train them: the workers connected were excluded from it \
         (their updates were outliers or not finite) and no other joined within {} (--max-wait); giving up",
        humantime::format_duration(*waited)
    )]
    NoWorkerForOrphans { images: usize, waited: std::time::Duration },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

impl From<&RegistryError> for Status {
    /// A name too long is INVALID_ARGUMENT; a limit reached
    /// RESOURCE_EXHAUSTED (the client may retry later); an unknown or
    /// attached id FAILED_PRECONDITION.
    fn from(err: &RegistryError) -> Self {
        let message = err.to_string();
        match err {
            RegistryError::NameTooLong { .. } => Status::invalid_argument(message),
            RegistryError::TooManyPendingJoins { .. }
            | RegistryError::TooManySessions { .. }
            | RegistryError::TooManyFetches { .. }
            | RegistryError::TooManyDownloads { .. }
            | RegistryError::FetchedEnough { .. } => Status::resource_exhausted(message),
            RegistryError::Unknown(_) | RegistryError::AlreadyAttached(_) => Status::failed_precondition(message),
        }
    }
}
