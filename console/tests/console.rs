//! The terminal console: views rendered on ratatui's TestBackend at 80x24 and 120x40, and the
//! whole console driven by injected keys against a real daemon and a real backend.

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mc_proxy_shared::client::{
    Connection, ConnectionList, Event, ListenerStatus, RouteEntry, RouteStats, Status, TimedEvent,
};
use mc_proxy_shared::{BackendProtocol, FirewallRule, FirewallRuleKind, Mode, Route};
use mc_proxy_tests::*;
use mcproxyctl::tui::app::{App, DaemonMsg, Screen};
use mcproxyctl::tui::{Console, Input, link, ui};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::Color;

fn screen(terminal: &Terminal<TestBackend>) -> String {
    let buffer = terminal.backend().buffer();
    let width = usize::from(buffer.area.width);
    buffer
        .content()
        .chunks(width)
        .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| ui::render(app, f)).unwrap();
    screen(&terminal)
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

/// A console state with two listeners, an L4 and an L7 route with traffic, and events.
fn busy_app() -> App {
    let mut app = App::new();
    let route = |hostname: &str, mode, send_proxy_protocol| Route {
        hostname: hostname.into(),
        backends: vec![mc_proxy_shared::RouteBackend::new("10.0.0.5:9443")],
        mode,
        send_proxy_protocol,
        ..Route::default()
    };
    let stats = |total, bytes_in, bytes_out, requests, errors| RouteStats {
        active_connections: 1,
        total_connections: total,
        bytes_in,
        bytes_out,
        requests,
        responses: [0, requests - errors, 0, 0, errors],
        ..RouteStats::default()
    };
    let listeners = vec![
        ListenerStatus {
            addr: "127.0.0.1:8443".into(),
            proxy_protocol: true,
            route_count: 2,
            active_connections: 2,
            accepted: 57,
            resets: 3,
            blocked: 1,
            ..ListenerStatus::default()
        },
        ListenerStatus {
            addr: "[::]:443".into(),
            ..ListenerStatus::default()
        },
    ];
    let entries = |a: RouteStats, b: RouteStats| {
        vec![
            RouteEntry {
                not_served: None,
                listener: "127.0.0.1:8443".into(),
                route: route("app.test", Mode::L4, true),
                stats: a,
                certificate: None,
            },
            RouteEntry {
                not_served: None,
                listener: "127.0.0.1:8443".into(),
                route: route("web.test", Mode::L7, false),
                stats: b,
                certificate: None,
            },
        ]
    };
    app.on_daemon(DaemonMsg::Snapshot {
        status: Status {
            version: "9.9.9".into(),
            uptime: Duration::from_secs(3 * 3600 + 25 * 60),
            listeners: listeners.clone(),
            active_connections: 2,
            total_connections: 57,
            firewall_rules: 0,
            backends: vec![],
            cluster: None,
            pid: None,
        },
        routes: entries(stats(10, 1000, 2000, 0, 0), stats(40, 0, 0, 100, 0)),
        rules: vec![],
    });
    let t0 = Instant::now();
    let ev = |event| TimedEvent {
        timestamp_ms: 45_296_000, // 12:34:56
        event,
    };
    // Two snapshots a second apart: 2 KiB/s in, 4 KiB/s out, 8 requests/s with 3 5xx.
    for (i, (a, b)) in [
        (stats(11, 1000, 2000, 0, 0), stats(41, 0, 0, 100, 0)),
        (stats(12, 3048, 6096, 0, 0), stats(42, 0, 0, 108, 3)),
    ]
    .into_iter()
    .enumerate()
    {
        app.on_event(
            ev(Event::Stats {
                listeners: listeners.clone(),
                routes: entries(a, b),
                backends: vec![],
                cluster: None,
            }),
            t0 + Duration::from_secs(i as u64),
        );
    }
    app.on_event(
        ev(Event::ConnectionOpened {
            id: 41,
            listener: "127.0.0.1:8443".into(),
            client: "203.0.113.9:5555".into(),
            hostname: "app.test".into(),
            route: "app.test".into(),
            mode: mc_proxy_shared::Mode::L4,
            backend: "10.0.0.5:9443".into(),
        }),
        t0,
    );
    app.on_event(
        ev(Event::ConnectionClosed {
            id: 41,
            listener: "127.0.0.1:8443".into(),
            client: "203.0.113.9:5555".into(),
            hostname: "app.test".into(),
            route: "app.test".into(),
            mode: Some(mc_proxy_shared::Mode::L4),
            backend: "10.0.0.5:9443".into(),
            bytes_in: 2048,
            bytes_out: 4096,
            duration_ms: 12,
            outcome: mc_proxy_shared::Outcome::Closed(mc_proxy_shared::CloseReason::Closed),
            error: String::new(),
        }),
        t0,
    );
    app.on_event(
        ev(Event::ConnectionBlocked {
            listener: "127.0.0.1:8443".into(),
            client: "198.51.100.7:1".into(),
            reason: mc_proxy_shared::BlockedReason::Firewall,
        }),
        t0,
    );
    app
}

#[test]
fn main_view_fits_80x24_with_listeners_routes_counters_and_events() {
    let app = busy_app();
    let s = render(&app, 80, 24);
    for needle in [
        "mc-proxy 9.9.9",
        "up 3h25m",
        "connected",
        "127.0.0.1:8443",
        "PROXY",
        "57",
        "[::]:443",
        "app.test",
        "web.test",
        "l7",
        "1/12",
        "10.0.0.5:9443",
        "2.0K/s",
        "4.0K/s",
        "8.0/s",
        "38%",
        "traffic, last",
        "close #41",
        "in 2.0K out 4.0K 12ms closed",
        "block 198.51.100.7:1 (firewall)",
        "a add",
        "? help",
    ] {
        assert!(s.contains(needle), "missing {needle:?} in:\n{s}");
    }
    assert_eq!(s.lines().count(), 24);
    // 80x24 gives the routes the room and shows the last two events; 120x40 shows all three.
    let big = render(&app, 120, 40);
    assert!(
        big.contains("12:34:56 open  #41 203.0.113.9:5555 app.test"),
        "{big}"
    );
}

#[test]
fn a_cluster_nodes_status_line_says_how_its_store_link_is_at_80_columns() {
    // Started for a context (`mcproxyctl --context edge-2 console`): named first.
    let mut app = busy_app().with_context(Some("edge-2".into()));
    let link = |state: &str, applied: i64, store: i64| mc_proxy_shared::client::ClusterLink {
        node: "edge-a".into(),
        endpoints: vec!["http://10.0.0.1:2379".into()],
        prefix: "/mc-proxy/default".into(),
        state: state.into(),
        since_ms: 45_296_000, // 12:34:56
        applied_revision: applied,
        store_revision: store,
        last_error: String::new(),
        drift_repaired: 0,
    };
    for (cluster, shown) in [
        (link("connected", 42, 42), "cluster ok |"),
        (link("connected", 40, 43), "cluster behind 3 |"),
        (
            link("disconnected", 42, 42),
            "cluster DOWN since 12:34:56 |",
        ),
    ] {
        app.on_event(
            TimedEvent {
                timestamp_ms: 0,
                event: Event::Stats {
                    listeners: app.data().listeners.clone(),
                    routes: vec![],
                    backends: vec![],
                    cluster: Some(cluster),
                },
            },
            Instant::now(),
        );
        let s = render(&app, 80, 24);
        let status = s.lines().next().unwrap();
        assert!(
            status.starts_with(" [edge-2] mc-proxy 9.9.9 |"),
            "{status:?}"
        );
        assert!(status.contains(shown), "{shown:?} in {status:?}");
        // The open count is whole after it, whatever the link says.
        assert!(status.contains("| 2 open |"), "{status:?}");
    }
}

#[test]
fn a_larger_terminal_shows_the_same_and_more_log() {
    let mut app = busy_app();
    for i in 0..30 {
        app.on_event(
            TimedEvent {
                timestamp_ms: 0,
                event: Event::Lagged { dropped: i },
            },
            Instant::now(),
        );
    }
    let small = render(&app, 80, 24);
    let big = render(&app, 120, 40);
    assert!(
        big.contains("10.0.0.5:9443") && big.contains("web.test"),
        "{big}"
    );
    let lines = |s: &str| s.lines().filter(|l| l.contains("missed")).count();
    assert!(lines(&big) > lines(&small), "{big}");
}

#[test]
fn too_small_a_terminal_says_so() {
    let s = render(&busy_app(), 50, 10);
    assert!(s.contains("terminal too small: 50x10"), "{s}");
}

#[test]
fn form_shows_l7_fields_only_in_l7_and_errors_inline() {
    let mut app = busy_app();
    app.on_key(key(KeyCode::Char('a')));
    let s = render(&app, 80, 24);
    assert!(s.contains("add route to 127.0.0.1:8443"), "{s}");
    assert!(s.contains("hostname") && s.contains("send_proxy"), "{s}");
    assert!(!s.contains("tls_cert"), "{s}");
    app.on_key(key(KeyCode::Tab));
    app.on_key(key(KeyCode::Tab));
    app.on_key(key(KeyCode::Char(' ')));
    let s = render(&app, 80, 24);
    assert!(
        s.contains("tls_cert") && s.contains("tls_key") && s.contains("backend_tls"),
        "{s}"
    );
    assert!(
        s.contains("backend_proto h2 (h2c, prior knowledge)  [space: http1]"),
        "{s}"
    );
    // With TLS to the backend the same choice reads differently; space steps on.
    for _ in 0..3 {
        app.on_key(key(KeyCode::Tab));
    }
    app.on_key(key(KeyCode::Char(' ')));
    app.on_key(key(KeyCode::Tab));
    app.on_key(key(KeyCode::Char(' ')));
    app.on_key(key(KeyCode::Char(' ')));
    let s = render(&app, 80, 24);
    assert!(
        s.contains("backend_proto auto (ALPN picks h2 or http/1.1)  [space: h2]"),
        "{s}"
    );
    app.on_key(key(KeyCode::Enter));
    app.on_daemon(DaemonMsg::ActionDone(Err(
        "mode l7 needs tls_cert (a PEM certificate chain)".into(),
    )));
    let s = render(&app, 80, 24);
    assert!(s.contains("error: mode l7 needs tls_cert"), "{s}");
}

