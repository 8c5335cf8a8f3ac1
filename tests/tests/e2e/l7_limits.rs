//! L7 framing rules and abuse limits, end to end: what a client that breaks them sees (the
//! status, the RST_STREAM or GOAWAY code), that the backend saw nothing of it, and that the
//! same connection or a well-behaved neighbour is still served. Hostile HTTP/1.1 is written
//! by hand over TLS; hostile HTTP/2 with the frame writer in `mc_proxy_tests::h2raw`.

use std::time::Duration;

use http::Request;
use mc_proxy::proxy::l7::limits::{
    DEFAULT_MAX_REQUEST_HEAD, MAX_CONCURRENT_STREAMS, MAX_HEADERS, MAX_LOCAL_ERROR_RESET_STREAMS,
};
use mc_proxy_tests::h2raw::{self, RawH2};
use mc_proxy_tests::web::*;
use mc_proxy_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    // hyper's own 431 (the head never became a request) is counted on the route, as a
    // request and a 4xx, once its connection has ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while web_stats(&proxy).responses[3] == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = web_stats(&proxy);
    assert_eq!((stats.requests, stats.responses[3]), (1, 1));

    let mut h2 = h2_client(proxy.addr(), "web.test", &pki).await;
    let resp = timed(h2.send_request(with_header_of("https://web.test/", 100 * 1024)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    // The proxy's own 431 (h2 takes heads up to twice the limit), counted as the HTTP/1.1 one.
    let stats = web_stats(&proxy);
    assert_eq!((stats.requests, stats.responses[3]), (2, 2));
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

#[tokio::test]
async fn the_server_announces_its_stream_and_header_limits() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let mut raw = RawH2::connect(proxy.addr(), "web.test", &pki).await;
    let settings = timed(raw.next_frame()).await.expect("a SETTINGS frame");
    assert_eq!(settings.kind, h2raw::SETTINGS);
    let settings = settings.settings();
    assert!(
        settings.contains(&(
            h2raw::SETTINGS_MAX_CONCURRENT_STREAMS,
            MAX_CONCURRENT_STREAMS
        )),
        "{settings:?}"
    );
    assert!(
        settings.contains(&(
            h2raw::SETTINGS_MAX_HEADER_LIST_SIZE,
            2 * DEFAULT_MAX_REQUEST_HEAD as u32
        )),
        "{settings:?}"
    );
}

#[tokio::test]
async fn a_stream_past_max_concurrent_streams_is_refused() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let mut raw = RawH2::connect(proxy.addr(), "web.test", &pki).await;
    // Streams with an unfinished body stay open: the backend's /sink waits for its end.
    let mut bytes = Vec::new();
    let n = MAX_CONCURRENT_STREAMS + 1;
    for i in 0..n {
        let block = h2raw::get("web.test", "/sink");
        bytes.extend(h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS,
            2 * i + 1,
            &block,
        ));
    }
    raw.send(&bytes).await.unwrap();
    let last = 2 * (n - 1) + 1;
    let refused = timed(async {
        loop {
            let f = raw.next_frame().await.expect("connection closed");
            if f.kind == h2raw::RST_STREAM || f.kind == h2raw::GOAWAY {
                return f;
            }
        }
    })
    .await;
    assert_eq!(refused.kind, h2raw::RST_STREAM, "{refused:?}");
    assert_eq!(refused.stream, last, "only the stream past the limit");
    assert_eq!(refused.error_code(), Some(h2raw::REFUSED_STREAM));
}

#[tokio::test]
async fn rapid_reset_gets_goaway_enhance_your_calm() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let mut raw = RawH2::connect(proxy.addr(), "web.test", &pki).await;
    // Open and cancel streams as fast as one write carries them (CVE-2023-44487).
    let mut bytes = Vec::new();
    for i in 0..500u32 {
        let id = 2 * i + 1;
        let block = h2raw::get("web.test", "/");
        bytes.extend(h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, id, &block));
        bytes.extend(h2raw::rst_stream(id, h2raw::CANCEL));
    }
    let _ = raw.send(&bytes).await;
    let frames = raw.frames_until_goaway().await;
    let goaway = frames.last().unwrap();
    assert_eq!(
        goaway.error_code(),
        Some(h2raw::ENHANCE_YOUR_CALM),
        "{goaway:?}"
    );
    assert_eq!(goaway.debug_data(), "too_many_resets");
    assert!(backend.requests() < 500, "the flood was cut short");

    // A well-behaved client is still served.
    let mut h2 = h2_client(proxy.addr(), "web.test", &pki).await;
    let resp = timed(h2.send_request(with_header_of("https://web.test/", 10)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn server_provoked_resets_get_goaway_enhance_your_calm() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let mut raw = RawH2::connect(proxy.addr(), "web.test", &pki).await;
    // "MadeYouReset" (CVE-2025-8671): each stream is opened, then given a WINDOW_UPDATE that
    // overflows its send window, a stream error the server must answer with RST_STREAM
    // FLOW_CONTROL_ERROR itself. (A zero increment would not do: h2 treats it as a
    // connection error, GOAWAY PROTOCOL_ERROR at once.)
    let provoke = |id: u32| {
        let mut bytes = h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS,
            id,
            &h2raw::get("web.test", "/sink"),
        );
        bytes.extend(h2raw::window_update(id, 0x7fff_ffff));
        bytes
    };
    let budget = MAX_LOCAL_ERROR_RESET_STREAMS as u32;
    let bytes: Vec<u8> = (0..budget).flat_map(|i| provoke(2 * i + 1)).collect();
    raw.send(&bytes).await.unwrap();
    let resets = timed(async {
        let mut resets = 0;
        while resets < budget {
            let f = raw
                .next_frame()
                .await
                .expect("connection closed within the budget");
            assert_ne!(f.kind, h2raw::GOAWAY, "GOAWAY within the budget: {f:?}");
            if f.kind == h2raw::RST_STREAM {
                assert_eq!(f.error_code(), Some(h2raw::FLOW_CONTROL_ERROR), "{f:?}");
                resets += 1;
            }
        }
        resets
    })
    .await;
    assert_eq!(resets, budget);

    // One more, and the connection is done.
    raw.send(&provoke(2 * budget + 1)).await.unwrap();
    let frames = raw.frames_until_goaway().await;
    let goaway = frames.last().unwrap();
    assert_eq!(
        goaway.error_code(),
        Some(h2raw::ENHANCE_YOUR_CALM),
        "{goaway:?}"
    );
    assert_eq!(goaway.debug_data(), "too_many_internal_resets");
}

