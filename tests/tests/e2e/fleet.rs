//! Two (or three) mc-proxy nodes sharing one route table through a real three-member etcd
//! (`mc_proxy_tests::etcd`): a change made through one node's admin API is served, drained
//! and gone on the other, certificates included; two nodes racing on one route leave exactly
//! one change; the store losing a member is not noticed, losing quorum stops no traffic and
//! refuses writes clearly, and everything converges when it is back; a node restarted while
//! the store is down serves its last state; a node that missed compacted revisions resyncs in
//! full; a fresh node loads a 1000-route table.
//!
//! Each node is the daemon's own code in this process (`Proxy` with a `[cluster]` section),
//! its data plane on real sockets. Figures (propagation p50/p99, load time) are printed, not
//! asserted: they go in docs/BENCHMARKS.md.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mc_proxy::model::cluster::Link;
use mc_proxy_shared::ChangeAction;
use mc_proxy_shared::client::Event;
use mc_proxy_shared::{AdminState, FirewallRule, FirewallRuleKind, Mode, Route, RouteBackend};
use mc_proxy_tests::etcd::{self, EtcdCluster};
use mc_proxy_tests::{Pki, Proxy, TlsBackend, served_leaf, tls_connect};

/// The listener every node binds (port 0: its name is this address on every node).
const L: &str = "127.0.0.1:0";

/// A node's config: `[cluster]` on `endpoints` under `prefix`, one listener, `routes` (TOML
/// `[[listeners.routes]]` tables) seeded into its database at first start.
fn node_config(name: &str, endpoints: &[String], prefix: &str, routes: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    format!(
        "[cluster]\nendpoints = [{}]\nprefix = {prefix:?}\nname = {name:?}\n\
         request_timeout = \"4s\"\nconnect_timeout = \"1s\"\nlease_ttl = \"4s\"\n\
         [[listeners]]\naddr = {L:?}\n{routes}",
        endpoints.join(", ")
    )
}

fn l4_route(hostname: &str, backend: SocketAddr) -> String {
    format!("[[listeners.routes]]\nhostname = {hostname:?}\nbackend = \"{backend}\"\n")
}

/// Waits until `cond` holds, polling every 2 ms; panics with `what` after `within`.
async fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

