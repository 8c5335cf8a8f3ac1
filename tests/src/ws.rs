//! WebSocket fixtures: echo backends that speak HTTP/1.1 (tokio-tungstenite's own handshake)
//! or HTTP/2 (hyper's server with extended CONNECT, RFC 8441), and clients that reach the
//! proxy over TLS with HTTP/1.1 (tungstenite's client handshake) or HTTP/2 (extended CONNECT
//! through hyper's client, then tungstenite on the stream).
//!
//! The echo backends record each handshake and each close frame received, answer the
//! subprotocol `echo` when offered, refuse the path `/refuse` with 403 `go away`, echo text
//! and binary messages, and on the text `close:CODE` close with CODE and "server closing".
//! [`WsBackend::kill`] drops every connection at once, as a dying backend process would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::Pki;
use crate::web::{self, Answer, ClientBody};

/// A WebSocket handshake as a backend received it.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// `GET` (HTTP/1.1 upgrade) or `CONNECT` (HTTP/2 extended CONNECT).
    pub method: String,
    pub version: http::Version,
    pub path: String,
    /// `:protocol` (HTTP/2 only).
    pub protocol: Option<String>,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1).
    pub authority: Option<String>,
    pub headers: HeaderMap,
}

impl Handshake {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap_or(""))
    }
}

/// A WebSocket echo backend (see the module docs).
pub struct WsBackend {
    pub addr: SocketAddr,
    pub handshakes: Arc<Mutex<Vec<Handshake>>>,
    /// Close frames received, as (code, reason); 1005 when the frame had no code.
    pub closes: Arc<Mutex<Vec<(u16, String)>>>,
    killed: CancellationToken,
    task: JoinHandle<()>,
}

impl WsBackend {
    /// An HTTP/1.1 backend: tokio-tungstenite's `accept_hdr_async` on each connection.
    pub async fn h1() -> WsBackend {
        WsBackend::start(false).await
    }

    /// An HTTP/2 (h2c) backend that advertises SETTINGS_ENABLE_CONNECT_PROTOCOL and takes
    /// WebSockets as extended CONNECT streams.
    pub async fn h2() -> WsBackend {
        WsBackend::start(true).await
    }

    async fn start(h2: bool) -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes: Arc<Mutex<Vec<Handshake>>> = Arc::default();
        let closes: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
        let killed = CancellationToken::new();
        let task = tokio::spawn({
            let (handshakes, closes, killed) =
                (Arc::clone(&handshakes), Arc::clone(&closes), killed.clone());
            async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (handshakes, closes, killed) =
                        (Arc::clone(&handshakes), Arc::clone(&closes), killed.clone());
                    if h2 {
                        conns.spawn(serve_h2(tcp, handshakes, closes, killed));
                    } else {
                        conns.spawn(serve_h1(tcp, handshakes, closes));
                    }
                }
            }
        });
        WsBackend {
            addr,
            handshakes,
            closes,
            killed,
            task,
        }
    }

    /// The `i`-th handshake received.
    pub fn handshake(&self, i: usize) -> Handshake {
        self.handshakes.lock().unwrap()[i].clone()
    }

    pub fn closes(&self) -> Vec<(u16, String)> {
        self.closes.lock().unwrap().clone()
    }

    /// Drops every connection and stops listening, as a backend process that died.
    pub fn kill(&self) {
        self.killed.cancel();
        self.task.abort();
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wants_echo(headers: &HeaderMap) -> bool {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "echo")
}

