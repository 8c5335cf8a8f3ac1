//! `mc-bench`: the load generator and the backends of `bench/run.sh`, which compares mc-proxy
//! with HAProxy on loopback (see docs/BENCHMARKS.md).
//!
//! Backends (`tls-backend`, `raw-backend`, `h2c-backend`, `tls-http-backend`, `ws-backend`,
//! `grpc-backend`) serve until `--max-secs` (default 900) so that a crashed script never
//! leaves them behind for long. Load subcommands print
//! one `RESULT key=value ...` line for the script; every loop in them is bounded by a count
//! or a deadline, and every network wait by a timeout.
//!
//! I/O: TCP on the given addresses, files under `certs DIR`, stdout.

use std::convert::Infallible;
use std::error::Error;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mc_proxy_tests::Pki;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Time allowed for one connection setup, one round trip or one request.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

const USAGE: &str = "\
usage: mc-bench SUBCOMMAND [--key value ...]
  certs DIR                    CA (ca.pem) and leaves a.test, web.test, tlsbe.test (also
                               tlsbe1.test), ws.test, grpc.test (NAME.pem, NAME.key,
                               NAME.haproxy.pem = cert + key for HAProxy)
  tls-backend --addr A --cert P --key P [--max-secs S]   TLS echo server
  raw-backend --addr A [--max-secs S]                     sink for `throughput`
  h2c-backend --addr A [--max-secs S]                     HTTP/2 cleartext, answers 200 \"ok\"
  tls-http-backend --addr A --cert P --key P [--max-secs S]  HTTP/2 or HTTP/1.1 over TLS
                               (ALPN h2, http/1.1), answers 200 \"ok\"
  ws-backend --addr A [--max-secs S]      WebSocket echo over cleartext HTTP/1.1
  grpc-backend --addr A [--max-secs S]    gRPC `echo.Echo` (tests/proto/echo.proto) on h2c;
                               `Bidi` echoes each message of a stream
  connrate --target A --sni H --ca P --concurrency C --seconds T [--mode echo|handshake]
                               [--groups default|pq]  (handshake: TLS with the proxy itself,
                               close_notify, read to EOF; pq: offer only X25519MLKEM768)
  throughput --target A --sni H --bytes N
  h2load-like --target A --sni H --ca P --concurrency C --streams S --seconds T [--http 1]
  ws --target A --sni H --ca P --concurrency C --seconds T [--size N]
                               C WebSockets (TLS, ALPN http/1.1, upgrade), each a loop: one
                               binary message of N bytes (64), wait for its echo
  grpc-stream --target A --sni H --ca P --concurrency C --streams S --seconds T [--size N]
                               C connections (TLS, ALPN h2) with S `Bidi` streams each, each
                               stream a loop: one message of N payload bytes (64), its echo
  idle --target A --sni H --ca P --count N --hold-secs S [--mode l4|tls|h2]
  routes --socket P --listener L --routes N --changes M [--batch B] [--backend A] [--fill api|none]
                               [--rate R]  (R changes a second; default back to back)
                               fills L with N L4 routes (half exact, half wildcard; `none`: they
                               are there already, as `route_name(i)`), then times M single
                               changes through the admin API (add, update, remove in turn)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let opts = match Opts::parse(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mc-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let res = runtime.block_on(async {
        match cmd.as_str() {
            "certs" => certs(&opts),
            "tls-backend" => serve_for(&opts, tls_backend(&opts)).await,
            "raw-backend" => serve_for(&opts, raw_backend(&opts)).await,
            "h2c-backend" => serve_for(&opts, h2c_backend(&opts)).await,
            "tls-http-backend" => serve_for(&opts, tls_http_backend(&opts)).await,
            "ws-backend" => serve_for(&opts, ws_backend(&opts)).await,
            "grpc-backend" => serve_for(&opts, grpc_backend(&opts)).await,
            "connrate" => connrate(&opts).await,
            "throughput" => throughput(&opts).await,
            "h2load-like" => h2load_like(&opts).await,
            "ws" => ws(&opts).await,
            "grpc-stream" => grpc_stream(&opts).await,
            "idle" => idle(&opts).await,
            "routes" => routes(&opts).await,
            other => Err(format!("unknown subcommand {other:?}").into()),
        }
    });
    // Backend connection tasks may still be running; they are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mc-bench {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--key value` pairs and positional arguments.
struct Opts {
    positional: Vec<String>,
    named: Vec<(String, String)>,
}

impl Opts {
    fn parse(args: &[String]) -> Res<Opts> {
        let mut opts = Opts {
            positional: Vec::new(),
            named: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.strip_prefix("--") {
                Some(key) => {
                    let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
                    opts.named.push((key.to_owned(), value.clone()));
                }
                None => opts.positional.push(arg.clone()),
            }
        }
        Ok(opts)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.named
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn req(&self, key: &str) -> Res<&str> {
        self.get(key)
            .ok_or_else(|| format!("--{key} is required").into())
    }

    fn num<T: std::str::FromStr>(&self, key: &str, default: Option<T>) -> Res<T> {
        match (self.get(key), default) {
            (Some(v), _) => v
                .parse()
                .map_err(|_| format!("--{key}: not a number: {v:?}").into()),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("--{key} is required").into()),
        }
    }

    fn addr(&self, key: &str) -> Res<SocketAddr> {
        let v = self.req(key)?;
        v.parse()
            .map_err(|_| format!("--{key}: not IP:port: {v:?}").into())
    }

    fn sni(&self) -> Res<ServerName<'static>> {
        Ok(ServerName::try_from(self.req("sni")?.to_owned())?)
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates and TLS configs

fn certs(opts: &Opts) -> Res<()> {
    let dir = PathBuf::from(opts.positional.first().ok_or("certs needs a DIR")?);
    std::fs::create_dir_all(&dir)?;
    let pki = Pki::new();
    std::fs::write(dir.join("ca.pem"), pki.ca_pem())?;
    for names in [
        &["a.test"][..],
        &["web.test"],
        &["tlsbe.test", "tlsbe1.test"],
        &["ws.test"],
        &["grpc.test"],
    ] {
        let name = names[0];
        let (cert, key) = pki.write_pem(&dir, names);
        let mut both = std::fs::read(&cert)?;
        both.extend(std::fs::read(&key)?);
        std::fs::write(dir.join(format!("{name}.haproxy.pem")), both)?;
    }
    println!("certificates written to {}", dir.display());
    Ok(())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client config trusting only the CA in `ca` (if any), offering `alpn`, with session
/// resumption off so that every connection is a full handshake.
fn client_config(ca: Option<&str>, alpn: &[&[u8]]) -> Res<Arc<rustls::ClientConfig>> {
    client_config_with(provider(), ca, alpn)
}

/// [`client_config`] with another provider (other key exchange groups).
fn client_config_with(
    provider: Arc<rustls::crypto::CryptoProvider>,
    ca: Option<&str>,
    alpn: &[&[u8]],
) -> Res<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for cert in CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn server_config(cert: &Path, key: &Path) -> Res<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------------------------
// Backends

/// Runs a backend until it fails or `--max-secs` (default 900) pass.
async fn serve_for(opts: &Opts, serve: impl Future<Output = Res<()>>) -> Res<()> {
    let max = Duration::from_secs(opts.num("max-secs", Some(900))?);
    match tokio::time::timeout(max, serve).await {
        Ok(res) => res,
        Err(_) => Ok(()),
    }
}

/// Accepts until the listener fails; errors such as EMFILE back off instead of ending it.
async fn accept_each<F, Fut>(addr: SocketAddr, mut handle: F) -> Res<()>
where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tcp.set_nodelay(true)?;
                tokio::spawn(handle(tcp));
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// TLS echo: every byte read is written back; on EOF, close_notify and close.
async fn tls_backend(opts: &Opts) -> Res<()> {
    let config = server_config(Path::new(opts.req("cert")?), Path::new(opts.req("key")?))?;
    let acceptor = TlsAcceptor::from(config);
    accept_each(opts.addr("addr")?, move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(Ok(tls)) = tokio::time::timeout(OP_TIMEOUT, acceptor.accept(tcp)).await else {
                return;
            };
            echo(tls).await;
        }
    })
    .await
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// The `throughput` peer: skips the TLS record holding the ClientHello, reads an 8-byte
/// big-endian length N, reads N bytes, answers N (8 bytes) and waits for the client to close.
async fn raw_backend(opts: &Opts) -> Res<()> {
    accept_each(opts.addr("addr")?, |mut tcp| async move {
        if let Err(e) = sink(&mut tcp).await {
            eprintln!("raw-backend: {e}");
        }
    })
    .await
}

async fn sink(tcp: &mut TcpStream) -> std::io::Result<()> {
    let mut head = [0u8; 5];
    tcp.read_exact(&mut head).await?;
    if head[0] != 0x16 {
        return Err(std::io::Error::other("not a TLS handshake record"));
    }
    let mut hello = vec![0u8; usize::from(u16::from_be_bytes([head[3], head[4]]))];
    tcp.read_exact(&mut hello).await?;
    let mut len = [0u8; 8];
    tcp.read_exact(&mut len).await?;
    let total = u64::from_be_bytes(len);
    let mut left = total;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = tcp.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "EOF after {} of {total} bytes",
                total - left
            )));
        }
        left -= n as u64;
    }
    tcp.write_all(&total.to_be_bytes()).await?;
    let _ = tokio::time::timeout(OP_TIMEOUT, tcp.read(&mut buf)).await;
    Ok(())
}

