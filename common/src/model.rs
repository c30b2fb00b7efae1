//! The multilayer perceptron: He initialisation, minibatch forward and
//! backward passes as matrix products, softmax cross-entropy, evaluation.
//!
//! Shapes, for a batch of `B` samples and layer `l` mapping `in → out`:
//! activations are `[B, in]` row-major, the weight `[out, in]`, so the layer
//! computes `Z = A · Wᵀ + b` (`[B, out]`). All scratch memory lives in a
//! [`Workspace`] sized once for the largest batch, so a training step does not
//! touch the heap.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

use crate::dataset::Dataset;
use crate::params::{Architecture, LayerLayout, Layout};
use crate::rng::Rng;

/// An MLP of a given architecture. It holds no parameters: those are a flat
/// buffer owned by the caller (see [`crate::params`]).
#[derive(Debug, Clone)]
pub struct Mlp {
    arch: Architecture,
    layout: Layout,
}

/// Mean loss and accuracy over a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    /// Share of correctly classified samples, in [0, 1].
    pub accuracy: f64,
    pub samples: usize,
}

/// Preallocated activations and gradients for batches of up to `capacity` samples.
#[derive(Debug, Clone)]
pub struct Workspace {
    capacity: usize,
    /// `activations[0]` is the input batch; `activations[l]` the output of layer `l`
    /// (after ReLU for hidden layers; the logits for the last).
    activations: Vec<Vec<f32>>,
    /// `deltas[l]`: gradient of the loss with respect to layer `l`'s
    /// pre-activation output (`deltas[0]` is unused and empty).
    deltas: Vec<Vec<f32>>,
    labels: Vec<u8>,
}

impl Workspace {
    pub fn new(arch: &Architecture, capacity: usize) -> Self {
        let activations = arch.widths.iter().map(|w| vec![0.0; w * capacity]).collect();
        let deltas = arch
            .widths
            .iter()
            .enumerate()
            .map(|(l, w)| if l == 0 { Vec::new() } else { vec![0.0; w * capacity] })
            .collect();
        Workspace { capacity, activations, deltas, labels: vec![0; capacity] }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Fills the input rows and labels for the samples at `indices` of `data`.
    /// Returns the batch size. Panics if `indices` exceeds the capacity.
    pub fn load_batch(&mut self, data: &Dataset, indices: &[u32]) -> usize {
        let b = indices.len();
        assert!(b <= self.capacity, "batch of {b} exceeds the workspace capacity {}", self.capacity);
        data.fill_batch(indices.iter().map(|&i| i as usize), &mut self.activations[0], &mut self.labels);
        b
    }

    /// Loads `count` consecutive samples starting at `start`.
    fn load_range(&mut self, data: &Dataset, start: usize, count: usize) {
        data.fill_batch(start..start + count, &mut self.activations[0], &mut self.labels);
    }
}

impl Mlp {
    pub fn new(arch: Architecture) -> Self {
        let layout = arch.layout();
        Mlp { arch, layout }
    }

    pub fn arch(&self) -> &Architecture {
        &self.arch
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.layout.len
    }

    pub fn is_empty(&self) -> bool {
        self.layout.len == 0
    }

    /// He-initialised parameters: weights ~ N(0, 2 / fan_in), biases zero.
    /// The variance keeps ReLU activations at a stable scale from layer to layer.
    pub fn init(&self, rng: &mut Rng) -> Vec<f32> {
        let mut params = vec![0.0; self.layout.len];
        for layer in &self.layout.layers {
            let std = (2.0 / layer.inputs as f64).sqrt();
            for w in &mut params[layer.weight.clone()] {
                *w = (rng.normal() * std) as f32;
            }
        }
        params
    }

    /// Forward and backward pass over the batch loaded in `ws` (`b` samples).
    /// Writes the gradient of the mean loss into `grads` and returns the
    /// mean cross-entropy loss.
    pub fn loss_and_grad(&self, params: &[f32], grads: &mut [f32], ws: &mut Workspace, b: usize) -> f32 {
        debug_assert_eq!(params.len(), self.layout.len);
        debug_assert_eq!(grads.len(), self.layout.len);
        self.forward(params, ws, b);
        let last = self.layout.layers.len();
        let loss = softmax_cross_entropy_grad(
            &ws.activations[last][..b * self.arch.outputs()],
            &ws.labels[..b],
            &mut ws.deltas[last][..b * self.arch.outputs()],
        );
        for (l, layer) in self.layout.layers.iter().enumerate().rev() {
            let (below, above) = ws.deltas.split_at_mut(l + 1);
            let delta = view(&above[0], b, layer.outputs);
            let input = view(&ws.activations[l], b, layer.inputs);
            // dW = deltaᵀ · A   ([out, B] · [B, in])
            let mut dw = view_mut(&mut grads[layer.weight.clone()], layer.outputs, layer.inputs);
            general_mat_mul(1.0, &delta.t(), &input, 0.0, &mut dw);
            // db = Σ_rows delta
            let db = &mut grads[layer.bias.clone()];
            db.fill(0.0);
            for row in delta.rows() {
                for (g, d) in db.iter_mut().zip(row) {
                    *g += d;
                }
            }
            if l > 0 {
                // delta_below = (delta · W) ⊙ [A > 0]   ([B, out] · [out, in])
                let w = view(&params[layer.weight.clone()], layer.outputs, layer.inputs);
                let mut below_delta = view_mut(&mut below[l], b, layer.inputs);
                general_mat_mul(1.0, &delta, &w, 0.0, &mut below_delta);
                for (d, &a) in below[l][..b * layer.inputs].iter_mut().zip(&ws.activations[l]) {
                    if a <= 0.0 {
                        *d = 0.0;
                    }
                }
            }
        }
        loss
    }

