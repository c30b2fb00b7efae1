//! The training loop. The driver owns every piece of run state — the live
//! workers, the epoch's shard table, the open round and the averaged model —
//! and changes it only in response to [`Event`]s from the service, so no
//! state is shared between tasks and no lock is needed.
//!
//! This module runs epochs; `rounds` runs one round, `closing` evaluates and
//! checkpoints a finished epoch while the next one trains, `membership`
//! handles workers coming and going, `checkpointing` writes checkpoints, and
//! `deadline` decides when a round stops waiting.

mod bench;
mod broadcast;
mod checkpointing;
mod closing;
mod deadline;
mod epochs;
mod membership;
mod overlap;
mod rounds;
mod screening;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use lazyavg_common::dataset::Dataset;
use lazyavg_common::model::{Evaluation, Network};
use lazyavg_common::outer::OuterOptimizer;
use lazyavg_common::telemetry::error_chain;
use lazyavg_proto::chunks::Chunk;
use lazyavg_proto::lane::Board;
use tokio::sync::mpsc;
use tracing::info;

use self::closing::{ClosingEpoch, close_done};
use crate::checkpoint::Checkpoint;
use crate::command::Cmd;
use crate::config::DriverConfig;
use crate::edge::Mailbox;
use crate::ending::Departed;
use crate::epoch::EpochState;
use crate::error::{Error, Result};
use crate::gate;
use crate::model_state::ModelState;
use crate::observe::{Observers, RunEvent};
use crate::round::{Combiner, WorkerId};
use crate::screen::OutlierRecord;
use crate::service::{Event, Leash};

/// How long the coordinator waits, at the end, for workers to close their sessions.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// How often a coordinator still waiting for its workers says how many have
/// joined and where they connect: a worker pointed elsewhere is otherwise
/// silent on this side.
const WAITING_REMINDER: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves to the name of the signal that asks the run to stop.
pub type Shutdown = Pin<Box<dyn Future<Output = &'static str> + Send>>;

/// A worker with an open session.
#[derive(Debug)]
struct Worker {
    name: String,
    /// The name it joined with (`name` may add its id): what it will join
    /// with again, if it missed the run's end (see [`Departed`]).
    joined_as: String,
    mailbox: Mailbox,
    /// Its session lasts as long as the driver keeps the worker.
    _leash: Leash,
    /// Whether it has answered a pull on this session: one that never has
    /// is dropped at a round deadline rather than kept (see `drop_stragglers`),
    /// and is sent no averages, only the current weights with its next pull
    /// (`behind`): it may never read them, and each is a model copy.
    answered: bool,
    /// An average went out that it was not sent.
    behind: bool,
    /// It joined while a round was open, which steps the weights in place:
    /// it is sent them when that round ends (or with its next pull, if the
    /// round is abandoned).
    joined_mid_round: bool,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub epochs: u64,
    pub last: Evaluation,
    /// The final weights, shared rather than copied: at the end of a run a
    /// copy would be the process's peak (a third model next to the weights
    /// and the last average).
    pub params: Arc<Vec<f32>>,
    /// The names of the workers that missed the Stop: gone before it, or
    /// that did not close their session after it.
    pub untold: Vec<String>,
}

