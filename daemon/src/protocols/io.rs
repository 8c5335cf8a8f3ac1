//! Stream adapters.
//!
//! `Rewind` (the plan's PrefixConn) replays bytes that an earlier stage already read (a PROXY
//! header reader, the ClientHello sniffer) before reading from the stream itself, so the next
//! stage (a TLS acceptor, a backend) sees the stream exactly as the peer sent it. Writes,
//! flushes and shutdown pass straight through. No I/O of its own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream with a prefix of already-read bytes put back in front of it.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    /// How much of `prefix` has been handed out.
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// Reads return `prefix` first, then whatever `inner` yields.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Rewind {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The wrapped stream (for addresses and socket options).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rest = &self.prefix[self.pos..];
        if !rest.is_empty() {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                // Give the memory back: the prefix is never needed again.
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefix_is_read_before_the_stream() {
        let (mut near, far) = tokio::io::duplex(64);
        near.write_all(b" world").await.unwrap();
        drop(near);
        let mut s = Rewind::new(b"hello".to_vec(), far);
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn small_reads_drain_the_prefix_in_order() {
        let (near, far) = tokio::io::duplex(64);
        drop(near);
        let mut s = Rewind::new(b"abcdef".to_vec(), far);
        let mut two = [0u8; 2];
        for want in [b"ab", b"cd", b"ef"] {
            s.read_exact(&mut two).await.unwrap();
            assert_eq!(&two, want);
        }
        assert_eq!(s.read(&mut two).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn writes_and_shutdown_pass_through() {
        let (mut near, far) = tokio::io::duplex(64);
        let mut s = Rewind::new(b"ignored".to_vec(), far);
        s.write_all(b"up").await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        near.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"up");
    }
}
