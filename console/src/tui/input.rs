//! The console's key bindings, in one table: the help screen and the README are drawn from it,
//! and `App::on_key` implements it.

/// (keys, what they do), in the order the help screen shows them.
pub const KEYS: &[(&str, &str)] = &[
    ("up/down j/k", "move the selection"),
    ("tab left/right", "switch between listeners and routes"),
    ("a", "add a route to the selected listener"),
    ("e enter", "edit the selected route"),
    ("d", "delete the selected route (asks first)"),
    ("f", "firewall rules: a add, d remove, esc close"),
    ("/", "filter routes by hostname (esc clears)"),
    ("?", "this help"),
    ("q ctrl-c", "quit"),
    (
        "in a form",
        "tab/up/down field, space toggle, enter save, esc cancel",
    ),
];
