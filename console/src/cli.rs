//! The command line: every subcommand and flag, with the texts `--help` prints.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use mc_proxy_shared::text::clip;
use mc_proxy_shared::{AdminState, BackendProtocol, Balance, RouteBackend};

/// Control a running mc-proxy daemon over its admin socket: routes, firewall rules,
/// certificate reloads and live events.
///
/// Exit status: 0 on success (also when a reader such as `head` closes the pipe early), 1 when
/// the daemon refused the request (the reason is printed) or a reload failed for a route,
/// 2 for a usage error, 3 when no daemon answers on the socket or it went away during the
/// call (a change may or may not have been applied: list to check), 4 when the socket exists
/// but this user may not use it, 5 (a cluster node) when another change to the same object won
/// (nothing applied: list and retry), 6 (a cluster node) when the fleet's store is away.
///
/// Which daemon: --socket, else --context, else $MCPROXY_SOCKET, else $MCPROXY_CONTEXT, else
/// the current context of the contexts file (`mcproxyctl config`), else srv/mc-proxy.sock.
#[derive(Debug, Parser)]
#[command(name = "mcproxyctl", version)]
pub struct Cli {
    /// The daemon's admin socket (the `[admin] socket` of its config). Default:
    /// $MCPROXY_SOCKET, else the context's, else srv/mc-proxy.sock.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// The context (a named admin socket, `mcproxyctl config`) to talk to. Default:
    /// $MCPROXY_CONTEXT, else the current context.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

// One value per process, parsed once: its size does not matter, and boxing would make every
// match on it clumsier.
#[allow(clippy::large_enum_variant)]
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
    /// List, add, change or remove listeners while the daemon runs.
    #[command(subcommand)]
    Listeners(ListenersCommand),
    /// List, add, change or remove routes.
    #[command(subcommand)]
    Routes(RoutesCommand),
    /// List, add or remove firewall rules (blocked addresses and networks).
    #[command(subcommand)]
    Firewall(FirewallCommand),
    /// The client addresses that hit limits most (listeners' per-client connection limits,
    /// routes' access lists, request rates and caps), most first: CLIENT HITS LAST ROUTE WHEN.
    /// HITS reads `≤N` where the bounded table (64 addresses) may have counted an evicted
    /// address's hits to this one.
    Talkers {
        /// At most this many (0: all the table holds).
        #[arg(long, default_value_t = 0, value_name = "N")]
        limit: u32,
        #[command(flatten)]
        table: TableArgs,
    },
    /// The certificates L7 routes serve: source, issuer, end, state (expiring within 14
    /// days, expired), and the L7 routes that serve none with why.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Follow the daemon's live events, one line each, until interrupted.
    Events {
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Also print the per-second stats snapshots.
        #[arg(long)]
        stats: bool,
        /// Print only events of this type (repeatable), named as in `--json`'s `type`.
        #[arg(
            long = "type",
            value_name = "TYPE",
            value_parser = PossibleValuesParser::new(crate::ctl::EVENT_TYPES)
        )]
        types: Vec<String>,
    },
    /// The routed connections open now, oldest first, with their bytes so far.
    #[command(args_conflicts_with_subcommands = true)]
    Connections {
        /// `close ID...`: cut connections now.
        #[command(subcommand)]
        action: Option<ConnectionsCommand>,
        /// List at most this many (0: the daemon's maximum, 10000).
        #[arg(long, default_value_t = 0, value_name = "N")]
        limit: u32,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Reload as `kill -HUP` does: re-read the config file's [proxy] settings (timeouts,
    /// request head limit, passive health apply to new connections; the others are named as
    /// needing a restart), then every L7 route's certificate and key, serving the ones that
    /// load to new handshakes. Prints what happened per route and per setting; a route whose
    /// files fail keeps the certificate it had (or, if it was not served, stays not served),
    /// and a config file that does not load changes no setting: the exit status is 1 then.
    Reload {
        #[command(flatten)]
        table: TableArgs,
    },
    /// On a node with [cluster]: its link to the fleet's store (connected, behind, or
    /// disconnected since when) and every node registered there with the revision it
    /// applied.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Print the daemon's listeners, routes (with their backends, admin states and health
    /// checks) and firewall rules as the config file's TOML: what its database holds. Add
    /// [database] (and [admin], [metrics], [proxy]) to use it as a config; a daemon seeds an
    /// empty database from it. Routes not served are exported with a comment saying why.
    Export,
    /// The terminal console: listeners, routes with live traffic, events; add, edit and
    /// delete routes and firewall rules. Press ? inside for the keys.
    Console {
        /// Watch only: hide and refuse every key that would change the daemon.
        #[arg(long)]
        read_only: bool,
    },
    /// Contexts: named admin sockets, one per node (a local one, or one `ssh -L` forwards from
    /// a remote node), kept in ~/.config/mcproxyctl/contexts.toml ($MCPROXYCTL_CONFIG).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script on stdout.
    ///
    /// Install it with the line for your shell, as shown (one line each):
    ///
    ///   mcproxyctl completions bash > /etc/bash_completion.d/mcproxyctl
    ///   mcproxyctl completions zsh > "${fpath[1]}/_mcproxyctl"
    ///   mcproxyctl completions fish > ~/.config/fish/completions/mcproxyctl.fish
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Compare a file of listeners, routes and firewall rules (the config file's TOML, as
    /// `export` writes it) with the daemon, and print what `apply` would change: `+` added,
    /// `~` changed (field by field), `-` removed (with --prune). Exit status 0: no changes;
    /// 1: differences (as `kubectl diff` and `diff`); 2: the file is refused.
    Diff(ApplyArgs),
    /// Make the daemon match a file of listeners, routes and firewall rules (the config file's
    /// TOML, as `export` writes it), change by change through the admin API: firewall adds,
    /// route adds and updates, member states, listener settings, then with --prune route and
    /// rule removals. Not transactional: a refused change stops the apply and what was
    /// already applied is listed. A second apply of the same file says "no changes". The file
    /// is checked whole first: a bad file, or a listener the daemon lacks, sends nothing.
    Apply {
        #[command(flatten)]
        args: ApplyArgs,
        /// Print what would change (as `diff`) and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The file of `diff` and `apply`, and whether what it lacks is removed.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The TOML file: [[listeners]] with their [[listeners.routes]], and [firewall]. Other
    /// sections ([database], [admin], ...) are ignored with a note. Relative tls_cert and
    /// tls_key paths are taken from the file's directory.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: std::path::PathBuf,
    /// Also remove the routes (on the file's listeners) and firewall rules the file lacks.
    /// Listeners are never removed.
    #[arg(long)]
    pub prune: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Add a context for the admin socket given with --socket PATH (made absolute), or point an
    /// existing one at it.
    AddContext {
        /// Its name: 1 to 32 of A-Z a-z 0-9 . _ -.
        name: String,
        /// Make it the current context too.
        #[arg(long = "use")]
        use_it: bool,
    },
    /// Make a context the one commands use when they name none.
    UseContext {
        /// The context.
        name: String,
    },
    /// List the contexts; the current one is marked with `*`.
    GetContexts {
        #[command(flatten)]
        table: TableArgs,
    },
    /// Print the current context's name.
    CurrentContext,
    /// Remove a context.
    DeleteContext {
        /// The context.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// This node's link and every registered node: name, version, applied revision and how
    /// far behind the store it is, last error.
    Status {
        #[command(flatten)]
        table: TableArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Close connections now, by id (the ID column of `connections`, the `id` of events): cut
    /// like at the end of the shutdown grace period, L7 requests in flight included; their
    /// close is logged with the outcome `admin_closed`. Exit 1 if one was not open.
    Close {
        /// The connections' ids.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<u64>,
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
pub enum CertsCommand {
    /// Every L7 route's certificate: LISTENER HOSTNAME SOURCE ISSUER NOT AFTER STATE DETAIL.
    /// STATE is ok, expiring (14 days or fewer left), expired, not valid yet, or not served
    /// (DETAIL says why).
    List {
        /// Only this listener's routes (its name or address).
        #[arg(long, value_name = "LISTENER")]
        listener: Option<String>,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Order a new certificate now for an acme route (before its renewal time); the old one
    /// serves until the new one is in place. `certs list` shows when it is. A route whose
    /// certificate comes from files is refused (replace them, then `mcproxyctl reload`).
    Renew {
        /// The route's hostname.
        hostname: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ListenersCommand {
    /// Every listener with its settings and counters (as in `status`).
    List {
        #[command(flatten)]
        table: TableArgs,
    },
    /// Listen on a new address: bound at once on every data-plane thread, then stored, so it
    /// survives a restart (an address that cannot be bound stores nothing). It starts with no
    /// routes: add them with `routes add --listener ADDR`.
    Add {
        /// IP:port to listen on: 0.0.0.0:443, [::]:443, 192.0.2.1:8443.
        addr: String,
        /// Its name, what shared (cluster) routes and every command can name it by: 1-64 of
        /// A-Z a-z 0-9 . _ : [ ] -, unique, never another listener's address. Fixed once added.
        /// Default: the address.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// What it does: `tls` routes TLS connections by SNI (the default); `http` is a
        /// plain-HTTP listener (port 80) that answers ACME http-01 challenges and redirects
        /// every other request to https:// on the same host and path (308). Fixed once added.
        #[arg(long, value_name = "tls|http", default_value = "tls")]
        kind: mc_proxy_shared::ListenerKind,
        /// An http listener's redirect target port (default 443, which the URL leaves out).
        #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
        redirect_port: Option<u16>,
        /// Expect a PROXY protocol header (v1 or v2) on every connection.
        #[arg(long)]
        proxy_protocol: bool,
        /// A peer (address or network) allowed to send the PROXY header; repeat for several.
        /// Without it any peer may.
        #[arg(long, value_name = "NET")]
        proxy_protocol_from: Vec<String>,
        /// Log every L7 request on it (one `mc_proxy::request` line each), whatever its
        /// routes say.
        #[arg(long)]
        access_log: bool,
        #[command(flatten)]
        limits: ClientLimitArgs,
    },
    /// Change a listener's settings, all or nothing. Connections accepted from then on use
    /// them; open ones keep what they started with. The address cannot change: add the new
    /// listener, move the routes, remove the old one.
    Update {
        /// The listener's name or configured address.
        #[arg(long, value_name = "ADDR")]
        listener: String,
        /// The route (its hostname, `*` for the catch-all) that ClientHellos without SNI go
        /// to; "" to reset them again.
        #[arg(long, value_name = "HOSTNAME")]
        no_sni_route: Option<String>,
        /// PROXY protocol headers expected: --proxy-protocol, --proxy-protocol=false.
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        proxy_protocol: Option<bool>,
        /// Replace the peers allowed to send the PROXY header (repeat for several).
        #[arg(long, value_name = "NET", conflicts_with = "any_proxy_source")]
        proxy_protocol_from: Vec<String>,
        /// Let any peer send the PROXY header (clears --proxy-protocol-from).
        #[arg(long)]
        any_proxy_source: bool,
        /// Log every L7 request on it: on, or off (then each route's own setting decides).
        #[arg(long, value_name = "on|off", value_parser = on_off())]
        access_log: Option<bool>,
        #[command(flatten)]
        limits: ClientLimitArgs,
    },
    /// Stop listening and delete the listener. Open L7 connections are drained (GOAWAY,
    /// `Connection: close`), L4 relays run to their end. Refused while it has routes, unless
    /// --with-routes.
    Remove {
        /// The listener's name or configured address.
        addr: String,
        /// Delete its routes too.
        #[arg(long)]
        with_routes: bool,
    },
}

/// A listener's limits per client address (the real one: after a trusted PROXY header).
/// Over one, a new connection is reset before its ClientHello is read. 0 turns a limit off.
/// A change applies to new connections at once; open ones are never cut.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ClientLimitArgs {
    /// Connections one client may have open at once (0: no limit; at most 4000).
    #[arg(long, value_name = "N")]
    pub max_conns_per_client: Option<u32>,
    /// New connections one client may open per second, on average (0: no limit; at most
    /// 1000).
    #[arg(long, value_name = "PER_SECOND")]
    pub new_conns_per_client: Option<u32>,
    /// New connections one client may open back to back before the rate applies (0: one
    /// second's worth of the rate).
    #[arg(long, value_name = "N")]
    pub new_conns_burst: Option<u32>,
    /// IPv6 clients are grouped by this prefix length (16-128, default 64: one host owns a
    /// /64). IPv4 clients are single addresses.
    #[arg(long, value_name = "BITS")]
    pub client_ipv6_prefix: Option<u32>,
}

impl ClientLimitArgs {
    /// The flags as a patch of the listener's limits.
    pub fn patch(self) -> mc_proxy_shared::ClientLimitsPatch {
        mc_proxy_shared::ClientLimitsPatch {
            max_conns_per_client: self.max_conns_per_client,
            new_conns_per_client: self.new_conns_per_client,
            new_conns_burst: self.new_conns_burst,
            client_ipv6_prefix: self.client_ipv6_prefix,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RoutesCommand {
    /// Every route with its fields and counters, by listener then hostname.
    List {
        /// Only this listener's routes (its name or configured address, e.g. 127.0.0.1:8443).
        #[arg(long, value_name = "ADDR")]
        listener: Option<String>,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Add a route. Without --mode it is an L4 (passthrough) route.
    Add(RouteArgs),
    /// Change the given fields of a route; the others stay as they are.
    #[command(visible_alias = "edit")]
    Update(UpdateArgs),
    /// One route in full: its fields, health check and each backend with its weight, admin
    /// state, live state and traffic.
    Show {
        /// The route's hostname.
        hostname: String,
        /// The listener's name or configured address; needed only when several listeners have a
        /// route of that name.
        #[arg(long, value_name = "ADDR")]
        listener: Option<String>,
        /// Print the route and its stats as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drain, enable or disable one backend of a route (stored like every change).
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Remove a route. Connections already open on it keep going.
    Remove {
        /// The listener's name or configured address.
        #[arg(long, value_name = "ADDR")]
        listener: String,
        /// The route's hostname.
        #[arg(long)]
        hostname: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Take no new connections or requests; open ones finish.
    Drain(BackendStateArgs),
    /// Back in rotation (when healthy).
    Enable(BackendStateArgs),
    /// Out of rotation; open connections still finish.
    Disable(BackendStateArgs),
    /// Change one backend's weight (1 to 256), leaving the rest of the set as it is; new
    /// connections and requests are balanced with it at once.
    Weight {
        #[command(flatten)]
        member: BackendStateArgs,
        /// The new weight, 1 to 256.
        #[arg(value_name = "WEIGHT")]
        weight: u32,
    },
}

impl BackendCommand {
    /// The admin state asked for (`None`: unchanged), the weight (likewise), and the member
    /// named.
    pub fn into_parts(self) -> (Option<AdminState>, Option<u32>, BackendStateArgs) {
        match self {
            BackendCommand::Drain(a) => (Some(AdminState::Draining), None, a),
            BackendCommand::Enable(a) => (Some(AdminState::Enabled), None, a),
            BackendCommand::Disable(a) => (Some(AdminState::Disabled), None, a),
            BackendCommand::Weight { member, weight } => (None, Some(weight), member),
        }
    }
}

#[derive(Debug, Args)]
pub struct BackendStateArgs {
    /// The route's hostname.
    pub hostname: String,
    /// The backend's address, as the route lists it (host:port).
    pub address: String,
    /// The listener's name or configured address; needed only when several listeners have a route
    /// of that name.
    #[arg(long, value_name = "ADDR")]
    pub listener: Option<String>,
}

/// The active health check flags of `routes add` and `routes update`. Any of them turns the
/// check on; the ones left out take the defaults (or, on update, the route's current values).
#[derive(Debug, Clone, Default, Args)]
pub struct CheckArgs {
    /// Turn on the active health check with default settings (every 2s, timeout 1s, rise 2,
    /// fall 3; L4: TCP connect + TLS handshake, certificate not verified; L7: TCP connect).
    #[arg(long)]
    pub check: bool,
    /// Time between two probes of one backend, e.g. 2s, 500ms (from 100ms to 1h).
    #[arg(long, value_name = "DURATION", value_parser = Clipped(duration))]
    pub check_interval: Option<std::time::Duration>,
    /// How long one probe may take (more than 0, at most the interval).
    #[arg(long, value_name = "DURATION", value_parser = Clipped(duration))]
    pub check_timeout: Option<std::time::Duration>,
    /// Successes in a row that bring a down backend up (1 to 100).
    #[arg(long, value_name = "N", value_parser = Clipped(count))]
    pub check_rise: Option<u32>,
    /// Failures in a row that bring an up backend down (1 to 100).
    #[arg(long, value_name = "N", value_parser = Clipped(count))]
    pub check_fall: Option<u32>,
    /// L7: probe with GET of this path (starting with /) instead of a TCP connect; "" for a
    /// TCP connect again.
    #[arg(long, value_name = "PATH")]
    pub check_path: Option<String>,
    /// L7 HTTP probes: the statuses that count as healthy, as HAProxy takes them: codes,
    /// classes, ranges or a comma list of them, e.g. 200, 2xx, 200-399, 200,301-302,4xx.
    #[arg(long, value_name = "STATUSES")]
    pub check_expect: Option<String>,
}

impl CheckArgs {
    /// Whether any check flag was given.
    pub fn any(&self) -> bool {
        self.check
            || self.check_interval.is_some()
            || self.check_timeout.is_some()
            || self.check_rise.is_some()
            || self.check_fall.is_some()
            || self.check_path.is_some()
            || self.check_expect.is_some()
    }
}

/// A flag value parser whose error says what is wrong with the value without repeating it
/// whole (clap's own "invalid value" error quotes it in full, and a flag may be 100 KB long):
/// the function's message quotes it through [`clip`].
#[derive(Clone, Copy)]
struct Clipped<T>(fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Clipped<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let flag = arg.and_then(clap::Arg::get_long);
        let fail = |kind, message: String| {
            let message = match flag {
                Some(long) => format!("invalid value for --{long}: {message}\n"),
                None => format!("{message}\n"),
            };
            clap::Error::raw(kind, message).with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| {
            fail(
                ErrorKind::InvalidUtf8,
                format!("{} is not UTF-8", clip(&value.to_string_lossy())),
            )
        })?;
        (self.0)(text).map_err(|e| fail(ErrorKind::ValueValidation, e))
    }
}

/// A `--check-interval` or `--check-timeout`: `2s`, `500ms`, `1m` (0 too, for the daemon to
/// refuse as the TOML's validation does).
fn duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|_| {
        format!(
            "{} is not a duration: expected e.g. 2s, 500ms, 1m",
            clip(text)
        )
    })
}

/// A `--check-rise` or `--check-fall`: a whole number (0 too, for the daemon to refuse as the
/// TOML's validation does, rather than be read as "unset").
fn count(text: &str) -> Result<u32, String> {
    text.parse::<u32>().map_err(|_| {
        format!(
            "{} is not a count: expected a whole number like 3",
            clip(text)
        )
    })
}

/// A word no flag takes: always refused. One with a `=` is most likely a backend option split
/// from its address by a space (`--backend a:1, weight=3`).
fn stray(text: &str) -> Result<String, String> {
    Err(if text.contains('=') || text.starts_with(',') {
        format!(
            "unexpected argument {}: a backend's options go in the same word as its address, \
             --backend host:port,weight=N",
            clip(text)
        )
    } else {
        format!("unexpected argument {}", clip(text))
    })
}

/// A `--backend` value: `host:port`, `host:port,weight=N` or `host:port weight=N`. A weight of
/// 0 or above 256 is passed on for the daemon to refuse; a misspelt option or a stray `,` is
/// refused here, naming it ([`RouteBackend::parse_flag`]).
pub fn parse_backend(text: &str) -> Result<RouteBackend, String> {
    RouteBackend::parse_flag(text).map_err(|e| e.to_string())
}

/// `round_robin`, `least_conn` or `source`, as in the TOML.
/// `on` or `off`, for a switch that is set rather than toggled by its presence.
fn on_off() -> impl TypedValueParser<Value = bool> {
    PossibleValuesParser::new(["on", "off"]).map(|s| s == "on")
}

fn balance() -> impl TypedValueParser<Value = Balance> {
    PossibleValuesParser::new(Balance::ALL.iter().map(|b| b.as_str()))
        .try_map(|s| s.parse::<Balance>())
}

#[derive(Debug, Args)]
pub struct RouteArgs {
    /// The listener's name or configured address, e.g. 127.0.0.1:8443.
    #[arg(long, value_name = "ADDR")]
    pub listener: String,
    /// SNI hostname: app.example.com or *.example.com.
    #[arg(long)]
    pub hostname: String,
    /// A backend: host:port, or host:port,weight=N (weight 1 to 256, default 1). Repeat it
    /// for several: --backend 10.0.0.1:443 --backend 10.0.0.2:443,weight=3.
    #[arg(long, required = true, value_name = "HOST:PORT[,weight=N]", value_parser = Clipped(parse_backend))]
    pub backend: Vec<RouteBackend>,
    /// How a backend is picked: round_robin (weighted, the default), least_conn, or source
    /// (the same client address to the same backend).
    #[arg(long, value_name = "round_robin|least_conn|source", value_parser = balance())]
    pub balance: Option<Balance>,
    #[command(flatten)]
    pub check: CheckArgs,
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
    /// L7: one access log line per request (tracing target mc_proxy::request: time, client,
    /// host, method, path, status, backend, duration, bytes, retries). Default off.
    #[arg(long, value_name = "on|off", value_parser = on_off())]
    pub access_log: Option<bool>,
    #[command(flatten)]
    pub limits: RouteLimitArgs,
    /// L7: the certificate from ACME ([acme] in the daemon's config) instead of --tls-cert /
    /// --tls-key: ordered now, served once issued, renewed before it ends.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub acme: bool,
    /// Print the stored route as JSON.
    #[arg(long)]
    pub json: bool,
    /// Refused: a word no flag takes (a backend's options go in its --backend word). Caught
    /// here, not by clap, to say so: `--backend a:1, weight=3`.
    #[arg(hide = true, value_name = "WORD", value_hint = clap::ValueHint::Other, value_parser = Clipped(stray))]
    pub stray: Vec<String>,
}

/// A route's access lists (and, on L7 routes, request limits). On `routes update` a list
/// given replaces the route's whole list.
#[derive(Debug, Clone, Default, Args)]
pub struct RouteLimitArgs {
    /// Serve only clients from this network or address (repeat for several); others are
    /// reset (l4) or answered 403 (l7). The real client address: a trusted PROXY header's.
    #[arg(long, value_name = "NET", conflicts_with = "allow_any")]
    pub allow_from: Vec<String>,
    /// Refuse clients from this network or address (repeat for several), whatever
    /// --allow-from says.
    #[arg(long, value_name = "NET", conflicts_with = "deny_none")]
    pub deny_from: Vec<String>,
    /// routes update: clear the allow list (every client not denied is served).
    #[arg(long)]
    pub allow_any: bool,
    /// routes update: clear the deny list.
    #[arg(long)]
    pub deny_none: bool,
    /// L7: requests one client may make per second, on average (0: no limit; at most 1000);
    /// over it a request is answered 429 with Retry-After and never forwarded.
    #[arg(long, value_name = "PER_SECOND")]
    pub client_request_rate: Option<u32>,
    /// L7: requests one client may make back to back before its rate applies (0: one
    /// second's worth).
    #[arg(long, value_name = "N")]
    pub client_request_burst: Option<u32>,
    /// L7: requests the whole route takes per second, every client together (0: no limit).
    #[arg(long, value_name = "PER_SECOND")]
    pub route_request_rate: Option<u32>,
    /// L7: requests the route takes back to back before its rate applies (0: one second's
    /// worth).
    #[arg(long, value_name = "N")]
    pub route_request_burst: Option<u32>,
    /// L7: requests in flight to the route's backends at once (0: no cap); more wait in the
    /// queue, or get 503.
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u32>,
    /// L7: requests that may wait for a slot under --max-requests (0: none, 503 at once).
    #[arg(long, value_name = "N")]
    pub max_queue: Option<u32>,
    /// L7: how long a request may wait in that queue (default 1s, at most 60s).
    #[arg(long, value_name = "DURATION", value_parser = queue_timeout)]
    pub queue_timeout: Option<u32>,
}

/// A queue timeout (`250ms`, `2s`) as milliseconds.
fn queue_timeout(text: &str) -> Result<u32, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    u32::try_from(d.as_millis()).map_err(|_| "too long".to_owned())
}

impl RouteLimitArgs {
    /// The flags as a patch of the route's limits (a list named replaces the route's).
    pub fn patch(&self) -> mc_proxy_shared::limits::RouteLimitsPatch {
        let list = |values: &[String], clear: bool| match (clear, values.is_empty()) {
            (true, _) => Some(Vec::new()),
            (false, false) => Some(values.to_vec()),
            (false, true) => None,
        };
        mc_proxy_shared::limits::RouteLimitsPatch {
            allow_from: list(&self.allow_from, self.allow_any),
            deny_from: list(&self.deny_from, self.deny_none),
            client_request_rate: self.client_request_rate,
            client_request_burst: self.client_request_burst,
            route_request_rate: self.route_request_rate,
            route_request_burst: self.route_request_burst,
            max_requests: self.max_requests,
            max_queue: self.max_queue,
            queue_timeout_ms: self.queue_timeout,
        }
    }
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The listener's name or configured address.
    #[arg(long, value_name = "ADDR")]
    pub listener: String,
    /// The route to change.
    #[arg(long)]
    pub hostname: String,
    /// Rename the route.
    #[arg(long, value_name = "HOSTNAME")]
    pub new_hostname: Option<String>,
    /// Replace the backend set: host:port or host:port,weight=N, repeated for several. A
    /// backend that stays keeps its drain/disable state.
    #[arg(long, value_name = "HOST:PORT[,weight=N]", value_parser = Clipped(parse_backend))]
    pub backend: Vec<RouteBackend>,
    /// New balance: round_robin, least_conn or source.
    #[arg(long, value_name = "round_robin|least_conn|source", value_parser = balance())]
    pub balance: Option<Balance>,
    #[command(flatten)]
    pub check: CheckArgs,
    /// Remove the active health check.
    #[arg(long, conflicts_with_all = ["check", "check_interval", "check_timeout", "check_rise", "check_fall", "check_path", "check_expect"])]
    pub no_check: bool,
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
    /// L7: the per-request access log line (target mc_proxy::request), on or off.
    #[arg(long, value_name = "on|off", value_parser = on_off())]
    pub access_log: Option<bool>,
    #[command(flatten)]
    pub limits: RouteLimitArgs,
    /// L7: the certificate from ACME (on: --tls-cert/--tls-key are cleared; off: give them).
    #[arg(long, value_name = "on|off", value_parser = on_off())]
    pub acme: Option<bool>,
    /// Print the stored route as JSON.
    #[arg(long)]
    pub json: bool,
    /// Refused: a word no flag takes (a backend's options go in its --backend word). Caught
    /// here, not by clap, to say so: `--backend a:1, weight=3`.
    #[arg(hide = true, value_name = "WORD", value_hint = clap::ValueHint::Other, value_parser = Clipped(stray))]
    pub stray: Vec<String>,
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
