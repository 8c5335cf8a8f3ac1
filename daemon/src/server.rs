//! Listeners and the connection pipeline.
//!
//! I/O: accepts on the bound listeners, reads each client's first bytes, dials backends. It
//! owns every connection task through one `TaskTracker`; nothing is spawned detached.
//!
//! The pipeline (DESIGN.md), one step per call in [`handle_conn`]:
//! accept (capacity) → PROXY header (listeners with `proxy_protocol`) → firewall →
//! ClientHello → route → dispatch (L4 relay, or L7 termination in [`crate::l7`]) → one log
//! line at close.
//!
//! The client address is the TCP peer's, or the source of a received PROXY header: that one
//! address is what the firewall checks, the log shows and a sent PROXY header carries.
//!
//! Shutdown: when `shutdown` fires the accept loops stop and the listeners close; open
//! connections get `proxy.shutdown_timeout` to finish (L7 connections are told at once, with
//! GOAWAY or `Connection: close`), then the relays are cancelled and [`run`] returns once every
//! task has ended.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mc_proxy_shared::{Mode, pb};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Level};

use crate::l7::{self, L7End};
use crate::proxyproto;
use crate::relay::{RelayEnd, relay};
use crate::routes::RouteInfo;
use crate::sni::{self, ClientHello};
use crate::state::{ListenerCounters, ListenerState, StartError, State};
use crate::stats::{ActiveGuard, Transferred};

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

