//! When a round stops waiting for its workers. Pure apart from reading the clock.

use std::time::Duration;

use tokio::time::Instant;

/// When a round stops waiting: at `--round-timeout` at the latest, and once
/// half the workers have sent their weights, after `--straggler-factor` times
/// the time that took (but at least [`MIN_GRACE`] more). A worker that is
/// merely slow then costs the others one such wait per epoch, not one per round.
pub(super) struct RoundDeadline {
    started: Instant,
    at: Instant,
    factor: f64,
    quorum: usize,
    tightened: bool,
}

/// The least extra time stragglers get after the quorum, so that scheduling
/// noise on a busy machine does not drop healthy workers.
const MIN_GRACE: Duration = Duration::from_millis(20);

impl RoundDeadline {
    pub(super) fn new(timeout: Duration, factor: f64, participants: usize) -> Self {
        let started = Instant::now();
        let quorum = participants.div_ceil(2);
        RoundDeadline { started, at: started + timeout, factor, quorum, tightened: factor <= 0.0 || participants < 2 }
    }

    pub(super) fn at(&self) -> Instant {
        self.at
    }

    /// `--overlap`: some pulls of the round went out ahead, at `since`. The
    /// quorum's pace is measured from there, or workers that started early
    /// would make the others look slow. The hard timeout still runs from now.
    pub(super) fn head_start(&mut self, since: Instant) {
        self.started = self.started.min(since);
    }

    /// Waits `timeout` more from now: at a deadline no worker had answered
    /// by, when dropping them all would leave nothing to average.
    pub(super) fn extend(&mut self, timeout: Duration) {
        self.at = Instant::now() + timeout;
    }

    /// Tightens the deadline once `completed` contributions reach the quorum.
    pub(super) fn progress(&mut self, completed: usize) {
        if self.tightened || completed < self.quorum {
            return;
        }
        self.tightened = true;
        let now = Instant::now();
        let grace = (now - self.started).mul_f64((self.factor - 1.0).max(0.0)).max(MIN_GRACE);
        self.at = self.at.min(now + grace);
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::advance;

    use super::*;

    // On tokio's paused clock: time moves only by `advance`, so every deadline is exact.

    #[tokio::test(start_paused = true)]
    async fn the_deadline_tightens_once_half_have_answered() {
        let mut d = RoundDeadline::new(Duration::from_secs(10), 3.0, 4);
        let hard = d.at();
        assert_eq!(hard, Instant::now() + Duration::from_secs(10));
        advance(Duration::from_millis(100)).await;
        d.progress(1);
        assert_eq!(d.at(), hard, "one of four is not yet half");
        d.progress(2);
        // Half took 100 ms: the rest get (3 - 1) times that.
        assert_eq!(d.at(), Instant::now() + Duration::from_millis(200));
        let tightened = d.at();
        advance(Duration::from_millis(50)).await;
        d.progress(3);
        assert_eq!(d.at(), tightened, "tightened once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_quorum_still_leaves_the_least_grace() {
        let mut d = RoundDeadline::new(Duration::from_secs(10), 3.0, 2);
        advance(Duration::from_millis(1)).await;
        d.progress(1);
        assert_eq!(d.at(), Instant::now() + MIN_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_start_counts_towards_the_quorum_pace_not_the_timeout() {
        let since = Instant::now();
        advance(Duration::from_secs(1)).await;
        let mut early = RoundDeadline::new(Duration::from_secs(10), 3.0, 2);
        let hard = early.at();
        early.head_start(since);
        assert_eq!(early.at(), hard, "the timeout runs from the round's start");
        early.progress(1);
        // One second since the pulls went out: the other gets two more.
        assert_eq!(early.at(), Instant::now() + Duration::from_secs(2));
        let mut late = RoundDeadline::new(Duration::from_secs(10), 3.0, 2);
        late.head_start(Instant::now() + Duration::from_secs(5));
        advance(Duration::from_millis(100)).await;
        late.progress(1);
        assert_eq!(late.at(), Instant::now() + Duration::from_millis(200), "a later `since` changes nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn extending_waits_the_timeout_from_now() {
        let mut d = RoundDeadline::new(Duration::from_secs(10), 3.0, 2);
        advance(Duration::from_secs(10)).await;
        d.extend(Duration::from_secs(4));
        assert_eq!(d.at(), Instant::now() + Duration::from_secs(4));
    }

    #[test]
    fn factor_zero_and_single_workers_keep_the_timeout() {
        for mut d in
            [RoundDeadline::new(Duration::from_secs(10), 0.0, 4), RoundDeadline::new(Duration::from_secs(10), 3.0, 1)]
        {
            let hard = d.at();
            d.progress(4);
            assert_eq!(d.at(), hard);
        }
    }
}
