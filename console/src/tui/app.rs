//! The console's top: the daemon's data, the two views and the popup on top, and the routing
//! of keys and daemon messages between them.
//!
//! No I/O and no drawing of its own. `App` keeps what the daemon sends ([`Data`], changed only
//! here, by [`App::on_daemon`], [`App::on_event`] and [`App::on_tick`]) and which component has
//! the keyboard: the popup on top if there is one, else the main view. [`App::on_key`] hands
//! the key to that component and carries out its [`Outcome`]: it may return an [`Action`] for
//! the runner to carry out against the daemon. The components (`routes_view`, `conns`,
//! `route_detail`, `listener_detail`, `firewall`, `form`, `confirm`, `help`) own their state,
//! keys and drawing; `ui` lays out the frame.
//!
//! Invariants: the event log and every history are bounded; every selection is kept by key and
//! re-found after each change (`follow_all`), so it points at an existing row, the same item
//! as before when that item still exists, or nothing when the list is empty.

use std::time::Instant;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mc_proxy_shared::client::{ConnectionList, ListenerStatus, RouteEntry, Status, TimedEvent};
use mc_proxy_shared::{FirewallRule, Route};

use super::component::{Component, Ctx, Outcome, Popup};
pub use super::conns::ConnView;
use super::data::Applied;
pub use super::data::{
    Data, HISTORY, LOG_CAPACITY, Link, LogFilter, LogKind, LogLine, NOTE_TTL, Note, Rate,
    RouteView, admin_states, rule_key,
};
pub use super::firewall::FirewallView;
pub use super::fleet::{Fleet, FleetView};
pub use super::form::{Field, Form};
use super::input::Context;
pub use super::route_detail::RouteDetail;
pub use super::routes_view::{Pane, RouteSort, RoutesView};
pub use super::talkers::TalkersView;

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
    /// A round of the fleet poll (every context, the registry).
    Fleet(super::fleet::Poll),
    /// The talkers, polled while the talkers view is shown.
    Talkers(Vec<mc_proxy_shared::client::Talker>),
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
        /// The route as the form was opened on it (its hostname names it to the daemon);
        /// boxed, so that every action is not two routes large.
        before: Box<Route>,
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
    /// The view now on show: the link polls what it needs (the connections view its
    /// connections, the talkers view its talkers; no daemon change, no answer).
    Watch(View),
    /// Show another node: the link leaves this daemon and connects to `socket`; everything
    /// shown starts over from that daemon's snapshot.
    SwitchNode {
        /// The context that reaches it (the status line shows it).
        context: String,
        /// Its admin socket.
        socket: std::path::PathBuf,
    },
    /// Leave the console.
    Quit,
}

/// The main view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Listeners, routes, traffic, events.
    Routes,
    /// Open connections.
    Connections,
    /// Every node of the fleet.
    Fleet,
    /// The client addresses that hit limits most.
    Talkers,
}

/// What has the keyboard, by name (the component itself is [`App::popup`] or the view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Moving around the view.
    Normal,
    /// Typing the filter of the current view.
    Filter,
    /// The add/edit form.
    Form,
    /// "Delete this route?"
    ConfirmDelete,
    /// The firewall rules.
    Firewall,
    /// Everything about the selected listener.
    ListenerDetail,
    /// Everything about the selected route.
    RouteDetail,
    /// "Drain/disable this backend?" over the route detail.
    ConfirmBackend,
    /// "Close this connection?" (connections view).
    ConfirmClose,
    /// The key list.
    Help,
}