#[test]
fn route_details_show_the_backend_protocol_of_l7_routes() {
    let mut app = app_with(&[
        ("app.test", "127.0.0.1:9443", Mode::L4),
        ("web.test", "127.0.0.1:9080", Mode::L7),
    ]);
    app.on_event(
        TimedEvent {
            timestamp_ms: 0,
            event: Event::RouteChanged {
                listener: "127.0.0.1:8443".into(),
                action: mc_proxy_shared::ChangeAction::Updated,
                route: Route {
                    hostname: "web.test".into(),
                    backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9080")],
                    mode: Mode::L7,
                    tls_cert: "/c.pem".into(),
                    tls_key: "/c.key".into(),
                    backend_tls: true,
                    backend_protocol: BackendProtocol::Http1,
                    ..Route::default()
                },
                previous_hostname: "web.test".into(),
                origin: None,
            },
        },
        Instant::now(),
    );
    app.on_key(key(KeyCode::Char('j')));
    app.on_key(key(KeyCode::Enter));
    let s = render(&app, 80, 24);
    assert!(s.contains("route web.test"), "{s}");
    assert!(
        s.contains("backend_proto  http1 (HTTP/1.1 over TLS)"),
        "{s}"
    );
    // An L4 route speaks no HTTP to its backend: no such line.
    app.on_key(key(KeyCode::Esc));
    app.on_key(key(KeyCode::Char('k')));
    app.on_key(key(KeyCode::Enter));
    let s = render(&app, 80, 24);
    assert!(s.contains("route app.test"), "{s}");
    assert!(!s.contains("backend_proto"), "{s}");
}

#[test]
fn help_firewall_filter_and_reconnecting_views() {
    let mut app = busy_app();
    app.on_key(key(KeyCode::Char('?')));
    let s = render(&app, 80, 24);
    assert!(
        s.contains(" keys ") && s.contains("new hostname filter"),
        "{s}"
    );
    app.on_key(key(KeyCode::Esc));

    app.on_key(key(KeyCode::Char('f')));
    let s = render(&app, 80, 24);
    assert!(
        s.contains(" firewall ") && s.contains("nobody is blocked"),
        "{s}"
    );
    app.on_key(key(KeyCode::Esc));

    app.on_key(key(KeyCode::Char('/')));
    for c in "web".chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
    let s = render(&app, 80, 24);
    assert!(s.contains("filter: web_"), "{s}");
    assert!(s.contains("web.test") && !s.contains("app.test  "), "{s}");
    app.on_key(key(KeyCode::Esc));

    app.on_daemon(DaemonMsg::Disconnected("connection refused".into()));
    let s = render(&app, 80, 24);
    assert!(s.contains("reconnecting (connection refused)"), "{s}");
    // The last known state stays on screen.
    assert!(s.contains("app.test"), "{s}");
}

/// A console with one listener and the given routes (hostname, backend, mode).
fn app_with(routes: &[(&str, &str, Mode)]) -> App {
    let mut app = App::new();
    let listener = ListenerStatus {
        addr: "127.0.0.1:8443".into(),
        route_count: routes.len() as u32,
        ..ListenerStatus::default()
    };
    app.on_daemon(DaemonMsg::Snapshot {
        status: Status {
            version: "9.9.9".into(),
            uptime: Duration::from_secs(60),
            listeners: vec![listener],
            active_connections: 0,
            total_connections: 0,
            firewall_rules: 0,
            backends: vec![],
            cluster: None,
            pid: None,
        },
        routes: routes
            .iter()
            .map(|(hostname, backend, mode)| RouteEntry {
                not_served: None,
                certificate: None,
                listener: "127.0.0.1:8443".into(),
                route: Route {
                    hostname: (*hostname).into(),
                    backends: vec![mc_proxy_shared::RouteBackend::new(*backend)],
                    mode: *mode,
                    tls_cert: "/etc/mc-proxy/certs/a-certificate-with-a-long-path.pem".into(),
                    tls_key: "/etc/mc-proxy/certs/a-certificate-with-a-long-path.key".into(),
                    ..Route::default()
                },
                stats: RouteStats::default(),
            })
            .collect(),
        rules: vec![],
    });
    app
}

/// The screen line showing `hostname`'s row (found by its first label).
fn row_of<'a>(s: &'a str, first_label: &str) -> &'a str {
    s.lines()
        .find(|l| l.contains(first_label) && !l.contains("traffic") && !l.contains(" routes of "))
        .unwrap_or_else(|| panic!("no row for {first_label} in:\n{s}"))
}

/// `value` is on the row in full, or elided with `…` around the part that tells it apart.
fn shown_or_marked(row: &str, value: &str, kept: &str) -> bool {
    row.contains(value) || (row.contains('…') && row.contains(kept))
}

#[test]
fn backends_that_differ_in_the_last_port_digit_never_look_the_same() {
    let long = "svc-with-a-rather-long-first-label.eu-west-1.internal.example.com";
    for (w, h) in [(60, 20), (80, 24), (120, 40)] {
        let app = app_with(&[
            ("a1.test", "127.0.0.1:38943", Mode::L4),
            ("a2.test", "127.0.0.1:38944", Mode::L4),
            (
                long,
                "backend-host-with-a-long-name.internal.example.com:38945",
                Mode::L7,
            ),
        ]);
        let s = render(&app, w, h);
        let a = row_of(&s, "a1.test");
        let b = row_of(&s, "a2.test");
        assert!(
            shown_or_marked(a, "127.0.0.1:38943", ":38943"),
            "{w}x{h}:\n{s}"
        );
        assert!(
            shown_or_marked(b, "127.0.0.1:38944", ":38944"),
            "{w}x{h}:\n{s}"
        );
        assert_ne!(a.replace("a1", "a2"), b, "{w}x{h}:\n{s}");
        // The long ones are cut, visibly, keeping the first label and the port.
        let c = row_of(&s, "svc-with");
        assert!(c.contains('…'), "{w}x{h}:\n{s}");
        assert!(c.contains(":38945"), "port lost at {w}x{h}:\n{s}");
        assert!(
            !s.contains("38943 ") || s.contains("127.0.0.1:38943"),
            "{s}"
        );
    }
}

#[test]
fn an_edited_backend_shows_its_new_value() {
    let mut app = app_with(&[("edit.test", "127.0.0.1:38080", Mode::L4)]);
    app.on_event(
        TimedEvent {
            timestamp_ms: 0,
            event: Event::RouteChanged {
                listener: "127.0.0.1:8443".into(),
                action: mc_proxy_shared::ChangeAction::Updated,
                route: Route {
                    hostname: "edit.test".into(),
                    backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:38081")],
                    ..Route::default()
                },
                previous_hostname: "edit.test".into(),
                origin: None,
            },
        },
        Instant::now(),
    );
    for (w, h) in [(60, 20), (80, 24), (120, 40)] {
        let s = render(&app, w, h);
        let row = row_of(&s, "edit.test");
        assert!(shown_or_marked(row, "127.0.0.1:38081", ":38081"), "{s}");
        assert!(!row.contains("38080"), "{s}");
    }
}

#[test]
fn enter_shows_every_field_of_the_route_in_full() {
    let long = "svc-with-a-rather-long-first-label.eu-west-1.internal.example.com";
    let mut app = app_with(&[(long, "127.0.0.1:38943", Mode::L7)]);
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.screen(), Screen::RouteDetail);
    let s = render(&app, 120, 40);
    for needle in [
        long,
        "127.0.0.1:38943",
        "/etc/mc-proxy/certs/a-certificate-with-a-long-path.pem",
        "/etc/mc-proxy/certs/a-certificate-with-a-long-path.key",
        "latency",
    ] {
        assert!(s.contains(needle), "missing {needle:?}:\n{s}");
    }
    // At 80 columns long values wrap instead of being cut.
    let s = render(&app, 80, 24);
    let flat: String = s
        .lines()
        .map(|l| l.trim_matches(|c| c == '│' || c == ' '))
        .collect();
    assert!(flat.contains("a-certificate-with-a-long-path.pem"), "{s}");
    // Enter on a listener shows the listener.
    app.on_key(key(KeyCode::Esc));
    app.on_key(key(KeyCode::Tab));
    app.on_key(key(KeyCode::Enter));
    let s = render(&app, 80, 24);
    assert!(
        s.contains("listener 127.0.0.1:8443") && s.contains("trusted from"),
        "{s}"
    );
}

/// The foreground colour of the first cell of `hostname`'s row.
fn row_colour(app: &App, hostname: &str) -> Color {
    let mut terminal = Terminal::new(TestBackend::new(120, 40)).unwrap();
    terminal.draw(|f| ui::render(app, f)).unwrap();
    let buffer = terminal.backend().buffer();
    let w = buffer.area.width;
    for y in 0..buffer.area.height {
        let line: String = (0..w).map(|x| buffer[(x, y)].symbol().to_owned()).collect();
        if let Some(col) = line.find(hostname) {
            if line.contains("traffic") {
                continue;
            }
            let x = line[..col].chars().count() as u16;
            return buffer[(x, y)].fg;
        }
    }
    panic!("no row for {hostname}");
}

fn l7_stats(requests: u64, errors: u64) -> RouteStats {
    RouteStats {
        total_connections: 1,
        requests,
        responses: [0, requests - errors, 0, 0, errors],
        ..RouteStats::default()
    }
}

fn stats_at(app: &mut App, at: Instant, routes: &[(&str, RouteStats)]) {
    let listeners = app.data().listeners.clone();
    app.on_event(
        TimedEvent {
            timestamp_ms: 0,
            event: Event::Stats {
                listeners,
                backends: vec![],
                cluster: None,
                routes: routes
                    .iter()
                    .map(|(h, stats)| RouteEntry {
                        not_served: None,
                        listener: "127.0.0.1:8443".into(),
                        route: Route {
                            hostname: (*h).into(),
                            backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9")],
                            mode: Mode::L7,
                            ..Route::default()
                        },
                        stats: stats.clone(),
                        certificate: None,
                    })
                    .collect(),
            },
        },
        at,
    );
}

