//! What this node knows of its link to the fleet's store (`[cluster]`), as the admin API's
//! status, `/metrics` and the console show it: connected or not and since when, the etcd
//! revision applied here and the newest one the store has reported.
//!
//! No I/O: `control::cluster` writes it (swapped whole, like every snapshot), readers load it.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The link's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet since start.
    Connecting,
    /// Connected and watching.
    Connected,
    /// Lost; the node serves its last applied state meanwhile.
    Disconnected,
}

/// This node's view of the cluster store.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// This node's name.
    pub node: String,
    /// The etcd endpoints.
    pub endpoints: Vec<String>,
    /// The key prefix.
    pub prefix: String,
    /// Connected or not.
    pub link: Link,
    /// Since when the link is in that state.
    pub since: SystemTime,
    /// The store revision this node has applied (0: none yet).
    pub applied: i64,
    /// The newest store revision this node has heard of.
    pub store_revision: i64,
    /// The last error of the sync, empty if none.
    pub last_error: String,
    /// Objects found different from the store by a periodic comparison and repaired, since
    /// start (0 on a healthy node).
    pub drift_repaired: u64,
}

impl ClusterView {
    /// Revisions of the store this node has not applied yet.
    pub fn behind(&self) -> i64 {
        (self.store_revision - self.applied).max(0)
    }

    /// In words: `connected`, `behind by 3 revisions`, `disconnected since ...`.
    pub fn describe(&self) -> String {
        match self.link {
            Link::Connecting => "connecting".to_owned(),
            Link::Connected if self.behind() > 0 => {
                format!("connected, behind by {} revisions", self.behind())
            }
            Link::Connected => "connected".to_owned(),
            Link::Disconnected => format!(
                "disconnected since {}",
                humantime::format_rfc3339_seconds(self.since)
            ),
        }
    }
}

/// A node's registry entry (bound to its lease: it disappears when the node does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name (`[cluster] name`).
    pub name: String,
    /// The mc-proxy version it runs.
    pub version: String,
    /// Its listeners: `name=address` each.
    pub listeners: Vec<String>,
    /// Its admin socket path.
    pub admin: String,
    /// Its metrics address, if any.
    pub metrics: String,
    /// The newest revision of the fleet's table it has applied (nodes holding the same
    /// table show the same number).
    pub applied_revision: i64,
    /// The last error of its sync, empty if none.
    pub last_error: String,
    /// When it started, ms since the Unix epoch.
    pub started_ms: u64,
}
