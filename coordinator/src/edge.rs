//! The one place where the driver's domain meets the wire: [`Cmd`]s become
//! protobuf messages on a worker's session queue, [`Rejection`]s gRPC
//! statuses. Everything inside the driver, the rounds and the observers is
//! protobuf-free.

use lazyavg_proto::convert::shard_messages;
use lazyavg_proto::pb;
use lazyavg_proto::pb::coordinator_message::Kind;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use crate::command::{Cmd, RejectReason, Rejection};

/// Messages to one worker's session; an `Err` ends it with that status.
pub type Outbox = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// Why a command could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// The session is closing; its departure follows.
    Closed,
    /// The worker's queue is full: its link stalled, or it cannot keep up.
    Full,
}

/// A worker's session queue, fed commands without ever waiting.
#[derive(Debug, Clone)]
pub struct Mailbox(Outbox);

impl Mailbox {
    pub fn new(outbox: Outbox) -> Self {
        Mailbox(outbox)
    }

    /// Queues `cmd` (as one message or several: a long shard is cut to fit
    /// the wire's message size).
    pub fn send(&self, cmd: Cmd) -> Result<(), Undelivered> {
        for message in encode(cmd) {
            self.0.try_send(message).map_err(|err| match err {
                mpsc::error::TrySendError::Closed(_) => Undelivered::Closed,
                mpsc::error::TrySendError::Full(_) => Undelivered::Full,
            })?;
        }
        Ok(())
    }
}

/// A command as the messages that carry it.
fn encode(cmd: Cmd) -> Vec<Result<pb::CoordinatorMessage, Status>> {
    let message = |kind| Ok(pb::CoordinatorMessage { kind: Some(kind), lane_taken: 0 });
    match cmd {
        Cmd::Shard { epoch, images, extend } => {
            shard_messages(epoch, &images, extend).into_iter().map(|m| message(Kind::Shard(m))).collect()
        }
        Cmd::Pull(pull) => vec![message(Kind::Pull(pull.into()))],
        Cmd::Weights(chunk) => vec![message(Kind::Average(chunk.into()))],
        Cmd::Reference(chunk) => vec![message(Kind::Reference(chunk.into()))],
        Cmd::Stop { reason, completed, resumable } => {
            vec![message(Kind::Stop(pb::Stop { reason, completed, resumable }))]
        }
        Cmd::Reject(rejection) => {
            let Rejection { reason, message: text } = rejection;
            vec![message(Kind::Rejected(pb::Rejected { code: code(reason) as i32, message: text }))]
        }
        Cmd::EndSession(rejection) => vec![Err(Status::from(&rejection))],
    }
}

/// The gRPC code a refusal is told with: stale and future rounds (and no
/// round at all) are OUT_OF_RANGE; malformed or non-finite weights
/// INVALID_ARGUMENT; contributions from the wrong worker or twice
/// FAILED_PRECONDITION.
pub fn code(reason: RejectReason) -> Code {
    match reason {
        RejectReason::Stale | RejectReason::Future | RejectReason::NoRound => Code::OutOfRange,
        RejectReason::NonFinite | RejectReason::Malformed => Code::InvalidArgument,
        RejectReason::NotInRound | RejectReason::Duplicate => Code::FailedPrecondition,
        RejectReason::Other => Code::Internal,
    }
}

impl From<&Rejection> for Status {
    fn from(rejection: &Rejection) -> Self {
        Status::new(code(rejection.reason), rejection.message.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::round::RoundError;

    #[test]
    fn refusals_keep_their_grpc_codes() {
        let stale = RoundError::Stale { epoch: 1, round: 2, now_epoch: 1, now_round: 3 };
        let status = Status::from(&Rejection::from(&stale));
        assert_eq!((status.code(), status.message()), (Code::OutOfRange, stale.to_string().as_str()));
        assert_eq!(code(RejectReason::from(&RoundError::Duplicate(4))), Code::FailedPrecondition);
        assert_eq!(code(RejectReason::from(&RoundError::NonFinite { worker: 1, index: 0 })), Code::InvalidArgument);
    }

    #[test]
    fn a_long_shard_goes_in_several_messages_and_only_the_first_may_replace() {
        let (tx, mut rx) = mpsc::channel(8);
        let images: Vec<u32> = (0..(lazyavg_proto::MAX_CHUNK_BYTES / 4 + 1) as u32).collect();
        Mailbox::new(tx).send(Cmd::Shard { epoch: 3, images, extend: false }).unwrap();
        let extends: Vec<bool> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|m| match m.unwrap().kind {
                Some(Kind::Shard(shard)) => shard.extend,
                other => panic!("not a shard: {other:?}"),
            })
            .collect();
        assert_eq!(extends, [false, true]);
    }

    #[test]
    fn a_full_queue_is_told_apart_from_a_closed_one() {
        let (tx, rx) = mpsc::channel(1);
        let mailbox = Mailbox::new(tx);
        let stop = || Cmd::Stop { reason: String::new(), completed: true, resumable: false };
        assert_eq!(mailbox.send(stop()), Ok(()));
        assert_eq!(mailbox.send(stop()), Err(Undelivered::Full));
        drop(rx);
        assert_eq!(mailbox.send(stop()), Err(Undelivered::Closed));
    }
}
