//! The gRPC admin API (`mc_proxy.v2.AdminService`) on a Unix socket.
//!
//! I/O: the socket (created mode 0600, a stale file from a dead daemon replaced, a live daemon's
//! socket refused), and one ticker task that publishes a stats tick about once a second while
//! someone watches events.
//!
//! A transport only: each write RPC becomes one `control::Change`, applied off the runtime with
//! `spawn_blocking` (SQLite blocks), and its `Applied` or `ChangeError` becomes the answer or a
//! status; reads come from the live snapshots. Daemon events and counters are converted to
//! protobuf here and nowhere else.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use mc_proxy_shared::convert::{
    outcome_to_pb, request_backend_protocol, request_balance, request_mode,
};
use mc_proxy_shared::pb::admin_service_server::{AdminService, AdminServiceServer};
use mc_proxy_shared::{AdminState, FirewallRule, HealthCheck, Route, RouteBackend, RoutePatch, pb};
use tokio::net::UnixListener;
use tokio_stream::wrappers::{
    BroadcastStream, UnixListenerStream, errors::BroadcastStreamRecvError,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response};

use crate::control::apply::MAX_SET;
use crate::control::reload::{ReloadOutcome, RouteReload};
use crate::control::{Applied, Change, ChangeError, Control, ListenerChange, listener_by_name};
use crate::model::events::{Caller, Event, Origin, Timed};
use crate::model::state::{ListenerState, State};
use crate::model::stats::{BUCKET_BOUNDS_SECONDS, HistogramSnapshot};

/// Why the admin API could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Another daemon answers on the socket.
    #[error("admin socket {0} is in use by a running daemon")]
    InUse(PathBuf),
    /// The socket could not be created.
    #[error("cannot create admin socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("admin API: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A bound admin socket; the file is removed when this is dropped (unless it was handed to
/// an upgraded process: [`AdminSocket::keep_file`]).
#[derive(Debug)]
pub struct AdminSocket {
    listener: UnixListener,
    file: SocketFile,
}

