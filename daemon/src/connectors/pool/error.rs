//! Why a request got no backend connection ([`PoolError`]), and which of those failures are
//! the backend's (passive health counts them), the proxy's cap's, or a timeout (504).
//!
//! No I/O. A leaf of `pool`: the pool and its handshakes both report through it.

use std::sync::Arc;
use std::time::Duration;

use crate::connectors::connector::ConnectError;
use crate::protocols::body::BackendError;

/// Why no backend connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Opening the byte stream failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The whole establishment (TCP, PROXY, TLS, HTTP handshake) took over `connect_timeout`.
    #[error("connect to {backend} timed out after {after:?}")]
    Timeout {
        /// The backend address.
        backend: String,
        /// The configured `connect_timeout`.
        after: Duration,
    },
    /// The HTTP handshake failed.
    #[error("{version} handshake with {backend}: {source}")]
    Handshake {
        /// The backend address.
        backend: String,
        /// `HTTP/2` or `HTTP/1.1`.
        version: &'static str,
        /// What the HTTP library said.
        source: BackendError,
    },
    /// The backend's first bytes were not an HTTP/2 SETTINGS frame, or it closed before any.
    #[error("HTTP/2 handshake with {backend}: {why}")]
    NoSettings {
        /// The backend address.
        backend: String,
        /// What came instead.
        why: String,
    },
    /// Every connection to the target is busy, `max_connections` are open, and none freed up
    /// within `connect_timeout`.
    #[error("{backend}: all {max} backend connections busy for {after:?}")]
    Full {
        /// The backend address.
        backend: String,
        /// The cap.
        max: usize,
        /// How long the request waited.
        after: Duration,
    },
    /// This request's own dial failed (kept shared: requests that waited for it get it too,
    /// as [`PoolError::Shared`]).
    #[error("{0}")]
    Dialled(Arc<PoolError>),
    /// A dial another request made, and this one waited for, failed.
    #[error("{0}")]
    Shared(Arc<PoolError>),
}

impl PoolError {
    /// How a failed `version` handshake with `backend` is reported, whichever library ran it.
    pub(super) fn handshake<E: Into<BackendError>>(
        backend: &str,
        version: &'static str,
    ) -> impl FnOnce(E) -> PoolError {
        move |source| PoolError::Handshake {
            backend: backend.to_owned(),
            version,
            source: source.into(),
        }
    }

    /// Whether the client should hear 504 (the backend was too slow) rather than 502/503.
    pub fn is_timeout(&self) -> bool {
        match self {
            PoolError::Timeout { .. } => true,
            PoolError::Shared(e) | PoolError::Dialled(e) => e.is_timeout(),
            _ => false,
        }
    }

    /// Whether the proxy's own cap, not the backend, refused the request (503).
    pub fn is_full(&self) -> bool {
        matches!(self, PoolError::Full { .. })
    }

    /// Whether this request's own dial failed (what passive health counts): not the cap,
    /// and not a dial another request made and this one waited for (that one counts it).
    pub fn is_backend_failure(&self) -> bool {
        !matches!(self, PoolError::Full { .. } | PoolError::Shared(_))
    }
}
