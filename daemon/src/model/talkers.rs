//! The addresses that hit limits most: each refusal by a per-client connection limit or rate,
//! a route's access lists, request rates or request cap is noted with the client address; the
//! console's talkers view and `mcproxyctl talkers` read the top of it.
//!
//! No I/O. Bounded whatever the flood: [`CAPACITY`] entries kept by Space-Saving (Metwally et
//! al.): a new address takes the place of the one with the fewest hits and inherits that count
//! plus one, so a real heavy hitter is never lost and a count overestimates by at most what it
//! inherited (shown as `at most`). The lock is only tried: under contention a note is dropped
//! rather than make a refusal wait (observers never apply backpressure to traffic).

use std::net::IpAddr;
use std::sync::Mutex;

use crate::model::clients::client_key;

/// Entries kept.
pub const CAPACITY: usize = 64;

/// Which limit a refusal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// The listener's `max_conns_per_client`.
    ConnLimit,
    /// The listener's `new_conns_per_client`.
    ConnRate,
    /// A route's `allow_from` / `deny_from`.
    Denied,
    /// A route's request rate (429).
    RateLimited,
    /// A route's `max_requests` and its queue (503).
    Overloaded,
}

impl Hit {
    /// As the API and the console name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Hit::ConnLimit => "client_conn_limit",
            Hit::ConnRate => "client_rate_limit",
            Hit::Denied => "route_denied",
            Hit::RateLimited => "rate_limited",
            Hit::Overloaded => "overloaded",
        }
    }
}

/// One address and its refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Talker {
    /// The client: an IPv4 address, or an IPv6 /64.
    pub client: String,
    /// Refusals counted for it (at most `hits`; see `error`).
    pub hits: u64,
    /// How many of `hits` it may have inherited from the address it replaced.
    pub error: u64,
    /// The last refusal's limit.
    pub last: Hit,
    /// The route of the last refusal (empty: refused before a route was chosen).
    pub route: String,
    /// When, ms since the Unix epoch.
    pub last_ms: u64,
}

/// The table (see the module docs).
#[derive(Debug, Default)]
pub struct Talkers {
    entries: Mutex<Vec<Entry>>,
}

/// A [`Talker`] as the table keeps it: the address as its number (a refusal compares and
/// copies no text under the lock), written out only when the table is read.
#[derive(Debug, Clone)]
struct Entry {
    /// `clients::client_key` at /64: an IPv4 address whole, an IPv6 one by its /64.
    key: u128,
    hits: u64,
    error: u64,
    last: Hit,
    route: String,
    last_ms: u64,
}

/// IPv6 clients are counted by /64 (one host owns one).
const IPV6_PREFIX: u8 = 64;

/// A key's text: the IPv4 address, or the IPv6 /64.
fn client_text(key: u128) -> String {
    let ip = std::net::Ipv6Addr::from(key);
    match ip.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => format!("{ip}/{IPV6_PREFIX}"),
    }
}

impl Talkers {
    /// Notes one refusal of `client` by `hit` (on `route`, if one was chosen).
    pub fn note(&self, client: IpAddr, hit: Hit, route: &str) {
        let Ok(mut entries) = self.entries.try_lock() else {
            return;
        };
        let key = client_key(client, IPV6_PREFIX);
        let now = crate::model::events::now_ms();
        if let Some(t) = entries.iter_mut().find(|t| t.key == key) {
            t.hits += 1;
            t.last = hit;
            route.clone_into(&mut t.route);
            t.last_ms = now;
            return;
        }
        let entry = |hits, error| Entry {
            key,
            hits,
            error,
            last: hit,
            route: route.to_owned(),
            last_ms: now,
        };
        if entries.len() < CAPACITY {
            entries.push(entry(1, 0));
            return;
        }
        if let Some(min) = entries.iter_mut().min_by_key(|t| t.hits) {
            let inherited = min.hits;
            *min = entry(inherited + 1, inherited);
        }
    }

    /// The `n` addresses with the most refusals, most first.
    pub fn top(&self, n: usize) -> Vec<Talker> {
        let mut all: Vec<Talker> = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|e| Talker {
                client: client_text(e.key),
                hits: e.hits,
                error: e.error,
                last: e.last,
                route: e.route.clone(),
                last_ms: e.last_ms,
            })
            .collect();
        all.sort_by(|a, b| b.hits.cmp(&a.hits).then_with(|| a.client.cmp(&b.client)));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heavy_hitter_stays_on_top_of_a_bounded_table_under_many_one_off_addresses() {
        let t = Talkers::default();
        let flooder: IpAddr = "198.51.100.7".parse().unwrap();
        for i in 0..10_000u32 {
            t.note(flooder, Hit::RateLimited, "api.test");
            // A new address every time: more than the table holds, many times over.
            let one_off = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.note(one_off, Hit::ConnRate, "");
        }
        let top = t.top(CAPACITY + 10);
        assert_eq!(top.len(), CAPACITY, "bounded");
        assert_eq!(top[0].client, "198.51.100.7");
        assert!(
            top[0].hits >= 10_000 && top[0].hits - top[0].error <= 10_000,
            "{:?}",
            top[0]
        );
        assert_eq!(
            (top[0].last, top[0].route.as_str()),
            (Hit::RateLimited, "api.test")
        );
        // IPv6 by /64: two hosts of one /64 are one talker.
        let t = Talkers::default();
        t.note("2001:db8:1:2::1".parse().unwrap(), Hit::Denied, "a.test");
        t.note("2001:db8:1:2::99".parse().unwrap(), Hit::Denied, "a.test");
        let top = t.top(5);
        assert_eq!(
            (top[0].client.as_str(), top[0].hits),
            ("2001:db8:1:2::/64", 2)
        );
    }
}
