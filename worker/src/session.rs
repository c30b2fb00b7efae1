//! One session with the coordinator: attach, then obey its commands until it
//! says stop or the stream breaks.
//!
//! A pull trains on the session's own thread, a turn of quick minibatches
//! (up to 1 ms) at a time, and the session reads the coordinator's messages
//! between two turns: no hand-over to another thread and back, whose two
//! wake-ups were a large part of a round's cost (docs/performance.md,
//! "Where a round's wall time goes"). Only a minibatch that may be slow
//! (the session's first, one after a minibatch that took [`SLOW_STEP`] or
//! more, and with `--align` every one, since the last is followed by the
//! alignment) trains on the blocking pool, so that the connection answers
//! the coordinator's pings meanwhile. An average that arrives meanwhile is
//! assembled in a buffer and applied between two minibatches; every other
//! command waits, in order, until the
//! pull is answered. A pull sent ahead (`after_round`, the coordinator's
//! `--overlap`) is answered only once the average of that round is applied,
//! so a worker is never more than one round ahead of the average; the pull
//! queued behind it starts training as soon as its weights are sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lazyavg_common::config::RunSpec;
use lazyavg_common::dataset::Dataset;
use lazyavg_common::memory::WeightsMemory;
use lazyavg_common::params::digest;
use lazyavg_proto::chunks::{Chunk, ChunkCursor, decode_into, encoded_chunks};
use lazyavg_proto::lane::{Link, Outbound, Side};
use lazyavg_proto::pb::coordinator_message::Kind as Command;
use lazyavg_proto::pb::worker_message::Kind as Reply;
use lazyavg_proto::{ProtoError, pb};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{debug, info, warn};

use crate::Client;
use crate::error::{Error, Result};
use crate::metrics::WorkerMetrics;
use crate::replica::{Applied, PullTraining, Replica};

/// A minibatch that took this long or longer is followed by one on the
/// blocking pool: trained on the session's thread it would hold up the
/// session's messages and the connection's pings (the coordinator drops a
/// connection that leaves a ping unanswered for 10 s), and the two thread
/// switches of the hand-over cost next to nothing beside it.
pub const SLOW_STEP: Duration = Duration::from_millis(20);

/// How long quick minibatches train in one turn of the session's loop
/// before it looks at the connection again.
const TURN: Duration = Duration::from_millis(1);

/// How a session ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The run completed.
    Completed,
    /// The coordinator stopped the run early, for this reason.
    Aborted(String),
    /// The coordinator was stopped, for this reason, and a restarted one
    /// continues the run.
    Suspended(String),
}

/// Runs a session for worker `id`. `attached` is called once the coordinator
/// has accepted the session (the caller resets its backoff then).
pub async fn run(
    client: &mut Client,
    id: u64,
    spec: &RunSpec,
    data: Arc<Dataset>,
    slowdown: f64,
    metrics: &WorkerMetrics,
    attached: impl FnOnce(),
) -> Result<Ending> {
    let (outbox, replies) = mpsc::unbounded_channel();
    send(&outbox, Reply::Attach(pb::Attach { worker_id: id, shared_memory: true }))?;
    let link = Arc::new(Link::new(Side::Worker));
    let outgoing = Outbound::new(UnboundedReceiverStream::new(replies), Arc::clone(&link));
    let mut inbound = client.session(outgoing).await.map_err(Error::refused("Session"))?.into_inner();
    attached();
    let metrics = (metrics.clone(), spec.train.batch_size);
    let mut session = Session::new(Replica::new(spec, data)?, outbox, link, slowdown, metrics);
    loop {
        tokio::select! {
            // Whatever the connection has brought comes before the next minibatch.
            biased;
            message = inbound.message() => {
                let Some(message) = message.map_err(Error::refused("Session"))? else { break };
                session.link.freed(message.lane_taken)?;
                let Some(kind) = message.kind else { continue };
                if let Some(ending) = session.command(kind).await? {
                    return Ok(ending);
                }
            }
            // A turn of training (quick minibatches for up to `TURN`, or one
            // sent to the blocking pool): yielding first lets the runtime's
            // other tasks (the connection, sending the weights just queued)
            // run and the next message in.
            () = tokio::task::yield_now(), if session.may_step() => session.step().await?,
            (replica, progress, took) = minibatch_away(&mut session.away), if session.away.is_some() => {
                session.stepped(replica, progress, took).await?;
            }
        }
    }
    Err(Error::SessionEnded)
}

/// The pull in progress.
#[derive(Debug)]
struct Training {
    pull: pb::PullWeights,
    /// Where its minibatches stand; `None` while one trains on the blocking pool.
    progress: Option<PullTraining>,
}

