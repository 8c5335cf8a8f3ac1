//! The scripted subcommands: one admin API call each, printed as a table or JSON.
//!
//! I/O: the admin socket and stdout. Errors come back as `CtlError`, whose exit code tells a
//! script what kind of failure it was. Everything printed goes through [`emit`], so a reader
//! that stops early (`| head`) ends the command quietly instead of panicking on a closed pipe.
//! Table rows come in a stable order (routes by listener then hostname, rules by kind then
//! value), so shell loops can rely on it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use futures_util::StreamExt;
use mc_proxy_shared::client::{
    AdminClient, BackendStatus, ClientError, ConnectionList, Event, ListenerStatus, ListenerUpdate,
    ReloadResult, RouteEntry, RoutePatch, RouteReload, Status, TimedEvent,
};
use mc_proxy_shared::{
    FirewallRule, FirewallRuleKind, HealthCheck, MemberStats, Mode, Route, RouteBackend,
};
use serde::Serialize;

use crate::cli::{
    CheckArgs, Command, ConnectionsCommand, FirewallCommand, ListenersCommand, RouteArgs,
    RoutesCommand, RuleArgs, TableArgs, UpdateArgs,
};
use crate::format::{
    clock_ms, fit, human_bytes, member_check, member_since, member_state_reason, now_ms,
    origin_long, uptime,
};
use crate::paths::absolute_path;

/// A failed subcommand.
#[derive(Debug)]
pub enum CtlError {
    /// No daemon on the socket, or it went away during the call.
    Unreachable(ClientError),
    /// The socket exists but this user may not use it.
    Denied(ClientError),
    /// The daemon said no, or answered oddly.
    Daemon(ClientError),
    /// A reload left some routes failed (they were printed): how many still serve the
    /// certificate they had, and how many are not served.
    ReloadFailed {
        /// Failed, still serving the certificate loaded before.
        kept: usize,
        /// Failed, and not served (left out at start or at an earlier reload).
        not_served: usize,
        /// The config file did not load, so no `[proxy]` setting was re-read.
        settings: bool,
    },
    /// The route named is not there (or is on several listeners and none was given).
    NoRoute(String),
    /// The daemon refused part of a request made of several calls; its reasons, joined.
    Refused(String),
    /// The arguments make no sense.
    Usage(String),
    /// Whoever reads stdout went away (`| head`): not an error, the command just ends.
    ClosedPipe,
    /// Stdout could not be written for another reason.
    Output(std::io::Error),
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::Unreachable(e) | CtlError::Denied(e) | CtlError::Daemon(e) => {
                write!(f, "{e}")
            }
            CtlError::ReloadFailed {
                kept,
                not_served,
                settings,
            } => {
                let n = kept + not_served;
                match (kept, not_served) {
                    (0, 0) if *settings => {
                        write!(f, "the config file did not load: settings unchanged")
                    }
                    (_, 0) => write!(
                        f,
                        "{n} route(s) failed to reload and keep the certificate they had"
                    ),
                    (0, _) => write!(f, "{n} route(s) failed to reload and are not served"),
                    _ => write!(
                        f,
                        "{n} route(s) failed to reload: {kept} keep the certificate they had, \
                         {not_served} not served"
                    ),
                }
            }
            CtlError::Usage(m) | CtlError::NoRoute(m) | CtlError::Refused(m) => f.write_str(m),
            CtlError::ClosedPipe => f.write_str("stdout closed"),
            CtlError::Output(e) => write!(f, "cannot write the output: {e}"),
        }
    }
}

impl CtlError {
    /// 0: a closed pipe; 1: the daemon refused (or a reload failed somewhere); 2: usage;
    /// 3: no daemon, or it went away during the call; 4: the socket is not accessible to this
    /// user.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::ClosedPipe => 0,
            CtlError::Daemon(_)
            | CtlError::ReloadFailed { .. }
            | CtlError::NoRoute(_)
            | CtlError::Refused(_)
            | CtlError::Output(_) => 1,
            CtlError::Usage(_) => 2,
            CtlError::Unreachable(_) => 3,
            CtlError::Denied(_) => 4,
        }
    }
}

impl From<crate::paths::PathError> for CtlError {
    fn from(e: crate::paths::PathError) -> Self {
        CtlError::Usage(e.to_string())
    }
}

impl From<ClientError> for CtlError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Connect { .. } | ClientError::Gone { .. } => CtlError::Unreachable(e),
            ClientError::PermissionDenied { .. } => CtlError::Denied(e),
            other => CtlError::Daemon(other),
        }
    }
}

/// Writes `text` to stdout and flushes it, so each event line reaches a pipe as it happens.
pub fn emit(text: &str) -> Result<(), CtlError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => CtlError::ClosedPipe,
            _ => CtlError::Output(e),
        })
}

