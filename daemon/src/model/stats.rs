//! Per-route traffic counters (with their latency histograms, `model::histogram`).
//!
//! No I/O. Every counter is an atomic updated on the data path with `Relaxed` ordering: an
//! observer (the admin API's stats snapshots, the console, the `/metrics` scrape) reads them
//! without ever making a connection wait. A route's counters outlive its `RouteInfo`: `State`
//! keeps one `RouteStats` per (listener, hostname), so updating a route keeps its history.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mc_proxy_shared::RouteBackend;

use crate::model::backends::MemberHealth;
pub use crate::model::histogram::{
    BUCKET_BOUNDS_SECONDS, BUCKETS, HistogramSnapshot, LatencyHistogram,
};

/// Bytes moved, per direction.
#[derive(Debug, Default)]
pub struct Transferred {
    /// Client to backend.
    pub up: AtomicU64,
    /// Backend to client.
    pub down: AtomicU64,
}

/// Counters for one route.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Connections routed here and still open.
    pub active: AtomicU64,
    /// Connections routed here since start.
    pub total: AtomicU64,
    /// Bytes relayed (L4) or carried on the client connection as TLS records, ClientHello
    /// included (L7), live.
    pub bytes: Transferred,
    /// Failures the client saw because of the backend: L4 connections reset because no member
    /// answered the dial (a failover that worked is not one), L7 requests answered 502/504
    /// because of the backend.
    pub backend_errors: AtomicU64,
    /// Tries after the first that the client did not see: L4 dials that went on to the next
    /// member, L7 requests sent again (after a lost connection, a refused stream, a graceful
    /// close, or handed back unsent).
    pub retries: AtomicU64,
    /// L7: requests received.
    pub requests: AtomicU64,
    /// L7: responses sent, by status class: index 0 is 1xx ... index 4 is 5xx.
    pub responses: [AtomicU64; 5],
    /// L7: time from receiving a request (its head parsed by hyper) to handing the response
    /// head back to hyper: the backend's answer, or the proxy's own 4xx/502/504. Body
    /// streaming is not included. See `l7::downstream::handle`.
    pub request_duration: LatencyHistogram,
    /// Time to set up a backend connection that succeeded. L7: TCP connect, PROXY header, TLS
    /// (with `backend_tls`) and the HTTP/2 handshake, once per backend connection. L4: the TCP
    /// connect. Failed setups are not recorded here; they count in `backend_errors`.
    pub connect_duration: LatencyHistogram,
    /// Connections (L4) or requests (L7) refused because no member could take them (every
    /// one down, ejected with a trial out, draining or disabled).
    pub no_backend: AtomicU64,
    /// Connections (L4) or requests (L7) refused by the route's `allow_from` / `deny_from`.
    pub denied: AtomicU64,
    /// L7 requests answered 429 by the route's request rates.
    pub rate_limited: AtomicU64,
    /// L7 HTTP/2 connections sent GOAWAY ENHANCE_YOUR_CALM for resetting too many accepted
    /// streams (`h2_max_client_resets`).
    pub rapid_resets: AtomicU64,
    /// The state of the route's request rates, shared by every version of the route.
    pub limiter: crate::model::route_limits::RouteLimiter,
    /// Each member's health and counters by address: kept across route edits and admin state
    /// changes. Locked only while a route table is built, never on the data path.
    members: Mutex<HashMap<String, Arc<MemberHealth>>>,
}

/// A plain copy of a route's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteStatsSnapshot {
    /// See [`RouteStats::active`].
    pub active: u64,
    /// See [`RouteStats::total`].
    pub total: u64,
    /// Client to backend bytes.
    pub bytes_up: u64,
    /// Backend to client bytes.
    pub bytes_down: u64,
    /// See [`RouteStats::backend_errors`].
    pub backend_errors: u64,
    /// See [`RouteStats::retries`].
    pub retries: u64,
    /// See [`RouteStats::requests`].
    pub requests: u64,
    /// See [`RouteStats::responses`].
    pub responses: [u64; 5],
    /// See [`RouteStats::request_duration`].
    pub request_duration: HistogramSnapshot,
    /// See [`RouteStats::connect_duration`].
    pub connect_duration: HistogramSnapshot,
    /// See [`RouteStats::no_backend`].
    pub no_backend: u64,
    /// See [`RouteStats::denied`].
    pub denied: u64,
    /// See [`RouteStats::rate_limited`].
    pub rate_limited: u64,
    /// L7 requests refused by `max_requests` (the gate's `overloaded`).
    pub overloaded: u64,
    /// L7 requests that waited in the `max_requests` queue.
    pub queued: u64,
    /// See [`RouteStats::rapid_resets`].
    pub rapid_resets: u64,
}

