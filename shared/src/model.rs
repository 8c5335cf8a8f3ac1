//! The domain model: routes and firewall rules as the config, the store and the admin API see
//! them.
//!
//! No I/O and little validation: a `Route` may hold a hostname that is not a DNS name or a
//! backend that does not parse; the daemon's `routes::validate_route` is the one place that
//! decides whether a route is acceptable. The numbers it checks are checked here
//! ([`RouteBackend::check_weight`], [`HealthCheck::check_timing`]) so that the console can refuse
//! the same values in the same words before sending them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a route handles a connection once its SNI matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// TLS passthrough: the ClientHello and everything after it is relayed to the backend
    /// byte for byte. The proxy never holds the key.
    #[default]
    L4,
    /// TLS termination with the route's certificate, then HTTP reverse proxying.
    L7,
}

impl Mode {
    /// The name used in the TOML config, the database and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::L4 => "l4",
            Mode::L7 => "l7",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode string that is none of `""`, `"l4"`, `"l7"`; holds it quoted and clipped for
/// messages ([`crate::text::clip`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mode {0}: expected \"l4\" or \"l7\" (empty means \"l4\")")]
pub struct ParseModeError(pub String);

impl FromStr for Mode {
    type Err = ParseModeError;

    /// Parses the config spelling. The empty string is `l4`, so that configs and API calls
    /// written before modes existed keep their meaning. Case-sensitive, like every other key.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "l4" => Ok(Mode::L4),
            "l7" => Ok(Mode::L7),
            other => Err(ParseModeError(crate::text::clip(other))),
        }
    }
}

/// What a listener does with a connection. Fixed when the listener is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// TLS: routes by the ClientHello's SNI (L4 passthrough or L7 termination). The default,
    /// what every listener was before kinds existed.
    #[default]
    Tls,
    /// Plain HTTP (the usual `:80`): answers ACME http-01 challenges and redirects every
    /// other request to `https://` on the same host and path. Holds no routes.
    Http,
}

impl ListenerKind {
    /// The name used in the TOML config, the database and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tls => "tls",
            ListenerKind::Http => "http",
        }
    }
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A listener kind string that is none of `""`, `"tls"`, `"http"`; holds it quoted and
/// clipped for messages ([`crate::text::clip`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid listener kind {0}: expected \"tls\" or \"http\" (empty means \"tls\")")]
pub struct ParseListenerKindError(pub String);

impl FromStr for ListenerKind {
    type Err = ParseListenerKindError;

    /// Parses the config spelling; the empty string is `tls`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "tls" => Ok(ListenerKind::Tls),
            "http" => Ok(ListenerKind::Http),
            other => Err(ParseListenerKindError(crate::text::clip(other))),
        }
    }
}

/// The HTTP version an L7 route speaks to its backend. Orthogonal to `backend_tls`, which
/// says whether that happens over TLS: `h2` without TLS is cleartext HTTP/2 with prior
/// knowledge (h2c), with TLS HTTP/2 negotiated by ALPN `h2`; `http1` is HTTP/1.1 either way
/// (ALPN `http/1.1` over TLS); `auto` offers ALPN `h2,http/1.1` and speaks what the backend
/// picks, so it needs `backend_tls`. Meaningless on L4 routes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum BackendProtocol {
    /// HTTP/2: h2c with prior knowledge, or h2 over TLS. The default, as before the key
    /// existed.
    #[default]
    #[serde(rename = "h2")]
    H2,
    /// HTTP/1.1, keep-alive, one request at a time per backend connection.
    #[serde(rename = "http1")]
    Http1,
    /// TLS only: ALPN `h2,http/1.1`, then whichever the backend chose.
    #[serde(rename = "auto")]
    Auto,
}

impl BackendProtocol {
    /// Every value, in declaration order.
    pub const ALL: &'static [BackendProtocol] = &[
        BackendProtocol::H2,
        BackendProtocol::Http1,
        BackendProtocol::Auto,
    ];

    /// The name used in the TOML config, the database and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendProtocol::H2 => "h2",
            BackendProtocol::Http1 => "http1",
            BackendProtocol::Auto => "auto",
        }
    }
}

impl fmt::Display for BackendProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend protocol string that is none of `""`, `"h2"`, `"http1"`, `"auto"`; holds it
/// quoted and clipped for messages ([`crate::text::clip`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid backend_protocol {0}: expected \"h2\", \"http1\" or \"auto\" (empty means \"h2\")"
)]
pub struct ParseBackendProtocolError(pub String);

impl FromStr for BackendProtocol {
    type Err = ParseBackendProtocolError;

    /// Parses the config spelling; the empty string is `h2` (API calls from before the field).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "h2" => Ok(BackendProtocol::H2),
            "http1" => Ok(BackendProtocol::Http1),
            "auto" => Ok(BackendProtocol::Auto),
            other => Err(ParseBackendProtocolError(crate::text::clip(other))),
        }
    }
}

