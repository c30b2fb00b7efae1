//! `--align`, `--init independent` and `--sync-every epoch`: models trained
//! apart whose hidden units are matched before they are averaged.

use serde_json::Value;

use crate::harness::*;

/// A small model, so that two epochs take seconds.
const SMALL: [&str; 4] = ["--hidden", "32", "--seed", "5"];

/// The `digest` of the last "round averaged" line of `coordinator`.
fn last_digest(coordinator: &Coordinator) -> String {
    let averaged = logged(&coordinator.proc, "round averaged");
    let last = averaged.last().unwrap_or_else(|| panic!("no round averaged\n{}", coordinator.proc.dump()));
    last["digest"].as_str().expect("digest").to_owned()
}

#[test]
fn independent_models_synced_once_an_epoch_are_aligned_and_their_momentum_follows() {
    let _heavy = heavy();
    let args = [&SMALL[..], &["--epochs", "2", "--init", "independent", "--sync-every", "epoch", "--align", "weights"]];
    let run = run_cluster(2, &args.concat(), DEBUG_LOG);
    let coordinator = &run.coordinator;

    // One worker started from weights of its own.
    let own = logged(&coordinator.proc, "worker starts from weights of its own (--init independent)");
    assert_eq!(own.len(), 1, "{}", coordinator.proc.dump());
    // One round an epoch, and in the first the independent worker's units were reordered.
    let aligned = logged(&coordinator.proc, "contributions aligned");
    let rounds: Vec<(u64, u64)> = aligned.iter().map(|l| (u64_field(l, "epoch"), u64_field(l, "round"))).collect();
    assert_eq!(rounds, [(1, 1), (2, 1)], "{}", coordinator.proc.dump());
    assert!(u64_field(&aligned[0], "realigned") >= 1, "{}", aligned[0]);
    assert!(aligned.iter().all(|l| f64_field(l, "align_ms") > 0.0), "{aligned:?}");
    // The workers matched their own contributions, and said so.
    let realigned: u64 = aligned.iter().map(|l| u64_field(l, "realigned")).sum();
    let moved: usize = run
        .workers
        .iter()
        .flat_map(|w| logged(w, "contribution aligned to the round's start (--align)"))
        .filter(|line| line["realigned"] == true)
        .count();
    let workers: Vec<String> = run.workers.iter().map(|w| w.dump()).collect();
    assert_eq!(moved as u64, realigned, "{}", workers.join("\n"));

    // The model file holds the last average (the outer step is the average itself).
    let (arch, params) =
        lazyavg_common::model_file::load(&coordinator.out.join("model.safetensors")).expect("loading the model");
    assert_eq!(arch.to_string(), "784-32-10");
    assert_eq!(lazyavg_common::params::digest(&params), last_digest(coordinator));
    let epochs = epoch_metrics(&coordinator.out);
    assert_eq!(epochs.len(), 2);
    for epoch in &epochs {
        assert_eq!(u64_field(epoch, "samples"), N_TRAIN, "{epoch}");
    }
    // A model, not noise: two matched averages of models trained apart.
    let accuracy = f64_field(&epochs[1], "accuracy");
    assert!(accuracy > 0.9, "accuracy {accuracy}\n{}", coordinator.proc.dump());
}

/// Workers that start from one init and sync every two steps never drift
/// into another order of units: matching each contribution to the round's
/// start must find that, dead units included, and send no `Realign`.
#[test]
fn a_shared_init_aligned_by_activations_is_never_reordered() {
    let _heavy = heavy();
    let args = [&SMALL[..], &["--epochs", "1", "--sync-every", "2", "--align", "activations"]];
    let run = run_cluster(2, &args.concat(), DEBUG_LOG);
    let aligned = logged(&run.coordinator.proc, "contributions aligned");
    assert!(aligned.len() >= 10, "{} rounds\n{}", aligned.len(), run.coordinator.proc.dump());
    let reordering = aligned.iter().filter(|l| u64_field(l, "realigned") > 0).count();
    assert_eq!(reordering, 0, "{reordering} of {} rounds reordered a worker", aligned.len());
}

#[test]
fn align_none_gives_the_same_bits_as_no_flag() {
    let _heavy = heavy();
    let model = |extra: &[&str]| -> (String, Vec<Value>) {
        let args = [&SMALL[..], &["--epochs", "1", "--sync-every", "8"], extra].concat();
        let run = run_cluster(2, &args, DEBUG_LOG);
        assert!(logged(&run.coordinator.proc, "contributions aligned").is_empty(), "--align none aligns nothing");
        // The file also records the run's settings, which name the flag: compare the weights.
        let (_, params) =
            lazyavg_common::model_file::load(&run.coordinator.out.join("model.safetensors")).expect("the model");
        (lazyavg_common::params::digest(&params), logged(&run.coordinator.proc, "round averaged"))
    };
    let (plain, plain_rounds) = model(&[]);
    let (none, none_rounds) = model(&["--align", "none"]);
    assert_eq!(plain, none, "the final weights differ");
    let digests = |rounds: &[Value]| rounds.iter().map(|l| l["digest"].clone()).collect::<Vec<_>>();
    assert!(plain_rounds.len() > 100, "{} rounds", plain_rounds.len());
    assert_eq!(digests(&plain_rounds), digests(&none_rounds), "some round's average differs");
}

/// Diverged weights cannot be matched: under `--align` the workers send them
/// unmatched, and the run ends as it does without alignment, with its cause,
/// instead of losing its workers to a matching error.
#[test]
fn a_diverged_run_aligned_by_weights_ends_with_its_cause() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let args = ["--spawn-workers", "2", "--epochs", "1", "--hidden", "32", "--lr", "1e4", "--align", "weights"];
    let mut coordinator = spawn_local_run(&tmp.path().join("out"), &args, &tmp.path().join("cache"));
    expect_exit(&mut coordinator, 1, "training diverged: no usable weights in epoch 1");
}
