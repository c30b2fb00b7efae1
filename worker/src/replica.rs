//! The worker's model replica: its trainer, the training set, this epoch's
//! shard, and the weights it last sent. Synchronous and CPU-bound; the
//! session runs it off the async runtime.
//!
//! An average tagged with the round the replica last sent weights for is
//! applied as a correction, `w ← avg + (w − w_sent)`: under `--overlap` the
//! replica trained on after sending, and keeps that progress on top of the
//! average. With no step since sending it is a plain copy of the average, so
//! without `--overlap` every worker holds exactly the average, bit for bit.
//! An average that arrives while a pull trains is handed over in an
//! [`AverageSlot`] and applied between two minibatches.

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use lazyavg_common::config::RunSpec;
use lazyavg_common::dataset::Dataset;
use lazyavg_common::matching::{self, Permutation, PermutationSpec};
use lazyavg_common::train::{Progress, Trainer};
use lazyavg_proto::chunks::{decode_into, decode_values};
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
    /// The weights as last sent (valid while `awaiting` is set). Shared
    /// with the session, which encodes them for the coordinator while this
    /// replica already trains on.
    sent: Arc<Vec<f32>>,
    /// Minibatches trained since sending `sent`, while its average is awaited.
    awaiting: Option<usize>,
    slot: Arc<AverageSlot>,
    /// Which units of the model may be reordered (`--align`).
    spec: PermutationSpec,
}

/// How an average was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The weights are now exactly the average.
    Replaced,
    /// The average plus what was trained in `steps` minibatches since sending.
    Corrected { steps: usize },
}

/// An average handed from the session to the thread that is training, which
/// applies it as a correction before its next minibatch. A std mutex: held
/// for a pointer swap, once per minibatch, never across an await.
#[derive(Debug, Default)]
pub struct AverageSlot(Mutex<SlotState>);

#[derive(Debug, Default)]
struct SlotState {
    pending: Option<Vec<f32>>,
    /// A buffer to assemble the next average in, so rounds do not reallocate.
    spare: Option<Vec<f32>>,
}

impl AverageSlot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A buffer of `len` values to assemble an average in.
    pub fn buffer(&self, len: usize) -> Vec<f32> {
        match self.lock().spare.take() {
            Some(buffer) if buffer.len() == len => buffer,
            _ => vec![0.0; len],
        }
    }

    /// Hands an average to the training thread.
    pub fn put(&self, average: Vec<f32>) {
        self.lock().pending = Some(average);
    }

    /// Gives a buffer back for the next average.
    pub fn recycle(&self, buffer: Vec<f32>) {
        self.lock().spare = Some(buffer);
    }

    fn take(&self) -> Option<Vec<f32>> {
        self.lock().pending.take()
    }
}

/// `w ← avg + (w − sent)`: the average, plus what this replica trained since
/// it sent `sent`.
pub fn correct(w: &mut [f32], average: impl IntoIterator<Item = f32>, sent: &[f32]) {
    for ((w, avg), &sent) in w.iter_mut().zip(average).zip(sent) {
        *w = avg + (*w - sent);
    }
}

/// Applies a whole average to `params`: a correction when one is awaited
/// (`awaiting`, taken) and a step was trained since sending, else a copy.
fn apply(params: &mut [f32], average: &[f32], sent: &[f32], awaiting: &mut Option<usize>) -> Applied {
    match awaiting.take() {
        Some(steps) if steps > 0 => {
            correct(params, average.iter().copied(), sent);
            Applied::Corrected { steps }
        }
        _ => {
            params.copy_from_slice(average);
            Applied::Replaced
        }
    }
}

