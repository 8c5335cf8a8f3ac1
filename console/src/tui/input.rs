//! The console's key bindings, in one table for every context (views, boxes, the form, the
//! filter, questions, the help): each component finds its commands with [`lookup`], and the
//! help screen and the hint lines are drawn from [`KEYS`], so what the help says is what the
//! keys do. Keys no binding claims in a text context (form, filter, new rule) are typed.
//!
//! No I/O. Invariant: within one [`Context`] a key maps to at most one command (checked by a
//! test), and every binding that changes the daemon is marked `edits`, which `--read-only`
//! hides and refuses.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// The listeners and routes panes.
    Routes,
    /// The connections view.
    Connections,
    /// The fleet view.
    Fleet,
    /// The talkers view.
    Talkers,
    /// The firewall rules box.
    Firewall,
    /// A route's detail box, with its backends.
    RouteDetail,
    /// A listener's detail box.
    ListenerDetail,
    /// The add/edit route form.
    Form,
    /// Typing the filter of the current view.
    Filter,
    /// Typing an address or network to block (firewall box).
    NewRule,
    /// A question: delete a route, close a connection, unblock a rule, leave a route with no
    /// enabled backend.
    Confirm,
    /// The key list itself.
    Help,
    /// Any text field (filter, form, new rule): the editing keys, documentation only.
    Text,
}

impl Context {
    /// Heading on the help screen.
    pub fn title(self) -> &'static str {
        match self {
            Context::Routes => "listeners and routes",
            Context::Connections => "connections (c)",
            Context::Fleet => "fleet: every node (n)",
            Context::Talkers => "clients hitting limits (t)",
            Context::Firewall => "firewall (f)",
            Context::RouteDetail => "route detail (enter on a route)",
            Context::ListenerDetail => "listener detail (enter on a listener)",
            Context::Form => "route form (a, e)",
            Context::Filter => "typing a filter (/)",
            Context::NewRule => "typing a rule to block (a in the firewall)",
            Context::Confirm => "a question (delete, close, unblock, no backend left)",
            Context::Help => "this list",
            Context::Text => "in a text field or form",
        }
    }
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Selection one row up.
    Up,
    /// Selection one row down.
    Down,
    /// Selection a page up.
    PageUp,
    /// Selection a page down.
    PageDown,
    /// First row.
    Top,
    /// Last row.
    Bottom,
    /// Switch between the listeners and routes panes.
    SwitchPane,
    /// Everything about the selected row, in full.
    Detail,
    /// Add a route or rule.
    Add,
    /// Edit the selected route.
    Edit,
    /// Delete the selected route or rule (asks first).
    Delete,
    /// Open the firewall rules.
    Firewall,
    /// Switch between the routes and connections views.
    Connections,
    /// Switch between the routes and fleet views.
    Fleet,
    /// Switch between the routes and talkers views.
    Talkers,
    /// Start a new filter.
    Filter,
    /// Next sort order.
    Sort,
    /// What the events pane shows next: all, no traffic, backends, traffic.
    EventFilter,
    /// The key list.
    Help,
    /// Close the box or view (or clear the notice).
    Close,
    /// Leave the console.
    Quit,
    /// Drain the selected backend: no new traffic, open connections finish.
    Drain,
    /// Put the selected backend back in rotation.
    Enable,
    /// Take the selected backend out of rotation.
    Disable,
    /// One more weight for the selected backend.
    WeightUp,
    /// One less weight for the selected backend.
    WeightDown,
    /// Form: the next field.
    NextField,
    /// Form: the previous field.
    PrevField,
    /// Form: toggle or cycle the focused choice forward (on a text field the key is typed).
    Toggle,
    /// Form: cycle the focused choice backward.
    ToggleBack,
    /// Save the form, keep the filter, add the rule.
    Save,
    /// Leave the form or the typed rule; clear the filter.
    Cancel,
    /// Yes to a question.
    Yes,
    /// Documentation only: what any other key does in a question or in the help.
    OtherKey,
    /// Documentation only: text editing keys handled by the text field itself.
    TextEditing,
}

/// Rows moved by page up/down.
pub const PAGE: isize = 10;

