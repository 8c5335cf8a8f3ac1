//! The `mc-proxy` binary as an operator runs it: systemd's readiness protocol on a fake
//! `NOTIFY_SOCKET`, `kill -HUP` with a renewed and with a broken certificate, then `kill -TERM`.
//!
//! Signals are process-wide, so these tests run the real binary rather than `server::run`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A self-signed certificate for `name`: (PEM cert, PEM key, DER cert).
fn self_signed(name: &str) -> (String, String, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    (
        ck.cert.pem(),
        ck.signing_key.serialize_pem(),
        ck.cert.der().to_vec(),
    )
}

/// The daemon under test, its stderr collected as it runs, and the notify socket it reports to.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    notify: UnixDatagram,
    /// Config, database, socket and certificates; removed when the test ends.
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// The daemon on `config`, its stderr collected.
    fn start(dir: tempfile::TempDir, config: &str) -> Daemon {
        Daemon::start_with_stderr(dir, config, None, &[])
    }

    /// The same, with stderr sent to `stderr` instead of being collected (`log_text` is then
    /// empty).
    fn start_with_stderr(
        dir: tempfile::TempDir,
        config: &str,
        stderr: Option<std::io::PipeWriter>,
        args: &[&str],
    ) -> Daemon {
        let config_path = dir.path().join("mc-proxy.toml");
        std::fs::write(&config_path, config).unwrap();
        let notify_path = dir.path().join("notify.sock");
        // A restart in the same directory: the last run's socket file is still there.
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let collect = stderr.is_none();
        let mut child = Command::new(env!("CARGO_BIN_EXE_mc-proxy"))
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", if collect { "info" } else { "debug" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.map_or_else(Stdio::piped, Stdio::from))
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Daemon {
            child,
            log,
            notify,
            _dir: dir,
        }
    }

    /// The next notification (one datagram, `KEY=value` lines).
    fn next_notification(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification ({e}); log so far:\n{}", self.log_text()));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to 10 s for `needle` in the daemon's log.
    fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The first log line holding `needle`, once one is written (panics with the log after
    /// 10 s without).
    fn log_line(&self, needle: &str) -> String {
        assert!(
            self.wait_for_log(needle),
            "no {needle:?} in:\n{}",
            self.log_text()
        );
        let log = self.log_text();
        log.lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned)
            .unwrap_or_default()
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Kills the daemon and hands back its directory (database included), for a restart.
    fn kill_keep_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The leaf certificate a TLS handshake for `sni` is served, trusting any of `roots`.
async fn served_leaf(addr: &str, sni: &'static str, roots: &[&[u8]]) -> Vec<u8> {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store.add(CertificateDer::from(der.to_vec())).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(mc_proxy::model::certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from(sni).unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn write(path: &Path, text: &str) {
    // Write then rename, as certificate tools do, so a reload never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_and_systemd_hears_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path): (PathBuf, PathBuf) =
        (dir.path().join("web.pem"), dir.path().join("web.key"));
    let (cert1, key1, der1) = self_signed("web.test");
    write(&cert_path, &cert1);
    write(&key_path, &key1);
    let socket = dir.path().join("admin.sock");
    let config = format!(
        "[database]\npath = {:?}\n[admin]\nsocket = {:?}\n[proxy]\nshutdown_timeout = \"5s\"\n\
         [[listeners]]\naddr = \"127.0.0.1:0\"\n[[listeners.routes]]\nhostname = \"web.test\"\n\
         backend = \"127.0.0.1:9\"\nmode = \"l7\"\ntls_cert = {:?}\ntls_key = {:?}\n",
        dir.path().join("mc-proxy.db").display().to_string(),
        socket.display().to_string(),
        cert_path.display().to_string(),
        key_path.display().to_string(),
    );
    let mut daemon = Daemon::start(dir, &config);

    // READY=1 once listening, with what is served in STATUS.
    let ready = daemon.next_notification();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    let addr = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=serving "))
        .and_then(|s| s.split([',', ';']).next())
        .unwrap_or_else(|| panic!("no listener in {ready}"))
        .to_owned();
    assert!(ready.contains("admin API on"), "{ready}");
    // `workers` unset: one data-plane thread per CPU.
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(
        ready.contains(&format!("; {cpus} data-plane thread(s)")),
        "{ready}"
    );
    assert!(socket.exists());
    assert_eq!(served_leaf(&addr, "web.test", &[&der1]).await, der1);

    // A renewed certificate: SIGHUP serves it to new handshakes; the daemon keeps running.
    let (cert2, key2, der2) = self_signed("web.test");
    write(&cert_path, &cert2);
    write(&key_path, &key2);
    daemon.signal("HUP");
    let reloading = daemon.next_notification();
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let ready = daemon.next_notification();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(daemon.still_running(), "SIGHUP ended the daemon");
    assert_eq!(served_leaf(&addr, "web.test", &[&der1, &der2]).await, der2);
    assert!(daemon.wait_for_log("certificate reloaded: new certificate"));

    // A broken key: the last good certificate stays, and the log names route and file.
    write(
        &key_path,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    daemon.signal("HUP");
    assert!(daemon.next_notification().contains("RELOADING=1"));
    assert!(daemon.next_notification().contains("READY=1"));
    assert!(
        daemon.still_running(),
        "a broken certificate ended the daemon"
    );
    assert_eq!(served_leaf(&addr, "web.test", &[&der1, &der2]).await, der2);
    let line = daemon.log_line("keeping the certificate loaded before");
    assert!(line.contains("web.test"), "{line}");
    assert!(
        line.contains(&key_path.display().to_string()),
        "the line names the file: {line}"
    );

    // SIGTERM: STOPPING=1, a clean exit, the admin socket removed.
    daemon.signal("TERM");
    let stopping = daemon.next_notification();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit {status:?}\n{}", daemon.log_text());
    assert!(!socket.exists(), "admin socket left behind");
    assert!(
        daemon
            .log_text()
            .contains("SIGTERM: shutting down gracefully")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notify_socket_it_serves_and_sighup_does_not_kill_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_listener(&dir);
    let config_path = dir.path().join("mc-proxy.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mc-proxy"))
        .arg("--config")
        .arg(&config_path)
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let mut wait_for = |needle: &str| {
        for line in lines.by_ref() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return;
            }
        }
        panic!("the daemon ended before logging {needle:?}:\n{seen}");
    };
    wait_for("listening");
    // Transparent huge pages are off for the daemon (main.rs: an idle connection would
    // otherwise fault its allocator's memory in 2 MiB at a time).
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    if let Some(thp) = status.lines().find_map(|l| l.strip_prefix("THP_enabled:")) {
        assert_eq!(thp.trim(), "0", "THP is on for the daemon");
    }
    let pid = child.id().to_string();
    let kill = |sig: &str| {
        assert!(
            Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(&pid)
                .status()
                .unwrap()
                .success()
        )
    };
    kill("HUP");
    wait_for("SIGHUP: reloaded 0 of 0 L7 route(s)");
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP ended the daemon"
    );
    kill("INT");
    wait_for("SIGINT: shutting down gracefully");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        // Past the harness's capture, so that a passing run still says what it did not check.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: systemd-analyze is not installed (apt-get install systemd)"
        );
        return;
    }
    // The unit as shipped, pointed at the binary under test (verify checks ExecStart exists).
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../srv/mc-proxy.service"
    ))
    .unwrap()
    .replace("/usr/local/bin/mc-proxy", env!("CARGO_BIN_EXE_mc-proxy"));
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    // An upgraded process announces MAINPID= before it is the main process.
    assert!(unit.contains("\nNotifyAccess=all\n"), "{unit}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mc-proxy.service");
    std::fs::write(&path, unit).unwrap();
    // The socket activation example, next to the service it activates.
    let socket = dir.path().join("mc-proxy.socket");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../srv/mc-proxy.socket"),
        &socket,
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .arg(&socket)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("mc-proxy.service:") && !text.contains("mc-proxy.socket:"),
        "warnings about the units: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_neither_kills_the_daemon_nor_deafens_it_to_sigterm() {
    // A closed SSH session or a killed `| tee`: every log line from now on hits EPIPE.
    let dir = tempfile::tempdir().unwrap();
    let config = one_listener(&dir);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut daemon = Daemon::start_with_stderr(dir, &config, Some(writer), &[]);
    let ready = daemon.next_notification();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    let addr = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=serving "))
        .and_then(|s| s.split([',', ';']).next())
        .unwrap()
        .to_owned();
    // Traffic that logs (a reset at info), a reload (logs), then a graceful stop.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"not tls")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await;
    daemon.signal("HUP");
    assert!(daemon.next_notification().contains("RELOADING=1"));
    assert!(daemon.next_notification().contains("READY=1"));
    assert!(daemon.still_running(), "died with its stderr");
    daemon.signal("TERM");
    assert!(
        daemon.next_notification().contains("STOPPING=1"),
        "SIGTERM was not acted on"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
}

