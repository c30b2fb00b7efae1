//! The coordinator's data: loaded (and fetched first if missing), the training
//! set packed once into the blob that workers download, the test set kept for
//! evaluation.

use std::sync::Arc;

use lazyavg_common::dataset::{self, DATA_FILES, Dataset};
use lazyavg_common::fetch::{self, FetchOptions};
use lazyavg_common::spec::InputShape;
use tracing::info;

use crate::config::CoordinatorConfig;
use crate::error::Result;
use crate::service::DatasetOffer;

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
    let blob = split.train.to_blob();
    let sha256 = dataset::sha256_hex(&blob);
    let (input, label_count) = (split.train.input_shape(), split.label_count());
    info!(train = split.train.len(), test = split.test.len(), %input, classes = label_count, sha256, "data loaded");
    Ok(Prepared {
        n_train: split.train.len(),
        input,
        label_count,
        offer: DatasetOffer { sha256, images: split.train.len() as u64, blob: blob.into() },
        test: Arc::new(split.test),
    })
}
