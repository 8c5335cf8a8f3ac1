//! The node's half of the fleet: it keeps this node's routes, firewall and no-SNI routes equal
//! to the etcd prefix, and writes the fleet-wide changes asked of this node there.
//!
//! Read path: at start the node serves from SQLite at once; [`Cluster::run`] then reads the
//! whole prefix at a revision R, applies the differences through `control::apply`
//! ([`Change::Synced`]: the same step that writes SQLite and swaps the snapshot) and watches
//! from R+1. Every watched event is applied the same way, in revision order. A compacted
//! revision (the node was away too long) means a full read again, applied as a difference:
//! never a silent gap. A periodic full comparison proves the node and the store agree, and
//! repairs (and counts) any difference; a one-key read of the table's newest change every
//! 2 s tells how far behind the store the node is. Only events move the applied revision:
//! a watch response without events (the one creating it, etcd 3.4's progress answer) may
//! come before the events it claims are delivered.
//!
//! Write path: a fleet-wide change is checked by `apply` ([`FleetStore::write`] gets its
//! writes), sent as one etcd transaction that compares the revision of every object it
//! touches with the one this node applied, and answered once this node's watch has applied
//! it. A compare that fails means another change won: nothing was applied anywhere.
//!
//! The store away: writes fail within `request_timeout` naming the endpoints; the node keeps
//! serving its last applied state, reconnects with backoff (100 ms doubling to 5 s) and
//! resumes the watch from the revision after the last one it applied.
//!
//! Node registry: a key per node bound to a lease of `lease_ttl`, kept alive every third of
//! it, holding the node's name, version, listeners, addresses, applied revision and last
//! error; it disappears when the node does.
//!
//! Invariants: objects are applied in store order, and a version older than the one applied
//! for the same key is never applied over it (a resync and the watch can deliver the same
//! revisions twice). SQLite and the snapshot change only through `apply`. No lock is held
//! across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, WatchOptions,
};
use mc_proxy_shared::{FirewallRule, FirewallRuleKind, Route};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::doc::{self, DocOrigin, NoSniDoc, NodeDoc, RouteDoc, RuleDoc};
use super::keys::{Key, Keys};
use crate::control::apply::{
    Change, ChangeError, Control, FleetKey, FleetObjects, FleetOp, FleetStore, Synced,
};
use crate::model::cluster::{ClusterView, Link};
use crate::model::events::Caller;

/// The largest certificate or key file a route's PEM is read from.
const MAX_PEM: u64 = 1024 * 1024;
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the node reads the table's newest change (for "behind by N") and refreshes its registry
/// entry when its applied revision moved.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// A link that worked this long is retried at once when it breaks.
const STABLE_AFTER: Duration = Duration::from_secs(5);

/// What the sync needs to know of its node and store.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// The `[cluster]` settings: the node's name, the prefix, the endpoints, the timeouts, the
    /// lease and the comparison interval.
    pub config: super::settings::ClusterConfig,
    /// Where this node keeps the PEM files of the fleet's L7 routes.
    pub cert_dir: PathBuf,
    /// The admin socket path and the metrics address, for the registry.
    pub admin: String,
    /// See `admin`.
    pub metrics: String,
}

/// Opens a client to the store (the cluster's `client::connect` with its TLS and auth).
pub type Connector =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Client, String>> + Send>> + Send + Sync>;

/// A fleet-wide write waiting for the sync task: the writes, who asked, where to answer.
struct WriteJob {
    ops: Vec<FleetOp>,
    by: String,
    reply: std::sync::mpsc::SyncSender<Result<(), ChangeError>>,
}

/// The node's link to the fleet's store (see the module docs).
pub struct Cluster {
    settings: SyncSettings,
    keys: Keys,
    control: Arc<Control>,
    /// Every key of the prefix this node has applied, with its store revision.
    mirror: Mutex<HashMap<String, i64>>,
    /// The store revision applied here.
    applied: watch::Sender<i64>,
    /// The newest revision of the table (routes, rules, no-SNI routes) applied here: what the
    /// registry entry says, so that nodes holding the same table show the same number.
    table: std::sync::atomic::AtomicI64,
    /// The table revision last written to the database (`cluster_state`).
    persisted: std::sync::atomic::AtomicI64,
    /// The connected client, `None` while the store is away.
    client: Mutex<Option<Client>>,
    /// What status, metrics and the console show.
    view: Mutex<ClusterView>,
    writes: mpsc::UnboundedSender<WriteJob>,
    jobs: Mutex<Option<mpsc::UnboundedReceiver<WriteJob>>>,
    /// The write tasks in flight: each ends within its request timeouts, and `run` waits
    /// for them before it returns.
    in_flight: tokio_util::task::TaskTracker,
    started_ms: u64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.settings.config.name)
            .field("prefix", &self.settings.config.prefix)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// What the store holds under the prefix, decoded.
#[derive(Debug, Default)]
struct Desired {
    routes: BTreeMap<(String, String), RouteDoc>,
    rules: BTreeMap<String, RuleDoc>,
    no_sni: BTreeMap<String, NoSniDoc>,
    seeded: bool,
}

