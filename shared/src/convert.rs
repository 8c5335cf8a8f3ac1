//! Conversions between the model (`crate::model`, `crate::outcome`) and the admin API's wire
//! types (`crate::pb`), both ways: what the daemon's admin API and the client share, so that
//! the two ends cannot drift.
//!
//! No I/O. A value the wire carries that this side does not know (a newer peer) is an
//! [`UnknownWireValue`], never a panic or a silent default; UNSPECIFIED means what each
//! `request_*` function says.

use std::time::Duration;

use crate::model::{
    AdminState, BackendProtocol, BackendState, Balance, CheckResult, FirewallRule,
    FirewallRuleKind, HealthCheck, ListenerKind, MemberStats, Mode, ParseBackendProtocolError,
    ParseBalanceError, ParseKindError, ParseModeError, ParseStatusClassesError, Route,
    RouteBackend, StatusClasses,
};
use crate::outcome::{BlockedReason, ChangeAction, CloseReason, Outcome, ResetReason};
use crate::pb;

/// An enum value the wire carried that this side does not know: UNSPECIFIED where a value is
/// required, or a number from a newer peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} value {value} on the wire (a newer daemon or client?)")]
pub struct UnknownWireValue {
    /// Which enum.
    pub what: &'static str,
    /// The number.
    pub value: i32,
}

/// The model enum and its proto twin, variant for variant (prost strips the proto prefix, so
/// `RESET_REASON_NOT_TLS` is `NotTls` on both sides).
macro_rules! wire_enum {
    ($model:ident, $wire:ident, $what:literal, [$($v:ident),+ $(,)?]) => {
        impl From<$model> for pb::$wire {
            fn from(m: $model) -> Self {
                match m {
                    $($model::$v => pb::$wire::$v,)+
                }
            }
        }

        impl TryFrom<i32> for $model {
            type Error = UnknownWireValue;

            /// UNSPECIFIED and unknown numbers are refused.
            fn try_from(value: i32) -> Result<Self, Self::Error> {
                match pb::$wire::try_from(value) {
                    $(Ok(pb::$wire::$v) => Ok($model::$v),)+
                    _ => Err(UnknownWireValue { what: $what, value }),
                }
            }
        }
    };
}

wire_enum!(Mode, RouteMode, "route mode", [L4, L7]);
wire_enum!(ListenerKind, ListenerKind, "listener kind", [Tls, Http]);

/// A listener's kind in a request or an answer: UNSPECIFIED (left out, or a peer from before
/// kinds) means TLS, what every listener was.
pub fn listener_kind(value: i32) -> Result<ListenerKind, UnknownWireValue> {
    if value == pb::ListenerKind::Unspecified as i32 {
        return Ok(ListenerKind::Tls);
    }
    ListenerKind::try_from(value)
}
wire_enum!(
    BackendProtocol,
    BackendProtocol,
    "backend protocol",
    [H2, Http1, Auto]
);
wire_enum!(
    FirewallRuleKind,
    FirewallRuleKind,
    "firewall rule kind",
    [Ip, Cidr]
);
wire_enum!(
    ChangeAction,
    ChangeAction,
    "change action",
    [Added, Updated, Removed]
);
wire_enum!(
    BlockedReason,
    BlockedReason,
    "blocked reason",
    [
        Firewall,
        UntrustedProxy,
        ClientConnLimit,
        ClientRateLimit,
        RouteDenied
    ]
);
wire_enum!(
    ResetReason,
    ResetReason,
    "reset reason",
    [
        Blocked,
        UntrustedProxy,
        ProxyHeaderTimeout,
        BadProxyHeader,
        HelloTimeout,
        ClientClosed,
        ClientError,
        NotTls,
        HelloTooLarge,
        BadHello,
        NoSni,
        UnknownHost,
        BackendTimeout,
        BackendUnreachable,
        NoBackend,
        ClientConnLimit,
        ClientRateLimit,
        RouteDenied,
    ]
);
wire_enum!(
    AdminState,
    AdminState,
    "backend admin state",
    [Enabled, Draining, Disabled]
);
wire_enum!(Balance, Balance, "balance", [RoundRobin, LeastConn, Source]);
wire_enum!(
    BackendState,
    BackendState,
    "backend state",
    [Up, Down, Ejected, Draining, Disabled, Unknown]
);

