//! The matching module's properties on small random models.

use super::*;
use crate::dataset::Dataset;
use crate::idx::Images;
use crate::model::{Network, Workspace};
use crate::spec::{InputShape, ModelSpec};
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;

use crate::rng::StreamRng;

/// A model of `widths` with He weights and random biases around 0.3 (so that
/// the biases matter to matching and to the outputs, and few units are dead).
fn model(widths: &[usize], seed: u64) -> (Network, Vec<f32>) {
    let arch = ModelSpec::from_widths(widths).unwrap();
    let mlp = arch.build().unwrap();
    let mut params = mlp.init(seed);
    let mut rng = StreamRng::seed_from_u64(seed);
    for layer in &mlp.layout().layers {
        for b in &mut params[layer.bias.clone()] {
            *b = (0.3 + rng.sample::<f64, _>(StandardNormal) * 0.05) as f32;
        }
    }
    (mlp, params)
}

/// Random images, mostly black like MNIST's: sparse inputs vary a unit's
/// input from image to image more than dense ones, so fewer units are dead.
fn images(inputs: usize, count: usize, seed: u64) -> Dataset {
    random_images(1, inputs, count, seed)
}

fn random_images(rows: usize, cols: usize, count: usize, seed: u64) -> Dataset {
    let mut rng = StreamRng::seed_from_u64(seed);
    let pixels = (0..count * rows * cols)
        .map(|_| if rng.random_range(0..4) == 0 { rng.random_range(0..256) as u8 } else { 0 })
        .collect();
    let labels = (0..count).map(|_| rng.random_range(0..4) as u8).collect();
    Dataset::new(
        Images { count, shape: InputShape { channels: 1, height: rows, width: cols }, pixels },
        labels,
        "random",
    )
    .unwrap()
}

fn permuted(spec: &PermutationSpec, perm: &Permutation, params: &[f32]) -> Vec<f32> {
    let mut out = params.to_vec();
    apply(spec, perm, &mut out).unwrap();
    out
}

/// Three hidden layers. Wide enough that weight matching does not stall in
/// a local optimum on a random model: at 12-16-10-8-4, 2 seeds of 20 did.
/// Activation matching pairs dead units arbitrarily (they correlate with
/// nothing), so exact recovery needs every unit to fire on some image. A
/// unit dead on every image (`w·x + b < 0` with `b > 0`) fires on every one
/// once its incoming weights are negated; layers are revived from the input
/// upwards, since each changes the next one's inputs.
fn revive_dead_units(mlp: &Network, params: &mut [f32], data: &Dataset) {
    let indices: Vec<u32> = (0..data.len() as u32).collect();
    let mut ws = Workspace::new(mlp, 64);
    for (g, layer) in mlp.layout().layers[..mlp.layout().layers.len() - 1].iter().enumerate() {
        let acts = mlp.hidden_activations(params, data, &indices, &mut ws);
        for (i, row) in acts[g].chunks_exact(data.len()).enumerate() {
            if row.iter().all(|&v| v <= 0.0) {
                let start = layer.weight.start + i * layer.inputs;
                params[start..start + layer.inputs].iter_mut().for_each(|w| *w = -*w);
                assert!(params[layer.bias.start + i] > 0.0, "a negative bias cannot be revived");
            }
        }
    }
    let acts = mlp.hidden_activations(params, data, &indices, &mut ws);
    assert!(acts.iter().all(|a| a.chunks_exact(data.len()).all(|row| row.iter().any(|&v| v > 0.0))));
}

const WIDTHS: [usize; 5] = [30, 24, 20, 16, 10];
const INPUTS: usize = WIDTHS[0];

