//! A typed client for the daemon's admin API over its Unix socket.
//!
//! I/O: one gRPC (HTTP/2) connection to the socket, made by [`AdminClient::connect`]. The API
//! speaks the plain Rust types of this crate ([`Route`], [`FirewallRule`], [`Status`], [`Event`],
//! ...), not prost messages. The conversions between the model and `pb`, which the daemon
//! uses too, are `crate::convert`'s; the ones into the client's own answer types are here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::convert::{UnknownWireValue, WireRouteError, request_backend_protocol, routed_mode};
pub use crate::model::RoutePatch;
use crate::model::{
    AdminState, BackendProtocol, FirewallRule, ListenerKind, MemberStats, Mode,
    ParseBackendProtocolError, ParseKindError, ParseModeError, Route,
};
use crate::outcome::{BlockedReason, ChangeAction, Outcome, ResetReason};
use crate::pb;
use crate::pb::admin_service_client::AdminServiceClient;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("cannot reach the mc-proxy daemon at {socket}: {reason} (is it running?)")]
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The socket is there but this user may not connect to it (the daemon creates it mode
    /// 0600, for its own user).
    #[error(
        "the admin socket {socket} is not accessible to this user (permission denied): \
         run as the daemon's user or root"
    )]
    PermissionDenied {
        /// The socket tried.
        socket: PathBuf,
    },
    /// The connection broke during a call: the daemon exited or was restarted. A change
    /// may or may not have been applied.
    #[error(
        "the daemon went away during the call ({reason}); a change may or may not have been \
         applied: list to check"
    )]
    Gone {
        /// What the transport said.
        reason: String,
    },
    /// The daemon answered with an error.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(tonic::Status),
    /// The daemon sent something this client cannot read (version skew?).
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
}

impl ClientError {
    /// A cluster node refused the change because another change to the same object won
    /// (ABORTED): nothing was applied; list and retry.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClientError::Rpc(s) if s.code() == tonic::Code::Aborted)
    }

    /// A cluster node could not reach its fleet's store (UNAVAILABLE): nothing was applied.
    pub fn is_store_away(&self) -> bool {
        matches!(self, ClientError::Rpc(s) if s.code() == tonic::Code::Unavailable)
    }

    /// A change set was refused at this change (its position, from 1): none was made.
    pub fn change_index(&self) -> Option<usize> {
        match self {
            ClientError::Rpc(s) => s
                .metadata()
                .get(CHANGE_INDEX_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            _ => None,
        }
    }
}

impl From<ParseModeError> for ClientError {
    fn from(e: ParseModeError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

impl From<WireRouteError> for ClientError {
    fn from(e: WireRouteError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

impl From<ParseKindError> for ClientError {
    fn from(e: ParseKindError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// The metadata key a daemon's own UNAVAILABLE carries (its cluster store is away), to tell
/// it from the UNAVAILABLE tonic makes up when the connection to the daemon breaks.
pub const STORE_AWAY_HEADER: &str = "mc-proxy-store-away";

/// The trailer of an `ApplyChanges` refusal: the refused change's position in the set, from
/// 1 (no change of the set was made).
pub const CHANGE_INDEX_HEADER: &str = "mc-proxy-change-index";

impl From<tonic::Status> for ClientError {
    /// A status the daemon sent is [`ClientError::Rpc`]; one tonic made up because the
    /// connection broke is [`ClientError::Gone`].
    fn from(status: tonic::Status) -> Self {
        if connection_lost(&status) {
            ClientError::Gone {
                reason: innermost(&status),
            }
        } else {
            ClientError::Rpc(status)
        }
    }
}

/// Did the transport fail (rather than the daemon answer)? The daemon never sends UNAVAILABLE;
/// tonic reports a lost connection as UNAVAILABLE, or as UNKNOWN/INTERNAL with the transport's
/// error as the status's source.
fn connection_lost(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    match status.code() {
        // The daemon's own UNAVAILABLE (a cluster node whose store is away) says so.
        tonic::Code::Unavailable => status.metadata().get(STORE_AWAY_HEADER).is_none(),
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled => {
            status.source().is_some()
        }
        _ => false,
    }
}

/// The innermost error's text: transport errors wrap the `io::Error` that says what happened.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        reason = inner.to_string();
        source = inner.source();
    }
    reason
}

/// The first `io::Error` in a chain, to tell "permission denied" from "nothing there".
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = err.source();
    }
    None
}

impl ClientError {
    /// The gRPC code, for errors the daemon returned.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc(status) => Some(status.code()),
            _ => None,
        }
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Internal => "internal error",
        tonic::Code::OutOfRange => "request too large",
        _ => "error",
    }
}

/// Daemon status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Daemon version.
    pub version: String,
    /// Time since the daemon started.
    #[serde(rename = "uptime_seconds", serialize_with = "as_secs")]
    pub uptime: Duration,
    /// Every listener.
    pub listeners: Vec<ListenerStatus>,
    /// Connections open now.
    pub active_connections: u64,
    /// Connections accepted since start.
    pub total_connections: u64,
    /// Firewall rules in force.
    pub firewall_rules: u32,
    /// The L7 backend connection pool, per backend.
    pub backends: Vec<BackendStatus>,
    /// On a cluster node: its link to the fleet's store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterLink>,
    /// The daemon's process id (a new one after an upgrade); `None` from older daemons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// One backend's pooled L7 connections (see the proto's `BackendStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendStatus {
    /// `host:port`.
    pub backend: String,
    /// The protocol its routes ask for.
    pub protocol: BackendProtocol,
    /// TLS to the backend.
    pub tls: bool,
    /// Connections open now.
    pub open: u64,
    /// Of those, carrying no request.
    pub idle: u64,
    /// Of those, carrying at least one request.
    pub in_use: u64,
    /// Requests in flight on them.
    pub requests: u64,
    /// Connections opened since start.
    pub opened: u64,
    /// Connection attempts failed since start.
    pub failed: u64,
}

impl TryFrom<pb::BackendStatus> for BackendStatus {
    type Error = ParseBackendProtocolError;

    fn try_from(b: pb::BackendStatus) -> Result<Self, Self::Error> {
        Ok(BackendStatus {
            protocol: request_backend_protocol(b.protocol)?,
            backend: b.backend,
            tls: b.tls,
            open: b.open,
            idle: b.idle,
            in_use: b.in_use,
            requests: b.requests,
            opened: b.opened,
            failed: b.failed,
        })
    }
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// One listener and its counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ListenerStatus {
    /// Configured address; names the listener in every call (as `name` does).
    pub addr: String,
    /// Its name (`addr` unless given one at `add_listener_with`); names it in every call.
    pub name: String,
    /// Expects PROXY protocol headers.
    pub proxy_protocol: bool,
    /// Peers allowed to send them (empty: any).
    pub proxy_protocol_from: Vec<String>,
    /// Routes served.
    pub route_count: u32,
    /// Stored routes not served (their certificate or key did not load); not in
    /// `route_count`. `list_routes` lists them with the reason.
    pub routes_not_served: u32,
    /// Connections open now.
    pub active_connections: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections reset (any reason).
    pub resets: u64,
    /// Connections reset by the firewall.
    pub blocked: u64,
    /// Connections refused at `max_connections`.
    pub over_capacity: u64,
    /// The route for ClientHellos without SNI; empty: they are reset.
    pub no_sni_route: String,
    /// Resets by reason (`not_tls`, `unknown_host`, `blocked`, ...).
    pub resets_by_reason: std::collections::BTreeMap<ResetReason, u64>,
    /// The address its sockets are bound to (differs from `addr` when its port is 0; empty
    /// from a daemon before run-time listeners).
    pub bound: String,
    /// Every L7 request on it is logged.
    pub access_log: bool,
    /// Its limits per client address.
    pub client_limits: crate::limits::ClientLimits,
    /// Its client table: (capacity, entries, evictions, untracked); capacity 0: none yet.
    pub client_table: ClientTableStatus,
    /// What it does with connections.
    pub kind: ListenerKind,
    /// An HTTP listener's redirect port (443 when none is set; 0 on a TLS listener).
    pub redirect_port: u16,
}

/// What a listener is given when it is added and keeps for its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewListener<'a> {
    /// Its name (`None`: its address).
    pub name: Option<&'a str>,
    /// What it does with connections.
    pub kind: ListenerKind,
    /// An HTTP listener's redirect port (`None`: 443).
    pub redirect_port: Option<u16>,
}

