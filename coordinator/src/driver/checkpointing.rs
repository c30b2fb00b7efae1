//! Checkpoints from the driver's side: after every epoch, and on the way out
//! mid-epoch with the images still untrained.

use lazyavg_common::params::digest;
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
        self.save_checkpoint(self.epoch, remaining);
    }

    /// Writes the current model and outer velocity as epoch `epoch` with
    /// `remaining` images still to train.
    pub(super) fn save_checkpoint(&self, epoch: u64, remaining: Vec<u32>) {
        let checkpoint = Checkpoint {
            epoch,
            remaining,
            params: self.params.clone(),
            outer_velocity: self.outer.velocity().to_vec(),
        };
        let digest = digest(&checkpoint.params);
        match checkpoint::save(&self.config.out_dir, self.mlp.arch(), &checkpoint) {
            Ok(path) => info!(
                epoch = checkpoint.epoch,
                remaining = checkpoint.remaining.len(),
                digest,
                path = %path.display(),
                "checkpoint written"
            ),
            Err(e) => warn!(error = %e, "cannot write checkpoint"),
        }
    }
}