impl Cluster {
    /// The link for `control`'s node; nothing runs until [`Cluster::run`]. Makes `control`
    /// send fleet-wide changes here.
    pub fn new(settings: SyncSettings, control: Arc<Control>) -> Arc<Cluster> {
        let (writes, jobs) = mpsc::unbounded_channel();
        let view = ClusterView {
            node: settings.config.name.clone(),
            endpoints: settings.config.endpoints.clone(),
            prefix: settings.config.prefix.clone(),
            link: Link::Connecting,
            since: SystemTime::now(),
            applied: 0,
            store_revision: 0,
            last_error: String::new(),
            drift_repaired: 0,
        };
        control.state().set_cluster(view.clone());
        control.state().set_node(&settings.config.name);
        let cluster = Arc::new(Cluster {
            keys: Keys::new(&settings.config.prefix),
            settings,
            control: Arc::clone(&control),
            mirror: Mutex::new(HashMap::new()),
            applied: watch::Sender::new(0),
            table: std::sync::atomic::AtomicI64::new(0),
            persisted: std::sync::atomic::AtomicI64::new(0),
            client: Mutex::new(None),
            view: Mutex::new(view),
            writes,
            jobs: Mutex::new(Some(jobs)),
            in_flight: tokio_util::task::TaskTracker::new(),
            started_ms: now_ms(),
        });
        control.set_fleet(Arc::clone(&cluster) as Arc<dyn FleetStore>);
        cluster
    }

    /// This node's view of the link (what status shows).
    pub fn view(&self) -> ClusterView {
        lock(&self.view).clone()
    }

    fn update_view(&self, edit: impl FnOnce(&mut ClusterView)) {
        let view = {
            let mut view = lock(&self.view);
            edit(&mut view);
            view.clone()
        };
        self.control.state().set_cluster(view);
    }

    fn set_link(&self, link: Link, error: Option<String>) {
        let mut changed = false;
        self.update_view(|v| {
            if v.link != link {
                v.link = link;
                v.since = SystemTime::now();
                changed = true;
            }
            if let Some(e) = error {
                v.last_error = e;
            }
        });
        if changed {
            let view = self.view();
            self.control
                .state()
                .events
                .publish(|| crate::model::events::Event::ClusterLink(view));
        }
    }

    fn endpoints(&self) -> String {
        super::client::endpoints_text(&self.settings.config.endpoints)
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> ChangeError {
        ChangeError::Unavailable(format!(
            "cluster store unreachable ({}): {why}; nothing applied, this node keeps serving \
             its last state",
            self.endpoints()
        ))
    }

    /// One store request, tried again on another member while the connection it went out
    /// on broke, all within `request_timeout` (`client::call`).
    async fn etcd<T, Fut>(
        &self,
        client: &Client,
        request: impl Fn(Client) -> Fut,
    ) -> Result<T, super::client::ClusterError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        super::client::call(&self.settings.config, || request(client.clone())).await
    }

