//! What the driver tells a worker, in domain terms. The driver decides in
//! these; [`crate::edge`] alone turns them into protobuf messages and gRPC
//! statuses, so the decisions can be tested without a session.

use lazyavg_proto::chunks::Chunk;
use lazyavg_proto::message::Pull;

use crate::round::RoundError;

/// One instruction for one worker's session.
#[derive(Debug, Clone, PartialEq)]
pub enum Cmd {
    /// Images of `epoch` to train: they replace the worker's shard, or with
    /// `extend` add to it.
    Shard {
        epoch: u64,
        images: Vec<u32>,
        extend: bool,
    },
    Pull(Pull),
    /// A piece of the weights to continue from (an average, or the start).
    Weights(Chunk),
    /// `--align` with `--init independent`: a piece of the weights the
    /// worker's first contribution is matched to.
    Reference(Chunk),
    /// The run is over for this worker.
    Stop {
        reason: String,
        completed: bool,
        resumable: bool,
    },
    /// A message of the worker's was refused; the session goes on.
    Reject(Rejection),
    /// A message of the worker's was malformed: the session ends.
    EndSession(Rejection),
}

/// A refused worker message: why, in a word and in a sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

impl From<&RoundError> for Rejection {
    fn from(err: &RoundError) -> Self {
        Rejection { reason: RejectReason::from(err), message: err.to_string() }
    }
}

/// Why a worker message was refused: the label it is counted under in the
/// metrics, and (at the edge) the gRPC code the worker is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// For a round that is over.
    Stale,
    /// For a round that has not started.
    Future,
    /// From a worker the round does not wait for.
    NotInRound,
    /// A second contribution to the same round.
    Duplicate,
    /// Weights with a NaN or an infinity.
    NonFinite,
    /// A chunk out of order, of the wrong size or for another model.
    Malformed,
    /// Weights or a report while no round is open.
    NoRound,
    Other,
}

impl RejectReason {
    /// Every reason, for exporters that count each from the start (at 0),
    /// so that a rate sees the first refusal.
    pub const ALL: [RejectReason; 8] = [
        RejectReason::Stale,
        RejectReason::Future,
        RejectReason::NotInRound,
        RejectReason::Duplicate,
        RejectReason::NonFinite,
        RejectReason::Malformed,
        RejectReason::NoRound,
        RejectReason::Other,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Stale => "stale",
            RejectReason::Future => "future",
            RejectReason::NotInRound => "not_in_round",
            RejectReason::Duplicate => "duplicate",
            RejectReason::NonFinite => "non_finite",
            RejectReason::Malformed => "malformed",
            RejectReason::NoRound => "no_round",
            RejectReason::Other => "other",
        }
    }
}

impl From<&RoundError> for RejectReason {
    fn from(err: &RoundError) -> Self {
        match err {
            RoundError::Stale { .. } => RejectReason::Stale,
            RoundError::Future { .. } => RejectReason::Future,
            RoundError::NotInRound(_) => RejectReason::NotInRound,
            RoundError::Duplicate(_) => RejectReason::Duplicate,
            RoundError::NonFinite { .. } => RejectReason::NonFinite,
            RoundError::Chunk(_) => RejectReason::Malformed,
            RoundError::Empty { .. } | RoundError::Tainted { .. } | RoundError::Diverged { .. } => RejectReason::Other,
        }
    }
}
