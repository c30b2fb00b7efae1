//! `lazyavg bench train`: how fast one thread trains each named model (`mlp`,
//! `lenet5`, `cnn`, or the one `--model`), and how that compares with the best
//! the same matrix-product backend does on one thread. The gap says how much a
//! faster kernel could still win, and the samples/s are the unit that cluster
//! throughput is measured against.
//!
//! Everything runs on the calling thread: training and the ceiling both call
//! [`matmul::matmul`], which runs the `gemm` crate without parallelism.

use std::time::{Duration, Instant};

use lazyavg_common::config::{ModelChoice, ModelSettings, TrainConfig};
use lazyavg_common::dataset::{self, DataSplit, Dataset};
use lazyavg_common::matmul::{self, Matrix};
use lazyavg_common::rng::{self, Purpose};
use lazyavg_common::spec::ModelSpec;
use lazyavg_common::train::{Progress, Trainer};
use rand::RngExt;
use tracing::info;

use crate::cli::BenchTrainArgs;

/// The models measured when no `--model` (or `--hidden`) names one.
const MODELS: [&str; 3] = ["mlp", "lenet5", "cnn"];
/// Batch sizes of each of [`MODELS`]: the sizes their defaults use.
const MODELS_BATCH_SIZES: [usize; 2] = [32, 64];
/// Batch sizes of the one model named, one table row each: up to where the
/// MLP reaches the ceiling.
const BATCH_SIZES: [usize; 4] = [32, 64, 128, 256];
/// Timed repetitions per row; the median is reported so that one preempted
/// repetition does not move the figure.
const REPETITIONS: usize = 5;
/// Side of the square matrix product that gives the ceiling: large enough that
/// the backend runs at its best, small enough to time in a fraction of a second.
const CEILING_SIZE: usize = 1024;

/// The longest `--seconds` per row: an hour already makes a run of a day.
const MAX_SECONDS: f64 = 3600.0;
/// Samples trained between two clock reads (rounded to whole batches).
const CHUNK_SAMPLES: usize = 1024;

/// One model to measure.
struct Model {
    /// Its name in the table: `--model`'s name, or `stack`.
    name: String,
    spec: ModelSpec,
    flop_per_sample: f64,
    /// Its training defaults; each row sets the batch size.
    defaults: TrainConfig,
}

/// One measured row of the table.
struct Row {
    label: String,
    /// None for the ceiling when several models are measured: it has a rate
    /// in samples per second only for one model's FLOP per sample.
    samples_per_s: Option<f64>,
    gflop_per_s: f64,
}

/// Repeatable work that reports how many units (samples, FLOP) it did.
type Workload<'a> = Box<dyn FnMut() -> f64 + 'a>;

pub fn run(args: &BenchTrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds <= MAX_SECONDS,
        "invalid --seconds: must be above 0 and at most {MAX_SECONDS}, got {}",
        args.seconds
    );
    let per_repetition = Duration::from_secs_f64(args.seconds / REPETITIONS as f64);
    let (split, _) = dataset::load_dir(&args.data.data_dir, false)?;
    let (models, batch_sizes) = chosen(&args.model, &split)?;
    let mut workloads = Vec::with_capacity(models.len() * batch_sizes.len() + 1);
    let mut measured = Vec::with_capacity(workloads.capacity());
    for model in &models {
        for &batch_size in batch_sizes {
            let config = TrainConfig { batch_size, ..model.defaults.clone() };
            workloads.push(training(config, &model.spec, &split.train)?);
            measured.push((model, batch_size));
        }
    }
    workloads.push(matmul(CEILING_SIZE));
    info!(rows = workloads.len(), seconds_per_row = args.seconds, "benchmarking on one thread");
    let rates = median_rates(per_repetition, &mut workloads);
    let (&ceiling, training_rates) = rates.split_last().expect("the ceiling is measured last");
    let mut rows: Vec<Row> = measured
        .iter()
        .zip(training_rates)
        .map(|((model, batch_size), &samples_per_s)| Row {
            label: format!("{}, batch {batch_size}", model.name),
            samples_per_s: Some(samples_per_s),
            gflop_per_s: samples_per_s * model.flop_per_sample / 1e9,
        })
        .collect();
    let one_model = match &models[..] {
        [model] => Some(model.flop_per_sample),
        _ => None,
    };
    rows.push(Row {
        label: format!("ceiling: {CEILING_SIZE}×{CEILING_SIZE} f32 matmul (gemm)"),
        samples_per_s: one_model.map(|flop_per_sample| ceiling / flop_per_sample),
        gflop_per_s: ceiling / 1e9,
    });
    print_table(&models, per_repetition, &rows);
    Ok(())
}

