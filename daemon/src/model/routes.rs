//! Routes: the one route validation ([`validate_route`], shared by the config loader, the
//! control plane and reload) and the route tables a listener looks SNI hostnames up in.
//!
//! I/O: validation reads an L7 route's certificate and key files; the tables do none. A
//! `RouteTable` is an immutable snapshot swapped whole (see `state::ListenerState`), so a
//! lookup never takes a lock; an L4 connection keeps the `RouteInfo` it started with even if
//! the table is replaced under it, an L7 connection looks its route up again per request.
//!
//! A table's maps are persistent (`rpds` hash tries): [`RouteTable::patched`] makes the next
//! snapshot with a few routes changed in O(log n), sharing every other route (the same
//! `Arc<RouteInfo>`) and most of the trie with the table before it. A change's cost is then
//! that of the routes it changes, not of the table (issue 35: a fleet streams changes to
//! tables of 10 000 routes); invariant: a patched table and one built from the same routes
//! answer every lookup alike (tested). A third trie holds the routes with a health check,
//! which the health walk probes every tick without going through the others.
//!
//! Matching: the SNI is already normalised by the ClientHello parser and route hostnames by
//! [`validate_route`], both with `mc_proxy_wire::dns` (lowercase, no trailing dot). An exact
//! entry wins; otherwise `*.rest` matches a name with exactly one more label in front of `rest`
//! (`*.example.com` matches `a.example.com`, not `example.com` and not `a.b.example.com`), the
//! rule browsers apply to wildcard certificates.

use std::path::Path;
use std::sync::Arc;

use mc_proxy_shared::route_check::{self, RouteFieldError};
use mc_proxy_shared::{BackendProtocol, MemberStats, Mode, ParseModeError, Route};
use rustls::sign::CertifiedKey;

use crate::model::backends::BackendSet;
pub use crate::model::certs::CATCH_ALL;
use crate::model::certs::{CertError, leaf_warnings, load_certified_key, server_config};
use crate::model::stats::RouteStats;

/// Why a route is not acceptable. Shared by the config loader and the admin API.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A field the shared checks refuse (`mc_proxy_shared::route_check`: hostname, backends,
    /// health check, what an l7 route must name).
    #[error(transparent)]
    Fields(#[from] RouteFieldError),
    /// The mode is not "", "l4" or "l7".
    #[error(transparent)]
    Mode(#[from] ParseModeError),
    /// The cert/key pair does not load or does not match.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// An `acme` route whose certificate has not been issued yet.
    #[error("waiting for its ACME certificate (ordered; served once issued)")]
    AcmePending,
}

/// An ACME route's issued certificate, as the database holds it (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedPem {
    /// The chain, leaf first.
    pub chain: String,
    /// The leaf's private key.
    pub key: String,
}

/// A route that passed [`validate_route`]: normalised, with the warnings to log.
///
/// Invariant: an L7 route carries its loaded certificate (only [`validate_route`] makes one,
/// and [`ValidRoute::unchecked`] takes L4 routes only), so a [`RouteInfo`] built from it always
/// has its TLS configuration.
#[derive(Debug, Clone)]
pub struct ValidRoute {
    /// The route with its hostname normalised (lowercase, no trailing dot).
    pub route: Route,
    /// L7: the loaded and checked certificate/key pair, so connections never touch the files.
    key: Option<Arc<CertifiedKey>>,
    /// Allowed but suspicious settings.
    pub warnings: Vec<String>,
}

impl ValidRoute {
    /// An L4 route taken as valid without checks (tests).
    ///
    /// # Panics
    /// On an L7 route: those need their certificate loaded by [`validate_route`].
    pub fn unchecked(route: Route) -> Self {
        assert_eq!(route.mode, Mode::L4, "only L4 routes can skip validation");
        ValidRoute {
            route,
            key: None,
            warnings: Vec::new(),
        }
    }

