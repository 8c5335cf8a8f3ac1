//! L4 (passthrough) routing end to end: real rustls clients and backends, the real daemon
//! pipeline on 127.0.0.1 port 0.

use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mc_proxy_tests::*;

/// The listener as the admin API names it (the configured address; tests bind port 0).
const L: &str = "127.0.0.1:0";
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Two backends, `a.test` and `b.test`, behind one listener of `proxy` (its other settings
/// already made).
async fn two_backends(pki: &Pki, proxy: ProxyBuilder) -> (TlsBackend, TlsBackend, Proxy) {
    let a = TlsBackend::start(pki, &["a.test"]).await;
    let b = TlsBackend::start(pki, &["b.test"]).await;
    let proxy = proxy
        .listener()
        .route("a.test", a.addr)
        .route("B.Test", b.addr)
        .l4()
        .start()
        .await;
    (a, b, proxy)
}

/// A client relayed to `a.test`'s backend, with `payload` sent and its echo read back: the
/// relay is up both ways.
async fn relayed_to_a(proxy: &Proxy, pki: &Pki, payload: &[u8]) -> Client {
    let mut client = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    client.write_all(payload).await.unwrap();
    let mut echo = vec![0u8; payload.len()];
    client.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, payload);
    client
}

/// The listener's resets by reason, as `unknown_sni_is_reset` reads them.
fn resets_by_reason(proxy: &Proxy) -> Vec<(&'static str, u64)> {
    proxy.state.listeners()[0]
        .counters
        .resets_by_reason()
        .map(|(reason, n)| (reason.as_str(), n))
        .collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How a TLS client sees the proxy end a relay it cut (idle timeout, end of the shutdown
/// grace period): a FIN in the middle of the TLS stream, no close_notify (L4 cannot write
/// one), which rustls reports as an unexpected EOF.
const STUCK_CLOSE: Result<(), ErrorKind> = Err(ErrorKind::UnexpectedEof);

#[tokio::test]
async fn two_hostnames_reach_their_own_backends_with_data_both_ways() {
    let pki = Pki::new();
    let (a, b, proxy) = two_backends(&pki, ProxyBuilder::new()).await;

    for (sni, backend) in [("a.test", &a), ("b.test", &b), ("A.TEST", &a)] {
        let mut client = tls_connect(proxy.addr(), sni, pki.client_config())
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        client.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        client.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        let rest = send_and_finish(&mut client, b"more").await.unwrap();
        assert_eq!(rest, format!("morebye from {}\n", backend.name).as_bytes());
    }
    assert_eq!(a.accepted(), 2);
    assert_eq!(b.accepted(), 1);
    let stats = proxy.state.listeners()[0]
        .lookup("a.test")
        .unwrap()
        .stats
        .snapshot();
    assert_eq!(stats.total, 2);
    assert!(stats.bytes_up > 300 && stats.bytes_down > 1000, "{stats:?}");
    let counters = &proxy.state.listeners()[0].counters;
    assert_eq!(counters.accepted.load(Ordering::Relaxed), 3);
    assert_eq!(counters.resets.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn wildcard_route_matches_one_label_and_exact_wins() {
    let pki = Pki::new();
    let wild = TlsBackend::start(&pki, &["*.wild.test"]).await;
    let exact = TlsBackend::start(&pki, &["api.wild.test"]).await;
    let proxy = ProxyBuilder::new()
        .route("*.wild.test", wild.addr)
        .route("api.wild.test", exact.addr)
        .start()
        .await;

    let mut c = tls_connect(proxy.addr(), "www.wild.test", pki.client_config())
        .await
        .unwrap();
    assert_eq!(
        send_and_finish(&mut c, b"").await.unwrap(),
        b"bye from *.wild.test\n"
    );
    let mut c = tls_connect(proxy.addr(), "api.wild.test", pki.client_config())
        .await
        .unwrap();
    assert_eq!(
        send_and_finish(&mut c, b"").await.unwrap(),
        b"bye from api.wild.test\n"
    );

    // Two labels deep is not covered by the wildcard: no route, reset.
    let err = tls_connect(proxy.addr(), "a.b.wild.test", pki.client_config())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(resets_by_reason(&proxy), [("unknown_host", 1)]);
    assert_eq!(wild.accepted(), 1);
}

#[tokio::test]
async fn backend_receives_the_client_bytes_exactly_even_when_fragmented() {
    let pki = Pki::new();
    let (a, _b, proxy) = two_backends(&pki, ProxyBuilder::new()).await;

    // 1: one write per record. 2: a hello spread over 40-byte TCP writes and 128-byte TLS
    // records, the shape that broke other SNI routers.
    let cases: [(Option<usize>, Option<usize>); 2] = [(None, None), (Some(40), Some(128))];
    for (i, (chunk, fragment)) in cases.into_iter().enumerate() {
        let config = pki.client_config_with(|c| {
            c.max_fragment_size = fragment;
            // Many ALPN names make a 2 KiB+ hello, like a post-quantum key share does.
            c.alpn_protocols = (0..120)
                .map(|n| format!("proto-{n:04}-padding").into_bytes())
                .collect();
        });
        let mut client = tls_connect_chunked(proxy.addr(), "a.test", config, chunk)
            .await
            .unwrap();
        let answer = send_and_finish(&mut client, b"payload").await.unwrap();
        assert_eq!(answer, b"payloadbye from a.test\n");
        let sent = client.get_ref().0.writes.lock().unwrap().clone();
        assert!(
            sent.len() > 2048,
            "hello too small to cross segments: {}",
            sent.len()
        );
        assert_eq!(a.received(i), sent, "case {i}: backend saw different bytes");
    }
}

#[tokio::test]
async fn client_that_half_closes_still_gets_the_whole_answer() {
    let pki = Pki::new();
    let (_a, b, proxy) = two_backends(&pki, ProxyBuilder::new()).await;
    let mut client = tls_connect(proxy.addr(), "b.test", pki.client_config())
        .await
        .unwrap();
    // 1 MiB up, then FIN; the echo of all of it must still come down, then the goodbye.
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let answer = send_and_finish(&mut client, &payload).await.unwrap();
    assert_eq!(answer.len(), payload.len() + "bye from b.test\n".len());
    assert_eq!(&answer[..payload.len()], &payload[..]);
    assert!(answer.ends_with(format!("bye from {}\n", b.name).as_bytes()));
}

#[tokio::test]
async fn unknown_sni_is_reset() {
    let pki = Pki::new();
    let (a, b, proxy) = two_backends(&pki, ProxyBuilder::new()).await;
    let err = tls_connect(proxy.addr(), "c.test", pki.client_config())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(a.accepted() + b.accepted(), 0);
    let counters = &proxy.state.listeners()[0].counters;
    assert_eq!(counters.resets.load(Ordering::Relaxed), 1);
    let by_reason: Vec<_> = counters.resets_by_reason().collect();
    assert_eq!(by_reason, [(mc_proxy_shared::ResetReason::UnknownHost, 1)]);
}

#[tokio::test]
async fn plain_http_is_reset() {
    let pki = Pki::new();
    let (_a, _b, proxy) = two_backends(&pki, ProxyBuilder::new()).await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_reset(&mut s).await;
    assert_eq!(resets_by_reason(&proxy), [("not_tls", 1)]);
}

#[tokio::test]
async fn hello_without_sni_is_reset() {
    let pki = Pki::new();
    let (a, _b, proxy) = two_backends(&pki, ProxyBuilder::new()).await;
    // A client connecting to an IP address sends no server_name extension.
    let err = tls_connect(proxy.addr(), "127.0.0.1", pki.client_config())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(a.accepted(), 0);
    assert_eq!(resets_by_reason(&proxy), [("no_sni", 1)]);
}

#[tokio::test]
async fn blocked_ip_and_cidr_are_reset_before_the_hello() {
    let pki = Pki::new();
    for (firewall, rule) in [
        ("ip", ProxyBuilder::new().block_ip("127.0.0.1")),
        ("cidr", ProxyBuilder::new().block_cidr("127.0.0.0/8")),
    ] {
        let (a, _b, proxy) = two_backends(&pki, rule).await;
        // The reset comes before the client says anything.
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_reset(&mut s).await;
        assert!(
            tls_connect(proxy.addr(), "a.test", pki.client_config())
                .await
                .is_err()
        );
        assert_eq!(a.accepted(), 0);
        let counters = &proxy.state.listeners()[0].counters;
        assert_eq!(counters.blocked.load(Ordering::Relaxed), 2, "{firewall}");
        assert_eq!(resets_by_reason(&proxy), [("blocked", 2)], "{firewall}");
    }
}

#[tokio::test]
async fn backend_down_is_reset() {
    let pki = Pki::new();
    let dead = DeadBackend::new();
    let proxy = ProxyBuilder::new()
        .route("down.test", dead.addr)
        .start()
        .await;
    let err = tls_connect(proxy.addr(), "down.test", pki.client_config())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(resets_by_reason(&proxy), [("backend_unreachable", 1)]);
}

#[tokio::test]
async fn slow_or_silent_client_is_reset_after_the_hello_timeout() {
    let pki = Pki::new();
    let (_a, _b, proxy) =
        two_backends(&pki, ProxyBuilder::new().client_hello_timeout(ms(200))).await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let connected = Instant::now();
    // Half a record header, then nothing.
    s.write_all(&[0x16, 0x03]).await.unwrap();
    assert_reset(&mut s).await;
    let waited = connected.elapsed();
    assert!(
        waited >= ms(180),
        "reset after {waited:?}, before the 200 ms timeout"
    );
    assert_eq!(resets_by_reason(&proxy), [("hello_timeout", 1)]);
}

#[tokio::test]
async fn oversize_hello_is_reset() {
    let pki = Pki::new();
    let (_a, _b, proxy) = two_backends(&pki, ProxyBuilder::new()).await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    // A handshake record announcing a 1 MiB ClientHello.
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x10, 0x00, 0x00])
        .await
        .unwrap();
    assert_reset(&mut s).await;
    assert_eq!(resets_by_reason(&proxy), [("hello_too_large", 1)]);
}

#[tokio::test]
async fn graceful_shutdown_lets_an_open_transfer_finish() {
    let pki = Pki::new();
    let (_a, _b, mut proxy) = two_backends(
        &pki,
        ProxyBuilder::new().shutdown_timeout(Duration::from_secs(30)),
    )
    .await;
    let mut client = relayed_to_a(&proxy, &pki, b"before").await;

    proxy.shutdown.cancel();
    // The listener closes: a new connection is refused, not accepted and dropped.
    let addr = proxy.addr();
    let mut refused = false;
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener still accepting after shutdown");

    // The open connection keeps working until the client is done.
    let answer = send_and_finish(&mut client, b"after shutdown")
        .await
        .unwrap();
    assert_eq!(answer, b"after shutdownbye from a.test\n");
    tokio::time::timeout(Duration::from_secs(10), proxy.stop())
        .await
        .expect("run() did not return after the last connection closed");
}

#[tokio::test]
async fn shutdown_grace_period_closes_stuck_connections() {
    let pki = Pki::new();
    let (_a, _b, mut proxy) =
        two_backends(&pki, ProxyBuilder::new().shutdown_timeout(ms(300))).await;
    let mut client = relayed_to_a(&proxy, &pki, b"x").await;
    let shutdown = Instant::now();
    proxy.shutdown.cancel();
    // The client sees its connection end: not before the grace period, and with nothing
    // more from the backend (which never got a FIN, so never said goodbye).
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
        .await
        .expect("client connection still open");
    let waited = shutdown.elapsed();
    assert_eq!(
        ended.map(|_| ()).map_err(|e| e.kind()),
        STUCK_CLOSE,
        "{rest:?}"
    );
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        waited >= ms(280),
        "closed after {waited:?}, within the 300 ms grace"
    );
    tokio::time::timeout(Duration::from_secs(10), proxy.stop())
        .await
        .expect("run() did not force-close after the grace period");
}

#[tokio::test]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let pki = Pki::new();
    let (_a, _b, proxy) = two_backends(&pki, ProxyBuilder::new().idle_timeout(ms(300))).await;
    let mut client = relayed_to_a(&proxy, &pki, b"x").await;
    let idle_since = Instant::now();
    // Say nothing more: the proxy ends the relay, the client sees its connection end.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest)).await;
    let waited = idle_since.elapsed();
    let ended = ended.expect("idle connection still open");
    assert_eq!(
        ended.map(|_| ()).map_err(|e| e.kind()),
        STUCK_CLOSE,
        "{rest:?}"
    );
    assert!(rest.is_empty());
    assert!(
        waited >= ms(280),
        "closed after {waited:?}, before the 300 ms idle timeout"
    );
}

