//! `--metrics-bind`: the run as Prometheus metrics. The handles are typed
//! fields of `RunMetrics`, registered in a [`Registry`] built at start-up
//! (no global state); [`Exporter`] updates them from the run's events and
//! `lazyavg_proto::scrape` serves the registry.
//!
//! `lazyavg_round` is epoch-local, like the logs' `round`: the index within
//! its epoch of the latest round started (a redone round keeps counting).

use std::collections::{HashMap, VecDeque};
use std::sync::PoisonError;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use lazyavg_proto::scrape::SharedRegistry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use super::board::GONE_KEPT;
use super::{Observer, RoundDone, RunEvent};
use crate::command::RejectReason;
use crate::error::Result;
use crate::round::WorkerId;

/// A gauge holding an `f64`.
type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    /// The worker's unique name in this run (as in the logs and `metrics.jsonl`).
    worker: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The series of each worker, labelled by its name.
#[derive(Debug)]
struct WorkerSeries {
    samples: Family<WorkerLabels, Counter>,
    last_contribution: Family<WorkerLabels, FloatGauge>,
    samples_per_second: Family<WorkerLabels, FloatGauge>,
    update_ratio: Family<WorkerLabels, FloatGauge>,
    outlier_rounds: Family<WorkerLabels, Counter>,
}

impl WorkerSeries {
    fn register(r: &mut Registry) -> Self {
        WorkerSeries {
            samples: metric(r, "worker_samples", "Samples averaged in, by worker", Family::default()),
            last_contribution: metric(
                r,
                "worker_last_contribution_timestamp_seconds",
                "Unix time of the worker's last weights in an average",
                Family::default(),
            ),
            samples_per_second: metric(
                r,
                "worker_samples_per_second",
                "The worker's samples in its last round over the time since its contribution before",
                Family::default(),
            ),
            update_ratio: metric(
                r,
                "worker_update_ratio",
                "Norm of the worker's last update (its weights minus the round's start) over the round's median",
                Family::default(),
            ),
            outlier_rounds: metric(
                r,
                "worker_outlier_rounds",
                "Rounds in which the worker's update was 10 times the median's norm or more",
                Family::default(),
            ),
        }
    }

    /// Records a round's contributions, made `now` (monotonic, Unix
    /// seconds); `last` holds when each worker's weights were last in an
    /// average.
    fn round_completed(
        &self,
        done: &RoundDone<'_>,
        now: (Instant, f64),
        labels: impl Fn(WorkerId) -> WorkerLabels,
        last: &mut HashMap<WorkerId, Instant>,
    ) {
        for &(id, samples) in &done.summary.contributors {
            let labels = labels(id);
            self.samples.get_or_create(&labels).inc_by(samples);
            self.last_contribution.get_or_create(&labels).set(now.1);
            let since = last.insert(id, now.0).map_or(done.seconds, |t| (now.0 - t).as_secs_f64());
            if since > 0.0 {
                self.samples_per_second.get_or_create(&labels).set(samples as f64 / since);
            }
        }
        for update in &done.summary.updates {
            let labels = labels(update.worker);
            self.update_ratio.get_or_create(&labels).set(update.ratio);
            if update.outlier {
                self.outlier_rounds.get_or_create(&labels).inc();
            }
        }
    }
}

/// Every metric of a run.
#[derive(Debug)]
struct RunMetrics {
    epoch: Gauge,
    round: Gauge,
    rounds: Counter,
    rounds_abandoned: Counter,
    test_accuracy: FloatGauge,
    test_loss: FloatGauge,
    train_loss: FloatGauge,
    samples: Counter,
    round_duration: Histogram,
    weights_received_bytes: Counter,
    weights_sent_bytes: Counter,
    workers_connected: Gauge,
    worker: WorkerSeries,
    contributions_rejected: Family<ReasonLabels, Counter>,
    checkpoints_written: Counter,
    last_round_timestamp: FloatGauge,
    run_active: Gauge,
}

