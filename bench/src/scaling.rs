//! `lazyavg-bench scaling`: how training scales with the number of workers,
//! measured with the real system. For every worker count N and seed it runs
//! `lazyavg coordinator --spawn-workers N` to completion, one run at a time
//! (overlapping runs would take each other's cores) and seed by seed, then reads each run's
//! `metrics.jsonl` and reports, per N, the median over seeds of the epochs
//! and the wall time to a target accuracy, the final accuracy, the throughput
//! and the share of time spent synchronising.
//!
//! Writes `scaling.md` (the table, also printed), `scaling.json` (every run's
//! epoch records) and `scaling.svg` (accuracy against epochs and against wall
//! time) into the output directory; each run's files and log are under
//! `runs/n{N}-s{SEED}/`.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{Context, bail, ensure};
use lazyavg_coordinator::run_dir::{self, timestamped_run_dir};
use serde_json::{Value, json};
use tracing::info;

use crate::chart::{self, Figure, HLine, Panel, Series};
use crate::cli::ScalingArgs;

/// Coordinator flags the sweep sets itself for every run.
const OWN_FLAGS: [&str; 9] = [
    "--spawn-workers",
    "--workers",
    "--seed",
    "--out",
    "--bind",
    "--data-dir",
    "--resume",
    "--resume-existing",
    "--log-format",
];

/// The sweep's every run, written last: its presence means the sweep is done.
const REPORT: &str = "scaling.json";

/// What the sweep needs of one epoch record of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochPoint {
    pub epoch: u64,
    pub accuracy: f64,
    /// Seconds since the run's first epoch began training, evaluations included.
    pub elapsed: f64,
    pub samples_per_s: f64,
    pub sync_share: f64,
}

/// One finished run.
#[derive(Debug, Clone)]
pub struct RunData {
    pub workers: usize,
    pub seed: u64,
    pub dir: PathBuf,
    pub epochs: Vec<EpochPoint>,
    /// The epoch records as written, for `scaling.json`.
    pub records: Vec<Value>,
}

/// One run reduced to the figures the table compares.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// First epoch at or above the target; `None` if never reached.
    pub epochs_to_target: Option<f64>,
    /// `elapsed` at that epoch.
    pub time_to_target: Option<f64>,
    pub final_accuracy: f64,
    /// Medians over the run's epochs.
    pub samples_per_s: f64,
    pub sync_share: f64,
}

/// Median and range over seeds. `None` stands for "never reached" and sorts
/// above every number, so a median is `None` when at least half the seeds
/// never reached the target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// One table row: a worker count over all its seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub workers: usize,
    pub runs: usize,
    /// Runs that reached the target.
    pub reached: usize,
    pub epochs_to_target: Spread,
    pub time_to_target: Spread,
    pub final_accuracy: Spread,
    pub samples_per_s: Spread,
    pub sync_share: Spread,
}

