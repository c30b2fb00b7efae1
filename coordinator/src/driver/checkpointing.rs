//! Checkpoints from the driver's side: after every epoch (written by its
//! close, see `closing`), and on the way out mid-epoch with the images still
//! untrained.

use std::path::Path;

use lazyavg_common::params::{Architecture, digest};
use lazyavg_common::telemetry::error_chain;
use tracing::{info, warn};

use super::Driver;
use crate::checkpoint::{self, Checkpoint};

impl Driver {
    /// On the way out mid-epoch (signal, too few workers): records the epoch's
    /// untrained images with the current average, so `--resume` goes on from here.
    pub(super) fn checkpoint_mid_epoch(&self) {
        if self.epoch < self.first_epoch {
            return;
        }
        let mut remaining: Vec<u32> = self.orphans.clone();
        for shard in self.workers.values().filter_map(|w| w.shard.as_ref()) {
            remaining.extend_from_slice(&shard.indices[shard.done..]);
        }
        if let Some(pending) = &self.resume_remaining {
            remaining.extend_from_slice(pending);
        }
        // An empty list means every image was averaged in: the epoch is complete.
        write_checkpoint(&self.config.out_dir, self.mlp.arch(), &self.snapshot(self.epoch, remaining));
    }

    /// The current model and outer velocity as epoch `epoch` with
    /// `remaining` images still to train.
    pub(super) fn snapshot(&self, epoch: u64, remaining: Vec<u32>) -> Checkpoint {
        Checkpoint { epoch, remaining, params: self.params.clone(), outer_velocity: self.outer.velocity().to_vec() }
    }
}

/// Writes `checkpoint` into `dir` and logs the outcome. A failure is logged,
/// not fatal: training goes on, and the previous checkpoint stays usable.
pub(super) fn write_checkpoint(dir: &Path, arch: &Architecture, checkpoint: &Checkpoint) {
    match checkpoint::save(dir, arch, checkpoint) {
        Ok(path) => info!(
            epoch = checkpoint.epoch,
            remaining = checkpoint.remaining.len(),
            digest = digest(&checkpoint.params),
            path = %path.display(),
            "checkpoint written"
        ),
        Err(e) => warn!(error = %error_chain(&e), "cannot write checkpoint"),
    }
}
