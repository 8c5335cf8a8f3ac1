//! Route changes reach L7 connections that are already open: clients that keep their
//! connections (HTTP/2, HTTP/1.1 keep-alive) are loaded, then a member is drained, disabled or
//! replaced through the admin API, and the requests each backend receives after the
//! acknowledgement are counted; a route removed under an open HTTP/2 connection drains it
//! (GOAWAY, the stream in flight finishes, a request meanwhile gets 421); a WebSocket open on a
//! drained member keeps working.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::Request;
use mc_proxy_shared::{AdminState, CloseReason, RouteBackend, RoutePatch};
use mc_proxy_tests::h2raw::{self, RawH2};
use mc_proxy_tests::web::*;
use mc_proxy_tests::ws::{self, WsBackend};
use mc_proxy_tests::*;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// The listener as the admin API names it in these tests' configs.
const LISTENER: &str = "127.0.0.1:0";

/// A client connection that keeps its connection: HTTP/2 or HTTP/1.1 keep-alive.
enum Client {
    H2(hyper::client::conn::http2::SendRequest<ClientBody>),
    H1(hyper::client::conn::http1::SendRequest<ClientBody>),
}

impl Client {
    /// `GET https://web.test{path}` (HTTP/2 names the authority in the target, HTTP/1.1 in
    /// `Host`); the status.
    async fn get(&mut self, path: &str) -> u16 {
        let answer = match self {
            Client::H2(c) => {
                let req = Request::builder().uri(format!("https://web.test{path}"));
                timed(ask_h2(c, with_body(req, ""))).await
            }
            Client::H1(c) => {
                let req = Request::builder().uri(path).header("host", "web.test");
                timed(ask_h1(c, with_body(req, ""))).await
            }
        };
        answer.status.as_u16()
    }
}

/// Clients connected before a change, each sending GETs one after another until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<u16>>>,
}

