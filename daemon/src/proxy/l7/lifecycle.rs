//! An L7 connection's life, as its parts share it: how it ended ([`L7End`]), what ends or
//! drains it (`Watch`: shutdown, its route gone, the keep-alive, first-request and idle
//! clocks), its requests in flight (`InFlight`), the last byte's time (`Activity`) and
//! the executor its tasks run on ([`TaskExecutor`]).
//!
//! No I/O. A leaf under `l7`'s connection (`mod.rs`) and the request path (`downstream`,
//! `h2_server`, `websocket`), which all use it: kept apart from `mod.rs` so that no child
//! imports its parent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::routing;

/// How a served L7 connection ended.
#[derive(Debug)]
pub enum L7End {
    /// The client closed the connection (or HTTP ended it: `Connection: close`, GOAWAY).
    Closed,
    /// No byte either way for `idle_timeout`.
    IdleTimeout,
    /// Shutdown started; the connection was drained with GOAWAY / `Connection: close`.
    Drained,
    /// No request in flight for `keepalive_timeout`: closed like a drain.
    KeepaliveTimeout,
    /// No first request (HTTP/1.1 head, HTTP/2 HEADERS) within `request_header_timeout`.
    RequestHeaderTimeout,
    /// The connection's route is gone (`routing`): drained like a shutdown.
    RouteGone,
    /// The HTTP connection failed (protocol error from the client, reset, ...).
    Error(hyper::Error),
    /// The HTTP/2 connection `h2_server` served failed (protocol error from the client, a
    /// GOAWAY for abuse, I/O).
    H2(h2::Error),
    /// The HTTP layer failed in a way hyper reports as a boxed error.
    Failed(String),
    /// Reading the client's first bytes after the handshake failed (a reset, a bad TLS
    /// record): before HTTP/2 started, so neither hyper's nor h2's error.
    Io(std::io::Error),
}

/// What ends or changes a served connection, besides its requests.
pub(super) struct Watch<'a> {
    /// Shutdown started: GOAWAY / `Connection: close`, then drain.
    pub(super) shutdown: &'a CancellationToken,
    /// The connection's requests in flight (the keep-alive timeout's clock).
    pub(super) in_flight: &'a InFlight,
    /// The daemon's state: whether a shutdown is an upgrade's handover.
    pub(super) state: &'a crate::model::state::State,
    /// In an upgrade's drain, an idle connection waits for its next request before closing
    /// (HTTP/1.1: see [`Watch::closing`]).
    pub(super) linger_idle: bool,
    /// The last byte either way (the idle timeout's clock).
    pub(super) activity: &'a Activity,
    /// The connection's route: drained when it is gone.
    pub(super) routing: &'a routing::Routing,
    /// `[proxy] request_header_timeout`: the first request must have started within it.
    pub(super) first_request: Duration,
    /// `[proxy] keepalive_timeout`.
    pub(super) keepalive: Duration,
    /// `[proxy] idle_timeout`.
    pub(super) idle: Duration,
}

/// An upgrade's drain sends an HTTP/2 connection its GOAWAY once no request has been in
/// flight for this long...
const GOAWAY_PAUSE: Duration = Duration::from_millis(1);
/// ...or after this long, for a client that is never idle.
const GOAWAY_PAUSE_WAIT: Duration = Duration::from_secs(1);

impl Watch<'_> {
    /// Resolves when the connection should close gracefully, with the reason: shutdown
    /// started, its route is gone, or no request was in flight for `keepalive_timeout`.
    /// Closing means GOAWAY (HTTP/2) or `Connection: close` after the current response
    /// (HTTP/1.1), as at shutdown: requests in flight finish.
    ///
    /// At shutdown a connection that has asked for nothing yet waits for its first request
    /// (at most `request_header_timeout`, [`InFlight::no_first_request`]) and closes after
    /// it: its client connected to a listening socket and is sending a request, which closing
    /// now would reset. That is every connection accepted just before the listeners closed,
    /// and during an upgrade many are (the old process accepts until the new one serves).
    pub(super) async fn closing(&self) -> L7End {
        tokio::select! {
            biased;
            () = async {
                self.shutdown.cancelled().await;
                self.in_flight.first_request().await;
                // An upgrade's drain: an HTTP/1.1 connection idle between requests waits for
                // its next one (or its keep-alive timeout, below) instead of closing under a
                // client that may be writing it: HTTP/1.1 has no race-free close. HTTP/2's
                // GOAWAY goes in a pause between requests (at most `GOAWAY_PAUSE_WAIT`
                // away), when the client is least likely to have a request queued that the
                // final GOAWAY would refuse unprocessed.
                if self.state.is_handing_over() {
                    if self.linger_idle {
                        self.in_flight.busy().await;
                    } else {
                        tokio::select! {
                            () = self.in_flight.idle_for(GOAWAY_PAUSE) => {}
                            () = tokio::time::sleep(GOAWAY_PAUSE_WAIT) => {}
                        }
                    }
                }
            } => L7End::Drained,
            () = self.routing.gone() => L7End::RouteGone,
            () = self.in_flight.idle_for(self.keepalive) => L7End::KeepaliveTimeout,
        }
    }
}

