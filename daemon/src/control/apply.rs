//! The control plane: the one way the daemon's routes, firewall and certificates change.
//!
//! I/O: the store (SQLite, blocking: call [`Control::apply`] from `spawn_blocking`) and, for
//! L7 routes, their certificate and key files. No transport: the admin API converts gRPC
//! requests into a [`Change`] and the [`Applied`] or [`ChangeError`] back; SIGHUP applies
//! [`Change::ReloadCertificates`]. Modelled on sozu's `ConfigState::dispatch`.
//!
//! Every change goes through [`Control::apply`], once, in this order:
//! 1. check the request (sizes, absolute paths, the listener, the route's fields with
//!    `routes::validate_route`, firewall rules with `firewall::parse_rule`);
//! 2. write the database (one statement or transaction);
//! 3. swap the live snapshot (a listener's route table and its list of stored routes not
//!    served, the firewall);
//! 4. publish the event.
//!
//! Invariants: a change that fails at 1 or 2 changes nothing, neither the database nor the
//! snapshot. Changes are serialised by the store mutex, held from the write to the swap, so
//! the database and the snapshot never disagree and no two table swaps race. Connections in
//! flight keep the route they started with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mc_proxy_shared::text::clip;
use mc_proxy_shared::{AdminState, ChangeAction, FirewallRule, Route, RoutePatch};

use crate::control::reload::{RouteReload, reload_certificates};
use crate::control::store::{ListenerFields, Store, StoreError};
use crate::model::events::{Caller, Event, Origin};
use crate::model::firewall::{Firewall, parse_rule};
use crate::model::routes::{RouteError, ValidRoute, validate_route, validate_route_with};
use crate::model::state::{ListenerSettings, ListenerState, NotServed, State, check_listener_name};

/// A change someone asked for.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add a route to the listener named by its configured address.
    AddRoute {
        /// The listener's configured address.
        listener: String,
        /// The new route (missing fields mean l4 without PROXY).
        route: Route,
    },
    /// Change the given fields of a route, keep the others.
    UpdateRoute {
        /// The listener's configured address.
        listener: String,
        /// The route to change.
        hostname: String,
        /// What to change.
        patch: RoutePatch,
    },
    /// Remove a route; its open connections keep going.
    RemoveRoute {
        /// The listener's configured address.
        listener: String,
        /// The route to remove.
        hostname: String,
    },
    /// Block an address or network.
    AddFirewallRule(FirewallRule),
    /// Unblock one.
    RemoveFirewallRule(FirewallRule),
    /// Re-read every L7 route's certificate and key (SIGHUP).
    ReloadCertificates,
    /// Re-read the certificate of the routes named `hostname` (every listener): an ACME
    /// certificate was just stored for it.
    ReloadCertificate {
        /// The routes' hostname.
        hostname: String,
    },
    /// Set one member of a route enabled, draining or disabled, and/or its weight: stored,
    /// then the route is swapped for one whose member has the new state (the data plane keeps
    /// the member's health and counters across the swap). At least one of the two is given.
    SetBackendState {
        /// The listener's configured address.
        listener: String,
        /// The route's hostname.
        hostname: String,
        /// The member's address, as in the route.
        address: String,
        /// The new admin state (`None`: unchanged).
        state: Option<AdminState>,
        /// The new weight, 1 to 256 (`None`: unchanged).
        weight: Option<u32>,
    },
    /// Add a listener: bound on every data-plane worker before it is stored, so an address
    /// that cannot be bound changes nothing.
    AddListener {
        /// The address to listen on (`0.0.0.0:443`, `[::]:443`).
        addr: String,
        /// Its name (`check_listener_name`); `None`: its address.
        name: Option<String>,
        /// What it does with connections.
        kind: mc_proxy_shared::ListenerKind,
        /// An HTTP listener's redirect port (`None`: 443); refused on a TLS one.
        redirect_port: Option<u32>,
        /// Its PROXY protocol settings.
        settings: ListenerChange,
    },
    /// Change a listener's PROXY protocol settings and its no-SNI route, all or nothing (the
    /// address cannot change: remove it and add the new one). Connections accepted from then
    /// on use them.
    UpdateListener {
        /// The listener's configured address.
        listener: String,
        /// What to change.
        settings: ListenerChange,
    },
    /// Remove a listener: it stops accepting at once; its open L7 connections are drained as
    /// on a route removal, its L4 relays run to their end. Refused while it has routes,
    /// unless `with_routes`.
    RemoveListener {
        /// The listener's configured address.
        listener: String,
        /// Remove its routes too.
        with_routes: bool,
    },
    /// Swap in the `[proxy]` settings that may change while running (SIGHUP re-reads the
    /// config file); the others are reported as needing a restart.
    ReloadSettings(Box<crate::model::state::ProxyConfig>),
    /// A fleet object as the cluster store now has it, delivered by its watch (or found
    /// different by a resync): applied here as it is, whoever wrote it. Only the cluster
    /// sync sends these.
    Synced(Vec<Synced>),
    /// Several route, firewall and listener changes made as one (`mcproxyctl apply`): every
    /// one is checked before the first is made, a set touching one object twice is refused,
    /// and on a cluster node the set is one transaction in the fleet's store. Only the
    /// changes [`Change::fits_a_set`] allows.
    Set(Vec<Change>),
}

/// One object of the fleet's shared state as the cluster store has it (see
/// `control::cluster`). Applying one is idempotent: what is already so changes nothing.
#[derive(Debug, Clone)]
pub enum Synced {
    /// The route as it is now (added or replaced whole); its certificate paths are this
    /// node's copies of the fleet's PEM.
    PutRoute {
        /// The listener's name.
        listener: String,
        /// Every field.
        route: Route,
    },
    /// The route is gone.
    DeleteRoute {
        /// The listener's name.
        listener: String,
        /// The route's hostname.
        hostname: String,
    },
    /// The rule is in force.
    PutRule(FirewallRule),
    /// The rule is gone.
    DeleteRule(FirewallRule),
    /// A listener's route for ClientHellos without SNI (`None`: reset them).
    NoSni {
        /// The listener's name.
        listener: String,
        /// The route's hostname.
        hostname: Option<String>,
    },
}

impl Change {
    /// The change's kind, as the audit line names it (`change applied change=add_route`).
    pub fn kind(&self) -> &'static str {
        match self {
            Change::AddRoute { .. } => "add_route",
            Change::UpdateRoute { .. } => "update_route",
            Change::RemoveRoute { .. } => "remove_route",
            Change::AddFirewallRule(_) => "add_firewall_rule",
            Change::RemoveFirewallRule(_) => "remove_firewall_rule",
            Change::ReloadCertificates => "reload_certificates",
            Change::ReloadCertificate { .. } => "reload_certificate",
            Change::SetBackendState { .. } => "set_backend",
            Change::AddListener { .. } => "add_listener",
            Change::UpdateListener { .. } => "update_listener",
            Change::RemoveListener { .. } => "remove_listener",
            Change::ReloadSettings(_) => "reload_settings",
            Change::Synced(_) => "sync",
            Change::Set(_) => "change_set",
        }
    }

    /// Whether the change may be part of a [`Change::Set`]: the route, firewall and listener
    /// setting changes `mcproxyctl apply` makes (not binding or unbinding a listener, not a
    /// reload, not another set).
    pub fn fits_a_set(&self) -> bool {
        matches!(
            self,
            Change::AddRoute { .. }
                | Change::UpdateRoute { .. }
                | Change::RemoveRoute { .. }
                | Change::SetBackendState { .. }
                | Change::AddFirewallRule(_)
                | Change::RemoveFirewallRule(_)
                | Change::UpdateListener { .. }
        )
    }

    /// Whether, on a cluster node, the change is the fleet's (written to the cluster store
    /// and applied by every node from its watch) rather than this node's alone.
    fn is_fleet_wide(&self) -> bool {
        match self {
            Change::AddRoute { .. }
            | Change::UpdateRoute { .. }
            | Change::RemoveRoute { .. }
            | Change::SetBackendState { .. }
            | Change::AddFirewallRule(_)
            | Change::RemoveFirewallRule(_) => true,
            Change::UpdateListener { settings, .. } => settings.no_sni_route.is_some(),
            _ => false,
        }
    }
}

/// A listener's PROXY protocol settings as a change gives them: `None` keeps the current
/// value (a new listener: off, any peer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerChange {
    /// Expect a PROXY protocol header on every connection.
    pub proxy_protocol: Option<bool>,
    /// Peers allowed to send it (addresses or networks); empty: any peer.
    pub proxy_protocol_from: Option<Vec<String>>,
    /// The route (a hostname of this listener) for ClientHellos without SNI; `Some("")`
    /// resets them. Ignored when adding a listener (it has no route yet).
    pub no_sni_route: Option<String>,
    /// Log every L7 request on it (one `mc_proxy::request` line each).
    pub access_log: Option<bool>,
    /// Limits per client address; unset fields keep their value.
    pub client_limits: mc_proxy_shared::ClientLimitsPatch,
}

/// What a change did.
#[derive(Debug)]
pub enum Applied {
    /// The listener as it is now, and any warnings.
    Listener {
        /// The live listener.
        listener: Arc<ListenerState>,
        /// Accepted, but probably not meant.
        warnings: Vec<String>,
    },
    /// What re-reading `[proxy]` changed and what waits for a restart.
    Settings(crate::model::state::SettingsReload),
    /// The route as stored (hostname normalised) and any warnings.
    Route {
        /// The route.
        route: Route,
        /// Accepted, but probably not meant (a certificate on an l4 route, ...).
        warnings: Vec<String>,
    },
    /// The route or rule is gone.
    Removed,
    /// The rule as stored (normalised).
    Rule(FirewallRule),
    /// One result per stored L7 route.
    Reloaded(Vec<RouteReload>),
    /// A [`Change::Set`]: one result per change, in order.
    Set(Vec<Applied>),
}

/// Why a change was not applied; nothing changed. The first three are the caller's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The request cannot be applied as it is (bad field, oversized value, relative path).
    #[error("{0}")]
    Invalid(String),
    /// It names a listener, route or rule that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It would duplicate a route or rule.
    #[error("{0}")]
    AlreadyExists(String),
    /// The daemon's fault: the database write failed.
    #[error("database write failed, nothing changed: {0}")]
    Store(StoreError),
    /// The daemon's fault: an earlier failure left the store unusable.
    #[error("{0}")]
    Internal(String),
    /// A cluster node: another change to the same object won the race (its revision moved
    /// since this node read it); nothing was applied anywhere.
    #[error("{0}")]
    Conflict(String),
    /// A cluster node: the fleet's store cannot be reached or has no quorum; nothing was
    /// applied. The node keeps serving what it has.
    #[error("{0}")]
    Unavailable(String),
    /// The change at `index` (1-based) of a [`Change::Set`] was refused, for `source`; no
    /// change of the set was made.
    #[error("change {index}: {source}")]
    InSet {
        /// Its position in the set, from 1.
        index: usize,
        /// Why.
        source: Box<ChangeError>,
    },
}

impl ChangeError {
    /// The refusal of the `i`-th (from 0) change of a set.
    fn in_set(self, i: usize) -> ChangeError {
        ChangeError::InSet {
            index: i + 1,
            source: Box::new(self),
        }
    }

    /// The reason itself, out of any set it came from.
    pub fn root(&self) -> &ChangeError {
        match self {
            ChangeError::InSet { source, .. } => source.root(),
            other => other,
        }
    }
}

impl From<StoreError> for ChangeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ChangeError::NotFound(format!("{what} not found")),
            StoreError::AlreadyExists(what) => {
                ChangeError::AlreadyExists(format!("{what} already exists"))
            }
            other => {
                tracing::error!("admin write failed: {other}");
                ChangeError::Store(other)
            }
        }
    }
}

/// The longest value each field may hold, in bytes. A longer one is refused before anything
/// else looks at it, so no answer repeats a huge value and nothing is stored that no resolver
/// or file system could use.
pub mod max_len {
    /// A DNS name (253) with a leading `*.`.
    pub const HOSTNAME: usize = 255;
    /// `host:port`: a DNS name, a colon and a port.
    pub const BACKEND: usize = 261;
    /// Members of one route's backend set.
    pub const BACKENDS: usize = 256;
    /// A listener address, `[v6%scope]:port`.
    pub const LISTENER: usize = 64;
    /// PATH_MAX on Linux.
    pub const PATH: usize = 4096;
    /// An address or network, IPv6 included.
    pub const RULE: usize = 64;
    /// Entries of one listener's `proxy_protocol_from`.
    pub const PROXY_SOURCES: usize = 64;
}

/// Refuses `value` if it is longer than `max` bytes.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), ChangeError> {
    if value.len() > max {
        return Err(ChangeError::Invalid(format!(
            "{field} is {} bytes long; at most {max} are accepted",
            value.len()
        )));
    }
    Ok(())
}

/// The daemon resolves a relative path against its own working directory, which is not the
/// directory of whoever sent it; so changes take absolute paths only (`mcproxyctl` and the
/// console resolve them against their own working directory before sending).
fn check_absolute(field: &str, path: &str) -> Result<(), ChangeError> {
    if path.is_empty() || Path::new(path).is_absolute() {
        return Ok(());
    }
    Err(ChangeError::Invalid(format!(
        "{field} {} is a relative path, and the daemon cannot know what it is relative to: \
         send an absolute path",
        clip(path)
    )))
}

/// A backend set's size and every member's address length.
fn check_backends(backends: &[mc_proxy_shared::RouteBackend]) -> Result<(), ChangeError> {
    if backends.len() > max_len::BACKENDS {
        return Err(ChangeError::Invalid(format!(
            "{} backends; a route takes at most {}",
            backends.len(),
            max_len::BACKENDS
        )));
    }
    for b in backends {
        check_len("backend", &b.address, max_len::BACKEND)?;
    }
    Ok(())
}

fn check_health_check(check: Option<&mc_proxy_shared::HealthCheck>) -> Result<(), ChangeError> {
    match check {
        Some(c) => check_len("health_check.path", &c.path, max_len::PATH),
        None => Ok(()),
    }
}