    /// The nodes registered in the store now (each node's registry entry).
    pub async fn nodes(&self) -> Result<Vec<NodeDoc>, ChangeError> {
        let Some(client) = lock(&self.client).clone() else {
            return Err(self.unavailable("not connected"));
        };
        let key = self.keys.nodes();
        let resp = self
            .etcd(&client, |mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_prefix())).await }
            })
            .await
            .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        let mut nodes: Vec<NodeDoc> = resp
            .kvs()
            .iter()
            .filter_map(|kv| doc::decode(kv.value()).ok())
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    /// Keeps the node in step with the store until `shutdown` (see the module docs), then
    /// waits for the writes in flight (each bounded by its request timeouts).
    pub async fn run(self: Arc<Self>, connect: Connector, shutdown: CancellationToken) {
        Arc::clone(&self).follow(connect, shutdown).await;
        self.in_flight.close();
        self.in_flight.wait().await;
    }

    /// [`Cluster::run`] up to shutdown.
    async fn follow(self: Arc<Self>, connect: Connector, shutdown: CancellationToken) {
        let Some(mut jobs) = lock(&self.jobs).take() else {
            return;
        };
        // Writes asked while (re)connecting wait for the link, up to their request timeout:
        // a member lost costs a reconnection, not a refused write.
        let mut waiting: Vec<(tokio::time::Instant, WriteJob)> = Vec::new();
        let mut backoff = Duration::ZERO;
        let mut resume: Option<i64> = None;
        loop {
            if !backoff.is_zero() {
                let pause = tokio::time::sleep(backoff);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = &mut pause => break,
                        Some(job) = jobs.recv() => waiting.push((tokio::time::Instant::now(), job)),
                    }
                    self.expire(&mut waiting);
                }
            }
            let connecting = connect();
            tokio::pin!(connecting);
            let connected = loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    c = &mut connecting => break c,
                    Some(job) = jobs.recv() => waiting.push((tokio::time::Instant::now(), job)),
                }
                self.expire(&mut waiting);
            };
            self.expire(&mut waiting);
            let outcome: Result<(), String> = match connected {
                Ok(client) => {
                    *lock(&self.client) = Some(client.clone());
                    let began = tokio::time::Instant::now();
                    let outcome = self
                        .session(client, &mut resume, &mut jobs, &mut waiting, &shutdown)
                        .await;
                    *lock(&self.client) = None;
                    match outcome {
                        Ok(()) => return,
                        // A link that worked a while is tried again at once (the client
                        // picks another member); one that keeps failing, with backoff.
                        Err(e) => {
                            backoff = if began.elapsed() > STABLE_AFTER {
                                Duration::ZERO
                            } else {
                                (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
                            };
                            Err(e)
                        }
                    }
                }
                Err(e) => {
                    backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                    Err(e)
                }
            };
            if let Err(e) = outcome {
                let was = lock(&self.view).link.clone();
                if was == Link::Connected {
                    tracing::warn!(endpoints = %self.endpoints(), "cluster store link lost: {e}; reconnecting, serving the last applied state");
                    self.set_link(Link::Disconnected, Some(e));
                } else if backoff >= BACKOFF_MIN {
                    // Not back after a retry: the store is away.
                    if was != Link::Disconnected {
                        tracing::warn!(endpoints = %self.endpoints(), "cluster store unreachable: {e}; serving the last applied state");
                    }
                    self.set_link(Link::Disconnected, Some(e));
                }
            }
        }
    }

    /// Refuses the waiting writes whose request timeout has passed.
    fn expire(&self, waiting: &mut Vec<(tokio::time::Instant, WriteJob)>) {
        let timeout = self.settings.config.request_timeout;
        waiting.retain(|(since, job)| {
            if since.elapsed() < timeout {
                return true;
            }
            let _ = job.reply.send(Err(
                self.unavailable(format!("not connected within {timeout:?}"))
            ));
            false
        });
    }

    /// One connection's life: load (or resume), register, watch, write. `Ok` on shutdown.
    async fn session(
        self: &Arc<Self>,
        mut client: Client,
        resume: &mut Option<i64>,
        jobs: &mut mpsc::UnboundedReceiver<WriteJob>,
        waiting: &mut Vec<(tokio::time::Instant, WriteJob)>,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let mut start = match *resume {
            Some(applied) => applied + 1,
            None => self.load(&mut client, false).await? + 1,
        };
        // Linked again: the link's error is history (the registry entry says so too).
        self.update_view(|v| v.last_error.clear());
        tracing::debug!("cluster store: registering");
        let lease = self.register(&mut client).await?;
        // Linked again: the writes that waited go out (they stay waiting if this fails).
        for (_, job) in waiting.drain(..) {
            self.spawn_write(&client, job);
        }
        let (mut keeper, mut kept) = self
            .etcd(
                &client,
                |mut c| async move { c.lease_keep_alive(lease).await },
            )
            .await
            .map_err(|e| format!("lease keep-alive: {e}"))?;
        let mut keep_alive = tokio::time::interval(self.settings.config.lease_ttl / 3);
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        let mut resync = tokio::time::interval(self.settings.config.check_interval);
        resync.reset();
        let mut registered_at = self.table_revision();
        'watch: loop {
            tracing::debug!(from = start, "cluster store: opening the watch");
            let root = self.keys.root().to_owned();
            let (_requests, mut stream) = self
                .etcd(&client, |mut c| {
                    let root = root.clone();
                    async move {
                        c.watch(
                            root,
                            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
                        )
                        .await
                    }
                })
                .await
                .map_err(|e| format!("watch: {e}"))?
                .split();
            if lock(&self.view).link != Link::Connected {
                tracing::info!(endpoints = %self.endpoints(), from = start, "cluster store connected, watching");
            }
            self.set_link(Link::Connected, Some(String::new()));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
                        return Ok(());
                    }
                    message = stream.message() => {
                        let resp = match message {
                            Ok(Some(resp)) => resp,
                            Ok(None) => return Err("the watch ended".into()),
                            Err(e) => return Err(format!("watch: {e}")),
                        };
                        if resp.compact_revision() > 0 || resp.canceled() {
                            tracing::warn!(compacted = resp.compact_revision(), "the store compacted revisions this node had not applied: full resync");
                            start = self.load(&mut client, false).await? + 1;
                            *resume = Some(start - 1);
                            // The old watch ends when its stream is dropped.
                            continue 'watch;
                        }
                                                // Only events move the applied revision. A response without events
                        // proves nothing: the one that creates the watch, and etcd 3.4's answer
                        // to a progress request, carry the store's revision now while events
                        // from the start revision may still be on their way (taking them for
                        // progress made a reconnected node skip a route: the quorum test).
                        self.apply_watched(&resp).await;
                        let applied = *self.applied.borrow();
                        *resume = Some(applied);
                        self.update_view(|v| v.applied = applied);
                    }
                    Some(job) = jobs.recv() => self.spawn_write(&client, job),
                    _ = keep_alive.tick() => {
                        keeper.keep_alive().await.map_err(|e| format!("lease keep-alive: {e}"))?;
                    }
                    kept = kept.message() => {
                        match kept {
                            Ok(Some(resp)) if resp.ttl() > 0 => {}
                            Ok(_) => return Err("the registry lease expired".into()),
                            Err(e) => return Err(format!("lease keep-alive: {e}")),
                        }
                    }
                                        _ = progress.tick() => {
                        // How far the table is: its newest change's revision (every change
                        // writes `last-change`), for "behind by N".
                        let newest = self.newest_change(&client).await?;
                        self.update_view(|v| v.store_revision = newest);
                                                // Rewritten only when the table moved: registry writes are not
                        // table changes, so nodes do not keep each other rewriting.
                        let table = self.table_revision();
                        if table != registered_at {
                            registered_at = table;
                            self.put_registry(&mut client, lease).await?;
                        }
                    }
                    _ = resync.tick() => {
                        // Proof that node and store agree: the whole prefix compared.
                        self.load(&mut client, true).await?;
                    }
                }
            }
        }
    }

    /// Writes the table revision to the database when it moved: the database is the node's
    /// persisted copy of the fleet's table, and says which revision it reflects.
    async fn persist(&self) {
        use std::sync::atomic::Ordering;
        let table = self.table_revision();
        if table <= self.persisted.load(Ordering::Relaxed) {
            return;
        }
        let control = Arc::clone(&self.control);
        let prefix = self.settings.config.prefix.clone();
        let written =
            tokio::task::spawn_blocking(move || control.set_cluster_revision(&prefix, table)).await;
        match written {
            Ok(Ok(())) => self.persisted.fetch_max(table, Ordering::Relaxed),
            Ok(Err(e)) => {
                tracing::error!("recording the cluster revision in the database: {e}");
                0
            }
            Err(e) => {
                tracing::error!("recording the cluster revision in the database: {e}");
                0
            }
        };
    }

    /// The newest table revision applied here.
    fn table_revision(&self) -> i64 {
        self.table.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The revision of the table's newest change: the prefix's highest mod revision.
    async fn newest_change(&self, client: &Client) -> Result<i64, String> {
        let root = self.keys.root().to_owned();
        let resp = self
            .etcd(client, |mut c| {
                let root = root.clone();
                async move {
                    c.get(
                        root,
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_sort(SortTarget::Mod, SortOrder::Descend)
                                .with_limit(1)
                                .with_keys_only(),
                        ),
                    )
                    .await
                }
            })
            .await
            .map_err(|e| format!("reading the newest change: {e}"))?;
        Ok(resp.kvs().first().map_or(0, |kv| kv.mod_revision()))
    }

    /// Runs one fleet-wide write on its own task (writes do not wait for each other).
    fn spawn_write(self: &Arc<Self>, client: &Client, job: WriteJob) {
        let me = Arc::clone(self);
        let client = client.clone();
        self.in_flight.spawn(async move {
            let result = me.write_job(client, job.ops, &job.by).await;
            let _ = job.reply.send(result);
        });
    }

    /// Reads the whole prefix, seeds it first if it was never seeded, and applies what this
    /// node has different. Returns the revision read. `check`: a periodic comparison, whose
    /// differences are counted as drift.
    async fn load(&self, client: &mut Client, check: bool) -> Result<i64, String> {
        self.load_or_seed(client, check, true).await
    }

    /// [`Cluster::load`]; `seed`: an empty prefix is seeded from this node (else an error).
    async fn load_or_seed(
        &self,
        client: &mut Client,
        check: bool,
        seed: bool,
    ) -> Result<i64, String> {
        loop {
            let root = self.keys.root().to_owned();
            let resp = self
                .etcd(client, |mut c| {
                    let root = root.clone();
                    async move { c.get(root, Some(GetOptions::new().with_prefix())).await }
                })
                .await
                .map_err(|e| format!("reading the prefix: {e}"))?;
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            let mut desired = Desired::default();
            let mut mirror = HashMap::new();
            for kv in resp.kvs() {
                let Ok(key) = kv.key_str() else { continue };
                let Some(parsed) = self.keys.parse(key) else {
                    continue;
                };
                let decoded = match &parsed {
                    Key::Route { listener, hostname } => {
                        doc::decode::<RouteDoc>(kv.value()).map(|d| {
                            desired
                                .routes
                                .insert((listener.clone(), hostname.clone()), d);
                        })
                    }
                    Key::Rule(rule) => doc::decode::<RuleDoc>(kv.value()).map(|d| {
                        desired.rules.insert(rule.clone(), d);
                    }),
                    Key::NoSni { listener } => doc::decode::<NoSniDoc>(kv.value()).map(|d| {
                        desired.no_sni.insert(listener.clone(), d);
                    }),
                    Key::Seeded => {
                        desired.seeded = true;
                        Ok(())
                    }
                    Key::LastChange => continue,
                };
                match decoded {
                    Ok(()) => {
                        mirror.insert(key.to_owned(), kv.mod_revision());
                        self.table
                            .fetch_max(kv.mod_revision(), std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::error!(key = %mc_proxy_shared::text::clip(key), "cluster value does not decode, skipped: {e}")
                    }
                }
            }
            if !desired.seeded {
                if !seed {
                    return Err(format!(
                        "the prefix {} holds no route table (no node seeded it)",
                        self.settings.config.prefix
                    ));
                }
                if self.seed(client).await? {
                    continue;
                }
                // Another node seeded it first: read what it wrote.
                continue;
            }
            let objects = self.local_objects().await?;
            // Comparing reads this node's PEM files: on a blocking thread.
            let batch = tokio::task::spawn_blocking(move || differences(&desired, &objects))
                .await
                .map_err(|e| format!("comparing with the store: {e}"))?;
            let n = batch.len();
            if n > 0 {
                if !check {
                    tracing::info!(
                        objects = n,
                        revision,
                        "cluster store read: applying what differs"
                    );
                }
                self.apply_batch(batch).await;
                // Counted once repaired, so whoever sees the count sees the repair.
                if check {
                    tracing::warn!(
                        objects = n,
                        "this node had drifted from the cluster store: repaired"
                    );
                    self.update_view(|v| v.drift_repaired += n as u64);
                }
            }
            *lock(&self.mirror) = mirror;
            self.applied.send_if_modified(|a| {
                let moved = revision > *a;
                *a = (*a).max(revision);
                moved
            });
            self.update_view(|v| {
                v.applied = v.applied.max(revision);
                v.store_revision = v.store_revision.max(revision);
            });
            self.persist().await;
            return Ok(revision);
        }
    }

    /// This node's table as the store's keys and values, each written by `origin`: what a
    /// seed and an import write.
    async fn table_values(
        &self,
        objects: FleetObjects,
        origin: &DocOrigin,
    ) -> Result<(FleetObjects, Vec<(String, Vec<u8>)>), String> {
        // The routes' PEM files are read on a blocking thread.
        let (keys, origin) = (self.keys.clone(), origin.clone());
        tokio::task::spawn_blocking(move || {
            let values = table_values(&keys, &objects, &origin)?;
            Ok((objects, values))
        })
        .await
        .map_err(|e| format!("reading the routes' certificates: {e}"))?
    }

    /// Seeds an empty prefix from this node's database, guarded so that only one node does.
    /// Returns whether this node's seed won (either way the caller reads the prefix again).
    async fn seed(&self, client: &mut Client) -> Result<bool, String> {
        let objects = self.local_objects().await?;
        let origin = DocOrigin {
            node: self.settings.config.name.clone(),
            by: "seed".into(),
        };
        let mut ops = vec![TxnOp::put(self.keys.seeded(), doc::encode(&origin), None)];
        let (objects, values) = self.table_values(objects, &origin).await?;
        for (key, value) in values {
            ops.push(TxnOp::put(key, value, None));
        }
        // etcd takes at most 128 operations per transaction by default: a larger seed goes
        // in after the guard, in chunks (the guard alone decides who seeds).
        let rest = if ops.len() > 100 {
            ops.split_off(100)
        } else {
            Vec::new()
        };
        let txn = Txn::new()
            .when(vec![Compare::version(
                self.keys.seeded(),
                CompareOp::Equal,
                0,
            )])
            .and_then(ops);
        let resp = self
            .etcd(client, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| format!("seeding: {e}"))?;
        if !resp.succeeded() {
            return Ok(false);
        }
        for chunk in rest.chunks(100) {
            self.etcd(client, |mut c| {
                let txn = Txn::new().and_then(chunk.to_vec());
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| format!("seeding: {e}"))?;
        }
        tracing::info!(
            routes = objects.routes.len(),
            rules = objects.rules.len(),
            "seeded the empty cluster store from this node's database"
        );
        Ok(true)
    }

    /// This node's objects, read from its database on a blocking thread.
    async fn local_objects(&self) -> Result<FleetObjects, String> {
        let control = Arc::clone(&self.control);
        tokio::task::spawn_blocking(move || control.fleet_objects())
            .await
            .map_err(|e| format!("reading the database: {e}"))?
            .map_err(|e| e.to_string())
    }

    /// Applies the watched events of one response, in order, skipping versions older than
    /// the one applied for the same key.
    async fn apply_watched(&self, resp: &etcd_client::WatchResponse) {
        let mut batch = Vec::new();
        let mut newest = 0;
        // Who made each revision's change (a deletion carries no value to say it): the
        // `last-change` key its transaction wrote, delivered in the same response.
        let mut made_by: HashMap<i64, DocOrigin> = HashMap::new();
        for event in resp.events() {
            if let Some(kv) = event.kv()
                && kv.key_str().ok().and_then(|k| self.keys.parse(k)) == Some(Key::LastChange)
                && let Ok(origin) = doc::decode::<DocOrigin>(kv.value())
            {
                made_by.insert(kv.mod_revision(), origin);
            }
        }
        let deleted_by = |revision: i64| made_by.get(&revision).cloned().unwrap_or_default();
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            newest = newest.max(revision);
            let Ok(key) = kv.key_str() else { continue };
            let Some(parsed) = self.keys.parse(key) else {
                continue;
            };
            self.table
                .fetch_max(revision, std::sync::atomic::Ordering::Relaxed);
            {
                let mut mirror = lock(&self.mirror);
                if mirror.get(key).is_some_and(|known| *known >= revision) {
                    continue;
                }
                match event.event_type() {
                    EventType::Put => mirror.insert(key.to_owned(), revision),
                    EventType::Delete => mirror.remove(key),
                };
            }
            let put = event.event_type() == EventType::Put;
            let ready = |synced: Synced, origin: DocOrigin| Some((Pending::Ready(synced), origin));
            let item = match (parsed, put) {
                (Key::Route { listener, .. }, true) => match doc::decode::<RouteDoc>(kv.value()) {
                    Ok(doc) => {
                        let origin = doc.origin.clone();
                        Some((Pending::Route { listener, doc }, origin))
                    }
                    Err(e) => {
                        tracing::error!(key, "cluster route does not decode, skipped: {e}");
                        None
                    }
                },
                (Key::Route { listener, hostname }, false) => ready(
                    Synced::DeleteRoute { listener, hostname },
                    deleted_by(revision),
                ),
                (Key::Rule(_), true) => match doc::decode::<RuleDoc>(kv.value()) {
                    Ok(doc) => ready(Synced::PutRule(doc.rule), doc.origin),
                    Err(e) => {
                        tracing::error!(key, "cluster rule does not decode, skipped: {e}");
                        None
                    }
                },
                (Key::Rule(value), false) => ready(
                    Synced::DeleteRule(FirewallRule {
                        kind: FirewallRuleKind::of(&value),
                        value,
                    }),
                    deleted_by(revision),
                ),
                (Key::NoSni { listener }, true) => match doc::decode::<NoSniDoc>(kv.value()) {
                    Ok(doc) => ready(
                        Synced::NoSni {
                            listener,
                            hostname: doc.hostname,
                        },
                        doc.origin,
                    ),
                    Err(e) => {
                        tracing::error!(key, "cluster no-SNI route does not decode, skipped: {e}");
                        None
                    }
                },
                (Key::NoSni { listener }, false) => ready(
                    Synced::NoSni {
                        listener,
                        hostname: None,
                    },
                    deleted_by(revision),
                ),
                (Key::Seeded | Key::LastChange, _) => None,
            };
            batch.extend(item);
        }
        if !batch.is_empty() {
            self.apply_batch(batch).await;
        }
        if newest > 0 {
            self.applied.send_if_modified(|a| {
                let moved = newest > *a;
                *a = (*a).max(newest);
                moved
            });
        }
        self.persist().await;
    }

    /// Applies `batch` through `control::apply`, one change per origin run (events name who
    /// made them), on a blocking thread.
    async fn apply_batch(&self, batch: Vec<(Pending, DocOrigin)>) {
        let control = Arc::clone(&self.control);
        let node = self.settings.config.name.clone();
        let cert_dir = self.settings.cert_dir.clone();
        let failed = tokio::task::spawn_blocking(move || {
            let mut failed = Vec::new();
            // A route's PEM files first (here, off the runtime), then one change per run of
            // the same origin.
            let mut runs: Vec<(DocOrigin, Vec<Synced>)> = Vec::new();
            for (pending, origin) in batch {
                let synced = match pending {
                    Pending::Ready(synced) => synced,
                    Pending::Route { listener, doc } => {
                        match to_synced(&cert_dir, &listener, doc) {
                            Ok(synced) => synced,
                            Err(e) => {
                                failed.push(e);
                                continue;
                            }
                        }
                    }
                };
                match runs.last_mut() {
                    Some((o, items)) if *o == origin => items.push(synced),
                    _ => runs.push((origin, vec![synced])),
                }
            }
            for (origin, items) in runs {
                let caller = Caller::Node {
                    node: if origin.node.is_empty() {
                        node.clone()
                    } else {
                        origin.node
                    },
                    by: if origin.by.is_empty() {
                        "cluster resync".into()
                    } else {
                        origin.by
                    },
                };
                if let Err(e) = control.apply_by(Change::Synced(items), caller) {
                    failed.push(e.to_string());
                }
            }
            failed
        })
        .await
        .unwrap_or_else(|e| vec![format!("applying cluster changes: {e}")]);
        if let Some(e) = failed.last() {
            tracing::error!("cluster change not applied on this node: {e}");
            self.update_view(|v| v.last_error = e.clone());
        }
    }

    /// Grants this node's lease and writes its registry entry under it.
    async fn register(&self, client: &mut Client) -> Result<i64, String> {
        let ttl = self.settings.config.lease_ttl.as_secs().max(1) as i64;
        let lease = self
            .etcd(
                client,
                |mut c| async move { c.lease_grant(ttl, None).await },
            )
            .await
            .map_err(|e| format!("lease grant: {e}"))?
            .id();
        self.put_registry(client, lease).await?;
        Ok(lease)
    }

    /// Writes this node's registry entry.
    async fn put_registry(&self, client: &mut Client, lease: i64) -> Result<(), String> {
        let view = self.view();
        let listeners = self
            .control
            .state()
            .listeners()
            .iter()
            .map(|l| {
                let name = crate::control::apply::fleet_name(l);
                format!("{name}={}", l.addr)
            })
            .collect();
        let entry = NodeDoc {
            name: self.settings.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            listeners,
            admin: self.settings.admin.clone(),
            metrics: self.settings.metrics.clone(),
            applied_revision: self.table_revision(),
            last_error: view.last_error,
            started_ms: self.started_ms,
        };
        let (key, value) = (
            self.keys.node(&self.settings.config.name),
            doc::encode(&entry),
        );
        self.etcd(client, |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await
        .map_err(|e| format!("registry write: {e}"))?;
        Ok(())
    }

    /// One fleet-wide write: the transaction, then the wait for this node's watch.
    async fn write_job(
        &self,
        client: Client,
        ops: Vec<FleetOp>,
        by: &str,
    ) -> Result<(), ChangeError> {
        let origin = DocOrigin {
            node: self.settings.config.name.clone(),
            by: by.to_owned(),
        };
        let mut compares = Vec::new();
        let mut writes = Vec::new();
        let expect = |key: &str, expect: Option<i64>| match expect {
            None => Compare::version(key, CompareOp::Equal, 0),
            Some(revision) => Compare::mod_revision(key, CompareOp::Equal, revision),
        };
        for op in ops {
            match op {
                FleetOp::PutRoute {
                    listener,
                    route,
                    expect: at,
                } => {
                    let key = self.keys.route(&listener, &route.hostname);
                    // The operator's PEM files, read off the runtime.
                    let origin = origin.clone();
                    let doc = tokio::task::spawn_blocking(move || route_doc(route, &origin))
                        .await
                        .map_err(|e| ChangeError::Internal(e.to_string()))??;
                    compares.push(expect(&key, at));
                    writes.push(TxnOp::put(key, doc::encode(&doc), None));
                }
                FleetOp::DeleteRoute {
                    listener,
                    hostname,
                    expect: at,
                } => {
                    let key = self.keys.route(&listener, &hostname);
                    compares.push(expect(&key, Some(at)));
                    writes.push(TxnOp::delete(key, None));
                }
                FleetOp::PutRule { rule } => {
                    let key = self.keys.rule(&rule.value);
                    compares.push(expect(&key, None));
                    let doc = RuleDoc {
                        rule,
                        origin: origin.clone(),
                    };
                    writes.push(TxnOp::put(key, doc::encode(&doc), None));
                }
                FleetOp::DeleteRule { rule, expect: at } => {
                    let key = self.keys.rule(&rule.value);
                    compares.push(expect(&key, Some(at)));
                    writes.push(TxnOp::delete(key, None));
                }
                FleetOp::PutNoSni {
                    listener,
                    hostname,
                    expect: at,
                } => {
                    let key = self.keys.no_sni(&listener);
                    compares.push(expect(&key, at));
                    let doc = NoSniDoc {
                        hostname,
                        origin: origin.clone(),
                    };
                    writes.push(TxnOp::put(key, doc::encode(&doc), None));
                }
            }
        }
        writes.push(TxnOp::put(
            self.keys.last_change(),
            doc::encode(&origin),
            None,
        ));
        let txn = Txn::new().when(compares).and_then(writes);
        let resp = self
            .etcd(&client, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(write_failed)?;
        if !resp.succeeded() {
            return Err(ChangeError::Conflict(
                "changed concurrently on another node, nothing applied: list and retry".into(),
            ));
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let mut applied = self.applied.subscribe();
        let waited = tokio::time::timeout(
            self.settings.config.request_timeout,
            applied.wait_for(|a| *a >= revision),
        )
        .await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ChangeError::Unavailable(format!(
                "stored in the cluster at revision {revision}, but this node has not applied it \
                 within {:?}: it will when its watch catches up (check with mcproxyctl cluster status)",
                self.settings.config.request_timeout
            ))),
        }
    }
}

/// `mc-proxy cluster import|export`: a node's database moved into the fleet's store and back,
/// with no daemon running on it.
impl Cluster {
    /// Writes this node's routes, firewall rules and no-SNI routes into the prefix and marks
    /// it seeded. Refused when the prefix already holds a table, unless `replace`, which also
    /// deletes what the prefix holds and this node does not. Written in transactions of at
    /// most 100 objects, the guard first. Returns a summary line.
    pub async fn import_local(&self, replace: bool) -> Result<String, String> {
        let client = super::client::connect(&self.settings.config)
            .await
            .map_err(|e| e.to_string())?;
        let root = self.keys.root().to_owned();
        let resp = self
            .etcd(&client, |mut c| {
                let root = root.clone();
                async move { c.get(root, Some(GetOptions::new().with_prefix())).await }
            })
            .await
            .map_err(|e| format!("reading the prefix: {e}"))?;
        let present: Vec<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok().map(str::to_owned))
            .filter(|k| {
                matches!(
                    self.keys.parse(k),
                    Some(Key::Route { .. } | Key::Rule(_) | Key::NoSni { .. } | Key::Seeded)
                )
            })
            .collect();
        if !present.is_empty() && !replace {
            return Err(format!(
                "the prefix {} already holds a route table ({} keys): give --replace to \
                 overwrite it with this node's",
                self.settings.config.prefix,
                present.len()
            ));
        }
        let objects = self.local_objects().await?;
        let origin = DocOrigin {
            node: self.settings.config.name.clone(),
            by: "mc-proxy cluster import".into(),
        };
        let mut ops = vec![TxnOp::put(self.keys.seeded(), doc::encode(&origin), None)];
        let mut written = std::collections::HashSet::new();
        written.insert(self.keys.seeded());
        let (objects, values) = self.table_values(objects, &origin).await?;
        for (key, value) in values {
            written.insert(key.clone());
            ops.push(TxnOp::put(key, value, None));
        }
        let stale: Vec<&String> = present.iter().filter(|k| !written.contains(*k)).collect();
        for key in &stale {
            ops.push(TxnOp::delete(key.as_str(), None));
        }
        ops.push(TxnOp::put(
            self.keys.last_change(),
            doc::encode(&origin),
            None,
        ));
        for chunk in ops.chunks(100) {
            self.etcd(&client, |mut c| {
                let txn = Txn::new().and_then(chunk.to_vec());
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| format!("writing the prefix: {e}"))?;
        }
        Ok(format!(
            "imported {} route(s), {} firewall rule(s) and {} listener setting(s) into {} \
             (prefix {}){}",
            objects.routes.len(),
            objects.rules.len(),
            objects.no_sni.len(),
            self.endpoints(),
            self.settings.config.prefix,
            if stale.is_empty() {
                String::new()
            } else {
                format!("; {} object(s) of the previous table deleted", stale.len())
            }
        ))
    }

    /// Makes this node's database hold what the prefix holds (routes, firewall rules, no-SNI
    /// routes), as a node joining would, so it can run on alone. Returns a summary line.
    pub async fn export_to_local(&self) -> Result<String, String> {
        let mut client = super::client::connect(&self.settings.config)
            .await
            .map_err(|e| e.to_string())?;
        let revision = self.load_or_seed(&mut client, false, false).await?;
        let error = self.view().last_error;
        if !error.is_empty() {
            return Err(format!("not everything applied: {error}"));
        }
        Ok(format!(
            "the database now holds the table of {} (prefix {}) at revision {revision}",
            self.endpoints(),
            self.settings.config.prefix
        ))
    }
}

impl FleetStore for Cluster {
    fn revision_of(&self, key: &FleetKey) -> Option<i64> {
        let key = match key {
            FleetKey::Route { listener, hostname } => self.keys.route(listener, hostname),
            FleetKey::Rule(rule) => self.keys.rule(rule),
            FleetKey::NoSni { listener } => self.keys.no_sni(listener),
        };
        lock(&self.mirror).get(&key).copied()
    }

    fn nodes(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<NodeDoc>, ChangeError>> + Send + '_>> {
        Box::pin(Cluster::nodes(self))
    }

    fn write(&self, ops: Vec<FleetOp>, by: &str) -> Result<(), ChangeError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.writes
            .send(WriteJob {
                ops,
                by: by.to_owned(),
                reply,
            })
            .map_err(|_| self.unavailable("the cluster sync has stopped"))?;
        // The job answers within two request timeouts (the write, the wait to apply it).
        answer
            .recv_timeout(self.settings.config.request_timeout * 2 + Duration::from_secs(1))
            .map_err(|_| self.unavailable("no answer from the cluster sync"))?
    }
}

