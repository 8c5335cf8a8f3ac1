//! The L7 backend connection pool end to end: real hyper HTTP/1.1 and HTTP/2 backends that
//! count their connections, many real client connections through the daemon, backends that
//! send GOAWAY, close idle connections, allow one stream at a time or answer
//! `Connection: close`; the protocol translation between h1/h2 clients and h1/h2 backends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Request;
use mc_proxy::model::stats::BackendSnapshot;
use mc_proxy_tests::web::*;
use mc_proxy_tests::*;

/// `n` GET or POST requests on one HTTP/2 client connection, all at once; each must be
/// answered 200 with its own body echoed.
async fn h2_burst(addr: std::net::SocketAddr, pki: &Pki, n: usize, tag: &str) {
    let client = h2_client(addr, "web.test", pki).await;
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut client = client.clone();
        let body = format!("{tag}-{i}");
        requests.spawn(async move {
            let method = if i % 2 == 0 { "GET" } else { "POST" };
            let body = if method == "GET" { String::new() } else { body };
            let req = Request::builder()
                .method(method)
                .uri(format!("https://web.test/r/{i}"));
            let resp = answer(client.send_request(with_body(req, &body)).await.unwrap()).await;
            assert_eq!(resp.status, 200, "{method} {i}: {}", resp.body);
            assert_eq!(resp.body, body);
        });
    }
    while let Some(res) = timed(requests.join_next()).await {
        res.unwrap();
    }
}

/// `n` sequential requests on one HTTP/1.1 client connection.
async fn h1_sequence(addr: std::net::SocketAddr, pki: &Pki, n: usize, tag: &str) {
    let mut client = h1_client(addr, "web.test", pki).await;
    for i in 0..n {
        let body = format!("{tag}-{i}");
        let req = Request::builder()
            .method("POST")
            .uri(format!("/s/{i}"))
            .header("host", "web.test");
        let resp = ask_h1(&mut client, with_body(req, &body)).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(resp.body, body);
    }
}

fn backend_figures(proxy: &Proxy) -> Vec<BackendSnapshot> {
    proxy.state.backends.snapshot()
}

