//! The file of `mcproxyctl diff` and `apply`: listeners, routes and firewall rules declared in
//! the config file's TOML schema (what `mcproxyctl export` writes), and the plan that turns
//! what the daemon has into what the file declares.
//!
//! No I/O besides [`Declared::load`] reading the file: [`plan`] compares in memory, so the
//! diff is tested without a daemon. Invariants: a file is refused whole before anything is
//! sent (unknown keys, values the shared validation refuses, a listener the daemon lacks),
//! every problem naming the file, the listener and the route; the plan's changes are in the
//! order they are safe to make (firewall adds, route adds and updates with their member
//! states, listener settings, then with `--prune` route removals and firewall removals); a
//! plan of the daemon's own export is empty.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mc_proxy_shared::client::{ListenerStatus, ListenerUpdate, RouteEntry, RoutePatch};
use mc_proxy_shared::route_check;
use mc_proxy_shared::text::clip;
use mc_proxy_shared::{
    AdminState, BackendProtocol, Balance, FirewallRule, FirewallRuleKind, HealthCheck, Mode, Route,
    RouteBackend, StatusClasses,
};
use serde::Deserialize;

/// Why a file cannot be applied; nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum DeclaredError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or a key the schema does not have (toml names the key and the line).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// toml's message.
        message: String,
    },
    /// Values the shared validation refuses, every one of them.
    #[error("{file}: {}", .problems.join(&format!("\n{file}: ")))]
    Invalid {
        /// The file.
        file: String,
        /// `listener L, route R: what is wrong`, one per problem.
        problems: Vec<String>,
    },
    /// A listener of the file the daemon does not have: apply binds no sockets.
    #[error(
        "{file}: listener {listener} is not on the daemon: add it first with mcproxyctl \
         listeners add {addr} (apply does not bind sockets)"
    )]
    UnknownListener {
        /// The file.
        file: String,
        /// The listener as the file names it.
        listener: String,
        /// What to pass to `listeners add` (and `--name`).
        addr: String,
    },
}

// ---- The file format: the config file's keys for these sections, nothing more. ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTop {
    #[serde(default)]
    listeners: Vec<FileListener>,
    #[serde(default)]
    firewall: Option<FileFirewall>,
    // The config file's other sections: an exported file with them is a config, and applies.
    #[serde(default)]
    database: Option<toml::Value>,
    #[serde(default)]
    admin: Option<toml::Value>,
    #[serde(default)]
    metrics: Option<toml::Value>,
    #[serde(default)]
    proxy: Option<toml::Value>,
    #[serde(default)]
    cluster: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFirewall {
    #[serde(default)]
    blocked_ips: Vec<String>,
    #[serde(default)]
    blocked_cidrs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    #[serde(default)]
    addr: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default)]
    proxy_protocol_from: Vec<String>,
    #[serde(default)]
    no_sni_route: Option<String>,
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
    routes: Vec<FileRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    hostname: String,
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
    #[serde(default)]
    queue_timeout: Option<String>,
    #[serde(default)]
    acme: bool,
}

/// `"host:port"`, `"host:port weight=N"` or `{ address, weight, state }`, as the config takes.
#[derive(Debug)]
enum FileBackend {
    Text(String),
    Table(FileBackendTable),
}