/// A change of the batch being applied: ready, or a route whose PEM files are still to be
/// written (on the blocking thread that applies the batch, never on the runtime's).
#[derive(Debug)]
enum Pending {
    /// Applied as it is.
    Ready(Synced),
    /// A route of the fleet with its certificate as PEM.
    Route {
        /// The listener's name.
        listener: String,
        /// The route as the store holds it.
        doc: RouteDoc,
    },
}

/// What must be applied here for this node to hold what the store holds.
fn differences(desired: &Desired, objects: &FleetObjects) -> Vec<(Pending, DocOrigin)> {
    let mut batch = Vec::new();
    let local: HashMap<(String, String), &Route> = objects
        .routes
        .iter()
        .map(|(l, r)| ((l.clone(), r.hostname.clone()), r))
        .collect();
    for ((listener, hostname), want) in &desired.routes {
        let same = local
            .get(&(listener.clone(), hostname.clone()))
            .and_then(|have| route_doc((*have).clone(), &DocOrigin::default()).ok())
            .is_some_and(|have| have.same_content(want));
        if !same {
            batch.push((
                Pending::Route {
                    listener: listener.clone(),
                    doc: want.clone(),
                },
                want.origin.clone(),
            ));
        }
    }
    let listeners: Vec<&String> = objects.no_sni.iter().map(|(l, _)| l).collect();
    for (listener, hostname) in local.keys() {
        if !desired
            .routes
            .contains_key(&(listener.clone(), hostname.clone()))
        {
            batch.push((
                Pending::Ready(Synced::DeleteRoute {
                    listener: listener.clone(),
                    hostname: hostname.clone(),
                }),
                DocOrigin::default(),
            ));
        }
    }
    for (value, want) in &desired.rules {
        if !objects.rules.iter().any(|r| &r.value == value) {
            batch.push((
                Pending::Ready(Synced::PutRule(want.rule.clone())),
                want.origin.clone(),
            ));
        }
    }
    for rule in &objects.rules {
        if !desired.rules.contains_key(&rule.value) {
            batch.push((
                Pending::Ready(Synced::DeleteRule(rule.clone())),
                DocOrigin::default(),
            ));
        }
    }
    for (listener, have) in &objects.no_sni {
        let want = desired.no_sni.get(listener);
        let want_host = want.and_then(|d| d.hostname.clone());
        if *have != want_host {
            batch.push((
                Pending::Ready(Synced::NoSni {
                    listener: listener.clone(),
                    hostname: want_host,
                }),
                want.map(|d| d.origin.clone()).unwrap_or_default(),
            ));
        }
    }
    // Routes of listeners this node does not have stay unapplied (named once).
    for (listener, hostname) in desired.routes.keys() {
        if !listeners.contains(&listener) {
            tracing::debug!(listener = %listener, route = %hostname, "cluster route for a listener this node does not have: not served here");
        }
    }
    batch.retain(|(s, _)| match s {
        Pending::Route { listener, .. } | Pending::Ready(Synced::NoSni { listener, .. }) => {
            listeners.contains(&listener)
        }
        Pending::Ready(_) => true,
    });
    batch
}

