//! How connections end, and what changed: the names the daemon's counters, access log, events
//! and admin API use, and that the console and scripts match on.
//!
//! No I/O. Each enum has one spelling per variant (`as_str`, `FromStr`, serde), so no two
//! crates keep hand-synced lists of strings: a reason added here is counted, logged, sent and
//! shown everywhere at once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name no variant has: holds it clipped for messages ([`crate::text::clip`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name}")]
pub struct UnknownName {
    /// What kind of name was expected.
    pub what: &'static str,
    /// What was given, quoted and clipped.
    pub name: String,
}

/// Defines a fieldless enum with its one spelling per variant.
macro_rules! named {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The one spelling of this variant.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// Position in [`Self::ALL`]: an index for per-variant counters.
            pub fn index(self) -> usize {
                self as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownName {
                        what: $what,
                        name: crate::text::clip(other),
                    }),
                }
            }
        }
    };
}

named! {
    /// Why the pipeline reset a connection (TCP RST) before or instead of serving it.
    pub enum ResetReason ("reset reason") {
        /// The client address is blocked by the firewall.
        Blocked = "blocked",
        /// A peer outside `proxy_protocol_from` on a PROXY listener.
        UntrustedProxy = "untrusted_proxy",
        /// No PROXY header within its timeout.
        ProxyHeaderTimeout = "proxy_header_timeout",
        /// A malformed PROXY header.
        BadProxyHeader = "bad_proxy_header",
        /// No complete ClientHello within `client_hello_timeout`.
        HelloTimeout = "hello_timeout",
        /// The client closed before its ClientHello was complete.
        ClientClosed = "client_closed",
        /// Reading the client failed (reset, ...).
        ClientError = "client_error",
        /// The first bytes are not a TLS handshake.
        NotTls = "not_tls",
        /// The ClientHello exceeds 64 KiB.
        HelloTooLarge = "hello_too_large",
        /// A malformed ClientHello.
        BadHello = "bad_hello",
        /// A ClientHello without SNI.
        NoSni = "no_sni",
        /// No route for the SNI.
        UnknownHost = "unknown_host",
        /// The backend did not accept within `connect_timeout` (L4).
        BackendTimeout = "backend_timeout",
        /// The backend refused or failed (L4).
        BackendUnreachable = "backend_unreachable",
        /// Every backend of the route is down, ejected, draining or disabled (L4).
        NoBackend = "no_backend",
        /// The client (its address, or its IPv6 prefix) has `max_conns_per_client` open.
        ClientConnLimit = "client_conn_limit",
        /// The client opens connections faster than `new_conns_per_client` (burst spent).
        ClientRateLimit = "client_rate_limit",
        /// The route's `allow_from` / `deny_from` refuses the client (L4 routes).
        RouteDenied = "route_denied",
    }
}

named! {
    /// Why a connection was refused by policy (also counted as a reset).
    pub enum BlockedReason ("blocked reason") {
        /// The firewall blocks the client address.
        Firewall = "firewall",
        /// The peer may not send PROXY headers to this listener.
        UntrustedProxy = "untrusted_proxy",
        /// The client has `max_conns_per_client` open on this listener.
        ClientConnLimit = "client_conn_limit",
        /// The client opens connections faster than `new_conns_per_client`.
        ClientRateLimit = "client_rate_limit",
        /// The route's `allow_from` / `deny_from` refuses the client (L4 routes).
        RouteDenied = "route_denied",
    }
}

named! {
    /// What a route or firewall change did.
    pub enum ChangeAction ("change action") {
        /// Created.
        Added = "added",
        /// Changed in place (a route may be renamed).
        Updated = "updated",
        /// Deleted.
        Removed = "removed",
    }
}

