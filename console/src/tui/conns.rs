//! The connections view's state: the open connections as last polled (`ListConnections`, about
//! once a second while the view is shown), with a sort order, a filter and a selection.
//!
//! No I/O. Invariants: the list is replaced whole by each poll (the daemon is the truth; a
//! `ConnectionClosed` event only removes a row early), and the selection is kept by connection
//! id, so it stays on its connection while rows above it come and go.

use std::time::Instant;

use mc_proxy_shared::client::{Connection, ConnectionList};

use super::order;
use super::select::Selection;

/// Connection order (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnSort {
    /// Oldest first.
    #[default]
    Age,
    /// Most bytes (in + out) first.
    Bytes,
    /// By client address.
    Client,
    /// By route, then age.
    Route,
}

impl ConnSort {
    /// As the title shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnSort::Age => "age",
            ConnSort::Bytes => "bytes",
            ConnSort::Client => "client",
            ConnSort::Route => "route",
        }
    }

    /// The next order.
    pub fn next(self) -> ConnSort {
        match self {
            ConnSort::Age => ConnSort::Bytes,
            ConnSort::Bytes => ConnSort::Client,
            ConnSort::Client => ConnSort::Route,
            ConnSort::Route => ConnSort::Age,
        }
    }
}

/// The connections view.
#[derive(Debug, Clone, Default)]
pub struct ConnView {
    /// The last poll's answer.
    pub list: ConnectionList,
    /// When it came (`None`: nothing polled yet).
    pub at: Option<Instant>,
    /// Order.
    pub sort: ConnSort,
    /// Shown when client, hostname, route, listener or backend contains it.
    pub filter: String,
    /// Selected connection, by id.
    pub sel: Selection,
}

impl ConnView {
    /// The connections passing the filter, in the chosen order.
    pub fn visible(&self) -> Vec<&Connection> {
        let f = self.filter.to_lowercase();
        let mut rows: Vec<&Connection> = self
            .list
            .connections
            .iter()
            .filter(|c| {
                f.is_empty()
                    || [&c.client, &c.hostname, &c.route, &c.listener, &c.backend]
                        .iter()
                        .any(|s| s.to_lowercase().contains(&f))
            })
            .collect();
        match self.sort {
            ConnSort::Age => rows.sort_by(|a, b| b.age.cmp(&a.age).then(a.id.cmp(&b.id))),
            ConnSort::Bytes => rows.sort_by(|a, b| {
                (b.bytes_in + b.bytes_out)
                    .cmp(&(a.bytes_in + a.bytes_out))
                    .then(a.id.cmp(&b.id))
            }),
            ConnSort::Client => rows.sort_by(|a, b| order::natural(&a.client, &b.client)),
            ConnSort::Route => {
                rows.sort_by(|a, b| order::route_name(&a.route, &b.route).then(b.age.cmp(&a.age)))
            }
        }
        rows
    }

    /// The selected connection.
    pub fn selected(&self) -> Option<&Connection> {
        self.visible().get(self.sel.index()).copied()
    }

    fn keys(&self) -> Vec<String> {
        self.visible().iter().map(|c| c.id.to_string()).collect()
    }

    /// Re-finds the selection after a change.
    pub fn follow(&mut self) {
        let keys = self.keys();
        self.sel.follow(&keys);
    }

    /// Moves the selection.
    pub fn step(&mut self, delta: isize) {
        let keys = self.keys();
        self.sel.step(&keys, delta);
    }

    /// A new poll answer.
    pub fn update(&mut self, list: ConnectionList, at: Instant) {
        self.list = list;
        self.at = Some(at);
    }

    /// Connection `id` closed (event): drop it before the next poll does.
    pub fn closed(&mut self, id: u64) {
        let before = self.list.connections.len();
        self.list.connections.retain(|c| c.id != id);
        if self.list.connections.len() < before {
            self.list.total = self.list.total.saturating_sub(1);
        }
    }
}
