//! Listeners: binding, the accept loops, and the one shutdown story.
//!
//! I/O: binds and accepts; each accepted connection goes to [`pipeline::handle_conn`] in a task
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

use crate::l7;
use crate::pipeline::{self, Shared};
use crate::state::{ListenerCounters, ListenerState, State};

/// A bound socket and the listener state it serves.
#[derive(Debug)]
pub struct BoundListener {
    /// The accepting socket.
    pub listener: TcpListener,
    /// Its routes, flags and counters.
    pub state: Arc<ListenerState>,
}

impl BoundListener {
    /// The address actually bound (differs from the configured one when the port was 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A listener address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// What the OS said.
    pub source: std::io::Error,
}

/// Binds every listener in `state`. Fails on the first address that cannot be bound, before
/// any connection is accepted.
pub async fn bind(state: &State) -> Result<Vec<BoundListener>, BindError> {
    let mut bound = Vec::with_capacity(state.listeners.len());
    for l in &state.listeners {
        let listener = TcpListener::bind(l.addr)
            .await
            .map_err(|source| BindError {
                addr: l.addr,
                source,
            })?;
        bound.push(BoundListener {
            listener,
            state: Arc::clone(l),
        });
    }
    Ok(bound)
}

/// Serves `listeners` until `shutdown` fires, then drains (see the module docs). The same
/// function runs the daemon and the end-to-end tests.
pub async fn run(listeners: Vec<BoundListener>, state: Arc<State>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    // Pooled backend connections outlive any one client connection: they have a tracker of
    // their own, closed after the client connections are done.
    let pool_tasks = TaskTracker::new();
    let capacity = Arc::new(Semaphore::new(state.proxy.max_connections));
    let grace = state.proxy.shutdown_timeout;
    let shared = Arc::new(Shared {
        pool: l7::Pool::new(
            l7::BackendTls::new(state.proxy.backend_ca.clone()),
            l7::pool::PoolSettings {
                max_connections: state.proxy.backend_max_connections,
                max_idle: state.proxy.backend_max_idle,
                idle_timeout: state.proxy.backend_idle_timeout,
            },
            pool_tasks.clone(),
            Arc::clone(&state.backends),
        ),
        state,
        shutdown: shutdown.clone(),
        force_close: CancellationToken::new(),
        tasks: tracker.clone(),
        next_id: AtomicU64::new(1),
    });

    {
        let (shared, shutdown) = (Arc::clone(&shared), shutdown.clone());
        pool_tasks.spawn(async move { shared.pool.run(shutdown).await });
    }
    // Active health checks probe backends, not clients: their tasks live with the pool's.
    pool_tasks.spawn(crate::health::run(
        Arc::clone(&shared),
        pool_tasks.clone(),
        shutdown.clone(),
    ));

    for bound in listeners {
        match bound.local_addr() {
            Ok(addr) => tracing::info!(
                listener = %addr,
                proxy_protocol = bound.state.proxy_protocol,
                routes = bound.state.routes().len(),
                "listening"
            ),
            Err(e) => tracing::warn!("listener without a local address: {e}"),
        }
        tracker.spawn(accept_loop(
            bound,
            Arc::clone(&shared),
            Arc::clone(&capacity),
            tracker.clone(),
            shutdown.clone(),
        ));
    }

    shutdown.cancelled().await;
    tracker.close();
    let open = || {
        shared
            .state
            .listeners
            .iter()
            .map(|l| l.counters.active.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    tracing::info!(open = open(), grace = ?grace, "shutting down: no longer accepting");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            open = open(),
            "shutdown grace period over: closing open connections"
        );
        shared.force_close.cancel();
        tracker.wait().await;
    }
    shared.pool.close();
    pool_tasks.close();
    pool_tasks.wait().await;
    tracing::info!("all connections closed");
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
    let local = bound.listener.local_addr().unwrap_or(listener.addr);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            res = bound.listener.accept() => res,
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
