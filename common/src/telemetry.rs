//! Logging set-up, once per process: plain lines for people, JSON for machines,
//! filtered by `RUST_LOG` (default `info`).

use std::io::{self, Write};
use std::str::FromStr;
use std::sync::OnceLock;

use indicatif::MultiProgress;

use tracing_subscriber::EnvFilter;

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (with colour on a terminal).
    #[default]
    Plain,
    /// One JSON object per line, fields flattened.
    Json,
}

impl LogFormat {
    /// The flag value that selects this format.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Plain => "plain",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" => Ok(LogFormat::Plain),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (expected plain or json)")),
        }
    }
}

/// Installs the global subscriber writing through `writer`. Call once at start-up.
pub fn init<W>(format: LogFormat, writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(false);
    match format {
        LogFormat::Plain => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// The process's progress bars. Log lines written through [`StderrAboveBars`]
/// appear above them instead of tearing them; when standard error is not a
/// terminal the bars are hidden and lines are plain.
pub fn progress_bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// Standard error, written with the progress bars suspended. Pass
/// `|| StderrAboveBars` to [`init`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrAboveBars;

impl Write for StderrAboveBars {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        progress_bars().suspend(|| io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// An error with its causes, `outer: inner: innermost` (what `{:#}` shows
/// for the binary's final error), for log lines. Error messages name their
/// cause only as a source, never in their own text, so nothing repeats.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
