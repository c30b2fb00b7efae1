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

use super::{Aggregator, Settled, Settling, UpdateRule};
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
    /// Buffers of lone terms given back by blocks whose positions all have
    /// two terms or more, for the next block that needs one; at most
    /// [`SPARE_BLOCKS`], the rest freed. Only the blocks between the two
    /// furthest workers have lone terms, so a window that spans the whole
    /// model (`--overlap`) holds its sums and a few of these, not both for
    /// every block.
    spare_lone: Vec<Vec<u8>>,
    /// One block of means on their way out.
    means: Vec<f32>,
}

/// The running sums of one block of positions. Positions below `summed`
/// hold f64 sums of two terms or more. Positions `summed..filled` have
/// one term, the furthest worker's, kept as its f32 values' bytes as they
/// came (`lone`) and its weight: half the bytes of a sum, where the sums
/// of a round's first worker were a pass of their own that wrote twice
/// its bytes, read back by the next; and no pass at all where its chunk
/// filled the block from its start (the round's copy of it is kept:
/// [`Aggregator::add_buffer`]). (Workers send in order, so the positions
/// with one term are one stretch, one worker's.) The rest have no term
/// yet. Both buffers are made when first needed (a round of two workers
/// never sums), and the lone terms' is given back once every position has
/// two terms (see `WeightedMean::spare_lone`).
#[derive(Debug)]
struct Block {
    sums: Vec<f64>,
    lone: Vec<u8>,
    lone_weight: f64,
    summed: usize,
    filled: usize,
}

impl Block {
    fn empty() -> Self {
        Block { sums: Vec::new(), lone: Vec::new(), lone_weight: 0.0, summed: 0, filled: 0 }
    }

    /// Adds `weight · values` at `from..from + values.len()`.
    fn add(&mut self, from: usize, weight: f64, values: Values<'_>) {
        let to = from + values.len();
        self.sum_to(from);
        let summed = to.min(self.summed).max(from);
        if summed > from {
            accumulate(&mut self.sums[from..summed], weight, values.get(0..summed - from));
        }
        let paired = to.min(self.filled).max(summed);
        if paired > summed {
            let (sums, lone) = (made(&mut self.sums, BLOCK), terms(&self.lone, summed..paired));
            pair_sums(
                &mut sums[summed..paired],
                lone,
                self.lone_weight,
                weight,
                values.get(summed - from..paired - from),
            );
            self.summed = paired;
        }
        if to > paired {
            // Past every other worker: the stretch of one term is empty
            // (the positions before were paired), and becomes this one's.
            keep_lone(&mut made(&mut self.lone, 4 * BLOCK)[4 * paired..4 * to], values.get(paired - from..to - from));
            self.lone_weight = weight;
            self.filled = to;
        }
    }

    /// The sums at `range`.
    fn sums(&mut self, range: Range<usize>) -> &[f64] {
        self.sum_to(range.end);
        &self.sums[range]
    }

    /// Makes positions below `upto` sums: a lone term becomes its sum, and
    /// where no worker has sent, a sum of nothing (workers send in order
    /// and a round settles only what all have, so that is no work but for
    /// a peer that broke the order).
    fn sum_to(&mut self, upto: usize) {
        if upto <= self.summed {
            return;
        }
        made(&mut self.sums, BLOCK);
        let lone_end = upto.min(self.filled);
        if lone_end > self.summed {
            let lone = terms(&self.lone, self.summed..lone_end);
            lone_sums(&mut self.sums[self.summed..lone_end], lone, self.lone_weight);
        }
        if upto > self.filled {
            self.sums[self.filled..upto].fill(0.0);
        }
        self.summed = upto;
        self.filled = self.filled.max(upto);
    }