impl RunMetrics {
    /// Makes the metrics and registers them in `registry`. Counters are
    /// registered without `_total`: the encoder appends it.
    fn register(r: &mut Registry) -> Self {
        // 5 ms to about 80 s.
        let round_duration = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        let metrics = RunMetrics {
            epoch: metric(r, "epoch", "The epoch being trained (0 before the first)", Gauge::default()),
            round: metric(r, "round", "Index within its epoch of the latest round started", Gauge::default()),
            rounds: metric(r, "rounds", "Averaging rounds completed", Counter::default()),
            rounds_abandoned: metric(r, "rounds_abandoned", "Averaging rounds given up and redone", Counter::default()),
            test_accuracy: metric(
                r,
                "test_accuracy_ratio",
                "Test accuracy of the last evaluated average (0 to 1)",
                FloatGauge::default(),
            ),
            test_loss: metric(r, "test_loss", "Test loss of the last evaluated average", FloatGauge::default()),
            train_loss: metric(
                r,
                "train_loss",
                "Mean training loss of the last completed round",
                FloatGauge::default(),
            ),
            samples: metric(r, "samples", "Samples trained and averaged in", Counter::default()),
            round_duration: metric(
                r,
                "round_duration_seconds",
                "Wall time of a completed round, from its pulls to its average",
                round_duration,
            ),
            weights_received_bytes: metric(
                r,
                "weights_received_bytes",
                "Bytes of worker weights taken into rounds",
                Counter::default(),
            ),
            weights_sent_bytes: metric(
                r,
                "weights_sent_bytes",
                "Bytes of parameters sent to workers",
                Counter::default(),
            ),
            workers_connected: metric(r, "workers_connected", "Workers with an open session", Gauge::default()),
            contributions_rejected: metric(
                r,
                "contributions_rejected",
                "Worker messages refused, by reason",
                Family::default(),
            ),
            checkpoints_written: metric(r, "checkpoints_written", "Checkpoints written", Counter::default()),
            last_round_timestamp: metric(
                r,
                "last_round_timestamp_seconds",
                "Unix time of the last completed round (for stall alerts)",
                FloatGauge::default(),
            ),
            run_active: metric(r, "run_active", "1 while the run trains, 0 once it has ended", Gauge::default()),
            worker: WorkerSeries::register(r),
        };
        metrics.serve_every_rejection_reason();
        metrics
    }

    /// Serves each refusal reason's count from the start (at 0), so that a
    /// rate sees the first refusal.
    fn serve_every_rejection_reason(&self) {
        for reason in RejectReason::ALL.map(RejectReason::label) {
            drop(self.contributions_rejected.get_or_create(&ReasonLabels { reason }));
        }
    }
}

impl RunMetrics {
    /// Keeps the per-worker series of `left`, a worker that left, and of the
    /// [`GONE_KEPT`] latest in `gone` before it; older ones are removed
    /// (unless a live worker, in `names`, has the name again), so that a
    /// crash-looping or renaming client does not grow the label sets.
    fn forget_beyond_gone_kept(
        &self,
        gone: &mut VecDeque<WorkerLabels>,
        names: &HashMap<WorkerId, String>,
        left: WorkerLabels,
    ) {
        gone.retain(|labels| *labels != left);
        gone.push_back(left);
        while gone.len() > GONE_KEPT {
            let Some(oldest) = gone.pop_front() else { break };
            if !names.values().any(|name| *name == oldest.worker) {
                self.worker.samples.remove(&oldest);
                self.worker.last_contribution.remove(&oldest);
                self.worker.outlier_rounds.remove(&oldest);
            }
        }
    }
}

/// Registers `metric` as `name` and returns its handle.
fn metric<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Keeps `RunMetrics` up to date from the run's events, each event's
/// changes whole under the registry's lock.
#[derive(Debug)]
pub struct Exporter {
    registry: SharedRegistry,
    series: Series,
}

/// The metrics and what updating them needs to remember.
#[derive(Debug)]
struct Series {
    metrics: RunMetrics,
    /// Live workers' names: rounds name their contributors by id.
    names: HashMap<WorkerId, String>,
    /// When each worker's weights were last in an average.
    last_contribution: HashMap<WorkerId, Instant>,
    /// The labels of the latest workers gone, oldest first, whose series
    /// are still served (a silent-worker alert needs them).
    gone: VecDeque<WorkerLabels>,
}

impl Exporter {
    /// Registers the run's metrics in `registry` (give it the `lazyavg` prefix).
    pub fn new(registry: SharedRegistry) -> Self {
        let metrics = RunMetrics::register(&mut registry.lock().unwrap_or_else(PoisonError::into_inner));
        let series =
            Series { metrics, names: HashMap::new(), last_contribution: HashMap::new(), gone: VecDeque::new() };
        Exporter { registry, series }
    }
}

impl Series {
    fn labels(&self, id: WorkerId) -> WorkerLabels {
        labels_of(&self.names, id)
    }

    /// Drops a departed worker's live series (rate, ratio) and, beyond the
    /// latest gone, its kept ones; `workers` are left connected.
    fn worker_left(&mut self, id: WorkerId, workers: usize) {
        let labels = self.labels(id);
        let m = &self.metrics;
        m.worker.samples_per_second.remove(&labels);
        m.worker.update_ratio.remove(&labels);
        self.names.remove(&id);
        m.forget_beyond_gone_kept(&mut self.gone, &self.names, labels);
        self.last_contribution.remove(&id);
        m.workers_connected.set(workers as i64);
    }
}