/// HTTP/2 with prior knowledge; every request gets `200 ok`.
async fn h2c_backend(opts: &Opts) -> Res<()> {
    accept_each(opts.addr("addr")?, |tcp| async move {
        let service = service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(1000)
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    })
    .await
}

/// The backend of the re-encryption figures: HTTP/2 or HTTP/1.1 (as ALPN picks) over TLS,
/// answering every request 200 "ok".
async fn tls_http_backend(opts: &Opts) -> Res<()> {
    let mut config = Arc::unwrap_or_clone(server_config(
        Path::new(opts.req("cert")?),
        Path::new(opts.req("key")?),
    )?);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    accept_each(opts.addr("addr")?, move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(Ok(tls)) = tokio::time::timeout(OP_TIMEOUT, acceptor.accept(tcp)).await else {
                return;
            };
            let service = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(1000);
            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
        }
    })
    .await
}

/// WebSocket echo over cleartext HTTP/1.1: tungstenite's server handshake, then every text or
/// binary message sent back (the test fixtures' echo loop, `mc_proxy_tests::ws::echo`).
async fn ws_backend(opts: &Opts) -> Res<()> {
    accept_each(opts.addr("addr")?, |tcp| async move {
        let handshake = tokio_tungstenite::accept_async(tcp);
        let Ok(Ok(ws)) = tokio::time::timeout(OP_TIMEOUT, handshake).await else {
            return;
        };
        mc_proxy_tests::ws::echo(ws, Arc::default()).await;
    })
    .await
}

