//! One request's trip to a backend: a member of the route's set, a lease from its pool, the
//! request written in the HTTP version the lease speaks, the wait for the response head, and
//! the retry rules.
//!
//! I/O: none of its own; it sends on pooled connections through `connectors::send`.
//!
//! Members: each attempt picks one (`backends::BackendSet::pick`), skipping those that
//! failed this request. A request that never got a connection (dial refused, TLS or HTTP
//! handshake failed, the member's pool full) goes to the next member at once, all within the
//! attempt's `connect_timeout`; each send attempt has a connect budget of its own, so a
//! request takes at most [`MAX_ATTEMPTS`] × (`connect_timeout` + `response_timeout`) to get
//! its answer or its 502/503/504. Connection-level failures (a failed dial, a connection lost
//! with the request in flight, a response timeout) count against the member's passive
//! health; a response head counts for it. A graceful close by the backend (GOAWAY `NO_ERROR`,
//! `REFUSED_STREAM`, a kept-alive HTTP/1.1 connection closed between requests) is not a
//! failure: the request is replayed and nothing is counted.
//!
//! Retry rules (RFC 9110 §9.2.2, as HAProxy's `retry-on conn-failure` and Pingora do): a
//! request known unsent (the connection closed between checkout and write) always goes to
//! another connection. One that may have been sent is retried only when it had no
//! body and either its method is idempotent or the backend said it did not process it
//! (HTTP/2 `REFUSED_STREAM`, or a stream above a GOAWAY's last stream id), and only when the
//! connection was lost before the response head, never after a timeout; the retry goes to
//! another member when there is one. At most [`MAX_ATTEMPTS`] sends, plus `MAX_REFUSED` that
//! the backend ended in an orderly way (see `graceful`): those leave the member a candidate,
//! since another of its connections may take the request.
//!
//! HTTP/2: the request's stream is opened on the pooled `h2` connection from the request's
//! own task, which then awaits the response head itself. A request body is piped to the
//! stream by a task of the pool's (it may outlive the response head: gRPC streams both ways),
//! which honours the backend's flow control and stops when the backend resets the stream or
//! the request is abandoned before its head came.
//!
//! Invariants: the response head is awaited within `response_timeout` per attempt; the body
//! that follows is not bounded (gRPC and event streams stay open as long as they like). The
//! lease (HTTP/2 stream slot, HTTP/1.1 connection) travels inside the response body and is
//! released when the body ends.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::uri::Scheme;
use http::{HeaderMap, Method, Request, Response, Uri};

use super::request_log::Trace;
use crate::connectors::pool::{Pick as ConnPick, PoolError, TargetPool};
use crate::connectors::response::RespBody;
use crate::connectors::send::send_on;
use crate::model::backends::{Pick, Tried};
use crate::model::routes::RouteInfo;
use crate::model::state::State;
use crate::model::stats::LatencyHistogram;
use crate::protocols::body::{BackendError, ReqBody};
use tokio::time::Instant;

/// Tries per request: the first, and up to two retries under the rules above.
pub const MAX_ATTEMPTS: usize = 3;

/// Sends of one request that a backend ended in an orderly way (see `graceful`), on top of
/// [`MAX_ATTEMPTS`]: the backend did not process them, so they cost it nothing, but a
/// backend refusing everything must not keep a request going round. Measured with three
/// nginx backends at `keepalive_requests 100` and 400 streams in flight, a third of all
/// streams are refused by a closing connection (each connection takes up to 128 streams and
/// processes 100): three refusals in a row then happened to a few requests in 100 000, ten
/// to none.
const MAX_REFUSED: usize = 10;

/// Less connect budget than this left in an attempt: no further member is dialled (a dial
/// given nothing would only report a timeout "after 0ns").
const MIN_CONNECT_LEFT: Duration = Duration::from_millis(1);

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
    /// No member may take the request: every one is down, draining or disabled.
    #[error("no backend of route {route} is available: {states}")]
    NoBackend {
        /// The route's hostname.
        route: String,
        /// Each member's state.
        states: String,
    },
    /// The request failed on an established connection (reset, connection lost).
    #[error("request to {backend}: {source}")]
    Request {
        /// The backend address.
        backend: String,
        /// What the HTTP library said.
        source: BackendError,
    },
}

