//! Listeners: binding, the data-plane workers, the accept loops, and the one shutdown story.
//!
//! The daemon's data plane is [`Workers`]: a thread per worker, each with a current-thread
//! runtime and its own `SO_REUSEPORT` socket on every listener address, so that everything a
//! connection does stays on one thread. [`run`] serves one worker's share on the caller's
//! runtime (the tests). Shared by all workers: the `max_connections` permits, connection ids,
//! the state snapshots and the backend counters.
//!
//! Listeners added at run time reach every worker through `sockets::Feed` (the control plane
//! binds their sockets, each worker registers its own and accepts like on the others); a
//! removed listener's accept loops end on its `closed` token.
//!
//! I/O: binds and accepts; each accepted connection goes to `pipeline::handle_conn` in a task
//! owned by the server's `TaskTracker` (nothing is spawned detached: the L7 server's own tasks
//! go through the same tracker). Accept step: a connection takes an owned permit of
//! `max_connections` or is reset at once; accept errors back off instead of ending the listener.
//!
//! Shutdown: when `shutdown` fires the accept loops stop and the listeners close; open
//! connections get `proxy.shutdown_timeout` to finish (L7 connections are told at once, with
//! GOAWAY or `Connection: close`), then the relays are cancelled and [`run`] returns once every
//! task has ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::listeners::{handover, sockets};
use crate::model::state::{ListenerCounters, ListenerState, SocketGuard, State};
use crate::proxy::l7;
use crate::proxy::pipeline::{self, Shared};

/// A bound socket and the listener state it serves.
#[derive(Debug)]
pub struct BoundListener {
    /// The accepting socket.
    pub listener: TcpListener,
    /// Its routes, flags and counters.
    pub state: Arc<ListenerState>,
    /// Its entry in the handover registry (the daemon's workers), which goes with it.
    _registered: Option<handover::Registered>,
    /// Counts the socket as open; after `listener`, so it drops after the socket closed.
    _open: SocketGuard,
}