/// The gRPC test service (`echo.Echo`, tests/proto/echo.proto) on h2c, 1000 streams per
/// connection allowed (as `h2c-backend`).
async fn grpc_backend(opts: &Opts) -> Res<()> {
    let listener = TcpListener::bind(opts.addr("addr")?).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    mc_proxy_tests::grpc::serve(listener, Some(1000)).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Load

/// One TLS connection through the proxy: connect, full handshake, a 32-byte round trip.
async fn tls_round_trip(
    target: SocketAddr,
    sni: ServerName<'static>,
    connector: &TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(sni, tcp).await?;
    let ping = [b'p'; 32];
    tls.write_all(&ping).await?;
    let mut pong = [0u8; 32];
    tls.read_exact(&mut pong).await?;
    if pong != ping {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(tls)
}

/// A terminating proxy's handshake: connect, handshake, close_notify, then read to EOF, so
/// that the proxy has done all its work for the connection (its Finished check, its session
/// tickets, its close_notify) before the next one starts.
async fn tls_handshake_only(
    target: SocketAddr,
    sni: ServerName<'static>,
    connector: &TlsConnector,
) -> std::io::Result<()> {
    let tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(sni, tcp).await?;
    tls.shutdown().await?;
    let mut sink = [0u8; 4096];
    while tls.read(&mut sink).await? > 0 {}
    Ok(())
}

/// New connections per second: `--concurrency` clients, each connecting, handshaking,
/// doing one round trip and closing (close_notify, FIN) in a loop for `--seconds`. With
/// `--mode handshake` the TLS is the proxy's own (an L7 route): handshake and close only.
/// `--groups pq` offers only the post-quantum hybrid X25519MLKEM768 (as the first and only
/// key share, like Chrome's first choice); the default offers rustls's defaults (X25519).
async fn connrate(opts: &Opts) -> Res<()> {
    let target = opts.addr("target")?;
    let sni = opts.sni()?;
    let handshake_only = match opts.get("mode").unwrap_or("echo") {
        "echo" => false,
        "handshake" => true,
        other => return Err(format!("--mode: echo or handshake, not {other:?}").into()),
    };
    let provider = match opts.get("groups").unwrap_or("default") {
        "default" => provider(),
        "pq" => {
            let mut pq = (*provider()).clone();
            pq.kx_groups
                .retain(|g| g.name() == rustls::NamedGroup::X25519MLKEM768);
            Arc::new(pq)
        }
        other => return Err(format!("--groups: default or pq, not {other:?}").into()),
    };
    let connector = TlsConnector::from(client_config_with(provider, Some(opts.req("ca")?), &[])?);
    let concurrency: usize = opts.num("concurrency", None)?;
    let seconds: f64 = opts.num("seconds", None)?;
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (sni, connector, ok, errors) = (
            sni.clone(),
            connector.clone(),
            Arc::clone(&ok),
            Arc::clone(&errors),
        );
        tasks.spawn(async move {
            let mut first_error = None;
            while Instant::now() < deadline {
                let conn = async {
                    if handshake_only {
                        return tls_handshake_only(target, sni.clone(), &connector).await;
                    }
                    let mut tls = tls_round_trip(target, sni.clone(), &connector).await?;
                    tls.shutdown().await
                };
                match tokio::time::timeout(OP_TIMEOUT, conn).await {
                    Ok(Ok(())) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    res => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert_with(|| match res {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_owned(),
                        });
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            first_error
        });
    }
    let mut first_error = None;
    while let Some(res) = tasks.join_next().await {
        if let Some(e) = res? {
            first_error.get_or_insert(e);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let (ok, errors) = (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    if let Some(e) = first_error {
        eprintln!("connrate: first error: {e}");
    }
    println!(
        "RESULT conn_per_sec={:.0} conns={ok} errors={errors} secs={secs:.2}",
        ok as f64 / secs
    );
    Ok(())
}

/// The first TLS record a rustls client sends for `sni`: a real ClientHello.
fn client_hello(sni: ServerName<'static>) -> Res<Vec<u8>> {
    let mut conn = rustls::ClientConnection::new(client_config(None, &[])?, sni)?;
    let mut hello = Vec::new();
    conn.write_tls(&mut hello)?;
    Ok(hello)
}

/// One long upload through one connection: a real ClientHello (so that both proxies route
/// it by SNI), then `--bytes` of payload to `raw-backend`, timed until its acknowledgement.
async fn throughput(opts: &Opts) -> Res<()> {
    let target = opts.addr("target")?;
    let total: u64 = opts.num("bytes", None)?;
    let hello = client_hello(opts.sni()?)?;
    let transfer = async {
        let mut tcp = TcpStream::connect(target).await?;
        tcp.set_nodelay(true)?;
        let start = Instant::now();
        tcp.write_all(&hello).await?;
        tcp.write_all(&total.to_be_bytes()).await?;
        let buf = vec![0x5au8; 256 * 1024];
        let mut left = total;
        while left > 0 {
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            tcp.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        let mut ack = [0u8; 8];
        tcp.read_exact(&mut ack).await?;
        let secs = start.elapsed().as_secs_f64();
        if u64::from_be_bytes(ack) != total {
            return Err(std::io::Error::other(
                "the backend acknowledged a different length",
            ));
        }
        Ok::<_, std::io::Error>(secs)
    };
    let secs = tokio::time::timeout(Duration::from_secs(300), transfer)
        .await
        .map_err(|_| "transfer took more than 300 s")??;
    println!(
        "RESULT mb_per_sec={:.0} bytes={total} secs={secs:.3}",
        total as f64 / secs / 1e6
    );
    Ok(())
}

/// One client connection's request sender, HTTP/2 (shared by its streams) or HTTP/1.1.
#[derive(Clone)]
enum Sender {
    H1(Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    /// TLS to `target`, ALPN `h2` or `http/1.1` (whichever `h1` says), and the HTTP handshake.
    /// The connection's driver is a task of its own; it ends once every clone of the sender
    /// is dropped.
    async fn connect(
        target: SocketAddr,
        sni: ServerName<'static>,
        connector: &TlsConnector,
        h1: bool,
    ) -> Res<Sender> {
        let tcp = TcpStream::connect(target).await?;
        tcp.set_nodelay(true)?;
        let tls = connector.connect(sni, tcp).await?;
        let want: &[u8] = if h1 { b"http/1.1" } else { b"h2" };
        if tls.get_ref().1.alpn_protocol() != Some(want) {
            return Err(format!(
                "the proxy did not agree to {}",
                String::from_utf8_lossy(want)
            )
            .into());
        }
        let io = TokioIo::new(tls);
        if h1 {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H1(Arc::new(tokio::sync::Mutex::new(sender))))
        } else {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H2(sender))
        }
    }

    /// GET / (with `Host` on HTTP/1.1, `:authority` on HTTP/2), the body read to its end.
    async fn get(&mut self, host: &str) -> Result<hyper::StatusCode, hyper::Error> {
        let resp = match self {
            Sender::H1(sender) => {
                let req = Request::get("/")
                    .header(hyper::header::HOST, host)
                    .body(Empty::<Bytes>::new())
                    .expect("a valid request");
                let mut sender = sender.lock().await;
                sender.ready().await?;
                sender.send_request(req).await?
            }
            Sender::H2(sender) => {
                let req = Request::get(format!("https://{host}/"))
                    .body(Empty::<Bytes>::new())
                    .expect("a valid request");
                sender.send_request(req).await?
            }
        };
        let status = resp.status();
        resp.into_body().collect().await?;
        Ok(status)
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(sender) => sender.try_lock().is_ok_and(|s| s.is_closed()),
            Sender::H2(sender) => sender.is_closed(),
        }
    }
}

/// HTTP over TLS: `--concurrency` connections with `--streams` request loops each (HTTP/2; with
/// `--http 1`, HTTP/1.1 keep-alive and one loop per connection), GET / until `--seconds` pass;
/// requests per second and latency percentiles of the 200s.
async fn h2load_like(opts: &Opts) -> Res<()> {
    let target = opts.addr("target")?;
    let host = opts.req("sni")?.to_owned();
    let sni = opts.sni()?;
    let h1 = opts.get("http") == Some("1");
    let alpn: &[&[u8]] = if h1 { &[b"http/1.1"] } else { &[b"h2"] };
    let connector = TlsConnector::from(client_config(Some(opts.req("ca")?), alpn)?);
    let concurrency: usize = opts.num("concurrency", None)?;
    let streams: usize = if h1 { 1 } else { opts.num("streams", None)? };
    let seconds: f64 = opts.num("seconds", None)?;

    let mut senders = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let setup = Sender::connect(target, sni.clone(), &connector, h1);
        let sender = tokio::time::timeout(OP_TIMEOUT, setup)
            .await
            .map_err(|_| "connection setup timed out")??;
        senders.push(sender);
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut loops = JoinSet::new();
    for sender in &senders {
        for _ in 0..streams {
            let (mut sender, host) = (sender.clone(), host.clone());
            loops.spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut first_error = None;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match tokio::time::timeout(OP_TIMEOUT, sender.get(&host)).await {
                        Ok(Ok(status)) if status == hyper::StatusCode::OK => {
                            latencies.push(t0.elapsed());
                        }
                        res => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{res:?}"));
                            if sender.is_closed() {
                                break;
                            }
                        }
                    }
                }
                (latencies, errors, first_error)
            });
        }
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(res) = loops.join_next().await {
        let (l, e, f) = res?;
        latencies.extend(l);
        errors += e;
        if let Some(f) = f {
            first_error.get_or_insert(f);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    drop(senders);
    if let Some(e) = first_error {
        eprintln!("h2load-like: first error: {e}");
    }
    if latencies.is_empty() {
        return Err(format!("no request succeeded ({errors} errors)").into());
    }
    print_latencies("rps", "requests", latencies, errors, secs);
    Ok(())
}

/// Prints the `RESULT` line of a load that timed each round trip: `RATE` per second over
/// `secs`, latency p50/p99, the `COUNT` done, the errors.
fn print_latencies(rate: &str, count: &str, mut latencies: Vec<Duration>, errors: u64, secs: f64) {
    latencies.sort_unstable();
    println!(
        "RESULT {rate}={:.0} p50_ms={:.3} p99_ms={:.3} {count}={} errors={errors} secs={secs:.2}",
        latencies.len() as f64 / secs,
        pct_ms(&latencies, 0.50),
        pct_ms(&latencies, 0.99),
        latencies.len()
    );
}

/// The `p` quantile of `sorted` (not empty) in milliseconds.
fn pct_ms(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// What one echo loop of `ws` or `grpc-stream` measured: the latency of each round trip, and
/// the failure that ended it early, if any (a broken stream is not reopened).
#[derive(Default)]
struct EchoLoop {
    latencies: Vec<Duration>,
    error: Option<String>,
}

impl EchoLoop {
    /// Records a round trip that started at `t0` (bounded by [`OP_TIMEOUT`]); false when it
    /// failed and the loop ends.
    fn record(&mut self, t0: Instant, res: Result<Res<()>, tokio::time::error::Elapsed>) -> bool {
        match res {
            Ok(Ok(())) => {
                self.latencies.push(t0.elapsed());
                true
            }
            Ok(Err(e)) => {
                self.error = Some(e.to_string());
                false
            }
            Err(_) => {
                self.error = Some("timed out".to_owned());
                false
            }
        }
    }
}

/// Joins the echo loops and prints the `RESULT` line of `ws` and `grpc-stream`: messages (round
/// trips) per second over the run, latency p50/p99, loops ended by an error.
async fn report_echo_loops(name: &str, mut loops: JoinSet<EchoLoop>, start: Instant) -> Res<()> {
    let (mut latencies, mut errors, mut first_error) = (Vec::new(), 0u64, None);
    while let Some(res) = loops.join_next().await {
        let l = res?;
        latencies.extend(l.latencies);
        if let Some(e) = l.error {
            errors += 1;
            first_error.get_or_insert(e);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        eprintln!("{name}: first error: {e}");
    }
    if latencies.is_empty() {
        return Err(format!("no message came back ({errors} loops failed)").into());
    }
    print_latencies("msgs_per_sec", "messages", latencies, errors, secs);
    Ok(())
}

type ClientWs = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// WebSocket messages through an L7 route: `--concurrency` TLS connections (ALPN http/1.1),
/// each upgraded (`GET wss://SNI/`), then a loop for `--seconds`: one binary message of
/// `--size` bytes (default 64), wait for its echo. Messages per second (a message and its
/// echo count once) and latency percentiles; each WebSocket is closed at the end.
async fn ws(opts: &Opts) -> Res<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let target = opts.addr("target")?;
    let host = opts.req("sni")?.to_owned();
    let sni = opts.sni()?;
    let connector = TlsConnector::from(client_config(Some(opts.req("ca")?), &[b"http/1.1"])?);
    let concurrency: usize = opts.num("concurrency", None)?;
    let seconds: f64 = opts.num("seconds", None)?;
    let size: usize = opts.num("size", Some(64))?;

    let mut sockets: Vec<ClientWs> = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let setup = async {
            let tcp = TcpStream::connect(target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(sni.clone(), tcp).await?;
            if tls.get_ref().1.alpn_protocol() != Some(b"http/1.1") {
                return Err::<_, Box<dyn Error + Send + Sync>>(
                    "the proxy did not agree to http/1.1".into(),
                );
            }
            let req = format!("wss://{host}/").into_client_request()?;
            let (ws, _) = tokio_tungstenite::client_async(req, tls).await?;
            Ok(ws)
        };
        let ws = tokio::time::timeout(OP_TIMEOUT, setup)
            .await
            .map_err(|_| "WebSocket setup timed out")??;
        sockets.push(ws);
    }

    let payload = Bytes::from(vec![b'm'; size]);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut loops = JoinSet::new();
    for mut ws in sockets {
        let payload = payload.clone();
        loops.spawn(async move {
            let mut out = EchoLoop::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let round_trip = async {
                    ws.send(Message::Binary(payload.clone())).await?;
                    // Control frames (none expected) are skipped, within the round trip's
                    // timeout.
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Binary(echo))) if echo.len() == size => {
                                return Ok(());
                            }
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                            Some(Ok(other)) => {
                                return Err(format!("unexpected message {other:?}").into());
                            }
                            Some(Err(e)) => return Err(e.into()),
                            None => return Err("the WebSocket ended".into()),
                        }
                    }
                };
                if !out.record(t0, tokio::time::timeout(OP_TIMEOUT, round_trip).await) {
                    break;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            out
        });
    }
    report_echo_loops("ws", loops, start).await
}

/// TCP + TLS (ALPN h2) to the proxy for one SNI, as tonic's connector.
#[derive(Clone)]
struct GrpcConnector {
    target: SocketAddr,
    sni: ServerName<'static>,
    tls: TlsConnector,
}

type GrpcIo = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower_service::Service<hyper::Uri> for GrpcConnector {
    type Response = GrpcIo;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = std::io::Result<GrpcIo>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(this.target).await?;
            tcp.set_nodelay(true)?;
            let tls = this.tls.connect(this.sni, tcp).await?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(std::io::Error::other("the proxy did not agree to h2"));
            }
            Ok(TokioIo::new(tls))
        })
    }
}

