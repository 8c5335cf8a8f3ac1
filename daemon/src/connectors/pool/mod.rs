//! Backend connections shared across client connections: one [`TargetPool`] per backend
//! [`Target`] (address, protocol, TLS name, PROXY header), and one [`Pool`] per data-plane
//! worker (`server::Workers`), so a request and the connection it goes out on are polled by
//! the same thread. Each worker's pool has its share of the caps; the figures for stats are
//! shared by every worker's pool.
//!
//! I/O: opens backend connections through [`connector::connect`] and does the HTTP handshake
//! (HTTP/2 with prior knowledge or after ALPN, HTTP/1.1); each connection is driven by a task of
//! the pool's own `TaskTracker`, which ends when the backend closes or the pool's token fires.
//! HTTP/2 connections are the `h2` crate's, driven directly rather than through hyper's
//! client: a request opens its stream and awaits the response head in its own task, where
//! hyper's client would hand it over a channel to the connection's task and spawn a task per
//! request to await the response (one spawn and two task hand-offs fewer per request).
//!
//! How connections are shared:
//! - HTTP/2: many streams per connection, up to the backend's `SETTINGS_MAX_CONCURRENT_STREAMS`
//!   (read from its first SETTINGS frame, capped at [`MAX_STREAMS_PER_CONN`]). A request takes a
//!   stream slot on the first connection with room, and another connection is opened only when
//!   every one is full, so a long gRPC stream on a `MAX_CONCURRENT_STREAMS = 1` backend never
//!   holds up the next request. One HTTP/2 dial at a time per target: a burst of first requests
//!   waits for it rather than opening a connection each.
//! - HTTP/1.1: one request at a time per connection. A connection goes back to the idle set
//!   only after its response body was read to the end and neither side said
//!   `Connection: close`; the idle set is LIFO (the warmest connection is reused, the coldest
//!   ages out), bounded by `max_idle`, and a connection idle for `idle_timeout` is closed.
//! - `auto`: the first connection's ALPN decides; until then dials are one at a time.
//!
//! Invariants: `max_connections` (open plus dialling) bounds every target; a request that finds
//! the target full waits for a slot within `connect_timeout` and gets 503 after it. The pool
//! lock is a `std::sync::Mutex` held only for list edits, never across an `.await`. Counters
//! (open, idle, in use, opened, failed) are atomics read by the stats and `/metrics` at scrape
//! time. A `send_proxy_protocol` route's connections carry one client's PROXY header, so they
//! live in a [`TargetPool`] of that client connection (never in the shared map) and close with
//! it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::client::conn::http1;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

mod error;
mod handshake;

pub use error::PoolError;
pub use handshake::{CONNECTION_WINDOW, STREAM_WINDOW};

use handshake::opening_settings;
pub(crate) use handshake::{SettingsWatch, handshake_h1, handshake_h2};

use crate::connectors::connector::{self, BackendStream, BackendTls, Target, Wire};
use crate::model::stats::{BackendCounters, BackendKey, BackendRegistry};
use crate::protocols::body::ReqBody;
use crate::protocols::io::Woken;

/// Streams per HTTP/2 backend connection when the backend announces no limit (or a higher
/// one): spreads a heavy load over a few connections instead of one huge one.
pub const MAX_STREAMS_PER_CONN: u32 = 128;
/// The largest response head (decoded header list) taken from an HTTP/2 backend, and what
/// the backend is told in SETTINGS: hyper's client default, which this pool used before.
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Request bytes queued per HTTP/2 stream before the sender waits for the backend's window.
const MAX_SEND_BUFFER: usize = 1024 * 1024;

/// The pool settings of `[proxy]`.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Connections per target, open or being opened (`backend_max_connections`; 0: no cap).
    pub max_connections: usize,
    /// Idle HTTP/1.1 connections kept per target (`backend_max_idle`).
    pub max_idle: usize,
    /// An unused connection is closed after this long (`backend_idle_timeout`).
    pub idle_timeout: Duration,
}

