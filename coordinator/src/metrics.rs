//! `metrics.jsonl`: one JSON object per epoch (and per round if asked), for
//! plots and for tests that check what the logs claim.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use crate::error::{Error, Result};

/// Appends records to `metrics.jsonl`, flushing each line so that a crash
/// loses at most the line being written. Clones append to the same file, a
/// line at a time: an epoch's record is written by its close, off the driver.
#[derive(Debug, Clone)]
pub struct MetricsFile {
    path: Arc<PathBuf>,
    out: Arc<Mutex<BufWriter<File>>>,
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
    pub fn open(dir: &Path, append: bool) -> Result<Self> {
        let path = dir.join(crate::run_dir::METRICS_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsFile { path: Arc::new(path), out: Arc::new(Mutex::new(BufWriter::new(file))) })
    }

    pub fn append(&self, record: &impl Serialize) -> Result<()> {
        let line = serde_json::to_string(record).map_err(|e| Error::io(self.path.as_path(), e.into()))?;
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|e| Error::io(self.path.as_path(), e))
    }
}
