//! The daemon's live state: listeners with their route tables, the firewall and the proxy
//! settings, as the connection pipeline reads them.
//!
//! No I/O (the store is read once at start by `boot`, and written by `control`). Invariant: route tables and the
//! firewall are immutable snapshots behind `ArcSwap`; writers (the admin API) build a new
//! snapshot and swap it in, readers take a cheap guard and never block. An L4 connection holds
//! the `Arc<RouteInfo>` it was routed with for its whole life; an L7 connection looks its route
//! up again for each request (`l7::routing`), so a drain or a new backend set reaches it at
//! once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use ipnet::IpNet;

use mc_proxy_shared::{BackendState, CloseReason, ResetReason, Route, TlsFailure};
use tokio_util::sync::CancellationToken;

use crate::model::events::{Event, EventBus};
use crate::model::firewall::Firewall;
use crate::model::routes::{RouteInfo, RouteTable, ValidRoute};
use crate::model::stats::RouteStats;

/// Default `[proxy] max_request_head`: the largest request head (request line or pseudo
/// headers plus fields) accepted, in bytes.
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 64 * 1024;

/// The smallest `max_request_head` accepted: hyper's HTTP/1.1 read buffer cannot be smaller
/// (`max_buf_size` panics below 8 KiB), and no real client head is smaller than that bound.
pub const MIN_MAX_REQUEST_HEAD: usize = 8 * 1024;

/// The largest `max_request_head` accepted: HTTP/2 carries the limit as a 32-bit setting, and
/// a head larger than this is not a request but an attack.
pub const MAX_MAX_REQUEST_HEAD: usize = 16 * 1024 * 1024;

/// The `[proxy]` settings the data path reads (timeouts, capacity, backend trust); `config`
/// fills them from the TOML, with defaults. A connection reads them once, when it starts; a
/// SIGHUP swaps in the ones [`ProxyConfig::reload`] allows (see `control`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// How long a client may take to send its whole ClientHello.
    pub client_hello_timeout: Duration,
    /// How long dialing a backend may take.
    pub connect_timeout: Duration,
    /// A relayed connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// L7: from a request sent to the backend to its response head; past it, 504. Bodies and
    /// streams after the head are not bounded by it.
    pub response_timeout: Duration,
    /// L7: how long a client may take to send a request's head (HTTP/1.1).
    pub request_header_timeout: Duration,
    /// L7: a client connection with no request in flight for this long is closed (HTTP/1.1:
    /// `Connection: close` semantics, HTTP/2: GOAWAY).
    pub keepalive_timeout: Duration,
    /// On SIGTERM/SIGINT, how long open connections may take to finish.
    pub shutdown_timeout: Duration,
    /// On SIGTERM/SIGINT, how long the listeners keep accepting while `/ready` answers 503,
    /// so that a load balancer's health check takes the node out before they close.
    pub shutdown_delay: Duration,
    /// Connections open at once across all listeners; more are closed on accept.
    pub max_connections: usize,
    /// Extra CA bundle trusted for `backend_tls` (L7).
    pub backend_ca: Option<PathBuf>,
    /// L7: the largest request head accepted, in bytes (larger: 431).
    pub max_request_head: usize,
    /// L7: backend connections per backend target, open or being opened (0: no cap).
    pub backend_max_connections: usize,
    /// L7: idle HTTP/1.1 connections kept per backend target.
    pub backend_max_idle: usize,
    /// L7: a pooled backend connection unused for this long is closed.
    pub backend_idle_timeout: Duration,
    /// Passive health: failures in a row that eject a route member.
    pub backend_eject_after: u32,
    /// Passive health: the first ejection's cooldown (doubling on repeated ejections).
    pub backend_eject_time: Duration,
    /// Passive health: the longest cooldown.
    pub backend_eject_max_time: Duration,
    /// Data-plane worker threads, each with its own runtime and listener sockets (0: one
    /// per CPU). Read at start only.
    pub workers: usize,
    /// Slots of each listener's client table (per-client limits), made when a limit is first
    /// on: 8 bytes each.
    pub client_table_size: usize,
    /// L7 HTTP/2: streams one client connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// L7 HTTP/2: streams the client may reset before the server accepted them, at once.
    pub h2_max_pending_accept_reset_streams: usize,
    /// L7 HTTP/2: streams the server may reset for the client's protocol errors, per
    /// connection.
    pub h2_max_local_error_reset_streams: usize,
    /// L7 HTTP/2: response bytes buffered per stream towards the client.
    pub h2_max_send_buf_size: usize,
    /// L7 HTTP/2: streams the client may reset after the server accepted them (before their
    /// response) within `h2_client_reset_window`; one more: GOAWAY ENHANCE_YOUR_CALM (0: no
    /// limit).
    pub h2_max_client_resets: u32,
    /// L7 HTTP/2: the window `h2_max_client_resets` counts in.
    pub h2_client_reset_window: Duration,
}

/// Default `[proxy] h2_max_client_resets`.
pub const DEFAULT_H2_MAX_CLIENT_RESETS: u32 = 100;

/// Default `[proxy] h2_client_reset_window`.
pub const DEFAULT_H2_CLIENT_RESET_WINDOW: Duration = Duration::from_secs(10);

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            client_hello_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            response_timeout: Duration::from_secs(60),
            request_header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            max_connections: 10_000,
            backend_ca: None,
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
            backend_max_connections: 1024,
            // As many as may be open: a connection idle past `backend_idle_timeout` closes
            // anyway, so this bounds nothing a quiet backend keeps, and a lower cap closed
            // connections a busy one needed again at once (a TLS handshake per request past
            // 256 in flight: docs/BENCHMARKS.md, re-encryption).
            backend_max_idle: 1024,
            // Under the 5 s keep-alive of Node.js and Apache: the proxy closes an idle
            // connection before the backend does, so a request rarely races a close.
            backend_idle_timeout: Duration::from_secs(4),
            backend_eject_after: 3,
            backend_eject_time: Duration::from_secs(5),
            backend_eject_max_time: Duration::from_secs(120),
            workers: 0,
            client_table_size: crate::model::clients::DEFAULT_CLIENT_TABLE_SIZE,
            // The values the constants of `l7::limits` had before they were settings.
            h2_max_concurrent_streams: 100,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 100,
            h2_max_send_buf_size: 400 * 1024,
            h2_max_client_resets: DEFAULT_H2_MAX_CLIENT_RESETS,
            h2_client_reset_window: DEFAULT_H2_CLIENT_RESET_WINDOW,
        }
    }
}

