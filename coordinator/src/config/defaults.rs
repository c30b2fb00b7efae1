//! The settings' defaults and bounds, each with the reason for its number.

use std::time::Duration;

use lazyavg_common::outer::OuterRule;

use crate::error::{Error, Result};

/// Port the coordinator listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7070;

/// A round normally takes milliseconds; a worker silent for this long is
/// hung, stopped or cut off, and the others should not wait for it.
pub(super) const DEFAULT_ROUND_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_METRICS_LINGER: Duration = Duration::from_secs(15);
/// Three of a worker's longest reconnection pauses (5 s): a worker cut off
/// near the end is back within it, and a run whose worker died for good
/// ends only 15 s late (one whose workers all read the Stop, at once).
pub(super) const DEFAULT_END_GRACE: Duration = Duration::from_secs(15);

/// Off by default: a cut-off relative to the other workers can drop a healthy
/// worker that the OS merely descheduled, which changes a seeded run's numbers.
pub(super) const DEFAULT_STRAGGLER_FACTOR: f64 = 0.0;
/// The smallest `--outlier-factor`: honest updates of one round differ by up
/// to about 2× in norm, so a lower cut would leave honest workers out.
pub(super) const MIN_OUTLIER_FACTOR: f64 = 2.0;

/// Outer step settings for `--outer-optimizer sgd|nesterov`. DiLoCo's lr 0.7
/// and momentum 0.9 assume hundreds of local steps per round; at K = 16 with
/// local momentum 0.9, outer momentum 0.9 diverged with 2 workers, 0.5 did
/// not. Over 3 seeds (docs/tuning.md), lr 0.9 beat 0.7 at 8 and 16 workers and 1.1
/// at 16 (at 8, 1.1 ended higher but reached 98% an epoch later), and
/// momentum 0.5 beat 0.6 and 0.7.
pub(super) const DEFAULT_OUTER_LR: f32 = 0.9;
pub(super) const DEFAULT_OUTER_MOMENTUM: f32 = 0.5;

/// From this many workers on, the default outer step is Nesterov rather than
/// the plain average. Measured over 3 seeds at K = 16 (docs/tuning.md): with 8
/// workers it reaches 98% an epoch sooner (5 vs 6) and ends higher (98.31% vs
/// 98.15%); with 1 to 4 it is no better and a little worse alone.
const NESTEROV_FROM_WORKERS: usize = 8;

/// The outer step a cluster of `workers` gets unless told otherwise.
pub(super) fn default_outer_rule(workers: usize) -> OuterRule {
    if workers >= NESTEROV_FROM_WORKERS { OuterRule::Nesterov } else { OuterRule::Avg }
}

/// The most minibatches a round covers across the whole cluster: the default
/// sync interval is `--sync-every 16` until N workers would exceed this
/// (N > 8), then `MINIBATCHES_PER_ROUND / N`. Each round is one step of the
/// outer optimiser, and a larger cluster at a fixed K takes fewer of them per
/// epoch (MNIST at batch 32: 14.6 rounds an epoch with 8 workers, 5.9 with 20).
/// Measured over 5 seeds (docs/tuning.md): at 20 workers K = 16 reached 98% on only 3
/// of 5 and ended at 97.99%, K = 6 on all by epoch 7, ending at 98.17%, in
/// about the same time; at 16 workers K = 8 ends at 98.23% against 98.17%;
/// up to 12 the interval makes no difference beyond the seeds' spread. K = 4
/// ends a little higher still but moves twice the bytes and took longer.
const MINIBATCHES_PER_ROUND: usize = 128;
const DEFAULT_SYNC_EVERY: usize = 16;

/// The sync interval a cluster of `workers` gets unless told otherwise.
pub(super) fn default_sync_every(workers: usize) -> usize {
    (MINIBATCHES_PER_ROUND / workers.max(1)).clamp(1, DEFAULT_SYNC_EVERY)
}

/// `--align activations` compares units on this many training images: enough
/// for stable correlations of a few hundred units, a few ms of forward passes.
pub(super) const DEFAULT_ALIGN_IMAGES: usize = 1000;

/// Local workers `--spawn-workers` may start: each is a process holding the
/// whole training set, so more is a typo, not a cluster.
pub(super) const MAX_SPAWN_WORKERS: usize = 256;

/// How long a run may stay paused for lack of workers before it gives up.
pub(super) const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(300);

/// The longest `--round-timeout` or `--max-wait`: more is surely a typo, and
/// deadlines computed from it must not overflow the clock.
const LONGEST_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);

/// The largest `--straggler-factor`: a grace of 1000× the quorum's time is
/// already no cut-off at all.
pub(super) const MAX_STRAGGLER_FACTOR: f64 = 1000.0;

/// `wait`, unless it is longer than [`LONGEST_WAIT`].
pub(super) fn within_longest_wait(wait: Duration, flag: &str) -> Result<Duration> {
    if wait > LONGEST_WAIT {
        let longest = humantime::format_duration(LONGEST_WAIT);
        return Err(Error::Config(format!(
            "invalid {flag}: must be at most {longest}, got {}",
            humantime::format_duration(wait)
        )));
    }
    Ok(wait)
}
