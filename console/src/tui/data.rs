//! What the daemon told the console: status, listeners, routes with their counters, rates
//! and recent windows, firewall rules, the event log, the link state and the status line's
//! notice. The components read it; only `App` changes it, from daemon messages and ticks.
//!
//! No I/O, no drawing, no key handling. Invariants: the event log and every history are
//! bounded ([`LOG_CAPACITY`], [`HISTORY`]); a route's rate comes from two successive samples of
//! its counters; a change seen twice (in the snapshot and as an event) is applied once.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use mc_proxy_shared::client::{
    Certificate, Event, ListenerStatus, RouteEntry, RouteStats, Status, TimedEvent,
};
use mc_proxy_shared::{ChangeAction, FirewallRule, MemberStats, Route};

use super::health::{Health, Recent, Window};
use crate::format::{clock, fit, member_state_reason, now_ms, origin_short};

/// Lines kept in the event log.
pub const LOG_CAPACITY: usize = 500;

/// Rate samples kept per route (one per stats snapshot, about a second each).
pub const HISTORY: usize = 180;

/// How long a notice stays on the status line (it stays in the event log).
pub const NOTE_TTL: Duration = Duration::from_secs(8);

/// Link state, for the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet.
    Connecting,
    /// Live.
    Connected,
    /// Lost; the link retries. Holds the last error.
    Reconnecting(String),
}

/// One rate sample of a route.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rate {
    /// Client to backend, bytes per second.
    pub in_bps: f64,
    /// Backend to client, bytes per second.
    pub out_bps: f64,
    /// L7 requests per second.
    pub rps: f64,
}

/// A route as the console shows it: fields, counters and rates.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteView {
    /// Every field.
    pub route: Route,
    /// Latest counters.
    pub stats: RouteStats,
    /// Latest rate (between the last two snapshots).
    pub rate: Rate,
    /// Recent rates with the time of their snapshot, oldest first, at most [`HISTORY`].
    pub history: VecDeque<(Instant, Rate)>,
    /// Counters over the last [`super::health::WINDOW`]: colour, request rate, 5xx share.
    pub window: Window,
    /// When `stats` was taken (for the next rate).
    last_sample: Option<Instant>,
    /// `Some(reason)`: stored but not served (its certificate or key did not load); shown
    /// red, with the reason in the detail.
    pub not_served: Option<String>,
    /// A served L7 route: the certificate it serves, as of the last snapshot (each second's
    /// stats carry it, so a reload's renewal shows within a second).
    pub certificate: Option<Certificate>,
}

/// One line of the events pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// What it is about, for the filter.
    pub kind: LogKind,
    /// As shown.
    pub text: String,
}

/// What an events pane line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// Connections opened, closed, blocked.
    Traffic,
    /// A route member changed state.
    Backend,
    /// Routes, listeners and firewall rules changed.
    Change,
    /// The console's own: the link to the daemon, answers to its changes; always shown.
    Daemon,
}

/// What the events pane shows (`v` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFilter {
    /// Everything.
    #[default]
    All,
    /// Everything but connections: what changed and what broke.
    NoTraffic,
    /// Backend state changes only.
    Backends,
    /// Connections only.
    Traffic,
}

impl LogFilter {
    /// As the pane's title shows it (`None` for everything).
    pub fn title(self) -> Option<&'static str> {
        match self {
            LogFilter::All => None,
            LogFilter::NoTraffic => Some("no traffic"),
            LogFilter::Backends => Some("backends"),
            LogFilter::Traffic => Some("traffic"),
        }
    }

    /// The next filter.
    pub fn next(self) -> LogFilter {
        match self {
            LogFilter::All => LogFilter::NoTraffic,
            LogFilter::NoTraffic => LogFilter::Backends,
            LogFilter::Backends => LogFilter::Traffic,
            LogFilter::Traffic => LogFilter::All,
        }
    }

    /// Whether a line of `kind` is shown.
    pub fn shows(self, kind: LogKind) -> bool {
        match (self, kind) {
            (LogFilter::All, _) | (_, LogKind::Daemon) => true,
            (LogFilter::NoTraffic, k) => k != LogKind::Traffic,
            (LogFilter::Backends, k) => k == LogKind::Backend,
            (LogFilter::Traffic, k) => k == LogKind::Traffic,
        }
    }
}

/// A one-line notice (the last action's result), shown on the status line for [`NOTE_TTL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The text.
    pub text: String,
    /// Shown in red.
    pub error: bool,
    /// When it was set.
    pub at: Instant,
}

