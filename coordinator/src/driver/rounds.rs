//! One averaging round from the driver's side: pull the planned ranges, take
//! contributions until the round is complete or its deadline passes, push the
//! average, record it; and the round benchmark, which does the same without
//! training.

use std::time::Instant;

use lazyavg_common::params::digest;
use lazyavg_proto::chunks::weight_chunks;
use lazyavg_proto::pb;
use lazyavg_proto::pb::coordinator_message::Kind as Command;
use tracing::{debug, info, warn};

use super::Driver;
use super::deadline::RoundDeadline;
use crate::error::Result;
use crate::metrics::RoundRecord;
use crate::round::{Aggregate, Round, RoundSummary, WorkerId};

impl Driver {
    /// Times `rounds` rounds in which every worker trains nothing but sends
    /// its weights and receives the average (equal weights): the cost of
    /// synchronisation alone, measured here at the coordinator.
    pub(super) async fn bench_rounds(&mut self, rounds: usize) -> Result<()> {
        let plan: Vec<(WorkerId, usize, usize)> = self.workers.keys().map(|&id| (id, 0, 0)).collect();
        let weights: Vec<(WorkerId, u64)> = plan.iter().map(|&(id, _, _)| (id, 1)).collect();
        let mut seconds = Vec::with_capacity(rounds);
        for round in 1..=rounds as u64 {
            let started = Instant::now();
            self.exchange(0, round, &plan, &weights).await?;
            seconds.push(started.elapsed().as_secs_f64());
        }
        seconds.sort_by(f64::total_cmp);
        let median = seconds[seconds.len() / 2];
        let bytes_per_round = (self.params.len() * 4 * 2 * plan.len()) as f64;
        info!(
            rounds,
            workers = plan.len(),
            parameters = self.params.len(),
            median_ms = median * 1e3,
            mean_ms = seconds.iter().sum::<f64>() / seconds.len() as f64 * 1e3,
            p90_ms = seconds[seconds.len() * 9 / 10] * 1e3,
            weights_gb_per_s = bytes_per_round / median / 1e9,
            peak_rss_mb = peak_rss_mb(),
            "round benchmark"
        );
        Ok(())
    }

    /// One pull–average–push round over `plan` (worker, from, until). Returns
    /// `None` when the round had to be abandoned (it is then redone).
    pub(super) async fn run_round(
        &mut self,
        epoch: u64,
        round: u64,
        plan: &[(WorkerId, usize, usize)],
    ) -> Result<Option<RoundSummary>> {
        let weights: Vec<(WorkerId, u64)> = plan.iter().map(|&(id, from, until)| (id, (until - from) as u64)).collect();
        self.exchange(epoch, round, plan, &weights).await
    }

    /// Pulls `plan`'s ranges, averages with `weights`, pushes the average.
    pub(super) async fn exchange(
        &mut self,
        epoch: u64,
        round: u64,
        plan: &[(WorkerId, usize, usize)],
        weights: &[(WorkerId, u64)],
    ) -> Result<Option<RoundSummary>> {
        let started = Instant::now();
        let len = self.params.len();
        let mut open = match self.config.aggregate {
            Aggregate::Mean => Round::new(epoch, round, weights, len, std::mem::take(&mut self.sum)),
            rule => Round::aggregating(epoch, round, weights, len, rule),
        };
        for &(id, from, until) in plan {
            // After an abandoned round a worker still holds what it trained for
            // it (no average came since): it is asked only for those weights.
            let train_from = match self.workers.get_mut(&id).and_then(|w| w.shard.as_mut()) {
                Some(shard) => {
                    let start = shard.trained.clamp(from, until);
                    shard.trained = until;
                    start
                }
                None => from,
            };
            let pull = pb::PullWeights { epoch, round, train_from: train_from as u64, train_until: until as u64 };
            self.send(id, Command::Pull(pull));
        }
        let mut deadline = RoundDeadline::new(self.config.round_timeout, self.config.straggler_factor, plan.len());
        while !open.is_complete() {
            match tokio::time::timeout_at(deadline.at(), self.next_event()).await {
                Ok(event) => {
                    self.on_event(event?, Some(&mut open));
                    deadline.progress(open.completed());
                }
                Err(_) => self.drop_stragglers(&mut open),
            }
        }
        let (result, sum) = open.finish(&mut self.average);
        self.sum = sum;
        let summary = match result {
            Ok(summary) => summary,
            Err(err) => {
                warn!(epoch, round, error = %err, "round abandoned; redoing it with the workers left");
                return Ok(None);
            }
        };
        self.outer.step(&mut self.params, &self.average);
        for &(id, _) in &summary.contributors {
            let Some(&(_, from, until)) = plan.iter().find(|p| p.0 == id) else { continue };
            let Some(worker) = self.workers.get_mut(&id) else { continue };
            if let Some(shard) = worker.shard.as_mut() {
                self.ledger.record(&worker.name, &shard.indices[from..until]);
                shard.done = until;
            }
        }
        self.version = (epoch, round);
        self.push_average();
        let seconds = started.elapsed().as_secs_f64();
        self.after_round(&summary, seconds)?;
        Ok(Some(summary))
    }

    /// Logs, dumps and records a finished round.
    pub(super) fn after_round(&mut self, summary: &RoundSummary, seconds: f64) -> Result<()> {
        let wants_digest = tracing::enabled!(tracing::Level::DEBUG) || self.config.metrics_rounds;
        let digest = if wants_digest { digest(&self.params) } else { String::new() };
        debug!(
            epoch = summary.epoch,
            round = summary.round,
            samples = summary.samples,
            contributors = summary.contributors.len(),
            seconds,
            digest,
            "round averaged"
        );
        if let Some(dump) = self.dump.as_mut() {
            dump.finish(summary, &self.params)?;
        }
        if self.config.metrics_rounds {
            self.metrics.append(&RoundRecord {
                kind: "round",
                epoch: summary.epoch,
                round: summary.round,
                samples: summary.samples,
                contributors: summary.contributors.len(),
                train_loss: summary.loss_sum / summary.samples.max(1) as f64,
                seconds,
                digest,
            })?;
        }
        Ok(())
    }

    /// Sends the current parameters to every live worker.
    pub(super) fn push_average(&mut self) {
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        self.send_params(&ids);
    }

    pub(super) fn send_params(&mut self, to: &[WorkerId]) {
        let (epoch, round) = self.version;
        let chunks: Vec<pb::WeightsChunk> = weight_chunks(epoch, round, &self.params).collect();
        for &id in to {
            for chunk in &chunks {
                self.send(id, Command::Average(chunk.clone()));
            }
            // It continues from these weights: whatever it trained since is gone.
            if let Some(shard) = self.workers.get_mut(&id).and_then(|w| w.shard.as_mut()) {
                shard.trained = shard.done;
            }
        }
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