impl Replica {
    /// A replica of the run's model, with placeholder weights until the
    /// coordinator sends the current ones.
    pub fn new(spec: &RunSpec, data: Arc<Dataset>) -> Result<Self> {
        // The coordinator checked this against its own copy; a worker checks
        // again what it holds, so a stale cache or a mixed release fails here
        // and not in the middle of a batch.
        spec.model.check_data(data.input_shape(), data.label_count())?;
        let mlp = spec.model.build()?;
        let units = mlp.permutation_spec();
        let params = vec![0.0; mlp.len()];
        let sent = Arc::new(params.clone());
        let trainer = Trainer::with_params(&spec.train, mlp, params)?;
        Ok(Replica {
            trainer,
            data,
            epochs: spec.epochs,
            epoch: 0,
            shard: Vec::new(),
            sent,
            awaiting: None,
            slot: Arc::default(),
            spec: units,
        })
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

    /// Which units of the model may be reordered (to decode a `Realign`).
    pub fn units(&self) -> &PermutationSpec {
        &self.spec
    }

    /// `--align`: the coordinator reordered this replica's last contribution
    /// by `perm` before averaging; the momentum, still in this replica's own
    /// unit order, follows, so it goes on pushing each unit the way it did.
    pub fn realign(&mut self, perm: &Permutation) -> Result<()> {
        let momentum = self.trainer.momentum_mut();
        if !momentum.is_empty() {
            matching::apply(&self.spec, perm, momentum)?;
        }
        Ok(())
    }

    /// Where the session leaves an average for this replica while it trains.
    pub fn slot(&self) -> Arc<AverageSlot> {
        Arc::clone(&self.slot)
    }

    /// Takes a snapshot of the weights to send: their average will be
    /// applied as a correction of whatever is trained until it comes. The
    /// buffer is reused once the previous snapshot has been sent.
    pub fn snapshot_to_send(&mut self) -> Arc<Vec<f32>> {
        Arc::make_mut(&mut self.sent).copy_from_slice(self.trainer.params());
        self.awaiting = Some(0);
        Arc::clone(&self.sent)
    }

    /// Whether the average of the weights last sent is still to be applied.
    pub fn awaits_average(&self) -> bool {
        self.awaiting.is_some()
    }

    /// Writes one chunk of an average for `range` of the parameter buffer
    /// straight into the model: as a correction if `correction` (it is the
    /// average of the weights last sent) and a step was trained since, else
    /// as a copy. Call [`Replica::received`] after the last chunk.
    pub fn receive(&mut self, range: Range<usize>, data: &[u8], correction: bool) {
        let params = &mut self.trainer.params_mut()[range.clone()];
        match self.awaiting {
            Some(steps) if correction && steps > 0 => correct(params, decode_values(data), &self.sent[range]),
            _ => decode_into(params, data),
        }
    }

    /// The last chunk of an average went in through [`Replica::receive`].
    pub fn received(&mut self, correction: bool) -> Applied {
        match self.awaiting.take() {
            Some(steps) if correction && steps > 0 => Applied::Corrected { steps },
            _ => Applied::Replaced,
        }
    }

    /// Applies a whole average: a correction if `correction`, else a replacement.
    pub fn apply(&mut self, average: &[f32], correction: bool) -> Applied {
        if !correction {
            self.awaiting = None;
        }
        apply(self.trainer.params_mut(), average, &self.sent, &mut self.awaiting)
    }

    /// Applies an average left in the slot that training finished too soon to take.
    pub fn apply_pending(&mut self) -> Option<Applied> {
        let average = self.slot.take()?;
        let applied = self.apply(&average, true);
        self.slot.recycle(average);
        Some(applied)
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

    /// Trains the pulled range of the shard and reports on it. An average put
    /// in the slot meanwhile is applied before the next minibatch.
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
        let Replica { trainer, data, shard, sent, awaiting, slot, .. } = self;
        let mut applying = 0.0;
        let stats = trainer.train_with(data, &shard[from..until], progress, |params| {
            if let Some(average) = slot.take() {
                let started = Instant::now();
                apply(params, &average, sent, awaiting);
                slot.recycle(average);
                applying += started.elapsed().as_secs_f64();
            }
            if let Some(steps) = awaiting.as_mut() {
                *steps += 1;
            }
        });
        Ok(pb::RoundReport {
            epoch: pull.epoch,
            round: pull.round,
            loss_sum: stats.loss_sum,
            samples: stats.samples as u64,
            // Time in SGD steps, not in applying an average.
            train_seconds: (started.elapsed().as_secs_f64() - applying).max(0.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use lazyavg_common::config::TrainConfig;
    use lazyavg_common::idx::Images;
    use lazyavg_common::rng::StreamRng;
    use lazyavg_common::spec::InputShape;
    use lazyavg_proto::convert::encode_indices;
    use rand::{RngExt, SeedableRng};

    use super::*;

    #[test]
    fn a_replica_refuses_a_dataset_its_model_cannot_take() {
        let grey = InputShape { channels: 1, height: 2, width: 2 };
        let model = lazyavg_common::spec::ModelSpec::mlp(grey, &[3], 5);
        let spec = RunSpec { model, train: TrainConfig::default(), epochs: 1 };
        let refusal = |shape: InputShape, label: u8| {
            let images = Images { count: 1, shape, pixels: vec![0; shape.len()] };
            let data = Arc::new(Dataset::new(images, vec![label], "toy").unwrap());
            Replica::new(&spec, data).err().map(|e| e.to_string())
        };
        assert_eq!(refusal(grey, 4), None);
        let colour = InputShape { channels: 3, height: 2, width: 2 };
        let err = refusal(colour, 0).expect("another shape is refused");
        assert!(err.contains("model expects 1x2x2 inputs, the data has 3x2x2 images"), "{err}");
        let err = refusal(grey, 7).expect("a label beyond the outputs is refused");
        assert!(err.contains("model has 5 outputs, the data's labels go up to 7"), "{err}");
    }

    #[test]
    fn a_replica_whose_units_and_momentum_were_reordered_trains_on_as_the_same_model() {
        let mut rng = StreamRng::seed_from_u64(4);
        let pixels: Vec<u8> = (0..64 * 6).map(|_| rng.random_range(0..256) as u8).collect();
        let labels: Vec<u8> = (0..64).map(|_| rng.random_range(0..10) as u8).collect();
        let data = Arc::new(
            Dataset::new(
                Images { count: 64, shape: InputShape { channels: 1, height: 2, width: 3 }, pixels },
                labels,
                "toy",
            )
            .unwrap(),
        );
        let train = TrainConfig { batch_size: 8, momentum: 0.9, ..TrainConfig::default() };
        let model = lazyavg_common::spec::ModelSpec::from_widths(&[6, 7, 5, 10]).unwrap();
        let spec = RunSpec { model, train, epochs: 1 };
        let shard =
            pb::AssignShard { epoch: 1, indices: encode_indices(&(0..64).collect::<Vec<_>>()).into(), extend: false };
        let pull =
            |from, until| pb::PullWeights { epoch: 1, round: 1, train_from: from, train_until: until, after_round: 0 };
        let start = spec.model.build().unwrap().init_with(&mut rng);
        let replica = || {
            let mut r = Replica::new(&spec, Arc::clone(&data)).unwrap();
            r.assign(&shard).unwrap();
            r.apply(&start, false);
            r.train(&pull(0, 32)).unwrap();
            r
        };
        let perm = Permutation::random(replica().units(), &mut rng);
        let run = |realign: bool| {
            let (mut a, mut b) = (replica(), replica());
            // What --align does to b: the coordinator reorders its weights, the worker its momentum.
            let mut moved = b.params().to_vec();
            matching::apply(b.units(), &perm, &mut moved).unwrap();
            b.apply(&moved, false);
            if realign {
                b.realign(&perm).unwrap();
            }
            a.train(&pull(32, 64)).unwrap();
            b.train(&pull(32, 64)).unwrap();
            let mut expected = a.params().to_vec();
            matching::apply(a.units(), &perm, &mut expected).unwrap();
            expected.iter().zip(b.params()).map(|(e, v)| (e - v).abs()).fold(0.0f32, f32::max)
        };
        assert!(run(true) < 1e-5, "reordered momentum: {}", run(true));
        assert!(run(false) > 1e-3, "momentum left in the old order pushes the wrong units: {}", run(false));
    }

    #[test]
    fn the_correction_adds_the_local_progress_to_the_average() {
        let sent = [1.0f32, 2.0, -3.0, 0.5];
        let mut w = [1.5f32, 2.0, -2.0, 0.25];
        let average = [0.0f32, 1.0, -1.0, 1.0];
        correct(&mut w, average, &sent);
        assert_eq!(w, [0.5, 1.0, 0.0, 0.75]);
    }

    #[test]
    fn without_a_step_since_sending_the_average_is_copied_bit_for_bit() {
        // -0.0 + (w - w) would give +0.0: a copy keeps every bit.
        let average = [-0.0f32, 1.0e-30, f32::MAX, 3.0];
        let sent = [5.0f32, -1.0, 2.0, 7.0];
        let mut w = sent;
        let mut awaiting = Some(0);
        assert_eq!(apply(&mut w, &average, &sent, &mut awaiting), Applied::Replaced);
        assert!(w.iter().zip(&average).all(|(a, b)| a.to_bits() == b.to_bits()), "{w:?}");
        assert_eq!(awaiting, None, "the awaited average was applied");
        // Not awaited (another round's average): a copy even after steps.
        let mut w = [9.0f32; 4];
        assert_eq!(apply(&mut w, &average, &sent, &mut None), Applied::Replaced);
        assert_eq!(w.map(f32::to_bits), average.map(f32::to_bits));
    }

    #[test]
    fn after_steps_the_awaited_average_is_a_correction_chunk_by_chunk_or_whole() {
        let sent: Vec<f32> = (0..10).map(|i| i as f32 * 0.25).collect();
        let trained: Vec<f32> = sent.iter().map(|v| v + 0.125).collect();
        let average: Vec<f32> = (0..10).map(|i| 1.0 - i as f32 * 0.5).collect();
        let expected: Vec<f32> = average.iter().map(|a| a + 0.125).collect();

        let mut whole = trained.clone();
        let applied = apply(&mut whole, &average, &sent, &mut Some(3));
        assert_eq!((applied, &whole), (Applied::Corrected { steps: 3 }, &expected));

        let bytes: Vec<u8> = average.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut chunked = trained.clone();
        for (range, data) in [(0..4, &bytes[..16]), (4..10, &bytes[16..])] {
            correct(&mut chunked[range.clone()], decode_values(data), &sent[range]);
        }
        assert_eq!(chunked, expected);
    }

    #[test]
    fn the_slot_hands_over_one_average_and_recycles_buffers() {
        let slot = AverageSlot::default();
        assert!(slot.take().is_none());
        let buffer = slot.buffer(3);
        assert_eq!(buffer, [0.0; 3]);
        slot.put(vec![1.0, 2.0, 3.0]);
        let taken = slot.take().expect("pending");
        assert!(slot.take().is_none(), "taken once");
        slot.recycle(taken);
        assert_eq!(slot.buffer(3), [1.0, 2.0, 3.0], "the spare comes back");
        assert_eq!(slot.buffer(3), [0.0; 3], "and only once");
        slot.recycle(vec![1.0; 2]);
        assert_eq!(slot.buffer(3).len(), 3, "a spare of another length is not used");
    }
}
