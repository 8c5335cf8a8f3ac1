//! WebSockets through L7 routes: recognising an upgrade request, the handshake with the
//! backend on a connection of its own, the answer to the client, and the tunnel after it.
//!
//! What it owns:
//! - Telling upgrades apart ([`upgrade_of`]): an HTTP/1.1 `Upgrade: websocket` (RFC 6455 §4)
//!   and an HTTP/2 extended CONNECT with `:protocol websocket` (RFC 8441) are WebSockets.
//!   Every other upgrade is refused, never forwarded: `Upgrade` with any other token (`h2c`,
//!   `TLS/1.0`, ...) and CONNECT without `:protocol` or with another one get 501; a broken
//!   WebSocket handshake (not a GET, no `Connection: upgrade`, a key that is not 16 bytes in
//!   base64) gets 400; a `Sec-WebSocket-Version` other than 13 gets 426 naming 13 (§4.4).
//! - The backend handshake, in what the route's backend speaks, whatever the client spoke:
//!
//!   | client   | backend  | to the backend                                   | to the client |
//!   |----------|----------|--------------------------------------------------|---------------|
//!   | HTTP/1.1 | HTTP/1.1 | `Upgrade: websocket` with the client's key        | the 101       |
//!   | HTTP/2   | HTTP/1.1 | `Upgrade: websocket` with a fresh random key      | 200           |
//!   | HTTP/1.1 | HTTP/2   | extended CONNECT                                 | 101, our accept |
//!   | HTTP/2   | HTTP/2   | extended CONNECT                                 | 200           |
//!
//!   HTTP/2 has no key and no accept, so towards an HTTP/1.1 backend the proxy makes the key
//!   and checks the backend's `Sec-WebSocket-Accept` against it, and towards an HTTP/1.1
//!   client it computes the accept from the client's key. Subprotocols, extensions (e.g.
//!   `permessage-deflate`), `Origin` and cookies pass through both ways as headers; frames
//!   are never looked at, so whatever was negotiated holds end to end. An HTTP/2 backend is
//!   asked only if its SETTINGS allowed extended CONNECT (read by the pool's
//!   `handshake_h2`); otherwise the client gets 502 saying so. `auto` routes offer only ALPN
//!   `http/1.1` for WebSockets: every WebSocket server speaks the HTTP/1.1 upgrade, few speak
//!   RFC 8441. A backend that refuses (4xx, 5xx, 3xx) is answered to the client as it is; one
//!   that answers 2xx without switching is a bad gateway (an HTTP/2 client would take a 200 as
//!   an open tunnel).
//!
//! I/O: one backend connection per WebSocket, opened with `connector::connect` (TCP, PROXY
//! v2, TLS) and never taken from or given to the pool: a tunnel holds its connection for its
//! whole life. After the switch, `relay::relay_streams` splices the client's side (hyper's
//! upgraded TLS connection for HTTP/1.1, one HTTP/2 stream for HTTP/2: [`StreamIo`] on the
//! connections `h2_server` serves) and the backend's, byte for byte, half-close preserved.
//!
//! Invariants: setting up is bounded by `connect_timeout` (TCP, PROXY, TLS, HTTP handshake,
//! and for HTTP/2 the backend's SETTINGS) and then `response_timeout` (the backend's answer).
//! A tunnel idle for `idle_timeout` ends. Each tunnel task holds its request's
//! [`InFlightGuard`] (a connection with a live tunnel is never closed by `keepalive_timeout`),
//! runs on the client connection's executor (the server's `TaskTracker`: shutdown waits for
//! it) and in [`Tunnels`] (an HTTP/1.1 connection that switched lasts until its tunnel ends),
//! and ends when the client connection's `closed` token fires: when `l7::serve` returns, or is
//! dropped at the end of the shutdown grace period, as L4 relays are cut.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use mc_proxy_shared::BackendProtocol;
use mc_proxy_shared::text::clip;
use tokio::time::Instant;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::h2_stream::{Handoff, StreamIo};
use super::headers;
use super::lifecycle::{InFlightGuard, TaskExecutor};
use crate::connectors::connector::{self, BackendTls, ConnectError, Target, Wire};
use crate::connectors::pool;
use crate::model::backends::Pick;
use crate::model::stats::Transferred;
use crate::protocols::body::ReqBody;
use crate::protocols::relay::{self, RelayEnd};