/// One member of a route's backend set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouteBackend {
    /// `host:port`, the host an IP address or a DNS name.
    pub address: String,
    /// Share of new connections (L4) or requests (L7) under weighted round robin, relative
    /// to the other members: 1 to [`RouteBackend::MAX_WEIGHT`].
    #[serde(default = "RouteBackend::default_weight")]
    pub weight: u32,
    /// What the operator said about this member: in rotation, draining or out.
    #[serde(default)]
    pub state: AdminState,
}

impl RouteBackend {
    /// The largest weight, as HAProxy's `weight`.
    pub const MAX_WEIGHT: u32 = 256;

    /// The weight of a member that names none.
    pub fn default_weight() -> u32 {
        1
    }

    /// An enabled member of weight 1.
    pub fn new(address: impl Into<String>) -> Self {
        RouteBackend {
            address: address.into(),
            weight: 1,
            state: AdminState::Enabled,
        }
    }

    /// The same member with another weight.
    pub fn with_weight(self, weight: u32) -> Self {
        RouteBackend { weight, ..self }
    }

    /// Refuses a weight outside 1 to [`RouteBackend::MAX_WEIGHT`] (0 included: it is never
    /// read as "unset"), in the words the TOML, the admin API and the console share.
    pub fn check_weight(&self) -> Result<(), WeightError> {
        if (1..=RouteBackend::MAX_WEIGHT).contains(&self.weight) {
            Ok(())
        } else {
            Err(WeightError {
                address: self.address.clone(),
                weight: self.weight,
            })
        }
    }

    /// A `--backend` flag of `mcproxyctl`: `host:port`, `host:port,weight=N` (one word) or
    /// `host:port weight=N`. A `,` anywhere else (`host:port, weight=N`, a trailing one) is
    /// refused as a stray separator rather than read into the address.
    pub fn parse_flag(text: &str) -> Result<Self, ParseRouteBackendError> {
        parse_member(text, true)
    }
}

/// A member's weight outside 1 to [`RouteBackend::MAX_WEIGHT`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "backend {}: weight {weight} is not from 1 to {}",
    crate::text::clip(.address),
    RouteBackend::MAX_WEIGHT
)]
pub struct WeightError {
    /// The member.
    pub address: String,
    /// What was given.
    pub weight: u32,
}

/// A backend written `host:port` or `host:port weight=N`, the one text form of a member in the
/// CLI and the console (the TOML has `{ address, weight }` tables too): what is wrong with it.
/// The value is quoted and clipped ([`crate::text::clip`]); the reason names the part at
/// fault (an unknown option, a stray `,`), clipped too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid backend {value}: {reason}")]
pub struct ParseRouteBackendError {
    /// The text, quoted and clipped.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// What every member text form allows, for the end of a message.
const MEMBER_FORMS: &str = "expected host:port or host:port weight=N (N from 1 to 256)";
/// The same for a `--backend` flag, which also takes `host:port,weight=N`.
const FLAG_FORMS: &str =
    "expected host:port or host:port,weight=N (one word, no spaces) or \"host:port weight=N\"";

/// `host:port` then options, each after whitespace (or, with `commas`, a single `,` with no
/// space around it). The only option is `weight=N`; the address is left to the daemon's
/// validation, but a `,` in it is never an address (no host or port has one), so it is said to
/// be a stray separator rather than passed on to become "bad port".
fn parse_member(text: &str, commas: bool) -> Result<RouteBackend, ParseRouteBackendError> {
    use crate::text::clip;
    let fail = |reason: String| ParseRouteBackendError {
        value: clip(text),
        reason,
    };
    let forms = if commas { FLAG_FORMS } else { MEMBER_FORMS };
    let stray = || {
        fail(if commas {
            format!("stray \",\": {forms}")
        } else {
            "unexpected \",\": an option follows the address after a space \
             (host:port weight=N)"
                .to_owned()
        })
    };
    let trimmed = text.trim();
    let is_sep = |c: char| c.is_whitespace() || c == ',';
    let end = trimmed.find(is_sep).unwrap_or(trimmed.len());
    let (address, mut rest) = trimmed.split_at(end);
    if address.is_empty() {
        return Err(if trimmed.is_empty() {
            fail(forms.to_owned())
        } else {
            stray()
        });
    }
    if address.contains('=') {
        return Err(fail(format!(
            "{} is an option, not host:port: the address comes first",
            clip(address)
        )));
    }
    let mut member = RouteBackend::new(address);
    let mut weight_seen = false;
    while !rest.is_empty() {
        // One separator: a run of whitespace, or (commas) one ',' between two words.
        let after = if let Some(after) = rest.strip_prefix(',') {
            if !commas || after.is_empty() || after.starts_with(is_sep) {
                return Err(stray());
            }
            after
        } else {
            let after = rest.trim_start();
            if after.starts_with(',') {
                return Err(stray());
            }
            after
        };
        let end = after.find(is_sep).unwrap_or(after.len());
        let (word, next) = after.split_at(end);
        rest = next;
        let Some((key, value)) = word.split_once('=') else {
            return Err(fail(if word == "weight" {
                "weight needs a value: expected weight=N".to_owned()
            } else {
                format!(
                    "unexpected {} after the address: expected weight=N",
                    clip(word)
                )
            }));
        };
        if key != "weight" {
            return Err(fail(format!(
                "unknown option {}: expected weight=N",
                clip(key)
            )));
        }
        if weight_seen {
            return Err(fail("weight is given twice".to_owned()));
        }
        weight_seen = true;
        member.weight = value.parse().map_err(|_| {
            fail(format!(
                "weight {} is not a number from 1 to {}",
                clip(value),
                RouteBackend::MAX_WEIGHT
            ))
        })?;
    }
    Ok(member)
}

impl FromStr for RouteBackend {
    type Err = ParseRouteBackendError;

