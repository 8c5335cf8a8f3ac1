//! Abuse limits: the per-client-address limits of a listener ([`ClientLimits`]), a route's
//! access lists and request limits ([`RouteLimits`]), and the checks on their values. One
//! check each ([`ClientLimits::check`], [`RouteLimits::checked`]), applied by the daemon's TOML
//! parser, its admin API (`control::apply`, `routes::validate_route`), `mcproxyctl` and the
//! console, so all refuse the same values with the same words.
//!
//! No I/O. Invariant: a [`ClientLimits`] that passed [`ClientLimits::check`] fits the daemon's
//! client table (concurrent counts in 12 bits, a bucket's debt well under its clock's wrap).

use serde::{Deserialize, Serialize};

/// The largest `max_conns_per_client` (the daemon's client table counts in 12 bits).
pub const MAX_CONNS_PER_CLIENT: u32 = 4_000;

/// The largest `new_conns_per_client` rate, per second (a higher one is no limit on one
/// client).
pub const MAX_NEW_CONNS_RATE: u32 = 1_000;

/// The largest `new_conns_burst`.
pub const MAX_NEW_CONNS_BURST: u32 = 100_000;

/// The longest a full bucket may take to refill (burst / rate), in seconds: bounds how far
/// ahead of the clock a client's bucket may be, which the table's clock wrap relies on.
pub const MAX_REFILL_SECONDS: u32 = 3_600;

/// The default IPv6 grouping: one host (one customer, one VM) owns a /64.
pub const DEFAULT_CLIENT_IPV6_PREFIX: u8 = 64;

/// The shortest IPv6 grouping accepted: a shorter one would put unrelated networks (whole
/// providers) under one budget.
pub const MIN_CLIENT_IPV6_PREFIX: u8 = 16;

/// A listener's limits per client address (the real one: after a trusted PROXY header). A
/// zero turns a limit off; all off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientLimits {
    /// Connections one client may have open at once (0: no limit).
    pub max_conns_per_client: u32,
    /// New connections one client may open per second, on average (0: no limit).
    pub new_conns_per_client: u32,
    /// How many new connections one client may open back to back before the rate applies
    /// (0: as many as the rate, one second's worth).
    pub new_conns_burst: u32,
    /// IPv6 clients are grouped by this prefix length: every address of one /64 (by default)
    /// is one client. IPv4 clients are single addresses.
    pub client_ipv6_prefix: u8,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_conns_per_client: 0,
            new_conns_per_client: 0,
            new_conns_burst: 0,
            client_ipv6_prefix: DEFAULT_CLIENT_IPV6_PREFIX,
        }
    }
}

/// What is wrong with a listener's client limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientLimitsError {
    /// `max_conns_per_client` too large.
    #[error("max_conns_per_client {0} is over {MAX_CONNS_PER_CLIENT}")]
    MaxConns(u32),
    /// `new_conns_per_client` too large.
    #[error("new_conns_per_client {0} is over {MAX_NEW_CONNS_RATE} per second")]
    Rate(u32),
    /// `new_conns_burst` too large.
    #[error("new_conns_burst {0} is over {MAX_NEW_CONNS_BURST}")]
    Burst(u32),
    /// A burst that takes too long to refill at the rate.
    #[error(
        "new_conns_burst {burst} at new_conns_per_client {rate} takes over {MAX_REFILL_SECONDS} s \
         to refill: raise the rate or lower the burst"
    )]
    Refill {
        /// The burst.
        burst: u32,
        /// The rate.
        rate: u32,
    },
    /// A burst without a rate.
    #[error("new_conns_burst is set but new_conns_per_client is 0, so no rate applies")]
    BurstWithoutRate,
    /// `client_ipv6_prefix` out of range.
    #[error("client_ipv6_prefix {0} is not between {MIN_CLIENT_IPV6_PREFIX} and 128")]
    Prefix(u32),
}