/// The config of the start-up tests: an L7 route `web.test` on `cert`/`key` and an L4 route
/// `plain.test`, on one listener, with the database and the admin socket in `dir`.
fn two_routes(dir: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "[database]\npath = {:?}\n[admin]\nsocket = {:?}\n[proxy]\nshutdown_timeout = \"1s\"\n\
         [[listeners]]\naddr = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nhostname = \"web.test\"\nbackend = \"127.0.0.1:9\"\nmode = \"l7\"\n\
         tls_cert = {:?}\ntls_key = {:?}\n\
         [[listeners.routes]]\nhostname = \"plain.test\"\nbackend = \"127.0.0.1:9\"\n",
        dir.join("mc-proxy.db").display().to_string(),
        dir.join("admin.sock").display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    )
}

/// The first listener address in a READY notification, or a panic with the log.
/// A config with its database in `dir` and one listener on a free port, nothing else.
fn one_listener(dir: &tempfile::TempDir) -> String {
    format!(
        "[database]\npath = {:?}\n[[listeners]]\naddr = \"127.0.0.1:0\"\n",
        dir.path().join("mc-proxy.db").display().to_string(),
    )
}

fn ready_addr(daemon: &Daemon) -> String {
    let ready = daemon.next_notification();
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "{ready}\n{}",
        daemon.log_text()
    );
    ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=serving "))
        .and_then(|s| s.split([',', ';']).next())
        .unwrap_or_else(|| panic!("no listener in {ready}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_certificate_files_fail_never_keeps_the_daemon_from_starting() {
    // First start, seeding an empty database: the certificate is a truncated PEM.
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("web.pem"), dir.path().join("web.key"));
    let (cert, key, _) = self_signed("web.test");
    write(&cert_path, &cert[..cert.len() / 2]);
    write(&key_path, &key);
    let config = two_routes(dir.path(), &cert_path, &key_path);

    // `check` reports it, by file, listener and route, and says the daemon still starts.
    let config_path = dir.path().join("check.toml");
    std::fs::write(&config_path, &config).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_mc-proxy"))
        .args(["check", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(
        said.contains("listener 127.0.0.1:0, route web.test")
            && said.contains("holds no valid PEM certificate")
            && said.contains("the daemon still starts"),
        "{said}"
    );

    let daemon = Daemon::start(dir, &config);
    let addr = ready_addr(&daemon);
    // The other route is served; the broken one is logged and left out.
    let tcp = TcpStream::connect(&addr).await.unwrap();
    drop(tcp);
    let line = daemon.log_line("stored route is invalid and will not be served");
    assert!(line.contains("web.test"), "{line}");

    // Second start on the same database, the file now missing altogether: still starts.
    let dir = daemon.kill_keep_dir();
    std::fs::remove_file(&cert_path).unwrap();
    let daemon = Daemon::start(dir, &config);
    let addr = ready_addr(&daemon);
    TcpStream::connect(&addr).await.unwrap();
    assert!(
        daemon.wait_for_log("were not applied"),
        "{}",
        daemon.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_per_line_with_the_access_fields() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let config = one_listener(&dir);
    let daemon = Daemon::start_with_stderr(dir, &config, None, &["--log-format", "json"]);
    let addr = ready_addr(&daemon);
    // Not TLS: reset, and logged with its outcome.
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a \"quoted\" name\r\n\r\n")
        .await
        .unwrap();
    assert!(
        daemon.wait_for_log("connection closed"),
        "{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    let mut closed = None;
    for line in log.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        assert!(
            value["timestamp"].is_string() && value["level"].is_string(),
            "{line}"
        );
        if value["message"] == "connection closed" {
            closed = Some(value);
        }
    }
    let closed = closed.expect("the access line");
    assert_eq!(closed["outcome"], "not_tls", "{closed}");
    assert_eq!(closed["level"], "INFO", "{closed}");
    assert_eq!(closed["target"], "mc_proxy::access", "{closed}");
    assert_eq!(
        closed["error"], "client hello: not a TLS handshake",
        "{closed}"
    );
    // The line says who, on which listener, itself: no span object repeating it, and no
    // field that says nothing (no route, no SNI, no backend, the peer is the client).
    assert!(closed["conn"].is_u64(), "{closed}");
    assert_eq!(closed["listener"].as_str(), Some(addr.as_str()), "{closed}");
    assert!(
        closed["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{closed}"
    );
    for absent in ["span", "peer", "route", "sni", "backend"] {
        assert!(closed.get(absent).is_none(), "{absent}: {closed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_line_parses_as_logfmt_in_the_text_format() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let config = one_listener(&dir);
    let daemon = Daemon::start_with_stderr(dir, &config, None, &[]);
    let addr = ready_addr(&daemon);
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let line = daemon.log_line("connection closed");
    // Written outside the connection's span: no `conn{...}:` prefix, so the whole line is
    // logfmt, the timestamp, level, target and message first as bare words.
    let pairs = parse_logfmt(&line).unwrap_or_else(|e| panic!("not logfmt ({e}): {line}"));
    let bare: Vec<&str> = pairs
        .iter()
        .take_while(|(_, v)| v.is_none())
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        bare[1..],
        ["INFO", "mc_proxy::access:", "connection", "closed"],
        "{line}"
    );
    let fields: HashMap<&str, &str> = pairs
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_deref()?)))
        .collect();
    assert_eq!(fields["listener"], addr, "{line}");
    assert!(fields["client"].starts_with("127.0.0.1:"), "{line}");
    assert_eq!(fields["outcome"], "not_tls", "{line}");
    assert_eq!(
        fields["error"], "client hello: not a TLS handshake",
        "{line}"
    );
    // conn, listener, client, bytes_up, bytes_down, duration_ms, outcome, error: nothing
    // that would be empty (no route, SNI or backend; the peer is the client).
    assert_eq!(fields.len(), 8, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_answers_through_the_drain_and_goes_with_the_last_connection() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let config = format!(
        "[database]\npath = {:?}\n[admin]\nsocket = {:?}\n[proxy]\nshutdown_timeout = \"2s\"\n\
         [[listeners]]\naddr = \"127.0.0.1:0\"\n",
        dir.path().join("mc-proxy.db").display().to_string(),
        socket.display().to_string(),
    );
    let mut daemon = Daemon::start(dir, &config);
    let addr = ready_addr(&daemon);
    // A connection that never finishes its ClientHello: the drain waits for it until the
    // grace period ends.
    let _held = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    daemon.signal("TERM");
    assert!(daemon.next_notification().contains("STOPPING=1"));
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Mid-drain: the admin API still answers. The connection is kept open and silent: an
    // admin client that never leaves must not keep the daemon from exiting either.
    let admin = tokio::net::UnixStream::connect(&socket).await;
    assert!(
        admin.is_ok(),
        "admin socket gone during the drain: {admin:?}\n{}",
        daemon.log_text()
    );
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(stopped.elapsed() < Duration::from_secs(10), "no exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "exited after {took:?}, before the 2 s grace period ended"
    );
    assert!(
        took < Duration::from_secs(6),
        "exited after {took:?}: the silent admin client held it up"
    );
    drop(admin);
    assert!(!socket.exists(), "admin socket left behind");
    // One grace-over line for the daemon, however many workers it has.
    let log = daemon.log_text();
    assert_eq!(
        log.matches("shutdown grace period over").count(),
        1,
        "{log}"
    );
}

/// How long the daemon at `addr` lets a client that sends nothing stay: until its reset.
fn silent_client_lasts(addr: &str) -> Duration {
    use std::io::Read;
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 16];
    let err = stream
        .read(&mut buf)
        .expect_err("the proxy answered a client that sent nothing");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_changed_timeout_to_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let config = |hello: &str| {
        format!(
            "[database]\npath = {:?}\n[proxy]\nshutdown_timeout = \"1s\"\n\
             client_hello_timeout = \"{hello}\"\n[[listeners]]\naddr = \"127.0.0.1:0\"\n",
            dir.path().join("mc-proxy.db").display().to_string(),
        )
    };
    let (before, after) = (config("3s"), config("300ms"));
    let path = dir.path().join("mc-proxy.toml");
    let daemon = Daemon::start(dir, &before);
    let addr = ready_addr(&daemon);
    let lasted = silent_client_lasts(&addr);
    assert!(
        lasted >= Duration::from_millis(2800) && lasted < Duration::from_secs(10),
        "before the change a silent client lasted {lasted:?}"
    );

    write(&path, &after);
    daemon.signal("HUP");
    assert!(
        daemon.wait_for_log("client_hello_timeout: 3s -> 300ms"),
        "{}",
        daemon.log_text()
    );
    let lasted = silent_client_lasts(&addr);
    assert!(
        lasted >= Duration::from_millis(250) && lasted < Duration::from_millis(2500),
        "after SIGHUP a silent client lasted {lasted:?}"
    );
}

/// Who did what: every admin change's log lines carry `change{id=N by="uid U pid P (name)"}`
/// with the socket peer the kernel names, a refused change is logged too, and a SIGHUP's
/// reload says it came from the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_are_logged_with_the_caller_and_a_change_id() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let config = format!(
        "[database]\npath = {:?}\n[admin]\nsocket = {:?}\n[proxy]\nshutdown_timeout = \"1s\"\n\
         [[listeners]]\naddr = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nhostname = \"a.test\"\nbackend = \"127.0.0.1:9\"\n",
        dir.path().join("mc-proxy.db").display().to_string(),
        socket.display().to_string(),
    );
    let daemon = Daemon::start(dir, &config);
    ready_addr(&daemon);
    let mut admin = mc_proxy_shared::client::AdminClient::connect(&socket)
        .await
        .unwrap();
    admin.remove_route("127.0.0.1:0", "a.test").await.unwrap();
    admin
        .remove_route("127.0.0.1:0", "nope.test")
        .await
        .unwrap_err();
    assert!(
        daemon.wait_for_log("change refused"),
        "{}",
        daemon.log_text()
    );

    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let me = format!("by=\"uid {uid} pid {} (", std::process::id());
    let log = daemon.log_text();
    let removed = log.lines().find(|l| l.contains("route removed")).unwrap();
    assert!(
        removed.contains("change{id=1 ") && removed.contains(&me),
        "{removed}"
    );
    let refused = log.lines().find(|l| l.contains("change refused")).unwrap();
    assert!(
        refused.contains("change{id=2 ") && refused.contains("no route \"nope.test\""),
        "{refused}"
    );

    daemon.signal("HUP");
    assert!(
        daemon.wait_for_log("SIGHUP: reloaded"),
        "{}",
        daemon.log_text()
    );
    assert!(
        daemon.log_text().contains("by=\"SIGHUP\""),
        "{}",
        daemon.log_text()
    );
}

