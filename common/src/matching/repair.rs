//! REPAIR (Jordan et al., ICLR 2023): after averaging, rescale each merged
//! unit (hidden and output) so that its pre-activation mean and standard
//! deviation on training images equal the (weighted) average of the aligned
//! inputs'. The output layer's logits are reset too: measured on MNIST
//! (docs/merging.md), that adds 0.01–0.19 pp over hidden units alone;
//! correcting the mean only (the bias) loses 0.1–0.8 pp against mean and std.
//!
//! Averaging two matched but not identical units gives a unit whose
//! pre-activation varies less than either input's; layer after layer the
//! signal fades. Resetting each unit's statistics, from the input upwards
//! (each layer's statistics depend on the layers below), undoes that.

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::matmul::{Matrix, matmul};
use crate::model::{Network, Workspace};

/// A standard deviation below this is a unit that does not vary: it is shifted, not scaled.
const MIN_STD: f64 = 1e-6;

/// Rescales the units of `merged` in place so that their
/// pre-activation statistics on the images at `indices` of `data` are the
/// `weights`-weighted means of those of `aligned` (the inputs, each already
/// permuted into the merged model's unit order).
pub fn repair(
    mlp: &Network,
    merged: &mut [f32],
    aligned: &[Vec<f32>],
    weights: &[f64],
    data: &Dataset,
    indices: &[u32],
) -> Result<()> {
    mlp.check_dense_only("REPAIR")?;
    if aligned.len() != weights.len() || indices.is_empty() {
        return Err(Error::Matching(format!(
            "REPAIR needs one weight per input and some images: {} inputs, {} weights, {} images",
            aligned.len(),
            weights.len(),
            indices.len()
        )));
    }
    let total: f64 = weights.iter().sum();
    let inputs: Vec<Vec<Vec<(f64, f64)>>> =
        aligned.iter().map(|params| preactivation_stats(mlp, params, data, indices)).collect();
    for l in 0..mlp.layout().layers.len() {
        let now = preactivation_stats(mlp, merged, data, indices);
        let layer = &mlp.layout().layers[l];
        for (i, &(mean, std)) in now[l].iter().enumerate() {
            let target_mean: f64 = inputs.iter().zip(weights).map(|(s, w)| w * s[l][i].0).sum::<f64>() / total;
            let target_std: f64 = inputs.iter().zip(weights).map(|(s, w)| w * s[l][i].1).sum::<f64>() / total;
            let scale = if std > MIN_STD { target_std / std } else { 1.0 };
            let row = layer.weight.start + i * layer.inputs;
            for w in &mut merged[row..row + layer.inputs] {
                *w = (f64::from(*w) * scale) as f32;
            }
            let bias = &mut merged[layer.bias.start + i];
            *bias = ((f64::from(*bias) - mean) * scale + target_mean) as f32;
        }
    }
    Ok(())
}

/// `(mean, std)` of every unit's pre-activation `W_l · a_{l−1} + b_l` (the
/// logits for the output layer) over the images at `indices`, per layer.
fn preactivation_stats(mlp: &Network, params: &[f32], data: &Dataset, indices: &[u32]) -> Vec<Vec<(f64, f64)>> {
    let m = indices.len();
    let layout = mlp.layout();
    let mut ws = Workspace::new(mlp, 256);
    let acts = mlp.hidden_activations(params, data, indices, &mut ws);
    let mut x = vec![0.0f32; m * mlp.inputs()];
    let mut labels = vec![0u8; m];
    data.fill_batch(indices.iter().map(|&i| i as usize), &mut x, &mut labels);
    let mut stats = Vec::with_capacity(layout.layers.len());
    for (l, layer) in layout.layers.iter().enumerate() {
        let below =
            if l == 0 { Matrix::new(&x, m, layer.inputs).t() } else { Matrix::new(&acts[l - 1], layer.inputs, m) };
        let mut z = vec![0.0f32; layer.outputs * m];
        // [out, in] · [in, M]
        matmul(Matrix::new(&params[layer.weight.clone()], layer.outputs, layer.inputs), below, &mut z);
        let layer_stats = z
            .chunks_exact(m)
            .zip(&params[layer.bias.clone()])
            .map(|(row, &b)| {
                let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / m as f64;
                let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / m as f64;
                (mean + f64::from(b), var.sqrt())
            })
            .collect();
        stats.push(layer_stats);
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::Images;
    use crate::spec::{InputShape, ModelSpec};
    use rand::{RngExt, SeedableRng};

    use crate::rng::StreamRng;

    #[test]
    fn repaired_units_have_the_inputs_mean_statistics() {
        let mlp = ModelSpec::from_widths(&[20, 16, 12, 4]).unwrap().build().unwrap();
        let (a, b) = (mlp.init(1), mlp.init(2));
        let mut rng = StreamRng::seed_from_u64(3);
        let pixels = (0..300 * 20).map(|_| rng.random_range(0..256) as u8).collect();
        let labels = (0..300).map(|_| rng.random_range(0..4) as u8).collect();
        let data = Dataset::new(
            Images { count: 300, shape: InputShape { channels: 1, height: 4, width: 5 }, pixels },
            labels,
            "random",
        )
        .unwrap();
        let indices: Vec<u32> = (0..300).collect();
        let mut merged: Vec<f32> = a.iter().zip(&b).map(|(x, y)| 0.25 * x + 0.75 * y).collect();
        let before = preactivation_stats(&mlp, &merged, &data, &indices);
        repair(&mlp, &mut merged, &[a.clone(), b.clone()], &[1.0, 3.0], &data, &indices).unwrap();
        let (sa, sb) = (preactivation_stats(&mlp, &a, &data, &indices), preactivation_stats(&mlp, &b, &data, &indices));
        let after = preactivation_stats(&mlp, &merged, &data, &indices);
        for l in 0..3 {
            for i in 0..after[l].len() {
                let target = (0.25 * sa[l][i].0 + 0.75 * sb[l][i].0, 0.25 * sa[l][i].1 + 0.75 * sb[l][i].1);
                let (got, was) = (after[l][i], before[l][i]);
                assert!(
                    (got.0 - target.0).abs() < 1e-4 && (got.1 - target.1).abs() < 1e-4,
                    "layer {l} unit {i}: {got:?} vs {target:?}"
                );
                assert!(was.1 < target.1, "averaging shrank the spread of layer {l} unit {i}: {was:?} vs {target:?}");
            }
        }
    }
}
