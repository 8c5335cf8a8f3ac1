//! Route tables: what a listener does with an SNI hostname.
//!
//! No I/O. A `RouteTable` is an immutable snapshot built once and swapped whole (see
//! `state::ListenerState`), so a lookup never takes a lock and a connection keeps the
//! `RouteInfo` it started with even if the table is replaced under it.
//!
//! Matching: the hostname is already normalised (lowercase, no trailing dot, see
//! [`normalize_dns_name`]). An exact entry wins; otherwise `*.rest` matches a name with exactly
//! one more label in front of `rest` (`*.example.com` matches `a.example.com`, not
//! `example.com` and not `a.b.example.com`), the rule browsers apply to wildcard certificates.

use std::collections::HashMap;
use std::sync::Arc;

use mc_proxy_shared::{Mode, Route};

use rustls::sign::CertifiedKey;

use crate::config::ValidRoute;
use crate::stats::RouteStats;

/// Longest DNS name, without the trailing dot (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Lowercases `name`, strips one trailing dot and checks that what remains is a DNS name:
/// ASCII labels of 1 to 63 letters, digits, `-` or `_` (not starting or ending with `-`),
/// at most 253 bytes in all, the last label not all digits. Returns `None` for anything else
/// (spaces, NUL, non-ASCII, empty labels, a `*`, an IPv4 literal such as `1.2.3.4` or `127.1`).
///
/// `_` is allowed because real service names carry it (`_acme-challenge`, SRV-style hosts)
/// and matching on it is harmless; everything a resolver could not look up is not. No real
/// top-level domain is numeric, so an all-digit last label can only be an address.
pub fn normalize_dns_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return None;
    }
    let valid = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let numeric_tld = name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    (valid && !numeric_tld).then(|| name.to_ascii_lowercase())
}

/// Normalises a route hostname: an exact DNS name or `*.` followed by one (see
/// [`normalize_dns_name`]). Returns `None` if it is neither.
pub fn normalize_route_hostname(hostname: &str) -> Option<String> {
    match hostname.strip_prefix("*.") {
        Some(rest) => normalize_dns_name(rest).map(|rest| format!("*.{rest}")),
        None => normalize_dns_name(hostname),
    }
}

/// What a matched route tells the connection pipeline: every field of the route, shared by
/// all connections routed by it, and its live counters.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// The route's hostname as configured (`app.test` or `*.example.com`), normalised.
    pub hostname: String,
    /// `host:port` to dial.
    pub backend: String,
    /// L4 passthrough or L7 termination.
    pub mode: Mode,
    /// L7 certificate chain path.
    pub tls_cert: String,
    /// L7 private key path.
    pub tls_key: String,
    /// L7: HTTP/2 over TLS to the backend.
    pub backend_tls: bool,
    /// Write a PROXY v2 header to the backend before anything else.
    pub send_proxy_protocol: bool,
    /// L7: the certificate/key pair presented to clients, loaded when the route was.
    pub certified_key: Option<Arc<CertifiedKey>>,
    /// L7: the TLS server configuration built from `certified_key` (ALPN `h2`, `http/1.1`),
    /// once per route load rather than per connection.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Counters, shared with every earlier and later version of this route.
    pub stats: Arc<RouteStats>,
}

impl RouteInfo {
    /// A validated route with the given counters.
    pub fn new(valid: ValidRoute, stats: Arc<RouteStats>) -> Self {
        let r = valid.route;
        RouteInfo {
            hostname: r.hostname,
            backend: r.backend,
            mode: r.mode,
            tls_cert: r.tls_cert,
            tls_key: r.tls_key,
            backend_tls: r.backend_tls,
            send_proxy_protocol: r.send_proxy_protocol,
            tls_server: valid.certified_key.clone().map(crate::l7::server_config),
            certified_key: valid.certified_key,
            stats,
        }
    }

    /// The route as a `ValidRoute` (with its loaded key), to rebuild a table from.
    pub fn to_valid(&self) -> ValidRoute {
        ValidRoute {
            route: self.route(),
            certified_key: self.certified_key.clone(),
            warnings: Vec::new(),
        }
    }

