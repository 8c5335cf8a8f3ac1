//! The bodies that cross the proxy towards the backend ([`ReqBody`]), the receive half of an
//! HTTP/2 stream ([`H2Recv`]) that a response body reads, and [`BackendError`], what an
//! exchange with a backend fails with. The response body itself, which holds its backend
//! connection, is `response::RespBody`.
//!
//! No I/O of their own; both stream frame by frame (data and trailers), never buffering.
//! An HTTP/2 response body hands its flow-control window back as the client side takes each
//! chunk ([`H2Recv`]), so a slow client slows the backend's stream instead of making the
//! proxy buffer it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// What an exchange with a backend failed with, in the words of the library that spoke it:
/// hyper on HTTP/1.1 connections, the `h2` crate on HTTP/2 ones.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// On an HTTP/1.1 connection.
    #[error(transparent)]
    Http1(#[from] hyper::Error),
    /// On an HTTP/2 connection or stream.
    #[error(transparent)]
    H2(#[from] h2::Error),
}

/// What reading the client's request body failed with, in the words of the library that
/// serves the client: hyper (HTTP/1.1, and HTTP/2 without ALPN), the `h2` crate (HTTP/2).
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// On a connection hyper serves.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// On an HTTP/2 stream.
    #[error(transparent)]
    H2(#[from] h2::Error),
}

/// A request body sent to a backend: the client's, streamed, or none (a replayed request,
/// an upgrade).
#[derive(Debug)]
pub enum ReqBody {
    /// The client's body as hyper delivers it.
    Client(Incoming),
    /// The client's body on an HTTP/2 stream.
    H2(H2Recv),
    /// No body.
    Empty,
    /// A body whose data bytes are counted as they are read (a request whose access line is
    /// on; boxed: only those pay for it).
    Counted(Box<ReqBody>, Arc<AtomicU64>),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ReqBody::Client(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(ClientBodyError::from))),
            ReqBody::H2(body) => body
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(ClientBodyError::from))),
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Counted(body, counter) => {
                let res = Pin::new(&mut **body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &res
                    && let Some(data) = frame.data_ref()
                {
                    counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                res
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client(body) => body.is_end_stream(),
            ReqBody::H2(body) => body.is_end_stream(),
            ReqBody::Empty => true,
            ReqBody::Counted(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Client(body) => body.size_hint(),
            ReqBody::H2(body) => body.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Counted(body, _) => body.size_hint(),
        }
    }
}

/// The receive half of an HTTP/2 stream as a body: its DATA frames, then its trailers. Each
/// chunk's flow-control window is handed back as the chunk is taken, so the sender may send
/// that much more only once the proxy has passed it on.
#[derive(Debug)]
pub struct H2Recv {
    recv: h2::RecvStream,
    /// Every DATA frame was read; only trailers (if any) are left.
    data_done: bool,
    /// The trailers were handed on (or there were none): nothing is left.
    finished: bool,
    /// What `content-length` said is left, for the size hint.
    remaining: Option<u64>,
}

impl H2Recv {
    /// The body of a message whose head carried `content_length`, if it did.
    pub fn new(recv: h2::RecvStream, content_length: Option<u64>) -> Self {
        H2Recv {
            recv,
            data_done: false,
            finished: false,
            remaining: content_length,
        }
    }

    /// The stream itself, for a tunnel that reads it as bytes.
    pub fn into_inner(self) -> h2::RecvStream {
        self.recv
    }

    /// The next data or trailers frame, its window handed back as it goes.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The chunk leaves the proxy's hands now: the peer may send that much
                    // more on this stream (and connection).
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut self.remaining {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        let trailers = ready!(self.recv.poll_trailers(cx));
        self.finished = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    /// The stream has ended.
    pub fn is_end_stream(&self) -> bool {
        self.finished || self.recv.is_end_stream()
    }

    /// What is known of the body's length.
    pub fn size_hint(&self) -> SizeHint {
        match self.remaining {
            _ if self.is_end_stream() => SizeHint::with_exact(0),
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

/// A message's `content-length`, when it has exactly one that parses.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.parse().ok()
}

/// The peer's reset of `stream`, or its connection's failure, as an error once there is one.
pub fn poll_reset(stream: &mut h2::SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<h2::Error> {
    stream.poll_reset(cx).map(|reset| match reset {
        Ok(reason) => h2::Error::from(reason),
        Err(e) => e,
    })
}

/// Ready once `stream` has send window, claiming only a byte of it, as hyper does: h2 raises
/// the claim to what is buffered once a chunk is handed over, and a stream that claims its
/// whole chunk up front can starve the connection's other streams. `None`: the stream is
/// over (reset or closed).
pub fn poll_window(
    stream: &mut h2::SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<(), h2::Error>>> {
    while stream.capacity() == 0 {
        stream.reserve_capacity(1);
        match ready!(stream.poll_capacity(cx)) {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => return Poll::Ready(None),
        }
    }
    Poll::Ready(Some(Ok(())))
}

/// Why copying a body into an HTTP/2 stream ended early.
#[derive(Debug, thiserror::Error)]
pub enum SendBodyError<E> {
    /// The body being copied failed; the stream was reset.
    #[error("body failed: {0}")]
    Body(E),
    /// The stream was reset by its peer, or its connection failed.
    #[error(transparent)]
    Stream(h2::Error),
}

/// Copies a body into the send half of an HTTP/2 stream, frame by frame, within the stream's
/// flow-control window: DATA as the peer grants room, then trailers or an empty
/// end-of-stream DATA frame. At most one chunk is held beyond the window, so a slow peer
/// slows the body's source instead of making the proxy buffer it.
#[derive(Debug)]
pub struct ToStream {
    stream: h2::SendStream<Bytes>,
    /// A chunk taken from the body that waits for window, and whether it was the last.
    pending: Option<(Bytes, bool)>,
}

impl ToStream {
    /// Copies into `stream`.
    pub fn new(stream: h2::SendStream<Bytes>) -> Self {
        ToStream {
            stream,
            pending: None,
        }
    }

    /// The stream, for a reset.
    pub fn stream_mut(&mut self) -> &mut h2::SendStream<Bytes> {
        &mut self.stream
    }

    /// Copies what `body` has; ready once the body is all sent (or the stream is over on its
    /// own), or with the error that ended it. A failing body resets the stream with
    /// `on_body_error`.
    pub fn poll_send<B>(
        &mut self,
        mut body: Pin<&mut B>,
        on_body_error: h2::Reason,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendBodyError<B::Error>>>
    where
        B: Body<Data = Bytes>,
    {
        let stream = &mut self.stream;
        // Once per poll, not per chunk: a reset is taken in by the connection's task, which
        // does not run while this one does (the client side's streams share its task; a
        // backend connection's driver is on this worker's thread), and the waker registered
        // here stays until h2 wakes it.
        if let Poll::Ready(e) = poll_reset(stream, cx) {
            return Poll::Ready(Err(SendBodyError::Stream(e)));
        }
        loop {
            if let Some((data, last)) = self.pending.take() {
                // The last chunk goes to h2 at once: nothing is read after it, so h2 holding
                // it until the window allows is the one chunk this would hold, and h2 claims
                // the window for what it buffers itself. Saves a claim and a poll of the
                // window (each takes the connection's stream lock) on every response whose
                // body is one chunk.
                if !last {
                    match poll_window(stream, cx) {
                        Poll::Pending => {
                            self.pending = Some((data, last));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(()))) => {}
                        Poll::Ready(Some(Err(e))) => {
                            return Poll::Ready(Err(SendBodyError::Stream(e)));
                        }
                        // The stream is over (reset or closed): nothing more to send.
                        Poll::Ready(None) => return Poll::Ready(Ok(())),
                    }
                }
                stream
                    .send_data(data, last)
                    .map_err(SendBodyError::Stream)?;
                if last {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {
                        let last = body.is_end_stream();
                        stream
                            .send_data(data, last)
                            .map_err(SendBodyError::Stream)?;
                        if last {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Ok(data) => self.pending = Some((data, body.is_end_stream())),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            stream.reserve_capacity(0);
                            let sent = stream.send_trailers(trailers);
                            return Poll::Ready(sent.map_err(SendBodyError::Stream));
                        }
                    }
                },
                Some(Err(e)) => {
                    stream.send_reset(on_body_error);
                    return Poll::Ready(Err(SendBodyError::Body(e)));
                }
                None => {
                    let sent = stream.send_data(Bytes::new(), true);
                    return Poll::Ready(sent.map_err(SendBodyError::Stream));
                }
            }
        }
    }
}