pub fn run(args: &ScalingArgs) -> anyhow::Result<()> {
    let mut workers = args.workers.clone();
    workers.sort_unstable();
    workers.dedup();
    let mut seeds = args.seeds.clone();
    seeds.sort_unstable();
    seeds.dedup();
    ensure!(!workers.is_empty() && workers[0] > 0, "invalid --workers: every count must be at least 1");
    ensure!(!seeds.is_empty(), "invalid --seeds: give at least one");
    ensure!(
        args.target.is_finite() && args.target > 0.0 && args.target <= 1.0,
        "invalid --target: must be an accuracy in (0, 1], got {}",
        args.target
    );
    for arg in &args.coordinator_args {
        let name = arg.split('=').next().unwrap_or(arg);
        ensure!(!OWN_FLAGS.contains(&name), "{name} cannot be passed after `--`: the sweep sets it for every run");
    }
    let exe = lazyavg_binary(args.lazyavg.as_deref())?;
    let out = args.out.clone().unwrap_or_else(|| timestamped_run_dir("scaling-"));
    // An earlier sweep's results stay; runs that trained nothing may be redone.
    ensure!(!out.join(REPORT).exists(), "{} already holds a sweep ({REPORT}): choose another --out", out.display());
    for (&n, &seed) in workers.iter().flat_map(|n| seeds.iter().map(move |s| (n, s))) {
        run_dir::ensure_no_results(&run_dir_of(&out, n, seed), false)?;
    }
    fs::create_dir_all(out.join("runs")).with_context(|| format!("creating {}", out.join("runs").display()))?;

    let total = workers.len() * seeds.len();
    info!(runs = total, workers = ?workers, seeds = ?seeds, out = %out.display(), "scaling sweep");
    let mut runs = Vec::with_capacity(total);
    // Seed by seed, every N in turn: a slow spell of a shared host then
    // hits all worker counts alike instead of all seeds of one.
    for &seed in &seeds {
        for &n in &workers {
            info!(run = runs.len() + 1, of = total, workers = n, seed, "starting run");
            let run = run_one(&exe, args, &out, n, seed)?;
            let last = run.epochs.last().expect("run_one checks there is an epoch");
            info!(workers = n, seed, epochs = last.epoch, accuracy = last.accuracy, elapsed = last.elapsed, "run done");
            runs.push(run);
        }
    }

    let rows = summarize(&runs, &workers, args.target);
    let table = markdown(&rows, args.target, &seeds, &args.coordinator_args);
    let figure = figure(&runs, &workers, &seeds, args.target, &args.coordinator_args);
    let report = report_json(&runs, &rows, args, &workers, &seeds);
    write(&out.join("scaling.md"), &table)?;
    write(&out.join(REPORT), &(serde_json::to_string_pretty(&report)? + "\n"))?;
    write(&out.join("scaling.svg"), &chart::render(&figure)?)?;
    println!("{table}");
    info!(out = %out.display(), "wrote scaling.md, scaling.json and scaling.svg");
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The `lazyavg` binary the sweep drives: `--lazyavg`, else the one next to
/// this executable (where `cargo build` puts both). Checked before any run
/// starts, so a missing build fails at once and names the path.
fn lazyavg_binary(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .context("locating lazyavg-bench's own executable, to find lazyavg next to it")?
            .with_file_name(format!("lazyavg{}", std::env::consts::EXE_SUFFIX)),
    };
    ensure!(
        path.is_file(),
        "no lazyavg binary at {}: build it (`cargo build --release -p lazyavg`) or pass --lazyavg PATH",
        path.display()
    );
    Ok(path)
}

