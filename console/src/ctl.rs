//! The scripted subcommands: one admin API call each, printed as a table or JSON.
//!
//! I/O: the admin socket and stdout. Errors come back as `CtlError`, whose exit code tells a
//! script what kind of failure it was.

use std::fmt::Write as _;
use std::path::Path;

use futures_util::StreamExt;
use mc_proxy_shared::client::{
    AdminClient, ClientError, Event, RouteEntry, RoutePatch, Status, TimedEvent,
};
use mc_proxy_shared::{FirewallRule, FirewallRuleKind, Mode, Route};
use serde::Serialize;

use crate::cli::{Command, FirewallCommand, RouteArgs, RoutesCommand, RuleArgs, UpdateArgs};

/// A failed subcommand.
#[derive(Debug)]
pub enum CtlError {
    /// No daemon on the socket.
    Unreachable(ClientError),
    /// The daemon said no, or answered oddly.
    Daemon(ClientError),
    /// The arguments make no sense.
    Usage(String),
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::Unreachable(e) | CtlError::Daemon(e) => write!(f, "{e}"),
            CtlError::Usage(m) => f.write_str(m),
        }
    }
}

impl CtlError {
    /// 1: the daemon refused; 2: usage; 3: no daemon.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Daemon(_) => 1,
            CtlError::Usage(_) => 2,
            CtlError::Unreachable(_) => 3,
        }
    }
}

impl From<ClientError> for CtlError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Connect { .. } => CtlError::Unreachable(e),
            other => CtlError::Daemon(other),
        }
    }
}

/// Runs one subcommand against the daemon at `socket`.
pub async fn run(socket: &Path, command: Command) -> Result<(), CtlError> {
    let mut client = AdminClient::connect(socket).await?;
    match command {
        Command::Status { json } => {
            let status = client.status().await?;
            print_out(json, &status, format_status)
        }
        Command::Routes(RoutesCommand::List { listener, json }) => {
            let routes = client.list_routes(listener.as_deref()).await?;
            print_out(json, &routes, |r| format_routes(r))
        }
        Command::Routes(RoutesCommand::Add(args)) => add_route(&mut client, args).await,
        Command::Routes(RoutesCommand::Update(args)) => update_route(&mut client, args).await,
        Command::Routes(RoutesCommand::Remove { listener, hostname }) => {
            client.remove_route(&listener, &hostname).await?;
            println!("removed route {hostname} from listener {listener}");
            Ok(())
        }
        Command::Firewall(FirewallCommand::List { json }) => {
            let rules = client.firewall_rules().await?;
            print_out(json, &rules, |r| format_rules(r))
        }
        Command::Firewall(FirewallCommand::Add(args)) => {
            let rule = client.add_firewall_rule(rule(args)).await?;
            println!("blocked {} {}", rule.kind, rule.value);
            Ok(())
        }
        Command::Firewall(FirewallCommand::Remove(args)) => {
            let rule = rule(args);
            client.remove_firewall_rule(rule.clone()).await?;
            println!("unblocked {} {}", rule.kind, rule.value);
            Ok(())
        }
        Command::Events { json, stats } => follow_events(&mut client, json, stats).await,
        Command::Console { .. } => Err(CtlError::Usage("the console runs from main".into())),
    }
}

fn parse_mode(mode: Option<&str>) -> Result<Option<Mode>, CtlError> {
    mode.map(|m| m.parse::<Mode>())
        .transpose()
        .map_err(|e| CtlError::Usage(e.to_string()))
}

async fn add_route(client: &mut AdminClient, args: RouteArgs) -> Result<(), CtlError> {
    let route = Route {
        hostname: args.hostname,
        backend: args.backend,
        mode: parse_mode(args.mode.as_deref())?.unwrap_or_default(),
        tls_cert: args.tls_cert.unwrap_or_default(),
        tls_key: args.tls_key.unwrap_or_default(),
        backend_tls: args.backend_tls,
        send_proxy_protocol: args.send_proxy_protocol,
    };
    let (route, warnings) = client.add_route(&args.listener, route).await?;
    report_route("added", &args.listener, &route, &warnings, args.json)
}