named! {
    /// How a connection that was not reset ended.
    pub enum CloseReason ("close reason") {
        /// Both sides finished (L4), or the client closed / HTTP ended it (L7).
        Closed = "closed",
        /// No byte either way for `idle_timeout`.
        IdleTimeout = "idle_timeout",
        /// The shutdown grace period ran out and the daemon closed it.
        Shutdown = "shutdown",
        /// L7: drained at shutdown with GOAWAY or `Connection: close`.
        Drained = "drained",
        /// L7: no request in flight for `keepalive_timeout`; closed like a drain.
        KeepaliveTimeout = "keepalive_timeout",
        /// L7: a new connection sent no complete first request head (HTTP/1.1), or no
        /// preface and first HEADERS (HTTP/2), within `request_header_timeout`.
        RequestHeaderTimeout = "request_header_timeout",
        /// L7: the route the connection was served by was removed, switched to L4, or its
        /// name now leads to another route: drained like a shutdown (GOAWAY, or
        /// `Connection: close`), requests meanwhile answered 421.
        RouteGone = "route_gone",
        /// L4: a read or write failed mid-relay.
        RelayError = "relay_error",
        /// L7: the HTTP connection failed.
        HttpError = "http_error",
        /// L7: the client's TLS handshake failed (closed, not reset: it may read the alert).
        TlsHandshakeFailed = "tls_handshake_failed",
        /// L7: the client did not finish the TLS handshake in time.
        TlsHandshakeTimeout = "tls_handshake_timeout",
        /// An operator closed it (`mcproxyctl connections close`, the console): cut at once,
        /// like at the end of the shutdown grace period.
        AdminClosed = "admin_closed",
        /// An ACME CA's tls-alpn-01 validation: shown the pending challenge's certificate
        /// (RFC 8737), then closed; never routed.
        AcmeChallenge = "acme_challenge",
    }
}

named! {
    /// Why an L7 TLS handshake failed, as `/metrics` counts it: what an operator can act on
    /// (clients that distrust the certificate, old clients, scanners).
    pub enum TlsFailure ("TLS handshake failure") {
        /// The client's alert says it does not accept the certificate (unknown CA, bad or
        /// expired certificate, a signature that does not verify): a certificate problem.
        CertificateRejected = "certificate_rejected",
        /// The client sent another fatal alert.
        AlertReceived = "alert_received",
        /// No TLS version, cipher suite or key exchange group in common (old clients).
        Incompatible = "incompatible",
        /// No application protocol in common (neither `h2` nor `http/1.1` offered).
        NoAlpn = "no_alpn",
        /// Malformed or out-of-order handshake messages (scanners, broken clients).
        ProtocolError = "protocol_error",
        /// The client closed or reset the connection during the handshake.
        ClientClosed = "client_closed",
        /// Not finished within `client_hello_timeout`.
        Timeout = "timeout",
        /// Anything else.
        Other = "other",
    }
}

/// How a connection ended: reset by the pipeline, or closed after being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outcome {
    /// Reset before or instead of being served.
    Reset(ResetReason),
    /// Served, then closed.
    Closed(CloseReason),
}

impl Outcome {
    /// The one spelling (`closed`, `unknown_host`, ...): reset and close reasons never share
    /// a name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Reset(r) => r.as_str(),
            Outcome::Closed(c) => c.as_str(),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse()
            .map(Outcome::Closed)
            .or_else(|_| s.parse().map(Outcome::Reset))
            .map_err(|_| UnknownName {
                what: "outcome",
                name: crate::text::clip(s),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_and_reset_and_close_names_never_clash() {
        let mut seen = std::collections::HashSet::new();
        for r in ResetReason::ALL {
            assert_eq!(r.as_str().parse::<ResetReason>(), Ok(*r));
            assert_eq!(r.as_str().parse::<Outcome>(), Ok(Outcome::Reset(*r)));
            assert!(seen.insert(r.as_str()), "{r}");
        }
        for c in CloseReason::ALL {
            assert_eq!(c.as_str().parse::<Outcome>(), Ok(Outcome::Closed(*c)));
            assert!(seen.insert(c.as_str()), "{c} is also a reset reason");
        }
        for (i, r) in ResetReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn unknown_names_are_refused_and_clipped() {
        let err = "x".repeat(10_000).parse::<ResetReason>().unwrap_err();
        assert!(err.to_string().len() < 120, "{err}");
        assert!(
            err.to_string().starts_with("unknown reset reason \"xxx"),
            "{err}"
        );
        assert!(
            "Closed".parse::<CloseReason>().is_err(),
            "one spelling only"
        );
    }
}
