//! The gRPC service: thin glue that checks the handshake, serves the dataset
//! and turns each worker's session into [`Event`]s for the driver, which owns
//! all training state.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use lazyavg_proto::lane::{Board, LaneError, LaneFile, Link, Outbound, Side};
use lazyavg_proto::message::FromWorker;
use lazyavg_proto::pb::coordinator_message::Kind as Command;
use lazyavg_proto::pb::worker_message::Kind as Reply;
use lazyavg_proto::{MAX_CHUNK_BYTES, PROTOCOL_VERSION, pb};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::data::DatasetOffer;
use crate::edge::Mailbox;
use crate::ending::RunEnd;
use crate::gate::Gate;
use crate::observe::board::StatusView;
use crate::observe::log::RefusalLog;
use crate::registry::{Registry, RegistryError, printable};
use crate::round::WorkerId;

type Queue = mpsc::Receiver<Result<pb::CoordinatorMessage, Status>>;

/// Held by the driver for as long as it keeps a worker: dropping it closes
/// the worker's session, and frees the commands still queued for it, even
/// when the worker has stopped reading (its queue would otherwise live as
/// long as its connection).
#[derive(Debug)]
pub struct Leash {
    _held_by_the_driver: oneshot::Sender<()>,
}

/// What the service tells the driver.
#[derive(Debug)]
pub enum Event {
    /// A worker opened its session from `address`; commands for it go to `mailbox`.
    Attached { id: WorkerId, name: String, address: String, mailbox: Mailbox, leash: Leash },
    /// A worker sent a message on its session.
    Message { id: WorkerId, message: FromWorker },
    /// A worker's session ended.
    Detached { id: WorkerId, reason: String },
}

/// State shared by every request handler.
#[derive(Debug)]
pub struct Shared {
    pub run_config: pb::RunConfig,
    pub dataset: DatasetOffer,
    /// A std mutex: held only for a map lookup, never across an await.
    pub registry: Mutex<Registry>,
    pub events: mpsc::Sender<Event>,
    /// How far each session lets its worker's weights through (see [`crate::gate`]).
    pub gate: Gate,
    /// Capacity of each session's command queue.
    pub outbox_capacity: usize,
    /// How long a new session may take to send its Attach.
    pub attach_timeout: Duration,
    /// Whether a worker that asks gets a shared-memory lane (see [`lazyavg_proto::lane`]).
    pub shared_memory: bool,
    /// The model's weights in bytes, which a lane's weights area must hold.
    pub model_bytes: usize,
    /// The weights the driver sends, for the workers with a lane to read
    /// in place (see [`lazyavg_proto::lane::Board`]).
    pub lane_board: Option<Arc<Board>>,
    /// What the Status call answers.
    pub status: StatusView,
    /// Refusals of Joins, sessions and downloads, logged in summary.
    pub refusals: Mutex<RefusalLog>,
    /// Set once the run has completed: Join is refused from then on (see
    /// [`lazyavg_proto::ending`]), so a worker that missed the end exits.
    pub end: RunEnd,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// `err` as the status a client gets, logged at most once a while per kind.
    fn refuse(&self, call: &'static str, err: &RegistryError) -> Status {
        let status = Status::from(err);
        self.refusals().refused(call, &status, Instant::now());
        status
    }

    pub fn refusals(&self) -> MutexGuard<'_, RefusalLog> {
        lock(&self.refusals)
    }
}

/// A session's place under `--max-sessions`, given back when the last holder
/// drops it: the request handler, then its reply forwarder and its response
/// stream (which lives as long as HTTP/2 has not sent it all).
#[derive(Debug)]
struct SessionSlot(Arc<Shared>);

impl SessionSlot {
    fn open(shared: &Arc<Shared>) -> Result<SessionSlot, Status> {
        shared.registry().open_session().map_err(|e| shared.refuse("Session", &e))?;
        Ok(SessionSlot(Arc::clone(shared)))
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.registry().close_session();
    }
}