/// gRPC streaming through an L7 route: `--concurrency` connections (TLS, ALPN h2, a tonic
/// channel each) with `--streams` `echo.Echo/Bidi` calls each, held open; each stream a loop for
/// `--seconds`: one message with `--size` payload bytes (default 64), wait for its echo.
/// Messages per second (a message and its echo count once) and latency percentiles; each
/// stream is ended by the client at the end.
async fn grpc_stream(opts: &Opts) -> Res<()> {
    use mc_proxy_tests::grpc::pb::Msg;
    use mc_proxy_tests::grpc::pb::echo_client::EchoClient;
    let target = opts.addr("target")?;
    let host = opts.req("sni")?.to_owned();
    let connector = GrpcConnector {
        target,
        sni: opts.sni()?,
        tls: TlsConnector::from(client_config(Some(opts.req("ca")?), &[b"h2"])?),
    };
    let concurrency: usize = opts.num("concurrency", None)?;
    let streams: usize = opts.num("streams", None)?;
    let seconds: f64 = opts.num("seconds", None)?;
    let size: usize = opts.num("size", Some(64))?;

    // `http://` with a TLS connector: see `mc_proxy_tests::grpc::echo_client`.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}"))?;
    let mut calls = Vec::with_capacity(concurrency * streams);
    for _ in 0..concurrency {
        let channel = tokio::time::timeout(
            OP_TIMEOUT,
            endpoint.connect_with_connector(connector.clone()),
        )
        .await
        .map_err(|_| "connection setup timed out")??;
        let mut client = EchoClient::new(channel);
        for _ in 0..streams {
            let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
            let call = client.bidi(tokio_stream::wrappers::ReceiverStream::new(rx));
            let resp = tokio::time::timeout(OP_TIMEOUT, call)
                .await
                .map_err(|_| "opening a stream timed out")??;
            calls.push((tx, resp.into_inner()));
        }
    }

    let msg = Msg {
        payload: vec![b'm'; size],
        ..Msg::default()
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut loops = JoinSet::new();
    for (tx, mut echoes) in calls {
        let msg = msg.clone();
        loops.spawn(async move {
            let mut out = EchoLoop::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let round_trip = async {
                    tx.send(msg.clone())
                        .await
                        .map_err(|_| "the request stream ended")?;
                    match echoes.message().await? {
                        Some(echo) if echo.payload.len() == size => Ok(()),
                        Some(_) => Err("echo mismatch".into()),
                        None => Err("the response stream ended".into()),
                    }
                };
                if !out.record(t0, tokio::time::timeout(OP_TIMEOUT, round_trip).await) {
                    break;
                }
            }
            // The end of the request stream ends the call; its status read for up to 1 s.
            drop(tx);
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Ok(Some(_)) = echoes.message().await {}
            })
            .await;
            out
        });
    }
    report_echo_loops("grpc-stream", loops, start).await
}