/// RFC 6455 §1.3: appended to the key before hashing it into `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// How long a tunnel that ended waits for the client's side to take its orderly close.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// The one WebSocket version there is (RFC 6455 §4.1).
const VERSION: &str = "13";

/// Why a WebSocket was not set up, and whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum WebSocketError {
    /// Client fault: an `Upgrade` to something other than WebSocket (`h2c`, `TLS/1.0`, ...).
    #[error("Upgrade: {0} is not supported")]
    UnsupportedUpgrade(String),
    /// Client fault: a CONNECT that is not an extended CONNECT for WebSocket.
    #[error("CONNECT {0} is not supported")]
    UnsupportedConnect(String),
    /// Client fault: an upgrade to WebSocket that breaks RFC 6455 §4.1.
    #[error("bad WebSocket handshake: {0}")]
    BadHandshake(&'static str),
    /// Client fault: a `Sec-WebSocket-Version` other than 13.
    #[error("WebSocket version {0} is not supported")]
    Version(String),
    /// The proxy's own fault: no random key for the backend (the OS refused randomness).
    #[error("no random WebSocket key: the system's random source failed")]
    NoRandom,
    /// Backend fault (or the operator's, for TLS trust): the connection could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Backend fault: the connection was not set up within `connect_timeout`.
    #[error("WebSocket connection to {backend} timed out after {after:?}")]
    ConnectTimeout {
        /// The backend address.
        backend: String,
        /// The configured `connect_timeout`.
        after: Duration,
    },
    /// Backend fault: the HTTP handshake on the new connection failed (for HTTP/2: no
    /// SETTINGS frame first), as the pool's handshake reports it.
    #[error(transparent)]
    Handshake(#[from] pool::PoolError),
    /// Backend (or config) fault: an HTTP/2 backend that did not send
    /// `SETTINGS_ENABLE_CONNECT_PROTOCOL`, so it cannot take a WebSocket (RFC 8441 §3).
    #[error(
        "{backend} does not accept WebSockets over HTTP/2 (no SETTINGS_ENABLE_CONNECT_PROTOCOL)"
    )]
    NoConnectProtocol {
        /// The backend address.
        backend: String,
    },
    /// Backend fault: the request failed on the new connection (reset, closed).
    #[error("WebSocket request to {backend}: {source}")]
    Request {
        /// The backend address.
        backend: String,
        /// What hyper said.
        source: hyper::Error,
    },
    /// Backend fault: no answer within `response_timeout`.
    #[error("WebSocket answer from {backend} timed out after {after:?}")]
    ResponseTimeout {
        /// The backend address.
        backend: String,
        /// The configured `response_timeout`.
        after: Duration,
    },
    /// Backend fault: it answered as if it switched but not as RFC 6455 §4.1 says (no
    /// `Upgrade: websocket`, a wrong `Sec-WebSocket-Accept`), or 2xx without switching.
    #[error("{backend} did not switch to WebSocket properly: {why}")]
    BadAnswer {
        /// The backend address.
        backend: String,
        /// What was wrong.
        why: String,
    },
}