/// What the pool owns across targets.
#[derive(Debug)]
struct Common {
    tls: BackendTls,
    settings: PoolSettings,
    /// Owns every backend connection's driver and hyper's per-stream tasks.
    tasks: TaskTracker,
    /// Where each backend's counters live (the daemon's `State`).
    stats: Arc<BackendRegistry>,
}

/// Every shared `TargetPool` of the daemon.
#[derive(Debug)]
pub struct Pool {
    common: Arc<Common>,
    targets: Mutex<HashMap<Target, Arc<TargetPool>>>,
    /// Fires at the end of shutdown, once no client connection is left: every pooled
    /// connection closes.
    closed: CancellationToken,
}

impl Pool {
    /// An empty pool; its connections' tasks go to `tasks`.
    pub fn new(
        tls: BackendTls,
        settings: PoolSettings,
        tasks: TaskTracker,
        stats: Arc<BackendRegistry>,
    ) -> Self {
        Pool {
            common: Arc::new(Common {
                tls,
                settings,
                tasks,
                stats,
            }),
            targets: Mutex::new(HashMap::new()),
            closed: CancellationToken::new(),
        }
    }

    /// The shared pool of `target` (created on first use).
    pub fn target(&self, target: &Target) -> Arc<TargetPool> {
        let mut targets = lock(&self.targets);
        if let Some(pool) = targets.get(target) {
            return Arc::clone(pool);
        }
        let pool = Arc::new(TargetPool::new(
            target.clone(),
            Arc::clone(&self.common),
            self.closed.child_token(),
        ));
        targets.insert(target.clone(), Arc::clone(&pool));
        pool
    }

    /// A pool for one client connection's own use (`send_proxy_protocol`): not shared, and
    /// its connections close when `closed` fires.
    pub fn dedicated(&self, target: Target, closed: CancellationToken) -> Arc<TargetPool> {
        Arc::new(TargetPool::new(target, Arc::clone(&self.common), closed))
    }

    /// Closes idle connections past `idle_timeout` and forgets targets with no connection
    /// left (a wildcard route would otherwise keep one entry per SNI ever seen).
    pub fn sweep(&self) {
        let mut targets = lock(&self.targets);
        for pool in targets.values() {
            pool.sweep();
        }
        targets.retain(|_, pool| !pool.is_empty() || Arc::strong_count(pool) > 1);
    }

    /// Runs [`Pool::sweep`] every second until `shutdown`; then closes every connection.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep(),
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// Closes every pooled connection (their drivers end; the tracker then empties).
    pub fn close(&self) {
        self.closed.cancel();
        lock(&self.targets).clear();
    }
}