#[tokio::test]
async fn many_client_connections_share_one_h2_backend_connection() {
    let pki = Arc::new(Pki::new());
    let backend = H2Backend::start_with(H2Options {
        unrecorded: true,
        ..H2Options::default()
    })
    .await;
    let proxy = web_proxy(&pki, backend.addr).start().await;

    // 16 HTTP/2 and 16 HTTP/1.1 client connections, all busy at once.
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..16 {
        let (proxy_addr, p) = (proxy.addr(), Arc::clone(&pki));
        clients.spawn(async move {
            let mut client = h2_client(proxy_addr, "web.test", &p).await;
            for i in 0..5 {
                let req = Request::builder().uri(format!("https://web.test/c{c}/{i}"));
                let resp = answer(client.send_request(with_body(req, "")).await.unwrap()).await;
                assert_eq!(resp.status, 200);
            }
        });
        let (proxy_addr, p) = (proxy.addr(), Arc::clone(&pki));
        clients.spawn(async move {
            let mut client = h1_client(proxy_addr, "web.test", &p).await;
            for i in 0..5 {
                let req = Request::builder()
                    .uri(format!("/h{c}/{i}"))
                    .header("host", "web.test");
                let resp = answer(client.send_request(with_body(req, "")).await.unwrap()).await;
                assert_eq!(resp.status, 200);
                assert_eq!(resp.header("x-echo-version"), "HTTP/2.0");
            }
        });
    }
    while let Some(res) = timed(clients.join_next()).await {
        res.unwrap();
    }
    assert_eq!(backend.requests(), 160);
    // 32 streams at most at once, under the 128 one connection carries: one connection.
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    let figures = backend_figures(&proxy);
    assert_eq!(figures.len(), 1, "{figures:?}");
    let f = &figures[0];
    assert_eq!(f.key.backend, backend.addr.to_string());
    assert_eq!(
        (f.open, f.idle, f.in_use, f.requests),
        (1, 1, 0, 0),
        "{f:?}"
    );
    assert_eq!((f.opened, f.failed), (1, 0), "{f:?}");

    // The same figures on /metrics.
    let metrics = http1_request(proxy.metrics, "GET", "/metrics", &[])
        .await
        .body;
    let labels = format!("backend=\"{}\",protocol=\"h2\",tls=\"false\"", backend.addr);
    for line in [
        format!("mcproxy_backend_connections{{{labels},state=\"idle\"}} 1"),
        format!("mcproxy_backend_connections{{{labels},state=\"in_use\"}} 0"),
        format!("mcproxy_backend_requests_in_flight{{{labels}}} 0"),
        format!("mcproxy_backend_connections_opened_total{{{labels}}} 1"),
        format!("mcproxy_backend_connect_failures_total{{{labels}}} 0"),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn http1_backend_connections_are_kept_alive_and_reused() {
    let pki = Arc::new(Pki::new());
    let backend = H1Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr)
        .backend_protocol(mc_proxy_shared::BackendProtocol::Http1)
        .start()
        .await;

    // Four HTTP/1.1 client connections (one request at a time each) and four HTTP/2 ones
    // (two at a time each), all at once: at most 12 requests are in flight at any moment, so
    // at most 12 backend connections for the 80 requests.
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..4 {
        let (addr, p) = (proxy.addr(), Arc::clone(&pki));
        clients.spawn(async move { h1_sequence(addr, &p, 10, &format!("h1c{c}")).await });
        let (addr, p) = (proxy.addr(), Arc::clone(&pki));
        clients.spawn(async move {
            for round in 0..5 {
                h2_burst(addr, &p, 2, &format!("h2c{c}r{round}")).await;
            }
        });
    }
    while let Some(res) = timed(clients.join_next()).await {
        res.unwrap();
    }
    assert_eq!(backend.requests(), 80);
    let connections = backend.connections.load(Ordering::SeqCst);
    assert!(
        (1..=12).contains(&connections),
        "{connections} backend connections for 80 requests"
    );
    // What the HTTP/1.1 backend saw: origin-form target, Host, no TE, version 1.1.
    let seen = backend.seen(0);
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.headers["host"], "web.test");
    assert!(seen.path.starts_with("/s/") || seen.path.starts_with("/r/"));
    let f = &backend_figures(&proxy)[0];
    assert_eq!(f.open as usize, connections, "{f:?}");
    assert_eq!((f.in_use, f.requests), (0, 0), "{f:?}");
}

#[tokio::test]
async fn sequential_requests_reuse_one_http1_backend_connection() {
    let pki = Arc::new(Pki::new());
    let backend = H1Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr)
        .backend_protocol(mc_proxy_shared::BackendProtocol::Http1)
        .start()
        .await;
    // The connection goes back to the pool as the response's last byte is read, before the
    // client can send its next request: one connection, however fast the client is.
    h1_sequence(proxy.addr(), &pki, 20, "seq").await;
    for _ in 0..5 {
        h2_burst(proxy.addr(), &pki, 1, "seq-h2").await;
    }
    assert_eq!(backend.requests(), 25);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn h2_client_trailers_and_te_do_not_reach_an_http1_backend_as_te() {
    let pki = Arc::new(Pki::new());
    let backend = H1Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr)
        .backend_protocol(mc_proxy_shared::BackendProtocol::Http1)
        .start()
        .await;
    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    let req = Request::builder()
        .method("PUT")
        .uri("https://web.test/put?q=1")
        .header("te", "trailers")
        .header("x-custom", "kept");
    let resp = ask_h2(&mut client, with_body(req, "payload")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "payload");
    assert_eq!(resp.header("x-echo-version"), "HTTP/1.1");
    let seen = backend.seen(0);
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.path, "/put?q=1");
    assert_eq!(seen.headers["host"], "web.test");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert!(seen.headers.get("te").is_none(), "{:?}", seen.headers);
}

