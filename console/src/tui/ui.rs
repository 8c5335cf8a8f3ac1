//! Drawing the frame: the status line, the stale-figures banner, the main view, the key hints
//! and the popup on top. Each view and popup draws itself (its `Component::render`); shared
//! pieces are in `widgets`. No state changes and no I/O here, and no clock: times come from
//! `Data::now`.
//!
//! Layout, top to bottom: status line (with the last notice), the banner while the daemon is
//! unreachable, the routes view (listeners, routes, traffic, events) or the connections view,
//! key hints. Popups (form, details, firewall, help, questions) draw on top.
//!
//! Invariants: every cell is sized for its content and filled through `fit`, so nothing is ever
//! cut without a `…` and numbers keep their unit; the columns shown depend on the width (more
//! at 120 columns, fewer at 60), never the other way round. A detail box taller than the
//! terminal scrolls to its selected backend and marks each cut with a `▲ n more` / `▼ n more`
//! row. While the daemon is unreachable, live figures are grey and a red line says since when.
//! Below 60x16 only a "too small" notice is drawn. Only the 16 basic colours and
//! bold/reverse/dim are used, so it reads on any terminal an operator reaches over SSH.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};

use super::app::{App, View};
use super::component::Component;
use super::data::{Data, Link};
use super::input::{self, Context};
use super::widgets::{bold, stale_line, stale_style};
use crate::format::fit;

/// Smallest usable terminal.
pub const MIN_WIDTH: u16 = 60;
/// Smallest usable terminal.
pub const MIN_HEIGHT: u16 = 16;

/// Draws the whole console.
pub fn render(app: &App, frame: &mut Frame<'_>) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = format!(
            "terminal too small: {}x{} (mcproxyctl console needs {MIN_WIDTH}x{MIN_HEIGHT})",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    let data = app.data();
    let ctx = app.ctx();
    // While the daemon is unreachable a line under the status says the figures are old.
    let stale = data.stale_since().is_some();
    let [status, banner, body, hints] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(u16::from(stale)),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    render_status(data, frame, status);
    if let Some(line) = stale_line(data, usize::from(banner.width)) {
        frame.render_widget(Paragraph::new(line), banner);
    }
    match ctx.view {
        View::Routes => app.routes_view().render(&ctx, frame, body),
        View::Connections => app.conns().render(&ctx, frame, body),
        View::Fleet => app.fleet_view().render(&ctx, frame, body),
        View::Talkers => app.talkers().render(&ctx, frame, body),
    }
    render_hints(app, frame, hints);
    if let Some(popup) = app.popup() {
        popup.component().render(&ctx, frame, area);
    }
}

fn render_status(data: &Data, frame: &mut Frame<'_>, area: Rect) {
    let (link, style) = match &data.link {
        Link::Connected => ("connected".to_owned(), Style::default().fg(Color::Green)),
        Link::Connecting => (
            "connecting...".to_owned(),
            Style::default().fg(Color::Yellow),
        ),
        Link::Reconnecting(e) => (
            format!("reconnecting ({e})"),
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
    };
    let version = if data.version.is_empty() {
        "mc-proxy".to_owned()
    } else {
        format!("mc-proxy {}", data.version)
    };
    // The context first: with several nodes' consoles open, which one this is.
    let version = match &data.context {
        Some(name) => format!("[{name}] {version}"),
        None => version,
    };
    let open: u64 = data.listeners.iter().map(|l| l.active_connections).sum();
    let ro = if data.read_only { " | read-only" } else { "" };
    // A cluster node says how its link to the fleet's store is, before anything optional.
    let cluster = data.cluster.as_ref().map(|c| {
        (
            format!("{} | ", crate::format::cluster_link_short(c)),
            c.state == "connected",
        )
    });
    let head = format!(
        " {version} | up {} | ",
        crate::format::uptime(data.uptime_now())
    );
    let (cluster, cluster_style) = match cluster {
        Some((text, true)) => (text, bold()),
        Some((text, false)) => (
            text,
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
        None => (String::new(), bold()),
    };
    let open = format!("{} open", fit::count(open));
    let tail = format!("{ro} | ");
    let open_style = if data.stale_since().is_some() {
        stale_style()
    } else {
        bold()
    };
    let width = usize::from(area.width);
    let used = fit::width(&head) + fit::width(&cluster) + fit::width(&open) + fit::width(&tail);
    let link = fit::end(&link, width.saturating_sub(used));
    let used = used + fit::width(&link);
    let mut spans = vec![
        Span::styled(head, bold()),
        Span::styled(cluster, cluster_style),
        Span::styled(open, open_style),
        Span::styled(tail, bold()),
        Span::styled(link, style),
    ];
    // The notice takes what is left; its full text is in the event log.
    if let Some(note) = &data.note {
        let room = width.saturating_sub(used + 3);
        if room >= 8 {
            let style = if note.error {
                Style::default().fg(Color::Red)
            } else {
                Style::default().fg(Color::Cyan)
            };
            spans.push(Span::raw(" | "));
            spans.push(Span::styled(fit::end(&note.text, room), style));
        }
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The bottom line: the filter being typed, or the view's key hints.
fn render_hints(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let width = usize::from(area.width);
    let (filter, filtering) = match app.view() {
        View::Routes => (&app.routes_view().filter, app.routes_view().filtering),
        View::Connections => (&app.conns().filter, app.conns().filtering),
        View::Fleet | View::Talkers => (&app.routes_view().filter, false),
    };
    if filtering {
        let tail = format!("   {}  ctrl-u/w", super::form::hints(Context::Filter));
        let room = width.saturating_sub(10 + fit::width(&tail) + 1);
        let line = Line::from(vec![
            Span::styled(" filter: ", bold()),
            Span::raw(format!("{}_", fit::start(filter, room))),
            Span::raw(tail),
        ]);
        frame.render_widget(Paragraph::new(line), area);
        return;
    }
    let context = match app.view() {
        View::Routes => Context::Routes,
        View::Connections => Context::Connections,
        View::Fleet => Context::Fleet,
        View::Talkers => Context::Talkers,
    };
    // Whole hints only: drop the ones that do not fit, but always keep help.
    let hints: Vec<&str> = input::shown(context, app.data().read_only)
        .filter_map(|b| b.hint)
        .collect();
    let help = "? help";
    let mut line = String::from(" ");
    for h in hints.iter().filter(|h| **h != help) {
        if fit::width(&line) + fit::width(h) + 2 + fit::width(help) <= width {
            line.push_str(h);
            line.push_str("  ");
        }
    }
    line.push_str(help);
    frame.render_widget(Paragraph::new(fit::end(&line, width)), area);
}
