//! L7 framing rules and abuse limits, end to end: what a client that breaks them sees (the
//! status, the RST_STREAM or GOAWAY code), that the backend saw nothing of it, and that the
//! same connection or a well-behaved neighbour is still served. Hostile HTTP/1.1 is written
//! by hand over TLS; hostile HTTP/2 with the frame writer in `mc_proxy_tests::h2raw`.

use std::time::Duration;

use http::Request;
use mc_proxy::l7::limits::{DEFAULT_MAX_REQUEST_HEAD, MAX_HEADERS};
use mc_proxy_tests::web::*;
use mc_proxy_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn web_proxy(pki: &Pki, backend: std::net::SocketAddr) -> ProxyBuilder {
    ProxyBuilder::new().route("web.test", backend).l7(pki)
}

fn web_stats(proxy: &Proxy) -> mc_proxy::stats::RouteStatsSnapshot {
    proxy.state.listeners[0]
        .lookup("web.test")
        .unwrap()
        .stats
        .snapshot()
}

async fn timed<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

/// Writes one hand-made HTTP/1.1 request (it should say `Connection: close`) over TLS and
/// returns everything the proxy answered until it closed the connection.
async fn raw_h1(proxy: &Proxy, pki: &Pki, request: &[u8]) -> String {
    let mut tls = tls_to_proxy(proxy.addr(), "web.test", pki, &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(request).await.unwrap();
    tls.flush().await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    // The proxy closes without close_notify: the read ends in an error after the answer.
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn two_host_headers_get_400_before_the_backend() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let answer = raw_h1(
        &proxy,
        &pki,
        b"GET / HTTP/1.1\r\nHost: web.test\r\nHost: web.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("exactly one Host"), "{answer}");

    // Two different Hosts: the guard must not pick either.
    let answer = raw_h1(
        &proxy,
        &pki,
        b"GET / HTTP/1.1\r\nHost: web.test\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

    assert_eq!(backend.requests(), 0, "nothing reached the backend");
    assert_eq!(
        web_stats(&proxy).responses,
        [0, 0, 0, 2, 0],
        "counted as 4xx"
    );
}

#[tokio::test]
async fn host_disagreeing_with_an_absolute_target_gets_400() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let answer = raw_h1(
        &proxy,
        &pki,
        b"GET https://web.test/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let answer = raw_h1(&proxy, &pki, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "no Host: {answer}");
    assert_eq!(backend.requests(), 0, "nothing reached the backend");

    // The same target with an agreeing Host is served.
    let answer = raw_h1(
        &proxy,
        &pki,
        b"GET https://web.test/x HTTP/1.1\r\nHost: WEB.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(backend.seen(0).path, "/x");
}

/// A request with one header of `size` bytes.
fn with_header_of(uri: &str, size: usize) -> Request<ClientBody> {
    with_body(
        Request::builder()
            .uri(uri)
            .header("host", "web.test")
            .header("x-big", "a".repeat(size)),
        "",
    )
}

#[tokio::test]
async fn a_100_kib_header_gets_431_on_http1_and_http2() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let mut h1 = h1_client(proxy.addr(), "web.test", &pki).await;
    let resp = timed(h1.send_request(with_header_of("/", 100 * 1024)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);

    let mut h2 = h2_client(proxy.addr(), "web.test", &pki).await;
    let resp = timed(h2.send_request(with_header_of("https://web.test/", 100 * 1024)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    // HTTP/2 refuses the stream only: the connection serves on.
    let resp = timed(h2.send_request(with_header_of("https://web.test/", 10)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Just under the default limit is served on both.
    let near = DEFAULT_MAX_REQUEST_HEAD - 1024;
    let mut h1 = h1_client(proxy.addr(), "web.test", &pki).await;
    let resp = answer(
        timed(h1.send_request(with_header_of("/", near)))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200);
    let resp = answer(
        timed(h2.send_request(with_header_of("https://web.test/", near)))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        backend.requests(),
        3,
        "only the fitting heads reached the backend"
    );
}

#[tokio::test]
async fn max_request_head_is_configurable() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr)
        .max_request_head(16 * 1024)
        .start()
        .await;

    let mut h1 = h1_client(proxy.addr(), "web.test", &pki).await;
    let resp = timed(h1.send_request(with_header_of("/", 20 * 1024)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    let mut h2 = h2_client(proxy.addr(), "web.test", &pki).await;
    let resp = timed(h2.send_request(with_header_of("https://web.test/", 20 * 1024)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    let resp = timed(h2.send_request(with_header_of("https://web.test/", 8 * 1024)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(backend.requests(), 1);
}

/// A request with `n` header fields in all (Host included).
fn with_fields(uri: &str, n: usize) -> Request<ClientBody> {
    let mut req = Request::builder().uri(uri).header("host", "web.test");
    for i in 1..n {
        req = req.header(format!("x-field-{i}"), "v");
    }
    with_body(req, "")
}

#[tokio::test]
async fn more_than_max_headers_fields_get_431_on_http1_and_http2() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let mut h1 = h1_client(proxy.addr(), "web.test", &pki).await;
    let resp = timed(h1.send_request(with_fields("/", MAX_HEADERS)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = answer(resp).await;
    let resp = timed(h1.send_request(with_fields("/", MAX_HEADERS + 1)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 431, "hyper's HTTP/1.1 parser limit");

    let mut h2 = h2_client(proxy.addr(), "web.test", &pki).await;
    let resp = timed(h2.send_request(with_fields("https://web.test/", MAX_HEADERS)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = timed(h2.send_request(with_fields("https://web.test/", MAX_HEADERS + 1)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 431, "the proxy's own check");
    assert_eq!(backend.requests(), 2);
}
