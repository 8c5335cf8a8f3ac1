//! The routes view: the listeners pane, the selected listener's routes, the selected route's
//! traffic chart and the events pane; its selection, pane focus, filter, sort and event filter,
//! its keys (context `Routes`, and `Filter` while typing a filter) and its drawing.
//!
//! No I/O. Invariants: selections are kept by key (listener address, route hostname) and
//! re-found by [`RoutesView::follow`] after every change; columns depend on the width, never
//! the other way round, and every cell is filled through `fit`.

use crossterm::event::KeyEvent;
use mc_proxy_shared::Mode;
use mc_proxy_shared::client::ListenerStatus;
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, List, ListItem, Paragraph, Row, Sparkline, Table, TableState};

use super::app::View;
use super::component::{Component, Ctx, Outcome};
use super::confirm::Confirm;
use super::data::{Data, LogFilter, RouteView};
use super::firewall::FirewallView;
use super::form::{Form, filter_key};
use super::health::Health;
use super::help::Help;
use super::input::{self, Command, Context};
use super::listener_detail::ListenerDetail;
use super::order;
use super::route_detail::{RouteDetail, cert_health};
use super::select::Selection;
use super::widgets::{
    Col, NOT_SERVED, bold, figure, health_style, not_served_style, pane_block, right, selected,
    split, stale_style,
};
use crate::format::fit;

/// Which pane of the routes view has the selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    /// The listener list.
    Listeners,
    /// The selected listener's routes.
    Routes,
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

/// The routes view's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutesView {
    /// Selected listener, by address.
    pub(super) listener_sel: Selection,
    /// Selected route among the visible routes, by hostname.
    pub(super) route_sel: Selection,
    /// Pane with focus.
    pub(super) pane: Pane,
    /// Route filter (hostname or backend contains it, case-insensitively).
    pub(super) filter: String,
    /// The filter is being typed (context `Filter`).
    pub(super) filtering: bool,
    /// Route order.
    pub(super) sort: RouteSort,
    /// What the events pane shows (`v` cycles).
    pub(super) log_filter: LogFilter,
}

impl Default for RoutesView {
    fn default() -> Self {
        RoutesView {
            listener_sel: Selection::default(),
            route_sel: Selection::default(),
            pane: Pane::Routes,
            filter: String::new(),
            filtering: false,
            sort: RouteSort::Name,
            log_filter: LogFilter::default(),
        }
    }
}

