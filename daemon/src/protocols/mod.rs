//! Protocols: the byte-level readers and writers the data plane uses on a connection, over
//! the pure parsers of the `wire` crate. The ClientHello (`sni`), PROXY headers
//! (`proxyproto`), stream adapters (`io`) and the L4 byte relay (`relay`).
//!
//! I/O on one stream at a time, given to them; they know no route, listener or backend pool.
//! Imports only `model` (counters) below them.

pub(crate) mod body;
pub mod io;
pub mod proxyproto;
pub(crate) mod relay;
pub(crate) mod sni;
