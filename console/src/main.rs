//! `mcproxyctl`: the command line for a running mc-proxy daemon.
//!
//! The admin API it talks to arrives with the admin issue; until then this binary only knows
//! its flags, so scripts and packaging can already depend on its name and `--version`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Control a running mc-proxy daemon over its admin socket: routes, firewall rules, live
/// events and the terminal console.
#[derive(Debug, Parser)]
#[command(name = "mcproxyctl", version)]
struct Cli {
    /// The daemon's admin socket.
    #[arg(
        long,
        global = true,
        env = "MCPROXY_SOCKET",
        default_value = "srv/mc-proxy.sock",
        value_name = "PATH"
    )]
    socket: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    eprintln!(
        "mcproxyctl: no subcommands yet: the admin API ({}) is not implemented in this version",
        cli.socket.display()
    );
    ExitCode::from(2)
}