/// What re-reading `[proxy]` does ([`ProxyConfig::reload`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SettingsReload {
    /// Settings that changed and apply from the next connection on, as `name: old -> new`.
    pub applied: Vec<String>,
    /// Settings that changed in the file but keep their running value until a restart.
    pub need_restart: Vec<String>,
}

impl ProxyConfig {
    /// `self` with the settings of `new` that may change while the daemon runs, and what
    /// changed. Every timeout, the request head and HTTP/2 limits and passive health are read
    /// per connection or per failure, so they change safely; `max_connections` (the semaphore's
    /// size), `backend_ca` (the backend TLS config built at start), the pools' sizes and idle
    /// timeout (per worker, built at start), `workers` and `client_table_size` (each
    /// listener's client table is built once) keep their value until a restart.
    pub fn reload(&self, new: &ProxyConfig) -> (ProxyConfig, SettingsReload) {
        // Every field is named here, so a new one cannot be forgotten in both lists below.
        let ProxyConfig {
            client_hello_timeout: _,
            connect_timeout: _,
            idle_timeout: _,
            response_timeout: _,
            request_header_timeout: _,
            keepalive_timeout: _,
            shutdown_timeout: _,
            shutdown_delay: _,
            max_connections: _,
            backend_ca: _,
            max_request_head: _,
            backend_max_connections: _,
            backend_max_idle: _,
            backend_idle_timeout: _,
            backend_eject_after: _,
            backend_eject_time: _,
            backend_eject_max_time: _,
            workers: _,
            client_table_size: _,
            h2_max_concurrent_streams: _,
            h2_max_pending_accept_reset_streams: _,
            h2_max_local_error_reset_streams: _,
            h2_max_send_buf_size: _,
            h2_max_client_resets: _,
            h2_client_reset_window: _,
        } = new;
        let mut merged = self.clone();
        let mut report = SettingsReload::default();
        macro_rules! live {
            ($($field:ident),* $(,)?) => {$(
                if self.$field != new.$field {
                    report.applied.push(format!(
                        "{}: {:?} -> {:?}",
                        stringify!($field),
                        self.$field,
                        new.$field
                    ));
                    merged.$field = new.$field.clone();
                }
            )*};
        }
        macro_rules! restart {
            ($($field:ident),* $(,)?) => {$(
                if self.$field != new.$field {
                    report.need_restart.push(stringify!($field).to_owned());
                }
            )*};
        }
        live!(
            client_hello_timeout,
            connect_timeout,
            idle_timeout,
            response_timeout,
            request_header_timeout,
            keepalive_timeout,
            shutdown_timeout,
            shutdown_delay,
            max_request_head,
            backend_eject_after,
            backend_eject_time,
            backend_eject_max_time,
            h2_max_concurrent_streams,
            h2_max_pending_accept_reset_streams,
            h2_max_local_error_reset_streams,
            h2_max_send_buf_size,
            h2_max_client_resets,
            h2_client_reset_window,
        );
        restart!(
            max_connections,
            backend_ca,
            backend_max_connections,
            backend_max_idle,
            backend_idle_timeout,
            workers,
            client_table_size,
        );
        (merged, report)
    }
}

/// Counters for one listener. Atomics: the data path never waits on an observer.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Connections reset by the pipeline (any reason, firewall included).
    pub resets: AtomicU64,
    /// Connections refused by policy: the firewall, an untrusted PROXY sender, a client limit.
    pub blocked: AtomicU64,
    /// Connections closed at accept because `max_connections` was reached.
    pub over_capacity: AtomicU64,
    /// Resets by reason, indexed by [`ResetReason::index`].
    resets_by_reason: [AtomicU64; ResetReason::ALL.len()],
    /// Served connections closed, by reason, indexed by [`CloseReason::index`].
    closes_by_reason: [AtomicU64; CloseReason::ALL.len()],
    /// L7 TLS handshakes that failed, by reason, indexed by [`TlsFailure::index`].
    tls_failures: [AtomicU64; TlsFailure::ALL.len()],
}

impl ListenerCounters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reset: in total and under its reason.
    pub fn count_reset(&self, reason: ResetReason) {
        Self::bump(&self.resets);
        Self::bump(&self.resets_by_reason[reason.index()]);
    }

    /// Resets of one reason.
    pub fn resets(&self, reason: ResetReason) -> u64 {
        self.resets_by_reason[reason.index()].load(Ordering::Relaxed)
    }

    /// Counts a served connection's close under its reason.
    pub fn count_close(&self, reason: CloseReason) {
        Self::bump(&self.closes_by_reason[reason.index()]);
    }

    /// Counts a failed L7 TLS handshake under its reason.
    pub fn count_tls_failure(&self, reason: TlsFailure) {
        Self::bump(&self.tls_failures[reason.index()]);
    }

    /// Failed L7 TLS handshakes of one reason.
    pub fn tls_failures(&self, reason: TlsFailure) -> u64 {
        self.tls_failures[reason.index()].load(Ordering::Relaxed)
    }

    /// Served connections closed for one reason.
    pub fn closes(&self, reason: CloseReason) -> u64 {
        self.closes_by_reason[reason.index()].load(Ordering::Relaxed)
    }

    /// Non-zero resets by reason.
    pub fn resets_by_reason(&self) -> impl Iterator<Item = (ResetReason, u64)> + '_ {
        ResetReason::ALL
            .iter()
            .map(|r| (*r, self.resets(*r)))
            .filter(|(_, n)| *n > 0)
    }
}

