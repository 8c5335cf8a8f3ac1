//! The add/edit route form (a popup component: its fields, keys in context `Form`, drawing)
//! and the text-field editing every text input shares (the form, the filters, a new rule).
//!
//! No I/O. Invariants: the focus is always one of [`Form::fields`] for the current mode, and
//! L7-only fields are never sent on an L4 route; what was typed is checked here before
//! anything is sent, and said inline like the daemon's refusals.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mc_proxy_shared::{BackendProtocol, Balance, HealthCheck, Mode, Route, RouteBackend};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};

use super::app::Action;
use super::component::{Component, Ctx, Outcome};
use super::input::{self, Command, Context};
use super::widgets::{bold, popup, wrapped_height};
use crate::edit::keep_admin_states;
use crate::format::fit;

/// Applies a text-editing key to `text`: characters, backspace, Ctrl-U (clear) and Ctrl-W
/// (delete the last word, as in a shell). Returns `false` for keys that are not editing keys.
pub fn edit_text(text: &mut String, key: &KeyEvent) -> bool {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    match key.code {
        KeyCode::Char('u') if ctrl => text.clear(),
        KeyCode::Char('w') if ctrl => {
            let sep = |c: char| c.is_whitespace() || "/.:,".contains(c);
            let end = text.trim_end_matches(sep).len();
            text.truncate(end);
            let cut = text.rfind(sep).map_or(0, |i| i + 1);
            text.truncate(cut);
        }
        KeyCode::Char(_) if ctrl => return false,
        KeyCode::Char(c) => text.push(c),
        KeyCode::Backspace => {
            text.pop();
        }
        _ => return false,
    }
    true
}

/// A key while a filter is typed: enter keeps it, esc clears it, other keys edit it.
/// Returns whether the filter is still being typed.
pub fn filter_key(filter: &mut String, key: &KeyEvent) -> bool {
    match input::lookup(Context::Filter, key, false) {
        Some(Command::Save) => false,
        Some(Command::Cancel) => {
            filter.clear();
            false
        }
        _ => {
            edit_text(filter, key);
            true
        }
    }
}

/// The add/edit route form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    /// `None` for add; for edit, the route as it was when the form opened (its hostname names
    /// it to the daemon, and only the fields that differ from it are sent).
    pub editing: Option<Route>,
    /// The listener the route belongs to.
    pub listener: String,
    /// Field values.
    pub hostname: String,
    /// The backend set as typed: members separated by commas or spaces, each `host:port`
    /// optionally followed by ` weight=N` (`a:1 weight=2, b:2`).
    pub backend: String,
    /// How a member is picked.
    pub balance: Balance,
    /// Whether the route has an active health check.
    pub check: bool,
    /// The check's interval as typed (`2s`, `500ms`).
    pub check_interval: String,
    /// L7: the check's path (empty: a TCP connect).
    pub check_path: String,
    /// Passed checks in a row that bring a backend up, as typed.
    pub check_rise: String,
    /// Failed checks in a row that take a backend down, as typed.
    pub check_fall: String,
    /// L4 or L7.
    pub mode: Mode,
    /// L7 certificate path.
    pub tls_cert: String,
    /// L7 key path.
    pub tls_key: String,
    /// L7: TLS to the backend.
    pub backend_tls: bool,
    /// L7: the HTTP version spoken to the backend.
    pub backend_protocol: BackendProtocol,
    /// PROXY v2 to the backend.
    pub send_proxy_protocol: bool,
    /// L7: a log line per request.
    pub access_log: bool,
    /// L7: the certificate from ACME (cert and key fields hidden).
    pub acme: bool,
    /// The focused field.
    pub focus: Field,
    /// The daemon's answer to the last submit, shown inline.
    pub error: Option<String>,
    /// Waiting for the daemon's answer.
    pub pending: bool,
}