impl RouteStats {
    /// Counts a response with `status` in its class; statuses outside 100-599 are ignored.
    pub fn count_response(&self, status: u16) {
        if let Some(slot) = (status / 100)
            .checked_sub(1)
            .and_then(|i| self.responses.get(usize::from(i)))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The health of the member at `address`, created on first use.
    pub fn member(&self, address: &str) -> Arc<MemberHealth> {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(members.entry(address.to_owned()).or_default())
    }

    /// Forgets the members whose address is not in `keep` (removed from the route).
    pub fn retain_members(&self, keep: &[RouteBackend]) {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|address, _| keep.iter().any(|b| &b.address == address));
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> RouteStatsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RouteStatsSnapshot {
            active: load(&self.active),
            total: load(&self.total),
            bytes_up: load(&self.bytes.up),
            bytes_down: load(&self.bytes.down),
            backend_errors: load(&self.backend_errors),
            retries: load(&self.retries),
            requests: load(&self.requests),
            responses: self.responses.each_ref().map(load),
            request_duration: self.request_duration.snapshot(),
            connect_duration: self.connect_duration.snapshot(),
            no_backend: load(&self.no_backend),
            denied: load(&self.denied),
            rate_limited: load(&self.rate_limited),
            overloaded: load(&self.limiter.gate.overloaded),
            queued: load(&self.limiter.gate.queued),
            rapid_resets: load(&self.rapid_resets),
        }
    }
}

/// Counts a connection as open on a route for as long as the guard lives.
#[derive(Debug)]
pub struct ActiveGuard<'a>(&'a RouteStats);

impl<'a> ActiveGuard<'a> {
    /// Counts one more open (and total) connection.
    pub fn new(stats: &'a RouteStats) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        stats.total.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(stats)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_counted_by_class() {
        let stats = RouteStats::default();
        for status in [101, 200, 204, 302, 404, 502, 503, 99, 600] {
            stats.count_response(status);
        }
        assert_eq!(stats.snapshot().responses, [1, 2, 1, 1, 2]);
    }

    #[test]
    fn active_guard_counts_open_and_total() {
        let stats = RouteStats::default();
        {
            let _a = ActiveGuard::new(&stats);
            let _b = ActiveGuard::new(&stats);
            assert_eq!(stats.snapshot().active, 2);
        }
        let snap = stats.snapshot();
        assert_eq!((snap.active, snap.total), (0, 2));
    }
}

/// Names a backend in the connection-pool figures: its address, the protocol routes ask for
/// and whether TLS is spoken. The TLS server name and a PROXY header's client are left out, so
/// one backend reached under many SNIs (a wildcard route) or by many `send_proxy_protocol`
/// clients is one line, not thousands.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// `host:port` as routes name it.
    pub backend: String,
    /// `h2`, `http1` or `auto`.
    pub protocol: mc_proxy_shared::BackendProtocol,
    /// TLS to the backend.
    pub tls: bool,
}

/// The L7 backend connection pool's counters for one [`BackendKey`]. Gauges move both ways;
/// `opened` and `failed` only grow.
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// Connections established and not yet closed.
    pub open: AtomicU64,
    /// Of those, carrying at least one request.
    pub in_use: AtomicU64,
    /// Requests in flight (HTTP/2 streams, or HTTP/1.1 requests).
    pub requests: AtomicU64,
    /// Connections opened since start.
    pub opened: AtomicU64,
    /// Connection attempts that failed since start.
    pub failed: AtomicU64,
}

/// A plain copy of one backend's pool counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSnapshot {
    /// Which backend.
    pub key: BackendKey,
    /// See [`BackendCounters::open`].
    pub open: u64,
    /// Open connections carrying no request.
    pub idle: u64,
    /// See [`BackendCounters::in_use`].
    pub in_use: u64,
    /// See [`BackendCounters::requests`].
    pub requests: u64,
    /// See [`BackendCounters::opened`].
    pub opened: u64,
    /// See [`BackendCounters::failed`].
    pub failed: u64,
}

/// Every backend's pool counters, created on first use and kept for the daemon's life (one
/// entry per distinct backend of the routes, a small set). Locked only to find or list
/// entries, never while a counter moves.
#[derive(Debug, Default)]
pub struct BackendRegistry {
    entries:
        std::sync::Mutex<std::collections::HashMap<BackendKey, std::sync::Arc<BackendCounters>>>,
}

impl BackendRegistry {
    /// The counters of `key`.
    pub fn counters(&self, key: BackendKey) -> std::sync::Arc<BackendCounters> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::sync::Arc::clone(entries.entry(key).or_default())
    }

    /// Every backend's figures, ordered by backend, protocol, TLS.
    pub fn snapshot(&self) -> Vec<BackendSnapshot> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out: Vec<_> = entries
            .iter()
            .map(|(key, c)| {
                let open = c.open.load(Ordering::Relaxed);
                let in_use = c.in_use.load(Ordering::Relaxed).min(open);
                BackendSnapshot {
                    key: key.clone(),
                    open,
                    idle: open - in_use,
                    in_use,
                    requests: c.requests.load(Ordering::Relaxed),
                    opened: c.opened.load(Ordering::Relaxed),
                    failed: c.failed.load(Ordering::Relaxed),
                }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}
