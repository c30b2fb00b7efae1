//! Datasets in memory, and loading the four MNIST-layout IDX files from a directory.
//!
//! The images' shape comes from the files' headers (one channel of rows ×
//! columns, or channels × rows × columns) and the class count from the
//! labels, so Fashion-MNIST, EMNIST or a converted colour set load as MNIST does.
//!
//! Images stay u8 (one contiguous buffer, 47 MB for MNIST's training set);
//! a minibatch is converted to f32 in [0, 1] only when it is used.

use std::fs;
use std::path::{Path, PathBuf};

use multiversion::multiversion;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::idx::{self, Images};
use crate::spec::InputShape;

/// One of the four files of an MNIST-layout directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFile {
    /// The file name without `.gz`.
    pub name: &'static str,
    /// SHA-256 of MNIST's decompressed file.
    pub mnist_sha256: &'static str,
}

pub const TRAIN_IMAGES: DataFile = DataFile {
    name: "train-images-idx3-ubyte",
    mnist_sha256: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
};
pub const TRAIN_LABELS: DataFile = DataFile {
    name: "train-labels-idx1-ubyte",
    mnist_sha256: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
};
pub const TEST_IMAGES: DataFile = DataFile {
    name: "t10k-images-idx3-ubyte",
    mnist_sha256: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
};
pub const TEST_LABELS: DataFile = DataFile {
    name: "t10k-labels-idx1-ubyte",
    mnist_sha256: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
};
pub const DATA_FILES: [DataFile; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];