impl RoutesView {
    /// The selected listener, if any.
    pub fn listener<'a>(&self, data: &'a Data) -> Option<&'a ListenerStatus> {
        data.listeners.get(self.listener_sel.index())
    }

    /// The selected listener's routes that pass the filter, in the chosen order.
    pub fn visible<'a>(&self, data: &'a Data) -> Vec<&'a RouteView> {
        let Some(l) = self.listener(data) else {
            return Vec::new();
        };
        let filter = self.filter.to_lowercase();
        let mut routes: Vec<&RouteView> = data
            .routes_of(&l.addr)
            .iter()
            .filter(|r| {
                filter.is_empty()
                    || r.route.hostname.to_lowercase().contains(&filter)
                    || r.route
                        .backends
                        .iter()
                        .any(|b| b.address.to_lowercase().contains(&filter))
            })
            .collect();
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
    pub fn route<'a>(&self, data: &'a Data) -> Option<&'a RouteView> {
        self.visible(data).get(self.route_sel.index()).copied()
    }

    fn hostnames(&self, data: &Data) -> Vec<String> {
        self.visible(data)
            .iter()
            .map(|r| r.route.hostname.clone())
            .collect()
    }

    /// Re-finds both selections after a change.
    pub fn follow(&mut self, data: &Data) {
        let addrs: Vec<&str> = data.listeners.iter().map(|l| l.addr.as_str()).collect();
        self.listener_sel.follow(&addrs);
        let hosts = self.hostnames(data);
        self.route_sel.follow(&hosts);
    }

    /// A route on `listener` was renamed: the selection stays on it.
    pub fn renamed(&mut self, data: &Data, listener: &str, from: &str, to: String) {
        let selected_here = self.listener(data).is_some_and(|l| l.addr == listener);
        if selected_here && self.route_sel.key() == Some(from) {
            self.route_sel.set(to);
        }
    }

    fn move_selection(&mut self, data: &Data, delta: isize) {
        match self.pane {
            Pane::Listeners => {
                let before = self.listener_sel.index();
                let addrs: Vec<&str> = data.listeners.iter().map(|l| l.addr.as_str()).collect();
                self.listener_sel.step(&addrs, delta);
                if before != self.listener_sel.index() {
                    self.route_sel = Selection::default();
                }
            }
            Pane::Routes => {
                let hosts = self.hostnames(data);
                self.route_sel.step(&hosts, delta);
            }
        }
    }

    /// The popup a command opens over the view, if any.
    fn open(&self, command: Command, ctx: &Ctx<'_>) -> Option<Outcome> {
        let (listener, route) = (ctx.listener, ctx.route);
        Some(match command {
            Command::Help => Outcome::open(Help::new(View::Routes, None)),
            Command::Firewall => Outcome::open(FirewallView::default()),
            Command::Detail => match self.pane {
                Pane::Listeners if listener.is_some() => Outcome::open(ListenerDetail),
                Pane::Routes if route.is_some() => Outcome::open(RouteDetail::default()),
                _ => return None,
            },
            Command::Add => Outcome::open(Form::new(listener?.addr.clone())),
            Command::Edit => Outcome::open(Form::edit(listener?.addr.clone(), &route?.route)),
            Command::Delete => Outcome::open(Confirm::DeleteRoute {
                listener: listener?.addr.clone(),
                hostname: route?.route.hostname.clone(),
            }),
            _ => return None,
        })
    }

    fn render_routes(&self, data: &Data, frame: &mut Frame<'_>, area: Rect) {
        let routes = self.visible(data);
        let columns = RouteColumns::new(&routes, usize::from(area.width.saturating_sub(2)));
        // Without the daemon the figures are the last it sent: dimmed, so they do not look live.
        let stale = data.stale_since().is_some();
        // A certificate near its end colours the row as errors would. Times are the
        // figures', not a clock's.
        let now_ms = data.figures_at_ms.unwrap_or(0);
        let cert_health = |r: &RouteView| {
            r.certificate
                .as_ref()
                .map_or(Health::Ok, |c| cert_health(c, now_ms))
        };
        let rows = routes.iter().map(|r| columns.row(r, stale, cert_health(r)));
        let title = self.routes_title(data, routes.len());
        let table = Table::new(rows, columns.widths())
            .header(columns.header())
            .row_highlight_style(selected())
            .block(pane_block(&title, area.width, self.pane == Pane::Routes));
        let mut state = TableState::default()
            .with_selected((!routes.is_empty()).then_some(self.route_sel.index()));
        frame.render_stateful_widget(table, area, &mut state);
        if routes.is_empty() && area.height > 3 {
            let inner = Rect {
                x: area.x + 2,
                y: area.y + 2,
                width: area.width.saturating_sub(4),
                height: 1,
            };
            let msg = match (self.filter.is_empty(), data.read_only) {
                (false, _) => "no route matches the filter",
                (true, false) => "no routes: press a to add one",
                (true, true) => "no routes",
            };
            frame.render_widget(Paragraph::new(msg), inner);
        }
    }

    /// `routes of ADDR [n/m] sort:name filter:x`.
    fn routes_title(&self, data: &Data, count: usize) -> String {
        let position = if count == 0 {
            format!("0/{count}")
        } else {
            format!("{}/{count}", self.route_sel.index() + 1)
        };
        let mut title = match self.listener(data) {
            None => "routes".to_owned(),
            Some(l) => format!(
                "routes of {} [{position}] sort:{}",
                l.addr,
                self.sort.as_str()
            ),
        };
        if !self.filter.is_empty() || self.filtering {
            title.push_str(&format!(" filter:{}", self.filter));
        }
        title
    }

    fn render_listeners(&self, data: &Data, frame: &mut Frame<'_>, area: Rect) {
        let inner = usize::from(area.width.saturating_sub(2));
        let wide = inner >= 70;
        // Short headers below 70 columns, so the address keeps its room.
        let cols: Vec<Col> = [
            ("PROXY", "PROXY", 5, 5),
            ("ROUTES", "RTS", 6, 4),
            ("OPEN", "OPEN", 4, 4),
            ("ACCEPTED", "ACC", 8, 4),
            ("RESETS", "RST", 6, 4),
            ("BLOCKED", "BLK", 7, 4),
        ]
        .into_iter()
        .map(|(long, short, w, n)| match wide {
            true => Col {
                name: long,
                width: w,
            },
            false => Col {
                name: short,
                width: n,
            },
        })
        .collect();
        let fixed: usize = cols.iter().map(|c| usize::from(c.width) + 1).sum();
        let addr_w = inner.saturating_sub(fixed).max(1);
        let stale = data.stale_since().is_some();
        let rows = data.listeners.iter().map(|l| {
            Row::new(vec![
                Cell::from(fit::address(&l.addr, addr_w)),
                Cell::from(if l.proxy_protocol { "PROXY" } else { "-" }),
                match l.kind {
                    // An http listener holds no routes: it redirects (its detail says where).
                    mc_proxy_shared::ListenerKind::Http => right("http".to_owned()),
                    mc_proxy_shared::ListenerKind::Tls => {
                        right(fit::count(u64::from(l.route_count)))
                    }
                },
                figure(fit::count(l.active_connections), stale),
                figure(fit::count(l.accepted), stale),
                figure(fit::count(l.resets), stale),
                figure(fit::count(l.blocked), stale),
            ])
        });
        let mut widths = vec![Constraint::Length(addr_w as u16)];
        widths.extend(cols.iter().map(|c| Constraint::Length(c.width)));
        let mut header = vec![Cell::from("LISTENER")];
        header.extend(cols.iter().map(|c| Cell::from(c.name)));
        let title = format!(
            "listeners [{}/{}]",
            if data.listeners.is_empty() {
                0
            } else {
                self.listener_sel.index() + 1
            },
            data.listeners.len()
        );
        let table = Table::new(rows, widths)
            .header(Row::new(header).style(bold()))
            .row_highlight_style(selected())
            .block(pane_block(&title, area.width, self.pane == Pane::Listeners));
        let mut state = TableState::default()
            .with_selected((!data.listeners.is_empty()).then_some(self.listener_sel.index()));
        frame.render_stateful_widget(table, area, &mut state);
    }

    fn render_traffic(&self, data: &Data, frame: &mut Frame<'_>, area: Rect) {
        let Some(route) = self.route(data) else {
            frame.render_widget(pane_block("traffic", area.width, false), area);
            return;
        };
        let inner_width = usize::from(area.width.saturating_sub(2));
        let shown: Vec<_> = route.history.iter().rev().take(inner_width).rev().collect();
        // The span is measured from the samples drawn, so the title cannot promise more history
        // than the bars show.
        let span = match (shown.first(), route.history.back()) {
            (Some((first, _)), Some((last, _))) => {
                last.saturating_duration_since(*first).as_secs() + 1
            }
            _ => 0,
        };
        let title = format!(
            "traffic, last {span}s: in {} out {} | {}",
            fit::byte_rate(route.rate.in_bps),
            fit::byte_rate(route.rate.out_bps),
            route.route.hostname,
        );
        let bars: Vec<u64> = shown
            .iter()
            .map(|(_, r)| (r.in_bps + r.out_bps).round() as u64)
            .collect();
        let style = if data.stale_since().is_some() {
            stale_style()
        } else {
            Style::default().fg(Color::Green)
        };
        let sparkline = Sparkline::default()
            .block(pane_block(&title, area.width, false))
            .data(bars)
            .style(style);
        frame.render_widget(sparkline, area);
    }

    fn render_log(&self, data: &Data, frame: &mut Frame<'_>, area: Rect) {
        let height = usize::from(area.height.saturating_sub(2));
        let width = usize::from(area.width.saturating_sub(2));
        let lines: Vec<&str> = data.log_shown(self.log_filter).rev().take(height).collect();
        let items: Vec<ListItem<'_>> = lines
            .into_iter()
            .rev()
            .map(|line| ListItem::new(fit::end(line, width)))
            .collect();
        let title = match self.log_filter.title() {
            Some(only) => format!("events: {only} (v)"),
            None => "events".to_owned(),
        };
        frame.render_widget(
            List::new(items).block(pane_block(&title, area.width, false)),
            area,
        );
    }
}