/// A child process that is killed (by its pid) and reaped unless it was
/// waited for: an error or a panic in the sweep leaves no coordinator behind.
/// Its local workers exit when it does (their standard input closes).
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn wait(mut self) -> io::Result<ExitStatus> {
        let status = self.0.as_mut().expect("present until waited for").wait()?;
        self.0 = None;
        Ok(status)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run_name(n: usize, seed: u64) -> String {
    format!("n{n}-s{seed}")
}

/// Where the run with `n` workers and `seed` writes.
fn run_dir_of(out: &Path, n: usize, seed: u64) -> PathBuf {
    out.join("runs").join(run_name(n, seed))
}

/// Runs one coordinator with `n` local workers to completion and reads its metrics.
fn run_one(exe: &Path, args: &ScalingArgs, out: &Path, n: usize, seed: u64) -> anyhow::Result<RunData> {
    let dir = run_dir_of(out, n, seed);
    let name = run_name(n, seed);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log_path = dir.join("coordinator.log");
    let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let log_out = log.try_clone().with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(["--log-format", "json", "coordinator", "--spawn-workers", &n.to_string(), "--bind", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&args.data_dir)
        .args(["--seed", &seed.to_string()])
        .arg("--out")
        .arg(&dir)
        .args(&args.coordinator_args)
        .stdin(Stdio::null())
        .stdout(log_out)
        .stderr(log);
    let child = cmd.spawn().with_context(|| format!("starting run {name}: {}", exe.display()))?;
    let status = KillOnDrop(Some(child)).wait().with_context(|| format!("waiting for run {name}"))?;
    if !status.success() {
        let cause = fs::read_to_string(&log_path).map(|log| error_line(&log).to_owned()).unwrap_or_default();
        bail!("run {name} failed ({status}): {cause}; its log is {}", log_path.display());
    }
    let metrics = dir.join("metrics.jsonl");
    let text = fs::read_to_string(&metrics).with_context(|| format!("reading {} of run {name}", metrics.display()))?;
    let (epochs, records) = parse_metrics(&text).with_context(|| format!("in {}", metrics.display()))?;
    ensure!(!epochs.is_empty(), "run {name} wrote no epoch record to {}", metrics.display());
    Ok(RunData { workers: n, seed, dir, epochs, records })
}

/// The line of a failed run's log that says why: lazyavg's own error line or
/// clap's, else the last line.
fn error_line(log: &str) -> &str {
    let mut lines = log.lines().rev().map(str::trim).filter(|l| !l.is_empty());
    let last = lines.clone().next().unwrap_or("no output");
    lines.find(|l| l.starts_with("lazyavg: ") || l.starts_with("error: ")).unwrap_or(last)
}

/// The epoch records of a `metrics.jsonl`, parsed and as written.
pub fn parse_metrics(text: &str) -> anyhow::Result<(Vec<EpochPoint>, Vec<Value>)> {
    let mut points = Vec::new();
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: Value = serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
        if record["kind"] != "epoch" {
            continue;
        }
        let number = |field: &str| {
            record[field].as_f64().with_context(|| {
                format!("line {}: no number {field:?} in the epoch record (written by an older lazyavg?)", i + 1)
            })
        };
        points.push(EpochPoint {
            epoch: number("epoch")? as u64,
            accuracy: number("accuracy")?,
            elapsed: number("elapsed")?,
            samples_per_s: number("samples_per_s")?,
            sync_share: number("sync_share")?,
        });
        records.push(record);
    }
    Ok((points, records))
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Median and range of values where `None` means "never" (above every number).
pub fn spread(values: &[Option<f64>]) -> Spread {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(b),
        (a, b) => a.is_none().cmp(&b.is_none()),
    });
    let n = sorted.len();
    if n == 0 {
        return Spread { median: None, min: None, max: None };
    }
    let median =
        if n % 2 == 1 { sorted[n / 2] } else { sorted[n / 2 - 1].zip(sorted[n / 2]).map(|(a, b)| (a + b) / 2.0) };
    Spread { median, min: sorted[0], max: sorted[n - 1] }
}

/// The first epoch whose test accuracy is at least `target`.
pub fn first_at_target(epochs: &[EpochPoint], target: f64) -> Option<&EpochPoint> {
    epochs.iter().find(|e| e.accuracy >= target)
}

/// One run's figures for the table.
pub fn outcome(epochs: &[EpochPoint], target: f64) -> RunOutcome {
    let hit = first_at_target(epochs, target);
    let per_epoch = |f: fn(&EpochPoint) -> f64| median(&epochs.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN);
    RunOutcome {
        epochs_to_target: hit.map(|e| e.epoch as f64),
        time_to_target: hit.map(|e| e.elapsed),
        final_accuracy: epochs.last().map_or(f64::NAN, |e| e.accuracy),
        samples_per_s: per_epoch(|e| e.samples_per_s),
        sync_share: per_epoch(|e| e.sync_share),
    }
}

/// One row per worker count, over that count's runs.
pub fn summarize(runs: &[RunData], workers: &[usize], target: f64) -> Vec<Row> {
    workers
        .iter()
        .map(|&n| {
            let outcomes: Vec<RunOutcome> =
                runs.iter().filter(|r| r.workers == n).map(|r| outcome(&r.epochs, target)).collect();
            let over = |f: fn(&RunOutcome) -> Option<f64>| spread(&outcomes.iter().map(f).collect::<Vec<_>>());
            Row {
                workers: n,
                runs: outcomes.len(),
                reached: outcomes.iter().filter(|o| o.epochs_to_target.is_some()).count(),
                epochs_to_target: over(|o| o.epochs_to_target),
                time_to_target: over(|o| o.time_to_target),
                final_accuracy: over(|o| Some(o.final_accuracy)),
                samples_per_s: over(|o| Some(o.samples_per_s)),
                sync_share: over(|o| Some(o.sync_share)),
            }
        })
        .collect()
}

