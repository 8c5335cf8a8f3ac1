//! The gRPC admin API (`mc_proxy.v1.AdminService`) on a Unix socket.
//!
//! I/O: the socket (created mode 0600, a stale file from a dead daemon replaced, a live daemon's
//! socket refused), the store (through `spawn_blocking`), and one ticker task that publishes a
//! stats snapshot about once a second while someone watches events.
//!
//! Invariants:
//! - Every write validates with the config's own `validate_route` (or the firewall's parser),
//!   writes the database, and only then swaps the live snapshot. A failed validation or write
//!   changes nothing. The store mutex is held from the write to the swap, so writes are
//!   serialised and the database and the snapshot never disagree.
//! - Connections in flight keep the route they started with; new ones see the change at once.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use ipnet::IpNet;
use mc_proxy_shared::pb::admin_service_server::{AdminService, AdminServiceServer};
use mc_proxy_shared::text::clip;
use mc_proxy_shared::{FirewallRule, FirewallRuleKind, Route, pb};
use tokio::net::UnixListener;
use tokio_stream::wrappers::{
    BroadcastStream, UnixListenerStream, errors::BroadcastStreamRecvError,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response};

use crate::config::{ValidRoute, validate_route};
use crate::firewall::Firewall;
use crate::reload::{ReloadOutcome, RouteReload, reload_certificates};
use crate::state::{ListenerState, State};
use crate::stats::{BUCKET_BOUNDS_SECONDS, HistogramSnapshot};
use crate::store::{Store, StoreError};

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

/// A bound admin socket; the file is removed when this is dropped.
#[derive(Debug)]
pub struct AdminSocket {
    listener: UnixListener,
    file: SocketFile,
}

/// Removes the socket file on drop, so a clean exit leaves nothing behind.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
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
        let file = SocketFile(path.to_owned());
        // Anyone who can connect can reroute traffic: owner only. (The directory's mode
        // guards the instant between bind and chmod.)
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        Ok(AdminSocket { listener, file })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.0
    }
}

/// Serves the admin API on `socket` until `shutdown` fires. Event streams end at shutdown too,
/// so this returns promptly.
pub async fn serve(
    socket: AdminSocket,
    state: Arc<State>,
    store: Arc<Mutex<Store>>,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    let AdminSocket { listener, file } = socket;
    tracing::info!(socket = %file.0.display(), "admin API listening");
    let service = Admin {
        state: Arc::clone(&state),
        store,
        started: Instant::now(),
        shutdown: shutdown.clone(),
    };
    let ticker = tokio::spawn(publish_stats(state, shutdown.clone()));
    let result = tonic::transport::Server::builder()
        .add_service(AdminServiceServer::new(service).max_encoding_message_size(64 * 1024 * 1024))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled())
        .await;
    ticker.abort();
    let _ = ticker.await;
    drop(file);
    Ok(result?)
}

/// Publishes a stats snapshot every second while anyone watches.
async fn publish_stats(state: Arc<State>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        state.events.publish(|| {
            pb::event::Kind::Stats(pb::StatsSnapshot {
                listeners: state.listeners.iter().map(|l| listener_status(l)).collect(),
                routes: route_statuses(&state, None),
            })
        });
    }
}

/// What a request asked for that cannot be done; becomes a gRPC status.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            StoreError::AlreadyExists(what) => {
                ApiError::AlreadyExists(format!("{what} already exists"))
            }
            other => {
                tracing::error!("admin write failed: {other}");
                ApiError::Internal(format!("database write failed, nothing changed: {other}"))
            }
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Invalid(m) => tonic::Status::invalid_argument(m),
            ApiError::NotFound(m) => tonic::Status::not_found(m),
            ApiError::AlreadyExists(m) => tonic::Status::already_exists(m),
            ApiError::Internal(m) => tonic::Status::internal(m),
        }
    }
}

/// The service: live state, the store, and when we started.
#[derive(Debug, Clone)]
struct Admin {
    state: Arc<State>,
    store: Arc<Mutex<Store>>,
    started: Instant,
    shutdown: CancellationToken,
}