impl Load {
    /// `h2` HTTP/2 clients and `h1` HTTP/1.1 keep-alive clients, every one connected (and
    /// its first answer in) before this returns.
    async fn start(addr: SocketAddr, pki: &Pki, h2: usize, h1: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for i in 0..h2 + h1 {
            let stop = Arc::clone(&stop);
            let (ready, is_ready) = tokio::sync::oneshot::channel();
            let mut client = if i < h2 {
                Client::H2(h2_client(addr, "web.test", pki).await)
            } else {
                Client::H1(h1_client(addr, "web.test", pki).await)
            };
            let task = tokio::spawn(async move {
                let mut ready = Some(ready);
                let mut statuses = Vec::new();
                // Bounded: a test that never stops its load still ends.
                for n in 0..20_000 {
                    statuses.push(client.get(&format!("/c{i}/{n}")).await);
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                statuses
            });
            timed(is_ready).await.unwrap();
            clients.push(task);
        }
        Load { stop, clients }
    }

    /// How many clients there are: the most requests that can be in flight at any moment.
    fn in_flight_at_most(&self) -> usize {
        self.clients.len()
    }

    /// Stops every client and returns every status they got.
    async fn finish(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for c in self.clients {
            all.extend(timed(c).await.unwrap());
        }
        all
    }
}

/// Waits (up to 10 s) until every backend in `backends` has answered at least `n` more
/// requests than `from` said.
async fn until_each_got(backends: &[&H2Backend], from: &[usize], n: usize) {
    let started = Instant::now();
    while backends.iter().zip(from).any(|(b, f)| b.requests() < f + n) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the load did not reach every backend: {:?} from {from:?}",
            backends.iter().map(|b| b.requests()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What is done to the first member while the clients run.
#[derive(Clone, Copy, Debug)]
enum Change {
    Drain,
    Disable,
    /// The set becomes the other two members plus a fourth backend.
    Replace,
}

/// Three h2c backends behind `web.test`, two HTTP/2 and two HTTP/1.1 keep-alive clients
/// opened before `change` is made to the first member: once the change is acknowledged the
/// first member gets no request but those in flight at that moment, every answer is 200, and
/// the member's active count falls to 0.
async fn a_change_reaches_open_connections(change: Change) {
    let pki = Pki::new();
    let b = [
        H2Backend::start().await,
        H2Backend::start().await,
        H2Backend::start().await,
    ];
    let fourth = H2Backend::start().await;
    let proxy = ProxyBuilder::new()
        .route_to(
            "web.test",
            &[(b[0].addr, 1), (b[1].addr, 1), (b[2].addr, 1)],
        )
        .l7(&pki)
        .start()
        .await;
    let load = Load::start(proxy.addr(), &pki, 2, 2).await;
    until_each_got(&[&b[0], &b[1], &b[2]], &[0, 0, 0], 10).await;

    let mut admin = proxy.admin().await;
    let first = b[0].addr.to_string();
    match change {
        Change::Drain | Change::Disable => {
            let state = match change {
                Change::Drain => AdminState::Draining,
                _ => AdminState::Disabled,
            };
            admin
                .set_backend_state(LISTENER, "web.test", &first, state)
                .await
                .unwrap();
        }
        Change::Replace => {
            let set = [b[1].addr, b[2].addr, fourth.addr]
                .iter()
                .map(|a| RouteBackend::new(a.to_string()))
                .collect();
            let patch = RoutePatch {
                backends: Some(set),
                ..RoutePatch::default()
            };
            admin
                .update_route(LISTENER, "web.test", patch)
                .await
                .unwrap();
        }
    }
    let at_ack = b[0].requests();
    let others: Vec<usize> = [&b[1], &b[2], &fourth]
        .iter()
        .map(|b| b.requests())
        .collect();
    // Well over a hundred requests after the change, spread over the members left.
    let left: Vec<&H2Backend> = match change {
        Change::Replace => vec![&b[1], &b[2], &fourth],
        _ => vec![&b[1], &b[2]],
    };
    let from = match change {
        Change::Replace => others.clone(),
        _ => others[..2].to_vec(),
    };
    until_each_got(&left, &from, 60).await;
    let in_flight = load.in_flight_at_most();
    let statuses = load.finish().await;

    assert!(
        statuses.iter().all(|s| *s == 200),
        "{change:?}: not every answer was 200: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    let after = b[0].requests() - at_ack;
    assert!(
        after <= in_flight,
        "{change:?}: the first member got {after} requests after the change was acknowledged \
         (at most {in_flight} were in flight)"
    );
    if let Change::Replace = change {
        assert!(
            fourth.requests() >= 60,
            "the new member got {}",
            fourth.requests()
        );
    } else {
        // Its requests in flight at the change are done: nothing active is left on it.
        let m = &proxy.state.listeners()[0]
            .lookup("web.test")
            .unwrap()
            .members()[0];
        assert_eq!(m.active, 0, "{m:?}");
    }
}

#[tokio::test]
async fn a_drain_reaches_http2_and_http1_connections_opened_before_it() {
    a_change_reaches_open_connections(Change::Drain).await;
}

#[tokio::test]
async fn a_disable_reaches_http2_and_http1_connections_opened_before_it() {
    a_change_reaches_open_connections(Change::Disable).await;
}

#[tokio::test]
async fn a_replaced_backend_set_reaches_http2_and_http1_connections_opened_before_it() {
    a_change_reaches_open_connections(Change::Replace).await;
}

/// HEADERS for `GET https://web.test{path}` on `stream`, ending the stream.
fn get_frame(stream: u32, path: &str) -> Vec<u8> {
    let block = h2raw::header_block(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "web.test"),
        (":path", path),
    ]);
    h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        stream,
        &block,
    )
}

/// Reads frames until one on `stream` is a DATA frame containing `text`; returns every
/// frame read on the way (bounded by the raw client's own reads).
async fn until_data(raw: &mut RawH2, stream: u32, text: &str) -> Vec<h2raw::Frame> {
    let mut seen = Vec::new();
    let found = timed(async {
        while let Some(f) = raw.next_frame().await {
            if f.kind == h2raw::PING && f.flags & h2raw::ACK == 0 {
                // Acknowledged, so that the server's graceful GOAWAY can complete.
                let pong = h2raw::frame(h2raw::PING, h2raw::ACK, 0, &f.payload);
                raw.send(&pong).await.unwrap();
            }
            let hit = f.kind == h2raw::DATA
                && f.stream == stream
                && String::from_utf8_lossy(&f.payload).contains(text);
            seen.push(f);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert!(found, "no DATA with {text:?} on stream {stream}: {seen:?}");
    seen
}

#[tokio::test]
async fn a_route_removed_under_an_open_h2_connection_drains_it_and_answers_421_meanwhile() {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;
    let mut raw = RawH2::connect(proxy.addr(), "web.test", &pki).await;
    // A stream in flight: the event stream sends one event, then waits for `release`.
    raw.send(&get_frame(1, "/sse")).await.unwrap();
    until_data(&mut raw, 1, "data: one").await;

    proxy
        .admin()
        .await
        .remove_route(LISTENER, "web.test")
        .await
        .unwrap();
    let frames = raw.frames_until_goaway().await;
    let goaway = frames.last().unwrap();
    assert_eq!(goaway.error_code(), Some(h2raw::NO_ERROR), "{frames:?}");

    // A request the client sends before it has stopped using the connection: 421.
    raw.send(&get_frame(3, "/late")).await.unwrap();
    until_data(&mut raw, 3, "this connection's route changed").await;
    // The stream in flight finishes, with its second event.
    backend.release.notify_one();
    let rest = until_data(&mut raw, 1, "data: two").await;
    assert!(
        rest.iter()
            .all(|f| f.kind != h2raw::RST_STREAM || f.stream != 1),
        "{rest:?}"
    );
    // Then the connection ends.
    let tail = raw.frames_until_closed().await;
    assert!(
        tail.iter()
            .all(|f| f.kind != h2raw::RST_STREAM && f.error_code().is_none_or(|c| c == 0)),
        "{tail:?}"
    );
    assert!(
        wait_for_log(&logs, "outcome=\"route_gone\"").await,
        "{}",
        log_text(&logs)
    );
    let counters = &proxy.state.listeners()[0].counters;
    assert_eq!(counters.closes(CloseReason::RouteGone), 1);
    // The backend saw the event stream only: the late request never left the proxy.
    assert_eq!(backend.requests(), 1);
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed_when_its_route_switches_to_l4() {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;
    let mut client = h1_client(proxy.addr(), "web.test", &pki).await;
    let get = || {
        with_body(
            Request::builder().uri("/one").header("host", "web.test"),
            "",
        )
    };
    assert_eq!(timed(ask_h1(&mut client, get())).await.status, 200);

    let patch = RoutePatch {
        mode: Some(mc_proxy_shared::Mode::L4),
        ..RoutePatch::default()
    };
    proxy
        .admin()
        .await
        .update_route(LISTENER, "web.test", patch)
        .await
        .unwrap();
    // The kept-alive connection is closed at once, not at keepalive_timeout (60 s).
    timed(async {
        while client.ready().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        wait_for_log(&logs, "outcome=\"route_gone\"").await,
        "{}",
        log_text(&logs)
    );
}

#[tokio::test]
async fn a_websocket_open_on_a_drained_member_keeps_working_until_it_ends() {
    let pki = Pki::new();
    let backend = WsBackend::h2().await;
    let other = H2Backend::start().await;
    let proxy = ProxyBuilder::new()
        .route_to("web.test", &[(backend.addr, 1), (other.addr, 1)])
        .l7(&pki)
        .start()
        .await;
    // Round robin starts with the first member: the WebSocket backend.
    let (mut socket, _) = ws::h1_websocket(proxy.addr(), &pki, "/chat", None)
        .await
        .unwrap();
    socket.send(Message::text("before")).await.unwrap();
    assert_eq!(
        timed(socket.next()).await.unwrap().unwrap(),
        Message::text("before")
    );

    proxy
        .admin()
        .await
        .set_backend_state(
            LISTENER,
            "web.test",
            &backend.addr.to_string(),
            AdminState::Draining,
        )
        .await
        .unwrap();
    // New requests go to the other member only.
    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    for n in 0..4 {
        let req = with_body(Request::builder().uri(format!("https://web.test/{n}")), "");
        assert_eq!(timed(ask_h2(&mut client, req)).await.status, 200);
    }
    assert_eq!(other.requests(), 4);
    // The tunnel on the drained member goes on, and ends as it would have.
    for text in ["during", "the drain"] {
        socket.send(Message::text(text)).await.unwrap();
        assert_eq!(
            timed(socket.next()).await.unwrap().unwrap(),
            Message::text(text)
        );
    }
    socket.close(None).await.unwrap();
    while let Some(msg) = timed(socket.next()).await {
        if msg.is_err() {
            break;
        }
    }
    let m = &proxy.state.listeners()[0]
        .lookup("web.test")
        .unwrap()
        .members()[0];
    assert_eq!((m.total, m.state.as_str()), (1, "draining"), "{m:?}");
}

/// A GET of `path` on `web.test`, bodyless.
fn web_get(path: &str) -> Request<ClientBody> {
    with_body(
        Request::builder().uri(format!("https://web.test{path}")),
        "",
    )
}

/// How many request log lines name `path`.
fn request_lines(logs: &Tape, path: &str) -> usize {
    log_text(logs)
        .lines()
        .filter(|l| l.contains("mc_proxy::request") && l.contains(&format!("path=\"{path}\"")))
        .count()
}

#[tokio::test]
async fn a_routes_access_log_switched_through_the_api_applies_to_the_next_request_of_an_open_connection()
 {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;
    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    let get = |path: &str| web_get(path);
    let logged = |path: &str| request_lines(&logs, path);

    // Off by default: no line.
    assert_eq!(ask_h2(&mut client, get("/before")).await.status, 200);

    let mut admin = proxy.admin().await;
    let on = RoutePatch {
        access_log: Some(true),
        ..RoutePatch::default()
    };
    let (route, _) = admin.update_route(LISTENER, "web.test", on).await.unwrap();
    assert!(route.access_log, "{route:?}");
    assert!(admin.list_routes(None).await.unwrap()[0].route.access_log);
    // The same connection's next request is logged, once.
    assert_eq!(ask_h2(&mut client, get("/on")).await.status, 200);
    assert!(
        wait_for_log(&logs, "path=\"/on\"").await,
        "{}",
        log_text(&logs)
    );
    let line = log_text(&logs)
        .lines()
        .find(|l| l.contains("path=\"/on\""))
        .unwrap()
        .to_owned();
    for field in [
        "route=\"web.test\"",
        "status=200",
        "protocol=\"HTTP/2\"",
        &format!("backend=\"{}\"", backend.addr),
        "outcome=\"complete\"",
    ] {
        assert!(line.contains(field), "no {field} in {line}");
    }
    assert_eq!(logged("/on"), 1);

    let off = RoutePatch {
        access_log: Some(false),
        ..RoutePatch::default()
    };
    admin.update_route(LISTENER, "web.test", off).await.unwrap();
    assert_eq!(ask_h2(&mut client, get("/off")).await.status, 200);
    // A request logged after it would be written by now (this one's answer is read whole).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(logged("/before"), 0, "{}", log_text(&logs));
    assert_eq!(logged("/off"), 0, "{}", log_text(&logs));
}

/// The listener's own access log flag, switched through the API, applies to the next request
/// of an open connection (whatever the route says), is stored, and survives a restart.
#[tokio::test]
async fn a_listeners_access_log_switched_through_the_api_logs_every_route_and_is_kept() {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;
    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    let get = |path: &str| web_get(path);
    let logged = |path: &str| request_lines(&logs, path);
    let mut admin = proxy.admin().await;
    let on = mc_proxy_shared::client::ListenerUpdate {
        access_log: Some(true),
        ..Default::default()
    };
    let (l, _) = admin.update_listener(LISTENER, on).await.unwrap();
    assert!(l.access_log);
    assert_eq!(ask_h2(&mut client, get("/listener-on")).await.status, 200);
    assert!(
        wait_for_log(&logs, "path=\"/listener-on\"").await,
        "{}",
        log_text(&logs)
    );
    assert_eq!(logged("/listener-on"), 1);
    assert!(!admin.list_routes(None).await.unwrap()[0].route.access_log);

    // Stored: a restart on the same database keeps it.
    drop((client, admin));
    let dir = proxy.stop_and_keep_dir().await;
    let proxy = Proxy::start_in(dir, "[[listeners]]\naddr = \"127.0.0.1:0\"").await;
    let status = proxy.admin().await.status().await.unwrap();
    assert!(status.listeners[0].access_log, "{:?}", status.listeners[0]);
}
