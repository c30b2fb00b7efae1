//! One session with the coordinator: attach, then obey its commands until it
//! says stop or the stream breaks.
//!
//! A pull trains on the blocking pool while the session goes on reading
//! commands. An average that arrives meanwhile is assembled in a buffer and
//! handed to the training thread, which applies it between two minibatches;
//! every other command waits, in order, until the pull is answered. A pull
//! sent ahead (`after_round`, the coordinator's `--overlap`) is answered only
//! once the average of that round is applied, so a worker is never more than
//! one round ahead of the average.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lazyavg_common::config::RunSpec;
use lazyavg_common::dataset::Dataset;
use lazyavg_common::params::digest;
use lazyavg_proto::chunks::{ChunkCursor, decode_into, weight_chunks};
use lazyavg_proto::pb;
use lazyavg_proto::pb::coordinator_message::Kind as Command;
use lazyavg_proto::pb::worker_message::Kind as Reply;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::Client;
use crate::error::{Error, Result};
use crate::replica::{Applied, AverageSlot, Replica};

/// How a session ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The run completed.
    Completed,
    /// The coordinator stopped the run early, for this reason.
    Aborted(String),
}

/// Runs a session for worker `id`. `attached` is called once the coordinator
/// has accepted the session (the caller resets its backoff then).
pub async fn run(
    client: &mut Client,
    id: u64,
    spec: &RunSpec,
    data: Arc<Dataset>,
    slowdown: f64,
    attached: impl FnOnce(),
) -> Result<Ending> {
    let (outbox, replies) = mpsc::channel(64);
    send(&outbox, Reply::Attach(pb::Attach { worker_id: id })).await?;
    let mut inbound =
        client.session(ReceiverStream::new(replies)).await.map_err(Error::refused("Session"))?.into_inner();
    attached();
    let mut session = Session::new(Replica::new(spec, data)?, outbox, slowdown);
    loop {
        tokio::select! {
            message = inbound.message() => {
                let Some(message) = message.map_err(Error::refused("Session"))? else { break };
                let Some(kind) = message.kind else { continue };
                if let Some(ending) = session.command(kind).await? {
                    return Ok(ending);
                }
            }
            (replica, report) = session.training(), if session.job.is_some() => {
                session.trained(replica, report).await?;
            }
        }
    }
    Err(Error::SessionEnded)
}

/// A pull being trained on the blocking pool, which has the replica meanwhile.
#[derive(Debug)]
struct Job {
    pull: pb::PullWeights,
    handle: JoinHandle<(Replica, Result<pb::RoundReport>)>,
}

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

#[derive(Debug)]
struct Session {
    outbox: mpsc::Sender<pb::WorkerMessage>,
    slowdown: f64,
    /// Parameters in the model.
    len: usize,
    /// `None` while a job has it.
    replica: Option<Replica>,
    slot: Arc<AverageSlot>,
    job: Option<Job>,
    trained: Option<Trained>,
    deferred: VecDeque<Deferred>,
    /// Epoch and round of the weights last sent, until their average comes.
    sent: Option<(u64, u64)>,
    incoming: Option<Incoming>,
    /// Seconds spent in SGD steps in this session.
    train_seconds: f64,
    /// When the first pull started training and the last one finished: the
    /// span whose time not spent training was lost to synchronisation
    /// (waiting for the run to start or for the final evaluation is not).
    training_span: Option<(Instant, Instant)>,
}

impl Session {
    fn new(replica: Replica, outbox: mpsc::Sender<pb::WorkerMessage>, slowdown: f64) -> Self {
        Session {
            outbox,
            slowdown,
            len: replica.len(),
            slot: replica.slot(),
            replica: Some(replica),
            job: None,
            trained: None,
            deferred: VecDeque::new(),
            sent: None,
            incoming: None,
            train_seconds: 0.0,
            training_span: None,
        }
    }

    /// Whether a command that needs the replica must wait its turn.
    fn busy(&self) -> bool {
        self.job.is_some() || self.trained.is_some() || !self.deferred.is_empty()
    }

    fn replica(&mut self) -> &mut Replica {
        self.replica.as_mut().expect("the replica is here while no pull trains")
    }

    /// Obeys one command; `Some` when the coordinator said stop.
    async fn command(&mut self, kind: Command) -> Result<Option<Ending>> {
        match kind {
            Command::Shard(shard) if self.busy() => self.deferred.push_back(Deferred::Shard(shard)),
            Command::Shard(shard) => self.replica().assign(&shard)?,
            Command::Pull(pull) if self.lift_wait(&pull) => self.flush().await?,
            Command::Pull(pull) if self.busy() => self.deferred.push_back(Deferred::Pull(pull)),
            Command::Pull(pull) => self.start(pull),
            Command::Average(chunk) => self.average(chunk).await?,
            Command::Rejected(rejected) => {
                warn!(code = rejected.code, error = rejected.message, "the coordinator refused a message")
            }
            Command::Stop(stop) => {
                let span = self.training_span.map_or(0.0, |(first, last)| (last - first).as_secs_f64());
                info!(
                    reason = stop.reason,
                    train_seconds = self.train_seconds,
                    span_seconds = span,
                    idle_share = (1.0 - self.train_seconds / span.max(f64::EPSILON)).clamp(0.0, 1.0),
                    "stopped by the coordinator"
                );
                return Ok(Some(if stop.completed { Ending::Completed } else { Ending::Aborted(stop.reason) }));
            }
        }
        Ok(None)
    }

