//! The console's state and what keys and daemon messages do to it.
//!
//! No I/O and no drawing: `App` is updated by [`App::on_key`] (which may return an [`Action`]
//! for the runner to carry out against the daemon) and by [`App::on_daemon`] (snapshots, live
//! events, results of actions, connection state). The views in `ui` only read it.
//!
//! Invariants: the event log and every rate history are bounded; selections always point at
//! an existing row (or nothing when the list is empty).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mc_proxy_shared::client::{Event, ListenerStatus, RouteEntry, RouteStats, Status, TimedEvent};
use mc_proxy_shared::{FirewallRule, FirewallRuleKind, Mode, Route};

/// Lines kept in the event log.
pub const LOG_CAPACITY: usize = 500;
/// Rate samples kept per route (one per stats snapshot, about a second each).
pub const HISTORY: usize = 180;

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
    /// The daemon went away; the link retries.
    Disconnected(String),
    /// How an [`Action`] went: `Ok` with a note, or the daemon's error.
    ActionDone(Result<String, String>),
}

/// Something the user asked the daemon to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add a route to a listener.
    AddRoute {
        /// Listener address.
        listener: String,
        /// The new route.
        route: Route,
    },
    /// Replace a route (all fields; the hostname may change).
    UpdateRoute {
        /// Listener address.
        listener: String,
        /// The route's current hostname.
        hostname: String,
        /// Every field after the edit.
        route: Route,
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
    /// Latest rate.
    pub rate: Rate,
    /// Recent rates, oldest first.
    pub history: VecDeque<Rate>,
    /// When `stats` was taken (for the next rate).
    last_sample: Option<Instant>,
}

/// The add/edit route form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    /// `None` for add; the edited route's hostname for edit.
    pub editing: Option<String>,
    /// The listener the route belongs to.
    pub listener: String,
    /// Field values.
    pub hostname: String,
    /// Backend host:port.
    pub backend: String,
    /// L4 or L7.
    pub mode: Mode,
    /// L7 certificate path.
    pub tls_cert: String,
    /// L7 key path.
    pub tls_key: String,
    /// L7: TLS to the backend.
    pub backend_tls: bool,
    /// PROXY v2 to the backend.
    pub send_proxy_protocol: bool,
    /// The focused field.
    pub focus: Field,
    /// The daemon's answer to the last submit, shown inline.
    pub error: Option<String>,
    /// Waiting for the daemon's answer.
    pub pending: bool,
}

/// A form field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Text.
    Hostname,
    /// Text.
    Backend,
    /// Toggle l4/l7.
    Mode,
    /// Text, L7 only.
    TlsCert,
    /// Text, L7 only.
    TlsKey,
    /// Toggle, L7 only.
    BackendTls,
    /// Toggle.
    SendProxy,
}

impl Form {
    fn new(listener: String) -> Form {
        Form {
            editing: None,
            listener,
            hostname: String::new(),
            backend: String::new(),
            mode: Mode::L4,
            tls_cert: String::new(),
            tls_key: String::new(),
            backend_tls: false,
            send_proxy_protocol: false,
            focus: Field::Hostname,
            error: None,
            pending: false,
        }
    }

    fn edit(listener: String, r: &Route) -> Form {
        Form {
            editing: Some(r.hostname.clone()),
            hostname: r.hostname.clone(),
            backend: r.backend.clone(),
            mode: r.mode,
            tls_cert: r.tls_cert.clone(),
            tls_key: r.tls_key.clone(),
            backend_tls: r.backend_tls,
            send_proxy_protocol: r.send_proxy_protocol,
            ..Form::new(listener)
        }
    }

    /// The fields shown for the current mode, in order: L7 adds cert, key and backend TLS.
    pub fn fields(&self) -> Vec<Field> {
        match self.mode {
            Mode::L4 => vec![
                Field::Hostname,
                Field::Backend,
                Field::Mode,
                Field::SendProxy,
            ],
            Mode::L7 => vec![
                Field::Hostname,
                Field::Backend,
                Field::Mode,
                Field::TlsCert,
                Field::TlsKey,
                Field::BackendTls,
                Field::SendProxy,
            ],
        }
    }

