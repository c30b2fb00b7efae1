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
//! change the values in between. A lane's slots are few whatever the
//! model (of one wire chunk each), and a side writes a slot only when the
//! other has said it took what was there ([`pb::LaneFree`]): the lane is a
//! bounded ring in each direction, with gRPC carrying its credits.
//!
//! The coordinator's own weights, the same for every worker, go on its
//! [`Board`] instead where they fit: written once for all local workers,
//! which take them in place and give them back with credits of their own.
//!
//! A worker's weights, for a model up to 8 MiB, live in its lane: after
//! the slots lies a weights area of two model-sized halves
//! ([`Link::weights_area`]), where the worker's trainer keeps and trains
//! them. A chunk of them goes as where it is in the area, and the worker
//! leaves those bytes as they are until the coordinator has taken them
//! (the chunk counts as a lane chunk, freed by the same credits; a change
//! meanwhile copies the weights into the other half first), so sending
//! its weights costs a worker no copy at all.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};
use memmap2::MmapRaw;

use lazyavg_common::memory::WeightsMemory;

use crate::{MAX_CHUNK_BYTES, pb};

mod board;
mod memfd;
mod receipts;

pub use board::Board;
use board::{BoardView, MAX_HELD};
use memfd::{HEADER_BYTES, PROOF_BYTES, Writers};
use receipts::Receipts;

/// Bytes per slot: one wire chunk.
pub const SLOT_BYTES: usize = MAX_CHUNK_BYTES;

/// Slots in each direction: a default model (800 KB, two chunks) goes
/// without waiting for a credit, whose news rides on the next message, a
/// bigger one in a pipeline of four chunks (2 MiB a direction, 4 MiB a
/// lane: 32 MiB of shared memory for 8 local workers, and the board's 8,
/// besides the workers' weights areas).
pub const SLOTS: u32 = 4;

/// The most slots or bytes per slot a worker accepts in an offer.
const MAX_OFFERED_SLOTS: u32 = 64;

/// The largest half of a weights area: a model up to 8 MiB (the board's
/// largest) is kept in its worker's lane; a bigger one's weights are copied
/// into slots as they go. An area takes memory only once written: one half
/// without `--overlap`, both with it, in the worker and, as it reads them,
/// the coordinator (at 8 workers of an 8 MiB model, 64 or 128 MiB more
/// resident there).
const MAX_AREA_HALF_BYTES: usize = 8 << 20;

/// Memory pages, to which an area's halves are aligned.
const PAGE_BYTES: usize = 4096;

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
    /// Each half of the worker's weights area (0: none).
    area_half_bytes: usize,
    /// What the worker read from the file (the coordinator's end: what it wrote).
    proof: [u8; PROOF_BYTES],
    /// Shared with the halves of the weights area a worker's trainer keeps.
    map: Arc<MmapRaw>,
    /// Held open for the offer's path (the mapping alone keeps the memory).
    _file: File,
}

impl LaneFile {
    /// Makes a lane's memory, sealed at its size, and the offer that
    /// describes it; `name` shows in the coordinator's `/proc/<pid>/fd`.
    /// A model of `model_bytes` up to [`MAX_AREA_HALF_BYTES`] gets a
    /// weights area, where the worker trains and the coordinator reads its
    /// weights in place. Slots and area take memory only once written.
    pub fn create(name: &str, model_bytes: usize) -> Result<(LaneFile, pb::LaneOffer), LaneError> {
        let area_half_bytes =
            if model_bytes <= MAX_AREA_HALF_BYTES { model_bytes.next_multiple_of(PAGE_BYTES) } else { 0 };
        let made = memfd::create(name, lane_len(SLOT_BYTES, SLOTS, SLOTS, area_half_bytes), Writers::All)?;
        let offer = pb::LaneOffer {
            path: made.path,
            nonce: Bytes::copy_from_slice(&made.nonce),
            slot_bytes: SLOT_BYTES as u32,
            up_slots: SLOTS,
            down_slots: SLOTS,
            board: None,
            area_half_bytes: area_half_bytes as u64,
        };
        let (proof, map, _file) = (made.proof, Arc::new(made.map), made.file);
        let (slot_bytes, up_slots, down_slots) = (SLOT_BYTES, SLOTS, SLOTS);
        let lane = LaneFile { slot_bytes, up_slots, down_slots, area_half_bytes, proof, map, _file };
        Ok((lane, offer))
    }

