//! The domain model: routes and firewall rules as the config, the store and the admin API see
//! them.
//!
//! No I/O and no validation beyond parsing enums: a `Route` may hold a hostname that is not a DNS
//! name or a backend that does not parse; the daemon's `routes::validate_route` is the one place
//! that decides whether a route is acceptable.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a route handles a connection once its SNI matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// TLS passthrough: the ClientHello and everything after it is relayed to the backend
    /// byte for byte. The proxy never holds the key.
    #[default]
    L4,
    /// TLS termination with the route's certificate, then HTTP reverse proxying.
    L7,
}

impl Mode {
    /// The name used in the TOML config, the database and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::L4 => "l4",
            Mode::L7 => "l7",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode string that is none of `""`, `"l4"`, `"l7"`; holds it quoted and clipped for
/// messages ([`crate::text::clip`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mode {0}: expected \"l4\" or \"l7\" (empty means \"l4\")")]
pub struct ParseModeError(pub String);

impl FromStr for Mode {
    type Err = ParseModeError;

    /// Parses the config spelling. The empty string is `l4`, so that configs and API calls
    /// written before modes existed keep their meaning. Case-sensitive, like every other key.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "l4" => Ok(Mode::L4),
            "l7" => Ok(Mode::L7),
            other => Err(ParseModeError(crate::text::clip(other))),
        }
    }
}

/// The HTTP version an L7 route speaks to its backend. Orthogonal to `backend_tls`, which
/// says whether that happens over TLS: `h2` without TLS is cleartext HTTP/2 with prior
/// knowledge (h2c), with TLS HTTP/2 negotiated by ALPN `h2`; `http1` is HTTP/1.1 either way
/// (ALPN `http/1.1` over TLS); `auto` offers ALPN `h2,http/1.1` and speaks what the backend
/// picks, so it needs `backend_tls`. Meaningless on L4 routes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum BackendProtocol {
    /// HTTP/2: h2c with prior knowledge, or h2 over TLS. The default, as before the key
    /// existed.
    #[default]
    #[serde(rename = "h2")]
    H2,
    /// HTTP/1.1, keep-alive, one request at a time per backend connection.
    #[serde(rename = "http1")]
    Http1,
    /// TLS only: ALPN `h2,http/1.1`, then whichever the backend chose.
    #[serde(rename = "auto")]
    Auto,
}

impl BackendProtocol {
    /// Every value, in declaration order.
    pub const ALL: &'static [BackendProtocol] = &[
        BackendProtocol::H2,
        BackendProtocol::Http1,
        BackendProtocol::Auto,
    ];

    /// The name used in the TOML config, the database and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendProtocol::H2 => "h2",
            BackendProtocol::Http1 => "http1",
            BackendProtocol::Auto => "auto",
        }
    }
}

impl fmt::Display for BackendProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend protocol string that is none of `""`, `"h2"`, `"http1"`, `"auto"`; holds it
/// quoted and clipped for messages ([`crate::text::clip`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid backend_protocol {0}: expected \"h2\", \"http1\" or \"auto\" (empty means \"h2\")"
)]
pub struct ParseBackendProtocolError(pub String);

impl FromStr for BackendProtocol {
    type Err = ParseBackendProtocolError;

    /// Parses the config spelling; the empty string is `h2` (API calls from before the field).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "h2" => Ok(BackendProtocol::H2),
            "http1" => Ok(BackendProtocol::Http1),
            "auto" => Ok(BackendProtocol::Auto),
            other => Err(ParseBackendProtocolError(crate::text::clip(other))),
        }
    }
}

/// One entry of a listener's route table, with every field of the plan's phase 1.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Route {
    /// The SNI hostname this route matches: an exact name or `*.domain` (one label).
    pub hostname: String,
    /// Where connections go: `host:port`, the host an IP address or a DNS name.
    pub backend: String,
    /// L4 passthrough or L7 termination.
    pub mode: Mode,
    /// PEM certificate chain presented to clients on an L7 route; empty on L4.
    pub tls_cert: String,
    /// PEM private key matching `tls_cert`; empty on L4.
    pub tls_key: String,
    /// L7 only: speak HTTP/2 over TLS to the backend instead of cleartext h2c.
    pub backend_tls: bool,
    /// Write a PROXY protocol v2 header carrying the client address to the backend.
    pub send_proxy_protocol: bool,
    /// L7 only: the HTTP version spoken to the backend.
    #[serde(default)]
    pub backend_protocol: BackendProtocol,
}

/// The fields of a route to change; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePatch {
    /// Rename the route.
    pub hostname: Option<String>,
    /// New backend.
    pub backend: Option<String>,
    /// New mode.
    pub mode: Option<Mode>,
    /// New certificate path.
    pub tls_cert: Option<String>,
    /// New key path.
    pub tls_key: Option<String>,
    /// New backend_tls flag.
    pub backend_tls: Option<bool>,
    /// New send_proxy_protocol flag.
    pub send_proxy_protocol: Option<bool>,
    /// New backend protocol.
    pub backend_protocol: Option<BackendProtocol>,
}

/// What a firewall rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirewallRuleKind {
    /// A single address, IPv4 or IPv6.
    Ip,
    /// A network in CIDR notation.
    Cidr,
}

impl FirewallRuleKind {
    /// The name used in the database and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            FirewallRuleKind::Ip => "ip",
            FirewallRuleKind::Cidr => "cidr",
        }
    }
}

impl fmt::Display for FirewallRuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A firewall rule kind that is neither `"ip"` nor `"cidr"`; holds it quoted and clipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid firewall rule kind {0}: expected \"ip\" or \"cidr\"")]
pub struct ParseKindError(pub String);

impl FromStr for FirewallRuleKind {
    type Err = ParseKindError;

    /// Parses the spelling used by the database and the admin API.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ip" => Ok(FirewallRuleKind::Ip),
            "cidr" => Ok(FirewallRuleKind::Cidr),
            other => Err(ParseKindError(crate::text::clip(other))),
        }
    }
}

/// A blocked address or network. The value is kept as text so that the store can hold exactly
/// what the operator wrote; the daemon parses it when it builds the firewall.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FirewallRule {
    /// Address or network.
    pub kind: FirewallRuleKind,
    /// `192.0.2.10`, `2001:db8::1`, `198.51.100.0/24`, ...
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_mode_means_l4() {
        assert_eq!("".parse::<Mode>(), Ok(Mode::L4));
        assert_eq!("l4".parse::<Mode>(), Ok(Mode::L4));
        assert_eq!("l7".parse::<Mode>(), Ok(Mode::L7));
    }

    #[test]
    fn firewall_rule_kinds_parse_their_own_spelling_only() {
        for kind in [FirewallRuleKind::Ip, FirewallRuleKind::Cidr] {
            assert_eq!(kind.as_str().parse::<FirewallRuleKind>(), Ok(kind));
        }
        assert!("IP".parse::<FirewallRuleKind>().is_err());
    }

    #[test]
    fn unknown_mode_is_rejected_with_its_spelling() {
        let err = "L7".parse::<Mode>().unwrap_err();
        assert!(err.to_string().contains("\"L7\""), "{err}");
        assert!("tcp".parse::<Mode>().is_err());
    }
}
