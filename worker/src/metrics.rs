//! `worker --metrics-bind`: what a worker sees of its own work, as
//! Prometheus metrics (served by `lazyavg_proto::scrape`, as the
//! coordinator's are). The handles are atomics shared by clones; without
//! `--metrics-bind` they are registered nowhere and cost an add each.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A gauge holding an `f64`.
type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Clone, Default)]
pub struct WorkerMetrics {
    /// Minibatches per second of training time, over the last pull trained.
    pub steps_per_second: FloatGauge,
    /// Share of the session's training span not spent training (waiting
    /// for the others, transfers, averaging), as in "stopped by the coordinator".
    pub idle_ratio: FloatGauge,
    /// Sessions opened again after the first (connection lost, coordinator restarted).
    pub reconnects: Counter,
}

impl WorkerMetrics {
    /// Registers the handles in `registry` (give it the `lazyavg` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "worker_steps_per_second",
            "Minibatches per second of training time, over the last pull trained",
            self.steps_per_second.clone(),
        );
        registry.register(
            "worker_idle_ratio",
            "Share of the session's training span not spent training",
            self.idle_ratio.clone(),
        );
        registry.register("worker_reconnects", "Sessions opened again after the first", self.reconnects.clone());
    }
}
