//! Checkpoints of a run, so a coordinator that crashes or is stopped can be
//! restarted with `--resume DIR` and go on where it was.
//!
//! A checkpoint is a model file (PyTorch can load it like `model.safetensors`)
//! whose metadata also records the epoch and, when taken mid-epoch, the images
//! of that epoch not yet trained, and the outer optimiser's velocity as an
//! extra tensor when it has one. Nothing else is needed: each epoch's
//! permutation derives from the seed and the epoch number alone, and the
//! configuration is the run directory's `config.toml`. The previous checkpoint
//! is kept beside the new one, and each is written atomically, so a crash at
//! any moment leaves at least one intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lazyavg_common::model_file::{self, Extras};
use lazyavg_common::spec::ModelSpec;
use lazyavg_common::telemetry::error_chain;
use tracing::warn;

use crate::error::{Error, Result};

/// The newest checkpoint of a run directory.
pub const CURRENT: &str = "checkpoint.safetensors";
/// The one before, kept in case the newest is damaged.
pub const PREVIOUS: &str = "checkpoint.prev.safetensors";
const EPOCH_KEY: &str = "lazyavg.epoch";
const REMAINING_KEY: &str = "lazyavg.remaining";
const ROUND_KEY: &str = "lazyavg.round";
const OUTER_VELOCITY: &str = "lazyavg.outer_velocity";

/// Where a run stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// With `remaining` empty: the last completed epoch. Otherwise: the epoch
    /// in progress, of which `remaining` are the images still to train.
    pub epoch: u64,
    pub remaining: Vec<u32>,
    /// With `remaining` not empty: the last round of `epoch` averaged into
    /// `params`. The resumed epoch numbers its rounds on from it, so each
    /// round record in `metrics.jsonl` names one round (0 otherwise, and in
    /// checkpoints written before it was recorded).
    pub round: u64,
    pub params: Vec<f32>,
    /// The outer optimiser's velocity (empty for plain averaging).
    pub outer_velocity: Vec<f32>,
}

impl Checkpoint {
    /// The epoch to train next and the images it still needs (`None`: all of them).
    pub fn next_epoch(&self) -> (u64, Option<&[u32]>) {
        if self.remaining.is_empty() { (self.epoch + 1, None) } else { (self.epoch, Some(&self.remaining)) }
    }
}

/// A failure made to happen in a checkpoint's write, after the newest
/// checkpoint became the previous one and before the new one is in place: how
/// tests reach the states a real failure or crash leaves (hidden flag
/// `--inject-checkpoint-fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The write fails, as on EIO: the run goes on without this checkpoint.
    Fail,
    /// The write stops for ever with its temporary file written, so that a
    /// test can kill the coordinator inside that window.
    Hang,
}

/// `--inject-checkpoint-fault EPOCH:fail|hang`: `fault` in the checkpoint of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectedFault {
    pub epoch: u64,
    pub fault: Fault,
}

impl std::str::FromStr for InjectedFault {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("expected EPOCH:fail or EPOCH:hang, got {s:?}");
        let (epoch, fault) = s.split_once(':').ok_or_else(bad)?;
        let epoch = epoch.parse().map_err(|_| bad())?;
        let fault = match fault {
            "fail" => Fault::Fail,
            "hang" => Fault::Hang,
            _ => return Err(bad()),
        };
        Ok(InjectedFault { epoch, fault })
    }
}

/// Writes `checkpoint` into `dir`, keeping the one before as the fallback.
pub fn save(dir: &Path, arch: &ModelSpec, checkpoint: &Checkpoint) -> Result<PathBuf> {
    save_with_fault(dir, arch, checkpoint, None)
}

/// [`save`], with `fault` (tests only) making the write fail or hang.
pub fn save_with_fault(dir: &Path, arch: &ModelSpec, checkpoint: &Checkpoint, fault: Option<Fault>) -> Result<PathBuf> {
    let current = dir.join(CURRENT);
    if current.exists() {
        std::fs::rename(&current, dir.join(PREVIOUS)).map_err(|e| Error::io(&current, e))?;
    }
    let remaining: Vec<String> = checkpoint.remaining.iter().map(u32::to_string).collect();
    let metadata = HashMap::from([
        (EPOCH_KEY.to_owned(), checkpoint.epoch.to_string()),
        (REMAINING_KEY.to_owned(), remaining.join(",")),
        (ROUND_KEY.to_owned(), checkpoint.round.to_string()),
    ]);
    let velocity =
        (!checkpoint.outer_velocity.is_empty()).then_some((OUTER_VELOCITY, checkpoint.outer_velocity.as_slice()));
    let encoded = model_file::encode(arch, &checkpoint.params, metadata, velocity)?;
    lazyavg_common::fsutil::write_atomic(&current, |file| {
        encoded.write_to(file)?;
        match fault {
            None => Ok(()),
            Some(Fault::Fail) => Err(std::io::Error::other("injected fault (--inject-checkpoint-fault)")),
            Some(Fault::Hang) => {
                file.sync_all()?;
                warn!(epoch = checkpoint.epoch, "injected fault: the checkpoint's write hangs before its rename");
                loop {
                    std::thread::park();
                }
            }
        }
    })?;
    Ok(current)
}

/// Whether `dir` holds a checkpoint to resume from (intact or not).
pub fn exists(dir: &Path) -> bool {
    dir.join(CURRENT).exists() || dir.join(PREVIOUS).exists()
}

