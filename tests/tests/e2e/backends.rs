//! Routes with several backends end to end: real TLS echo backends behind an L4 route and
//! real h2c backends behind an L7 route, connections and requests counted per backend,
//! backends killed and brought back under load, active health checks timed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use mc_proxy_shared::{AdminState, BackendState, MemberStats, ResetReason};
use mc_proxy_tests::web::*;
use mc_proxy_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The live figures of the first listener's route `host`, one per member.
fn members(proxy: &Proxy, host: &str) -> Vec<MemberStats> {
    proxy.state.listeners()[0]
        .lookup(host)
        .expect("the route")
        .members()
}

/// Waits (up to 10 s) until the member at `addr` is in `state`; returns how long it took.
async fn wait_state(proxy: &Proxy, host: &str, addr: SocketAddr, state: BackendState) -> Duration {
    let started = Instant::now();
    let addr = addr.to_string();
    loop {
        let now = members(proxy, host);
        let m = now.iter().find(|m| m.address == addr).expect("the member");
        if m.state == state {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{addr} still {} (not {state}) after 10 s: {now:?}",
            m.state
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One L4 connection through the proxy to `a.test`: returns the name of the backend that
/// answered (`bye from NAME`).
async fn l4_once(proxy: SocketAddr, pki: &Pki) -> std::io::Result<String> {
    let mut client = tls_connect(proxy, "a.test", pki.client_config()).await?;
    let answer = send_and_finish(&mut client, b"ping").await?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let name = text
        .strip_prefix("ping")
        .and_then(|t| t.strip_prefix("bye from "))
        .map(|t| t.trim_end().to_owned());
    name.ok_or_else(|| std::io::Error::other(format!("unexpected answer {text:?}")))
}

/// Three TLS echo backends named `one.a.test`, `two.a.test`, `three.a.test` (each also
/// valid for `a.test`).
async fn three_tls(pki: &Pki) -> Vec<TlsBackend> {
    let mut out = Vec::new();
    for name in ["one.a.test", "two.a.test", "three.a.test"] {
        out.push(TlsBackend::start(pki, &[name, "a.test"]).await);
    }
    out
}

fn count(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

#[tokio::test]
async fn l4_connections_follow_the_weights() {
    let pki = Pki::new();
    let b = three_tls(&pki).await;
    let proxy = ProxyBuilder::new()
        .route_to("a.test", &[(b[0].addr, 1), (b[1].addr, 2), (b[2].addr, 3)])
        .start()
        .await;
    let mut names = Vec::new();
    for _ in 0..300 {
        names.push(l4_once(proxy.addr(), &pki).await.unwrap());
    }
    // 1:2:3 of 300, within 10 %.
    for (name, expected) in [
        ("one.a.test", 50),
        ("two.a.test", 100),
        ("three.a.test", 150),
    ] {
        let got = count(&names, name);
        assert!(
            got.abs_diff(expected) <= expected / 10,
            "{name}: {got} of 300, expected about {expected}"
        );
    }
    let m = members(&proxy, "a.test");
    assert_eq!(m.iter().map(|m| m.total).sum::<u64>(), 300);
    assert!(m.iter().all(|m| m.active == 0 && m.failures == 0), "{m:?}");
}

#[tokio::test]
async fn l4_source_balance_keeps_a_client_on_one_backend() {
    let pki = Pki::new();
    let b = three_tls(&pki).await;
    let proxy = ProxyBuilder::new()
        .route_to("a.test", &[(b[0].addr, 1), (b[1].addr, 1), (b[2].addr, 1)])
        .balance("source")
        .start()
        .await;
    let first = l4_once(proxy.addr(), &pki).await.unwrap();
    for _ in 0..20 {
        assert_eq!(l4_once(proxy.addr(), &pki).await.unwrap(), first);
    }
}

#[tokio::test]
async fn l4_a_killed_backend_costs_no_connection_is_marked_down_and_comes_back() {
    let pki = Arc::new(Pki::new());
    let mut b = three_tls(&pki).await;
    let interval = Duration::from_millis(200);
    let (rise, fall) = (2, 2);
    let proxy = ProxyBuilder::new()
        .route_to("a.test", &[(b[0].addr, 1), (b[1].addr, 1), (b[2].addr, 1)])
        .health_check(interval, rise, fall, None)
        .start()
        .await;
    let addr = proxy.addr();

    // Load from 4 clients while `two` dies: every connection must be served.
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (pki, served) = (Arc::clone(&pki), Arc::clone(&served));
        load.spawn(async move {
            let mut names = Vec::new();
            for _ in 0..60 {
                names.push(l4_once(addr, &pki).await.expect("a served connection"));
                served.fetch_add(1, Ordering::SeqCst);
            }
            names
        });
    }
    while served.load(Ordering::SeqCst) < 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dead = b.remove(1);
    let dead_addr = dead.addr;
    drop(dead);
    let killed = Instant::now();
    let mut names = Vec::new();
    while let Some(res) = timed(load.join_next()).await {
        names.extend(res.unwrap());
    }
    assert_eq!(names.len(), 240, "every client connection was served");
    assert!(count(&names, "one.a.test") > 0 && count(&names, "three.a.test") > 0);

    // Marked down by the active check: `fall` failed probes, one per interval.
    wait_state(&proxy, "a.test", dead_addr, BackendState::Down).await;
    let down_after = killed.elapsed();
    assert!(
        down_after >= interval * (fall - 1) - Duration::from_millis(50),
        "down after {down_after:?}: sooner than {fall} probes {interval:?} apart"
    );
    assert!(
        down_after <= interval * (fall + 1) + Duration::from_millis(500),
        "down only after {down_after:?}"
    );
    let before = members(&proxy, "a.test")[1].total;
    for _ in 0..12 {
        assert_ne!(l4_once(addr, &pki).await.unwrap(), "two.a.test");
    }
    assert_eq!(
        members(&proxy, "a.test")[1].total,
        before,
        "nothing sent to a down member"
    );

    // Back on its address: up after `rise` passed probes, then it takes its share again.
    let back = TlsBackend::start_on(&pki, &["two.a.test", "a.test"], dead_addr).await;
    let up_after = wait_state(&proxy, "a.test", dead_addr, BackendState::Up).await;
    assert!(
        up_after >= interval * (rise - 1) - Duration::from_millis(50),
        "up after {up_after:?}: sooner than {rise} probes"
    );
    let mut names = Vec::new();
    for _ in 0..30 {
        names.push(l4_once(addr, &pki).await.unwrap());
    }
    assert!(count(&names, "two.a.test") >= 8, "{names:?}");
    assert!(back.accepted() >= 8);
}

#[tokio::test]
async fn l4_with_every_backend_down_resets_with_no_backend() {
    let pki = Pki::new();
    let (dead1, dead2) = (DeadBackend::new(), DeadBackend::new());
    let interval = Duration::from_millis(100);
    let proxy = ProxyBuilder::new()
        .route_to("a.test", &[(dead1.addr, 1), (dead2.addr, 1)])
        .health_check(interval, 1, 1, None)
        .start()
        .await;
    // Before the checks say so, a connection tries both and is reset as unreachable.
    wait_state(&proxy, "a.test", dead1.addr, BackendState::Down).await;
    wait_state(&proxy, "a.test", dead2.addr, BackendState::Down).await;
    let counters = &proxy.state.listeners()[0].counters;
    let before = counters.resets(ResetReason::NoBackend);
    let err = l4_once(proxy.addr(), &pki).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!(counters.resets(ResetReason::NoBackend), before + 1);
    let route = proxy.state.listeners()[0].lookup("a.test").unwrap();
    assert_eq!(route.stats.snapshot().no_backend, 1);
    // No dial was made for it: every member's failures came from nowhere else.
    assert!(
        route.members().iter().all(|m| m.total == 0),
        "{:?}",
        route.members()
    );
}

#[tokio::test]
async fn l4_a_refused_dial_goes_to_the_next_backend_and_ejects_after_three() {
    let pki = Pki::new();
    let dead = DeadBackend::new();
    let live = TlsBackend::start(&pki, &["live.a.test", "a.test"]).await;
    let proxy = ProxyBuilder::new()
        .route_to("a.test", &[(dead.addr, 1), (live.addr, 1)])
        .start()
        .await;
    for _ in 0..10 {
        assert_eq!(l4_once(proxy.addr(), &pki).await.unwrap(), "live.a.test");
    }
    let m = members(&proxy, "a.test");
    // Three failures in a row eject it; it is not tried again within the 5 s cooldown.
    assert_eq!((m[0].failures, m[0].ejections), (3, 1), "{m:?}");
    assert_eq!(m[0].state, BackendState::Ejected);
    assert!(
        m[0].reason.contains("3 failures in a row"),
        "{}",
        m[0].reason
    );
    assert_eq!(m[1].total, 10);
    // One meaning on both layers: the three failovers are retries the clients never saw, not
    // backend errors (which colour the console's row).
    let stats = proxy.state.listeners()[0]
        .lookup("a.test")
        .unwrap()
        .stats
        .snapshot();
    assert_eq!((stats.backend_errors, stats.retries), (0, 3), "{stats:?}");
    // The admin API says the same.
    let listed = proxy.admin().await.list_routes(None).await.unwrap();
    assert_eq!(
        (listed[0].stats.backend_errors, listed[0].stats.retries),
        (0, 3)
    );
}

/// `n` GETs on one HTTP/2 client connection, one after another; every one must be 200.
async fn h2_gets(addr: SocketAddr, pki: &Pki, n: usize) {
    let mut client = h2_client(addr, "web.test", pki).await;
    for i in 0..n {
        let req = Request::builder().uri(format!("https://web.test/g/{i}"));
        let resp = timed(ask_h2(&mut client, with_body(req, ""))).await;
        assert_eq!(resp.status, 200, "GET {i}: {}", resp.body);
    }
}

#[tokio::test]
async fn l7_requests_follow_the_weights_per_request() {
    let pki = Pki::new();
    let b = [
        H2Backend::start().await,
        H2Backend::start().await,
        H2Backend::start().await,
    ];
    let proxy = ProxyBuilder::new()
        .route_to(
            "web.test",
            &[(b[0].addr, 1), (b[1].addr, 1), (b[2].addr, 2)],
        )
        .l7(&pki)
        .start()
        .await;
    // One client connection: the choice is per request, not per connection.
    h2_gets(proxy.addr(), &pki, 200).await;
    let got: Vec<usize> = b.iter().map(|b| b.requests()).collect();
    for (got, expected) in got.iter().zip([50, 50, 100]) {
        assert!(got.abs_diff(expected) <= expected / 10, "{got:?}");
    }
}

#[tokio::test]
async fn l7_a_killed_backend_fails_no_idempotent_request_and_is_marked_down() {
    let pki = Arc::new(Pki::new());
    let mut b = vec![
        H2Backend::start().await,
        H2Backend::start().await,
        H2Backend::start().await,
    ];
    let interval = Duration::from_millis(200);
    let proxy = ProxyBuilder::new()
        .route_to(
            "web.test",
            &[(b[0].addr, 1), (b[1].addr, 1), (b[2].addr, 1)],
        )
        .l7(&pki)
        .health_check(interval, 2, 2, Some("/healthz"))
        .start()
        .await;
    let addr = proxy.addr();
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (pki, done) = (Arc::clone(&pki), Arc::clone(&done));
        load.spawn(async move {
            let mut client = h2_client(addr, "web.test", &pki).await;
            for i in 0..100 {
                let req = Request::builder().uri(format!("https://web.test/k/{i}"));
                let resp = timed(ask_h2(&mut client, with_body(req, ""))).await;
                assert_eq!(resp.status, 200, "GET {i}: {}", resp.body);
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    while done.load(Ordering::SeqCst) < 60 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let dead = b.remove(1);
    let dead_addr = dead.addr;
    drop(dead);
    while let Some(res) = timed(load.join_next()).await {
        res.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 400);
    let took = wait_state(&proxy, "web.test", dead_addr, BackendState::Down).await;
    assert!(
        took <= interval * 3 + Duration::from_millis(500),
        "{took:?}"
    );
    // The probes asked for the path, with the route's name.
    let probe = (0..b[0].requests())
        .map(|i| b[0].seen(i))
        .find(|s| s.path == "/healthz")
        .expect("a probe reached a live backend");
    assert_eq!(probe.authority.as_deref(), Some("web.test"));
}

#[tokio::test]
async fn l7_with_every_backend_down_answers_503() {
    let pki = Pki::new();
    let dead = DeadBackend::new();
    let proxy = ProxyBuilder::new()
        .route_to("web.test", &[(dead.addr, 1)])
        .l7(&pki)
        .health_check(Duration::from_millis(100), 1, 1, Some("/"))
        .start()
        .await;
    wait_state(&proxy, "web.test", dead.addr, BackendState::Down).await;
    let m = member(&proxy, "web.test", dead.addr);
    assert_eq!(m.reason, "a check failed: connect refused", "{m:?}");
    let mut client = h2_client(proxy.addr(), "web.test", &pki).await;
    let resp = ask_h2(
        &mut client,
        with_body(Request::builder().uri("https://web.test/"), ""),
    )
    .await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.body, "service unavailable: no backend is available\n");
    assert_eq!(web_stats(&proxy).no_backend, 1);
}

#[tokio::test]
async fn drain_lets_a_long_transfer_finish_while_new_connections_go_elsewhere() {
    let pki = Pki::new();
    let (x, y) = (
        TlsBackend::start(&pki, &["x.a.test", "a.test"]).await,
        TlsBackend::start(&pki, &["y.a.test", "a.test"]).await,
    );
    let builder = ProxyBuilder::new().route_to("a.test", &[(x.addr, 1), (y.addr, 1)]);
    let body = builder.toml();
    let proxy = builder.start().await;
    let addr = proxy.addr();

    // A long transfer on x: round robin starts with the first member.
    let mut long = tls_connect(addr, "a.test", pki.client_config())
        .await
        .unwrap();
    let mut echo = [0u8; 5];
    long.write_all(b"first").await.unwrap();
    long.read_exact(&mut echo).await.unwrap();
    assert_eq!(members(&proxy, "a.test")[0].active, 1);

    let mut admin = proxy.admin().await;
    let stored = admin
        .set_backend_state(
            "127.0.0.1:0",
            "a.test",
            &x.addr.to_string(),
            AdminState::Draining,
        )
        .await
        .unwrap();
    assert_eq!(stored.backends[0].state, AdminState::Draining);
    assert_eq!(members(&proxy, "a.test")[0].state, BackendState::Draining);

    // New connections all go to y while x drains.
    for _ in 0..6 {
        assert_eq!(l4_once(addr, &pki).await.unwrap(), "y.a.test");
    }
    // The transfer on x goes on, and ends as it would have.
    for chunk in [&b"second"[..], b"third"] {
        long.write_all(chunk).await.unwrap();
        let mut back = vec![0u8; chunk.len()];
        long.read_exact(&mut back).await.unwrap();
        assert_eq!(back, chunk);
    }
    long.shutdown().await.unwrap();
    let mut rest = Vec::new();
    long.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"bye from x.a.test\n");
    let m = members(&proxy, "a.test");
    assert_eq!((m[0].active, m[0].total, m[1].total), (0, 1, 6), "{m:?}");

    // Persisted: a restart keeps it draining; enabling puts it back in rotation.
    let dir = proxy.stop_and_keep_dir().await;
    let proxy = Proxy::start_in(dir, &body).await;
    assert_eq!(members(&proxy, "a.test")[0].state, BackendState::Draining);
    proxy
        .admin()
        .await
        .set_backend_state(
            "127.0.0.1:0",
            "a.test",
            &x.addr.to_string(),
            AdminState::Enabled,
        )
        .await
        .unwrap();
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(l4_once(proxy.addr(), &pki).await.unwrap());
    }
    assert_eq!(count(&names, "x.a.test"), 2, "{names:?}");
}

#[tokio::test]
async fn l7_a_refused_dial_goes_to_the_next_backend_and_counts_against_the_dead_one() {
    let pki = Pki::new();
    let dead = DeadBackend::new();
    let live = H1Backend::start().await;
    let proxy = ProxyBuilder::new()
        .route_to(
            "web.test",
            &[(dead.addr.to_string(), 1), (live.addr.to_string(), 1)],
        )
        .l7(&pki)
        .backend_protocol(mc_proxy_shared::BackendProtocol::Http1)
        .start()
        .await;
    h2_gets(proxy.addr(), &pki, 10).await;
    assert_eq!(live.requests(), 10);
    let m = members(&proxy, "web.test");
    // Each refused dial counted once, then ejected: passive health sees what clients do not.
    assert_eq!((m[0].failures, m[0].ejections), (3, 1), "{m:?}");
    assert_eq!(m[0].state, BackendState::Ejected);
    let stats = web_stats(&proxy);
    assert_eq!((stats.backend_errors, stats.retries), (0, 3), "{stats:?}");
}

#[tokio::test]
async fn the_access_line_quotes_an_l7_routes_backend_set_for_logfmt_parsers() {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let b = [H2Backend::start().await, H2Backend::start().await];
    let proxy = ProxyBuilder::new()
        .route_to("web.test", &[(b[0].addr, 1), (b[1].addr, 1)])
        .l7(&pki)
        .start()
        .await;
    h2_gets(proxy.addr(), &pki, 1).await;
    // One value with its space inside quotes, not `backend=a:1, b:2` (two tokens).
    let expected = format!("backend=\"{}, {}\"", b[0].addr, b[1].addr);
    assert!(
        wait_for_log(&logs, &expected).await,
        "no {expected} in:\n{}",
        log_text(&logs)
    );
}

#[tokio::test]
async fn an_l4_connection_is_named_with_the_member_it_went_to_not_the_routes_set() {
    use futures_util::StreamExt;
    use mc_proxy_shared::client::Event;
    let pki = Pki::new();
    let b = three_tls(&pki).await;
    let proxy = ProxyBuilder::new()
        .route_to("a.test", &[(b[0].addr, 1), (b[1].addr, 1), (b[2].addr, 1)])
        .start()
        .await;
    let mut admin = proxy.admin().await;
    let mut events = Box::pin(admin.watch_events().await.unwrap());
    proxy.wait_for_watchers().await;
    // Round robin starts with the first member; the connection stays open while we look.
    let mut c = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    c.read_exact(&mut echo).await.unwrap();
    let first = b[0].addr.to_string();

    let listed = proxy.admin().await.list_connections(0).await.unwrap();
    let backends: Vec<&str> = listed
        .connections
        .iter()
        .map(|c| c.backend.as_str())
        .collect();
    assert_eq!(backends, [first.as_str()]);
    let opened = timed(async {
        loop {
            let event = events.next().await.unwrap().unwrap().event;
            if let Event::ConnectionOpened { backend, .. } = event {
                return backend;
            }
        }
    })
    .await;
    assert_eq!(opened, first);
}

#[tokio::test]
async fn one_backends_weight_changes_at_run_time_and_bad_weights_change_nothing() {
    let pki = Pki::new();
    let b = three_tls(&pki).await;
    let proxy = ProxyBuilder::new()
        .route_to("a.test", &[(b[0].addr, 1), (b[1].addr, 1)])
        .start()
        .await;
    let mut admin = proxy.admin().await;
    let one = b[0].addr.to_string();

    // 0, 257 and "nothing to change" are refused; the set is untouched.
    for (state, weight) in [(None, Some(0)), (None, Some(257)), (None, None)] {
        let err = admin
            .set_backend("127.0.0.1:0", "a.test", &one, state, weight)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    }
    assert!(members(&proxy, "a.test").iter().all(|m| m.weight == 1));

    // Weight 3 for one member: stored, live at once, its state and the other member kept.
    let route = admin
        .set_backend("127.0.0.1:0", "a.test", &one, None, Some(3))
        .await
        .unwrap();
    assert_eq!(
        route
            .backends
            .iter()
            .map(|m| (m.weight, m.state))
            .collect::<Vec<_>>(),
        [(3, AdminState::Enabled), (1, AdminState::Enabled)]
    );
    let mut names = Vec::new();
    for _ in 0..200 {
        names.push(l4_once(proxy.addr(), &pki).await.unwrap());
    }
    assert_eq!(count(&names, "one.a.test"), 150, "{names:?}");
    assert_eq!(count(&names, "two.a.test"), 50, "{names:?}");
    let stored = admin.list_routes(None).await.unwrap();
    assert_eq!(stored[0].route.backends[0].weight, 3);
}

// Health checks an operator can read (issue 28): states that carry their "since", a reason that
// follows the last check result, `unknown` until something is known, the L4 TLS check.

/// Milliseconds since the Unix epoch now.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The member at `addr` of the first listener's route `host`.
fn member(proxy: &Proxy, host: &str, addr: SocketAddr) -> MemberStats {
    let addr = addr.to_string();
    members(proxy, host)
        .into_iter()
        .find(|m| m.address == addr)
        .expect("the member")
}

#[tokio::test]
async fn l4_tls_check_marks_a_backend_that_accepts_tcp_but_never_answers_the_hello_down() {
    let pki = Pki::new();
    let live = TlsBackend::start(&pki, &["a.test"]).await;
    // Listening (the kernel completes TCP handshakes) but nobody ever reads or writes: a
    // wedged TLS server, which a TCP connect check would call up.
    let wedged = DeadBackend::new().listen();
    let wedged_addr = wedged.local_addr().unwrap();
    let (interval, fall) = (Duration::from_millis(300), 2);
    let timeout = interval / 2;
    let proxy = ProxyBuilder::new()
        .route_to("a.test", &[(live.addr, 1), (wedged_addr, 1)])
        .health_check(interval, 2, fall, None)
        .start()
        .await;
    let started = Instant::now();
    let first = member(&proxy, "a.test", wedged_addr);
    if started.elapsed() < timeout {
        // No probe of it can have ended yet: nothing is known.
        assert_eq!(first.state, BackendState::Unknown, "{first:?}");
        assert_eq!(first.last_check, None);
    }

    let took = wait_state(&proxy, "a.test", wedged_addr, BackendState::Down).await;
    // `fall` probes, each running into the timeout, an interval apart.
    let least = interval * (fall - 1) + timeout * fall - Duration::from_millis(50);
    assert!(took >= least, "down after {took:?}, sooner than {least:?}");
    assert!(
        took <= least + interval + Duration::from_secs(1),
        "down only after {took:?}"
    );
    let m = member(&proxy, "a.test", wedged_addr);
    let words = "TLS handshake timeout after 150ms";
    assert!(m.reason.contains(words), "{m:?}");
    let last = m.last_check.clone().expect("a check result");
    assert_eq!(last.error.as_deref(), Some(words));
    assert!(last.latency >= timeout, "{last:?}");
    assert!(
        m.checks_failed >= u64::from(fall) && m.checks_passed == 0,
        "{m:?}"
    );

    // The real TLS backend completes the handshake: up, the result ok and quick.
    let ok = member(&proxy, "a.test", live.addr);
    assert_eq!(ok.state, BackendState::Up, "{ok:?}");
    let last = ok.last_check.clone().expect("a check result");
    assert_eq!(last.error, None);
    assert!(last.latency < timeout, "{last:?}");
    assert!(!ok.reason.contains("fail"), "{ok:?}");
    // Clients go to the one that answers.
    for _ in 0..4 {
        l4_once(proxy.addr(), &pki).await.unwrap();
    }
    assert_eq!(member(&proxy, "a.test", wedged_addr).total, 0);
    drop(wedged);
}

#[tokio::test]
async fn unknown_until_the_first_check_then_up_and_a_recovered_backend_shows_no_old_failure() {
    let pki = Pki::new();
    let live = TlsBackend::start(&pki, &["a.test"]).await;
    let dead = DeadBackend::new();
    let dead_addr = dead.addr;
    let (interval, rise, fall) = (Duration::from_millis(500), 2, 2);
    let proxy = ProxyBuilder::new()
        .route_to("a.test", &[(live.addr, 1), (dead_addr, 1)])
        .health_check(interval, rise, fall, None)
        .start()
        .await;
    let before_start = wall_ms();
    // Unknown is not down: its first passed check makes it up at once, not `rise` checks
    // (an interval apart) later.
    let took = wait_state(&proxy, "a.test", live.addr, BackendState::Up).await;
    assert!(took < interval, "up only after {took:?}");
    let up = member(&proxy, "a.test", live.addr);
    assert_eq!(up.reason, "the first check passed");
    assert_eq!(up.last_check.as_ref().unwrap().error, None);

    wait_state(&proxy, "a.test", dead_addr, BackendState::Down).await;
    let down = member(&proxy, "a.test", dead_addr);
    assert_eq!(down.reason, "2 checks failed in a row: connect refused");
    assert_eq!(
        down.last_check.as_ref().unwrap().error.as_deref(),
        Some("connect refused")
    );
    assert!(down.since_ms + 1000 >= before_start, "{down:?}");

    // Back on its address: up after `rise` passed checks, with nothing of the failure left.
    drop(dead);
    let back_at = wall_ms();
    let _back = TlsBackend::start_on(&pki, &["a.test"], dead_addr).await;
    let took = wait_state(&proxy, "a.test", dead_addr, BackendState::Up).await;
    assert!(
        took >= interval * (rise - 1) - Duration::from_millis(50),
        "up after {took:?}: sooner than {rise} checks"
    );
    let m = member(&proxy, "a.test", dead_addr);
    assert_eq!(m.reason, "2 checks passed in a row", "{m:?}");
    assert_eq!(m.last_check.as_ref().unwrap().error, None, "{m:?}");
    assert!(m.since_ms >= back_at, "{m:?} since before {back_at}");
    assert!(m.checks_failed >= 2 && m.checks_passed >= 2, "{m:?}");
}

#[tokio::test]
async fn an_ejection_is_not_shown_once_its_cooldown_is_over() {
    let pki = Pki::new();
    let mut b = vec![
        TlsBackend::start(&pki, &["one.a.test", "a.test"]).await,
        TlsBackend::start(&pki, &["two.a.test", "a.test"]).await,
    ];
    let cooldown = Duration::from_millis(400);
    let proxy = ProxyBuilder::new()
        .route_to("a.test", &[(b[0].addr, 1), (b[1].addr, 1)])
        .backend_eject_time(cooldown)
        .start()
        .await;
    // No check and no traffic yet: nothing is known of either.
    let m = members(&proxy, "a.test");
    assert!(
        m.iter()
            .all(|m| m.state == BackendState::Unknown && m.last_check.is_none()),
        "{m:?}"
    );
    for _ in 0..4 {
        l4_once(proxy.addr(), &pki).await.unwrap();
    }
    let m = members(&proxy, "a.test");
    assert!(m.iter().all(|m| m.state == BackendState::Up), "{m:?}");
    assert_eq!(m[0].reason, "the first connection went through");

    let gone = b.remove(0);
    let gone_addr = gone.addr;
    drop(gone);
    for _ in 0..8 {
        assert_eq!(l4_once(proxy.addr(), &pki).await.unwrap(), "two.a.test");
    }
    let ejected = member(&proxy, "a.test", gone_addr);
    let ejected_at = Instant::now();
    assert_eq!(ejected.state, BackendState::Ejected, "{ejected:?}");
    assert!(
        ejected.reason.starts_with("ejected until ") && ejected.reason.contains("(400ms)"),
        "{ejected:?}"
    );

    // Over: up again (the next connection is its trial), the ejection no longer quoted.
    let took = wait_state(&proxy, "a.test", gone_addr, BackendState::Up).await;
    assert!(
        took + Duration::from_millis(50) >= cooldown.saturating_sub(ejected_at.elapsed() - took),
        "the cooldown was cut short: {took:?}"
    );
    assert!(took <= cooldown + Duration::from_secs(1), "{took:?}");
    // The walk publishes the end within a tick, with its reason and a new "since".
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = member(&proxy, "a.test", gone_addr);
    assert_eq!(m.state, BackendState::Up, "{m:?}");
    assert!(!m.reason.contains("ejected until"), "{m:?}");
    assert!(m.reason.contains("cooldown is over"), "{m:?}");
    assert!(m.since_ms > ejected.since_ms, "{m:?} vs {ejected:?}");
}

#[tokio::test]
async fn l7_expect_takes_codes_ranges_and_classes_and_a_changed_check_drops_old_results() {
    let pki = Pki::new();
    let web = H2Backend::start().await;
    let proxy = ProxyBuilder::new()
        .route_to("web.test", &[(web.addr, 1)])
        .l7(&pki)
        .health_check(Duration::from_millis(200), 1, 1, Some("/status/500"))
        .health_check_expect("200,301-302,4xx")
        .start()
        .await;
    wait_state(&proxy, "web.test", web.addr, BackendState::Down).await;
    let m = member(&proxy, "web.test", web.addr);
    assert_eq!(
        m.reason, "a check failed: status 500 (expected 200,301-302,4xx)",
        "{m:?}"
    );

    let mut admin = proxy.admin().await;
    let current = proxy.state.listeners()[0]
        .lookup("web.test")
        .unwrap()
        .route
        .health_check
        .clone()
        .unwrap();
    // Each path in turn: in the set (up) or not (down), and never an old result shown.
    for (path, state) in [
        ("/status/302", BackendState::Up),
        ("/status/303", BackendState::Down),
        ("/status/404", BackendState::Up),
        ("/status/201", BackendState::Down),
        ("/status/200", BackendState::Up),
    ] {
        let code = path.trim_start_matches("/status/");
        admin
            .update_route(
                "127.0.0.1:0",
                "web.test",
                mc_proxy_shared::RoutePatch {
                    health_check: Some(Some(mc_proxy_shared::HealthCheck {
                        path: path.into(),
                        ..current.clone()
                    })),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let started = Instant::now();
        loop {
            let m = member(&proxy, "web.test", web.addr);
            if let Some(last) = &m.last_check {
                // Only a result for the new check is shown, from the moment the change is
                // made: the old path's status is never quoted.
                match &last.error {
                    None => assert_eq!(state, BackendState::Up, "{path}: {m:?}"),
                    Some(e) if e.starts_with(&format!("status {code} ")) => {
                        assert_eq!(state, BackendState::Down, "{path}: {m:?}")
                    }
                    Some(e) => panic!("{path}: an old result shown: {e}"),
                }
            }
            if m.state == state && m.last_check.is_some() && !m.reason.is_empty() {
                if state == BackendState::Up {
                    assert!(!m.reason.contains("status"), "{path}: {m:?}");
                } else {
                    assert!(
                        m.reason.contains(&format!("status {code} ")),
                        "{path}: {m:?}"
                    );
                }
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{path}: {m:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn l7_a_check_that_gets_no_answer_times_out_after_its_timeout() {
    let pki = Pki::new();
    let web = H2Backend::start().await;
    let interval = Duration::from_millis(400);
    let timeout = interval / 2;
    let proxy = ProxyBuilder::new()
        .route_to("web.test", &[(web.addr, 1)])
        .l7(&pki)
        .health_check(interval, 1, 1, Some("/hang"))
        .start()
        .await;
    let took = wait_state(&proxy, "web.test", web.addr, BackendState::Down).await;
    assert!(
        took >= timeout - Duration::from_millis(20),
        "down after {took:?}"
    );
    let m = member(&proxy, "web.test", web.addr);
    assert_eq!(m.reason, "a check failed: timeout after 200ms", "{m:?}");
    let last = m.last_check.unwrap();
    assert!(
        last.latency >= timeout && last.latency < timeout + Duration::from_millis(500),
        "{last:?}"
    );
}

#[tokio::test]
async fn l4_tls_check_sends_the_proxy_header_a_route_sends() {
    let pki = Pki::new();
    let backend = TlsBackend::start_proxied(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new()
        .route_to("a.test", &[(backend.addr, 1)])
        .send_proxy()
        .health_check(Duration::from_millis(200), 1, 1, None)
        .start()
        .await;
    // The backend reads a PROXY header before its TLS handshake: without one the probe's
    // ClientHello would be taken for a bad header and the check would fail.
    wait_state(&proxy, "a.test", backend.addr, BackendState::Up).await;
    let m = member(&proxy, "a.test", backend.addr);
    assert_eq!(m.last_check.unwrap().error, None);
    assert_eq!(m.total, 0, "no client connection made it up: the check did");
    // The probe's header says nothing of a client: there is none.
    let header = backend.header(0);
    assert!(format!("{header:?}").contains("0.0.0.0"), "{header:?}");
}
