//! The key list: the bindings of the contexts reachable from where it was opened, drawn from
//! the key table (editing keys hidden read-only), scrolled with j/k (context `Help`); any
//! other key closes it, back to the route detail when it was opened from there.
//!
//! No I/O. Invariant: what it lists is `input::KEYS`, so it says what the keys do.

use crossterm::event::KeyEvent;
use ratatui::Frame;
use ratatui::layout::{Alignment, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use super::app::View;
use super::component::{Component, Ctx, Outcome};
use super::health::{ERROR_SHARE, WARN_SHARE, WINDOW};
use super::input::{self, Command, Context};
use super::route_detail::RouteDetail;
use super::widgets::{bold, centered, wrapped_height};
use crate::format::fit;

/// The help box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Help {
    /// Scrolled down by this many lines.
    pub scroll: u16,
    /// The view it was opened over.
    pub view: View,
    /// Opened from the route detail: it lists the detail's keys and closes back to it.
    pub back: Option<RouteDetail>,
}

impl Help {
    /// The key list over `view`, or over the route detail `back`.
    pub fn new(view: View, back: Option<RouteDetail>) -> Help {
        Help {
            scroll: 0,
            view,
            back,
        }
    }

    /// The contexts listed, in order.
    fn contexts(&self) -> Vec<Context> {
        match (&self.back, self.view) {
            // Asked from the route detail: its keys only (any key goes back to it).
            (Some(_), _) => vec![Context::RouteDetail],
            (None, View::Connections) => vec![
                Context::Connections,
                Context::Filter,
                Context::Confirm,
                Context::Help,
                Context::Text,
            ],
            (None, View::Fleet) => vec![Context::Fleet, Context::Help],
            (None, View::Talkers) => vec![Context::Talkers, Context::Help],
            (None, View::Routes) => vec![
                Context::Routes,
                Context::RouteDetail,
                Context::ListenerDetail,
                Context::Form,
                Context::Filter,
                Context::Firewall,
                Context::NewRule,
                Context::Confirm,
                Context::Help,
                Context::Text,
            ],
        }
    }
}

impl Component for Help {
    fn context(&self) -> Context {
        Context::Help
    }

    fn on_key(&mut self, key: &KeyEvent, ctx: &Ctx<'_>) -> Outcome {
        match input::lookup(Context::Help, key, false) {
            Some(Command::Down) => self.scroll += 1,
            Some(Command::Up) => self.scroll = self.scroll.saturating_sub(1),
            // Closing the detail's help goes back to the detail.
            _ => {
                return match &self.back {
                    Some(detail) if ctx.route.is_some() => Outcome::open(detail.clone()),
                    _ => Outcome::Close(None),
                };
            }
        }
        Outcome::Stay
    }

    fn render(&self, ctx: &Ctx<'_>, frame: &mut Frame<'_>, area: Rect) {
        let mut lines: Vec<Line<'_>> = Vec::new();
        for context in self.contexts() {
            lines.push(Line::from(Span::styled(
                context.title(),
                Style::default()
                    .fg(Color::Cyan)
                    .add_modifier(Modifier::BOLD),
            )));
            for b in input::shown(context, ctx.data.read_only) {
                lines.push(Line::from(vec![
                    Span::styled(format!("{:<19}", b.label), bold()),
                    Span::raw(b.help),
                ]));
            }
        }
        if self.view == View::Fleet {
            lines.push(Line::from(format!(
                "nodes: every context, and every node the cluster registry names (a dash where only the node could tell). REQ/S counts L7 requests and L4 connections; ERR is their failed share (5xx, backend errors); both over the last {}s. LAG: store revisions not applied yet. * marks the node shown.",
                super::fleet_link::INTERVAL.as_secs()
            )));
        }
        if self.view == View::Routes && self.back.is_none() {
            lines.push(Line::from(format!(
                "traffic: one bar per stats snapshot (1 s), newest right; the title says the span. Colours and ERR: error share over the last {}s, yellow above {}, red above {}.",
                WINDOW.as_secs(),
                fit::percent(WARN_SHARE),
                fit::percent(ERROR_SHARE)
            )));
        }
        let w = area.width.min(84);
        let total = wrapped_height(&lines, w.saturating_sub(2));
        let room = area.height.saturating_sub(3);
        let footer = if total > room {
            format!(
                "j/k: scroll ({}/{})  other keys: close",
                self.scroll.min(total - room) + 1,
                total - room + 1
            )
        } else if self.back.is_some() {
            "any key: back to the route".to_owned()
        } else {
            "any key: close".to_owned()
        };
        let scroll = self.scroll.min(total.saturating_sub(room));
        let rect = centered(area, w, (total + 3).min(area.height));
        frame.render_widget(Clear, rect);
        let block = Block::default()
            .borders(Borders::ALL)
            .title(" keys ")
            .title_bottom(Line::from(format!(" {footer} ")).alignment(Alignment::Center))
            .border_style(Style::default().fg(Color::Cyan));
        frame.render_widget(
            Paragraph::new(Text::from(lines))
                .wrap(Wrap { trim: false })
                .scroll((scroll, 0))
                .block(block),
            rect,
        );
    }
}
