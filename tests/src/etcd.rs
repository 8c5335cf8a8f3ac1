//! A real etcd cluster for the tests: `EtcdCluster::start(n)` runs `n` etcd processes (Debian's
//! `etcd-server`, 3.4) forming one cluster on loopback, and lets a test kill, stop and restart
//! members and compact the store.
//!
//! I/O: child processes, their data directories and one log file per member in a temp dir,
//! loopback TCP. Ports are random in 20000-32000: never etcd's 2379/2380 (a developer's own
//! etcd), never the kernel's ephemeral range 32768-60999 (load tests open thousands of client
//! sockets there, and an etcd port taken by one of them fails a start at random). Each is
//! checked free by binding it first; a start that fails anyway (a port taken in between) is
//! retried on new ports. etcd cannot be handed an already bound socket, so this small race is
//! the price of a real etcd.
//!
//! `start_tls` puts the client URLs on `https://` with `--client-cert-auth`; health is asked on
//! each member's plain-HTTP metrics port either way (three ports a member).
//!
//! A missing `etcd` binary: `available()` says so (printing a `SKIPPED:` line) and tests return,
//! unless `MCPROXY_REQUIRE_ETCD` is set (`.ci/run` does), then it panics. When a test fails
//! (the thread panics) `Drop` prints the tail of every member's log; it always kills every member
//! and removes the directories.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The ports the fixture picks from (see the module comment).
const PORTS: std::ops::Range<u16> = 20000..32000;
/// Starts tried before giving up.
const START_ATTEMPTS: usize = 4;
/// How long a cluster may take to elect a leader and answer `/health`.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);
/// Lines of each member's log printed when a test fails.
const LOG_TAIL: usize = 40;

/// Whether the `etcd` binary can be run. Prints why not (and returns `false`) when it cannot;
/// panics instead when `MCPROXY_REQUIRE_ETCD` is set.
pub fn available() -> bool {
    let installed = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        if std::env::var_os("MCPROXY_REQUIRE_ETCD").is_some() {
            panic!("MCPROXY_REQUIRE_ETCD is set but etcd is not installed");
        }
        crate::skipped("etcd is not installed (apt-get install etcd-server to run this test)");
    }
    installed
}

/// TLS on the members' client URLs: their certificate and key, the CA they check client
/// certificates against, and whether they require one (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA (PEM) of client certificates, and of the members' own, for the fixture's client.
    pub ca: PathBuf,
    /// The members' certificate (PEM), valid for 127.0.0.1.
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// A client certificate signed by `ca` (PEM), for the fixture's own client.
    pub client_cert: PathBuf,
    /// Its key (PEM).
    pub client_key: PathBuf,
}

