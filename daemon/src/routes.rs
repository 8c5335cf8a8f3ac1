//! Route tables: what a listener does with an SNI hostname.
//!
//! No I/O. A `RouteTable` is an immutable snapshot built once and swapped whole (see
//! `state::ListenerState`), so a lookup never takes a lock and a connection keeps the
//! `RouteInfo` it started with even if the table is replaced under it.
//!
//! Matching: the hostname is already normalised (lowercase, no trailing dot, see
//! [`mc_proxy_wire::dns::normalize_dns_name`]; route hostnames go through
//! [`mc_proxy_wire::dns::normalize_route_hostname`] in `config::validate_route`). An exact entry wins; otherwise `*.rest` matches a name with exactly
//! one more label in front of `rest` (`*.example.com` matches `a.example.com`, not
//! `example.com` and not `a.b.example.com`), the rule browsers apply to wildcard certificates.

use std::collections::HashMap;
use std::sync::Arc;

use mc_proxy_shared::{Mode, Route};

use rustls::sign::CertifiedKey;

use crate::config::ValidRoute;
use crate::stats::RouteStats;

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
}
