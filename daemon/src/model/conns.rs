//! The registry of open, routed connections, for the admin API's `ListConnections` and
//! `CloseConnection`.
//!
//! Owns: one entry per connection that has been routed (SNI read, route found), from the moment
//! its `ConnectionOpened` event is published until its [`Registered`] guard drops, however the
//! connection ends (close, error, cancellation at shutdown). An entry holds the connection's
//! `Arc<Live>`: the same counters the relay and the L7 server add to, so a listing reads live
//! bytes without asking the connection anything, and the [`CloseSignal`] an admin close sets.
//!
//! No I/O. Invariants: no lock is shared between data-plane workers: each worker registers
//! its connections in its own shard (a `std::sync::Mutex`-guarded map, cache-line aligned),
//! which only a listing or an admin close from the control plane ever contends for. Every
//! critical section is a single insert, remove or copy of one shard, and no lock is held
//! across an `.await` (the functions here are synchronous). A listing is a consistent view of
//! each shard, not of all of them at one instant, which is all a console refreshing every
//! second needs. Closing asks nothing of the connection's allocator: the signal is an atomic
//! flag and a waker inside the `Live` the connection already has.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use crate::model::routes::RouteInfo;
use crate::model::stats::Transferred;

/// Shards of the registry: one per data-plane worker (a worker's index picks its shard,
/// modulo this for daemons with more workers than shards).
pub const SHARDS: usize = 64;
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
    live: Arc<Live>,
}

/// What a connection shares with its registry entry while it is open: the bytes it moved
/// (counted by the relay or the L7 server) and an operator's request to close it. One
/// allocation per connection, made when it is accepted.
#[derive(Debug, Default)]
pub struct Live {
    /// Bytes each way so far.
    pub bytes: Transferred,
    /// Set by [`Registry::close`].
    pub close: CloseSignal,
}

/// An operator's request to close one connection: a flag and the waker of the one task that
/// awaits it (the connection's own), so that asking costs the connection no allocation and
/// waiting for it costs its future one pointer.
#[derive(Debug, Default)]
pub struct CloseSignal {
    requested: AtomicBool,
    waker: AtomicWaker,
}

impl CloseSignal {
    /// Asks the connection to close and wakes its task.
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once [`CloseSignal::request`] was called. Only the connection's own task
    /// awaits it (one waker is kept).
    pub fn requested(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.requested.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A request between the load and the register would have found no waker.
            if self.requested.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// One worker's connections, on a cache line of its own so two workers' locks never share
/// one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<HashMap<u64, Entry>>);

impl Shard {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic elsewhere while holding a shard cannot leave a map half-updated in a way that
        // matters here (inserts and removes are single operations): keep serving it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The open routed connections (see the module docs).
#[derive(Debug)]
pub struct Registry {
    shards: Box<[Shard]>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

/// Keeps a connection listed; dropping it removes the entry.
#[must_use = "the connection is unlisted when the guard drops"]
#[derive(Debug)]
pub struct Registered<'a> {
    shard: &'a Shard,
    id: u64,
}

impl Registered<'_> {
    /// Records the member the connection went to (L4, once dialled).
    pub fn set_backend(&self, backend: &Arc<str>) {
        if let Some(e) = self.shard.lock().get_mut(&self.id) {
            e.backend = Some(Arc::clone(backend));
        }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shard.lock().remove(&self.id);
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
    /// Lists connection `id`, served by data-plane worker `worker`, until the returned guard
    /// drops. `live` is what the connection counts its bytes in and watches for a close.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &self,
        worker: usize,
        id: u64,
        listener: SocketAddr,
        client: SocketAddr,
        sni: &str,
        route: &Arc<RouteInfo>,
        live: &Arc<Live>,
    ) -> Registered<'_> {
        let entry = Entry {
            listener,
            client,
            sni: sni.to_owned(),
            route: Arc::clone(route),
            backend: None,
            started: Instant::now(),
            live: Arc::clone(live),
        };
        let shard = &self.shards[worker % self.shards.len()];
        shard.lock().insert(id, entry);
        Registered { shard, id }
    }

    /// Tells connection `id` to stop now (see [`CloseSignal`]); false if no such connection
    /// is open. Looks in every worker's shard: an admin close is rare, the data path is not.
    pub fn close(&self, id: u64) -> bool {
        for shard in self.shards.iter() {
            if let Some(e) = shard.lock().get(&id) {
                e.live.close.request();
                return true;
            }
        }
        false
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
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
        for shard in self.shards.iter() {
            let shard = shard.lock();
            all.extend(shard.iter().map(|(id, e)| Listed {
                id: *id,
                listener: e.listener,
                client: e.client,
                sni: e.sni.clone(),
                route: Arc::clone(&e.route),
                backend: e.backend.clone(),
                age: now.saturating_duration_since(e.started),
                bytes_in: e.live.bytes.up.load(Ordering::Relaxed),
                bytes_out: e.live.bytes.down.load(Ordering::Relaxed),
            }));
        }
        let total = all.len() as u64;
        all.sort_unstable_by_key(|c| c.id);
        all.truncate(limit);
        (all, total)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use mc_proxy_shared::{Route, RouteBackend};

    use super::*;
    use crate::model::routes::validate_route;

    fn route() -> Arc<RouteInfo> {
        let valid = validate_route(&Route {
            hostname: "a.test".into(),
            backends: vec![RouteBackend::new("127.0.0.1:1")],
            ..Route::default()
        })
        .unwrap();
        Arc::new(RouteInfo::new(valid, Arc::default()))
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn workers_register_in_their_own_shards_and_a_listing_sees_all_oldest_first() {
        let registry = Registry::default();
        let route = route();
        let (a, b) = (Arc::new(Live::default()), Arc::new(Live::default()));
        b.bytes.up.store(7, Ordering::Relaxed);
        let second = registry.register(1, 9, addr(443), addr(1000), "a.test", &route, &b);
        let first = registry.register(0, 3, addr(443), addr(1001), "a.test", &route, &a);
        // Each worker's entry is in that worker's shard, and only there.
        assert_eq!(registry.shards[0].lock().keys().collect::<Vec<_>>(), [&3]);
        assert_eq!(registry.shards[1].lock().keys().collect::<Vec<_>>(), [&9]);
        let (listed, total) = registry.list(0);
        assert_eq!(total, 2);
        assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), [3, 9]);
        assert_eq!(
            listed[1].bytes_in, 7,
            "bytes are read live from the connection"
        );
        drop(second);
        assert_eq!(registry.len(), 1);
        drop(first);
        assert!(registry.is_empty());
    }

    #[tokio::test]
    async fn an_admin_close_wakes_the_connection_in_whichever_shard_it_is() {
        let registry = Arc::new(Registry::default());
        let route = route();
        let live = Arc::new(Live::default());
        let listed = registry.register(5, 42, addr(443), addr(1000), "a.test", &route, &live);
        let waiting = {
            let live = Arc::clone(&live);
            tokio::spawn(async move { live.close.requested().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing asked it to close yet");
        assert!(!registry.close(41), "no such connection");
        let closer = Arc::clone(&registry);
        std::thread::spawn(move || assert!(closer.close(42)))
            .join()
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the close woke the task")
            .unwrap();
        drop(listed);
        assert!(
            !registry.close(42),
            "an unlisted connection cannot be closed"
        );
    }
}
