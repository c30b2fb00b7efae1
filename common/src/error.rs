//! The one error type of `lazyavg-common`.
//!
//! Every variant carries the file name and the numbers that explain it, so the
//! message alone tells a user what to fix (`train-labels-idx1-ubyte: 59999
//! labels but 60000 images`).

use std::path::PathBuf;

use crate::spec::InputShape;

/// Errors from loading data, model files and configuration, and from the math
/// when it is handed buffers of the wrong size.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{file}: {problem}")]
    Idx { file: String, problem: String },

    #[error("{file}: {labels} labels but {images} images")]
    CountMismatch { file: String, labels: usize, images: usize },

    #[error("{file}: SHA-256 is {actual}, expected {expected}")]
    HashMismatch { file: String, expected: String, actual: String },

    #[error("{path}: {problem}")]
    ModelFile { path: PathBuf, problem: String },

    #[error("invalid {field}: {problem}")]
    Config { field: &'static str, problem: String },

    /// A model description that cannot be built: `at` names the layer
    /// (`layer 3 (dense 0)`) or the part of the description.
    #[error("invalid model, {at}: {problem}")]
    Model { at: String, problem: String },

    /// A model that cannot take a data set's images.
    #[error("model expects {model} inputs, the data has {data} images")]
    InputMismatch { model: InputShape, data: InputShape },

    /// A model with no output for some of a data set's labels.
    #[error("model has {outputs} outputs, the data's labels go up to {highest}")]
    TooFewOutputs { outputs: usize, highest: usize },

    #[error("parameter buffer holds {actual} values but the architecture {architecture} needs {expected}")]
    ParamLength { architecture: String, expected: usize, actual: usize },

    /// Permutations, matching and merging: the message names the inputs and shapes.
    #[error("{0}")]
    Matching(String),

    #[error("could not fetch {file}; tried:\n{attempts}")]
    Fetch { file: String, attempts: String },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A malformed IDX file.
    pub fn idx(file: &str, problem: impl Into<String>) -> Self {
        Error::Idx { file: file.to_owned(), problem: problem.into() }
    }

    /// A model description refused at layer `layer` (1-based; 0 for the
    /// description as a whole, named by `name`).
    pub fn model(layer: usize, name: &str, problem: impl Into<String>) -> Self {
        let at = if layer == 0 { name.to_owned() } else { format!("layer {layer} ({name})") };
        Error::Model { at, problem: problem.into() }
    }

    /// A configuration value that fails validation.
    pub fn config(field: &'static str, problem: impl Into<String>) -> Self {
        Error::Config { field, problem: problem.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
