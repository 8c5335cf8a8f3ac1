//! Serving HTTP/2 clients with the `h2` crate: one task per client connection polls the
//! connection and all of its streams.
//!
//! I/O: the client's TLS stream, once ALPN chose `h2`, until the connection ends. Each stream
//! is a future in the connection's own task (a `FuturesUnordered`), not a task of its own:
//! its request goes through [`downstream::handle`], its response head and body go back on the
//! stream within the client's flow-control window (`ToStream`). Streams and connection
//! wake one task, so a request costs no task spawn and no hand-off between tasks on the
//! client side (hyper's server spawns a task per stream; measured in docs/BENCHMARKS.md).
//! A WebSocket the client opens with extended CONNECT gets the stream's send half after its
//! 200 (`Handoff`), the tunnel's client side.
//!
//! Invariants: the settings and abuse policy are those hyper's builder gets
//! ([`limits::configure_h2`], the windows of `connectors::pool`). Every accepted stream gets a
//! response or a reset. A client's reset before the response head drops the request's
//! future, and with it the backend stream (reset `CANCEL`). A response body that fails
//! resets the client's stream with `INTERNAL_ERROR`. Shutdown, a route gone and the
//! keep-alive timeout send GOAWAY and let the open streams finish; the idle timeout, and a
//! client that opened no stream within `request_header_timeout`, end the connection. A client
//! that resets more than `h2_max_client_resets` accepted streams before their response within
//! `h2_client_reset_window` (rapid reset on accepted streams: each one cost a backend request
//! h2's own pending-accept budget never sees) gets GOAWAY ENHANCE_YOUR_CALM, counted on the
//! route (`rapid_resets`).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{HeaderValue, Request, Response, header};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::downstream::{self, Ctx};
use super::lifecycle::{L7End, Watch};
use super::limits::{self, Limits};
use crate::connectors::pool;
use crate::protocols::body::{self, H2Recv, ReqBody, ToStream};
use crate::protocols::io::Rewind;

/// The client connection preface's length (RFC 9113 §3.4): what is read before h2 starts.
const PREFACE_LEN: usize = 24;

/// What the connection's poll loop stopped for.
enum Event {
    /// Time to close gracefully (shutdown, route gone, keep-alive over), with the reason.
    Closing(L7End),
    /// No first request within `request_header_timeout`.
    NoRequest,
    /// Too many accepted streams reset by the client within the window.
    RapidReset,
    Idle,
    /// The connection ended: closed (`Ok`) or failed.
    Ended(Result<(), h2::Error>),
}

/// The HTTP/2 connection: h2's handshake (our SETTINGS out, the client's preface in), then
/// the connection. One value, so the future holds the larger of the two, not both.
enum Phase<T> {
    Handshake(h2::server::Handshake<T, Bytes>),
    Serving(h2::server::Connection<T, Bytes>),
}

// `serve` and `run` are plain functions returning an `async move` block: the block's
// captures are its state, where an `async fn` would also copy each argument into a local of
// its own (rust-lang/rust#62958), doubling the kilobyte-sized TLS stream in a future every
// connection holds.

/// Waits for the first bytes of a client that chose HTTP/2 by ALPN: `io` with them to replay,
/// for [`run`], or how the connection ended before any.
///
/// Its own future, which the caller boxes and drops before boxing [`run`]: a future keeps
/// the room of everything it ever held, and this one holds the TLS stream, which `run`
/// holds again (an idle connection would carry both for its life).
pub(super) fn first_bytes<'a, T>(
    io: T,
    watch: &'a Watch<'a>,
) -> impl Future<Output = Result<Rewind<T>, L7End>> + 'a
where
    T: AsyncRead + AsyncWrite + Unpin + 'a,
{
    let mut io = io;
    async move {
        // Nothing of HTTP/2 exists until the client's first bytes: h2's handshake allocates
        // the connection's read and write buffers (24 KiB), which a connection that only
        // finished TLS should not hold (hyper's server, reading the preface first, did not
        // either).
        let mut first = [0u8; PREFACE_LEN];
        let n = tokio::select! {
            read = io.read(&mut first) => match read {
                Ok(0) => return Err(L7End::Closed),
                Ok(n) => n,
                Err(e) => return Err(L7End::Io(e)),
            },
            () = watch.activity.idle_for(watch.idle) => return Err(L7End::IdleTimeout),
            () = watch.in_flight.no_first_request(watch.first_request) => {
                return Err(L7End::RequestHeaderTimeout);
            }
            // Nothing of HTTP/2 to drain yet.
            why = watch.closing() => return Err(why),
        };
        Ok(Rewind::new(first[..n].to_vec(), io))
    }
}

