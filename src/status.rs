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
        let reply = client.status(pb::StatusRequest {}).await.context("the coordinator refused Status")?;
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
            w.name,
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
