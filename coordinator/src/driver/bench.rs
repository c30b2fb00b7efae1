//! `--bench-rounds`: the cost of synchronisation alone, with workers that
//! train nothing.

use std::time::Instant;

use tracing::info;

use super::Driver;
use crate::epoch::Planned;
use crate::error::Result;
use crate::round::WorkerId;

impl Driver {
    /// Times `rounds` rounds in which every worker trains nothing but sends
    /// its weights and receives the average (equal weights): the cost of
    /// synchronisation alone, measured here at the coordinator.
    pub(super) async fn bench_rounds(&mut self, rounds: usize) -> Result<()> {
        let plan: Vec<Planned> = self.workers.keys().map(|&worker| Planned { worker, from: 0, until: 0 }).collect();
        let weights: Vec<(WorkerId, u64)> = plan.iter().map(|p| (p.worker, 1)).collect();
        let mut seconds = Vec::with_capacity(rounds);
        for round in 1..=rounds as u64 {
            let started = Instant::now();
            self.exchange(0, round, &plan, &weights).await?;
            seconds.push(started.elapsed().as_secs_f64());
        }
        seconds.sort_by(f64::total_cmp);
        let median = seconds[seconds.len() / 2];
        let bytes_per_round = (self.model.params.len() * 4 * 2 * plan.len()) as f64;
        info!(
            rounds,
            workers = plan.len(),
            parameters = self.model.params.len(),
            median_ms = median * 1e3,
            mean_ms = seconds.iter().sum::<f64>() / seconds.len() as f64 * 1e3,
            p90_ms = seconds[seconds.len() * 9 / 10] * 1e3,
            weights_gb_per_s = bytes_per_round / median / 1e9,
            peak_rss_mb = peak_rss_mb(),
            "round benchmark"
        );
        Ok(())
    }
}

/// This process's peak resident set size in MB (Linux `VmHWM`), or 0 where unknown.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
