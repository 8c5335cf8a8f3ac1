//! The `mcproxyctl` library: its command line (`cli`), the scripted subcommands (`ctl`, with
//! `export` writing the daemon's state as config TOML) and the
//! terminal console (`tui`); both say values the same way through `format` and take typed
//! paths through `paths`; an edit keeps what it did not touch through `edit`. The binary in `main.rs` only parses and dispatches; tests drive
//! the console through this library with a test terminal.

pub mod cli;
pub mod contexts;
pub mod ctl;
pub mod declared;
pub mod edit;
pub mod export;
pub mod format;
pub mod paths;
pub mod tui;