/// A route's store document: every field, its PEM instead of its paths.
fn route_doc(mut route: Route, origin: &DocOrigin) -> Result<RouteDoc, ChangeError> {
    let (mut cert_pem, mut key_pem) = (String::new(), String::new());
    if !route.tls_cert.is_empty() {
        cert_pem = read_pem(Path::new(&route.tls_cert))?;
        key_pem = read_pem(Path::new(&route.tls_key))?;
    }
    route.tls_cert.clear();
    route.tls_key.clear();
    Ok(RouteDoc {
        route,
        cert_pem,
        key_pem,
        origin: origin.clone(),
    })
}

/// [`Synced::PutRoute`] for `doc`, its PEM written to this node's files under `cert_dir`
/// first. Blocking (call it on a blocking thread).
fn to_synced(cert_dir: &Path, listener: &str, doc: RouteDoc) -> Result<Synced, String> {
    let mut route = doc.route.clone();
    if !doc.cert_pem.is_empty() {
        let (cert, key) = write_pem(cert_dir, listener, &route.hostname, &doc)
            .map_err(|e| format!("route {}: its certificate not written: {e}", route.hostname))?;
        route.tls_cert = cert.display().to_string();
        route.tls_key = key.display().to_string();
    }
    Ok(Synced::PutRoute {
        listener: listener.to_owned(),
        route,
    })
}

