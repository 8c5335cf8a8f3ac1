//! The add/edit route form and the text-field editing every text input shares.
//!
//! No I/O, no drawing. Invariants: the focus is always one of [`Form::fields`] for the current
//! mode, and L7-only fields are never sent on an L4 route.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mc_proxy_shared::{Mode, Route};

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
            send_proxy_protocol: r.send_proxy_protocol,
            ..Form::new(listener)
        }
    }

    /// The fields shown for the current mode, in order: L7 adds cert, key and backend TLS.
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

    /// Flips the focused toggle.
    pub fn toggle(&mut self) {
        match self.focus {
            Field::Mode => {
                self.mode = match self.mode {
                    Mode::L4 => Mode::L7,
                    Mode::L7 => Mode::L4,
                }
            }
            Field::BackendTls => self.backend_tls = !self.backend_tls,
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
            backend_protocol: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
