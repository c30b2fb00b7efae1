//! Watching a run: the coordinator's and a worker's Prometheus endpoints
//! scraped during a real run (and checked with `promtool`), a real Prometheus server scraping
//! it with the shipped config and rules, and the gRPC health service seen
//! by a real `grpc.health.v1` client.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::*;
use crate::support::*;

/// A tiny model: these tests watch the run, not its accuracy.
const TINY: [&str; 2] = ["--hidden", "16"];

/// Asserts what every scrape must show: the workers' samples add up to the total.
fn assert_consistent(text: &str) {
    let total = value(text, "lazyavg_samples_total").unwrap_or_else(|| panic!("no lazyavg_samples_total\n{text}"));
    let parts: f64 = samples(text, "lazyavg_worker_samples_total").iter().map(|(_, v)| v).sum();
    assert_eq!(parts, total, "per-worker samples do not add up to lazyavg_samples_total\n{text}");
}

/// Runs `promtool check metrics` on `text`; `false` (with the reason
/// printed) where promtool cannot run.
fn promtool_check_metrics(text: &str) -> bool {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("skipping `promtool check metrics`: cannot run promtool ({e}); apt-get install prometheus");
            return false;
        }
    };
    child.stdin.take().expect("stdin is piped").write_all(text.as_bytes()).expect("writing to promtool");
    let output = child.wait_with_output().expect("waiting for promtool");
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- exposition ---\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    true
}

#[test]
fn scrapes_during_a_run_pass_promtool_and_agree_with_the_logs() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Long enough (about 0.5 s an epoch alone) for the scrapes below to come before its end.
    let args = [
        "--workers",
        "2",
        "--epochs",
        "10",
        TINY[0],
        TINY[1],
        "--metrics-bind",
        "127.0.0.1:0",
        "--metrics-linger",
        "30s",
    ];
    let mut coordinator = start_coordinator(&tmp.path().join("out"), "127.0.0.1:0", &args, "info");
    let metrics = metrics_addr(&coordinator.proc);
    // The first worker serves its own metrics.
    let url = format!("http://{}", coordinator.addr);
    let mut cmd = worker_command(&url, &tmp.path().join("cache-1"), "info");
    cmd.args(["--name", "worker-1", "--metrics-bind", "127.0.0.1:0"]);
    let mut workers = vec![Proc::spawn("worker-1", cmd)];
    workers.push(start_worker("worker-2", &coordinator.addr, &tmp.path().join("cache-2"), "info"));
    let worker_metrics = wait_until("worker-1 to serve metrics", START_TIMEOUT, || {
        logged(&workers[0], "serving metrics").first().and_then(|l| l["addr"].as_str().map(str::to_owned))
    });

    let rounds = |text: &str| value(text, "lazyavg_rounds_total").unwrap_or(0.0);
    let first =
        wait_until("a completed round in /metrics", RUN_TIMEOUT, || scrape(&metrics).filter(|t| rounds(t) >= 1.0));
    assert_consistent(&first);
    promtool_check_metrics(&first);
    assert_eq!(value(&first, "lazyavg_run_active"), Some(1.0), "{first}");
    // Every refusal reason is served from the start, at 0 in a clean run, so that a rate sees the first one.
    let rejected = samples(&first, "lazyavg_contributions_rejected_total");
    assert_eq!(rejected.len(), lazyavg_coordinator::command::RejectReason::ALL.len(), "{first}");
    assert!(rejected.iter().all(|(_, count)| *count == 0.0), "{first}");
    let openmetrics = scrape_as(&metrics, "application/openmetrics-text;version=1.0.0").expect("an OpenMetrics scrape");
    assert!(
        openmetrics.ends_with("# EOF\n") && openmetrics.contains("# TYPE lazyavg_rounds counter\n"),
        "{openmetrics}"
    );
    assert_eq!(value(&first, "lazyavg_workers_connected"), Some(2.0), "{first}");
    for family in ["lazyavg_worker_samples_total", "lazyavg_worker_last_contribution_timestamp_seconds"] {
        assert_eq!(samples(&first, family).len(), 2, "{family} for both workers\n{first}");
    }
    let later = wait_until("another round in /metrics", RUN_TIMEOUT, || {
        scrape(&metrics).filter(|t| rounds(t) > rounds(&first))
    });
    assert_consistent(&later);

    // The accuracy gauge is set just after the epoch's line is logged.
    let evaluated = wait_until("an evaluated epoch in /metrics", RUN_TIMEOUT, || {
        scrape(&metrics).filter(|t| value(t, "lazyavg_test_accuracy_ratio").is_some_and(|a| a > 0.0))
    });
    assert_consistent(&evaluated);
    let accuracy = value(&evaluated, "lazyavg_test_accuracy_ratio").expect("checked above");
    let logged_accuracies: Vec<f64> =
        logged(&coordinator.proc, "epoch done").iter().map(|l| f64_field(l, "accuracy")).collect();
    assert!(
        logged_accuracies.contains(&accuracy),
        "lazyavg_test_accuracy_ratio {accuracy} is none of the logged epochs' {logged_accuracies:?}"
    );
    let samples_now = value(&evaluated, "lazyavg_samples_total").expect("checked above");
    assert!(samples_now >= N_TRAIN as f64, "an epoch was evaluated after {samples_now} samples");

    let worker = wait_until("worker-1's steps per second", RUN_TIMEOUT, || {
        scrape(&worker_metrics).filter(|t| value(t, "lazyavg_worker_steps_per_second").is_some_and(|v| v > 0.0))
    });
    promtool_check_metrics(&worker);
    let idle = value(&worker, "lazyavg_worker_idle_ratio").unwrap_or_else(|| panic!("no idle ratio\n{worker}"));
    assert!((0.0..=1.0).contains(&idle), "{worker}");
    assert_eq!(value(&worker, "lazyavg_worker_reconnects_total"), Some(0.0), "{worker}");

    // The run's end is served for --metrics-linger: the final accuracy, and not active.
    let done = wait_for_line(&mut coordinator.proc, "training complete", RUN_TIMEOUT);
    let last = scrape(&metrics).expect("the final metrics are served after the run");
    assert_eq!(value(&last, "lazyavg_run_active"), Some(0.0), "{last}");
    assert_eq!(value(&last, "lazyavg_test_accuracy_ratio"), Some(f64_field(&done, "accuracy")), "{last}");
    coordinator.proc.signal("INT");
    let mut procs: Vec<&mut Proc> = std::iter::once(&mut coordinator.proc).chain(workers.iter_mut()).collect();
    expect_success(&mut procs);
    // What the run recorded agrees with what it served: every epoch's
    // samples by worker add up to its samples.
    for epoch in epoch_metrics(&coordinator.out) {
        assert_each_image_once(&epoch, N_TRAIN);
    }
}

