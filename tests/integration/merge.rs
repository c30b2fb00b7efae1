//! `lazyavg train --part` and `lazyavg merge`: two halves of MNIST trained
//! apart and merged; a PyTorch-style file (no lazyavg metadata) merged with
//! its own permuted copy; files of different architectures refused.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use lazyavg_common::dataset;
use lazyavg_common::matching::{Permutation, apply};
use lazyavg_common::model::Workspace;
use lazyavg_common::model_file;
use lazyavg_common::rng::StreamRng;
use lazyavg_common::spec::{InputShape, ModelSpec};
use rand::SeedableRng;
use safetensors::tensor::{Dtype, TensorView};

use crate::support::*;

/// One epoch of a tiny model on half of MNIST, plus loading: seconds on two cores.
const TRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// Trains 784-32-10 for one epoch on `part` with init seed `seed`; returns the
/// model file and how many images the run says it trained on.
fn train_part(dir: &Path, part: &str, seed: u64) -> (PathBuf, u64) {
    let model = dir.join(format!("part{}.safetensors", part.replace('/', "of")));
    let mut cmd = lazyavg();
    cmd.args(["--log-format", "json", "train", "--hidden", "32", "--epochs", "1", "--part", part])
        .args(["--seed", &seed.to_string(), "--data-dir"])
        .arg(mnist_dir())
        .arg("--save")
        .arg(&model);
    let mut proc = Proc::spawn(&format!("train {part}"), cmd);
    assert_eq!(proc.wait(TRAIN_TIMEOUT), 0, "{}", proc.dump());
    let line = proc
        .json_lines()
        .into_iter()
        .find(|l| l["message"] == "training on one part of the training set")
        .unwrap_or_else(|| panic!("no part line\n{}", proc.dump()));
    (model, line["samples"].as_u64().unwrap_or_else(|| panic!("no samples in {line}")))
}

fn merge(inputs: &[&Path], args: &[&str], out: &Path) -> Output {
    let mut cmd = lazyavg();
    cmd.arg("merge").args(inputs).args(args).arg("--data-dir").arg(mnist_dir()).arg("--out").arg(out);
    cmd.output().expect("running lazyavg merge")
}

/// The table's rows as (model, accuracy in [0, 1], loss).
fn table(out: &Output) -> Vec<(String, f64, f64)> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "merge failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("| model | test accuracy | test loss |"), "{stdout}");
    assert_eq!(lines.next(), Some("| --- | ---: | ---: |"), "{stdout}");
    lines
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let [name, accuracy, loss] = cells[..] else { panic!("row {line:?}") };
            let accuracy: f64 = accuracy.trim_end_matches('%').parse().unwrap_or_else(|_| panic!("row {line:?}"));
            (name.to_owned(), accuracy / 100.0, loss.parse().unwrap_or_else(|_| panic!("row {line:?}")))
        })
        .collect()
}

/// Test accuracy of a saved model, computed here rather than by the binary.
fn accuracy_of(model: &Path) -> (ModelSpec, f64) {
    let (arch, params) = model_file::load(model).unwrap_or_else(|e| panic!("{e}"));
    let (split, _) = dataset::load_dir(&mnist_dir(), false).expect("MNIST");
    let mlp = arch.build().unwrap();
    let eval = mlp.evaluate(&params, &split.test, &mut Workspace::new(&mlp, 500));
    (arch, eval.accuracy)
}

