//! Shared-memory lanes: weights between a coordinator and a worker on the
//! same machine without TCP's and HTTP/2's copies.
//!
//! Over gRPC a chunk of weights is copied into the sender's encode buffer,
//! into the kernel's socket buffers, out of them into the receiver's decode
//! buffer, and framed, windowed and acknowledged on the way: on loopback
//! that was most of a round (docs/performance.md, "Where the targets
//! stand"). Through a lane the sender copies the chunk into a slot of
//! memory both processes map and sends a small message saying so; the
//! receiver takes it from there and frees the slot. gRPC stays the control plane:
//! the messages, their order and every check on them are the same, only
//! where a chunk's bytes travel changes.
//!
//! The coordinator makes the memory ([`LaneFile::create`]): an anonymous
//! memory file (`memfd`) sealed against shrinking and growing, so that no
//! process can truncate it under the other's mapping (a read past a
//! file's end is a crash, `SIGBUS`). It offers the file by its
//! `/proc/<pid>/fd/<fd>` path; a worker that can open that path (on the
//! same machine, seeing the coordinator's `/proc`, allowed to look into
//! its descriptors: the same user or root), finds a lane's memfd there,
//! sealed, of the offered size, with the offer's nonce in it, accepts
//! ([`Link::accept`]) with a proof only the file holds. The file has no
//! name in any file system: it goes with the last process that holds it,
//! whatever ends them.
//!
//! Both ends take the other's chunks where they are, in their slots
//! ([`Link::take`]), and read each byte once. A worker trusts the
//! coordinator's weights anyway; the coordinator copies a chunk as it
//! measures it, before it checks and sums it, so that a worker cannot
//! change the values in between. A lane is small whatever the model
//! (slots of one wire chunk each), and a side writes a slot only when the
//! other has said it took what was there ([`pb::LaneFree`]): the lane is a
//! bounded ring in each direction, with gRPC carrying its credits.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};
use memmap2::MmapRaw;
use rustix::fs::{MemfdFlags, OFlags, SealFlags};

use crate::{MAX_CHUNK_BYTES, pb};

/// Bytes per slot: one wire chunk.
pub const SLOT_BYTES: usize = MAX_CHUNK_BYTES;

/// Slots in each direction: a default model (800 KB, two chunks) goes
/// without waiting for a credit, whose news rides on the next message, a
/// bigger one in a pipeline of four chunks (2 MiB a direction, 4 MiB a
/// lane: 32 MiB of shared memory for 8 local workers).
pub const SLOTS: u32 = 4;

/// The header's first bytes, then the nonce (which the offer names), then
/// the proof (which only the file holds); slots start after the header.
const MAGIC: &[u8; 16] = b"lazyavg-lane-v2\0";
const NONCE_BYTES: usize = 16;
const PROOF_BYTES: usize = 16;
const HEADER_BYTES: usize = 4096;

/// How a lane's memfd shows in `/proc/<pid>/fd` ([`LaneFile::create`] names it).
const MEMFD_PREFIX: &str = "/memfd:lazyavg-lane-";

/// `statfs`'s type of shared memory (`TMPFS_MAGIC`), where memfds live
/// unless made of huge pages.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// The seals that make a mapping of the file safe: its size is fixed.
const SIZE_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// The most slots or bytes per slot a worker accepts in an offer.
const MAX_OFFERED_SLOTS: u32 = 64;

/// A lane failed or a peer broke its rules.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    #[error("cannot {action} shared-memory lane {path}: {source}")]
    Io { action: &'static str, path: String, source: io::Error },
    #[error("shared-memory lane: {0}")]
    Protocol(String),
}

/// Who is at this end of a lane: the coordinator writes the down slots and
/// reads the up slots, a worker the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Coordinator,
    Worker,
}

/// One direction's slots in a lane file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Worker to coordinator.
    Up,
    /// Coordinator to worker.
    Down,
}

impl Side {
    fn sends(self) -> Direction {
        match self {
            Side::Coordinator => Direction::Down,
            Side::Worker => Direction::Up,
        }
    }

    fn receives(self) -> Direction {
        match self {
            Side::Coordinator => Direction::Up,
            Side::Worker => Direction::Down,
        }
    }
}

