//! Tests of networks with convolution and pooling stages: the passes wired
//! together (layouts, the ReLU fused before and after a pooling, the input
//! batch read as images) against central differences of the network's own
//! loss. The kernels themselves are checked exactly in `conv` and `pool`.

use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;

use crate::dataset::Dataset;
use crate::idx::Images;
use crate::model::{Network, Workspace};
use crate::rng::StreamRng;
use crate::spec::{InputShape, ModelSpec};

/// A batch of `b` random images of `shape` with labels below `classes`.
fn random_batch(rng: &mut StreamRng, b: usize, shape: InputShape, classes: u8) -> Dataset {
    let pixels = (0..b * shape.len()).map(|_| rng.random()).collect();
    let labels = (0..b).map(|_| rng.random_range(0..classes)).collect();
    Dataset::new(Images { count: b, shape, pixels }, labels, "tiny").expect("a tiny batch")
}

fn network(input: InputShape, layers: &str, classes: usize) -> Network {
    let layers = ModelSpec::parse_layers(layers).expect("layers parse");
    ModelSpec { input, layers, classes }.build().expect("a valid network")
}

/// The mean loss of `params` on the batch loaded in `ws`, and its gradient.
fn loss_and_grad(net: &Network, params: &[f32], ws: &mut Workspace, b: usize) -> (f32, Vec<f32>) {
    let mut grads = vec![f32::NAN; net.len()];
    let loss = net.loss_and_grad(params, &mut grads, ws, b);
    (loss, grads)
}

#[test]
fn cnn_gradients_match_central_differences() {
    let (input, deep) =
        (InputShape { channels: 2, height: 5, width: 4 }, InputShape { channels: 16, height: 5, width: 4 });
    // Stride 2 and padding; a pooling window that leaves the third row of its
    // 3×2 input out; ReLUs after a convolution and after a pooling; Winograd
    // convolutions (16 input channels) after another layer and on the input
    // batch itself, without ReLUs or pooling (with hundreds of units, one
    // would likely cross its kink, or a window change its maximum, within
    // the difference step).
    for (input, layers) in [
        (input, "conv 3 3x3 stride 2 pad 1, relu, maxpool 2, flatten, dense 4, relu, dense 3"),
        (input, "conv 2 2x2, maxpool 2 stride 1, relu, conv 3 2x2 pad 1, relu, flatten, dense 3"),
        (input, "conv 16 3x3 pad 1, conv 2 5x5 pad 2, flatten, dense 3"),
        (deep, "conv 2 3x3 pad 1, flatten, dense 3"),
    ] {
        let net = network(input, layers, 3);
        let mut rng = StreamRng::seed_from_u64(3);
        let mut params = net.init(3);
        for tensor in net.layout().tensors.iter().filter(|t| t.name.ends_with(".bias")) {
            for v in &mut params[tensor.range.clone()] {
                *v = (rng.sample::<f64, _>(StandardNormal) * 0.1) as f32;
            }
        }
        let b = 4;
        let data = random_batch(&mut rng, b, input, 3);
        let mut ws = Workspace::new(&net, b);
        ws.load_batch(&data, &(0..b as u32).collect::<Vec<_>>());
        let (_, grads) = loss_and_grad(&net, &params, &mut ws, b);
        let h = 1e-2;
        for i in 0..params.len() {
            let v = params[i];
            params[i] = v + h;
            let up = loss_and_grad(&net, &params, &mut ws, b).0;
            params[i] = v - h;
            let down = loss_and_grad(&net, &params, &mut ws, b).0;
            params[i] = v;
            let numeric = f64::from(up - down) / f64::from(2.0 * h);
            let analytic = f64::from(grads[i]);
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 0.05 * numeric.abs(),
                "{layers}: parameter {i} ({}): analytic {analytic} vs numeric {numeric}",
                net.layout().tensors.iter().find(|t| t.range.contains(&i)).map_or("?", |t| t.name.as_str()),
            );
        }
    }
}

#[test]
fn the_presets_have_pytorchs_tensors() {
    let mnist = InputShape { channels: 1, height: 28, width: 28 };
    let lenet = network(
        mnist,
        "conv 6 5x5 pad 2, relu, maxpool 2, conv 16 5x5, relu, maxpool 2, flatten, dense 120, relu, dense 84, relu, dense 10",
        10,
    );
    let shapes: Vec<(&str, &[usize])> =
        lenet.layout().tensors.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
    assert_eq!(
        shapes,
        [
            ("0.weight", &[6, 1, 5, 5][..]),
            ("0.bias", &[6]),
            ("3.weight", &[16, 6, 5, 5]),
            ("3.bias", &[16]),
            ("7.weight", &[120, 400]),
            ("7.bias", &[120]),
            ("9.weight", &[84, 120]),
            ("9.bias", &[84]),
            ("11.weight", &[10, 84]),
            ("11.bias", &[10]),
        ]
    );
    let cnn = network(
        mnist,
        "conv 32 5x5 pad 2, relu, maxpool 2, conv 64 5x5 pad 2, relu, maxpool 2, flatten, dense 512, relu, dense 10",
        10,
    );
    assert_eq!(cnn.len(), 1_663_370);
}

/// The first stage reads the input batch `[B, features]` in place; a
/// batch trains the same whether it is loaded alone or among others.
#[test]
fn a_sample_gets_the_same_logits_alone_or_in_a_batch() {
    let input = InputShape { channels: 1, height: 6, width: 6 };
    let net = network(input, "conv 2 3x3, relu, maxpool 2, flatten, dense 2", 2);
    let params = net.init(1);
    let mut rng = StreamRng::seed_from_u64(1);
    let data = random_batch(&mut rng, 3, input, 2);
    let mut together = Workspace::new(&net, 3);
    let all = net.evaluate(&params, &data, &mut together);
    let mut alone = Workspace::new(&net, 1);
    let one_by_one = net.evaluate(&params, &data, &mut alone);
    assert!((all.loss - one_by_one.loss).abs() < 1e-6, "{all:?} vs {one_by_one:?}");
}

/// The ensemble of one model is that model (its logits are the last stage's,
/// whatever the number of dense layers).
#[test]
fn the_ensemble_of_one_cnn_is_that_cnn() {
    let input = InputShape { channels: 1, height: 6, width: 6 };
    let net = network(input, "conv 2 3x3, relu, maxpool 2, flatten, dense 3, relu, dense 2", 2);
    let params = net.init(4);
    let data = random_batch(&mut StreamRng::seed_from_u64(4), 8, input, 2);
    let mut ws = Workspace::new(&net, 8);
    let alone = net.evaluate(&params, &data, &mut ws);
    let ensemble = net.evaluate_ensemble(&[&params], &data, &mut ws);
    assert_eq!(alone.accuracy, ensemble.accuracy);
    assert!((alone.loss - ensemble.loss).abs() < 1e-5, "{alone:?} vs {ensemble:?}");
}
