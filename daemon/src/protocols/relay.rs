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
//! (`poll_read_ready`, then splice(2) or `try_read_buf`), which is what lets an idle L4
//! connection hold no buffer at all, and is one hand-written future (a burst in progress is
//! the only thing it boxes); a generic `AsyncRead` cannot be asked "is there data?" without a
//! buffer to read into, so [`relay_streams`] (TLS and HTTP/2 streams from hyper's upgrades)
//! keeps one buffer per direction for its life.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::model::stats::Transferred;

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

/// The counters a direction adds each chunk to once it is written: the connection's and the
/// route's.
#[derive(Clone, Copy)]
struct Moved<'a>([&'a AtomicU64; 2]);

impl Moved<'_> {
    fn chunk(&self, n: usize) {
        for count in self.0 {
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
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

/// How a burst of reads ended.
enum Burst {
    /// `from` has nothing more to read for now.
    Drained,
    /// `from` sent its FIN.
    Eof,
}

/// splice(2) through a pipe: the L4 relay's bulk path on Linux (rustix's safe wrappers; the
/// workspace forbids `unsafe`).
#[cfg(target_os = "linux")]
mod splice {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::sync::Mutex;

    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::{Burst, Moved};

    /// Capacity asked for each pipe: one splice call moves up to this much. 256 KiB is within
    /// the unprivileged `fs.pipe-max-size` (1 MiB by default); a refusal leaves the 64 KiB
    /// default, which only costs more calls.
    const PIPE_SIZE: usize = 256 * 1024;
    /// Empty pipes kept for the next burst. A burst beyond this many at once opens a pipe and
    /// closes it afterwards; idle connections hold none (a pipe is two descriptors and the
    /// file table must fit 10 000s of idle connections).
    const POOL_MAX: usize = 64;

    const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

    /// A pipe, empty whenever it is in the pool.
    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        size: usize,
    }

    /// The process-wide pool of empty pipes.
    pub(super) static POOL: Pool = Pool(Mutex::new(Vec::new()));

    pub(super) struct Pool(Mutex<Vec<Pipe>>);

    impl Pool {
        /// How many pipes are pooled now.
        #[cfg(test)]
        pub(super) fn len(&self) -> usize {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
        }

        /// An empty pipe: a pooled one or a new one; `None` when no pipe can be opened (the
        /// caller copies through a buffer instead).
        pub(super) fn take(&'static self) -> Option<Lease> {
            let pooled = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let pipe = match pooled {
                Some(pipe) => pipe,
                None => {
                    let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
                    let size = fcntl_setpipe_size(&write, PIPE_SIZE).unwrap_or(64 * 1024);
                    Pipe { read, write, size }
                }
            };
            Some(Lease {
                pipe: Some(pipe),
                pending: 0,
                pool: self,
            })
        }
    }

    /// A pipe borrowed for one burst. Back to the pool on drop if it is empty; a pipe still
    /// holding bytes (an error or a cancelled relay mid-write) is closed instead.
    pub(super) struct Lease {
        pipe: Option<Pipe>,
        pending: usize,
        pool: &'static Pool,
    }

    impl Drop for Lease {
        fn drop(&mut self) {
            if let Some(pipe) = self.pipe.take()
                && self.pending == 0
            {
                let mut pool = self.pool.0.lock().unwrap_or_else(|e| e.into_inner());
                if pool.len() < POOL_MAX {
                    pool.push(pipe);
                }
            }
        }
    }

    /// Moves what `from` has to `to` via the leased pipe, which is empty again when this
    /// returns `Ok`. `moved` is told each chunk once it is written to `to`.
    pub(super) async fn burst(
        from: &TcpStream,
        to: &TcpStream,
        lease: &mut Lease,
        moved: Moved<'_>,
    ) -> io::Result<Burst> {
        let pipe = lease
            .pipe
            .as_ref()
            .expect("a lease holds its pipe until dropped");
        loop {
            // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read
            // (and `try_io` rightly clears its readiness).
            let n = match from.try_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe.write, None, pipe.size, FLAGS)?)
            }) {
                Ok(0) => return Ok(Burst::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
                Err(e) => return Err(e),
            };
            lease.pending = n;
            while lease.pending > 0 {
                to.writable().await?;
                match to.try_io(Interest::WRITABLE, || {
                    Ok(splice(&pipe.read, None, to, None, lease.pending, FLAGS)?)
                }) {
                    Ok(m) => lease.pending -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            moved.chunk(n);
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
