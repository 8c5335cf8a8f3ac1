//! Drawing: turns an `&App` into widgets. No state changes and no I/O here.
//!
//! Layout, top to bottom: status line, listeners, routes of the selected listener, traffic of
//! the selected route, event log, key hints. Everything fits 80x24; below 60x16 only a "too
//! small" notice is drawn. Only the 16 basic colours and bold/reverse are used, so it reads on
//! any terminal an operator reaches over SSH.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, List, ListItem, Paragraph, Row, Sparkline, Table, TableState, Wrap,
};

use super::app::{App, Field, Form, Link, Pane, RouteView, Screen};
use super::input::KEYS;
use crate::ctl::human_bytes;
use mc_proxy_shared::Mode;

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
    let listeners_h = (app.listeners.len() as u16 + 3).clamp(4, 7);
    let [status, listeners, routes, traffic, log, hints] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(listeners_h),
        Constraint::Fill(3),
        Constraint::Length(5),
        Constraint::Fill(2),
        Constraint::Length(1),
    ])
    .areas(area);
    render_status(app, frame, status);
    render_listeners(app, frame, listeners);
    render_routes(app, frame, routes);
    render_traffic(app, frame, traffic);
    render_log(app, frame, log);
    render_hints(app, frame, hints);

    match &app.mode {
        Screen::Form(form) => render_form(form, frame, area),
        Screen::ConfirmDelete { listener, hostname } => {
            let text = vec![
                Line::from(format!("Delete route {hostname} from {listener}?")),
                Line::from("Open connections keep going; new ones are refused."),
                Line::from(""),
                Line::from(Span::styled("y: delete   any other key: cancel", bold())),
            ];
            popup(frame, area, "delete route", text, 60, 6);
        }
        Screen::Firewall(fw) => render_firewall(app, fw, frame, area),
        Screen::Help => render_help(frame, area),
        Screen::Normal | Screen::Filter => {}
    }
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn selected() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

fn pane_block(title: String, focused: bool) -> Block<'static> {
    let block = Block::default().borders(Borders::ALL).title(title);
    if focused {
        block.border_style(Style::default().fg(Color::Cyan))
    } else {
        block
    }
}

fn rate(bps: f64) -> String {
    format!("{}/s", human_bytes(bps.round() as u64))
}

