//! The TOML configuration: parsing, defaults and validation.
//!
//! I/O: reads the config file, and the certificate/key files of L7 routes to check that they
//! load as a pair. Invariant: a `Config` that exists is valid; every problem found is reported
//! at once (not only the first), each naming the file, the listener and the route.
//!
//! The TOML seeds the database on first start only (see `store::Store::seed`); `[proxy]`,
//! `[database]`, `[admin]` and `[metrics]` are read from it on every start. Routes are checked with
//! `routes::validate_route`, the one route validation, shared with the admin API.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use mc_proxy_shared::text::clip;
use mc_proxy_shared::{
    BackendProtocol, Balance, FirewallRuleKind, HealthCheck, Mode, Route, RouteBackend,
    StatusClasses,
};
use serde::{Deserialize, Deserializer};

use crate::control::cluster::settings::FileCluster;
pub use crate::control::cluster::settings::{ClusterAuth, ClusterConfig, ClusterTls};
use crate::model::firewall::parse_rule;
use crate::model::routes::{RouteError, route_name, route_problems, validate_route};
pub use crate::model::state::ProxyConfig;
use crate::model::state::check_listener_name;

/// The most data-plane workers `proxy.workers` may ask for: each is a thread with its own
/// runtime and a socket per listener, so a typo (`workers = 1000000`) must not start that many.
pub const MAX_WORKERS: usize = 256;

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[database]`.
    pub database: DatabaseConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[firewall]`: the initial blocklist, seeded into the database.
    pub firewall: FirewallConfig,
    /// `[proxy]`: timeouts and limits.
    pub proxy: ProxyConfig,
    /// `[[listeners]]` with their routes, seeded into the database.
    pub listeners: Vec<ListenerConfig>,
    /// `[cluster]`: the etcd cluster this node shares its state through; `None` (no section):
    /// a node of its own, SQLite alone.
    pub cluster: Option<ClusterConfig>,
    /// `[acme]`: the CA that `acme = true` routes get their certificates from.
    pub acme: Option<crate::control::acme::settings::AcmeConfig>,
    /// Things that are allowed but probably not meant (cert on an l4 route, ...).
    pub warnings: Vec<String>,
    /// L7 routes whose certificate or key files do not load: errors for `mc-proxy check`, but
    /// never a reason not to start (one route's files must not keep every other route down).
    /// When the file seeds an empty database such a route is stored and left out of service
    /// until its files load (`reload`); once the database exists the file's routes are not
    /// applied, so their files do not matter to the daemon at all.
    pub file_problems: Vec<Problem>,
}

/// `[database]`.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// SQLite file; created on first start. Relative paths are relative to the working
    /// directory.
    pub path: PathBuf,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Unix socket for the gRPC admin API; `None` disables the API.
    pub socket: Option<PathBuf>,
    /// Events kept for a subscriber that has not read them yet; past that it loses the
    /// oldest and is told how many.
    pub event_buffer: usize,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// TCP address of the Prometheus endpoint (`GET /metrics`); `None` (the default) turns
    /// it off.
    pub addr: Option<SocketAddr>,
}

/// `[firewall]`.
#[derive(Debug, Clone, Default)]
pub struct FirewallConfig {
    /// Single blocked addresses.
    pub blocked_ips: Vec<IpAddr>,
    /// Blocked networks.
    pub blocked_cidrs: Vec<IpNet>,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Address to bind.
    pub addr: SocketAddr,
    /// Its name (`check_listener_name`): `addr` unless the file names it. What shared
    /// routes name the listener by.
    pub name: String,
    /// Expect a PROXY protocol v1/v2 header on every connection.
    pub proxy_protocol: bool,
    /// Peers allowed to send that header; empty means any peer. Others are reset.
    pub proxy_protocol_from: Vec<IpNet>,
    /// The route (its normalised hostname) for ClientHellos without SNI.
    pub no_sni_route: Option<String>,
    /// Validated routes, hostnames normalised.
    pub routes: Vec<Route>,
    /// Log every L7 request on this listener (`mc_proxy::request`), whatever its route says.
    /// Read from the file at every start (not stored).
    pub access_log: bool,
    /// Limits per client address.
    pub client_limits: mc_proxy_shared::ClientLimits,
    /// What it does with connections (`kind = "http"`: the plain-HTTP redirect listener).
    pub kind: mc_proxy_shared::ListenerKind,
    /// An HTTP listener's redirect port (`None`: 443).
    pub redirect_port: Option<u16>,
}

impl ListenerConfig {
    /// What start-up, a reload and `check` say of this listener when the database does not
    /// hold it: it is not served, and the command that adds it. `file` is the config's path.
    pub fn not_in_database(&self, file: &Path) -> String {
        format!(
            "listener {} in {} is not in the database and is not served (the database is \
             the source of truth); to add it: {}",
            self.addr,
            file.display(),
            self.add_command()
        )
    }

    /// What start-up, a reload and `check` say when the database names this listener
    /// `stored` and the file another name: the database's applies, and how to rename it.
    pub fn name_differs(&self, file: &Path, stored: &str) -> Option<String> {
        (self.name != stored).then(|| {
            format!(
                "listener {} is named {} in {} but {} in the database (the database's \
                 applies); a name is fixed when the listener is added: to rename it, remove it \
                 and add it again with --name {}",
                self.addr,
                self.name,
                file.display(),
                stored,
                self.name
            )
        })
    }

    /// The `mcproxyctl` command that adds this listener to a running daemon (its routes are
    /// added one by one after it).
    pub fn add_command(&self) -> String {
        let mut command = format!("mcproxyctl listeners add {}", self.addr);
        if self.name != self.addr.to_string() {
            command.push_str(&format!(" --name {}", self.name));
        }
        if self.kind != mc_proxy_shared::ListenerKind::Tls {
            command.push_str(&format!(" --kind {}", self.kind));
        }
        if let Some(port) = self.redirect_port {
            command.push_str(&format!(" --redirect-port {port}"));
        }
        if self.proxy_protocol {
            command.push_str(" --proxy-protocol");
        }
        for net in &self.proxy_protocol_from {
            command.push_str(&format!(" --proxy-protocol-from {net}"));
        }
        command.push_str(&client_limit_flags(&self.client_limits, false));
        command
    }
}

/// `limits` as `mcproxyctl listeners` flags (` --max-conns-per-client 10 ...`): those not at
/// their default, or (`all`) every one, as an update that must set them all needs.
pub fn client_limit_flags(limits: &mc_proxy_shared::ClientLimits, all: bool) -> String {
    let default = mc_proxy_shared::ClientLimits::default();
    let mut flags = String::new();
    for (flag, value, default) in [
        (
            "--max-conns-per-client",
            limits.max_conns_per_client,
            default.max_conns_per_client,
        ),
        (
            "--new-conns-per-client",
            limits.new_conns_per_client,
            default.new_conns_per_client,
        ),
        (
            "--new-conns-burst",
            limits.new_conns_burst,
            default.new_conns_burst,
        ),
        (
            "--client-ipv6-prefix",
            u32::from(limits.client_ipv6_prefix),
            u32::from(default.client_ipv6_prefix),
        ),
    ] {
        if all || value != default {
            flags.push_str(&format!(" {flag} {value}"));
        }
    }
    flags
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type. The TOML
    /// parser's message names the line and the key.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parsed but describes something mc-proxy cannot run.
    #[error("{path}: {} problem(s):\n{}", problems.len(), ProblemList(problems))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// Every problem as one line each, for `mc-proxy check`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, problems } => problems
                .iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

/// One validation problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `listener 127.0.0.1:8443, route app.test`, `firewall.blocked_ips[1]`, ...
    pub context: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.message)
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates config text; `path` is only used in messages and in
    /// `Config::path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        file.validate(path)
    }
}

