//! ACME (RFC 8555): certificates that renew themselves. This module owns the node's ACME
//! account and its orders: `http` is the client's HTTP (our roots, our timeouts), `order`
//! one order from `new-order` to the issued chain, answering tls-alpn-01 through
//! [`crate::model::acme::Challenges`], which the listeners consult.
//!
//! I/O: HTTPS to the CA.

pub mod http;
pub mod manager;
pub mod order;
pub mod settings;
pub mod share;

pub use order::{AcmeError, Issued, Orderer};