#[test]
fn row_colour_comes_from_the_recent_error_share() {
    let mut app = app_with(&[
        ("old.test", "127.0.0.1:9", Mode::L7),
        ("burst.test", "127.0.0.1:9", Mode::L7),
        ("down.test", "127.0.0.1:9", Mode::L7),
    ]);
    let t0 = Instant::now() + Duration::from_secs(1);
    let at = |s: u64| t0 + Duration::from_secs(s);
    // An error burst on old.test, then a long quiet stretch of good requests.
    stats_at(&mut app, at(1), &[("old.test", l7_stats(10, 9))]);
    assert_eq!(
        row_colour(&app, "old.test"),
        Color::Red,
        "fresh: 9 of 10 failed"
    );
    for i in 2..30 {
        stats_at(&mut app, at(i), &[("old.test", l7_stats(i * 10, 9))]);
    }
    assert_eq!(
        row_colour(&app, "old.test"),
        Color::Reset,
        "an old error still colours"
    );

    // 20 % failing in the last seconds: warning; 90 %: error.
    stats_at(
        &mut app,
        at(30),
        &[
            ("burst.test", l7_stats(0, 0)),
            ("down.test", l7_stats(0, 0)),
        ],
    );
    stats_at(
        &mut app,
        at(31),
        &[
            ("burst.test", l7_stats(100, 20)),
            ("down.test", l7_stats(100, 90)),
        ],
    );
    assert_eq!(row_colour(&app, "burst.test"), Color::Yellow);
    assert_eq!(row_colour(&app, "down.test"), Color::Red);
    let s = render(&app, 120, 40);
    assert!(row_of(&s, "burst.test").contains("20%"), "{s}");
    assert!(row_of(&s, "down.test").contains("90%"), "{s}");
}

#[test]
fn firewall_delete_asks_on_screen() {
    let mut app = app_with(&[]);
    app.on_key(key(KeyCode::Char('f')));
    app.on_event(
        TimedEvent {
            timestamp_ms: 0,
            event: Event::FirewallChanged {
                action: mc_proxy_shared::ChangeAction::Added,
                rule: FirewallRule {
                    kind: FirewallRuleKind::Cidr,
                    value: "10.0.0.0/8".into(),
                },
                origin: None,
            },
        },
        Instant::now(),
    );
    assert_eq!(app.on_key(key(KeyCode::Char('d'))), None);
    let s = render(&app, 80, 24);
    assert!(
        s.contains("Unblock cidr 10.0.0.0/8?") && s.contains("y: unblock"),
        "{s}"
    );
}

#[test]
fn connections_view_lists_open_connections_and_read_only_hides_editing_keys() {
    let mut app = app_with(&[("a.test", "127.0.0.1:9", Mode::L4)]);
    assert!(render(&app, 80, 24).contains("a add"));
    assert_eq!(
        app.on_key(key(KeyCode::Char('c'))),
        Some(mcproxyctl::tui::app::Action::Watch(
            mcproxyctl::tui::app::View::Connections
        ))
    );
    let conn = |id, client: &str, bytes_in| Connection {
        id,
        listener: "127.0.0.1:8443".into(),
        client: client.into(),
        hostname: "a.test".into(),
        route: "a.test".into(),
        mode: mc_proxy_shared::Mode::L4,
        backend: "127.0.0.1:9".into(),
        age: Duration::from_secs(75),
        bytes_in,
        bytes_out: 2048,
    };
    app.on_daemon(DaemonMsg::Connections(ConnectionList {
        connections: vec![
            conn(7, "203.0.113.9:38943", 1000),
            conn(8, "203.0.113.9:38944", 5 << 20),
        ],
        total: 3,
    }));
    for (w, h) in [(60, 20), (80, 24), (120, 40)] {
        let s = render(&app, w, h);
        assert!(
            s.contains("connections [1/2]") && s.contains("(first 2 of 3)"),
            "{s}"
        );
        assert!(shown_or_marked(&s, "203.0.113.9:38943", ":38943"), "{s}");
        assert!(shown_or_marked(&s, "203.0.113.9:38944", ":38944"), "{s}");
        assert!(s.contains("5.0M") && s.contains("75s"), "{s}");
    }
    // Sorting by bytes moves the busy one up; the selection stays on its connection.
    app.on_key(key(KeyCode::Char('s')));
    assert_eq!(app.conns().selected().map(|c| c.id), Some(7));
    assert_eq!(app.conns().sel.index(), 1);
    app.on_key(key(KeyCode::Esc));

    let mut ro = App::read_only();
    ro.on_daemon(DaemonMsg::Snapshot {
        status: Status {
            version: "9.9.9".into(),
            uptime: Duration::ZERO,
            listeners: app.data().listeners.clone(),
            active_connections: 0,
            total_connections: 0,
            firewall_rules: 0,
            backends: vec![],
            cluster: None,
            pid: None,
        },
        routes: vec![],
        rules: vec![],
    });
    let s = render(&ro, 80, 24);
    assert!(
        s.contains("read-only") && !s.contains("a add") && !s.contains("press a"),
        "{s}"
    );
    ro.on_key(key(KeyCode::Char('?')));
    let s = render(&ro, 80, 24);
    assert!(!s.contains("add a route"), "{s}");
}

#[test]
fn numbers_keep_their_unit_under_load() {
    let mut app = app_with(&[("busy.test", "127.0.0.1:9", Mode::L7)]);
    let t0 = Instant::now() + Duration::from_secs(1);
    let stats = |n: u64| RouteStats {
        total_connections: n,
        active_connections: 1234,
        bytes_in: n * 7000,
        bytes_out: n * 90_000,
        requests: n * 2000,
        responses: [0, n * 1990, 0, 0, n * 10],
        ..RouteStats::default()
    };
    // Past the window, so the rate is exactly 2M requests/s.
    for i in 1..16 {
        stats_at(
            &mut app,
            t0 + Duration::from_secs(i),
            &[("busy.test", stats(i * 1000))],
        );
    }
    for (w, h) in [(60, 20), (80, 24), (120, 40)] {
        let s = render(&app, w, h);
        let row = row_of(&s, "busy.test");
        assert!(row.contains("0.5%"), "5xx share lost at {w}x{h}:\n{s}");
        assert!(row.contains("/s"), "{s}");
        if w >= 80 {
            assert!(row.contains("2.0M/s"), "request rate at {w}x{h}:\n{s}");
        }
    }
}

/// Steps the console until its screen contains `needle` (10 s at most).
async fn until(
    console: &mut Console<TestBackend>,
    inputs: &mut tokio::sync::mpsc::UnboundedReceiver<Input>,
    msgs: &mut tokio::sync::mpsc::Receiver<DaemonMsg>,
    needle: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = screen(&console.terminal);
        if s.contains(needle) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {needle:?}; screen:\n{s}"
        );
        let step = tokio::time::timeout(Duration::from_millis(200), console.step(inputs, msgs));
        if let Ok(res) = step.await {
            assert!(res.unwrap(), "console quit");
        }
    }
}

#[tokio::test]
async fn add_a_route_see_its_traffic_and_delete_it_with_keys_only() {
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki, &["new.test"]).await;
    let proxy = Proxy::start("[[listeners]]\naddr = \"127.0.0.1:0\"").await;

    let (mut msgs, actions, link_task) = link::spawn(proxy.socket.clone(), Vec::new());
    let (keys, mut inputs) = tokio::sync::mpsc::unbounded_channel();
    let terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
    let mut console = Console::new(terminal, actions);
    console.draw().unwrap();
    until(&mut console, &mut inputs, &mut msgs, "connected").await;
    until(&mut console, &mut inputs, &mut msgs, "no routes: press a").await;

    // a, type hostname, tab, type backend, enter.
    let type_keys = |text: &str| {
        for c in text.chars() {
            keys.send(Input::Key(key(KeyCode::Char(c)))).unwrap();
        }
    };
    keys.send(Input::Key(key(KeyCode::Char('a')))).unwrap();
    type_keys("new.test");
    keys.send(Input::Key(key(KeyCode::Tab))).unwrap();
    type_keys(&backend.addr.to_string());
    keys.send(Input::Key(key(KeyCode::Enter))).unwrap();
    until(&mut console, &mut inputs, &mut msgs, "added route new.test").await;
    until(&mut console, &mut inputs, &mut msgs, "route added new.test").await;

    // Traffic through the new route: counters and events on screen.
    let mut c = tls_connect(proxy.addr(), "new.test", pki.client_config())
        .await
        .unwrap();
    send_and_finish(&mut c, &[0u8; 3000]).await.unwrap();
    until(&mut console, &mut inputs, &mut msgs, "open  #").await;
    let s = until(&mut console, &mut inputs, &mut msgs, "0/1").await;
    assert!(s.contains("new.test"), "{s}");
    until(&mut console, &mut inputs, &mut msgs, "closed").await;

    // Delete with confirmation.
    keys.send(Input::Key(key(KeyCode::Char('d')))).unwrap();
    until(
        &mut console,
        &mut inputs,
        &mut msgs,
        "Delete route new.test",
    )
    .await;
    keys.send(Input::Key(key(KeyCode::Char('y')))).unwrap();
    until(
        &mut console,
        &mut inputs,
        &mut msgs,
        "deleted route new.test",
    )
    .await;
    let s = until(&mut console, &mut inputs, &mut msgs, "no routes: press a").await;
    assert!(s.contains("route removed new.test"), "{s}");

    // q quits.
    keys.send(Input::Key(key(KeyCode::Char('q')))).unwrap();
    assert!(!console.step(&mut inputs, &mut msgs).await.unwrap());
    link_task.abort();
}

#[tokio::test]
async fn console_shows_reconnecting_and_resumes_when_the_daemon_returns() {
    let proxy = Proxy::start(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[[listeners.routes]]\nhostname = \"keep.test\"\nbackend = \"127.0.0.1:9\"",
    )
    .await;
    let (mut msgs, actions, link_task) = link::spawn(proxy.socket.clone(), Vec::new());
    let (_keys, mut inputs) = tokio::sync::mpsc::unbounded_channel();
    let mut console = Console::new(Terminal::new(TestBackend::new(80, 24)).unwrap(), actions);
    until(&mut console, &mut inputs, &mut msgs, "keep.test").await;

    let dir = proxy.stop_and_keep_dir().await;
    until(&mut console, &mut inputs, &mut msgs, "reconnecting").await;

    let _proxy = Proxy::start_in(dir, "[[listeners]]\naddr = \"127.0.0.1:0\"").await;
    let s = until(&mut console, &mut inputs, &mut msgs, "| connected").await;
    assert!(s.contains("keep.test"), "{s}");
    link_task.abort();
}

/// The cell of the first occurrence of `needle` on screen, as (x, y).
fn find_cell(terminal: &Terminal<TestBackend>, needle: &str) -> Option<(u16, u16)> {
    let s = screen(terminal);
    s.lines().enumerate().find_map(|(y, line)| {
        line.find(needle)
            .map(|i| (line[..i].chars().count() as u16, y as u16))
    })
}