/// `value / base` when both are known.
pub fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    value.zip(base).filter(|&(_, b)| b > 0.0).map(|(v, b)| v / b)
}

/// A number with `decimals` decimals, or "never".
fn number(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) => format!("{v:.decimals$}"),
        None => "never".to_owned(),
    }
}

/// Epochs: whole numbers as such, a median between two as x.5.
fn epochs(value: Option<f64>) -> String {
    match value {
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        v => number(v, 1),
    }
}

/// "median (min–max)", or just the median for a single run or an empty range.
fn cell(spread: Spread, runs: usize, show: impl Fn(Option<f64>) -> String) -> String {
    if runs < 2 || spread.min == spread.max {
        return show(spread.median);
    }
    format!("{} ({}–{})", show(spread.median), show(spread.min), show(spread.max))
}

/// The Markdown table, with a caption saying what was run and how to read it.
pub fn markdown(rows: &[Row], target: f64, seeds: &[u64], coordinator_args: &[String]) -> String {
    let Some(base) = rows.first() else {
        return String::new();
    };
    let flags =
        if coordinator_args.is_empty() { "none".to_owned() } else { format!("`{}`", coordinator_args.join(" ")) };
    let range = if seeds.len() > 1 { " (min–max)" } else { "" };
    let mut md = format!(
        "Scaling with the number of workers N: {}{range}, target test accuracy {target}. \
         Coordinator flags: {flags}.\n\n",
        seeds_phrase(seeds)
    );
    let b = base.workers;
    md.push_str(&format!(
        "| N | reached | epochs to {target} | × N={b} | time to {target} (s) | × N={b} | final accuracy | samples/s | sync share |\n"
    ));
    md.push_str("|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for row in rows {
        let times = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.2}×"));
        md.push_str(&format!(
            "| {} | {}/{} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.workers,
            row.reached,
            row.runs,
            cell(row.epochs_to_target, row.runs, epochs),
            times(ratio(row.epochs_to_target.median, base.epochs_to_target.median)),
            cell(row.time_to_target, row.runs, |v| number(v, 1)),
            times(ratio(row.time_to_target.median, base.time_to_target.median)),
            cell(row.final_accuracy, row.runs, |v| number(v, 4)),
            cell(row.samples_per_s, row.runs, |v| number(v, 0)),
            cell(row.sync_share, row.runs, |v| number(v, 3)),
        ));
    }
    md.push_str(
        "\nEpochs to target: the first epoch whose test accuracy reached it. Time: wall time from the start of \
         the first epoch's training to the end of that epoch's evaluation. never: not reached within the run \
         (a median is never when at least half the seeds never reached it). samples/s and sync share: median \
         over each run's epochs, then over seeds.\n",
    );
    md
}

