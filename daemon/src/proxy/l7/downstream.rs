//! The client side of an L7 connection: each request, from the misrouting guard to the
//! response handed back to hyper.
//!
//! I/O: none of its own; requests go out through [`Upstream`]. Every request gets exactly one
//! response and is counted once (`requests`, and `count_response` with the status sent,
//! including the proxy's own 421/502/504; an HTTP/2 request its client reset before the
//! answer is dropped and counts in `requests` only), and its duration is recorded once in
//! the route's `request_duration` histogram: from the moment hyper hands [`handle`] the parsed request
//! head to the moment the response head is handed back (so it includes the backend dial when
//! the request had to wait for one, and excludes streaming either body). Bodies and trailers are never buffered: the
//! client's request body is handed to the backend as it arrives, the backend's response body
//! (and its trailers) to the client. A request whose route or listener has `access_log` gets
//! its `request_log` line when its response is over (the record rides in [`ProxyBody`]).

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use super::h2_stream::Handoff;
use super::headers;
use super::lifecycle::{InFlight, InFlightGuard};
use super::limits::{self, Limits, Violation};
use super::request_log::{self, RequestLog, Trace};
use super::routing::Routing;
use super::upstream::{Upstream, UpstreamError};
use super::websocket::{self, Tunnels, WebSocketError};
use crate::connectors::pool::PoolError;
use crate::connectors::response::RespBody;
use crate::model::route_limits::{self, GateError, GateSlot, RouteLimiter};
use crate::model::routes::RouteInfo;
use crate::model::talkers::Hit;
use crate::protocols::body::{BackendError, ReqBody};

/// The body of every response the proxy sends: the backend's, streamed, or a short text. It
/// holds its request's [`InFlightGuard`], so a request counts as in flight (for the keep-alive
/// timeout) until its response body is done or dropped, not just until its head is sent.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Content,
    _in_flight: Option<InFlightGuard>,
    /// The request's slot under its route's `max_requests`: the backend is busy with it until
    /// its response body is done.
    slot: Option<GateSlot>,
    /// The request's access log record, when its line is on: counts the bytes sent and
    /// writes the line when this body is dropped (`request_log`).
    log: Option<Box<RequestLog>>,
}

/// What a [`ProxyBody`] streams (an enum, not a boxed body: no allocation per response).
#[derive(Debug)]
enum Content {
    /// A backend's response body.
    Backend(RespBody),
    /// A WebSocket backend's refusal, as hyper read it.
    Refused(Incoming),
    /// The proxy's own short text (taken once sent), or nothing.
    Text(Option<Bytes>),
    /// A switched WebSocket on an HTTP/2 stream `h2_server` serves: no body, the stream's
    /// send half goes to the tunnel once the head is sent.
    Tunnel(Option<Handoff>),
}

impl ProxyBody {
    fn new(inner: Content) -> Self {
        ProxyBody {
            inner,
            _in_flight: None,
            slot: None,
            log: None,
        }
    }

    fn is_done(&self) -> bool {
        match &self.inner {
            Content::Backend(body) => body.is_end_stream(),
            Content::Refused(body) => body.is_end_stream(),
            Content::Text(text) => text.is_none(),
            Content::Tunnel(_) => true,
        }
    }

    /// Where a switched WebSocket's stream goes, if this answers one opened on a stream.
    pub fn take_handoff(&mut self) -> Option<Handoff> {
        match &mut self.inner {
            Content::Tunnel(handoff) => handoff.take(),
            _ => None,
        }
    }
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = BackendError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BackendError>>> {
        let this = &mut *self;
        let res = match &mut this.inner {
            Content::Backend(body) => Pin::new(body).poll_frame(cx),
            Content::Refused(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BackendError::from))),
            Content::Text(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            Content::Tunnel(_) => Poll::Ready(None),
        };
        if let Some(log) = &mut this.log {
            match &res {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        log.bytes_out += data.len() as u64;
                    }
                }
                Poll::Ready(Some(Err(e))) => log.error = Some(e.to_string()),
                Poll::Ready(None) => log.ended = true,
                Poll::Pending => {}
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Content::Backend(body) => body.size_hint(),
            Content::Refused(body) => body.size_hint(),
            Content::Text(text) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
            Content::Tunnel(_) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // A body the server never polled to its end because it said it had none left (HEAD,
        // 204, an empty body, the last frame taken) is complete; the line is written as the
        // record drops, after this.
        let done = self.is_done();
        if let Some(log) = &mut self.log
            && log.error.is_none()
            && done
        {
            log.ended = true;
        }
    }
}