impl WebSocketError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            WebSocketError::UnsupportedUpgrade(_) | WebSocketError::UnsupportedConnect(_) => {
                StatusCode::NOT_IMPLEMENTED
            }
            WebSocketError::BadHandshake(_) => StatusCode::BAD_REQUEST,
            WebSocketError::Version(_) => StatusCode::UPGRADE_REQUIRED,
            WebSocketError::NoRandom => StatusCode::INTERNAL_SERVER_ERROR,
            WebSocketError::ConnectTimeout { .. } | WebSocketError::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            WebSocketError::Connect(_)
            | WebSocketError::Handshake(_)
            | WebSocketError::NoConnectProtocol { .. }
            | WebSocketError::Request { .. }
            | WebSocketError::BadAnswer { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The short text body sent with the status.
    pub fn text(&self) -> &'static str {
        match self {
            WebSocketError::UnsupportedUpgrade(_) => {
                "not implemented: the only upgrade supported is Upgrade: websocket\n"
            }
            WebSocketError::UnsupportedConnect(_) => {
                "not implemented: CONNECT is supported only as an extended CONNECT with \
                 :protocol websocket (RFC 8441)\n"
            }
            WebSocketError::BadHandshake(_) => "bad request: invalid WebSocket handshake\n",
            WebSocketError::Version(_) => "upgrade required: the WebSocket version is 13\n",
            WebSocketError::NoRandom => "internal error: no WebSocket key could be made\n",
            WebSocketError::NoConnectProtocol { .. } => {
                "bad gateway: the backend does not accept WebSockets over HTTP/2\n"
            }
            WebSocketError::BadAnswer { .. } => {
                "bad gateway: the backend did not switch to WebSocket properly\n"
            }
            WebSocketError::ConnectTimeout { .. } | WebSocketError::ResponseTimeout { .. } => {
                "gateway timeout: the backend did not answer in time\n"
            }
            WebSocketError::Connect(_)
            | WebSocketError::Handshake(_)
            | WebSocketError::Request { .. } => "bad gateway: the backend is unreachable\n",
        }
    }

    /// Whether the backend (or the way to it) is to blame: counted in `backend_errors` and
    /// logged at warn.
    pub fn is_backend(&self) -> bool {
        !matches!(
            self,
            WebSocketError::UnsupportedUpgrade(_)
                | WebSocketError::UnsupportedConnect(_)
                | WebSocketError::BadHandshake(_)
                | WebSocketError::Version(_)
                | WebSocketError::NoRandom
        )
    }

    /// Headers the refusal carries besides its text: 426 names the version spoken (§4.4).
    pub fn decorate(&self, headers: &mut HeaderMap) {
        if let WebSocketError::Version(_) = self {
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(VERSION),
            );
        }
    }
}

/// How the client asked for its WebSocket.
#[derive(Debug, Clone)]
pub enum ClientSide {
    /// HTTP/1.1 `Upgrade: websocket` with this `Sec-WebSocket-Key`.
    Http1 {
        /// The client's key, checked to be 16 bytes in base64.
        key: HeaderValue,
    },
    /// HTTP/2 extended CONNECT with `:protocol websocket` (no key, no accept).
    H2,
}

/// `None` for an ordinary request; for an upgrade request (any `Upgrade` header, any
/// CONNECT) the WebSocket handshake it makes, or why it is refused.
pub fn upgrade_of<B>(req: &Request<B>) -> Option<Result<ClientSide, WebSocketError>> {
    if req.method() == Method::CONNECT {
        let protocol = req.extensions().get::<hyper::ext::Protocol>();
        return Some(match protocol {
            Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => {
                check_version(req.headers()).map(|()| ClientSide::H2)
            }
            Some(p) => Err(WebSocketError::UnsupportedConnect(format!(
                "with :protocol {}",
                clip(p.as_str())
            ))),
            None => Err(WebSocketError::UnsupportedConnect(
                "without :protocol".to_owned(),
            )),
        });
    }
    let mut upgrades = req.headers().get_all(header::UPGRADE).iter().peekable();
    upgrades.peek()?;
    let offered: Vec<&str> = upgrades
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    // A protocol token may carry a version (`websocket/13`); the name is what counts.
    let websocket = offered.iter().any(|t| {
        t.split('/')
            .next()
            .is_some_and(|name| name.eq_ignore_ascii_case("websocket"))
    });
    if !websocket {
        return Some(Err(WebSocketError::UnsupportedUpgrade(clip(
            &offered.join(", "),
        ))));
    }
    Some(http1_handshake(req))
}