/// The models to measure and their batch sizes: [`MODELS`] at
/// [`MODELS_BATCH_SIZES`] unless `settings` name one (`--model`, `--hidden`),
/// which is then measured at [`BATCH_SIZES`].
fn chosen(settings: &ModelSettings, split: &DataSplit) -> anyhow::Result<(Vec<Model>, &'static [usize])> {
    let (choices, batch_sizes) = match (&settings.model, &settings.hidden) {
        (None, None) => {
            let named = |name: &str| ModelSettings { model: Some(ModelChoice::Named(name.into())), ..settings.clone() };
            (MODELS.map(named).to_vec(), &MODELS_BATCH_SIZES[..])
        }
        _ => (vec![settings.clone()], &BATCH_SIZES[..]),
    };
    let mut models = Vec::with_capacity(choices.len());
    for choice in choices {
        let spec = choice.resolve(split.train.input_shape(), split.label_count())?;
        let flop_per_sample = spec.build()?.train_flop_per_sample() as f64;
        let name = match &choice.model {
            Some(ModelChoice::Named(name)) => name.clone(),
            Some(ModelChoice::Stack(_)) => "stack".to_owned(),
            None => "mlp".to_owned(),
        };
        models.push(Model { name, spec, flop_per_sample, defaults: choice.train_defaults() });
    }
    Ok((models, batch_sizes))
}

/// Training steps of `config` on `data`: each call trains about
/// [`CHUNK_SAMPLES`] samples of a shuffled epoch and returns how many.
fn training<'a>(config: TrainConfig, model: &ModelSpec, data: &'a Dataset) -> anyhow::Result<Workload<'a>> {
    let mut trainer = Trainer::new(&config, model)?;
    let order = rng::permutation(data.len(), &mut rng::stream(config.seed, Purpose::LocalOrder));
    // Whole batches per chunk, so no step runs on a short batch and skews the rate.
    let chunk = CHUNK_SAMPLES.div_ceil(config.batch_size) * config.batch_size;
    anyhow::ensure!(data.len() >= chunk, "the training set holds {} samples; the benchmark needs {chunk}", data.len());
    let chunks = data.len() / chunk;
    let mut next = 0;
    Ok(Box::new(move || {
        let start = (next % chunks) * chunk;
        next += 1;
        // Progress through the epoch as in real training, so the learning-rate
        // schedule (and with it the weights' scale) behaves as it does there.
        let progress = Progress::in_epoch(0, 1, start, data.len());
        trainer.train(data, &order[start..start + chunk], progress).samples as f64
    }))
}

/// One `n × n` f32 matrix product per call, through the same function as
/// training's products, returning its 2·n³ FLOP.
fn matmul(n: usize) -> Workload<'static> {
    let mut rng = rng::stream(7, Purpose::BenchOperands);
    let mut random = || (0..n * n).map(|_| rng.random::<f32>()).collect::<Vec<_>>();
    let (a, b) = (random(), random());
    let mut c = vec![0.0; n * n];
    let flop = 2.0 * (n as f64).powi(3);
    Box::new(move || {
        matmul::matmul(Matrix::new(&a, n, n), Matrix::new(&b, n, n), &mut c);
        flop
    })
}

/// Median units per second of each workload. Runs one untimed warm-up round
/// and then [`REPETITIONS`] timed rounds; in each round every workload runs
/// for at least `per_repetition` in turn. Interleaving the workloads means a
/// slow stretch of the machine (another process, a throttled clock) slows
/// every row alike instead of one row, so the rows stay comparable.
fn median_rates(per_repetition: Duration, workloads: &mut [Workload<'_>]) -> Vec<f64> {
    let mut rates = vec![Vec::with_capacity(REPETITIONS); workloads.len()];
    for round in 0..=REPETITIONS {
        for (work, rates) in workloads.iter_mut().zip(&mut rates) {
            let rate = rate_for(per_repetition, work);
            if round > 0 {
                rates.push(rate);
            }
        }
    }
    rates
        .into_iter()
        .map(|mut r| {
            r.sort_by(f64::total_cmp);
            r[REPETITIONS / 2]
        })
        .collect()
}

/// Units per second of `work` called over and over for at least `duration`.
fn rate_for(duration: Duration, work: &mut Workload<'_>) -> f64 {
    let start = Instant::now();
    let mut units = 0.0;
    while start.elapsed() < duration {
        units += work();
    }
    units / start.elapsed().as_secs_f64()
}

/// The Markdown table on stdout, ready to paste into the README.
fn print_table(models: &[Model], per_repetition: Duration, rows: &[Row]) {
    let ceiling = rows.last().map_or(f64::NAN, |r| r.gflop_per_s);
    println!(
        "One thread; each row is the median of {REPETITIONS} repetitions of {:.2} s, rows interleaved, after a \
         warm-up round. FLOP per training sample (2 per multiply-add of the forward pass, the weight gradients and \
         the input gradients, a convolution's like a dense layer's):\n",
        per_repetition.as_secs_f64()
    );
    for model in models {
        println!("- {}: {}, {} FLOP", model.name, model.spec, thousands(model.flop_per_sample));
    }
    println!("\n| what | samples/s | GFLOP/s | share of ceiling |");
    println!("|---|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {:.1} | {:.0}% |",
            row.label,
            row.samples_per_s.map_or_else(|| "—".to_owned(), thousands),
            row.gflop_per_s,
            100.0 * row.gflop_per_s / ceiling
        );
    }
}

/// `1234567.8` as `1,234,568`: rates are read by people comparing magnitudes.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(64_762.3), "64,762");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }
}
