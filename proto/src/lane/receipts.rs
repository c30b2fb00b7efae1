//! What a receiving end counts of the chunks it takes in place, from a
//! lane's slots or the board's: how many came, and how many of them, in
//! order, it is done with, which it tells the sender so that it may write
//! their slots again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

#[derive(Debug, Default)]
pub(super) struct Receipts {
    /// The chunks taken so far.
    received: AtomicU64,
    /// How many of them, counted in order, this end is done with.
    taken: AtomicU64,
    /// The chunks after `taken` this end is done with already, one bit
    /// each from `taken` on (a chunk kept in place may go after the next).
    done_ahead: Mutex<u64>,
}

impl Receipts {
    /// Counts one more chunk and gives its index, unless `limit` of them
    /// are held already (a sender that wrote a slot still in use).
    pub fn receive(&self, limit: u64) -> Option<u64> {
        debug_assert!(limit <= u64::from(u64::BITS), "one bit of `done_ahead` a chunk");
        let index = self.received.load(Ordering::Acquire);
        if index - self.taken() >= limit {
            return None;
        }
        self.received.store(index + 1, Ordering::Release);
        Some(index)
    }

    /// This end is done with the `index`-th chunk: whether that frees it and
    /// more in order (all before it are done too).
    pub fn done(&self, index: u64) -> bool {
        let mut ahead = self.done_ahead.lock().unwrap_or_else(PoisonError::into_inner);
        let taken = self.taken();
        *ahead |= 1 << (index - taken);
        let freed = ahead.trailing_ones();
        *ahead = ahead.checked_shr(freed).unwrap_or(0);
        if freed > 0 {
            self.taken.store(taken + u64::from(freed), Ordering::Release);
        }
        freed > 0
    }

    /// How many chunks, in order, this end is done with.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Acquire)
    }
}
