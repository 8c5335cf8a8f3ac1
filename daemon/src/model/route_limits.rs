//! A route's request limits as the data path enforces them: the per-client request rate (a
//! client table of its own, `model::clients`) and the whole route's rate (one bucket), kept
//! with the route's counters so that every version of the route shares them (an edit of the
//! route or of its limits keeps what clients have spent).
//!
//! No I/O, no lock: the route's bucket is one `AtomicU64` (a GCRA time in nanoseconds since
//! the bucket was made) changed by compare-and-swap; the client table is made when a client
//! rate is first on, with `[proxy] client_table_size` slots.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mc_proxy_shared::limits::RouteLimits;

use crate::model::clients::{ClientTable, Refusal};

/// A route's request limiters (see the module docs).
#[derive(Debug, Default)]
pub struct RouteLimiter {
    clients: OnceLock<ClientTable>,
    route: RouteBucket,
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
