//! Helpers shared by the integration tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long building `lazyavg-bench` may take (the first build compiles it).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The `lazyavg` binary built for these tests.
pub fn lazyavg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lazyavg"))
}

/// The `lazyavg-bench` binary, built now by cargo in the profile and target
/// directory of this test's `lazyavg` (a no-op when it is up to date):
/// `CARGO_BIN_EXE_<name>` exists only for the binaries of the package under
/// test, and the bench crate must not be a dependency of the product.
/// Built once per test binary; tests that call it meanwhile wait.
pub fn lazyavg_bench() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_lazyavg_bench).clone()
}

fn build_lazyavg_bench() -> PathBuf {
    let lazyavg = Path::new(env!("CARGO_BIN_EXE_lazyavg"));
    let profile_dir = lazyavg.parent().expect("the binary is in a profile directory");
    let target_dir = profile_dir.parent().expect("the profile directory is in the target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => panic!("unexpected profile directory {}", profile_dir.display()),
    };
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "--package", "lazyavg-bench", "--bin", "lazyavg-bench", "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // Without what cargo set for this test: build scripts' `rerun-if-env-changed`
    // (ring's watches CARGO_PKG_NAME) would see new values and rebuild half the tree.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_for_tests = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_", "CARGO_CRATE_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*name);
        if set_for_tests {
            build.env_remove(&*name);
        }
    }
    let mut proc = Proc::spawn("cargo build lazyavg-bench", build);
    assert_eq!(proc.wait(BUILD_TIMEOUT), 0, "{}", proc.dump());
    profile_dir.join(format!("lazyavg-bench{}", std::env::consts::EXE_SUFFIX))
}

/// The MNIST copy beside the project (`../shared/data/mnist`).
pub fn mnist_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
    assert!(dir.is_dir(), "MNIST is expected at {}", dir.display());
    dir
}

/// Polls `predicate` every 20 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut predicate: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = predicate() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A child process whose standard error is collected line by line; it is
/// killed (by pid) and reaped when dropped, so a failing test leaves nothing behind.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `cmd` with stderr captured (stdout is discarded).
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&lines);
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Proc { name: name.to_owned(), child, lines, reader: Some(reader) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line written to stderr so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The stderr lines that are JSON objects (with `--log-format json`).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.lines().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The exit code if the process has exited (-1 for a signal), without
    /// waiting; its last lines may still be in the pipe until [`Proc::wait`].
    pub fn try_exit_code(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().map(|status| status.code().unwrap_or(-1))
    }

    /// Waits for the process to exit and its output to be read; returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let name = self.name.clone();
        let status = wait_until(&format!("{name} to exit"), timeout, || self.child.try_wait().ok().flatten());
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status.code().unwrap_or(-1)
    }

    /// Sends the signal `name` (`KILL`, `STOP`, `CONT`, `INT`, `TERM`) to this
    /// process by its pid, with kill(1). It must not have been reaped yet (a
    /// process that exited but was not waited for keeps its pid, so the
    /// signal cannot reach another process).
    pub fn signal(&mut self, name: &str) {
        assert!(self.try_exit_code().is_none(), "{} exited before SIG{name}\n{}", self.name, self.dump());
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("running kill -s {name}: {e}"));
        assert!(status.success(), "kill -s {name} {} failed: {status}", self.pid());
    }

    /// Output so far, for assertion messages.
    pub fn dump(&self) -> String {
        format!("--- {} ---\n{}", self.name, self.lines().join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
