//! A small web site behind an L7 route for the browser test: one hyper HTTP/1.1 server (with
//! upgrades) that serves a page, an event stream and a WebSocket echo, and records what it
//! saw.
//!
//! - `/` is [`PAGE`]: it opens a WebSocket to `/ws` (subprotocol `echo`), sends one message,
//!   writes the echo into `#ws`, closes with 1000 "done" and writes the close code it got
//!   back into `#close`; it reads two events from `/sse` into `#sse`; then writes `ok` (or
//!   what failed, or `timeout` after 8 s) into `#result` and calls `/done`.
//! - `/hold.gif`, an image at the end of the page, is answered only after `/done` (or after
//!   15 s): the page's load event waits for it, so a browser that dumps the DOM at load
//!   (`chromium --dump-dom`) dumps it with the results in place.
//! - `/sse` sends `data: one`, then `data: two`, then ends.
//! - `/ws` is a WebSocket echo (tungstenite on hyper's upgraded connection), answering the
//!   `echo` subprotocol; its handshakes and the close frames it received are recorded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::ws::Handshake;

/// The page the browser loads.
pub const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>mc-proxy browser test</title>
<style>body { font: 16px sans-serif; margin: 2em } span { font-weight: bold }</style></head>
<body>
<h1>mc-proxy: WebSocket and SSE through an L7 route</h1>
<p>WebSocket echo: <span id="ws">waiting</span></p>
<p>WebSocket close: <span id="close">waiting</span></p>
<p>Server-sent events: <span id="sse">waiting</span></p>
<p>Result: <span id="result">pending</span></p>
<script>
const got = { echo: null, close: null, events: [] };
let finished = false;
function show(id, text) { document.getElementById(id).textContent = text; }
function finish(why) {
  if (finished) return;
  finished = true;
  show('result', why);
  fetch('/done?' + encodeURIComponent(why)).catch(() => {});
}
function check() {
  if (got.echo !== null && got.close !== null && got.events.length >= 2) finish('ok');
}
const ws = new WebSocket('wss://' + location.host + '/ws', ['echo']);
ws.onopen = () => ws.send('hello from the browser');
ws.onmessage = e => {
  got.echo = e.data;
  show('ws', e.data + ' (protocol ' + ws.protocol + ')');
  ws.close(1000, 'done');
};
ws.onclose = e => {
  got.close = e.code;
  show('close', e.code + ' ' + e.reason + (e.wasClean ? ' clean' : ' unclean'));
  if (got.echo === null) finish('ws-closed-early'); else check();
};
ws.onerror = () => finish('ws-error');
const es = new EventSource('/sse');
es.onmessage = e => {
  got.events.push(e.data);
  show('sse', got.events.join(','));
  if (got.events.length >= 2) { es.close(); check(); }
};
setTimeout(() => finish('timeout'), 8000);
</script>
<img src="/hold.gif" alt="">
</body></html>
"#;

/// A 1x1 transparent GIF.
const GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

type SiteBody = BoxBody<Bytes, Infallible>;

/// What the site saw.
#[derive(Debug, Default)]
pub struct Visits {
    /// Every request, as (method, path and query, version).
    pub requests: Vec<(String, String, http::Version)>,
    /// WebSocket handshakes at `/ws`.
    pub websockets: Vec<Handshake>,
    /// What the page reported at `/done`.
    pub done: Option<String>,
}

/// The site (see the module docs), HTTP/1.1 on a fresh port.
pub struct Site {
    pub addr: SocketAddr,
    pub visits: Arc<Mutex<Visits>>,
    /// Close frames the WebSocket received, as (code, reason).
    pub closes: Arc<Mutex<Vec<(u16, String)>>>,
    task: JoinHandle<()>,
}

impl Site {
    pub async fn start() -> Site {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let visits: Arc<Mutex<Visits>> = Arc::default();
        let closes: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
        let done = Arc::new(Notify::new());
        let task = tokio::spawn({
            let (visits, closes) = (Arc::clone(&visits), Arc::clone(&closes));
            async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (visits, closes, done) =
                        (Arc::clone(&visits), Arc::clone(&closes), Arc::clone(&done));
                    let service = service_fn(move |req| {
                        let (visits, closes, done) =
                            (Arc::clone(&visits), Arc::clone(&closes), Arc::clone(&done));
                        async move { Ok::<_, Infallible>(serve(req, visits, closes, done).await) }
                    });
                    conns.spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .with_upgrades()
                            .await;
                    });
                }
            }
        });
        Site {
            addr,
            visits,
            closes,
            task,
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(status: StatusCode, content_type: &'static str, body: &'static [u8]) -> Response<SiteBody> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn serve(
    mut req: Request<Incoming>,
    visits: Arc<Mutex<Visits>>,
    closes: Arc<Mutex<Vec<(u16, String)>>>,
    done: Arc<Notify>,
) -> Response<SiteBody> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.to_string());
    visits
        .lock()
        .unwrap()
        .requests
        .push((req.method().to_string(), target.clone(), req.version()));
    match req.uri().path() {
        "/" => full(StatusCode::OK, "text/html; charset=utf-8", PAGE.as_bytes()),
        "/hold.gif" => {
            let _ = tokio::time::timeout(Duration::from_secs(15), done.notified()).await;
            full(StatusCode::OK, "image/gif", GIF)
        }
        "/done" => {
            let query = req.uri().query().unwrap_or_default().to_owned();
            visits.lock().unwrap().done = Some(query);
            // notify_one keeps a permit if the image request has not arrived yet.
            done.notify_one();
            full(StatusCode::NO_CONTENT, "text/plain", b"")
        }
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            tokio::spawn(async move {
                for event in [&b"data: one\n\n"[..], b"data: two\n\n"] {
                    if tx
                        .send(Ok(Frame::data(Bytes::from_static(event))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            let mut resp = Response::new(BodyExt::boxed(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
        "/ws" => websocket(&mut req, &visits, closes),
        _ => full(StatusCode::NOT_FOUND, "text/plain", b"not found"),
    }
}

/// The server side of an HTTP/1.1 WebSocket handshake, done by hand on hyper.
fn websocket(
    req: &mut Request<Incoming>,
    visits: &Mutex<Visits>,
    closes: Arc<Mutex<Vec<(u16, String)>>>,
) -> Response<SiteBody> {
    visits.lock().unwrap().websockets.push(Handshake {
        method: req.method().to_string(),
        version: req.version(),
        path: req.uri().to_string(),
        protocol: None,
        authority: req
            .headers()
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or("").to_owned()),
        headers: req.headers().clone(),
    });
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return full(StatusCode::BAD_REQUEST, "text/plain", b"no key");
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        crate::ws::echo(ws, closes).await;
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).unwrap(),
    );
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("echo"),
    );
    resp
}