// ---- The file format: serde structs that mirror the TOML exactly. ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database: FileDatabase,
    #[serde(default)]
    admin: FileAdmin,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    firewall: FileFirewall,
    #[serde(default)]
    proxy: FileProxy,
    #[serde(default)]
    listeners: Vec<FileListener>,
    cluster: Option<FileCluster>,
    acme: Option<crate::control::acme::settings::FileAcme>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatabase {
    path: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    socket: Option<PathBuf>,
    event_buffer: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    addr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFirewall {
    #[serde(default)]
    blocked_ips: Vec<String>,
    #[serde(default)]
    blocked_cidrs: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProxy {
    #[serde(default, deserialize_with = "duration")]
    client_hello_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    response_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    request_header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    keepalive_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    shutdown_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    shutdown_delay: Option<Duration>,
    max_connections: Option<usize>,
    backend_ca: Option<PathBuf>,
    max_request_head: Option<usize>,
    backend_max_connections: Option<usize>,
    backend_max_idle: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    backend_idle_timeout: Option<Duration>,
    backend_eject_after: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    backend_eject_time: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    backend_eject_max_time: Option<Duration>,
    workers: Option<usize>,
    client_table_size: Option<usize>,
    h2_max_concurrent_streams: Option<u32>,
    h2_max_pending_accept_reset_streams: Option<usize>,
    h2_max_local_error_reset_streams: Option<usize>,
    h2_max_send_buf_size: Option<usize>,
    h2_max_client_resets: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    h2_client_reset_window: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    addr: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default)]
    proxy_protocol_from: Vec<String>,
    #[serde(default)]
    no_sni_route: Option<String>,
    #[serde(default)]
    routes: Vec<FileRoute>,
    #[serde(default)]
    access_log: bool,
    #[serde(default)]
    max_conns_per_client: Option<u32>,
    #[serde(default)]
    new_conns_per_client: Option<u32>,
    #[serde(default)]
    new_conns_burst: Option<u32>,
    #[serde(default)]
    client_ipv6_prefix: Option<u32>,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    redirect_port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    hostname: String,
    /// The one-member form; exactly one of `backend` and `backends`.
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    backends: Option<Vec<FileBackend>>,
    #[serde(default)]
    balance: String,
    #[serde(default)]
    health_check: Option<FileHealthCheck>,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    tls_cert: String,
    #[serde(default)]
    tls_key: String,
    #[serde(default)]
    backend_tls: bool,
    #[serde(default)]
    send_proxy_protocol: bool,
    #[serde(default)]
    backend_protocol: String,
    #[serde(default)]
    access_log: bool,
    #[serde(default)]
    allow_from: Vec<String>,
    #[serde(default)]
    deny_from: Vec<String>,
    #[serde(default)]
    client_request_rate: u32,
    #[serde(default)]
    client_request_burst: u32,
    #[serde(default)]
    route_request_rate: u32,
    #[serde(default)]
    route_request_burst: u32,
    #[serde(default)]
    max_requests: u32,
    #[serde(default)]
    max_queue: u32,
    #[serde(default, deserialize_with = "duration")]
    queue_timeout: Option<Duration>,
    #[serde(default)]
    acme: bool,
}

/// One entry of `backends = [...]`: `"host:port"`, `"host:port weight=N"` or
/// `{ address = "host:port", weight = N }`. Kept as written; `validate` parses it so that a
/// problem names the listener and route.
#[derive(Debug)]
enum FileBackend {
    Text(String),
    Table(FileBackendTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackendTable {
    address: String,
    /// i64: TOML's integer, so that a negative or huge weight is a validation problem (naming
    /// the route) rather than a type error.
    weight: Option<i64>,
    /// The operator's say: `enabled` (the default), `draining` or `disabled`; what
    /// `mcproxyctl export` writes for a member drained or disabled at run time.
    state: Option<String>,
}

impl<'de> Deserialize<'de> for FileBackend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = FileBackend;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a backend: \"host:port\", \"host:port weight=N\" or \
                     { address = \"host:port\", weight = N }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileBackend, E> {
                Ok(FileBackend::Text(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<FileBackend, A::Error> {
                FileBackendTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(FileBackend::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl FileBackend {
    /// The member, or what is wrong with the entry.
    fn member(&self) -> Result<RouteBackend, String> {
        match self {
            FileBackend::Text(text) => text.parse::<RouteBackend>().map_err(|e| e.to_string()),
            FileBackend::Table(t) => {
                let weight = match t.weight {
                    None => RouteBackend::default_weight(),
                    // Out of u32: said here, in the words validation uses for 0 or 257.
                    Some(w) => u32::try_from(w).map_err(|_| {
                        format!(
                            "backend {}: weight {w} is not from 1 to {}",
                            clip(&t.address),
                            RouteBackend::MAX_WEIGHT
                        )
                    })?,
                };
                let mut member = RouteBackend::new(t.address.clone()).with_weight(weight);
                if let Some(state) = &t.state {
                    member.state = state
                        .parse()
                        .map_err(|e| format!("backend {}: {e}", clip(&t.address)))?;
                }
                Ok(member)
            }
        }
    }
}

/// `[listeners.routes.health_check]`; a key left out takes [`HealthCheck::default`]'s value.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealthCheck {
    #[serde(default, deserialize_with = "duration")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
    rise: Option<u32>,
    fall: Option<u32>,
    path: Option<String>,
    expect: Option<String>,
}

impl FileHealthCheck {
    fn check(self) -> Result<HealthCheck, String> {
        let d = HealthCheck::default();
        Ok(HealthCheck {
            interval: self.interval.unwrap_or(d.interval),
            timeout: self.timeout.unwrap_or(d.timeout),
            rise: self.rise.unwrap_or(d.rise),
            fall: self.fall.unwrap_or(d.fall),
            path: self.path.unwrap_or(d.path),
            expect: match self.expect {
                None => d.expect,
                Some(text) => text
                    .parse::<StatusClasses>()
                    .map_err(|e| format!("health_check: {e}"))?,
            },
        })
    }
}

/// The route's backend set from `backend` or `backends`, exactly one of which must be set;
/// every problem with an entry is reported.
fn file_backends(
    backend: Option<String>,
    backends: Option<Vec<FileBackend>>,
) -> Result<Vec<RouteBackend>, Vec<String>> {
    match (backend, backends) {
        (Some(_), Some(_)) => Err(vec![
            "both backend and backends are set: use backend = \"host:port\" for one backend \
             or backends = [...] for several, not both"
                .into(),
        ]),
        (None, None) => Err(vec![
            "no backend: set backend = \"host:port\" or backends = [\"host:port\", ...]".into(),
        ]),
        (Some(one), None) => Ok(vec![RouteBackend::new(one)]),
        (None, Some(list)) => {
            let mut members = Vec::new();
            let mut errors = Vec::new();
            for (k, entry) in list.iter().enumerate() {
                match entry.member() {
                    Ok(m) => members.push(m),
                    Err(e) => errors.push(format!("backends[{k}]: {e}")),
                }
            }
            if errors.is_empty() {
                Ok(members)
            } else {
                Err(errors)
            }
        }
    }
}

/// `"10s"`, `"5m"`, `"1h 30m"`, `"250ms"`: humantime's syntax.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
}

impl FileConfig {
    fn validate(self, path: &Path) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut file_problems = Vec::new();
        let mut warnings = Vec::new();
        let mut problem = |context: String, message: String| {
            problems.push(Problem { context, message });
        };

        let firewall = validate_firewall(&self.firewall, &mut problem);

        let proxy = validate_proxy(self.proxy, &mut problem);
        if self.admin.event_buffer == Some(0) {
            problem("admin.event_buffer".into(), "must be at least 1".into());
        }
        let metrics = validate_metrics(&self.metrics, &mut problem);
        let cluster = self.cluster.and_then(|c| c.validate(&mut problem));
        let acme = self.acme.and_then(|a| a.validate(&mut problem));
        let listeners = validate_listeners(
            self.listeners,
            &mut problem,
            &mut file_problems,
            &mut warnings,
        );

        // An acme route needs a CA to get its certificate from: this node's, or on a
        // cluster node the fleet's (a node with [acme] orders it, every node serves it).
        for l in &listeners {
            for r in l.routes.iter().filter(|r| r.acme) {
                if acme.is_none() && cluster.is_none() {
                    problem(
                        format!("listener {}, route {}", l.addr, r.hostname),
                        "acme = true needs an [acme] section (the CA)".into(),
                    );
                }
            }
        }
        if !problems.is_empty() {
            // Every problem, the files' too: `check` prints them all at once.
            problems.extend(file_problems);
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        Ok(Config {
            path: path.to_owned(),
            database: DatabaseConfig {
                path: self.database.path,
            },
            admin: AdminConfig {
                socket: self.admin.socket.filter(|p| !p.as_os_str().is_empty()),
                event_buffer: self
                    .admin
                    .event_buffer
                    .unwrap_or(crate::model::events::DEFAULT_CAPACITY),
            },
            metrics,
            firewall,
            proxy,
            listeners,
            cluster,
            acme,
            warnings,
            file_problems,
        })
    }
}

/// The longest `[proxy] shutdown_delay`: a load balancer's check notices in seconds.
const MAX_SHUTDOWN_DELAY: Duration = Duration::from_secs(300);

/// `[proxy]`: every setting, defaults filled in, each out of its bounds a problem.
fn validate_proxy(p: FileProxy, problem: &mut impl FnMut(String, String)) -> ProxyConfig {
    let defaults = ProxyConfig::default();
    let proxy = ProxyConfig {
        client_hello_timeout: p
            .client_hello_timeout
            .unwrap_or(defaults.client_hello_timeout),
        connect_timeout: p.connect_timeout.unwrap_or(defaults.connect_timeout),
        idle_timeout: p.idle_timeout.unwrap_or(defaults.idle_timeout),
        response_timeout: p.response_timeout.unwrap_or(defaults.response_timeout),
        request_header_timeout: p
            .request_header_timeout
            .unwrap_or(defaults.request_header_timeout),
        keepalive_timeout: p.keepalive_timeout.unwrap_or(defaults.keepalive_timeout),
        shutdown_timeout: p.shutdown_timeout.unwrap_or(defaults.shutdown_timeout),
        shutdown_delay: p.shutdown_delay.unwrap_or(defaults.shutdown_delay),
        max_connections: p.max_connections.unwrap_or(defaults.max_connections),
        backend_ca: p.backend_ca.filter(|p| !p.as_os_str().is_empty()),
        max_request_head: p.max_request_head.unwrap_or(defaults.max_request_head),
        backend_max_connections: p
            .backend_max_connections
            .unwrap_or(defaults.backend_max_connections),
        backend_max_idle: p.backend_max_idle.unwrap_or(defaults.backend_max_idle),
        backend_idle_timeout: p
            .backend_idle_timeout
            .unwrap_or(defaults.backend_idle_timeout),
        backend_eject_after: p
            .backend_eject_after
            .unwrap_or(defaults.backend_eject_after),
        backend_eject_time: p.backend_eject_time.unwrap_or(defaults.backend_eject_time),
        backend_eject_max_time: p
            .backend_eject_max_time
            .unwrap_or(defaults.backend_eject_max_time),
        workers: p.workers.unwrap_or(defaults.workers),
        client_table_size: p.client_table_size.unwrap_or(defaults.client_table_size),
        h2_max_concurrent_streams: p
            .h2_max_concurrent_streams
            .unwrap_or(defaults.h2_max_concurrent_streams),
        h2_max_pending_accept_reset_streams: p
            .h2_max_pending_accept_reset_streams
            .unwrap_or(defaults.h2_max_pending_accept_reset_streams),
        h2_max_local_error_reset_streams: p
            .h2_max_local_error_reset_streams
            .unwrap_or(defaults.h2_max_local_error_reset_streams),
        h2_max_send_buf_size: p
            .h2_max_send_buf_size
            .unwrap_or(defaults.h2_max_send_buf_size),
        h2_max_client_resets: p
            .h2_max_client_resets
            .unwrap_or(defaults.h2_max_client_resets),
        h2_client_reset_window: p
            .h2_client_reset_window
            .unwrap_or(defaults.h2_client_reset_window),
    };
    for (name, value) in [
        ("client_hello_timeout", proxy.client_hello_timeout),
        ("connect_timeout", proxy.connect_timeout),
        ("idle_timeout", proxy.idle_timeout),
        ("response_timeout", proxy.response_timeout),
        ("request_header_timeout", proxy.request_header_timeout),
        ("keepalive_timeout", proxy.keepalive_timeout),
        ("backend_idle_timeout", proxy.backend_idle_timeout),
        ("backend_eject_time", proxy.backend_eject_time),
    ] {
        if value.is_zero() {
            problem(format!("proxy.{name}"), "must be greater than zero".into());
        }
    }
    if proxy.backend_eject_after == 0 {
        problem(
            "proxy.backend_eject_after".into(),
            "must be at least 1 (failures in a row that eject a backend)".into(),
        );
    }
    if proxy.backend_eject_max_time < proxy.backend_eject_time {
        problem(
            "proxy.backend_eject_max_time".into(),
            format!(
                "must be at least backend_eject_time ({})",
                humantime::format_duration(proxy.backend_eject_time)
            ),
        );
    }
    if proxy.max_connections == 0 {
        problem("proxy.max_connections".into(), "must be at least 1".into());
    }
    if proxy.shutdown_delay > MAX_SHUTDOWN_DELAY {
        problem(
            "proxy.shutdown_delay".into(),
            format!(
                "must be at most {}",
                humantime::format_duration(MAX_SHUTDOWN_DELAY)
            ),
        );
    }
    {
        use crate::model::clients::CLIENT_TABLE_SIZE_RANGE as RANGE;
        if !RANGE.contains(&proxy.client_table_size) {
            problem(
                "proxy.client_table_size".into(),
                format!(
                    "must be between {} and {} slots",
                    RANGE.start(),
                    RANGE.end()
                ),
            );
        }
    }
    // HTTP/2 limits: each at least 1 (0 would refuse every stream or every byte), and no
    // larger than a client could need.
    for (name, value, max) in [
        (
            "h2_max_concurrent_streams",
            proxy.h2_max_concurrent_streams as usize,
            10_000,
        ),
        (
            "h2_max_pending_accept_reset_streams",
            proxy.h2_max_pending_accept_reset_streams,
            10_000,
        ),
        (
            "h2_max_local_error_reset_streams",
            proxy.h2_max_local_error_reset_streams,
            1_000_000,
        ),
        ("h2_max_send_buf_size", proxy.h2_max_send_buf_size, 16 << 20),
    ] {
        if !(1..=max).contains(&value) {
            problem(
                format!("proxy.{name}"),
                format!("must be between 1 and {max}"),
            );
        }
    }
    if proxy.h2_max_client_resets > 0 && proxy.h2_client_reset_window.is_zero() {
        problem(
            "proxy.h2_client_reset_window".into(),
            "must be greater than zero (set h2_max_client_resets = 0 to turn the limit off)".into(),
        );
    }
    if proxy.workers > MAX_WORKERS {
        problem(
            "proxy.workers".into(),
            format!("must be at most {MAX_WORKERS} (0: one per CPU)"),
        );
    }
    {
        use crate::model::state::{MAX_MAX_REQUEST_HEAD, MIN_MAX_REQUEST_HEAD};
        if !(MIN_MAX_REQUEST_HEAD..=MAX_MAX_REQUEST_HEAD).contains(&proxy.max_request_head) {
            problem(
                "proxy.max_request_head".into(),
                format!("must be between {MIN_MAX_REQUEST_HEAD} and {MAX_MAX_REQUEST_HEAD} bytes"),
            );
        }
    }
    proxy
}

/// `[metrics]`: the address, if any.
fn validate_metrics(file: &FileMetrics, problem: &mut impl FnMut(String, String)) -> MetricsConfig {
    MetricsConfig {
        addr: match file.addr.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => match text.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    problem(
                        "metrics.addr".into(),
                        format!(
                            "invalid address {text:?}: expected IP:port such as \
                             127.0.0.1:9100 or [::1]:9100"
                        ),
                    );
                    None
                }
            },
        },
    }
}

/// `[[listeners]]` with their routes: every problem named by listener and route; a route
/// whose certificate files fail is a file problem (it never stops a start), a route's
/// warnings are the file's.
fn validate_listeners(
    file: Vec<FileListener>,
    problem: &mut impl FnMut(String, String),
    file_problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) -> Vec<ListenerConfig> {
    let mut listeners = Vec::new();
    let mut seen_addrs: HashMap<SocketAddr, usize> = HashMap::new();
    // (index, address, name, named in the file): checked against each other at the end.
    let mut names: Vec<(usize, SocketAddr, String, bool)> = Vec::new();
    for (i, fl) in file.into_iter().enumerate() {
        let lctx = format!("listener {}", fl.addr);
        let addr = match fl.addr.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                problem(
                    format!("listeners[{i}]"),
                    format!(
                        "invalid addr {}: expected IP:port such as 127.0.0.1:8443 or [::]:443",
                        clip(&fl.addr)
                    ),
                );
                continue;
            }
        };
        // The database knows a listener by its configured address, so two listeners on
        // one address, port 0 included, cannot both be stored: refused here, not at start.
        if let Some(first) = seen_addrs.insert(addr, i) {
            problem(
                lctx.clone(),
                format!("duplicate listener address (also listeners[{first}])"),
            );
        }

