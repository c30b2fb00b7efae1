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
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration, seed: u64) -> Self {
        Backoff { initial, cap, attempt: 0, rng: rng::stream(seed, Purpose::Backoff), failing_since: Instant::now() }
    }

    /// The next delay: uniform in [d/2, d] where d = min(cap, initial · 2^attempt).
    pub fn next_delay(&mut self) -> Duration {
        if self.attempt == 0 {
            self.failing_since = Instant::now();
        }
        let exp = self.initial.saturating_mul(1u32 << self.attempt.min(16));
        let ceiling = exp.min(self.cap);
        self.attempt += 1;
        ceiling.mul_f64(self.rng.random_range(0.5..1.0))
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
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
}
