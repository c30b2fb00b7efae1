//! Measures the linear assignment solvers behind unit matching, and weight
//! matching itself, on one thread; prints Markdown tables (docs/merging.md).
//!
//! `cargo run --release -p lazyavg-common --example assignment [A.safetensors B.safetensors]`
//!
//! Solvers: `lapjv` (Jonker–Volgenant) on f64 and on f32 costs, and `lsap`
//! (SciPy's shortest augmenting path, f64). Matrices: uniform random scores,
//! and the scores of weight matching between a layer and a noisy, permuted
//! copy of it (one clear best partner per unit, as between trained models).

use std::hint::black_box;
use std::time::{Duration, Instant};

use lazyavg_common::matching::{Permutation, apply, assignment, match_weights};
use lazyavg_common::matmul::{Matrix, matmul};
use lazyavg_common::rng::StreamRng;
use lazyavg_common::spec::ModelSpec;
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;

/// Median wall time of `runs` calls of `f`, and their mean CPU time: on a
/// shared machine the wall time includes waiting for a core, the CPU time not.
fn median_time(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let cpu_start = cpu_time();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    let cpu = cpu_time().saturating_sub(cpu_start) / runs as u32;
    times.sort();
    (times[runs / 2], cpu)
}

/// User and system CPU time of this process so far, from /proc/self/stat (in
/// clock ticks of 10 ms: the 14th and 15th fields); zero where unreadable.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    Duration::from_millis(10 * ticks)
}

fn ms((wall, cpu): (Duration, Duration)) -> String {
    format!("{:.1} ms ({:.0} ms CPU)", wall.as_secs_f64() * 1e3, cpu.as_secs_f64() * 1e3)
}

fn uniform(n: usize, rng: &mut StreamRng) -> Vec<f64> {
    (0..n * n).map(|_| rng.random::<f64>()).collect()
}

/// `A · Bᵀ` for a random `[n, 784]` layer A and B = a permutation of A's rows
/// plus noise as large as the weights: the score matrix of weight matching.
fn near_permutation(n: usize, rng: &mut StreamRng) -> Vec<f64> {
    let k = 784;
    let a: Vec<f32> = (0..n * k).map(|_| rng.sample::<f64, _>(StandardNormal) as f32).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let b: Vec<f32> = order
        .iter()
        .flat_map(|&r| a[r * k..(r + 1) * k].to_vec())
        .map(|v| v + rng.sample::<f64, _>(StandardNormal) as f32)
        .collect();
    let mut scores = vec![0.0f32; n * n];
    matmul(Matrix::new(&a, n, k), Matrix::new(&b, n, k).t(), &mut scores);
    scores.into_iter().map(f64::from).collect()
}

fn solve_lapjv_f32(scores: &[f64], n: usize) -> Vec<usize> {
    let costs = Array2::from_shape_fn((n, n), |(i, j)| -scores[i * n + j] as f32);
    lapjv::lapjv(&costs).expect("lapjv f32").0
}

fn solve_lsap(scores: &[f64], n: usize) -> Vec<usize> {
    lsap::solve(n, n, &scores.to_vec(), true).expect("lsap").1
}

fn main() {
    let mut rng = StreamRng::seed_from_u64(1);
    println!("| matrix | n | lapjv f64 | lapjv f32 | lsap f64 | same optimum |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    for (kind, make) in
        [("uniform random", uniform as fn(usize, &mut StreamRng) -> Vec<f64>), ("near-permutation", near_permutation)]
    {
        for n in [200, 1000] {
            let scores = make(n, &mut rng);
            let runs = if n == 200 { 51 } else { 5 };
            let ours = assignment::maximise(&scores, n).expect("lapjv");
            let theirs = solve_lsap(&scores, n);
            let f32_result = solve_lapjv_f32(&scores, n);
            let total = |p: &[usize]| p.iter().enumerate().map(|(i, &j)| scores[i * n + j]).sum::<f64>();
            let best = assignment::total(&scores, &ours);
            let same = (best - total(&theirs)).abs() <= 1e-9 * best.abs()
                && (best - total(&f32_result)).abs() <= 1e-6 * best.abs();
            let t64 = median_time(runs, || drop(black_box(assignment::maximise(&scores, n))));
            let t32 = median_time(runs, || drop(black_box(solve_lapjv_f32(&scores, n))));
            let tl = median_time(runs, || drop(black_box(solve_lsap(&scores, n))));
            println!("| {kind} | {n} | {} | {} | {} | {} |", ms(t64), ms(t32), ms(tl), if same { "yes" } else { "NO" });
        }
    }

    println!();
    println!("| weight matching | time |");
    println!("| --- | ---: |");
    // Two trained model files given as arguments are timed first.
    let files: Vec<String> = std::env::args().skip(1).collect();
    if let [a, b] = files.as_slice() {
        let (arch, a_params) = lazyavg_common::model_file::load(a.as_ref()).expect("first model");
        let (_, b_params) = lazyavg_common::model_file::load(b.as_ref()).expect("second model");
        let spec = arch.build().expect("network").permutation_spec();
        let t = median_time(3, || drop(black_box(match_weights(&spec, &a_params, &b_params, 1, 100))));
        println!("| {arch}, the two given files | {} |", ms(t));
    }
    for hidden in [200, 1000] {
        let arch = ModelSpec::from_widths(&[784, hidden, hidden, 10]).expect("architecture");
        let mlp = arch.build().expect("network");
        let spec = mlp.permutation_spec();
        let a = mlp.init(2);
        let b = mlp.init(3);
        let mut permuted_a = a.clone();
        apply(&spec, &Permutation::random(&spec, &mut rng), &mut permuted_a).expect("apply");
        for (what, other) in [("independent inits", &b), ("a permuted copy", &permuted_a)] {
            let t = median_time(3, || drop(black_box(match_weights(&spec, &a, other, 1, 100))));
            println!("| {arch}, random, {what} | {} |", ms(t));
        }
    }
}
