//! The registry of open, routed connections, for the admin API's `ListConnections` and
//! `CloseConnection`.
//!
//! Owns: one entry per connection that has been routed (SNI read, route found), from the moment
//! its `ConnectionOpened` event is published until its [`Registered`] guard drops, however the
//! connection ends (close, error, cancellation at shutdown). An entry holds the connection's
//! `Arc<Transferred>`, the same counters the relay and the L7 server add to, so a listing reads
//! live bytes without asking the connection anything.
//!
//! No I/O. Invariants: the data path never waits on a listing for long: the registry is split
//! in [`SHARDS`] `std::sync::Mutex`-guarded maps by connection id, every critical section is a
//! single insert, remove or copy of one shard, and no lock is ever held across an `.await`
//! (the functions here are synchronous). A listing is a consistent view of each shard, not of
//! all of them at one instant, which is all a console refreshing every second needs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::routes::RouteInfo;
use crate::model::stats::Transferred;

/// Shards of the registry; a power of two so the id picks one with a mask.
pub const SHARDS: usize = 16;
/// Most connections one listing returns, whatever the request asks.
pub const MAX_LIST: usize = 10_000;

/// What the registry keeps about one connection.
#[derive(Debug)]
struct Entry {
    listener: SocketAddr,
    client: SocketAddr,
    sni: String,
    route: Arc<RouteInfo>,
    backend: Option<Arc<str>>,
    started: Instant,
    bytes: Arc<Transferred>,
    /// Cancelled by [`Registry::close`]: the connection's task stops serving.
    close: CancellationToken,
}

/// The open routed connections (see the module docs).
#[derive(Debug)]
pub struct Registry {
    shards: [Mutex<HashMap<u64, Entry>>; SHARDS],
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

/// Keeps a connection listed; dropping it removes the entry.
#[must_use = "the connection is unlisted when the guard drops"]
#[derive(Debug)]
pub struct Registered<'a> {
    registry: &'a Registry,
    id: u64,
    close: CancellationToken,
}

impl Registered<'_> {
    /// Fires when an operator closes the connection ([`Registry::close`]).
    pub fn closed_by_admin(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.close.cancelled()
    }

    /// Records the member the connection went to (L4, once dialled).
    pub fn set_backend(&self, backend: &Arc<str>) {
        if let Some(e) = self.registry.shard(self.id).get_mut(&self.id) {
            e.backend = Some(Arc::clone(backend));
        }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.shard(self.id).remove(&self.id);
    }
}

/// An open connection as a listing shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Connection id, as in its events.
    pub id: u64,
    /// The listener's configured address.
    pub listener: SocketAddr,
    /// The real client.
    pub client: SocketAddr,
    /// The SNI it sent.
    pub sni: String,
    /// The route it matched.
    pub route: Arc<RouteInfo>,
    /// L4: the member it went to, once dialled. L7: `None` (each request picks one).
    pub backend: Option<Arc<str>>,
    /// Time since it was routed.
    pub age: std::time::Duration,
    /// Client to backend bytes so far.
    pub bytes_in: u64,
    /// Backend to client bytes so far.
    pub bytes_out: u64,
}

impl Registry {
    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic elsewhere while holding a shard cannot leave a map half-updated in a way that
        // matters here (inserts and removes are single operations): keep serving it.
        self.shards[id as usize & (SHARDS - 1)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists connection `id` until the returned guard drops.
    pub fn register(
        &self,
        id: u64,
        listener: SocketAddr,
        client: SocketAddr,
        sni: &str,
        route: &Arc<RouteInfo>,
        bytes: &Arc<Transferred>,
    ) -> Registered<'_> {
        // One small allocation per routed connection: the one thing an admin close needs
        // to reach its task (connections never routed cannot be listed, so cannot be closed).
        let close = CancellationToken::new();
        let entry = Entry {
            listener,
            client,
            sni: sni.to_owned(),
            route: Arc::clone(route),
            backend: None,
            started: Instant::now(),
            bytes: Arc::clone(bytes),
            close: close.clone(),
        };
        self.shard(id).insert(id, entry);
        Registered {
            registry: self,
            id,
            close,
        }
    }

    /// Tells connection `id` to stop now (see [`Registered::closed_by_admin`]); false if no
    /// such connection is open.
    pub fn close(&self, id: u64) -> bool {
        match self.shard(id).get(&id) {
            Some(e) => {
                e.close.cancel();
                true
            }
            None => false,
        }
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        (0..SHARDS as u64).map(|i| self.shard(i).len()).sum()
    }

    /// No connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The open connections, oldest (lowest id) first, at most `limit` (0 or above
    /// [`MAX_LIST`]: `MAX_LIST`), and how many are open in all.
    pub fn list(&self, limit: usize) -> (Vec<Listed>, u64) {
        let limit = if limit == 0 {
            MAX_LIST
        } else {
            limit.min(MAX_LIST)
        };
        let now = Instant::now();
        let mut all = Vec::new();
        for i in 0..SHARDS as u64 {
            let shard = self.shard(i);
            all.extend(shard.iter().map(|(id, e)| Listed {
                id: *id,
                listener: e.listener,
                client: e.client,
                sni: e.sni.clone(),
                route: Arc::clone(&e.route),
                backend: e.backend.clone(),
                age: now.saturating_duration_since(e.started),
                bytes_in: e.bytes.up.load(Ordering::Relaxed),
                bytes_out: e.bytes.down.load(Ordering::Relaxed),
            }));
        }
        let total = all.len() as u64;
        all.sort_unstable_by_key(|c| c.id);
        all.truncate(limit);
        (all, total)
    }
}
