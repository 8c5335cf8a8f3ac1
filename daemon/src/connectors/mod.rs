//! Connectors: the backend side. The dialer (`connector`: TCP, the PROXY header, TLS with the
//! backend trust, each step under the connect budget), the L7 connection pool (`pool`: shared
//! HTTP/2 and HTTP/1.1 connections per backend target, the handshakes, the leases a request
//! holds), one request sent on a lease (`send`) with its response body (`response`), and the
//! active health checks (`health`) that probe members through the same dialer and pool.
//!
//! I/O: connections to backends, never to clients. Imports `model` and `protocols` only; the
//! client side (`proxy`) calls down into it.

pub mod connector;
pub(crate) mod health;
pub mod pool;
pub(crate) mod response;
pub(crate) mod send;
