//! Types shared by the mc-proxy daemon and the programs that talk to it (`mcproxyctl`, the
//! console, other Rust programs).
//!
//! No I/O. The types here are the vocabulary of the admin API: a route, its mode, a firewall
//! rule. The daemon validates them (`mc_proxy::config::validate_route`); clients only build them.

#![warn(missing_docs)]

pub mod model;

pub use model::{FirewallRule, FirewallRuleKind, Mode, ParseModeError, Route};
