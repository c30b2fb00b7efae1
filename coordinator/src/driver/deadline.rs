//! When a round stops waiting for its workers. Pure: the caller passes the
//! current time in, so the rule is tested with explicit instants.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time: the driver's clock (`tokio::time::Instant`), or in
/// tests a plain `Duration` since an arbitrary origin.
pub(super) trait Moment: Copy + Ord + Add<Duration, Output = Self> + Sub<Output = Duration> {}

impl<T: Copy + Ord + Add<Duration, Output = T> + Sub<Output = Duration>> Moment for T {}

/// When a round stops waiting: at `--round-timeout` at the latest, and once
/// half the workers have sent their weights (or wait at the gate for slower
/// ones, see [`crate::gate`]), after `--straggler-factor` times
/// the time that took (but at least [`MIN_GRACE`] more). A worker that is
/// merely slow then costs the others one such wait per epoch, not one per round.
pub(super) struct RoundDeadline<T> {
    started: T,
    /// `--round-timeout` after the round's start, or after its last extension.
    timeout_at: T,
    at: T,
    factor: f64,
    quorum: usize,
    /// Whether `--straggler-factor` applies (a factor above 0, two workers or more).
    straggler_rule: bool,
    tightened: bool,
}

/// Which limit a round's deadline was when it passed: named in the warning
/// about each worker it leaves out, and in the reason of one it drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Limit {
    /// `--round-timeout` after the round's start or its last extension.
    RoundTimeout,
    /// `--straggler-factor` times the time the quorum took.
    StragglerFactor,
}

impl Limit {
    /// The flag that sets the limit.
    pub(super) fn flag(self) -> &'static str {
        match self {
            Limit::RoundTimeout => "--round-timeout",
            Limit::StragglerFactor => "--straggler-factor",
        }
    }
}

/// The least extra time stragglers get after the quorum, so that scheduling
/// noise on a busy machine does not drop healthy workers.
const MIN_GRACE: Duration = Duration::from_millis(20);

impl<T: Moment> RoundDeadline<T> {
    /// A round of `participants` that starts `now`.
    pub(super) fn new(now: T, timeout: Duration, factor: f64, participants: usize) -> Self {
        let straggler_rule = factor > 0.0 && participants >= 2;
        let (quorum, at) = (participants.div_ceil(2), now + timeout);
        RoundDeadline { started: now, timeout_at: at, at, factor, quorum, straggler_rule, tightened: false }
    }

    pub(super) fn at(&self) -> T {
        self.at
    }

    /// `--overlap`: some pulls of the round went out ahead, at `since`. The
    /// quorum's pace is measured from there, or workers that started early
    /// would make the others look slow. The hard timeout still runs from the
    /// round's start.
    pub(super) fn head_start(&mut self, since: T) {
        self.started = self.started.min(since);
    }

    /// Waits `timeout` more from `now`: at a deadline no worker had answered
    /// by, when dropping them all would leave nothing to average, or after
    /// leaving out the workers that held the others back. A straggler rule
    /// that fired stays spent: the workers the gate released need time to
    /// send what it held back, which the quorum's pace does not measure.
    pub(super) fn extend(&mut self, now: T, timeout: Duration) {
        self.timeout_at = now + timeout;
        self.at = self.timeout_at;
    }

    /// At a straggler deadline that passed with no worker done and none held
    /// at the gate (the quorum counted workers held only for a moment):
    /// waits for the round's timeout again, or for the next quorum, whichever
    /// comes first; the quorum's pace then counts the time waited so far.
    /// False at the timeout itself, which this does not move.
    pub(super) fn back_to_timeout(&mut self, now: T) -> bool {
        if !self.tightened || now >= self.timeout_at {
            return false;
        }
        self.tightened = false;
        self.at = self.timeout_at;
        true
    }

    /// The limit that a deadline reached at `now` was, and how long after
    /// the round's start (or its head start) it fell.
    pub(super) fn passed(&self, now: T) -> (Limit, Duration) {
        let limit = if self.tightened && now < self.timeout_at { Limit::StragglerFactor } else { Limit::RoundTimeout };
        (limit, now - self.started)
    }

