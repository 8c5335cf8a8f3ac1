//! The connection pipeline: one connection, from accept to its access record.
//!
//! I/O: reads the client's first bytes (a PROXY header, the ClientHello), then hands the
//! stream to the L4 relay or the L7 server. [`handle_conn`] reads top to bottom as ARCHITECTURE.md's
//! pipeline, one call per step:
//! PROXY header (listeners with `proxy_protocol`) → firewall → client limits → (plain-HTTP
//! listeners: [`crate::proxy::redirect`] answers, and that is all) → ClientHello →
//! route (and its access lists, L4) → dispatch
//! (L4 passthrough in [`crate::proxy::l4`], L7 termination in [`crate::proxy::l7`]) → access record.
//!
//! The client address is the TCP peer's, or the source of a received PROXY header: that one
//! address is what the firewall checks, the log shows and a sent PROXY header carries.
//!
//! Invariants: every failure before serving is a [`ConnError`] that knows whose fault it was
//! and which reset reason it counts; a failed connection is reset (SO_LINGER 0) unless the L7
//! step already owns and closed the socket; every connection ends with exactly one
//! [`access::closed`] call.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mc_proxy_shared::{BlockedReason, CloseReason, Outcome, ResetReason};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Level;

use crate::model::clients::{ClientGuard, Refusal};
use crate::model::conns::Registered;
use crate::model::routes::RouteInfo;
use crate::model::state::{ListenerSettings, ListenerState, State};
use crate::model::stats::ActiveGuard;
use crate::protocols::proxyproto;
use crate::protocols::relay::RelayEnd;
use crate::protocols::sni;
use crate::proxy::access::{self, Ending, Record};
use crate::proxy::l4::{self, L4Error};
use crate::proxy::l7::{self, L7End};
use crate::proxy::redirect::{self, RedirectEnd};

/// What every connection task shares.
pub struct Shared {
    /// Routes, firewall, settings, events.
    pub state: Arc<State>,
    /// Fires when shutdown starts: L7 connections drain.
    pub shutdown: CancellationToken,
    /// Fires when the shutdown grace period is over: relays stop.
    pub force_close: CancellationToken,
    /// The L7 backend connections, shared by every client connection.
    pub pool: Arc<l7::Pool>,
    /// Owns every task a connection spawns (the L7 HTTP connection's and backend drivers), so
    /// shutdown waits for them too.
    pub tasks: TaskTracker,
    /// The next connection id, shared by every worker of the daemon.
    pub next_id: Arc<AtomicU64>,
    /// This worker's index (0 for the lead): picks its shard of the connection registry.
    pub worker: usize,
}

