//! A real browser through an L7 route: headless Chromium (Debian's `chromium`) loads a page
//! that opens a WebSocket and an event stream, and the test reads what the page wrote into its
//! DOM (`--dump-dom`; the page holds its load event until its results are in, see
//! `mc_proxy_tests::site`) and keeps a screenshot in the test's temp dir.
//!
//! Chromium negotiates HTTP/2 with the proxy, and since the proxy advertises
//! SETTINGS_ENABLE_CONNECT_PROTOCOL it opens the WebSocket as an RFC 8441 extended CONNECT;
//! the route's backend speaks HTTP/1.1, so the proxy translates it into an `Upgrade`.
//!
//! `.ci/run` installs Chromium and sets `MCPROXY_REQUIRE_CHROMIUM=1`, so in CI a missing
//! browser fails. Elsewhere the test skips with a message when `chromium` is not installed.
//! Set `MCPROXY_KEEP_BROWSER_DIR=1` to keep the temp dir (screenshot, profile) and print it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mc_proxy_shared::BackendProtocol;
use mc_proxy_tests::site::Site;
use mc_proxy_tests::web::web_stats;
use mc_proxy_tests::{Pki, ProxyBuilder, capture_logs, log_text};

/// Chromium's binary, if installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Runs `cmd` to its end, killing it after `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn chromium_command(binary: &Path, dir: &Path, spki: &str, url: &str) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=900,500",
        "--host-resolver-rules=MAP web.test 127.0.0.1",
    ])
    .arg(format!("--user-data-dir={}", dir.join("profile").display()))
    // Trust exactly the test certificate's key, not every certificate.
    .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
    .arg(format!("--screenshot={}", dir.join("page.png").display()))
    .arg("--dump-dom")
    .arg(url);
    cmd
}

#[tokio::test]
async fn chromium_opens_a_websocket_over_http2_and_reads_an_event_stream() {
    let Some(binary) = chromium() else {
        if std::env::var_os("MCPROXY_REQUIRE_CHROMIUM").is_some() {
            panic!("MCPROXY_REQUIRE_CHROMIUM is set but chromium is not installed");
        }
        mc_proxy_tests::skipped(
            "chromium is not installed (apt-get install chromium to run this test)",
        );
        return;
    };
    let (_guard, tape) = capture_logs();
    let pki = Pki::new();
    let site = Site::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, spki) = pki.write_pem_spki(dir.path(), &["web.test"]);
    let proxy = ProxyBuilder::new()
        .route("web.test", site.addr)
        .l7_cert_files((cert, key))
        .backend_protocol(BackendProtocol::Http1)
        .start()
        .await;
    let port = proxy.addr().port();
    let url = format!("https://web.test:{port}/");

    let cmd = chromium_command(&binary, dir.path(), &spki, &url);
    let output = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(60)))
        .await
        .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = || {
        format!(
            "DOM:\n{dom}\nchromium stderr:\n{stderr}\nproxy log:\n{}",
            log_text(&tape)
        )
    };

    // What the page saw.
    assert!(
        dom.contains(r#"<span id="result">ok</span>"#),
        "{}",
        context()
    );
    assert!(
        dom.contains(r#"<span id="ws">hello from the browser (protocol echo)</span>"#),
        "{}",
        context()
    );
    assert!(
        dom.contains(r#"<span id="close">1000 done clean</span>"#),
        "{}",
        context()
    );
    assert!(
        dom.contains(r#"<span id="sse">one,two</span>"#),
        "{}",
        context()
    );

    // What the backend saw: an HTTP/1.1 upgrade, made by the proxy.
    {
        let visits = site.visits.lock().unwrap();
        assert_eq!(visits.done.as_deref(), Some("ok"));
        assert_eq!(visits.websockets.len(), 1, "{visits:?}");
        let hs = &visits.websockets[0];
        assert_eq!(hs.method, "GET");
        assert_eq!(hs.version, http::Version::HTTP_11);
        assert_eq!(hs.path, "/ws");
        assert!(hs.header("upgrade").eq_ignore_ascii_case("websocket"));
        assert_eq!(hs.header("sec-websocket-version"), "13");
        assert_eq!(hs.header("sec-websocket-key").len(), 24);
        assert_eq!(hs.header("sec-websocket-protocol"), "echo");
        assert_eq!(hs.header("origin"), format!("https://web.test:{port}"));
        assert_eq!(hs.header("x-forwarded-for"), "127.0.0.1");
        let paths: Vec<&str> = visits.requests.iter().map(|(_, p, _)| p.as_str()).collect();
        for path in ["/", "/ws", "/sse", "/hold.gif", "/done?ok"] {
            assert!(paths.contains(&path), "{path} not requested: {paths:?}");
        }
        assert!(
            visits
                .requests
                .iter()
                .all(|(_, _, v)| *v == http::Version::HTTP_11),
            "{visits:?}"
        );
    }
    assert_eq!(*site.closes.lock().unwrap(), [(1000, "done".to_owned())]);

    // The browser's side was HTTP/2: ALPN h2, and the WebSocket was answered 200 (extended
    // CONNECT), never 101.
    let log = log_text(&tape);
    assert!(log.contains(r#"TLS established alpn="h2""#), "{log}");
    assert!(!log.contains(r#"alpn="http/1.1""#), "{log}");
    assert!(
        log.contains("request method=CONNECT path=/ws status=200"),
        "{log}"
    );
    let stats = web_stats(&proxy);
    assert_eq!(
        stats.responses[0], 0,
        "a 101 means an HTTP/1.1 upgrade: {stats:?}"
    );
    assert_eq!(stats.backend_errors, 0);

    let png = std::fs::read(dir.path().join("page.png")).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    if std::env::var_os("MCPROXY_KEEP_BROWSER_DIR").is_some() {
        eprintln!("kept {}", dir.keep().display());
    }
}