fn check_route_fields(route: &Route) -> Result<(), ChangeError> {
    check_len("hostname", &route.hostname, max_len::HOSTNAME)?;
    check_backends(&route.backends)?;
    check_health_check(route.health_check.as_ref())?;
    check_len("tls_cert", &route.tls_cert, max_len::PATH)?;
    check_len("tls_key", &route.tls_key, max_len::PATH)
}

fn check_patch_fields(patch: &RoutePatch) -> Result<(), ChangeError> {
    if let Some(backends) = &patch.backends {
        check_backends(backends)?;
    }
    if let Some(check) = &patch.health_check {
        check_health_check(check.as_ref())?;
    }
    let fields = [
        ("new_hostname", &patch.hostname, max_len::HOSTNAME),
        ("tls_cert", &patch.tls_cert, max_len::PATH),
        ("tls_key", &patch.tls_key, max_len::PATH),
    ];
    for (field, value, max) in fields {
        if let Some(value) = value {
            check_len(field, value, max)?;
        }
    }
    Ok(())
}

/// How long a listener removal waits for the workers to close its sockets (each does at its
/// next poll; more means a worker thread is stuck).
const SOCKET_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The live state and the store behind it: what every change reads and writes.
#[derive(Debug)]
pub struct Control {
    state: Arc<State>,
    store: Mutex<Store>,
    /// The config file a reload re-reads `[proxy]` from (none: settings are not reloaded).
    config_path: Option<PathBuf>,
    /// Changes asked for so far: the last change id.
    changes: std::sync::atomic::AtomicU64,
    /// On a cluster node, the fleet's store: fleet-wide changes are written there and
    /// applied from its watch.
    fleet: std::sync::OnceLock<Arc<dyn FleetStore>>,
    /// On a cluster node, where the fleet shares ACME work (the name locks, the pending
    /// challenges, the issued certificates).
    acme_share: std::sync::OnceLock<Arc<dyn crate::control::acme::share::Share>>,
    /// Set (under the store's lock) once the database was released to an upgraded process
    /// ([`Control::release`]): every store access is refused with this text from then on.
    released: Mutex<Option<String>>,
}

/// What a reload ([`Control::reload`]) did.
#[derive(Debug)]
pub struct ReloadReport {
    /// The `[proxy]` settings re-read, or why the file could not be (nothing changed then).
    pub settings: Result<crate::model::state::SettingsReload, String>,
    /// Listeners of the file the database does not hold: not applied, and how to apply them.
    pub listeners_not_applied: Vec<String>,
    /// One result per stored L7 route.
    pub routes: Vec<RouteReload>,
}

impl Control {
    /// Takes over the store; `state` is what it serves.
    pub fn new(state: Arc<State>, store: Store) -> Control {
        Control {
            state,
            store: Mutex::new(store),
            config_path: None,
            changes: std::sync::atomic::AtomicU64::new(0),
            fleet: std::sync::OnceLock::new(),
            acme_share: std::sync::OnceLock::new(),
            released: Mutex::new(None),
        }
    }

    /// An upgrade's handover (`listeners::handover`, step 4): waits for the change in progress
    /// (it holds the store's lock until stored, so it is acknowledged and the new process
    /// reads it), then closes the database; every later change and store read is refused with
    /// UNAVAILABLE saying why (`to`: the new process's pid), until [`Control::resume`].
    pub fn release(&self, to: u32) -> Result<(), ChangeError> {
        let mut store = self.store()?;
        // An empty in-memory database in its place: the file's connection closes here, and
        // nothing reads the placeholder (`store()` refuses first).
        let placeholder = Store::detached()?;
        drop(std::mem::replace(&mut *store, placeholder));
        *self.released_lock() = Some(format!(
            "this daemon is handing over to its upgraded process (pid {to}): nothing was \
             applied; retry, the new process answers on the same admin socket in a moment"
        ));
        Ok(())
    }

    /// The upgraded process went away before taking over: reopens the database at `db` and
    /// takes changes again.
    pub fn resume(&self, db: &Path) -> Result<(), ChangeError> {
        let mut store = self.store.lock().map_err(|_| {
            ChangeError::Internal("store lock poisoned by an earlier failure".into())
        })?;
        *store = Store::open(db)?;
        *self.released_lock() = None;
        Ok(())
    }

    fn released_lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // Only ever replaced whole: a poisoned value is still a good one.
        self.released
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reloads re-read `[proxy]` from the config file at `path`.
    pub fn with_config_path(mut self, path: PathBuf) -> Control {
        self.config_path = Some(path);
        self
    }

    /// A reload (SIGHUP, the admin API's `Reload`): re-reads the config file's `[proxy]`
    /// settings and applies those that may change ([`Change::ReloadSettings`]), names the
    /// file's listeners the database does not hold, then reloads every L7 certificate
    /// ([`Change::ReloadCertificates`]). A config file that does not load changes no setting
    /// and still reloads the certificates. Blocks on the file and SQLite.
    pub fn reload(&self, caller: &Caller) -> Result<ReloadReport, ChangeError> {
        let mut listeners_not_applied = Vec::new();
        let settings = match &self.config_path {
            None => Ok(crate::model::state::SettingsReload::default()),
            Some(path) => match crate::control::config::Config::load(path) {
                Ok(config) => {
                    listeners_not_applied = not_applied(&config, &self.state);
                    let settings = Change::ReloadSettings(Box::new(config.proxy));
                    match self.apply_by(settings, caller.clone())? {
                        Applied::Settings(report) => Ok(report),
                        other => {
                            return Err(ChangeError::Internal(format!(
                                "unexpected result of a settings reload: {other:?}"
                            )));
                        }
                    }
                }
                Err(e) => {
                    let lines = e.lines();
                    let more = match lines.len() {
                        0 | 1 => String::new(),
                        n => format!(" (and {} more: see mc-proxy check)", n - 1),
                    };
                    let why = format!(
                        "{} does not load, [proxy] settings unchanged: {}{more}",
                        path.display(),
                        lines.first().map(String::as_str).unwrap_or_default()
                    );
                    tracing::error!("{why}");
                    Err(why)
                }
            },
        };
        for line in &listeners_not_applied {
            tracing::warn!("{line}");
        }
        let routes = match self.apply_by(Change::ReloadCertificates, caller.clone())? {
            Applied::Reloaded(routes) => routes,
            other => {
                return Err(ChangeError::Internal(format!(
                    "unexpected result of a certificate reload: {other:?}"
                )));
            }
        };
        Ok(ReloadReport {
            settings,
            listeners_not_applied,
            routes,
        })
    }

    /// ACME: the account credentials (JSON) kept for `directory`. Blocks on SQLite.
    pub fn acme_account(&self, directory: &str) -> Result<Option<String>, ChangeError> {
        Ok(self.store()?.acme_account(directory)?)
    }

    /// ACME: keeps a new account's credentials. Blocks on SQLite.
    pub fn save_acme_account(&self, directory: &str, credentials: &str) -> Result<(), ChangeError> {
        Ok(self.store()?.save_acme_account(directory, credentials)?)
    }

    /// ACME: every stored acme route's hostname (once, whatever its listeners) with when its
    /// certificate should be renewed by default, in Unix seconds (`None`: none issued,
    /// order now): a third of its lifetime before its end; and its leaf (DER), which the
    /// CA's renewal information is asked about. Blocks on SQLite.
    pub fn acme_due(&self) -> Result<Vec<AcmeDue>, ChangeError> {
        use rustls_pki_types::pem::PemObject;
        let store = self.store()?;
        let mut out: Vec<AcmeDue> = Vec::new();
        for listener in self.state.listeners().iter() {
            for route in store.routes(listener.id)? {
                if !route.acme || out.iter().any(|d| d.hostname == route.hostname) {
                    continue;
                }
                let issued = store.acme_certificate_renewal(&route.hostname)?;
                let renew_at = issued.as_ref().map(|(issued_at, not_after, _)| {
                    let lifetime = not_after.saturating_sub(*issued_at);
                    not_after.saturating_sub(lifetime / 3)
                });
                let not_after = issued.as_ref().map(|(_, not_after, _)| *not_after);
                let leaf = issued
                    .and_then(|(_, _, chain)| {
                        rustls_pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
                            .next()?
                            .ok()
                    })
                    .map(|der| der.to_vec());
                out.push(AcmeDue {
                    hostname: route.hostname,
                    renew_at,
                    not_after,
                    leaf,
                });
            }
        }
        Ok(out)
    }

    /// ACME: installs the fleet's certificate for its name unless the database holds one that
    /// lasts as long or longer; says whether it did. Blocks on SQLite.
    pub fn install_fleet_certificate(
        &self,
        theirs: &crate::control::acme::share::SharedCertificate,
    ) -> Result<bool, ChangeError> {
        let ours = self
            .store()?
            .acme_certificate_dates(&theirs.hostname)?
            .map(|(_, not_after)| not_after);
        if ours.is_some_and(|end| end >= theirs.not_after) {
            return Ok(false);
        }
        self.install_acme_certificate(
            &theirs.hostname,
            &theirs.chain_pem,
            &theirs.key_pem,
            theirs.not_after,
        )?;
        Ok(true)
    }

    /// ACME: keeps an issued certificate (replacing the one before), then serves it: the
    /// routes with this name (on every listener) load it again and serve it to new
    /// handshakes; no other route's files are read. Blocks on SQLite.
    pub fn install_acme_certificate(
        &self,
        hostname: &str,
        chain_pem: &str,
        key_pem: &str,
        not_after: u64,
    ) -> Result<(), ChangeError> {
        self.store()?.save_acme_certificate(
            hostname,
            chain_pem,
            key_pem,
            i64::try_from(not_after).unwrap_or(i64::MAX),
        )?;
        self.apply_by(
            Change::ReloadCertificate {
                hostname: hostname.to_owned(),
            },
            Caller::Signal("acme"),
        )?;
        Ok(())
    }

    /// The live state.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The stored firewall rules (what `ListFirewallRules` shows).
    pub fn firewall_rules(&self) -> Result<Vec<FirewallRule>, ChangeError> {
        Ok(self.store()?.firewall_rules()?)
    }

    fn store(&self) -> Result<std::sync::MutexGuard<'_, Store>, ChangeError> {
        let store = self.store.lock().map_err(|_| {
            ChangeError::Internal("store lock poisoned by an earlier failure".into())
        })?;
        // Read under the store's lock, which `release` holds while it sets it.
        if let Some(why) = self.released_lock().as_ref() {
            return Err(ChangeError::Unavailable(why.clone()));
        }
        Ok(store)
    }

    /// Applies one change for an unknown caller ([`Control::apply_by`]).
    pub fn apply(&self, change: Change) -> Result<Applied, ChangeError> {
        self.apply_by(change, Caller::Unknown)
    }

    /// Applies one change (see the module docs) for `caller`. Blocks on SQLite. The change
    /// gets an id; its log lines carry `change{id=.. by=..}` and its events the [`Origin`],
    /// and a refusal is logged too, so the log says who did (or tried) what.
    pub fn apply_by(&self, change: Change, caller: Caller) -> Result<Applied, ChangeError> {
        let origin = Origin {
            change: self
                .changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1,
            caller,
        };
        // `?` of the text: quoted, so the line stays one logfmt field per value.
        let span =
            tracing::info_span!("change", id = origin.change, by = ?origin.caller.to_string());
        let _in_change = span.enter();
        let kind = change.kind();
        let from_fleet = matches!(origin.caller, Caller::Node { .. });
        let result = match (self.fleet.get(), change) {
            (fleet, Change::Set(changes)) => {
                let fleet = fleet.filter(|_| !from_fleet).map(|f| f.as_ref());
                self.apply_set(fleet, changes, &origin)
            }
            // A change the watch delivered is applied here as it is; one asked of this node
            // goes to the fleet first.
            (Some(fleet), change) if change.is_fleet_wide() && !from_fleet => {
                self.fleet_apply(fleet.as_ref(), change, &origin)
            }
            (_, change) => self.dispatch(change, &origin),
        };
        match &result {
            Ok(_) => tracing::info!(change = kind, "change applied"),
            // The daemon's own failures were logged at error where they happened.
            Err(e) => match e.root() {
                ChangeError::Invalid(_)
                | ChangeError::NotFound(_)
                | ChangeError::AlreadyExists(_)
                | ChangeError::Conflict(_)
                | ChangeError::Unavailable(_) => {
                    tracing::info!(change = kind, "change refused: {e}")
                }
                _ => {}
            },
        }
        result
    }

    /// [`Change::Set`]. Every change is planned as a fleet-wide change would be (`plan`: the
    /// same checks as [`Control::dispatch`] makes), against the fleet's store on a cluster
    /// node, against this node's own objects otherwise; a refusal names the change's position
    /// and nothing is made. Then, on a cluster node, the writes of all go to the store as one
    /// transaction and every node applies them from its watch together; on a single node the
    /// changes are made one by one under the store lock, which is held from the first check
    /// to the last change, so no other change slips in between. (The one way a single node's
    /// set can stop half-way after its checks is the database failing to write, reported as
    /// such with the change's position.)
    fn apply_set(
        &self,
        fleet: Option<&dyn FleetStore>,
        changes: Vec<Change>,
        origin: &Origin,
    ) -> Result<Applied, ChangeError> {
        if changes.len() > MAX_SET {
            return Err(ChangeError::Invalid(format!(
                "{} changes in one set: at most {MAX_SET}",
                changes.len()
            )));
        }
        if let Some(i) = changes.iter().position(|c| !c.fits_a_set()) {
            return Err(ChangeError::Invalid(format!(
                "{} cannot be part of a change set (route, firewall and listener setting \
                 changes only)",
                changes[i].kind()
            ))
            .in_set(i));
        }
        let mut store = self.store()?;
        let rules;
        let here;
        let checker: &dyn FleetStore = match fleet {
            Some(fleet) => fleet,
            None => {
                rules = store.firewall_rules()?;
                here = Here {
                    state: &self.state,
                    rules: rules.iter().map(|r| r.value.clone()).collect(),
                };
                &here
            }
        };
        let mut plans = Vec::with_capacity(changes.len());
        let mut touched = std::collections::HashSet::new();
        for (i, change) in changes.iter().enumerate() {
            let (ops, answer, local) =
                plan(&store, &self.state, checker, change.clone()).map_err(|e| e.in_set(i))?;
            for op in &ops {
                if !touched.insert(op.key()) {
                    return Err(ChangeError::Invalid(format!(
                        "{} is changed a second time in the set: one change per object",
                        op.key()
                    ))
                    .in_set(i));
                }
            }
            plans.push((ops, answer, local));
        }
        let Some(fleet) = fleet else {
            let mut results = Vec::with_capacity(changes.len());
            for (i, change) in changes.into_iter().enumerate() {
                results.push(
                    self.dispatch_locked(&mut store, change, origin)
                        .map_err(|e| e.in_set(i))?,
                );
            }
            return Ok(Applied::Set(results));
        };
        drop(store);
        let ops = plans
            .iter_mut()
            .flat_map(|(ops, ..)| ops.drain(..))
            .collect();
        fleet.write(ops, &origin.caller.to_string())?;
        let mut results = Vec::with_capacity(plans.len());
        for (i, (_, answer, local)) in plans.into_iter().enumerate() {
            let result = match local {
                Some(local) => self.dispatch(local, origin),
                None => answer(&self.state),
            };
            results.push(result.map_err(|e| e.in_set(i))?);
        }
        Ok(Applied::Set(results))
    }

    fn dispatch(&self, change: Change, origin: &Origin) -> Result<Applied, ChangeError> {
        let mut store = self.store()?;
        self.dispatch_locked(&mut store, change, origin)
    }

    /// [`Control::dispatch`] with the store already locked.
    fn dispatch_locked(
        &self,
        store: &mut Store,
        change: Change,
        origin: &Origin,
    ) -> Result<Applied, ChangeError> {
        let state = &*self.state;
        let cx = Apply {
            store,
            state,
            origin,
        };
        match change {
            Change::AddRoute { listener, route } => add_route(cx, listener, route),
            Change::UpdateRoute {
                listener,
                hostname,
                patch,
            } => update_route(cx, listener, hostname, patch),
            Change::RemoveRoute { listener, hostname } => remove_route(cx, listener, hostname),
            Change::AddFirewallRule(rule) => add_firewall_rule(cx, rule),
            Change::RemoveFirewallRule(rule) => remove_firewall_rule(cx, rule),
            Change::ReloadCertificates => reload(cx, None),
            Change::ReloadCertificate { hostname } => reload(cx, Some(&hostname)),
            Change::SetBackendState {
                listener,
                hostname,
                address,
                state: admin,
                weight,
            } => set_backend(cx, listener, hostname, address, admin, weight),
            Change::AddListener {
                addr,
                name,
                kind,
                redirect_port,
                settings,
            } => add_listener(cx, addr, name, kind, redirect_port, settings),
            Change::UpdateListener { listener, settings } => {
                update_listener(cx, listener, settings)
            }
            Change::RemoveListener {
                listener,
                with_routes,
            } => remove_listener(cx, listener, with_routes),
            Change::ReloadSettings(new) => reload_settings(state, new),
            Change::Synced(batch) => apply_synced(cx, batch),
            Change::Set(_) => Err(ChangeError::Internal(
                "a change set is made by apply_set, not dispatch".into(),
            )),
        }
    }
}

