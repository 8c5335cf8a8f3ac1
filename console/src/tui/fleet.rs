//! The fleet: every node the console can see, from two sources, and the fleet view that
//! lists them (context `Fleet`).
//!
//! - The contexts (`mcproxyctl config add-context`): each is polled (`fleet_link`) for its
//!   status and its routes' counters; rates and error shares are differences of two polls.
//! - The cluster registry, read from the node the console is on (`ClusterStatus`): nodes
//!   that have no context still show, with what the registry says (version, applied
//!   revision), and a dash for what only the node itself could tell (traffic).
//!
//! A reached node that is a cluster member is matched to its registry entry by node name.
//! Enter on a node with a context switches the whole console to it.
//!
//! No I/O. Invariants: a figure is shown only when it was read in the last poll; a node that
//! did not answer shows why and a dash for every live value, never the last known one; a rate
//! needs two polls of the same daemon run (a restart, seen as counters going backwards, starts
//! over), so the first poll shows a dash rather than a rate from nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use crossterm::event::KeyEvent;
use mc_proxy_shared::Mode;
use mc_proxy_shared::client::{ClusterStatus, RouteEntry, Status};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState};

use super::app::{Action, View};
use super::component::{Component, Ctx, Outcome};
use super::help::Help;
use super::input::{self, Command, Context};
use super::select::Selection;
use super::widgets::{bold, pane_block, right, selected};
use crate::format::fit;

/// One polled context's answer.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Its status (version, listeners, open connections, cluster link).
    pub status: Status,
    /// Its routes with their counters.
    pub routes: Vec<RouteEntry>,
}

/// What one poll of one context gave.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The context's name.
    pub context: String,
    /// Its socket.
    pub socket: PathBuf,
    /// The answer, or why there is none (short: it is shown in a table cell's detail line).
    pub reading: Result<Reading, String>,
}

/// One round of the fleet poll.
#[derive(Debug, Clone)]
pub struct Poll {
    /// When the round ended.
    pub at: Instant,
    /// The socket the console showed during the round.
    pub current: PathBuf,
    /// Every context, in the contexts file's order.
    pub samples: Vec<Sample>,
    /// The registry as the console's own node reads it: `None` when that node is not on a
    /// cluster (or did not answer), `Err` when it could not read the registry.
    pub registry: Option<Result<ClusterStatus, String>>,
}

/// A route across nodes: the listener's name (shared by the fleet) and the hostname.
pub type RouteKey = (String, String);

/// Counters that make a rate: requests (L7) or connections (L4), and the failed ones among
/// them (L7: 5xx; L4: backend errors), as the routes view counts its error share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    units: u64,
    errors: u64,
}

impl Totals {
    fn of(entry: &RouteEntry) -> Totals {
        let s = &entry.stats;
        match entry.route.mode {
            Mode::L7 => Totals {
                units: s.requests,
                errors: s.responses[4],
            },
            Mode::L4 => Totals {
                units: s.total_connections,
                errors: s.backend_errors,
            },
        }
    }
}

/// Traffic over the last poll interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// Requests (L7) and new connections (L4) per second.
    pub per_sec: f64,
    /// Failed share of them; `None` without traffic.
    pub error_share: Option<f64>,
}

impl Traffic {
    /// `units` more requests or connections, `errors` of them failed, over `secs`.
    fn of(units: u64, errors: u64, secs: f64) -> Traffic {
        Traffic {
            per_sec: units as f64 / secs,
            error_share: match (errors, units) {
                (0, 0) => None,
                (bad, all) => Some((bad as f64 / all.max(bad) as f64).min(1.0)),
            },
        }
    }
}

/// One route's figures on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RouteFigures {
    /// Connections open on it now.
    pub open: u64,
    /// Its traffic over the last interval (`None` until two polls were seen).
    pub traffic: Option<Traffic>,
}

/// How the console knows of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Its context answered the last poll.
    Up,
    /// Its context did not answer: why.
    Unreachable(String),
    /// Only the registry names it (no context reaches it).
    RegistryOnly,
}

