//! The proxy: one accepted connection from its first byte to its access record
//! (`pipeline::handle_conn`), the L4 path (`l4`), the L7 reverse proxy (`l7`) and the
//! plain-HTTP listener's answers (`redirect`).
//!
//! I/O on the client connection and, through `l7`'s pool and `l4`'s dial, to backends.
//! Imports `model`, `protocols` and `connectors`; `listeners` hands it connections.

pub(crate) mod access;
pub(crate) mod l4;
pub mod l7;
pub(crate) mod pipeline;
pub mod redirect;