    fn move_focus(&mut self, forward: bool) {
        let fields = self.fields();
        let i = fields.iter().position(|f| *f == self.focus).unwrap_or(0);
        let n = fields.len();
        self.focus = fields[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }];
    }

    fn text_mut(&mut self) -> Option<&mut String> {
        match self.focus {
            Field::Hostname => Some(&mut self.hostname),
            Field::Backend => Some(&mut self.backend),
            Field::TlsCert => Some(&mut self.tls_cert),
            Field::TlsKey => Some(&mut self.tls_key),
            _ => None,
        }
    }

    fn toggle(&mut self) {
        match self.focus {
            Field::Mode => {
                self.mode = match self.mode {
                    Mode::L4 => Mode::L7,
                    Mode::L7 => Mode::L4,
                }
            }
            Field::BackendTls => self.backend_tls = !self.backend_tls,
            Field::SendProxy => self.send_proxy_protocol = !self.send_proxy_protocol,
            _ => {}
        }
    }

    /// The route the form describes. L7-only fields are sent empty on an L4 route so a mode
    /// switch does not leave stale paths behind.
    pub fn route(&self) -> Route {
        let l7 = self.mode == Mode::L7;
        Route {
            hostname: self.hostname.trim().to_owned(),
            backend: self.backend.trim().to_owned(),
            mode: self.mode,
            tls_cert: if l7 {
                self.tls_cert.trim().to_owned()
            } else {
                String::new()
            },
            tls_key: if l7 {
                self.tls_key.trim().to_owned()
            } else {
                String::new()
            },
            backend_tls: l7 && self.backend_tls,
            send_proxy_protocol: self.send_proxy_protocol,
        }
    }
}

/// The firewall pane's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallView {
    /// Selected rule.
    pub selected: usize,
    /// Text being typed for a new rule (`Some` while adding).
    pub input: Option<String>,
    /// The daemon's answer to the last change.
    pub error: Option<String>,
}

/// What has the keyboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screen {
    /// Moving around the panes.
    Normal,
    /// Typing the route filter.
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
    /// The key list.
    Help,
}

/// Which pane has the selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    /// The listener list.
    Listeners,
    /// The selected listener's routes.
    Routes,
}

/// The whole console state.
#[derive(Debug)]
pub struct App {
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
    pub log: VecDeque<String>,
    /// Link state.
    pub link: Link,
    /// Selected listener.
    pub listener_idx: usize,
    /// Selected route among the filtered routes.
    pub route_idx: usize,
    /// Pane with focus.
    pub pane: Pane,
    /// Route hostname filter.
    pub filter: String,
    /// What has the keyboard.
    pub mode: Screen,
    /// A one-line note for the status bar (last action's result).
    pub note: Option<String>,
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

impl App {
    /// An empty console, waiting for its first snapshot.
    pub fn new() -> App {
        App {
            version: String::new(),
            uptime: Duration::ZERO,
            status_at: Instant::now(),
            listeners: Vec::new(),
            routes: HashMap::new(),
            rules: Vec::new(),
            log: VecDeque::new(),
            link: Link::Connecting,
            listener_idx: 0,
            route_idx: 0,
            pane: Pane::Routes,
            filter: String::new(),
            mode: Screen::Normal,
            note: None,
        }
    }

    /// The selected listener, if any.
    pub fn listener(&self) -> Option<&ListenerStatus> {
        self.listeners.get(self.listener_idx)
    }

