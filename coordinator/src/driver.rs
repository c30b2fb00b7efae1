//! The training loop. The driver owns every piece of run state — the live
//! workers, the epoch's shard table, the open round and the averaged model —
//! and changes it only in response to [`Event`]s from the service, so no
//! state is shared between tasks and no lock is needed.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use lazyavg_common::dataset::Dataset;
use lazyavg_common::model::{Evaluation, Mlp, Workspace};
use lazyavg_common::params::digest;
use lazyavg_proto::chunks::weight_chunks;
use lazyavg_proto::convert::shard_messages;
use lazyavg_proto::pb;
use lazyavg_proto::pb::coordinator_message::Kind as Command;
use lazyavg_proto::pb::worker_message::Kind as Reply;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::checkpoint::{self, Checkpoint};
use crate::config::CoordinatorConfig;
use crate::dump::RoundDump;
use crate::error::{Error, Result};
use crate::metrics::{EpochRecord, MetricsFile, RoundRecord};
use crate::progress::EpochProgress;
use crate::round::{Aggregate, Round, RoundError, RoundSummary, WorkerId};
use crate::schedule::{EpochLedger, ShardProgress, epoch_permutation, split_even};
use crate::service::{Event, Outbox, command};

/// Resolves to the name of the signal that asks the run to stop.
pub type Shutdown = Pin<Box<dyn Future<Output = &'static str> + Send>>;

/// A worker with an open session.
#[derive(Debug)]
struct Worker {
    name: String,
    outbox: Outbox,
    /// This epoch's shard; `None` for a worker that joined mid-epoch (until
    /// it adopts orphaned images or the next epoch starts).
    shard: Option<ShardProgress>,
}

/// When a round stops waiting: at `--round-timeout` at the latest, and once
/// half the workers have sent their weights, after `--straggler-factor` times
/// the time that took (but at least [`MIN_GRACE`] more). A worker that is
/// merely slow then costs the others one such wait per epoch, not one per round.
struct RoundDeadline {
    started: tokio::time::Instant,
    at: tokio::time::Instant,
    factor: f64,
    quorum: usize,
    tightened: bool,
}

/// The least extra time stragglers get after the quorum, so that scheduling
/// noise on a busy machine does not drop healthy workers.
const MIN_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

impl RoundDeadline {
    fn new(timeout: std::time::Duration, factor: f64, participants: usize) -> Self {
        let started = tokio::time::Instant::now();
        let quorum = participants.div_ceil(2);
        RoundDeadline { started, at: started + timeout, factor, quorum, tightened: factor <= 0.0 || participants < 2 }
    }

    fn at(&self) -> tokio::time::Instant {
        self.at
    }

    /// Tightens the deadline once `completed` contributions reach the quorum.
    fn progress(&mut self, completed: usize) {
        if self.tightened || completed < self.quorum {
            return;
        }
        self.tightened = true;
        let now = tokio::time::Instant::now();
        let grace = (now - self.started).mul_f64((self.factor - 1.0).max(0.0)).max(MIN_GRACE);
        self.at = self.at.min(now + grace);
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub epochs: u64,
    pub last: Evaluation,
    pub params: Vec<f32>,
}

/// What an epoch's rounds added up to.
#[derive(Debug, Default)]
struct EpochTally {
    rounds: u64,
    samples: u64,
    loss_sum: f64,
    train_seconds: f64,
}

pub struct Driver {
    config: CoordinatorConfig,
    mlp: Mlp,
    test: Arc<Dataset>,
    n_train: usize,
    params: Vec<f32>,
    sum: Vec<f64>,
    /// Epoch and round the current parameters come from (0, 0 before the first round).
    version: (u64, u64),
    /// The epoch being trained (0 before the first).
    epoch: u64,
    /// The epoch to start from (after `--resume`, the checkpoint's).
    first_epoch: u64,
    /// After `--resume` mid-epoch: the images the first epoch still needs.
    resume_remaining: Option<Vec<u32>>,
    /// What the epoch has trained so far.
    ledger: EpochLedger,
    /// Images of this epoch whose worker left when no other could take them.
    orphans: Vec<u32>,
    events: mpsc::Receiver<Event>,
    /// For events the driver raises itself (a worker to drop).
    own_events: mpsc::Sender<Event>,
    shutdown: Shutdown,
    workers: BTreeMap<WorkerId, Worker>,
    metrics: MetricsFile,
    dump: Option<RoundDump>,
    progress: EpochProgress,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: CoordinatorConfig,
        mlp: Mlp,
        start: Checkpoint,
        test: Arc<Dataset>,
        n_train: usize,
        events: (mpsc::Sender<Event>, mpsc::Receiver<Event>),
        shutdown: Shutdown,
        metrics: MetricsFile,
        dump: Option<RoundDump>,
    ) -> Self {
        let (first_epoch, remaining) = start.next_epoch();
        let resume_remaining = remaining.map(<[u32]>::to_vec);
        Driver {
            config,
            mlp,
            test,
            n_train,
            sum: Vec::with_capacity(start.params.len()),
            params: start.params,
            version: (first_epoch - 1, 0),
            epoch: first_epoch - 1,
            first_epoch,
            resume_remaining,
            ledger: EpochLedger::default(),
            orphans: Vec::new(),
            own_events: events.0,
            events: events.1,
            shutdown,
            workers: BTreeMap::new(),
            metrics,
            dump,
            progress: EpochProgress::default(),
        }
    }

