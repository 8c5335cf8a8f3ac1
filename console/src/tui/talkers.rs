//! The talkers view: the client addresses that hit limits most (listeners' per-client
//! connection limits, routes' access lists, request rates and request caps), most first, as
//! last polled (`ListTalkers`, once a second while the view is shown); its keys (context
//! `Talkers`) and its drawing.
//!
//! No I/O. Invariants: the list is replaced whole by each poll and the selection is kept by
//! address; a count that the daemon's bounded table may have inherited reads `≤N`, never a
//! plain figure; times are as of the poll, not the screen's clock.

use crossterm::event::KeyEvent;
use mc_proxy_shared::client::Talker;
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState};

use super::app::{Action, View};
use super::component::{Component, Ctx, Outcome};
use super::help::Help;
use super::input::{self, Command, Context};
use super::select::Selection;
use super::widgets::{bold, pane_block, right, selected};
use crate::format::{fit, now_ms, talker_hits};

/// The talkers view.
#[derive(Debug, Clone, Default)]
pub struct TalkersView {
    /// The last poll's answer, most first.
    pub list: Vec<Talker>,
    /// The Unix time (ms) the last poll came (`None`: nothing polled yet).
    pub at_ms: Option<u64>,
    /// Selected address.
    pub sel: Selection,
}

impl TalkersView {
    /// Takes a poll.
    pub fn update(&mut self, list: Vec<Talker>) {
        self.list = list;
        self.at_ms = Some(now_ms());
        self.follow();
    }

    fn keys(list: &[Talker]) -> Vec<&str> {
        list.iter().map(|t| t.client.as_str()).collect()
    }

    /// Re-finds the selection.
    pub fn follow(&mut self) {
        self.sel.follow(&Self::keys(&self.list));
    }

    fn step(&mut self, delta: isize) {
        self.sel.step(&Self::keys(&self.list), delta);
    }
}

impl Component for TalkersView {
    fn context(&self) -> Context {
        Context::Talkers
    }

    fn on_key(&mut self, key: &KeyEvent, ctx: &Ctx<'_>) -> Outcome {
        let Some(command) = input::lookup(Context::Talkers, key, ctx.data.read_only) else {
            return Outcome::Stay;
        };
        if let Some(rows) = command.rows() {
            self.step(rows);
            return Outcome::Stay;
        }
        match command {
            Command::Help => return Outcome::open(Help::new(View::Talkers, None)),
            Command::Quit => return Outcome::Send(Action::Quit),
            Command::Close | Command::Talkers => return Outcome::Show(View::Routes),
            _ => {}
        }
        Outcome::Stay
    }

    fn render(&self, _ctx: &Ctx<'_>, frame: &mut Frame<'_>, area: Rect) {
        let title = match self.at_ms {
            None => "clients hitting limits: polling...".to_owned(),
            Some(_) => format!(
                "clients hitting limits: {} (most first, since start)",
                self.list.len()
            ),
        };
        let block = pane_block(&title, area.width, true);
        let inner = block.inner(area);
        frame.render_widget(block, area);
        if self.list.is_empty() {
            let text = if self.at_ms.is_some() {
                " no client hit a limit since the daemon started"
            } else {
                ""
            };
            frame.render_widget(Paragraph::new(text), inner);
            return;
        }
        let width = usize::from(inner.width);
        // A client is at most 24 columns (an IPv6 /64: four groups, `::/64`), kept whole; the
        // limit's name (17 at most) gives way first on a narrow terminal (cut with `…`, never
        // silently), the route takes the rest.
        let (client_w, hits_w, when_w) = (24, 7, 4);
        let rest = width.saturating_sub(client_w + hits_w + when_w + 4);
        let last_w = rest.saturating_sub(6).clamp(6, 17);
        let route_w = rest.saturating_sub(last_w).max(6);
        let now_ms = self.at_ms.unwrap_or(0);
        let rows = self.list.iter().map(|t| {
            Row::new(vec![
                Cell::from(fit::start(&t.client, client_w)),
                right(talker_hits(t, true)),
                Cell::from(fit::end(&t.last, last_w)),
                Cell::from(if t.route.is_empty() {
                    "-".to_owned()
                } else {
                    fit::hostname(&t.route, route_w)
                }),
                right(fit::age(now_ms.saturating_sub(t.last_ms) / 1000)),
            ])
        });
        let widths = [
            Constraint::Length(client_w as u16),
            Constraint::Length(hits_w as u16),
            Constraint::Length(last_w as u16),
            Constraint::Length(route_w as u16),
            Constraint::Length(when_w as u16),
        ];
        let header = Row::new(vec![
            Cell::from("CLIENT"),
            right("HITS".into()),
            Cell::from("LAST"),
            Cell::from("ROUTE"),
            right("AGO".into()),
        ])
        .style(bold());
        let mut state = TableState::default();
        state.select(Some(self.sel.index()));
        let table = Table::new(rows, widths)
            .header(header)
            .column_spacing(1)
            .row_highlight_style(selected());
        frame.render_stateful_widget(table, inner, &mut state);
    }
}
