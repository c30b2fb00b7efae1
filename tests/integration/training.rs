//! One-process training on real MNIST, the cross-check of the saved model by
//! an independent NumPy implementation, and refusals of bad input.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lazyavg_common::dataset::{self, DATA_FILES, TRAIN_IMAGES, TRAIN_LABELS};

use crate::harness::heavy;
use crate::support::*;

/// Generous bound on one epoch (a few seconds on two cores) plus loading.
pub(crate) const EPOCH_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn one_epoch_with_defaults_reaches_96_percent() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("model.safetensors");
    let mut cmd = lazyavg();
    cmd.args(["--log-format", "json", "train", "--epochs", "1", "--data-dir"])
        .arg(mnist_dir())
        .arg("--save")
        .arg(&model);
    let mut proc = Proc::spawn("train", cmd);
    assert_eq!(proc.wait(EPOCH_TIMEOUT), 0, "{}", proc.dump());
    // The process has exited, but its last lines may still be on their way
    // through the pipe to the collecting thread.
    let epoch = wait_until("the \"epoch done\" log line", Duration::from_secs(5), || {
        proc.json_lines().into_iter().find(|line| line["message"] == "epoch done")
    });
    let accuracy = epoch["accuracy"].as_f64().unwrap_or_else(|| panic!("no accuracy in {epoch}"));
    assert!((0.0..=1.0).contains(&accuracy), "{epoch}");
    assert!(accuracy >= 0.960, "one epoch reached only {accuracy}\n{}", proc.dump());

    let python = crosscheck_accuracy(&model, &mnist_dir());
    assert!(
        (python - accuracy).abs() <= 0.0001,
        "NumPy computes accuracy {python} for the saved model, lazyavg logged {accuracy}"
    );
}

/// Test-set accuracy of `model` according to `tests/crosscheck.py`. Fails,
/// rather than skips, when Python or NumPy is missing: the cross-check is the
/// only evidence that the saved file means what PyTorch will read into it.
pub(crate) fn crosscheck_accuracy(model: &Path, mnist: &Path) -> f64 {
    let missing = "the cross-check needs python3 with numpy and safetensors on PATH; .ci/run installs them";
    let probe = Command::new("python3").args(["-c", "import numpy, safetensors"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("{missing}\n{}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => panic!("{missing} (python3: {e})"),
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crosscheck.py");
    let out = Command::new("python3").arg(script).arg(model).arg(mnist).output().expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "crosscheck.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("crosscheck.py printed {stdout:?}: {e}"));
    result["accuracy"].as_f64().unwrap_or_else(|| panic!("no accuracy in {result}"))
}

/// Runs `lazyavg train` with `args`, expects it to fail, and returns its
/// stderr. Every refusal comes before training starts, so the process is
/// simply waited for.
pub(crate) fn refused(args: &[&str], data_dir: &Path) -> String {
    let out = lazyavg().arg("train").arg("--data-dir").arg(data_dir).args(args).output().expect("running lazyavg");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "lazyavg train {args:?} succeeded:\n{stderr}");
    stderr
}

/// Asserts that the last line of `stderr` is lazyavg's error line and contains every one of `needles`.
pub(crate) fn assert_error_line(stderr: &str, needles: &[&str]) {
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("lazyavg: "), "not a `lazyavg: ` error line:\n{stderr}");
    for needle in needles {
        assert!(last.contains(needle), "error line lacks {needle:?}:\n{stderr}");
    }
}

#[test]
fn nonsense_hyperparameters_are_refused_by_flag() {
    let mnist = mnist_dir();
    for (args, needles) in [
        (&["--batch-size", "0"][..], &["--batch-size"][..]),
        (&["--lr", "nan"], &["--lr"]),
        (&["--lr", "0"], &["--lr"]),
        (&["--hidden", "200,0"], &["--hidden"]),
        (&["--momentum", "1"], &["--momentum"]),
        (&["--epochs", "0"], &["--epochs"]),
        // Negative numbers reach the flag's own check, not clap's "unexpected argument '-1'".
        (&["--lr", "-1"], &["invalid --lr", "-1"]),
        (&["--momentum", "-0.5"], &["invalid --momentum", "-0.5"]),
        (&["--epochs", "-1"], &["invalid --epochs: must not be negative, got -1"]),
        // A batch bigger than the data would make each epoch one step.
        (&["--batch-size", "1000000"], &["invalid --batch-size", "1000000", "60000"]),
        (&["--batch-size", "40000", "--part", "2/2"], &["invalid --batch-size", "40000", "part 2/2", "30000"]),
    ] {
        assert_error_line(&refused(args, &mnist), needles);
    }
    // Values clap cannot parse are its own errors, which name the flag too.
    let stderr = refused(&["--hidden", ""], &mnist);
    assert!(stderr.contains("--hidden"), "{stderr}");
}

/// A copy of MNIST in a temporary directory whose training images are replaced by `images`
/// (written raw, which takes precedence over the `.gz`, or as `.gz`).
fn mnist_copy_with_images(images: &[u8], gz: bool) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    for file in DATA_FILES.iter().filter(|f| **f != TRAIN_IMAGES) {
        let src = dataset::find_file(&mnist_dir(), file).expect("MNIST file");
        let name = src.file_name().expect("file name");
        fs::copy(&src, tmp.path().join(name)).expect("copying MNIST");
    }
    let name = if gz { format!("{}.gz", TRAIN_IMAGES.name) } else { TRAIN_IMAGES.name.to_owned() };
    fs::write(tmp.path().join(name), images).expect("writing images");
    let dir = tmp.path().to_owned();
    (tmp, dir)
}

