//! The network a [`ModelSpec`] describes: He initialisation, minibatch forward and
//! backward passes as matrix products, softmax cross-entropy, evaluation.
//!
//! Shapes, for a batch of `B` samples and layer `l` mapping `in → out`: the
//! weight is `[out, in]` row-major (PyTorch's layout). The input batch is
//! `[B, in]` row-major, as [`Dataset::fill_batch`] writes it; every later
//! activation and every delta is stored transposed, `[width, B]`, so each layer
//! computes `Zᵀ = W · Aᵀ + b` (`[out, B]`). The matrix kernel wants its left
//! operand contiguous down the columns: in this orientation that operand is
//! never the weight, which would otherwise be repacked on every product (the
//! first layer's forward product at batch 32 runs at 90 GFLOP/s instead of 62).
//!
//! All scratch memory lives in a [`Workspace`] sized once for the largest
//! batch; during a step only the matrix kernel allocates (its packing buffers).
//! Every matrix product goes through [`matmul`] (the `gemm` crate on the
//! calling thread); the elementwise work around the products (bias, ReLU and
//! their gradients) is written as loops over contiguous slices without
//! branches, so that the compiler vectorises them, and compiled a second time
//! for AVX2, which `multiversion` picks at run time.

use multiversion::multiversion;
use rand::RngExt;
use rand_distr::StandardNormal;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::matching::{Group, PermutationSpec, TensorAxis};
use crate::params::{LayerLayout, Layout};
use crate::rng::{self, Purpose};
use crate::spec::{LayerSpec, ModelSpec, Shape};
use crate::stage::{Input, Scratch, Stage};

/// The network of a [`ModelSpec`], built by [`ModelSpec::build`]. It holds
/// no parameters: those are a flat buffer owned by the caller (see
/// [`crate::params`]).
///
/// The passes run the stack as [`Stage`]s: a dense, convolution or pooling
/// layer, and the ReLU after it fused into the same pass over its output.
#[derive(Debug, Clone)]
pub struct Network {
    spec: ModelSpec,
    layout: Layout,
    stages: Vec<Stage>,
    /// Whether stage `l` is followed by a ReLU.
    relu: Vec<bool>,
    /// Values per sample at every stage boundary: the input, then each stage's output.
    widths: Vec<usize>,
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
    /// `activations[0]` is the input batch, `[B, in]`; `activations[l]` the
    /// output of layer `l`, `[out, B]` (after ReLU for hidden layers; the
    /// logits for the last).
    activations: Vec<Vec<f32>>,
    /// `deltas[l]`: gradient of the loss with respect to layer `l`'s
    /// pre-activation output, `[out, B]` (`deltas[0]` is unused and empty;
    /// all are, in a workspace made [`for_inference`](Self::for_inference)).
    deltas: Vec<Vec<f32>>,
    /// What each stage keeps from its forward pass for its backward pass.
    scratch: Vec<Scratch>,
    labels: Vec<u8>,
}

impl Workspace {
    /// A workspace for training: forward and backward passes.
    pub fn new(network: &Network, capacity: usize) -> Self {
        Self::with_deltas(network, capacity, true)
    }

    /// A workspace for forward passes alone ([`Network::evaluate`], activation
    /// statistics): without the gradients' buffers, as large as the
    /// activations (at a 20M-parameter MLP's evaluation batch of 500, 16 MB
    /// of the coordinator's memory while an epoch closes).
    pub fn for_inference(network: &Network, capacity: usize) -> Self {
        Self::with_deltas(network, capacity, false)
    }

