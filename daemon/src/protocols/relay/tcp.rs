//! The L4 relay over two sockets ([`relay`]): one hand-written future driven by readiness,
//! holding nothing while a side is idle; a burst moves data with splice(2) on Linux
//! (`super::splice`) or a buffer.
//!
//! I/O: the two sockets it is given.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::model::stats::Transferred;

use super::common::{BUF_SIZE, Burst, Moved, RelayEnd};
#[cfg(target_os = "linux")]
use super::splice;

/// Relays until both directions are done, a side fails or nothing moves for `idle`. Counts
/// into both `conn` (this connection) and `route` (its route's live totals). Cancel by
/// dropping the future.
pub fn relay<'a>(
    client: &'a TcpStream,
    backend: &'a TcpStream,
    idle: Duration,
    conn: &'a Transferred,
    route: &'a Transferred,
) -> Relay<'a> {
    let last = Instant::now();
    Relay {
        client,
        backend,
        conn,
        route,
        idle,
        last,
        up: Direction::Waiting,
        down: Direction::Waiting,
        timer: tokio::time::sleep_until(last + idle),
    }
}

pin_project_lite::pin_project! {
    /// The future [`relay`] returns: both directions and the idle timer in one poll, so an
    /// idle connection's task holds two [`Direction`]s of a pointer each, one timer and a
    /// few references (about 230 bytes), where two `async` loops joined and raced against a
    /// sleep took 1168 (measured with `-Zprint-type-sizes`).
    pub struct Relay<'a> {
        client: &'a TcpStream,
        backend: &'a TcpStream,
        conn: &'a Transferred,
        route: &'a Transferred,
        idle: Duration,
        // When a byte last moved either way (or the relay started).
        last: Instant,
        up: Direction<'a>,
        down: Direction<'a>,
        // Armed once; moved on only when it fires while bytes moved since, never per byte.
        #[pin]
        timer: Sleep,
    }
}

impl Future for Relay<'_> {
    type Output = RelayEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let this = self.project();
        // Bytes move only inside the directions' polls, and this connection's counters have
        // no other writer while the relay runs: a change across the two polls is the moment
        // bytes last moved.
        let before = total(this.conn);
        let up = this.up.poll(
            cx,
            this.client,
            this.backend,
            Moved([&this.conn.up, &this.route.up]),
        );
        let down = this.down.poll(
            cx,
            this.backend,
            this.client,
            Moved([&this.conn.down, &this.route.down]),
        );
        if total(this.conn) != before {
            *this.last = Instant::now();
        }
        match (up, down) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => {
                return Poll::Ready(RelayEnd::Error(e));
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(RelayEnd::Finished),
            _ => {}
        }
        let mut timer = this.timer;
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = *this.last + *this.idle;
            if Instant::now() >= deadline {
                return Poll::Ready(RelayEnd::IdleTimeout);
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

fn total(t: &Transferred) -> u64 {
    t.up.load(Ordering::Relaxed)
        .wrapping_add(t.down.load(Ordering::Relaxed))
}

/// A burst in progress: boxed, so a waiting direction holds one pointer's worth of state.
type BurstFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Burst>> + Send + 'a>>;

/// One direction of [`relay`]: copies `from` to `to` until EOF (then passes the FIN on) or an
/// error.
///
/// Nothing is held while the direction is idle: it waits with `poll_read_ready`, which keeps
/// the waker in the socket's tokio registration rather than in a future of its own
/// (`readable()` would store a waiter node and its async layers for as long as it idles).
/// Readable, it starts a [`burst`], whose buffer or pipe exists only while bytes move:
/// thousands of idle connections cost their sockets and tasks, not 32 KiB each.
enum Direction<'a> {
    /// Waiting for `from` to be readable.
    Waiting,
    /// Moving what `from` has.
    Moving(BurstFuture<'a>),
    /// EOF passed on, or failed: nothing more to do.
    Done,
}

impl<'a> Direction<'a> {
    /// Ready when the direction is done (`Ok`) or failed.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &'a TcpStream,
        to: &'a TcpStream,
        moved: Moved<'a>,
    ) -> Poll<io::Result<()>> {
        loop {
            match self {
                Direction::Done => return Poll::Ready(Ok(())),
                Direction::Waiting => {
                    if let Err(e) = std::task::ready!(from.poll_read_ready(cx)) {
                        *self = Direction::Done;
                        return Poll::Ready(Err(e));
                    }
                    *self = Direction::Moving(burst(from, to, moved));
                }
                Direction::Moving(burst) => match std::task::ready!(burst.as_mut().poll(cx)) {
                    Ok(Burst::Drained) => *self = Direction::Waiting,
                    Ok(Burst::Eof) => {
                        *self = Direction::Done;
                        return Poll::Ready(shutdown_write(to));
                    }
                    Err(e) => {
                        *self = Direction::Done;
                        return Poll::Ready(Err(e));
                    }
                },
            }
        }
    }
}

