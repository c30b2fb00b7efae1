//! `lazyavg bench scaling`: a short sweep (1 epoch, N = 1 and 2, one seed)
//! writes its table, its JSON and its plot, every run trains, and a second
//! sweep into the same directory is refused.

use std::fs;

use serde_json::Value;

use crate::harness::{RUN_TIMEOUT, heavy};
use crate::support::*;

#[test]
fn a_short_sweep_writes_a_row_per_worker_count() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("scaling");
    let sweep = || {
        let mut cmd = lazyavg();
        cmd.args(["bench", "scaling", "--workers", "1,2", "--seeds", "1", "--data-dir"])
            .arg(mnist_dir())
            .arg("--out")
            .arg(&out)
            .args(["--", "--epochs", "1"]);
        Proc::spawn("bench scaling", cmd)
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
    assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"), "{svg}");
    // Two panels, one line per N in each.
    assert_eq!(svg.matches("<polyline").count(), 4, "{svg}");

    let mut again = sweep();
    assert_eq!(again.wait(RUN_TIMEOUT), 1, "{}", again.dump());
    assert!(again.lines().last().is_some_and(|l| l.contains("already holds a sweep")), "{}", again.dump());
    assert_eq!(
        fs::read_to_string(out.join("scaling.md")).expect("scaling.md"),
        table,
        "the first sweep's table changed"
    );
}