    /// A pull for the epoch and round of one already here is the coordinator
    /// lifting its wait (the round it waited for was abandoned).
    fn lift_wait(&mut self, pull: &pb::PullWeights) -> bool {
        let held = self
            .job
            .as_mut()
            .map(|j| &mut j.pull)
            .into_iter()
            .chain(self.trained.as_mut().map(|t| &mut t.pull))
            .chain(self.deferred.iter_mut().filter_map(|d| match d {
                Deferred::Pull(p) => Some(p),
                _ => None,
            }))
            .find(|held| (held.epoch, held.round) == (pull.epoch, pull.round));
        match held {
            Some(held) => {
                debug!(epoch = pull.epoch, round = pull.round, after_round = held.after_round, "wait lifted");
                held.after_round = pull.after_round;
                true
            }
            None => false,
        }
    }

    /// Starts training a pull on the blocking pool.
    fn start(&mut self, pull: pb::PullWeights) {
        let now = Instant::now();
        self.training_span.get_or_insert((now, now));
        let mut replica = self.replica.take().expect("one pull trains at a time");
        let handle = tokio::task::spawn_blocking(move || {
            let report = replica.train(&pull);
            (replica, report)
        });
        self.job = Some(Job { pull, handle });
    }

    /// Resolves when the job in progress has trained (poll only while there is one).
    async fn training(&mut self) -> (Replica, Result<pb::RoundReport>) {
        let job = self.job.as_mut().expect("polled only while a pull trains");
        (&mut job.handle).await.expect("training does not panic")
    }

    /// The job is done: take the replica back and answer the pull if it may be.
    async fn trained(&mut self, mut replica: Replica, report: Result<pb::RoundReport>) -> Result<()> {
        let job = self.job.take().expect("a job was training");
        if let Some(applied) = replica.apply_pending() {
            log_correction(&job.pull, applied);
        }
        self.replica = Some(replica);
        let report = report?;
        self.train_seconds += report.train_seconds;
        if let Some((_, last)) = self.training_span.as_mut() {
            *last = Instant::now();
        }
        if self.slowdown > 1.0 {
            tokio::time::sleep(Duration::from_secs_f64(report.train_seconds * (self.slowdown - 1.0))).await;
        }
        self.trained = Some(Trained { pull: job.pull, report });
        self.flush().await
    }

    /// Sends what may be sent and runs deferred commands, until a pull trains,
    /// a trained pull waits for an average, or nothing is left. Weights to
    /// send are snapshotted first and sent last, once the next pull (if one
    /// is here) trains: encoding and queueing them is not time lost to it.
    async fn flush(&mut self) -> Result<()> {
        let mut outgoing = None;
        while self.job.is_none() {
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
                Some(Deferred::Pull(pull)) => self.start(pull),
                Some(Deferred::Replace { epoch, round, average }) => {
                    self.replica().apply(&average, false);
                    self.slot.recycle(average);
                    self.sent = None;
                    self.log_applied(epoch, round, Applied::Replaced);
                }
            }
        }
        match outgoing {
            Some((trained, weights)) => self.send_weights(trained, &weights).await,
            None => Ok(()),
        }
    }

    /// Sends the report and the weights of a trained pull.
    async fn send_weights(&self, trained: Trained, weights: &[f32]) -> Result<()> {
        let Trained { pull, report } = trained;
        send(&self.outbox, Reply::Report(report)).await?;
        for chunk in weight_chunks(pull.epoch, pull.round, weights) {
            send(&self.outbox, Reply::Weights(chunk)).await?;
        }
        Ok(())
    }

    /// Takes one chunk of an average. It goes straight into the model when
    /// it may (a correction with no pull training, or a replacement with
    /// nothing waiting to be sent), else into a staging buffer first.
    async fn average(&mut self, chunk: pb::WeightsChunk) -> Result<()> {
        let mut incoming = match self.incoming.take() {
            Some(incoming) if chunk.offset > 0 => incoming,
            _ => {
                let correction = self.sent == Some((chunk.epoch, chunk.round));
                let direct = if correction { self.job.is_none() } else { !self.busy() };
                Incoming {
                    cursor: ChunkCursor::new(chunk.epoch, chunk.round, self.len),
                    correction,
                    staged: (!direct).then(|| self.slot.buffer(self.len)),
                }
            }
        };
        let range = incoming.cursor.advance(&chunk)?;
        match incoming.staged.as_mut() {
            Some(buffer) => decode_into(&mut buffer[range], &chunk.data),
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
            (Some(average), true) => match self.replica.as_mut() {
                Some(replica) => {
                    let applied = replica.apply(&average, true);
                    self.slot.recycle(average);
                    self.log_applied(epoch, round, applied);
                }
                None => {
                    debug!(epoch, round, "average handed to the training thread");
                    self.slot.put(average);
                }
            },
            (Some(average), false) if self.busy() => {
                self.deferred.push_back(Deferred::Replace { epoch, round, average })
            }
            (Some(average), false) => {
                self.replica().apply(&average, false);
                self.slot.recycle(average);
                self.log_applied(epoch, round, Applied::Replaced);
            }
        }
        // A trained pull may have been waiting for this average.
        self.flush().await
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

fn log_correction(pull: &pb::PullWeights, applied: Applied) {
    if let Applied::Corrected { steps } = applied {
        debug!(epoch = pull.epoch, round = pull.after_round, steps, "average applied as a correction");
    }
}

async fn send(outbox: &mpsc::Sender<pb::WorkerMessage>, kind: Reply) -> Result<()> {
    outbox.send(pb::WorkerMessage { kind: Some(kind) }).await.map_err(|_| Error::SessionEnded)
}
