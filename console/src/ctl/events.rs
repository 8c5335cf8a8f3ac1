//! `mcproxyctl events`: the live event stream, filtered by type, one line (or JSON object)
//! per event, flushed as it comes.
//!
//! I/O: the admin socket (through the caller's client) and stdout.

use std::fmt::Write as _;

use futures_util::StreamExt;
use mc_proxy_shared::client::{AdminClient, ClientError, Event, TimedEvent};

use super::routes::target;
use super::{CtlError, emit, print_json};
use crate::format::{clock_ms, human_bytes, member_state_reason, origin_long};

/// Prints events until the daemon ends the stream. Its end, or a broken connection, means the
/// daemon went away (exit 3), not that it refused anything.
/// `events --type TYPE` (issue 28): only these types are printed. Empty: every type but
/// `stats`, which `--stats` (or `--type stats`) adds.
pub(super) async fn follow(
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
pub const EVENT_TYPES: [&str; 12] = [
    "connection_opened",
    "connection_closed",
    "connection_blocked",
    "route_changed",
    "listener_changed",
    "firewall_changed",
    "backend_changed",
    "cluster_link",
    "certificate_expiring",
    "acme_order",
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
        Event::ClusterLink { .. } => "cluster_link",
        Event::CertificateExpiring { .. } => "certificate_expiring",
        Event::AcmeOrder { .. } => "acme_order",
        Event::Stats { .. } => "stats",
        Event::Lagged { .. } => "lagged",
    }
}

fn format_event(e: &TimedEvent) -> String {
    let what = match &e.event {
        Event::ConnectionOpened { .. }
        | Event::ConnectionClosed { .. }
        | Event::ConnectionBlocked { .. } => connection_text(&e.event),
        other => change_text(other),
    };
    format!("{} {what}", clock_ms(e.timestamp_ms))
}

/// A connection opened, closed or blocked, in a line.
fn connection_text(event: &Event) -> String {
    match event {
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
        _ => String::new(),
    }
}

/// Anything but a connection: a change and who made it, a member's state, stats, lag.
fn change_text(event: &Event) -> String {
    match event {
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
        Event::ClusterLink { link } => format!(
            "clstr  node {} {}{}",
            link.node,
            crate::format::cluster_link(link),
            if link.last_error.is_empty() {
                String::new()
            } else {
                format!(": {}", link.last_error)
            }
        ),
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
            cluster,
        } => format!(
            "stats  {} listener(s), {} route(s), {} open, {} backend connection(s) ({} in use){}",
            listeners.len(),
            routes.len(),
            listeners.iter().map(|l| l.active_connections).sum::<u64>(),
            backends.iter().map(|b| b.open).sum::<u64>(),
            backends.iter().map(|b| b.in_use).sum::<u64>(),
            cluster
                .as_ref()
                .map(|c| format!(", cluster {}", crate::format::cluster_link(c)))
                .unwrap_or_default()
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
        Event::CertificateExpiring {
            listener,
            route,
            not_after_ms,
        } => format!(
            "cert   {route} on {listener}: its certificate ends {}",
            crate::format::date(*not_after_ms)
        ),
        Event::AcmeOrder {
            route,
            not_after_ms,
            error,
        } => match (not_after_ms, error) {
            (Some(end), _) => format!(
                "acme   {route}: certificate issued, until {}",
                crate::format::date(*end)
            ),
            (None, error) => format!(
                "acme   {route}: order FAILED: {}",
                error.as_deref().unwrap_or("no reason given")
            ),
        },
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::member_state;
    use mc_proxy_shared::{AdminState, BackendState, MemberStats};

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