    /// `host:port` or `host:port weight=N`. A weight of 0 or above the maximum parses (as
    /// the TOML's table form does) and is refused by validation ([`RouteBackend::check_weight`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_member(s, false)
    }
}

impl fmt::Display for RouteBackend {
    /// `host:port`, with ` weight=N` when the weight is not 1: what [`FromStr`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)?;
        if self.weight != 1 {
            write!(f, " weight={}", self.weight)?;
        }
        Ok(())
    }
}

/// An operator's say over one backend of a route, persisted like every admin change.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// In rotation (when healthy).
    #[default]
    Enabled,
    /// Takes no new connections or requests; open ones finish.
    Draining,
    /// Out of rotation. Open connections are left to finish too: the proxy never cuts a
    /// transfer because of an admin change.
    Disabled,
}

impl AdminState {
    /// Every value, in declaration order.
    pub const ALL: &'static [AdminState] = &[
        AdminState::Enabled,
        AdminState::Draining,
        AdminState::Disabled,
    ];

    /// The name used in the database and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        }
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An admin state string that is none of `enabled`, `draining`, `disabled`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid backend state {0}: expected \"enabled\", \"draining\" or \"disabled\"")]
pub struct ParseAdminStateError(pub String);

impl FromStr for AdminState {
    type Err = ParseAdminStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AdminState::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| ParseAdminStateError(crate::text::clip(s)))
    }
}

/// What a route member is doing now, as stats, events, the console and metrics show it: the
/// operator's [`AdminState`] combined with what health checking found.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Enabled and known to work: its last check passed, or (without an active check) its
    /// last connection or request went through. Takes traffic.
    Up,
    /// The active health check failed `fall` times in a row; takes no traffic until it
    /// passes `rise` times.
    Down,
    /// Passive health: connections failed several times in a row; out for a cooldown that
    /// grows on each repeated ejection, then tried again with one connection.
    Ejected,
    /// The operator drains it: no new traffic, open connections finish.
    Draining,
    /// The operator disabled it.
    Disabled,
    /// Enabled, and nothing is known yet: never checked and never contacted (or its check
    /// was removed while it was failing). Takes traffic like `up` (it is not down); the
    /// first success makes it `up`, failures count as usual.
    #[default]
    Unknown,
}