/// A firewall rule's key for selections.
pub fn rule_key(rule: &FirewallRule) -> String {
    format!("{} {}", rule.kind, rule.value)
}

impl RouteView {
    /// A route without counters yet.
    pub fn new(route: Route) -> RouteView {
        RouteView {
            route,
            stats: RouteStats::default(),
            rate: Rate::default(),
            history: VecDeque::new(),
            window: Window::default(),
            last_sample: None,
            not_served: None,
            certificate: None,
        }
    }

    /// Takes a new counter sample and derives the rate since the previous one.
    pub fn sample(&mut self, stats: RouteStats, now: Instant) {
        if let Some(prev) = self.last_sample {
            let dt = now.saturating_duration_since(prev).as_secs_f64();
            if dt > 0.0 {
                let per_sec = |new: u64, old: u64| new.saturating_sub(old) as f64 / dt;
                self.rate = Rate {
                    in_bps: per_sec(stats.bytes_in, self.stats.bytes_in),
                    out_bps: per_sec(stats.bytes_out, self.stats.bytes_out),
                    rps: per_sec(stats.requests, self.stats.requests),
                };
                if self.history.len() == HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back((now, self.rate));
            }
        }
        self.window.push(now, stats.clone());
        self.stats = stats;
        self.last_sample = Some(now);
    }

    /// What happened over the recent window.
    pub fn recent(&self) -> Recent {
        self.window.recent()
    }

    /// The row colour class.
    pub fn health(&self) -> Health {
        self.recent().health(self.route.mode)
    }
}

/// The admin state of each member of `r`'s set, in order: the daemon's live figure when there
/// is one (it follows drains made elsewhere), else what the route's set says.
pub fn admin_states(r: &RouteView) -> Vec<mc_proxy_shared::AdminState> {
    r.route
        .backends
        .iter()
        .map(|b| {
            r.stats
                .members
                .iter()
                .find(|m| m.address == b.address)
                .map_or(b.state, |m| m.admin)
        })
        .collect()
}

/// The daemon's state as the console last heard it.
#[derive(Debug)]
pub struct Data {
    /// Editing keys are hidden and refused.
    pub read_only: bool,
    /// Daemon version, from the last snapshot.
    pub version: String,
    /// The context the console was started for (`--context`), shown first in the status line.
    pub context: Option<String>,
    /// On a cluster node: its link to the fleet's store (from the snapshot, then each
    /// second's stats).
    pub cluster: Option<mc_proxy_shared::client::ClusterLink>,
    /// Daemon uptime at `status_at`.
    pub uptime: Duration,
    /// When the uptime was read.
    pub status_at: Instant,
    /// Listeners, in daemon order.
    pub listeners: Vec<ListenerStatus>,
    /// Routes per listener address.
    pub routes: HashMap<String, Vec<RouteView>>,
    /// Firewall rules.
    pub rules: Vec<FirewallRule>,
    /// Recent events, oldest first, at most [`LOG_CAPACITY`].
    pub log: VecDeque<LogLine>,
    /// Link state.
    pub link: Link,
    /// The status line's notice.
    pub note: Option<Note>,
    /// Time of the last tick or message (for notices; `render` never reads the clock).
    pub now: Instant,
    /// Unix time (ms) of the newest figures: the last stats event's timestamp, or when the
    /// last snapshot arrived. Shown when the daemon is unreachable, so stale values say so.
    pub figures_at_ms: Option<u64>,
}

/// What an event changed, for the components that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Only the log: no list changed, no selection to re-find (the hot path under load).
    Logged,
    /// Lists may have changed: selections are re-found.
    Changed,
    /// A route on `listener` was renamed from `from` to `to` (and lists changed).
    Renamed {
        /// Listener address.
        listener: String,
        /// The old hostname.
        from: String,
        /// The new hostname.
        to: String,
    },
    /// The daemon reports a rule added (and lists changed).
    RuleAdded(FirewallRule),
    /// A connection closed (the connections view drops it).
    ConnectionClosed(u64),
}

impl Data {
    /// Nothing heard yet.
    pub fn new(read_only: bool) -> Data {
        let now = Instant::now();
        Data {
            read_only,
            version: String::new(),
            cluster: None,
            context: None,
            uptime: Duration::ZERO,
            status_at: now,
            listeners: Vec::new(),
            routes: HashMap::new(),
            rules: Vec::new(),
            log: VecDeque::new(),
            link: Link::Connecting,
            note: None,
            now,
            figures_at_ms: None,
        }
    }

