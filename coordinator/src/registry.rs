//! Which workers have joined the run, under which names, which of them hold
//! a session, and what each may still download. Pure: the service asks it
//! (passing the time in), the network never touches it.
//!
//! Everything it keeps is bounded by [`Limits`], never by how many clients
//! tried: a Join that does not attach within `attach_timeout` is forgotten,
//! Joins beyond `max_pending_joins` and sessions beyond `max_sessions` are
//! refused, and a name is at most [`MAX_NAME_BYTES`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::round::WorkerId;

/// The longest worker name accepted, in bytes (the contract's).
pub use lazyavg_proto::MAX_WORKER_NAME_BYTES as MAX_NAME_BYTES;

/// Concurrent `FetchDataset` streams one worker id may hold: one, and one
/// more to resume a download whose broken stream the coordinator has not yet
/// noticed.
pub const MAX_FETCH_STREAMS: usize = 2;

/// How many whole copies of the training set one worker id may download
/// (resumed downloads count only the bytes they ask for): a worker needs one.
pub const MAX_FULL_FETCHES: u64 = 3;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    #[error("unknown worker id {0}: call Join first (a Join that does not attach in time is forgotten)")]
    Unknown(WorkerId),
    #[error("worker id {0} already has an open session")]
    AlreadyAttached(WorkerId),
    #[error("the worker name is {bytes} bytes; the limit is {MAX_NAME_BYTES}")]
    NameTooLong { bytes: usize },
    #[error("{limit} Joins are waiting to attach (--max-pending-joins); try again later")]
    TooManyPendingJoins { limit: usize },
    #[error("{limit} sessions are open (--max-sessions); try again later")]
    TooManySessions { limit: usize },
    #[error("worker id {id} already has {MAX_FETCH_STREAMS} dataset downloads open")]
    TooManyFetches { id: WorkerId },
    #[error("{limit} dataset downloads are open (--max-pending-joins); try again later")]
    TooManyDownloads { limit: usize },
    #[error("worker id {id} has downloaded the training set {MAX_FULL_FETCHES} times over")]
    FetchedEnough { id: WorkerId },
}

/// The bounds on what the registry keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Joins not yet attached kept at once.
    pub max_pending_joins: usize,
    /// Sessions open at once, attached or still waiting for their Attach.
    pub max_sessions: usize,
    /// How long a Join is kept without attaching, counted from the Join or
    /// from the end of its last dataset download.
    pub attach_timeout: Duration,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    attached: bool,
    /// The Join, or the end of its latest dataset download.
    last_seen: Instant,
    /// Open `FetchDataset` streams; a Join downloading is never forgotten.
    fetches: usize,
    /// Bytes of the training set it may still ask for.
    fetch_budget: u64,
}

/// Ids are handed out once and never reused, so a message from a worker's
/// earlier life can never be taken for another worker's.
#[derive(Debug)]
pub struct Registry {
    limits: Limits,
    /// Size of the training set, for the download budget.
    dataset_bytes: u64,
    next_id: WorkerId,
    workers: BTreeMap<WorkerId, Entry>,
    /// Sessions open, attached or not (see [`Registry::open_session`]).
    sessions: usize,
    /// `FetchDataset` streams open, whatever became of their Joins: the
    /// limits per id alone would let a client that joins again and again
    /// (a new id each time) hold ever more streams that it does not read.
    downloads: usize,
}

impl Registry {
    pub fn new(limits: Limits, dataset_bytes: u64) -> Self {
        Registry { limits, dataset_bytes, next_id: 0, workers: BTreeMap::new(), sessions: 0, downloads: 0 }
    }

