//! 2-D max pooling, PyTorch's `MaxPool2d` with a square window, no padding
//! and floor rounding: each output is the largest value of its window, and
//! the backward pass sends the gradient to that value alone.
//!
//! Layouts as in [`crate::conv`]: the input is read through an
//! [`ArrayView4`] indexed `[channel, y, x, sample]`, the output is
//! `[(channel, y, x), B]`. The forward pass records, for every output value,
//! where in its channel (`y · in_width + x`) its maximum was, which is all
//! the backward pass needs.

use multiversion::multiversion;
use ndarray::{ArrayView4, ArrayViewMut4, Axis};

use crate::conv::all_positive;

/// The shapes of one pooling: `channels × in_height × in_width` to
/// `channels × out_height() × out_width()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPoolGeometry {
    pub channels: usize,
    pub in_height: usize,
    pub in_width: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl MaxPoolGeometry {
    /// Checks that every size is positive and that the window fits the
    /// input, with the numbers in the message.
    pub fn validate(&self) -> Result<(), String> {
        all_positive(&[
            ("channels", self.channels),
            ("input height", self.in_height),
            ("input width", self.in_width),
            ("kernel", self.kernel),
            ("stride", self.stride),
        ])?;
        if self.kernel > self.in_height.min(self.in_width) {
            return Err(format!(
                "a {k}×{k} window does not fit a {h}×{w} input",
                k = self.kernel,
                h = self.in_height,
                w = self.in_width
            ));
        }
        Ok(())
    }

    pub fn out_height(&self) -> usize {
        (self.in_height - self.kernel) / self.stride + 1
    }

    pub fn out_width(&self) -> usize {
        (self.in_width - self.kernel) / self.stride + 1
    }

    /// Values of the output per sample.
    pub fn out_len(&self) -> usize {
        self.channels * self.out_height() * self.out_width()
    }

    /// Where input `[c, y, x, 0]` lies in a `[channels, in_height, in_width, b]` buffer.
    fn offset(&self, c: usize, y: usize, x: usize, b: usize) -> usize {
        ((c * self.in_height + y) * self.in_width + x) * b
    }

    /// Every output position `(channel, oy, ox)` in output order.
    fn out_positions(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let (height, width) = (self.out_height(), self.out_width());
        (0..self.channels).flat_map(move |c| (0..height).flat_map(move |oy| (0..width).map(move |ox| (c, oy, ox))))
    }

    /// The input positions `(y, x)` of the window of output `oy, ox`, row by row.
    fn window(&self, oy: usize, ox: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (y0, x0, k) = (oy * self.stride, ox * self.stride, self.kernel);
        (y0..y0 + k).flat_map(move |y| (x0..x0 + k).map(move |x| (y, x)))
    }
}

/// The pooled batch into `output` (`[(channel, y, x), B]`), and where each
/// maximum was into `argmax` (same shape). As PyTorch, the first of equal
/// maxima wins and a NaN in a window is its maximum.
pub fn forward(geometry: &MaxPoolGeometry, input: ArrayView4<'_, f32>, output: &mut [f32], argmax: &mut [u32]) {
    let b = input.len_of(Axis(3));
    let len = geometry.out_len() * b;
    let contiguous = input.to_slice();
    let rows = output[..len].chunks_exact_mut(b).zip(argmax[..len].chunks_exact_mut(b));
    for ((c, oy, ox), (best, best_at)) in geometry.out_positions().zip(rows) {
        best.fill(f32::NEG_INFINITY);
        for (y, x) in geometry.window(oy, ox) {
            let at = (y * geometry.in_width + x) as u32;
            match contiguous {
                Some(all) => keep_larger(best, best_at, &all[geometry.offset(c, y, x, b)..][..b], at),
                None => {
                    for ((best, best_at), &v) in
                        best.iter_mut().zip(best_at.iter_mut()).zip(input.slice(ndarray::s![c, y, x, ..]))
                    {
                        if wins(v, *best) {
                            (*best, *best_at) = (v, at);
                        }
                    }
                }
            }
        }
    }
}

