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
    let contexts = mcproxyctl::contexts::file_path();
    if let Command::Config(command) = cli.command {
        return match ctl::config::run(&contexts, cli.socket, command) {
            Ok(()) | Err(CtlError::ClosedPipe) => ExitCode::SUCCESS,
            Err(e) => {
                warn(&format!("mcproxyctl: {e}"));
                ExitCode::from(e.exit_code())
            }
        };
    }
    let target = match mcproxyctl::contexts::Target::resolve(cli.socket, cli.context, &contexts) {
        Ok(target) => target,
        Err(e) => {
            warn(&format!("mcproxyctl: {e}"));
            return ExitCode::from(2);
        }
    };
    if let Command::Console { read_only } = cli.command {
        // The fleet view's nodes; a file that does not load leaves only the console's own node
        // (every other command reports the file's error).
        let fleet = mcproxyctl::contexts::Contexts::load(&contexts)
            .map(|c| c.contexts)
            .unwrap_or_default();
        let console = tui::run(target.socket, read_only, target.context, fleet);
        return match runtime.block_on(console) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                warn(&format!("mcproxyctl: console: {e}"));
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(ctl::run(&target.socket, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away early (`| head`) has what it wanted: end quietly.
        Err(CtlError::ClosedPipe) => ExitCode::SUCCESS,
        Err(e) => {
            warn(&format!("mcproxyctl: {e}"));
            ExitCode::from(e.exit_code())
        }
    }
}