/// Binds every listener in `state`. Fails on the first address that cannot be bound, before
/// any connection is accepted.
pub async fn bind(state: &State) -> Result<Vec<BoundListener>, StartError> {
    let mut bound = Vec::with_capacity(state.listeners.len());
    for l in &state.listeners {
        let listener = TcpListener::bind(l.addr)
            .await
            .map_err(|source| StartError::Bind {
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

/// What every connection task shares.
struct Shared {
    state: Arc<State>,
    /// Fires when shutdown starts: L7 connections drain.
    shutdown: CancellationToken,
    /// Fires when the shutdown grace period is over: relays stop.
    force_close: CancellationToken,
    /// The client TLS config for `backend_tls` L7 routes, built once on first use.
    backend_tls: l7::BackendTls,
    next_id: AtomicU64,
}

/// Serves `listeners` until `shutdown` fires, then drains (see the module docs). The same
/// function runs the daemon and the end-to-end tests.
pub async fn run(listeners: Vec<BoundListener>, state: Arc<State>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let capacity = Arc::new(Semaphore::new(state.proxy.max_connections));
    let grace = state.proxy.shutdown_timeout;
    let shared = Arc::new(Shared {
        backend_tls: l7::BackendTls::new(state.proxy.backend_ca.clone()),
        state,
        shutdown: shutdown.clone(),
        force_close: CancellationToken::new(),
        next_id: AtomicU64::new(1),
    });

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
            reset(stream);
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
        let (shared, listener) = (Arc::clone(&shared), Arc::clone(&listener));
        tracker.spawn(
            async move {
                handle_conn(id, stream, peer, &listener, &shared).await;
                drop(permit);
            }
            .instrument(span),
        );
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

/// What we know about a connection, for its log line.
#[derive(Debug)]
struct ConnInfo {
    /// Unique per daemon run; ties the events of one connection together.
    id: u64,
    /// The TCP peer.
    peer: SocketAddr,
    /// The address the connection was accepted on.
    local: Option<SocketAddr>,
    /// The real client: the peer, or the source of its PROXY header.
    client: SocketAddr,
    sni: Option<String>,
    route: Option<Arc<RouteInfo>>,
    /// Shared with the L7 server, which counts on the client stream.
    bytes: Arc<Transferred>,
}

/// Why a connection was reset, and whose fault it was.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("blocked by firewall: {0}")]
    Blocked(IpAddr),
    #[error("peer {0} is not in proxy_protocol_from")]
    UntrustedProxy(IpAddr),
    #[error("PROXY header: {0}")]
    ProxyHeader(#[from] proxyproto::ReadError),
    #[error("client hello: {0}")]
    Hello(#[from] sni::ReadError),
    #[error("no SNI in the ClientHello")]
    NoSni,
    #[error("no route for {0}")]
    UnknownHost(String),
    #[error("backend {backend}: connect timed out after {after:?}")]
    BackendTimeout { backend: String, after: Duration },
    #[error("backend {backend}: {source}")]
    Backend {
        backend: String,
        source: std::io::Error,
    },
    #[error("l7: {0}")]
    L7(#[from] l7::L7Error),
}

/// Who caused a failure: picks the log level (and, with the stats, the counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The client sent something we refuse, or nothing in time.
    Client,
    /// Policy: the firewall said no.
    Policy,
    /// The backend is down or misbehaving.
    Backend,
    /// The configuration routes somewhere we cannot serve.
    Config,
}

impl ConnError {
    fn fault(&self) -> Fault {
        match self {
            ConnError::Blocked(_) | ConnError::UntrustedProxy(_) => Fault::Policy,
            ConnError::ProxyHeader(_) => Fault::Client,
            ConnError::Hello(_) | ConnError::NoSni | ConnError::UnknownHost(_) => Fault::Client,
            ConnError::BackendTimeout { .. } | ConnError::Backend { .. } => Fault::Backend,
            ConnError::L7(e) if e.is_client_fault() => Fault::Client,
            ConnError::L7(_) => Fault::Config,
        }
    }

    /// A short, stable name for the log line's `outcome` field.
    fn reason(&self) -> &'static str {
        match self {
            ConnError::Blocked(_) => "blocked",
            ConnError::UntrustedProxy(_) => "untrusted_proxy",
            ConnError::ProxyHeader(proxyproto::ReadError::Timeout) => "proxy_header_timeout",
            ConnError::ProxyHeader(_) => "bad_proxy_header",
            ConnError::Hello(sni::ReadError::Timeout) => "hello_timeout",
            ConnError::Hello(sni::ReadError::Eof) => "client_closed",
            ConnError::Hello(sni::ReadError::Io(_)) => "client_error",
            ConnError::Hello(sni::ReadError::Parse(sni::ParseError::NotTls)) => "not_tls",
            ConnError::Hello(sni::ReadError::Parse(sni::ParseError::TooLarge(_))) => {
                "hello_too_large"
            }
            ConnError::Hello(sni::ReadError::Parse(_)) => "bad_hello",
            ConnError::NoSni => "no_sni",
            ConnError::UnknownHost(_) => "unknown_host",
            ConnError::BackendTimeout { .. } => "backend_timeout",
            ConnError::Backend { .. } => "backend_unreachable",
            ConnError::L7(e) => e.reason(),
        }
    }
}

/// How a served connection ended: an L4 relay or an L7 HTTP connection.
#[derive(Debug)]
enum ConnEnd {
    L4(RelayEnd),
    L7(L7End),
}

/// One connection, start to end: the pipeline in DESIGN.md.
async fn handle_conn(
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    listener: &ListenerState,
    shared: &Shared,
) {
    let started = Instant::now();
    listener.counters.active.fetch_add(1, Ordering::Relaxed);
    let mut conn = ConnInfo {
        id,
        peer,
        local: stream.local_addr().ok(),
        client: peer,
        sni: None,
        route: None,
        bytes: Arc::default(),
    };

    // The L7 step takes the stream (hyper needs to own it); every other step borrows it.
    let mut stream = Some(stream);
    // Past the shutdown grace period every step stops, whichever it is in.
    let result = tokio::select! {
        result = pipeline(&mut stream, &mut conn, listener, shared) => result,
        () = shared.force_close.cancelled() => Ok(ConnEnd::L4(RelayEnd::Cancelled)),
    };
    if let Err(e @ (ConnError::Blocked(_) | ConnError::UntrustedProxy(_))) = &result {
        publish_blocked(&conn, listener, e, &shared.state);
    }
    if let Err(e) = &result {
        if e.fault() == Fault::Policy {
            ListenerCounters::bump(&listener.counters.blocked);
        }
        // An L7 connection that failed its TLS handshake was closed (not reset) by the L7
        // step: rustls may have just written an alert the client should get to read.
        if let Some(stream) = stream {
            listener.counters.count_reset(e.reason());
            reset(stream);
        }
    }
    let elapsed = started.elapsed();
    log_close(&conn, &result, elapsed);
    publish_close(&conn, listener, &result, elapsed, &shared.state);
    listener.counters.active.fetch_sub(1, Ordering::Relaxed);
}

/// The steps; an `Err` means "reset the client" (if the stream is still here).
async fn pipeline(
    slot: &mut Option<TcpStream>,
    conn: &mut ConnInfo,
    listener: &ListenerState,
    shared: &Shared,
) -> Result<ConnEnd, ConnError> {
    let state = &shared.state;
    let stream = slot
        .as_mut()
        .expect("the stream is taken only by the dispatch step");
    let early = read_proxy_header(stream, conn, listener).await?;
    check_firewall(state, conn.client.ip())?;
    let (hello, peeked) =
        read_client_hello(stream, early, state.proxy.client_hello_timeout).await?;
    let sni = hello.server_name.ok_or(ConnError::NoSni)?;
    conn.sni = Some(sni.clone());
    let route = listener
        .lookup(&sni)
        .ok_or_else(|| ConnError::UnknownHost(sni.clone()))?;
    tracing::Span::current().record("route", route.hostname.as_str());
    conn.route = Some(Arc::clone(&route));
    publish_open(conn, listener, &route, state);
    let _listed = state.connections.register(
        conn.id,
        listener.addr,
        conn.client,
        &sni,
        &route,
        &conn.bytes,
    );
    let _active = ActiveGuard::new(&route.stats);
    match route.mode {
        Mode::L4 => Ok(ConnEnd::L4(
            relay_l4(stream, peeked, &route, conn, shared).await?,
        )),
        Mode::L7 => {
            let stream = slot.take().expect("the stream is still here");
            // Boxed so that L4 connections, the many idle ones above all, do not carry the
            // L7 future's much larger state inline in their task.
            Ok(ConnEnd::L7(
                Box::pin(serve_l7(
                    stream,
                    peeked,
                    Arc::clone(&route),
                    sni,
                    conn,
                    shared,
                ))
                .await?,
            ))
        }
    }
}

/// Terminates TLS and reverse-proxies HTTP until the client is done (see [`crate::l7`]).
async fn serve_l7(
    stream: TcpStream,
    peeked: Vec<u8>,
    route: Arc<RouteInfo>,
    sni: String,
    conn: &ConnInfo,
    shared: &Shared,
) -> Result<L7End, ConnError> {
    let proxy = &shared.state.proxy;
    let session = l7::Session {
        route,
        sni,
        client: conn.client,
        local: conn.local.unwrap_or(listener_fallback(conn.client)),
        bytes: Arc::clone(&conn.bytes),
        handshake_timeout: proxy.client_hello_timeout,
        connect_timeout: proxy.connect_timeout,
        idle_timeout: proxy.idle_timeout,
    };
    Ok(l7::serve(
        stream,
        peeked,
        session,
        &shared.backend_tls,
        shared.shutdown.clone(),
    )
    .await?)
}

/// On a `proxy_protocol` listener: checks the peer may send a header, reads it (5 s) and
/// takes its source as the client address. LOCAL and UNKNOWN headers (health checks) keep the
/// peer address. Returns the bytes read past the header, which belong to the ClientHello.
async fn read_proxy_header(
    stream: &mut TcpStream,
    conn: &mut ConnInfo,
    listener: &ListenerState,
) -> Result<Vec<u8>, ConnError> {
    if !listener.proxy_protocol {
        tracing::Span::current().record("client", tracing::field::display(conn.client));
        return Ok(Vec::new());
    }
    if !listener.trusts_proxy_header_from(conn.peer.ip()) {
        return Err(ConnError::UntrustedProxy(conn.peer.ip()));
    }
    let (header, leftover) = proxyproto::read_header(stream, proxyproto::READ_TIMEOUT).await?;
    if let Some(source) = header.source {
        conn.client = source;
    }
    tracing::Span::current().record("client", tracing::field::display(conn.client));
    Ok(leftover)
}

fn check_firewall(state: &State, client: IpAddr) -> Result<(), ConnError> {
    if state.is_blocked(client) {
        return Err(ConnError::Blocked(client));
    }
    Ok(())
}

/// Reads the whole ClientHello after the `early` bytes already read, returning it and every
/// byte read (to be forwarded verbatim).
async fn read_client_hello(
    stream: &mut TcpStream,
    early: Vec<u8>,
    timeout: Duration,
) -> Result<(ClientHello, Vec<u8>), ConnError> {
    let mut peeked = early;
    peeked.reserve(2048);
    let hello = sni::read_client_hello(stream, &mut peeked, timeout).await?;
    Ok((hello, peeked))
}

/// Dials the backend, sends the PROXY v2 header if the route asks for it, forwards the peeked
/// bytes, then relays both ways. The peeked buffer is freed once forwarded: a long-lived
/// connection should not keep its ClientHello.
async fn relay_l4(
    client: &mut TcpStream,
    peeked: Vec<u8>,
    route: &RouteInfo,
    conn: &ConnInfo,
    shared: &Shared,
) -> Result<RelayEnd, ConnError> {
    let proxy = &shared.state.proxy;
    let dial_started = Instant::now();
    let mut backend = dial_backend(&route.backend, proxy.connect_timeout)
        .await
        .inspect_err(|_| {
            route.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
        })?;
    route.stats.connect_duration.record(dial_started.elapsed());
    if route.send_proxy_protocol {
        // The destination is where the client reached us; the spec has the header relay the
        // original connection's endpoints.
        let local = conn.local.unwrap_or(listener_fallback(conn.client));
        if let Err(source) = proxyproto::write_v2(&mut backend, conn.client, local).await {
            return Err(ConnError::Backend {
                backend: route.backend.clone(),
                source,
            });
        }
    }
    if let Err(source) = backend.write_all(&peeked).await {
        return Err(ConnError::Backend {
            backend: route.backend.clone(),
            source,
        });
    }
    for up in [&conn.bytes.up, &route.stats.bytes.up] {
        up.fetch_add(peeked.len() as u64, Ordering::Relaxed);
    }
    drop(peeked);
    let _ = client.set_nodelay(true);
    Ok(relay(
        client,
        &backend,
        proxy.idle_timeout,
        &conn.bytes,
        &route.stats.bytes,
    )
    .await)
}

/// The unspecified address of the client's family: what a PROXY header says for "some local
/// address" when the socket could not tell us its own.
fn listener_fallback(client: SocketAddr) -> SocketAddr {
    match client {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}

async fn dial_backend(backend: &str, timeout: Duration) -> Result<TcpStream, ConnError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(backend)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(ConnError::Backend {
                backend: backend.to_owned(),
                source,
            });
        }
        Err(_) => {
            return Err(ConnError::BackendTimeout {
                backend: backend.to_owned(),
                after: timeout,
            });
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Closes with SO_LINGER 0, so the peer sees RST instead of an orderly FIN: a refused
/// connection must not look like an empty successful one.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

fn publish_open(conn: &ConnInfo, listener: &ListenerState, route: &RouteInfo, state: &State) {
    state.events.publish(|| {
        pb::event::Kind::ConnectionOpened(pb::ConnectionOpened {
            id: conn.id,
            listener: listener.addr.to_string(),
            client: conn.client.to_string(),
            hostname: conn.sni.clone().unwrap_or_default(),
            route: route.hostname.clone(),
            mode: route.mode.to_string(),
            backend: route.backend.clone(),
        })
    });
}

fn publish_blocked(conn: &ConnInfo, listener: &ListenerState, e: &ConnError, state: &State) {
    state.events.publish(|| {
        pb::event::Kind::ConnectionBlocked(pb::ConnectionBlocked {
            listener: listener.addr.to_string(),
            client: match e {
                ConnError::UntrustedProxy(_) => conn.peer.to_string(),
                _ => conn.client.to_string(),
            },
            reason: match e {
                ConnError::UntrustedProxy(_) => "untrusted_proxy",
                _ => "firewall",
            }
            .to_owned(),
        })
    });
}

fn publish_close(
    conn: &ConnInfo,
    listener: &ListenerState,
    result: &Result<ConnEnd, ConnError>,
    elapsed: Duration,
    state: &State,
) {
    state.events.publish(|| {
        let (outcome, error) = outcome(result);
        let route = conn.route.as_deref();
        pb::event::Kind::ConnectionClosed(pb::ConnectionClosed {
            id: conn.id,
            listener: listener.addr.to_string(),
            client: conn.client.to_string(),
            hostname: conn.sni.clone().unwrap_or_default(),
            route: route.map(|r| r.hostname.clone()).unwrap_or_default(),
            mode: route.map(|r| r.mode.to_string()).unwrap_or_default(),
            backend: route.map(|r| r.backend.clone()).unwrap_or_default(),
            bytes_in: conn.bytes.up.load(Ordering::Relaxed),
            bytes_out: conn.bytes.down.load(Ordering::Relaxed),
            duration_ms: elapsed.as_millis() as u64,
            outcome: outcome.to_owned(),
            error: error.unwrap_or_default(),
        })
    });
}

/// A connection's end as (outcome name, error text), for the access log and the events.
fn outcome(result: &Result<ConnEnd, ConnError>) -> (&'static str, Option<String>) {
    match result {
        Ok(ConnEnd::L4(RelayEnd::Finished)) | Ok(ConnEnd::L7(L7End::Closed)) => ("closed", None),
        Ok(ConnEnd::L4(RelayEnd::IdleTimeout)) | Ok(ConnEnd::L7(L7End::IdleTimeout)) => {
            ("idle_timeout", None)
        }
        Ok(ConnEnd::L4(RelayEnd::Cancelled)) => ("shutdown", None),
        Ok(ConnEnd::L4(RelayEnd::Error(e))) => ("relay_error", Some(e.to_string())),
        Ok(ConnEnd::L7(L7End::Drained)) => ("drained", None),
        Ok(ConnEnd::L7(L7End::Error(e))) => ("http_error", Some(e.to_string())),
        Ok(ConnEnd::L7(L7End::Failed(e))) => ("http_error", Some(e.clone())),
        Err(e) => (e.reason(), Some(e.to_string())),
    }
}

/// The access log: one line per connection, at close. The connection's span carries its id,
/// listener, client and route; the event adds what happened.
fn log_close(conn: &ConnInfo, result: &Result<ConnEnd, ConnError>, elapsed: Duration) {
    let level = match result {
        Err(e) if matches!(e.fault(), Fault::Backend | Fault::Config) => Level::WARN,
        _ => Level::INFO,
    };
    let (outcome, error) = outcome(result);
    macro_rules! access_log {
        ($lvl:expr) => {
            tracing::event!(
                $lvl,
                sni = conn.sni.as_deref().unwrap_or("-"),
                backend = conn.route.as_ref().map_or("-", |r| r.backend.as_str()),
                bytes_up = conn.bytes.up.load(Ordering::Relaxed),
                bytes_down = conn.bytes.down.load(Ordering::Relaxed),
                duration_ms = elapsed.as_millis() as u64,
                outcome,
                error = error.as_deref().unwrap_or(""),
                "connection closed"
            )
        };
    }
    match level {
        Level::WARN => access_log!(Level::WARN),
        _ => access_log!(Level::INFO),
    }
}