    /// Uptime now, extrapolated from the last status while connected; frozen at the last
    /// known value while the daemon is away (it may be restarting).
    pub fn uptime_now(&self) -> Duration {
        match self.link {
            Link::Connected => self.uptime + self.now.saturating_duration_since(self.status_at),
            _ => self.uptime,
        }
    }

    /// `Some(HH:MM:SS)` (UTC, like the event log) of the figures on screen when they are not
    /// live: the daemon is unreachable and what is shown is what it last said.
    pub fn stale_since(&self) -> Option<String> {
        match self.link {
            Link::Reconnecting(_) => self.figures_at_ms.map(clock),
            Link::Connected | Link::Connecting => None,
        }
    }

    /// The routes of the listener at `addr`, in daemon order.
    pub fn routes_of(&self, addr: &str) -> &[RouteView] {
        self.routes.get(addr).map_or(&[], Vec::as_slice)
    }

    /// Appends to the event log, dropping the oldest line when full.
    pub fn push_log(&mut self, kind: LogKind, text: String) {
        if self.log.len() == LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(LogLine { kind, text });
    }

    /// The events pane's lines `filter` shows, oldest first.
    pub fn log_shown(&self, filter: LogFilter) -> impl DoubleEndedIterator<Item = &str> {
        self.log
            .iter()
            .filter(move |l| filter.shows(l.kind))
            .map(|l| l.text.as_str())
    }

    /// Sets the status line's notice (and logs it).
    pub fn set_note(&mut self, text: String, error: bool) {
        self.push_log(LogKind::Daemon, text.clone());
        self.note = Some(Note {
            text,
            error,
            at: self.now,
        });
    }

    /// Advances the clock: notices older than [`NOTE_TTL`] go.
    pub fn on_tick(&mut self, now: Instant) {
        self.now = now;
        if self
            .note
            .as_ref()
            .is_some_and(|n| now.saturating_duration_since(n.at) >= NOTE_TTL)
        {
            self.note = None;
        }
    }

    fn find_route(&self, listener: &str, hostname: &str) -> Option<&RouteView> {
        self.routes
            .get(listener)?
            .iter()
            .find(|r| r.route.hostname == hostname)
    }

    /// (Re)connected: the whole state, counters continuing where they were (a restarted
    /// daemon begins new windows).
    pub fn on_snapshot(
        &mut self,
        status: Status,
        routes: Vec<RouteEntry>,
        rules: Vec<FirewallRule>,
        now: Instant,
    ) {
        self.version = status.version;
        self.cluster = status.cluster;
        self.uptime = status.uptime;
        self.status_at = now;
        self.listeners = status.listeners;
        let mut by_listener: HashMap<String, Vec<RouteView>> = HashMap::new();
        for entry in routes {
            let mut view = self
                .find_route(&entry.listener, &entry.route.hostname)
                .cloned()
                .unwrap_or_else(|| RouteView::new(entry.route.clone()));
            view.route = entry.route;
            view.not_served = entry.not_served;
            view.certificate = entry.certificate;
            // A restarted daemon starts its counters from zero: begin a new window.
            if entry.stats.total_connections < view.stats.total_connections {
                view.window = Window::default();
            }
            view.last_sample = Some(now);
            view.window.push(now, entry.stats.clone());
            view.stats = entry.stats;
            by_listener.entry(entry.listener).or_default().push(view);
        }
        self.routes = by_listener;
        self.rules = rules;
        self.figures_at_ms = Some(now_ms());
        if self.link != Link::Connected {
            self.push_log(LogKind::Daemon, "connected to the daemon".into());
            // Whatever went wrong while away is over.
            if self.note.as_ref().is_some_and(|n| n.error) {
                self.note = None;
            }
        }
        self.link = Link::Connected;
    }

    /// The daemon went away; the link retries.
    pub fn on_disconnected(&mut self, reason: String) {
        if self.link == Link::Connected {
            self.push_log(LogKind::Daemon, format!("lost the daemon: {reason}"));
            self.uptime = self.uptime_now();
        }
        self.link = Link::Reconnecting(reason);
    }

