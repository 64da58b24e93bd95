//! The `batchd` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = batchd::cli::Cli::parse();
    batchd::logging::init(&cli.log);
    match batchd::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("batchd: {error:#}");
            error.exit_code()
        }
    }
}