    /// Forward pass over `b` samples loaded in `ws`; the logits end up in the last activation.
    fn forward(&self, params: &[f32], ws: &mut Workspace, b: usize) {
        let last = self.layout.layers.len() - 1;
        for (l, layer) in self.layout.layers.iter().enumerate() {
            let (inputs, outputs) = ws.activations.split_at_mut(l + 1);
            let out = &mut outputs[0][..b * layer.outputs];
            affine(params, layer, view(&inputs[l], b, layer.inputs), out);
            if l < last {
                for z in out.iter_mut() {
                    *z = z.max(0.0);
                }
            }
        }
    }

    /// Mean loss and accuracy of `params` over all of `data`, in batches of the
    /// workspace's capacity.
    pub fn evaluate(&self, params: &[f32], data: &Dataset, ws: &mut Workspace) -> Evaluation {
        let classes = self.arch.outputs();
        let last = self.layout.layers.len();
        let (mut loss, mut correct) = (0.0f64, 0usize);
        let mut start = 0;
        while start < data.len() {
            let b = ws.capacity.min(data.len() - start);
            ws.load_range(data, start, b);
            self.forward(params, ws, b);
            let logits = &ws.activations[last][..b * classes];
            for (row, &label) in logits.chunks_exact(classes).zip(&ws.labels[..b]) {
                loss += f64::from(log_sum_exp(row) - row[usize::from(label)]);
                if argmax(row) == usize::from(label) {
                    correct += 1;
                }
            }
            start += b;
        }
        let n = data.len().max(1) as f64;
        Evaluation { loss: loss / n, accuracy: correct as f64 / n, samples: data.len() }
    }
}

/// `out = input · Wᵀ + bias` for one layer.
fn affine(params: &[f32], layer: &LayerLayout, input: ArrayView2<f32>, out: &mut [f32]) {
    let bias = &params[layer.bias.clone()];
    for row in out.chunks_exact_mut(layer.outputs) {
        row.copy_from_slice(bias);
    }
    let w = view(&params[layer.weight.clone()], layer.outputs, layer.inputs);
    let mut z = view_mut(out, input.nrows(), layer.outputs);
    general_mat_mul(1.0, &input, &w.t(), 1.0, &mut z);
}

/// Mean softmax cross-entropy of `logits` (`[B, classes]`) against `labels`,
/// writing d(mean loss)/d(logits) into `grad`. Uses log-sum-exp with the row
/// maximum subtracted, so large logits cannot overflow `exp`.
fn softmax_cross_entropy_grad(logits: &[f32], labels: &[u8], grad: &mut [f32]) -> f32 {
    let classes = logits.len() / labels.len().max(1);
    let scale = 1.0 / labels.len() as f32;
    let mut total = 0.0f32;
    for ((row, g), &label) in logits.chunks_exact(classes).zip(grad.chunks_exact_mut(classes)).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for (gi, &z) in g.iter_mut().zip(row) {
            *gi = (z - max).exp();
            sum += *gi;
        }
        total += max + sum.ln() - row[usize::from(label)];
        for gi in g.iter_mut() {
            *gi *= scale / sum;
        }
        g[usize::from(label)] -= scale;
    }
    total * scale
}

fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + row.iter().map(|&z| (z - max).exp()).sum::<f32>().ln()
}

/// Index of the largest value (the first, on ties).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

fn view(data: &[f32], rows: usize, cols: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), &data[..rows * cols]).expect("buffer sized by the layout")
}

fn view_mut(data: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), &mut data[..rows * cols]).expect("buffer sized by the layout")
}

