//! Start-up: from a loaded config and an opened store to the daemon's live [`State`].
//!
//! I/O: the store (seeded on first start, then read once) and every stored L7 route's
//! certificate files. This is the only place that turns stored rows into the snapshot, so
//! `state` knows nothing of SQLite or the TOML.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::control::config::{Config, parse_net};
use crate::control::store::{Store, StoreError};
use crate::model::events::EventBus;
use crate::model::firewall::{Firewall, InvalidRule};
use crate::model::routes::{RouteError, RouteTable, validate_route_with};
use crate::model::state::{ListenerSettings, ListenerState, NotServed, State};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file is unusable.
    #[error(transparent)]
    Config(#[from] crate::control::config::ConfigError),
    /// The database could not be opened, migrated, seeded or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored listener address does not parse.
    #[error("stored listener address {addr:?} is not IP:port")]
    ListenerAddr {
        /// The stored value.
        addr: String,
    },
    /// A stored `proxy_protocol_from` entry does not parse.
    #[error("listener {addr}: stored proxy_protocol_from entry {value:?} is not a network")]
    ProxySource {
        /// The listener.
        addr: String,
        /// The stored value.
        value: String,
    },
    /// Stored client limits out of their bounds (edited by hand?).
    #[error("listener {addr}: stored client limits: {source}")]
    ClientLimits {
        /// The listener.
        addr: String,
        /// What is wrong.
        source: mc_proxy_shared::ClientLimitsError,
    },
    /// A stored listener kind this binary does not know (written by a newer one?).
    #[error("listener {addr}: stored {source}")]
    ListenerKind {
        /// The listener.
        addr: String,
        /// What is wrong.
        source: mc_proxy_shared::ParseListenerKindError,
    },
    /// A stored firewall rule does not parse.
    #[error("stored {0}")]
    Firewall(#[from] InvalidRule),
}

/// Seeds an empty store from the config, then loads listeners, routes and firewall rules
/// from the store: after the first start the store is the source of truth and the TOML's
/// listeners, routes and rules are not applied (this is logged).
///
/// A stored route that no longer validates (an L7 certificate deleted since it was added) is
/// logged and left out rather than keeping every other route down; the listener keeps it,
/// with the reason, in its not-served list (what the admin API lists), and a certificate
/// reload serves it once its files load again.
pub fn load_state(config: &Config, store: &mut Store) -> Result<State, StartError> {
    if store.seed(config)? {
        tracing::info!(
            listeners = config.listeners.len(),
            "seeded the empty database from {}",
            config.path.display()
        );
    } else {
        tracing::info!(
            "database already holds state: the listeners, routes and firewall rules in {} \
             were not applied (the database is the source of truth)",
            config.path.display()
        );
    }

    let mut listeners = Vec::new();
    for row in store.listeners()? {
        let addr: SocketAddr = row.addr.parse().map_err(|_| StartError::ListenerAddr {
            addr: row.addr.clone(),
        })?;
        let mut routes = Vec::new();
        let mut not_served = Vec::new();
        for route in store.routes(row.id)? {
            // An ACME route's certificate is the database's; none yet: it waits.
            let issued = store.issued_for(&route)?;
            match validate_route_with(&route, issued.as_ref()) {
                Ok(valid) => {
                    for w in &valid.warnings {
                        tracing::warn!(listener = %addr, route = %route.hostname, "{w}");
                    }
                    routes.push(valid);
                }
                Err(RouteError::AcmePending) => {
                    tracing::info!(listener = %addr, route = %route.hostname, "{}", RouteError::AcmePending);
                    not_served.push(NotServed {
                        route,
                        reason: RouteError::AcmePending.to_string(),
                    });
                }
                Err(e) => {
                    tracing::error!(
                        listener = %addr,
                        route = %route.hostname,
                        "stored route is invalid and will not be served: {e}"
                    );
                    not_served.push(NotServed {
                        route,
                        reason: e.to_string(),
                    });
                }
            }
        }
        let proxy_protocol_from = row
            .proxy_protocol_from
            .iter()
            .map(|value| {
                parse_net(value).ok_or_else(|| StartError::ProxySource {
                    addr: row.addr.clone(),
                    value: value.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        let client_limits =
            row.client_limits
                .limits()
                .map_err(|source| StartError::ClientLimits {
                    addr: row.addr.clone(),
                    source,
                })?;
        let listener = ListenerState::new(
            row.id,
            addr,
            ListenerSettings {
                proxy_protocol: row.proxy_protocol,
                proxy_protocol_from,
                access_log: row.access_log,
                client_limits,
            },
            RouteTable::with_stats(routes, |_| Arc::default()),
        )
        .with_name(row.name);
        let kind = row
            .kind
            .parse::<mc_proxy_shared::ListenerKind>()
            .map_err(|e| StartError::ListenerKind {
                addr: row.addr.clone(),
                source: e,
            })?;
        let listener = listener.with_kind(kind, row.redirect_port);
        listener.set_no_sni_route(Some(row.no_sni_route).filter(|n| !n.is_empty()));
        listener.set_not_served(not_served);
        listeners.push(Arc::new(listener));
    }
    let firewall = Firewall::from_rules(&store.firewall_rules()?)?;
    let mut state = State::new(config.proxy.clone(), listeners, firewall);
    state.events = EventBus::new(config.admin.event_buffer);
    Ok(state)
}
