//! Listeners and settings changed while the daemon serves: listeners added, updated and
//! removed through the admin API under traffic, kept across a restart, and `[proxy]`
//! settings re-read by a reload.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mc_proxy::protocols::proxyproto;
use mc_proxy_shared::client::ListenerUpdate;
use mc_proxy_shared::{Route, RouteBackend};
use mc_proxy_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The TOML listener as the admin API names it (tests bind port 0).
const L: &str = "127.0.0.1:0";
/// A listener added at run time: another loopback address, so that it is not the TOML's
/// `127.0.0.1:0` (a listener is named by its configured address).
const ADDED: &str = "127.0.0.2:0";

fn l4_route(hostname: &str, backend: SocketAddr) -> Route {
    Route {
        hostname: hostname.into(),
        backends: vec![RouteBackend::new(backend.to_string())],
        ..Route::default()
    }
}

/// One relayed round trip through `addr` for `a.test`: the echo comes back.
async fn round_trip(addr: SocketAddr, pki: &Pki) -> std::io::Result<()> {
    let mut c = tls_connect(addr, "a.test", pki.client_config()).await?;
    let answer = send_and_finish(&mut c, b"ping").await?;
    if answer != b"pingbye from a.test\n" {
        return Err(std::io::Error::other(format!("answer {answer:?}")));
    }
    Ok(())
}