impl UpstreamError {
    /// The status the client gets: 504 for a timeout, 503 when the pool's cap refused or no
    /// member is available, 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::NoBackend { .. } => http::StatusCode::SERVICE_UNAVAILABLE,
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

/// One client connection's way to its route's backends: a pool per member.
#[derive(Debug)]
pub struct Upstream {
    route: Arc<RouteInfo>,
    /// Indexed like `route.backends.members()`.
    pools: Vec<Arc<TargetPool>>,
    timeouts: Timeouts,
    scheme: Scheme,
    /// The real client (for `balance = "source"`).
    client: IpAddr,
    /// Where member state changes are published.
    state: Arc<State>,
    listener: SocketAddr,
}

impl Upstream {
    /// Requests go to `route`'s members, each through its pool in `pools` (same order).
    pub fn new(
        route: Arc<RouteInfo>,
        pools: Vec<Arc<TargetPool>>,
        timeouts: Timeouts,
        client: IpAddr,
        state: Arc<State>,
        listener: SocketAddr,
    ) -> Self {
        let scheme = if route.route.backend_tls {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        Upstream {
            route,
            pools,
            timeouts,
            scheme,
            client,
            state,
            listener,
        }
    }

    /// The route version this upstream sends to.
    pub fn route(&self) -> &Arc<RouteInfo> {
        &self.route
    }

    /// A member for a request that cannot be retried elsewhere once started (a WebSocket),
    /// with its pool (for the target and TLS settings).
    pub fn pick(&self) -> Result<(Pick, &Arc<TargetPool>), UpstreamError> {
        let pick = self
            .route
            .backends
            .pick(self.client, Tried::default())
            .ok_or_else(|| self.no_backend())?;
        let pool = &self.pools[pick.index];
        Ok((pick, pool))
    }

    /// Reports a connection-level failure of the member at `index` to passive health.
    pub fn failed(&self, index: usize, why: &dyn std::fmt::Display) {
        let member = self.route.backends.member(index);
        let t = member
            .health
            .failed(&member.spec, &self.state.passive(), why);
        self.state.backend_changed(self.listener, &self.route, t);
    }

    /// Reports a working exchange with the member at `index` to passive health.
    pub fn succeeded(&self, index: usize) {
        let member = self.route.backends.member(index);
        let t = member.health.succeeded(&member.spec);
        self.state.backend_changed(self.listener, &self.route, t);
    }

    fn no_backend(&self) -> UpstreamError {
        UpstreamError::NoBackend {
            route: self.route.route.hostname.clone(),
            states: self.route.count_no_backend(),
        }
    }

    /// Sends `req` (absolute URI, no `Host` header: the proxy's neutral form) to a member and
    /// returns the response head, retrying under the module's rules. A dial made for it is
    /// recorded in `connect_duration`; each member asked is noted in `trace` (the request's
    /// access line).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn stores its arguments twice (rust-lang/rust#62958)"
    )]
    pub fn send<'a>(
        &'a self,
        mut req: Request<ReqBody>,
        connect_duration: &'a LatencyHistogram,
        trace: &'a mut Trace,
    ) -> impl Future<Output = Result<Response<RespBody>, UpstreamError>> + Send + 'a {
        // A request's future is moved whole when created and boxed: no second copy of `req`.
        async move {
            // Only a bodyless request can be replayed once the connection has taken it.
            let replay = http_body::Body::is_end_stream(req.body()).then(|| Replay::of(&req));
            let mut attempt = 1;
            let mut refused = 0;
            // Members asked so far, failovers and replays included (the retries counter).
            let mut tries = 0u32;
            // After an orderly refusal, the next try goes to the youngest connection.
            let mut conn_pick = ConnPick::Oldest;
            // Each send attempt has its own connect budget: a request replayed after its
            // first attempt waited long for an answer still gets a whole connect_timeout.
            let mut deadline = Instant::now() + self.timeouts.connect;
            // Members that failed this request; after a lost connection the same member may be
            // asked again (on another connection) when no other is left.
            let mut tried = Tried::default();
            let mut same_again = false;
            let mut last: Option<UpstreamError> = None;
            loop {
                let backends = &self.route.backends;
                let pick = backends.pick(self.client, tried).or_else(|| {
                    same_again
                        .then(|| backends.pick(self.client, Tried::default()))
                        .flatten()
                });
                let Some(pick) = pick else {
                    return Err(last.unwrap_or_else(|| self.no_backend()));
                };
                if tries > 0 {
                    // A failover or a replay the client does not see.
                    self.route.stats.retries.fetch_add(1, Ordering::Relaxed);
                }
                tries += 1;
                tried.add(pick.index);
                same_again = false;
                let pool = &self.pools[pick.index];
                trace.asking(&pool.target().backend);
                let left = deadline.saturating_duration_since(Instant::now());
                let (lease, dialled) = match pool.checkout(left, conn_pick).await {
                    Ok(leased) => leased,
                    Err(e) => {
                        // Never sent: the next member may have it, within this attempt's
                        // connect budget.
                        if e.is_backend_failure() {
                            self.failed(pick.index, &e);
                        }
                        tracing::debug!(backend = %pool.target().backend, "no connection: {e}");
                        last = Some(e.into());
                        if deadline.saturating_duration_since(Instant::now()) < MIN_CONNECT_LEFT {
                            return Err(last.expect("just set"));
                        }
                        continue;
                    }
                };
                if let Some(took) = dialled {
                    connect_duration.record(took);
                }
                let sent =
                    tokio::time::timeout(self.timeouts.response, send_on(lease, req, &self.scheme));
                let failed = match sent.await {
                    Ok(Ok(resp)) => {
                        self.succeeded(pick.index);
                        return Ok(resp.map(|body| body.with_member(pick)));
                    }
                    Ok(Err(failed)) => failed,
                    Err(_) => {
                        let e = UpstreamError::ResponseTimeout {
                            backend: pool.target().backend.clone(),
                            after: self.timeouts.response,
                        };
                        self.failed(pick.index, &e);
                        return Err(e);
                    }
                };
                // Handed back unsent, or closed gracefully by the backend: the connection's
                // end, not the member failing (see `graceful`). The member stays a candidate
                // for this request: another connection of it may take it (with the others
                // also closing gracefully and a dead one left, the request would otherwise
                // end on the dead one's refused dial: a 502 with two members up).
                let reused = dialled.is_none();
                let orderly = failed.unsent.is_some() || graceful(&failed.error, reused);
                if orderly {
                    tried.remove(pick.index);
                } else {
                    self.failed(pick.index, &failed.error);
                }
                let again = match (failed.unsent, &replay) {
                    (Some(unsent), _) => Some(unsent),
                    (None, Some(replay)) if replay.may_retry(&failed.error) => {
                        Some(replay.request())
                    }
                    _ => None,
                };
                let budget = if orderly {
                    refused < MAX_REFUSED
                } else {
                    attempt < MAX_ATTEMPTS
                };
                match again {
                    Some(next) if budget => {
                        tracing::debug!(
                            attempt,
                            refused,
                            backend = %pool.target().backend,
                            "backend connection ended before the response: retrying: {}",
                            failed.error
                        );
                        req = next;
                        if orderly {
                            refused += 1;
                            conn_pick = ConnPick::Youngest;
                        } else {
                            attempt += 1;
                        }
                        same_again = true;
                        deadline = Instant::now() + self.timeouts.connect;
                    }
                    _ => {
                        return Err(UpstreamError::Request {
                            backend: pool.target().backend.clone(),
                            source: failed.error,
                        });
                    }
                }
            }
        }
    }
}

