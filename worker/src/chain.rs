//! `--overlap`: pulls trained back to back by one job.
//!
//! The coordinator sends a worker its pulls ahead, so the next one is usually
//! here before the one training ends. Returning to the async runtime between
//! the two costs two thread wake-ups, and on busy cores each can wait for a
//! core (3% of a 2-worker run on 2 cores). Instead the session queues the next
//! pull here, and the training thread, once its pull is trained and the
//! weights may be sent, hands them to the session and goes straight on.
//!
//! The pulls a job holds live here, under one lock shared by the session and
//! the training thread, so a command that changes a held pull (the
//! coordinator lifting a wait) finds it wherever the job has got to.

use std::sync::{Mutex, MutexGuard, PoisonError};

use lazyavg_proto::pb;

/// The pull a job trains and the one queued to follow it.
#[derive(Debug)]
pub struct PullChain(Mutex<ChainState>);

#[derive(Debug)]
struct ChainState {
    training: pb::PullWeights,
    queued: Option<pb::PullWeights>,
    /// False once the job has decided to end: nothing more may be queued.
    open: bool,
}

impl PullChain {
    /// The chain of a job that starts by training `first`.
    pub fn new(first: pb::PullWeights) -> Self {
        PullChain(Mutex::new(ChainState { training: first, queued: None, open: true }))
    }

    fn lock(&self) -> MutexGuard<'_, ChainState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `pull` to follow the one training if it comes right after it
    /// (same epoch, answered after that round), nothing is queued yet and the
    /// job has not ended; else gives it back.
    pub fn offer(&self, pull: pb::PullWeights) -> Result<(), pb::PullWeights> {
        let mut state = self.lock();
        let follows = pull.epoch == state.training.epoch && pull.after_round == state.training.round;
        if !(state.open && follows && state.queued.is_none()) {
            return Err(pull);
        }
        state.queued = Some(pull);
        Ok(())
    }

    /// Sets `after_round` of the held pull for `epoch` and `round`, if any;
    /// returns whether there was one.
    pub fn lift(&self, epoch: u64, round: u64, after_round: u64) -> bool {
        let mut state = self.lock();
        let ChainState { training, queued, .. } = &mut *state;
        match std::iter::once(training).chain(queued.as_mut()).find(|p| (p.epoch, p.round) == (epoch, round)) {
            Some(held) => {
                held.after_round = after_round;
                true
            }
            None => false,
        }
    }

    /// For the training thread, its pull trained: if `may_send` (its weights
    /// may go now) and a pull is queued, that one trains next; returns the
    /// trained pull and the next. Otherwise the job ends here and nothing
    /// more is queued.
    pub fn advance(&self, may_send: bool) -> Option<(pb::PullWeights, pb::PullWeights)> {
        let mut state = self.lock();
        match state.queued.take() {
            Some(next) if may_send => Some((std::mem::replace(&mut state.training, next), next)),
            queued => {
                state.queued = queued;
                state.open = false;
                None
            }
        }
    }

    /// The job ended: the pull it trained last, and the one left queued.
    pub fn finish(&self) -> (pb::PullWeights, Option<pb::PullWeights>) {
        let mut state = self.lock();
        state.open = false;
        (state.training, state.queued.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(round: u64, after_round: u64) -> pb::PullWeights {
        pb::PullWeights { epoch: 2, round, train_from: 0, train_until: 512, after_round }
    }

    #[test]
    fn only_the_pull_right_after_the_one_training_is_queued_and_only_one() {
        let chain = PullChain::new(pull(3, 2));
        assert!(chain.offer(pull(5, 4)).is_err(), "not the next round");
        assert!(chain.offer(pull(4, 0)).is_err(), "not answered after the round training");
        assert!(chain.offer(pb::PullWeights { epoch: 3, ..pull(4, 3) }).is_err(), "another epoch");
        assert!(chain.offer(pull(4, 3)).is_ok());
        assert!(chain.offer(pull(4, 3)).is_err(), "one is queued already");
    }

    #[test]
    fn the_queued_pull_trains_next_only_when_the_weights_may_be_sent() {
        let chain = PullChain::new(pull(3, 2));
        chain.offer(pull(4, 3)).unwrap();
        assert_eq!(chain.advance(true), Some((pull(3, 2), pull(4, 3))));
        // Now training round 4: round 5 may queue behind it.
        chain.offer(pull(5, 4)).unwrap();
        assert_eq!(chain.advance(false), None, "its average is not applied yet");
        assert!(chain.offer(pull(6, 5)).is_err(), "the job has ended");
        assert_eq!(chain.finish(), (pull(4, 3), Some(pull(5, 4))));
    }

    #[test]
    fn with_nothing_queued_the_job_ends() {
        let chain = PullChain::new(pull(3, 2));
        assert_eq!(chain.advance(true), None);
        assert!(chain.offer(pull(4, 3)).is_err());
        assert_eq!(chain.finish(), (pull(3, 2), None));
    }

    #[test]
    fn a_lifted_wait_reaches_the_pull_wherever_it_is_held() {
        let chain = PullChain::new(pull(3, 2));
        chain.offer(pull(4, 3)).unwrap();
        assert!(chain.lift(2, 4, 0));
        assert!(chain.lift(2, 3, 1));
        assert!(!chain.lift(2, 5, 0));
        assert_eq!(chain.advance(true), Some((pull(3, 1), pull(4, 0))));
    }
}