/// Clients in a loop on `addr` until `stop`: (served, failed).
fn traffic(
    addr: SocketAddr,
    pki: &Arc<Pki>,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    let (pki, stop) = (Arc::clone(pki), Arc::clone(stop));
    tokio::spawn(async move {
        let (served, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        while !stop.load(Ordering::Relaxed) {
            match round_trip(addr, &pki).await {
                Ok(()) => served.fetch_add(1, Ordering::Relaxed),
                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
        (served.into_inner(), failed.into_inner())
    })
}

/// How many sockets listen on the IPv4 `addr` (Linux: `/proc/net/tcp`, state 0A); 0 when
/// that file cannot be read.
fn listening_sockets(addr: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only: {addr}")
    };
    // The address as the kernel prints it: the IP's bytes in host (little-endian) order.
    let ip = u32::from_le_bytes(v4.ip().octets());
    let local = format!("{ip:08X}:{:04X}", v4.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(1);
            fields.next() == Some(&local) && fields.nth(1) == Some("0A")
        })
        .count()
}

/// The bound address the admin API reports for `listener`.
fn bound(status: &mc_proxy_shared::client::Status, listener: &str) -> SocketAddr {
    let l = status
        .listeners
        .iter()
        .find(|l| l.addr == listener)
        .unwrap_or_else(|| panic!("no listener {listener} in {:?}", status.listeners));
    l.bound.parse().unwrap()
}

async fn listener_added_removed_and_restored(workers: usize) {
    let pki = Arc::new(Pki::new());
    let a = TlsBackend::start(&pki, &["a.test"]).await;
    // Room for every connection event of the traffic below: the listener events must not be
    // lost to a lagging subscriber.
    let mut builder = ProxyBuilder::new()
        .event_buffer(1 << 16)
        .route("a.test", a.addr)
        .l4();
    if workers > 1 {
        builder = builder.workers(workers);
    }
    let proxy = builder.start().await;
    let mut admin = proxy.admin().await;
    let mut events = Box::pin(admin.watch_events().await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(proxy.addr(), &pki, &stop);

    // Added: bound at once, serving its routes as soon as they are added.
    let (added, warnings) = admin.add_listener(ADDED, false, Vec::new()).await.unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(added.addr, ADDED);
    assert_eq!(added.route_count, 0);
    let addr: SocketAddr = added.bound.parse().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.2");
    assert_ne!(addr.port(), 0);
    // No route yet: a hello for a.test is not this listener's to serve.
    let err = round_trip(addr, &pki).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    admin
        .add_route(ADDED, l4_route("a.test", a.addr))
        .await
        .unwrap();
    // One listening socket per worker thread, and every connection gets through.
    assert_eq!(
        listening_sockets(addr),
        workers,
        "sockets listening on {addr}"
    );
    for i in 0..4 * workers {
        round_trip(addr, &pki)
            .await
            .unwrap_or_else(|e| panic!("connection {i} on the added listener: {e}"));
    }
    let status = admin.status().await.unwrap();
    assert_eq!(bound(&status, ADDED), addr);
    assert_eq!(status.listeners.len(), 2);

    // A second listener on the same address, and an address taken by another process, are
    // refused and store nothing.
    let err = admin
        .add_listener(ADDED, false, Vec::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::AlreadyExists), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let err = admin
        .add_listener(&taken_addr, false, Vec::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("cannot listen on {taken_addr}")),
        "{err}"
    );
    assert_eq!(admin.status().await.unwrap().listeners.len(), 2);
    for bad in ["127.0.0.1", "nonsense:443", &"9".repeat(100)] {
        let err = admin
            .add_listener(bad, false, Vec::new())
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(tonic::Code::InvalidArgument),
            "{bad}: {err}"
        );
        assert!(err.to_string().len() < 300, "echoes its input: {err}");
    }

    // Removed under an open relay: refused while it has a route, then with it. New
    // connections are refused; the open relay runs on.
    let mut open = tls_connect(addr, "a.test", pki.client_config())
        .await
        .unwrap();
    open.write_all(b"before").await.unwrap();
    let mut echo = [0u8; 6];
    open.read_exact(&mut echo).await.unwrap();
    let err = admin.remove_listener(ADDED, false).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("1 route(s)"), "{err}");
    round_trip(addr, &pki).await.unwrap();
    admin.remove_listener(ADDED, true).await.unwrap();
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(
        listening_sockets(addr),
        0,
        "sockets still listening on {addr}"
    );
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
    open.write_all(b"after!").await.unwrap();
    open.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"after!");
    let status = admin.status().await.unwrap();
    assert_eq!(status.listeners.len(), 1);
    let routes = admin.list_routes(None).await.unwrap();
    assert!(routes.iter().all(|r| r.listener == L), "{routes:?}");
    // Its sockets were closed before the answer: the very address can be listened on again.
    let again = addr.to_string();
    admin.add_listener(&again, false, Vec::new()).await.unwrap();
    admin.remove_listener(&again, false).await.unwrap();

    // Published: added, then removed.
    let (mut seen, mut origins) = (Vec::new(), Vec::new());
    while seen.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("listener events")
            .unwrap()
            .unwrap();
        if let mc_proxy_shared::client::Event::ListenerChanged {
            listener,
            action,
            origin,
        } = e.event
        {
            seen.push((listener, action.to_string()));
            origins.push(origin.expect("a change names who made it"));
        }
    }
    // Who did it: this process, as the kernel names the admin socket's peer; each change its
    // own id, in order.
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    for o in &origins {
        assert_eq!(
            (o.uid, o.pid),
            (Some(uid), Some(std::process::id())),
            "{o:?}"
        );
        assert!(o.by.starts_with(&format!("uid {uid} pid ")), "{o:?}");
    }
    assert!(
        origins.windows(2).all(|w| w[0].change_id < w[1].change_id),
        "{origins:?}"
    );
    let expected = [
        (ADDED, "added"),
        (ADDED, "removed"),
        (&again, "added"),
        (&again, "removed"),
    ]
    .map(|(l, a)| (l.to_owned(), a.to_owned()));
    assert_eq!(seen, expected);

    // The listener's traffic never noticed.
    stop.store(true, Ordering::Relaxed);
    let (served, failed) = load.await.unwrap();
    assert!(served > 0, "no traffic ran");
    assert_eq!(failed, 0, "{failed} of {} clients failed", served + failed);

    drop(open);
    // Added at run time, kept across a restart like any other change.
    admin
        .add_listener(ADDED, true, vec!["10.0.0.0/8".into()])
        .await
        .unwrap();
    drop(admin);
    let dir = proxy.stop_and_keep_dir().await;
    let proxy = Proxy::start_in(dir, "[[listeners]]\naddr = \"127.0.0.1:0\"").await;
    let status = proxy.admin().await.status().await.unwrap();
    let restored = status.listeners.iter().find(|l| l.addr == ADDED).unwrap();
    assert!(restored.proxy_protocol);
    assert_eq!(restored.proxy_protocol_from, ["10.0.0.0/8"]);
}

#[tokio::test]
async fn listeners_added_and_removed_at_run_time_under_traffic() {
    listener_added_removed_and_restored(1).await;
}

/// The daemon's worker threads each get a socket of the new listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_added_at_run_time_reach_every_worker_thread() {
    listener_added_removed_and_restored(2).await;
}

