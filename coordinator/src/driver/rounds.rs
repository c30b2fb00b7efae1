//! One averaging round from the driver's side: pull the planned ranges, take
//! contributions until the round is complete or its deadline passes, push the
//! average, record it; and the round benchmark, which does the same without
//! training.
//!
//! With `--overlap`, a worker whose weights for round r are all in is sent
//! its pulls for rounds r + 1 and r + 2 at once ([`PULLS_AHEAD`]; each with
//! `after_round` the round before it), so it trains while the others report
//! and the average is made, and starts the next range as soon as it has sent
//! its weights. It applies round r's average as a correction when it comes,
//! and sends its weights for r + 1 only after that: never more than one round
//! ahead of the average. A round sends nothing new to a worker whose pull
//! went ahead. If round r is abandoned, round r + 1 (its redo) re-sends the
//! pulls that waited for it without the wait, the worker's weights counting
//! for both rounds' samples (its shard table says it trained `done..until`
//! since its last average), and sends none ahead itself: after anything
//! irregular, one plain round. A worker with pulls ahead whose weights are
//! not in a round's average (non-finite) trains no more of the epoch. Answers
//! to pulls ahead that come while training is paused for lack of workers are
//! held for the round after the pause.

use std::time::Instant;

use lazyavg_common::matching::AlignMethod;
use lazyavg_proto::chunks::{Chunk, weight_chunks};
use lazyavg_proto::message::{FromWorker, Pull};
use tracing::{debug, info, warn};

use super::Driver;
use super::deadline::RoundDeadline;
use crate::command::Cmd;
use crate::epoch::Planned;
use crate::error::{Error, Result};
use crate::observe::{RoundDone, RunEvent};
use crate::push;
use crate::round::{Round, RoundError, RoundSummary, WorkerId};
use crate::schedule::PullPlan;
use crate::service::Event;

/// `--overlap`: how many pulls a worker has queued after the one it trains.
/// One is the least that lets it train while the average is made; with two,
/// it does not wait for its next pull to come back either.
const PULLS_AHEAD: usize = 2;