    /// Registers a worker and returns its new id, after forgetting the
    /// Joins that did not attach in time. When `max_pending_joins` are
    /// pending, the oldest one not downloading makes room: a real worker
    /// attaches within moments of its Join, so a flood of Joins that never
    /// attach must outpace that to keep it out, where refusing the newest
    /// would let 64 Joins a minute keep every worker out.
    pub fn join(&mut self, name: &str, now: Instant) -> Result<WorkerId, RegistryError> {
        if name.len() > MAX_NAME_BYTES {
            return Err(RegistryError::NameTooLong { bytes: name.len() });
        }
        self.forget_expired(now);
        let limit = self.limits.max_pending_joins;
        if self.workers.values().filter(|e| !e.attached).count() >= limit {
            let oldest = self
                .workers
                .iter()
                .filter(|(_, e)| !e.attached && e.fetches == 0)
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(&id, _)| id);
            let oldest = oldest.ok_or(RegistryError::TooManyPendingJoins { limit })?;
            self.workers.remove(&oldest);
        }
        self.next_id += 1;
        let id = self.next_id;
        let entry = Entry {
            name: printable(name),
            attached: false,
            last_seen: now,
            fetches: 0,
            fetch_budget: self.dataset_bytes.saturating_mul(MAX_FULL_FETCHES),
        };
        self.workers.insert(id, entry);
        Ok(id)
    }

    /// Counts a new session against `max_sessions`; [`Registry::close_session`]
    /// gives its place back.
    pub fn open_session(&mut self) -> Result<(), RegistryError> {
        let limit = self.limits.max_sessions;
        if self.sessions >= limit {
            return Err(RegistryError::TooManySessions { limit });
        }
        self.sessions += 1;
        Ok(())
    }

    pub fn close_session(&mut self) {
        self.sessions = self.sessions.saturating_sub(1);
    }

    /// Marks `id`'s session open; returns the worker's name (control
    /// characters escaped). A Join older than the deadline is unknown.
    pub fn attach(&mut self, id: WorkerId, now: Instant) -> Result<String, RegistryError> {
        self.forget_expired(now);
        let entry = self.workers.get_mut(&id).ok_or(RegistryError::Unknown(id))?;
        if entry.attached {
            return Err(RegistryError::AlreadyAttached(id));
        }
        entry.attached = true;
        Ok(entry.name.clone())
    }

    /// The names of the Joins that have not attached (yet), and may still.
    pub fn pending_names(&mut self, now: Instant) -> Vec<String> {
        self.forget_expired(now);
        self.workers.values().filter(|e| !e.attached).map(|e| e.name.clone()).collect()
    }

    /// Marks `id`'s session closed; it may attach again after a new Join.
    pub fn detach(&mut self, id: WorkerId) {
        self.workers.remove(&id);
    }

    /// Admits a download of `bytes` of the training set by `id`, within its
    /// limits and while fewer than `max_pending_joins` downloads are open
    /// (one for each Join that may wait to attach); [`Registry::end_fetch`]
    /// ends it.
    pub fn start_fetch(&mut self, id: WorkerId, bytes: u64, now: Instant) -> Result<(), RegistryError> {
        self.forget_expired(now);
        let limit = self.limits.max_pending_joins;
        let entry = self.workers.get_mut(&id).ok_or(RegistryError::Unknown(id))?;
        if entry.fetches >= MAX_FETCH_STREAMS {
            return Err(RegistryError::TooManyFetches { id });
        }
        if self.downloads >= limit {
            return Err(RegistryError::TooManyDownloads { limit });
        }
        entry.fetch_budget = entry.fetch_budget.checked_sub(bytes).ok_or(RegistryError::FetchedEnough { id })?;
        entry.fetches += 1;
        self.downloads += 1;
        Ok(())
    }

    /// A download by `id` sends its next chunk: its attach deadline starts
    /// again from now. `Unknown` once the Join was forgotten: a download
    /// whose reader stalled for the deadline keeps nothing pending.
    pub fn fetch_progress(&mut self, id: WorkerId, now: Instant) -> Result<(), RegistryError> {
        self.forget_expired(now);
        let entry = self.workers.get_mut(&id).ok_or(RegistryError::Unknown(id))?;
        entry.last_seen = now;
        Ok(())
    }

    /// A download by `id` ended: its attach deadline starts again from now.
    pub fn end_fetch(&mut self, id: WorkerId, now: Instant) {
        self.downloads = self.downloads.saturating_sub(1);
        if let Some(entry) = self.workers.get_mut(&id) {
            entry.fetches = entry.fetches.saturating_sub(1);
            entry.last_seen = now;
        }
    }

    /// Forgets the Joins that neither attached nor made progress with a
    /// download within the deadline.
    fn forget_expired(&mut self, now: Instant) {
        let timeout = self.limits.attach_timeout;
        self.workers.retain(|_, e| e.attached || now.saturating_duration_since(e.last_seen) < timeout);
    }
}

