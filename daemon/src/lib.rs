//! mc-proxy: a TLS edge router.
//!
//! The daemon accepts TCP connections on listeners, reads the TLS ClientHello to learn the SNI
//! hostname, checks the firewall, looks the hostname up in the listener's route table and then
//! either relays the connection untouched (L4) or terminates TLS (L7). See ARCHITECTURE.md for
//! the pipeline and who owns what; `server::run` is the entry point binaries and tests share.

#![warn(missing_docs)]

pub mod access;
pub mod admin;
pub mod backends;
pub mod boot;
pub mod certs;
pub mod config;
pub mod conns;
pub mod control;
pub mod events;
pub mod firewall;
pub mod health;
pub mod io;
pub mod l4;
pub mod l7;
pub mod metrics;
pub mod pipeline;
pub(crate) mod procfs;
pub mod proxyproto;
pub mod relay;
pub mod reload;
pub mod routes;
pub mod server;
pub mod sni;
pub mod sockets;
pub mod state;
pub mod stats;
pub mod store;
