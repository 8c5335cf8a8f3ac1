//! One request written on a leased backend connection and its response head awaited: the
//! request put in the form the lease's HTTP version needs ([`to_wire`]), sent on the HTTP/2
//! stream or HTTP/1.1 connection, its body piped to the backend by a task of the pool's, and
//! the response handed back as a [`RespBody`] that carries the lease until it ends. Also the
//! active health checks' HTTP probe, which is one such request.
//!
//! I/O: the request's bytes on the lease's connection. No retry and no member choice here:
//! a failure comes back as [`Failed`] with the request when it is known unsent, and the
//! caller (`proxy::l7::upstream`) applies the retry rules.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version, header};
use http_body::Body;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::connector::Wire;
use super::pool::{H1Lease, Lease, Pick as ConnPick, StreamSlot, TargetPool};
use super::response::{Held, RespBody};
use crate::protocols::body::{self, BackendError, ReqBody, ToStream};

/// A failed attempt: the error, and the request if it is known not to have been sent.
pub(crate) struct Failed {
    /// What went wrong.
    pub(crate) error: BackendError,
    /// The request, when it is known not to have been sent (it may go out again).
    pub(crate) unsent: Option<Request<ReqBody>>,
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (rust-lang/rust#62958)"
)]
pub(crate) fn send_on<'a>(
    lease: Lease,
    mut req: Request<ReqBody>,
    scheme: &'a Scheme,
) -> impl Future<Output = Result<Response<RespBody>, Failed>> + Send + 'a {
    // A request's future is moved whole when created and boxed: no second copy of `req`.
    async move {
        to_wire(&mut req, lease.wire(), scheme);
        match lease {
            Lease::H2 { sender, slot } => send_h2(sender, slot, req).await,
            // Boxed: hyper's HTTP/1.1 send is twice the size of the HTTP/2 path, and every
            // request's future would carry room for it.
            Lease::Http1(lease) => Box::pin(send_h1(lease, req)).await,
        }
    }
}

/// [`send_on`] for an HTTP/1.1 connection: one request at a time.
async fn send_h1(mut lease: H1Lease, req: Request<ReqBody>) -> Result<Response<RespBody>, Failed> {
    if let Err(error) = lease.sender().ready().await {
        return Err(Failed {
            error: error.into(),
            unsent: Some(req),
        });
    }
    // The request asks for no close: `headers::rewrite_request` removed its `Connection`
    // (and a health probe has none).
    match lease.sender().try_send_request(req).await {
        Ok(resp) => {
            let reusable = !wants_close(resp.headers()) && resp.version() == Version::HTTP_11;
            Ok(resp.map(|body| RespBody::http1(body, Held::Connection(Some(lease), reusable))))
        }
        Err(mut e) => Err(Failed {
            unsent: e.take_message(),
            error: e.into_error().into(),
        }),
    }
}

