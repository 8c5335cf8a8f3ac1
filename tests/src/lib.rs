//! Fixtures for the end-to-end tests: a test PKI, TLS backends, a proxy built with
//! [`ProxyBuilder`] (or from a TOML snippet) and run with `server::run` on port 0, and clients
//! that record what they send.
//!
//! Every fixture cleans up after itself: servers stop when their handle is dropped, temp dirs
//! are removed, and nothing binds a fixed port.

#![allow(missing_docs)]

pub mod etcd;
pub mod grpc;
pub mod h2origin;
pub mod h2raw;
pub mod pebble;
pub mod site;
pub mod web;
pub mod ws;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use mc_proxy::api::admin::{self, AdminSocket};
use mc_proxy::api::metrics;
use mc_proxy::control::config::Config;
use mc_proxy::control::store::Store;
use mc_proxy::listeners::server;
use mc_proxy::model::state::State;
use mc_proxy::protocols::io::Rewind;
use mc_proxy::protocols::proxyproto;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

/// Installs the process's one tracing subscriber (once; later calls do nothing). It has two
/// layers: the test's captured output, filtered by `RUST_LOG` (off when unset), and the
/// `capture_logs` layer, which writes `mc_proxy*` lines at debug and above into the tape of the
/// thread that emitted them, if that thread is capturing.
///
/// One global subscriber instead of one scoped subscriber per capturing test: tracing caches
/// each callsite's interest process-wide, and with scoped subscribers a callsite first reached
/// on a thread without one can be cached as "never" while another thread captures, so that
/// test misses its own lines. The capture layer's interest never depends on the thread.
/// Says that a test (or one of its checks) did not run and why, past the test harness's
/// output capture: a newcomer's `cargo test` passes without HAProxy, Chromium, promtool or
/// grpcio, and must show what it did not check. CI sets `MCPROXY_REQUIRE_*` and fails instead.
pub fn skipped(what: &str) {
    use std::io::Write;
    // `eprintln!` goes to the captured output, shown only for failing tests; a write to the
    // stderr handle itself is not captured.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what}");
}

pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, filter::DynFilterFn, fmt};

    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let installed = *INSTALLED.get_or_init(|| {
        let captured = |meta: &tracing::Metadata<'_>| {
            meta.target().starts_with("mc_proxy") && *meta.level() <= tracing::Level::DEBUG
        };
        let capture = fmt::layer()
            .with_ansi(false)
            .with_writer(|| CaptureWriter)
            .with_filter(
                DynFilterFn::new(move |meta, _| captured(meta) && capturing())
                    .with_callsite_filter(move |meta| {
                        if captured(meta) {
                            tracing::subscriber::Interest::sometimes()
                        } else {
                            tracing::subscriber::Interest::never()
                        }
                    }),
            );
        let env = fmt::layer().with_test_writer().with_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("off")),
        );
        tracing_subscriber::registry()
            .with(capture)
            .with(env)
            .try_init()
            .is_ok()
    });
    assert!(
        installed,
        "another global tracing subscriber was installed first: capture_logs cannot work"
    );
}

thread_local! {
    /// The tape `capture_logs` writes this thread's log lines into, while it captures.
    static CAPTURE: std::cell::RefCell<Option<Tape>> = const { std::cell::RefCell::new(None) };
}

fn capturing() -> bool {
    CAPTURE.with(|c| c.borrow().is_some())
}

/// Writes into the current thread's capture tape (nowhere if it is not capturing).
struct CaptureWriter;

impl io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(tape) = &*c.borrow() {
                tape.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Ends a `capture_logs` capture when dropped.
pub struct CaptureGuard {
    previous: Option<Tape>,
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CAPTURE.with(|c| *c.borrow_mut() = previous);
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A throwaway certificate authority; issues leaf certificates for test hostnames.
pub struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mc-proxy test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        Pki { ca }
    }

    /// A leaf certificate (and key) for `names`, signed by this CA.
    pub fn issue(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
    }

    /// Issues a leaf for `names` and writes it as `NAME.pem` / `NAME.key` (PEM) in `dir`;
    /// returns the two paths as strings, ready for a TOML route.
    pub fn write_pem(&self, dir: &std::path::Path, names: &[&str]) -> (String, String) {
        let (cert, key, _) = self.write_pem_spki(dir, names);
        (cert, key)
    }