/// A listener added with a name is named by it in every request (routes added, listed,
/// removed through it), still by its address too, and keeps the name across a restart; names
/// are unique and never another listener's address.
#[tokio::test]
async fn a_named_listener_takes_routes_through_its_name() {
    let pki = Pki::new();
    let a = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new()
        .route("b.test", a.addr)
        .l4()
        .start()
        .await;
    let mut admin = proxy.admin().await;

    let (added, warnings) = admin
        .add_listener_with(
            ADDED,
            mc_proxy_shared::client::NewListener {
                name: Some("edge-2"),
                ..Default::default()
            },
            ListenerUpdate::default(),
        )
        .await
        .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        (added.addr.as_str(), added.name.as_str()),
        (ADDED, "edge-2")
    );
    let addr: SocketAddr = added.bound.parse().unwrap();

    // Through the name: added, listed, served.
    admin
        .add_route("edge-2", l4_route("a.test", a.addr))
        .await
        .unwrap();
    let listed = admin.list_routes(Some("edge-2")).await.unwrap();
    let hosts: Vec<&str> = listed.iter().map(|e| e.route.hostname.as_str()).collect();
    assert_eq!(hosts, ["a.test"]);
    round_trip(addr, &pki).await.unwrap();
    // The address still names it; an unnamed listener is named by its address.
    assert_eq!(admin.list_routes(Some(ADDED)).await.unwrap().len(), 1);
    let status = admin.status().await.unwrap();
    let toml = status.listeners.iter().find(|l| l.addr == L).unwrap();
    assert_eq!(toml.name, L);

    // Refused, storing nothing: a taken name, a name that is another listener's address, a
    // name outside the rules; an unknown name is not found.
    for (name, code) in [
        ("edge-2", tonic::Code::AlreadyExists),
        (L, tonic::Code::AlreadyExists),
        (ADDED, tonic::Code::InvalidArgument),
        ("bad name", tonic::Code::InvalidArgument),
        ("", tonic::Code::InvalidArgument),
    ] {
        let err = admin
            .add_listener_with(
                "127.0.0.3:0",
                mc_proxy_shared::client::NewListener {
                    name: Some(name),
                    ..Default::default()
                },
                ListenerUpdate::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(code), "name {name:?}: {err}");
    }
    let err = admin.list_routes(Some("edge-9")).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound), "{err}");
    assert!(err.to_string().contains("edge-2 (127.0.0.2:0)"), "{err}");
    assert_eq!(admin.status().await.unwrap().listeners.len(), 2);

    // Kept across a restart, and still the name requests use.
    drop(admin);
    let dir = proxy.stop_and_keep_dir().await;
    let proxy = Proxy::start_in(dir, "[[listeners]]\naddr = \"127.0.0.1:0\"").await;
    let mut admin = proxy.admin().await;
    let status = admin.status().await.unwrap();
    let restored = status.listeners.iter().find(|l| l.addr == ADDED).unwrap();
    assert_eq!(restored.name, "edge-2");
    admin.remove_route("edge-2", "a.test").await.unwrap();
    assert!(admin.list_routes(Some("edge-2")).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_listener_update_applies_to_new_connections_all_or_nothing() {
    let pki = Pki::new();
    let a = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new().route("a.test", a.addr).start().await;
    let mut admin = proxy.admin().await;
    let header = proxyproto::encode_v2(
        "203.0.113.9:4000".parse().unwrap(),
        "192.0.2.1:443".parse().unwrap(),
    );

    // A bad source list fails the whole update: PROXY stays off, the no-SNI route unset.
    let update = ListenerUpdate {
        proxy_protocol: Some(true),
        proxy_protocol_from: Some(vec!["10.0.0.0/8".into(), "lb.example".into()]),
        no_sni_route: Some("a.test".into()),
        access_log: Some(true),
        ..ListenerUpdate::default()
    };
    let err = admin.update_listener(L, update).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("proxy_protocol_from[1]"), "{err}");
    let l = &admin.status().await.unwrap().listeners[0];
    assert!(!l.proxy_protocol && !l.access_log);
    assert_eq!(l.no_sni_route, "");
    round_trip(proxy.addr(), &pki).await.unwrap();

    // An open connection keeps what it was accepted with.
    let mut open = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    let on = ListenerUpdate {
        proxy_protocol: Some(true),
        proxy_protocol_from: Some(vec!["127.0.0.0/8".into()]),
        ..ListenerUpdate::default()
    };
    let (l, warnings) = admin.update_listener(L, on).await.unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(l.proxy_protocol);
    assert_eq!(l.proxy_protocol_from, ["127.0.0.0/8"]);
    assert_eq!(
        send_and_finish(&mut open, b"ping").await.unwrap(),
        b"pingbye from a.test\n"
    );
    // New connections need the header now, and get its client address.
    let err = round_trip(proxy.addr(), &pki).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let mut c = tls_connect_after(proxy.addr(), &header, "a.test", pki.client_config())
        .await
        .unwrap();
    assert_eq!(
        send_and_finish(&mut c, b"hi").await.unwrap(),
        b"hibye from a.test\n"
    );
    let resets: Vec<_> = proxy.state.listeners()[0]
        .counters
        .resets_by_reason()
        .map(|(r, n)| (r.as_str(), n))
        .collect();
    assert_eq!(resets, [("bad_proxy_header", 1)]);

    // Off again, and a source list without PROXY is accepted with a warning.
    let off = ListenerUpdate {
        proxy_protocol: Some(false),
        ..ListenerUpdate::default()
    };
    let (_, warnings) = admin.update_listener(L, off).await.unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("proxy_protocol is off"),
        "{warnings:?}"
    );
    round_trip(proxy.addr(), &pki).await.unwrap();
}

