//! The backend side of an L7 connection: one HTTP/2 connection per client connection.
//!
//! I/O: dials the route's backend, writes a PROXY v2 header when the route asks for it (before
//! TLS), does TLS with ALPN `h2` when `backend_tls` (verifying the certificate for the SNI the
//! client sent against the system roots plus `[proxy] backend_ca`), then the HTTP/2 handshake
//! with prior knowledge. The connection is dialled on the first request and redialled when it
//! has broken. A request that may have reached the backend is never retried (it may not be
//! idempotent); one that hyper hands back unsent is retried once on a fresh connection.
//!
//! Invariants: the whole establishment (dial, PROXY header, TLS, h2 handshake) is bounded by
//! `connect_timeout`, and its duration, when it succeeds, is recorded once in the route's
//! `connect_duration` histogram. The only lock held across an `.await` is the async dial gate, so
//! concurrent first requests share one dial rather than opening one connection each. The
//! connection's driver task ends when the client connection does (`closed`), and it and hyper's
//! tasks are spawned through the server's `TaskTracker`, so shutdown waits for them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::TaskExecutor;
use crate::proxyproto;
use crate::routes::RouteInfo;

/// Where the system's trusted roots usually live (Debian, Ubuntu, Alpine, Arch).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// HTTP/2 flow-control windows: large enough that an 8 MiB gRPC message is not throttled to
/// the 64 KiB default per round trip, small enough to bound what one stream can buffer.
pub(crate) const STREAM_WINDOW: u32 = 1024 * 1024;
/// See [`STREAM_WINDOW`]; shared by every stream of the connection.
pub(crate) const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Why a request could not be sent to the backend. Always the backend's fault, except
/// [`UpstreamError::TlsConfig`] (the operator's).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed (refused, unreachable, DNS).
    #[error("connect to {backend}: {source}")]
    Connect {
        /// The backend address.
        backend: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Dial, PROXY header, TLS and h2 handshake did not finish within `connect_timeout`.
    #[error("connect to {backend} timed out after {after:?}")]
    Timeout {
        /// The backend address.
        backend: String,
        /// The configured `connect_timeout`.
        after: Duration,
    },
    /// Writing the PROXY header failed.
    #[error("PROXY header to {backend}: {source}")]
    ProxyHeader {
        /// The backend address.
        backend: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TLS handshake with the backend failed (certificate not trusted, wrong name, ...).
    #[error("TLS to {backend}: {source}")]
    Tls {
        /// The backend address.
        backend: String,
        /// What rustls said.
        source: std::io::Error,
    },
    /// The backend's TLS trust could not be set up (unreadable `backend_ca`).
    #[error("backend TLS configuration: {0}")]
    TlsConfig(String),
    /// The SNI is not usable as a TLS server name for the backend.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// The HTTP/2 handshake failed (the backend does not speak h2c, or closed).
    #[error("HTTP/2 handshake with {backend}: {source}")]
    Handshake {
        /// The backend address.
        backend: String,
        /// What hyper said.
        source: hyper::Error,
    },
    /// The backend closed the connection before sending its HTTP/2 SETTINGS: it accepted TCP
    /// but does not speak HTTP/2 (or refused us after all).
    #[error("HTTP/2 handshake with {backend}: the backend closed without sending SETTINGS")]
    NoSettings {
        /// The backend address.
        backend: String,
    },
    /// The request was sent but no response head came within `response_timeout`.
    #[error("response from {backend} timed out after {after:?}")]
    ResponseTimeout {
        /// The backend address.
        backend: String,
        /// The configured `response_timeout`.
        after: Duration,
    },
    /// The request failed on an established connection (reset, connection lost).
    #[error("request to {backend}: {source}")]
    Request {
        /// The backend address.
        backend: String,
        /// What hyper said.
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// The status the client gets: 504 for a timeout, 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::Timeout { .. } | UpstreamError::ResponseTimeout { .. } => {
                http::StatusCode::GATEWAY_TIMEOUT
            }
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// The client configuration for `backend_tls`, built once per daemon on first use: the
/// system roots (if the usual bundle exists) plus `[proxy] backend_ca`, ALPN `h2`.
#[derive(Debug)]
pub struct BackendTls {
    backend_ca: Option<PathBuf>,
    config: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl BackendTls {
    /// Trust the system roots plus `backend_ca` (read on first use).
    pub fn new(backend_ca: Option<PathBuf>) -> Self {
        BackendTls {
            backend_ca,
            config: OnceLock::new(),
        }
    }

    /// The shared client config, or why it cannot be built (logged once, at first use).
    pub fn config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.config
            .get_or_init(|| {
                let built = build_client_config(self.backend_ca.as_deref());
                if let Err(e) = &built {
                    tracing::error!("backend_tls routes cannot connect: {e}");
                }
                built
            })
            .clone()
    }
}

fn build_client_config(
    backend_ca: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(pem) = std::fs::read(SYSTEM_ROOTS) {
        let certs = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
        let (added, _) = roots.add_parsable_certificates(certs);
        tracing::debug!(added, "backend TLS: system roots from {SYSTEM_ROOTS}");
    }
    if let Some(path) = backend_ca {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read backend_ca {}: {e}", path.display()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("backend_ca {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "backend_ca {} holds no certificate",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("backend_ca {}: {e}", path.display()))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The backend timeouts of an L7 route.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// The whole connection setup: TCP, PROXY header, TLS, and the HTTP/2 handshake up to the
    /// backend's SETTINGS.
    pub connect: Duration,
    /// From a request sent to its response head.
    pub response: Duration,
}

/// One client connection's backend: at most one HTTP/2 connection at a time.
#[derive(Debug)]
pub struct Upstream {
    route: Arc<RouteInfo>,
    /// The name the backend's certificate must carry (the client's SNI).
    server_name: String,
    client: SocketAddr,
    local: SocketAddr,
    timeouts: Timeouts,
    /// `Some` for `backend_tls` routes.
    tls: Option<Result<Arc<rustls::ClientConfig>, String>>,
    /// Cancelled when the client connection ends: the backend connection goes with it.
    closed: CancellationToken,
    /// Owns the connection's driver task and hyper's per-stream tasks (the server's tracker).
    tasks: TaskExecutor,
    sender: Mutex<Option<SendRequest<Incoming>>>,
}

impl Upstream {
    /// A backend handle that dials lazily. `client`/`local` go into the PROXY header.
    // One argument per thing the per-client-connection backend needs; the shared pool that
    // replaces this type takes them from a per-backend target instead.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        route: Arc<RouteInfo>,
        server_name: String,
        client: SocketAddr,
        local: SocketAddr,
        timeouts: Timeouts,
        tls: Option<Result<Arc<rustls::ClientConfig>, String>>,
        closed: CancellationToken,
        tasks: TaskExecutor,
    ) -> Self {
        Upstream {
            tasks,
            route,
            server_name,
            client,
            local,
            timeouts,
            tls,
            closed,
            sender: Mutex::new(None),
        }
    }

    /// Sends `req` (an HTTP/2 request with scheme and authority in its URI) on the backend
    /// connection, dialling it first if there is none or it has broken. On a request error the
    /// connection is dropped if it is closed, so the next request redials. A request that
    /// hyper hands back unsent (the connection closed between the check and the send) is
    /// retried once on a fresh connection; one that may have reached the backend never is.
    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = self.ready_sender().await?;
        let mut err = match self.in_time(sender.try_send_request(req)).await? {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        self.forget_if_closed().await;
        let Some(unsent) = err.take_message() else {
            return Err(self.request_error(err.into_error()));
        };
        tracing::debug!("backend connection closed before the request was sent: retrying");
        let mut sender = self.ready_sender().await?;
        match self.in_time(sender.send_request(unsent)).await? {
            Ok(resp) => Ok(resp),
            Err(e) => {
                self.forget_if_closed().await;
                Err(self.request_error(e))
            }
        }
    }

    /// Bounds the wait for a response head by `response_timeout`; the body that follows is
    /// not bounded (gRPC and event streams may stay open as long as they like).
    async fn in_time<T>(&self, send: impl Future<Output = T>) -> Result<T, UpstreamError> {
        tokio::time::timeout(self.timeouts.response, send)
            .await
            .map_err(|_| UpstreamError::ResponseTimeout {
                backend: self.route.route.backend.clone(),
                after: self.timeouts.response,
            })
    }

    fn request_error(&self, source: hyper::Error) -> UpstreamError {
        UpstreamError::Request {
            backend: self.route.route.backend.clone(),
            source,
        }
    }

    /// Drops the stored connection if it has closed, so the next request redials.
    async fn forget_if_closed(&self) {
        let mut slot = self.sender.lock().await;
        if slot.as_ref().is_some_and(|s| s.is_closed()) {
            *slot = None;
        }
    }

    async fn ready_sender(&self) -> Result<SendRequest<Incoming>, UpstreamError> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.as_mut() {
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Ok(sender.clone());
            }
            tracing::debug!(backend = %self.route.route.backend, "backend connection lost: redialling");
            *slot = None;
        }
        // Boxed: the dial (TCP, PROXY header, TLS, h2 handshake) is rare but its state is
        // large, and it would otherwise be inlined in every request's future.
        let started = std::time::Instant::now();
        let sender = match tokio::time::timeout(self.timeouts.connect, Box::pin(self.dial())).await
        {
            Ok(res) => {
                let sender = res?;
                self.route.stats.connect_duration.record(started.elapsed());
                sender
            }
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    backend: self.route.route.backend.clone(),
                    after: self.timeouts.connect,
                });
            }
        };
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn dial(&self) -> Result<SendRequest<Incoming>, UpstreamError> {
        let backend = &self.route.route.backend;
        let mut tcp =
            TcpStream::connect(backend)
                .await
                .map_err(|source| UpstreamError::Connect {
                    backend: backend.clone(),
                    source,
                })?;
        let _ = tcp.set_nodelay(true);
        if self.route.route.send_proxy_protocol {
            proxyproto::write_v2(&mut tcp, self.client, self.local)
                .await
                .map_err(|source| UpstreamError::ProxyHeader {
                    backend: backend.clone(),
                    source,
                })?;
        }
        match &self.tls {
            None => self.handshake(tcp).await,
            Some(config) => {
                let config = config.clone().map_err(UpstreamError::TlsConfig)?;
                let name = ServerName::try_from(self.server_name.clone())
                    .map_err(|_| UpstreamError::ServerName(self.server_name.clone()))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|source| UpstreamError::Tls {
                        backend: backend.clone(),
                        source,
                    })?;
                self.handshake(tls).await
            }
        }
    }

    /// HTTP/2 handshake with prior knowledge; the connection is driven by a task that ends
    /// with the connection or when the client connection closes.
    async fn handshake<T>(&self, io: T) -> Result<SendRequest<Incoming>, UpstreamError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // hyper's handshake returns once our preface is queued, before the backend said
        // anything: a backend that accepts TCP and stays silent would pass. Its first bytes
        // are its SETTINGS (RFC 9113 §3.4), so wait for them (within connect_timeout).
        let (io, heard) = FirstRead::new(io);
        let (sender, conn) = http2::Builder::new(self.tasks.clone())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Handshake {
                backend: self.route.route.backend.clone(),
                source,
            })?;
        let closed = self.closed.clone();
        let backend = self.route.route.backend.clone();
        let driver = async move {
            tokio::select! {
                res = conn => if let Err(e) = res {
                    tracing::debug!(%backend, "backend connection ended: {e}");
                },
                () = closed.cancelled() => {}
            }
        };
        hyper::rt::Executor::execute(&self.tasks, driver);
        heard.await.map_err(|_| UpstreamError::NoSettings {
            backend: self.route.route.backend.clone(),
        })?;
        Ok(sender)
    }
}

/// A backend stream that reports, once, that its first bytes arrived (or, by dropping the
/// sender, that the stream ended without any).
struct FirstRead<T> {
    inner: T,
    heard: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<T> FirstRead<T> {
    fn new(inner: T) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            FirstRead {
                inner,
                heard: Some(tx),
            },
            rx,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstRead<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && let Some(heard) = self.heard.take()
        {
            let _ = heard.send(());
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstRead<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
