//! L7 routes: TLS termination and an HTTP/2 + HTTP/1.1 reverse proxy to HTTP/2 or HTTP/1.1
//! backends (h2c or TLS).
//!
//! I/O: owns the client connection from the end of the ClientHello peek to its close.
//! [`serve`] replays the peeked ClientHello (`io::Rewind`), terminates TLS with the route's
//! prebuilt `rustls::ServerConfig` (ALPN `h2`, `http/1.1`) within `client_hello_timeout`, then
//! serves the client: by [`h2_server`] (the `h2` crate, every stream polled by the
//! connection's own task) when ALPN chose `h2`, by hyper-util's auto builder otherwise
//! (HTTP/1.1, and prior-knowledge HTTP/2 from a client that named no protocol). Each request
//! goes through [`downstream`] (misrouting guard, header rewriting, error responses), takes the
//! current version of the connection's route from [`routing`], and goes to [`upstream`] (a
//! lease from the worker's backend pool: an HTTP/2 stream or an HTTP/1.1 connection, h2c or
//! TLS, optional PROXY v2).
//! [`headers`] is the pure header rewriting. WebSockets (HTTP/1.1 `Upgrade`, HTTP/2 extended
//! CONNECT, which this server advertises) leave `downstream` for [`websocket`]: a backend
//! connection of their own, then a byte tunnel; an HTTP/1.1 connection that switched lasts
//! until its tunnel ends.
//!
//! Invariants: nothing is buffered whole; request and response bodies and trailers stream.
//! The route's byte counters count TLS bytes on the client connection (the same place L4
//! counts them: what crossed the client's socket, ClientHello included), live. A connection
//! with no byte either way for `idle_timeout` is closed, as on L4; one that started no request
//! within `request_header_timeout` of its handshake is closed too. When shutdown starts, when
//! the connection's route is gone ([`routing::Routing::gone`]) or after `keepalive_timeout`
//! without a request in flight, the connection gets GOAWAY (HTTP/2) or `Connection: close`
//! after the current request (HTTP/1.1) and ends once its requests are done; `handle_conn`
//! drops it when a shutdown's grace period ends. The connection's own tasks (hyper's, its
//! WebSocket tunnels, the dedicated pools of a `send_proxy_protocol` route) watch a token
//! cancelled when [`serve`] returns; the shared pool's connection drivers outlive it on
//! purpose (the next client's requests reuse them) and belong to the worker's pool.

pub mod downstream;
pub mod h2_server;
pub mod h2_stream;
pub mod headers;
pub mod lifecycle;
pub mod limits;
pub mod request_log;
pub mod routing;
pub mod upstream;
pub mod websocket;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use mc_proxy_shared::{CloseReason, TlsFailure};

pub use crate::connectors::connector::BackendTls;
pub use crate::connectors::pool::Pool;
use crate::model::conns::Live;
use crate::model::routes::RouteInfo;
use crate::protocols::io::Rewind;
use lifecycle::{Activity, Watch};
pub use lifecycle::{InFlight, InFlightGuard, L7End, TaskExecutor};

/// Why an L7 connection ended before serving HTTP.
#[derive(Debug, thiserror::Error)]
pub enum L7Error {
    /// Client fault: the TLS handshake failed (the client does not trust our certificate,
    /// speaks no common version, or hung up).
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
    /// Client fault: the TLS handshake did not finish within `client_hello_timeout`.
    #[error("TLS handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
}

impl L7Error {
    /// How the connection ended, for the access record. Both are the client's doing; the
    /// socket is closed, not reset, so the client can read rustls's alert.
    pub fn close_reason(&self) -> CloseReason {
        match self {
            L7Error::Handshake(_) => CloseReason::TlsHandshakeFailed,
            L7Error::HandshakeTimeout(_) => CloseReason::TlsHandshakeTimeout,
        }
    }