#[test]
fn a_routes_backends_show_their_state_and_traffic_and_follow_state_changes() {
    use mc_proxy_shared::{AdminState, BackendState, MemberStats, RouteBackend};
    let mut app = app_with(&[("pool.test", "127.0.0.1:38943", Mode::L4)]);
    let member = |address: &str, admin, state, active, failures| MemberStats {
        address: address.into(),
        weight: 1,
        admin,
        state,
        active,
        total: 100 + active,
        failures,
        ejections: u64::from(state == BackendState::Ejected),
        reason: String::new(),
        // A daemon from before the field: no "for ..." shown.
        ..MemberStats::default()
    };
    let route = Route {
        hostname: "pool.test".into(),
        backends: vec![
            RouteBackend::new("127.0.0.1:38943"),
            RouteBackend {
                state: AdminState::Draining,
                ..RouteBackend::new("127.0.0.1:38944")
            },
            RouteBackend::new("127.0.0.1:38945").with_weight(5),
        ],
        ..Route::default()
    };
    app.on_event(
        TimedEvent {
            timestamp_ms: 0,
            event: Event::RouteChanged {
                listener: "127.0.0.1:8443".into(),
                action: mc_proxy_shared::ChangeAction::Updated,
                route: route.clone(),
                previous_hostname: "pool.test".into(),
                origin: None,
            },
        },
        Instant::now(),
    );
    app.on_event(
        TimedEvent {
            timestamp_ms: 1000,
            event: Event::Stats {
                listeners: vec![ListenerStatus {
                    addr: "127.0.0.1:8443".into(),
                    route_count: 1,
                    ..ListenerStatus::default()
                }],
                routes: vec![RouteEntry {
                    not_served: None,
                    listener: "127.0.0.1:8443".into(),
                    route: route.clone(),
                    stats: RouteStats {
                        members: vec![
                            member(
                                "127.0.0.1:38943",
                                AdminState::Enabled,
                                BackendState::Up,
                                2,
                                0,
                            ),
                            member(
                                "127.0.0.1:38944",
                                AdminState::Draining,
                                BackendState::Draining,
                                1,
                                0,
                            ),
                            member(
                                "127.0.0.1:38945",
                                AdminState::Enabled,
                                BackendState::Ejected,
                                0,
                                7,
                            ),
                        ],
                        ..RouteStats::default()
                    },
                    certificate: None,
                }],
                backends: vec![],
                cluster: None,
            },
        },
        Instant::now(),
    );
    // The table: the first member and how many more, never a cut list.
    let s = render(&app, 80, 24);
    let row = row_of(&s, "pool.test");
    assert!(row.contains("127.0.0.1:38943 +2"), "{s}");

    // The detail: every member in full with weight, state and traffic, coloured by state.
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.screen(), Screen::RouteDetail);
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal.draw(|f| ui::render(&app, f)).unwrap();
    let s = screen(&terminal);
    let line = |address: &str| {
        s.lines()
            .find(|l| l.contains(address) && l.contains(" w"))
            .unwrap_or_else(|| panic!("no member line for {address}:\n{s}"))
            .to_owned()
    };
    let first = line("127.0.0.1:38943");
    assert!(
        first.contains("w1  up") && first.contains("2/102 conns"),
        "{s}"
    );
    let second = line("127.0.0.1:38944");
    assert!(
        second.contains("draining") && second.contains("1/101 conns"),
        "{s}"
    );
    let third = line("127.0.0.1:38945");
    assert!(
        third.contains("w5  ejected") && third.contains("7 fail") && third.contains("1 eject"),
        "{s}"
    );
    let colour = |needle: &str| {
        let (x, y) = find_cell(&terminal, needle).unwrap_or_else(|| panic!("{needle}:\n{s}"));
        terminal.backend().buffer()[(x, y)].fg
    };
    assert_eq!(colour("ejected"), Color::Magenta);
    assert_eq!(colour("draining"), Color::Yellow);
    // A state change arrives as an event: the detail says so at once.
    app.on_event(
        TimedEvent {
            timestamp_ms: 2000,
            event: Event::BackendChanged {
                listener: "127.0.0.1:8443".into(),
                route: "pool.test".into(),
                member: MemberStats {
                    reason: "3 failed checks".into(),
                    ..member(
                        "127.0.0.1:38943",
                        AdminState::Enabled,
                        BackendState::Down,
                        0,
                        3,
                    )
                },
                origin: None,
            },
        },
        Instant::now(),
    );
    let s = render(&app, 80, 24);
    let first = s
        .lines()
        .find(|l| l.contains("127.0.0.1:38943") && l.contains(" w"))
        .unwrap()
        .to_owned();
    assert!(
        first.contains("down") && first.contains("(3 failed checks)"),
        "{s}"
    );
}

/// Issue 28: a stored route that is not served is listed red with `not served` in place of its
/// backend and no figures, its detail says why in full, and once a reload serves it (the next
/// stats snapshot says so) it is an ordinary row again.
#[test]
fn a_route_not_served_is_red_with_its_reason_in_the_detail() {
    let mut app = app_with(&[
        ("a.test", "127.0.0.1:9", Mode::L7),
        ("b.test", "127.0.0.1:9", Mode::L7),
    ]);
    let reason = "tls_cert /etc/mc-proxy/certs/b.test.pem: no certificate found in the PEM \
                  file (is it a certificate?)";
    let snapshot = |app: &mut App, not_served: Option<&str>, at: Instant| {
        let listeners = app.data().listeners.clone();
        let entry = |h: &str, not_served: Option<&str>| RouteEntry {
            not_served: not_served.map(str::to_owned),
            listener: "127.0.0.1:8443".into(),
            route: Route {
                hostname: h.into(),
                backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9")],
                mode: Mode::L7,
                ..Route::default()
            },
            stats: RouteStats::default(),
            certificate: None,
        };
        app.on_event(
            TimedEvent {
                timestamp_ms: 0,
                event: Event::Stats {
                    listeners,
                    backends: vec![],
                    cluster: None,
                    routes: vec![entry("a.test", None), entry("b.test", not_served)],
                },
            },
            at,
        );
    };
    let t0 = Instant::now();
    snapshot(&mut app, Some(reason), t0);

    let s = render(&app, 80, 24);
    let row = row_of(&s, "b.test");
    assert!(row.contains("not served"), "{s}");
    assert!(!row.contains("127.0.0.1:9"), "no backend shown: {s}");
    assert!(
        shown_or_marked(row_of(&s, "a.test"), "127.0.0.1:9", "127.0"),
        "{s}"
    );
    assert_eq!(row_colour(&app, "b.test"), Color::Red);
    assert_ne!(row_colour(&app, "a.test"), Color::Red);

    // The detail says why, in full (wrapped at 80 columns).
    app.on_key(key(KeyCode::Down));
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.screen(), Screen::RouteDetail);
    let s = render(&app, 80, 24);
    let flat: String = s
        .lines()
        .map(|l| l.trim_matches(|c| c == '│' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(flat.contains("not served: tls_cert"), "{s}");
    assert!(flat.contains("(is it a certificate?)"), "{s}");
    app.on_key(key(KeyCode::Esc));

    // Served again: an ordinary row.
    snapshot(&mut app, None, t0 + Duration::from_secs(1));
    let s = render(&app, 80, 24);
    assert!(!row_of(&s, "b.test").contains("not served"), "{s}");
    assert_ne!(row_colour(&app, "b.test"), Color::Red);
}

/// A console with one route, `pool.test`, whose set has `n` backends `10.0.0.1:8000`,
/// `10.0.0.1:8001`, ..., with the given admin states (the rest enabled), and its detail open.
fn pool_detail(n: u16, states: &[mc_proxy_shared::AdminState]) -> App {
    use mc_proxy_shared::RouteBackend;
    let mut app = app_with(&[("pool.test", "10.0.0.1:8000", Mode::L4)]);
    let route = Route {
        hostname: "pool.test".into(),
        backends: (0..n)
            .map(|i| RouteBackend {
                state: states.get(usize::from(i)).copied().unwrap_or_default(),
                ..RouteBackend::new(format!("10.0.0.1:{}", 8000 + i))
            })
            .collect(),
        ..Route::default()
    };
    app.on_event(
        TimedEvent {
            timestamp_ms: 0,
            event: Event::RouteChanged {
                listener: "127.0.0.1:8443".into(),
                action: mc_proxy_shared::ChangeAction::Updated,
                route,
                previous_hostname: "pool.test".into(),
                origin: None,
            },
        },
        Instant::now(),
    );
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.screen(), Screen::RouteDetail);
    app
}

/// The backend the detail shows selected (`> address`), if it is on screen.
fn selected_backend(s: &str) -> Option<String> {
    s.lines().find_map(|l| {
        let at = l.find("> 10.0.0.1:")?;
        Some(l[at + 2..].split_whitespace().next()?.to_owned())
    })
}

/// Issue 28: a route with 22 backends at 80x24 (and 60x16). The detail shows the part around
/// the selected backend, with a "more" line where rows are cut; every move keeps the selected
/// backend on screen; PageDown/PageUp/Home/End move within the detail, and `?` shows the
/// detail's keys and goes back to it.
#[test]
fn a_long_backend_list_scrolls_to_the_selection_with_more_markers() {
    let mut app = pool_detail(22, &[]);
    let s = render(&app, 80, 24);
    assert_eq!(
        selected_backend(&s).as_deref(),
        Some("10.0.0.1:8000"),
        "{s}"
    );
    assert!(
        s.contains("▼ ") && s.contains(" more"),
        "no cut marker:\n{s}"
    );
    assert!(!s.contains("10.0.0.1:8021"), "{s}");
    assert!(s.contains("[backend 1/22]"), "{s}");
    // Down one at a time to the last: the selection is always on screen.
    for i in 1..22 {
        app.on_key(key(KeyCode::Down));
        for (w, h) in [(80, 24), (60, 16)] {
            let s = render(&app, w, h);
            assert_eq!(
                selected_backend(&s),
                Some(format!("10.0.0.1:{}", 8000 + i)),
                "{w}x{h}:\n{s}"
            );
        }
    }
    let s = render(&app, 80, 24);
    assert!(
        s.contains("▲ ") && s.contains(" more"),
        "no cut marker above:\n{s}"
    );
    assert!(!s.contains("10.0.0.1:8000 "), "{s}");
    assert!(s.contains("[backend 22/22]"), "{s}");

    // Home, then PageDown: the detail stays open and shows the backend a page further.
    app.on_key(key(KeyCode::Home));
    let s = render(&app, 80, 24);
    assert_eq!(
        selected_backend(&s).as_deref(),
        Some("10.0.0.1:8000"),
        "{s}"
    );
    app.on_key(key(KeyCode::PageDown));
    assert_eq!(app.screen(), Screen::RouteDetail);
    let s = render(&app, 80, 24);
    assert!(
        s.contains("route pool.test"),
        "PageDown closed the detail:\n{s}"
    );
    assert_eq!(
        selected_backend(&s).as_deref(),
        Some("10.0.0.1:8010"),
        "{s}"
    );
    app.on_key(key(KeyCode::PageDown));
    app.on_key(key(KeyCode::PageDown));
    let s = render(&app, 80, 24);
    assert_eq!(
        selected_backend(&s).as_deref(),
        Some("10.0.0.1:8021"),
        "{s}"
    );
    app.on_key(key(KeyCode::PageUp));
    let s = render(&app, 80, 24);
    assert_eq!(
        selected_backend(&s).as_deref(),
        Some("10.0.0.1:8011"),
        "{s}"
    );
    app.on_key(key(KeyCode::End));
    let s = render(&app, 80, 24);
    assert_eq!(
        selected_backend(&s).as_deref(),
        Some("10.0.0.1:8021"),
        "{s}"
    );

    // `?` lists the detail's keys (not the routes view's), and any key goes back to it.
    assert!(s.contains("? keys"), "{s}");
    app.on_key(key(KeyCode::Char('?')));
    let s = render(&app, 80, 24);
    assert!(s.contains(" keys ") && s.contains("route detail"), "{s}");
    assert!(s.contains("disable the selected backend"), "{s}");
    assert!(!s.contains("new hostname filter"), "{s}");
    app.on_key(key(KeyCode::Esc));
    assert_eq!(app.screen(), Screen::RouteDetail);
    let s = render(&app, 80, 24);
    assert_eq!(
        selected_backend(&s).as_deref(),
        Some("10.0.0.1:8021"),
        "{s}"
    );
}