/// A form field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Text.
    Hostname,
    /// Text: the backend set.
    Backend,
    /// Cycles round_robin → least_conn → source.
    Balance,
    /// Toggle: an active health check or none.
    Check,
    /// Text, with a check only.
    CheckInterval,
    /// Text, L7 with a check only.
    CheckPath,
    /// Text, with a check only.
    CheckRise,
    /// Text, with a check only.
    CheckFall,
    /// Toggle l4/l7.
    Mode,
    /// Text, L7 only.
    TlsCert,
    /// Text, L7 only.
    TlsKey,
    /// Toggle, L7 only.
    BackendTls,
    /// Cycles h2 → http1 → auto, L7 only.
    BackendProtocol,
    /// Toggle, L7 only: the per-request log.
    AccessLog,
    /// Toggle, L7 only: the certificate from ACME instead of files.
    Acme,
    /// Toggle.
    SendProxy,
}

impl Form {
    /// An empty form adding a route to `listener`.
    pub fn new(listener: String) -> Form {
        Form {
            editing: None,
            listener,
            hostname: String::new(),
            backend: String::new(),
            balance: Balance::default(),
            check: false,
            check_interval: humantime::format_duration(HealthCheck::default().interval).to_string(),
            check_path: String::new(),
            check_rise: HealthCheck::default().rise.to_string(),
            check_fall: HealthCheck::default().fall.to_string(),
            mode: Mode::L4,
            tls_cert: String::new(),
            tls_key: String::new(),
            backend_tls: false,
            backend_protocol: BackendProtocol::default(),
            send_proxy_protocol: false,
            access_log: false,
            acme: false,
            focus: Field::Hostname,
            error: None,
            pending: false,
        }
    }

    /// A form editing `r` on `listener`.
    pub fn edit(listener: String, r: &Route) -> Form {
        Form {
            editing: Some(r.clone()),
            hostname: r.hostname.clone(),
            backend: format_backends(&r.backends),
            balance: r.balance,
            check: r.health_check.is_some(),
            check_interval: humantime::format_duration(
                r.health_check
                    .as_ref()
                    .map_or(HealthCheck::default().interval, |c| c.interval),
            )
            .to_string(),
            check_path: r
                .health_check
                .as_ref()
                .map(|c| c.path.clone())
                .unwrap_or_default(),
            check_rise: r
                .health_check
                .as_ref()
                .map_or(HealthCheck::default().rise, |c| c.rise)
                .to_string(),
            check_fall: r
                .health_check
                .as_ref()
                .map_or(HealthCheck::default().fall, |c| c.fall)
                .to_string(),
            mode: r.mode,
            tls_cert: r.tls_cert.clone(),
            tls_key: r.tls_key.clone(),
            backend_tls: r.backend_tls,
            backend_protocol: r.backend_protocol,
            send_proxy_protocol: r.send_proxy_protocol,
            access_log: r.access_log,
            acme: r.acme,
            ..Form::new(listener)
        }
    }

    /// The fields shown for the current mode, in order: L7 adds cert, key, backend TLS,
    /// backend protocol and the request log.
    /// The check's interval, rise, fall and (L7) path follow the check toggle when it is on.
    pub fn fields(&self) -> Vec<Field> {
        let mut fields = vec![Field::Hostname, Field::Backend, Field::Mode];
        if self.mode == Mode::L7 {
            // Files, or ACME (the last L7 field): with ACME on the file fields are not shown.
            if !self.acme {
                fields.extend([Field::TlsCert, Field::TlsKey]);
            }
            fields.extend([
                Field::BackendTls,
                Field::BackendProtocol,
                Field::AccessLog,
                Field::Acme,
            ]);
        }
        fields.extend([Field::SendProxy, Field::Balance, Field::Check]);
        if self.check {
            fields.extend([Field::CheckInterval, Field::CheckRise, Field::CheckFall]);
            if self.mode == Mode::L7 {
                fields.push(Field::CheckPath);
            }
        }
        fields
    }

