//! Active health checks: the probes of every route that has a `health_check`.
//!
//! I/O: per probe, on L4 routes a TCP connect and a TLS handshake (the certificate not
//! verified: see [`AnyCertificate`]); on L7 routes without a `path` a TCP connect; with a
//! `path` an HTTP `GET path` through the L7 pool, in the route's backend protocol and TLS,
//! checked against the expected statuses. Each result is kept with its time and latency.
//! One task ([`run`]) looks every [`TICK`] for members whose next probe is due (at the routes
//! with a check; at the others only when something may have changed there, see [`run`]) and
//! starts each probe as a task of its own on the same tracker, so a slow backend never
//! delays another's check; a member has at most one probe running
//! (`MemberHealth::probe_due`). Results go to the member's health (`rise`/`fall`), and state
//! changes are logged and published (`State::backend_changed`). The same walk publishes the
//! state changes admin writes made (drain, disable, enable: the route was swapped with the
//! member's new admin state), so they reach watchers within a tick whoever made them.
//!
//! Invariants: probes never touch client traffic (they count in no route statistics and
//! their failures are not passive-health failures); a disabled member is not probed (it is
//! out until the operator says otherwise), a draining one is (so it is known whether it can
//! come back); when a route loses its check, its members' check verdicts are forgotten.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use mc_proxy_shared::{AdminState, HealthCheck, Mode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::time::Instant;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connectors::connector::{ProxyHeader, Target};
use crate::connectors::pool::Pool;
use crate::model::routes::{CATCH_ALL, RouteInfo};
use crate::model::state::State;

/// How often due probes are looked for: the resolution of `interval`.
pub const TICK: Duration = Duration::from_millis(100);

/// What the probes need: the routes to walk and publish to, and the pool an HTTP probe
/// borrows a connection from (the lead worker's).
#[derive(Clone)]
pub struct Checker {
    /// Routes and their members' health; where state changes are published.
    pub state: Arc<State>,
    /// The lead worker's L7 pool.
    pub pool: Arc<Pool>,
}

/// Starts due probes until `shutdown`; each runs on `tasks`.
///
/// Each tick looks at the routes with a check (their probes may be due) and at the routes
/// patched in since the last tick (an admin state or a check edited or removed:
/// `ListenerState::take_fresh`). It looks at every route of a listener only when a whole
/// table was swapped in there, when an ejection began anywhere (`backends::ejections_begun`;
/// the look learns when it ends) or one it saw ends: those change states that publish
/// nothing of their own. Passive health publishes its other changes where they happen. So a
/// table of 10 000 routes without checks costs the walk nothing on a quiet tick, and a
/// change the routes it changed (issue 35: every tick touched every route, ≈ 4 % of a core
/// and a few milliseconds of the lead worker's time at 10 000 routes).
pub async fn run(shared: Checker, tasks: TaskTracker, shutdown: CancellationToken) {
    let shared = Arc::new(shared);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Ejections begun at the last look at everything, and the earliest end seen since.
    let mut begun = u64::MAX;
    let mut ends: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let now_begun = crate::model::backends::ejections_begun();
        let ended = now_begun != begun || ends.is_some_and(|end| end <= now);
        if ended {
            // Read before the look: an ejection begun during it moves the count again.
            begun = now_begun;
            ends = None;
        }
        for listener in shared.state.listeners().iter() {
            let fresh = listener.take_fresh();
            let table = listener.routes();
            let mut walk = |route: &Arc<RouteInfo>| {
                walk_route(
                    &shared,
                    &tasks,
                    &shutdown,
                    listener.addr,
                    route,
                    now,
                    &mut ends,
                );
            };
            match fresh {
                Some(fresh) if !ended => {
                    table.checked().for_each(&mut walk);
                    // Those the checked ones above do not cover, in their current version
                    // only (a route patched twice since is looked at once, as it is now).
                    fresh
                        .iter()
                        .filter(|r| r.route.health_check.is_none())
                        .filter(|r| {
                            table
                                .stored(&r.route.hostname)
                                .is_some_and(|now| Arc::ptr_eq(now, r))
                        })
                        .for_each(&mut walk);
                }
                _ => table.unordered().for_each(&mut walk),
            }
        }
    }
}

