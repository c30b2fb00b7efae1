//! The gRPC service: thin glue that checks the handshake, serves the dataset
//! and turns each worker's session into [`Event`]s for the driver, which owns
//! all training state.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::Stream;
use lazyavg_proto::pb::coordinator_message::Kind as Command;
use lazyavg_proto::pb::worker_message::Kind as Reply;
use lazyavg_proto::{MAX_CHUNK_BYTES, PROTOCOL_VERSION, pb};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::observe::board::StatusView;
use crate::registry::Registry;
use crate::round::WorkerId;

/// Messages to one worker's session; an `Err` ends it with that status.
pub type Outbox = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// What the service tells the driver.
#[derive(Debug)]
pub enum Event {
    /// A worker opened its session from `address`; commands for it go to `outbox`.
    Attached { id: WorkerId, name: String, address: String, outbox: Outbox },
    /// A worker sent a message on its session.
    Message { id: WorkerId, reply: Reply },
    /// A worker's session ended.
    Detached { id: WorkerId, reason: String },
}

/// The training set as workers download it.
#[derive(Debug, Clone)]
pub struct DatasetOffer {
    pub sha256: String,
    pub blob: Bytes,
    pub images: u64,
}

/// State shared by every request handler.
#[derive(Debug)]
pub struct Shared {
    pub run_config: pb::RunConfig,
    pub dataset: DatasetOffer,
    /// A std mutex: held only for a map lookup, never across an await.
    pub registry: Mutex<Registry>,
    pub events: mpsc::Sender<Event>,
    /// Capacity of each session's command queue.
    pub outbox_capacity: usize,
    /// What the Status call answers.
    pub status: StatusView,
    /// Set once the run has completed: Join is refused from then on (see
    /// [`lazyavg_proto::ending`]), so a worker that missed the end exits.
    pub completed: AtomicBool,
}

impl Shared {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the run completed: later Joins are refused as such.
    pub fn complete(&self) {
        self.completed.store(true, Ordering::Release);
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
        if self.shared.completed.load(Ordering::Acquire) {
            return Err(lazyavg_proto::ending::run_completed());
        }
        let request = request.into_inner();
        if request.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "worker speaks protocol version {}, this coordinator speaks {PROTOCOL_VERSION}: run the same lazyavg release on both",
                request.protocol_version
            )));
        }
        let name = if request.name.is_empty() { "unnamed".to_owned() } else { request.name };
        let worker_id = self.shared.registry().join(&name);
        debug!(worker = worker_id, name, "handshake");
        let dataset = &self.shared.dataset;
        Ok(Response::new(pb::JoinReply {
            worker_id,
            config: Some(self.shared.run_config.clone()),
            dataset: Some(pb::DatasetInfo {
                sha256: dataset.sha256.clone(),
                bytes: dataset.blob.len() as u64,
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
        if !self.shared.registry().is_known(request.worker_id) {
            return Err(Status::failed_precondition(format!(
                "unknown worker id {}: call Join first",
                request.worker_id
            )));
        }
        let dataset = &self.shared.dataset;
        if request.sha256 != dataset.sha256 {
            return Err(Status::failed_precondition(format!(
                "dataset {} is not this run's ({})",
                request.sha256, dataset.sha256
            )));
        }
        let len = dataset.blob.len();
        let start = usize::try_from(request.offset).ok().filter(|&o| o <= len).ok_or_else(|| {
            Status::out_of_range(format!("offset {} is past the dataset's {len} bytes", request.offset))
        })?;
        let blob = dataset.blob.clone();
        let chunks = (start..len).step_by(MAX_CHUNK_BYTES).map(move |offset| {
            let end = (offset + MAX_CHUNK_BYTES).min(len);
            Ok(pb::DatasetChunk { offset: offset as u64, data: blob.slice(offset..end) })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::RunStatus>, Status> {
        Ok(Response::new(pb::RunStatus::from(&self.shared.status.snapshot())))
    }

    type SessionStream = ReceiverStream<Result<pb::CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let address = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| Status::invalid_argument("session closed before Attach"))?;
        let Some(Reply::Attach(attach)) = first.kind else {
            return Err(Status::invalid_argument("the first message of a session must be Attach"));
        };
        let id = attach.worker_id;
        let name = self.shared.registry().attach(id).map_err(|e| Status::from(&e))?;
        let (outbox, commands) = mpsc::channel(self.shared.outbox_capacity);
        let attached = Event::Attached { id, name, address, outbox };
        if self.shared.events.send(attached).await.is_err() {
            return Err(Status::unavailable("the coordinator is shutting down"));
        }
        tokio::spawn(forward_replies(inbound, id, Arc::clone(&self.shared)));
        Ok(Response::new(ReceiverStream::new(commands)))
    }
}

/// Passes a session's messages to the driver until the stream ends, then
/// reports the worker gone and forgets its id.
async fn forward_replies(mut inbound: Streaming<pb::WorkerMessage>, id: WorkerId, shared: Arc<Shared>) {
    let reason = loop {
        match inbound.message().await {
            Ok(Some(pb::WorkerMessage { kind: Some(Reply::Attach(_)) })) => {
                break "sent a second Attach".to_owned();
            }
            Ok(Some(pb::WorkerMessage { kind: Some(reply) })) => {
                if shared.events.send(Event::Message { id, reply }).await.is_err() {
                    return;
                }
            }
            Ok(Some(pb::WorkerMessage { kind: None })) => break "sent an empty message".to_owned(),
            Ok(None) => break "closed its session".to_owned(),
            Err(status) => break format!("session failed: {}", status.message()),
        }
    };
    shared.registry().detach(id);
    let _ = shared.events.send(Event::Detached { id, reason }).await;
}

/// A command message.
pub fn command(kind: Command) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage { kind: Some(kind) }
}