    /// Like `write_pem`, also returning the base64 SHA-256 of the leaf's SubjectPublicKeyInfo
    /// (what Chromium's `--ignore-certificate-errors-spki-list` takes).
    pub fn write_pem_spki(
        &self,
        dir: &std::path::Path,
        names: &[&str],
    ) -> (String, String, String) {
        use base64::Engine as _;
        use rcgen::PublicKeyData as _;
        let key = rcgen::KeyPair::generate().unwrap();
        let spki =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &key.subject_public_key_info());
        let spki = base64::engine::general_purpose::STANDARD.encode(spki);
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let stem = names[0].replace('*', "_");
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (
            cert_path.display().to_string(),
            key_path.display().to_string(),
            spki,
        )
    }

    /// Like `write_pem`, with a leaf valid from `days_from` to `days_until` days from now
    /// (negative: in the past).
    pub fn write_pem_valid(
        &self,
        dir: &std::path::Path,
        names: &[&str],
        days_from: i64,
        days_until: i64,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(days_from);
        params.not_after = now + time::Duration::days(days_until);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let stem = names[0].replace('*', "_");
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (
            cert_path.display().to_string(),
            key_path.display().to_string(),
        )
    }

    /// The CA certificate as PEM (for `[proxy] backend_ca`, or clients that are not Rust).
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A client config that trusts this CA only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client_config_with(|_| {})
    }

    /// A client config that trusts this CA and offers only `groups`, in that order, for the
    /// key exchange (a key share for the first, and for X25519 too when it follows a
    /// post-quantum hybrid, as browsers send).
    pub fn client_config_with_groups(
        &self,
        groups: &[rustls::NamedGroup],
    ) -> Arc<rustls::ClientConfig> {
        let base = provider();
        let kx_groups = groups
            .iter()
            .map(|name| {
                *base
                    .kx_groups
                    .iter()
                    .find(|g| g.name() == *name)
                    .unwrap_or_else(|| panic!("the test provider has no {name:?}"))
            })
            .collect();
        let provider = rustls::crypto::CryptoProvider {
            kx_groups,
            ..(*base).clone()
        };
        self.client_config_on(Arc::new(provider), |_| {})
    }

    /// Like `client_config`, with changes (ALPN, fragment size, ...).
    pub fn client_config_with(
        &self,
        tweak: impl FnOnce(&mut rustls::ClientConfig),
    ) -> Arc<rustls::ClientConfig> {
        self.client_config_on(provider(), tweak)
    }

    /// The one place a client config is built: this CA as the only root, on `provider`.
    fn client_config_on(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
        tweak: impl FnOnce(&mut rustls::ClientConfig),
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tweak(&mut config);
        Arc::new(config)
    }
}

/// Bytes seen by a `Recorded` stream.
pub type Tape = Arc<Mutex<Vec<u8>>>;

/// A stream wrapper that records the bytes read from it (`reads`) and written to it
/// (`writes`), and optionally splits every write into `chunk`-byte pieces so that a
/// ClientHello crosses many TCP segments.
#[derive(Debug)]
pub struct Recorded<S> {
    inner: S,
    pub reads: Tape,
    pub writes: Tape,
    chunk: Option<usize>,
}

impl<S> Recorded<S> {
    pub fn new(inner: S) -> Self {
        Recorded {
            inner,
            reads: Tape::default(),
            writes: Tape::default(),
            chunk: None,
        }
    }