/// `%`-encodes a PromQL expression for a query string.
fn query_escape(expr: &str) -> String {
    expr.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result vector of an instant query on the Prometheus at `addr`.
fn prometheus_query(addr: &str, expr: &str) -> Option<Vec<Value>> {
    let (code, body) = http_get(addr, &format!("/api/v1/query?query={}", query_escape(expr)), "application/json")?;
    let reply: Value = serde_json::from_str(&body).ok()?;
    assert_eq!(code, 200, "query {expr:?}: {reply}");
    reply["data"]["result"].as_array().cloned()
}

/// The shipped scrape config with its target made the run's metrics
/// address, its intervals 1 s (a test cannot wait 15 s a scrape) and its
/// rule file the shipped one, by absolute path.
fn local_scrape_config(metrics: &str, rules: &Path) -> String {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring/prometheus.yml");
    let text = fs::read_to_string(&shipped).unwrap_or_else(|e| panic!("reading {}: {e}", shipped.display()));
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("prometheus.yml is YAML");
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    config["rule_files"] = vec![serde_yaml_ng::Value::from(rules.display().to_string())].into();
    let jobs = config["scrape_configs"].as_sequence_mut().expect("scrape_configs");
    assert_eq!(jobs.len(), 1, "one scrape job, for the coordinator");
    jobs[0]["static_configs"][0]["targets"] = vec![serde_yaml_ng::Value::from(metrics)].into();
    serde_yaml_ng::to_string(&config).expect("YAML")
}

#[test]
fn a_real_prometheus_scrapes_the_run_with_the_shipped_config_and_rules() {
    let version = Command::new("prometheus").arg("--version").output();
    if !version.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipping: cannot run `prometheus --version` ({version:?}); apt-get install prometheus");
        return;
    }
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Stopped below, long before its end.
    let args = ["--workers", "1", "--epochs", "100000", TINY[0], TINY[1], "--metrics-bind", "127.0.0.1:0"];
    let mut coordinator = start_coordinator(&tmp.path().join("out"), "127.0.0.1:0", &args, "info");
    let metrics = metrics_addr(&coordinator.proc);
    let _worker = start_worker("worker", &coordinator.addr, &tmp.path().join("cache"), "info");

    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring/alerts.yml");
    let checked = Command::new("promtool").arg("check").arg("rules").arg(&rules).output().expect("running promtool");
    assert!(checked.status.success(), "promtool check rules: {}", String::from_utf8_lossy(&checked.stdout));
    // Each alert's labels and the values its annotations show, on series made up for it.
    let tested = Command::new("promtool")
        .arg("test")
        .arg("rules")
        .arg(rules.with_file_name("alerts_test.yml"))
        .output()
        .expect("running promtool");
    assert!(tested.status.success(), "promtool test rules: {}", String::from_utf8_lossy(&tested.stdout));
    let config = tmp.path().join("prometheus.yml");
    fs::write(&config, local_scrape_config(&metrics, &rules)).expect("writing prometheus.yml");
    let web = reserve_port();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tmp.path().join("tsdb").display()))
        .arg(format!("--web.listen-address={web}"));
    let mut prometheus = Proc::spawn("prometheus", cmd);

    let rounds = wait_until("Prometheus to have lazyavg_rounds_total", RUN_TIMEOUT, || {
        assert!(prometheus.try_exit_code().is_none(), "prometheus exited\n{}", prometheus.dump());
        let result = prometheus_query(&web, "lazyavg_rounds_total")?;
        let value = result.first()?["value"][1].as_str()?.parse::<f64>().ok()?;
        (value > 0.0).then_some(value)
    });
    eprintln!("Prometheus sees {rounds} rounds");
    // The stall rule's expression: not firing on a run that makes progress,
    // and its left side has data (the age of the last round).
    let stalled = "lazyavg_run_active == 1 and time() - lazyavg_last_round_timestamp_seconds > 300";
    let age = wait_until("Prometheus to evaluate the stall expression", RUN_TIMEOUT, || {
        let result = prometheus_query(&web, "time() - lazyavg_last_round_timestamp_seconds")?;
        result.first()?["value"][1].as_str()?.parse::<f64>().ok()
    });
    assert!((0.0..300.0).contains(&age), "last round {age} s ago");
    assert_eq!(prometheus_query(&web, stalled), Some(Vec::new()), "the run is not stalled");
    // The shipped rules loaded and evaluated without error.
    wait_until("the shipped rules to be evaluated", RUN_TIMEOUT, || {
        let (_, body) = http_get(&web, "/api/v1/rules", "application/json")?;
        let reply: Value = serde_json::from_str(&body).ok()?;
        let rules: Vec<&Value> =
            reply["data"]["groups"].as_array()?.iter().flat_map(|g| g["rules"].as_array()).flatten().collect();
        let names: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
        assert!(names.contains(&"LazyavgRunStalled"), "rules loaded: {names:?}");
        rules.iter().all(|r| r["health"] == "ok" && r["state"] == "inactive").then_some(())
    });
    coordinator.proc.signal("INT");
    coordinator.proc.wait(RUN_TIMEOUT);
}

