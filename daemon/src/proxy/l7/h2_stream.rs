//! An HTTP/2 stream as a byte stream: the client side of a WebSocket tunnel that an HTTP/2
//! client opened with extended CONNECT (RFC 8441) on a connection [`super::h2_server`] serves.
//!
//! I/O: none of its own; reads and writes go through the stream's halves, which the
//! connection's task flushes. Reads hand their flow-control window back as bytes are taken;
//! a write waits for window when the stream has none, so at most one write's bytes sit
//! beyond the client's window. Shutdown ends the stream (END_STREAM), which is how the
//! tunnel closes in order.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::protocols::body;

/// Where the server puts a switched stream's send half once the response head is sent.
pub type Handoff = oneshot::Sender<h2::SendStream<Bytes>>;

/// Both halves of one HTTP/2 stream, read and written as bytes.
#[derive(Debug)]
pub struct StreamIo {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    /// Received bytes not read yet.
    unread: Bytes,
    /// END_STREAM was sent.
    ended: bool,
}

impl StreamIo {
    /// The stream whose halves these are.
    pub fn new(send: h2::SendStream<Bytes>, recv: h2::RecvStream) -> Self {
        StreamIo {
            send,
            recv,
            unread: Bytes::new(),
            ended: false,
        }
    }
}

/// An h2 error as the relay sees it: a peer's orderly reset is an end, anything else fails.
fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::ErrorKind::Other.into());
    }
    match e.reason() {
        Some(h2::Reason::STREAM_CLOSED) => io::Error::new(io::ErrorKind::BrokenPipe, e),
        _ => io::Error::other(e),
    }
}

impl AsyncRead for StreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.unread.is_empty() {
            self.unread = loop {
                match ready!(self.recv.poll_data(cx)) {
                    None => return Poll::Ready(Ok(())),
                    Some(Ok(data)) if data.is_empty() => {}
                    Some(Ok(data)) => break data,
                    Some(Err(e)) => {
                        return Poll::Ready(match e.reason() {
                            // The client ended the tunnel by resetting it: an end, not a fault.
                            Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL) => Ok(()),
                            _ => Err(io_error(e)),
                        });
                    }
                }
            };
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread[..n]);
        self.unread.advance(n);
        let _ = self.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Poll::Ready(e) = body::poll_reset(&mut self.send, cx) {
            return Poll::Ready(Err(io_error(e)));
        }
        // As for bodies: a byte of window claimed, the whole write sent once there is some.
        match ready!(body::poll_window(&mut self.send, cx)) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
        self.send
            .send_data(Bytes::copy_from_slice(buf), false)
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes what the stream buffered.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            self.ended = true;
            self.send.send_data(Bytes::new(), true).map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}
