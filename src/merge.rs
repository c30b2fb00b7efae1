//! `lazyavg merge`: load the models, align and average them (the work is in
//! `lazyavg_common::matching`), save the result and compare it on the test set.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use lazyavg_common::dataset::{self, Dataset};
use lazyavg_common::matching::{
    ActivationAlignment, Align, Input, NoAlignment, WeightAlignment, apply, merge, merge_many, repair,
};
use lazyavg_common::model::{Evaluation, Workspace};
use lazyavg_common::model_file;
use lazyavg_common::rng::{self, Purpose};
use lazyavg_common::spec::ModelSpec;
use tracing::{info, warn};

use crate::cli::{Matching, MergeArgs, Reference};

/// Passes over the layers after which weight matching stops even if still
/// improving; it settles in a handful on MNIST models.
const MAX_PASSES: usize = 100;

/// Rounds after which MergeMany stops even if a permutation still changes:
/// on four MNIST quarters it does not settle (units swap back and forth
/// between rounds); 10 rounds took 1.2 s there and met the accuracy goal on
/// every seed, as did 2, 5 and 100 (docs/merging.md).
const MAX_ROUNDS: usize = 10;

/// `--out` must not name an input: the merge would replace a model it was made of.
fn refuse_out_over_an_input(args: &MergeArgs) -> anyhow::Result<()> {
    let Ok(out) = args.out.canonicalize() else { return Ok(()) }; // not there yet: no input
    for input in &args.inputs {
        if input.canonicalize().is_ok_and(|input| input == out) {
            anyhow::bail!(
                "--out {} is the input {}: choose another file for the merge",
                args.out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// Says when two inputs hold the same model (the same file twice, or a
/// copy): the merge then succeeds but is no merge at all.
fn warn_about_identical_inputs(models: &[(String, ModelSpec, Vec<f32>)]) {
    for (i, (name, arch, params)) in models.iter().enumerate() {
        if let Some((first, ..)) = models[..i].iter().find(|(_, a, p)| a.same_network(arch) && p == params) {
            warn!(first, second = name, "two inputs hold the same model: merging a model with itself gives it back");
        }
    }
}

pub fn run(args: &MergeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.images > 0, "invalid --images: must be at least 1");
    refuse_out_over_an_input(args)?;
    let weights = args.weights.clone().unwrap_or_else(|| vec![1.0; args.inputs.len()]);
    let models: Vec<(String, ModelSpec, Vec<f32>)> = args
        .inputs
        .iter()
        .map(|path| {
            let (arch, params) = model_file::load(path)?;
            Ok((path.display().to_string(), arch, params))
        })
        .collect::<anyhow::Result<_>>()?;
    warn_about_identical_inputs(&models);
    let inputs: Vec<Input<'_>> = models.iter().map(|(name, arch, params)| Input { name, arch, params }).collect();
    let mlp = inputs[0].arch.build()?;
    let spec = mlp.permutation_spec();
    // First, since it refuses mismatched inputs before the data is read.
    let naive = merge(&spec, &inputs, &weights, &NoAlignment { spec: spec.clone() })?;
    let (split, _) = dataset::load_dir(&args.data.data_dir, false)?;
    mlp.spec()
        .check_data(split.train.input_shape(), split.label_count())
        .with_context(|| format!("{} and --data-dir {}", inputs[0].name, args.data.data_dir.display()))?;
    let start = Instant::now();
    let aligner: Box<dyn Align + '_> = match args.matching {
        Matching::None => Box::new(NoAlignment { spec: spec.clone() }),
        Matching::Weights => Box::new(WeightAlignment { spec: spec.clone(), seed: args.seed, max_passes: MAX_PASSES }),
        Matching::Activations => {
            Box::new(ActivationAlignment { mlp: mlp.clone(), data: &split.train, indices: images(args, &split.train) })
        }
    };
    let (merged, rounds) = match args.reference {
        Reference::Others => merge_many(&spec, &inputs, &weights, aligner.as_ref(), MAX_ROUNDS)?,
        Reference::First => (merge(&spec, &inputs, &weights, aligner.as_ref())?, 0),
    };
    let moved: Vec<usize> = merged
        .permutations
        .iter()
        .map(|p| {
            (0..spec.groups.len())
                .map(|g| p.group(g).iter().enumerate().filter(|&(i, &j)| i != j as usize).count())
                .sum()
        })
        .collect();
    info!(method = ?args.matching, architecture = %mlp.spec(), seconds = start.elapsed().as_secs_f64(), units_moved = ?moved, rounds, "aligned");
    let repaired = if args.repair {
        let aligned = inputs
            .iter()
            .zip(&merged.permutations)
            .map(|(input, perm)| {
                let mut params = input.params.to_vec();
                apply(&spec, perm, &mut params)?;
                Ok(params)
            })
            .collect::<lazyavg_common::Result<Vec<_>>>()?;
        let mut params = merged.params.clone();
        repair(&mlp, &mut params, &aligned, &weights, &split.train, &images(args, &split.train))?;
        Some(params)
    } else {
        None
    };
    model_file::save(&args.out, mlp.spec(), repaired.as_deref().unwrap_or(&merged.params))
        .with_context(|| format!("saving the merged model to {}", args.out.display()))?;
    info!(path = %args.out.display(), "merged model saved");

    let mut ws = Workspace::for_inference(&mlp, 1000);
    let test = &split.test;
    let mut rows: Vec<(String, Evaluation)> =
        inputs.iter().map(|input| (file_name(input.name), mlp.evaluate(input.params, test, &mut ws))).collect();
    rows.push(("naive average".into(), mlp.evaluate(&naive.params, test, &mut ws)));
    rows.push((format!("merged ({})", method_name(args.matching)), mlp.evaluate(&merged.params, test, &mut ws)));
    if let Some(params) = &repaired {
        rows.push((format!("merged ({}) + REPAIR", method_name(args.matching)), mlp.evaluate(params, test, &mut ws)));
    }
    let members: Vec<&[f32]> = inputs.iter().map(|input| input.params).collect();
    rows.push(("ensemble of the inputs".into(), mlp.evaluate_ensemble(&members, test, &mut ws)));
    print!("{}", table(&rows));
    Ok(())
}

/// `--images` training images drawn by `--seed` (all of them if fewer), for
/// activation matching and REPAIR.
fn images(args: &MergeArgs, train: &Dataset) -> Vec<u32> {
    let mut all = rng::permutation(train.len(), &mut rng::stream(args.seed, Purpose::MatchingImages));
    all.truncate(args.images);
    all
}

fn method_name(matching: Matching) -> &'static str {
    match matching {
        Matching::Weights => "weight matching",
        Matching::Activations => "activation matching",
        Matching::None => "no matching",
    }
}

fn file_name(path: &str) -> String {
    Path::new(path).file_name().map_or_else(|| path.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// The comparison as a Markdown table.
fn table(rows: &[(String, Evaluation)]) -> String {
    let mut out = String::from("| model | test accuracy | test loss |\n| --- | ---: | ---: |\n");
    for (name, eval) in rows {
        out.push_str(&format!("| {name} | {:.2}% | {:.4} |\n", 100.0 * eval.accuracy, eval.loss));
    }
    out
}