/// One route's turn in the walk: publishes its members' changes, starts their due probes,
/// lowers `ends` to the end of any ejection among them.
fn walk_route(
    shared: &Arc<Checker>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    listener: SocketAddr,
    route: &Arc<RouteInfo>,
    now: Instant,
    ends: &mut Option<Instant>,
) {
    let check = route.route.health_check.as_ref();
    for (index, m) in route.backends.members().iter().enumerate() {
        // An admin change (drain, disable, enable), an ejection's end and a check edited or
        // removed show here first.
        let t = m.health.observe_noting(&m.spec, check, ends);
        shared.state.backend_changed(listener, route, t);
        let Some(check) = check else {
            continue;
        };
        if m.spec.state == AdminState::Disabled || !m.health.probe_due(now) {
            continue;
        }
        let probe = Probe {
            shared: Arc::clone(shared),
            listener,
            route: Arc::clone(route),
            index,
            check: check.clone(),
        };
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = probe.run() => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

/// One probe of one member.
struct Probe {
    shared: Arc<Checker>,
    listener: SocketAddr,
    route: Arc<RouteInfo>,
    index: usize,
    check: HealthCheck,
}

impl Probe {
    async fn run(self) {
        let member = self.route.backends.member(self.index);
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + self.check.timeout);
        let result = self.attempt(deadline).await;
        let latency = started.elapsed();
        if let Err(e) = &result {
            tracing::debug!(route = %self.route.route.hostname, backend = %member.spec.address, "health check failed: {e}");
        }
        let t = member
            .health
            .probed(&member.spec, &self.check, result, latency);
        self.shared
            .state
            .backend_changed(self.listener, &self.route, t);
    }

    /// `after 1s`: the probe's limit, for a timeout's words.
    fn after(&self) -> String {
        format!("after {}", humantime::format_duration(self.check.timeout))
    }

    async fn attempt(&self, deadline: tokio::time::Instant) -> Result<(), String> {
        let address = &self.route.backends.member(self.index).spec.address;
        let route = &self.route.route;
        if self.check.path.is_empty() {
            let connect = TcpStream::connect(address.as_str());
            let mut stream = match tokio::time::timeout_at(deadline, connect).await {
                Err(_) => return Err(format!("connect timeout {}", self.after())),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err("connect refused".to_owned());
                }
                Ok(Err(e)) => return Err(format!("connect: {e}")),
                Ok(Ok(stream)) => stream,
            };
            if route.mode != Mode::L4 {
                return Ok(());
            }
            // L4: the backend is a TLS server by construction (it gets the client's
            // ClientHello), so the probe is what a client does: a TLS handshake.
            return tokio::time::timeout_at(deadline, self.handshake(&mut stream))
                .await
                .unwrap_or_else(|_| Err(format!("TLS handshake timeout {}", self.after())));
        }
        let target = Target {
            backend: address.clone(),
            protocol: route.backend_protocol,
            tls: route.backend_tls.then(|| route.hostname.clone()),
            // A backend that wants PROXY headers gets one for the probe too, saying nothing
            // about a client (there is none).
            proxy: route.send_proxy_protocol.then(|| ProxyHeader {
                client: SocketAddr::from(([0, 0, 0, 0], 0)),
                local: SocketAddr::from(([0, 0, 0, 0], 0)),
            }),
        };
        let closed = CancellationToken::new();
        let _closed = closed.clone().drop_guard();
        let pool = if target.proxy.is_some() {
            self.shared.pool.dedicated(target, closed)
        } else {
            self.shared.pool.target(&target)
        };
        let probe = crate::connectors::send::probe(
            &pool,
            self.authority(),
            &self.check.path,
            self.check.timeout,
        );
        let status = tokio::time::timeout_at(deadline, probe)
            .await
            .map_err(|_| format!("timeout {}", self.after()))?
            .map_err(|e| {
                // The OS's words for the most common failure, as the TCP probe says it.
                if e.contains("Connection refused") {
                    "connect refused".to_owned()
                } else {
                    e
                }
            })?;
        if self.check.expect.contains(status.as_u16()) {
            Ok(())
        } else {
            Err(format!(
                "status {} (expected {})",
                status.as_u16(),
                self.check.expect
            ))
        }
    }

    /// The L4 probe's TLS handshake on `stream` (after a PROXY header when the route sends
    /// them), the certificate not verified: see [`AnyCertificate`].
    async fn handshake(&self, stream: &mut TcpStream) -> Result<(), String> {
        let route = &self.route.route;
        if route.send_proxy_protocol {
            let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
            crate::protocols::proxyproto::write_v2(stream, nowhere, nowhere)
                .await
                .map_err(|e| format!("PROXY header: {e}"))?;
        }
        let name = self.server_name();
        let connector = tokio_rustls::TlsConnector::from(check_tls_config());
        let mut tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        // Say goodbye properly, so that the backend logs no aborted handshake.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        Ok(())
    }

    /// The SNI of the L4 TLS probe: the route's name; for a wildcard route a name it matches
    /// (`mcproxy-health.` and the domain); for the catch-all the backend's host when it is a
    /// name, else none (an IP address sends no SNI).
    fn server_name(&self) -> ServerName<'static> {
        let route = &self.route.route;
        let address = &self.route.backends.member(self.index).spec.address;
        let name = if let Some(domain) = route.hostname.strip_prefix("*.") {
            format!("mcproxy-health.{domain}")
        } else if route.hostname == CATCH_ALL {
            let host = address
                .rsplit_once(':')
                .map_or(address.as_str(), |(h, _)| h);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        } else {
            route.hostname.clone()
        };
        ServerName::try_from(name)
            .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()))
    }

    /// The route's own name, or for a wildcard or catch-all route (no one name to ask
    /// for) the backend's address.
    fn authority(&self) -> Authority {
        let route = &self.route.route;
        let name = if route.hostname == CATCH_ALL || route.hostname.starts_with("*.") {
            self.route.backends.member(self.index).spec.address.as_str()
        } else {
            route.hostname.as_str()
        };
        name.parse()
            .unwrap_or_else(|_| Authority::from_static("localhost"))
    }
}

/// The L4 TLS probe's client configuration, built once.
fn check_tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let provider = crate::model::certs::provider();
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                    .with_no_client_auth()
            });
        match config {
            Ok(config) => Arc::new(config),
            // The provider supports the default versions; unreachable, but never a panic.
            Err(e) => {
                tracing::error!("L4 health check TLS configuration: {e}");
                Arc::new(
                    rustls::ClientConfig::builder()
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                            crate::model::certs::provider(),
                        )))
                        .with_no_client_auth(),
                )
            }
        }
    }))
}

/// The L4 probe takes any certificate (HAProxy's `check-ssl verify none`): a passthrough
/// route's backend certificate is for the clients to verify, against their own trust, and
/// the proxy has no CA for it. What the probe asks is whether the backend completes a
/// handshake; the handshake signatures are still checked, so a peer that cannot finish one
/// properly fails.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