/// Writes `req` on `lease` in its HTTP version and waits for the response head.
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
    fn may_retry(&self, error: &BackendError) -> bool {
        connection_lost(error) && (self.method.is_idempotent() || not_processed(error))
    }
}

/// The connection went away before a response head: not a reset of this one stream. A
/// backend process that dies with requests in flight resets its sockets (ECONNRESET): both
/// libraries report that as an I/O error of the connection.
fn connection_lost(e: &BackendError) -> bool {
    match e {
        BackendError::Http1(e) => {
            e.is_incomplete_message() || e.is_canceled() || e.is_closed() || io_error(e)
        }
        BackendError::H2(h2) => {
            h2.is_go_away() || h2.is_io() || h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        }
    }
}

/// The backend says it did not act on the request (RFC 9113 §8.7).
fn not_processed(e: &BackendError) -> bool {
    match e {
        BackendError::Http1(_) => false,
        BackendError::H2(h2) => {
            (h2.is_go_away() && h2.is_remote()) || h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        }
    }
}

/// The backend ended the connection in an orderly way, not by failing: an HTTP/2 GOAWAY with
/// `NO_ERROR` (nginx after `keepalive_requests`, Go servers and hypercorn do it routinely) or
/// a stream it refused unprocessed (`REFUSED_STREAM`), or an HTTP/1.1 connection that had
/// served requests and was closed between two of them (its keep-alive ended as the request
/// went out; nothing was read back). Such a request is replayed and the member is not
/// counted as failing: a backend that is really gone fails the next dial, which counts.
fn graceful(e: &BackendError, reused: bool) -> bool {
    match e {
        BackendError::H2(h2) => {
            h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR))
        }
        BackendError::Http1(e) => reused && (e.is_incomplete_message() || e.is_canceled()),
    }
}

fn io_error(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}