#[tokio::test]
async fn a_backend_sending_goaway_mid_load_fails_no_request() {
    let pki = Arc::new(Pki::new());
    // Every backend connection says GOAWAY after its 7th request.
    let backend = H2Backend::start_with(H2Options {
        unrecorded: true,
        goaway_after: Some(7),
        ..H2Options::default()
    })
    .await;
    let proxy = web_proxy(&pki, backend.addr).start().await;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..6 {
        let (addr, p) = (proxy.addr(), Arc::clone(&pki));
        clients.spawn(async move {
            for round in 0..4 {
                h2_burst(addr, &p, 5, &format!("c{c}r{round}")).await;
            }
        });
    }
    while let Some(res) = timed(clients.join_next()).await {
        res.unwrap();
    }
    // 120 answered (asserted in h2_burst). Streams sent before a GOAWAY arrived still count
    // on the old connection, so each carries more than 7; but the first one went away.
    let connections = backend.connections.load(Ordering::SeqCst);
    assert!(connections >= 2, "{connections} connections");
    let stats = web_stats(&proxy);
    assert_eq!(stats.backend_errors, 0, "{stats:?}");
}

#[tokio::test]
async fn a_backend_closing_idle_keepalive_connections_fails_no_request() {
    let pki = Arc::new(Pki::new());
    let backend = H1Backend::start_with(H1Options {
        idle_close: Some(Duration::from_millis(60)),
        ..H1Options::default()
    })
    .await;
    let proxy = web_proxy(&pki, backend.addr)
        .backend_protocol(mc_proxy_shared::BackendProtocol::Http1)
        .start()
        .await;
    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    // Pauses around the backend's idle close: some requests find their pooled connection
    // just closed. GETs (idempotent, no body) are retried; POSTs after a pause long past the
    // close find the connection already known dead.
    for (i, pause) in [0, 50, 55, 60, 65, 70, 150, 0, 58, 62, 200]
        .iter()
        .enumerate()
    {
        tokio::time::sleep(Duration::from_millis(*pause)).await;
        let (method, body) = if *pause >= 150 {
            ("POST", format!("post-{i}"))
        } else {
            ("GET", String::new())
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("https://web.test/idle/{i}"));
        let resp = ask_h2(&mut client, with_body(req, &body)).await;
        assert_eq!(
            resp.status, 200,
            "request {i} after {pause} ms: {}",
            resp.body
        );
        assert_eq!(resp.body, body);
    }
    assert!(backend.connections.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn connection_close_answers_are_never_reused() {
    let pki = Arc::new(Pki::new());
    let backend = H1Backend::start_with(H1Options {
        no_keepalive: true,
        ..H1Options::default()
    })
    .await;
    let proxy = web_proxy(&pki, backend.addr)
        .backend_protocol(mc_proxy_shared::BackendProtocol::Http1)
        .start()
        .await;
    h1_sequence(proxy.addr(), &pki, 6, "close").await;
    h2_burst(proxy.addr(), &pki, 6, "close-h2").await;
    assert_eq!(backend.connections.load(Ordering::SeqCst), 12);
    // Hop-by-hop: the backend's Connection: close is not the client's business.
    let mut client = h1_client(proxy.addr(), "web.test", &pki).await;
    let req = Request::builder().uri("/x").header("host", "web.test");
    let resp = ask_h1(&mut client, with_body(req, "")).await;
    assert_eq!(resp.status, 200);
    assert!(
        resp.headers.get("connection").is_none(),
        "{:?}",
        resp.headers
    );
}

#[tokio::test]
async fn long_streams_on_a_one_stream_backend_do_not_hold_up_new_requests() {
    let pki = Arc::new(Pki::new());
    let backend = H2Backend::start_with(H2Options {
        unrecorded: true,
        max_concurrent_streams: Some(1),
        ..H2Options::default()
    })
    .await;
    let proxy = web_proxy(&pki, backend.addr).start().await;
    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    // Three event streams stay open (the backend holds them until `release`).
    let mut streams = Vec::new();
    for _ in 0..3 {
        let req = Request::builder().uri("https://web.test/sse");
        let resp = timed(client.send_request(with_body(req, "")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        streams.push(resp);
    }
    // A plain request is answered while they are open: it got a connection of its own.
    let req = Request::builder().uri("https://web.test/quick");
    let resp = ask_h2(&mut client, with_body(req, "")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 4);
    let f = &backend_figures(&proxy)[0];
    assert_eq!((f.open, f.in_use, f.requests), (4, 3, 3), "{f:?}");
    // The same figures reach event watchers with each stats tick.
    let mut admin = proxy.admin().await;
    let mut events = Box::pin(admin.watch_events().await.unwrap());
    let backends = loop {
        let event = timed(futures_util::StreamExt::next(&mut events))
            .await
            .unwrap()
            .unwrap();
        if let mc_proxy_shared::client::Event::Stats { backends, .. } = event.event {
            break backends;
        }
    };
    assert_eq!(backends.len(), 1, "{backends:?}");
    assert_eq!(backends[0].backend, backend.addr.to_string());
    assert_eq!(
        (backends[0].open, backends[0].in_use, backends[0].requests),
        (4, 3, 3)
    );
    drop(streams);
}

#[tokio::test]
async fn a_full_pool_answers_503_after_connect_timeout() {
    let pki = Arc::new(Pki::new());
    let backend = H1Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr)
        .backend_protocol(mc_proxy_shared::BackendProtocol::Http1)
        .backend_max_connections(1)
        .connect_timeout(Duration::from_millis(300))
        .start()
        .await;
    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    // The one connection is taken by a request the backend never answers.
    let hang = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let req = Request::builder().uri("https://web.test/hang");
            client.send_request(with_body(req, "")).await
        })
    };
    while backend.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let req = Request::builder().uri("https://web.test/second");
    let resp = ask_h2(&mut client, with_body(req, "")).await;
    let waited = started.elapsed();
    assert_eq!(resp.status, 503, "{}", resp.body);
    assert!(resp.body.contains("busy"), "{}", resp.body);
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    hang.abort();
}

