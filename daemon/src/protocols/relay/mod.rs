//! The byte relay between a client and a backend: L4 passthrough ([`relay`], two sockets) and
//! the L7 WebSocket tunnel ([`relay_streams`], any two byte streams).
//!
//! I/O: reads and writes the two streams it is given, nothing else. Invariants (both forms):
//! - Half-close is preserved: EOF from one side shuts down the write half towards the other
//!   side and the opposite direction keeps flowing until it ends too. A client that writes,
//!   shuts down its write half and then reads still gets the backend's whole answer.
//! - An I/O error in either direction ends both (the other side would otherwise wait for an
//!   idle timeout).
//! - Byte counts are kept in atomics the caller owns, so they are right however the relay
//!   ends (finished, idle, or the caller dropping it) and can be read live by observers.
//!
//! Two forms, one set of rules: [`relay`] works on `&TcpStream` with readiness
//! (`poll_read_ready`, then splice(2) or `try_read_buf`), which is what lets an idle L4
//! connection hold no buffer at all, and is one hand-written future (a burst in progress is
//! the only thing it boxes); a generic `AsyncRead` cannot be asked "is there data?" without a
//! buffer to read into, so [`relay_streams`] (TLS and HTTP/2 streams from hyper's upgrades)
//! keeps one buffer per direction for its life.
//!
//! The folder: `tcp` (the L4 relay over two sockets), `splice` (its bulk path on Linux),
//! `streams` (the relay over any two byte streams) and `common` (what they share: the end,
//! the buffer size, the counters and a burst's outcome).

mod common;
#[cfg(target_os = "linux")]
mod splice;
mod streams;
mod tcp;

pub use common::RelayEnd;
pub use streams::relay_streams;
pub use tcp::relay;