/// Removes the socket file on drop, so a clean exit leaves nothing behind; not once `keep`
/// is set (the file is another process's now).
#[derive(Debug)]
struct SocketFile(PathBuf, Arc<std::sync::atomic::AtomicBool>);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if !self.1.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl AdminSocket {
    /// Creates the socket at `path` with mode 0600. A leftover file nobody answers on is
    /// replaced; a socket a live daemon answers on is an error.
    pub fn bind(path: &Path) -> Result<AdminSocket, AdminError> {
        use std::os::unix::fs::PermissionsExt;
        let bind_err = |source| AdminError::Bind {
            path: path.to_owned(),
            source,
        };
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(AdminError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let file = SocketFile(path.to_owned(), Arc::default());
        // Anyone who can connect can reroute traffic: owner only. (The directory's mode
        // guards the instant between bind and chmod.)
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        Ok(AdminSocket { listener, file })
    }

    /// The socket at `path` that the old process handed over in an upgrade: already bound,
    /// with its file and mode; no connection waiting in its backlog is lost.
    pub fn inherited(
        path: &Path,
        listener: std::os::unix::net::UnixListener,
    ) -> Result<AdminSocket, AdminError> {
        let bind_err = |source| AdminError::Bind {
            path: path.to_owned(),
            source,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = UnixListener::from_std(listener).map_err(bind_err)?;
        Ok(AdminSocket {
            listener,
            file: SocketFile(path.to_owned(), Arc::default()),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.0
    }

    /// A duplicate of the listening socket, to hand to an upgraded process.
    pub fn duplicate(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.listener.as_fd().try_clone_to_owned()
    }

    /// A switch that, once set, leaves the socket file in place when this process exits (an
    /// upgraded process serves it).
    pub fn keep_file(&self) -> Arc<std::sync::atomic::AtomicBool> {
        Arc::clone(&self.file.1)
    }
}

/// Serves the admin API on `socket` until `shutdown` fires. Event streams end at shutdown too,
/// so this returns promptly.
pub async fn serve(
    socket: AdminSocket,
    control: Arc<Control>,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    let AdminSocket { listener, file } = socket;
    tracing::info!(socket = %file.0.display(), "admin API listening");
    let state = Arc::clone(control.state());
    let service = Admin {
        control,
        started: Instant::now(),
        shutdown: shutdown.clone(),
    };
    let ticker = tokio::spawn(publish_stats(state, shutdown.clone()));
    let result = tonic::transport::Server::builder()
        .add_service(
            AdminServiceServer::new(service)
                .max_encoding_message_size(64 * 1024 * 1024)
                // The default, written down: a request this large is refused by tonic itself
                // (OUT_OF_RANGE); every field below it is size-checked by `control`.
                .max_decoding_message_size(4 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled())
        .await;
    ticker.abort();
    let _ = ticker.await;
    drop(file);
    Ok(result?)
}

/// Publishes a stats tick every second while anyone watches; each watcher's stream turns it
/// into a snapshot of the counters as it reads it.
async fn publish_stats(state: Arc<State>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        state.events.publish(|| Event::StatsTick);
    }
}

fn status(e: ChangeError) -> tonic::Status {
    match e {
        // A change of a set: the code of its own reason, the whole text, and its position
        // for the caller to name what it sent.
        ChangeError::InSet { index, source } => in_set(index - 1, status(*source)),
        ChangeError::Invalid(m) => tonic::Status::invalid_argument(m),
        ChangeError::NotFound(m) => tonic::Status::not_found(m),
        ChangeError::AlreadyExists(m) => tonic::Status::already_exists(m),
        ChangeError::Conflict(m) => tonic::Status::aborted(m),
        ChangeError::Unavailable(m) => {
            let mut status = tonic::Status::unavailable(m);
            status.metadata_mut().insert(
                mc_proxy_shared::client::STORE_AWAY_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            status
        }
        e @ (ChangeError::Store(_) | ChangeError::Internal(_)) => {
            tonic::Status::internal(e.to_string())
        }
    }
}

/// The service: the control plane, and when we started.
#[derive(Debug, Clone)]
struct Admin {
    control: Arc<Control>,
    started: Instant,
    shutdown: CancellationToken,
}

impl Admin {
    fn state(&self) -> &State {
        self.control.state()
    }

    /// Applies a change off the async runtime (SQLite blocks).
    async fn apply(&self, caller: Caller, change: Change) -> Result<Applied, tonic::Status> {
        let control = Arc::clone(&self.control);
        tokio::task::spawn_blocking(move || control.apply_by(change, caller))
            .await
            .map_err(|e| tonic::Status::internal(format!("admin task failed: {e}")))?
            .map_err(status)
    }
}

/// Who sent `request`: the admin socket's peer as the kernel names it (`SO_PEERCRED`, which
/// tonic records per connection), and the process's name from `/proc`.
fn caller_of<T>(request: &Request<T>) -> Caller {
    let cred = request
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|info| info.peer_cred);
    let Some(cred) = cred else {
        return Caller::Unknown;
    };
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok());
    let process = pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
        .map(|comm| clip_name(comm.trim()))
        .unwrap_or_default();
    Caller::Socket {
        uid: cred.uid(),
        pid,
        process,
    }
}

/// A process name as the kernel keeps it is at most 15 bytes; anything longer (or odd) is
/// cut, so a log line never carries more than a name.
fn clip_name(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(32).collect()
}

fn cluster_link(view: &crate::model::cluster::ClusterView) -> pb::ClusterLink {
    use crate::model::cluster::Link;
    pb::ClusterLink {
        node: view.node.clone(),
        endpoints: view.endpoints.clone(),
        prefix: view.prefix.clone(),
        state: match view.link {
            Link::Connecting => pb::ClusterLinkState::Connecting,
            Link::Connected => pb::ClusterLinkState::Connected,
            Link::Disconnected => pb::ClusterLinkState::Disconnected,
        } as i32,
        since_ms: view
            .since
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default(),
        applied_revision: view.applied,
        store_revision: view.store_revision,
        last_error: view.last_error.clone(),
        drift_repaired: view.drift_repaired,
    }
}

fn cluster_node(node: crate::model::cluster::NodeInfo) -> pb::ClusterNode {
    pb::ClusterNode {
        name: node.name,
        version: node.version,
        listeners: node.listeners,
        admin: node.admin,
        metrics: node.metrics,
        applied_revision: node.applied_revision,
        last_error: node.last_error,
        started_ms: node.started_ms,
    }
}

fn origin_to_pb(origin: &Origin) -> pb::ChangeOrigin {
    let (uid, pid, process) = match &origin.caller {
        Caller::Socket { uid, pid, process } => (Some(*uid), *pid, process.clone()),
        Caller::Signal(_) | Caller::Unknown | Caller::Node { .. } => (None, None, String::new()),
    };
    let node = match &origin.caller {
        Caller::Node { node, .. } => node.clone(),
        _ => String::new(),
    };
    pb::ChangeOrigin {
        change_id: origin.change,
        by: origin.caller.to_string(),
        uid,
        pid,
        process,
        node,
    }
}

fn required<T>(value: Option<T>, what: &str) -> Result<T, tonic::Status> {
    value.ok_or_else(|| tonic::Status::invalid_argument(format!("the request has no {what}")))
}

fn route_answer(applied: Applied) -> Result<(pb::Route, Vec<String>), tonic::Status> {
    match applied {
        Applied::Route { route, warnings } => Ok((route.into(), warnings)),
        other => Err(tonic::Status::internal(format!(
            "unexpected result of a route change: {other:?}"
        ))),
    }
}

fn listener_answer(applied: Applied) -> Result<(pb::ListenerStatus, Vec<String>), tonic::Status> {
    match applied {
        Applied::Listener { listener, warnings } => Ok((listener_status(&listener), warnings)),
        other => Err(tonic::Status::internal(format!(
            "unexpected result of a listener change: {other:?}"
        ))),
    }
}

fn listener_status(l: &ListenerState) -> pb::ListenerStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &l.counters;
    let settings = l.settings();
    pb::ListenerStatus {
        kind: pb::ListenerKind::from(l.kind).into(),
        redirect_port: u32::from(l.redirect_port),
        addr: l.addr.to_string(),
        proxy_protocol: settings.proxy_protocol,
        proxy_protocol_from: settings
            .proxy_protocol_from
            .iter()
            .map(ToString::to_string)
            .collect(),
        route_count: u32::try_from(l.routes().len()).unwrap_or(u32::MAX),
        routes_not_served: u32::try_from(l.not_served().len()).unwrap_or(u32::MAX),
        active_connections: c.active.load(Relaxed),
        accepted: c.accepted.load(Relaxed),
        resets: c.resets.load(Relaxed),
        blocked: c.blocked.load(Relaxed),
        over_capacity: c.over_capacity.load(Relaxed),
        no_sni_route: l.no_sni_route().unwrap_or_default(),
        bound: l.bound().map(|a| a.to_string()).unwrap_or_default(),
        name: l.name.clone(),
        access_log: settings.access_log,
        client_limits: Some(settings.client_limits.into()),
        client_table: Some(
            l.client_table_stats()
                .map(|t| pb::ClientLimitTable {
                    capacity: t.capacity,
                    entries: t.entries,
                    evictions: t.evictions,
                    untracked: t.untracked,
                })
                .unwrap_or_default(),
        ),
        resets_by_reason: c
            .resets_by_reason()
            .map(|(r, n)| pb::ResetCount {
                reason: pb::ResetReason::from(r).into(),
                count: n,
            })
            .collect(),
    }
}

fn route_statuses(state: &State, only: Option<&ListenerState>) -> Vec<pb::RouteStatus> {
    let mut out = Vec::new();
    for l in state.listeners().iter() {
        if only.is_some_and(|o| o.id != l.id) {
            continue;
        }
        for info in l.routes().iter() {
            let s = info.stats.snapshot();
            out.push(pb::RouteStatus {
                listener: l.addr.to_string(),
                route: Some(info.route.clone().into()),
                stats: Some(pb::RouteStats {
                    active_connections: s.active,
                    total_connections: s.total,
                    bytes_in: s.bytes_up,
                    bytes_out: s.bytes_down,
                    backend_errors: s.backend_errors,
                    retries: s.retries,
                    requests: s.requests,
                    responses: s.responses.to_vec(),
                    request_duration: Some(histogram(&s.request_duration)),
                    connect_duration: Some(histogram(&s.connect_duration)),
                    members: info.members().into_iter().map(Into::into).collect(),
                    limit_stats: Some({
                        let gate = &info.stats.limiter.gate;
                        let (in_flight, waiting) = gate.load();
                        pb::LimitRouteStats {
                            denied: s.denied,
                            rate_limited: s.rate_limited,
                            overloaded: s.overloaded,
                            queued: s.queued,
                            in_flight,
                            waiting,
                            rapid_resets: s.rapid_resets,
                        }
                    }),
                }),
                not_served: String::new(),
                certificate: info
                    .tls
                    .as_ref()
                    .and_then(|tls| tls.summary.as_ref())
                    .map(|s| {
                        let acme = info.route.acme;
                        let renewal = acme
                            .then(|| state.acme.renewal(info.route.hostname.as_str()))
                            .flatten();
                        pb::CertificateStatus {
                            source: if acme { "acme" } else { "file" }.into(),
                            issuer: s.issuer.clone(),
                            not_before_ms: s.not_before * 1000,
                            not_after_ms: s.not_after * 1000,
                            renews_at_ms: renewal.map_or(0, |(at, _)| at * 1000),
                            renewal_by_ari: renewal.is_some_and(|(_, ari)| ari),
                            last_error: acme
                                .then(|| state.acme.error(&info.route.hostname))
                                .flatten()
                                .unwrap_or_default(),
                        }
                    }),
            });
        }
        // Stored routes left out (their files did not load): listed, with why, no stats.
        for n in l.not_served().iter() {
            // A waiting acme route says why its last order failed, if it did.
            let reason = match state.acme.error(&n.route.hostname) {
                Some(e) if n.route.acme => format!("{}; last order failed: {e}", n.reason),
                _ => n.reason.clone(),
            };
            out.push(pb::RouteStatus {
                listener: l.addr.to_string(),
                route: Some(n.route.clone().into()),
                stats: None,
                not_served: reason,
                certificate: None,
            });
        }
    }
    out
}

/// A histogram snapshot on the wire: bounds in seconds, per-bucket (not cumulative) counts.
fn histogram(h: &HistogramSnapshot) -> pb::Histogram {
    pb::Histogram {
        upper_bounds_seconds: BUCKET_BOUNDS_SECONDS.to_vec(),
        counts: h.counts.to_vec(),
        sum_seconds: h.sum_seconds(),
        count: h.count(),
    }
}

/// A daemon event on the wire. A stats tick becomes a snapshot of the counters now.
fn event_to_pb(timed: Timed, state: &State) -> pb::Event {
    use pb::event::Kind;
    let kind = match timed.event {
        Event::ConnectionOpened {
            id,
            listener,
            client,
            sni,
            route,
            backend,
        } => Kind::ConnectionOpened(pb::ConnectionOpened {
            id,
            listener: listener.to_string(),
            client: client.to_string(),
            hostname: sni,
            route: route.route.hostname.clone(),
            mode: pb::RouteMode::from(route.route.mode).into(),
            // The member chosen; L7 chooses per request, so the set.
            backend: backend.map_or_else(|| route.route.backend_list(), |b| b.to_string()),
        }),
        Event::ConnectionClosed {
            id,
            listener,
            client,
            sni,
            route,
            backend,
            bytes_in,
            bytes_out,
            duration,
            outcome,
            error,
        } => {
            let route = route.as_deref().map(|r| &r.route);
            Kind::ConnectionClosed(pb::ConnectionClosed {
                id,
                listener: listener.to_string(),
                client: client.to_string(),
                hostname: sni.unwrap_or_default(),
                route: route.map(|r| r.hostname.clone()).unwrap_or_default(),
                mode: route.map_or(0, |r| pb::RouteMode::from(r.mode).into()),
                backend: match (backend, route) {
                    (Some(b), _) => b.to_string(),
                    (None, Some(r)) => r.backend_list(),
                    (None, None) => String::new(),
                },
                bytes_in,
                bytes_out,
                duration_ms: duration.as_millis() as u64,
                outcome: Some(outcome_to_pb(outcome)),
                error: error.unwrap_or_default(),
            })
        }
        Event::ConnectionBlocked {
            listener,
            client,
            reason,
        } => Kind::ConnectionBlocked(pb::ConnectionBlocked {
            listener: listener.to_string(),
            client: client.to_string(),
            reason: pb::BlockedReason::from(reason).into(),
        }),
        Event::RouteChanged {
            listener,
            action,
            route,
            previous_hostname,
            origin,
        } => Kind::RouteChanged(pb::RouteChanged {
            listener: listener.to_string(),
            action: pb::ChangeAction::from(action).into(),
            route: Some(route.into()),
            previous_hostname: previous_hostname.unwrap_or_default(),
            origin: Some(origin_to_pb(&origin)),
        }),
        Event::FirewallChanged {
            action,
            rule,
            origin,
        } => Kind::FirewallChanged(pb::FirewallChanged {
            action: pb::ChangeAction::from(action).into(),
            rule: Some(rule.into()),
            origin: Some(origin_to_pb(&origin)),
        }),
        Event::BackendChanged {
            listener,
            route,
            member,
            origin,
        } => Kind::BackendChanged(pb::BackendChanged {
            listener: listener.to_string(),
            route,
            member: Some(member.into()),
            origin: origin.as_ref().map(origin_to_pb),
        }),
        Event::ListenerChanged {
            listener,
            action,
            origin,
        } => Kind::ListenerChanged(pb::ListenerChanged {
            listener: listener.to_string(),
            action: pb::ChangeAction::from(action).into(),
            origin: Some(origin_to_pb(&origin)),
        }),
        Event::ClusterLink(view) => Kind::ClusterLink(cluster_link(&view)),
        Event::AcmeOrder {
            route,
            not_after,
            error,
        } => Kind::AcmeOrder(pb::AcmeOrder {
            route,
            not_after_ms: not_after.map_or(0, |s| s * 1000),
            error: error.unwrap_or_default(),
        }),
        Event::CertificateExpiring {
            listener,
            route,
            not_after,
        } => Kind::CertificateExpiring(pb::CertificateExpiring {
            listener: listener.to_string(),
            route,
            not_after_ms: not_after * 1000,
        }),
        Event::StatsTick => Kind::Stats(pb::StatsSnapshot {
            listeners: state
                .listeners()
                .iter()
                .map(|l| listener_status(l))
                .collect(),
            routes: route_statuses(state, None),
            backends: backend_statuses(state),
            cluster: state.cluster().map(|view| cluster_link(&view)),
        }),
    };
    pb::Event {
        timestamp_ms: timed.timestamp_ms,
        kind: Some(kind),
    }
}

/// The backend pool's figures on the wire.
fn backend_statuses(state: &State) -> Vec<pb::BackendStatus> {
    state
        .backends
        .snapshot()
        .into_iter()
        .map(|b| pb::BackendStatus {
            backend: b.key.backend,
            protocol: pb::BackendProtocol::from(b.key.protocol).into(),
            tls: b.key.tls,
            open: b.open,
            idle: b.idle,
            in_use: b.in_use,
            requests: b.requests,
            opened: b.opened,
            failed: b.failed,
        })
        .collect()
}

/// One route's reload result on the wire.
fn route_reload_to_pb(r: RouteReload) -> pb::RouteReload {
    use pb::ReloadResult as R;
    let mut out = pb::RouteReload {
        listener: r.listener.to_string(),
        hostname: r.hostname,
        ..Default::default()
    };
    match r.outcome {
        ReloadOutcome::Reloaded {
            changed,
            not_after,
            warnings,
        } => {
            out.set_result(if changed { R::Renewed } else { R::Unchanged });
            out.not_after = not_after.unwrap_or_default();
            out.warnings = warnings;
        }
        ReloadOutcome::Added {
            not_after,
            warnings,
        } => {
            out.set_result(R::Added);
            out.not_after = not_after.unwrap_or_default();
            out.warnings = warnings;
        }
        ReloadOutcome::Failed { error, kept } => {
            out.set_result(R::Failed);
            out.error = error.to_string();
            out.kept = kept;
        }
    }
    out
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for Admin {
    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, tonic::Status> {
        let state = self.state();
        let listeners: Vec<pb::ListenerStatus> = state
            .listeners()
            .iter()
            .map(|l| listener_status(l))
            .collect();
        Ok(Response::new(pb::GetStatusResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            active_connections: listeners.iter().map(|l| l.active_connections).sum(),
            total_connections: listeners.iter().map(|l| l.accepted).sum(),
            firewall_rules: u32::try_from(state.firewall().len()).unwrap_or(u32::MAX),
            listeners,
            backends: backend_statuses(state),
            cluster: state.cluster().map(|view| cluster_link(&view)),
            pid: Some(std::process::id()),
        }))
    }

    async fn cluster_status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, tonic::Status> {
        let (Some(view), Some(fleet)) = (self.state().cluster(), self.control.fleet()) else {
            return Err(tonic::Status::failed_precondition(
                "this node is not in a cluster (no [cluster] section in its config)",
            ));
        };
        let (nodes, nodes_error) = match fleet.nodes().await {
            Ok(nodes) => (nodes.into_iter().map(cluster_node).collect(), String::new()),
            Err(e) => (Vec::new(), e.to_string()),
        };
        Ok(Response::new(pb::ClusterStatusResponse {
            link: Some(cluster_link(&view)),
            nodes,
            nodes_error,
        }))
    }

    async fn list_routes(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, tonic::Status> {
        let name = request.into_inner().listener;
        let state = self.state();
        let only = if name.is_empty() {
            None
        } else {
            Some(listener_by_name(state, &name).map_err(status)?)
        };
        Ok(Response::new(pb::ListRoutesResponse {
            routes: route_statuses(state, only.as_deref()),
        }))
    }

    async fn add_route(
        &self,
        request: Request<pb::AddRouteRequest>,
    ) -> Result<Response<pb::AddRouteResponse>, tonic::Status> {
        let caller = caller_of(&request);
        let change = add_route_change(request.into_inner())?;
        let (route, warnings) = route_answer(self.apply(caller, change).await?)?;
        Ok(Response::new(pb::AddRouteResponse {
            route: Some(route),
            warnings,
        }))
    }

    async fn update_route(
        &self,
        request: Request<pb::UpdateRouteRequest>,
    ) -> Result<Response<pb::UpdateRouteResponse>, tonic::Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let change = update_route_change(req)?;
        let (route, warnings) = route_answer(self.apply(caller, change).await?)?;
        Ok(Response::new(pb::UpdateRouteResponse {
            route: Some(route),
            warnings,
        }))
    }

    async fn remove_route(
        &self,
        request: Request<pb::RemoveRouteRequest>,
    ) -> Result<Response<pb::RemoveRouteResponse>, tonic::Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.apply(
            caller,
            Change::RemoveRoute {
                listener: req.listener,
                hostname: req.hostname,
            },
        )
        .await?;
        Ok(Response::new(pb::RemoveRouteResponse {}))
    }

    async fn list_firewall_rules(
        &self,
        _: Request<pb::ListFirewallRulesRequest>,
    ) -> Result<Response<pb::ListFirewallRulesResponse>, tonic::Status> {
        let control = Arc::clone(&self.control);
        let rules = tokio::task::spawn_blocking(move || control.firewall_rules())
            .await
            .map_err(|e| tonic::Status::internal(format!("admin task failed: {e}")))?
            .map_err(status)?;
        Ok(Response::new(pb::ListFirewallRulesResponse {
            rules: rules.into_iter().map(Into::into).collect(),
        }))
    }

    async fn add_firewall_rule(
        &self,
        request: Request<pb::AddFirewallRuleRequest>,
    ) -> Result<Response<pb::AddFirewallRuleResponse>, tonic::Status> {
        let caller = caller_of(&request);
        let rule = rule_from_pb(request.into_inner().rule)?;
        let rule = match self.apply(caller, Change::AddFirewallRule(rule)).await? {
            Applied::Rule(rule) => rule,
            other => {
                return Err(tonic::Status::internal(format!(
                    "unexpected result of a firewall change: {other:?}"
                )));
            }
        };
        Ok(Response::new(pb::AddFirewallRuleResponse {
            rule: Some(rule.into()),
        }))
    }

    async fn remove_firewall_rule(
        &self,
        request: Request<pb::RemoveFirewallRuleRequest>,
    ) -> Result<Response<pb::RemoveFirewallRuleResponse>, tonic::Status> {
        let caller = caller_of(&request);
        let rule = rule_from_pb(request.into_inner().rule)?;
        self.apply(caller, Change::RemoveFirewallRule(rule)).await?;
        Ok(Response::new(pb::RemoveFirewallRuleResponse {}))
    }

    async fn reload(
        &self,
        request: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, tonic::Status> {
        let caller = caller_of(&request);
        tracing::info!(by = %caller, "reload requested through the admin API");
        let control = Arc::clone(&self.control);
        let report = tokio::task::spawn_blocking(move || control.reload(&caller))
            .await
            .map_err(|e| tonic::Status::internal(format!("admin task failed: {e}")))?
            .map_err(status)?;
        let (settings_applied, settings_need_restart, settings_error) = match report.settings {
            Ok(s) => (s.applied, s.need_restart, String::new()),
            Err(e) => (Vec::new(), Vec::new(), e),
        };
        Ok(Response::new(pb::ReloadResponse {
            routes: report.routes.into_iter().map(route_reload_to_pb).collect(),
            settings_applied,
            settings_need_restart,
            settings_error,
            listeners_not_applied: report.listeners_not_applied,
        }))
    }

    async fn add_listener(
        &self,
        request: Request<pb::AddListenerRequest>,
    ) -> Result<Response<pb::AddListenerResponse>, tonic::Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let applied = self
            .apply(
                caller,
                Change::AddListener {
                    addr: req.addr,
                    name: req.name,
                    kind: mc_proxy_shared::convert::listener_kind(req.kind)
                        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?,
                    redirect_port: req.redirect_port,
                    settings: ListenerChange {
                        proxy_protocol: Some(req.proxy_protocol),
                        proxy_protocol_from: Some(req.proxy_protocol_from),
                        no_sni_route: None,
                        access_log: Some(req.access_log),
                        client_limits: mc_proxy_shared::ClientLimitsPatch {
                            max_conns_per_client: req.max_conns_per_client,
                            new_conns_per_client: req.new_conns_per_client,
                            new_conns_burst: req.new_conns_burst,
                            client_ipv6_prefix: req.client_ipv6_prefix,
                        },
                    },
                },
            )
            .await?;
        let (listener, warnings) = listener_answer(applied)?;
        Ok(Response::new(pb::AddListenerResponse {
            listener: Some(listener),
            warnings,
        }))
    }

    async fn remove_listener(
        &self,
        request: Request<pb::RemoveListenerRequest>,
    ) -> Result<Response<pb::RemoveListenerResponse>, tonic::Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.apply(
            caller,
            Change::RemoveListener {
                listener: req.listener,
                with_routes: req.with_routes,
            },
        )
        .await?;
        Ok(Response::new(pb::RemoveListenerResponse {}))
    }

