//! The cluster: this node's link to etcd, through which a fleet of nodes shares one route
//! table, when `[cluster]` is set. `settings` (the `[cluster]` connection settings),
//! `client` (the connection, `ClusterError`), `keys` (where each shared object lives),
//! `doc` (what is stored there), `sync` (the read and write paths, the node registry),
//! `acme` (the name locks, pending challenges and certificates the fleet's ACME shares).
//!
//! I/O: the network to etcd, the TLS and password files the settings name, and the PEM
//! files of the fleet's L7 routes. Imports `model` and `control::apply`, through which every
//! change it applies goes. Without a `[cluster]` section nothing here runs and SQLite alone
//! holds the node's state.

pub mod acme;
pub mod client;
pub mod doc;
pub mod keys;
pub mod settings;
pub mod sync;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::control::apply::Control;

/// Makes `control`'s node a member of the fleet `cfg` names: fleet-wide changes go to the
/// store from now on, and the returned future keeps the node in step with it until
/// `shutdown` (it serves from its database meanwhile, store or no store). The PEM files of
/// the fleet's L7 routes are kept next to the database (`<database>.cluster-certs/`).
pub fn start(
    cfg: &settings::ClusterConfig,
    control: &Arc<Control>,
    database: &Path,
    admin: Option<&Path>,
    metrics: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> (
    Arc<sync::Cluster>,
    impl Future<Output = ()> + Send + 'static,
) {
    let settings = sync::SyncSettings {
        config: cfg.clone(),
        cert_dir: format!("{}.cluster-certs", database.display()).into(),
        admin: admin.map(|p| p.display().to_string()).unwrap_or_default(),
        metrics: metrics.map(|a| a.to_string()).unwrap_or_default(),
    };
    let stored = control.cluster_revision(&cfg.prefix).ok().flatten();
    let cluster = sync::Cluster::new(settings, Arc::clone(control));
    let acme_cfg = cfg.clone();
    let cfg = Arc::new(cfg.clone());
    let connect: sync::Connector = Arc::new(move || {
        let cfg = Arc::clone(&cfg);
        Box::pin(async move { client::connect(&cfg).await.map_err(|e| e.to_string()) })
    });
    tracing::info!("{}", cluster_summary(&cluster, stored));
    // ACME across the fleet: any node answers a validation, one orders each name, every
    // node serves what was issued. Acme routes may be added on any node of the fleet (one
    // with [acme] orders them).
    let acme = acme::AcmeShare::new(acme_cfg, Arc::clone(control), Arc::clone(&connect));
    control.set_acme_share(Arc::clone(&acme) as _);
    control.state().acme.enable();
    let run = {
        let cluster = Arc::clone(&cluster);
        async move {
            tokio::join!(cluster.run(connect, shutdown.clone()), acme.run(shutdown));
        }
    };
    (cluster, run)
}

fn cluster_summary(cluster: &sync::Cluster, stored: Option<i64>) -> String {
    let view = cluster.view();
    let copy = match stored {
        Some(revision) => format!("the database's copy of the fleet's table (revision {revision})"),
        None => "the database (not synced with this prefix yet)".to_owned(),
    };
    format!(
        "cluster: node {} on etcd {} (prefix {}): serving {copy} until the store is read",
        view.node,
        client::endpoints_text(&view.endpoints),
        view.prefix
    )
}
