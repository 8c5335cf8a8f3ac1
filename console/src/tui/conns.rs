//! The connections view: the open connections as last polled (`ListConnections`, about
//! once a second while the view is shown), with a sort order, a filter and a selection; its
//! keys (context `Connections`, `Filter` while typing a filter) and its drawing.
//!
//! No I/O. Invariants: the list is replaced whole by each poll (the daemon is the truth; a
//! `ConnectionClosed` event only removes a row early), and the selection is kept by connection
//! id, so it stays on its connection while rows above it come and go.

use std::time::Instant;

use crossterm::event::KeyEvent;
use mc_proxy_shared::client::{Connection, ConnectionList};
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState};

use super::app::{Action, View};
use super::component::{Component, Ctx, Outcome};
use super::confirm::Confirm;
use super::form::filter_key;
use super::help::Help;
use super::input::{self, Command, Context};
use super::order;
use super::select::Selection;
use super::widgets::{bold, pane_block, right, selected, split};
use crate::format::fit;

/// Connection order (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnSort {
    /// Oldest first.
    #[default]
    Age,
    /// Most bytes (in + out) first.
    Bytes,
    /// By client address.
    Client,
    /// By route, then age.
    Route,
}

impl ConnSort {
    /// As the title shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnSort::Age => "age",
            ConnSort::Bytes => "bytes",
            ConnSort::Client => "client",
            ConnSort::Route => "route",
        }
    }

    /// The next order.
    pub fn next(self) -> ConnSort {
        match self {
            ConnSort::Age => ConnSort::Bytes,
            ConnSort::Bytes => ConnSort::Client,
            ConnSort::Client => ConnSort::Route,
            ConnSort::Route => ConnSort::Age,
        }
    }
}

/// The connections view.
#[derive(Debug, Clone, Default)]
pub struct ConnView {
    /// The last poll's answer.
    pub list: ConnectionList,
    /// When it came (`None`: nothing polled yet).
    pub at: Option<Instant>,
    /// Order.
    pub sort: ConnSort,
    /// Shown when client, hostname, route, listener or backend contains it.
    pub filter: String,
    /// Selected connection, by id.
    pub sel: Selection,
    /// The filter is being typed (context `Filter`).
    pub filtering: bool,
}

impl ConnView {
    /// The connections passing the filter, in the chosen order.
    pub fn visible(&self) -> Vec<&Connection> {
        let f = self.filter.to_lowercase();
        let mut rows: Vec<&Connection> = self
            .list
            .connections
            .iter()
            .filter(|c| {
                f.is_empty()
                    || [&c.client, &c.hostname, &c.route, &c.listener, &c.backend]
                        .iter()
                        .any(|s| s.to_lowercase().contains(&f))
            })
            .collect();
        match self.sort {
            ConnSort::Age => rows.sort_by(|a, b| b.age.cmp(&a.age).then(a.id.cmp(&b.id))),
            ConnSort::Bytes => rows.sort_by(|a, b| {
                (b.bytes_in + b.bytes_out)
                    .cmp(&(a.bytes_in + a.bytes_out))
                    .then(a.id.cmp(&b.id))
            }),
            ConnSort::Client => rows.sort_by(|a, b| order::natural(&a.client, &b.client)),
            ConnSort::Route => {
                rows.sort_by(|a, b| order::route_name(&a.route, &b.route).then(b.age.cmp(&a.age)))
            }
        }
        rows
    }

    /// The selected connection.
    pub fn selected(&self) -> Option<&Connection> {
        self.visible().get(self.sel.index()).copied()
    }

    fn keys(&self) -> Vec<String> {
        self.visible().iter().map(|c| c.id.to_string()).collect()
    }

    /// Re-finds the selection after a change.
    pub fn follow(&mut self) {
        let keys = self.keys();
        self.sel.follow(&keys);
    }

    /// Moves the selection.
    pub fn step(&mut self, delta: isize) {
        let keys = self.keys();
        self.sel.step(&keys, delta);
    }

    /// A new poll answer.
    pub fn update(&mut self, list: ConnectionList, at: Instant) {
        self.list = list;
        self.at = Some(at);
    }

    /// Connection `id` closed (event): drop it before the next poll does.
    pub fn closed(&mut self, id: u64) {
        let before = self.list.connections.len();
        self.list.connections.retain(|c| c.id != id);
        if self.list.connections.len() < before {
            self.list.total = self.list.total.saturating_sub(1);
        }
    }

    /// `d`: "close this connection?" about the selected one.
    fn confirm_close(&self) -> Option<Confirm> {
        let c = self.selected()?;
        let what = format!(
            "#{} {} -> {} ({}, open {}s)",
            c.id,
            c.client,
            c.route,
            c.mode,
            c.age.as_secs()
        );
        Some(Confirm::CloseConnection { id: c.id, what })
    }
}

impl Component for ConnView {
    fn context(&self) -> Context {
        if self.filtering {
            Context::Filter
        } else {
            Context::Connections
        }
    }

    fn on_key(&mut self, key: &KeyEvent, ctx: &Ctx<'_>) -> Outcome {
        if self.filtering {
            self.filtering = filter_key(&mut self.filter, key);
            return Outcome::Stay;
        }
        let Some(command) = input::lookup(Context::Connections, key, ctx.data.read_only) else {
            return Outcome::Stay;
        };
        if let Some(rows) = command.rows() {
            self.step(rows);
            return Outcome::Stay;
        }
        match command {
            Command::Quit => return Outcome::Send(Action::Quit),
            Command::Help => return Outcome::open(Help::new(View::Connections, None)),
            Command::Filter => {
                self.filter.clear();
                self.filtering = true;
            }
            Command::Sort => self.sort = self.sort.next(),
            Command::Close | Command::Connections => return Outcome::Show(View::Routes),
            Command::Delete => {
                if let Some(confirm) = self.confirm_close() {
                    return Outcome::open(confirm);
                }
            }
            _ => {}
        }
        Outcome::Stay
    }