/// The whole console state.
#[derive(Debug)]
pub struct App {
    /// What the daemon said.
    data: Data,
    /// The routes view.
    routes: RoutesView,
    /// The connections view.
    conns: ConnView,
    /// The main view on show.
    view: View,
    /// The box on top, with the keyboard.
    popup: Option<Popup>,
    /// What the fleet poll said.
    fleet: Fleet,
    /// The fleet view.
    fleet_view: FleetView,
    /// The talkers view.
    talkers: TalkersView,
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
            data: Data::new(false),
            routes: RoutesView::default(),
            conns: ConnView::default(),
            view: View::Routes,
            popup: None,
            fleet: Fleet::default(),
            fleet_view: FleetView::default(),
            talkers: TalkersView::default(),
        }
    }

    /// The same, with editing keys hidden and refused.
    pub fn read_only() -> App {
        App {
            data: Data::new(true),
            ..App::new()
        }
    }

    /// The console of the context `name` (`mcproxyctl --context`): the status line names it,
    /// so an operator with several nodes open sees which one this is.
    pub fn with_context(mut self, name: Option<String>) -> App {
        self.data.context = name;
        self
    }

    /// Hides and refuses the editing keys from now on (or allows them again).
    pub fn set_read_only(&mut self, read_only: bool) {
        self.data.read_only = read_only;
    }

    /// What the daemon said.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// The routes view.
    pub fn routes_view(&self) -> &RoutesView {
        &self.routes
    }

    /// The connections view.
    pub fn conns(&self) -> &ConnView {
        &self.conns
    }

    /// The fleet as last polled.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The fleet view.
    pub fn fleet_view(&self) -> &FleetView {
        &self.fleet_view
    }

    /// The talkers view.
    pub fn talkers(&self) -> &TalkersView {
        &self.talkers
    }

    /// The main view on show.
    pub fn view(&self) -> View {
        self.view
    }

    /// The box on top, if any.
    pub fn popup(&self) -> Option<&Popup> {
        self.popup.as_ref()
    }

    /// The form, while it is open.
    pub fn form(&self) -> Option<&Form> {
        match &self.popup {
            Some(Popup::Form(form)) => Some(form),
            _ => None,
        }
    }

    /// The firewall box, while it is open.
    pub fn firewall(&self) -> Option<&FirewallView> {
        match &self.popup {
            Some(Popup::Firewall(fw)) => Some(fw),
            _ => None,
        }
    }

    /// What has the keyboard, by name.
    pub fn screen(&self) -> Screen {
        use super::confirm::Confirm;
        match &self.popup {
            Some(Popup::Form(_)) => Screen::Form,
            Some(Popup::Confirm(Confirm::DeleteRoute { .. })) => Screen::ConfirmDelete,
            Some(Popup::Confirm(Confirm::CloseConnection { .. })) => Screen::ConfirmClose,
            Some(Popup::Confirm(Confirm::Backend { .. })) => Screen::ConfirmBackend,
            Some(Popup::Firewall(_)) => Screen::Firewall,
            Some(Popup::ListenerDetail(_)) => Screen::ListenerDetail,
            Some(Popup::RouteDetail(_)) => Screen::RouteDetail,
            Some(Popup::Help(_)) => Screen::Help,
            None if self.filtering() => Screen::Filter,
            None => Screen::Normal,
        }
    }

    fn filtering(&self) -> bool {
        match self.view {
            View::Routes => self.routes.filtering,
            View::Connections => self.conns.filtering,
            View::Fleet | View::Talkers => false,
        }
    }

    /// What the components read: the data and the routes view's selection.
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx::new(&self.data, &self.routes, self.view, &self.fleet)
    }

    /// The selected listener, if any.
    pub fn listener(&self) -> Option<&ListenerStatus> {
        self.routes.listener(&self.data)
    }

    /// The selected listener's routes that pass the filter, in the chosen order.
    pub fn visible_routes(&self) -> Vec<&RouteView> {
        self.routes.visible(&self.data)
    }

    /// The selected route, if any.
    pub fn route(&self) -> Option<&RouteView> {
        self.routes.route(&self.data)
    }

    /// The key context of what has the keyboard.
    pub fn context(&self) -> Context {
        match (&self.popup, self.view) {
            (Some(popup), _) => popup.component().context(),
            (None, View::Routes) => self.routes.context(),
            (None, View::Connections) => self.conns.context(),
            (None, View::Fleet) => self.fleet_view.context(),
            (None, View::Talkers) => self.talkers.context(),
        }
    }

    /// The events pane's lines its filter shows, oldest first.
    pub fn log_shown(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.data.log_shown(self.routes.log_filter)
    }

    /// Advances the clock: notices older than [`NOTE_TTL`] go.
    pub fn on_tick(&mut self, now: Instant) {
        self.data.on_tick(now);
    }

    /// Re-finds every selection after a change (see the module invariants).
    fn follow_all(&mut self) {
        self.routes.follow(&self.data);
        if let Some(Popup::Firewall(fw)) = &mut self.popup {
            fw.follow(&self.data);
        }
        self.conns.follow();
        self.fleet_view.follow(&self.fleet);
    }

    /// Applies a message from the daemon link.
    pub fn on_daemon(&mut self, msg: DaemonMsg) {
        let now = Instant::now().max(self.data.now);
        self.data.now = now;
        match msg {
            DaemonMsg::Snapshot {
                status,
                routes,
                rules,
            } => self.data.on_snapshot(status, routes, rules, now),
            DaemonMsg::Event(event) => {
                // on_event re-finds the selections itself when a list changed.
                self.on_event(event, now);
                return;
            }
            DaemonMsg::Connections(list) => self.conns.update(list, now),
            DaemonMsg::Disconnected(reason) => self.data.on_disconnected(reason),
            DaemonMsg::Fleet(poll) => self.fleet.update(poll),
            DaemonMsg::Talkers(list) => self.talkers.update(list),
            DaemonMsg::ActionDone(result) => self.on_action_done(result),
        }
        self.follow_all();
    }

    /// Applies a live event received at `now`, then tells the components that follow it.
    pub fn on_event(&mut self, event: TimedEvent, now: Instant) {
        match self.data.on_event(event, now) {
            Applied::Logged => return,
            Applied::Changed => {}
            Applied::Renamed { listener, from, to } => {
                self.routes.renamed(&self.data, &listener, &from, to);
            }
            Applied::RuleAdded(rule) => {
                if let Some(Popup::Firewall(fw)) = &mut self.popup {
                    fw.rule_added(&rule);
                }
            }
            Applied::ConnectionClosed(id) => {
                self.conns.closed(id);
                if self.view == View::Routes {
                    return;
                }
            }
        }
        self.follow_all();
    }

    /// The daemon's answer to an action: to the form or the firewall box that asked (the
    /// form closes on success), else a notice.
    fn on_action_done(&mut self, result: Result<String, String>) {
        match (&mut self.popup, result) {
            (Some(Popup::Form(form)), Err(e)) => {
                form.pending = false;
                form.error = Some(e);
            }
            (Some(Popup::Firewall(fw)), result) => {
                fw.answered(&result);
                if let Ok(note) = result {
                    self.data.set_note(note, false);
                }
            }
            (Some(Popup::Form(_)), Ok(note)) => {
                self.popup = None;
                self.data.set_note(note, false);
            }
            (_, Ok(note)) => self.data.set_note(note, false),
            (_, Err(e)) => self.data.set_note(format!("error: {e}"), true),
        }
    }

    /// Starts over for another node: nothing of this one stays on screen (its routes,
    /// events, connections, selections), the fleet view keeps its rows.
    fn switch_to(&mut self, context: String, socket: &std::path::Path) {
        self.data = Data::new(self.data.read_only);
        self.data.context = Some(context);
        self.routes = RoutesView::default();
        self.conns = ConnView::default();
        self.view = View::Routes;
        self.popup = None;
        self.fleet.switched(socket);
    }

    /// Handles a key: the component with the keyboard decides; returns what to ask the daemon
    /// (or the link), if anything.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return Some(Action::Quit);
        }
        let ctx = Ctx::new(&self.data, &self.routes, self.view, &self.fleet);
        let outcome = match (&mut self.popup, self.view) {
            (Some(popup), _) => popup.component_mut().on_key(&key, &ctx),
            (None, View::Routes) => self.routes.on_key(&key, &ctx),
            (None, View::Connections) => self.conns.on_key(&key, &ctx),
            (None, View::Fleet) => self.fleet_view.on_key(&key, &ctx),
            (None, View::Talkers) => self.talkers.on_key(&key, &ctx),
        };
        let action = self.apply(outcome);
        self.follow_all();
        action
    }

    /// Carries out what a component asked for; returns the action to send.
    fn apply(&mut self, outcome: Outcome) -> Option<Action> {
        let action = match outcome {
            Outcome::Stay => None,
            Outcome::Send(action) => Some(action),
            Outcome::Close(action) => {
                self.popup = None;
                action
            }
            Outcome::Open(popup, action) => {
                self.popup = Some(*popup);
                action
            }
            Outcome::Show(view) => {
                self.view = view;
                Some(Action::Watch(view))
            }
            Outcome::ClearNote => {
                self.data.note = None;
                None
            }
            Outcome::Note(text) => {
                self.data.set_note(text, false);
                None
            }
        };
        if let Some(Action::SwitchNode { context, socket }) = &action {
            self.switch_to(context.clone(), socket);
        }
        if let Some(Action::AddRoute { route, .. } | Action::UpdateRoute { route, .. }) = &action {
            // The selection goes to the route being saved, wherever it sorts.
            self.routes.route_sel.expect(route.hostname.clone());
        }
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mc_proxy_shared::FirewallRuleKind;
    use mc_proxy_shared::client::{Event, RouteStats};
    use mc_proxy_shared::{BackendProtocol, Mode};
    use std::time::Duration;

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
            certificate: None,
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
                cluster: None,
                pid: None,
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
                        listeners: app.data.listeners.clone(),
                        routes,
                        backends: vec![],
                        cluster: None,
                    },
                },
                t0 + Duration::from_secs(i as u64),
            );
        }
        app.on_key(key(KeyCode::Char('s')));
        assert_eq!(app.routes.sort, RouteSort::Traffic);
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
        assert_eq!(app.screen(), Screen::Normal);
        assert_eq!(app.visible_routes().len(), 2);
        // `/` starts a new filter rather than appending to the old one.
        app.on_key(key(KeyCode::Char('/')));
        type_text(&mut app, "web");
        assert_eq!(app.visible_routes().len(), 1);
        app.on_key(key(KeyCode::Char('u')).with_ctrl());
        assert_eq!(app.routes.filter, "");
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
        let Some(form) = app.form() else {
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
        let Some(form) = app.form() else {
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
        let protocol = |app: &App| match app.form() {
            Some(form) => {
                assert_eq!(form.focus, Field::BackendProtocol);
                form.backend_protocol
            }
            None => panic!("no form: {:?}", app.screen()),
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
        let Some(form) = app.form() else {
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
        for view in app.data.routes.get_mut(&l).unwrap() {
            if view.route.hostname == hostname {
                view.route.backends = vec![
                    mc_proxy_shared::RouteBackend::new("10.0.0.1:80"),
                    mc_proxy_shared::RouteBackend::new("10.0.0.1:81"),
                ];
            }
        }
        app.routes.pane = Pane::Routes;
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.screen(), Screen::RouteDetail);
        app.on_key(key(KeyCode::Down));
        assert_eq!(
            app.screen(),
            Screen::RouteDetail,
            "moving keeps the box open"
        );
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
        app.set_read_only(true);
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
        let Some(form) = app.form() else {
            panic!("form closed on error")
        };
        assert_eq!(form.error.as_deref(), Some("invalid backend \"nope\""));
        assert!(!form.pending);
        app.on_daemon(DaemonMsg::ActionDone(Ok("updated".into())));
        assert_eq!(app.screen(), Screen::Normal);
    }

    #[test]
    fn delete_needs_confirmation() {
        let mut app = app_with_routes();
        app.on_key(key(KeyCode::Char('d')));
        assert_eq!(app.on_key(key(KeyCode::Char('n'))), None);
        assert_eq!(app.screen(), Screen::Normal);
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
        app.data.listeners = snapshot.data.listeners.clone();
        app.data.routes = snapshot.data.routes.clone();
        app.follow_all();
        for c in ['a', 'e', 'd'] {
            assert_eq!(app.on_key(key(KeyCode::Char(c))), None);
            assert_eq!(app.screen(), Screen::Normal, "{c}");
        }
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.screen(), Screen::RouteDetail);
        app.on_key(key(KeyCode::Char('e')));
        assert_eq!(app.screen(), Screen::Normal);
        app.on_key(key(KeyCode::Char('f')));
        assert_eq!(app.on_key(key(KeyCode::Char('a'))), None);
        let Some(fw) = app.firewall() else {
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
        assert_eq!(app.data.log.len(), LOG_CAPACITY);
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
        app.data.rules = vec![seeded.clone()];
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
        let Some(fw) = app.firewall() else {
            panic!("firewall closed")
        };
        assert_eq!(fw.sel.key(), Some(rule_key(&added).as_str()));
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.screen(), Screen::Normal);
    }

    #[test]
    fn notices_expire_and_a_reconnect_clears_stale_errors() {
        let mut app = app_with_routes();
        app.on_daemon(DaemonMsg::Disconnected("refused".into()));
        app.on_daemon(DaemonMsg::ActionDone(Err(
            "not connected to the daemon".into()
        )));
        assert!(app.data.note.as_ref().is_some_and(|n| n.error));
        let snapshot = app_with_routes();
        app.on_daemon(DaemonMsg::Snapshot {
            status: Status {
                version: "0.1.0".into(),
                uptime: Duration::ZERO,
                listeners: snapshot.data.listeners.clone(),
                active_connections: 0,
                total_connections: 0,
                firewall_rules: 0,
                backends: vec![],
                cluster: None,
                pid: None,
            },
            routes: vec![],
            rules: vec![],
        });
        assert_eq!(app.data.link, Link::Connected);
        assert_eq!(app.data.note, None);
        app.on_daemon(DaemonMsg::ActionDone(Ok("added route x".into())));
        let at = app.data.note.as_ref().unwrap().at;
        app.on_tick(at + NOTE_TTL / 2);
        assert!(app.data.note.is_some());
        app.on_tick(at + NOTE_TTL);
        assert_eq!(app.data.note, None);
        assert!(app.log_shown().any(|l| l == "added route x"));
    }
}
