//! Let's Encrypt's test ACME server, `pebble`, with `pebble-challtestsrv` as its DNS (every
//! name resolves to 127.0.0.1, no AAAA), for the ACME tests: a real directory, real orders,
//! real validations against the proxy's own listeners.
//!
//! Pebble serves its API over HTTPS with a certificate from the test's [`Pki`]; the issuing
//! root it signs certificates with is random per run, read from its management API
//! ([`Pebble::issuer_root_pem`]). Validation connects to 127.0.0.1 on the `tls_port` and
//! `http_port` given (the proxy's listeners). `PEBBLE_VA_NOSLEEP=1` (no random validation
//! delay) and no nonce rejections, so tests are quick and repeatable. Ports as the etcd
//! fixture picks them. Missing binaries: skipped with a reason, unless
//! `MCPROXY_REQUIRE_PEBBLE=1`, then a failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::Pki;

/// A running pebble and its DNS server.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    /// `https://localhost:PORT/dir` (its certificate names `localhost`).
    pub directory: String,
    /// The management API (`/roots/0`, `/intermediates/0`).
    pub management: std::net::SocketAddr,
    /// The CA of pebble's own HTTPS certificate (PEM file): what `[acme] ca` names.
    pub api_ca: PathBuf,
    dir: tempfile::TempDir,
}

/// Whether `pebble` and `pebble-challtestsrv` can be run (see the module docs).
pub fn available() -> bool {
    let installed = ["pebble", "pebble-challtestsrv"].iter().all(|bin| {
        Command::new(bin)
            .arg("-help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !installed {
        if std::env::var_os("MCPROXY_REQUIRE_PEBBLE").is_some() {
            panic!("MCPROXY_REQUIRE_PEBBLE is set but pebble is not installed");
        }
        crate::skipped("pebble is not installed (apt-get install pebble to run this test)");
    }
    installed
}

impl Pebble {
    /// Starts pebble validating tls-alpn-01 on `tls_port` and http-01 on `http_port` (of
    /// 127.0.0.1), and waits until its directory answers.
    pub async fn start(tls_port: u16, http_port: u16) -> Pebble {
        Pebble::start_with(tls_port, http_port, None).await
    }

    /// [`Pebble::start`], issuing certificates valid for `validity` seconds (pebble's default
    /// is five years). `blocked.test` is on pebble's block list in both: orders for it fail.
    pub async fn start_with(tls_port: u16, http_port: u16, validity: Option<u64>) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (cert, key) = pki.write_pem(dir.path(), &["localhost"]);
        let api_ca = dir.path().join("pebble-api-ca.pem");
        std::fs::write(&api_ca, pki.ca_pem()).unwrap();
        let ports = crate::etcd::free_ports(4);
        let (api, management, dns_port, dns_management) = (ports[0], ports[1], ports[2], ports[3]);
        let config = serde_json_config(api, management, &cert, &key, tls_port, http_port, validity);
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config).unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("pebble-challtestsrv starts");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("pebble starts");
        let pebble = Pebble {
            pebble,
            dns,
            directory: format!("https://localhost:{api}/dir"),
            management: ([127, 0, 0, 1], management).into(),
            api_ca,
            dir,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", api))
                .await
                .is_ok()
                && tokio::net::TcpStream::connect(("127.0.0.1", management))
                    .await
                    .is_ok()
            {
                return pebble;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("pebble did not listen within 10 s:\n{}", pebble.log_tail());
    }

    /// The root pebble signs issued certificates with (PEM), for clients that check them.
    pub async fn issuer_root_pem(&self) -> String {
        let response = crate::web::https_get_with_ca(self.management, "/roots/0", &self.api_ca)
            .await
            .expect("pebble's management API answers");
        assert_eq!(response.status, 200, "{}", response.body);
        response.body
    }

    /// Stops pebble (its DNS stays): the CA is down from now on.
    pub fn stop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
    }

    /// The end of pebble's logs, for a failure message.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in ["pebble.log", "pebble.err", "challtestsrv.err"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name}\n"));
            for line in &lines[lines.len().saturating_sub(30)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Pebble's JSON config.
fn serde_json_config(
    api: u16,
    management: u16,
    cert: &str,
    key: &str,
    tls_port: u16,
    http_port: u16,
    validity: Option<u64>,
) -> String {
    let validity = validity
        .map(|s| format!(",\n  \"certificateValidityPeriod\": {s}"))
        .unwrap_or_default();
    format!(
        r#"{{"pebble": {{
  "listenAddress": "127.0.0.1:{api}",
  "managementListenAddress": "127.0.0.1:{management}",
  "certificate": {cert:?},
  "privateKey": {key:?},
  "httpPort": {http_port},
  "tlsPort": {tls_port},
  "ocspResponderURL": "",
  "externalAccountBindingRequired": false,
  "domainBlocklist": ["blocked.test"]{validity}
}}}}"#
    )
}
