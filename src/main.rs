//! The `lazyavg` binary: parses flags, sets up logging, runs one subcommand,
//! and turns an error into `lazyavg: <message chain>` and a non-zero exit.

mod bench;
mod cli;
mod cluster;
mod merge;
mod single;
mod status;

use std::io::Write;
use std::process::ExitCode;

use lazyavg_common::{fetch, telemetry};

use crate::cli::{BenchCommand, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    telemetry::init(cli.log_format, || telemetry::StderrAboveBars);
    match run(cli.command, cli.log_format) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One write, so the line stays whole on a stderr shared with
            // other processes (`--spawn-workers`); `eprintln!` writes pieces.
            let line = format!("lazyavg: {err:#}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            cluster::Exit::of(&err).into()
        }
    }
}

fn run(command: Command, log_format: telemetry::LogFormat) -> anyhow::Result<()> {
    match command {
        Command::Coordinator(args) => {
            cluster::one_malloc_arena();
            cluster::run_coordinator(cluster::coordinator(*args, log_format))
        }
        Command::Worker(args) => cluster::run_single_threaded(cluster::worker(args)),
        Command::Status(args) => cluster::run_single_threaded(status::run(args)),
        Command::FetchData(args) => {
            let mut options = fetch::FetchOptions::defaults(args.data.data_dir);
            if !args.mirrors.is_empty() {
                options.mirrors = args.mirrors;
            }
            options.npm = !args.no_npm;
            fetch::fetch(&options)?;
            Ok(())
        }
        Command::Train(args) => single::run(&args),
        Command::Merge(args) => merge::run(&args),
        Command::Bench(BenchCommand::Train(args)) => bench::run(&args),
    }
}
