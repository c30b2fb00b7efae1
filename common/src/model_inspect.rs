//! Looking inside a network rather than training it: every hidden layer's
//! activations (for unit matching), every unit's pre-activation statistics
//! (for REPAIR) and the ensemble of several models (what a merge aims at).
//! These may allocate; training never calls them.

use std::ops::Range;

use super::{Evaluation, Network, Workspace, log_sum_exp, relu_in_place};
use crate::dataset::Dataset;
use crate::stage::Input;

/// A stage's running sums: `(Σ v, Σ v²)` per output unit, and how many
/// values each unit has counted.
type Tally = (Vec<(f64, f64)>, usize);

/// One layer with weights, seen from its output units: where its weight and
/// bias live, and each unit's pre-activation statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitStats {
    pub weight: Range<usize>,
    pub bias: Range<usize>,
    /// `(mean, std)` per unit: a dense unit's value, or a convolution
    /// channel's values at every position, over the samples.
    pub stats: Vec<(f64, f64)>,
}

impl Network {
    /// Every hidden layer's post-ReLU output for the samples at `indices` of
    /// `data`: one `[width, indices.len()]` row-major buffer per hidden layer,
    /// computed in batches of the workspace's capacity. For looking inside a
    /// model (unit matching), so it may allocate; training never calls it.
    pub fn hidden_activations(
        &self,
        params: &[f32],
        data: &Dataset,
        indices: &[u32],
        ws: &mut Workspace,
    ) -> Vec<Vec<f32>> {
        let m = indices.len();
        let hidden = &self.widths[1..self.widths.len() - 1];
        let mut out: Vec<Vec<f32>> = hidden.iter().map(|w| vec![0.0; w * m]).collect();
        let mut start = 0;
        for batch in indices.chunks(ws.capacity) {
            let b = ws.load_batch(data, batch);
            self.forward(params, ws, b);
            for (l, (acts, &width)) in out.iter_mut().zip(hidden).enumerate() {
                // Layer l's output is activation l + 1, `[width, b]`.
                for (unit, row) in ws.activations[l + 1][..width * b].chunks_exact(b).enumerate() {
                    acts[unit * m + start..unit * m + start + b].copy_from_slice(row);
                }
            }
            start += b;
        }
        out
    }

    /// Every layer with weights, from the input upwards, with the mean and
    /// standard deviation of each output unit's pre-activation (before its
    /// ReLU) over the samples at `indices` of `data`, in batches of the
    /// workspace's capacity.
    pub fn preactivation_stats(
        &self,
        params: &[f32],
        data: &Dataset,
        indices: &[u32],
        ws: &mut Workspace,
    ) -> Vec<UnitStats> {
        let mut sums: Vec<Option<Tally>> = (self.stages.iter())
            .map(|stage| stage.parameters().map(|(_, bias)| (vec![(0.0, 0.0); bias.len()], 0)))
            .collect();
        for batch in indices.chunks(ws.capacity) {
            let b = ws.load_batch(data, batch);
            for (l, stage) in self.stages.iter().enumerate() {
                let (inputs, outputs) = ws.activations.split_at_mut(l + 1);
                let input = Input { values: &inputs[l], b, batch_major: l == 0 };
                stage.forward(params, input, &mut outputs[0], &mut ws.scratch[l], false);
                let output = &mut outputs[0][..stage.outputs() * b];
                if let Some((units, counted)) = sums[l].as_mut() {
                    let per_unit = output.len() / units.len();
                    for ((sum, squares), values) in units.iter_mut().zip(output.chunks_exact(per_unit)) {
                        for &v in values {
                            *sum += f64::from(v);
                            *squares += f64::from(v) * f64::from(v);
                        }
                    }
                    *counted += per_unit;
                }
                if self.relu[l] {
                    relu_in_place(output);
                }
            }
        }
        (self.stages.iter().zip(sums))
            .filter_map(|(stage, sums)| {
                let ((weight, bias), (units, counted)) = (stage.parameters()?, sums?);
                let n = counted.max(1) as f64;
                let stats = units
                    .into_iter()
                    .map(|(sum, squares)| {
                        let mean = sum / n;
                        (mean, (squares / n - mean * mean).max(0.0).sqrt())
                    })
                    .collect();
                Some(UnitStats { weight, bias, stats })
            })
            .collect()
    }

    /// Mean loss and accuracy over `data` of the ensemble of `models` (each a
    /// parameter buffer of this architecture), whose prediction is the mean of
    /// the members' softmax probabilities: what a merge of them aims at.
    pub fn evaluate_ensemble(&self, models: &[&[f32]], data: &Dataset, ws: &mut Workspace) -> Evaluation {
        let classes = self.classes();
        let last = self.stages.len();
        let share = 1.0 / models.len().max(1) as f64;
        let (mut loss, mut correct) = (0.0f64, 0usize);
        let mut sample = Vec::with_capacity(classes);
        let mut probs = vec![0.0f64; classes * ws.capacity];
        let mut start = 0;
        while start < data.len() {
            let b = ws.capacity.min(data.len() - start);
            ws.load_range(data, start, b);
            probs[..classes * b].fill(0.0);
            for params in models {
                self.forward(params, ws, b);
                let logits_t = &ws.activations[last][..classes * b];
                for (s, probs) in probs.chunks_exact_mut(classes).take(b).enumerate() {
                    sample.clear();
                    sample.extend(logits_t[s..].iter().step_by(b));
                    let lse = log_sum_exp(&sample);
                    for (p, &z) in probs.iter_mut().zip(&sample) {
                        *p += share * f64::from(z - lse).exp();
                    }
                }
            }
            for (probs, &label) in probs.chunks_exact(classes).zip(&ws.labels[..b]) {
                loss -= probs[usize::from(label)].max(f64::MIN_POSITIVE).ln();
                let predicted =
                    probs.iter().enumerate().fold(0, |best, (i, &p)| if p > probs[best] { i } else { best });
                if predicted == usize::from(label) {
                    correct += 1;
                }
            }
            start += b;
        }
        let n = data.len().max(1) as f64;
        Evaluation { loss: loss / n, accuracy: correct as f64 / n, samples: data.len() }
    }
}