/// Serves the connection once the client's first bytes are in ([`first_bytes`]): h2's
/// handshake, then its streams, until the connection ends. The caller boxes it: the
/// connection's state (h2's codec, the streams) is allocated only now.
pub(super) fn run<'a, T>(
    io: T,
    ctx: Arc<Ctx>,
    limits: Limits,
    watch: Watch<'a>,
) -> impl Future<Output = L7End> + 'a
where
    T: AsyncRead + AsyncWrite + Unpin + 'a,
{
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(pool::STREAM_WINDOW)
        .initial_connection_window_size(pool::CONNECTION_WINDOW)
        // RFC 8441: HTTP/2 clients may open WebSockets with extended CONNECT.
        .enable_connect_protocol();
    limits::configure_h2(&mut builder, limits);
    let mut phase = Phase::Handshake(builder.handshake::<_, Bytes>(io));
    async move {
        let mut idle = pin!(watch.activity.idle_for(watch.idle));
        let mut closing_soon = pin!(watch.closing());
        let mut no_request = pin!(watch.in_flight.no_first_request(watch.first_request));
        let mut streams = FuturesUnordered::new();
        let mut closing: Option<L7End> = None;
        let mut resets = ResetWindow::new(limits);
        loop {
            let event = std::future::poll_fn(|cx| {
                if closing.is_none()
                    && let Poll::Ready(why) = closing_soon.as_mut().poll(cx)
                {
                    return Poll::Ready(Event::Closing(why));
                }
                if no_request.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::NoRequest);
                }
                if idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Idle);
                }
                if let Phase::Handshake(handshake) = &mut phase {
                    match Pin::new(handshake).poll(cx) {
                        Poll::Ready(Ok(conn)) => phase = Phase::Serving(conn),
                        Poll::Ready(Err(e)) => return Poll::Ready(Event::Ended(Err(e))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                let Phase::Serving(conn) = &mut phase else {
                    unreachable!("the handshake is done");
                };
                loop {
                    // Streams first: what they queue is written by the connection's poll
                    // below, in the same pass.
                    while let Poll::Ready(Some(reset)) = streams.poll_next_unpin(cx) {
                        if reset == Ended::ResetByClient && resets.exceeded() && closing.is_none() {
                            return Poll::Ready(Event::RapidReset);
                        }
                    }
                    match conn.poll_accept(cx) {
                        Poll::Ready(Some(Ok((req, respond)))) => {
                            // Boxed: `FuturesUnordered` keeps a stub task the size of its
                            // future for the connection's life, and a stream's future
                            // carries the request's whole pipeline (kilobytes an idle
                            // connection would hold; measured in docs/BENCHMARKS.md).
                            streams.push(Box::pin(stream(Arc::clone(&ctx), req, respond)));
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Event::Ended(Err(e))),
                        Poll::Ready(None) => return Poll::Ready(Event::Ended(Ok(()))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            })
            .await;
            let conn = match &mut phase {
                Phase::Serving(conn) => Some(conn),
                Phase::Handshake(_) => None,
            };
            match (event, conn) {
                // Before the handshake is done there is nothing to drain.
                (Event::Closing(why), None) => return why,
                // GOAWAY, and the open streams finish.
                (Event::Closing(why), Some(conn)) => {
                    closing = Some(why);
                    conn.graceful_shutdown();
                }
                (Event::NoRequest, _) => return L7End::RequestHeaderTimeout,
                (Event::RapidReset, Some(conn)) => {
                    ctx.route
                        .stats
                        .rapid_resets
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        resets = limits.h2_max_client_resets,
                        window = ?limits.h2_client_reset_window,
                        "client reset too many accepted streams: GOAWAY ENHANCE_YOUR_CALM"
                    );
                    closing = Some(L7End::Failed(format!(
                        "rapid reset: more than {} accepted streams reset by the client within {:?}",
                        limits.h2_max_client_resets, limits.h2_client_reset_window
                    )));
                    // The open streams are dropped (their backend streams cancelled).
                    streams.clear();
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                }
                (Event::RapidReset, None) => unreachable!("streams exist only once serving"),
                (Event::Idle, _) => return L7End::IdleTimeout,
                (Event::Ended(res), _) => {
                    return match (res, closing) {
                        // After our GOAWAY a client may just hang up: still the close we
                        // started.
                        (_, Some(why)) => why,
                        (Ok(()), None) => L7End::Closed,
                        (Err(e), None) => L7End::H2(e),
                    };
                }
            }
        }
    }
}

/// How a stream ended, as the connection's rapid-reset count needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Answered (or failed on our side).
    Answered,
    /// The client reset it before its response head.
    ResetByClient,
}