/// One row of the fleet view.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The node's cluster name, else its context's name.
    pub name: String,
    /// The context that reaches it.
    pub context: Option<String>,
    /// That context's socket.
    pub socket: Option<PathBuf>,
    /// Whether the console shows this node now.
    pub current: bool,
    /// How it is known.
    pub reach: Reach,
    /// Its mc-proxy version.
    pub version: Option<String>,
    /// Its link to the fleet's store (`connected`, `disconnected`, ...), on a cluster.
    pub store: Option<String>,
    /// The store revision it applied.
    pub applied: Option<i64>,
    /// How many revisions it is behind the newest it (or, for a registry-only node, the
    /// console's node) heard of.
    pub lag: Option<i64>,
    /// Connections open on it.
    pub open: Option<u64>,
    /// Its traffic over the last interval.
    pub traffic: Option<Traffic>,
    /// Per route (listener name, hostname).
    pub routes: BTreeMap<RouteKey, RouteFigures>,
    /// Its sync's last error, or the registry's, when there is one.
    pub last_error: Option<String>,
    /// `name=address` per listener.
    pub listeners: Vec<String>,
}

/// What the previous poll left to compute rates from, per context.
#[derive(Debug, Clone)]
struct Previous {
    at: Instant,
    uptime_ms: u128,
    routes: HashMap<RouteKey, Totals>,
}

/// Everything the fleet polls said, and what is needed for the next rates.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// The rows, by name.
    pub nodes: Vec<Node>,
    /// When the last poll ended (`None`: none yet).
    pub at: Option<Instant>,
    /// Why the registry could not be read, if so.
    pub registry_error: Option<String>,
    previous: HashMap<String, Previous>,
    /// The cluster name each context's node last gave: a name is not a live figure, so an
    /// unreachable node keeps it, and its registry entry (alive until its lease runs out)
    /// is its own row rather than a second one.
    names: HashMap<String, String>,
}

impl Fleet {
    /// Takes a poll.
    pub fn update(&mut self, poll: Poll) {
        let mut nodes: Vec<Node> = Vec::new();
        let mut previous = HashMap::new();
        for sample in poll.samples {
            let node = self.node_of(sample, poll.at, &poll.current, &mut previous);
            nodes.push(node);
        }
        self.registry_error = None;
        if let Some(registry) = poll.registry {
            match registry {
                Ok(cluster) => merge_registry(&mut nodes, &cluster),
                Err(e) => self.registry_error = Some(e),
            }
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.context.cmp(&b.context)));
        self.nodes = nodes;
        self.previous = previous;
        self.at = Some(poll.at);
    }

    /// One context's row, its rates from the previous poll of the same daemon run.
    fn node_of(
        &mut self,
        sample: Sample,
        at: Instant,
        current: &std::path::Path,
        previous: &mut HashMap<String, Previous>,
    ) -> Node {
        let mut node = Node {
            name: sample.context.clone(),
            context: Some(sample.context.clone()),
            current: sample.socket == current,
            socket: Some(sample.socket),
            reach: Reach::Up,
            version: None,
            store: None,
            applied: None,
            lag: None,
            open: None,
            traffic: None,
            routes: BTreeMap::new(),
            last_error: None,
            listeners: Vec::new(),
        };
        let reading = match sample.reading {
            Ok(reading) => reading,
            Err(e) => {
                node.reach = Reach::Unreachable(e);
                if let Some(name) = self.names.get(&sample.context) {
                    node.name = name.clone();
                }
                return node;
            }
        };
        let status = &reading.status;
        if let Some(link) = &status.cluster {
            self.names.insert(sample.context.clone(), link.node.clone());
            node.name = link.node.clone();
            node.store = Some(link.state.clone());
            node.applied = Some(link.applied_revision);
            node.lag = Some((link.store_revision - link.applied_revision).max(0));
            node.last_error = (!link.last_error.is_empty()).then(|| link.last_error.clone());
        }
        node.version = Some(status.version.clone());
        node.open = Some(status.active_connections);
        node.listeners = status
            .listeners
            .iter()
            .map(|l| format!("{}={}", l.name, l.addr))
            .collect();
        // Routes are named across nodes by their listener's name, not its address.
        let names: HashMap<&str, &str> = status
            .listeners
            .iter()
            .map(|l| (l.addr.as_str(), l.name.as_str()))
            .collect();
        let mut routes = HashMap::new();
        for entry in &reading.routes {
            let listener = names.get(entry.listener.as_str()).copied();
            let key = (
                listener.unwrap_or(&entry.listener).to_owned(),
                entry.route.hostname.clone(),
            );
            let totals = Totals::of(entry);
            routes.insert(key.clone(), totals);
            node.routes.insert(
                key,
                RouteFigures {
                    open: entry.stats.active_connections,
                    traffic: None,
                },
            );
        }
        let uptime_ms = status.uptime.as_millis();
        // Rates only within one daemon run (its uptime grew), and per route only where its
        // counters did not go back (a route removed and added again starts over); a route
        // that came or went since counts from the next poll on.
        let prev = self
            .previous
            .get(&sample.context)
            .filter(|p| p.uptime_ms <= uptime_ms && p.at < at);
        if let Some(prev) = prev {
            let secs = at.duration_since(prev.at).as_secs_f64();
            let (mut units, mut errors) = (0, 0);
            for (key, figures) in &mut node.routes {
                if let (Some(old), Some(new)) = (prev.routes.get(key), routes.get(key))
                    && old.units <= new.units
                {
                    let (u, e) = (new.units - old.units, new.errors.saturating_sub(old.errors));
                    units += u;
                    errors += e;
                    figures.traffic = Some(Traffic::of(u, e, secs));
                }
            }
            node.traffic = Some(Traffic::of(units, errors, secs));
        }
        previous.insert(
            sample.context,
            Previous {
                at,
                uptime_ms,
                routes,
            },
        );
        node
    }

    /// The console now shows the node behind `socket` (until the next poll says so).
    pub fn switched(&mut self, socket: &std::path::Path) {
        for n in &mut self.nodes {
            n.current = n.socket.as_deref() == Some(socket);
        }
    }

    /// The rows that have figures for `key`, with them (for a route's detail).
    pub fn route(&self, key: &RouteKey) -> Vec<(&Node, RouteFigures)> {
        self.nodes
            .iter()
            .filter_map(|n| n.routes.get(key).map(|f| (n, *f)))
            .collect()
    }

    /// How many nodes answered the last poll.
    pub fn reached(&self) -> usize {
        self.nodes.iter().filter(|n| n.reach == Reach::Up).count()
    }
}

