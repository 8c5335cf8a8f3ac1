//! Connectors: the backend side's dialer (`connector`: TCP, the PROXY header, TLS with the
//! backend trust, the HTTP/2 or HTTP/1.1 handshake, each step under the connect budget).
//!
//! I/O: connections to backends. Imports `model` and `protocols`. The L7 pool and the active
//! health checks still live in `proxy` (`proxy::l7::pool`, `proxy::health`): the pool's
//! response bodies and the checks' HTTP probe share the L7 request path there; they move
//! here once those are split from the client side.

pub mod connector;