fn render_status(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let up = app.uptime_now().as_secs();
    let (link, style) = match &app.link {
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
    let version = if app.version.is_empty() {
        "mc-proxy".to_owned()
    } else {
        format!("mc-proxy {}", app.version)
    };
    let open: u64 = app.listeners.iter().map(|l| l.active_connections).sum();
    let line = Line::from(vec![
        Span::styled(format!(" {version} "), bold()),
        Span::raw(format!(
            "| up {}h{:02}m{:02}s | {open} open | ",
            up / 3600,
            up / 60 % 60,
            up % 60
        )),
        Span::styled(link, style),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

fn render_listeners(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let rows = app.listeners.iter().map(|l| {
        Row::new(vec![
            l.addr.clone(),
            if l.proxy_protocol { "PROXY" } else { "-" }.to_owned(),
            l.route_count.to_string(),
            l.active_connections.to_string(),
            l.accepted.to_string(),
            l.resets.to_string(),
            l.blocked.to_string(),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(21),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(7),
        ],
    )
    .header(
        Row::new([
            "LISTENER", "PROXY", "ROUTES", "OPEN", "ACCEPTED", "RESETS", "BLOCKED",
        ])
        .style(bold()),
    )
    .row_highlight_style(selected())
    .block(pane_block(
        " listeners ".into(),
        app.pane == Pane::Listeners,
    ));
    let mut state = TableState::default()
        .with_selected((!app.listeners.is_empty()).then_some(app.listener_idx));
    frame.render_stateful_widget(table, area, &mut state);
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

fn render_routes(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let routes = app.visible_routes();
    let rows = routes.iter().map(|r| {
        let s = &r.stats;
        let l7 = if r.route.mode == Mode::L7 {
            format!("{:.1}/s {}", r.rate.rps, s.responses[4])
        } else {
            "-".into()
        };
        let mut row = Row::new(vec![
            Cell::from(r.route.hostname.clone()),
            Cell::from(r.route.mode.to_string()),
            Cell::from(r.route.backend.clone()),
            Cell::from(flags(r)),
            Cell::from(format!("{}/{}", s.active_connections, s.total_connections)),
            Cell::from(format!(
                "{} {}",
                human_bytes(s.bytes_in),
                rate(r.rate.in_bps)
            )),
            Cell::from(format!(
                "{} {}",
                human_bytes(s.bytes_out),
                rate(r.rate.out_bps)
            )),
            Cell::from(l7),
        ]);
        if s.backend_errors > 0 || s.responses[4] > 0 {
            row = row.style(Style::default().fg(Color::Yellow));
        }
        row
    });
    let title = match (app.listener(), app.filter.is_empty(), &app.mode) {
        (None, _, _) => " routes ".to_owned(),
        (Some(l), true, Screen::Filter) | (Some(l), false, _) => {
            format!(" routes of {} (filter: {}) ", l.addr, app.filter)
        }
        (Some(l), true, _) => format!(" routes of {} ", l.addr),
    };
    let table = Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Length(2),
            Constraint::Fill(1),
            Constraint::Length(3),
            Constraint::Length(7),
            Constraint::Length(11),
            Constraint::Length(11),
            Constraint::Length(9),
        ],
    )
    .header(
        Row::new([
            "HOSTNAME",
            "",
            "BACKEND",
            "FL",
            "CONNS",
            "IN",
            "OUT",
            "L7 RQ 5XX",
        ])
        .style(bold()),
    )
    .row_highlight_style(selected())
    .block(pane_block(title, app.pane == Pane::Routes));
    let mut state =
        TableState::default().with_selected((!routes.is_empty()).then_some(app.route_idx));
    frame.render_stateful_widget(table, area, &mut state);
    if routes.is_empty() && area.height > 3 {
        let inner = Rect {
            x: area.x + 2,
            y: area.y + 2,
            width: area.width.saturating_sub(4),
            height: 1,
        };
        let msg = if app.filter.is_empty() {
            "no routes: press a to add one"
        } else {
            "no route matches the filter"
        };
        frame.render_widget(Paragraph::new(msg), inner);
    }
}

fn render_traffic(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let Some(route) = app.route() else {
        frame.render_widget(pane_block(" traffic ".into(), false), area);
        return;
    };
    let title = format!(
        " traffic {}: in {} out {} ",
        route.route.hostname,
        rate(route.rate.in_bps),
        rate(route.rate.out_bps)
    );
    let block = pane_block(title, false);
    let inner_width = usize::from(block.inner(area).width);
    let data: Vec<u64> = route
        .history
        .iter()
        .rev()
        .take(inner_width)
        .rev()
        .map(|r| (r.in_bps + r.out_bps).round() as u64)
        .collect();
    let sparkline = Sparkline::default()
        .block(block)
        .data(data)
        .style(Style::default().fg(Color::Green));
    frame.render_widget(sparkline, area);
}

fn render_log(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let height = usize::from(area.height.saturating_sub(2));
    let items: Vec<ListItem<'_>> = app
        .log
        .iter()
        .rev()
        .take(height)
        .rev()
        .map(|line| ListItem::new(line.as_str()))
        .collect();
    frame.render_widget(
        List::new(items).block(pane_block(" events ".into(), false)),
        area,
    );
}

fn render_hints(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let line = match (&app.mode, &app.note) {
        (Screen::Filter, _) => Line::from(vec![
            Span::styled(" filter: ", bold()),
            Span::raw(format!("{}_", app.filter)),
            Span::raw("   enter: keep  esc: clear"),
        ]),
        (_, Some(note)) => Line::from(Span::styled(
            format!(" {note}"),
            Style::default().fg(Color::Cyan),
        )),
        _ => Line::from(" a add  e edit  d delete  f firewall  / filter  tab pane  ? help  q quit"),
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// A bordered box centred in `area`, cleared underneath.
fn popup(frame: &mut Frame<'_>, area: Rect, title: &str, text: Vec<Line<'_>>, w: u16, h: u16) {
    let rect = centered(area, w, h);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(text).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {title} "))
                .border_style(Style::default().fg(Color::Cyan)),
        ),
        rect,
    );
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn render_form(form: &Form, frame: &mut Frame<'_>, area: Rect) {
    let title = match &form.editing {
        None => format!("add route to {}", form.listener),
        Some(h) => format!("edit route {h}"),
    };
    let mut lines = Vec::new();
    for field in form.fields() {
        let (label, value) = match field {
            Field::Hostname => ("hostname", form.hostname.clone()),
            Field::Backend => ("backend", form.backend.clone()),
            Field::Mode => (
                "mode",
                match form.mode {
                    Mode::L4 => "l4 (passthrough)  [space: l7]".into(),
                    Mode::L7 => "l7 (terminate TLS)  [space: l4]".into(),
                },
            ),
            Field::TlsCert => ("tls_cert", form.tls_cert.clone()),
            Field::TlsKey => ("tls_key", form.tls_key.clone()),
            Field::BackendTls => ("backend_tls", checkbox(form.backend_tls)),
            Field::SendProxy => ("send_proxy", checkbox(form.send_proxy_protocol)),
        };
        let focused = field == form.focus;
        let cursor = if focused
            && matches!(
                field,
                Field::Hostname | Field::Backend | Field::TlsCert | Field::TlsKey
            ) {
            "_"
        } else {
            ""
        };
        let marker = if focused { "> " } else { "  " };
        let style = if focused { bold() } else { Style::default() };
        lines.push(Line::from(vec![
            Span::styled(format!("{marker}{label:<12}"), style),
            Span::raw(format!("{value}{cursor}")),
        ]));
    }
    lines.push(Line::from(""));
    match (&form.error, form.pending) {
        (_, true) => lines.push(Line::from(Span::styled(
            "saving...",
            Style::default().fg(Color::Yellow),
        ))),
        (Some(e), false) => lines.push(Line::from(Span::styled(
            format!("error: {e}"),
            Style::default().fg(Color::Red),
        ))),
        (None, false) => lines.push(Line::from(
            "tab/up/down: field  space: toggle  enter: save  esc: cancel",
        )),
    }
    // The error wraps: give it the rows it needs inside a 76-column box.
    let wrapped = form
        .error
        .as_ref()
        .map_or(0, |e| ("error: ".len() + e.chars().count()) / 74);
    let height = lines.len() as u16 + 2 + wrapped as u16;
    popup(frame, area, &title, lines, 76, height);
}

fn checkbox(on: bool) -> String {
    if on { "[x]".into() } else { "[ ]".into() }
}

fn render_firewall(app: &App, fw: &super::app::FirewallView, frame: &mut Frame<'_>, area: Rect) {
    let mut lines: Vec<Line<'_>> = app
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let text = format!("{:<5} {}", r.kind.as_str(), r.value);
            if i == fw.selected {
                Line::from(Span::styled(text, selected()))
            } else {
                Line::from(text)
            }
        })
        .collect();
    if lines.is_empty() {
        lines.push(Line::from("no rules: nobody is blocked"));
    }
    lines.push(Line::from(""));
    if let Some(input) = &fw.input {
        lines.push(Line::from(vec![
            Span::styled("block: ", bold()),
            Span::raw(format!("{input}_")),
        ]));
        lines.push(Line::from("an address or a CIDR; enter: add  esc: cancel"));
    } else {
        lines.push(Line::from(
            "a: block an address/network  d: unblock  esc: close",
        ));
    }
    if let Some(e) = &fw.error {
        lines.push(Line::from(Span::styled(
            format!("error: {e}"),
            Style::default().fg(Color::Red),
        )));
    }
    let height = (lines.len() as u16 + 2).min(area.height);
    popup(frame, area, "firewall", lines, 64, height);
}

fn render_help(frame: &mut Frame<'_>, area: Rect) {
    let mut lines: Vec<Line<'_>> = KEYS
        .iter()
        .map(|(keys, what)| {
            Line::from(vec![
                Span::styled(format!("{keys:<16}"), bold()),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::from(Span::raw("any key: close")).alignment(Alignment::Center));
    let height = lines.len() as u16 + 2;
    popup(frame, area, "keys", lines, 76, height);
}