/// A minibatch on the blocking pool (with `--align`, the last one's
/// alignment too), which has the replica meanwhile; gives them back with
/// the time the minibatch took (`None`: none was left).
type Away = JoinHandle<(Replica, PullTraining, Option<Duration>)>;

/// A trained pull whose weights are not sent yet.
#[derive(Debug)]
struct Trained {
    pull: pb::PullWeights,
    report: pb::RoundReport,
}

/// A command that waits until the pull in progress is answered.
#[derive(Debug)]
enum Deferred {
    Shard(pb::AssignShard),
    Pull(pb::PullWeights),
    /// An average that replaces the weights (not a correction), assembled.
    Replace {
        epoch: u64,
        round: u64,
        average: Vec<f32>,
    },
}

/// An average whose chunks are arriving.
#[derive(Debug)]
struct Incoming {
    cursor: ChunkCursor,
    /// The average of the weights last sent: applied as a correction.
    correction: bool,
    /// Assembled here when it cannot go straight into the model (a pull is
    /// training, or the weights must first be sent); `None`: written straight in.
    staged: Option<Vec<f32>>,
}

/// The session's outgoing messages. Unbounded: weights queue as slices of
/// one snapshot (no copies), and the session must never wait on its queue,
/// or it could not read the lane credits that drain it.
type Outbox = mpsc::UnboundedSender<pb::WorkerMessage>;

#[derive(Debug)]
struct Session {
    outbox: Outbox,
    /// The session's shared-memory lane, if the coordinator offered one this worker could open.
    link: Arc<Link>,
    slowdown: f64,
    /// Parameters in the model.
    len: usize,
    /// `None` while a minibatch trains on the blocking pool.
    replica: Option<Replica>,
    /// The pull being trained, a turn of the session's loop at a time.
    training: Option<Training>,
    away: Option<Away>,
    /// Whether the next minibatch trains on the session's thread: the last
    /// one took less than [`SLOW_STEP`] (and the run does not `--align`).
    steps_here: bool,
    /// An average of the weights sent, assembled while a minibatch was
    /// away: applied when it comes back.
    correction_waiting: Option<(u64, u64, Vec<f32>)>,
    /// A buffer to assemble the next staged average in, so rounds do not reallocate.
    spare_average: Option<Vec<f32>>,
    trained: Option<Trained>,
    deferred: VecDeque<Deferred>,
    /// Epoch and round of the weights last sent, until their average comes.
    sent: Option<(u64, u64)>,
    incoming: Option<Incoming>,
    /// `--align` with `--init independent`: the reference whose chunks are arriving.
    incoming_reference: Option<ChunkCursor>,
    /// Seconds spent in SGD steps in this session.
    train_seconds: f64,
    /// `--metrics-bind`'s handles, and the minibatch size to count steps by.
    metrics: (WorkerMetrics, usize),
    /// When the first pull started training and the last one finished: the
    /// span whose time not spent training was lost to synchronisation
    /// (waiting for the run to start or for the final evaluation is not).
    training_span: Option<(Instant, Instant)>,
}

impl Session {
    fn new(replica: Replica, outbox: Outbox, link: Arc<Link>, slowdown: f64, metrics: (WorkerMetrics, usize)) -> Self {
        Session {
            outbox,
            link,
            slowdown,
            len: replica.len(),
            replica: Some(replica),
            training: None,
            away: None,
            steps_here: false,
            correction_waiting: None,
            spare_average: None,
            trained: None,
            deferred: VecDeque::new(),
            sent: None,
            incoming: None,
            incoming_reference: None,
            train_seconds: 0.0,
            metrics,
            training_span: None,
        }
    }

    /// Whether a command that needs the replica must wait its turn.
    fn busy(&self) -> bool {
        self.training.is_some() || self.trained.is_some() || !self.deferred.is_empty()
    }

    fn replica(&mut self) -> &mut Replica {
        self.replica.as_mut().expect("the replica is here while no minibatch is away")
    }

    /// Moves the replica's weights into the lane's weights area, if it has
    /// one (a model up to 8 MiB) and the replica is here (a lane is offered
    /// before anything trains): the coordinator then reads them where they
    /// are trained, and sending them copies nothing.
    fn keep_weights_in_lane(&mut self) -> bool {
        let Some(halves) = self.link.weights_area(self.len) else { return false };
        let halves = halves.map(|half| Box::new(half) as Box<dyn WeightsMemory>);
        self.replica.as_mut().is_some_and(|replica| replica.keep_weights_in(halves))
    }