/// Why a request was answered by the proxy itself.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Client fault: the request names another host than the one this connection was routed
    /// by (connection coalescing, or a confused client).
    #[error("request for {requested:?} on a connection for {sni}")]
    Misdirected {
        /// The request's authority/Host, normalised (`None`: it had none).
        requested: Option<String>,
        /// The SNI the connection was routed by.
        sni: String,
    },
    /// Not a fault: the route this connection was served by is gone (removed, switched to
    /// L4, or its name now leads to another route); the client retries on a new connection,
    /// which the connection's drain (GOAWAY / `Connection: close`) asks of it anyway.
    #[error("the route this connection was served by is gone")]
    RouteGone,
    /// Client fault: the request breaks a framing rule or limit (400, 431).
    #[error(transparent)]
    Refused(#[from] Violation),
    /// Client fault: the request's authority cannot be used in an HTTP/2 request.
    #[error("bad request authority: {0}")]
    BadAuthority(String),
    /// Backend fault (or config, for TLS trust): see [`UpstreamError`].
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// An upgrade (WebSocket, or one refused): see [`WebSocketError`] for whose fault.
    #[error(transparent)]
    WebSocket(#[from] WebSocketError),
    /// Policy: the route's `allow_from` / `deny_from` refuses the client (403).
    #[error("the route's allow_from / deny_from refuses the client")]
    Denied,
    /// Policy: the route has `max_requests` in flight and no room (or time) to wait (503).
    #[error("the route is at max_requests: {0}")]
    Overloaded(#[from] GateError),
    /// Policy: over the route's request rate, the client's or the route's (429); one more
    /// would be admitted after `wait`.
    #[error("over the route's request rate (retry in {wait:?})")]
    RateLimited {
        /// Until the bucket holds one again (the `Retry-After`, rounded up to seconds).
        wait: std::time::Duration,
    },
    /// The client connection ended while the request waited for the backend.
    #[error("client connection closed")]
    Closed,
}

impl RequestError {
    fn status(&self) -> StatusCode {
        match self {
            RequestError::Misdirected { .. } | RequestError::RouteGone => {
                StatusCode::MISDIRECTED_REQUEST
            }
            RequestError::BadAuthority(_) => StatusCode::BAD_REQUEST,
            RequestError::Denied => StatusCode::FORBIDDEN,
            RequestError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            RequestError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            RequestError::Refused(v) => v.status(),
            RequestError::Upstream(e) => e.status(),
            RequestError::WebSocket(e) => e.status(),
            RequestError::Closed => StatusCode::BAD_GATEWAY,
        }
    }

    /// The short text body sent with the status.
    fn text(&self) -> &'static str {
        match self {
            RequestError::Misdirected { .. } => {
                "misdirected request: this connection serves another host\n"
            }
            RequestError::RouteGone => {
                "misdirected request: this connection's route changed; retry on a new connection\n"
            }
            RequestError::BadAuthority(_) => "bad request: unusable host\n",
            RequestError::Denied => "forbidden: this address may not use this site\n",
            RequestError::RateLimited { .. } => "too many requests: retry after a while\n",
            RequestError::Overloaded(_) => {
                "service unavailable: the site is at its request capacity\n"
            }
            RequestError::Refused(v) => v.text(),
            RequestError::WebSocket(e) => e.text(),
            RequestError::Upstream(e) if e.status() == StatusCode::GATEWAY_TIMEOUT => {
                "gateway timeout: the backend did not answer in time\n"
            }
            RequestError::Upstream(UpstreamError::Pool(PoolError::Full { .. })) => {
                "service unavailable: every backend connection is busy\n"
            }
            RequestError::Upstream(UpstreamError::NoBackend { .. }) => {
                "service unavailable: no backend is available\n"
            }
            RequestError::Upstream(_) | RequestError::Closed => {
                "bad gateway: the backend is unreachable\n"
            }
        }
    }
}

/// What every request on one client connection shares.
#[derive(Debug)]
pub struct Ctx {
    /// The route the connection was routed by: its counters (shared by every version of the
    /// route). Requests go to the route's current version, through `routing`.
    pub route: Arc<RouteInfo>,
    /// The SNI the client sent (normalised): the only host this connection serves (`None`:
    /// a no-SNI connection, which serves whatever authority it is asked for).
    pub sni: Option<String>,
    /// The real client address (TCP peer or received PROXY source).
    pub client: SocketAddr,
    /// The connection's id (the one its events and its access line carry).
    pub conn: u64,
    /// The address the client connected to (the listener's bound address, as the
    /// connection's span names it).
    pub local: SocketAddr,
    /// The same address as the forwarding headers carry it.
    pub forwarded: headers::ClientAddr,
    /// The current version of the connection's route and its backend pools.
    pub routing: Routing,
    /// Cancelled when the client connection ends.
    pub closed: CancellationToken,
    /// The connection's requests in flight (the keep-alive timeout's clock).
    pub in_flight: Arc<InFlight>,
    /// What a request may look like (`[proxy] max_request_head`).
    pub limits: Limits,
    /// The connection's WebSocket tunnels.
    pub tunnels: Tunnels,
    /// Where refusals by the route's limits are noted with the client address.
    pub talkers: Arc<crate::model::talkers::Talkers>,
}

/// Answers every request, never fails (errors become responses): hyper's service function,
/// and `h2_server`'s for each stream.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (rust-lang/rust#62958)"
)]
pub fn handle(
    ctx: Arc<Ctx>,
    req: Request<ReqBody>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
    // A request's future is moved whole when created and boxed: no second copy of `req`.
    async move {
        let started = Instant::now();
        let in_flight = ctx.in_flight.enter();
        let stats = &ctx.route.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let version = req.version();
        let method = req.method().clone();
        // A shared clone of the target (no copy) for the logs below; they print the path only.
        let target = req.uri().path_and_query().cloned();
        let path = target.as_ref().map_or("", PathAndQuery::path);
        // The route version the request goes to, looked up once, here: its `access_log` (or
        // the listener's) decides the request's line. Dropped unanswered (the client reset
        // its stream), the record still writes its line.
        let upstream = ctx.routing.current();
        let route = upstream.as_ref().map_or(&ctx.route, |u| u.route());
        let on = (route.route.access_log || ctx.routing.listener_logs()) && request_log::wanted();
        let mut log = on.then(|| {
            let conn = request_log::Conn {
                conn: ctx.conn,
                local: ctx.local,
                client: ctx.client,
                route: Arc::clone(&ctx.route),
                node: ctx.routing.node(),
            };
            Box::new(RequestLog::new(
                conn,
                started,
                method.clone(),
                target.clone(),
                request_host(&req),
                version,
            ))
        });
        // Off: a trace of the request's own, which nothing reads.
        let mut untraced = Trace::default();
        let trace = log.as_mut().map_or(&mut untraced, |l| &mut l.trace);
        let res = forward(&ctx, req, upstream, trace).await;
        let mut resp = match res {
            Ok(resp) => resp,
            Err(e) => {
                match &e {
                    RequestError::Upstream(_) => {
                        stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%method, %path, "backend error: {e}");
                    }
                    RequestError::WebSocket(w) if w.is_backend() => {
                        stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%method, %path, "backend error: {e}");
                    }
                    // Policy, and a scanner's every request: counted, not logged at info.
                    RequestError::Denied => {
                        stats.denied.fetch_add(1, Ordering::Relaxed);
                        ctx.talkers
                            .note(ctx.client.ip(), Hit::Denied, ctx.route.hostname());
                        tracing::debug!(%method, %path, "refused: {e}");
                    }
                    // A flood's every request: counted, not logged at info.
                    RequestError::RateLimited { .. } => {
                        stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                        ctx.talkers
                            .note(ctx.client.ip(), Hit::RateLimited, ctx.route.hostname());
                        tracing::debug!(%method, %path, "refused: {e}");
                    }
                    // Counted by the gate.
                    RequestError::Overloaded(_) => {
                        ctx.talkers
                            .note(ctx.client.ip(), Hit::Overloaded, ctx.route.hostname());
                        tracing::debug!(%method, %path, "refused: {e}");
                    }
                    _ => tracing::info!(%method, %path, "refused: {e}"),
                }
                let mut resp = text_response(e.status(), e.text());
                if let RequestError::WebSocket(w) = &e {
                    w.decorate(resp.headers_mut());
                }
                if let RequestError::RateLimited { wait } = &e {
                    // Whole seconds (RFC 9110 §10.2.3), rounded up: a client that waits that
                    // long finds its bucket holding one.
                    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                }
                resp
            }
        };
        *resp.version_mut() = version;
        resp.body_mut()._in_flight = Some(in_flight);
        stats.count_response(resp.status().as_u16());
        stats.request_duration.record(started.elapsed());
        tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
        if let Some(mut log) = log {
            log.status = resp.status().as_u16();
            resp.body_mut().log = Some(log);
        }
        Ok(resp)
    }
}