#[tokio::test]
async fn each_worker_thread_has_its_own_share_of_the_backend_connections() {
    let pki = Arc::new(Pki::new());
    let backend = H2Backend::start_with(H2Options {
        unrecorded: true,
        ..H2Options::default()
    })
    .await;
    // A cap of 1 over 2 workers: each worker's pool may open one connection. A request never
    // waits for a connection of the other worker's pool (whose frees would not wake it), so
    // none of these gets the 503 of a full pool.
    let proxy = web_proxy(&pki, backend.addr)
        .workers(2)
        .backend_max_connections(1)
        .connect_timeout(Duration::from_millis(300))
        .start()
        .await;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..16 {
        let (proxy_addr, p) = (proxy.addr(), Arc::clone(&pki));
        clients.spawn(async move { h2_burst(proxy_addr, &p, 4, &format!("c{c}")).await });
    }
    while let Some(res) = timed(clients.join_next()).await {
        res.unwrap();
    }
    assert_eq!(backend.requests(), 64);
    let connections = backend.connections.load(Ordering::SeqCst);
    assert!((1..=2).contains(&connections), "{connections} connections");
    let figures = backend_figures(&proxy);
    assert_eq!(figures.len(), 1, "{figures:?}");
    assert_eq!(figures[0].opened as usize, connections, "{figures:?}");
}

#[tokio::test]
async fn send_proxy_protocol_routes_keep_backend_connections_per_client() {
    let pki = Arc::new(Pki::new());
    let backend = H1Backend::start_with(H1Options {
        proxied: true,
        ..H1Options::default()
    })
    .await;
    let proxy = web_proxy(&pki, backend.addr)
        .backend_protocol(mc_proxy_shared::BackendProtocol::Http1)
        .send_proxy()
        .start()
        .await;
    // Two client connections, three requests each.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let tls = tls_to_proxy(proxy.addr(), "web.test", &pki, &[b"http/1.1"])
            .await
            .unwrap();
        let local = tls.get_ref().0.local_addr().unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        clients.push((local, sender));
    }
    for round in 0..3 {
        for (_, client) in &mut clients {
            let req = Request::builder()
                .uri(format!("/pp/{round}"))
                .header("host", "web.test");
            let resp = ask_h1(client, with_body(req, "")).await;
            assert_eq!(resp.status, 200);
        }
    }
    // One backend connection per client connection, reused for its requests, each opened
    // with that client's address.
    let headers = backend.headers.lock().unwrap().clone();
    let mut sources: Vec<_> = headers.iter().map(|h| h.source.unwrap()).collect();
    sources.sort();
    let mut expected: Vec<_> = clients.iter().map(|(local, _)| *local).collect();
    expected.sort();
    assert_eq!(sources, expected);
    assert_eq!(backend.requests(), 6);
}