/// A member's admin state in a route: UNSPECIFIED (left out) means enabled.
pub fn request_admin_state(value: i32) -> Result<AdminState, UnknownWireValue> {
    if value == pb::AdminState::Unspecified as i32 {
        return Ok(AdminState::Enabled);
    }
    AdminState::try_from(value)
}

/// A route's balance in a request or an answer: UNSPECIFIED (left out, or a peer from before
/// the field) means round robin.
pub fn request_balance(value: i32) -> Result<Balance, ParseBalanceError> {
    if value == pb::Balance::Unspecified as i32 {
        return Ok(Balance::RoundRobin);
    }
    Balance::try_from(value).map_err(|e| ParseBalanceError(e.value.to_string()))
}
wire_enum!(
    CloseReason,
    CloseReason,
    "close reason",
    [
        Closed,
        IdleTimeout,
        Shutdown,
        Drained,
        KeepaliveTimeout,
        RequestHeaderTimeout,
        RouteGone,
        RelayError,
        HttpError,
        TlsHandshakeFailed,
        TlsHandshakeTimeout,
        AdminClosed,
        AcmeChallenge,
    ]
);

/// A route's mode in a request: UNSPECIFIED (the field left out) means L4, as the empty mode
/// did in v1.
pub fn request_mode(value: i32) -> Result<Mode, ParseModeError> {
    if value == pb::RouteMode::Unspecified as i32 {
        return Ok(Mode::L4);
    }
    Mode::try_from(value).map_err(|e| ParseModeError(e.value.to_string()))
}

/// A route's backend protocol in a request or an answer: UNSPECIFIED (the field left out, or
/// a peer from before it) means h2, what every route spoke before the field existed.
pub fn request_backend_protocol(value: i32) -> Result<BackendProtocol, ParseBackendProtocolError> {
    if value == pb::BackendProtocol::Unspecified as i32 {
        return Ok(BackendProtocol::H2);
    }
    BackendProtocol::try_from(value).map_err(|e| ParseBackendProtocolError(e.value.to_string()))
}

/// A connection's mode in an event or listing: UNSPECIFIED means "not routed".
pub fn routed_mode(value: i32) -> Result<Option<Mode>, UnknownWireValue> {
    if value == pb::RouteMode::Unspecified as i32 {
        return Ok(None);
    }
    Mode::try_from(value).map(Some)
}

impl From<crate::limits::ClientLimits> for pb::ClientLimitSettings {
    fn from(l: crate::limits::ClientLimits) -> Self {
        pb::ClientLimitSettings {
            max_conns_per_client: l.max_conns_per_client,
            new_conns_per_client: l.new_conns_per_client,
            new_conns_burst: l.new_conns_burst,
            client_ipv6_prefix: u32::from(l.client_ipv6_prefix),
        }
    }
}

impl From<pb::ClientLimitSettings> for crate::limits::ClientLimits {
    /// As sent; a prefix of 0 (a daemon from before the limits) or out of range is the
    /// default /64.
    fn from(l: pb::ClientLimitSettings) -> Self {
        crate::limits::ClientLimits {
            max_conns_per_client: l.max_conns_per_client,
            new_conns_per_client: l.new_conns_per_client,
            new_conns_burst: l.new_conns_burst,
            client_ipv6_prefix: u8::try_from(l.client_ipv6_prefix)
                .ok()
                .filter(|p| (1..=128).contains(p))
                .unwrap_or(crate::limits::DEFAULT_CLIENT_IPV6_PREFIX),
        }
    }
}

/// A connection's outcome on the wire.
pub fn outcome_to_pb(outcome: Outcome) -> pb::connection_closed::Outcome {
    use pb::connection_closed::Outcome as O;
    match outcome {
        Outcome::Reset(r) => O::Reset(pb::ResetReason::from(r).into()),
        Outcome::Closed(c) => O::Closed(pb::CloseReason::from(c).into()),
    }
}

