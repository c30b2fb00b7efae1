//! Data of another image shape and class count: a tiny generated set of
//! 3×8×8 colour images in 5 classes (rank-4 IDX files, written by the test)
//! trains a named CNN in one process and in a two-worker cluster, whose
//! workers download and cache it in its shape; a model of another input
//! shape or with too few outputs is refused in one line before training.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use lazyavg_common::dataset::{DataFile, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS};
use lazyavg_common::idx::{self, CHANNEL_IMAGES_MAGIC, LABELS_MAGIC};
use lazyavg_common::model_file;
use lazyavg_common::spec::{InputShape, ModelSpec};

use crate::harness::*;
use crate::support::*;
use crate::training::{EPOCH_TIMEOUT, assert_error_line, refused};

const SHAPE: InputShape = InputShape { channels: 3, height: 8, width: 8 };
const CLASSES: usize = 5;
/// Small enough to train in seconds, big enough for a stable accuracy.
const TRAIN_IMAGES_N: usize = 600;
const TEST_IMAGES_N: usize = 200;
/// The flags every run here trains with: a few short epochs.
const RUN: [&str; 4] = ["--epochs", "4", "--batch-size", "10"];

/// Writes the four files of a directory of `SHAPE` images whose class is
/// told by where the light is: class `c` lights channel `c % 3` in the top
/// (c < 3) or bottom half, over a dim pattern that varies per image.
fn write_colour_dir(dir: &Path) {
    let write = |images: &DataFile, labels: &DataFile, n: usize, first: usize| {
        let (half, plane) = (SHAPE.height / 2 * SHAPE.width, SHAPE.height * SHAPE.width);
        let mut pixels = Vec::with_capacity(n * SHAPE.len());
        let mut classes = Vec::with_capacity(n);
        for i in first..first + n {
            let class = i % CLASSES;
            let (channel, top) = (class % 3, class < 3);
            for p in 0..SHAPE.len() {
                let lit = p / plane == channel && ((p % plane < half) == top);
                let dim = ((i * 31 + p * 17) % 61) as u8;
                pixels.push(if lit { 150 + dim } else { dim });
            }
            classes.push(class as u8);
        }
        let mut bytes = Vec::new();
        let dims = [n, SHAPE.channels, SHAPE.height, SHAPE.width].map(|d| d as u32);
        idx::encode_into(&mut bytes, CHANNEL_IMAGES_MAGIC, &dims, &pixels);
        fs::write(dir.join(images.name), bytes).expect("writing images");
        let mut bytes = Vec::new();
        idx::encode_into(&mut bytes, LABELS_MAGIC, &[n as u32], &classes);
        fs::write(dir.join(labels.name), bytes).expect("writing labels");
    };
    write(&TRAIN_IMAGES, &TRAIN_LABELS, TRAIN_IMAGES_N, 0);
    write(&TEST_IMAGES, &TEST_LABELS, TEST_IMAGES_N, TRAIN_IMAGES_N);
}

/// A temporary directory holding the colour set in `data/`.
fn colour_data() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    fs::create_dir(&data).expect("creating the data directory");
    write_colour_dir(&data);
    (tmp, data)
}

/// A coordinator with two local workers training `model` on `data` into `out`.
fn local_run(data: &Path, out: &Path, model: &str) -> Command {
    let mut cmd = lazyavg();
    cmd.args(["--log-format", "json", "coordinator", "--spawn-workers", "2", "--bind", "127.0.0.1:0"])
        .args(["--model", model, "--data-dir"])
        .arg(data)
        .arg("--out")
        .arg(out);
    cmd
}

/// The accuracy of the last line of `proc` logging `message`.
fn last_accuracy(proc: &Proc, message: &str) -> f64 {
    let line = wait_until(&format!("the {message:?} log line"), std::time::Duration::from_secs(5), || {
        logged(proc, message).pop()
    });
    f64_field(&line, "accuracy")
}

fn assert_model_file_fits_the_data(path: &Path) {
    let (spec, _) = model_file::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!((spec.input, spec.classes), (SHAPE, CLASSES), "{spec}");
}