    /// Waits for the configured number of workers, trains every epoch, then
    /// tells the workers to stop.
    pub async fn run(mut self) -> Result<RunSummary> {
        let result = self.train().await;
        let (reason, completed) = match &result {
            Ok(_) => ("training complete".to_owned(), true),
            Err(e) => (format!("coordinator stopped: {e}"), false),
        };
        self.progress.finish();
        for worker in self.workers.values() {
            let stop = command(Command::Stop(pb::Stop { reason: reason.clone(), completed }));
            let _ = worker.outbox.try_send(Ok(stop));
        }
        result
    }

    async fn train(&mut self) -> Result<RunSummary> {
        info!(workers = self.config.workers, "waiting for workers");
        while self.workers.len() < self.config.workers {
            let event = self.next_event().await?;
            self.on_event(event, None);
        }
        if self.config.bench_rounds > 0 {
            self.bench_rounds(self.config.bench_rounds).await?;
            let last = self.evaluate().await;
            return Ok(RunSummary { epochs: 0, last, params: self.params.clone() });
        }
        let mut last = None;
        for epoch in self.first_epoch..=self.config.epochs as u64 {
            match self.run_epoch(epoch).await {
                Ok(eval) => last = Some(eval),
                Err(err) => {
                    self.checkpoint_mid_epoch();
                    return Err(err);
                }
            }
            self.save_checkpoint(Checkpoint { epoch, remaining: Vec::new(), params: self.params.clone() });
        }
        let last = match last {
            Some(last) => last,
            None => self.evaluate().await,
        };
        Ok(RunSummary { epochs: self.config.epochs as u64, last, params: self.params.clone() })
    }

    /// On the way out mid-epoch (signal, too few workers): records the epoch's
    /// untrained images with the current average, so `--resume` goes on from here.
    fn checkpoint_mid_epoch(&self) {
        if self.epoch < self.first_epoch {
            return;
        }
        let mut remaining: Vec<u32> = self.orphans.clone();
        for shard in self.workers.values().filter_map(|w| w.shard.as_ref()) {
            remaining.extend_from_slice(&shard.indices[shard.done..]);
        }
        if let Some(pending) = &self.resume_remaining {
            remaining.extend_from_slice(pending);
        }
        // An empty list means every image was averaged in: the epoch is complete.
        self.save_checkpoint(Checkpoint { epoch: self.epoch, remaining, params: self.params.clone() });
    }

    fn save_checkpoint(&self, checkpoint: Checkpoint) {
        let digest = digest(&checkpoint.params);
        match checkpoint::save(&self.config.out_dir, self.mlp.arch(), &checkpoint) {
            Ok(path) => info!(
                epoch = checkpoint.epoch,
                remaining = checkpoint.remaining.len(),
                digest,
                path = %path.display(),
                "checkpoint written"
            ),
            Err(e) => warn!(error = %e, "cannot write checkpoint"),
        }
    }

    async fn next_event(&mut self) -> Result<Event> {
        tokio::select! {
            event = self.events.recv() => Ok(event.expect("the service holds a sender while the driver runs")),
            signal = &mut self.shutdown => Err(Error::Interrupted(signal)),
        }
    }

