//! The `mc-proxy` binary as an operator runs it: systemd's readiness protocol on a fake
//! `NOTIFY_SOCKET`, `kill -HUP` with a renewed and with a broken certificate, then `kill -TERM`.
//!
//! Signals are process-wide, so these tests run the real binary rather than `server::run`.

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
    let config = rustls::ClientConfig::builder_with_provider(mc_proxy::certs::provider())
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
    assert!(
        daemon.wait_for_log("keeping the certificate loaded before"),
        "{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("keeping the certificate loaded before"))
        .unwrap();
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
    let config = format!(
        "[database]\npath = {:?}\n[[listeners]]\naddr = \"127.0.0.1:0\"\n",
        dir.path().join("mc-proxy.db").display().to_string(),
    );
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mc-proxy.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
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
        !text.contains("mc-proxy.service:"),
        "warnings about the unit: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_neither_kills_the_daemon_nor_deafens_it_to_sigterm() {
    // A closed SSH session or a killed `| tee`: every log line from now on hits EPIPE.
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[database]\npath = {:?}\n[[listeners]]\naddr = \"127.0.0.1:0\"\n",
        dir.path().join("mc-proxy.db").display().to_string()
    );
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
    assert!(
        daemon.wait_for_log("stored route is invalid and will not be served"),
        "{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("will not be served"))
        .unwrap();
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
    let config = format!(
        "[database]\npath = {:?}\n[[listeners]]\naddr = \"127.0.0.1:0\"\n",
        dir.path().join("mc-proxy.db").display().to_string(),
    );
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
    // The connection's span travels with it: who, on which listener.
    assert!(
        closed["span"]["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{closed}"
    );
    assert!(
        closed["span"]["id"].is_number() || closed["span"]["id"].is_string(),
        "{closed}"
    );
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
