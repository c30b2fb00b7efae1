//! The board: the coordinator's weights in one memory file that every
//! local worker maps, read-only.
//!
//! Through lanes alone the coordinator copies each chunk of an average into
//! every worker's lane: at 8 local workers, 8 copies of the model a round
//! on top of the one each worker makes out of its lane. On the board it
//! copies each chunk once ([`Board::post`]) and sends each worker a message
//! saying where the bytes are; each worker reads them from there as from a
//! lane slot and says when it is done, as it does for a lane chunk
//! (`board_taken`). A slot is written again only once nothing holds it: no
//! message still queued for a session, and no worker that was sent it and
//! has not said it is done (see [`super::Link`], which holds a posted
//! chunk's bytes until then), but for one whose session ended: it may still
//! read a message sent before, from a slot written again since, and drops
//! whatever it read with the session (a worker starts each session afresh,
//! from the weights that session sends). When a version does not fit, or
//! no worker reads the board, the weights go as before. The file is sealed
//! against writes by any process but the coordinator.

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use memmap2::MmapRaw;

use super::memfd::{self, HEADER_BYTES, Writers};
use super::{LaneError, MAX_OFFERED_SLOTS, SLOT_BYTES};
use crate::pb;

/// Slots on the board: two versions in flight of a model up to 4 MiB (a
/// default model, two chunks, keeps four slots in use), one of a model up
/// to 8 MiB; a bigger model goes through the lanes. Its pages take memory
/// only once written, and the slots freed last are used first.
pub(super) const BOARD_SLOTS: u32 = 16;

/// The most of its board chunks the coordinator leaves a worker holding,
/// and a worker accepts: one bit each in [`super::Receipts`].
pub(super) const MAX_HELD: u64 = 64;

/// The coordinator's board, shared by its sessions (which send chunks on it)
/// and its driver (which posts them).
#[derive(Debug)]
pub struct Board {
    slots: u32,
    slot_bytes: usize,
    map: MmapRaw,
    offer: pb::LaneBoard,
    /// Free slots, the one freed last on top.
    free: Mutex<Vec<u32>>,
    /// Sessions whose worker mapped the board: with none, nothing is posted.
    readers: AtomicUsize,
    /// Held open for the offer's path (the mapping alone keeps the memory).
    _file: File,
}

impl Board {
    /// Makes the board's memory, sealed at its size.
    pub fn create() -> Result<Arc<Board>, LaneError> {
        let (slots, slot_bytes) = (BOARD_SLOTS, SLOT_BYTES);
        let made = memfd::create("board", board_len(slot_bytes, slots), Writers::Maker)?;
        let offer = pb::LaneBoard {
            path: made.path,
            nonce: Bytes::copy_from_slice(&made.nonce),
            slot_bytes: slot_bytes as u32,
            slots,
        };
        let free = Mutex::new((0..slots).rev().collect());
        let readers = AtomicUsize::new(0);
        Ok(Arc::new(Board { slots, slot_bytes, map: made.map, offer, free, readers, _file: made.file }))
    }

    /// What a lane offer says of the board.
    pub fn offer(&self) -> pb::LaneBoard {
        self.offer.clone()
    }