#[tokio::test]
async fn connections_over_max_connections_are_reset_until_a_slot_frees() {
    let pki = Pki::new();
    let (_a, _b, proxy) = two_backends(&pki, ProxyBuilder::new().max_connections(1)).await;
    let mut first = relayed_to_a(&proxy, &pki, b"1").await;

    let mut second = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_reset(&mut second).await;
    let counters = &proxy.state.listeners()[0].counters;
    assert_eq!(counters.over_capacity.load(Ordering::Relaxed), 1);

    send_and_finish(&mut first, b"").await.unwrap();
    // The slot is released when the first connection's task ends.
    let mut ok = false;
    for _ in 0..500 {
        if counters.active.load(Ordering::Relaxed) == 0 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "first connection never released its slot");
    let mut third = tls_connect(proxy.addr(), "b.test", pki.client_config())
        .await
        .unwrap();
    assert_eq!(
        send_and_finish(&mut third, b"").await.unwrap(),
        b"bye from b.test\n"
    );
}

#[tokio::test]
async fn worker_threads_share_each_listener_port_and_drain_together() {
    let pki = Pki::new();
    let (_a, _b, mut proxy) = two_backends(&pki, ProxyBuilder::new().workers(2)).await;
    let addr = proxy.addr();
    // 32 at once: SO_REUSEPORT spreads them over both workers' sockets by the client port.
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..32 {
        let config = pki.client_config();
        clients.spawn(async move {
            let sni = if i % 2 == 0 { "a.test" } else { "b.test" };
            let mut c = tls_connect(addr, sni, config).await.unwrap();
            let answer = send_and_finish(&mut c, format!("{i}").as_bytes())
                .await
                .unwrap();
            (i, sni, answer)
        });
    }
    while let Some(done) = clients.join_next().await {
        let (i, sni, answer) = done.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&answer),
            format!("{i}bye from {sni}\n"),
            "client {i}"
        );
    }
    let counters = &proxy.state.listeners()[0].counters;
    assert_eq!(counters.accepted.load(Ordering::Relaxed), 32);
    tokio::time::timeout(Duration::from_secs(10), proxy.stop())
        .await
        .expect("the workers did not drain");
    // Every worker's socket on the port is closed, not just one of them.
    for _ in 0..8 {
        let refused = TcpStream::connect(addr)
            .await
            .map(|_| ())
            .map_err(|e| e.kind());
        assert_eq!(refused, Err(ErrorKind::ConnectionRefused));
    }
}

