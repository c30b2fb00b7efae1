//! One averaging round from the driver's side: pull the planned ranges, take
//! contributions until the round is complete or its deadline passes, combine
//! them, push the average and record it. (`--overlap`'s pulls ahead are in
//! `overlap`, the outlier screen in `screening`, the pushes in `broadcast`.)

use std::time::Instant;

use lazyavg_common::matching::AlignMethod;
use lazyavg_common::telemetry::error_chain;
use lazyavg_proto::message::FromWorker;
use tokio::time::Instant as Clock;
use tracing::{debug, warn};

use super::deadline::RoundDeadline;
use super::{Driver, Worker};
use crate::epoch::Planned;
use crate::error::Result;
use crate::gate;
use crate::observe::{RoundDone, RunEvent};
use crate::round::{Round, RoundError, RoundSummary, WorkerId};
use crate::service::Event;

impl Driver {
    /// One pull–average–push round over `plan`. Returns `None` when the
    /// round had to be abandoned (it is then redone).
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
        let head_start = self.pipeline.since.take();
        let ahead = self.config.overlap && !std::mem::take(&mut self.pipeline.suspended);
        let mut open = self.open_round(epoch, round, plan, weights);
        let collected = self.collect(&mut open, plan, ahead, head_start).await;
        gate::publish(&self.frontier, None);
        if let Err(err) = collected {
            // A round that has stepped the model cannot be given up: it
            // ends with what it has, so that the run stops (and checkpoints)
            // at a round's result, not between two; nothing is pushed to
            // workers about to be stopped, and the stop's cause stays.
            if open.stepped()
                && let Err(also) = self.conclude(open, plan, started, false)
            {
                warn!(error = %error_chain(&also), "could not record the round the run stopped in");
            }
            return Err(err);
        }
        self.conclude(open, plan, started, true)
    }

    /// Combines the collected round and records it; with `push`, sends its
    /// average to the workers.
    fn conclude(
        &mut self,
        open: Round,
        plan: &[Planned],
        started: Instant,
        push: bool,
    ) -> Result<Option<RoundSummary>> {
        let (epoch, round) = (open.epoch(), open.round());
        let Some(summary) = self.combine(open)? else { return Ok(None) };
        self.screened(&summary);
        self.drop_lost_ahead(plan, &summary);
        for &(id, _) in &summary.contributors {
            let Some(p) = plan.iter().find(|p| p.worker == id) else { continue };
            let Some(worker) = self.workers.get(&id) else { continue };
            self.epoch.record(id, &worker.name, p.from, p.until);
        }
        self.version = (epoch, round);
        self.log_alignment(&summary);
        if push {
            self.push_average();
        }
        self.after_round(&summary, started.elapsed().as_secs_f64())?;
        Ok(Some(summary))
    }

    /// Opens the round and sends its pulls: workers sent no averages (they
    /// have never answered, or joined during a round that was abandoned)
    /// first get the current weights, one copy for all.
    fn open_round(&mut self, epoch: u64, round: u64, plan: &[Planned], weights: &[(WorkerId, u64)]) -> Round {
        let drop_outliers = self.config.drop_outliers;
        let combiner = self.combiner.take().unwrap_or_else(|| self.config.aggregate.aggregator(drop_outliers).into());
        let mut open =
            Round::with(epoch, round, weights, &self.model.params, combiner).outliers_at(self.config.outlier_factor);
        if drop_outliers {
            open = open.dropping_outliers();
        }
        let behind: Vec<WorkerId> = plan
            .iter()
            .filter(|p| {
                let owed = |w: &mut Worker| std::mem::take(&mut w.behind) | std::mem::take(&mut w.joined_mid_round);
                self.workers.get_mut(&p.worker).is_some_and(owed)
            })
            .map(|p| p.worker)
            .collect();
        self.send_params(&behind);
        // The last version's chunks share the weights' memory: let go of
        // them, so that the round steps the weights in place (chunks still
        // queued for a worker are sent before its weights can come back).
        self.params_chunks = None;
        gate::publish(&self.frontier, Some(open.frontier()));
        let pulls = self.epoch.pulls(round, plan);
        self.dispatch(pulls);
        let workers: Vec<WorkerId> = plan.iter().map(|p| p.worker).collect();
        self.observers.notify(&RunEvent::RoundStarted { epoch, round, workers: &workers });
        open
    }

    /// Takes events into the open round until it is complete, closing it
    /// without the workers that miss its deadline.
    async fn collect(
        &mut self,
        open: &mut Round,
        plan: &[Planned],
        ahead: bool,
        head_start: Option<Clock>,
    ) -> Result<()> {
        let (timeout, factor) = (self.config.round_timeout, self.config.straggler_factor);
        let mut deadline = RoundDeadline::new(Clock::now(), timeout, factor, plan.len());
        if let Some(since) = head_start {
            deadline.head_start(since);
        }
        for event in std::mem::take(&mut self.pipeline.held) {
            // Not from a worker that left since.
            if matches!(&event, Event::Message { id, .. } if self.workers.contains_key(id)) {
                self.take_event(event, open, &mut deadline, ahead, plan);
            }
        }
        gate::publish(&self.frontier, Some(open.frontier()));
        while !open.is_complete() {
            match tokio::time::timeout_at(deadline.at(), self.next_event()).await {
                Ok(event) => self.take_event(event?, open, &mut deadline, ahead, plan),
                Err(_) => self.deadline_passed(open, &mut deadline),
            }
            gate::publish(&self.frontier, Some(open.frontier()));
        }
        Ok(())
    }

    /// At a round's deadline: the workers that keep others waiting at the
    /// gate are left out, and the rest get another `--round-timeout` (they
    /// could not finish without them). With nobody held and nobody done, a
    /// straggler deadline goes back to the timeout (its quorum counted
    /// workers held only for a moment), and at the timeout all are slow and
    /// the round waits on (a worker that is gone is found by its
    /// connection's keepalive and leaves the round). Else the workers still
    /// missing are left out.
    fn deadline_passed(&mut self, open: &mut Round, deadline: &mut RoundDeadline<Clock>) {
        let (now, timeout) = (Clock::now(), self.config.round_timeout);
        let holding_back = open.holding_back();
        let passed = deadline.passed(now);
        if !holding_back.is_empty() {
            self.drop_stragglers(open, holding_back, passed);
            deadline.extend(now, timeout);
        } else if open.completed() == 0 {
            let (epoch, round) = (open.epoch(), open.round());
            if deadline.back_to_timeout(now) {
                debug!(epoch, round, "straggler deadline with no worker done or held; waiting for the next quorum");
            } else {
                warn!(
                    epoch,
                    round,
                    timeout_s = timeout.as_secs_f64(),
                    "no worker has answered the round by its deadline; waiting on"
                );
                deadline.extend(now, timeout);
            }
        } else {
            let missing = open.missing();
            self.drop_stragglers(open, missing, passed);
        }
    }

    /// Combines the round's contributions and steps the model to its result.
    /// `None`: the round is abandoned (to be redone), and workers whose
    /// weights were not finite train no more of the epoch; an error if no
    /// usable weights came.
    fn combine(&mut self, open: Round) -> Result<Option<RoundSummary>> {
        let (epoch, round) = (open.epoch(), open.round());
        let non_finite = open.non_finite().to_vec();
        let (result, combiner) = open.finish(&mut self.model);
        self.combiner = Some(combiner);
        match result {
            Ok(summary) => Ok(Some(summary)),
            Err(cause @ RoundError::Diverged { .. }) => Err(self.diverged(cause)),
            Err(err) => {
                self.observers.notify(&RunEvent::RoundAbandoned { epoch, round, error: &err });
                // They would send the same weights again; the next average resets them.
                for id in non_finite {
                    warn!(
                        worker = id,
                        epoch, round, "worker's weights are not finite; it trains no more of this epoch"
                    );
                    self.exclude_for_epoch(id);
                }
                self.pipeline.suspended = true;
                Ok(None)
            }
        }
    }

    /// Feeds an event to the open round; with `ahead` (`--overlap`), a worker
    /// whose weights are all in gets its next pulls at once.
    fn take_event(
        &mut self,
        event: Event,
        open: &mut Round,
        deadline: &mut RoundDeadline<Clock>,
        ahead: bool,
        plan: &[Planned],
    ) {
        let weights_from = match &event {
            Event::Message { id, message: FromWorker::Weights(_) } => Some(*id),
            _ => None,
        };
        self.on_event(event, Some(open));
        deadline.progress(Clock::now(), open.ready());
        if let Some(id) = weights_from.filter(|&id| ahead && open.has_sent(id)) {
            self.pull_ahead(id, open.round(), plan);
        }
    }

    /// Tells the outputs of a finished round; one that fails stops the run.
    pub(super) fn after_round(&mut self, summary: &RoundSummary, seconds: f64) -> Result<()> {
        self.observers.emit(&RunEvent::RoundCompleted(&RoundDone::new(summary, seconds, &self.model.params)))
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
}