/// The labels of worker `id`, by its name in `names` (`#id` if unknown).
fn labels_of(names: &HashMap<WorkerId, String>, id: WorkerId) -> WorkerLabels {
    WorkerLabels { worker: names.get(&id).cloned().unwrap_or_else(|| format!("#{id}")) }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Observer for Exporter {
    fn observe(&mut self, event: &RunEvent<'_>) -> Result<()> {
        let _whole = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        self.series.observe(event);
        Ok(())
    }
}

impl Series {
    fn observe(&mut self, event: &RunEvent<'_>) {
        let m = &self.metrics;
        match *event {
            RunEvent::WorkerJoined { id, name, workers, .. } => {
                self.gone.retain(|labels| labels.worker != name);
                self.names.insert(id, name.to_owned());
                m.workers_connected.set(workers as i64);
            }
            RunEvent::WorkerLeft { id, workers, .. } => self.worker_left(id, workers),
            RunEvent::EpochStarted { epoch, .. } => {
                m.epoch.set(epoch as i64);
                m.run_active.set(1);
            }
            RunEvent::RoundStarted { round, .. } => {
                m.round.set(round as i64);
            }
            RunEvent::WeightsReceived { chunk, .. } => {
                m.weights_received_bytes.inc_by(chunk.data.len() as u64);
            }
            RunEvent::WeightsSent { bytes } => {
                m.weights_sent_bytes.inc_by(bytes);
            }
            RunEvent::ContributionRejected { rejection, .. } => {
                m.contributions_rejected.get_or_create(&ReasonLabels { reason: rejection.reason.label() }).inc();
            }
            RunEvent::RoundCompleted(done) => {
                let now = (Instant::now(), unix_now());
                m.rounds.inc();
                m.samples.inc_by(done.summary.samples);
                m.train_loss.set(done.train_loss());
                m.round_duration.observe(done.seconds);
                m.last_round_timestamp.set(now.1);
                let names = &self.names;
                m.worker.round_completed(done, now, |id| labels_of(names, id), &mut self.last_contribution);
            }
            RunEvent::RoundAbandoned { .. } => {
                m.rounds_abandoned.inc();
            }
            RunEvent::EpochEvaluated(record) => {
                m.test_accuracy.set(record.accuracy);
                m.test_loss.set(record.test_loss);
            }
            RunEvent::CheckpointWritten { .. } => {
                m.checkpoints_written.inc();
            }
            RunEvent::RunEnded { .. } => {
                m.run_active.set(0);
            }
            RunEvent::ShardsDealt { .. } | RunEvent::CheckpointFailed { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::observe::RoundDone;
    use crate::round::RoundSummary;
    use crate::screen::UpdateNorm;

    fn joined(id: WorkerId, name: &str) -> RunEvent<'_> {
        RunEvent::WorkerJoined { id, name, address: "127.0.0.1:1", workers: 1 }
    }

    #[test]
    fn a_renaming_crash_looping_worker_does_not_grow_the_label_sets() {
        let registry = Arc::new(Mutex::new(Registry::with_prefix("lazyavg")));
        let mut exporter = Exporter::new(Arc::clone(&registry));
        exporter.observe(&joined(1, "live")).unwrap();
        for id in 2..=100 {
            let name = format!("w{id}");
            exporter.observe(&joined(id, &name)).unwrap();
            let summary = RoundSummary {
                epoch: 1,
                round: id,
                contributors: vec![(1, 10), (id, 10)],
                samples: 20,
                loss_sum: 1.0,
                mean_train_seconds: 0.1,
                realigned: Default::default(),
                align_seconds: 0.0,
                updates: vec![
                    UpdateNorm { worker: 1, norm: 1.0, ratio: 1.0, outlier: false },
                    UpdateNorm { worker: id, norm: 50.0, ratio: 50.0, outlier: true },
                ],
                dropped: Vec::new(),
            };
            exporter.observe(&RunEvent::RoundCompleted(&RoundDone::new(&summary, 0.5, &[]))).unwrap();
            let left = RunEvent::WorkerLeft {
                id,
                name: &name,
                reason: "gone",
                epoch: 1,
                trained: 10,
                remaining: 0,
                workers: 1,
            };
            exporter.observe(&left).unwrap();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry.lock().unwrap()).unwrap();
        let series = |name: &str| text.lines().filter(|l| l.starts_with(name) && l.contains("worker=")).count();
        // The live worker and the latest gone ones.
        assert_eq!(series("lazyavg_worker_samples_total"), GONE_KEPT + 1, "{text}");
        assert_eq!(series("lazyavg_worker_last_contribution_timestamp_seconds"), GONE_KEPT + 1, "{text}");
        assert_eq!(series("lazyavg_worker_samples_per_second"), 1, "{text}");
        assert_eq!(series("lazyavg_worker_update_ratio"), 1, "{text}");
        assert_eq!(series("lazyavg_worker_outlier_rounds_total"), GONE_KEPT, "the gone outliers kept, {text}");
        assert!(text.contains("lazyavg_worker_update_ratio{worker=\"live\"} 1.0"), "{text}");
        assert!(
            text.contains("worker=\"live\"") && text.contains("worker=\"w100\"") && !text.contains("worker=\"w68\"")
        );
    }
}