    /// Opens an offered lane, if it is a coordinator's descriptor this
    /// process may open, sealed at the size the offer implies, and the file
    /// the coordinator made (the nonce in its header).
    pub fn open(offer: &pb::LaneOffer) -> Result<LaneFile, String> {
        let slots_ok = |n: u32| (1..=MAX_OFFERED_SLOTS).contains(&n);
        let slot_bytes = offer.slot_bytes as usize;
        if !(slots_ok(offer.up_slots) && slots_ok(offer.down_slots) && (4..=MAX_CHUNK_BYTES).contains(&slot_bytes)) {
            return Err(format!(
                "{} up and {} down slots of {slot_bytes} bytes: at most {MAX_OFFERED_SLOTS} slots of at most {MAX_CHUNK_BYTES} bytes",
                offer.up_slots, offer.down_slots
            ));
        }
        let area_half_bytes = usize::try_from(offer.area_half_bytes).unwrap_or(usize::MAX);
        if area_half_bytes > MAX_AREA_HALF_BYTES || !area_half_bytes.is_multiple_of(PAGE_BYTES) {
            return Err(format!(
                "a weights area of two halves of {area_half_bytes} bytes: at most {MAX_AREA_HALF_BYTES}, whole pages"
            ));
        }
        let area_start = area_start(slot_bytes, offer.up_slots, offer.down_slots);
        if area_half_bytes > 0 && !area_start.is_multiple_of(PAGE_BYTES) {
            return Err(format!("a weights area at byte {area_start}, not at the start of a page"));
        }
        let len = lane_len(slot_bytes, offer.up_slots, offer.down_slots, area_half_bytes);
        let opened = memfd::open(&offer.path, &offer.nonce, len, true, "lane")?;
        let (proof, map, _file) = (opened.proof, Arc::new(opened.map), opened.file);
        let (up_slots, down_slots) = (offer.up_slots, offer.down_slots);
        Ok(LaneFile { slot_bytes, up_slots, down_slots, area_half_bytes, proof, map, _file })
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

    fn area_start(&self) -> usize {
        area_start(self.slot_bytes, self.up_slots, self.down_slots)
    }

    /// Where in the file `len` bytes at byte `at` of the weights area lie,
    /// if they are inside it.
    fn in_area(&self, at: u64, len: usize) -> Option<usize> {
        let at = usize::try_from(at).ok()?;
        (at.checked_add(len)? <= 2 * self.area_half_bytes).then(|| self.area_start() + at)
    }

    /// The byte of the weights area where `bytes` start, if they lie
    /// inside it (this process's mapping of it).
    fn area_offset_of(&self, bytes: &[u8]) -> Option<u64> {
        let start = self.map.as_ptr() as usize + self.area_start();
        let at = (bytes.as_ptr() as usize).checked_sub(start)?;
        (at + bytes.len() <= 2 * self.area_half_bytes).then_some(at as u64)
    }

    /// Copies `data` (at most a slot) into the `index`-th slot in `direction`.
    fn write(&self, direction: Direction, index: u64, data: &[u8]) {
        debug_assert!(data.len() <= self.slot_bytes, "a chunk larger than a slot");
        let offset = self.offset(direction, index);
        // SAFETY: the slot lies inside the mapping (`offset` + a slot ≤ the
        // length checked when mapped), whose size the seals fix; no reference
        // into the slots exists, only copies in and out, and views of chunks
        // taken, which the other end does not write until they are freed.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(offset), data.len()) };
    }
}

/// A lane's length in bytes: the header, the slots both ways and the two
/// halves of the weights area.
fn lane_len(slot_bytes: usize, up_slots: u32, down_slots: u32, area_half_bytes: usize) -> usize {
    area_start(slot_bytes, up_slots, down_slots) + 2 * area_half_bytes
}

/// Where a lane's weights area starts: after the header and the slots.
fn area_start(slot_bytes: usize, up_slots: u32, down_slots: u32) -> usize {
    HEADER_BYTES + (up_slots + down_slots) as usize * slot_bytes
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
    /// The other end's lane chunks this end has taken.
    lane_receipts: Receipts,
    /// A worker's end: whether its weights area was handed out (once: a
    /// half is its holder's to change).
    area_lent: AtomicBool,
    /// A worker's end: its chunks sent as where they are in its weights
    /// area, with their index among its lane chunks, held (their bytes left
    /// as they are) until the coordinator has taken them.
    area_held: Mutex<VecDeque<(u64, Bytes)>>,
    /// The coordinator's end: its board, offered with the lane.
    board: Option<Arc<Board>>,
    /// The coordinator's end: whether the worker mapped the board.
    board_open: AtomicBool,
    /// The coordinator's end: its board chunks sent and not yet taken.
    board_held: Mutex<BoardHeld>,
    /// A worker's end: the coordinator's board, if it mapped it.
    board_view: OnceLock<BoardView>,
    /// A worker's end: the board chunks it has taken.
    board_receipts: Receipts,
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
        Link::with_board(side, None)
    }

