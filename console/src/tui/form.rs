//! The add/edit route form and the text-field editing every text input shares.
//!
//! No I/O, no drawing. Invariants: the focus is always one of [`Form::fields`] for the current
//! mode, and L7-only fields are never sent on an L4 route.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mc_proxy_shared::{BackendProtocol, Mode, Route};

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
    /// Backend host:port.
    pub backend: String,
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
    /// Text.
    Backend,
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
            mode: Mode::L4,
            tls_cert: String::new(),
            tls_key: String::new(),
            backend_tls: false,
            backend_protocol: BackendProtocol::default(),
            send_proxy_protocol: false,
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
            backend: r.backend.clone(),
            mode: r.mode,
            tls_cert: r.tls_cert.clone(),
            tls_key: r.tls_key.clone(),
            backend_tls: r.backend_tls,
            backend_protocol: r.backend_protocol,
            send_proxy_protocol: r.send_proxy_protocol,
            ..Form::new(listener)
        }
    }

    /// The fields shown for the current mode, in order: L7 adds cert, key, backend TLS and
    /// backend protocol.
    pub fn fields(&self) -> Vec<Field> {
        match self.mode {
            Mode::L4 => vec![
                Field::Hostname,
                Field::Backend,
                Field::Mode,
                Field::SendProxy,
            ],
            Mode::L7 => vec![
                Field::Hostname,
                Field::Backend,
                Field::Mode,
                Field::TlsCert,
                Field::TlsKey,
                Field::BackendTls,
                Field::BackendProtocol,
                Field::SendProxy,
            ],
        }
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
            _ => {}
        }
    }

    /// The route the form describes. L7-only fields are sent empty on an L4 route so a mode
    /// switch does not leave stale paths behind.
    pub fn route(&self) -> Route {
        let l7 = self.mode == Mode::L7;
        Route {
            hostname: self.hostname.trim().to_owned(),
            backend: self.backend.trim().to_owned(),
            mode: self.mode,
            tls_cert: if l7 {
                self.tls_cert.trim().to_owned()
            } else {
                String::new()
            },
            tls_key: if l7 {
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
        }
    }
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
        assert_eq!(form.route().backend_protocol, Auto);

        // Back to L4: the L7-only choice is not sent, as a certificate path is not.
        form.mode = Mode::L4;
        assert_eq!(form.route().backend_protocol, H2);

        let stored = Route {
            hostname: "web.test".into(),
            mode: Mode::L7,
            backend_tls: true,
            backend_protocol: Http1,
            ..Route::default()
        };
        let edit = Form::edit("127.0.0.1:8443".into(), &stored);
        assert_eq!(edit.backend_protocol, Http1);
        assert_eq!(edit.route().backend_protocol, Http1);
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
}
