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
    if std::env::args_os().nth(1).as_deref() == Some(batchd::trial::SUPERVISOR_SUBCOMMAND.as_ref())
    {
        return ExitCode::from(batchd::trial::supervisor_main() as u8);
    }
    // Before anything else (a trial worker never serves): a SIGHUP
    // (systemd's reload) that arrives while the daemon starts must wait
    // for its handler, not kill the process by the default action. `cli::run` unblocks it again: `serve` once its
    // handler is installed (the pending signal is then a reload), every
    // other command at once (a terminal's hang-up still ends them).
    cli::set_sighup_blocked(true);
    let cli = cli::Cli::parse();
    batchd::logging::init(&cli.log, cli::log_format(&cli));
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("batchd: {error:#}");
            error.exit_code()
        }
    }
}
