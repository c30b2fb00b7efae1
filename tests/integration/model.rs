//! `--model`: a custom stack of layers, from the flag to the wire to the
//! file. A 784-400-200-100-10 stack trained by a cluster and read back by
//! NumPy; two trained on halves by `train --part` and merged by weight
//! matching; bad stacks, a file that contradicts its description and a
//! resume with another model refused in one line naming the layer and numbers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lazyavg_common::model_file;
use lazyavg_common::spec::ModelSpec;
use safetensors::tensor::{Dtype, TensorView};

use crate::harness::*;
use crate::support::*;
use crate::training::{assert_error_line, crosscheck_accuracy, refused};

/// Three hidden layers, written as a custom stack.
const STACK: &str = "dense 400, relu, dense 200, relu, dense 100, relu, dense 10";

/// One epoch of the stack on half of MNIST, plus loading: seconds on two cores.
const TRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// The layers of the model in `file`, as written in flags.
fn layers_of(file: &Path) -> String {
    let (spec, _) = model_file::load(file).unwrap_or_else(|e| panic!("{e}"));
    spec.layers_text()
}

#[test]
fn a_custom_stack_trains_in_the_cluster_and_its_file_and_config_describe_it() {
    let _heavy = heavy();
    let run = run_cluster(2, &["--epochs", "1", "--model", STACK], "info");
    let out = &run.coordinator.out;
    let model = out.join("model.safetensors");
    assert_eq!(layers_of(&model), STACK);
    let done = logged(&run.coordinator.proc, "training complete");
    let accuracy = f64_field(&done[0], "accuracy");
    assert!(accuracy > 0.9, "{}", done[0]);
    let python = crosscheck_accuracy(&model, &mnist_dir());
    assert!((python - accuracy).abs() <= 0.0001, "NumPy computes {python}, the coordinator logged {accuracy}");
    // The run's config.toml describes the model in full, as the model file does.
    let config = std::fs::read_to_string(out.join("config.toml")).expect("config.toml");
    assert!(config.contains("[model]") && config.contains("\"dense 400\""), "{config}");
    assert!(config.contains("channels = 1") && config.contains("classes = 10"), "{config}");
}

/// Trains the stack for one epoch on `part` (the same init seed for both
/// halves); returns the model file.
fn train_part(dir: &Path, part: &str) -> PathBuf {
    let model = dir.join(format!("part{}.safetensors", part.replace('/', "of")));
    let mut cmd = lazyavg();
    cmd.args(["--log-format", "json", "train", "--model", STACK, "--epochs", "1", "--part", part, "--data-dir"])
        .arg(mnist_dir())
        .arg("--save")
        .arg(&model);
    let mut proc = Proc::spawn(&format!("train {part}"), cmd);
    assert_eq!(proc.wait(TRAIN_TIMEOUT), 0, "{}", proc.dump());
    model
}

#[test]
fn two_custom_stacks_trained_on_halves_merge_by_weight_matching_within_a_point_of_the_worse() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (train_part(tmp.path(), "1/2"), train_part(tmp.path(), "2/2"));
    let out = tmp.path().join("merged.safetensors");
    let mut cmd = lazyavg();
    cmd.arg("merge").args([&a, &b]).args(["--match", "weights", "--data-dir"]).arg(mnist_dir()).arg("--out").arg(&out);
    let merged = cmd.output().expect("running lazyavg merge");
    let stdout = String::from_utf8_lossy(&merged.stdout);
    assert!(merged.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&merged.stderr));
    let accuracy = |row: &str| -> f64 {
        let line = stdout.lines().find(|l| l.starts_with(&format!("| {row}"))).unwrap_or_else(|| panic!("{stdout}"));
        let cell = line.split('|').nth(2).unwrap_or_default().trim().trim_end_matches('%');
        cell.parse::<f64>().unwrap_or_else(|_| panic!("{line}")) / 100.0
    };
    let worse = accuracy("part1of2").min(accuracy("part2of2"));
    let merged_accuracy = accuracy("merged (weight matching)");
    assert!(worse > 0.9, "{stdout}");
    assert!(merged_accuracy >= worse - 0.01, "merged {merged_accuracy} vs worse input {worse}:\n{stdout}");
    assert_eq!(layers_of(&out), STACK);
}

