//! The route detail box: everything about the selected route, every member in full with its
//! live state, traffic and last check, the counters and rates, its limits and how often they
//! refused; its selected backend and keys
//! (context `RouteDetail`): select a backend, drain/enable/disable it, change its weight, edit
//! the route, show these keys.
//!
//! No I/O. Invariants: the box shows the routes view's selected route (it follows a rename);
//! the selected backend is clamped to the route's set; a drain or disable that would leave
//! the route with no enabled backend asks first ([`Confirm::Backend`]).

use crossterm::event::KeyEvent;
use mc_proxy_shared::{AdminState, Mode, RouteBackend};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};

use super::app::{Action, View};
use super::component::{Component, Ctx, Outcome};
use super::confirm::Confirm;
use super::data::{RouteView, admin_states};
use super::fleet::Fleet;
use super::form::{Form, protocol_meaning};
use super::health::Health;
use super::health::{ERROR_SHARE, WARN_SHARE, WINDOW};
use super::help::Help;
use super::input::{self, Command, Context};
use super::widgets::{
    NOT_SERVED, bold, detail_popup, field, health_style, not_served_style, stale_style,
};
use crate::format::fit;
use mc_proxy_shared::client::{CertState, Certificate};

/// The route detail's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDetail {
    /// The selected backend (an index into the route's set).
    pub member_sel: usize,
}

impl RouteDetail {
    /// A key that moves the selection: `true` if it was one.
    fn select(&mut self, command: Command, last: usize) -> bool {
        let Some(rows) = command.rows() else {
            return false;
        };
        self.member_sel = self.member_sel.saturating_add_signed(rows).min(last);
        true
    }

    /// `+`/`-`: the selected backend's weight one up or down, within 1..=256; nothing when it
    /// is already at the bound.
    fn weight(&mut self, command: Command, listener: &str, route: &RouteView) -> Outcome {
        let last = route.route.backends.len().saturating_sub(1);
        self.member_sel = self.member_sel.min(last);
        let Some(member) = route.route.backends.get(self.member_sel) else {
            return Outcome::Stay;
        };
        let weight = match command {
            Command::WeightUp => member.weight.saturating_add(1),
            _ => member.weight.saturating_sub(1),
        }
        .clamp(1, RouteBackend::MAX_WEIGHT);
        if weight == member.weight {
            return Outcome::Stay;
        }
        Outcome::Send(Action::SetBackendWeight {
            listener: listener.to_owned(),
            hostname: route.route.hostname.clone(),
            address: member.address.clone(),
            weight,
        })
    }

    /// `w`/`n`/`x`: the selected backend's admin state; asks first when no other backend
    /// would be left enabled.
    fn set_state(&mut self, state: AdminState, listener: &str, route: &RouteView) -> Outcome {
        let last = route.route.backends.len().saturating_sub(1);
        self.member_sel = self.member_sel.min(last);
        let Some(member) = route.route.backends.get(self.member_sel) else {
            return Outcome::Stay;
        };
        let action = Action::SetBackendState {
            listener: listener.to_owned(),
            hostname: route.route.hostname.clone(),
            address: member.address.clone(),
            state,
        };
        let others_enabled = admin_states(route)
            .iter()
            .enumerate()
            .any(|(i, s)| i != self.member_sel && *s == AdminState::Enabled);
        if state != AdminState::Enabled && !others_enabled {
            return Outcome::open(Confirm::Backend {
                action,
                detail: self.clone(),
            });
        }
        Outcome::Send(action)
    }

    /// The lines above the members: names, mode, balance, health check.
    fn settings_lines(l_addr: &str, r: &RouteView) -> Vec<Line<'static>> {
        let mut lines = vec![field("hostname", r.route.hostname.clone())];
        if let Some(reason) = &r.not_served {
            lines.push(field("state", format!("{NOT_SERVED}: {reason}")).style(not_served_style()));
        }
        lines.extend([
            field("listener", l_addr.to_owned()),
            field("mode", r.route.mode.to_string()),
            field("balance", r.route.balance.to_string()),
            field("health check", health_check_text(r)),
        ]);
        lines
    }

    /// The keys on the bottom border: whole hints that fit, always ending with `? keys`.
    fn keys_line(read_only: bool, area: Rect) -> String {
        let room = usize::from(area.width.min(100).saturating_sub(4));
        let help = "? keys";
        let mut keys = String::from("↑↓ select");
        for hint in input::shown(Context::RouteDetail, read_only).filter_map(|b| b.hint) {
            if hint != help && fit::width(&keys) + 2 + fit::width(hint) + 2 + help.len() <= room {
                keys.push_str("  ");
                keys.push_str(hint);
            }
        }
        keys.push_str("  ");
        keys.push_str(help);
        keys
    }
}