    async fn update_listener(
        &self,
        request: Request<pb::UpdateListenerRequest>,
    ) -> Result<Response<pb::UpdateListenerResponse>, tonic::Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let applied = self.apply(caller, update_listener_change(req)).await?;
        let (listener, warnings) = listener_answer(applied)?;
        Ok(Response::new(pb::UpdateListenerResponse {
            listener: Some(listener),
            warnings,
        }))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, tonic::Status> {
        let limit = usize::try_from(request.into_inner().limit).unwrap_or(usize::MAX);
        let (connections, total) = self.state().connections.list(limit);
        Ok(Response::new(pb::ListConnectionsResponse {
            connections: connections
                .into_iter()
                .map(|c| pb::OpenConnection {
                    id: c.id,
                    listener: c.listener.to_string(),
                    client: c.client.to_string(),
                    hostname: c.sni,
                    route: c.route.route.hostname.clone(),
                    mode: pb::RouteMode::from(c.route.route.mode).into(),
                    // The member an L4 connection was dialled to; an L7 connection chooses
                    // per request, so the route's set.
                    backend: c
                        .backend
                        .as_deref()
                        .map_or_else(|| c.route.route.backend_list(), str::to_owned),
                    age_ms: c.age.as_millis() as u64,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                })
                .collect(),
            total,
        }))
    }