    fn with_board(side: Side, board: Option<Arc<Board>>) -> Self {
        Link {
            side,
            lane: OnceLock::new(),
            established: AtomicBool::new(false),
            written: AtomicU64::new(0),
            freed: AtomicU64::new(0),
            lane_receipts: Receipts::default(),
            area_lent: AtomicBool::new(false),
            area_held: Mutex::default(),
            board,
            board_open: AtomicBool::new(false),
            board_held: Mutex::default(),
            board_view: OnceLock::new(),
            board_receipts: Receipts::default(),
            closed: AtomicBool::new(false),
            other_sending: AtomicBool::new(false),
            sender: AtomicWaker::new(),
        }
    }

    /// The coordinator's end of a lane it made and offered, with `board`
    /// if the offer named it; it opens when the worker accepts
    /// ([`Link::answered`]).
    pub fn offered(lane: LaneFile, board: Option<Arc<Board>>) -> Self {
        let link = Link::with_board(Side::Coordinator, board);
        let _ = link.lane.set(lane);
        link
    }

    /// A worker's answer to an offer: the lane opened (it sends its chunks
    /// through it from its answer on), or why not.
    pub fn accept(&self, offer: &pb::LaneOffer) -> pb::LaneAnswer {
        if self.lane.get().is_some() {
            let reason = "this session has a lane already".to_owned();
            return pb::LaneAnswer { accepted: false, reason, ..Default::default() };
        }
        let lane = match LaneFile::open(offer) {
            Ok(lane) => lane,
            Err(reason) => return pb::LaneAnswer { accepted: false, reason, ..Default::default() },
        };
        let proof = Bytes::copy_from_slice(&lane.proof);
        let _ = self.lane.set(lane);
        self.establish();
        // A board that does not open leaves the lane as it is.
        let (board_accepted, reason) = match offer.board.as_ref().map(BoardView::open) {
            Some(Ok(view)) => (self.board_view.set(view).is_ok(), String::new()),
            Some(Err(reason)) => (false, format!("no board: {reason}")),
            None => (false, String::new()),
        };
        pb::LaneAnswer { accepted: true, reason, proof, board_accepted }
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
        // Counted once, however often a worker answers.
        if let Some(board) = self.board.as_ref().filter(|_| answer.board_accepted)
            && !self.board_open.swap(true, Ordering::AcqRel)
        {
            board.reader_joined();
        }
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
        let mut held = self.area_held.lock().unwrap_or_else(PoisonError::into_inner);
        while held.front().is_some_and(|&(index, _)| index < taken) {
            held.pop_front();
        }
        drop(held);
        self.sender.wake();
        Ok(())
    }

    /// A worker's end: two halves of its lane's weights area as memory for
    /// a model of `len` parameters (the weights, and the copy a change
    /// makes while they are held), if the lane has an area that large, the
    /// first time only.
    pub fn weights_area(&self, len: usize) -> Option<[AreaHalf; 2]> {
        let lane = self.lane.get().filter(|_| self.side == Side::Worker && self.is_established())?;
        if 4 * len > lane.area_half_bytes || self.area_lent.swap(true, Ordering::AcqRel) {
            return None;
        }
        let half =
            |i: usize| AreaHalf { map: Arc::clone(&lane.map), at: lane.area_start() + i * lane.area_half_bytes, len };
        Some([half(0), half(1)])
    }

    /// The coordinator's end: a worker's message said it has taken `lane`
    /// of the lane's chunks and `board` of the board's (0: no news of it).
    pub fn credited(&self, lane: u64, board: u64) -> Result<(), LaneError> {
        self.freed(lane)?;
        self.board_freed(board)
    }