/// The request's `:authority` or `Host`, raw, for its access line.
fn request_host<B>(req: &Request<B>) -> Option<&[u8]> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => req.headers().get(header::HOST).map(HeaderValue::as_bytes),
    }
}

fn text_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::new(Content::Text(Some(Bytes::from_static(
        text.as_bytes(),
    )))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The authority the client asked for: `:authority` (HTTP/2, or an absolute-form HTTP/1.1
/// target), else the `Host` header. On a connection routed by `sni` its host must be that
/// name. Only a misdirected or bad request allocates.
fn requested_authority<B>(req: &Request<B>, sni: Option<&str>) -> Result<Authority, RequestError> {
    let in_uri = req.uri().authority();
    let text = match in_uri {
        Some(a) => Some(a.as_str()),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok()),
    };
    // Only a connection routed by a name can be misused for another one; a no-SNI connection
    // (health checks to an address) was not.
    if let Some(sni) = sni {
        let host = text.and_then(headers::host_of);
        if host.as_deref() != Some(sni) {
            return Err(RequestError::Misdirected {
                requested: host.map(Cow::into_owned),
                sni: sni.to_owned(),
            });
        }
    }
    if let Some(authority) = in_uri {
        return Ok(authority.clone());
    }
    let text = text.unwrap_or_default();
    text.parse()
        .map_err(|_| RequestError::BadAuthority(text.to_owned()))
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (rust-lang/rust#62958)"
)]
fn forward<'a>(
    ctx: &'a Ctx,
    req: Request<ReqBody>,
    upstream: Option<Arc<Upstream>>,
    trace: &'a mut Trace,
) -> impl Future<Output = Result<Response<ProxyBody>, RequestError>> + Send + 'a {
    // A request's future is moved whole when created and boxed: no second copy of `req`.
    async move {
        // Framing first: a request with two Hosts must not get as far as the misrouting guard,
        // which reads only one of them.
        limits::check_request(&req, ctx.limits)?;
        let authority = requested_authority(&req, ctx.sni.as_deref())?;
        // The route's access lists, as its current version has them (a change reaches open
        // connections at their next request).
        let mut slot = None;
        if let Some(upstream) = &upstream {
            let route = upstream.route();
            if !route.access.admits(ctx.client.ip()) {
                return Err(RequestError::Denied);
            }
            // Then its request rates and cap: a refused request is never forwarded.
            if RouteLimiter::rates(&route.route.limits) {
                route
                    .stats
                    .limiter
                    .admit_request(
                        ctx.client.ip(),
                        ctx.routing.client_ipv6_prefix(),
                        &route.route.limits,
                        ctx.routing.client_table_size(),
                    )
                    .map_err(|wait| RequestError::RateLimited { wait })?;
            }
            if route.route.limits.max_requests > 0 {
                let entered = tokio::select! {
                    entered = route_limits::enter(&route.stats.limiter.gate, &route.route.limits) => entered,
                    () = ctx.closed.cancelled() => return Err(RequestError::Closed),
                };
                slot = Some(entered?);
            }
        }
        if let Some(upgrade) = websocket::upgrade_of(&req) {
            // Boxed: the WebSocket set-up's state is larger than the whole plain-request path,
            // and every request's future (moved whole when it is created and boxed) would carry
            // room for it.
            let upstream = upstream.ok_or(RequestError::RouteGone)?;
            return Box::pin(upgrade_websocket(
                ctx, req, upgrade?, authority, upstream, trace,
            ))
            .await;
        }

        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        // The neutral form the upstream rewrites for the backend connection's HTTP version.
        parts.uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| RequestError::BadAuthority(e.to_string()))?;
        // The authority travels in the URI; the upstream writes `Host` back for HTTP/1.1.
        parts.headers.remove(header::HOST);
        headers::rewrite_request(&mut parts.headers, &ctx.forwarded);

        let upstream = upstream.ok_or(RequestError::RouteGone)?;
        let body = if trace.on {
            let counter = Arc::new(AtomicU64::new(0));
            trace.bytes_in = Some(Arc::clone(&counter));
            ReqBody::Counted(Box::new(body), counter)
        } else {
            body
        };
        let req = Request::from_parts(parts, body);
        let resp = tokio::select! {
            res = upstream.send(req, &ctx.route.stats.connect_duration, trace) => res?,
            () = ctx.closed.cancelled() => return Err(RequestError::Closed),
        };
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let mut body = ProxyBody::new(Content::Backend(body));
        body.slot = slot;
        Ok(Response::from_parts(parts, body))
    }
}

