//! An epoch from the driver's side: its shards dealt (or, resumed, what it
//! still owes), rounds until nothing is left, and its record handed to the
//! close.

use std::time::Instant;

use tracing::info;

use super::Driver;
use crate::epoch::EpochState;
use crate::error::Result;
use crate::metrics::EpochRecord;
use crate::observe::RunEvent;
use crate::round::RoundSummary;

/// What an epoch's rounds added up to.
#[derive(Debug, Default)]
struct EpochTally {
    rounds: u64,
    samples: u64,
    loss_sum: f64,
    train_seconds: f64,
}

impl EpochTally {
    fn add(&mut self, summary: &RoundSummary) {
        self.rounds += 1;
        self.samples += summary.samples;
        self.loss_sum += summary.loss_sum;
        self.train_seconds += summary.mean_train_seconds;
    }
}

impl Driver {
    /// Trains epoch `epoch` and starts its close.
    pub(super) async fn run_epoch(&mut self, epoch: u64) -> Result<()> {
        self.ensure_min_workers().await?;
        let started = Instant::now();
        let training_started = *self.training_started.get_or_insert(started);
        // A resumed epoch numbers its rounds on from the checkpoint's.
        let first_round = if self.epoch.epoch() == epoch {
            info!(epoch, images = self.epoch.remaining().len(), "resuming the epoch's untrained images");
            self.version.1
        } else {
            self.deal_epoch(epoch);
            0
        };
        let samples_per_round = self.config.samples_per_round();
        let total_rounds = self.n_train.div_ceil(samples_per_round * self.workers.len()) as u64;
        self.observers.notify(&RunEvent::EpochStarted { epoch, rounds: total_rounds });
        let tally = self.train_rounds(epoch, first_round).await?;
        if epoch == self.config.epochs as u64 {
            self.release_round_buffers();
        }
        let record = self.epoch_record(&tally, started.elapsed().as_secs_f64());
        self.close_epoch(record, training_started).await
    }

    /// Draws the epoch's permutation and sends every live worker its shard.
    fn deal_epoch(&mut self, epoch: u64) {
        let live = self.live();
        let (state, shards) = EpochState::dealt(epoch, self.config.train.seed, self.n_train, &live);
        self.epoch = state;
        self.dispatch(shards);
        self.observers.notify(&RunEvent::ShardsDealt { epoch, shards: &self.epoch.shards() });
    }

    /// Runs rounds, numbered on from `round`, until the epoch owes nothing.
    /// Orphaned images go to the live workers before each round.
    async fn train_rounds(&mut self, epoch: u64, mut round: u64) -> Result<EpochTally> {
        let samples_per_round = self.config.samples_per_round();
        let mut tally = EpochTally::default();
        loop {
            self.ensure_min_workers().await?;
            let live = self.live();
            let (images, adopted) = self.epoch.adopt_orphans(&live);
            if images > 0 {
                info!(images, workers = live.len(), "dealt orphaned images to the live workers");
                self.dispatch(adopted);
            }
            let plan = self.epoch.plan_round(samples_per_round);
            if plan.is_empty() {
                if self.epoch.has_orphans() {
                    continue;
                }
                return Ok(tally);
            }
            round += 1;
            if let Some(summary) = self.run_round(epoch, round, &plan).await? {
                tally.add(&summary);
            }
        }
    }

    /// The epoch's line of `metrics.jsonl`, before its evaluation.
    fn epoch_record(&self, tally: &EpochTally, seconds: f64) -> EpochRecord {
        let ledger = self.epoch.ledger();
        EpochRecord {
            kind: "epoch",
            epoch: self.epoch.epoch(),
            rounds: tally.rounds,
            train_loss: tally.loss_sum / tally.samples.max(1) as f64,
            test_loss: f64::NAN,
            accuracy: f64::NAN,
            samples: tally.samples,
            distinct_images: ledger.distinct(),
            repeated_images: ledger.repeated(),
            seconds,
            elapsed: f64::NAN,
            samples_per_s: tally.samples as f64 / seconds,
            sync_share: (1.0 - tally.train_seconds / seconds).clamp(0.0, 1.0),
            workers: self.workers.len(),
            samples_by_worker: ledger.by_worker().clone(),
        }
    }
}
