//! The cluster: this node's link to etcd, through which a fleet of nodes shares one route
//! table, when `[cluster]` is set. `settings` (the `[cluster]` connection settings),
//! `client` (the connection, `ClusterError`), `keys` (where each shared object lives),
//! `doc` (what is stored there), `sync` (the read and write paths, the node registry).
//!
//! I/O: the network to etcd, the TLS and password files the settings name, and the PEM
//! files of the fleet's L7 routes. Imports `model` and `control::apply`, through which every
//! change it applies goes. Without a `[cluster]` section nothing here runs and SQLite alone
//! holds the node's state.

pub mod client;
pub mod doc;
pub mod keys;
pub mod settings;
pub mod sync;
