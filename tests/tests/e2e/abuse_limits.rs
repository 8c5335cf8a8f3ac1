//! Abuse limits end to end: a listener's limits per client address (concurrent connections,
//! new connections per second), with clients on distinct loopback addresses (`127.0.0.x`
//! binds) or behind a trusted PROXY header; a flooding client is reset before its ClientHello
//! while another keeps being served.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mc_proxy::protocols::proxyproto;
use mc_proxy_shared::ResetReason;
use mc_proxy_shared::client::ListenerUpdate;
use mc_proxy_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The listener of a one-listener test proxy, by its configured address.
const L: &str = "127.0.0.1:0";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A full TLS round trip through the L4 route to the echo backend from `source`.
async fn round_trip_from(source: IpAddr, proxy: SocketAddr, pki: &Pki) -> std::io::Result<()> {
    let mut c = tls_connect_from(source, proxy, b"", "a.test", pki.client_config()).await?;
    let answer = send_and_finish(&mut c, b"hi").await?;
    assert_eq!(answer, b"hibye from a.test\n");
    Ok(())
}

/// Echo one line on an open connection: it is still served.
async fn still_served(c: &mut Client) {
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
        .await
        .expect("no echo within 5 s")
        .unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn a_client_at_max_conns_per_client_is_reset_before_its_hello_while_another_is_served() {
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new()
        .route("a.test", backend.addr)
        .listener_setting("max_conns_per_client", 3)
        .start()
        .await;
    let (_guard, logs) = capture_logs();
    let (flooder, innocent) = (ip("127.0.0.2"), ip("127.0.0.3"));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            tls_connect_from(flooder, proxy.addr(), b"", "a.test", pki.client_config())
                .await
                .unwrap(),
        );
    }
    // Over the cap: reset with nothing sent, so before any ClientHello could be read.
    for _ in 0..5 {
        let mut c = tcp_connect_from(flooder, proxy.addr()).await.unwrap();
        assert_reset(&mut c).await;
    }
    round_trip_from(innocent, proxy.addr(), &pki).await.unwrap();
    let listener = &proxy.state.listeners()[0];
    assert_eq!(listener.counters.resets(ResetReason::ClientConnLimit), 5);
    // The talkers name the flooder, with its count and limit; the innocent is not there.
    let talkers = proxy.admin().await.talkers(0).await.unwrap();
    assert_eq!(talkers.len(), 1, "{talkers:?}");
    let t = &talkers[0];
    assert_eq!(
        (
            t.client.as_str(),
            t.hits,
            t.error,
            t.last.as_str(),
            t.route.as_str()
        ),
        ("127.0.0.2", 5, 0, "client_conn_limit", "")
    );
    assert_eq!(listener.counters.resets(ResetReason::ClientRateLimit), 0);
    // One warning for the burst of refusals (each refusal is a debug line).
    assert!(wait_for_log(&logs, "client limits refused connections").await);
    assert_eq!(
        log_text(&logs)
            .matches("client limits refused connections")
            .count(),
        1,
        "{}",
        log_text(&logs)
    );

    // A connection that ends gives its place back.
    let mut first = held.remove(0);
    send_and_finish(&mut first, b"bye").await.unwrap();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tls_connect_from(flooder, proxy.addr(), b"", "a.test", pki.client_config()).await {
            Ok(c) => {
                held.push(c);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the freed place was not given back: {e}"),
        }
    }

    // A lower cap applies at once to new connections; the open ones are not cut.
    let mut admin = proxy.admin().await;
    let update = ListenerUpdate {
        client_limits: mc_proxy_shared::ClientLimitsPatch {
            max_conns_per_client: Some(1),
            ..Default::default()
        },
        ..ListenerUpdate::default()
    };
    let (status, _) = admin.update_listener(L, update).await.unwrap();
    assert_eq!(status.client_limits.max_conns_per_client, 1);
    for c in &mut held {
        still_served(c).await;
    }
    let mut c = tcp_connect_from(flooder, proxy.addr()).await.unwrap();
    assert_reset(&mut c).await;
    round_trip_from(innocent, proxy.addr(), &pki).await.unwrap();
    let status = &admin.status().await.unwrap().listeners[0];
    assert_eq!(status.resets_by_reason[&ResetReason::ClientConnLimit], 6);
    assert_eq!(status.client_table.capacity, 65_536);
    assert_eq!(status.client_table.entries, 2);

    // The same in /metrics, which promtool accepts.
    let text = crate::admin::scrape(&proxy).await;
    let listener = format!("{{listener=\"{L}\"");
    for line in [
        format!("mcproxy_listener_resets_total{listener},reason=\"client_conn_limit\"}} 6"),
        format!("mcproxy_listener_resets_total{listener},reason=\"client_rate_limit\"}} 0"),
        format!("mcproxy_listener_client_table_capacity{listener}}} 65536"),
        format!("mcproxy_listener_client_table_entries{listener}}} 2"),
        format!("mcproxy_listener_client_table_evictions_total{listener}}} 0"),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    crate::admin::promtool_check(&text);
}