/// A listener's client table, as [`ListenerStatus::client_table`] shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClientTableStatus {
    /// Slots (0: no table yet, no limit was ever on).
    pub capacity: u64,
    /// Slots holding a client.
    pub entries: u64,
    /// Clients dropped to make room for another.
    pub evictions: u64,
    /// Connections admitted untracked (no slot could be had).
    pub untracked: u64,
}

/// A listener change's answer: the listener as it is now, and any warnings.
fn listener_answer(
    listener: Option<pb::ListenerStatus>,
    warnings: Vec<String>,
) -> Result<(ListenerStatus, Vec<String>), ClientError> {
    let listener = listener
        .ok_or_else(|| ClientError::Protocol("no listener in the answer".into()))?
        .try_into()?;
    Ok((listener, warnings))
}

/// What a listener update sets; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerUpdate {
    /// Expect PROXY protocol headers.
    pub proxy_protocol: Option<bool>,
    /// Peers allowed to send them (an empty list: any peer).
    pub proxy_protocol_from: Option<Vec<String>>,
    /// The route for ClientHellos without SNI (`""`: none).
    pub no_sni_route: Option<String>,
    /// Log every L7 request on it.
    pub access_log: Option<bool>,
    /// Limits per client address.
    pub client_limits: crate::limits::ClientLimitsPatch,
}

/// What a reload did ([`AdminClient::reload_all`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reload {
    /// One entry per stored L7 route.
    pub routes: Vec<RouteReload>,
    /// `[proxy]` settings applied to new connections, as `name: old -> new`.
    pub settings_applied: Vec<String>,
    /// `[proxy]` settings changed in the file that wait for a restart.
    pub settings_need_restart: Vec<String>,
    /// Why the config file was not re-read (settings unchanged).
    pub settings_error: Option<String>,
    /// The file's listeners the database does not hold, each with the command that adds it.
    pub listeners_not_applied: Vec<String>,
}

/// A route's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteStats {
    /// Connections open now.
    pub active_connections: u64,
    /// Connections since start.
    pub total_connections: u64,
    /// Client to backend bytes.
    pub bytes_in: u64,
    /// Backend to client bytes.
    pub bytes_out: u64,
    /// Failures the client saw (a reset, a 502/503/504 of the proxy's own).
    pub backend_errors: u64,
    /// Attempts on another backend after one failed: failures the client did not see.
    pub retries: u64,
    /// L7 requests.
    pub requests: u64,
    /// L7 responses by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [u64; 5],
    /// L7: time from receiving a request's head to handing back the response head (the
    /// backend's or the proxy's own 421/502/504), since the daemon started.
    pub request_duration: Histogram,
    /// Successful backend connection setups (L7: TCP, PROXY header, TLS, HTTP/2 handshake;
    /// L4: TCP connect), since the daemon started.
    pub connect_duration: Histogram,
    /// Per member of the backend set, in the route's order.
    pub members: Vec<MemberStats>,
    /// What the route's limits refused.
    pub limits: RouteLimitStats,
}

/// How often a route's limits refused something since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RouteLimitStats {
    /// Connections reset (L4) or requests answered 403 (L7) by `allow_from` / `deny_from`.
    pub denied: u64,
    /// L7 requests answered 429 by a request rate.
    pub rate_limited: u64,
    /// L7 requests answered 503 by `max_requests` (queue full, or waited too long).
    pub overloaded: u64,
    /// L7 requests that waited in the queue.
    pub queued: u64,
    /// L7 requests in flight under `max_requests` now.
    pub in_flight: u64,
    /// L7 requests waiting in the queue now.
    pub waiting: u64,
    /// HTTP/2 connections sent GOAWAY for resetting too many accepted streams.
    pub rapid_resets: u64,
}

/// A latency histogram with fixed buckets, as the daemon counts it.
///
/// Counts are per bucket, not cumulative: `counts[i]` samples took at most
/// `upper_bounds_seconds[i]` and more than the bound before it; the last count (one more than
/// there are bounds) is the `+Inf` bucket. The numbers only grow while the daemon runs, so
/// recent behaviour is the difference of two reads: `now.since(&earlier).quantile(0.99)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Histogram {
    /// Upper bound of every bucket but the last, in seconds, ascending.
    pub upper_bounds_seconds: Vec<f64>,
    /// Samples per bucket (not cumulative); the last one is `+Inf`.
    pub counts: Vec<u64>,
    /// Sum of the samples, in seconds.
    pub sum_seconds: f64,
    /// Number of samples (the sum of `counts`).
    pub count: u64,
}

impl Histogram {
    /// What was recorded after `earlier` was read: bucket by bucket differences. If the two do
    /// not describe the same series (other bounds, or a count went down because the daemon
    /// restarted in between), everything in `self` is new, and `self` is returned whole.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let comparable = self.upper_bounds_seconds == earlier.upper_bounds_seconds
            && self.counts.len() == earlier.counts.len()
            && self.counts.iter().zip(&earlier.counts).all(|(a, b)| a >= b)
            && self.count >= earlier.count;
        if !comparable {
            return self.clone();
        }
        Histogram {
            upper_bounds_seconds: self.upper_bounds_seconds.clone(),
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(a, b)| a - b)
                .collect(),
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
            count: self.count - earlier.count,
        }
    }

    /// The mean sample in seconds, or `None` without samples.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_seconds / self.count as f64)
    }

    /// Does the `q` quantile fall in the `+Inf` bucket, so that [`Histogram::quantile`] can
    /// only say "at least the highest bound"? A display must then say `>30s`, not `30s`.
    pub fn quantile_beyond_bounds(&self, q: f64) -> bool {
        let total: u64 = self.counts.iter().sum();
        let finite: u64 = self
            .counts
            .iter()
            .take(self.upper_bounds_seconds.len())
            .sum();
        total > 0 && (finite as f64) < q * total as f64
    }

    /// Estimates the `q` quantile (0.5: the median, 0.99: p99) in seconds, as Prometheus's
    /// `histogram_quantile` does: find the bucket holding the sample of rank `q × count` and
    /// interpolate linearly between its lower and upper bound (the first bucket starts at 0).
    /// A rank in the `+Inf` bucket is reported as the highest finite bound: the histogram
    /// cannot say more. `None` without samples, or when `q` is not within 0..=1.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n == 0 || ((below + n) as f64) < rank {
                below += n;
                continue;
            }
            let lower = if i == 0 {
                0.0
            } else {
                self.upper_bounds_seconds.get(i - 1).copied().unwrap_or(0.0)
            };
            let Some(&upper) = self.upper_bounds_seconds.get(i) else {
                return Some(self.upper_bounds_seconds.last().copied().unwrap_or(0.0));
            };
            let within = (rank - below as f64) / n as f64;
            return Some(lower + (upper - lower) * within);
        }
        // Rounding left the rank above the last sample: it is the largest one.
        self.upper_bounds_seconds.last().copied()
    }
}

/// A route, the listener it belongs to, and its counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteEntry {
    /// The listener's configured address.
    pub listener: String,
    /// Every field of the route.
    pub route: Route,
    /// Its counters (all zero on a route that is not served).
    pub stats: RouteStats,
    /// `Some(reason)`: the route is stored but not served (its L7 certificate or key did not
    /// load at start or at a reload); a reload that loads the files serves it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_served: Option<String>,
    /// A served L7 route: the certificate it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Certificate>,
}

/// Days before its end from which a certificate is called expiring (yellow in the console,
/// a warning in the log): Let's Encrypt renews at 30 days left, so 14 means renewal failed
/// for two weeks, and a file certificate still leaves two weeks to replace it.
pub const EXPIRY_WARN_DAYS: u64 = 14;

/// A served certificate (see the proto's `CertificateStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Certificate {
    /// `file` (the route's tls_cert/tls_key).
    pub source: String,
    /// The issuer's common name, else its organisation.
    pub issuer: String,
    /// Valid from, ms since the Unix epoch.
    pub not_before_ms: u64,
    /// Valid until, ms since the Unix epoch.
    pub not_after_ms: u64,
    /// ACME: when it is to be renewed, ms since the Unix epoch (`None`: not known yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renews_at_ms: Option<u64>,
    /// ACME: the CA's renewal information chose `renews_at_ms`.
    pub renewal_by_ari: bool,
    /// ACME: why the last order failed (the certificate is still served).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// How near a certificate's end is, at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// More than [`EXPIRY_WARN_DAYS`] left (whole days).
    Valid(u64),
    /// [`EXPIRY_WARN_DAYS`] or fewer left (whole days, 0 on its last day).
    Soon(u64),
    /// Past its end.
    Expired,
    /// Before its start.
    NotYetValid,
}