impl<'de> Deserialize<'de> for FileBackend {
    // By hand rather than `untagged`, so an unknown key in a member's table is named.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = FileBackend;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a backend: \"host:port\" or { address = \"host:port\", weight = N }")
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackendTable {
    address: String,
    /// i64: a negative or huge weight is a validation problem naming the route.
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    state: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealthCheck {
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    rise: Option<u32>,
    #[serde(default)]
    fall: Option<u32>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    expect: Option<String>,
}

/// One listener of the file, with the settings it declares (a key left out is its default,
/// as in the config file).
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredListener {
    /// `addr` as written, if given.
    pub addr: Option<String>,
    /// `name`, if given.
    pub name: Option<String>,
    /// `proxy_protocol`.
    pub proxy_protocol: bool,
    /// `proxy_protocol_from`.
    pub proxy_protocol_from: Vec<String>,
    /// `no_sni_route`, normalised (empty: none).
    pub no_sni_route: String,
    /// `access_log`.
    pub access_log: bool,
    /// `max_conns_per_client`, `new_conns_per_client`, `new_conns_burst`,
    /// `client_ipv6_prefix`.
    pub client_limits: mc_proxy_shared::ClientLimits,
    /// Its routes, hostnames normalised, certificate paths absolute.
    pub routes: Vec<Route>,
}

impl DeclaredListener {
    /// How messages name it: its name, else its address.
    pub fn label(&self) -> &str {
        self.name
            .as_deref()
            .or(self.addr.as_deref())
            .unwrap_or_default()
    }
}

/// A whole file, checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Declared {
    /// The file, as messages name it.
    pub file: String,
    /// `[[listeners]]`.
    pub listeners: Vec<DeclaredListener>,
    /// `[firewall]`: addresses then networks.
    pub rules: Vec<FirewallRule>,
    /// One line per section of the file that apply does not touch.
    pub notes: Vec<String>,
    /// The file's directory, which its relative certificate paths are taken from.
    pub dir: PathBuf,
}

impl Declared {
    /// Reads and checks `path`; relative certificate paths are taken from its directory.
    pub fn load(path: &Path) -> Result<Declared, DeclaredError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| DeclaredError::Read {
            file: file.clone(),
            source,
        })?;
        let dir = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        Declared::parse(&file, &text, &dir)
    }

    /// Checks `text` (the contents of `file`); relative certificate paths are joined to `dir`.
    pub fn parse(file: &str, text: &str, dir: &Path) -> Result<Declared, DeclaredError> {
        let top: FileTop = toml::from_str(text).map_err(|e| DeclaredError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let mut notes = Vec::new();
        for (section, present) in [
            ("database", top.database.is_some()),
            ("admin", top.admin.is_some()),
            ("metrics", top.metrics.is_some()),
            ("proxy", top.proxy.is_some()),
            ("cluster", top.cluster.is_some()),
        ] {
            if present {
                notes.push(format!(
                    "note: [{section}] is a daemon setting, not applied (only listeners, routes \
                     and firewall rules are)"
                ));
            }
        }
        let mut problems = Vec::new();
        let firewall = top.firewall.unwrap_or_default();
        let mut rules = Vec::new();
        for (kind, values) in [
            (FirewallRuleKind::Ip, &firewall.blocked_ips),
            (FirewallRuleKind::Cidr, &firewall.blocked_cidrs),
        ] {
            for value in values {
                match rule_value(kind, value) {
                    Some(value) => rules.push(FirewallRule { kind, value }),
                    None => problems.push(format!("firewall: invalid {kind} {}", clip(value))),
                }
            }
        }
        let mut listeners = Vec::new();
        for (i, fl) in top.listeners.into_iter().enumerate() {
            if let Some(l) = listener(i, fl, dir, &mut problems) {
                listeners.push(l);
            }
        }
        for (i, l) in listeners.iter().enumerate() {
            if listeners[..i].iter().any(|o| o.label() == l.label()) {
                problems.push(format!("listener {}: declared twice", l.label()));
            }
        }
        if !problems.is_empty() {
            return Err(DeclaredError::Invalid {
                file: file.to_owned(),
                problems,
            });
        }
        Ok(Declared {
            file: file.to_owned(),
            listeners,
            rules,
            notes,
            dir: dir.to_path_buf(),
        })
    }
}

/// A rule's value as the daemon keeps it (an address or a network in its canonical text), or
/// `None` if it is neither.
fn rule_value(kind: FirewallRuleKind, value: &str) -> Option<String> {
    let value = value.trim();
    match kind {
        FirewallRuleKind::Ip => value
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|a| a.to_string()),
        FirewallRuleKind::Cidr => value
            .parse::<ipnet::IpNet>()
            .ok()
            .map(|n| n.trunc().to_string()),
    }
}

/// A name for a message: as written when it is a short plain word, else quoted and clipped.
fn name(s: &str) -> String {
    if s.len() <= 80 && !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '"') {
        s.to_owned()
    } else {
        clip(s)
    }
}

/// How the daemon stores a route's hostname (`App.Test.` is `app.test`); a name that cannot
/// be one is kept as written, for the checks to refuse.
fn hostname(h: &str) -> String {
    route_check::route_name(h).unwrap_or_else(|| h.trim().to_owned())
}