// tungstenite's handshake callback returns its refusal (an `http::Response`) by value.
#[allow(clippy::result_large_err)]
async fn serve_h1(
    tcp: TcpStream,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    closes: Arc<Mutex<Vec<(u16, String)>>>,
) {
    let callback = |req: &tungstenite::handshake::server::Request,
                    mut resp: tungstenite::handshake::server::Response| {
        handshakes.lock().unwrap().push(Handshake {
            method: req.method().to_string(),
            version: req.version(),
            path: req.uri().to_string(),
            protocol: None,
            authority: req
                .headers()
                .get("host")
                .map(|h| h.to_str().unwrap().to_owned()),
            headers: req.headers().clone(),
        });
        if req.uri().path() == "/refuse" {
            let mut refusal = Response::new(Some("go away".to_owned()));
            *refusal.status_mut() = StatusCode::FORBIDDEN;
            return Err(refusal);
        }
        if wants_echo(req.headers()) {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("echo"));
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    echo(ws, closes).await;
}

async fn serve_h2(
    tcp: TcpStream,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    closes: Arc<Mutex<Vec<(u16, String)>>>,
    killed: CancellationToken,
) {
    let service = service_fn(move |mut req: Request<Incoming>| {
        let (handshakes, closes, killed) =
            (Arc::clone(&handshakes), Arc::clone(&closes), killed.clone());
        async move {
            let protocol = req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .map(|p| p.as_str().to_owned());
            handshakes.lock().unwrap().push(Handshake {
                method: req.method().to_string(),
                version: req.version(),
                path: req
                    .uri()
                    .path_and_query()
                    .map_or("/".to_owned(), |p| p.to_string()),
                protocol: protocol.clone(),
                authority: req.uri().authority().map(|a| a.to_string()),
                headers: req.headers().clone(),
            });
            let mut resp = Response::new(Full::new(Bytes::new()));
            if req.method() != http::Method::CONNECT || protocol.as_deref() != Some("websocket") {
                *resp.status_mut() = StatusCode::NOT_FOUND;
                return Ok::<_, Infallible>(resp);
            }
            if req.uri().path() == "/refuse" {
                *resp.body_mut() = Full::new(Bytes::from_static(b"go away"));
                *resp.status_mut() = StatusCode::FORBIDDEN;
                return Ok(resp);
            }
            if wants_echo(req.headers()) {
                resp.headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_static("echo"));
            }
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else {
                    return;
                };
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                tokio::select! {
                    () = echo(ws, closes) => {}
                    () = killed.cancelled() => {}
                }
            });
            Ok(resp)
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .enable_connect_protocol()
        .serve_connection(TokioIo::new(tcp), service)
        .await;
}

/// The echo loop of every WebSocket backend here (see the module docs).
pub async fn echo<S>(mut ws: WebSocketStream<S>, closes: Arc<Mutex<Vec<(u16, String)>>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(text) if text.as_str().starts_with("close:") => {
                let code: u16 = text.as_str()["close:".len()..].parse().unwrap();
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: "server closing".into(),
                };
                if ws.send(Message::Close(Some(frame))).await.is_err() {
                    return;
                }
            }
            Message::Text(_) | Message::Binary(_) => {
                if ws.send(msg).await.is_err() {
                    return;
                }
            }
            Message::Close(frame) => {
                let seen = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                closes.lock().unwrap().push(seen);
            }
            // tungstenite answers pings itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// A WebSocket client over HTTP/1.1 to the proxy.
pub type H1Ws = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;
/// A WebSocket client over one HTTP/2 stream to the proxy.
pub type H2Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// `wss://web.test{path}` over TLS with ALPN http/1.1, offering `protocol` if given. A
/// refusal comes back as tungstenite's `Error::Http` with the status and body.
pub async fn h1_websocket(
    addr: SocketAddr,
    pki: &Pki,
    path: &str,
    protocol: Option<&str>,
) -> Result<(H1Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    use tungstenite::client::IntoClientRequest;
    let tls = web::tls_to_proxy(addr, "web.test", pki, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut req = format!("wss://web.test{path}")
        .into_client_request()
        .unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_str(p).unwrap());
    }
    tokio_tungstenite::client_async(req, tls).await
}

/// An extended CONNECT for `https://web.test{path}` (`:protocol websocket`) on `sender`, an
/// HTTP/2 connection to the proxy ([`web::h2_client`]); the WebSocket on its stream, or the
/// refusal read whole.
pub async fn h2_websocket(
    sender: &mut hyper::client::conn::http2::SendRequest<ClientBody>,
    path: &str,
    protocol: Option<&str>,
) -> Result<(H2Ws, http::response::Parts), Answer> {
    let mut req = Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://web.test{path}"))
        .header("sec-websocket-version", "13");
    if let Some(p) = protocol {
        req = req.header("sec-websocket-protocol", p);
    }
    let mut req = req.body(Full::new(Bytes::new())).unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = web::timed(sender.send_request(req)).await.unwrap();
    if resp.status() != StatusCode::OK {
        return Err(web::answer(resp).await);
    }
    let upgraded = web::timed(hyper::upgrade::on(&mut resp)).await.unwrap();
    let (parts, _) = resp.into_parts();
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    Ok((ws, parts))
}