#[tokio::test]
async fn http1_and_auto_over_tls_speak_what_the_backend_negotiates() {
    let pki = Pki::new();
    let h1 = H1Backend::start_with(H1Options {
        tls: Some((&pki, &["web.test"])),
        ..H1Options::default()
    })
    .await;
    let h2 = H2Backend::start_with(H2Options {
        tls: Some((&pki, &["web.test"])),
        ..H2Options::default()
    })
    .await;
    for (backend, protocol, version) in [
        (h1.addr, "http1", "HTTP/1.1"),
        (h1.addr, "auto", "HTTP/1.1"),
        (h2.addr, "auto", "HTTP/2.0"),
        (h2.addr, "h2", "HTTP/2.0"),
    ] {
        let proxy = web_proxy(&pki, backend)
            .backend_tls()
            .backend_protocol(protocol.parse().unwrap())
            .backend_ca(&pki)
            .start()
            .await;
        let mut client = h1_client(proxy.addr(), "web.test", &pki).await;
        for i in 0..3 {
            let req = Request::builder()
                .method("POST")
                .uri(format!("/tls/{i}"))
                .header("host", "web.test");
            let resp = ask_h1(&mut client, with_body(req, "over tls")).await;
            assert_eq!(resp.status, 200, "{protocol} to {backend}: {}", resp.body);
            assert_eq!(resp.body, "over tls");
            assert_eq!(resp.header("x-echo-version"), version, "{protocol}");
        }
        let f = &backend_figures(&proxy)[0];
        assert_eq!(f.opened, 1, "{protocol}: {f:?}");
    }
}

#[tokio::test]
async fn idle_pooled_connections_close_after_backend_idle_timeout() {
    let pki = Arc::new(Pki::new());
    let backend = H1Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr)
        .backend_protocol(mc_proxy_shared::BackendProtocol::Http1)
        .backend_idle_timeout(Duration::from_millis(200))
        .start()
        .await;
    h1_sequence(proxy.addr(), &pki, 2, "idle").await;
    assert_eq!(backend.open.load(Ordering::SeqCst), 1);
    let started = Instant::now();
    // The pool's sweep runs every second: closed within idle timeout + 1 s.
    while backend.open.load(Ordering::SeqCst) > 0 {
        assert!(started.elapsed() < Duration::from_secs(3), "never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(150));
    let f = &backend_figures(&proxy)[0];
    assert_eq!(f.open, 0, "{f:?}");
}

/// An h2c backend that takes one request, reads its body and never answers; it reports the
/// first chunk it got and, when the body fails, the HTTP/2 reason the stream was reset with.
async fn upload_sink() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<bytes::Bytes, Option<h2::Reason>>>,
    tokio::task::JoinHandle<()>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, reports) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let report = report.clone();
            async move {
                let mut body = req.into_body();
                loop {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                let _ = report.send(Ok(data));
                            }
                        }
                        Some(Err(e)) => {
                            let reason = std::error::Error::source(&e)
                                .and_then(|s| s.downcast_ref::<h2::Error>())
                                .and_then(h2::Error::reason);
                            let _ = report.send(Err(reason));
                            break;
                        }
                        None => break,
                    }
                }
                std::future::pending::<Result<http::Response<String>, std::convert::Infallible>>()
                    .await
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
            .await;
    });
    (addr, reports, task)
}