async fn update_route(client: &mut AdminClient, args: UpdateArgs) -> Result<(), CtlError> {
    let patch = RoutePatch {
        hostname: args.new_hostname,
        backend: args.backend,
        mode: parse_mode(args.mode.as_deref())?,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        backend_tls: args.backend_tls,
        send_proxy_protocol: args.send_proxy_protocol,
    };
    if patch == RoutePatch::default() {
        return Err(CtlError::Usage(
            "nothing to change: give at least one of --new-hostname, --backend, --mode, \
             --tls-cert, --tls-key, --backend-tls, --send-proxy-protocol"
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
        eprintln!("warning: {w}");
    }
    if json {
        print_json(route);
    } else {
        println!(
            "{verb} route {} on listener {listener}: {} -> {}{}",
            route.hostname,
            route.mode,
            route.backend,
            flags(route)
        );
    }
    Ok(())
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

async fn follow_events(client: &mut AdminClient, json: bool, stats: bool) -> Result<(), CtlError> {
    let mut events = std::pin::pin!(client.watch_events().await?);
    while let Some(event) = events.next().await {
        let event = event?;
        if !stats && matches!(event.event, Event::Stats { .. }) {
            continue;
        }
        if json {
            print_json(&event);
        } else {
            println!("{}", format_event(&event));
        }
    }
    Err(CtlError::Daemon(ClientError::Protocol(
        "the daemon closed the event stream (shutting down?)".into(),
    )))
}

fn print_json<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_string(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("mcproxyctl: cannot encode JSON: {e}"),
    }
}

fn print_out<T: Serialize + ?Sized>(
    json: bool,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<(), CtlError> {
    if json {
        print_json(value);
    } else {
        print!("{}", table(value));
    }
    Ok(())
}

/// Aligned columns; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
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
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn flags(route: &Route) -> String {
    let mut f = Vec::new();
    if route.backend_tls {
        f.push("backend-tls");
    }
    if route.send_proxy_protocol {
        f.push("send-proxy");
    }
    if f.is_empty() {
        String::new()
    } else {
        format!(" [{}]", f.join(","))
    }
}

/// 1536 -> "1.5K".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn format_status(s: &Status) -> String {
    let secs = s.uptime.as_secs();
    let mut out = format!(
        "mc-proxy {}, up {}h{:02}m{:02}s, {} open / {} total connections, {} firewall rule(s)\n\n",
        s.version,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        s.active_connections,
        s.total_connections,
        s.firewall_rules
    );
    let rows: Vec<Vec<String>> = s
        .listeners
        .iter()
        .map(|l| {
            vec![
                l.addr.clone(),
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
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "LISTENER", "PROXY", "ROUTES", "OPEN", "ACCEPTED", "RESETS", "BLOCKED",
        ],
        &rows,
    ));
    out
}

fn format_routes(routes: &[RouteEntry]) -> String {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|e| {
            let r = &e.route;
            let s = &e.stats;
            vec![
                e.listener.clone(),
                r.hostname.clone(),
                r.mode.to_string(),
                r.backend.clone(),
                flags(r).trim().to_owned(),
                format!("{}/{}", s.active_connections, s.total_connections),
                human_bytes(s.bytes_in),
                human_bytes(s.bytes_out),
                if r.mode == Mode::L7 {
                    format!("{} req, {} 5xx", s.requests, s.responses[4])
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    table(
        &[
            "LISTENER", "HOSTNAME", "MODE", "BACKEND", "FLAGS", "CONNS", "IN", "OUT", "L7",
        ],
        &rows,
    )
}

fn format_rules(rules: &[FirewallRule]) -> String {
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| vec![r.kind.to_string(), r.value.clone()])
        .collect();
    table(&["KIND", "VALUE"], &rows)
}

fn format_event(e: &TimedEvent) -> String {
    let secs = e.timestamp_ms / 1000;
    let time = format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        e.timestamp_ms % 1000
    );
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
            ..
        } => {
            let host = if hostname.is_empty() { "-" } else { hostname };
            let mut line = format!(
                "close  #{id} {client} {host} in {} out {} {duration_ms}ms {outcome}",
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
            ..
        } => format!(
            "route  {action} {} on {listener}: {} -> {}{}",
            route.hostname,
            route.mode,
            route.backend,
            flags(route)
        ),
        Event::FirewallChanged { action, rule } => {
            format!("fw     {action} {} {}", rule.kind, rule.value)
        }
        Event::Stats { listeners, routes } => format!(
            "stats  {} listener(s), {} route(s), {} open",
            listeners.len(),
            routes.len(),
            listeners.iter().map(|l| l.active_connections).sum::<u64>()
        ),
        Event::Lagged { dropped } => {
            format!("lagged {dropped} event(s) dropped: reading too slowly")
        }
    };
    format!("{time} {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONG HEADER", "C"],
            &[vec!["xxxx".into(), "y".into(), "z".into()]],
        );
        assert_eq!(t, "A     LONG HEADER  C\nxxxx  y            z\n");
    }

    #[test]
    fn bytes_are_human_sized() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0M");
    }
}