fn http1_handshake<B>(req: &Request<B>) -> Result<ClientSide, WebSocketError> {
    if req.method() != Method::GET {
        return Err(WebSocketError::BadHandshake(
            "a WebSocket upgrade must be a GET",
        ));
    }
    if req.version() != Version::HTTP_11 {
        return Err(WebSocketError::BadHandshake(
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    if !has_token(req.headers(), header::CONNECTION, "upgrade") {
        return Err(WebSocketError::BadHandshake(
            "Upgrade without Connection: upgrade",
        ));
    }
    check_version(req.headers())?;
    let mut keys = req.headers().get_all(header::SEC_WEBSOCKET_KEY).iter();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(WebSocketError::BadHandshake(
            "exactly one Sec-WebSocket-Key is needed",
        ));
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.as_bytes());
    if !decoded.is_ok_and(|k| k.len() == 16) {
        return Err(WebSocketError::BadHandshake(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    Ok(ClientSide::Http1 { key: key.clone() })
}

fn check_version(headers: &HeaderMap) -> Result<(), WebSocketError> {
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes().trim_ascii() == VERSION.as_bytes() => Ok(()),
        (None, _) => Err(WebSocketError::Version("(none)".to_owned())),
        (Some(v), _) => Err(WebSocketError::Version(clip(&String::from_utf8_lossy(
            v.as_bytes(),
        )))),
    }
}

/// Whether a comma-separated header lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2): base64 of SHA-1 of key + GUID.
pub fn accept_for(key: &[u8]) -> HeaderValue {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(ACCEPT_GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(ctx.finish());
    HeaderValue::from_str(&encoded).expect("base64 is a valid header value")
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1).
fn fresh_key() -> Result<HeaderValue, WebSocketError> {
    use aws_lc_rs::rand::SecureRandom;
    let mut nonce = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| WebSocketError::NoRandom)?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(nonce);
    Ok(HeaderValue::from_str(&encoded).expect("base64 is a valid header value"))
}

/// The tunnels of one client connection: where their tasks run, and their settings.
#[derive(Debug, Clone)]
pub struct Tunnels {
    executor: TaskExecutor,
    tracker: TaskTracker,
    connect_timeout: Duration,
    response_timeout: Duration,
    idle_timeout: Duration,
}

impl Tunnels {
    /// Tunnels whose tasks go to `executor` (the connection's: the server's tracker), set up
    /// within `connect_timeout` + `response_timeout`, closed after `idle_timeout` without a
    /// byte.
    pub fn new(
        executor: TaskExecutor,
        connect_timeout: Duration,
        response_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Tunnels {
            executor,
            tracker: TaskTracker::new(),
            connect_timeout,
            response_timeout,
            idle_timeout,
        }
    }

    /// Resolves once every tunnel opened so far has ended (no new one can open: the caller
    /// does this once the HTTP connection is over).
    pub async fn finished(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn spawn_tunnel(&self, tunnel: impl Future<Output = ()> + Send + 'static) {
        hyper::rt::Executor::execute(&self.executor, self.tracker.track_future(tunnel));
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        hyper::rt::Executor::execute(&self.executor, task);
    }
}

/// What setting up a WebSocket needs from the client connection.
#[derive(Debug)]
pub struct Setup<'a> {
    /// The route's backend.
    pub target: &'a Target,
    /// Backend TLS trust.
    pub tls: &'a BackendTls,
    /// The real client address (for `X-Forwarded-For`).
    pub client: IpAddr,
    /// Fires when the client connection ends.
    pub closed: &'a CancellationToken,
    /// Where the tunnel's tasks go.
    pub tunnels: &'a Tunnels,
    /// The request's in-flight guard, held by the tunnel for its life.
    pub in_flight: InFlightGuard,
    /// The route member it goes to, counted active for the tunnel's life (a drain waits).
    pub member: Pick,
}

/// How the backend answered the WebSocket request.
#[derive(Debug)]
pub enum Answer {
    /// It switched: send this head (101 for HTTP/1.1, 200 for HTTP/2) with an empty body; the
    /// tunnel task is waiting for the client's side: from hyper, or, on a stream `h2_server`
    /// serves, the stream's send half through the [`Handoff`] this carries.
    Switched(Response<Option<Handoff>>),
    /// It refused (3xx, 4xx, 5xx): its response, connection headers stripped, to pass on.
    Refused(Response<Incoming>),
}

/// Sets up the WebSocket `req` asks for (`side`, from [`upgrade_of`]) towards `authority` on
/// the route's backend, and starts its tunnel.
pub async fn open(
    setup: Setup<'_>,
    mut req: Request<ReqBody>,
    side: ClientSide,
    authority: Authority,
) -> Result<Answer, WebSocketError> {
    let (client_upgrade, handoff) = ClientUpgrade::of(&mut req);
    let (parts, _no_body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let fields = backend_fields(parts.headers, setup.client);

    let target = websocket_target(setup.target);
    let backend = target.backend.as_str();
    let tunnels = setup.tunnels;
    let dial = Box::pin(dial(&target, setup.tls, tunnels, setup.closed));
    let sender = tokio::time::timeout(tunnels.connect_timeout, dial)
        .await
        .map_err(|_| WebSocketError::ConnectTimeout {
            backend: backend.to_owned(),
            after: tunnels.connect_timeout,
        })??;
    let ask = async {
        match sender {
            Sender::Http1(sender) => {
                ask_http1(sender, &side, path, fields, &authority, backend).await
            }
            Sender::H2(sender) => {
                let tls = target.tls.is_some();
                ask_h2(sender, tls, path, fields, authority, backend).await
            }
        }
    };
    let answered: Result<Checked, WebSocketError> =
        tokio::time::timeout(tunnels.response_timeout, ask)
            .await
            .map_err(|_| WebSocketError::ResponseTimeout {
                backend: backend.to_owned(),
                after: tunnels.response_timeout,
            })?;
    let mut resp = match answered? {
        Checked::Switched(resp) => resp,
        Checked::Refused(resp) => {
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            return Ok(Answer::Refused(Response::from_parts(parts, body)));
        }
    };

    let backend_upgrade = hyper::upgrade::on(&mut resp);
    let (head, _no_body) = resp.into_parts();
    let head = client_head(head, &side);
    let tunnel = Tunnel {
        client: client_upgrade,
        backend: backend_upgrade,
        idle: tunnels.idle_timeout,
        closed: setup.closed.clone(),
        _in_flight: setup.in_flight,
        _member: setup.member,
    };
    tunnels.spawn_tunnel(tunnel.run());
    Ok(Answer::Switched(Response::from_parts(head, handoff)))
}

/// The client request's fields as the backend gets them: no `Host` (the request names its
/// authority), the forwarding fields, no client key, accept or length, our WebSocket version.
fn backend_fields(mut fields: HeaderMap, client: std::net::IpAddr) -> HeaderMap {
    fields.remove(header::HOST);
    headers::rewrite_request(&mut fields, &headers::ClientAddr::new(client));
    for name in [
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_ACCEPT,
        header::CONTENT_LENGTH,
    ] {
        fields.remove(name);
    }
    fields.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static(VERSION),
    );
    fields
}

/// Asks an HTTP/1.1 backend to upgrade (`Connection: Upgrade`, the client's key or, for an
/// HTTP/2 client, a fresh one) and checks its answer as RFC 6455 has a client do.
async fn ask_http1(
    mut sender: http1::SendRequest<ReqBody>,
    side: &ClientSide,
    path: PathAndQuery,
    fields: HeaderMap,
    authority: &Authority,
    backend: &str,
) -> Result<Checked, WebSocketError> {
    let key = match side {
        ClientSide::Http1 { key } => key.clone(),
        ClientSide::H2 => fresh_key()?,
    };
    let mut req = Request::new(ReqBody::Empty);
    *req.uri_mut() = Uri::from(path);
    *req.headers_mut() = fields;
    let h = req.headers_mut();
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        h.insert(header::HOST, host);
    }
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_KEY, key.clone());
    let request_failed = |source| WebSocketError::Request {
        backend: backend.to_owned(),
        source,
    };
    sender.ready().await.map_err(request_failed)?;
    let resp = sender.send_request(req).await.map_err(request_failed)?;
    checked_http1(resp, &key, backend)
}

/// Asks an HTTP/2 backend for a tunnel with extended CONNECT (RFC 8441, `:protocol`
/// websocket); any 2xx is a switch.
async fn ask_h2(
    mut sender: http2::SendRequest<ReqBody>,
    tls: bool,
    path: PathAndQuery,
    fields: HeaderMap,
    authority: Authority,
    backend: &str,
) -> Result<Checked, WebSocketError> {
    let scheme = if tls { Scheme::HTTPS } else { Scheme::HTTP };
    let mut req = Request::new(ReqBody::Empty);
    *req.method_mut() = Method::CONNECT;
    *req.version_mut() = Version::HTTP_2;
    *req.uri_mut() = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .expect("scheme, authority and path were each parsed already");
    *req.headers_mut() = fields;
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = sender
        .send_request(req)
        .await
        .map_err(|source| WebSocketError::Request {
            backend: backend.to_owned(),
            source,
        })?;
    Ok(if resp.status().is_success() {
        Checked::Switched(resp)
    } else {
        Checked::Refused(resp)
    })
}

/// The backend's switching answer as the client gets it: hop-by-hop fields gone, and for an
/// HTTP/1.1 client `101` with its own `Sec-WebSocket-Accept`, for an HTTP/2 one `200`.
fn client_head(mut head: http::response::Parts, side: &ClientSide) -> http::response::Parts {
    headers::strip_hop_by_hop(&mut head.headers);
    head.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
    head.headers.remove(header::CONTENT_LENGTH);
    match side {
        ClientSide::Http1 { key } => {
            head.status = StatusCode::SWITCHING_PROTOCOLS;
            let h = &mut head.headers;
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept_for(key.as_bytes()));
        }
        ClientSide::H2 => head.status = StatusCode::OK,
    }
    head
}

/// The target a WebSocket connects to: the route's, except that `auto` offers only ALPN
/// `http/1.1` (see the module docs).
fn websocket_target(target: &Target) -> Cow<'_, Target> {
    if target.protocol == BackendProtocol::Auto {
        let mut target = target.clone();
        target.protocol = BackendProtocol::Http1;
        Cow::Owned(target)
    } else {
        Cow::Borrowed(target)
    }
}