    /// Next (or previous) field of the current mode.
    pub fn move_focus(&mut self, forward: bool) {
        let fields = self.fields();
        let i = fields.iter().position(|f| *f == self.focus).unwrap_or(0);
        let n = fields.len();
        self.focus = fields[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }];
    }

    /// The focused text field, if the focus is on one.
    pub fn text_mut(&mut self) -> Option<&mut String> {
        match self.focus {
            Field::Hostname => Some(&mut self.hostname),
            Field::Backend => Some(&mut self.backend),
            Field::TlsCert => Some(&mut self.tls_cert),
            Field::TlsKey => Some(&mut self.tls_key),
            Field::CheckInterval => Some(&mut self.check_interval),
            Field::CheckPath => Some(&mut self.check_path),
            Field::CheckRise => Some(&mut self.check_rise),
            Field::CheckFall => Some(&mut self.check_fall),
            _ => None,
        }
    }

    /// Flips the focused toggle; the backend protocol, with three values, steps to the next
    /// one (`forward`) or the previous one, wrapping around.
    pub fn toggle(&mut self, forward: bool) {
        match self.focus {
            Field::Mode => {
                self.mode = match self.mode {
                    Mode::L4 => Mode::L7,
                    Mode::L7 => Mode::L4,
                }
            }
            Field::BackendTls => self.backend_tls = !self.backend_tls,
            Field::BackendProtocol => self.backend_protocol = step(self.backend_protocol, forward),
            Field::SendProxy => self.send_proxy_protocol = !self.send_proxy_protocol,
            Field::AccessLog => self.access_log = !self.access_log,
            Field::Acme => self.acme = !self.acme,
            Field::Balance => self.balance = step_in(Balance::ALL, self.balance, forward),
            Field::Check => self.check = !self.check,
            _ => {}
        }
    }

    /// The route the form describes, or what is wrong with what was typed (shown inline).
    /// L7-only fields are sent empty on an L4 route so a mode switch does not leave stale
    /// paths behind. An edited member keeps its admin state (a drain survives a weight
    /// change); the check keeps the timeout and expect it had (a timeout longer than a
    /// shortened interval is halved to fit).
    ///
    /// A weight, rise, fall or interval of 0 is refused here in the daemon's (and the TOML's)
    /// words, as any other out-of-range value is ([`RouteBackend::check_weight`],
    /// [`HealthCheck::check_timing`]): never sent as "unset", never turned into a default.
    pub fn route(&self) -> Result<Route, String> {
        let l7 = self.mode == Mode::L7;
        let mut backends = parse_backends(&self.backend)?;
        for b in &backends {
            b.check_weight().map_err(|e| e.to_string())?;
        }
        if let Some(before) = &self.editing {
            backends = keep_admin_states(backends, &before.backends);
        }
        let health_check = if self.check {
            let mut check = self
                .editing
                .as_ref()
                .and_then(|r| r.health_check.clone())
                .unwrap_or_default();
            let text = self.check_interval.trim();
            check.interval = humantime::parse_duration(text).map_err(|_| {
                format!(
                    "invalid check interval {}: expected e.g. 2s or 500ms",
                    mc_proxy_shared::text::clip(text)
                )
            })?;
            // A kept timeout longer than a shortened interval would be refused: halve it.
            if check.timeout > check.interval {
                check.timeout = check.interval / 2;
            }
            let count = |what: &str, text: &str| {
                let text = text.trim();
                text.parse::<u32>().map_err(|_| {
                    format!(
                        "invalid check {what} {}: expected a count of 1 or more",
                        mc_proxy_shared::text::clip(text)
                    )
                })
            };
            check.rise = count("rise", &self.check_rise)?;
            check.fall = count("fall", &self.check_fall)?;
            check.path = if l7 {
                self.check_path.trim().to_owned()
            } else {
                String::new()
            };
            check.check_timing().map_err(|e| e.to_string())?;
            Some(check)
        } else {
            None
        };
        Ok(Route {
            hostname: self.hostname.trim().to_owned(),
            backends,
            balance: self.balance,
            health_check,
            mode: self.mode,
            tls_cert: if l7 && !self.acme {
                self.tls_cert.trim().to_owned()
            } else {
                String::new()
            },
            tls_key: if l7 && !self.acme {
                self.tls_key.trim().to_owned()
            } else {
                String::new()
            },
            backend_tls: l7 && self.backend_tls,
            send_proxy_protocol: self.send_proxy_protocol,
            backend_protocol: if l7 {
                self.backend_protocol
            } else {
                BackendProtocol::default()
            },
            // An L7 field: an L4 route has no requests to log (its connection line says all).
            access_log: l7 && self.access_log,
            // Not edited in the form (`mcproxyctl routes update --allow-from ...`): a new route
            // has none, an edit leaves the route's as they are (`link::patch` sends none).
            limits: Default::default(),
            acme: l7 && self.acme,
        })
    }
}

