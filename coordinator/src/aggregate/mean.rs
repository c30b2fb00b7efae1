//! The sample-weighted mean, Σ samples_i · w_i / Σ samples_i, in ONE running
//! f64 sum added into as values arrive. Accumulating in f64 makes the result
//! independent of arrival order in practice (and exactly so for two workers,
//! since addition is commutative), which keeps seeded runs reproducible.
//!
//! The sum covers only the positions some but not all workers have sent:
//! once every worker still in the round has sent a position, the round
//! settles it and hands its mean on, to step the model there at once (no
//! buffer holds the whole average). Workers send in order, so that is a
//! window between the slowest and the fastest, in blocks of one wire chunk,
//! kept for reuse. At 20M parameters a sum of the whole model was 160 MB,
//! twice the model, on top of the average.

use std::collections::VecDeque;
use std::ops::Range;

use lazyavg_proto::chunks::{VALUES_PER_CHUNK, Values};
use multiversion::multiversion;

use super::{Aggregator, Settled, UpdateRule};
use crate::gate::AHEAD;
use crate::round::WorkerId;

/// Positions per block of the running sum: one wire chunk's, so a chunk
/// from a worker's encoder falls in one block.
const BLOCK: usize = VALUES_PER_CHUNK;

/// The blocks kept for reuse beyond what the last round needed: what a
/// paced round needs (the gate's [`AHEAD`] and a chunk either side). A round
/// that needed more keeps its blocks for the next (so `--overlap`, whose
/// pulls ahead arrive unpaced, does not allocate them every round), and
/// the round after a smaller one gives the rest back (so one spoiled round
/// does not keep a sum of the whole model for good).
const SPARE_BLOCKS: usize = AHEAD / BLOCK + 2;

#[derive(Debug, Default)]
pub struct WeightedMean {
    /// The running sums of positions `first..` block by block, as far as
    /// any worker has sent.
    window: VecDeque<Block>,
    /// The first position of `window[0]`, a multiple of [`BLOCK`].
    first: usize,
    /// Positions below this are in the average.
    settled: usize,
    /// Blocks let go by settling, emptied again when taken.
    spare: Vec<Block>,
    /// The most blocks the window held this round.
    peak: usize,
    /// One block of means on their way out.
    means: Vec<f32>,
}

/// The running sums of one block of positions. Only its first `filled`
/// hold sums: the first worker to reach a position writes its term there
/// instead of adding it to a zero written first (which cost a pass over
/// every block, every round).
#[derive(Debug)]
struct Block {
    sums: Box<[f64]>,
    filled: usize,
}

impl Block {
    /// Adds `weight · values` at `from..from + values.len()`.
    fn add(&mut self, from: usize, weight: f64, values: Values<'_>) {
        let to = from + values.len();
        self.fill_to(from);
        let summed = to.min(self.filled);
        accumulate(&mut self.sums[from..summed], weight, values.get(0..summed - from));
        start_sums(&mut self.sums[summed..to], weight, values.get(summed - from..to - from));
        self.filled = self.filled.max(to);
    }

    /// The sums at `range`.
    fn sums(&mut self, range: Range<usize>) -> &[f64] {
        self.fill_to(range.end);
        &self.sums[range]
    }

    /// Sums of nothing up to `upto`, where no worker has sent (workers
    /// send in order and a round settles only what all have, so this is
    /// no work but for a peer that broke the order).
    fn fill_to(&mut self, upto: usize) {
        if upto > self.filled {
            self.sums[self.filled..upto].fill(0.0);
            self.filled = upto;
        }
    }
}

impl WeightedMean {
    /// The running sums of block `index` (counted from position 0), opened
    /// empty if no worker had reached it.
    fn block(&mut self, index: usize) -> &mut Block {
        let at = index - self.first / BLOCK;
        while self.window.len() <= at {
            let block = match self.spare.pop() {
                Some(block) => Block { filled: 0, ..block },
                None => Block { sums: vec![0.0; BLOCK].into_boxed_slice(), filled: 0 },
            };
            self.window.push_back(block);
        }
        self.peak = self.peak.max(self.window.len());
        &mut self.window[at]
    }

    /// Hands the mean of positions `self.settled..upto`, over `samples` in
    /// all, to `out` a block at a time (none when `samples` is 0: nobody
    /// sent them), and lets go of the blocks wholly below `upto`.
    fn write_out(&mut self, upto: usize, samples: u64, out: &mut Settled<'_>) {
        let scale = 1.0 / samples as f64;
        while self.settled < upto {
            let (index, from) = (self.settled / BLOCK, self.settled % BLOCK);
            let to = (upto - index * BLOCK).min(BLOCK);
            let first = self.settled;
            self.settled = index * BLOCK + to;
            if samples == 0 {
                continue;
            }
            let mut means = std::mem::take(&mut self.means);
            means.resize(to - from, 0.0);
            scale_into(&mut means, self.block(index).sums(from..to), scale);
            out(first, &means);
            self.means = means;
        }
        while self.first + BLOCK <= self.settled {
            let Some(block) = self.window.pop_front() else { break };
            self.spare.push(block);
            self.first += BLOCK;
        }
    }
}

