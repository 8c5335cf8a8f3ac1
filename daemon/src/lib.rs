//! mc-proxy: a TLS edge router.
//!
//! The daemon accepts TCP connections on listeners, reads the TLS ClientHello to learn the SNI
//! hostname, checks the firewall, looks the hostname up in the listener's route table and then
//! either relays the connection untouched (L4) or terminates TLS (L7). See ARCHITECTURE.md for
//! the pipeline and who owns what; `listeners::server::run` is the entry point binaries and tests
//! share.
//!
//! The folders are the layers, each importing only those below it: `model` (the snapshot) ←
//! `protocols` ← `connectors` ← `proxy` ← `listeners` ← the binaries; `control` → `model`;
//! `api` → `control` and `model`. `daemon/tests/layers.rs` reads the sources and fails on an
//! upward import or a circle.
//!
//! What is `pub` here is what the binaries and the tests use (the state, the server, the
//! control plane, the config and store, the admin API and metrics, the PROXY and stream
//! helpers the tests drive); the rest of each layer is `pub(crate)`.

#![warn(missing_docs)]

pub mod api;
pub(crate) mod connectors;
pub mod control;
pub mod listeners;
pub mod model;
pub mod protocols;
pub mod proxy;
