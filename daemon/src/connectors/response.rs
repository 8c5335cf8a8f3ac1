//! A backend's response body ([`RespBody`]), holding its backend connection's lease: an
//! HTTP/2 stream slot is freed, and an HTTP/1.1 connection goes back to the pool, only when
//! the response body has ended, since until then the backend connection is still busy with
//! it.
//!
//! No I/O of its own; it streams frame by frame (data and trailers), never buffering. Sits
//! above `pool` (it holds the pool's leases) and `body` (its frames and errors), below the
//! request path that hands it to the client.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::{H1Lease, StreamSlot};
use crate::model::backends::Pick;
use crate::protocols::body::{BackendError, H2Recv};

/// What a response body holds of its backend connection.
#[derive(Debug)]
pub enum Held {
    /// An HTTP/2 stream slot, freed on drop.
    Stream(#[allow(dead_code)] StreamSlot),
    /// An HTTP/2 stream slot shared with the request body's pipe, freed when both are done:
    /// a stream counts against the backend's limit until both halves end.
    SharedStream(#[allow(dead_code)] std::sync::Arc<StreamSlot>),
    /// An HTTP/1.1 connection, and whether it may be reused once the body is done (no
    /// `Connection: close` on either side).
    Connection(Option<H1Lease>, bool),
}

/// The frames of a backend's response, as the connection's library delivers them.
#[derive(Debug)]
enum Frames {
    /// hyper's body of an HTTP/1.1 response.
    Http1(Incoming),
    /// The receive half of an HTTP/2 stream.
    H2(H2Recv),
}

/// A backend's response body, holding its backend connection until it ends.
#[derive(Debug)]
pub struct RespBody {
    inner: Frames,
    held: Held,
    /// The body was read to its end (only then is an HTTP/1.1 connection reusable).
    done: bool,
    /// The route member serving it: counted active until the body ends.
    member: Option<Pick>,
}

impl RespBody {
    /// An HTTP/1.1 response body, keeping `held` until it ends or is dropped.
    pub fn http1(inner: Incoming, held: Held) -> Self {
        Self::of(Frames::Http1(inner), held)
    }

    /// An HTTP/2 stream's response body; `content_length` is the response's header, if any.
    pub fn h2(recv: h2::RecvStream, content_length: Option<u64>, held: Held) -> Self {
        Self::of(Frames::H2(H2Recv::new(recv, content_length)), held)
    }

    fn of(inner: Frames, held: Held) -> Self {
        RespBody {
            inner,
            held,
            done: false,
            member: None,
        }
    }

    /// The same body, counting as active on `member` until it ends.
    pub fn with_member(mut self, member: Pick) -> Self {
        self.member = Some(member);
        self
    }

    /// Hands an HTTP/1.1 connection back (once): to the pool if it is reusable and the body
    /// is `done`, else to be closed.
    fn release(&mut self, done: bool) {
        self.done |= done;
        if self.done {
            // The member's request is over at its last frame, like the connection's.
            self.member = None;
        }
        if let Held::Connection(lease, reusable) = &mut self.held
            && let Some(lease) = lease.take()
        {
            lease.finish(*reusable && self.done);
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        // A body nobody read (HEAD, 204, 304) is done when it says it is.
        let done = self.inner.is_end_stream();
        self.release(done);
    }
}

impl Frames {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BackendError>>> {
        match self {
            Frames::Http1(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BackendError::from))),
            Frames::H2(body) => body
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BackendError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Frames::Http1(body) => body.is_end_stream(),
            Frames::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Frames::Http1(body) => body.size_hint(),
            Frames::H2(body) => body.size_hint(),
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BackendError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BackendError>>> {
        let res = self.inner.poll_frame(cx);
        match &res {
            Poll::Ready(None) => self.release(true),
            // The last frame of an HTTP/1.1 body: hand the connection back now, before the
            // client has it and can send its next request (released on drop, that request
            // would race the return and open a connection of its own). Asked only there:
            // on HTTP/2 the question takes the connection's stream lock, and the slot is
            // freed at the end of the stream anyway.
            Poll::Ready(Some(Ok(_)))
                if matches!(self.held, Held::Connection(..)) && self.inner.is_end_stream() =>
            {
                self.release(true)
            }
            Poll::Ready(Some(Err(_))) => {
                if let Held::Connection(_, reusable) = &mut self.held {
                    *reusable = false;
                }
            }
            _ => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