#[tokio::test]
async fn a_connection_flood_from_one_address_gets_the_rate_and_burst_and_no_more() {
    const RATE: u32 = 5;
    const BURST: u32 = 5;
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new()
        .route("a.test", backend.addr)
        .listener_setting("new_conns_per_client", RATE)
        .listener_setting("new_conns_burst", BURST)
        .start()
        .await;
    let (flooder, innocent) = (ip("127.0.0.4"), ip("127.0.0.5"));
    let started = Instant::now();
    let (mut admitted, mut refused, mut served) = (0u32, 0u32, 0u32);
    // Back to back for about 1.5 s.
    while started.elapsed() < Duration::from_millis(1500) {
        match round_trip_from(flooder, proxy.addr(), &pki).await {
            Ok(()) => admitted += 1,
            Err(_) => refused += 1,
        }
        // The other client, within its own rate (4 a second), is served throughout.
        if started.elapsed() >= Duration::from_millis(250) * served {
            round_trip_from(innocent, proxy.addr(), &pki).await.unwrap();
            served += 1;
        }
    }
    assert!(served >= 6, "{served}");
    let elapsed = started.elapsed().as_secs_f64();
    // GCRA: the burst at once, then one per 1/RATE s.
    let most = BURST + (f64::from(RATE) * elapsed).ceil() as u32;
    assert!(
        (BURST..=most).contains(&admitted),
        "admitted {admitted} in {elapsed:.2}s, expected {BURST}..={most}"
    );
    assert!(refused > 0, "the flood was never refused");
    let listener = &proxy.state.listeners()[0];
    assert_eq!(
        listener.counters.resets(ResetReason::ClientRateLimit),
        u64::from(refused)
    );
}

#[tokio::test]
async fn ipv6_clients_behind_a_trusted_proxy_header_are_grouped_by_their_64() {
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new()
        .route("a.test", backend.addr)
        .proxy_protocol_from(&["127.0.0.1"])
        .listener_setting("max_conns_per_client", 1)
        .start()
        .await;
    let header = |client: &str| {
        proxyproto::encode_v2(
            SocketAddr::new(ip(client), 4000),
            "[2001:db8::443]:443".parse().unwrap(),
        )
    };
    let connect = |client: &'static str| {
        let preamble = header(client);
        let config = pki.client_config();
        let addr = proxy.addr();
        async move { tls_connect_from(ip("127.0.0.1"), addr, &preamble, "a.test", config).await }
    };
    let _held = connect("2001:db8:1:2::1").await.unwrap();
    // The same /64, another address: the same client.
    assert!(connect("2001:db8:1:2::ffff").await.is_err());
    // Another /64 of the same /48: another client.
    let mut other = connect("2001:db8:1:3::1").await.unwrap();
    assert_eq!(
        send_and_finish(&mut other, b"hi").await.unwrap(),
        b"hibye from a.test\n"
    );
    let listener = &proxy.state.listeners()[0];
    assert_eq!(listener.counters.resets(ResetReason::ClientConnLimit), 1);
}

/// A PROXY v2 header naming `client` (the proxy trusts it from 127.0.0.1).
fn from_client(client: &str) -> Vec<u8> {
    proxyproto::encode_v2(
        SocketAddr::new(ip(client), 4000),
        "192.0.2.1:443".parse().unwrap(),
    )
}

