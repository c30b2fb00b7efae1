//! Workers coming and going: commands queued without ever waiting, replies
//! fed to the open round, departures and stragglers whose images go to the
//! others, orphaned images dealt to newcomers, and the pause below
//! `--min-workers`.

use std::time::{Duration, Instant};

use lazyavg_common::matching::AlignMethod;
use lazyavg_proto::chunks::weight_chunks;
use lazyavg_proto::message::FromWorker;
use tracing::{info, warn};

use super::deadline::Limit;
use super::{Driver, Worker};
use crate::command::{Cmd, RejectReason, Rejection};
use crate::edge::Undelivered;
use crate::epoch::{Handover, Outgoing};
use crate::error::{Error, Result};
use crate::init::{Init, independent_start};
use crate::observe::RunEvent;
use crate::round::{Round, RoundError, WorkerId};
use crate::service::Event;

impl Driver {
    /// Queues a command for a worker without ever waiting: a worker whose
    /// queue is full (its link stalled, or it cannot keep up) is dropped as
    /// if it had left, so one stuck worker never holds up the others.
    pub(super) fn send(&self, id: WorkerId, cmd: Cmd) {
        let Some(worker) = self.workers.get(&id) else { return };
        match worker.mailbox.send(cmd) {
            Ok(()) => {}
            // The session is closing; its Detached event follows.
            Err(Undelivered::Closed) => {}
            Err(Undelivered::Full) => {
                let reason = "fell behind: its queue of unsent commands is full".to_owned();
                // Handled like a departure on the next turn of the event loop.
                let _ = self.raise.send(Event::Detached { id, reason });
            }
        }
    }

    pub(super) fn on_event(&mut self, event: Event, round: Option<&mut Round>) {
        match event {
            Event::Attached { id, name, address, mailbox, leash } => {
                self.departed.returned(&name);
                let joined_as = name.clone();
                let name = self.unique_name(id, name);
                let workers = self.workers.len() + 1;
                self.observers.notify(&RunEvent::WorkerJoined { id, name: &name, address: &address, workers });
                let first = self.workers.is_empty();
                let worker = Worker {
                    name,
                    joined_as,
                    mailbox,
                    _leash: leash,
                    answered: false,
                    behind: false,
                    joined_mid_round: false,
                };
                self.workers.insert(id, worker);
                if self.config.init == Init::Independent && self.version == (0, 0) && !first {
                    info!(worker = id, "worker starts from weights of its own (--init independent)");
                    let start = independent_start(&self.mlp, self.config.train.seed, id);
                    self.send_weights(&[id], &weight_chunks(0, 0, &start).collect::<Vec<_>>());
                    // After the start: weights that replace a reference make it stale.
                    if self.config.align != AlignMethod::None {
                        self.send_reference(id);
                    }
                } else if round.is_some() {
                    self.workers.entry(id).and_modify(|w| w.joined_mid_round = true);
                } else {
                    self.send_params(&[id]);
                }
            }
            Event::Detached { id, reason } => {
                let Some(worker) = self.workers.remove(&id) else { return };
                self.departed.left(&worker.joined_as);
                let remaining = self.epoch.untrained(id);
                let trained = self.epoch.ledger().by_worker().get(&worker.name).copied().unwrap_or(0);
                self.observers.notify(&RunEvent::WorkerLeft {
                    id,
                    name: &worker.name,
                    reason: &reason,
                    epoch: self.epoch.epoch(),
                    trained,
                    remaining,
                    workers: self.workers.len(),
                });
                if let Some(round) = round {
                    round.exclude(id, &mut self.model);
                }
                self.hand_over(id, &worker.name);
            }
            Event::Message { id, message } => self.on_message(id, message, round),
        }
    }

    /// `name`, or `name#id` while another live worker has that name: the
    /// logs and the per-worker counts in metrics.jsonl must tell them apart.
    fn unique_name(&self, id: WorkerId, name: String) -> String {
        if !self.workers.values().any(|w| w.name == name) {
            return name;
        }
        let unique = format!("{name}#{id}");
        warn!(worker = id, name, renamed = unique, "another live worker has this name; this one adds its id");
        unique
    }