/// Connects and sends nothing: how long until the proxy resets the connection.
async fn silent_client_lasts(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert_reset(&mut stream).await;
    started.elapsed()
}

#[tokio::test]
async fn a_reload_rereads_proxy_settings_and_names_what_needs_a_restart() {
    let pki = Pki::new();
    let a = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new()
        .route("a.test", a.addr)
        .client_hello_timeout(Duration::from_secs(30))
        .start()
        .await;
    let mut admin = proxy.admin().await;
    let path = proxy.dir.path().join("mc-proxy.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    assert!(original.contains("client_hello_timeout"), "{original}");

    // A file that does not load changes nothing, and says why.
    std::fs::write(&path, format!("{original}\n[proxy\n")).unwrap();
    let report = admin.reload_all().await.unwrap();
    let why = report.settings_error.expect("a broken file is reported");
    assert!(why.contains("mc-proxy.toml"), "{why}");
    assert!(report.settings_applied.is_empty());
    assert_eq!(
        proxy.state.proxy().client_hello_timeout,
        Duration::from_secs(30)
    );

    // The hello timeout to 300 ms (applies to new connections), the worker count changed
    // (needs a restart), and a listener the database does not have.
    let edited = original
        .replace(
            "client_hello_timeout = \"30000ms\"",
            "client_hello_timeout = \"300ms\"\nworkers = 3",
        )
        .replace(
            "addr = \"127.0.0.1:0\"",
            "addr = \"127.0.0.1:0\"\naccess_log = true",
        )
        + "\n[[listeners]]\naddr = \"127.0.0.4:8443\"\nproxy_protocol = true\n";
    assert_ne!(edited, original);
    std::fs::write(&path, edited).unwrap();
    let report = admin.reload_all().await.unwrap();
    assert_eq!(report.settings_error, None);
    assert_eq!(
        report.settings_applied,
        ["client_hello_timeout: 30s -> 300ms"]
    );
    assert_eq!(report.settings_need_restart, ["workers"]);
    assert_eq!(report.listeners_not_applied.len(), 2, "{report:?}");
    // A listener's setting edited in the file: named, with the command that applies it.
    let line = &report.listeners_not_applied[0];
    assert!(
        line.contains("listener 127.0.0.1:0 in ")
            && line.ends_with("mcproxyctl listeners update --listener 127.0.0.1:0 --access-log on"),
        "{line}"
    );
    assert!(
        !proxy.state.listeners()[0].access_log(),
        "applied from the file"
    );
    let line = &report.listeners_not_applied[1];
    assert!(
        line.contains("mcproxyctl listeners add 127.0.0.4:8443 --proxy-protocol"),
        "{line}"
    );
    assert_eq!(
        proxy.state.proxy().workers,
        0,
        "workers changed at run time"
    );

    let lasted = silent_client_lasts(proxy.addr()).await;
    assert!(
        lasted >= Duration::from_millis(250) && lasted < Duration::from_secs(5),
        "a silent client was reset after {lasted:?}"
    );
    // The certificate part still ran, and served connections are unaffected.
    assert!(report.routes.is_empty(), "{report:?}");
    round_trip(proxy.addr(), &pki).await.unwrap();
}