    /// The route's fields without the counters.
    pub fn route(&self) -> Route {
        Route {
            hostname: self.hostname.clone(),
            backend: self.backend.clone(),
            mode: self.mode,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            backend_tls: self.backend_tls,
            send_proxy_protocol: self.send_proxy_protocol,
        }
    }
}

/// An immutable hostname → route map for one listener.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Arc<RouteInfo>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<RouteInfo>>,
}

impl RouteTable {
    /// Builds a table from L4 routes taken as valid, each with fresh counters (tests).
    pub fn new(routes: impl IntoIterator<Item = Route>) -> Self {
        RouteTable::with_stats(routes.into_iter().map(ValidRoute::unchecked), |_| {
            Arc::default()
        })
    }

    /// Builds a table from validated routes (hostnames normalised, unique per listener),
    /// taking each route's counters from `stats_for(hostname)`. A later duplicate replaces an
    /// earlier one; validation keeps that from happening.
    pub fn with_stats(
        routes: impl IntoIterator<Item = ValidRoute>,
        mut stats_for: impl FnMut(&str) -> Arc<RouteStats>,
    ) -> Self {
        let mut table = RouteTable::default();
        for route in routes {
            let stats = stats_for(&route.route.hostname);
            let info = Arc::new(RouteInfo::new(route, stats));
            match info.hostname.strip_prefix("*.") {
                Some(rest) => table.wildcard.insert(rest.to_owned(), info),
                None => table.exact.insert(info.hostname.clone(), info),
            };
        }
        table
    }

    /// Finds the route for a normalised SNI hostname: exact first, then a one-label wildcard.
    pub fn lookup(&self, sni: &str) -> Option<Arc<RouteInfo>> {
        if let Some(route) = self.exact.get(sni) {
            return Some(Arc::clone(route));
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent).map(Arc::clone)
    }

    /// Every route, exact names first, each group sorted by hostname.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<RouteInfo>> {
        let mut exact: Vec<_> = self.exact.values().collect();
        let mut wild: Vec<_> = self.wildcard.values().collect();
        exact.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        wild.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        exact.into_iter().chain(wild)
    }

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// True when the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(hostname: &str, backend: &str) -> Route {
        Route {
            hostname: hostname.into(),
            backend: backend.into(),
            ..Route::default()
        }
    }

    #[test]
    fn exact_match_wins_over_wildcard() {
        let table = RouteTable::new([
            route("*.example.com", "127.0.0.1:1"),
            route("api.example.com", "127.0.0.1:2"),
        ]);
        assert_eq!(
            table.lookup("api.example.com").unwrap().backend,
            "127.0.0.1:2"
        );
        assert_eq!(
            table.lookup("www.example.com").unwrap().backend,
            "127.0.0.1:1"
        );
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let table = RouteTable::new([route("*.example.com", "127.0.0.1:1")]);
        assert!(table.lookup("example.com").is_none());
        assert!(table.lookup("a.b.example.com").is_none());
        assert!(table.lookup("a.example.com").is_some());
        assert!(table.lookup("a.example.org").is_none());
    }

    #[test]
    fn dns_names_are_lowercased_and_lose_one_trailing_dot() {
        assert_eq!(normalize_dns_name("App.Test.").as_deref(), Some("app.test"));
        assert_eq!(normalize_dns_name("app.test..").as_deref(), None);
        assert_eq!(
            normalize_dns_name("_acme.x-y.test").as_deref(),
            Some("_acme.x-y.test")
        );
    }

    #[test]
    fn non_dns_bytes_are_rejected() {
        for bad in [
            "",
            ".",
            "a..b",
            "a b",
            "a\0b",
            "é.test",
            "-a.test",
            "a-.test",
            "*.test",
            "a/b",
            "1.2.3.4",
            "127.1",
            &"a".repeat(64),
            &format!("{}.test", "a.".repeat(125)),
        ] {
            assert_eq!(normalize_dns_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn route_hostnames_allow_one_leading_wildcard_only() {
        assert_eq!(
            normalize_route_hostname("*.Example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(normalize_route_hostname("a.*.example.com"), None);
        assert_eq!(normalize_route_hostname("*"), None);
        assert_eq!(normalize_route_hostname("**.example.com"), None);
    }
}