/// What every change function works with: the store (locked for the change), the live
/// state and who asked.
struct Apply<'a> {
    store: &'a mut Store,
    state: &'a State,
    origin: &'a Origin,
}

/// [`Change::AddRoute`].
fn add_route(cx: Apply<'_>, listener: String, route: Route) -> Result<Applied, ChangeError> {
    let Apply {
        store,
        state,
        origin,
    } = cx;
    if route.acme {
        return add_acme_route(store, state, origin, &listener, route);
    }
    let (listener, valid) = new_route(state, &listener, &route)?;
    let listener = &*listener;
    serve_added_route(store, state, origin, listener, valid)
}

/// A checked new route stored, served and published: what every route add ends with.
fn serve_added_route(
    store: &mut Store,
    state: &State,
    origin: &Origin,
    listener: &ListenerState,
    valid: ValidRoute,
) -> Result<Applied, ChangeError> {
    store.create_route(listener.id, &valid.route)?;
    let applied = Applied::Route {
        route: valid.route.clone(),
        warnings: valid.warnings.clone(),
    };
    tracing::info!(listener = %listener.addr, route = %valid.route.hostname, backends = %valid.route.backend_list(), mode = %valid.route.mode, "route added");
    let route = valid.route.clone();
    state.patch_table(listener, &[], vec![valid]);
    publish_route(
        state,
        listener.addr,
        ChangeAction::Added,
        route,
        None,
        origin,
    );
    Ok(applied)
}

/// The checks of [`Change::AddRoute`]: the listener and the route as it would be added.
fn new_route(
    state: &State,
    listener: &str,
    route: &Route,
) -> Result<(Arc<ListenerState>, ValidRoute), ChangeError> {
    check_route_fields(route)?;
    check_absolute("tls_cert", &route.tls_cert)?;
    check_absolute("tls_key", &route.tls_key)?;
    let listener = routes_listener(state, listener)?;
    if let Some(name) = crate::model::routes::route_name(&route.hostname)
        && let Some(stored) = listener.not_served_route(&name)
    {
        return Err(ChangeError::AlreadyExists(format!(
            "route {name} already exists on listener {} but is not served: {}; \
             fix its files and reload, or update or remove it",
            listener.addr, stored.reason
        )));
    }
    let valid = validate(&listener, route)?;
    Ok((listener, valid))
}

/// [`Change::UpdateRoute`].
fn update_route(
    cx: Apply<'_>,
    listener: String,
    hostname: String,
    patch: RoutePatch,
) -> Result<Applied, ChangeError> {
    let Apply {
        store,
        state,
        origin,
    } = cx;
    let (listener, old, merged) = merged_route(store, state, &listener, &hostname, patch)?;
    if merged.acme {
        return update_acme_route(store, state, origin, &listener, old, merged);
    }
    let valid = validate(&listener, &merged)?;
    let listener = &*listener;
    store.update_route(listener.id, &old, &valid.route)?;
    let applied = Applied::Route {
        route: valid.route.clone(),
        warnings: valid.warnings.clone(),
    };
    tracing::info!(listener = %listener.addr, route = %valid.route.hostname, previous = %old, backends = %valid.route.backend_list(), mode = %valid.route.mode, "route updated");
    // A route that was not served validates now: it is served from here on.
    listener.forget_not_served(&old);
    replace_route(state, listener, old, valid, origin);
    Ok(applied)
}

/// The listener, the route's current name and the route as it would be after the patch,
/// before its certificate is loaded.
fn merged_route(
    store: &Store,
    state: &State,
    listener: &str,
    hostname: &str,
    patch: RoutePatch,
) -> Result<(Arc<ListenerState>, String, Route), ChangeError> {
    check_len("hostname", hostname, max_len::HOSTNAME)?;
    check_patch_fields(&patch)?;
    let listener = listener_by_name(state, listener)?;
    let old = route_name(&listener, hostname)?;
    let current = store
        .route(listener.id, &old)?
        .ok_or_else(|| no_route(&listener, &old))?;
    // A path the change sets must be absolute; one it keeps is the operator's
    // earlier choice (a TOML-seeded route may hold a relative one).
    for (field, new, stored) in [
        ("tls_cert", &patch.tls_cert, &current.tls_cert),
        ("tls_key", &patch.tls_key, &current.tls_key),
    ] {
        if let Some(new) = new.as_deref().filter(|new| new != stored) {
            check_absolute(field, new)?;
        }
    }
    let merged = merge(current, patch);
    if crate::model::routes::route_name(&merged.hostname).as_deref() != Some(old.as_str()) {
        keep_no_sni_route(&listener, &old, "renamed")?;
    }
    Ok((listener, old, merged))
}

/// [`Change::ReloadCertificates`], or [`Change::ReloadCertificate`] for `only`'s routes.
fn reload(cx: Apply<'_>, only: Option<&str>) -> Result<Applied, ChangeError> {
    let Apply {
        store,
        state,
        origin,
    } = cx;
    Ok(Applied::Reloaded(reload_certificates(
        store, state, origin, only,
    )?))
}

/// An ACME route checked: served with its issued certificate, or waiting for one.
fn checked_acme_route(
    store: &Store,
    listener: &ListenerState,
    route: &Route,
) -> Result<Result<ValidRoute, Route>, ChangeError> {
    let invalid = |e: &dyn std::fmt::Display| {
        ChangeError::Invalid(format!(
            "listener {}, route {}: {e}",
            listener.addr,
            clip(&route.hostname)
        ))
    };
    let name = crate::model::routes::route_name(&route.hostname)
        .ok_or_else(|| invalid(&"not a route name"))?;
    let issued = store.issued_pem(&name)?;
    match validate_route_with(route, issued.as_ref()) {
        Ok(valid) => Ok(Ok(valid)),
        Err(RouteError::AcmePending) => Ok(Err(Route {
            hostname: name,
            ..route.clone()
        })),
        Err(e) => Err(invalid(&e)),
    }
}

/// [`Change::AddRoute`] of an ACME route: served at once if its certificate was issued
/// before (a route removed and added again), else stored and listed as waiting while the
/// ACME task orders it.
fn add_acme_route(
    store: &mut Store,
    state: &State,
    origin: &Origin,
    listener: &str,
    route: Route,
) -> Result<Applied, ChangeError> {
    let listener = acme_route_listener(state, listener, &route)?;
    let listener = &*listener;
    if let Some(name) = crate::model::routes::route_name(&route.hostname)
        && listener.routes().get(&name).is_some()
    {
        return Err(route_exists(&name, listener));
    }
    match checked_acme_route(store, listener, &route)? {
        // Its certificate was issued before (a route removed and added again).
        Ok(valid) => serve_added_route(store, state, origin, listener, valid),
        Err(route) => {
            store.create_route(listener.id, &route)?;
            tracing::info!(listener = %listener.addr, route = %route.hostname, "route added, {}", RouteError::AcmePending);
            wait_for_acme(state, listener, &route);
            publish_route(
                state,
                listener.addr,
                ChangeAction::Added,
                route.clone(),
                None,
                origin,
            );
            Ok(Applied::Route {
                route,
                warnings: vec![format!("not served yet: {}", RouteError::AcmePending)],
            })
        }
    }
}

/// The checks an acme route's add makes first, on a single node and for the fleet alike: its
/// fields, a CA to order from, its listener, and no route of its name already waiting there
/// for a certificate.
fn acme_route_listener(
    state: &State,
    listener: &str,
    route: &Route,
) -> Result<Arc<ListenerState>, ChangeError> {
    check_route_fields(route)?;
    no_acme_without_ca(state)?;
    let listener = routes_listener(state, listener)?;
    if let Some(name) = crate::model::routes::route_name(&route.hostname)
        && listener.not_served_route(&name).is_some()
    {
        return Err(route_exists(&name, &listener));
    }
    Ok(listener)
}

/// A route of that name is on the listener already.
fn route_exists(name: &str, listener: &ListenerState) -> ChangeError {
    ChangeError::AlreadyExists(format!(
        "route {name} already exists on listener {}",
        listener.addr
    ))
}

/// An acme route on a daemon without `[acme]` would wait forever: refused.
fn no_acme_without_ca(state: &State) -> Result<(), ChangeError> {
    if state.acme.enabled() {
        return Ok(());
    }
    Err(ChangeError::Invalid(
        "acme: this daemon has no [acme] section in its config (the CA to order from)".into(),
    ))
}

/// [`Change::UpdateRoute`] of a route that is (or becomes) an ACME one.
fn update_acme_route(
    store: &mut Store,
    state: &State,
    origin: &Origin,
    listener: &ListenerState,
    old: String,
    merged: Route,
) -> Result<Applied, ChangeError> {
    no_acme_without_ca(state)?;
    match checked_acme_route(store, listener, &merged)? {
        Ok(valid) => {
            store.update_route(listener.id, &old, &valid.route)?;
            let applied = Applied::Route {
                route: valid.route.clone(),
                warnings: valid.warnings.clone(),
            };
            listener.forget_not_served(&old);
            replace_route(state, listener, old, valid, origin);
            Ok(applied)
        }
        Err(route) => {
            store.update_route(listener.id, &old, &route)?;
            // Whatever it served before (files) it no longer does: it waits.
            state.patch_table(listener, &[&old], Vec::new());
            listener.forget_not_served(&old);
            wait_for_acme(state, listener, &route);
            publish_route(
                state,
                listener.addr,
                ChangeAction::Updated,
                route.clone(),
                Some(old),
                origin,
            );
            Ok(Applied::Route {
                route,
                warnings: vec![format!("not served now: {}", RouteError::AcmePending)],
            })
        }
    }
}

/// Lists `route` as not served, waiting for its certificate, and wakes the ACME task.
fn wait_for_acme(state: &State, listener: &ListenerState, route: &Route) {
    let mut list = Vec::clone(&listener.not_served());
    list.retain(|n| n.route.hostname != route.hostname);
    list.push(NotServed {
        route: route.clone(),
        reason: RouteError::AcmePending.to_string(),
    });
    listener.set_not_served(list);
    state.acme.wake();
}

/// [`Change::RemoveRoute`].
fn remove_route(cx: Apply<'_>, listener: String, hostname: String) -> Result<Applied, ChangeError> {
    let Apply {
        store,
        state,
        origin,
    } = cx;
    check_len("hostname", &hostname, max_len::HOSTNAME)?;
    let listener = listener_by_name(state, &listener)?;
    let listener = &*listener;
    let name = route_name(listener, &hostname)?;
    let removed = store
        .route(listener.id, &name)?
        .ok_or_else(|| no_route(listener, &name))?;
    keep_no_sni_route(listener, &name, "removed")?;
    store.delete_route(listener.id, &name)?;
    state.patch_table(listener, &[&name], Vec::new());
    listener.forget_not_served(&name);
    tracing::info!(listener = %listener.addr, route = %name, "route removed");
    publish_route(
        state,
        listener.addr,
        ChangeAction::Removed,
        removed,
        None,
        origin,
    );
    Ok(Applied::Removed)
}

