//! Backends that end their connections, under load from HTTP/2 and HTTP/1.1 clients through
//! the proxy: gracefully (GOAWAY NO_ERROR after N requests, as nginx's `keepalive_requests`;
//! refused streams), with answers slower than `connect_timeout`, or abruptly (killed, every
//! connection reset, and brought back on the same port). A graceful close is not a backend
//! failure; every attempt has its own connect budget; every GET is answered within the
//! configured timeouts, never left waiting.
//!
//! The backends are `h2origin::H2Origin`s (frame level, nginx's single GOAWAY) except where a
//! test says otherwise. Each test runs its load for a bounded count or time (a few seconds).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mc_proxy_shared::MemberStats;
use mc_proxy_tests::h2origin::{GoawayAt, H2Origin, H2OriginOptions};
use mc_proxy_tests::web::*;
use mc_proxy_tests::*;

const HOST: &str = "web.test";

/// What a client reports when no answer came within its limit.
const HANG: &str = "no answer within the client's limit";

/// The live figures of the route's members.
fn members(proxy: &Proxy) -> Vec<MemberStats> {
    proxy.state.listeners()[0]
        .lookup(HOST)
        .expect("the route")
        .members()
}

/// One GET as its client saw it.
#[derive(Debug)]
struct Outcome {
    /// Which client connection and request (`h1-2/17`).
    name: String,
    /// When it was sent, since the load began.
    sent: Duration,
    /// How long until the answer was read whole (or the client gave up).
    took: Duration,
    /// The status and body, or why there was none.
    result: Result<(u16, String), String>,
}

impl Outcome {
    fn ok(&self) -> bool {
        matches!(&self.result, Ok((200, _)))
    }

    fn hung(&self) -> bool {
        matches!(&self.result, Err(e) if e == HANG)
    }
}

/// What the load's clients do.
#[derive(Clone)]
struct Load {
    proxy: SocketAddr,
    pki: Arc<Pki>,
    /// When the load began (what `Outcome::sent` counts from).
    epoch: Instant,
    /// How long a client waits for an answer before it gives up (and counts a hang).
    limit: Duration,
    /// GETs per client stream, at most.
    per: usize,
    /// Set: every client stops after its GET in flight.
    stop: Arc<AtomicBool>,
}

async fn read(resp: http::Response<Incoming>) -> Result<(u16, String), String> {
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response body failed: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// GETs one after another on an HTTP/1.1 keep-alive connection, a new one after a failure.
async fn h1_client_loop(load: Load, id: usize) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut client = None;
    for i in 0..load.per {
        if load.stop.load(Ordering::SeqCst) {
            break;
        }
        if client.is_none() {
            client = Some(h1_client(load.proxy, HOST, &load.pki).await);
        }
        let c = client.as_mut().expect("just connected");
        let sent = load.epoch.elapsed();
        let started = Instant::now();
        let path = format!("/h1-{id}/{i}");
        let req = Request::builder()
            .uri(&path)
            .header("host", HOST)
            .body(ClientBody::default())
            .unwrap();
        let ask = async {
            c.ready()
                .await
                .map_err(|e| format!("client connection: {e}"))?;
            let resp = c
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            read(resp).await
        };
        let result = tokio::time::timeout(load.limit, ask)
            .await
            .unwrap_or_else(|_| Err(HANG.to_owned()));
        if result.is_err() {
            client = None;
        }
        out.push(Outcome {
            name: path,
            sent,
            took: started.elapsed(),
            result,
        });
    }
    out
}

/// `streams` GET loops side by side on one HTTP/2 connection.
async fn h2_client_loop(load: Load, id: usize, streams: usize) -> Vec<Outcome> {
    let client = h2_client(load.proxy, HOST, &load.pki).await;
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..streams {
        let (load, mut client) = (load.clone(), client.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            for i in 0..load.per {
                if load.stop.load(Ordering::SeqCst) {
                    break;
                }
                let sent = load.epoch.elapsed();
                let started = Instant::now();
                let path = format!("/h2-{id}-{s}/{i}");
                let req = Request::builder()
                    .uri(format!("https://{HOST}{path}"))
                    .body(ClientBody::default())
                    .unwrap();
                let ask = async {
                    client
                        .ready()
                        .await
                        .map_err(|e| format!("client connection: {e}"))?;
                    let resp = client
                        .send_request(req)
                        .await
                        .map_err(|e| format!("request: {e}"))?;
                    read(resp).await
                };
                let result = tokio::time::timeout(load.limit, ask)
                    .await
                    .unwrap_or_else(|_| Err(HANG.to_owned()));
                out.push(Outcome {
                    name: path,
                    sent,
                    took: started.elapsed(),
                    result,
                });
            }
            out
        });
    }
    let mut out = Vec::new();
    while let Some(res) = tasks.join_next().await {
        out.extend(res.unwrap());
    }
    out
}

