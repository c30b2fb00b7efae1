//! The end of a run for the workers that missed it: those dropped or cut
//! off before its Stop (stopped, partitioned, crashed and restarting) and
//! those that never read it. They learn it only from a coordinator that
//! still answers: its Join is refused as completed
//! ([`lazyavg_proto::ending`]) and the worker exits 0. So after a completed
//! run the gRPC port stays up for `--end-grace` while any worker of the run
//! has not been told, and not a moment when every one has: a local run
//! whose workers all read their Stop exits at once.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// The most departed workers remembered: a client that attaches under ever
/// new names and is dropped must not grow the coordinator, and a run's
/// real workers are far fewer. Past it the oldest is forgotten (and not
/// waited for at the end).
pub const MAX_DEPARTED: usize = 64;

/// Names of the workers that left the run and have not come back under
/// the same name, oldest first; kept by the driver.
#[derive(Debug, Default)]
pub struct Departed {
    names: VecDeque<String>,
}

impl Departed {
    /// A worker's session ended before the run did.
    pub fn left(&mut self, name: &str) {
        self.returned(name);
        if self.names.len() == MAX_DEPARTED {
            self.names.pop_front();
        }
        self.names.push_back(name.to_owned());
    }

    /// A worker attached: under a name that left, it is back.
    pub fn returned(&mut self, name: &str) {
        self.names.retain(|n| n != name);
    }

    pub fn into_names(self) -> impl Iterator<Item = String> {
        self.names.into_iter()
    }
}

/// Whether the run has completed, and which of its workers have not been
/// told; shared by the Join handler and the coordinator's last steps.
#[derive(Debug, Default)]
pub struct RunEnd {
    completed: AtomicBool,
    /// A std mutex: held for a set operation, never across an await.
    untold: Mutex<BTreeSet<String>>,
    all_told: Notify,
}

impl RunEnd {
    fn untold_names(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.untold.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the run completed, with the names of the workers still to be
    /// told: Joins are refused as completed from now on.
    pub fn complete(&self, untold: impl IntoIterator<Item = String>) {
        self.untold_names().extend(untold);
        self.completed.store(true, Ordering::Release);
    }

    pub fn is_completed(&self) -> bool {
        self.completed.load(Ordering::Acquire)
    }

    /// A Join from `name` was refused as completed: that worker knows.
    pub fn told(&self, name: &str) {
        let mut untold = self.untold_names();
        if untold.remove(name) && untold.is_empty() {
            self.all_told.notify_waiters();
        }
    }

    /// How many workers have not been told.
    pub fn untold(&self) -> usize {
        self.untold_names().len()
    }

    /// Resolves once every worker has been told, or after `grace`.
    pub async fn all_told_within(&self, grace: Duration) {
        let all_told = async {
            loop {
                let notified = self.all_told.notified();
                if self.untold_names().is_empty() {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(grace, all_told).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_comes_back_is_not_departed_and_the_oldest_make_room() {
        let mut departed = Departed::default();
        departed.left("a");
        departed.left("b");
        departed.returned("a");
        departed.left("b");
        assert_eq!(departed.into_names().collect::<Vec<_>>(), ["b"]);

        let mut departed = Departed::default();
        for i in 0..=MAX_DEPARTED {
            departed.left(&format!("w{i}"));
        }
        let names: Vec<String> = departed.into_names().collect();
        assert_eq!(names.len(), MAX_DEPARTED);
        assert_eq!(names[0], "w1");
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_ends_when_the_last_worker_is_told_or_at_the_grace() {
        let end = std::sync::Arc::new(RunEnd::default());
        assert!(!end.is_completed());
        end.complete(["a".to_owned(), "b".to_owned()]);
        assert!(end.is_completed());
        let start = tokio::time::Instant::now();
        let telling = std::sync::Arc::clone(&end);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            telling.told("a");
            telling.told("stranger");
            tokio::time::sleep(Duration::from_secs(1)).await;
            telling.told("b");
        });
        end.all_told_within(Duration::from_secs(60)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(end.untold(), 0);

        let end = RunEnd::default();
        end.complete(["never".to_owned()]);
        let start = tokio::time::Instant::now();
        end.all_told_within(Duration::from_secs(15)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        assert_eq!(end.untold(), 1);
    }
}
