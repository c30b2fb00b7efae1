//! The session's messages in domain terms, and their protobuf forms: what
//! the coordinator asks of a worker ([`Pull`]) and what a worker says of
//! the training it did ([`Report`]). Weights travel as [`Chunk`]s.

use crate::chunks::Chunk;
use crate::pb;

/// Train positions `from..until` of the shard for `epoch` `round`, then
/// send a [`Report`] and the weights. `after_round` (`--overlap`): the round
/// of this epoch whose average must be applied before the weights go out;
/// 0 sends them as soon as they are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pull {
    pub epoch: u64,
    pub round: u64,
    pub from: usize,
    pub until: usize,
    pub after_round: u64,
}

impl From<Pull> for pb::PullWeights {
    fn from(p: Pull) -> Self {
        pb::PullWeights {
            epoch: p.epoch,
            round: p.round,
            train_from: p.from as u64,
            train_until: p.until as u64,
            after_round: p.after_round,
        }
    }
}

/// A worker's account of the training it did for a pull. Its sample count
/// is not here: the coordinator weights contributions by its own count.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Report {
    pub epoch: u64,
    pub round: u64,
    /// Sum of the per-sample training loss over the round's samples.
    pub loss_sum: f64,
    /// Wall-clock seconds spent training for the pull.
    pub train_seconds: f64,
    /// `--align`: whether matching moved any unit, and the seconds it took.
    pub realigned: bool,
    pub align_seconds: f64,
}

impl From<&pb::RoundReport> for Report {
    fn from(r: &pb::RoundReport) -> Self {
        Report {
            epoch: r.epoch,
            round: r.round,
            loss_sum: r.loss_sum,
            train_seconds: r.train_seconds,
            realigned: r.realigned,
            align_seconds: r.align_seconds,
        }
    }
}

/// What a worker sends on its session once attached.
#[derive(Debug, Clone, PartialEq)]
pub enum FromWorker {
    Report(Report),
    Weights(Chunk),
}

impl FromWorker {
    /// The domain form of a session message; `None` for an `Attach`, which
    /// only opens a session, and the lane's messages, which the session
    /// handles itself ([`crate::lane`]).
    pub fn from_pb(kind: pb::worker_message::Kind) -> Option<Self> {
        match kind {
            pb::worker_message::Kind::Report(report) => Some(FromWorker::Report(Report::from(&report))),
            pb::worker_message::Kind::Weights(chunk) => Some(FromWorker::Weights(chunk.into())),
            pb::worker_message::Kind::Attach(_)
            | pb::worker_message::Kind::LaneAnswer(_)
            | pb::worker_message::Kind::LaneFree(_) => None,
        }
    }
}
