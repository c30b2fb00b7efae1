//! Who is far from the others: each complete contribution's update norm
//! ‖wᵢ − w̄‖ (w̄ the weights the round started from) relative to the median
//! of the round's update norms. Honest workers' updates are of one size, the
//! learning rate's; a scaled or random contribution is many times larger.
//! Pure: the round measures, the driver logs, counts and may leave out.

use std::collections::BTreeMap;

use crate::round::WorkerId;

/// The default of `--outlier-factor`: a contribution whose update norm is at
/// least this many times the median is an outlier, warned about, and left
/// out of the round by the rules that keep contributions whole. Honest
/// updates differ by well under 2× in norm; 10× leaves room for noisy ones
/// and still catches a scaled copy of the weights or random values.
pub const DEFAULT_OUTLIER_FACTOR: f64 = 10.0;

/// One contribution's update norm, and its ratio to the round's median.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateNorm {
    pub worker: WorkerId,
    pub norm: f64,
    /// `norm` over the median norm (infinite when the median is 0 and the
    /// norm is not; 1 when both are 0).
    pub ratio: f64,
    /// The ratio reached the round's outlier factor.
    pub outlier: bool,
}

/// The ratios of `norms` (worker, norm) to their median (the upper middle
/// one for an even count, so that with two workers neither is an outlier),
/// each an outlier at `factor` times the median or more (never, with an
/// infinite factor: the screen is off).
pub fn relative(norms: &[(WorkerId, f64)], factor: f64) -> Vec<UpdateNorm> {
    let mut sorted: Vec<f64> = norms.iter().map(|&(_, n)| n).collect();
    sorted.sort_unstable_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    norms
        .iter()
        .map(|&(worker, norm)| {
            let ratio = if norm == 0.0 { if median == 0.0 { 1.0 } else { 0.0 } } else { norm / median };
            UpdateNorm { worker, norm, ratio, outlier: factor.is_finite() && ratio >= factor }
        })
        .collect()
}

/// Sum of squared differences of `values` from `start`, in f64: one chunk's
/// share of a squared update norm.
pub fn squared_distance(values: &[f32], start: &[f32]) -> f64 {
    values.iter().zip(start).map(|(&v, &s)| (f64::from(v) - f64::from(s)).powi(2)).sum()
}

/// How often a worker that stays an outlier is warned about again, in rounds.
pub const WARN_EVERY: u64 = 100;

/// Rounds in a row a worker must have been left out of before it trains no
/// more of its epoch: after one, it trains the same images again, so that
/// an honest worker thrown off for a round (a learning rate on the edge of
/// stability) goes on, while a hostile one costs the others one round.
pub const RETIRE_STREAK: u64 = 2;

/// Rounds a worker must have been an outlier in, kept in the combination,
/// before a divergence is blamed on it rather than on the learning rate.
pub const BLAME_ROUNDS: u64 = 3;

/// A worker's first round as an outlier.
#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    pub worker: WorkerId,
    pub ratio: f64,
    pub epoch: u64,
    pub round: u64,
}

/// The outliers of a run's rounds so far: each worker's current streak of
/// rounds as one, the epoch of its latest round as one, and its rounds as
/// one in all since its first.
#[derive(Debug, Default)]
pub struct OutlierRecord {
    streaks: BTreeMap<WorkerId, u64>,
    latest_epoch: BTreeMap<WorkerId, u64>,
    totals: BTreeMap<WorkerId, (u64, Outlier)>,
}

impl OutlierRecord {
    /// Takes a round's update norms and the outliers it left out; returns
    /// the outliers to warn about now (the first round of a streak, then
    /// every [`WARN_EVERY`], and the first of each epoch: a worker left out
    /// and retired in every epoch is in one streak, warned about each time),
    /// with their streaks. Only outliers kept in the combination count
    /// towards blame: one left out cannot have harmed it.
    pub fn round(
        &mut self,
        epoch: u64,
        round: u64,
        updates: &[UpdateNorm],
        dropped: &[WorkerId],
    ) -> Vec<(UpdateNorm, u64)> {
        let mut due = Vec::new();
        for update in updates {
            if !update.outlier {
                self.streaks.remove(&update.worker);
                continue;
            }
            let streak = self.streaks.entry(update.worker).or_default();
            *streak += 1;
            let previous_epoch = self.latest_epoch.insert(update.worker, epoch);
            if *streak % WARN_EVERY == 1 || previous_epoch != Some(epoch) {
                due.push((*update, *streak));
            }
            if !dropped.contains(&update.worker) {
                let first = Outlier { worker: update.worker, ratio: update.ratio, epoch, round };
                self.totals.entry(update.worker).or_insert((0, first)).0 += 1;
            }
        }
        due
    }