#[test]
fn a_permuted_model_computes_the_same_outputs() {
    let (mlp, params) = model(&WIDTHS, 1);
    let spec = mlp.permutation_spec();
    let perm = Permutation::random(&spec, &mut StreamRng::seed_from_u64(2));
    assert!(!perm.is_identity());
    let moved = permuted(&spec, &perm, &params);
    assert_ne!(moved, params);
    let data = images(INPUTS, 50, 3);
    let mut ws = Workspace::new(&mlp, 16);
    let (before, after) = (mlp.evaluate(&params, &data, &mut ws), mlp.evaluate(&moved, &data, &mut ws));
    assert!((before.loss - after.loss).abs() < 1e-5 * before.loss, "{before:?} vs {after:?}");
    assert_eq!(before.accuracy, after.accuracy);
    // Each hidden unit of the permuted model is the unit `perm` says, exactly
    // up to the order of the sums.
    let indices: Vec<u32> = (0..50).collect();
    let acts = mlp.hidden_activations(&params, &data, &indices, &mut ws);
    let moved_acts = mlp.hidden_activations(&moved, &data, &indices, &mut ws);
    for (g, (a, b)) in acts.iter().zip(&moved_acts).enumerate() {
        for (i, &j) in perm.group(g).iter().enumerate() {
            for s in 0..50 {
                let (x, y) = (a[j as usize * 50 + s], b[i * 50 + s]);
                assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "group {g} unit {i} sample {s}: {x} vs {y}");
            }
        }
    }
}

#[test]
fn inverse_undoes_and_compose_chains() {
    let (mlp, params) = model(&WIDTHS, 4);
    let spec = mlp.permutation_spec();
    let mut rng = StreamRng::seed_from_u64(5);
    let (p, q) = (Permutation::random(&spec, &mut rng), Permutation::random(&spec, &mut rng));
    assert_eq!(permuted(&spec, &p.inverse(), &permuted(&spec, &p, &params)), params);
    assert!(p.compose(&p.inverse()).is_identity());
    assert_eq!(permuted(&spec, &p.compose(&q), &params), permuted(&spec, &p, &permuted(&spec, &q, &params)));
    assert_eq!(permuted(&spec, &Permutation::identity(&spec), &params), params);
}

#[test]
fn both_matchings_recover_a_hidden_permutation_exactly() {
    for seed in 0..5 {
        let (mlp, mut params) = model(&WIDTHS, 10 + seed);
        let spec = mlp.permutation_spec();
        let perm = Permutation::random(&spec, &mut StreamRng::seed_from_u64(20 + seed));
        let data = images(INPUTS, 200, seed);
        revive_dead_units(&mlp, &mut params, &data);
        let moved = permuted(&spec, &perm, &params);
        let by_weights = match_weights(&spec, &params, &moved, seed, 50).unwrap();
        assert_eq!(by_weights, perm.inverse(), "seed {seed}");
        assert_eq!(permuted(&spec, &by_weights, &moved), params);
        let aligner = ActivationAlignment { mlp: mlp.clone(), data: &data, indices: (0..200).collect() };
        assert_eq!(aligner.align(&params, &moved).unwrap(), perm.inverse(), "seed {seed}");
    }
}

#[test]
fn matching_a_model_with_itself_is_the_identity() {
    let (mlp, mut params) = model(&WIDTHS, 6);
    let data = images(INPUTS, 100, 7);
    revive_dead_units(&mlp, &mut params, &data);
    let spec = mlp.permutation_spec();
    assert!(match_weights(&spec, &params, &params, 1, 50).unwrap().is_identity());
    let aligner = ActivationAlignment { mlp, data: &data, indices: (0..100).collect() };
    assert!(aligner.align(&params, &params).unwrap().is_identity());
}

/// Dead units tie with every unit of the other model: they stay where they
/// are rather than swap, so matching a model with itself moves nothing.
#[test]
fn activation_matching_leaves_dead_units_in_place() {
    let (mlp, mut params) = model(&WIDTHS, 6);
    let data = images(INPUTS, 100, 7);
    let layer = &mlp.layout().layers[0];
    for unit in [2, 5, 9] {
        params[layer.bias.start + unit] = -1e3;
    }
    let indices: Vec<u32> = (0..100).collect();
    let acts = mlp.hidden_activations(&params, &data, &indices, &mut Workspace::new(&mlp, 64));
    let dead = acts[0].chunks_exact(100).filter(|row| row.iter().all(|&v| v == 0.0)).count();
    assert!(dead >= 3, "only {dead} dead units");
    let aligner = ActivationAlignment { mlp, data: &data, indices };
    assert!(aligner.align(&params, &params).unwrap().is_identity());
}

