//! The memory files lanes and the board live in: made by the coordinator,
//! sealed at their size, offered by their `/proc/<pid>/fd/<fd>` path, and
//! opened by a worker only after it has made sure the path names such a
//! file, made for this offer.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{MemfdFlags, OFlags, SealFlags};

use super::LaneError;

/// The header's first bytes, then the nonce (which the offer names), then
/// the proof (which only the file holds); slots start after the header.
pub(super) const MAGIC: &[u8; 16] = b"lazyavg-lane-v2\0";
pub(super) const NONCE_BYTES: usize = 16;
pub(super) const PROOF_BYTES: usize = 16;
pub(super) const HEADER_BYTES: usize = 4096;

/// How the files show in `/proc/<pid>/fd` ([`create`] names them).
const MEMFD_PREFIX: &str = "/memfd:lazyavg-lane-";

/// `statfs`'s type of shared memory (`TMPFS_MAGIC`), where memfds live
/// unless made of huge pages.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// The seals that make a mapping of the file safe: its size is fixed.
pub(super) const SIZE_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// A file this process made, mapped for reading and writing.
pub(super) struct Made {
    pub file: File,
    pub map: MmapRaw,
    /// Where another process on this machine opens it.
    pub path: String,
    pub nonce: [u8; NONCE_BYTES],
    pub proof: [u8; PROOF_BYTES],
}

/// Who may write a file [`create`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Writers {
    /// Its maker and whoever opens it (a lane: each side writes its slots).
    All,
    /// Its maker alone, through the mapping [`create`] returns; the file is
    /// sealed against any other (`F_SEAL_FUTURE_WRITE`), so that no other
    /// process can change what it holds (the board: the coordinator's weights).
    Maker,
}

/// Makes a memory file of `len` bytes (the header's included), sealed at
/// that size, with a fresh nonce and proof in its header; `name` shows in
/// this process's `/proc/<pid>/fd`. Its pages take memory only once written.
pub(super) fn create(name: &str, len: usize, writers: Writers) -> Result<Made, LaneError> {
    let (mut nonce, mut proof) = ([0u8; NONCE_BYTES], [0u8; PROOF_BYTES]);
    let name = format!("lazyavg-lane-{name}");
    let io = |action| {
        let path = name.clone();
        move |source| LaneError::Io { action, path, source }
    };
    getrandom::fill(&mut nonce)
        .and_then(|()| getrandom::fill(&mut proof))
        .map_err(io::Error::other)
        .map_err(io("draw a nonce for"))?;
    let fd = rustix::fs::memfd_create(&name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(io::Error::from)
        .map_err(io("create"))?;
    let file = File::from(fd);
    file.set_len(len as u64).map_err(io("size"))?;
    let header = [&MAGIC[..], &nonce, &proof].concat();
    file.write_all_at(&header, 0).map_err(io("write the header of"))?;
    let seal = |seals| rustix::fs::fcntl_add_seals(&file, seals).map_err(io::Error::from).map_err(io("seal"));
    seal(SIZE_SEALS)?;
    let map = MmapRaw::map_raw(&file).map_err(io("map"))?;
    if writers == Writers::Maker {
        // After the mapping: the seal keeps the writable mappings made before it.
        seal(SealFlags::FUTURE_WRITE)?;
    }
    seal(SealFlags::SEAL)?;
    let path = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
    Ok(Made { file, map, path, nonce, proof })
}

/// A file another process made, opened from its offer.
pub(super) struct Opened {
    pub file: File,
    pub map: MmapRaw,
    pub proof: [u8; PROOF_BYTES],
}

/// Opens the file offered at `path`, if it is a coordinator's descriptor
/// this process may open, a memory file [`create`] made, sealed at `len`
/// bytes, with `nonce` in its header; mapped for writing only if
/// `writable`. `what` names it in the reasons why not.
pub(super) fn open(path: &str, nonce: &[u8], len: usize, writable: bool, what: &str) -> Result<Opened, String> {
    if !is_descriptor_path(path) {
        return Err(format!("{path} is not a /proc/<pid>/fd/<fd> path"));
    }
    // A worker that does not see the coordinator's `/proc` (another
    // machine or process namespace) finds another process's descriptor
    // there, or none: it must not open a terminal or a device by
    // mistake. So it first takes hold of what the path names without
    // opening it (`O_PATH`), checks that it is a lane's memfd on
    // ordinary shared memory (huge pages could be taken away under the
    // mapping), and only then opens that same file.
    let cannot_open = |e: io::Error| format!("cannot open {path}: {e}");
    let handle =
        OpenOptions::new().read(true).custom_flags(OFlags::PATH.bits() as i32).open(path).map_err(cannot_open)?;
    let held = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let target = std::fs::read_link(&held).map_err(cannot_open)?;
    let on_tmpfs = rustix::fs::fstatfs(&handle).is_ok_and(|fs| fs.f_type as u64 == TMPFS_MAGIC);
    if !(target.to_string_lossy().starts_with(MEMFD_PREFIX) && on_tmpfs) {
        return Err(format!("{path} is not a {what} but {}", target.display()));
    }
    let file = OpenOptions::new().read(true).write(writable).open(&held).map_err(cannot_open)?;
    let sealed = rustix::fs::fcntl_get_seals(&file).is_ok_and(|seals| seals.contains(SIZE_SEALS));
    let sized = file.metadata().is_ok_and(|m| m.is_file() && m.len() == len as u64);
    let mut header = [0u8; MAGIC.len() + NONCE_BYTES + PROOF_BYTES];
    let found = sealed
        && sized
        && file.read_exact_at(&mut header, 0).is_ok()
        && header[..MAGIC.len()] == MAGIC[..]
        && header[MAGIC.len()..MAGIC.len() + NONCE_BYTES] == nonce[..];
    if !found {
        return Err(format!("{path} is not the {what} the coordinator made (another machine's?)"));
    }
    let options = MmapOptions::new();
    let map = if writable { options.map_raw(&file) } else { options.map_raw_read_only(&file) };
    let map = map.map_err(|e| format!("cannot map {path}: {e}"))?;
    let mut proof = [0; PROOF_BYTES];
    proof.copy_from_slice(&header[MAGIC.len() + NONCE_BYTES..]);
    Ok(Opened { file, map, proof })
}

/// Whether `path` is `/proc/<pid>/fd/<fd>` and nothing else.
fn is_descriptor_path(path: &str) -> bool {
    let number = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = path.split('/').collect();
    matches!(parts[..], ["", "proc", pid, "fd", fd] if number(pid) && number(fd))
}