    fn with_deltas(network: &Network, capacity: usize, backward: bool) -> Self {
        let activations = network.widths.iter().map(|w| vec![0.0; w * capacity]).collect();
        let deltas = network
            .widths
            .iter()
            .enumerate()
            .map(|(l, w)| if l == 0 || !backward { Vec::new() } else { vec![0.0; w * capacity] })
            .collect();
        let scratch = network.stages.iter().map(|stage| stage.scratch(capacity)).collect();
        Workspace { capacity, activations, deltas, scratch, labels: vec![0; capacity] }
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

impl Network {
    /// The network of `spec`, checked. Each ReLU must follow a layer that
    /// computes something (dense, convolution or pooling), which applies it
    /// in the same pass.
    pub fn new(spec: ModelSpec) -> Result<Self> {
        let layout = spec.layout()?;
        let shapes = spec.check()?;
        let (mut stages, mut relu) = (Vec::new(), Vec::<bool>::new());
        let mut input = Shape::Image(spec.input);
        for (i, layer) in spec.layers.iter().enumerate() {
            match stage_of(layer, i, input, &layout) {
                Some(stage) => {
                    stages.push(stage);
                    relu.push(false);
                }
                None if *layer == LayerSpec::Relu => match relu.last_mut() {
                    Some(after) if !*after => *after = true,
                    _ => {
                        let problem = "must follow a dense, conv or maxpool layer, not the input or another ReLU";
                        return Err(Error::model(i + 1, "relu", problem));
                    }
                },
                None => {}
            }
            input = shapes[i];
        }
        let widths = std::iter::once(spec.input.len()).chain(stages.iter().map(Stage::outputs)).collect();
        Ok(Network { spec, layout, stages, relu, widths })
    }

    /// The description this network was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Values per sample of the input.
    pub fn inputs(&self) -> usize {
        self.widths[0]
    }

    /// Number of classes (the width of the logits).
    pub fn classes(&self) -> usize {
        self.spec.classes
    }

    /// Which parts of the buffer each permutable group of units moves: the
    /// output units of every dense layer and the output channels of every
    /// convolution, except the last layer with weights (its outputs are
    /// classes). A group moves its layer's weight rows and bias, and the
    /// matching inputs of the next layer with weights: through ReLU and
    /// pooling, which keep channels apart, and through a flatten, after which
    /// channel `c` is the block of `height × width` inputs at `c` (CHW order).
    pub fn permutation_spec(&self) -> PermutationSpec {
        let tensor =
            |name: String| self.layout.tensor(&name).expect("every layer with weights has a weight and a bias");
        let axis =
            |t: &crate::params::TensorLayout, axis| TensorAxis { range: t.range.clone(), shape: t.shape.clone(), axis };
        let with_weights: Vec<(usize, usize)> = (self.spec.layers.iter().enumerate())
            .filter_map(|(i, layer)| layer.units().map(|units| (i, units)))
            .collect();
        let mut groups = Vec::new();
        for pair in with_weights.windows(2) {
            let ((i, units), (next, _)) = (pair[0], pair[1]);
            if !self.spec.layers[i + 1..next].iter().all(LayerSpec::passes_units_through) {
                continue;
            }
            let (weight, bias, above) =
                (tensor(format!("{i}.weight")), tensor(format!("{i}.bias")), tensor(format!("{next}.weight")));
            groups.push(Group { size: units, axes: vec![axis(weight, 0), axis(bias, 0), inputs_axis(above, units)] });
        }
        PermutationSpec { groups, len: self.layout.len }
    }

    /// FLOP of one training step per sample: the forward pass, the weight
    /// gradients, and every stage's input gradient but the first's (each
    /// two per multiply-add).
    pub fn train_flop_per_sample(&self) -> usize {
        let macs: usize = self.stages.iter().map(Stage::macs_per_sample).sum();
        let first = self.stages.first().map_or(0, Stage::macs_per_sample);
        6 * macs - 2 * first
    }

    /// Fails, naming `method`, unless every stage is a dense layer: what
    /// activation matching and REPAIR take (a hidden unit is then one value
    /// per sample, where a convolution's channel is a whole map).
    pub fn check_dense_only(&self, method: &str) -> Result<()> {
        match self.stages.iter().all(|stage| matches!(stage, Stage::Dense(_))) {
            true => Ok(()),
            false => Err(Error::Matching(format!(
                "{method} takes networks of dense layers only, and {} has convolution or pooling layers; \
                 match by weights instead",
                self.spec
            ))),
        }
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

    /// He-initialised parameters: weights ~ N(0, 2 / fan_in), biases zero,
    /// drawn from the init stream of a run seeded with `seed`.
    /// The variance keeps ReLU activations at a stable scale from layer to layer.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        self.init_with(&mut rng::stream(seed, Purpose::Init))
    }

    /// The same initialisation, drawn from `rng`: for starts that are not the
    /// run's (`--init independent`'s other workers, tests). Weights are drawn
    /// layer by layer in buffer order; a weight's fan-in is its values per
    /// output (`in` for a dense layer, `in_channels · k · k` for a convolution).
    pub fn init_with<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Vec<f32> {
        let mut params = vec![0.0; self.layout.len];
        for tensor in self.layout.tensors.iter().filter(|t| t.name.ends_with(".weight")) {
            let fan_in: usize = tensor.shape[1..].iter().product();
            let std = (2.0 / fan_in as f64).sqrt();
            for w in &mut params[tensor.range.clone()] {
                *w = (rng.sample::<f64, _>(StandardNormal) * std) as f32;
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
        assert!(!ws.deltas[self.stages.len()].is_empty(), "a workspace made for inference has no room for gradients");
        self.forward(params, ws, b);
        let last = self.stages.len();
        let classes = self.classes();
        let loss = softmax_cross_entropy_grad(
            &ws.activations[last][..b * classes],
            &ws.labels[..b],
            &mut ws.deltas[last][..b * classes],
        );
        for (l, stage) in self.stages.iter().enumerate().rev() {
            let (below, above) = ws.deltas.split_at_mut(l + 1);
            let input = Input { values: &ws.activations[l], b, batch_major: l == 0 };
            let below = (l > 0).then(|| &mut below[l][..stage.inputs() * b]);
            let scratch = &mut ws.scratch[l];
            match below {
                Some(below) => {
                    stage.backward(params, grads, (input, &above[0]), Some(&mut *below), scratch);
                    if self.relu[l - 1] {
                        // The ReLU below passes the gradient only where its output is positive.
                        relu_backward(below, &input.values[..below.len()]);
                    }
                }
                None => stage.backward(params, grads, (input, &above[0]), None, scratch),
            }
        }
        loss
    }

    /// Forward pass over `b` samples loaded in `ws`; the logits end up in the
    /// last activation, `[classes, B]`.
    fn forward(&self, params: &[f32], ws: &mut Workspace, b: usize) {
        for (l, stage) in self.stages.iter().enumerate() {
            let (inputs, outputs) = ws.activations.split_at_mut(l + 1);
            let input = Input { values: &inputs[l], b, batch_major: l == 0 };
            stage.forward(params, input, &mut outputs[0], &mut ws.scratch[l], self.relu[l]);
        }
    }

    /// Mean loss and accuracy of `params` over all of `data`, in batches of the
    /// workspace's capacity.
    pub fn evaluate(&self, params: &[f32], data: &Dataset, ws: &mut Workspace) -> Evaluation {
        let classes = self.classes();
        let last = self.stages.len();
        let (mut loss, mut correct) = (0.0f64, 0usize);
        // One sample's logits, gathered from their column of the transposed batch.
        let mut sample = Vec::with_capacity(classes);
        let mut start = 0;
        while start < data.len() {
            let b = ws.capacity.min(data.len() - start);
            ws.load_range(data, start, b);
            self.forward(params, ws, b);
            let logits_t = &ws.activations[last][..classes * b];
            for (s, &label) in ws.labels[..b].iter().enumerate() {
                sample.clear();
                sample.extend(logits_t[s..].iter().step_by(b));
                loss += f64::from(log_sum_exp(&sample) - sample[usize::from(label)]);
                if argmax(&sample) == usize::from(label) {
                    correct += 1;
                }
            }
            start += b;
        }
        let n = data.len().max(1) as f64;
        Evaluation { loss: loss / n, accuracy: correct as f64 / n, samples: data.len() }
    }
}

/// `z[o][s] = activation(z[o][s] + bias[o])` over the row-major `z`
/// (`[bias.len(), _]`): bias and activation in one pass over the layer's output.
#[multiversion(targets("x86_64+avx2"))]
pub(crate) fn add_bias_to_rows(z: &mut [f32], bias: &[f32], activation: impl Fn(f32) -> f32) {
    let width = z.len() / bias.len().max(1);
    for (row, &bias) in z.chunks_exact_mut(width).zip(bias) {
        for z in row {
            *z = activation(*z + bias);
        }
    }
}

/// `sums[o] = Σ_s rows[o][s]` over the row-major `rows` (`[sums.len(), _]`).
///
/// Each row is summed in `LANES` interleaved partial sums, added up in a
/// fixed order at the end. The compiler keeps a single running sum serial
/// (float addition is not associative, so it may not reorder it); independent
/// lanes vectorise, and the order stays the same from call to call.
#[multiversion(targets("x86_64+avx2"))]
pub(crate) fn row_sums(rows: &[f32], sums: &mut [f32]) {
    const LANES: usize = 8;
    let width = rows.len() / sums.len().max(1);
    for (sum, row) in sums.iter_mut().zip(rows.chunks_exact(width)) {
        let mut lanes = [0.0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let tail = chunks.remainder().iter().sum::<f32>();
        for chunk in chunks {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += v;
            }
        }
        *sum = lanes.iter().sum::<f32>() + tail;
    }
}

/// `max(0, v)` for every value (a ReLU after a pooling).
#[multiversion(targets("x86_64+avx2"))]
pub(crate) fn relu_in_place(values: &mut [f32]) {
    for v in values {
        *v = v.max(0.0);
    }
}

/// Zeroes `delta` where the ReLU's output `activation` is not positive (its
/// derivative there is 0). A select, not a conditional store: the loop
/// vectorises and has no data-dependent branch to mispredict.
#[multiversion(targets("x86_64+avx2"))]
fn relu_backward(delta: &mut [f32], activation: &[f32]) {
    for (d, &a) in delta.iter_mut().zip(activation) {
        *d = if a <= 0.0 { 0.0 } else { *d };
    }
}

/// Mean softmax cross-entropy of `logits` against `labels`, writing
/// d(mean loss)/d(logits) into `grad`; both are transposed, `[classes, B]`,
/// so sample `s` is column `s`. Uses log-sum-exp with the column maximum
/// subtracted, so large logits cannot overflow `exp`.
fn softmax_cross_entropy_grad(logits: &[f32], labels: &[u8], grad: &mut [f32]) -> f32 {
    let b = labels.len();
    let scale = 1.0 / b as f32;
    let mut total = 0.0f32;
    for (s, &label) in labels.iter().enumerate() {
        // Indices of sample `s`'s logits, one per class.
        let column = (s..logits.len()).step_by(b);
        let max = column.clone().map(|i| logits[i]).fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for i in column.clone() {
            grad[i] = (logits[i] - max).exp();
            sum += grad[i];
        }
        let target = usize::from(label) * b + s;
        total += max + sum.ln() - logits[target];
        for i in column {
            grad[i] *= scale / sum;
        }
        grad[target] -= scale;
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

/// The stage that computes layer `i` on `input`, or `None` for a layer that
/// moves no data (flatten) or is fused into the stage before it (ReLU).
fn stage_of(layer: &LayerSpec, i: usize, input: Shape, layout: &Layout) -> Option<Stage> {
    let tensor = |part: &str| layout.tensor(&format!("{i}.{part}")).map(|t| t.range.clone());
    let image = match input {
        Shape::Image(image) | Shape::Maps(image) => Some(image),
        Shape::Flat(_) => None,
    };
    match *layer {
        LayerSpec::Dense { units } => Some(Stage::Dense(LayerLayout {
            inputs: input.len(),
            outputs: units,
            weight: tensor("weight")?,
            bias: tensor("bias")?,
        })),
        LayerSpec::Conv2d { .. } => Some(Stage::Conv {
            geometry: layer.conv_geometry(image?)?,
            weight: tensor("weight")?,
            bias: tensor("bias")?,
        }),
        LayerSpec::MaxPool { .. } => layer.pool_geometry(image?).map(Stage::MaxPool),
        LayerSpec::Relu | LayerSpec::Flatten => None,
    }
}

#[path = "model_inspect.rs"]
mod inspect;
pub use inspect::UnitStats;

/// The next layer's weight `above` (`[out, in, ...]`) along the inputs that
/// `units` units (or channels) below feed: axis 1 as it is, or, where the
/// units were flattened maps, `[out, units, height × width]`.
fn inputs_axis(above: &crate::params::TensorLayout, units: usize) -> TensorAxis {
    let shape = match above.shape[1] == units {
        true => above.shape.clone(),
        false => vec![above.shape[0], units, above.shape[1] / units],
    };
    TensorAxis { range: above.range.clone(), shape, axis: 1 }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
