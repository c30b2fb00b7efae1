//! The model's architecture and its parameters as ONE contiguous f32 buffer.
//!
//! Layer `l` occupies `weight [out, in]` row-major, then `bias [out]`, right
//! after layer `l - 1`. Averaging, hashing, checkpointing and transport all see
//! a single `&[f32]`; the model and the file format use per-layer views.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The most parameters a model may have (16 GiB of f32): far beyond what
/// lazyavg trains, low enough that sizes never overflow.
pub const MAX_PARAMETERS: usize = 1 << 32;

/// Layer widths from input to output, e.g. `[784, 200, 200, 10]`; every
/// hidden layer is followed by a ReLU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Architecture {
    pub widths: Vec<usize>,
}

impl Architecture {
    /// An MLP from `inputs` through `hidden` to `outputs`; every width must be positive.
    pub fn mlp(inputs: usize, hidden: &[usize], outputs: usize) -> Result<Self> {
        let mut widths = Vec::with_capacity(hidden.len() + 2);
        widths.push(inputs);
        widths.extend_from_slice(hidden);
        widths.push(outputs);
        let arch = Architecture { widths };
        arch.check()?;
        Ok(arch)
    }

    /// How many values (weights and biases) the model has; `None` if that
    /// overflows `usize` (widths read from a file are untrusted).
    pub fn checked_len(&self) -> Option<usize> {
        self.widths.windows(2).try_fold(0usize, |n, w| w[0].checked_mul(w[1])?.checked_add(w[1])?.checked_add(n))
    }

    /// Rejects fewer than two layers of widths or a zero width.
    pub fn check(&self) -> Result<()> {
        if self.widths.len() < 2 {
            return Err(Error::config("architecture", format!("{self} needs at least an input and an output width")));
        }
        if self.widths.contains(&0) {
            return Err(Error::config("architecture", format!("{self} has a layer of width 0")));
        }
        if self.checked_len().is_none_or(|v| v > MAX_PARAMETERS) {
            return Err(Error::config("architecture", format!("{self} has more than {MAX_PARAMETERS} parameters")));
        }
        Ok(())
    }

    pub fn inputs(&self) -> usize {
        self.widths[0]
    }

    pub fn outputs(&self) -> usize {
        self.widths[self.widths.len() - 1]
    }

    /// The parameter layout of this architecture.
    pub fn layout(&self) -> Layout {
        let mut layers = Vec::with_capacity(self.widths.len() - 1);
        let mut offset = 0;
        for pair in self.widths.windows(2) {
            let (inputs, outputs) = (pair[0], pair[1]);
            let weight = offset..offset + inputs * outputs;
            let bias = weight.end..weight.end + outputs;
            offset = bias.end;
            layers.push(LayerLayout { inputs, outputs, weight, bias });
        }
        Layout { layers, len: offset }
    }

    /// Multiply-adds of one forward pass per sample, Σ in·out.
    pub fn macs_per_sample(&self) -> usize {
        self.widths.windows(2).map(|p| p[0] * p[1]).sum()
    }

    /// FLOP of one training step per sample: forward 2·Σ in·out, the weight
    /// gradients 2·Σ in·out, and every layer's input gradient but the first's.
    pub fn train_flop_per_sample(&self) -> usize {
        let first = self.widths[0] * self.widths[1];
        6 * self.macs_per_sample() - 2 * first
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.widths.iter().map(|w| w.to_string()).collect();
        f.write_str(&parts.join("-"))
    }
}

/// Where one layer's weight and bias live in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerLayout {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Range<usize>,
    pub bias: Range<usize>,
}

/// Where every layer lives in the flat buffer, and its total length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub layers: Vec<LayerLayout>,
    pub len: usize,
}

impl Layout {
    /// Fails unless `params` has exactly this layout's length.
    pub fn check_len(&self, arch: &Architecture, params: &[f32]) -> Result<()> {
        if params.len() != self.len {
            return Err(Error::ParamLength {
                architecture: arch.to_string(),
                expected: self.len,
                actual: params.len(),
            });
        }
        Ok(())
    }
}

/// Hex SHA-256 of the parameters' little-endian bytes: equal digests mean
/// bit-identical weights.
pub fn digest(params: &[f32]) -> String {
    let mut hasher = Sha256::new();
    for chunk in params.chunks(4096) {
        let mut bytes = [0u8; 4096 * 4];
        for (dst, v) in bytes.chunks_exact_mut(4).zip(chunk) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        hasher.update(&bytes[..chunk.len() * 4]);
    }
    hex::encode(hasher.finalize())
}

/// Index of the first non-finite value, if any.
pub fn first_non_finite(params: &[f32]) -> Option<usize> {
    params.iter().position(|v| !v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mlp_layout_and_flop_count() {
        let arch = Architecture::mlp(784, &[200, 200], 10).unwrap();
        let layout = arch.layout();
        assert_eq!(layout.len, 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10);
        assert_eq!(layout.layers[1].weight, 157_000..197_000);
        assert_eq!(layout.layers[2].bias, 199_200..199_210);
        assert_eq!(arch.train_flop_per_sample(), 879_200);
        assert_eq!(arch.to_string(), "784-200-200-10");
    }

    #[test]
    fn zero_width_and_wrong_length_are_refused() {
        assert!(Architecture::mlp(784, &[0], 10).is_err());
        let arch = Architecture::mlp(4, &[3], 2).unwrap();
        let err = arch.layout().check_len(&arch, &[0.0; 5]).unwrap_err().to_string();
        assert_eq!(err, "parameter buffer holds 5 values but the architecture 4-3-2 needs 23");
    }

    #[test]
    fn digest_tells_bits_apart() {
        assert_eq!(digest(&[1.0, 2.0]), digest(&[1.0, 2.0]));
        assert_ne!(digest(&[0.0]), digest(&[-0.0]));
        assert_eq!(first_non_finite(&[1.0, f32::NAN]), Some(1));
    }
}
