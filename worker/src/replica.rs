//! The worker's model replica: its trainer, the training set, this epoch's
//! shard, and the weights it last sent. Synchronous and CPU-bound; the
//! session trains it a minibatch at a time ([`Replica::step`]) between the
//! coordinator's messages.
//!
//! An average tagged with the round the replica last sent weights for is
//! applied as a correction, `w ← avg + (w − w_sent)`: under `--overlap` the
//! replica trained on after sending, and keeps that progress on top of the
//! average. With no step since sending it is a plain copy of the average, so
//! without `--overlap` every worker holds exactly the average, bit for bit.
//! An average that arrives while a pull trains is applied between two of
//! its minibatches.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lazyavg_common::config::RunSpec;
use lazyavg_common::dataset::Dataset;
use lazyavg_common::matching::ContributionAligner;
use lazyavg_common::memory::{SharedWeights, WeightsMemory};
use lazyavg_common::params::first_non_finite;
use lazyavg_common::train::{Progress, Stretch, Trainer};
use lazyavg_proto::chunks::{decode_into, decode_values, shared_values};
use lazyavg_proto::convert::decode_indices;
use lazyavg_proto::{ProtoError, pb};
use tracing::debug;

use crate::error::{Error, Result};

#[derive(Debug)]
pub struct Replica {
    trainer: Trainer,
    data: Arc<Dataset>,
    epochs: usize,
    epoch: u64,
    shard: Vec<u32>,
    /// The weights as last sent (valid while `awaiting` is set): the
    /// trainer's own, shared, not copied, until one of them changes
    /// ([`Trainer::shared_params`]). The session sends them as they are.
    sent: Option<SharedWeights>,
    /// Minibatches trained since sending `sent`, while its average is awaited.
    awaiting: Option<usize>,
    /// `--align`: matches the weights trained for a round to its start.
    aligner: Option<ContributionAligner>,
    /// `--align`: the round's start, which the trained weights are matched
    /// to; empty without `--align`.
    start: Vec<f32>,
    /// `--align`: `start` holds the reference the coordinator sent (an
    /// `--init independent` worker's first round), not the weights the
    /// round began from.
    start_given: bool,
}

/// How an average was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The weights are now exactly the average.
    Replaced,
    /// The average plus what was trained in `steps` minibatches since sending.
    Corrected { steps: usize },
}

/// Where a pull stands, a minibatch at a time: [`Replica::begin`] starts
/// it, [`Replica::step`] trains each minibatch, [`Replica::finish`] reports.
#[derive(Debug)]
pub struct PullTraining {
    /// The pulled positions in the shard.
    positions: Range<usize>,
    stretch: Stretch,
    /// Seconds spent in its SGD steps (not between them).
    seconds: f64,
    /// Once every minibatch is trained: whether `--align` moved any unit,
    /// and the seconds that took.
    aligned: Option<Result<(bool, f64)>>,
}

impl PullTraining {
    /// Whether every minibatch of the pull is trained.
    pub fn is_trained(&self) -> bool {
        self.stretch.stats().samples >= self.positions.len()
    }
}

/// `w ← avg + (w − sent)`: the average, plus what this replica trained since
/// it sent `sent`.
pub fn correct(w: &mut [f32], average: impl IntoIterator<Item = f32>, sent: &[f32]) {
    debug_assert_eq!(w.len(), sent.len(), "a correction needs the weights sent at every position");
    for ((w, avg), sent) in w.iter_mut().zip(average).zip(sent) {
        *w = avg + (*w - sent);
    }
}