/// The connections of one target.
#[derive(Debug)]
pub struct TargetPool {
    target: Target,
    common: Arc<Common>,
    closed: CancellationToken,
    conns: Mutex<Conns>,
    /// A stream slot or an idle connection became free, a dial finished, or a connection
    /// closed: waiters look again. Signalled through [`TargetPool::wake`] only.
    changed: Notify,
    /// Requests registered on `changed`. A request that finds a free slot at once never
    /// touches the `Notify` (whose list is a mutex shared by every thread), and a freed slot
    /// with nobody waiting signals nothing: the common case costs no lock of its own.
    waiting: AtomicUsize,
    /// This pool's open connections, which `max_connections` bounds. The counters' `open` is
    /// the figure for stats, shared with every pool that reaches the same backend (other
    /// workers', other TLS names'): a request waits only for connections of its own pool,
    /// whose frees signal `changed`.
    open: AtomicUsize,
    counters: Arc<BackendCounters>,
    /// The clock idle times are measured on (milliseconds since).
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Conns {
    h2: Vec<Arc<H2Conn>>,
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Vec<IdleH1>,
    dialing: usize,
    /// What the target speaks, once known (fixed by the protocol, or learned by `auto`).
    wire: Option<Wire>,
    /// The last dial failure and its generation, for requests that waited on that dial.
    generation: u64,
    failure: Option<(u64, Arc<PoolError>)>,
}

impl Conns {
    /// The failure of a dial that ended after `generation` (the one a waiter waited for).
    fn failed_since(&self, generation: u64) -> Option<PoolError> {
        match &self.failure {
            Some((g, e)) if *g > generation => Some(PoolError::Shared(Arc::clone(e))),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct H2Conn {
    sender: h2::client::SendRequest<Bytes>,
    /// No new stream may go on it: its driver ended, or the backend sent GOAWAY (the
    /// streams it still has finish on the driver).
    closed: Arc<AtomicBool>,
    max_streams: u32,
    active: AtomicU32,
    /// When `active` last dropped to zero (ms since the pool's epoch).
    idle_since_ms: AtomicU64,
}

#[derive(Debug)]
struct IdleH1 {
    sender: http1::SendRequest<ReqBody>,
    since: Instant,
}

/// A connection (or a stream on one) held for one request.
#[derive(Debug)]
pub enum Lease {
    /// A stream slot on an HTTP/2 connection.
    H2 {
        /// A handle to send on, ready for one request.
        sender: h2::client::SendRequest<Bytes>,
        /// Frees the slot when dropped: keep it until the response body is done.
        slot: StreamSlot,
    },
    /// An HTTP/1.1 connection, ready for a request.
    Http1(H1Lease),
}

impl Lease {
    /// The HTTP version the request must be written in.
    pub fn wire(&self) -> Wire {
        match self {
            Lease::H2 { .. } => Wire::H2,
            Lease::Http1(_) => Wire::Http1,
        }
    }
}

/// An HTTP/1.1 connection taken from the pool; [`H1Lease::finish`] hands it back.
#[derive(Debug)]
pub struct H1Lease {
    sender: Option<http1::SendRequest<ReqBody>>,
    home: Arc<TargetPool>,
    reusable: bool,
}

impl H1Lease {
    fn new(sender: http1::SendRequest<ReqBody>, home: Arc<TargetPool>) -> Self {
        home.counters.in_use.fetch_add(1, Ordering::Relaxed);
        home.counters.requests.fetch_add(1, Ordering::Relaxed);
        H1Lease {
            sender: Some(sender),
            home,
            reusable: false,
        }
    }

    /// The connection to send on.
    pub fn sender(&mut self) -> &mut http1::SendRequest<ReqBody> {
        self.sender
            .as_mut()
            .expect("an H1Lease holds its sender until dropped")
    }

    /// Returns the connection to its pool after a response body read to the end with
    /// keep-alive on both sides; otherwise drops it (hyper closes it).
    pub fn finish(mut self, reusable: bool) {
        self.reusable = reusable;
    }
}

impl Drop for H1Lease {
    fn drop(&mut self) {
        self.home.counters.in_use.fetch_sub(1, Ordering::Relaxed);
        self.home.counters.requests.fetch_sub(1, Ordering::Relaxed);
        if let Some(sender) = self.sender.take()
            && self.reusable
            && !sender.is_closed()
        {
            self.home.put_idle(sender);
        }
    }
}

/// Which HTTP/2 connection a checkout tries first (see [`TargetPool::checkout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The oldest with room: requests packed onto few connections.
    Oldest,
    /// The youngest with room: for a request a closing connection refused.
    Youngest,
}

/// A `dialing` place taken in [`TargetPool::checkout`], held by the request that dials.
/// Dropped still held (the request's future was dropped mid-dial), it gives the place back
/// and wakes the waiters, one of which dials instead.
struct DialPlace<'a> {
    pool: &'a TargetPool,
    held: bool,
}

impl Drop for DialPlace<'_> {
    fn drop(&mut self) {
        if self.held {
            lock(&self.pool.conns).dialing -= 1;
            self.pool.wake();
        }
    }
}

/// A request counted in [`TargetPool::waiting`] while it waits for a slot.
struct Waiting<'a>(&'a TargetPool);