/// [`Change::AddFirewallRule`].
fn add_firewall_rule(cx: Apply<'_>, rule: FirewallRule) -> Result<Applied, ChangeError> {
    let Apply {
        store,
        state,
        origin,
    } = cx;
    let rule = checked_rule(&rule)?;
    store.add_firewall_rule(&rule)?;
    swap_firewall(store, state)?;
    publish_firewall(state, ChangeAction::Added, &rule, origin);
    Ok(Applied::Rule(rule))
}

/// [`Change::RemoveFirewallRule`].
fn remove_firewall_rule(cx: Apply<'_>, rule: FirewallRule) -> Result<Applied, ChangeError> {
    let Apply {
        store,
        state,
        origin,
    } = cx;
    let rule = checked_rule(&rule)?;
    store.remove_firewall_rule(&rule)?;
    swap_firewall(store, state)?;
    publish_firewall(state, ChangeAction::Removed, &rule, origin);
    Ok(Applied::Removed)
}

/// [`Change::SetBackendState`].
fn set_backend(
    cx: Apply<'_>,
    listener: String,
    hostname: String,
    address: String,
    admin: Option<AdminState>,
    weight: Option<u32>,
) -> Result<Applied, ChangeError> {
    let Apply {
        store,
        state,
        origin,
    } = cx;
    let (listener, name, valid) =
        edited_member(state, &listener, &hostname, &address, admin, weight)?;
    let listener = &*listener;
    let member = valid
        .route
        .backends
        .iter()
        .find(|b| b.address == address)
        .ok_or_else(|| ChangeError::Internal("the edited member went missing".into()))?;
    let (admin, weight) = (member.state, member.weight);
    store.set_backend(listener.id, &name, &address, admin, weight)?;
    tracing::info!(listener = %listener.addr, route = %name, backend = %address, state = %admin, weight, "backend admin state and weight set");
    let route = valid.route.clone();
    // A member's state changed, not the route: `backend_changed` with the new
    // state and reason at once (not `route_changed`, and not only when the health
    // loop next looks).
    state.patch_table(listener, &[], vec![valid]);
    if let Some(live) = listener.routes().get(&name) {
        for t in live.backends.publishable() {
            state.backend_changed_by(listener.addr, &live, Some(t), Some(origin.clone()));
        }
    }
    Ok(Applied::Route {
        route,
        warnings: Vec::new(),
    })
}

/// The checks of [`Change::SetBackendState`]: the listener, the route's name and the live
/// route with the member's new state and weight.
fn edited_member(
    state: &State,
    listener: &str,
    hostname: &str,
    address: &str,
    admin: Option<AdminState>,
    weight: Option<u32>,
) -> Result<(Arc<ListenerState>, String, ValidRoute), ChangeError> {
    check_len("hostname", hostname, max_len::HOSTNAME)?;
    check_len("address", address, max_len::BACKEND)?;
    if admin.is_none() && weight.is_none() {
        return Err(ChangeError::Invalid(
            "nothing to change: give a state or a weight".into(),
        ));
    }
    let listener = listener_by_name(state, listener)?;
    let name = route_name(&listener, hostname)?;
    // The live route, with its loaded certificate: a drain must not depend on
    // the certificate files still loading.
    let live = listener
        .routes()
        .get(&name)
        .ok_or_else(|| not_live(&listener, &name))?;
    let mut valid = live.to_valid();
    let member = valid
        .route
        .backends
        .iter_mut()
        .find(|b| b.address == address)
        .ok_or_else(|| {
            ChangeError::NotFound(format!(
                "route {name} on listener {} has no backend {}",
                listener.addr,
                clip(address)
            ))
        })?;
    if let Some(admin) = admin {
        member.state = admin;
    }
    if let Some(weight) = weight {
        member.weight = weight;
        // The TOML's and the route's own rule (1 to 256), in its words.
        member
            .check_weight()
            .map_err(|e| ChangeError::Invalid(e.to_string()))?;
    }
    Ok((listener, name, valid))
}

/// The listener a new route goes to: a TLS one (an HTTP listener holds no routes).
fn routes_listener(state: &State, name: &str) -> Result<Arc<ListenerState>, ChangeError> {
    let listener = listener_by_name(state, name)?;
    if listener.kind != mc_proxy_shared::ListenerKind::Tls {
        return Err(ChangeError::Invalid(format!(
            "listener {} is an http listener: it holds no routes (it answers ACME http-01 \
             challenges and redirects to https://); add the route to a tls listener",
            listener.addr
        )));
    }
    Ok(listener)
}

/// An acme route's certificate as [`Control::acme_due`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeDue {
    /// The route's hostname.
    pub hostname: String,
    /// When to renew by default (Unix seconds); `None`: no certificate yet.
    pub renew_at: Option<u64>,
    /// Its certificate's end (Unix seconds), if it has one.
    pub not_after: Option<u64>,
    /// The certificate's leaf (DER), if it has one.
    pub leaf: Option<Vec<u8>>,
}

/// [`Change::AddListener`].
fn add_listener(
    cx: Apply<'_>,
    addr: String,
    name: Option<String>,
    kind: mc_proxy_shared::ListenerKind,
    redirect_port: Option<u32>,
    settings: ListenerChange,
) -> Result<Applied, ChangeError> {
    let Apply {
        store,
        state,
        origin,
    } = cx;
    check_len("listener", &addr, max_len::LISTENER)?;
    let addr: SocketAddr = parse_listener_addr(&addr)?;
    if state.listeners().iter().any(|l| l.addr == addr) {
        return Err(ChangeError::AlreadyExists(format!(
            "listener {addr} already exists"
        )));
    }
    // Checked as written, as the TOML checks it: " edge" is refused, not trimmed.
    let name = name.unwrap_or_else(|| addr.to_string());
    check_listener_name(&name).map_err(ChangeError::Invalid)?;
    for l in state.listeners().iter() {
        // One listener whichever way a request names it: names unique, and no name another
        // listener's address (either way round).
        if l.name == name {
            return Err(ChangeError::AlreadyExists(format!(
                "listener name {name} is taken by listener {}",
                l.addr
            )));
        }
        if l.addr.to_string() == name || l.name == addr.to_string() {
            return Err(ChangeError::Invalid(format!(
                "listener name {name}: a name may not be another listener's address \
                 (listener {} is named {})",
                l.addr, l.name
            )));
        }
    }
    let redirect_port = redirect_port
        .map(|p| {
            u16::try_from(p)
                .map_err(|_| ChangeError::Invalid("redirect_port must be 1 to 65535".into()))
        })
        .transpose()?;
    crate::control::config::check_kind_fields(kind, redirect_port, None)
        .map_err(ChangeError::Invalid)?;
    let (settings, warnings) = listener_settings(ListenerSettings::default(), settings)?;
    // Bound before it is stored: an address in use fails with nothing written.
    let host = state.sockets().ok_or_else(|| {
        ChangeError::Internal("no data plane runs to listen on the address".into())
    })?;
    let sockets = host
        .bind(addr)
        .map_err(|e| ChangeError::Invalid(e.to_string()))?;
    let fields = ListenerFields {
        kind,
        redirect_port: redirect_port.unwrap_or(0),
        ..stored(&settings, None)
    };
    let id = store.create_listener(&addr.to_string(), &name, &fields)?;
    let listener = ListenerState::new(
        id,
        addr,
        settings,
        crate::model::routes::RouteTable::with_stats(Vec::new(), |_| Arc::default()),
    )
    .with_name(name);
    let listener = Arc::new(listener.with_kind(kind, fields.redirect_port));
    let mut all = state.listeners().to_vec();
    all.push(Arc::clone(&listener));
    state.set_listeners(all);
    sockets.start(&listener);
    tracing::info!(listener = %addr, bound = ?listener.bound(), proxy_protocol = listener.settings().proxy_protocol, "listener added");
    publish_listener(state, addr, ChangeAction::Added, origin);
    Ok(Applied::Listener { listener, warnings })
}

/// [`Change::UpdateListener`].
fn update_listener(
    cx: Apply<'_>,
    listener: String,
    settings: ListenerChange,
) -> Result<Applied, ChangeError> {
    let Apply {
        store,
        state,
        origin,
    } = cx;
    let listener = listener_by_name(state, &listener)?;
    // Everything is checked before anything is written.
    let no_sni = new_no_sni_route(&listener, settings.no_sni_route.as_deref())?;
    let (settings, warnings) =
        listener_settings(ListenerSettings::clone(&listener.settings()), settings)?;
    store.update_listener(listener.id, &stored(&settings, no_sni.as_deref()))?;
    let limits = &settings.client_limits;
    tracing::info!(listener = %listener.addr, proxy_protocol = settings.proxy_protocol, proxy_protocol_from = %sources_text(&settings).join(","), no_sni_route = no_sni.as_deref().unwrap_or("-"), access_log = settings.access_log, max_conns_per_client = limits.max_conns_per_client, new_conns_per_client = limits.new_conns_per_client, new_conns_burst = limits.new_conns_burst, client_ipv6_prefix = limits.client_ipv6_prefix, "listener updated");
    listener.set_settings(settings);
    if listener.no_sni_route() != no_sni {
        listener.set_no_sni_route(no_sni);
    }
    publish_listener(state, listener.addr, ChangeAction::Updated, origin);
    Ok(Applied::Listener { listener, warnings })
}

/// The no-SNI route `change` asks for (`None` keeps the current one, `""` clears it),
/// checked: it must be a live route of the listener.
fn new_no_sni_route(
    listener: &ListenerState,
    change: Option<&str>,
) -> Result<Option<String>, ChangeError> {
    Ok(match change.map(str::trim) {
        None => listener.no_sni_route(),
        Some("") => None,
        Some(h) => {
            check_len("no_sni_route", h, max_len::HOSTNAME)?;
            let name = route_name(listener, h)?;
            if listener.routes().get(&name).is_none() {
                return Err(not_live(listener, &name));
            }
            Some(name)
        }
    })
}

/// [`Change::RemoveListener`].
fn remove_listener(
    cx: Apply<'_>,
    listener: String,
    with_routes: bool,
) -> Result<Applied, ChangeError> {
    let Apply {
        store,
        state,
        origin,
    } = cx;
    let listener = listener_by_name(state, &listener)?;
    let routes = store.routes(listener.id)?.len();
    if routes > 0 && !with_routes {
        return Err(ChangeError::Invalid(format!(
            "listener {} has {routes} route(s): remove them first, or remove the \
             listener with its routes (--with-routes)",
            listener.addr
        )));
    }
    store.delete_listener(listener.id)?;
    let rest = state
        .listeners()
        .iter()
        .filter(|l| l.id != listener.id)
        .cloned()
        .collect();
    state.set_listeners(rest);
    // Its counters go with it; its open connections finish on their own.
    state.build_table(listener.id, Vec::new());
    // Every worker's socket closed before the answer: the address can be listened
    // on again at once (re-added with other settings, say).
    if !listener.close(SOCKET_CLOSE_WAIT) {
        tracing::warn!(listener = %listener.addr, "listener removed, but a worker had not closed its socket after {SOCKET_CLOSE_WAIT:?}");
    }
    tracing::info!(listener = %listener.addr, routes, open = listener.counters.active.load(std::sync::atomic::Ordering::Relaxed), "listener removed");
    publish_listener(state, listener.addr, ChangeAction::Removed, origin);
    Ok(Applied::Removed)
}

/// [`Change::ReloadSettings`].
fn reload_settings(
    state: &State,
    new: Box<crate::model::state::ProxyConfig>,
) -> Result<Applied, ChangeError> {
    let (merged, report) = state.proxy().reload(&new);
    if !report.applied.is_empty() {
        state.set_proxy(merged);
        tracing::info!(changed = %report.applied.join(", "), "[proxy] settings applied to new connections");
    }
    if !report.need_restart.is_empty() {
        tracing::warn!(settings = %report.need_restart.join(", "), "[proxy] settings changed in the file keep their running value until a restart");
    }
    Ok(Applied::Settings(report))
}

/// The config's listeners that `state` does not have, each as a line that says so and gives
/// the command that adds it (once a database exists its listeners are the source of truth;
/// the file's are read only to seed an empty one).
pub fn not_applied(config: &crate::control::config::Config, state: &State) -> Vec<String> {
    let live = state.listeners();
    let mut lines = Vec::new();
    for l in &config.listeners {
        let Some(running) = live.iter().find(|s| s.addr == l.addr) else {
            lines.push(l.not_in_database(&config.path));
            continue;
        };
        lines.extend(l.name_differs(&config.path, &running.name));
        // Settings edited in the file after the database was seeded: the database's apply.
        let settings = running.settings();
        let mut differ = Vec::new();
        if settings.proxy_protocol != l.proxy_protocol {
            differ.push(format!("--proxy-protocol={}", l.proxy_protocol));
        }
        if settings.proxy_protocol_from != l.proxy_protocol_from {
            match l.proxy_protocol_from.is_empty() {
                true => differ.push("--any-proxy-source".to_owned()),
                false => differ.extend(
                    l.proxy_protocol_from
                        .iter()
                        .map(|n| format!("--proxy-protocol-from {n}")),
                ),
            }
        }
        if settings.access_log != l.access_log {
            let on = if l.access_log { "on" } else { "off" };
            differ.push(format!("--access-log {on}"));
        }
        if settings.client_limits != l.client_limits {
            differ.push(
                crate::control::config::client_limit_flags(&l.client_limits, true)
                    .trim()
                    .to_owned(),
            );
        }
        if !differ.is_empty() {
            lines.push(format!(
                "listener {} in {} has settings the database does not (the database's apply); \
                 to apply the file's: mcproxyctl listeners update --listener {} {}",
                l.addr,
                config.path.display(),
                l.addr,
                differ.join(" ")
            ));
        }
    }
    lines
}

