//! `metrics.jsonl`: one JSON object per epoch (and per round if asked), for
//! plots and for tests that check what the logs claim.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::observe::{Observer, RunEvent};

/// Appends records to `metrics.jsonl`, flushing each line so that a crash
/// loses at most the line being written: every epoch's record, and with
/// `rounds` (`--metrics-rounds`) every round's.
#[derive(Debug)]
pub struct MetricsFile {
    path: PathBuf,
    out: BufWriter<File>,
    rounds: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochRecord {
    pub kind: &'static str,
    pub epoch: u64,
    pub rounds: u64,
    pub train_loss: f64,
    pub test_loss: f64,
    pub accuracy: f64,
    /// Samples trained and averaged this epoch, by the coordinator's count.
    pub samples: u64,
    /// Distinct training images among them (equal to `samples` when every image was used once).
    pub distinct_images: u64,
    /// Images trained more than once this epoch (0 unless a worker left mid-round).
    pub repeated_images: u64,
    /// Wall time of the epoch's rounds (not its evaluation).
    pub seconds: f64,
    /// Wall time since the first epoch of this process began training, up to
    /// the end of this epoch's evaluation: the x axis of time-to-accuracy plots.
    /// Restarts from 0 on `--resume`.
    pub elapsed: f64,
    pub samples_per_s: f64,
    /// Share of the epoch's wall time the workers did not spend training.
    pub sync_share: f64,
    pub workers: usize,
    /// Samples by worker name.
    pub samples_by_worker: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundRecord {
    pub kind: &'static str,
    pub epoch: u64,
    pub round: u64,
    pub samples: u64,
    pub contributors: usize,
    pub train_loss: f64,
    pub seconds: f64,
    /// SHA-256 of the averaged parameters every worker now holds.
    pub digest: String,
}

impl MetricsFile {
    /// Opens `metrics.jsonl` in `dir`: a new file, or appended to when resuming a run.
    pub fn open(dir: &Path, append: bool, rounds: bool) -> Result<Self> {
        let path = dir.join(crate::run_dir::METRICS_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsFile { path, out: BufWriter::new(file), rounds })
    }

    fn append(&mut self, record: &impl Serialize) -> Result<()> {
        let line = serde_json::to_string(record).map_err(|e| Error::io(&self.path, e.into()))?;
        let out = &mut self.out;
        writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|e| Error::io(&self.path, e))
    }
}

impl Observer for MetricsFile {
    fn observe(&mut self, event: &RunEvent<'_>) -> Result<()> {
        match *event {
            RunEvent::EpochEvaluated(record) => self.append(record),
            RunEvent::RoundCompleted(done) if self.rounds => {
                let summary = done.summary;
                self.append(&RoundRecord {
                    kind: "round",
                    epoch: summary.epoch,
                    round: summary.round,
                    samples: summary.samples,
                    contributors: summary.contributors.len(),
                    train_loss: done.train_loss(),
                    seconds: done.seconds,
                    digest: done.digest().to_owned(),
                })
            }
            _ => Ok(()),
        }
    }
}
