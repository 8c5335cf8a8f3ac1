//! The client table: one listener's per-client state for `max_conns_per_client` and
//! `new_conns_per_client` (see ARCHITECTURE.md, "Abuse limits").
//!
//! No I/O. A fixed array of `AtomicU64` slots, allocated once (when a limit is first turned on)
//! and never grown: memory is bounded however many addresses are seen. Every worker reads and
//! writes it with compare-and-swap on one slot at a time; no lock, nothing a worker waits on.
//!
//! A slot packs a whole client in one word, so that one CAS moves it from one consistent state
//! to the next: a 20-bit tag (bits of the client key's hash the index does not use), the
//! connections it has open (12 bits) and its GCRA "theoretical arrival time" (32 bits of 100 µs
//! ticks since the table was made, wrapping after ~5 days). GCRA is the token bucket as one
//! timestamp: the bucket is full when the time is at or before now, and each new connection
//! pushes it one interval (1 s / rate) ahead; a connection is refused when it is more than
//! `burst - 1` intervals ahead.
//!
//! A client (an IPv4 address, or an IPv6 address cut to `client_ipv6_prefix`) is hashed with a
//! key drawn at start (so no one can aim at a slot) and lives in one of the [`WINDOW`] slots
//! from its hash's index. Invariants:
//! - A slot with open connections is never given to another client: its connections' guards
//!   decrement it by index, without looking at the tag.
//! - A slot with no open connection and a full bucket carries nothing: it is free, reused at
//!   once (not counted as an eviction).
//! - When a client finds no slot of its own and none free, the one whose bucket is closest to
//!   full (and has no open connection) is evicted: that client starts over with a full bucket.
//!   When all the window's slots hold open connections, the connection is admitted untracked
//!   (HAProxy's choice when a stick table is full of entries in use): counted, never refused.
//! - Two clients whose hashes share the window and the tag share a budget (one chance in
//!   2^20 per pair in a window; about one new client in 130 000 meets a stranger's slot when
//!   the window is full): the price of one-word slots.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use mc_proxy_shared::ClientLimits;

/// How many slots from its hash's index a client may live in.
pub const WINDOW: usize = 8;

/// Default `[proxy] client_table_size`: 65 536 slots, 512 KiB per listener with a limit on.
pub const DEFAULT_CLIENT_TABLE_SIZE: usize = 1 << 16;

/// The smallest and largest `[proxy] client_table_size`.
pub const CLIENT_TABLE_SIZE_RANGE: std::ops::RangeInclusive<usize> = 64..=(1 << 24);

const TAG_SHIFT: u32 = 44;
const TAG_MASK: u64 = (1 << 20) - 1;
const CONNS_SHIFT: u32 = 32;
const CONNS_MAX: u64 = (1 << 12) - 1;
const TIME_BITS: u32 = 32;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
/// Clock ticks per second (100 µs each).
const TICKS_PER_SECOND: u64 = 10_000;

/// Why a client's new connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It has `max_conns_per_client` open.
    Conns,
    /// Its bucket is empty (`new_conns_per_client`, `new_conns_burst`, or a route's request
    /// rate): one more would be admitted after `wait`.
    Rate {
        /// Until the bucket holds one again.
        wait: std::time::Duration,
    },
}

/// What the admin API shows of a table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Slots.
    pub capacity: u64,
    /// Slots holding a client (free ones included until reused).
    pub entries: u64,
    /// Clients evicted while their bucket was not full.
    pub evictions: u64,
    /// Connections admitted untracked (every slot of the window held open connections).
    pub untracked: u64,
}

/// One listener's client table (see the module docs).
#[derive(Debug)]
pub struct ClientTable {
    slots: Box<[AtomicU64]>,
    hasher: std::hash::RandomState,
    epoch: Instant,
    evictions: AtomicU64,
    untracked: AtomicU64,
    /// The rate-limited warning: when it was last written (ticks + 1; 0: never) and the
    /// refusals since.
    last_warning: AtomicU64,
    refused_since: AtomicU64,
}

/// A tracked connection of one client: gives its slot back when dropped.
#[derive(Debug)]
pub struct ClientGuard<'a> {
    table: &'a ClientTable,
    /// `None`: admitted untracked.
    slot: Option<usize>,
}

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        let Some(i) = self.slot else { return };
        let slot = &self.table.slots[i];
        // The slot is still this client's: one with open connections is never reassigned.
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            (conns(w) > 0).then(|| w - (1 << CONNS_SHIFT))
        });
    }
}

fn tag(w: u64) -> u64 {
    w >> TAG_SHIFT
}

fn conns(w: u64) -> u64 {
    (w >> CONNS_SHIFT) & CONNS_MAX
}

fn pack(tag: u64, conns: u64, time: u64) -> u64 {
    (tag << TAG_SHIFT) | (conns << CONNS_SHIFT) | (time & TIME_MASK)
}