pub struct Driver {
    config: DriverConfig,
    mlp: Network,
    test: Arc<Dataset>,
    n_train: usize,
    /// The current weights and outer velocity: the open round steps them in
    /// place as their positions settle. The weights are shared with
    /// [`Driver::evaluate`] and the pushes instead of copied (copied on
    /// write when a round steps them while one still holds them).
    model: ModelState,
    /// The `--aggregate` rule and, for a rule that does not settle, the
    /// buffer a round writes its average into (which the outer step may
    /// swap with the weights: its contents between rounds mean nothing),
    /// kept from round to round for their memory.
    combiner: Option<Combiner>,
    /// Which workers' updates were far from the others', for warnings and
    /// for naming the likely cause of a divergence.
    outliers: OutlierRecord,
    /// `params` as weight chunks, made once per version: views of `params`
    /// itself, shared by every worker sent them, however many attach or lag.
    params_chunks: Option<Vec<Chunk>>,
    /// Where those chunks go, copied once, for the workers with a lane to
    /// read in place (see [`Board`]).
    lane_board: Option<Arc<Board>>,
    /// Epoch and round the current parameters come from (0, 0 before the first round).
    version: (u64, u64),
    /// The epoch to start from (after `--resume`, the checkpoint's).
    first_epoch: u64,
    /// The epoch being trained (before the first, the one before it; after
    /// `--resume` mid-epoch, the checkpoint's, owing what it owed): its
    /// shards, orphans and ledger.
    epoch: EpochState,
    events: mpsc::Receiver<Event>,
    /// The open round's frontier, for the sessions' gates.
    frontier: gate::Publisher,
    /// Events the driver raises itself (a worker to drop), taken before the
    /// service's: apart from them, so that a full queue of weight chunks
    /// never loses one.
    raise: mpsc::UnboundedSender<Event>,
    raised: mpsc::UnboundedReceiver<Event>,
    shutdown: Shutdown,
    workers: BTreeMap<WorkerId, Worker>,
    /// Every output of the run (logs, progress, files, metrics), fed events.
    observers: Observers,
    /// `--overlap`: pulls sent ahead, from one round to the next.
    pipeline: overlap::Pipeline,
    /// When the first epoch of this process began training (for `elapsed`).
    training_started: Option<Instant>,
    /// The last epoch, evaluated and checkpointed while the next one trains.
    closing: Option<ClosingEpoch>,
    /// Workers that left and have not come back, to be told the run's end.
    departed: Departed,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: DriverConfig,
        mlp: Network,
        start: Checkpoint,
        test: Arc<Dataset>,
        n_train: usize,
        events: mpsc::Receiver<Event>,
        lane_board: Option<Arc<Board>>,
        frontier: gate::Publisher,
        shutdown: Shutdown,
        observers: Observers,
    ) -> Self {
        let (first_epoch, remaining) = start.next_epoch();
        // Mid-epoch, the weights are those of the checkpoint's last round.
        let version = if remaining.is_some() { (first_epoch, start.round) } else { (first_epoch - 1, 0) };
        let epoch = match remaining {
            Some(owed) => EpochState::resumed(first_epoch, n_train, owed.to_vec()),
            None => EpochState::before(first_epoch - 1),
        };
        let mut outer = OuterOptimizer::new(config.outer);
        outer.restore(start.outer_velocity);
        let (raise, raised) = mpsc::unbounded_channel();
        Driver {
            config,
            mlp,
            test,
            n_train,
            combiner: None,
            outliers: OutlierRecord::default(),
            model: ModelState::new(start.params, outer),
            params_chunks: None,
            lane_board,
            version,
            first_epoch,
            epoch,
            events,
            frontier,
            raise,
            raised,
            shutdown,
            workers: BTreeMap::new(),
            observers,
            pipeline: overlap::Pipeline::default(),
            training_started: None,
            closing: None,
            departed: Departed::default(),
        }
    }

    /// Waits for the configured number of workers, trains every epoch, then
    /// tells the workers to stop.
    pub async fn run(mut self) -> Result<RunSummary> {
        let result = self.train().await;
        // A session holding weights at the gate does not read its stream,
        // so would not see its worker close after the Stop.
        gate::publish(&self.frontier, None);
        let (reason, completed) = match &result {
            Ok(_) => ("training complete".to_owned(), true),
            Err(e) => (format!("coordinator stopped: {}", error_chain(e)), false),
        };
        // Stopped by a signal as a service that is restarted (it has
        // checkpointed): the restart continues the run.
        let resumable = self.config.restartable && matches!(result, Err(Error::Interrupted(_)));
        self.observers.notify(&RunEvent::RunEnded { completed });
        for worker in self.workers.values() {
            let _ = worker.mailbox.send(Cmd::Stop { reason: reason.clone(), completed, resumable });
        }
        self.wait_for_sessions_to_close().await;
        let departed = std::mem::take(&mut self.departed).into_names();
        let untold = departed.chain(self.workers.values().map(|w| w.joined_as.clone())).collect();
        result.map(|summary| RunSummary { untold, ..summary })
    }

    /// Gives the workers a moment to read their Stop and close their sessions.
    /// Exiting at once could reset the connections before the Stop arrives,
    /// and a worker that never hears it keeps trying to reconnect.
    async fn wait_for_sessions_to_close(&mut self) {
        // Workers the driver itself dropped are gone already.
        while let Ok(event) = self.raised.try_recv() {
            if let Event::Detached { id, .. } = event {
                self.workers.remove(&id);
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while !self.workers.is_empty() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Event::Detached { id, .. })) => {
                    self.workers.remove(&id);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    async fn train(&mut self) -> Result<RunSummary> {
        // A resumed run that had trained every epoch needs no worker to end
        // again: a restarted service does not wait for workers long gone.
        let trains = self.first_epoch <= self.config.epochs as u64 || self.config.bench_rounds > 0;
        if trains {
            info!(workers = self.config.workers, "waiting for workers");
        }
        let mut reminder = tokio::time::interval_at(tokio::time::Instant::now() + WAITING_REMINDER, WAITING_REMINDER);
        while trains && self.workers.len() < self.config.workers {
            tokio::select! {
                event = self.next_event() => self.on_event(event?, None),
                _ = reminder.tick() => info!(
                    joined = self.workers.len(),
                    workers = self.config.workers,
                    addr = %self.config.bind,
                    "still waiting for workers"
                ),
            }
        }
        if self.config.bench_rounds > 0 {
            self.bench_rounds(self.config.bench_rounds).await?;
            self.release_round_buffers();
            let last = self.evaluate().await;
            return Ok(RunSummary { epochs: 0, last, params: Arc::clone(&self.model.params), untold: Vec::new() });
        }
        for epoch in self.first_epoch..=self.config.epochs as u64 {
            if let Err(err) = self.run_epoch(epoch).await {
                // The last epoch's checkpoint goes first, then this one's.
                self.finish_closing_after_error().await;
                self.checkpoint_mid_epoch();
                return Err(err);
            }
        }
        let last = match self.finish_closing().await? {
            Some(last) => last,
            None => self.evaluate().await,
        };
        Ok(RunSummary {
            epochs: self.config.epochs as u64,
            last,
            params: Arc::clone(&self.model.params),
            untold: Vec::new(),
        })
    }

    /// After the last round: the rule's buffers (the average, a model's
    /// size) go before the last epoch's close or the benchmark's evaluation
    /// allocates its own, which would otherwise make the end of a run its
    /// peak.
    fn release_round_buffers(&mut self) {
        self.combiner = None;
    }

    /// The next event from the service, taking in an epoch's close that
    /// finishes meanwhile.
    async fn next_event(&mut self) -> Result<Event> {
        loop {
            tokio::select! {
                biased;
                Some(event) = self.raised.recv() => return Ok(event),
                event = self.events.recv() => {
                    return Ok(event.expect("the service holds a sender while the driver runs"));
                }
                signal = &mut self.shutdown => return Err(Error::Interrupted(signal)),
                closed = close_done(&mut self.closing) => closed?,
            };
        }
    }

    /// The name of live worker `id` in logs and metrics ("?" once it has left).
    fn name(&self, id: WorkerId) -> &str {
        name_in(&self.workers, id)
    }

    /// Test loss and accuracy of the current average, off the async runtime.
    /// The future borrows nothing of the driver across its wait, so that
    /// the driver's own future can run as a task of the runtime (`Send`).
    fn evaluate(&self) -> impl Future<Output = Evaluation> + Send + 'static {
        let (mlp, test, params) = (self.mlp.clone(), Arc::clone(&self.test), Arc::clone(&self.model.params));
        async move {
            tokio::task::spawn_blocking(move || closing::evaluate(&mlp, &test, &params))
                .await
                .expect("evaluation does not panic")
        }
    }
}

/// The name of worker `id` among `workers` ("?" if it is not one of them).
fn name_in(workers: &BTreeMap<WorkerId, Worker>, id: WorkerId) -> &str {
    workers.get(&id).map_or("?", |w| w.name.as_str())
}