/// Writes a route's certificate and key (0600) under `cert_dir`, replacing them whole
/// (written aside, then renamed) when they differ.
fn write_pem(
    cert_dir: &Path,
    listener: &str,
    hostname: &str,
    doc: &RouteDoc,
) -> std::io::Result<(PathBuf, PathBuf)> {
    let dir = cert_dir.join(file_name(listener));
    std::fs::create_dir_all(&dir)?;
    let cert = dir.join(format!("{}.crt", file_name(hostname)));
    let key = dir.join(format!("{}.key", file_name(hostname)));
    for (path, text) in [(&cert, &doc.cert_pem), (&key, &doc.key_pem)] {
        if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        let aside = path.with_extension("new");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&aside)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&aside, path)?;
    }
    Ok((cert, key))
}

/// [`Cluster::table_values`], blocking.
fn table_values(
    keys: &Keys,
    objects: &FleetObjects,
    origin: &DocOrigin,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut values = Vec::new();
    for (listener, route) in &objects.routes {
        let doc = route_doc(route.clone(), origin).map_err(|e| e.to_string())?;
        values.push((keys.route(listener, &route.hostname), doc::encode(&doc)));
    }
    for rule in &objects.rules {
        let doc = RuleDoc {
            rule: rule.clone(),
            origin: origin.clone(),
        };
        values.push((keys.rule(&rule.value), doc::encode(&doc)));
    }
    for (listener, hostname) in &objects.no_sni {
        let doc = NoSniDoc {
            hostname: hostname.clone(),
            origin: origin.clone(),
        };
        values.push((keys.no_sni(listener), doc::encode(&doc)));
    }
    Ok(values)
}