/// The listener a request names, by its name or its configured address (`127.0.0.1:8443`):
/// how every request names one (`State::listener`, the one resolution).
pub fn listener_by_name(state: &State, name: &str) -> Result<Arc<ListenerState>, ChangeError> {
    check_len("listener", name, max_len::LISTENER)?;
    if let Some(listener) = state.listener(name) {
        return Ok(listener);
    }
    let listeners = state.listeners();
    let known: Vec<String> = listeners
        .iter()
        .map(|l| {
            if l.name == l.addr.to_string() {
                l.name.clone()
            } else {
                format!("{} ({})", l.name, l.addr)
            }
        })
        .collect();
    // An address as written back by the parser; any other name quoted and clipped.
    let shown = match name.trim().parse::<SocketAddr>() {
        Ok(addr) => addr.to_string(),
        Err(_) => clip(name.trim()),
    };
    Err(ChangeError::NotFound(format!(
        "no listener {shown} (listeners: {})",
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    )))
}

fn parse_listener_addr(name: &str) -> Result<SocketAddr, ChangeError> {
    name.trim().parse().map_err(|_| {
        ChangeError::Invalid(format!(
            "listener {} is not an address like 127.0.0.1:8443",
            clip(name)
        ))
    })
}

/// `current` with the fields `change` sets, checked as the TOML's are; warnings for what is
/// accepted but probably not meant.
fn listener_settings(
    current: ListenerSettings,
    change: ListenerChange,
) -> Result<(ListenerSettings, Vec<String>), ChangeError> {
    let mut settings = current;
    if let Some(on) = change.proxy_protocol {
        settings.proxy_protocol = on;
    }
    if let Some(on) = change.access_log {
        settings.access_log = on;
    }
    settings.client_limits = settings
        .client_limits
        .patched(&change.client_limits)
        .map_err(|e| ChangeError::Invalid(e.to_string()))?;
    if let Some(from) = change.proxy_protocol_from {
        if from.len() > max_len::PROXY_SOURCES {
            return Err(ChangeError::Invalid(format!(
                "{} proxy_protocol_from entries; a listener takes at most {}",
                from.len(),
                max_len::PROXY_SOURCES
            )));
        }
        let mut nets = Vec::with_capacity(from.len());
        for (i, value) in from.iter().enumerate() {
            check_len("proxy_protocol_from", value, max_len::RULE)?;
            nets.push(
                crate::control::config::parse_net(value.trim()).ok_or_else(|| {
                    ChangeError::Invalid(format!(
                        "proxy_protocol_from[{i}]: {} is not an address or network",
                        clip(value)
                    ))
                })?,
            );
        }
        settings.proxy_protocol_from = nets;
    }
    let mut warnings = Vec::new();
    if !settings.proxy_protocol_from.is_empty() && !settings.proxy_protocol {
        warnings.push(
            "proxy_protocol_from is set but proxy_protocol is off, so no PROXY header is read"
                .to_owned(),
        );
    }
    Ok((settings, warnings))
}

/// A listener's updatable fields as the store keeps them (its kind is written at creation
/// only: `Store::update_listener` leaves it).
fn stored(settings: &ListenerSettings, no_sni_route: Option<&str>) -> ListenerFields {
    ListenerFields {
        kind: mc_proxy_shared::ListenerKind::Tls,
        redirect_port: 0,
        proxy_protocol: settings.proxy_protocol,
        proxy_protocol_from: sources_text(settings),
        no_sni_route: no_sni_route.unwrap_or_default().to_owned(),
        access_log: settings.access_log,
        client_limits: crate::control::store::StoredClientLimits::of(&settings.client_limits),
    }
}

/// `proxy_protocol_from` as stored: each network in its canonical text.
fn sources_text(settings: &ListenerSettings) -> Vec<String> {
    settings
        .proxy_protocol_from
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn publish_listener(state: &State, listener: SocketAddr, action: ChangeAction, origin: &Origin) {
    state.events.publish(|| Event::ListenerChanged {
        listener,
        action,
        origin: origin.clone(),
    });
}

/// The stored name of the route `hostname` names: the one normalisation the data path uses
/// too, so `App.Test.` finds `app.test`. A name that cannot be a route is not found.
fn route_name(listener: &ListenerState, hostname: &str) -> Result<String, ChangeError> {
    crate::model::routes::route_name(hostname).ok_or_else(|| no_route(listener, hostname))
}

/// The listener's no-SNI route may not disappear under its setting: a route named by it is
/// not removed or renamed until the setting points elsewhere.
fn keep_no_sni_route(listener: &ListenerState, name: &str, what: &str) -> Result<(), ChangeError> {
    if listener.no_sni_route().as_deref() == Some(name) {
        return Err(ChangeError::Invalid(format!(
            "route {name} is the no_sni_route of listener {}: it cannot be {what} until \
             that setting names another route or none",
            listener.addr
        )));
    }
    Ok(())
}

fn no_route(listener: &ListenerState, hostname: &str) -> ChangeError {
    ChangeError::NotFound(format!(
        "no route {} on listener {}",
        clip(hostname),
        listener.addr
    ))
}

/// A change that needs the route served (a backend state, the no-SNI route): a stored route
/// that is not served is refused with its reason, any other name is not found.
fn not_live(listener: &ListenerState, name: &str) -> ChangeError {
    match listener.not_served_route(name) {
        Some(stored) => ChangeError::Invalid(format!(
            "route {name} on listener {} is not served: {}",
            listener.addr, stored.reason
        )),
        None => no_route(listener, name),
    }
}

fn validate(listener: &ListenerState, route: &Route) -> Result<ValidRoute, ChangeError> {
    if route.acme {
        return Err(ChangeError::Invalid(format!(
            "listener {}, route {}: an acme route is added or updated on its own (not in a \
             change set)",
            listener.addr,
            clip(&route.hostname)
        )));
    }
    validate_route(route).map_err(|e| {
        ChangeError::Invalid(format!(
            "listener {}, route {}: {e}",
            listener.addr,
            clip(&route.hostname)
        ))
    })
}

/// `current` with the fields `patch` sets replaced. Turning `acme` on without naming files
/// drops the old files (the certificate comes from one or the other).
fn merge(current: Route, mut patch: RoutePatch) -> Route {
    if patch.acme == Some(true) && patch.tls_cert.is_none() && patch.tls_key.is_none() {
        patch.tls_cert = Some(String::new());
        patch.tls_key = Some(String::new());
    }
    Route {
        hostname: patch.hostname.unwrap_or(current.hostname),
        backends: patch.backends.unwrap_or(current.backends),
        balance: patch.balance.unwrap_or(current.balance),
        health_check: patch.health_check.unwrap_or(current.health_check),
        mode: patch.mode.unwrap_or(current.mode),
        tls_cert: patch.tls_cert.unwrap_or(current.tls_cert),
        tls_key: patch.tls_key.unwrap_or(current.tls_key),
        backend_tls: patch.backend_tls.unwrap_or(current.backend_tls),
        send_proxy_protocol: patch
            .send_proxy_protocol
            .unwrap_or(current.send_proxy_protocol),
        backend_protocol: patch.backend_protocol.unwrap_or(current.backend_protocol),
        access_log: patch.access_log.unwrap_or(current.access_log),
        limits: Box::new(patch.limits.apply(*current.limits)),
        acme: patch.acme.unwrap_or(current.acme),
    }
}

fn checked_rule(rule: &FirewallRule) -> Result<FirewallRule, ChangeError> {
    check_len("value", &rule.value, max_len::RULE)?;
    parse_rule(rule.kind, &rule.value).map_err(|e| ChangeError::Invalid(e.to_string()))
}

/// Swaps `valid` in for the route stored as `old` and publishes the update.
fn replace_route(
    state: &State,
    listener: &ListenerState,
    old: String,
    valid: ValidRoute,
    origin: &Origin,
) {
    let route = valid.route.clone();
    state.patch_table(listener, &[&old], vec![valid]);
    publish_route(
        state,
        listener.addr,
        ChangeAction::Updated,
        route,
        Some(old),
        origin,
    );
}

fn swap_firewall(store: &Store, state: &State) -> Result<(), ChangeError> {
    let firewall = Firewall::from_rules(&store.firewall_rules()?)
        .map_err(|e| ChangeError::Internal(format!("stored firewall rule: {e}")))?;
    state.replace_firewall(firewall);
    Ok(())
}

fn publish_route(
    state: &State,
    listener: SocketAddr,
    action: ChangeAction,
    route: Route,
    previous_hostname: Option<String>,
    origin: &Origin,
) {
    state.events.publish(|| Event::RouteChanged {
        listener,
        action,
        route,
        previous_hostname,
        origin: origin.clone(),
    });
}

fn publish_firewall(state: &State, action: ChangeAction, rule: &FirewallRule, origin: &Origin) {
    tracing::info!(kind = %rule.kind, value = %rule.value, "firewall rule {action}");
    state.events.publish(|| Event::FirewallChanged {
        action,
        rule: rule.clone(),
        origin: origin.clone(),
    });
}

/// The fleet's shared store as `apply` writes to it, on a cluster node (implemented by
/// `control::cluster`, which `apply` does not import).
pub trait FleetStore: Send + Sync + std::fmt::Debug {
    /// The store revision of `key`'s current version as this node last applied it (`None`:
    /// the store has no such object).
    fn revision_of(&self, key: &FleetKey) -> Option<i64>;

    /// Writes `ops` in one transaction that succeeds only if every object is still at the
    /// revision this node knows, then waits until this node has applied it from the watch.
    /// Blocks (call from `spawn_blocking`, like every change).
    fn write(&self, ops: Vec<FleetOp>, by: &str) -> Result<(), ChangeError>;

    /// Every node registered in the store now, by name.
    fn nodes(
        &self,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Vec<crate::model::cluster::NodeInfo>, ChangeError>,
                > + Send
                + '_,
        >,
    >;
}

/// The most changes one [`Change::Set`] takes (a route file of 10 000 routes fits).
pub const MAX_SET: usize = 10_000;

/// What a single node checks a [`Change::Set`] against: its own objects, as if they were the
/// fleet's (every one at revision 0), so [`plan`] runs every check a change would pass.
/// Nothing is ever written through it.
#[derive(Debug)]
struct Here<'a> {
    state: &'a State,
    /// The stored rules' values.
    rules: std::collections::HashSet<String>,
}

impl FleetStore for Here<'_> {
    fn revision_of(&self, key: &FleetKey) -> Option<i64> {
        let exists = match key {
            FleetKey::Route { listener, hostname } => self.state.listeners().iter().any(|l| {
                fleet_name(l) == *listener
                    && (l.routes().get(hostname).is_some()
                        || l.not_served_route(hostname).is_some())
            }),
            FleetKey::Rule(value) => self.rules.contains(value),
            FleetKey::NoSni { .. } => true,
        };
        exists.then_some(0)
    }

    fn write(&self, _: Vec<FleetOp>, _: &str) -> Result<(), ChangeError> {
        Err(ChangeError::Internal(
            "a single node's change set is checked against it, never written".into(),
        ))
    }

    fn nodes(
        &self,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Vec<crate::model::cluster::NodeInfo>, ChangeError>,
                > + Send
                + '_,
        >,
    > {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// An object of the fleet's shared state, by what names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FleetKey {
    /// A route of the listener with this name.
    Route {
        /// The listener's name.
        listener: String,
        /// The route's hostname.
        hostname: String,
    },
    /// A firewall rule (its normalised value).
    Rule(String),
    /// A listener's no-SNI route.
    NoSni {
        /// The listener's name.
        listener: String,
    },
}

impl std::fmt::Display for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FleetKey::Route { listener, hostname } => {
                write!(f, "route {hostname} of listener {listener}")
            }
            FleetKey::Rule(value) => write!(f, "firewall rule {value}"),
            FleetKey::NoSni { listener } => write!(f, "the no-SNI route of listener {listener}"),
        }
    }
}

impl FleetOp {
    /// The object it writes.
    pub fn key(&self) -> FleetKey {
        match self {
            FleetOp::PutRoute {
                listener, route, ..
            } => FleetKey::Route {
                listener: listener.clone(),
                hostname: route.hostname.clone(),
            },
            FleetOp::DeleteRoute {
                listener, hostname, ..
            } => FleetKey::Route {
                listener: listener.clone(),
                hostname: hostname.clone(),
            },
            FleetOp::PutRule { rule } | FleetOp::DeleteRule { rule, .. } => {
                FleetKey::Rule(rule.value.clone())
            }
            FleetOp::PutNoSni { listener, .. } => FleetKey::NoSni {
                listener: listener.clone(),
            },
        }
    }
}

/// One write of a fleet-wide change; `expect` is the object's revision the change was
/// computed from (`None`: it must not exist yet).
#[derive(Debug, Clone)]
pub enum FleetOp {
    /// Add or replace the route (its certificate paths are this node's; the store gets the
    /// PEM they hold).
    PutRoute {
        /// The listener's name.
        listener: String,
        /// Every field.
        route: Route,
        /// The revision replaced.
        expect: Option<i64>,
    },
    /// Remove the route.
    DeleteRoute {
        /// The listener's name.
        listener: String,
        /// The route's hostname.
        hostname: String,
        /// The revision removed.
        expect: i64,
    },
    /// Add the rule.
    PutRule {
        /// The normalised rule.
        rule: FirewallRule,
    },
    /// Remove the rule.
    DeleteRule {
        /// The normalised rule.
        rule: FirewallRule,
        /// The revision removed.
        expect: i64,
    },
    /// Set a listener's no-SNI route.
    PutNoSni {
        /// The listener's name.
        listener: String,
        /// The route's hostname (`None`: reset ClientHellos without SNI).
        hostname: Option<String>,
        /// The revision replaced.
        expect: Option<i64>,
    },
}

