//! mc-proxy-wire: the sans-IO wire formats of mc-proxy. Everything here is a pure function of
//! the bytes given; there is no tokio and no socket. The daemon's async readers
//! (`mc_proxy::sni`, `mc_proxy::proxyproto`) fill buffers and call in here, and `fuzz/`
//! depends on this crate alone.
//!
//! | module | owns |
//! |---|---|
//! | [`client_hello`] | the TLS ClientHello parser (`parse`, the resumable `Scanner`): SNI `host_name` and ALPN, across records and segments, capped at 64 KiB |
//! | [`proxy_protocol`] | PROXY protocol: the shared types and `parse` dispatch; [`proxy_protocol::v1`] (text) and [`proxy_protocol::v2`] (binary, TLV walk, CRC32C) parsers; [`proxy_protocol::encode`] (v2 encoder) |
//! | [`h2_settings`] | an HTTP/2 server's opening SETTINGS frame: `MAX_CONCURRENT_STREAMS` and `ENABLE_CONNECT_PROTOCOL`, for the backend pool |
//! | [`dns`] | DNS-name normalisation shared by SNI parsing and route validation |
//!
//! Every parser is streaming: `Incomplete` (need more bytes) is distinct from an error (the
//! bytes can never become valid), a `Complete` result reports how many bytes it owns, and a
//! size cap bounds what a peer can make the caller buffer. No input panics: the lint block
//! below denies indexing, `unwrap`, `expect` and `panic!` outside tests, and postconditions
//! (bytes owned equal the declared lengths) are `debug_assert!`s, which the fuzz build keeps.

#![warn(missing_docs)]
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo
)]

pub mod client_hello;
pub mod dns;
pub mod h2_settings;
pub mod proxy_protocol;

#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