    /// Applies a live event received at `now`: logged (stats are not), then applied to the
    /// lists; says what it changed.
    pub fn on_event(&mut self, event: TimedEvent, now: Instant) -> Applied {
        self.now = self.now.max(now);
        let time = clock(event.timestamp_ms);
        if let Some((kind, line)) =
            traffic_line(&time, &event.event).or_else(|| change_line(&time, &event.event))
        {
            self.push_log(kind, line);
        }
        match event.event {
            Event::Stats {
                listeners,
                routes,
                cluster,
                ..
            } => {
                self.cluster = cluster;
                self.on_stats(event.timestamp_ms, listeners, routes, now);
                Applied::Changed
            }
            Event::BackendChanged {
                listener,
                route,
                member,
                ..
            } => {
                self.on_backend_changed(&listener, &route, member);
                Applied::Changed
            }
            // Log only: no list changes (the hot path under load).
            Event::ConnectionOpened { .. } => Applied::Logged,
            Event::ConnectionClosed { id, .. } => Applied::ConnectionClosed(id),
            Event::RouteChanged {
                listener,
                action,
                route,
                previous_hostname,
                ..
            } => self.on_route_changed(listener, action, route, previous_hostname),
            Event::FirewallChanged { action, rule, .. } => self.on_firewall_changed(action, rule),
            Event::ClusterLink { link } => {
                self.cluster = Some(link);
                Applied::Changed
            }
            // Already in the log; a notice too, as a backend going down is.
            Event::CertificateExpiring {
                route,
                not_after_ms,
                ..
            } => {
                let when = if not_after_ms <= event.timestamp_ms {
                    "has EXPIRED".to_owned()
                } else {
                    format!("ends {}", crate::format::date(not_after_ms))
                };
                self.note = Some(Note {
                    text: format!("certificate of {route} {when}"),
                    error: true,
                    at: self.now,
                });
                Applied::Logged
            }
            // A failed order is a notice, as an expiring certificate is.
            Event::AcmeOrder {
                route,
                error: Some(error),
                ..
            } => {
                self.note = Some(Note {
                    text: format!("ACME order for {route} failed: {error}"),
                    error: true,
                    at: self.now,
                });
                Applied::Logged
            }
            Event::AcmeOrder { .. } => Applied::Logged,
            // The listener list itself comes with the next stats tick.
            Event::ListenerChanged { .. }
            | Event::ConnectionBlocked { .. }
            | Event::Lagged { .. } => Applied::Changed,
        }
    }

    /// A stats snapshot: listeners replaced, every route sampled (new ones added).
    fn on_stats(
        &mut self,
        timestamp_ms: u64,
        listeners: Vec<ListenerStatus>,
        routes: Vec<RouteEntry>,
        now: Instant,
    ) {
        self.figures_at_ms = Some(match timestamp_ms {
            0 => now_ms(),
            ms => ms,
        });
        self.listeners = listeners;
        for entry in routes {
            let list = self.routes.entry(entry.listener).or_default();
            match list
                .iter_mut()
                .find(|r| r.route.hostname == entry.route.hostname)
            {
                Some(view) => {
                    view.not_served = entry.not_served;
                    view.certificate = entry.certificate;
                    view.sample(entry.stats, now);
                }
                None => {
                    let mut view = RouteView::new(entry.route);
                    view.not_served = entry.not_served;
                    view.certificate = entry.certificate;
                    view.sample(entry.stats, now);
                    list.push(view);
                }
            }
        }
    }

    /// A member changed state: its figures replaced; a member going down or ejected is a
    /// notice too (issue 28).
    fn on_backend_changed(&mut self, listener: &str, route: &str, member: MemberStats) {
        // Already in the log: set the notice without logging it twice.
        if matches!(
            member.state,
            mc_proxy_shared::BackendState::Down | mc_proxy_shared::BackendState::Ejected
        ) {
            let text = format!(
                "backend {} of {route} {}",
                member.address,
                member_state_reason(&member)
            );
            self.note = Some(Note {
                text,
                error: true,
                at: self.now,
            });
        }
        if let Some(view) = self
            .routes
            .get_mut(listener)
            .and_then(|list| list.iter_mut().find(|r| r.route.hostname == route))
        {
            match view
                .stats
                .members
                .iter_mut()
                .find(|m| m.address == member.address)
            {
                Some(m) => *m = member,
                None => view.stats.members.push(member),
            }
        }
    }

    /// A route added, changed (maybe renamed) or removed on `listener`.
    fn on_route_changed(
        &mut self,
        listener: String,
        action: ChangeAction,
        route: Route,
        previous_hostname: String,
    ) -> Applied {
        let list = self.routes.entry(listener.clone()).or_default();
        match action {
            // An add seen in the snapshot already (the stream starts before it).
            // Also a stored route a reload serves again.
            ChangeAction::Added => {
                match list.iter_mut().find(|r| r.route.hostname == route.hostname) {
                    Some(view) => {
                        view.route = route;
                        view.not_served = None;
                    }
                    None => list.push(RouteView::new(route)),
                }
                Applied::Changed
            }
            ChangeAction::Updated => {
                let Some(view) = list
                    .iter_mut()
                    .find(|r| r.route.hostname == previous_hostname)
                else {
                    return Applied::Changed;
                };
                let to = route.hostname.clone();
                view.route = route;
                // An update is applied only if the route validates: served.
                view.not_served = None;
                Applied::Renamed {
                    listener,
                    from: previous_hostname,
                    to,
                }
            }
            ChangeAction::Removed => {
                list.retain(|r| r.route.hostname != route.hostname);
                Applied::Changed
            }
        }
    }