    async fn run_epoch(&mut self, epoch: u64) -> Result<Evaluation> {
        self.ensure_min_workers().await?;
        let started = Instant::now();
        self.epoch = epoch;
        match self.resume_remaining.take() {
            Some(remaining) => {
                info!(epoch, images = remaining.len(), "resuming the epoch's untrained images");
                self.ledger = EpochLedger::new(self.n_train);
                self.orphans = remaining;
            }
            None => self.assign_shards(epoch),
        }
        let samples_per_round = self.config.samples_per_round();
        let total_rounds = self.n_train.div_ceil(samples_per_round * self.workers.len()) as u64;
        self.progress.start_epoch(epoch, total_rounds);
        let mut tally = EpochTally::default();
        let mut round = 0;
        loop {
            self.ensure_min_workers().await?;
            self.adopt_orphans();
            let plan: Vec<(WorkerId, usize, usize)> = self
                .workers
                .iter()
                .filter_map(|(&id, w)| w.shard.as_ref().map(|s| (id, s.done, s.next_until(samples_per_round))))
                .filter(|&(_, from, until)| until > from)
                .collect();
            if plan.is_empty() && self.orphans.is_empty() {
                break;
            }
            if plan.is_empty() {
                continue;
            }
            round += 1;
            if let Some(summary) = self.run_round(epoch, round, &plan).await? {
                tally.rounds += 1;
                tally.samples += summary.samples;
                tally.loss_sum += summary.loss_sum;
                tally.train_seconds += summary.mean_train_seconds;
                self.progress.round_done();
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let eval = self.evaluate().await;
        let record = EpochRecord {
            kind: "epoch",
            epoch,
            rounds: tally.rounds,
            train_loss: tally.loss_sum / tally.samples.max(1) as f64,
            test_loss: eval.loss,
            accuracy: eval.accuracy,
            samples: tally.samples,
            distinct_images: self.ledger.distinct(),
            repeated_images: self.ledger.repeated(),
            seconds,
            samples_per_s: tally.samples as f64 / seconds,
            sync_share: (1.0 - tally.train_seconds / seconds).clamp(0.0, 1.0),
            workers: self.workers.len(),
            samples_by_worker: self.ledger.by_worker().clone(),
        };
        info!(
            epoch,
            rounds = record.rounds,
            train_loss = record.train_loss,
            test_loss = record.test_loss,
            accuracy = record.accuracy,
            samples_per_s = record.samples_per_s.round(),
            sync_share = record.sync_share,
            workers = record.workers,
            "epoch done"
        );
        self.metrics.append(&record)?;
        Ok(eval)
    }

    /// Draws the epoch's permutation and sends every live worker its shard.
    fn assign_shards(&mut self, epoch: u64) {
        let order = epoch_permutation(self.config.train.seed, epoch, self.n_train);
        let shards = split_even(&order, self.workers.len());
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for (id, shard) in ids.into_iter().zip(shards) {
            for msg in shard_messages(epoch, &shard, false) {
                self.send(id, Command::Shard(msg));
            }
            if let Some(worker) = self.workers.get_mut(&id) {
                worker.shard = Some(ShardProgress::new(shard));
            }
        }
        self.ledger = EpochLedger::new(self.n_train);
        self.orphans.clear();
        if let Some(dump) = &self.dump {
            let shards =
                self.workers.iter().filter_map(|(&id, w)| w.shard.as_ref().map(|s| (id, s.indices.as_slice())));
            if let Err(e) = dump.shards(epoch, shards) {
                warn!(error = %e, "cannot dump shards");
            }
        }
    }

    /// Pauses training while fewer than `--min-workers` are connected; fails
    /// after `--max-wait` without enough of them.
    async fn ensure_min_workers(&mut self) -> Result<()> {
        let min = self.config.min_workers;
        if self.workers.len() >= min {
            return Ok(());
        }
        let waited = Instant::now();
        warn!(
            alive = self.workers.len(),
            min_workers = min,
            max_wait_s = self.config.max_wait.as_secs_f64(),
            "too few workers; training paused"
        );
        let deadline = tokio::time::Instant::now() + self.config.max_wait;
        while self.workers.len() < min {
            match tokio::time::timeout_at(deadline, self.next_event()).await {
                Ok(event) => self.on_event(event?, None),
                Err(_) => {
                    return Err(Error::TooFewWorkers { alive: self.workers.len(), min, waited: self.config.max_wait });
                }
            }
        }
        info!(
            alive = self.workers.len(),
            paused_s = waited.elapsed().as_secs_f64(),
            "enough workers again; training resumed"
        );
        Ok(())
    }

    /// Deals images orphaned by departed workers to the live workers.
    fn adopt_orphans(&mut self) {
        if self.orphans.is_empty() || self.workers.is_empty() {
            return;
        }
        let orphans = std::mem::take(&mut self.orphans);
        let epoch = self.epoch;
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for (&id, part) in ids.iter().zip(split_even(&orphans, ids.len())) {
            let Some(worker) = self.workers.get_mut(&id) else { continue };
            let extend = worker.shard.is_some();
            match worker.shard.as_mut() {
                Some(shard) => shard.indices.extend_from_slice(&part),
                None => worker.shard = Some(ShardProgress::new(part.clone())),
            }
            for msg in shard_messages(epoch, &part, extend) {
                self.send(id, Command::Shard(msg));
            }
        }
        info!(images = orphans.len(), workers = ids.len(), "dealt orphaned images to the live workers");
    }

    /// Times `rounds` rounds in which every worker trains nothing but sends
    /// its weights and receives the average (equal weights): the cost of
    /// synchronisation alone, measured here at the coordinator.
    async fn bench_rounds(&mut self, rounds: usize) -> Result<()> {
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
    async fn run_round(
        &mut self,
        epoch: u64,
        round: u64,
        plan: &[(WorkerId, usize, usize)],
    ) -> Result<Option<RoundSummary>> {
        let weights: Vec<(WorkerId, u64)> = plan.iter().map(|&(id, from, until)| (id, (until - from) as u64)).collect();
        self.exchange(epoch, round, plan, &weights).await
    }

    /// Pulls `plan`'s ranges, averages with `weights`, pushes the average.
    async fn exchange(
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
            let pull = pb::PullWeights { epoch, round, train_from: from as u64, train_until: until as u64 };
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
        let (result, sum) = open.finish(&mut self.params);
        self.sum = sum;
        let summary = match result {
            Ok(summary) => summary,
            Err(err) => {
                warn!(epoch, round, error = %err, "round abandoned; redoing it with the workers left");
                return Ok(None);
            }
        };
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
    fn after_round(&mut self, summary: &RoundSummary, seconds: f64) -> Result<()> {
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
    fn push_average(&mut self) {
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        self.send_params(&ids);
    }

    fn send_params(&mut self, to: &[WorkerId]) {
        let (epoch, round) = self.version;
        let chunks: Vec<pb::WeightsChunk> = weight_chunks(epoch, round, &self.params).collect();
        for &id in to {
            for chunk in &chunks {
                self.send(id, Command::Average(chunk.clone()));
            }
        }
    }

    /// Queues a command for a worker without ever waiting: a worker whose
    /// queue is full (its link stalled, or it cannot keep up) is dropped as
    /// if it had left, so one stuck worker never holds up the others.
    fn send(&self, id: WorkerId, kind: Command) {
        let Some(worker) = self.workers.get(&id) else { return };
        match worker.outbox.try_send(Ok(command(kind))) {
            Ok(()) => {}
            // The session is closing; its Detached event follows.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let reason = "fell behind: its queue of unsent commands is full".to_owned();
                // Handled like a departure on the next turn of the event loop.
                let _ = self.own_events.try_send(Event::Detached { id, reason });
            }
        }
    }

    fn on_event(&mut self, event: Event, round: Option<&mut Round>) {
        match event {
            Event::Attached { id, name, outbox } => {
                info!(worker = id, name, workers = self.workers.len() + 1, "worker joined");
                self.workers.insert(id, Worker { name, outbox, shard: None });
                self.send_params(&[id]);
            }
            Event::Detached { id, reason } => {
                let Some(worker) = self.workers.remove(&id) else { return };
                let remaining = worker.shard.as_ref().map_or(0, ShardProgress::remaining);
                let trained = self.ledger.by_worker().get(&worker.name).copied().unwrap_or(0);
                info!(worker = id, name = worker.name, reason, epoch = self.epoch, trained, remaining, "worker left");
                if let Some(round) = round {
                    round.exclude(id);
                }
                if let Some(shard) = worker.shard {
                    self.hand_over(&worker.name, shard);
                }
            }
            Event::Message { id, reply } => self.on_reply(id, reply, round),
        }
    }

    fn on_reply(&mut self, id: WorkerId, reply: Reply, round: Option<&mut Round>) {
        let Some(round) = round else {
            let status = Status::out_of_range("no round is open");
            return self.reject(id, &status);
        };
        let result = match &reply {
            Reply::Report(report) => round.report(id, report),
            Reply::Weights(chunk) => {
                let accepted = round.accept(id, chunk);
                if accepted.is_ok()
                    && let Some(dump) = &self.dump
                    && let Err(e) = dump.chunk(id, chunk)
                {
                    warn!(error = %e, "cannot dump round");
                }
                accepted
            }
            Reply::Attach(_) => Ok(()),
        };
        if let Err(err) = result {
            let status = Status::from(&err);
            if let RoundError::Chunk(_) = err {
                // A malformed message ends the session: the worker is broken or hostile.
                round.exclude(id);
                if let Some(worker) = self.workers.get(&id) {
                    let _ = worker.outbox.try_send(Err(status.clone()));
                }
            }
            self.reject(id, &status);
        }
    }

    /// Tells a worker its message was refused, and logs it.
    fn reject(&self, id: WorkerId, status: &Status) {
        let name = self.workers.get(&id).map(|w| w.name.as_str()).unwrap_or("?");
        warn!(worker = id, name, code = ?status.code(), error = status.message(), "refused a worker message");
        let rejected = pb::Rejected { code: status.code() as i32, message: status.message().to_owned() };
        self.send(id, Command::Rejected(rejected));
    }

    /// Closes the round without the workers that missed its deadline. Their
    /// late contributions will be refused as stale; they keep their session,
    /// receive every average, and get a shard again from the next epoch,
    /// while the rest of their current shard goes to the others.
    fn drop_stragglers(&mut self, open: &mut Round) {
        for id in open.missing() {
            open.exclude(id);
            let Some(worker) = self.workers.get_mut(&id) else { continue };
            let shard = worker.shard.take();
            let name = worker.name.clone();
            warn!(
                worker = id,
                name,
                epoch = open.epoch(),
                round = open.round(),
                timeout_s = self.config.round_timeout.as_secs_f64(),
                "worker missed the round deadline; closing the round without it"
            );
            if let Some(shard) = shard {
                self.hand_over(&name, shard);
            }
        }
    }

    /// Gives the untrained rest of a shard whose worker left (or lags) to the
    /// others, split evenly, so every image of the epoch is still used once.
    fn hand_over(&mut self, name: &str, shard: ShardProgress) {
        let rest = &shard.indices[shard.done..];
        let heirs: Vec<WorkerId> = self.workers.iter().filter(|(_, w)| w.shard.is_some()).map(|(&id, _)| id).collect();
        if rest.is_empty() {
            return;
        }
        if heirs.is_empty() {
            info!(name, images = rest.len(), "no worker can take these images yet; keeping them for the next to join");
            self.orphans.extend_from_slice(rest);
            return;
        }
        let epoch = self.epoch;
        for (&id, part) in heirs.iter().zip(split_even(rest, heirs.len())) {
            for msg in shard_messages(epoch, &part, true) {
                self.send(id, Command::Shard(msg));
            }
            if let Some(s) = self.workers.get_mut(&id).and_then(|w| w.shard.as_mut()) {
                s.indices.extend_from_slice(&part);
            }
        }
        info!(name, images = rest.len(), workers = heirs.len(), "handed the worker's untrained images to the others");
    }

    /// Test loss and accuracy of the current average, off the async runtime.
    async fn evaluate(&self) -> Evaluation {
        let (mlp, test, params) = (self.mlp.clone(), Arc::clone(&self.test), self.params.clone());
        tokio::task::spawn_blocking(move || {
            let mut workspace = Workspace::new(mlp.arch(), 500);
            mlp.evaluate(&params, &test, &mut workspace)
        })
        .await
        .expect("evaluation does not panic")
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
