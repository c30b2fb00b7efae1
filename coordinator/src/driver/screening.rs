//! What the driver makes of a finished round's update norms: warnings for
//! outliers, retirement of the ones a rule left out or bounded, and the
//! error that names the likely cause of a divergence.

use tracing::{debug, warn};

use super::{Driver, name_in};
use crate::error::Error;
use crate::round::{RoundError, RoundSummary, WorkerId};

impl Driver {
    /// Says who was far from the others in a finished round: each
    /// contribution's update norm at debug level, a warning for an outlier
    /// (at the start of its streak, then every `WARN_EVERY` rounds, and in
    /// each epoch); an outlier left out (or kept in bounded) is retired for
    /// the rest of the epoch.
    pub(super) fn screened(&mut self, summary: &RoundSummary) {
        let workers = &self.workers;
        let name = |id: WorkerId| name_in(workers, id);
        let (epoch, round) = (summary.epoch, summary.round);
        if tracing::enabled!(tracing::Level::DEBUG) {
            for u in &summary.updates {
                let (worker, update_norm, ratio_to_median) = (u.worker, u.norm, u.ratio);
                debug!(
                    epoch,
                    round,
                    worker,
                    name = name(worker),
                    update_norm,
                    ratio_to_median,
                    "contribution's update"
                );
            }
        }
        for (update, rounds) in self.outliers.round(epoch, round, &summary.updates, &summary.dropped) {
            warn!(
                epoch,
                round,
                worker = update.worker,
                name = name(update.worker),
                ratio_to_median = update.ratio,
                rounds,
                left_out = summary.dropped.contains(&update.worker),
                "worker's update is far from the others' (its norm over the median's)"
            );
        }
        // Left out, it would be asked for the same range again and again (a
        // worker that redid it could lag the others and end an epoch alone):
        // like a worker whose weights were not finite, it trains no more of
        // this epoch and the others take its images. So does one that a
        // streamed robust rule kept in, bounded.
        let bounded = self.config.aggregate.bounds_outliers();
        let retired: Vec<WorkerId> = summary
            .updates
            .iter()
            .filter(|u| u.outlier && (bounded || summary.dropped.contains(&u.worker)))
            .map(|u| u.worker)
            .collect();
        for id in retired {
            let name = self.name(id);
            warn!(epoch, round, worker = id, name, "worker's update was an outlier; it trains no more of this epoch");
            self.exclude_for_epoch(id);
        }
    }

    /// The error of a run whose round had no usable weights: it names the
    /// worker whose updates were far from the others' if there was one.
    pub(super) fn diverged(&self, cause: RoundError) -> Error {
        match self.outliers.likely_cause() {
            Some(o) => Error::DivergedAfterOutlier {
                cause,
                name: self.workers.get(&o.worker).map_or_else(|| format!("#{}", o.worker), |w| w.name.clone()),
                ratio: o.ratio,
                epoch: o.epoch,
                round: o.round,
            },
            None => Error::Diverged { cause, peak_lr: self.config.train.peak_lr() },
        }
    }
}
