//! The cluster: this node's link to etcd, through which a fleet of nodes shares one route table.
//!
//! Owns the `[cluster]` connection settings (`settings`) and the connection to etcd (`client`,
//! `ClusterError`).
//! I/O: the network to etcd, and the TLS and password files the settings name. Without a
//! `[cluster]` section nothing here runs and SQLite alone holds the node's state.

pub mod client;
pub mod settings;