    /// The coordinator's end: the worker took `taken` of its board chunks,
    /// which it holds no more. 0 is no news.
    fn board_freed(&self, taken: u64) -> Result<(), LaneError> {
        let mut held = self.board_held.lock().unwrap_or_else(PoisonError::into_inner);
        let sent = held.freed + held.chunks.len() as u64;
        if taken > sent {
            return Err(LaneError::Protocol(format!("{taken} board chunks freed, {sent} sent")));
        }
        while held.freed < taken {
            held.chunks.pop_front();
            held.freed += 1;
        }
        Ok(())
    }

    /// A chunk as it came: one sent through the lane (or the board) gets
    /// its bytes where they are, in their slot, which frees when the last
    /// handle on them drops (a chunk held on to holds up the sender). A
    /// sender that breaks the lane's rules can change them under the
    /// receiver: one that checks them copies them as it reads them, and
    /// uses the copy.
    pub fn take(self: &Arc<Self>, chunk: &mut pb::WeightsChunk) -> Result<(), LaneError> {
        let len = chunk.lane_bytes as usize;
        if len == 0 && chunk.board_offset.is_none() && chunk.area_offset.is_none() {
            return Ok(());
        }
        if len == 0 || !chunk.data.is_empty() {
            return Err(LaneError::Protocol(format!(
                "a lane chunk of {len} bytes with {} inline bytes besides",
                chunk.data.len()
            )));
        }
        let (place, index, offset) = match (chunk.board_offset, chunk.area_offset) {
            (Some(_), Some(_)) => {
                return Err(LaneError::Protocol("a chunk both on the board and in an area".to_owned()));
            }
            (Some(at), None) => self.on_board(at, len)?,
            (None, area) => self.in_lane(chunk, len, area)?,
        };
        chunk.data = Bytes::from_owner(InSlot { link: Arc::clone(self), place, index, offset, len });
        Ok(())
    }

    /// Where the next lane chunk, `len` bytes of `chunk`, lies (in its slot,
    /// or at byte `area` of a worker's weights area): counted as received,
    /// unless the sender broke the lane's rules.
    fn in_lane(
        &self,
        chunk: &pb::WeightsChunk,
        len: usize,
        area: Option<u64>,
    ) -> Result<(Place, u64, usize), LaneError> {
        let lane = match self.lane.get() {
            Some(lane) if self.is_established() => lane,
            _ => return Err(LaneError::Protocol("a chunk in a lane this session has not opened".to_owned())),
        };
        if len > lane.slot_bytes {
            return Err(LaneError::Protocol(format!("a lane chunk of {len} bytes (slots hold {})", lane.slot_bytes)));
        }
        let area_at = area
            .map(|at| {
                lane.in_area(at, len).filter(|_| self.side == Side::Coordinator).ok_or_else(|| {
                    LaneError::Protocol(format!(
                        "a chunk of {len} bytes at byte {at} of a weights area of {} bytes",
                        2 * lane.area_half_bytes
                    ))
                })
            })
            .transpose()?;
        let slots = lane.slots(self.side.receives());
        let index = self
            .lane_receipts
            .receive(u64::from(slots))
            .ok_or_else(|| LaneError::Protocol(format!("a lane chunk with all {slots} slots still in use")))?;
        let offset = area_at.unwrap_or_else(|| lane.offset(self.side.receives(), index));
        let more = chunk.offset.saturating_add((len / 4) as u64) < chunk.total;
        self.other_sending.store(more, Ordering::Release);
        Ok((Place::Lane, index, offset))
    }

    /// Where a board chunk of `len` bytes at byte `at` of the board lies:
    /// counted as received, unless it is not on the board.
    fn on_board(&self, at: u64, len: usize) -> Result<(Place, u64, usize), LaneError> {
        let Some(view) = self.board_view.get() else {
            return Err(LaneError::Protocol("a board chunk, and no board mapped".to_owned()));
        };
        let offset = view.check(at, len)?;
        let index = self
            .board_receipts
            .receive(MAX_HELD)
            .ok_or_else(|| LaneError::Protocol(format!("a board chunk with {MAX_HELD} board chunks held already")))?;
        Ok((Place::Board, index, offset))
    }

