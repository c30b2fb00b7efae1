//! `lazyavg status`: one screen of where a run stands — epoch, round,
//! accuracy so far, and every worker with its state — from the
//! coordinator's read-only Status call, once or every `--watch` interval.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use lazyavg_common::status::RunStatus;
use lazyavg_proto::pb;
use lazyavg_worker::ConnectArgs;

use crate::cli::StatusArgs;

/// Clears the terminal and puts the cursor top left (ANSI).
const CLEAR: &str = "\x1b[2J\x1b[H";

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let connection = args.connect.resolve()?;
    let mut client = lazyavg_worker::connect(&connection).await?;
    loop {
        let reply = client.status(pb::StatusRequest {}).await.map_err(|status| refused(&args.connect, status))?;
        let status = RunStatus::try_from(reply.into_inner())?;
        let screen = render(&args.connect, &status);
        let mut out = std::io::stdout().lock();
        match args.watch {
            Some(_) => write!(out, "{CLEAR}{screen}"),
            None => write!(out, "{screen}"),
        }
        .and_then(|()| out.flush())
        .context("writing to standard output")?;
        drop(out);
        let Some(interval) = args.watch else { return Ok(()) };
        tokio::time::sleep(interval).await;
    }
}

/// What a failed Status call says: the cause in a sentence, not tonic's dump.
fn refused(connect: &ConnectArgs, status: tonic::Status) -> anyhow::Error {
    let at = &connect.coordinator;
    match status.code() {
        tonic::Code::Unimplemented => {
            anyhow::anyhow!("{at} is not a lazyavg coordinator of this version (it has no Status call)")
        }
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            anyhow::anyhow!("{at} refused Status: {}", status.message())
        }
        tonic::Code::Unavailable => anyhow::anyhow!("cannot reach the coordinator at {at}: {}", status.message()),
        _ => anyhow::anyhow!("{at} did not answer Status as a lazyavg coordinator: {}", status.message()),
    }
}

/// A worker's name as the screen shows it: control characters (a name is the
/// worker's to choose) replaced, at most `width` characters.
fn printable(name: &str, width: usize) -> String {
    let clean: String = name.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if clean.chars().count() <= width {
        return clean;
    }
    let mut cut: String = clean.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// The screen for `status`.
fn render(connect: &ConnectArgs, status: &RunStatus) -> String {
    let accuracy = status.accuracy.map_or_else(|| "not evaluated yet".to_owned(), |a| format!("{:.2}%", a * 100.0));
    let mut screen = format!(
        "{}: epoch {}, round {}, {} rounds completed, test accuracy {accuracy}\n\n",
        connect.coordinator, status.epoch, status.round, status.rounds_completed
    );
    screen.push_str(&format!(
        "{:<20} {:<22} {:<10} {:>10} {:>18} {:>11}\n",
        "WORKER", "ADDRESS", "STATE", "SAMPLES", "LAST CONTRIBUTION", "ROUND TRIP"
    ));
    for w in &status.workers {
        let last = w.last_contribution.map_or_else(|| "never".to_owned(), |d| format!("{:.1} s ago", d.as_secs_f64()));
        screen.push_str(&format!(
            "{:<20} {:<22} {:<10} {:>10} {:>18} {:>11}\n",
            printable(&w.name, 20),
            if w.address.is_empty() { "?" } else { &w.address },
            w.state.name(),
            w.samples,
            last,
            w.round_trip.map_or_else(|| "-".to_owned(), milliseconds),
        ));
    }
    screen
}

fn milliseconds(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
