//! `mcproxyctl status` (version, uptime, totals and the listeners table) and `backends`
//! (the L7 backend connection pools).
//!
//! I/O: the admin socket (through the caller's client) and stdout.

use mc_proxy_shared::client::{AdminClient, BackendStatus, Status};

use super::listeners::format_listeners;
use super::{CtlError, print_out, table};
use crate::cli::TableArgs;
use crate::format::uptime;

/// `status`.
pub(super) async fn status(client: &mut AdminClient, table: &TableArgs) -> Result<(), CtlError> {
    let status = client.status().await?;
    print_out(table, &status, format_status)
}

/// `backends`.
pub(super) async fn backends(client: &mut AdminClient, table: &TableArgs) -> Result<(), CtlError> {
    let status = client.status().await?;
    print_out(table, &status.backends[..], format_backends)
}

fn format_status(s: &Status, headers: bool) -> String {
    let mut out = String::new();
    // The pid tells an upgraded daemon (a new process on the same socket) from the old one.
    let pid = s.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
    let summary = format!(
        "mc-proxy {}{pid}, up {}, {} open / {} total connections, {} firewall rule(s)\n\n",
        s.version,
        uptime(s.uptime),
        s.active_connections,
        s.total_connections,
        s.firewall_rules
    );
    if headers {
        out.push_str(&summary);
        if let Some(c) = &s.cluster {
            out.insert_str(
                out.len() - 1,
                &format!(
                    "cluster: node {} {}, applied revision {}\n",
                    c.node,
                    crate::format::cluster_link(c),
                    c.applied_revision
                ),
            );
        }
    }
    out.push_str(&format_listeners(&s.listeners, headers));
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