    /// Why the handshake failed, for `mcproxy_listener_tls_handshake_failures_total`: what an
    /// operator can act on (clients that distrust the certificate, old clients, scanners).
    pub fn tls_failure(&self) -> TlsFailure {
        let e = match self {
            L7Error::HandshakeTimeout(_) => return TlsFailure::Timeout,
            L7Error::Handshake(e) => e,
        };
        if let Some(tls) = e.get_ref().and_then(|s| s.downcast_ref::<rustls::Error>()) {
            use rustls::AlertDescription as A;
            return match tls {
                rustls::Error::AlertReceived(
                    A::UnknownCA
                    | A::BadCertificate
                    | A::CertificateUnknown
                    | A::CertificateExpired
                    | A::CertificateRevoked
                    | A::UnsupportedCertificate
                    | A::AccessDenied
                    // What a client sends when a signature in our chain does not verify
                    // against the CA it trusts under that name (another CA of the same name).
                    | A::DecryptError,
                ) => TlsFailure::CertificateRejected,
                rustls::Error::AlertReceived(_) => TlsFailure::AlertReceived,
                rustls::Error::PeerIncompatible(_) => TlsFailure::Incompatible,
                rustls::Error::NoApplicationProtocol => TlsFailure::NoAlpn,
                rustls::Error::InvalidMessage(_)
                | rustls::Error::PeerMisbehaved(_)
                | rustls::Error::InappropriateMessage { .. }
                | rustls::Error::InappropriateHandshakeMessage { .. }
                | rustls::Error::PeerSentOversizedRecord
                | rustls::Error::DecryptError => TlsFailure::ProtocolError,
                _ => TlsFailure::Other,
            };
        }
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => TlsFailure::ClientClosed,
            _ => TlsFailure::Other,
        }
    }
}

/// What [`serve`] needs to know about the connection and the daemon.
#[derive(Debug)]
pub struct Session {
    /// The route the connection was routed by.
    pub route: Arc<RouteInfo>,
    /// Its TLS termination (certificate, ALPN).
    pub tls: Arc<rustls::ServerConfig>,
    /// The SNI the client sent (normalised): the only host this connection serves. `None` on
    /// a listener's no-SNI route, whose connections were not routed by a name.
    pub sni: Option<String>,
    /// The real client address.
    pub client: SocketAddr,
    /// The connection's id (its access record's).
    pub conn: u64,
    /// The address the client connected to (the sent PROXY header's destination).
    pub local: SocketAddr,
    /// This connection's byte counters (for its log line).
    pub live: Arc<Live>,
    /// `[proxy] client_hello_timeout`: bounds the TLS handshake too.
    pub handshake_timeout: Duration,
    /// `[proxy] connect_timeout`: bounds establishing the backend connection.
    pub connect_timeout: Duration,
    /// `[proxy] response_timeout`: from a request sent to the backend to its response head.
    pub response_timeout: Duration,
    /// `[proxy] request_header_timeout`: an HTTP/1.1 request head must arrive within it.
    pub request_header_timeout: Duration,
    /// `[proxy] keepalive_timeout`: no request in flight for this long closes the connection.
    pub keepalive_timeout: Duration,
    /// `[proxy] idle_timeout`.
    pub idle_timeout: Duration,
    /// Request framing limits (`[proxy] max_request_head`).
    pub limits: limits::Limits,
    /// Where member state changes go (events) and passive health settings.
    pub state: Arc<crate::model::state::State>,
    /// The listener: each request looks the connection's route up in its current table.
    pub listener: Arc<crate::model::state::ListenerState>,
}

