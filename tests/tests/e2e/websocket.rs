//! WebSockets through an L7 route, with a real WebSocket implementation at both ends
//! (tokio-tungstenite): every pairing of client protocol (HTTP/1.1 Upgrade, HTTP/2 extended
//! CONNECT) and backend protocol, messages both ways (4 MiB, fragmented), pings, both close
//! handshakes, refused upgrades and their statuses, backends that cannot or will not take a
//! WebSocket, a backend dying mid-session, and the timeouts and shutdown around a tunnel.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mc_proxy_shared::BackendProtocol;
use mc_proxy_tests::web::{self, H2Backend, timed, web_proxy, web_stats};
use mc_proxy_tests::ws::{self, WsBackend};
use mc_proxy_tests::{Pki, Proxy, ProxyBuilder};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::{self, Message};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    H1,
    H2,
}

async fn backend(side: Side) -> WsBackend {
    match side {
        Side::H1 => WsBackend::h1().await,
        Side::H2 => WsBackend::h2().await,
    }
}

fn protocol(side: Side) -> BackendProtocol {
    match side {
        Side::H1 => BackendProtocol::Http1,
        Side::H2 => BackendProtocol::H2,
    }
}

async fn proxy_for(pki: &Pki, backend: &WsBackend, side: Side) -> Proxy {
    proxy_with(web_proxy(pki, backend.addr).backend_protocol(protocol(side))).await
}

async fn proxy_with(builder: ProxyBuilder) -> Proxy {
    builder.start().await
}

/// The next message, within 10 s.
async fn next<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Option<Result<Message, tungstenite::Error>> {
    timed(ws.next()).await
}

/// 4 MiB that are not all one byte, so a reordered or lost chunk shows.
fn big_payload() -> Vec<u8> {
    (0..4 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

/// Text, binary, 4 MiB, a fragmented message and an idle ping on an open WebSocket, then the
/// client's close handshake; returns once the stream ended.
async fn exercise<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) {
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(ws).await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next(ws).await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );

    let big = big_payload();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next(ws).await.unwrap().unwrap() {
        Message::Binary(echoed) => {
            assert_eq!(echoed.len(), big.len());
            assert!(echoed[..] == big[..], "the 4 MiB message came back altered");
        }
        other => panic!("expected the 4 MiB binary echo, got {other:?}"),
    }

    // One text message in three frames: the backend reassembles it and echoes it whole.
    for (part, opcode, last) in [
        ("frag", OpCode::Data(Data::Text), false),
        ("men", OpCode::Data(Data::Continue), false),
        ("ted", OpCode::Data(Data::Continue), true),
    ] {
        ws.send(Message::Frame(Frame::message(
            part.as_bytes().to_vec(),
            opcode,
            last,
        )))
        .await
        .unwrap();
    }
    assert_eq!(
        next(ws).await.unwrap().unwrap(),
        Message::text("fragmented")
    );

    // A ping after a quiet spell is answered with its payload.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(ws).await.unwrap().unwrap(),
        Message::Pong(b"are you there".to_vec().into())
    );

    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    match next(ws).await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Normal);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected the backend's close reply, got {other:?}"),
    }
    assert!(
        next(ws).await.is_none(),
        "the stream ends after the close handshake"
    );
}

/// What the backend must have seen of a WebSocket from `client` (the proxy's
/// translation) and what the route's counters say.
fn check_backend_side(proxy: &Proxy, backend: &WsBackend, client: Side, side: Side) {
    let hs = backend.handshake(0);
    assert_eq!(hs.path, "/chat?room=1");
    assert_eq!(hs.header("sec-websocket-protocol"), "echo");
    assert_eq!(hs.header("sec-websocket-version"), "13");
    assert_eq!(hs.header("x-forwarded-for"), "127.0.0.1");
    assert_eq!(hs.header("x-forwarded-proto"), "https");
    match side {
        Side::H1 => {
            assert_eq!(hs.method, "GET");
            assert_eq!(hs.version, http::Version::HTTP_11);
            assert_eq!(hs.authority.as_deref(), Some("web.test"));
            assert!(hs.header("upgrade").eq_ignore_ascii_case("websocket"));
            assert!(hs.header("connection").eq_ignore_ascii_case("upgrade"));
            // tungstenite's server checked the key's form itself; the one from an HTTP/2
            // client was made by the proxy.
            assert_eq!(hs.header("sec-websocket-key").len(), 24);
        }
        Side::H2 => {
            assert_eq!(hs.method, "CONNECT");
            assert_eq!(hs.version, http::Version::HTTP_2);
            assert_eq!(hs.protocol.as_deref(), Some("websocket"));
            assert_eq!(hs.authority.as_deref(), Some("web.test"));
            assert!(hs.headers.get("sec-websocket-key").is_none());
            assert!(hs.headers.get("upgrade").is_none());
        }
    }
    assert_eq!(backend.closes(), [(1000, "bye".to_owned())]);
    let stats = web_stats(proxy);
    assert_eq!(stats.requests, 1);
    match client {
        Side::H1 => assert_eq!(stats.responses, [1, 0, 0, 0, 0], "one 101"),
        Side::H2 => assert_eq!(stats.responses, [0, 1, 0, 0, 0], "one 200"),
    }
    assert_eq!(stats.backend_errors, 0);
    // TLS bytes on the client connection: the 4 MiB went each way.
    assert!(stats.bytes_up > 4 * 1024 * 1024, "{}", stats.bytes_up);
    assert!(stats.bytes_down > 4 * 1024 * 1024, "{}", stats.bytes_down);
}