impl Certificate {
    /// How near its end is at `now_ms`.
    pub fn expiry(&self, now_ms: u64) -> Expiry {
        if now_ms < self.not_before_ms {
            return Expiry::NotYetValid;
        }
        if now_ms >= self.not_after_ms {
            return Expiry::Expired;
        }
        let days = (self.not_after_ms - now_ms) / 86_400_000;
        if days <= EXPIRY_WARN_DAYS {
            Expiry::Soon(days)
        } else {
            Expiry::Valid(days)
        }
    }

    /// What an operator should make of it at `now_ms`: its expiry, except that a valid one
    /// whose last renewal failed says so (the old certificate is served meanwhile).
    pub fn state(&self, now_ms: u64) -> CertState {
        match self.expiry(now_ms) {
            Expiry::Valid(_) if self.last_error.is_some() => CertState::RenewFailed,
            Expiry::Valid(_) => CertState::Ok,
            Expiry::Soon(_) => CertState::Expiring,
            Expiry::Expired => CertState::Expired,
            Expiry::NotYetValid => CertState::NotYetValid,
        }
    }
}

/// A served certificate's state ([`Certificate::state`]), as `certs list` names it and the
/// console colours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertState {
    /// Valid, more than [`EXPIRY_WARN_DAYS`] left.
    Ok,
    /// Valid, but its last renewal failed.
    RenewFailed,
    /// [`EXPIRY_WARN_DAYS`] or fewer left.
    Expiring,
    /// Past its end.
    Expired,
    /// Before its start.
    NotYetValid,
}

impl CertState {
    /// The word `certs list` writes.
    pub fn as_str(self) -> &'static str {
        match self {
            CertState::Ok => "ok",
            CertState::RenewFailed => "renew failed",
            CertState::Expiring => "expiring",
            CertState::Expired => "expired",
            CertState::NotYetValid => "not valid yet",
        }
    }
}

impl std::fmt::Display for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expiry::Valid(days) => write!(f, "{days}d left"),
            Expiry::Soon(0) => f.write_str("expires today"),
            Expiry::Soon(days) => write!(f, "expires in {days}d"),
            Expiry::Expired => f.write_str("EXPIRED"),
            Expiry::NotYetValid => f.write_str("not valid yet"),
        }
    }
}

/// One event from `watch_events`, with the daemon's time in ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimedEvent {
    /// When the daemon emitted it.
    pub timestamp_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// Who made a change and its id: the daemon's log lines for it carry `change{id=..}` too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeOrigin {
    /// Unique per daemon run, counted from 1.
    pub change_id: u64,
    /// In words: `uid 1000 pid 4242 (mcproxyctl)`, `SIGHUP`, `unknown`.
    pub by: String,
    /// An admin socket client's user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Its process id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its process name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub process: String,
    /// On a cluster node: the node whose admin API took the change.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
}

impl From<pb::ChangeOrigin> for ChangeOrigin {
    fn from(o: pb::ChangeOrigin) -> Self {
        ChangeOrigin {
            change_id: o.change_id,
            by: o.by,
            uid: o.uid,
            pid: o.pid,
            process: o.process,
            node: o.node,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A connection was routed.
    ConnectionOpened {
        /// Connection id (unique per daemon run).
        id: u64,
        /// Listener address.
        listener: String,
        /// Real client address.
        client: String,
        /// SNI hostname.
        hostname: String,
        /// The matching route's hostname.
        route: String,
        /// The route's mode.
        mode: Mode,
        /// Backend address.
        backend: String,
    },
    /// A connection ended (routed or not).
    ConnectionClosed {
        /// Connection id.
        id: u64,
        /// Listener address.
        listener: String,
        /// Real client address.
        client: String,
        /// SNI hostname, empty if unknown.
        hostname: String,
        /// The route's hostname, empty if none.
        route: String,
        /// The route's mode; `None` if it was not routed.
        mode: Option<Mode>,
        /// Backend, empty if none.
        backend: String,
        /// Client to backend bytes.
        bytes_in: u64,
        /// Backend to client bytes.
        bytes_out: u64,
        /// Lifetime.
        duration_ms: u64,
        /// How it ended (serialised as its name: `closed`, `unknown_host`, ...).
        outcome: Outcome,
        /// Error text, if any.
        error: String,
    },
    /// A connection was refused by policy.
    ConnectionBlocked {
        /// Listener address.
        listener: String,
        /// Client address.
        client: String,
        /// Which policy.
        reason: BlockedReason,
    },
    /// A route was added, updated or removed.
    RouteChanged {
        /// Listener address.
        listener: String,
        /// What happened.
        action: ChangeAction,
        /// The route (after the change; before it for "removed").
        route: Route,
        /// For "updated": the hostname before.
        previous_hostname: String,
        /// Who changed it (absent from a daemon before change origins).
        #[serde(skip_serializing_if = "Option::is_none")]
        origin: Option<ChangeOrigin>,
    },
    /// A listener was added, its settings changed, or it was removed.
    ListenerChanged {
        /// The listener's configured address.
        listener: String,
        /// Added, updated or removed.
        action: ChangeAction,
        /// Who changed it.
        #[serde(skip_serializing_if = "Option::is_none")]
        origin: Option<ChangeOrigin>,
    },
    /// An L7 route's certificate ends within [`EXPIRY_WARN_DAYS`] days or has ended.
    CertificateExpiring {
        /// The listener's configured address.
        listener: String,
        /// The route's hostname.
        route: String,
        /// The certificate's end, ms since the Unix epoch.
        not_after_ms: u64,
    },
    /// An ACME order ended.
    AcmeOrder {
        /// The route's hostname.
        route: String,
        /// Issued: the new certificate's end, ms since the Unix epoch.
        #[serde(skip_serializing_if = "Option::is_none")]
        not_after_ms: Option<u64>,
        /// Failed: why.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A cluster node's link to the fleet's store changed state.
    ClusterLink {
        /// The link as it is now.
        link: ClusterLink,
    },
    /// A firewall rule was added or removed.
    FirewallChanged {
        /// Added or removed.
        action: ChangeAction,
        /// The rule.
        rule: FirewallRule,
        /// Who changed it.
        #[serde(skip_serializing_if = "Option::is_none")]
        origin: Option<ChangeOrigin>,
    },
    /// Counters of every listener and route, about once a second.
    Stats {
        /// Listeners.
        listeners: Vec<ListenerStatus>,
        /// Routes.
        routes: Vec<RouteEntry>,
        /// The L7 backend pool, per backend.
        backends: Vec<BackendStatus>,
        /// On a cluster node: its link to the fleet's store.
        #[serde(skip_serializing_if = "Option::is_none")]
        cluster: Option<ClusterLink>,
    },
    /// A route member's live state changed (health check, ejection, admin change).
    BackendChanged {
        /// Listener address.
        listener: String,
        /// The route's hostname.
        route: String,
        /// The member, with its new state and figures.
        member: MemberStats,
        /// Set when an operator's change caused it (drain, weight, ...), absent for what
        /// health checking found.
        #[serde(skip_serializing_if = "Option::is_none")]
        origin: Option<ChangeOrigin>,
    },
    /// This subscriber read too slowly and lost events.
    Lagged {
        /// How many.
        dropped: u64,
    },
}

/// What a certificate reload did to one L7 route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    /// The files hold the certificate that was already served.
    Unchanged,
    /// The files hold a new certificate: new handshakes get it.
    Renewed,
    /// The route was not served (its files failed before) and now is.
    Added,
    /// The files did not load; see `error` and `kept`.
    Failed,
}

impl ReloadResult {
    /// The name scripts and tables use.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Renewed => "renewed",
            ReloadResult::Added => "added",
            ReloadResult::Failed => "failed",
        }
    }
}