    /// A version's `chunks` (each at most a slot) copied into free slots,
    /// all of them or none, as bytes that free their slot when their last
    /// handle drops; `None` (and no copy) when no worker reads the board or
    /// fewer slots are free. A version only partly on the board would keep
    /// slots written for a few chunks of a model the lanes carry anyway: a
    /// model bigger than the board goes through the lanes whole, and takes
    /// none of the board's memory.
    pub fn post(self: &Arc<Self>, chunks: &[&[u8]]) -> Option<Vec<Bytes>> {
        if self.readers.load(Ordering::Acquire) == 0 || chunks.iter().any(|data| data.len() > self.slot_bytes) {
            return None;
        }
        let slots = {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            let rest = free.len().checked_sub(chunks.len())?;
            free.split_off(rest)
        };
        let posted = chunks.iter().zip(slots).map(|(data, slot)| {
            let offset = slot_offset(self.slot_bytes, slot);
            // SAFETY: the slot lies inside the mapping (`board_len`), whose
            // size the seals fix; it was free: no bytes of it are held in
            // this process, and every worker sent it before has said it is
            // done with it or lost its session (see the module's doc).
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(offset), data.len()) };
            Bytes::from_owner(Posted { board: Arc::clone(self), slot, len: data.len() })
        });
        Some(posted.collect())
    }

    /// Where `data` starts in the board's file, if it lies in one of its slots.
    pub(super) fn offset_of(&self, data: &[u8]) -> Option<u64> {
        let start = (data.as_ptr() as usize).checked_sub(self.map.as_ptr() as usize)?;
        in_one_slot(self.slot_bytes, self.slots, start, data.len()).then_some(start as u64)
    }

    /// A session's worker mapped the board.
    pub(super) fn reader_joined(&self) {
        self.readers.fetch_add(1, Ordering::AcqRel);
    }

    /// A session whose worker mapped the board ended.
    pub(super) fn reader_left(&self) {
        self.readers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A chunk's bytes posted in a slot, which frees when this drops.
struct Posted {
    board: Arc<Board>,
    slot: u32,
    len: usize,
}

impl AsRef<[u8]> for Posted {
    fn as_ref(&self) -> &[u8] {
        let offset = slot_offset(self.board.slot_bytes, self.slot);
        // SAFETY: inside the mapping, which `board` keeps alive; the slot is
        // written only once free, after this has dropped.
        unsafe { std::slice::from_raw_parts(self.board.map.as_ptr().add(offset), self.len) }
    }
}

impl Drop for Posted {
    fn drop(&mut self) {
        self.board.free.lock().unwrap_or_else(PoisonError::into_inner).push(self.slot);
    }
}

/// A worker's read-only mapping of the coordinator's board.
#[derive(Debug)]
pub(super) struct BoardView {
    map: MmapRaw,
    slots: u32,
    slot_bytes: usize,
    _file: File,
}

impl BoardView {
    /// Opens the offered board, with the same checks as a lane.
    pub(super) fn open(offer: &pb::LaneBoard) -> Result<BoardView, String> {
        let slot_bytes = offer.slot_bytes as usize;
        if !((1..=MAX_OFFERED_SLOTS).contains(&offer.slots) && (4..=SLOT_BYTES).contains(&slot_bytes)) {
            return Err(format!(
                "a board of {} slots of {slot_bytes} bytes: at most {MAX_OFFERED_SLOTS} slots of at most {SLOT_BYTES} bytes",
                offer.slots
            ));
        }
        let len = board_len(slot_bytes, offer.slots);
        let opened = memfd::open(&offer.path, &offer.nonce, len, false, "board")?;
        Ok(BoardView { map: opened.map, slots: offer.slots, slot_bytes, _file: opened.file })
    }

    /// `len` bytes at `offset` of the board, if they lie in one of its slots.
    pub(super) fn check(&self, offset: u64, len: usize) -> Result<usize, LaneError> {
        match usize::try_from(offset) {
            Ok(start) if in_one_slot(self.slot_bytes, self.slots, start, len) => Ok(start),
            _ => Err(LaneError::Protocol(format!(
                "a board chunk of {len} bytes at byte {offset}, outside the board's {} slots of {} bytes",
                self.slots, self.slot_bytes
            ))),
        }
    }

    pub(super) fn ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    pub(super) fn slots(&self) -> u32 {
        self.slots
    }
}

/// Whether `len` bytes at byte `start` of a board's file lie in one of its
/// `slots` slots of `slot_bytes`.
fn in_one_slot(slot_bytes: usize, slots: u32, start: usize, len: usize) -> bool {
    let Some(slot) = start.checked_sub(HEADER_BYTES).map(|past| past / slot_bytes) else { return false };
    slot < slots as usize && start.checked_add(len).is_some_and(|end| end <= slot_offset(slot_bytes, slot as u32 + 1))
}

/// Where slot `slot` begins in a board's file.
fn slot_offset(slot_bytes: usize, slot: u32) -> usize {
    HEADER_BYTES + slot as usize * slot_bytes
}

/// A board's length in bytes: the header and the slots.
fn board_len(slot_bytes: usize, slots: u32) -> usize {
    slot_offset(slot_bytes, slots)
}