// ---- The per-request access log (`mc_proxy::request`), in both log formats. ----

/// One parsed logfmt line: its keys in order, with their values (`None`: a bare key).
type Logfmt = Vec<(String, Option<String>)>;

/// A strict logfmt parser (go-logfmt's grammar): keys and bare values are runs of bytes above
/// space other than `=` and `"`; a quoted value takes the escapes `\"`, `\\`, `\n`, `\r`,
/// `\t` and `\uXXXX` and no raw control character; a pair ends at a space or the end of the
/// line. Anything else is an error, not a best guess.
fn parse_logfmt(line: &str) -> Result<Logfmt, String> {
    let plain = |c: char| c > ' ' && c != '=' && c != '"';
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return Ok(out);
        };
        if !plain(first) {
            return Err(format!(
                "unexpected {first:?} where a key starts in {line:?}"
            ));
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek().filter(|c| plain(**c)) {
            key.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            out.push((key, None));
        } else {
            chars.next();
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated quoted value of {key}")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('"') => value.push('"'),
                            Some('\\') => value.push('\\'),
                            Some('n') => value.push('\n'),
                            Some('r') => value.push('\r'),
                            Some('t') => value.push('\t'),
                            Some('u') => {
                                let hex: String = chars.by_ref().take(4).collect();
                                let c = u32::from_str_radix(&hex, 16)
                                    .ok()
                                    .and_then(char::from_u32)
                                    .ok_or_else(|| format!("bad \\u escape in {key}"))?;
                                value.push(c);
                            }
                            other => return Err(format!("bad escape \\{other:?} in {key}")),
                        },
                        Some(c) if c < ' ' => {
                            return Err(format!("raw control character in {key}"));
                        }
                        Some(c) => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek().filter(|c| plain(**c)) {
                    value.push(c);
                    chars.next();
                }
            }
            out.push((key, Some(value)));
        }
        match chars.peek() {
            None | Some(' ') => {}
            Some(c) => return Err(format!("unexpected {c:?} after a pair in {line:?}")),
        }
    }
}

#[test]
fn the_test_logfmt_parser_is_strict() {
    let pairs = parse_logfmt(r#"ts INFO a=1 b="x y" c="q\"\\" d= e"#).unwrap();
    let pairs: Vec<(&str, Option<&str>)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("ts", None),
            ("INFO", None),
            ("a", Some("1")),
            ("b", Some("x y")),
            ("c", Some("q\"\\")),
            ("d", Some("")),
            ("e", None),
        ]
    );
    for bad in [
        r#"a="x"y"#,
        r#"a=x"y"#,
        r#"a="unterminated"#,
        "a=\"raw\nnewline\"",
        r#"a="\u{1b}""#,
        r#"a=b=c"#,
        // A span prefix whose last field is quoted, as the text format writes it.
        r#"conn{route="a"}: x"#,
        r#"=x"#,
    ] {
        assert!(parse_logfmt(bad).is_err(), "accepted {bad:?}");
    }
}

/// A self-signed certificate for all of `names`: (PEM cert, PEM key, DER cert).
fn self_signed_for(names: &[&str]) -> (String, String, Vec<u8>) {
    let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    (
        ck.cert.pem(),
        ck.signing_key.serialize_pem(),
        ck.cert.der().to_vec(),
    )
}

/// Bytes of every answer of [`h1_backend`].
const BACKEND_BODY: usize = 1000;

/// An HTTP/1.1 backend that reads each request's body whole and answers 200 with
/// [`BACKEND_BODY`] bytes.
async fn h1_backend() -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        let body =
                            http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; BACKEND_BODY]));
                        Ok::<_, std::convert::Infallible>(http::Response::new(body))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// Bytes a [`broken_backend`] sends of the body it announced.
const BROKEN_SENT: usize = 10;

/// An HTTP/1.1 backend that announces a 1000-byte body, sends [`BROKEN_SENT`] bytes of it and
/// closes the connection.
async fn broken_backend() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
                answer.extend_from_slice(&[b'y'; BROKEN_SENT]);
                let _ = tcp.write_all(&answer).await;
                // Let the proxy pass those on before the connection goes.
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    addr
}

/// A TLS client connection to `addr` for `sni`, trusting `root`, offering `alpn`.
async fn tls_client(
    addr: &str,
    sni: &'static str,
    root: &[u8],
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    store.add(CertificateDer::from(root.to_vec())).unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(mc_proxy::model::certs::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from(sni).unwrap(), tcp)
        .await
        .unwrap()
}

/// Sends `request` (raw HTTP/1.1, `Connection: close`) and returns the status and the
/// response body's length.
async fn raw_h1(addr: &str, sni: &'static str, root: &[u8], request: &[u8]) -> (u16, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_client(addr, sni, root, b"http/1.1").await;
    tls.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    // The proxy may end the TLS session without close_notify: what was read counts.
    let _ = tls.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head end in {text:?}"));
    (status, answer.len() - head_end - 4)
}

/// What one run of [`access_log_run`] sent: to compare with the lines it logged.
struct Sent {
    /// Listener A and B, as bound.
    a: String,
    b: String,
    live: std::net::SocketAddr,
    broken: std::net::SocketAddr,
    dead: [std::net::SocketAddr; 2],
    h1_body_out: usize,
    misdirected_body_out: usize,
    dead_body_out: usize,
    h2_body_in: usize,
}

/// The request path sent over HTTP/1.1: a quote, `=`, a backslash, a `%20` and raw UTF-8
/// (`é`; a target that is not UTF-8 is refused by hyper with a 400 before any route sees it).
const H1_PATH: &[u8] = b"/h1/\"q\"=v\\w%20?x=\xc3\xa9";
/// The same as the access line shows it.
const H1_PATH_LOGGED: &str = "/h1/\"q\"=v%5Cw%20?x=%C3%A9";
/// The HTTP/2 path: quotes, `=`, `{`.
const H2_PATH: &str = "/h2/\"a b\"=c{d}";
/// How HTTP/2's `:path` arrives (the client percent-encodes nothing; the space is not a
/// valid URI character, so it is sent encoded).
const H2_PATH_SENT: &str = "/h2/\"a%20b\"=c{d}";