async fn h1_client_to(side: Side) {
    let pki = Pki::new();
    let backend = backend(side).await;
    let proxy = proxy_for(&pki, &backend, side).await;
    let (mut ws, resp) = ws::h1_websocket(proxy.addr(), &pki, "/chat?room=1", Some("echo"))
        .await
        .unwrap();
    // tungstenite checked the status, Upgrade, Connection and Sec-WebSocket-Accept.
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "echo");
    exercise(&mut ws).await;
    check_backend_side(&proxy, &backend, Side::H1, side);
}

async fn h2_client_to(side: Side) {
    let pki = Pki::new();
    let backend = backend(side).await;
    let proxy = proxy_for(&pki, &backend, side).await;
    let mut sender = web::h2_client(proxy.addr(), "web.test", &pki).await;
    let (mut ws, head) = ws::h2_websocket(&mut sender, "/chat?room=1", Some("echo"))
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["sec-websocket-protocol"], "echo");
    assert!(head.headers.get("sec-websocket-accept").is_none());
    exercise(&mut ws).await;
    check_backend_side(&proxy, &backend, Side::H2, side);
}

#[tokio::test]
async fn http1_client_to_http1_backend() {
    h1_client_to(Side::H1).await;
}

#[tokio::test]
async fn http1_client_to_http2_backend_uses_extended_connect() {
    h1_client_to(Side::H2).await;
}

#[tokio::test]
async fn http2_client_to_http1_backend_is_translated_to_an_upgrade() {
    h2_client_to(Side::H1).await;
}

#[tokio::test]
async fn http2_client_to_http2_backend_stays_extended_connect() {
    h2_client_to(Side::H2).await;
}

#[tokio::test]
async fn a_websocket_is_logged_once_when_its_answer_is_given() {
    let (_guard, logs) = mc_proxy_tests::capture_logs();
    let pki = Pki::new();
    let backend = backend(Side::H1).await;
    let proxy = proxy_with(
        web_proxy(&pki, backend.addr)
            .backend_protocol(protocol(Side::H1))
            .access_log(),
    )
    .await;
    let (mut ws, resp) = ws::h1_websocket(proxy.addr(), &pki, "/chat?room=1", Some("echo"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    // Logged with the tunnel still open: at the answer, not at the tunnel's end.
    assert!(
        mc_proxy_tests::wait_for_log(&logs, "mc_proxy::request").await,
        "{}",
        mc_proxy_tests::log_text(&logs)
    );
    let line = mc_proxy_tests::log_text(&logs)
        .lines()
        .find(|l| l.contains("mc_proxy::request"))
        .unwrap()
        .to_owned();
    for field in [
        "status=101".to_owned(),
        "path=\"/chat?room=1\"".to_owned(),
        format!("backend=\"{}\"", backend.addr),
        "outcome=\"complete\"".to_owned(),
    ] {
        assert!(line.contains(&field), "no {field} in {line}");
    }
    exercise(&mut ws).await;
    let log = mc_proxy_tests::log_text(&logs);
    assert_eq!(log.matches("mc_proxy::request").count(), 1, "{log}");
}

#[tokio::test]
async fn a_close_from_the_backend_reaches_the_client_with_its_code() {
    for (client, side) in [
        (Side::H1, Side::H1),
        (Side::H2, Side::H1),
        (Side::H1, Side::H2),
    ] {
        let pki = Pki::new();
        let backend = backend(side).await;
        let proxy = proxy_for(&pki, &backend, side).await;
        let mut h2 = None;
        let mut h1_ws = None;
        let mut h2_ws = None;
        match client {
            Side::H1 => {
                h1_ws = Some(
                    ws::h1_websocket(proxy.addr(), &pki, "/", None)
                        .await
                        .unwrap()
                        .0,
                )
            }
            Side::H2 => {
                let sender = h2.insert(web::h2_client(proxy.addr(), "web.test", &pki).await);
                h2_ws = Some(ws::h2_websocket(sender, "/", None).await.unwrap().0);
            }
        }
        async fn server_closes<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) {
            ws.send(Message::text("close:4001")).await.unwrap();
            match next(ws).await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    assert_eq!(u16::from(frame.code), 4001);
                    assert_eq!(frame.reason.as_str(), "server closing");
                }
                other => panic!("expected the backend's close, got {other:?}"),
            }
            // tungstenite replied to the close; the backend then closes the connection.
            assert!(next(ws).await.is_none());
        }
        match (&mut h1_ws, &mut h2_ws) {
            (Some(ws), _) => server_closes(ws).await,
            (_, Some(ws)) => server_closes(ws).await,
            _ => unreachable!(),
        }
        // The client's reply to the close, as the backend received it.
        assert_eq!(
            backend.closes(),
            [(4001, "server closing".to_owned())],
            "{client:?} to {side:?}"
        );
    }
}