impl BackendState {
    /// Every value, in declaration order.
    pub const ALL: &'static [BackendState] = &[
        BackendState::Up,
        BackendState::Down,
        BackendState::Ejected,
        BackendState::Draining,
        BackendState::Disabled,
        BackendState::Unknown,
    ];

    /// The name used in stats, events, metrics and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Down => "down",
            BackendState::Ejected => "ejected",
            BackendState::Draining => "draining",
            BackendState::Disabled => "disabled",
            BackendState::Unknown => "unknown",
        }
    }

    /// Whether new traffic may go to a member in this state (an `unknown` one is tried).
    pub fn takes_traffic(self) -> bool {
        matches!(self, BackendState::Up | BackendState::Unknown)
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend state string that names no [`BackendState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid backend state {0}: expected up, down, ejected, draining, disabled or unknown")]
pub struct ParseBackendStateError(pub String);

impl FromStr for BackendState {
    type Err = ParseBackendStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendState::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| ParseBackendStateError(crate::text::clip(s)))
    }
}

/// One route member's live figures, as the daemon reports them with the route's stats.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemberStats {
    /// The member's address, as configured.
    pub address: String,
    /// Its weight.
    pub weight: u32,
    /// What the operator set.
    pub admin: AdminState,
    /// What it is doing now.
    pub state: BackendState,
    /// L4 connections or L7 requests open on it now.
    pub active: u64,
    /// L4 connections or L7 requests sent to it since start.
    pub total: u64,
    /// Failed connects and connection-level failures since start.
    pub failures: u64,
    /// Times passive health ejected it.
    pub ejections: u64,
    /// Why it is in its state (`3 checks failed in a row: connect refused`), clipped; empty
    /// while nothing happened. It follows the evidence: an `up` member shows no old failure.
    pub reason: String,
    /// When the state last changed, in milliseconds since the Unix epoch (the daemon's clock;
    /// for a member never changed, when the daemon first saw it).
    pub since_ms: u64,
    /// The newest active check result with the route's current check; `None` before the
    /// first one, without a check, and right after the check's settings changed.
    pub last_check: Option<CheckResult>,
    /// Active check probes that passed, since start.
    pub checks_passed: u64,
    /// Active check probes that failed, since start.
    pub checks_failed: u64,
}

/// One active health check probe's result.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CheckResult {
    /// When it ended, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `None`: it passed. Otherwise the failure in a few words (`connect refused`, `timeout
    /// after 1s`, `status 500`, `TLS handshake timeout after 1s`), clipped.
    pub error: Option<String>,
    /// How long it took (to the failure, for a failed one).
    #[serde(with = "micros")]
    pub latency: std::time::Duration,
}

/// How a route picks one of its backends: per connection on L4, per request on L7.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum Balance {
    /// Smooth weighted round robin (nginx's): each member in proportion to its weight,
    /// interleaved rather than in runs.
    #[default]
    #[serde(rename = "round_robin")]
    RoundRobin,
    /// The member with the fewest open connections (L4) or requests in flight (L7), relative
    /// to its weight; ties go round robin.
    #[serde(rename = "least_conn")]
    LeastConn,
    /// The same client address goes to the same member while the set is unchanged
    /// (rendezvous hashing: when a member leaves only its clients move).
    #[serde(rename = "source")]
    Source,
}

impl Balance {
    /// Every value, in declaration order.
    pub const ALL: &'static [Balance] = &[Balance::RoundRobin, Balance::LeastConn, Balance::Source];

    /// The name used in the TOML config, the database and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::Source => "source",
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A balance string that is none of `""`, `round_robin`, `least_conn`, `source`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid balance {0}: expected \"round_robin\", \"least_conn\" or \"source\" \
     (empty means \"round_robin\")"
)]
pub struct ParseBalanceError(pub String);

impl FromStr for Balance {
    type Err = ParseBalanceError;

    /// The empty string is `round_robin` (API calls from before the field).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(Balance::RoundRobin);
        }
        Balance::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| ParseBalanceError(crate::text::clip(s)))
    }
}

/// A route's active health check: every `interval`, each backend is probed; `fall` failures
/// in a row mark it down, `rise` successes in a row bring it back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Time between two probes of one backend.
    #[serde(with = "millis")]
    pub interval: std::time::Duration,
    /// How long one probe may take (connect, and on HTTP the response head).
    #[serde(with = "millis")]
    pub timeout: std::time::Duration,
    /// Successes in a row that bring a down backend up.
    pub rise: u32,
    /// Failures in a row that bring an up backend down.
    pub fall: u32,
    /// Empty: a TCP connect is the probe (the only kind on L4). Otherwise, L7 only: a `GET`
    /// of this path (starting with `/`) over the route's backend protocol and TLS.
    pub path: String,
    /// HTTP probes: the statuses that count as healthy.
    pub expect: StatusClasses,
}

impl Default for HealthCheck {
    /// HAProxy's `inter 2s`, `rise 2`, `fall 3`; a 1 s probe timeout; a TCP probe.
    fn default() -> Self {
        HealthCheck {
            interval: std::time::Duration::from_secs(2),
            timeout: std::time::Duration::from_secs(1),
            rise: 2,
            fall: 3,
            path: String::new(),
            expect: StatusClasses::default(),
        }
    }
}