        let name = fl.name.clone().unwrap_or_else(|| addr.to_string());
        if let Err(e) = check_listener_name(&name) {
            problem(format!("{lctx}, name"), e);
        }
        names.push((i, addr, name.clone(), fl.name.is_some()));

        let mut proxy_protocol_from = Vec::new();
        for (k, value) in fl.proxy_protocol_from.iter().enumerate() {
            match parse_net(value) {
                Some(net) => proxy_protocol_from.push(net),
                None => problem(
                    format!("{lctx}, proxy_protocol_from[{k}]"),
                    format!(
                        "invalid network {}: expected a CIDR such as 10.0.0.0/8 or an address",
                        clip(value)
                    ),
                ),
            }
        }
        if !proxy_protocol_from.is_empty() && !fl.proxy_protocol {
            warnings.push(format!(
                "{lctx}: proxy_protocol_from is set but proxy_protocol is false, so no \
                 header is read and the list has no effect"
            ));
        }
        let client_limits = mc_proxy_shared::ClientLimits::default()
            .patched(&mc_proxy_shared::ClientLimitsPatch {
                max_conns_per_client: fl.max_conns_per_client,
                new_conns_per_client: fl.new_conns_per_client,
                new_conns_burst: fl.new_conns_burst,
                client_ipv6_prefix: fl.client_ipv6_prefix,
            })
            .unwrap_or_else(|e| {
                problem(lctx.clone(), e.to_string());
                mc_proxy_shared::ClientLimits::default()
            });