/// Whether `v` replaces the window's `best` so far: a larger value (so the
/// first of equal maxima stays) or a NaN.
#[inline(always)]
fn wins(v: f32, best: f32) -> bool {
    v > best || v.is_nan()
}

/// Where `at` wins, `best` becomes `values` and `best_at` `at`: written as
/// selects, so that the samples are compared a register at a time.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2"))]
fn keep_larger(best: &mut [f32], best_at: &mut [u32], values: &[f32], at: u32) {
    for ((best, best_at), &v) in best.iter_mut().zip(best_at.iter_mut()).zip(values) {
        let wins = wins(v, *best);
        *best = if wins { v } else { *best };
        *best_at = if wins { at } else { *best_at };
    }
}

/// The input's gradient from the output's (`[(channel, y, x), B]`): each
/// output's gradient goes to its window's maximum; `input_grad` is
/// overwritten (zero where no window took its maximum).
pub fn backward(
    geometry: &MaxPoolGeometry,
    output_grad: &[f32],
    argmax: &[u32],
    mut input_grad: ArrayViewMut4<'_, f32>,
) {
    let b = input_grad.len_of(Axis(3));
    let len = geometry.out_len() * b;
    input_grad.fill(0.0);
    let rows = output_grad[..len].chunks_exact(b).zip(argmax[..len].chunks_exact(b));
    let channel_len = geometry.in_height * geometry.in_width;
    match input_grad.as_slice_mut() {
        // `argmax` is the position in the channel, so the maximum of
        // `[c, _, _, s]` is `[c · channel_len + argmax, s]` of the buffer.
        Some(all) => {
            for ((c, _, _), (grads, at)) in geometry.out_positions().zip(rows) {
                for (s, (&grad, &at)) in grads.iter().zip(at).enumerate() {
                    all[(c * channel_len + at as usize) * b + s] += grad;
                }
            }
        }
        None => {
            for ((c, _, _), (grads, at)) in geometry.out_positions().zip(rows) {
                for (s, (&grad, &at)) in grads.iter().zip(at).enumerate() {
                    input_grad[[c, at as usize / geometry.in_width, at as usize % geometry.in_width, s]] += grad;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array4, ShapeBuilder};

    use super::*;

    fn geometry(kernel: usize, stride: usize) -> MaxPoolGeometry {
        MaxPoolGeometry { channels: 2, in_height: 5, in_width: 4, kernel, stride }
    }

    /// A `[features, B]` input of `b` samples whose values are all distinct.
    fn input(g: &MaxPoolGeometry, b: usize) -> Vec<f32> {
        let n = g.channels * g.in_height * g.in_width * b;
        (0..n).map(|i| ((i * 37) % n) as f32 - (n / 2) as f32).collect()
    }

    /// `data` as `[c, y, x, s]`, `[features, B]` or (`batch_major`) the input batch's `[B, features]`.
    fn view<'a>(g: &MaxPoolGeometry, data: &'a [f32], b: usize, batch_major: bool) -> ArrayView4<'a, f32> {
        let (c, h, w) = (g.channels, g.in_height, g.in_width);
        let strides = if batch_major { (h * w, w, 1, c * h * w) } else { (h * w * b, w * b, b, 1) };
        ArrayView4::from_shape((c, h, w, b).strides(strides), data).expect("input shape")
    }

    #[test]
    fn each_output_is_its_windows_maximum_in_either_input_layout() {
        let b = 3;
        let geometries = [geometry(2, 2), geometry(3, 1), geometry(2, 3)];
        for (g, batch_major) in geometries.into_iter().flat_map(|g| [(g, false), (g, true)]) {
            g.validate().expect("valid geometry");
            let data = input(&g, b);
            let pixels = view(&g, &data, b, batch_major);
            let (mut output, mut argmax) = (vec![0.0; g.out_len() * b], vec![0; g.out_len() * b]);
            forward(&g, pixels, &mut output, &mut argmax);
            for ((c, oy, ox), (row, at)) in g.out_positions().zip(output.chunks_exact(b).zip(argmax.chunks_exact(b))) {
                for s in 0..b {
                    let want = g.window(oy, ox).map(|(y, x)| pixels[[c, y, x, s]]).fold(f32::NEG_INFINITY, f32::max);
                    assert_eq!(row[s], want, "{g:?} at {c},{oy},{ox} sample {s}");
                    let (y, x) = (at[s] as usize / g.in_width, at[s] as usize % g.in_width);
                    assert_eq!(pixels[[c, y, x, s]], want, "argmax of {c},{oy},{ox}");
                }
            }
        }
    }

    /// The backward pass is the forward's adjoint: `⟨dY, pool(X)⟩`'s
    /// derivative. With distinct values the maximum is unique, so moving the
    /// gradient to it is exact: Σ dY·Y = Σ dX·X.
    #[test]
    fn backward_sends_each_gradient_to_its_maximum() {
        let b = 2;
        for g in [geometry(2, 2), geometry(3, 1)] {
            let data = input(&g, b);
            let (mut output, mut argmax) = (vec![0.0; g.out_len() * b], vec![0; g.out_len() * b]);
            forward(&g, view(&g, &data, b, false), &mut output, &mut argmax);
            let upstream: Vec<f32> = (0..output.len()).map(|i| (i % 7) as f32 - 3.0).collect();
            let mut grad = Array4::from_elem((g.channels, g.in_height, g.in_width, b), f32::NAN);
            backward(&g, &upstream, &argmax, grad.view_mut());
            let forward_side: f32 = upstream.iter().zip(&output).map(|(d, y)| d * y).sum();
            let backward_side: f32 = grad.iter().zip(view(&g, &data, b, false).iter()).map(|(d, x)| d * x).sum();
            assert_eq!(forward_side, backward_side, "{g:?}");
            let reached = grad.iter().filter(|&&d| d != 0.0).count();
            assert!(reached > 0 && reached <= g.out_len() * b, "{reached} inputs got a gradient");
            // The same into a gradient laid out as the input batch (`[B, features]`).
            let mut batch_major = Array4::from_elem((b, g.channels, g.in_height, g.in_width), f32::NAN);
            backward(&g, &upstream, &argmax, batch_major.view_mut().permuted_axes([1, 2, 3, 0]));
            assert_eq!(batch_major.permuted_axes([1, 2, 3, 0]), grad, "{g:?}");
        }
    }

    #[test]
    fn ties_go_to_the_first_and_nan_wins_in_either_input_layout() {
        let g = MaxPoolGeometry { channels: 1, in_height: 2, in_width: 2, kernel: 2, stride: 2 };
        for (values, want, at) in [([1.0, 3.0, 3.0, 2.0], 3.0, 1), ([1.0, f32::NAN, 5.0, 2.0], f32::NAN, 1)] {
            // Two samples of the same image, in each layout.
            for (batch_major, data) in [(false, values.map(|v| [v, v]).concat()), (true, [values, values].concat())] {
                let (mut output, mut argmax) = ([0.0; 2], [9; 2]);
                forward(&g, view(&g, &data, 2, batch_major), &mut output, &mut argmax);
                for (got, got_at) in output.iter().zip(argmax) {
                    assert!(*got == want || (want.is_nan() && got.is_nan()), "{values:?} → {got}");
                    assert_eq!(got_at, at, "{values:?}, batch-major {batch_major}");
                }
            }
        }
    }

    #[test]
    fn validation_names_the_numbers() {
        let g = MaxPoolGeometry { channels: 1, in_height: 3, in_width: 5, kernel: 4, stride: 2 };
        assert_eq!(g.validate().unwrap_err(), "a 4×4 window does not fit a 3×5 input");
        assert_eq!((MaxPoolGeometry { kernel: 2, ..g }).out_width(), 2);
    }
}