/// The WebSocket branch of [`forward`]: a dedicated backend connection and a tunnel
/// ([`websocket`]), the answer to the client with the body it calls for.
async fn upgrade_websocket(
    ctx: &Ctx,
    req: Request<ReqBody>,
    side: websocket::ClientSide,
    authority: Authority,
    upstream: Arc<Upstream>,
    trace: &mut Trace,
) -> Result<Response<ProxyBody>, RequestError> {
    // A tunnel stays with the member it opened on; a failed dial is counted against it.
    let (member, pool) = upstream.pick()?;
    trace.asking(&pool.target().backend);
    let index = member.index;
    let setup = websocket::Setup {
        target: pool.target(),
        tls: pool.backend_tls(),
        client: ctx.client.ip(),
        closed: &ctx.closed,
        tunnels: &ctx.tunnels,
        in_flight: ctx.in_flight.enter(),
        member,
    };
    let answer = tokio::select! {
        res = websocket::open(setup, req, side, authority) => res,
        () = ctx.closed.cancelled() => return Err(RequestError::Closed),
    };
    let answer = match answer {
        Ok(answer) => {
            upstream.succeeded(index);
            answer
        }
        Err(e) => {
            if e.is_backend() {
                upstream.failed(index, &e);
            }
            return Err(e.into());
        }
    };
    Ok(match answer {
        websocket::Answer::Switched(resp) => resp.map(|handoff| {
            ProxyBody::new(match handoff {
                Some(handoff) => Content::Tunnel(Some(handoff)),
                None => Content::Text(None),
            })
        }),
        websocket::Answer::Refused(resp) => resp.map(|body| ProxyBody::new(Content::Refused(body))),
    })
}
