//! The worker's model replica: its trainer, the training set and this epoch's
//! shard. Synchronous and CPU-bound; the session runs it off the async runtime.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use lazyavg_common::config::RunSpec;
use lazyavg_common::dataset::Dataset;
use lazyavg_common::model::Mlp;
use lazyavg_common::train::{Progress, Trainer};
use lazyavg_proto::chunks::decode_into;
use lazyavg_proto::convert::decode_indices;
use lazyavg_proto::{ProtoError, pb};

use crate::error::{Error, Result};

#[derive(Debug)]
pub struct Replica {
    trainer: Trainer,
    data: Arc<Dataset>,
    epochs: usize,
    epoch: u64,
    shard: Vec<u32>,
    /// Seconds spent in SGD steps since the session started.
    pub train_seconds: f64,
}

impl Replica {
    /// A replica of the run's model, with placeholder weights until the
    /// coordinator sends the current ones.
    pub fn new(spec: &RunSpec, data: Arc<Dataset>) -> Result<Self> {
        if data.image_len() != spec.arch.inputs() {
            return Err(ProtoError::Config(format!(
                "the model takes {} inputs but the dataset's images have {} pixels",
                spec.arch.inputs(),
                data.image_len()
            ))
            .into());
        }
        let mlp = Mlp::new(spec.arch.clone());
        let params = vec![0.0; mlp.len()];
        let trainer = Trainer::with_params(&spec.train, mlp, params)?;
        Ok(Replica { trainer, data, epochs: spec.epochs, epoch: 0, shard: Vec::new(), train_seconds: 0.0 })
    }

    pub fn len(&self) -> usize {
        self.trainer.params().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn params(&self) -> &[f32] {
        self.trainer.params()
    }

    /// Writes received weights for `range` of the parameter buffer straight
    /// into the model (no staging copy).
    pub fn receive(&mut self, range: Range<usize>, data: &[u8]) {
        decode_into(&mut self.trainer.params_mut()[range], data);
    }

    /// Replaces or extends the shard.
    pub fn assign(&mut self, msg: &pb::AssignShard) -> Result<()> {
        let indices = decode_indices(&msg.indices)?;
        if let Some(&bad) = indices.iter().find(|&&i| i as usize >= self.data.len()) {
            return Err(Error::Protocol(ProtoError::Config(format!(
                "shard index {bad} is outside the training set of {} images",
                self.data.len()
            ))));
        }
        if msg.extend && msg.epoch == self.epoch {
            self.shard.extend_from_slice(&indices);
        } else {
            self.epoch = msg.epoch;
            self.shard = indices;
        }
        Ok(())
    }

    /// Trains the pulled range of the shard and reports on it.
    pub fn train(&mut self, pull: &pb::PullWeights) -> Result<pb::RoundReport> {
        let (from, until) = (pull.train_from as usize, pull.train_until as usize);
        if pull.epoch != self.epoch || from > until || until > self.shard.len() {
            return Err(Error::Protocol(ProtoError::Config(format!(
                "pull of positions {from}..{until} in epoch {} does not fit the shard of {} images for epoch {}",
                pull.epoch,
                self.shard.len(),
                self.epoch
            ))));
        }
        let started = Instant::now();
        let epoch_index = (pull.epoch as usize).saturating_sub(1);
        let progress = Progress::in_epoch(epoch_index, self.epochs, from, self.shard.len());
        let stats = self.trainer.train(&self.data, &self.shard[from..until], progress);
        let seconds = started.elapsed().as_secs_f64();
        self.train_seconds += seconds;
        Ok(pb::RoundReport {
            epoch: pull.epoch,
            round: pull.round,
            loss_sum: stats.loss_sum,
            samples: stats.samples as u64,
            train_seconds: seconds,
        })
    }
}