impl Admin {
    /// Runs a write off the async runtime (SQLite blocks) with the store locked.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store, &State) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, tonic::Status> {
        let (store, state) = (Arc::clone(&self.store), Arc::clone(&self.state));
        let result = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().map_err(|_| {
                ApiError::Internal("store lock poisoned by an earlier failure".into())
            })?;
            f(&mut store, &state)
        })
        .await
        .map_err(|e| tonic::Status::internal(format!("admin task failed: {e}")))?;
        Ok(result?)
    }
}

fn listener_by_name<'a>(state: &'a State, name: &str) -> Result<&'a Arc<ListenerState>, ApiError> {
    let addr: SocketAddr = name.parse().map_err(|_| {
        ApiError::Invalid(format!(
            "listener {} is not an address like 127.0.0.1:8443",
            clip(name)
        ))
    })?;
    state
        .listeners
        .iter()
        .find(|l| l.addr == addr)
        .ok_or_else(|| {
            let known: Vec<String> = state.listeners.iter().map(|l| l.addr.to_string()).collect();
            ApiError::NotFound(format!(
                "no listener {addr} (listeners: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })
}

/// The longest value each request field may hold, in bytes. A longer one is refused with
/// INVALID_ARGUMENT before anything else looks at it, so no answer repeats a huge value and
/// nothing is stored that no resolver or file system could use.
mod max_len {
    /// A DNS name (253) with a leading `*.`.
    pub const HOSTNAME: usize = 255;
    /// `host:port`: a DNS name, a colon and a port.
    pub const BACKEND: usize = 261;
    /// A listener address, `[v6%scope]:port`.
    pub const LISTENER: usize = 64;
    /// `l4` / `l7`, or a firewall rule kind.
    pub const KEYWORD: usize = 8;
    /// PATH_MAX on Linux.
    pub const PATH: usize = 4096;
    /// An address or network, IPv6 included.
    pub const RULE: usize = 64;
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::Invalid(format!(
            "{field} is {} bytes long; at most {max} are accepted",
            value.len()
        )));
    }
    Ok(())
}

/// The daemon resolves a relative path against its own working directory, which is not the
/// directory of whoever sent it; so the API takes absolute paths only (`mcproxyctl` resolves
/// them against its own working directory before sending).
fn check_absolute(field: &str, path: &str) -> Result<(), ApiError> {
    if path.is_empty() || Path::new(path).is_absolute() {
        return Ok(());
    }
    Err(ApiError::Invalid(format!(
        "{field} {} is a relative path, and the daemon cannot know what it is relative to: \
         send an absolute path",
        clip(path)
    )))
}

fn check_route_fields(route: &pb::Route) -> Result<(), ApiError> {
    check_len("hostname", &route.hostname, max_len::HOSTNAME)?;
    check_len("backend", &route.backend, max_len::BACKEND)?;
    check_len("mode", &route.mode, max_len::KEYWORD)?;
    check_len("tls_cert", &route.tls_cert, max_len::PATH)?;
    check_len("tls_key", &route.tls_key, max_len::PATH)
}

fn check_update_fields(req: &pb::UpdateRouteRequest) -> Result<(), ApiError> {
    check_len("listener", &req.listener, max_len::LISTENER)?;
    check_len("hostname", &req.hostname, max_len::HOSTNAME)?;
    let optional = [
        ("new_hostname", &req.new_hostname, max_len::HOSTNAME),
        ("backend", &req.backend, max_len::BACKEND),
        ("mode", &req.mode, max_len::KEYWORD),
        ("tls_cert", &req.tls_cert, max_len::PATH),
        ("tls_key", &req.tls_key, max_len::PATH),
    ];
    for (field, value, max) in optional {
        if let Some(value) = value {
            check_len(field, value, max)?;
        }
    }
    Ok(())
}

fn route_from_pb(route: Option<pb::Route>) -> Result<Route, ApiError> {
    let r = route.ok_or_else(|| ApiError::Invalid("the request has no route".into()))?;
    Route::try_from(r).map_err(|e| ApiError::Invalid(e.to_string()))
}

fn validate(listener: &ListenerState, route: &Route) -> Result<ValidRoute, ApiError> {
    validate_route(route).map_err(|e| {
        ApiError::Invalid(format!(
            "listener {}, route {}: {e}",
            listener.addr, route.hostname
        ))
    })
}

/// Replaces a listener's table with its current routes changed by `edit`, keeping every
/// route's loaded key and counters.
fn swap_routes(state: &State, listener: &ListenerState, edit: impl FnOnce(&mut Vec<ValidRoute>)) {
    let mut routes: Vec<ValidRoute> = listener.routes().iter().map(|r| r.to_valid()).collect();
    edit(&mut routes);
    listener.replace_routes(state.build_table(listener.id, routes));
}

fn listener_status(l: &ListenerState) -> pb::ListenerStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &l.counters;
    pb::ListenerStatus {
        addr: l.addr.to_string(),
        proxy_protocol: l.proxy_protocol,
        proxy_protocol_from: l
            .proxy_protocol_from
            .iter()
            .map(ToString::to_string)
            .collect(),
        route_count: u32::try_from(l.routes().len()).unwrap_or(u32::MAX),
        active_connections: c.active.load(Relaxed),
        accepted: c.accepted.load(Relaxed),
        resets: c.resets.load(Relaxed),
        blocked: c.blocked.load(Relaxed),
        over_capacity: c.over_capacity.load(Relaxed),
        resets_by_reason: c
            .resets_by_reason()
            .map(|(r, n)| (r.to_owned(), n))
            .collect(),
    }
}

