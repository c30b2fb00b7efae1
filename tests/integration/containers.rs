//! deploy/'s image and compose file in a real container engine (podman): the
//! image is built from `deploy/Dockerfile` (its `prebuilt` target, given
//! this test's binary, on the local Debian base that
//! `deploy/compose/local-engine.sh` makes), and `deploy/compose/compose.yaml`
//! is brought up with podman-compose under a project name of its own. Only
//! what cannot hold on a test machine is replaced, in a copy of the file: the
//! image's name (this test's tag; the `build` section goes, the image being
//! built already), the host port (one the OS picks) and the run's length (a
//! few epochs, logged as JSON). The data volume is given the MNIST copy
//! beside the project, as `fetch-data` would download it. The coordinator's
//! container is restarted mid-run and must continue the run from its
//! checkpoint, with the workers rejoining it; every container must exit 0,
//! and the stack is brought down even when the test fails.
//!
//! Where no engine can run (podman or podman-compose missing, not root, no
//! base image) the test says why and passes, unless
//! `LAZYAVG_REQUIRE_CONTAINERS=1` (set by `.ci/run`) makes that a failure.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_yaml_ng::Value as Yaml;

use crate::harness::*;
use crate::support::*;

const TOKEN: &str = "lazyavg-container-test-token";
/// Epochs of the run: the restart comes after the first, with several left.
const EPOCHS: u64 = 5;
/// The Dockerfile's runtime stage, kept between runs as a build cache.
const RUNTIME_IMAGE: &str = "localhost/lazyavg-test-runtime:latest";

/// The base image `local-engine.sh` builds, as `LAZYAVG_BASE_IMAGE` there.
fn base_image() -> String {
    std::env::var("LAZYAVG_BASE_IMAGE").unwrap_or_else(|_| "localhost/lazyavg-base:bookworm".to_owned())
}

/// Runs `program args` to completion; its stdout on success, else why not.
fn try_run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program).args(args).env("LAZYAVG_TOKEN", TOKEN).output();
    let output = output.map_err(|e| format!("{program} cannot run: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        Err(format!("`{program} {}` failed: {}\n{out}{err}", args.join(" "), output.status))
    }
}

fn run(program: &str, args: &[&str]) -> String {
    try_run(program, args).unwrap_or_else(|why| panic!("{why}"))
}

/// Why no engine can run here, if it cannot.
fn no_engine() -> Option<String> {
    let base = base_image();
    let checks: [(&str, &[&str]); 3] =
        [("podman", &["info"]), ("podman-compose", &["version"]), ("podman", &["image", "exists", &base])];
    let failed = checks.iter().find_map(|(program, args)| try_run(program, args).err())?;
    Some(format!("{failed}\n(deploy/compose/local-engine.sh installs podman and builds {base}, as root)"))
}

/// A compose project: its containers, volumes, network and image are removed
/// when it is dropped, whatever the test did.
struct Stack {
    project: String,
    file: PathBuf,
    image: String,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> String {
        let file = self.file.to_str().expect("UTF-8 path");
        run("podman-compose", &[&["-p", &self.project, "-f", file], args].concat())
    }

    fn container(&self, service: &str, replica: usize) -> String {
        format!("{}_{service}_{replica}", self.project)
    }

    fn volume(&self, name: &str) -> String {
        format!("{}_{name}", self.project)
    }

    /// The volume's directory on this machine.
    fn volume_dir(&self, name: &str) -> PathBuf {
        let volume = self.volume(name);
        PathBuf::from(run("podman", &["volume", "inspect", "--format", "{{.Mountpoint}}", &volume]).trim())
    }

    /// `podman logs --follow` of a container, as a process whose stderr lines
    /// are the container's; it ends when the container stops.
    fn follow(&self, service: &str) -> Proc {
        let container = self.container(service, 1);
        let mut cmd = Command::new("podman");
        cmd.args(["logs", "--follow", &container]);
        Proc::spawn(&format!("{container} (logs)"), cmd)
    }

    /// Waits until the container has exited; its exit code. Fails at once
    /// if its restart policy restarted it (only a failure does that; a
    /// `podman restart` is not counted). Each look starts podman: for
    /// containers about to stop, not to wait out a run.
    fn exit_code(&self, container: &str) -> i32 {
        let format = "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}";
        let code = wait_until(&format!("{container} to exit"), RUN_TIMEOUT, || {
            let state = run("podman", &["inspect", "--format", format, container]);
            let [status, code, restarts] = state.split_whitespace().collect::<Vec<_>>()[..] else {
                panic!("podman inspect of {container}: {state:?}");
            };
            assert_eq!(restarts, "0", "{container} failed and was restarted\n{}", self.logs(container));
            (status == "exited").then(|| code.to_owned())
        });
        code.parse().unwrap_or_else(|e| panic!("exit code {code:?} of {container}: {e}"))
    }

