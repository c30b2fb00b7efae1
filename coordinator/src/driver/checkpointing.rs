//! Checkpoints from the driver's side: after every epoch (written by its
//! close, see `closing`), and on the way out mid-epoch with the images still
//! untrained.

use std::path::Path;

use super::Driver;
use crate::checkpoint::{self, Checkpoint, Fault};
use crate::observe::{Observers, RunEvent};
use lazyavg_common::spec::ModelSpec;

impl Driver {
    /// On the way out mid-epoch (signal, too few workers): records the epoch's
    /// untrained images with the current average, so `--resume` goes on from here.
    pub(super) fn checkpoint_mid_epoch(&self) {
        // Before training started, the last checkpoint still says it all.
        if self.training_started.is_none() {
            return;
        }
        let epoch = self.epoch.epoch();
        // An empty list means every image was averaged in: the epoch is complete.
        let checkpoint = self.snapshot(epoch, self.epoch.remaining());
        let fault = self.config.checkpoint_fault(epoch);
        write_checkpoint(&self.config.out_dir, self.mlp.spec(), &checkpoint, fault, &self.observers);
    }

    /// The current model and outer velocity as epoch `epoch` with
    /// `remaining` images still to train.
    pub(super) fn snapshot(&self, epoch: u64, remaining: Vec<u32>) -> Checkpoint {
        let round = if remaining.is_empty() || self.version.0 != epoch { 0 } else { self.version.1 };
        let (params, outer_velocity) = (self.model.params.to_vec(), self.model.outer.velocity().to_vec());
        Checkpoint { epoch, remaining, round, params, outer_velocity }
    }
}

/// Writes `checkpoint` into `dir` (with `fault` injected, in tests) and
/// tells `observers` the outcome. A failure is reported, not fatal: training
/// goes on, and the previous checkpoint stays usable.
pub(super) fn write_checkpoint(
    dir: &Path,
    arch: &ModelSpec,
    checkpoint: &Checkpoint,
    fault: Option<Fault>,
    observers: &Observers,
) {
    match checkpoint::save_with_fault(dir, arch, checkpoint, fault) {
        Ok(path) => observers.notify(&RunEvent::CheckpointWritten { checkpoint, path: &path }),
        Err(error) => observers.notify(&RunEvent::CheckpointFailed { error: &error }),
    }
}