/// A stored route the listener does not serve (its L7 certificate or key did not load at
/// start or at a reload), and why: it stays in the store and is listed with its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct NotServed {
    /// The route as stored.
    pub route: Route,
    /// Why it is not served (names the file that failed).
    pub reason: String,
}

/// A listener's settings that an admin change may replace while it serves; a connection reads
/// them once, when it is accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Expect a PROXY protocol header on every connection.
    pub proxy_protocol: bool,
    /// Peers allowed to send the PROXY header; empty means any peer.
    pub proxy_protocol_from: Vec<IpNet>,
    /// Every L7 request on this listener gets a `mc_proxy::request` line, whatever its
    /// route says.
    pub access_log: bool,
    /// Limits per client address (`max_conns_per_client`, ...), checked on every accept.
    pub client_limits: mc_proxy_shared::ClientLimits,
}

impl ListenerSettings {
    /// May `peer` send this listener a PROXY header? Compared in canonical form, so an
    /// IPv4 upstream accepted on a dual-stack socket matches its IPv4 network.
    pub fn trusts_proxy_header_from(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.proxy_protocol_from.is_empty()
            || self
                .proxy_protocol_from
                .iter()
                .any(|net| net.contains(&peer))
    }
}

/// A listener address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// What the OS said.
    pub source: std::io::Error,
}

/// Where a listener added at run time gets its sockets: one per data-plane worker, bound by
/// the data plane (`listeners::sockets::Feed`). The model names the job so that `control` can
/// ask for it without knowing sockets or workers.
pub trait SocketHost: Send + Sync + std::fmt::Debug {
    /// Binds `addr` once per worker; nothing accepts until [`BoundSockets::start`]. Dropping
    /// the result closes them.
    fn bind(&self, addr: SocketAddr) -> Result<Box<dyn BoundSockets>, BindError>;
}

/// A listener's sockets, bound, not yet accepting.
pub trait BoundSockets: Send {
    /// The address they got (the configured one, port 0 resolved).
    fn local_addr(&self) -> Option<SocketAddr>;
    /// Hands each worker its socket for `listener`: it accepts from then on.
    fn start(self: Box<Self>, listener: &Arc<ListenerState>);
}

/// One open listening socket of a listener ([`ListenerState::socket_guard`]).
#[derive(Debug)]
pub struct SocketGuard(Arc<(Mutex<usize>, std::sync::Condvar)>);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let (open, closed) = &*self.0;
        let mut open = open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *open = open.saturating_sub(1);
        closed.notify_all();
    }
}

/// One listener: its identity, settings and current route table.
#[derive(Debug)]
pub struct ListenerState {
    /// Row id in the store.
    pub id: i64,
    /// The configured address (the bound one may differ when the port is 0).
    pub addr: SocketAddr,
    /// Its name (`check_listener_name`), unique among listeners; its address by default. What
    /// shared routes name it by, so nodes binding different addresses can share them.
    pub name: String,
    /// What it does with connections; fixed for its life.
    pub kind: mc_proxy_shared::ListenerKind,
    /// An HTTP listener's redirect port (443 unless set); 0 on a TLS listener.
    pub redirect_port: u16,
    /// PROXY protocol settings; swapped by `control`.
    settings: ArcSwap<ListenerSettings>,
    /// The address its sockets got (set once bound; differs from `addr` when the port is 0).
    bound: std::sync::OnceLock<SocketAddr>,
    /// Cancelled when the listener is removed: its accept loops end (open connections go on
    /// as after a route removal, see `control`).
    closed: CancellationToken,
    /// Its listening sockets still open, across workers: a removal waits for 0, so that the
    /// address is free again when it returns.
    sockets: Arc<(Mutex<usize>, std::sync::Condvar)>,
    /// The hostname of the route for ClientHellos without SNI; swapped by `control`.
    no_sni_route: ArcSwapOption<String>,
    /// Live counters.
    pub counters: ListenerCounters,
    routes: ArcSwap<RouteTable>,
    /// Stored routes left out of `routes`, by hostname; swapped by `boot`, `control` and
    /// `reload` only, never read by the data path.
    not_served: ArcSwap<Vec<NotServed>>,
    /// Cancelled (and replaced by a fresh one) whenever the route table or the no-SNI route
    /// changes: what open L7 connections wait on to see whether their route is still theirs.
    changed: ArcSwap<CancellationToken>,
    /// Counts the changes `changed` announces: a connection that looked its route up at the
    /// current count need not look again (`l7::routing`).
    generation: AtomicU64,
    /// The routes patches built since the health walk last took them ([`Self::take_fresh`]);
    /// `None` when it must look at every route (a whole table swapped in, too many patches
    /// piled up, or it never looked).
    fresh: Mutex<Option<Vec<Arc<RouteInfo>>>>,
    /// The per-client state of its client limits; made when a limit is first on, kept for the
    /// listener's life (a limit change keeps the counts of open connections).
    clients: std::sync::OnceLock<crate::model::clients::ClientTable>,
}

/// The longest listener name.
pub const MAX_LISTENER_NAME_LEN: usize = 64;

/// The most patched routes a listener keeps for the health walk ([`ListenerState::take_fresh`])
/// before it asks for a look at every route instead.
const MAX_FRESH: usize = 4096;