/// Waits until `attempt` gives a value, trying every 20 ms; panics with `what` after `within`.
async fn until_async<T, F, Fut>(what: &str, within: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn link(p: &Proxy) -> Option<Link> {
    p.state.cluster().map(|v| v.link.clone())
}

async fn connected(p: &Proxy) {
    until(
        "node connected to the store",
        Duration::from_secs(20),
        || link(p) == Some(Link::Connected),
    )
    .await;
}

fn backends_of(p: &Proxy, sni: &str) -> Option<Vec<RouteBackend>> {
    p.state.listeners()[0]
        .lookup(sni)
        .map(|r| r.route.backends.clone())
}

fn served(p: &Proxy, sni: &str) -> bool {
    p.state.listeners()[0]
        .lookup(sni)
        .is_some_and(|r| r.route.hostname == sni)
}

fn route(hostname: &str, backend: SocketAddr) -> Route {
    Route {
        hostname: hostname.into(),
        backends: vec![RouteBackend::new(backend.to_string())],
        ..Route::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test]
async fn a_change_through_one_node_is_served_by_the_other() {
    if !etcd::available() {
        return;
    }
    let store = EtcdCluster::start(3).await;
    let pki = Pki::new();
    let one = TlsBackend::start(&pki, &["a.test", "seed.test"]).await;
    let two = TlsBackend::start(&pki, &["a.test"]).await;
    let prefix = "/mc-proxy/share";
    let a = Proxy::start(&node_config(
        "a",
        &store.endpoints(),
        prefix,
        &l4_route("seed.test", one.addr),
    ))
    .await;
    connected(&a).await;
    // B's own TOML route is not the fleet's: the store (seeded by A) wins.
    let b = Proxy::start(&node_config(
        "b",
        &store.endpoints(),
        prefix,
        &l4_route("only-b.test", two.addr),
    ))
    .await;
    connected(&b).await;
    until(
        "B serves the fleet's table",
        Duration::from_secs(10),
        || served(&b, "seed.test") && !served(&b, "only-b.test"),
    )
    .await;
    let mut admin = a.admin().await;

    // Added on A: served by B, end to end.
    admin.add_route(L, route("a.test", one.addr)).await.unwrap();
    let took = until(
        "route added on A served by B",
        Duration::from_secs(5),
        || served(&b, "a.test"),
    )
    .await;
    println!("FIGURE cluster add route A->B: {took:?}");
    tls_connect(b.addr(), "a.test", pki.client_config())
        .await
        .expect("B relays the route A added");
    until(
        "one backend took B's connection",
        Duration::from_secs(5),
        || one.accepted() >= 1,
    )
    .await;

    // Its backend set replaced on A, then a member drained: B follows.
    admin
        .update_route(
            L,
            "a.test",
            mc_proxy_shared::RoutePatch {
                backends: Some(vec![
                    RouteBackend::new(one.addr.to_string()),
                    RouteBackend::new(two.addr.to_string()),
                ]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    until("B has both members", Duration::from_secs(5), || {
        backends_of(&b, "a.test").is_some_and(|m| m.len() == 2)
    })
    .await;
    admin
        .set_backend_state(L, "a.test", &one.addr.to_string(), AdminState::Draining)
        .await
        .unwrap();
    until("B drains the member", Duration::from_secs(5), || {
        backends_of(&b, "a.test").is_some_and(|m| m[0].state == AdminState::Draining)
    })
    .await;
    let before = two.accepted();
    for _ in 0..4 {
        tls_connect(b.addr(), "a.test", pki.client_config())
            .await
            .unwrap();
    }
    until(
        "B sends new connections to the member left",
        Duration::from_secs(5),
        || two.accepted() >= before + 4,
    )
    .await;

    // Propagation time over 100 acknowledged changes (a member's weight each time).
    let mut took = Vec::new();
    for w in 1..=100u32 {
        admin
            .set_backend(L, "a.test", &two.addr.to_string(), None, Some(w))
            .await
            .unwrap();
        let acked = Instant::now();
        while backends_of(&b, "a.test").is_none_or(|m| m[1].weight != w) {
            assert!(
                acked.elapsed() < Duration::from_secs(5),
                "weight {w} never reached B"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        took.push(acked.elapsed());
    }
    took.sort();
    println!(
        "FIGURE cluster ack on A -> applied on B over 100 changes: p50 {:?} p99 {:?}",
        percentile(&took, 0.5),
        percentile(&took, 0.99)
    );

    // The firewall, both ways.
    let rule = FirewallRule {
        kind: FirewallRuleKind::Ip,
        value: "192.0.2.7".into(),
    };
    admin.add_firewall_rule(rule.clone()).await.unwrap();
    until("B blocks the address", Duration::from_secs(5), || {
        b.state.firewall().is_blocked("192.0.2.7".parse().unwrap())
    })
    .await;
    admin.remove_firewall_rule(rule).await.unwrap();
    until("B unblocks it", Duration::from_secs(5), || {
        !b.state.firewall().is_blocked("192.0.2.7".parse().unwrap())
    })
    .await;

    // An L7 route's certificate exists as a file on A only: B presents it all the same.
    let (cert, key) = pki.write_pem(a.dir.path(), &["tls.test"]);
    let l7 = Route {
        mode: Mode::L7,
        tls_cert: cert.clone(),
        tls_key: key,
        ..route("tls.test", one.addr)
    };
    admin.add_route(L, l7).await.unwrap();
    until("B serves the L7 route", Duration::from_secs(5), || {
        served(&b, "tls.test")
    })
    .await;
    let leaf = served_leaf(b.addr(), "tls.test", pki.client_config())
        .await
        .expect("B terminates TLS for the route A added");
    assert_eq!(
        leaf,
        mc_proxy_tests::pem_leaf(&cert),
        "B presents A's certificate"
    );

    // Removed on A: gone on B. B's events say which node made the change.
    let mut events = b.admin().await.watch_events().await.unwrap();
    admin.remove_route(L, "a.test").await.unwrap();
    until("route gone on B", Duration::from_secs(5), || {
        !served(&b, "a.test")
    })
    .await;
    let by = loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("B published the removal")
            .expect("the stream goes on")
            .unwrap();
        if let Event::RouteChanged {
            action: ChangeAction::Removed,
            route,
            origin: Some(origin),
            ..
        } = event.event
            && route.hostname == "a.test"
        {
            break origin;
        }
    };
    assert_eq!(by.node, "a", "{by:?}");

    // Both nodes list each other, at the same revision once quiet.
    let status = admin.cluster_status().await.unwrap();
    let names: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "{status:?}");
    assert_eq!(status.link.state, "connected");
    until("B has applied what A has", Duration::from_secs(5), || {
        b.state.cluster().map(|v| v.applied) == a.state.cluster().map(|v| v.applied)
    })
    .await;

    // /metrics says so too.
    let answer = mc_proxy_tests::web::http1_request(b.metrics, "GET", "/metrics", &[]).await;
    assert_eq!(answer.status, 200);
    let applied = b.state.cluster().unwrap().applied;
    for line in [
        "mcproxy_cluster_connected{node=\"b\"} 1".to_owned(),
        format!("mcproxy_cluster_applied_revision{{node=\"b\"}} {applied}"),
        "mcproxy_cluster_drift_repaired_total{node=\"b\"} 0".to_owned(),
    ] {
        assert!(
            answer.body.lines().any(|l| l == line),
            "{line} in:\n{}",
            answer.body
        );
    }
}

#[tokio::test]
async fn two_nodes_racing_on_one_route_leave_exactly_one_change() {
    if !etcd::available() {
        return;
    }
    let store = EtcdCluster::start(3).await;
    let pki = Pki::new();
    let one = TlsBackend::start(&pki, &["race.test"]).await;
    let prefix = "/mc-proxy/race";
    let seed = l4_route("race.test", one.addr);
    let a = Proxy::start(&node_config("a", &store.endpoints(), prefix, &seed)).await;
    connected(&a).await;
    let b = Proxy::start(&node_config("b", &store.endpoints(), prefix, &seed)).await;
    connected(&b).await;
    let (mut on_a, mut on_b) = (a.admin().await, b.admin().await);
    let member = one.addr.to_string();
    let weight_on = |p: &Proxy| backends_of(p, "race.test").map(|m| m[0].weight);
    let mut conflicts = 0;
    for round in 0..20u32 {
        let (wa, wb) = (2 + 2 * round, 3 + 2 * round);
        let (ra, rb) = tokio::join!(
            on_a.set_backend(L, "race.test", &member, None, Some(wa)),
            on_b.set_backend(L, "race.test", &member, None, Some(wb)),
        );
        let winner = match (&ra, &rb) {
            (Ok(_), Err(e)) if e.is_conflict() => wa,
            (Err(e), Ok(_)) if e.is_conflict() => wb,
            // One after the other: both applied, in some order.
            (Ok(_), Ok(_)) => {
                until("both nodes agree", Duration::from_secs(5), || {
                    weight_on(&a).is_some() && weight_on(&a) == weight_on(&b)
                })
                .await;
                continue;
            }
            other => panic!("round {round}: neither or both refused: {other:?}"),
        };
        conflicts += 1;
        let refused = match (ra, rb) {
            (Err(e), _) | (_, Err(e)) => e,
            (Ok(_), Ok(_)) => unreachable!("a winner was found above"),
        };
        assert!(
            refused.to_string().contains("changed concurrently"),
            "the loser is told why: {refused}"
        );
        until(
            "both nodes hold the winner's value",
            Duration::from_secs(5),
            || weight_on(&a) == Some(winner) && weight_on(&b) == Some(winner),
        )
        .await;
    }
    assert!(
        conflicts > 0,
        "20 rounds of simultaneous writes never raced"
    );
    println!("FIGURE cluster race: {conflicts}/20 rounds raced, one winner each");
}

#[tokio::test]
async fn quorum_lost_stops_no_traffic_refuses_writes_and_converges_after() {
    if !etcd::available() {
        return;
    }
    let mut store = EtcdCluster::start(3).await;
    let pki = Pki::new();
    let one = TlsBackend::start(&pki, &["q.test", "m1.test", "later.test"]).await;
    let prefix = "/mc-proxy/quorum";
    let seed = l4_route("q.test", one.addr);
    let a = Proxy::start(&node_config("a", &store.endpoints(), prefix, &seed)).await;
    connected(&a).await;
    let b = Proxy::start(&node_config("b", &store.endpoints(), prefix, "")).await;
    connected(&b).await;
    until("B has the seed", Duration::from_secs(10), || {
        served(&b, "q.test")
    })
    .await;
    let mut admin = a.admin().await;

    // One member of three lost: nothing noticed. (A follower: with the leader killed, a write
    // sent in the next seconds waits out the election and may time out; README "A fleet".)
    let leader = store.leader().await.expect("a leader");
    let follower = (leader + 1) % 3;
    store.kill(follower);
    admin
        .add_route(L, route("m1.test", one.addr))
        .await
        .unwrap();
    until("B serves it", Duration::from_secs(10), || {
        served(&b, "m1.test")
    })
    .await;

    // Quorum lost: traffic goes on through both nodes, writes are refused clearly.
    let mut b_events = b.admin().await.watch_events().await.unwrap();
    let second = (leader + 2) % 3;
    let last = leader;
    store.kill(second);
    for node in [&a, &b] {
        tls_connect(node.addr(), "q.test", pki.client_config())
            .await
            .expect("traffic goes on without the store");
    }
    let asked = Instant::now();
    let refused = admin
        .add_route(L, route("later.test", one.addr))
        .await
        .expect_err("no quorum: the write is refused");
    let took = asked.elapsed();
    assert!(refused.is_store_away(), "{refused}");
    assert!(
        refused.to_string().contains(&store.endpoints()[last]),
        "the refusal names the endpoints: {refused}"
    );
    assert!(
        took < Duration::from_secs(10),
        "refused in bounded time, took {took:?}"
    );
    assert!(
        !served(&a, "later.test") && !served(&b, "later.test"),
        "nothing applied"
    );
    until("B says it lost the store", Duration::from_secs(20), || {
        link(&b) == Some(Link::Disconnected)
    })
    .await;
    // Its watchers were told (the console's log, `mcproxyctl events --type cluster_link`).
    let told = loop {
        let event = tokio::time::timeout(Duration::from_secs(5), b_events.next())
            .await
            .expect("a cluster_link event")
            .expect("the stream goes on")
            .unwrap();
        if let Event::ClusterLink { link } = event.event {
            break link;
        }
    };
    assert_eq!(told.state, "disconnected", "{told:?}");
    assert!(!told.last_error.is_empty(), "{told:?}");
    tls_connect(b.addr(), "m1.test", pki.client_config())
        .await
        .expect("B still serves its last state");

    // Quorum back: both reconnect, the refused change goes through and reaches both.
    store.restart(follower);
    store.restart(second);
    store.wait_healthy().await;
    connected(&a).await;
    connected(&b).await;
    // The refused change made again goes through, unless the store applied the timed-out
    // attempt after all once it had a quorum (its refusal said it might): then it is there.
    match admin.add_route(L, route("later.test", one.addr)).await {
        Ok(_) => {}
        Err(e) if e.is_conflict() || e.to_string().contains("already exists") => {}
        Err(e) => panic!("the change made again: {e}"),
    }
    until("both nodes converge", Duration::from_secs(10), || {
        [&a, &b]
            .iter()
            .all(|n| served(n, "later.test") && served(n, "m1.test") && served(n, "q.test"))
    })
    .await;
}

#[tokio::test]
async fn a_node_restarted_while_the_store_is_down_serves_its_last_state() {
    if !etcd::available() {
        return;
    }
    let mut store = EtcdCluster::start(3).await;
    let pki = Pki::new();
    let one = TlsBackend::start(&pki, &["kept.test", "after.test"]).await;
    let prefix = "/mc-proxy/restart";
    let a = Proxy::start(&node_config("a", &store.endpoints(), prefix, "")).await;
    connected(&a).await;
    let b_config = node_config("b", &store.endpoints(), prefix, "");
    let b = Proxy::start(&b_config).await;
    connected(&b).await;
    let mut admin = a.admin().await;
    admin
        .add_route(L, route("kept.test", one.addr))
        .await
        .unwrap();
    until("B serves it", Duration::from_secs(10), || {
        served(&b, "kept.test")
    })
    .await;

    let dir = b.stop_and_keep_dir().await;
    // The database says which revision of the fleet's table it holds.
    let db = mc_proxy::control::store::Store::open(dir.path().join("mc-proxy.db")).unwrap();
    let revision = db.cluster_revision(prefix).unwrap();
    assert!(revision.is_some_and(|r| r > 0), "{revision:?}");
    assert_eq!(db.cluster_revision("/mc-proxy/other").unwrap(), None);
    drop(db);
    for i in 0..3 {
        store.kill(i);
    }
    let b = Proxy::start_in(dir, &b_config).await;
    assert!(
        served(&b, "kept.test"),
        "B serves from its database at once"
    );
    tls_connect(b.addr(), "kept.test", pki.client_config())
        .await
        .expect("B relays with the store down");
    assert_ne!(link(&b), Some(Link::Connected));

    for i in 0..3 {
        store.restart(i);
    }
    store.wait_healthy().await;
    connected(&a).await;
    connected(&b).await;
    admin
        .add_route(L, route("after.test", one.addr))
        .await
        .unwrap();
    until("B follows again", Duration::from_secs(10), || {
        served(&b, "after.test")
    })
    .await;
}

#[tokio::test]
async fn a_node_that_missed_compacted_revisions_resyncs_in_full() {
    if !etcd::available() {
        return;
    }
    let mut store = EtcdCluster::start(3).await;
    let pki = Pki::new();
    let one = TlsBackend::start(&pki, &["old.test", "new.test"]).await;
    let prefix = "/mc-proxy/compact";
    let endpoints = store.endpoints();
    // A talks to members 0 and 1, B to member 2 only: killing 2 cuts B off while the
    // store keeps its quorum.
    let a = Proxy::start(&node_config(
        "a",
        &endpoints[..2],
        prefix,
        &l4_route("old.test", one.addr),
    ))
    .await;
    connected(&a).await;
    let b = Proxy::start(&node_config("b", &endpoints[2..], prefix, "")).await;
    connected(&b).await;
    until("B has the seed", Duration::from_secs(10), || {
        served(&b, "old.test")
    })
    .await;

    store.kill(2);
    // Members 0 and 1 keep the quorum (and elect a leader if 2 was it).
    store.wait_healthy().await;
    until("B lost the store", Duration::from_secs(20), || {
        link(&b) == Some(Link::Disconnected)
    })
    .await;
    let mut admin = a.admin().await;
    admin
        .add_route(L, route("new.test", one.addr))
        .await
        .unwrap();
    admin.remove_route(L, "old.test").await.unwrap();
    let rule = FirewallRule {
        kind: FirewallRuleKind::Cidr,
        value: "198.51.100.0/24".into(),
    };
    admin.add_firewall_rule(rule).await.unwrap();
    // Some churn, then everything B has not seen is compacted away.
    for w in 1..=20 {
        admin
            .set_backend(L, "new.test", &one.addr.to_string(), None, Some(w))
            .await
            .unwrap();
    }
    store.compact_to_latest().await;

    store.restart(2);
    store.wait_healthy().await;
    until("B resynced in full", Duration::from_secs(20), || {
        served(&b, "new.test")
            && !served(&b, "old.test")
            && b.state
                .firewall()
                .is_blocked("198.51.100.9".parse().unwrap())
            && backends_of(&b, "new.test").is_some_and(|m| m[0].weight == 20)
    })
    .await;
    assert_eq!(link(&b), Some(Link::Connected));
}

#[tokio::test]
async fn a_fresh_node_loads_a_1000_route_table() {
    if !etcd::available() {
        return;
    }
    let store = EtcdCluster::start(3).await;
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // MCPROXY_FLEET_ROUTES=10000 takes the figure of docs/BENCHMARKS.md.
    let n: usize = std::env::var("MCPROXY_FLEET_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let routes: String = (0..n)
        .map(|i| l4_route(&format!("r{i}.fleet.test"), backend))
        .collect();
    let prefix = "/mc-proxy/big";
    let a = Proxy::start(&node_config("a", &store.endpoints(), prefix, &routes)).await;
    connected(&a).await;
    let started = Instant::now();
    let b = Proxy::start(&node_config("b", &store.endpoints(), prefix, "")).await;
    let took = until("B serves every route", Duration::from_secs(120), || {
        b.state.listeners()[0].routes().len() == n
    })
    .await;
    assert!(served(&b, "r0.fleet.test") && served(&b, &format!("r{}.fleet.test", n - 1)));
    println!(
        "FIGURE cluster fresh node loads {n} routes: {:?} (start to served: {:?})",
        took,
        started.elapsed()
    );
}

/// `mc-proxy cluster import` / `export` (the library calls the subcommands make) on the
/// database in `dir`, with `config` (its `[database]` is added here).
async fn move_state(
    dir: &std::path::Path,
    config: &str,
    import: Option<bool>,
) -> Result<String, String> {
    use mc_proxy::control::{Control, boot, config::Config, store::Store};
    let db = dir.join("mc-proxy.db");
    let text = format!(
        "[database]\npath = {:?}\n{config}",
        db.display().to_string()
    );
    let config = Config::parse(&dir.join("mc-proxy.toml"), &text).unwrap();
    let mut store = Store::open(&db).unwrap();
    let state = std::sync::Arc::new(boot::load_state(&config, &mut store).unwrap());
    let control = std::sync::Arc::new(Control::new(state, store));
    let (node, _not_run) = mc_proxy::control::cluster::start(
        config.cluster.as_ref().unwrap(),
        &control,
        &db,
        None,
        None,
        tokio_util::sync::CancellationToken::new(),
    );
    match import {
        Some(replace) => node.import_local(replace).await,
        None => node.export_to_local().await,
    }
}

#[tokio::test]
async fn a_single_nodes_database_moves_into_the_fleet_and_back() {
    if !etcd::available() {
        return;
    }
    let store = EtcdCluster::start(3).await;
    let pki = Pki::new();
    let one = TlsBackend::start(&pki, &["x.test", "y.test"]).await;
    let prefix = "/mc-proxy/moved";
    let endpoints = store.endpoints();

    // A node that ran alone, with a route and a firewall rule in its database.
    let alone = format!(
        "[[listeners]]\naddr = {L:?}\n{}",
        l4_route("x.test", one.addr)
    );
    let mut single = Proxy::start(&alone).await;
    single
        .admin()
        .await
        .add_firewall_rule(FirewallRule {
            kind: FirewallRuleKind::Ip,
            value: "192.0.2.44".into(),
        })
        .await
        .unwrap();
    single.stop().await;
    let with_cluster = node_config("single", &endpoints, prefix, "");
    let said = move_state(single.dir.path(), &with_cluster, Some(false))
        .await
        .expect("import into an empty prefix");
    assert!(
        said.contains("imported 1 route(s), 1 firewall rule(s)"),
        "{said}"
    );
    let again = move_state(single.dir.path(), &with_cluster, Some(false))
        .await
        .expect_err("a second import is refused");
    assert!(again.contains("already holds a route table"), "{again}");

    // A node joining serves what was imported.
    let a = Proxy::start(&node_config("a", &endpoints, prefix, "")).await;
    connected(&a).await;
    until(
        "A serves the imported table",
        Duration::from_secs(10),
        || served(&a, "x.test") && a.state.firewall().is_blocked("192.0.2.44".parse().unwrap()),
    )
    .await;
    a.admin()
        .await
        .add_route(L, route("y.test", one.addr))
        .await
        .unwrap();

    // Exported into a node's own database: it holds the fleet's table, to run alone.
    let leaving = tempfile::tempdir().unwrap();
    let said = move_state(
        leaving.path(),
        &node_config("leaving", &endpoints, prefix, ""),
        None,
    )
    .await
    .expect("export");
    assert!(said.contains("the database now holds the table"), "{said}");
    let alone = Proxy::start_in(leaving, &format!("[[listeners]]\naddr = {L:?}\n")).await;
    assert!(served(&alone, "x.test") && served(&alone, "y.test"));
    assert!(
        alone
            .state
            .firewall()
            .is_blocked("192.0.2.44".parse().unwrap())
    );
}

/// A TLS handshake for `sni` through `addr`, from the local address `from` (127.0.0.2: an
/// address other than the balancer's, so the hops can be told apart on loopback).
async fn tls_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
    sni: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<SocketAddr> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(addr).await?;
    let me = stream.local_addr()?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await?;
    use tokio::io::AsyncWriteExt;
    tls.shutdown().await?;
    Ok(me)
}

/// A node in a process of its own (`mc-proxy-test-node`), so that it can be killed outright.
struct NodeProcess {
    child: std::process::Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    /// Starts one on the config `body` (as [`Proxy::start`] takes it) and waits until it
    /// serves.
    fn start(body: &str) -> NodeProcess {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("body.toml");
        std::fs::write(&config, body).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mc-proxy-test-node"))
            .arg(&config)
            // Its own data dir under ours, removed with it even after a SIGKILL.
            .env("TMPDIR", dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mc-proxy-test-node starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("READY"), "{line:?}");
        let mut addr = || {
            words
                .next()
                .and_then(|w| w.parse().ok())
                .expect("an address")
        };
        let (addr, metrics) = (addr(), addr());
        NodeProcess {
            child,
            addr,
            metrics,
            _dir: dir,
        }
    }

    /// SIGKILL: no drain, no goodbye; the kernel closes its sockets.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a TLS handshake for app.test straight to node `addr` (with the PROXY header a
/// balancer would send for client `client`) passes.
async fn direct(
    addr: SocketAddr,
    client: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> bool {
    use tokio::io::AsyncWriteExt;
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let header = format!("PROXY TCP4 {client} 127.0.0.1 5000 443\r\n");
    if tcp.write_all(header.as_bytes()).await.is_err() {
        return false;
    }
    let name = rustls::pki_types::ServerName::try_from("app.test").unwrap();
    let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    matches!(
        tokio::time::timeout(Duration::from_secs(3), handshake).await,
        Ok(Ok(_))
    )
}

/// A TLS connection through `addr` from `from` that echoed `ping`, kept open.
async fn held_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
    sni: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .unwrap();
    assert!(echoes(&mut tls, b"ping").await, "a fresh connection echoes");
    tls
}

/// Whether `tls` still carries `msg` to the echo backend and back (within 3 s).
async fn echoes(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    msg: &[u8],
) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let round = async {
        tls.write_all(msg).await?;
        tls.flush().await?;
        let mut got = vec![0u8; msg.len()];
        tls.read_exact(&mut got).await?;
        std::io::Result::Ok(got == msg)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), round).await,
        Ok(Ok(true))
    )
}

/// The README's recipe: HAProxy in front (`mode tcp`, `balance roundrobin`, `send-proxy-v2`,
/// health checks), three nodes of one fleet with `proxy_protocol` from the balancer only
/// (one in a process of its own, killed outright), backends that get the client's address in
/// a PROXY header of their own.
#[tokio::test]
async fn behind_haproxy_a_draining_node_loses_no_client_and_the_client_address_crosses_both_hops() {
    if !etcd::available() {
        return;
    }
    let store = EtcdCluster::start(3).await;
    let pki = Pki::new();
    let backend = TlsBackend::start_proxied(&pki, &["app.test", "late.test"]).await;
    let prefix = "/mc-proxy/recipe";
    // SIGTERM's path keeps the listeners open for a second while /ready says 503.
    let node = |name: &str, routes: &str| {
        let config = node_config(name, &store.endpoints(), prefix, routes);
        format!("[proxy]\nshutdown_delay = \"1s\"\n{config}").replace(
            &format!("addr = {L:?}\n"),
            &format!(
                "addr = {L:?}\nproxy_protocol = true\nproxy_protocol_from = [\"127.0.0.1/32\"]\n"
            ),
        )
    };
    let seed = format!(
        "{}send_proxy_protocol = true\n",
        l4_route("app.test", backend.addr)
    );
    let mut a = Proxy::start(&node("a", &seed)).await;
    connected(&a).await;
    let b = Proxy::start(&node("b", "")).await;
    connected(&b).await;
    until("B has the route", Duration::from_secs(10), || {
        served(&b, "app.test")
    })
    .await;
    let mut c = NodeProcess::start(&node("c", ""));
    // C serves once the route reached it: a handshake straight to it (not through the
    // balancer, so with a PROXY header of our own) passes.
    until_async("C has the route", Duration::from_secs(10), || async {
        direct(c.addr, "127.0.0.2", pki.client_config())
            .await
            .then_some(())
    })
    .await;

    let reserved = mc_proxy_tests::ReservedPort::new();
    let port = reserved.port;
    let config = format!(
        "defaults
    mode tcp
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    retries 3
    option redispatch
frontend edge
    bind 127.0.0.1:{port}
    default_backend nodes
backend nodes
    balance roundrobin
    option httpchk GET /ready
    server a {} send-proxy-v2 check port {} inter 100ms fall 1 rise 2
    server b {} send-proxy-v2 check port {} inter 100ms fall 1 rise 2
    server c {} send-proxy-v2 check port {} inter 100ms fall 1 rise 2
",
        a.addr(),
        a.metrics.port(),
        b.addr(),
        b.metrics.port(),
        c.addr,
        c.metrics.port()
    );
    let Some(_haproxy) =
        super::haproxy::Haproxy::start(tempfile::tempdir().unwrap(), &config, reserved).await
    else {
        return;
    };
    let edge: SocketAddr = ([127, 0, 0, 1], port).into();
    let client: std::net::IpAddr = [127, 0, 0, 2].into();

    // Both nodes serve, and the client's own address reaches the backend through both hops.
    for _ in 0..6 {
        tls_from(client, edge, "app.test", pki.client_config())
            .await
            .expect("through the fleet");
    }
    until("each node relayed some", Duration::from_secs(5), || {
        a.state.listeners()[0]
            .counters
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
            > 1
            && b.state.listeners()[0]
                .counters
                .accepted
                .load(std::sync::atomic::Ordering::Relaxed)
                > 1
    })
    .await;
    let sources: Vec<_> = backend
        .headers
        .lock()
        .unwrap()
        .iter()
        .filter_map(|h| h.source)
        .collect();
    assert!(
        !sources.is_empty() && sources.iter().all(|s| s.ip() == client),
        "{sources:?}"
    );

    // A firewall rule added through one node blocks that client on every node (it is the
    // client's address the nodes see, not the balancer's); others pass.
    let rule = FirewallRule {
        kind: FirewallRuleKind::Ip,
        value: "127.0.0.2".into(),
    };
    b.admin()
        .await
        .add_firewall_rule(rule.clone())
        .await
        .unwrap();
    until("A blocks it too", Duration::from_secs(5), || {
        a.state.firewall().is_blocked(client)
    })
    .await;
    until_async("C blocks it too", Duration::from_secs(5), || async {
        (!direct(c.addr, "127.0.0.2", pki.client_config()).await).then_some(())
    })
    .await;
    for _ in 0..4 {
        assert!(
            tls_from(client, edge, "app.test", pki.client_config())
                .await
                .is_err(),
            "blocked"
        );
        tls_from([127, 0, 0, 3].into(), edge, "app.test", pki.client_config())
            .await
            .expect("another client passes");
    }
    b.admin().await.remove_firewall_rule(rule).await.unwrap();
    until("A unblocks it", Duration::from_secs(5), || {
        !a.state.firewall().is_blocked(client)
    })
    .await;
    until_async("C unblocks it", Duration::from_secs(5), || async {
        direct(c.addr, "127.0.0.2", pki.client_config())
            .await
            .then_some(())
    })
    .await;

    // Clients held open on every node (opened one after another, so roundrobin's share of C
    // is known from A's and B's counters).
    let accepted = |p: &Proxy| {
        p.state.listeners()[0]
            .counters
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = accepted(&a) + accepted(&b);
    let mut held = Vec::new();
    for _ in 0..9 {
        held.push(held_from([127, 0, 0, 4].into(), edge, "app.test", pki.client_config()).await);
    }
    let on_c = 9 - (accepted(&a) + accepted(&b) - before) as usize;
    assert!(on_c >= 1, "roundrobin put some on C");
    // Under a steady stream of new connections (one at a time), node C is killed, then node
    // A drains (SIGTERM's path): HAProxy's check takes each out and re-dispatches what it
    // refuses. The one connection that may be on C when it dies may fail; none after.
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (stop, config) = (stop.clone(), pki.client_config());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.is_cancelled() {
                let started = Instant::now();
                match tls_from(client, edge, "app.test", config.clone()).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push((started, e.to_string())),
                }
            }
            (ok, failed)
        })
    };

    // Node C killed outright (SIGKILL) under the load: the clients that were on it fail,
    // the others' keep going, and new connections do not fail (HAProxy re-dispatches the
    // refused connects until its check takes C out).
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.kill();
    let killed = Instant::now();
    let mut lost = 0;
    for tls in &mut held {
        if !echoes(tls, b"still there?").await {
            lost += 1;
        }
    }
    assert_eq!(
        lost, on_c,
        "exactly the clients that were on C lost their connection"
    );
    drop(held);

    let ready = |addr| async move {
        mc_proxy_tests::web::http1_request(addr, "GET", "/ready", &[])
            .await
            .status
    };
    assert_eq!(ready(a.metrics).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let draining = {
        let (state, shutdown) = (std::sync::Arc::clone(&a.state), a.shutdown.clone());
        tokio::spawn(async move {
            mc_proxy::listeners::server::drain_then_stop(&state, &shutdown).await
        })
    };
    let asked = Instant::now();
    while ready(a.metrics).await != 503 {
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "/ready says draining at once"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !a.shutdown.is_cancelled(),
        "the listeners stay open for shutdown_delay"
    );
    draining.await.unwrap();
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "shutdown_delay held: {:?}",
        asked.elapsed()
    );
    a.stop().await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    // A route added through the node left is served through the balancer.
    b.admin()
        .await
        .add_route(
            L,
            Route {
                send_proxy_protocol: true,
                ..route("late.test", backend.addr)
            },
        )
        .await
        .unwrap();
    tls_from(client, edge, "late.test", pki.client_config())
        .await
        .expect("the new route through the balancer");
    stop.cancel();
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 20, "the load ran: {ok} connections");
    // At most the one in flight when C died, and it started before: that client was on C.
    let after_kill: Vec<_> = failed.iter().filter(|(t, _)| *t >= killed).collect();
    assert!(
        failed.len() <= 1 && after_kill.is_empty(),
        "{} of {} failed ({} started after the kill): {failed:?}",
        failed.len(),
        ok as usize + failed.len(),
        after_kill.len()
    );
    println!(
        "FIGURE recipe: {ok} connections through HAProxy while one node was killed and \
         another drained, {} failed (in flight on the killed node)",
        failed.len()
    );
}

