//! `--dump-rounds N`: an inspection path for tests and debugging. For each of
//! the run's first N rounds it writes every contribution as it arrived and the
//! resulting average as raw little-endian f32 files, plus a JSON file with each
//! contributor's sample weight, so the average can be recomputed independently.
//! For every epoch it writes the shards dealt out (`e{epoch}-shards.json`).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use lazyavg_proto::chunks::Chunk;
use serde_json::json;

use lazyavg_common::telemetry::error_chain;
use tracing::warn;

use crate::error::{Error, Result};
use crate::observe::{Observer, RunEvent};
use crate::round::{RoundSummary, WorkerId};

#[derive(Debug)]
pub struct RoundDump {
    dir: PathBuf,
    remaining: usize,
}

impl RoundDump {
    pub fn new(dir: PathBuf, rounds: usize) -> Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(RoundDump { dir, remaining: rounds })
    }

    fn active(&self) -> bool {
        self.remaining > 0
    }

    fn file(&self, epoch: u64, round: u64, what: &str) -> PathBuf {
        self.dir.join(format!("e{epoch}-r{round}-{what}"))
    }

    /// Records the shards of `epoch`, by worker id.
    fn shards(&self, epoch: u64, shards: &[(WorkerId, &[u32])]) -> Result<()> {
        let map: serde_json::Map<String, serde_json::Value> =
            shards.iter().map(|(id, s)| (id.to_string(), json!(s))).collect();
        let path = self.dir.join(format!("e{epoch}-shards.json"));
        fs::write(&path, serde_json::Value::Object(map).to_string()).map_err(|e| Error::io(&path, e))
    }

    /// Appends the `values` of a chunk a worker sent.
    fn chunk(&self, worker: WorkerId, chunk: &Chunk, values: &[u8]) -> Result<()> {
        if !self.active() {
            return Ok(());
        }
        let path = self.file(chunk.epoch, chunk.round, &format!("w{worker}.f32"));
        let append = || OpenOptions::new().create(true).append(true).open(&path)?.write_all(values);
        append().map_err(|e| Error::io(&path, e))
    }

    /// Writes the round's average and weights, and counts the round.
    fn finish(&mut self, summary: &RoundSummary, average: &[f32]) -> Result<()> {
        if !self.active() {
            return Ok(());
        }
        self.remaining -= 1;
        let (e, r) = (summary.epoch, summary.round);
        let avg_path = self.file(e, r, "avg.f32");
        let bytes: Vec<u8> = average.iter().flat_map(|v| v.to_le_bytes()).collect();
        fs::write(&avg_path, bytes).map_err(|e| Error::io(&avg_path, e))?;
        let meta = json!({
            "epoch": e,
            "round": r,
            "contributors": summary.contributors.iter().map(|(id, w)| json!({"worker": id, "samples": w})).collect::<Vec<_>>(),
            "digest": lazyavg_common::params::digest(average),
        });
        let meta_path = self.file(e, r, "round.json");
        fs::write(&meta_path, meta.to_string()).map_err(|e| Error::io(&meta_path, e))
    }
}

impl Observer for RoundDump {
    /// A dump that cannot be written stops the run at a round's end (the
    /// rounds asked for would be incomplete), and is only logged otherwise.
    fn observe(&mut self, event: &RunEvent<'_>) -> Result<()> {
        let (partial, failure) = match *event {
            RunEvent::ShardsDealt { epoch, shards } => (self.shards(epoch, shards), "cannot dump shards"),
            RunEvent::WeightsReceived { worker, chunk, values } => {
                (self.chunk(worker, chunk, values), "cannot dump round")
            }
            RunEvent::RoundCompleted(done) => return self.finish(done.summary, done.params),
            _ => return Ok(()),
        };
        if let Err(e) = partial {
            warn!(error = %error_chain(&e), "{failure}");
        }
        Ok(())
    }
}
