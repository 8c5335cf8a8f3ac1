//! An open L7 connection's route, as it is now: looked up again in the listener's table by
//! the first request after each change of the table (or of the no-SNI route), so that a
//! drain, a disabled member, a new backend set, balance or health check reaches connections
//! that were opened before the change (HTTP/2 and gRPC clients keep theirs for hours).
//!
//! No I/O. What a connection keeps for its whole life is what its TLS session fixed: the
//! certificate it was shown and the name it was routed by (its SNI, or the listener's no-SNI
//! route). Everything else comes from the route version its request finds. A connection whose
//! name no longer leads to the route it was served by (the route removed, switched to L4, or a
//! more specific route added for the name) is *gone*: [`Routing::gone`] tells the connection's
//! server to drain it (GOAWAY / `Connection: close`, see `l7::serve`), and a request that
//! arrives meanwhile gets `421 Misdirected Request`, which clients answer by retrying on a new
//! connection (RFC 9110 §15.5.20).
//!
//! Invariants: the look-up takes no lock (the table is an `ArcSwap` snapshot, read through a
//! guard); the [`Upstream`] for a route version (its pools, one per member) is built once per
//! version and connection, when its first request finds the version new, and a request keeps
//! the version it started with through its retries. A `send_proxy_protocol` route's pools are
//! this connection's own; they are kept across versions for the same target, so a route edit
//! does not redial them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::upstream::{Timeouts, Upstream};
use crate::connectors::connector::{ProxyHeader, Target};
use crate::connectors::pool::{Pool, TargetPool};
use crate::model::routes::RouteInfo;
use crate::model::state::{ListenerState, State};

/// What a connection needs to turn a route version into an [`Upstream`].
#[derive(Debug)]
pub struct Endpoints {
    /// The worker's backend pool.
    pub pool: Arc<Pool>,
    /// The real client address (sent in PROXY headers, used by `balance = "source"`).
    pub client: SocketAddr,
    /// The address the client connected to (a sent PROXY header's destination).
    pub local: SocketAddr,
    /// `connect_timeout` and `response_timeout`.
    pub timeouts: Timeouts,
    /// Where member state changes are published.
    pub state: Arc<State>,
    /// Cancelled when the client connection ends: its own (PROXY header) pools close.
    pub closed: tokio_util::sync::CancellationToken,
}

/// One client connection's way to the current version of its route.
#[derive(Debug)]
pub struct Routing {
    listener: Arc<ListenerState>,
    /// The name the connection was routed by; `None`: the listener's no-SNI route.
    sni: Option<String>,
    /// The hostname of the route the connection was routed by: a later version must have it.
    hostname: String,
    endpoints: Endpoints,
    /// The version the last request used, with its pools.
    current: ArcSwap<Upstream>,
    /// The listener's [`ListenerState::generation`] at which `current` was last found to be
    /// the route's version (`u64::MAX`: not yet): until it moves, a request takes `current`
    /// without looking the name up in the table.
    checked: AtomicU64,
    /// This connection's own pools (`send_proxy_protocol` routes), kept across versions.
    dedicated: Mutex<Vec<Arc<TargetPool>>>,
}

impl Routing {
    /// The node's name in the fleet, for the request log (`None`: not a cluster node).
    pub fn node(&self) -> Option<Arc<str>> {
        self.endpoints.state.node_shared()
    }

    /// The routing of a connection that `listener` routed by `sni` to `route`.
    pub fn new(
        listener: Arc<ListenerState>,
        sni: Option<String>,
        route: Arc<RouteInfo>,
        endpoints: Endpoints,
    ) -> Self {
        let dedicated = Mutex::new(Vec::new());
        let hostname = route.route.hostname.clone();
        let first = upstream_for(route, sni.as_deref(), &endpoints, &dedicated, listener.addr);
        Routing {
            listener,
            sni,
            hostname,
            endpoints,
            current: ArcSwap::from_pointee(first),
            checked: AtomicU64::new(u64::MAX),
            dedicated,
        }
    }

    /// The listener's address as configured (for events).
    pub fn listener(&self) -> SocketAddr {
        self.listener.addr
    }