#[tokio::test]
async fn a_node_whose_database_drifted_from_the_store_is_repaired_and_says_so() {
    if !etcd::available() {
        return;
    }
    let store = EtcdCluster::start(3).await;
    let prefix = "/mc-proxy/drift";
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = node_config(
        "a",
        &store.endpoints(),
        prefix,
        &l4_route("kept.test", backend),
    )
    .replace("[cluster]\n", "[cluster]\ncheck_interval = \"1s\"\n");
    let a = Proxy::start(&config).await;
    connected(&a).await;
    let drift = || a.state.cluster().map_or(0, |v| v.drift_repaired);
    assert_eq!(drift(), 0);

    // Someone edits the node's database behind its back.
    let db_path = a.dir.path().join("mc-proxy.db");
    {
        let mut db = mc_proxy::control::store::Store::open(&db_path).unwrap();
        let listener = db.listeners().unwrap()[0].id;
        db.delete_route(listener, "kept.test").unwrap();
    }
    // The next comparison puts the store's route back and counts it.
    until("the drift repaired", Duration::from_secs(10), || {
        drift() >= 1
    })
    .await;
    let db = mc_proxy::control::store::Store::open(&db_path).unwrap();
    let listener = db.listeners().unwrap()[0].id;
    let routes = db.routes(listener).unwrap();
    assert!(
        routes.iter().any(|r| r.hostname == "kept.test"),
        "{routes:?}"
    );
    assert!(served(&a, "kept.test"));
    let answer = mc_proxy_tests::web::http1_request(a.metrics, "GET", "/metrics", &[]).await;
    assert!(
        answer
            .body
            .lines()
            .any(|l| l == "mcproxy_cluster_drift_repaired_total{node=\"a\"} 1"),
        "{}",
        answer.body
    );
}
