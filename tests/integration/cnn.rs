//! Convolutional networks: a small CNN trained in one process and by a
//! cluster, its file read back by NumPy (`tests/crosscheck.py` runs the
//! layers as PyTorch defines them) with the same accuracy, and bad stacks
//! refused in one line naming the layer and the numbers. Tiny nets only:
//! LeNet-5 and the FedAvg CNN are measured in benchmarks, not here.

use std::path::Path;

use lazyavg_common::model_file;

use crate::harness::*;
use crate::support::*;
use crate::training::{EPOCH_TIMEOUT, assert_error_line, crosscheck_accuracy, refused};

/// A convolution by im2col, one by Winograd's transforms (4 input
/// channels, stride 1, 3×3: blocks of 6 that overhang the 13×13 maps), a
/// pooling whose window does not divide them, a hidden dense layer.
const TINY_CNN: &str =
    "conv 4 5x5 stride 2 pad 1, relu, conv 4 3x3 pad 1, relu, maxpool 3 stride 2, flatten, dense 16, relu, dense 10";

/// The accuracy of the "epoch done" or "training complete" line `message`.
fn logged_accuracy(proc: &Proc, message: &str) -> f64 {
    let line = wait_until(&format!("the {message:?} log line"), std::time::Duration::from_secs(5), || {
        proc.json_lines().into_iter().find(|line| line["message"] == message)
    });
    f64_field(&line, "accuracy")
}

fn assert_numpy_agrees(model: &Path, accuracy: f64) {
    let (spec, _) = model_file::load(model).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.layers_text(), TINY_CNN);
    let python = crosscheck_accuracy(model, &mnist_dir());
    assert!(
        (python - accuracy).abs() <= 0.0001,
        "NumPy computes {python} for {}, lazyavg logged {accuracy}",
        model.display()
    );
}

#[test]
fn a_small_cnn_trains_in_one_process_and_numpy_reads_its_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("cnn.safetensors");
    let mut cmd = lazyavg();
    cmd.args(["--log-format", "json", "train", "--model", TINY_CNN, "--part", "1/4", "--data-dir"])
        .arg(mnist_dir())
        .arg("--save")
        .arg(&model);
    let mut proc = Proc::spawn("train", cmd);
    assert_eq!(proc.wait(EPOCH_TIMEOUT), 0, "{}", proc.dump());
    let accuracy = logged_accuracy(&proc, "epoch done");
    assert!(accuracy > 0.9, "a quarter epoch of the tiny CNN reached only {accuracy}\n{}", proc.dump());
    assert_numpy_agrees(&model, accuracy);
}

#[test]
fn a_small_cnn_trains_in_the_cluster_aligned_by_weights() {
    let _heavy = heavy();
    // Aligned by weights: the channels of its convolution are matched too.
    let run = run_cluster(2, &["--epochs", "1", "--model", TINY_CNN, "--align", "weights"], "info");
    let accuracy = logged_accuracy(&run.coordinator.proc, "training complete");
    assert!(accuracy > 0.9, "one epoch of the tiny CNN on 2 workers reached only {accuracy}");
    assert_numpy_agrees(&run.coordinator.out.join("model.safetensors"), accuracy);
}

/// Checkpoints, `--resume`, a robust rule and an outer optimiser know
/// nothing of layers: a CNN run killed and resumed finishes as an MLP's does,
/// and its file is the CNN.
#[test]
fn a_cnn_run_with_a_robust_rule_and_an_outer_optimiser_resumes_after_a_kill() {
    let _heavy = heavy();
    let flags = ["--model", TINY_CNN, "--aggregate", "median", "--outer-optimizer", "nesterov"];
    let (_tmp, out) = crate::faults::sigkill_and_resume_completes_the_run(&flags);
    let (spec, _) = model_file::load(&out.join("model.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.layers_text(), TINY_CNN);
    let last = epoch_metrics(&out).pop().expect("an epoch record");
    assert!(f64_field(&last, "accuracy") > 0.9, "{last}");
}

#[test]
fn bad_convolutional_stacks_are_one_line_errors_naming_the_layer_and_the_numbers() {
    let mnist = mnist_dir();
    for (model, needles) in [
        (
            "conv 4 31x31 pad 1, flatten, dense 10",
            &["layer 1 (conv 4 31x31 pad 1)", "31×31 kernel", "28×28 input padded by 1"][..],
        ),
        ("conv 4 5x5, relu, dense 10", &["layer 3 (dense 10)", "4x24x24 feature maps", "put a flatten before it"]),
        (
            "conv 4 5x5 stride 5, maxpool 2, maxpool 3, flatten, dense 10",
            &["layer 3 (maxpool 3)", "3×3 window", "2×2 input"],
        ),
    ] {
        assert_error_line(&refused(&["--model", model], &mnist), needles);
    }
}

/// Activation matching takes dense layers only: a cluster asked to align a
/// CNN by activations is refused before its workers start, not in its
/// first round.
#[test]
fn a_cnn_cluster_refuses_to_align_by_activations_before_its_workers_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = lazyavg();
    cmd.args(["--log-format", "json", "coordinator", "--spawn-workers", "2", "--align", "activations"])
        .args(["--model", TINY_CNN, "--data-dir"])
        .arg(mnist_dir())
        .arg("--out")
        .arg(tmp.path().join("out"));
    let mut proc = Proc::spawn("coordinator", cmd);
    assert_ne!(proc.wait(EPOCH_TIMEOUT), 0, "{}", proc.dump());
    let last = proc.lines().last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("lazyavg: ") && last.contains("--align activations takes networks of dense layers only"),
        "{}",
        proc.dump()
    );
    assert!(logged(&proc, "started local worker").is_empty(), "{}", proc.dump());
}