/// One L7 route's certificate reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteReload {
    /// The listener's configured address.
    pub listener: String,
    /// The route's hostname.
    pub hostname: String,
    /// What happened.
    pub result: ReloadResult,
    /// For `Failed`: why, naming the file.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// For `Failed`: the route still serves its previous certificate.
    pub kept: bool,
    /// The served leaf's notAfter, when known.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub not_after: String,
    /// Load warnings (expired, name not covered).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A routed connection open now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Connection {
    /// Connection id, as in its events.
    pub id: u64,
    /// Listener address.
    pub listener: String,
    /// Real client address.
    pub client: String,
    /// SNI hostname.
    pub hostname: String,
    /// The matching route's hostname.
    pub route: String,
    /// The route's mode.
    pub mode: Mode,
    /// Backend address.
    pub backend: String,
    /// Time since it was routed.
    #[serde(rename = "age_ms", serialize_with = "as_millis")]
    pub age: Duration,
    /// Client to backend bytes so far.
    pub bytes_in: u64,
    /// Backend to client bytes so far.
    pub bytes_out: u64,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// The open connections, oldest first, possibly cut at the requested limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionList {
    /// The connections listed.
    pub connections: Vec<Connection>,
    /// How many are open (more than listed when the list was cut).
    pub total: u64,
}

impl ConnectionList {
    /// Some open connections are not listed.
    pub fn truncated(&self) -> bool {
        (self.connections.len() as u64) < self.total
    }
}

/// A connection to the daemon's admin socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    inner: AdminServiceClient<Channel>,
}

