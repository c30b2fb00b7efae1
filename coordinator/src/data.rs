//! The coordinator's data: loaded (and fetched first if missing), the training
//! set packed once into the blob that workers download, the test set kept for
//! evaluation.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use lazyavg_common::dataset::{self, DATA_FILES, Dataset};
use lazyavg_common::fetch::{self, FetchOptions};
use lazyavg_common::spec::InputShape;
use tracing::info;

use crate::config::CoordinatorConfig;
use crate::error::{Error, Result};

/// The training set as workers download it: the blob of [`Dataset::to_blob`],
/// spooled to an unlinked file in the temporary directory and read a chunk at
/// a time. The coordinator itself never trains on it, and in memory it would
/// cost as much as a model of 12M parameters (MNIST's 47 MB) for the whole run
/// while workers need it only when they join.
#[derive(Debug, Clone)]
pub struct DatasetOffer {
    pub sha256: String,
    pub images: u64,
    /// The blob's length in bytes.
    pub len: u64,
    spool: Arc<File>,
}

impl DatasetOffer {
    /// Writes `blob` to a fresh unlinked file in the temporary directory
    /// (`$TMPDIR`, else `/tmp`); the file goes when the last clone does.
    pub fn spool(blob: &[u8], images: u64) -> Result<Self> {
        let dir = std::env::temp_dir();
        let spool_error = |source| Error::Spool { dir: dir.clone(), bytes: blob.len(), source };
        let mut file = tempfile::tempfile_in(&dir).map_err(spool_error)?;
        // Flushed, so that a filesystem that reports a lack of room late
        // (NFS, quotas) refuses it now rather than a download mid-run.
        file.write_all(blob).and_then(|()| file.sync_data()).map_err(spool_error)?;
        Ok(DatasetOffer { sha256: dataset::sha256_hex(blob), images, len: blob.len() as u64, spool: Arc::new(file) })
    }

    /// The `len` bytes from `offset` (both within the blob), read off the
    /// async runtime.
    pub fn read(&self, offset: u64, len: usize) -> impl Future<Output = io::Result<Bytes>> + Send + use<> {
        let spool = Arc::clone(&self.spool);
        let read = tokio::task::spawn_blocking(move || {
            let mut data = vec![0; len];
            spool.read_exact_at(&mut data, offset)?;
            Ok(Bytes::from(data))
        });
        async move { read.await.map_err(io::Error::other)? }
    }
}

/// What the coordinator serves and evaluates on.
#[derive(Debug)]
pub struct Prepared {
    pub offer: DatasetOffer,
    pub test: Arc<Dataset>,
    pub n_train: usize,
    /// The shape of one training image.
    pub input: InputShape,
    /// The classes the labels of both sets need (the highest label + 1).
    pub label_count: usize,
}

/// Loads the data directory, fetching MNIST into it first if a file is
/// missing and `--fetch` (or the default directory) allows it, else refusing
/// with the missing file's name. Blocking: call it off the async runtime.
pub fn prepare(config: &CoordinatorConfig) -> Result<Prepared> {
    let dir = &config.data_dir;
    if let Some(missing) = DATA_FILES.iter().find_map(|f| dataset::find_file(dir, f).err()) {
        if !config.fetch {
            return Err(missing.into());
        }
        info!(dir = %dir.display(), "data missing; fetching MNIST");
        fetch::fetch(&FetchOptions::defaults(dir.clone()))?;
    }
    let (split, verification) = dataset::load_dir(dir, config.verify)?;
    verification.log();
    let offer = DatasetOffer::spool(&split.train.to_blob(), split.train.len() as u64)?;
    let (input, label_count) = (split.train.input_shape(), split.label_count());
    info!(train = split.train.len(), test = split.test.len(), %input, classes = label_count, sha256 = offer.sha256, "data loaded");
    Ok(Prepared { n_train: split.train.len(), input, label_count, offer, test: Arc::new(split.test) })
}