    /// L7: the loaded certificate/key pair.
    pub fn key(&self) -> Option<&Arc<CertifiedKey>> {
        self.key.as_ref()
    }
}

/// A route hostname as routes are stored and looked up by name (`App.Test.` is `app.test`,
/// ` * ` is `*`), or `None` if it cannot be a route's name: the one normalisation for names
/// that requests and settings refer to routes by (`mc_proxy_shared::route_check`).
pub fn route_name(hostname: &str) -> Option<String> {
    route_check::route_name(hostname)
}

/// Checks one route on its own (not against its neighbours): hostname, backend, mode and, for
/// L7, that `backend_protocol` auto comes with `backend_tls` and that the certificate and key
/// load with rustls and belong together. Returns the normalised route and any warnings.
///
/// On L4, `backend_tls` and `backend_protocol` mean nothing (the bytes pass through): they are
/// kept as given, not refused; a `backend_protocol` other than the default is warned about,
/// like a certificate.
pub fn validate_route(route: &Route) -> Result<ValidRoute, RouteError> {
    validate_route_with(route, None)
}

/// [`validate_route`], with an `acme` route's issued certificate (from the database; `None`:
/// none yet, and the route waits, [`RouteError::AcmePending`]).
pub fn validate_route_with(
    route: &Route,
    issued: Option<&IssuedPem>,
) -> Result<ValidRoute, RouteError> {
    if let Some(first) = shape_problems(route).into_iter().next() {
        return Err(first);
    }
    let hostname = route_name(&route.hostname).expect("shape_problems checks the hostname");
    let mut warnings = Vec::new();
    let mut key = None;
    match route.mode {
        Mode::L7 => {
            let loaded = if route.acme {
                let issued = issued.ok_or(RouteError::AcmePending)?;
                let label = Path::new("acme:").join(&hostname);
                crate::model::certs::certified_key_from_pem(
                    issued.chain.as_bytes(),
                    issued.key.as_bytes(),
                    &label,
                    &label,
                )?
            } else {
                load_certified_key(Path::new(&route.tls_cert), Path::new(&route.tls_key))?
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            warnings.extend(leaf_warnings(&loaded, &hostname, now));
            key = Some(loaded);
        }
        Mode::L4 => {
            if !route.tls_cert.is_empty() || !route.tls_key.is_empty() {
                warnings.push(
                    "tls_cert/tls_key are set on an l4 route and are not used: \
                     l4 passes TLS through to the backend"
                        .to_owned(),
                );
            }
            if route.backend_protocol != BackendProtocol::default() {
                warnings.push(format!(
                    "backend_protocol {} is set on an l4 route and is not used: \
                     l4 passes TLS through to the backend",
                    route.backend_protocol
                ));
            }
            if route.access_log {
                warnings.push(
                    "access_log is set on an l4 route and is not used: an l4 route has no \
                     requests to log (its connections get the connection line)"
                        .to_owned(),
                );
            }
            if route.limits.has_request_limits() {
                warnings.push(
                    "request rates are set on an l4 route and are not used: an l4 route has no \
                     requests (limit its clients with the listener's new_conns_per_client)"
                        .to_owned(),
                );
            }
            // backend_tls means nothing for passthrough; the plan says ignore, not error.
        }
    }
    let limits = route
        .limits
        .checked()
        .expect("shape_problems checks the limits");
    Ok(ValidRoute {
        route: Route {
            hostname,
            limits: Box::new(limits),
            ..route.clone()
        },
        key,
        warnings,
    })
}

/// Every problem of one route, where [`validate_route`] stops at the first: what
/// `mc-proxy check` reports, so that one run shows all there is to fix. The certificate and
/// key are loaded only when the route names both.
pub fn route_problems(route: &Route) -> Vec<RouteError> {
    let mut out = shape_problems(route);
    if route.mode == Mode::L7
        && !route.tls_cert.is_empty()
        && !route.tls_key.is_empty()
        && let Err(e) = load_certified_key(Path::new(&route.tls_cert), Path::new(&route.tls_key))
    {
        out.push(e.into());
    }
    out
}

/// The one list of checks on a route's fields, every file left aside, in the order
/// [`validate_route`] reports the first of them: `mc_proxy_shared::route_check`'s, which
/// `mcproxyctl apply` runs too.
fn shape_problems(route: &Route) -> Vec<RouteError> {
    route_check::route_field_problems(route)
        .into_iter()
        .map(RouteError::from)
        .collect()
}

/// What a matched route tells the connection pipeline: the route as stored, what loading it
/// added (the L7 certificate and TLS configuration), and its live counters. Shared by every
/// connection routed by it.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// Every field of the route, hostname normalised (`app.test` or `*.example.com`).
    pub route: Route,
    /// L7: the certificate presented to clients and the TLS configuration built from it.
    /// `Some` exactly when the route is L7 (see [`ValidRoute`]).
    pub tls: Option<L7Tls>,
    /// Counters, shared with every earlier and later version of this route.
    pub stats: Arc<RouteStats>,
    /// The members with their health, and the balancing.
    pub backends: BackendSet,
    /// `allow_from` and `deny_from`, parsed.
    pub access: RouteAccess,
}