#[test]
fn two_halves_trained_apart_merge_far_better_than_their_naive_average() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, a_samples) = train_part(tmp.path(), "1/2", 1);
    let (b, b_samples) = train_part(tmp.path(), "2/2", 2);
    assert_eq!((a_samples, b_samples), (30_000, 30_000));
    for method in ["weights", "activations"] {
        let out = tmp.path().join(format!("merged-{method}.safetensors"));
        let rows = table(&merge(&[&a, &b], &["--match", method, "--images", "500", "--repair"], &out));
        let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let merged_name = format!("merged ({} matching)", method.trim_end_matches('s'));
        let repaired_name = format!("{merged_name} + REPAIR");
        let expected = [
            "part1of2.safetensors",
            "part2of2.safetensors",
            "naive average",
            &merged_name,
            &repaired_name,
            "ensemble of the inputs",
        ];
        assert_eq!(names, expected);
        let (inputs, naive, merged, repaired, ensemble) = (&rows[..2], rows[2].1, rows[3].1, rows[4].1, rows[5].1);
        let worse = inputs.iter().map(|r| r.1).fold(1.0, f64::min);
        // Measured at 784-32-10, one epoch: inputs 94%, naive 64%, merged 92%.
        assert!(worse > 0.90 && ensemble > worse - 0.01, "{rows:?}");
        assert!(naive < worse - 0.10, "separate inits should average badly: {rows:?}");
        assert!(merged > naive + 0.15 && merged > worse - 0.05, "{method}: {rows:?}");
        assert!(repaired > merged - 0.01, "{method}: {rows:?}");
        // The file holds the repaired merge.
        let (arch, accuracy) = accuracy_of(&out);
        assert_eq!(arch.to_string(), "784-32-10");
        assert!((accuracy - repaired).abs() < 0.00005, "the file scores {accuracy}, the table {repaired}");
    }
}

/// Writes `params` as `safetensors.torch.save_file(model.state_dict())` would
/// for an `nn.Sequential(Linear, ReLU, …)`: PyTorch's names, no metadata.
fn save_like_pytorch(path: &Path, arch: &ModelSpec, params: &[f32]) {
    let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut tensors = Vec::new();
    for (l, layer) in arch.layout().unwrap().layers.iter().enumerate() {
        let (w, b) =
            (&bytes[4 * layer.weight.start..4 * layer.weight.end], &bytes[4 * layer.bias.start..4 * layer.bias.end]);
        tensors.push((
            format!("{}.weight", 2 * l),
            TensorView::new(Dtype::F32, vec![layer.outputs, layer.inputs], w).unwrap(),
        ));
        tensors.push((format!("{}.bias", 2 * l), TensorView::new(Dtype::F32, vec![layer.outputs], b).unwrap()));
    }
    std::fs::write(path, safetensors::serialize(tensors, None).unwrap()).unwrap();
}

#[test]
fn a_pytorch_file_merges_with_its_permuted_copy_into_itself() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let arch = ModelSpec::from_widths(&[784, 24, 16, 10]).unwrap();
    let mlp = arch.build().unwrap();
    let params = mlp.init(3);
    let spec = mlp.permutation_spec();
    let mut shuffled = params.clone();
    apply(&spec, &Permutation::random(&spec, &mut StreamRng::seed_from_u64(4)), &mut shuffled).unwrap();
    assert_ne!(shuffled, params);
    let (torch, copy) = (tmp.path().join("torch.safetensors"), tmp.path().join("copy.safetensors"));
    save_like_pytorch(&torch, &arch, &params);
    save_like_pytorch(&copy, &arch, &shuffled);
    let out = tmp.path().join("merged.safetensors");
    let rows = table(&merge(&[&torch, &copy], &["--match", "weights"], &out));
    let (merged_arch, merged) = model_file::load(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((merged_arch, &merged), (arch, &params), "the merge of a model and its permutation is the model");
    assert_eq!(rows[3].1, rows[0].1, "{rows:?}");
    assert_eq!(rows[1].1, rows[0].1, "a permuted model scores the same: {rows:?}");
}