fn route_statuses(state: &State, only: Option<&ListenerState>) -> Vec<pb::RouteStatus> {
    let mut out = Vec::new();
    for l in &state.listeners {
        if only.is_some_and(|o| o.id != l.id) {
            continue;
        }
        for info in l.routes().iter() {
            let s = info.stats.snapshot();
            out.push(pb::RouteStatus {
                listener: l.addr.to_string(),
                route: Some(info.route().into()),
                stats: Some(pb::RouteStats {
                    active_connections: s.active,
                    total_connections: s.total,
                    bytes_in: s.bytes_up,
                    bytes_out: s.bytes_down,
                    backend_errors: s.backend_errors,
                    requests: s.requests,
                    responses: s.responses.to_vec(),
                    request_duration: Some(histogram(&s.request_duration)),
                    connect_duration: Some(histogram(&s.connect_duration)),
                }),
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

/// Parses and normalises a firewall rule from the API.
fn firewall_rule_from_pb(rule: Option<pb::FirewallRule>) -> Result<FirewallRule, ApiError> {
    let r = rule.ok_or_else(|| ApiError::Invalid("the request has no rule".into()))?;
    check_len("kind", &r.kind, max_len::KEYWORD)?;
    check_len("value", &r.value, max_len::RULE)?;
    let FirewallRule { kind, value } =
        FirewallRule::try_from(r).map_err(|e| ApiError::Invalid(e.to_string()))?;
    let value = value.trim();
    let value = match kind {
        FirewallRuleKind::Ip => value
            .parse::<IpAddr>()
            .map_err(|_| ApiError::Invalid(format!("{} is not an IP address", clip(value))))?
            .to_string(),
        FirewallRuleKind::Cidr => value
            .parse::<IpNet>()
            .map_err(|_| {
                ApiError::Invalid(format!(
                    "{} is not a network in CIDR notation such as 198.51.100.0/24",
                    clip(value)
                ))
            })?
            .trunc()
            .to_string(),
    };
    Ok(FirewallRule { kind, value })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for Admin {
    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, tonic::Status> {
        let listeners: Vec<pb::ListenerStatus> = self
            .state
            .listeners
            .iter()
            .map(|l| listener_status(l))
            .collect();
        Ok(Response::new(pb::GetStatusResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            active_connections: listeners.iter().map(|l| l.active_connections).sum(),
            total_connections: listeners.iter().map(|l| l.accepted).sum(),
            firewall_rules: u32::try_from(self.state.firewall().len()).unwrap_or(u32::MAX),
            listeners,
        }))
    }

    async fn list_routes(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, tonic::Status> {
        let name = request.into_inner().listener;
        check_len("listener", &name, max_len::LISTENER)?;
        let only = if name.is_empty() {
            None
        } else {
            Some(listener_by_name(&self.state, &name)?)
        };
        Ok(Response::new(pb::ListRoutesResponse {
            routes: route_statuses(&self.state, only.map(|l| &**l)),
        }))
    }

    async fn add_route(
        &self,
        request: Request<pb::AddRouteRequest>,
    ) -> Result<Response<pb::AddRouteResponse>, tonic::Status> {
        let req = request.into_inner();
        check_len("listener", &req.listener, max_len::LISTENER)?;
        if let Some(route) = &req.route {
            check_route_fields(route)?;
            check_absolute("tls_cert", &route.tls_cert)?;
            check_absolute("tls_key", &route.tls_key)?;
        }
        let response = self
            .write(move |store, state| {
                let listener = listener_by_name(state, &req.listener)?;
                let valid = validate(listener, &route_from_pb(req.route)?)?;
                store.create_route(listener.id, &valid.route)?;
                let (route, warnings) = (valid.route.clone(), valid.warnings.clone());
                swap_routes(state, listener, |routes| routes.push(valid));
                state.events.publish(|| {
                    pb::event::Kind::RouteChanged(pb::RouteChanged {
                        listener: listener.addr.to_string(),
                        action: "added".into(),
                        route: Some(route.clone().into()),
                        previous_hostname: String::new(),
                    })
                });
                tracing::info!(listener = %listener.addr, route = %route.hostname, backend = %route.backend, mode = %route.mode, "route added");
                Ok(pb::AddRouteResponse {
                    route: Some(route.into()),
                    warnings,
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn update_route(
        &self,
        request: Request<pb::UpdateRouteRequest>,
    ) -> Result<Response<pb::UpdateRouteResponse>, tonic::Status> {
        let req = request.into_inner();
        check_update_fields(&req)?;
        let response = self
            .write(move |store, state| {
                let listener = listener_by_name(state, &req.listener)?;
                let old = req.hostname.trim().to_ascii_lowercase();
                let current = store
                    .routes(listener.id)?
                    .into_iter()
                    .find(|r| r.hostname == old)
                    .ok_or_else(|| {
                        ApiError::NotFound(format!(
                            "no route {old} on listener {}",
                            listener.addr
                        ))
                    })?;
                // A path the request changes must be absolute; one it keeps is the operator's
                // earlier choice (a TOML-seeded route may hold a relative one).
                for (field, new, stored) in [
                    ("tls_cert", &req.tls_cert, &current.tls_cert),
                    ("tls_key", &req.tls_key, &current.tls_key),
                ] {
                    if let Some(new) = new.as_deref().filter(|new| new != stored) {
                        check_absolute(field, new)?;
                    }
                }
                let mode = match req.mode {
                    Some(m) => m.parse().map_err(|e: mc_proxy_shared::ParseModeError| {
                        ApiError::Invalid(e.to_string())
                    })?,
                    None => current.mode,
                };
                let merged = Route {
                    hostname: req.new_hostname.unwrap_or(current.hostname),
                    backend: req.backend.unwrap_or(current.backend),
                    mode,
                    tls_cert: req.tls_cert.unwrap_or(current.tls_cert),
                    tls_key: req.tls_key.unwrap_or(current.tls_key),
                    backend_tls: req.backend_tls.unwrap_or(current.backend_tls),
                    send_proxy_protocol: req
                        .send_proxy_protocol
                        .unwrap_or(current.send_proxy_protocol),
                };
                let valid = validate(listener, &merged)?;
                store.update_route(listener.id, &old, &valid.route)?;
                let (route, warnings) = (valid.route.clone(), valid.warnings.clone());
                swap_routes(state, listener, |routes| {
                    routes.retain(|r| r.route.hostname != old);
                    routes.push(valid);
                });
                state.events.publish(|| {
                    pb::event::Kind::RouteChanged(pb::RouteChanged {
                        listener: listener.addr.to_string(),
                        action: "updated".into(),
                        route: Some(route.clone().into()),
                        previous_hostname: old.clone(),
                    })
                });
                tracing::info!(listener = %listener.addr, route = %route.hostname, previous = %old, backend = %route.backend, mode = %route.mode, "route updated");
                Ok(pb::UpdateRouteResponse {
                    route: Some(route.into()),
                    warnings,
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn remove_route(
        &self,
        request: Request<pb::RemoveRouteRequest>,
    ) -> Result<Response<pb::RemoveRouteResponse>, tonic::Status> {
        let req = request.into_inner();
        check_len("listener", &req.listener, max_len::LISTENER)?;
        check_len("hostname", &req.hostname, max_len::HOSTNAME)?;
        self.write(move |store, state| {
            let listener = listener_by_name(state, &req.listener)?;
            let hostname = req.hostname.trim().to_ascii_lowercase();
            let removed = store
                .routes(listener.id)?
                .into_iter()
                .find(|r| r.hostname == hostname);
            store
                .delete_route(listener.id, &hostname)
                .map_err(|e| match e {
                    StoreError::NotFound(_) => ApiError::NotFound(format!(
                        "no route {hostname} on listener {}",
                        listener.addr
                    )),
                    other => other.into(),
                })?;
            swap_routes(state, listener, |routes| {
                routes.retain(|r| r.route.hostname != hostname);
            });
            state.events.publish(|| {
                pb::event::Kind::RouteChanged(pb::RouteChanged {
                    listener: listener.addr.to_string(),
                    action: "removed".into(),
                    route: removed.map(Into::into),
                    previous_hostname: String::new(),
                })
            });
            tracing::info!(listener = %listener.addr, route = %hostname, "route removed");
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::RemoveRouteResponse {}))
    }

    async fn list_firewall_rules(
        &self,
        _: Request<pb::ListFirewallRulesRequest>,
    ) -> Result<Response<pb::ListFirewallRulesResponse>, tonic::Status> {
        let rules = self.write(|store, _| Ok(store.firewall_rules()?)).await?;
        Ok(Response::new(pb::ListFirewallRulesResponse {
            rules: rules.into_iter().map(Into::into).collect(),
        }))
    }

    async fn add_firewall_rule(
        &self,
        request: Request<pb::AddFirewallRuleRequest>,
    ) -> Result<Response<pb::AddFirewallRuleResponse>, tonic::Status> {
        let rule = firewall_rule_from_pb(request.into_inner().rule)?;
        let rule = self
            .write(move |store, state| {
                store.add_firewall_rule(&rule)?;
                reload_firewall(store, state)?;
                publish_firewall_change(state, "added", &rule);
                Ok(rule)
            })
            .await?;
        Ok(Response::new(pb::AddFirewallRuleResponse {
            rule: Some(rule.into()),
        }))
    }

    async fn remove_firewall_rule(
        &self,
        request: Request<pb::RemoveFirewallRuleRequest>,
    ) -> Result<Response<pb::RemoveFirewallRuleResponse>, tonic::Status> {
        let rule = firewall_rule_from_pb(request.into_inner().rule)?;
        self.write(move |store, state| {
            store.remove_firewall_rule(&rule)?;
            reload_firewall(store, state)?;
            publish_firewall_change(state, "removed", &rule);
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::RemoveFirewallRuleResponse {}))
    }

    async fn reload(
        &self,
        _: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, tonic::Status> {
        let routes = self
            .write(|store, state| {
                tracing::info!("reload requested through the admin API");
                Ok(reload_certificates(store, state)?)
            })
            .await?;
        Ok(Response::new(pb::ReloadResponse {
            routes: routes.into_iter().map(route_reload_to_pb).collect(),
        }))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, tonic::Status> {
        let limit = usize::try_from(request.into_inner().limit).unwrap_or(usize::MAX);
        let (connections, total) = self.state.connections.list(limit);
        Ok(Response::new(pb::ListConnectionsResponse {
            connections,
            total,
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, tonic::Status> {
        let events = BroadcastStream::new(self.state.events.subscribe()).map(|item| {
            Ok(match item {
                Ok(event) => event,
                Err(BroadcastStreamRecvError::Lagged(dropped)) => pb::Event {
                    timestamp_ms: crate::events::now_ms(),
                    kind: Some(pb::event::Kind::Lagged(pb::Lagged { dropped })),
                },
            })
        });
        // End the stream at shutdown, or the server would wait for it forever.
        let events = events.take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(events)))
    }
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

fn reload_firewall(store: &Store, state: &State) -> Result<(), ApiError> {
    let firewall = Firewall::from_rules(&store.firewall_rules()?)
        .map_err(|e| ApiError::Internal(format!("stored {e}")))?;
    state.replace_firewall(firewall);
    Ok(())
}

fn publish_firewall_change(state: &State, action: &str, rule: &FirewallRule) {
    tracing::info!(kind = %rule.kind, value = %rule.value, "firewall rule {action}");
    state.events.publish(|| {
        pb::event::Kind::FirewallChanged(pb::FirewallChanged {
            action: action.to_owned(),
            rule: Some(rule.clone().into()),
        })
    });
}