/// The shared memory of one lane, mapped into this process.
#[derive(Debug)]
pub struct LaneFile {
    slot_bytes: usize,
    up_slots: u32,
    down_slots: u32,
    /// What the worker read from the file (the coordinator's end: what it wrote).
    proof: [u8; PROOF_BYTES],
    map: MmapRaw,
    /// Held open for the offer's path (the mapping alone keeps the memory).
    _file: File,
}

impl LaneFile {
    /// Makes a lane's memory, sealed at its size, and the offer that
    /// describes it; `name` shows in the coordinator's `/proc/<pid>/fd`.
    /// Its slots take memory only once written.
    pub fn create(name: &str) -> Result<(LaneFile, pb::LaneOffer), LaneError> {
        let (mut nonce, mut proof) = ([0u8; NONCE_BYTES], [0u8; PROOF_BYTES]);
        let name = format!("lazyavg-lane-{name}");
        let io = |action| {
            let path = name.clone();
            move |source| LaneError::Io { action, path, source }
        };
        getrandom::fill(&mut nonce)
            .and_then(|()| getrandom::fill(&mut proof))
            .map_err(io::Error::other)
            .map_err(io("draw a nonce for"))?;
        let fd = rustix::fs::memfd_create(&name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(io::Error::from)
            .map_err(io("create"))?;
        let file = File::from(fd);
        let len = lane_len(SLOT_BYTES, SLOTS, SLOTS);
        file.set_len(len as u64).map_err(io("size"))?;
        let header = [&MAGIC[..], &nonce, &proof].concat();
        file.write_all_at(&header, 0).map_err(io("write the header of"))?;
        rustix::fs::fcntl_add_seals(&file, SIZE_SEALS | SealFlags::SEAL)
            .map_err(io::Error::from)
            .map_err(io("seal"))?;
        let map = MmapRaw::map_raw(&file).map_err(io("map"))?;
        let path = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        let offer = pb::LaneOffer {
            path,
            nonce: Bytes::copy_from_slice(&nonce),
            slot_bytes: SLOT_BYTES as u32,
            up_slots: SLOTS,
            down_slots: SLOTS,
        };
        let lane = LaneFile { slot_bytes: SLOT_BYTES, up_slots: SLOTS, down_slots: SLOTS, proof, map, _file: file };
        Ok((lane, offer))
    }

    /// Opens an offered lane, if it is a coordinator's descriptor this
    /// process may open, sealed at the size the offer implies, and the file
    /// the coordinator made (the nonce in its header).
    pub fn open(offer: &pb::LaneOffer) -> Result<LaneFile, String> {
        if !is_descriptor_path(&offer.path) {
            return Err(format!("{} is not a /proc/<pid>/fd/<fd> path", offer.path));
        }
        let slots_ok = |n: u32| (1..=MAX_OFFERED_SLOTS).contains(&n);
        let slot_bytes = offer.slot_bytes as usize;
        if !(slots_ok(offer.up_slots) && slots_ok(offer.down_slots) && (4..=MAX_CHUNK_BYTES).contains(&slot_bytes)) {
            return Err(format!(
                "{} up and {} down slots of {slot_bytes} bytes: at most {MAX_OFFERED_SLOTS} slots of at most {MAX_CHUNK_BYTES} bytes",
                offer.up_slots, offer.down_slots
            ));
        }
        // A worker that does not see the coordinator's `/proc` (another
        // machine or process namespace) finds another process's descriptor
        // there, or none: it must not open a terminal or a device by
        // mistake. So it first takes hold of what the path names without
        // opening it (`O_PATH`), checks that it is a lane's memfd on
        // ordinary shared memory (huge pages could be taken away under the
        // mapping), and only then opens that same file.
        let cannot_open = |e: io::Error| format!("cannot open {}: {e}", offer.path);
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(OFlags::PATH.bits() as i32)
            .open(&offer.path)
            .map_err(cannot_open)?;
        let held = format!("/proc/self/fd/{}", handle.as_raw_fd());
        let target = std::fs::read_link(&held).map_err(cannot_open)?;
        let on_tmpfs = rustix::fs::fstatfs(&handle).is_ok_and(|fs| fs.f_type as u64 == TMPFS_MAGIC);
        if !(target.to_string_lossy().starts_with(MEMFD_PREFIX) && on_tmpfs) {
            return Err(format!("{} is not a lane but {}", offer.path, target.display()));
        }
        let file = OpenOptions::new().read(true).write(true).open(&held).map_err(cannot_open)?;
        let len = lane_len(slot_bytes, offer.up_slots, offer.down_slots);
        let sealed = rustix::fs::fcntl_get_seals(&file).is_ok_and(|seals| seals.contains(SIZE_SEALS));
        let sized = file.metadata().is_ok_and(|m| m.is_file() && m.len() == len as u64);
        let mut header = [0u8; MAGIC.len() + NONCE_BYTES + PROOF_BYTES];
        let found = sealed
            && sized
            && file.read_exact_at(&mut header, 0).is_ok()
            && header[..MAGIC.len()] == MAGIC[..]
            && header[MAGIC.len()..MAGIC.len() + NONCE_BYTES] == offer.nonce[..];
        if !found {
            return Err(format!("{} is not the lane the coordinator made (another machine's?)", offer.path));
        }
        let map = MmapRaw::map_raw(&file).map_err(|e| format!("cannot map {}: {e}", offer.path))?;
        let mut proof = [0; PROOF_BYTES];
        proof.copy_from_slice(&header[MAGIC.len() + NONCE_BYTES..]);
        Ok(LaneFile { slot_bytes, up_slots: offer.up_slots, down_slots: offer.down_slots, proof, map, _file: file })
    }

    fn slots(&self, direction: Direction) -> u32 {
        match direction {
            Direction::Up => self.up_slots,
            Direction::Down => self.down_slots,
        }
    }

    /// Where the `index`-th chunk in `direction` goes (slots are reused in turn).
    fn offset(&self, direction: Direction, index: u64) -> usize {
        let first = match direction {
            Direction::Up => 0,
            Direction::Down => self.up_slots as usize,
        };
        HEADER_BYTES + (first + (index % self.slots(direction) as u64) as usize) * self.slot_bytes
    }

    /// Copies `data` (at most a slot) into the `index`-th slot in `direction`.
    fn write(&self, direction: Direction, index: u64, data: &[u8]) {
        debug_assert!(data.len() <= self.slot_bytes, "a chunk larger than a slot");
        let offset = self.offset(direction, index);
        // SAFETY: the slot lies inside the mapping (`offset` + a slot ≤ the
        // length checked when mapped), whose size the seals fix; no reference
        // into the mapping exists, only copies in and out.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(offset), data.len()) };
    }
}

/// A lane's length in bytes: the header and the slots both ways.
fn lane_len(slot_bytes: usize, up_slots: u32, down_slots: u32) -> usize {
    HEADER_BYTES + (up_slots + down_slots) as usize * slot_bytes
}

/// Whether `path` is `/proc/<pid>/fd/<fd>` and nothing else.
fn is_descriptor_path(path: &str) -> bool {
    let number = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = path.split('/').collect();
    matches!(parts[..], ["", "proc", pid, "fd", fd] if number(pid) && number(fd))
}

/// One end of a session's lane, shared by the task that reads the
/// session's messages ([`Link::take`], [`Link::freed`]) and the stream that
/// sends them ([`Outbound`]). Without a lane, or until it opens, chunks go
/// inline.
#[derive(Debug)]
pub struct Link {
    side: Side,
    lane: OnceLock<LaneFile>,
    /// Whether both ends have the lane (the worker accepted it).
    established: AtomicBool,
    /// This end's chunks written into slots so far.
    written: AtomicU64,
    /// How many of them the other end has taken (its last [`pb::LaneFree`]).
    freed: AtomicU64,
    /// The other end's chunks this end has taken from the lane so far.
    received: AtomicU64,
    /// How many of them, counted in order, this end is done with: their
    /// slots are free, which the sending stream announces.
    taken: AtomicU64,
    /// The chunks after `taken` this end is done with already, one bit
    /// each from `taken` on (a chunk kept in place may go after the next).
    done_ahead: Mutex<u64>,
    /// Set when the session stops reading the other end: no slot will free
    /// any more, so the sending stream ends where it would wait for one.
    closed: AtomicBool,
    /// Whether the other end's last chunk left more of its weights to
    /// come: it is sending, and its slots should free as it goes.
    other_sending: AtomicBool,
    /// The sending stream, woken when a slot frees or a credit is owed.
    sender: AtomicWaker,
}

impl Link {
    /// An end with no lane: everything goes inline.
    pub fn new(side: Side) -> Self {
        Link {
            side,
            lane: OnceLock::new(),
            established: AtomicBool::new(false),
            written: AtomicU64::new(0),
            freed: AtomicU64::new(0),
            received: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            done_ahead: Mutex::new(0),
            closed: AtomicBool::new(false),
            other_sending: AtomicBool::new(false),
            sender: AtomicWaker::new(),
        }
    }

