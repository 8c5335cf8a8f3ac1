//! L7 (TLS termination + HTTP reverse proxy) end to end: real rustls/hyper clients, real h2c
//! and TLS backends, the real daemon pipeline on 127.0.0.1 port 0.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use mc_proxy_tests::web::*;
use mc_proxy_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy with one L7 route `web.test` to `backend`, to finish (and start) with more
/// settings.
/// How the L7 client sees an idle connection closed: the daemon ends the TCP connection
/// without a TLS close_notify, so rustls reports an unexpected EOF. (With a close_notify it
/// would be `Ok`; should the daemon start sending one, this is the line to change.)
const IDLE_CLOSE: Result<(), std::io::ErrorKind> = Err(std::io::ErrorKind::UnexpectedEof);

#[tokio::test]
async fn h2_client_reaches_h2c_backend_with_forwarding_headers() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    let req = Request::builder()
        .method("POST")
        .uri("https://web.test/echo?x=1")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-real-ip", "1.1.1.1")
        .header("x-forwarded-proto", "http")
        .header("te", "trailers")
        .header("x-custom", "kept");
    let resp = answer(
        timed(client.send_request(with_body(req, "hello h2")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "hello h2");
    assert_eq!(resp.header("x-echo-method"), "POST");
    assert_eq!(resp.header("x-echo-path"), "/echo?x=1");

    let seen = backend.seen(0);
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.authority.as_deref(), Some("web.test"));
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.body, b"hello h2");

    // A second request reuses the backend connection.
    let req = Request::builder().uri("https://web.test/two");
    let resp = answer(
        timed(client.send_request(with_body(req, "")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        backend.raw.lock().unwrap().len(),
        1,
        "one backend connection"
    );

    let stats = web_stats(&proxy);
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.responses, [0, 2, 0, 0, 0]);
    assert!(stats.bytes_up > 0 && stats.bytes_down > 0, "{stats:?}");
}