impl ClientLimits {
    /// Whether any limit is on (otherwise the daemon skips the client table).
    pub fn any(&self) -> bool {
        self.max_conns_per_client > 0 || self.new_conns_per_client > 0
    }

    /// The burst in effect: `new_conns_burst`, or one second's worth of the rate when 0.
    pub fn burst(&self) -> u32 {
        match self.new_conns_burst {
            0 => self.new_conns_per_client,
            b => b,
        }
    }

    /// The one check of every source (TOML, admin API, CLI, console).
    pub fn check(&self) -> Result<(), ClientLimitsError> {
        if self.max_conns_per_client > MAX_CONNS_PER_CLIENT {
            return Err(ClientLimitsError::MaxConns(self.max_conns_per_client));
        }
        let rate = self.new_conns_per_client;
        if rate > MAX_NEW_CONNS_RATE {
            return Err(ClientLimitsError::Rate(rate));
        }
        if self.new_conns_burst > MAX_NEW_CONNS_BURST {
            return Err(ClientLimitsError::Burst(self.new_conns_burst));
        }
        if rate == 0 && self.new_conns_burst > 0 {
            return Err(ClientLimitsError::BurstWithoutRate);
        }
        if rate > 0 && self.burst() / rate >= MAX_REFILL_SECONDS {
            return Err(ClientLimitsError::Refill {
                burst: self.new_conns_burst,
                rate,
            });
        }
        check_ipv6_prefix(u32::from(self.client_ipv6_prefix))?;
        Ok(())
    }

    /// `self` with the fields `patch` sets, checked: what an update or a new listener gets.
    pub fn patched(&self, patch: &ClientLimitsPatch) -> Result<ClientLimits, ClientLimitsError> {
        let prefix = match patch.client_ipv6_prefix {
            Some(p) => check_ipv6_prefix(p)?,
            None => self.client_ipv6_prefix,
        };
        let limits = ClientLimits {
            max_conns_per_client: patch
                .max_conns_per_client
                .unwrap_or(self.max_conns_per_client),
            new_conns_per_client: patch
                .new_conns_per_client
                .unwrap_or(self.new_conns_per_client),
            new_conns_burst: patch.new_conns_burst.unwrap_or(self.new_conns_burst),
            client_ipv6_prefix: prefix,
        };
        limits.check()?;
        Ok(limits)
    }
}

/// A prefix length as the wire carries it (u32), checked and narrowed.
fn check_ipv6_prefix(prefix: u32) -> Result<u8, ClientLimitsError> {
    match u8::try_from(prefix) {
        Ok(p) if (MIN_CLIENT_IPV6_PREFIX..=128).contains(&p) => Ok(p),
        _ => Err(ClientLimitsError::Prefix(prefix)),
    }
}

/// The client limits a listener change sets; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientLimitsPatch {
    /// New `max_conns_per_client`.
    pub max_conns_per_client: Option<u32>,
    /// New `new_conns_per_client`.
    pub new_conns_per_client: Option<u32>,
    /// New `new_conns_burst`.
    pub new_conns_burst: Option<u32>,
    /// New `client_ipv6_prefix` (as the wire carries it; checked by [`ClientLimits::patched`]).
    pub client_ipv6_prefix: Option<u32>,
}

impl ClientLimitsPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == ClientLimitsPatch::default()
    }
}

/// The most entries of one route's `allow_from` or `deny_from`.
pub const MAX_ROUTE_NETS: usize = 256;

/// The longest entry of an access list (an IPv6 network with its prefix fits).
const MAX_NET_LEN: usize = 64;

