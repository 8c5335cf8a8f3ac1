//! The command line: every subcommand and flag, with the texts `--help` prints.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Control a running mc-proxy daemon over its admin socket: routes, firewall rules and live
/// events.
///
/// Exit status: 0 on success, 1 when the daemon refused the request (the reason is printed),
/// 2 for a usage error, 3 when no daemon answers on the socket.
#[derive(Debug, Parser)]
#[command(name = "mcproxyctl", version)]
pub struct Cli {
    /// The daemon's admin socket (the `[admin] socket` of its config).
    #[arg(
        long,
        global = true,
        env = "MCPROXY_SOCKET",
        default_value = "srv/mc-proxy.sock",
        value_name = "PATH"
    )]
    pub socket: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// The terminal console: listeners, routes with live traffic, events; add, edit and
    /// delete routes and firewall rules. Press ? inside for the keys.
    Console {
        /// Watch only: hide and refuse every key that would change the daemon.
        #[arg(long)]
        read_only: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoutesCommand {
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
pub struct RouteArgs {
    /// The listener's configured address, e.g. 127.0.0.1:8443.
    #[arg(long, value_name = "ADDR")]
    pub listener: String,
    /// SNI hostname: app.example.com or *.example.com.
    #[arg(long)]
    pub hostname: String,
    /// Where to send connections: host:port.
    #[arg(long)]
    pub backend: String,
    /// l4 (TLS passthrough, default) or l7 (TLS termination and HTTP proxy).
    #[arg(long, value_name = "l4|l7")]
    pub mode: Option<String>,
    /// L7: PEM certificate chain presented to clients.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<String>,
    /// L7: PEM private key for --tls-cert.
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<String>,
    /// L7: speak HTTP/2 over TLS to the backend.
    #[arg(long)]
    pub backend_tls: bool,
    /// Send a PROXY protocol v2 header with the client address to the backend.
    #[arg(long)]
    pub send_proxy_protocol: bool,
    /// Print the stored route as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The listener's configured address.
    #[arg(long, value_name = "ADDR")]
    pub listener: String,
    /// The route to change.
    #[arg(long)]
    pub hostname: String,
    /// Rename the route.
    #[arg(long, value_name = "HOSTNAME")]
    pub new_hostname: Option<String>,
    /// New backend host:port.
    #[arg(long)]
    pub backend: Option<String>,
    /// New mode: l4 or l7.
    #[arg(long, value_name = "l4|l7")]
    pub mode: Option<String>,
    /// New certificate path.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<String>,
    /// New key path.
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<String>,
    /// HTTP/2 over TLS to the backend: --backend-tls, --backend-tls=false.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub backend_tls: Option<bool>,
    /// PROXY v2 to the backend: --send-proxy-protocol, --send-proxy-protocol=false.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub send_proxy_protocol: Option<bool>,
    /// Print the stored route as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
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
pub struct RuleArgs {
    /// A single address, IPv4 or IPv6.
    #[arg(long)]
    pub ip: Option<String>,
    /// A network, e.g. 198.51.100.0/24.
    #[arg(long)]
    pub cidr: Option<String>,
}