    /// Every write passes at most `chunk` bytes down (with TCP_NODELAY, one segment each).
    pub fn chunked(mut self, chunk: usize) -> Self {
        self.chunk = Some(chunk);
        self
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            self.reads
                .lock()
                .unwrap()
                .extend_from_slice(&buf.filled()[before..]);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let limit = self.chunk.unwrap_or(buf.len()).min(buf.len());
        let res = Pin::new(&mut self.inner).poll_write(cx, &buf[..limit]);
        if let Poll::Ready(Ok(n)) = res {
            self.writes.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TLS echo server for one or more names: it echoes every byte, and when the client
/// shuts down its write half it answers `bye from NAME\n` and closes. It records the raw
/// (still encrypted) bytes of every connection it accepts. Started with `start_proxied`, it
/// first reads a PROXY protocol header (as an origin behind mc-proxy would) and records it.
pub struct TlsBackend {
    pub addr: SocketAddr,
    pub name: String,
    /// Raw bytes received, one tape per accepted connection, in accept order.
    pub connections: Arc<Mutex<Vec<Tape>>>,
    /// PROXY headers received (`start_proxied` only), in accept order.
    pub headers: Arc<Mutex<Vec<proxyproto::Header>>>,
    task: JoinHandle<()>,
}

impl TlsBackend {
    pub async fn start(pki: &Pki, names: &[&str]) -> TlsBackend {
        TlsBackend::start_with(pki, names, false).await
    }

    /// A backend that requires a PROXY header before the TLS handshake.
    pub async fn start_proxied(pki: &Pki, names: &[&str]) -> TlsBackend {
        TlsBackend::start_with(pki, names, true).await
    }

    /// A backend on `addr` (one that was stopped: brought back up on its old address).
    pub async fn start_on(pki: &Pki, names: &[&str], addr: SocketAddr) -> TlsBackend {
        TlsBackend::start_full(pki, names, false, Some(addr)).await
    }

    async fn start_with(pki: &Pki, names: &[&str], expect_proxy: bool) -> TlsBackend {
        TlsBackend::start_full(pki, names, expect_proxy, None).await
    }

    async fn start_full(
        pki: &Pki,
        names: &[&str],
        expect_proxy: bool,
        on: Option<SocketAddr>,
    ) -> TlsBackend {
        let (chain, key) = pki.issue(names);
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(on.unwrap_or_else(|| ([127, 0, 0, 1], 0).into()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let name = names[0].to_owned();
        let connections: Arc<Mutex<Vec<Tape>>> = Arc::default();
        let headers: Arc<Mutex<Vec<proxyproto::Header>>> = Arc::default();
        let task = tokio::spawn({
            let (name, connections, headers) =
                (name.clone(), Arc::clone(&connections), Arc::clone(&headers));
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let recorded = Recorded::new(tcp);
                    connections
                        .lock()
                        .unwrap()
                        .push(Arc::clone(&recorded.reads));
                    let (acceptor, name, headers) =
                        (acceptor.clone(), name.clone(), Arc::clone(&headers));
                    tokio::spawn(async move {
                        let mut recorded = recorded;
                        let mut early = Vec::new();
                        if expect_proxy {
                            let Ok((header, rest)) =
                                proxyproto::read_header(&mut recorded, Duration::from_secs(5))
                                    .await
                            else {
                                return;
                            };
                            headers.lock().unwrap().push(header);
                            early = rest;
                        }
                        let Ok(mut tls) = acceptor.accept(Rewind::new(early, recorded)).await
                        else {
                            return;
                        };
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            match tls.read(&mut buf).await {
                                Ok(0) => break,
                                Ok(n) => {
                                    if tls.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                                Err(_) => return,
                            }
                        }
                        let _ = tls.write_all(format!("bye from {name}\n").as_bytes()).await;
                        let _ = tls.shutdown().await;
                    });
                }
            }
        });
        TlsBackend {
            addr,
            name,
            connections,
            headers,
            task,
        }
    }

    /// The raw bytes of the `i`-th accepted connection so far.
    pub fn received(&self, i: usize) -> Vec<u8> {
        self.connections.lock().unwrap()[i].lock().unwrap().clone()
    }

    pub fn accepted(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    /// The PROXY header of the `i`-th connection (`start_proxied` backends).
    pub fn header(&self, i: usize) -> proxyproto::Header {
        self.headers.lock().unwrap()[i].clone()
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running daemon: `server::run` on listeners bound from a generated config, the admin
/// API on a socket in its temp dir and the metrics endpoint on 127.0.0.1 port 0, as
/// `mc-proxy` runs them.
pub struct Proxy {
    /// Bound address of each listener, in config order.
    pub addrs: Vec<SocketAddr>,
    pub state: Arc<State>,
    /// The admin API's Unix socket.
    pub socket: std::path::PathBuf,
    /// The metrics endpoint (`http://ADDR/metrics`).
    pub metrics: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<()>>,
    pub admin_task: Option<JoinHandle<()>>,
    pub metrics_task: Option<JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts a proxy whose config is `[database]` and `[admin]` in a temp dir plus `body`
    /// (listeners use `127.0.0.1:0`): for tests about the TOML text itself; others use
    /// [`ProxyBuilder`].
    pub async fn start(body: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        Proxy::start_in(dir, body).await
    }

    /// Like `start`, in an existing directory (reusing its database).
    pub async fn start_in(dir: tempfile::TempDir, body: &str) -> Proxy {
        Proxy::start_full(dir, body, "").await
    }

    async fn start_full(dir: tempfile::TempDir, body: &str, admin_extra: &str) -> Proxy {
        init_tracing();
        let db = dir.path().join("mc-proxy.db");
        let socket = dir.path().join("admin.sock");
        let text = format!(
            "[database]\npath = {:?}\n[admin]\nsocket = {:?}\n{admin_extra}\n{body}",
            db.display().to_string(),
            socket.display().to_string()
        );
        // On disk too: a reload re-reads its `[proxy]` settings from there, as the daemon's.
        let path = dir.path().join("mc-proxy.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::parse(&path, &text)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        let mut store = Store::open(&config.database.path).unwrap();
        let state = Arc::new(mc_proxy::control::boot::load_state(&config, &mut store).unwrap());
        let shutdown = CancellationToken::new();
        // `[proxy] workers` of 2 or more: the daemon's worker threads (`server::Workers`), as
        // `mc-proxy` runs them; otherwise `server::run` on the test's own runtime (whose thread
        // `capture_logs` sees).
        let (addrs, task) = if state.proxy().workers >= 2 {
            let workers = server::Workers::bind(&state, state.proxy().workers).unwrap();
            let addrs = workers.local_addrs();
            let running = workers.start(&state, &shutdown).unwrap();
            (addrs, tokio::spawn(running.wait()))
        } else {
            let listeners = server::bind(&state).await.unwrap();
            let addrs = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
            let task = tokio::spawn(server::run(listeners, Arc::clone(&state), shutdown.clone()));
            (addrs, task)
        };
        let admin_socket = AdminSocket::bind(&socket).unwrap();
        let metrics_listener = metrics::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let metrics = metrics_listener.local_addr().unwrap();
        let control = Arc::new(
            mc_proxy::control::Control::new(Arc::clone(&state), store).with_config_path(path),
        );
        // With [cluster], the node joins the fleet as the daemon does (its sync ends with
        // the admin API's task).
        let cluster_task = config.cluster.as_ref().map(|cfg| {
            let (_, run) = mc_proxy::control::cluster::start(
                cfg,
                &control,
                &config.database.path,
                Some(&socket),
                None,
                shutdown.clone(),
            );
            tokio::spawn(run)
        });
        // With [acme], the ordering task as the daemon runs it (it ends with the admin API's).
        let acme_task = config.acme.clone().map(|acme| {
            tokio::spawn(mc_proxy::control::acme::manager::run(
                acme,
                Arc::clone(&control),
                shutdown.clone(),
            ))
        });
        let admin_task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                admin::serve(admin_socket, control, shutdown).await.unwrap();
                if let Some(task) = cluster_task {
                    let _ = task.await;
                }
                if let Some(task) = acme_task {
                    let _ = task.await;
                }
            }
        });
        // /metrics, and the certificate watch beside it as the daemon runs both until drained.
        let metrics_task = tokio::spawn({
            let (state, shutdown) = (Arc::clone(&state), shutdown.clone());
            async move {
                tokio::join!(
                    metrics::serve(metrics_listener, Arc::clone(&state), shutdown.clone()),
                    mc_proxy::control::expiry::watch(state, shutdown),
                );
            }
        });
        Proxy {
            addrs,
            state,
            socket,
            metrics,
            shutdown,
            task: Some(task),
            admin_task: Some(admin_task),
            metrics_task: Some(metrics_task),
            dir,
        }
    }

    /// Waits (up to 5 s) until an event watcher is subscribed, so that what the test does next
    /// is seen by it.
    pub async fn wait_for_watchers(&self) {
        for _ in 0..500 {
            if self.state.events.has_subscribers() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no event watcher subscribed within 5 s");
    }

    /// A client for this daemon's admin API.
    pub async fn admin(&self) -> mc_proxy_shared::client::AdminClient {
        mc_proxy_shared::client::AdminClient::connect(&self.socket)
            .await
            .unwrap()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Stops the daemon and hands back its directory (database included), for a restart.
    pub async fn stop_and_keep_dir(mut self) -> tempfile::TempDir {
        self.stop().await;
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Fires shutdown and waits for `server::run` to return.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        if let Some(task) = self.admin_task.take() {
            task.await.unwrap();
        }
        if let Some(task) = self.metrics_task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A proxy config built from typed parts, then started with [`ProxyBuilder::start`]:
///
/// ```ignore
/// let proxy = ProxyBuilder::new()
///     .idle_timeout(Duration::from_millis(300))
///     .listener()
///     .proxy_protocol()
///     .route("a.test", backend.addr)
///     .l7(&pki)
///     .send_proxy()
///     .start()
///     .await;
/// ```
///
/// Listeners bind 127.0.0.1 port 0. Route settings (`l4`, `l7`, `send_proxy`, `backend_tls`)
/// apply to the route added last, listener settings to the listener added last; `route`
/// without a `listener` before it adds one. Certificates and the backend CA are written into
/// the proxy's own temp dir.
pub struct ProxyBuilder {
    dir: tempfile::TempDir,
    proxy: Vec<String>,
    admin: Vec<String>,
    blocked_ips: Vec<String>,
    blocked_cidrs: Vec<String>,
    listeners: Vec<ListenerSpec>,
}

#[derive(Default)]
struct ListenerSpec {
    proxy_protocol: bool,
    proxy_protocol_from: Vec<String>,
    no_sni_route: Option<String>,
    /// More `key = value` lines (client limits, ...).
    settings: Vec<String>,
    routes: Vec<RouteSpec>,
}

struct RouteSpec {
    hostname: String,
    backend: String,
    /// When set: `backends = [...]` (address, weight) instead of `backend`.
    members: Vec<(String, u32)>,
    balance: Option<&'static str>,
    /// The `health_check` inline table's body.
    health_check: Option<String>,
    mode: Option<&'static str>,
    cert: Option<(String, String)>,
    backend_tls: bool,
    send_proxy: bool,
    backend_protocol: Option<mc_proxy_shared::BackendProtocol>,
    access_log: bool,
    /// More `key = value` lines (access lists, request limits, ...).
    settings: Vec<String>,
}

impl Default for ProxyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyBuilder {
    pub fn new() -> ProxyBuilder {
        ProxyBuilder {
            dir: tempfile::tempdir().unwrap(),
            proxy: Vec::new(),
            admin: Vec::new(),
            blocked_ips: Vec::new(),
            blocked_cidrs: Vec::new(),
            listeners: Vec::new(),
        }
    }

    /// A new listener on 127.0.0.1 port 0.
    pub fn listener(mut self) -> Self {
        self.listeners.push(ListenerSpec::default());
        self
    }

    fn last_listener(&mut self) -> &mut ListenerSpec {
        if self.listeners.is_empty() {
            self.listeners.push(ListenerSpec::default());
        }
        self.listeners.last_mut().unwrap()
    }

    fn last_route(&mut self) -> &mut RouteSpec {
        self.last_listener()
            .routes
            .last_mut()
            .expect("a route setting before any route")
    }

    /// The listener reads a PROXY header first.
    pub fn proxy_protocol(mut self) -> Self {
        self.last_listener().proxy_protocol = true;
        self
    }

    /// ClientHellos without SNI on this listener go to the route `hostname`.
    pub fn no_sni_route(mut self, hostname: &str) -> Self {
        self.last_listener().no_sni_route = Some(hostname.to_owned());
        self
    }

    /// A `key = value` line (the value as TOML) on the last listener: `max_conns_per_client`,
    /// `new_conns_per_client`, ...
    pub fn listener_setting(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.last_listener()
            .settings
            .push(format!("{key} = {value}"));
        self
    }

    /// A `key = value` line (the value as TOML) in `[proxy]`.
    pub fn proxy_setting(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.proxy.push(format!("{key} = {value}"));
        self
    }

    /// The listener reads a PROXY header only from these peers (IPs or CIDRs).
    pub fn proxy_protocol_from(mut self, peers: &[&str]) -> Self {
        let listener = self.last_listener();
        listener.proxy_protocol = true;
        listener.proxy_protocol_from = peers.iter().map(|p| p.to_string()).collect();
        self
    }

    /// A route (L4 unless `l7` follows) on the last listener.
    pub fn route(mut self, hostname: &str, backend: impl std::fmt::Display) -> Self {
        self.last_listener().routes.push(RouteSpec {
            hostname: hostname.to_owned(),
            backend: backend.to_string(),
            members: Vec::new(),
            balance: None,
            health_check: None,
            mode: None,
            cert: None,
            backend_tls: false,
            send_proxy: false,
            backend_protocol: None,
            access_log: false,
            settings: Vec::new(),
        });
        self
    }

    /// A `key = value` line (the value as TOML) on the last route: `allow_from`, ...
    pub fn route_setting(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.last_route().settings.push(format!("{key} = {value}"));
        self
    }

    /// The route's per-request access log (`access_log = true`).
    pub fn access_log(mut self) -> Self {
        self.last_route().access_log = true;
        self
    }

    /// A route (L4 unless `l7` follows) to several backends, each with a weight.
    pub fn route_to<A: std::fmt::Display>(self, hostname: &str, members: &[(A, u32)]) -> Self {
        let mut this = self.route(hostname, "unused:1");
        this.last_route().members = members.iter().map(|(a, w)| (a.to_string(), *w)).collect();
        this
    }

    /// The route's `balance` (`round_robin`, `least_conn`, `source`).
    pub fn balance(mut self, balance: &'static str) -> Self {
        self.last_route().balance = Some(balance);
        self
    }

    /// The route's active health check: every `interval`, `fall` failures down, `rise`
    /// successes up, each probe within `interval / 2`; an HTTP `GET path` when `path` is
    /// given, else a TCP connect.
    pub fn health_check(
        mut self,
        interval: Duration,
        rise: u32,
        fall: u32,
        path: Option<&str>,
    ) -> Self {
        let ms = |d: Duration| format!("\"{}ms\"", d.as_millis());
        let mut table = format!(
            "interval = {}, timeout = {}, rise = {rise}, fall = {fall}",
            ms(interval),
            ms(interval / 2)
        );
        if let Some(path) = path {
            table.push_str(&format!(", path = {path:?}"));
        }
        self.last_route().health_check = Some(table);
        self
    }

    /// The last route's health check (set with [`ProxyBuilder::health_check`] first) takes
    /// `expect`.
    pub fn health_check_expect(mut self, expect: &str) -> Self {
        let route = self.last_route();
        let table = route
            .health_check
            .as_mut()
            .expect("health_check before health_check_expect");
        table.push_str(&format!(", expect = {expect:?}"));
        self
    }

    /// The route is written with an explicit `mode = "l4"`.
    pub fn l4(mut self) -> Self {
        self.last_route().mode = Some("l4");
        self
    }

    /// The route terminates TLS with a certificate for its hostname from `pki`.
    pub fn l7(self, pki: &Pki) -> Self {
        let hostname = self.listeners.last().and_then(|l| l.routes.last());
        let hostname = hostname.expect("l7 before any route").hostname.clone();
        self.l7_cert_for(pki, &[&hostname])
    }

    /// The route terminates TLS with a certificate for `names` (which need not cover it).
    pub fn l7_cert_for(mut self, pki: &Pki, names: &[&str]) -> Self {
        let cert = pki.write_pem(self.dir.path(), names);
        let route = self.last_route();
        route.mode = Some("l7");
        route.cert = Some(cert);
        self
    }

    /// The route terminates TLS with these PEM files (a `(cert, key)` pair of paths).
    pub fn l7_cert_files(mut self, (cert, key): (String, String)) -> Self {
        let route = self.last_route();
        route.mode = Some("l7");
        route.cert = Some((cert, key));
        self
    }

    /// The route's backend speaks TLS.
    pub fn backend_tls(mut self) -> Self {
        self.last_route().backend_tls = true;
        self
    }

    /// `[proxy] backend_max_connections`.
    pub fn backend_max_connections(mut self, value: usize) -> Self {
        self.proxy
            .push(format!("backend_max_connections = {value}"));
        self
    }

    /// `[proxy] backend_idle_timeout`.
    pub fn backend_idle_timeout(self, value: Duration) -> Self {
        self.duration("backend_idle_timeout", value)
    }

    /// The route sends a PROXY v2 header to its backend.
    pub fn send_proxy(mut self) -> Self {
        self.last_route().send_proxy = true;
        self
    }

    /// The HTTP version the route speaks to its backend (`backend_protocol`).
    pub fn backend_protocol(mut self, protocol: mc_proxy_shared::BackendProtocol) -> Self {
        self.last_route().backend_protocol = Some(protocol);
        self
    }

    fn duration(mut self, key: &str, value: Duration) -> Self {
        self.proxy
            .push(format!("{key} = \"{}ms\"", value.as_millis()));
        self
    }

    pub fn client_hello_timeout(self, value: Duration) -> Self {
        self.duration("client_hello_timeout", value)
    }

    pub fn connect_timeout(self, value: Duration) -> Self {
        self.duration("connect_timeout", value)
    }

    pub fn idle_timeout(self, value: Duration) -> Self {
        self.duration("idle_timeout", value)
    }

    pub fn shutdown_timeout(self, value: Duration) -> Self {
        self.duration("shutdown_timeout", value)
    }

    pub fn response_timeout(self, value: Duration) -> Self {
        self.duration("response_timeout", value)
    }

    pub fn request_header_timeout(self, value: Duration) -> Self {
        self.duration("request_header_timeout", value)
    }

    pub fn keepalive_timeout(self, value: Duration) -> Self {
        self.duration("keepalive_timeout", value)
    }

    /// `[proxy] workers`: 2 or more runs the daemon's worker threads (see [`Proxy`]).
    pub fn workers(mut self, value: usize) -> Self {
        self.proxy.push(format!("workers = {value}"));
        self
    }

    pub fn max_connections(mut self, value: usize) -> Self {
        self.proxy.push(format!("max_connections = {value}"));
        self
    }

    /// `[proxy] max_request_head`, in bytes.
    pub fn max_request_head(mut self, value: usize) -> Self {
        self.proxy.push(format!("max_request_head = {value}"));
        self
    }

    /// Backends with `backend_tls` are verified against `pki`'s CA.
    pub fn backend_ca(mut self, pki: &Pki) -> Self {
        let path = self.dir.path().join("backend-ca.pem");
        std::fs::write(&path, pki.ca_pem()).unwrap();
        self.proxy
            .push(format!("backend_ca = {:?}", path.display().to_string()));
        self
    }

    /// `[admin] event_buffer`.
    pub fn event_buffer(mut self, value: usize) -> Self {
        self.admin.push(format!("event_buffer = {value}"));
        self
    }

    /// A firewall rule blocking one IP.
    pub fn block_ip(mut self, ip: &str) -> Self {
        self.blocked_ips.push(ip.to_owned());
        self
    }

    /// A firewall rule blocking a CIDR.
    pub fn block_cidr(mut self, cidr: &str) -> Self {
        self.blocked_cidrs.push(cidr.to_owned());
        self
    }

    /// The config body (everything but `[database]` and `[admin]`), as TOML.
    pub fn toml(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        if !self.proxy.is_empty() {
            out.push_str("[proxy]\n");
            for line in &self.proxy {
                writeln!(out, "{line}").unwrap();
            }
        }
        if !self.blocked_ips.is_empty() || !self.blocked_cidrs.is_empty() {
            writeln!(
                out,
                "[firewall]\nblocked_ips = {:?}\nblocked_cidrs = {:?}",
                self.blocked_ips, self.blocked_cidrs
            )
            .unwrap();
        }
        for listener in &self.listeners {
            writeln!(out, "[[listeners]]\naddr = \"127.0.0.1:0\"").unwrap();
            if listener.proxy_protocol {
                writeln!(out, "proxy_protocol = true").unwrap();
            }
            if !listener.proxy_protocol_from.is_empty() {
                writeln!(
                    out,
                    "proxy_protocol_from = {:?}",
                    listener.proxy_protocol_from
                )
                .unwrap();
            }
            if let Some(route) = &listener.no_sni_route {
                writeln!(out, "no_sni_route = {route:?}").unwrap();
            }
            for line in &listener.settings {
                writeln!(out, "{line}").unwrap();
            }
            for route in &listener.routes {
                writeln!(out, "[[listeners.routes]]\nhostname = {:?}", route.hostname).unwrap();
                if route.members.is_empty() {
                    writeln!(out, "backend = {:?}", route.backend).unwrap();
                } else {
                    let members: Vec<String> = route
                        .members
                        .iter()
                        .map(|(a, w)| format!("{{ address = {a:?}, weight = {w} }}"))
                        .collect();
                    writeln!(out, "backends = [{}]", members.join(", ")).unwrap();
                }
                if let Some(balance) = route.balance {
                    writeln!(out, "balance = {balance:?}").unwrap();
                }
                if let Some(check) = &route.health_check {
                    writeln!(out, "health_check = {{ {check} }}").unwrap();
                }
                if let Some(mode) = route.mode {
                    writeln!(out, "mode = {mode:?}").unwrap();
                }
                if let Some((cert, key)) = &route.cert {
                    writeln!(out, "tls_cert = {cert:?}\ntls_key = {key:?}").unwrap();
                }
                if route.backend_tls {
                    writeln!(out, "backend_tls = true").unwrap();
                }
                if route.send_proxy {
                    writeln!(out, "send_proxy_protocol = true").unwrap();
                }
                if let Some(protocol) = route.backend_protocol {
                    writeln!(out, "backend_protocol = \"{protocol}\"").unwrap();
                }
                if route.access_log {
                    writeln!(out, "access_log = true").unwrap();
                }
                for line in &route.settings {
                    writeln!(out, "{line}").unwrap();
                }
            }
        }
        out
    }

    /// Starts the daemon on this config, in the builder's temp dir.
    pub async fn start(self) -> Proxy {
        let body = self.toml();
        Proxy::start_full(self.dir, &body, &self.admin.join("\n")).await
    }
}

/// The TOML of an L7 route `hostname` to `backend`, with a certificate for `hostname` from
/// `pki` written into `dir`; for tests about the TOML text itself (and the console's tests),
/// others use [`ProxyBuilder`].
pub fn l7_route_toml(
    pki: &Pki,
    dir: &std::path::Path,
    hostname: &str,
    backend: SocketAddr,
) -> String {
    let (cert, key) = pki.write_pem(dir, &[hostname]);
    format!(
        "[[listeners.routes]]\nhostname = {hostname:?}\nbackend = \"{backend}\"\nmode = \"l7\"\n\
         tls_cert = {cert:?}\ntls_key = {key:?}\n"
    )
}

/// A TLS client stream over a recorded TCP stream.
pub type Client = tokio_rustls::client::TlsStream<Recorded<TcpStream>>;

/// Connects to `addr` and completes a TLS handshake for `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<Client> {
    tls_connect_chunked(addr, sni, config, None).await
}

/// The leaf certificate a new TLS handshake with `addr` for `sni` is served (DER).
pub async fn served_leaf(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<Vec<u8>> {
    let client = tls_connect(addr, sni, config).await?;
    let leaf = client
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| io::Error::other("no peer certificate"))?;
    Ok(leaf.to_vec())
}

/// The DER of the first certificate in a PEM file.
pub fn pem_leaf(path: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .expect("no certificate in the file")
        .unwrap()
        .to_vec()
}

/// Connects to `addr`, writes `preamble` (a PROXY header, say), then does TLS for `sni`.
/// Returns the stream and the client's own TCP address.
pub async fn tls_connect_after(
    addr: SocketAddr,
    preamble: &[u8],
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<Client> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(preamble).await?;
    let name = ServerName::try_from(sni.to_owned()).map_err(io::Error::other)?;
    TlsConnector::from(config)
        .connect(name, Recorded::new(tcp))
        .await
}

/// Connects to `addr` from the local address `source` (port any): a client of its own, as
/// per-client limits see it (`127.0.0.x` are all loopback addresses on Linux).
pub async fn tcp_connect_from(source: std::net::IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = match source {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Like `tls_connect_after`, from the local address `source` (see [`tcp_connect_from`]).
pub async fn tls_connect_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    preamble: &[u8],
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<Client> {
    let mut tcp = tcp_connect_from(source, addr).await?;
    tcp.write_all(preamble).await?;
    let name = ServerName::try_from(sni.to_owned()).map_err(io::Error::other)?;
    TlsConnector::from(config)
        .connect(name, Recorded::new(tcp))
        .await
}

/// The client's own TCP address on a TLS client stream.
pub fn client_addr(client: &Client) -> SocketAddr {
    client.get_ref().0.inner.local_addr().unwrap()
}

/// Like `tls_connect`, writing at most `chunk` bytes per TCP write.
pub async fn tls_connect_chunked(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
    chunk: Option<usize>,
) -> io::Result<Client> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut recorded = Recorded::new(tcp);
    if let Some(chunk) = chunk {
        recorded = recorded.chunked(chunk);
    }
    let name = ServerName::try_from(sni.to_owned()).map_err(io::Error::other)?;
    TlsConnector::from(config).connect(name, recorded).await
}

/// Writes `payload`, shuts down the write half, and reads to EOF.
pub async fn send_and_finish(client: &mut Client, payload: &[u8]) -> io::Result<Vec<u8>> {
    client.write_all(payload).await?;
    client.shutdown().await?;
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await?;
    Ok(answer)
}

/// Reads from a raw TCP stream until it ends; returns the error kind if it ended with one.
pub async fn read_until_closed(stream: &mut TcpStream) -> Result<Vec<u8>, io::ErrorKind> {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.map_err(|e| e.kind())?;
    Ok(out)
}

/// Captures the log lines (`mc_proxy*`, debug and above) of the current thread until the
/// guard drops.
///
/// The tests of one binary run in parallel on threads of their own, and a `#[tokio::test]`
/// (current-thread) runtime runs every task it spawns, the daemon's included, on the test's
/// thread; lines are kept per thread (see `init_tracing`), so a test sees its own lines and no
/// other test's. A multi-thread runtime would run tasks on threads this capture does not see,
/// so this refuses to start on one.
pub fn capture_logs() -> (CaptureGuard, Tape) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        assert_eq!(
            handle.runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread,
            "capture_logs sees the test's thread only: use a current-thread runtime"
        );
    }
    init_tracing();
    let tape = Tape::default();
    let previous = CAPTURE.with(|c| c.borrow_mut().replace(Arc::clone(&tape)));
    (CaptureGuard { previous }, tape)
}

/// Waits (up to 10 s) for `needle` to appear in the captured log: connection log lines are
/// written when the proxy's task ends, which can be just after the client saw EOF.
pub async fn wait_for_log(tape: &Tape, needle: &str) -> bool {
    for _ in 0..1000 {
        if log_text(tape).contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The captured log as text.
pub fn log_text(tape: &Tape) -> String {
    String::from_utf8_lossy(&tape.lock().unwrap()).into_owned()
}

/// Asserts that the proxy reset a raw connection (RST, not an orderly close) within 10 s.
pub async fn assert_reset(stream: &mut TcpStream) {
    let res = tokio::time::timeout(Duration::from_secs(10), read_until_closed(stream))
        .await
        .expect("proxy neither answered nor closed");
    assert_eq!(res, Err(io::ErrorKind::ConnectionReset), "expected a reset");
}

/// A backend that refuses every connection: a socket bound to 127.0.0.1 port 0 that never
/// listens. The port stays taken for as long as this lives, so nothing else can start
/// listening on it by chance, and a connect to `addr` is refused (RST) at once.
pub struct DeadBackend {
    socket: socket2::Socket,
    pub addr: SocketAddr,
}

impl Default for DeadBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl DeadBackend {
    pub fn new() -> DeadBackend {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        DeadBackend { socket, addr }
    }

    /// Brings the backend up on the same address: the socket starts listening (see
    /// `H2Options::listener`).
    pub fn listen(self) -> std::net::TcpListener {
        self.socket.listen(128).unwrap();
        self.socket.into()
    }
}

/// A port number reserved for a process that must be told a number (HAProxy's `bind`): a
/// socket bound with `SO_REUSEPORT` that never listens. A process of the same user that also
/// sets `SO_REUSEPORT` (HAProxy does by default) can bind the port beside it; any other
/// cannot, so the port cannot be taken between choosing it and using it. Connections only go
/// to listening sockets, so holding it changes nothing for the process that serves there.
pub struct ReservedPort {
    _socket: socket2::Socket,
    pub port: u16,
}

impl Default for ReservedPort {
    fn default() -> Self {
        Self::new()
    }
}

impl ReservedPort {
    pub fn new() -> ReservedPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let port = socket.local_addr().unwrap().as_socket().unwrap().port();
        ReservedPort {
            _socket: socket,
            port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One callsite, reached from several threads.
    fn emit(line: &str) {
        tracing::debug!(target: "mc_proxy::fixture_check", "{line}");
    }

    #[test]
    fn capture_logs_keeps_each_threads_lines_even_for_a_callsite_first_hit_elsewhere() {
        init_tracing();
        // First reached on a thread that does not capture: its interest must not be
        // cached as "never" for the threads that do.
        std::thread::spawn(|| emit("uncaptured")).join().unwrap();
        let (_guard, mine) = capture_logs();
        let theirs = std::thread::spawn(|| {
            let (_guard, theirs) = capture_logs();
            emit("their line");
            log_text(&theirs)
        })
        .join()
        .unwrap();
        std::thread::spawn(|| emit("not captured either"))
            .join()
            .unwrap();
        emit("my line");
        let mine = log_text(&mine);
        assert!(mine.contains("my line"), "{mine}");
        assert!(
            !mine.contains("their line") && !mine.contains("captured"),
            "{mine}"
        );
        assert!(
            theirs.contains("their line") && !theirs.contains("my line"),
            "{theirs}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    #[should_panic(expected = "current-thread runtime")]
    async fn capture_logs_refuses_a_multi_thread_runtime() {
        let _ = capture_logs();
    }
}