/// One idle connection of `idle`, kept open until dropped.
enum Held {
    /// TLS end to end with the echo backend (L4), or with the proxy (L7, nothing sent).
    #[allow(dead_code)] // held for its drop
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// HTTP/2 through the proxy after one request.
    #[allow(dead_code)] // held for its drop
    Http(Sender),
}

/// Opens `--count` connections (64 setups at a time) and prints `ready N` once all are up,
/// holds them idle for `--hold-secs`, closes them, prints `closed`. `--mode l4` (default): TLS
/// through an L4 route to the echo backend and one round trip; `--mode tls`: a TLS handshake
/// with the proxy (ALPN h2) and nothing more; `--mode h2`: that, then HTTP/2 and one GET /.
async fn idle(opts: &Opts) -> Res<()> {
    let target = opts.addr("target")?;
    let sni = opts.sni()?;
    let host = opts.req("sni")?.to_owned();
    let mode = opts.get("mode").unwrap_or("l4").to_owned();
    if !["l4", "tls", "h2"].contains(&mode.as_str()) {
        return Err(format!("--mode {mode:?}: l4, tls or h2").into());
    }
    let alpn: &[&[u8]] = if mode == "l4" { &[] } else { &[b"h2"] };
    let connector = TlsConnector::from(client_config(Some(opts.req("ca")?), alpn)?);
    let count: usize = opts.num("count", None)?;
    let hold = Duration::from_secs_f64(opts.num("hold-secs", None)?);
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut setups = JoinSet::new();
    for _ in 0..count {
        let (sni, connector, gate, mode, host) = (
            sni.clone(),
            connector.clone(),
            Arc::clone(&gate),
            mode.clone(),
            host.clone(),
        );
        setups.spawn(async move {
            let _permit = gate
                .acquire_owned()
                .await
                .expect("the gate is never closed");
            let setup = async {
                match mode.as_str() {
                    "l4" => Ok(Held::Tls(Box::new(
                        tls_round_trip(target, sni, &connector).await?,
                    ))),
                    "tls" => {
                        let tcp = TcpStream::connect(target).await?;
                        tcp.set_nodelay(true)?;
                        Ok(Held::Tls(Box::new(connector.connect(sni, tcp).await?)))
                    }
                    _ => {
                        let mut sender = Sender::connect(target, sni, &connector, false).await?;
                        let status = sender.get(&host).await?;
                        if status != hyper::StatusCode::OK {
                            return Err::<_, Box<dyn Error + Send + Sync>>(
                                format!("status {status}").into(),
                            );
                        }
                        Ok(Held::Http(sender))
                    }
                }
            };
            tokio::time::timeout(OP_TIMEOUT, setup).await
        });
    }
    let mut conns = Vec::with_capacity(count);
    let mut errors = 0;
    while let Some(res) = setups.join_next().await {
        match res? {
            Ok(Ok(held)) => conns.push(held),
            Ok(Err(e)) => {
                errors += 1;
                eprintln!("idle: {e}");
            }
            Err(_) => errors += 1,
        }
    }
    println!("ready {} errors {errors}", conns.len());
    std::io::stdout().flush()?;
    tokio::time::sleep(hold).await;
    drop(conns);
    println!("closed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Route changes

/// The `i`-th route of the fill: even ones exact (`r{i}.fill.test`), odd ones wildcards
/// (`*.r{i}.fill.test`), so that both lookup structures hold half the table.
fn route_name(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!("r{i}.fill.test")
    } else {
        format!("*.r{i}.fill.test")
    }
}

fn l4_route(hostname: String, backend: &str) -> mc_proxy_shared::Route {
    mc_proxy_shared::Route {
        hostname,
        backends: vec![mc_proxy_shared::RouteBackend::new(backend)],
        ..mc_proxy_shared::Route::default()
    }
}

/// What one admin change costs as the table grows: fills `--listener` with `--routes` L4
/// routes in change sets of `--batch` (default 1000; `--fill none` when they are already
/// there), then makes `--changes` single changes, one at a time through one client (no
/// process start in the figure): an add of a new route, an update of a filled route's backend
/// set, the removal of the route added, in turn. Prints the fill time and the median and p99
/// of each kind and of all.
async fn routes(opts: &Opts) -> Res<()> {
    use mc_proxy_shared::client::{AdminClient, SetChange};
    let socket = opts.req("socket")?;
    let listener = opts.req("listener")?.to_owned();
    let n: usize = opts.num("routes", None)?;
    let m: usize = opts.num("changes", None)?;
    let batch: usize = opts.num("batch", Some(1000))?;
    let backend = opts.get("backend").unwrap_or("127.0.0.1:9").to_owned();
    let mut client = AdminClient::connect(socket).await?;

    let fill_start = Instant::now();
    if opts.get("fill").unwrap_or("api") == "api" {
        let mut next = 0;
        while next < n {
            let end = (next + batch.max(1)).min(n);
            let changes = (next..end)
                .map(|i| SetChange::AddRoute {
                    listener: listener.clone(),
                    route: l4_route(route_name(i), &backend),
                })
                .collect();
            client.apply_changes(changes).await?;
            next = end;
        }
    }
    let fill_secs = fill_start.elapsed().as_secs_f64();
    let listed = client.list_routes(Some(&listener)).await?.len();
    if listed < n {
        return Err(format!("the listener has {listed} routes, {n} expected").into());
    }

    let kinds = ["add", "update", "remove"];
    let mut times: [Vec<Duration>; 3] = Default::default();
    // `--rate R`: a change every 1/R s (a fleet's stream) rather than back to back.
    let rate: f64 = opts.num("rate", Some(0.0))?;
    let mut pace = (rate > 0.0).then(|| {
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pace
    });
    for j in 0..m {
        if let Some(pace) = pace.as_mut() {
            pace.tick().await;
        }
        let kind = j % 3;
        // One added route per round of three: added, a filled route updated, removed.
        let added = format!("c{}.change.test", j / 3);
        let t0 = Instant::now();
        match kind {
            0 => {
                client
                    .add_route(&listener, l4_route(added, &backend))
                    .await?;
            }
            1 => {
                let filled = route_name((j / 3 * 7919) % n.max(1));
                let port = 10_000 + j % 50_000;
                let patch = mc_proxy_shared::RoutePatch {
                    backends: Some(vec![mc_proxy_shared::RouteBackend::new(format!(
                        "127.0.0.1:{port}"
                    ))]),
                    ..Default::default()
                };
                if n == 0 {
                    return Err("updates need at least one filled route".into());
                }
                client.update_route(&listener, &filled, patch).await?;
            }
            _ => client.remove_route(&listener, &added).await?,
        }
        times[kind].push(t0.elapsed());
    }
    let stats = |mut v: Vec<Duration>| -> (f64, f64) {
        if v.is_empty() {
            return (0.0, 0.0);
        }
        v.sort_unstable();
        let at = |p: f64| {
            let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
            v[i].as_secs_f64() * 1e3
        };
        (at(0.5), at(0.99))
    };
    let all: Vec<Duration> = times.iter().flatten().copied().collect();
    let mut line = format!("RESULT routes={n} changes={m} fill_secs={fill_secs:.2}");
    let (p50, p99) = stats(all);
    line.push_str(&format!(" all_p50_ms={p50:.3} all_p99_ms={p99:.3}"));
    for (kind, v) in kinds.iter().zip(times) {
        let (p50, p99) = stats(v);
        line.push_str(&format!(" {kind}_p50_ms={p50:.3} {kind}_p99_ms={p99:.3}"));
    }
    println!("{line}");
    Ok(())
}