/// Adds what the registry says: a context's node is matched by its cluster name (an
/// unreachable one by the name it last gave, and it stays a row of dashes: a registry entry
/// lives until its lease runs out, so it says nothing of now); a registered node no context
/// reaches gets a row of its own.
fn merge_registry(nodes: &mut Vec<Node>, cluster: &ClusterStatus) {
    let newest = cluster.link.store_revision;
    for entry in &cluster.nodes {
        if let Some(node) = nodes
            .iter_mut()
            .find(|n| n.context.is_some() && n.name == entry.name)
        {
            if node.reach == Reach::Up && node.last_error.is_none() && !entry.last_error.is_empty()
            {
                node.last_error = Some(entry.last_error.clone());
            }
            continue;
        }
        nodes.push(Node {
            name: entry.name.clone(),
            context: None,
            socket: None,
            current: false,
            reach: Reach::RegistryOnly,
            version: Some(entry.version.clone()),
            store: None,
            applied: Some(entry.applied_revision),
            lag: Some((newest - entry.applied_revision).max(0)),
            open: None,
            traffic: None,
            routes: BTreeMap::new(),
            last_error: (!entry.last_error.is_empty()).then(|| entry.last_error.clone()),
            listeners: entry.listeners.clone(),
        });
    }
}

/// The fleet view's state: the selected node, by name and context.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// The selected row.
    pub sel: Selection,
}

/// A row's key for the selection.
fn row_key(n: &Node) -> String {
    format!("{}\u{0}{}", n.name, n.context.as_deref().unwrap_or(""))
}

impl FleetView {
    /// Re-finds the selection after a poll; with none yet, the node shown is selected.
    pub fn follow(&mut self, fleet: &Fleet) {
        if self.sel.key().is_none()
            && let Some(n) = fleet.nodes.iter().find(|n| n.current)
        {
            self.sel.set(row_key(n));
        }
        let keys: Vec<String> = fleet.nodes.iter().map(row_key).collect();
        self.sel.follow(&keys);
    }