/// This node's objects of the fleet's shared state, as its database holds them: what seeds
/// an empty cluster and what a resync compares with the store.
#[derive(Debug, Default)]
pub struct FleetObjects {
    /// `(listener name, route)` for every stored route (certificate paths are this node's).
    pub routes: Vec<(String, Route)>,
    /// Every firewall rule.
    pub rules: Vec<FirewallRule>,
    /// `(listener name, no-SNI route)` for every listener.
    pub no_sni: Vec<(String, Option<String>)>,
}

/// The name a listener goes by in the fleet's store: what nodes that bind different
/// addresses share their routes through.
pub fn fleet_name(listener: &ListenerState) -> String {
    listener.name.clone()
}

/// The listener going by `name` in the fleet.
fn listener_by_fleet_name(state: &State, name: &str) -> Result<Arc<ListenerState>, ChangeError> {
    state
        .listeners()
        .iter()
        .find(|l| fleet_name(l) == name)
        .cloned()
        .ok_or_else(|| ChangeError::NotFound(format!("this node has no listener {}", clip(name))))
}

fn not_in_store(what: &str) -> ChangeError {
    ChangeError::Conflict(format!(
        "{what} is not in the cluster store as this node knows it (changed concurrently?), \
         nothing applied: list and retry"
    ))
}

impl Control {
    /// Makes this cluster node's ACME task share its work with the fleet through `share`
    /// (set once; a second call is ignored).
    pub fn set_acme_share(&self, share: Arc<dyn crate::control::acme::share::Share>) {
        let _ = self.acme_share.set(share);
    }

    /// Where the fleet shares ACME work, on a cluster node.
    pub fn acme_share(&self) -> Option<&Arc<dyn crate::control::acme::share::Share>> {
        self.acme_share.get()
    }

    /// Makes this control plane a cluster node's: fleet-wide changes go to `fleet`.
    pub fn set_fleet(&self, fleet: Arc<dyn FleetStore>) {
        let _ = self.fleet.set(fleet);
    }

    /// The fleet's store, on a cluster node.
    pub fn fleet(&self) -> Option<&Arc<dyn FleetStore>> {
        self.fleet.get()
    }

    /// The etcd revision of `prefix`'s table the database reflects (cluster nodes).
    pub fn cluster_revision(&self, prefix: &str) -> Result<Option<i64>, ChangeError> {
        Ok(self.store()?.cluster_revision(prefix)?)
    }

    /// Records the etcd revision of `prefix`'s table the database now reflects.
    pub fn set_cluster_revision(&self, prefix: &str, revision: i64) -> Result<(), ChangeError> {
        Ok(self.store()?.set_cluster_revision(prefix, revision)?)
    }

    /// This node's objects of the fleet's shared state ([`FleetObjects`]). Blocks on SQLite.
    pub fn fleet_objects(&self) -> Result<FleetObjects, ChangeError> {
        let store = self.store()?;
        let mut objects = FleetObjects {
            rules: store.firewall_rules()?,
            ..FleetObjects::default()
        };
        for listener in self.state.listeners().iter() {
            let name = fleet_name(listener);
            for route in store.routes(listener.id)? {
                objects.routes.push((name.clone(), route));
            }
            objects.no_sni.push((name, listener.no_sni_route()));
        }
        Ok(objects)
    }

    /// A fleet-wide change on a cluster node: checked here as [`Control::dispatch`] would
    /// check it, written to the fleet's store, and applied here (as on every node) when the
    /// store's watch delivers it; what is this node's alone in it (an `UpdateListener`'s
    /// PROXY settings) is applied after.
    fn fleet_apply(
        &self,
        fleet: &dyn FleetStore,
        change: Change,
        origin: &Origin,
    ) -> Result<Applied, ChangeError> {
        let (ops, applied, local) = {
            let store = self.store()?;
            plan(&store, &self.state, fleet, change)?
        };
        fleet.write(ops, &origin.caller.to_string())?;
        match local {
            Some(local) => self.dispatch(local, origin),
            None => applied(&self.state),
        }
    }
}

/// What [`plan`] makes of a change: the writes, the answer once they are applied here (it
/// reads the live state then), and the part of the change that is this node's alone.
type Plan = (Vec<FleetOp>, Answer, Option<Change>);

/// The answer of a planned change, made once it is applied here.
type Answer = Box<dyn FnOnce(&State) -> Result<Applied, ChangeError>>;

/// A fleet-wide change as writes to the fleet's store, after the checks the change would
/// pass on a single node.
fn plan(
    store: &Store,
    state: &State,
    fleet: &dyn FleetStore,
    change: Change,
) -> Result<Plan, ChangeError> {
    match change {
        Change::AddRoute { listener, route } => {
            plan_add_route(store, state, fleet, listener, route)
        }
        Change::UpdateRoute {
            listener,
            hostname,
            patch,
        } => plan_update_route(store, state, fleet, listener, hostname, patch),
        Change::RemoveRoute { listener, hostname } => {
            plan_remove_route(state, fleet, listener, hostname)
        }
        Change::SetBackendState {
            listener,
            hostname,
            address,
            state: admin,
            weight,
        } => plan_set_backend(state, fleet, listener, hostname, address, admin, weight),
        Change::AddFirewallRule(rule) => plan_add_rule(fleet, rule),
        Change::RemoveFirewallRule(rule) => plan_remove_rule(fleet, rule),
        Change::UpdateListener {
            listener: name,
            settings,
        } => plan_update_listener(state, fleet, name, settings),
        other => Err(ChangeError::Internal(format!(
            "{} is not a fleet-wide change",
            other.kind()
        ))),
    }
}

/// The answer to a planned route change.
fn route_answer(route: Route, warnings: Vec<String>) -> Answer {
    Box::new(move |_| Ok(Applied::Route { route, warnings }))
}

/// The fleet's key of `listener`'s route `hostname`.
fn route_key(listener: &ListenerState, hostname: &str) -> FleetKey {
    FleetKey::Route {
        listener: fleet_name(listener),
        hostname: hostname.to_owned(),
    }
}

/// [`plan`] for [`Change::AddRoute`].
fn plan_add_route(
    store: &Store,
    state: &State,
    fleet: &dyn FleetStore,
    listener: String,
    route: Route,
) -> Result<Plan, ChangeError> {
    let (listener, valid) = match route.acme {
        true => new_fleet_acme_route(store, state, &listener, &route)?,
        false => {
            let (listener, valid) = new_route(state, &listener, &route)?;
            (listener, (valid.route, valid.warnings))
        }
    };
    let (route, warnings) = valid;
    let key = route_key(&listener, &route.hostname);
    if fleet.revision_of(&key).is_some() || listener.routes().get(&route.hostname).is_some() {
        return Err(route_exists(&route.hostname, &listener));
    }
    let ops = vec![FleetOp::PutRoute {
        listener: fleet_name(&listener),
        route: route.clone(),
        expect: None,
    }];
    Ok((ops, route_answer(route, warnings), None))
}

/// A route checked for the fleet's store, with its warnings.
type Checked = (Route, Vec<String>);

/// [`plan_add_route`]'s checks of an acme route: as [`add_acme_route`] makes them.
fn new_fleet_acme_route(
    store: &Store,
    state: &State,
    listener: &str,
    route: &Route,
) -> Result<(Arc<ListenerState>, Checked), ChangeError> {
    // A served route of that name: `plan_add_route` looks for its key in the fleet.
    let listener = acme_route_listener(state, listener, route)?;
    let valid = fleet_acme_route(store, &listener, route)?;
    Ok((listener, valid))
}

/// An acme route for the fleet's store: its fields checked, the route as stored (the fleet
/// ships no certificate for it: each node serves the one it holds, its own order's or the
/// fleet's), with the warning that it waits when this node has no certificate for it yet.
fn fleet_acme_route(
    store: &Store,
    listener: &ListenerState,
    route: &Route,
) -> Result<Checked, ChangeError> {
    Ok(match checked_acme_route(store, listener, route)? {
        Ok(valid) => (valid.route, valid.warnings),
        Err(waiting) => (
            waiting,
            vec![format!("not served yet: {}", RouteError::AcmePending)],
        ),
    })
}

/// [`plan`] for [`Change::UpdateRoute`].
fn plan_update_route(
    store: &Store,
    state: &State,
    fleet: &dyn FleetStore,
    listener: String,
    hostname: String,
    patch: RoutePatch,
) -> Result<Plan, ChangeError> {
    let (listener, old, merged) = merged_route(store, state, &listener, &hostname, patch)?;
    let (route, warnings) = match merged.acme {
        true => fleet_acme_route(store, &listener, &merged)?,
        false => {
            let valid = validate(&listener, &merged)?;
            (valid.route, valid.warnings)
        }
    };
    let old_key = route_key(&listener, &old);
    let expect = fleet
        .revision_of(&old_key)
        .ok_or_else(|| not_in_store(&format!("route {old}")))?;
    let mut ops = Vec::new();
    if route.hostname != old {
        let new_key = route_key(&listener, &route.hostname);
        if fleet.revision_of(&new_key).is_some() {
            return Err(route_exists(&route.hostname, &listener));
        }
        ops.push(FleetOp::DeleteRoute {
            listener: fleet_name(&listener),
            hostname: old,
            expect,
        });
        ops.push(FleetOp::PutRoute {
            listener: fleet_name(&listener),
            route: route.clone(),
            expect: None,
        });
    } else {
        ops.push(FleetOp::PutRoute {
            listener: fleet_name(&listener),
            route: route.clone(),
            expect: Some(expect),
        });
    }
    Ok((ops, route_answer(route, warnings), None))
}

/// [`plan`] for [`Change::RemoveRoute`].
fn plan_remove_route(
    state: &State,
    fleet: &dyn FleetStore,
    listener: String,
    hostname: String,
) -> Result<Plan, ChangeError> {
    check_len("hostname", &hostname, max_len::HOSTNAME)?;
    let listener = listener_by_name(state, &listener)?;
    let name = route_name(&listener, &hostname)?;
    let expect = fleet
        .revision_of(&route_key(&listener, &name))
        .ok_or_else(|| no_route(&listener, &name))?;
    keep_no_sni_route(&listener, &name, "removed")?;
    let ops = vec![FleetOp::DeleteRoute {
        listener: fleet_name(&listener),
        hostname: name,
        expect,
    }];
    Ok((ops, Box::new(|_| Ok(Applied::Removed)), None))
}

/// [`plan`] for [`Change::SetBackendState`].
fn plan_set_backend(
    state: &State,
    fleet: &dyn FleetStore,
    listener: String,
    hostname: String,
    address: String,
    admin: Option<AdminState>,
    weight: Option<u32>,
) -> Result<Plan, ChangeError> {
    let (listener, name, valid) =
        edited_member(state, &listener, &hostname, &address, admin, weight)?;
    let expect = fleet
        .revision_of(&route_key(&listener, &name))
        .ok_or_else(|| not_in_store(&format!("route {name}")))?;
    let ops = vec![FleetOp::PutRoute {
        listener: fleet_name(&listener),
        route: valid.route.clone(),
        expect: Some(expect),
    }];
    Ok((ops, route_answer(valid.route, Vec::new()), None))
}

/// [`plan`] for [`Change::AddFirewallRule`].
fn plan_add_rule(fleet: &dyn FleetStore, rule: FirewallRule) -> Result<Plan, ChangeError> {
    let rule = checked_rule(&rule)?;
    if fleet
        .revision_of(&FleetKey::Rule(rule.value.clone()))
        .is_some()
    {
        return Err(ChangeError::AlreadyExists(format!(
            "firewall rule {} already exists",
            rule.value
        )));
    }
    let answer = rule.clone();
    Ok((
        vec![FleetOp::PutRule { rule }],
        Box::new(move |_| Ok(Applied::Rule(answer))),
        None,
    ))
}

/// [`plan`] for [`Change::RemoveFirewallRule`].
fn plan_remove_rule(fleet: &dyn FleetStore, rule: FirewallRule) -> Result<Plan, ChangeError> {
    let rule = checked_rule(&rule)?;
    let expect = fleet
        .revision_of(&FleetKey::Rule(rule.value.clone()))
        .ok_or_else(|| ChangeError::NotFound(format!("firewall rule {} not found", rule.value)))?;
    Ok((
        vec![FleetOp::DeleteRule { rule, expect }],
        Box::new(|_| Ok(Applied::Removed)),
        None,
    ))
}

/// [`plan`] for [`Change::UpdateListener`].
fn plan_update_listener(
    state: &State,
    fleet: &dyn FleetStore,
    name: String,
    mut settings: ListenerChange,
) -> Result<Plan, ChangeError> {
    let listener = listener_by_name(state, &name)?;
    let no_sni = new_no_sni_route(&listener, settings.no_sni_route.as_deref())?;
    settings.no_sni_route = None;
    // The node's own part is checked now too: all or nothing.
    listener_settings(
        ListenerSettings::clone(&listener.settings()),
        settings.clone(),
    )?;
    let local = (settings != ListenerChange::default()).then_some(Change::UpdateListener {
        listener: name,
        settings,
    });
    let key = FleetKey::NoSni {
        listener: fleet_name(&listener),
    };
    let ops = vec![FleetOp::PutNoSni {
        listener: fleet_name(&listener),
        hostname: no_sni,
        expect: fleet.revision_of(&key),
    }];
    let addr = listener.addr;
    let answer = Box::new(move |state: &State| {
        let listener = state
            .listeners()
            .iter()
            .find(|l| l.addr == addr)
            .cloned()
            .ok_or_else(|| ChangeError::NotFound(format!("no listener {addr}")))?;
        Ok(Applied::Listener {
            listener,
            warnings: Vec::new(),
        })
    });
    Ok((ops, answer, local))
}