impl AdminClient {
    /// Connects to the daemon's Unix socket.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<AdminClient, ClientError> {
        let socket = socket.as_ref().to_owned();
        let connect_err = |reason: String| ClientError::Connect {
            socket: socket.clone(),
            reason,
        };
        // The URI is required by the API but unused: the connector below ignores it.
        let endpoint = Endpoint::try_from("http://mc-proxy.invalid")
            .map_err(|e| connect_err(e.to_string()))?;
        let path = socket.clone();
        let channel =
            endpoint
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .map_err(|e| {
                    // The transport error hides the io::Error that says what happened.
                    if io_kind(&e) == Some(std::io::ErrorKind::PermissionDenied) {
                        ClientError::PermissionDenied {
                            socket: socket.clone(),
                        }
                    } else {
                        connect_err(innermost(&e))
                    }
                })?;
        Ok(AdminClient {
            inner: AdminServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
        })
    }

    /// Version, uptime, listeners and totals.
    pub async fn status(&mut self) -> Result<Status, ClientError> {
        let r = self
            .inner
            .get_status(pb::GetStatusRequest {})
            .await?
            .into_inner();
        Ok(Status {
            version: r.version,
            uptime: Duration::from_secs(r.uptime_seconds),
            listeners: r
                .listeners
                .into_iter()
                .map(ListenerStatus::try_from)
                .collect::<Result<_, _>>()?,
            active_connections: r.active_connections,
            total_connections: r.total_connections,
            firewall_rules: r.firewall_rules,
            backends: r
                .backends
                .into_iter()
                .map(BackendStatus::try_from)
                .collect::<Result<_, _>>()
                .map_err(|e| ClientError::Protocol(e.to_string()))?,
            cluster: r.cluster.map(ClusterLink::from),
            pid: r.pid,
        })
    }

    /// Routes of one listener (`Some(addr)`) or of all.
    pub async fn list_routes(
        &mut self,
        listener: Option<&str>,
    ) -> Result<Vec<RouteEntry>, ClientError> {
        let r = self
            .inner
            .list_routes(pb::ListRoutesRequest {
                listener: listener.unwrap_or_default().to_owned(),
            })
            .await?
            .into_inner();
        r.routes.into_iter().map(RouteEntry::try_from).collect()
    }

    /// Adds a route; returns it as stored and any warnings.
    pub async fn add_route(
        &mut self,
        listener: &str,
        route: Route,
    ) -> Result<(Route, Vec<String>), ClientError> {
        let r = self
            .inner
            .add_route(pb::AddRouteRequest {
                listener: listener.to_owned(),
                route: Some(route.into()),
            })
            .await?
            .into_inner();
        Ok((required_route(r.route)?, r.warnings))
    }

    /// Changes the given fields of a route; returns it as stored and any warnings.
    pub async fn update_route(
        &mut self,
        listener: &str,
        hostname: &str,
        patch: RoutePatch,
    ) -> Result<(Route, Vec<String>), ClientError> {
        let r = self
            .inner
            .update_route(update_route_request(listener, hostname, patch))
            .await?
            .into_inner();
        Ok((required_route(r.route)?, r.warnings))
    }

    /// Sets one member of a route enabled, draining or disabled; returns the route as
    /// stored after the change.
    pub async fn set_backend_state(
        &mut self,
        listener: &str,
        hostname: &str,
        address: &str,
        state: AdminState,
    ) -> Result<Route, ClientError> {
        self.set_backend(listener, hostname, address, Some(state), None)
            .await
    }

    /// Sets one member's admin state and/or weight (1 to 256), leaving the rest of the set as
    /// it is; returns the route as stored after the change.
    pub async fn set_backend(
        &mut self,
        listener: &str,
        hostname: &str,
        address: &str,
        state: Option<AdminState>,
        weight: Option<u32>,
    ) -> Result<Route, ClientError> {
        let r = self
            .inner
            .set_backend_state(pb::SetBackendStateRequest {
                listener: listener.to_owned(),
                hostname: hostname.to_owned(),
                address: address.to_owned(),
                state: state.map_or(0, |s| pb::AdminState::from(s).into()),
                weight,
            })
            .await?
            .into_inner();
        required_route(r.route)
    }

    /// Makes `changes` as one set: all of them, or (an error) none. A refusal says which
    /// change in [`ClientError::change_index`]. Returns the warnings, each prefixed with its
    /// change's position.
    pub async fn apply_changes(
        &mut self,
        changes: Vec<SetChange>,
    ) -> Result<Vec<String>, ClientError> {
        let r = self
            .inner
            .apply_changes(pb::ApplyChangesRequest {
                changes: changes.into_iter().map(pb::ChangeSetItem::from).collect(),
            })
            .await?
            .into_inner();
        Ok(r.warnings)
    }

    /// Orders a new certificate now for the acme route `hostname` (answered once queued).
    pub async fn renew_certificate(&mut self, hostname: &str) -> Result<(), ClientError> {
        self.inner
            .renew_certificate(pb::RenewCertificateRequest {
                hostname: hostname.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// The client addresses that hit limits most, most first (`limit` 0: all).
    pub async fn talkers(&mut self, limit: u32) -> Result<Vec<Talker>, ClientError> {
        let r = self
            .inner
            .list_talkers(pb::ListTalkersRequest { limit })
            .await?
            .into_inner();
        Ok(r.talkers
            .into_iter()
            .map(|t| Talker {
                client: t.client,
                hits: t.hits,
                error: t.error,
                last: t.last,
                route: t.route,
                last_ms: t.last_ms,
            })
            .collect())
    }

    /// Removes a route.
    pub async fn remove_route(
        &mut self,
        listener: &str,
        hostname: &str,
    ) -> Result<(), ClientError> {
        self.inner
            .remove_route(pb::RemoveRouteRequest {
                listener: listener.to_owned(),
                hostname: hostname.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Every firewall rule.
    pub async fn firewall_rules(&mut self) -> Result<Vec<FirewallRule>, ClientError> {
        let r = self
            .inner
            .list_firewall_rules(pb::ListFirewallRulesRequest {})
            .await?
            .into_inner();
        r.rules
            .into_iter()
            .map(|rule| Ok(FirewallRule::try_from(rule)?))
            .collect()
    }

    /// Adds a rule; returns it as stored (normalised).
    pub async fn add_firewall_rule(
        &mut self,
        rule: FirewallRule,
    ) -> Result<FirewallRule, ClientError> {
        let r = self
            .inner
            .add_firewall_rule(pb::AddFirewallRuleRequest {
                rule: Some(rule.into()),
            })
            .await?
            .into_inner();
        let rule = r
            .rule
            .ok_or_else(|| ClientError::Protocol("no rule in the answer".into()))?;
        Ok(rule.try_into()?)
    }

    /// Removes a rule.
    pub async fn remove_firewall_rule(&mut self, rule: FirewallRule) -> Result<(), ClientError> {
        self.inner
            .remove_firewall_rule(pb::RemoveFirewallRuleRequest {
                rule: Some(rule.into()),
            })
            .await?;
        Ok(())
    }

    /// Sets (or, with `""`, clears) the route a listener gives ClientHellos without SNI.
    pub async fn set_no_sni_route(
        &mut self,
        listener: &str,
        hostname: &str,
    ) -> Result<ListenerStatus, ClientError> {
        let update = ListenerUpdate {
            no_sni_route: Some(hostname.to_owned()),
            ..ListenerUpdate::default()
        };
        Ok(self.update_listener(listener, update).await?.0)
    }

    /// Changes what `update` sets on a listener, all or nothing; the listener as it is now
    /// and any warnings.
    pub async fn update_listener(
        &mut self,
        listener: &str,
        update: ListenerUpdate,
    ) -> Result<(ListenerStatus, Vec<String>), ClientError> {
        let r = self
            .inner
            .update_listener(update_listener_request(listener, update))
            .await?
            .into_inner();
        listener_answer(r.listener, r.warnings)
    }

    /// Adds a listener (bound at once on every worker, stored after); it has no route yet.
    pub async fn add_listener(
        &mut self,
        addr: &str,
        proxy_protocol: bool,
        proxy_protocol_from: Vec<String>,
    ) -> Result<(ListenerStatus, Vec<String>), ClientError> {
        let update = ListenerUpdate {
            proxy_protocol: Some(proxy_protocol),
            proxy_protocol_from: Some(proxy_protocol_from),
            ..ListenerUpdate::default()
        };
        self.add_listener_with(addr, NewListener::default(), update)
            .await
    }

    /// Adds a listener with the settings `fields` gives (unset: off; the no-SNI route is
    /// ignored, a new listener has no route) and what `new` fixes for its life (its name,
    /// its kind).
    pub async fn add_listener_with(
        &mut self,
        addr: &str,
        new: NewListener<'_>,
        fields: ListenerUpdate,
    ) -> Result<(ListenerStatus, Vec<String>), ClientError> {
        let NewListener {
            name,
            kind,
            redirect_port,
        } = new;
        let r = self
            .inner
            .add_listener(pb::AddListenerRequest {
                addr: addr.to_owned(),
                proxy_protocol: fields.proxy_protocol.unwrap_or(false),
                proxy_protocol_from: fields.proxy_protocol_from.unwrap_or_default(),
                access_log: fields.access_log.unwrap_or(false),
                name: name.map(str::to_owned),
                max_conns_per_client: fields.client_limits.max_conns_per_client,
                new_conns_per_client: fields.client_limits.new_conns_per_client,
                new_conns_burst: fields.client_limits.new_conns_burst,
                client_ipv6_prefix: fields.client_limits.client_ipv6_prefix,
                kind: pb::ListenerKind::from(kind).into(),
                redirect_port: redirect_port.map(u32::from),
            })
            .await?
            .into_inner();
        listener_answer(r.listener, r.warnings)
    }

    /// Removes a listener (with its routes when `with_routes`; refused otherwise while it has
    /// some).
    pub async fn remove_listener(
        &mut self,
        listener: &str,
        with_routes: bool,
    ) -> Result<(), ClientError> {
        self.inner
            .remove_listener(pb::RemoveListenerRequest {
                listener: listener.to_owned(),
                with_routes,
            })
            .await?;
        Ok(())
    }

    /// Re-reads every L7 route's certificate and key (what SIGHUP does); one entry per
    /// stored L7 route. [`AdminClient::reload_all`] also tells what the settings did.
    pub async fn reload(&mut self) -> Result<Vec<RouteReload>, ClientError> {
        Ok(self.reload_all().await?.routes)
    }

    /// A reload as SIGHUP does it: `[proxy]` settings re-read from the config file, the
    /// file's listeners the database lacks named, every L7 certificate re-read.
    pub async fn reload_all(&mut self) -> Result<Reload, ClientError> {
        let r = self.inner.reload(pb::ReloadRequest {}).await?.into_inner();
        Ok(Reload {
            routes: r
                .routes
                .into_iter()
                .map(RouteReload::try_from)
                .collect::<Result<_, _>>()?,
            settings_applied: r.settings_applied,
            settings_need_restart: r.settings_need_restart,
            settings_error: Some(r.settings_error).filter(|e| !e.is_empty()),
            listeners_not_applied: r.listeners_not_applied,
        })
    }

    /// On a cluster node: its link to the fleet's store and every registered node.
    pub async fn cluster_status(&mut self) -> Result<ClusterStatus, ClientError> {
        let r = self
            .inner
            .cluster_status(pb::ClusterStatusRequest {})
            .await?
            .into_inner();
        let link = r
            .link
            .ok_or_else(|| ClientError::Protocol("a cluster status without its link".into()))?;
        Ok(ClusterStatus {
            link: ClusterLink::from(link),
            nodes: r
                .nodes
                .into_iter()
                .map(|n| ClusterNode {
                    name: n.name,
                    version: n.version,
                    listeners: n.listeners,
                    admin: n.admin,
                    metrics: n.metrics,
                    applied_revision: n.applied_revision,
                    last_error: n.last_error,
                    started_ms: n.started_ms,
                })
                .collect(),
            nodes_error: r.nodes_error,
        })
    }

    /// Closes the routed connection `id` now (outcome `admin_closed`).
    pub async fn close_connection(&mut self, id: u64) -> Result<(), ClientError> {
        self.inner
            .close_connection(pb::CloseConnectionRequest { id })
            .await?;
        Ok(())
    }

    /// The routed connections open now, oldest first, at most `limit` (0: the daemon's
    /// maximum).
    pub async fn list_connections(&mut self, limit: u32) -> Result<ConnectionList, ClientError> {
        let r = self
            .inner
            .list_connections(pb::ListConnectionsRequest { limit })
            .await?
            .into_inner();
        Ok(ConnectionList {
            total: r.total,
            connections: r
                .connections
                .into_iter()
                .map(|c| {
                    Ok(Connection {
                        id: c.id,
                        mode: routed_mode(c.mode)?.ok_or_else(|| {
                            ClientError::Protocol("connection without mode".into())
                        })?,
                        listener: c.listener,
                        client: c.client,
                        hostname: c.hostname,
                        route: c.route,
                        backend: c.backend,
                        age: Duration::from_millis(c.age_ms),
                        bytes_in: c.bytes_in,
                        bytes_out: c.bytes_out,
                    })
                })
                .collect::<Result<_, ClientError>>()?,
        })
    }

    /// Follows the daemon's events until the stream ends or the caller drops it.
    pub async fn watch_events(
        &mut self,
    ) -> Result<impl Stream<Item = Result<TimedEvent, ClientError>> + use<>, ClientError> {
        let stream = self
            .inner
            .watch_events(pb::WatchEventsRequest {})
            .await?
            .into_inner();
        Ok(stream.map(|item| TimedEvent::try_from(item?)))
    }
}

fn required_route(route: Option<pb::Route>) -> Result<Route, ClientError> {
    let route = route.ok_or_else(|| ClientError::Protocol("no route in the answer".into()))?;
    Ok(route.try_into()?)
}

impl From<UnknownWireValue> for ClientError {
    fn from(e: UnknownWireValue) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

fn outcome_from_pb(
    outcome: Option<pb::connection_closed::Outcome>,
) -> Result<Outcome, ClientError> {
    use pb::connection_closed::Outcome as O;
    match outcome {
        Some(O::Reset(r)) => Ok(Outcome::Reset(r.try_into()?)),
        Some(O::Closed(c)) => Ok(Outcome::Closed(c.try_into()?)),
        None => Err(ClientError::Protocol(
            "connection closed without an outcome".into(),
        )),
    }
}

impl TryFrom<pb::ListenerStatus> for ListenerStatus {
    type Error = ClientError;

    fn try_from(l: pb::ListenerStatus) -> Result<Self, Self::Error> {
        // A daemon from before listener names names each by its address.
        let name = if l.name.is_empty() {
            l.addr.clone()
        } else {
            l.name
        };
        Ok(ListenerStatus {
            addr: l.addr,
            name,
            proxy_protocol: l.proxy_protocol,
            proxy_protocol_from: l.proxy_protocol_from,
            route_count: l.route_count,
            routes_not_served: l.routes_not_served,
            active_connections: l.active_connections,
            accepted: l.accepted,
            resets: l.resets,
            blocked: l.blocked,
            over_capacity: l.over_capacity,
            no_sni_route: l.no_sni_route,
            bound: l.bound,
            access_log: l.access_log,
            client_limits: l.client_limits.map(Into::into).unwrap_or_default(),
            client_table: l
                .client_table
                .map(|t| ClientTableStatus {
                    capacity: t.capacity,
                    entries: t.entries,
                    evictions: t.evictions,
                    untracked: t.untracked,
                })
                .unwrap_or_default(),
            resets_by_reason: l
                .resets_by_reason
                .into_iter()
                .map(|c| Ok((ResetReason::try_from(c.reason)?, c.count)))
                .collect::<Result<_, UnknownWireValue>>()?,
            kind: crate::convert::listener_kind(l.kind)?,
            redirect_port: u16::try_from(l.redirect_port).unwrap_or(0),
        })
    }
}

impl TryFrom<pb::RouteStats> for RouteStats {
    type Error = UnknownWireValue;

    fn try_from(s: pb::RouteStats) -> Result<Self, Self::Error> {
        let mut responses = [0; 5];
        for (slot, n) in responses.iter_mut().zip(s.responses) {
            *slot = n;
        }
        Ok(RouteStats {
            members: s
                .members
                .into_iter()
                .map(MemberStats::try_from)
                .collect::<Result<_, _>>()?,
            active_connections: s.active_connections,
            total_connections: s.total_connections,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            backend_errors: s.backend_errors,
            retries: s.retries,
            requests: s.requests,
            responses,
            request_duration: s.request_duration.map(Histogram::from).unwrap_or_default(),
            connect_duration: s.connect_duration.map(Histogram::from).unwrap_or_default(),
            limits: s
                .limit_stats
                .map(|l| RouteLimitStats {
                    denied: l.denied,
                    rate_limited: l.rate_limited,
                    overloaded: l.overloaded,
                    queued: l.queued,
                    in_flight: l.in_flight,
                    waiting: l.waiting,
                    rapid_resets: l.rapid_resets,
                })
                .unwrap_or_default(),
        })
    }
}

impl From<pb::Histogram> for Histogram {
    fn from(h: pb::Histogram) -> Self {
        Histogram {
            upper_bounds_seconds: h.upper_bounds_seconds,
            counts: h.counts,
            sum_seconds: h.sum_seconds,
            count: h.count,
        }
    }
}

impl TryFrom<pb::RouteStatus> for RouteEntry {
    type Error = ClientError;

    fn try_from(r: pb::RouteStatus) -> Result<Self, Self::Error> {
        Ok(RouteEntry {
            listener: r.listener,
            route: required_route(r.route)?,
            stats: r
                .stats
                .map(RouteStats::try_from)
                .transpose()?
                .unwrap_or_default(),
            not_served: Some(r.not_served).filter(|reason| !reason.is_empty()),
            certificate: r.certificate.map(|c| Certificate {
                source: c.source,
                issuer: c.issuer,
                not_before_ms: c.not_before_ms,
                not_after_ms: c.not_after_ms,
                renews_at_ms: Some(c.renews_at_ms).filter(|ms| *ms != 0),
                renewal_by_ari: c.renewal_by_ari,
                last_error: Some(c.last_error).filter(|e| !e.is_empty()),
            }),
        })
    }
}

impl TryFrom<pb::RouteReload> for RouteReload {
    type Error = ClientError;

    fn try_from(r: pb::RouteReload) -> Result<Self, Self::Error> {
        use pb::ReloadResult as R;
        let result = match r.result() {
            R::Unchanged => ReloadResult::Unchanged,
            R::Renewed => ReloadResult::Renewed,
            R::Added => ReloadResult::Added,
            R::Failed => ReloadResult::Failed,
            R::Unspecified => {
                return Err(ClientError::Protocol(format!(
                    "reload result {} for route {} is unknown to this client",
                    r.result, r.hostname
                )));
            }
        };
        Ok(RouteReload {
            listener: r.listener,
            hostname: r.hostname,
            result,
            error: r.error,
            kept: r.kept,
            not_after: r.not_after,
            warnings: r.warnings,
        })
    }
}

impl TryFrom<pb::Event> for TimedEvent {
    type Error = ClientError;

    fn try_from(e: pb::Event) -> Result<Self, Self::Error> {
        use pb::event::Kind;
        let kind = e
            .kind
            .ok_or_else(|| ClientError::Protocol("event without a kind".into()))?;
        let event = match kind {
            Kind::ConnectionOpened(c) => Event::ConnectionOpened {
                id: c.id,
                listener: c.listener,
                client: c.client,
                hostname: c.hostname,
                route: c.route,
                mode: routed_mode(c.mode)?
                    .ok_or_else(|| ClientError::Protocol("opened without a mode".into()))?,
                backend: c.backend,
            },
            Kind::ConnectionClosed(c) => Event::ConnectionClosed {
                id: c.id,
                listener: c.listener,
                client: c.client,
                hostname: c.hostname,
                route: c.route,
                mode: routed_mode(c.mode)?,
                backend: c.backend,
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                duration_ms: c.duration_ms,
                outcome: outcome_from_pb(c.outcome)?,
                error: c.error,
            },
            Kind::ConnectionBlocked(c) => Event::ConnectionBlocked {
                listener: c.listener,
                client: c.client,
                reason: c.reason.try_into()?,
            },
            Kind::RouteChanged(c) => Event::RouteChanged {
                listener: c.listener,
                action: c.action.try_into()?,
                route: required_route(c.route)?,
                previous_hostname: c.previous_hostname,
                origin: c.origin.map(Into::into),
            },
            Kind::ClusterLink(l) => Event::ClusterLink {
                link: ClusterLink::from(l),
            },
            Kind::AcmeOrder(o) => Event::AcmeOrder {
                route: o.route,
                not_after_ms: Some(o.not_after_ms).filter(|ms| *ms != 0),
                error: Some(o.error).filter(|e| !e.is_empty()),
            },
            Kind::CertificateExpiring(c) => Event::CertificateExpiring {
                listener: c.listener,
                route: c.route,
                not_after_ms: c.not_after_ms,
            },
            Kind::ListenerChanged(c) => Event::ListenerChanged {
                listener: c.listener,
                action: c.action.try_into()?,
                origin: c.origin.map(Into::into),
            },
            Kind::FirewallChanged(c) => Event::FirewallChanged {
                action: c.action.try_into()?,
                rule: c
                    .rule
                    .ok_or_else(|| ClientError::Protocol("firewall event without a rule".into()))?
                    .try_into()?,
                origin: c.origin.map(Into::into),
            },
            Kind::Stats(s) => Event::Stats {
                listeners: s
                    .listeners
                    .into_iter()
                    .map(ListenerStatus::try_from)
                    .collect::<Result<_, _>>()?,
                routes: s
                    .routes
                    .into_iter()
                    .map(RouteEntry::try_from)
                    .collect::<Result<_, _>>()?,
                backends: s
                    .backends
                    .into_iter()
                    .map(BackendStatus::try_from)
                    .collect::<Result<_, _>>()
                    .map_err(|e| ClientError::Protocol(e.to_string()))?,
                cluster: s.cluster.map(ClusterLink::from),
            },
            Kind::BackendChanged(c) => Event::BackendChanged {
                listener: c.listener,
                route: c.route,
                member: c
                    .member
                    .ok_or_else(|| ClientError::Protocol("backend event without a member".into()))?
                    .try_into()?,
                origin: c.origin.map(Into::into),
            },
            Kind::Lagged(l) => Event::Lagged { dropped: l.dropped },
        };
        Ok(TimedEvent {
            timestamp_ms: e.timestamp_ms,
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    #[test]
    fn backend_protocol_crosses_the_wire_and_unspecified_means_h2() {
        for protocol in BackendProtocol::ALL.iter().copied() {
            let route = Route {
                hostname: "web.test".into(),
                backend_protocol: protocol,
                ..Route::default()
            };
            let wire = pb::Route::from(route.clone());
            assert_ne!(
                wire.backend_protocol,
                pb::BackendProtocol::Unspecified as i32,
                "{protocol}: answers spell it out"
            );
            assert_eq!(Route::try_from(wire), Ok(route));
        }
        assert_eq!(request_backend_protocol(0), Ok(BackendProtocol::H2));
        let old_client = pb::Route {
            hostname: "old.test".into(),
            ..pb::Route::default()
        };
        assert_eq!(
            Route::try_from(old_client).map(|r| r.backend_protocol),
            Ok(BackendProtocol::H2)
        );
        let err = Route::try_from(pb::Route {
            backend_protocol: 4,
            ..pb::Route::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid backend_protocol 4: expected \"h2\", \"http1\" or \"auto\" \
             (empty means \"h2\")"
        );
    }

    #[test]
    fn a_backend_set_crosses_the_wire_whole_and_field_2_serves_old_peers() {
        let route = Route {
            hostname: "web.test".into(),
            backends: vec![
                RouteBackend::new("10.0.0.1:80").with_weight(3),
                RouteBackend {
                    state: AdminState::Draining,
                    ..RouteBackend::new("10.0.0.1:81")
                },
            ],
            balance: Balance::LeastConn,
            health_check: Some(HealthCheck {
                path: "/healthz".into(),
                expect: "2xx".parse().unwrap(),
                ..HealthCheck::default()
            }),
            mode: Mode::L7,
            ..Route::default()
        };
        let wire = pb::Route::from(route.clone());
        assert_eq!(
            wire.backend, "10.0.0.1:80",
            "an old client sees the first member"
        );
        assert_eq!(wire.balance, pb::Balance::LeastConn as i32);
        assert_eq!(Route::try_from(wire), Ok(route));

        // An old client sends field 2 only: one enabled member of weight 1, round robin.
        let old = Route::try_from(pb::Route {
            hostname: "old.test".into(),
            backend: "127.0.0.1:9443".into(),
            ..pb::Route::default()
        })
        .unwrap();
        assert_eq!(old.backends, vec![RouteBackend::new("127.0.0.1:9443")]);
        assert_eq!((old.balance, old.health_check), (Balance::RoundRobin, None));
        // With a set, field 2 is ignored.
        let both = Route::try_from(pb::Route {
            backend: "ignored:1".into(),
            backends: vec![pb::RouteBackend {
                address: "a:1".into(),
                ..pb::RouteBackend::default()
            }],
            ..pb::Route::default()
        })
        .unwrap();
        assert_eq!(both.backends, vec![RouteBackend::new("a:1")]);
    }

    #[test]
    fn a_health_check_left_out_takes_the_defaults_and_a_bad_expect_is_refused() {
        let check = HealthCheck::try_from(pb::HealthCheck {
            path: "/up".into(),
            ..pb::HealthCheck::default()
        })
        .unwrap();
        assert_eq!(
            check,
            HealthCheck {
                path: "/up".into(),
                ..HealthCheck::default()
            }
        );
        let err = HealthCheck::try_from(pb::HealthCheck {
            expect: Some("2xx-3xx".into()),
            ..pb::HealthCheck::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("\"2xx-3xx\""), "{err}");
        let ranges = HealthCheck::try_from(pb::HealthCheck {
            expect: Some("200,301-302,4xx".into()),
            ..pb::HealthCheck::default()
        })
        .unwrap();
        assert_eq!(
            pb::HealthCheck::from(ranges).expect.as_deref(),
            Some("200,301-302,4xx")
        );
        // Member states the wire leaves out are refused, not guessed.
        assert!(MemberStats::try_from(pb::MemberStats::default()).is_err());
    }

    #[test]
    fn an_explicit_zero_crosses_the_wire_as_zero_and_only_a_field_left_out_is_the_default() {
        use prost::Message;
        // Zeros set by the sender arrive as zeros, for validation to refuse.
        let zero = HealthCheck {
            interval: Duration::ZERO,
            timeout: Duration::ZERO,
            rise: 0,
            fall: 0,
            ..HealthCheck::default()
        };
        let wire = pb::HealthCheck::from(zero.clone());
        assert_eq!(
            (wire.interval_ms, wire.timeout_ms, wire.rise, wire.fall),
            (Some(0), Some(0), Some(0), Some(0))
        );
        let bytes = wire.encode_to_vec();
        let back = pb::HealthCheck::decode(bytes.as_slice()).unwrap();
        assert_eq!(HealthCheck::try_from(back), Ok(zero));
        let empty_expect = HealthCheck::try_from(pb::HealthCheck {
            expect: Some(String::new()),
            ..pb::HealthCheck::default()
        });
        assert!(
            empty_expect.is_err(),
            "an empty expect is refused as in the TOML"
        );

        let member = pb::RouteBackend::from(RouteBackend::new("a:1").with_weight(0));
        let back = pb::RouteBackend::decode(member.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.weight, Some(0));
        assert_eq!(RouteBackend::try_from(back).unwrap().weight, 0);

        // A peer from before presence: it left out a 0 (meaning the default) and sent any
        // other value as the same bytes a field with presence has.
        let old_member = [0x0a, 0x03, b'a', b':', b'1'];
        let back = pb::RouteBackend::decode(old_member.as_slice()).unwrap();
        assert_eq!(back.weight, None);
        assert_eq!(RouteBackend::try_from(back).unwrap().weight, 1);
        // address "a:1", weight 3, state ENABLED.
        let old_weighted = [0x0a, 0x03, b'a', b':', b'1', 0x10, 0x03, 0x18, 0x01];
        assert_eq!(
            pb::RouteBackend::decode(old_weighted.as_slice())
                .unwrap()
                .weight,
            Some(3)
        );
        assert_eq!(
            pb::RouteBackend::from(RouteBackend::new("a:1").with_weight(3)).encode_to_vec(),
            old_weighted,
            "a weight is encoded as it was before presence"
        );
        // An old client's check with rise 4 only: the rest are the defaults.
        let old_check = [0x18, 0x04];
        let back = HealthCheck::try_from(pb::HealthCheck::decode(old_check.as_slice()).unwrap());
        assert_eq!(
            back,
            Ok(HealthCheck {
                rise: 4,
                ..HealthCheck::default()
            })
        );
    }

    /// Bounds 0.01, 0.1, 1 (and +Inf) with the given per-bucket counts.
    fn hist(counts: [u64; 4]) -> Histogram {
        Histogram {
            upper_bounds_seconds: vec![0.01, 0.1, 1.0],
            counts: counts.to_vec(),
            sum_seconds: 0.0,
            count: counts.iter().sum(),
        }
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn quantile_interpolates_within_the_bucket() {
        // 10 samples <= 10 ms, 10 in (10 ms, 100 ms].
        let h = hist([10, 10, 0, 0]);
        // Rank 5 of 20: halfway through the first bucket, which starts at 0.
        assert!(close(h.quantile(0.25), 0.005), "{:?}", h.quantile(0.25));
        // Rank 10: the top of the first bucket.
        assert!(close(h.quantile(0.5), 0.01));
        // Rank 15: halfway through (0.01, 0.1].
        assert!(close(h.quantile(0.75), 0.055));
        assert!(close(h.quantile(1.0), 0.1));
        // q = 0: the lower edge of the first bucket that has a sample.
        assert!(close(hist([0, 4, 0, 0]).quantile(0.0), 0.01));
    }

    #[test]
    fn quantile_in_the_inf_bucket_is_the_highest_bound() {
        let h = hist([1, 0, 0, 9]);
        assert!(close(h.quantile(0.99), 1.0));
        assert!(close(h.quantile(0.05), 0.005));
    }

    #[test]
    fn quantile_without_samples_or_with_a_bad_q_is_none() {
        assert_eq!(hist([0, 0, 0, 0]).quantile(0.5), None);
        assert_eq!(Histogram::default().quantile(0.5), None);
        let h = hist([1, 1, 1, 1]);
        assert_eq!(h.quantile(-0.1), None);
        assert_eq!(h.quantile(1.5), None);
        assert_eq!(h.quantile(f64::NAN), None);
    }

    #[test]
    fn since_subtracts_bucket_by_bucket_and_survives_a_restart() {
        let mut earlier = hist([5, 1, 0, 0]);
        earlier.sum_seconds = 0.1;
        let mut now = hist([5, 11, 0, 0]);
        now.sum_seconds = 0.6;
        let recent = now.since(&earlier);
        assert_eq!(recent.counts, [0, 10, 0, 0]);
        assert_eq!(recent.count, 10);
        assert!((recent.sum_seconds - 0.5).abs() < 1e-9);
        assert!(close(recent.mean(), 0.05));
        // Everything recent lies in (0.01, 0.1]: the median is its middle.
        assert!(close(recent.quantile(0.5), 0.055));
        // The daemon restarted between the reads: counts went down, so all of `now` is new.
        let restarted = hist([1, 0, 0, 0]);
        assert_eq!(restarted.since(&now), restarted);
    }
}

/// A node's link to the fleet's store, as `ClusterStatus` and `GetStatus` give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterLink {
    /// This node's name.
    pub node: String,
    /// The etcd endpoints.
    pub endpoints: Vec<String>,
    /// The key prefix.
    pub prefix: String,
    /// `connecting`, `connected`, `disconnected` (or `unknown` from a newer daemon).
    pub state: String,
    /// Since when, ms since the Unix epoch.
    pub since_ms: u64,
    /// The store revision this node applied.
    pub applied_revision: i64,
    /// The newest store revision it heard of.
    pub store_revision: i64,
    /// The sync's last error.
    pub last_error: String,
    /// Differences a periodic comparison repaired since start.
    pub drift_repaired: u64,
}

impl From<pb::ClusterLink> for ClusterLink {
    fn from(l: pb::ClusterLink) -> Self {
        let state = match pb::ClusterLinkState::try_from(l.state) {
            Ok(pb::ClusterLinkState::Connecting) => "connecting",
            Ok(pb::ClusterLinkState::Connected) => "connected",
            Ok(pb::ClusterLinkState::Disconnected) => "disconnected",
            _ => "unknown",
        };
        ClusterLink {
            node: l.node,
            endpoints: l.endpoints,
            prefix: l.prefix,
            state: state.to_owned(),
            since_ms: l.since_ms,
            applied_revision: l.applied_revision,
            store_revision: l.store_revision,
            last_error: l.last_error,
            drift_repaired: l.drift_repaired,
        }
    }
}

/// A node as the store's registry lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterNode {
    /// Its name.
    pub name: String,
    /// Its mc-proxy version.
    pub version: String,
    /// `name=address` per listener.
    pub listeners: Vec<String>,
    /// Its admin socket.
    pub admin: String,
    /// Its metrics address.
    pub metrics: String,
    /// The store revision it applied.
    pub applied_revision: i64,
    /// Its sync's last error.
    pub last_error: String,
    /// When it started, ms since the Unix epoch.
    pub started_ms: u64,
}

/// `ClusterStatus`: this node's link and every registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// This node's link.
    pub link: ClusterLink,
    /// The registered nodes, by name.
    pub nodes: Vec<ClusterNode>,
    /// Why the list is missing (the store is away), empty otherwise.
    pub nodes_error: String,
}

/// The `UpdateRoute` request that sets what `patch` sets.
fn update_route_request(
    listener: &str,
    hostname: &str,
    patch: RoutePatch,
) -> pb::UpdateRouteRequest {
    pb::UpdateRouteRequest {
        listener: listener.to_owned(),
        hostname: hostname.to_owned(),
        new_hostname: patch.hostname,
        backend: None,
        backends: patch.backends.map(|set| pb::BackendSet {
            backends: set.into_iter().map(pb::RouteBackend::from).collect(),
        }),
        balance: patch.balance.map(|b| pb::Balance::from(b).into()),
        clear_health_check: matches!(patch.health_check, Some(None)),
        health_check: patch.health_check.flatten().map(pb::HealthCheck::from),
        mode: patch.mode.map(|m| pb::RouteMode::from(m).into()),
        tls_cert: patch.tls_cert,
        tls_key: patch.tls_key,
        backend_tls: patch.backend_tls,
        send_proxy_protocol: patch.send_proxy_protocol,
        backend_protocol: patch
            .backend_protocol
            .map(|p| pb::BackendProtocol::from(p).into()),
        access_log: patch.access_log,
        allow_from: patch.limits.allow_from.map(|nets| pb::LimitNets { nets }),
        deny_from: patch.limits.deny_from.map(|nets| pb::LimitNets { nets }),
        client_request_rate: patch.limits.client_request_rate,
        client_request_burst: patch.limits.client_request_burst,
        route_request_rate: patch.limits.route_request_rate,
        route_request_burst: patch.limits.route_request_burst,
        max_requests: patch.limits.max_requests,
        max_queue: patch.limits.max_queue,
        queue_timeout_ms: patch.limits.queue_timeout_ms,
        acme: patch.acme,
    }
}

/// The `UpdateListener` request that sets what `update` sets.
fn update_listener_request(listener: &str, update: ListenerUpdate) -> pb::UpdateListenerRequest {
    pb::UpdateListenerRequest {
        listener: listener.to_owned(),
        no_sni_route: update.no_sni_route,
        access_log: update.access_log,
        proxy_protocol: update.proxy_protocol,
        proxy_protocol_from: update
            .proxy_protocol_from
            .map(|sources| pb::ProxySources { sources }),
        max_conns_per_client: update.client_limits.max_conns_per_client,
        new_conns_per_client: update.client_limits.new_conns_per_client,
        new_conns_burst: update.client_limits.new_conns_burst,
        client_ipv6_prefix: update.client_limits.client_ipv6_prefix,
    }
}

/// One change of a set ([`AdminClient::apply_changes`]): what the single-change calls take.
#[derive(Debug, Clone, PartialEq)]
pub enum SetChange {
    /// [`AdminClient::add_route`].
    AddRoute {
        /// The listener's name or address.
        listener: String,
        /// The route, member states included.
        route: Route,
    },
    /// [`AdminClient::update_route`].
    UpdateRoute {
        /// The listener's name or address.
        listener: String,
        /// The route's hostname.
        hostname: String,
        /// What to change.
        patch: RoutePatch,
    },
    /// [`AdminClient::remove_route`].
    RemoveRoute {
        /// The listener's name or address.
        listener: String,
        /// The route's hostname.
        hostname: String,
    },
    /// [`AdminClient::add_firewall_rule`].
    AddRule(FirewallRule),
    /// [`AdminClient::remove_firewall_rule`].
    RemoveRule(FirewallRule),
    /// [`AdminClient::update_listener`].
    UpdateListener {
        /// The listener's name or address.
        listener: String,
        /// What to set.
        update: ListenerUpdate,
    },
    /// [`AdminClient::set_backend_state`].
    SetBackendState {
        /// The listener's name or address.
        listener: String,
        /// The route's hostname.
        hostname: String,
        /// The member's address.
        address: String,
        /// Its new admin state.
        state: AdminState,
    },
}

impl From<SetChange> for pb::ChangeSetItem {
    fn from(c: SetChange) -> Self {
        use pb::change_set_item::Change as Item;
        let item = match c {
            SetChange::AddRoute { listener, route } => Item::AddRoute(pb::AddRouteRequest {
                listener,
                route: Some(route.into()),
            }),
            SetChange::UpdateRoute {
                listener,
                hostname,
                patch,
            } => Item::UpdateRoute(update_route_request(&listener, &hostname, patch)),
            SetChange::RemoveRoute { listener, hostname } => {
                Item::RemoveRoute(pb::RemoveRouteRequest { listener, hostname })
            }
            SetChange::AddRule(rule) => Item::AddFirewallRule(pb::AddFirewallRuleRequest {
                rule: Some(rule.into()),
            }),
            SetChange::RemoveRule(rule) => {
                Item::RemoveFirewallRule(pb::RemoveFirewallRuleRequest {
                    rule: Some(rule.into()),
                })
            }
            SetChange::UpdateListener { listener, update } => {
                Item::UpdateListener(update_listener_request(&listener, update))
            }
            SetChange::SetBackendState {
                listener,
                hostname,
                address,
                state,
            } => Item::SetBackendState(pb::SetBackendStateRequest {
                listener,
                hostname,
                address,
                state: pb::AdminState::from(state).into(),
                weight: None,
            }),
        };
        pb::ChangeSetItem { change: Some(item) }
    }
}

/// A client address and its refusals by limits (see the proto's `LimitTalker`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Talker {
    /// An IPv4 address, or an IPv6 /64.
    pub client: String,
    /// Refusals counted for it.
    pub hits: u64,
    /// At most this many of `hits` were inherited from the entry it replaced.
    pub error: u64,
    /// The last refusal's limit (`client_conn_limit`, `client_rate_limit`, `route_denied`,
    /// `rate_limited`, `overloaded`).
    pub last: String,
    /// Its route (empty: refused before a route was chosen).
    pub route: String,
    /// When, ms since the Unix epoch.
    pub last_ms: u64,
}