impl Component for RoutesView {
    fn context(&self) -> Context {
        if self.filtering {
            Context::Filter
        } else {
            Context::Routes
        }
    }

    fn on_key(&mut self, key: &KeyEvent, ctx: &Ctx<'_>) -> Outcome {
        let data = ctx.data;
        if self.filtering {
            self.filtering = filter_key(&mut self.filter, key);
            return Outcome::Stay;
        }
        let Some(command) = input::lookup(Context::Routes, key, data.read_only) else {
            return Outcome::Stay;
        };
        if let Some(open) = self.open(command, ctx) {
            return open;
        }
        if let Some(rows) = command.rows() {
            self.move_selection(data, rows);
            return Outcome::Stay;
        }
        match command {
            Command::Quit => return Outcome::Send(super::app::Action::Quit),
            Command::Filter => {
                self.filter.clear();
                self.filtering = true;
            }
            Command::Connections => return Outcome::Show(View::Connections),
            Command::Fleet => return Outcome::Show(View::Fleet),
            Command::Talkers => return Outcome::Show(View::Talkers),
            Command::Sort => self.sort = self.sort.next(),
            Command::EventFilter => self.log_filter = self.log_filter.next(),
            Command::SwitchPane => {
                self.pane = match self.pane {
                    Pane::Listeners => Pane::Routes,
                    Pane::Routes => Pane::Listeners,
                };
            }
            Command::Close => {
                self.filter.clear();
                return Outcome::ClearNote;
            }
            _ => {}
        }
        Outcome::Stay
    }

