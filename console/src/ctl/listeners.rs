//! `mcproxyctl listeners ...`: list, add, update (PROXY protocol, trusted sources, the no-SNI
//! route, the access log, the per-client limits), remove; and the listeners table `status`
//! prints too.
//!
//! I/O: the admin socket (through the caller's client) and stdout/stderr.

use std::fmt::Write as _;

use mc_proxy_shared::client::{AdminClient, ListenerStatus, ListenerUpdate, NewListener};

use super::{CtlError, emit, print_out, print_warnings, table};
use crate::cli::ListenersCommand;

/// Runs one `listeners` subcommand.
pub(super) async fn run(
    client: &mut AdminClient,
    command: ListenersCommand,
) -> Result<(), CtlError> {
    match command {
        ListenersCommand::List { table } => {
            let status = client.status().await?;
            print_out(&table, &status.listeners[..], format_listeners)
        }
        ListenersCommand::Add {
            addr,
            name,
            kind,
            redirect_port,
            proxy_protocol,
            proxy_protocol_from,
            access_log,
            limits,
        } => {
            // The daemon's own check, before anything is sent.
            mc_proxy_shared::ClientLimits::default()
                .patched(&limits.patch())
                .map_err(|e| CtlError::Usage(e.to_string()))?;
            let fields = ListenerUpdate {
                proxy_protocol: Some(proxy_protocol),
                proxy_protocol_from: Some(proxy_protocol_from),
                no_sni_route: None,
                access_log: Some(access_log),
                client_limits: limits.patch(),
            };
            let new = NewListener {
                name: name.as_deref(),
                kind,
                redirect_port,
            };
            add(client, &addr, new, fields).await
        }
        ListenersCommand::Update {
            listener,
            no_sni_route,
            proxy_protocol,
            proxy_protocol_from,
            any_proxy_source,
            access_log,
            limits,
        } => {
            let fields = ListenerUpdate {
                no_sni_route,
                access_log,
                client_limits: limits.patch(),
                proxy_protocol,
                proxy_protocol_from: match (any_proxy_source, proxy_protocol_from.is_empty()) {
                    (true, _) => Some(Vec::new()),
                    (false, false) => Some(proxy_protocol_from),
                    (false, true) => None,
                },
            };
            update(client, &listener, fields).await
        }
        ListenersCommand::Remove { addr, with_routes } => {
            client.remove_listener(&addr, with_routes).await?;
            emit(&format!("listener {} removed\n", addr.trim()))
        }
    }
}

/// `listeners add`: the listener as bound (port 0 says the port it got).
async fn add(
    client: &mut AdminClient,
    addr: &str,
    new: NewListener<'_>,
    fields: ListenerUpdate,
) -> Result<(), CtlError> {
    let (l, warnings) = client.add_listener_with(addr, new, fields).await?;
    print_warnings(&warnings)?;
    let bound = match l.bound.as_str() {
        "" => String::new(),
        b if b == l.addr => String::new(),
        b => format!(" (bound to {b})"),
    };
    let named = if l.name == l.addr {
        String::new()
    } else {
        format!(" (name {})", l.name)
    };
    if l.kind == mc_proxy_shared::ListenerKind::Http {
        return emit(&format!(
            "http listener {}{named} added{bound}, {}{}: answers ACME http-01 challenges, \
             redirects everything else to https://{}\n",
            l.addr,
            proxy_text(&l),
            limits_text(&l.client_limits),
            match l.redirect_port {
                443 => String::new(),
                port => format!(" port {port}"),
            }
        ));
    }
    emit(&format!(
        "listener {}{named} added{bound}, {}{}; no routes yet: mcproxyctl routes add \
         --listener {} ...\n",
        l.addr,
        proxy_text(&l),
        limits_text(&l.client_limits),
        l.name
    ))
}

/// `listeners update`: only what the flags name changes; nothing named is a usage error.
async fn update(
    client: &mut AdminClient,
    listener: &str,
    fields: ListenerUpdate,
) -> Result<(), CtlError> {
    if fields == ListenerUpdate::default() {
        return Err(CtlError::Usage(
            "nothing to change: give at least one of --no-sni-route, --proxy-protocol, \
             --proxy-protocol-from, --any-proxy-source, --access-log, --max-conns-per-client, \
             --new-conns-per-client, --new-conns-burst, --client-ipv6-prefix"
                .into(),
        ));
    }
    let (l, warnings) = client.update_listener(listener, fields).await?;
    print_warnings(&warnings)?;
    let no_sni = match l.no_sni_route.as_str() {
        "" => "hellos without SNI are reset".to_owned(),
        route => format!("hellos without SNI go to {route}"),
    };
    emit(&format!(
        "listener {} updated: {}; {no_sni}{}\n",
        l.addr,
        proxy_text(&l),
        limits_text(&l.client_limits)
    ))
}

/// A listener's client limits in words, after `; `; nothing when none is on.
pub(super) fn limits_text(limits: &mc_proxy_shared::ClientLimits) -> String {
    crate::format::client_limits(limits)
        .map(|text| format!("; {text}"))
        .unwrap_or_default()
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

/// The listeners table of `status` and `listeners list`, with a line under it per listener
/// whose stored routes are not all served. A NAME column only when some listener has a name
/// other than its address: the table is at 80 columns already, and most have none.
pub(super) fn format_listeners(listeners: &[ListenerStatus], headers: bool) -> String {
    let named = listeners.iter().any(|l| l.name != l.addr);
    let rows: Vec<Vec<String>> = listeners
        .iter()
        .map(|l| {
            let mut row = vec![
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
                match l.kind {
                    // An http listener holds none: it redirects (said under the table).
                    mc_proxy_shared::ListenerKind::Http => "http".to_owned(),
                    mc_proxy_shared::ListenerKind::Tls => l.route_count.to_string(),
                },
                l.active_connections.to_string(),
                l.accepted.to_string(),
                l.resets.to_string(),
                l.blocked.to_string(),
                match l.no_sni_route.as_str() {
                    "" => "-".to_owned(),
                    route => route.to_owned(),
                },
            ];
            if named {
                row.insert(1, l.name.clone());
            }
            row
        })
        .collect();
    let mut header = vec![
        "LISTENER", "PROXY", "ROUTES", "OPEN", "ACCEPTED", "RESETS", "BLOCKED", "NO-SNI",
    ];
    if named {
        header.insert(1, "NAME");
    }
    let mut out = table(headers.then_some(&header[..]), &rows);
    // ROUTES counts the served ones; the others are said under the table.
    let not_served = listeners.iter().filter(|l| l.routes_not_served > 0);
    for l in not_served.filter(|_| headers) {
        let _ = writeln!(
            out,
            "listener {}: {} stored route(s) not served (see mcproxyctl routes list)",
            l.addr, l.routes_not_served
        );
    }
    let http = listeners
        .iter()
        .filter(|l| l.kind == mc_proxy_shared::ListenerKind::Http);
    for l in http.filter(|_| headers) {
        let _ = writeln!(
            out,
            "listener {}: plain HTTP, answers ACME http-01 and redirects to {}",
            l.addr,
            crate::format::redirect_target(l.redirect_port)
        );
    }
    out
}