    /// How the listener groups IPv6 clients (`client_ipv6_prefix`): a route's per-client
    /// request rate sees the clients its listener's limits see.
    pub fn client_ipv6_prefix(&self) -> u8 {
        self.listener.settings().client_limits.client_ipv6_prefix
    }

    /// `[proxy] client_table_size`: the size of a route's client table when it is made.
    pub fn client_table_size(&self) -> usize {
        self.endpoints.state.proxy().client_table_size
    }

    /// Whether the listener logs every request (`[[listeners]] access_log`).
    pub fn listener_logs(&self) -> bool {
        self.listener.access_log()
    }

    /// The current version of the connection's route, with its pools; `None` when the route
    /// is gone (see the module docs).
    pub fn current(&self) -> Option<Arc<Upstream>> {
        // Read before the look-up: a change made after it moves the count, and the next
        // request looks again.
        let generation = self.listener.generation();
        if self.checked.load(Ordering::Relaxed) == generation {
            return Some(self.current.load_full());
        }
        let cached = self.current.load();
        self.listener.with_route(self.sni.as_deref(), |found| {
            let route = found?;
            if Arc::ptr_eq(route, cached.route()) {
                self.checked.store(generation, Ordering::Relaxed);
                return Some(Arc::clone(&cached));
            }
            if !self.serves(route) {
                return None;
            }
            let fresh = Arc::new(upstream_for(
                Arc::clone(route),
                self.sni.as_deref(),
                &self.endpoints,
                &self.dedicated,
                self.listener.addr,
            ));
            self.current.store(Arc::clone(&fresh));
            self.checked.store(generation, Ordering::Relaxed);
            Some(fresh)
        })
    }

    /// Resolves once the connection's route is gone; pending while it is there.
    pub async fn gone(&self) {
        loop {
            // Taken before the look-up: a change made after it cancels this token.
            let changes = self.listener.changes();
            let served = self
                .listener
                .with_route(self.sni.as_deref(), |r| r.is_some_and(|r| self.serves(r)));
            if !served {
                return;
            }
            changes.cancelled_owned().await;
        }
    }

    /// Whether `route` (what the connection's name leads to now) is still the one the
    /// connection was served by: same hostname, still L7.
    fn serves(&self, route: &RouteInfo) -> bool {
        route.tls.is_some() && route.route.hostname == self.hostname
    }
}

/// The pools for `route`'s members (`dedicated`: the connection's own, reused by target) and
/// the upstream over them.
fn upstream_for(
    route: Arc<RouteInfo>,
    sni: Option<&str>,
    e: &Endpoints,
    dedicated: &Mutex<Vec<Arc<TargetPool>>>,
    listener: SocketAddr,
) -> Upstream {
    // A backend certificate is checked for the name the client asked for; without one,
    // for the route's own name. A PROXY header names one client: such connections are
    // this client connection's alone.
    let tls = route
        .route
        .backend_tls
        .then(|| sni.map_or_else(|| route.route.hostname.clone(), str::to_owned));
    let proxy = route.route.send_proxy_protocol.then_some(ProxyHeader {
        client: e.client,
        local: e.local,
    });
    let mut dedicated = dedicated.lock().unwrap_or_else(|p| p.into_inner());
    let mut kept = Vec::new();
    let pools = route
        .backends
        .members()
        .iter()
        .map(|m| {
            let target = Target {
                backend: m.spec.address.clone(),
                protocol: route.route.backend_protocol,
                tls: tls.clone(),
                proxy,
            };
            if target.proxy.is_none() {
                return e.pool.target(&target);
            }
            let pool = dedicated
                .iter()
                .find(|p| *p.target() == target)
                .cloned()
                .unwrap_or_else(|| e.pool.dedicated(target, e.closed.clone()));
            kept.push(Arc::clone(&pool));
            pool
        })
        .collect();
    // Pools of members this version no longer has are let go (their connections close).
    *dedicated = kept;
    drop(dedicated);
    Upstream::new(
        route,
        pools,
        e.timeouts,
        e.client.ip(),
        Arc::clone(&e.state),
        listener,
    )
}
