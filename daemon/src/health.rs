//! Active health checks: the probes of every route that has a `health_check`.
//!
//! I/O: a TCP connect per probe (L4 routes, and L7 routes without a `path`), or an HTTP
//! `GET path` through the L7 pool, in the route's backend protocol and TLS, checked against
//! the expected status classes. One task ([`run`]) looks every [`TICK`] for members whose
//! next probe is due and starts each probe as a task of its own on the same tracker, so a
//! slow backend never delays another's check; a member has at most one probe running
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
use mc_proxy_shared::{AdminState, HealthCheck};
use std::time::Instant;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::l7::connector::{ProxyHeader, Target};
use crate::l7::upstream;
use crate::pipeline::Shared;
use crate::routes::{CATCH_ALL, RouteInfo};

/// How often due probes are looked for: the resolution of `interval`.
pub const TICK: Duration = Duration::from_millis(100);

/// Starts due probes until `shutdown`; each runs on `tasks`.
pub async fn run(shared: Arc<Shared>, tasks: TaskTracker, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        for listener in shared.state.listeners().iter() {
            for route in listener.routes().iter() {
                let Some(check) = &route.route.health_check else {
                    for m in route.backends.members() {
                        let t = m.health.unchecked(&m.spec);
                        shared.state.backend_changed(listener.addr, route, t);
                    }
                    continue;
                };
                for (index, m) in route.backends.members().iter().enumerate() {
                    // An admin change (drain, disable, enable) shows here first.
                    let t = m.health.republish(&m.spec);
                    shared.state.backend_changed(listener.addr, route, t);
                    if m.spec.state == AdminState::Disabled || !m.health.probe_due(now) {
                        continue;
                    }
                    let probe = Probe {
                        shared: Arc::clone(&shared),
                        listener: listener.addr,
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
        }
    }
}

/// One probe of one member.
struct Probe {
    shared: Arc<Shared>,
    listener: SocketAddr,
    route: Arc<RouteInfo>,
    index: usize,
    check: HealthCheck,
}

impl Probe {
    async fn run(self) {
        let member = self.route.backends.member(self.index);
        let timeout = self.check.timeout;
        let result = match tokio::time::timeout(timeout, self.attempt()).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        };
        if let Err(e) = &result {
            tracing::debug!(route = %self.route.route.hostname, backend = %member.spec.address, "health check failed: {e}");
        }
        let t = member.health.probed(&member.spec, &self.check, result);
        self.shared
            .state
            .backend_changed(self.listener, &self.route, t);
    }

    async fn attempt(&self) -> Result<(), String> {
        let address = &self.route.backends.member(self.index).spec.address;
        if self.check.path.is_empty() {
            return TcpStream::connect(address.as_str())
                .await
                .map(drop)
                .map_err(|e| format!("connect: {e}"));
        }
        let route = &self.route.route;
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
        let status = upstream::probe(
            &pool,
            self.authority(),
            &self.check.path,
            self.check.timeout,
        )
        .await?;
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
