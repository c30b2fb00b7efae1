//! The 2-D convolution's arithmetic, PyTorch's `Conv2d` with a square kernel,
//! dilation 1 and one group, as im2col feeding the same matrix kernel as the
//! dense layers ([`matmul`]).
//!
//! Layout. Activations between layers are `[features, B]` as the MLP's are
//! (sample `s` is column `s`), with features in PyTorch's channel, row,
//! column order, so that a flatten layer moves no data. A layer reads its
//! input through an [`ArrayView4`] indexed `[channel, y, x, sample]` with any
//! strides, which serves both that layout and the input batch (`[B, features]`).
//! The columns are `[patch, (y, x, sample)]`, `patch = in_channels · k · k`
//! in the weight's `[out, in, kh, kw]` order, so that one product
//! `W [out, patch] · columns` is the output, `[(out, y, x), B]`, with no
//! reordering; its gradients are two more products over the same buffer.

use std::ops::Range;

use ndarray::{ArrayView2, ArrayView4, ArrayViewMut2, ArrayViewMut4, Axis, Slice, s};

use crate::matmul::{Matrix, matmul, matmul_transposed};
use crate::model::row_sums;
use crate::winograd;

/// How a convolution's arithmetic is arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Columns of input patches and one matrix product ([`im2col`]).
    Im2col,
    /// Winograd's minimal filtering: transformed tiles and 64 smaller
    /// products, about a fifth of the multiplications (stride 1, kernels 3–6).
    Winograd,
}

/// The shapes of one convolution: `in_channels × in_height × in_width`
/// images to `out_channels × out_height() × out_width()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub in_channels: usize,
    pub in_height: usize,
    pub in_width: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// Fails naming the first of `sizes` that is zero: a layer's sizes must all
/// be at least 1.
pub(crate) fn all_positive(sizes: &[(&str, usize)]) -> Result<(), String> {
    match sizes.iter().find(|(_, n)| *n == 0) {
        Some((what, _)) => Err(format!("{what} must be at least 1, got 0")),
        None => Ok(()),
    }
}

impl Conv2dGeometry {
    /// Checks that every size is positive and that the kernel fits the
    /// padded input, with the numbers in the message.
    pub fn validate(&self) -> Result<(), String> {
        all_positive(&[
            ("input channels", self.in_channels),
            ("input height", self.in_height),
            ("input width", self.in_width),
            ("output channels", self.out_channels),
            ("kernel", self.kernel),
            ("stride", self.stride),
        ])?;
        let (height, width) = (self.in_height + 2 * self.padding, self.in_width + 2 * self.padding);
        if self.kernel > height.min(width) {
            return Err(format!(
                "a {k}×{k} kernel does not fit a {h}×{w} input padded by {p} ({height}×{width})",
                k = self.kernel,
                h = self.in_height,
                w = self.in_width,
                p = self.padding,
            ));
        }
        Ok(())
    }