impl BoundListener {
    /// The address actually bound (differs from the configured one when the port was 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

pub use crate::listeners::sockets::BindError;

/// Binds every listener in `state` with the current runtime, one socket each (no
/// `SO_REUSEPORT`): one worker's share, for [`run`]. Fails on the first address that cannot
/// be bound, before any connection is accepted.
pub async fn bind(state: &State) -> Result<Vec<BoundListener>, BindError> {
    let mut bound = Vec::new();
    for l in state.listeners().iter() {
        let socket = sockets::bind_one(l.addr, false).map_err(|source| BindError {
            addr: l.addr,
            source,
        })?;
        bound.push(register(l, socket, l.socket_guard(), None)?);
    }
    Ok(bound)
}

/// Registers `socket` with the current runtime as one of `state`'s sockets (`registered`: its
/// handover registry entry, dropped with it).
fn register(
    state: &Arc<ListenerState>,
    socket: std::net::TcpListener,
    open: SocketGuard,
    registered: Option<handover::Registered>,
) -> Result<BoundListener, BindError> {
    let addr = socket.local_addr().unwrap_or(state.addr);
    let listener = TcpListener::from_std(socket).map_err(|source| BindError { addr, source })?;
    state.set_bound(addr);
    Ok(BoundListener {
        listener,
        state: Arc::clone(state),
        _registered: registered,
        _open: open,
    })
}

/// How many data-plane workers `proxy` asks for: `workers`, or one per CPU when it is 0.
pub fn worker_count(proxy: &crate::model::state::ProxyConfig) -> usize {
    match proxy.workers {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    }
}

/// Why the data-plane workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    /// A listener address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A worker's runtime could not be built (threads, the epoll instance, timers).
    #[error("starting data-plane worker {worker}'s runtime: {source}")]
    Runtime {
        /// The worker's index.
        worker: usize,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A worker thread could not be started.
    #[error("starting data-plane worker {worker}'s thread: {source}")]
    Thread {
        /// The worker's index.
        worker: usize,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The data plane as worker threads, each with a runtime of its own (one thread, no work
/// stealing) and its own socket on every listener address (`SO_REUSEPORT`: the kernel
/// spreads new connections over the workers). A connection, its TLS, its HTTP streams and
/// the backend connections it uses are all polled by one thread, so they never wake each
/// other across cores or share a lock with another core (measured in docs/BENCHMARKS.md);
/// HAProxy's `nbthread` and nginx's `reuseport` workers are laid out the same way.
///
/// Built in two steps so that every error (an address in use, a runtime that cannot start)
/// comes before the daemon reports itself ready: [`Workers::bind`], then [`Workers::start`].
#[derive(Debug)]
pub struct Workers {
    workers: Vec<(tokio::runtime::Runtime, Vec<BoundListener>)>,
    registry: handover::Registry,
}

impl Workers {
    /// One current-thread runtime per worker, and every listener bound in each. The first
    /// worker binds the configured address (port 0 included); the others bind the address it
    /// got. With one worker no `SO_REUSEPORT` is set.
    pub fn bind(state: &State, workers: usize) -> Result<Workers, WorkersError> {
        Workers::bind_with(state, workers, &mut handover::Inherited::default())
    }

    /// [`Workers::bind`], taking each listener's sockets from `inherited` when it has them
    /// (an upgrade's handover, systemd's socket activation) and binding the others. An
    /// inherited socket is never closed while the process runs (with `SO_REUSEPORT` each
    /// socket has its own backlog: closing one would reset what waits in it), so the workers
    /// share what came: with at least as many sockets as workers, worker `i` accepts on
    /// sockets `i`, `i + workers`, ...; with fewer, worker `i` accepts on socket
    /// `i % sockets` too (a duplicate: one socket, several epoll sets).
    pub fn bind_with(
        state: &State,
        workers: usize,
        inherited: &mut handover::Inherited,
    ) -> Result<Workers, WorkersError> {
        let workers = workers.max(1);
        // Every socket first, so that an address in use fails before any runtime starts.
        let listeners = state.listeners();
        // Per listener, per worker: the sockets that worker accepts on.
        let mut sockets: Vec<Vec<Vec<std::net::TcpListener>>> = Vec::with_capacity(listeners.len());
        for l in listeners.iter() {
            let taken = inherited.take_listener(l);
            let mut mine: Vec<Vec<std::net::TcpListener>> =
                (0..workers).map(|_| Vec::new()).collect();
            if taken.is_empty() {
                for (worker, socket) in sockets::bind_for_workers(l.addr, workers)?
                    .into_iter()
                    .enumerate()
                {
                    mine[worker].push(socket);
                }
            } else {
                let bound = taken[0].local_addr().unwrap_or(l.addr);
                let shared = taken.len();
                if shared < workers {
                    for worker in shared..workers {
                        let copy =
                            taken[worker % shared]
                                .try_clone()
                                .map_err(|source| BindError {
                                    addr: bound,
                                    source,
                                })?;
                        mine[worker].push(copy);
                    }
                }
                for (j, socket) in taken.into_iter().enumerate() {
                    // Accept loops poll them: non-blocking whatever the sender had.
                    socket.set_nonblocking(true).map_err(|source| BindError {
                        addr: bound,
                        source,
                    })?;
                    mine[j % workers].push(socket);
                }
                tracing::info!(
                    listener = %bound,
                    sockets = shared,
                    workers,
                    "listening on inherited sockets"
                );
            }
            sockets.push(mine);
        }
        // On an error the runtimes built so far go through `Drop for Workers`.
        let mut built = Workers {
            workers: Vec::with_capacity(workers),
            registry: handover::Registry::default(),
        };
        let registry = built.registry.clone();
        for worker in 0..workers {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| WorkersError::Runtime { worker, source })?;
            // The sockets register with the runtime current at `from_std`: this worker's.
            let bound = {
                let _in_worker = runtime.enter();
                let mut bound = Vec::new();
                let mut result = Ok(());
                for (l, per_worker) in listeners.iter().zip(sockets.iter_mut()) {
                    for socket in std::mem::take(&mut per_worker[worker]) {
                        // Registered from the start: an upgrade right after start-up hands
                        // over every socket, accept loop running or not.
                        let registered =
                            registry
                                .add(l, worker, &socket)
                                .map_err(|source| BindError {
                                    addr: socket.local_addr().unwrap_or(l.addr),
                                    source,
                                });
                        match registered
                            .and_then(|r| register(l, socket, l.socket_guard(), Some(r)))
                        {
                            Ok(b) => bound.push(b),
                            Err(e) => result = Err(e),
                        }
                    }
                }
                result.map(|()| bound)
            };
            match bound {
                Ok(bound) => built.workers.push((runtime, bound)),
                Err(e) => {
                    // Without blocking, as in `Drop for Workers`.
                    runtime.shutdown_background();
                    return Err(e.into());
                }
            }
        }
        Ok(built)
    }

    /// The workers' listening sockets, from now on and as listeners come and go: what an
    /// upgrade hands over.
    pub fn registry(&self) -> handover::Registry {
        self.registry.clone()
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// The addresses the first worker bound, one per listener (all workers share them).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.workers
            .first()
            .map(|(_, bound)| {
                let mut addrs: Vec<SocketAddr> =
                    bound.iter().filter_map(|b| b.local_addr().ok()).collect();
                // A worker accepting on several inherited sockets of one listener.
                addrs.dedup();
                addrs
            })
            .unwrap_or_default()
    }

    /// Starts the worker threads, which serve until `shutdown` fires (see the module docs);
    /// worker 0 also runs the active health checks. [`Running::wait`] then waits for the
    /// drain.
    pub fn start(
        mut self,
        state: &Arc<State>,
        shutdown: &CancellationToken,
    ) -> Result<Running, WorkersError> {
        let fleet = Fleet::new(state, self.workers.len());
        // Every worker's inbox for listeners added at run time, installed in the state once
        // they all exist: `control` binds through it.
        let feed = sockets::Feed::with_registry(self.registry.clone());
        let mut running = Vec::with_capacity(self.workers.len());
        // What is not started yet stays in `self` (and its `Drop`) if a thread fails.
        let mut pending = std::mem::take(&mut self.workers).into_iter().enumerate();
        while let Some((worker, (runtime, listeners))) = pending.next() {
            let (done, finished) = tokio::sync::oneshot::channel::<()>();
            let serving = serve_worker(
                listeners,
                feed.subscribe(),
                Arc::clone(state),
                shutdown.clone(),
                fleet.clone(),
                worker,
            );
            let spawned = std::thread::Builder::new()
                .name(format!("mc-worker-{worker}"))
                .spawn(move || {
                    runtime.block_on(serving);
                    // The runtime goes before `done`: nothing of this worker outlives it.
                    drop(runtime);
                    let _ = done.send(());
                });
            match spawned {
                Ok(thread) => running.push((worker, finished, thread)),
                Err(source) => {
                    // The workers already started stop with the rest of the daemon; the
                    // failed one's runtime went with the closure `spawn` dropped (the daemon
                    // starts its workers outside `block_on`, where that drop may block).
                    shutdown.cancel();
                    self.workers = pending.map(|(_, w)| w).collect();
                    return Err(WorkersError::Thread { worker, source });
                }
            }
        }
        state.install_sockets(Arc::new(feed));
        Ok(Running { running })
    }
}

impl Drop for Workers {
    /// Runtimes never started (an error on the way): shut down without blocking, since this
    /// may run inside another runtime's task, where dropping a runtime panics.
    fn drop(&mut self) {
        for (runtime, listeners) in self.workers.drain(..) {
            drop(listeners);
            runtime.shutdown_background();
        }
    }
}

/// The started workers (see [`Workers::start`]).
#[derive(Debug)]
pub struct Running {
    running: Vec<(
        usize,
        tokio::sync::oneshot::Receiver<()>,
        std::thread::JoinHandle<()>,
    )>,
}

impl Running {
    /// Returns once every worker has drained and ended.
    pub async fn wait(self) {
        for (worker, finished, thread) in self.running {
            if finished.await.is_err() {
                // A panic outside any connection's task (each of those is caught by tokio).
                tracing::error!(worker, "data-plane worker ended by a panic");
            }
            // Done or dead: the join returns at once.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        tracing::info!("all connections closed");
    }
}

/// The start of a graceful shutdown (SIGTERM, SIGINT): `/ready` answers 503 at once, the
/// listeners keep accepting for `[proxy] shutdown_delay` (a load balancer's health check
/// takes the node out meanwhile, so no client is refused by a closed listener or reset in
/// its backlog), then `shutdown` fires and the drain of [`run`] / [`Workers`] begins.
pub async fn drain_then_stop(state: &State, shutdown: &CancellationToken) {
    state.begin_draining();
    let delay = state.proxy().shutdown_delay;
    if !delay.is_zero() {
        tracing::info!(
            "draining: /ready answers 503; listeners stay open for shutdown_delay {}",
            humantime::format_duration(delay)
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => {}
        }
    }
    shutdown.cancel();
}

/// Serves `listeners` on the caller's runtime until `shutdown` fires, then drains (see the
/// module docs): one worker's share of the data plane, the same `serve_worker` each of the
/// daemon's [`Workers`] runs. The end-to-end tests call it on port 0.
pub async fn run(listeners: Vec<BoundListener>, state: Arc<State>, shutdown: CancellationToken) {
    let fleet = Fleet::new(&state, 1);
    let feed = sockets::Feed::default();
    let added = feed.subscribe();
    state.install_sockets(Arc::new(feed));
    serve_worker(listeners, added, state, shutdown, fleet, 0).await;
    tracing::info!("all connections closed");
}

/// What every worker of one daemon shares: the `max_connections` budget and the connection
/// ids (unique across workers: the admin API names connections by id). Each worker's backend
/// pool gets its share of `backend_max_connections` and `backend_max_idle`.
#[derive(Debug, Clone)]
struct Fleet {
    capacity: Arc<Semaphore>,
    next_id: Arc<AtomicU64>,
    workers: usize,
    /// Set by the first worker whose shutdown grace ran out: one warning for the daemon.
    grace_over: Arc<std::sync::atomic::AtomicBool>,
}

impl Fleet {
    fn new(state: &State, workers: usize) -> Self {
        Fleet {
            capacity: Arc::new(Semaphore::new(state.proxy().max_connections)),
            next_id: Arc::new(AtomicU64::new(1)),
            workers: workers.max(1),
            grace_over: Arc::default(),
        }
    }
}

/// One worker's share of the data plane: its listener sockets, accept loops, client
/// connections and backend pool, all on the runtime that polls this future. `added`: this
/// worker's sockets of listeners added at run time (`sockets::Feed`). `worker`: its index,
/// which picks its shard of the connection registry; worker 0 is the lead, which also runs
/// the active health checks and logs the listeners and the start of shutdown (one worker
/// does, for the whole daemon).
async fn serve_worker(
    listeners: Vec<BoundListener>,
    mut added: tokio::sync::mpsc::UnboundedReceiver<crate::listeners::sockets::Opened>,
    state: Arc<State>,
    shutdown: CancellationToken,
    fleet: Fleet,
    worker: usize,
) {
    let lead = worker == 0;
    let tracker = TaskTracker::new();
    // Pooled backend connections outlive any one client connection: they have a tracker of
    // their own, closed after the client connections are done.
    let pool_tasks = TaskTracker::new();
    let capacity = Arc::clone(&fleet.capacity);
    let proxy = arc_swap::Guard::into_inner(state.proxy());
    let shared = Arc::new(Shared {
        pool: Arc::new(l7::Pool::new(
            l7::BackendTls::new(proxy.backend_ca.clone()),
            crate::connectors::pool::PoolSettings {
                // Each worker's pool has its share of the cap (rounded up): a request waits
                // only for its own worker's connections, the ones whose frees wake it.
                max_connections: proxy.backend_max_connections.div_ceil(fleet.workers),
                max_idle: proxy.backend_max_idle.div_ceil(fleet.workers),
                idle_timeout: proxy.backend_idle_timeout,
            },
            pool_tasks.clone(),
            Arc::clone(&state.backends),
        )),
        state,
        shutdown: shutdown.clone(),
        force_close: CancellationToken::new(),
        tasks: tracker.clone(),
        next_id: Arc::clone(&fleet.next_id),
        worker,
    });

    {
        let (shared, shutdown) = (Arc::clone(&shared), shutdown.clone());
        pool_tasks.spawn(async move { shared.pool.run(shutdown).await });
    }
    // Active health checks probe backends, not clients: their tasks live with the pool's.
    if lead {
        pool_tasks.spawn(crate::connectors::health::run(
            crate::connectors::health::Checker {
                state: Arc::clone(&shared.state),
                pool: Arc::clone(&shared.pool),
            },
            pool_tasks.clone(),
            shutdown.clone(),
        ));
    }

    let accept = |bound: BoundListener| {
        if lead {
            match bound.local_addr() {
                Ok(addr) => tracing::info!(
                    listener = %addr,
                    proxy_protocol = bound.state.settings().proxy_protocol,
                    routes = bound.state.routes().len(),
                    "listening"
                ),
                Err(e) => tracing::warn!("listener without a local address: {e}"),
            }
        }
        tracker.spawn(accept_loop(
            bound,
            Arc::clone(&shared),
            Arc::clone(&capacity),
            tracker.clone(),
            shutdown.clone(),
        ));
    };
    for bound in listeners {
        accept(bound);
    }
    // Until shutdown: listeners added at run time start accepting on this worker too.
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            opened = added.recv() => match opened {
                Some(opened) => match register(&opened.state, opened.socket, opened.guard, opened.registered) {
                    Ok(bound) => accept(bound),
                    Err(e) => tracing::error!("{e}: this worker does not accept on it"),
                },
                // The feed went away (the state is being dropped): nothing more to add.
                None => shutdown.cancelled().await,
            },
        }
    }
    drop(added);
    tracker.close();
    // Read now: a SIGHUP may have changed it since the start.
    let grace = shared.state.proxy().shutdown_timeout;
    let open = || {
        shared
            .state
            .listeners()
            .iter()
            .map(|l| l.counters.active.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    if lead {
        tracing::info!(open = open(), grace = ?grace, "shutting down: no longer accepting");
    }
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        // Every worker's grace ends at the same moment: one line for the daemon, by the first
        // worker there, with the count across workers before any closes its connections
        // (each worker logging the shared count gave `open=8` then `open=3`).
        if !fleet.grace_over.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                open = open(),
                "shutdown grace period over: closing open connections"
            );
        }
        shared.force_close.cancel();
        tracker.wait().await;
    }
    shared.pool.close();
    pool_tasks.close();
    pool_tasks.wait().await;
}

/// Accepts until shutdown. Accept errors (EMFILE, ENOBUFS, ...) back off and retry: a full
/// file table must not end the listener for good.
async fn accept_loop(
    bound: BoundListener,
    shared: Arc<Shared>,
    capacity: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(5);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let mut backoff = MIN_BACKOFF;
    let listener = bound.state;
    // The bound address (the configured one may say port 0) names the listener in logs.
    let bound_addr = bound.listener.local_addr().ok();
    let local = bound_addr.unwrap_or(listener.addr);
    // A socket bound to one address accepts on that address only: it is every connection's
    // local address, so no getsockname(2) per connection. A wildcard listener's connections
    // each have their own, which `handle_conn` asks the socket for.
    let conn_local = bound_addr.filter(|a| !a.ip().is_unspecified());
    let removed = listener.closed().clone();
    // Dropped in reverse: the socket, its registry entry (the last copy), then the guard that
    // counts it open.
    let _open = bound._open;
    let _registered = bound._registered;
    let socket = bound.listener;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            () = removed.cancelled() => {
                tracing::debug!(listener = %local, "listener removed: no longer accepting");
                return;
            }
            res = socket.accept() => res,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => {
                backoff = MIN_BACKOFF;
                conn
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::warn!(listener = %listener.addr, "accept failed, retrying in {backoff:?}: {e}");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        ListenerCounters::bump(&listener.counters.accepted);
        let Ok(permit) = Arc::clone(&capacity).try_acquire_owned() else {
            ListenerCounters::bump(&listener.counters.over_capacity);
            tracing::warn!(listener = %listener.addr, client = %peer, "max_connections reached: connection closed");
            pipeline::reset(stream);
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "conn",
            id,
            listener = %local,
            peer = %peer,
            client = tracing::field::Empty,
            route = tracing::field::Empty,
        );
        let conn = pipeline::handle_conn(
            id,
            stream,
            peer,
            conn_local,
            Arc::clone(&listener),
            Arc::clone(&shared),
            permit,
        );
        tracker.spawn(conn.instrument(span));
    }
}

/// Errors that concern one half-accepted connection, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
