//! Stream adapters.
//!
//! `Rewind` (the plan's PrefixConn) replays bytes that an earlier stage already read (a PROXY
//! header reader, the ClientHello sniffer) before reading from the stream itself, so the next
//! stage (a TLS acceptor, a backend) sees the stream exactly as the peer sent it. Writes,
//! flushes and shutdown pass straight through. No I/O of its own.
//!
//! `WakeGate` answers `Pending` at once, without polling what is behind it, while that has
//! not woken since it last answered `Pending`: `ReadGate` reads a stream through one (see its
//! docs for why), `Woken` polls a future through one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `AsyncWrite` for a stream wrapper whose writes, flushes and shutdown go straight to its
/// `inner` stream, unchanged.
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<S: AsyncWrite + Unpin> AsyncWrite for $wrapper<S> {
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

            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

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

write_through!(Rewind);

/// Polls something (a stream's read side, a future) only when it has something new to say:
/// once it returned `Pending`, further polls return `Pending` at once until it wakes the
/// waker it was given, which is the gate's own: it marks the gate open and wakes the task
/// that polled last.
#[derive(Debug)]
pub struct WakeGate {
    gate: Arc<Gate>,
    /// `gate` as a waker, made once.
    waker: Waker,
}

#[derive(Debug)]
struct Gate {
    /// What is behind the gate must be polled: it woke since its last `Pending`, or it has
    /// not answered `Pending` since it was last polled.
    open: AtomicBool,
    /// The task to wake when what is behind the gate wakes it.
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.open.store(true, Ordering::SeqCst);
        self.task.wake();
    }
}

impl Default for WakeGate {
    fn default() -> Self {
        let gate = Arc::new(Gate {
            open: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&gate));
        WakeGate { gate, waker }
    }
}

impl WakeGate {
    /// `Pending` if what `poll` polls answered `Pending` last time and has not woken since;
    /// else `poll` with the gate's waker. A poll that returns `Ready` leaves the gate open:
    /// the next one polls again.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // Registered first: a wake from here on reaches this task.
        self.gate.task.register(cx.waker());
        // Closed: the last poll answered `Pending` and nothing woke since (a wake after the
        // swap finds the task registered above).
        if !self.gate.open.swap(false, Ordering::SeqCst) {
            return Poll::Pending;
        }
        let res = poll(&mut Context::from_waker(&self.waker));
        if res.is_ready() {
            self.gate.open.store(true, Ordering::SeqCst);
        }
        res
    }
}

/// A stream whose reads go through a [`WakeGate`]: once a read of the inner stream returned
/// `Pending`, further reads return `Pending` at once until the inner stream wakes.
///
/// Why: hyper's HTTP/1.1 client polls its connection's read side every time its task runs (a
/// request handed over, the response body wanted, the keep-alive check after each response),
/// about six reads per request of which one finds data. On a TLS stream each empty read goes
/// through tokio-rustls and rustls' record reader down to the socket's readiness (≈ 500
/// instructions); here it is two atomics and a waker comparison.
///
/// Writes pass straight through with the caller's waker (tokio keeps a socket's read and
/// write wakers apart), as do flushes and shutdown.
#[derive(Debug)]
pub struct ReadGate<S> {
    inner: S,
    gate: WakeGate,
}

impl<S> ReadGate<S> {
    /// `inner`, read through the gate.
    pub fn new(inner: S) -> Self {
        ReadGate {
            inner,
            gate: WakeGate::default(),
        }
    }

    /// The stream under the gate.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadGate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let inner = &mut this.inner;
        this.gate.poll(cx, |cx| Pin::new(inner).poll_read(cx, buf))
    }
}

pin_project_lite::pin_project! {
    /// A future polled through a [`WakeGate`]: only when it woke. For a future that is
    /// raced against busy work in a `select!` and rarely ready (a cancellation), which the
    /// `select!` would otherwise poll each time the work wakes the task.
    #[derive(Debug)]
    pub struct Woken<F> {
        #[pin]
        inner: F,
        gate: WakeGate,
    }
}

impl<F> Woken<F> {
    /// `inner`, polled only when it woke.
    pub fn new(inner: F) -> Self {
        Woken {
            inner,
            gate: WakeGate::default(),
        }
    }
}

impl<F: Future> Future for Woken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let inner = this.inner;
        this.gate.poll(cx, |cx| inner.poll(cx))
    }
}

write_through!(ReadGate);

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

    /// Counts the reads that reach it.
    struct Counted<S> {
        inner: S,
        reads: usize,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    fn poll_once<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(s)
            .poll_read(&mut cx, &mut buf)
            .map_ok(|()| buf.filled().len())
    }

    #[tokio::test]
    async fn an_idle_stream_is_read_once_until_it_wakes() {
        let (mut near, far) = tokio::io::duplex(64);
        let mut s = ReadGate::new(Counted {
            inner: far,
            reads: 0,
        });
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            assert!(poll_once(&mut s, &mut buf).is_pending());
        }
        assert_eq!(
            s.get_ref().reads,
            1,
            "reads after a Pending reached the stream"
        );
        near.write_all(b"hi").await.unwrap();
        assert!(matches!(poll_once(&mut s, &mut buf), Poll::Ready(Ok(2))));
        assert_eq!(&buf[..2], b"hi");
        // After data the next read goes down again (and finds nothing).
        assert!(poll_once(&mut s, &mut buf).is_pending());
        assert_eq!(s.get_ref().reads, 3);
        drop(near);
        assert!(matches!(poll_once(&mut s, &mut buf), Poll::Ready(Ok(0))));
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_through_the_gate() {
        let (mut near, far) = tokio::io::duplex(64);
        let mut s = ReadGate::new(far);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            out
        });
        for part in [&b"one "[..], b"two"] {
            tokio::task::yield_now().await;
            near.write_all(part).await.unwrap();
        }
        drop(near);
        assert_eq!(reader.await.unwrap(), b"one two");
    }

    #[tokio::test]
    async fn a_woken_future_is_polled_again_only_after_it_woke() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let polls = std::cell::Cell::new(0);
        let mut rx = rx;
        let counted = std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            Pin::new(&mut rx).poll(cx)
        });
        let mut woken = std::pin::pin!(Woken::new(counted));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..3 {
            assert!(woken.as_mut().poll(&mut cx).is_pending());
        }
        tx.send(7).unwrap();
        assert!(matches!(woken.as_mut().poll(&mut cx), Poll::Ready(Ok(7))));
        assert_eq!(polls.get(), 2);
    }
}
