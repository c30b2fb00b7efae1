//! The passes of a [`crate::model::Network`]: one stage per layer that
//! computes something (dense, convolution, max-pooling), with the ReLU after
//! it, when there is one, fused into its output pass. Flatten moves no data
//! (every activation is already `[features, B]` in channel, row, column
//! order) and is no stage.
//!
//! A stage reads its input through [`Input`], which hides whether that is a
//! later activation (`[features, B]`) or the input batch (`[B, features]`),
//! and keeps what its backward pass needs from its forward pass (the
//! convolution's columns, the pooling's argmax) in its [`Scratch`].

use std::ops::Range;

use ndarray::{ArrayView4, ArrayViewMut4, ShapeBuilder};

use crate::conv::{self, Conv2dGeometry};
use crate::matmul::{Matrix, matmul};
use crate::model::{add_bias_to_rows, relu_in_place, row_sums};
use crate::params::LayerLayout;
use crate::pool::{self, MaxPoolGeometry};

/// One pass of the network.
#[derive(Debug, Clone)]
pub(crate) enum Stage {
    Dense(LayerLayout),
    Conv { geometry: Conv2dGeometry, weight: Range<usize>, bias: Range<usize> },
    MaxPool(MaxPoolGeometry),
}

/// What a stage keeps between its forward and backward pass, sized once for
/// a batch capacity.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scratch {
    columns: Vec<f32>,
    argmax: Vec<u32>,
}

/// A stage's input: `b` samples, `[features, B]`, or `[B, features]` for
/// the input batch (`batch_major`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Input<'a> {
    pub values: &'a [f32],
    pub b: usize,
    pub batch_major: bool,
}

impl<'a> Input<'a> {
    /// The input as `Aᵀ`, `[features, B]`, read in place in either layout.
    fn matrix(self, features: usize) -> Matrix<'a> {
        if self.batch_major {
            Matrix::new(self.values, self.b, features).t()
        } else {
            Matrix::new(self.values, features, self.b)
        }
    }

    /// The input as images indexed `[channel, y, x, sample]`.
    fn images(self, (channels, height, width): (usize, usize, usize)) -> ArrayView4<'a, f32> {
        let b = self.b;
        let len = channels * height * width * b;
        let strides = if self.batch_major {
            (height * width, width, 1, channels * height * width)
        } else {
            (height * width * b, width * b, b, 1)
        };
        ArrayView4::from_shape((channels, height, width, b).strides(strides), &self.values[..len])
            .expect("a stage's input holds its shape")
    }
}

/// `values` (`[features, B]`) as images indexed `[channel, y, x, sample]`.
fn images_mut(
    values: &mut [f32],
    (channels, height, width): (usize, usize, usize),
    b: usize,
) -> ArrayViewMut4<'_, f32> {
    let len = channels * height * width * b;
    ArrayViewMut4::from_shape((channels, height, width, b), &mut values[..len])
        .expect("a stage's input holds its shape")
}

impl Stage {
    /// Values per sample of the stage's input.
    pub fn inputs(&self) -> usize {
        match self {
            Stage::Dense(layer) => layer.inputs,
            Stage::Conv { geometry, .. } => geometry.in_channels * geometry.in_height * geometry.in_width,
            Stage::MaxPool(geometry) => geometry.channels * geometry.in_height * geometry.in_width,
        }
    }

    /// Values per sample of the stage's output.
    pub fn outputs(&self) -> usize {
        match self {
            Stage::Dense(layer) => layer.outputs,
            Stage::Conv { geometry, .. } => geometry.out_channels * geometry.out_pixels(),
            Stage::MaxPool(geometry) => geometry.out_len(),
        }
    }

    /// Multiply-adds of the forward pass per sample.
    pub fn macs_per_sample(&self) -> usize {
        match self {
            Stage::Dense(layer) => layer.inputs * layer.outputs,
            Stage::Conv { geometry, .. } => geometry.weight_len() * geometry.out_pixels(),
            Stage::MaxPool(_) => 0,
        }
    }

    /// The scratch this stage needs for batches of up to `capacity`.
    pub fn scratch(&self, capacity: usize) -> Scratch {
        match self {
            Stage::Dense(_) => Scratch::default(),
            Stage::Conv { geometry, .. } => {
                Scratch { columns: vec![0.0; geometry.workspace_len(capacity)], argmax: Vec::new() }
            }
            Stage::MaxPool(geometry) => Scratch { columns: Vec::new(), argmax: vec![0; geometry.out_len() * capacity] },
        }
    }