/// A route's access lists and request limits. Stored and sent whole (the store keeps it as one
/// JSON column, a cluster document as one object): a field added later defaults when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteLimits {
    /// Networks (or addresses) whose clients the route serves; empty: every client not denied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// Networks (or addresses) whose clients the route refuses, whatever `allow_from` says.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_from: Vec<String>,
    /// L7: requests one client may make per second, on average (0: no limit); over it, 429.
    #[serde(skip_serializing_if = "is_zero")]
    pub client_request_rate: u32,
    /// L7: requests one client may make back to back before its rate applies (0: one second's
    /// worth).
    #[serde(skip_serializing_if = "is_zero")]
    pub client_request_burst: u32,
    /// L7: requests the whole route takes per second, every client together (0: no limit).
    #[serde(skip_serializing_if = "is_zero")]
    pub route_request_rate: u32,
    /// L7: requests the route takes back to back before its rate applies (0: one second's
    /// worth).
    #[serde(skip_serializing_if = "is_zero")]
    pub route_request_burst: u32,
    /// L7: requests in flight to the route's backends at once, every client together (0: no
    /// cap); more wait in the queue, or get 503.
    #[serde(skip_serializing_if = "is_zero")]
    pub max_requests: u32,
    /// L7: requests that may wait for one of `max_requests` (0: none wait, 503 at once).
    #[serde(skip_serializing_if = "is_zero")]
    pub max_queue: u32,
    /// L7: how long a request may wait in the queue before its 503, in milliseconds (0: the
    /// default, [`DEFAULT_QUEUE_TIMEOUT_MS`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub queue_timeout_ms: u32,
}

/// The queue timeout when `queue_timeout_ms` is 0.
pub const DEFAULT_QUEUE_TIMEOUT_MS: u32 = 1_000;

/// The longest queue timeout, in milliseconds: a queue is for smoothing bursts, not for
/// holding clients.
pub const MAX_QUEUE_TIMEOUT_MS: u32 = 60_000;

/// The largest `max_requests` and `max_queue`.
pub const MAX_REQUESTS: u32 = 1_000_000;

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The largest `client_request_rate`, per second.
pub const MAX_CLIENT_REQUEST_RATE: u32 = 1_000;

/// The largest `route_request_rate`, per second.
pub const MAX_ROUTE_REQUEST_RATE: u32 = 1_000_000;

/// The largest request burst (client or route).
pub const MAX_REQUEST_BURST: u32 = 1_000_000;

/// What is wrong with a route's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteLimitsError {
    /// An access list entry that is not a network or an address.
    #[error("{list}[{index}]: {} is not an address or network", crate::text::clip(.value))]
    Net {
        /// `allow_from` or `deny_from`.
        list: &'static str,
        /// Its position.
        index: usize,
        /// What was given.
        value: String,
    },
    /// Too many entries.
    #[error("{list} has {count} entries; a route takes at most {MAX_ROUTE_NETS}")]
    TooMany {
        /// `allow_from` or `deny_from`.
        list: &'static str,
        /// How many were given.
        count: usize,
    },
    /// A number out of its range.
    #[error("{field} {value} is over {max}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// What was given.
        value: u32,
        /// The most it may be.
        max: u32,
    },
    /// A burst (or queue) without its rate (or cap).
    #[error("{burst} is set but {rate} is 0, so it does not apply")]
    BurstWithoutRate {
        /// The burst's name.
        burst: &'static str,
        /// The rate's name.
        rate: &'static str,
    },
    /// A per-client burst that takes too long to refill at its rate.
    #[error(
        "client_request_burst {burst} at client_request_rate {rate} takes over \
         {MAX_REFILL_SECONDS} s to refill: raise the rate or lower the burst"
    )]
    Refill {
        /// The burst.
        burst: u32,
        /// The rate.
        rate: u32,
    },
}

/// `value` as a network, in its canonical text (`10.1.2.3/8` is `10.0.0.0/8`, an address
/// alone its single-host network).
pub fn parse_net(value: &str) -> Option<ipnet::IpNet> {
    let value = value.trim();
    if value.len() > MAX_NET_LEN {
        return None;
    }
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .ok()
        .map(|net| net.trunc())
}