#[tokio::test]
async fn two_websockets_share_one_http2_client_connection() {
    let pki = Pki::new();
    let backend = WsBackend::h1().await;
    let proxy = proxy_for(&pki, &backend, Side::H1).await;
    let mut sender = web::h2_client(proxy.addr(), "web.test", &pki).await;
    let (mut a, _) = ws::h2_websocket(&mut sender, "/a", None).await.unwrap();
    let (mut b, _) = ws::h2_websocket(&mut sender, "/b", None).await.unwrap();
    b.send(Message::text("to b")).await.unwrap();
    a.send(Message::text("to a")).await.unwrap();
    assert_eq!(next(&mut a).await.unwrap().unwrap(), Message::text("to a"));
    assert_eq!(next(&mut b).await.unwrap().unwrap(), Message::text("to b"));
    // Each took a backend connection of its own.
    assert_eq!(backend.handshakes.lock().unwrap().len(), 2);
    a.close(None).await.unwrap();
    while next(&mut a).await.is_some() {}
    // The other one is unaffected.
    b.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        next(&mut b).await.unwrap().unwrap(),
        Message::text("still here")
    );
}

/// An HTTP/1.1 request with `headers` on a fresh connection, read whole.
async fn h1_request(proxy: &Proxy, pki: &Pki, path: &str, headers: &[(&str, &str)]) -> web::Answer {
    let mut sender = web::h1_client(proxy.addr(), "web.test", pki).await;
    let mut req = http::Request::builder()
        .uri(path)
        .header("host", "web.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = timed(sender.send_request(web::with_body(req, "")))
        .await
        .unwrap();
    web::answer(resp).await
}

#[tokio::test]
async fn upgrades_other_than_websocket_are_refused_with_501() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;
    for upgrade in ["h2c", "TLS/1.0", "IRC/6.9"] {
        let answer = h1_request(
            &proxy,
            &pki,
            "/chat",
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", upgrade),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
        )
        .await;
        assert_eq!(answer.status, 501, "Upgrade: {upgrade}");
        assert_eq!(
            answer.body,
            "not implemented: the only upgrade supported is Upgrade: websocket\n"
        );
    }

    // HTTP/2: CONNECT without :protocol (a plain tunnel), and with another protocol.
    let mut sender = web::h2_client(proxy.addr(), "web.test", &pki).await;
    let plain = http::Request::builder()
        .method("CONNECT")
        .uri("web.test:443")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let answer = web::answer(timed(sender.send_request(plain)).await.unwrap()).await;
    assert_eq!(answer.status, 501);
    assert!(
        answer.body.starts_with("not implemented: CONNECT"),
        "{}",
        answer.body
    );
    let mut other = http::Request::builder()
        .method("CONNECT")
        .uri("https://web.test/chat")
        .header("sec-websocket-version", "13")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    other
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("webtransport"));
    let answer = web::answer(timed(sender.send_request(other)).await.unwrap()).await;
    assert_eq!(answer.status, 501);

    assert_eq!(backend.requests(), 0, "nothing reached the backend");
    let stats = web_stats(&proxy);
    assert_eq!(stats.responses, [0, 0, 0, 0, 5]);
    assert_eq!(stats.backend_errors, 0, "refusals are the client's doing");
}