impl Component for RouteDetail {
    fn context(&self) -> Context {
        Context::RouteDetail
    }

    /// Any key that is not the detail's closes the box, as the other detail boxes do.
    fn on_key(&mut self, key: &KeyEvent, ctx: &Ctx<'_>) -> Outcome {
        let (Some(l), Some(route)) = (ctx.listener, ctx.route) else {
            return Outcome::Close(None);
        };
        let last = route.route.backends.len().saturating_sub(1);
        let Some(command) = input::lookup(Context::RouteDetail, key, ctx.data.read_only) else {
            return Outcome::Close(None);
        };
        if self.select(command, last) {
            return Outcome::Stay;
        }
        match command {
            Command::Help => Outcome::open(Help::new(View::Routes, Some(self.clone()))),
            Command::WeightUp | Command::WeightDown => self.weight(command, &l.addr, route),
            Command::Drain => self.set_state(AdminState::Draining, &l.addr, route),
            Command::Enable => self.set_state(AdminState::Enabled, &l.addr, route),
            Command::Disable => self.set_state(AdminState::Disabled, &l.addr, route),
            Command::Edit => Outcome::open(Form::edit(l.addr.clone(), &route.route)),
            _ => Outcome::Close(None),
        }
    }

    fn render(&self, ctx: &Ctx<'_>, frame: &mut Frame<'_>, area: Rect) {
        let (Some(l), Some(r)) = (ctx.listener, ctx.route) else {
            return;
        };
        let data = ctx.data;
        let mut lines = RouteDetail::settings_lines(&l.addr, r);
        let sel = self
            .member_sel
            .min(r.route.backends.len().saturating_sub(1));
        // The selected backend's line: the header line ("backends  N"), then one per member.
        let focus = lines.len() + 1 + sel;
        let stale = data.stale_since().is_some();
        // Relative times are as of the figures, not the screen's clock: `render` reads none.
        let now_ms = data.figures_at_ms.unwrap_or(0);
        lines.extend(member_lines(r, sel, stale, now_ms));
        if r.route.mode == Mode::L7 {
            lines.extend(l7_lines(r));
            if r.not_served.is_none() {
                lines.extend(certificate_lines(r.certificate.as_ref(), now_ms));
            }
        }
        // From the line after send_proxy on: counters and rates.
        let figures_from = lines.len() + 1;
        lines.extend(figure_lines(r));
        lines.extend(node_lines(ctx.fleet, &l.name, &r.route.hostname));
        if stale {
            for line in &mut lines[figures_from..] {
                *line = std::mem::take(line).style(stale_style());
            }
        }
        let title = format!(
            "route {} [backend {}/{}]",
            r.route.hostname,
            sel + 1,
            r.route.backends.len()
        );
        let keys = RouteDetail::keys_line(data.read_only, area);
        detail_popup(data, frame, area, &title, lines, Some(focus), &keys);
    }
}

/// The health check in words.
fn health_check_text(r: &RouteView) -> String {
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
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// An L7 route's TLS and HTTP settings.
fn l7_lines(r: &RouteView) -> Vec<Line<'static>> {
    vec![
        field("tls_cert", r.route.tls_cert.clone()),
        field("tls_key", r.route.tls_key.clone()),
        field("backend_tls", yes(r.route.backend_tls)),
        field(
            "backend_proto",
            format!(
                "{} ({})",
                r.route.backend_protocol,
                protocol_meaning(r.route.backend_protocol, r.route.backend_tls)
            ),
        ),
        field("access_log", yes(r.route.access_log)),
    ]
}