impl RouteLimits {
    /// The one check of every source, returning the limits in canonical form (each network
    /// as `parse_net` writes it): what is stored and compared.
    pub fn checked(&self) -> Result<RouteLimits, RouteLimitsError> {
        let nets = |list: &'static str, values: &[String]| {
            if values.len() > MAX_ROUTE_NETS {
                return Err(RouteLimitsError::TooMany {
                    list,
                    count: values.len(),
                });
            }
            values
                .iter()
                .enumerate()
                .map(|(index, value)| {
                    parse_net(value)
                        .map(|n| n.to_string())
                        .ok_or_else(|| RouteLimitsError::Net {
                            list,
                            index,
                            value: value.clone(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let at_most = |field: &'static str, value: u32, max: u32| {
            if value > max {
                return Err(RouteLimitsError::TooLarge { field, value, max });
            }
            Ok(value)
        };
        at_most(
            "client_request_rate",
            self.client_request_rate,
            MAX_CLIENT_REQUEST_RATE,
        )?;
        at_most(
            "client_request_burst",
            self.client_request_burst,
            MAX_REQUEST_BURST,
        )?;
        at_most(
            "route_request_rate",
            self.route_request_rate,
            MAX_ROUTE_REQUEST_RATE,
        )?;
        at_most(
            "route_request_burst",
            self.route_request_burst,
            MAX_REQUEST_BURST,
        )?;
        at_most("max_requests", self.max_requests, MAX_REQUESTS)?;
        at_most("max_queue", self.max_queue, MAX_REQUESTS)?;
        at_most(
            "queue_timeout_ms",
            self.queue_timeout_ms,
            MAX_QUEUE_TIMEOUT_MS,
        )?;
        if self.max_requests == 0 && (self.max_queue > 0 || self.queue_timeout_ms > 0) {
            return Err(RouteLimitsError::BurstWithoutRate {
                burst: if self.max_queue > 0 {
                    "max_queue"
                } else {
                    "queue_timeout"
                },
                rate: "max_requests",
            });
        }
        for (burst, rate, b, r) in [
            (
                "client_request_burst",
                "client_request_rate",
                self.client_request_burst,
                self.client_request_rate,
            ),
            (
                "route_request_burst",
                "route_request_rate",
                self.route_request_burst,
                self.route_request_rate,
            ),
        ] {
            if b > 0 && r == 0 {
                return Err(RouteLimitsError::BurstWithoutRate { burst, rate });
            }
        }
        if self.client_request_rate > 0
            && self.client_request_burst / self.client_request_rate >= MAX_REFILL_SECONDS
        {
            return Err(RouteLimitsError::Refill {
                burst: self.client_request_burst,
                rate: self.client_request_rate,
            });
        }
        Ok(RouteLimits {
            allow_from: nets("allow_from", &self.allow_from)?,
            deny_from: nets("deny_from", &self.deny_from)?,
            ..self.clone()
        })
    }

    /// Whether a request limit (L7 only) is set.
    pub fn has_request_limits(&self) -> bool {
        self.client_request_rate > 0 || self.route_request_rate > 0 || self.max_requests > 0
    }

    /// How long a request may wait in the queue.
    pub fn queue_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(match self.queue_timeout_ms {
            0 => DEFAULT_QUEUE_TIMEOUT_MS,
            ms => ms,
        }))
    }

    /// Whether any access list is set.
    pub fn has_access_lists(&self) -> bool {
        !self.allow_from.is_empty() || !self.deny_from.is_empty()
    }
}

/// The route limits a route update sets; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteLimitsPatch {
    /// A new `allow_from` (empty: every client).
    pub allow_from: Option<Vec<String>>,
    /// A new `deny_from` (empty: none).
    pub deny_from: Option<Vec<String>>,
    /// A new `client_request_rate` (0: off).
    pub client_request_rate: Option<u32>,
    /// A new `client_request_burst`.
    pub client_request_burst: Option<u32>,
    /// A new `route_request_rate` (0: off).
    pub route_request_rate: Option<u32>,
    /// A new `route_request_burst`.
    pub route_request_burst: Option<u32>,
    /// A new `max_requests` (0: no cap).
    pub max_requests: Option<u32>,
    /// A new `max_queue`.
    pub max_queue: Option<u32>,
    /// A new `queue_timeout_ms` (0: the default).
    pub queue_timeout_ms: Option<u32>,
}

impl RouteLimitsPatch {
    /// `current` with the fields this patch sets (unchecked: the route's validation checks).
    pub fn apply(&self, current: RouteLimits) -> RouteLimits {
        RouteLimits {
            allow_from: self.allow_from.clone().unwrap_or(current.allow_from),
            deny_from: self.deny_from.clone().unwrap_or(current.deny_from),
            client_request_rate: self
                .client_request_rate
                .unwrap_or(current.client_request_rate),
            client_request_burst: self
                .client_request_burst
                .unwrap_or(current.client_request_burst),
            route_request_rate: self
                .route_request_rate
                .unwrap_or(current.route_request_rate),
            route_request_burst: self
                .route_request_burst
                .unwrap_or(current.route_request_burst),
            max_requests: self.max_requests.unwrap_or(current.max_requests),
            max_queue: self.max_queue.unwrap_or(current.max_queue),
            queue_timeout_ms: self.queue_timeout_ms.unwrap_or(current.queue_timeout_ms),
        }
    }

    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == RouteLimitsPatch::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lists_are_stored_in_canonical_form_and_bad_entries_named() {
        let limits = RouteLimits {
            allow_from: vec![
                " 10.1.2.3/8".into(),
                "192.0.2.7".into(),
                "2001:db8::1/32".into(),
            ],
            deny_from: vec!["10.9.0.0/16".into()],
            ..RouteLimits::default()
        };
        let checked = limits.checked().unwrap();
        assert_eq!(
            checked.allow_from,
            ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
        );
        let bad = RouteLimits {
            deny_from: vec!["10.0.0.0/8".into(), "office".into()],
            ..RouteLimits::default()
        };
        assert_eq!(
            bad.checked().unwrap_err().to_string(),
            "deny_from[1]: \"office\" is not an address or network"
        );
    }