/// A route's access lists, parsed once per route version (see [`RouteAccess::admits`]).
#[derive(Debug, Clone, Default)]
pub struct RouteAccess {
    allow: Vec<ipnet::IpNet>,
    deny: Vec<ipnet::IpNet>,
}

impl RouteAccess {
    /// The lists of `limits` (checked by validation; an entry that does not parse is skipped).
    pub fn new(limits: &mc_proxy_shared::limits::RouteLimits) -> Self {
        let nets = |list: &[String]| {
            list.iter()
                .filter_map(|n| mc_proxy_shared::limits::parse_net(n))
                .collect()
        };
        RouteAccess {
            allow: nets(&limits.allow_from),
            deny: nets(&limits.deny_from),
        }
    }

    /// Whether the route serves `client`: not in `deny_from`, and in `allow_from` when that
    /// is set. Deny wins, so that `allow_from = ["10.0.0.0/8"]` with
    /// `deny_from = ["10.6.6.0/24"]` reads as it would in nginx. IPv4-mapped IPv6 clients are
    /// compared as IPv4.
    pub fn admits(&self, client: std::net::IpAddr) -> bool {
        if self.allow.is_empty() && self.deny.is_empty() {
            return true;
        }
        let client = client.to_canonical();
        !self.deny.iter().any(|n| n.contains(&client))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&client)))
    }
}

/// An L7 route's TLS termination, built once per route load rather than per connection.
#[derive(Debug, Clone)]
pub struct L7Tls {
    /// The certificate chain and key.
    pub key: Arc<CertifiedKey>,
    /// ALPN `h2`, `http/1.1`, this certificate.
    pub server: Arc<rustls::ServerConfig>,
    /// Its validity and issuer, read once (`None`: the validity did not parse).
    pub summary: Option<crate::model::certs::CertSummary>,
}

impl RouteInfo {
    /// A validated route with the given counters.
    pub fn new(valid: ValidRoute, stats: Arc<RouteStats>) -> Self {
        let tls = valid.key.map(|key| L7Tls {
            server: server_config(Arc::clone(&key)),
            summary: crate::model::certs::summary(&key),
            key,
        });
        stats.retain_members(&valid.route.backends);
        let backends = BackendSet::new(&valid.route.backends, valid.route.balance, |address| {
            stats.member(address)
        });
        RouteInfo {
            access: RouteAccess::new(&valid.route.limits),
            route: valid.route,
            tls,
            stats,
            backends,
        }
    }