    /// The selected node, if any.
    pub fn node<'a>(&self, fleet: &'a Fleet) -> Option<&'a Node> {
        fleet.nodes.get(self.sel.index())
    }

    fn moved(&mut self, fleet: &Fleet, rows: isize) {
        let last = fleet.nodes.len().saturating_sub(1);
        let idx = self.sel.index().saturating_add_signed(rows).min(last);
        if let Some(n) = fleet.nodes.get(idx) {
            self.sel.set(row_key(n));
        }
        self.follow(fleet);
    }
}

impl Component for FleetView {
    fn context(&self) -> Context {
        Context::Fleet
    }

    fn on_key(&mut self, key: &KeyEvent, ctx: &Ctx<'_>) -> Outcome {
        let Some(command) = input::lookup(Context::Fleet, key, ctx.data.read_only) else {
            return Outcome::Stay;
        };
        if let Some(rows) = command.rows() {
            self.moved(ctx.fleet, rows);
            return Outcome::Stay;
        }
        match command {
            Command::Detail => switch(self.node(ctx.fleet)),
            Command::Help => Outcome::open(Help::new(View::Fleet, None)),
            Command::Quit => Outcome::Send(Action::Quit),
            Command::Close | Command::Fleet => Outcome::Show(View::Routes),
            _ => Outcome::Stay,
        }
    }

    fn render(&self, ctx: &Ctx<'_>, frame: &mut Frame<'_>, area: Rect) {
        let fleet = ctx.fleet;
        let [table_area, detail_area] =
            Layout::vertical([Constraint::Fill(1), Constraint::Length(4)]).areas(area);
        let title = match fleet.at {
            None => "fleet: polling the contexts...".to_owned(),
            Some(_) => format!(
                "fleet: {} node(s), {} reached, figures over {}s",
                fleet.nodes.len(),
                fleet.reached(),
                super::fleet_link::INTERVAL.as_secs()
            ),
        };
        let block = pane_block(&title, table_area.width, true);
        let inner = block.inner(table_area);
        frame.render_widget(block, table_area);
        let width = usize::from(inner.width);
        let cols = Columns::for_width(width);
        let header = Row::new(cols.header()).style(bold());
        let rows: Vec<Row<'_>> = fleet.nodes.iter().map(|n| cols.row(n)).collect();
        let mut state = TableState::default();
        if !fleet.nodes.is_empty() {
            state.select(Some(self.sel.index()));
        }
        let table = Table::new(rows, cols.widths())
            .header(header)
            .column_spacing(1)
            .row_highlight_style(selected());
        frame.render_stateful_widget(table, inner, &mut state);
        let detail = detail_lines(self.node(fleet), fleet, width);
        frame.render_widget(Paragraph::new(detail), detail_area);
    }
}

/// Enter on a node: switch to it when a context reaches it and it is not the one shown.
fn switch(node: Option<&Node>) -> Outcome {
    let Some(node) = node else {
        return Outcome::Stay;
    };
    match (&node.context, &node.socket) {
        _ if node.current => Outcome::Show(View::Routes),
        (Some(context), Some(socket)) => Outcome::Send(Action::SwitchNode {
            context: context.clone(),
            socket: socket.clone(),
        }),
        _ => Outcome::Note(format!(
            "no context reaches node {}: mcproxyctl config add-context NAME --socket PATH",
            fit::end(&node.name, 40)
        )),
    }
}

/// The columns the width allows: the name, state and traffic always; the version and
/// revision from 80 columns on, the context from about 100 (the line under the table names
/// the selected node's context at any width).
struct Columns {
    name: usize,
    context: Option<usize>,
    version: bool,
    revision: bool,
}

const STATE: usize = 11;
const VERSION: usize = 8;
/// Revisions are shown exactly (1040 and 1030 must not both read "1.0K"): nine digits fit.
const REV: usize = 9;
const LAG: usize = 5;
const OPEN: usize = 6;
const RATE: usize = 7;
const ERR: usize = 6;

impl Columns {
    fn for_width(width: usize) -> Columns {
        let fixed = STATE + LAG + OPEN + RATE + ERR + 5;
        let wide = width >= 78;
        let extra = if wide { VERSION + REV + 2 } else { 0 };
        let flex = width.saturating_sub(fixed + extra + 1);
        let (name, context) = if wide && flex >= 20 {
            let context = (flex / 3).clamp(8, 16);
            (flex - context - 1, Some(context))
        } else {
            (flex.max(8), None)
        };
        Columns {
            name,
            context,
            version: wide,
            revision: wide,
        }
    }