impl Command {
    /// How far a selection key moves the selection, in rows: `None` for other keys. Top and
    /// Bottom are far enough to clamp at either end of any list.
    pub fn rows(self) -> Option<isize> {
        Some(match self {
            Command::Up => -1,
            Command::Down => 1,
            Command::PageUp => -PAGE,
            Command::PageDown => PAGE,
            Command::Top => isize::MIN / 2,
            Command::Bottom => isize::MAX / 2,
            _ => return None,
        })
    }
}

/// One binding.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    /// Where it applies.
    pub context: Context,
    /// The keys (without modifiers, except where `ctrl` says so).
    pub keys: &'static [KeyCode],
    /// The keys as the help shows them.
    pub label: &'static str,
    /// What it does, for the help screen.
    pub help: &'static str,
    /// Short form for the hint line; `None` keeps it off the hint line.
    pub hint: Option<&'static str>,
    /// The command.
    pub command: Command,
    /// Changes the daemon's state: hidden and refused in `--read-only`.
    pub edits: bool,
}

const fn b(
    context: Context,
    keys: &'static [KeyCode],
    label: &'static str,
    help: &'static str,
    hint: Option<&'static str>,
    command: Command,
    edits: bool,
) -> Binding {
    Binding {
        context,
        keys,
        label,
        help,
        hint,
        command,
        edits,
    }
}

use Command as C;
use Context::{
    Confirm as Cf, Connections as Conns, Filter as Fl, Firewall as Fw, Fleet as Fv, Form as Fm,
    Help as Hp, ListenerDetail as Ld, NewRule as Nr, RouteDetail as Rd, Routes as Rt,
    Talkers as Tk, Text as Tx,
};
use KeyCode::{
    BackTab, Char, Delete, Down, End, Enter, Esc, Home, Left, PageDown, PageUp, Right, Tab, Up,
};