fn listener(
    i: usize,
    fl: FileListener,
    dir: &Path,
    problems: &mut Vec<String>,
) -> Option<DeclaredListener> {
    let lctx = match (&fl.name, &fl.addr) {
        (Some(n), _) | (None, Some(n)) => format!("listener {}", name(n)),
        (None, None) => {
            problems.push(format!("listeners[{i}]: neither addr nor name is set"));
            return None;
        }
    };
    let mut routes: Vec<Route> = Vec::new();
    for fr in fl.routes {
        let rctx = format!("{lctx}, route {}", name(&fr.hostname));
        let mut bad = |m: String| problems.push(format!("{rctx}: {m}"));
        match route(fr, dir) {
            Ok(r) if routes.iter().any(|o| o.hostname == r.hostname) => {
                bad("declared twice on this listener".into());
            }
            Ok(r) => routes.push(r),
            Err(errors) => errors.into_iter().for_each(&mut bad),
        }
    }
    let no_sni_route = hostname(fl.no_sni_route.as_deref().unwrap_or_default());
    if !no_sni_route.is_empty() && !routes.iter().any(|r| r.hostname == no_sni_route) {
        problems.push(format!(
            "{lctx}, no_sni_route: {} names no route of this listener in the file",
            clip(&no_sni_route)
        ));
    }
    for value in &fl.proxy_protocol_from {
        if rule_value(FirewallRuleKind::Cidr, value).is_none()
            && rule_value(FirewallRuleKind::Ip, value).is_none()
        {
            problems.push(format!(
                "{lctx}, proxy_protocol_from: invalid network {}",
                clip(value)
            ));
        }
    }
    // The daemon's own check of the limits.
    let client_limits = mc_proxy_shared::ClientLimits::default()
        .patched(&mc_proxy_shared::ClientLimitsPatch {
            max_conns_per_client: fl.max_conns_per_client,
            new_conns_per_client: fl.new_conns_per_client,
            new_conns_burst: fl.new_conns_burst,
            client_ipv6_prefix: fl.client_ipv6_prefix,
        })
        .unwrap_or_else(|e| {
            problems.push(format!("{lctx}: {e}"));
            mc_proxy_shared::ClientLimits::default()
        });
    Some(DeclaredListener {
        addr: fl.addr,
        name: fl.name,
        proxy_protocol: fl.proxy_protocol,
        proxy_protocol_from: fl.proxy_protocol_from,
        no_sni_route,
        access_log: fl.access_log,
        client_limits,
        routes,
    })
}

/// The route the file declares, checked with the shared rules (the model's parsers and
/// `route_check`, as the daemon checks a route); every problem, not the first.
fn route(fr: FileRoute, dir: &Path) -> Result<Route, Vec<String>> {
    let mut errors = Vec::new();
    let name = hostname(&fr.hostname);
    let mode = fr
        .mode
        .parse::<Mode>()
        .map_err(|e| errors.push(e.to_string()));
    let balance = fr
        .balance
        .parse::<Balance>()
        .map_err(|e| errors.push(e.to_string()));
    let protocol = fr
        .backend_protocol
        .parse::<BackendProtocol>()
        .map_err(|e| errors.push(e.to_string()));
    let mut backends = Vec::new();
    match (fr.backend, fr.backends) {
        (Some(_), Some(_)) => errors.push("both backend and backends are set".into()),
        (None, None) => errors.push("no backend: set backend or backends".into()),
        (Some(one), None) => backends.push(RouteBackend::new(one.trim())),
        (None, Some(list)) => {
            for (k, entry) in list.into_iter().enumerate() {
                match member(entry) {
                    Ok(m) => backends.push(m),
                    Err(e) => errors.push(format!("backends[{k}]: {e}")),
                }
            }
        }
    }
    let health_check = match fr.health_check.map(check).transpose() {
        Ok(c) => c,
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let path = |p: String| -> String {
        if p.is_empty() || Path::new(&p).is_absolute() {
            p
        } else {
            dir.join(PathBuf::from(&p)).display().to_string()
        }
    };
    // As the daemon's TOML takes it: a humantime duration.
    let queue_timeout_ms = match fr.queue_timeout.as_deref().map(humantime::parse_duration) {
        None => 0,
        Some(Ok(d)) => u32::try_from(d.as_millis()).unwrap_or(u32::MAX),
        Some(Err(e)) => {
            errors.push(format!("queue_timeout: {e}"));
            0
        }
    };
    let (Ok(mode), Ok(balance), Ok(backend_protocol)) = (mode, balance, protocol) else {
        return Err(errors);
    };
    let route = Route {
        hostname: name,
        backends,
        balance,
        health_check,
        mode,
        tls_cert: path(fr.tls_cert),
        tls_key: path(fr.tls_key),
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
            queue_timeout_ms,
        }),
        acme: fr.acme,
    };
    // The daemon's own checks on the fields (hostname, backend addresses, weights, duplicates,
    // the health check's timing and path, what l7 needs): the same words as its refusals.
    errors.extend(
        route_check::route_field_problems(&route)
            .iter()
            .map(ToString::to_string),
    );
    if errors.is_empty() {
        Ok(route)
    } else {
        Err(errors)
    }
}

fn member(entry: FileBackend) -> Result<RouteBackend, String> {
    match entry {
        FileBackend::Text(text) => text.parse::<RouteBackend>().map_err(|e| e.to_string()),
        FileBackend::Table(t) => {
            let mut m = t
                .address
                .parse::<RouteBackend>()
                .map_err(|e| e.to_string())?;
            if let Some(w) = t.weight {
                m.weight = u32::try_from(w).map_err(|_| {
                    format!(
                        "backend {}: weight {w} is not from 1 to {}",
                        clip(&t.address),
                        RouteBackend::MAX_WEIGHT
                    )
                })?;
            }
            if let Some(state) = &t.state {
                m.state = state
                    .parse()
                    .map_err(|e| format!("backend {}: {e}", clip(&t.address)))?;
            }
            Ok(m)
        }
    }
}