/// A backend set as the form shows it: `a:1 weight=2, b:2`.
pub fn format_backends(backends: &[RouteBackend]) -> String {
    backends
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A backend set as typed: members separated by commas or spaces, each `host:port` with an
/// optional `weight=N` after it. The daemon's validation judges the addresses; a word with a
/// `=` is an option, and one that is not `weight=` is refused here, named (a misspelt
/// `wieght=3` is not a backend whose port is wrong). A weight of 0 parses, for
/// [`Form::route`] to refuse.
pub fn parse_backends(text: &str) -> Result<Vec<RouteBackend>, String> {
    use mc_proxy_shared::text::clip;
    let mut members: Vec<RouteBackend> = Vec::new();
    for word in text.split(|c: char| c == ',' || c.is_whitespace()) {
        if word.is_empty() {
            continue;
        }
        if word == "weight" {
            return Err(
                "weight needs a value: expected weight=N after a backend's host:port".into(),
            );
        }
        let Some((key, weight)) = word.split_once('=') else {
            members.push(RouteBackend::new(word));
            continue;
        };
        if key != "weight" {
            let after = members.last().map_or_else(String::new, |m| {
                format!(" after backend {}", clip(&m.address))
            });
            return Err(format!(
                "unknown option {}{after}: expected weight=N",
                clip(key)
            ));
        }
        let Some(last) = members.last_mut() else {
            return Err("weight= must follow a backend's host:port".into());
        };
        last.weight = weight.parse().map_err(|_| {
            format!(
                "invalid weight {} for backend {}: expected a number from 1 to {}",
                clip(weight),
                clip(&last.address),
                RouteBackend::MAX_WEIGHT
            )
        })?;
    }
    if members.is_empty() {
        return Err("at least one backend is needed (host:port)".into());
    }
    Ok(members)
}

/// The value after (or before) `v` in `all`, wrapping.
pub fn step_in<T: Copy + PartialEq>(all: &[T], v: T, forward: bool) -> T {
    let i = all.iter().position(|q| *q == v).unwrap_or(0);
    let n = all.len();
    all[if forward {
        (i + 1) % n
    } else {
        (i + n - 1) % n
    }]
}

/// The backend protocol after (or before) `p`, in [`BackendProtocol::ALL`]'s order, wrapping.
pub fn step(p: BackendProtocol, forward: bool) -> BackendProtocol {
    let all = BackendProtocol::ALL;
    let i = all.iter().position(|q| *q == p).unwrap_or(0);
    let n = all.len();
    all[if forward {
        (i + 1) % n
    } else {
        (i + n - 1) % n
    }]
}

impl Component for Form {
    fn context(&self) -> Context {
        Context::Form
    }

    fn on_key(&mut self, key: &KeyEvent, _ctx: &Ctx<'_>) -> Outcome {
        // Never open read-only: its keys are looked up as editing ones.
        match input::lookup(Context::Form, key, false) {
            Some(Command::Cancel) => return Outcome::Close(None),
            Some(Command::NextField) => self.move_focus(true),
            Some(Command::PrevField) => self.move_focus(false),
            Some(Command::Save) if !self.pending => return self.submit(),
            Some(Command::Toggle) if self.text_mut().is_none() => self.toggle(true),
            Some(Command::ToggleBack) if self.text_mut().is_none() => self.toggle(false),
            _ => {
                if let Some(text) = self.text_mut() {
                    edit_text(text, key);
                }
            }
        }
        Outcome::Stay
    }

    fn render(&self, _ctx: &Ctx<'_>, frame: &mut Frame<'_>, area: Rect) {
        let form = self;
        let title = match &form.editing {
            None => format!("add route to {}", form.listener),
            Some(before) => format!("edit route {}", before.hostname),
        };
        let w = area.width.min(76);
        // Label column 16; the value shows its end when long, so the cursor stays in view.
        let value_w = usize::from(w.saturating_sub(2 + 16 + 1));
        let mut lines = Vec::new();
        for field in form.fields() {
            let (label, value) = form.label_value(field);
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
            (None, false) => lines.push(Line::from(hints(Context::Form))),
        }
        let height = wrapped_height(&lines, w.saturating_sub(2)) + 2;
        popup(frame, area, &title, lines, w, height);
    }
}

impl Form {
    /// A field's label and its value as shown (choices say what space steps to).
    fn label_value(&self, field: Field) -> (&'static str, String) {
        match field {
            Field::Hostname => ("hostname", self.hostname.clone()),
            Field::Backend => ("backends", self.backend.clone()),
            Field::Balance => (
                "balance",
                format!(
                    "{}  [space: {}]",
                    self.balance,
                    step_in(mc_proxy_shared::Balance::ALL, self.balance, true)
                ),
            ),
            Field::Check => ("health check", checkbox(self.check)),
            Field::CheckInterval => ("check every", self.check_interval.clone()),
            Field::CheckPath => ("check path", self.check_path.clone()),
            Field::CheckRise => ("check rise", self.check_rise.clone()),
            Field::CheckFall => ("check fall", self.check_fall.clone()),
            Field::Mode => (
                "mode",
                match self.mode {
                    Mode::L4 => "l4 (passthrough)  [space: l7]".into(),
                    Mode::L7 => "l7 (terminate TLS)  [space: l4]".into(),
                },
            ),
            Field::TlsCert => ("tls_cert", self.tls_cert.clone()),
            Field::TlsKey => ("tls_key", self.tls_key.clone()),
            Field::BackendTls => ("backend_tls", checkbox(self.backend_tls)),
            Field::BackendProtocol => (
                "backend_proto",
                format!(
                    "{} ({})  [space: {}]",
                    self.backend_protocol,
                    protocol_meaning(self.backend_protocol, self.backend_tls),
                    step(self.backend_protocol, true)
                ),
            ),
            Field::SendProxy => ("send_proxy", checkbox(self.send_proxy_protocol)),
            Field::AccessLog => ("access_log", checkbox(self.access_log)),
            Field::Acme => ("acme", checkbox(self.acme)),
        }
    }

    /// Enter: what was typed is checked first (refused inline); then the add or update is
    /// sent and the form waits for the daemon's answer.
    fn submit(&mut self) -> Outcome {
        let route = match self.route() {
            Ok(route) => route,
            Err(e) => {
                self.error = Some(e);
                return Outcome::Stay;
            }
        };
        self.error = None;
        self.pending = true;
        Outcome::Send(match &self.editing {
            None => Action::AddRoute {
                listener: self.listener.clone(),
                route,
            },
            Some(before) => Action::UpdateRoute {
                listener: self.listener.clone(),
                before: Box::new(before.clone()),
                route,
            },
        })
    }
}

/// The hints of `context`, joined: the footer of a box that lists its keys.
pub fn hints(context: Context) -> String {
    input::shown(context, false)
        .filter_map(|b| b.hint)
        .collect::<Vec<_>>()
        .join("  ")
}

/// What an L7 route's backend connection speaks, given its TLS setting, in a few words.
pub fn protocol_meaning(protocol: BackendProtocol, backend_tls: bool) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_protocol_cycles_is_l7_only_and_kept_by_an_edit() {
        let mut form = Form::new("127.0.0.1:8443".into());
        assert!(!form.fields().contains(&Field::BackendProtocol));
        form.mode = Mode::L7;
        let fields = form.fields();
        let tls = fields.iter().position(|f| *f == Field::BackendTls).unwrap();
        assert_eq!(fields[tls + 1], Field::BackendProtocol);

        form.focus = Field::BackendProtocol;
        assert_eq!(form.backend_protocol, BackendProtocol::H2);
        let mut seen = Vec::new();
        for _ in 0..3 {
            form.toggle(true);
            seen.push(form.backend_protocol);
        }
        use BackendProtocol::{Auto, H2, Http1};
        assert_eq!(seen, [Http1, Auto, H2]);
        form.toggle(false);
        assert_eq!(form.backend_protocol, Auto, "backwards wraps around");
        form.backend = "a:1".into();
        assert_eq!(form.route().unwrap().backend_protocol, Auto);

        // Back to L4: the L7-only choice is not sent, as a certificate path is not.
        form.mode = Mode::L4;
        assert_eq!(form.route().unwrap().backend_protocol, H2);

        let stored = Route {
            hostname: "web.test".into(),
            mode: Mode::L7,
            backend_tls: true,
            backend_protocol: Http1,
            backends: vec![RouteBackend::new("a:1")],
            ..Route::default()
        };
        let edit = Form::edit("127.0.0.1:8443".into(), &stored);
        assert_eq!(edit.backend_protocol, Http1);
        assert_eq!(edit.route().unwrap().backend_protocol, Http1);
    }

    #[test]
    fn ctrl_u_clears_and_ctrl_w_deletes_a_word() {
        let ctrl = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL);
        let mut t = String::from("svc12.prod.test");
        assert!(edit_text(&mut t, &ctrl('w')));
        assert_eq!(t, "svc12.prod.");
        assert!(edit_text(&mut t, &ctrl('w')));
        assert_eq!(t, "svc12.");
        let mut t = String::from("10.0.0.1 extra  ");
        edit_text(&mut t, &ctrl('w'));
        assert_eq!(t, "10.0.0.1 ");
        assert!(edit_text(&mut t, &ctrl('u')));
        assert_eq!(t, "");
        assert!(!edit_text(&mut t, &ctrl('x')));
        assert!(edit_text(
            &mut t,
            &KeyEvent::new(KeyCode::Char('a'), KeyModifiers::NONE)
        ));
        assert_eq!(t, "a");
    }

    #[test]
    fn the_backend_field_takes_a_set_separated_by_commas_or_spaces() {
        let set = parse_backends("a:1 weight=2, b:2,c:3  [::1]:4 weight=7").unwrap();
        assert_eq!(
            set,
            vec![
                RouteBackend::new("a:1").with_weight(2),
                RouteBackend::new("b:2"),
                RouteBackend::new("c:3"),
                RouteBackend::new("[::1]:4").with_weight(7),
            ]
        );
        assert_eq!(
            format_backends(&set),
            "a:1 weight=2, b:2, c:3, [::1]:4 weight=7"
        );
        assert_eq!(parse_backends(&format_backends(&set)).unwrap(), set);
        assert_eq!(
            parse_backends(" , ").unwrap_err(),
            "at least one backend is needed (host:port)"
        );
        assert_eq!(
            parse_backends("weight=2 a:1").unwrap_err(),
            "weight= must follow a backend's host:port"
        );
        assert_eq!(
            parse_backends("a:1 weight=lots").unwrap_err(),
            "invalid weight \"lots\" for backend \"a:1\": expected a number from 1 to 256"
        );
    }

    #[test]
    fn rise_and_fall_are_edited_and_checked_and_a_long_timeout_fits_a_short_interval() {
        let stored = Route {
            hostname: "app.test".into(),
            backends: vec![RouteBackend::new("a:1")],
            health_check: Some(HealthCheck {
                rise: 4,
                fall: 5,
                ..HealthCheck::default()
            }),
            ..Route::default()
        };
        let mut form = Form::edit("127.0.0.1:8443".into(), &stored);
        assert_eq!(
            (form.check_rise.as_str(), form.check_fall.as_str()),
            ("4", "5")
        );
        let fields = form.fields();
        let at = fields
            .iter()
            .position(|f| *f == Field::CheckInterval)
            .unwrap();
        assert_eq!(fields[at + 1..at + 3], [Field::CheckRise, Field::CheckFall]);
        form.check_rise = "1".into();
        form.check_fall = " 2 ".into();
        form.check_interval = "500ms".into();
        let check = form.route().unwrap().health_check.unwrap();
        assert_eq!((check.rise, check.fall), (1, 2));
        // The kept 1 s timeout would exceed the new interval: halved to fit.
        assert_eq!(check.timeout, std::time::Duration::from_millis(250));
        form.check_fall = "x".repeat(1000);
        assert!(form.route().unwrap_err().len() < 200, "no unbounded echo");
        form.check_fall = "-1".into();
        assert_eq!(
            form.route().unwrap_err(),
            "invalid check fall \"-1\": expected a count of 1 or more"
        );
    }

    #[test]
    fn zeros_are_refused_in_the_daemons_words_never_sent_as_unset() {
        let stored = Route {
            hostname: "app.test".into(),
            backends: vec![RouteBackend::new("a:1").with_weight(2)],
            health_check: Some(HealthCheck::default()),
            ..Route::default()
        };
        let fresh = || Form::edit("127.0.0.1:8443".into(), &stored);
        // The texts `routes::validate_route` gives for the TOML and the admin API.
        type Edit = fn(&mut Form);
        let cases: [(Edit, &str); 6] = [
            (
                |f| f.backend = "a:1 weight=0".into(),
                "backend \"a:1\": weight 0 is not from 1 to 256",
            ),
            (
                |f| f.backend = "a:1, b:2 weight=257".into(),
                "backend \"b:2\": weight 257 is not from 1 to 256",
            ),
            (
                |f| f.check_rise = "0".into(),
                "health_check: rise and fall must be at least 1",
            ),
            (
                |f| f.check_fall = " 0 ".into(),
                "health_check: rise and fall must be at least 1",
            ),
            (
                |f| f.check_interval = "0s".into(),
                "health_check: interval must be at least 100ms",
            ),
            (
                |f| f.check_interval = "50ms".into(),
                "health_check: interval must be at least 100ms",
            ),
        ];
        for (edit, expected) in cases {
            let mut form = fresh();
            assert!(form.route().is_ok());
            edit(&mut form);
            assert_eq!(form.route().unwrap_err(), expected, "{form:?}");
        }
        // The smallest values that work are taken as typed.
        let mut form = fresh();
        form.backend = "a:1 weight=1".into();
        form.check_rise = "1".into();
        form.check_fall = "1".into();
        form.check_interval = "100ms".into();
        let route = form.route().unwrap();
        assert_eq!(route.backends[0].weight, 1);
        let check = route.health_check.unwrap();
        assert_eq!((check.rise, check.fall), (1, 1));
        assert_eq!(check.interval, std::time::Duration::from_millis(100));
        assert_eq!(check.timeout, std::time::Duration::from_millis(50));
    }

    #[test]
    fn a_misspelt_backend_option_is_named_not_taken_for_an_address() {
        assert_eq!(
            parse_backends("a:1 wieght=3").unwrap_err(),
            "unknown option \"wieght\" after backend \"a:1\": expected weight=N"
        );
        assert_eq!(
            parse_backends("a:1,wieght=3").unwrap_err(),
            "unknown option \"wieght\" after backend \"a:1\": expected weight=N"
        );
        assert_eq!(
            parse_backends("w=3 a:1").unwrap_err(),
            "unknown option \"w\": expected weight=N"
        );
        assert_eq!(
            parse_backends("a:1 weight").unwrap_err(),
            "weight needs a value: expected weight=N after a backend's host:port"
        );
        // A comma before the weight is just a separator here.
        assert_eq!(
            parse_backends("a:1, weight=3").unwrap(),
            vec![RouteBackend::new("a:1").with_weight(3)]
        );
        let huge = format!("a:1 {}=3", "w".repeat(100_000));
        assert!(parse_backends(&huge).unwrap_err().len() < 200);
    }

    #[test]
    fn an_edit_keeps_member_states_and_the_check_it_had() {
        use mc_proxy_shared::AdminState;
        let stored = Route {
            hostname: "app.test".into(),
            backends: vec![
                RouteBackend {
                    state: AdminState::Draining,
                    ..RouteBackend::new("a:1")
                },
                RouteBackend::new("b:1"),
            ],
            health_check: Some(HealthCheck {
                fall: 7,
                ..HealthCheck::default()
            }),
            ..Route::default()
        };
        let mut form = Form::edit("127.0.0.1:8443".into(), &stored);
        assert_eq!(form.backend, "a:1, b:1");
        assert!(form.check && form.fields().contains(&Field::CheckInterval));
        assert!(!form.fields().contains(&Field::CheckPath), "L4: no path");
        form.backend = "a:1 weight=3 c:1".into();
        form.check_interval = "5s".into();
        form.focus = Field::Balance;
        form.toggle(true);
        let route = form.route().unwrap();
        assert_eq!(route.backends[0].state, AdminState::Draining);
        assert_eq!(route.backends[0].weight, 3);
        assert_eq!(route.backends[1], RouteBackend::new("c:1"));
        assert_eq!(route.balance, Balance::LeastConn);
        let check = route.health_check.unwrap();
        assert_eq!((check.interval.as_secs(), check.fall), (5, 7));
        form.check_interval = "soon".into();
        assert_eq!(
            form.route().unwrap_err(),
            "invalid check interval \"soon\": expected e.g. 2s or 500ms"
        );
        form.focus = Field::Check;
        form.toggle(true);
        assert_eq!(form.route().unwrap().health_check, None);
        assert!(!form.fields().contains(&Field::CheckInterval));
    }

    /// ACME is an L7 choice against the files: on, the file fields go and none is sent.
    #[test]
    fn acme_hides_the_certificate_files() {
        let mut form = Form::new("127.0.0.1:8443".into());
        form.hostname = "web.test".into();
        form.backend = "127.0.0.1:9".into();
        assert!(!form.fields().contains(&Field::Acme), "an L7 field");
        form.mode = Mode::L7;
        form.tls_cert = "/c.pem".into();
        form.tls_key = "/c.key".into();
        assert!(form.fields().contains(&Field::TlsCert));
        form.focus = Field::Acme;
        form.toggle(true);
        assert!(
            !form.fields().contains(&Field::TlsCert) && !form.fields().contains(&Field::TlsKey)
        );
        let route = form.route().unwrap();
        assert!(route.acme && route.tls_cert.is_empty() && route.tls_key.is_empty());
        let edit = Form::edit("127.0.0.1:8443".into(), &route);
        assert!(edit.acme && !edit.fields().contains(&Field::TlsCert));
    }

    /// The request log is an L7 field: shown and sent on L7, neither on L4, and an edit
    /// starts from the route's own value.
    #[test]
    fn the_request_log_is_an_l7_toggle_kept_by_an_edit() {
        let mut form = Form::new("127.0.0.1:8443".into());
        form.hostname = "web.test".into();
        form.backend = "127.0.0.1:9".into();
        assert!(!form.fields().contains(&Field::AccessLog));
        form.mode = Mode::L7;
        form.focus = Field::AccessLog;
        assert!(form.fields().contains(&Field::AccessLog));
        form.toggle(true);
        assert!(form.route().unwrap().access_log);
        form.mode = Mode::L4;
        assert!(!form.route().unwrap().access_log, "sent on an L4 route");

        let route = Route {
            mode: Mode::L7,
            access_log: true,
            ..form.route().unwrap()
        };
        let edit = Form::edit("127.0.0.1:8443".into(), &route);
        assert!(edit.access_log && edit.route().unwrap().access_log);
    }
}