/// `sums[i] += weight · values[i]`. This and [`scale_into`] are compiled
/// again for AVX2 and chosen at run time (a third of the coordinator's
/// share of a round was these loops and the update norm in SSE2); the
/// arithmetic is the same in every version, so is the average.
#[multiversion(targets("x86_64+avx2"))]
fn accumulate(sums: &mut [f64], weight: f64, values: Values<'_>) {
    for (acc, v) in sums.iter_mut().zip(values.iter()) {
        *acc += weight * f64::from(v);
    }
}

/// `sums[i] = 0 + weight · values[i]`: a position's first term. Adding it
/// to zero keeps the sums bit for bit what they were when every block was
/// zeroed first (a −0.0 term makes +0.0).
#[multiversion(targets("x86_64+avx2"))]
fn start_sums(sums: &mut [f64], weight: f64, values: Values<'_>) {
    for (sum, v) in sums.iter_mut().zip(values.iter()) {
        *sum = 0.0 + weight * f64::from(v);
    }
}

/// `means[i] = sums[i] · scale`, rounded to f32.
#[multiversion(targets("x86_64+avx2"))]
fn scale_into(means: &mut [f32], sums: &[f64], scale: f64) {
    for (mean, &sum) in means.iter_mut().zip(sums) {
        *mean = (sum * scale) as f32;
    }
}

impl Aggregator for WeightedMean {
    fn reset(&mut self, _start: &[f32]) {
        self.spare.extend(self.window.drain(..));
        self.spare.truncate(SPARE_BLOCKS.max(std::mem::take(&mut self.peak)));
        self.first = 0;
        self.settled = 0;
    }

    fn add(
        &mut self,
        _worker: WorkerId,
        samples: u64,
        range: Range<usize>,
        values: Values<'_>,
        _start: &[f32],
        _squared: f64,
    ) {
        debug_assert!(range.start >= self.settled, "a settled position came again");
        let weight = samples as f64;
        let mut at = range.start;
        while at < range.end {
            let (index, from) = (at / BLOCK, at % BLOCK);
            let to = (range.end - index * BLOCK).min(BLOCK);
            let part = values.get(at - range.start..index * BLOCK + to - range.start);
            self.block(index).add(from, weight, part);
            at = index * BLOCK + to;
        }
    }

    fn settles(&self) -> bool {
        true
    }

    fn settle(&mut self, upto: usize, samples: u64, out: &mut Settled<'_>) {
        if upto > self.settled {
            self.write_out(upto, samples, out);
        }
    }

    /// A sum cannot give back a contribution.
    fn forget(&mut self, _worker: WorkerId) -> bool {
        false
    }

    /// The mean of the weights themselves, not of updates: bit for bit what
    /// it has always been. The positions not settled yet are written now.
    fn finish(&mut self, start: &[f32], contributors: &[(WorkerId, u64)], out: &mut [f32]) {
        let samples: u64 = contributors.iter().map(|&(_, s)| s).sum();
        self.write_out(start.len(), samples, &mut |at, means| out[at..at + means.len()].copy_from_slice(means));
    }
}

/// The sample-weighted mean of whole updates: the mean for a round that may
/// leave an outlier out once every contribution is in (`--drop-outliers`),
/// which a running sum cannot. It costs what the robust rules cost, a copy of
/// every contribution, and equals the running mean up to rounding.
#[derive(Debug, Clone, Copy)]
pub struct UpdateMean;

