//! Who is far from the others: each complete contribution's update norm
//! ‖wᵢ − w̄‖ (w̄ the weights the round started from) relative to the median
//! of the round's update norms. Honest workers' updates are of one size, the
//! learning rate's; a scaled or random contribution is many times larger.
//! Pure: the round measures, the driver logs, counts and may leave out.

use std::collections::{BTreeMap, BTreeSet};

use lazyavg_proto::chunks::Values;
use multiversion::multiversion;

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
/// share of a squared update norm, read straight from the chunk's bytes
/// (as many as `start` holds), which are copied into `copy` in the same
/// pass. From a finite start it is finite exactly when every value is (no
/// square of a difference of two finite f32 overflows f64), which makes it
/// the round's finiteness check too.
///
/// The copy is what the round checks and sums: a chunk in a shared-memory
/// lane's slot can change under its reader (`lazyavg_proto::lane`), its
/// copy cannot, and each byte is read from the slot once, into the copy,
/// and measured there. Taken in the same pass, the
/// copy costs little more than the measure alone (its destination is
/// reused chunk after chunk and stays in cache), where a separate copy out
/// of the slot cost a pass over the chunk of its own.
///
/// Summed in [`LANES`] partial sums, which the compiler keeps in vector
/// registers: one running sum is a chain of dependent additions that
/// cannot be vectorised, and cost more than the average itself
/// (docs/performance.md, "Where a round's time and memory go"). Compiled
/// again for AVX2, chosen at run time, with the same arithmetic in every
/// version (docs/performance.md, "Ninth cut").
#[multiversion(targets("x86_64+avx2"))]
pub fn copy_measuring(values: Values<'_>, start: &[f32], copy: &mut [u8]) -> f64 {
    debug_assert_eq!(values.len(), start.len(), "a chunk's values and their start");
    debug_assert_eq!(copy.len(), 4 * start.len(), "a chunk's copy and its start");
    let bytes = values.as_bytes();
    let (s_lanes, s_tail) = start.as_chunks::<LANES>();
    let whole = s_lanes.len() * BLOCK_BYTES;
    let (from, from_tail) = bytes.split_at(whole);
    let (to, to_tail) = copy.split_at_mut(whole);
    let mut sums = [0.0f64; LANES];
    // A block at a time: its bytes copied whole (vector loads and stores),
    // then measured from the copy while it is in L1. The copy goes through
    // `black_box`, so that the compiler cannot measure values it reads
    // from the slot again in place of the copy's: what is measured is
    // what is summed.
    for ((from, to), s) in
        from.as_chunks::<BLOCK_BYTES>().0.iter().zip(to.as_chunks_mut::<BLOCK_BYTES>().0).zip(s_lanes)
    {
        *to = *from;
        let to = std::hint::black_box(to);
        for (lane, v) in to.as_chunks::<4>().0.iter().enumerate() {
            let d = f64::from(f32::from_le_bytes(*v)) - f64::from(s[lane]);
            sums[lane] += d * d;
        }
    }
    to_tail.copy_from_slice(from_tail);
    let to_tail = std::hint::black_box(to_tail);
    let tail: f64 = Values::new(to_tail).iter().zip(s_tail).map(|(v, &s)| (f64::from(v) - f64::from(s)).powi(2)).sum();
    sums.iter().sum::<f64>() + tail
}

/// The bytes of one block of [`LANES`] values.
const BLOCK_BYTES: usize = 4 * LANES;

/// [`copy_measuring`] without the copy, for tests.
#[cfg(test)]
pub fn squared_distance(values: Values<'_>, start: &[f32]) -> f64 {
    copy_measuring(values, start, &mut vec![0; 4 * start.len()])
}

/// Partial sums of [`copy_measuring`]: two AVX-512 registers of f64.
const LANES: usize = 16;

/// How often a worker that stays an outlier is warned about again, in rounds.
pub const WARN_EVERY: u64 = 100;

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

/// A worker's record as an outlier kept in the combination.
#[derive(Debug, Clone, PartialEq)]
struct KeptIn {
    rounds: u64,
    first: Outlier,
    /// It was one in its first round as a contributor.
    from_its_first_round: bool,
}

/// The outliers of a run's rounds so far: each worker's current streak of
/// rounds as one, the epoch of its latest round as one, and its rounds as
/// one kept in since its first.
#[derive(Debug, Default)]
pub struct OutlierRecord {
    /// Workers that have contributed to a round.
    contributors: BTreeSet<WorkerId>,
    streaks: BTreeMap<WorkerId, u64>,
    latest_epoch: BTreeMap<WorkerId, u64>,
    kept_in: BTreeMap<WorkerId, KeptIn>,
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
            let first_round = self.contributors.insert(update.worker);
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
                let record = self.kept_in.entry(update.worker).or_insert(KeptIn {
                    rounds: 0,
                    first,
                    from_its_first_round: first_round,
                });
                record.rounds += 1;
            }
        }
        due
    }

    /// The likely cause of a divergence: of the workers that were outliers
    /// kept in, either from their first round as contributors or in at least
    /// [`BLAME_ROUNDS`] rounds, the one in the most rounds (the earliest of
    /// those tied), and its first such round.
    ///
    /// A hostile worker attacks from its first round, and once it has blown
    /// the average up, honest workers' updates from it can be outliers too,
    /// but never from their first round. As a too-high learning rate blows
    /// up, honest workers cross the cut one after another for a round or two
    /// (never in their first round: they all start alike) before the weights
    /// stop being finite, which must not be blamed on them.
    pub fn likely_cause(&self) -> Option<&Outlier> {
        self.kept_in
            .values()
            .filter(|k| k.from_its_first_round || k.rounds >= BLAME_ROUNDS)
            .max_by(|x, y| {
                x.rounds.cmp(&y.rounds).then((y.first.epoch, y.first.round).cmp(&(x.first.epoch, x.first.round)))
            })
            .map(|k| &k.first)
    }
}

