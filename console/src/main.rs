//! `mcproxyctl`: the command line for a running mc-proxy daemon. Parses flags, connects to the
//! admin socket with the typed client from `mc_proxy_shared`, runs one subcommand and exits.
//! `ctl` holds the subcommands; output is a table for people or JSON (`--json`) for scripts.

mod ctl;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Control a running mc-proxy daemon over its admin socket: routes, firewall rules and live
/// events.
///
/// Exit status: 0 on success, 1 when the daemon refused the request (the reason is printed),
/// 2 for a usage error, 3 when no daemon answers on the socket.
#[derive(Debug, Parser)]
#[command(name = "mcproxyctl", version)]
struct Cli {
    /// The daemon's admin socket (the `[admin] socket` of its config).
    #[arg(
        long,
        global = true,
        env = "MCPROXY_SOCKET",
        default_value = "srv/mc-proxy.sock",
        value_name = "PATH"
    )]
    socket: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Daemon version, uptime, listeners and connection totals.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List, add, change or remove routes.
    #[command(subcommand)]
    Routes(RoutesCommand),
    /// List, add or remove firewall rules (blocked addresses and networks).
    #[command(subcommand)]
    Firewall(FirewallCommand),
    /// Follow the daemon's live events, one line each, until interrupted.
    Events {
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Also print the per-second stats snapshots.
        #[arg(long)]
        stats: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RoutesCommand {
    /// Every route with its fields and counters.
    List {
        /// Only this listener's routes (its configured address, e.g. 127.0.0.1:8443).
        #[arg(long, value_name = "ADDR")]
        listener: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a route. Without --mode it is an L4 (passthrough) route.
    Add(RouteArgs),
    /// Change the given fields of a route; the others stay as they are.
    Update(UpdateArgs),
    /// Remove a route. Connections already open on it keep going.
    Remove {
        /// The listener's configured address.
        #[arg(long, value_name = "ADDR")]
        listener: String,
        /// The route's hostname.
        #[arg(long)]
        hostname: String,
    },
}

#[derive(Debug, Args)]
struct RouteArgs {
    /// The listener's configured address, e.g. 127.0.0.1:8443.
    #[arg(long, value_name = "ADDR")]
    listener: String,
    /// SNI hostname: app.example.com or *.example.com.
    #[arg(long)]
    hostname: String,
    /// Where to send connections: host:port.
    #[arg(long)]
    backend: String,
    /// l4 (TLS passthrough, default) or l7 (TLS termination and HTTP proxy).
    #[arg(long, value_name = "l4|l7")]
    mode: Option<String>,
    /// L7: PEM certificate chain presented to clients.
    #[arg(long, value_name = "PATH")]
    tls_cert: Option<String>,
    /// L7: PEM private key for --tls-cert.
    #[arg(long, value_name = "PATH")]
    tls_key: Option<String>,
    /// L7: speak HTTP/2 over TLS to the backend.
    #[arg(long)]
    backend_tls: bool,
    /// Send a PROXY protocol v2 header with the client address to the backend.
    #[arg(long)]
    send_proxy_protocol: bool,
    /// Print the stored route as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// The listener's configured address.
    #[arg(long, value_name = "ADDR")]
    listener: String,
    /// The route to change.
    #[arg(long)]
    hostname: String,
    /// Rename the route.
    #[arg(long, value_name = "HOSTNAME")]
    new_hostname: Option<String>,
    /// New backend host:port.
    #[arg(long)]
    backend: Option<String>,
    /// New mode: l4 or l7.
    #[arg(long, value_name = "l4|l7")]
    mode: Option<String>,
    /// New certificate path.
    #[arg(long, value_name = "PATH")]
    tls_cert: Option<String>,
    /// New key path.
    #[arg(long, value_name = "PATH")]
    tls_key: Option<String>,
    /// HTTP/2 over TLS to the backend: --backend-tls, --backend-tls=false.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    backend_tls: Option<bool>,
    /// PROXY v2 to the backend: --send-proxy-protocol, --send-proxy-protocol=false.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    send_proxy_protocol: Option<bool>,
    /// Print the stored route as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum FirewallCommand {
    /// Every rule.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Block an address or a network.
    Add(RuleArgs),
    /// Unblock an address or a network.
    Remove(RuleArgs),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct RuleArgs {
    /// A single address, IPv4 or IPv6.
    #[arg(long)]
    ip: Option<String>,
    /// A network, e.g. 198.51.100.0/24.
    #[arg(long)]
    cidr: Option<String>,
}

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
    match runtime.block_on(ctl::run(&cli.socket, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcproxyctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