#[test]
fn truncated_training_images_are_refused_by_name() {
    let raw = dataset::read_file(&mnist_dir(), &TRAIN_IMAGES).expect("reading MNIST");
    let (_tmp, dir) = mnist_copy_with_images(&raw[..raw.len() / 2], false);
    assert_error_line(&refused(&[], &dir), &[TRAIN_IMAGES.name, "truncated"]);

    // An interrupted download: the gzip stream itself ends early.
    let gz_path = dataset::find_file(&mnist_dir(), &TRAIN_IMAGES).expect("MNIST file");
    let gz = fs::read(&gz_path).expect("reading MNIST");
    let (_tmp, dir) = mnist_copy_with_images(&gz[..gz.len() / 2], true);
    assert_error_line(&refused(&[], &dir), &[TRAIN_IMAGES.name, "gzip"]);
}

/// Training on IDX files that are not MNIST's shape without `--verify` says,
/// once, that no hash check was made of them.
#[test]
fn unverified_data_that_is_not_mnist_is_noted_once() {
    let _heavy = heavy();
    let n: u32 = 600;
    let images = dataset::read_file(&mnist_dir(), &TRAIN_IMAGES).expect("reading MNIST");
    let labels = dataset::read_file(&mnist_dir(), &TRAIN_LABELS).expect("reading MNIST");
    // The first n images and labels, under headers that count n.
    let images = [&images[..4], &n.to_be_bytes(), &images[8..16 + 784 * n as usize]].concat();
    let labels = [&labels[..4], &n.to_be_bytes(), &labels[8..8 + n as usize]].concat();
    let (_tmp, dir) = mnist_copy_with_images(&images, false);
    fs::remove_file(dataset::find_file(&dir, &TRAIN_LABELS).expect("the labels' copy")).expect("removing it");
    fs::write(dir.join(TRAIN_LABELS.name), labels).expect("writing labels");
    let out = lazyavg()
        .args(["--log-format", "json", "train", "--epochs", "1", "--hidden", "16", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("running lazyavg");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let notes: Vec<&str> = stderr.lines().filter(|l| l.contains("no hash check was made")).collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    assert!(notes[0].contains("\"train\":600") && notes[0].contains("these files are not MNIST"), "{stderr}");
}

#[test]
fn bench_train_prints_a_markdown_table_per_model_or_for_one() {
    let _heavy = heavy();
    let table = |extra: &[&str]| {
        let out = lazyavg()
            .args(["bench", "train", "--seconds", "0.05", "--data-dir"])
            .arg(mnist_dir())
            .args(extra)
            .output()
            .expect("running lazyavg");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let check = |stdout: &str, labels: &[&str]| {
        let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), labels.len() + 1, "a header and {labels:?}:\n{stdout}");
        for (row, label) in rows[1..].iter().zip(labels) {
            assert!(row.starts_with(&format!("| {label}")), "{row:?} should be about {label}");
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            let gflop: f64 = cells[2].parse().unwrap_or_else(|e| panic!("GFLOP/s cell of {row:?}: {e}"));
            assert!(gflop > 0.0, "{row}");
        }
    };
    let every = table(&[]);
    let models = ["mlp, batch 32", "mlp, batch 64", "lenet5, batch 32", "lenet5, batch 64", "cnn, batch 32"];
    check(&every, &[&models[..], &["cnn, batch 64", "ceiling"]].concat());
    assert!(every.contains("- cnn: 1x28x28 → conv 32 5x5 pad 2") && every.contains("72,384,512 FLOP"), "{every}");
    let one = table(&["--model", "mlp"]);
    check(&one, &["mlp, batch 32", "mlp, batch 64", "mlp, batch 128", "mlp, batch 256", "ceiling"]);
    assert!(one.contains("- mlp: 784-200-200-10, 879,200 FLOP"), "{one}");
}