    /// The means at positions `from..` of this block, where positions
    /// `piece` (offsets from `from`) get their last term, `weight ·
    /// values` (as long as `piece`), over `scale`'s samples.
    fn last_terms_into(
        &self,
        means: &mut [f32],
        from: usize,
        piece: Range<usize>,
        weight: f64,
        values: Values<'_>,
        scale: f64,
    ) {
        let at = |offset: usize| from + offset;
        let summed = (self.summed.clamp(at(piece.start), at(piece.end)) - from).max(piece.start);
        let filled = (self.filled.clamp(at(piece.start), at(piece.end)) - from).max(summed);
        let (with_sums, rest) = means.split_at_mut(summed - piece.start);
        let (with_lone, alone) = rest.split_at_mut(filled - summed);
        let values_at = |offsets: Range<usize>| values.get(offsets.start - piece.start..offsets.end - piece.start);
        if !with_sums.is_empty() {
            add_scaled_into(
                with_sums,
                &self.sums[at(piece.start)..at(summed)],
                weight,
                values_at(piece.start..summed),
                scale,
            );
        }
        if !with_lone.is_empty() {
            let lone = terms(&self.lone, at(summed)..at(filled));
            pair_scaled_into(with_lone, lone, self.lone_weight, weight, values_at(summed..filled), scale);
        }
        first_scaled_into(alone, weight, values_at(filled..piece.end), scale);
    }
}

/// A block's buffer of sums or of lone terms, made `len` long the first
/// time it is needed (zeroed pages, which the system maps as they are
/// written), or lengthened where it was a chunk's copy kept.
fn made<T: Clone + Default>(buffer: &mut Vec<T>, len: usize) -> &mut [T] {
    if buffer.is_empty() {
        *buffer = vec![T::default(); len];
    } else if buffer.len() < len {
        buffer.resize(len, T::default());
    }
    buffer
}

/// The lone terms kept in `lone` at positions `range` of their block.
fn terms(lone: &[u8], range: Range<usize>) -> Values<'_> {
    Values::new(&lone[4 * range.start..4 * range.end])
}

/// The blocks that positions `range` fall in: each block's index and the
/// positions in it (counted from the block's first), in order.
fn spans(range: Range<usize>) -> impl Iterator<Item = (usize, Range<usize>)> {
    let first = range.start / BLOCK;
    let last = if range.is_empty() { first } else { range.end.div_ceil(BLOCK) };
    (first..last).map(move |index| {
        let start = index * BLOCK;
        (index, range.start.max(start) - start..range.end.min(start + BLOCK) - start)
    })
}

impl WeightedMean {
    /// The running sums of block `index` (counted from position 0), opened
    /// empty if no worker had reached it.
    fn block(&mut self, index: usize) -> &mut Block {
        let at = index - self.first / BLOCK;
        while self.window.len() <= at {
            let block = match self.spare.pop() {
                Some(block) => Block { summed: 0, filled: 0, ..block },
                None => Block::empty(),
            };
            self.window.push_back(block);
        }
        self.peak = self.peak.max(self.window.len());
        &mut self.window[at]
    }

    /// Adds `samples` times `values` at positions `range` into the sums.
    fn add_values(&mut self, samples: u64, range: Range<usize>, values: Values<'_>) {
        debug_assert!(range.start >= self.settled, "a settled position came again");
        let weight = samples as f64;
        for (index, Range { start: from, end: to }) in spans(range.clone()) {
            let at = index * BLOCK;
            let part = values.get(at + from - range.start..at + to - range.start);
            self.block(index);
            let block = &mut self.window[index - self.first / BLOCK];
            // Lone terms come past every other worker (see `Block::add`).
            if block.lone.is_empty() && to > block.filled.max(from) {
                block.lone = self.spare_lone.pop().unwrap_or_default();
            }
            block.add(from, weight, part);
            if block.summed == BLOCK && !block.lone.is_empty() {
                let lone = std::mem::take(&mut block.lone);
                if self.spare_lone.len() < SPARE_BLOCKS {
                    self.spare_lone.push(lone);
                }
            }
        }
    }