    /// This end is done with the `index`-th chunk it took from `place`: its
    /// slot, and those of the chunks before it, are free once all before
    /// it are.
    fn done(&self, place: Place, index: u64) {
        let receipts = match place {
            Place::Lane => &self.lane_receipts,
            Place::Board => &self.board_receipts,
        };
        if receipts.done(index) {
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

    /// Whether a worker that has taken `owed` board chunks since it last
    /// said so says so now: once they are half as many as the board has
    /// slots (chunks, which may be slices of a slot: a newcomer's weights
    /// come in 64 KiB slices). The coordinator never waits for a board slot
    /// (it sends through the lane instead), so the news can ride on the
    /// next message until then.
    fn owes_board_credit(&self, owed: u64) -> bool {
        self.board_view.get().is_some_and(|view| owed >= (view.slots() as u64 / 2).max(1))
    }

    /// The coordinator's end: sends `chunk` as where its bytes are on the
    /// board, if they are there and the worker reads the board; the bytes
    /// are held (their slot stays written) until the worker has taken them.
    fn refer_to_board(&self, chunk: &mut pb::WeightsChunk) -> bool {
        let Some(board) = self.board.as_ref().filter(|_| self.board_open.load(Ordering::Acquire)) else {
            return false;
        };
        let Some(offset) = board.offset_of(&chunk.data).filter(|_| !chunk.data.is_empty()) else { return false };
        let mut held = self.board_held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.chunks.len() as u64 >= MAX_HELD {
            return false;
        }
        chunk.lane_bytes = chunk.data.len() as u32;
        chunk.board_offset = Some(offset);
        held.chunks.push_back(std::mem::take(&mut chunk.data));
        true
    }

    /// Sends `chunk` by where its bytes are on the board if they are there
    /// (see [`Link::refer_to_board`]), else, if a lane is open and its next
    /// slot is free, by where they are in the worker's weights area if they
    /// are there (held, as that slot would be, until the other end has
    /// taken them), else by moving them into that slot; [`Sent::Wait`] if
    /// it is not free yet.
    fn send(&self, chunk: &mut pb::WeightsChunk) -> Sent {
        if self.refer_to_board(chunk) {
            return Sent::Lane;
        }
        let lane = match self.lane.get() {
            Some(lane) if self.is_established() && (1..=lane.slot_bytes).contains(&chunk.data.len()) => lane,
            _ => return Sent::Inline,
        };
        let direction = self.side.sends();
        let written = self.written.load(Ordering::Acquire);
        if written - self.freed.load(Ordering::Acquire) >= lane.slots(direction) as u64 {
            return Sent::Wait;
        }
        chunk.lane_bytes = chunk.data.len() as u32;
        match lane.area_offset_of(&chunk.data).filter(|_| self.side == Side::Worker) {
            Some(at) => {
                chunk.area_offset = Some(at);
                let mut held = self.area_held.lock().unwrap_or_else(PoisonError::into_inner);
                held.push_back((written, std::mem::take(&mut chunk.data)));
            }
            None => {
                lane.write(direction, written, &chunk.data);
                chunk.data = Bytes::new();
            }
        }
        self.written.store(written + 1, Ordering::Release);
        Sent::Lane
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(board) = self.board.as_ref().filter(|_| self.board_open.load(Ordering::Acquire)) {
            board.reader_left();
        }
    }
}

/// The coordinator's board chunks a worker was sent and has not taken.
#[derive(Debug, Default)]
struct BoardHeld {
    /// How many it has taken.
    freed: u64,
    /// The rest, in the order sent: their slots stay written while held.
    chunks: VecDeque<Bytes>,
}

/// Where a chunk taken in place lies.
#[derive(Debug, Clone, Copy)]
enum Place {
    Lane,
    Board,
}

/// A chunk's bytes where they lie (a lane slot, a worker's weights area, or
/// the board), which frees their place when this drops.
struct InSlot {
    link: Arc<Link>,
    place: Place,
    index: u64,
    offset: usize,
    len: usize,
}

impl AsRef<[u8]> for InSlot {
    fn as_ref(&self) -> &[u8] {
        let base = match self.place {
            Place::Lane => self.link.lane.get().expect("a chunk in a slot has its lane").map.as_ptr(),
            Place::Board => self.link.board_view.get().expect("a chunk on the board has its board").ptr(),
        };
        // SAFETY: the slot lies inside the mapping (checked as in
        // `LaneFile::write`, by `LaneFile::in_area` for a worker's weights
        // area, or by `BoardView::check`), which this handle
        // keeps alive; the sender writes it again only after `done` frees
        // it, when this has dropped. A sender that broke that rule changes
        // bytes this end reads once: the worker decodes each byte once, and
        // the coordinator copies each as it measures it (it takes weights
        // from a worker anyway).
        unsafe { std::slice::from_raw_parts(base.add(self.offset), self.len) }
    }
}

impl Drop for InSlot {
    fn drop(&mut self) {
        self.link.done(self.place, self.index);
    }
}

/// Half of a worker's weights area: memory a trainer keeps its weights in
/// ([`lazyavg_common::train::Trainer::keep_weights_in`]), which its
/// coordinator reads in place when they are sent.
#[derive(Debug)]
pub struct AreaHalf {
    /// The lane's mapping, kept for as long as the trainer keeps this.
    map: Arc<MmapRaw>,
    /// Where it starts in the lane file.
    at: usize,
    /// Its length in f32 values (the model's).
    len: usize,
}

impl WeightsMemory for AreaHalf {
    fn values(&self) -> &[f32] {
        // SAFETY: the half lies inside the mapping (`Link::weights_area`
        // checked its length against the offer's, which the file's size,
        // sealed, includes), which this keeps mapped; it starts a page
        // (`LaneFile::open` checked), so is aligned for f32, and every bit
        // pattern is an f32. The two halves do not overlap and are handed
        // out once, so `&mut self` is this process's one way to change
        // these bytes. The coordinator maps them writable too and only
        // reads them: a worker trusts its coordinator, as with the weights
        // it sends.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.at).cast::<f32>(), self.len) }
    }

    fn values_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `values`; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(self.at).cast::<f32>(), self.len) }
    }
}

