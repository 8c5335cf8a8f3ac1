//! The command line: every subcommand and flag, with the texts `--help` prints.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use mc_proxy_shared::BackendProtocol;

/// Control a running mc-proxy daemon over its admin socket: routes, firewall rules,
/// certificate reloads and live events.
///
/// Exit status: 0 on success (also when a reader such as `head` closes the pipe early), 1 when
/// the daemon refused the request (the reason is printed) or a reload failed for a route,
/// 2 for a usage error, 3 when no daemon answers on the socket or it went away during the
/// call (a change may or may not have been applied: list to check), 4 when the socket exists
/// but this user may not use it.
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
        #[command(flatten)]
        table: TableArgs,
    },
    /// The L7 backend connection pool: connections open, idle and in use per backend.
    Backends {
        #[command(flatten)]
        table: TableArgs,
    },
    /// Change a listener's run-time settings.
    #[command(subcommand)]
    Listeners(ListenersCommand),
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
    /// The routed connections open now, oldest first, with their bytes so far.
    Connections {
        /// List at most this many (0: the daemon's maximum, 10000).
        #[arg(long, default_value_t = 0, value_name = "N")]
        limit: u32,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Re-read every L7 route's certificate and key from disk (as `kill -HUP` does) and
    /// serve the ones that load to new handshakes. Prints what happened per route; a route
    /// whose files fail keeps the certificate it had, and the exit status is 1.
    Reload {
        #[command(flatten)]
        table: TableArgs,
    },
    /// The terminal console: listeners, routes with live traffic, events; add, edit and
    /// delete routes and firewall rules. Press ? inside for the keys.
    Console {
        /// Watch only: hide and refuse every key that would change the daemon.
        #[arg(long)]
        read_only: bool,
    },
    /// Print a shell completion script: `mcproxyctl completions bash > \
    /// /etc/bash_completion.d/mcproxyctl`, `mcproxyctl completions zsh > \
    /// "${fpath[1]}/_mcproxyctl"`, `mcproxyctl completions fish > \
    /// ~/.config/fish/completions/mcproxyctl.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// How a listing is printed.
#[derive(Debug, Clone, Default, Args)]
pub struct TableArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Leave out the header line(s) of the table, for shell loops.
    #[arg(long, conflicts_with = "json")]
    pub no_headers: bool,
}

#[derive(Debug, Subcommand)]
pub enum ListenersCommand {
    /// Change a listener's settings.
    Update {
        /// The listener's configured address.
        #[arg(long, value_name = "ADDR")]
        listener: String,
        /// The route (its hostname, `*` for the catch-all) that ClientHellos without SNI go
        /// to; "" to reset them again.
        #[arg(long, value_name = "HOSTNAME")]
        no_sni_route: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoutesCommand {
    /// Every route with its fields and counters, by listener then hostname.
    List {
        /// Only this listener's routes (its configured address, e.g. 127.0.0.1:8443).
        #[arg(long, value_name = "ADDR")]
        listener: Option<String>,
        #[command(flatten)]
        table: TableArgs,
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
    /// L7: PEM certificate chain presented to clients (a relative path is resolved against
    /// the current directory before it is sent).
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<String>,
    /// L7: PEM private key for --tls-cert (made absolute likewise).
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<String>,
    /// L7: TLS to the backend (which HTTP version runs inside is --backend-protocol).
    #[arg(long)]
    pub backend_tls: bool,
    /// L7: the HTTP version spoken to the backend. h2 (the default): HTTP/2, h2c in cleartext
    /// or ALPN h2 with --backend-tls; http1: HTTP/1.1, ALPN http/1.1 with --backend-tls; auto:
    /// ALPN h2,http/1.1 and the backend picks, which needs --backend-tls.
    #[arg(long, value_name = "h2|http1|auto", value_parser = backend_protocol())]
    pub backend_protocol: Option<BackendProtocol>,
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
    /// New certificate path (made absolute against the current directory).
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<String>,
    /// New key path (made absolute likewise).
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<String>,
    /// TLS to the backend: --backend-tls, --backend-tls=false.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub backend_tls: Option<bool>,
    /// New backend HTTP version: h2, http1, or auto (needs TLS to the backend).
    #[arg(long, value_name = "h2|http1|auto", value_parser = backend_protocol())]
    pub backend_protocol: Option<BackendProtocol>,
    /// PROXY v2 to the backend: --send-proxy-protocol, --send-proxy-protocol=false.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub send_proxy_protocol: Option<bool>,
    /// Print the stored route as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `h2`, `http1` or `auto`, spelled as in the TOML; clap lists them in `--help`, its errors and
/// the shell completions.
fn backend_protocol() -> impl TypedValueParser<Value = BackendProtocol> {
    PossibleValuesParser::new(BackendProtocol::ALL.iter().map(|p| p.as_str()))
        .try_map(|s| s.parse::<BackendProtocol>())
}

#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// Every rule, by kind then value.
    List {
        #[command(flatten)]
        table: TableArgs,
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