/// Starts a burst. Most bursts are small (the messages of a TLS handshake, a request), and
/// those are copied through the worker thread's scratch buffer ([`step`]): a read that does
/// not fill it has drained the socket (see [`read_some`]), so a small burst costs one read and
/// one write and no allocation. A read that fills the buffer means bulk data: on Linux the rest
/// of the burst goes through a pipe borrowed from [`splice::POOL`] (splice(2), no copy through
/// user space; a splice read cannot tell a drained socket from a full pipe, so that path ends
/// on `EAGAIN`). Without a pipe (fd limit, other OSes) the buffer carries on. Nothing of it
/// outlives the burst: an idle connection holds no buffer and no pipe.
fn burst<'a>(from: &'a TcpStream, to: &'a TcpStream, moved: Moved<'a>) -> BurstFuture<'a> {
    Box::pin(async move {
        loop {
            let (n, drained) = match step(from, to)? {
                Step::Eof => return Ok(Burst::Eof),
                Step::Nothing => return Ok(Burst::Drained),
                Step::Moved { n, drained } => (n, drained),
                Step::Blocked { rest, n, drained } => {
                    write_all(to, &rest).await?;
                    (n, drained)
                }
            };
            moved.chunk(n);
            if drained {
                return Ok(Burst::Drained);
            }
            #[cfg(target_os = "linux")]
            if let Some(mut pipe) = splice::POOL.take() {
                return splice::burst(from, to, &mut pipe, moved).await;
            }
        }
    })
}

thread_local! {
    /// Each thread's read buffer for the relay's bursts. A chunk is read into it and written
    /// on in one synchronous [`step`], so it is never borrowed across an await, and no burst
    /// allocates (or leaves the allocator holding) a buffer of its own.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; BUF_SIZE]);
}

/// What one [`step`] did.
enum Step {
    /// `from` sent its FIN.
    Eof,
    /// Nothing to read after all (the readiness was stale; it is cleared).
    Nothing,
    /// `n` bytes read and written; `drained` when the read did not fill the buffer.
    Moved { n: usize, drained: bool },
    /// `n` bytes read, of which `to` did not take `rest` yet.
    Blocked {
        rest: Vec<u8>,
        n: usize,
        drained: bool,
    },
}