/// Every binding, in the order the help screen shows them.
#[rustfmt::skip]
pub const KEYS: &[Binding] = &[
    b(Rt, &[Up, Down, Char('k'), Char('j')], "up/down j/k", "move the selection", None, C::Down, false),
    b(Rt, &[PageUp, PageDown, Home, End], "pgup/pgdn home/end", "move by a page, to the first or last row", None, C::PageDown, false),
    b(Rt, &[Tab, Left, Right, Char('h'), Char('l')], "tab left/right", "switch between listeners and routes", Some("tab pane"), C::SwitchPane, false),
    b(Rt, &[Enter], "enter", "details of the selected listener or route, in full", Some("enter detail"), C::Detail, false),
    b(Rt, &[Char('a')], "a", "add a route to the selected listener", Some("a add"), C::Add, true),
    b(Rt, &[Char('e')], "e", "edit the selected route", Some("e edit"), C::Edit, true),
    b(Rt, &[Char('d'), Delete], "d del", "delete the selected route (asks first)", Some("d del"), C::Delete, true),
    b(Rt, &[Char('s')], "s", "sort routes: name, traffic, errors", Some("s sort"), C::Sort, false),
    b(Rt, &[Char('/')], "/", "new hostname filter (esc clears)", Some("/ filter"), C::Filter, false),
    b(Rt, &[Char('v')], "v", "events pane: all, no traffic, backends only, traffic only", Some("v events"), C::EventFilter, false),
    b(Rt, &[Char('c')], "c", "open connections", Some("c conns"), C::Connections, false),
    b(Rt, &[Char('f')], "f", "firewall rules", Some("f firewall"), C::Firewall, false),
    b(Rt, &[Char('n')], "n", "every node of the fleet (contexts, cluster registry)", Some("n nodes"), C::Fleet, false),
    b(Rt, &[Char('t')], "t", "the client addresses that hit limits most", Some("t talkers"), C::Talkers, false),
    b(Rt, &[Char('?')], "?", "this help", Some("? help"), C::Help, false),
    b(Rt, &[Esc], "esc", "clear the filter and the notice", None, C::Close, false),
    b(Rt, &[Char('q')], "q ctrl-c", "quit", Some("q quit"), C::Quit, false),
    b(Conns, &[Up, Down, Char('k'), Char('j')], "up/down j/k", "move the selection", None, C::Down, false),
    b(Conns, &[PageUp, PageDown, Home, End], "pgup/pgdn home/end", "move by a page, to the first or last row", None, C::PageDown, false),
    b(Conns, &[Char('s')], "s", "sort: age, bytes, client, route", Some("s sort"), C::Sort, false),
    b(Conns, &[Char('d'), Delete], "d del", "close the selected connection now (asks first)", Some("d close"), C::Delete, true),
    b(Conns, &[Char('/')], "/", "new filter on client, route or listener", Some("/ filter"), C::Filter, false),
    b(Conns, &[Char('?')], "?", "this help", Some("? help"), C::Help, false),
    b(Conns, &[Esc, Char('c')], "esc c", "back to the routes", Some("esc back"), C::Close, false),
    b(Conns, &[Char('q')], "q", "quit", Some("q quit"), C::Quit, false),
    b(Fv, &[Up, Down, Char('k'), Char('j')], "up/down j/k", "move the selection", None, C::Down, false),
    b(Fv, &[PageUp, PageDown, Home, End], "pgup/pgdn home/end", "move by a page, to the first or last row", None, C::PageDown, false),
    b(Fv, &[Enter], "enter", "switch the console to the selected node (its context)", Some("enter switch"), C::Detail, false),
    b(Fv, &[Char('?')], "?", "this help", Some("? help"), C::Help, false),
    b(Fv, &[Esc, Char('n')], "esc n", "back to the routes", Some("esc back"), C::Close, false),
    b(Fv, &[Char('q')], "q", "quit", Some("q quit"), C::Quit, false),
    b(Tk, &[Up, Down, Char('k'), Char('j')], "up/down j/k", "move the selection", None, C::Down, false),
    b(Tk, &[PageUp, PageDown, Home, End], "pgup/pgdn home/end", "move by a page, to the first or last row", None, C::PageDown, false),
    b(Tk, &[Char('?')], "?", "this help", Some("? help"), C::Help, false),
    b(Tk, &[Esc, Char('t')], "esc t", "back to the routes", Some("esc back"), C::Close, false),
    b(Tk, &[Char('q')], "q", "quit", Some("q quit"), C::Quit, false),
    b(Fw, &[Up, Down, Char('k'), Char('j')], "up/down j/k", "move the selection", None, C::Down, false),
    b(Fw, &[Char('a')], "a", "block an address or network", Some("a block"), C::Add, true),
    b(Fw, &[Char('d'), Delete], "d del", "unblock the selected rule (asks first)", Some("d unblock"), C::Delete, true),
    b(Fw, &[Esc, Char('f'), Char('q')], "esc f", "close", Some("esc close"), C::Close, false),
    b(Rd, &[Up, Down, Char('k'), Char('j')], "up/down j/k", "select a backend (the box scrolls to it)", None, C::Down, false),
    b(Rd, &[PageUp, PageDown, Home, End], "pgup/pgdn home/end", "select a backend a page away, the first or the last", None, C::PageDown, false),
    b(Rd, &[Char('w')], "w", "drain the selected backend (no new traffic, open connections finish; asks first when no other backend is enabled)", Some("w drain"), C::Drain, true),
    b(Rd, &[Char('n')], "n", "enable the selected backend", Some("n enable"), C::Enable, true),
    b(Rd, &[Char('x')], "x", "disable the selected backend (asks first when no other backend is enabled)", Some("x disable"), C::Disable, true),
    b(Rd, &[Char('+'), Char('=')], "+", "one more weight for the selected backend (up to 256)", Some("+/- weight"), C::WeightUp, true),
    b(Rd, &[Char('-')], "-", "one less weight for the selected backend (down to 1)", None, C::WeightDown, true),
    b(Rd, &[Char('e')], "e", "edit the route", Some("e edit"), C::Edit, true),
    b(Rd, &[Char('?')], "?", "these keys", Some("? keys"), C::Help, false),
    b(Rd, &[Esc, Char('q')], "esc q", "close", Some("esc close"), C::Close, false),
    b(Ld, &[Char('e')], "e", "edit the selected route", None, C::Edit, true),
    b(Ld, &[], "any other key", "close", None, C::OtherKey, false),
    b(Fm, &[Tab, Down], "tab down", "next field", Some("tab/up/down: field"), C::NextField, true),
    b(Fm, &[BackTab, Up], "shift-tab up", "previous field", None, C::PrevField, true),
    b(Fm, &[Char(' '), Right], "space right", "toggle or cycle the focused choice (typed in a text field)", Some("space: toggle"), C::Toggle, true),
    b(Fm, &[Left], "left", "cycle the focused choice back", None, C::ToggleBack, true),
    b(Fm, &[Enter], "enter", "save (the form stays open until the daemon agrees)", Some("enter: save"), C::Save, true),
    b(Fm, &[Esc], "esc", "cancel", Some("esc: cancel"), C::Cancel, true),
    b(Fl, &[Enter], "enter", "keep the filter", Some("enter: keep"), C::Save, false),
    b(Fl, &[Esc], "esc", "clear the filter", Some("esc: clear"), C::Cancel, false),
    b(Nr, &[Enter], "enter", "block it", Some("enter: add"), C::Save, true),
    b(Nr, &[Esc], "esc", "cancel", Some("esc: cancel"), C::Cancel, true),
    b(Cf, &[Char('y'), Char('Y')], "y", "yes", None, C::Yes, false),
    b(Cf, &[], "any other key", "no: nothing changes", None, C::OtherKey, false),
    b(Hp, &[Up, Down, Char('k'), Char('j')], "up/down j/k", "scroll", None, C::Down, false),
    b(Hp, &[], "any other key", "close (back to the route detail when opened from it)", None, C::OtherKey, false),
    b(Tx, &[], "ctrl-u ctrl-w", "clear the field, delete the last word", None, C::TextEditing, false),
];

