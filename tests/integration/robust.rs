//! `lazyavg-bench hostile --attack scale`, a client that joins like a worker
//! and answers every pull with 100 × the last average, as one of 5 workers
//! of a small run: with centered clipping (the rule README recommends) the
//! run ends within 1 pp of the same run without it, and the coordinator's
//! warning names the client; so do norm clipping and the mean with
//! `--drop-outliers`;
//! without it, the run diverges, and its error names the client instead of
//! the learning rate.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::support::*;

/// A small run: one epoch of a narrow MLP among 5 workers.
const SMALL: [&str; 6] = ["--workers", "5", "--epochs", "1", "--hidden", "32"];

/// How long a test waits for a step of the run.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The warning that names a worker far from the others.
const FAR: &str = "worker's update is far from the others' (its norm over the median's)";

/// Starts a run of 5 with `args`, `hostile` of them scaling attackers
/// (named hostile-1, …) and the rest real workers.
fn five(hostile: usize, args: &[&str]) -> (tempfile::TempDir, Coordinator, Vec<Proc>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let args = [&SMALL[..], args].concat();
    let coordinator = start_coordinator(&tmp.path().join("out"), "127.0.0.1:0", &args, "info");
    let mut procs = start_workers("worker", 5 - hostile, &coordinator.addr, tmp.path(), "info");
    for i in 1..=hostile {
        let name = format!("hostile-{i}");
        let mut cmd = Command::new(lazyavg_bench());
        cmd.args(["hostile", "--attack", "scale", "--name", &name, "--coordinator"])
            .arg(format!("http://{}", coordinator.addr));
        procs.push(Proc::spawn(&name, cmd));
    }
    (tmp, coordinator, procs)
}

/// Waits for the whole run to succeed; its final test accuracy.
fn final_accuracy(coordinator: &mut Coordinator, procs: &mut [Proc]) -> f64 {
    let mut all: Vec<&mut Proc> = procs.iter_mut().collect();
    all.push(&mut coordinator.proc);
    expect_success(&mut all);
    let done = logged(&coordinator.proc, "training complete");
    f64_field(done.first().unwrap_or_else(|| panic!("no end\n{}", coordinator.proc.dump())), "accuracy")
}

/// With `args`, one scaling client among 5 leaves the final accuracy within
/// 1 pp of the same run without it, and a warning names it (as left out of
/// the rounds, or kept in them bounded); without it, no worker is named.
fn holds_against_one_scaling_worker(args: &[&str], left_out: bool) {
    let (_fair_dir, mut fair, mut workers) = five(0, args);
    let fault_free = final_accuracy(&mut fair, &mut workers);
    let (_dir, mut attacked, mut procs) = five(1, args);
    let accuracy = final_accuracy(&mut attacked, &mut procs);
    assert!(accuracy >= fault_free - 0.01, "{args:?}: {accuracy} under attack, {fault_free} without");
    let warned = logged(&attacked.proc, FAR);
    assert!(
        warned
            .iter()
            .any(|l| l["name"] == "hostile-1" && l["left_out"] == left_out && f64_field(l, "ratio_to_median") > 10.0),
        "{}",
        attacked.proc.dump()
    );
    let retired = logged(&attacked.proc, "worker's update was an outlier; it trains no more of this epoch");
    assert!(retired.iter().all(|l| l["name"] == "hostile-1") && !retired.is_empty(), "{}", attacked.proc.dump());
    assert!(logged(&fair.proc, FAR).is_empty(), "no honest worker is an outlier\n{}", fair.proc.dump());
}

#[test]
fn one_scaling_worker_among_five_barely_moves_centered_clipping_and_is_named() {
    let _heavy = heavy();
    holds_against_one_scaling_worker(&["--aggregate", "centered-clip"], true);
}

