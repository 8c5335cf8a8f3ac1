//! HTTP fixtures for the L7 tests: an HTTP/2 echo backend (h2c or TLS, optionally behind a
//! PROXY header) that records what it saw, and HTTP/2 and HTTP/1.1 clients that reach the
//! proxy over TLS.
//!
//! The backend answers every request with its body echoed and `x-echo-method`,
//! `x-echo-path`, `x-echo-version` headers; `/sse` answers a text/event-stream that sends one
//! event, waits for `release`, sends a second one and ends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mc_proxy::io::Rewind;
use mc_proxy::proxyproto;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::{Pki, Tape, provider};

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target (`:path` plus query).
    pub path: String,
    /// `:authority` as received.
    pub authority: Option<String>,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

type EchoBody = BoxBody<Bytes, Infallible>;

/// An HTTP/2-only echo backend.
pub struct H2Backend {
    pub addr: SocketAddr,
    /// Every request received, in arrival order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// PROXY headers received (`proxied` backends), one per connection.
    pub headers: Arc<Mutex<Vec<proxyproto::Header>>>,
    /// Raw bytes of each connection after its PROXY header (h2c backends only).
    pub raw: Arc<Mutex<Vec<Tape>>>,
    /// Lets the `/sse` stream send its second event.
    pub release: Arc<Notify>,
    task: JoinHandle<()>,
}

/// How an [`H2Backend`] is reached.
#[derive(Default)]
pub struct H2Options<'a> {
    /// Serve TLS (ALPN h2) with a certificate for these names from this PKI.
    pub tls: Option<(&'a Pki, &'a [&'a str])>,
    /// Read a PROXY header first.
    pub proxied: bool,
    /// Bind this address instead of a fresh port (to bring a "down" backend up).
    pub addr: Option<SocketAddr>,
}

impl H2Backend {
    /// An h2c (prior knowledge) backend on a fresh port.
    pub async fn start() -> H2Backend {
        H2Backend::start_with(H2Options::default()).await
    }

    pub async fn start_with(opts: H2Options<'_>) -> H2Backend {
        let acceptor = opts.tls.map(|(pki, names)| {
            let (chain, key) = pki.issue(names);
            let mut config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
            config.alpn_protocols = vec![b"h2".to_vec()];
            TlsAcceptor::from(Arc::new(config))
        });
        let listener = TcpListener::bind(opts.addr.unwrap_or(([127, 0, 0, 1], 0).into()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let headers: Arc<Mutex<Vec<proxyproto::Header>>> = Arc::default();
        let raw: Arc<Mutex<Vec<Tape>>> = Arc::default();
        let release = Arc::new(Notify::new());
        let proxied = opts.proxied;
        let task = tokio::spawn({
            let (seen, headers, raw, release) = (
                Arc::clone(&seen),
                Arc::clone(&headers),
                Arc::clone(&raw),
                Arc::clone(&release),
            );
            async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((mut tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (acceptor, seen, headers, raw, release) = (
                        acceptor.clone(),
                        Arc::clone(&seen),
                        Arc::clone(&headers),
                        Arc::clone(&raw),
                        Arc::clone(&release),
                    );
                    conns.spawn(async move {
                        let mut early = Vec::new();
                        if proxied {
                            let Ok((header, rest)) =
                                proxyproto::read_header(&mut tcp, Duration::from_secs(5)).await
                            else {
                                return;
                            };
                            headers.lock().unwrap().push(header);
                            early = rest;
                        }
                        let stream = Rewind::new(early, tcp);
                        match acceptor {
                            Some(acceptor) => {
                                let Ok(tls) = acceptor.accept(stream).await else {
                                    return;
                                };
                                serve_h2(tls, seen, release).await;
                            }
                            None => {
                                let recorded = crate::Recorded::new(stream);
                                raw.lock().unwrap().push(Arc::clone(&recorded.reads));
                                serve_h2(recorded, seen, release).await;
                            }
                        }
                    });
                }
            }
        });
        H2Backend {
            addr,
            seen,
            headers,
            raw,
            release,
            task,
        }
    }

    /// The `i`-th request received.
    pub fn seen(&self, i: usize) -> Seen {
        self.seen.lock().unwrap()[i].clone()
    }

    /// How many requests arrived.
    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

async fn serve_h2<S>(io: S, seen: Arc<Mutex<Vec<Seen>>>, release: Arc<Notify>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let (seen, release) = (Arc::clone(&seen), Arc::clone(&release));
        async move { Ok::<_, Infallible>(echo(req, seen, release).await) }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn echo(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
) -> Response<EchoBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        authority: parts.uri.authority().map(|a| a.to_string()),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    if path == "/sse" {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))))
                .await;
            release.notified().await;
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: two\n\n"))))
                .await;
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut resp = Response::new(BodyExt::boxed(body));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        return resp;
    }
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    let h = resp.headers_mut();
    h.insert("x-echo-method", parts.method.as_str().parse().unwrap());
    h.insert("x-echo-path", path.parse().unwrap());
    h.insert(
        "x-echo-version",
        format!("{:?}", parts.version).parse().unwrap(),
    );
    resp
}

/// A TLS connection to the proxy for `sni`, offering `alpn`, trusting `pki`'s CA.
pub async fn tls_to_proxy(
    addr: SocketAddr,
    sni: &str,
    pki: &Pki,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = pki.client_config_with(|c| {
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    });
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// The request body type of the test clients.
pub type ClientBody = Full<Bytes>;

/// An HTTP/2 client connection to the proxy (TLS, ALPN h2).
pub async fn h2_client(
    addr: SocketAddr,
    sni: &str,
    pki: &Pki,
) -> hyper::client::conn::http2::SendRequest<ClientBody> {
    let tls = tls_to_proxy(addr, sni, pki, &[b"h2"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// An HTTP/1.1 client connection to the proxy (TLS, ALPN http/1.1).
pub async fn h1_client(
    addr: SocketAddr,
    sni: &str,
    pki: &Pki,
) -> hyper::client::conn::http1::SendRequest<ClientBody> {
    let tls = tls_to_proxy(addr, sni, pki, &[b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// A response with its body read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap_or(""))
    }
}

/// Reads a response whole (bounded to 10 s).
pub async fn answer(resp: Response<Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("response body did not end")
        .expect("response body failed")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Finishes a request with a body.
pub fn with_body(builder: http::request::Builder, body: &str) -> Request<ClientBody> {
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}