    pub(super) fn on_message(&mut self, id: WorkerId, message: FromWorker, round: Option<&mut Round>) {
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.answered = true;
        }
        let Some(round) = round else {
            let rejection = Rejection { reason: RejectReason::NoRound, message: "no round is open".to_owned() };
            return self.reject(id, rejection);
        };
        let result = match &message {
            FromWorker::Report(report) => round.report(id, report),
            FromWorker::Weights(chunk) => round.accept_seen(id, chunk, &mut self.model, |values| {
                self.observers.notify(&RunEvent::WeightsReceived { worker: id, chunk, values })
            }),
        };
        let Err(err) = result else { return };
        let rejection = Rejection::from(&err);
        if let RoundError::Chunk(_) = err {
            // A malformed message ends the session: the worker is broken or hostile.
            round.exclude(id, &mut self.model);
            self.send(id, Cmd::EndSession(rejection.clone()));
        }
        self.reject(id, rejection);
    }

    /// Tells a worker its message was refused, and the outputs why.
    pub(super) fn reject(&self, id: WorkerId, rejection: Rejection) {
        let name = self.name(id);
        self.observers.notify(&RunEvent::ContributionRejected { worker: id, name, rejection: &rejection });
        self.send(id, Cmd::Reject(rejection));
    }

    /// Closes the round without the workers that missed its deadline (`limit`,
    /// `waited` after the round's start, or after the first of its pulls that
    /// went out ahead under `--overlap`, across any extensions). Their
    /// late contributions will be refused as stale; they keep their session,
    /// receive every average, and get a shard again from the next epoch,
    /// while the rest of their current shard goes to the others. A worker
    /// that has never answered a pull on its session is dropped instead: it
    /// may never read either, and each average queued for it is a model copy.
    pub(super) fn drop_stragglers(
        &mut self,
        open: &mut Round,
        stragglers: Vec<WorkerId>,
        (limit, waited): (Limit, Duration),
    ) {
        let (epoch, round) = (open.epoch(), open.round());
        let timeout_s = (limit == Limit::RoundTimeout).then_some(self.config.round_timeout.as_secs_f64());
        for id in stragglers {
            open.exclude(id, &mut self.model);
            let Some((name, answered)) = self.workers.get(&id).map(|w| (w.name.clone(), w.answered)) else {
                continue;
            };
            warn!(
                worker = id,
                name,
                epoch,
                round,
                deadline = limit.flag(),
                waited_s = waited.as_secs_f64(),
                timeout_s,
                "worker missed the round deadline; closing the round without it"
            );
            self.retire_for_epoch(id);
            if !answered {
                let reason = format!("has not answered a pull on this session by the {} deadline", limit.flag());
                // Handled like a departure on the next turn of the event loop.
                let _ = self.raise.send(Event::Detached { id, reason });
            }
        }
    }

    /// Takes a live worker's shard for the rest of the epoch and hands its
    /// untrained images to the others; the worker keeps its session and gets
    /// a shard again from the next epoch.
    fn retire_for_epoch(&mut self, id: WorkerId) {
        let Some(name) = self.workers.get(&id).map(|w| w.name.clone()) else { return };
        let handover = self.epoch.hand_over(id);
        self.handed_over(&name, handover);
    }

    /// Retires a worker whose contribution could not be used (an outlier,
    /// non-finite weights) for the epoch: it takes no orphaned images either
    /// (see [`crate::epoch::EpochState::exclude`]).
    pub(super) fn exclude_for_epoch(&mut self, id: WorkerId) {
        let Some(name) = self.workers.get(&id).map(|w| w.name.clone()) else { return };
        let handover = self.epoch.exclude(id);
        self.handed_over(&name, handover);
    }

    /// Gives the untrained rest of the shard of `id` (named `name`), which
    /// left, to the others (see [`crate::epoch::EpochState::hand_over`]).
    fn hand_over(&mut self, id: WorkerId, name: &str) {
        let handover = self.epoch.hand_over(id);
        self.handed_over(name, handover);
    }

    /// Sends what a handover dealt, and logs where the images went.
    fn handed_over(&mut self, name: &str, (handover, dealt): (Handover, Outgoing)) {
        self.dispatch(dealt);
        match handover {
            Handover::Nothing => {}
            Handover::Heirs { images, heirs } => {
                info!(name, images, workers = heirs, "handed the worker's untrained images to the others");
            }
            Handover::Orphaned { images } => {
                info!(name, images, "no worker can take these images yet; keeping them for the next to join");
            }
        }
    }

    /// Sends each worker its commands.
    pub(super) fn dispatch(&self, commands: Outgoing) {
        for (id, cmd) in commands {
            self.send(id, cmd);
        }
    }

    /// Pauses training while fewer than `--min-workers` are connected, or
    /// while orphaned images wait and only workers the epoch excluded are
    /// connected (see [`Self::exclude_for_epoch`]); fails after `--max-wait`.
    pub(super) async fn ensure_min_workers(&mut self) -> Result<()> {
        if self.may_train() {
            return Ok(());
        }
        let waited = Instant::now();
        let (alive, min, max_wait_s) =
            (self.workers.len(), self.config.min_workers, self.config.max_wait.as_secs_f64());
        match self.epoch.images_without_heir(&self.live()) {
            0 => warn!(alive, min_workers = min, max_wait_s, "too few workers; training paused"),
            images => warn!(
                images,
                alive,
                max_wait_s,
                "orphaned images wait for a worker: those connected were excluded from this epoch; training paused"
            ),
        }
        let deadline = tokio::time::Instant::now() + self.config.max_wait;
        while !self.may_train() {
            match tokio::time::timeout_at(deadline, self.next_event()).await {
                // Workers answer the pulls they were sent ahead meanwhile.
                Ok(Ok(event @ Event::Message { .. })) if self.config.overlap => {
                    self.pipeline.held.push(event);
                }
                Ok(event) => self.on_event(event?, None),
                Err(_) => return Err(self.paused_too_long()),
            }
        }
        info!(
            alive = self.workers.len(),
            paused_s = waited.elapsed().as_secs_f64(),
            "enough workers again; training resumed"
        );
        Ok(())
    }

    /// The live workers, by id.
    pub(super) fn live(&self) -> Vec<WorkerId> {
        self.workers.keys().copied().collect()
    }

    /// Whether enough workers are connected, and one may take any orphans.
    fn may_train(&self) -> bool {
        self.workers.len() >= self.config.min_workers && self.epoch.images_without_heir(&self.live()) == 0
    }

    /// The error of a pause that lasted `--max-wait`.
    fn paused_too_long(&self) -> Error {
        let (alive, min, waited) = (self.workers.len(), self.config.min_workers, self.config.max_wait);
        match self.epoch.images_without_heir(&self.live()) {
            images if images > 0 && alive >= min => Error::NoWorkerForOrphans { images, waited },
            _ => Error::TooFewWorkers { alive, min, waited },
        }
    }
}
