//! `metrics.jsonl`: one JSON object per epoch (and per round if asked), for
//! plots and for tests that check what the logs claim.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use lazyavg_common::fsutil;
use serde::Serialize;
use tracing::info;

use crate::checkpoint::Checkpoint;
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
    /// Opens `metrics.jsonl` in `dir`: a new file, or, when resuming a run
    /// from `resumed`, the run's file without the records that the resumed
    /// run writes again (see [`kept_on_resume`]), appended to.
    pub fn open(dir: &Path, resumed: Option<&Checkpoint>, rounds: bool) -> Result<Self> {
        let path = dir.join(crate::run_dir::METRICS_FILE);
        if let Some(checkpoint) = resumed {
            drop_records_trained_again(&path, checkpoint)?;
        }
        let append = resumed.is_some();
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

/// Rewrites `path` (atomically) without the records a run resumed from
/// `checkpoint` writes again. They are there when the run got further than
/// its checkpoint: the newest checkpoint failed to be written, or the
/// coordinator was killed while writing it, so `--resume` fell back to the
/// one before and trains the epochs after it again. A reader of the file then
/// finds one record per epoch, the one of the weights the run went on with.
fn drop_records_trained_again(path: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let (next_epoch, remaining) = checkpoint.next_epoch();
    let kept = kept_on_resume(&text, next_epoch, remaining.map(|_| checkpoint.round));
    let dropped = text.lines().count() - kept.len();
    if dropped > 0 {
        let mut rewritten = kept.join("\n");
        rewritten.push('\n');
        fsutil::write_bytes_atomic(path, rewritten.as_bytes())?;
        info!(
            file = %path.display(),
            records = dropped,
            from_epoch = next_epoch,
            "removed the records of the epochs this run trains again"
        );
    }
    Ok(())
}

/// The lines of a `metrics.jsonl` that stay when a run resumes at
/// `next_epoch` (`mid_epoch_round`: the last round of it averaged before a
/// mid-epoch checkpoint): the epoch records of the epochs before it, the
/// round records of those and of the rounds before the checkpoint (they are
/// not trained again; the resumed epoch numbers its rounds on from there). A
/// line that is not a record (one cut short by a crash) goes too.
fn kept_on_resume(text: &str, next_epoch: u64, mid_epoch_round: Option<u64>) -> Vec<&str> {
    let keeps = |line: &str| {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else { return false };
        let Some(epoch) = record["epoch"].as_u64() else { return false };
        match (record["kind"].as_str(), record["round"].as_u64(), mid_epoch_round) {
            (Some("round"), Some(round), Some(last)) if epoch == next_epoch => round <= last,
            _ => epoch < next_epoch,
        }
    };
    text.lines().filter(|line| keeps(line)).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{"kind":"round","epoch":1,"round":0}
{"kind":"epoch","epoch":1}
{"kind":"round","epoch":2,"round":0}
{"kind":"epoch","epoch":2}
{"kind":"round","epoch":3,"round":1}
{"kind":"round","epoch":3,"round":2}
{"kind":"epoch","epoch":3}
{"kind":"round","epoch":4,"ro"#;

    fn epochs_of(lines: &[&str]) -> Vec<(String, u64)> {
        lines
            .iter()
            .map(|line| {
                let record: serde_json::Value = serde_json::from_str(line).unwrap();
                (record["kind"].as_str().unwrap().to_owned(), record["epoch"].as_u64().unwrap())
            })
            .collect()
    }

    #[test]
    fn a_resume_after_a_complete_epoch_keeps_the_records_before_it() {
        let kept = kept_on_resume(FILE, 2, None);
        assert_eq!(epochs_of(&kept), [("round".into(), 1), ("epoch".into(), 1)]);
    }

    #[test]
    fn a_resume_mid_epoch_keeps_that_epochs_rounds_before_its_checkpoint_but_not_its_record() {
        let kept = kept_on_resume(FILE, 3, Some(1));
        let expected = [("round", 1), ("epoch", 1), ("round", 2), ("epoch", 2), ("round", 3)];
        assert_eq!(epochs_of(&kept), expected.map(|(kind, epoch)| (kind.to_owned(), epoch)));
    }

    #[test]
    fn a_line_cut_short_goes_and_a_resume_past_every_record_keeps_the_rest() {
        assert_eq!(kept_on_resume(FILE, 9, None).len(), 7, "all but the cut line");
    }

    #[test]
    fn opening_to_resume_rewrites_the_file_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::run_dir::METRICS_FILE);
        std::fs::write(&path, FILE).unwrap();
        let checkpoint =
            Checkpoint { epoch: 1, remaining: Vec::new(), round: 0, params: Vec::new(), outer_velocity: Vec::new() };
        let mut file = MetricsFile::open(dir.path(), Some(&checkpoint), false).unwrap();
        file.append(&serde_json::json!({"kind": "epoch", "epoch": 2})).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(epochs_of(&lines), [("round".into(), 1), ("epoch".into(), 1), ("epoch".into(), 2)]);
    }
}