#[tokio::test]
async fn a_continuation_flood_gets_goaway_after_a_few_frames() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    let mut raw = RawH2::connect(proxy.addr(), "web.test", &pki).await;
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end the block
    // (CVE-2024-27316 family): small frames, so only their count can stop them.
    let mut bytes = h2raw::frame(h2raw::HEADERS, 0, 1, &h2raw::get("web.test", "/"));
    let filler = h2raw::header_block(&[("x-filler", &"a".repeat(1000))]);
    for _ in 0..1000 {
        bytes.extend(h2raw::frame(h2raw::CONTINUATION, 0, 1, &filler));
    }
    let _ = raw.send(&bytes).await;
    let frames = raw.frames_until_goaway().await;
    let goaway = frames.last().unwrap();
    assert_eq!(
        goaway.error_code(),
        Some(h2raw::ENHANCE_YOUR_CALM),
        "{goaway:?}"
    );
    assert_eq!(goaway.debug_data(), "too_many_continuations");
    assert_eq!(backend.requests(), 0);
}

#[tokio::test]
async fn a_client_that_respects_the_stream_limit_gets_every_answer() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    // Half again the limit at once on one connection: h2 clients queue past
    // SETTINGS_MAX_CONCURRENT_STREAMS, so nothing is refused.
    let h2 = h2_client(proxy.addr(), "web.test", &pki).await;
    let n = MAX_CONCURRENT_STREAMS as usize * 3 / 2;
    let calls = (0..n).map(|i| {
        let mut h2 = h2.clone();
        async move {
            let req = Request::builder().uri(format!("https://web.test/{i}"));
            answer(h2.send_request(with_body(req, "x")).await.unwrap()).await
        }
    });
    let answers = timed(futures_util::future::join_all(calls)).await;
    assert!(answers.iter().all(|a| a.status == 200));
    assert_eq!(backend.requests(), n);
}

#[tokio::test]
async fn resets_of_accepted_streams_past_the_window_limit_get_goaway() {
    let pki = Pki::new();
    // Slow answers: every stream is still waiting on the backend when the client resets it.
    let backend = H2Backend::start_with(H2Options {
        delay: Some(Duration::from_secs(5)),
        ..H2Options::default()
    })
    .await;
    let proxy = web_proxy(&pki, backend.addr)
        .proxy_setting("h2_max_client_resets", 5)
        .proxy_setting("h2_client_reset_window", "\"10s\"")
        .start()
        .await;
    let mut raw = RawH2::connect(proxy.addr(), "web.test", &pki).await;
    let block = h2raw::get("web.test", "/");
    // Five accepted and reset: within the limit, the connection serves on.
    for i in 0..6u32 {
        let id = 2 * i + 1;
        raw.send(&h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS,
            id,
            &block,
        ))
        .await
        .unwrap();
        // Accepted by the proxy (and on its way to the backend) before the reset.
        tokio::time::sleep(Duration::from_millis(50)).await;
        raw.send(&h2raw::rst_stream(id, h2raw::CANCEL))
            .await
            .unwrap();
        if i == 4 {
            assert_eq!(web_stats(&proxy).rapid_resets, 0, "five are allowed");
        }
    }
    let frames = raw.frames_until_goaway().await;
    let goaway = frames.last().unwrap();
    assert_eq!(
        goaway.error_code(),
        Some(h2raw::ENHANCE_YOUR_CALM),
        "{goaway:?}"
    );
    assert_eq!(web_stats(&proxy).rapid_resets, 1);
    // The limit is the connection's: another client is served.
    let mut h2 = h2_client(proxy.addr(), "web.test", &pki).await;
    let started = std::time::Instant::now();
    let resp = timed(h2.send_request(with_header_of("https://web.test/", 10)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_secs(4));
}