fn check(fc: FileHealthCheck) -> Result<HealthCheck, String> {
    let d = HealthCheck::default();
    let duration = |key: &str, v: Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(text) => humantime::parse_duration(&text)
            .map_err(|e| format!("health_check.{key}: invalid duration {}: {e}", clip(&text))),
    };
    Ok(HealthCheck {
        interval: duration("interval", fc.interval, d.interval)?,
        timeout: duration("timeout", fc.timeout, d.timeout)?,
        rise: fc.rise.unwrap_or(d.rise),
        fall: fc.fall.unwrap_or(d.fall),
        path: fc.path.unwrap_or(d.path),
        expect: match fc.expect {
            None => d.expect,
            Some(text) => text
                .parse::<StatusClasses>()
                .map_err(|e| format!("health_check: {e}"))?,
        },
    })
}

// ---- The plan. ----

/// One change of the plan; `mcproxyctl apply` makes the plan as one change set.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Block an address or a network.
    AddRule(FirewallRule),
    /// A route the daemon lacks.
    AddRoute {
        /// The daemon's address of the listener (what the calls name it by).
        listener: String,
        /// How the file names the listener.
        label: String,
        /// The route, member states included.
        route: Route,
    },
    /// A route whose fields or member states differ.
    UpdateRoute {
        /// The daemon's address of the listener.
        listener: String,
        /// How the file names the listener.
        label: String,
        /// The route's hostname.
        hostname: String,
        /// The fields that differ (member states ride on the backend set).
        patch: RoutePatch,
        /// `field old -> new`, one per difference.
        fields: Vec<String>,
    },
    /// Listener settings that differ.
    UpdateListener {
        /// The daemon's address of the listener.
        listener: String,
        /// How the file names the listener.
        label: String,
        /// What to set.
        update: ListenerUpdate,
        /// `field old -> new`, one per difference.
        fields: Vec<String>,
    },
    /// `--prune`: a route the file lacks.
    RemoveRoute {
        /// The daemon's address of the listener.
        listener: String,
        /// How the file names the listener.
        label: String,
        /// The route's hostname.
        hostname: String,
    },
    /// `--prune`: a rule the file lacks.
    RemoveRule(FirewallRule),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::AddRule(r) => write!(f, "+ firewall {} {}", r.kind, r.value),
            Change::RemoveRule(r) => write!(f, "- firewall {} {}", r.kind, r.value),
            Change::AddRoute { label, route, .. } => write!(
                f,
                "+ route {} on {label}: {} -> {}",
                route.hostname,
                route.mode,
                backends_text(&route.backends)
            ),
            Change::UpdateRoute {
                label,
                hostname,
                fields,
                ..
            } => write!(f, "~ route {hostname} on {label}: {}", fields.join("; ")),
            Change::UpdateListener { label, fields, .. } => {
                write!(f, "~ listener {label}: {}", fields.join("; "))
            }
            Change::RemoveRoute {
                label, hostname, ..
            } => write!(f, "- route {hostname} on {label}"),
        }
    }
}

/// What would change, and what the daemon has that the file lacks and stays.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In the order they are made.
    pub changes: Vec<Change>,
    /// Without `--prune`: routes and rules not in the file, one line each.
    pub kept: Vec<String>,
}

impl Plan {
    /// The plan as `diff` prints it: one line per change, then what is kept.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.changes {
            let _ = writeln!(out, "{c}");
        }
        for k in &self.kept {
            let _ = writeln!(out, "  {k}: not in the file (kept; --prune removes)");
        }
        if self.changes.is_empty() {
            out.push_str("no changes\n");
        }
        out
    }
}