    /// Listeners, routes, the traffic chart and the events, top to bottom.
    fn render(&self, ctx: &Ctx<'_>, frame: &mut Frame<'_>, area: Rect) {
        let data = ctx.data;
        let listeners_h = (data.listeners.len() as u16 + 3).clamp(4, 7);
        // The routes table gets most of the room; on short terminals the chart and the log shrink
        // to keep it, and under 18 rows of body (a 60x16 terminal has 14) the chart goes: with it
        // the routes box would have no room left for a single row.
        let short = area.height < 22; // the body of a terminal under 24 rows
        let traffic_h = match area.height {
            ..18 => 0,
            18..30 => 4,
            _ => 5,
        };
        let [listeners, routes, traffic, log] = Layout::vertical([
            Constraint::Length(if short { 4 } else { listeners_h }),
            Constraint::Fill(2),
            Constraint::Length(traffic_h),
            if short {
                Constraint::Length(3)
            } else {
                Constraint::Fill(1)
            },
        ])
        .areas(area);
        self.render_listeners(data, frame, listeners);
        self.render_routes(data, frame, routes);
        if traffic.height > 0 {
            self.render_traffic(data, frame, traffic);
        }
        self.render_log(data, frame, log);
    }
}

/// The routes table's columns for one frame: which ones the width allows, and how the two
/// text columns (hostname, backend) share what is left.
struct RouteColumns {
    layout: RouteLayout,
    /// The P50/P99 column (wide, with an L7 route in view).
    latency: bool,
    /// M, then the fixed columns after BACKEND (and UP).
    cols: Vec<Col>,
    host_w: usize,
    backend_w: usize,
    /// The UP column's width, when a visible route has several members (issue 28).
    up_w: Option<usize>,
}

impl RouteColumns {
    fn new(routes: &[&RouteView], inner: usize) -> RouteColumns {
        let layout = match inner {
            100.. => RouteLayout::Wide,
            70.. => RouteLayout::Medium,
            _ => RouteLayout::Narrow,
        };
        let latency =
            layout == RouteLayout::Wide && routes.iter().any(|r| r.route.mode == Mode::L7);
        let cols = fixed_columns(layout, latency);
        // Two flexible text columns and one space between every pair of columns.
        let fixed: usize = cols.iter().map(|c| usize::from(c.width) + 1).sum::<usize>() + 1;
        let flex = inner.saturating_sub(fixed).max(2);
        let need_host = routes
            .iter()
            .map(|r| fit::width(&r.route.hostname))
            .max()
            .unwrap_or(8);
        let need_backend = routes
            .iter()
            .map(|r| match r.not_served {
                None => fit::width(&members_cell(&r.route, usize::MAX)),
                Some(_) => fit::width(NOT_SERVED),
            })
            .max()
            .unwrap_or(7);
        let up_w = routes
            .iter()
            .filter(|r| r.not_served.is_none())
            .filter_map(|r| up_cell(r).map(|(text, _)| fit::width(&text)))
            .max()
            .map(|w| w.clamp(6, 8));
        let flex = match up_w {
            Some(w) => flex.saturating_sub(w + 1).max(2),
            None => flex,
        };
        let (host_w, backend_w) = split(flex, need_host.max(8), need_backend.max(7));
        RouteColumns {
            layout,
            latency,
            cols,
            host_w,
            backend_w,
            up_w,
        }
    }