/// hyper's executor for this connection's tasks (the backend connection's driver, hyper's
/// per-stream tasks for a client served by hyper, WebSocket tunnels' backend connections):
/// spawned through the server's `TaskTracker`, so every task has an owner and shutdown waits
/// for it, inside the connection's span, so their logs say which connection they belong to.
#[derive(Debug, Clone)]
pub struct TaskExecutor {
    pub(super) tasks: TaskTracker,
    pub(super) span: tracing::Span,
}

impl<F> hyper::rt::Executor<F> for TaskExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.tasks
            .spawn(tracing::Instrument::instrument(fut, self.span.clone()));
    }
}

/// The requests of one client connection that have not finished (their response body still
/// streaming counts), and when the last one finished: what the keep-alive timeout watches.
#[derive(Debug)]
pub struct InFlight {
    start: Instant,
    /// A request has started on the connection.
    started: AtomicBool,
    /// Woken when `started` is set, and at every request while `watched`.
    first: tokio::sync::Notify,
    /// Someone waits in [`InFlight::busy`]: every request start wakes it.
    watched: AtomicBool,
    count: AtomicU64,
    last_done_ms: AtomicU64,
}

impl InFlight {
    pub(super) fn new() -> Self {
        InFlight {
            start: Instant::now(),
            started: AtomicBool::new(false),
            first: tokio::sync::Notify::new(),
            watched: AtomicBool::new(false),
            count: AtomicU64::new(0),
            last_done_ms: AtomicU64::new(0),
        }
    }

    /// Counts a request as in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        if !self.started.load(Ordering::Relaxed) {
            self.started.store(true, Ordering::Release);
            self.first.notify_waiters();
        } else if self.watched.load(Ordering::SeqCst) {
            self.first.notify_waiters();
        }
        InFlightGuard(Arc::clone(self))
    }

    /// Resolves once a request is in flight (at once if one is).
    pub(super) async fn busy(&self) {
        // Set before the count is read, the count raised before `watched` is read (both
        // SeqCst): either this sees the request or the request start wakes this.
        self.watched.store(true, Ordering::SeqCst);
        loop {
            let entered = self.first.notified();
            if self.count.load(Ordering::SeqCst) > 0 {
                return;
            }
            entered.await;
        }
    }

    /// Resolves once a request has started on the connection.
    pub(super) async fn first_request(&self) {
        loop {
            // Registered before the flag is read: a start in between still wakes it.
            let started = self.first.notified();
            if self.started.load(Ordering::Acquire) {
                return;
            }
            started.await;
        }
    }

    /// Resolves at `timeout` after the connection was set up if no request has started by
    /// then; never otherwise. A connection must ask for something within
    /// `request_header_timeout`, not idle for `keepalive_timeout` with a handshake's worth of
    /// memory held (the same rule as nginx's `client_header_timeout` for a new connection).
    pub(super) async fn no_first_request(&self, timeout: Duration) {
        if !self.started.load(Ordering::Relaxed) {
            tokio::time::sleep_until(self.start + timeout).await;
            if !self.started.load(Ordering::Relaxed) {
                return;
            }
        }
        std::future::pending().await
    }

    /// Resolves once no request has been in flight for `idle`.
    pub(super) async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = if self.count.load(Ordering::Acquire) > 0 {
                // Busy: look again later; the deadline only starts when the last one is done.
                Instant::now() + idle
            } else {
                let last =
                    self.start + Duration::from_millis(self.last_done_ms.load(Ordering::Relaxed));
                let deadline = last + idle;
                if Instant::now() >= deadline {
                    return;
                }
                deadline
            };
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A request in flight (see [`InFlight::enter`]).
#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let ms = self.0.start.elapsed().as_millis() as u64;
        self.0.last_done_ms.fetch_max(ms, Ordering::Relaxed);
        // Release: whoever sees the count drop also sees when it happened.
        self.0.count.fetch_sub(1, Ordering::Release);
    }
}

/// The last time a byte crossed the client connection, as milliseconds since `start`.
#[derive(Debug)]
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    pub(super) async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}
