//! The firewall box: the rules, a selection kept by rule, typing a new rule (context
//! `NewRule`), the unblock question (context `Confirm`) and the daemon's answer to the last
//! change; keys in context `Firewall`.
//!
//! No I/O. Invariants: the selection is kept by rule and re-found after every change; after
//! an add, the rule the daemon reports added (normalised, say `10.0.0.0/8` for `10.1.2.3/8`)
//! takes the selection.

use crossterm::event::KeyEvent;
use mc_proxy_shared::{FirewallRule, FirewallRuleKind};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};

use super::app::Action;
use super::component::{Component, Ctx, Outcome};
use super::data::{Data, rule_key};
use super::form::{edit_text, hints};
use super::input::{self, Command, Context};
use super::select::Selection;
use super::widgets::{bold, popup, selected, wrapped_height};
use crate::format::fit;

/// The firewall box's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallView {
    /// Selected rule, by value.
    pub sel: Selection,
    /// Text being typed for a new rule (`Some` while adding).
    pub input: Option<String>,
    /// "Unblock this rule?" while waiting for y.
    pub confirm: Option<FirewallRule>,
    /// An add was sent: the next rule the daemon reports added gets the selection.
    pub select_next_added: bool,
    /// The daemon's answer to the last change.
    pub error: Option<String>,
}

impl FirewallView {
    /// Re-finds the selection after a change.
    pub fn follow(&mut self, data: &Data) {
        let rules: Vec<String> = data.rules.iter().map(rule_key).collect();
        self.sel.follow(&rules);
    }

    /// The daemon reports `rule` added: selected if this box asked for it.
    pub fn rule_added(&mut self, rule: &FirewallRule) {
        if self.select_next_added {
            self.select_next_added = false;
            self.sel.set(rule_key(rule));
        }
    }

    /// The daemon's answer to this box's last change.
    pub fn answered(&mut self, result: &Result<String, String>) {
        match result {
            Ok(_) => self.error = None,
            Err(e) => {
                self.select_next_added = false;
                self.error = Some(e.clone());
            }
        }
    }

    /// A key while the unblock question is up: `y` sends it, any key ends it.
    fn on_confirm_key(&mut self, rule: FirewallRule, key: &KeyEvent) -> Outcome {
        match input::lookup(Context::Confirm, key, false) {
            Some(Command::Yes) => Outcome::Send(Action::RemoveRule(rule)),
            _ => Outcome::Stay,
        }
    }

    /// A key while a new rule is typed: enter sends it, esc drops it, others edit it.
    fn on_input_key(&mut self, key: &KeyEvent) -> Outcome {
        let Some(input) = &mut self.input else {
            return Outcome::Stay;
        };
        match input::lookup(Context::NewRule, key, false) {
            Some(Command::Cancel) => self.input = None,
            Some(Command::Save) => {
                let value = input.trim().to_owned();
                let kind = FirewallRuleKind::of(&value);
                self.input = None;
                self.error = None;
                self.select_next_added = true;
                return Outcome::Send(Action::AddRule(FirewallRule { kind, value }));
            }
            _ => {
                edit_text(input, key);
            }
        }
        Outcome::Stay
    }
}

impl Component for FirewallView {
    fn context(&self) -> Context {
        match (&self.confirm, &self.input) {
            (Some(_), _) => Context::Confirm,
            (None, Some(_)) => Context::NewRule,
            (None, None) => Context::Firewall,
        }
    }

    fn on_key(&mut self, key: &KeyEvent, ctx: &Ctx<'_>) -> Outcome {
        if let Some(rule) = self.confirm.take() {
            return self.on_confirm_key(rule, key);
        }
        if self.input.is_some() {
            return self.on_input_key(key);
        }
        let rules: Vec<String> = ctx.data.rules.iter().map(rule_key).collect();
        match input::lookup(Context::Firewall, key, ctx.data.read_only) {
            Some(Command::Close) | Some(Command::Quit) => return Outcome::Close(None),
            Some(Command::Down) => self.sel.step(&rules, 1),
            Some(Command::Up) => self.sel.step(&rules, -1),
            Some(Command::Add) => self.input = Some(String::new()),
            Some(Command::Delete) => {
                self.sel.follow(&rules);
                self.confirm = ctx.data.rules.get(self.sel.index()).cloned();
            }
            _ => {}
        }
        Outcome::Stay
    }

    fn render(&self, ctx: &Ctx<'_>, frame: &mut Frame<'_>, area: Rect) {
        let (fw, rules) = (self, &ctx.data.rules);
        let w = area.width.min(64);
        let inner = usize::from(w.saturating_sub(2));
        let mut lines: Vec<Line<'_>> = rules
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
            lines.push(Line::from(format!(
                "an address or a CIDR; {}",
                hints(Context::NewRule)
            )));
        } else {
            let hints: Vec<&str> = input::shown(Context::Firewall, ctx.data.read_only)
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
            if rules.is_empty() {
                0
            } else {
                fw.sel.index() + 1
            },
            rules.len()
        );
        popup(frame, area, &title, lines, w, height);
    }
}