/// [`Change::Synced`]: the fleet's objects as the store has them, applied here whatever this
/// node had (idempotent). Routes are written one by one but each listener's table is swapped
/// once for the whole batch, so a node that loads a large fleet does not rebuild its table
/// per route. An object that cannot be applied here (a listener this node lacks, a
/// certificate that does not load) is skipped and named in the error; the rest is applied.
fn apply_synced(cx: Apply<'_>, batch: Vec<Synced>) -> Result<Applied, ChangeError> {
    let Apply {
        store,
        state,
        origin,
    } = cx;
    let mut failed = Vec::new();
    // Per listener: the routes to put and the hostnames to drop, swapped once at the end.
    let mut tables: Vec<(Arc<ListenerState>, Vec<ValidRoute>, Vec<String>)> = Vec::new();
    // The stored routes the batch names, each read once per batch by its key (never the
    // listener's whole table: a watch event is a batch of one).
    let mut stored_routes: StoredRoutes = HashMap::new();
    let mut firewall_changed = false;
    for synced in batch {
        let result = match synced {
            Synced::PutRoute { listener, route } => sync_put_route(
                store,
                state,
                &listener,
                route,
                origin,
                &mut tables,
                &mut stored_routes,
            ),
            Synced::DeleteRoute { listener, hostname } => sync_delete_route(
                store,
                state,
                &listener,
                hostname,
                origin,
                &mut tables,
                &mut stored_routes,
            ),
            Synced::PutRule(rule) => sync_rule(store, state, rule, true, origin)
                .map(|changed| firewall_changed |= changed),
            Synced::DeleteRule(rule) => sync_rule(store, state, rule, false, origin)
                .map(|changed| firewall_changed |= changed),
            Synced::NoSni { listener, hostname } => {
                sync_no_sni(store, state, &listener, hostname, origin)
            }
        };
        if let Err(e) = result {
            failed.push(e.to_string());
        }
    }
    for (listener, put, dropped) in tables {
        let dropped: Vec<&str> = dropped.iter().map(String::as_str).collect();
        state.patch_table(&listener, &dropped, put);
    }
    if firewall_changed {
        swap_firewall(store, state)?;
    }
    match failed.len() {
        0 => Ok(Applied::Removed),
        n => Err(ChangeError::Invalid(format!(
            "{n} object(s) of the cluster not applied on this node: {}",
            clip(&failed.join("; "))
        ))),
    }
}

/// The entry of `tables` for `listener`.
fn table_of<'t>(
    tables: &'t mut Vec<(Arc<ListenerState>, Vec<ValidRoute>, Vec<String>)>,
    listener: &Arc<ListenerState>,
) -> &'t mut (Arc<ListenerState>, Vec<ValidRoute>, Vec<String>) {
    let at = match tables.iter().position(|(l, _, _)| l.id == listener.id) {
        Some(at) => at,
        None => {
            tables.push((Arc::clone(listener), Vec::new(), Vec::new()));
            tables.len() - 1
        }
    };
    &mut tables[at]
}

/// Stored routes by listener id and hostname (`None`: not stored), as a batch of [`Synced`]
/// changes them.
type StoredRoutes = HashMap<(i64, String), Option<Route>>;

/// The entry of `stored` for `listener`'s route `hostname`, read from the store the first
/// time (one indexed read, whatever the listener's size).
fn stored_of<'s>(
    stored: &'s mut StoredRoutes,
    store: &Store,
    listener: &ListenerState,
    hostname: &str,
) -> Result<&'s mut Option<Route>, ChangeError> {
    Ok(match stored.entry((listener.id, hostname.to_owned())) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(store.route(listener.id, hostname)?)
        }
    })
}

/// [`Synced::PutRoute`]: stored now, swapped with the batch.
fn sync_put_route(
    store: &mut Store,
    state: &State,
    listener: &str,
    route: Route,
    origin: &Origin,
    tables: &mut Vec<(Arc<ListenerState>, Vec<ValidRoute>, Vec<String>)>,
    stored: &mut StoredRoutes,
) -> Result<(), ChangeError> {
    let listener = listener_by_fleet_name(state, listener)?;
    // An acme route is served with the certificate this node holds for it (its own order's
    // or the fleet's), else stored and listed as waiting for one.
    let checked = match route.acme {
        true => checked_acme_route(store, &listener, &route)?,
        false => Ok(validate(&listener, &route)?),
    };
    let wanted = match &checked {
        Ok(valid) => &valid.route,
        Err(waiting) => waiting,
    };
    let name = wanted.hostname.clone();
    let current = stored_of(stored, store, &listener, &name)?.clone();
    let action = match &current {
        Some(current)
            if current == wanted && checked.is_ok() == listener.routes().get(&name).is_some() =>
        {
            return Ok(());
        }
        Some(current) if current == wanted => ChangeAction::Updated,
        Some(_) => {
            store.update_route(listener.id, &name, wanted)?;
            ChangeAction::Updated
        }
        None => {
            store.create_route(listener.id, wanted)?;
            ChangeAction::Added
        }
    };
    listener.forget_not_served(&name);
    tracing::info!(listener = %listener.addr, route = %name, backends = %wanted.backend_list(), "route {action} from the cluster");
    let previous = current.map(|c| c.hostname);
    *stored_of(stored, store, &listener, &name)? = Some(wanted.clone());
    publish_route(
        state,
        listener.addr,
        action,
        wanted.clone(),
        previous,
        origin,
    );
    let (_, put, dropped) = table_of(tables, &listener);
    put.retain(|p| p.route.hostname != name);
    dropped.retain(|d| *d != name);
    match checked {
        Ok(valid) => put.push(valid),
        Err(waiting) => {
            dropped.push(name);
            wait_for_acme(state, &listener, &waiting);
        }
    }
    Ok(())
}

/// [`Synced::PutRule`] (`present`) or [`Synced::DeleteRule`]: stored now, the firewall
/// swapped with the batch. Says whether anything changed.
fn sync_rule(
    store: &mut Store,
    state: &State,
    rule: FirewallRule,
    present: bool,
    origin: &Origin,
) -> Result<bool, ChangeError> {
    let rule = checked_rule(&rule)?;
    if store.firewall_rules()?.contains(&rule) == present {
        return Ok(false);
    }
    if present {
        store.add_firewall_rule(&rule)?;
        publish_firewall(state, ChangeAction::Added, &rule, origin);
    } else {
        store.remove_firewall_rule(&rule)?;
        publish_firewall(state, ChangeAction::Removed, &rule, origin);
    }
    Ok(true)
}

/// [`Synced::NoSni`].
fn sync_no_sni(
    store: &mut Store,
    state: &State,
    listener: &str,
    hostname: Option<String>,
    origin: &Origin,
) -> Result<(), ChangeError> {
    let listener = listener_by_fleet_name(state, listener)?;
    if listener.no_sni_route() == hostname {
        return Ok(());
    }
    tracing::info!(listener = %listener.addr, no_sni_route = hostname.as_deref().unwrap_or("-"), "no_sni_route set from the cluster");
    store_no_sni_route(store, &listener, hostname)?;
    publish_listener(state, listener.addr, ChangeAction::Updated, origin);
    Ok(())
}

/// Stores and serves `hostname` as the listener's no-SNI route, its other settings kept.
fn store_no_sni_route(
    store: &mut Store,
    listener: &ListenerState,
    hostname: Option<String>,
) -> Result<(), ChangeError> {
    store.update_listener(
        listener.id,
        &stored(&listener.settings(), hostname.as_deref()),
    )?;
    listener.set_no_sni_route(hostname);
    Ok(())
}