/// Starts a daemon with `format`: listener A (access_log off) with `web.test` (route flag
/// on, a live HTTP/1.1 backend), `dead.test` (flag on, two dead members) and `quiet.test`
/// (flag off); listener B (access_log on) with `quiet.test` (flag off). Sends one request
/// of each kind and returns the log's request lines, once all of them were written.
async fn access_log_run(format: &str) -> (Vec<String>, Sent) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = self_signed_for(&["web.test", "dead.test", "quiet.test", "broken.test"]);
    let (cert_path, key_path) = (dir.path().join("web.pem"), dir.path().join("web.key"));
    write(&cert_path, &cert);
    write(&key_path, &key);
    let live = h1_backend().await;
    let broken = broken_backend().await;
    // Two addresses that refuse connections: bound, then closed.
    let dead = [0, 1].map(|_| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    });
    let l7 = |host: &str, backends: &str, log: bool| {
        format!(
            "[[listeners.routes]]\nhostname = \"{host}\"\nbackends = [{backends}]\n\
             mode = \"l7\"\nbackend_protocol = \"http1\"\naccess_log = {log}\n\
             tls_cert = {:?}\ntls_key = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string(),
        )
    };
    let config = format!(
        "[database]\npath = {:?}\n[proxy]\nworkers = 1\n\
         [[listeners]]\naddr = \"127.0.0.1:0\"\n{}{}{}{}\
         [[listeners]]\naddr = \"127.0.0.2:0\"\naccess_log = true\n{}",
        dir.path().join("mc-proxy.db").display().to_string(),
        l7("web.test", &format!("\"{live}\""), true),
        l7(
            "dead.test",
            &format!("\"{}\", \"{}\"", dead[0], dead[1]),
            true
        ),
        l7("quiet.test", &format!("\"{live}\""), false),
        l7("broken.test", &format!("\"{broken}\""), true),
        l7("quiet.test", &format!("\"{live}\""), false),
    );
    let daemon = Daemon::start_with_stderr(dir, &config, None, &["--log-format", format]);
    let ready = daemon.next_notification();
    let listening: Vec<String> = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=serving "))
        .and_then(|s| s.split(';').next())
        .unwrap_or_else(|| panic!("no listeners in {ready}\n{}", daemon.log_text()))
        .split(", ")
        .map(str::to_owned)
        .collect();
    let a = &listening
        .iter()
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap()
        .clone();
    let b = &listening
        .iter()
        .find(|l| l.starts_with("127.0.0.2:"))
        .unwrap()
        .clone();

    // HTTP/1.1, an adversarial path and a body.
    let mut request = b"POST ".to_vec();
    request.extend_from_slice(H1_PATH);
    request.extend_from_slice(
        b" HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    let (status, h1_body_out) = raw_h1(a, "web.test", &der, &request).await;
    assert_eq!(status, 200, "{}", daemon.log_text());
    assert_eq!(h1_body_out, BACKEND_BODY);

    // A Host with a quote: misdirected (421), logged with the host as sent.
    let (status, misdirected_body_out) = raw_h1(
        a,
        "web.test",
        &der,
        b"GET / HTTP/1.1\r\nHost: web.test\"x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 421);

    // Both members dead: 502 after trying each.
    let (status, dead_body_out) = raw_h1(
        a,
        "dead.test",
        &der,
        b"GET /dead HTTP/1.1\r\nHost: dead.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 502);

    // The backend's body breaks off after a few bytes: the client gets those, and the line
    // says the response failed.
    let (status, broken_body_out) = raw_h1(
        a,
        "broken.test",
        &der,
        b"GET /broken HTTP/1.1\r\nHost: broken.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(broken_body_out, BROKEN_SENT);

    // Route flag off, listener flag off: no line. Listener flag on: a line.
    for addr in [a, b] {
        let (status, _) = raw_h1(
            addr,
            "quiet.test",
            &der,
            b"GET /quiet HTTP/1.1\r\nHost: quiet.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200);
    }

    // HTTP/2, with a body.
    let h2_body_in = 3000;
    let tls = tls_client(a, "web.test", &der, b"h2").await;
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("https://web.test{H2_PATH_SENT}"))
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).unwrap();
    send.send_data(bytes::Bytes::from(vec![b'u'; h2_body_in]), true)
        .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        got += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    assert_eq!(got, BACKEND_BODY);
    drop(client);

    // Six requests logged (the quiet one on listener A is not).
    let request_lines = || -> Vec<String> {
        daemon
            .log_text()
            .lines()
            .filter(|l| l.contains("mc_proxy::request"))
            .map(str::to_owned)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while request_lines().len() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A moment more: a seventh line would be the one that must not be there.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = request_lines();
    (
        lines,
        Sent {
            a: a.clone(),
            b: b.clone(),
            live,
            broken,
            dead,
            h1_body_out,
            misdirected_body_out,
            dead_body_out,
            h2_body_in,
        },
    )
}

/// The fields every request line has, as text, whatever the format. `backend`, `retries` and
/// `error` are written only when they carry something.
const REQUEST_FIELDS: [&str; 12] = [
    "conn",
    "listener",
    "client",
    "route",
    "method",
    "path",
    "protocol",
    "status",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "outcome",
];

/// The fields a line may leave out when they would be empty or zero.
const OPTIONAL_FIELDS: [&str; 4] = ["host", "backend", "retries", "error"];

/// Checks the request lines of a run, each turned into a map of field to value (numbers as
/// their decimal text).
fn check_request_lines(lines: &[HashMap<String, String>], sent: &Sent, all: &str) {
    assert_eq!(lines.len(), 6, "{all}");
    for line in lines {
        for f in REQUEST_FIELDS {
            assert!(line.contains_key(f), "no {f} in {line:?}");
        }
        for f in OPTIONAL_FIELDS {
            if let Some(v) = line.get(f) {
                assert!(!v.is_empty() && v != "0", "{f} written empty: {line:?}");
            }
        }
        assert!(line["client"].starts_with("127.0.0."), "{line:?}");
        assert!(line["conn"].parse::<u64>().is_ok(), "{line:?}");
    }
    let find = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no line for {path}: {all}"))
    };

    let h1 = find(H1_PATH_LOGGED);
    assert_eq!(h1["route"], "web.test");
    assert!(!h1.contains_key("host"), "the route says it: {h1:?}");
    assert_eq!(h1["method"], "POST");
    assert_eq!(h1["protocol"], "HTTP/1.1");
    assert_eq!(h1["status"], "200");
    assert_eq!(h1["backend"], sent.live.to_string());
    assert!(!h1.contains_key("retries"), "no retry, no field: {h1:?}");
    assert_eq!(h1["bytes_in"], "5");
    assert_eq!(h1["bytes_out"], sent.h1_body_out.to_string());
    assert_eq!(h1["outcome"], "complete");
    assert!(!h1.contains_key("error"), "no error, no field: {h1:?}");
    assert_eq!(h1["listener"], sent.a);

    let misdirected = lines
        .iter()
        .find(|l| l["status"] == "421")
        .unwrap_or_else(|| panic!("no 421: {all}"));
    assert_eq!(misdirected["host"], "web.test\"x");
    assert_eq!(misdirected["path"], "/");
    assert!(
        !misdirected.contains_key("backend"),
        "no backend asked: {misdirected:?}"
    );
    assert_eq!(
        misdirected["bytes_out"],
        sent.misdirected_body_out.to_string()
    );

    let dead = find("/dead");
    assert_eq!(dead["status"], "502");
    assert_eq!(dead["route"], "dead.test");
    assert_eq!(dead["retries"], "1", "both members tried: {dead:?}");
    assert!(
        sent.dead.iter().any(|d| dead["backend"] == d.to_string()),
        "{dead:?}"
    );
    assert_eq!(dead["bytes_out"], sent.dead_body_out.to_string());

    let broken = find("/broken");
    assert_eq!(broken["status"], "200");
    assert_eq!(broken["outcome"], "failed", "{broken:?}");
    assert!(!broken["error"].is_empty(), "{broken:?}");
    assert_eq!(broken["bytes_out"], BROKEN_SENT.to_string());
    assert_eq!(broken["backend"], sent.broken.to_string());

    let quiet = find("/quiet");
    assert_eq!(quiet["listener"], sent.b);
    assert_eq!(quiet["route"], "quiet.test");
    assert_eq!(quiet["status"], "200");

    let h2 = find(H2_PATH_SENT);
    assert_eq!(h2["protocol"], "HTTP/2");
    assert!(!h2.contains_key("host"), "the route says it: {h2:?}");
    assert_eq!(h2["status"], "200");
    assert_eq!(h2["bytes_in"], sent.h2_body_in.to_string());
    assert_eq!(h2["bytes_out"], BACKEND_BODY.to_string());
    assert_eq!(h2["outcome"], "complete");
    assert_eq!(h2["backend"], sent.live.to_string());
    let _ = H2_PATH;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lines_parse_as_logfmt_with_every_field_in_the_text_format() {
    let (lines, sent) = access_log_run("text").await;
    let all = lines.join("\n");
    let mut parsed = Vec::new();
    for line in &lines {
        let pairs = parse_logfmt(line).unwrap_or_else(|e| panic!("not logfmt ({e}): {line}"));
        // The subscriber's timestamp, level, target and message come first, bare; then the
        // fields, each once.
        let bare: Vec<&str> = pairs
            .iter()
            .take_while(|(_, v)| v.is_none())
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(bare.len(), 4, "{line}");
        assert!(
            bare[0].starts_with("20") && bare[0].ends_with('Z'),
            "{line}"
        );
        assert_eq!(
            bare[1..],
            ["INFO", "mc_proxy::request:", "request"],
            "{line}"
        );
        // The `logfmt` crate reads the same pairs, but for the empty values it drops when a
        // pair follows (`a="" b=1`), a bug of its own.
        let theirs: Logfmt = logfmt::parse(line)
            .into_iter()
            .map(|p| (p.key, p.val))
            .collect();
        let ours: Logfmt = pairs
            .iter()
            .enumerate()
            .filter(|(i, (_, v))| v.as_deref() != Some("") || *i + 1 == pairs.len())
            .map(|(_, p)| p.clone())
            .collect();
        assert_eq!(theirs, ours, "{line}");
        let fields: HashMap<String, String> = pairs
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        parsed.push(fields);
    }
    check_request_lines(&parsed, &sent, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lines_are_json_objects_with_numbers_as_numbers() {
    let (lines, sent) = access_log_run("json").await;
    let all = lines.join("\n");
    let mut parsed = Vec::new();
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        assert_eq!(value["target"], "mc_proxy::request", "{line}");
        assert_eq!(value["message"], "request", "{line}");
        assert_eq!(value["level"], "INFO", "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
        // The connection's span would repeat conn, listener, client and route.
        assert!(value.get("span").is_none(), "{line}");
        for n in ["conn", "status", "duration_ms", "bytes_in", "bytes_out"] {
            assert!(value[n].is_u64(), "{n} is not a number: {line}");
        }
        if let Some(retries) = value.get("retries") {
            assert!(retries.is_u64(), "retries is not a number: {line}");
        }
        let fields: HashMap<String, String> = value
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect();
        parsed.push(fields);
    }
    check_request_lines(&parsed, &sent, &all);
}

/// Once the database exists, `check` says the file's listeners are not what runs, and names a
/// listener the database lacks with the command that adds it; the daemon's start says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_added_to_the_file_after_the_database_exists_is_reported_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[database]\npath = {:?}\n[proxy]\nshutdown_timeout = \"1s\"\n\
         [[listeners]]\naddr = \"127.0.0.1:0\"\n",
        dir.path().join("mc-proxy.db").display().to_string(),
    );
    let config_path = dir.path().join("mc-proxy.toml");
    let daemon = Daemon::start(dir, &config);
    ready_addr(&daemon);
    let dir = daemon.kill_keep_dir();

    // The stored listener renamed in the file (a name is fixed once stored), and a new one.
    let renamed = config.replace(
        "addr = \"127.0.0.1:0\"\n",
        "addr = \"127.0.0.1:0\"\nname = \"edge\"\n",
    );
    let edited =
        format!("{renamed}[[listeners]]\naddr = \"127.0.0.7:8443\"\nproxy_protocol = true\n");
    write(&config_path, &edited);
    let check = Command::new(env!("CARGO_BIN_EXE_mc-proxy"))
        .args(["check", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{out}");
    assert!(out.contains("note: the database"), "{out}");
    assert!(
        out.contains("listener 127.0.0.7:8443 in ")
            && out.contains("is not in the database and is not served")
            && out.contains("mcproxyctl listeners add 127.0.0.7:8443 --proxy-protocol"),
        "{out}"
    );
    assert!(!out.contains("listener 127.0.0.1:0 in "), "{out}");
    assert!(
        out.contains("warning: listener 127.0.0.1:0 is named edge in ")
            && out.contains("but 127.0.0.1:0 in the database"),
        "{out}"
    );

    let daemon = Daemon::start(dir, &edited);
    ready_addr(&daemon);
    assert!(
        daemon.wait_for_log("listener 127.0.0.7:8443 in "),
        "{}",
        daemon.log_text()
    );
    assert!(
        daemon.wait_for_log("listener 127.0.0.1:0 is named edge in "),
        "{}",
        daemon.log_text()
    );
}

/// `check` validates `[cluster]`: its files must exist and parse, and a good section is
/// summed up in one line (endpoints, prefix, node name).
#[test]
fn check_validates_the_cluster_section_and_names_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("mc-proxy.toml");
    let check = |text: &str| {
        write(&config_path, text);
        Command::new(env!("CARGO_BIN_EXE_mc-proxy"))
            .args(["check", "--config"])
            .arg(&config_path)
            .output()
            .unwrap()
    };
    let base = format!(
        "[database]\npath = {:?}\n",
        dir.path().join("mc-proxy.db").display().to_string()
    );
    let good = check(&format!(
        "{base}[cluster]\nendpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n\
         name = \"edge-1\"\n"
    ));
    let out = String::from_utf8_lossy(&good.stdout);
    assert_eq!(good.status.code(), Some(0), "{out}");
    assert!(
        out.contains(
            "cluster: etcd http://10.0.0.1:2379,http://10.0.0.2:2379 (prefix /mc-proxy/default, \
             node edge-1)"
        ),
        "{out}"
    );

    let missing = dir.path().join("missing-ca.pem");
    let bad = check(&format!(
        "{base}[cluster]\nendpoints = [\"https://10.0.0.1:2379\"]\nname = \"edge-1\"\n\
         [cluster.tls]\nca = {:?}\n",
        missing.display().to_string()
    ));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert!(
        err.contains("mc-proxy.toml: cluster.tls.ca: ") && err.contains("missing-ca.pem"),
        "{err}"
    );
}

/// An upgraded process (`mc-proxy --upgrade`, a child of the daemon under test, not of the
/// test): killed when the test ends.
struct Upgraded(u32);

impl Drop for Upgraded {
    fn drop(&mut self) {
        if gone(self.0) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(self.0.to_string())
            .status();
    }
}

/// Whether process `pid` has exited (gone, or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Chunks (of 1000 bytes, one per 100 ms) a [`tls_backend`] streams to a client that asks
/// `stream`.
const STREAM_CHUNKS: usize = 30;

/// A TLS server for the L4 route: a client's `stream\n` gets [`STREAM_CHUNKS`] chunks of 1000
/// bytes over 3 s, anything else `pong\n`; then the connection closes.
async fn tls_backend(cert: &str, key: &str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = vec![CertificateDer::from(
        rustls_pki_types::pem::PemObject::from_pem_slice(cert.as_bytes())
            .map(|c: CertificateDer<'static>| c.to_vec())
            .unwrap(),
    )];
    let key = <rustls_pki_types::PrivateKeyDer<'static> as rustls_pki_types::pem::PemObject>::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(mc_proxy::model::certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while !line.ends_with(b"\n") {
                    match tls.read(&mut byte).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => line.push(byte[0]),
                    }
                }
                if line == b"stream\n" {
                    for _ in 0..STREAM_CHUNKS {
                        if tls.write_all(&[b's'; 1000]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                } else {
                    let _ = tls.write_all(b"pong\n").await;
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// An HTTP/1.1 backend: `/slow` answers after 3 s, anything else at once; [`BACKEND_BODY`]
/// bytes each.
async fn slow_h1_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                        }
                        let body =
                            http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; BACKEND_BODY]));
                        Ok::<_, std::convert::Infallible>(http::Response::new(body))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// A TLS connection through the proxy, every failure an error (for counting, not panicking).
async fn try_tls(
    addr: &str,
    sni: &'static str,
    root: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let mut store = rustls::RootCertStore::empty();
    store
        .add(CertificateDer::from(root.to_vec()))
        .map_err(|e| e.to_string())?;
    let mut config =
        rustls::ClientConfig::builder_with_provider(mc_proxy::model::certs::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(store)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    connector
        .connect(ServerName::try_from(sni).map_err(|e| e.to_string())?, tcp)
        .await
        .map_err(|e| format!("{sni} handshake: {e}"))
}

/// One L4 exchange through the proxy (`plain.test`): `line` sent, the whole answer read.
async fn l4_once(addr: &str, root: &[u8], line: &[u8]) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = try_tls(addr, "plain.test", root).await?;
    tls.write_all(line)
        .await
        .map_err(|e| format!("l4 write: {e}"))?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)
        .await
        .map_err(|e| format!("l4 read after {} bytes: {e}", answer.len()))?;
    Ok(answer)
}

/// One L7 request through the proxy (`web.test`, HTTP/1.1, `Connection: close`): its status
/// and body length.
async fn l7_once(addr: &str, root: &[u8], path: &str) -> Result<(u16, usize), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = try_tls(addr, "web.test", root).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("l7 write: {e}"))?;
    let mut answer = Vec::new();
    let read = tls.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("l7: no status in {:?} ({read:?})", clip_text(&text)))?;
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("l7: no head end ({read:?})"))?;
    Ok((status, answer.len() - head_end - 4))
}