/// `name` with its control characters escaped (`\n`, `\u{1b}`), so that no
/// name can forge log lines or terminal sequences.
pub fn printable(name: &str) -> String {
    name.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn registry(max_pending_joins: usize, max_sessions: usize) -> Registry {
        Registry::new(Limits { max_pending_joins, max_sessions, attach_timeout: 10 * SECOND }, 1000)
    }

    #[test]
    fn ids_are_unique_and_sessions_exclusive() {
        let now = Instant::now();
        let mut r = registry(8, 8);
        let a = r.join("a", now).unwrap();
        let b = r.join("a", now).unwrap();
        assert_ne!(a, b);
        assert_eq!(r.attach(a, now).unwrap(), "a");
        assert_eq!(r.attach(a, now), Err(RegistryError::AlreadyAttached(a)));
        assert_eq!(r.attach(99, now), Err(RegistryError::Unknown(99)));
        r.detach(a);
        assert_eq!(r.attach(a, now), Err(RegistryError::Unknown(a)));
        assert!(r.join("c", now).unwrap() > b);
    }

    #[test]
    fn names_are_capped_and_their_control_characters_escaped() {
        let now = Instant::now();
        let mut r = registry(8, 8);
        let longest = "x".repeat(MAX_NAME_BYTES);
        let id = r.join(&longest, now).unwrap();
        assert_eq!(r.attach(id, now).unwrap(), longest);
        let err = r.join(&"é".repeat(MAX_NAME_BYTES / 2 + 1), now).unwrap_err();
        assert_eq!(err, RegistryError::NameTooLong { bytes: MAX_NAME_BYTES + 2 });
        assert!(err.to_string().contains("258 bytes; the limit is 256"), "{err}");
        let id = r.join("evil\n{\"message\":\"forged\"}\x1b[2J", now).unwrap();
        assert_eq!(r.attach(id, now).unwrap(), "evil\\n{\"message\":\"forged\"}\\u{1b}[2J");
    }

    #[test]
    fn a_join_that_does_not_attach_in_time_is_forgotten() {
        let t0 = Instant::now();
        let mut r = registry(8, 8);
        let late = r.join("late", t0).unwrap();
        let prompt = r.join("prompt", t0).unwrap();
        assert_eq!(r.attach(prompt, t0 + 9 * SECOND).unwrap(), "prompt");
        assert_eq!(r.attach(late, t0 + 10 * SECOND), Err(RegistryError::Unknown(late)));
        // An attached worker is never forgotten.
        assert_eq!(r.attach(prompt, t0 + 100 * SECOND), Err(RegistryError::AlreadyAttached(prompt)));
    }

    #[test]
    fn pending_joins_are_capped_and_expired_ones_make_room() {
        let t0 = Instant::now();
        let mut r = registry(2, 8);
        let a = r.join("a", t0).unwrap();
        let b = r.join("b", t0).unwrap();
        // Both downloading: nothing can make room.
        r.start_fetch(a, 10, t0).unwrap();
        r.start_fetch(b, 10, t0).unwrap();
        let err = r.join("c", t0).unwrap_err();
        assert_eq!(err, RegistryError::TooManyPendingJoins { limit: 2 });
        assert!(err.to_string().contains("2 Joins are waiting"), "{err}");
        r.end_fetch(a, t0);
        r.end_fetch(b, t0);
        // An attached Join is no longer pending.
        r.attach(a, t0).unwrap();
        let c = r.join("c", t0 + SECOND).unwrap();
        // Full: the oldest pending Join (b) makes room for the newest.
        let d = r.join("d", t0 + 2 * SECOND).unwrap();
        assert_eq!(r.attach(c, t0 + 2 * SECOND).unwrap(), "c");
        // d expires at 12 s.
        r.join("e", t0 + 10 * SECOND).unwrap();
        assert_eq!(r.attach(d, t0 + 12 * SECOND), Err(RegistryError::Unknown(d)));
        // However many tried, it keeps at most the cap (2) plus the attached (a, c).
        for i in 0..10_000u32 {
            r.join("flood", t0 + 12 * SECOND + Duration::from_millis(u64::from(i))).unwrap();
        }
        assert_eq!(r.workers.len(), 4);
    }

    #[test]
    fn sessions_are_capped_and_give_their_place_back() {
        let mut r = registry(8, 2);
        r.open_session().unwrap();
        r.open_session().unwrap();
        let err = r.open_session().unwrap_err();
        assert_eq!(err, RegistryError::TooManySessions { limit: 2 });
        assert!(err.to_string().contains("2 sessions are open"), "{err}");
        r.close_session();
        r.open_session().unwrap();
    }

    #[test]
    fn a_download_keeps_its_join_only_while_it_progresses() {
        let t0 = Instant::now();
        let mut r = registry(8, 8);
        let id = r.join("w", t0).unwrap();
        r.start_fetch(id, 1000, t0).unwrap();
        r.fetch_progress(id, t0 + 9 * SECOND).unwrap();
        r.fetch_progress(id, t0 + 18 * SECOND).unwrap();
        // Its reader stalled for the deadline: forgotten, its download told so.
        assert_eq!(r.fetch_progress(id, t0 + 28 * SECOND), Err(RegistryError::Unknown(id)));
        assert_eq!(r.attach(id, t0 + 28 * SECOND), Err(RegistryError::Unknown(id)));
    }

    #[test]
    fn downloads_open_at_once_are_capped_whatever_became_of_their_joins() {
        let t0 = Instant::now();
        let mut r = registry(2, 8);
        let (a, b) = (r.join("a", t0).unwrap(), r.join("b", t0).unwrap());
        r.start_fetch(a, 10, t0).unwrap();
        r.start_fetch(b, 10, t0).unwrap();
        // Both readers stall past the deadline; their Joins are forgotten,
        // their streams are not closed yet, and a new Join may not add one.
        let later = t0 + 11 * SECOND;
        let c = r.join("c", later).unwrap();
        let err = r.start_fetch(c, 10, later).unwrap_err();
        assert_eq!(err, RegistryError::TooManyDownloads { limit: 2 });
        assert!(err.to_string().contains("2 dataset downloads are open"), "{err}");
        r.end_fetch(a, later);
        r.start_fetch(c, 10, later).unwrap();
    }

    #[test]
    fn downloads_are_limited_per_worker() {
        let t0 = Instant::now();
        let mut r = registry(8, 8);
        let id = r.join("w", t0).unwrap();
        r.start_fetch(id, 1000, t0).unwrap();
        r.start_fetch(id, 500, t0).unwrap();
        assert_eq!(r.start_fetch(id, 10, t0), Err(RegistryError::TooManyFetches { id }));
        // The deadline counts from the last chunk or the download's end.
        r.fetch_progress(id, t0 + 9 * SECOND).unwrap();
        r.end_fetch(id, t0 + 18 * SECOND);
        r.start_fetch(id, 1000, t0 + 18 * SECOND).unwrap();
        r.end_fetch(id, t0 + 19 * SECOND);
        r.end_fetch(id, t0 + 19 * SECOND);
        // 2500 of its 3000 bytes are spent: a resumed download fits, a fourth whole copy does not.
        r.start_fetch(id, 500, t0 + 20 * SECOND).unwrap();
        r.end_fetch(id, t0 + 20 * SECOND);
        let err = r.start_fetch(id, 1000, t0 + 20 * SECOND).unwrap_err();
        assert_eq!(err, RegistryError::FetchedEnough { id });
        assert!(err.to_string().contains("3 times"), "{err}");
        assert_eq!(r.attach(id, t0 + 29 * SECOND).unwrap(), "w");
        assert_eq!(r.start_fetch(99, 1, t0), Err(RegistryError::Unknown(99)));
    }
}
