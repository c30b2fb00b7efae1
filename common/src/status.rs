//! Where a run stands, as `lazyavg status` shows it: the coordinator's
//! answer to its read-only Status call, as a domain type (the protobuf form
//! and the conversions are in `lazyavg_proto::convert`).

use std::time::Duration;

/// What a worker is doing, as the coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Pulled (or between rounds), no weights in yet.
    Training,
    /// Its weights for the open round are arriving.
    Answering,
    /// Pulled, and silent for much longer than its last round trip took.
    Late,
    /// Its session has ended.
    Gone,
}

impl WorkerState {
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Training => "training",
            WorkerState::Answering => "answering",
            WorkerState::Late => "late",
            WorkerState::Gone => "gone",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    pub name: String,
    /// Its address as the coordinator sees it (empty where unknown).
    pub address: String,
    pub state: WorkerState,
    /// Samples of its in averages, this run.
    pub samples: u64,
    /// How long ago its weights were last in an average (`None`: never).
    pub last_contribution: Option<Duration>,
    /// From its last pull to the last chunk of its answer (`None`: no answer yet).
    pub round_trip: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunStatus {
    pub epoch: u64,
    /// Epoch-local index of the latest round started.
    pub round: u64,
    pub rounds_completed: u64,
    /// Test accuracy of the last evaluated epoch (`None` before the first).
    pub accuracy: Option<f64>,
    pub workers: Vec<WorkerStatus>,
}