impl<'a> Waiting<'a> {
    fn register(pool: &'a TargetPool) -> Self {
        pool.waiting.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Waiting(pool)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One HTTP/2 stream slot held by a request; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamSlot {
    conn: Arc<H2Conn>,
    home: Arc<TargetPool>,
}

impl StreamSlot {
    /// The tracker a request body's pipe to the backend stream is spawned on: it belongs to
    /// the pool, like the connection it writes to.
    pub fn tasks(&self) -> &TaskTracker {
        &self.home.common.tasks
    }

    /// Takes a slot on `conn` (the caller checked there is room).
    fn take(conn: &Arc<H2Conn>, home: &Arc<TargetPool>) -> Self {
        if conn.active.fetch_add(1, Ordering::AcqRel) == 0 {
            home.counters.in_use.fetch_add(1, Ordering::Relaxed);
        }
        home.counters.requests.fetch_add(1, Ordering::Relaxed);
        StreamSlot {
            conn: Arc::clone(conn),
            home: Arc::clone(home),
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.home.counters.requests.fetch_sub(1, Ordering::Relaxed);
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.home.counters.in_use.fetch_sub(1, Ordering::Relaxed);
            let now = self.home.epoch.elapsed().as_millis() as u64;
            self.conn.idle_since_ms.store(now, Ordering::Relaxed);
        }
        self.home.wake();
    }
}

impl TargetPool {
    fn new(target: Target, common: Arc<Common>, closed: CancellationToken) -> Self {
        let wire = target.fixed_wire();
        let counters = common.stats.counters(BackendKey {
            backend: target.backend.clone(),
            protocol: target.protocol,
            tls: target.tls.is_some(),
        });
        TargetPool {
            target,
            common,
            closed,
            conns: Mutex::new(Conns {
                wire,
                ..Conns::default()
            }),
            changed: Notify::new(),
            waiting: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            counters,
            epoch: Instant::now(),
        }
    }

    /// The target these connections go to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The backend TLS client configs (for connections opened outside the pool: WebSockets).
    pub fn backend_tls(&self) -> &BackendTls {
        &self.common.tls
    }

    /// A connection (HTTP/1.1) or stream slot (HTTP/2) for one request: reused when one is
    /// free, dialled when the target has room, else waited for. All of it within
    /// `connect_timeout`. Returns the lease and, when this request dialled, how long the dial
    /// took (for the route's connect-time histogram).
    ///
    /// `pick`: which open HTTP/2 connection with room goes first. The oldest packs requests
    /// onto few connections; a request that a closing connection refused goes to the
    /// youngest, since backends that close after N requests (nginx's `keepalive_requests`)
    /// refuse the streams past N of their oldest connection first.
    pub async fn checkout(
        self: &Arc<Self>,
        connect_timeout: Duration,
        pick: Pick,
    ) -> Result<(Lease, Option<Duration>), PoolError> {
        let deadline = Instant::now() + connect_timeout;
        // The common case: a free slot or idle connection, taken without registering.
        if let Some(lease) = self.reuse(&mut lock(&self.conns), pick) {
            return Ok((lease, None));
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Registered before looking again, so a slot freed meanwhile is either seen
            // below or signalled to `changed` (see `wake`).
            let _waiting = Waiting::register(self);
            let waited_for = {
                let mut conns = lock(&self.conns);
                if let Some(lease) = self.reuse(&mut conns, pick) {
                    return Ok((lease, None));
                }
                let cap = self.common.settings.max_connections;
                let open = self.open.load(Ordering::Acquire);
                let one_dial_at_a_time = conns.wire != Some(Wire::Http1);
                let room = cap == 0 || open + conns.dialing < cap;
                if room && !(one_dial_at_a_time && conns.dialing > 0) {
                    conns.dialing += 1;
                    None
                } else {
                    Some(conns.generation)
                }
            };
            let Some(generation) = waited_for else {
                return self.dial_new(deadline, connect_timeout).await;
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let conns = lock(&self.conns);
                if let Some(e) = conns.failed_since(generation) {
                    return Err(e);
                }
                return Err(if conns.dialing > 0 {
                    // Another request's dial is slow: that request counts the failure.
                    PoolError::Shared(Arc::new(PoolError::Timeout {
                        backend: self.target.backend.clone(),
                        after: connect_timeout,
                    }))
                } else {
                    PoolError::Full {
                        backend: self.target.backend.clone(),
                        max: self.common.settings.max_connections,
                        after: connect_timeout,
                    }
                });
            }
            // A dial this request waited for failed: it shares that answer rather than
            // dialling the dead backend again (a burst of N requests would take N dials).
            let conns = lock(&self.conns);
            if conns.dialing == 0
                && conns.h2.is_empty()
                && conns.idle.is_empty()
                && let Some(e) = conns.failed_since(generation)
            {
                return Err(e);
            }
        }
    }

    /// A free slot on an open HTTP/2 connection (the oldest or the youngest with room, as
    /// `pick` says), or an idle HTTP/1.1 connection.
    fn reuse(self: &Arc<Self>, conns: &mut Conns, pick: Pick) -> Option<Lease> {
        conns.h2.retain(|c| !c.closed.load(Ordering::Acquire));
        let order: &mut dyn Iterator<Item = &Arc<H2Conn>> = match pick {
            Pick::Oldest => &mut conns.h2.iter(),
            Pick::Youngest => &mut conns.h2.iter().rev(),
        };
        for conn in order {
            let active = conn.active.load(Ordering::Acquire);
            // The backend may have lowered its limit since its first SETTINGS: h2 would
            // queue a stream opened past it (until another ends, or response_timeout).
            let now_max = u32::try_from(conn.sender.current_max_send_streams()).unwrap_or(u32::MAX);
            if active >= conn.max_streams.min(now_max) {
                continue;
            }
            // A fresh handle is ready at once unless the connection is done: the backend
            // sent GOAWAY or the connection failed. Nothing is registered with the no-op
            // waker, since a handle with no stream pending open never waits.
            let mut sender = conn.sender.clone();
            match sender.poll_ready(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(())) => {
                    return Some(Lease::H2 {
                        sender,
                        slot: StreamSlot::take(conn, self),
                    });
                }
                Poll::Ready(Err(_)) => conn.closed.store(true, Ordering::Release),
                Poll::Pending => {}
            }
        }
        let idle_timeout = self.common.settings.idle_timeout;
        while let Some(idle) = conns.idle.pop() {
            if idle.since.elapsed() < idle_timeout && !idle.sender.is_closed() {
                return Some(Lease::Http1(H1Lease::new(idle.sender, Arc::clone(self))));
            }
        }
        None
    }

    /// Opens a connection for the caller, who took a `dialing` place.
    async fn dial_new(
        self: &Arc<Self>,
        deadline: Instant,
        connect_timeout: Duration,
    ) -> Result<(Lease, Option<Duration>), PoolError> {
        // Given back if this future is dropped before the dial ends (the client gave up, the
        // request was reset): else `dialing` would stay counted for good, and with one dial
        // at a time (HTTP/2) no request of this target would ever dial again.
        let mut place = DialPlace {
            pool: self,
            held: true,
        };
        let started = Instant::now();
        // Boxed: the dial's state (TLS, handshakes) is large and rare; requests that reuse a
        // connection should not carry it.
        let res = match tokio::time::timeout_at(deadline, Box::pin(self.open())).await {
            Ok(res) => res,
            Err(_) => Err(PoolError::Timeout {
                backend: self.target.backend.clone(),
                after: connect_timeout,
            }),
        };
        let mut conns = lock(&self.conns);
        place.held = false;
        conns.dialing -= 1;
        conns.generation += 1;
        let res = match res {
            Ok(Opened::H2(conn)) => {
                conns.wire = Some(Wire::H2);
                let slot = StreamSlot::take(&conn, self);
                conns.h2.push(Arc::clone(&conn));
                // A fresh handle has no stream pending open: it takes this request at once.
                Ok(Lease::H2 {
                    sender: conn.sender.clone(),
                    slot,
                })
            }
            Ok(Opened::Http1(sender)) => {
                conns.wire = Some(Wire::Http1);
                Ok(Lease::Http1(H1Lease::new(sender, Arc::clone(self))))
            }
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let e = Arc::new(e);
                conns.failure = Some((conns.generation, Arc::clone(&e)));
                Err(PoolError::Dialled(e))
            }
        };
        drop(conns);
        // Waiters: a new connection with free slots, or a failure to share.
        self.wake();
        res.map(|lease| (lease, Some(started.elapsed())))
    }