    /// Whether the pull in progress has a minibatch to train here and now.
    fn may_step(&self) -> bool {
        self.training.as_ref().is_some_and(|training| training.progress.is_some())
    }

    /// A buffer of the model's length to assemble an average in.
    fn average_buffer(&mut self) -> Vec<f32> {
        match self.spare_average.take() {
            Some(buffer) if buffer.len() == self.len => buffer,
            _ => vec![0.0; self.len],
        }
    }

    /// Applies an assembled average and keeps its buffer for the next one.
    fn apply_staged(&mut self, average: Vec<f32>, correction: bool) -> Applied {
        let applied = self.replica().apply(&average, correction);
        self.spare_average = Some(average);
        applied
    }

    /// Obeys one command; `Some` when the coordinator said stop.
    async fn command(&mut self, kind: Command) -> Result<Option<Ending>> {
        match kind {
            Command::Shard(shard) if self.busy() => self.deferred.push_back(Deferred::Shard(shard)),
            Command::Shard(shard) => self.replica().assign(&shard)?,
            Command::Pull(pull) if self.lift_wait(&pull) => self.flush()?,
            Command::Pull(pull) if self.busy() => self.deferred.push_back(Deferred::Pull(pull)),
            Command::Pull(pull) => self.start(pull)?,
            Command::Reference(mut chunk) => {
                self.link.take(&mut chunk)?;
                self.reference(chunk.into())?
            }
            Command::Average(mut chunk) => {
                self.link.take(&mut chunk)?;
                self.average(chunk.into())?
            }
            Command::LaneOffer(offer) => {
                let answer = self.link.accept(&offer);
                let kept_in_lane = answer.accepted && self.keep_weights_in_lane();
                match answer.accepted {
                    true => debug!(
                        path = offer.path,
                        board = answer.board_accepted,
                        weights_in_lane = kept_in_lane,
                        reason = answer.reason,
                        "weights go through a shared-memory lane"
                    ),
                    false => debug!(reason = answer.reason, "shared-memory lane declined; weights go over gRPC"),
                }
                send(&self.outbox, Reply::LaneAnswer(answer))?;
            }
            Command::LaneFree(free) => self.link.freed(free.taken)?,
            Command::Rejected(rejected) => {
                warn!(code = rejected.code, error = rejected.message, "the coordinator refused a message")
            }
            Command::Stop(stop) => {
                info!(
                    reason = stop.reason,
                    train_seconds = self.train_seconds,
                    span_seconds = self.span_seconds(),
                    idle_share = self.idle_share(),
                    "stopped by the coordinator"
                );
                return Ok(Some(match (stop.completed, stop.resumable) {
                    (true, _) => Ending::Completed,
                    (false, true) => Ending::Suspended(stop.reason),
                    (false, false) => Ending::Aborted(stop.reason),
                }));
            }
        }
        Ok(None)
    }

    /// A pull for the epoch and round of one already here is the coordinator
    /// lifting its wait (the round it waited for was abandoned).
    fn lift_wait(&mut self, pull: &pb::PullWeights) -> bool {
        let lifted = self
            .training
            .as_mut()
            .map(|t| &mut t.pull)
            .into_iter()
            .chain(self.trained.as_mut().map(|t| &mut t.pull))
            .chain(self.deferred.iter_mut().filter_map(|d| match d {
                Deferred::Pull(p) => Some(p),
                _ => None,
            }))
            .find(|held| (held.epoch, held.round) == (pull.epoch, pull.round))
            .map(|held| held.after_round = pull.after_round)
            .is_some();
        if lifted {
            debug!(epoch = pull.epoch, round = pull.round, after_round = pull.after_round, "wait lifted");
        }
        lifted
    }

    /// Starts training a pull: its minibatches are trained on the loop's
    /// next turns.
    fn start(&mut self, pull: pb::PullWeights) -> Result<()> {
        let now = Instant::now();
        self.training_span.get_or_insert((now, now));
        let progress = self.replica().begin(&pull)?;
        self.training = Some(Training { pull, progress: Some(progress) });
        Ok(())
    }

    /// Trains the pull in progress on: quick minibatches here for up to
    /// [`TURN`], or the next one on the blocking pool if it may be slow.
    async fn step(&mut self) -> Result<()> {
        let training = self.training.as_mut().expect("stepped only while a pull trains");
        let mut progress = training.progress.take().expect("stepped only between two minibatches");
        let mut replica = self.replica.take().expect("the replica is here between two minibatches");
        // A pull with nothing (more) to train is answered here, unless its
        // weights are still to be aligned (`--align`, slow as several
        // minibatches: always on the blocking pool).
        if !replica.aligns() && (self.steps_here || progress.is_trained()) {
            let turn = Instant::now();
            let mut took = replica.step(&mut progress);
            // Quick minibatches share a turn: each turn costs a yield and a
            // look at the connection.
            while took.is_some_and(|took| took < SLOW_STEP) && !progress.is_trained() && turn.elapsed() < TURN {
                took = replica.step(&mut progress);
            }
            return self.stepped(replica, progress, took).await;
        }
        self.away = Some(tokio::task::spawn_blocking(move || {
            let took = replica.step(&mut progress);
            (replica, progress, took)
        }));
        Ok(())
    }

