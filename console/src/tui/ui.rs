//! Drawing: turns an `&App` into widgets. No state changes and no I/O here, and no clock:
//! times come from `App::now`.
//!
//! Layout of the routes view, top to bottom: status line (with the last notice), listeners,
//! routes of the selected listener, traffic of the selected route, event log, key hints. The
//! connections view replaces everything between the status and hint lines. Boxes (form,
//! details, firewall, help, confirmations) draw on top.
//!
//! Invariants: every cell is sized for its content and filled through `fit`, so nothing is ever
//! cut without a `…` and numbers keep their unit; the columns shown depend on the width (more
//! at 120 columns, fewer at 60), never the other way round. A detail box taller than the
//! terminal scrolls to its selected backend and marks each cut with a `▲ n more` / `▼ n more`
//! row. While the daemon is unreachable, live figures are grey and a red line says since when.
//! Below 60x16 only a "too small" notice is drawn. Only the 16 basic colours and
//! bold/reverse/dim are used, so it reads on any terminal an operator reaches over SSH.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, List, ListItem, Paragraph, Row, Sparkline, Table, TableState, Wrap,
};

use super::app::{App, Field, FirewallView, Form, Link, Pane, RouteView, Screen, View};
use super::health::{ERROR_SHARE, Health, WARN_SHARE, WINDOW};
use super::input::{self, Context};
use crate::format::fit;
use mc_proxy_shared::{BackendProtocol, Mode};

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
    // While the daemon is unreachable a line under the status says the figures are old.
    let stale = app.stale_since().is_some();
    let [status, banner, body, hints] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(u16::from(stale)),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    render_status(app, frame, status);
    if let Some(line) = stale_line(app, usize::from(banner.width)) {
        frame.render_widget(Paragraph::new(line), banner);
    }
    match app.view {
        View::Routes => render_routes_view(app, frame, body),
        View::Connections => render_connections(app, frame, body),
    }
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
            popup(frame, area, "delete route", text, 64, 7);
        }
        Screen::Firewall(fw) => render_firewall(app, fw, frame, area),
        Screen::ListenerDetail => render_listener_detail(app, frame, area),
        Screen::RouteDetail => render_route_detail(app, frame, area),
        Screen::ConfirmBackend(action) => {
            render_route_detail(app, frame, area);
            if let super::app::Action::SetBackendState {
                hostname,
                address,
                state,
                ..
            } = action
            {
                let verb = match state {
                    mc_proxy_shared::AdminState::Draining => "Drain",
                    mc_proxy_shared::AdminState::Disabled => "Disable",
                    mc_proxy_shared::AdminState::Enabled => "Enable",
                };
                let text = vec![
                    Line::from(format!("{verb} {address} of {hostname}?")),
                    Line::from(
                        "No other backend of this route is enabled: it would have none left \
                         for new connections and requests.",
                    ),
                    Line::from(""),
                    Line::from(Span::styled(
                        format!("y: {}   any other key: cancel", verb.to_lowercase()),
                        bold(),
                    )),
                ];
                let w = area.width.min(64);
                let h = wrapped_height(&text, w.saturating_sub(2)) + 2;
                popup(frame, area, "no enabled backend left", text, w, h);
            }
        }
        Screen::ConfirmClose { what, .. } => {
            let text = vec![
                Line::from(format!("Close connection {what}?")),
                Line::from("It is cut now, requests in flight included."),
                Line::from(""),
                Line::from(Span::styled("y: close   any other key: cancel", bold())),
            ];
            let w = area.width.min(64);
            let h = wrapped_height(&text, w.saturating_sub(2)) + 2;
            popup(frame, area, "close connection", text, w, h);
        }
        Screen::Help { scroll, detail } => render_help(app, *scroll, *detail, frame, area),
        Screen::Normal | Screen::Filter => {}
    }
}

fn render_routes_view(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let listeners_h = (app.listeners.len() as u16 + 3).clamp(4, 7);
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
    render_listeners(app, frame, listeners);
    render_routes(app, frame, routes);
    if traffic.height > 0 {
        render_traffic(app, frame, traffic);
    }
    render_log(app, frame, log);
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn selected() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

fn pane_block(title: &str, width: u16, focused: bool) -> Block<'static> {
    // The title is elided to the border it sits on (2 corners, 2 spaces around it).
    let title = fit::end(title, usize::from(width.saturating_sub(4)));
    let block = Block::default()
        .borders(Borders::ALL)
        .title(format!(" {title} "));
    if focused {
        block.border_style(Style::default().fg(Color::Cyan))
    } else {
        block
    }
}

fn right(s: String) -> Cell<'static> {
    Cell::from(Line::from(s).alignment(Alignment::Right))
}

/// A live figure's cell: right-aligned, dimmed when it is not current (`stale`).
fn figure(s: String, stale: bool) -> Cell<'static> {
    if stale {
        right(s).style(stale_style())
    } else {
        right(s)
    }
}

/// Figures the daemon can no longer confirm: dark grey, dimmed.
fn stale_style() -> Style {
    Style::default()
        .fg(Color::DarkGray)
        .add_modifier(Modifier::DIM)
}

