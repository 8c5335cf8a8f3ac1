//! A route's request limits as the data path enforces them: the per-client request rate (a
//! client table of its own, `model::clients`), the whole route's rate (one bucket) and its
//! concurrency cap with a short queue ([`Gate`]), kept with the route's counters so that every
//! version of the route shares them (an edit of the route or of its limits keeps what clients
//! have spent and the requests in flight).
//!
//! No I/O. The route's bucket is one `AtomicU64` (a GCRA time in nanoseconds since the bucket
//! was made) changed by compare-and-swap; the client table is made when a client rate is
//! first on, with `[proxy] client_table_size` slots. The gate's fast path is one CAS on the
//! in-flight count; only a request that has to wait touches the `Notify` (whose waiter list
//! is locked), and a slot given back wakes one waiter.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mc_proxy_shared::limits::RouteLimits;

use crate::model::clients::{ClientTable, Refusal};

/// A route's request limiters (see the module docs).
#[derive(Debug, Default)]
pub struct RouteLimiter {
    clients: OnceLock<ClientTable>,
    route: RouteBucket,
    /// `max_requests` and its queue (shared with the slots it gave out).
    pub gate: Arc<Gate>,
}

/// Why a request found no slot under `max_requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// Every slot busy and `max_queue` requests already waiting (or no queue).
    #[error("max_requests in flight and the queue full")]
    Full,
    /// It waited `queue_timeout` and no slot freed.
    #[error("no slot freed within the queue timeout")]
    Timeout,
}

/// A route's concurrency cap: requests in flight, requests waiting, and what wakes them.
#[derive(Debug, Default)]
pub struct Gate {
    in_flight: AtomicU64,
    waiting: AtomicU64,
    freed: tokio::sync::Notify,
    /// Requests that had to wait (since start).
    pub queued: AtomicU64,
    /// Requests refused: the queue full, or their wait over (since start).
    pub overloaded: AtomicU64,
}

/// A place in the queue, left when dropped.
struct Waiting<'a>(&'a Gate);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request's slot under `max_requests`; given back (and a waiter woken) when dropped.
#[derive(Debug)]
pub struct GateSlot {
    gate: Arc<Gate>,
}

impl Drop for GateSlot {
    fn drop(&mut self) {
        self.gate.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.gate.freed.notify_one();
    }
}

impl Gate {
    /// Requests in flight under the cap now, and waiting now.
    pub fn load(&self) -> (u64, u64) {
        (
            self.in_flight.load(Ordering::Relaxed),
            self.waiting.load(Ordering::Relaxed),
        )
    }

    fn try_take(&self, max: u64) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }
}

/// A slot of the route's `gate` under `limits.max_requests`: at once if one is free, else
/// after waiting in the queue (at most `max_queue` wait, each at most `queue_timeout`). The
/// cap is read per request, so a change applies to the next one; requests in flight are never
/// cut.
pub async fn enter(gate: &Arc<Gate>, limits: &RouteLimits) -> Result<GateSlot, GateError> {
    let max = u64::from(limits.max_requests);
    let slot = || GateSlot {
        gate: Arc::clone(gate),
    };
    if gate.try_take(max) {
        return Ok(slot());
    }
    let refuse = |e| {
        gate.overloaded.fetch_add(1, Ordering::Relaxed);
        Err(e)
    };
    // A place in the queue, or 503 at once.
    if gate
        .waiting
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < u64::from(limits.max_queue)).then_some(n + 1)
        })
        .is_err()
    {
        return refuse(GateError::Full);
    }
    gate.queued.fetch_add(1, Ordering::Relaxed);
    // Leaves the queue however the wait ends, the request dropped (its client gone) included.
    let waiting = Waiting(gate);
    let deadline = tokio::time::Instant::now() + limits.queue_timeout();
    let taken = loop {
        // Registered before the check: a slot freed between the check and the wait wakes it.
        let freed = gate.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if gate.try_take(max) {
            break true;
        }
        if tokio::time::timeout_at(deadline, freed).await.is_err() {
            // One last look: a slot freed as the time ran out is still taken.
            break gate.try_take(max);
        }
    };
    drop(waiting);
    if taken {
        // Another waiter may fit too (the cap was raised, several slots freed at once).
        gate.freed.notify_one();
        Ok(slot())
    } else {
        refuse(GateError::Timeout)
    }
}

