//! PROXY protocol interop with a real peer: HAProxy from Debian's packages, as sender (in front
//! of mc-proxy) and as receiver (behind an mc-proxy route).
//!
//! `.ci/run` installs HAProxy and sets `MCPROXY_REQUIRE_HAPROXY=1`, so in CI a missing HAProxy
//! fails. Elsewhere these tests skip with a message when `haproxy` is not on the PATH.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mc_proxy::protocols::proxyproto::Version;
use mc_proxy_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A HAProxy process running a generated config; killed on drop.
pub(crate) struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
    _port: ReservedPort,
}

impl Haproxy {
    /// Starts HAProxy, or returns `None` (after saying so) when it is not installed.
    /// HAProxy binds `reserved` beside the reservation (both use `SO_REUSEPORT`), which it
    /// keeps until it is killed.
    pub(crate) async fn start(
        dir: tempfile::TempDir,
        config: &str,
        reserved: ReservedPort,
    ) -> Option<Haproxy> {
        let port = reserved.port;
        let installed = Command::new("haproxy")
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            if std::env::var_os("MCPROXY_REQUIRE_HAPROXY").is_some() {
                panic!("MCPROXY_REQUIRE_HAPROXY is set but haproxy is not installed");
            }
            mc_proxy_tests::skipped(
                "haproxy is not installed (apt-get install haproxy to run this test)",
            );
            return None;
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let check = Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy rejected its config:\n{}\n{config}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let haproxy = Haproxy {
            child,
            _dir: dir,
            _port: reserved,
        };
        // Ready when its frontend accepts.
        for _ in 0..500 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Some(haproxy);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("haproxy did not start listening on {port}");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const DEFAULTS: &str = "
defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
";

#[tokio::test]
async fn haproxy_send_proxy_v1_and_v2_reach_mc_proxy_with_the_client_address() {
    let pki = Pki::new();
    for (directive, version) in [("send-proxy-v2", Version::V2), ("send-proxy", Version::V1)] {
        let backend = TlsBackend::start_proxied(&pki, &["a.test"]).await;
        // Only HAProxy (on loopback) may send headers to this listener.
        let proxy = ProxyBuilder::new()
            .proxy_protocol_from(&["127.0.0.1/32"])
            .route("a.test", backend.addr)
            .send_proxy()
            .start()
            .await;
        // HAProxy needs a port number in its config: one held until HAProxy has it.
        let reserved = ReservedPort::new();
        let port = reserved.port;
        let config = format!(
            "{DEFAULTS}
frontend fe
    mode tcp
    bind 127.0.0.1:{port}
    default_backend be
backend be
    mode tcp
    server mc {} {directive}
",
            proxy.addr()
        );
        let Some(_haproxy) = Haproxy::start(tempfile::tempdir().unwrap(), &config, reserved).await
        else {
            return;
        };
        let (_guard, logs) = capture_logs();

        let haproxy_addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut c = tls_connect(haproxy_addr, "a.test", pki.client_config())
            .await
            .unwrap_or_else(|e| panic!("{directive}: {e}"));
        let me = client_addr(&c);
        let answer = send_and_finish(&mut c, b"through haproxy").await.unwrap();
        assert_eq!(answer, b"through haproxybye from a.test\n");

        // The readiness probe above was a connection too: find ours by its address.
        let headers = backend.headers.lock().unwrap().clone();
        assert!(
            headers.iter().any(|h| h.source == Some(me)),
            "{directive}: no backend header carried the client {me}: {headers:?}"
        );
        assert!(
            wait_for_log(&logs, &format!("client={me}")).await,
            "{directive} ({version:?}): client {me} not in mc-proxy's log:\n{}",
            log_text(&logs)
        );
    }
}

#[tokio::test]
async fn haproxy_accept_proxy_sees_the_original_client_behind_mc_proxy() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.write_pem(dir.path(), &["h.test"]);
    let combined = dir.path().join("h.test.combined.pem");
    std::fs::write(
        &combined,
        std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&key).unwrap(),
    )
    .unwrap();
    let reserved = ReservedPort::new();
    let port = reserved.port;
    let config = format!(
        "{DEFAULTS}
frontend fe
    mode http
    bind 127.0.0.1:{port} accept-proxy ssl crt {}
    http-request return status 200 content-type text/plain lf-string \"%[src]:%[src_port]\"
",
        combined.display()
    );
    let Some(_haproxy) = Haproxy::start(dir, &config, reserved).await else {
        return;
    };
    let proxy = ProxyBuilder::new()
        .route("h.test", format!("127.0.0.1:{port}"))
        .send_proxy()
        .start()
        .await;

    let mut c = tls_connect(proxy.addr(), "h.test", pki.client_config())
        .await
        .unwrap();
    let me = client_addr(&c);
    c.write_all(b"GET / HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    c.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.rsplit("\r\n\r\n").next().unwrap();
    assert_eq!(
        body.trim(),
        me.to_string(),
        "HAProxy saw another source:\n{response}"
    );
}
