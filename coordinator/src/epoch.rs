//! What is left of an epoch, and who trains it. Pure: no I/O, no clock, no
//! session. The driver feeds it the epoch's membership changes and the
//! rounds' results, and sends the [`Cmd`]s it returns.
//!
//! One type owns every image the epoch still owes: the live workers' shards
//! (each with how far it is averaged), the images of workers that left when
//! no other could take them (orphans), and, after `--resume`, the images the
//! checkpoint still owed, which are orphans of a new process. So a
//! checkpoint, a departure and a round plan all read one source.

use std::collections::{BTreeMap, BTreeSet};

use lazyavg_proto::message::Pull;

use crate::command::Cmd;
use crate::round::WorkerId;
use crate::schedule::{EpochLedger, PullPlan, ShardProgress, epoch_permutation, split_even};

/// Commands for workers, in the order they go out.
pub type Outgoing = Vec<(WorkerId, Cmd)>;

/// One worker's range of a round: positions `from..until` of its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub worker: WorkerId,
    pub from: usize,
    pub until: usize,
}

/// Where the untrained rest of a worker's shard went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// It had nothing left (or no shard).
    Nothing,
    /// `images` were split among `heirs` workers.
    Heirs { images: usize, heirs: usize },
    /// No worker holds a shard: `images` wait for the next to join.
    Orphaned { images: usize },
}

/// The epoch being trained.
#[derive(Debug, Default)]
pub struct EpochState {
    epoch: u64,
    shards: BTreeMap<WorkerId, ShardProgress>,
    /// Images whose worker left when no other could take them.
    orphans: Vec<u32>,
    /// Live workers this epoch no longer trusts with images (see [`Self::exclude`]).
    excluded: BTreeSet<WorkerId>,
    ledger: EpochLedger,
}

impl EpochState {
    /// Before epoch `epoch + 1` starts: nothing owed.
    pub fn before(epoch: u64) -> Self {
        EpochState { epoch, ..EpochState::default() }
    }

    /// Epoch `epoch` after `--resume`, owing `remaining` of its `n_images`:
    /// they are dealt to the workers of its first round.
    pub fn resumed(epoch: u64, n_images: usize, remaining: Vec<u32>) -> Self {
        EpochState { epoch, orphans: remaining, ledger: EpochLedger::new(n_images), ..EpochState::default() }
    }