/// The client's resets of accepted streams in the current window (a fixed window: cheap,
/// and a burst across a window edge gets at most twice the limit).
struct ResetWindow {
    max: u32,
    window: std::time::Duration,
    started: tokio::time::Instant,
    count: u32,
}

impl ResetWindow {
    fn new(limits: Limits) -> Self {
        ResetWindow {
            max: limits.h2_max_client_resets,
            window: limits.h2_client_reset_window,
            started: tokio::time::Instant::now(),
            count: 0,
        }
    }

    /// Counts one reset; true once more than `max` fell in one window (never with `max` 0).
    fn exceeded(&mut self) -> bool {
        if self.max == 0 {
            return false;
        }
        let now = tokio::time::Instant::now();
        if now.duration_since(self.started) >= self.window {
            self.started = now;
            self.count = 0;
        }
        self.count += 1;
        self.count > self.max
    }
}

/// One client stream: its request handled, its response sent back.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (rust-lang/rust#62958)"
)]
fn stream(
    ctx: Arc<Ctx>,
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> impl Future<Output = Ended> + Send + 'static {
    // Boxed per stream and moved whole when created: no second copy of the arguments.
    async move {
        let content_length = body::content_length(req.headers());
        let (mut parts, recv) = req.into_parts();
        // The extended CONNECT's `:protocol`, in the type the upgrade check reads (hyper's,
        // which the connections hyper serves carry).
        if let Some(protocol) = parts.extensions.remove::<h2::ext::Protocol>() {
            parts
                .extensions
                .insert(hyper::ext::Protocol::from(protocol.as_str()));
        }
        let req = Request::from_parts(parts, ReqBody::H2(H2Recv::new(recv, content_length)));
        let mut handled = pin!(downstream::handle(ctx, req));
        // A client's reset before the head is an abandoned request: drop its future. The reset
        // is looked at first: it also fails the request body, which can end the request with a
        // 502 in the same wake-up, and a client that left is not a backend error.
        let resp = std::future::poll_fn(|cx| {
            if respond.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            handled.as_mut().poll(cx).map(Some)
        })
        .await;
        let Some(Ok(resp)) = resp else {
            tracing::debug!("stream reset by the client before its response");
            return Ended::ResetByClient;
        };
        let (head, mut body) = resp.into_parts();
        let mut head = Response::from_parts(head, ());
        if let Some(handoff) = body.take_handoff() {
            // A switched WebSocket: the stream is the tunnel's from here.
            match respond.send_response(head, false) {
                Ok(send) => drop(handoff.send(send)),
                Err(e) => tracing::debug!("WebSocket answer to the client failed: {e}"),
            }
            return Ended::Answered;
        }
        let end = body.is_end_stream();
        if !end
            && !head.headers().contains_key(header::CONTENT_LENGTH)
            && let Some(len) = body.size_hint().exact()
        {
            head.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        let send = match respond.send_response(head, end) {
            Ok(send) => send,
            Err(e) => {
                tracing::debug!("response head to the client failed: {e}");
                respond.send_reset(h2::Reason::INTERNAL_ERROR);
                return Ended::Answered;
            }
        };
        if end {
            return Ended::Answered;
        }
        let mut to = ToStream::new(send);
        let sent = std::future::poll_fn(|cx: &mut Context<'_>| {
            to.poll_send(Pin::new(&mut body), h2::Reason::INTERNAL_ERROR, cx)
        })
        .await;
        if let Err(e) = sent {
            tracing::debug!("response body to the client ended: {e}");
        }
        Ended::Answered
    }
}
