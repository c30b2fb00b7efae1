//! Conversions between protobuf messages and domain types.

use std::time::Duration;

use lazyavg_common::config::{LrSchedule, RunSpec, TrainConfig};
use lazyavg_common::matching::AlignMethod;
use lazyavg_common::spec::{InputShape, LayerSpec, ModelSpec};
use lazyavg_common::status::{RunStatus, WorkerState, WorkerStatus};

use crate::{MAX_CHUNK_BYTES, ProtoError, pb};

impl From<&RunSpec> for pb::RunConfig {
    fn from(spec: &RunSpec) -> Self {
        let t = &spec.train;
        pb::RunConfig {
            model: Some(pb::ModelDescription::from(&spec.model)),
            batch_size: t.batch_size as u32,
            lr: t.lr,
            momentum: t.momentum,
            weight_decay: t.weight_decay,
            nesterov: t.nesterov,
            schedule: t.schedule.name().to_owned(),
            seed: t.seed,
            epochs: spec.epochs as u32,
            lr_scale: t.lr_scale,
            warmup_epochs: t.warmup_epochs,
            align: spec.align.to_string(),
            align_images: spec.align_images as u32,
        }
    }
}

impl TryFrom<pb::RunConfig> for RunSpec {
    type Error = ProtoError;

    /// Validates as the coordinator did, so a worker never trains on nonsense.
    fn try_from(c: pb::RunConfig) -> Result<Self, ProtoError> {
        let described = c.model.ok_or_else(|| ProtoError::Config("the run config has no model".into()))?;
        let model = ModelSpec::try_from(described)?;
        let train = TrainConfig {
            batch_size: c.batch_size as usize,
            lr: c.lr,
            momentum: c.momentum,
            weight_decay: c.weight_decay,
            nesterov: c.nesterov,
            schedule: LrSchedule::from_name(&c.schedule)
                .ok_or_else(|| ProtoError::Config(format!("unknown schedule {:?}", c.schedule)))?,
            warmup_epochs: c.warmup_epochs,
            lr_scale: c.lr_scale,
            seed: c.seed,
        };
        train.validate().map_err(|e| ProtoError::Config(e.to_string()))?;
        let align = AlignMethod::parse(&c.align)
            .ok_or_else(|| ProtoError::Config(format!("unknown --align method {:?}", c.align)))?;
        Ok(RunSpec { train, model, epochs: c.epochs as usize, align, align_images: c.align_images as usize })
    }
}

impl From<&ModelSpec> for pb::ModelDescription {
    fn from(spec: &ModelSpec) -> Self {
        let layers = spec
            .layers
            .iter()
            .map(|layer| pb::Layer {
                kind: Some(match *layer {
                    LayerSpec::Dense { units } => pb::layer::Kind::Dense(pb::DenseLayer { units: units as u32 }),
                    LayerSpec::Relu => pb::layer::Kind::Relu(pb::ReluLayer {}),
                    LayerSpec::Conv2d { channels, kernel, stride, padding } => {
                        pb::layer::Kind::Conv2d(pb::Conv2dLayer {
                            channels: channels as u32,
                            kernel: kernel as u32,
                            stride: stride as u32,
                            padding: padding as u32,
                        })
                    }
                    LayerSpec::MaxPool { kernel, stride } => {
                        pb::layer::Kind::MaxPool(pb::MaxPoolLayer { kernel: kernel as u32, stride: stride as u32 })
                    }
                    LayerSpec::Flatten => pb::layer::Kind::Flatten(pb::FlattenLayer {}),
                }),
            })
            .collect();
        let InputShape { channels, height, width } = spec.input;
        pb::ModelDescription {
            channels: channels as u32,
            height: height as u32,
            width: width as u32,
            layers,
            classes: spec.classes as u32,
        }
    }
}

impl TryFrom<pb::ModelDescription> for ModelSpec {
    type Error = ProtoError;

