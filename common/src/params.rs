//! The model's parameters as ONE contiguous f32 buffer, and its layout.
//!
//! Layer `l` occupies `weight [out, in]` row-major, then `bias [out]`, right
//! after layer `l - 1`. Averaging, hashing, checkpointing and transport all see
//! a single `&[f32]`; the model and the file format use per-layer views.

use std::fmt;
use std::ops::Range;

use ndarray::{ArrayView1, ArrayView2, ArrayViewD};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The most parameters a model may have (16 GiB of f32): far beyond what
/// lazyavg trains, low enough that sizes never overflow.
pub const MAX_PARAMETERS: usize = 1 << 32;

/// One named tensor of the model: its name as PyTorch's `nn.Sequential`
/// names it (`2.weight`), its shape, where it lives in the flat buffer, and
/// the index of the layer that owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLayout {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
    pub layer: usize,
}

/// Where one dense layer's weight (`[outputs, inputs]`) and bias live in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerLayout {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Range<usize>,
    pub bias: Range<usize>,
}

impl LayerLayout {
    /// The weight in `params`, `[outputs, inputs]`, as a view.
    pub fn weight_view<'a>(&self, params: &'a [f32]) -> ArrayView2<'a, f32> {
        ArrayView2::from_shape((self.outputs, self.inputs), &params[self.weight.clone()]).expect("the layout's shape")
    }

    /// The bias in `params`, `[outputs]`, as a view.
    pub fn bias_view<'a>(&self, params: &'a [f32]) -> ArrayView1<'a, f32> {
        ArrayView1::from(&params[self.bias.clone()])
    }
}

impl TensorLayout {
    /// This tensor in `params`, of its shape, as a view.
    pub fn view<'a>(&self, params: &'a [f32]) -> ArrayViewD<'a, f32> {
        ArrayViewD::from_shape(self.shape.as_slice(), &params[self.range.clone()]).expect("the layout's shape")
    }
}

/// Every tensor of a model, in buffer order, and the buffer's length;
/// derived from a [`crate::spec::ModelSpec`], never written by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub tensors: Vec<TensorLayout>,
    /// The dense layers' weight and bias, in order (what the model's passes read).
    pub layers: Vec<LayerLayout>,
    pub len: usize,
}

impl Layout {
    /// The layout of `tensors` (contiguous, in order) over a buffer of `len`.
    pub fn new(tensors: Vec<TensorLayout>, len: usize) -> Self {
        let layers = tensors
            .windows(2)
            .filter_map(|pair| match (&pair[0], &pair[1]) {
                (w, b) if w.layer == b.layer && w.shape.len() == 2 && b.shape == [w.shape[0]] => Some(LayerLayout {
                    inputs: w.shape[1],
                    outputs: w.shape[0],
                    weight: w.range.clone(),
                    bias: b.range.clone(),
                }),
                _ => None,
            })
            .collect();
        Layout { tensors, layers, len }
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorLayout> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Fails unless `params` has exactly this layout's length.
    pub fn check_len(&self, model: &impl fmt::Display, params: &[f32]) -> Result<()> {
        if params.len() != self.len {
            return Err(Error::ParamLength {
                architecture: model.to_string(),
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
    use crate::spec::ModelSpec;

    #[test]
    fn default_mlp_layout_and_flop_count() {
        let spec = ModelSpec::from_widths(&[784, 200, 200, 10]).unwrap();
        let layout = spec.layout().unwrap();
        assert_eq!(layout.len, 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10);
        assert_eq!(layout.layers[1].weight, 157_000..197_000);
        assert_eq!(layout.layers[2].bias, 199_200..199_210);
        let names: Vec<&str> = layout.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]);
        assert_eq!(layout.tensor("2.weight").unwrap().shape, [200, 200]);
        let params: Vec<f32> = (0..layout.len).map(|i| i as f32).collect();
        let w = layout.layers[1].weight_view(&params);
        assert_eq!((w.dim(), w[[2, 3]]), ((200, 200), (157_000 + 2 * 200 + 3) as f32));
        assert_eq!(layout.tensor("4.bias").unwrap().view(&params).shape(), [10]);
        assert_eq!(spec.build().unwrap().train_flop_per_sample(), 879_200);
        assert_eq!(spec.to_string(), "784-200-200-10");
    }

    #[test]
    fn wrong_length_is_refused() {
        let spec = ModelSpec::from_widths(&[4, 3, 2]).unwrap();
        let err = spec.layout().unwrap().check_len(&spec, &[0.0; 5]).unwrap_err().to_string();
        assert_eq!(err, "parameter buffer holds 5 values but the architecture 4-3-2 needs 23");
    }

    #[test]
    fn digest_tells_bits_apart() {
        assert_eq!(digest(&[1.0, 2.0]), digest(&[1.0, 2.0]));
        assert_ne!(digest(&[0.0]), digest(&[-0.0]));
        assert_eq!(first_non_finite(&[1.0, f32::NAN]), Some(1));
    }
}