/// While the daemon is unreachable: the line that says so and how old the figures are.
fn stale_line(app: &App, width: usize) -> Option<Line<'static>> {
    let since = app.stale_since()?;
    // The reason is on the status line; this says what it means for the figures.
    let text = format!(" daemon unreachable: values from {since} UTC, not live; retrying");
    Some(Line::from(Span::styled(
        fit::end(&text, width),
        Style::default()
            .fg(Color::White)
            .bg(Color::Red)
            .add_modifier(Modifier::BOLD),
    )))
}

/// A fixed-width table column: header and width.
struct Col {
    name: &'static str,
    width: u16,
}

/// Splits `flex` columns between two text columns whose widest values need `a` and `b`:
/// each gets what it needs when both fit; otherwise the one that needs less than half keeps
/// it and the other gets the rest; otherwise half each.
fn split(flex: usize, a: usize, b: usize) -> (usize, usize) {
    let half = flex / 2;
    if a + b <= flex || b <= half {
        (flex - b, b)
    } else if a <= flex - half {
        (a, flex - a)
    } else {
        (flex - half, half)
    }
}

fn health_style(h: Health) -> Style {
    match h {
        Health::Ok => Style::default(),
        Health::Warning => Style::default().fg(Color::Yellow),
        Health::Error => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

fn render_status(app: &App, frame: &mut Frame<'_>, area: Rect) {
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
    let ro = if app.read_only { " | read-only" } else { "" };
    let head = format!(
        " {version} | up {} | ",
        crate::format::uptime(app.uptime_now())
    );
    let open = format!("{} open", fit::count(open));
    let tail = format!("{ro} | ");
    let open_style = if app.stale_since().is_some() {
        stale_style()
    } else {
        bold()
    };
    let width = usize::from(area.width);
    let used = fit::width(&head) + fit::width(&open) + fit::width(&tail);
    let link = fit::end(&link, width.saturating_sub(used));
    let used = used + fit::width(&link);
    let mut spans = vec![
        Span::styled(head, bold()),
        Span::styled(open, open_style),
        Span::styled(tail, bold()),
        Span::styled(link, style),
    ];
    // The notice takes what is left; its full text is in the event log.
    if let Some(note) = &app.note {
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

fn render_listeners(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let inner = usize::from(area.width.saturating_sub(2));
    let wide = inner >= 70;
    let cols: Vec<Col> = if wide {
        vec![
            Col {
                name: "PROXY",
                width: 5,
            },
            Col {
                name: "ROUTES",
                width: 6,
            },
            Col {
                name: "OPEN",
                width: 4,
            },
            Col {
                name: "ACCEPTED",
                width: 8,
            },
            Col {
                name: "RESETS",
                width: 6,
            },
            Col {
                name: "BLOCKED",
                width: 7,
            },
        ]
    } else {
        vec![
            Col {
                name: "PROXY",
                width: 5,
            },
            Col {
                name: "RTS",
                width: 4,
            },
            Col {
                name: "OPEN",
                width: 4,
            },
            Col {
                name: "ACC",
                width: 4,
            },
            Col {
                name: "RST",
                width: 4,
            },
            Col {
                name: "BLK",
                width: 4,
            },
        ]
    };
    let fixed: usize = cols.iter().map(|c| usize::from(c.width) + 1).sum();
    let addr_w = inner.saturating_sub(fixed).max(1);
    let stale = app.stale_since().is_some();
    let rows = app.listeners.iter().map(|l| {
        Row::new(vec![
            Cell::from(fit::address(&l.addr, addr_w)),
            Cell::from(if l.proxy_protocol { "PROXY" } else { "-" }),
            right(fit::count(u64::from(l.route_count))),
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
        if app.listeners.is_empty() {
            0
        } else {
            app.listener_sel.index() + 1
        },
        app.listeners.len()
    );
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(bold()))
        .row_highlight_style(selected())
        .block(pane_block(&title, area.width, app.pane == Pane::Listeners));
    let mut state = TableState::default()
        .with_selected((!app.listeners.is_empty()).then_some(app.listener_sel.index()));
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

fn render_routes(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let routes = app.visible_routes();
    let inner = usize::from(area.width.saturating_sub(2));
    let layout = match inner {
        100.. => RouteLayout::Wide,
        70.. => RouteLayout::Medium,
        _ => RouteLayout::Narrow,
    };
    let latency = layout == RouteLayout::Wide && routes.iter().any(|r| r.route.mode == Mode::L7);
    let mut cols = vec![Col {
        name: "M",
        width: 2,
    }];
    match layout {
        RouteLayout::Wide => cols.extend([
            Col {
                name: "FL",
                width: 2,
            },
            Col {
                name: "CONNS",
                width: 9,
            },
            Col {
                name: "IN",
                width: 11,
            },
            Col {
                name: "OUT",
                width: 11,
            },
            Col {
                name: "RQ/S",
                width: 6,
            },
        ]),
        RouteLayout::Medium => cols.extend([
            Col {
                name: "CONNS",
                width: 9,
            },
            Col {
                name: "IN/S",
                width: 6,
            },
            Col {
                name: "OUT/S",
                width: 6,
            },
            Col {
                name: "RQ/S",
                width: 6,
            },
        ]),
        RouteLayout::Narrow => cols.extend([
            Col {
                name: "IN/S",
                width: 6,
            },
            Col {
                name: "OUT/S",
                width: 6,
            },
        ]),
    }
    cols.push(Col {
        name: "ERR",
        width: 4,
    });
    if latency {
        cols.push(Col {
            name: "P50/P99",
            width: 11,
        });
    }
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
    // Issue 28: `N/M up` for routes with several members, when any visible route has them.
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
    // Without the daemon the figures are the last it sent: dimmed, so they do not look live.
    let stale = app.stale_since().is_some();
    let right = |s: String| figure(s, stale);

    let rows = routes.iter().map(|r| {
        let s = &r.stats;
        let recent = r.recent();
        let l7 = r.route.mode == Mode::L7;
        let mut cells = vec![
            Cell::from(fit::hostname(&r.route.hostname, host_w)),
            Cell::from(r.route.mode.to_string()),
        ];
        if r.not_served.is_some() {
            // Stored but not served: no traffic to show; the detail says why.
            cells.push(Cell::from(fit::end(NOT_SERVED, backend_w)));
            if up_w.is_some() {
                cells.push(Cell::from(""));
            }
            cells.extend(cols[1..].iter().map(|_| right("-".into())));
            return Row::new(cells).style(not_served_style());
        }
        cells.push(Cell::from(members_cell(&r.route, backend_w)));
        if let Some(w) = up_w {
            cells.push(match up_cell(r) {
                Some((text, color)) => {
                    let style = if stale {
                        stale_style()
                    } else {
                        Style::default().fg(color)
                    };
                    Cell::from(Span::styled(fit::end(&text, w), style))
                }
                None => Cell::from(""),
            });
        }
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
        match layout {
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
        if latency {
            cells.push(right(match (r.route.mode, recent.latency) {
                (Mode::L7, Some(l)) => format!("{}/{}", fit::quantile(l.p50), fit::quantile(l.p99)),
                _ => "-".into(),
            }));
        }
        Row::new(cells).style(health_style(r.health()))
    });
    let mut widths = vec![
        Constraint::Length(host_w as u16),
        Constraint::Length(2),
        Constraint::Length(backend_w as u16),
    ];
    if let Some(w) = up_w {
        widths.push(Constraint::Length(w as u16));
    }
    widths.extend(cols[1..].iter().map(|c| Constraint::Length(c.width)));
    let mut header = vec![
        Cell::from("HOSTNAME"),
        Cell::from("M"),
        Cell::from("BACKEND"),
    ];
    if up_w.is_some() {
        header.push(Cell::from("UP"));
    }
    header.extend(cols[1..].iter().map(|c| {
        if c.name == "FL" {
            Cell::from(c.name)
        } else {
            Cell::from(Line::from(c.name).alignment(Alignment::Right))
        }
    }));
    let position = if routes.is_empty() {
        format!("0/{}", routes.len())
    } else {
        format!("{}/{}", app.route_sel.index() + 1, routes.len())
    };
    let mut title = match app.listener() {
        None => "routes".to_owned(),
        Some(l) => format!(
            "routes of {} [{position}] sort:{}",
            l.addr,
            app.sort.as_str()
        ),
    };
    if !app.filter.is_empty() || (app.mode == Screen::Filter && app.view == View::Routes) {
        title.push_str(&format!(" filter:{}", app.filter));
    }
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(bold()))
        .row_highlight_style(selected())
        .block(pane_block(&title, area.width, app.pane == Pane::Routes));
    let mut state =
        TableState::default().with_selected((!routes.is_empty()).then_some(app.route_sel.index()));
    frame.render_stateful_widget(table, area, &mut state);
    if routes.is_empty() && area.height > 3 {
        let inner = Rect {
            x: area.x + 2,
            y: area.y + 2,
            width: area.width.saturating_sub(4),
            height: 1,
        };
        let msg = match (app.filter.is_empty(), app.read_only) {
            (false, _) => "no route matches the filter",
            (true, false) => "no routes: press a to add one",
            (true, true) => "no routes",
        };
        frame.render_widget(Paragraph::new(msg), inner);
    }
}

fn render_traffic(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let Some(route) = app.route() else {
        frame.render_widget(pane_block("traffic", area.width, false), area);
        return;
    };
    let inner_width = usize::from(area.width.saturating_sub(2));
    let shown: Vec<_> = route.history.iter().rev().take(inner_width).rev().collect();
    // The span is measured from the samples drawn, so the title cannot promise more history
    // than the bars show.
    let span = match (shown.first(), route.history.back()) {
        (Some((first, _)), Some((last, _))) => last.saturating_duration_since(*first).as_secs() + 1,
        _ => 0,
    };
    let title = format!(
        "traffic, last {span}s: in {} out {} | {}",
        fit::byte_rate(route.rate.in_bps),
        fit::byte_rate(route.rate.out_bps),
        route.route.hostname,
    );
    let data: Vec<u64> = shown
        .iter()
        .map(|(_, r)| (r.in_bps + r.out_bps).round() as u64)
        .collect();
    let style = if app.stale_since().is_some() {
        stale_style()
    } else {
        Style::default().fg(Color::Green)
    };
    let sparkline = Sparkline::default()
        .block(pane_block(&title, area.width, false))
        .data(data)
        .style(style);
    frame.render_widget(sparkline, area);
}

fn render_log(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let height = usize::from(area.height.saturating_sub(2));
    let width = usize::from(area.width.saturating_sub(2));
    let lines: Vec<&str> = app.log_shown().rev().take(height).collect();
    let items: Vec<ListItem<'_>> = lines
        .into_iter()
        .rev()
        .map(|line| ListItem::new(fit::end(line, width)))
        .collect();
    let title = match app.log_filter.title() {
        Some(only) => format!("events: {only} (v)"),
        None => "events".to_owned(),
    };
    frame.render_widget(
        List::new(items).block(pane_block(&title, area.width, false)),
        area,
    );
}

fn render_connections(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let view = &app.conns;
    let rows = view.visible();
    let inner = usize::from(area.width.saturating_sub(2));
    let wide = inner >= 100;
    // CLIENT, LISTENER, ROUTE flexible; M, AGE, IN, OUT fixed; BACKEND when wide.
    let fixed = 2 + 4 + 4 + 4 + 8;
    let flex = inner.saturating_sub(fixed);
    let need = |f: fn(&mc_proxy_shared::client::Connection) -> &str| {
        rows.iter().map(|c| fit::width(f(c))).max().unwrap_or(6)
    };
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
    let table_rows = rows.iter().map(|c| {
        let mut cells = vec![
            Cell::from(fit::address(&c.client, client_w)),
            Cell::from(fit::address(&c.listener, listener_w)),
            Cell::from(fit::hostname(&c.route, route_w)),
        ];
        if wide {
            cells.push(Cell::from(fit::address(&c.backend, backend_w)));
        }
        cells.extend([
            Cell::from(fit::end(c.mode.as_str(), 2)),
            right(fit::age(c.age.as_secs())),
            right(fit::bytes(c.bytes_in)),
            right(fit::bytes(c.bytes_out)),
        ]);
        Row::new(cells)
    });
    let mut widths = vec![
        Constraint::Length(client_w as u16),
        Constraint::Length(listener_w as u16),
        Constraint::Length(route_w as u16),
    ];
    let mut header = vec![
        Cell::from("CLIENT"),
        Cell::from("LISTENER"),
        Cell::from("ROUTE"),
    ];
    if wide {
        widths.push(Constraint::Length(backend_w as u16));
        header.push(Cell::from("BACKEND"));
    }
    widths.extend([2, 4, 4, 4].map(Constraint::Length));
    header.extend([
        Cell::from("M"),
        right("AGE".into()),
        right("IN".into()),
        right("OUT".into()),
    ]);
    let position = if rows.is_empty() {
        0
    } else {
        view.sel.index() + 1
    };
    let mut title = format!(
        "connections [{position}/{}] sort:{}",
        rows.len(),
        view.sort.as_str()
    );
    if view.list.truncated() {
        title.push_str(&format!(
            " (first {} of {})",
            view.list.connections.len(),
            view.list.total
        ));
    }
    if !view.filter.is_empty() || app.mode == Screen::Filter {
        title.push_str(&format!(" filter:{}", view.filter));
    }
    if let Some(at) = view.at {
        title.push_str(&format!(
            " | {}s ago",
            app.now.saturating_duration_since(at).as_secs()
        ));
    }
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).style(bold()))
        .row_highlight_style(selected())
        .block(pane_block(&title, area.width, true));
    let mut state =
        TableState::default().with_selected((!rows.is_empty()).then_some(view.sel.index()));
    frame.render_stateful_widget(table, area, &mut state);
    if rows.is_empty() && area.height > 3 {
        let msg = match (view.at, view.filter.is_empty()) {
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

fn render_hints(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let width = usize::from(area.width);
    if app.mode == Screen::Filter {
        let filter = match app.view {
            View::Routes => &app.filter,
            View::Connections => &app.conns.filter,
        };
        let tail = "   enter: keep  esc: clear  ctrl-u/w";
        let room = width.saturating_sub(10 + fit::width(tail) + 1);
        let line = Line::from(vec![
            Span::styled(" filter: ", bold()),
            Span::raw(format!("{}_", fit::start(filter, room))),
            Span::raw(tail),
        ]);
        frame.render_widget(Paragraph::new(line), area);
        return;
    }
    let context = match app.view {
        View::Routes => Context::Routes,
        View::Connections => Context::Connections,
    };
    // Whole hints only: drop the ones that do not fit, but always keep help.
    let hints: Vec<&str> = input::shown(context, app.read_only)
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

/// A bordered box centred in `area`, cleared underneath.
fn popup(frame: &mut Frame<'_>, area: Rect, title: &str, text: Vec<Line<'_>>, w: u16, h: u16) {
    let rect = centered(area, w, h);
    frame.render_widget(Clear, rect);
    let title = fit::end(title, usize::from(rect.width.saturating_sub(4)));
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

/// Rows `lines` take when wrapped at `width`.
fn wrapped_height(lines: &[Line<'_>], width: u16) -> u16 {
    let w = usize::from(width.max(1));
    lines
        .iter()
        .map(|l| l.width().max(1).div_ceil(w) as u16)
        .sum()
}

/// "label   value" lines for the detail boxes; values wrap, never cut.
fn field(label: &str, value: impl Into<String>) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{label:<15}"), bold()),
        Span::raw(value.into()),
    ])
}

/// `line` broken into rows of at most `width` columns, at a space where there is one (a long
/// value wraps, it is never cut), each piece keeping its style. Breaking here rather than in
/// the paragraph makes the row count exact, so a box is never shorter than its content.
fn wrap_line(line: &Line<'static>, width: usize) -> Vec<Line<'static>> {
    use unicode_width::UnicodeWidthChar;
    let width = width.max(1);
    let chars: Vec<(char, Style)> = line
        .spans
        .iter()
        .flat_map(|s| s.content.chars().map(move |c| (c, s.style)))
        .collect();
    let mut rows: Vec<&[(char, Style)]> = Vec::new();
    let mut start = 0;
    while start < chars.len() || rows.is_empty() {
        let (mut end, mut used, mut space) = (start, 0, None);
        while let Some(&(c, _)) = chars.get(end) {
            let cw = c.width().unwrap_or(0);
            if used + cw > width {
                break;
            }
            used += cw;
            if c == ' ' {
                space = Some(end);
            }
            end += 1;
        }
        let mut next = end;
        if end < chars.len() {
            if chars[end].0 == ' ' {
                next = end + 1; // the break falls on a space: it goes
            } else if let Some(sp) = space.filter(|&sp| sp > start) {
                end = sp + 1;
                next = end;
            } else if end == start {
                end = start + 1; // wider than the row: one character per row
                next = end;
            }
        }
        rows.push(&chars[start..end]);
        start = next;
    }
    rows.into_iter()
        .map(|row| {
            let mut spans: Vec<Span<'static>> = Vec::new();
            for &(c, style) in row {
                match spans.last_mut() {
                    Some(last) if last.style == style => last.content.to_mut().push(c),
                    _ => spans.push(Span::styled(c.to_string(), style)),
                }
            }
            Line::from(spans).style(line.style)
        })
        .collect()
}

/// A detail box (listener or route) as wide as the terminal allows (100 at most) and as tall
/// as its content, wrapped. When the content is taller than the terminal it scrolls to show
/// `focus` (an index into `lines`, the selected backend) with the rows around it, and a
/// `▲ n more` / `▼ n more` line where rows are cut. The keys are on the bottom border; while
/// the daemon is unreachable the first row says the figures are old.
fn detail_popup(
    app: &App,
    frame: &mut Frame<'_>,
    area: Rect,
    title: &str,
    lines: Vec<Line<'static>>,
    focus: Option<usize>,
    keys: &str,
) {
    let w = area.width.min(100);
    let inner_w = usize::from(w.saturating_sub(2));
    let stale = stale_line(app, inner_w);
    let mut rows: Vec<Line<'static>> = Vec::new();
    let mut focus_rows = 0..0;
    for (i, line) in lines.iter().enumerate() {
        let start = rows.len();
        rows.extend(wrap_line(line, inner_w));
        if focus == Some(i) {
            focus_rows = start..rows.len();
        }
    }
    let fixed = usize::from(stale.is_some());
    let h = (rows.len() + fixed + 2).min(usize::from(area.height));
    let room = h.saturating_sub(2 + fixed);
    let (total, more) = (rows.len(), |n: usize, up: bool| {
        let arrow = if up { '▲' } else { '▼' };
        Line::from(Span::styled(
            format!("{arrow} {n} more"),
            Style::default().fg(Color::Cyan),
        ))
    });
    let mut shown: Vec<Line<'static>> = stale.into_iter().collect();
    if total <= room {
        shown.extend(rows);
    } else {
        // One marker when the focus is near an end, two in the middle; the focus is centred
        // in what is left (or its start shown, if it alone is taller than that).
        let (offset, len) = if focus_rows.end <= room.saturating_sub(1) {
            (0, room.saturating_sub(1))
        } else if focus_rows.start >= total - room.saturating_sub(1) {
            let len = room.saturating_sub(1);
            (total - len, len)
        } else {
            let len = room.saturating_sub(2).max(1);
            let centred = focus_rows
                .start
                .saturating_sub(len.saturating_sub(focus_rows.len()) / 2);
            (centred.clamp(1, total - len - 1), len)
        };
        if offset > 0 {
            shown.push(more(offset, true));
        }
        shown.extend(rows.into_iter().skip(offset).take(len));
        if offset + len < total {
            shown.push(more(total - offset - len, false));
        }
    }
    let rect = centered(area, w, h as u16);
    frame.render_widget(Clear, rect);
    let title = fit::end(title, usize::from(rect.width.saturating_sub(4)));
    let keys = fit::end(keys, usize::from(rect.width.saturating_sub(4)));
    frame.render_widget(
        Paragraph::new(shown).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {title} "))
                .title_bottom(Line::from(format!(" {keys} ")).alignment(Alignment::Center))
                .border_style(Style::default().fg(Color::Cyan)),
        ),
        rect,
    );
}

/// What the routes table shows in place of the backend of a route that is not served.
const NOT_SERVED: &str = "not served";

/// A route that is stored but not served: red, as a route in error.
fn not_served_style() -> Style {
    Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
}

fn render_route_detail(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let (Some(l), Some(r)) = (app.listener(), app.route()) else {
        return;
    };
    let s = &r.stats;
    let recent = r.recent();
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut lines = vec![field("hostname", r.route.hostname.clone())];
    if let Some(reason) = &r.not_served {
        lines.push(field("state", format!("{NOT_SERVED}: {reason}")).style(not_served_style()));
    }
    lines.extend([
        field("listener", l.addr.clone()),
        field("mode", r.route.mode.to_string()),
        field("balance", r.route.balance.to_string()),
        field(
            "health check",
            match &r.route.health_check {
                None => "none (passive health only)".to_owned(),
                Some(c) if c.path.is_empty() => format!(
                    "{} every {}, rise {} fall {}",
                    if r.route.mode == Mode::L4 {
                        "tcp + tls handshake"
                    } else {
                        "tcp"
                    },
                    humantime::format_duration(c.interval),
                    c.rise,
                    c.fall
                ),
                Some(c) => format!(
                    "GET {} every {}, expect {}, rise {} fall {}",
                    c.path,
                    humantime::format_duration(c.interval),
                    c.expect,
                    c.rise,
                    c.fall
                ),
            },
        ),
    ]);
    let sel = app.member_sel.min(r.route.backends.len().saturating_sub(1));
    // The selected backend's line: the header line ("backends  N"), then one per member.
    let focus = lines.len() + 1 + sel;
    let stale = app.stale_since().is_some();
    // Relative times are as of the figures, not the screen's clock: `render` reads none.
    let now_ms = app.figures_at_ms.unwrap_or(0);
    lines.extend(member_lines(r, sel, stale, now_ms));
    if r.route.mode == Mode::L7 {
        lines.push(field("tls_cert", r.route.tls_cert.clone()));
        lines.push(field("tls_key", r.route.tls_key.clone()));
        lines.push(field("backend_tls", yes(r.route.backend_tls)));
        lines.push(field(
            "backend_proto",
            format!(
                "{} ({})",
                r.route.backend_protocol,
                protocol_meaning(r.route.backend_protocol, r.route.backend_tls)
            ),
        ));
        lines.push(field("access_log", yes(r.route.access_log)));
    }
    // From the line after send_proxy on: counters and rates.
    let figures_from = lines.len() + 1;
    lines.extend([
        field("send_proxy", yes(r.route.send_proxy_protocol)),
        field(
            "connections",
            format!(
                "{} open, {} since start",
                s.active_connections, s.total_connections
            ),
        ),
        field(
            "bytes",
            format!(
                "in {} ({}), out {} ({})",
                fit::bytes(s.bytes_in),
                fit::byte_rate(r.rate.in_bps),
                fit::bytes(s.bytes_out),
                fit::byte_rate(r.rate.out_bps)
            ),
        ),
        field(
            "backend errors",
            format!(
                "{} seen by clients, {} retried on another backend",
                s.backend_errors, s.retries
            ),
        ),
    ]);
    let window = WINDOW.as_secs();
    if r.route.mode == Mode::L7 {
        lines.push(field(
            "requests",
            format!(
                "{} since start, {} over {window}s",
                s.requests,
                fit::per_sec(recent.rps())
            ),
        ));
        lines.push(field(
            "responses",
            format!(
                "1xx {}  2xx {}  3xx {}  4xx {}  5xx {}",
                s.responses[0], s.responses[1], s.responses[2], s.responses[3], s.responses[4]
            ),
        ));
        lines.push(field(
            "latency",
            match recent.latency {
                Some(lat) => format!(
                    "p50 {}  p99 {} over {window}s (request head in to response head out)",
                    fit::quantile(lat.p50),
                    fit::quantile(lat.p99)
                ),
                None => format!("no requests in the last {window}s"),
            },
        ));
    }
    let share = recent
        .error_share(r.route.mode)
        .map_or_else(|| "no traffic".into(), fit::percent);
    lines.push(field(
        "errors",
        format!(
            "{share} over {window}s (yellow above {}, red above {})",
            fit::percent(WARN_SHARE),
            fit::percent(ERROR_SHARE)
        ),
    ));
    if stale {
        for line in &mut lines[figures_from..] {
            *line = std::mem::take(line).style(stale_style());
        }
    }
    let title = format!(
        "route {} [backend {}/{}]",
        r.route.hostname,
        app.member_sel.min(r.route.backends.len().saturating_sub(1)) + 1,
        r.route.backends.len()
    );
    // Whole hints on the bottom border, those that fit, always ending with `? keys`.
    let room = usize::from(area.width.min(100).saturating_sub(4));
    let help = "? keys";
    let mut keys = String::from("↑↓ select");
    for hint in input::shown(Context::RouteDetail, app.read_only).filter_map(|b| b.hint) {
        if hint != help && fit::width(&keys) + 2 + fit::width(hint) + 2 + help.len() <= room {
            keys.push_str("  ");
            keys.push_str(hint);
        }
    }
    keys.push_str("  ");
    keys.push_str(help);
    detail_popup(app, frame, area, &title, lines, Some(focus), &keys);
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
pub fn up_cell(r: &super::app::RouteView) -> Option<(String, Color)> {
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

/// The colour of a member's live state: green up, red down, magenta ejected, yellow
/// draining, grey disabled, cyan unknown (not checked or contacted yet).
pub fn state_color(state: mc_proxy_shared::BackendState) -> Color {
    use mc_proxy_shared::BackendState as S;
    match state {
        S::Up => Color::Green,
        S::Down => Color::Red,
        S::Ejected => Color::Magenta,
        S::Draining => Color::Yellow,
        S::Disabled => Color::DarkGray,
        S::Unknown => Color::Cyan,
    }
}

/// One line per member of the route's set, in full (the box wraps, it never cuts an
/// address): address, weight, live state (with the admin state when it says more) and how
/// long, traffic, the last active check (as of `now_ms`), the reason.
fn member_lines(
    r: &super::app::RouteView,
    selected: usize,
    stale: bool,
    now_ms: u64,
) -> Vec<Line<'static>> {
    let mut lines = vec![field("backends", format!("{}", r.route.backends.len()))];
    let selected = selected.min(r.route.backends.len().saturating_sub(1));
    for (i, b) in r.route.backends.iter().enumerate() {
        let live = r.stats.members.iter().find(|m| m.address == b.address);
        let marker = if i == selected { "> " } else { "  " };
        let (state, color) = match live {
            Some(m) if m.since_ms == 0 || now_ms == 0 => {
                (crate::format::member_state(m), state_color(m.state))
            }
            Some(m) => (
                format!(
                    "{} {}",
                    crate::format::member_state(m),
                    crate::format::member_since(m, now_ms)
                ),
                state_color(m.state),
            ),
            // No figures yet: say what the operator set, not a guessed health.
            None => (format!("{} (no stats yet)", b.state), Color::Gray),
        };
        // A member carries connections on L4 and requests on L7 (each request picks one).
        let unit = match r.route.mode {
            mc_proxy_shared::Mode::L4 => "conns",
            mc_proxy_shared::Mode::L7 => "reqs",
        };
        let traffic = live.map_or_else(String::new, |m| {
            format!(
                "  {}/{} {unit}  {} fail  {} eject",
                fit::count(m.active),
                fit::count(m.total),
                fit::count(m.failures),
                fit::count(m.ejections)
            )
        });
        let mut spans = vec![
            Span::styled(format!("{marker}{}", b.address), bold()),
            Span::raw(format!("  w{}  ", b.weight)),
            Span::styled(state, Style::default().fg(color)),
            if stale {
                Span::styled(traffic, stale_style())
            } else {
                Span::raw(traffic)
            },
        ];
        if let Some(m) = live.filter(|m| m.last_check.is_some() && now_ms != 0) {
            spans.push(Span::raw(format!(
                "  check {}",
                crate::format::member_check(m, now_ms)
            )));
        }
        if let Some(m) = live.filter(|m| !m.reason.is_empty()) {
            spans.push(Span::raw(format!("  ({})", m.reason)));
        }
        lines.push(Line::from(spans));
    }
    lines
}

fn render_listener_detail(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let Some(l) = app.listener() else {
        return;
    };
    let trusted = if !l.proxy_protocol {
        "-".to_owned()
    } else if l.proxy_protocol_from.is_empty() {
        "any peer".to_owned()
    } else {
        l.proxy_protocol_from.join(", ")
    };
    let mut lines = vec![
        field("address", l.addr.clone()),
        field(
            "PROXY",
            if l.proxy_protocol {
                "expects a PROXY protocol header"
            } else {
                "no"
            },
        ),
        field("trusted from", trusted),
        field(
            "no-SNI route",
            match l.no_sni_route.as_str() {
                "" => "none (hellos without SNI are reset)".to_owned(),
                route => route.to_owned(),
            },
        ),
        field(
            "routes",
            match l.routes_not_served {
                0 => l.route_count.to_string(),
                n => format!("{} served, {n} not served", l.route_count),
            },
        ),
        field("open", l.active_connections.to_string()),
        field("accepted", l.accepted.to_string()),
        field("over capacity", l.over_capacity.to_string()),
        field("blocked", l.blocked.to_string()),
        field("resets", l.resets.to_string()),
    ];
    for (reason, n) in &l.resets_by_reason {
        lines.push(field(&format!("  {reason}"), n.to_string()));
    }
    detail_popup(
        app,
        frame,
        area,
        &format!("listener {}", l.addr),
        lines,
        None,
        "esc: close",
    );
}

fn render_form(form: &Form, frame: &mut Frame<'_>, area: Rect) {
    let title = match &form.editing {
        None => format!("add route to {}", form.listener),
        Some(before) => format!("edit route {}", before.hostname),
    };
    let w = area.width.min(76);
    // Label column 16; the value shows its end when long, so the cursor stays in view.
    let value_w = usize::from(w.saturating_sub(2 + 16 + 1));
    let mut lines = Vec::new();
    for field in form.fields() {
        let (label, value) = match field {
            Field::Hostname => ("hostname", form.hostname.clone()),
            Field::Backend => ("backends", form.backend.clone()),
            Field::Balance => (
                "balance",
                format!(
                    "{}  [space: {}]",
                    form.balance,
                    super::form::step_in(mc_proxy_shared::Balance::ALL, form.balance, true)
                ),
            ),
            Field::Check => ("health check", checkbox(form.check)),
            Field::CheckInterval => ("check every", form.check_interval.clone()),
            Field::CheckPath => ("check path", form.check_path.clone()),
            Field::CheckRise => ("check rise", form.check_rise.clone()),
            Field::CheckFall => ("check fall", form.check_fall.clone()),
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
            Field::BackendProtocol => (
                "backend_proto",
                format!(
                    "{} ({})  [space: {}]",
                    form.backend_protocol,
                    protocol_meaning(form.backend_protocol, form.backend_tls),
                    super::form::step(form.backend_protocol, true)
                ),
            ),
            Field::SendProxy => ("send_proxy", checkbox(form.send_proxy_protocol)),
            Field::AccessLog => ("access_log", checkbox(form.access_log)),
        };
        let focused = field == form.focus;
        let text_field = matches!(
            field,
            Field::Hostname
                | Field::Backend
                | Field::TlsCert
                | Field::TlsKey
                | Field::CheckInterval
                | Field::CheckPath
                | Field::CheckRise
                | Field::CheckFall
        );
        let cursor = if focused && text_field { "_" } else { "" };
        let marker = if focused { "> " } else { "  " };
        let style = if focused { bold() } else { Style::default() };
        let value = if text_field {
            format!(
                "{}{cursor}",
                fit::start(&value, value_w.saturating_sub(cursor.len()))
            )
        } else {
            fit::end(&value, value_w)
        };
        lines.push(Line::from(vec![
            Span::styled(format!("{marker}{label:<14}"), style),
            Span::raw(value),
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
    let height = wrapped_height(&lines, w.saturating_sub(2)) + 2;
    popup(frame, area, &title, lines, w, height);
}

/// What an L7 route's backend connection speaks, given its TLS setting, in a few words.
fn protocol_meaning(protocol: BackendProtocol, backend_tls: bool) -> &'static str {
    match (protocol, backend_tls) {
        (BackendProtocol::H2, false) => "h2c, prior knowledge",
        (BackendProtocol::H2, true) => "HTTP/2 over TLS",
        (BackendProtocol::Http1, false) => "HTTP/1.1 cleartext",
        (BackendProtocol::Http1, true) => "HTTP/1.1 over TLS",
        (BackendProtocol::Auto, true) => "ALPN picks h2 or http/1.1",
        (BackendProtocol::Auto, false) => "needs backend_tls",
    }
}

fn checkbox(on: bool) -> String {
    if on { "[x]".into() } else { "[ ]".into() }
}

fn render_firewall(app: &App, fw: &FirewallView, frame: &mut Frame<'_>, area: Rect) {
    let w = area.width.min(64);
    let inner = usize::from(w.saturating_sub(2));
    let mut lines: Vec<Line<'_>> = app
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let text = fit::end(&format!("{:<5} {}", r.kind.as_str(), r.value), inner);
            if i == fw.sel.index() {
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
    if let Some(rule) = &fw.confirm {
        lines.push(Line::from(Span::styled(
            format!("Unblock {} {}?", rule.kind, rule.value),
            bold(),
        )));
        lines.push(Line::from("y: unblock   any other key: keep it"));
    } else if let Some(input) = &fw.input {
        lines.push(Line::from(vec![
            Span::styled("block: ", bold()),
            Span::raw(format!("{}_", fit::start(input, inner.saturating_sub(8)))),
        ]));
        lines.push(Line::from("an address or a CIDR; enter: add  esc: cancel"));
    } else {
        let hints: Vec<&str> = input::shown(Context::Firewall, app.read_only)
            .filter_map(|b| b.hint)
            .collect();
        lines.push(Line::from(hints.join("  ")));
    }
    if let Some(e) = &fw.error {
        lines.push(Line::from(Span::styled(
            format!("error: {e}"),
            Style::default().fg(Color::Red),
        )));
    }
    let height = (wrapped_height(&lines, w.saturating_sub(2)) + 2).min(area.height);
    let title = format!(
        "firewall [{}/{}]",
        if app.rules.is_empty() {
            0
        } else {
            fw.sel.index() + 1
        },
        app.rules.len()
    );
    popup(frame, area, &title, lines, w, height);
}

fn render_help(app: &App, scroll: u16, detail: bool, frame: &mut Frame<'_>, area: Rect) {
    let contexts = match app.context() {
        // Asked from the route detail: its keys only (any key goes back to it).
        _ if detail => vec![Context::RouteDetail],
        Context::Connections => vec![Context::Connections, Context::Text],
        Context::Firewall => vec![Context::Firewall, Context::Text],
        Context::Routes | Context::RouteDetail | Context::Text => {
            vec![Context::Routes, Context::RouteDetail, Context::Text]
        }
    };
    let mut lines: Vec<Line<'_>> = Vec::new();
    for context in contexts {
        lines.push(Line::from(Span::styled(
            context.title(),
            Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
        )));
        for b in input::shown(context, app.read_only) {
            lines.push(Line::from(vec![
                Span::styled(format!("{:<19}", b.label), bold()),
                Span::raw(b.help),
            ]));
        }
    }
    if app.view == View::Routes && !detail {
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
            scroll.min(total - room) + 1,
            total - room + 1
        )
    } else if detail {
        "any key: back to the route".to_owned()
    } else {
        "any key: close".to_owned()
    };
    let scroll = scroll.min(total.saturating_sub(room));
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