    /// A rule added or removed.
    fn on_firewall_changed(&mut self, action: ChangeAction, rule: FirewallRule) -> Applied {
        match action {
            ChangeAction::Added => {
                if !self.rules.contains(&rule) {
                    self.rules.push(rule.clone());
                }
                Applied::RuleAdded(rule)
            }
            ChangeAction::Removed => {
                self.rules.retain(|r| *r != rule);
                Applied::Changed
            }
            // A rule is its value: it is never changed in place.
            ChangeAction::Updated => Applied::Changed,
        }
    }
}

/// The events pane's line for a connection opened, closed or blocked at `time`.
fn traffic_line(time: &str, event: &Event) -> Option<(LogKind, String)> {
    let line = match event {
        Event::ConnectionOpened {
            id,
            client,
            hostname,
            mode,
            backend,
            ..
        } => {
            // A route's whole set (L7: each request picks) is shown as the routes table
            // shows it, `first +N`, so that the line's cut end never hides a member.
            let backend = match backend.split_once(", ") {
                Some((first, _)) => format!("{first} +{}", backend.matches(", ").count()),
                None => backend.clone(),
            };
            format!("{time} open  #{id} {client} {hostname} {mode}->{backend}")
        }
        Event::ConnectionClosed {
            id,
            client,
            hostname,
            bytes_in,
            bytes_out,
            duration_ms,
            outcome,
            ..
        } => {
            let host = if hostname.is_empty() { "-" } else { hostname };
            format!(
                "{time} close #{id} {client} {host} in {} out {} {duration_ms}ms {outcome}",
                fit::bytes(*bytes_in),
                fit::bytes(*bytes_out)
            )
        }
        Event::ConnectionBlocked { client, reason, .. } => {
            format!("{time} block {client} ({reason})")
        }
        _ => return None,
    };
    Some((LogKind::Traffic, line))
}

/// The events pane's line for anything else but stats: what changed (and who changed it),
/// a member's new state, events lost.
fn change_line(time: &str, event: &Event) -> Option<(LogKind, String)> {
    Some(match event {
        Event::BackendChanged { route, member, .. } => (
            LogKind::Backend,
            format!(
                "{time} backend {route} {} {}",
                member.address,
                member_state_reason(member)
            ),
        ),
        Event::RouteChanged {
            action,
            route,
            origin,
            ..
        } => (
            LogKind::Change,
            format!(
                "{time} route {action} {} ({} -> {}){}",
                route.hostname,
                route.mode,
                route.backend_list(),
                origin_short(origin.as_ref())
            ),
        ),
        Event::ListenerChanged {
            listener,
            action,
            origin,
        } => (
            LogKind::Change,
            format!(
                "{time} listener {action} {listener}{}",
                origin_short(origin.as_ref())
            ),
        ),
        Event::ClusterLink { link } => (
            LogKind::Daemon,
            format!("{time} cluster {}", crate::format::cluster_link(link)),
        ),
        Event::FirewallChanged {
            action,
            rule,
            origin,
        } => (
            LogKind::Change,
            format!(
                "{time} firewall {action} {} {}{}",
                rule.kind,
                rule.value,
                origin_short(origin.as_ref())
            ),
        ),
        Event::Lagged { dropped } => (
            LogKind::Daemon,
            format!("{time} missed {dropped} event(s): console too slow"),
        ),
        Event::CertificateExpiring {
            route,
            not_after_ms,
            ..
        } => (
            LogKind::Daemon,
            format!(
                "{time} certificate of {route} ends {}",
                crate::format::date(*not_after_ms)
            ),
        ),
        Event::AcmeOrder {
            route,
            not_after_ms,
            error,
        } => (
            LogKind::Daemon,
            match (not_after_ms, error) {
                (Some(end), _) => format!(
                    "{time} ACME issued {route}, until {}",
                    crate::format::date(*end)
                ),
                (None, error) => format!(
                    "{time} ACME order for {route} FAILED: {}",
                    error.as_deref().unwrap_or("no reason given")
                ),
            },
        ),
        _ => return None,
    })
}