/// The request side of a fresh backend connection.
enum Sender {
    Http1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

/// A backend answer: switched (to be checked further for HTTP/1.1) or refused.
enum Checked {
    Switched(Response<Incoming>),
    Refused(Response<Incoming>),
}

/// A backend's answer to an HTTP/1.1 upgrade, as RFC 6455 §4.1 has the client check it.
fn checked_http1(
    resp: Response<Incoming>,
    key: &HeaderValue,
    backend: &str,
) -> Result<Checked, WebSocketError> {
    let bad = |why: String| WebSocketError::BadAnswer {
        backend: backend.to_owned(),
        why,
    };
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if status.is_success() || status.is_informational() {
            return Err(bad(format!("answered {status} instead of 101")));
        }
        return Ok(Checked::Refused(resp));
    }
    if !has_token(resp.headers(), header::UPGRADE, "websocket") {
        return Err(bad("101 without Upgrade: websocket".to_owned()));
    }
    if !has_token(resp.headers(), header::CONNECTION, "upgrade") {
        return Err(bad("101 without Connection: upgrade".to_owned()));
    }
    if resp.headers().get(header::SEC_WEBSOCKET_ACCEPT) != Some(&accept_for(key.as_bytes())) {
        return Err(bad("Sec-WebSocket-Accept does not match the key".to_owned()));
    }
    Ok(Checked::Switched(resp))
}