#[tokio::test]
async fn max_connections_is_one_budget_across_worker_threads() {
    let pki = Pki::new();
    let proxy = ProxyBuilder::new().workers(2).max_connections(1);
    let (_a, _b, proxy) = two_backends(&pki, proxy).await;
    // Held open to the end of the test: it takes the one slot.
    let _held = relayed_to_a(&proxy, &pki, b"1").await;
    // Whichever worker's socket they land on, the one slot is taken. The worker resets on
    // its own thread, so the reset may already be there when `connect` returns.
    for _ in 0..8 {
        match TcpStream::connect(proxy.addr()).await {
            Ok(mut over) => assert_reset(&mut over).await,
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        }
    }
    let counters = &proxy.state.listeners()[0].counters;
    assert_eq!(counters.over_capacity.load(Ordering::Relaxed), 8);
    assert_eq!(counters.accepted.load(Ordering::Relaxed), 9);
}

#[tokio::test]
async fn a_catch_all_route_takes_unknown_names_but_not_hellos_without_sni() {
    let pki = Pki::new();
    let named = TlsBackend::start(&pki, &["a.test"]).await;
    let rest = TlsBackend::start(&pki, &["other.test", "x.y.test"]).await;
    let proxy = ProxyBuilder::new()
        .route("a.test", named.addr)
        .route("*", rest.addr)
        .start()
        .await;
    for sni in ["other.test", "x.y.test"] {
        let mut c = tls_connect(proxy.addr(), sni, pki.client_config())
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        // The catch-all's backend answers (echo, then its name).
        assert_eq!(
            send_and_finish(&mut c, b"hi").await.unwrap(),
            b"hibye from other.test\n"
        );
    }
    let mut c = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    send_and_finish(&mut c, b"hi").await.unwrap();
    assert_eq!((named.accepted(), rest.accepted()), (1, 2));
    // No SNI at all is not "an unknown name": still reset, counted as such.
    let err = tls_connect(proxy.addr(), "127.0.0.1", pki.client_config())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(resets_by_reason(&proxy), [("no_sni", 1)]);
    let route = proxy.state.listeners()[0].lookup("nowhere.test").unwrap();
    assert_eq!(route.route.hostname, "*");
    assert_eq!(
        route.stats.total.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn hellos_without_sni_go_to_the_no_sni_route_set_in_the_toml_or_at_run_time() {
    let pki = Pki::new();
    // Its certificate covers the address, as a health checker's URL names it.
    let a = TlsBackend::start(&pki, &["a.test", "127.0.0.1"]).await;
    let proxy = ProxyBuilder::new()
        .route("a.test", a.addr)
        .no_sni_route("A.Test")
        .start()
        .await;
    let no_sni = || tls_connect(proxy.addr(), "127.0.0.1", pki.client_config());
    let mut c = no_sni().await.unwrap();
    assert_eq!(
        send_and_finish(&mut c, b"ping").await.unwrap(),
        b"pingbye from a.test\n"
    );
    assert_eq!(a.accepted(), 1);
    assert!(resets_by_reason(&proxy).is_empty());

    let mut admin = proxy.admin().await;
    let status = admin.status().await.unwrap();
    assert_eq!(status.listeners[0].no_sni_route, "a.test");
    // The route it names cannot go away under it.
    let err = admin.remove_route(L, "a.test").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("no_sni_route"), "{err}");
    // A name that is no route here is refused, and changes nothing.
    let err = admin.set_no_sni_route(L, "nope.test").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound), "{err}");
    no_sni().await.unwrap();

    // Cleared: reset again, as without the setting.
    let l = admin.set_no_sni_route(L, "").await.unwrap();
    assert_eq!(l.no_sni_route, "");
    let err = no_sni().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(resets_by_reason(&proxy), [("no_sni", 1)]);

    // Set at run time, and kept across a restart like every other change.
    admin.set_no_sni_route(L, "a.test").await.unwrap();
    let dir = proxy.stop_and_keep_dir().await;
    let proxy = Proxy::start_in(dir, "[[listeners]]\naddr = \"127.0.0.1:0\"").await;
    assert_eq!(
        proxy.state.listeners()[0].no_sni_route().as_deref(),
        Some("a.test")
    );
    tls_connect(proxy.addr(), "127.0.0.1", pki.client_config())
        .await
        .unwrap();
}
