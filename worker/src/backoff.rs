//! Capped, jittered exponential backoff between reconnection attempts, so a
//! fleet of workers that lost their coordinator does not reconnect in lockstep.

use std::time::Duration;

use lazyavg_common::rng::{self, Purpose, StreamRng};
use rand::RngExt;
// tokio's clock, not std's: tests pause it and step it exactly.
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    attempt: u32,
    rng: StreamRng,
    /// When the current run of failures began.
    failing_since: Instant,
    /// When the attempt in progress began, while the coordinator has not
    /// answered it: a run of failures begins there (a connection that
    /// timed out after 5 s has been failing for 5 s), not when it is seen.
    attempt_started: Option<Instant>,
    /// The coordinator answered since the last failure: the next failure
    /// starts a new run of failures, though the delays go on growing.
    answered: bool,
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration, seed: u64) -> Self {
        let rng = rng::stream(seed, Purpose::Backoff);
        Backoff { initial, cap, attempt: 0, rng, failing_since: Instant::now(), attempt_started: None, answered: false }
    }

    /// The next delay: uniform in [d/2, d] where d = min(cap, initial · 2^attempt).
    pub fn next_delay(&mut self) -> Duration {
        if self.attempt == 0 || std::mem::take(&mut self.answered) {
            self.failing_since = self.attempt_started.unwrap_or_else(Instant::now);
        }
        let exp = self.initial.saturating_mul(1u32 << self.attempt.min(16));
        let ceiling = exp.min(self.cap);
        self.attempt += 1;
        ceiling.mul_f64(self.rng.random_range(0.5..1.0))
    }

    /// An attempt to reach the coordinator begins.
    pub fn attempt_starts(&mut self) {
        self.attempt_started = Some(Instant::now());
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.attempt_started = None;
    }

    /// The coordinator answered (Join), though the attempt may still fail
    /// (its session refused): a worker that waited long for its coordinator
    /// must not give up at the first failure after reaching it. The delays
    /// are kept, so a coordinator that keeps refusing is not asked in a loop.
    pub fn answered(&mut self) {
        self.answered = true;
        self.attempt_started = None;
    }

    /// How long the current run of failures has lasted: since the first
    /// failure after the last success (or after the start, before any).
    pub fn failing_for(&self) -> Duration {
        self.failing_since.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 7);
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[9] >= Duration::from_secs(1));
        let distinct: std::collections::BTreeSet<_> = delays[6..].iter().collect();
        assert!(distinct.len() > 1, "jittered: {delays:?}");
        tokio::time::advance(Duration::from_millis(30)).await;
        assert_eq!(b.failing_for(), Duration::from_millis(30), "failing since the first delay");
        b.reset();
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(b.failing_for(), Duration::from_millis(50), "a success alone does not restart the clock");
        assert!(b.next_delay() <= Duration::from_millis(100));
        assert_eq!(b.failing_for(), Duration::ZERO, "a new run of failures starts its clock");
        tokio::time::advance(Duration::from_millis(7)).await;
        assert_eq!(b.failing_for(), Duration::from_millis(7));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_restarts_the_clock_but_not_the_delays() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60), 7);
        for _ in 0..5 {
            b.next_delay();
        }
        tokio::time::advance(Duration::from_secs(600)).await;
        b.answered();
        assert!(b.next_delay() >= Duration::from_millis(1600), "the delays go on growing");
        assert_eq!(b.failing_for(), Duration::ZERO, "failing since the failure after the answer");
        tokio::time::advance(Duration::from_secs(3)).await;
        b.next_delay();
        assert_eq!(b.failing_for(), Duration::from_secs(3), "one answer restarts the clock once");
    }

    #[tokio::test(start_paused = true)]
    async fn failing_begins_when_the_failed_attempt_began() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 7);
        tokio::time::advance(Duration::from_secs(60)).await;
        b.attempt_starts();
        // A connection that times out after 5 s.
        tokio::time::advance(Duration::from_secs(5)).await;
        b.next_delay();
        assert_eq!(b.failing_for(), Duration::from_secs(5));
        // After a session, a failure begins when it is seen.
        b.attempt_starts();
        b.reset();
        tokio::time::advance(Duration::from_secs(30)).await;
        b.next_delay();
        assert_eq!(b.failing_for(), Duration::ZERO);
    }
}