/// Opens the WebSocket's own backend connection and does its HTTP handshake; for HTTP/2,
/// waits for the backend's SETTINGS and requires extended CONNECT. The connection's driver
/// runs on the client connection's executor until the connection ends or `closed` fires.
async fn dial(
    target: &Target,
    tls: &BackendTls,
    tunnels: &Tunnels,
    closed: &CancellationToken,
) -> Result<Sender, WebSocketError> {
    let backend = &target.backend;
    let (stream, wire) = connector::connect(target, tls).await?;
    let span = tracing::debug_span!("websocket backend", backend = %backend);
    match wire {
        Wire::Http1 => {
            let (sender, conn) = pool::handshake_h1(stream, backend).await?;
            tunnels.spawn(drive(conn.with_upgrades(), closed.clone(), span));
            Ok(Sender::Http1(sender))
        }
        Wire::H2 => {
            let (sender, settings) =
                pool::handshake_h2(stream, tunnels.executor.clone(), backend, |conn| {
                    tunnels.spawn(drive(conn, closed.clone(), span))
                })
                .await?;
            if settings.enable_connect_protocol {
                Ok(Sender::H2(sender))
            } else {
                Err(WebSocketError::NoConnectProtocol {
                    backend: backend.clone(),
                })
            }
        }
    }
}