impl HealthCheck {
    /// The shortest interval: a probe per backend per interval.
    pub const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
    /// The longest interval: a check rarer than hourly would report ancient news.
    pub const MAX_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);
    /// The most successes (`rise`) or failures (`fall`) in a row a verdict may wait for
    /// (HAProxy takes any number; past 100 a state change would take hours to notice).
    pub const MAX_RUN: u32 = 100;

    /// Refuses counts and times that cannot work: rise and fall from 1 to
    /// [`HealthCheck::MAX_RUN`], an interval from [`HealthCheck::MIN_INTERVAL`] to
    /// [`HealthCheck::MAX_INTERVAL`], a timeout more than 0 and at most the interval. A
    /// 0 is refused like any other bad value, never read as "unset". The words are the ones
    /// the TOML, the admin API and the console share (`health_check: ...`); the daemon's
    /// route validation adds the path checks.
    pub fn check_timing(&self) -> Result<(), HealthCheckError> {
        if self.rise == 0 || self.fall == 0 {
            return Err(HealthCheckError("rise and fall must be at least 1"));
        }
        if self.rise > HealthCheck::MAX_RUN || self.fall > HealthCheck::MAX_RUN {
            return Err(HealthCheckError("rise and fall must be at most 100"));
        }
        if self.interval < HealthCheck::MIN_INTERVAL {
            return Err(HealthCheckError("interval must be at least 100ms"));
        }
        if self.interval > HealthCheck::MAX_INTERVAL {
            return Err(HealthCheckError("interval must be at most 1h"));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return Err(HealthCheckError(
                "timeout must be more than 0 and at most the interval",
            ));
        }
        Ok(())
    }
}

/// A health check setting that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("health_check: {0}")]
pub struct HealthCheckError(pub &'static str);

/// The HTTP statuses an HTTP probe takes as healthy (`expect`), written as HAProxy's
/// `http-check expect status` and nginx's `match` take them: single codes (`200`), classes
/// (`2xx`), ranges (`200-399`), or a comma list mixing them (`200,301-302,4xx`). Any status
/// from 100 to 599 can be in the set; it is written back in a canonical form (whole classes
/// as `2xx`, other runs as `200-204` or `200`), which is what the database, the API and the
/// displays carry.
///
/// The bitset is boxed: 64 bytes inline would make every `Route` (and the control plane's
/// enums that carry one) that much larger for a field most routes leave out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StatusClasses(Box<[u64; 8]>);

impl StatusClasses {
    /// The lowest status a set can hold.
    const FIRST: u16 = 100;
    /// The highest.
    const LAST: u16 = 599;

    /// Whether `status` is in the set.
    pub fn contains(&self, status: u16) -> bool {
        if !(Self::FIRST..=Self::LAST).contains(&status) {
            return false;
        }
        let i = usize::from(status - Self::FIRST);
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    fn add(&mut self, status: u16) {
        let i = usize::from(status - Self::FIRST);
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn of(ranges: &[(u16, u16)]) -> Self {
        let mut set = StatusClasses(Box::new([0; 8]));
        for &(lo, hi) in ranges {
            for status in lo..=hi {
                set.add(status);
            }
        }
        set
    }
}

impl Default for StatusClasses {
    /// `2xx,3xx`: a redirect to a login page is a live backend.
    fn default() -> Self {
        StatusClasses::of(&[(200, 399)])
    }
}

/// An `expect` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid expected status {0}: expected status codes from 100 to 599, classes or ranges, \
     comma separated, like \"200\", \"2xx\", \"200-399\" or \"200,301-302,4xx\""
)]
pub struct ParseStatusClassesError(pub String);

impl FromStr for StatusClasses {
    type Err = ParseStatusClassesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseStatusClassesError(crate::text::clip(s));
        let code = |t: &str| -> Option<u16> {
            let t = t.trim();
            if t.len() != 3 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            t.parse::<u16>()
                .ok()
                .filter(|c| (StatusClasses::FIRST..=StatusClasses::LAST).contains(c))
        };
        let mut ranges = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            let range = match item.as_bytes() {
                [d @ b'1'..=b'5', b'x', b'x'] => {
                    let lo = u16::from(d - b'0') * 100;
                    (lo, lo + 99)
                }
                _ => match item.split_once('-') {
                    Some((lo, hi)) => match (code(lo), code(hi)) {
                        (Some(lo), Some(hi)) if lo <= hi => (lo, hi),
                        _ => return Err(err()),
                    },
                    None => {
                        let c = code(item).ok_or_else(err)?;
                        (c, c)
                    }
                },
            };
            ranges.push(range);
        }
        Ok(StatusClasses::of(&ranges))
    }
}

impl fmt::Display for StatusClasses {
    /// Canonical: ascending, whole classes as `2xx`, other runs as `lo-hi` or a single code.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whether `status` starts a class that is in the set whole.
        let whole_class = |status: u16| {
            status.is_multiple_of(100) && (status..status + 100).all(|c| self.contains(c))
        };
        let mut items = Vec::new();
        let mut status = StatusClasses::FIRST;
        while status <= StatusClasses::LAST {
            if !self.contains(status) {
                status += 1;
                continue;
            }
            if whole_class(status) {
                items.push(format!("{}xx", status / 100));
                status += 100;
                continue;
            }
            // A run, cut at the end of its class so that a following whole class shows.
            let mut end = status;
            while end < StatusClasses::LAST && self.contains(end + 1) && !whole_class(end + 1) {
                end += 1;
            }
            items.push(if end == status {
                status.to_string()
            } else {
                format!("{status}-{end}")
            });
            status = end + 1;
        }
        f.write_str(&items.join(","))
    }
}