    #[test]
    fn limits_are_off_by_default_and_group_ipv6_by_64() {
        let limits = ClientLimits::default();
        assert!(!limits.any());
        assert_eq!(limits.client_ipv6_prefix, 64);
        assert_eq!(limits.check(), Ok(()));
    }

    #[test]
    fn out_of_range_values_are_refused_with_their_name() {
        let base = ClientLimits::default();
        let bad = |patch: ClientLimitsPatch| base.patched(&patch).unwrap_err().to_string();
        assert!(
            bad(ClientLimitsPatch {
                max_conns_per_client: Some(4_001),
                ..Default::default()
            })
            .contains("max_conns_per_client 4001")
        );
        assert!(
            bad(ClientLimitsPatch {
                new_conns_burst: Some(5),
                ..Default::default()
            })
            .contains("no rate applies")
        );
        assert!(
            bad(ClientLimitsPatch {
                new_conns_per_client: Some(1),
                new_conns_burst: Some(4000),
                ..Default::default()
            })
            .contains("to refill")
        );
        assert!(
            bad(ClientLimitsPatch {
                client_ipv6_prefix: Some(300),
                ..Default::default()
            })
            .contains("client_ipv6_prefix 300")
        );
        let ok = base
            .patched(&ClientLimitsPatch {
                max_conns_per_client: Some(10),
                new_conns_per_client: Some(5),
                client_ipv6_prefix: Some(56),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(ok.burst(), 5);
        assert_eq!(ok.client_ipv6_prefix, 56);
    }
}