    fn widths(&self) -> Vec<Constraint> {
        let mut widths = vec![
            Constraint::Length(self.host_w as u16),
            Constraint::Length(2),
            Constraint::Length(self.backend_w as u16),
        ];
        if let Some(w) = self.up_w {
            widths.push(Constraint::Length(w as u16));
        }
        widths.extend(self.cols[1..].iter().map(|c| Constraint::Length(c.width)));
        widths
    }

    fn header(&self) -> Row<'static> {
        let mut header = vec![
            Cell::from("HOSTNAME"),
            Cell::from("M"),
            Cell::from("BACKEND"),
        ];
        if self.up_w.is_some() {
            header.push(Cell::from("UP"));
        }
        header.extend(self.cols[1..].iter().map(|c| {
            if c.name == "FL" {
                Cell::from(c.name)
            } else {
                Cell::from(Line::from(c.name).alignment(Alignment::Right))
            }
        }));
        Row::new(header).style(bold())
    }

    /// One route's row, coloured by its health or its certificate's, the worse of the two
    /// (red when it is not served).
    fn row(&self, r: &RouteView, stale: bool, cert: Health) -> Row<'static> {
        let right = |s: String| figure(s, stale);
        let mut cells = vec![
            Cell::from(fit::hostname(&r.route.hostname, self.host_w)),
            Cell::from(r.route.mode.to_string()),
        ];
        if r.not_served.is_some() {
            // Stored but not served: no traffic to show; the detail says why.
            cells.push(Cell::from(fit::end(NOT_SERVED, self.backend_w)));
            if self.up_w.is_some() {
                cells.push(Cell::from(""));
            }
            cells.extend(self.cols[1..].iter().map(|_| right("-".into())));
            return Row::new(cells).style(not_served_style());
        }
        cells.push(Cell::from(members_cell(&r.route, self.backend_w)));
        if let Some(w) = self.up_w {
            cells.push(up_figure(r, w, stale));
        }
        cells.extend(self.traffic_cells(r, stale));
        Row::new(cells).style(health_style(r.health().max(cert)))
    }

    /// The figures after the backend: connections, bytes and rates, errors, latency.
    fn traffic_cells(&self, r: &RouteView, stale: bool) -> Vec<Cell<'static>> {
        let right = |s: String| figure(s, stale);
        let s = &r.stats;
        let recent = r.recent();
        let l7 = r.route.mode == Mode::L7;
        let conns = || {
            right(format!(
                "{}/{}",
                fit::count(s.active_connections),
                fit::count(s.total_connections)
            ))
        };
        let rps = || {
            right(if l7 {
                fit::per_sec(recent.rps())
            } else {
                "-".into()
            })
        };
        let mut cells = Vec::new();
        match self.layout {
            RouteLayout::Wide => {
                cells.push(Cell::from(flags(r)));
                cells.push(conns());
                cells.push(right(format!(
                    "{} {}",
                    fit::bytes(s.bytes_in),
                    fit::byte_rate(r.rate.in_bps)
                )));
                cells.push(right(format!(
                    "{} {}",
                    fit::bytes(s.bytes_out),
                    fit::byte_rate(r.rate.out_bps)
                )));
                cells.push(rps());
            }
            RouteLayout::Medium => {
                cells.push(conns());
                cells.push(right(fit::byte_rate(r.rate.in_bps)));
                cells.push(right(fit::byte_rate(r.rate.out_bps)));
                cells.push(rps());
            }
            RouteLayout::Narrow => {
                cells.push(right(fit::byte_rate(r.rate.in_bps)));
                cells.push(right(fit::byte_rate(r.rate.out_bps)));
            }
        }
        cells.push(right(
            recent
                .error_share(r.route.mode)
                .map_or_else(|| "-".into(), fit::percent),
        ));
        if self.latency {
            cells.push(right(match (r.route.mode, recent.latency) {
                (Mode::L7, Some(l)) => {
                    format!("{}/{}", fit::quantile(l.p50), fit::quantile(l.p99))
                }
                _ => "-".into(),
            }));
        }
        cells
    }
}