#[tokio::test]
async fn broken_websocket_handshakes_get_400_and_426() {
    let pki = Pki::new();
    let backend = WsBackend::h1().await;
    let proxy = proxy_for(&pki, &backend, Side::H1).await;
    let base = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let answer = h1_request(
        &proxy,
        &pki,
        "/chat",
        &[&base[..], &[("sec-websocket-version", "8")]].concat(),
    )
    .await;
    assert_eq!(answer.status, 426);
    assert_eq!(answer.header("sec-websocket-version"), "13");
    assert_eq!(
        answer.body,
        "upgrade required: the WebSocket version is 13\n"
    );

    let answer = h1_request(
        &proxy,
        &pki,
        "/chat",
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dG9vIHNob3J0"),
        ],
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body, "bad request: invalid WebSocket handshake\n");
    assert!(backend.handshakes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_http2_backend_without_extended_connect_gets_a_clear_502() {
    let pki = Pki::new();
    // The plain HTTP/2 echo backend does not send SETTINGS_ENABLE_CONNECT_PROTOCOL.
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;
    let text = "bad gateway: the backend does not accept WebSockets over HTTP/2\n";
    match timed(ws::h1_websocket(proxy.addr(), &pki, "/chat", None)).await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 502);
            assert_eq!(resp.body().as_deref(), Some(text.as_bytes()));
        }
        other => panic!("expected a 502, got {:?}", other.map(|(_, r)| r)),
    }
    let mut sender = web::h2_client(proxy.addr(), "web.test", &pki).await;
    let refused = ws::h2_websocket(&mut sender, "/chat", None)
        .await
        .unwrap_err();
    assert_eq!(refused.status, 502);
    assert_eq!(refused.body, text);
    assert_eq!(backend.requests(), 0, "no CONNECT was sent to it");
    assert_eq!(web_stats(&proxy).backend_errors, 2);
}

#[tokio::test]
async fn a_backend_refusal_is_passed_on_as_it_is() {
    for side in [Side::H1, Side::H2] {
        let pki = Pki::new();
        let backend = backend(side).await;
        let proxy = proxy_for(&pki, &backend, side).await;
        match timed(ws::h1_websocket(proxy.addr(), &pki, "/refuse", None)).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403, "{side:?}"),
            other => panic!("expected a 403, got {:?}", other.map(|(_, r)| r)),
        }
        // tungstenite's client does not decode a chunked body; hyper's does.
        let answer = h1_request(
            &proxy,
            &pki,
            "/refuse",
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
        )
        .await;
        assert_eq!(answer.status, 403, "{side:?}");
        assert_eq!(answer.body, "go away");
        let mut sender = web::h2_client(proxy.addr(), "web.test", &pki).await;
        let refused = ws::h2_websocket(&mut sender, "/refuse", None)
            .await
            .unwrap_err();
        assert_eq!(refused.status, 403, "{side:?}");
        assert_eq!(refused.body, "go away");
        assert_eq!(web_stats(&proxy).backend_errors, 0);
    }
}

/// Sends one message, has the backend die `after` it, and returns how the client saw its
/// stream end and how long after the kill was scheduled.
async fn backend_dies<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    backend: WsBackend,
    after: Duration,
) -> (String, Duration) {
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next(ws).await.unwrap().unwrap(), Message::text("ping"));
    let started = Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        backend.kill();
    });
    let end = match next(ws).await {
        None => "end".to_owned(),
        Some(Err(e)) => e.to_string(),
        Some(Ok(msg)) => panic!("expected the end of the stream, got {msg:?}"),
    };
    (end, started.elapsed())
}