    /// A turn of training is done (its last minibatch `took` that long,
    /// `None`: none was left): apply an average that came meanwhile, and
    /// answer the pull once all its minibatches are trained.
    async fn stepped(&mut self, replica: Replica, progress: PullTraining, took: Option<Duration>) -> Result<()> {
        self.replica = Some(replica);
        if let Some(took) = took {
            let here = took < SLOW_STEP;
            // With `--align` every minibatch goes to the pool whatever it took.
            if here != self.steps_here && !self.replica().aligns() {
                let took_ms = took.as_secs_f64() * 1e3;
                let on = if here { "the session's thread" } else { "the blocking pool (they are slow)" };
                debug!(took_ms, "minibatches train on {on}");
            }
            self.steps_here = here;
        }
        if let Some((epoch, round, average)) = self.correction_waiting.take() {
            let applied = self.apply_staged(average, true);
            self.log_applied(epoch, round, applied);
        }
        let training = self.training.as_mut().expect("a pull was training");
        if !progress.is_trained() {
            training.progress = Some(progress);
            return Ok(());
        }
        let pull = self.training.take().expect("a pull was training").pull;
        let report = self.replica().finish(&pull, progress)?;
        self.account(&report);
        if self.slowdown > 1.0 {
            tokio::time::sleep(Duration::from_secs_f64(report.train_seconds * (self.slowdown - 1.0))).await;
        }
        self.trained = Some(Trained { pull, report });
        self.flush()
    }

    /// Adds a trained pull to the session's training time and span.
    fn account(&mut self, report: &pb::RoundReport) {
        self.train_seconds += report.train_seconds;
        if let Some((_, last)) = self.training_span.as_mut() {
            *last = Instant::now();
        }
        let (metrics, batch_size) = &self.metrics;
        if report.train_seconds > 0.0 {
            let steps = report.samples.div_ceil(*batch_size as u64) as f64;
            metrics.steps_per_second.set(steps / report.train_seconds);
        }
        metrics.idle_ratio.set(self.idle_share());
    }

    fn span_seconds(&self) -> f64 {
        self.training_span.map_or(0.0, |(first, last)| (last - first).as_secs_f64())
    }

    /// Share of the training span not spent training.
    fn idle_share(&self) -> f64 {
        (1.0 - self.train_seconds / self.span_seconds().max(f64::EPSILON)).clamp(0.0, 1.0)
    }

    /// Sends what may be sent and runs deferred commands, until a pull trains,
    /// a trained pull waits for an average, or nothing is left. Weights to
    /// send are snapshotted first and queued last, once the next pull (if one
    /// is here) has started: the connection sends them while it trains.
    fn flush(&mut self) -> Result<()> {
        let mut outgoing = None;
        while self.training.is_none() {
            if let Some(trained) = &self.trained {
                let pull = &trained.pull;
                if pull.after_round != 0 && self.sent == Some((pull.epoch, pull.after_round)) {
                    break;
                }
                let trained = self.trained.take().expect("checked");
                let weights = self.replica().snapshot_to_send();
                self.sent = Some((trained.pull.epoch, trained.pull.round));
                outgoing = Some((trained, weights));
            }
            match self.deferred.pop_front() {
                None => break,
                Some(Deferred::Shard(shard)) => self.replica().assign(&shard)?,
                Some(Deferred::Pull(pull)) => self.start(pull)?,
                Some(Deferred::Replace { epoch, round, average }) => {
                    self.apply_staged(average, false);
                    self.sent = None;
                    self.log_applied(epoch, round, Applied::Replaced);
                }
            }
        }
        match outgoing {
            Some((trained, weights)) => self.send_weights(trained, weights),
            None => Ok(()),
        }
    }

    /// Sends the report and the weights of a trained pull.
    fn send_weights(&self, trained: Trained, weights: Bytes) -> Result<()> {
        let Trained { pull, report } = trained;
        send(&self.outbox, Reply::Report(report))?;
        for chunk in encoded_chunks(pull.epoch, pull.round, weights) {
            send(&self.outbox, Reply::Weights(chunk.into()))?;
        }
        Ok(())
    }

