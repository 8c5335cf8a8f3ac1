//! The daemon's interfaces to operators: the gRPC admin API on a Unix socket (`admin`), the
//! Prometheus endpoint (`metrics`, with the process figures of `procfs`) and the log's writer
//! (`logwriter`).
//!
//! I/O: their own sockets, and stderr. Writes go through `control`; reads come from `model`.

pub mod admin;
pub mod logwriter;
pub mod metrics;
pub(crate) mod procfs;