/// A client's key: an IPv4 address whole, an IPv6 address cut to `prefix` bits (IPv4-mapped
/// IPv6 addresses are IPv4 clients).
pub(crate) fn client_key(ip: IpAddr, prefix: u8) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (0xffff_u128 << 32) | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            match prefix {
                0 => 0,
                p if p >= 128 => bits,
                p => bits & (u128::MAX << (128 - u32::from(p))),
            }
        }
    }
}

/// A rate per second and a burst in clock ticks: (interval, tolerance, most a bucket can be
/// ahead); `None` when the rate is 0 (off).
fn bucket(rate: u32, burst: u32) -> Option<(u64, u64, u64)> {
    let rate = u64::from(rate);
    if rate == 0 {
        return None;
    }
    let interval = ((TICKS_PER_SECOND + rate / 2) / rate).max(1);
    let burst = u64::from(burst).max(1);
    Some((interval, (burst - 1) * interval, burst * interval))
}

/// Clock ticks as a duration.
fn ticks(n: u64) -> std::time::Duration {
    std::time::Duration::from_micros(n * (1_000_000 / TICKS_PER_SECOND))
}

impl ClientTable {
    /// A table of `size` slots (rounded up to a power of two, within
    /// [`CLIENT_TABLE_SIZE_RANGE`]), every one free.
    pub fn new(size: usize) -> Self {
        let size = size
            .clamp(
                *CLIENT_TABLE_SIZE_RANGE.start(),
                *CLIENT_TABLE_SIZE_RANGE.end(),
            )
            .next_power_of_two();
        ClientTable {
            slots: (0..size).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::hash::RandomState::new(),
            epoch: Instant::now(),
            evictions: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
            refused_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() / (1_000_000_000 / u128::from(TICKS_PER_SECOND))) as u64
    }

    /// How far ahead of `now` a slot's bucket time is (0: its bucket is full). A time more than
    /// `max_ahead` ahead cannot have been written under the current limits: a stale time from
    /// before the clock wrapped, or a debt under a lower rate; either way the bucket is full.
    fn ahead(w: u64, now: u64, max_ahead: u64) -> u64 {
        let d = (w.wrapping_sub(now)) & TIME_MASK;
        if d > max_ahead { 0 } else { d }
    }

