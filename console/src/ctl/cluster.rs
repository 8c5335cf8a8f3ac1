//! `mcproxyctl cluster status`: this node's link to the fleet's store and every node
//! registered there, with how far each is behind the store.
//!
//! I/O: the admin socket (through the caller's client) and stdout.

use mc_proxy_shared::client::{AdminClient, ClusterStatus};

use super::{CtlError, print_out, table};
use crate::cli::TableArgs;

/// `cluster status`.
pub(super) async fn status(client: &mut AdminClient, how: &TableArgs) -> Result<(), CtlError> {
    let status = client.cluster_status().await?;
    print_out(how, &status, format_status)
}

fn format_status(s: &ClusterStatus, headers: bool) -> String {
    let mut out = String::new();
    let l = &s.link;
    if headers {
        out.push_str(&format!(
            "node {}: {}\n",
            l.node,
            crate::format::cluster_link(l)
        ));
        out.push_str(&format!(
            "store {} prefix {}\n",
            l.endpoints.join(","),
            l.prefix
        ));
        if !l.last_error.is_empty() {
            out.push_str(&format!("last error: {}\n", l.last_error));
        }
        if l.drift_repaired > 0 {
            out.push_str(&format!(
                "drift repaired since start: {} object(s)\n",
                l.drift_repaired
            ));
        }
        if !s.nodes_error.is_empty() {
            out.push_str(&format!("nodes: not listed: {}\n", s.nodes_error));
        }
        out.push('\n');
    }
    // Nodes are compared with each other: the newest table any of them applied.
    let newest = s
        .nodes
        .iter()
        .map(|n| n.applied_revision)
        .max()
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.version.clone(),
                n.applied_revision.to_string(),
                (newest - n.applied_revision).max(0).to_string(),
                n.listeners.len().to_string(),
                if n.last_error.is_empty() {
                    "-".to_owned()
                } else {
                    n.last_error.clone()
                },
            ]
        })
        .collect();
    out.push_str(&table(
        headers.then_some(
            &[
                "NODE",
                "VERSION",
                "APPLIED",
                "BEHIND",
                "LISTENERS",
                "LAST ERROR",
            ][..],
        ),
        &rows,
    ));
    out
}