    fn logs(&self, container: &str) -> String {
        let output = Command::new("podman").args(["logs", container]).output().expect("podman logs");
        format!("--- {container} ---\n{}", String::from_utf8_lossy(&output.stderr))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Best effort, each step whatever the one before did. `--volumes`
        // takes the project's volumes by label, the data volume made here too.
        let file = self.file.to_str().expect("UTF-8 path");
        let _ = try_run("podman-compose", &["-p", &self.project, "-f", file, "down", "--volumes", "-t", "5"]);
        let _ = try_run("podman", &["network", "rm", "--force", &format!("{}_default", self.project)]);
        let _ = try_run("podman", &["rmi", "--force", &self.image]);
    }
}

/// The host path under `volume_dir` of `path` in `service`'s container, and
/// the name of the compose volume mounted above it.
fn in_volume(compose: &Yaml, service: &str, path: &str) -> (String, PathBuf) {
    let volumes = compose["services"][service]["volumes"].as_sequence().expect("volumes");
    volumes
        .iter()
        .filter_map(|v| v.as_str()?.split_once(':'))
        .find_map(|(name, target)| Some((name.to_owned(), PathBuf::from(path.strip_prefix(target)?.trim_matches('/')))))
        .unwrap_or_else(|| panic!("{path} is in no volume of {service}"))
}

fn arg_value<'a>(args: &'a [Yaml], flag: &str) -> &'a str {
    let prefix = format!("{flag}=");
    args.iter().find_map(|a| a.as_str()?.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {flag}= in {args:?}"))
}

/// compose.yaml with the replacements of the module's comment.
fn localised_compose(image: &str, port: &str) -> Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose/compose.yaml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut compose: Yaml = serde_yaml_ng::from_str(&text).expect("valid YAML");
    let services = compose["services"].as_mapping_mut().expect("services");
    for (_, service) in services.iter_mut() {
        let service = service.as_mapping_mut().expect("a service");
        service.remove("build");
        service.insert("image".into(), image.into());
    }
    let coordinator = &mut compose["services"]["coordinator"];
    let ports = coordinator["ports"].as_sequence_mut().expect("ports");
    assert_eq!(ports.len(), 1, "{ports:?}");
    let (_, container_port) = ports[0].as_str().expect("HOST:CONTAINER").split_once(':').expect("HOST:CONTAINER");
    ports[0] = format!("{port}:{container_port}").into();
    let command = coordinator["command"].as_sequence_mut().expect("command");
    command.extend([format!("--epochs={EPOCHS}").into(), "--log-format=json".into()]);
    compose
}