    async fn set_backend_state(
        &self,
        request: Request<pb::SetBackendStateRequest>,
    ) -> Result<Response<pb::SetBackendStateResponse>, tonic::Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        let change = set_backend_change(req)?;
        let (route, _) = route_answer(self.apply(caller, change).await?)?;
        Ok(Response::new(pb::SetBackendStateResponse {
            route: Some(route),
        }))
    }

    async fn renew_certificate(
        &self,
        request: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, tonic::Status> {
        let hostname = request.into_inner().hostname;
        let state = self.state();
        let name = mc_proxy_shared::route_check::route_name(&hostname).ok_or_else(|| {
            tonic::Status::invalid_argument(format!(
                "{} is not a route name",
                mc_proxy_shared::text::clip(&hostname)
            ))
        })?;
        // Served or waiting, on any listener.
        let mut acme = None;
        for l in state.listeners().iter() {
            let served = l.routes().get(&name).map(|r| r.route.acme);
            let waiting = l.not_served_route(&name).map(|n| n.route.acme);
            if let Some(is_acme) = served.or(waiting) {
                acme = Some(acme.unwrap_or(false) || is_acme);
            }
        }
        match acme {
            None => Err(tonic::Status::not_found(format!("no route {name}"))),
            Some(false) => Err(tonic::Status::failed_precondition(format!(
                "route {name} is not an acme route (an l7 route's certificate files are \
                 renewed by replacing them, then mcproxyctl reload)"
            ))),
            // A fleet node without [acme] takes acme routes but orders nothing: a forced
            // renewal there would be answered and never done.
            Some(true) if !state.acme.orders_here() => Err(tonic::Status::failed_precondition(
                "this daemon has no [acme] section: nothing orders certificates here (renew \
                 on a node with [acme])",
            )),
            Some(true) => {
                tracing::info!(route = %name, "certificate renewal asked through the admin API");
                state.acme.force(&name);
                Ok(Response::new(pb::RenewCertificateResponse {}))
            }
        }
    }

    async fn list_talkers(
        &self,
        request: Request<pb::ListTalkersRequest>,
    ) -> Result<Response<pb::ListTalkersResponse>, tonic::Status> {
        let limit = match request.into_inner().limit {
            0 => usize::MAX,
            n => n as usize,
        };
        let talkers = self
            .state()
            .talkers
            .top(limit)
            .into_iter()
            .map(|t| pb::LimitTalker {
                client: t.client,
                hits: t.hits,
                error: t.error,
                last: t.last.as_str().to_owned(),
                route: t.route,
                last_ms: t.last_ms,
            })
            .collect();
        Ok(Response::new(pb::ListTalkersResponse { talkers }))
    }

    async fn apply_changes(
        &self,
        request: Request<pb::ApplyChangesRequest>,
    ) -> Result<Response<pb::ApplyChangesResponse>, tonic::Status> {
        let caller = caller_of(&request);
        let items = request.into_inner().changes;
        if items.len() > MAX_SET {
            return Err(tonic::Status::invalid_argument(format!(
                "{} changes in one set: at most {MAX_SET}",
                items.len()
            )));
        }
        let changes = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| set_item_change(item).map_err(|s| in_set(i, s)))
            .collect::<Result<Vec<_>, _>>()?;
        let results = match self.apply(caller, Change::Set(changes)).await? {
            Applied::Set(results) => results,
            other => {
                return Err(tonic::Status::internal(format!(
                    "unexpected result of a change set: {other:?}"
                )));
            }
        };
        let mut warnings = Vec::new();
        for (i, result) in results.iter().enumerate() {
            if let Applied::Route { warnings: w, .. } | Applied::Listener { warnings: w, .. } =
                result
            {
                warnings.extend(w.iter().map(|w| format!("change {}: {w}", i + 1)));
            }
        }
        Ok(Response::new(pb::ApplyChangesResponse {
            applied: u32::try_from(results.len()).unwrap_or(u32::MAX),
            warnings,
        }))
    }

    async fn close_connection(
        &self,
        request: Request<pb::CloseConnectionRequest>,
    ) -> Result<Response<pb::CloseConnectionResponse>, tonic::Status> {
        let caller = caller_of(&request);
        let id = request.into_inner().id;
        // Not a configuration change: nothing is stored, so no `control::apply`. The
        // connection logs its own end, with the outcome `admin_closed`.
        if !self.state().connections.close(id) {
            return Err(tonic::Status::not_found(format!(
                "no open connection {id} (mcproxyctl connections lists them)"
            )));
        }
        tracing::info!(id, by = %caller, "connection closed through the admin API");
        Ok(Response::new(pb::CloseConnectionResponse {}))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, tonic::Status> {
        let control = Arc::clone(&self.control);
        let events = BroadcastStream::new(self.state().events.subscribe()).map(move |item| {
            Ok(match item {
                Ok(timed) => event_to_pb(timed, control.state()),
                Err(BroadcastStreamRecvError::Lagged(dropped)) => pb::Event {
                    timestamp_ms: crate::model::events::now_ms(),
                    kind: Some(pb::event::Kind::Lagged(pb::Lagged { dropped })),
                },
            })
        });
        // End the stream at shutdown, or the server would wait for it forever.
        let events = events.take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(events)))
    }
}