    /// The coordinator's end of a lane it made and offered; it opens when
    /// the worker accepts ([`Link::answered`]).
    pub fn offered(lane: LaneFile) -> Self {
        let link = Link::new(Side::Coordinator);
        let _ = link.lane.set(lane);
        link
    }

    /// A worker's answer to an offer: the lane opened (it sends its chunks
    /// through it from its answer on), or why not.
    pub fn accept(&self, offer: &pb::LaneOffer) -> pb::LaneAnswer {
        if self.lane.get().is_some() {
            let reason = "this session has a lane already".to_owned();
            return pb::LaneAnswer { accepted: false, reason, proof: Bytes::new() };
        }
        match LaneFile::open(offer) {
            Ok(lane) => {
                let proof = Bytes::copy_from_slice(&lane.proof);
                let _ = self.lane.set(lane);
                self.establish();
                pb::LaneAnswer { accepted: true, reason: String::new(), proof }
            }
            Err(reason) => pb::LaneAnswer { accepted: false, reason, proof: Bytes::new() },
        }
    }

    /// The coordinator's end: the worker answered its offer. An
    /// acceptance must carry the proof only the file holds: a client that
    /// cannot read it (on another machine, or another user) gets no lane,
    /// so it cannot make the coordinator fill one.
    pub fn answered(&self, answer: &pb::LaneAnswer) -> Result<(), LaneError> {
        let Some(lane) = self.lane.get() else {
            return Err(LaneError::Protocol("answer to an offer never made".to_owned()));
        };
        if !answer.accepted {
            return Ok(());
        }
        if answer.proof[..] != lane.proof[..] {
            return Err(LaneError::Protocol("accepted a lane without the proof its file holds".to_owned()));
        }
        self.establish();
        Ok(())
    }