/// "median over seeds 1, 2, 3", or "seed 1" for a single one.
fn seeds_phrase(seeds: &[u64]) -> String {
    match seeds {
        [one] => format!("seed {one}"),
        _ => format!("median over seeds {}", seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// Per epoch number, the median over `runs` of `f`, for the epochs every run has.
fn per_epoch_medians(runs: &[&RunData], f: fn(&EpochPoint) -> f64) -> Vec<f64> {
    let common = runs.iter().map(|r| r.epochs.len()).min().unwrap_or(0);
    (0..common).filter_map(|i| median(&runs.iter().map(|r| f(&r.epochs[i])).collect::<Vec<_>>())).collect()
}

/// Two panels: accuracy against epochs and against wall time, one line per N
/// through the per-epoch medians over seeds.
fn figure(runs: &[RunData], workers: &[usize], seeds: &[u64], target: f64, coordinator_args: &[String]) -> Figure {
    let mut by_epoch = Vec::new();
    let mut by_time = Vec::new();
    let (mut max_epoch, mut max_time, mut min_accuracy) = (1.0f64, 0.0f64, 1.0f64);
    for &n in workers {
        let of_n: Vec<&RunData> = runs.iter().filter(|r| r.workers == n).collect();
        let epoch = per_epoch_medians(&of_n, |e| e.epoch as f64);
        let accuracy = per_epoch_medians(&of_n, |e| e.accuracy);
        let elapsed = per_epoch_medians(&of_n, |e| e.elapsed);
        max_epoch = epoch.iter().copied().fold(max_epoch, f64::max);
        max_time = elapsed.iter().copied().fold(max_time, f64::max);
        min_accuracy = accuracy.iter().copied().fold(min_accuracy, f64::min);
        by_epoch.push(Series { points: epoch.into_iter().zip(accuracy.iter().copied()).collect() });
        by_time.push(Series { points: elapsed.into_iter().zip(accuracy).collect() });
    }
    // From 0.95 (or lower, to show every point and the target) to 1.
    let y_low = (((min_accuracy.min(target) - 0.005) * 100.0).floor() / 100.0).clamp(0.0, 0.95);
    let epoch_range = if max_epoch > 1.0 { (1.0, max_epoch) } else { (0.5, 1.5) };
    let panel = |title: &str, x_label: &str, x_range, integer_x, series| Panel {
        title: title.to_owned(),
        x_label: x_label.to_owned(),
        x_range,
        integer_x,
        series,
    };
    let flags =
        if coordinator_args.is_empty() { String::new() } else { format!("; flags {}", coordinator_args.join(" ")) };
    Figure {
        title: "lazyavg: test accuracy with N workers".to_owned(),
        subtitle: format!("{}{flags}", seeds_phrase(seeds)),
        y_label: "test accuracy".to_owned(),
        y_range: (y_low, 1.0),
        hline: Some(HLine { y: target, label: format!("target {target}") }),
        panels: vec![
            panel("by epoch", "epoch", epoch_range, true, by_epoch),
            // A little room on the right, so the last points are not on the frame.
            panel("by wall time", "wall time (s)", (0.0, max_time * 1.05), false, by_time),
        ],
        legend: workers.iter().map(|&n| format!("N = {n} worker{}", if n == 1 { "" } else { "s" })).collect(),
    }
}

/// Everything measured, for other tools: the sweep's settings, the table's
/// rows, and every run's epoch records as the coordinator wrote them.
fn report_json(runs: &[RunData], rows: &[Row], args: &ScalingArgs, workers: &[usize], seeds: &[u64]) -> Value {
    let spread_json = |s: Spread| json!({ "median": s.median, "min": s.min, "max": s.max });
    let base = rows.first();
    json!({
        "target": args.target,
        "workers": workers,
        "seeds": seeds,
        "data_dir": args.data_dir,
        "lazyavg": args.lazyavg,
        "coordinator_args": args.coordinator_args,
        "summary": rows.iter().map(|r| json!({
            "workers": r.workers,
            "runs": r.runs,
            "reached": r.reached,
            "epochs_to_target": spread_json(r.epochs_to_target),
            "epochs_to_target_vs_base": ratio(r.epochs_to_target.median, base.and_then(|b| b.epochs_to_target.median)),
            "time_to_target": spread_json(r.time_to_target),
            "time_to_target_vs_base": ratio(r.time_to_target.median, base.and_then(|b| b.time_to_target.median)),
            "final_accuracy": spread_json(r.final_accuracy),
            "samples_per_s": spread_json(r.samples_per_s),
            "sync_share": spread_json(r.sync_share),
        })).collect::<Vec<_>>(),
        "runs": runs.iter().map(|r| {
            let o = outcome(&r.epochs, args.target);
            json!({
                "workers": r.workers,
                "seed": r.seed,
                "dir": r.dir,
                "epochs_to_target": o.epochs_to_target,
                "time_to_target": o.time_to_target,
                "final_accuracy": o.final_accuracy,
                "epochs": r.records,
            })
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(epoch: u64, accuracy: f64) -> EpochPoint {
        EpochPoint {
            epoch,
            accuracy,
            elapsed: 2.5 * epoch as f64,
            samples_per_s: 1000.0 * epoch as f64,
            sync_share: 0.1,
        }
    }

    fn run(workers: usize, seed: u64, accuracies: &[f64]) -> RunData {
        let epochs: Vec<EpochPoint> = accuracies.iter().enumerate().map(|(i, &a)| point(i as u64 + 1, a)).collect();
        RunData { workers, seed, dir: PathBuf::new(), epochs, records: Vec::new() }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn never_sorts_above_every_number() {
        let s = spread(&[Some(4.0), None, Some(2.0)]);
        assert_eq!(s, Spread { median: Some(4.0), min: Some(2.0), max: None });
        let s = spread(&[None, Some(2.0), None]);
        assert_eq!((s.median, s.min), (None, Some(2.0)));
        // An even count with "never" in the middle pair has no median.
        assert_eq!(spread(&[Some(1.0), None]).median, None);
        assert_eq!(spread(&[Some(1.0), Some(2.0)]).median, Some(1.5));
    }

    #[test]
    fn the_first_epoch_at_or_above_the_target_counts() {
        let epochs: Vec<EpochPoint> =
            [0.95, 0.979, 0.98, 0.975, 0.99].iter().enumerate().map(|(i, &a)| point(i as u64 + 1, a)).collect();
        assert_eq!(first_at_target(&epochs, 0.98).map(|e| e.epoch), Some(3));
        assert_eq!(first_at_target(&epochs, 0.995), None);
        let o = outcome(&epochs, 0.98);
        assert_eq!((o.epochs_to_target, o.time_to_target, o.final_accuracy), (Some(3.0), Some(7.5), 0.99));
        assert_eq!(o.samples_per_s, 3000.0);
        let o = outcome(&epochs, 0.995);
        assert_eq!((o.epochs_to_target, o.time_to_target), (None, None));
    }

    #[test]
    fn rows_take_medians_over_seeds_and_ratios_against_the_smallest_n() {
        let runs = vec![
            run(1, 1, &[0.97, 0.98, 0.99]),
            run(1, 2, &[0.98, 0.985, 0.99]),
            run(1, 3, &[0.96, 0.97, 0.98]),
            run(4, 1, &[0.95, 0.96, 0.97]),
            run(4, 2, &[0.95, 0.97, 0.98]),
            run(4, 3, &[0.96, 0.97, 0.975]),
        ];
        let rows = summarize(&runs, &[1, 4], 0.98);
        assert_eq!((rows[0].runs, rows[0].reached), (3, 3));
        assert_eq!(rows[0].epochs_to_target, Spread { median: Some(2.0), min: Some(1.0), max: Some(3.0) });
        assert_eq!(rows[0].time_to_target.median, Some(5.0));
        assert_eq!(rows[0].final_accuracy.median, Some(0.99));
        assert_eq!(rows[1].reached, 1);
        assert_eq!(rows[1].epochs_to_target, Spread { median: None, min: Some(3.0), max: None });
        assert_eq!(ratio(rows[1].epochs_to_target.median, rows[0].epochs_to_target.median), None);
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));

        let md = markdown(&rows, 0.98, &[1, 2, 3], &["--epochs".to_owned(), "3".to_owned()]);
        let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(table.len(), 4, "{md}");
        assert!(table[2].starts_with("| 1 | 3/3 | 2 (1–3) | 1.00× | 5.0 (2.5–7.5) | 1.00× |"), "{md}");
        assert!(table[3].starts_with("| 4 | 1/3 | never (3–never) | — |"), "{md}");
    }

    #[test]
    fn metrics_lines_other_than_epochs_are_skipped_and_missing_fields_named() {
        let text = concat!(
            r#"{"kind":"round","epoch":1,"round":1}"#,
            "\n",
            r#"{"kind":"epoch","epoch":1,"accuracy":0.97,"elapsed":3.5,"samples_per_s":9000.0,"sync_share":0.2,"workers":2}"#,
            "\n"
        );
        let (points, records) = parse_metrics(text).unwrap();
        assert_eq!(
            points,
            vec![EpochPoint { epoch: 1, accuracy: 0.97, elapsed: 3.5, samples_per_s: 9000.0, sync_share: 0.2 }]
        );
        assert_eq!(records[0]["workers"], 2);
        let old = r#"{"kind":"epoch","epoch":1,"accuracy":0.97,"samples_per_s":9000.0,"sync_share":0.2}"#;
        let err = format!("{:#}", parse_metrics(old).unwrap_err());
        assert!(err.contains("\"elapsed\""), "{err}");
    }
}