/// Issue 28: a backend's reason that wraps takes rows the box did not count; nothing is cut
/// without a mark, and the selected backend (with its reason) stays on screen.
#[test]
fn a_wrapping_reason_never_hides_rows_without_a_mark() {
    use mc_proxy_shared::{AdminState, BackendState, MemberStats};
    let mut app = pool_detail(6, &[]);
    let reason = "3 failed checks: connection refused by 10.0.0.1 while the backend was \
                  restarting after a deploy that took longer than the check interval allows";
    let members = (0..6)
        .map(|i| MemberStats {
            address: format!("10.0.0.1:{}", 8000 + i),
            weight: 1,
            admin: AdminState::Enabled,
            state: BackendState::Down,
            reason: reason.into(),
            ..MemberStats::default()
        })
        .collect();
    let route = app.route().unwrap().route.clone();
    app.on_event(
        TimedEvent {
            timestamp_ms: 0,
            event: Event::Stats {
                listeners: app.data().listeners.clone(),
                routes: vec![RouteEntry {
                    not_served: None,
                    listener: "127.0.0.1:8443".into(),
                    route,
                    stats: RouteStats {
                        members,
                        ..RouteStats::default()
                    },
                    certificate: None,
                }],
                backends: vec![],
                cluster: None,
            },
        },
        Instant::now(),
    );
    for (w, h) in [(80, 24), (60, 20)] {
        app.on_key(key(KeyCode::Home));
        let s = render(&app, w, h);
        // The last line of the content is the error share: either shown or marked cut.
        assert!(
            s.contains("errors ") || s.contains("▼ "),
            "rows cut without a mark at {w}x{h}:\n{s}"
        );
        app.on_key(key(KeyCode::End));
        let s = render(&app, w, h);
        assert_eq!(
            selected_backend(&s).as_deref(),
            Some("10.0.0.1:8005"),
            "{w}x{h}:\n{s}"
        );
        assert!(s.contains("▲ "), "{w}x{h}:\n{s}");
    }
}

/// Issue 28: `x` (and `w`) on the only enabled backend would leave the route with none: the
/// console asks first, and nothing is sent until `y`.
#[test]
fn disabling_the_last_enabled_backend_asks_first() {
    use mc_proxy_shared::AdminState;
    let mut app = pool_detail(2, &[AdminState::Enabled, AdminState::Disabled]);
    assert_eq!(app.on_key(key(KeyCode::Char('x'))), None, "sent at once");
    let s = render(&app, 80, 24);
    assert!(s.contains("Disable 10.0.0.1:8000 of pool.test?"), "{s}");
    assert!(
        s.contains("No other backend of this route is enabled"),
        "{s}"
    );
    assert!(s.contains("y: disable"), "{s}");
    // Any other key: nothing sent, back to the detail.
    assert_eq!(app.on_key(key(KeyCode::Char('n'))), None);
    assert_eq!(app.screen(), Screen::RouteDetail);
    let s = render(&app, 80, 24);
    assert!(!s.contains("Disable 10.0.0.1:8000"), "{s}");
    assert!(s.contains("route pool.test"), "{s}");
    // Draining it asks too; `y` sends.
    assert_eq!(app.on_key(key(KeyCode::Char('w'))), None);
    let s = render(&app, 80, 24);
    assert!(s.contains("Drain 10.0.0.1:8000 of pool.test?"), "{s}");
    let expect = |state| mcproxyctl::tui::app::Action::SetBackendState {
        listener: "127.0.0.1:8443".into(),
        hostname: "pool.test".into(),
        address: "10.0.0.1:8000".into(),
        state,
    };
    assert_eq!(
        app.on_key(key(KeyCode::Char('y'))),
        Some(expect(AdminState::Draining))
    );
    assert_eq!(app.screen(), Screen::RouteDetail);
    // With another backend enabled, `x` does not ask.
    let mut app = pool_detail(2, &[]);
    assert_eq!(
        app.on_key(key(KeyCode::Char('x'))),
        Some(expect(AdminState::Disabled))
    );
    let s = render(&app, 80, 24);
    assert!(!s.contains("Disable 10.0.0.1:8000 of"), "{s}");
}

/// Issue 28: the README promises the console stays usable at 60x16; the routes box had no
/// room for a single row there.
#[test]
fn the_route_list_shows_rows_at_60x16() {
    let app = app_with(&[
        ("a1.test", "127.0.0.1:38943", Mode::L4),
        ("a2.test", "127.0.0.1:38944", Mode::L4),
    ]);
    let s = render(&app, 60, 16);
    assert!(s.contains("routes of 127.0.0.1:8443"), "{s}");
    assert!(row_of(&s, "a1.test").contains("38943"), "{s}");
    assert!(row_of(&s, "a2.test").contains("38944"), "{s}");
    assert_eq!(s.lines().count(), 16);
}

/// The foreground colour of the first cell of `needle` on a `w`x`h` screen, on the first
/// line that contains it and `on_line`.
fn colour_of(app: &App, w: u16, h: u16, on_line: &str, needle: &str) -> Color {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| ui::render(app, f)).unwrap();
    let s = screen(&terminal);
    let (y, line) = s
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(on_line) && l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} on a line with {on_line:?}:\n{s}"));
    let x = line[..line.find(needle).unwrap()].chars().count() as u16;
    terminal.backend().buffer()[(x, y as u16)].fg
}

/// Issue 28: with the daemon gone the last figures stay, but grey, and a line says they are
/// old and since when, also over an open route detail at 80x24.
#[test]
fn without_the_daemon_the_figures_are_grey_and_the_screen_says_since_when() {
    let mut app = busy_app();
    let s = render(&app, 80, 24);
    assert!(!s.contains("daemon unreachable"), "{s}");
    assert_ne!(
        colour_of(&app, 80, 24, "app.test", "2.0K/s"),
        Color::DarkGray
    );
    assert_ne!(colour_of(&app, 80, 24, "2.0K/s", "1/12"), Color::DarkGray);

    app.on_daemon(DaemonMsg::Disconnected("connection refused".into()));
    let s = render(&app, 80, 24);
    assert!(
        s.contains("daemon unreachable: values from 12:34:56 UTC, not live"),
        "{s}"
    );
    // The last values are still there, in grey: rates, open/total, the error share.
    assert_eq!(
        colour_of(&app, 80, 24, "app.test", "2.0K/s"),
        Color::DarkGray
    );
    assert_eq!(colour_of(&app, 80, 24, "app.test", "1/12"), Color::DarkGray);
    assert_eq!(colour_of(&app, 80, 24, "web.test", "38%"), Color::DarkGray);
    // The hostname itself is not a figure: it keeps its colour.
    assert_ne!(
        colour_of(&app, 80, 24, "app.test", "app.test"),
        Color::DarkGray
    );
    // The status line's open count too.
    assert_eq!(
        colour_of(&app, 80, 24, "mc-proxy", "2 open"),
        Color::DarkGray
    );

    // A route detail covers the status line at 80x24: it says so itself, and greys its
    // counters.
    app.on_key(key(KeyCode::Down));
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.screen(), Screen::RouteDetail);
    let s = render(&app, 80, 24);
    assert!(s.contains("route web.test"), "{s}");
    assert!(s.contains("values from 12:34:56 UTC"), "{s}");
    assert_eq!(
        colour_of(&app, 80, 24, "connections", "open, 42 since start"),
        Color::DarkGray
    );

    // Back: the line goes and the figures are live again.
    app.on_key(key(KeyCode::Esc));
    let snapshot = busy_app();
    app.on_daemon(DaemonMsg::Snapshot {
        status: Status {
            version: "9.9.9".into(),
            uptime: Duration::from_secs(60),
            listeners: snapshot.data().listeners.clone(),
            active_connections: 0,
            total_connections: 0,
            firewall_rules: 0,
            backends: vec![],
            cluster: None,
            pid: None,
        },
        routes: vec![],
        rules: vec![],
    });
    let s = render(&app, 80, 24);
    assert!(!s.contains("daemon unreachable"), "{s}");
}