    /// Keeps `copy`, the round's copy of a chunk at `range`, as the lone
    /// terms of the block it fills from the block's start, where no worker
    /// had sent any of it, and leaves the block's old buffer (or a spare)
    /// in its place: the first worker's chunks are then kept without a
    /// pass over them. False, having done nothing, for any other chunk.
    fn keep_copy(&mut self, samples: u64, range: Range<usize>, copy: &mut Vec<u8>) -> bool {
        let index = range.start / BLOCK;
        if range.is_empty() || !range.start.is_multiple_of(BLOCK) || range.end > (index + 1) * BLOCK {
            return false;
        }
        debug_assert!(range.start >= self.settled, "a settled position came again");
        let block = self.block(index);
        if block.filled > 0 {
            return false;
        }
        let old = std::mem::replace(&mut block.lone, std::mem::take(copy));
        (block.lone_weight, block.filled) = (samples as f64, range.len());
        *copy = if old.is_empty() { self.spare_lone.pop().unwrap_or_default() } else { old };
        true
    }

    /// Hands the mean of positions `self.settled..upto`, over `samples` in
    /// all, to `out` a piece at a time (none when `samples` is 0: nobody
    /// sent them), and lets go of the blocks wholly below `upto`.
    fn write_out(&mut self, upto: usize, samples: u64, out: &mut Settled<'_>) {
        let scale = 1.0 / samples as f64;
        for (index, Range { start: from, end: to }) in spans(self.settled..upto) {
            let first = index * BLOCK + from;
            self.settled = index * BLOCK + to;
            if samples == 0 {
                continue;
            }
            let mut means = std::mem::take(&mut self.means);
            let sums = self.block(index).sums(from..to);
            in_pieces(&mut means, first, sums.len(), out, |means, piece| scale_into(means, &sums[piece], scale));
            self.means = means;
        }
        self.let_go_below_settled();
    }

    /// Moves the blocks wholly below the settled positions to the spares.
    fn let_go_below_settled(&mut self) {
        while self.first + BLOCK <= self.settled {
            let Some(block) = self.window.pop_front() else { break };
            self.spare.push(block);
            self.first += BLOCK;
        }
    }

    /// The running sums of block `index` where some worker has sent
    /// positions of it, without opening it.
    fn existing(&self, index: usize) -> Option<&Block> {
        self.window.get(index.checked_sub(self.first / BLOCK)?)
    }
}

/// Positions handed out per call of a [`Settled`]: means of this many fit in
/// L1 beside what they are made from, written and read back there, where a
/// block's (half a megabyte) went out to L2 and back.
const PIECE: usize = 2048;

