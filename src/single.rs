//! `lazyavg train`: one process, no cluster. The baseline the cluster is
//! measured against, and the quickest check that data and model work.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use lazyavg_common::config::{ModelSettings, TrainConfig};
use lazyavg_common::dataset::{self, DataSplit};
use lazyavg_common::model_file;
use lazyavg_common::rng::{self, Purpose};
use lazyavg_common::spec::{InputShape, ModelSpec};
use lazyavg_common::train::{Progress, Trainer};
use rand::seq::SliceRandom;
use tracing::info;

use crate::cli::TrainArgs;

/// The model and a trainer for it: from `--resume`'s file, else from the
/// model flags with weights drawn from the seed.
fn start(args: &TrainArgs, config: &TrainConfig, split: &DataSplit) -> anyhow::Result<(ModelSpec, Trainer)> {
    let (input, label_count) = (split.train.input_shape(), split.label_count());
    match &args.resume {
        Some(path) => {
            let (model, params) = resumed(path, &args.hyper.model, input, label_count)?;
            info!(path = %path.display(), "starting from the weights of a model file");
            let trainer = Trainer::with_params(config, model.build()?, params)?;
            Ok((model, trainer))
        }
        None => {
            let model = args.hyper.model.resolve(input, label_count)?;
            let trainer = Trainer::new(config, &model)?;
            Ok((model, trainer))
        }
    }
}

/// `--resume FILE`: the model the file describes and its weights, checked
/// against the data's images and labels and against `--model`/`--hidden`/
/// `--classes` when given. A flat input recorded by earlier versions takes
/// the data's shape.
fn resumed(
    path: &Path,
    settings: &ModelSettings,
    input: InputShape,
    label_count: usize,
) -> anyhow::Result<(ModelSpec, Vec<f32>)> {
    let (mut model, params) = model_file::load(path)?;
    model.check_data(input, label_count).with_context(|| format!("invalid --resume {}", path.display()))?;
    model.input = input;
    if let Some(given) = settings.classes {
        anyhow::ensure!(
            given == model.classes,
            "invalid --resume: {} holds a model of {} classes but --classes is {given}",
            path.display(),
            model.classes
        );
    }
    if settings.model.is_some() || settings.hidden.is_some() {
        // The file's class count stands for the labels': a named model takes it.
        let wanted = settings.resolve(input, model.classes)?;
        anyhow::ensure!(
            wanted.same_network(&model),
            "invalid --resume: {} holds a {model} model but --model/--hidden make a {wanted}",
            path.display()
        );
    }
    Ok((model, params))
}

pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let config = args.hyper.resolve()?;
    anyhow::ensure!(args.epochs > 0, "invalid --epochs: must be at least 1");
    let (split, verification) = dataset::load_dir(&args.data.data_dir, args.verify)?;
    verification.log();
    let input = split.train.input_shape();
    info!(train = split.train.len(), test = split.test.len(), %input, classes = split.label_count(), "data loaded");
    let (model, mut trainer) = start(args, &config, &split)?;
    let samples: Vec<u32> = match args.part {
        Some(part) => part.indices(args.split_seed, split.train.len()),
        None => (0..split.train.len() as u32).collect(),
    };
    if let Some(part) = args.part {
        anyhow::ensure!(
            !samples.is_empty(),
            "invalid --part {part}: part {} of {} holds none of the {} training images",
            part.index,
            part.count,
            split.train.len()
        );
        info!(%part, split_seed = args.split_seed, samples = samples.len(), "training on one part of the training set");
    }
    let which = match args.part {
        Some(part) => format!("part {part} of the training set"),
        None => "the training set".to_owned(),
    };
    config.check_batch_fits(samples.len(), &which)?;
    info!(architecture = %model, parameters = trainer.network().len(), "training in one process");
    let mut rng = rng::stream(config.seed, Purpose::LocalOrder);
    let start = Instant::now();
    let mut order = samples.clone();
    for epoch in 1..=args.epochs {
        let epoch_start = Instant::now();
        // Without --part, the same order as `Trainer::train_epoch` draws: runs are as before.
        order.copy_from_slice(&samples);
        order.shuffle(&mut rng);
        let stats = trainer.train(&split.train, &order, Progress::in_epoch(epoch - 1, args.epochs, 0, order.len()));
        let seconds = epoch_start.elapsed().as_secs_f64();
        let eval = trainer.evaluate(&split.test);
        info!(
            epoch,
            train_loss = stats.mean_loss(),
            test_loss = eval.loss,
            accuracy = eval.accuracy,
            samples_per_s = (stats.samples as f64 / seconds).round(),
            "epoch done"
        );
    }
    if let Some(path) = &args.save {
        model_file::save(path, &model, trainer.params())
            .with_context(|| format!("saving the model to {}", path.display()))?;
        info!(path = %path.display(), "model saved");
    }
    info!(seconds = start.elapsed().as_secs_f64(), "done");
    Ok(())
}