#[tokio::test]
async fn route_access_lists_reset_l4_clients_and_answer_l7_requests_403() {
    use mc_proxy_tests::web::{H2Backend, ask_h2, h2_client_after, with_body};

    let pki = Pki::new();
    let l4 = TlsBackend::start(&pki, &["a.test"]).await;
    let web = H2Backend::start().await;
    let proxy = ProxyBuilder::new()
        .proxy_protocol_from(&["127.0.0.1"])
        .route("a.test", l4.addr)
        .route_setting("allow_from", r#"["10.0.0.0/8", "2001:db8::/32"]"#)
        .route_setting("deny_from", r#"["10.6.6.0/24"]"#)
        .route("web.test", web.addr)
        .l7(&pki)
        .route_setting("allow_from", r#"["10.0.0.0/8"]"#)
        .route_setting("deny_from", r#"["10.6.6.6"]"#)
        .start()
        .await;
    let lo = ip("127.0.0.1");

    // L4: allowed, allowed over IPv6, denied inside the allowed network, outside it.
    for client in ["10.1.2.3", "2001:db8::5"] {
        let mut c = tls_connect_from(
            lo,
            proxy.addr(),
            &from_client(client),
            "a.test",
            pki.client_config(),
        )
        .await
        .unwrap_or_else(|e| panic!("{client}: {e}"));
        assert_eq!(
            send_and_finish(&mut c, b"hi").await.unwrap(),
            b"hibye from a.test\n"
        );
    }
    for client in ["10.6.6.1", "192.0.2.77"] {
        // The ClientHello is read (it names the route), then the connection is reset.
        let refused = tls_connect_from(
            lo,
            proxy.addr(),
            &from_client(client),
            "a.test",
            pki.client_config(),
        )
        .await
        .map(|_| ())
        .unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionReset,
            "{client}: {refused}"
        );
    }
    assert_eq!(l4.accepted(), 2, "the denied never reached the backend");
    let listener = &proxy.state.listeners()[0];
    assert_eq!(listener.counters.resets(ResetReason::RouteDenied), 2);
    assert_eq!(
        listener.lookup("a.test").unwrap().stats.snapshot().denied,
        2
    );

    // L7: 403 for each request of a denied client, never forwarded; others served.
    let request = || with_body(http::Request::builder().uri("https://web.test/x"), "");
    let mut allowed = h2_client_after(lo, proxy.addr(), &from_client("10.1.1.1"), "web.test", &pki)
        .await
        .unwrap();
    assert_eq!(ask_h2(&mut allowed, request()).await.status, 200);
    for client in ["10.6.6.6", "172.16.0.1"] {
        let mut denied = h2_client_after(lo, proxy.addr(), &from_client(client), "web.test", &pki)
            .await
            .unwrap();
        for _ in 0..2 {
            let answer = ask_h2(&mut denied, request()).await;
            assert_eq!(answer.status, 403, "{client}");
            assert!(answer.body.contains("forbidden"), "{}", answer.body);
        }
    }
    assert_eq!(web.requests(), 1, "no denied request reached the backend");
    let stats = listener.lookup("web.test").unwrap().stats.snapshot();
    assert_eq!(stats.denied, 4);
    assert_eq!(stats.responses[3], 4);

    // A list changed at run time reaches the open connection's next request.
    let mut admin = proxy.admin().await;
    let patch = mc_proxy_shared::RoutePatch {
        limits: mc_proxy_shared::limits::RouteLimitsPatch {
            deny_from: Some(vec!["10.1.0.0/16".into()]),
            ..Default::default()
        },
        ..Default::default()
    };
    let (route, _) = admin.update_route(L, "web.test", patch).await.unwrap();
    assert_eq!(route.limits.deny_from, ["10.1.0.0/16"]);
    assert_eq!(ask_h2(&mut allowed, request()).await.status, 403);
    let routes = admin.list_routes(None).await.unwrap();
    let web_route = routes
        .iter()
        .find(|r| r.route.hostname == "web.test")
        .unwrap();
    assert_eq!(web_route.stats.limits.denied, 5);
    assert_eq!(web_route.route.limits.allow_from, ["10.0.0.0/8"]);
}

/// Sends GET requests on `client` back to back for `secs`; (answered 200, answered 429).
async fn flood_h2(
    client: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    secs: f64,
) -> (u64, u64) {
    use mc_proxy_tests::web::{ask_h2, with_body};
    let started = Instant::now();
    let (mut ok, mut limited) = (0, 0);
    while started.elapsed().as_secs_f64() < secs {
        let answer = ask_h2(
            client,
            with_body(http::Request::builder().uri("https://web.test/flood"), ""),
        )
        .await;
        match answer.status.as_u16() {
            200 => ok += 1,
            429 => {
                // Whole seconds, computed from the bucket: at 10 a second, under one.
                assert_eq!(answer.header("retry-after"), "1");
                limited += 1;
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn a_request_flood_is_answered_429_and_the_backend_sees_only_the_rate() {
    use mc_proxy_tests::web::{H2Backend, h2_client_after};
    const RATE: u64 = 10;
    const BURST: u64 = 5;
    let pki = Pki::new();
    let web = H2Backend::start().await;
    let proxy = ProxyBuilder::new()
        .route("web.test", web.addr)
        .l7(&pki)
        .route_setting("client_request_rate", RATE)
        .route_setting("client_request_burst", BURST)
        .start()
        .await;
    let mut flooder = h2_client_after(ip("127.0.0.8"), proxy.addr(), b"", "web.test", &pki)
        .await
        .unwrap();
    let started = Instant::now();
    let (ok, limited) = flood_h2(&mut flooder, 2.0).await;
    let elapsed = started.elapsed().as_secs_f64();
    // GCRA: the burst at once, then one every 1/RATE s; a little slack for the clock.
    let least = BURST + (RATE as f64 * elapsed).floor() as u64 - 1;
    let most = BURST + (RATE as f64 * elapsed).ceil() as u64;
    assert!(
        (least..=most).contains(&ok),
        "{ok} served in {elapsed:.2}s, expected {least}..={most}"
    );
    assert!(
        limited > 2 * ok,
        "a flood, not a trickle: {limited} refused"
    );
    // Never forwarded: the backend saw exactly the ones served.
    assert_eq!(web.requests() as u64, ok);
    // Another client is not held back by the flooder's bucket.
    let mut other = h2_client_after(ip("127.0.0.9"), proxy.addr(), b"", "web.test", &pki)
        .await
        .unwrap();
    let (ok_other, limited_other) = flood_h2(&mut other, 0.1).await;
    assert!(
        ok_other >= BURST.min(3) && ok_other <= BURST + 1,
        "{ok_other}"
    );
    let _ = limited_other;
    let stats = web_stats_of(&proxy);
    assert_eq!(stats.rate_limited, limited + limited_other);
    assert_eq!(stats.responses[3], limited + limited_other);
    // The flooder tops the talkers with every 429 it got, on its route.
    let talkers = proxy.admin().await.talkers(1).await.unwrap();
    assert_eq!(
        (
            talkers[0].client.as_str(),
            talkers[0].hits,
            talkers[0].last.as_str()
        ),
        ("127.0.0.8", limited, "rate_limited")
    );
    assert_eq!(talkers[0].route, "web.test");

    // The same in /metrics.
    let text = crate::admin::scrape(&proxy).await;
    let line = format!(
        "mcproxy_route_rate_limited_total{{listener=\"{L}\",route=\"web.test\"}} {}",
        limited + limited_other
    );
    assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
}

#[tokio::test]
async fn a_route_rate_holds_for_every_client_together() {
    use mc_proxy_tests::web::{H2Backend, h2_client_after};
    const RATE: u64 = 20;
    let pki = Pki::new();
    let web = H2Backend::start().await;
    let proxy = ProxyBuilder::new()
        .route("web.test", web.addr)
        .l7(&pki)
        .route_setting("route_request_rate", RATE)
        .route_setting("route_request_burst", 1)
        .start()
        .await;
    let started = Instant::now();
    let floods = ["127.0.0.10", "127.0.0.11", "127.0.0.12"].map(|source| {
        let (addr, pki) = (proxy.addr(), &pki);
        async move {
            let mut c = h2_client_after(ip(source), addr, b"", "web.test", pki)
                .await
                .unwrap();
            flood_h2(&mut c, 1.5).await
        }
    });
    let results = futures_util::future::join_all(floods).await;
    let elapsed = started.elapsed().as_secs_f64();
    let ok: u64 = results.iter().map(|(ok, _)| ok).sum();
    let least = (RATE as f64 * (elapsed - 0.2)).floor() as u64;
    let most = 1 + (RATE as f64 * elapsed).ceil() as u64;
    assert!(
        (least..=most).contains(&ok),
        "{ok} served in {elapsed:.2}s, expected {least}..={most}"
    );
    assert_eq!(web.requests() as u64, ok);
    // Every client got some: the bucket is first come, first served, not one client's.
    assert!(results.iter().all(|(ok, _)| *ok > 0), "{results:?}");
}

fn web_stats_of(proxy: &Proxy) -> mc_proxy::model::stats::RouteStatsSnapshot {
    mc_proxy_tests::web::web_stats(proxy)
}

#[tokio::test]
async fn max_requests_queues_a_few_and_answers_503_past_the_queue_or_its_timeout() {
    use mc_proxy_tests::web::{H2Backend, H2Options, ask_h2, h2_client, with_body};
    const DELAY: Duration = Duration::from_millis(400);
    let pki = Pki::new();
    let web = H2Backend::start_with(H2Options {
        delay: Some(DELAY),
        ..H2Options::default()
    })
    .await;
    let proxy = ProxyBuilder::new()
        .route("web.test", web.addr)
        .l7(&pki)
        .route_setting("max_requests", 2)
        .route_setting("max_queue", 2)
        .route_setting("queue_timeout", "\"1s\"")
        .start()
        .await;
    let client = h2_client(proxy.addr(), "web.test", &pki).await;
    // Six at once: two in flight, two queued (served as the first two end), two refused.
    let asks = (0..6).map(|i| {
        let mut client = client.clone();
        async move {
            // Started a little apart, so that which ones wait is known.
            tokio::time::sleep(Duration::from_millis(20 * i)).await;
            let started = Instant::now();
            let answer = ask_h2(
                &mut client,
                with_body(http::Request::builder().uri("https://web.test/slow"), ""),
            )
            .await;
            (answer.status.as_u16(), started.elapsed())
        }
    });
    let mut answers = futures_util::future::join_all(asks).await;
    // By how long they took (which one waited depends on arrival, not on the order sent).
    answers.sort_by_key(|(_, took)| *took);
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [503, 503, 200, 200, 200, 200], "{answers:?}");
    // Past the queue: refused at once, never forwarded.
    for (_, took) in &answers[..2] {
        assert!(*took < DELAY, "{answers:?}");
    }
    // Two served at once; the queued two waited for a slot: one delay, then their own.
    for (_, took) in &answers[2..4] {
        assert!(*took >= DELAY - Duration::from_millis(50), "{answers:?}");
    }
    for (_, took) in &answers[4..] {
        assert!(
            *took >= DELAY * 2 - Duration::from_millis(100),
            "{answers:?}"
        );
    }
    assert_eq!(web.requests(), 4);

    // A queue timeout shorter than the backend's answers: the third waits it out, then 503.
    let mut admin = proxy.admin().await;
    let patch = mc_proxy_shared::RoutePatch {
        limits: mc_proxy_shared::limits::RouteLimitsPatch {
            queue_timeout_ms: Some(200),
            ..Default::default()
        },
        ..Default::default()
    };
    admin.update_route(L, "web.test", patch).await.unwrap();
    let asks = (0..3).map(|i| {
        let mut client = client.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20 * i)).await;
            let started = Instant::now();
            let answer = ask_h2(
                &mut client,
                with_body(http::Request::builder().uri("https://web.test/slow"), ""),
            )
            .await;
            (answer.status.as_u16(), started.elapsed())
        }
    });
    let mut answers = futures_util::future::join_all(asks).await;
    answers.sort_by_key(|(status, _)| *status);
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 200, 503], "{answers:?}");
    // The one that found both slots busy waited its queue_timeout out, not more.
    let waited = answers[2].1;
    assert!(
        waited >= Duration::from_millis(190) && waited < DELAY,
        "{answers:?}"
    );
    let routes = admin.list_routes(None).await.unwrap();
    let limits = routes[0].stats.limits;
    assert_eq!(
        (
            limits.overloaded,
            limits.queued,
            limits.in_flight,
            limits.waiting
        ),
        (3, 3, 0, 0)
    );
}
