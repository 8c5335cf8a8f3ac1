//! Opening one byte stream to an L7 backend: TCP, the PROXY header, TLS with ALPN.
//!
//! I/O: dials the backend, writes a PROXY v2 header first when the target carries one (it
//! precedes TLS, as HAProxy's `send-proxy-v2` does), then does TLS when the target asks for it,
//! verifying the certificate for the target's server name against the system roots plus
//! `[proxy] backend_ca`, offering the ALPN list of the target's protocol. What HTTP is spoken
//! on the stream is the caller's business ([`super::pool`] for requests, `proxy::l7::websocket`
//! for upgrades); this module only reports which version the backend's ALPN chose.
//!
//! Invariants: no timeout of its own (the caller bounds the whole establishment, HTTP
//! handshake included, by `connect_timeout`); the rustls client configs are built once per
//! daemon, on first use, and a failure to build them is logged once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use mc_proxy_shared::BackendProtocol;
use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::protocols::io::ReadGate;
use crate::protocols::proxyproto;

/// Where the system's trusted roots usually live (Debian, Ubuntu, Alpine, Arch).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a byte stream to the backend could not be opened. The backend's fault (or the
/// network's), except [`ConnectError::TlsConfig`] and [`ConnectError::ServerName`], which are
/// the operator's.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed (refused, unreachable, DNS).
    #[error("connect to {backend}: {source}")]
    Tcp {
        /// The backend address.
        backend: String,
        /// What the OS said.
        source: std::io::Error,
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
    /// The name is not usable as a TLS server name for the backend.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// The HTTP version spoken on an opened stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wire {
    /// HTTP/2 (prior knowledge, or ALPN `h2`).
    H2,
    /// HTTP/1.1.
    Http1,
}

/// The PROXY header a dedicated backend connection starts with: the one client it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProxyHeader {
    /// The real client address.
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
}

/// Everything that decides what a backend connection is, and so which requests may share
/// it: two requests with equal targets can use the same connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// `host:port` as the route names it.
    pub backend: String,
    /// What the route asked to speak.
    pub protocol: BackendProtocol,
    /// `Some(name)` for TLS: the name the backend certificate must carry (and the SNI sent).
    pub tls: Option<String>,
    /// `Some` on `send_proxy_protocol` routes: such a connection belongs to one client.
    pub proxy: Option<ProxyHeader>,
}

impl Target {
    /// The version spoken on a connection to this target before ALPN has said anything:
    /// `None` for `auto`, decided by the handshake.
    pub fn fixed_wire(&self) -> Option<Wire> {
        match self.protocol {
            BackendProtocol::H2 => Some(Wire::H2),
            BackendProtocol::Http1 => Some(Wire::Http1),
            BackendProtocol::Auto if self.tls.is_none() => Some(Wire::Http1),
            BackendProtocol::Auto => None,
        }
    }
}

/// An opened backend stream: plain TCP or TLS over it.
#[derive(Debug)]
pub enum BackendStream {
    /// Cleartext (h2c or HTTP/1.1).
    Plain(TcpStream),
    /// TLS; boxed, the rustls state is large and the plain case should not pay for it.
    /// Read through a [`ReadGate`]: hyper's HTTP/1.1 client reads its connection each time its
    /// task runs, and an empty read through rustls is not free.
    Tls(Box<ReadGate<TlsStream<TcpStream>>>),
}

/// The client configurations for TLS to backends, one per ALPN offer, built once per daemon
/// on first use: the system roots (if the usual bundle exists) plus `[proxy] backend_ca`.
#[derive(Debug)]
pub struct BackendTls {
    backend_ca: Option<PathBuf>,
    configs: OnceLock<Result<Configs, String>>,
}

#[derive(Debug, Clone)]
struct Configs {
    h2: Arc<rustls::ClientConfig>,
    http1: Arc<rustls::ClientConfig>,
    both: Arc<rustls::ClientConfig>,
}

impl BackendTls {
    /// Trust the system roots plus `backend_ca` (read on first use).
    pub fn new(backend_ca: Option<PathBuf>) -> Self {
        BackendTls {
            backend_ca,
            configs: OnceLock::new(),
        }
    }

    /// The client config offering the ALPN list of `protocol`, or why none can be built
    /// (logged once, at first use).
    pub fn config(
        &self,
        protocol: BackendProtocol,
    ) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
        let configs = self
            .configs
            .get_or_init(|| {
                let built = build_configs(self.backend_ca.as_deref());
                if let Err(e) = &built {
                    tracing::error!("backend_tls routes cannot connect: {e}");
                }
                built
            })
            .as_ref()
            .map_err(|e| ConnectError::TlsConfig(e.clone()))?;
        Ok(Arc::clone(match protocol {
            BackendProtocol::H2 => &configs.h2,
            BackendProtocol::Http1 => &configs.http1,
            BackendProtocol::Auto => &configs.both,
        }))
    }
}

fn build_configs(backend_ca: Option<&std::path::Path>) -> Result<Configs, String> {
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
    let base = rustls::ClientConfig::builder_with_provider(crate::model::certs::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let with_alpn = |alpn: &[&[u8]]| {
        let mut config = base.clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    };
    Ok(Configs {
        h2: with_alpn(&[b"h2"]),
        http1: with_alpn(&[b"http/1.1"]),
        both: with_alpn(&[b"h2", b"http/1.1"]),
    })
}

/// Opens a stream to `target`: TCP, PROXY header, TLS. Returns it with the HTTP version to
/// speak: the target's fixed one, or for `auto` what the backend's ALPN chose (HTTP/1.1 when
/// it chose nothing, as RFC 7301 clients assume).
pub async fn connect(
    target: &Target,
    tls: &BackendTls,
) -> Result<(BackendStream, Wire), ConnectError> {
    let backend = &target.backend;
    let mut tcp = TcpStream::connect(backend)
        .await
        .map_err(|source| ConnectError::Tcp {
            backend: backend.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    if let Some(header) = target.proxy {
        proxyproto::write_v2(&mut tcp, header.client, header.local)
            .await
            .map_err(|source| ConnectError::ProxyHeader {
                backend: backend.clone(),
                source,
            })?;
    }
    let Some(name) = &target.tls else {
        return Ok((
            BackendStream::Plain(tcp),
            target.fixed_wire().unwrap_or(Wire::Http1),
        ));
    };
    let config = tls.config(target.protocol)?;
    let server_name =
        ServerName::try_from(name.clone()).map_err(|_| ConnectError::ServerName(name.clone()))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|source| ConnectError::Tls {
            backend: backend.clone(),
            source,
        })?;
    let wire = target.fixed_wire().unwrap_or_else(|| {
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            Wire::H2
        } else {
            Wire::Http1
        }
    });
    Ok((BackendStream::Tls(Box::new(ReadGate::new(stream))), wire))
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, data),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Plain(s) => s.is_write_vectored(),
            BackendStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