/// The certificate the route serves: issuer, end and how near it is, yellow within
/// [`mc_proxy_shared::client::EXPIRY_WARN_DAYS`] days or after a failed renewal, red past
/// its end (`None`: the daemon could not read its validity); an ACME one's renewal time and
/// the last order's error under it.
fn certificate_lines(certificate: Option<&Certificate>, now_ms: u64) -> Vec<Line<'static>> {
    let Some(c) = certificate else {
        return vec![field("certificate", "its validity could not be read")];
    };
    let expiry = c.expiry(now_ms);
    let issuer = if c.issuer.is_empty() {
        "unnamed issuer"
    } else {
        &c.issuer
    };
    let text = format!(
        "{} by {issuer}, until {} ({expiry})",
        c.source,
        crate::format::date(c.not_after_ms)
    );
    let style = health_style(cert_health(c, now_ms));
    let mut lines = vec![field("certificate", text).style(style)];
    if let Some(at) = c.renews_at_ms {
        let by = if c.renewal_by_ari {
            " (the CA's renewal window)"
        } else {
            ""
        };
        lines.push(field("renews", format!("{}{by}", crate::format::date(at))));
    }
    if let Some(error) = &c.last_error {
        lines.push(field("renewal", format!("FAILED: {error}")).style(style));
    }
    lines
}

/// What a certificate's state colours: expiring or failing to renew like a warning,
/// expired like an error.
pub fn cert_health(c: &Certificate, now_ms: u64) -> Health {
    match c.state(now_ms) {
        CertState::Ok => Health::Ok,
        CertState::RenewFailed | CertState::Expiring => Health::Warning,
        CertState::Expired | CertState::NotYetValid => Health::Error,
    }
}

/// send_proxy, then the counters, rates, latency and error share.
fn figure_lines(r: &RouteView) -> Vec<Line<'static>> {
    let s = &r.stats;
    let recent = r.recent();
    let mut lines = vec![
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
    ];
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
    lines.extend(limit_lines(r));
    lines
}

/// The route's limits and how often each refused, since the daemon started: what a route
/// with none shows nothing of (unless it still counted something, an HTTP/2 GOAWAY say).
fn limit_lines(r: &RouteView) -> Vec<Line<'static>> {
    let l = &r.stats.limits;
    let mut lines = Vec::new();
    if let Some(text) = crate::format::route_limits(&r.route.limits) {
        lines.push(field("limits", text));
    }
    let access = r.route.limits.has_access_lists();
    if access || l.denied > 0 {
        let how = if r.route.mode == Mode::L7 {
            "403"
        } else {
            "reset"
        };
        lines.push(field("denied", format!("{} ({how})", l.denied)));
    }
    if r.route.mode == Mode::L7 {
        let limits = &r.route.limits;
        if limits.client_request_rate > 0 || limits.route_request_rate > 0 || l.rate_limited > 0 {
            lines.push(field("rate limited", format!("{} (429)", l.rate_limited)));
        }
        if limits.max_requests > 0 || l.overloaded > 0 {
            lines.push(field(
                "max_requests",
                format!(
                    "{} in flight, {} waiting; {} queued, {} refused (503) since start",
                    l.in_flight, l.waiting, l.queued, l.overloaded
                ),
            ));
        }
        if l.rapid_resets > 0 {
            lines.push(field(
                "h2 resets",
                format!(
                    "{} connections sent GOAWAY for resetting too many streams",
                    l.rapid_resets
                ),
            ));
        }
    }
    lines
}

/// The route's traffic on each node of the fleet that has it, when more than one does
/// (nothing more to say with one): open connections, rate and error share over the fleet
/// poll's interval, a dash until two polls were seen.
fn node_lines(fleet: &Fleet, listener: &str, hostname: &str) -> Vec<Line<'static>> {
    let nodes = fleet.route(&(listener.to_owned(), hostname.to_owned()));
    if nodes.len() < 2 {
        return Vec::new();
    }
    let secs = super::fleet_link::INTERVAL.as_secs();
    let mut lines = vec![field(
        "per node",
        format!(
            "{} nodes: open, requests (l4: connections) and errors over {secs}s",
            nodes.len()
        ),
    )];
    for (node, figures) in nodes {
        let (rate, share) = match figures.traffic {
            Some(t) => (
                fit::per_sec(t.per_sec),
                t.error_share.map_or_else(|| "–".to_owned(), fit::percent),
            ),
            None => ("–".to_owned(), "–".to_owned()),
        };
        let marker = if node.current { "*" } else { " " };
        lines.push(Line::from(format!(
            "  {marker}{:<15} {:>6} open {:>7} {:>6} err",
            fit::end(&node.name, 15),
            fit::count(figures.open),
            rate,
            share
        )));
    }
    lines
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
fn member_lines(r: &RouteView, selected: usize, stale: bool, now_ms: u64) -> Vec<Line<'static>> {
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