/// Writes a line to stderr; a closed stderr is ignored (there is nobody left to tell).
pub fn warn(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Runs one subcommand against the daemon at `socket`.
pub async fn run(socket: &Path, command: Command) -> Result<(), CtlError> {
    let mut client = AdminClient::connect(socket).await?;
    match command {
        Command::Status { table } => {
            let status = client.status().await?;
            print_out(&table, &status, format_status)
        }
        Command::Backends { table } => {
            let status = client.status().await?;
            print_out(&table, &status.backends[..], format_backends)
        }
        Command::Routes(RoutesCommand::List { listener, table }) => {
            let mut routes = client.list_routes(listener.as_deref()).await?;
            routes.sort_by(|a, b| {
                (&a.listener, &a.route.hostname).cmp(&(&b.listener, &b.route.hostname))
            });
            print_out(&table, &routes, |r, h| format_routes(r, h))
        }
        Command::Listeners(command) => listeners(&mut client, command).await,
        Command::Routes(RoutesCommand::Add(args)) => add_route(&mut client, args).await,
        Command::Routes(RoutesCommand::Update(args)) => update_route(&mut client, args).await,
        Command::Routes(RoutesCommand::Show {
            hostname,
            listener,
            json,
        }) => {
            let entry = find_route(&mut client, &hostname, listener.as_deref()).await?;
            if json {
                print_json(&entry)
            } else {
                emit(&format_route_detail(&entry))
            }
        }
        Command::Routes(RoutesCommand::Backend(command)) => {
            let (state, weight, args) = command.into_parts();
            let entry = find_route(&mut client, &args.hostname, args.listener.as_deref()).await?;
            let route = client
                .set_backend(
                    &entry.listener,
                    &entry.route.hostname,
                    &args.address,
                    state,
                    weight,
                )
                .await?;
            let member = route.backends.iter().find(|b| b.address == args.address);
            let what = match (state, member) {
                (Some(state), _) => state.to_string(),
                (None, Some(m)) => format!("weight {}", m.weight),
                (None, None) => "changed".to_owned(),
            };
            emit(&format!(
                "backend {} of route {} on listener {}: {what}\n",
                args.address, route.hostname, entry.listener
            ))
        }
        Command::Routes(RoutesCommand::Remove { listener, hostname }) => {
            client.remove_route(&listener, &hostname).await?;
            emit(&format!(
                "removed route {hostname} from listener {listener}\n"
            ))
        }
        Command::Export => {
            let status = client.status().await?;
            let routes = client.list_routes(None).await?;
            let mut rules = client.firewall_rules().await?;
            rules.sort_by_cached_key(rule_order);
            emit(&crate::export::to_toml(
                &status.listeners,
                &routes,
                &rules,
                &socket.display().to_string(),
            ))
        }
        Command::Firewall(FirewallCommand::List { table }) => {
            let mut rules = client.firewall_rules().await?;
            rules.sort_by_cached_key(rule_order);
            print_out(&table, &rules, |r, h| format_rules(r, h))
        }
        Command::Firewall(FirewallCommand::Add(args)) => {
            let rule = client.add_firewall_rule(rule(args)).await?;
            emit(&format!("blocked {} {}\n", rule.kind, rule.value))
        }
        Command::Firewall(FirewallCommand::Remove(args)) => {
            let rule = rule(args);
            client.remove_firewall_rule(rule.clone()).await?;
            emit(&format!("unblocked {} {}\n", rule.kind, rule.value))
        }
        Command::Connections {
            action: Some(ConnectionsCommand::Close { ids }),
            ..
        } => {
            // Each one on its own: one that ended meanwhile does not keep the others open.
            let mut refused = Vec::new();
            for id in ids {
                match client.close_connection(id).await {
                    Ok(()) => emit(&format!("connection {id} closed\n"))?,
                    // The daemon's refusal (not open): said at the end, the others closed.
                    Err(ClientError::Rpc(status)) => refused.push(status.message().to_owned()),
                    Err(e) => return Err(e.into()),
                }
            }
            match refused.is_empty() {
                true => Ok(()),
                false => Err(CtlError::Refused(refused.join("; "))),
            }
        }
        Command::Connections {
            action: None,
            limit,
            table,
        } => {
            let list = client.list_connections(limit).await?;
            print_out(&table, &list, format_connections)
        }
        Command::Reload { table } => {
            let all = client.reload_all().await?;
            let report = all.routes;
            print_out(&table, &report, |r, h| format_reload(r, h))?;
            // The settings part: said after the routes in the table form (`--json` keeps
            // printing the route list alone, as before settings were reloaded).
            if !table.json {
                for s in &all.settings_applied {
                    emit(&format!("setting applied to new connections: {s}\n"))?;
                }
                for s in &all.settings_need_restart {
                    warn(&format!(
                        "warning: setting {s} changed in the config file; it keeps its running value until a restart"
                    ));
                }
                for l in &all.listeners_not_applied {
                    warn(&format!("warning: {l}"));
                }
            }
            if let Some(e) = &all.settings_error {
                warn(&format!("error: {e}"));
            }
            let failed = |kept: bool| {
                report
                    .iter()
                    .filter(|r| r.result == ReloadResult::Failed && r.kept == kept)
                    .count()
            };
            match (failed(true), failed(false)) {
                (0, 0) if all.settings_error.is_none() => Ok(()),
                (kept, not_served) => Err(CtlError::ReloadFailed {
                    kept,
                    not_served,
                    settings: all.settings_error.is_some(),
                }),
            }
        }
        Command::Events { json, stats, types } => {
            follow_events(&mut client, json, stats, &types).await
        }
        Command::Console { .. } | Command::Completions { .. } => Err(CtlError::Usage(
            "this subcommand runs from main, not against the daemon".into(),
        )),
    }
}

fn parse_mode(mode: Option<&str>) -> Result<Option<Mode>, CtlError> {
    mode.map(|m| m.parse::<Mode>())
        .transpose()
        .map_err(|e| CtlError::Usage(e.to_string()))
}

/// The route `hostname` names (compared as the daemon does: case and a trailing dot do not
/// matter), on `listener` or on the one listener that has it.
async fn find_route(
    client: &mut AdminClient,
    hostname: &str,
    listener: Option<&str>,
) -> Result<RouteEntry, CtlError> {
    let want = normalise(hostname);
    let mut found: Vec<RouteEntry> = client
        .list_routes(listener)
        .await?
        .into_iter()
        .filter(|e| e.route.hostname == want)
        .collect();
    match found.len() {
        0 => Err(CtlError::NoRoute(format!(
            "no route {want}{}",
            listener.map_or_else(String::new, |l| format!(" on listener {l}"))
        ))),
        1 => Ok(found.remove(0)),
        _ => Err(CtlError::Usage(format!(
            "route {want} is on listeners {}: say which with --listener",
            found
                .iter()
                .map(|e| e.listener.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Lowercase without a trailing dot: how the daemon stores a hostname.
fn normalise(hostname: &str) -> String {
    hostname.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The health check the flags ask for, on top of `current` (or the defaults).
pub fn check_from(
    args: &CheckArgs,
    current: Option<&HealthCheck>,
) -> Result<HealthCheck, CtlError> {
    let mut check = current.cloned().unwrap_or_default();
    if let Some(v) = args.check_interval {
        check.interval = v;
    }
    if let Some(v) = args.check_timeout {
        check.timeout = v;
    }
    if let Some(v) = args.check_rise {
        check.rise = v;
    }
    if let Some(v) = args.check_fall {
        check.fall = v;
    }
    if let Some(v) = &args.check_path {
        check.path.clone_from(v);
    }
    if let Some(v) = &args.check_expect {
        check.expect = v.parse().map_err(|e| CtlError::Usage(format!("{e}")))?;
    }
    Ok(check)
}

/// A new backend set for a route whose set is `current`: a member that stays keeps its
/// admin state (a drain is not undone by editing the weights).
pub fn keep_admin_states(new: Vec<RouteBackend>, current: &[RouteBackend]) -> Vec<RouteBackend> {
    new.into_iter()
        .map(|b| match current.iter().find(|c| c.address == b.address) {
            Some(c) => RouteBackend {
                state: c.state,
                ..b
            },
            None => b,
        })
        .collect()
}

async fn add_route(client: &mut AdminClient, args: RouteArgs) -> Result<(), CtlError> {
    let route = Route {
        hostname: args.hostname,
        backends: args.backend,
        balance: args.balance.unwrap_or_default(),
        health_check: if args.check.any() {
            Some(check_from(&args.check, None)?)
        } else {
            None
        },
        mode: parse_mode(args.mode.as_deref())?.unwrap_or_default(),
        tls_cert: absolute_path(args.tls_cert.as_deref().unwrap_or_default())?,
        tls_key: absolute_path(args.tls_key.as_deref().unwrap_or_default())?,
        backend_tls: args.backend_tls,
        send_proxy_protocol: args.send_proxy_protocol,
        backend_protocol: args.backend_protocol.unwrap_or_default(),
        access_log: args.access_log.unwrap_or(false),
    };
    let (route, warnings) = client.add_route(&args.listener, route).await?;
    report_route("added", &args.listener, &route, &warnings, args.json)
}

fn print_warnings(warnings: &[String]) -> Result<(), CtlError> {
    for w in warnings {
        warn(&format!("warning: {w}"));
    }
    Ok(())
}

async fn listeners(client: &mut AdminClient, command: ListenersCommand) -> Result<(), CtlError> {
    match command {
        ListenersCommand::List { table } => {
            let status = client.status().await?;
            print_out(&table, &status.listeners[..], format_listeners)
        }
        ListenersCommand::Add {
            addr,
            proxy_protocol,
            proxy_protocol_from,
            access_log,
        } => {
            let fields = ListenerUpdate {
                proxy_protocol: Some(proxy_protocol),
                proxy_protocol_from: Some(proxy_protocol_from),
                no_sni_route: None,
                access_log: Some(access_log),
            };
            let (l, warnings) = client.add_listener_with(&addr, fields).await?;
            print_warnings(&warnings)?;
            let bound = match l.bound.as_str() {
                "" => String::new(),
                b if b == l.addr => String::new(),
                b => format!(" (bound to {b})"),
            };
            emit(&format!(
                "listener {} added{bound}, {}; no routes yet: mcproxyctl routes add --listener {} ...\n",
                l.addr,
                proxy_text(&l),
                l.addr
            ))
        }
        ListenersCommand::Update {
            listener,
            no_sni_route,
            proxy_protocol,
            proxy_protocol_from,
            any_proxy_source,
            access_log,
        } => {
            let update = ListenerUpdate {
                no_sni_route,
                access_log,
                proxy_protocol,
                proxy_protocol_from: match (any_proxy_source, proxy_protocol_from.is_empty()) {
                    (true, _) => Some(Vec::new()),
                    (false, false) => Some(proxy_protocol_from),
                    (false, true) => None,
                },
            };
            if update == ListenerUpdate::default() {
                return Err(CtlError::Usage(
                    "nothing to change: give at least one of --no-sni-route, --proxy-protocol, \
                     --proxy-protocol-from, --any-proxy-source, --access-log"
                        .into(),
                ));
            }
            let (l, warnings) = client.update_listener(&listener, update).await?;
            print_warnings(&warnings)?;
            let no_sni = match l.no_sni_route.as_str() {
                "" => "hellos without SNI are reset".to_owned(),
                route => format!("hellos without SNI go to {route}"),
            };
            emit(&format!(
                "listener {} updated: {}; {no_sni}\n",
                l.addr,
                proxy_text(&l)
            ))
        }
        ListenersCommand::Remove { addr, with_routes } => {
            client.remove_listener(&addr, with_routes).await?;
            emit(&format!("listener {} removed\n", addr.trim()))
        }
    }
}

/// A listener's PROXY protocol setting in words.
fn proxy_text(l: &ListenerStatus) -> String {
    match (l.proxy_protocol, l.proxy_protocol_from.is_empty()) {
        (false, _) => "no PROXY header expected".to_owned(),
        (true, true) => "PROXY header expected from any peer".to_owned(),
        (true, false) => format!(
            "PROXY header expected from {}",
            l.proxy_protocol_from.join(", ")
        ),
    }
}

async fn update_route(client: &mut AdminClient, args: UpdateArgs) -> Result<(), CtlError> {
    // The set and the check are edited on top of what the route has now.
    let current = if !args.backend.is_empty() || args.check.any() {
        Some(
            find_route(client, &args.hostname, Some(&args.listener))
                .await?
                .route,
        )
    } else {
        None
    };
    let backends = match (&current, args.backend.is_empty()) {
        (Some(route), false) => Some(keep_admin_states(args.backend, &route.backends)),
        _ => None,
    };
    let health_check = if args.no_check {
        Some(None)
    } else if args.check.any() {
        let now = current.as_ref().and_then(|r| r.health_check.as_ref());
        Some(Some(check_from(&args.check, now)?))
    } else {
        None
    };
    let patch = RoutePatch {
        hostname: args.new_hostname,
        backends,
        balance: args.balance,
        health_check,
        mode: parse_mode(args.mode.as_deref())?,
        tls_cert: args.tls_cert.as_deref().map(absolute_path).transpose()?,
        tls_key: args.tls_key.as_deref().map(absolute_path).transpose()?,
        backend_tls: args.backend_tls,
        send_proxy_protocol: args.send_proxy_protocol,
        backend_protocol: args.backend_protocol,
        access_log: args.access_log,
    };
    if patch == RoutePatch::default() {
        return Err(CtlError::Usage(
            "nothing to change: give at least one of --new-hostname, --backend, --balance, \
             --check*, --no-check, --mode, --tls-cert, --tls-key, --backend-tls, \
             --backend-protocol, --send-proxy-protocol, --access-log"
                .into(),
        ));
    }
    let (route, warnings) = client
        .update_route(&args.listener, &args.hostname, patch)
        .await?;
    report_route("updated", &args.listener, &route, &warnings, args.json)
}

fn report_route(
    verb: &str,
    listener: &str,
    route: &Route,
    warnings: &[String],
    json: bool,
) -> Result<(), CtlError> {
    for w in warnings {
        warn(&format!("warning: {w}"));
    }
    if json {
        print_json(route)
    } else {
        emit(&format!(
            "{verb} route {} on listener {listener}: {}\n",
            route.hostname,
            target(route)
        ))
    }
}

/// Addresses before networks, each in address order (`10.0.0.9` before `10.0.0.10`).
fn rule_order(rule: &FirewallRule) -> (bool, Option<ipnet::IpNet>, String) {
    let addr = rule
        .value
        .parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| rule.value.parse::<std::net::IpAddr>().ok().map(Into::into));
    (
        rule.kind == FirewallRuleKind::Cidr,
        addr,
        rule.value.clone(),
    )
}

fn rule(args: RuleArgs) -> FirewallRule {
    match (args.ip, args.cidr) {
        (Some(ip), _) => FirewallRule {
            kind: FirewallRuleKind::Ip,
            value: ip,
        },
        (None, cidr) => FirewallRule {
            kind: FirewallRuleKind::Cidr,
            value: cidr.unwrap_or_default(),
        },
    }
}

/// Prints events until the daemon ends the stream. Its end, or a broken connection, means the
/// daemon went away (exit 3), not that it refused anything.
/// `events --type TYPE` (issue 28): only these types are printed. Empty: every type but
/// `stats`, which `--stats` (or `--type stats`) adds.
async fn follow_events(
    client: &mut AdminClient,
    json: bool,
    stats: bool,
    types: &[String],
) -> Result<(), CtlError> {
    let mut events = std::pin::pin!(client.watch_events().await?);
    while let Some(event) = events.next().await {
        let event = event?;
        let kind = event_type(&event.event);
        let wanted = if kind == "stats" {
            stats || types.iter().any(|t| t == kind)
        } else {
            types.is_empty() || types.iter().any(|t| t == kind)
        };
        if !wanted {
            continue;
        }
        if json {
            print_json(&event)?;
        } else {
            emit(&format!("{}\n", format_event(&event)))?;
        }
    }
    Err(CtlError::Unreachable(ClientError::Gone {
        reason: "the daemon ended the event stream: it is shutting down".into(),
    }))
}

/// Every event type, as `--json` names it in `type`.
pub const EVENT_TYPES: [&str; 9] = [
    "connection_opened",
    "connection_closed",
    "connection_blocked",
    "route_changed",
    "listener_changed",
    "firewall_changed",
    "backend_changed",
    "stats",
    "lagged",
];

/// The event's type, as `--json` names it (one of [`EVENT_TYPES`]).
pub fn event_type(event: &Event) -> &'static str {
    match event {
        Event::ConnectionOpened { .. } => "connection_opened",
        Event::ConnectionClosed { .. } => "connection_closed",
        Event::ConnectionBlocked { .. } => "connection_blocked",
        Event::RouteChanged { .. } => "route_changed",
        Event::ListenerChanged { .. } => "listener_changed",
        Event::FirewallChanged { .. } => "firewall_changed",
        Event::BackendChanged { .. } => "backend_changed",
        Event::Stats { .. } => "stats",
        Event::Lagged { .. } => "lagged",
    }
}

fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CtlError> {
    let text = serde_json::to_string(value)
        .map_err(|e| CtlError::Output(std::io::Error::other(format!("JSON: {e}"))))?;
    emit(&format!("{text}\n"))
}

/// JSON, or the table `format` makes (with its header lines unless `--no-headers`).
fn print_out<T: Serialize + ?Sized>(
    how: &TableArgs,
    value: &T,
    format: impl FnOnce(&T, bool) -> String,
) -> Result<(), CtlError> {
    if how.json {
        return print_json(value);
    }
    emit(&format(value, !how.no_headers))
}

/// Aligned columns; the last column is not padded. `header: None` prints the rows alone
/// (`--no-headers`), aligned the same way.
fn table(header: Option<&[&str]>, rows: &[Vec<String>]) -> String {
    let columns = header.map_or_else(|| rows.first().map_or(0, Vec::len), <[&str]>::len);
    let mut widths: Vec<usize> = match header {
        Some(header) => header.iter().map(|h| h.chars().count()).collect(),
        None => vec![0; columns],
    };
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push('\n');
    };
    if let Some(header) = header {
        line(&mut header.iter().copied());
    }
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Where a route goes and how, for one-line reports: `l7 -> 127.0.0.1:9080 (http1)
/// [backend-tls]`. L4 routes speak no HTTP to their backend, so they show no protocol.
fn target(route: &Route) -> String {
    let protocol = match route.mode {
        Mode::L7 => format!(" ({})", route.backend_protocol),
        Mode::L4 => String::new(),
    };
    let balance = if route.backends.len() > 1 {
        format!(" {}", route.balance)
    } else {
        String::new()
    };
    format!(
        "{} -> {}{balance}{protocol}{}",
        route.mode,
        route.backend_list(),
        flags(route)
    )
}

/// The table's PROTO cell: the backend protocol of an L7 route, `-` on L4.
fn protocol_cell(route: &Route) -> String {
    match route.mode {
        Mode::L7 => route.backend_protocol.to_string(),
        Mode::L4 => "-".into(),
    }
}

fn flags(route: &Route) -> String {
    let mut f = Vec::new();
    if route.backend_tls {
        f.push("backend-tls");
    }
    if route.send_proxy_protocol {
        f.push("send-proxy");
    }
    if route.access_log {
        f.push("access-log");
    }
    if f.is_empty() {
        String::new()
    } else {
        format!(" [{}]", f.join(","))
    }
}

/// The listeners table of `status` and `listeners list`, with a line under it per listener
/// whose stored routes are not all served.
fn format_listeners(listeners: &[ListenerStatus], headers: bool) -> String {
    let rows: Vec<Vec<String>> = listeners
        .iter()
        .map(|l| {
            vec![
                match l.bound.as_str() {
                    // Port 0 in the address: the port it got.
                    b if !b.is_empty() && b != l.addr => format!("{} ({b})", l.addr),
                    _ => l.addr.clone(),
                },
                if l.proxy_protocol {
                    if l.proxy_protocol_from.is_empty() {
                        "yes".into()
                    } else {
                        format!("from {}", l.proxy_protocol_from.join(","))
                    }
                } else {
                    "no".into()
                },
                l.route_count.to_string(),
                l.active_connections.to_string(),
                l.accepted.to_string(),
                l.resets.to_string(),
                l.blocked.to_string(),
                match l.no_sni_route.as_str() {
                    "" => "-".to_owned(),
                    route => route.to_owned(),
                },
            ]
        })
        .collect();
    let mut out = table(
        headers.then_some(
            &[
                "LISTENER", "PROXY", "ROUTES", "OPEN", "ACCEPTED", "RESETS", "BLOCKED", "NO-SNI",
            ][..],
        ),
        &rows,
    );
    // ROUTES counts the served ones; the others are said under the table.
    let not_served = listeners.iter().filter(|l| l.routes_not_served > 0);
    for l in not_served.filter(|_| headers) {
        let _ = writeln!(
            out,
            "listener {}: {} stored route(s) not served (see mcproxyctl routes list)",
            l.addr, l.routes_not_served
        );
    }
    out
}

fn format_status(s: &Status, headers: bool) -> String {
    let mut out = String::new();
    let summary = format!(
        "mc-proxy {}, up {}, {} open / {} total connections, {} firewall rule(s)\n\n",
        s.version,
        uptime(s.uptime),
        s.active_connections,
        s.total_connections,
        s.firewall_rules
    );
    if headers {
        out.push_str(&summary);
    }
    out.push_str(&format_listeners(&s.listeners, headers));
    out
}

/// Characters of a not-served reason shown in the `routes list` STATE cell (`routes show`
/// and `--json` carry it whole).
const REASON_CHARS: usize = 60;

/// The STATE cell: `served`, or `not served: ` and the reason, cut with `…`.
fn state_cell(e: &RouteEntry) -> String {
    match &e.not_served {
        None => "served".to_owned(),
        Some(reason) => format!("not served: {}", fit::end(reason, REASON_CHARS)),
    }
}

fn format_routes(routes: &[RouteEntry], headers: bool) -> String {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|e| {
            let r = &e.route;
            let s = &e.stats;
            let live = e.not_served.is_none();
            let figure = |text: String| if live { text } else { "-".to_owned() };
            vec![
                e.listener.clone(),
                r.hostname.clone(),
                r.mode.to_string(),
                backends_cell(r),
                protocol_cell(r),
                match flags(r).trim() {
                    "" => "-".to_owned(),
                    f => f.to_owned(),
                },
                figure(format!("{}/{}", s.active_connections, s.total_connections)),
                figure(human_bytes(s.bytes_in)),
                figure(human_bytes(s.bytes_out)),
                if r.mode == Mode::L7 && live {
                    format!("{} req, {} 5xx", s.requests, s.responses[4])
                } else {
                    "-".into()
                },
                // STATE last: a reason holds spaces, so every column before it splits on
                // whitespace and STATE is the rest of the line.
                members_cell(e),
                state_cell(e),
            ]
        })
        .collect();
    table(
        headers.then_some(
            &[
                "LISTENER", "HOSTNAME", "MODE", "BACKENDS", "PROTO", "FLAGS", "CONNS", "IN", "OUT",
                "L7", "MEMBERS", "STATE",
            ][..],
        ),
        &rows,
    )
}

/// The table's BACKENDS cell: every member's address, joined by commas (no spaces, so the
/// columns stay whitespace-separated for shell loops).
fn backends_cell(route: &Route) -> String {
    route
        .backends
        .iter()
        .map(|b| b.address.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The table's MEMBERS cell (issue 28): each member as `address/wWEIGHT/STATE`, its live state
/// (up, down, ejected, draining, disabled; `-` before the daemon has figures for it, and on a
/// route not served), joined by commas without spaces like BACKENDS.
fn members_cell(e: &RouteEntry) -> String {
    e.route
        .backends
        .iter()
        .map(|b| {
            let state = e
                .stats
                .members
                .iter()
                .find(|m| m.address == b.address)
                .filter(|_| e.not_served.is_none())
                .map_or_else(|| "-".to_owned(), |m| m.state.to_string());
            format!("{}/w{}/{state}", b.address, b.weight)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `routes show`: the route's fields, then one row per member.
fn format_route_detail(e: &RouteEntry) -> String {
    format_route_detail_at(e, now_ms())
}

/// [`format_route_detail`] with times relative to `now_ms`.
fn format_route_detail_at(e: &RouteEntry, now_ms: u64) -> String {
    let r = &e.route;
    let mut out = String::new();
    let _ = writeln!(out, "route     {} on listener {}", r.hostname, e.listener);
    if let Some(reason) = &e.not_served {
        let _ = writeln!(out, "state     not served: {reason}");
    }
    let _ = writeln!(out, "target    {}", target(r));
    let _ = writeln!(out, "balance   {}", r.balance);
    let _ = writeln!(
        out,
        "access    {}",
        if r.access_log {
            "on (a log line per request)"
        } else {
            "off"
        }
    );
    let _ = writeln!(
        out,
        "check     {}",
        match &r.health_check {
            None => "none (passive health only)".to_owned(),
            Some(c) => format!(
                "{} every {}, timeout {}, rise {}, fall {}{}",
                if c.path.is_empty() && r.mode == mc_proxy_shared::Mode::L4 {
                    "tcp connect + tls handshake".to_owned()
                } else if c.path.is_empty() {
                    "tcp connect".to_owned()
                } else {
                    format!("GET {}", c.path)
                },
                humantime::format_duration(c.interval),
                humantime::format_duration(c.timeout),
                c.rise,
                c.fall,
                if c.path.is_empty() {
                    String::new()
                } else {
                    format!(", expect {}", c.expect)
                }
            ),
        }
    );
    if e.not_served.is_none() {
        let s = &e.stats;
        let _ = writeln!(
            out,
            "traffic   {} open, {} total; backend errors {} seen by clients, {} retried on \
             another backend",
            s.active_connections, s.total_connections, s.backend_errors, s.retries
        );
    }
    out.push('\n');
    // Members as configured, with their live figures when the daemon sent them.
    let rows: Vec<Vec<String>> = r
        .backends
        .iter()
        .map(|b| {
            let live = e.stats.members.iter().find(|m| m.address == b.address);
            let n = |f: fn(&MemberStats) -> u64| live.map_or("-".into(), |m| f(m).to_string());
            vec![
                b.address.clone(),
                b.weight.to_string(),
                b.state.to_string(),
                live.map_or("-".into(), |m| m.state.to_string()),
                n(|m| m.active),
                n(|m| m.total),
                n(|m| m.failures),
                n(|m| m.ejections),
                live.map_or("-".into(), |m| member_since(m, now_ms)),
                live.map_or("-".into(), |m| member_check(m, now_ms)),
                live.map_or(String::new(), |m| m.reason.clone()),
            ]
        })
        .collect();
    out.push_str(&table(
        Some(
            &[
                "BACKEND",
                "WEIGHT",
                "ADMIN",
                "STATE",
                "ACTIVE",
                "TOTAL",
                "FAILURES",
                "EJECTIONS",
                "SINCE",
                "CHECK",
                "REASON",
            ][..],
        ),
        &rows,
    ));
    out
}

fn format_backends(backends: &[BackendStatus], headers: bool) -> String {
    let rows: Vec<Vec<String>> = backends
        .iter()
        .map(|b| {
            vec![
                b.backend.clone(),
                b.protocol.to_string(),
                if b.tls { "yes" } else { "no" }.to_owned(),
                b.open.to_string(),
                b.idle.to_string(),
                b.in_use.to_string(),
                b.requests.to_string(),
                b.opened.to_string(),
                b.failed.to_string(),
            ]
        })
        .collect();
    table(
        headers.then_some(
            &[
                "BACKEND", "PROTO", "TLS", "OPEN", "IDLE", "IN_USE", "REQUESTS", "OPENED", "FAILED",
            ][..],
        ),
        &rows,
    )
}

fn format_rules(rules: &[FirewallRule], headers: bool) -> String {
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| vec![r.kind.to_string(), r.value.clone()])
        .collect();
    table(headers.then_some(&["KIND", "VALUE"][..]), &rows)
}

fn format_connections(list: &ConnectionList, headers: bool) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let rows: Vec<Vec<String>> = list
        .connections
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.client.clone(),
                c.listener.clone(),
                dash(&c.route),
                c.mode.to_string(),
                dash(&c.backend),
                format!("{}s", c.age.as_secs()),
                human_bytes(c.bytes_in),
                human_bytes(c.bytes_out),
            ]
        })
        .collect();
    let mut out = table(
        headers.then_some(
            &[
                "ID", "CLIENT", "LISTENER", "ROUTE", "MODE", "BACKEND", "AGE", "IN", "OUT",
            ][..],
        ),
        &rows,
    );
    let listed = list.connections.len() as u64;
    if headers && listed < list.total {
        let _ = writeln!(out, "(first {listed} of {} open connections)", list.total);
    }
    out
}

fn format_reload(report: &[RouteReload], headers: bool) -> String {
    let rows: Vec<Vec<String>> = report
        .iter()
        .map(|r| {
            let detail = match r.result {
                ReloadResult::Failed if r.kept => format!("keeps its certificate: {}", r.error),
                ReloadResult::Failed => format!("not served: {}", r.error),
                _ if r.not_after.is_empty() => String::new(),
                _ => format!("valid until {}", r.not_after),
            };
            let mut detail = detail;
            for w in &r.warnings {
                let _ = write!(detail, "; warning: {w}");
            }
            vec![
                r.listener.clone(),
                r.hostname.clone(),
                r.result.as_str().to_owned(),
                detail,
            ]
        })
        .collect();
    let mut out = table(
        headers.then_some(&["LISTENER", "ROUTE", "RESULT", "DETAIL"][..]),
        &rows,
    );
    if headers && report.is_empty() {
        out.push_str("(no L7 routes: nothing to reload)\n");
    }
    out
}

fn format_event(e: &TimedEvent) -> String {
    let time = clock_ms(e.timestamp_ms);
    let what = match &e.event {
        Event::ConnectionOpened {
            id,
            listener,
            client,
            hostname,
            mode,
            backend,
            ..
        } => format!("open   #{id} {client} -> {listener} {hostname} ({mode} -> {backend})"),
        Event::ConnectionClosed {
            id,
            client,
            hostname,
            bytes_in,
            bytes_out,
            duration_ms,
            outcome,
            error,
            backend,
            ..
        } => {
            let host = if hostname.is_empty() { "-" } else { hostname };
            // The member it went to (L4), or the route's set (L7 chooses per request).
            let backend = if backend.is_empty() { "-" } else { backend };
            let mut line = format!(
                "close  #{id} {client} {host} -> {backend} in {} out {} {duration_ms}ms {outcome}",
                human_bytes(*bytes_in),
                human_bytes(*bytes_out)
            );
            if !error.is_empty() {
                let _ = write!(line, ": {error}");
            }
            line
        }
        Event::ConnectionBlocked {
            listener,
            client,
            reason,
        } => format!("block  {client} -> {listener} ({reason})"),
        Event::RouteChanged {
            listener,
            action,
            route,
            origin,
            ..
        } => format!(
            "route  {action} {} on {listener}: {}{}",
            route.hostname,
            target(route),
            origin_long(origin.as_ref())
        ),
        Event::ListenerChanged {
            listener,
            action,
            origin,
        } => format!("lsnr   {action} {listener}{}", origin_long(origin.as_ref())),
        Event::FirewallChanged {
            action,
            rule,
            origin,
        } => {
            format!(
                "fw     {action} {} {}{}",
                rule.kind,
                rule.value,
                origin_long(origin.as_ref())
            )
        }
        Event::Stats {
            listeners,
            routes,
            backends,
        } => format!(
            "stats  {} listener(s), {} route(s), {} open, {} backend connection(s) ({} in use)",
            listeners.len(),
            routes.len(),
            listeners.iter().map(|l| l.active_connections).sum::<u64>(),
            backends.iter().map(|b| b.open).sum::<u64>(),
            backends.iter().map(|b| b.in_use).sum::<u64>()
        ),
        Event::BackendChanged {
            listener,
            route,
            member,
            origin,
        } => {
            let mut line = format!(
                "backend {route} on {listener}: {} {}",
                member.address,
                member_state_reason(member)
            );
            line.push_str(&origin_long(origin.as_ref()));
            line
        }
        Event::Lagged { dropped } => {
            format!("lagged {dropped} event(s) dropped: reading too slowly")
        }
    };
    format!("{time} {what}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::member_state;
    use mc_proxy_shared::{AdminState, BackendState};

    #[test]
    fn tables_align_columns() {
        let rows = [vec!["xxxx".into(), "y".into(), "z".into()]];
        let t = table(Some(&["A", "LONG HEADER", "C"]), &rows);
        assert_eq!(t, "A     LONG HEADER  C\nxxxx  y            z\n");
        assert_eq!(table(None, &rows), "xxxx  y  z\n");
    }

    #[test]
    fn routes_show_the_backend_protocol_of_l7_routes_only() {
        let entry = |hostname: &str, mode, backend_protocol| RouteEntry {
            not_served: None,
            listener: "127.0.0.1:8443".into(),
            route: Route {
                hostname: hostname.into(),
                backends: vec![RouteBackend::new("127.0.0.1:9080")],
                mode,
                backend_tls: mode == Mode::L7,
                backend_protocol,
                ..Route::default()
            },
            stats: Default::default(),
        };
        let routes = [
            entry("a.test", Mode::L4, mc_proxy_shared::BackendProtocol::Http1),
            entry("b.test", Mode::L7, mc_proxy_shared::BackendProtocol::Auto),
        ];
        let cells = |text: &str| -> Vec<Vec<String>> {
            text.lines()
                .map(|l| l.split_whitespace().map(str::to_owned).collect())
                .collect()
        };
        let with = cells(&format_routes(&routes, true));
        assert_eq!(
            with[0][..6],
            ["LISTENER", "HOSTNAME", "MODE", "BACKENDS", "PROTO", "FLAGS"]
        );
        let without = cells(&format_routes(&routes, false));
        assert_eq!(without, with[1..], "--no-headers: the same rows");
        assert_eq!(
            without[0][1..6],
            ["a.test", "l4", "127.0.0.1:9080", "-", "-"]
        );
        assert_eq!(
            without[1][1..6],
            ["b.test", "l7", "127.0.0.1:9080", "auto", "[backend-tls]"]
        );
        assert_eq!(target(&routes[0].route), "l4 -> 127.0.0.1:9080");
        assert_eq!(
            target(&routes[1].route),
            "l7 -> 127.0.0.1:9080 (auto) [backend-tls]"
        );
    }

    #[test]
    fn bytes_are_human_sized() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0M");
    }

    #[test]
    fn backend_flags_take_both_weight_spellings() {
        use crate::cli::parse_backend;
        let three = RouteBackend::new("10.0.0.1:443").with_weight(3);
        assert_eq!(parse_backend("10.0.0.1:443,weight=3"), Ok(three.clone()));
        assert_eq!(parse_backend("10.0.0.1:443 weight=3"), Ok(three));
        assert_eq!(
            parse_backend("[::1]:443"),
            Ok(RouteBackend::new("[::1]:443"))
        );
        assert!(parse_backend("a:1,weight=x").is_err());
        assert!(parse_backend("a:1 w=2").is_err());
        // 0 is passed on as 0, for the daemon to refuse as the TOML's validation does.
        assert_eq!(
            parse_backend("a:1,weight=0"),
            Ok(RouteBackend::new("a:1").with_weight(0))
        );
        assert_eq!(
            parse_backend("a:1,wieght=3").unwrap_err(),
            "invalid backend \"a:1,wieght=3\": unknown option \"wieght\": expected weight=N"
        );
        for stray in ["a:1, weight=3", "a:1,", ", weight=3"] {
            let err = parse_backend(stray).unwrap_err();
            assert!(err.contains(": stray \",\": expected"), "{stray:?}: {err}");
            assert!(!err.contains("port must"), "{err}");
        }
    }

    #[test]
    fn a_new_set_keeps_the_admin_state_of_members_that_stay() {
        let drained = RouteBackend {
            state: AdminState::Draining,
            ..RouteBackend::new("a:1")
        };
        let new = keep_admin_states(
            vec![
                RouteBackend::new("a:1").with_weight(4),
                RouteBackend::new("b:1"),
            ],
            &[drained, RouteBackend::new("c:1")],
        );
        assert_eq!(
            new,
            vec![
                RouteBackend {
                    state: AdminState::Draining,
                    ..RouteBackend::new("a:1").with_weight(4)
                },
                RouteBackend::new("b:1"),
            ]
        );
    }

    #[test]
    fn the_detail_lists_every_member_with_its_state_and_traffic() {
        let route = Route {
            hostname: "app.test".into(),
            backends: vec![
                RouteBackend::new("10.0.0.1:443").with_weight(2),
                RouteBackend {
                    state: AdminState::Draining,
                    ..RouteBackend::new("10.0.0.1:444")
                },
            ],
            balance: mc_proxy_shared::Balance::LeastConn,
            ..Route::default()
        };
        let member = |address: &str, admin, state, active| MemberStats {
            address: address.into(),
            weight: 1,
            admin,
            state,
            active,
            total: 10,
            failures: 1,
            ejections: 0,
            reason: String::new(),
            since_ms: 1_000_000,
            last_check: None,
            checks_passed: 0,
            checks_failed: 0,
        };
        let entry = RouteEntry {
            not_served: None,
            listener: "127.0.0.1:8443".into(),
            stats: mc_proxy_shared::client::RouteStats {
                members: vec![
                    member(
                        "10.0.0.1:443",
                        AdminState::Enabled,
                        BackendState::Ejected,
                        0,
                    ),
                    member(
                        "10.0.0.1:444",
                        AdminState::Draining,
                        BackendState::Draining,
                        3,
                    ),
                ],
                ..Default::default()
            },
            route,
        };
        let mut entry = entry;
        entry.stats.members[0].last_check = Some(mc_proxy_shared::CheckResult {
            at_ms: 1_117_000,
            error: Some("connect refused".into()),
            latency: std::time::Duration::from_micros(150),
        });
        let text = format_route_detail_at(&entry, 1_120_000);
        assert!(
            text.contains("for 2m  3s ago: connect refused in 150µs"),
            "{text}"
        );
        assert!(text.contains("for 2m  -"), "no check: {text}");
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("BACKEND"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[1..],
            [
                vec![
                    "10.0.0.1:443",
                    "2",
                    "enabled",
                    "ejected",
                    "0",
                    "10",
                    "1",
                    "0",
                    "for",
                    "2m",
                    "3s",
                    "ago:",
                    "connect",
                    "refused",
                    "in",
                    "150µs"
                ],
                vec![
                    "10.0.0.1:444",
                    "1",
                    "draining",
                    "draining",
                    "3",
                    "10",
                    "1",
                    "0",
                    "for",
                    "2m",
                    "-"
                ],
            ]
        );
        assert!(
            text.contains("target    l4 -> 10.0.0.1:443, 10.0.0.1:444 least_conn"),
            "{text}"
        );
        let cells = format_routes(std::slice::from_ref(&entry), false);
        assert!(cells.contains(" 10.0.0.1:443,10.0.0.1:444 "), "{cells}");
    }

    #[test]
    fn a_backend_change_is_one_line_with_its_state_and_reason() {
        let event = TimedEvent {
            timestamp_ms: 45_296_000,
            event: Event::BackendChanged {
                listener: "127.0.0.1:8443".into(),
                route: "app.test".into(),
                member: MemberStats {
                    address: "10.0.0.1:443".into(),
                    weight: 1,
                    admin: AdminState::Enabled,
                    state: BackendState::Down,
                    reason: "3 failed checks: connection refused".into(),
                    ..MemberStats::default()
                },
                origin: None,
            },
        };
        assert_eq!(
            format_event(&event),
            "12:34:56.000 backend app.test on 127.0.0.1:8443: 10.0.0.1:443 down \
             (3 failed checks: connection refused)"
        );
        let drained = MemberStats {
            admin: AdminState::Draining,
            state: BackendState::Draining,
            ..MemberStats::default()
        };
        assert_eq!(member_state(&drained), "draining");
        let ejected_while_draining = MemberStats {
            state: BackendState::Ejected,
            ..drained
        };
        assert_eq!(member_state(&ejected_while_draining), "draining,ejected");
    }
}