    fn render(&self, ctx: &Ctx<'_>, frame: &mut Frame<'_>, area: Rect) {
        let rows = self.visible();
        let columns = ConnColumns::new(&rows, usize::from(area.width.saturating_sub(2)));
        let title = self.title(ctx, rows.len());
        let table = Table::new(rows.iter().map(|c| columns.row(c)), columns.widths())
            .header(columns.header())
            .row_highlight_style(selected())
            .block(pane_block(&title, area.width, true));
        let mut state =
            TableState::default().with_selected((!rows.is_empty()).then_some(self.sel.index()));
        frame.render_stateful_widget(table, area, &mut state);
        if rows.is_empty() && area.height > 3 {
            let msg = match (self.at, self.filter.is_empty()) {
                (None, _) => "asking the daemon...",
                (Some(_), false) => "no connection matches the filter",
                (Some(_), true) => "no open connections",
            };
            let inner = Rect {
                x: area.x + 2,
                y: area.y + 2,
                width: area.width.saturating_sub(4),
                height: 1,
            };
            frame.render_widget(Paragraph::new(msg), inner);
        }
    }
}

impl ConnView {
    /// `connections [n/m] sort:age (first N of M) filter:x | 1s ago`.
    fn title(&self, ctx: &Ctx<'_>, count: usize) -> String {
        let position = if count == 0 { 0 } else { self.sel.index() + 1 };
        let mut title = format!(
            "connections [{position}/{count}] sort:{}",
            self.sort.as_str()
        );
        if self.list.truncated() {
            title.push_str(&format!(
                " (first {} of {})",
                self.list.connections.len(),
                self.list.total
            ));
        }
        if !self.filter.is_empty() || self.filtering {
            title.push_str(&format!(" filter:{}", self.filter));
        }
        if let Some(at) = self.at {
            title.push_str(&format!(
                " | {}s ago",
                ctx.data.now.saturating_duration_since(at).as_secs()
            ));
        }
        title
    }
}

/// The connections table's text columns for one frame: CLIENT, LISTENER and ROUTE share
/// what M, AGE, IN and OUT leave; BACKEND too when the table is 100 columns wide.
struct ConnColumns {
    wide: bool,
    client_w: usize,
    listener_w: usize,
    route_w: usize,
    backend_w: usize,
}

impl ConnColumns {
    fn new(rows: &[&Connection], inner: usize) -> ConnColumns {
        let wide = inner >= 100;
        let fixed = 2 + 4 + 4 + 4 + 8;
        let flex = inner.saturating_sub(fixed);
        let need =
            |f: fn(&Connection) -> &str| rows.iter().map(|c| fit::width(f(c))).max().unwrap_or(6);
        // Addresses get what they need (up to an IPv6 address and port) while the route keeps 12
        // columns; past that the wider of the two gives way first.
        let (mut client_w, mut listener_w) = (
            need(|c| &c.client).clamp(6, 22),
            need(|c| &c.listener).clamp(8, 22),
        );
        while client_w + listener_w + 12 > flex && (client_w > 6 || listener_w > 8) {
            if client_w >= listener_w && client_w > 6 {
                client_w -= 1;
            } else {
                listener_w -= 1;
            }
        }
        let rest = flex.saturating_sub(client_w + listener_w + if wide { 1 } else { 0 });
        let (route_w, backend_w) = if wide {
            split(rest, need(|c| &c.route), need(|c| &c.backend))
        } else {
            (rest, 0)
        };
        ConnColumns {
            wide,
            client_w,
            listener_w,
            route_w,
            backend_w,
        }
    }

    fn widths(&self) -> Vec<Constraint> {
        let mut widths = vec![
            Constraint::Length(self.client_w as u16),
            Constraint::Length(self.listener_w as u16),
            Constraint::Length(self.route_w as u16),
        ];
        if self.wide {
            widths.push(Constraint::Length(self.backend_w as u16));
        }
        widths.extend([2, 4, 4, 4].map(Constraint::Length));
        widths
    }

    fn header(&self) -> Row<'static> {
        let mut header = vec![
            Cell::from("CLIENT"),
            Cell::from("LISTENER"),
            Cell::from("ROUTE"),
        ];
        if self.wide {
            header.push(Cell::from("BACKEND"));
        }
        header.extend([
            Cell::from("M"),
            right("AGE".into()),
            right("IN".into()),
            right("OUT".into()),
        ]);
        Row::new(header).style(bold())
    }

    fn row(&self, c: &Connection) -> Row<'static> {
        let mut cells = vec![
            Cell::from(fit::address(&c.client, self.client_w)),
            Cell::from(fit::address(&c.listener, self.listener_w)),
            Cell::from(fit::hostname(&c.route, self.route_w)),
        ];
        if self.wide {
            cells.push(Cell::from(fit::address(&c.backend, self.backend_w)));
        }
        cells.extend([
            Cell::from(fit::end(c.mode.as_str(), 2)),
            right(fit::age(c.age.as_secs())),
            right(fit::bytes(c.bytes_in)),
            right(fit::bytes(c.bytes_out)),
        ]);
        Row::new(cells)
    }
}