/// A failed fleet-wide write in words an operator can act on. A request no member answered
/// in time may have reached a leader that commits it once it has a quorum again (etcd keeps
/// such a proposal in its log), so it is not called "nothing applied": the operator lists to
/// check. A request refused or never sent changed nothing.
fn write_failed(e: super::client::ClusterError) -> ChangeError {
    let timed_out = matches!(
        &e,
        super::client::ClusterError::Unreachable { source, .. }
            if source.downcast_ref::<super::client::NoAnswer>().is_some()
    );
    ChangeError::Unavailable(if timed_out {
        format!(
            "{e}: the store may still apply the change when it has a quorum again; list to \
             check before retrying"
        )
    } else {
        format!("{e}; nothing applied")
    })
}

/// A PEM file's text, bounded.
fn read_pem(path: &Path) -> Result<String, ChangeError> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| ChangeError::Invalid(format!("{}: {e}", path.display())))?;
    let mut text = String::new();
    file.take(MAX_PEM + 1)
        .read_to_string(&mut text)
        .map_err(|e| ChangeError::Invalid(format!("{}: {e}", path.display())))?;
    if text.len() as u64 > MAX_PEM {
        return Err(ChangeError::Invalid(format!(
            "{} is over {MAX_PEM} bytes: not a certificate or key",
            path.display()
        )));
    }
    Ok(text)
}

/// A listener or host name as a file name: anything but letters, digits, `.` and `-` as `_`
/// (`*.a.test` → `_.a.test`).
fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