#[cfg(test)]
mod tests {
    use lazyavg_proto::chunks::encode_values;

    use super::*;

    fn distance(values: &[f32], start: &[f32]) -> f64 {
        squared_distance(Values::new(&encode_values(values)), start)
    }

    #[test]
    fn the_squared_distance_in_lanes_is_the_plain_sum_up_to_rounding() {
        for len in [0, 1, 15, 16, 17, 1000, 4099] {
            let values: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let start: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f64 = values.iter().zip(&start).map(|(&v, &s)| (f64::from(v) - f64::from(s)).powi(2)).sum();
            let lanes = distance(&values, &start);
            assert!((lanes - plain).abs() <= 1e-12 * plain.max(1.0), "{len}: {lanes} vs {plain}");
        }
    }

    #[test]
    fn the_copy_is_the_chunk_bit_for_bit_whatever_its_length_and_values() {
        for len in [0usize, 1, 15, 16, 17, 1000, 4099] {
            let mut values: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            for (at, odd) in [(0, f32::from_bits(0x7fc0_1234)), (len / 2, -0.0), (len.saturating_sub(1), f32::INFINITY)]
            {
                if let Some(v) = values.get_mut(at) {
                    *v = odd;
                }
            }
            let bytes = encode_values(&values);
            let mut copy = vec![0xa5; bytes.len()];
            copy_measuring(Values::new(&bytes), &vec![0.0; len], &mut copy);
            assert_eq!(copy, bytes, "{len} values");
        }
    }

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
        record.round(1, 0, &relative(&[(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0)], 10.0), &[]);
        for round in 1..BLAME_ROUNDS {
            record.round(1, round, &relative(&[(1, 1.0), (2, 1.0), (3, 1.0), (4, 50.0)], 10.0), &[]);
        }
        assert!(record.likely_cause().is_none(), "{} rounds", BLAME_ROUNDS - 1);
        for round in BLAME_ROUNDS..BLAME_ROUNDS + 10 {
            record.round(1, round, &relative(&[(1, 1.0), (2, 1.0), (3, 50.0), (4, 1.0)], 10.0), &[3]);
        }
        assert!(record.likely_cause().is_none(), "worker 3 was always left out");
    }

    /// A hostile worker blows the mean up in its first round; honest ones,
    /// training from the blown-up average, are outliers in the next.
    #[test]
    fn an_outlier_from_its_first_round_is_blamed_at_once() {
        let mut record = OutlierRecord::default();
        record.round(1, 1, &relative(&[(1, 1.0), (2, 1.0), (3, 800.0)], 10.0), &[]);
        record.round(1, 2, &relative(&[(1, 2000.0), (2, 1.0), (3, 1.0)], 10.0), &[]);
        assert_eq!(record.likely_cause(), Some(&Outlier { worker: 3, ratio: 800.0, epoch: 1, round: 1 }));
        let mut late = OutlierRecord::default();
        late.round(1, 1, &relative(&[(1, 1.0), (2, 1.0), (3, 1.0)], 10.0), &[]);
        late.round(1, 2, &relative(&[(1, 1.0), (2, 1.0), (3, 800.0), (4, 1.0)], 10.0), &[]);
        assert_eq!(late.likely_cause().map(|o| o.worker), None, "worker 3 started like the others");
        late.round(1, 3, &relative(&[(1, 1.0), (2, 1.0), (3, 1.0), (5, 900.0)], 10.0), &[]);
        assert_eq!(late.likely_cause().map(|o| o.worker), Some(5), "a worker that joined attacking");
    }

    #[test]
    fn squared_distance_is_over_the_pairs() {
        assert_eq!(distance(&[1.0, 2.0], &[0.0, 4.0]), 5.0);
    }

    #[test]
    fn the_squared_distance_is_finite_exactly_when_every_value_is() {
        let extreme = [f32::MAX, -f32::MAX, f32::MIN_POSITIVE];
        assert!(distance(&[f32::MAX; 40], &[-f32::MAX; 40]).is_finite());
        assert!(distance(&extreme, &[-f32::MAX, f32::MAX, 0.0]).is_finite());
        for (i, bad) in [(0, f32::NAN), (17, f32::INFINITY), (39, f32::NEG_INFINITY)] {
            let mut values = [1.0f32; 40];
            values[i] = bad;
            assert!(!distance(&values, &[0.0; 40]).is_finite(), "{bad} at {i}");
        }
    }
}
