//! The gRPC admin API end to end: the typed client over the daemon's Unix socket, writes that
//! take effect on the next connection and survive restarts, and the live event stream.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use futures_util::StreamExt;
use mc_proxy::api::admin::{AdminError, AdminSocket};
use mc_proxy::control::store::Store;
use mc_proxy_shared::client::{Event, RoutePatch, TimedEvent};
use mc_proxy_shared::{
    AdminState, BackendProtocol, Balance, BlockedReason, ChangeAction, CloseReason, FirewallRule,
    FirewallRuleKind, HealthCheck, Mode, Outcome, ResetReason, Route, RouteBackend, pb,
};
use mc_proxy_tests::web;
use mc_proxy_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn listener_toml(routes: &str) -> String {
    format!("[[listeners]]\naddr = \"127.0.0.1:0\"\n{routes}")
}

fn route(hostname: &str, backend: impl ToString) -> Route {
    Route {
        hostname: hostname.into(),
        backends: vec![RouteBackend::new(backend.to_string())],
        ..Route::default()
    }
}

const LISTENER: &str = "127.0.0.1:0";

/// Waits for the next event matching `want`, skipping others (stats snapshots, ...).
async fn next_matching(
    events: &mut (
             impl futures_util::Stream<Item = Result<TimedEvent, mc_proxy_shared::client::ClientError>>
             + Unpin
         ),
    want: impl Fn(&Event) -> bool,
) -> Event {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events.next().await.expect("event stream ended").unwrap();
            if want(&event.event) {
                return event.event;
            }
        }
    })
    .await
    .expect("no matching event within 10 s")
}