/// A three-member L4 pool on `127.0.0.1:8443` whose members are all up, and a one-backend
/// route beside it.
fn pool_app() -> App {
    use mc_proxy_shared::{AdminState, BackendState, MemberStats, RouteBackend};
    let mut app = app_with(&[("single.test", "127.0.0.1:38900", Mode::L4)]);
    let route = Route {
        hostname: "pool.test".into(),
        backends: vec![
            RouteBackend::new("127.0.0.1:38943"),
            RouteBackend::new("127.0.0.1:38944").with_weight(2),
            RouteBackend::new("127.0.0.1:38945"),
        ],
        ..Route::default()
    };
    let members = route
        .backends
        .iter()
        .map(|b| MemberStats {
            address: b.address.clone(),
            weight: b.weight,
            admin: AdminState::Enabled,
            state: BackendState::Up,
            ..MemberStats::default()
        })
        .collect();
    app.on_event(
        TimedEvent {
            timestamp_ms: 1000,
            event: Event::Stats {
                listeners: vec![ListenerStatus {
                    addr: "127.0.0.1:8443".into(),
                    route_count: 2,
                    ..ListenerStatus::default()
                }],
                routes: vec![RouteEntry {
                    not_served: None,
                    listener: "127.0.0.1:8443".into(),
                    route,
                    stats: RouteStats {
                        members,
                        ..RouteStats::default()
                    },
                    certificate: None,
                }],
                backends: vec![],
                cluster: None,
            },
        },
        Instant::now(),
    );
    app
}

/// A live state change of one pool member, as the daemon sends it.
fn member_changed(
    address: &str,
    admin: mc_proxy_shared::AdminState,
    state: mc_proxy_shared::BackendState,
    reason: &str,
) -> TimedEvent {
    TimedEvent {
        timestamp_ms: 2000,
        event: Event::BackendChanged {
            listener: "127.0.0.1:8443".into(),
            route: "pool.test".into(),
            member: mc_proxy_shared::MemberStats {
                address: address.into(),
                weight: 1,
                admin,
                state,
                reason: reason.into(),
                ..mc_proxy_shared::MemberStats::default()
            },
            origin: None,
        },
    }
}

/// Issue 28: a pool's row says how many of its members are up, coloured green / yellow / red,
/// at 80x24 and 60x16; a single-backend route has no such figure.
#[test]
fn a_pools_row_shows_how_many_members_are_up_in_colour() {
    use mc_proxy_shared::{AdminState, BackendState};
    let mut app = pool_app();
    for (w, h) in [(80, 24), (60, 16)] {
        let s = render(&app, w, h);
        assert!(s.contains(" UP "), "{s}");
        assert!(row_of(&s, "pool.test").contains("3/3 up"), "{s}");
        assert!(!row_of(&s, "single.test").contains(" up"), "{s}");
        assert_eq!(colour_of(&app, w, h, "pool.test", "3/3 up"), Color::Green);
    }

    // One member drained: 2/3, yellow.
    app.on_event(
        member_changed(
            "127.0.0.1:38944",
            AdminState::Draining,
            BackendState::Draining,
            "",
        ),
        Instant::now(),
    );
    for (w, h) in [(80, 24), (60, 16)] {
        let s = render(&app, w, h);
        assert!(row_of(&s, "pool.test").contains("2/3 up"), "{s}");
        assert_eq!(colour_of(&app, w, h, "pool.test", "2/3 up"), Color::Yellow);
    }

    // Another one down: 1/3, still yellow; the last one ejected: 0/3, red.
    app.on_event(
        member_changed(
            "127.0.0.1:38943",
            AdminState::Enabled,
            BackendState::Down,
            "",
        ),
        Instant::now(),
    );
    assert_eq!(
        colour_of(&app, 80, 24, "pool.test", "1/3 up"),
        Color::Yellow
    );
    app.on_event(
        member_changed(
            "127.0.0.1:38945",
            AdminState::Enabled,
            BackendState::Ejected,
            "",
        ),
        Instant::now(),
    );
    for (w, h) in [(80, 24), (60, 16)] {
        assert_eq!(colour_of(&app, w, h, "pool.test", "0/3 up"), Color::Red);
    }
    // Nothing known yet of any (a new route): not up, but nothing wrong either.
    for address in ["127.0.0.1:38943", "127.0.0.1:38944", "127.0.0.1:38945"] {
        app.on_event(
            member_changed(address, AdminState::Enabled, BackendState::Unknown, ""),
            Instant::now(),
        );
    }
    for (w, h) in [(80, 24), (60, 16)] {
        assert_eq!(colour_of(&app, w, h, "pool.test", "0/3 up"), Color::Gray);
    }
}

/// Issue 28: a member going down is a notice on the status line (red, it expires like every
/// notice); a drain, which the operator asked for, is not.
#[test]
fn a_backend_going_down_is_a_notice_on_the_status_line() {
    use mc_proxy_shared::{AdminState, BackendState};
    let mut app = pool_app();
    let now = Instant::now();
    app.on_tick(now);
    app.on_event(
        member_changed(
            "127.0.0.1:38944",
            AdminState::Draining,
            BackendState::Draining,
            "",
        ),
        now,
    );
    assert!(app.data().note.is_none(), "{:?}", app.data().note);

    app.on_event(
        member_changed(
            "127.0.0.1:38943",
            AdminState::Enabled,
            BackendState::Down,
            "3 failed checks",
        ),
        now,
    );
    let note = app.data().note.clone().expect("no notice");
    assert!(note.error);
    assert_eq!(
        note.text,
        "backend 127.0.0.1:38943 of pool.test down (3 failed checks)"
    );
    let s = render(&app, 120, 40);
    let status = s.lines().next().unwrap();
    assert!(
        status.contains("backend 127.0.0.1:38943 of pool.test down (3 failed checks)"),
        "{s}"
    );
    assert_eq!(
        colour_of(&app, 120, 40, "connected", "backend 127.0.0.1:38943"),
        Color::Red
    );
    // At 80 columns it is cut visibly, never wrapped.
    let s = render(&app, 80, 24);
    let status = s.lines().next().unwrap();
    assert!(
        status.contains("backend 127.0.0") && status.contains('…'),
        "{s}"
    );

    // An ejection says so too; the notice goes after its time.
    app.on_event(
        member_changed(
            "127.0.0.1:38945",
            AdminState::Enabled,
            BackendState::Ejected,
            "",
        ),
        now,
    );
    assert_eq!(
        app.data().note.as_ref().map(|n| n.text.as_str()),
        Some("backend 127.0.0.1:38945 of pool.test ejected")
    );
    app.on_tick(now + mcproxyctl::tui::app::NOTE_TTL);
    assert!(app.data().note.is_none());
    assert!(!render(&app, 120, 40).contains("of pool.test ejected"));
}

/// Issue 28: the route detail says per backend how long it has been in its state and what its
/// last check found, as of the figures (not the screen's clock), within the layout at 80x24,
/// and at 60x16 the selected backend's line (scrolled to) still shows it.
#[test]
fn a_backends_since_and_last_check_show_in_the_route_detail() {
    use mc_proxy_shared::{AdminState, BackendState, CheckResult, HealthCheck, MemberStats};
    let mut app = app_with(&[("pool.test", "127.0.0.1:38943", Mode::L4)]);
    let at = 1_800_000_000_000u64;
    let route = Route {
        hostname: "pool.test".into(),
        backends: (0..6)
            .map(|i| mc_proxy_shared::RouteBackend::new(format!("127.0.0.1:3894{i}")))
            .collect(),
        health_check: Some(HealthCheck::default()),
        ..Route::default()
    };
    let member = |i: usize| MemberStats {
        address: format!("127.0.0.1:3894{i}"),
        weight: 1,
        admin: AdminState::Enabled,
        state: if i == 5 {
            BackendState::Down
        } else {
            BackendState::Up
        },
        since_ms: at - 125_000,
        last_check: Some(CheckResult {
            at_ms: at - 3_000,
            error: (i == 5).then(|| "connect refused".to_owned()),
            latency: Duration::from_micros(if i == 5 { 150 } else { 2_400 }),
        }),
        reason: if i == 5 {
            "3 checks failed in a row: connect refused".into()
        } else {
            String::new()
        },
        ..MemberStats::default()
    };
    app.on_event(
        TimedEvent {
            timestamp_ms: at,
            event: Event::RouteChanged {
                listener: "127.0.0.1:8443".into(),
                action: mc_proxy_shared::ChangeAction::Updated,
                route: route.clone(),
                previous_hostname: "pool.test".into(),
                origin: None,
            },
        },
        Instant::now(),
    );
    app.on_event(
        TimedEvent {
            timestamp_ms: at,
            event: Event::Stats {
                listeners: vec![ListenerStatus {
                    addr: "127.0.0.1:8443".into(),
                    route_count: 1,
                    ..ListenerStatus::default()
                }],
                routes: vec![RouteEntry {
                    not_served: None,
                    listener: "127.0.0.1:8443".into(),
                    route: route.clone(),
                    stats: RouteStats {
                        members: (0..6).map(member).collect(),
                        ..RouteStats::default()
                    },
                    certificate: None,
                }],
                backends: vec![],
                cluster: None,
            },
        },
        Instant::now(),
    );
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.screen(), Screen::RouteDetail);
    let s = render(&app, 80, 24);
    assert!(
        s.contains("tcp + tls handshake every 2s"),
        "the L4 check says what it does: {s}"
    );
    let first = s
        .lines()
        .find(|l| l.contains("127.0.0.1:38940") && l.contains(" w1"))
        .unwrap_or_else(|| panic!("{s}"));
    assert!(first.contains("up for 2m"), "{s}");
    assert!(flat(&s).contains("check 3s ago: ok in 2ms"), "{s}");
    // The last member: select it; the detail scrolls to it.
    for _ in 0..5 {
        app.on_key(key(KeyCode::Down));
    }
    for (w, h) in [(80, 24), (60, 16)] {
        let s = render(&app, w, h);
        assert!(
            s.lines()
                .any(|l| l.contains("127.0.0.1:38945") && l.contains("down for 2m")),
            "{w}x{h}: {s}"
        );
        assert!(
            flat(&s).contains("check 3s ago: connect refused in 150µs"),
            "{w}x{h}: {s}"
        );
    }
}