/// The status the coordinator's health service gives `service`.
async fn health(addr: &str, service: &str) -> Result<i32, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
    let mut client = HealthClient::new(endpoint.connect().await.map_err(|e| e.to_string())?);
    let request = HealthCheckRequest { service: service.to_owned() };
    client.check(request).await.map(|r| r.into_inner().status).map_err(|s| s.to_string())
}

#[test]
fn health_is_serving_during_the_run_and_not_serving_while_it_drains() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Stopped below, long before its end.
    let args = ["--workers", "2", "--epochs", "100000", TINY[0], TINY[1]];
    let mut coordinator = start_coordinator(&tmp.path().join("out"), "127.0.0.1:0", &args, "info");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let addr = coordinator.addr.clone();
    let status = |service: &str| runtime.block_on(health(&addr, service));
    // Serving as soon as it listens, before any worker joined.
    for service in ["", "lazyavg.v1.Coordinator"] {
        assert_eq!(status(service), Ok(ServingStatus::Serving as i32), "{service:?} before training");
    }
    let mut workers = start_workers("worker", 2, &coordinator.addr, tmp.path(), "info");
    wait_for_line(&mut coordinator.proc, "epoch done", RUN_TIMEOUT);
    assert_eq!(status(""), Ok(ServingStatus::Serving as i32), "while training");

    // A stopped worker cannot close its session: the coordinator drains
    // for its grace period after the run ends, and says so meanwhile.
    workers[1].signal("STOP");
    coordinator.proc.signal("TERM");
    wait_until("NOT_SERVING while draining", Duration::from_secs(10), || match status("") {
        Ok(s) if s == ServingStatus::NotServing as i32 => Some(()),
        Ok(_) => None,
        Err(e) => panic!("the health service went away before saying NOT_SERVING: {e}\n{}", coordinator.proc.dump()),
    });
    assert_eq!(status("lazyavg.v1.Coordinator"), Ok(ServingStatus::NotServing as i32));
    workers[1].signal("CONT");
    coordinator.proc.wait(RUN_TIMEOUT);
}