    /// Epoch `epoch` of a run seeded with `seed`: its permutation of the
    /// `n_images` cut into one shard per worker of `workers`.
    pub fn dealt(epoch: u64, seed: u64, n_images: usize, workers: &[WorkerId]) -> (Self, Outgoing) {
        let order = epoch_permutation(seed, epoch, n_images);
        let mut shards = BTreeMap::new();
        let mut out = Outgoing::new();
        for (&id, images) in workers.iter().zip(split_even(&order, workers.len())) {
            out.push((id, Cmd::Shard { epoch, images: images.clone(), extend: false }));
            shards.insert(id, ShardProgress::new(images));
        }
        let state = EpochState { epoch, shards, ledger: EpochLedger::new(n_images), ..EpochState::default() };
        (state, out)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The worker's shard of this epoch; `None` for one that joined mid-epoch
    /// (until it adopts orphans) or was retired for the rest of it.
    fn shard(&self, worker: WorkerId) -> Option<&ShardProgress> {
        self.shards.get(&worker)
    }

    /// The images of `worker`'s shard not yet averaged in.
    pub fn untrained(&self, worker: WorkerId) -> usize {
        self.shard(worker).map_or(0, ShardProgress::remaining)
    }

    /// Whether `worker` trains pulls sent ahead (`--overlap`).
    pub fn has_pulls_ahead(&self, worker: WorkerId) -> bool {
        self.shard(worker).is_some_and(|s| !s.ahead.is_empty())
    }

    /// Every shard's images, by worker.
    pub fn shards(&self) -> Vec<(WorkerId, &[u32])> {
        self.shards.iter().map(|(&id, s)| (id, s.indices.as_slice())).collect()
    }

    /// What the epoch has averaged so far.
    pub fn ledger(&self) -> &EpochLedger {
        &self.ledger
    }

    /// Whether images wait for a worker to take them.
    pub fn has_orphans(&self) -> bool {
        !self.orphans.is_empty()
    }

    /// The next round: each worker with images left trains its next
    /// `samples_per_round` (or the range a pull sent ahead covers). An
    /// empty plan with no orphans ends the epoch.
    pub fn plan_round(&self, samples_per_round: usize) -> Vec<Planned> {
        self.shards
            .iter()
            .map(|(&worker, s)| Planned { worker, from: s.done, until: s.next_until(samples_per_round) })
            .filter(|p| p.until > p.from)
            .collect()
    }

    /// Deals the orphans evenly to the `live` workers the epoch trusts
    /// (nothing without any), before a round is planned. Returns how many
    /// there were.
    pub fn adopt_orphans(&mut self, live: &[WorkerId]) -> (usize, Outgoing) {
        let heirs = self.trusted(live);
        if self.orphans.is_empty() || heirs.is_empty() {
            return (0, Outgoing::new());
        }
        let orphans = std::mem::take(&mut self.orphans);
        (orphans.len(), self.deal(&heirs, &orphans))
    }

    /// How many orphaned images wait for a worker while none of the `live`
    /// ones may take them (0 when none wait, or some may).
    pub fn images_without_heir(&self, live: &[WorkerId]) -> usize {
        if self.trusted(live).is_empty() { self.orphans.len() } else { 0 }
    }

    fn trusted(&self, live: &[WorkerId]) -> Vec<WorkerId> {
        live.iter().copied().filter(|id| !self.excluded.contains(id)).collect()
    }

    /// Like [`Self::hand_over`], for a worker whose contribution could not
    /// be used (an outlier, non-finite weights): besides its shard, it
    /// takes no orphaned images for the rest of the epoch. Were it the last
    /// worker left, it would otherwise train the epoch alone.
    pub fn exclude(&mut self, worker: WorkerId) -> (Handover, Outgoing) {
        self.excluded.insert(worker);
        self.hand_over(worker)
    }

    /// Takes `worker`'s shard (it left, lags, or sent what cannot be used)
    /// and splits its untrained rest evenly among the other shard holders,
    /// so every image of the epoch is still trained once; with none, the
    /// rest waits for the next worker to join. The worker gets a shard again
    /// next epoch.
    pub fn hand_over(&mut self, worker: WorkerId) -> (Handover, Outgoing) {
        let Some(shard) = self.shards.remove(&worker) else { return (Handover::Nothing, Outgoing::new()) };
        let rest = &shard.indices[shard.done..];
        if rest.is_empty() {
            return (Handover::Nothing, Outgoing::new());
        }
        let heirs: Vec<WorkerId> = self.shards.keys().copied().collect();
        if heirs.is_empty() {
            self.orphans.extend_from_slice(rest);
            return (Handover::Orphaned { images: rest.len() }, Outgoing::new());
        }
        let out = self.deal(&heirs, rest);
        (Handover::Heirs { images: rest.len(), heirs: heirs.len() }, out)
    }

    /// The pulls that open round `round` of `plan`. A worker that still
    /// holds what it trained for an abandoned round (no average came since)
    /// is asked only for the rest; one whose pull went ahead (`--overlap`)
    /// is sent nothing, or, if the round its pull waited for was abandoned,
    /// the same pull again without the wait.
    pub fn pulls(&mut self, round: u64, plan: &[Planned]) -> Outgoing {
        let epoch = self.epoch;
        let mut out = Outgoing::new();
        for &Planned { worker, from, until } in plan {
            let pull = match self.shards.get_mut(&worker) {
                Some(shard) => shard.pull(round, from, until),
                None => PullPlan::Send { train_from: from },
            };
            let from = match pull {
                PullPlan::Send { train_from } | PullPlan::Release { train_from } => train_from,
                PullPlan::Ahead => continue,
            };
            out.push((worker, Cmd::Pull(Pull { epoch, round, from, until, after_round: 0 })));
        }
        out
    }

    /// `--overlap`: once `worker`'s weights for `round` (planned up to
    /// `until`) are in, the pulls that keep `depth` queued after it, of
    /// `samples_per_round` positions each, while its shard has any left.
    pub fn pulls_ahead(
        &mut self,
        worker: WorkerId,
        round: u64,
        until: usize,
        samples_per_round: usize,
        depth: usize,
    ) -> Outgoing {
        let epoch = self.epoch;
        let Some(shard) = self.shards.get_mut(&worker) else { return Outgoing::new() };
        let pulls = shard.pull_ahead(round, until, samples_per_round, depth);
        let pull =
            |(round, from, until): (u64, usize, usize)| Pull { epoch, round, from, until, after_round: round - 1 };
        pulls.into_iter().map(|p| (worker, Cmd::Pull(pull(p)))).collect()
    }

    /// `worker` was sent the weights of `version` (epoch, round). It goes on
    /// from them: what it trained since is gone, unless it trains pulls sent
    /// ahead, which it keeps (applying the average as a correction).
    pub fn weights_sent(&mut self, worker: WorkerId, version: (u64, u64)) {
        let this_epoch = (version.0 == self.epoch).then_some(version.1);
        if let Some(shard) = self.shards.get_mut(&worker) {
            shard.average_sent(this_epoch);
        }
    }

    /// Records that `worker` (named `name` in the metrics) trained positions
    /// `from..until` of its shard and they entered the average. Anything but
    /// the range that continues its shard (a retired worker's, a range
    /// recorded already) is refused, so no image counts twice.
    pub fn record(&mut self, worker: WorkerId, name: &str, from: usize, until: usize) -> bool {
        let Some(shard) = self.shards.get_mut(&worker) else { return false };
        if from != shard.done || until <= from || until > shard.indices.len() {
            return false;
        }
        self.ledger.record(name, &shard.indices[from..until]);
        shard.done = until;
        true
    }

    /// Every image the epoch still owes: the orphans and each shard's
    /// unaveraged rest (for a checkpoint; empty when the epoch is complete).
    pub fn remaining(&self) -> Vec<u32> {
        let mut remaining = self.orphans.clone();
        for shard in self.shards.values() {
            remaining.extend_from_slice(&shard.indices[shard.done..]);
        }
        remaining
    }

    /// Splits `images` evenly over `workers`: each one's shard grows by its
    /// part (or starts with it), and the worker is told so.
    fn deal(&mut self, workers: &[WorkerId], images: &[u32]) -> Outgoing {
        let epoch = self.epoch;
        let mut out = Outgoing::new();
        for (&id, part) in workers.iter().zip(split_even(images, workers.len())) {
            let extend = match self.shards.get_mut(&id) {
                Some(shard) => {
                    shard.indices.extend_from_slice(&part);
                    true
                }
                None => {
                    self.shards.insert(id, ShardProgress::new(part.clone()));
                    false
                }
            };
            out.push((id, Cmd::Shard { epoch, images: part, extend }));
        }
        out
    }
}

#[cfg(test)]
mod tests;
