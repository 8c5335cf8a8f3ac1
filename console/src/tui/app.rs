//! The console's state and what keys and daemon messages do to it.
//!
//! No I/O and no drawing: `App` is updated by [`App::on_key`] (which may return an [`Action`]
//! for the runner to carry out against the daemon), by [`App::on_daemon`] (snapshots, live
//! events, results of actions, connection state) and by [`App::on_tick`] (notices expire). The
//! views in `ui` only read it. The pieces live beside it: the form in `form`, selections in
//! `select`, the recent-error window in `health`, the connections list in `conns`, the keys in
//! `input`.
//!
//! Invariants: the event log and every history are bounded; every selection is kept by key and
//! re-found after each change (`follow_all`), so it points at an existing row, the same item
//! as before when that item still exists, or nothing when the list is empty.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mc_proxy_shared::client::{
    ConnectionList, Event, ListenerStatus, RouteEntry, RouteStats, Status, TimedEvent,
};
use mc_proxy_shared::{ChangeAction, FirewallRule, FirewallRuleKind, Route};

use super::conns::ConnView;
use super::form::edit_text;
pub use super::form::{Field, Form};
use super::health::{Health, Recent, Window};
use super::input::{self, Command, Context};
use super::order;
use super::select::Selection;
use crate::format::{clock, fit, member_state_reason, now_ms, origin_short};

/// Lines kept in the event log.
pub const LOG_CAPACITY: usize = 500;
/// Rate samples kept per route (one per stats snapshot, about a second each).
pub const HISTORY: usize = 180;
/// How long a notice stays on the status line (it stays in the event log).
pub const NOTE_TTL: Duration = Duration::from_secs(8);
/// Rows moved by page up/down.
pub const PAGE: isize = 10;

/// What the daemon link reports to the app.
#[derive(Debug, Clone)]
pub enum DaemonMsg {
    /// (Re)connected: the whole state, fetched once.
    Snapshot {
        /// Status (version, uptime, listeners).
        status: Status,
        /// Every route.
        routes: Vec<RouteEntry>,
        /// Every firewall rule.
        rules: Vec<FirewallRule>,
    },
    /// A live event.
    Event(TimedEvent),
    /// The open connections, polled while the connections view is shown.
    Connections(ConnectionList),
    /// The daemon went away; the link retries.
    Disconnected(String),
    /// How an [`Action`] went: `Ok` with a note, or the daemon's error.
    ActionDone(Result<String, String>),
}

/// Something the user asked the daemon (or the link) to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add a route to a listener.
    AddRoute {
        /// Listener address.
        listener: String,
        /// The new route.
        route: Route,
    },
    /// Change a route: the fields that differ between `before` and `route` are sent, so an
    /// edit never overwrites what it did not touch (the hostname may change too).
    UpdateRoute {
        /// Listener address.
        listener: String,
        /// The route as the form was opened on it (its hostname names it to the daemon).
        before: Route,
        /// Every field after the edit.
        route: Route,
    },
    /// Set one backend of a route enabled, draining or disabled.
    SetBackendState {
        /// Listener address.
        listener: String,
        /// The route's hostname.
        hostname: String,
        /// The backend's address.
        address: String,
        /// The new admin state.
        state: mc_proxy_shared::AdminState,
    },
    /// Set one backend's weight.
    SetBackendWeight {
        /// Listener address.
        listener: String,
        /// The route's hostname.
        hostname: String,
        /// The backend's address.
        address: String,
        /// The new weight, 1 to 256.
        weight: u32,
    },
    /// Cut one open connection now.
    CloseConnection {
        /// Its id.
        id: u64,
    },
    /// Remove a route.
    RemoveRoute {
        /// Listener address.
        listener: String,
        /// The route's hostname.
        hostname: String,
    },
    /// Block an address or network.
    AddRule(FirewallRule),
    /// Unblock one.
    RemoveRule(FirewallRule),
    /// Start (`true`) or stop polling the open connections; no daemon change, no answer.
    WatchConnections(bool),
    /// Leave the console.
    Quit,
}

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
}

/// The firewall box's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallView {
    /// Selected rule, by value.
    pub sel: Selection,
    /// Text being typed for a new rule (`Some` while adding).
    pub input: Option<String>,
    /// "Unblock this rule?" while waiting for y.
    pub confirm: Option<FirewallRule>,
    /// An add was sent: the next rule the daemon reports added gets the selection.
    pub select_next_added: bool,
    /// The daemon's answer to the last change.
    pub error: Option<String>,
}

/// What has the keyboard on top of the current view.
// One value, the screen on show: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screen {
    /// Moving around the view.
    Normal,
    /// Typing the filter of the current view.
    Filter,
    /// The add/edit form.
    Form(Form),
    /// "Delete this route?"
    ConfirmDelete {
        /// Listener address.
        listener: String,
        /// Route hostname.
        hostname: String,
    },
    /// The firewall rules.
    Firewall(FirewallView),
    /// Everything about the selected listener.
    ListenerDetail,
    /// Everything about the selected route.
    RouteDetail,
    /// "Drain/disable this backend?", asked when it would leave the route with no enabled
    /// backend; `y` sends the action, any other key goes back to the route detail.
    ConfirmBackend(Action),
    /// "Close this connection?" (connections view); `y` closes it.
    ConfirmClose {
        /// The connection's id.
        id: u64,
        /// Client, route and age, as the question shows them.
        what: String,
    },
    /// The key list.
    Help {
        /// Scrolled down by this many lines.
        scroll: u16,
        /// Opened from the route detail: it lists the detail's keys and closes back to it.
        detail: bool,
    },
}

/// Which pane of the routes view has the selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    /// The listener list.
    Listeners,
    /// The selected listener's routes.
    Routes,
}

/// The main view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Listeners, routes, traffic, events.
    Routes,
    /// Open connections.
    Connections,
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

/// Route order (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteSort {
    /// Natural name order, wildcards last.
    #[default]
    Name,
    /// Current bytes/s (in + out), busiest first.
    Traffic,
    /// Recent error share, worst first; then errors since start.
    Errors,
}