/// Builds the image, brings the stack up, restarts the coordinator after
/// epoch 1 and checks that the run completes with every epoch trained once.
#[test]
fn the_compose_file_runs_in_podman_and_survives_a_coordinator_restart() {
    if let Some(why) = no_engine() {
        assert!(std::env::var_os("LAZYAVG_REQUIRE_CONTAINERS").is_none(), "LAZYAVG_REQUIRE_CONTAINERS: {why}");
        eprintln!("skipped: no container engine can run here: {why}");
        return;
    }
    let _heavy = heavy();
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = format!("lazyavg-test-{}-{}", std::process::id(), clock_millis(999_999));
    let stack = Stack {
        project: project.clone(),
        file: tmp.path().join("compose.yaml"),
        image: format!("localhost/lazyavg-test:{project}"),
    };

    let context = tmp.path().join("context");
    fs::create_dir(&context).expect("build context");
    fs::copy(env!("CARGO_BIN_EXE_lazyavg"), context.join("lazyavg")).expect("copying the binary");
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/Dockerfile");
    let base = format!("BASE={}", base_image());
    let build = |target: &str, tag: &str| {
        let (dockerfile, context) = (dockerfile.to_str().expect("UTF-8"), context.to_str().expect("UTF-8"));
        run(
            "podman",
            &["build", "--quiet", "--target", target, "--build-arg", &base, "-t", tag, "-f", dockerfile, context],
        );
    };
    // The runtime stage keeps a tag of its own, so that removing this test's
    // image leaves its layers (apt's packages, minutes to install) to the next run.
    build("runtime", RUNTIME_IMAGE);
    build("prebuilt", &stack.image);
    let mut phases = vec![("image built", started.elapsed())];

    let port = reserve_port().rsplit_once(':').expect("ADDR:PORT").1.to_owned();
    let compose = localised_compose(&stack.image, &port);
    fs::write(&stack.file, serde_yaml_ng::to_string(&compose).expect("YAML")).expect("compose file");
    // The data, where the coordinator's --data-dir looks in its volume.
    let command = compose["services"]["coordinator"]["command"].as_sequence().expect("command");
    let (data_volume, data_path) = in_volume(&compose, "coordinator", arg_value(command, "--data-dir"));
    let label = format!("io.podman.compose.project={project}");
    run("podman", &["volume", "create", "--label", &label, &stack.volume(&data_volume)]);
    let data_dir = stack.volume_dir(&data_volume).join(data_path);
    fs::create_dir_all(&data_dir).expect("data directory");
    for file in fs::read_dir(mnist_dir()).expect("MNIST directory") {
        let file = file.expect("MNIST file").path();
        fs::copy(&file, data_dir.join(file.file_name().expect("a name"))).expect("copying MNIST");
    }

    stack.compose(&["up", "-d"]);
    let mut first = stack.follow("coordinator");
    let listening = wait_for_line(&mut first, "listening", START_TIMEOUT);
    phases.push(("coordinator listening", started.elapsed()));
    std::net::TcpStream::connect(format!("127.0.0.1:{port}")).expect("the coordinator's port, published on this host");
    wait_for_match(&mut first, "checkpoint written", RUN_TIMEOUT, |l| l["epoch"] == 1);
    let coordinator = stack.container("coordinator", 1);
    phases.push(("epoch 1 done", started.elapsed()));
    run("podman", &["restart", &coordinator]);
    phases.push(("coordinator restarted", started.elapsed()));
    first.wait(START_TIMEOUT);
    // SIGTERM (compose's stop_signal) had it write the epoch in progress.
    let checkpoint = logged(&first, "checkpoint written").pop().expect("a checkpoint");
    assert!(u64_field(&checkpoint, "epoch") < EPOCHS, "restarted after the run: {checkpoint}\n{}", first.dump());

    // Its log holds both runs of the container.
    let mut both = stack.follow("coordinator");
    // Following the log ends when the container stops: a cheap wait.
    both.wait(RUN_TIMEOUT);
    let code = stack.exit_code(&coordinator);
    phases.push(("coordinator exited", started.elapsed()));
    let replicas = compose["services"]["worker"]["deploy"]["replicas"].as_u64().expect("replicas") as usize;
    let workers: Vec<String> = (1..=replicas).map(|i| stack.container("worker", i)).collect();
    let codes: Vec<i32> = workers.iter().map(|w| stack.exit_code(w)).collect();
    let dumps = || format!("{}\n{}", both.dump(), workers.iter().map(|w| stack.logs(w)).collect::<String>());
    assert_eq!((code, codes), (0, vec![0; replicas]), "exit codes of the coordinator and the workers\n{}", dumps());
    assert_eq!(logged(&both, "listening").len(), 2, "{}", dumps());
    let resuming = logged(&both, "resuming from checkpoint");
    assert_eq!(resuming.len(), 1, "{}", dumps());
    assert_eq!(resuming[0]["digest"], checkpoint["digest"], "{} vs {checkpoint}", resuming[0]);
    let rejoined =
        both.json_lines().into_iter().skip_while(|l| l != &resuming[0]).filter(|l| l["message"] == "worker joined");
    assert_eq!(rejoined.count(), replicas, "every worker rejoins the restarted coordinator\n{}", dumps());
    let complete = logged(&both, "training complete");
    assert_eq!(complete.len(), 1, "{}", dumps());
    assert_eq!(u64_field(&complete[0], "epochs"), EPOCHS, "{}", complete[0]);

    // The run's files, in the runs volume.
    let (runs_volume, out_path) = in_volume(&compose, "coordinator", listening["out"].as_str().expect("out"));
    let out = stack.volume_dir(&runs_volume).join(out_path);
    let epochs: Vec<u64> = epoch_metrics(&out).iter().map(|e| u64_field(e, "epoch")).collect();
    assert_eq!(epochs, (1..=EPOCHS).collect::<Vec<_>>(), "every epoch once, across the restart");
    assert!(out.join("model.safetensors").is_file(), "no model in {}", out.display());
    let phases: Vec<String> = phases.iter().map(|(what, at)| format!("{what} at {:.1} s", at.as_secs_f64())).collect();
    eprintln!("containers: {}", phases.join(", "));
}