/// Runs `h2` HTTP/2 clients of `streams` streams each and `h1` HTTP/1.1 clients until each
/// stream has sent `load.per` GETs or `load.stop` is set; every outcome.
async fn run_load(load: &Load, h2: usize, streams: usize, h1: usize) -> Vec<Outcome> {
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..h2 {
        clients.spawn(h2_client_loop(load.clone(), id, streams));
    }
    for id in 0..h1 {
        clients.spawn(h1_client_loop(load.clone(), id));
    }
    let mut out = Vec::new();
    while let Some(res) = clients.join_next().await {
        out.extend(res.unwrap());
    }
    out
}

fn load_for(proxy: &Proxy, pki: &Arc<Pki>, limit: Duration, per: usize) -> Load {
    Load {
        proxy: proxy.addr(),
        pki: Arc::clone(pki),
        epoch: Instant::now(),
        limit,
        per,
        stop: Arc::new(AtomicBool::new(false)),
    }
}

/// The outcomes that are not a 200, one line each (at most `max`), for an assertion message.
fn not_ok(outcomes: &[Outcome], max: usize) -> String {
    let bad: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok()).collect();
    let mut text = format!("{} of {} not 200", bad.len(), outcomes.len());
    for o in bad.iter().take(max) {
        text.push_str(&format!(
            "\n  {} sent at {:?}, after {:?}: {:?}",
            o.name, o.sent, o.took, o.result
        ));
    }
    text
}