/// The command `key` means in `context`, if any. Editing commands are refused when
/// `read_only`. Up/Down and the page keys share one row of the table, so the exact direction
/// is decided here.
pub fn lookup(context: Context, key: &KeyEvent, read_only: bool) -> Option<Command> {
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return match key.code {
            Char('c') => Some(Command::Quit),
            _ => None,
        };
    }
    let binding = KEYS
        .iter()
        .find(|b| b.context == context && b.keys.contains(&key.code))?;
    if binding.edits && read_only {
        return None;
    }
    Some(match (binding.command, key.code) {
        (C::Down, Up | Char('k')) => C::Up,
        (C::PageDown, PageUp) => C::PageUp,
        (C::PageDown, Home) => C::Top,
        (C::PageDown, End) => C::Bottom,
        (command, _) => command,
    })
}

/// The bindings of `context` the help and hint line show (editing ones hidden in read-only).
pub fn shown(context: Context, read_only: bool) -> impl Iterator<Item = &'static Binding> {
    KEYS.iter()
        .filter(move |b| b.context == context && !(read_only && b.edits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_means_one_thing_per_context() {
        for (i, a) in KEYS.iter().enumerate() {
            for b in &KEYS[i + 1..] {
                if a.context == b.context {
                    for k in a.keys {
                        assert!(!b.keys.contains(k), "{k:?} bound twice in {:?}", a.context);
                    }
                }
            }
        }
    }

    #[test]
    fn every_context_lists_its_keys_in_the_help() {
        for context in [Rt, Conns, Fv, Tk, Fw, Rd, Ld, Fm, Fl, Nr, Cf, Hp, Tx] {
            assert!(!context.title().is_empty());
            assert!(shown(context, false).count() > 0, "{context:?} has no keys");
        }
        // The form's footer and the filter line are the table's hints.
        let hints = |c| shown(c, false).filter_map(|b| b.hint).collect::<Vec<_>>();
        assert_eq!(
            hints(Fm).join("  "),
            "tab/up/down: field  space: toggle  enter: save  esc: cancel"
        );
        assert_eq!(hints(Fl).join("  "), "enter: keep  esc: clear");
        let key = |code| KeyEvent::new(code, KeyModifiers::NONE);
        assert_eq!(lookup(Fm, &key(Char(' ')), false), Some(C::Toggle));
        assert_eq!(lookup(Fm, &key(Char('x')), false), None, "typed");
        assert_eq!(lookup(Cf, &key(Char('Y')), false), Some(C::Yes));
        assert_eq!(lookup(Hp, &key(Char('k')), false), Some(C::Up));
    }

    #[test]
    fn read_only_refuses_editing_keys_only() {
        let key = |c| KeyEvent::new(Char(c), KeyModifiers::NONE);
        assert_eq!(lookup(Rt, &key('a'), false), Some(C::Add));
        assert_eq!(lookup(Rt, &key('a'), true), None);
        assert_eq!(lookup(Rt, &key('d'), true), None);
        assert_eq!(lookup(Rt, &key('s'), true), Some(C::Sort));
        assert_eq!(lookup(Rt, &key('k'), true), Some(C::Up));
        assert!(shown(Rt, true).all(|b| !b.edits));
        assert!(shown(Rt, false).any(|b| b.edits));
    }
}
