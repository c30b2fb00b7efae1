//! The commands in `deploy/` run as written against this binary: the
//! coordinator's and the workers' arguments and environment in the Kubernetes
//! manifest and the compose file, and the systemd units' command lines with
//! their configuration files. Only what cannot hold on a test machine is
//! replaced: the fixed port and the host names (a port the OS picks), the
//! service paths (a temporary directory), the data (the MNIST copy beside the
//! project) and the secret (a test token); the run is cut to one epoch. Each
//! coordinator is then started a second time with the same command, as a
//! restart would, and must end the finished run again without workers
//! (`--resume-existing`) instead of training it over.
//!
//! `deploy/slurm/lazyavg.sbatch` needs a Slurm cluster; docs/deploy.md says how it was
//! run on a one-node cluster (`deploy/slurm/local-cluster.sh`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value as Yaml;

use crate::harness::*;
use crate::support::*;

const TOKEN: &str = "lazyavg-deploy-test-token";

/// The command line and environment of one container or unit.
#[derive(Debug, Clone, Default)]
struct Role {
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

/// A deployment's coordinator, its worker, and how many workers it runs.
struct Deployment {
    coordinator: Role,
    worker: Role,
    workers: usize,
}

fn repo_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_str(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        other => panic!("not a string: {other:?}"),
    }
}

fn yaml_strings(value: &Yaml) -> Vec<String> {
    value.as_sequence().unwrap_or_else(|| panic!("not a list: {value:?}")).iter().map(yaml_str).collect()
}