/// Why a connection was not served, and whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Policy: the client address is blocked.
    #[error("blocked by firewall: {0}")]
    Blocked(IpAddr),
    /// Policy: the client has `max_conns_per_client` open on this listener.
    #[error("client {0} has max_conns_per_client open")]
    ClientConnLimit(IpAddr),
    /// Policy: the client opens connections faster than `new_conns_per_client`.
    #[error("client {0} is over new_conns_per_client")]
    ClientRateLimit(IpAddr),
    /// Policy: the route's `allow_from` / `deny_from` refuses the client (L4 routes).
    #[error("route {route} refuses client {client} (allow_from / deny_from)")]
    RouteDenied {
        /// The route's hostname.
        route: String,
        /// The client address.
        client: IpAddr,
    },
    /// Policy: the peer may not send PROXY headers here.
    #[error("peer {0} is not in proxy_protocol_from")]
    UntrustedProxy(IpAddr),
    /// Client: a missing, late or malformed PROXY header.
    #[error("PROXY header: {0}")]
    ProxyHeader(#[from] proxyproto::ReadError),
    /// Client: a missing, late or malformed ClientHello.
    #[error("client hello: {0}")]
    Hello(#[from] sni::ReadError),
    /// Client: no SNI.
    #[error("no SNI in the ClientHello")]
    NoSni,
    /// Client (or config): no route for the SNI.
    #[error("no route for {0}")]
    UnknownHost(String),
    /// Config: the SNI's route is stored but not served (its certificate did not load, or
    /// an acme route waits for its certificate); reset as an unknown host, logged with why.
    #[error("route {host} is not served: {reason}")]
    NotServed {
        /// The SNI.
        host: String,
        /// Why (the not-served list's reason).
        reason: String,
    },
    /// Backend: the L4 backend could not be set up.
    #[error(transparent)]
    L4(#[from] L4Error),
    /// Client: the L7 TLS handshake failed.
    #[error("l7: {0}")]
    L7(#[from] l7::L7Error),
}

impl ConnError {
    /// How the connection ended: every error but an L7 handshake failure is a reset.
    fn outcome(&self) -> Outcome {
        let reason = match self {
            ConnError::Blocked(_) => ResetReason::Blocked,
            ConnError::UntrustedProxy(_) => ResetReason::UntrustedProxy,
            ConnError::ClientConnLimit(_) => ResetReason::ClientConnLimit,
            ConnError::ClientRateLimit(_) => ResetReason::ClientRateLimit,
            ConnError::RouteDenied { .. } => ResetReason::RouteDenied,
            ConnError::ProxyHeader(proxyproto::ReadError::Timeout) => {
                ResetReason::ProxyHeaderTimeout
            }
            ConnError::ProxyHeader(_) => ResetReason::BadProxyHeader,
            ConnError::Hello(sni::ReadError::Timeout) => ResetReason::HelloTimeout,
            ConnError::Hello(sni::ReadError::Eof) => ResetReason::ClientClosed,
            ConnError::Hello(sni::ReadError::Io(_)) => ResetReason::ClientError,
            ConnError::Hello(sni::ReadError::Parse(sni::ParseError::NotTls)) => ResetReason::NotTls,
            ConnError::Hello(sni::ReadError::Parse(sni::ParseError::TooLarge(_))) => {
                ResetReason::HelloTooLarge
            }
            ConnError::Hello(sni::ReadError::Parse(_)) => ResetReason::BadHello,
            ConnError::NoSni => ResetReason::NoSni,
            ConnError::UnknownHost(_) | ConnError::NotServed { .. } => ResetReason::UnknownHost,
            ConnError::L4(e) => e.reason(),
            ConnError::L7(e) => return Outcome::Closed(e.close_reason()),
        };
        Outcome::Reset(reason)
    }

    /// The policy that refused the connection, if one did.
    fn blocked(&self) -> Option<BlockedReason> {
        match self {
            ConnError::Blocked(_) => Some(BlockedReason::Firewall),
            ConnError::UntrustedProxy(_) => Some(BlockedReason::UntrustedProxy),
            ConnError::ClientConnLimit(_) => Some(BlockedReason::ClientConnLimit),
            ConnError::ClientRateLimit(_) => Some(BlockedReason::ClientRateLimit),
            ConnError::RouteDenied { .. } => Some(BlockedReason::RouteDenied),
            _ => None,
        }
    }

    /// Backend trouble is the operator's to look at (warn); clients and policy are routine
    /// (info); a client limit's refusals come in floods (debug, and a rate-limited warning).
    fn level(&self) -> Level {
        match self {
            ConnError::L4(_) => Level::WARN,
            ConnError::ClientConnLimit(_) | ConnError::ClientRateLimit(_) => Level::DEBUG,
            _ => Level::INFO,
        }
    }
}

/// How a served connection ended: an L4 relay or an L7 HTTP connection.
#[derive(Debug)]
pub enum ConnEnd {
    /// The relay's end.
    L4(RelayEnd),
    /// The HTTP connection's end.
    L7(L7End),
    /// The shutdown grace period ran out in a step before serving.
    Cancelled,
    /// An operator closed it.
    AdminClosed,
    /// An ACME validation was shown its challenge certificate (`None`), or its handshake
    /// failed (why).
    AcmeChallenge(Option<String>),
    /// A plain-HTTP listener's connection.
    Redirect(RedirectEnd),
}

impl ConnEnd {
    fn ending(self) -> Ending {
        let (reason, error) = match self {
            ConnEnd::L4(RelayEnd::Finished) | ConnEnd::L7(L7End::Closed) => {
                (CloseReason::Closed, None)
            }
            ConnEnd::L4(RelayEnd::IdleTimeout) | ConnEnd::L7(L7End::IdleTimeout) => {
                (CloseReason::IdleTimeout, None)
            }
            ConnEnd::L4(RelayEnd::Cancelled) | ConnEnd::Cancelled => (CloseReason::Shutdown, None),
            ConnEnd::AdminClosed => (CloseReason::AdminClosed, None),
            ConnEnd::AcmeChallenge(error) => (CloseReason::AcmeChallenge, error),
            ConnEnd::Redirect(RedirectEnd::Answered) => (CloseReason::Closed, None),
            ConnEnd::Redirect(RedirectEnd::HeaderTimeout) => {
                (CloseReason::RequestHeaderTimeout, None)
            }
            ConnEnd::Redirect(RedirectEnd::Error(e)) => (CloseReason::HttpError, Some(e)),
            ConnEnd::L4(RelayEnd::Error(e)) => (CloseReason::RelayError, Some(e.to_string())),
            ConnEnd::L7(L7End::Drained) => (CloseReason::Drained, None),
            ConnEnd::L7(L7End::KeepaliveTimeout) => (CloseReason::KeepaliveTimeout, None),
            ConnEnd::L7(L7End::RequestHeaderTimeout) => (CloseReason::RequestHeaderTimeout, None),
            ConnEnd::L7(L7End::RouteGone) => (CloseReason::RouteGone, None),
            ConnEnd::L7(L7End::Error(e)) => (CloseReason::HttpError, Some(e.to_string())),
            ConnEnd::L7(L7End::H2(e)) => (CloseReason::HttpError, Some(e.to_string())),
            ConnEnd::L7(L7End::Failed(e)) => (CloseReason::HttpError, Some(e)),
            ConnEnd::L7(L7End::Io(e)) => (CloseReason::HttpError, Some(e.to_string())),
        };
        Ending {
            outcome: Outcome::Closed(reason),
            error,
            level: Level::INFO,
        }
    }
}

/// One connection, start to end: the pipeline in ARCHITECTURE.md. `local`: the connection's local
/// address when its listener already knows it (see `server::accept_loop`), else it is asked
/// of the socket; `slot` is the connection's `max_connections` permit, released when it ends.
///
/// A plain `fn` returning `async move`, which owns everything it is given: the returned future
/// is the connection's whole task, and an `async fn` (or an `async` block calling one) would
/// store the arguments twice, once as given and once as moved in (rust-lang/rust#62958), for
/// the connection's whole life.
pub fn handle_conn(
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    listener: Arc<ListenerState>,
    shared: Arc<Shared>,
    slot: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static {
    let started = Instant::now();
    listener.counters.active.fetch_add(1, Ordering::Relaxed);
    let local = local.or_else(|| stream.local_addr().ok());
    let mut record = Record::new(id, peer, local);
    // The L7 step takes the stream (its TLS session owns it); every other step borrows it.
    let mut stream = Some(stream);
    async move {
        // Past the shutdown grace period every step stops, whichever it is in.
        let result = tokio::select! {
            result = pipeline(&mut stream, &mut record, &listener, &shared) => result,
            () = shared.force_close.cancelled() => Ok(ConnEnd::Cancelled),
        };
        let ending = match result {
            Ok(end) => end.ending(),
            Err(e) => refuse(e, stream, &record, &listener, &shared.state),
        };
        access::closed(
            &record,
            &listener,
            &ending,
            started.elapsed(),
            &shared.state,
        );
        listener.counters.active.fetch_sub(1, Ordering::Relaxed);
        drop(slot);
    }
}

/// The steps; an `Err` means "reset the client" (if the stream is still here).
async fn pipeline(
    slot: &mut Option<TcpStream>,
    record: &mut Record,
    listener: &Arc<ListenerState>,
    shared: &Shared,
) -> Result<ConnEnd, ConnError> {
    let state = &shared.state;
    let stream = slot
        .as_mut()
        .expect("the stream is taken only by the dispatch step");
    // Boxed, and only where a header is expected: reading one needs more state than an idle
    // relay holds, and the task would otherwise carry that room for its whole life (a future
    // is as large as its largest step).
    // The listener's settings as of this connection's accept (an admin change may swap them);
    // dropped before the later steps, so that the task does not carry them.
    let early = {
        let settings = listener.settings();
        if settings.proxy_protocol {
            // Held across the header's read: its own count, not the guard.
            let settings = arc_swap::Guard::into_inner(settings);
            Box::pin(read_proxy_header(stream, record, &settings)).await?
        } else {
            Vec::new()
        }
    };
    tracing::Span::current().record("client", tracing::field::display(record.client));
    check_firewall(state, record.client.ip())?;
    // Held until the connection ends: its place in the client's concurrent count.
    let _client = check_client_limits(listener, state, record.client.ip())?;
    // A plain-HTTP listener: no ClientHello, no route; ACME http-01 answers and redirects
    // to https://. Boxed, as the L7 step is, so TLS connections do not carry its room.
    if listener.kind == mc_proxy_shared::ListenerKind::Http {
        let stream = slot.take().expect("the stream is still here");
        let proxy = state.proxy();
        return Ok(ConnEnd::Redirect(
            Box::pin(redirect::serve(
                stream,
                early,
                listener.redirect_port,
                proxy.request_header_timeout,
                Arc::clone(state),
            ))
            .await,
        ));
    }
    let hello_timeout = state.proxy().client_hello_timeout;
    let (sni, peeked, challenge) = read_client_hello(stream, early, hello_timeout, state).await?;
    record.sni = sni;
    // An ACME CA validating a name with a pending tls-alpn-01 challenge: shown its
    // certificate, never routed. Any other ClientHello goes on as before.
    if let Some(config) = challenge {
        let stream = slot.take().expect("the stream is still here");
        // Boxed: the handshake's state (a rustls connection, kilobytes) inline would be room
        // every connection's task carries for its whole life, L4 relays included.
        return Ok(Box::pin(answer_challenge(stream, peeked, config, hello_timeout)).await);
    }
    let route = match &record.sni {
        Some(sni) => listener
            .lookup(sni)
            .ok_or_else(|| unknown_host(listener, sni))?,
        None => listener.lookup_no_sni().ok_or(ConnError::NoSni)?,
    };
    tracing::Span::current().record("route", route.hostname());
    record.route = Some(Arc::clone(&route));
    // L4: the route's access lists refuse here; an L7 route answers each request 403 (its
    // current version decides, see `l7::downstream`).
    if route.tls.is_none() && !route.access.admits(record.client.ip()) {
        route.stats.denied.fetch_add(1, Ordering::Relaxed);
        return Err(ConnError::RouteDenied {
            route: route.hostname().to_owned(),
            client: record.client.ip(),
        });
    }
    if route.tls.is_some() {
        // L4 publishes it once dialled, naming its backend (`l4::serve`).
        access::opened(record, listener.addr, &route, state);
    }
    let listed = state.connections.register(
        shared.worker,
        record.id,
        listener.addr,
        record.client,
        record.sni.as_deref().unwrap_or_default(),
        &route,
        &record.live,
    );
    let _active = ActiveGuard::new(&route.stats);
    // An operator's close cuts whatever step serves it, as the end of the shutdown grace does.
    let live = Arc::clone(&record.live);
    tokio::select! {
        served = serve(slot, peeked, &route, record, listener, shared, &listed) => served,
        () = live.close.requested() => Ok(ConnEnd::AdminClosed),
    }
}

/// The serving step of a routed connection: the L4 relay or the L7 HTTP server.
async fn serve(
    slot: &mut Option<TcpStream>,
    peeked: Vec<u8>,
    route: &Arc<RouteInfo>,
    record: &mut Record,
    listener: &Arc<ListenerState>,
    shared: &Shared,
    listed: &Registered<'_>,
) -> Result<ConnEnd, ConnError> {
    let state = &shared.state;
    let stream = slot
        .as_mut()
        .expect("the stream is taken only by the dispatch step");
    // An L7 route always carries its TLS configuration (routes::ValidRoute), an L4 one never.
    match &route.tls {
        None => Ok(ConnEnd::L4(
            l4::serve(stream, peeked, route, record, listener.addr, state, listed).await?,
        )),
        Some(tls) => {
            let server = Arc::clone(&tls.server);
            let stream = slot.take().expect("the stream is still here");
            // Boxed so that L4 connections, the many idle ones above all, do not carry the
            // L7 future's much larger state inline in their task.
            Ok(ConnEnd::L7(
                Box::pin(serve_l7(
                    stream,
                    peeked,
                    Arc::clone(route),
                    server,
                    record,
                    listener,
                    shared,
                ))
                .await?,
            ))
        }
    }
}

/// Counts, publishes and resets a connection the pipeline refused; returns its ending.
fn refuse(
    e: ConnError,
    stream: Option<TcpStream>,
    record: &Record,
    listener: &ListenerState,
    state: &State,
) -> Ending {
    if let Some(reason) = e.blocked() {
        use crate::model::talkers::Hit;
        let hit = match reason {
            BlockedReason::ClientConnLimit => Some(Hit::ConnLimit),
            BlockedReason::ClientRateLimit => Some(Hit::ConnRate),
            BlockedReason::RouteDenied => Some(Hit::Denied),
            _ => None,
        };
        if let Some(hit) = hit {
            let route = record.route.as_ref().map_or("", |r| r.hostname());
            state.talkers.note(record.client.ip(), hit, route);
        }
        access::blocked(record, listener, reason, state);
        listener.counters.blocked.fetch_add(1, Ordering::Relaxed);
    }
    if let ConnError::L7(failed) = &e {
        listener.counters.count_tls_failure(failed.tls_failure());
    }
    let outcome = e.outcome();
    // An L7 connection that failed its TLS handshake was closed (not reset) by the L7 step:
    // rustls may have just written an alert the client should get to read.
    if let (Some(stream), Outcome::Reset(reason)) = (stream, outcome) {
        listener.counters.count_reset(reason);
        reset(stream);
    }
    Ending {
        outcome,
        error: Some(e.to_string()),
        level: e.level(),
    }
}

/// Terminates TLS and reverse-proxies HTTP until the client is done (see [`crate::proxy::l7`]).
async fn serve_l7(
    stream: TcpStream,
    peeked: Vec<u8>,
    route: Arc<RouteInfo>,
    tls: Arc<rustls::ServerConfig>,
    record: &Record,
    listener: &Arc<ListenerState>,
    shared: &Shared,
) -> Result<L7End, ConnError> {
    let session = {
        let proxy = shared.state.proxy();
        l7::Session {
            route,
            tls,
            sni: record.sni.clone(),
            client: record.client,
            conn: record.id,
            local: record.local.unwrap_or(l4::unspecified(record.client)),
            live: Arc::clone(&record.live),
            handshake_timeout: proxy.client_hello_timeout,
            connect_timeout: proxy.connect_timeout,
            response_timeout: proxy.response_timeout,
            request_header_timeout: proxy.request_header_timeout,
            keepalive_timeout: proxy.keepalive_timeout,
            idle_timeout: proxy.idle_timeout,
            limits: l7::limits::Limits::of(&proxy),
            state: Arc::clone(&shared.state),
            listener: Arc::clone(listener),
        }
    };
    Ok(l7::serve(
        stream,
        peeked,
        session,
        &shared.pool,
        shared.shutdown.clone(),
        &shared.tasks,
    )
    .await?)
}

/// On a `proxy_protocol` listener (the caller checks): checks the peer may send a header,
/// reads it (5 s) and takes its source as the client address. LOCAL and UNKNOWN headers
/// (health checks) keep the peer address. Returns the bytes read past the header, which
/// belong to the ClientHello.
async fn read_proxy_header(
    stream: &mut TcpStream,
    record: &mut Record,
    settings: &ListenerSettings,
) -> Result<Vec<u8>, ConnError> {
    if !settings.trusts_proxy_header_from(record.peer.ip()) {
        return Err(ConnError::UntrustedProxy(record.peer.ip()));
    }
    let (header, leftover) = proxyproto::read_header(stream, proxyproto::READ_TIMEOUT).await?;
    if let Some(source) = header.source {
        record.client = source;
    }
    Ok(leftover)
}

/// No route serves `sni`: said with why when a stored route for it is not served (a
/// certificate that did not load, an acme route waiting for its certificate).
fn unknown_host(listener: &ListenerState, sni: &str) -> ConnError {
    match listener.not_served_route(sni) {
        Some(stored) => ConnError::NotServed {
            host: sni.to_owned(),
            reason: stored.reason,
        },
        None => ConnError::UnknownHost(sni.to_owned()),
    }
}

fn check_firewall(state: &State, client: IpAddr) -> Result<(), ConnError> {
    if state.is_blocked(client) {
        return Err(ConnError::Blocked(client));
    }
    Ok(())
}

/// How often, at most, a listener warns that its client limits refuse connections.
const LIMIT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// The listener's limits per client address, if any is on: admits the connection into the
/// client's counts (the guard gives its place back), or refuses it before its ClientHello is
/// read. The limits are read now, so a change applies from the next connection on.
fn check_client_limits<'a>(
    listener: &'a ListenerState,
    state: &State,
    client: IpAddr,
) -> Result<Option<ClientGuard<'a>>, ConnError> {
    let limits = listener.settings().client_limits;
    if !limits.any() {
        return Ok(None);
    }
    let table = listener.client_table(state.proxy().client_table_size);
    let refusal = match table.admit(client, &limits) {
        Ok(guard) => return Ok(Some(guard)),
        Err(refusal) => refusal,
    };
    if let Some(refused) = table.note_refusal(LIMIT_WARNING_EVERY) {
        tracing::warn!(
            listener = %listener.addr,
            %client,
            refused,
            max_conns_per_client = limits.max_conns_per_client,
            new_conns_per_client = limits.new_conns_per_client,
            "client limits refused connections (count since the last warning; each one is \
             logged at debug)"
        );
    }
    Err(match refusal {
        Refusal::Conns => ConnError::ClientConnLimit(client),
        Refusal::Rate { .. } => ConnError::ClientRateLimit(client),
    })
}

/// Reads the whole ClientHello after the `early` bytes already read, returning its SNI and
/// every byte read (to be forwarded verbatim). The rest of the hello (its ALPN list) is
/// dropped here: an L4 connection would otherwise keep it for its whole life.
/// The TLS configuration of a pending ACME tls-alpn-01 challenge, when the hello is its
/// validation.
type Challenge = Option<Arc<rustls::ServerConfig>>;

/// Reads the whole ClientHello after the `early` bytes already read, returning its SNI,
/// every byte read (to be forwarded verbatim), and the challenge it validates if it is an
/// ACME CA's. The rest of the hello (its ALPN list) is dropped here: an L4 connection would
/// otherwise keep it for its whole life.
async fn read_client_hello(
    stream: &mut TcpStream,
    early: Vec<u8>,
    timeout: Duration,
    state: &State,
) -> Result<(Option<String>, Vec<u8>, Challenge), ConnError> {
    let mut peeked = early;
    peeked.reserve(2048);
    let hello = sni::read_client_hello(stream, &mut peeked, timeout).await?;
    let challenge = state.acme.answer(hello.server_name.as_deref(), &hello.alpn);
    Ok((hello.server_name, peeked, challenge))
}

/// Shows an ACME CA's validation the challenge certificate (the handshake is all it needs;
/// RFC 8737 §3), then closes.
async fn answer_challenge(
    stream: TcpStream,
    peeked: Vec<u8>,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
) -> ConnEnd {
    use tokio::io::AsyncWriteExt;
    let handshake = tokio_rustls::TlsAcceptor::from(config)
        .accept(crate::protocols::io::Rewind::new(peeked, stream));
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(mut tls)) => {
            let _ = tls.shutdown().await;
            ConnEnd::AcmeChallenge(None)
        }
        Ok(Err(e)) => ConnEnd::AcmeChallenge(Some(e.to_string())),
        Err(_) => ConnEnd::AcmeChallenge(Some("the validation's handshake timed out".into())),
    }
}

