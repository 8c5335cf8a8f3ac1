//! One request's trip to the backend: a lease from the pool, the request written in the HTTP
//! version the lease speaks, the wait for the response head, and the retry rules.
//!
//! I/O: none of its own beyond what [`pool`] does; it sends on pooled connections.
//!
//! Retry rules (RFC 9110 §9.2.2, as HAProxy's `retry-on conn-failure` and Pingora do): a
//! request hyper hands back unsent (the connection closed between checkout and write) always
//! goes to another connection. One that may have been sent is retried only when it had no
//! body and either its method is idempotent or the backend said it did not process it
//! (HTTP/2 `REFUSED_STREAM`, or a stream above a GOAWAY's last stream id), and only when the
//! connection was lost before the response head, never after a timeout. At most
//! [`MAX_ATTEMPTS`] tries.
//!
//! Invariants: the response head is awaited within `response_timeout` per attempt; the body
//! that follows is not bounded (gRPC and event streams stay open as long as they like). The
//! lease (HTTP/2 stream slot, HTTP/1.1 connection) travels inside the response body and is
//! released when the body ends.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};

use super::body::{Held, ReqBody, RespBody};
use super::connector::Wire;
use super::pool::{Lease, PoolError, TargetPool};
use crate::stats::LatencyHistogram;

/// Tries per request: the first, and up to two retries under the rules above.
pub const MAX_ATTEMPTS: usize = 3;

/// Why a request got no response from the backend. Always the backend's fault (or the
/// network's), except TLS trust problems inside [`UpstreamError::Pool`] (the operator's).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No backend connection could be had (dial, TLS, handshake, cap).
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The request was sent but no response head came within `response_timeout`.
    #[error("response from {backend} timed out after {after:?}")]
    ResponseTimeout {
        /// The backend address.
        backend: String,
        /// The configured `response_timeout`.
        after: Duration,
    },
    /// The request failed on an established connection (reset, connection lost).
    #[error("request to {backend}: {source}")]
    Request {
        /// The backend address.
        backend: String,
        /// What hyper said.
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// The status the client gets: 504 for a timeout, 503 when the pool's cap refused, 502
    /// otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::ResponseTimeout { .. } => http::StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Pool(e) if e.is_timeout() => http::StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Pool(e) if e.is_full() => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// The backend timeouts of an L7 route.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// The whole connection setup: TCP, PROXY header, TLS, and the HTTP handshake (for
    /// HTTP/2, up to the backend's SETTINGS); also the longest wait for a free connection.
    pub connect: Duration,
    /// From a request sent to its response head.
    pub response: Duration,
}

/// One client connection's way to its route's backend.
#[derive(Debug)]
pub struct Upstream {
    pool: Arc<TargetPool>,
    timeouts: Timeouts,
    scheme: Scheme,
}

/// A failed attempt: the error, and the request if hyper gave it back unsent.
struct Failed {
    error: hyper::Error,
    unsent: Option<Request<ReqBody>>,
}

impl Upstream {
    /// Requests go to `pool`'s connections.
    pub fn new(pool: Arc<TargetPool>, timeouts: Timeouts) -> Self {
        let scheme = if pool.target().tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        Upstream {
            pool,
            timeouts,
            scheme,
        }
    }

    /// The pool this upstream sends on.
    pub fn pool(&self) -> &Arc<TargetPool> {
        &self.pool
    }

    /// Sends `req` (absolute URI, no `Host` header: the proxy's neutral form) and returns the
    /// response head, retrying under the module's rules. A dial made for it is recorded in
    /// `connect_duration`.
    pub async fn send(
        &self,
        req: Request<ReqBody>,
        connect_duration: &LatencyHistogram,
    ) -> Result<Response<RespBody>, UpstreamError> {
        // Only a bodyless request can be replayed once hyper has taken it.
        let replay = http_body::Body::is_end_stream(req.body()).then(|| Replay::of(&req));
        let mut req = req;
        let mut attempt = 1;
        loop {
            let (lease, dialled) = self.pool.checkout(self.timeouts.connect).await?;
            if let Some(took) = dialled {
                connect_duration.record(took);
            }
            let sent = tokio::time::timeout(self.timeouts.response, self.send_on(lease, req));
            let failed = match sent.await {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(failed)) => failed,
                Err(_) => {
                    return Err(UpstreamError::ResponseTimeout {
                        backend: self.backend().to_owned(),
                        after: self.timeouts.response,
                    });
                }
            };
            let again = match (failed.unsent, &replay) {
                (Some(unsent), _) => Some(unsent),
                (None, Some(replay)) if replay.may_retry(&failed.error) => Some(replay.request()),
                _ => None,
            };
            match again {
                Some(next) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(
                        attempt,
                        "backend connection lost before the response: retrying: {}",
                        failed.error
                    );
                    req = next;
                    attempt += 1;
                }
                _ => {
                    return Err(UpstreamError::Request {
                        backend: self.backend().to_owned(),
                        source: failed.error,
                    });
                }
            }
        }
    }

    fn backend(&self) -> &str {
        &self.pool.target().backend
    }

    async fn send_on(
        &self,
        lease: Lease,
        mut req: Request<ReqBody>,
    ) -> Result<Response<RespBody>, Failed> {
        to_wire(&mut req, lease.wire(), &self.scheme);
        match lease {
            Lease::H2 { mut sender, slot } => match sender.try_send_request(req).await {
                Ok(resp) => Ok(resp.map(|body| RespBody::new(body, Held::Stream(slot)))),
                Err(mut e) => Err(Failed {
                    unsent: e.take_message(),
                    error: e.into_error(),
                }),
            },
            Lease::Http1(mut lease) => {
                if let Err(error) = lease.sender().ready().await {
                    return Err(Failed {
                        error,
                        unsent: Some(req),
                    });
                }
                let close = wants_close(req.headers());
                match lease.sender().try_send_request(req).await {
                    Ok(resp) => {
                        let reusable = !close
                            && !wants_close(resp.headers())
                            && resp.version() == Version::HTTP_11;
                        Ok(resp.map(|body| {
                            RespBody::new(body, Held::Connection(Some(lease), reusable))
                        }))
                    }
                    Err(mut e) => Err(Failed {
                        unsent: e.take_message(),
                        error: e.into_error(),
                    }),
                }
            }
        }
    }
}