#[tokio::test]
async fn h1_client_is_forwarded_as_h2_without_connection_headers() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let mut client = h1_client(proxy.addr(), "web.test", &pki).await;
    let req = Request::builder()
        .method("PUT")
        .uri("/upload")
        .header("host", format!("Web.Test:{}", proxy.addr().port()))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("x-forwarded-for", "198.51.100.1, 198.51.100.2");
    let resp = answer(
        timed(client.send_request(with_body(req, "hello h1")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "hello h1");

    let seen = backend.seen(0);
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.path, "/upload");
    assert_eq!(
        seen.authority.as_deref(),
        Some(format!("Web.Test:{}", proxy.addr().port()).as_str()),
        "the client's authority is kept"
    );
    for gone in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "host",
    ] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the backend"
        );
    }
    assert_eq!(
        seen.headers["x-forwarded-for"],
        "198.51.100.1, 198.51.100.2, 127.0.0.1"
    );

    // Same connection, next request.
    let req = Request::builder().uri("/again").header("host", "web.test");
    let resp = answer(
        timed(client.send_request(with_body(req, "")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(web_stats(&proxy).requests, 2);
}

#[tokio::test]
async fn another_hostname_on_an_established_connection_gets_421() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let mut h2 = h2_client(proxy.addr(), "web.test", &pki).await;
    let req = Request::builder().uri("https://other.test/");
    let resp = answer(timed(h2.send_request(with_body(req, ""))).await.unwrap()).await;
    assert_eq!(resp.status, 421);
    let req = Request::builder().uri("https://web.test:443/ok");
    let resp = answer(timed(h2.send_request(with_body(req, ""))).await.unwrap()).await;
    assert_eq!(resp.status, 200, "the connection stays usable");

    let mut h1 = h1_client(proxy.addr(), "web.test", &pki).await;
    let req = Request::builder().uri("/").header("host", "other.test");
    let resp = answer(timed(h1.send_request(with_body(req, ""))).await.unwrap()).await;
    assert_eq!(resp.status, 421);
    let req = Request::builder().uri("/ok").header("host", "web.test");
    let resp = answer(timed(h1.send_request(with_body(req, ""))).await.unwrap()).await;
    assert_eq!(resp.status, 200);

    assert_eq!(
        backend.requests(),
        2,
        "misdirected requests never reach the backend"
    );
    let stats = web_stats(&proxy);
    assert_eq!(stats.responses, [0, 2, 0, 2, 0]);
}

#[tokio::test]
async fn backend_down_gives_502_and_the_connection_recovers() {
    let pki = Pki::new();
    let dead = DeadBackend::new();
    let proxy = web_proxy(&pki, dead.addr).start().await;

    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    let req = Request::builder().uri("https://web.test/");
    let resp = answer(
        timed(client.send_request(with_body(req, "")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 502);
    assert!(resp.body.contains("bad gateway"), "{}", resp.body);

    let backend = H2Backend::start_with(H2Options {
        listener: Some(dead.listen()),
        ..H2Options::default()
    })
    .await;
    let req = Request::builder().uri("https://web.test/up");
    let resp = answer(
        timed(client.send_request(with_body(req, "")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200, "the same client connection redials");
    assert_eq!(backend.requests(), 1);

    let stats = web_stats(&proxy);
    assert_eq!(stats.backend_errors, 1);
    assert_eq!(stats.responses, [0, 1, 0, 0, 1]);
}

#[tokio::test]
async fn a_request_its_http2_client_resets_before_the_answer_is_logged_with_status_0() {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).access_log().start().await;
    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    // `/hang` never answers: the client gives up, which resets the stream.
    let req = Request::builder().uri("https://web.test/hang");
    let waiting = client.send_request(with_body(req, ""));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), waiting)
            .await
            .is_err()
    );
    assert!(
        wait_for_log(&logs, "path=\"/hang\"").await,
        "{}",
        log_text(&logs)
    );
    let log = log_text(&logs);
    let line = log.lines().find(|l| l.contains("path=\"/hang\"")).unwrap();
    for field in [
        "status=0".to_owned(),
        "outcome=\"client_closed\"".to_owned(),
        // The backend it was waiting for.
        format!("backend=\"{}\"", backend.addr),
        "protocol=\"HTTP/2\"".to_owned(),
    ] {
        assert!(line.contains(&field), "no {field} in {line}");
    }
    // About the 200 ms the client waited (a lower bound: the line is not early). The
    // client's clock started before its request left, the proxy's when the head arrived: a
    // few ms of loopback and scheduling between them, not more.
    let ms: u64 = line
        .split(" duration_ms=")
        .nth(1)
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(ms >= 180, "{line}");
    // The connection serves on, and its next request is logged as usual.
    let req = Request::builder().uri("https://web.test/next");
    assert_eq!(ask_h2(&mut client, with_body(req, "")).await.status, 200);
    assert!(wait_for_log(&logs, "path=\"/next\"").await);
}

#[tokio::test]
async fn http1_keepalive_requests_are_logged_each_at_its_response_end() {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).access_log().start().await;
    let mut client = h1_client(proxy.addr(), "web.test", &pki).await;
    for (i, body) in ["", "twelve bytes"].iter().enumerate() {
        let req = Request::post(format!("https://web.test/k{i}")).header("host", "web.test");
        let answer = ask_h1(&mut client, with_body(req, body)).await;
        assert_eq!(answer.status, 200);
        // The connection stays open: the line comes with the response, not with the close.
        let needle = format!("path=\"/k{i}\"");
        assert!(wait_for_log(&logs, &needle).await, "{}", log_text(&logs));
        let log = log_text(&logs);
        let line = log.lines().find(|l| l.contains(&needle)).unwrap();
        assert!(line.contains("protocol=\"HTTP/1.1\""), "{line}");
        // What carries nothing is left out: no retry, no error.
        assert!(
            !line.contains("retries=") && !line.contains("error="),
            "{line}"
        );
        assert!(
            line.contains(&format!(" bytes_in={} ", body.len())),
            "{line}"
        );
        // The echo backend sends the body back.
        assert!(
            line.contains(&format!(" bytes_out={} ", answer.body.len())),
            "{line}"
        );
    }
    assert!(!log_text(&logs).contains("connection closed"));
}