/// The UP cell: `N/M up` in its colour (grey when the figures are stale).
fn up_figure(r: &RouteView, w: usize, stale: bool) -> Cell<'static> {
    match up_cell(r) {
        Some((text, color)) => {
            let style = if stale {
                stale_style()
            } else {
                Style::default().fg(color)
            };
            Cell::from(Span::styled(fit::end(&text, w), style))
        }
        None => Cell::from(""),
    }
}

/// M and the fixed-width columns `layout` shows after the backend.
fn fixed_columns(layout: RouteLayout, latency: bool) -> Vec<Col> {
    let col = |name, width| Col { name, width };
    let mut cols = vec![col("M", 2)];
    match layout {
        RouteLayout::Wide => cols.extend([
            col("FL", 2),
            col("CONNS", 9),
            col("IN", 11),
            col("OUT", 11),
            col("RQ/S", 6),
        ]),
        RouteLayout::Medium => cols.extend([
            col("CONNS", 9),
            col("IN/S", 6),
            col("OUT/S", 6),
            col("RQ/S", 6),
        ]),
        RouteLayout::Narrow => cols.extend([col("IN/S", 6), col("OUT/S", 6)]),
    }
    cols.push(col("ERR", 4));
    if latency {
        cols.push(col("P50/P99", 11));
    }
    cols
}

fn flags(r: &RouteView) -> String {
    let mut f = String::new();
    if r.route.send_proxy_protocol {
        f.push('P');
    }
    if r.route.backend_tls {
        f.push('T');
    }
    if f.is_empty() { "-".into() } else { f }
}

/// The routes table's layouts, by the inner width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteLayout {
    /// ≥ 100: flags, totals and rates.
    Wide,
    /// ≥ 70 (an 80-column terminal): rates only.
    Medium,
    /// Below: no connections column, no request rate.
    Narrow,
}

/// The routes table's backend cell: the first member's address, then `+N` for the others,
/// so that a cut address is never taken for the whole set (the detail lists them all).
pub fn members_cell(route: &mc_proxy_shared::Route, w: usize) -> String {
    let first = route.backends.first().map_or("", |b| b.address.as_str());
    match route.backends.len() {
        0 | 1 => fit::address(first, w),
        n => {
            let more = format!(" +{}", n - 1);
            format!(
                "{}{more}",
                fit::address(first, w.saturating_sub(more.len()).max(1))
            )
        }
    }
}

/// The routes table's UP cell of a route with several members: `N/M up`, members up over
/// all members, from the live member figures, green when all are up, grey when the others
/// are `unknown` (nothing wrong is known: a new route before its first connection or check),
/// yellow when some are not up, red when none takes traffic. `-` before the daemon sent any
/// figures; `None` for a single backend.
pub fn up_cell(r: &RouteView) -> Option<(String, Color)> {
    let all = r.route.backends.len();
    if all < 2 {
        return None;
    }
    if r.stats.members.is_empty() {
        return Some(("-".into(), Color::Gray));
    }
    let count = |state: mc_proxy_shared::BackendState| {
        r.route
            .backends
            .iter()
            .filter(|b| {
                r.stats
                    .members
                    .iter()
                    .any(|m| m.address == b.address && m.state == state)
            })
            .count()
    };
    let up = count(mc_proxy_shared::BackendState::Up);
    let unknown = count(mc_proxy_shared::BackendState::Unknown);
    let color = if up == all {
        Color::Green
    } else if up + unknown == all {
        Color::Gray
    } else if up + unknown == 0 {
        Color::Red
    } else {
        Color::Yellow
    };
    Some((format!("{up}/{all} up"), color))
}
