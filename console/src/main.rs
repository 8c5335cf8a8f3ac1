//! `mcproxyctl`: the command line and terminal console for a running mc-proxy daemon. Parses
//! flags and hands over to `ctl` (one admin API call per subcommand) or `tui` (the console).

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use mcproxyctl::cli::{Cli, Command};
use mcproxyctl::ctl::{self, CtlError, warn};
use mcproxyctl::tui;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "mcproxyctl", &mut script);
        return match ctl::emit(&String::from_utf8_lossy(&script)) {
            Ok(()) | Err(CtlError::ClosedPipe) => ExitCode::SUCCESS,
            Err(e) => {
                warn(&format!("mcproxyctl: {e}"));
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn(&format!("mcproxyctl: cannot start: {e}"));
            return ExitCode::FAILURE;
        }
    };
    if let Command::Console { read_only } = cli.command {
        return match runtime.block_on(tui::run(cli.socket, read_only)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                warn(&format!("mcproxyctl: console: {e}"));
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(ctl::run(&cli.socket, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away early (`| head`) has what it wanted: end quietly.
        Err(CtlError::ClosedPipe) => ExitCode::SUCCESS,
        Err(e) => {
            warn(&format!("mcproxyctl: {e}"));
            ExitCode::from(e.exit_code())
        }
    }
}