#[test]
fn merging_a_model_with_its_permutation_gives_the_model_back() {
    let (mlp, params) = model(&WIDTHS, 8);
    let spec = mlp.permutation_spec();
    let moved = permuted(&spec, &Permutation::random(&spec, &mut StreamRng::seed_from_u64(9)), &params);
    let arch = mlp.spec();
    let inputs = [Input { name: "a", arch, params: &params }, Input { name: "b", arch, params: &moved }];
    let aligner = WeightAlignment { spec: spec.clone(), seed: 3, max_passes: 50 };
    let merged = merge(&spec, &inputs, &[1.0, 3.0], &aligner).unwrap();
    assert_eq!(merged.params, params);
    // Without matching, the same two inputs average to something else.
    let naive = merge(&spec, &inputs, &[1.0, 1.0], &NoAlignment { spec: spec.clone() }).unwrap();
    assert_ne!(naive.params, params);
}

#[test]
fn a_merge_is_the_weighted_mean_of_the_aligned_inputs() {
    let spec_widths = [3, 2, 2];
    let (mlp, a) = model(&spec_widths, 1);
    let (_, b) = model(&spec_widths, 2);
    let spec = mlp.permutation_spec();
    let arch = mlp.spec();
    let inputs = [Input { name: "a", arch, params: &a }, Input { name: "b", arch, params: &b }];
    let merged = merge(&spec, &inputs, &[1.0, 3.0], &NoAlignment { spec: spec.clone() }).unwrap();
    for ((&m, &x), &y) in merged.params.iter().zip(&a).zip(&b) {
        assert!((f64::from(m) - (0.25 * f64::from(x) + 0.75 * f64::from(y))).abs() < 1e-7);
    }
}

