//! `mcproxyctl`: the command line and terminal console for a running mc-proxy daemon. Parses
//! flags and hands over to `ctl` (one admin API call per subcommand) or `tui` (the console).

use std::process::ExitCode;

use clap::Parser;
use mcproxyctl::cli::{Cli, Command};
use mcproxyctl::{ctl, tui};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcproxyctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Console { read_only } = cli.command {
        return match runtime.block_on(tui::run(cli.socket, read_only)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mcproxyctl: console: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(ctl::run(&cli.socket, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcproxyctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