    fn establish(&self) {
        self.established.store(true, Ordering::Release);
    }

    /// The session reads nothing more from the other end, so no credit
    /// will come: the sending stream ([`Outbound`]) ends at the first chunk
    /// that would wait for a slot (what needs none still goes).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.sender.wake();
    }

    /// Whether both ends have a lane.
    pub fn is_established(&self) -> bool {
        self.established.load(Ordering::Acquire)
    }

    /// The other end took `taken` of this end's lane chunks: their slots
    /// are free. 0 (a message that says nothing of the lane) is no news.
    pub fn freed(&self, taken: u64) -> Result<(), LaneError> {
        if taken == 0 {
            return Ok(());
        }
        let written = self.written.load(Ordering::Acquire);
        if taken > written {
            return Err(LaneError::Protocol(format!("{taken} chunks freed, {written} sent")));
        }
        self.freed.fetch_max(taken, Ordering::AcqRel);
        self.sender.wake();
        Ok(())
    }

    /// A chunk as it came: one sent through the lane gets its bytes where
    /// they are, in their slot, which frees when the last handle on them
    /// drops (a chunk held on to holds up the sender). A sender that breaks
    /// the lane's rules can change them under the receiver: one that checks
    /// them copies them as it reads them, and uses the copy.
    pub fn take(self: &Arc<Self>, chunk: &mut pb::WeightsChunk) -> Result<(), LaneError> {
        if let Some((lane, index, len)) = self.next_slot(chunk)? {
            let offset = lane.offset(self.side.receives(), index);
            chunk.data = Bytes::from_owner(InSlot { link: Arc::clone(self), index, offset, len });
        }
        Ok(())
    }