    async fn open(self: &Arc<Self>) -> Result<Opened, PoolError> {
        let (stream, wire) = connector::connect(&self.target, &self.common.tls).await?;
        let span = tracing::debug_span!("backend", backend = %self.target.backend);
        match wire {
            Wire::H2 => self.handshake_h2(stream, span).await.map(Opened::H2),
            Wire::Http1 => self.handshake_h1(stream, span).await.map(Opened::Http1),
        }
    }

    /// The HTTP/2 handshake of a pooled connection, on the `h2` crate: done once the
    /// backend's SETTINGS arrived (see [`handshake_h2`]).
    async fn handshake_h2(
        self: &Arc<Self>,
        stream: BackendStream,
        span: tracing::Span,
    ) -> Result<Arc<H2Conn>, PoolError> {
        let backend = &self.target.backend;
        let (io, settings) = SettingsWatch::new(stream);
        let (sender, conn) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(PoolError::handshake(backend, "HTTP/2"))?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = Arc::clone(&closed);
        self.spawn_driver(
            async move {
                let res = conn.await;
                ended.store(true, Ordering::Release);
                res
            },
            span,
        );
        let settings = opening_settings(settings, backend).await?;
        let max_streams = settings
            .max_concurrent_streams
            .unwrap_or(MAX_STREAMS_PER_CONN)
            .clamp(1, MAX_STREAMS_PER_CONN);
        Ok(Arc::new(H2Conn {
            sender,
            closed,
            max_streams,
            active: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
        }))
    }