#[tokio::test]
async fn a_backend_dying_mid_session_closes_the_client() {
    for (client, side) in [
        (Side::H1, Side::H1),
        (Side::H2, Side::H1),
        (Side::H1, Side::H2),
        (Side::H2, Side::H2),
    ] {
        let pki = Pki::new();
        let backend = backend(side).await;
        let proxy = proxy_for(&pki, &backend, side).await;
        let after = Duration::from_millis(300);
        let (end, took) = match client {
            Side::H1 => {
                let (mut ws, _) = ws::h1_websocket(proxy.addr(), &pki, "/", None)
                    .await
                    .unwrap();
                backend_dies(&mut ws, backend, after).await
            }
            Side::H2 => {
                let mut sender = web::h2_client(proxy.addr(), "web.test", &pki).await;
                let (mut ws, _) = ws::h2_websocket(&mut sender, "/", None).await.unwrap();
                backend_dies(&mut ws, backend, after).await
            }
        };
        // No close frame came (the backend died): the stream ends without a handshake.
        assert_eq!(
            end, "WebSocket protocol error: Connection reset without closing handshake",
            "{client:?} to {side:?}"
        );
        assert!(
            took >= after,
            "ended {took:?} after, before the backend died"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}

#[tokio::test]
async fn a_live_websocket_outlasts_the_keepalive_timeout() {
    let pki = Pki::new();
    let backend = WsBackend::h1().await;
    let proxy = proxy_with(
        web_proxy(&pki, backend.addr)
            .backend_protocol(BackendProtocol::Http1)
            .keepalive_timeout(Duration::from_millis(200)),
    )
    .await;
    let (mut h1, _) = ws::h1_websocket(proxy.addr(), &pki, "/", None)
        .await
        .unwrap();
    let mut sender = web::h2_client(proxy.addr(), "web.test", &pki).await;
    let (mut h2, _) = ws::h2_websocket(&mut sender, "/", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    h1.send(Message::text("one")).await.unwrap();
    h2.send(Message::text("two")).await.unwrap();
    assert_eq!(next(&mut h1).await.unwrap().unwrap(), Message::text("one"));
    assert_eq!(next(&mut h2).await.unwrap().unwrap(), Message::text("two"));
}

#[tokio::test]
async fn an_idle_websocket_is_closed_after_idle_timeout() {
    let pki = Pki::new();
    let backend = WsBackend::h1().await;
    let idle = Duration::from_millis(400);
    let proxy = proxy_with(
        web_proxy(&pki, backend.addr)
            .backend_protocol(BackendProtocol::Http1)
            .idle_timeout(idle),
    )
    .await;
    // Each tunnel's idle clock starts at its last byte, which is after the moment its
    // handshake began: measured from there, the close can come no sooner than `idle`.
    let h1_began = Instant::now();
    let (mut h1, _) = ws::h1_websocket(proxy.addr(), &pki, "/", None)
        .await
        .unwrap();
    let mut sender = web::h2_client(proxy.addr(), "web.test", &pki).await;
    let h2_began = Instant::now();
    let (mut h2, _) = ws::h2_websocket(&mut sender, "/", None).await.unwrap();
    let started = Instant::now();
    let ((a, h1_took), (b, h2_took)) =
        tokio::join!(async { (next(&mut h1).await, h1_began.elapsed()) }, async {
            (next(&mut h2).await, h2_began.elapsed())
        },);
    let took = started.elapsed();
    assert!(!matches!(a, Some(Ok(_))), "{a:?}");
    assert!(!matches!(b, Some(Ok(_))), "{b:?}");
    assert!(h1_took >= idle, "HTTP/1.1 tunnel closed after {h1_took:?}");
    assert!(h2_took >= idle, "HTTP/2 tunnel closed after {h2_took:?}");
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
}

#[tokio::test]
async fn shutdown_cuts_a_websocket_at_the_grace_period() {
    let pki = Pki::new();
    let backend = WsBackend::h1().await;
    let grace = Duration::from_millis(600);
    let mut proxy = proxy_with(
        web_proxy(&pki, backend.addr)
            .backend_protocol(BackendProtocol::Http1)
            .shutdown_timeout(grace),
    )
    .await;
    let (mut h1, _) = ws::h1_websocket(proxy.addr(), &pki, "/", None)
        .await
        .unwrap();
    let mut sender = web::h2_client(proxy.addr(), "web.test", &pki).await;
    let (mut h2, _) = ws::h2_websocket(&mut sender, "/", None).await.unwrap();
    let started = Instant::now();
    let stopping = tokio::spawn(async move {
        proxy.stop().await;
        proxy
    });
    // Draining: the tunnels still carry messages.
    tokio::time::sleep(Duration::from_millis(150)).await;
    h1.send(Message::text("during drain")).await.unwrap();
    assert_eq!(
        next(&mut h1).await.unwrap().unwrap(),
        Message::text("during drain")
    );
    h2.send(Message::text("during drain")).await.unwrap();
    assert_eq!(
        next(&mut h2).await.unwrap().unwrap(),
        Message::text("during drain")
    );
    let (a, b) = tokio::join!(next(&mut h1), next(&mut h2));
    assert!(!matches!(a, Some(Ok(_))), "{a:?}");
    assert!(!matches!(b, Some(Ok(_))), "{b:?}");
    let _proxy = timed(stopping).await.unwrap();
    let took = started.elapsed();
    assert!(took >= grace, "stopped after {took:?}");
}
