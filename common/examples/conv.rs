//! Measures the convolution and pooling kernels on one thread at batch 64,
//! at the layer shapes of LeNet-5 and the FedAvg CNN (and a colour layer);
//! prints Markdown tables (docs/performance.md).
//!
//! `cargo run --release -p lazyavg-common --example conv`
//!
//! The first table times each layer by every algorithm that supports it
//! (im2col, Winograd), marking the one `Conv2dGeometry::algorithm` chooses;
//! the second compares the two orientations of im2col's forward product,
//! `W · columns` and `(columnsᵀ · Wᵀ)ᵀ`.

use std::hint::black_box;
use std::time::Instant;

use lazyavg_common::conv::{self, Algorithm, Conv2dGeometry};
use lazyavg_common::matmul::{Matrix, matmul, matmul_transposed};
use lazyavg_common::pool::{self, MaxPoolGeometry};
use ndarray::{ArrayView4, ArrayViewMut4};

const BATCH: usize = 64;
const REPETITIONS: usize = 20;

/// Median seconds of `REPETITIONS` calls of `work`.
fn seconds(mut work: impl FnMut()) -> f64 {
    work();
    let mut times: Vec<f64> = (0..REPETITIONS)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[REPETITIONS / 2]
}

fn layers() -> [(&'static str, Conv2dGeometry); 5] {
    let conv = |in_channels, side, out_channels, padding| Conv2dGeometry {
        in_channels,
        in_height: side,
        in_width: side,
        out_channels,
        kernel: 5,
        stride: 1,
        padding,
    };
    [
        ("LeNet-5 conv 1", conv(1, 28, 6, 2)),
        ("LeNet-5 conv 2", conv(6, 14, 16, 0)),
        ("CNN conv 1", conv(1, 28, 32, 2)),
        ("colour conv (3×32×32 to 16)", conv(3, 32, 16, 2)),
        ("CNN conv 2", conv(32, 14, 64, 2)),
    ]
}

fn main() {
    println!("| layer (batch {BATCH}) | algorithm | im2col ms | forward ms | GFLOP/s | backward ms | GFLOP/s |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut orientations = Vec::new();
    for (name, g) in layers() {
        let (c, h, w) = (g.in_channels, g.in_height, g.in_width);
        let input: Vec<f32> = (0..c * h * w * BATCH).map(|i| (i % 13) as f32 * 0.1).collect();
        let weight: Vec<f32> = (0..g.weight_len()).map(|i| (i % 7) as f32 * 0.01).collect();
        let mut output = vec![0.0; g.out_channels * g.out_pixels() * BATCH];
        let (mut weight_grad, mut bias_grad, mut input_grad) =
            (vec![0.0; g.weight_len()], vec![0.0; g.out_channels], vec![0.0; input.len()]);
        let view = || ArrayView4::from_shape((c, h, w, BATCH), &input[..]).expect("input shape");
        // GFLOP/s count im2col's multiply-adds for both algorithms.
        let flop = 2.0 * (g.weight_len() * g.out_pixels() * BATCH) as f64;
        for algorithm in [Algorithm::Im2col, Algorithm::Winograd].into_iter().filter(|a| g.supports(*a)) {
            let mut workspace = vec![0.0; g.workspace_len_for(algorithm, BATCH)];
            let im2col = match algorithm {
                Algorithm::Im2col => format!("{:.2}", seconds(|| conv::im2col(&g, view(), &mut workspace)) * 1e3),
                Algorithm::Winograd => String::new(),
            };
            let forward = seconds(|| conv::forward_with(algorithm, &g, &weight, view(), &mut workspace, &mut output));
            let backward = seconds(|| {
                conv::forward_with(algorithm, &g, &weight, view(), &mut workspace, &mut output);
                let below = ArrayViewMut4::from_shape((c, h, w, BATCH), &mut input_grad[..]).expect("input shape");
                let grads = (&mut weight_grad[..], &mut bias_grad[..]);
                conv::backward_with(algorithm, &g, &weight, (&mut workspace, &output), grads, Some(below));
            }) - forward;
            let chosen = if g.algorithm() == algorithm { " (chosen)" } else { "" };
            println!(
                "| {name} | {algorithm:?}{chosen} | {im2col} | {:.2} | {:.1} | {:.2} | {:.1} |",
                forward * 1e3,
                flop / forward / 1e9,
                backward * 1e3,
                2.0 * flop / backward / 1e9
            );
        }
        let mut columns = vec![0.0; g.columns_len(BATCH)];
        conv::im2col(&g, view(), &mut columns);
        let (patch, width) = (g.patch(), g.out_pixels() * BATCH);
        let cols = Matrix::new(&columns, patch, width);
        let w = Matrix::new(&weight, g.out_channels, patch);
        let plain = seconds(|| matmul(w, cols, black_box(&mut output)));
        let transposed = seconds(|| matmul_transposed(cols.t(), w.t(), black_box(&mut output)));
        orientations.push((name, g.out_channels, patch, width, flop / plain / 1e9, flop / transposed / 1e9));
    }
    let g = MaxPoolGeometry { channels: 32, in_height: 28, in_width: 28, kernel: 2, stride: 2 };
    let input: Vec<f32> = (0..32 * 28 * 28 * BATCH).map(|i| (i % 13) as f32).collect();
    let (mut output, mut argmax) = (vec![0.0; g.out_len() * BATCH], vec![0; g.out_len() * BATCH]);
    let mut input_grad = vec![0.0; input.len()];
    let view = ArrayView4::from_shape((32, 28, 28, BATCH), &input[..]).expect("input shape");
    let forward = seconds(|| pool::forward(&g, view, &mut output, &mut argmax));
    let backward = seconds(|| {
        let below = ArrayViewMut4::from_shape((32, 28, 28, BATCH), &mut input_grad[..]).expect("input shape");
        pool::backward(&g, &output, &argmax, below);
    });
    println!("| CNN maxpool 1 (32×28×28) | | | {:.2} | | {:.2} | |", forward * 1e3, backward * 1e3);

    println!("\n| forward product (batch {BATCH}) | W · columns | (columnsᵀ · Wᵀ)ᵀ |");
    println!("|---|---:|---:|");
    for (name, out, patch, width, plain, transposed) in orientations {
        println!("| {name} ({out}×{patch} · {patch}×{width}) | {plain:.1} GFLOP/s | {transposed:.1} GFLOP/s |");
    }
}
