//! Certificate reload: what SIGHUP and the `Reload` admin call do.
//!
//! I/O: reads the stored routes (the store) and every L7 route's certificate and key files.
//!
//! Invariants:
//! - The stored routes are the truth: every stored L7 route is validated again, so renewed
//!   files are picked up, and a route left out at start because its files did not load comes
//!   back once they do.
//! - Last good wins: a route whose files fail to load keeps the certificate it was serving (a
//!   route that was not being served stays out, listed with the new reason). Nothing else about a route changes; L4 routes
//!   are untouched.
//! - Existing connections keep the `RouteInfo` (and so the certificate) they started with;
//!   new handshakes see the swapped table.
//! - The caller holds the store exclusively (`&mut Store`): reload is a change like any other
//!   (`control::Change::ReloadCertificates`) and must not interleave with one, or one of the two
//!   table swaps would be lost.

use std::net::SocketAddr;

use mc_proxy_shared::{ChangeAction, Mode, Route};

use crate::control::store::{Store, StoreError};
use crate::model::certs::not_after;
use crate::model::events::{Event, Origin};
use crate::model::routes::{RouteError, RouteInfo, ValidRoute, validate_route_with};
use crate::model::state::{NotServed, State};

/// What happened to one L7 route.
#[derive(Debug)]
pub struct RouteReload {
    /// The listener's configured address.
    pub listener: SocketAddr,
    /// The route's hostname.
    pub hostname: String,
    /// The result.
    pub outcome: ReloadOutcome,
}

/// The result of reloading one route's certificate.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The files loaded; `changed` tells whether the certificate chain differs from the one
    /// that was served.
    Reloaded {
        /// The chain on disk differs from the one served before.
        changed: bool,
        /// The new leaf's expiry, when it could be read.
        not_after: Option<String>,
        /// Load warnings (expired, name not covered).
        warnings: Vec<String>,
    },
    /// The route had not been served (its files failed at start or at an earlier reload) and
    /// now loads, so it is served from now on.
    Added {
        /// The leaf's expiry, when it could be read.
        not_after: Option<String>,
        /// Load warnings.
        warnings: Vec<String>,
    },
    /// The files did not load; the route keeps what it served before (`kept`), or stays out.
    Failed {
        /// Why (names the file).
        error: RouteError,
        /// The route still serves its previous certificate.
        kept: bool,
    },
}

impl RouteReload {
    /// Did this route fail to reload?
    pub fn failed(&self) -> bool {
        matches!(self.outcome, ReloadOutcome::Failed { .. })
    }
}

/// Reloads every stored L7 route's certificate and key (`only`: the routes of that hostname,
/// on every listener: an ACME certificate just installed) and swaps each listener's table
/// (see the module docs). Returns one entry per route reloaded, in listener then hostname
/// order. Fails only if the store cannot be read, and then changes nothing.
pub fn reload_certificates(
    store: &mut Store,
    state: &State,
    origin: &Origin,
    only: Option<&str>,
) -> Result<Vec<RouteReload>, StoreError> {
    // Read everything first: a store error must not leave half the listeners swapped.
    let listeners = state.listeners();
    let stored = listeners
        .iter()
        .map(|l| store.routes(l.id))
        .collect::<Result<Vec<_>, _>>()?;

    let mut report = Vec::new();
    for (listener, stored) in listeners.iter().zip(stored) {
        let table = listener.routes();
        // The table as served, patched with the L7 routes that loaded (replaced or added):
        // every other route keeps its `RouteInfo` as it is, and the cost is the L7 routes',
        // not the table's (`State::patch_table`).
        let mut put: Vec<ValidRoute> = Vec::new();
        let mut changed_any = false;
        let mut added = Vec::new();
        // Stored routes left out after this reload, with why: those it does not reload (L4
        // ones, other names than `only`'s) keep the reason they were left out with.
        let reloads = |r: &Route| r.mode == Mode::L7 && only.is_none_or(|h| r.hostname == h);
        let before = listener.not_served();
        let mut not_served: Vec<NotServed> = Vec::new();
        for route in &stored {
            if !reloads(route)
                && let Some(n) = before.iter().find(|n| n.route.hostname == route.hostname)
            {
                not_served.push(n.clone());
            }
        }
        for route in stored.into_iter().filter(reloads) {
            let live = table.stored(&route.hostname);
            // An ACME route's certificate is the database's.
            let issued = store.issued_for(&route)?;
            let outcome = match validate_route_with(&route, issued.as_ref()) {
                Ok(valid) => {
                    let key = valid.key().map(|k| &**k);
                    let expiry = key.and_then(not_after);
                    let warnings = valid.warnings.clone();
                    let outcome = match live {
                        Some(live) => ReloadOutcome::Reloaded {
                            changed: !same_chain(live, &valid),
                            not_after: expiry,
                            warnings,
                        },
                        None => ReloadOutcome::Added {
                            not_after: expiry,
                            warnings,
                        },
                    };
                    if matches!(outcome, ReloadOutcome::Added { .. }) {
                        added.push(valid.route.clone());
                    }
                    put.push(valid);
                    changed_any = true;
                    outcome
                }
                Err(error) => {
                    if live.is_none() {
                        not_served.push(NotServed {
                            route: route.clone(),
                            reason: error.to_string(),
                        });
                    }
                    ReloadOutcome::Failed {
                        error,
                        kept: live.is_some(),
                    }
                }
            };
            log(listener.addr, &route.hostname, &outcome);
            report.push(RouteReload {
                listener: listener.addr,
                hostname: route.hostname,
                outcome,
            });
        }
        if changed_any {
            state.patch_table(listener, &[], put);
        }
        listener.set_not_served(not_served);
        for route in &added {
            publish_added(state, listener.addr, route, origin);
        }
    }
    report.sort_by(|a, b| (a.listener, &a.hostname).cmp(&(b.listener, &b.hostname)));
    Ok(report)
}

/// Watchers learn about a route that is served again as they learn about an added one.
fn publish_added(state: &State, listener: SocketAddr, route: &Route, origin: &Origin) {
    state.events.publish(|| Event::RouteChanged {
        listener,
        action: ChangeAction::Added,
        route: route.clone(),
        previous_hostname: None,
        origin: origin.clone(),
    });
}

fn same_chain(live: &RouteInfo, valid: &ValidRoute) -> bool {
    match (&live.tls, valid.key()) {
        (Some(old), Some(new)) => old.key.cert == new.cert,
        _ => false,
    }
}

fn log(listener: SocketAddr, route: &str, outcome: &ReloadOutcome) {
    match outcome {
        ReloadOutcome::Reloaded {
            changed, warnings, ..
        } => {
            let what = if *changed {
                "certificate reloaded: new certificate"
            } else {
                "certificate reloaded: unchanged"
            };
            tracing::info!(%listener, route, "{what}");
            for w in warnings {
                tracing::warn!(%listener, route, "{w}");
            }
        }
        ReloadOutcome::Added { warnings, .. } => {
            tracing::info!(%listener, route, "certificate loads now: route served again");
            for w in warnings {
                tracing::warn!(%listener, route, "{w}");
            }
        }
        ReloadOutcome::Failed { error, kept: true } => tracing::error!(
            %listener,
            route,
            "certificate reload failed, keeping the certificate loaded before: {error}"
        ),
        ReloadOutcome::Failed { error, kept: false } => tracing::error!(
            %listener,
            route,
            "certificate reload failed, route still not served: {error}"
        ),
    }
}