#[test]
fn bad_stacks_are_refused_in_one_line_naming_the_layer_and_the_numbers() {
    let data = mnist_dir();
    let cases: [(&str, &[&str]); 4] = [
        ("dense 400, relu, dense 0, relu, dense 10", &["layer 3 (dense 0)", "width 0"]),
        ("dense 400, gelu, dense 10", &["layer 2 (gelu)", "unknown layer kind \"gelu\""]),
        ("dense 400, relu, dense 7", &["model has 7 outputs", "the data's labels go up to 9"]),
        ("mlp, dense 3", &["layer 1 (mlp)", "unknown layer kind"]),
    ];
    for (stack, needles) in cases {
        assert_error_line(&refused(&["--model", stack], &data), needles);
    }
    assert_error_line(&refused(&["--model", "dense 10", "--hidden", "5"], &data), &["--hidden", "shorthand"]);
}

/// Writes a file whose `lazyavg.model` says 784-20-10 but whose tensors are 784-30-10.
fn contradicting_file(path: &Path) {
    let spec = ModelSpec::from_widths(&[784, 20, 10]).expect("spec");
    let shapes = [vec![30, 784], vec![30], vec![10, 30], vec![10]];
    let data: Vec<Vec<u8>> = shapes.iter().map(|s| vec![0u8; 4 * s.iter().product::<usize>()]).collect();
    let names = ["0.weight", "0.bias", "2.weight", "2.bias"];
    let tensors: Vec<(String, TensorView<'_>)> = names
        .iter()
        .zip(&shapes)
        .zip(&data)
        .map(|((n, s), d)| ((*n).to_owned(), TensorView::new(Dtype::F32, s.clone(), d).expect("tensor")))
        .collect();
    let description = serde_json::to_string(&spec).expect("json");
    let meta = HashMap::from([("lazyavg.model".to_owned(), description)]);
    std::fs::write(path, safetensors::serialize(tensors, Some(meta)).expect("serialize")).expect("write");
}

#[test]
fn a_file_that_contradicts_its_description_is_refused_naming_the_tensor_and_layer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("bad.safetensors");
    contradicting_file(&bad);
    let out = lazyavg()
        .arg("merge")
        .args([&bad, &bad])
        .arg("--data-dir")
        .arg(mnist_dir())
        .arg("--out")
        .arg(tmp.path().join("m.safetensors"))
        .output()
        .expect("running lazyavg merge");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_error_line(
        &stderr,
        &["bad.safetensors", "tensor 0.weight has shape [30, 784]", "layer 1 (dense 20)", "[20, 784]"],
    );
}

#[test]
fn resuming_a_run_with_another_model_is_refused_naming_both() {
    let _heavy = heavy();
    let run = run_cluster(1, &["--epochs", "1", "--hidden", "16"], "info");
    let out = &run.coordinator.out;
    let resumed = lazyavg()
        .args(["coordinator", "--resume"])
        .arg(out)
        .args(["--bind", "127.0.0.1:0", "--hidden", "32"])
        .output()
        .expect("running lazyavg coordinator --resume");
    assert!(!resumed.status.success());
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert_error_line(&stderr, &["holds a 784-16-10 model", "makes a 784-32-10"]);
}

/// `lazyavg train` with `args` on MNIST; expects success.
fn train(args: &[&str]) {
    let mut cmd = lazyavg();
    cmd.args(["--log-format", "json", "train", "--data-dir"]).arg(mnist_dir()).args(args);
    let mut proc = Proc::spawn("train", cmd);
    assert_eq!(proc.wait(TRAIN_TIMEOUT), 0, "{}", proc.dump());
}

#[test]
fn train_resumes_from_a_model_file_alone_and_refuses_another_model() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (first, second) = (tmp.path().join("first.safetensors"), tmp.path().join("second.safetensors"));
    let path = |p: &PathBuf| p.to_str().expect("utf-8 path").to_owned();
    train(&["--model", "dense 16, relu, dense 10", "--part", "1/6", "--save", &path(&first)]);
    // No model flag: the file says what it is.
    train(&["--resume", &path(&first), "--part", "2/6", "--save", &path(&second)]);
    assert_eq!(layers_of(&second), "dense 16, relu, dense 10");
    let (_, before) = model_file::load(&first).expect("first");
    let (_, after) = model_file::load(&second).expect("second");
    assert_ne!(before, after, "the resumed run trained on");
    let stderr = refused(&["--resume", &path(&first), "--hidden", "32"], &mnist_dir());
    assert_error_line(&stderr, &["first.safetensors", "holds a 784-16-10 model", "make a 784-32-10"]);
}