impl From<Route> for pb::Route {
    /// Field 2 (`backend`) carries the first member's address, for clients from before
    /// backend sets.
    fn from(r: Route) -> Self {
        pb::Route {
            backend: r
                .backends
                .first()
                .map(|b| b.address.clone())
                .unwrap_or_default(),
            hostname: r.hostname,
            backends: r.backends.into_iter().map(pb::RouteBackend::from).collect(),
            balance: pb::Balance::from(r.balance).into(),
            health_check: r.health_check.map(pb::HealthCheck::from),
            mode: pb::RouteMode::from(r.mode).into(),
            tls_cert: r.tls_cert,
            tls_key: r.tls_key,
            backend_tls: r.backend_tls,
            send_proxy_protocol: r.send_proxy_protocol,
            backend_protocol: pb::BackendProtocol::from(r.backend_protocol).into(),
            access_log: r.access_log,
            limits: (*r.limits != crate::limits::RouteLimits::default())
                .then(|| pb::LimitRoute::from(*r.limits)),
            acme: r.acme,
        }
    }
}

impl From<crate::limits::RouteLimits> for pb::LimitRoute {
    fn from(l: crate::limits::RouteLimits) -> Self {
        pb::LimitRoute {
            allow_from: l.allow_from,
            deny_from: l.deny_from,
            client_request_rate: l.client_request_rate,
            client_request_burst: l.client_request_burst,
            route_request_rate: l.route_request_rate,
            route_request_burst: l.route_request_burst,
            max_requests: l.max_requests,
            max_queue: l.max_queue,
            queue_timeout_ms: l.queue_timeout_ms,
        }
    }
}

impl From<pb::LimitRoute> for crate::limits::RouteLimits {
    /// As sent: the receiver checks it with the route.
    fn from(l: pb::LimitRoute) -> Self {
        crate::limits::RouteLimits {
            allow_from: l.allow_from,
            deny_from: l.deny_from,
            client_request_rate: l.client_request_rate,
            client_request_burst: l.client_request_burst,
            route_request_rate: l.route_request_rate,
            route_request_burst: l.route_request_burst,
            max_requests: l.max_requests,
            max_queue: l.max_queue,
            queue_timeout_ms: l.queue_timeout_ms,
        }
    }
}

impl From<RouteBackend> for pb::RouteBackend {
    /// The weight is always sent, 0 included: the receiver validates it, never defaults it.
    fn from(b: RouteBackend) -> Self {
        pb::RouteBackend {
            address: b.address,
            weight: Some(b.weight),
            state: pb::AdminState::from(b.state).into(),
        }
    }
}

impl TryFrom<pb::RouteBackend> for RouteBackend {
    type Error = WireRouteError;

    /// A weight left out is 1 (a peer from before the field had presence leaves out only 0,
    /// which it meant as 1); a weight that is there is taken as sent, 0 included, for the
    /// daemon's validation to refuse as the TOML's does. UNSPECIFIED is enabled.
    fn try_from(b: pb::RouteBackend) -> Result<Self, Self::Error> {
        Ok(RouteBackend {
            weight: b.weight.unwrap_or_else(RouteBackend::default_weight),
            state: request_admin_state(b.state).map_err(WireRouteError::AdminState)?,
            address: b.address,
        })
    }
}

impl From<HealthCheck> for pb::HealthCheck {
    /// Every field is sent, zeros included.
    fn from(h: HealthCheck) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        pb::HealthCheck {
            interval_ms: Some(ms(h.interval)),
            timeout_ms: Some(ms(h.timeout)),
            rise: Some(h.rise),
            fall: Some(h.fall),
            path: h.path,
            expect: Some(h.expect.to_string()),
        }
    }
}

impl TryFrom<pb::HealthCheck> for HealthCheck {
    type Error = WireRouteError;

    /// A field left out takes [`HealthCheck::default`]'s value, as a key left out of the
    /// TOML does; a field that is there is taken as sent (0 and an empty expect included) for
    /// the daemon's validation to judge, so that an explicit 0 is refused rather than read as
    /// the default.
    fn try_from(h: pb::HealthCheck) -> Result<Self, Self::Error> {
        let d = HealthCheck::default();
        Ok(HealthCheck {
            interval: h.interval_ms.map_or(d.interval, Duration::from_millis),
            timeout: h.timeout_ms.map_or(d.timeout, Duration::from_millis),
            rise: h.rise.unwrap_or(d.rise),
            fall: h.fall.unwrap_or(d.fall),
            expect: match h.expect {
                None => d.expect,
                Some(text) => text.parse::<StatusClasses>()?,
            },
            path: h.path,
        })
    }
}

