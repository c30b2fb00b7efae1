//! `--align`: before a worker's contribution enters a round's average, its
//! hidden units are matched to the weights the coordinator last broadcast
//! and permuted into their order (see `lazyavg_common::matching`).

use std::fmt;

/// How a contribution's hidden units are matched to the reference (`--align`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlignMethod {
    /// No matching: the plain average, bit for bit as without the flag.
    #[default]
    None,
    /// Weight matching: coordinate descent over the layers, on weights alone.
    Weights,
    /// Activation matching: correlations of the units' outputs on training images.
    Activations,
}

impl fmt::Display for AlignMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AlignMethod::None => "none",
            AlignMethod::Weights => "weights",
            AlignMethod::Activations => "activations",
        })
    }
}