    /// Takes one chunk of an average. It goes straight into the model when
    /// it may (a correction with no pull training, or a replacement with
    /// nothing waiting to be sent), else into a staging buffer first.
    fn average(&mut self, chunk: Chunk) -> Result<()> {
        let mut incoming = match self.incoming.take() {
            Some(incoming) if chunk.offset > 0 => incoming,
            _ => {
                let correction = self.sent == Some((chunk.epoch, chunk.round));
                let direct = if correction { self.training.is_none() } else { !self.busy() };
                Incoming {
                    cursor: ChunkCursor::new(chunk.epoch, chunk.round, self.len),
                    correction,
                    staged: (!direct).then(|| self.average_buffer()),
                }
            }
        };
        let range = incoming.cursor.advance(&chunk)?;
        match incoming.staged.as_mut() {
            Some(buffer) => decode_into(&mut buffer[range], &chunk.data),
            // Only a coordinator that broke the protocol starts a pull
            // between the chunks of an average meant for the model itself.
            None if self.training.is_some() => {
                let problem = "a pull started training in the middle of this average".to_owned();
                let (epoch, round, offset) = (chunk.epoch, chunk.round, chunk.offset);
                return Err(ProtoError::Chunk { epoch, round, offset, problem }.into());
            }
            None => self.replica().receive(range, &chunk.data, incoming.correction),
        }
        if !incoming.cursor.is_complete() {
            self.incoming = Some(incoming);
            return Ok(());
        }
        let (epoch, round) = (chunk.epoch, chunk.round);
        // Whatever average this is, none is awaited for the weights sent last.
        self.sent = None;
        if incoming.correction {
            // Averages come in round order: a replacement still queued is older.
            self.deferred.retain(|d| !matches!(d, Deferred::Replace { .. }));
        }
        match (incoming.staged, incoming.correction) {
            (None, correction) => {
                let applied = self.replica().received(correction);
                self.log_applied(epoch, round, applied);
            }
            (Some(average), true) if self.away.is_some() => self.correction_waiting = Some((epoch, round, average)),
            // Between two minibatches, if a pull trains: the next trains on from it.
            (Some(average), true) => {
                let applied = self.apply_staged(average, true);
                self.log_applied(epoch, round, applied);
            }
            (Some(average), false) if self.busy() => {
                self.deferred.push_back(Deferred::Replace { epoch, round, average })
            }
            (Some(average), false) => {
                self.apply_staged(average, false);
                self.log_applied(epoch, round, Applied::Replaced);
            }
        }
        // A trained pull may have been waiting for this average.
        self.flush()
    }

    /// `--align` with `--init independent`: one chunk of the coordinator's
    /// weights, sent right after attaching, which the first contribution is
    /// matched to (the weights this worker starts from are its own).
    fn reference(&mut self, chunk: Chunk) -> Result<()> {
        let mut cursor = match self.incoming_reference.take() {
            Some(cursor) if chunk.offset > 0 => cursor,
            _ => ChunkCursor::new(chunk.epoch, chunk.round, self.len),
        };
        let range = cursor.advance(&chunk)?;
        if self.training.is_some() {
            let problem = "reference weights came while a pull trains".to_owned();
            return Err(
                ProtoError::Chunk { epoch: chunk.epoch, round: chunk.round, offset: chunk.offset, problem }.into()
            );
        }
        self.replica().receive_reference(range, &chunk.data)?;
        if cursor.is_complete() {
            self.replica().reference_received();
            debug!("the coordinator's weights received as the first round's reference (--align)");
        } else {
            self.incoming_reference = Some(cursor);
        }
        Ok(())
    }

    fn log_applied(&self, epoch: u64, round: u64, applied: Applied) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        match applied {
            Applied::Replaced => {
                let params = self.replica.as_ref().expect("applied here").params();
                debug!(epoch, round, digest = digest(params), "weights applied");
            }
            Applied::Corrected { steps } => debug!(epoch, round, steps, "average applied as a correction"),
        }
    }
}

/// Resolves when the minibatch on the blocking pool is trained (poll only while there is one).
async fn minibatch_away(away: &mut Option<Away>) -> (Replica, PullTraining, Option<Duration>) {
    let handle = away.as_mut().expect("polled only while a minibatch is away");
    let stepped = handle.await.expect("training does not panic");
    *away = None;
    stepped
}

fn send(outbox: &Outbox, kind: Reply) -> Result<()> {
    outbox.send(pb::WorkerMessage { kind: Some(kind), ..Default::default() }).map_err(|_| Error::SessionEnded)
}