    /// Checks the description as the coordinator did, and that the network builds.
    fn try_from(m: pb::ModelDescription) -> Result<Self, ProtoError> {
        let layers = m
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| match layer.kind {
                Some(pb::layer::Kind::Dense(pb::DenseLayer { units })) => {
                    Ok(LayerSpec::Dense { units: units as usize })
                }
                Some(pb::layer::Kind::Relu(_)) => Ok(LayerSpec::Relu),
                Some(pb::layer::Kind::Conv2d(pb::Conv2dLayer { channels, kernel, stride, padding })) => {
                    Ok(LayerSpec::Conv2d {
                        channels: channels as usize,
                        kernel: kernel as usize,
                        stride: stride as usize,
                        padding: padding as usize,
                    })
                }
                Some(pb::layer::Kind::MaxPool(pb::MaxPoolLayer { kernel, stride })) => {
                    Ok(LayerSpec::MaxPool { kernel: kernel as usize, stride: stride as usize })
                }
                Some(pb::layer::Kind::Flatten(_)) => Ok(LayerSpec::Flatten),
                None => {
                    Err(ProtoError::Config(format!("layer {} of the model is of no kind this worker knows", i + 1)))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let input = InputShape { channels: m.channels as usize, height: m.height as usize, width: m.width as usize };
        let spec = ModelSpec { input, layers, classes: m.classes as usize };
        spec.build().map_err(|e| ProtoError::Config(e.to_string()))?;
        Ok(spec)
    }
}

/// Sample indices as little-endian u32 bytes.
pub fn encode_indices(indices: &[u32]) -> Vec<u8> {
    indices.iter().flat_map(|i| i.to_le_bytes()).collect()
}

/// The messages that hand `indices` to a worker for `epoch`, each under
/// [`MAX_CHUNK_BYTES`]. The first replaces the worker's shard unless `extend`;
/// the rest always extend it.
pub fn shard_messages(epoch: u64, indices: &[u32], extend: bool) -> Vec<pb::AssignShard> {
    let per_message = MAX_CHUNK_BYTES / 4;
    let pieces: Vec<&[u32]> = if indices.is_empty() { vec![&[]] } else { indices.chunks(per_message).collect() };
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| pb::AssignShard { epoch, indices: encode_indices(piece).into(), extend: extend || i > 0 })
        .collect()
}

/// The inverse of [`encode_indices`].
pub fn decode_indices(bytes: &[u8]) -> Result<Vec<u32>, ProtoError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(ProtoError::Ragged { what: "shard indices", len: bytes.len() });
    }
    Ok(bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

impl From<&RunStatus> for pb::RunStatus {
    fn from(status: &RunStatus) -> Self {
        let seconds = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        pb::RunStatus {
            epoch: status.epoch,
            round: status.round,
            rounds_completed: status.rounds_completed,
            accuracy: status.accuracy,
            workers: status
                .workers
                .iter()
                .map(|w| pb::WorkerStatus {
                    name: w.name.clone(),
                    address: w.address.clone(),
                    state: pb::WorkerState::from(w.state) as i32,
                    samples: w.samples,
                    last_contribution_seconds_ago: seconds(w.last_contribution),
                    round_trip_seconds: seconds(w.round_trip),
                })
                .collect(),
        }
    }
}

impl From<WorkerState> for pb::WorkerState {
    fn from(state: WorkerState) -> Self {
        match state {
            WorkerState::Training => pb::WorkerState::Training,
            WorkerState::Answering => pb::WorkerState::Answering,
            WorkerState::Late => pb::WorkerState::Late,
            WorkerState::Gone => pb::WorkerState::Gone,
        }
    }
}

impl TryFrom<pb::RunStatus> for RunStatus {
    type Error = ProtoError;

    fn try_from(status: pb::RunStatus) -> Result<Self, ProtoError> {
        let bad = |what: String| ProtoError::Config(format!("status: {what}"));
        let duration = |seconds: Option<f64>, what: &str| {
            seconds
                .map(|s| Duration::try_from_secs_f64(s).map_err(|_| bad(format!("{what} {s} is not a duration"))))
                .transpose()
        };
        let workers = status.workers.into_iter().map(|w| {
            let state = match pb::WorkerState::try_from(w.state) {
                Ok(pb::WorkerState::Training) => WorkerState::Training,
                Ok(pb::WorkerState::Answering) => WorkerState::Answering,
                Ok(pb::WorkerState::Late) => WorkerState::Late,
                Ok(pb::WorkerState::Gone) => WorkerState::Gone,
                _ => return Err(bad(format!("worker {} has no known state ({})", w.name, w.state))),
            };
            Ok(WorkerStatus {
                state,
                samples: w.samples,
                last_contribution: duration(w.last_contribution_seconds_ago, "last contribution")?,
                round_trip: duration(w.round_trip_seconds, "round trip")?,
                name: w.name,
                address: w.address,
            })
        });
        Ok(RunStatus {
            epoch: status.epoch,
            round: status.round,
            rounds_completed: status.rounds_completed,
            accuracy: status.accuracy,
            workers: workers.collect::<Result<_, _>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_config_round_trip() {
        let train = TrainConfig { lr: 0.1, lr_scale: 2.0, ..TrainConfig::default() };
        let layers = ModelSpec::parse_layers("dense 30, relu, dense 20, relu, dense 10").unwrap();
        let model = ModelSpec { input: InputShape { channels: 1, height: 28, width: 28 }, layers, classes: 10 };
        let spec = RunSpec { model, train, epochs: 3, align: AlignMethod::Activations, align_images: 500 };
        let back = RunSpec::try_from(pb::RunConfig::from(&spec)).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn nonsense_run_config_is_refused() {
        let train = TrainConfig::default();
        let model = ModelSpec::from_widths(&[784, 200, 10]).unwrap();
        let spec = RunSpec { model, train, epochs: 3, align: AlignMethod::None, align_images: 0 };
        let mut msg = pb::RunConfig::from(&spec);
        msg.align = "sideways".into();
        assert_eq!(
            RunSpec::try_from(msg.clone()).unwrap_err().to_string(),
            "invalid run configuration: unknown --align method \"sideways\""
        );
        msg.align = "none".into();
        msg.batch_size = 0;
        assert!(RunSpec::try_from(msg.clone()).is_err());
        msg.batch_size = 32;
        let model = msg.model.take();
        assert_eq!(
            RunSpec::try_from(msg.clone()).unwrap_err().to_string(),
            "invalid run configuration: the run config has no model"
        );
        let mut zero = model.clone().unwrap();
        zero.layers[0] = pb::Layer { kind: Some(pb::layer::Kind::Dense(pb::DenseLayer { units: 0 })) };
        msg.model = Some(zero);
        let err = RunSpec::try_from(msg.clone()).unwrap_err().to_string();
        assert!(err.contains("layer 1 (dense 0): has width 0"), "{err}");
        let mut unknown = model.clone().unwrap();
        unknown.layers[1].kind = None;
        msg.model = Some(unknown);
        assert!(RunSpec::try_from(msg.clone()).unwrap_err().to_string().contains("layer 2 of the model is of no kind"));
        msg.model = model;
        msg.lr_scale = 0.0;
        assert!(RunSpec::try_from(msg).is_err(), "a config without a scale factor is refused");
    }

    #[test]
    fn large_shards_are_split_into_small_messages() {
        // Two full messages and part of a third.
        let indices: Vec<u32> = (0..(2 * MAX_CHUNK_BYTES / 4 + 76_000) as u32).collect();
        let msgs = shard_messages(3, &indices, false);
        assert_eq!(msgs.len(), 3);
        assert!(msgs.iter().all(|m| m.indices.len() <= MAX_CHUNK_BYTES && m.epoch == 3));
        assert_eq!(msgs.iter().map(|m| m.extend).collect::<Vec<_>>(), vec![false, true, true]);
        let back: Vec<u32> = msgs.iter().flat_map(|m| decode_indices(&m.indices).unwrap()).collect();
        assert_eq!(back, indices);
        assert_eq!(shard_messages(1, &[], false).len(), 1);
    }

    #[test]
    fn indices_round_trip_and_ragged_bytes_are_refused() {
        let idx = vec![0, 1, 59_999, u32::MAX];
        assert_eq!(decode_indices(&encode_indices(&idx)).unwrap(), idx);
        assert!(decode_indices(&[1, 2, 3]).is_err());
    }

    #[test]
    fn a_run_status_survives_the_wire_and_unknown_states_are_refused() {
        let status = RunStatus {
            epoch: 3,
            round: 7,
            rounds_completed: 250,
            accuracy: Some(0.975),
            workers: vec![
                WorkerStatus {
                    name: "a".into(),
                    address: "10.0.0.2:41000".into(),
                    state: WorkerState::Late,
                    samples: 512,
                    last_contribution: Some(Duration::from_millis(1500)),
                    round_trip: Some(Duration::from_millis(20)),
                },
                WorkerStatus {
                    name: "b".into(),
                    address: String::new(),
                    state: WorkerState::Gone,
                    samples: 0,
                    last_contribution: None,
                    round_trip: None,
                },
            ],
        };
        assert_eq!(RunStatus::try_from(pb::RunStatus::from(&status)).unwrap(), status);
        let mut wire = pb::RunStatus::from(&status);
        wire.workers[0].state = 0;
        assert!(RunStatus::try_from(wire).unwrap_err().to_string().contains("no known state"));
        let mut wire = pb::RunStatus::from(&status);
        wire.workers[0].round_trip_seconds = Some(-1.0);
        assert!(RunStatus::try_from(wire).is_err());
    }
}