/// Terminates TLS on `stream` (after replaying `peeked`) and reverse-proxies its requests
/// until the client closes, the connection idles out or, after `shutdown`, drains.
pub async fn serve(
    stream: TcpStream,
    peeked: Vec<u8>,
    session: Session,
    pool: &Arc<Pool>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<L7End, L7Error> {
    let executor = TaskExecutor {
        tasks: tasks.clone(),
        span: tracing::Span::current(),
    };
    let activity = Arc::new(Activity::new());
    let tls = handshake(stream, peeked, &session, &activity).await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");

    let in_flight = Arc::new(InFlight::new());
    let tunnels = websocket::Tunnels::new(
        executor.clone(),
        session.connect_timeout,
        session.response_timeout,
        session.idle_timeout,
    );
    // What the rest needs of the session, which `connection_ctx` takes.
    let (limits, first_request, keepalive, idle) = (
        session.limits,
        session.request_header_timeout,
        session.keepalive_timeout,
        session.idle_timeout,
    );
    let state = Arc::clone(&session.state);
    let ctx = connection_ctx(session, pool, &in_flight, &tunnels);
    // The connection's end, whichever way this returns: what its backend work watches.
    let _closed_on_return = ctx.closed.clone().drop_guard();

    // A client that chose HTTP/2 by ALPN is served by `h2_server`: its streams are polled
    // by this task, not spawned one task each as hyper's server does. HTTP/1.1, and a
    // client that named no protocol (prior-knowledge HTTP/2 is told apart by its preface),
    // go to hyper.
    let watch = Watch {
        shutdown: &shutdown,
        in_flight: &in_flight,
        state: &state,
        // HTTP/2's GOAWAY closes race-free; HTTP/1.1 (and what may still turn out to be
        // prior-knowledge HTTP/2) has nothing like it.
        linger_idle: !h2,
        activity: &activity,
        routing: &ctx.routing,
        first_request,
        keepalive,
        idle,
    };
    let ctx = Arc::clone(&ctx);
    // Each server is its own boxed future: this connection's task then holds only the one it
    // runs, sized for what it holds while waiting, not the larger of the two (an idle TLS
    // connection's memory, docs/BENCHMARKS.md).
    if h2 {
        // Two steps, each boxed, the first dropped before the second exists: a box keeps
        // the room of all its future ever held, and both hold the TLS stream.
        let io = match Box::pin(h2_server::first_bytes(tls, &watch)).await {
            Ok(io) => io,
            Err(end) => return Ok(end),
        };
        return Ok(Box::pin(h2_server::run(io, ctx, limits, watch)).await);
    }
    let hyper = Hyper {
        executor,
        tunnels,
        request_header_timeout: first_request,
        limits,
    };
    // The stream in a box of its own: hyper's connection borrows its builder, so both are
    // made inside the future, which would then keep room for the stream twice (as its
    // argument and inside the connection); boxed, the argument is a pointer.
    Ok(Box::pin(serve_hyper(Box::new(tls), ctx, hyper, watch)).await)
}

/// The TLS handshake on the client stream (after replaying `peeked`), within the session's
/// handshake timeout. The stream counts every byte into the connection's and the route's
/// counters and notes `activity` from the first one.
async fn handshake(
    stream: TcpStream,
    peeked: Vec<u8>,
    session: &Session,
    activity: &Arc<Activity>,
) -> Result<tokio_rustls::server::TlsStream<Metered>, L7Error> {
    let metered = Metered {
        inner: Rewind::new(peeked, stream),
        conn: Arc::clone(&session.live),
        route: Arc::clone(&session.route),
        activity: Arc::clone(activity),
    };
    // Boxed, and dropped once done: the handshake's state (the stream and rustls' session
    // being set up) would otherwise stay as room in the connection's future for its life.
    let accept =
        Box::pin(tokio_rustls::TlsAcceptor::from(Arc::clone(&session.tls)).accept(metered));
    let tls = match tokio::time::timeout(session.handshake_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(L7Error::Handshake(e)),
        Err(_) => return Err(L7Error::HandshakeTimeout(session.handshake_timeout)),
    };
    let negotiated = tls.get_ref().1;
    tracing::debug!(
        alpn = negotiated
            .alpn_protocol()
            .map(String::from_utf8_lossy)
            .as_deref()
            .unwrap_or("-"),
        version = ?negotiated.protocol_version(),
        group = ?negotiated.negotiated_key_exchange_group().map(|g| g.name()),
        "TLS established"
    );
    Ok(tls)
}

/// What every request of the connection reads ([`downstream::Ctx`]): its route and the
/// routing to that route's current version and backends, the client, the limits, its
/// requests in flight and tunnels. Its `closed` token is the connection's end: the caller
/// cancels it when the connection ends.
fn connection_ctx(
    session: Session,
    pool: &Arc<Pool>,
    in_flight: &Arc<InFlight>,
    tunnels: &websocket::Tunnels,
) -> Arc<downstream::Ctx> {
    let closed = CancellationToken::new();
    let route = Arc::clone(&session.route);
    let talkers = Arc::clone(&session.state.talkers);
    let routing = routing::Routing::new(
        session.listener,
        session.sni.clone(),
        Arc::clone(&route),
        routing::Endpoints {
            pool: Arc::clone(pool),
            client: session.client,
            local: session.local,
            timeouts: upstream::Timeouts {
                connect: session.connect_timeout,
                response: session.response_timeout,
            },
            state: session.state,
            closed: closed.clone(),
        },
    );
    Arc::new(downstream::Ctx {
        routing,
        route,
        sni: session.sni,
        client: session.client,
        conn: session.conn,
        local: session.local,
        forwarded: headers::ClientAddr::new(session.client.ip()),
        closed,
        in_flight: Arc::clone(in_flight),
        limits: session.limits,
        tunnels: tunnels.clone(),
        talkers,
    })
}

/// What [`serve_hyper`] needs besides the connection and its watch.
struct Hyper {
    executor: TaskExecutor,
    tunnels: websocket::Tunnels,
    request_header_timeout: Duration,
    limits: limits::Limits,
}

/// Serves HTTP/1.1 (and HTTP/2 by prior knowledge) with hyper's server until the connection
/// ends.
async fn serve_hyper<T>(
    tls: Box<T>,
    ctx: Arc<downstream::Ctx>,
    hyper: Hyper,
    watch: Watch<'_>,
) -> L7End
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Hyper {
        executor,
        tunnels,
        request_header_timeout,
        limits,
    } = hyper;
    let mut builder = auto::Builder::new(executor);
    // With a timer, hyper's HTTP/1.1 header read timeout applies: a client must send each
    // request's head within `request_header_timeout`.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(request_header_timeout);
    builder
        .http2()
        .initial_stream_window_size(crate::connectors::pool::STREAM_WINDOW)
        .initial_connection_window_size(crate::connectors::pool::CONNECTION_WINDOW)
        // RFC 8441: HTTP/2 clients may open WebSockets with extended CONNECT.
        .enable_connect_protocol();
    limits::configure(&mut builder, limits);
    // Boxed: hyper moves each request's future into a task of its own, and this future is
    // large (it carries the backend dial); a pointer is cheaper to move than kilobytes of
    // state (measured: -13% CPU per request, docs/BENCHMARKS.md).
    // The route's counters, for the 431 hyper answers without a request reaching the service.
    let ctx_stats = Arc::clone(&ctx.route);
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let req = req.map(crate::protocols::body::ReqBody::Client);
        Box::pin(downstream::handle(Arc::clone(&ctx), req))
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);

    let mut closing = None;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                // An HTTP/1.1 connection that switched to a WebSocket handed its socket to
                // the tunnel: the connection lasts as long as the tunnel does (cut, like an L4
                // relay, when the grace period of a shutdown ends and this future is dropped).
                tokio::select! {
                    () = tunnels.finished() => {}
                    () = watch.activity.idle_for(watch.idle) => return L7End::IdleTimeout,
                }
                return match (res, closing) {
                    // After our GOAWAY a client may just hang up (no TLS close_notify), which
                    // hyper reports as an error: it is still the close we started.
                    (_, Some(why)) => why,
                    (Ok(()), None) => L7End::Closed,
                    (Err(e), None) => match e.downcast::<hyper::Error>() {
                        // hyper's own header timer: a head begun and not finished in time.
                        Ok(e) if e.is_timeout() => L7End::RequestHeaderTimeout,
                        // A head over max_request_head: hyper answered 431 (or 414) itself and
                        // closed. Counted as a request and its answer, as the proxy's own 431s.
                        Ok(e) if e.is_parse_too_large() => {
                            let stats = &ctx_stats.stats;
                            stats.requests.fetch_add(1, Ordering::Relaxed);
                            stats.count_response(431);
                            L7End::Error(*e)
                        }
                        Ok(e) => L7End::Error(*e),
                        Err(e) => L7End::Failed(e.to_string()),
                    },
                };
            }
            // Nothing asked within request_header_timeout: nothing to drain either.
            () = watch.in_flight.no_first_request(watch.first_request) => {
                return L7End::RequestHeaderTimeout;
            }
            why = watch.closing(), if closing.is_none() => {
                closing = Some(why);
                conn.as_mut().graceful_shutdown();
            }
            () = watch.activity.idle_for(watch.idle) => return L7End::IdleTimeout,
        }
    }
}

/// The client stream, counting the bytes that cross it (TLS records, ClientHello included)
/// into the connection's and the route's counters and noting activity for the idle timeout.
struct Metered {
    inner: Rewind<TcpStream>,
    conn: Arc<Live>,
    route: Arc<RouteInfo>,
    activity: Arc<Activity>,
}

impl Metered {
    fn count(&self, up: bool, n: usize) {
        if n == 0 {
            return;
        }
        let n = n as u64;
        let (c, r) = if up {
            (&self.conn.bytes.up, &self.route.stats.bytes.up)
        } else {
            (&self.conn.bytes.down, &self.route.stats.bytes.down)
        };
        c.fetch_add(n, Ordering::Relaxed);
        r.fetch_add(n, Ordering::Relaxed);
        self.activity.touch();
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let n = buf.filled().len() - before;
            self.count(true, n);
        }
        res
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.count(false, n);
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            self.count(false, n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
