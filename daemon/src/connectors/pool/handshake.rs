//! The HTTP handshakes on an opened backend stream: HTTP/1.1, and HTTP/2 on hyper's client
//! (WebSocket tunnels need hyper's upgrade support), the latter done only once the backend's
//! opening SETTINGS frame arrived. [`SettingsWatch`] reads that frame on the way in, through
//! `wire`'s pure parser, so the pool learns the backend's `MAX_CONCURRENT_STREAMS` without a
//! second read path.
//!
//! I/O: the handshake bytes on the stream it is given; the caller drives the connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use mc_proxy_wire::h2_settings::{self, ServerSettings};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::error::PoolError;
use crate::connectors::connector::BackendStream;
use crate::protocols::body::ReqBody;

/// HTTP/2 flow-control windows: large enough that an 8 MiB gRPC message is not throttled to
/// the 64 KiB default per round trip, small enough to bound what one stream can buffer.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// See [`STREAM_WINDOW`]; shared by every stream of the connection.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// The HTTP/2 handshake on hyper's client, for WebSocket tunnels (extended CONNECT needs
/// hyper's upgrade support). Done only once the backend's SETTINGS arrived: the handshake
/// returns as soon as our preface is queued, so a backend that accepts TCP and stays silent
/// would otherwise pass (RFC 9113 §3.4: its first frame is SETTINGS). `spawn` gets the
/// connection's driver first, since the SETTINGS are only read while it runs.
pub(crate) async fn handshake_h2<E>(
    stream: BackendStream,
    executor: E,
    backend: &str,
    spawn: impl FnOnce(http2::Connection<TokioIo<SettingsWatch<BackendStream>>, ReqBody, E>),
) -> Result<(http2::SendRequest<ReqBody>, ServerSettings), PoolError>
where
    E: hyper::rt::bounds::Http2ClientConnExec<ReqBody, TokioIo<SettingsWatch<BackendStream>>>
        + Unpin
        + Clone,
{
    let (io, settings) = SettingsWatch::new(stream);
    let (sender, conn) = http2::Builder::new(executor)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(TokioIo::new(io))
        .await
        .map_err(PoolError::handshake(backend, "HTTP/2"))?;
    spawn(conn);
    Ok((sender, opening_settings(settings, backend).await?))
}

/// What [`SettingsWatch`] reports of the backend's opening SETTINGS frame (its driver must
/// be running to read it), or why there was none.
pub(super) async fn opening_settings(
    report: oneshot::Receiver<Result<ServerSettings, String>>,
    backend: &str,
) -> Result<ServerSettings, PoolError> {
    let why = match report.await {
        Ok(Ok(settings)) => return Ok(settings),
        Ok(Err(why)) => why,
        Err(_) => "the backend closed without sending SETTINGS".into(),
    };
    Err(PoolError::NoSettings {
        backend: backend.to_owned(),
        why,
    })
}

/// The HTTP/1.1 handshake on an opened backend stream; the caller drives the connection.
pub(crate) async fn handshake_h1(
    stream: BackendStream,
    backend: &str,
) -> Result<
    (
        http1::SendRequest<ReqBody>,
        http1::Connection<TokioIo<BackendStream>, ReqBody>,
    ),
    PoolError,
> {
    http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(PoolError::handshake(backend, "HTTP/1.1"))
}

/// A backend stream that hands the bytes it reads first to [`h2_settings::parse`] and
/// reports, once, what the backend's opening SETTINGS frame said (or why there was none).
pub(crate) struct SettingsWatch<T> {
    inner: T,
    seen: Vec<u8>,
    report: Option<oneshot::Sender<Result<ServerSettings, String>>>,
}

impl<T> SettingsWatch<T> {
    pub(super) fn new(inner: T) -> (Self, oneshot::Receiver<Result<ServerSettings, String>>) {
        let (tx, rx) = oneshot::channel();
        (
            SettingsWatch {
                inner,
                seen: Vec::new(),
                report: Some(tx),
            },
            rx,
        )
    }

    fn watch(&mut self, fresh: &[u8]) {
        let Some(report) = self.report.take() else {
            return;
        };
        let answer = if self.seen.is_empty() {
            h2_settings::parse(fresh)
        } else {
            self.seen.extend_from_slice(fresh);
            h2_settings::parse(&self.seen)
        };
        let result = match answer {
            Ok(h2_settings::Parsed::Incomplete) => {
                if self.seen.is_empty() {
                    self.seen.extend_from_slice(fresh);
                }
                self.report = Some(report);
                return;
            }
            Ok(h2_settings::Parsed::Complete { settings, .. }) => Ok(settings),
            Err(e) => Err(e.to_string()),
        };
        self.seen = Vec::new();
        let _ = report.send(result);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SettingsWatch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.report.is_some() && buf.filled().len() > before {
            let fresh = buf.filled()[before..].to_vec();
            self.watch(&fresh);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SettingsWatch<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