    /// The ranges of the stage's weight and bias; `None` for a pooling. Its
    /// output units (a dense layer's outputs, a convolution's channels) are
    /// the bias's entries, each with its block of the weight.
    pub fn parameters(&self) -> Option<(Range<usize>, Range<usize>)> {
        match self {
            Stage::Dense(layer) => Some((layer.weight.clone(), layer.bias.clone())),
            Stage::Conv { weight, bias, .. } => Some((weight.clone(), bias.clone())),
            Stage::MaxPool(_) => None,
        }
    }

    /// Writes the stage's output for `input` (`[outputs, B]`), through a ReLU if `relu`.
    pub fn forward(&self, params: &[f32], input: Input<'_>, output: &mut [f32], scratch: &mut Scratch, relu: bool) {
        let output = &mut output[..self.outputs() * input.b];
        match self {
            Stage::Dense(layer) => {
                // Zᵀ = W · Aᵀ   ([out, in] · [in, B])
                matmul(Matrix::from(layer.weight_view(params)), input.matrix(layer.inputs), output);
                bias_and_relu(output, &params[layer.bias.clone()], relu);
            }
            Stage::Conv { geometry, weight, bias } => {
                let images = input.images(conv_input(geometry));
                conv::forward(geometry, &params[weight.clone()], images, &mut scratch.columns, output);
                bias_and_relu(output, &params[bias.clone()], relu);
            }
            Stage::MaxPool(geometry) => {
                let images = input.images((geometry.channels, geometry.in_height, geometry.in_width));
                pool::forward(geometry, images, output, &mut scratch.argmax);
                if relu {
                    relu_in_place(output);
                }
            }
        }
    }

    /// From `delta`, the gradient of the loss with respect to the stage's
    /// output before its ReLU (`[outputs, B]`): writes the gradients of its
    /// parameters into `grads` and, when `below` is given, the gradient with
    /// respect to its input (`[inputs, B]`).
    pub fn backward(
        &self,
        params: &[f32],
        grads: &mut [f32],
        (input, delta): (Input<'_>, &[f32]),
        below: Option<&mut [f32]>,
        scratch: &mut Scratch,
    ) {
        let b = input.b;
        let delta = &delta[..self.outputs() * b];
        match self {
            Stage::Dense(layer) => {
                let delta_t = Matrix::new(delta, layer.outputs, b);
                // dW = deltaᵀ · A   ([out, B] · [B, in])
                matmul(delta_t, input.matrix(layer.inputs).t(), &mut grads[layer.weight.clone()]);
                row_sums(delta, &mut grads[layer.bias.clone()]);
                if let Some(below) = below {
                    // delta_belowᵀ = Wᵀ · deltaᵀ   ([in, out] · [out, B])
                    matmul(Matrix::from(layer.weight_view(params)).t(), delta_t, &mut below[..layer.inputs * b]);
                }
            }
            Stage::Conv { geometry, weight, bias } => {
                let (weight_grad, bias_grad) = two_ranges(grads, weight, bias);
                let below = below.map(|below| images_mut(below, conv_input(geometry), b));
                conv::backward(
                    geometry,
                    &params[weight.clone()],
                    (&mut scratch.columns, delta),
                    (weight_grad, bias_grad),
                    below,
                );
            }
            Stage::MaxPool(geometry) => {
                if let Some(below) = below {
                    let shape = (geometry.channels, geometry.in_height, geometry.in_width);
                    pool::backward(geometry, delta, &scratch.argmax, images_mut(below, shape, b));
                }
            }
        }
    }
}

/// A convolution's input shape, `(channels, height, width)`.
fn conv_input(geometry: &Conv2dGeometry) -> (usize, usize, usize) {
    (geometry.in_channels, geometry.in_height, geometry.in_width)
}

/// Adds each row's bias, and applies the ReLU in the same pass when asked.
fn bias_and_relu(output: &mut [f32], bias: &[f32], relu: bool) {
    if relu {
        add_bias_to_rows(output, bias, |z| z.max(0.0));
    } else {
        add_bias_to_rows(output, bias, |z| z);
    }
}

/// Two disjoint ranges of `values`, the first before the second.
fn two_ranges<'a>(
    values: &'a mut [f32],
    first: &Range<usize>,
    second: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    let (head, tail) = values.split_at_mut(second.start);
    (&mut head[first.clone()], &mut tail[..second.len()])
}

#[cfg(test)]
#[path = "stage_tests.rs"]
mod tests;
