//! The terminal console: views rendered on ratatui's TestBackend at 80x24 and 120x40, and the
//! whole console driven by injected keys against a real daemon and a real backend.

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mc_proxy_shared::client::{Event, ListenerStatus, RouteEntry, RouteStats, Status, TimedEvent};
use mc_proxy_shared::{Mode, Route};
use mc_proxy_tests::*;
use mcproxyctl::tui::app::{App, DaemonMsg};
use mcproxyctl::tui::{Console, Input, link, ui};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

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
        backend: "10.0.0.5:9443".into(),
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
                listener: "127.0.0.1:8443".into(),
                route: route("app.test", Mode::L4, true),
                stats: a,
            },
            RouteEntry {
                listener: "127.0.0.1:8443".into(),
                route: route("web.test", Mode::L7, false),
                stats: b,
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
            mode: "l4".into(),
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
            mode: "l4".into(),
            backend: "10.0.0.5:9443".into(),
            bytes_in: 2048,
            bytes_out: 4096,
            duration_ms: 12,
            outcome: "closed".into(),
            error: String::new(),
        }),
        t0,
    );
    app.on_event(
        ev(Event::ConnectionBlocked {
            listener: "127.0.0.1:8443".into(),
            client: "198.51.100.7:1".into(),
            reason: "firewall".into(),
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
        "8.0/s 3",
        "traffic app.test",
        "12:34:56 open  #41 203.0.113.9:5555 app.test",
        "close #41",
        "in 2.0K out 4.0K 12ms closed",
        "block 198.51.100.7:1 (firewall)",
        "a add",
        "? help",
    ] {
        assert!(s.contains(needle), "missing {needle:?} in:\n{s}");
    }
    assert_eq!(s.lines().count(), 24);
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
    app.on_key(key(KeyCode::Enter));
    app.on_daemon(DaemonMsg::ActionDone(Err(
        "mode l7 needs tls_cert (a PEM certificate chain)".into(),
    )));
    let s = render(&app, 80, 24);
    assert!(s.contains("error: mode l7 needs tls_cert"), "{s}");
}

#[test]
fn help_firewall_filter_and_reconnecting_views() {
    let mut app = busy_app();
    app.on_key(key(KeyCode::Char('?')));
    let s = render(&app, 80, 24);
    assert!(
        s.contains(" keys ") && s.contains("filter routes by hostname"),
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

    let (mut msgs, actions, link_task) = link::spawn(proxy.socket.clone());
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
    let (mut msgs, actions, link_task) = link::spawn(proxy.socket.clone());
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