/// Members as the diff shows them: `addr` or `addr weight=N`, joined by `,`.
fn backends_text(backends: &[RouteBackend]) -> String {
    backends
        .iter()
        .map(|b| {
            if b.weight == RouteBackend::default_weight() {
                b.address.clone()
            } else {
                format!("{} weight={}", b.address, b.weight)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn check_text(c: Option<&HealthCheck>) -> String {
    match c {
        None => "none".into(),
        Some(c) => format!(
            "interval {} timeout {} rise {} fall {}{}",
            humantime::format_duration(c.interval),
            humantime::format_duration(c.timeout),
            c.rise,
            c.fall,
            if c.path.is_empty() {
                String::new()
            } else {
                format!(" path {} expect {}", c.path, c.expect)
            }
        ),
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// The daemon's listener the file's `l` names: by name first, then by address (an address
/// compared as a socket address, so `0.0.0.0:443` is `0.0.0.0:443` however written).
fn find_listener<'a>(
    l: &DeclaredListener,
    have: &'a [ListenerStatus],
) -> Option<&'a ListenerStatus> {
    let same_addr = |a: &str, b: &str| match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if let Some(name) = &l.name
        && let Some(found) = have.iter().find(|h| &h.name == name)
    {
        return Some(found);
    }
    let addr = l.addr.as_deref().or(l.name.as_deref())?;
    have.iter().find(|h| same_addr(&h.addr, addr))
}

/// What makes the daemon (its `listeners`, `routes` and `rules`) what `declared` says; routes
/// and rules the file lacks are removed only with `prune`, and only on the file's listeners
/// (apply never touches a listener the file does not declare).
pub fn plan(
    declared: &Declared,
    listeners: &[ListenerStatus],
    routes: &[RouteEntry],
    rules: &[FirewallRule],
    prune: bool,
) -> Result<Plan, DeclaredError> {
    let mut matched = Vec::new();
    for l in &declared.listeners {
        match find_listener(l, listeners) {
            Some(have) => matched.push((l, have)),
            None => {
                return Err(DeclaredError::UnknownListener {
                    file: declared.file.clone(),
                    listener: name(l.label()),
                    addr: match (&l.addr, &l.name) {
                        (Some(a), Some(n)) => format!("{} --name {}", name(a), name(n)),
                        (Some(a), None) | (None, Some(a)) => name(a),
                        (None, None) => String::new(),
                    },
                });
            }
        }
    }
    let mut p = Plan::default();
    let have_rule = |r: &FirewallRule| {
        rules
            .iter()
            .any(|h| h.kind == r.kind && rule_value(h.kind, &h.value).as_ref() == Some(&r.value))
    };
    for r in declared.rules.iter().filter(|r| !have_rule(r)) {
        p.changes.push(Change::AddRule(r.clone()));
    }
    let mut removals = Vec::new();
    for (l, have) in &matched {
        let label = l.label().to_owned();
        let theirs: Vec<&RouteEntry> = routes.iter().filter(|e| e.listener == have.addr).collect();
        for want in &l.routes {
            match theirs.iter().find(|e| e.route.hostname == want.hostname) {
                None => p.changes.push(Change::AddRoute {
                    listener: have.addr.clone(),
                    label: label.clone(),
                    route: want.clone(),
                }),
                Some(e) => {
                    if let Some(c) = route_change(&have.addr, &label, &e.route, want, &declared.dir)
                    {
                        p.changes.push(c);
                    }
                }
            }
        }
        for e in &theirs {
            if l.routes.iter().any(|r| r.hostname == e.route.hostname) {
                continue;
            }
            if prune {
                removals.push(Change::RemoveRoute {
                    listener: have.addr.clone(),
                    label: label.clone(),
                    hostname: e.route.hostname.clone(),
                });
            } else {
                p.kept
                    .push(format!("route {} on {label}", e.route.hostname));
            }
        }
    }
    for (l, have) in &matched {
        if let Some(c) = listener_change(l, have) {
            p.changes.push(c);
        }
    }
    p.changes.extend(removals);
    for r in rules {
        let declared_here = declared
            .rules
            .iter()
            .any(|d| d.kind == r.kind && rule_value(r.kind, &r.value).as_ref() == Some(&d.value));
        if declared_here {
            continue;
        }
        if prune {
            p.changes.push(Change::RemoveRule(r.clone()));
        } else {
            p.kept.push(format!("firewall {} {}", r.kind, r.value));
        }
    }
    Ok(p)
}

/// The update that makes `have` the route `want` is, field by field, or `None`. A relative
/// certificate path stored from the daemon's TOML is taken as the file's when the file writes
/// it the same (`dir` joined to it), so that an export applies with no change.
fn route_change(
    listener: &str,
    label: &str,
    have: &Route,
    want: &Route,
    dir: &Path,
) -> Option<Change> {
    let mut patch = RoutePatch::default();
    let mut fields = Vec::new();
    let weights = |r: &Route| -> Vec<(String, u32)> {
        r.backends
            .iter()
            .map(|b| (b.address.to_ascii_lowercase(), b.weight))
            .collect()
    };
    if weights(have) != weights(want) {
        fields.push(format!(
            "backends {} -> {}",
            backends_text(&have.backends),
            backends_text(&want.backends)
        ));
        // The set is replaced whole; the states the file gives ride along.
        patch.backends = Some(want.backends.clone());
    }
    for b in &want.backends {
        let now = have
            .backends
            .iter()
            .find(|h| h.address.eq_ignore_ascii_case(&b.address))
            .map_or(AdminState::Enabled, |h| h.state);
        if now != b.state {
            fields.push(format!("state of {} {now} -> {}", b.address, b.state));
            // A state is set by sending the whole set with it (one change per route).
            patch.backends = Some(want.backends.clone());
        }
    }
    macro_rules! field {
        ($name:ident, $text:expr) => {
            if have.$name != want.$name {
                let text: fn(&Route) -> String = $text;
                fields.push(format!(
                    "{} {} -> {}",
                    stringify!($name),
                    text(have),
                    text(want)
                ));
                patch.$name = Some(want.$name.clone());
            }
        };
    }
    field!(balance, |r| r.balance.to_string());
    if have.health_check != want.health_check {
        fields.push(format!(
            "health_check {} -> {}",
            check_text(have.health_check.as_ref()),
            check_text(want.health_check.as_ref())
        ));
        patch.health_check = Some(want.health_check.clone());
    }
    field!(mode, |r| r.mode.to_string());
    let same_path = |have: &str, want: &str| {
        have == want
            || (!have.is_empty()
                && Path::new(have).is_relative()
                && dir.join(have) == Path::new(want))
    };
    if !same_path(&have.tls_cert, &want.tls_cert) {
        field!(tls_cert, |r| or_dash(&r.tls_cert).to_owned());
    }
    if !same_path(&have.tls_key, &want.tls_key) {
        field!(tls_key, |r| or_dash(&r.tls_key).to_owned());
    }
    field!(backend_tls, |r| r.backend_tls.to_string());
    // L4 routes speak no HTTP to their backend, and export leaves the field out there.
    if want.mode == Mode::L7 {
        field!(backend_protocol, |r| r.backend_protocol.to_string());
    }
    field!(send_proxy_protocol, |r| r.send_proxy_protocol.to_string());
    field!(access_log, |r| r.access_log.to_string());
    // Compared in the daemon's canonical form (`10.1.2.3/8` is `10.0.0.0/8`).
    let limits = want
        .limits
        .checked()
        .unwrap_or_else(|_| (*want.limits).clone());
    for (name, have, want, set) in [
        (
            "allow_from",
            &have.limits.allow_from,
            limits.allow_from,
            &mut patch.limits.allow_from,
        ),
        (
            "deny_from",
            &have.limits.deny_from,
            limits.deny_from,
            &mut patch.limits.deny_from,
        ),
    ] {
        if *have != want {
            fields.push(format!(
                "{name} {} -> {}",
                or_dash(&have.join(",")),
                or_dash(&want.join(","))
            ));
            *set = Some(want);
        }
    }
    for (name, have, want, set) in [
        (
            "client_request_rate",
            have.limits.client_request_rate,
            limits.client_request_rate,
            &mut patch.limits.client_request_rate,
        ),
        (
            "client_request_burst",
            have.limits.client_request_burst,
            limits.client_request_burst,
            &mut patch.limits.client_request_burst,
        ),
        (
            "route_request_rate",
            have.limits.route_request_rate,
            limits.route_request_rate,
            &mut patch.limits.route_request_rate,
        ),
        (
            "route_request_burst",
            have.limits.route_request_burst,
            limits.route_request_burst,
            &mut patch.limits.route_request_burst,
        ),
        (
            "max_requests",
            have.limits.max_requests,
            limits.max_requests,
            &mut patch.limits.max_requests,
        ),
        (
            "max_queue",
            have.limits.max_queue,
            limits.max_queue,
            &mut patch.limits.max_queue,
        ),
        (
            "queue_timeout_ms",
            have.limits.queue_timeout_ms,
            limits.queue_timeout_ms,
            &mut patch.limits.queue_timeout_ms,
        ),
    ] {
        if have != want {
            fields.push(format!("{name} {have} -> {want}"));
            *set = Some(want);
        }
    }
    field!(acme, |r| r.acme.to_string());
    if fields.is_empty() {
        return None;
    }
    Some(Change::UpdateRoute {
        listener: listener.to_owned(),
        label: label.to_owned(),
        hostname: want.hostname.clone(),
        patch,
        fields,
    })
}

/// The listener update that makes `have` what `want` declares, or `None`.
fn listener_change(want: &DeclaredListener, have: &ListenerStatus) -> Option<Change> {
    let mut update = ListenerUpdate::default();
    let mut fields = Vec::new();
    if want.proxy_protocol != have.proxy_protocol {
        fields.push(format!(
            "proxy_protocol {} -> {}",
            have.proxy_protocol, want.proxy_protocol
        ));
        update.proxy_protocol = Some(want.proxy_protocol);
    }
    let nets = |v: &[String]| -> BTreeMap<String, ()> {
        v.iter()
            .map(|s| {
                let canon = rule_value(FirewallRuleKind::Cidr, s)
                    .or_else(|| rule_value(FirewallRuleKind::Ip, s))
                    .unwrap_or_else(|| s.clone());
                (canon, ())
            })
            .collect()
    };
    if nets(&want.proxy_protocol_from) != nets(&have.proxy_protocol_from) {
        fields.push(format!(
            "proxy_protocol_from {} -> {}",
            or_dash(&have.proxy_protocol_from.join(",")),
            or_dash(&want.proxy_protocol_from.join(","))
        ));
        update.proxy_protocol_from = Some(want.proxy_protocol_from.clone());
    }
    if want.no_sni_route != have.no_sni_route {
        fields.push(format!(
            "no_sni_route {} -> {}",
            or_dash(&have.no_sni_route),
            or_dash(&want.no_sni_route)
        ));
        update.no_sni_route = Some(want.no_sni_route.clone());
    }
    if want.access_log != have.access_log {
        fields.push(format!(
            "access_log {} -> {}",
            have.access_log, want.access_log
        ));
        update.access_log = Some(want.access_log);
    }
    let (w, h) = (&want.client_limits, &have.client_limits);
    for (field, want, have, set) in [
        (
            "max_conns_per_client",
            w.max_conns_per_client,
            h.max_conns_per_client,
            &mut update.client_limits.max_conns_per_client,
        ),
        (
            "new_conns_per_client",
            w.new_conns_per_client,
            h.new_conns_per_client,
            &mut update.client_limits.new_conns_per_client,
        ),
        (
            "new_conns_burst",
            w.new_conns_burst,
            h.new_conns_burst,
            &mut update.client_limits.new_conns_burst,
        ),
        (
            "client_ipv6_prefix",
            u32::from(w.client_ipv6_prefix),
            u32::from(h.client_ipv6_prefix),
            &mut update.client_limits.client_ipv6_prefix,
        ),
    ] {
        if want != have {
            fields.push(format!("{field} {have} -> {want}"));
            *set = Some(want);
        }
    }
    (!fields.is_empty()).then(|| Change::UpdateListener {
        listener: have.addr.clone(),
        label: want.label().to_owned(),
        update,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_listener() -> ListenerStatus {
        ListenerStatus {
            addr: "127.0.0.1:8443".into(),
            name: "public".into(),
            ..ListenerStatus::default()
        }
    }

    fn entry(route: Route) -> RouteEntry {
        RouteEntry {
            listener: "127.0.0.1:8443".into(),
            route,
            stats: Default::default(),
            not_served: None,
            certificate: None,
        }
    }

    fn l4(hostname: &str, backends: &[&str]) -> Route {
        Route {
            hostname: hostname.into(),
            backends: backends.iter().map(|b| RouteBackend::new(*b)).collect(),
            ..Route::default()
        }
    }

    fn parse(text: &str) -> Result<Declared, DeclaredError> {
        Declared::parse("routes.toml", text, Path::new("/etc/mc-proxy"))
    }

    const FILE: &str = r#"
[firewall]
blocked_ips = ["10.9.9.9"]

[[listeners]]
name = "public"
no_sni_route = "web.test"

[[listeners.routes]]
hostname = "web.test"
backend = "10.0.0.1:80"

[[listeners.routes]]
hostname = "api.test"
backends = ["10.0.0.1:80", { address = "10.0.0.2:80", state = "draining" }]
balance = "least_conn"
"#;

    #[test]
    fn a_file_the_daemon_matches_plans_nothing() {
        let d = parse(FILE).unwrap();
        let mut listener = have_listener();
        listener.no_sni_route = "web.test".into();
        let mut api = l4("api.test", &["10.0.0.1:80", "10.0.0.2:80"]);
        api.backends[1].state = AdminState::Draining;
        api.balance = Balance::LeastConn;
        let routes = [entry(l4("web.test", &["10.0.0.1:80"])), entry(api)];
        let rules = [FirewallRule {
            kind: FirewallRuleKind::Ip,
            value: "10.9.9.9".into(),
        }];
        let p = plan(&d, &[listener], &routes, &rules, true).unwrap();
        assert_eq!(p, Plan::default());
        assert_eq!(p.text(), "no changes\n");
    }

    #[test]
    fn added_changed_field_by_field_and_kept_or_pruned() {
        let d = parse(FILE).unwrap();
        let routes = [
            entry(l4("api.test", &["10.0.0.1:80"])),
            entry(l4("old.test", &["10.0.0.3:80"])),
        ];
        let rules = [FirewallRule {
            kind: FirewallRuleKind::Cidr,
            value: "192.0.2.0/24".into(),
        }];
        let kept = plan(&d, &[have_listener()], &routes, &rules, false).unwrap();
        let lines: Vec<String> = kept.text().lines().map(str::to_owned).collect();
        assert_eq!(
            lines,
            [
                "+ firewall ip 10.9.9.9",
                "+ route web.test on public: l4 -> 10.0.0.1:80",
                "~ route api.test on public: backends 10.0.0.1:80 -> 10.0.0.1:80,10.0.0.2:80; \
                 state of 10.0.0.2:80 enabled -> draining; balance round_robin -> least_conn",
                "~ listener public: no_sni_route - -> web.test",
                "  route old.test on public: not in the file (kept; --prune removes)",
                "  firewall cidr 192.0.2.0/24: not in the file (kept; --prune removes)",
            ]
        );
        let pruned = plan(&d, &[have_listener()], &routes, &rules, true).unwrap();
        assert!(pruned.kept.is_empty());
        let tail: Vec<String> = pruned.changes[4..].iter().map(|c| c.to_string()).collect();
        assert_eq!(
            tail,
            ["- route old.test on public", "- firewall cidr 192.0.2.0/24"]
        );
        // The listener's no_sni_route is set before anything is removed.
        assert!(matches!(pruned.changes[3], Change::UpdateListener { .. }));
    }

    #[test]
    fn every_field_is_compared() {
        let have = l4("a.test", &["10.0.0.1:80"]);
        let want = Route {
            mode: Mode::L7,
            tls_cert: "/c.pem".into(),
            tls_key: "/k.pem".into(),
            backend_tls: true,
            backend_protocol: BackendProtocol::Http1,
            send_proxy_protocol: true,
            access_log: true,
            health_check: Some(HealthCheck::default()),
            ..have.clone()
        };
        let Some(Change::UpdateRoute { fields, patch, .. }) =
            route_change("l", "l", &have, &want, Path::new("/etc"))
        else {
            panic!("a change");
        };
        let names: Vec<&str> = fields
            .iter()
            .map(|f| f.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "health_check",
                "mode",
                "tls_cert",
                "tls_key",
                "backend_tls",
                "backend_protocol",
                "send_proxy_protocol",
                "access_log"
            ]
        );
        assert_eq!(patch.mode, Some(Mode::L7));
        assert_eq!(patch.backends, None);
        // A relative path stored from the daemon's TOML, written the same in the file.
        let stored = Route {
            tls_cert: "c.pem".into(),
            tls_key: "k.pem".into(),
            ..want.clone()
        };
        let file = Route {
            tls_cert: "/etc/c.pem".into(),
            tls_key: "/etc/k.pem".into(),
            ..want.clone()
        };
        assert_eq!(
            route_change("l", "l", &stored, &file, Path::new("/etc")),
            None
        );
    }

    #[test]
    fn files_are_refused_whole_naming_file_listener_and_route() {
        let unknown = parse("[[listeners]]\nname = \"public\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            unknown.starts_with("routes.toml: ") && unknown.contains("bogus"),
            "{unknown}"
        );
        let weight = parse(
            "[[listeners]]\nname = \"public\"\n[[listeners.routes]]\nhostname = \"a.test\"\n\
             backends = [{ address = \"10.0.0.1:80\", weight = 0 }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            weight.contains(
                "routes.toml: listener public, route a.test: backend \"10.0.0.1:80\": weight 0"
            ),
            "{weight}"
        );
        let member = parse(
            "[[listeners]]\nname = \"public\"\n[[listeners.routes]]\nhostname = \"a.test\"\n\
             backends = [{ address = \"10.0.0.1:80\", wieght = 2 }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(member.contains("wieght"), "{member}");
        // The daemon's field checks, before anything is sent: every problem of the route.
        let l7 = parse(
            "[[listeners]]\nname = \"public\"\n[[listeners.routes]]\nhostname = \"b.test\"\n\
             backend = \"10.0.0.1\"\nmode = \"l7\"\n\
             [listeners.routes.health_check]\npath = \"healthz\"\n",
        )
        .unwrap_err()
        .to_string();
        for said in [
            "routes.toml: listener public, route b.test: invalid backend \"10.0.0.1\"",
            "routes.toml: listener public, route b.test: health_check: path must be an absolute",
            "routes.toml: listener public, route b.test: mode l7 needs tls_cert",
            "routes.toml: listener public, route b.test: mode l7 needs tls_key",
        ] {
            assert!(l7.contains(said), "{said}: {l7}");
        }
        let d = parse("[[listeners]]\nname = \"other\"\n").unwrap();
        let missing = plan(&d, &[have_listener()], &[], &[], false)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("listener other is not on the daemon")
                && missing.contains("mcproxyctl listeners add other"),
            "{missing}"
        );
    }

    #[test]
    fn other_sections_are_notes_and_relative_paths_follow_the_file() {
        let d = parse(
            "[database]\npath = \"x.db\"\n[[listeners]]\naddr = \"127.0.0.1:8443\"\n\
             [[listeners.routes]]\nhostname = \"a.test\"\nbackend = \"10.0.0.1:80\"\n\
             mode = \"l7\"\ntls_cert = \"certs/a.pem\"\ntls_key = \"/abs/a.key\"\n",
        )
        .unwrap();
        assert_eq!(d.notes.len(), 1);
        assert!(d.notes[0].contains("[database]"));
        let r = &d.listeners[0].routes[0];
        assert_eq!(r.tls_cert, "/etc/mc-proxy/certs/a.pem");
        assert_eq!(r.tls_key, "/abs/a.key");
        // Matched by address when the file gives no name.
        assert!(find_listener(&d.listeners[0], &[have_listener()]).is_some());
    }
}
