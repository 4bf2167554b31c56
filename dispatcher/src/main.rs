//! `dispatcher`: the command line of the LAVA-style VM-group dispatcher.
//!
//! Offline checks a test writer or lab admin runs before submitting or deploying
//! (`validate`, `devices check`); `run`: one job here and now, without a daemon;
//! `serve`: the daemon; `submit`, `status`, `wait`, `logs`, `cancel`, `results`,
//! `devices list`: its HTTP API from the command line; `token create`; `completions`
//! and `manpage`, generated from the same definitions.
//! Exit codes are part of the interface: 0 fine, 1 problems found (an invalid job, a
//! failed test case), 2 input unreadable or a command line asking for what cannot be,
//! 3 a job that ran incomplete or was canceled, 4 the daemon could not be reached or
//! refused. Where a job is followed or shown ended, the status is its result.

mod cli;
mod exit;
mod follow;
mod out;
mod remote;
mod run;
mod serve;
mod summary;
mod tables;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DISPATCHER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal, never escape codes in the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = cli::Cli::parse();
    ExitCode::from(cli::run(args))
}