impl RouteLimiter {
    /// Admits one request of `client` (IPv6 grouped by `ipv6_prefix`) under `limits`' request
    /// rates: the client's first (a flooding client is refused before it spends the route's
    /// budget), then the route's. `Err`: how long until one would be admitted.
    pub fn admit_request(
        &self,
        client: IpAddr,
        ipv6_prefix: u8,
        limits: &RouteLimits,
        table_size: usize,
    ) -> Result<(), Duration> {
        if limits.client_request_rate > 0 {
            let table = self.clients.get_or_init(|| ClientTable::new(table_size));
            if let Err(Refusal::Rate { wait }) = table.admit_request(
                client,
                ipv6_prefix,
                limits.client_request_rate,
                limits.client_request_burst,
            ) {
                return Err(wait);
            }
        }
        if limits.route_request_rate > 0 {
            self.route
                .admit(limits.route_request_rate, limits.route_request_burst)?;
        }
        Ok(())
    }

    /// Whether a rate (not the cap) is set.
    pub fn rates(limits: &RouteLimits) -> bool {
        limits.client_request_rate > 0 || limits.route_request_rate > 0
    }

    /// The per-client table's use, if one was made.
    pub fn client_table(&self) -> Option<crate::model::clients::TableStats> {
        self.clients.get().map(ClientTable::stats)
    }
}

/// One token bucket as a GCRA time (nanoseconds since `epoch`).
#[derive(Debug)]
struct RouteBucket {
    epoch: Instant,
    time: AtomicU64,
}

impl Default for RouteBucket {
    fn default() -> Self {
        RouteBucket {
            epoch: Instant::now(),
            time: AtomicU64::new(0),
        }
    }
}

impl RouteBucket {
    /// Spends one at `rate` per second with `burst` (0: the rate) back to back, or says how
    /// long until one is there. A refusal spends nothing.
    fn admit(&self, rate: u32, burst: u32) -> Result<(), Duration> {
        let interval = 1_000_000_000 / u64::from(rate.max(1));
        let burst = u64::from(if burst == 0 { rate } else { burst }.max(1));
        let tolerance = (burst - 1) * interval;
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut current = self.time.load(Ordering::Acquire);
        loop {
            let start = current.max(now);
            // A time further ahead than this burst can push it was written under a lower rate
            // or a bigger burst: the bucket is read as empty under the current limits.
            let start = start.min(now + tolerance + interval);
            if start - now > tolerance {
                return Err(Duration::from_nanos(start - now - tolerance));
            }
            match self.time.compare_exchange_weak(
                current,
                start + interval,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(max: u32, queue: u32, timeout_ms: u32) -> RouteLimits {
        RouteLimits {
            max_requests: max,
            max_queue: queue,
            queue_timeout_ms: timeout_ms,
            ..RouteLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_admits_the_cap_queues_the_next_and_refuses_past_the_queue() {
        let gate = Arc::new(Gate::default());
        let limits = capped(2, 1, 500);
        let a = enter(&gate, &limits).await.unwrap();
        let _b = enter(&gate, &limits).await.unwrap();
        // The third waits; a fourth finds the queue full.
        let waiter = tokio::spawn({
            let (gate, limits) = (Arc::clone(&gate), limits.clone());
            async move { enter(&gate, &limits).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(gate.load(), (2, 1));
        assert_eq!(enter(&gate, &limits).await.unwrap_err(), GateError::Full);
        drop(a);
        waiter.await.unwrap().unwrap();
        // Nobody frees a slot: the wait ends at the timeout, not before.
        let started = tokio::time::Instant::now();
        let _c = enter(&gate, &limits).await.unwrap();
        assert_eq!(enter(&gate, &limits).await.unwrap_err(), GateError::Timeout);
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(gate.overloaded.load(Ordering::Relaxed), 2);
        assert_eq!(gate.queued.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_route_bucket_takes_its_burst_then_says_how_long_to_wait() {
        let bucket = RouteBucket::default();
        for _ in 0..4 {
            bucket.admit(2, 4).unwrap();
        }
        let wait = bucket.admit(2, 4).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
    }

    #[test]
    fn a_flooding_client_is_refused_before_it_spends_the_route_budget() {
        let limiter = RouteLimiter::default();
        let limits = RouteLimits {
            client_request_rate: 1,
            client_request_burst: 2,
            route_request_rate: 1,
            route_request_burst: 3,
            ..RouteLimits::default()
        };
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let admit = |ip| limiter.admit_request(ip, 64, &limits, 64);
        assert!(admit(a).is_ok() && admit(a).is_ok());
        for _ in 0..10 {
            assert!(admit(a).is_err());
        }
        // The route still has one of its three for another client, then none.
        assert!(admit(b).is_ok());
        assert!(admit(b).is_err());
    }
}
