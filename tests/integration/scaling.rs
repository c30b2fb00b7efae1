//! `lazyavg-bench scaling`: a short sweep (1 epoch, N = 1 and 2, one seed)
//! of the `lazyavg` binary built for these tests writes its table, its JSON
//! and its chart, every run trains, a second sweep into the same directory is
//! refused, and a missing `lazyavg` binary is named before anything runs.

use std::fs;
use std::process::Command;

use serde_json::Value;

use crate::harness::{RUN_TIMEOUT, heavy};
use crate::support::*;

#[test]
fn a_short_sweep_writes_a_row_per_worker_count() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("scaling");
    let bench = lazyavg_bench();
    let sweep = || {
        let mut cmd = Command::new(&bench);
        cmd.arg("scaling").arg("--lazyavg").arg(env!("CARGO_BIN_EXE_lazyavg"));
        cmd.args(["--workers", "1,2", "--seeds", "1", "--data-dir"])
            .arg(mnist_dir())
            .arg("--out")
            .arg(&out)
            .args(["--", "--epochs", "1"]);
        Proc::spawn("lazyavg-bench scaling", cmd)
    };
    let mut proc = sweep();
    assert_eq!(proc.wait(2 * RUN_TIMEOUT), 0, "{}", proc.dump());

    let table = fs::read_to_string(out.join("scaling.md")).expect("scaling.md");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| N "))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.iter().map(|r| r[0]).collect::<Vec<_>>(), ["1", "2"], "{table}");
    for row in &rows {
        assert_eq!(row[1].split('/').nth(1), Some("1"), "one run per N: {table}");
        let accuracy: f64 = row[6].parse().unwrap_or_else(|e| panic!("final accuracy {:?}: {e}\n{table}", row[6]));
        assert!(accuracy > 0.9, "N = {} reached only {accuracy}\n{table}", row[0]);
    }

    let report: Value = serde_json::from_str(&fs::read_to_string(out.join("scaling.json")).expect("scaling.json"))
        .expect("scaling.json is JSON");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{report}");
    for run in runs {
        let epochs = run["epochs"].as_array().expect("epochs");
        assert_eq!(epochs.len(), 1, "{run}");
        let (seconds, elapsed) = (epochs[0]["seconds"].as_f64().unwrap(), epochs[0]["elapsed"].as_f64().unwrap());
        // `elapsed` includes the evaluation that `seconds` leaves out.
        assert!(elapsed >= seconds && seconds > 0.0, "{run}");
        let dir = run["dir"].as_str().expect("dir");
        assert!(fs::metadata(format!("{dir}/coordinator.log")).is_ok_and(|m| m.len() > 0), "no log in {dir}");
    }

    let svg = fs::read_to_string(out.join("scaling.svg")).expect("scaling.svg");
    assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
    let texts: Vec<&str> = svg
        .split("<text")
        .skip(1)
        .filter_map(|t| t.split('>').nth(1))
        .map(|t| t.split('<').next().unwrap_or("").trim())
        .collect();
    for label in ["by epoch", "by wall time", "test accuracy", "N = 1 worker", "N = 2 workers", "target 0.98"] {
        assert!(texts.contains(&label), "no text {label:?} in the chart: {texts:?}");
    }
    // One line per N in each of the two panels, and the legend's sample of it.
    for colour in ["#1F77B4", "#FF7F0E"] {
        let lines = svg.split("<polyline").skip(1).filter(|p| p.split('>').next().is_some_and(|a| a.contains(colour)));
        assert_eq!(lines.count(), 3, "{colour}: {svg}");
    }

    let mut again = sweep();
    assert_eq!(again.wait(RUN_TIMEOUT), 1, "{}", again.dump());
    assert!(again.lines().last().is_some_and(|l| l.contains("already holds a sweep")), "{}", again.dump());
    assert_eq!(
        fs::read_to_string(out.join("scaling.md")).expect("scaling.md"),
        table,
        "the first sweep's table changed"
    );
}

#[test]
fn a_missing_lazyavg_binary_is_named_before_any_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("no-such-lazyavg");
    let mut cmd = Command::new(lazyavg_bench());
    cmd.arg("scaling").arg("--lazyavg").arg(&missing).arg("--out").arg(tmp.path().join("out"));
    let mut proc = Proc::spawn("lazyavg-bench scaling", cmd);
    assert_eq!(proc.wait(RUN_TIMEOUT), 1, "{}", proc.dump());
    let last = proc.lines().last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("lazyavg-bench: no lazyavg binary at ") && last.contains("no-such-lazyavg"),
        "{}",
        proc.dump()
    );
    assert!(!tmp.path().join("out").exists(), "the sweep created its directory before failing");
}