/// Reads one chunk from `from` into the thread's scratch buffer and writes what `to` takes of
/// it now; the part it does not take (a full send buffer, rare) is copied out for the caller
/// to write with an await.
fn step(from: &TcpStream, to: &TcpStream) -> io::Result<Step> {
    SCRATCH.with_borrow_mut(|buf| {
        let (n, drained) = match read_some(from, buf)? {
            Got::Eof => return Ok(Step::Eof),
            Got::Nothing => return Ok(Step::Nothing),
            Got::Bytes { n, drained } => (n, drained),
        };
        let mut written = 0;
        while written < n {
            match to.try_write(&buf[written..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => written += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(if written == n {
            Step::Moved { n, drained }
        } else {
            Step::Blocked {
                rest: buf[written..n].to_vec(),
                n,
                drained,
            }
        })
    })
}

/// What one [`read_some`] got.
enum Got {
    /// The peer's FIN.
    Eof,
    /// Nothing after all (the readiness was stale); it is cleared.
    Nothing,
    /// `n` bytes at the start of the buffer; `drained` when they did not fill it.
    Bytes { n: usize, drained: bool },
}

/// Reads what `from` has into `buf`, up to its length.
///
/// A TCP read that returns less than it was asked for has taken every queued segment (the
/// kernel copies until the length or the receive queue runs out), so the socket is drained
/// and its readiness is cleared then too, not only on `EAGAIN`, as tokio's own `poll_read`
/// does: the next wait is a real one, without a read that finds nothing. A FIN that came
/// with the data is not lost: tokio keeps read-closed readiness through a clear.
fn read_some(from: &TcpStream, buf: &mut [u8]) -> io::Result<Got> {
    let len = buf.len();
    let mut got = 0;
    let res = from.try_io(Interest::READABLE, || {
        let n = from.try_read(buf)?;
        got = n;
        if n > 0 && n < len {
            // Not a failed read but a drained socket: `try_io` clears readiness only on
            // `WouldBlock`, and only if no new event came in since it was read.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match res {
        Ok(0) => Ok(Got::Eof),
        Ok(n) => Ok(Got::Bytes { n, drained: false }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(Got::Bytes {
            n: got,
            drained: true,
        }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Got::Nothing),
        Err(e) => Err(e),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Two connected loopback sockets: (the one we keep, the one the relay gets).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (outer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (outer.unwrap(), accepted.unwrap().0)
    }

    /// A relay that does not idle out within a test, counting into `counts` as both the
    /// connection's and the route's counters (every byte counts twice).
    fn long_relay<'a>(
        client: &'a TcpStream,
        backend: &'a TcpStream,
        counts: &'a Transferred,
    ) -> Relay<'a> {
        relay(client, backend, Duration::from_secs(30), counts, counts)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// More than a pipe's worth each way, a half-close from the client first: the backend
    /// sees every byte and the FIN, still answers, and the counters match what moved.
    #[tokio::test]
    async fn relays_both_ways_across_a_half_close_and_counts_every_byte() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_backend, mut backend) = pair().await;
        let conn = Arc::new(Transferred::default());
        let route = Arc::new(Transferred::default());
        let relay = tokio::spawn({
            let (conn, route) = (Arc::clone(&conn), Arc::clone(&route));
            async move {
                relay(
                    &proxy_client,
                    &proxy_backend,
                    Duration::from_secs(30),
                    &conn,
                    &route,
                )
                .await
            }
        });
        let up = pattern(3 * 1024 * 1024 + 17, 1);
        let down = pattern(1024 * 1024 + 5, 7);
        let writer = {
            let up = up.clone();
            async move {
                client.write_all(&up).await.unwrap();
                client.shutdown().await.unwrap();
                let mut got = Vec::new();
                client.read_to_end(&mut got).await.unwrap();
                got
            }
        };
        let server = {
            let down = down.clone();
            async move {
                let mut got = Vec::new();
                backend.read_to_end(&mut got).await.unwrap();
                backend.write_all(&down).await.unwrap();
                backend.shutdown().await.unwrap();
                got
            }
        };
        let (client_got, backend_got) = tokio::join!(writer, server);
        assert!(backend_got == up, "the backend got other bytes than sent");
        assert!(client_got == down, "the client got other bytes than sent");
        assert!(matches!(relay.await.unwrap(), RelayEnd::Finished));
        for t in [&conn, &route] {
            assert_eq!(t.up.load(Ordering::Relaxed), up.len() as u64);
            assert_eq!(t.down.load(Ordering::Relaxed), down.len() as u64);
        }
    }

    /// No byte either way for the idle timeout ends the relay (paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_silent_relay_ends_after_the_idle_timeout() {
        let (_client, proxy_client) = pair().await;
        let (proxy_backend, _backend) = pair().await;
        let counts = Transferred::default();
        let end = relay(
            &proxy_client,
            &proxy_backend,
            Duration::from_secs(5),
            &counts,
            &counts,
        )
        .await;
        assert!(matches!(end, RelayEnd::IdleTimeout));
    }

    /// Bytes moving push the idle timeout back: the relay ends `idle` after the last byte,
    /// not after its start (real clock: a paused one would jump ahead while the byte is on
    /// the wire).
    #[tokio::test]
    async fn the_idle_timeout_counts_from_the_last_byte_moved() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_backend, mut backend) = pair().await;
        let counts = Transferred::default();
        let idle = Duration::from_millis(300);
        let relayed = async {
            let end = relay(&proxy_client, &proxy_backend, idle, &counts, &counts).await;
            (end, Instant::now())
        };
        let traffic = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let sent = Instant::now();
            backend.write_all(b"x").await.unwrap();
            let mut got = [0u8; 1];
            client.read_exact(&mut got).await.unwrap();
            sent
        };
        let ((end, ended), sent) = tokio::join!(relayed, traffic);
        assert!(matches!(end, RelayEnd::IdleTimeout), "{end:?}");
        let after = ended - sent;
        assert!(after >= idle, "ended {after:?} after the last byte");
        assert!(after < idle * 10, "ended {after:?} after the last byte");
        assert_eq!(counts.down.load(Ordering::Relaxed), 2);
    }

    /// A small write followed at once by a FIN, each way: the short read that clears the
    /// socket's readiness must not lose the FIN behind it (the relay would then wait for the
    /// idle timeout instead of finishing).
    #[tokio::test]
    async fn a_fin_right_behind_a_small_write_is_passed_on() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_backend, mut backend) = pair().await;
        let counts = Transferred::default();
        let relayed = long_relay(&proxy_client, &proxy_backend, &counts);
        let traffic = async {
            client.write_all(b"hello").await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hello");
            backend.write_all(b"bye").await.unwrap();
            backend.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye");
        };
        let (end, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(relayed, traffic)
        })
        .await
        .expect("the relay finishes well before its idle timeout");
        assert!(matches!(end, RelayEnd::Finished), "{end:?}");
        assert_eq!(counts.up.load(Ordering::Relaxed), 10);
        assert_eq!(counts.down.load(Ordering::Relaxed), 6);
    }

    /// A backend that reads late: the relay's writes back up (a chunk the backend's socket
    /// cannot take yet is kept and written once it can) and every byte still arrives, in
    /// order.
    #[tokio::test]
    async fn a_backend_that_reads_late_gets_every_byte_in_order() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_backend, mut backend) = pair().await;
        let counts = Transferred::default();
        let relayed = long_relay(&proxy_client, &proxy_backend, &counts);
        let up = pattern(4 * 1024 * 1024 + 3, 5);
        let writer = async {
            for chunk in up.chunks(1000) {
                client.write_all(chunk).await.unwrap();
            }
            client.shutdown().await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            rest
        };
        let reader = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await.unwrap();
            drop(backend);
            got
        };
        let (end, rest, got) = tokio::join!(relayed, writer, reader);
        assert!(got == up, "the backend got other bytes than sent");
        assert!(rest.is_empty());
        assert!(matches!(end, RelayEnd::Finished), "{end:?}");
        // `counts` is both the connection's and the route's: every byte counts twice.
        assert_eq!(counts.up.load(Ordering::Relaxed), 2 * up.len() as u64);
    }

    /// Many small bursts on one connection, each copied through a buffer: every byte arrives
    /// in order, and the pipe pool (used by bulk bursts) never grows past its cap.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn small_bursts_arrive_in_order() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_backend, mut backend) = pair().await;
        let counts = Transferred::default();
        let relayed = async { long_relay(&proxy_client, &proxy_backend, &counts).await };
        let traffic = async {
            let mut buf = [0u8; 5];
            for _ in 0..20 {
                client.write_all(b"hello").await.unwrap();
                backend.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"hello");
            }
            drop(client);
            drop(backend);
        };
        let (end, ()) = tokio::join!(relayed, traffic);
        assert!(!matches!(end, RelayEnd::IdleTimeout));
        // `counts` is both the connection's and the route's: every byte counts twice.
        assert_eq!(counts.up.load(Ordering::Relaxed), 200);
        let pooled = splice::POOL.len();
        assert!(pooled <= 64, "{pooled} pipes pooled");
    }
}
