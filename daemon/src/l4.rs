//! The L4 path: TLS passthrough to the route's backend.
//!
//! I/O: dials the backend (within `connect_timeout`), writes a PROXY v2 header in one write when
//! the route asks for it, forwards the ClientHello bytes verbatim, then relays both ways
//! ([`crate::relay`]). Invariant: the peeked bytes are forwarded exactly once and freed before
//! the relay starts, so a long-lived connection does not keep its ClientHello.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mc_proxy_shared::ResetReason;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::access::Record;
use crate::proxyproto;
use crate::relay::{RelayEnd, relay};
use crate::routes::RouteInfo;

/// Why the backend could not be set up. Always the backend's fault; the client is reset.
#[derive(Debug, thiserror::Error)]
pub enum L4Error {
    /// The TCP connect did not finish within `connect_timeout`.
    #[error("backend {backend}: connect timed out after {after:?}")]
    Timeout {
        /// The backend address.
        backend: String,
        /// The configured `connect_timeout`.
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
}

impl L4Error {
    /// The reset reason counted for it.
    pub fn reason(&self) -> ResetReason {
        match self {
            L4Error::Timeout { .. } => ResetReason::BackendTimeout,
            L4Error::Backend { .. } => ResetReason::BackendUnreachable,
        }
    }
}

/// Dials the backend, sends the PROXY v2 header if the route asks for it, forwards the peeked
/// bytes, then relays both ways until both sides are done, the relay idles out or fails.
pub async fn serve(
    client: &mut TcpStream,
    peeked: Vec<u8>,
    route: &RouteInfo,
    record: &Record,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Result<RelayEnd, L4Error> {
    let backend_addr = route.backend();
    let backend_err = |source| L4Error::Backend {
        backend: backend_addr.to_owned(),
        source,
    };
    let dial_started = Instant::now();
    let mut backend = dial(backend_addr, connect_timeout).await.inspect_err(|_| {
        route.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
    })?;
    route.stats.connect_duration.record(dial_started.elapsed());
    if route.route.send_proxy_protocol {
        // The destination is where the client reached us; the spec has the header relay the
        // original connection's endpoints.
        let local = record.local.unwrap_or(unspecified(record.client));
        proxyproto::write_v2(&mut backend, record.client, local)
            .await
            .map_err(backend_err)?;
    }
    backend.write_all(&peeked).await.map_err(backend_err)?;
    for up in [&record.bytes.up, &route.stats.bytes.up] {
        up.fetch_add(peeked.len() as u64, Ordering::Relaxed);
    }
    drop(peeked);
    let _ = client.set_nodelay(true);
    Ok(relay(
        client,
        &backend,
        idle_timeout,
        &record.bytes,
        &route.stats.bytes,
    )
    .await)
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
