//! The cluster: this node's link to the fleet's store (etcd v3), when `[cluster]` is set.
//! `keys` (where each shared object lives), `doc` (what is stored there), `sync` (the read
//! and write paths, the node registry).
//!
//! I/O: the etcd connection (and the PEM files of the fleet's L7 routes). Imports `model` and
//! `control::apply`, through which every change it applies goes.

pub mod doc;
pub mod keys;
pub mod sync;
