//! The `lazyavg-bench` binary: benchmarks that run the `lazyavg` binary as a
//! subprocess, kept out of the product so that it carries no plotting or
//! sweep code. Errors print as `lazyavg-bench: <message chain>` with a
//! non-zero exit.
//!
//! - `cli`: the flags.
//! - `scaling`: the scaling sweep: runs, table, JSON report.
//! - `chart`: the sweep's SVG chart (plotters).
//! - `hostile`: a client that joins a run and attacks every round.
//! - `combine`: the coordinator's own work in a round, in process.

mod chart;
mod cli;
mod combine;
mod hostile;
mod scaling;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use lazyavg_common::telemetry;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Plain lines: the sweep's own few log lines are read by people; each
    // run's coordinator logs JSON into its own directory.
    telemetry::init(telemetry::LogFormat::Plain, std::io::stderr);
    let result = match cli.command {
        Command::Scaling(args) => scaling::run(&args),
        Command::Hostile(args) => hostile::run(&args),
        Command::Combine(args) => combine::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One write, so the line stays whole on a shared stderr.
            let line = format!("lazyavg-bench: {err:#}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            ExitCode::FAILURE
        }
    }
}