/// Closes with SO_LINGER 0, so the peer sees RST instead of an orderly FIN: a refused
/// connection must not look like an empty successful one.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::firewall::Firewall;
    use crate::model::routes::RouteTable;
    use crate::model::state::ProxyConfig;

    /// A connection's task is allocated at accept with the room of its largest step, for the
    /// connection's whole life: an idle L4 relay should carry little more than the relay. The
    /// steps that need more (dialling, the L7 server, the redirect listener, an ACME
    /// challenge's handshake) are boxed; one left inline (the challenge's rustls handshake)
    /// once took an idle L4 connection from 2.4 to 4.5 KiB (docs/BENCHMARKS.md).
    #[tokio::test]
    async fn a_connection_task_holds_no_boxed_steps_room() {
        let listener = Arc::new(ListenerState::new(
            1,
            "127.0.0.1:0".parse().unwrap(),
            ListenerSettings::default(),
            RouteTable::with_stats(Vec::new(), |_| Arc::default()),
        ));
        let state = Arc::new(State::new(
            ProxyConfig::default(),
            vec![Arc::clone(&listener)],
            Firewall::default(),
        ));
        let shared = Arc::new(Shared {
            pool: Arc::new(l7::Pool::new(
                l7::BackendTls::new(None),
                crate::connectors::pool::PoolSettings {
                    max_connections: 1,
                    max_idle: 1,
                    idle_timeout: Duration::from_secs(1),
                },
                TaskTracker::new(),
                Arc::clone(&state.backends),
            )),
            state,
            shutdown: CancellationToken::new(),
            force_close: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_id: Arc::new(AtomicU64::new(1)),
            worker: 0,
        });
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(socket.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = socket.accept().await.unwrap();
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let conn = handle_conn(1, stream, peer, None, listener, shared, permit);
        let size = std::mem::size_of_val(&conn);
        // Measured in a debug build (what `cargo test` runs): 1048 bytes with the challenge's
        // handshake boxed, 3200 with it inline.
        assert!(size < 2048, "a connection's future is {size} bytes");
        drop(conn);
        drop(client);
    }
}