/// The listener name rules (the TOML, the admin API and the CLI share them): 1 to
/// `MAX_LISTENER_NAME_LEN` characters of `[A-Za-z0-9._:[]-]`, so that any `IP:port` is a valid
/// name (the default) and a name is safe in an etcd key and a log line.
pub fn check_listener_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_LISTENER_NAME_LEN {
        return Err(format!(
            "listener name {} must be 1 to {MAX_LISTENER_NAME_LEN} characters",
            mc_proxy_shared::text::clip(name)
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'[' | b']' | b'-'))
    {
        return Err(format!(
            "listener name {} may only hold letters, digits and . _ : [ ] -",
            mc_proxy_shared::text::clip(name)
        ));
    }
    Ok(())
}

impl ListenerState {
    /// A listener with the given routes, named by its address (see `with_name`).
    pub fn new(id: i64, addr: SocketAddr, settings: ListenerSettings, routes: RouteTable) -> Self {
        ListenerState {
            id,
            addr,
            name: addr.to_string(),
            kind: mc_proxy_shared::ListenerKind::Tls,
            redirect_port: 0,
            settings: ArcSwap::from_pointee(settings),
            bound: std::sync::OnceLock::new(),
            closed: CancellationToken::new(),
            sockets: Arc::default(),
            no_sni_route: ArcSwapOption::empty(),
            counters: ListenerCounters::default(),
            routes: ArcSwap::from_pointee(routes),
            not_served: ArcSwap::from_pointee(Vec::new()),
            changed: ArcSwap::from_pointee(CancellationToken::new()),
            generation: AtomicU64::new(0),
            fresh: Mutex::new(None),
            clients: std::sync::OnceLock::new(),
        }
    }

    /// The same listener with the name it is stored under.
    pub fn with_name(self, name: String) -> Self {
        ListenerState { name, ..self }
    }

    /// The same listener of `kind`: a TLS one as it is, a plain-HTTP one redirecting to
    /// `redirect_port` (0: 443).
    pub fn with_kind(self, kind: mc_proxy_shared::ListenerKind, redirect_port: u16) -> Self {
        match kind {
            mc_proxy_shared::ListenerKind::Tls => self,
            mc_proxy_shared::ListenerKind::Http => ListenerState {
                kind,
                redirect_port: if redirect_port == 0 {
                    443
                } else {
                    redirect_port
                },
                ..self
            },
        }
    }

    /// The current settings, through a guard: read on every accept, so no reference count
    /// is touched (a count shared by every worker would bounce between cores). Keep it for
    /// a statement, not across an `.await` (take [`arc_swap::Guard::into_inner`] for that).
    pub fn settings(&self) -> arc_swap::Guard<Arc<ListenerSettings>> {
        self.settings.load()
    }