impl TryFrom<String> for StatusClasses {
    type Error = ParseStatusClassesError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<StatusClasses> for String {
    fn from(c: StatusClasses) -> String {
        c.to_string()
    }
}

mod micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_micros)
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// One entry of a listener's route table, with every field of the plan's phase 1.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Route {
    /// The SNI hostname this route matches: an exact name or `*.domain` (one label).
    pub hostname: String,
    /// Where connections go: one or more members, in the operator's order. Validation
    /// (`routes::validate_route`) refuses an empty set and a duplicate address.
    pub backends: Vec<RouteBackend>,
    /// How a member is picked.
    #[serde(default)]
    pub balance: Balance,
    /// The route's active health check, if it has one. Passive health (ejection after
    /// connection failures) applies either way.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// L4 passthrough or L7 termination.
    pub mode: Mode,
    /// PEM certificate chain presented to clients on an L7 route; empty on L4.
    pub tls_cert: String,
    /// PEM private key matching `tls_cert`; empty on L4.
    pub tls_key: String,
    /// L7 only: speak HTTP/2 over TLS to the backend instead of cleartext h2c.
    pub backend_tls: bool,
    /// Write a PROXY protocol v2 header carrying the client address to the backend.
    pub send_proxy_protocol: bool,
    /// L7 only: the HTTP version spoken to the backend.
    #[serde(default)]
    pub backend_protocol: BackendProtocol,
    /// L7 only: one `mc_proxy::request` log line per request (also on when the listener's
    /// `access_log` is).
    #[serde(default)]
    pub access_log: bool,
    /// Access lists and request limits (absent from a document or answer written before
    /// them: none). Boxed: most routes have none, and a route is moved about whole.
    #[serde(default)]
    pub limits: Box<crate::limits::RouteLimits>,
    /// L7 only: the certificate comes from ACME (`[acme]`), not from `tls_cert`/`tls_key`,
    /// which stay empty. Ordered when the route is added, renewed before it ends.
    #[serde(default)]
    pub acme: bool,
}

impl Route {
    /// The members' addresses joined by `, `: the one-line form for logs and tables.
    pub fn backend_list(&self) -> String {
        let mut out = String::new();
        for (i, b) in self.backends.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&b.address);
        }
        out
    }
}

/// The fields of a route to change; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePatch {
    /// Rename the route.
    pub hostname: Option<String>,
    /// A new backend set, replacing the old one whole.
    pub backends: Option<Vec<RouteBackend>>,
    /// New balance.
    pub balance: Option<Balance>,
    /// A new health check (`Some(None)` removes it).
    pub health_check: Option<Option<HealthCheck>>,
    /// New mode.
    pub mode: Option<Mode>,
    /// New certificate path.
    pub tls_cert: Option<String>,
    /// New key path.
    pub tls_key: Option<String>,
    /// New backend_tls flag.
    pub backend_tls: Option<bool>,
    /// New send_proxy_protocol flag.
    pub send_proxy_protocol: Option<bool>,
    /// New backend protocol.
    pub backend_protocol: Option<BackendProtocol>,
    /// New access_log flag.
    pub access_log: Option<bool>,
    /// Access lists and request limits to change.
    pub limits: crate::limits::RouteLimitsPatch,
    /// New acme flag.
    pub acme: Option<bool>,
}

/// What a firewall rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirewallRuleKind {
    /// A single address, IPv4 or IPv6.
    Ip,
    /// A network in CIDR notation.
    Cidr,
}

impl FirewallRuleKind {
    /// The kind a rule's text is: a network when it has a prefix length (`10.0.0.0/8`), else
    /// an address. Whether the text parses is the rule parser's to say.
    pub fn of(value: &str) -> FirewallRuleKind {
        if value.contains('/') {
            FirewallRuleKind::Cidr
        } else {
            FirewallRuleKind::Ip
        }
    }

    /// The name used in the database and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            FirewallRuleKind::Ip => "ip",
            FirewallRuleKind::Cidr => "cidr",
        }
    }
}

impl fmt::Display for FirewallRuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A firewall rule kind that is neither `"ip"` nor `"cidr"`; holds it quoted and clipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid firewall rule kind {0}: expected \"ip\" or \"cidr\"")]
pub struct ParseKindError(pub String);

impl FromStr for FirewallRuleKind {
    type Err = ParseKindError;

    /// Parses the spelling used by the database and the admin API.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ip" => Ok(FirewallRuleKind::Ip),
            "cidr" => Ok(FirewallRuleKind::Cidr),
            other => Err(ParseKindError(crate::text::clip(other))),
        }
    }
}