#[test]
fn bad_inputs_are_refused_with_names_and_numbers() {
    let (mlp, a) = model(&[4, 3, 2], 1);
    let (other_mlp, c) = model(&[4, 5, 2], 2);
    let spec = mlp.permutation_spec();
    let none = NoAlignment { spec: spec.clone() };
    let (arch, other_arch) = (mlp.spec(), other_mlp.spec());
    let mut nan = a.clone();
    nan[7] = f32::NAN;
    let err = |inputs: &[Input<'_>], weights: &[f64]| merge(&spec, inputs, weights, &none).unwrap_err().to_string();
    let input = |name, arch, params| Input { name, arch, params };
    assert_eq!(err(&[input("a.st", arch, &a)], &[1.0]), "cannot merge: 1 model(s) given, at least two needed");
    assert_eq!(
        err(&[input("a.st", arch, &a), input("c.st", other_arch, &c)], &[1.0, 1.0]),
        "cannot merge: a.st is 4-3-2 but c.st is 4-5-2"
    );
    assert_eq!(
        err(&[input("a.st", arch, &a), input("n.st", arch, &nan)], &[1.0, 1.0]),
        "cannot merge: n.st has parameter 7 = NaN, not finite"
    );
    assert_eq!(
        err(&[input("a.st", arch, &a), input("b.st", arch, &a)], &[1.0]),
        "cannot merge: 1 weights for 2 models"
    );
    assert_eq!(
        err(&[input("a.st", arch, &a), input("b.st", arch, &a)], &[1.0, 0.0]),
        "cannot merge: the weight of b.st is 0; weights must be positive"
    );
    assert!(Permutation::new(vec![vec![0, 0]]).unwrap_err().to_string().contains("maps two units to 0"));
    let wrong = Permutation::new(vec![vec![1, 0]]).unwrap();
    let msg = apply(&spec, &wrong, &mut a.clone()).unwrap_err().to_string();
    assert_eq!(msg, "a permutation of groups of [2] units does not fit a model whose groups have [3]");
}

#[test]
fn merge_many_stops_at_a_fixed_point_of_aligning_each_input_to_the_others() {
    let widths = [12, 10, 8, 3];
    let models: Vec<(Network, Vec<f32>)> = (20..24).map(|seed| model(&widths, seed)).collect();
    let spec = models[0].0.permutation_spec();
    let arch = models[0].0.spec();
    let inputs: Vec<Input<'_>> = models.iter().map(|(_, params)| Input { name: "m", arch, params }).collect();
    let weights = [1.0, 2.0, 1.0, 3.0];
    let aligner = WeightAlignment { spec: spec.clone(), seed: 5, max_passes: 50 };
    let (merged, rounds) = merge_many(&spec, &inputs, &weights, &aligner, 50).unwrap();
    assert!(rounds < 50, "MergeMany still changing after {rounds} rounds");
    // Random inits: aligning to the first is not a fixed point, so MergeMany had work to do.
    let first = merge(&spec, &inputs, &weights, &aligner).unwrap();
    assert_ne!(first.permutations, merged.permutations);
    let aligned: Vec<Vec<f32>> =
        inputs.iter().zip(&merged.permutations).map(|(input, p)| permuted(&spec, p, input.params)).collect();
    let none = NoAlignment { spec: spec.clone() };
    for i in 0..inputs.len() {
        let others: Vec<Input<'_>> =
            (0..inputs.len()).filter(|&j| j != i).map(|j| Input { name: "m", arch, params: &aligned[j] }).collect();
        let others_weights: Vec<f64> = (0..inputs.len()).filter(|&j| j != i).map(|j| weights[j]).collect();
        let reference = merge(&spec, &others, &others_weights, &none).unwrap().params;
        assert_eq!(aligner.align(&reference, inputs[i].params).unwrap(), merged.permutations[i], "input {i}");
    }
    // And the result is the weighted average of the inputs so aligned.
    let inputs_aligned: Vec<Input<'_>> = aligned.iter().map(|params| Input { name: "m", arch, params }).collect();
    assert_eq!(merge(&spec, &inputs_aligned, &weights, &none).unwrap().params, merged.params);
}

/// A small CNN on 8×8 images whose groups meet every case: conv to conv
/// through a pool, conv to dense through a flatten, dense to dense.
const CNN: &str = "conv 4 3x3 pad 1, relu, maxpool 2, conv 6 3x3, relu, flatten, dense 5, relu, dense 4";

fn cnn(seed: u64) -> (Network, Vec<f32>) {
    let input = InputShape { channels: 1, height: 8, width: 8 };
    let arch = ModelSpec { input, layers: ModelSpec::parse_layers(CNN).unwrap(), classes: 4 };
    let net = arch.build().unwrap();
    let mut params = net.init(seed);
    let mut rng = StreamRng::seed_from_u64(seed);
    for t in net.layout().tensors.iter().filter(|t| t.name.ends_with(".bias")) {
        for b in &mut params[t.range.clone()] {
            *b = (0.1 + rng.sample::<f64, _>(StandardNormal) * 0.05) as f32;
        }
    }
    (net, params)
}

#[test]
fn a_cnn_permutes_channels_through_pools_and_flattens() {
    let (net, params) = cnn(1);
    let spec = net.permutation_spec();
    assert_eq!(spec.sizes(), [4, 6, 5]);
    let perm = Permutation::random(&spec, &mut StreamRng::seed_from_u64(2));
    assert!((0..3).all(|g| perm.group(g).iter().enumerate().any(|(i, &j)| i as u32 != j)));
    let moved = permuted(&spec, &perm, &params);
    let data = random_images(8, 8, 40, 3);
    let mut ws = Workspace::new(&net, 16);
    let (before, after) = (net.evaluate(&params, &data, &mut ws), net.evaluate(&moved, &data, &mut ws));
    assert!((before.loss - after.loss).abs() < 1e-5 * before.loss, "{before:?} vs {after:?}");
    assert_eq!(before.accuracy, after.accuracy);
    // A channel and its copy agree on every weight: the moved model is the
    // same network, not merely one with the same loss.
    assert_eq!(permuted(&spec, &perm.inverse(), &moved), params);
}

#[test]
fn weight_matching_recovers_a_hidden_permutation_of_a_cnn() {
    for seed in 0..3 {
        let (net, params) = cnn(10 + seed);
        let spec = net.permutation_spec();
        let perm = Permutation::random(&spec, &mut StreamRng::seed_from_u64(20 + seed));
        let moved = permuted(&spec, &perm, &params);
        let found = match_weights(&spec, &params, &moved, seed, 50).unwrap();
        assert_eq!(found, perm.inverse(), "seed {seed}");
        assert!(match_weights(&spec, &params, &params, seed, 50).unwrap().is_identity());
    }
}