impl From<MemberStats> for pb::MemberStats {
    fn from(m: MemberStats) -> Self {
        pb::MemberStats {
            address: m.address,
            weight: m.weight,
            admin: pb::AdminState::from(m.admin).into(),
            state: pb::BackendState::from(m.state).into(),
            active: m.active,
            total: m.total,
            failures: m.failures,
            ejections: m.ejections,
            reason: m.reason,
            since_ms: m.since_ms,
            last_check_ms: m.last_check.as_ref().map_or(0, |c| c.at_ms.max(1)),
            last_check_error: m
                .last_check
                .as_ref()
                .and_then(|c| c.error.clone())
                .unwrap_or_default(),
            last_check_latency_us: m.last_check.as_ref().map_or(0, |c| {
                u64::try_from(c.latency.as_micros()).unwrap_or(u64::MAX)
            }),
            checks_passed: m.checks_passed,
            checks_failed: m.checks_failed,
        }
    }
}

impl TryFrom<pb::MemberStats> for MemberStats {
    type Error = UnknownWireValue;

    /// Every state is required: a display must not guess one.
    fn try_from(m: pb::MemberStats) -> Result<Self, Self::Error> {
        Ok(MemberStats {
            admin: AdminState::try_from(m.admin)?,
            state: BackendState::try_from(m.state)?,
            address: m.address,
            weight: m.weight,
            active: m.active,
            total: m.total,
            failures: m.failures,
            ejections: m.ejections,
            reason: m.reason,
            since_ms: m.since_ms,
            last_check: (m.last_check_ms != 0).then(|| CheckResult {
                at_ms: m.last_check_ms,
                error: (!m.last_check_error.is_empty()).then_some(m.last_check_error),
                latency: Duration::from_micros(m.last_check_latency_us),
            }),
            checks_passed: m.checks_passed,
            checks_failed: m.checks_failed,
        })
    }
}

/// Why a wire route is not a model route: one of its enums holds a number this side does not
/// know. The daemon answers it with INVALID_ARGUMENT; the client calls it a protocol error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireRouteError {
    /// The mode.
    #[error(transparent)]
    Mode(#[from] ParseModeError),
    /// The backend protocol.
    #[error(transparent)]
    BackendProtocol(#[from] ParseBackendProtocolError),
    /// The balance.
    #[error(transparent)]
    Balance(#[from] ParseBalanceError),
    /// A member's admin state.
    #[error(transparent)]
    AdminState(UnknownWireValue),
    /// The health check's expected status classes.
    #[error(transparent)]
    Expect(#[from] ParseStatusClassesError),
}

/// The wire route as a model route; the daemon (requests) and the client (answers) both use it.
impl TryFrom<pb::Route> for Route {
    type Error = WireRouteError;

    fn try_from(r: pb::Route) -> Result<Self, Self::Error> {
        // A peer from before backend sets sends field 2 only: its one member.
        let backends = if r.backends.is_empty() {
            if r.backend.is_empty() {
                Vec::new()
            } else {
                vec![RouteBackend::new(r.backend)]
            }
        } else {
            r.backends
                .into_iter()
                .map(RouteBackend::try_from)
                .collect::<Result<_, _>>()?
        };
        Ok(Route {
            mode: request_mode(r.mode)?,
            backend_protocol: request_backend_protocol(r.backend_protocol)?,
            balance: request_balance(r.balance)?,
            health_check: r.health_check.map(HealthCheck::try_from).transpose()?,
            hostname: r.hostname,
            backends,
            tls_cert: r.tls_cert,
            tls_key: r.tls_key,
            backend_tls: r.backend_tls,
            send_proxy_protocol: r.send_proxy_protocol,
            access_log: r.access_log,
            limits: Box::new(r.limits.map(Into::into).unwrap_or_default()),
            acme: r.acme,
        })
    }
}

impl From<FirewallRule> for pb::FirewallRule {
    fn from(r: FirewallRule) -> Self {
        pb::FirewallRule {
            kind: pb::FirewallRuleKind::from(r.kind).into(),
            value: r.value,
        }
    }
}

/// The wire rule as a model rule (kind parsed; the value is not checked here).
impl TryFrom<pb::FirewallRule> for FirewallRule {
    type Error = ParseKindError;

    fn try_from(r: pb::FirewallRule) -> Result<Self, Self::Error> {
        Ok(FirewallRule {
            kind: FirewallRuleKind::try_from(r.kind)
                .map_err(|e| ParseKindError(e.value.to_string()))?,
            value: r.value,
        })
    }
}
