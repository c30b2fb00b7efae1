//! `--overlap` from the driver's side.
//!
//! A worker whose weights for round r are all in is sent its pulls for
//! rounds r + 1 and r + 2 at once ([`PULLS_AHEAD`]; each with `after_round`
//! the round before it), so it trains while the others report and the
//! average is made, and starts the next range as soon as it has sent its
//! weights. It applies round r's average as a correction when it comes,
//! and sends its weights for r + 1 only after that: never more than one round
//! ahead of the average. A round sends nothing new to a worker whose pull
//! went ahead. If round r is abandoned, round r + 1 (its redo) re-sends the
//! pulls that waited for it without the wait, the worker's weights counting
//! for both rounds' samples (its shard table says it trained `done..until`
//! since its last average), and sends none ahead itself: after anything
//! irregular, one plain round. A worker with pulls ahead whose weights are
//! not in a round's average (non-finite) trains no more of the epoch. Answers
//! to pulls ahead that come while training is paused for lack of workers are
//! held for the round after the pause.

use tracing::warn;

use super::Driver;
use crate::epoch::Planned;
use crate::round::{RoundSummary, WorkerId};
use crate::service::Event;

/// `--overlap`: how many pulls a worker has queued after the one it trains.
/// One is the least that lets it train while the average is made; with two,
/// it does not wait for its next pull to come back either.
const PULLS_AHEAD: usize = 2;

/// `--overlap`: what a round leaves to the next one.
#[derive(Debug, Default)]
pub(super) struct Pipeline {
    /// When the first pull for the next round went out ahead.
    pub(super) since: Option<tokio::time::Instant>,
    /// The round was abandoned: the next one sends no pulls ahead.
    pub(super) suspended: bool,
    /// Answers to pulls sent ahead that came while training was paused for
    /// lack of workers, with no round open: they belong to the next round.
    pub(super) held: Vec<Event>,
}

impl Driver {
    /// `--overlap`: sends `id`, whose weights for `round` are all in, its
    /// pulls for the next rounds, continuing its shard from where `plan` ended it.
    pub(super) fn pull_ahead(&mut self, id: WorkerId, round: u64, plan: &[Planned]) {
        let Some(until) = plan.iter().find(|p| p.worker == id).map(|p| p.until) else { return };
        let samples = self.config.samples_per_round();
        let pulls = self.epoch.pulls_ahead(id, round, until, samples, PULLS_AHEAD);
        if !pulls.is_empty() {
            self.pipeline.since.get_or_insert_with(tokio::time::Instant::now);
        }
        self.dispatch(pulls);
    }

    /// `--overlap`: a worker of the round whose weights are not in its average
    /// (they were not finite) while pulls of its went ahead: what it trains
    /// for those no longer adds up, so the rest of its shard goes to the others
    /// and it waits for the next epoch, as a straggler does.
    pub(super) fn drop_lost_ahead(&mut self, plan: &[Planned], summary: &RoundSummary) {
        for &Planned { worker: id, .. } in plan {
            if summary.contributors.iter().any(|&(c, _)| c == id) {
                continue;
            }
            let Some(worker) = self.workers.get(&id) else { continue };
            if !self.epoch.has_pulls_ahead(id) {
                continue;
            }
            warn!(
                worker = id,
                name = worker.name,
                round = summary.round,
                "worker's weights missed the average while pulls of its went ahead; it trains no more of this epoch"
            );
            self.exclude_for_epoch(id);
        }
    }
}