    /// The route as a `ValidRoute` (with its loaded key), to rebuild a table from.
    pub fn to_valid(&self) -> ValidRoute {
        ValidRoute {
            route: self.route.clone(),
            key: self.tls.as_ref().map(|t| Arc::clone(&t.key)),
            warnings: Vec::new(),
        }
    }

    /// The route's hostname.
    pub fn hostname(&self) -> &str {
        &self.route.hostname
    }

    /// Every member's live figures, in configured order.
    pub fn members(&self) -> Vec<MemberStats> {
        self.backends.stats(self.route.health_check.as_ref())
    }

    /// Counts a connection (L4) or request (L7) no member could take, and returns each
    /// member's state (`a:1 down, b:2 draining`) for its error.
    pub fn count_no_backend(&self) -> String {
        self.stats
            .no_backend
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.backends.states()
    }
}

/// A persistent hostname → route map: cloning it is O(1), and a clone with one entry
/// changed copies only the path to that entry.
type RouteMap = rpds::HashTrieMapSync<String, Arc<RouteInfo>>;

/// An immutable hostname → route map for one listener.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    exact: RouteMap,
    /// Keyed by the part after `*.`.
    wildcard: RouteMap,
    /// The route named `*`: any SNI nothing else matches.
    catch_all: Option<Arc<RouteInfo>>,
    /// The routes with a health check, by hostname: what the health walk probes every tick
    /// (the others it looks at only when something may have changed, `connectors::health`).
    checked: RouteMap,
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
            table.put(Arc::new(RouteInfo::new(route, stats)));
        }
        table
    }

    /// This table with the routes stored under the names in `remove` taken out, then the
    /// routes of `put` in (each replacing any route of its name). Every other route is
    /// shared with `self` as it is (same `Arc`, same counters and balancing state), and so is
    /// most of the maps: the cost is the changed routes', whatever the table's size.
    pub fn patched<'a>(
        &self,
        remove: impl IntoIterator<Item = &'a str>,
        put: impl IntoIterator<Item = Arc<RouteInfo>>,
    ) -> RouteTable {
        let mut table = self.clone();
        for hostname in remove {
            table.take(hostname);
        }
        for info in put {
            table.put(info);
        }
        table
    }

    /// Inserts (or replaces) a route under its hostname.
    fn put(&mut self, info: Arc<RouteInfo>) {
        if info.route.health_check.is_some() {
            let name = info.route.hostname.clone();
            self.checked.insert_mut(name, Arc::clone(&info));
        } else {
            self.checked.remove_mut(&info.route.hostname);
        }
        if info.route.hostname == CATCH_ALL {
            self.catch_all = Some(info);
            return;
        }
        match info.route.hostname.strip_prefix("*.") {
            Some(rest) => self.wildcard.insert_mut(rest.to_owned(), info),
            None => self.exact.insert_mut(info.route.hostname.clone(), info),
        }
    }

    /// Removes the route stored under `hostname`, if any.
    fn take(&mut self, hostname: &str) {
        self.checked.remove_mut(hostname);
        if hostname == CATCH_ALL {
            self.catch_all = None;
            return;
        }
        match hostname.strip_prefix("*.") {
            Some(rest) => self.wildcard.remove_mut(rest),
            None => self.exact.remove_mut(hostname),
        };
    }

    /// Finds the route for a normalised SNI hostname: exact first, then a one-label wildcard,
    /// then the catch-all `*` if the listener has one.
    pub fn lookup(&self, sni: &str) -> Option<Arc<RouteInfo>> {
        self.find(sni).map(Arc::clone)
    }

    /// [`Self::lookup`] by reference.
    pub fn find(&self, sni: &str) -> Option<&Arc<RouteInfo>> {
        if let Some(route) = self.exact.get(sni) {
            return Some(route);
        }
        sni.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .or(self.catch_all.as_ref())
    }

    /// The route stored under `hostname` (normalised; `*.x` and `*` included), not a lookup.
    pub fn get(&self, hostname: &str) -> Option<Arc<RouteInfo>> {
        self.stored(hostname).map(Arc::clone)
    }

    /// [`Self::get`] by reference.
    pub fn stored(&self, hostname: &str) -> Option<&Arc<RouteInfo>> {
        if hostname == CATCH_ALL {
            return self.catch_all.as_ref();
        }
        match hostname.strip_prefix("*.") {
            Some(rest) => self.wildcard.get(rest),
            None => self.exact.get(hostname),
        }
    }

    /// Every route, exact names first, then wildcards, each group sorted by hostname, then
    /// the catch-all: the order listings show. Sorting costs O(n log n) per call; a walk
    /// that does not need the order takes [`Self::unordered`].
    pub fn iter(&self) -> impl Iterator<Item = &Arc<RouteInfo>> {
        let mut exact: Vec<_> = self.exact.values().collect();
        let mut wild: Vec<_> = self.wildcard.values().collect();
        exact.sort_by(|a, b| a.route.hostname.cmp(&b.route.hostname));
        wild.sort_by(|a, b| a.route.hostname.cmp(&b.route.hostname));
        exact.into_iter().chain(wild).chain(self.catch_all.as_ref())
    }

    /// Every route, in no particular order (the health walk's whole looks: no sort).
    pub fn unordered(&self) -> impl Iterator<Item = &Arc<RouteInfo>> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(self.catch_all.as_ref())
    }

    /// The routes with a health check, in no particular order.
    pub fn checked(&self) -> impl Iterator<Item = &Arc<RouteInfo>> {
        self.checked.values()
    }

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        self.exact.size() + self.wildcard.size() + usize::from(self.catch_all.is_some())
    }

    /// True when the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mc_proxy_shared::{HealthCheck, RouteBackend};

    fn route(hostname: &str, backend: &str) -> Route {
        Route {
            hostname: hostname.into(),
            backends: vec![RouteBackend::new(backend)],
            ..Route::default()
        }
    }

    #[test]
    fn a_backend_set_must_be_non_empty_unique_and_weighted_in_range() {
        let with = |backends: Vec<RouteBackend>| Route {
            backends,
            ..route("app.test", "127.0.0.1:1")
        };
        let err = |r: Route| validate_route(&r).unwrap_err().to_string();
        assert!(err(with(vec![])).starts_with("a route needs at least one backend"));
        let twice = with(vec![
            RouteBackend::new("a.test:1"),
            RouteBackend::new("A.test:1"),
        ]);
        assert_eq!(
            err(twice),
            "duplicate backend \"A.test:1\": each address may appear once in a set"
        );
        let heavy = with(vec![RouteBackend::new("a.test:1").with_weight(257)]);
        assert_eq!(
            err(heavy),
            "backend \"a.test:1\": weight 257 is not from 1 to 256"
        );
        let zero = with(vec![RouteBackend::new("a.test:1").with_weight(0)]);
        assert!(err(zero).contains("weight 0 is not from 1 to 256"));
        let bad = with(vec![
            RouteBackend::new("a.test:1"),
            RouteBackend::new("b.test"),
        ]);
        assert!(err(bad).starts_with("invalid backend \"b.test\""));
        let many = with(
            (1..=65)
                .map(|p| RouteBackend::new(format!("a.test:{p}")))
                .collect(),
        );
        assert_eq!(
            err(many),
            "a route has at most 64 backends, this one has 65"
        );
        let fine = with(vec![
            RouteBackend::new("a.test:1"),
            RouteBackend::new("a.test:2").with_weight(256),
        ]);
        assert_eq!(validate_route(&fine).unwrap().route.backends.len(), 2);
    }

    #[test]
    fn health_checks_that_cannot_work_are_refused() {
        let with = |check: HealthCheck| Route {
            health_check: Some(check),
            ..route("app.test", "127.0.0.1:1")
        };
        let err = |r: Route| validate_route(&r).unwrap_err().to_string();
        let base = HealthCheck::default();
        assert!(validate_route(&with(base.clone())).is_ok());
        let rise0 = HealthCheck {
            rise: 0,
            ..base.clone()
        };
        assert_eq!(
            err(with(rise0)),
            "health_check: rise and fall must be at least 1"
        );
        let slow = HealthCheck {
            timeout: base.interval * 2,
            ..base.clone()
        };
        assert!(err(with(slow)).contains("at most the interval"));
        let fast = HealthCheck {
            interval: std::time::Duration::from_millis(10),
            timeout: std::time::Duration::from_millis(5),
            ..base.clone()
        };
        assert!(err(with(fast)).contains("at least 100ms"));
        // Zeros are refused, never read as "unset".
        let zero = std::time::Duration::ZERO;
        for (check, needle) in [
            (
                HealthCheck {
                    fall: 0,
                    ..base.clone()
                },
                "health_check: rise and fall must be at least 1",
            ),
            (
                HealthCheck {
                    interval: zero,
                    timeout: zero,
                    ..base.clone()
                },
                "health_check: interval must be at least 100ms",
            ),
            (
                HealthCheck {
                    timeout: zero,
                    ..base.clone()
                },
                "health_check: timeout must be more than 0",
            ),
        ] {
            assert!(err(with(check.clone())).starts_with(needle), "{check:?}");
        }
        let http_on_l4 = HealthCheck {
            path: "/healthz".into(),
            ..base.clone()
        };
        assert!(err(with(http_on_l4)).contains("needs an l7 route"));
    }

    #[test]
    fn exact_match_wins_over_wildcard() {
        let table = RouteTable::new([
            route("*.example.com", "127.0.0.1:1"),
            route("api.example.com", "127.0.0.1:2"),
        ]);
        assert_eq!(
            table.lookup("api.example.com").unwrap().route.backends[0].address,
            "127.0.0.1:2"
        );
        assert_eq!(
            table.lookup("www.example.com").unwrap().route.backends[0].address,
            "127.0.0.1:1"
        );
    }

    #[test]
    fn the_catch_all_takes_only_what_nothing_else_matches() {
        let table = RouteTable::new([
            route("*", "127.0.0.1:9"),
            route("*.example.com", "127.0.0.1:1"),
            route("api.example.com", "127.0.0.1:2"),
        ]);
        let backend = |sni| {
            table
                .lookup(sni)
                .map(|r| r.route.backends[0].address.clone())
        };
        assert_eq!(backend("api.example.com").as_deref(), Some("127.0.0.1:2"));
        assert_eq!(backend("www.example.com").as_deref(), Some("127.0.0.1:1"));
        assert_eq!(backend("a.b.example.com").as_deref(), Some("127.0.0.1:9"));
        assert_eq!(backend("localhost").as_deref(), Some("127.0.0.1:9"));
        assert_eq!(table.len(), 3);
        assert_eq!(table.iter().last().unwrap().route.hostname, "*");
        assert!(
            RouteTable::new([route("a.test", "127.0.0.1:1")])
                .lookup("b.test")
                .is_none()
        );
    }

    #[test]
    fn star_alone_is_the_catch_all_and_nothing_else_with_a_star_is() {
        let valid = |h: &str| validate_route(&route(h, "127.0.0.1:1")).map(|v| v.route.hostname);
        assert_eq!(valid(" * ").unwrap(), "*");
        for bad in ["**", "*.", "*.*", "a*", "*x.test"] {
            assert!(valid(bad).is_err(), "{bad}");
        }
    }

    /// A temp dir holding a self-signed `web.test` pair, and an L7 route using it.
    fn l7_fixture() -> (tempfile::TempDir, Route) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["web.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("web.pem"), dir.path().join("web.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let route = Route {
            mode: Mode::L7,
            tls_cert: cert_path.display().to_string(),
            tls_key: key_path.display().to_string(),
            ..route("web.test", "127.0.0.1:9080")
        };
        (dir, route)
    }

    #[test]
    fn backend_protocol_auto_needs_backend_tls_on_l7() {
        let (_dir, l7) = l7_fixture();
        for protocol in BackendProtocol::ALL.iter().copied() {
            for backend_tls in [false, true] {
                let r = Route {
                    backend_tls,
                    backend_protocol: protocol,
                    ..l7.clone()
                };
                if protocol == BackendProtocol::Auto && !backend_tls {
                    let err = validate_route(&r).unwrap_err();
                    assert!(
                        matches!(err, RouteError::Fields(RouteFieldError::AutoWithoutTls)),
                        "{err}"
                    );
                    assert!(
                        err.to_string()
                            .starts_with("backend_protocol auto needs backend_tls"),
                        "{err}"
                    );
                    continue;
                }
                let valid = validate_route(&r).unwrap();
                assert_eq!(valid.route.backend_protocol, protocol);
                assert_eq!(valid.route.backend_tls, backend_tls);
                assert!(valid.warnings.is_empty(), "{:?}", valid.warnings);
            }
        }
    }

    #[test]
    fn backend_protocol_on_l4_is_kept_and_warned_about_not_refused() {
        let plain = validate_route(&route("app.test", "127.0.0.1:1")).unwrap();
        assert_eq!(plain.route.backend_protocol, BackendProtocol::H2);
        assert!(plain.warnings.is_empty(), "{:?}", plain.warnings);
        for protocol in [BackendProtocol::Http1, BackendProtocol::Auto] {
            // auto without backend_tls too: nothing on L4 speaks HTTP to the backend.
            let valid = validate_route(&Route {
                backend_protocol: protocol,
                ..route("app.test", "127.0.0.1:1")
            })
            .unwrap();
            assert_eq!(valid.route.backend_protocol, protocol);
            assert_eq!(
                valid.warnings,
                [format!(
                    "backend_protocol {protocol} is set on an l4 route and is not used: \
                     l4 passes TLS through to the backend"
                )]
            );
        }
    }

    #[test]
    fn access_log_on_l4_is_kept_and_warned_about_not_refused() {
        let valid = validate_route(&Route {
            access_log: true,
            ..route("app.test", "127.0.0.1:1")
        })
        .unwrap();
        assert!(valid.route.access_log);
        assert_eq!(valid.warnings.len(), 1, "{:?}", valid.warnings);
        assert!(valid.warnings[0].starts_with("access_log is set on an l4 route"));
    }

    /// The health walk probes the routes `checked` lists every tick and looks at the others
    /// only when something may have changed: a route is listed exactly while it has a check.
    #[test]
    fn checked_lists_exactly_the_routes_with_a_health_check() {
        let with_check = |name: &str| Route {
            health_check: Some(HealthCheck::default()),
            ..route(name, "127.0.0.1:1")
        };
        let info = |r: Route| Arc::new(RouteInfo::new(ValidRoute::unchecked(r), Arc::default()));
        let names = |t: &RouteTable| {
            let mut v: Vec<String> = t.checked().map(|r| r.route.hostname.clone()).collect();
            v.sort();
            v
        };
        let table = RouteTable::new([
            with_check("a.test"),
            route("b.test", "127.0.0.1:1"),
            with_check("*.c.test"),
            with_check("*"),
        ]);
        assert_eq!(names(&table), ["*", "*.c.test", "a.test"]);
        // The check removed from a.test, added to b.test, *.c.test removed.
        let table = table.patched(
            ["*.c.test"],
            [
                info(route("a.test", "127.0.0.1:2")),
                info(with_check("b.test")),
            ],
        );
        assert_eq!(names(&table), ["*", "b.test"]);
        let table = table.patched(["*", "b.test"], []);
        assert!(names(&table).is_empty());
        assert_eq!(table.len(), 1);
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