        let kind = fl
            .kind
            .parse::<mc_proxy_shared::ListenerKind>()
            .unwrap_or_else(|e| {
                problem(format!("{lctx}, kind"), e.to_string());
                mc_proxy_shared::ListenerKind::Tls
            });
        if let Err(e) = check_kind_fields(kind, fl.redirect_port, fl.no_sni_route.as_deref()) {
            problem(lctx.clone(), e);
        }
        if kind == mc_proxy_shared::ListenerKind::Http && !fl.routes.is_empty() {
            for fr in &fl.routes {
                problem(
                    format!("{lctx}, route {}", clip(&fr.hostname)),
                    "an http listener holds no routes (it answers ACME http-01 challenges and \
                     redirects to https://): put the route on a tls listener"
                        .into(),
                );
            }
        }
        let mut routes = Vec::new();
        let mut seen_hosts: HashMap<String, usize> = HashMap::new();
        for (j, fr) in fl.routes.into_iter().enumerate() {
            let rctx = format!("{lctx}, route {}", fr.hostname);
            // Every field parsed here is parsed before giving up on the route, so that
            // each problem is reported.
            let mode = fr
                .mode
                .parse::<Mode>()
                .map_err(|e| problem(rctx.clone(), e.to_string()));
            let backend_protocol = fr
                .backend_protocol
                .parse::<BackendProtocol>()
                .map_err(|e| problem(rctx.clone(), e.to_string()));
            let balance = fr
                .balance
                .parse::<Balance>()
                .map_err(|e| problem(rctx.clone(), e.to_string()));
            let backends = file_backends(fr.backend, fr.backends).map_err(|errors| {
                for e in errors {
                    problem(rctx.clone(), e);
                }
            });
            let health_check = fr
                .health_check
                .map(FileHealthCheck::check)
                .transpose()
                .map_err(|e| problem(rctx.clone(), e));
            let (Ok(mode), Ok(backend_protocol), Ok(balance), Ok(backends), Ok(health_check)) =
                (mode, backend_protocol, balance, backends, health_check)
            else {
                continue;
            };
            let route = Route {
                hostname: fr.hostname,
                backends,
                balance,
                health_check,
                mode,
                tls_cert: fr.tls_cert,
                tls_key: fr.tls_key,
                backend_tls: fr.backend_tls,
                send_proxy_protocol: fr.send_proxy_protocol,
                backend_protocol,
                access_log: fr.access_log,
                limits: Box::new(mc_proxy_shared::limits::RouteLimits {
                    allow_from: fr.allow_from,
                    deny_from: fr.deny_from,
                    client_request_rate: fr.client_request_rate,
                    client_request_burst: fr.client_request_burst,
                    route_request_rate: fr.route_request_rate,
                    route_request_burst: fr.route_request_burst,
                    max_requests: fr.max_requests,
                    max_queue: fr.max_queue,
                    // Past u32 milliseconds it is out of range anyway: the check says so.
                    queue_timeout_ms: fr
                        .queue_timeout
                        .map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
                }),
                acme: fr.acme,
            };
            let route = match validate_route(&route) {
                Ok(valid) => {
                    warnings.extend(valid.warnings.iter().map(|w| format!("{rctx}: {w}")));
                    valid.route
                }
                // An ACME route whose fields are right: its certificate is the database's
                // (or the CA's, once ordered), never the file's business.
                Err(RouteError::AcmePending) => {
                    let hostname = route_name(&route.hostname)
                        .expect("validate_route checks the hostname before the certificate");
                    Route { hostname, ..route }
                }
                // Everything but the files is right (the files are loaded last): the
                // route is kept, and its files are a problem of their own kind.
                Err(RouteError::Cert(e)) => {
                    file_problems.push(Problem {
                        context: rctx.clone(),
                        message: e.to_string(),
                    });
                    let hostname = route_name(&route.hostname)
                        .expect("validate_route checks the hostname before the files");
                    Route { hostname, ..route }
                }
                // Something besides the files: every problem of the route, not the first.
                Err(_) => {
                    for p in route_problems(&route) {
                        match p {
                            RouteError::Cert(e) => file_problems.push(Problem {
                                context: rctx.clone(),
                                message: e.to_string(),
                            }),
                            other => problem(rctx.clone(), other.to_string()),
                        }
                    }
                    continue;
                }
            };
            if let Some(first) = seen_hosts.insert(route.hostname.clone(), j) {
                problem(
                    rctx,
                    format!("duplicate hostname on this listener (also routes[{first}])"),
                );
                continue;
            }
            routes.push(route);
        }
        let no_sni_route = match fl.no_sni_route.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(name) => match route_name(name).filter(|n| seen_hosts.contains_key(n)) {
                Some(name) => Some(name),
                None => {
                    problem(
                        format!("{lctx}, no_sni_route"),
                        format!("{} names no route on this listener", clip(name)),
                    );
                    None
                }
            },
        };
        listeners.push(ListenerConfig {
            addr,
            name,
            proxy_protocol: fl.proxy_protocol,
            proxy_protocol_from,
            no_sni_route,
            routes,
            access_log: fl.access_log,
            client_limits,
            kind,
            redirect_port: fl.redirect_port,
        });
    }
    listener_name_problems(&names, problem);
    listeners
}

/// What a listener's kind allows (the TOML and the admin API share it): `redirect_port`
/// (1 to 65535) only on an http listener, and no no-SNI route on one (it holds no routes).
pub fn check_kind_fields(
    kind: mc_proxy_shared::ListenerKind,
    redirect_port: Option<u16>,
    no_sni_route: Option<&str>,
) -> Result<(), String> {
    use mc_proxy_shared::ListenerKind;
    match (kind, redirect_port) {
        (ListenerKind::Tls, Some(_)) => {
            return Err(
                "redirect_port is for http listeners (kind = \"http\"); a tls listener \
                 redirects nothing"
                    .into(),
            );
        }
        (ListenerKind::Http, Some(0)) => {
            return Err("redirect_port must be 1 to 65535".into());
        }
        _ => {}
    }
    if kind == ListenerKind::Http && no_sni_route.is_some_and(|r| !r.trim().is_empty()) {
        return Err("no_sni_route is for tls listeners: an http listener holds no routes".into());
    }
    Ok(())
}

/// Names are unique, and no name is another listener's address: a request naming a listener
/// must find one listener whichever way it names it. Port-0 listeners (tests) repeat their
/// address, so their default names may repeat too.
fn listener_name_problems(
    names: &[(usize, SocketAddr, String, bool)],
    problem: &mut impl FnMut(String, String),
) {
    let mut seen: HashMap<&str, (usize, bool)> = HashMap::new();
    for (i, addr, name, named) in names {
        let ctx = format!("listener {addr}, name");
        // Two default names are two equal addresses: the address rule's to report (or two
        // port-0 listeners, which may repeat).
        if let Some((first, first_named)) = seen.insert(name.as_str(), (*i, *named))
            && (*named || first_named)
        {
            problem(
                ctx.clone(),
                format!("{} is also the name of listeners[{first}]", clip(name)),
            );
        }
        if let Some((j, ..)) = names
            .iter()
            .find(|(j, other, ..)| j != i && other != addr && other.to_string() == *name)
        {
            problem(
                ctx,
                format!("{} is the address of listeners[{j}]", clip(name)),
            );
        }
    }
}

/// A CIDR, or a bare address meaning just that host. Host bits are cleared.
pub fn parse_net(value: &str) -> Option<IpNet> {
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .ok()
        .map(|net| net.trunc())
}