    fn widths(&self) -> Vec<Constraint> {
        let mut w = vec![Constraint::Length(self.name as u16)];
        if let Some(c) = self.context {
            w.push(Constraint::Length(c as u16));
        }
        w.push(Constraint::Length(STATE as u16));
        if self.version {
            w.push(Constraint::Length(VERSION as u16));
        }
        if self.revision {
            w.push(Constraint::Length(REV as u16));
        }
        for n in [LAG, OPEN, RATE, ERR] {
            w.push(Constraint::Length(n as u16));
        }
        w
    }

    fn header(&self) -> Vec<Cell<'static>> {
        let mut h = vec![Cell::from("NODE")];
        if self.context.is_some() {
            h.push(Cell::from("CONTEXT"));
        }
        h.push(Cell::from("STATE"));
        if self.version {
            h.push(Cell::from("VERSION"));
        }
        if self.revision {
            h.push(right("APPLIED".into()));
        }
        for label in ["LAG", "OPEN", "REQ/S", "ERR"] {
            h.push(right(label.into()));
        }
        h
    }

    fn row(&self, n: &Node) -> Row<'static> {
        let dash = || "–".to_owned();
        let marker = if n.current { "*" } else { " " };
        let mut cells = vec![Cell::from(format!(
            "{marker}{}",
            fit::end(&n.name, self.name.saturating_sub(1))
        ))];
        if let Some(w) = self.context {
            cells.push(Cell::from(
                n.context.as_deref().map_or_else(dash, |c| fit::end(c, w)),
            ));
        }
        let (state, style) = state_of(n);
        cells.push(Cell::from(state).style(style));
        if self.version {
            cells.push(Cell::from(
                n.version
                    .as_deref()
                    .map_or_else(dash, |v| fit::end(v, VERSION)),
            ));
        }
        if self.revision {
            cells.push(right(
                n.applied
                    .map_or_else(dash, |r| fit::end(&r.to_string(), REV)),
            ));
        }
        cells.push(right(n.lag.map_or_else(dash, |l| fit::count(l as u64))));
        cells.push(right(n.open.map_or_else(dash, fit::count)));
        cells.push(right(
            n.traffic.map_or_else(dash, |t| fit::per_sec(t.per_sec)),
        ));
        cells.push(right(n.traffic.map_or_else(dash, |t| {
            t.error_share.map_or_else(dash, fit::percent)
        })));
        Row::new(cells)
    }
}

/// The state cell: how the node is reached and how its store link is.
fn state_of(n: &Node) -> (String, Style) {
    let red = Style::default().fg(Color::Red).add_modifier(Modifier::BOLD);
    match (&n.reach, n.store.as_deref()) {
        (Reach::Unreachable(_), _) => ("unreachable".into(), red),
        (Reach::RegistryOnly, _) => ("no context".into(), Style::default().fg(Color::Yellow)),
        (Reach::Up, None | Some("connected")) if n.lag.unwrap_or(0) > 0 => {
            ("behind".into(), Style::default().fg(Color::Yellow))
        }
        (Reach::Up, None | Some("connected")) => ("up".into(), Style::default().fg(Color::Green)),
        (Reach::Up, Some(_)) => ("store down".into(), red),
    }
}