/// Drives a backend connection until it ends or the client connection does.
async fn drive<C, E>(conn: C, closed: CancellationToken, span: tracing::Span)
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let driven = async move {
        tokio::select! {
            res = conn => if let Err(e) = res {
                tracing::debug!("backend connection ended: {e}");
            },
            () = closed.cancelled() => {}
        }
    };
    tracing::Instrument::instrument(driven, span).await;
}

/// Where a WebSocket's client side comes from once the answer is sent.
enum ClientUpgrade {
    /// From hyper, which serves the connection.
    Hyper(OnUpgrade),
    /// The request's HTTP/2 stream: its receive half now, its send half once `h2_server`
    /// has sent the head.
    H2 {
        recv: h2::RecvStream,
        send: tokio::sync::oneshot::Receiver<h2::SendStream<Bytes>>,
    },
}

impl ClientUpgrade {
    /// The upgrade `req` will hand over, and for a stream, the handoff for its send half.
    fn of(req: &mut Request<ReqBody>) -> (Self, Option<Handoff>) {
        match std::mem::replace(req.body_mut(), ReqBody::Empty) {
            ReqBody::H2(body) => {
                let (handoff, send) = tokio::sync::oneshot::channel();
                let recv = body.into_inner();
                (ClientUpgrade::H2 { recv, send }, Some(handoff))
            }
            _ => (ClientUpgrade::Hyper(hyper::upgrade::on(req)), None),
        }
    }
}

/// One switched WebSocket, waiting for both sides of the upgrade, then relaying.
struct Tunnel {
    client: ClientUpgrade,
    backend: OnUpgrade,
    idle: Duration,
    closed: CancellationToken,
    _in_flight: InFlightGuard,
    _member: Pick,
}

impl Tunnel {
    async fn run(self) {
        let Tunnel {
            client,
            backend,
            idle,
            closed,
            _in_flight,
            _member,
        } = self;
        let started = Instant::now();
        let both = async {
            match client {
                ClientUpgrade::Hyper(client) => {
                    let (client, backend) = tokio::try_join!(client, backend)?;
                    Ok((Either::Left(TokioIo::new(client)), backend))
                }
                ClientUpgrade::H2 { recv, send } => {
                    let backend = backend.await?;
                    // Dropped unsent when the head could not be sent: the client is gone.
                    let send = send.await.map_err(|_| UpgradeFailed::ClientGone)?;
                    Ok((Either::Right(StreamIo::new(send, recv)), backend))
                }
            }
        };
        let (mut client, backend) = tokio::select! {
            res = both => match res {
                Ok(both) => both,
                Err(e) => {
                    let e: UpgradeFailed = e;
                    tracing::debug!("WebSocket upgrade did not complete: {e}");
                    return;
                }
            },
            () = closed.cancelled() => return,
        };
        let bytes = Transferred::default();
        let relay = relay::relay_streams(&mut client, TokioIo::new(backend), idle, &bytes);
        let end = tokio::select! {
            end = relay => end,
            () = closed.cancelled() => RelayEnd::Cancelled,
        };
        if matches!(end, RelayEnd::IdleTimeout | RelayEnd::Error(_)) {
            // The tunnel ends for a reason of the backend's or the clock's: the client is
            // told in order (TLS close_notify, HTTP/2 END_STREAM) rather than having its
            // connection torn, which TLS clients report as a truncation attack.
            let bye = tokio::io::AsyncWriteExt::shutdown(&mut client);
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, bye).await;
        }
        let how = match &end {
            RelayEnd::Finished => "closed".to_owned(),
            RelayEnd::IdleTimeout => "idle timeout".to_owned(),
            RelayEnd::Cancelled => "client connection ended".to_owned(),
            RelayEnd::Error(e) => format!("error: {e}"),
        };
        tracing::debug!(
            up = bytes.up.load(std::sync::atomic::Ordering::Relaxed),
            down = bytes.down.load(std::sync::atomic::Ordering::Relaxed),
            duration_ms = started.elapsed().as_millis() as u64,
            "WebSocket ended: {how}"
        );
    }
}