/// A blocked address or network. The value is kept as text so that the store can hold exactly
/// what the operator wrote; the daemon parses it when it builds the firewall.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FirewallRule {
    /// Address or network.
    pub kind: FirewallRuleKind,
    /// `192.0.2.10`, `2001:db8::1`, `198.51.100.0/24`, ...
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_mode_means_l4() {
        assert_eq!("".parse::<Mode>(), Ok(Mode::L4));
        assert_eq!("l4".parse::<Mode>(), Ok(Mode::L4));
        assert_eq!("l7".parse::<Mode>(), Ok(Mode::L7));
    }

    #[test]
    fn firewall_rule_kinds_parse_their_own_spelling_only() {
        for kind in [FirewallRuleKind::Ip, FirewallRuleKind::Cidr] {
            assert_eq!(kind.as_str().parse::<FirewallRuleKind>(), Ok(kind));
        }
        assert!("IP".parse::<FirewallRuleKind>().is_err());
    }

    #[test]
    fn route_backends_read_back_what_they_print() {
        let b: RouteBackend = "10.0.0.1:443 weight=5".parse().unwrap();
        assert_eq!(b, RouteBackend::new("10.0.0.1:443").with_weight(5));
        assert_eq!(b.to_string().parse::<RouteBackend>(), Ok(b));
        let one: RouteBackend = "app:80".parse().unwrap();
        assert_eq!(one.to_string(), "app:80");
        for bad in ["", "a:1 weight=x", "a:1 w=2", "a:1 weight=-1"] {
            assert!(bad.parse::<RouteBackend>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_misspelt_option_or_a_stray_comma_is_named_not_read_into_the_address() {
        let err = |text: &str| text.parse::<RouteBackend>().unwrap_err().to_string();
        let flag = |text: &str| RouteBackend::parse_flag(text).unwrap_err().to_string();
        assert_eq!(
            err("a:1 wieght=3"),
            "invalid backend \"a:1 wieght=3\": unknown option \"wieght\": expected weight=N"
        );
        assert_eq!(
            flag("a:1,wieght=3"),
            "invalid backend \"a:1,wieght=3\": unknown option \"wieght\": expected weight=N"
        );
        for stray in [
            "a:1, weight=3",
            "a:1,",
            "a:1 ,weight=3",
            ", weight=3",
            "a:1,,weight=3",
        ] {
            assert!(
                flag(stray).starts_with(&format!(
                    "invalid backend {}: stray \",\": expected host:port or host:port,weight=N",
                    crate::text::clip(stray)
                )),
                "{stray:?}: {}",
                flag(stray)
            );
        }
        // The TOML's string form has no commas: said so, rather than "bad port".
        assert!(
            err("a:1,weight=3")
                .contains("unexpected \",\": an option follows the address after a space"),
            "{}",
            err("a:1,weight=3")
        );
        assert_eq!(
            flag("a:1,weight"),
            "invalid backend \"a:1,weight\": weight needs a value: expected weight=N"
        );
        assert_eq!(
            flag("a:1,weight=x"),
            "invalid backend \"a:1,weight=x\": weight \"x\" is not a number from 1 to 256"
        );
        assert_eq!(
            flag("a:1,weight=2,weight=3"),
            "invalid backend \"a:1,weight=2,weight=3\": weight is given twice"
        );
        assert_eq!(
            err("a:1 3"),
            "invalid backend \"a:1 3\": unexpected \"3\" after the address: expected weight=N"
        );
        assert!(flag("weight=3").contains("is an option, not host:port"));
        // Zero and too much parse: validation refuses them (check_weight), as the TOML does.
        let zero = RouteBackend::parse_flag("a:1,weight=0").unwrap();
        assert_eq!(zero.weight, 0);
        assert_eq!(
            zero.check_weight().unwrap_err().to_string(),
            "backend \"a:1\": weight 0 is not from 1 to 256"
        );
        assert!(
            RouteBackend::new("a:1")
                .with_weight(257)
                .check_weight()
                .is_err()
        );
        assert!(
            RouteBackend::new("a:1")
                .with_weight(256)
                .check_weight()
                .is_ok()
        );
        // Nothing is echoed unbounded.
        let huge = format!("a:1,{}=3", "w".repeat(100_000));
        assert!(flag(&huge).len() < 300, "{}", flag(&huge).len());
        let huge = format!("{}:1,weight={}", "a".repeat(100_000), "9".repeat(100_000));
        assert!(flag(&huge).len() < 300, "{}", flag(&huge).len());
    }

    #[test]
    fn zero_counts_and_times_are_refused_not_read_as_unset() {
        let check = |edit: fn(&mut HealthCheck)| {
            let mut c = HealthCheck::default();
            edit(&mut c);
            c.check_timing().map_err(|e| e.to_string())
        };
        assert_eq!(check(|_| {}), Ok(()));
        let rise_fall = Err("health_check: rise and fall must be at least 1".to_owned());
        assert_eq!(check(|c| c.rise = 0), rise_fall);
        assert_eq!(check(|c| c.fall = 0), rise_fall);
        assert_eq!(
            check(|c| c.interval = std::time::Duration::ZERO),
            Err("health_check: interval must be at least 100ms".to_owned())
        );
        assert_eq!(
            check(|c| c.timeout = std::time::Duration::ZERO),
            Err("health_check: timeout must be more than 0 and at most the interval".to_owned())
        );
    }

    #[test]
    fn enums_parse_their_own_spelling_only() {
        for b in Balance::ALL {
            assert_eq!(b.as_str().parse::<Balance>(), Ok(*b));
        }
        assert_eq!("".parse::<Balance>(), Ok(Balance::RoundRobin));
        assert!("roundrobin".parse::<Balance>().is_err());
        for s in AdminState::ALL {
            assert_eq!(s.as_str().parse::<AdminState>(), Ok(*s));
        }
        assert!("Enabled".parse::<AdminState>().is_err());
    }

    #[test]
    fn status_classes_match_whole_classes() {
        let c: StatusClasses = "2xx, 3xx".parse().unwrap();
        assert!(c.contains(200) && c.contains(399) && !c.contains(404) && !c.contains(500));
        assert_eq!(c.to_string(), "2xx,3xx");
        assert_eq!(StatusClasses::default(), c);
        let five: StatusClasses = "5xx".parse().unwrap();
        assert!(five.contains(503) && !five.contains(200) && !five.contains(600));
    }

    #[test]
    fn expect_takes_codes_classes_ranges_and_lists_as_haproxy_does() {
        let parse = |s: &str| s.parse::<StatusClasses>().unwrap();
        let one = parse("200");
        assert!(one.contains(200) && !one.contains(201) && !one.contains(199));
        assert_eq!(one.to_string(), "200");
        let range = parse("200-399");
        assert!(range.contains(200) && range.contains(302) && range.contains(399));
        assert!(!range.contains(400));
        assert_eq!(
            range.to_string(),
            "2xx,3xx",
            "whole classes show as classes"
        );
        let mixed = parse("200,301-302,4xx");
        for yes in [200, 301, 302, 400, 404, 499] {
            assert!(mixed.contains(yes), "{yes}");
        }
        for no in [201, 300, 303, 500] {
            assert!(!mixed.contains(no), "{no}");
        }
        assert_eq!(mixed.to_string(), "200,301-302,4xx");
        assert_eq!(
            parse(&mixed.to_string()),
            mixed,
            "the canonical form parses back"
        );
        assert_eq!(parse("150-250").to_string(), "150-250");
        assert_eq!(parse("199-399").to_string(), "199,2xx,3xx");
        assert_eq!(parse("204, 200 - 203").to_string(), "200-204");
        for bad in [
            "",
            "2xx,",
            ",200",
            "6xx",
            "099",
            "600",
            "2XX",
            "20",
            "2000",
            "300-200",
            "2xx-3xx",
            "200-",
            "-200",
            "200-300-400",
            "abc",
            "+200",
            "1e2",
        ] {
            let e = bad.parse::<StatusClasses>().unwrap_err().to_string();
            assert!(e.contains("like \"200\", \"2xx\""), "{bad:?}: {e}");
        }
        let huge = "2".repeat(100_000);
        assert!(huge.parse::<StatusClasses>().unwrap_err().to_string().len() < 400);
    }

    #[test]
    fn rise_fall_and_interval_have_upper_bounds() {
        let check = |edit: fn(&mut HealthCheck)| {
            let mut c = HealthCheck::default();
            edit(&mut c);
            c.check_timing().map_err(|e| e.to_string())
        };
        assert_eq!(check(|c| c.rise = 100), Ok(()));
        assert_eq!(check(|c| c.fall = 100), Ok(()));
        let run = Err("health_check: rise and fall must be at most 100".to_owned());
        assert_eq!(check(|c| c.rise = 101), run);
        assert_eq!(check(|c| c.fall = u32::MAX), run);
        assert_eq!(
            check(|c| c.interval = std::time::Duration::from_secs(3600)),
            Ok(())
        );
        assert_eq!(
            check(|c| c.interval = std::time::Duration::from_secs(3601)),
            Err("health_check: interval must be at most 1h".to_owned())
        );
    }

    #[test]
    fn unknown_mode_is_rejected_with_its_spelling() {
        let err = "L7".parse::<Mode>().unwrap_err();
        assert!(err.to_string().contains("\"L7\""), "{err}");
        assert!("tcp".parse::<Mode>().is_err());
    }
}
