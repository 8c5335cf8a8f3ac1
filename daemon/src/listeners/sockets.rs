//! Listening sockets: how a listener address is bound, once per data-plane worker, and the
//! feed that hands a listener added at run time to every worker.
//!
//! I/O: socket(2), bind(2), listen(2), nothing else; the sockets are plain `std` ones,
//! non-blocking, so that whoever binds them needs no runtime and each worker registers its
//! own with its own runtime (`TcpListener::from_std`).
//!
//! Invariants: a listener's sockets are all bound before any is handed over, so an address
//! that cannot be bound fails the whole change with nothing accepted and nothing stored
//! (the control plane binds before it writes). With more than one worker every socket of a
//! listener has `SO_REUSEPORT` and the kernel spreads new connections over them; the first
//! binds the configured address, the others the address it got (port 0 resolved).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc;

pub use crate::model::state::BindError;
use crate::model::state::{BoundSockets, ListenerState, SocketGuard, SocketHost};

/// The accept backlog of every listening socket (what `TcpListener::bind` uses, and HAProxy's
/// default `maxconn`-bound backlog is of the same order).
const BACKLOG: i32 = 1024;

/// A listening socket on `addr`: `SO_REUSEADDR` (a restart binds while old connections are in
/// TIME_WAIT), `TCP_NODELAY` (inherited by every accepted socket on Linux), `SO_REUSEPORT`
/// when other sockets of this daemon listen on the same address, non-blocking.
pub fn bind_one(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Every accepted socket wants TCP_NODELAY (the proxy writes what it has, whole): Linux
    // copies it from the listening socket, which saves a setsockopt(2) per connection; other
    // systems get it per connection in the accept loop.
    socket.set_tcp_nodelay(true)?;
    if reuse_port {
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// One socket per worker on `addr`, all bound before this returns (see the module docs).
pub fn bind_for_workers(
    addr: SocketAddr,
    workers: usize,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let reuse_port = workers > 1;
    let first = bind_one(addr, reuse_port).map_err(|source| BindError { addr, source })?;
    let bound = first.local_addr().unwrap_or(addr);
    let mut sockets = vec![first];
    for _ in 1..workers.max(1) {
        sockets.push(bind_one(bound, true).map_err(|source| BindError {
            addr: bound,
            source,
        })?);
    }
    Ok(sockets)
}

/// A listener added at run time, as one worker receives it: the listener and that worker's
/// socket.
#[derive(Debug)]
pub struct Opened {
    /// Its routes, settings and counters.
    pub state: Arc<ListenerState>,
    /// This worker's socket on its address (non-blocking, not yet registered).
    pub socket: std::net::TcpListener,
    /// Counts the socket as open until it is closed.
    pub guard: SocketGuard,
    /// Its entry in the handover registry, dropped with it.
    pub registered: Option<crate::listeners::handover::Registered>,
}

/// The data-plane workers' inboxes for listeners added at run time. Each worker subscribes
/// once when it starts; a closed inbox (its worker ended) is dropped at the next send.
#[derive(Debug, Default, Clone)]
pub struct Feed {
    workers: Arc<Mutex<Vec<mpsc::UnboundedSender<Opened>>>>,
    /// Where the sockets handed to workers are recorded for an upgrade's handover.
    registry: crate::listeners::handover::Registry,
}

impl Feed {
    /// A feed whose sockets go into `registry` as they are handed to the workers.
    pub fn with_registry(registry: crate::listeners::handover::Registry) -> Self {
        Feed {
            workers: Arc::default(),
            registry,
        }
    }

    /// A worker's inbox.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Opened> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().push(tx);
        rx
    }

    /// How many workers listen for new listeners (0 when no data plane runs: the control
    /// plane's own tests).
    pub fn workers(&self) -> usize {
        self.lock().iter().filter(|tx| !tx.is_closed()).count()
    }

    /// Binds `addr` once per worker (at least once, so that an address in use is refused even
    /// without a data plane); returns the sockets to hand over with [`Feed::start`].
    pub fn bind(&self, addr: SocketAddr) -> Result<Vec<std::net::TcpListener>, BindError> {
        bind_for_workers(addr, self.workers())
    }

    /// Hands each worker one of `sockets` for `listener`; it accepts from then on. Sockets
    /// left over (a worker that ended meanwhile) close here.
    pub fn start(&self, listener: &Arc<ListenerState>, sockets: Vec<std::net::TcpListener>) {
        if let Some(bound) = sockets.first().and_then(|s| s.local_addr().ok()) {
            listener.set_bound(bound);
        }
        let mut workers = self.lock();
        workers.retain(|tx| !tx.is_closed());
        for (worker, (tx, socket)) in workers.iter().zip(sockets).enumerate() {
            // A socket not registered still serves; only an upgrade would not take it.
            let registered = match self.registry.add(listener, worker, &socket) {
                Ok(registered) => Some(registered),
                Err(e) => {
                    tracing::warn!(listener = %listener.addr, "an upgrade would not hand this socket over: {e}");
                    None
                }
            };
            let _ = tx.send(Opened {
                state: Arc::clone(listener),
                socket,
                guard: listener.socket_guard(),
                registered,
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::UnboundedSender<Opened>>> {
        // The list is only pushed to and filtered: a panic elsewhere cannot leave it half
        // changed, so a poisoned lock is still a good list.
        self.workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The feed as the model's [`SocketHost`]: what `control` binds run-time listeners through.
impl SocketHost for Feed {
    fn bind(&self, addr: SocketAddr) -> Result<Box<dyn BoundSockets>, BindError> {
        let sockets = Feed::bind(self, addr)?;
        Ok(Box::new(Pending {
            feed: self.clone(),
            sockets,
        }))
    }
}

/// Sockets bound by [`Feed`]'s `SocketHost::bind`, waiting to be handed over.
struct Pending {
    feed: Feed,
    sockets: Vec<std::net::TcpListener>,
}

impl BoundSockets for Pending {
    fn local_addr(&self) -> Option<SocketAddr> {
        self.sockets.first().and_then(|s| s.local_addr().ok())
    }

    fn start(self: Box<Self>, listener: &Arc<ListenerState>) {
        self.feed.start(listener, self.sockets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux copies TCP_NODELAY from the listening socket to each accepted one, which is why
    /// the accept loop does not set it there: if that ever stopped holding, small writes
    /// would wait for Nagle's timer on every connection.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let listener = bind_one("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (accepted, _) = accepted.unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "the accepted socket has Nagle on"
        );
        // The connecting side is untouched: the option comes from the listener.
        assert!(!client.unwrap().nodelay().unwrap());
    }

    /// Workers share a port 0 listener's resolved port, and a taken address fails before
    /// anything is handed over.
    #[test]
    fn workers_share_one_resolved_port_and_a_taken_address_is_refused() {
        let sockets = bind_for_workers("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let addrs: Vec<_> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
        assert_eq!(addrs.len(), 3);
        assert_ne!(addrs[0].port(), 0);
        assert!(addrs.iter().all(|a| *a == addrs[0]), "{addrs:?}");

        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind_for_workers(taken.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(err.source.kind(), std::io::ErrorKind::AddrInUse, "{err}");
        assert!(
            err.to_string().starts_with("cannot listen on 127.0.0.1:"),
            "{err}"
        );
    }
}
