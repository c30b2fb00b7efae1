//! When a worker stops waiting for its coordinator.
//!
//! A worker that has never reached a coordinator waits for ever by default:
//! deploy recipes may start the workers before the coordinator, and a
//! coordinator may take long to load its data. A worker that has joined the
//! run and then finds no coordinator gives up after
//! [`DEFAULT_AFTER_JOINING`]: by then the run has most likely ended (and the
//! worker missed its Stop) or the coordinator is gone for good, and a worker
//! retrying for ever would keep its service, pod or job step alive.

use std::time::Duration;

/// How long a worker that has joined the run waits for a coordinator it lost
/// before it exits ("coordinator unreachable").
///
/// Ten minutes outlasts a coordinator that is restarted and continues the run
/// (`--resume-existing`): systemd restarts it within seconds (`RestartSec=`);
/// Kubernetes' restart back-off doubles from 10 s up to its cap of 5 minutes,
/// and the restarted coordinator still has to load its data and checkpoint.
/// A worker that gives up is not restarted by the deploy recipes (its exit
/// status is in `RestartPreventExitStatus=` and in the Job's pod failure
/// policy), since a fresh worker would wait for ever again.
pub const DEFAULT_AFTER_JOINING: Duration = Duration::from_secs(10 * 60);

/// `--give-up-after`: how long to keep retrying without a coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpAfter {
    /// Not given: never before the worker has joined, [`DEFAULT_AFTER_JOINING`] after.
    Default,
    /// `never`: retry for ever, before and after joining.
    Never,
    /// A duration: that long, before and after joining.
    After(Duration),
}

impl GiveUpAfter {
    /// Parses `never` or a duration such as `10m` (clap's value parser).
    /// Zero is refused: it would give up at the first failed attempt, before
    /// any retry, which no deployment wants from a worker.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "never" => Ok(GiveUpAfter::Never),
            _ => match humantime::parse_duration(text) {
                Ok(limit) if limit.is_zero() => Err(format!(
                    "{text} would give up at the first failed attempt: give a duration such as 90s or 10m, or `never`"
                )),
                Ok(limit) => Ok(GiveUpAfter::After(limit)),
                Err(e) => Err(format!("{e} (a duration such as 90s or 10m, or `never`)")),
            },
        }
    }

    /// How long a worker retries without a coordinator; `None`: for ever.
    /// `joined`: whether it has joined the run in this process.
    pub fn limit(self, joined: bool) -> Option<Duration> {
        match self {
            GiveUpAfter::Default => joined.then_some(DEFAULT_AFTER_JOINING),
            GiveUpAfter::Never => None,
            GiveUpAfter::After(limit) => Some(limit),
        }
    }

    /// `delay`, the backoff's next pause, cut short so that the next attempt
    /// comes when the limit is reached, not up to a whole pause after it.
    pub fn pause(self, joined: bool, failing_for: Duration, delay: Duration) -> Duration {
        match self.limit(joined) {
            Some(limit) => delay.min(limit.saturating_sub(failing_for)),
            None => delay,
        }
    }

    /// The limit that has been reached after failing for `failing_for`, if any.
    pub fn due(self, joined: bool, failing_for: Duration) -> Option<Duration> {
        self.limit(joined).filter(|&limit| failing_for >= limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn the_last_pause_ends_at_the_limit() {
        let s = Duration::from_secs;
        let after = GiveUpAfter::After(s(10));
        assert_eq!(after.pause(false, s(9), s(5)), s(1));
        assert_eq!(after.pause(false, s(2), s(5)), s(5));
        assert_eq!(GiveUpAfter::Default.pause(false, s(9), s(5)), s(5), "no limit before joining");
        assert_eq!(GiveUpAfter::Never.pause(true, s(9), s(5)), s(5));
    }

    #[test]
    fn by_default_only_a_worker_that_joined_gives_up_after_ten_minutes() {
        assert_eq!(DEFAULT_AFTER_JOINING, 10 * MIN);
        let default = GiveUpAfter::Default;
        assert_eq!(default.limit(false), None, "waits for a coordinator not started yet");
        assert_eq!(default.due(false, 1000 * MIN), None);
        assert_eq!(default.limit(true), Some(10 * MIN));
        assert_eq!(default.due(true, 10 * MIN - Duration::from_millis(1)), None);
        assert_eq!(default.due(true, 10 * MIN), Some(10 * MIN));
    }

    #[test]
    fn a_given_limit_holds_before_and_after_joining_and_never_disables_it() {
        let after = GiveUpAfter::parse("90s").unwrap();
        assert_eq!(after, GiveUpAfter::After(Duration::from_secs(90)));
        for joined in [false, true] {
            assert_eq!(after.due(joined, Duration::from_secs(89)), None);
            assert_eq!(after.due(joined, Duration::from_secs(90)), Some(Duration::from_secs(90)));
            assert_eq!(GiveUpAfter::parse("never").unwrap().due(joined, 10_000 * MIN), None);
        }
        let err = GiveUpAfter::parse("soon").unwrap_err();
        assert!(err.contains("never"), "{err}");
        let err = GiveUpAfter::parse("0s").unwrap_err();
        assert!(err.starts_with("0s would give up at the first failed attempt"), "{err}");
    }
}