/// The screen's text with box edges taken off and wrapped lines joined by a space (the
/// detail wraps at spaces).
fn flat(screen: &str) -> String {
    screen
        .lines()
        .map(|l| l.trim().trim_matches('│').trim())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `+` and `-` in the route detail change the selected backend's weight by one, within 1 to
/// 256; read-only refuses them.
#[test]
fn plus_and_minus_change_the_selected_backends_weight() {
    use mcproxyctl::tui::app::Action;
    let mut app = pool_detail(2, &[]);
    app.on_key(key(KeyCode::Down));
    let weight = |weight| Action::SetBackendWeight {
        listener: "127.0.0.1:8443".into(),
        hostname: "pool.test".into(),
        address: "10.0.0.1:8001".into(),
        weight,
    };
    assert_eq!(app.on_key(key(KeyCode::Char('+'))), Some(weight(2)));
    // At 1 already: nothing to send.
    assert_eq!(app.on_key(key(KeyCode::Char('-'))), None);
    assert_eq!(app.screen(), Screen::RouteDetail);
    let s = render(&app, 80, 24);
    assert!(s.contains("+/- weight"), "{s}");
    app.on_key(key(KeyCode::Char('?')));
    assert!(
        render(&app, 80, 24).contains("one more weight"),
        "the detail's keys"
    );

    let mut ro = pool_detail(2, &[]);
    ro.set_read_only(true);
    assert_eq!(ro.on_key(key(KeyCode::Char('+'))), None);
}

/// `d` on a connection asks, `y` closes it; any other key keeps it.
#[test]
fn a_connection_is_closed_from_the_connections_view_after_asking() {
    use mcproxyctl::tui::app::Action;
    let mut app = app_with(&[("a.test", "127.0.0.1:9", Mode::L4)]);
    app.on_key(key(KeyCode::Char('c')));
    app.on_daemon(DaemonMsg::Connections(ConnectionList {
        connections: vec![Connection {
            id: 42,
            listener: "127.0.0.1:8443".into(),
            client: "203.0.113.9:38943".into(),
            hostname: "a.test".into(),
            route: "a.test".into(),
            mode: Mode::L4,
            backend: "127.0.0.1:9".into(),
            age: Duration::from_secs(75),
            bytes_in: 10,
            bytes_out: 20,
        }],
        total: 1,
    }));
    assert!(render(&app, 80, 24).contains("d close"));
    assert_eq!(app.on_key(key(KeyCode::Char('d'))), None, "sent at once");
    let s = render(&app, 80, 24);
    assert!(
        s.contains("Close connection #42 203.0.113.9:38943 -> a.test"),
        "{s}"
    );
    assert!(s.contains("y: close"), "{s}");
    assert_eq!(app.on_key(key(KeyCode::Char('n'))), None);
    assert!(!render(&app, 80, 24).contains("Close connection"));
    app.on_key(key(KeyCode::Delete));
    assert_eq!(
        app.on_key(key(KeyCode::Char('y'))),
        Some(Action::CloseConnection { id: 42 })
    );
}

/// `v` filters the events pane: without traffic the route change stays and the connection
/// lines go; the title says what is shown; the next presses cycle back to everything.
#[test]
fn v_filters_the_events_pane() {
    let mut app = busy_app();
    app.on_event(
        TimedEvent {
            timestamp_ms: 45_297_000,
            event: Event::FirewallChanged {
                action: mc_proxy_shared::ChangeAction::Added,
                rule: mc_proxy_shared::FirewallRule {
                    kind: mc_proxy_shared::FirewallRuleKind::Ip,
                    value: "192.0.2.66".into(),
                },
                origin: None,
            },
        },
        Instant::now(),
    );
    let s = render(&app, 120, 40);
    assert!(s.contains("close #41") && s.contains("192.0.2.66"), "{s}");
    assert!(s.contains("v events"), "{s}");

    app.on_key(key(KeyCode::Char('v')));
    let s = render(&app, 120, 40);
    assert!(s.contains("events: no traffic (v)"), "{s}");
    assert!(s.contains("firewall added ip 192.0.2.66"), "{s}");
    assert!(
        !s.contains("close #41") && !s.contains("open  #41") && !s.contains("block 198"),
        "{s}"
    );
    app.on_key(key(KeyCode::Char('v')));
    app.on_key(key(KeyCode::Char('v')));
    let s = render(&app, 120, 40);
    assert!(s.contains("events: traffic (v)"), "{s}");
    assert!(s.contains("close #41") && !s.contains("192.0.2.66"), "{s}");
    app.on_key(key(KeyCode::Char('v')));
    let s = render(&app, 120, 40);
    assert!(s.contains("close #41") && s.contains("192.0.2.66"), "{s}");
}

/// Sends one key to the console.
fn press(keys: &tokio::sync::mpsc::UnboundedSender<Input>, code: KeyCode) {
    keys.send(Input::Key(key(code))).unwrap();
}

#[tokio::test]
async fn the_fleet_view_polls_every_context_and_enter_switches_the_console_to_a_node() {
    use mcproxyctl::contexts::Context;
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki, &["web.test", "only-b.test"]).await;
    let config = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\nname = \"edge\"\n[[listeners.routes]]\nhostname = \"web.test\"\nbackend = \"{}\"",
        backend.addr
    );
    let a = Proxy::start(&config).await;
    let b = Proxy::start(&config).await;
    // A route only b has: seen once the console shows b, never before.
    b.admin()
        .await
        .add_route(
            "edge",
            Route {
                hostname: "only-b.test".into(),
                backends: vec![mc_proxy_shared::RouteBackend::new(backend.addr.to_string())],
                ..Route::default()
            },
        )
        .await
        .unwrap();
    let gone = tempfile::tempdir().unwrap();
    let contexts = vec![
        Context {
            name: "alpha".into(),
            socket: a.socket.clone(),
        },
        Context {
            name: "beta".into(),
            socket: b.socket.clone(),
        },
        Context {
            name: "gamma".into(),
            socket: gone.path().join("mc-proxy.sock"),
        },
    ];
    // Traffic through b only, the whole test long.
    let traffic = {
        let (addr, config) = (b.addr(), pki.client_config());
        tokio::spawn(async move {
            loop {
                if let Ok(mut c) = tls_connect(addr, "web.test", config.clone()).await {
                    let _ = send_and_finish(&mut c, b"ping").await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let (mut msgs, actions, link_task) = link::spawn(a.socket.clone(), contexts);
    let (keys, mut inputs) = tokio::sync::mpsc::unbounded_channel();
    let app = App::new().with_context(Some("alpha".into()));
    let terminal = Terminal::new(TestBackend::new(100, 40)).unwrap();
    let mut console = Console::with_app(app, terminal, actions);
    let s = until(&mut console, &mut inputs, &mut msgs, "web.test").await;
    assert!(s.contains("[alpha]") && !s.contains("only-b.test"), "{s}");

    // n: every context, the unreachable one with a dash for every live figure.
    press(&keys, KeyCode::Char('n'));
    let s = until(&mut console, &mut inputs, &mut msgs, "3 node(s), 2 reached").await;
    let row = |s: &str, name: &str| {
        s.lines()
            .find(|l| l.starts_with('│') && l.contains(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{s}"))
            .to_owned()
    };
    let gamma = row(&s, "gamma");
    assert!(
        gamma.contains("unreachable") && !gamma.contains("/s"),
        "{gamma}"
    );
    assert!(
        row(&s, "alpha").contains("*alpha"),
        "the node shown is marked:\n{s}"
    );
    // Two polls later b has a rate and a has none.
    let deadline = Instant::now() + Duration::from_secs(15);
    let s = loop {
        let s = until(&mut console, &mut inputs, &mut msgs, "reached").await;
        let beta = row(&s, "beta");
        if beta.contains("/s") && !beta.contains(" 0/s") {
            break s;
        }
        assert!(Instant::now() < deadline, "beta never showed a rate:\n{s}");
        let _ = tokio::time::timeout(
            Duration::from_millis(300),
            console.step(&mut inputs, &mut msgs),
        )
        .await;
    };
    assert!(row(&s, "alpha").contains(" 0/s"), "a had no traffic:\n{s}");

    // The route's detail on a says what each node serves of it.
    press(&keys, KeyCode::Esc);
    press(&keys, KeyCode::Enter);
    let s = until(&mut console, &mut inputs, &mut msgs, "per node").await;
    let beta = s
        .lines()
        .find(|l| l.contains(" beta "))
        .unwrap_or_else(|| panic!("no beta line:\n{s}"));
    assert!(beta.contains("/s") && !beta.contains(" 0/s"), "{beta}");
    press(&keys, KeyCode::Esc);

    // Enter on beta: the console is b's now.
    press(&keys, KeyCode::Char('n'));
    until(&mut console, &mut inputs, &mut msgs, "reached").await;
    press(&keys, KeyCode::Down);
    press(&keys, KeyCode::Enter);
    let s = until(&mut console, &mut inputs, &mut msgs, "only-b.test").await;
    assert!(s.contains("[beta]") && !s.contains("[alpha]"), "{s}");
    press(&keys, KeyCode::Char('n'));
    let s = until(&mut console, &mut inputs, &mut msgs, "*beta").await;
    assert!(!s.contains("*alpha"), "{s}");
    traffic.abort();
    link_task.abort();
}

/// A fleet of four: the console's node (a cluster member, behind by 2), a busy one with a
/// long name, one whose socket is gone, one only the registry names.
fn fleet_app() -> App {
    use mc_proxy_shared::client::{ClusterLink, ClusterNode, ClusterStatus};
    use mcproxyctl::tui::fleet::{Poll, Reading, Sample};
    let link = |node: &str, applied, store| ClusterLink {
        node: node.into(),
        endpoints: vec!["http://127.0.0.1:2379".into()],
        prefix: "/mc-proxy/default".into(),
        state: "connected".into(),
        since_ms: 0,
        applied_revision: applied,
        store_revision: store,
        last_error: String::new(),
        drift_repaired: 0,
    };
    let status = |node: &str, applied, open| Status {
        version: "0.1.0".into(),
        uptime: Duration::from_secs(100),
        listeners: vec![ListenerStatus {
            addr: "0.0.0.0:443".into(),
            name: "edge".into(),
            ..ListenerStatus::default()
        }],
        active_connections: open,
        total_connections: 0,
        firewall_rules: 0,
        backends: vec![],
        cluster: Some(link(node, applied, 1042)),
        pid: None,
    };
    let route = |requests: u64, errors: u64| RouteEntry {
        not_served: None,
        listener: "0.0.0.0:443".into(),
        route: Route {
            hostname: "web.test".into(),
            mode: Mode::L7,
            ..Route::default()
        },
        stats: RouteStats {
            requests,
            responses: [0, requests - errors, 0, 0, errors],
            active_connections: 7,
            ..RouteStats::default()
        },
        certificate: None,
    };
    let long = "edge-node-eu-west-1c-0042.example.internal";
    let round = |at: Instant, scale: u64| Poll {
        at,
        current: "/run/mc-proxy/a.sock".into(),
        samples: vec![
            Sample {
                context: "a".into(),
                socket: "/run/mc-proxy/a.sock".into(),
                reading: Ok(Reading {
                    status: status("node-a", 1040, 12),
                    routes: vec![route(10 * scale, 0)],
                }),
            },
            Sample {
                context: "eu-west-1c-0042".into(),
                socket: "/run/mc-proxy/b.sock".into(),
                reading: Ok(Reading {
                    status: status(long, 1042, 123_456),
                    routes: vec![route(25_000 * scale, 250 * scale)],
                }),
            },
            Sample {
                context: "old-box".into(),
                socket: "/run/mc-proxy/gone.sock".into(),
                reading: Err("connect /run/mc-proxy/gone.sock: No such file or directory".into()),
            },
        ],
        registry: Some(Ok(ClusterStatus {
            link: link("node-a", 1040, 1042),
            nodes: ["node-a", long, "node-z"]
                .iter()
                .map(|name| ClusterNode {
                    name: (*name).into(),
                    version: "0.1.0".into(),
                    listeners: vec!["edge=0.0.0.0:443".into()],
                    admin: "/run/mc-proxy/admin.sock".into(),
                    metrics: "127.0.0.1:9090".into(),
                    applied_revision: 1030,
                    last_error: String::new(),
                    started_ms: 0,
                })
                .collect(),
            nodes_error: String::new(),
        })),
    };
    let mut app = App::new().with_context(Some("a".into()));
    let t0 = Instant::now();
    app.on_daemon(DaemonMsg::Fleet(round(t0, 1)));
    app.on_daemon(DaemonMsg::Fleet(round(t0 + Duration::from_secs(2), 2)));
    app.on_key(key(KeyCode::Char('n')));
    app
}

#[test]
fn the_fleet_view_fits_80x24_with_every_node_and_no_ambiguous_value() {
    let app = fleet_app();
    let s = render(&app, 80, 24);
    println!("{s}");
    let row = |name: &str| {
        s.lines()
            .find(|l| l.starts_with('│') && l.contains(name))
            .unwrap_or_else(|| panic!("no row {name}:\n{s}"))
    };
    // The console's node: marked, behind by 2 of its own store's revisions, 5 req/s.
    let a = row("*node-a");
    for value in ["behind", "1040", " 2 ", " 12 ", "5/s", "0%"] {
        assert!(a.contains(value), "{value:?} in {a:?}");
    }
    // The long name is cut with an ellipsis, its figures whole: 12.5K/s, 1.0% errors.
    let b = row("edge-node-eu");
    assert!(b.contains('…'), "{b}");
    for value in ["123K", "12K/s", "1.0%", " up ", " 1042 "] {
        assert!(b.contains(value), "{value:?} in {b:?}");
    }
    // The gone socket: why, and no figure of before.
    let gone = row("old-box");
    assert!(
        gone.contains("unreachable") && !gone.contains("/s"),
        "{gone}"
    );
    // Only in the registry: what the registry says, a dash for traffic.
    let z = row("node-z");
    assert!(
        z.contains("no context") && z.contains("1030") && z.contains(" 12 "),
        "{z}"
    );
    assert!(z.trim_end_matches([' ', '│']).ends_with('–'), "{z}");
    // The selected row's detail under the table, and the keys.
    assert!(s.contains("node-a: context a, shown now"), "{s}");
    assert!(s.contains("enter switch") && s.contains("esc back"), "{s}");
    // At 60 columns the same rows, fewer columns, values still whole.
    let s = render(&app, 60, 20);
    println!("{s}");
    assert!(s.contains("12K/s") && s.contains("no context"), "{s}");
}

#[test]
fn a_certificate_near_its_end_colours_its_route_and_the_detail_says_when() {
    use mc_proxy_shared::client::Certificate;
    let now = mcproxyctl::format::now_ms();
    let day = 86_400_000;
    let cert = |days_left: u64| Certificate {
        source: "file".into(),
        issuer: "R11".into(),
        not_before_ms: now - 60 * day,
        not_after_ms: now + days_left * day + day / 2,
        renews_at_ms: None,
        renewal_by_ari: false,
        last_error: None,
    };
    let mut app = app_with(&[
        ("ok.test", "127.0.0.1:9001", Mode::L7),
        ("soon.test", "127.0.0.1:9002", Mode::L7),
        ("gone.test", "127.0.0.1:9003", Mode::L7),
        ("acme.test", "127.0.0.1:9004", Mode::L7),
    ]);
    let mut routes: Vec<RouteEntry> = ["ok.test", "soon.test", "gone.test", "acme.test"]
        .iter()
        .map(|h| RouteEntry {
            listener: "127.0.0.1:8443".into(),
            route: Route {
                hostname: (*h).into(),
                mode: Mode::L7,
                ..Route::default()
            },
            stats: RouteStats::default(),
            not_served: None,
            certificate: None,
        })
        .collect();
    routes[0].certificate = Some(cert(60));
    routes[1].certificate = Some(cert(3));
    routes[2].certificate = Some(Certificate {
        not_after_ms: now - day,
        ..cert(0)
    });
    // ACME, far from its end, but its renewal failed: a warning too.
    routes[3].certificate = Some(Certificate {
        source: "acme".into(),
        renews_at_ms: Some(now + 30 * day),
        last_error: Some("talking to the CA: connection refused".into()),
        ..cert(60)
    });
    app.on_daemon(DaemonMsg::Event(TimedEvent {
        timestamp_ms: now,
        event: Event::Stats {
            listeners: vec![ListenerStatus {
                addr: "127.0.0.1:8443".into(),
                ..ListenerStatus::default()
            }],
            routes,
            backends: vec![],
            cluster: None,
        },
    }));
    assert_eq!(row_colour(&app, "ok.test"), Color::Reset);
    assert_eq!(row_colour(&app, "soon.test"), Color::Yellow);
    assert_eq!(row_colour(&app, "gone.test"), Color::Red);
    assert_eq!(row_colour(&app, "acme.test"), Color::Yellow);
    // The ACME one's detail (rows by name: acme, gone, ok, soon): when it renews, and why
    // the last renewal failed.
    app.on_key(key(KeyCode::Enter));
    let s = render(&app, 100, 40);
    assert!(s.contains("route acme.test"), "{s}");
    assert!(s.contains("│renews"), "{s}");
    assert!(
        s.contains("FAILED: talking to the CA: connection refused"),
        "{s}"
    );
    app.on_key(key(KeyCode::Esc));
    // The detail of the expiring one: issuer, end, days left.
    app.on_key(key(KeyCode::Down));
    app.on_key(key(KeyCode::Down));
    app.on_key(key(KeyCode::Down));
    app.on_key(key(KeyCode::Enter));
    let s = render(&app, 100, 40);
    assert!(s.contains("route soon.test"), "{s}");
    let line = s
        .lines()
        .find(|l| l.contains("│certificate"))
        .unwrap_or_else(|| panic!("{s}"));
    assert!(
        line.contains("file by R11, until ") && line.contains("(expires in 3d)"),
        "{line}"
    );
}

#[test]
fn route_details_show_the_route_limits_and_their_refusals() {
    let mut app = app_with(&[("web.test", "127.0.0.1:9080", Mode::L7)]);
    let mut limits = mc_proxy_shared::limits::RouteLimits {
        allow_from: vec!["10.0.0.0/8".into()],
        client_request_rate: 10,
        max_requests: 4,
        max_queue: 2,
        ..Default::default()
    };
    limits.client_request_burst = 20;
    app.on_event(
        TimedEvent {
            timestamp_ms: 0,
            event: Event::RouteChanged {
                listener: "127.0.0.1:8443".into(),
                action: mc_proxy_shared::ChangeAction::Updated,
                route: Route {
                    hostname: "web.test".into(),
                    backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9080")],
                    mode: Mode::L7,
                    tls_cert: "/c.pem".into(),
                    tls_key: "/c.key".into(),
                    limits: Box::new(limits),
                    ..Route::default()
                },
                previous_hostname: "web.test".into(),
                origin: None,
            },
        },
        Instant::now(),
    );
    app.on_key(key(KeyCode::Enter));
    let s = render(&app, 120, 60);
    assert!(s.contains("route web.test"), "{s}");
    // The limits line wraps in the box; its start and its end.
    assert!(
        s.contains("limits         allow from 10.0.0.0/8; 10 req/s per client (burst 20); 4"),
        "{s}"
    );
    assert!(s.contains("wait 1s"), "{s}");
    assert!(s.contains("0 (403)"), "{s}");
    assert!(s.contains("0 (429)"), "{s}");
    assert!(
        s.contains("0 in flight, 0 waiting; 0 queued, 0 refused (503) since start"),
        "{s}"
    );
}

#[test]
fn the_talkers_view_fits_80x24_with_ipv6_networks_and_estimated_counts_marked() {
    use mc_proxy_shared::client::Talker;
    let mut app = App::new();
    let now = mcproxyctl::format::now_ms();
    let talker = |client: &str, hits, error, last: &str, route: &str| Talker {
        client: client.into(),
        hits,
        error,
        last: last.into(),
        route: route.into(),
        last_ms: now - 3000,
    };
    app.on_key(key(KeyCode::Char('t')));
    app.on_daemon(DaemonMsg::Talkers(vec![
        talker(
            "2001:db8:1234:5678::/64",
            120_345,
            0,
            "rate_limited",
            "api.example.com",
        ),
        talker("198.51.100.7", 4_000, 12, "client_conn_limit", ""),
        talker(
            "203.0.113.9",
            3,
            0,
            "route_denied",
            "admin.internal.example.com",
        ),
    ]));
    let s = render(&app, 80, 24);
    println!("{s}");
    let row = |needle: &str| {
        s.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle}:\n{s}"))
    };
    let v6 = row("2001:db8:1234:5678::/64");
    assert!(v6.contains("120345") && v6.contains("rate_limited"), "{v6}");
    let est = row("198.51.100.7");
    assert!(
        est.contains("≤4000") && est.contains("client_conn_limit"),
        "an estimate says so: {est}"
    );
    assert!(row("203.0.113.9").contains("route_denied"));
    assert!(s.contains("clients hitting limits: 3"), "{s}");
    assert!(s.contains("esc back"), "{s}");
    // At the console's narrowest the clients and counts stay whole; a limit's name that does
    // not fit is cut with an ellipsis, never silently.
    let s = render(&app, 60, 16);
    let row = |needle: &str| {
        s.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle}:\n{s}"))
    };
    assert!(row("2001:db8:1234:5678::/64").contains("120345"), "{s}");
    let est = row("198.51.100.7");
    assert!(
        est.contains("≤4000") && est.contains("client_conn_…"),
        "{est}"
    );
    assert!(row("203.0.113.9").contains("route_denied"), "{s}");
    // t again: back to the routes.
    app.on_key(key(KeyCode::Char('t')));
    assert!(render(&app, 80, 24).contains("listeners"));
}