/// Why a switched WebSocket never got both of its sides.
#[derive(Debug, thiserror::Error)]
enum UpgradeFailed {
    /// hyper could not hand a side over (the connection ended first).
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The client's stream was gone before the answer could be sent.
    #[error("the client's stream closed before the answer was sent")]
    ClientGone,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.version_mut() = version;
        for (k, v) in headers {
            req.headers_mut().append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        req
    }

    const GOOD: &[(&str, &str)] = &[
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn accept_matches_rfc_6455_example() {
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn fresh_keys_are_16_random_bytes() {
        let (a, b) = (fresh_key().unwrap(), fresh_key().unwrap());
        assert_ne!(a, b);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.as_bytes())
            .unwrap();
        assert_eq!(decoded.len(), 16);
    }

    #[test]
    fn ordinary_requests_are_not_upgrades() {
        assert!(upgrade_of(&request(Method::GET, Version::HTTP_11, &[])).is_none());
    }

    #[test]
    fn an_http1_websocket_upgrade_is_recognised() {
        let req = request(Method::GET, Version::HTTP_11, GOOD);
        match upgrade_of(&req) {
            Some(Ok(ClientSide::Http1 { key })) => assert_eq!(key, "dGhlIHNhbXBsZSBub25jZQ=="),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_upgrades_are_refused_with_501() {
        let req = request(
            Method::GET,
            Version::HTTP_11,
            &[
                ("upgrade", "h2c"),
                ("connection", "Upgrade, HTTP2-Settings"),
            ],
        );
        let e = upgrade_of(&req).unwrap().unwrap_err();
        assert!(
            matches!(&e, WebSocketError::UnsupportedUpgrade(v) if v == "\"h2c\""),
            "{e}"
        );
        assert_eq!(e.status(), StatusCode::NOT_IMPLEMENTED);
        assert!(!e.is_backend());
    }

    #[test]
    fn connect_without_websocket_protocol_is_refused_with_501() {
        let req = request(Method::CONNECT, Version::HTTP_2, &[]);
        let e = upgrade_of(&req).unwrap().unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_IMPLEMENTED);
        let mut req = request(
            Method::CONNECT,
            Version::HTTP_2,
            &[("sec-websocket-version", "13")],
        );
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("webtransport"));
        let e = upgrade_of(&req).unwrap().unwrap_err();
        assert!(e.to_string().contains("webtransport"), "{e}");
        let mut req = request(
            Method::CONNECT,
            Version::HTTP_2,
            &[("sec-websocket-version", "13")],
        );
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        assert!(matches!(upgrade_of(&req), Some(Ok(ClientSide::H2))));
    }

    #[test]
    fn broken_handshakes_get_400_and_other_versions_426() {
        let without = |name: &str| -> Vec<(&str, &str)> {
            GOOD.iter().copied().filter(|(k, _)| *k != name).collect()
        };
        for headers in [
            without("connection"),
            without("sec-websocket-key"),
            [
                without("sec-websocket-key"),
                vec![("sec-websocket-key", "c2hvcnQ=")],
            ]
            .concat(),
        ] {
            let req = request(Method::GET, Version::HTTP_11, &headers);
            let e = upgrade_of(&req).unwrap().unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{headers:?}: {e}");
        }
        let e = upgrade_of(&request(Method::POST, Version::HTTP_11, GOOD))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let headers = [
            without("sec-websocket-version"),
            vec![("sec-websocket-version", "8")],
        ]
        .concat();
        let e = upgrade_of(&request(Method::GET, Version::HTTP_11, &headers))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::UPGRADE_REQUIRED);
        let mut extra = HeaderMap::new();
        e.decorate(&mut extra);
        assert_eq!(extra[header::SEC_WEBSOCKET_VERSION], "13");
    }
}