/// Under the table: the selected node in full (why it is unreachable, its sync error, its
/// listeners), and what enter does.
fn detail_lines(node: Option<&Node>, fleet: &Fleet, width: usize) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let Some(n) = node else {
        lines.push(Line::from(
            " no node: add contexts with mcproxyctl config add-context",
        ));
        return lines;
    };
    let what = match (&n.reach, n.current, &n.context) {
        (_, true, Some(c)) => format!("context {c}, shown now"),
        (_, true, None) => "shown now".to_owned(),
        (Reach::RegistryOnly, _, _) | (_, _, None) => "no context reaches it".to_owned(),
        (_, false, Some(c)) => format!("context {c}, enter: switch to it"),
    };
    // The name gives way first: what enter does is the point of the line.
    let room = width.saturating_sub(fit::width(&what) + 3).max(12);
    let head = format!(" {}: {what}", fit::end(&n.name, room));
    lines.push(Line::from(Span::styled(fit::end(&head, width), bold())));
    if let Reach::Unreachable(why) = &n.reach {
        lines.push(Line::from(fit::end(&format!(" unreachable: {why}"), width)));
    }
    if let Some(e) = &n.last_error {
        lines.push(Line::from(fit::end(&format!(" store: {e}"), width)));
    }
    if !n.listeners.is_empty() {
        let text = format!(" listeners: {}", n.listeners.join(", "));
        lines.push(Line::from(fit::end(&text, width)));
    }
    if let Some(e) = &fleet.registry_error {
        lines.push(Line::from(fit::end(&format!(" registry: {e}"), width)));
    }
    lines.truncate(4);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use mc_proxy_shared::client::{ClusterLink, ClusterNode, ListenerStatus, RouteStats};
    use mc_proxy_shared::{Route, RouteBackend};
    use std::time::Duration;

    fn status(uptime_s: u64, node: Option<(&str, i64, i64)>) -> Status {
        Status {
            version: "0.1.0".into(),
            uptime: Duration::from_secs(uptime_s),
            listeners: vec![ListenerStatus {
                addr: "127.0.0.1:8443".into(),
                name: "edge".into(),
                ..ListenerStatus::default()
            }],
            active_connections: 3,
            total_connections: 0,
            firewall_rules: 0,
            backends: vec![],
            pid: None,
            cluster: node.map(|(name, applied, store)| ClusterLink {
                node: name.into(),
                endpoints: vec![],
                prefix: "/p".into(),
                state: "connected".into(),
                since_ms: 0,
                applied_revision: applied,
                store_revision: store,
                last_error: String::new(),
                drift_repaired: 0,
            }),
        }
    }

    fn l7(hostname: &str, requests: u64, errors: u64) -> RouteEntry {
        RouteEntry {
            not_served: None,
            listener: "127.0.0.1:8443".into(),
            route: Route {
                hostname: hostname.into(),
                mode: Mode::L7,
                backends: vec![RouteBackend::new("127.0.0.1:9")],
                ..Route::default()
            },
            stats: RouteStats {
                active_connections: 2,
                requests,
                responses: [0, requests - errors, 0, 0, errors],
                ..RouteStats::default()
            },
            certificate: None,
        }
    }

    fn sample(context: &str, reading: Result<Reading, String>) -> Sample {
        Sample {
            context: context.into(),
            socket: PathBuf::from(format!("/run/{context}.sock")),
            reading,
        }
    }

    fn poll(at: Instant, samples: Vec<Sample>) -> Poll {
        Poll {
            at,
            current: PathBuf::from("/run/a.sock"),
            samples,
            registry: None,
        }
    }

    fn up(uptime_s: u64, routes: Vec<RouteEntry>) -> Result<Reading, String> {
        Ok(Reading {
            status: status(uptime_s, None),
            routes,
        })
    }

    #[test]
    fn rates_need_two_polls_of_the_same_run_and_are_per_route_and_per_node() {
        let t0 = Instant::now();
        let mut fleet = Fleet::default();
        fleet.update(poll(
            t0,
            vec![sample(
                "a",
                up(10, vec![l7("x.test", 100, 0), l7("y.test", 0, 0)]),
            )],
        ));
        let a = &fleet.nodes[0];
        assert!(a.current, "the console's socket is marked");
        assert_eq!(a.traffic, None, "one poll: no rate yet");
        assert_eq!(a.open, Some(3));
        let key = ("edge".to_owned(), "x.test".to_owned());
        assert_eq!(a.routes[&key].traffic, None);

        // Two seconds later: 40 more requests on x, 10 of them 5xx; 20 on y, none failed.
        fleet.update(poll(
            t0 + Duration::from_secs(2),
            vec![sample(
                "a",
                up(12, vec![l7("x.test", 140, 10), l7("y.test", 20, 0)]),
            )],
        ));
        let a = &fleet.nodes[0];
        let t = a.traffic.expect("a rate after two polls");
        assert!((t.per_sec - 30.0).abs() < 1e-9, "{t:?}");
        assert!((t.error_share.unwrap() - 10.0 / 60.0).abs() < 1e-9, "{t:?}");
        let x = a.routes[&key].traffic.unwrap();
        assert!((x.per_sec - 20.0).abs() < 1e-9);
        assert!((x.error_share.unwrap() - 0.25).abs() < 1e-9);
        let y = a.routes[&("edge".to_owned(), "y.test".to_owned())];
        assert_eq!(y.traffic.unwrap().error_share, Some(0.0));
        assert_eq!(y.open, 2);

        // The daemon restarted (uptime back to 1 s): no rate from the old run's counters.
        fleet.update(poll(
            t0 + Duration::from_secs(4),
            vec![sample("a", up(1, vec![l7("x.test", 5, 0)]))],
        ));
        assert_eq!(fleet.nodes[0].traffic, None);
        assert_eq!(fleet.nodes[0].routes[&key].traffic, None);
    }

    #[test]
    fn an_unreachable_node_shows_why_and_no_figure_of_before() {
        let t0 = Instant::now();
        let mut fleet = Fleet::default();
        fleet.update(poll(
            t0,
            vec![sample("b", up(10, vec![l7("x.test", 1, 0)]))],
        ));
        assert_eq!(fleet.nodes[0].open, Some(3));
        fleet.update(poll(
            t0 + Duration::from_secs(2),
            vec![sample("b", Err("connection refused".into()))],
        ));
        let b = &fleet.nodes[0];
        assert_eq!(b.reach, Reach::Unreachable("connection refused".into()));
        assert_eq!(
            (b.open, b.traffic, b.version.as_deref()),
            (None, None, None)
        );
        assert!(b.routes.is_empty());
        assert_eq!(state_of(b).0, "unreachable");
        assert!(!b.current);
    }

    #[test]
    fn the_registry_adds_nodes_no_context_reaches_and_matches_the_others_by_name() {
        let t0 = Instant::now();
        let mut fleet = Fleet::default();
        let reading = Ok(Reading {
            status: status(10, Some(("node-a", 40, 42))),
            routes: vec![],
        });
        let registry = ClusterStatus {
            link: status(10, Some(("node-a", 40, 42))).cluster.unwrap(),
            nodes: ["node-a", "node-c"]
                .iter()
                .map(|name| ClusterNode {
                    name: (*name).into(),
                    version: "0.0.9".into(),
                    listeners: vec!["edge=0.0.0.0:443".into()],
                    admin: String::new(),
                    metrics: String::new(),
                    applied_revision: 37,
                    last_error: String::new(),
                    started_ms: 0,
                })
                .collect(),
            nodes_error: String::new(),
        };
        fleet.update(Poll {
            registry: Some(Ok(registry.clone())),
            ..poll(t0, vec![sample("a", reading)])
        });
        let names: Vec<_> = fleet.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node-a", "node-c"], "one row per node, by name");
        let a = &fleet.nodes[0];
        assert_eq!(a.context.as_deref(), Some("a"));
        assert_eq!(
            (a.applied, a.lag),
            (Some(40), Some(2)),
            "its own link's figures"
        );
        assert_eq!(state_of(a).0, "behind");
        let c = &fleet.nodes[1];
        assert_eq!(c.reach, Reach::RegistryOnly);
        assert_eq!((c.applied, c.lag), (Some(37), Some(5)));
        assert_eq!(
            (c.open, c.traffic),
            (None, None),
            "only the node could tell"
        );
        assert_eq!(state_of(c).0, "no context");
        assert_eq!(fleet.reached(), 1);

        // Enter on it explains instead of switching.
        match switch(Some(c)) {
            Outcome::Note(text) => assert!(text.contains("add-context"), "{text}"),
            other => panic!("{other:?}"),
        }
        match switch(Some(a)) {
            Outcome::Show(View::Routes) => {}
            other => panic!("the node shown: back to its routes, got {other:?}"),
        }

        // Killed: its registry entry lives until its lease runs out, yet it is one row, by
        // the name it last gave, with nothing from before.
        fleet.update(Poll {
            registry: Some(Ok(registry)),
            ..poll(
                t0 + Duration::from_secs(2),
                vec![sample("a", Err("connection refused".into()))],
            )
        });
        let names: Vec<_> = fleet.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node-a", "node-c"]);
        let a = &fleet.nodes[0];
        assert_eq!(state_of(a).0, "unreachable");
        assert_eq!(
            (a.version.as_deref(), a.applied, a.open),
            (None, None, None)
        );
    }
}