/// An admitted `FetchDataset` stream of one worker id, ended when dropped.
#[derive(Debug)]
struct FetchSlot(Arc<Shared>, WorkerId);

impl Drop for FetchSlot {
    fn drop(&mut self) {
        self.0.registry().end_fetch(self.1, Instant::now());
    }
}

/// Forgets an id attached for a session that never reached the driver: the
/// request may also be dropped (the client reset its stream) while it waits
/// to hand the session over, and the id would then stay attached for ever.
struct Unattach<'a> {
    shared: &'a Shared,
    /// `None` once the driver has the session.
    id: Option<WorkerId>,
}

impl Drop for Unattach<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.shared.registry().detach(id);
        }
    }
}

/// A session's commands, as the response stream. The queue is shared with
/// the reply forwarder, which empties it when the driver drops the worker.
#[derive(Debug)]
pub struct Commands {
    queue: Arc<Mutex<Queue>>,
    _slot: Arc<SessionSlot>,
}

impl Stream for Commands {
    type Item = Result<pb::CoordinatorMessage, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        lock(&self.queue).poll_recv(cx)
    }
}

#[derive(Debug, Clone)]
pub struct CoordinatorService {
    shared: Arc<Shared>,
}

impl CoordinatorService {
    pub fn new(shared: Arc<Shared>) -> Self {
        CoordinatorService { shared }
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::DatasetChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        let request = request.into_inner();
        let name = if request.name.is_empty() { "unnamed" } else { request.name.as_str() };
        if self.shared.end.is_completed() {
            self.shared.end.told(&printable(name));
            return Err(lazyavg_proto::ending::run_completed());
        }
        if request.protocol_version != PROTOCOL_VERSION {
            let status = Status::failed_precondition(format!(
                "worker speaks protocol version {}, this coordinator speaks {PROTOCOL_VERSION}: run the same lazyavg release on both",
                request.protocol_version
            ));
            // The operator reading the coordinator's log sees why a worker never joins.
            self.shared.refusals().refused("Join", &status, Instant::now());
            return Err(status);
        }
        let worker_id =
            self.shared.registry().join(name, Instant::now()).map_err(|e| self.shared.refuse("Join", &e))?;
        debug!(worker = worker_id, "handshake");
        let dataset = &self.shared.dataset;
        Ok(Response::new(pb::JoinReply {
            worker_id,
            config: Some(self.shared.run_config.clone()),
            dataset: Some(pb::DatasetInfo {
                sha256: dataset.sha256.clone(),
                bytes: dataset.len,
                images: dataset.images,
            }),
        }))
    }

    type FetchDatasetStream = ChunkStream;