#[test]
fn a_named_cnn_trains_on_colour_images_of_five_classes_in_one_process() {
    let _heavy = heavy();
    let (tmp, data) = colour_data();
    let model = tmp.path().join("cnn.safetensors");
    let mut cmd = lazyavg();
    cmd.args(["--log-format", "json", "train", "--model", "cnn"]).args(RUN).arg("--data-dir").arg(&data);
    cmd.arg("--save").arg(&model);
    let mut proc = Proc::spawn("train", cmd);
    assert_eq!(proc.wait(EPOCH_TIMEOUT), 0, "{}", proc.dump());
    let accuracy = last_accuracy(&proc, "epoch done");
    assert!(accuracy >= 0.9, "the FedAvg CNN reached only {accuracy} on the colour set\n{}", proc.dump());
    let loaded = wait_for_line(&mut proc, "data loaded", EPOCH_TIMEOUT);
    assert_eq!((loaded["input"].as_str(), u64_field(&loaded, "classes")), (Some("3x8x8"), CLASSES as u64), "{loaded}");
    assert_model_file_fits_the_data(&model);
}

#[test]
fn a_two_worker_cluster_ships_colour_images_in_their_shape_and_trains_on_them() {
    let _heavy = heavy();
    let (tmp, data) = colour_data();
    let (out, cache) = (tmp.path().join("out"), tmp.path().join("cache"));
    let mut cmd = local_run(&data, &out, "conv 8 3x3 pad 1, relu, maxpool 2, flatten, dense 5");
    cmd.args(RUN).env("LAZYAVG_CACHE_DIR", &cache);
    let mut proc = Proc::spawn("coordinator", cmd);
    expect_success(&mut [&mut proc]);
    let accuracy = last_accuracy(&proc, "training complete");
    assert!(accuracy >= 0.9, "two workers reached only {accuracy} on the colour set\n{}", proc.dump());
    assert_model_file_fits_the_data(&out.join("model.safetensors"));
    // The workers' copy is the rank-4 file, its shape in its header.
    let cached: Vec<PathBuf> = fs::read_dir(cache.join("datasets"))
        .expect("the workers' cache")
        .map(|entry| entry.expect("a cache entry").path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let blob = fs::read(&cached[0]).expect("reading the cached dataset");
    let header = idx::images_header("cache", &blob).expect("an images header");
    assert_eq!((header.count, header.shape), (TRAIN_IMAGES_N, SHAPE));
}

#[test]
fn a_model_file_of_another_input_shape_is_refused_naming_both_shapes() {
    let (tmp, data) = colour_data();
    let mnist = InputShape { channels: 1, height: 28, width: 28 };
    let spec = ModelSpec::mlp(mnist, &[8], CLASSES);
    let path = tmp.path().join("mnist.safetensors");
    let params = spec.build().expect("a valid model").init(1);
    model_file::save(&path, &spec, &params).expect("saving the model");
    let stderr = refused(&["--resume", path.to_str().expect("utf-8 path")], &data);
    assert_error_line(&stderr, &["mnist.safetensors", "model expects 1x28x28 inputs, the data has 3x8x8 images"]);
}

#[test]
fn a_stack_with_fewer_outputs_than_classes_is_refused_by_train_and_by_the_coordinator_before_workers_start() {
    let (tmp, data) = colour_data();
    let stack = "conv 4 3x3, relu, flatten, dense 3";
    assert_error_line(&refused(&["--model", stack], &data), &["model has 3 outputs, the data's labels go up to 4"]);
    assert_error_line(
        &refused(&["--classes", "4"], &data),
        &["invalid --classes: is 4, but the data's labels go up to 4"],
    );
    let out = tmp.path().join("out");
    let mut proc = Proc::spawn("coordinator", local_run(&data, &out, stack));
    expect_exit_within(&mut proc, EPOCH_TIMEOUT, 1, "model has 3 outputs, the data's labels go up to 4");
    assert!(logged(&proc, "listening").is_empty(), "it served before refusing\n{}", proc.dump());
    assert!(logged(&proc, "started local worker").is_empty(), "a worker started\n{}", proc.dump());
    assert!(!out.exists(), "the refused run created its output directory");
}

/// The data is checked against the model before the coordinator binds its
/// port: given a port this test holds, a coordinator that bound first would
/// fail with "address in use" instead of naming the shapes.
#[test]
fn data_the_model_cannot_take_is_refused_before_any_socket_opens() {
    let (tmp, data) = colour_data();
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let bind = held.local_addr().expect("the held port").to_string();
    let out = tmp.path().join("out");
    let mut cmd = lazyavg();
    let stack = "conv 4 3x3, relu, flatten, dense 3";
    cmd.args(["--log-format", "json", "coordinator", "--model", stack, "--bind", &bind, "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&out);
    let mut proc = Proc::spawn("coordinator", cmd);
    expect_exit_within(&mut proc, EPOCH_TIMEOUT, 1, "model has 3 outputs, the data's labels go up to 4");
    assert!(!out.exists(), "the refused run created its output directory");
}
