//! The control plane: the one way what the daemon serves changes. `apply` (every change,
//! checked, stored, swapped, published), the TOML `config`, the SQLite `store`, start-up
//! (`boot`), certificate `reload`, and the `cluster` link through which a fleet of nodes
//! shares its routes (etcd; its changes, too, go through `apply`).
//!
//! I/O: the config file, the database, certificate files, etcd. Imports `model` only; the data
//! plane never imports it (checked by `daemon/tests/layers.rs`).

pub mod acme;
pub(crate) mod apply;
pub mod boot;
pub mod cluster;
pub mod config;
pub mod expiry;
pub(crate) mod reload;
pub mod store;

pub use apply::{
    Applied, Change, ChangeError, Control, ListenerChange, ReloadReport, check_len,
    listener_by_name, max_len, not_applied,
};
