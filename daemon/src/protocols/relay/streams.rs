//! The relay over any two byte streams ([`relay_streams`]): a WebSocket tunnel's client side
//! (TLS, an HTTP/2 stream) and its backend; one buffer per direction for its life.
//!
//! I/O: the two streams it is given.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::model::stats::Transferred;

use super::common::{BUF_SIZE, RelayEnd};

/// [`relay`] for any two byte streams (the WebSocket tunnel: hyper's upgraded client stream,
/// TLS or an HTTP/2 stream, and the backend's): the same half-close, error and idle rules.
/// EOF from one side shuts the other's write half down (`poll_shutdown`: a TCP FIN, a TLS
/// close_notify, an HTTP/2 END_STREAM). Counts into `counts` only (`up` is `client` to
/// `backend`). Cancel by dropping the future.
pub async fn relay_streams<C, B>(
    client: C,
    mut backend: B,
    idle: Duration,
    counts: &Transferred,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    // Counting on the client side sees both directions: what is read from it goes up, what
    // is written to it came down.
    let mut client = Counted {
        inner: client,
        counts,
        last: &last,
        start,
    };
    let copy =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut backend, BUF_SIZE, BUF_SIZE);
    tokio::select! {
        res = copy => match res {
            Ok(_) => RelayEnd::Finished,
            Err(e) => RelayEnd::Error(e),
        },
        () = idle_expired(&last, start, idle) => RelayEnd::IdleTimeout,
    }
}

/// A stream that counts the bytes read from it (`up`) and written to it (`down`) and notes
/// when the last one moved.
struct Counted<'a, S> {
    inner: S,
    counts: &'a Transferred,
    last: &'a AtomicU64,
    start: Instant,
}

impl<S> Counted<'_, S> {
    fn moved(&self, count: &AtomicU64, n: usize) {
        if n > 0 {
            count.fetch_add(n as u64, Ordering::Relaxed);
            self.last
                .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let n = buf.filled().len() - before;
            self.moved(&self.counts.up, n);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.moved(&self.counts.down, n);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn idle_expired(last: &AtomicU64, start: Instant, idle: Duration) {
    loop {
        let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}