/// One member: its ports, directory, log, and its process while it runs.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` and `/metrics`, whatever the client URLs speak.
    metrics_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster on loopback; every member killed and its files removed on drop.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    token: String,
    tls: Option<EtcdTls>,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `members` etcd processes as one cluster and waits until it is healthy. Call
    /// `available()` first: this panics when etcd cannot be started.
    pub async fn start(members: usize) -> EtcdCluster {
        EtcdCluster::start_with(members, None).await
    }

    /// Like `start`, with the client URLs on `https://` and client certificates required.
    pub async fn start_tls(members: usize, tls: EtcdTls) -> EtcdCluster {
        EtcdCluster::start_with(members, Some(tls)).await
    }

    async fn start_with(members: usize, tls: Option<EtcdTls>) -> EtcdCluster {
        assert!(members > 0, "an etcd cluster needs a member");
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = EtcdCluster::spawn(members, tls.clone());
            match cluster.healthy_within(HEALTHY_WITHIN).await {
                Ok(()) => return cluster,
                Err(e) => {
                    last = format!("attempt {attempt}: {e}\n{}", cluster.log_tail());
                    // Drop kills and removes; not panicking, so it prints nothing.
                    drop(cluster);
                }
            }
        }
        panic!("etcd did not start in {START_ATTEMPTS} attempts; the last:\n{last}");
    }

    /// Picks ports and starts every member (not yet waiting for health).
    fn spawn(count: usize, tls: Option<EtcdTls>) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("mc-proxy-etcd")
            .tempdir()
            .expect("temp dir for etcd");
        let ports = free_ports(3 * count);
        let token = format!("mc-proxy-test-{:x}", random());
        let members = (0..count)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                metrics_port: ports[3 * i + 2],
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            dir,
            token,
            tls,
            members,
        };
        for i in 0..count {
            cluster.run(i);
        }
        cluster
    }

    /// Starts member `i` with its ports and data dir (a restart reuses both).
    fn run(&mut self, i: usize) {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "etcd member {i} runs already");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("etcd log file");
        let err = log.try_clone().expect("etcd log file");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let metrics = format!("http://127.0.0.1:{}", m.metrics_port);
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--listen-metrics-urls", &metrics])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("starting etcd");
        m.child = Some(child);
    }

    /// The client URL of every member (running or not), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// How the fixture's own etcd client connects: with the CA and client certificate on a
    /// TLS cluster.
    pub fn client_options(&self) -> Option<etcd_client::ConnectOptions> {
        let tls = self.tls.as_ref()?;
        let read = |p: &Path| std::fs::read(p).expect("etcd TLS file");
        Some(
            etcd_client::ConnectOptions::new().with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)))
                    .identity(etcd_client::Identity::from_pem(
                        read(&tls.client_cert),
                        read(&tls.client_key),
                    )),
            ),
        )
    }

    /// A plain etcd client for the test's own setup (users, roles, keys), on every member.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.endpoints(), self.client_options())
            .await
            .expect("etcd client")
    }

    /// The temp dir holding the data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL to member `i`, waited for: a crash, nothing flushed or said to its peers.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to member `i`, waited for: a clean stop.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let pid = rustix::process::Pid::from_raw(child.id() as i32);
            match pid.map(|p| rustix::process::kill_process(p, rustix::process::Signal::TERM)) {
                Some(Ok(())) => {}
                _ => {
                    let _ = child.kill();
                }
            }
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its ports and data dir (after `kill` or `stop`); call
    /// `wait_healthy` to wait for it to rejoin.
    pub fn restart(&mut self, i: usize) {
        self.run(i);
    }

    /// Waits until every running member answers `/health` with a leader; panics with the logs
    /// after 30 s.
    pub async fn wait_healthy(&mut self) {
        if let Err(e) = self.healthy_within(HEALTHY_WITHIN).await {
            panic!("etcd is not healthy: {e}\n{}", self.log_tail());
        }
    }

    async fn healthy_within(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let mut unhealthy = None;
            for (i, m) in self.members.iter_mut().enumerate() {
                let Some(child) = m.child.as_mut() else {
                    continue;
                };
                if let Ok(Some(status)) = child.try_wait() {
                    m.child = None;
                    return Err(format!("etcd member {i} exited: {status}"));
                }
                if !health(m.metrics_port).await {
                    unhealthy = Some(i);
                    break;
                }
            }
            match unhealthy {
                None => return Ok(()),
                Some(i) if Instant::now() >= deadline => {
                    return Err(format!("etcd member {i} not healthy within {limit:?}"));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The member that leads now (asked of the running members), if one does.
    pub async fn leader(&self) -> Option<usize> {
        let endpoints = self.endpoints();
        let mut ids = vec![None; self.members.len()];
        let mut leader = None;
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let status = async {
                let options = self.client_options();
                let mut c = etcd_client::Client::connect([&endpoints[i]], options).await?;
                c.status().await
            };
            if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), status).await {
                ids[i] = status.header().map(|h| h.member_id());
                if status.leader() != 0 {
                    leader = Some(status.leader());
                }
            }
        }
        let leader = leader?;
        ids.iter().position(|id| *id == Some(leader))
    }

    /// Compacts the store to its current revision (physically: older revisions are gone, a
    /// watch from before fails with `compacted`). Returns that revision.
    pub async fn compact_to_latest(&self) -> i64 {
        // Retried: with a member down, the client may first pick its dead connection.
        let mut last = None;
        for _ in 0..50 {
            let mut client = self.client().await;
            let revision = match client.get("compact-probe", None).await {
                Ok(r) => r.header().expect("etcd header").revision(),
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match client
                .compact(
                    revision,
                    Some(etcd_client::CompactionOptions::new().with_physical()),
                )
                .await
            {
                Ok(_) => return revision,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd compact failed: {last:?}");
    }

    /// Every key under `prefix` with the revision that last wrote it, in key order.
    pub async fn mod_revisions(&self, prefix: &str) -> Vec<(String, i64)> {
        let mut client = self.client().await;
        let r = client
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .expect("etcd get");
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.mod_revision(),
                )
            })
            .collect()
    }

    /// The last lines of every member's log, for a failure message.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL);
            out.push_str(&format!(
                "--- etcd {} (client {}, peer {}, metrics {}), last {} lines of {}:\n",
                m.name,
                m.client_port,
                m.peer_port,
                m.metrics_port,
                lines.len() - from,
                m.log.display()
            ));
            for line in &lines[from..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{}", self.log_tail());
        }
        for i in 0..self.members.len() {
            self.kill(i);
        }
        // The temp dir removes itself after this.
    }
}

/// `GET /health` on a member's metrics port: true when it answers that it has a leader.
async fn health(port: u16) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&answer).contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Ok(true))
    )
}

/// `n` distinct ports from `PORTS`, each free on loopback when picked.
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(n);
    let span = u64::from(PORTS.end - PORTS.start);
    for _ in 0..10_000 {
        if ports.len() == n {
            break;
        }
        let port = PORTS.start + (random() % span) as u16;
        if !ports.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "no {n} free ports in {PORTS:?}");
    ports
}

/// A random number (std's per-process random hash keys, fresh per call).
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
