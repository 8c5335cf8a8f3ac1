//! The checks on a route's fields that need no file: its hostname, backend set, health check
//! and what an L7 route must name. One list, applied by the daemon's `routes::validate_route`
//! (which adds loading the certificate and key) and by `mcproxyctl apply` before it sends
//! anything, so both refuse the same routes with the same words.
//!
//! No I/O. Invariant: [`route_field_problems`] reports every problem of a route, in the order
//! `validate_route` reports the first of them.

use std::net::SocketAddr;

use mc_proxy_wire::dns::{normalize_dns_name, normalize_route_hostname};

use crate::model::{
    BackendProtocol, HealthCheck, HealthCheckError, Mode, Route, RouteBackend, WeightError,
};
use crate::text::clip;

/// The most members a route may have (the daemon keeps the tried ones in a `u64` bit set).
pub const MAX_MEMBERS: usize = 64;

/// The hostname of a catch-all route.
pub const CATCH_ALL: &str = "*";

/// What is wrong with one of a route's fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteFieldError {
    /// The hostname is neither a DNS name nor `*.` followed by one.
    #[error(
        "invalid hostname {}: expected a DNS name like app.example.com or *.example.com",
        clip(.0)
    )]
    Hostname(String),
    /// The backend is not `host:port`.
    #[error("invalid backend {}: {reason}", clip(.value))]
    Backend {
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A route without backends.
    #[error("a route needs at least one backend: set backend = \"host:port\" or backends = [...]")]
    NoBackends,
    /// More members than a route may have.
    #[error("a route has at most {max} backends, this one has {count}")]
    TooManyBackends {
        /// How many were given.
        count: usize,
        /// [`MAX_MEMBERS`].
        max: usize,
    },
    /// The same address twice in one set.
    #[error("duplicate backend {}: each address may appear once in a set", clip(.0))]
    DuplicateBackend(String),
    /// A weight outside 1..=256 (0 included).
    #[error(transparent)]
    Weight(#[from] WeightError),
    /// A health check setting that cannot work (0 rise, fall, interval or timeout included).
    #[error(transparent)]
    HealthCheck(#[from] HealthCheckError),
    /// An l7 route without `tls_cert`.
    #[error("mode l7 needs tls_cert (a PEM certificate chain for the route's hostname), or acme")]
    MissingCert,
    /// An l7 route without `tls_key`.
    #[error("mode l7 needs tls_key (the PEM private key for tls_cert)")]
    MissingKey,
    /// `acme` on an l4 route.
    #[error("acme is for l7 routes (an l4 route passes the client's TLS through)")]
    AcmeOnL4,
    /// `acme` with `tls_cert`/`tls_key`.
    #[error("acme and tls_cert/tls_key are both set: the certificate comes from one or the other")]
    AcmeAndFiles,
    /// An l7 route with `backend_protocol` auto but without `backend_tls`.
    #[error(
        "backend_protocol auto needs backend_tls (the backend picks h2 or http/1.1 by ALPN, \
         in the TLS handshake): set backend_tls, or use h2 or http1 for a cleartext backend"
    )]
    AutoWithoutTls,
    /// An access list or request limit that cannot work.
    #[error(transparent)]
    Limits(#[from] crate::limits::RouteLimitsError),
}

/// A route hostname as routes are stored and looked up by name (`App.Test.` is `app.test`,
/// ` * ` is `*`), or `None` if it cannot be a route's name: the one normalisation for names
/// that requests and settings refer to routes by.
pub fn route_name(hostname: &str) -> Option<String> {
    let hostname = hostname.trim();
    if hostname == CATCH_ALL {
        return Some(CATCH_ALL.to_owned());
    }
    normalize_route_hostname(hostname)
}

/// Every problem of `route`'s fields, the certificate and key files left aside.
pub fn route_field_problems(route: &Route) -> Vec<RouteFieldError> {
    let mut out = Vec::new();
    if route_name(&route.hostname).is_none() {
        out.push(RouteFieldError::Hostname(route.hostname.clone()));
    }
    if let Err(e) = validate_backends(&route.backends) {
        out.push(e);
    }
    if let Some(check) = &route.health_check
        && let Err(e) = validate_health_check(check, route.mode)
    {
        out.push(e);
    }
    if let Err(e) = route.limits.checked() {
        out.push(e.into());
    }
    if route.acme && route.mode != Mode::L7 {
        out.push(RouteFieldError::AcmeOnL4);
    }
    if route.acme && (!route.tls_cert.is_empty() || !route.tls_key.is_empty()) {
        out.push(RouteFieldError::AcmeAndFiles);
    }
    if route.mode == Mode::L7 {
        if route.tls_cert.is_empty() && !route.acme {
            out.push(RouteFieldError::MissingCert);
        }
        if route.tls_key.is_empty() && !route.acme {
            out.push(RouteFieldError::MissingKey);
        }
        if route.backend_protocol == BackendProtocol::Auto && !route.backend_tls {
            out.push(RouteFieldError::AutoWithoutTls);
        }
    }
    out
}

/// One to [`MAX_MEMBERS`] members, each a valid `host:port` with a weight in range, no
/// address twice (compared as written, after trimming).
fn validate_backends(backends: &[RouteBackend]) -> Result<(), RouteFieldError> {
    if backends.is_empty() {
        return Err(RouteFieldError::NoBackends);
    }
    if backends.len() > MAX_MEMBERS {
        return Err(RouteFieldError::TooManyBackends {
            count: backends.len(),
            max: MAX_MEMBERS,
        });
    }
    for (i, b) in backends.iter().enumerate() {
        validate_backend(&b.address)?;
        b.check_weight()?;
        let same = |o: &RouteBackend| o.address.eq_ignore_ascii_case(&b.address);
        if backends[..i].iter().any(same) {
            return Err(RouteFieldError::DuplicateBackend(b.address.clone()));
        }
    }
    Ok(())
}

/// Rise and fall at least 1, a probe timeout within the interval, an interval of at least
/// 100 ms (a probe per backend per interval) ([`HealthCheck::check_timing`], which the console
/// applies too), and an HTTP path only on L7, starting with `/`.
fn validate_health_check(check: &HealthCheck, mode: Mode) -> Result<(), RouteFieldError> {
    check.check_timing()?;
    if !check.path.is_empty() {
        if mode == Mode::L4 {
            return Err(HealthCheckError(
                "path (an HTTP check) needs an l7 route: an l4 route is checked by TCP connect",
            )
            .into());
        }
        if !check.path.starts_with('/') || check.path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(HealthCheckError("path must be an absolute path like /healthz").into());
        }
    }
    Ok(())
}

/// `host:port` where host is an IP address (IPv6 in brackets) or a DNS name, port 1-65535.
fn validate_backend(backend: &str) -> Result<(), RouteFieldError> {
    let err = |reason| RouteFieldError::Backend {
        value: backend.to_owned(),
        reason,
    };
    if let Ok(addr) = backend.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err(err("port 0 cannot be dialed"))
        } else {
            Ok(())
        };
    }
    let (host, port) = backend
        .rsplit_once(':')
        .ok_or_else(|| err("expected host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| err("port must be a number from 1 to 65535"))?;
    if port == 0 {
        return Err(err("port 0 cannot be dialed"));
    }
    if host.contains(':') || host.starts_with('[') {
        return Err(err("IPv6 addresses need brackets: [::1]:443"));
    }
    if normalize_dns_name(host).is_none() {
        return Err(err("host must be an IP address or a DNS name"));
    }
    Ok(())
}
