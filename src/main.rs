//! The `batchd` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    // A trial worker skips argument parsing and logging: its stdout is a
    // protocol, and its start-up time is part of every trial's cost.
    if std::env::args_os().nth(1).as_deref() == Some(batchd::trial::WORKER_SUBCOMMAND.as_ref()) {
        return ExitCode::from(batchd::trial::worker::main() as u8);
    }
    let cli = cli::Cli::parse();
    batchd::logging::init(&cli.log);
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("batchd: {error:#}");
            error.exit_code()
        }
    }
}