    async fn fetch_dataset(
        &self,
        request: Request<pb::FetchDatasetRequest>,
    ) -> Result<Response<Self::FetchDatasetStream>, Status> {
        let request = request.into_inner();
        let dataset = &self.shared.dataset;
        if request.sha256 != dataset.sha256 {
            return Err(Status::failed_precondition(format!(
                "dataset {} is not this run's ({})",
                request.sha256, dataset.sha256
            )));
        }
        let len = dataset.len as usize;
        let start = usize::try_from(request.offset).ok().filter(|&o| o <= len).ok_or_else(|| {
            Status::out_of_range(format!("offset {} is past the dataset's {len} bytes", request.offset))
        })?;
        let id = request.worker_id;
        self.shared
            .registry()
            .start_fetch(id, (len - start) as u64, Instant::now())
            .map_err(|e| self.shared.refuse("FetchDataset", &e))?;
        let slot = FetchSlot(Arc::clone(&self.shared), id);
        let dataset = dataset.clone();
        let chunks = futures::stream::iter((start..len).step_by(MAX_CHUNK_BYTES)).then(move |offset| {
            // Each chunk keeps the Join alive; one whose reader stalled past
            // the deadline was forgotten, and its download ends here. The
            // download ends when the stream is dropped, complete or not.
            let end = (offset + MAX_CHUNK_BYTES).min(len);
            let progress = slot.0.registry().fetch_progress(slot.1, Instant::now());
            // Read outside the registry's lock, which every Join and Attach takes.
            let read = progress.map(|()| dataset.read(offset as u64, end - offset));
            async move {
                let data = read.map_err(|e| Status::from(&e))?.await.map_err(|e| {
                    Status::internal(format!("cannot read bytes {offset}..{end} of the dataset's spool file: {e}"))
                })?;
                Ok(pb::DatasetChunk { offset: offset as u64, data })
            }
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::RunStatus>, Status> {
        Ok(Response::new(pb::RunStatus::from(&self.shared.status.snapshot())))
    }

    type SessionStream = Outbound<Commands>;

    async fn session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let slot = SessionSlot::open(&self.shared)?;
        let address = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut inbound = request.into_inner();
        let timeout = self.shared.attach_timeout;
        let first = tokio::time::timeout(timeout, inbound.message()).await.map_err(|_| {
            Status::deadline_exceeded(format!(
                "no Attach within {} of opening the session (--attach-timeout)",
                humantime::format_duration(timeout)
            ))
        })?;
        let first = first?.ok_or_else(|| Status::invalid_argument("session closed before Attach"))?;
        let Some(Reply::Attach(attach)) = first.kind else {
            return Err(Status::invalid_argument("the first message of a session must be Attach"));
        };
        let id = attach.worker_id;
        let name = self.shared.registry().attach(id, Instant::now()).map_err(|e| self.shared.refuse("Attach", &e))?;
        let mut unattach = Unattach { shared: &self.shared, id: Some(id) };
        let (outbox, queue) = mpsc::channel(self.shared.outbox_capacity);
        let link = Arc::new(self.offer_lane(id, attach.shared_memory, &outbox));
        let (leash, dropped) = oneshot::channel();
        let (mailbox, leash) = (Mailbox::new(outbox), Leash { _held_by_the_driver: leash });
        let attached = Event::Attached { id, name, address, mailbox, leash };
        if self.shared.events.send(attached).await.is_err() {
            return Err(Status::unavailable("the coordinator is shutting down"));
        }
        unattach.id = None;
        let commands = Commands { queue: Arc::new(Mutex::new(queue)), _slot: Arc::new(slot) };
        let gate = self.shared.gate.clone();
        let queue = Arc::clone(&commands.queue);
        let session = Session { inbound, id, shared: Arc::clone(&self.shared), dropped, gate, link: Arc::clone(&link) };
        tokio::spawn(session.forward_replies(queue, Arc::clone(&commands._slot)));
        Ok(Response::new(Outbound::new(commands, link)))
    }
}

impl CoordinatorService {
    /// A shared-memory lane for worker `id`'s session if it asked for one
    /// (and `--no-shared-memory` is not set), offered as the session's
    /// first message. Without one its weights go over gRPC.
    fn offer_lane(
        &self,
        id: WorkerId,
        asked: bool,
        outbox: &mpsc::Sender<Result<pb::CoordinatorMessage, Status>>,
    ) -> Link {
        if !(asked && self.shared.shared_memory) {
            return Link::new(Side::Coordinator);
        }
        let (lane, mut offer) = match LaneFile::create(&format!("worker-{id}"), self.shared.model_bytes) {
            Ok(made) => made,
            Err(err) => {
                debug!(worker = id, error = %err, "no shared-memory lane; weights go over gRPC");
                return Link::new(Side::Coordinator);
            }
        };
        let board = self.shared.lane_board.clone();
        offer.board = board.as_ref().map(|board| board.offer());
        // The queue is new and empty: the offer goes first.
        let message = pb::CoordinatorMessage { kind: Some(Command::LaneOffer(offer)), lane_taken: 0 };
        match outbox.try_send(Ok(message)) {
            Ok(()) => Link::offered(lane, board),
            Err(_) => Link::new(Side::Coordinator),
        }
    }
}

/// The inbound half of an attached session.
struct Session {
    inbound: Streaming<pb::WorkerMessage>,
    id: WorkerId,
    shared: Arc<Shared>,
    /// Resolves when the driver drops the worker (its [`Leash`]).
    dropped: oneshot::Receiver<()>,
    gate: Gate,
    /// The session's shared-memory lane, if it has one.
    link: Arc<Link>,
}

impl Session {
    /// Passes a session's messages to the driver until the stream ends or
    /// the driver drops the worker, then reports the worker gone and forgets
    /// its id. Weights wait at the gate while they are too far ahead of the
    /// round's slowest worker. Holds the session's place (`_slot`) meanwhile.
    async fn forward_replies(mut self, queue: Arc<Mutex<Queue>>, _slot: Arc<SessionSlot>) {
        let (id, shared) = (self.id, Arc::clone(&self.shared));
        let reason = loop {
            let message = tokio::select! {
                message = self.inbound.message() => message,
                _ = &mut self.dropped => break dropped(&queue),
            };
            match message {
                Ok(Some(pb::WorkerMessage { kind: Some(reply), lane_taken, board_taken })) => {
                    let credited = self.link.credited(lane_taken, board_taken);
                    let reply = match credited.and_then(|()| self.through_lane(reply)) {
                        Ok(Some(reply)) => reply,
                        Ok(None) => continue,
                        Err(err) => break err.to_string(),
                    };
                    let Some(message) = FromWorker::from_pb(reply) else { break "sent a second Attach".to_owned() };
                    if let FromWorker::Weights(chunk) = &message {
                        tokio::select! {
                            () = self.gate.admit(chunk) => {}
                            _ = &mut self.dropped => break dropped(&queue),
                        }
                    }
                    if shared.events.send(Event::Message { id, message }).await.is_err() {
                        return;
                    }
                }
                Ok(Some(pb::WorkerMessage { kind: None, .. })) => break "sent an empty message".to_owned(),
                Ok(None) => break "closed its session".to_owned(),
                Err(status) => break format!("session failed: {}", status.message()),
            }
        };
        // Nobody reads the worker's lane credits any more: a chunk waiting
        // for a slot would wait for ever, and hold the session open.
        self.link.close();
        shared.registry().detach(id);
        let _ = shared.events.send(Event::Detached { id, reason }).await;
    }

    /// Handles the lane's own messages (`None` then) and takes a chunk sent
    /// through the lane out of its slot.
    fn through_lane(&self, reply: Reply) -> Result<Option<Reply>, LaneError> {
        match reply {
            Reply::LaneAnswer(answer) => {
                self.link.answered(&answer)?;
                match answer.accepted {
                    true => debug!(
                        worker = self.id,
                        board = answer.board_accepted,
                        reason = answer.reason,
                        "weights go through a shared-memory lane"
                    ),
                    false => debug!(worker = self.id, reason = answer.reason, "lane declined; weights go over gRPC"),
                }
                Ok(None)
            }
            Reply::LaneFree(free) => self.link.credited(free.taken, free.board_taken).map(|()| None),
            Reply::Weights(mut chunk) => {
                self.link.take(&mut chunk)?;
                Ok(Some(Reply::Weights(chunk)))
            }
            other => Ok(Some(other)),
        }
    }
}

/// Empties the queue of a session the driver dropped and says why it ends:
/// nothing more will be sent, and what is queued would wait for a reader
/// that may never come.
fn dropped(queue: &Mutex<Queue>) -> String {
    let mut queue = lock(queue);
    queue.close();
    while queue.try_recv().is_ok() {}
    "dropped by the coordinator".to_owned()
}
