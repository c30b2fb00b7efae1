//! What `lazyavg status` shows: a board of the run and its workers, kept by
//! an observer and read by the service's Status call.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lazyavg_common::status::{RunStatus, WorkerState, WorkerStatus};

use super::{Observer, RunEvent};
use crate::error::Result;
use crate::round::WorkerId;

/// A worker pulled and silent this many times its last round trip is late.
const LATE_FACTOR: u32 = 3;
/// Never late sooner than this (a tiny model's round trip is milliseconds).
const LATE_FLOOR: Duration = Duration::from_secs(1);
/// Late after this before its first answer (it may still be loading).
const LATE_FIRST: Duration = Duration::from_secs(5);
/// Workers gone that the board still shows, the most recent ones: a
/// crash-looping worker must not grow the board (and each Status reply)
/// without bound. The exporter keeps the series of as many.
pub(crate) const GONE_KEPT: usize = 32;

#[derive(Debug, Default)]
struct Board {
    epoch: u64,
    round: u64,
    rounds_completed: u64,
    accuracy: Option<f64>,
    /// Every worker of the run, in the order they joined.
    workers: Vec<(WorkerId, Entry)>,
}

#[derive(Debug)]
struct Entry {
    name: String,
    address: String,
    gone: bool,
    samples: u64,
    last_contribution: Option<Instant>,
    /// When its pull for the open round went out, until its answer is in.
    pulled: Option<Instant>,
    answering: bool,
    round_trip: Option<Duration>,
}

impl Entry {
    fn state(&self, now: Instant) -> WorkerState {
        let late_after = self.round_trip.map_or(LATE_FIRST, |rtt| (rtt * LATE_FACTOR).max(LATE_FLOOR));
        match self.pulled {
            _ if self.gone => WorkerState::Gone,
            Some(_) if self.answering => WorkerState::Answering,
            Some(pulled) if now - pulled > late_after => WorkerState::Late,
            _ => WorkerState::Training,
        }
    }
}

impl Board {
    fn entry(&mut self, id: WorkerId) -> Option<&mut Entry> {
        self.workers.iter_mut().find(|(w, e)| *w == id && !e.gone).map(|(_, e)| e)
    }

    /// Marks worker `id` gone, keeping only the [`GONE_KEPT`] latest gone.
    fn left(&mut self, id: WorkerId) {
        if let Some(entry) = self.entry(id) {
            entry.gone = true;
        }
        let gone = self.workers.iter().filter(|(_, e)| e.gone).count();
        let mut forget = gone.saturating_sub(GONE_KEPT);
        self.workers.retain(|(_, e)| {
            let drop = e.gone && forget > 0;
            forget -= usize::from(drop);
            !drop
        });
    }
}

/// The observer that keeps the board.
#[derive(Debug, Default)]
pub struct StatusBoard(Arc<Mutex<Board>>);

/// A reader of the board, for the service.
#[derive(Debug, Clone)]
pub struct StatusView(Arc<Mutex<Board>>);

fn lock(board: &Mutex<Board>) -> MutexGuard<'_, Board> {
    board.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StatusBoard {
    pub fn view(&self) -> StatusView {
        StatusView(Arc::clone(&self.0))
    }
}

impl StatusView {
    /// The board as of now: live workers first, then those gone.
    pub fn snapshot(&self) -> RunStatus {
        let board = lock(&self.0);
        let now = Instant::now();
        let mut workers: Vec<WorkerStatus> = board
            .workers
            .iter()
            .map(|(_, e)| WorkerStatus {
                name: e.name.clone(),
                address: e.address.clone(),
                state: e.state(now),
                samples: e.samples,
                last_contribution: e.last_contribution.map(|t| now - t),
                round_trip: e.round_trip,
            })
            .collect();
        workers.sort_by_key(|w| w.state == WorkerState::Gone);
        RunStatus {
            epoch: board.epoch,
            round: board.round,
            rounds_completed: board.rounds_completed,
            accuracy: board.accuracy,
            workers,
        }
    }
}

impl Observer for StatusBoard {
    fn observe(&mut self, event: &RunEvent<'_>) -> Result<()> {
        let mut board = lock(&self.0);
        let now = Instant::now();
        match *event {
            RunEvent::WorkerJoined { id, name, address, .. } => board.workers.push((
                id,
                Entry {
                    name: name.to_owned(),
                    address: address.to_owned(),
                    gone: false,
                    samples: 0,
                    last_contribution: None,
                    pulled: None,
                    answering: false,
                    round_trip: None,
                },
            )),
            RunEvent::WorkerLeft { id, .. } => board.left(id),
            RunEvent::EpochStarted { epoch, .. } => board.epoch = epoch,
            RunEvent::RoundStarted { round, workers, .. } => {
                board.round = round;
                for &id in workers {
                    if let Some(entry) = board.entry(id) {
                        entry.pulled = Some(now);
                        entry.answering = false;
                    }
                }
            }
            RunEvent::WeightsReceived { worker, chunk, .. } => {
                if let Some(entry) = board.entry(worker) {
                    entry.answering = true;
                    if chunk.is_last() {
                        entry.round_trip = entry.pulled.take().map(|pulled| now - pulled);
                        entry.answering = false;
                    }
                }
            }
            RunEvent::RoundCompleted(done) => {
                board.rounds_completed += 1;
                for &(id, samples) in &done.summary.contributors {
                    if let Some(entry) = board.entry(id) {
                        entry.samples += samples;
                        entry.last_contribution = Some(now);
                    }
                }
            }
            RunEvent::EpochEvaluated(record) => board.accuracy = Some(record.accuracy),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_looping_worker_does_not_grow_the_board() {
        let mut board = StatusBoard::default();
        let view = board.view();
        for id in 1..=100 {
            let name = format!("w{id}");
            board.observe(&RunEvent::WorkerJoined { id, name: &name, address: "127.0.0.1:1", workers: 1 }).unwrap();
            let left = RunEvent::WorkerLeft {
                id,
                name: &name,
                reason: "gone",
                epoch: 1,
                trained: 0,
                remaining: 0,
                workers: 0,
            };
            board.observe(&left).unwrap();
        }
        board.observe(&RunEvent::WorkerJoined { id: 101, name: "live", address: "127.0.0.1:1", workers: 1 }).unwrap();
        let workers = view.snapshot().workers;
        assert_eq!(workers.len(), GONE_KEPT + 1);
        assert_eq!((workers[0].name.as_str(), workers[0].state), ("live", WorkerState::Training));
        assert_eq!(workers[1].name, format!("w{}", 100 - GONE_KEPT + 1), "the most recent ones are kept");
    }
}