/// How a chunk went.
enum Sent {
    /// In its message.
    Inline,
    /// By reference: into a lane slot, or where it is on the board.
    Lane,
    /// Not yet: no lane slot is free.
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
    /// Where the message says how many of the coordinator's board chunks
    /// this end has taken, if it can (a worker's messages).
    fn board_taken(&mut self) -> Option<&mut u64>;
    /// The message that frees the other end's slots (and the board's).
    fn lane_free(taken: u64, board_taken: u64) -> Self;
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

    fn board_taken(&mut self) -> Option<&mut u64> {
        Some(&mut self.board_taken)
    }

    fn lane_free(taken: u64, board_taken: u64) -> Self {
        let free = pb::worker_message::Kind::LaneFree(pb::LaneFree { taken, board_taken });
        pb::WorkerMessage { kind: Some(free), ..Default::default() }
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

    fn board_taken(&mut self) -> Option<&mut u64> {
        None
    }

    fn lane_free(taken: u64, _board_taken: u64) -> Self {
        let free = pb::coordinator_message::Kind::LaneFree(pb::LaneFree { taken, board_taken: 0 });
        Ok(pb::CoordinatorMessage { kind: Some(free), lane_taken: 0 })
    }
}

/// A session's outgoing messages with its lane in between: each chunk of
/// weights goes by where it is on the board, or into the next slot
/// (waiting for one to free), and the slots this end has read are announced
/// free on the next message that goes, or ahead of anything else when
/// [`Link::owes_credit`] (or [`Link::owes_board_credit`]) says so, so that
/// the other end never waits on this one's queue for ever.
pub struct Outbound<S: Stream> {
    messages: S,
    link: Arc<Link>,
    /// A chunk waiting for a free slot.
    held: Option<S::Item>,
    /// The count of the other end's lane chunks last announced taken.
    announced: u64,
    /// The count of the board's chunks last announced taken.
    board_announced: u64,
}

impl<S: Stream> Outbound<S> {
    pub fn new(messages: S, link: Arc<Link>) -> Self {
        Outbound { messages, link, held: None, announced: 0, board_announced: 0 }
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
        let (taken, board_taken) = (this.link.lane_receipts.taken(), this.link.board_receipts.taken());
        let (lane_news, board_news) = (taken > this.announced, board_taken > this.board_announced);
        if (lane_news && this.link.owes_credit(taken - this.announced))
            || (board_news && this.link.owes_board_credit(board_taken - this.board_announced))
        {
            (this.announced, this.board_announced) = (taken, board_taken);
            return Poll::Ready(Some(S::Item::lane_free(taken, board_taken)));
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
                if let Some(news) = message.lane_taken().filter(|_| lane_news) {
                    *news = taken;
                    this.announced = taken;
                }
                if let Some(news) = message.board_taken().filter(|_| board_news) {
                    *news = board_taken;
                    this.board_announced = board_taken;
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