    /// Admits a new connection of `client` under `limits`, or says which limit refuses it.
    /// The guard holds its place in the concurrent count until dropped.
    pub fn admit(&self, client: IpAddr, limits: &ClientLimits) -> Result<ClientGuard<'_>, Refusal> {
        let rate = bucket(limits.new_conns_per_client, limits.burst());
        let slot = self.take(
            client,
            limits.client_ipv6_prefix,
            u64::from(limits.max_conns_per_client),
            rate,
            true,
        )?;
        Ok(ClientGuard { table: self, slot })
    }

    /// Admits one request of `client` under a rate per second and burst (0: the rate), or
    /// says how long until one would be; open connections are not counted. IPv6 clients are
    /// grouped by `ipv6_prefix`.
    pub fn admit_request(
        &self,
        client: IpAddr,
        ipv6_prefix: u8,
        rate: u32,
        burst: u32,
    ) -> Result<(), Refusal> {
        let burst = if burst == 0 { rate } else { burst };
        self.take(client, ipv6_prefix, 0, bucket(rate, burst), false)
            .map(|_| ())
    }

    /// The one admission: finds or makes `client`'s slot (see the module docs), refuses at
    /// `max_conns` open (0: no cap) or with its bucket spent, else spends one from the bucket
    /// and, with `count`, counts one more open connection. Returns the slot counted in
    /// (`None`: not counted).
    fn take(
        &self,
        client: IpAddr,
        ipv6_prefix: u8,
        max_conns: u64,
        rate: Option<(u64, u64, u64)>,
        count: bool,
    ) -> Result<Option<usize>, Refusal> {
        let hash = self.hasher.hash_one(client_key(client, ipv6_prefix));
        let my_tag = ((hash >> TAG_SHIFT) & TAG_MASK).max(1);
        let mask = self.slots.len() - 1;
        let start = hash as usize & mask;
        let max_ahead = rate.map_or(0, |(_, _, max)| max);
        let untracked = || {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        };
        // A CAS lost to another worker on the same slot: look again (a few times; then the
        // connection goes untracked rather than spin on a hot slot).
        for _ in 0..4 {
            let now = self.now();
            let mut own = None;
            let mut free = None;
            let mut oldest: Option<(usize, u64, u64)> = None;
            for k in 0..WINDOW {
                let i = (start + k) & mask;
                let w = self.slots[i].load(Ordering::Acquire);
                if tag(w) == my_tag {
                    own = Some((i, w));
                    break;
                }
                if conns(w) > 0 {
                    continue;
                }
                let ahead = Self::ahead(w, now, max_ahead);
                if ahead == 0 {
                    free.get_or_insert((i, w));
                } else if oldest.is_none_or(|(_, _, a)| ahead < a) {
                    oldest = Some((i, w, ahead));
                }
            }
            let (i, old, evicts, (open, ahead)) = match (own, free, oldest) {
                (Some((i, w)), _, _) => (i, w, false, (conns(w), Self::ahead(w, now, max_ahead))),
                (None, Some((i, w)), _) => (i, w, false, (0, 0)),
                (None, None, Some((i, w, _))) => (i, w, true, (0, 0)),
                (None, None, None) => return untracked(),
            };
            if max_conns > 0 && open >= max_conns {
                return Err(Refusal::Conns);
            }
            let time = match rate {
                Some((interval, tolerance, _)) => {
                    if ahead > tolerance {
                        return Err(Refusal::Rate {
                            wait: ticks(ahead - tolerance),
                        });
                    }
                    now + ahead + interval
                }
                None => now,
            };
            if count && open >= CONNS_MAX {
                // Only without a connection cap (which is below this): not counted.
                return untracked();
            }
            let open_now = if count { open + 1 } else { open };
            let new = pack(my_tag, open_now, time);
            if self.slots[i]
                .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if evicts {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(count.then_some(i));
            }
        }
        untracked()
    }

    /// Counts a refusal; `Some(n)` when the rate-limited warning is due (at most one per
    /// `every`), with the refusals since the last one.
    pub fn note_refusal(&self, every: std::time::Duration) -> Option<u64> {
        self.refused_since.fetch_add(1, Ordering::Relaxed);
        let now = self.now() + 1;
        let last = self.last_warning.load(Ordering::Relaxed);
        let every = every.as_secs() * TICKS_PER_SECOND;
        if last != 0 && now.saturating_sub(last) < every {
            return None;
        }
        self.last_warning
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.refused_since.swap(0, Ordering::Relaxed))
    }

    /// The table's size and use (reads every slot: for the admin API and `/metrics`).
    pub fn stats(&self) -> TableStats {
        TableStats {
            capacity: self.slots.len() as u64,
            entries: self
                .slots
                .iter()
                .filter(|s| s.load(Ordering::Relaxed) != 0)
                .count() as u64,
            evictions: self.evictions.load(Ordering::Relaxed),
            untracked: self.untracked.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u32, rate: u32, burst: u32) -> ClientLimits {
        ClientLimits {
            max_conns_per_client: max,
            new_conns_per_client: rate,
            new_conns_burst: burst,
            ..ClientLimits::default()
        }
    }

    #[test]
    fn concurrent_connections_are_capped_per_client_and_freed_on_drop() {
        let table = ClientTable::new(1024);
        let l = limits(2, 0, 0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let g1 = table.admit(a, &l).unwrap();
        let _g2 = table.admit(a, &l).unwrap();
        assert_eq!(table.admit(a, &l).unwrap_err(), Refusal::Conns);
        let _other = table.admit(b, &l).unwrap();
        drop(g1);
        let _g3 = table.admit(a, &l).unwrap();
    }

    #[test]
    fn the_rate_admits_the_burst_then_refuses() {
        let table = ClientTable::new(1024);
        let l = limits(0, 1, 3);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        // Same /64: the same client.
        let same: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        for _ in 0..3 {
            drop(table.admit(a, &l).unwrap());
        }
        assert!(matches!(
            table.admit(same, &l).unwrap_err(),
            Refusal::Rate { wait } if wait > std::time::Duration::from_millis(900)
        ));
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        drop(table.admit(other, &l).unwrap());
    }

    #[test]
    fn one_client_spending_its_burst_leaves_another_alone() {
        let table = ClientTable::new(65536);
        let l = limits(0, 5, 5);
        let a: IpAddr = "127.0.0.4".parse().unwrap();
        let b: IpAddr = "127.0.0.5".parse().unwrap();
        for _ in 0..5 {
            drop(table.admit(a, &l).unwrap());
        }
        assert!(matches!(table.admit(a, &l), Err(Refusal::Rate { .. })));
        drop(table.admit(b, &l).unwrap());
    }

    #[test]
    fn memory_stays_fixed_and_clients_in_debt_are_evicted() {
        let table = ClientTable::new(64);
        let l = limits(0, 1, 1);
        let mut shared = 0;
        for n in 0..10_000u32 {
            let ip = IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
            // A tag met by chance in the window: the stranger's budget (see the module docs).
            shared += u32::from(table.admit(ip, &l).is_err());
        }
        assert!(shared < 10, "{shared}");
        let stats = table.stats();
        assert_eq!(stats.capacity, 64);
        assert!(stats.entries <= 64);
        assert!(stats.evictions > 9_000, "{stats:?}");
    }

    #[test]
    fn a_window_of_open_connections_admits_untracked() {
        let table = ClientTable::new(64);
        let l = limits(1, 0, 0);
        let mut held = Vec::new();
        for n in 0..1_000u32 {
            let ip = IpAddr::from([10, 0, (n >> 8) as u8, n as u8]);
            held.push(table.admit(ip, &l).unwrap());
        }
        let stats = table.stats();
        assert_eq!(stats.entries, 64);
        assert!(stats.untracked >= 1_000 - 64, "{stats:?}");
    }
}
