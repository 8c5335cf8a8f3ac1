//! The model: what the daemon serves, as the data plane reads it. The live snapshot
//! ([`state::State`]: listeners, route tables, firewall, `[proxy]` settings), routes and their
//! validation, certificates, backend sets and their health, counters, the event bus and the
//! registry of open connections.
//!
//! No sockets, no SQLite, no TOML, no hyper: the one I/O here is reading a route's PEM files
//! (`certs`), which validation needs. Everything above imports from here; nothing here
//! imports from above (checked by `daemon/tests/layers.rs`). Writers of the snapshot are
//! `control` (and `listeners` for the bound address); everyone else reads.

pub mod acme;
pub(crate) mod backends;
pub mod certs;
pub mod clients;
pub mod cluster;
pub(crate) mod conns;
pub mod events;
pub(crate) mod firewall;
pub(crate) mod histogram;
pub mod logline;
pub mod route_limits;
pub(crate) mod routes;
pub mod state;
pub mod stats;
pub mod talkers;