fn validate_firewall(
    file: &FileFirewall,
    problem: &mut impl FnMut(String, String),
) -> FirewallConfig {
    let mut fw = FirewallConfig::default();
    // The one rule parser (also the admin API's); its text always parses back.
    for (i, ip) in file.blocked_ips.iter().enumerate() {
        match parse_rule(FirewallRuleKind::Ip, ip) {
            Ok(rule) => fw.blocked_ips.extend(rule.value.parse::<IpAddr>()),
            Err(e) => problem(format!("firewall.blocked_ips[{i}]"), e.to_string()),
        }
    }
    for (i, cidr) in file.blocked_cidrs.iter().enumerate() {
        match parse_rule(FirewallRuleKind::Cidr, cidr) {
            Ok(rule) => fw.blocked_cidrs.extend(rule.value.parse::<IpNet>()),
            Err(e) => problem(format!("firewall.blocked_cidrs[{i}]"), e.to_string()),
        }
    }
    fw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp dir with a self-signed cert/key pair for `web.test` and a second, unrelated key.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["web.test".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            std::fs::write(dir.path().join("web.pem"), cert.pem()).unwrap();
            std::fs::write(dir.path().join("web.key"), key.serialize_pem()).unwrap();
            let other = rcgen::KeyPair::generate().unwrap();
            std::fs::write(dir.path().join("other.key"), other.serialize_pem()).unwrap();
            Fixture { dir }
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }

        fn parse(&self, listeners: &str) -> Result<Config, ConfigError> {
            let text = format!("[database]\npath = \"x.db\"\n{listeners}");
            Config::parse(&self.dir.path().join("mc-proxy.toml"), &text)
        }

        /// Every problem `mc-proxy check` reports: those that make the config unusable, or
        /// else the route files that do not load (which do not stop a start).
        fn problems(&self, listeners: &str) -> Vec<String> {
            match self.parse(listeners) {
                Err(ConfigError::Invalid { problems, .. }) => {
                    problems.iter().map(|p| p.to_string()).collect()
                }
                Err(other) => vec![other.to_string()],
                Ok(config) if !config.file_problems.is_empty() => {
                    config.file_problems.iter().map(|p| p.to_string()).collect()
                }
                Ok(_) => panic!("config should not validate:\n{listeners}"),
            }
        }
    }

    #[test]
    fn acme_routes_need_a_ca_no_files_and_l7() {
        let f = Fixture::new();
        let route = |extra: &str| {
            format!(
                "[[listeners]]\naddr = \"127.0.0.1:8443\"\n[[listeners.routes]]\n\
                 hostname = \"a.test\"\nbackend = \"127.0.0.1:9\"\n{extra}"
            )
        };
        let acme = "[acme]\nterms_of_service_agreed = true\n";
        let p = f.problems(&route("mode = \"l7\"\nacme = true\n"));
        assert!(
            p.iter()
                .any(|p| p.contains("route a.test") && p.contains("needs an [acme] section")),
            "{p:?}"
        );
        let p = f.problems(&format!(
            "{acme}{}",
            route("mode = \"l7\"\nacme = true\ntls_cert = \"/x.pem\"\ntls_key = \"/x.key\"\n")
        ));
        assert!(p.iter().any(|p| p.contains("one or the other")), "{p:?}");
        let p = f.problems(&format!("{acme}{}", route("acme = true\n")));
        assert!(
            p.iter().any(|p| p.contains("acme is for l7 routes")),
            "{p:?}"
        );
        // Right: no files needed, nothing loaded at parse time.
        let config = f
            .parse(&format!("{acme}{}", route("mode = \"l7\"\nacme = true\n")))
            .unwrap();
        assert!(config.listeners[0].routes[0].acme);
        assert!(config.file_problems.is_empty());
        assert_eq!(
            config.acme.unwrap().directory,
            crate::control::acme::settings::LETS_ENCRYPT
        );
    }

    #[test]
    fn valid_l4_and_l7_routes_load() {
        let f = Fixture::new();
        let config = f
            .parse(&format!(
                r#"
                [proxy]
                connect_timeout = "2s"
                idle_timeout = "1m 30s"
                [[listeners]]
                addr = "127.0.0.1:8443"
                proxy_protocol = true
                [[listeners.routes]]
                hostname = "app.test"
                backend = "127.0.0.1:9443"
                mode = "l4"
                send_proxy_protocol = true
                [[listeners.routes]]
                hostname = "web.test"
                backend = "localhost:9080"
                mode = "l7"
                tls_cert = "{}"
                tls_key = "{}"
                backend_tls = true
                access_log = true
                [[listeners]]
                addr = "127.0.0.1:8444"
                access_log = true
                "#,
                f.path("web.pem"),
                f.path("web.key")
            ))
            .unwrap();
        assert_eq!(config.proxy.connect_timeout, Duration::from_secs(2));
        assert_eq!(config.proxy.idle_timeout, Duration::from_secs(90));
        assert_eq!(config.proxy.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.proxy.max_request_head, 64 * 1024, "the default");
        let l = &config.listeners[0];
        assert!(l.proxy_protocol);
        assert_eq!(l.routes[0].mode, Mode::L4);
        assert!(l.routes[0].send_proxy_protocol);
        assert_eq!(l.routes[1].mode, Mode::L7);
        assert!(l.routes[1].backend_tls);
        // Off unless said: the first listener and route did not.
        assert!(!l.access_log && !l.routes[0].access_log);
        assert!(l.routes[1].access_log);
        assert!(config.listeners[1].access_log);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn max_request_head_is_read_and_bounded() {
        let f = Fixture::new();
        let config = f.parse("[proxy]\nmax_request_head = 16384\n").unwrap();
        assert_eq!(config.proxy.max_request_head, 16384);
        for bad in ["0", "8191", "16777217"] {
            let problems = f.problems(&format!("[proxy]\nmax_request_head = {bad}\n"));
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert!(
                problems[0].contains("proxy.max_request_head"),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn mode_defaults_to_l4() {
        let f = Fixture::new();
        let config = f
            .parse(
                r#"
                [[listeners]]
                addr = "127.0.0.1:8443"
                [[listeners.routes]]
                hostname = "App.Test."
                backend = "127.0.0.1:9443"
                [[listeners.routes]]
                hostname = "b.test"
                backend = "127.0.0.1:9444"
                mode = ""
                "#,
            )
            .unwrap();
        let routes = &config.listeners[0].routes;
        assert_eq!(routes[0].mode, Mode::L4);
        assert_eq!(routes[0].hostname, "app.test");
        assert_eq!(routes[1].mode, Mode::L4);
        assert!(!config.listeners[0].proxy_protocol);
    }

    #[test]
    fn check_reports_every_problem_of_one_route_not_only_the_first() {
        let f = Fixture::new();
        let problems = f.problems(
            r#"
            [[listeners]]
            addr = "127.0.0.1:8443"
            [[listeners.routes]]
            hostname = "bad host"
            backends = []
            mode = "l7"
            backend_protocol = "auto"
            "#,
        );
        let route = "listener 127.0.0.1:8443, route bad host: ";
        let expected = [
            "invalid hostname",
            "a route needs at least one backend",
            "mode l7 needs tls_cert",
            "mode l7 needs tls_key",
            "backend_protocol auto needs backend_tls",
        ];
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
        for (p, e) in problems.iter().zip(expected) {
            assert!(p.starts_with(&format!("{route}{e}")), "{p}");
        }
    }

    #[test]
    fn certificate_files_that_fail_are_file_problems_that_do_not_stop_a_start() {
        let f = Fixture::new();
        let config = f
            .parse(&format!(
                r#"
            [[listeners]]
            addr = "127.0.0.1:8443"
            [[listeners.routes]]
            hostname = "Gone.Test."
            backend = "127.0.0.1:9080"
            mode = "l7"
            tls_cert = "{dir}/absent.pem"
            tls_key = "{key}"
            [[listeners.routes]]
            hostname = "plain.test"
            backend = "127.0.0.1:9443"
            "#,
                key = f.path("web.key"),
                dir = f.dir.path().display(),
            ))
            .expect("one route's files never make the config unusable");
        // The route is kept, normalised, for seeding (and left out of service at load).
        let hosts: Vec<&str> = config.listeners[0]
            .routes
            .iter()
            .map(|r| r.hostname.as_str())
            .collect();
        assert_eq!(hosts, ["gone.test", "plain.test"]);
        assert_eq!(config.file_problems.len(), 1, "{:?}", config.file_problems);
        let p = config.file_problems[0].to_string();
        assert!(
            p.starts_with("listener 127.0.0.1:8443, route Gone.Test.: "),
            "names listener and route as written: {p}"
        );
        assert!(p.contains("cannot read tls_cert"), "{p}");
    }

    #[test]
    fn l7_without_cert_or_key_is_rejected_naming_listener_and_route() {
        let f = Fixture::new();
        let problems = f.problems(&format!(
            r#"
            [[listeners]]
            addr = "127.0.0.1:8443"
            [[listeners.routes]]
            hostname = "nocert.test"
            backend = "127.0.0.1:9080"
            mode = "l7"
            tls_key = "{key}"
            [[listeners.routes]]
            hostname = "nokey.test"
            backend = "127.0.0.1:9080"
            mode = "l7"
            tls_cert = "{cert}"
            [[listeners.routes]]
            hostname = "missingfile.test"
            backend = "127.0.0.1:9080"
            mode = "l7"
            tls_cert = "{dir}/absent.pem"
            tls_key = "{key}"
            "#,
            key = f.path("web.key"),
            cert = f.path("web.pem"),
            dir = f.dir.path().display(),
        ));
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("listener 127.0.0.1:8443, route nocert.test"));
        assert!(problems[0].contains("needs tls_cert"), "{}", problems[0]);
        assert!(problems[1].contains("route nokey.test"));
        assert!(problems[1].contains("needs tls_key"), "{}", problems[1]);
        assert!(
            problems[2].contains("cannot read tls_cert"),
            "{}",
            problems[2]
        );
        assert!(problems[2].contains("absent.pem"), "{}", problems[2]);
    }

    #[test]
    fn mismatched_cert_and_key_is_rejected() {
        let f = Fixture::new();
        let problems = f.problems(&format!(
            r#"
            [[listeners]]
            addr = "127.0.0.1:8443"
            [[listeners.routes]]
            hostname = "web.test"
            backend = "127.0.0.1:9080"
            mode = "l7"
            tls_cert = "{}"
            tls_key = "{}"
            "#,
            f.path("web.pem"),
            f.path("other.key"),
        ));
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].contains("does not match"), "{}", problems[0]);
    }

    #[test]
    fn cert_that_is_not_pem_is_rejected() {
        let f = Fixture::new();
        let problems = f.problems(&format!(
            r#"
            [[listeners]]
            addr = "127.0.0.1:8443"
            [[listeners.routes]]
            hostname = "web.test"
            backend = "127.0.0.1:9080"
            mode = "l7"
            tls_cert = "{}"
            tls_key = "{}"
            "#,
            f.path("web.key"),
            f.path("web.key"),
        ));
        assert!(
            problems[0].contains("no valid PEM certificate"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn invalid_mode_is_rejected() {
        let f = Fixture::new();
        let problems = f.problems(
            r#"
            [[listeners]]
            addr = "127.0.0.1:8443"
            [[listeners.routes]]
            hostname = "app.test"
            backend = "127.0.0.1:9443"
            mode = "tcp"
            "#,
        );
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("route app.test"), "{}", problems[0]);
        assert!(
            problems[0].contains("invalid mode \"tcp\""),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn backend_protocol_defaults_to_h2_and_takes_every_value() {
        let f = Fixture::new();
        let l7 = |hostname: &str, extra: &str| {
            format!(
                "[[listeners.routes]]\nhostname = \"{hostname}\"\nbackend = \"127.0.0.1:9080\"\n\
                 mode = \"l7\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}\n",
                f.path("web.pem"),
                f.path("web.key")
            )
        };
        let config = f
            .parse(&format!(
                "[[listeners]]\naddr = \"127.0.0.1:8443\"\n{}{}{}{}{}{}",
                l7("a.test", ""),
                l7("b.test", "backend_protocol = \"\""),
                l7("c.test", "backend_protocol = \"h2\"\nbackend_tls = true"),
                l7("d.test", "backend_protocol = \"http1\""),
                l7("e.test", "backend_protocol = \"http1\"\nbackend_tls = true"),
                l7("f.test", "backend_protocol = \"auto\"\nbackend_tls = true"),
            ))
            .unwrap();
        let got: Vec<(&str, BackendProtocol, bool)> = config.listeners[0]
            .routes
            .iter()
            .map(|r| (r.hostname.as_str(), r.backend_protocol, r.backend_tls))
            .collect();
        use BackendProtocol::{Auto, H2, Http1};
        assert_eq!(
            got,
            [
                ("a.test", H2, false),
                ("b.test", H2, false),
                ("c.test", H2, true),
                ("d.test", Http1, false),
                ("e.test", Http1, true),
                ("f.test", Auto, true),
            ]
        );
        // web.pem covers web.test only, hence one name warning per route and nothing else.
        assert!(
            config
                .warnings
                .iter()
                .all(|w| !w.contains("backend_protocol")),
            "{:?}",
            config.warnings
        );
    }

    #[test]
    fn bad_backend_protocol_and_auto_without_backend_tls_name_listener_and_route() {
        let f = Fixture::new();
        let long = "h".repeat(100);
        let problems = f.problems(&format!(
            r#"
            [[listeners]]
            addr = "127.0.0.1:8443"
            [[listeners.routes]]
            hostname = "a.test"
            backend = "127.0.0.1:9443"
            backend_protocol = "h3"
            [[listeners.routes]]
            hostname = "b.test"
            backend = "127.0.0.1:9443"
            backend_protocol = "{long}"
            [[listeners.routes]]
            hostname = "c.test"
            backend = "127.0.0.1:9443"
            mode = "tcp"
            backend_protocol = "HTTP1"
            [[listeners.routes]]
            hostname = "web.test"
            backend = "127.0.0.1:9080"
            mode = "l7"
            tls_cert = "{cert}"
            tls_key = "{key}"
            backend_protocol = "auto"
            "#,
            cert = f.path("web.pem"),
            key = f.path("web.key"),
        ));
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert_eq!(
            problems[0],
            "listener 127.0.0.1:8443, route a.test: invalid backend_protocol \"h3\": \
             expected \"h2\", \"http1\" or \"auto\" (empty means \"h2\")"
        );
        assert!(
            problems[1].starts_with(&format!(
                "listener 127.0.0.1:8443, route b.test: invalid backend_protocol \"{}…\" \
                 (100 bytes)",
                "h".repeat(64)
            )),
            "{}",
            problems[1]
        );
        // A bad mode does not hide a bad backend_protocol on the same route.
        assert!(
            problems[2].starts_with("listener 127.0.0.1:8443, route c.test: invalid mode \"tcp\""),
            "{}",
            problems[2]
        );
        assert!(
            problems[3].starts_with(
                "listener 127.0.0.1:8443, route c.test: invalid backend_protocol \"HTTP1\""
            ),
            "{}",
            problems[3]
        );
        assert_eq!(
            problems[4],
            "listener 127.0.0.1:8443, route web.test: backend_protocol auto needs backend_tls \
             (the backend picks h2 or http/1.1 by ALPN, in the TLS handshake): set backend_tls, \
             or use h2 or http1 for a cleartext backend"
        );
    }

    #[test]
    fn no_cluster_section_means_no_cluster_and_its_problems_name_file_and_key() {
        let f = Fixture::new();
        assert!(f.parse("").unwrap().cluster.is_none());
        let err = f
            .parse("[cluster]\nendpoints = [\"http://h:1\"]\nname = \"n\"\nprefix = \"x\"\n")
            .unwrap_err();
        let lines = err.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].ends_with("mc-proxy.toml: cluster.prefix: \"x\": must start with / and name something, such as /mc-proxy/prod"),
            "{lines:?}"
        );
        let c = f
            .parse("[cluster]\nendpoints = [\"http://h:1\"]\nname = \"n\"\n")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.name, "n");
    }

    #[test]
    fn listener_names_default_to_the_address_and_may_be_set() {
        let f = Fixture::new();
        let config = f
            .parse(
                r#"
                [[listeners]]
                addr = "127.0.0.1:8443"
                [[listeners]]
                addr = "[::1]:8443"
                name = "edge-v6"
                [[listeners]]
                addr = "127.0.0.1:0"
                "#,
            )
            .unwrap();
        let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["127.0.0.1:8443", "edge-v6", "127.0.0.1:0"]);
        // Port 0 twice: one address the database could not store twice, refused here.
        let p = f.problems(
            "[[listeners]]\naddr = \"127.0.0.1:0\"\n[[listeners]]\naddr = \"127.0.0.1:0\"\n",
        );
        assert!(
            p.iter().any(|p| p.contains("duplicate listener address")),
            "{p:?}"
        );
        assert_eq!(
            config.listeners[1].add_command(),
            "mcproxyctl listeners add [::1]:8443 --name edge-v6"
        );
        assert_eq!(
            config.listeners[0].add_command(),
            "mcproxyctl listeners add 127.0.0.1:8443"
        );
        assert_eq!(
            config.listeners[1].name_differs(&config.path, "edge-v6"),
            None
        );
        let line = config.listeners[1]
            .name_differs(&config.path, "[::1]:8443")
            .unwrap();
        assert!(
            line.contains("named edge-v6 in") && line.contains("but [::1]:8443 in the database")
        );
    }

    #[test]
    fn listener_names_are_checked_unique_and_never_another_address() {
        let f = Fixture::new();
        let problems = f.problems(
            r#"
            [[listeners]]
            addr = "127.0.0.1:8443"
            name = "edge"
            [[listeners]]
            addr = "127.0.0.1:8444"
            name = "edge"
            [[listeners]]
            addr = "127.0.0.1:8445"
            name = "127.0.0.1:8443"
            [[listeners]]
            addr = "127.0.0.1:8446"
            name = "bad name"
            [[listeners]]
            addr = "127.0.0.1:8447"
            name = ""
            "#,
        );
        assert_eq!(
            problems,
            [
                "listener 127.0.0.1:8446, name: listener name \"bad name\" may only hold \
                 letters, digits and . _ : [ ] -",
                "listener 127.0.0.1:8447, name: listener name \"\" must be 1 to 64 characters",
                "listener 127.0.0.1:8444, name: \"edge\" is also the name of listeners[0]",
                "listener 127.0.0.1:8445, name: \"127.0.0.1:8443\" is the address of listeners[0]",
            ]
        );
    }

    #[test]
    fn listener_name_rules() {
        use crate::model::state::check_listener_name;
        for good in [
            "a",
            "edge-1",
            "127.0.0.1:8443",
            "[::1]:443",
            "eu_1.public",
            &"n".repeat(64),
        ] {
            assert_eq!(check_listener_name(good), Ok(()), "{good}");
        }
        for bad in ["", "a b", "a/b", "é", "a,b", "x\n", &"n".repeat(65)] {
            assert!(check_listener_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn duplicate_hostname_on_one_listener_is_rejected_but_allowed_across_listeners() {
        let f = Fixture::new();
        let problems = f.problems(
            r#"
            [[listeners]]
            addr = "127.0.0.1:8443"
            [[listeners.routes]]
            hostname = "app.test"
            backend = "127.0.0.1:9443"
            [[listeners.routes]]
            hostname = "APP.test"
            backend = "127.0.0.1:9444"
            [[listeners]]
            addr = "127.0.0.1:8444"
            [[listeners.routes]]
            hostname = "app.test"
            backend = "127.0.0.1:9443"
            "#,
        );
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].contains("listener 127.0.0.1:8443, route APP.test"));
        assert!(
            problems[0].contains("duplicate hostname"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn a_no_sni_route_must_name_a_route_of_its_listener() {
        let f = Fixture::new();
        let routes = "[[listeners.routes]]\nhostname = \"a.test\"\nbackend = \"127.0.0.1:1\"\n";
        let ok = f
            .parse(&format!(
                "[[listeners]]\naddr = \"127.0.0.1:1\"\nno_sni_route = \"A.test\"\n{routes}"
            ))
            .unwrap();
        assert_eq!(ok.listeners[0].no_sni_route.as_deref(), Some("a.test"));
        let err = f
            .parse(&format!(
                "[[listeners]]\naddr = \"127.0.0.1:1\"\nno_sni_route = \"b.test\"\n{routes}"
            ))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("listener 127.0.0.1:1, no_sni_route"), "{msg}");
        assert!(msg.contains("\"b.test\" names no route"), "{msg}");
    }

    #[test]
    fn metrics_is_off_by_default_and_a_bad_address_names_the_key() {
        let f = Fixture::new();
        assert_eq!(f.parse("").unwrap().metrics.addr, None);
        let config = f.parse("[metrics]\naddr = \"127.0.0.1:9100\"").unwrap();
        assert_eq!(config.metrics.addr, Some("127.0.0.1:9100".parse().unwrap()));
        let lines = f
            .parse("[metrics]\naddr = \"localhost:9100\"")
            .unwrap_err()
            .lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].ends_with(
                "mc-proxy.toml: metrics.addr: invalid address \"localhost:9100\": \
                 expected IP:port such as 127.0.0.1:9100 or [::1]:9100"
            ),
            "{lines:?}"
        );
        let err = f.parse("[metrics]\nport = 9100").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let f = Fixture::new();
        let err = f
            .parse(
                r#"
                [[listeners]]
                addr = "127.0.0.1:8443"
                [[listeners.routes]]
                hostname = "app.test"
                backend = "127.0.0.1:9443"
                send_proxy_protocl = true
                "#,
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }), "{msg}");
        assert!(msg.contains("send_proxy_protocl"), "{msg}");
        assert!(msg.contains("mc-proxy.toml"), "{msg}");
    }

    #[test]
    fn bad_addresses_hostnames_and_duplicates_are_all_reported_at_once() {
        let f = Fixture::new();
        let problems = f.problems(
            r#"
            [firewall]
            blocked_ips = ["192.0.2.300"]
            blocked_cidrs = ["198.51.100.0/40"]
            [[listeners]]
            addr = "localhost:8443"
            [[listeners]]
            addr = "127.0.0.1:8443"
            [[listeners.routes]]
            hostname = ""
            backend = "127.0.0.1:9443"
            [[listeners.routes]]
            hostname = "bad name.test"
            backend = "127.0.0.1:9443"
            [[listeners.routes]]
            hostname = "a.test"
            backend = "127.0.0.1"
            [[listeners.routes]]
            hostname = "b.test"
            backend = "::1:443"
            [[listeners.routes]]
            hostname = "c.test"
            backend = "127.0.0.1:0"
            [[listeners]]
            addr = "127.0.0.1:8443"
            "#,
        );
        let all = problems.join("\n");
        assert_eq!(problems.len(), 9, "{all}");
        for needle in [
            "firewall.blocked_ips[0]",
            "firewall.blocked_cidrs[0]",
            "listeners[0]: invalid addr \"localhost:8443\"",
            "route : invalid hostname \"\"",
            "route bad name.test: invalid hostname",
            "route a.test: invalid backend \"127.0.0.1\"",
            "route b.test: invalid backend \"::1:443\": IPv6 addresses need brackets",
            "route c.test: invalid backend \"127.0.0.1:0\"",
            "listener 127.0.0.1:8443: duplicate listener address",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn workers_default_to_one_per_cpu_and_a_huge_count_is_refused() {
        let f = Fixture::new();
        let listener = "[[listeners]]\naddr = \"127.0.0.1:8443\"\n";
        let config = f.parse(listener).unwrap();
        assert_eq!(config.proxy.workers, 0, "0: one per CPU");
        let config = f
            .parse(&format!("[proxy]\nworkers = 3\n{listener}"))
            .unwrap();
        assert_eq!(config.proxy.workers, 3);
        let problems = f.problems(&format!("[proxy]\nworkers = 100000\n{listener}"));
        assert_eq!(
            problems,
            [format!(
                "proxy.workers: must be at most {MAX_WORKERS} (0: one per CPU)"
            )]
        );
    }

    #[test]
    fn cert_on_l4_route_is_a_warning_and_backend_tls_is_ignored() {
        let f = Fixture::new();
        let config = f
            .parse(
                r#"
                [[listeners]]
                addr = "127.0.0.1:8443"
                [[listeners.routes]]
                hostname = "app.test"
                backend = "127.0.0.1:9443"
                tls_cert = "whatever.pem"
                backend_tls = true
                [[listeners.routes]]
                hostname = "auto.test"
                backend = "127.0.0.1:9444"
                backend_protocol = "auto"
                "#,
            )
            .unwrap();
        assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
        assert!(config.warnings[0].contains("route app.test"));
        assert!(config.warnings[0].contains("not used"));
        // backend_protocol is ignored on L4 the same way, auto without backend_tls included;
        // being a choice of protocol rather than a leftover flag, it is warned about.
        assert_eq!(
            config.warnings[1],
            "listener 127.0.0.1:8443, route auto.test: backend_protocol auto is set on an l4 \
             route and is not used: l4 passes TLS through to the backend"
        );
        let routes = &config.listeners[0].routes;
        assert!(routes[0].backend_tls, "kept as written");
        assert_eq!(
            routes[1].backend_protocol,
            BackendProtocol::Auto,
            "kept as written"
        );
    }

    #[test]
    fn proxy_protocol_from_takes_networks_and_addresses() {
        let f = Fixture::new();
        let config = f
            .parse(
                r#"
                [[listeners]]
                addr = "127.0.0.1:8443"
                proxy_protocol = true
                proxy_protocol_from = ["10.1.2.3/8", "192.0.2.7", "2001:db8::/32"]
                "#,
            )
            .unwrap();
        let from: Vec<String> = config.listeners[0]
            .proxy_protocol_from
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(from, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert!(config.warnings.is_empty());

        let problems = f.problems(
            r#"
            [[listeners]]
            addr = "127.0.0.1:8443"
            proxy_protocol = true
            proxy_protocol_from = ["10.0.0.0/8", "lb.example.com"]
            "#,
        );
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .contains("listener 127.0.0.1:8443, proxy_protocol_from[1]: invalid network"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn client_limits_are_read_per_listener_and_checked_by_the_shared_rules() {
        let f = Fixture::new();
        let config = f
            .parse(
                r#"
                [proxy]
                client_table_size = 4096
                [[listeners]]
                addr = "127.0.0.1:8443"
                max_conns_per_client = 20
                new_conns_per_client = 10
                new_conns_burst = 40
                client_ipv6_prefix = 56
                [[listeners]]
                addr = "127.0.0.1:8444"
                "#,
            )
            .unwrap();
        let limits = config.listeners[0].client_limits;
        assert_eq!(
            (
                limits.max_conns_per_client,
                limits.new_conns_per_client,
                limits.new_conns_burst,
                limits.client_ipv6_prefix
            ),
            (20, 10, 40, 56)
        );
        assert_eq!(
            config.listeners[1].client_limits,
            mc_proxy_shared::ClientLimits::default()
        );
        assert_eq!(config.proxy.client_table_size, 4096);
        assert!(
            config.listeners[0].add_command().ends_with(
                "--max-conns-per-client 20 --new-conns-per-client 10 \
                            --new-conns-burst 40 --client-ipv6-prefix 56"
            ),
            "{}",
            config.listeners[0].add_command()
        );

        let problems = f.problems(
            r#"
            [proxy]
            client_table_size = 10
            [[listeners]]
            addr = "127.0.0.1:8443"
            new_conns_burst = 5
            "#,
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("proxy.client_table_size"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("listener 127.0.0.1:8443: new_conns_burst is set"),
            "{problems:?}"
        );
    }

    #[test]
    fn route_access_lists_are_read_in_canonical_form_and_bad_entries_named() {
        let f = Fixture::new();
        let config = f
            .parse(
                r#"
                [[listeners]]
                addr = "127.0.0.1:8443"
                [[listeners.routes]]
                hostname = "a.test"
                backend = "127.0.0.1:9000"
                allow_from = ["10.1.2.3/8", "192.0.2.7"]
                deny_from = ["10.6.6.0/24"]
                "#,
            )
            .unwrap();
        let limits = &config.listeners[0].routes[0].limits;
        assert_eq!(limits.allow_from, ["10.0.0.0/8", "192.0.2.7/32"]);
        assert_eq!(limits.deny_from, ["10.6.6.0/24"]);

        let problems = f.problems(
            r#"
            [[listeners]]
            addr = "127.0.0.1:8443"
            [[listeners.routes]]
            hostname = "a.test"
            backend = "127.0.0.1:9000"
            deny_from = ["office"]
            "#,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("route a.test: deny_from[0]: \"office\" is not an address"),
            "{problems:?}"
        );
    }

    #[test]
    fn h2_limits_default_to_the_former_constants_and_are_bounded() {
        // `l7::limits`' constants (a layer above this one), before they were settings.
        const MAX_CONCURRENT_STREAMS: u32 = 100;
        const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
        const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 100;
        const MAX_SEND_BUF_SIZE: usize = 400 * 1024;
        let f = Fixture::new();
        let config = f.parse("").unwrap();
        let p = &config.proxy;
        assert_eq!(
            (
                p.h2_max_concurrent_streams,
                p.h2_max_pending_accept_reset_streams,
                p.h2_max_local_error_reset_streams,
                p.h2_max_send_buf_size,
                p.h2_max_client_resets,
                p.h2_client_reset_window,
            ),
            (
                MAX_CONCURRENT_STREAMS,
                MAX_PENDING_ACCEPT_RESET_STREAMS,
                MAX_LOCAL_ERROR_RESET_STREAMS,
                MAX_SEND_BUF_SIZE,
                100,
                Duration::from_secs(10),
            )
        );
        let config = f
            .parse("[proxy]\nh2_max_concurrent_streams = 32\nh2_client_reset_window = \"1s\"\n")
            .unwrap();
        assert_eq!(config.proxy.h2_max_concurrent_streams, 32);
        assert_eq!(config.proxy.h2_client_reset_window, Duration::from_secs(1));
        let problems = f.problems("[proxy]\nh2_max_concurrent_streams = 0\n");
        assert!(
            problems[0].contains("proxy.h2_max_concurrent_streams: must be between 1 and"),
            "{problems:?}"
        );
        // A reload applies them to new connections.
        let (_, report) = ProxyConfig::default().reload(&config.proxy);
        assert!(
            report
                .applied
                .iter()
                .any(|a| a.starts_with("h2_max_concurrent_streams")),
            "{report:?}"
        );
    }

    #[test]
    fn proxy_protocol_from_without_proxy_protocol_is_a_warning() {
        let f = Fixture::new();
        let config = f
            .parse(
                r#"
                [[listeners]]
                addr = "127.0.0.1:8443"
                proxy_protocol_from = ["10.0.0.0/8"]
                "#,
            )
            .unwrap();
        assert_eq!(config.warnings.len(), 1);
        assert!(
            config.warnings[0].contains("no effect"),
            "{}",
            config.warnings[0]
        );
    }

    #[test]
    fn bad_duration_names_the_key() {
        let f = Fixture::new();
        let err = f.parse("[proxy]\nidle_timeout = \"soon\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("idle_timeout"), "{msg}");
        assert!(msg.contains("invalid duration \"soon\""), "{msg}");
    }

    fn one_route(body: &str) -> String {
        format!(
            "[[listeners]]\naddr = \"127.0.0.1:8443\"\n[[listeners.routes]]\n\
             hostname = \"app.test\"\n{body}\n"
        )
    }

    /// The table form carries an admin state (what `mcproxyctl export` writes for a drained
    /// or disabled member); a state that is none of the three names the route and backend.
    #[test]
    fn a_backend_table_takes_an_admin_state() {
        let f = Fixture::new();
        let config = f
            .parse(&one_route(
                r#"backends = [{ address = "10.0.0.1:443", state = "draining" }, { address = "10.0.0.2:443", weight = 2, state = "enabled" }]"#,
            ))
            .unwrap();
        let mut drained = RouteBackend::new("10.0.0.1:443");
        drained.state = mc_proxy_shared::AdminState::Draining;
        assert_eq!(
            config.listeners[0].routes[0].backends,
            [drained, RouteBackend::new("10.0.0.2:443").with_weight(2)]
        );
        let err = f
            .parse(&one_route(
                r#"backends = [{ address = "10.0.0.1:443", state = "off" }]"#,
            ))
            .unwrap_err()
            .to_string();
        assert!(err.contains("route app.test"), "{err}");
        assert!(
            err.contains(r#"backends[0]: backend "10.0.0.1:443": invalid backend state "off""#),
            "{err}"
        );
    }

    #[test]
    fn backends_take_strings_tables_and_the_weight_form_mixed() {
        let f = Fixture::new();
        let config = f
            .parse(&one_route(
                r#"backends = ["10.0.0.1:443", { address = "10.0.0.2:443", weight = 3 }, "b.internal:443 weight=2"]
                balance = "least_conn"
                [listeners.routes.health_check]
                interval = "500ms"
                timeout = "200ms"
                fall = 5"#,
            ))
            .unwrap();
        let route = &config.listeners[0].routes[0];
        assert_eq!(
            route.backends,
            vec![
                RouteBackend::new("10.0.0.1:443"),
                RouteBackend::new("10.0.0.2:443").with_weight(3),
                RouteBackend::new("b.internal:443").with_weight(2),
            ]
        );
        assert_eq!(route.balance, Balance::LeastConn);
        let check = route.health_check.as_ref().unwrap();
        assert_eq!(
            check,
            &HealthCheck {
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(200),
                fall: 5,
                ..HealthCheck::default()
            }
        );
        // The one-member form, round robin and no check by default.
        let config = f.parse(&one_route("backend = \"127.0.0.1:1\"")).unwrap();
        let route = &config.listeners[0].routes[0];
        assert_eq!(route.backends, vec![RouteBackend::new("127.0.0.1:1")]);
        assert_eq!(
            (route.balance, &route.health_check),
            (Balance::RoundRobin, &None)
        );
    }

    #[test]
    fn backend_set_errors_name_the_listener_and_route() {
        let f = Fixture::new();
        let ctx = "listener 127.0.0.1:8443, route app.test";
        let cases = [
            (
                "backend = \"a:1\"\nbackends = [\"b:1\"]",
                "both backend and backends are set",
            ),
            ("mode = \"l4\"", "no backend: set backend"),
            ("backends = []", "a route needs at least one backend"),
            (
                "backends = [\"a:1\", { address = \"a:1\", weight = 2 }]",
                "duplicate backend \"a:1\"",
            ),
            (
                "backends = [{ address = \"a:1\", weight = 0 }]",
                "backend \"a:1\": weight 0 is not from 1 to 256",
            ),
            (
                "backends = [\"a:1 weight=257\"]",
                "backend \"a:1\": weight 257 is not from 1 to 256",
            ),
            (
                "backends = [{ address = \"a:1\", weight = -1 }]",
                "backends[0]: backend \"a:1\": weight -1 is not from 1 to 256",
            ),
            (
                "backends = [\"a:1 w=2\"]",
                "backends[0]: invalid backend \"a:1 w=2\"",
            ),
            ("backends = [\"a\"]", "invalid backend \"a\""),
            (
                "backend = \"a:1\"\nbalance = \"random\"",
                "invalid balance \"random\"",
            ),
        ];
        for (body, expected) in cases {
            let problems = f.problems(&one_route(body));
            assert_eq!(problems.len(), 1, "{body}: {problems:?}");
            assert!(
                problems[0].starts_with(&format!("{ctx}: ")) && problems[0].contains(expected),
                "{body}: {} does not say {expected}",
                problems[0]
            );
        }
        // The file is named too, in the error's own line.
        let err = f.parse(&one_route("backends = []")).unwrap_err();
        assert!(err.to_string().contains("mc-proxy.toml"), "{err}");
        assert!(err.lines()[0].contains("mc-proxy.toml: listener 127.0.0.1:8443, route app.test"));
    }

    #[test]
    fn health_check_errors_name_the_listener_and_route() {
        let f = Fixture::new();
        let ctx = "listener 127.0.0.1:8443, route app.test: ";
        let cases = [
            ("rise = 0", "rise"),
            ("timeout = \"3s\"\ninterval = \"2s\"", "timeout"),
            ("interval = \"50ms\"\ntimeout = \"10ms\"", "interval"),
            ("path = \"/healthz\"", "path"),
            (
                "expect = \"2xx-3xx\"",
                "invalid expected status \"2xx-3xx\"",
            ),
            ("fall = 101", "rise and fall must be at most 100"),
            ("interval = \"2h\"", "interval must be at most 1h"),
        ];
        for (body, expected) in cases {
            let problems = f.problems(&one_route(&format!(
                "backend = \"a:1\"\n[listeners.routes.health_check]\n{body}"
            )));
            assert_eq!(problems.len(), 1, "{body}: {problems:?}");
            assert!(
                problems[0].starts_with(ctx) && problems[0].contains(expected),
                "{body}: {}",
                problems[0]
            );
        }
        // An unknown key in the table is the parser's error, naming it.
        let err = f
            .parse(&one_route(
                "backend = \"a:1\"\n[listeners.routes.health_check]\nretries = 2",
            ))
            .unwrap_err();
        assert!(err.to_string().contains("retries"), "{err}");
    }

    #[test]
    fn passive_health_keys_have_defaults_and_bounds() {
        let f = Fixture::new();
        let config = f.parse("").unwrap();
        assert_eq!(config.proxy.backend_eject_after, 3);
        assert_eq!(config.proxy.backend_eject_time, Duration::from_secs(5));
        assert_eq!(
            config.proxy.backend_eject_max_time,
            Duration::from_secs(120)
        );
        let config = f
            .parse(
                "[proxy]\nbackend_eject_after = 1\nbackend_eject_time = \"1s\"\n\
                 backend_eject_max_time = \"1s\"\n",
            )
            .unwrap();
        assert_eq!(config.proxy.backend_eject_after, 1);
        assert_eq!(config.proxy.backend_eject_max_time, Duration::from_secs(1));
        let problems = f.problems(
            "[proxy]\nbackend_eject_after = 0\nbackend_eject_time = \"10s\"\n\
             backend_eject_max_time = \"5s\"\n",
        );
        assert_eq!(
            problems,
            [
                "proxy.backend_eject_after: must be at least 1 (failures in a row that eject a \
                 backend)",
                "proxy.backend_eject_max_time: must be at least backend_eject_time (10s)",
            ]
        );
    }

    #[test]
    fn shutdown_delay_defaults_to_none_and_is_bounded() {
        let f = Fixture::new();
        assert_eq!(f.parse("").unwrap().proxy.shutdown_delay, Duration::ZERO);
        let config = f.parse("[proxy]\nshutdown_delay = \"2s\"\n").unwrap();
        assert_eq!(config.proxy.shutdown_delay, Duration::from_secs(2));
        assert_eq!(
            f.problems("[proxy]\nshutdown_delay = \"6m\"\n"),
            ["proxy.shutdown_delay: must be at most 5m"]
        );
    }
}