/// A keep-alive HTTP/1.1 client: request after request on one connection, a new connection
/// only once an answer said `Connection: close`, until `stop`. (answered, reconnections,
/// failures).
async fn keepalive_client(
    addr: String,
    root: Vec<u8>,
    stop: tokio_util::sync::CancellationToken,
) -> (usize, usize, Vec<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ok, mut reconnects, mut failed) = (0, 0, Vec::new());
    let mut conn: Option<tokio_rustls::client::TlsStream<TcpStream>> = None;
    while !stop.is_cancelled() {
        let tls = match &mut conn {
            Some(tls) => tls,
            None => match try_tls(&addr, "web.test", &root).await {
                Ok(tls) => {
                    reconnects += 1;
                    conn.insert(tls)
                }
                Err(e) => {
                    failed.push(e);
                    continue;
                }
            },
        };
        let sent = tls
            .write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
            .await;
        // Head, then the body by its Content-Length.
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let result = async {
            sent.map_err(|e| format!("keep-alive write: {e}"))?;
            loop {
                if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or_else(|| format!("keep-alive: no length in {head:?}"))?;
                    if answer.len() >= end + 4 + len {
                        if !head.starts_with("http/1.1 200") {
                            return Err(format!("keep-alive: {head:?}"));
                        }
                        return Ok(head.contains("connection: close"));
                    }
                }
                match tls.read(&mut buf).await {
                    Ok(0) => {
                        return Err(format!(
                            "keep-alive: closed after {} bytes of an answer",
                            answer.len()
                        ));
                    }
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(e) => return Err(format!("keep-alive read: {e}")),
                }
            }
        }
        .await;
        match result {
            Ok(close) => {
                ok += 1;
                if close {
                    conn = None;
                }
            }
            Err(e) => {
                failed.push(e);
                conn = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (ok, reconnects, failed)
}

/// An HTTP/2 client (ALPN `h2`) sending request after request on one connection, a new one
/// only once the old one is closing (GOAWAY), until `stop`: (answered, connections, requests
/// retried because the server had not processed them, failures).
async fn h2_client(
    addr: String,
    root: Vec<u8>,
    stop: tokio_util::sync::CancellationToken,
) -> (usize, usize, usize, Vec<String>) {
    use http_body_util::BodyExt;
    let (mut ok, mut connections, mut retried, mut failed) = (0, 0, 0, Vec::new());
    let mut sender: Option<
        hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    > = None;
    while !stop.is_cancelled() {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            let connected = async {
                let mut store = rustls::RootCertStore::empty();
                store
                    .add(CertificateDer::from(root.clone()))
                    .map_err(|e| e.to_string())?;
                let mut config =
                    rustls::ClientConfig::builder_with_provider(mc_proxy::model::certs::provider())
                        .with_safe_default_protocol_versions()
                        .map_err(|e| e.to_string())?
                        .with_root_certificates(store)
                        .with_no_client_auth();
                config.alpn_protocols = vec![b"h2".to_vec()];
                let tcp = TcpStream::connect(&addr)
                    .await
                    .map_err(|e| format!("h2 connect: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(ServerName::try_from("web.test").unwrap(), tcp)
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
                let (send, conn) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(tls),
                )
                .await
                .map_err(|e| format!("h2 preface: {e}"))?;
                tokio::spawn(conn);
                Ok::<_, String>(send)
            }
            .await;
            match connected {
                Ok(send) => {
                    connections += 1;
                    sender = Some(send);
                }
                Err(e) => {
                    failed.push(e);
                    continue;
                }
            }
        }
        let Some(send) = sender.as_mut() else {
            continue;
        };
        if send.ready().await.is_err() {
            // Closing (GOAWAY) before this request went out: a new connection, no failure.
            sender = None;
            continue;
        }
        let request = http::Request::get("https://web.test/")
            .body(http_body_util::Empty::new())
            .unwrap();
        match send.try_send_request(request).await {
            Ok(resp) if resp.status() == 200 => {
                match resp.into_body().collect().await.map(|b| b.to_bytes().len()) {
                    Ok(BACKEND_BODY) => ok += 1,
                    Ok(len) => failed.push(format!("h2: a body of {len} bytes")),
                    Err(e) => failed.push(format!("h2 body: {e}")),
                }
            }
            Ok(resp) => failed.push(format!("h2: status {}", resp.status())),
            // Handed back unsent: the connection was going away (GOAWAY) when the request was
            // queued on it. hyper-util's pooled client retries these on a new connection by
            // itself (`retry_canceled_requests`); so does this one.
            Err(e) if e.message().is_some() => {
                retried += 1;
                sender = None;
            }
            // Refused by the server's GOAWAY: a stream above its last-stream-id, which RFC 9113
            // §6.8 says the server did not process and the client may retry. (h2 writes a
            // PING's answer before HEADERS it had queued, so a request created just before
            // the first GOAWAY arrived can reach the server after its final one.)
            Err(e) if refused_by_goaway(e.error()) => {
                retried += 1;
                sender = None;
            }
            Err(e) => {
                failed.push(format!("h2 request: {:?}", e.error()));
                sender = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (ok, connections, retried, failed)
}

/// Whether `e` is HTTP/2's "stream not processed": the peer's GOAWAY (no error) left it out.
fn refused_by_goaway(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|h| {
            h.is_go_away() && h.is_remote() && h.reason() == Some(h2::Reason::NO_ERROR)
        })
}

fn clip_text(text: &str) -> String {
    text.chars().take(200).collect()
}

/// The upgrade tests' config: one listener with the L7 route `web.test` (`l7` backend) and
/// the L4 route `plain.test` (`l4` backend), 2 workers, metrics on, the admin socket in
/// `dir`.
fn upgrade_config(
    dir: &Path,
    cert: &Path,
    key: &Path,
    l7: std::net::SocketAddr,
    l4: std::net::SocketAddr,
) -> String {
    format!(
        "[database]\npath = {:?}\n[admin]\nsocket = {:?}\n[metrics]\naddr = \"127.0.0.1:0\"\n\
         [proxy]\nworkers = 2\nshutdown_timeout = \"20s\"\n\
         [[listeners]]\naddr = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nhostname = \"web.test\"\nbackend = \"{l7}\"\nmode = \"l7\"\n\
         backend_protocol = \"http1\"\ntls_cert = {:?}\ntls_key = {:?}\n\
         [[listeners.routes]]\nhostname = \"plain.test\"\nbackend = \"{l4}\"\n",
        dir.join("mc-proxy.db").display().to_string(),
        dir.join("admin.sock").display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    )
}

/// A daemon on [`upgrade_config`] with its backends; its listener address, the DER of the
/// certificate the backends and the L7 route use, and its metrics address.
async fn upgrade_daemon() -> (Daemon, String, Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = self_signed_for(&["web.test", "plain.test"]);
    let (cert_path, key_path) = (dir.path().join("web.pem"), dir.path().join("web.key"));
    write(&cert_path, &cert);
    write(&key_path, &key);
    let l7 = slow_h1_backend().await;
    let l4 = tls_backend(&cert, &key).await;
    let config = upgrade_config(dir.path(), &cert_path, &key_path, l7, l4);
    let daemon = Daemon::start(dir, &config);
    let ready = daemon.next_notification();
    let addr = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=serving "))
        .and_then(|s| s.split([',', ';']).next())
        .unwrap_or_else(|| panic!("no listener in {ready}\n{}", daemon.log_text()))
        .to_owned();
    let metrics = ready
        .split("metrics on http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in {ready}"))
        .to_owned();
    (daemon, addr, der, metrics)
}

/// `mc-proxy upgrade` on the daemon's config (plus `args`): exit code, stdout, stderr.
fn upgrade_command(daemon: &Daemon, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mc-proxy"))
        .arg("--config")
        .arg(daemon._dir.path().join("mc-proxy.toml"))
        .arg("upgrade")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits up to `limit` for the daemon (the old process) to exit; its status.
async fn exit_of(daemon: &mut Daemon, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "the old process did not exit within {limit:?}:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A datagram on the notify socket, or None within `wait`.
fn notification_within(daemon: &Daemon, wait: Duration) -> Option<String> {
    daemon.notify.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    let got = daemon
        .notify
        .recv(&mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    daemon
        .notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades_repeatedly_under_churn_without_a_failed_connection_and_open_transfers_finish()
 {
    let (mut daemon, addr, der, metrics_addr) = upgrade_daemon().await;
    let old_pid = daemon.child.id();

    // Long transfers, open on the old process before the upgrade.
    let l4_long = {
        let (addr, der) = (addr.clone(), der.clone());
        tokio::spawn(async move { l4_once(&addr, &der, b"stream\n").await })
    };
    let l7_long = {
        let (addr, der) = (addr.clone(), der.clone());
        tokio::spawn(async move { l7_once(&addr, &der, "/slow").await })
    };
    // Churn: two L4 and two L7 clients, each opening connection after connection.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut churners = Vec::new();
    for kind in ["l4", "l4", "l7", "l7"] {
        let (addr, der, stop) = (addr.clone(), der.clone(), stop.clone());
        churners.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.is_cancelled() {
                let result = match kind {
                    "l4" => l4_once(&addr, &der, b"ping\n").await.and_then(|a| {
                        (a == b"pong\n")
                            .then_some(())
                            .ok_or_else(|| format!("l4 answer {a:?}"))
                    }),
                    _ => l7_once(&addr, &der, "/").await.and_then(|(status, len)| {
                        (status == 200 && len == BACKEND_BODY)
                            .then_some(())
                            .ok_or_else(|| format!("l7 answer {status}, {len} bytes"))
                    }),
                };
                match result {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        }));
    }
    // Two keep-alive clients: their connections to the old process go idle between requests.
    let keepalive: Vec<_> = (0..2)
        .map(|_| tokio::spawn(keepalive_client(addr.clone(), der.clone(), stop.clone())))
        .collect();
    let h2 = tokio::spawn(h2_client(addr.clone(), der.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;

    daemon.signal("USR2");
    // The new process announces itself: MAINPID and READY=1 in one datagram.
    let announced = tokio::task::block_in_place(|| daemon.next_notification());
    let new_pid: u32 = announced
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no MAINPID in {announced:?}\n{}", daemon.log_text()));
    let _new = Upgraded(new_pid);
    assert_ne!(new_pid, old_pid);
    assert!(announced.lines().any(|l| l == "READY=1"), "{announced}");

    // The transfers opened before finish whole, on the old process, which drains them.
    let l4 = l4_long.await.unwrap();
    assert_eq!(
        l4.as_ref().map(Vec::len),
        Ok(STREAM_CHUNKS * 1000),
        "{}",
        daemon.log_text()
    );
    assert_eq!(
        l7_long.await.unwrap(),
        Ok((200, BACKEND_BODY)),
        "{}",
        daemon.log_text()
    );
    let status = exit_of(&mut daemon, Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}\n{}", daemon.log_text());
    // Churn goes on past the old process's exit: the new one serves everything, and is
    // upgraded in turn, twice (each new process the child of the one before).
    let mut current = _new;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = Command::new("kill")
            .arg("-USR2")
            .arg(current.0.to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let announced = tokio::task::block_in_place(|| daemon.next_notification());
        let next: u32 = announced
            .lines()
            .find_map(|l| l.strip_prefix("MAINPID="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no MAINPID in {announced:?}\n{}", daemon.log_text()));
        assert_ne!(next, current.0);
        let previous = std::mem::replace(&mut current, Upgraded(next));
        // The previous process drains (nothing long is open) and exits.
        let started = Instant::now();
        while !gone(previous.0) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "process {} did not exit after its upgrade\n{}",
                previous.0,
                daemon.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Exited: nothing to kill, and its pid may be another process's one day.
        std::mem::forget(previous);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let (mut ok, mut failed) = (0, Vec::new());
    for c in churners {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    // Each keep-alive connection was closed by a `Connection: close` answer, never under a
    // request: one reconnection per upgrade at most, and none failed.
    for k in keepalive {
        let (answered, reconnects, f) = k.await.unwrap();
        assert!(answered > 50 && reconnects >= 2, "{answered} {reconnects}");
        ok += answered;
        failed.extend(f);
    }
    // The HTTP/2 client moved to a new connection at each GOAWAY, between its requests.
    let (answered, connections, h2_retried, f) = h2.await.unwrap();
    assert!(
        answered > 50 && connections >= 2,
        "{answered} {connections}"
    );
    ok += answered;
    failed.extend(f);
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {:?}\n{}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(10)],
        daemon.log_text()
    );
    assert!(ok > 100, "only {ok} connections: no churn to speak of");
    let _ = writeln!(
        std::io::stderr(),
        "{ok} connections and requests through the upgrades, none failed ({h2_retried} HTTP/2 \
         requests retried, not processed by the server that sent GOAWAY)"
    );

    // The new process answers on every socket: traffic, /metrics, the admin socket.
    assert_eq!(
        l4_once(&addr, &der, b"ping\n").await,
        Ok(b"pong\n".to_vec())
    );
    let metrics = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = TcpStream::connect(&metrics_addr).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        tcp.read_to_string(&mut text).await.unwrap();
        text
    };
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let socket = daemon._dir.path().join("admin.sock");
    let mut admin = mc_proxy_shared::client::AdminClient::connect(&socket)
        .await
        .unwrap();
    let status = admin.status().await.unwrap();
    assert_eq!(status.listeners.len(), 1);
    // The admin status names the process that answers: the last one started.
    assert_eq!(status.pid, Some(current.0));
    assert!(
        socket.exists() && socket.with_extension("sock.upgrade").exists(),
        "the old process removed the socket files it handed over"
    );
    let log = daemon.log_text();
    assert!(
        log.contains(&format!(
            "upgrade: process {new_pid} serves in this one's place"
        )),
        "{log}"
    );
    assert!(!log.contains("shutdown grace period over"), "{log}");
    // The old process sent no STOPPING=1: systemd would stop the unit, new process included.
    while let Some(more) = notification_within(&daemon, Duration::from_millis(300)) {
        assert!(!more.contains("STOPPING=1"), "{more}");
    }
}

/// An L4 route for the admin-write tests.
fn l4_route(hostname: &str) -> mc_proxy_shared::Route {
    mc_proxy_shared::Route {
        hostname: hostname.into(),
        backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9")],
        ..mc_proxy_shared::Route::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_running_daemon_serving_and_writable() {
    let (mut daemon, addr, der, _) = upgrade_daemon().await;
    let socket = daemon._dir.path().join("admin.sock");

    // A binary that exits at once: refused before anything was handed over.
    let (code, out, err) =
        tokio::task::block_in_place(|| upgrade_command(&daemon, &["--binary", "/bin/false"]));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("upgrade failed, the running daemon serves on")
            && err.contains("/bin/false")
            && err.contains("exited before taking over"),
        "{err}"
    );
    assert!(daemon.still_running());
    assert_eq!(
        l4_once(&addr, &der, b"ping\n").await,
        Ok(b"pong\n".to_vec())
    );
    assert_eq!(l7_once(&addr, &der, "/").await, Ok((200, BACKEND_BODY)));
    let mut admin = mc_proxy_shared::client::AdminClient::connect(&socket)
        .await
        .unwrap();
    admin
        .add_route("127.0.0.1:0", l4_route("one.test"))
        .await
        .unwrap();

    // A new process that takes the sockets and the database release, then cannot open the
    // database: the old process takes its database back.
    let dir = daemon._dir.path();
    let broken = dir.join("broken.toml");
    std::fs::write(
        &broken,
        format!(
            "[database]\npath = {:?}\n[admin]\nsocket = {:?}\n",
            dir.join("no-such-dir/mc-proxy.db").display().to_string(),
            socket.display().to_string()
        ),
    )
    .unwrap();
    let script = dir.join("new-mc-proxy");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec {} --config {} --upgrade\n",
            env!("CARGO_BIN_EXE_mc-proxy"),
            broken.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (code, out, err) = tokio::task::block_in_place(|| {
        upgrade_command(&daemon, &["--binary", script.to_str().unwrap()])
    });
    assert_eq!(code, Some(1), "{out}{err}\n{}", daemon.log_text());
    assert!(err.contains("upgrade failed"), "{err}");
    assert!(
        daemon.wait_for_log("database reopened, admin writes taken again"),
        "{}",
        daemon.log_text()
    );
    assert!(daemon.still_running());
    // Untouched: serving, every socket still its own, writable, the earlier write kept.
    for _ in 0..20 {
        assert_eq!(
            l4_once(&addr, &der, b"ping\n").await,
            Ok(b"pong\n".to_vec())
        );
        assert_eq!(l7_once(&addr, &der, "/").await, Ok((200, BACKEND_BODY)));
    }
    let mut admin = mc_proxy_shared::client::AdminClient::connect(&socket)
        .await
        .unwrap();
    admin
        .add_route("127.0.0.1:0", l4_route("two.test"))
        .await
        .unwrap();
    let routes: Vec<String> = admin
        .list_routes(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.route.hostname)
        .collect();
    assert!(
        routes.contains(&"one.test".to_owned()) && routes.contains(&"two.test".to_owned()),
        "{routes:?}"
    );
    let log = daemon.log_text();
    assert_eq!(
        log.matches("upgrade failed, serving on as before").count(),
        2,
        "{log}"
    );
    // And a real upgrade still goes through afterwards.
    let (code, out, err) = tokio::task::block_in_place(|| upgrade_command(&daemon, &[]));
    assert_eq!(code, Some(0), "{out}{err}\n{}", daemon.log_text());
    let pid: u32 = out
        .split("process ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"));
    let _new = Upgraded(pid);
    assert!(
        exit_of(&mut daemon, Duration::from_secs(10))
            .await
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_write_during_an_upgrade_is_stored_or_refused_never_lost() {
    let (mut daemon, _addr, _der, _) = upgrade_daemon().await;
    let socket = daemon._dir.path().join("admin.sock");
    let stop = tokio_util::sync::CancellationToken::new();
    // A client adding route after route, reconnecting when its connection goes.
    let writer = {
        let (socket, stop) = (socket.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut refused, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
            let mut client = None;
            let mut i = 0;
            while !stop.is_cancelled() {
                let admin = match &mut client {
                    Some(admin) => admin,
                    None => match mc_proxy_shared::client::AdminClient::connect(&socket).await {
                        Ok(admin) => client.insert(admin),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                    },
                };
                i += 1;
                let name = format!("w{i}.test");
                match admin.add_route("127.0.0.1:0", l4_route(&name)).await {
                    Ok(_) => acked.push(name),
                    Err(mc_proxy_shared::client::ClientError::Rpc(status))
                        if status.code() == tonic::Code::Unavailable =>
                    {
                        assert!(
                            status
                                .message()
                                .contains("handing over to its upgraded process"),
                            "{status:?}"
                        );
                        refused.push(name);
                    }
                    // The connection went with the old process's admin API: not acknowledged.
                    Err(_) => {
                        unknown.push(name);
                        client = None;
                    }
                }
            }
            (acked, refused, unknown)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, out, err) = tokio::task::block_in_place(|| upgrade_command(&daemon, &[]));
    assert_eq!(code, Some(0), "{out}{err}\n{}", daemon.log_text());
    let pid: u32 = out
        .split("process ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"));
    let _new = Upgraded(pid);
    assert!(
        exit_of(&mut daemon, Duration::from_secs(10))
            .await
            .success()
    );
    let before_stop = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let (acked, refused, unknown) = writer.await.unwrap();
    assert!(before_stop.elapsed() >= Duration::from_millis(300));

    // Only the new process answers now: every acknowledged write is in its database.
    let mut admin = mc_proxy_shared::client::AdminClient::connect(&socket)
        .await
        .unwrap();
    let stored: std::collections::HashSet<String> = admin
        .list_routes(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.route.hostname)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged and lost: {lost:?}\n{}",
        daemon.log_text()
    );
    // A refused write changed nothing.
    for name in &refused {
        assert!(!stored.contains(name), "{name} was refused and stored");
    }
    assert!(acked.len() > 20, "too few writes: {}", acked.len());
    let _ = writeln!(
        std::io::stderr(),
        "{} writes acknowledged and stored, {} refused during the handover, {} cut with the old \
         process's connection",
        acked.len(),
        refused.len(),
        unknown.len()
    );
}

impl Daemon {
    /// The daemon on `config` under `systemd-socket-activate` listening on `listen` with the
    /// descriptor name `fdname` (the activator execs the daemon at the first connection).
    fn start_activated(dir: tempfile::TempDir, config: &str, listen: &str, fdname: &str) -> Daemon {
        let config_path = dir.path().join("mc-proxy.toml");
        std::fs::write(&config_path, config).unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut child = Command::new("systemd-socket-activate")
            .arg("--listen")
            .arg(listen)
            .arg(format!("--fdname={fdname}"))
            .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
            .arg("--setenv=RUST_LOG=info")
            .arg(env!("CARGO_BIN_EXE_mc-proxy"))
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Daemon {
            child,
            log,
            notify,
            _dir: dir,
        }
    }
}

/// A loopback port nothing listens on (bound, then closed: the activator binds it next).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_the_named_listener_on_the_passed_socket_and_refuses_a_stray_one()
{
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: systemd-socket-activate is not installed (apt-get install systemd)"
        );
        return;
    }
    let config = |dir: &Path, l4: std::net::SocketAddr| {
        format!(
            "[database]\npath = {:?}\n[proxy]\nworkers = 2\nshutdown_timeout = \"1s\"\n\
             [[listeners]]\naddr = \"127.0.0.2:0\"\nname = \"web\"\n\
             [[listeners.routes]]\nhostname = \"plain.test\"\nbackend = \"{l4}\"\n\
             [[listeners]]\naddr = \"127.0.0.1:0\"\n",
            dir.join("mc-proxy.db").display().to_string(),
        )
    };
    let (cert, key, der) = self_signed_for(&["plain.test"]);
    let l4 = tls_backend(&cert, &key).await;

    // The socket named "web" is listener web's, whatever its configured address says.
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), l4);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut daemon = Daemon::start_activated(dir, &text, &listen, "web");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The first connection starts the daemon, and waits in the socket's backlog meanwhile.
    assert_eq!(
        l4_once(&listen, &der, b"ping\n").await,
        Ok(b"pong\n".to_vec()),
        "{}",
        daemon.log_text()
    );
    let ready = tokio::task::block_in_place(|| daemon.next_notification());
    assert!(ready.contains("READY=1"), "{ready}");
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=serving "))
        .unwrap_or_else(|| panic!("{ready}"));
    // Both listeners: web on the passed socket, the other bound by the daemon.
    assert!(
        status.starts_with(&format!("{listen}, 127.0.0.1:")),
        "{status}"
    );
    for _ in 0..20 {
        assert_eq!(
            l4_once(&listen, &der, b"ping\n").await,
            Ok(b"pong\n".to_vec())
        );
    }
    assert!(
        daemon
            .log_text()
            .contains("socket activation: 1 listening socket(s)")
    );
    daemon.signal("TERM");
    assert!(
        exit_of(&mut daemon, Duration::from_secs(10))
            .await
            .success()
    );

    // A socket no listener takes (its name matches none, nor does its address): no start.
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), l4);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut daemon = Daemon::start_activated(dir, &text, &listen, "nope");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _trigger = TcpStream::connect(&listen).await.unwrap();
    let status = exit_of(&mut daemon, Duration::from_secs(10)).await;
    assert!(!status.success());
    let log = daemon.log_text();
    assert!(
        log.contains("socket activation: inherited socket(s) match no listener")
            && log.contains(&format!("listening socket {listen} (name nope)")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_may_change_the_worker_count_and_serves_on_the_sockets_it_received() {
    let (mut daemon, addr, der, _) = upgrade_daemon().await;
    let config_path = daemon._dir.path().join("mc-proxy.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();
    assert!(text.contains("workers = 2"));
    let mut current: Option<Upgraded> = None;
    // 2 sockets for 3 workers (one shared), then those for 1 worker (it takes them all).
    for workers in [3, 1] {
        // The new process reads the config as it is now, [proxy] workers included.
        std::fs::write(
            &config_path,
            text.replace("workers = 2", &format!("workers = {workers}")),
        )
        .unwrap();
        let old = current.as_ref().map_or(daemon.child.id(), |u| u.0);
        let status = Command::new("kill")
            .arg("-USR2")
            .arg(old.to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let announced = tokio::task::block_in_place(|| daemon.next_notification());
        let pid: u32 = announced
            .lines()
            .find_map(|l| l.strip_prefix("MAINPID="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no MAINPID in {announced:?}\n{}", daemon.log_text()));
        assert!(
            announced.contains(&format!("; {workers} data-plane thread(s)")),
            "{announced}"
        );
        let previous = current.replace(Upgraded(pid));
        match previous {
            None => assert!(
                exit_of(&mut daemon, Duration::from_secs(10))
                    .await
                    .success()
            ),
            Some(previous) => {
                let started = Instant::now();
                while !gone(previous.0) {
                    assert!(started.elapsed() < Duration::from_secs(10), "no exit");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                std::mem::forget(previous);
            }
        }
        // Only the new process is left: every connection lands on a socket it accepts on.
        for _ in 0..30 {
            assert_eq!(
                l4_once(&addr, &der, b"ping\n").await,
                Ok(b"pong\n".to_vec())
            );
            assert_eq!(l7_once(&addr, &der, "/").await, Ok((200, BACKEND_BODY)));
        }
    }
    let log = daemon.log_text();
    assert!(
        log.contains("listening on inherited sockets") && log.contains("sockets=2 workers=3"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_added_and_one_removed_at_run_time_are_handed_over_as_they_are() {
    let (mut daemon, _addr, _der, _) = upgrade_daemon().await;
    let socket = daemon._dir.path().join("admin.sock");
    let mut admin = mc_proxy_shared::client::AdminClient::connect(&socket)
        .await
        .unwrap();
    let added = format!("127.0.0.1:{}", free_port());
    let removed = format!("127.0.0.1:{}", free_port());
    for addr in [&added, &removed] {
        admin.add_listener(addr, false, vec![]).await.unwrap();
    }
    admin.remove_listener(&removed, false).await.unwrap();
    drop(admin);

    let (code, out, err) = tokio::task::block_in_place(|| upgrade_command(&daemon, &[]));
    assert_eq!(code, Some(0), "{out}{err}\n{}", daemon.log_text());
    let pid: u32 = out
        .split("process ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"));
    let _new = Upgraded(pid);
    assert!(
        exit_of(&mut daemon, Duration::from_secs(10))
            .await
            .success()
    );
    // The added listener's sockets came along (not bound anew); the removed one's did not.
    // (The new process writes its log in batches: its line may come a moment later.)
    let needle = format!("listening on inherited sockets listener={added} sockets=2");
    assert!(
        tokio::task::block_in_place(|| daemon.wait_for_log(&needle)),
        "{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    assert!(!log.contains("closing inherited sockets"), "{log}");
    // Only the new process is left, and it accepts on the added listener; the removed
    // listener's port is closed.
    assert!(TcpStream::connect(&added).await.is_ok());
    assert!(TcpStream::connect(&removed).await.is_err());
}
