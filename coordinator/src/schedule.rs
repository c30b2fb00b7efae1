//! The epoch schedule: which worker trains which images, and how far each has
//! got. Pure: no I/O, no clock.
//!
//! Every epoch draws a fresh permutation of the training set from the run's
//! seed and the epoch number alone (so a resumed or repeated run draws the
//! same one) and cuts it into one contiguous shard per worker, the sizes
//! differing by at most one image.

use std::collections::BTreeMap;

use lazyavg_common::rng::Rng;

/// Stream id offset for epoch permutations, apart from the model's init stream.
const EPOCH_STREAM: u64 = 1 << 32;

/// The permutation of `0..n_images` for `epoch` of a run seeded with `seed`.
pub fn epoch_permutation(seed: u64, epoch: u64, n_images: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n_images as u32).collect();
    Rng::derive(seed, EPOCH_STREAM + epoch).shuffle(&mut order);
    order
}

/// Cuts `order` into `parts` contiguous shards whose sizes differ by at most one.
pub fn split_even(order: &[u32], parts: usize) -> Vec<Vec<u32>> {
    let parts = parts.max(1);
    let (base, extra) = (order.len() / parts, order.len() % parts);
    let mut shards = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 0..parts {
        let len = base + usize::from(i < extra);
        shards.push(order[start..start + len].to_vec());
        start += len;
    }
    shards
}

/// One worker's shard of the current epoch and how much of it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardProgress {
    pub indices: Vec<u32>,
    /// Positions `0..done` have been trained and averaged.
    pub done: usize,
    /// Positions `done..trained` the worker has trained since it last received
    /// an average (for a round that was abandoned): a redone round asks only
    /// for its weights, so no image is trained twice.
    pub trained: usize,
}

impl ShardProgress {
    pub fn new(indices: Vec<u32>) -> Self {
        ShardProgress { indices, done: 0, trained: 0 }
    }

    /// The position to train up to in the next round of `samples_per_round`.
    pub fn next_until(&self, samples_per_round: usize) -> usize {
        (self.done + samples_per_round).min(self.indices.len())
    }

    pub fn remaining(&self) -> usize {
        self.indices.len() - self.done
    }
}

/// Which images an epoch has trained, and how often: the evidence that
/// every image was used exactly once, whatever workers came and went.
#[derive(Debug, Clone, Default)]
pub struct EpochLedger {
    uses: Vec<u8>,
    by_worker: BTreeMap<String, u64>,
}

impl EpochLedger {
    pub fn new(n_images: usize) -> Self {
        EpochLedger { uses: vec![0; n_images], by_worker: BTreeMap::new() }
    }

    /// Records that `worker` trained `indices` and they entered the average.
    pub fn record(&mut self, worker: &str, indices: &[u32]) {
        for &i in indices {
            let uses = &mut self.uses[i as usize];
            *uses = uses.saturating_add(1);
        }
        *self.by_worker.entry(worker.to_owned()).or_default() += indices.len() as u64;
    }

    /// Images trained at least once.
    pub fn distinct(&self) -> u64 {
        self.uses.iter().filter(|&&u| u > 0).count() as u64
    }

    /// Images trained more than once.
    pub fn repeated(&self) -> u64 {
        self.uses.iter().filter(|&&u| u > 1).count() as u64
    }

    /// Samples per worker name.
    pub fn by_worker(&self) -> &BTreeMap<String, u64> {
        &self.by_worker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_epoch_with_sizes_within_one() {
        for workers in [1, 2, 3, 7, 16] {
            let order = epoch_permutation(5, 1, 60_000);
            let shards = split_even(&order, workers);
            assert_eq!(shards.len(), workers);
            let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
            let mut all: Vec<u32> = shards.concat();
            all.sort_unstable();
            assert_eq!(all, (0..60_000).collect::<Vec<u32>>());
        }
    }

    #[test]
    fn permutation_depends_on_seed_and_epoch_only() {
        assert_eq!(epoch_permutation(5, 2, 1000), epoch_permutation(5, 2, 1000));
        assert_ne!(epoch_permutation(5, 2, 1000), epoch_permutation(5, 3, 1000));
        assert_ne!(epoch_permutation(5, 2, 1000), epoch_permutation(6, 2, 1000));
    }

    #[test]
    fn ledger_counts_distinct_and_repeated_images() {
        let mut ledger = EpochLedger::new(10);
        ledger.record("a", &[0, 1, 2]);
        ledger.record("b", &[3, 4]);
        ledger.record("a", &[4]);
        assert_eq!((ledger.distinct(), ledger.repeated()), (5, 1));
        assert_eq!(ledger.by_worker()["a"], 4);
    }

    #[test]
    fn progress_steps_by_rounds_and_stops_at_the_end() {
        let mut p = ShardProgress::new((0..100).collect());
        assert_eq!(p.next_until(64), 64);
        p.done = 64;
        assert_eq!(p.next_until(64), 100);
        p.done = 100;
        assert_eq!((p.next_until(64), p.remaining()), (100, 0));
    }
}