impl UpdateRule for UpdateMean {
    fn combine(&self, updates: &[&[f32]], samples: &[u64], out: &mut [f32]) {
        let scale = 1.0 / samples.iter().sum::<u64>() as f64;
        for (i, o) in out.iter_mut().enumerate() {
            let sum: f64 = updates.iter().zip(samples).map(|(u, &s)| s as f64 * f64::from(u[i])).sum();
            *o = (sum * scale) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazyavg_proto::chunks::{encode_values as le, weight_chunks};

    #[test]
    fn the_update_mean_weighs_by_samples() {
        let mut out = [0.0; 2];
        UpdateMean.combine(&[&[1.0, -1.0], &[5.0, 3.0]], &[3, 1], &mut out);
        assert_eq!(out, [2.0, 0.0]);
    }

    #[test]
    fn chunks_in_any_order_give_the_weighted_mean_and_a_reset_clears_it() {
        let mut mean = WeightedMean::default();
        mean.reset(&[0.0; 5]);
        mean.add(1, 1, 0..5, Values::new(&le(&[7.0; 5])), &[0.0; 5], 0.0);
        mean.reset(&[0.0; 3]);
        mean.add(2, 1, 1..3, Values::new(&le(&[4.0, 8.0])), &[0.0; 2], 0.0);
        mean.add(1, 3, 0..3, Values::new(&le(&[1.0, 2.0, 4.0])), &[0.0; 3], 0.0);
        mean.add(2, 1, 0..1, Values::new(&le(&[5.0])), &[0.0], 0.0);
        let mut out = [0.0; 3];
        mean.finish(&[0.0; 3], &[(1, 3), (2, 1)], &mut out);
        assert_eq!(out, [2.0, 2.5, 5.0]);
        assert!(!mean.forget(1), "a running sum cannot give a contribution back");
        mean.reset(&[0.0; 2]);
        mean.add(1, 2, 0..2, Values::new(&le(&[1.0, -1.0])), &[0.0; 2], 0.0);
        let mut out = [0.0; 2];
        mean.finish(&[0.0; 2], &[(1, 2)], &mut out);
        assert_eq!(out, [1.0, -1.0]);
        // A position's first term is added to zero, as when every block was
        // zeroed first: −0.0 from everyone averages to +0.0, bit for bit.
        mean.reset(&[0.0]);
        mean.add(1, 1, 0..1, Values::new(&le(&[-0.0])), &[0.0], 0.0);
        let mut out = [f32::NAN];
        mean.finish(&[0.0], &[(1, 1)], &mut out);
        assert_eq!(out[0].to_bits(), 0.0f32.to_bits());
    }

    #[test]
    fn settling_as_workers_go_keeps_a_window_and_gives_the_same_mean() {
        let len = 3 * BLOCK + 5;
        let a: Vec<f32> = (0..len).map(|i| (i % 97) as f32 * 0.3 - 1.0).collect();
        let b: Vec<f32> = (0..len).map(|i| (i % 89) as f32 * -0.7 + 2.0).collect();
        let start = vec![0.0; len];
        let (from_a, from_b): (Vec<_>, Vec<_>) = (weight_chunks(0, 0, &a).collect(), weight_chunks(0, 0, &b).collect());
        let range = |c: &lazyavg_proto::chunks::Chunk| c.offset as usize..c.offset as usize + c.data.len() / 4;

        // Worker 1 runs a chunk ahead of worker 2; the round settles what both sent.
        let mut streamed = WeightedMean::default();
        let mut out = vec![f32::NAN; len];
        for round in 0..2 {
            streamed.reset(&start);
            for (ca, cb) in from_a.iter().zip(&from_b) {
                streamed.add(1, 3, range(ca), Values::new(&ca.data), &start, 0.0);
                assert!(streamed.window.len() <= 1, "only what worker 2 has not sent: {}", streamed.window.len());
                streamed.add(2, 1, range(cb), Values::new(&cb.data), &start, 0.0);
                streamed.settle(range(cb).end, 4, &mut |at, means| out[at..at + means.len()].copy_from_slice(means));
            }
            // The last, ragged block stays until the next reset; no round
            // needs more than two.
            assert!(streamed.window.len() + streamed.spare.len() <= 2, "round {round}: blocks reused");
            streamed.finish(&start, &[(1, 3), (2, 1)], &mut out);
        }

        // One worker wholly before the other, settled only at the end.
        let mut whole = WeightedMean::default();
        whole.reset(&start);
        for (id, samples, chunks) in [(1, 3, &from_a), (2, 1, &from_b)] {
            for c in chunks {
                whole.add(id, samples, range(c), Values::new(&c.data), &start, 0.0);
            }
        }
        let mut reference = vec![0.0; len];
        whole.finish(&start, &[(1, 3), (2, 1)], &mut reference);
        assert_eq!(out, reference);
        let exact: Vec<f32> =
            a.iter().zip(&b).map(|(&x, &y)| ((3.0 * f64::from(x) + f64::from(y)) * 0.25) as f32).collect();
        assert_eq!(out, exact);
    }

    #[test]
    fn blocks_a_round_needed_are_kept_for_the_next_and_given_back_after_a_smaller_one() {
        let len = (SPARE_BLOCKS + 3) * BLOCK;
        let bytes = le(&vec![1.0; len]);
        let mut mean = WeightedMean::default();
        mean.reset(&[]);
        // One worker sent everything, the other nothing (a spoiled round).
        mean.add(1, 1, 0..len, Values::new(&bytes), &[], 0.0);
        assert_eq!(mean.window.len(), SPARE_BLOCKS + 3);
        mean.reset(&[]);
        assert_eq!((mean.window.len(), mean.spare.len()), (0, SPARE_BLOCKS + 3), "kept for a round like it");
        // A round that needs one block: the next keeps a paced round's.
        mean.add(1, 1, 0..BLOCK, Values::new(&bytes[..4 * BLOCK]), &[], 0.0);
        mean.reset(&[]);
        assert_eq!((mean.window.len(), mean.spare.len()), (0, SPARE_BLOCKS));
    }
}