/// Sums the rows of a `[B, n]` view; used by tests as the obvious reference.
#[cfg(test)]
fn column_sums(a: ArrayView2<f32>) -> Vec<f32> {
    a.sum_axis(ndarray::Axis(0)).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::Images;

    /// The obvious f64 implementation of the mean loss, the reference for the gradient check.
    fn reference_loss(arch: &Architecture, params: &[f64], x: &[f64], labels: &[u8]) -> f64 {
        let layout = arch.layout();
        let b = labels.len();
        let mut a: Vec<f64> = x.to_vec();
        for (l, layer) in layout.layers.iter().enumerate() {
            let mut z = vec![0.0; b * layer.outputs];
            for s in 0..b {
                for o in 0..layer.outputs {
                    let mut acc = params[layer.bias.start + o];
                    for i in 0..layer.inputs {
                        acc += a[s * layer.inputs + i] * params[layer.weight.start + o * layer.inputs + i];
                    }
                    z[s * layer.outputs + o] = if l + 1 < layout.layers.len() { acc.max(0.0) } else { acc };
                }
            }
            a = z;
        }
        let c = arch.outputs();
        (0..b)
            .map(|s| {
                let row = &a[s * c..(s + 1) * c];
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                max + row.iter().map(|z| (z - max).exp()).sum::<f64>().ln() - row[labels[s] as usize]
            })
            .sum::<f64>()
            / b as f64
    }

    fn tiny_batch(rng: &mut Rng, b: usize, inputs: usize) -> Dataset {
        let pixels = (0..b * inputs).map(|_| rng.below(256) as u8).collect();
        let labels = (0..b).map(|_| rng.below(2) as u8).collect();
        Dataset::new(Images { count: b, rows: 1, cols: inputs, pixels }, labels, "tiny").unwrap()
    }

    #[test]
    fn gradient_matches_central_differences() {
        let arch = Architecture::mlp(4, &[3], 2).unwrap();
        let mlp = Mlp::new(arch.clone());
        let mut rng = Rng::seed_from(42);
        let mut params = mlp.init(&mut rng);
        // Non-zero biases so every ReLU is exercised away from its kink.
        for layer in &mlp.layout().layers {
            for v in &mut params[layer.bias.clone()] {
                *v = (rng.normal() * 0.1) as f32;
            }
        }
        let data = tiny_batch(&mut rng, 5, 4);
        let indices: Vec<u32> = (0..5).collect();
        let mut ws = Workspace::new(&arch, 5);
        let b = ws.load_batch(&data, &indices);
        let mut grads = vec![0.0; mlp.len()];
        let loss = mlp.loss_and_grad(&params, &mut grads, &mut ws, b);

        let x: Vec<f64> = ws.activations[0][..b * 4].iter().map(|&v| f64::from(v)).collect();
        let p64: Vec<f64> = params.iter().map(|&v| f64::from(v)).collect();
        assert!((reference_loss(&arch, &p64, &x, data.labels()) - f64::from(loss)).abs() < 1e-5);
        let h = 1e-6;
        for i in 0..p64.len() {
            let (mut plus, mut minus) = (p64.clone(), p64.clone());
            plus[i] += h;
            minus[i] -= h;
            let numeric = (reference_loss(&arch, &plus, &x, data.labels())
                - reference_loss(&arch, &minus, &x, data.labels()))
                / (2.0 * h);
            let analytic = f64::from(grads[i]);
            let scale = numeric.abs().max(analytic.abs()).max(1e-3);
            assert!(
                (numeric - analytic).abs() / scale < 1e-4,
                "parameter {i}: analytic {analytic} vs numeric {numeric}"
            );
        }
    }

    #[test]
    fn bias_gradient_is_the_column_sum_of_the_output_delta() {
        let arch = Architecture::mlp(3, &[], 4).unwrap();
        let mlp = Mlp::new(arch.clone());
        let mut rng = Rng::seed_from(5);
        let params = mlp.init(&mut rng);
        let data = tiny_batch(&mut rng, 6, 3);
        let mut ws = Workspace::new(&arch, 8);
        let b = ws.load_batch(&data, &[0, 1, 2, 3, 4, 5]);
        let mut grads = vec![0.0; mlp.len()];
        mlp.loss_and_grad(&params, &mut grads, &mut ws, b);
        let expected = column_sums(view(&ws.deltas[1], b, 4));
        assert_eq!(&grads[mlp.layout().layers[0].bias.clone()], expected.as_slice());
    }

    #[test]
    fn cross_entropy_is_stable_for_huge_logits() {
        let mut grad = [0.0; 3];
        let loss = softmax_cross_entropy_grad(&[1000.0, 0.0, -1000.0], &[0], &mut grad);
        assert_eq!(loss, 0.0);
        assert!(grad.iter().all(|g| g.is_finite()));
        let loss = softmax_cross_entropy_grad(&[1000.0, 0.0, -1000.0], &[1], &mut grad);
        assert!((loss - 1000.0).abs() < 1e-3, "{loss}");
    }

    #[test]
    fn he_init_has_the_right_scale() {
        let arch = Architecture::mlp(784, &[200], 10).unwrap();
        let mlp = Mlp::new(arch);
        let params = mlp.init(&mut Rng::seed_from(1));
        let w = &params[mlp.layout().layers[0].weight.clone()];
        let var = w.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / w.len() as f64;
        assert!((var - 2.0 / 784.0).abs() / (2.0 / 784.0) < 0.02, "variance {var}");
        assert!(params[mlp.layout().layers[0].bias.clone()].iter().all(|&b| b == 0.0));
    }
}