    /// The lane, index and length of `chunk` if it came through the lane,
    /// counted as received; an error if the sender broke the lane's rules.
    fn next_slot(&self, chunk: &pb::WeightsChunk) -> Result<Option<(&LaneFile, u64, usize)>, LaneError> {
        if chunk.lane_bytes == 0 {
            return Ok(None);
        }
        let len = chunk.lane_bytes as usize;
        let lane = match self.lane.get() {
            Some(lane) if self.is_established() => lane,
            _ => return Err(LaneError::Protocol("a chunk in a lane this session has not opened".to_owned())),
        };
        if !chunk.data.is_empty() || len > lane.slot_bytes {
            return Err(LaneError::Protocol(format!(
                "a lane chunk of {len} bytes (slots hold {}) with {} inline bytes besides",
                lane.slot_bytes,
                chunk.data.len()
            )));
        }
        let index = self.received.load(Ordering::Acquire);
        let slots = lane.slots(self.side.receives()) as u64;
        if index - self.taken.load(Ordering::Acquire) >= slots {
            return Err(LaneError::Protocol(format!("a lane chunk with all {slots} slots still in use")));
        }
        self.received.store(index + 1, Ordering::Release);
        let more = chunk.offset.saturating_add((len / 4) as u64) < chunk.total;
        self.other_sending.store(more, Ordering::Release);
        Ok(Some((lane, index, len)))
    }

    /// This end is done with the `index`-th chunk it received: its slot,
    /// and those of the chunks before it, are free once all before it are.
    fn done(&self, index: u64) {
        let mut ahead = self.done_ahead.lock().unwrap_or_else(PoisonError::into_inner);
        let taken = self.taken.load(Ordering::Acquire);
        *ahead |= 1 << (index - taken);
        let freed = ahead.trailing_ones();
        *ahead = ahead.checked_shr(freed).unwrap_or(0);
        if freed > 0 {
            self.taken.store(taken + u64::from(freed), Ordering::Release);
            self.sender.wake();
        }
    }

    /// Whether this end, having taken `owed` of the other end's chunks
    /// since it last said so, says so in a message of its own now rather
    /// than on the next message it sends anyway: once it owes half the
    /// other end's slots while that end is still sending its weights (so
    /// that it never runs out of slots mid-stream), or all of them (so
    /// that it never waits for ever). The last chunks of a round's weights
    /// are announced with the next message: one message less a round each
    /// way.
    fn owes_credit(&self, owed: u64) -> bool {
        let slots = self.lane.get().map_or(1, |lane| lane.slots(self.side.receives()) as u64);
        let batch = (slots / 2).max(1);
        owed >= slots || (owed >= batch && self.other_sending.load(Ordering::Acquire))
    }

    /// Moves `chunk`'s bytes into the next slot if a lane is open and the
    /// slot is free; [`Sent::Wait`] if it is not free yet.
    fn send(&self, chunk: &mut pb::WeightsChunk) -> Sent {
        let lane = match self.lane.get() {
            Some(lane) if self.is_established() && (1..=lane.slot_bytes).contains(&chunk.data.len()) => lane,
            _ => return Sent::Inline,
        };
        let direction = self.side.sends();
        let written = self.written.load(Ordering::Acquire);
        if written - self.freed.load(Ordering::Acquire) >= lane.slots(direction) as u64 {
            return Sent::Wait;
        }
        lane.write(direction, written, &chunk.data);
        chunk.lane_bytes = chunk.data.len() as u32;
        chunk.data = Bytes::new();
        self.written.store(written + 1, Ordering::Release);
        Sent::Lane
    }
}

/// A chunk's bytes in their slot, which frees when this drops.
struct InSlot {
    link: Arc<Link>,
    index: u64,
    offset: usize,
    len: usize,
}

impl AsRef<[u8]> for InSlot {
    fn as_ref(&self) -> &[u8] {
        let lane = self.link.lane.get().expect("a chunk in a slot has its lane");
        // SAFETY: the slot lies inside the mapping (checked as in
        // `LaneFile::write`), which this handle keeps alive; the sender
        // writes it again only after `done` frees it, when this has dropped.
        // A sender that broke that rule changes bytes this end reads once:
        // the worker decodes each byte once, and the coordinator copies
        // each as it measures it (it takes weights from a worker anyway).
        unsafe { std::slice::from_raw_parts(lane.map.as_ptr().add(self.offset), self.len) }
    }
}

