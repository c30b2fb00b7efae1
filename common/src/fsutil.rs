//! Crash-safe file writes.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `path` so that a reader (or a restarted process after a crash) sees
/// either the old file or the complete new one, never a partial file: the bytes
/// go to a temporary file in the same directory, are flushed to disk, renamed
/// over `path`, and the directory entry is flushed too.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!("{}{}", temporary_prefix(&name), std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        write(&mut file)?;
        file.flush()?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| Error::io(path, e))
}

/// The start of the names of [`write_atomic`]'s temporary files for a file
/// named `name`; the writer's process id follows.
fn temporary_prefix(name: &str) -> String {
    format!(".{name}.tmp-")
}

/// Removes from `dir` the temporary files that [`write_atomic`] left of
/// each file in `names` when its process was killed between writing and
/// renaming (`.NAME.tmp-PID`); nothing ever reads them. For a process that
/// owns `dir` (a run directory), at its start, before it writes there itself.
/// Returns the files removed.
pub fn remove_stale_temporaries(dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let prefixes: Vec<String> = names.iter().map(|name| temporary_prefix(name)).collect();
    let is_stale_temporary = |file_name: &str| {
        prefixes.iter().any(|prefix| {
            file_name
                .strip_prefix(prefix.as_str())
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_str().is_some_and(is_stale_temporary) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// [`write_atomic`] for bytes already in memory.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |f| f.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        write_bytes_atomic(&path, b"first").unwrap();
        write_bytes_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temporaries_of_the_named_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let keep = ["x.bin", ".x.bin.tmp-", ".x.bin.tmp-12a", ".y.bin.tmp-7", "notes.tmp-3"];
        for name in keep.iter().chain(&[".x.bin.tmp-4242", ".z.json.tmp-1"]) {
            fs::write(dir.path().join(name), b"partial").unwrap();
        }
        let mut removed = remove_stale_temporaries(dir.path(), &["x.bin", "z.json"]).unwrap();
        removed.sort();
        assert_eq!(removed, [dir.path().join(".x.bin.tmp-4242"), dir.path().join(".z.json.tmp-1")]);
        let mut left: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut keep = keep.map(str::to_owned).to_vec();
        keep.sort();
        assert_eq!(left, keep);
        assert!(remove_stale_temporaries(&dir.path().join("missing"), &["x.bin"]).unwrap().is_empty());
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        write_bytes_atomic(&path, b"old").unwrap();
        let err = write_atomic(&path, |_| Err(std::io::Error::other("disk on fire"))).unwrap_err();
        let message = crate::telemetry::error_chain(&err);
        assert!(message.contains("x.bin") && message.contains("disk on fire"), "{message}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
