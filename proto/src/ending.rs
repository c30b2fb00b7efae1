//! How a coordinator whose run has completed, but which is still up (its
//! `--end-grace` or `--metrics-linger`), refuses Join, and how a worker
//! recognises it: a worker that missed the run's end (stopped, or cut off
//! near the end) then learns that the run is over instead of guessing it
//! from silence.
//!
//! The refusal is `FAILED_PRECONDITION`, like a protocol-version mismatch,
//! so a worker of an older release stops retrying too; the metadata entry
//! tells the two apart without reading the message.

use tonic::{Code, Status};

/// Metadata key of the refusal; its value is [`COMPLETED`].
pub const RUN_STATE: &str = "lazyavg-run";
pub const COMPLETED: &str = "completed";

/// The coordinator's answer to a Join after its run completed.
pub fn run_completed() -> Status {
    let mut status = Status::failed_precondition("the run has completed");
    status.metadata_mut().insert(RUN_STATE, tonic::metadata::MetadataValue::from_static(COMPLETED));
    status
}

/// Whether `status` is [`run_completed`]'s refusal.
pub fn is_run_completed(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition && status.metadata().get(RUN_STATE).is_some_and(|v| v == COMPLETED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_completed_refusal_is_recognised() {
        assert!(is_run_completed(&run_completed()));
        let version = Status::failed_precondition("worker speaks protocol version 2");
        assert!(!is_run_completed(&version), "a version mismatch is not the run's end");
        let mut unavailable = Status::unavailable("the run has completed");
        unavailable.metadata_mut().insert(RUN_STATE, tonic::metadata::MetadataValue::from_static(COMPLETED));
        assert!(!is_run_completed(&unavailable), "only FAILED_PRECONDITION");
    }
}