/// The captured log lines that contain `needle` (at most `max`), and how many there were.
fn lines_with(logs: &Tape, needle: &str, max: usize) -> (usize, String) {
    let text = log_text(logs);
    let found: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
    (
        found.len(),
        found
            .iter()
            .take(max)
            .copied()
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

async fn three_origins(opts: impl Fn() -> H2OriginOptions) -> Vec<H2Origin> {
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(H2Origin::start(opts()).await);
    }
    out
}

fn route_over(addrs: &[SocketAddr]) -> ProxyBuilder {
    let members: Vec<(SocketAddr, u32)> = addrs.iter().map(|a| (*a, 1)).collect();
    ProxyBuilder::new().route_to(HOST, &members)
}

/// What every graceful-close test asserts once its load is done: every answer 200, no member
/// counted a failure or was ejected, and no backend error or ejection was logged.
fn assert_no_failure(proxy: &Proxy, logs: &Tape, outcomes: &[Outcome]) {
    assert!(outcomes.iter().all(Outcome::ok), "{}", not_ok(outcomes, 10));
    let m = members(proxy);
    let (errors, error_lines) = lines_with(logs, "backend error", 5);
    let (ejected, ejected_lines) = lines_with(logs, "ejected", 5);
    assert!(
        m.iter().all(|m| m.failures == 0 && m.ejections == 0),
        "a graceful close counted as a backend failure: {m:#?}\n\
         {ejected} ejection lines, the first:\n{ejected_lines}\n\
         {errors} backend errors, the first:\n{error_lines}"
    );
    assert_eq!(errors, 0, "backend errors logged:\n{error_lines}");
    assert_eq!(ejected, 0, "ejections logged:\n{ejected_lines}");
}

#[tokio::test]
async fn a_goaway_after_every_10_requests_is_not_a_backend_failure() {
    let (_guard, logs) = capture_logs();
    let pki = Arc::new(Pki::new());
    let origins = three_origins(|| H2OriginOptions {
        requests_per_connection: Some(10),
        ..H2OriginOptions::default()
    })
    .await;
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let proxy = route_over(&addrs).l7(&pki).start().await;
    let load = load_for(&proxy, &pki, Duration::from_secs(10), 120);
    // 3 HTTP/2 connections of 6 streams and 4 HTTP/1.1 connections: 2640 GETs.
    let outcomes = run_load(&load, 3, 6, 4).await;
    eprintln!(
        "{} GETs in {:?}; per origin (answered, connections, goaways, ignored): {:?}; members: {:?}",
        outcomes.len(),
        load.epoch.elapsed(),
        origins
            .iter()
            .map(|o| {
                let c = &o.counters;
                (
                    o.answered(),
                    c.connections.load(Ordering::SeqCst),
                    c.goaways.load(Ordering::SeqCst),
                    c.ignored.load(Ordering::SeqCst),
                )
            })
            .collect::<Vec<_>>(),
        members(&proxy)
    );
    // The fixture did close connections every 10 requests, and left streams unanswered
    // (those the proxy had sent past the GOAWAY's last stream id).
    for o in &origins {
        assert!(o.counters.goaways.load(Ordering::SeqCst) >= 10);
    }
    let ignored: usize = origins
        .iter()
        .map(|o| o.counters.ignored.load(Ordering::SeqCst))
        .sum();
    assert!(ignored > 0, "no stream was refused by a GOAWAY");
    assert_no_failure(&proxy, &logs, &outcomes);
}

#[tokio::test]
async fn hypers_two_step_goaway_after_every_10_requests_is_not_a_backend_failure() {
    let (_guard, logs) = capture_logs();
    let pki = Arc::new(Pki::new());
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(
            H2Backend::start_with(H2Options {
                unrecorded: true,
                goaway_after: Some(10),
                ..H2Options::default()
            })
            .await,
        );
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let proxy = route_over(&addrs).l7(&pki).start().await;
    let load = load_for(&proxy, &pki, Duration::from_secs(10), 60);
    let outcomes = run_load(&load, 2, 6, 3).await;
    assert!(
        backends
            .iter()
            .all(|b| b.connections.load(Ordering::SeqCst) >= 5)
    );
    assert_no_failure(&proxy, &logs, &outcomes);
}

#[tokio::test]
async fn refused_streams_are_sent_again_and_are_not_backend_failures() {
    let (_guard, logs) = capture_logs();
    let pki = Arc::new(Pki::new());
    // The first member refuses every 5th stream of each connection (RST_STREAM
    // REFUSED_STREAM, as nginx past http2_max_concurrent_streams); the others refuse none,
    // so a refused request sent again elsewhere is answered whatever the attempt cap.
    let mut origins = vec![
        H2Origin::start(H2OriginOptions {
            refuse_every: Some(5),
            ..H2OriginOptions::default()
        })
        .await,
    ];
    for _ in 0..2 {
        origins.push(H2Origin::start(H2OriginOptions::default()).await);
    }
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let proxy = route_over(&addrs).l7(&pki).start().await;
    let load = load_for(&proxy, &pki, Duration::from_secs(10), 40);
    let outcomes = run_load(&load, 2, 4, 2).await;
    assert!(origins[0].counters.refused.load(Ordering::SeqCst) >= 10);
    assert_no_failure(&proxy, &logs, &outcomes);
}

#[tokio::test]
async fn a_request_sent_again_after_a_late_goaway_gets_a_connect_budget_of_its_own() {
    let (_guard, logs) = capture_logs();
    let pki = Arc::new(Pki::new());
    let connect_timeout = Duration::from_millis(100);
    let delay = Duration::from_millis(250);
    // Each connection takes 10 requests and says GOAWAY with its 10th answer, 250 ms later:
    // the streams the proxy opened meanwhile learn only then that they must go elsewhere,
    // when more than `connect_timeout` has passed since their request began.
    let origins = three_origins(|| H2OriginOptions {
        requests_per_connection: Some(10),
        goaway_at: GoawayAt::Answer,
        delay: Some(delay),
        ..H2OriginOptions::default()
    })
    .await;
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let proxy = route_over(&addrs)
        .l7(&pki)
        .connect_timeout(connect_timeout)
        .response_timeout(Duration::from_secs(5))
        .start()
        .await;
    let load = load_for(&proxy, &pki, Duration::from_secs(10), 8);
    // 2 HTTP/2 connections of 8 streams and 4 HTTP/1.1 connections, 8 GETs each: 160 GETs.
    let outcomes = run_load(&load, 2, 8, 4).await;
    let ignored: usize = origins
        .iter()
        .map(|o| o.counters.ignored.load(Ordering::SeqCst))
        .sum();
    eprintln!(
        "{} GETs in {:?}, {ignored} streams left to the GOAWAY; members: {:?}",
        outcomes.len(),
        load.epoch.elapsed(),
        members(&proxy)
    );
    assert!(
        ignored > 0,
        "no stream was sent again: the test tests nothing"
    );
    let (zero, zero_lines) = lines_with(&logs, "after 0ns", 5);
    assert!(
        outcomes.iter().all(Outcome::ok) && zero == 0,
        "{}\n{zero} log lines with a connect budget of 0, the first:\n{zero_lines}",
        not_ok(&outcomes, 10)
    );
}

#[tokio::test]
async fn killing_a_backend_under_load_leaves_no_get_unanswered_and_fails_none() {
    let (_guard, logs) = capture_logs();
    let pki = Arc::new(Pki::new());
    let (connect_timeout, response_timeout) = (Duration::from_secs(1), Duration::from_secs(2));
    // nginx-like backends: a GOAWAY every 20 requests (keepalive_requests 20), so that live
    // members close connections gracefully while another one is dead.
    let opts = |listener| H2OriginOptions {
        requests_per_connection: Some(20),
        listener,
        ..H2OriginOptions::default()
    };
    let mut origins = Vec::new();
    for _ in 0..3 {
        origins.push(Some(H2Origin::start(opts(None)).await));
    }
    let addrs: Vec<SocketAddr> = origins.iter().flatten().map(|o| o.addr).collect();
    let proxy = route_over(&addrs)
        .l7(&pki)
        .connect_timeout(connect_timeout)
        .response_timeout(response_timeout)
        // A member back from the dead takes traffic again soon, so that the next kill finds
        // requests in flight on it.
        .backend_eject_time(Duration::from_millis(200))
        .start()
        .await;
    // One attempt's whole budget, and some: a GET without an answer by then is left waiting.
    let limit = connect_timeout + response_timeout + Duration::from_secs(1);
    let load = load_for(&proxy, &pki, limit, usize::MAX);
    // 4 HTTP/1.1 keep-alive clients, and 2 HTTP/2 clients of 4 streams.
    let clients = tokio::spawn({
        let load = load.clone();
        async move { run_load(&load, 2, 4, 4).await }
    });

    // Kill one member at a time (each in turn), at several moments, and bring it back.
    let mut kills = Vec::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..8 {
        let i = round % 3;
        let origin = origins[i].take().expect("alive");
        kills.push(load.epoch.elapsed());
        let dead = origin.kill().await;
        tokio::time::sleep(Duration::from_millis(250 + 50 * (round as u64 % 3))).await;
        origins[i] = Some(H2Origin::start(opts(Some(dead.listen()))).await);
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop.store(true, Ordering::SeqCst);
    let outcomes = tokio::time::timeout(limit * 2, clients)
        .await
        .expect("the clients stopped")
        .unwrap();

    let hung: Vec<&Outcome> = outcomes.iter().filter(|o| o.hung()).collect();
    // Sent within 500 ms of a kill: two live members were there to answer.
    let after_kill = |o: &Outcome| {
        kills
            .iter()
            .any(|k| o.sent >= *k && o.sent < *k + Duration::from_millis(500))
    };
    let failed_after_kill = outcomes.iter().filter(|o| !o.ok() && after_kill(o)).count();
    let slow = outcomes
        .iter()
        .filter(|o| o.took > Duration::from_millis(500))
        .count();
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    let (errors, error_lines) = lines_with(&logs, "backend error", 8);
    eprintln!(
        "{} GETs, kills at {kills:?}; {} hung, {failed_after_kill} not 200 within 500 ms of a \
         kill, {slow} slower than 500 ms (slowest {slowest:?}); members: {:#?}\n\
         {errors} backend errors, the first:\n{error_lines}",
        outcomes.len(),
        hung.len(),
        members(&proxy)
    );
    assert!(outcomes.len() > 1000, "too little load: {}", outcomes.len());
    assert!(
        hung.is_empty(),
        "{} GETs got no answer within {limit:?}: {:#?}",
        hung.len(),
        hung.iter().take(10).collect::<Vec<_>>()
    );
    assert_eq!(
        failed_after_kill,
        0,
        "GETs sent right after a kill were not answered by the live members: {}",
        not_ok(&outcomes, 10)
    );
    assert!(
        outcomes.iter().all(Outcome::ok),
        "{}",
        not_ok(&outcomes, 10)
    );

    // Every member, the last one killed included, is back in rotation.
    let mut client = h1_client(proxy.addr(), HOST, &pki).await;
    let before: Vec<usize> = origins.iter().flatten().map(H2Origin::answered).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let req = Request::builder().uri("/after").header("host", HOST);
        let resp = ask_h1(&mut client, with_body(req, "")).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        let now: Vec<usize> = origins.iter().flatten().map(H2Origin::answered).collect();
        if now.iter().zip(&before).all(|(n, b)| n > b) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a member killed and brought back takes no traffic 5 s later: answered {now:?} \
             (before {before:?}); members: {:#?}",
            members(&proxy)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_get_in_flight_on_a_killed_backend_is_answered_by_another_member() {
    let pki = Pki::new();
    let slow = || H2Options {
        delay: Some(Duration::from_millis(300)),
        ..H2Options::default()
    };
    let mut backends = vec![
        H2Backend::start_with(slow()).await,
        H2Backend::start_with(slow()).await,
    ];
    let proxy = route_over(&[backends[0].addr, backends[1].addr])
        .l7(&pki)
        .start()
        .await;
    let mut client = h2_client(proxy.addr(), HOST, &pki).await;
    let req = with_body(
        Request::builder().uri(format!("https://{HOST}/in-flight")),
        "",
    );
    let started = Instant::now();
    let pending = tokio::spawn(async move { ask_h2(&mut client, req).await });
    // The member the GET went to is killed while its answer is still coming.
    let victim = loop {
        if let Some(i) = backends
            .iter()
            .position(|b| b.connections.load(Ordering::SeqCst) > 0)
        {
            break i;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the GET went nowhere"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let dead = backends.remove(victim).kill().await;
    let resp = timed(pending).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(backends[0].requests(), 1, "the live member answered it");

    // Back on its port, the killed member takes its share again.
    let back = H2Backend::start_with(H2Options {
        listener: Some(dead.listen()),
        ..H2Options::default()
    })
    .await;
    let mut client = h2_client(proxy.addr(), HOST, &pki).await;
    for i in 0..10 {
        let req = Request::builder().uri(format!("https://{HOST}/after/{i}"));
        let resp = ask_h2(&mut client, with_body(req, "")).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
    }
    assert!(back.requests() > 0, "{:?}", members(&proxy));
}

#[tokio::test]
async fn a_request_abandoned_while_its_connection_opens_does_not_stall_the_next_ones() {
    let pki = Pki::new();
    let connect_timeout = Duration::from_secs(2);
    // The backend's first connection is accepted and never answered (it is starting up).
    let origin = H2Origin::start(H2OriginOptions {
        silent_connections: 1,
        ..H2OriginOptions::default()
    })
    .await;
    let proxy = route_over(&[origin.addr])
        .l7(&pki)
        .connect_timeout(connect_timeout)
        .start()
        .await;
    // A client asks and, while the proxy still waits for the backend's SETTINGS, gives up
    // (RST_STREAM CANCEL, as a browser leaving the page): the proxy drops the request.
    let mut raw = h2raw::RawH2::connect(proxy.addr(), HOST, &pki).await;
    let headers = h2raw::get(HOST, "/abandoned");
    let flags = h2raw::END_HEADERS | h2raw::END_STREAM;
    raw.send(&h2raw::frame(h2raw::HEADERS, flags, 1, &headers))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    raw.send(&h2raw::rst_stream(1, h2raw::CANCEL))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(origin.counters.connections.load(Ordering::SeqCst), 1);

    // The next requests get a connection of their own at once, not a wait for the dial that
    // nobody makes any more.
    let mut client = h2_client(proxy.addr(), HOST, &pki).await;
    for i in 0..3 {
        let started = Instant::now();
        let req = Request::builder().uri(format!("https://{HOST}/next/{i}"));
        let resp = ask_h2(&mut client, with_body(req, "")).await;
        let took = started.elapsed();
        assert!(
            resp.status == 200 && took < connect_timeout / 2,
            "GET {i} after the abandoned one: {} after {took:?}: {}",
            resp.status,
            resp.body
        );
    }
}

#[tokio::test]
async fn an_abandoned_trial_request_does_not_keep_a_member_out_for_good() {
    let pki = Arc::new(Pki::new());
    let eject = Duration::from_millis(200);
    let a = H2Origin::start(H2OriginOptions::default()).await;
    let b = H2Origin::start(H2OriginOptions::default()).await;
    let proxy = route_over(&[a.addr, b.addr])
        .l7(&pki)
        .connect_timeout(Duration::from_secs(1))
        .backend_eject_time(eject)
        .start()
        .await;
    let mut client = h1_client(proxy.addr(), HOST, &pki).await;
    let get = |path: &str| {
        let req = Request::builder().uri(path.to_owned()).header("host", HOST);
        with_body(req, "")
    };

    // `a` dies; its refused dials eject it.
    let dead = a.kill().await;
    for i in 0..10 {
        let resp = ask_h1(&mut client, get(&format!("/while-dead/{i}"))).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
    }
    let state = members(&proxy)[0].state;
    assert_eq!(state, mc_proxy_shared::BackendState::Ejected);

    // It comes back, slow to answer its first connection. Once the cooldown is over one
    // request is its trial; that request's client gives up before the dial ends.
    let a = H2Origin::start(H2OriginOptions {
        silent_connections: 1,
        listener: Some(dead.listen()),
        ..H2OriginOptions::default()
    })
    .await;
    tokio::time::sleep(eject + Duration::from_millis(50)).await;
    let mut raw = h2raw::RawH2::connect(proxy.addr(), HOST, &pki).await;
    let mut abandoned = 0;
    for i in 0..6u32 {
        let id = 2 * i + 1;
        let headers = h2raw::get(HOST, &format!("/trial/{i}"));
        let flags = h2raw::END_HEADERS | h2raw::END_STREAM;
        raw.send(&h2raw::frame(h2raw::HEADERS, flags, id, &headers))
            .await
            .unwrap();
        let answered = tokio::time::timeout(Duration::from_millis(300), async {
            while let Some(f) = raw.next_frame().await {
                if f.kind == h2raw::HEADERS && f.stream == id {
                    return true;
                }
            }
            false
        })
        .await;
        if answered != Ok(true) {
            raw.send(&h2raw::rst_stream(id, h2raw::CANCEL))
                .await
                .unwrap();
            abandoned += 1;
        }
    }
    assert_eq!(
        abandoned, 1,
        "exactly one request (the trial) went to the silent dial"
    );

    // `a` answers new connections now: it is back in rotation within a few cooldowns.
    let deadline = Instant::now() + Duration::from_secs(3);
    while a.answered() == 0 {
        let resp = ask_h1(&mut client, get("/after")).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert!(
            Instant::now() < deadline,
            "the member whose trial request was abandoned took nothing for 3 s: {:#?}",
            members(&proxy)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(b);
}

#[tokio::test]
async fn an_upload_that_goes_on_after_its_answer_still_holds_its_stream() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    type Upload = StreamBody<
        tokio_stream::wrappers::ReceiverStream<
            Result<Frame<bytes::Bytes>, std::convert::Infallible>,
        >,
    >;

    let pki = Pki::new();
    // One stream per connection (SETTINGS_MAX_CONCURRENT_STREAMS 1), and uploads answered as
    // soon as their head is in, their body still coming.
    let origin = H2Origin::start(H2OriginOptions {
        max_concurrent_streams: Some(1),
        answer_at_headers: true,
        ..H2OriginOptions::default()
    })
    .await;
    let response_timeout = Duration::from_secs(3);
    let proxy = route_over(&[origin.addr])
        .l7(&pki)
        .response_timeout(response_timeout)
        .start()
        .await;

    // An upload gets its whole answer while its body goes on.
    let tls = tls_to_proxy(proxy.addr(), HOST, &pki, &[b"h2"])
        .await
        .unwrap();
    let (mut uploader, conn) = hyper::client::conn::http2::handshake::<_, _, Upload>(
        TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (body, rx) = tokio::sync::mpsc::channel(4);
    body.send(Ok(Frame::data(bytes::Bytes::from_static(
        b"the first part",
    ))))
    .await
    .unwrap();
    let req = Request::builder()
        .method("POST")
        .uri(format!("https://{HOST}/upload"))
        .body(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    let resp = timed(uploader.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    timed(resp.into_body().collect()).await.unwrap();

    // The backend connection's one stream is still the upload's: the next request needs
    // another connection, not a place in the queue behind an upload that may never end.
    let mut client = h2_client(proxy.addr(), HOST, &pki).await;
    let started = Instant::now();
    let req = Request::builder().uri(format!("https://{HOST}/next"));
    let resp = ask_h2(&mut client, with_body(req, "")).await;
    let took = started.elapsed();
    assert!(
        resp.status == 200 && took < response_timeout / 2,
        "a GET behind an upload answered early: {} after {took:?}: {}",
        resp.status,
        resp.body
    );
    drop(body);
}