    pub fn out_height(&self) -> usize {
        (self.in_height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub fn out_width(&self) -> usize {
        (self.in_width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Values of one output channel of one image.
    pub fn out_pixels(&self) -> usize {
        self.out_height() * self.out_width()
    }

    /// Inputs seen by one output value: the weight's row length.
    pub fn patch(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    pub fn weight_len(&self) -> usize {
        self.out_channels * self.patch()
    }

    /// Floats of the columns buffer for a batch of `b`: `[patch, out_pixels · b]`.
    pub fn columns_len(&self, b: usize) -> usize {
        self.patch() * self.out_pixels() * b
    }

    /// The faster algorithm for this geometry: Winograd where it applies and
    /// the layer has 4 input channels or more, so that its 64 products have
    /// something to sum over. Measured (docs/performance.md): 3–6× slower
    /// than im2col with 1 channel, 1.4–1.5× faster with LeNet-5's 6, 2.3×
    /// with the FedAvg CNN's 32. A first layer of grey or colour images (1
    /// or 3 channels) stays with im2col: it reads the input batch, whose
    /// samples are not adjacent, so the transforms would gather each value.
    pub fn algorithm(&self) -> Algorithm {
        const WINOGRAD_MIN_IN_CHANNELS: usize = 4;
        if winograd::supports(self) && self.in_channels >= WINOGRAD_MIN_IN_CHANNELS {
            Algorithm::Winograd
        } else {
            Algorithm::Im2col
        }
    }

    /// Whether `algorithm` can compute this geometry (im2col always can).
    pub fn supports(&self, algorithm: Algorithm) -> bool {
        algorithm == Algorithm::Im2col || winograd::supports(self)
    }

    /// Floats of the workspace [`forward`] and [`backward`] need for a batch of `b`.
    pub fn workspace_len(&self, b: usize) -> usize {
        self.workspace_len_for(self.algorithm(), b)
    }

    /// Floats of the workspace of `algorithm`: im2col's columns, or
    /// Winograd's transformed tiles.
    pub fn workspace_len_for(&self, algorithm: Algorithm, b: usize) -> usize {
        match algorithm {
            Algorithm::Im2col => self.columns_len(b),
            Algorithm::Winograd => winograd::workspace_len(self, b),
        }
    }

    /// The outputs `o` (along one axis of `out_len`) whose input
    /// `o · stride + offset − padding` lies inside `0..in_len`.
    fn inside(&self, offset: usize, in_len: usize, out_len: usize) -> Range<usize> {
        let first = self.padding.saturating_sub(offset).div_ceil(self.stride);
        let end = (in_len + self.padding).saturating_sub(offset).div_ceil(self.stride).min(out_len);
        first.min(end)..end
    }

    /// The columns row by row: for patch row `(channel, ky, kx)` and output
    /// row `oy`, which input row it reads (none in the padding), and which
    /// output columns read inside the input, from which input column on.
    fn spans(&self) -> impl Iterator<Item = Span> + '_ {
        let k = self.kernel;
        (0..self.patch()).flat_map(move |row| {
            let (channel, ky, kx) = (row / (k * k), row / k % k, row % k);
            let rows = self.inside(ky, self.in_height, self.out_height());
            let columns = self.inside(kx, self.in_width, self.out_width());
            (0..self.out_height()).map(move |oy| Span {
                channel,
                y: rows.contains(&oy).then(|| oy * self.stride + ky - self.padding),
                x: (columns.start * self.stride + kx).saturating_sub(self.padding),
                columns: columns.clone(),
            })
        })
    }
}

/// Where one output row of one patch row reads from (see [`Conv2dGeometry::spans`]).
struct Span {
    channel: usize,
    /// The input row, or `None` when the whole output row reads padding.
    y: Option<usize>,
    /// The output columns that read inside the input, the first at input column `x`.
    columns: Range<usize>,
    x: usize,
}

impl Span {
    /// The input channel, row and columns this span reads, or `None` when it
    /// reads only padding.
    fn input(&self, stride: usize) -> Option<(usize, usize, Slice)> {
        let y = self.y.filter(|_| !self.columns.is_empty())?;
        let end = self.x + (self.columns.len() - 1) * stride + 1;
        Some((self.channel, y, Slice::new(self.x as isize, Some(end as isize), stride as isize)))
    }
}

/// Writes the columns of a batch: row `(c, ky, kx)`, column `(oy, ox, s)`
/// holds `input[c, oy·stride + ky − padding, ox·stride + kx − padding, s]`,
/// zero in the padding. `input` is `[in_channels, in_height, in_width, B]`.
pub fn im2col(geometry: &Conv2dGeometry, input: ArrayView4<'_, f32>, columns: &mut [f32]) {
    let b = input.len_of(Axis(3));
    let row_len = geometry.out_width() * b;
    let columns = &mut columns[..geometry.columns_len(b)];
    for (span, dst) in geometry.spans().zip(columns.chunks_exact_mut(row_len)) {
        let Some((channel, y, xs)) = span.input(geometry.stride) else {
            dst.fill(0.0);
            continue;
        };
        let (before, rest) = dst.split_at_mut(span.columns.start * b);
        let (inside, after) = rest.split_at_mut(span.columns.len() * b);
        before.fill(0.0);
        after.fill(0.0);
        rows_of(inside, b).assign(&input.slice(s![channel, y, xs, ..]));
    }
}

/// The adjoint of [`im2col`]: adds every column value back onto the input
/// position it was read from (`input_grad` is `[in_channels, in_height,
/// in_width, B]` and is added to, not overwritten).
pub fn col2im_add(geometry: &Conv2dGeometry, columns: &[f32], mut input_grad: ArrayViewMut4<'_, f32>) {
    let b = input_grad.len_of(Axis(3));
    let row_len = geometry.out_width() * b;
    let columns = &columns[..geometry.columns_len(b)];
    for (span, values) in geometry.spans().zip(columns.chunks_exact(row_len)) {
        let Some((channel, y, xs)) = span.input(geometry.stride) else { continue };
        let mut target = input_grad.slice_mut(s![channel, y, xs, ..]);
        let inside = &values[span.columns.start * b..span.columns.end * b];
        target += &ArrayView2::from_shape((span.columns.len(), b), inside).expect("a span is whole rows of B");
    }
}

/// `values` as `[values.len() / b, b]`.
fn rows_of(values: &mut [f32], b: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((values.len() / b, b), values).expect("a span is whole rows of B")
}

/// The convolution of a batch without its bias, `[(out_channels, out_y,
/// out_x), B]`, by the geometry's [`Conv2dGeometry::algorithm`]. Leaves in
/// `workspace` (of [`Conv2dGeometry::workspace_len`]) what [`backward`] needs.
pub fn forward(
    geometry: &Conv2dGeometry,
    weight: &[f32],
    input: ArrayView4<'_, f32>,
    workspace: &mut [f32],
    output: &mut [f32],
) {
    forward_with(geometry.algorithm(), geometry, weight, input, workspace, output);
}

/// [`forward`] by the given algorithm, with its workspace. Panics unless
/// the geometry supports it ([`Conv2dGeometry::supports`]).
pub fn forward_with(
    algorithm: Algorithm,
    geometry: &Conv2dGeometry,
    weight: &[f32],
    input: ArrayView4<'_, f32>,
    workspace: &mut [f32],
    output: &mut [f32],
) {
    assert!(geometry.supports(algorithm), "{algorithm:?} cannot compute {geometry:?}");
    match algorithm {
        Algorithm::Im2col => im2col_forward(geometry, weight, input, workspace, output),
        Algorithm::Winograd => winograd::forward(geometry, weight, input, workspace, output),
    }
}

/// `output = W · columns`, leaving the batch's columns in `columns`.
fn im2col_forward(
    geometry: &Conv2dGeometry,
    weight: &[f32],
    input: ArrayView4<'_, f32>,
    columns: &mut [f32],
    output: &mut [f32],
) {
    let b = input.len_of(Axis(3));
    let width = geometry.out_pixels() * b;
    im2col(geometry, input, columns);
    let columns = Matrix::new(columns, geometry.patch(), width);
    let output = &mut output[..geometry.out_channels * width];
    // output = W · columns, computed as (columnsᵀ · Wᵀ)ᵀ: the kernel's left
    // operand is then contiguous down its columns (docs/performance.md).
    matmul_transposed(columns.t(), Matrix::new(weight, geometry.out_channels, geometry.patch()).t(), output);
}

/// The gradients of a batch from the output's gradient `output_grad`
/// (`[(out_channels, out_y, out_x), B]`) and the workspace that [`forward`]
/// left: the weight's and bias's are written, and the input's, when asked
/// for, is written into `input_grad` (the first layer needs none). The
/// workspace is overwritten on the way.
pub fn backward(
    geometry: &Conv2dGeometry,
    weight: &[f32],
    (workspace, output_grad): (&mut [f32], &[f32]),
    grads: (&mut [f32], &mut [f32]),
    input_grad: Option<ArrayViewMut4<'_, f32>>,
) {
    backward_with(geometry.algorithm(), geometry, weight, (workspace, output_grad), grads, input_grad);
}

/// [`backward`] after a [`forward_with`] the same algorithm.
pub fn backward_with(
    algorithm: Algorithm,
    geometry: &Conv2dGeometry,
    weight: &[f32],
    (workspace, output_grad): (&mut [f32], &[f32]),
    grads: (&mut [f32], &mut [f32]),
    input_grad: Option<ArrayViewMut4<'_, f32>>,
) {
    assert!(geometry.supports(algorithm), "{algorithm:?} cannot compute {geometry:?}");
    match algorithm {
        Algorithm::Im2col => im2col_backward(geometry, weight, (workspace, output_grad), grads, input_grad),
        Algorithm::Winograd => winograd::backward(geometry, workspace, output_grad, grads, input_grad),
    }
}

/// The gradients from the columns [`im2col_forward`] left, which become
/// their own gradient on the way.
fn im2col_backward(
    geometry: &Conv2dGeometry,
    weight: &[f32],
    (columns, output_grad): (&mut [f32], &[f32]),
    (weight_grad, bias_grad): (&mut [f32], &mut [f32]),
    input_grad: Option<ArrayViewMut4<'_, f32>>,
) {
    let b = output_grad.len() / (geometry.out_channels * geometry.out_pixels());
    let width = geometry.out_pixels() * b;
    let columns = &mut columns[..geometry.columns_len(b)];
    row_sums(output_grad, bias_grad);
    let output_grad = Matrix::new(output_grad, geometry.out_channels, width);
    // dW = dY · columnsᵀ   ([out, width] · [width, patch])
    matmul(output_grad, Matrix::new(columns, geometry.patch(), width).t(), weight_grad);
    if let Some(mut input_grad) = input_grad {
        // dcolumns = Wᵀ · dY   ([patch, out] · [out, width])
        matmul(Matrix::new(weight, geometry.out_channels, geometry.patch()).t(), output_grad, columns);
        input_grad.fill(0.0);
        col2im_add(geometry, columns, input_grad.view_mut());
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array4, ShapeBuilder};
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::rng::StreamRng;

    /// Stride 1 and 2, padding, non-square inputs, and (the fourth) kernel
    /// columns that read only padding.
    /// The last two choose Winograd: output blocks that overhang the image
    /// (kernel 3, blocks of 6) and a 5×5 kernel with padding (blocks of 4).
    fn geometries() -> [Conv2dGeometry; 6] {
        [
            g(1, 5, 5, 2, 3, 1, 0),
            g(2, 6, 5, 3, 3, 2, 1),
            g(3, 4, 4, 2, 2, 1, 2),
            g(1, 3, 1, 2, 3, 1, 1),
            g(16, 7, 9, 2, 3, 1, 0),
            g(16, 5, 6, 3, 5, 1, 2),
        ]
    }

    /// Each geometry with each algorithm that supports it.
    fn each_algorithm() -> impl Iterator<Item = (Conv2dGeometry, Algorithm)> {
        geometries().into_iter().flat_map(|g| {
            [Algorithm::Im2col, Algorithm::Winograd].into_iter().filter(move |a| g.supports(*a)).map(move |a| (g, a))
        })
    }

    /// A geometry from its sizes in field order.
    fn g(
        in_channels: usize,
        in_height: usize,
        in_width: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Conv2dGeometry {
        Conv2dGeometry { in_channels, in_height, in_width, out_channels, kernel, stride, padding }
    }

    /// [`forward`], then each output channel's bias (which the network adds in its ReLU's pass).
    fn forward_with_bias(
        (g, algorithm): (&Conv2dGeometry, Algorithm),
        (weight, bias): (&[f32], &[f32]),
        input: ArrayView4<'_, f32>,
        columns: &mut [f32],
        output: &mut [f32],
    ) {
        forward_with(algorithm, g, weight, input, columns, output);
        let width = output.len() / g.out_channels;
        for (row, &bias) in output.chunks_exact_mut(width).zip(bias) {
            row.iter_mut().for_each(|v| *v += bias);
        }
    }

    fn random(rng: &mut StreamRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// The input as `[c, y, x, s]` over a `[B, features]` buffer (the input
    /// batch's layout) or a `[features, B]` one (a later layer's).
    fn input_view<'a>(g: &Conv2dGeometry, data: &'a [f32], b: usize, batch_major: bool) -> ArrayView4<'a, f32> {
        let (c, h, w) = (g.in_channels, g.in_height, g.in_width);
        let strides = if batch_major { (h * w, w, 1, c * h * w) } else { (h * w * b, w * b, b, 1) };
        ArrayView4::from_shape((c, h, w, b).strides(strides), data).expect("input shape")
    }

    /// The obvious f64 convolution, `[(o, oy, ox), B]`.
    fn reference(g: &Conv2dGeometry, weight: &[f32], bias: &[f32], input: ArrayView4<'_, f32>) -> Vec<f64> {
        let b = input.len_of(Axis(3));
        let (oh, ow, k) = (g.out_height(), g.out_width(), g.kernel);
        let mut out = vec![0.0f64; g.out_channels * oh * ow * b];
        for (o, oy, ox, s) in indices4(g.out_channels, oh, ow, b) {
            let mut sum = f64::from(bias[o]);
            for (c, ky, kx) in indices3(g.in_channels, k, k) {
                let (y, x) = (
                    (oy * g.stride + ky) as isize - g.padding as isize,
                    (ox * g.stride + kx) as isize - g.padding as isize,
                );
                if (0..g.in_height as isize).contains(&y) && (0..g.in_width as isize).contains(&x) {
                    let w = weight[((o * g.in_channels + c) * k + ky) * k + kx];
                    sum += f64::from(w) * f64::from(input[[c, y as usize, x as usize, s]]);
                }
            }
            out[((o * oh + oy) * ow + ox) * b + s] = sum;
        }
        out
    }

    fn indices4(a: usize, b: usize, c: usize, d: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        (0..a).flat_map(move |i| indices3(b, c, d).map(move |(j, k, l)| (i, j, k, l)))
    }

    fn indices3(a: usize, b: usize, c: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        (0..a).flat_map(move |i| (0..b).flat_map(move |j| (0..c).map(move |k| (i, j, k))))
    }

    #[test]
    fn forward_matches_the_direct_convolution_in_either_input_layout() {
        let mut rng = StreamRng::seed_from_u64(7);
        // 17 samples: a whole register of Winograd's 16 and one more.
        for ((g, algorithm), b) in each_algorithm().flat_map(|ga| [(ga, 3), (ga, 17)]) {
            g.validate().expect("valid geometry");
            let (weight, bias) = (random(&mut rng, g.weight_len()), random(&mut rng, g.out_channels));
            let data = random(&mut rng, g.in_channels * g.in_height * g.in_width * b);
            for batch_major in [true, false] {
                let input = input_view(&g, &data, b, batch_major);
                let mut columns = vec![f32::NAN; g.workspace_len_for(algorithm, b)];
                let mut output = vec![f32::NAN; g.out_channels * g.out_pixels() * b];
                forward_with_bias((&g, algorithm), (&weight, &bias), input, &mut columns, &mut output);
                for (got, want) in output.iter().zip(reference(&g, &weight, &bias, input)) {
                    // Winograd rounds differently, within 1e-4 of the output's scale.
                    let tolerance = if algorithm == Algorithm::Winograd { 1e-4 } else { 1e-5 };
                    let error = (f64::from(*got) - want).abs();
                    assert!(error < tolerance * (1.0 + want.abs()), "{g:?} {algorithm:?}: {got} vs {want}");
                }
            }
        }
    }

    /// With loss `L = Σ output ⊙ R`, the gradients are those of the f64
    /// reference, which is linear in the weight, the bias and the input, so
    /// a central difference of it is exact but for rounding.
    #[test]
    fn gradients_match_central_differences_of_the_reference() {
        let mut rng = StreamRng::seed_from_u64(9);
        let b = 2;
        for (g, algorithm) in each_algorithm() {
            let (weight, bias) = (random(&mut rng, g.weight_len()), random(&mut rng, g.out_channels));
            let data = random(&mut rng, g.in_channels * g.in_height * g.in_width * b);
            let out_len = g.out_channels * g.out_pixels() * b;
            let upstream = random(&mut rng, out_len);
            let mut columns = vec![0.0; g.workspace_len_for(algorithm, b)];
            let mut output = vec![0.0; out_len];
            let input = input_view(&g, &data, b, false);
            forward_with_bias((&g, algorithm), (&weight, &bias), input, &mut columns, &mut output);
            let (mut weight_grad, mut bias_grad) = (vec![f32::NAN; g.weight_len()], vec![f32::NAN; g.out_channels]);
            let mut input_grad = Array4::from_elem((g.in_channels, g.in_height, g.in_width, b), f32::NAN);
            let grads = (&mut weight_grad[..], &mut bias_grad[..]);
            backward_with(algorithm, &g, &weight, (&mut columns, &upstream), grads, Some(input_grad.view_mut()));

            let loss = |weight: &[f32], bias: &[f32], data: &[f32]| -> f64 {
                let out = reference(&g, weight, bias, input_view(&g, data, b, false));
                out.iter().zip(&upstream).map(|(o, r)| o * f64::from(*r)).sum()
            };
            let input_grad: Vec<f32> = input_grad.iter().copied().collect();
            for (what, analytic, numeric) in [
                ("weight", &weight_grad, central_differences(&weight, |w| loss(w, &bias, &data))),
                ("bias", &bias_grad, central_differences(&bias, |bs| loss(&weight, bs, &data))),
                ("input", &input_grad, central_differences(&data, |d| loss(&weight, &bias, d))),
            ] {
                for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
                    assert!((f64::from(*a) - n).abs() < 1e-4, "{g:?} {algorithm:?} {what}[{i}]: {a} vs {n}");
                }
            }
        }
    }

    /// Past one register of samples (17: 16 and one more), Winograd's
    /// gradients are im2col's, which the test above checks exactly.
    #[test]
    fn winograd_gradients_are_im2cols_past_one_register_of_samples() {
        let mut rng = StreamRng::seed_from_u64(11);
        let b = 17;
        for g in geometries().into_iter().filter(|g| g.supports(Algorithm::Winograd)) {
            let weight = random(&mut rng, g.weight_len());
            let data = random(&mut rng, g.in_channels * g.in_height * g.in_width * b);
            let upstream = random(&mut rng, g.out_channels * g.out_pixels() * b);
            let [by_im2col, by_winograd] = [Algorithm::Im2col, Algorithm::Winograd].map(|algorithm| {
                let mut workspace = vec![0.0; g.workspace_len_for(algorithm, b)];
                let mut output = vec![0.0; upstream.len()];
                forward_with(algorithm, &g, &weight, input_view(&g, &data, b, false), &mut workspace, &mut output);
                let (mut weight_grad, mut bias_grad) = (vec![0.0; g.weight_len()], vec![0.0; g.out_channels]);
                let mut input_grad = Array4::zeros((g.in_channels, g.in_height, g.in_width, b));
                let grads = (&mut weight_grad[..], &mut bias_grad[..]);
                backward_with(algorithm, &g, &weight, (&mut workspace, &upstream), grads, Some(input_grad.view_mut()));
                [weight_grad, bias_grad, input_grad.iter().copied().collect()]
            });
            for (what, (im2col, winograd)) in ["weight", "bias", "input"].iter().zip(by_im2col.iter().zip(&by_winograd))
            {
                for (i, (a, w)) in im2col.iter().zip(winograd).enumerate() {
                    assert!((a - w).abs() < 1e-4 * (1.0 + a.abs()), "{g:?} {what}[{i}]: im2col {a}, Winograd {w}");
                }
            }
        }
    }

    /// d loss / d values[i] for every i, by central differences.
    fn central_differences(values: &[f32], loss: impl Fn(&[f32]) -> f64) -> Vec<f64> {
        let (h, mut values) = (0.5f32, values.to_vec());
        (0..values.len())
            .map(|i| {
                let v = values[i];
                values[i] = v + h;
                let up = loss(&values);
                values[i] = v - h;
                let down = loss(&values);
                values[i] = v;
                (up - down) / f64::from(2.0 * h)
            })
            .collect()
    }

    #[test]
    fn validation_names_the_numbers() {
        let big_kernel = g(1, 4, 4, 2, 7, 1, 1);
        assert_eq!(big_kernel.validate().unwrap_err(), "a 7×7 kernel does not fit a 4×4 input padded by 1 (6×6)");
        let no_stride = Conv2dGeometry { stride: 0, kernel: 3, ..big_kernel };
        assert_eq!(no_stride.validate().unwrap_err(), "stride must be at least 1, got 0");
    }

    #[test]
    fn output_sizes_are_pytorchs() {
        // LeNet-5's first layer on MNIST, the FedAvg CNN's second, a stride of 2.
        let lenet = g(1, 28, 28, 6, 5, 1, 2);
        assert_eq!((lenet.out_height(), lenet.out_width(), lenet.weight_len()), (28, 28, 150));
        let cnn = g(32, 14, 14, 64, 5, 1, 2);
        assert_eq!((cnn.out_height(), cnn.out_width(), cnn.weight_len()), (14, 14, 51_200));
        let strided = g(1, 28, 28, 1, 3, 2, 0);
        assert_eq!((strided.out_height(), strided.out_width()), (13, 13));
    }
}
