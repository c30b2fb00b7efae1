//! The run directory (`--out`): the files a run leaves there, and the rule
//! that a new run never writes over what an earlier one trained.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use lazyavg_common::fsutil;
use tracing::info;

use crate::checkpoint;
use crate::config::{CoordinatorConfig, Settings};
use crate::error::{Error, Result};

/// The resolved configuration; with `--resume`, the base of the settings.
pub const CONFIG_FILE: &str = "config.toml";
/// One JSON line per epoch (and per round with `--metrics-rounds`).
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The final model.
pub const MODEL_FILE: &str = "model.safetensors";
/// The URL this run's coordinator answers at, for `lazyavg status
/// --coordinator $(cat DIR/address)` (the port may be one the OS chose).
pub const ADDRESS_FILE: &str = "address";

/// Refuses to start a new run in `dir` if it holds the results of one: a
/// model, a checkpoint, or (unless `restartable`) a recorded epoch. What a run
/// leaves before its first epoch ends (its `config.toml`, round records in
/// `metrics.jsonl`) holds nothing trained and may be replaced; so may the
/// epochs of a restartable run that left no checkpoint to continue from.
pub fn ensure_no_results(dir: &Path, restartable: bool) -> Result<()> {
    let found = [MODEL_FILE, checkpoint::CURRENT, checkpoint::PREVIOUS]
        .into_iter()
        .find(|name| dir.join(name).exists())
        .or((!restartable && records_an_epoch(&dir.join(METRICS_FILE))).then_some(METRICS_FILE));
    match found {
        Some(file) => Err(Error::RunExists { dir: dir.to_path_buf(), file }),
        None => Ok(()),
    }
}

/// Whether a `metrics.jsonl` holds an epoch's record (not only rounds').
fn records_an_epoch(metrics: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(metrics) else { return false };
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .any(|record| record["kind"] == "epoch")
}

/// The files of a run directory written by [`fsutil::write_atomic`], whose
/// temporary files a killed coordinator may leave behind.
const WRITTEN_ATOMICALLY: [&str; 5] = [CONFIG_FILE, METRICS_FILE, MODEL_FILE, ADDRESS_FILE, checkpoint::CURRENT];

/// `runs/<prefix><UTC timestamp>`, e.g. `runs/2026-11-28T10-15-00Z`: where
/// a run's files go unless told otherwise. A second run started in the same
/// second gets `-2` (then `-3`, …) rather than the first one's directory.
pub fn timestamped_run_dir(prefix: &str) -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "-");
    let base = PathBuf::from("runs").join(format!("{prefix}{stamp}"));
    let (mut dir, mut n) = (base.clone(), 1);
    while dir.exists() {
        n += 1;
        dir = base.with_file_name(format!("{prefix}{stamp}-{n}"));
    }
    dir
}

/// Refuses, before anything listens, a new run whose `--out` holds an
/// earlier run's results (see [`ensure_no_results`]); a run without `--out`
/// gets a directory of its own.
pub fn check_out(config: &CoordinatorConfig) -> Result<()> {
    match &config.out {
        Some(dir) if !config.resume => ensure_no_results(dir, config.restartable),
        _ => Ok(()),
    }
}

/// Creates the run directory `dir`, removes what a killed coordinator left
/// half written there, and records `settings` in it, with `dir` as their
/// `out`: a run resumed from them continues here.
pub fn prepare(dir: &Path, settings: Settings) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for removed in fsutil::remove_stale_temporaries(dir, &WRITTEN_ATOMICALLY)? {
        info!(file = %removed.display(), "removed the temporary file of a write that never completed");
    }
    let settings = Settings { out: Some(dir.to_path_buf()), ..settings };
    let toml = toml::to_string(&settings).map_err(|e| Error::Config(e.to_string()))?;
    fsutil::write_bytes_atomic(&dir.join(CONFIG_FILE), toml.as_bytes())?;
    Ok(())
}

/// Writes [`ADDRESS_FILE`]: the URL of `addr` as a client on this machine
/// dials it (loopback for an unspecified address).
pub fn write_address(dir: &Path, addr: SocketAddr, tls: bool) -> Result<()> {
    let host = if addr.ip().is_unspecified() { SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()) } else { addr };
    let scheme = if tls { "https" } else { "http" };
    fsutil::write_bytes_atomic(&dir.join(ADDRESS_FILE), format!("{scheme}://{host}\n").as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_trained_results_keep_a_new_run_out() {
        let dir = tempfile::tempdir().unwrap();
        ensure_no_results(&dir.path().join("missing"), false).expect("a directory yet to be made");
        std::fs::write(dir.path().join(CONFIG_FILE), "epochs = 3\n").unwrap();
        std::fs::write(dir.path().join(METRICS_FILE), "{\"kind\":\"round\",\"epoch\":1}\n").unwrap();
        ensure_no_results(dir.path(), false).expect("a run that never finished an epoch holds nothing trained");
        std::fs::write(dir.path().join(METRICS_FILE), "{\"kind\":\"epoch\",\"epoch\":1}\n").unwrap();
        ensure_no_results(dir.path(), true).expect("a restartable run without a checkpoint starts over");
        for file in [METRICS_FILE, checkpoint::PREVIOUS, MODEL_FILE] {
            std::fs::write(dir.path().join(file), "{\"kind\":\"epoch\"}").unwrap();
            let err = ensure_no_results(dir.path(), false).expect_err(file).to_string();
            assert!(err.contains(&format!("({file})")) && err.contains("--resume"), "{err}");
        }
        assert!(ensure_no_results(dir.path(), true).is_err(), "a model or checkpoint is kept even then");
    }
}