/// Norm clipping streams each contribution into its sum: the scaling
/// client is kept in every round, each time adding no more than twice an
/// honest update.
#[test]
fn one_scaling_worker_among_five_is_bounded_by_norm_clipping_and_named() {
    let _heavy = heavy();
    holds_against_one_scaling_worker(&["--aggregate", "norm-clip"], false);
}

#[test]
fn the_mean_leaves_a_scaling_worker_out_when_asked() {
    let _heavy = heavy();
    holds_against_one_scaling_worker(&["--drop-outliers"], true);
}

#[test]
fn the_mean_diverges_under_a_scaling_worker_and_names_it() {
    let _heavy = heavy();
    let (_dir, mut coordinator, _procs) = five(1, &[]);
    expect_exit(&mut coordinator.proc, 1, "after worker hostile-1 sent an update");
    assert!(!last_line(&coordinator.proc).contains("lower --lr"), "{}", coordinator.proc.dump());
}

/// A learning rate far too high makes honest workers' updates cross the
/// outlier cut for a round or two before the run diverges: the run ends
/// blaming the learning rate, not one of them.
#[test]
fn a_fault_free_run_with_a_learning_rate_too_high_blames_the_learning_rate() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let args = ["--spawn-workers", "4", "--epochs", "1", "--hidden", "32", "--lr", "120"];
    let mut coordinator = spawn_local_run(&tmp.path().join("out"), &args, &tmp.path().join("cache"));
    expect_exit(&mut coordinator, 1, "lower --lr or --lr-scaling");
}

/// A worker left out of the epoch as an outlier takes none of the images of
/// honest workers that leave after it: were it the last one connected, it
/// would train the rest of the epoch alone. The images wait for another
/// worker, who trains them, and the epoch still trains every image once.
#[test]
fn an_outlier_left_alone_gets_no_orphaned_images_they_wait_for_a_newcomer() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let args = ["--workers", "3", "--epochs", "1", "--hidden", "32", "--aggregate", "median", "--min-workers", "1"];
    let mut coordinator = start_coordinator(&out, "127.0.0.1:0", &args, "info");
    let url = format!("http://{}", coordinator.addr);
    // Slowed, so that the epoch is far from over when they are killed.
    let mut honest: Vec<Proc> = (1..=2)
        .map(|i| {
            let mut cmd = worker_command(&url, &tmp.path().join(format!("cache-{i}")), "info");
            cmd.args(["--debug-slowdown", "5", "--name", &format!("honest-{i}")]);
            Proc::spawn(&format!("honest-{i}"), cmd)
        })
        .collect();
    let mut cmd = Command::new(lazyavg_bench());
    cmd.args(["hostile", "--attack", "scale", "--name", "hostile-1", "--coordinator", &url]);
    let mut hostile = Proc::spawn("hostile-1", cmd);

    let retired = wait_for_line(
        &mut coordinator.proc,
        "worker's update was an outlier; it trains no more of this epoch",
        EVENT_TIMEOUT,
    );
    assert_eq!(retired["name"], "hostile-1", "{retired}");
    for worker in &mut honest {
        worker.signal("KILL");
    }
    let waiting = wait_for_line(
        &mut coordinator.proc,
        "orphaned images wait for a worker: those connected were excluded from this epoch; training paused",
        EVENT_TIMEOUT,
    );
    let mut cmd = worker_command(&url, &tmp.path().join("cache-new"), "info");
    let mut newcomer = Proc::spawn("newcomer", {
        cmd.args(["--name", "newcomer"]);
        cmd
    });
    expect_success(&mut [&mut coordinator.proc, &mut newcomer, &mut hostile]);
    let epochs = epoch_metrics(&out);
    assert_each_image_once(&epochs[0], N_TRAIN);
    assert_eq!(samples_of(&epochs[0], "hostile-1"), 0, "{}", epochs[0]);
    assert_eq!(samples_of(&epochs[0], "newcomer"), u64_field(&waiting, "images"), "{}", epochs[0]);
}
