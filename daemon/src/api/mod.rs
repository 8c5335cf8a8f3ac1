//! The daemon's interfaces to operators: the gRPC admin API on a Unix socket (`admin`) and the
//! Prometheus endpoint (`metrics`, with the process figures of `procfs`).
//!
//! I/O: their own sockets. Writes go through `control`; reads come from `model`.

pub mod admin;
pub mod metrics;
pub(crate) mod procfs;