#[tokio::test]
async fn socket_is_private_and_a_live_daemons_socket_is_not_taken_over() {
    let proxy = ProxyBuilder::new().listener().start().await;
    let mode = std::fs::metadata(&proxy.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    assert!(matches!(
        AdminSocket::bind(&proxy.socket),
        Err(AdminError::InUse(_))
    ));
    // The first daemon still answers.
    proxy.admin().await.status().await.unwrap();

    // A stale socket file nobody answers on is replaced.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    AdminSocket::bind(&stale).unwrap();
}

#[tokio::test]
async fn add_and_list_an_l7_route_with_every_field() {
    let pki = Pki::new();
    let proxy = ProxyBuilder::new().listener().start().await;
    let (cert, key) = pki.write_pem(proxy.dir.path(), &["web.test"]);
    let mut admin = proxy.admin().await;
    let l7 = Route {
        hostname: "Web.Test".into(),
        backends: vec![RouteBackend::new("backend.internal:9080")],
        mode: Mode::L7,
        tls_cert: cert,
        tls_key: key,
        backend_tls: true,
        send_proxy_protocol: true,
        ..Route::default()
    };
    let (stored, warnings) = admin.add_route(LISTENER, l7.clone()).await.unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let expected = Route {
        hostname: "web.test".into(),
        ..l7
    };
    assert_eq!(stored, expected);
    let listed = admin.list_routes(Some(LISTENER)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].route, expected);
    assert_eq!(listed[0].listener, LISTENER);
    let status = admin.status().await.unwrap();
    assert_eq!(status.listeners[0].route_count, 1);
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn invalid_routes_are_invalid_argument_and_change_nothing() {
    let pki = Pki::new();
    let proxy = ProxyBuilder::new()
        .route("keep.test", "127.0.0.1:9")
        .start()
        .await;
    let (cert, _) = pki.write_pem(proxy.dir.path(), &["web.test"]);
    let (_, other_key) = pki.write_pem(proxy.dir.path(), &["other.test"]);
    let mut admin = proxy.admin().await;
    let missing = Route {
        mode: Mode::L7,
        tls_cert: proxy.dir.path().join("absent.pem").display().to_string(),
        tls_key: other_key.clone(),
        ..route("web.test", "127.0.0.1:9080")
    };
    let mismatched = Route {
        mode: Mode::L7,
        tls_cert: cert,
        tls_key: other_key,
        ..route("web.test", "127.0.0.1:9080")
    };
    let bad_backend = route("ok.test", "no-port");
    let bad_host = route("bad host", "127.0.0.1:1");
    for (bad, needle) in [
        (missing, "cannot read tls_cert"),
        (mismatched, "does not match"),
        (bad_backend, "invalid backend"),
        (bad_host, "invalid hostname"),
    ] {
        let err = admin.add_route(LISTENER, bad).await.unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    let err = admin
        .add_route(LISTENER, route("keep.test", "127.0.0.1:10"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::AlreadyExists), "{err}");
    let err = admin
        .add_route("127.0.0.1:1", route("x.test", "127.0.0.1:10"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound), "{err}");
    let err = admin
        .update_route(
            LISTENER,
            "keep.test",
            RoutePatch {
                mode: Some(Mode::L7),
                ..RoutePatch::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");

    // Neither the live table nor the database changed.
    let listed = admin.list_routes(None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].route, route("keep.test", "127.0.0.1:9"));
    let store = Store::open(proxy.dir.path().join("mc-proxy.db")).unwrap();
    let id = store.listeners().unwrap()[0].id;
    assert_eq!(
        store.routes(id).unwrap(),
        vec![route("keep.test", "127.0.0.1:9")]
    );
}

#[tokio::test]
async fn a_backend_set_is_stored_listed_and_one_member_drained_through_the_api() {
    let proxy = ProxyBuilder::new().listener().start().await;
    let mut admin = proxy.admin().await;
    let mut events = admin.watch_events().await.unwrap();
    let set = Route {
        hostname: "pool.test".into(),
        backends: vec![
            RouteBackend::new("127.0.0.1:9001").with_weight(2),
            RouteBackend::new("127.0.0.1:9002"),
        ],
        balance: Balance::LeastConn,
        ..Route::default()
    };
    let (stored, _) = admin.add_route(LISTENER, set.clone()).await.unwrap();
    assert_eq!(stored, set);

    let route = admin
        .set_backend_state(
            LISTENER,
            "Pool.Test",
            "127.0.0.1:9002",
            AdminState::Draining,
        )
        .await
        .unwrap();
    assert_eq!(route.backends[1].state, AdminState::Draining);
    assert_eq!(
        route.backends[0], set.backends[0],
        "the other member is untouched"
    );
    // The member's change is published as such, at once, with its reason (a drain is not a
    // route change: no `route_changed`).
    let changed = next_matching(&mut events, |e| {
        matches!(
            e,
            Event::BackendChanged { .. }
                | Event::RouteChanged {
                    action: ChangeAction::Updated,
                    ..
                }
        )
    })
    .await;
    let Event::BackendChanged {
        route: hostname,
        member,
        ..
    } = changed
    else {
        panic!("{changed:?}")
    };
    assert_eq!(hostname, "pool.test");
    assert_eq!(
        (
            member.address.as_str(),
            member.admin,
            member.reason.as_str()
        ),
        (
            "127.0.0.1:9002",
            AdminState::Draining,
            "draining by the operator"
        )
    );

    let listed = admin.list_routes(Some(LISTENER)).await.unwrap();
    assert_eq!(listed[0].route, route);
    let members: Vec<(&str, AdminState)> = listed[0]
        .stats
        .members
        .iter()
        .map(|m| (m.address.as_str(), m.admin))
        .collect();
    assert_eq!(
        members,
        [
            ("127.0.0.1:9001", AdminState::Enabled),
            ("127.0.0.1:9002", AdminState::Draining),
        ]
    );

    // An unknown member or route is NOT_FOUND and changes nothing.
    for (hostname, address) in [
        ("pool.test", "127.0.0.1:9003"),
        ("nope.test", "127.0.0.1:9001"),
    ] {
        let err = admin
            .set_backend_state(LISTENER, hostname, address, AdminState::Disabled)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::NotFound), "{err}");
    }
    assert_eq!(admin.list_routes(None).await.unwrap()[0].route, route);

    // Both spellings of one member, or a duplicate, are refused with the route named.
    let err = admin
        .update_route(
            LISTENER,
            "pool.test",
            RoutePatch {
                backends: Some(vec![
                    RouteBackend::new("127.0.0.1:9001"),
                    RouteBackend::new("127.0.0.1:9001"),
                ]),
                ..RoutePatch::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(
        err.to_string()
            .contains("route \"pool.test\": duplicate backend"),
        "{err}"
    );
    assert_eq!(admin.list_routes(None).await.unwrap()[0].route, route);
}

#[tokio::test]
async fn add_with_only_hostname_and_backend_is_l4_without_proxy_protocol() {
    let proxy = ProxyBuilder::new().listener().start().await;
    // A client that predates modes: only the two original fields on the wire.
    let mut raw = pb::admin_service_client::AdminServiceClient::new(
        tonic::transport::Endpoint::try_from("http://x")
            .unwrap()
            .connect_with_connector(tower_service(proxy.socket.clone()))
            .await
            .unwrap(),
    );
    raw.add_route(pb::AddRouteRequest {
        listener: LISTENER.into(),
        route: Some(pb::Route {
            hostname: "old.test".into(),
            backend: "127.0.0.1:9".into(),
            ..pb::Route::default()
        }),
    })
    .await
    .unwrap();
    let listed = proxy.admin().await.list_routes(None).await.unwrap();
    assert_eq!(listed[0].route, route("old.test", "127.0.0.1:9"));
    assert_eq!(listed[0].route.mode, Mode::L4);
    assert!(!listed[0].route.send_proxy_protocol);
    assert_eq!(listed[0].route.backend_protocol, BackendProtocol::H2);
}

#[tokio::test]
async fn backend_protocol_is_stored_listed_and_auto_without_backend_tls_is_refused() {
    let pki = Pki::new();
    let proxy = ProxyBuilder::new().listener().start().await;
    let mut admin = proxy.admin().await;
    let l7 = |hostname: &str, backend_tls, backend_protocol| {
        let (cert, key) = pki.write_pem(proxy.dir.path(), &[hostname]);
        Route {
            mode: Mode::L7,
            tls_cert: cert,
            tls_key: key,
            backend_tls,
            backend_protocol,
            ..route(hostname, "127.0.0.1:9080")
        }
    };
    let web = l7("web.test", false, BackendProtocol::Http1);
    let (stored, warnings) = admin.add_route(LISTENER, web.clone()).await.unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(stored, web);
    let api = l7("api.test", true, BackendProtocol::Auto);
    assert_eq!(admin.add_route(LISTENER, api.clone()).await.unwrap().0, api);
    // An update that sets only the protocol keeps every other field.
    let (updated, _) = admin
        .update_route(
            LISTENER,
            "web.test",
            RoutePatch {
                backend_protocol: Some(BackendProtocol::H2),
                ..RoutePatch::default()
            },
        )
        .await
        .unwrap();
    let web = Route {
        backend_protocol: BackendProtocol::H2,
        ..web
    };
    assert_eq!(updated, web);
    let (updated, _) = admin
        .update_route(
            LISTENER,
            "web.test",
            RoutePatch {
                backend_protocol: Some(BackendProtocol::Auto),
                backend_tls: Some(true),
                ..RoutePatch::default()
            },
        )
        .await
        .unwrap();
    let web = Route {
        backend_protocol: BackendProtocol::Auto,
        backend_tls: true,
        ..web
    };
    assert_eq!(updated, web);
    let listed: Vec<Route> = admin
        .list_routes(Some(LISTENER))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.route)
        .collect();
    assert_eq!(listed, [api.clone(), web.clone()]);

    // auto without backend_tls, by an add or by an update that turns TLS off: refused whole.
    let err = admin
        .add_route(LISTENER, l7("bad.test", false, BackendProtocol::Auto))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(
        err.to_string().contains(
            "listener 127.0.0.1:0, route \"bad.test\": backend_protocol auto needs backend_tls"
        ),
        "{err}"
    );
    let err = admin
        .update_route(
            LISTENER,
            "api.test",
            RoutePatch {
                backends: Some(vec![RouteBackend::new("127.0.0.1:9999")]),
                backend_tls: Some(false),
                ..RoutePatch::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(
        err.to_string().contains(
            "listener 127.0.0.1:0, route \"api.test\": backend_protocol auto needs backend_tls"
        ),
        "{err}"
    );

    // A number this daemon does not know, from a client that sends raw messages.
    let mut raw = pb::admin_service_client::AdminServiceClient::new(
        tonic::transport::Endpoint::try_from("http://x")
            .unwrap()
            .connect_with_connector(tower_service(proxy.socket.clone()))
            .await
            .unwrap(),
    );
    let err = raw
        .add_route(pb::AddRouteRequest {
            listener: LISTENER.into(),
            route: Some(pb::Route {
                backend_protocol: 9,
                ..pb::Route::from(l7("new.test", true, BackendProtocol::H2))
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(
        err.message()
            .starts_with("invalid backend_protocol 9: expected"),
        "{err}"
    );
    let err = raw
        .update_route(pb::UpdateRouteRequest {
            listener: LISTENER.into(),
            hostname: "web.test".into(),
            backend_protocol: Some(-1),
            ..pb::UpdateRouteRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(
        err.message()
            .starts_with("invalid backend_protocol -1: expected"),
        "{err}"
    );
    // Answers spell the protocol out, h2 included, rather than leaving it UNSPECIFIED.
    let answer = raw
        .list_routes(pb::ListRoutesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let protocols: Vec<(String, i32)> = answer
        .routes
        .into_iter()
        .map(|s| s.route.unwrap())
        .map(|r| (r.hostname, r.backend_protocol))
        .collect();
    assert_eq!(
        protocols,
        [
            ("api.test".to_owned(), pb::BackendProtocol::Auto as i32),
            ("web.test".to_owned(), pb::BackendProtocol::Auto as i32),
        ]
    );

    // Nothing refused reached the live table or the database.
    let listed: Vec<Route> = admin
        .list_routes(None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.route)
        .collect();
    assert_eq!(listed, [api.clone(), web.clone()]);
    let store = Store::open(proxy.dir.path().join("mc-proxy.db")).unwrap();
    let id = store.listeners().unwrap()[0].id;
    assert_eq!(store.routes(id).unwrap(), [api, web]);
}

fn tower_service(
    path: std::path::PathBuf,
) -> impl tower_service::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_| {
        let path = path.clone();
        async move {
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        }
    })
}

#[tokio::test]
async fn routes_change_live_and_in_flight_connections_keep_theirs() {
    let pki = Pki::new();
    let a = TlsBackend::start(&pki, &["a.test"]).await;
    let b = TlsBackend::start(&pki, &["b.test"]).await;
    let proxy = ProxyBuilder::new().listener().start().await;
    let mut admin = proxy.admin().await;

    // No route yet: reset.
    let err = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);

    admin
        .add_route(LISTENER, route("a.test", a.addr))
        .await
        .unwrap();
    let mut open = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    open.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    open.read_exact(&mut buf).await.unwrap();

    // Removing the route does not cut the connection already routed by it.
    admin.remove_route(LISTENER, "a.test").await.unwrap();
    assert!(
        tls_connect(proxy.addr(), "a.test", pki.client_config())
            .await
            .is_err()
    );
    assert_eq!(
        send_and_finish(&mut open, b"two").await.unwrap(),
        b"twobye from a.test\n"
    );

    // Update: add b.test, then rename it and point it elsewhere; counters follow the route.
    admin
        .add_route(LISTENER, route("b.test", b.addr))
        .await
        .unwrap();
    let mut c = tls_connect(proxy.addr(), "b.test", pki.client_config())
        .await
        .unwrap();
    send_and_finish(&mut c, b"").await.unwrap();
    let (updated, _) = admin
        .update_route(
            LISTENER,
            "b.test",
            RoutePatch {
                backends: Some(vec![RouteBackend::new(a.addr.to_string())]),
                send_proxy_protocol: Some(false),
                ..RoutePatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated, route("b.test", a.addr));
    let listed = admin.list_routes(None).await.unwrap();
    assert_eq!(listed[0].stats.total_connections, 1);
    // b.test now reaches backend a, whose certificate does not cover b.test.
    assert!(
        tls_connect(proxy.addr(), "b.test", pki.client_config())
            .await
            .is_err()
    );
    assert_eq!(a.accepted(), 2);
}

#[tokio::test]
async fn firewall_rules_apply_from_the_next_connection() {
    let pki = Pki::new();
    let a = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new().route("a.test", a.addr).start().await;
    let mut admin = proxy.admin().await;
    let rule = FirewallRule {
        kind: FirewallRuleKind::Cidr,
        value: "127.1.2.3/8".into(),
    };
    let stored = admin.add_firewall_rule(rule).await.unwrap();
    assert_eq!(stored.value, "127.0.0.0/8");
    assert!(
        tls_connect(proxy.addr(), "a.test", pki.client_config())
            .await
            .is_err()
    );
    let err = admin
        .add_firewall_rule(FirewallRule {
            kind: FirewallRuleKind::Ip,
            value: "999.1.1.1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    assert_eq!(admin.firewall_rules().await.unwrap(), vec![stored.clone()]);
    let status = admin.status().await.unwrap();
    assert_eq!(status.listeners[0].blocked, 1);
    assert_eq!(
        status.listeners[0]
            .resets_by_reason
            .get(&ResetReason::Blocked),
        Some(&1)
    );

    admin.remove_firewall_rule(stored.clone()).await.unwrap();
    let mut c = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    send_and_finish(&mut c, b"").await.unwrap();
    let err = admin.remove_firewall_rule(stored).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound));
}

#[tokio::test]
async fn api_changes_survive_a_restart_and_the_toml_is_not_reapplied() {
    let toml = listener_toml(
        "[[listeners.routes]]\nhostname = \"from-toml.test\"\nbackend = \"127.0.0.1:9\"\n\
         [firewall]\nblocked_ips = [\"192.0.2.1\"]",
    );
    let proxy = Proxy::start(&toml).await;
    let mut admin = proxy.admin().await;
    admin
        .add_route(LISTENER, route("from-api.test", "127.0.0.1:10"))
        .await
        .unwrap();
    admin
        .remove_route(LISTENER, "from-toml.test")
        .await
        .unwrap();
    admin
        .add_firewall_rule(FirewallRule {
            kind: FirewallRuleKind::Ip,
            value: "192.0.2.2".into(),
        })
        .await
        .unwrap();
    drop(admin);
    let dir = proxy.stop_and_keep_dir().await;

    let proxy = Proxy::start_in(dir, &toml).await;
    let mut admin = proxy.admin().await;
    let routes: Vec<String> = admin
        .list_routes(None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.route.hostname)
        .collect();
    assert_eq!(routes, ["from-api.test"]);
    let rules: Vec<String> = admin
        .firewall_rules()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(rules, ["192.0.2.1", "192.0.2.2"]);
}

#[tokio::test]
async fn watchers_see_connections_open_and_close_with_byte_counts() {
    let pki = Pki::new();
    let a = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new().route("a.test", a.addr).start().await;
    let mut admin = proxy.admin().await;
    let mut events = Box::pin(admin.watch_events().await.unwrap());
    proxy.wait_for_watchers().await;

    let mut c = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    let me = client_addr(&c);
    send_and_finish(&mut c, &[7u8; 5000]).await.unwrap();
    let sent = c.get_ref().0.writes.lock().unwrap().len() as u64;
    let received = c.get_ref().0.reads.lock().unwrap().len() as u64;

    let opened = next_matching(&mut events, |e| matches!(e, Event::ConnectionOpened { .. })).await;
    let Event::ConnectionOpened {
        client,
        hostname,
        mode,
        backend,
        ..
    } = opened
    else {
        unreachable!()
    };
    assert_eq!(client, me.to_string());
    assert_eq!(hostname, "a.test");
    assert_eq!(mode, Mode::L4);
    assert_eq!(backend, a.addr.to_string());

    let closed = next_matching(&mut events, |e| matches!(e, Event::ConnectionClosed { .. })).await;
    let Event::ConnectionClosed {
        bytes_in,
        bytes_out,
        outcome,
        ..
    } = closed
    else {
        unreachable!()
    };
    assert_eq!(outcome, Outcome::Closed(CloseReason::Closed));
    assert_eq!(bytes_in, sent, "client->backend bytes");
    assert_eq!(bytes_out, received, "backend->client bytes");

    // Route and firewall changes and blocks are events too; so are stats snapshots.
    admin
        .add_route(LISTENER, route("b.test", "127.0.0.1:9"))
        .await
        .unwrap();
    let changed = next_matching(&mut events, |e| matches!(e, Event::RouteChanged { .. })).await;
    assert!(
        matches!(changed, Event::RouteChanged { ref action, .. } if *action == ChangeAction::Added)
    );
    admin
        .add_firewall_rule(FirewallRule {
            kind: FirewallRuleKind::Ip,
            value: "127.0.0.1".into(),
        })
        .await
        .unwrap();
    next_matching(&mut events, |e| matches!(e, Event::FirewallChanged { .. })).await;
    let _ = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    next_matching(
        &mut events,
        |e| matches!(e, Event::ConnectionBlocked { reason, .. } if *reason == BlockedReason::Firewall),
    )
    .await;
    let stats = next_matching(&mut events, |e| matches!(e, Event::Stats { .. })).await;
    let Event::Stats { routes, .. } = stats else {
        unreachable!()
    };
    let a_stats = routes
        .iter()
        .find(|r| r.route.hostname == "a.test")
        .unwrap();
    assert_eq!(a_stats.stats.total_connections, 1);
    assert_eq!(a_stats.stats.bytes_in, sent);
}

#[tokio::test]
async fn a_stuck_subscriber_never_slows_traffic_and_learns_what_it_lost() {
    let pki = Pki::new();
    let a = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new()
        .event_buffer(8)
        .route("a.test", a.addr)
        .start()
        .await;
    let mut admin = proxy.admin().await;
    // Two subscribers that never read while traffic flows: one over gRPC, one on the bus.
    let mut grpc_events = Box::pin(admin.watch_events().await.unwrap());
    let mut bus = proxy.state.events.subscribe();

    // A bulk transfer and a burst of connections, far more events than the buffer holds.
    let mut c = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    let payload = vec![1u8; 8 * 1024 * 1024];
    let answer = tokio::time::timeout(Duration::from_secs(60), send_and_finish(&mut c, &payload))
        .await
        .expect("bulk transfer stalled behind a stuck subscriber")
        .unwrap();
    assert_eq!(answer.len(), payload.len() + "bye from a.test\n".len());
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"not tls").await.unwrap();
        assert_reset(&mut s).await;
    }
    // And a burst published faster than any subscriber task can run.
    for _ in 0..100 {
        proxy
            .state
            .events
            .publish(|| mc_proxy::model::events::Event::FirewallChanged {
                action: mc_proxy_shared::ChangeAction::Added,
                rule: FirewallRule {
                    kind: FirewallRuleKind::Ip,
                    value: "192.0.2.1".into(),
                },
                origin: mc_proxy::model::events::Origin {
                    change: 1,
                    caller: mc_proxy::model::events::Caller::Unknown,
                },
            });
    }

    assert!(matches!(
        bus.recv().await,
        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) if n > 0
    ));
    let lagged = next_matching(&mut grpc_events, |e| matches!(e, Event::Lagged { .. })).await;
    let Event::Lagged { dropped } = lagged else {
        unreachable!()
    };
    assert!(dropped > 0);
    // The stream goes on after the gap.
    next_matching(&mut grpc_events, |_| true).await;
}

#[tokio::test]
async fn oversized_values_are_refused_briefly_and_change_nothing() {
    let proxy = ProxyBuilder::new()
        .route("app.test", "127.0.0.1:9443")
        .start()
        .await;
    let mut admin = proxy.admin().await;
    let huge = "a".repeat(1_000_000);
    let before = admin.list_routes(None).await.unwrap();

    let refusals = [
        admin
            .add_route(LISTENER, route(&format!("{huge}.test"), "127.0.0.1:1"))
            .await
            .unwrap_err(),
        admin
            .add_route(LISTENER, route("ok.test", format!("{huge}:1")))
            .await
            .unwrap_err(),
        admin
            .update_route(
                LISTENER,
                "app.test",
                RoutePatch {
                    tls_cert: Some(format!("/{huge}")),
                    ..RoutePatch::default()
                },
            )
            .await
            .unwrap_err(),
        admin.remove_route(&huge, "app.test").await.unwrap_err(),
        admin
            .add_firewall_rule(FirewallRule {
                kind: FirewallRuleKind::Ip,
                value: huge.clone(),
            })
            .await
            .unwrap_err(),
    ];
    for err in refusals {
        assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
        let text = err.to_string();
        assert!(text.len() < 200, "{} bytes: {}", text.len(), &text[..200]);
        assert!(text.contains("1000") && text.contains("at most"), "{text}");
    }
    // Values under the size caps but still invalid are echoed clipped, never whole.
    let err = admin
        .add_route(LISTENER, route(&"b".repeat(250), "127.0.0.1:1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("…\" (250 bytes)"), "{err}");

    assert_eq!(admin.list_routes(None).await.unwrap(), before);
    assert!(admin.firewall_rules().await.unwrap().is_empty());
}

/// The config loader's message for one route of `body` (TOML keys of `[[listeners.routes]]`).
fn toml_refusal(body: &str) -> String {
    let text = format!(
        "[database]\npath = \"x.db\"\n[[listeners]]\naddr = \"127.0.0.1:8443\"\n\
         [[listeners.routes]]\nhostname = \"app.test\"\n{body}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    match mc_proxy::control::config::Config::parse(&dir.path().join("mc-proxy.toml"), &text) {
        Ok(_) => panic!("the TOML takes {body}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn zero_weights_and_check_settings_are_refused_as_the_toml_refuses_them() {
    let proxy = ProxyBuilder::new()
        .route_to("app.test", &[("127.0.0.1:9443", 2)])
        .health_check(Duration::from_secs(3), 4, 5, None)
        .start()
        .await;
    let mut admin = proxy.admin().await;
    let routes = |entries: Vec<mc_proxy_shared::client::RouteEntry>| {
        entries.into_iter().map(|e| e.route).collect::<Vec<_>>()
    };
    let before = routes(admin.list_routes(None).await.unwrap());
    let stored = before[0].clone();
    assert_eq!(stored.backends[0].weight, 2);
    let check = stored.health_check.clone().unwrap();
    assert_eq!((check.rise, check.fall), (4, 5));

    // Each zero, with the words the TOML loader uses for it.
    let weight = "backend \"127.0.0.1:9443\": weight 0 is not from 1 to 256";
    assert!(
        toml_refusal("backends = [{ address = \"127.0.0.1:9443\", weight = 0 }]").contains(weight)
    );
    let rise_fall = "health_check: rise and fall must be at least 1";
    let interval = "health_check: interval must be at least 100ms";
    let timeout = "health_check: timeout must be more than 0 and at most the interval";
    let zero = Duration::ZERO;
    let checks = [
        (
            "rise = 0",
            HealthCheck {
                rise: 0,
                ..check.clone()
            },
            rise_fall,
        ),
        (
            "fall = 0",
            HealthCheck {
                fall: 0,
                ..check.clone()
            },
            rise_fall,
        ),
        (
            "interval = \"0s\"\ntimeout = \"0s\"",
            HealthCheck {
                interval: zero,
                timeout: zero,
                ..check.clone()
            },
            interval,
        ),
        (
            "timeout = \"0s\"",
            HealthCheck {
                timeout: zero,
                ..check.clone()
            },
            timeout,
        ),
        // The upper bounds, on the same paths with the same words.
        (
            "rise = 101",
            HealthCheck {
                rise: 101,
                ..check.clone()
            },
            "health_check: rise and fall must be at most 100",
        ),
        (
            "fall = 4000000000",
            HealthCheck {
                fall: 4_000_000_000,
                ..check.clone()
            },
            "health_check: rise and fall must be at most 100",
        ),
        (
            "interval = \"61m\"",
            HealthCheck {
                interval: Duration::from_secs(61 * 60),
                ..check.clone()
            },
            "health_check: interval must be at most 1h",
        ),
    ];
    for (toml, _, needle) in &checks {
        let refused = toml_refusal(&format!(
            "backend = \"127.0.0.1:9443\"\n[listeners.routes.health_check]\n{toml}"
        ));
        assert!(refused.contains(needle), "{toml}: {refused}");
    }

    let refused = |err: mc_proxy_shared::client::ClientError, needle: &str| {
        assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    };
    let zero_weight = vec![RouteBackend::new("127.0.0.1:9443").with_weight(0)];
    let err = admin
        .update_route(
            LISTENER,
            "app.test",
            RoutePatch {
                backends: Some(zero_weight.clone()),
                ..RoutePatch::default()
            },
        )
        .await
        .unwrap_err();
    refused(err, weight);
    let err = admin
        .add_route(
            LISTENER,
            Route {
                backends: zero_weight,
                ..route("new.test", "unused:1")
            },
        )
        .await
        .unwrap_err();
    refused(err, weight);
    for (_, bad, needle) in checks {
        let err = admin
            .update_route(
                LISTENER,
                "app.test",
                RoutePatch {
                    health_check: Some(Some(bad.clone())),
                    ..RoutePatch::default()
                },
            )
            .await
            .unwrap_err();
        refused(err, needle);
        let err = admin
            .add_route(
                LISTENER,
                Route {
                    health_check: Some(bad),
                    ..route("new.test", "127.0.0.1:9")
                },
            )
            .await
            .unwrap_err();
        refused(err, needle);
    }

    // A peer that leaves the fields out (one from before they had presence, which never sent a
    // 0) gets the defaults; the same fields sent as 0 are refused.
    let mut raw = pb::admin_service_client::AdminServiceClient::new(
        tonic::transport::Endpoint::try_from("http://x")
            .unwrap()
            .connect_with_connector(tower_service(proxy.socket.clone()))
            .await
            .unwrap(),
    );
    let raw_route = |weight: Option<u32>, check: pb::HealthCheck| pb::AddRouteRequest {
        listener: LISTENER.into(),
        route: Some(pb::Route {
            hostname: "raw.test".into(),
            backends: vec![pb::RouteBackend {
                address: "127.0.0.1:9".into(),
                weight,
                state: 0,
            }],
            health_check: Some(check),
            ..pb::Route::default()
        }),
    };
    let status = raw
        .add_route(raw_route(Some(0), pb::HealthCheck::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("backend \"127.0.0.1:9\": weight 0 is not from 1 to 256"),
        "{status:?}"
    );
    for (check, needle) in [
        (
            pb::HealthCheck {
                rise: Some(0),
                ..pb::HealthCheck::default()
            },
            rise_fall,
        ),
        (
            pb::HealthCheck {
                fall: Some(0),
                ..pb::HealthCheck::default()
            },
            rise_fall,
        ),
        (
            pb::HealthCheck {
                interval_ms: Some(0),
                ..pb::HealthCheck::default()
            },
            interval,
        ),
        (
            pb::HealthCheck {
                timeout_ms: Some(0),
                ..pb::HealthCheck::default()
            },
            timeout,
        ),
        (
            pb::HealthCheck {
                expect: Some(String::new()),
                ..pb::HealthCheck::default()
            },
            "invalid expected status \"\"",
        ),
        (
            pb::HealthCheck {
                expect: Some("2xx-3xx".into()),
                ..pb::HealthCheck::default()
            },
            "invalid expected status \"2xx-3xx\": expected status codes from 100 to 599",
        ),
        (
            pb::HealthCheck {
                rise: Some(101),
                ..pb::HealthCheck::default()
            },
            "health_check: rise and fall must be at most 100",
        ),
    ] {
        let status = raw.add_route(raw_route(None, check)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(needle), "{needle}: {status:?}");
    }

    // Nothing changed: the live table and the database hold the route as it was.
    assert_eq!(routes(admin.list_routes(None).await.unwrap()), before);
    let store = Store::open(proxy.dir.path().join("mc-proxy.db")).unwrap();
    let id = store.listeners().unwrap()[0].id;
    assert_eq!(store.routes(id).unwrap(), before);

    let added = raw
        .add_route(raw_route(None, pb::HealthCheck::default()))
        .await
        .unwrap()
        .into_inner()
        .route
        .unwrap();
    let added = Route::try_from(added).unwrap();
    assert_eq!(added.backends, [RouteBackend::new("127.0.0.1:9")]);
    assert_eq!(added.health_check, Some(HealthCheck::default()));
}

/// One sample of a scrape: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
}

/// A small parser for the Prometheus text format as mc-proxy writes it: comments skipped,
/// label values without escapes (hostnames and addresses need none).
fn parse_scrape(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').expect("labels end with }")),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').expect("label is k=\"v\"");
                let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                (k.to_owned(), v.expect("label value is quoted").to_owned())
            })
            .collect();
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().expect("value is a number"),
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

/// The value of the one sample named `name` whose labels are exactly `labels`.
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: std::collections::BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == want)
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

pub(crate) async fn scrape(proxy: &Proxy) -> String {
    let answer = web::http1_request(proxy.metrics, "GET", "/metrics", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    answer.body
}

/// `promtool check metrics` on `text`; skipped (with a message) where promtool is missing,
/// unless MCPROXY_REQUIRE_PROMTOOL is set (CI).
pub(crate) fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if std::env::var_os("MCPROXY_REQUIRE_PROMTOOL").is_some() {
                panic!("MCPROXY_REQUIRE_PROMTOOL is set but promtool is not installed");
            }
            mc_proxy_tests::skipped(
                "promtool check: promtool is not installed (apt-get install prometheus to run it)",
            );
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- scrape ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

#[tokio::test]
async fn metrics_match_the_admin_api_and_pass_promtool() {
    use http::Request;
    use mc_proxy_tests::web::{H2Backend, answer, h2_client, with_body};

    let pki = Pki::new();
    let l4 = TlsBackend::start(&pki, &["a.test"]).await;
    let web = H2Backend::start().await;
    let down = DeadBackend::new();
    let proxy = ProxyBuilder::new()
        .route("a.test", l4.addr)
        .health_check(Duration::from_millis(100), 1, 1, None)
        .route("web.test", web.addr)
        .l7(&pki)
        .route("down.test", down.addr)
        .l7(&pki)
        .start()
        .await;
    let mut admin = proxy.admin().await;
    // The L4 route's check (a TLS handshake) passed at least once.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let routes = admin.list_routes(None).await.unwrap();
            let a = routes
                .iter()
                .find(|e| e.route.hostname == "a.test")
                .unwrap();
            if a.stats.members[0].checks_passed > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("no passed check in 10 s");

    // L4: two relayed connections, and two resets for different reasons.
    for payload in [&b"one"[..], &[9u8; 3000]] {
        let mut c = tls_connect(proxy.addr(), "a.test", pki.client_config())
            .await
            .unwrap();
        send_and_finish(&mut c, payload).await.unwrap();
    }
    let mut raw = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_reset(&mut raw).await;
    assert!(
        tls_connect(proxy.addr(), "nobody.test", pki.client_config())
            .await
            .is_err()
    );

    // L7: three 200s and a 421 on web.test, a 502 on down.test.
    {
        let mut h2 = h2_client(proxy.addr(), "web.test", &pki).await;
        for path in ["/", "/a", "/b"] {
            let req = Request::builder().uri(format!("https://web.test{path}"));
            let resp = answer(h2.send_request(with_body(req, "hi")).await.unwrap()).await;
            assert_eq!(resp.status, 200);
        }
        let req = Request::builder().uri("https://other.test/");
        let resp = answer(h2.send_request(with_body(req, "")).await.unwrap()).await;
        assert_eq!(resp.status, 421);
        let mut down = h2_client(proxy.addr(), "down.test", &pki).await;
        let req = Request::builder().uri("https://down.test/");
        let resp = answer(down.send_request(with_body(req, "")).await.unwrap()).await;
        assert_eq!(resp.status, 502);
    }
    // The clients are gone; wait until the daemon has closed every connection, so nothing
    // moves between the scrape and the admin API's answer.
    tokio::time::timeout(Duration::from_secs(10), async {
        while admin.status().await.unwrap().active_connections > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("connections still open after 10 s");

    let text = scrape(&proxy).await;
    let samples = parse_scrape(&text);
    let status = admin.status().await.unwrap();
    let routes = admin.list_routes(None).await.unwrap();

    assert_eq!(
        sample(
            &samples,
            "mcproxy_build_info",
            &[("version", &status.version)]
        ),
        1.0
    );
    for l in &status.listeners {
        let listener = [("listener", l.addr.as_str())];
        let value = |name: &str| sample(&samples, name, &listener) as u64;
        assert_eq!(
            value("mcproxy_listener_accepted_connections_total"),
            l.accepted
        );
        assert_eq!(value("mcproxy_listener_active_connections"), 0);
        assert_eq!(
            value("mcproxy_listener_blocked_connections_total"),
            l.blocked
        );
        assert_eq!(
            value("mcproxy_listener_over_capacity_connections_total"),
            l.over_capacity
        );
        let mut resets = 0;
        for reason in mc_proxy_shared::ResetReason::ALL.iter().map(|r| r.as_str()) {
            let n = sample(
                &samples,
                "mcproxy_listener_resets_total",
                &[("listener", &l.addr), ("reason", reason)],
            ) as u64;
            assert_eq!(
                n,
                l.resets_by_reason
                    .get(&reason.parse::<ResetReason>().unwrap())
                    .copied()
                    .unwrap_or(0),
                "{reason}"
            );
            resets += n;
        }
        assert_eq!(resets, l.resets);
    }
    assert_eq!(status.listeners[0].accepted, 6);
    assert_eq!(
        status.listeners[0]
            .resets_by_reason
            .get(&ResetReason::NotTls),
        Some(&1)
    );
    assert_eq!(
        status.listeners[0]
            .resets_by_reason
            .get(&ResetReason::UnknownHost),
        Some(&1)
    );

    for entry in &routes {
        let labels = [
            ("listener", entry.listener.as_str()),
            ("route", entry.route.hostname.as_str()),
        ];
        let s = &entry.stats;
        let value = |name: &str| sample(&samples, name, &labels) as u64;
        let host = &entry.route.hostname;
        assert_eq!(
            value("mcproxy_route_connections_total"),
            s.total_connections,
            "{host}"
        );
        assert_eq!(
            value("mcproxy_route_active_connections"),
            s.active_connections
        );
        assert_eq!(
            value("mcproxy_route_receive_bytes_total"),
            s.bytes_in,
            "{host}"
        );
        assert_eq!(
            value("mcproxy_route_transmit_bytes_total"),
            s.bytes_out,
            "{host}"
        );
        assert_eq!(
            value("mcproxy_route_backend_errors_total"),
            s.backend_errors
        );
        // The HTTP families are an L7 route's only: an L4 route has no series in them.
        let l7 = entry.route.mode == mc_proxy_shared::Mode::L7;
        let http = |name: &str| {
            name == "mcproxy_route_requests_total"
                || name == "mcproxy_route_responses_total"
                || name.starts_with("mcproxy_route_request_duration_seconds")
        };
        if l7 {
            assert_eq!(value("mcproxy_route_requests_total"), s.requests, "{host}");
            for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                let mut with_class = labels.to_vec();
                with_class.push(("class", class));
                let n = sample(&samples, "mcproxy_route_responses_total", &with_class) as u64;
                assert_eq!(n, s.responses[i], "{host} {class}");
            }
        } else {
            let l4_http: Vec<&Sample> = samples
                .iter()
                .filter(|x| http(&x.name) && x.labels.get("route") == Some(host))
                .collect();
            assert!(l4_http.is_empty(), "{host}: {l4_http:?}");
        }
        for (family, h) in [
            (
                "mcproxy_route_request_duration_seconds",
                &s.request_duration,
            ),
            (
                "mcproxy_route_backend_connect_duration_seconds",
                &s.connect_duration,
            ),
        ] {
            if !l7 && http(&format!("{family}_count")) {
                continue;
            }
            assert_eq!(
                value(&format!("{family}_count")),
                h.count,
                "{host} {family}"
            );
            let sum = sample(&samples, &format!("{family}_sum"), &labels);
            assert!((sum - h.sum_seconds).abs() < 1e-9, "{host} {family}: {sum}");
            // Cumulative buckets in the scrape, per-bucket counts in the API.
            let mut cumulative = 0;
            for (i, n) in h.counts.iter().enumerate() {
                cumulative += n;
                let le = match h.upper_bounds_seconds.get(i) {
                    Some(b) => b.to_string(),
                    None => "+Inf".to_owned(),
                };
                let mut with_le = labels.to_vec();
                with_le.push(("le", &le));
                let bucket = sample(&samples, &format!("{family}_bucket"), &with_le) as u64;
                assert_eq!(bucket, cumulative, "{host} {family} le={le}");
            }
        }
    }
    let stats_of = |host: &str| {
        &routes
            .iter()
            .find(|e| e.route.hostname == host)
            .unwrap()
            .stats
    };
    let (a, w, d) = (
        stats_of("a.test"),
        stats_of("web.test"),
        stats_of("down.test"),
    );
    assert_eq!(a.total_connections, 2);
    assert_eq!(
        a.connect_duration.count, 2,
        "one TCP dial per L4 connection"
    );
    assert_eq!(a.request_duration.count, 0);
    assert_eq!((w.requests, w.responses), (4, [0, 3, 0, 1, 0]));
    assert_eq!(
        w.request_duration.count, 4,
        "every request, the 421 included"
    );
    assert_eq!(
        w.connect_duration.count, 1,
        "one backend connection per client connection"
    );
    assert_eq!(
        (d.requests, d.responses, d.backend_errors),
        (1, [0, 0, 0, 0, 1], 1)
    );
    assert_eq!(d.request_duration.count, 1, "the 502 too");
    assert_eq!(d.connect_duration.count, 0, "failed setups are not timed");
    assert!(w.request_duration.quantile(0.5).is_some());

    // Health checks: counted by result per member, timed, on routes with a check only; every
    // member's state carries its "since".
    let member = |host: &'static str, backend: String| {
        move |extra: &[(&'static str, &'static str)]| {
            let mut l = vec![
                ("listener", LISTENER.to_owned()),
                ("route", host.to_owned()),
            ];
            l.push(("backend", backend.clone()));
            l.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
            l
        }
    };
    let get = |name: &str, labels: Vec<(&'static str, String)>| {
        let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sample(&samples, name, &refs)
    };
    let a_member = member("a.test", l4.addr.to_string());
    let ok = get("mcproxy_health_checks_total", a_member(&[("result", "ok")]));
    assert!(ok >= 1.0, "{ok}");
    assert!(
        ok <= a.members[0].checks_passed as f64,
        "the scrape came first"
    );
    assert_eq!(
        get(
            "mcproxy_health_checks_total",
            a_member(&[("result", "failed")])
        ),
        0.0
    );
    let probes = get("mcproxy_health_check_duration_seconds_count", a_member(&[]));
    assert!(probes >= ok, "every probe timed: {probes} < {ok}");
    assert_eq!(
        get("mcproxy_route_backend_state", a_member(&[("state", "up")])),
        1.0
    );
    let since = get("mcproxy_route_backend_state_since_seconds", a_member(&[]));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(since <= now && since > now - 60.0, "{since} vs {now}");
    assert!(
        !samples
            .iter()
            .any(|s| s.name.starts_with("mcproxy_health_check")
                && s.labels.get("route").map(String::as_str) != Some("a.test")),
        "routes without a check have no check series"
    );

    promtool_check(&text);

    // Routes appear and disappear with the live tables.
    admin
        .add_route(LISTENER, route("new.test", "127.0.0.1:9"))
        .await
        .unwrap();
    let samples = parse_scrape(&scrape(&proxy).await);
    let new = [("listener", LISTENER), ("route", "new.test")];
    assert_eq!(
        sample(&samples, "mcproxy_route_connections_total", &new),
        0.0
    );
    admin.remove_route(LISTENER, "new.test").await.unwrap();
    admin.remove_route(LISTENER, "down.test").await.unwrap();
    let samples = parse_scrape(&scrape(&proxy).await);
    for gone in ["new.test", "down.test"] {
        assert!(
            !samples
                .iter()
                .any(|s| s.labels.get("route").map(String::as_str) == Some(gone)),
            "{gone} is still scraped"
        );
    }
}

#[tokio::test]
async fn metrics_endpoint_answers_only_metrics() {
    let proxy = ProxyBuilder::new().listener().start().await;
    let other = web::http1_request(proxy.metrics, "GET", "/", &[]).await;
    assert_eq!(other.status, 404);
    let post = web::http1_request(proxy.metrics, "POST", "/metrics", &[]).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), "GET, HEAD");
    let head = web::http1_request(proxy.metrics, "HEAD", "/metrics", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.header("content-length").parse::<usize>().unwrap() > 0);
    let open = web::http1_request(
        proxy.metrics,
        "GET",
        "/metrics",
        &[("accept", "application/openmetrics-text;version=1.0.0")],
    )
    .await;
    assert_eq!(
        open.header("content-type"),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
}

/// Polls `ListConnections` until `want` holds (10 s at most).
async fn until_connections(
    admin: &mut mc_proxy_shared::client::AdminClient,
    want: impl Fn(&mc_proxy_shared::client::ConnectionList) -> bool,
) -> mc_proxy_shared::client::ConnectionList {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let list = admin.list_connections(0).await.unwrap();
            if want(&list) {
                return list;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("ListConnections never showed what was expected")
}

#[tokio::test]
async fn open_connections_are_listed_with_their_route_and_live_bytes_until_closed() {
    let pki = Pki::new();
    let a = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new().route("a.test", a.addr).start().await;
    let mut admin = proxy.admin().await;
    assert_eq!(admin.list_connections(0).await.unwrap().total, 0);

    let mut c = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    let me = client_addr(&c);
    c.write_all(&[1u8; 1000]).await.unwrap();
    c.flush().await.unwrap();
    let first = until_connections(&mut admin, |l| {
        l.connections.first().is_some_and(|c| c.bytes_in > 1000)
    })
    .await;
    assert_eq!(first.total, 1);
    assert!(!first.truncated());
    let listed = &first.connections[0];
    assert_eq!(listed.client, me.to_string());
    assert_eq!(listed.route, "a.test");
    assert_eq!(listed.hostname, "a.test");
    assert_eq!(listed.mode, Mode::L4);
    assert_eq!(listed.backend, a.addr.to_string());

    // More traffic on the same connection: the listing reads the live counters.
    c.write_all(&[2u8; 20_000]).await.unwrap();
    c.flush().await.unwrap();
    let grown = until_connections(&mut admin, |l| {
        l.connections
            .first()
            .is_some_and(|c| c.bytes_in > listed.bytes_in + 20_000 && c.bytes_out > 20_000)
    })
    .await;
    assert_eq!(grown.connections[0].id, listed.id);

    // A limit cuts the list but not the total.
    let mut d = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    d.write_all(b"x").await.unwrap();
    until_connections(&mut admin, |l| l.total == 2).await;
    let cut = admin.list_connections(1).await.unwrap();
    assert_eq!((cut.connections.len(), cut.total), (1, 2));
    assert_eq!(cut.connections[0].id, listed.id, "oldest first");

    send_and_finish(&mut c, b"").await.unwrap();
    send_and_finish(&mut d, b"").await.unwrap();
    until_connections(&mut admin, |l| l.total == 0 && l.connections.is_empty()).await;
}

/// Issue 28: stored L7 routes whose certificate broke before a restart are listed with why
/// (not left out), `add` of the name says so, `remove` works, a failed reload says "not
/// served" (not "kept"), and a reload after the fix serves the route and drops the reason.
#[tokio::test]
async fn a_route_left_out_at_start_is_listed_as_not_served_until_a_reload_serves_it() {
    use mc_proxy_shared::client::ReloadResult;
    let pki = Pki::new();
    let certs = tempfile::tempdir().unwrap();
    let backend = "127.0.0.1:9".parse().unwrap();
    let toml = listener_toml(&format!(
        "{}{}{}[[listeners.routes]]\nhostname = \"l4.test\"\nbackend = \"127.0.0.1:10\"\n",
        l7_route_toml(&pki, certs.path(), "a.test", backend),
        l7_route_toml(&pki, certs.path(), "b.test", backend),
        l7_route_toml(&pki, certs.path(), "c.test", backend),
    ));
    let proxy = Proxy::start(&toml).await;
    let dir = proxy.stop_and_keep_dir().await;
    for name in ["b.test", "c.test"] {
        std::fs::write(
            certs.path().join(format!("{name}.pem")),
            "not a certificate",
        )
        .unwrap();
    }
    let proxy = Proxy::start_in(dir, &toml).await;
    let mut admin = proxy.admin().await;

    let states = |routes: &[mc_proxy_shared::client::RouteEntry]| {
        let mut s: Vec<(String, Option<String>)> = routes
            .iter()
            .map(|e| (e.route.hostname.clone(), e.not_served.clone()))
            .collect();
        s.sort();
        s
    };
    let listed = states(&admin.list_routes(None).await.unwrap());
    let names: Vec<&str> = listed.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(names, ["a.test", "b.test", "c.test", "l4.test"]);
    for (host, reason) in &listed {
        match host.as_str() {
            "b.test" | "c.test" => {
                let reason = reason.as_deref().expect("listed as not served");
                assert!(reason.contains(&format!("{host}.pem")), "{reason}");
            }
            _ => assert_eq!(reason, &None, "{host} is served"),
        }
    }
    // The listener-filtered list says the same.
    assert_eq!(
        states(&admin.list_routes(Some(LISTENER)).await.unwrap()),
        listed
    );
    let status = admin.status().await.unwrap();
    let l = &status.listeners[0];
    assert_eq!((l.route_count, l.routes_not_served), (2, 2));
    // The others are served; the broken one is not.
    let served = |sni: &'static str| served_leaf(proxy.addr(), sni, pki.client_config());
    assert_eq!(
        served("a.test").await.unwrap(),
        pem_leaf(&certs.path().join("a.test.pem").display().to_string())
    );
    assert!(served("b.test").await.is_err());

    // Adding the name again: it exists, not served, and why.
    let err = admin
        .add_route(LISTENER, route("b.test", "127.0.0.1:11"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already exists") && err.contains("not served") && err.contains("b.test.pem"),
        "{err}"
    );

    // Removing one that is not served works and it is gone for good.
    admin.remove_route(LISTENER, "c.test").await.unwrap();

    // A reload with the file still broken: failed, not kept, still listed with the reason.
    let report = admin.reload().await.unwrap();
    let b = report.iter().find(|r| r.hostname == "b.test").unwrap();
    assert_eq!((b.result, b.kept), (ReloadResult::Failed, false), "{b:?}");
    assert!(report.iter().all(|r| r.hostname != "c.test"), "{report:?}");
    let listed = states(&admin.list_routes(None).await.unwrap());
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed[1]
            .1
            .as_deref()
            .is_some_and(|r| r.contains("b.test.pem"))
    );

    // Fixed: the reload serves it and the reason is gone.
    let (b_cert, _) = pki.write_pem(certs.path(), &["b.test"]);
    let report = admin.reload().await.unwrap();
    let b = report.iter().find(|r| r.hostname == "b.test").unwrap();
    assert_eq!(b.result, ReloadResult::Added, "{b:?}");
    let listed = states(&admin.list_routes(None).await.unwrap());
    assert!(listed.iter().all(|(_, r)| r.is_none()), "{listed:?}");
    let status = admin.status().await.unwrap();
    let l = &status.listeners[0];
    assert_eq!((l.route_count, l.routes_not_served), (3, 0));
    assert_eq!(served("b.test").await.unwrap(), pem_leaf(&b_cert));
}

/// An operator cuts one connection: an L4 relay and an HTTP/2 connection end at once with the
/// outcome `admin_closed` (in the events and the log), the others on the same routes go on,
/// and an id that is not open is NOT_FOUND.
#[tokio::test]
async fn an_operator_closes_one_connection_and_the_others_go_on() {
    let pki = Pki::new();
    let a = TlsBackend::start(&pki, &["a.test"]).await;
    let h2 = web::H2Backend::start().await;
    let proxy = web::web_proxy(&pki, h2.addr)
        .route("a.test", a.addr)
        .l4()
        .start()
        .await;
    let (_guard, logs) = capture_logs();
    let mut admin = proxy.admin().await;
    let mut events = Box::pin(admin.watch_events().await.unwrap());

    let mut cut = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    let mut kept = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    let mut web_client = web::h2_client(proxy.addr(), "web.test", &pki).await;
    let get = || {
        http::Request::get("https://web.test/x")
            .body(web::ClientBody::default())
            .unwrap()
    };
    assert_eq!(web::ask_h2(&mut web_client, get()).await.status, 200);
    for c in [&mut cut, &mut kept] {
        c.write_all(b"hi").await.unwrap();
        let mut echo = [0u8; 2];
        c.read_exact(&mut echo).await.unwrap();
    }
    let list = until_connections(&mut admin, |l| l.total == 3).await;
    let id_of = |route: &str, client: std::net::SocketAddr| {
        list.connections
            .iter()
            .find(|c| c.route == route && c.client == client.to_string())
            .map(|c| c.id)
            .unwrap()
    };
    let cut_id = id_of("a.test", client_addr(&cut));
    let web_id = list
        .connections
        .iter()
        .find(|c| c.route == "web.test")
        .unwrap()
        .id;

    admin.close_connection(cut_id).await.unwrap();
    // The client sees its relay end without close_notify (L4 cannot write one).
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), cut.read_to_end(&mut rest))
        .await
        .expect("the closed relay did not end");
    assert_eq!(end.map_err(|e| e.kind()), Err(ErrorKind::UnexpectedEof));
    let closed = next_matching(
        &mut events,
        |e| matches!(e, Event::ConnectionClosed { id, .. } if *id == cut_id),
    )
    .await;
    let Event::ConnectionClosed { outcome, .. } = closed else {
        unreachable!()
    };
    assert_eq!(outcome, Outcome::Closed(CloseReason::AdminClosed));
    assert!(
        wait_for_log(&logs, "outcome=\"admin_closed\"").await,
        "{}",
        log_text(&logs)
    );

    admin.close_connection(web_id).await.unwrap();
    next_matching(&mut events, |e| {
        matches!(e, Event::ConnectionClosed { id, outcome, .. }
            if *id == web_id && *outcome == Outcome::Closed(CloseReason::AdminClosed))
    })
    .await;
    let refused = tokio::time::timeout(Duration::from_secs(5), web_client.send_request(get()))
        .await
        .expect("the closed HTTP/2 connection still waits");
    assert!(
        refused.is_err(),
        "a request went through a closed connection"
    );

    // The other relay is untouched; a closed id is no longer there.
    kept.write_all(b"on").await.unwrap();
    let mut echo = [0u8; 2];
    kept.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"on");
    let err = admin.close_connection(cut_id).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound), "{err}");
    assert!(err.to_string().contains(&cut_id.to_string()), "{err}");
    let closes = proxy.state.listeners()[0]
        .counters
        .closes(CloseReason::AdminClosed);
    assert_eq!(closes, 2);
}