    /// Tightens the deadline once `ready` workers (done, or waiting at the
    /// gate for slower ones) reach the quorum at `now`.
    pub(super) fn progress(&mut self, now: T, ready: usize) {
        if !self.straggler_rule || self.tightened || ready < self.quorum {
            return;
        }
        self.tightened = true;
        let grace = (now - self.started).mul_f64((self.factor - 1.0).max(0.0)).max(MIN_GRACE);
        self.at = self.at.min(now + grace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Instants are durations since the round's start (`T0`): every deadline is exact.
    const T0: Duration = Duration::ZERO;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_passed_deadline_names_its_limit() {
        let mut d = RoundDeadline::new(T0, secs(10), 3.0, 4);
        assert_eq!(d.passed(secs(10)), (Limit::RoundTimeout, secs(10)));
        d.progress(ms(100), 2);
        assert_eq!(d.passed(d.at()), (Limit::StragglerFactor, ms(300)));
        d.extend(ms(300), secs(10));
        assert_eq!(d.passed(d.at()), (Limit::RoundTimeout, ms(10_300)), "an extension is a round timeout again");
    }

    #[test]
    fn the_deadline_tightens_once_half_have_answered() {
        let mut d = RoundDeadline::new(T0, secs(10), 3.0, 4);
        let hard = d.at();
        assert_eq!(hard, T0 + secs(10));
        d.progress(ms(100), 1);
        assert_eq!(d.at(), hard, "one of four is not yet half");
        d.progress(ms(100), 2);
        // Half took 100 ms: the rest get (3 - 1) times that.
        assert_eq!(d.at(), ms(100) + ms(200));
        let tightened = d.at();
        d.progress(ms(150), 3);
        assert_eq!(d.at(), tightened, "tightened once");
    }

    #[test]
    fn a_quick_quorum_still_leaves_the_least_grace() {
        let mut d = RoundDeadline::new(T0, secs(10), 3.0, 2);
        d.progress(ms(1), 1);
        assert_eq!(d.at(), ms(1) + MIN_GRACE);
    }

    #[test]
    fn a_head_start_counts_towards_the_quorum_pace_not_the_timeout() {
        let since = T0;
        let start = secs(1);
        let mut early = RoundDeadline::new(start, secs(10), 3.0, 2);
        let hard = early.at();
        early.head_start(since);
        assert_eq!(early.at(), hard, "the timeout runs from the round's start");
        early.progress(start, 1);
        // One second since the pulls went out: the other gets two more.
        assert_eq!(early.at(), start + secs(2));
        let mut late = RoundDeadline::new(start, secs(10), 3.0, 2);
        late.head_start(start + secs(5));
        late.progress(start + ms(100), 1);
        assert_eq!(late.at(), start + ms(100) + ms(200), "a later `since` changes nothing");
    }

    #[test]
    fn extending_waits_the_timeout_from_now() {
        let mut d = RoundDeadline::new(T0, secs(10), 3.0, 2);
        d.extend(secs(10), secs(4));
        assert_eq!(d.at(), secs(14));
    }

    #[test]
    fn extending_after_the_straggler_rule_fired_leaves_it_spent() {
        let mut d = RoundDeadline::new(T0, secs(10), 3.0, 2);
        d.progress(ms(100), 1);
        d.extend(ms(300), secs(10));
        d.progress(secs(1), 1);
        assert_eq!(d.at(), ms(300) + secs(10), "the released workers get the whole timeout");
        assert!(!d.back_to_timeout(ms(300) + secs(10)), "the timeout itself stands");
    }

    #[test]
    fn a_straggler_deadline_that_found_nobody_held_goes_back_to_the_timeout() {
        let mut d = RoundDeadline::new(T0, secs(10), 3.0, 2);
        assert!(!d.back_to_timeout(ms(100)), "not tightened: nothing to go back from");
        d.progress(ms(100), 1);
        assert_eq!(d.at(), ms(300));
        assert!(d.back_to_timeout(ms(300)));
        assert_eq!(d.at(), secs(10));
        // The next quorum, later, allows for all the time since the start.
        d.progress(secs(1), 1);
        assert_eq!(d.at(), secs(3));
        assert!(d.back_to_timeout(secs(3)));
        assert!(!d.back_to_timeout(secs(10)), "the timeout itself stands");
    }

    #[test]
    fn factor_zero_and_single_workers_keep_the_timeout() {
        for mut d in [RoundDeadline::new(T0, secs(10), 0.0, 4), RoundDeadline::new(T0, secs(10), 3.0, 1)] {
            let hard = d.at();
            d.progress(ms(50), 4);
            assert_eq!(d.at(), hard);
        }
    }
}