fn kubernetes() -> Deployment {
    let text = repo_file("deploy/kubernetes/lazyavg.yaml");
    let documents: Vec<Yaml> =
        text.split("\n---\n").map(|document| serde_yaml_ng::from_str(document).expect("valid YAML")).collect();
    let job = |name: &str| {
        documents
            .iter()
            .find(|d| d["kind"].as_str() == Some("Job") && d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no Job {name}"))
    };
    let role = |job: &Yaml| {
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        let env = container["env"].as_sequence().expect("env").iter().map(|var| {
            let value = match (&var["value"], &var["valueFrom"]) {
                (Yaml::String(value), _) => value.clone(),
                (_, from) if from.get("secretKeyRef").is_some() => TOKEN.to_owned(),
                (_, from) if from.get("fieldRef").is_some() => "pod-name".to_owned(),
                other => panic!("unknown env entry {other:?}"),
            };
            (yaml_str(&var["name"]), value)
        });
        Role { args: yaml_strings(&container["args"]), env: env.collect() }
    };
    let workers = job("lazyavg-workers");
    let parallelism = workers["spec"]["parallelism"].as_u64().expect("parallelism");
    assert_eq!(workers["spec"]["completions"].as_u64(), Some(parallelism), "one completion per worker");
    Deployment { coordinator: role(job("lazyavg-coordinator")), worker: role(workers), workers: parallelism as usize }
}

fn compose() -> Deployment {
    let file: Yaml = serde_yaml_ng::from_str(&repo_file("deploy/compose/compose.yaml")).expect("valid YAML");
    let role = |service: &Yaml| {
        let env = service["environment"].as_mapping().expect("environment").iter().map(|(name, value)| {
            let value = yaml_str(value);
            // `${LAZYAVG_TOKEN:?…}`: compose takes it from the caller's environment.
            let value = if value.starts_with("${LAZYAVG_TOKEN") { TOKEN.to_owned() } else { value };
            (yaml_str(name), value)
        });
        Role { args: yaml_strings(&service["command"]), env: env.collect() }
    };
    let services = &file["services"];
    let workers = services["worker"]["deploy"]["replicas"].as_u64().expect("replicas") as usize;
    Deployment { coordinator: role(&services["coordinator"]), worker: role(&services["worker"]), workers }
}

/// `KEY=VALUE` lines of a unit's `[Service]` or an environment file.
fn assignments(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The unit's `ExecStart` without the binary, and its `Environment=` and
/// `EnvironmentFile=` variables (files read from `deploy/systemd/`).
fn systemd_role(unit: &str, credentials: &Path) -> Role {
    let mut role = Role::default();
    for (key, value) in assignments(&repo_file(&format!("deploy/systemd/{unit}"))) {
        match key.as_str() {
            "ExecStart" => {
                let value = value.replace("${CREDENTIALS_DIRECTORY}", credentials.to_str().expect("UTF-8 path"));
                role.args = value.split_whitespace().skip(1).map(str::to_owned).collect();
            }
            "Environment" => role.env.extend(assignments(&value)),
            "EnvironmentFile" => {
                let name = Path::new(&value).file_name().expect("a file name").to_str().expect("UTF-8");
                role.env.extend(assignments(&repo_file(&format!("deploy/systemd/{name}"))));
            }
            _ => {}
        }
    }
    role
}

fn systemd(dir: &Path) -> Deployment {
    let credentials = dir.join("credentials");
    fs::create_dir_all(&credentials).expect("credentials directory");
    fs::write(credentials.join("token"), TOKEN).expect("token");
    let config = repo_file("deploy/systemd/coordinator.toml");
    let workers = assignments(&config)
        .into_iter()
        .find(|(k, _)| k == "workers")
        .and_then(|(_, v)| v.parse().ok())
        .expect("`workers = N` in coordinator.toml");
    let local_config = dir.join("coordinator.toml");
    fs::write(&local_config, config).expect("config");
    let mut coordinator = systemd_role("lazyavg-coordinator.service", &credentials);
    for arg in &mut coordinator.args {
        if arg == "/etc/lazyavg/coordinator.toml" {
            *arg = local_config.to_str().expect("UTF-8 path").to_owned();
        }
    }
    Deployment { coordinator, worker: systemd_role("lazyavg-worker.service", &credentials), workers }
}

/// What cannot hold here, replaced: see the module's comment.
struct Localise {
    var_lib: PathBuf,
    cache: PathBuf,
}

impl Localise {
    fn value(&self, value: &str) -> String {
        let value = value.replace("0.0.0.0:7070", "127.0.0.1:0").replace("0.0.0.0:9091", "127.0.0.1:0");
        let value = value.replace("/var/lib/lazyavg", self.var_lib.to_str().expect("UTF-8 path"));
        value.replace("/var/cache/lazyavg", self.cache.to_str().expect("UTF-8 path"))
    }

    fn role(&self, role: &Role) -> Role {
        let args = role.args.iter().map(|a| self.value(a));
        let env = role.env.iter().map(|(k, v)| (k.clone(), self.value(v)));
        Role { args: args.collect(), env: env.collect() }
    }

    /// Files of the coordinator's `--config` are localised in place.
    fn config_files(&self, role: &Role) {
        for pair in role.args.windows(2).filter(|w| w[0] == "--config") {
            let text = fs::read_to_string(&pair[1]).expect("config file");
            fs::write(&pair[1], self.value(&text)).expect("config file");
        }
    }
}

fn command(role: &Role) -> std::process::Command {
    let mut cmd = lazyavg();
    cmd.args(&role.args).args(["--log-format", "json"]).env("RUST_LOG", "info");
    for var in ["LAZYAVG_TOKEN", "LAZYAVG_TOKEN_FILE", "LAZYAVG_COORDINATOR", "LAZYAVG_CACHE_DIR", "LAZYAVG_DATA_DIR"] {
        cmd.env_remove(var);
    }
    cmd.envs(&role.env).env("LAZYAVG_DATA_DIR", mnist_dir());
    cmd
}

/// Runs `deployment` for one epoch, then restarts its coordinator; returns
/// the run directory.
fn run(name: &str, deployment: &Deployment, dir: &Path) {
    let localise = Localise { var_lib: dir.join("var-lib"), cache: dir.join("cache") };
    let mut coordinator = localise.role(&deployment.coordinator);
    localise.config_files(&coordinator);
    // The data is the project's copy; the deployment's own --data-dir would be fetched.
    coordinator.args.retain(|a| !a.starts_with("--data-dir"));
    coordinator.args.push("--epochs=1".to_owned());
    let worker = localise.role(&deployment.worker);

    let mut first = Proc::spawn(&format!("{name} coordinator"), command(&coordinator));
    let listening = wait_for_line(&mut first, "listening", START_TIMEOUT);
    let (addr, out) = (listening["addr"].as_str().expect("addr"), listening["out"].as_str().expect("out"));
    assert!(out.starts_with(dir.to_str().expect("UTF-8 path")), "{name}: --out {out} is not localised");
    let mut workers: Vec<Proc> = (1..=deployment.workers)
        .map(|i| {
            let mut cmd = command(&worker);
            cmd.env("LAZYAVG_COORDINATOR", format!("http://{addr}"));
            Proc::spawn(&format!("{name} worker {i}"), cmd)
        })
        .collect();
    let mut procs: Vec<&mut Proc> = std::iter::once(&mut first).chain(workers.iter_mut()).collect();
    expect_success(&mut procs);
    assert_eq!(logged(&first, "worker joined").len(), deployment.workers, "{}", first.dump());
    let epochs = epoch_metrics(Path::new(out));
    assert_eq!(epochs.len(), 1, "{name}: {epochs:?}");

    let mut restarted = Proc::spawn(&format!("{name} coordinator, restarted"), command(&coordinator));
    expect_success(&mut [&mut restarted]);
    assert_eq!(logged(&restarted, "the run had trained every epoch; it ends again without workers").len(), 1);
    assert_eq!(epoch_metrics(Path::new(out)).len(), 1, "{name}: the restart trained again");
}

#[test]
fn the_kubernetes_manifest_runs_as_written() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    run("kubernetes", &kubernetes(), tmp.path());
}

#[test]
fn the_compose_file_runs_as_written() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    run("compose", &compose(), tmp.path());
}