/// Labelled images: `len()` images of `input_shape()` pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    shape: InputShape,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl Dataset {
    /// Pairs images with labels; `label_file` names the labels in the error if the counts differ.
    pub fn new(images: Images, labels: Vec<u8>, label_file: &str) -> Result<Self> {
        if labels.len() != images.count {
            return Err(Error::CountMismatch {
                file: label_file.to_owned(),
                labels: labels.len(),
                images: images.count,
            });
        }
        Ok(Dataset { shape: images.shape, pixels: images.pixels, labels })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image: the model's input width.
    pub fn image_len(&self) -> usize {
        self.shape.len()
    }

    /// The shape of one image as a model's input, channels × rows × columns.
    pub fn input_shape(&self) -> InputShape {
        self.shape
    }

    /// The classes the labels need: the highest label + 1 (0 for no images).
    pub fn label_count(&self) -> usize {
        self.labels.iter().max().map_or(0, |&l| usize::from(l) + 1)
    }

    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Writes the images at `indices` as f32 in [0, 1] into `x` (row-major,
    /// `indices.len() × image_len()`) and their labels into `y`.
    ///
    /// Panics if an index is out of range or the buffers are too small: callers
    /// hold indices drawn from `0..len()` and buffers sized for the batch.
    ///
    /// A shuffled batch reads images scattered over the whole set (47 MB for
    /// MNIST, more than the caches hold), so each image is requested from
    /// memory a few images before it is converted: the loads overlap instead of
    /// each one stalling the conversion.
    pub fn fill_batch(&self, indices: impl ExactSizeIterator<Item = usize> + Clone, x: &mut [f32], y: &mut [u8]) {
        /// How many images ahead to prefetch: enough to cover a memory round
        /// trip with the conversion of the images in between.
        const PREFETCH_AHEAD: usize = 4;
        /// Asks the CPU to start loading `bytes` into its caches; a hint, not
        /// a load, so it never faults, and a no-op on other architectures.
        fn prefetch(bytes: &[u8]) {
            #[cfg(target_arch = "x86_64")]
            for line in bytes.chunks(64) {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                // SAFETY: a prefetch reads nothing the program can observe and
                // never faults; the address lies inside `bytes` regardless.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = bytes;
        }
        let width = self.image_len();
        let mut ahead = indices.clone().skip(PREFETCH_AHEAD);
        for (row, i) in indices.enumerate() {
            if let Some(next) = ahead.next() {
                prefetch(&self.pixels[next * width..(next + 1) * width]);
            }
            to_unit_interval(&self.pixels[i * width..(i + 1) * width], &mut x[row * width..(row + 1) * width]);
            y[row] = self.labels[i];
        }
    }

    /// The dataset as one byte blob (the images IDX file followed by the labels
    /// IDX file), the form in which the coordinator ships it to workers.
    pub fn to_blob(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.pixels.len() + 8 + self.labels.len());
        idx::encode_images_into(&mut out, self.len(), self.shape, &self.pixels);
        idx::encode_into(&mut out, idx::LABELS_MAGIC, &[self.len() as u32], &self.labels);
        out
    }

    /// Parses a blob made by [`Dataset::to_blob`], with the IDX checks.
    pub fn from_blob(name: &str, mut blob: Vec<u8>) -> Result<Self> {
        let images_len = idx::images_header(name, &blob)?.file_len;
        if images_len > blob.len() {
            return Err(Error::idx(name, format!("images of {images_len} bytes do not fit in {} bytes", blob.len())));
        }
        let labels = blob.split_off(images_len);
        let images = idx::parse_images(name, blob)?;
        let labels = idx::parse_labels(name, labels)?;
        Dataset::new(images, labels, name)
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Training and test sets of one directory.
#[derive(Debug, Clone)]
pub struct DataSplit {
    pub train: Dataset,
    pub test: Dataset,
}

impl DataSplit {
    /// The classes the labels of both sets need: a test label the training
    /// set lacks still needs its output.
    pub fn label_count(&self) -> usize {
        self.train.label_count().max(self.test.label_count())
    }
}

/// What `--verify` concluded about a directory's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Not asked for.
    Skipped,
    /// All four files match MNIST's published hashes.
    Mnist,
    /// All four files match the directory's own `SHA256SUMS`.
    Sha256Sums,
    /// No file is MNIST and there is no `SHA256SUMS`: another dataset of the
    /// same layout (e.g. Fashion-MNIST), whose hashes we cannot know.
    UnknownDataset,
    /// Not asked for, of files that are not MNIST's shape (their sizes, as
    /// train, test, image): the one case where hashing is not needed to see
    /// that the data is not MNIST. Files of MNIST's exact shape
    /// (Fashion-MNIST's too) are not told apart without `--verify`.
    SkippedNotMnist { train: usize, test: usize, image: InputShape },
}

/// MNIST's shape: training images, test images, one image.
const MNIST_SHAPE: (usize, usize, InputShape) = (60_000, 10_000, InputShape { channels: 1, height: 28, width: 28 });

impl Verification {
    /// Says in one log line what the check found.
    pub fn log(&self) {
        match self {
            Verification::Skipped => {}
            Verification::Mnist => tracing::info!("data verified: SHA-256 matches MNIST"),
            Verification::Sha256Sums => tracing::info!("data verified against the directory's SHA256SUMS"),
            Verification::UnknownDataset => {
                tracing::warn!("hash check skipped: these files are not MNIST and the directory has no SHA256SUMS")
            }
            &Verification::SkippedNotMnist { train, test, image } => tracing::info!(
                train,
                test,
                %image,
                "these files are not MNIST; no hash check was made (--verify checks them against the directory's SHA256SUMS)"
            ),
        }
    }
}

/// The path of `file` in `dir`, raw or `.gz` (the content decides how it is read).
pub fn find_file(dir: &Path, file: &DataFile) -> Result<PathBuf> {
    let raw = dir.join(file.name);
    let gz = dir.join(format!("{}.gz", file.name));
    [raw.clone(), gz.clone()].into_iter().find(|p| p.is_file()).ok_or_else(|| {
        Error::io(
            &raw,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("not found (nor {}); run `lazyavg fetch-data --dir {}`", gz.display(), dir.display()),
            ),
        )
    })
}

/// Reads and decompresses one data file.
pub fn read_file(dir: &Path, file: &DataFile) -> Result<Vec<u8>> {
    let path = find_file(dir, file)?;
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    idx::decompress(file.name, bytes)
}

/// Loads the four files of `dir`. With `verify`, checks their SHA-256 (see
/// [`check_hashes`]) before parsing.
pub fn load_dir(dir: &Path, verify: bool) -> Result<(DataSplit, Verification)> {
    let contents = DATA_FILES.iter().map(|f| read_file(dir, f)).collect::<Result<Vec<_>>>()?;
    let verification = if verify {
        let sums = read_sha256sums(dir)?;
        check_hashes(&DATA_FILES, &contents, sums.as_deref())?
    } else {
        Verification::Skipped
    };
    let [train_images, train_labels, test_images, test_labels]: [Vec<u8>; 4] =
        contents.try_into().expect("one content per data file");
    let train = Dataset::new(
        idx::parse_images(TRAIN_IMAGES.name, train_images)?,
        idx::parse_labels(TRAIN_LABELS.name, train_labels)?,
        TRAIN_LABELS.name,
    )?;
    let test = Dataset::new(
        idx::parse_images(TEST_IMAGES.name, test_images)?,
        idx::parse_labels(TEST_LABELS.name, test_labels)?,
        TEST_LABELS.name,
    )?;
    let shape = (train.len(), test.len(), train.shape);
    let verification = match verification {
        Verification::Skipped if shape != MNIST_SHAPE => {
            Verification::SkippedNotMnist { train: shape.0, test: shape.1, image: shape.2 }
        }
        verified => verified,
    };
    if train.shape != test.shape {
        return Err(Error::idx(
            TEST_IMAGES.name,
            format!("images are {} but training images are {}", test.shape, train.shape),
        ));
    }
    Ok((DataSplit { train, test }, verification))
}

/// `SHA256SUMS` of `dir` as (hash, file name) pairs, if the file exists.
fn read_sha256sums(dir: &Path) -> Result<Option<Vec<(String, String)>>> {
    let path = dir.join("SHA256SUMS");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let pairs = text
        .lines()
        .filter_map(|line| line.split_once(char::is_whitespace))
        .map(|(hash, name)| (hash.trim().to_lowercase(), name.trim().trim_start_matches('*').to_owned()))
        .collect();
    Ok(Some(pairs))
}

/// Verifies decompressed contents of `files`. A `SHA256SUMS` listing is
/// authoritative where it names a file. Without one, the files must all be
/// MNIST's (verified) or none of them (an unknown dataset: the check is
/// skipped, and the caller says so); a mix means a damaged MNIST file.
pub fn check_hashes(
    files: &[DataFile],
    contents: &[Vec<u8>],
    sums: Option<&[(String, String)]>,
) -> Result<Verification> {
    let actual: Vec<String> = contents.iter().map(|c| sha256_hex(c)).collect();
    if let Some(sums) = sums {
        let listed: Vec<_> = files
            .iter()
            .zip(&actual)
            .filter_map(|(f, a)| sums.iter().find(|(_, n)| n == f.name).map(|(h, _)| (f, h, a)))
            .collect();
        if listed.len() == files.len() {
            for (file, expected, actual) in listed {
                if expected != actual {
                    return Err(hash_mismatch(file.name, expected, actual));
                }
            }
            return Ok(Verification::Sha256Sums);
        }
    }
    let matches = files.iter().zip(&actual).filter(|(f, a)| f.mnist_sha256 == a.as_str()).count();
    if matches == files.len() {
        return Ok(Verification::Mnist);
    }
    if matches == 0 {
        return Ok(Verification::UnknownDataset);
    }
    let (file, actual) = files.iter().zip(&actual).find(|(f, a)| f.mnist_sha256 != a.as_str()).expect("a mismatch");
    Err(hash_mismatch(file.name, file.mnist_sha256, actual))
}

fn hash_mismatch(file: &str, expected: &str, actual: &str) -> Error {
    Error::HashMismatch { file: file.to_owned(), expected: expected.to_owned(), actual: actual.to_owned() }
}

/// Pixels scaled from 0–255 to [0, 1]. Compiled again for AVX2, chosen at
/// run time, where each instruction converts eight pixels instead of four.
#[multiversion(targets("x86_64+avx2"))]
fn to_unit_interval(pixels: &[u8], dst: &mut [f32]) {
    for (dst, &p) in dst.iter_mut().zip(pixels) {
        *dst = f32::from(p) * (1.0 / 255.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::tests::idx_bytes;

    fn write_dir(dir: &Path, n_train: u32, n_train_labels: u32) {
        let px = |n: u32| vec![7u8; (n * 4 * 4) as usize];
        let lb = |n: u32| (0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>();
        fs::write(dir.join(TRAIN_IMAGES.name), idx_bytes(idx::IMAGES_MAGIC, &[n_train, 4, 4], &px(n_train))).unwrap();
        fs::write(dir.join(TRAIN_LABELS.name), idx_bytes(idx::LABELS_MAGIC, &[n_train_labels], &lb(n_train_labels)))
            .unwrap();
        fs::write(dir.join(TEST_IMAGES.name), idx_bytes(idx::IMAGES_MAGIC, &[3, 4, 4], &px(3))).unwrap();
        fs::write(dir.join(TEST_LABELS.name), idx_bytes(idx::LABELS_MAGIC, &[3], &lb(3))).unwrap();
    }

    #[test]
    fn loads_a_directory_of_another_dataset_and_notes_unknown_hashes() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), 5, 5);
        let (split, verification) = load_dir(dir.path(), true).unwrap();
        assert_eq!((split.train.len(), split.test.len(), split.train.image_len()), (5, 3, 16));
        assert_eq!(verification, Verification::UnknownDataset);
    }

    #[test]
    fn unverified_files_of_another_shape_are_noted_as_not_mnist() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), 5, 5);
        let (_, verification) = load_dir(dir.path(), false).unwrap();
        let image = InputShape { channels: 1, height: 4, width: 4 };
        assert_eq!(verification, Verification::SkippedNotMnist { train: 5, test: 3, image });
    }

    #[test]
    fn mismatched_counts_name_the_labels_file() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), 6, 5);
        let err = load_dir(dir.path(), false).unwrap_err().to_string();
        assert_eq!(err, "train-labels-idx1-ubyte: 5 labels but 6 images");
    }

    #[test]
    fn missing_file_says_how_to_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = crate::telemetry::error_chain(&load_dir(dir.path(), false).unwrap_err());
        assert!(err.contains("train-images-idx3-ubyte") && err.contains("fetch-data"), "{err}");
    }

    #[test]
    fn sha256sums_listing_catches_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), 5, 5);
        let sums: String = DATA_FILES
            .iter()
            .map(|f| format!("{}  {}\n", sha256_hex(&fs::read(dir.path().join(f.name)).unwrap()), f.name))
            .collect();
        fs::write(dir.path().join("SHA256SUMS"), sums).unwrap();
        assert_eq!(load_dir(dir.path(), true).unwrap().1, Verification::Sha256Sums);
        write_dir(dir.path(), 6, 6);
        let err = load_dir(dir.path(), true).unwrap_err().to_string();
        assert!(err.starts_with("train-images-idx3-ubyte: SHA-256 is"), "{err}");
    }

    #[test]
    fn blob_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), 5, 5);
        let (split, _) = load_dir(dir.path(), false).unwrap();
        let back = Dataset::from_blob("blob", split.train.to_blob()).unwrap();
        assert_eq!(back, split.train);
        assert!(Dataset::from_blob("blob", vec![0; 20]).is_err());
    }

    /// Writes a directory of rank-4 images of `train_shape` (training) and
    /// `test_shape` (test), labelled `0..classes` in turn.
    fn write_channel_dir(dir: &Path, train_shape: [u32; 3], test_shape: [u32; 3], classes: u8) {
        let write = |file: &DataFile, labels: &DataFile, n: u32, [c, h, w]: [u32; 3]| {
            let pixels: Vec<u8> = (0..n * c * h * w).map(|i| i as u8).collect();
            let magic = idx::CHANNEL_IMAGES_MAGIC;
            fs::write(dir.join(file.name), idx_bytes(magic, &[n, c, h, w], &pixels)).unwrap();
            let lb: Vec<u8> = (0..n).map(|i| i as u8 % classes).collect();
            fs::write(dir.join(labels.name), idx_bytes(idx::LABELS_MAGIC, &[n], &lb)).unwrap();
        };
        write(&TRAIN_IMAGES, &TRAIN_LABELS, 12, train_shape);
        write(&TEST_IMAGES, &TEST_LABELS, 4, test_shape);
    }

    #[test]
    fn loads_images_of_several_channels_and_counts_classes_from_the_labels() {
        let dir = tempfile::tempdir().unwrap();
        write_channel_dir(dir.path(), [3, 2, 5], [3, 2, 5], 6);
        let (split, verification) = load_dir(dir.path(), false).unwrap();
        let shape = InputShape { channels: 3, height: 2, width: 5 };
        assert_eq!((split.train.input_shape(), split.train.image_len()), (shape, 30));
        assert_eq!(verification, Verification::SkippedNotMnist { train: 12, test: 4, image: shape });
        // The test set holds labels 0..=3 only; the training set's 5 counts.
        assert_eq!((split.train.label_count(), split.test.label_count(), split.label_count()), (6, 4, 6));
        let back = Dataset::from_blob("blob", split.train.to_blob()).unwrap();
        assert_eq!(back, split.train);
        let (mut x, mut y) = (vec![0.0; 30], vec![0; 1]);
        split.train.fill_batch([1].into_iter(), &mut x, &mut y);
        assert_eq!(((x[0] * 255.0).round(), y[0]), (30.0, 1), "image 1 starts at pixel 30");
    }

    #[test]
    fn test_images_of_another_shape_are_refused_with_both_shapes() {
        let dir = tempfile::tempdir().unwrap();
        write_channel_dir(dir.path(), [3, 2, 5], [1, 2, 5], 6);
        let err = load_dir(dir.path(), false).unwrap_err().to_string();
        assert_eq!(err, "t10k-images-idx3-ubyte: images are 1x2x5 but training images are 3x2x5");
    }

    #[test]
    fn batches_are_scaled_to_unit_range() {
        let images = Images { count: 2, shape: InputShape::flat(2), pixels: vec![0, 255, 51, 102] };
        let ds = Dataset::new(images, vec![3, 4], "l").unwrap();
        let (mut x, mut y) = (vec![0.0; 4], vec![0; 2]);
        ds.fill_batch([1, 0].into_iter(), &mut x, &mut y);
        let expected = [0.2, 0.4, 0.0, 1.0];
        assert!(x.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-7), "{x:?}");
        assert_eq!(y, vec![4, 3]);
    }
}