    async fn handshake_h1(
        self: &Arc<Self>,
        stream: BackendStream,
        span: tracing::Span,
    ) -> Result<http1::SendRequest<ReqBody>, PoolError> {
        let (sender, conn) = handshake_h1(stream, &self.target.backend).await?;
        self.spawn_driver(conn, span);
        Ok(sender)
    }

    /// Drives a backend connection until it ends or the pool closes; counts it open meanwhile.
    fn spawn_driver<C, E>(self: &Arc<Self>, conn: C, span: tracing::Span)
    where
        C: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.counters.open.fetch_add(1, Ordering::AcqRel);
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        let home = Arc::clone(self);
        let closed = self.closed.clone();
        let driver = async move {
            tokio::select! {
                res = conn => match res {
                    Ok(()) => tracing::debug!("backend connection closed"),
                    Err(e) => tracing::debug!("backend connection ended: {e}"),
                },
                // Through a gate: the connection wakes this task a few times per request, and
                // each poll of the token's future takes its waiter list's lock.
                () = Woken::new(closed.cancelled()) => {}
            }
            home.counters.open.fetch_sub(1, Ordering::AcqRel);
            home.open.fetch_sub(1, Ordering::AcqRel);
            // A closed connection frees a place under the cap.
            home.wake();
        };
        self.common.tasks.spawn(driver.instrument(span));
    }

    fn put_idle(&self, sender: http1::SendRequest<ReqBody>) {
        let mut conns = lock(&self.conns);
        conns.idle.push(IdleH1 {
            sender,
            since: Instant::now(),
        });
        let max_idle = self.common.settings.max_idle;
        if conns.idle.len() > max_idle {
            // The coldest goes: dropping its sender closes it.
            let excess = conns.idle.len() - max_idle;
            conns.idle.drain(..excess);
        }
        drop(conns);
        self.wake();
    }

    /// Tells the requests waiting on this target to look again, if there are any. The
    /// fence pairs with the one in [`Waiting::register`]: either the waiter's look sees what
    /// the caller just freed, or the caller sees the waiter (and the waiter's `Notified`,
    /// enabled before it registered) and signals it.
    fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }

    /// Closes connections idle for `idle_timeout`.
    fn sweep(&self) {
        let idle_timeout = self.common.settings.idle_timeout;
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let limit_ms = idle_timeout.as_millis() as u64;
        let mut conns = lock(&self.conns);
        conns
            .idle
            .retain(|c| c.since.elapsed() < idle_timeout && !c.sender.is_closed());
        conns.h2.retain(|c| {
            let unused = c.active.load(Ordering::Acquire) == 0
                && now_ms.saturating_sub(c.idle_since_ms.load(Ordering::Relaxed)) >= limit_ms;
            !unused && !c.closed.load(Ordering::Acquire)
        });
    }

    fn is_empty(&self) -> bool {
        let conns = lock(&self.conns);
        conns.h2.is_empty()
            && conns.idle.is_empty()
            && conns.dialing == 0
            && self.open.load(Ordering::Acquire) == 0
    }
}