#[test]
fn the_systemd_units_run_as_written() {
    let _heavy = heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let deployment = systemd(tmp.path());
    run("systemd", &deployment, tmp.path());
}

/// The coordinator's probes ask its gRPC health service (grpc.health.v1,
/// served beside the run's service on `--bind`'s port, see
/// tests/integration/metrics.rs), and its metrics port is `--metrics-bind`'s.
#[test]
fn the_kubernetes_probes_ask_the_coordinators_grpc_health_port() {
    let text = repo_file("deploy/kubernetes/lazyavg.yaml");
    let coordinator = text
        .split("\n---\n")
        .map(|document| serde_yaml_ng::from_str::<Yaml>(document).expect("valid YAML"))
        .find(|d| d["kind"].as_str() == Some("Job") && d["metadata"]["name"].as_str() == Some("lazyavg-coordinator"))
        .expect("the coordinator's Job");
    let container = &coordinator["spec"]["template"]["spec"]["containers"][0];
    let port = |name: &str| {
        let ports = container["ports"].as_sequence().expect("ports");
        let port = ports.iter().find(|p| p["name"].as_str() == Some(name)).unwrap_or_else(|| panic!("no port {name}"));
        port["containerPort"].as_u64().expect("containerPort")
    };
    let args = yaml_strings(&container["args"]);
    let flag_port = |flag: &str| {
        let arg = args.iter().find_map(|a| a.strip_prefix(flag)).unwrap_or_else(|| panic!("no {flag} in {args:?}"));
        arg.rsplit(':').next().and_then(|p| p.parse::<u64>().ok()).unwrap_or_else(|| panic!("{flag}{arg}"))
    };
    assert_eq!(port("grpc"), flag_port("--bind="));
    assert_eq!(port("metrics"), flag_port("--metrics-bind="));
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let grpc = &container[probe]["grpc"];
        assert_eq!(
            grpc["port"].as_u64(),
            Some(port("grpc")),
            "{probe} asks the gRPC health service: {:?}",
            container[probe]
        );
    }
}