/// The newest intact checkpoint in `dir` for `arch`, falling back (with a
/// warning) to the previous one when the newest is damaged or missing.
pub fn load(dir: &Path, arch: &ModelSpec) -> Result<Checkpoint> {
    let current = dir.join(CURRENT);
    match read(&current, arch) {
        Ok(checkpoint) => Ok(checkpoint),
        Err(err) => {
            let previous = dir.join(PREVIOUS);
            let fallback = read(&previous, arch).map_err(|prev_err| {
                let (err, prev_err) = (error_chain(&err), error_chain(&prev_err));
                Error::Config(format!("no usable checkpoint in {}: {err}; and {prev_err}", dir.display()))
            })?;
            if current.exists() {
                warn!(error = %error_chain(&err), fallback = %previous.display(), "latest checkpoint is damaged; resuming from the previous one");
            } else {
                // Renamed to the previous one before the write that failed or was cut short.
                warn!(missing = %current.display(), fallback = %previous.display(), "the latest checkpoint's write did not finish; resuming from the previous one");
            }
            Ok(fallback)
        }
    }
}

fn read(path: &Path, arch: &ModelSpec) -> Result<Checkpoint> {
    let (found, params, Extras { metadata, mut tensors }) = model_file::load_with_extras(path)?;
    let bad = |problem: String| Error::Config(format!("{}: {problem}", path.display()));
    if !found.same_network(arch) {
        return Err(bad(format!("holds a {found} model but the run's configuration makes a {arch}")));
    }
    let epoch = metadata
        .get(EPOCH_KEY)
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| bad(format!("metadata {EPOCH_KEY} is missing or not a number")))?;
    let remaining = match metadata.get(REMAINING_KEY).map(String::as_str) {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|i| i.parse::<u32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad(format!("metadata {REMAINING_KEY} is not a list of image indices")))?,
    };
    // `next_epoch` adds one to a finished epoch and the driver starts from the
    // one before a started epoch: refuse an epoch where either would overflow.
    if (remaining.is_empty() && epoch == u64::MAX) || (!remaining.is_empty() && epoch == 0) {
        return Err(bad(format!("metadata {EPOCH_KEY} = {epoch} is out of range")));
    }
    let round = match metadata.get(ROUND_KEY) {
        None => 0,
        Some(round) => round.parse().map_err(|_| bad(format!("metadata {ROUND_KEY} = {round:?} is not a number")))?,
    };
    let outer_velocity = tensors.remove(OUTER_VELOCITY).unwrap_or_default();
    if !outer_velocity.is_empty() && outer_velocity.len() != params.len() {
        return Err(bad(format!(
            "{OUTER_VELOCITY} has {} values for {} parameters",
            outer_velocity.len(),
            params.len()
        )));
    }
    Ok(Checkpoint { epoch, remaining, round, params, outer_velocity })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_injected_failure_leaves_the_previous_checkpoint_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &arch(), &checkpoint(1, vec![])).unwrap();
        let err = save_with_fault(dir.path(), &arch(), &checkpoint(2, vec![]), Some(Fault::Fail)).unwrap_err();
        assert!(error_chain(&err).contains("injected fault"), "{}", error_chain(&err));
        assert_eq!(load(dir.path(), &arch()).unwrap().epoch, 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only {PREVIOUS}");
    }

    #[test]
    fn injected_faults_parse() {
        assert_eq!("3:hang".parse(), Ok(InjectedFault { epoch: 3, fault: Fault::Hang }));
        assert_eq!("1:fail".parse(), Ok(InjectedFault { epoch: 1, fault: Fault::Fail }));
        for bad in ["3", "x:fail", "3:explode", ""] {
            assert!(bad.parse::<InjectedFault>().is_err(), "{bad}");
        }
    }

    fn arch() -> ModelSpec {
        ModelSpec::from_widths(&[4, 3, 2]).unwrap()
    }

    fn checkpoint(epoch: u64, remaining: Vec<u32>) -> Checkpoint {
        let len = arch().layout().unwrap().len;
        let outer_velocity = if epoch.is_multiple_of(2) { vec![0.25; len] } else { Vec::new() };
        let round = if remaining.is_empty() { 0 } else { 17 };
        Checkpoint { epoch, remaining, round, params: (0..len).map(|i| i as f32 / 7.0).collect(), outer_velocity }
    }

    #[test]
    fn round_trip_and_next_epoch() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &arch(), &checkpoint(3, vec![])).unwrap();
        let back = load(dir.path(), &arch()).unwrap();
        assert_eq!(back, checkpoint(3, vec![]));
        assert_eq!(back.next_epoch(), (4, None));
        save(dir.path(), &arch(), &checkpoint(4, vec![9, 1, 5])).unwrap();
        let back = load(dir.path(), &arch()).unwrap();
        assert_eq!(back.next_epoch(), (4, Some(&[9, 1, 5][..])));
        assert_eq!(back, checkpoint(4, vec![9, 1, 5]), "the outer velocity comes back too");
    }

    #[test]
    fn a_truncated_checkpoint_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &arch(), &checkpoint(1, vec![])).unwrap();
        save(dir.path(), &arch(), &checkpoint(2, vec![])).unwrap();
        let current = dir.path().join(CURRENT);
        let bytes = std::fs::read(&current).unwrap();
        std::fs::write(&current, &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(load(dir.path(), &arch()).unwrap().epoch, 1);
        std::fs::write(dir.path().join(PREVIOUS), b"garbage").unwrap();
        let err = load(dir.path(), &arch()).unwrap_err().to_string();
        assert!(err.contains("no usable checkpoint"), "{err}");
    }

    #[test]
    fn a_checkpoint_of_another_architecture_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &arch(), &checkpoint(1, vec![])).unwrap();
        let other = ModelSpec::from_widths(&[4, 5, 2]).unwrap();
        assert!(load(dir.path(), &other).unwrap_err().to_string().contains("4-3-2"));
    }
}