/// The wire rule as a model rule; `control` parses and normalises its value.
fn rule_from_pb(rule: Option<pb::FirewallRule>) -> Result<FirewallRule, tonic::Status> {
    FirewallRule::try_from(required(rule, "rule")?)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))
}

/// An `UpdateRoute` request as a change (also a change of a set).
fn update_route_change(req: pb::UpdateRouteRequest) -> Result<Change, tonic::Status> {
    let mode = req
        .mode
        .map(request_mode)
        .transpose()
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let backend_protocol = req
        .backend_protocol
        .map(request_backend_protocol)
        .transpose()
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let invalid = |e: &dyn std::fmt::Display| tonic::Status::invalid_argument(e.to_string());
    // The set wins over field 4, which is a one-member set as before backend sets.
    let backends = match (req.backends, req.backend) {
        (Some(set), _) => Some(
            set.backends
                .into_iter()
                .map(RouteBackend::try_from)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(&e))?,
        ),
        (None, Some(one)) => Some(vec![RouteBackend::new(one)]),
        (None, None) => None,
    };
    let balance = req
        .balance
        .map(request_balance)
        .transpose()
        .map_err(|e| invalid(&e))?;
    let health_check = match (req.clear_health_check, req.health_check) {
        (true, Some(_)) => {
            return Err(tonic::Status::invalid_argument(
                "health_check and clear_health_check are both set: send one",
            ));
        }
        (true, None) => Some(None),
        (false, Some(check)) => Some(Some(HealthCheck::try_from(check).map_err(|e| invalid(&e))?)),
        (false, None) => None,
    };
    Ok(Change::UpdateRoute {
        listener: req.listener,
        hostname: req.hostname,
        patch: RoutePatch {
            hostname: req.new_hostname,
            backends,
            balance,
            health_check,
            mode,
            tls_cert: req.tls_cert,
            tls_key: req.tls_key,
            backend_tls: req.backend_tls,
            send_proxy_protocol: req.send_proxy_protocol,
            backend_protocol,
            access_log: req.access_log,
            limits: mc_proxy_shared::limits::RouteLimitsPatch {
                allow_from: req.allow_from.map(|l| l.nets),
                deny_from: req.deny_from.map(|l| l.nets),
                client_request_rate: req.client_request_rate,
                client_request_burst: req.client_request_burst,
                route_request_rate: req.route_request_rate,
                route_request_burst: req.route_request_burst,
                max_requests: req.max_requests,
                max_queue: req.max_queue,
                queue_timeout_ms: req.queue_timeout_ms,
            },
            acme: req.acme,
        },
    })
}

