//! The bounds on what the service keeps for its clients: pending Joins,
//! open sessions, and how long either may wait to attach.

use std::time::Duration;

use super::Settings;
use super::defaults::within_longest_wait;
use crate::error::{Error, Result};
use crate::registry::Limits;

/// Pending Joins and open sessions allowed by default: a 20-worker run has
/// 20 of each, and as many again while all of them reconnect at once, with
/// room to spare; a larger run gets twice its `--workers`. Each session may
/// hold about one model copy queued for a worker that does not read.
const DEFAULT_MAX_CLIENTS: usize = 64;

/// The largest `--max-pending-joins` or `--max-sessions`: more is surely a
/// typo, and would no longer bound the coordinator's memory.
const MOST_CLIENTS: usize = 100_000;

/// A worker attaches within a second or two of its Join, once it holds the
/// training set (the deadline counts from the end of a download).
const DEFAULT_ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

impl Settings {
    /// The bounds on what the service keeps for a run of `workers`.
    pub(super) fn limits(&self, workers: usize) -> Result<Limits> {
        let default = DEFAULT_MAX_CLIENTS.max(workers.saturating_mul(2));
        let bounded = |value: Option<usize>, least: usize, flag: &str| match value.unwrap_or(default) {
            n if (least..=MOST_CLIENTS).contains(&n) => Ok(n),
            n => Err(Error::Config(format!("invalid {flag}: must be {least} to {MOST_CLIENTS}, got {n}"))),
        };
        let attach_timeout =
            within_longest_wait(self.attach_timeout.unwrap_or(DEFAULT_ATTACH_TIMEOUT), "--attach-timeout")?;
        if attach_timeout.is_zero() {
            return Err(Error::Config("invalid --attach-timeout: must be above 0".into()));
        }
        Ok(Limits {
            max_pending_joins: bounded(self.max_pending_joins, 1, "--max-pending-joins")?,
            // Every worker of the run holds a session.
            max_sessions: bounded(self.max_sessions, workers, "--max-sessions (at least --workers)")?,
            attach_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Launch;

    #[test]
    fn client_limits_fit_twenty_workers_and_grow_with_larger_runs() {
        let limits = |workers: usize| Settings::default().resolve(&Launch::spawning(workers)).unwrap().limits;
        let twenty = limits(20);
        assert_eq!((twenty.max_pending_joins, twenty.max_sessions), (64, 64));
        assert_eq!(twenty.attach_timeout, Duration::from_secs(60));
        assert_eq!(limits(100).max_sessions, 200);
        let chosen =
            Settings { max_sessions: Some(5), attach_timeout: Some(Duration::from_secs(2)), ..Settings::default() };
        let config = chosen.resolve(&Launch::spawning(2)).unwrap();
        assert_eq!((config.limits.max_sessions, config.limits.attach_timeout), (5, Duration::from_secs(2)));
        assert_eq!(
            config.to_settings().resolve(&Launch::default()).unwrap().limits,
            config.limits,
            "kept in config.toml"
        );
    }
}
