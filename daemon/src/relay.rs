//! The byte relay between a client and a backend: L4 passthrough ([`relay`], two sockets) and
//! the L7 WebSocket tunnel ([`relay_streams`], any two byte streams).
//!
//! I/O: reads and writes the two streams it is given, nothing else. Invariants (both forms):
//! - Half-close is preserved: EOF from one side shuts down the write half towards the other
//!   side and the opposite direction keeps flowing until it ends too. A client that writes,
//!   shuts down its write half and then reads still gets the backend's whole answer.
//! - An I/O error in either direction ends both (the other side would otherwise wait for an
//!   idle timeout).
//! - Byte counts are kept in atomics the caller owns, so they are right however the relay
//!   ends (finished, idle, or the caller dropping it) and can be read live by observers.
//!
//! Two forms, one set of rules: [`relay`] works on `&TcpStream` with readiness
//! (`readable`/`try_read_buf`), which is what lets an idle L4 connection hold no buffer at
//! all; a generic `AsyncRead` cannot be asked "is there data?" without a buffer to read into,
//! so [`relay_streams`] (TLS and HTTP/2 streams from hyper's upgrades) keeps one buffer per
//! direction for its life. Both are generic over nothing dynamic: no boxing, no trait objects.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::stats::Transferred;

/// Per-direction copy buffer while data moves. 16 KiB holds a full TLS record, so a record is
/// usually moved in one read and one write.
const BUF_SIZE: usize = 16 * 1024;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed their write halves.
    Finished,
    /// No byte moved either way for the idle timeout.
    IdleTimeout,
    /// The daemon's shutdown grace period ran out (set by the caller, which drops the relay).
    Cancelled,
    /// A read or write failed (typically a reset from one side).
    Error(io::Error),
}

/// Relays until both directions are done, a side fails or nothing moves for `idle`. Counts
/// into both `conn` (this connection) and `route` (its route's live totals). Cancel by
/// dropping the future.
pub async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    idle: Duration,
    conn: &Transferred,
    route: &Transferred,
) -> RelayEnd {
    let start = Instant::now();
    // Milliseconds after `start` of the last byte moved; shared by both directions.
    let last = AtomicU64::new(0);
    let up = copy_half(client, backend, [&conn.up, &route.up], &last, start);
    let down = copy_half(backend, client, [&conn.down, &route.down], &last, start);

    tokio::select! {
        res = async { tokio::try_join!(up, down) } => match res {
            Ok(_) => RelayEnd::Finished,
            Err(e) => RelayEnd::Error(e),
        },
        () = idle_expired(&last, start, idle) => RelayEnd::IdleTimeout,
    }
}

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

/// Copies `from` to `to` until EOF (then passes the FIN on) or an error. The buffer exists only
/// while bytes are moving: an idle connection holds none, so thousands of idle connections cost
/// their sockets and tasks, not 32 KiB each.
async fn copy_half(
    from: &TcpStream,
    to: &TcpStream,
    counts: [&AtomicU64; 2],
    last: &AtomicU64,
    start: Instant,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buf = Vec::with_capacity(BUF_SIZE);
        loop {
            buf.clear();
            match from.try_read_buf(&mut buf) {
                Ok(0) => return shutdown_write(to),
                Ok(n) => {
                    write_all(to, &buf).await?;
                    for count in counts {
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                // Drained: give the buffer back and wait for the next burst.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Passes a FIN on; the other direction is left running.
fn shutdown_write(to: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write) {
        // The peer already went away entirely: nothing left to tell it.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
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