impl Drop for InSlot {
    fn drop(&mut self) {
        self.link.done(self.index);
    }
}

enum Sent {
    Inline,
    Lane,
    Wait,
}

/// A session message that may carry a chunk of weights, as the sending
/// stream sees it.
pub trait Carrier: Sized {
    /// The chunk this message carries, if any.
    fn weights(&mut self) -> Option<&mut pb::WeightsChunk>;
    /// Where the message says how many of the other end's lane chunks
    /// this end has taken, if it can.
    fn lane_taken(&mut self) -> Option<&mut u64>;
    /// The message that frees the other end's slots.
    fn lane_free(taken: u64) -> Self;
}

impl Carrier for pb::WorkerMessage {
    fn weights(&mut self) -> Option<&mut pb::WeightsChunk> {
        match &mut self.kind {
            Some(pb::worker_message::Kind::Weights(chunk)) => Some(chunk),
            _ => None,
        }
    }

    fn lane_taken(&mut self) -> Option<&mut u64> {
        Some(&mut self.lane_taken)
    }

    fn lane_free(taken: u64) -> Self {
        pb::WorkerMessage { kind: Some(pb::worker_message::Kind::LaneFree(pb::LaneFree { taken })), lane_taken: 0 }
    }
}

impl Carrier for Result<pb::CoordinatorMessage, tonic::Status> {
    fn weights(&mut self) -> Option<&mut pb::WeightsChunk> {
        use pb::coordinator_message::Kind;
        match self {
            Ok(pb::CoordinatorMessage { kind: Some(Kind::Average(chunk) | Kind::Reference(chunk)), .. }) => Some(chunk),
            _ => None,
        }
    }

    fn lane_taken(&mut self) -> Option<&mut u64> {
        self.as_mut().ok().map(|message| &mut message.lane_taken)
    }

    fn lane_free(taken: u64) -> Self {
        let free = pb::coordinator_message::Kind::LaneFree(pb::LaneFree { taken });
        Ok(pb::CoordinatorMessage { kind: Some(free), lane_taken: 0 })
    }
}

/// A session's outgoing messages with its lane in between: each chunk of
/// weights goes into the next slot (waiting for one to free), and the slots
/// this end has read are announced free on the next message that goes, or
/// ahead of anything else when [`Link::owes_credit`] says so, so that the
/// other end never waits on this one's queue for ever.
pub struct Outbound<S: Stream> {
    messages: S,
    link: Arc<Link>,
    /// A chunk waiting for a free slot.
    held: Option<S::Item>,
    /// The count of the other end's chunks last announced taken.
    announced: u64,
}

impl<S: Stream> Outbound<S> {
    pub fn new(messages: S, link: Arc<Link>) -> Self {
        Outbound { messages, link, held: None, announced: 0 }
    }
}

impl<S> Stream for Outbound<S>
where
    S: Stream + Unpin,
    S::Item: Carrier + Unpin,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Registered before the counters are read: a change after the read wakes this poll.
        this.link.sender.register(cx.waker());
        let taken = this.link.taken.load(Ordering::Acquire);
        if taken > this.announced && this.link.owes_credit(taken - this.announced) {
            this.announced = taken;
            return Poll::Ready(Some(S::Item::lane_free(taken)));
        }
        let mut message = match this.held.take() {
            Some(message) => message,
            None => match this.messages.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => message,
                other => return other,
            },
        };
        let sent = message.weights().map_or(Sent::Inline, |chunk| this.link.send(chunk));
        match sent {
            Sent::Inline | Sent::Lane => {
                if let Some(news) = message.lane_taken().filter(|_| taken > this.announced) {
                    *news = taken;
                    this.announced = taken;
                }
                Poll::Ready(Some(message))
            }
            Sent::Wait if this.link.closed.load(Ordering::Acquire) => Poll::Ready(None),
            Sent::Wait => {
                this.held = Some(message);
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests;
