//! The L4 path: TLS passthrough to one of the route's backends.
//!
//! I/O: picks a member and dials it, the next one when that fails (all within
//! `connect_timeout`), writes a PROXY v2 header in one write when
//! the route asks for it, forwards the ClientHello bytes verbatim, then relays both ways
//! ([`crate::protocols::relay`]). Invariant: the peeked bytes are forwarded exactly once and freed before
//! the relay starts, so a long-lived connection does not keep its ClientHello.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mc_proxy_shared::ResetReason;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::model::backends::{Pick, Tried};
use crate::model::conns::Registered;
use crate::model::routes::RouteInfo;
use crate::model::state::State;
use crate::protocols::proxyproto;
use crate::protocols::relay::{RelayEnd, relay};
use crate::proxy::access::Record;

/// Why no backend could be set up. The backend's fault (or the operator's, when every member
/// is out); the client is reset.
#[derive(Debug, thiserror::Error)]
pub enum L4Error {
    /// The TCP connect did not finish within what was left of `connect_timeout`.
    #[error("backend {backend}: connect timed out after {after:?}")]
    Timeout {
        /// The backend address.
        backend: String,
        /// How long this dial had.
        after: Duration,
    },
    /// The connect, the PROXY header or forwarding the ClientHello failed.
    #[error("backend {backend}: {source}")]
    Backend {
        /// The backend address.
        backend: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No member may take a connection: every one is down, draining or disabled.
    #[error("no backend of route {route} is available: {states}")]
    NoBackend {
        /// The route's hostname.
        route: String,
        /// Each member's state, `a:1 down, b:2 draining`.
        states: String,
    },
}

impl L4Error {
    /// The reset reason counted for it.
    pub fn reason(&self) -> ResetReason {
        match self {
            L4Error::Timeout { .. } => ResetReason::BackendTimeout,
            L4Error::Backend { .. } => ResetReason::BackendUnreachable,
            L4Error::NoBackend { .. } => ResetReason::NoBackend,
        }
    }
}

/// Picks a member and dials it, then sends the PROXY v2 header if the route asks for it,
/// forwards the peeked bytes, and relays both ways until both sides are done, the relay
/// idles out or fails.
///
/// A dial that fails goes on to the next member at once, all within `connect_timeout`:
/// nothing has reached a backend yet, so the ClientHello can go anywhere. Once connected,
/// the connection stays with that member, whatever happens to the writes.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (rust-lang/rust#62958)"
)]
pub fn serve<'a>(
    client: &'a mut TcpStream,
    peeked: Vec<u8>,
    route: &'a RouteInfo,
    record: &'a mut Record,
    listener: SocketAddr,
    state: &'a State,
    listed: &'a Registered<'a>,
) -> impl Future<Output = Result<RelayEnd, L4Error>> + Send + 'a {
    // A plain `fn` returning `async move`: an `async fn` would store its arguments twice, for
    // as long as the relay runs.
    async move {
        // Boxed: dialling needs more state than the relay, and the task would otherwise carry
        // that room for as long as the connection lives.
        let (mut backend, pick) = Box::pin(connect(route, record, listener, state)).await?;
        if let Some(chosen) = &record.backend {
            listed.set_backend(chosen);
        }
        if let Some(routed) = &record.route {
            crate::proxy::access::opened(record, listener, routed, state);
        }
        let backend_addr = route.backends.member(pick.index).spec.address.as_str();
        let backend_err = |source| L4Error::Backend {
            backend: backend_addr.to_owned(),
            source,
        };
        if route.route.send_proxy_protocol {
            // The destination is where the client reached us; the spec has the header relay the
            // original connection's endpoints.
            let local = record.local.unwrap_or(unspecified(record.client));
            proxyproto::write_v2(&mut backend, record.client, local)
                .await
                .map_err(backend_err)?;
        }
        backend.write_all(&peeked).await.map_err(backend_err)?;
        for up in [&record.live.bytes.up, &route.stats.bytes.up] {
            up.fetch_add(peeked.len() as u64, Ordering::Relaxed);
        }
        drop(peeked);
        // `pick` lives until the relay ends: the member counts the connection as active, which
        // least_conn reads and a drain waits for.
        // Read before the relay: a settings guard must not live across its `.await`.
        let idle = state.proxy().idle_timeout;
        let end = relay(
            client,
            &backend,
            idle,
            &record.live.bytes,
            &route.stats.bytes,
        )
        .await;
        drop(pick);
        Ok(end)
    }
}

/// Dials members until one answers, within `connect_timeout` in all; each failure is
/// reported to passive health. Returns the stream and the member's pick.
async fn connect(
    route: &RouteInfo,
    record: &mut Record,
    listener: SocketAddr,
    state: &State,
) -> Result<(TcpStream, Pick), L4Error> {
    let timeout = state.proxy().connect_timeout;
    let deadline = Instant::now() + timeout;
    let mut tried = Tried::default();
    let mut last = None;
    loop {
        let Some(pick) = route.backends.pick(record.client.ip(), tried) else {
            return Err(match last {
                // Every member failed its dial: the client's connection fails.
                Some(e) => {
                    route.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                    e
                }
                None => no_backend(route),
            });
        };
        if last.is_some() {
            // A failover: the client sees nothing but the wait.
            route.stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        tried.add(pick.index);
        let member = route.backends.member(pick.index);
        record.backend = Some(Arc::clone(&member.address));
        let dial_started = Instant::now();
        let left = deadline.saturating_duration_since(dial_started);
        match dial(&member.spec.address, left).await {
            Ok(stream) => {
                route.stats.connect_duration.record(dial_started.elapsed());
                state.backend_changed(listener, route, pick.health().succeeded(&member.spec));
                return Ok((stream, pick));
            }
            Err(e) => {
                let failed = pick.health().failed(&member.spec, &state.passive(), &e);
                state.backend_changed(listener, route, failed);
                tracing::debug!(backend = %member.spec.address, "dial failed: {e}");
                if Instant::now() >= deadline {
                    // No time left for another member: the client's connection fails.
                    route.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                last = Some(e);
            }
        }
    }
}

/// The error for a route none of whose members may take a connection.
fn no_backend(route: &RouteInfo) -> L4Error {
    L4Error::NoBackend {
        route: route.route.hostname.clone(),
        states: route.count_no_backend(),
    }
}

/// The unspecified address of the client's family: what a PROXY header says for "some local
/// address" when the socket could not tell us its own.
pub fn unspecified(client: SocketAddr) -> SocketAddr {
    match client {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}

async fn dial(backend: &str, timeout: Duration) -> Result<TcpStream, L4Error> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(backend)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(L4Error::Backend {
                backend: backend.to_owned(),
                source,
            });
        }
        Err(_) => {
            return Err(L4Error::Timeout {
                backend: backend.to_owned(),
                after: timeout,
            });
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