/// The weights last sent, if any (none: nothing to correct by).
fn sent_values(sent: &Option<SharedWeights>) -> &[f32] {
    sent.as_deref().map_or(&[], WeightsMemory::values)
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
        let aligner = ContributionAligner::for_run(spec.align, &mlp, spec.train.seed, &data, spec.align_images);
        let start = if aligner.is_some() { vec![0.0; mlp.len()] } else { Vec::new() };
        let params = vec![0.0; mlp.len()];
        let trainer = Trainer::with_params(&spec.train, mlp, params)?;
        Ok(Replica {
            trainer,
            data,
            epochs: spec.epochs,
            epoch: 0,
            shard: Vec::new(),
            sent: None,
            awaiting: None,
            aligner,
            start,
            start_given: false,
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

    /// `--align` with `--init independent`: writes one chunk of the
    /// coordinator's weights, which the next round's contribution is matched
    /// to instead of the weights it starts from. Call
    /// [`Replica::reference_received`] after the last chunk.
    pub fn receive_reference(&mut self, range: Range<usize>, data: &[u8]) -> Result<()> {
        let Some(start) = self.start.get_mut(range.clone()) else {
            return Err(Error::Protocol(ProtoError::Config(format!(
                "reference weights for positions {range:?}, but this run does not align (--align none)"
            ))));
        };
        decode_into(start, data);
        Ok(())
    }

    /// The last chunk of the reference went in through [`Replica::receive_reference`].
    pub fn reference_received(&mut self) {
        self.start_given = true;
    }

    /// Keeps the weights in `memory` from now on, with `spare` for the copy
    /// a change makes while they are held (see [`Trainer::keep_weights_in`]):
    /// a worker's lane, where the coordinator reads them in place.
    pub fn keep_weights_in(&mut self, [memory, spare]: [Box<dyn WeightsMemory>; 2]) -> bool {
        self.trainer.keep_weights_in(memory, spare)
    }

    /// The weights to send, as the wire's bytes, and kept as sent: their
    /// average will be applied as a correction of whatever is trained until
    /// it comes. They are the trainer's own weights, not a copy: training
    /// on copies them first (into the buffer of the weights sent before,
    /// once the session has let go of those).
    pub fn snapshot_to_send(&mut self) -> Bytes {
        let weights = self.trainer.shared_params();
        self.release_sent();
        self.sent = Some(Arc::clone(&weights));
        self.awaiting = Some(0);
        shared_values(weights)
    }

    /// Lets go of the weights last sent, so that the trainer may write
    /// their buffer again: no average will correct by them (none is
    /// awaited any more).
    fn release_sent(&mut self) {
        self.awaiting = None;
        self.sent = None;
    }

    /// Whether an average now is a correction: it is the average of the
    /// weights last sent (`correction`) and a step was trained since.
    fn corrects(&self, correction: bool) -> bool {
        matches!(self.awaiting, Some(steps) if correction && steps > 0)
    }

    /// Writes one chunk of an average for `range` of the parameter buffer
    /// straight into the model: as a correction if `correction` (it is the
    /// average of the weights last sent) and a step was trained since, else
    /// as a copy. Call [`Replica::received`] after the last chunk.
    pub fn receive(&mut self, range: Range<usize>, data: &[u8], correction: bool) {
        let corrects = self.corrects(correction);
        if !corrects {
            // Before writing: while held, the weights sent share the model's buffer.
            self.release_sent();
        }
        let params = &mut self.trainer.params_mut()[range.clone()];
        match corrects {
            true => correct(params, decode_values(data), &sent_values(&self.sent)[range]),
            false => decode_into(params, data),
        }
    }

    /// The last chunk of an average went in through [`Replica::receive`].
    pub fn received(&mut self, correction: bool) -> Applied {
        let applied = match self.awaiting.take() {
            Some(steps) if correction && steps > 0 => Applied::Corrected { steps },
            _ => Applied::Replaced,
        };
        self.release_sent();
        self.replaced_by(applied);
        applied
    }

    /// Applies a whole average: a correction if `correction`, else a replacement.
    pub fn apply(&mut self, average: &[f32], correction: bool) -> Applied {
        if !self.corrects(correction) {
            self.release_sent();
        }
        let applied = apply(self.trainer.params_mut(), average, sent_values(&self.sent), &mut self.awaiting);
        self.release_sent();
        self.replaced_by(applied);
        applied
    }

    /// `--align`: weights that replaced the ones a reference was sent for
    /// (a worker that joined while a round ran gets that round's average
    /// first) are the next round's start, and the reference is stale. The
    /// reference itself comes after the weights it goes with.
    fn replaced_by(&mut self, applied: Applied) {
        if applied == Applied::Replaced {
            self.start_given = false;
        }
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

    /// Starts training the pulled range of the shard, once it is checked to fit.
    pub fn begin(&mut self, pull: &pb::PullWeights) -> Result<PullTraining> {
        let (from, until) = (pull.train_from as usize, pull.train_until as usize);
        if pull.epoch != self.epoch || from > until || until > self.shard.len() {
            return Err(Error::Protocol(ProtoError::Config(format!(
                "pull of positions {from}..{until} in epoch {} does not fit the shard of {} images for epoch {}",
                pull.epoch,
                self.shard.len(),
                self.epoch
            ))));
        }
        if self.aligner.is_some() && !self.start_given {
            self.start.copy_from_slice(self.trainer.params());
        }
        let epoch_index = (pull.epoch as usize).saturating_sub(1);
        let progress = Progress::in_epoch(epoch_index, self.epochs, from, self.shard.len());
        Ok(PullTraining { positions: from..until, stretch: Stretch::new(progress), seconds: 0.0, aligned: None })
    }

    /// Whether the weights are aligned to the round's start once a pull is
    /// trained (`--align`), which takes as long as several minibatches.
    pub fn aligns(&self) -> bool {
        self.aligner.is_some()
    }

    /// Trains the next minibatch of `training`, and once none is left
    /// aligns the weights (`--align`); returns how long the minibatch took,
    /// or `None` if none was left. Between two steps an average may be
    /// applied: the next step trains on from it.
    pub fn step(&mut self, training: &mut PullTraining) -> Option<Duration> {
        let started = Instant::now();
        // `begin` checked that the positions fit the shard, which does not
        // change while a pull trains.
        let samples = &self.shard[training.positions.clone()];
        let took = self.trainer.step(&self.data, samples, &mut training.stretch).then(|| started.elapsed());
        if let Some(took) = took {
            if let Some(steps) = self.awaiting.as_mut() {
                *steps += 1;
            }
            training.seconds += took.as_secs_f64();
        }
        if training.is_trained() && training.aligned.is_none() {
            training.aligned = Some(self.align_to_start());
        }
        took
    }

    /// Ends `pull`, whose minibatches are all trained ([`Replica::step`]
    /// said so): reports on it.
    pub fn finish(&mut self, pull: &pb::PullWeights, training: PullTraining) -> Result<pb::RoundReport> {
        let stats = training.stretch.stats();
        debug_assert!(training.aligned.is_some(), "finished before its last step");
        let (realigned, align_seconds) = training.aligned.unwrap_or(Ok((false, 0.0)))?;
        if self.aligner.is_some() {
            let (epoch, round, align_ms) = (pull.epoch, pull.round, align_seconds * 1e3);
            debug!(epoch, round, realigned, align_ms, "contribution aligned to the round's start (--align)");
        }
        Ok(pb::RoundReport {
            epoch: pull.epoch,
            round: pull.round,
            loss_sum: stats.loss_sum,
            samples: stats.samples as u64,
            train_seconds: training.seconds,
            realigned,
            align_seconds,
        })
    }

    /// `--align`: reorders the trained weights' hidden units to match the
    /// round's start, and the momentum's alike, so that it goes on pushing
    /// each unit as before. Returns whether any unit moved, and the seconds
    /// it took.
    fn align_to_start(&mut self) -> Result<(bool, f64)> {
        let Some(aligner) = &self.aligner else { return Ok((false, 0.0)) };
        let started = Instant::now();
        self.start_given = false;
        // Diverged weights cannot be matched (their scores are not finite);
        // sent as they are, the coordinator's non-finite handling takes them.
        if first_non_finite(self.trainer.params()).is_some() {
            return Ok((false, 0.0));
        }
        let perm = aligner.find(&self.start, self.trainer.params())?;
        let moved = !perm.is_identity();
        if moved {
            aligner.reorder(&perm, self.trainer.params_mut())?;
            let momentum = self.trainer.momentum_mut();
            if !momentum.is_empty() {
                aligner.reorder(&perm, momentum)?;
            }
        }
        Ok((moved, started.elapsed().as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use lazyavg_common::config::TrainConfig;
    use lazyavg_common::idx::Images;
    use lazyavg_common::matching::{self, AlignMethod, Permutation};
    use lazyavg_common::rng::StreamRng;
    use lazyavg_common::spec::InputShape;
    use lazyavg_proto::chunks::Values;
    use lazyavg_proto::convert::encode_indices;
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// Trains a whole pull, a minibatch at a time, and reports on it.
    fn train_pull(replica: &mut Replica, pull: pb::PullWeights) -> Result<pb::RoundReport> {
        let mut training = replica.begin(&pull)?;
        while replica.step(&mut training).is_some() {}
        replica.finish(&pull, training)
    }

    #[test]
    fn a_replica_refuses_a_dataset_its_model_cannot_take() {
        let grey = InputShape { channels: 1, height: 2, width: 2 };
        let model = lazyavg_common::spec::ModelSpec::mlp(grey, &[3], 5);
        let spec =
            RunSpec { model, train: TrainConfig::default(), epochs: 1, align: AlignMethod::None, align_images: 0 };
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
    fn weights_are_sent_without_a_copy_and_an_average_while_they_are_held_leaves_them_be() {
        let grey = InputShape { channels: 1, height: 2, width: 2 };
        let model = lazyavg_common::spec::ModelSpec::mlp(grey, &[3], 5);
        let spec =
            RunSpec { model, train: TrainConfig::default(), epochs: 1, align: AlignMethod::None, align_images: 0 };
        let images = Images { count: 1, shape: grey, pixels: vec![0; grey.len()] };
        let mut replica = Replica::new(&spec, Arc::new(Dataset::new(images, vec![0], "toy").unwrap())).unwrap();
        let weights: Vec<f32> = (0..replica.params().len()).map(|i| i as f32 * 0.5).collect();
        replica.apply(&weights, false);
        let decoded = |bytes: &Bytes| Values::new(bytes).iter().collect::<Vec<_>>();
        let model_bytes = |replica: &Replica| replica.params().as_ptr().cast::<u8>();
        let sent = replica.snapshot_to_send();
        assert_eq!((decoded(&sent), sent.as_ptr()), (weights.clone(), model_bytes(&replica)), "the model's own bytes");
        // An average while the session still holds them: the model is copied
        // first, what goes out stays as it was.
        let average: Vec<f32> = weights.iter().map(|w| w + 1.0).collect();
        replica.apply(&average, true);
        assert_eq!((replica.params(), decoded(&sent)), (&average[..], weights.clone()));
        assert_ne!(sent.as_ptr(), model_bytes(&replica));
        // Sent and let go of before the average comes: written in place.
        drop(sent);
        let sent = replica.snapshot_to_send();
        let model = model_bytes(&replica);
        drop(sent);
        replica.apply(&weights, true);
        assert_eq!((replica.params(), model_bytes(&replica)), (&weights[..], model));
    }

    /// `--align weights` on a replica trained from a reordering of the
    /// reference it was sent (an `--init independent` worker's first round):
    /// its contribution comes back in the reference's order, and so does its
    /// momentum, so the next round trains on as the unpermuted replica does.
    /// A reference that later weights replaced is dropped.
    #[test]
    fn a_contribution_is_aligned_to_the_reference_and_the_momentum_follows() {
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
        let model = lazyavg_common::spec::ModelSpec::from_widths(&[6, 12, 10, 10]).unwrap();
        let spec = RunSpec { model, train, epochs: 1, align: AlignMethod::Weights, align_images: 0 };
        let shard =
            pb::AssignShard { epoch: 1, indices: encode_indices(&(0..64).collect::<Vec<_>>()).into(), extend: false };
        let pull = |round, from, until| pb::PullWeights {
            epoch: 1,
            round,
            train_from: from,
            train_until: until,
            after_round: 0,
        };
        let net = spec.model.build().unwrap();
        let start = net.init_with(&mut rng);
        let units = net.permutation_spec();
        let perm = Permutation::random(&units, &mut rng);
        let mut moved = start.clone();
        matching::apply(&units, &perm, &mut moved).unwrap();
        let bytes: Vec<u8> = start.iter().flat_map(|v| v.to_le_bytes()).collect();

        let replica = |from: &[f32]| {
            let mut r = Replica::new(&spec, Arc::clone(&data)).unwrap();
            r.assign(&shard).unwrap();
            r.apply(from, false);
            r
        };
        let (mut plain, mut permuted) = (replica(&start), replica(&moved));
        permuted.receive_reference(0..start.len(), &bytes).unwrap();
        permuted.reference_received();
        let gap = |a: &Replica, b: &Replica| {
            a.params().iter().zip(b.params()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
        };
        assert!(gap(&plain, &permuted) > 1e-2, "the two start in different orders");
        // A reference that weights sent after it replaced is stale (a worker
        // that joined while a round ran): the round starts from those weights.
        let mut late = replica(&moved);
        let moved_bytes: Vec<u8> = moved.iter().flat_map(|v| v.to_le_bytes()).collect();
        late.receive_reference(0..moved.len(), &moved_bytes).unwrap();
        late.reference_received();
        late.apply(&start, false);
        assert!(!train_pull(&mut late, pull(1, 0, 32)).unwrap().realigned, "matched to a stale reference");
        let (first, second) =
            (train_pull(&mut plain, pull(1, 0, 32)).unwrap(), train_pull(&mut permuted, pull(1, 0, 32)).unwrap());
        assert_eq!((first.realigned, second.realigned), (false, true));
        assert_eq!(late.params(), plain.params(), "trained from the same weights in the same order");
        assert!(gap(&plain, &permuted) < 1e-5, "aligned to the reference: {}", gap(&plain, &permuted));
        // The next round starts from these weights: nothing moves, and the
        // momentum, reordered with them, pushes the same units.
        let (first, second) =
            (train_pull(&mut plain, pull(2, 32, 64)).unwrap(), train_pull(&mut permuted, pull(2, 32, 64)).unwrap());
        assert_eq!((first.realigned, second.realigned), (false, false));
        assert!(gap(&plain, &permuted) < 1e-5, "momentum followed: {}", gap(&plain, &permuted));
    }

    /// An average of the weights sent, applied between two minibatches of
    /// the next pull, keeps what those minibatches trained on top of it, and
    /// the pull trains on from there.
    #[test]
    fn an_average_between_two_steps_is_a_correction_by_the_steps_since_sending() {
        let shape = InputShape { channels: 1, height: 2, width: 2 };
        let mut rng = StreamRng::seed_from_u64(8);
        let pixels: Vec<u8> = (0..24 * 4).map(|_| rng.random_range(0..256) as u8).collect();
        let labels: Vec<u8> = (0..24).map(|_| rng.random_range(0..3) as u8).collect();
        let data = Arc::new(Dataset::new(Images { count: 24, shape, pixels }, labels, "toy").unwrap());
        let train = TrainConfig { batch_size: 8, ..TrainConfig::default() };
        let model = lazyavg_common::spec::ModelSpec::mlp(shape, &[5], 3);
        let spec = RunSpec { model, train, epochs: 1, align: AlignMethod::None, align_images: 0 };
        let mut replica = Replica::new(&spec, data).unwrap();
        let shard = encode_indices(&(0..24).collect::<Vec<_>>()).into();
        replica.assign(&pb::AssignShard { epoch: 1, indices: shard, extend: false }).unwrap();
        let start: Vec<f32> = (0..replica.len()).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        replica.apply(&start, false);
        let sent = Values::new(&replica.snapshot_to_send()).iter().collect::<Vec<_>>();
        let pull = pb::PullWeights { epoch: 1, round: 2, train_from: 0, train_until: 24, after_round: 1 };
        let mut training = replica.begin(&pull).unwrap();
        assert!(replica.step(&mut training).is_some() && replica.step(&mut training).is_some());
        assert!(!training.is_trained(), "one minibatch of three is left");
        let trained = replica.params().to_vec();
        let average: Vec<f32> = sent.iter().map(|w| w * 0.5).collect();
        assert_eq!(replica.apply(&average, true), Applied::Corrected { steps: 2 });
        let expected: Vec<f32> = average.iter().zip(&trained).zip(&sent).map(|((a, w), s)| a + (w - s)).collect();
        assert_eq!(replica.params(), expected);
        assert!(replica.step(&mut training).is_some() && training.is_trained());
        assert!(replica.step(&mut training).is_none(), "nothing is left to train");
        assert_ne!(replica.params(), expected, "the last minibatch trained on from the corrected weights");
        let report = replica.finish(&pull, training).unwrap();
        assert_eq!((report.epoch, report.round, report.samples), (1, 2, 24));
        assert!(report.train_seconds > 0.0 && report.loss_sum > 0.0, "{report:?}");
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
}