/// Opens `req`'s stream on the HTTP/2 connection `sender` belongs to, hands its body to a
/// pipe, and awaits the response head.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (rust-lang/rust#62958)"
)]
fn send_h2(
    mut sender: h2::client::SendRequest<Bytes>,
    slot: StreamSlot,
    req: Request<ReqBody>,
) -> impl Future<Output = Result<Response<RespBody>, Failed>> + Send + 'static {
    // A request's future is moved whole when created and boxed: no second copy of `req`.
    async move {
        // The lease's handle was found ready at checkout (`TargetPool::reuse`), with no await
        // since. Should a GOAWAY land in between, `send_request` fails with it and opens no
        // stream; the head is gone with it, so only a bodyless request is sent again (from
        // its replay copy, the GOAWAY saying it was not processed).
        // Valid for HTTP/2 already: `headers::rewrite_request` removed every connection-specific
        // field (h2 would refuse the request otherwise).
        let (parts, body) = req.into_parts();
        let end_of_stream = body.is_end_stream();
        let (response, stream) = sender
            .send_request(Request::from_parts(parts, ()), end_of_stream)
            .map_err(|e| Failed {
                error: e.into(),
                unsent: None,
            })?;
        // A request body goes to the backend through a pipe task. Dropped before the head
        // came (response timeout, client gone), the request resets the stream through it;
        // once the head is here the pipe goes on (a gRPC stream's request half). The stream
        // counts against the connection's limit (h2's count, which queues a stream opened
        // past it) until both halves are done, so the pipe holds the slot too: an upload
        // going on after its answer keeps its place, and the pool opens another connection
        // rather than queueing the next request behind it. A bodyless request's slot is
        // the response body's alone (no shared allocation on the common path).
        let (held, abandoned) = if end_of_stream {
            (Held::Stream(slot), None)
        } else {
            let slot = Arc::new(slot);
            let (abandon, abandoned) = oneshot::channel();
            let pipe = pipe_body(body, stream, abandoned, Arc::clone(&slot));
            slot.tasks().spawn(pipe);
            (Held::SharedStream(slot), Some(AbandonOnDrop(Some(abandon))))
        };
        let resp = response.await.map_err(|e| Failed {
            error: e.into(),
            unsent: None,
        })?;
        if let Some(mut guard) = abandoned {
            guard.0 = None;
        }
        let content_length = body::content_length(resp.headers());
        Ok(resp.map(|recv| RespBody::h2(recv, content_length, held)))
    }
}

/// Tells a request body's pipe, when dropped armed, that its request was abandoned.
struct AbandonOnDrop(Option<oneshot::Sender<()>>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(abandon) = self.0.take() {
            let _ = abandon.send(());
        }
    }
}

/// Copies the client's request body to the backend stream ([`ToStream`]). Ends early,
/// resetting the stream, when the client's body fails or the request is `abandoned`; ends
/// when the backend resets the stream.
async fn pipe_body(
    mut body: ReqBody,
    stream: h2::SendStream<Bytes>,
    mut abandoned: oneshot::Receiver<()>,
    _slot: Arc<StreamSlot>,
) {
    let mut listening = true;
    let mut to = ToStream::new(stream);
    let outcome = std::future::poll_fn(|cx| {
        if listening {
            match std::pin::Pin::new(&mut abandoned).poll(cx) {
                Poll::Ready(Ok(())) => {
                    to.stream_mut().send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(Ok(()));
                }
                // The head came: the request goes on.
                Poll::Ready(Err(_)) => listening = false,
                Poll::Pending => {}
            }
        }
        to.poll_send(std::pin::Pin::new(&mut body), h2::Reason::CANCEL, cx)
    })
    .await;
    if let Err(e) = outcome {
        tracing::debug!("request body to the backend ended: {e}");
    }
}

/// An active health check's HTTP probe: `GET path` with `authority` on a connection of
/// `pool` (the route's protocol and TLS), within `timeout` for the connection and the head.
/// Returns the response status; the body is not read.
pub async fn probe(
    pool: &Arc<TargetPool>,
    authority: Authority,
    path: &str,
    timeout: Duration,
) -> Result<http::StatusCode, String> {
    let scheme = if pool.target().tls.is_some() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let uri = Uri::builder()
        .scheme(scheme.clone())
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = Request::new(ReqBody::Empty);
    *req.uri_mut() = uri;
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("mc-proxy-health-check"),
    );
    let deadline = Instant::now() + timeout;
    let (lease, _) = pool
        .checkout(timeout, ConnPick::Oldest)
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout_at(deadline, send_on(lease, req, &scheme)).await {
        Ok(Ok(resp)) => Ok(resp.status()),
        Ok(Err(failed)) => Err(failed.error.to_string()),
        // The health check's words for a timeout, as its other probes say it.
        Err(_) => Err(format!(
            "timeout after {}",
            humantime::format_duration(timeout)
        )),
    }
}

pub(crate) fn wants_close(headers: &HeaderMap) -> bool {
    // A pass over the names (no hashing) finds no `Connection` in nearly every message.
    if !headers.keys().any(|name| name == header::CONNECTION) {
        return false;
    }
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
