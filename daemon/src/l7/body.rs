//! The bodies that cross the proxy: [`ReqBody`] towards the backend, [`RespBody`] back from it.
//!
//! No I/O of their own; both stream frame by frame (data and trailers), never buffering.
//! [`RespBody`] carries the backend connection's lease: an HTTP/2 stream slot is freed, and an
//! HTTP/1.1 connection goes back to the pool, only when the response body has ended, since
//! until then the backend connection is still busy with it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::{H1Lease, StreamSlot};
use crate::backends::Pick;

/// A request body sent to a backend: the client's, streamed, or none (a replayed request,
/// an upgrade).
#[derive(Debug)]
pub enum ReqBody {
    /// The client's body as it arrives.
    Client(Incoming),
    /// No body.
    Empty,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Client(body) => Pin::new(body).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client(body) => body.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Client(body) => body.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// What a response body holds of its backend connection.
#[derive(Debug)]
pub enum Held {
    /// An HTTP/2 stream slot, freed on drop.
    Stream(#[allow(dead_code)] StreamSlot),
    /// An HTTP/1.1 connection, and whether it may be reused once the body is done (no
    /// `Connection: close` on either side).
    Connection(Option<H1Lease>, bool),
}

/// A backend's response body, holding its backend connection until it ends.
#[derive(Debug)]
pub struct RespBody {
    inner: Incoming,
    held: Held,
    /// The body was read to its end (only then is an HTTP/1.1 connection reusable).
    done: bool,
    /// The route member serving it: counted active until the body ends.
    member: Option<Pick>,
}

impl RespBody {
    /// Wraps `inner`, keeping `held` until it ends or is dropped.
    pub fn new(inner: Incoming, held: Held) -> Self {
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
}

impl RespBody {
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

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(None) => self.release(true),
            // The last frame: hand the connection back now, before the client has it and
            // can send its next request (released on drop, that request would race the
            // return and open a connection of its own).
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(true),
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