/// A `SetBackendState` request as a change (also a change of a set).
fn set_backend_change(req: pb::SetBackendStateRequest) -> Result<Change, tonic::Status> {
    // UNSPECIFIED means "unchanged" (a weight change), never "set it to the default": a
    // request with neither is refused by `apply`.
    let state = match req.state {
        0 => None,
        n => Some(AdminState::try_from(n).map_err(|_| {
            tonic::Status::invalid_argument(format!(
                "state {n} is not enabled, draining or disabled"
            ))
        })?),
    };
    Ok(Change::SetBackendState {
        listener: req.listener,
        hostname: req.hostname,
        address: req.address,
        state,
        weight: req.weight,
    })
}

/// An `AddRoute` request as a change (also a change of a set).
fn add_route_change(req: pb::AddRouteRequest) -> Result<Change, tonic::Status> {
    let route = Route::try_from(required(req.route, "route")?)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    Ok(Change::AddRoute {
        listener: req.listener,
        route,
    })
}

/// An `UpdateListener` request as a change (also a change of a set).
fn update_listener_change(req: pb::UpdateListenerRequest) -> Change {
    Change::UpdateListener {
        listener: req.listener,
        settings: ListenerChange {
            proxy_protocol: req.proxy_protocol,
            proxy_protocol_from: req.proxy_protocol_from.map(|p| p.sources),
            no_sni_route: req.no_sni_route,
            access_log: req.access_log,
            client_limits: mc_proxy_shared::ClientLimitsPatch {
                max_conns_per_client: req.max_conns_per_client,
                new_conns_per_client: req.new_conns_per_client,
                new_conns_burst: req.new_conns_burst,
                client_ipv6_prefix: req.client_ipv6_prefix,
            },
        },
    }
}