    /// The rounds in a row `worker` has been an outlier in, up to the last.
    pub fn streak(&self, worker: WorkerId) -> u64 {
        self.streaks.get(&worker).copied().unwrap_or(0)
    }

    /// The likely cause of a divergence: the worker that was an outlier,
    /// kept in, in the most rounds (the earliest of those tied), if at least
    /// [`BLAME_ROUNDS`], and its first such round. Once a hostile worker has
    /// blown the average up, honest workers' updates from it can be outliers
    /// too, but in fewer rounds; and as a too-high learning rate blows up,
    /// honest workers cross the cut one after another for a round or two
    /// before the weights stop being finite, which must not be blamed on them.
    pub fn likely_cause(&self) -> Option<&Outlier> {
        let most =
            self.totals.values().max_by(|(a, x), (b, y)| a.cmp(b).then((y.epoch, y.round).cmp(&(x.epoch, x.round))));
        most.filter(|(rounds, _)| *rounds >= BLAME_ROUNDS).map(|(_, first)| first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_contribution_is_an_outlier_and_honest_ones_are_not() {
        let norms = relative(&[(1, 1.0), (2, 1.2), (3, 0.9), (4, 1.1), (5, 99.0)], 10.0);
        let outliers: Vec<WorkerId> = norms.iter().filter(|n| n.outlier).map(|n| n.worker).collect();
        assert_eq!(outliers, [5]);
        assert!((norms[4].ratio - 90.0).abs() < 1e-9, "{:?}", norms[4]);
    }

    #[test]
    fn two_workers_are_never_outliers_and_zero_updates_are_not_either() {
        assert!(relative(&[(1, 1.0), (2, 1e9)], 10.0).iter().all(|n| !n.outlier));
        assert!(relative(&[(1, 0.0), (2, 0.0), (3, 0.0)], 10.0).iter().all(|n| n.ratio == 1.0));
        let moved = relative(&[(1, 0.0), (2, 0.0), (3, 2.0)], 10.0);
        assert!(moved[2].outlier && moved[2].ratio.is_infinite());
    }

    #[test]
    fn a_streak_is_warned_about_at_its_start_and_then_every_hundred_rounds() {
        let mut record = OutlierRecord::default();
        let honest = relative(&[(1, 1.0), (2, 1.0), (3, 1.0)], 10.0);
        let attacked = relative(&[(1, 1.0), (2, 1.0), (3, 50.0)], 10.0);
        assert!(record.round(1, 0, &honest, &[]).is_empty() && record.likely_cause().is_none());
        let warned: Vec<u64> = (1..=201).filter(|&r| !record.round(1, r, &attacked, &[]).is_empty()).collect();
        assert_eq!(warned, [1, 101, 201]);
        assert_eq!(record.round(2, 0, &attacked, &[])[0].1, 202, "warned again in a new epoch");
        assert!(record.round(2, 1, &attacked, &[]).is_empty());
        record.round(2, 2, &honest, &[]);
        assert_eq!(record.round(2, 3, &attacked, &[])[0].1, 1, "a new streak after an honest round");
    }

    #[test]
    fn the_likely_cause_is_the_worker_most_often_an_outlier() {
        let mut record = OutlierRecord::default();
        assert!(record.likely_cause().is_none());
        for round in 1..=5 {
            record.round(1, round, &relative(&[(1, 1.0), (2, 1.0), (3, 50.0)], 10.0), &[]);
        }
        // Blown up by worker 3, the others' updates are huge too at the end.
        record.round(1, 6, &relative(&[(1, 1e9), (2, 1.0), (3, 1.0)], 10.0), &[]);
        assert_eq!(record.likely_cause(), Some(&Outlier { worker: 3, ratio: 50.0, epoch: 1, round: 1 }));
    }

    /// A learning rate too high makes honest workers cross the cut for a
    /// round or two before the run diverges: not enough to blame one. Nor
    /// is a worker whose outlying contributions were left out.
    #[test]
    fn a_brief_or_left_out_outlier_is_not_blamed() {
        let mut record = OutlierRecord::default();
        for round in 1..BLAME_ROUNDS {
            record.round(1, round, &relative(&[(1, 1.0), (2, 1.0), (3, 1.0), (4, 50.0)], 10.0), &[]);
        }
        assert!(record.likely_cause().is_none(), "{} rounds", BLAME_ROUNDS - 1);
        for round in BLAME_ROUNDS..BLAME_ROUNDS + 10 {
            record.round(1, round, &relative(&[(1, 1.0), (2, 1.0), (3, 50.0), (4, 1.0)], 10.0), &[3]);
        }
        assert!(record.likely_cause().is_none(), "worker 3 was always left out");
    }

    #[test]
    fn squared_distance_is_over_the_pairs() {
        assert_eq!(squared_distance(&[1.0, 2.0], &[0.0, 4.0]), 5.0);
    }
}
