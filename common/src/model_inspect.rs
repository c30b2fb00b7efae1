//! Looking inside a network rather than training it: every hidden layer's
//! activations (for unit matching) and the ensemble of several models (what a
//! merge aims at). These may allocate; training never calls them.

use super::{Evaluation, Network, Workspace, log_sum_exp};
use crate::dataset::Dataset;

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
