//! `mcproxyctl routes ...`: list, show, add, update (a patch of what the flags name, the set
//! and the health check edited on top of what the route has), set a backend's state or
//! weight, remove; and the route tables and one-line reports they print.
//!
//! I/O: the admin socket (through the caller's client) and stdout/stderr.

use std::fmt::Write as _;

use mc_proxy_shared::client::{AdminClient, RouteEntry, RoutePatch};
use mc_proxy_shared::{ChangeAction, HealthCheck, MemberStats, Mode, Route};

use super::{CtlError, emit, print_json, print_out, print_warnings, table};
use crate::cli::{CheckArgs, RouteArgs, RoutesCommand, UpdateArgs};
use crate::edit::keep_admin_states;
use crate::format::{fit, human_bytes, member_check, member_since, now_ms};
use crate::paths::absolute_path;

/// Runs one `routes` subcommand.
pub(super) async fn run(client: &mut AdminClient, command: RoutesCommand) -> Result<(), CtlError> {
    match command {
        RoutesCommand::List { listener, table } => {
            let mut routes = client.list_routes(listener.as_deref()).await?;
            routes.sort_by(|a, b| {
                (&a.listener, &a.route.hostname).cmp(&(&b.listener, &b.route.hostname))
            });
            print_out(&table, &routes, |r, h| format_routes(r, h))
        }
        RoutesCommand::Add(args) => add_route(client, args).await,
        RoutesCommand::Update(args) => update_route(client, args).await,
        RoutesCommand::Show {
            hostname,
            listener,
            json,
        } => {
            let entry = find_route(client, &hostname, listener.as_deref()).await?;
            if json {
                print_json(&entry)
            } else {
                emit(&format_route_detail(&entry))
            }
        }
        RoutesCommand::Backend(command) => {
            let (state, weight, args) = command.into_parts();
            let entry = find_route(client, &args.hostname, args.listener.as_deref()).await?;
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
        RoutesCommand::Remove { listener, hostname } => {
            client.remove_route(&listener, &hostname).await?;
            emit(&format!(
                "removed route {hostname} from listener {listener}\n"
            ))
        }
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
        limits: Box::new(args.limits.patch().apply(Default::default())),
        acme: args.acme,
    };
    let (route, warnings) = client.add_route(&args.listener, route).await?;
    report_route(
        ChangeAction::Added,
        &args.listener,
        &route,
        &warnings,
        args.json,
    )
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
        limits: args.limits.patch(),
        acme: args.acme,
    };
    if patch == RoutePatch::default() {
        return Err(CtlError::Usage(
            "nothing to change: give at least one of --new-hostname, --backend, --balance, \
             --check*, --no-check, --mode, --tls-cert, --tls-key, --backend-tls, \
             --backend-protocol, --send-proxy-protocol, --access-log, --allow-from, \
             --deny-from, --allow-any, --deny-none, --client-request-rate, \
             --client-request-burst, --route-request-rate, --route-request-burst, \
             --max-requests, --max-queue, --queue-timeout, --acme"
                .into(),
        ));
    }
    let (route, warnings) = client
        .update_route(&args.listener, &args.hostname, patch)
        .await?;
    report_route(
        ChangeAction::Updated,
        &args.listener,
        &route,
        &warnings,
        args.json,
    )
}

fn report_route(
    verb: ChangeAction,
    listener: &str,
    route: &Route,
    warnings: &[String],
    json: bool,
) -> Result<(), CtlError> {
    print_warnings(warnings)?;
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

/// Where a route goes and how, for one-line reports: `l7 -> 127.0.0.1:9080 (http1)
/// [backend-tls]`. L4 routes speak no HTTP to their backend, so they show no protocol.
pub(super) fn target(route: &Route) -> String {
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
    if route.acme {
        f.push("acme");
    }
    if f.is_empty() {
        String::new()
    } else {
        format!(" [{}]", f.join(","))
    }
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
    let _ = writeln!(out, "check     {}", check_text(r));
    if let Some(limits) = crate::format::route_limits(&r.limits) {
        let _ = writeln!(out, "limits    {limits}");
    }
    if e.not_served.is_none() {
        let s = &e.stats;
        let _ = writeln!(
            out,
            "traffic   {} open, {} total; backend errors {} seen by clients, {} retried on \
             another backend",
            s.active_connections, s.total_connections, s.backend_errors, s.retries
        );
        if r.limits != Default::default() {
            let _ = writeln!(
                out,
                "refused   {} denied ({}), {} rate limited (429), {} overloaded (503); {} \
                 queued, {} in flight, {} waiting",
                s.limits.denied,
                if r.mode == Mode::L7 { "403" } else { "reset" },
                s.limits.rate_limited,
                s.limits.overloaded,
                s.limits.queued,
                s.limits.in_flight,
                s.limits.waiting
            );
        }
        if s.limits.rapid_resets > 0 {
            let _ = writeln!(
                out,
                "h2        {} connections sent GOAWAY for resetting too many accepted streams",
                s.limits.rapid_resets
            );
        }
    }
    out.push('\n');
    out.push_str(&members_table(e, now_ms));
    out
}

/// The check in words: `GET /health every 2s, timeout 1s, rise 2, fall 3, expect 200-399`.
fn check_text(r: &Route) -> String {
    match &r.health_check {
        None => "none (passive health only)".to_owned(),
        Some(c) => format!(
            "{} every {}, timeout {}, rise {}, fall {}{}",
            if c.path.is_empty() && r.mode == Mode::L4 {
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
}

/// `routes show`'s member table: the members as configured, with their live figures when
/// the daemon sent them (times relative to `now_ms`).
fn members_table(e: &RouteEntry, now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = e
        .route
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
    table(
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
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mc_proxy_shared::{AdminState, BackendState, RouteBackend};

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
            certificate: None,
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
            certificate: None,
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
}