/// One change of an `ApplyChanges` set, converted as its own call would convert it.
fn set_item_change(item: pb::ChangeSetItem) -> Result<Change, tonic::Status> {
    use pb::change_set_item::Change as Item;
    Ok(match required(item.change, "change")? {
        Item::AddRoute(req) => add_route_change(req)?,
        Item::UpdateRoute(req) => update_route_change(req)?,
        Item::RemoveRoute(req) => Change::RemoveRoute {
            listener: req.listener,
            hostname: req.hostname,
        },
        Item::AddFirewallRule(req) => Change::AddFirewallRule(rule_from_pb(req.rule)?),
        Item::RemoveFirewallRule(req) => Change::RemoveFirewallRule(rule_from_pb(req.rule)?),
        Item::UpdateListener(req) => update_listener_change(req),
        Item::SetBackendState(req) => set_backend_change(req)?,
    })
}

/// A refusal of the `i`-th (from 0) change of a set before it reached the control plane:
/// its position in the text and the trailer, as [`status`] gives those that did.
fn in_set(i: usize, s: tonic::Status) -> tonic::Status {
    let index = i + 1;
    let mut status = tonic::Status::with_metadata(
        s.code(),
        format!("change {index}: {}", s.message()),
        s.metadata().clone(),
    );
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(index.to_string()) {
        status
            .metadata_mut()
            .insert(mc_proxy_shared::client::CHANGE_INDEX_HEADER, value);
    }
    status
}