    /// The selected listener's routes that pass the filter.
    pub fn visible_routes(&self) -> Vec<&RouteView> {
        let Some(l) = self.listener() else {
            return Vec::new();
        };
        let filter = self.filter.to_ascii_lowercase();
        self.routes
            .get(&l.addr)
            .map(|rs| {
                rs.iter()
                    .filter(|r| r.route.hostname.contains(&filter))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The selected route, if any.
    pub fn route(&self) -> Option<&RouteView> {
        self.visible_routes().get(self.route_idx).copied()
    }

    /// Uptime now, extrapolated from the last status while connected; frozen at the last
    /// known value while the daemon is away (it may be restarting).
    pub fn uptime_now(&self) -> Duration {
        match self.link {
            Link::Connected => self.uptime + self.status_at.elapsed(),
            _ => self.uptime,
        }
    }

    fn push_log(&mut self, line: String) {
        if self.log.len() == LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    fn clamp(&mut self) {
        self.listener_idx = self
            .listener_idx
            .min(self.listeners.len().saturating_sub(1));
        let n = self.visible_routes().len();
        self.route_idx = self.route_idx.min(n.saturating_sub(1));
        if let Screen::Firewall(fw) = &mut self.mode {
            fw.selected = fw.selected.min(self.rules.len().saturating_sub(1));
        }
    }

    /// Applies a message from the daemon link.
    pub fn on_daemon(&mut self, msg: DaemonMsg) {
        match msg {
            DaemonMsg::Snapshot {
                status,
                routes,
                rules,
            } => {
                self.version = status.version;
                self.uptime = status.uptime;
                self.status_at = Instant::now();
                self.listeners = status.listeners;
                let mut by_listener: HashMap<String, Vec<RouteView>> = HashMap::new();
                for entry in routes {
                    let old = self
                        .find_route(&entry.listener, &entry.route.hostname)
                        .cloned();
                    let mut view = old.unwrap_or_else(|| RouteView::new(entry.route.clone()));
                    view.route = entry.route;
                    view.stats = entry.stats;
                    view.last_sample = Some(Instant::now());
                    by_listener.entry(entry.listener).or_default().push(view);
                }
                self.routes = by_listener;
                self.rules = rules;
                if self.link != Link::Connected {
                    self.push_log("connected to the daemon".into());
                }
                self.link = Link::Connected;
            }
            DaemonMsg::Event(event) => self.on_event(event, Instant::now()),
            DaemonMsg::Disconnected(reason) => {
                if self.link == Link::Connected {
                    self.push_log(format!("lost the daemon: {reason}"));
                    self.uptime = self.uptime_now();
                }
                self.link = Link::Reconnecting(reason);
            }
            DaemonMsg::ActionDone(result) => self.on_action_done(result),
        }
        self.clamp();
    }

    fn find_route(&self, listener: &str, hostname: &str) -> Option<&RouteView> {
        self.routes
            .get(listener)?
            .iter()
            .find(|r| r.route.hostname == hostname)
    }

    /// Applies a live event received at `now`.
    pub fn on_event(&mut self, event: TimedEvent, now: Instant) {
        let time = clock(event.timestamp_ms);
        match event.event {
            Event::Stats { listeners, routes } => {
                self.listeners = listeners;
                for entry in routes {
                    let list = self.routes.entry(entry.listener).or_default();
                    match list
                        .iter_mut()
                        .find(|r| r.route.hostname == entry.route.hostname)
                    {
                        Some(view) => view.sample(entry.stats, now),
                        None => {
                            let mut view = RouteView::new(entry.route);
                            view.stats = entry.stats;
                            view.last_sample = Some(now);
                            list.push(view);
                        }
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
            } => self.push_log(format!(
                "{time} open  #{id} {client} {hostname} {mode}->{backend}"
            )),
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
                self.push_log(format!(
                    "{time} close #{id} {client} {host} in {} out {} {duration_ms}ms {outcome}",
                    crate::ctl::human_bytes(bytes_in),
                    crate::ctl::human_bytes(bytes_out)
                ));
            }
            Event::ConnectionBlocked { client, reason, .. } => {
                self.push_log(format!("{time} block {client} ({reason})"));
            }
            Event::RouteChanged {
                listener,
                action,
                route,
                previous_hostname,
            } => {
                self.push_log(format!(
                    "{time} route {action} {} ({} -> {})",
                    route.hostname, route.mode, route.backend
                ));
                let list = self.routes.entry(listener).or_default();
                match action.as_str() {
                    // An add seen in the snapshot already (the stream starts before it).
                    "added" => match list.iter_mut().find(|r| r.route.hostname == route.hostname) {
                        Some(view) => view.route = route,
                        None => list.push(RouteView::new(route)),
                    },
                    "updated" => {
                        if let Some(view) = list
                            .iter_mut()
                            .find(|r| r.route.hostname == previous_hostname)
                        {
                            view.route = route;
                        }
                    }
                    "removed" => list.retain(|r| r.route.hostname != route.hostname),
                    _ => {}
                }
                list.sort_by(|a, b| route_order(&a.route.hostname, &b.route.hostname));
            }
            Event::FirewallChanged { action, rule } => {
                self.push_log(format!(
                    "{time} firewall {action} {} {}",
                    rule.kind, rule.value
                ));
                match action.as_str() {
                    "added" if !self.rules.contains(&rule) => self.rules.push(rule),
                    "removed" => self.rules.retain(|r| *r != rule),
                    _ => {}
                }
            }
            Event::Lagged { dropped } => {
                self.push_log(format!(
                    "{time} missed {dropped} event(s): console too slow"
                ));
            }
        }
        self.clamp();
    }

    fn on_action_done(&mut self, result: Result<String, String>) {
        match (&mut self.mode, result) {
            (Screen::Form(form), Err(e)) => {
                form.pending = false;
                form.error = Some(e);
            }
            (Screen::Firewall(fw), Err(e)) => fw.error = Some(e),
            (Screen::Firewall(fw), Ok(note)) => {
                fw.error = None;
                self.note = Some(note);
            }
            (_, Ok(note)) => {
                self.mode = Screen::Normal;
                self.note = Some(note);
            }
            (_, Err(e)) => self.note = Some(format!("error: {e}")),
        }
    }

    /// Handles a key; returns what to ask the daemon, if anything.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return Some(Action::Quit);
        }
        match std::mem::replace(&mut self.mode, Screen::Normal) {
            Screen::Normal => self.on_normal_key(key),
            Screen::Filter => {
                match key.code {
                    KeyCode::Enter => {}
                    KeyCode::Esc => self.filter.clear(),
                    KeyCode::Backspace => {
                        self.filter.pop();
                        self.mode = Screen::Filter;
                    }
                    KeyCode::Char(c) => {
                        self.filter.push(c);
                        self.mode = Screen::Filter;
                    }
                    _ => self.mode = Screen::Filter,
                }
                self.route_idx = 0;
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
            Screen::Help => None,
        }
    }

    fn on_normal_key(&mut self, key: KeyEvent) -> Option<Action> {
        match key.code {
            KeyCode::Char('q') => return Some(Action::Quit),
            KeyCode::Char('?') => self.mode = Screen::Help,
            KeyCode::Char('/') => self.mode = Screen::Filter,
            KeyCode::Char('f') => self.mode = Screen::Firewall(FirewallView::default()),
            KeyCode::Tab
            | KeyCode::Left
            | KeyCode::Right
            | KeyCode::Char('h')
            | KeyCode::Char('l') => {
                self.pane = match self.pane {
                    Pane::Listeners => Pane::Routes,
                    Pane::Routes => Pane::Listeners,
                };
            }
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Char('a') => {
                if let Some(l) = self.listener() {
                    self.mode = Screen::Form(Form::new(l.addr.clone()));
                }
            }
            KeyCode::Char('e') | KeyCode::Enter => {
                if let (Some(l), Some(r)) = (self.listener(), self.route()) {
                    self.mode = Screen::Form(Form::edit(l.addr.clone(), &r.route));
                }
            }
            KeyCode::Char('d') | KeyCode::Delete => {
                if let (Some(l), Some(r)) = (self.listener(), self.route()) {
                    self.mode = Screen::ConfirmDelete {
                        listener: l.addr.clone(),
                        hostname: r.route.hostname.clone(),
                    };
                }
            }
            KeyCode::Esc => self.note = None,
            _ => {}
        }
        None
    }

    fn move_selection(&mut self, delta: isize) {
        let step = |i: usize, n: usize| {
            if n == 0 {
                0
            } else {
                (i as isize + delta).clamp(0, n as isize - 1) as usize
            }
        };
        match self.pane {
            Pane::Listeners => {
                let before = self.listener_idx;
                self.listener_idx = step(self.listener_idx, self.listeners.len());
                if before != self.listener_idx {
                    self.route_idx = 0;
                }
            }
            Pane::Routes => self.route_idx = step(self.route_idx, self.visible_routes().len()),
        }
    }

    fn on_form_key(&mut self, mut form: Form, key: KeyEvent) -> Option<Action> {
        let mut action = None;
        match key.code {
            KeyCode::Esc => return None,
            KeyCode::Tab | KeyCode::Down => form.move_focus(true),
            KeyCode::BackTab | KeyCode::Up => form.move_focus(false),
            KeyCode::Enter if !form.pending => {
                form.error = None;
                form.pending = true;
                let route = form.route();
                action = Some(match &form.editing {
                    None => Action::AddRoute {
                        listener: form.listener.clone(),
                        route,
                    },
                    Some(hostname) => Action::UpdateRoute {
                        listener: form.listener.clone(),
                        hostname: hostname.clone(),
                        route,
                    },
                });
            }
            KeyCode::Char(' ') | KeyCode::Left | KeyCode::Right if form.text_mut().is_none() => {
                form.toggle();
            }
            KeyCode::Backspace => {
                if let Some(text) = form.text_mut() {
                    text.pop();
                }
            }
            KeyCode::Char(c) => {
                if let Some(text) = form.text_mut() {
                    text.push(c);
                }
            }
            _ => {}
        }
        self.mode = Screen::Form(form);
        action
    }

    fn on_firewall_key(&mut self, mut fw: FirewallView, key: KeyEvent) -> Option<Action> {
        let mut action = None;
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
                    action = Some(Action::AddRule(FirewallRule { kind, value }));
                }
                KeyCode::Backspace => {
                    input.pop();
                }
                KeyCode::Char(c) => input.push(c),
                _ => {}
            }
            self.mode = Screen::Firewall(fw);
            return action;
        }
        match key.code {
            KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('f') => return None,
            KeyCode::Down | KeyCode::Char('j') => {
                fw.selected = (fw.selected + 1).min(self.rules.len().saturating_sub(1));
            }
            KeyCode::Up | KeyCode::Char('k') => fw.selected = fw.selected.saturating_sub(1),
            KeyCode::Char('a') => fw.input = Some(String::new()),
            KeyCode::Char('d') | KeyCode::Delete => {
                action = self.rules.get(fw.selected).cloned().map(Action::RemoveRule);
            }
            _ => {}
        }
        self.mode = Screen::Firewall(fw);
        action
    }
}

impl RouteView {
    fn new(route: Route) -> RouteView {
        RouteView {
            route,
            stats: RouteStats::default(),
            rate: Rate::default(),
            history: VecDeque::new(),
            last_sample: None,
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
                self.history.push_back(self.rate);
            }
        }
        self.stats = stats;
        self.last_sample = Some(now);
    }
}

/// Exact names first, then wildcards, each by name: the daemon's order.
fn route_order(a: &str, b: &str) -> std::cmp::Ordering {
    (a.starts_with('*'), a).cmp(&(b.starts_with('*'), b))
}

/// `HH:MM:SS` (UTC) of a Unix time in ms.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600 % 24, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            listener: listener.into(),
            route: Route {
                hostname: hostname.into(),
                backend: "127.0.0.1:9".into(),
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
    fn filter_narrows_routes_and_escape_clears_it() {
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
        app.on_key(key(KeyCode::Char('/')));
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.visible_routes().len(), 3);
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
                Field::SendProxy
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
                    backend: "127.0.0.1:9000".into(),
                    mode: Mode::L7,
                    tls_cert: "/c.pem".into(),
                    tls_key: "/c.key".into(),
                    backend_tls: true,
                    send_proxy_protocol: false,
                }
            })
        );
    }

    #[test]
    fn daemon_errors_show_inline_and_keep_the_form_open() {
        let mut app = app_with_routes();
        app.on_key(key(KeyCode::Char('e')));
        app.on_key(key(KeyCode::Tab));
        for _ in 0.."127.0.0.1:9".len() {
            app.on_key(key(KeyCode::Backspace));
        }
        type_text(&mut app, "nope");
        let action = app.on_key(key(KeyCode::Enter));
        assert!(
            matches!(action, Some(Action::UpdateRoute { ref hostname, .. }) if hostname == "api.test")
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
        app.on_event(
            ev(Event::RouteChanged {
                listener: "127.0.0.1:8443".into(),
                action: "removed".into(),
                route: entry("", "api.test").route,
                previous_hostname: String::new(),
            }),
            Instant::now(),
        );
        assert_eq!(app.visible_routes().len(), 2);
        for i in 0..(LOG_CAPACITY + 50) {
            app.on_event(ev(Event::Lagged { dropped: i as u64 }), Instant::now());
        }
        assert_eq!(app.log.len(), LOG_CAPACITY);
        assert!(
            app.log
                .back()
                .unwrap()
                .contains(&format!("{}", LOG_CAPACITY + 49))
        );
    }

    #[test]
    fn firewall_pane_adds_and_removes_rules() {
        let mut app = app_with_routes();
        app.rules = vec![FirewallRule {
            kind: FirewallRuleKind::Ip,
            value: "192.0.2.1".into(),
        }];
        app.on_key(key(KeyCode::Char('f')));
        app.on_key(key(KeyCode::Char('a')));
        type_text(&mut app, "10.0.0.0/8");
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Some(Action::AddRule(FirewallRule {
                kind: FirewallRuleKind::Cidr,
                value: "10.0.0.0/8".into()
            }))
        );
        assert_eq!(
            app.on_key(key(KeyCode::Char('d'))),
            Some(Action::RemoveRule(app.rules[0].clone()))
        );
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.mode, Screen::Normal);
    }
}