/// An HTTP/2 client that resets its stream (RST_STREAM) before the answer abandons the
/// request: the proxy resets the backend stream as cancelled rather than leaving the upload
/// half done, and the client connection goes on serving its other streams.
#[tokio::test]
async fn a_client_reset_before_the_answer_resets_the_backend_stream() {
    let pki = Pki::new();
    let (backend, mut reports, backend_task) = upload_sink().await;
    // A response timeout far beyond the test's own: the backend's reset can only come from
    // the client's.
    let proxy = web_proxy(&pki, backend)
        .response_timeout(Duration::from_secs(60))
        .start()
        .await;
    let tls = tls_to_proxy(proxy.addr(), "web.test", &pki, &[b"h2"])
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let upload = |path: &'static str| {
        Request::builder()
            .method("POST")
            .uri(format!("https://web.test{path}"))
            .body(())
            .unwrap()
    };
    let mut client = timed(client.ready()).await.unwrap();
    let (answer, mut first) = client.send_request(upload("/first"), false).unwrap();
    first
        .send_data(bytes::Bytes::from_static(b"part one"), false)
        .unwrap();
    let got = timed(reports.recv()).await.expect("the backend reported");
    assert_eq!(got, Ok(bytes::Bytes::from_static(b"part one")));

    first.send_reset(h2::Reason::CANCEL);
    let end = timed(reports.recv()).await.expect("the backend reported");
    assert_eq!(end, Err(Some(h2::Reason::CANCEL)));
    // The client's stream ended by its own reset, not by an answer from the proxy.
    let answered = timed(answer).await;
    assert!(
        answered
            .as_ref()
            .is_err_and(|e| e.reason() == Some(h2::Reason::CANCEL)),
        "{answered:?}"
    );

    // The connection survived: a second upload on it reaches the backend.
    let mut client = timed(client.ready()).await.unwrap();
    let (_answer, mut second) = client.send_request(upload("/second"), false).unwrap();
    second
        .send_data(bytes::Bytes::from_static(b"part two"), false)
        .unwrap();
    let got = timed(reports.recv()).await.expect("the backend reported");
    assert_eq!(got, Ok(bytes::Bytes::from_static(b"part two")));
    let stats = web_stats(&proxy);
    assert_eq!(stats.responses, [0; 5], "no answer was counted");
    assert_eq!(stats.requests, 2);
    backend_task.abort();
}

#[tokio::test]
async fn an_upload_abandoned_at_the_response_timeout_is_reset_at_the_backend() {
    type Chunks = tokio_stream::wrappers::ReceiverStream<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >;
    let pki = Pki::new();
    let (backend, mut reports, backend_task) = upload_sink().await;
    let proxy = web_proxy(&pki, backend)
        .response_timeout(Duration::from_millis(300))
        .start()
        .await;
    let tls = tls_to_proxy(proxy.addr(), "web.test", &pki, &[b"h2"])
        .await
        .unwrap();
    let (mut client, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::StreamBody<Chunks>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
    tokio::spawn(conn);
    // A body that sends one chunk and stays open: the upload is still going when the
    // response timeout ends the request.
    let (chunks, rx) = tokio::sync::mpsc::channel(1);
    chunks
        .send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
            b"part one",
        ))))
        .await
        .unwrap();
    let req = Request::builder()
        .method("POST")
        .uri("https://web.test/upload")
        .body(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    let started = Instant::now();
    let resp = answer(timed(client.send_request(req)).await.unwrap()).await;
    let waited = started.elapsed();
    assert_eq!(resp.status, 504, "{}", resp.body);
    assert!(waited >= Duration::from_millis(280), "504 after {waited:?}");
    // The backend had the first chunk, streamed before any answer...
    let first = timed(reports.recv()).await.expect("the backend reported");
    assert_eq!(first, Ok(bytes::Bytes::from_static(b"part one")));
    // ...and its stream is then reset as cancelled, not left open with the upload half done.
    let end = timed(reports.recv()).await.expect("the backend reported");
    assert_eq!(end, Err(Some(h2::Reason::CANCEL)));
    drop(chunks);
    backend_task.abort();
}