impl RouteSort {
    /// As the title shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSort::Name => "name",
            RouteSort::Traffic => "traffic",
            RouteSort::Errors => "errors",
        }
    }

    fn next(self) -> RouteSort {
        match self {
            RouteSort::Name => RouteSort::Traffic,
            RouteSort::Traffic => RouteSort::Errors,
            RouteSort::Errors => RouteSort::Name,
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

/// The whole console state.
#[derive(Debug)]
pub struct App {
    /// Editing keys are hidden and refused.
    pub read_only: bool,
    /// Daemon version, from the last snapshot.
    pub version: String,
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
    /// What the events pane shows (`v` cycles).
    pub log_filter: LogFilter,
    /// Link state.
    pub link: Link,
    /// Selected listener, by address.
    pub listener_sel: Selection,
    /// Selected route among the visible routes, by hostname.
    pub route_sel: Selection,
    /// The backend selected in the route detail box (an index into the route's set).
    pub member_sel: usize,
    /// Pane with focus.
    pub pane: Pane,
    /// Route filter (hostname or backend contains it, case-insensitively).
    pub filter: String,
    /// Route order.
    pub sort: RouteSort,
    /// The main view.
    pub view: View,
    /// The connections view's state.
    pub conns: ConnView,
    /// What has the keyboard.
    pub mode: Screen,
    /// The status line's notice.
    pub note: Option<Note>,
    /// Time of the last tick or message (for notices; `render` never reads the clock).
    pub now: Instant,
    /// Unix time (ms) of the newest figures: the last stats event's timestamp, or when the
    /// last snapshot arrived. Shown when the daemon is unreachable, so stale values say so.
    pub figures_at_ms: Option<u64>,
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

impl App {
    /// An empty console, waiting for its first snapshot.
    pub fn new() -> App {
        let now = Instant::now();
        App {
            read_only: false,
            version: String::new(),
            uptime: Duration::ZERO,
            status_at: now,
            listeners: Vec::new(),
            routes: HashMap::new(),
            rules: Vec::new(),
            log: VecDeque::new(),
            log_filter: LogFilter::default(),
            link: Link::Connecting,
            listener_sel: Selection::default(),
            route_sel: Selection::default(),
            member_sel: 0,
            pane: Pane::Routes,
            filter: String::new(),
            sort: RouteSort::Name,
            view: View::Routes,
            conns: ConnView::default(),
            mode: Screen::Normal,
            note: None,
            now,
            figures_at_ms: None,
        }
    }

    /// The same, with editing keys hidden and refused.
    pub fn read_only() -> App {
        App {
            read_only: true,
            ..App::new()
        }
    }

    /// The selected listener, if any.
    pub fn listener(&self) -> Option<&ListenerStatus> {
        self.listeners.get(self.listener_sel.index())
    }

    /// The selected listener's routes that pass the filter, in the chosen order.
    pub fn visible_routes(&self) -> Vec<&RouteView> {
        let Some(l) = self.listener() else {
            return Vec::new();
        };
        let filter = self.filter.to_lowercase();
        let mut routes: Vec<&RouteView> = self
            .routes
            .get(&l.addr)
            .map(|rs| {
                rs.iter()
                    .filter(|r| {
                        filter.is_empty()
                            || r.route.hostname.to_lowercase().contains(&filter)
                            || r.route
                                .backends
                                .iter()
                                .any(|b| b.address.to_lowercase().contains(&filter))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let name =
            |a: &RouteView, b: &RouteView| order::route_name(&a.route.hostname, &b.route.hostname);
        match self.sort {
            RouteSort::Name => routes.sort_by(|a, b| name(a, b)),
            RouteSort::Traffic => routes.sort_by(|a, b| {
                let t = |r: &RouteView| r.rate.in_bps + r.rate.out_bps;
                t(b).total_cmp(&t(a)).then_with(|| name(a, b))
            }),
            RouteSort::Errors => routes.sort_by(|a, b| {
                let share = |r: &RouteView| r.recent().error_share(r.route.mode).unwrap_or(0.0);
                let total = |r: &RouteView| r.stats.responses[4] + r.stats.backend_errors;
                share(b)
                    .total_cmp(&share(a))
                    .then_with(|| total(b).cmp(&total(a)))
                    .then_with(|| name(a, b))
            }),
        }
        routes
    }

    /// The selected route, if any.
    pub fn route(&self) -> Option<&RouteView> {
        self.visible_routes().get(self.route_sel.index()).copied()
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

    /// The key context of what is on screen.
    pub fn context(&self) -> Context {
        match (&self.mode, self.view) {
            (Screen::Firewall(_), _) => Context::Firewall,
            (Screen::Filter | Screen::Form(_), _) => Context::Text,
            (Screen::RouteDetail, _) => Context::RouteDetail,
            (_, View::Connections) => Context::Connections,
            (_, View::Routes) => Context::Routes,
        }
    }

    fn push_log(&mut self, kind: LogKind, text: String) {
        if self.log.len() == LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(LogLine { kind, text });
    }

    /// The events pane's lines its filter shows, oldest first.
    pub fn log_shown(&self) -> impl DoubleEndedIterator<Item = &str> {
        let filter = self.log_filter;
        self.log
            .iter()
            .filter(move |l| filter.shows(l.kind))
            .map(|l| l.text.as_str())
    }

    fn set_note(&mut self, text: String, error: bool) {
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

    /// Re-finds every selection after a change (see the module invariants).
    fn follow_all(&mut self) {
        let addrs: Vec<&str> = self.listeners.iter().map(|l| l.addr.as_str()).collect();
        self.listener_sel.follow(&addrs);
        let hosts: Vec<String> = self
            .visible_routes()
            .iter()
            .map(|r| r.route.hostname.clone())
            .collect();
        self.route_sel.follow(&hosts);
        let rules: Vec<String> = self.rules.iter().map(rule_key).collect();
        if let Screen::Firewall(fw) = &mut self.mode {
            fw.sel.follow(&rules);
        }
        self.conns.follow();
    }

    /// Applies a message from the daemon link.
    pub fn on_daemon(&mut self, msg: DaemonMsg) {
        let now = Instant::now().max(self.now);
        self.now = now;
        match msg {
            DaemonMsg::Snapshot {
                status,
                routes,
                rules,
            } => {
                self.version = status.version;
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
            DaemonMsg::Event(event) => {
                // on_event re-finds the selections itself when a list changed.
                self.on_event(event, now);
                return;
            }
            DaemonMsg::Connections(list) => self.conns.update(list, now),
            DaemonMsg::Disconnected(reason) => {
                if self.link == Link::Connected {
                    self.push_log(LogKind::Daemon, format!("lost the daemon: {reason}"));
                    self.uptime = self.uptime_now();
                }
                self.link = Link::Reconnecting(reason);
            }
            DaemonMsg::ActionDone(result) => self.on_action_done(result),
        }
        self.follow_all();
    }

    fn find_route(&self, listener: &str, hostname: &str) -> Option<&RouteView> {
        self.routes
            .get(listener)?
            .iter()
            .find(|r| r.route.hostname == hostname)
    }

    /// Applies a live event received at `now`.
    pub fn on_event(&mut self, event: TimedEvent, now: Instant) {
        self.now = self.now.max(now);
        let time = clock(event.timestamp_ms);
        match event.event {
            Event::Stats {
                listeners, routes, ..
            } => {
                self.figures_at_ms = Some(match event.timestamp_ms {
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
                            view.sample(entry.stats, now);
                        }
                        None => {
                            let mut view = RouteView::new(entry.route);
                            view.not_served = entry.not_served;
                            view.sample(entry.stats, now);
                            list.push(view);
                        }
                    }
                }
            }
            Event::BackendChanged {
                listener,
                route,
                member,
                ..
            } => {
                let line = format!(
                    "{time} backend {route} {} {}",
                    member.address,
                    member_state_reason(&member)
                );
                self.push_log(LogKind::Backend, line);
                // Issue 28: a member going down or ejected is a notice on the status line too
                // (already in the log: set it without logging it twice).
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
                    .get_mut(&listener)
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
            Event::ConnectionOpened {
                id,
                client,
                hostname,
                mode,
                backend,
                ..
            } => {
                // Log only: no list changes, no selection to re-find (the hot path under load).
                // A route's whole set (L7: each request picks) is shown as the routes table
                // shows it, `first +N`, so that the line's cut end never hides a member.
                let backend = match backend.split_once(", ") {
                    Some((first, _)) => format!("{first} +{}", backend.matches(", ").count()),
                    None => backend,
                };
                self.push_log(
                    LogKind::Traffic,
                    format!("{time} open  #{id} {client} {hostname} {mode}->{backend}"),
                );
                return;
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
                let host = if hostname.is_empty() {
                    "-".into()
                } else {
                    hostname
                };
                self.push_log(
                    LogKind::Traffic,
                    format!(
                        "{time} close #{id} {client} {host} in {} out {} {duration_ms}ms {outcome}",
                        fit::bytes(bytes_in),
                        fit::bytes(bytes_out)
                    ),
                );
                self.conns.closed(id);
                if self.view == View::Routes {
                    return;
                }
            }
            Event::ConnectionBlocked { client, reason, .. } => {
                self.push_log(
                    LogKind::Traffic,
                    format!("{time} block {client} ({reason})"),
                );
            }
            Event::RouteChanged {
                listener,
                action,
                route,
                previous_hostname,
                origin,
            } => {
                self.push_log(
                    LogKind::Change,
                    format!(
                        "{time} route {action} {} ({} -> {}){}",
                        route.hostname,
                        route.mode,
                        route.backend_list(),
                        origin_short(origin.as_ref())
                    ),
                );
                let selected_here = self.listener().is_some_and(|l| l.addr == listener);
                let list = self.routes.entry(listener).or_default();
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
                    }
                    ChangeAction::Updated => {
                        if let Some(view) = list
                            .iter_mut()
                            .find(|r| r.route.hostname == previous_hostname)
                        {
                            // A rename keeps the selection on the renamed route.
                            if selected_here
                                && self.route_sel.key() == Some(previous_hostname.as_str())
                            {
                                self.route_sel.set(route.hostname.clone());
                            }
                            view.route = route;
                            // An update is applied only if the route validates: served.
                            view.not_served = None;
                        }
                    }
                    ChangeAction::Removed => list.retain(|r| r.route.hostname != route.hostname),
                }
            }
            // The listener list itself comes with the next stats tick.
            Event::ListenerChanged {
                listener,
                action,
                origin,
            } => {
                self.push_log(
                    LogKind::Change,
                    format!(
                        "{time} listener {action} {listener}{}",
                        origin_short(origin.as_ref())
                    ),
                );
            }
            Event::FirewallChanged {
                action,
                rule,
                origin,
            } => {
                self.push_log(
                    LogKind::Change,
                    format!(
                        "{time} firewall {action} {} {}{}",
                        rule.kind,
                        rule.value,
                        origin_short(origin.as_ref())
                    ),
                );
                match action {
                    ChangeAction::Added => {
                        if let Screen::Firewall(fw) = &mut self.mode
                            && fw.select_next_added
                        {
                            fw.select_next_added = false;
                            fw.sel.set(rule_key(&rule));
                        }
                        if !self.rules.contains(&rule) {
                            self.rules.push(rule);
                        }
                    }
                    ChangeAction::Removed => self.rules.retain(|r| *r != rule),
                    // A rule is its value: it is never changed in place.
                    ChangeAction::Updated => {}
                }
            }
            Event::Lagged { dropped } => {
                self.push_log(
                    LogKind::Daemon,
                    format!("{time} missed {dropped} event(s): console too slow"),
                );
            }
        }
        self.follow_all();
    }

    fn on_action_done(&mut self, result: Result<String, String>) {
        match (&mut self.mode, result) {
            (Screen::Form(form), Err(e)) => {
                form.pending = false;
                form.error = Some(e);
            }
            (Screen::Firewall(fw), Err(e)) => {
                fw.select_next_added = false;
                fw.error = Some(e);
            }
            (Screen::Firewall(fw), Ok(note)) => {
                fw.error = None;
                self.set_note(note, false);
            }
            (Screen::Form(_), Ok(note)) => {
                self.mode = Screen::Normal;
                self.set_note(note, false);
            }
            (_, Ok(note)) => self.set_note(note, false),
            (_, Err(e)) => self.set_note(format!("error: {e}"), true),
        }
    }

    /// Handles a key; returns what to ask the daemon (or the link), if anything.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return Some(Action::Quit);
        }
        let action = match std::mem::replace(&mut self.mode, Screen::Normal) {
            Screen::Normal => self.on_normal_key(key),
            Screen::Filter => {
                let filter = match self.view {
                    View::Routes => &mut self.filter,
                    View::Connections => &mut self.conns.filter,
                };
                match key.code {
                    KeyCode::Enter => {}
                    KeyCode::Esc => filter.clear(),
                    _ => {
                        edit_text(filter, &key);
                        self.mode = Screen::Filter;
                    }
                }
                None
            }
            Screen::Form(form) => self.on_form_key(form, key),
            Screen::ConfirmDelete { listener, hostname } => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    Some(Action::RemoveRoute { listener, hostname })
                }
                _ => None,
            },
            Screen::Firewall(fw) => self.on_firewall_key(fw, key),
            Screen::ListenerDetail => {
                if key.code == KeyCode::Char('e') && !self.read_only && self.route().is_some() {
                    self.edit_selected();
                }
                None
            }
            Screen::RouteDetail => self.on_route_detail_key(key),
            Screen::ConfirmClose { id, .. } => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => Some(Action::CloseConnection { id }),
                _ => None,
            },
            Screen::ConfirmBackend(action) => {
                // Either way the detail stays open; only `y` sends.
                self.mode = Screen::RouteDetail;
                match key.code {
                    KeyCode::Char('y') | KeyCode::Char('Y') => Some(action),
                    _ => None,
                }
            }
            Screen::Help { scroll, detail } => {
                match key.code {
                    KeyCode::Down | KeyCode::Char('j') => {
                        self.mode = Screen::Help {
                            scroll: scroll + 1,
                            detail,
                        };
                    }
                    KeyCode::Up | KeyCode::Char('k') => {
                        self.mode = Screen::Help {
                            scroll: scroll.saturating_sub(1),
                            detail,
                        };
                    }
                    // Closing the detail's help goes back to the detail.
                    _ if detail && self.route().is_some() => self.mode = Screen::RouteDetail,
                    _ => {}
                }
                None
            }
        };
        self.follow_all();
        action
    }

    /// The route detail box: select a backend (by one, by a page, first or last), drain,
    /// enable or disable it, edit the route, show its keys; any other key closes the box, as
    /// the other detail boxes do. A drain or disable that would leave the route with no
    /// enabled backend asks first (`Screen::ConfirmBackend`).
    fn on_route_detail_key(&mut self, key: KeyEvent) -> Option<Action> {
        use mc_proxy_shared::AdminState;
        let (listener, route, admin) = match (self.listener(), self.route()) {
            (Some(l), Some(r)) => (l.addr.clone(), r.route.clone(), admin_states(r)),
            _ => return None,
        };
        let last = route.backends.len().saturating_sub(1);
        let step = |sel: usize, delta: isize| sel.saturating_add_signed(delta).min(last);
        let state = match input::lookup(Context::RouteDetail, &key, self.read_only) {
            Some(Command::Up) => {
                self.member_sel = step(self.member_sel, -1);
                None
            }
            Some(Command::Down) => {
                self.member_sel = step(self.member_sel, 1);
                None
            }
            Some(Command::PageUp) => {
                self.member_sel = step(self.member_sel, -PAGE);
                None
            }
            Some(Command::PageDown) => {
                self.member_sel = step(self.member_sel, PAGE);
                None
            }
            Some(Command::Top) => {
                self.member_sel = 0;
                None
            }
            Some(Command::Bottom) => {
                self.member_sel = last;
                None
            }
            Some(Command::Help) => {
                self.mode = Screen::Help {
                    scroll: 0,
                    detail: true,
                };
                return None;
            }
            Some(command @ (Command::WeightUp | Command::WeightDown)) => {
                // The detail stays open, whether anything is sent or not.
                self.mode = Screen::RouteDetail;
                self.member_sel = self.member_sel.min(last);
                let member = route.backends.get(self.member_sel)?;
                let weight = match command {
                    Command::WeightUp => member.weight.saturating_add(1),
                    _ => member.weight.saturating_sub(1),
                }
                .clamp(1, mc_proxy_shared::RouteBackend::MAX_WEIGHT);
                if weight == member.weight {
                    return None;
                }
                return Some(Action::SetBackendWeight {
                    listener,
                    hostname: route.hostname.clone(),
                    address: member.address.clone(),
                    weight,
                });
            }
            Some(Command::Drain) => Some(AdminState::Draining),
            Some(Command::Enable) => Some(AdminState::Enabled),
            Some(Command::Disable) => Some(AdminState::Disabled),
            Some(Command::Edit) => {
                self.edit_selected();
                return None;
            }
            _ => return None,
        };
        self.mode = Screen::RouteDetail;
        self.member_sel = self.member_sel.min(last);
        let member = route.backends.get(self.member_sel)?;
        let state = state?;
        let action = Action::SetBackendState {
            listener,
            hostname: route.hostname.clone(),
            address: member.address.clone(),
            state,
        };
        let others_enabled = admin
            .iter()
            .enumerate()
            .any(|(i, s)| i != self.member_sel && *s == AdminState::Enabled);
        if state != AdminState::Enabled && !others_enabled {
            self.mode = Screen::ConfirmBackend(action);
            return None;
        }
        Some(action)
    }

    fn edit_selected(&mut self) {
        if let (Some(l), Some(r)) = (self.listener(), self.route()) {
            self.mode = Screen::Form(Form::edit(l.addr.clone(), &r.route));
        }
    }

    fn on_normal_key(&mut self, key: KeyEvent) -> Option<Action> {
        let context = self.context();
        let command = input::lookup(context, &key, self.read_only)?;
        if self.view == View::Connections {
            return self.on_connections_command(command);
        }
        match command {
            Command::Quit => return Some(Action::Quit),
            Command::Help => {
                self.mode = Screen::Help {
                    scroll: 0,
                    detail: false,
                };
            }
            Command::Filter => {
                self.filter.clear();
                self.mode = Screen::Filter;
            }
            Command::Firewall => self.mode = Screen::Firewall(FirewallView::default()),
            Command::Connections => {
                self.view = View::Connections;
                return Some(Action::WatchConnections(true));
            }
            Command::Sort => self.sort = self.sort.next(),
            Command::EventFilter => self.log_filter = self.log_filter.next(),
            Command::SwitchPane => {
                self.pane = match self.pane {
                    Pane::Listeners => Pane::Routes,
                    Pane::Routes => Pane::Listeners,
                };
            }
            Command::Up => self.move_selection(-1),
            Command::Down => self.move_selection(1),
            Command::PageUp => self.move_selection(-PAGE),
            Command::PageDown => self.move_selection(PAGE),
            Command::Top => self.move_selection(isize::MIN / 2),
            Command::Bottom => self.move_selection(isize::MAX / 2),
            Command::Detail => match self.pane {
                Pane::Listeners if self.listener().is_some() => self.mode = Screen::ListenerDetail,
                Pane::Routes if self.route().is_some() => {
                    self.member_sel = 0;
                    self.mode = Screen::RouteDetail;
                }
                _ => {}
            },
            Command::Add => {
                if let Some(l) = self.listener() {
                    self.mode = Screen::Form(Form::new(l.addr.clone()));
                }
            }
            Command::Edit => self.edit_selected(),
            Command::Delete => {
                if let (Some(l), Some(r)) = (self.listener(), self.route()) {
                    self.mode = Screen::ConfirmDelete {
                        listener: l.addr.clone(),
                        hostname: r.route.hostname.clone(),
                    };
                }
            }
            Command::Close => {
                self.filter.clear();
                self.note = None;
            }
            Command::TextEditing
            | Command::Drain
            | Command::Enable
            | Command::Disable
            | Command::WeightUp
            | Command::WeightDown => {}
        }
        None
    }

    fn on_connections_command(&mut self, command: Command) -> Option<Action> {
        match command {
            Command::Quit => return Some(Action::Quit),
            Command::Help => {
                self.mode = Screen::Help {
                    scroll: 0,
                    detail: false,
                };
            }
            Command::Filter => {
                self.conns.filter.clear();
                self.mode = Screen::Filter;
            }
            Command::Sort => self.conns.sort = self.conns.sort.next(),
            Command::Close | Command::Connections => {
                self.view = View::Routes;
                return Some(Action::WatchConnections(false));
            }
            Command::Up => self.conns.step(-1),
            Command::Down => self.conns.step(1),
            Command::PageUp => self.conns.step(-PAGE),
            Command::PageDown => self.conns.step(PAGE),
            Command::Top => self.conns.step(isize::MIN / 2),
            Command::Bottom => self.conns.step(isize::MAX / 2),
            Command::Delete => {
                let visible = self.conns.visible();
                if let Some(c) = visible.get(self.conns.sel.index()) {
                    let what = format!(
                        "#{} {} -> {} ({}, open {}s)",
                        c.id,
                        c.client,
                        c.route,
                        c.mode,
                        c.age.as_secs()
                    );
                    self.mode = Screen::ConfirmClose { id: c.id, what };
                }
            }
            _ => {}
        }
        None
    }

    fn move_selection(&mut self, delta: isize) {
        match self.pane {
            Pane::Listeners => {
                let before = self.listener_sel.index();
                let addrs: Vec<&str> = self.listeners.iter().map(|l| l.addr.as_str()).collect();
                self.listener_sel.step(&addrs, delta);
                if before != self.listener_sel.index() {
                    self.route_sel = Selection::default();
                }
            }
            Pane::Routes => {
                let hosts: Vec<String> = self
                    .visible_routes()
                    .iter()
                    .map(|r| r.route.hostname.clone())
                    .collect();
                self.route_sel.step(&hosts, delta);
            }
        }
    }

    fn on_form_key(&mut self, mut form: Form, key: KeyEvent) -> Option<Action> {
        let mut action = None;
        match key.code {
            KeyCode::Esc => return None,
            KeyCode::Tab | KeyCode::Down => form.move_focus(true),
            KeyCode::BackTab | KeyCode::Up => form.move_focus(false),
            KeyCode::Enter if !form.pending => {
                // What was typed is checked here first, and said inline like the daemon's
                // refusals.
                let route = match form.route() {
                    Ok(route) => route,
                    Err(e) => {
                        form.error = Some(e);
                        self.mode = Screen::Form(form);
                        return None;
                    }
                };
                form.error = None;
                form.pending = true;
                // The selection goes to the route being saved, wherever it sorts.
                self.route_sel.expect(route.hostname.clone());
                action = Some(match &form.editing {
                    None => Action::AddRoute {
                        listener: form.listener.clone(),
                        route,
                    },
                    Some(before) => Action::UpdateRoute {
                        listener: form.listener.clone(),
                        before: before.clone(),
                        route,
                    },
                });
            }
            KeyCode::Char(' ') | KeyCode::Left | KeyCode::Right if form.text_mut().is_none() => {
                form.toggle(key.code != KeyCode::Left);
            }
            _ => {
                if let Some(text) = form.text_mut() {
                    edit_text(text, &key);
                }
            }
        }
        self.mode = Screen::Form(form);
        action
    }

    fn on_firewall_key(&mut self, mut fw: FirewallView, key: KeyEvent) -> Option<Action> {
        let mut action = None;
        if let Some(rule) = fw.confirm.take() {
            if matches!(key.code, KeyCode::Char('y') | KeyCode::Char('Y')) {
                action = Some(Action::RemoveRule(rule));
            }
            self.mode = Screen::Firewall(fw);
            return action;
        }
        if let Some(input) = &mut fw.input {
            match key.code {
                KeyCode::Esc => fw.input = None,
                KeyCode::Enter => {
                    let value = input.trim().to_owned();
                    let kind = if value.contains('/') {
                        FirewallRuleKind::Cidr
                    } else {
                        FirewallRuleKind::Ip
                    };
                    fw.input = None;
                    fw.error = None;
                    fw.select_next_added = true;
                    action = Some(Action::AddRule(FirewallRule { kind, value }));
                }
                _ => {
                    edit_text(input, &key);
                }
            }
            self.mode = Screen::Firewall(fw);
            return action;
        }
        let rules: Vec<String> = self.rules.iter().map(rule_key).collect();
        match input::lookup(Context::Firewall, &key, self.read_only) {
            Some(Command::Close) | Some(Command::Quit) => return None,
            Some(Command::Down) => fw.sel.step(&rules, 1),
            Some(Command::Up) => fw.sel.step(&rules, -1),
            Some(Command::Add) => fw.input = Some(String::new()),
            Some(Command::Delete) => {
                fw.sel.follow(&rules);
                fw.confirm = self.rules.get(fw.sel.index()).cloned();
            }
            _ => {}
        }
        self.mode = Screen::Firewall(fw);
        action
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use mc_proxy_shared::{BackendProtocol, Mode};

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn type_text(app: &mut App, text: &str) {
        for c in text.chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
    }

    fn listener(addr: &str) -> ListenerStatus {
        ListenerStatus {
            addr: addr.into(),
            ..ListenerStatus::default()
        }
    }

    fn entry(listener: &str, hostname: &str) -> RouteEntry {
        RouteEntry {
            not_served: None,
            listener: listener.into(),
            route: Route {
                hostname: hostname.into(),
                backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9")],
                ..Route::default()
            },
            stats: RouteStats::default(),
        }
    }

    fn app_with_routes() -> App {
        let mut app = App::new();
        app.on_daemon(DaemonMsg::Snapshot {
            status: Status {
                version: "0.1.0".into(),
                uptime: Duration::from_secs(5),
                listeners: vec![listener("127.0.0.1:8443"), listener("127.0.0.1:9443")],
                active_connections: 0,
                total_connections: 0,
                firewall_rules: 0,
                backends: vec![],
            },
            routes: vec![
                entry("127.0.0.1:8443", "api.test"),
                entry("127.0.0.1:8443", "app.test"),
                entry("127.0.0.1:8443", "web.test"),
                entry("127.0.0.1:9443", "other.test"),
            ],
            rules: vec![],
        });
        app
    }

    fn route_event(action: &str, hostname: &str, previous: &str) -> TimedEvent {
        TimedEvent {
            timestamp_ms: 0,
            event: Event::RouteChanged {
                listener: "127.0.0.1:8443".into(),
                action: action.parse().expect("a change action"),
                route: entry("", hostname).route,
                previous_hostname: previous.into(),
                origin: None,
            },
        }
    }

    #[test]
    fn selection_moves_and_stays_in_bounds() {
        let mut app = app_with_routes();
        assert_eq!(app.route().unwrap().route.hostname, "api.test");
        app.on_key(key(KeyCode::Char('j')));
        app.on_key(key(KeyCode::Down));
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.route().unwrap().route.hostname, "web.test");
        app.on_key(key(KeyCode::Up));
        assert_eq!(app.route().unwrap().route.hostname, "app.test");
        // Switching listener resets the route selection.
        app.on_key(key(KeyCode::Tab));
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.listener().unwrap().addr, "127.0.0.1:9443");
        assert_eq!(app.route().unwrap().route.hostname, "other.test");
    }

    #[test]
    fn route_selection_follows_the_route_through_inserts_renames_and_removals() {
        let mut app = app_with_routes();
        app.on_key(key(KeyCode::Down)); // app.test
        app.on_event(route_event("added", "aaa.test", ""), Instant::now());
        assert_eq!(app.route().unwrap().route.hostname, "app.test");
        app.on_event(
            route_event("updated", "zzz.test", "app.test"),
            Instant::now(),
        );
        assert_eq!(app.route().unwrap().route.hostname, "zzz.test");
        app.on_event(route_event("removed", "api.test", ""), Instant::now());
        assert_eq!(app.route().unwrap().route.hostname, "zzz.test");
        // The selected route itself goes: the row now at its place takes over.
        app.on_event(route_event("removed", "zzz.test", ""), Instant::now());
        assert!(app.route().is_some());
    }

    #[test]
    fn routes_sort_naturally_and_by_traffic() {
        let mut app = app_with_routes();
        for h in ["svc10.test", "svc2.test"] {
            app.on_event(route_event("added", h, ""), Instant::now());
        }
        let names = |app: &App| -> Vec<String> {
            app.visible_routes()
                .iter()
                .map(|r| r.route.hostname.clone())
                .collect()
        };
        assert_eq!(
            names(&app),
            [
                "api.test",
                "app.test",
                "svc2.test",
                "svc10.test",
                "web.test"
            ]
        );
        let t0 = Instant::now();
        let busy = |bytes_in| RouteStats {
            bytes_in,
            ..RouteStats::default()
        };
        for (i, bytes) in [0, 5000].into_iter().enumerate() {
            let mut routes = vec![entry("127.0.0.1:8443", "web.test")];
            routes[0].stats = busy(bytes);
            app.on_event(
                TimedEvent {
                    timestamp_ms: 0,
                    event: Event::Stats {
                        listeners: app.listeners.clone(),
                        routes,
                        backends: vec![],
                    },
                },
                t0 + Duration::from_secs(i as u64),
            );
        }
        app.on_key(key(KeyCode::Char('s')));
        assert_eq!(app.sort, RouteSort::Traffic);
        assert_eq!(names(&app)[0], "web.test");
        // The selection stayed on api.test while it moved.
        assert_eq!(app.route().unwrap().route.hostname, "api.test");
    }

    #[test]
    fn filter_narrows_routes_slash_starts_over_and_escape_clears() {
        let mut app = app_with_routes();
        app.on_key(key(KeyCode::Char('/')));
        type_text(&mut app, "ap");
        let names: Vec<_> = app
            .visible_routes()
            .iter()
            .map(|r| r.route.hostname.clone())
            .collect();
        assert_eq!(names, ["api.test", "app.test"]);
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.mode, Screen::Normal);
        assert_eq!(app.visible_routes().len(), 2);
        // `/` starts a new filter rather than appending to the old one.
        app.on_key(key(KeyCode::Char('/')));
        type_text(&mut app, "web");
        assert_eq!(app.visible_routes().len(), 1);
        app.on_key(key(KeyCode::Char('u')).with_ctrl());
        assert_eq!(app.filter, "");
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.visible_routes().len(), 3);
    }

    trait Ctrl {
        fn with_ctrl(self) -> Self;
    }
    impl Ctrl for KeyEvent {
        fn with_ctrl(mut self) -> Self {
            self.modifiers = KeyModifiers::CONTROL;
            self
        }
    }

    #[test]
    fn form_fields_follow_the_mode() {
        let mut app = app_with_routes();
        app.on_key(key(KeyCode::Char('a')));
        let Screen::Form(form) = &app.mode else {
            panic!("no form")
        };
        assert_eq!(
            form.fields(),
            [
                Field::Hostname,
                Field::Backend,
                Field::Mode,
                Field::SendProxy,
                Field::Balance,
                Field::Check
            ]
        );
        type_text(&mut app, "new.test");
        app.on_key(key(KeyCode::Tab));
        type_text(&mut app, "127.0.0.1:9000");
        app.on_key(key(KeyCode::Tab));
        app.on_key(key(KeyCode::Char(' ')));
        let Screen::Form(form) = &app.mode else {
            panic!("no form")
        };
        assert_eq!(form.mode, Mode::L7);
        assert!(form.fields().contains(&Field::TlsCert));
        assert!(form.fields().contains(&Field::BackendTls));
        app.on_key(key(KeyCode::Tab));
        type_text(&mut app, "/c.pem");
        app.on_key(key(KeyCode::Tab));
        type_text(&mut app, "/c.key");
        app.on_key(key(KeyCode::Tab));
        app.on_key(key(KeyCode::Char(' ')));
        let action = app.on_key(key(KeyCode::Enter));
        assert_eq!(
            action,
            Some(Action::AddRoute {
                listener: "127.0.0.1:8443".into(),
                route: Route {
                    hostname: "new.test".into(),
                    backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9000")],
                    mode: Mode::L7,
                    tls_cert: "/c.pem".into(),
                    tls_key: "/c.key".into(),
                    backend_tls: true,
                    send_proxy_protocol: false,
                    ..Default::default()
                }
            })
        );
        // Once the daemon reports it, the new route is the selected one.
        app.on_daemon(DaemonMsg::ActionDone(Ok("added route new.test".into())));
        app.on_event(route_event("added", "new.test", ""), Instant::now());
        assert_eq!(app.route().unwrap().route.hostname, "new.test");
    }

    #[test]
    fn the_form_cycles_the_backend_protocol_with_space_and_the_arrows() {
        let mut app = app_with_routes();
        app.on_key(key(KeyCode::Char('a')));
        type_text(&mut app, "new.test");
        app.on_key(key(KeyCode::Tab));
        type_text(&mut app, "127.0.0.1:9000");
        app.on_key(key(KeyCode::Tab));
        app.on_key(key(KeyCode::Char(' '))); // l7
        app.on_key(key(KeyCode::Tab));
        type_text(&mut app, "/c.pem");
        app.on_key(key(KeyCode::Tab));
        type_text(&mut app, "/c.key");
        app.on_key(key(KeyCode::Tab)); // backend_tls, left off
        app.on_key(key(KeyCode::Tab));
        let protocol = |app: &App| match &app.mode {
            Screen::Form(form) => {
                assert_eq!(form.focus, Field::BackendProtocol);
                form.backend_protocol
            }
            other => panic!("no form: {other:?}"),
        };
        assert_eq!(protocol(&app), BackendProtocol::H2);
        app.on_key(key(KeyCode::Char(' ')));
        assert_eq!(protocol(&app), BackendProtocol::Http1);
        app.on_key(key(KeyCode::Right));
        assert_eq!(protocol(&app), BackendProtocol::Auto);
        app.on_key(key(KeyCode::Left));
        assert_eq!(protocol(&app), BackendProtocol::Http1);
        let action = app.on_key(key(KeyCode::Enter));
        assert_eq!(
            action,
            Some(Action::AddRoute {
                listener: "127.0.0.1:8443".into(),
                route: Route {
                    hostname: "new.test".into(),
                    backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9000")],
                    mode: Mode::L7,
                    tls_cert: "/c.pem".into(),
                    tls_key: "/c.key".into(),
                    backend_tls: false,
                    send_proxy_protocol: false,
                    backend_protocol: BackendProtocol::Http1,
                    ..Route::default()
                }
            })
        );
    }

    #[test]
    fn a_set_that_does_not_parse_is_refused_inline_without_asking_the_daemon() {
        let mut app = app_with_routes();
        app.on_key(key(KeyCode::Char('e')));
        app.on_key(key(KeyCode::Tab));
        app.on_key(key(KeyCode::Char('u')).with_ctrl());
        type_text(&mut app, "a:1 weight=many");
        assert_eq!(app.on_key(key(KeyCode::Enter)), None);
        let Screen::Form(form) = &app.mode else {
            panic!("form closed")
        };
        assert!(!form.pending);
        assert_eq!(
            form.error.as_deref(),
            Some("invalid weight \"many\" for backend \"a:1\": expected a number from 1 to 256")
        );
    }

    #[test]
    fn the_route_detail_drains_enables_and_disables_the_selected_backend() {
        use mc_proxy_shared::AdminState;
        let mut app = app_with_routes();
        let (l, hostname) = {
            let l = app.listener().unwrap().addr.clone();
            let r = app.route().unwrap().route.hostname.clone();
            (l, r)
        };
        // Give the selected route two members.
        for view in app.routes.get_mut(&l).unwrap() {
            if view.route.hostname == hostname {
                view.route.backends = vec![
                    mc_proxy_shared::RouteBackend::new("10.0.0.1:80"),
                    mc_proxy_shared::RouteBackend::new("10.0.0.1:81"),
                ];
            }
        }
        app.pane = Pane::Routes;
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.mode, Screen::RouteDetail);
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.mode, Screen::RouteDetail, "moving keeps the box open");
        let expect = |address: &str, state| Action::SetBackendState {
            listener: l.clone(),
            hostname: hostname.clone(),
            address: address.into(),
            state,
        };
        assert_eq!(
            app.on_key(key(KeyCode::Char('w'))),
            Some(expect("10.0.0.1:81", AdminState::Draining))
        );
        app.on_key(key(KeyCode::Up));
        assert_eq!(
            app.on_key(key(KeyCode::Char('x'))),
            Some(expect("10.0.0.1:80", AdminState::Disabled))
        );
        assert_eq!(
            app.on_key(key(KeyCode::Char('n'))),
            Some(expect("10.0.0.1:80", AdminState::Enabled))
        );
        // Read-only: the keys do nothing.
        app.read_only = true;
        assert_eq!(app.on_key(key(KeyCode::Char('w'))), None);
    }

    #[test]
    fn daemon_errors_show_inline_and_keep_the_form_open() {
        let mut app = app_with_routes();
        app.on_key(key(KeyCode::Char('e')));
        app.on_key(key(KeyCode::Tab));
        app.on_key(key(KeyCode::Char('u')).with_ctrl());
        type_text(&mut app, "nope");
        let action = app.on_key(key(KeyCode::Enter));
        assert!(
            matches!(action, Some(Action::UpdateRoute { ref before, ref route, .. }) if before.hostname == "api.test" && route.backend_list() == "nope")
        );
        app.on_daemon(DaemonMsg::ActionDone(
            Err("invalid backend \"nope\"".into()),
        ));
        let Screen::Form(form) = &app.mode else {
            panic!("form closed on error")
        };
        assert_eq!(form.error.as_deref(), Some("invalid backend \"nope\""));
        assert!(!form.pending);
        app.on_daemon(DaemonMsg::ActionDone(Ok("updated".into())));
        assert_eq!(app.mode, Screen::Normal);
    }

    #[test]
    fn delete_needs_confirmation() {
        let mut app = app_with_routes();
        app.on_key(key(KeyCode::Char('d')));
        assert_eq!(app.on_key(key(KeyCode::Char('n'))), None);
        assert_eq!(app.mode, Screen::Normal);
        app.on_key(key(KeyCode::Char('d')));
        assert_eq!(
            app.on_key(key(KeyCode::Char('y'))),
            Some(Action::RemoveRoute {
                listener: "127.0.0.1:8443".into(),
                hostname: "api.test".into()
            })
        );
    }

    #[test]
    fn read_only_refuses_every_change() {
        let mut app = App::read_only();
        let snapshot = app_with_routes();
        app.listeners = snapshot.listeners.clone();
        app.routes = snapshot.routes.clone();
        app.follow_all();
        for c in ['a', 'e', 'd'] {
            assert_eq!(app.on_key(key(KeyCode::Char(c))), None);
            assert_eq!(app.mode, Screen::Normal, "{c}");
        }
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.mode, Screen::RouteDetail);
        app.on_key(key(KeyCode::Char('e')));
        assert_eq!(app.mode, Screen::Normal);
        app.on_key(key(KeyCode::Char('f')));
        assert_eq!(app.on_key(key(KeyCode::Char('a'))), None);
        let Screen::Firewall(fw) = &app.mode else {
            panic!("firewall closed")
        };
        assert_eq!(fw.input, None);
    }

    #[test]
    fn rates_come_from_successive_snapshots() {
        let mut view = RouteView::new(Route::default());
        let t0 = Instant::now();
        let stats = |bytes_in, bytes_out, requests| RouteStats {
            bytes_in,
            bytes_out,
            requests,
            ..RouteStats::default()
        };
        view.sample(stats(1000, 0, 0), t0);
        assert_eq!(view.rate, Rate::default());
        view.sample(stats(3000, 4000, 10), t0 + Duration::from_secs(2));
        assert_eq!(
            view.rate,
            Rate {
                in_bps: 1000.0,
                out_bps: 2000.0,
                rps: 5.0
            }
        );
        assert_eq!(view.history.len(), 1);
        for i in 0..(HISTORY as u64 + 10) {
            view.sample(stats(3000, 4000, 10), t0 + Duration::from_secs(3 + i));
        }
        assert_eq!(view.history.len(), HISTORY);
        assert_eq!(view.rate.in_bps, 0.0);
    }

    #[test]
    fn events_update_routes_and_the_bounded_log() {
        let mut app = app_with_routes();
        let ev = |event| TimedEvent {
            timestamp_ms: 0,
            event,
        };
        app.on_event(route_event("removed", "api.test", ""), Instant::now());
        assert_eq!(app.visible_routes().len(), 2);
        for i in 0..(LOG_CAPACITY + 50) {
            app.on_event(ev(Event::Lagged { dropped: i as u64 }), Instant::now());
        }
        assert_eq!(app.log.len(), LOG_CAPACITY);
        assert!(
            app.log_shown()
                .next_back()
                .unwrap()
                .contains(&format!("{}", LOG_CAPACITY + 49))
        );
    }

    fn rule(kind: FirewallRuleKind, value: &str) -> FirewallRule {
        FirewallRule {
            kind,
            value: value.into(),
        }
    }

    fn firewall_event(action: &str, r: FirewallRule) -> TimedEvent {
        TimedEvent {
            timestamp_ms: 0,
            event: Event::FirewallChanged {
                action: action.parse().expect("a change action"),
                rule: r,
                origin: None,
            },
        }
    }

    #[test]
    fn firewall_delete_asks_first_and_targets_the_rule_just_added() {
        let mut app = app_with_routes();
        let seeded = rule(FirewallRuleKind::Ip, "192.0.2.1");
        app.rules = vec![seeded.clone()];
        app.on_key(key(KeyCode::Char('f')));
        app.on_key(key(KeyCode::Char('a')));
        type_text(&mut app, "10.1.2.3/8");
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Some(Action::AddRule(rule(FirewallRuleKind::Cidr, "10.1.2.3/8")))
        );
        // The daemon stores it normalised and reports it.
        let added = rule(FirewallRuleKind::Cidr, "10.0.0.0/8");
        app.on_daemon(DaemonMsg::ActionDone(Ok("blocked cidr 10.0.0.0/8".into())));
        app.on_event(firewall_event("added", added.clone()), Instant::now());
        // d asks; anything but y keeps the rule.
        assert_eq!(app.on_key(key(KeyCode::Char('d'))), None);
        assert_eq!(app.on_key(key(KeyCode::Char('n'))), None);
        assert_eq!(app.on_key(key(KeyCode::Char('d'))), None);
        assert_eq!(
            app.on_key(key(KeyCode::Char('y'))),
            Some(Action::RemoveRule(added.clone()))
        );
        // A rule inserted before the selection does not move it.
        app.on_event(firewall_event("removed", seeded.clone()), Instant::now());
        let Screen::Firewall(fw) = &app.mode else {
            panic!("firewall closed")
        };
        assert_eq!(fw.sel.key(), Some(rule_key(&added).as_str()));
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.mode, Screen::Normal);
    }

    #[test]
    fn notices_expire_and_a_reconnect_clears_stale_errors() {
        let mut app = app_with_routes();
        app.on_daemon(DaemonMsg::Disconnected("refused".into()));
        app.on_daemon(DaemonMsg::ActionDone(Err(
            "not connected to the daemon".into()
        )));
        assert!(app.note.as_ref().is_some_and(|n| n.error));
        let snapshot = app_with_routes();
        app.on_daemon(DaemonMsg::Snapshot {
            status: Status {
                version: "0.1.0".into(),
                uptime: Duration::ZERO,
                listeners: snapshot.listeners.clone(),
                active_connections: 0,
                total_connections: 0,
                firewall_rules: 0,
                backends: vec![],
            },
            routes: vec![],
            rules: vec![],
        });
        assert_eq!(app.link, Link::Connected);
        assert_eq!(app.note, None);
        app.on_daemon(DaemonMsg::ActionDone(Ok("added route x".into())));
        let at = app.note.as_ref().unwrap().at;
        app.on_tick(at + NOTE_TTL / 2);
        assert!(app.note.is_some());
        app.on_tick(at + NOTE_TTL);
        assert_eq!(app.note, None);
        assert!(app.log_shown().any(|l| l == "added route x"));
    }
}