enum Opened {
    H2(Arc<H2Conn>),
    Http1(http1::SendRequest<ReqBody>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code panics while holding a pool lock; if one did, the lists are still consistent
    // (every edit is a single push/retain/pop).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    //! The pool's connection life against real loopback backends (the dialer is the real
    //! one: a connect to 127.0.0.1 is as cheap as a fake, and tells the truth about sockets).

    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    use mc_proxy_shared::BackendProtocol;
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/1.1 backend answering every request `200 ok` with keep-alive; counts the
    /// connections it accepted.
    async fn h1_backend() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let answer = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), answer)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn pool(max_connections: usize, stats: &Arc<BackendRegistry>) -> Pool {
        Pool::new(
            BackendTls::new(None),
            PoolSettings {
                max_connections,
                max_idle: 8,
                idle_timeout: Duration::from_secs(30),
            },
            TaskTracker::new(),
            Arc::clone(stats),
        )
    }

    fn http1(addr: SocketAddr) -> Target {
        Target {
            backend: addr.to_string(),
            protocol: BackendProtocol::Http1,
            tls: None,
            proxy: None,
        }
    }

    /// One request on an HTTP/1.1 lease, its answer read to the end.
    async fn one_request(lease: &mut H1Lease) {
        let response = lease
            .sender()
            .send_request(http::Request::new(ReqBody::Empty))
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    fn h1(lease: Lease) -> H1Lease {
        match lease {
            Lease::Http1(h1) => h1,
            Lease::H2 { .. } => panic!("an HTTP/1.1 target gave an HTTP/2 lease"),
        }
    }

    #[tokio::test]
    async fn an_http1_connection_handed_back_is_reused_and_one_not_reusable_is_not() {
        let (addr, accepted) = h1_backend().await;
        let stats = Arc::default();
        let pool = pool(0, &stats);
        let target = pool.target(&http1(addr));

        let (lease, _) = target
            .checkout(Duration::from_secs(5), Pick::Oldest)
            .await
            .unwrap();
        let mut lease = h1(lease);
        one_request(&mut lease).await;
        lease.finish(true);
        // Handed back: the next request takes it, no second dial.
        let (lease, _) = target
            .checkout(Duration::from_secs(5), Pick::Oldest)
            .await
            .unwrap();
        let mut lease = h1(lease);
        one_request(&mut lease).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
        // Not reusable (`Connection: close` on a side): dropped, the next one dials.
        lease.finish(false);
        let (lease, _) = target
            .checkout(Duration::from_secs(5), Pick::Oldest)
            .await
            .unwrap();
        let mut lease = h1(lease);
        one_request(&mut lease).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
        let figures = &stats.snapshot()[0];
        assert_eq!((figures.opened, figures.failed, figures.in_use), (2, 0, 1));
    }

    #[tokio::test]
    async fn at_the_cap_a_request_waits_for_a_free_connection_then_is_refused_as_full() {
        let (addr, accepted) = h1_backend().await;
        let stats = Arc::default();
        let pool = pool(1, &stats);
        let target = pool.target(&http1(addr));
        let (held, _) = target
            .checkout(Duration::from_secs(5), Pick::Oldest)
            .await
            .unwrap();

        let wait = Duration::from_millis(300);
        let started = Instant::now();
        let refused = target.checkout(wait, Pick::Oldest).await.unwrap_err();
        let waited = started.elapsed();
        assert!(
            refused.is_full() && !refused.is_backend_failure(),
            "{refused}"
        );
        assert!(
            waited >= wait && waited < Duration::from_secs(3),
            "refused after {waited:?}"
        );

        // Freed while another waits: that one gets it, without a dial.
        let waiter = {
            let target = Arc::clone(&target);
            tokio::spawn(async move {
                target
                    .checkout(Duration::from_secs(5), Pick::Oldest)
                    .await
                    .map(|(lease, _)| lease)
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut held = h1(held);
        one_request(&mut held).await;
        held.finish(true);
        let lease = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("the waiter was not woken")
            .unwrap()
            .unwrap();
        drop(h1(lease));
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }

    /// An HTTP/2 backend (h2c) allowing `streams` concurrent streams per connection, answering
    /// each request `200` with no body; counts the connections it accepted.
    async fn h2_backend(streams: u32) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::Builder::new()
                        .max_concurrent_streams(streams)
                        .handshake::<_, Bytes>(tcp)
                        .await
                    else {
                        return;
                    };
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        let _ = respond.send_response(http::Response::new(()), true);
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// HTTP/2: a connection carries as many requests at once as the backend's SETTINGS allow;
    /// past that a second connection is dialled, and freed slots are used before dialling.
    #[tokio::test]
    async fn http2_streams_fill_a_connection_up_to_the_backends_limit_then_dial_another() {
        let (addr, accepted) = h2_backend(2).await;
        let stats = Arc::default();
        let pool = pool(0, &stats);
        let target = pool.target(&Target {
            protocol: BackendProtocol::H2,
            ..http1(addr)
        });
        let mut held = Vec::new();
        for _ in 0..3 {
            let (lease, _) = target
                .checkout(Duration::from_secs(5), Pick::Oldest)
                .await
                .unwrap();
            assert_eq!(lease.wire(), Wire::H2);
            held.push(lease);
        }
        // Two streams on the first connection, the third on a second one.
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
        let figures = &stats.snapshot()[0];
        assert_eq!((figures.opened, figures.open), (2, 2));
        // A slot freed is taken again without a dial.
        held.truncate(1);
        for _ in 0..2 {
            let (lease, _) = target
                .checkout(Duration::from_secs(5), Pick::Oldest)
                .await
                .unwrap();
            held.push(lease);
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_refused_dial_is_the_backends_failure_and_is_counted() {
        // A bound socket that never listens: a connect to it is refused at once.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let stats = Arc::default();
        let pool = pool(0, &stats);
        let target = pool.target(&http1(addr));

        let failed = target
            .checkout(Duration::from_secs(5), Pick::Oldest)
            .await
            .unwrap_err();
        assert!(failed.is_backend_failure() && !failed.is_full(), "{failed}");
        assert!(!failed.is_timeout(), "{failed}");
        let figures = &stats.snapshot()[0];
        assert_eq!((figures.opened, figures.failed, figures.open), (0, 1, 0));
    }
}