/// [`Synced::DeleteRoute`]: deleted now, swapped with the batch.
fn sync_delete_route(
    store: &mut Store,
    state: &State,
    listener: &str,
    hostname: String,
    origin: &Origin,
    tables: &mut Vec<(Arc<ListenerState>, Vec<ValidRoute>, Vec<String>)>,
    routes: &mut StoredRoutes,
) -> Result<(), ChangeError> {
    let listener = listener_by_fleet_name(state, listener)?;
    let Some(removed) = stored_of(routes, store, &listener, &hostname)?.take() else {
        return Ok(());
    };
    if listener.no_sni_route().as_deref() == Some(hostname.as_str()) {
        // The fleet removed it: ClientHellos without SNI are reset from now on.
        store_no_sni_route(store, &listener, None)?;
    }
    store.delete_route(listener.id, &hostname)?;
    listener.forget_not_served(&hostname);
    tracing::info!(listener = %listener.addr, route = %hostname, "route removed from the cluster");
    publish_route(
        state,
        listener.addr,
        ChangeAction::Removed,
        removed,
        None,
        origin,
    );
    let (_, put, dropped) = table_of(tables, &listener);
    put.retain(|p| p.route.hostname != hostname);
    dropped.push(hostname);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::Config;
    use mc_proxy_shared::{FirewallRuleKind, RouteBackend};

    /// A control plane over a fresh database seeded with one listener and `app.test`.
    fn control() -> (Control, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("mc.db");
        let text = format!(
            "[database]\npath = {:?}\n[[listeners]]\naddr = \"127.0.0.1:8443\"\n\
             [[listeners.routes]]\nhostname = \"app.test\"\nbackend = \"127.0.0.1:9443\"\n",
            db.display().to_string()
        );
        let config = Config::parse(&dir.path().join("mc.toml"), &text).unwrap();
        let mut store = Store::open(&db).unwrap();
        let state = Arc::new(crate::control::boot::load_state(&config, &mut store).unwrap());
        (Control::new(state, store), dir)
    }

    fn route(hostname: &str, backend: &str) -> Route {
        Route {
            hostname: hostname.into(),
            backends: vec![RouteBackend::new(backend)],
            ..Route::default()
        }
    }

    const L: &str = "127.0.0.1:8443";

    fn backend_of(control: &Control, sni: &str) -> Option<String> {
        control.state().listeners()[0]
            .lookup(sni)
            .map(|r| r.route.backend_list())
    }

    /// An upgrade's handover: once released, a change is refused as UNAVAILABLE with the
    /// reason and changes nothing, and another process can write the database; after
    /// `resume` changes are taken again and see what the other process wrote.
    #[test]
    fn a_released_store_refuses_changes_until_resumed() {
        let (control, dir) = control();
        control.release(4242).unwrap();
        let refused = control
            .apply(Change::AddRoute {
                listener: L.into(),
                route: route("late.test", "127.0.0.1:1"),
            })
            .unwrap_err();
        assert!(
            matches!(&refused, ChangeError::Unavailable(m) if m.contains("pid 4242")),
            "{refused:?}"
        );
        assert_eq!(backend_of(&control, "late.test"), None);
        // The file is free for the new process: it writes, and this one's state is not used.
        let db = dir.path().join("mc.db");
        let mut other = Store::open(&db).unwrap();
        let listener = other.listeners().unwrap()[0].id;
        other
            .create_route(listener, &route("other.test", "127.0.0.1:2"))
            .unwrap();
        drop(other);
        control.resume(&db).unwrap();
        control
            .apply(Change::AddRoute {
                listener: L.into(),
                route: route("again.test", "127.0.0.1:3"),
            })
            .unwrap();
        let stored = control.store().unwrap().routes(1).unwrap();
        let names: Vec<&str> = stored.iter().map(|r| r.hostname.as_str()).collect();
        assert!(
            names.contains(&"other.test") && names.contains(&"again.test"),
            "{names:?}"
        );
    }

    #[test]
    fn an_added_route_is_stored_served_and_published() {
        let (control, _dir) = control();
        let mut events = control.state().events.subscribe();
        let applied = control
            .apply(Change::AddRoute {
                listener: L.into(),
                route: route("New.Test", "127.0.0.1:1"),
            })
            .unwrap();
        assert!(
            matches!(applied, Applied::Route { ref route, .. } if route.hostname == "new.test")
        );
        assert_eq!(
            backend_of(&control, "new.test").as_deref(),
            Some("127.0.0.1:1")
        );
        let stored = control.store().unwrap().routes(1).unwrap();
        assert!(
            stored.iter().any(|r| r.hostname == "new.test"),
            "{stored:?}"
        );
        let event = events.try_recv().unwrap().event;
        assert!(
            matches!(event, Event::RouteChanged { action: ChangeAction::Added, ref route, .. } if route.hostname == "new.test"),
            "{event:?}"
        );
    }

    #[test]
    fn updates_and_removals_find_the_route_through_the_one_normalisation() {
        let (control, _dir) = control();
        control
            .apply(Change::UpdateRoute {
                listener: L.into(),
                hostname: "App.Test.".into(),
                patch: RoutePatch {
                    backends: Some(vec![RouteBackend::new("127.0.0.1:2")]),
                    ..RoutePatch::default()
                },
            })
            .unwrap();
        assert_eq!(
            backend_of(&control, "app.test").as_deref(),
            Some("127.0.0.1:2")
        );
        control
            .apply(Change::RemoveRoute {
                listener: L.into(),
                hostname: "APP.test.".into(),
            })
            .unwrap();
        assert_eq!(backend_of(&control, "app.test"), None);
        assert!(control.store().unwrap().routes(1).unwrap().is_empty());
    }

    #[test]
    fn a_change_set_is_checked_whole_before_its_first_change_is_made() {
        let (control, _dir) = control();
        let rule = |value: &str| FirewallRule {
            kind: FirewallRuleKind::Ip,
            value: value.into(),
        };
        let add = |hostname: &str| Change::AddRoute {
            listener: L.into(),
            route: route(hostname, "127.0.0.1:5"),
        };
        // The third change names a route that does not exist: nothing of the set is made.
        let refused = control
            .apply(Change::Set(vec![
                Change::AddFirewallRule(rule("192.0.2.9")),
                add("one.test"),
                Change::RemoveRoute {
                    listener: L.into(),
                    hostname: "nowhere.test".into(),
                },
            ]))
            .unwrap_err();
        assert!(
            matches!(refused, ChangeError::InSet { index: 3, ref source } if matches!(**source, ChangeError::NotFound(_))),
            "{refused:?}"
        );
        assert_eq!(backend_of(&control, "one.test"), None);
        assert!(control.firewall_rules().unwrap().is_empty());
        assert_eq!(control.store().unwrap().routes(1).unwrap().len(), 1);

        // One object twice, or a change a set does not take: refused, naming its place.
        let twice = control
            .apply(Change::Set(vec![add("two.test"), add("Two.Test")]))
            .unwrap_err();
        assert!(
            matches!(twice, ChangeError::InSet { index: 2, .. })
                && twice.to_string().contains("second time"),
            "{twice}"
        );
        let reload = control
            .apply(Change::Set(vec![
                add("two.test"),
                Change::ReloadCertificates,
            ]))
            .unwrap_err();
        assert!(
            matches!(reload, ChangeError::InSet { index: 2, .. }),
            "{reload}"
        );
        assert_eq!(backend_of(&control, "two.test"), None);

        // A good set: every change made, one result each, in order.
        let applied = control
            .apply(Change::Set(vec![
                Change::AddFirewallRule(rule("192.0.2.9")),
                add("one.test"),
                Change::UpdateRoute {
                    listener: L.into(),
                    hostname: "app.test".into(),
                    patch: RoutePatch {
                        backends: Some(vec![RouteBackend::new("127.0.0.1:6")]),
                        ..RoutePatch::default()
                    },
                },
            ]))
            .unwrap();
        let Applied::Set(results) = applied else {
            panic!("{applied:?}")
        };
        assert_eq!(results.len(), 3);
        assert!(
            matches!(results[1], Applied::Route { ref route, .. } if route.hostname == "one.test")
        );
        assert_eq!(
            backend_of(&control, "one.test").as_deref(),
            Some("127.0.0.1:5")
        );
        assert_eq!(
            backend_of(&control, "app.test").as_deref(),
            Some("127.0.0.1:6")
        );
        assert_eq!(control.firewall_rules().unwrap().len(), 1);
    }

    #[test]
    fn a_refused_change_changes_nothing() {
        let (control, _dir) = control();
        control
            .apply(Change::AddRoute {
                listener: L.into(),
                route: route("b.test", "127.0.0.1:3"),
            })
            .unwrap();
        let before = control.store().unwrap().routes(1).unwrap();
        let refusals = [
            // Renaming onto an existing route: the database refuses, the tables keep both.
            Change::UpdateRoute {
                listener: L.into(),
                hostname: "b.test".into(),
                patch: RoutePatch {
                    hostname: Some("app.test".into()),
                    ..RoutePatch::default()
                },
            },
            Change::AddRoute {
                listener: L.into(),
                route: route("app.test", "127.0.0.1:4"),
            },
            Change::AddRoute {
                listener: L.into(),
                route: Route {
                    mode: mc_proxy_shared::Mode::L7,
                    tls_cert: "relative.pem".into(),
                    tls_key: "/abs.key".into(),
                    ..route("c.test", "127.0.0.1:5")
                },
            },
            Change::AddRoute {
                listener: "127.0.0.1:1".into(),
                route: route("d.test", "127.0.0.1:5"),
            },
            Change::RemoveRoute {
                listener: L.into(),
                hostname: "nope.test".into(),
            },
        ];
        let kinds: Vec<&str> = refusals
            .into_iter()
            .map(|change| match control.apply(change).unwrap_err() {
                ChangeError::Invalid(_) => "invalid",
                ChangeError::NotFound(_) => "not found",
                ChangeError::AlreadyExists(_) => "exists",
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(
            kinds,
            ["exists", "exists", "invalid", "not found", "not found"]
        );
        assert_eq!(control.store().unwrap().routes(1).unwrap(), before);
        assert_eq!(
            backend_of(&control, "app.test").as_deref(),
            Some("127.0.0.1:9443")
        );
        assert_eq!(
            backend_of(&control, "b.test").as_deref(),
            Some("127.0.0.1:3")
        );
    }

    #[test]
    fn firewall_rules_are_parsed_once_normalised_and_applied() {
        let (control, _dir) = control();
        let rule = |kind, value: &str| FirewallRule {
            kind,
            value: value.into(),
        };
        let applied = control
            .apply(Change::AddFirewallRule(rule(
                FirewallRuleKind::Cidr,
                " 10.1.2.3/8 ",
            )))
            .unwrap();
        assert!(
            matches!(applied, Applied::Rule(ref r) if r.value == "10.0.0.0/8"),
            "{applied:?}"
        );
        assert!(control.state().is_blocked("10.9.9.9".parse().unwrap()));
        let err = control
            .apply(Change::AddFirewallRule(rule(
                FirewallRuleKind::Ip,
                "10.0.0.0/8",
            )))
            .unwrap_err();
        assert!(err.to_string().contains("not an IP address"), "{err}");
        control
            .apply(Change::RemoveFirewallRule(rule(
                FirewallRuleKind::Cidr,
                "10.0.0.0/8",
            )))
            .unwrap();
        assert!(!control.state().is_blocked("10.9.9.9".parse().unwrap()));
        assert!(control.firewall_rules().unwrap().is_empty());
    }

    fn set_state(address: &str, state: AdminState) -> Change {
        Change::SetBackendState {
            listener: L.into(),
            hostname: "App.Test".into(),
            address: address.into(),
            state: Some(state),
            weight: None,
        }
    }

    fn live_states(control: &Control) -> Vec<(String, AdminState)> {
        let route = control.state().listeners()[0].lookup("app.test").unwrap();
        route
            .route
            .backends
            .iter()
            .map(|b| (b.address.clone(), b.state))
            .collect()
    }

    #[test]
    fn a_backend_state_change_is_stored_then_served_and_published() {
        let (control, _dir) = control();
        control
            .apply(Change::UpdateRoute {
                listener: L.into(),
                hostname: "app.test".into(),
                patch: RoutePatch {
                    backends: Some(vec![
                        RouteBackend::new("127.0.0.1:1"),
                        RouteBackend::new("127.0.0.1:2").with_weight(3),
                    ]),
                    ..RoutePatch::default()
                },
            })
            .unwrap();
        let mut events = control.state().events.subscribe();
        let applied = control
            .apply(set_state("127.0.0.1:2", AdminState::Draining))
            .unwrap();
        let Applied::Route { route, .. } = applied else {
            panic!("{applied:?}")
        };
        assert_eq!(route.backends[1].state, AdminState::Draining);
        assert_eq!(
            route.backends[1].weight, 3,
            "the rest of the member is kept"
        );
        let expected = vec![
            ("127.0.0.1:1".to_owned(), AdminState::Enabled),
            ("127.0.0.1:2".to_owned(), AdminState::Draining),
        ];
        assert_eq!(live_states(&control), expected);
        let stored = control.store().unwrap().routes(1).unwrap();
        assert_eq!(stored[0].backends, route.backends);
        // Published at once as the member's change, with its reason; no route_changed.
        let event = events.try_recv().unwrap().event;
        assert!(
            matches!(event, Event::BackendChanged { ref member, .. }
                if member.address == "127.0.0.1:2"
                    && member.state == mc_proxy_shared::BackendState::Draining
                    && member.reason == "draining by the operator"),
            "{event:?}"
        );
        assert!(events.try_recv().is_err(), "one event for one change");

        // Unknown member or route: not found, nothing changes.
        for change in [
            set_state("127.0.0.1:3", AdminState::Disabled),
            Change::SetBackendState {
                listener: L.into(),
                hostname: "nope.test".into(),
                address: "127.0.0.1:1".into(),
                state: Some(AdminState::Disabled),
                weight: None,
            },
        ] {
            let err = control.apply(change).unwrap_err();
            assert!(matches!(err, ChangeError::NotFound(_)), "{err}");
        }
        assert_eq!(live_states(&control), expected);
    }

    #[test]
    fn a_failed_backend_state_write_changes_nothing() {
        let (control, _dir) = control();
        control
            .store()
            .unwrap()
            .execute_batch_for_tests(
                "CREATE TRIGGER no_writes BEFORE UPDATE ON backends
                 BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END;",
            )
            .unwrap();
        let mut events = control.state().events.subscribe();
        let err = control
            .apply(set_state("127.0.0.1:9443", AdminState::Disabled))
            .unwrap_err();
        assert!(matches!(err, ChangeError::Store(_)), "{err}");
        assert_eq!(
            live_states(&control),
            [("127.0.0.1:9443".to_owned(), AdminState::Enabled)]
        );
        assert_eq!(
            control.store().unwrap().routes(1).unwrap()[0].backends[0].state,
            AdminState::Enabled
        );
        assert!(events.try_recv().is_err(), "nothing published");
    }

    #[test]
    fn a_patch_replaces_the_set_balance_and_health_check() {
        let (control, _dir) = control();
        let check = mc_proxy_shared::HealthCheck::default();
        let applied = control
            .apply(Change::UpdateRoute {
                listener: L.into(),
                hostname: "app.test".into(),
                patch: RoutePatch {
                    backends: Some(vec![
                        RouteBackend::new("127.0.0.1:1"),
                        RouteBackend::new("127.0.0.1:2"),
                    ]),
                    balance: Some(mc_proxy_shared::Balance::Source),
                    health_check: Some(Some(check.clone())),
                    ..RoutePatch::default()
                },
            })
            .unwrap();
        let Applied::Route { route, .. } = applied else {
            panic!()
        };
        assert_eq!(route.backend_list(), "127.0.0.1:1, 127.0.0.1:2");
        assert_eq!(route.health_check, Some(check));
        let stored = control.store().unwrap().routes(1).unwrap();
        assert_eq!(stored, vec![route.clone()]);
        // Clearing the check keeps the set; a duplicate member is refused whole.
        control
            .apply(Change::UpdateRoute {
                listener: L.into(),
                hostname: "app.test".into(),
                patch: RoutePatch {
                    health_check: Some(None),
                    ..RoutePatch::default()
                },
            })
            .unwrap();
        let err = control
            .apply(Change::UpdateRoute {
                listener: L.into(),
                hostname: "app.test".into(),
                patch: RoutePatch {
                    backends: Some(vec![
                        RouteBackend::new("127.0.0.1:5"),
                        RouteBackend::new("127.0.0.1:5"),
                    ]),
                    ..RoutePatch::default()
                },
            })
            .unwrap_err();
        assert!(matches!(err, ChangeError::Invalid(_)), "{err}");
        let stored = control.store().unwrap().routes(1).unwrap();
        assert_eq!(stored[0].backend_list(), "127.0.0.1:1, 127.0.0.1:2");
        assert_eq!(stored[0].health_check, None);
    }

    /// A change patches the live table (the routes it names are built, the rest kept):
    /// after a mix of adds, updates, renames, member edits and removals on a table of a few
    /// hundred routes, half of them wildcards, the live table lists and answers lookups as a
    /// table loaded afresh from the database does, and a route no change named is still the
    /// `RouteInfo` it was (its open connections see no new version).
    #[test]
    fn after_many_changes_the_live_table_is_what_the_database_loads() {
        let (control, dir) = control();
        let name = |i: usize| match i % 2 {
            0 => format!("r{i}.fill.test"),
            _ => format!("*.r{i}.fill.test"),
        };
        let fill = (0..300)
            .map(|i| Change::AddRoute {
                listener: L.into(),
                route: route(&name(i), &format!("127.0.0.1:{}", 1000 + i)),
            })
            .collect();
        control.apply(Change::Set(fill)).unwrap();
        let untouched = control.state().listeners()[0]
            .routes()
            .get("*.r299.fill.test");
        // A fixed pseudo-random walk over the first 250 routes (299 is never named).
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for j in 0..200 {
            let (i, port) = (next(250), 2000 + j);
            let change = match next(5) {
                0 => Change::AddRoute {
                    listener: L.into(),
                    route: route(&format!("new{j}.test"), &format!("127.0.0.1:{port}")),
                },
                1 => Change::RemoveRoute {
                    listener: L.into(),
                    hostname: name(i),
                },
                2 => Change::UpdateRoute {
                    listener: L.into(),
                    hostname: name(i),
                    patch: RoutePatch {
                        hostname: Some(format!("renamed{j}.{}", name(i))),
                        ..RoutePatch::default()
                    },
                },
                3 => Change::SetBackendState {
                    listener: L.into(),
                    hostname: name(i),
                    address: format!("127.0.0.1:{}", 1000 + i),
                    state: Some(AdminState::Draining),
                    weight: Some(3),
                },
                _ => Change::UpdateRoute {
                    listener: L.into(),
                    hostname: name(i),
                    patch: RoutePatch {
                        backends: Some(vec![RouteBackend::new(format!("127.0.0.1:{port}"))]),
                        ..RoutePatch::default()
                    },
                },
            };
            // A change naming a route an earlier one removed or renamed is refused, and a
            // refused change changes nothing: both tables must still agree.
            let _ = control.apply(change);
        }
        let db = dir.path().join("mc.db");
        let text = format!("[database]\npath = {:?}\n", db.display().to_string());
        let config = Config::parse(&dir.path().join("mc.toml"), &text).unwrap();
        let mut store = Store::open(&db).unwrap();
        let fresh = crate::control::boot::load_state(&config, &mut store).unwrap();
        let (live, fresh) = (
            control.state().listeners()[0].routes(),
            fresh.listeners()[0].routes(),
        );
        let listed = |t: &crate::model::routes::RouteTable| -> Vec<String> {
            t.iter()
                .map(|r| format!("{} {:?}", r.route.hostname, r.route.backends))
                .collect()
        };
        let (live_list, fresh_list) = (listed(&live), listed(&fresh));
        let only_live: Vec<_> = live_list
            .iter()
            .filter(|r| !fresh_list.contains(r))
            .collect();
        let only_fresh: Vec<_> = fresh_list
            .iter()
            .filter(|r| !live_list.contains(r))
            .collect();
        assert!(
            only_live.is_empty() && only_fresh.is_empty(),
            "live only: {only_live:?}; database only: {only_fresh:?}"
        );
        assert_eq!(live_list, fresh_list, "the same routes in another order");
        assert!(live.len() > 250, "{}", live.len());
        for i in 0..300 {
            for sni in [name(i).replace('*', "x"), format!("a.b.r{i}.fill.test")] {
                let found = |t: &crate::model::routes::RouteTable| {
                    t.lookup(&sni).map(|r| r.route.hostname.clone())
                };
                assert_eq!(found(&live), found(&fresh), "{sni}");
            }
        }
        let now = live.get("*.r299.fill.test");
        assert!(Arc::ptr_eq(
            untouched.as_ref().unwrap(),
            now.as_ref().unwrap()
        ));
    }
}