#[tokio::test]
async fn backend_that_does_not_finish_connecting_gives_504() {
    let pki = Pki::new();
    // Accepts TCP and never answers the TLS handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = web_proxy(&pki, silent.local_addr().unwrap())
        .backend_tls()
        .connect_timeout(Duration::from_millis(300))
        .start()
        .await;
    let mut client = h1_client(proxy.addr(), "web.test", &pki).await;
    let req = Request::builder().uri("/").header("host", "web.test");
    let resp = answer(
        timed(client.send_request(with_body(req, "")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 504);
    assert_eq!(web_stats(&proxy).responses, [0, 0, 0, 0, 1]);
    drop(silent);
}

#[tokio::test]
async fn backend_tls_verifies_the_backend_against_backend_ca() {
    let pki = Pki::new();
    let backend_pki = Pki::new();
    let backend = H2Backend::start_with(H2Options {
        tls: Some((&backend_pki, &["web.test"])),
        ..H2Options::default()
    })
    .await;
    // Signed by a CA the proxy does not trust.
    let stranger_pki = Pki::new();
    let stranger = H2Backend::start_with(H2Options {
        tls: Some((&stranger_pki, &["bad.test"])),
        ..H2Options::default()
    })
    .await;
    let proxy = ProxyBuilder::new()
        .backend_ca(&backend_pki)
        .route("web.test", backend.addr)
        .l7(&pki)
        .backend_tls()
        .route("bad.test", stranger.addr)
        .l7(&pki)
        .backend_tls()
        .start()
        .await;

    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    let req = Request::builder().uri("https://web.test/tls");
    let resp = answer(
        timed(client.send_request(with_body(req, "x")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(backend.seen(0).path, "/tls");
    assert_eq!(backend.seen(0).headers["x-forwarded-proto"], "https");

    let mut client = h2_client(proxy.addr(), "bad.test", &pki).await;
    let req = Request::builder().uri("https://bad.test/");
    let resp = answer(
        timed(client.send_request(with_body(req, "")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 502);
    assert_eq!(stranger.requests(), 0);
}

#[tokio::test]
async fn send_proxy_protocol_writes_the_header_before_the_h2_preface() {
    let pki = Pki::new();
    let backend = H2Backend::start_with(H2Options {
        proxied: true,
        ..H2Options::default()
    })
    .await;
    let proxy = web_proxy(&pki, backend.addr).send_proxy().start().await;

    let tls = tls_to_proxy(proxy.addr(), "web.test", &pki, &[b"h2"])
        .await
        .unwrap();
    let client_addr = tls.get_ref().0.local_addr().unwrap();
    let (mut client, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::builder().uri("https://web.test/pp");
    let resp = answer(
        timed(client.send_request(with_body(req, "")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200);

    let header = backend.headers.lock().unwrap()[0].clone();
    assert_eq!(header.source, Some(client_addr));
    assert_eq!(header.destination, Some(proxy.addr()));
    let raw = backend.raw.lock().unwrap()[0].lock().unwrap().clone();
    assert!(
        raw.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        "HTTP/2 preface right after the PROXY header"
    );
}

#[tokio::test]
async fn l4_and_l7_routes_share_a_listener() {
    let pki = Pki::new();
    let h2 = H2Backend::start().await;
    let passthrough = TlsBackend::start(&pki, &["raw.test"]).await;
    let proxy = ProxyBuilder::new()
        .route("raw.test", passthrough.addr)
        .route("web.test", h2.addr)
        .l7(&pki)
        .start()
        .await;

    let mut raw = tls_connect(proxy.addr(), "raw.test", pki.client_config())
        .await
        .unwrap();
    let answer_raw = timed(send_and_finish(&mut raw, b"ping")).await.unwrap();
    assert_eq!(answer_raw, b"pingbye from raw.test\n");

    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    let req = Request::builder().uri("https://web.test/l7");
    let resp = answer(
        timed(client.send_request(with_body(req, "")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(h2.seen(0).path, "/l7");
}

/// What a TLS client that offers `groups` negotiates with the proxy, and the status line of
/// one HTTP/1.1 request on that connection.
async fn negotiated_group(
    proxy: &Proxy,
    pki: &Pki,
    groups: &[rustls::NamedGroup],
) -> (rustls::NamedGroup, rustls::HandshakeKind, String) {
    let config = pki.client_config_with_groups(groups);
    let mut tls = timed(tls_to_proxy_with(proxy.addr(), "web.test", config))
        .await
        .unwrap();
    let (_, conn) = tls.get_ref();
    let group = conn.negotiated_key_exchange_group().unwrap().name();
    let kind = conn.handshake_kind().unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    timed(tls.read_to_end(&mut answer)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    (group, kind, answer.lines().next().unwrap_or("").to_owned())
}

#[tokio::test]
async fn a_browser_offering_x25519mlkem768_gets_it_and_others_keep_their_group() {
    use rustls::NamedGroup::{X25519, X25519MLKEM768, secp256r1};
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    // Chrome's and Firefox's order: the hybrid first, X25519 as the fallback share. The proxy
    // takes the hybrid without a HelloRetryRequest.
    let (group, kind, status) = negotiated_group(&proxy, &pki, &[X25519MLKEM768, X25519]).await;
    assert_eq!(group, X25519MLKEM768);
    assert_eq!(kind, rustls::HandshakeKind::Full);
    assert_eq!(status, "HTTP/1.1 200 OK");

    // A client without it negotiates what it offers.
    for offered in [X25519, secp256r1] {
        let (group, kind, status) = negotiated_group(&proxy, &pki, &[offered]).await;
        assert_eq!((group, kind), (offered, rustls::HandshakeKind::Full));
        assert_eq!(status, "HTTP/1.1 200 OK");
    }
    // A client that lists the hybrid but sent only an X25519 share is answered with that
    // share's group, not asked again (no extra round trip for a cautious client).
    let (group, _, status) = negotiated_group(&proxy, &pki, &[X25519, X25519MLKEM768]).await;
    assert_eq!(group, X25519);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(web_stats(&proxy).requests, 4);
}

#[tokio::test]
async fn client_that_distrusts_the_certificate_fails_cleanly_and_the_daemon_serves_on() {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let other = Pki::new();
    let err = tls_to_proxy(proxy.addr(), "web.test", &other, &[b"h2"])
        .await
        .expect_err("the client must refuse our certificate");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(wait_for_log(&logs, "tls_handshake_failed").await);

    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    let req = Request::builder().uri("https://web.test/");
    let resp = answer(
        timed(client.send_request(with_body(req, "")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(web_stats(&proxy).requests, 1);
    let counters = &proxy.state.listeners()[0].counters;
    assert_eq!(
        counters.resets.load(Ordering::Relaxed),
        0,
        "closed, not reset"
    );
    // Counted by why: the client's alert refused the certificate.
    use mc_proxy_shared::TlsFailure;
    let by_reason: Vec<(TlsFailure, u64)> = TlsFailure::ALL
        .iter()
        .map(|r| (*r, counters.tls_failures(*r)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        by_reason,
        [(TlsFailure::CertificateRejected, 1)],
        "{}",
        log_text(&logs)
    );
}

#[tokio::test]
async fn a_client_offering_no_common_alpn_or_hanging_up_is_counted_by_reason() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;
    // Neither h2 nor http/1.1 offered: rustls refuses (RFC 7301 no_application_protocol).
    let err = tls_to_proxy(proxy.addr(), "web.test", &pki, &[b"spdy/3"])
        .await
        .expect_err("no protocol in common");
    assert!(!err.to_string().is_empty());
    // A full ClientHello, then gone before the handshake ends.
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let mut hello = Vec::new();
    rustls::ClientConnection::new(pki.client_config(), "web.test".try_into().unwrap())
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    tcp.write_all(&hello).await.unwrap();
    drop(tcp);
    use mc_proxy_shared::TlsFailure;
    let counters = &proxy.state.listeners()[0].counters;
    timed(async {
        while counters.tls_failures(TlsFailure::NoAlpn) < 1
            || counters.tls_failures(TlsFailure::ClientClosed) < 1
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(counters.tls_failures(TlsFailure::CertificateRejected), 0);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_warned_about_at_load() {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let _proxy = ProxyBuilder::new()
        .route("web.test", backend.addr)
        .l7_cert_for(&pki, &["other.test"])
        .start()
        .await;
    assert!(
        log_text(&logs).contains("does not cover web.test"),
        "{}",
        log_text(&logs)
    );
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let mut client = h1_client(proxy.addr(), "web.test", &pki).await;
    let req = Request::builder().uri("/sse").header("host", "web.test");
    let resp = timed(client.send_request(with_body(req, "")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = timed(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: one\n\n");
    // Only now may the backend send the second event.
    backend.release.notify_one();
    let second = timed(body.frame()).await.unwrap().unwrap();
    assert_eq!(second.into_data().unwrap(), "data: two\n\n");
    assert!(timed(body.frame()).await.is_none(), "the stream ends");
}

#[tokio::test]
async fn shutdown_drains_an_open_stream_then_closes_the_connection() {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let mut proxy = web_proxy(&pki, backend.addr).start().await;

    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    let req = Request::builder().uri("https://web.test/sse");
    let resp = timed(client.send_request(with_body(req, "")))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = timed(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: one\n\n");

    // Shutdown starts: the client is told (GOAWAY) but its open stream may finish.
    proxy.shutdown.cancel();
    backend.release.notify_one();
    let second = timed(body.frame()).await.unwrap().unwrap();
    assert_eq!(second.into_data().unwrap(), "data: two\n\n");
    // The stream ends (h2 may close it with an empty DATA frame).
    let rest = timed(body.collect()).await.unwrap().to_bytes();
    assert!(rest.is_empty(), "{rest:?}");
    // The drained connection closes and the server returns well before the 30 s grace.
    timed(proxy.stop()).await;
    assert!(
        log_text(&logs).contains("outcome=\"drained\""),
        "{}",
        log_text(&logs)
    );
}

/// A client that connected just before shutdown (handshake done, request on its way) gets
/// its request served, with `Connection: close`, instead of a reset: what every connection a
/// listener accepted in its last moments is, and during an upgrade there are many.
#[tokio::test]
async fn shutdown_serves_the_first_request_of_a_connection_that_had_not_sent_it_yet() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let mut proxy = web_proxy(&pki, backend.addr).start().await;
    let mut tls = tls_to_proxy(proxy.addr(), "web.test", &pki, &[b"http/1.1"])
        .await
        .unwrap();
    proxy.shutdown.cancel();
    // Well after the shutdown began: the connection waits for its request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    timed(tls.read_to_end(&mut out)).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    timed(proxy.stop()).await;
}

#[tokio::test]
async fn connection_log_line_is_written_once_with_outcome() {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;
    let mut tls = tls_to_proxy(proxy.addr(), "web.test", &pki, &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    timed(tls.read_to_end(&mut out)).await.unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(wait_for_log(&logs, "connection closed").await);
    let text = log_text(&logs);
    assert_eq!(text.matches("connection closed").count(), 1, "{text}");
    assert!(text.contains("outcome=\"closed\""), "{text}");
    let counters = &proxy.state.listeners()[0].counters;
    assert_eq!(counters.resets.load(Ordering::Relaxed), 0);
}

mod grpc {
    use super::*;
    use mc_proxy_tests::grpc::pb::Msg;
    use mc_proxy_tests::grpc::{GrpcBackend, echo_client};
    use tonic::Code;

    async fn setup() -> (Pki, GrpcBackend, Proxy) {
        let pki = Pki::new();
        let backend = GrpcBackend::start().await;
        let proxy = web_proxy(&pki, backend.addr).start().await;
        (pki, backend, proxy)
    }

    fn msg(text: &str) -> Msg {
        Msg {
            text: text.into(),
            ..Msg::default()
        }
    }

    #[tokio::test]
    async fn a_grpc_stream_is_logged_once_its_trailers_are_through() {
        let (_guard, logs) = capture_logs();
        let pki = Pki::new();
        let backend = GrpcBackend::start().await;
        let proxy = web_proxy(&pki, backend.addr).access_log().start().await;
        let mut client = echo_client(proxy.addr(), "web.test", &pki).await;
        let mut stream = timed(client.server_stream(Msg {
            count: 3,
            ..msg("n")
        }))
        .await
        .unwrap()
        .into_inner();
        while timed(stream.message()).await.unwrap().is_some() {}
        assert!(
            wait_for_log(&logs, "mc_proxy::request").await,
            "{}",
            log_text(&logs)
        );
        let log = log_text(&logs);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("mc_proxy::request"))
            .collect();
        assert_eq!(lines.len(), 1, "{log}");
        for field in [
            "method=\"POST\"",
            "protocol=\"HTTP/2\"",
            "status=200",
            "outcome=\"complete\"",
            "path=\"/echo.Echo/",
        ] {
            assert!(lines[0].contains(field), "no {field} in {}", lines[0]);
        }
        // Three length-prefixed messages went back: more than nothing, less than a KiB.
        let out: u64 = lines[0]
            .split(" bytes_out=")
            .nth(1)
            .and_then(|v| v.split(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!((15..1024).contains(&out), "{}", lines[0]);
    }

    #[tokio::test]
    async fn unary_and_server_streaming() {
        let (pki, _backend, proxy) = setup().await;
        let mut client = echo_client(proxy.addr(), "web.test", &pki).await;

        let reply = timed(client.unary(msg("hi"))).await.unwrap().into_inner();
        assert_eq!(reply.text, "hi");

        let mut stream = timed(client.server_stream(Msg {
            count: 3,
            ..msg("n")
        }))
        .await
        .unwrap()
        .into_inner();
        let mut got = Vec::new();
        while let Some(m) = timed(stream.message()).await.unwrap() {
            got.push(m.text);
        }
        assert_eq!(got, ["n 0", "n 1", "n 2"]);
        let stats = web_stats(&proxy);
        assert_eq!(stats.requests, 2);
        assert_eq!(stats.responses, [0, 2, 0, 0, 0]);
    }

    #[tokio::test]
    async fn client_and_bidirectional_streaming() {
        let (pki, _backend, proxy) = setup().await;
        let mut client = echo_client(proxy.addr(), "web.test", &pki).await;

        let upload = tokio_stream::iter(["a", "b", "c"].map(|t| Msg {
            payload: vec![7; 1000],
            ..msg(t)
        }));
        let reply = timed(client.client_stream(upload))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (reply.text.as_str(), reply.count, reply.sleep_ms),
            ("a,b,c", 3, 3000)
        );

        // Each reply arrives before the next message is sent: nothing waits for the end.
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
        let mut replies = timed(client.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
            .unwrap()
            .into_inner();
        for i in 0..3 {
            tx.send(msg(&format!("m{i}"))).await.unwrap();
            let reply = timed(replies.message()).await.unwrap().unwrap();
            assert_eq!(reply.text, format!("echo m{i}"));
        }
        drop(tx);
        assert!(timed(replies.message()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn error_statuses_reach_the_client_with_their_message() {
        let (pki, _backend, proxy) = setup().await;
        let mut client = echo_client(proxy.addr(), "web.test", &pki).await;

        // Trailers-only: the backend fails before sending any message.
        let err = timed(client.unary(Msg {
            fail_code: Code::InvalidArgument as i32,
            ..msg("no such thing")
        }))
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), "no such thing");

        // Trailers after data.
        let mut stream = timed(client.server_stream(Msg {
            count: 2,
            fail_code: Code::PermissionDenied as i32,
            ..msg("x")
        }))
        .await
        .unwrap()
        .into_inner();
        assert_eq!(timed(stream.message()).await.unwrap().unwrap().text, "x 0");
        assert_eq!(timed(stream.message()).await.unwrap().unwrap().text, "x 1");
        let err = timed(stream.message()).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(err.message(), "failed after the messages");

        // The connection is still good.
        let reply = timed(client.unary(msg("after")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.text, "after");
    }

    #[tokio::test]
    async fn eight_mib_messages_pass_both_ways() {
        let (pki, _backend, proxy) = setup().await;
        let mut client = echo_client(proxy.addr(), "web.test", &pki).await;
        let payload: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let reply = tokio::time::timeout(
            Duration::from_secs(20),
            client.unary(Msg {
                payload: payload.clone(),
                ..msg("big")
            }),
        )
        .await
        .expect("8 MiB round trip timed out")
        .unwrap()
        .into_inner();
        assert!(reply.payload == payload, "payload changed on the way");
        let stats = web_stats(&proxy);
        assert!(
            stats.bytes_up > 8 << 20 && stats.bytes_down > 8 << 20,
            "{stats:?}"
        );
    }

    #[tokio::test]
    async fn deadline_expiring_at_the_backend_arrives_as_deadline_exceeded() {
        let (pki, _backend, proxy) = setup().await;
        let mut client = echo_client(proxy.addr(), "web.test", &pki).await;
        let mut req = tonic::Request::new(Msg {
            sleep_ms: 10_000,
            ..msg("slow")
        });
        // The backend gives up DEADLINE_MARGIN (1 s) before this: after about 500 ms.
        req.set_timeout(Duration::from_millis(1500));
        let err = timed(client.unary(req)).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert_eq!(err.message(), "deadline expired at the backend");
    }
}

#[tokio::test]
async fn idle_connection_is_closed_after_idle_timeout() {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr)
        .idle_timeout(Duration::from_millis(300))
        .start()
        .await;
    let mut tls = tls_to_proxy(proxy.addr(), "web.test", &pki, &[b"http/1.1"])
        .await
        .unwrap();
    let sent = std::time::Instant::now();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .unwrap();
    // Keep-alive: the proxy answers, then closes the idle connection by itself.
    let mut out = Vec::new();
    let ended = timed(tls.read_to_end(&mut out)).await;
    let waited = sent.elapsed();
    assert_eq!(ended.map(|_| ()).map_err(|e| e.kind()), IDLE_CLOSE);
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        waited >= Duration::from_millis(280),
        "closed after {waited:?}, before the 300 ms idle timeout"
    );
    assert!(wait_for_log(&logs, "outcome=\"idle_timeout\"").await);
}

/// GET `path` on `web.test` over an HTTP/2 connection to the proxy.
fn get(path: &str) -> Request<ClientBody> {
    with_body(
        Request::builder()
            .method("GET")
            .uri(format!("https://web.test{path}")),
        "",
    )
}

#[tokio::test]
async fn a_silent_backend_is_504_within_connect_timeout() {
    // Accepts TCP, never says a word: no SETTINGS, so no HTTP/2 connection.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let pki = Pki::new();
    let proxy = web_proxy(&pki, addr)
        .connect_timeout(Duration::from_millis(300))
        .start()
        .await;
    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    let started = std::time::Instant::now();
    let resp = answer(timed(client.send_request(get("/"))).await.unwrap()).await;
    let waited = started.elapsed();
    assert_eq!(resp.status, 504, "{}", resp.body);
    assert!(waited >= Duration::from_millis(280), "504 after {waited:?}");
    assert!(waited < Duration::from_secs(5), "504 after {waited:?}");
    let route = proxy.state.listeners()[0].lookup("web.test").unwrap();
    assert_eq!(route.stats.backend_errors.load(Ordering::Relaxed), 1);
    drop(silent);
}

#[tokio::test]
async fn a_backend_that_never_answers_is_504_after_response_timeout_and_the_connection_goes_on() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr)
        .response_timeout(Duration::from_millis(300))
        .start()
        .await;
    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    let started = std::time::Instant::now();
    let resp = answer(timed(client.send_request(get("/hang"))).await.unwrap()).await;
    let waited = started.elapsed();
    assert_eq!(resp.status, 504, "{}", resp.body);
    assert!(
        resp.body.contains("did not answer in time"),
        "{}",
        resp.body
    );
    assert!(waited >= Duration::from_millis(280), "504 after {waited:?}");
    // The same client connection and backend connection serve the next request.
    let resp = answer(timed(client.send_request(get("/after"))).await.unwrap()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-echo-path"), "/after");
}

#[tokio::test]
async fn streams_outlive_the_response_timeout() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr)
        .response_timeout(Duration::from_millis(200))
        .start()
        .await;
    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    let resp = timed(client.send_request(get("/sse"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = timed(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: one\n\n");
    // Well past the response timeout: the stream has its head, so it is not cut.
    tokio::time::sleep(Duration::from_millis(600)).await;
    backend.release.notify_one();
    let second = timed(body.frame()).await.unwrap().unwrap();
    assert_eq!(second.into_data().unwrap(), "data: two\n\n");
}

#[tokio::test]
async fn a_kept_alive_connection_without_requests_is_closed_after_keepalive_timeout() {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr)
        .keepalive_timeout(Duration::from_millis(300))
        .start()
        .await;
    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    // A long request keeps the connection busy past the keep-alive timeout: not closed.
    let resp = timed(client.send_request(get("/sse"))).await.unwrap();
    let mut body = resp.into_body();
    timed(body.frame()).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    backend.release.notify_one();
    timed(body.frame()).await.unwrap().unwrap();
    while let Some(frame) = timed(body.frame()).await {
        frame.unwrap();
    }
    // Now idle: GOAWAY after the keep-alive timeout, and the connection ends.
    let idle_from = std::time::Instant::now();
    timed(async {
        while !client.is_closed() {
            if client.ready().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let waited = idle_from.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
    assert!(
        wait_for_log(&logs, "outcome=\"keepalive_timeout\"").await,
        "{}",
        log_text(&logs)
    );
}

/// How long a new connection that asks nothing lives, and how it is counted: closed after
/// `request_header_timeout` (not the much longer `keepalive_timeout`), outcome
/// `request_header_timeout`.
async fn closed_for_asking_nothing(first_bytes: &[u8], alpn: &[u8], expect_empty: bool) {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr)
        .request_header_timeout(Duration::from_millis(300))
        .keepalive_timeout(Duration::from_secs(10))
        .start()
        .await;
    let mut tls = tls_to_proxy(proxy.addr(), "web.test", &pki, &[alpn])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    let connected = std::time::Instant::now();
    tls.write_all(first_bytes).await.unwrap();
    tls.flush().await.unwrap();
    let mut out = Vec::new();
    let ended = timed(tls.read_to_end(&mut out)).await;
    let waited = connected.elapsed();
    assert_eq!(ended.map(|_| ()).map_err(|e| e.kind()), IDLE_CLOSE);
    if expect_empty {
        // HTTP/2 starts with the client's first bytes: not even the server's SETTINGS before.
        assert!(out.is_empty(), "the proxy sent {out:?}");
    }
    assert!(
        waited >= Duration::from_millis(280),
        "closed after {waited:?}, before the 300 ms request_header_timeout"
    );
    assert!(
        waited < Duration::from_secs(3),
        "closed after {waited:?}: not by request_header_timeout"
    );
    assert!(
        wait_for_log(&logs, "outcome=\"request_header_timeout\"").await,
        "{}",
        log_text(&logs)
    );
    let counters = &proxy.state.listeners()[0].counters;
    assert_eq!(
        counters.closes(mc_proxy_shared::CloseReason::RequestHeaderTimeout),
        1
    );
    assert_eq!(
        counters.closes(mc_proxy_shared::CloseReason::KeepaliveTimeout),
        0
    );
    assert_eq!(backend.requests(), 0);
}

#[tokio::test]
async fn an_h2_client_that_sends_nothing_after_tls_gets_nothing_and_is_closed_after_request_header_timeout()
 {
    closed_for_asking_nothing(b"", b"h2", true).await;
}

#[tokio::test]
async fn an_h2_client_that_sends_its_preface_but_no_request_is_closed_after_request_header_timeout()
{
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(h2raw::frame(0x4, 0, 0, &[]));
    closed_for_asking_nothing(&opening, b"h2", false).await;
}

#[tokio::test]
async fn an_http1_client_that_sends_nothing_or_half_a_head_is_closed_after_request_header_timeout()
{
    closed_for_asking_nothing(b"", b"http/1.1", true).await;
    closed_for_asking_nothing(b"GET / HTTP/1.1\r\nHost: web.test\r\n", b"http/1.1", true).await;
}

/// A client stream that has already sent the first `skip` bytes its user writes: lets a test
/// send the start of a protocol by hand and hand the rest of the conversation to a client.
struct AlreadySent<S> {
    inner: S,
    skip: usize,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for AlreadySent<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for AlreadySent<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            self.skip -= n;
            return std::task::Poll::Ready(Ok(n));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
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

#[tokio::test]
async fn an_h2_preface_that_arrives_in_pieces_is_served() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;
    let mut tls = tls_to_proxy(proxy.addr(), "web.test", &pki, &[b"h2"])
        .await
        .unwrap();
    // The first 10 of the preface's 24 bytes alone, in a record of their own, read by the
    // proxy before the rest exists: what it read first must reach HTTP/2 intact.
    const FIRST: &[u8] = b"PRI * HTTP";
    tls.write_all(FIRST).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let io = AlreadySent {
        inner: tls,
        skip: FIRST.len(),
    };
    let (mut client, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = answer(timed(client.send_request(get("/pieces"))).await.unwrap()).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.header("x-echo-path"), "/pieces");
}

#[tokio::test]
async fn an_l7_catch_all_terminates_tls_for_names_no_other_route_has() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = ProxyBuilder::new()
        .route("*", backend.addr)
        .l7_cert_for(&pki, &["any.test"])
        .start()
        .await;
    let mut client = h2_client(proxy.addr(), "any.test", &pki).await;
    let req = with_body(
        Request::builder().method("GET").uri("https://any.test/x"),
        "",
    );
    let resp = answer(timed(client.send_request(req)).await.unwrap()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(backend.seen(0).authority.as_deref(), Some("any.test"));
    // The misrouting guard still holds: the connection serves the name it was opened for.
    let req = with_body(
        Request::builder().method("GET").uri("https://other.test/x"),
        "",
    );
    let resp = answer(timed(client.send_request(req)).await.unwrap()).await;
    assert_eq!(resp.status, 421);
}

#[tokio::test]
async fn a_health_check_without_sni_reaches_the_l7_no_sni_route_without_a_421() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = ProxyBuilder::new()
        .route("web.test", backend.addr)
        .l7_cert_for(&pki, &["web.test", "127.0.0.1"])
        .no_sni_route("web.test")
        .start()
        .await;
    // An address, not a name: the client sends no SNI, and its Host is the address.
    let mut tls = tls_to_proxy(proxy.addr(), "127.0.0.1", &pki, &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = timed(tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(backend.seen(0).path, "/health");
}