/// What is kept of a bodyless request to send it again after its connection was lost.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    fn of(req: &Request<ReqBody>) -> Self {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }

    fn request(&self) -> Request<ReqBody> {
        let mut req = Request::new(ReqBody::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }

    /// Whether the failure allows sending the request again (see the module docs).
    fn may_retry(&self, error: &hyper::Error) -> bool {
        connection_lost(error) && (self.method.is_idempotent() || not_processed(error))
    }
}

/// The connection went away before a response head: not a reset of this one stream.
fn connection_lost(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    h2_error(e).is_some_and(|h2| {
        h2.is_go_away() || h2.is_io() || h2.reason() == Some(h2::Reason::REFUSED_STREAM)
    })
}

/// The backend says it did not act on the request (RFC 9113 §8.7).
fn not_processed(e: &hyper::Error) -> bool {
    h2_error(e).is_some_and(|h2| {
        (h2.is_go_away() && h2.is_remote()) || h2.reason() == Some(h2::Reason::REFUSED_STREAM)
    })
}

fn h2_error(e: &hyper::Error) -> Option<&h2::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = s.source();
    }
    None
}

fn wants_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// Writes the request in `wire`'s form. HTTP/2: absolute URI (`:scheme`, `:authority`), no
/// `Host`. HTTP/1.1: origin-form target with `Host`, and no `TE` (an HTTP/2 client's
/// `te: trailers` is for gRPC, which needs an HTTP/2 backend). Works from either form, since
/// a request handed back unsent may go out on a connection of the other version (`auto`).
fn to_wire(req: &mut Request<ReqBody>, wire: Wire, scheme: &Scheme) {
    let authority: Option<Authority> = req.uri().authority().cloned().or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse().ok())
    });
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    match wire {
        Wire::H2 => {
            *req.version_mut() = Version::HTTP_2;
            req.headers_mut().remove(header::HOST);
            let mut uri = Uri::builder().scheme(scheme.clone()).path_and_query(path);
            if let Some(authority) = authority {
                uri = uri.authority(authority);
            }
            if let Ok(uri) = uri.build() {
                *req.uri_mut() = uri;
            }
        }
        Wire::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            req.headers_mut().remove(header::TE);
            if let Some(authority) = authority
                && let Ok(host) = HeaderValue::from_str(authority.as_str())
            {
                req.headers_mut().insert(header::HOST, host);
            }
            *req.uri_mut() = Uri::from(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neutral() -> Request<ReqBody> {
        let mut req = Request::new(ReqBody::Empty);
        *req.uri_mut() = "http://web.test/a?b=1".parse().unwrap();
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
        req
    }

    #[test]
    fn http1_form_has_origin_target_host_and_no_te() {
        let mut req = neutral();
        to_wire(&mut req, Wire::Http1, &Scheme::HTTP);
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri().to_string(), "/a?b=1");
        assert_eq!(req.headers()[header::HOST], "web.test");
        assert!(req.headers().get(header::TE).is_none());
    }

    #[test]
    fn h2_form_round_trips_from_http1_form() {
        let mut req = neutral();
        to_wire(&mut req, Wire::Http1, &Scheme::HTTP);
        to_wire(&mut req, Wire::H2, &Scheme::HTTPS);
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.uri().to_string(), "https://web.test/a?b=1");
        assert!(req.headers().get(header::HOST).is_none());
    }

    #[test]
    fn connection_close_is_found_among_tokens() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Close"),
        );
        assert!(wants_close(&h));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!wants_close(&h));
    }
}