/// Hands `len` means from position `first` to `out` a [`PIECE`] at a time,
/// each piece made into `means` by `make` (given the piece's offsets from
/// `first`).
fn in_pieces(
    means: &mut Vec<f32>,
    first: usize,
    len: usize,
    out: &mut Settled<'_>,
    mut make: impl FnMut(&mut [f32], Range<usize>),
) {
    means.resize(PIECE.min(len), 0.0);
    for start in (0..len).step_by(PIECE) {
        let piece = start..(start + PIECE).min(len);
        let means = &mut means[..piece.len()];
        make(means, piece.clone());
        out(first + piece.start, means);
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

/// `sums[i] = (0 + lone_weight · lone[i]) + weight · values[i]`: a
/// position's second term added to its first.
#[multiversion(targets("x86_64+avx2"))]
fn pair_sums(sums: &mut [f64], lone: Values<'_>, lone_weight: f64, weight: f64, values: Values<'_>) {
    for ((sum, first), v) in sums.iter_mut().zip(lone.iter()).zip(values.iter()) {
        *sum = (0.0 + lone_weight * f64::from(first)) + weight * f64::from(v);
    }
}

/// `sums[i] = 0 + lone_weight · lone[i]`: a lone term as its sum. A first
/// term is always added to zero, which keeps the sums bit for bit what
/// they were when every block was zeroed first (a −0.0 term makes +0.0).
#[multiversion(targets("x86_64+avx2"))]
fn lone_sums(sums: &mut [f64], lone: Values<'_>, lone_weight: f64) {
    for (sum, first) in sums.iter_mut().zip(lone.iter()) {
        *sum = 0.0 + lone_weight * f64::from(first);
    }
}

/// `lone = values`' bytes: terms kept as they came. A loop over 64-byte
/// blocks, not `copy_from_slice`: the `memcpy` that becomes (`rep movsb`
/// into a buffer out of cache, on the 2-core AMD EPYC) made the coordinator's
/// share of a default 2-worker round 175 µs against 160 with this loop
/// (`lazyavg-bench combine`, three runs each); `black_box` keeps the
/// compiler from making the loop a `memcpy` again.
#[multiversion(targets("x86_64+avx2"))]
fn keep_lone(lone: &mut [u8], values: Values<'_>) {
    let (blocks, tail) = lone.as_chunks_mut::<64>();
    let (from, from_tail) = values.as_bytes().as_chunks::<64>();
    for (d, s) in blocks.iter_mut().zip(from) {
        *d = *s;
        std::hint::black_box(&mut *d);
    }
    tail.copy_from_slice(from_tail);
}

/// `means[i] = sums[i] · scale`, rounded to f32.
#[multiversion(targets("x86_64+avx2"))]
fn scale_into(means: &mut [f32], sums: &[f64], scale: f64) {
    for (mean, &sum) in means.iter_mut().zip(sums) {
        *mean = (sum * scale) as f32;
    }
}

/// `means[i] = (sums[i] + weight · values[i]) · scale`, rounded to f32: a
/// position's last term added and its mean taken in one, the same
/// arithmetic as [`accumulate`] then [`scale_into`].
#[multiversion(targets("x86_64+avx2"))]
fn add_scaled_into(means: &mut [f32], sums: &[f64], weight: f64, values: Values<'_>, scale: f64) {
    for ((mean, &sum), v) in means.iter_mut().zip(sums).zip(values.iter()) {
        *mean = ((sum + weight * f64::from(v)) * scale) as f32;
    }
}

/// `means[i] = ((0 + lone_weight · lone[i]) + weight · values[i]) · scale`,
/// rounded to f32: a position's second and last term, as [`pair_sums`]
/// then [`scale_into`].
#[multiversion(targets("x86_64+avx2"))]
fn pair_scaled_into(
    means: &mut [f32],
    lone: Values<'_>,
    lone_weight: f64,
    weight: f64,
    values: Values<'_>,
    scale: f64,
) {
    for ((mean, first), v) in means.iter_mut().zip(lone.iter()).zip(values.iter()) {
        *mean = (((0.0 + lone_weight * f64::from(first)) + weight * f64::from(v)) * scale) as f32;
    }
}

/// `means[i] = (0 + weight · values[i]) · scale`, rounded to f32: a
/// position's only term, as [`lone_sums`] then [`scale_into`].
#[multiversion(targets("x86_64+avx2"))]
fn first_scaled_into(means: &mut [f32], weight: f64, values: Values<'_>, scale: f64) {
    for (mean, v) in means.iter_mut().zip(values.iter()) {
        *mean = ((0.0 + weight * f64::from(v)) * scale) as f32;
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
        self.add_values(samples, range, values);
    }

    fn add_buffer(
        &mut self,
        _worker: WorkerId,
        samples: u64,
        range: Range<usize>,
        copy: &mut Vec<u8>,
        _start: &[f32],
        _squared: f64,
    ) {
        if !self.keep_copy(samples, range.clone(), copy) {
            self.add_values(samples, range.clone(), Values::new(&copy[..4 * range.len()]));
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

    /// The chunk of the worker the round waited for at the positions it
    /// finishes: their means are made as its values are added, a piece at
    /// a time, and their sums never written back (a round's sums are
    /// larger than L2: written, then read back to settle, they were a
    /// quarter of the coordinator's share of a round). Only from the first
    /// position not settled, which the positions before it were; the rest
    /// of the chunk is added as [`add`] would.
    ///
    /// [`add`]: Aggregator::add
    fn add_settling(
        &mut self,
        samples: u64,
        range: Range<usize>,
        values: Values<'_>,
        settling: Settling<'_, '_>,
    ) -> bool {
        let Settling { upto, samples: total, out } = settling;
        let settles = upto.min(range.end);
        if range.start != self.settled || settles <= range.start || total == 0 {
            return false;
        }
        let (weight, scale) = (samples as f64, 1.0 / total as f64);
        let mut means = std::mem::take(&mut self.means);
        for (index, Range { start: from, end: to }) in spans(self.settled..settles) {
            let first = index * BLOCK + from;
            let values = values.get(first - range.start..index * BLOCK + to - range.start);
            let empty = Block::empty();
            let block = self.existing(index).unwrap_or(&empty);
            in_pieces(&mut means, first, to - from, out, |means, piece| {
                block.last_terms_into(means, from, piece.clone(), weight, values.get(piece), scale);
            });
            self.settled = index * BLOCK + to;
        }
        self.means = means;
        self.let_go_below_settled();
        if settles < range.end {
            self.add_values(samples, settles..range.end, values.get(settles - range.start..range.len()));
        }
        true
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
    fn adding_and_settling_in_one_pass_is_adding_then_settling_bit_for_bit() {
        let len = 3 * BLOCK + 5;
        let contributions: Vec<(WorkerId, u64, Vec<f32>)> = (1..=3u64)
            .map(|id| {
                let values = (0..len).map(|i| ((i as u64 * (7 + id)) % 101) as f32 * 0.37 - 3.1 * id as f32).collect();
                (id, 2 * id - 1, values)
            })
            .collect();
        let total: u64 = contributions.iter().map(|(_, samples, _)| samples).sum();
        // Pieces that cross blocks, of a different size for each worker,
        // sent in turns: each worker's piece finishes some positions, all,
        // or none.
        let piece = |id: WorkerId| BLOCK / 3 + 7 * id as usize;
        // The reference: every position's terms added to a zero in the
        // order they came, then scaled.
        let mut sums = vec![0.0f64; len];
        let mut fused = WeightedMean::default();
        fused.reset(&[]);
        let mut sent = vec![0; contributions.len()];
        let (mut out, mut fused_calls) = (vec![f32::NAN; len], 0);
        while sent.iter().any(|&s| s < len) {
            for (k, (id, samples, values)) in contributions.iter().enumerate() {
                let range = sent[k]..(sent[k] + piece(*id)).min(len);
                let bytes = le(&values[range.clone()]);
                sent[k] = range.end;
                for (sum, &v) in sums[range.clone()].iter_mut().zip(&values[range.clone()]) {
                    *sum += *samples as f64 * f64::from(v);
                }
                let upto = *sent.iter().min().expect("workers");
                let out = &mut |at: usize, means: &[f32]| out[at..at + means.len()].copy_from_slice(means);
                let settling = Settling { upto, samples: total, out: &mut *out };
                if fused.add_settling(*samples, range.clone(), Values::new(&bytes), settling) {
                    fused_calls += 1;
                } else {
                    fused.add_values(*samples, range, Values::new(&bytes));
                    fused.settle(upto, total, out);
                }
            }
        }
        let expected: Vec<f32> = sums.iter().map(|&sum| (sum * (1.0 / total as f64)) as f32).collect();
        assert!(fused_calls > 3, "the pass that adds and settles was taken ({fused_calls} times)");
        let differ = out.iter().zip(&expected).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "means that differ from adding then settling, of {len}");
        assert!(fused.window.len() <= 2, "settled blocks let go: {}", fused.window.len());

        // One worker alone: every position is its only term.
        let (mut alone, values) = (WeightedMean::default(), le(&[-0.0, 2.5, 1.0]));
        alone.reset(&[]);
        let mut out = [f32::NAN; 3];
        let settling =
            Settling { upto: 3, samples: 4, out: &mut |at, means| out[at..at + means.len()].copy_from_slice(means) };
        assert!(alone.add_settling(4, 0..3, Values::new(&values), settling));
        assert_eq!(out.map(f32::to_bits), [0.0f32, 2.5, 1.0].map(f32::to_bits));
        assert!(alone.window.is_empty(), "no sums were opened");

        // Two workers: the first's terms are kept as they came, never summed.
        let mut pair = WeightedMean::default();
        pair.reset(&[]);
        pair.add_values(3, 0..3, Values::new(&values));
        assert!(pair.window[0].sums.is_empty() && pair.window[0].filled == 3);
        let mut out = [f32::NAN; 3];
        let settling =
            Settling { upto: 3, samples: 4, out: &mut |at, means| out[at..at + means.len()].copy_from_slice(means) };
        assert!(pair.add_settling(1, 0..3, Values::new(&le(&[4.0, -2.5, 1.0])), settling));
        assert_eq!(out, [1.0, 1.25, 1.0]);
        assert!(pair.window[0].sums.is_empty(), "settled without a sum");
    }

    #[test]
    fn a_window_over_the_whole_model_keeps_lone_terms_only_where_one_worker_has_sent() {
        let len = (SPARE_BLOCKS + 4) * BLOCK;
        let values = |k: usize| -> Vec<f32> { (0..len).map(|i| ((i * (k + 3)) % 61) as f32 * 0.25 - 7.0).collect() };
        let (a, b, c) = (values(1), values(2), values(3));
        let mut mean = WeightedMean::default();
        mean.reset(&[]);
        // Worker 1 sends the whole model before anyone else (as under
        // --overlap): every block holds its lone terms and no sums.
        mean.add_values(1, 0..len, Values::new(&le(&a)));
        assert!(mean.window.iter().all(|block| block.lone.len() == 4 * BLOCK && block.sums.is_empty()));
        // Worker 2 follows: each block it passes gets sums and gives its
        // lone terms back, at most SPARE_BLOCKS of them kept.
        mean.add_values(2, 0..len, Values::new(&le(&b)));
        assert!(mean.window.iter().all(|block| block.lone.is_empty() && block.sums.len() == BLOCK));
        assert_eq!(mean.spare_lone.len(), SPARE_BLOCKS);
        let mut out = vec![f32::NAN; len];
        let settling =
            Settling { upto: len, samples: 6, out: &mut |at, means| out[at..at + means.len()].copy_from_slice(means) };
        assert!(mean.add_settling(3, 0..len, Values::new(&le(&c)), settling));
        let expected: Vec<f32> = (0..len)
            .map(|i| ((((0.0 + f64::from(a[i])) + 2.0 * f64::from(b[i])) + 3.0 * f64::from(c[i])) * (1.0 / 6.0)) as f32)
            .collect();
        assert!(out.iter().zip(&expected).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn a_first_term_that_fills_a_block_keeps_the_round_s_copy_and_buffers_go_round() {
        let len = 2 * BLOCK + 9;
        let workers: Vec<(WorkerId, u64, Vec<f32>)> = (1..=3u64)
            .map(|id| (id, id + 1, (0..len).map(|i| ((i as u64 * (3 + id)) % 89) as f32 * 0.41 - id as f32).collect()))
            .collect();
        let total: u64 = workers.iter().map(|(_, samples, _)| samples).sum();
        let expected: Vec<f32> = (0..len)
            .map(|i| {
                let sum =
                    workers.iter().fold(0.0, |sum, (_, samples, values)| sum + *samples as f64 * f64::from(values[i]));
                (sum * (1.0 / total as f64)) as f32
            })
            .collect();
        let mut mean = WeightedMean::default();
        // The round's copy, as `Round::accept` hands it on chunk after chunk
        // (lengthened, which may allocate, only where it is too short).
        let mut copy = Vec::new();
        for round in 0..4 {
            mean.reset(&[]);
            let (mut kept, mut lengthened) = (0, 0);
            for (id, samples, values) in &workers {
                for chunk in weight_chunks(0, 0, values) {
                    let range = chunk.offset as usize..chunk.offset as usize + chunk.data.len() / 4;
                    if copy.len() < chunk.data.len() {
                        copy.resize(chunk.data.len(), 0);
                        lengthened += 1;
                    }
                    copy[..chunk.data.len()].copy_from_slice(&chunk.data);
                    let before = copy.as_ptr();
                    mean.add_buffer(*id, *samples, range, &mut copy, &[], 0.0);
                    kept += usize::from(copy.as_ptr() != before);
                }
            }
            assert_eq!(kept, 3, "round {round}: the first worker's three chunks kept, nobody else's");
            if round >= 2 {
                assert_eq!(lengthened, 0, "round {round}: the buffers handed back go round");
            }
            let mut out = vec![f32::NAN; len];
            mean.finish(&vec![0.0; len], &[(1, 2), (2, 3), (3, 4)], &mut out);
            assert!(out.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()), "round {round}");
        }
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