/// Weight matching moves a convolution's channels too, through its pooling
/// and the flatten into the dense layer above: a CNN and a copy with every
/// channel and unit reordered merge into the CNN itself.
#[test]
fn a_cnn_merges_with_its_channel_permuted_copy_into_itself() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layers = "conv 4 5x5 stride 2 pad 1, relu, maxpool 2, conv 6 3x3, relu, flatten, dense 12, relu, dense 10";
    let input = InputShape { channels: 1, height: 28, width: 28 };
    let arch = ModelSpec { input, layers: ModelSpec::parse_layers(layers).unwrap(), classes: 10 };
    let net = arch.build().unwrap();
    let params = net.init(5);
    let spec = net.permutation_spec();
    assert_eq!(spec.sizes(), [4, 6, 12]);
    let mut shuffled = params.clone();
    apply(&spec, &Permutation::random(&spec, &mut StreamRng::seed_from_u64(6)), &mut shuffled).unwrap();
    let (first, copy) = (tmp.path().join("cnn.safetensors"), tmp.path().join("copy.safetensors"));
    model_file::save(&first, &arch, &params).unwrap();
    model_file::save(&copy, &arch, &shuffled).unwrap();
    let out = tmp.path().join("merged.safetensors");
    let rows = table(&merge(&[&first, &copy], &["--match", "weights"], &out));
    let (merged_arch, merged) = model_file::load(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((merged_arch, &merged), (arch, &params), "the merge of a CNN and its permutation is the CNN");
    assert_eq!(rows[1].1, rows[0].1, "a permuted CNN scores the same: {rows:?}");
}

#[test]
fn files_of_different_architectures_are_refused_naming_both() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("wide.safetensors"), tmp.path().join("narrow.safetensors"));
    for (path, hidden) in [(&a, 8), (&b, 6)] {
        let arch = ModelSpec::from_widths(&[784, hidden, 10]).unwrap();
        model_file::save(path, &arch, &arch.build().unwrap().init(1)).unwrap();
    }
    let out = merge(&[&a, &b], &[], &tmp.path().join("merged.safetensors"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!("lazyavg: cannot merge: {} is 784-8-10 but {} is 784-6-10", a.display(), b.display());
    assert!(stderr.lines().any(|l| l == expected), "{stderr}");
    assert!(!tmp.path().join("merged.safetensors").exists());
}

#[test]
fn an_out_that_names_an_input_is_refused_and_the_input_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a.safetensors"), tmp.path().join("b.safetensors"));
    let arch = ModelSpec::from_widths(&[784, 8, 10]).unwrap();
    for (path, seed) in [(&a, 1), (&b, 2)] {
        model_file::save(path, &arch, &arch.build().unwrap().init(seed)).unwrap();
    }
    let before = fs::read(&b).expect("reading b");
    // The same file by another path.
    let out = merge(&[&a, &b], &[], &tmp.path().join(".").join("b.safetensors"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is the input") && stderr.starts_with("lazyavg: --out"), "{stderr}");
    assert_eq!(fs::read(&b).expect("reading b"), before, "the input was written over");
}

/// Merging a file with itself (or a copy) succeeds but says so; a truncated
/// file is refused with the size its header promises and the size it has.
#[test]
fn an_input_given_twice_is_warned_about_and_a_truncated_one_named_with_its_sizes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a.safetensors");
    let arch = ModelSpec::from_widths(&[784, 8, 10]).unwrap();
    model_file::save(&a, &arch, &arch.build().unwrap().init(1)).unwrap();
    let out = merge(&[&a, &a], &[], &tmp.path().join("merged.safetensors"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("two inputs hold the same model"), "{stderr}");

    let bytes = fs::read(&a).expect("reading a");
    let cut = tmp.path().join("cut.safetensors");
    fs::write(&cut, &bytes[..bytes.len() - 100]).expect("writing the truncated copy");
    let out = merge(&[&a, &cut], &[], &tmp.path().join("merged2.safetensors"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!("but the file has {}", bytes.len() - 100);
    let line = stderr.lines().last().unwrap_or_default();
    assert!(line.starts_with("lazyavg: ") && line.contains("truncated") && line.contains(&expected), "{stderr}");
    assert!(line.contains(&format!("describes {} bytes", bytes.len())), "{stderr}");
}