/// `--overlap`: what a round leaves to the next one.
#[derive(Debug, Default)]
pub(super) struct Pipeline {
    /// When the first pull for the next round went out ahead.
    since: Option<tokio::time::Instant>,
    /// The round was abandoned: the next one sends no pulls ahead.
    suspended: bool,
    /// Answers to pulls sent ahead that came while training was paused for
    /// lack of workers, with no round open: they belong to the next round.
    pub(super) held: Vec<Event>,
}

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
    pub(super) async fn run_round(&mut self, epoch: u64, round: u64, plan: &[Planned]) -> Result<Option<RoundSummary>> {
        let weights: Vec<(WorkerId, u64)> = plan.iter().map(|p| (p.worker, (p.until - p.from) as u64)).collect();
        self.exchange(epoch, round, plan, &weights).await
    }

    /// Pulls `plan`'s ranges, averages with `weights`, pushes the average.
    pub(super) async fn exchange(
        &mut self,
        epoch: u64,
        round: u64,
        plan: &[Planned],
        weights: &[(WorkerId, u64)],
    ) -> Result<Option<RoundSummary>> {
        let started = Instant::now();
        let drop_outliers = self.config.drop_outliers;
        let aggregator = self.aggregator.take().unwrap_or_else(|| self.config.aggregate.aggregator(drop_outliers));
        let mut open =
            Round::with(epoch, round, weights, &self.params, aggregator).outliers_at(self.config.outlier_factor);
        if drop_outliers {
            open = open.dropping_outliers();
        }
        let head_start = self.pipeline.since.take();
        let ahead = self.config.overlap && !std::mem::take(&mut self.pipeline.suspended);
        // Workers sent no averages (they have never answered) first get the
        // current weights, one copy for all of them.
        let behind: Vec<WorkerId> = plan
            .iter()
            .filter(|p| self.workers.get_mut(&p.worker).is_some_and(|w| std::mem::take(&mut w.behind)))
            .map(|p| p.worker)
            .collect();
        self.send_params(&behind);
        for &Planned { worker: id, from, until } in plan {
            // After an abandoned round a worker still holds what it trained for
            // it (no average came since): it is asked only for the rest.
            let pull = match self.epoch.shard_mut(id) {
                Some(shard) => shard.pull(round, from, until),
                None => PullPlan::Send { train_from: from },
            };
            let train_from = match pull {
                PullPlan::Send { train_from } | PullPlan::Release { train_from } => train_from,
                PullPlan::Ahead => continue,
            };
            self.send(id, Cmd::Pull(Pull { epoch, round, from: train_from, until, after_round: 0 }));
        }
        let workers: Vec<WorkerId> = plan.iter().map(|p| p.worker).collect();
        self.observers.notify(&RunEvent::RoundStarted { epoch, round, workers: &workers });
        let now = tokio::time::Instant::now();
        let mut deadline = RoundDeadline::new(now, self.config.round_timeout, self.config.straggler_factor, plan.len());
        if let Some(since) = head_start {
            deadline.head_start(since);
        }
        for event in std::mem::take(&mut self.pipeline.held) {
            // Not from a worker that left since.
            if matches!(&event, Event::Message { id, .. } if self.workers.contains_key(id)) {
                self.take_event(event, &mut open, &mut deadline, ahead, plan);
            }
        }
        while !open.is_complete() {
            match tokio::time::timeout_at(deadline.at(), self.next_event()).await {
                Ok(event) => self.take_event(event?, &mut open, &mut deadline, ahead, plan),
                // Slow, not gone: a worker that is gone is found by its
                // connection's keepalive and leaves the round.
                Err(_) if open.completed() == 0 => {
                    warn!(
                        epoch,
                        round,
                        timeout_s = self.config.round_timeout.as_secs_f64(),
                        "no worker has answered the round by its deadline; waiting on"
                    );
                    deadline.extend(tokio::time::Instant::now(), self.config.round_timeout);
                }
                Err(_) => self.drop_stragglers(&mut open),
            }
        }
        let non_finite = open.non_finite().to_vec();
        let (result, aggregator) = open.finish(&mut self.average);
        self.aggregator = Some(aggregator);
        let summary = match result {
            Ok(summary) => summary,
            Err(cause @ RoundError::Diverged { .. }) => return Err(self.diverged(cause)),
            Err(err) => {
                self.observers.notify(&RunEvent::RoundAbandoned { epoch, round, error: &err });
                // They would send the same weights again; the next average resets them.
                for id in non_finite {
                    warn!(
                        worker = id,
                        epoch, round, "worker's weights are not finite; it trains no more of this epoch"
                    );
                    self.retire_for_epoch(id);
                }
                self.pipeline.suspended = true;
                return Ok(None);
            }
        };
        self.screened(&summary);
        self.outer.step(&mut self.params, &self.average);
        self.params_chunks = None;
        self.drop_lost_ahead(plan, &summary);
        for &(id, _) in &summary.contributors {
            let Some(p) = plan.iter().find(|p| p.worker == id) else { continue };
            let Some(worker) = self.workers.get(&id) else { continue };
            self.epoch.record(id, &worker.name, p.from, p.until);
        }
        self.version = (epoch, round);
        self.log_alignment(&summary);
        self.push_average();
        let seconds = started.elapsed().as_secs_f64();
        self.after_round(&summary, seconds)?;
        Ok(Some(summary))
    }

    /// Says who was far from the others in a finished round: each
    /// contribution's update norm at debug level, a warning for an outlier
    /// (at the start of its streak, then every `WARN_EVERY` rounds, and in
    /// each epoch); an outlier left out (or kept in bounded) is retired for
    /// the rest of the epoch.
    fn screened(&mut self, summary: &RoundSummary) {
        let name = |id: WorkerId| self.workers.get(&id).map_or("?", |w| w.name.as_str());
        if tracing::enabled!(tracing::Level::DEBUG) {
            for update in &summary.updates {
                debug!(
                    epoch = summary.epoch,
                    round = summary.round,
                    worker = update.worker,
                    name = name(update.worker),
                    update_norm = update.norm,
                    ratio_to_median = update.ratio,
                    "contribution's update"
                );
            }
        }
        for (update, rounds) in self.outliers.round(summary.epoch, summary.round, &summary.updates, &summary.dropped) {
            warn!(
                epoch = summary.epoch,
                round = summary.round,
                worker = update.worker,
                name = name(update.worker),
                ratio_to_median = update.ratio,
                rounds,
                left_out = summary.dropped.contains(&update.worker),
                "worker's update is far from the others' (its norm over the median's)"
            );
        }
        // Left out, it would be asked for the same range again and again (a
        // worker that redid it could lag the others and end an epoch alone):
        // like a worker whose weights were not finite, it trains no more of
        // this epoch and the others take its images. So does one that a
        // streamed robust rule kept in, bounded.
        let bounded = self.config.aggregate.bounds_outliers();
        for update in summary.updates.iter().filter(|u| u.outlier) {
            let id = update.worker;
            if summary.dropped.contains(&id) || bounded {
                let name = self.workers.get(&id).map_or("?", |w| w.name.as_str());
                let (epoch, round) = (summary.epoch, summary.round);
                warn!(
                    epoch,
                    round,
                    worker = id,
                    name,
                    "worker's update was an outlier; it trains no more of this epoch"
                );
                self.retire_for_epoch(id);
            }
        }
    }

    /// The error of a run whose round had no usable weights: it names the
    /// worker whose updates were far from the others' if there was one.
    fn diverged(&self, cause: RoundError) -> Error {
        match self.outliers.likely_cause() {
            Some(o) => Error::DivergedAfterOutlier {
                cause,
                name: self.workers.get(&o.worker).map_or_else(|| format!("#{}", o.worker), |w| w.name.clone()),
                ratio: o.ratio,
                epoch: o.epoch,
                round: o.round,
            },
            None => Error::Diverged { cause, peak_lr: self.config.train.peak_lr() },
        }
    }

    /// Feeds an event to the open round; with `ahead` (`--overlap`), a worker
    /// whose weights are all in gets its next pulls at once.
    fn take_event(
        &mut self,
        event: Event,
        open: &mut Round,
        deadline: &mut RoundDeadline<tokio::time::Instant>,
        ahead: bool,
        plan: &[Planned],
    ) {
        let weights_from = match &event {
            Event::Message { id, message: FromWorker::Weights(_) } => Some(*id),
            _ => None,
        };
        self.on_event(event, Some(open));
        deadline.progress(tokio::time::Instant::now(), open.completed());
        if let Some(id) = weights_from.filter(|&id| ahead && open.has_sent(id)) {
            self.pull_ahead(id, open.epoch(), open.round(), plan);
        }
    }

    /// `--overlap`: sends `id`, whose weights for `round` are all in, its
    /// pulls for the next rounds, continuing its shard from where `plan` ended it.
    fn pull_ahead(&mut self, id: WorkerId, epoch: u64, round: u64, plan: &[Planned]) {
        let Some(until) = plan.iter().find(|p| p.worker == id).map(|p| p.until) else { return };
        let samples = self.config.samples_per_round();
        let Some(shard) = self.epoch.shard_mut(id) else { return };
        let pulls = shard.pull_ahead(round, until, samples, PULLS_AHEAD);
        if !pulls.is_empty() {
            self.pipeline.since.get_or_insert_with(tokio::time::Instant::now);
        }
        for (round, from, until) in pulls {
            self.send(id, Cmd::Pull(Pull { epoch, round, from, until, after_round: round - 1 }));
        }
    }

    /// `--overlap`: a worker of the round whose weights are not in its average
    /// (they were not finite) while pulls of its went ahead: what it trains
    /// for those no longer adds up, so the rest of its shard goes to the others
    /// and it waits for the next epoch, as a straggler does.
    fn drop_lost_ahead(&mut self, plan: &[Planned], summary: &RoundSummary) {
        for &Planned { worker: id, .. } in plan {
            if summary.contributors.iter().any(|&(c, _)| c == id) {
                continue;
            }
            let Some(worker) = self.workers.get(&id) else { continue };
            if self.epoch.shard(id).is_none_or(|s| s.ahead.is_empty()) {
                continue;
            }
            warn!(
                worker = id,
                name = worker.name,
                round = summary.round,
                "worker's weights missed the average while pulls of its went ahead; it trains no more of this epoch"
            );
            self.retire_for_epoch(id);
        }
    }

    /// Tells the outputs of a finished round; one that fails stops the run.
    pub(super) fn after_round(&mut self, summary: &RoundSummary, seconds: f64) -> Result<()> {
        self.observers.emit(&RunEvent::RoundCompleted(&RoundDone::new(summary, seconds, &self.params)))
    }

    /// `--align`: what the workers said of matching their contributions.
    fn log_alignment(&self, summary: &RoundSummary) {
        if self.config.align == AlignMethod::None {
            return;
        }
        debug!(
            epoch = summary.epoch,
            round = summary.round,
            align_ms = summary.align_seconds * 1e3,
            realigned = summary.realigned,
            contributors = summary.contributors.len(),
            "contributions aligned"
        );
    }

    /// Sends the current parameters to every live worker that has answered
    /// a pull; the others get them with their next pull.
    pub(super) fn push_average(&mut self) {
        let mut ids = Vec::with_capacity(self.workers.len());
        for (&id, worker) in &mut self.workers {
            if worker.answered {
                ids.push(id);
            } else {
                worker.behind = true;
            }
        }
        self.send_params(&ids);
    }

    pub(super) fn send_params(&mut self, to: &[WorkerId]) {
        let (epoch, round) = self.version;
        let chunks =
            self.params_chunks.get_or_insert_with(|| weight_chunks(epoch, round, &self.params).collect()).clone();
        self.send_weights(to, &chunks);
    }

    /// `--align` with `--init independent`: the current parameters, which
    /// worker `id`'s first contribution is matched to while it starts from
    /// weights of its own (in small messages: it has not answered a pull).
    pub(super) fn send_reference(&mut self, id: WorkerId) {
        let (epoch, round) = self.version;
        let chunks = self.params_chunks.get_or_insert_with(|| weight_chunks(epoch, round, &self.params).collect());
        for chunk in push::small(chunks) {
            self.send(id, Cmd::Reference(chunk));
        }
    }

    /// Sends `chunks` (weights tagged with the current version) to `to`: to
    /// a worker that has not answered a pull yet in small messages (see
    /// [`crate::push`]), slices of the same buffers.
    pub(super) fn send_weights(&mut self, to: &[WorkerId], chunks: &[Chunk]) {
        let (epoch, round) = self.version;
        let this_epoch = (epoch == self.epoch.epoch()).then_some(round);
        let bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
        self.observers.notify(&RunEvent::WeightsSent { bytes: (bytes * to.len()) as u64 });
        let mut sliced = None;
        for &id in to {
            let answered = self.workers.get(&id).is_some_and(|w| w.answered);
            let messages = if answered { chunks } else { sliced.get_or_insert_with(|| push::small(chunks)) };
            for chunk in messages.iter() {
                self.send(id, Cmd::Weights(chunk.clone()));
            }
            // It continues from these weights: whatever it trained since is
            // gone, but for a pull sent ahead (--overlap).
            if let Some(shard) = self.epoch.shard_mut(id) {
                shard.average_sent(this_epoch);
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
