//! An epoch's close: evaluating its average on the test set, recording the
//! epoch ("epoch done" and its `metrics.jsonl` line), then writing its
//! checkpoint. It runs on the blocking pool while the next epoch trains, so
//! the workers never wait for it (they used to: about 7% of a 2-worker run);
//! its lines come a few rounds into the next epoch. The order within a close
//! is kept, so a checkpoint on disk always has its epoch recorded. At most
//! one close is in flight: checkpoints are written in epoch order, and the
//! last epoch's close is awaited before the run ends.

use std::sync::Arc;
use std::time::Instant;

use lazyavg_common::dataset::Dataset;
use lazyavg_common::model::{Evaluation, Network, Workspace};
use lazyavg_common::telemetry::error_chain;
use tokio::task::JoinHandle;
use tracing::warn;

use super::Driver;
use super::checkpointing::write_checkpoint;
use crate::error::Result;
use crate::metrics::EpochRecord;
use crate::observe::RunEvent;

/// Test samples per evaluation batch.
const EVAL_BATCH: usize = 500;

/// The close in flight; it yields the epoch's evaluation.
pub(super) type ClosingEpoch = JoinHandle<Result<Evaluation>>;

impl Driver {
    /// Starts closing the epoch `record` describes (complete but for its
    /// `test_loss`, `accuracy` and `elapsed`) with the current average.
    pub(super) async fn close_epoch(&mut self, mut record: EpochRecord, training_started: Instant) -> Result<()> {
        // The previous close is normally long done; an epoch shorter than its
        // evaluation waits for it here.
        self.finish_closing().await?;
        let checkpoint = self.snapshot(record.epoch, Vec::new());
        let (dir, mlp, test) = (self.config.out_dir.clone(), self.mlp.clone(), Arc::clone(&self.test));
        let observers = self.observers.clone();
        let fault = self.config.checkpoint_fault(record.epoch);
        self.closing = Some(tokio::task::spawn_blocking(move || {
            let evaluation = evaluate(&mlp, &test, &checkpoint.params);
            record.test_loss = evaluation.loss;
            record.accuracy = evaluation.accuracy;
            record.elapsed = training_started.elapsed().as_secs_f64();
            observers.emit(&RunEvent::EpochEvaluated(&record))?;
            write_checkpoint(&dir, mlp.spec(), &checkpoint, fault, &observers);
            Ok(evaluation)
        }));
        Ok(())
    }

    /// Waits for the close in flight, if any; returns its evaluation.
    pub(super) async fn finish_closing(&mut self) -> Result<Option<Evaluation>> {
        if self.closing.is_none() {
            return Ok(None);
        }
        close_done(&mut self.closing).await.map(Some)
    }

    /// [`Driver::finish_closing`] on the way out of a failed run, whose own
    /// error is the one to report.
    pub(super) async fn finish_closing_after_error(&mut self) {
        if let Err(e) = self.finish_closing().await {
            warn!(error = %error_chain(&e), "cannot record the last epoch");
        }
    }
}

/// Resolves when the close in flight is done, taking it; pending forever
/// when there is none, so it can sit in a `select!` with the driver's other
/// sources.
pub(super) async fn close_done(closing: &mut Option<ClosingEpoch>) -> Result<Evaluation> {
    match closing {
        Some(job) => {
            let result = job.await.expect("closing an epoch does not panic");
            *closing = None;
            result
        }
        None => std::future::pending().await,
    }
}

/// Test loss and accuracy of `params`.
pub(super) fn evaluate(mlp: &Network, test: &Dataset, params: &[f32]) -> Evaluation {
    let mut workspace = Workspace::for_inference(mlp, EVAL_BATCH);
    mlp.evaluate(params, test, &mut workspace)
}
