//! Per-route traffic counters.
//!
//! No I/O. Every counter is an atomic updated on the data path with `Relaxed` ordering: an
//! observer (the admin API's stats snapshots, the console) reads them without ever making a
//! connection wait. A route's counters outlive its `RouteInfo`: `State` keeps one
//! `RouteStats` per (listener, hostname), so updating a route keeps its history.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// L4: connections that failed on the backend side (dial failure, timeout). L7: requests
    /// answered 502/504 because of the backend.
    pub backend_errors: AtomicU64,
    /// L7: requests received.
    pub requests: AtomicU64,
    /// L7: responses sent, by status class: index 0 is 1xx ... index 4 is 5xx.
    pub responses: [AtomicU64; 5],
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
    /// See [`RouteStats::requests`].
    pub requests: u64,
    /// See [`RouteStats::responses`].
    pub responses: [u64; 5],
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

    /// Reads every counter.
    pub fn snapshot(&self) -> RouteStatsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RouteStatsSnapshot {
            active: load(&self.active),
            total: load(&self.total),
            bytes_up: load(&self.bytes.up),
            bytes_down: load(&self.bytes.down),
            backend_errors: load(&self.backend_errors),
            requests: load(&self.requests),
            responses: self.responses.each_ref().map(load),
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