    /// Swaps in new settings: connections accepted from now on use them (the access log
    /// flag: requests from now on, open connections included).
    pub fn set_settings(&self, settings: ListenerSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// The address the listener's sockets are bound to, once they are.
    pub fn bound(&self) -> Option<SocketAddr> {
        self.bound.get().copied()
    }

    /// Records the address the sockets got (the first call wins: every worker's socket has
    /// the same one).
    pub fn set_bound(&self, addr: SocketAddr) {
        let _ = self.bound.set(addr);
    }

    /// Fires when the listener is removed: its accept loops stop.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// Stops accepting (the listener was removed) and drains its open L7 connections as a
    /// route removal does: the table is emptied, so each finds its route gone. Waits (at most
    /// `wait`, blocking) until every worker has closed its socket; false if one has not.
    pub fn close(&self, wait: Duration) -> bool {
        self.closed.cancel();
        self.replace_routes(RouteTable::with_stats(Vec::new(), |_| Arc::default()));
        self.set_not_served(Vec::new());
        let (open, closed) = &*self.sockets;
        let open = open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (open, _) = closed
            .wait_timeout_while(open, wait, |n| *n > 0)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *open == 0
    }

    /// Counts one listening socket of this listener as open until the guard drops (with the
    /// socket it is kept beside).
    pub fn socket_guard(&self) -> SocketGuard {
        let (open, _) = &*self.sockets;
        *open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        SocketGuard(Arc::clone(&self.sockets))
    }

    /// The client table, made with `size` slots on first use.
    pub fn client_table(&self, size: usize) -> &crate::model::clients::ClientTable {
        self.clients
            .get_or_init(|| crate::model::clients::ClientTable::new(size))
    }

    /// The client table's use, if it was ever made.
    pub fn client_table_stats(&self) -> Option<crate::model::clients::TableStats> {
        self.clients.get().map(|t| t.stats())
    }

    /// Whether every L7 request on this listener is logged (`[[listeners]] access_log`).
    pub fn access_log(&self) -> bool {
        self.settings.load().access_log
    }

    /// Looks a normalised SNI hostname up in the current table.
    pub fn lookup(&self, sni: &str) -> Option<Arc<RouteInfo>> {
        self.with_route(Some(sni), |r| r.cloned())
    }

    /// The current route for a connection routed by `sni` (`None`: by the no-SNI route),
    /// handed to `f` by reference: the per-request look-up of an open L7 connection takes no
    /// reference count unless `f` does.
    pub fn with_route<R>(
        &self,
        sni: Option<&str>,
        f: impl FnOnce(Option<&Arc<RouteInfo>>) -> R,
    ) -> R {
        let table = self.routes.load();
        let found = match sni {
            Some(sni) => table.find(sni),
            None => {
                let name = self.no_sni_route.load();
                name.as_deref().and_then(|n| table.stored(n))
            }
        };
        f(found)
    }

    /// A token cancelled at the next change of the route table or the no-SNI route. Taken
    /// before looking a route up, it cannot miss a change made after the look-up.
    pub fn changes(&self) -> CancellationToken {
        CancellationToken::clone(&self.changed.load())
    }

    /// How many changes of the route table or the no-SNI route were announced so far. A
    /// look-up made after reading it is current until it moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Tells those waiting on [`Self::changes`] that routes changed.
    fn announce_change(&self) {
        // After the store this announces: a reader that sees the new count sees the change.
        self.generation.fetch_add(1, Ordering::AcqRel);
        let old = self.changed.swap(Arc::new(CancellationToken::new()));
        old.cancel();
    }

    /// The route for a ClientHello without SNI, if the listener names one and it exists.
    pub fn lookup_no_sni(&self) -> Option<Arc<RouteInfo>> {
        self.with_route(None, |r| r.cloned())
    }

    /// The hostname of the route for ClientHellos without SNI.
    pub fn no_sni_route(&self) -> Option<String> {
        self.no_sni_route.load().as_deref().cloned()
    }

    /// Sets (or clears) the route for ClientHellos without SNI.
    pub fn set_no_sni_route(&self, hostname: Option<String>) {
        self.no_sni_route.store(hostname.map(Arc::new));
        self.announce_change();
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// The stored routes this listener does not serve, in hostname order.
    pub fn not_served(&self) -> Arc<Vec<NotServed>> {
        self.not_served.load_full()
    }

    /// The stored route `hostname` (a stored name) if it is one this listener does not serve.
    pub fn not_served_route(&self, hostname: &str) -> Option<NotServed> {
        self.not_served
            .load()
            .iter()
            .find(|n| n.route.hostname == hostname)
            .cloned()
    }

    /// Swaps in the list of stored routes not served (sorted here by hostname).
    pub fn set_not_served(&self, mut list: Vec<NotServed>) {
        list.sort_by(|a, b| a.route.hostname.cmp(&b.route.hostname));
        self.not_served.store(Arc::new(list));
    }

    /// The list without `hostname`: a route removed, or updated or reloaded into one served.
    pub fn forget_not_served(&self, hostname: &str) {
        let list = self.not_served.load();
        if list.iter().any(|n| n.route.hostname == hostname) {
            let rest = list
                .iter()
                .filter(|n| n.route.hostname != hostname)
                .cloned()
                .collect();
            self.set_not_served(rest);
        }
    }

    /// Swaps in a new route table. L4 connections already routed keep the route they were
    /// routed with; open L7 connections take the new one from their next request on (and
    /// are drained if their route is gone), see `l7::routing`.
    pub fn replace_routes(&self, table: RouteTable) {
        self.routes.store(Arc::new(table));
        *self.fresh_lock() = None;
        self.announce_change();
    }

    /// [`Self::replace_routes`] with a table patched from the current one
    /// ([`State::patch_table`]), `fresh` the routes the patch built: the health walk looks at
    /// those (their admin states or checks may have changed) rather than at every route.
    pub fn patch_routes(&self, table: RouteTable, fresh: Vec<Arc<RouteInfo>>) {
        self.routes.store(Arc::new(table));
        {
            let mut pending = self.fresh_lock();
            if let Some(list) = pending.as_mut() {
                if list.len() + fresh.len() > MAX_FRESH {
                    // Nobody took them for a while (no walk runs, or a large batch): a look
                    // at every route instead, and no memory held.
                    *pending = None;
                } else {
                    list.extend(fresh);
                }
            }
        }
        self.announce_change();
    }

    /// The routes patched in since the last call (`None`: look at every route), for the
    /// health walk: taken before it reads the table, so a patch made meanwhile is in the
    /// next call's list (looked at twice at worst, never missed).
    pub fn take_fresh(&self) -> Option<Vec<Arc<RouteInfo>>> {
        self.fresh_lock().replace(Vec::new())
    }

    fn fresh_lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<Arc<RouteInfo>>>> {
        self.fresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Everything the connection pipeline reads.
#[derive(Debug)]
pub struct State {
    /// `[proxy]` settings; swapped by `control` (SIGHUP) where they may change.
    proxy: ArcSwap<ProxyConfig>,
    /// The listeners, in store order; swapped by `control` when one is added or removed.
    listeners: ArcSwap<Vec<Arc<ListenerState>>>,
    /// Where the data-plane workers receive listeners added at run time.
    sockets: std::sync::OnceLock<Arc<dyn SocketHost>>,
    /// Live events for admin API subscribers.
    pub events: EventBus,
    /// ACME tls-alpn-01 challenges pending (`control::acme` in, the listeners out).
    pub acme: crate::model::acme::Challenges,
    /// Open routed connections, for `ListConnections`.
    pub connections: crate::model::conns::Registry,
    /// The addresses that hit limits most (`mcproxyctl talkers`, the console's view).
    pub talkers: Arc<crate::model::talkers::Talkers>,
    /// The L7 backend connection pool's counters, per backend.
    pub backends: Arc<crate::model::stats::BackendRegistry>,
    firewall: ArcSwap<Firewall>,
    /// The link to the fleet's store, on a node with `[cluster]`.
    cluster: ArcSwapOption<crate::model::cluster::ClusterView>,
    /// This node's name in the fleet, set once when it joins: the access lines name it.
    node: std::sync::OnceLock<Arc<str>>,
    /// Shutdown has begun: `/ready` answers 503 (the listeners may still accept, for
    /// `[proxy] shutdown_delay`).
    draining: std::sync::atomic::AtomicBool,
    /// This process handed its sockets to an upgraded one and drains: the node stays in
    /// service, so open L7 connections are not hurried (see `is_handing_over`).
    handing_over: std::sync::atomic::AtomicBool,
    /// Counters per (listener id, hostname), kept across route table swaps. Locked only while
    /// building a table, never on the data path.
    route_stats: Mutex<HashMap<(i64, String), Arc<RouteStats>>>,
}

impl State {
    /// Builds state from parts (tests and `load`).
    pub fn new(proxy: ProxyConfig, listeners: Vec<Arc<ListenerState>>, firewall: Firewall) -> Self {
        let mut route_stats = HashMap::new();
        for l in &listeners {
            for route in l.routes().iter() {
                route_stats.insert(
                    (l.id, route.route.hostname.clone()),
                    Arc::clone(&route.stats),
                );
            }
        }
        State {
            proxy: ArcSwap::from_pointee(proxy),
            listeners: ArcSwap::from_pointee(listeners),
            sockets: std::sync::OnceLock::new(),
            events: EventBus::default(),
            acme: Default::default(),
            connections: crate::model::conns::Registry::default(),
            talkers: Arc::default(),
            backends: Arc::default(),
            firewall: ArcSwap::from_pointee(firewall),
            cluster: ArcSwapOption::empty(),
            node: std::sync::OnceLock::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            handing_over: std::sync::atomic::AtomicBool::new(false),
            route_stats: Mutex::new(route_stats),
        }
    }

    /// A route table for `listener_id` whose routes keep the counters of their earlier
    /// versions (same hostname). Counters of hostnames no longer present are dropped.
    pub fn build_table(&self, listener_id: i64, routes: Vec<ValidRoute>) -> RouteTable {
        let mut stats = self.route_stats.lock().expect("route stats lock poisoned");
        let present: std::collections::HashSet<&str> =
            routes.iter().map(|r| r.route.hostname.as_str()).collect();
        stats.retain(|(id, host), _| *id != listener_id || present.contains(host.as_str()));
        RouteTable::with_stats(routes, |host| {
            Arc::clone(stats.entry((listener_id, host.to_owned())).or_default())
        })
    }

    /// Swaps in `listener`'s current table with the routes stored under the names in `remove`
    /// taken out and `put` in (each replacing any route of its name), as
    /// [`RouteTable::patched`]; only the routes of `put` are built, each keeping the counters
    /// of its earlier versions, and they are what the health walk is told to look at
    /// ([`ListenerState::patch_routes`]); the counters of a name removed and not put back are
    /// dropped. What one admin change does, at the cost of the routes it changes, not of the
    /// table. The caller serialises changes (`control`'s store lock), since the table is read
    /// and replaced here.
    pub fn patch_table(&self, listener: &ListenerState, remove: &[&str], put: Vec<ValidRoute>) {
        let mut stats = self.route_stats.lock().expect("route stats lock poisoned");
        let put_back: std::collections::HashSet<&str> =
            put.iter().map(|r| r.route.hostname.as_str()).collect();
        for name in remove.iter().filter(|name| !put_back.contains(**name)) {
            stats.remove(&(listener.id, (*name).to_owned()));
        }
        let put: Vec<Arc<RouteInfo>> = put
            .into_iter()
            .map(|valid| {
                let key = (listener.id, valid.route.hostname.clone());
                let route_stats = Arc::clone(stats.entry(key).or_default());
                Arc::new(RouteInfo::new(valid, route_stats))
            })
            .collect();
        let table = listener
            .routes()
            .patched(remove.iter().copied(), put.iter().cloned());
        listener.patch_routes(table, put);
    }

    /// Where listeners added at run time get their sockets: installed once by the data plane
    /// when its workers start (`listeners`); `None` without a data plane.
    pub fn sockets(&self) -> Option<&Arc<dyn SocketHost>> {
        self.sockets.get()
    }

    /// Installs the data plane's socket host (the first call wins: one data plane per state).
    pub fn install_sockets(&self, host: Arc<dyn SocketHost>) {
        let _ = self.sockets.set(host);
    }

    /// The current `[proxy]` settings, through a guard (read per connection: no reference
    /// count shared between workers is touched). Keep it for a statement, not across an
    /// `.await`.
    pub fn proxy(&self) -> arc_swap::Guard<Arc<ProxyConfig>> {
        self.proxy.load()
    }

    /// Swaps in new `[proxy]` settings (`control` checks which may change).
    pub fn set_proxy(&self, proxy: ProxyConfig) {
        self.proxy.store(Arc::new(proxy));
    }

    /// The link to the fleet's store (`None`: not a cluster node).
    pub fn cluster(&self) -> Option<Arc<crate::model::cluster::ClusterView>> {
        self.cluster.load_full()
    }

    /// Whether shutdown has begun (`/ready` answers 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Shutdown begins: from now on `/ready` answers 503.
    pub fn begin_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the drain under way is an upgrade's ([`State::begin_handover`]): an HTTP/1.1
    /// connection idle between requests then stays open until its next request, answered with
    /// `Connection: close`, or its keep-alive timeout, rather than being closed at once while
    /// its client may be sending (the new process serves meanwhile).
    pub fn is_handing_over(&self) -> bool {
        self.handing_over.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An upgraded process serves in this one's place; set before the shutdown fires.
    pub fn begin_handover(&self) {
        self.handing_over
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// This node's name in the fleet (`None`: not a cluster node).
    pub fn node(&self) -> Option<&str> {
        self.node.get().map(|n| &**n)
    }

    /// [`State::node`], shared (a reference count, no copy).
    pub fn node_shared(&self) -> Option<Arc<str>> {
        self.node.get().cloned()
    }

    /// Names this node in the fleet (the cluster sync, once, at start).
    pub fn set_node(&self, name: &str) {
        let _ = self.node.set(Arc::from(name));
    }

    /// Replaces the cluster link's view (the cluster sync only).
    pub fn set_cluster(&self, view: crate::model::cluster::ClusterView) {
        self.cluster.store(Some(Arc::new(view)));
    }

    /// The listeners, in store order.
    pub fn listeners(&self) -> Arc<Vec<Arc<ListenerState>>> {
        self.listeners.load_full()
    }

    /// The listener a request names: by its name first, then by its configured address
    /// (`127.0.0.1:8443`, `[::1]:443`, compared as addresses). The one way the admin API, the
    /// CLI and the cluster find a listener. Names and addresses never collide (a name equal to
    /// another listener's address is refused), so the order only matters for clarity.
    pub fn listener(&self, key: &str) -> Option<Arc<ListenerState>> {
        let key = key.trim();
        let listeners = self.listeners.load();
        if let Some(l) = listeners.iter().find(|l| l.name == key) {
            return Some(Arc::clone(l));
        }
        let addr: SocketAddr = key.parse().ok()?;
        listeners.iter().find(|l| l.addr == addr).cloned()
    }

    /// Swaps in a new list of listeners (`control`, which adds or removes one).
    pub fn set_listeners(&self, listeners: Vec<Arc<ListenerState>>) {
        self.listeners.store(Arc::new(listeners));
    }

    /// Passive health settings (`[proxy] backend_eject_*`).
    pub fn passive(&self) -> crate::model::backends::Passive {
        let proxy = self.proxy.load();
        crate::model::backends::Passive {
            eject_after: proxy.backend_eject_after,
            eject_time: proxy.backend_eject_time,
            eject_max_time: proxy.backend_eject_max_time,
        }
    }

    /// Logs a route member's state change and publishes it as `backend_changed`.
    pub fn backend_changed(
        &self,
        listener: SocketAddr,
        route: &RouteInfo,
        transition: Option<crate::model::backends::Transition>,
    ) {
        self.backend_changed_by(listener, route, transition, None);
    }

    /// [`State::backend_changed`] for an operator's change, published with who made it.
    pub fn backend_changed_by(
        &self,
        listener: SocketAddr,
        route: &RouteInfo,
        transition: Option<crate::model::backends::Transition>,
        origin: Option<crate::model::events::Origin>,
    ) {
        let Some(t) = transition else { return };
        let m = &t.member;
        // The backend's trouble warns; the operator's own drain or disable, and recoveries,
        // are information.
        if !matches!(m.state, BackendState::Down | BackendState::Ejected) {
            tracing::info!(%listener, route = %route.route.hostname, backend = %m.address, state = %m.state, "backend state: {}", m.reason);
        } else {
            tracing::warn!(%listener, route = %route.route.hostname, backend = %m.address, state = %m.state, "backend state: {}", m.reason);
        }
        self.events.publish(|| Event::BackendChanged {
            listener,
            route: route.route.hostname.clone(),
            member: t.member,
            origin,
        });
    }

    /// The current firewall snapshot.
    pub fn firewall(&self) -> Arc<Firewall> {
        self.firewall.load_full()
    }

    /// Is `ip` blocked by the current firewall? Reads the snapshot through a guard: no
    /// reference count is touched on the per-connection path.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.firewall.load().is_blocked(ip)
    }

    /// Swaps in a new firewall; it applies from the next connection on.
    pub fn replace_firewall(&self, firewall: Firewall) {
        self.firewall.store(Arc::new(firewall));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(id: i64, addr: &str, name: Option<&str>) -> Arc<ListenerState> {
        let addr: SocketAddr = addr.parse().unwrap();
        let l = ListenerState::new(
            id,
            addr,
            ListenerSettings::default(),
            RouteTable::with_stats(Vec::new(), |_| Arc::default()),
        );
        Arc::new(match name {
            Some(n) => l.with_name(n.to_owned()),
            None => l,
        })
    }

    /// What the health walk is told to look at: every route after a whole table was swapped
    /// in (or before it ever looked), else exactly the routes patched in since it last asked,
    /// and every route again once too many piled up.
    #[test]
    fn the_walk_is_told_the_routes_patched_in_since_it_last_asked() {
        let state = State::new(
            ProxyConfig::default(),
            vec![listener(1, "127.0.0.1:8443", None)],
            Firewall::default(),
        );
        let l = Arc::clone(&state.listeners()[0]);
        let route = |name: &str| {
            ValidRoute::unchecked(Route {
                hostname: name.to_owned(),
                backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:1")],
                ..Route::default()
            })
        };
        let names = |fresh: Option<Vec<Arc<RouteInfo>>>| {
            fresh.map(|f| {
                f.iter()
                    .map(|r| r.route.hostname.clone())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(names(l.take_fresh()), None, "never looked: everything");
        assert_eq!(names(l.take_fresh()), Some(vec![]));
        state.patch_table(&l, &[], vec![route("a.test"), route("b.test")]);
        state.patch_table(&l, &["a.test"], vec![]);
        assert_eq!(
            names(l.take_fresh()),
            Some(vec!["a.test".to_owned(), "b.test".to_owned()])
        );
        assert_eq!(names(l.take_fresh()), Some(vec![]));
        l.replace_routes(RouteTable::new([]));
        assert_eq!(names(l.take_fresh()), None, "a whole table: everything");
        for i in 0..=MAX_FRESH {
            state.patch_table(&l, &[], vec![route(&format!("r{i}.test"))]);
        }
        assert_eq!(names(l.take_fresh()), None, "too many: everything");
    }

    /// The names the table property test draws from: exact names, wildcards over them and
    /// the catch-all, so that exact-over-wildcard and wildcard-over-catch-all both matter.
    fn pool_name(i: usize) -> String {
        match i % 4 {
            0 => format!("n{}.test", i / 4 % 5),
            1 => format!("*.n{}.test", i / 4 % 5),
            2 => format!("x.n{}.test", i / 4 % 5),
            _ if i % 8 == 3 => "*".to_owned(),
            _ => format!("*.x.n{}.test", i / 4 % 5),
        }
    }

    /// One admin change of the property test: `(kind, name, other name, port)`.
    type Op = (u8, usize, usize, u16);

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// A table patched change by change (`State::patch_table`, what `control` does per
        /// change) answers every lookup as a table built afresh from the same routes does;
        /// a route the change did not name is the same `RouteInfo` as before (its
        /// connections see no new version); counters are kept across a route's versions and
        /// exist exactly for the routes there are.
        #[test]
        fn a_patched_table_answers_as_one_built_afresh(
            ops in proptest::collection::vec((0u8..3, 0usize..40, 0usize..40, 1u16..60000), 1..80)
        ) {
            let ops: Vec<Op> = ops;
            let state = State::new(
                ProxyConfig::default(),
                vec![listener(1, "127.0.0.1:8443", None)],
                Firewall::default(),
            );
            let l = Arc::clone(&state.listeners()[0]);
            let route = |name: &str, port: u16| Route {
                hostname: name.to_owned(),
                backends: vec![mc_proxy_shared::RouteBackend::new(format!("127.0.0.1:{port}"))],
                ..Route::default()
            };
            // The routes as the store would hold them.
            let mut model = std::collections::BTreeMap::<String, u16>::new();
            for (kind, a, b, port) in ops {
                let (a, b) = (pool_name(a), pool_name(b));
                let (remove, put): (Vec<&str>, Vec<Route>) = match kind {
                    // An add or an update in place.
                    0 => (vec![], vec![route(&a, port)]),
                    // A removal.
                    1 => (vec![a.as_str()], vec![]),
                    // A rename of `a` to `b` (or an update when they are the same name).
                    _ => (vec![a.as_str()], vec![route(&b, port)]),
                };
                let before = l.routes();
                let stats_before: HashMap<String, Arc<RouteStats>> = before
                    .unordered()
                    .map(|r| (r.route.hostname.clone(), Arc::clone(&r.stats)))
                    .collect();
                for name in &remove {
                    model.remove(*name);
                }
                for r in &put {
                    model.insert(r.hostname.clone(), r.backends[0].address[10..].parse().unwrap());
                }
                let touched: Vec<String> = remove
                    .iter()
                    .map(|n| (*n).to_owned())
                    .chain(put.iter().map(|r| r.hostname.clone()))
                    .collect();
                let put = put.into_iter().map(ValidRoute::unchecked).collect();
                state.patch_table(&l, &remove, put);
                let after = l.routes();
                for name in model.keys() {
                    let now = after.get(name).expect("a route of the model");
                    if !touched.contains(name) {
                        let was = before.get(name).expect("untouched, so there before");
                        proptest::prop_assert!(Arc::ptr_eq(&was, &now), "{name} rebuilt");
                    }
                    if let Some(stats) = stats_before.get(name) {
                        proptest::prop_assert!(Arc::ptr_eq(stats, &now.stats), "{name}'s counters");
                    }
                }
            }
            let table = l.routes();
            let fresh = RouteTable::new(model.iter().map(|(name, port)| route(name, *port)));
            let listed = |t: &RouteTable| -> Vec<(String, String)> {
                t.iter().map(|r| (r.route.hostname.clone(), r.route.backend_list())).collect()
            };
            proptest::prop_assert_eq!(listed(&table), listed(&fresh));
            proptest::prop_assert_eq!(table.len(), model.len());
            for i in 0..40 {
                for sni in [
                    pool_name(i).replace('*', "w"),
                    format!("y.n{}.test", i % 5),
                    format!("a.b.n{}.test", i % 5),
                    "elsewhere.test".to_owned(),
                ] {
                    let backend = |t: &RouteTable| t.lookup(&sni).map(|r| r.route.backend_list());
                    proptest::prop_assert_eq!(backend(&table), backend(&fresh), "{}", sni);
                }
            }
            let mut counted: Vec<String> = state
                .route_stats
                .lock()
                .unwrap()
                .keys()
                .map(|(_, host)| host.clone())
                .collect();
            counted.sort();
            proptest::prop_assert_eq!(counted, model.keys().cloned().collect::<Vec<_>>());
        }
    }

    /// One resolution for every request: a listener is found by its name, or by its
    /// configured address written any way that parses to it.
    #[test]
    fn a_listener_is_found_by_name_or_by_address() {
        let state = State::new(
            ProxyConfig::default(),
            vec![
                listener(1, "127.0.0.1:8443", None),
                listener(2, "[::1]:443", Some("edge-v6")),
            ],
            Firewall::default(),
        );
        let id = |key: &str| state.listener(key).map(|l| l.id);
        assert_eq!(id("127.0.0.1:8443"), Some(1));
        assert_eq!(id(" 127.0.0.1:8443 "), Some(1));
        assert_eq!(id("edge-v6"), Some(2));
        assert_eq!(
            id("[::1]:443"),
            Some(2),
            "the address still names a named listener"
        );
        assert_eq!(
            id("[0:0::1]:443"),
            Some(2),
            "addresses compare as addresses"
        );
        assert_eq!(id("edge"), None);
        assert_eq!(id("127.0.0.1:9999"), None);
        assert_eq!(state.listener("[::1]:443").unwrap().name, "edge-v6");
    }

    /// Timeouts, the head limit and passive health change at run time; the settings built
    /// into sockets, pools and threads at start are named as needing a restart and keep
    /// their running value.
    #[test]
    fn a_settings_reload_applies_what_is_read_per_connection_only() {
        let running = ProxyConfig::default();
        let file = ProxyConfig {
            connect_timeout: Duration::from_secs(2),
            backend_eject_after: 7,
            max_connections: 5,
            workers: 4,
            backend_ca: Some(PathBuf::from("/etc/ca.pem")),
            ..ProxyConfig::default()
        };
        let (merged, report) = running.reload(&file);
        assert_eq!(
            report.applied,
            ["connect_timeout: 5s -> 2s", "backend_eject_after: 3 -> 7"]
        );
        assert_eq!(
            report.need_restart,
            ["max_connections", "backend_ca", "workers"]
        );
        assert_eq!(merged.connect_timeout, Duration::from_secs(2));
        assert_eq!(merged.backend_eject_after, 7);
        assert_eq!(merged.max_connections, running.max_connections);
        assert_eq!(merged.workers, running.workers);
        assert_eq!(merged.backend_ca, None);

        // The same file again: nothing more applies; what waits for a restart is said again
        // (the file still differs from what runs).
        let (again, report) = merged.reload(&file);
        assert!(report.applied.is_empty(), "{report:?}");
        assert_eq!(
            report.need_restart,
            ["max_connections", "backend_ca", "workers"]
        );
        assert_eq!(again, merged);
    }
}
