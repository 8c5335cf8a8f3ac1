//! ACME across the fleet, in etcd (`control::acme::share::Share`): under `<prefix>/acme/v1/`
//!
//! - `locks/<hostname>`: the node ordering that name, bound to a lease of [`LOCK_TTL`] kept
//!   alive while it orders, so a node that dies mid-order frees the name within the TTL;
//! - `challenges/<hostname>`: the order's pending challenge, bound to the same lease, so it
//!   goes when the order ends (the lease is revoked) however it ends;
//! - `certs/<hostname>`: the last certificate issued for the name, chain and key;
//! - `accounts/<directory, escaped>`: the fleet's ACME account at that CA (its key), made by
//!   the first node that needed one, so renewals name certificates of their own account
//!   (ARI's `replaces`) and the CA's per-account limits see one fleet.
//!
//! Every node watches that prefix ([`AcmeShare::run`]): another node's challenge is answered
//! here too (the CA may validate through any node), and a certificate this node lacks (or an
//! older one) is installed into its database and served, so a node joining or restarting
//! takes the fleet's certificates instead of ordering its own.
//!
//! I/O: etcd, over its own connection (the sync's table watch is not shared: an ACME burst
//! must not delay a route change). Invariants: no lock is held across an `.await`; the key
//! material lives in etcd as it does in the database, so etcd's access must be as guarded as
//! the database file (TLS and a user: see README "A fleet").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::settings::ClusterConfig;
use super::sync::Connector;
use crate::control::acme::share::{BoxFuture, Held, Pending, Share, SharedCertificate};
use crate::control::apply::Control;

/// How long a dead node's lock on a name outlives it.
pub const LOCK_TTL: Duration = Duration::from_secs(30);
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The fleet's ACME state in etcd, for one node.
pub struct AcmeShare {
    cfg: ClusterConfig,
    /// `<prefix>/acme/v1/`.
    root: String,
    control: Arc<Control>,
    connect: Connector,
    client: Mutex<Option<Client>>,
    /// Set once the prefix was read and applied.
    ready: watch::Sender<bool>,
    /// Challenges of other nodes answered here, by hostname: their token (http-01).
    answering: Mutex<HashMap<String, Option<String>>>,
}

impl std::fmt::Debug for AcmeShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeShare")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a key under the root names.
/// The key of `hostname`'s entry of `kind` (`challenges`, `certs`, `locks`) under `root`.
fn key(root: &str, kind: &str, hostname: &str) -> String {
    format!("{root}{kind}/{}", hostname.to_ascii_lowercase())
}

#[derive(Debug, PartialEq, Eq)]
enum AcmeKey {
    Challenge(String),
    Certificate(String),
}

impl AcmeShare {
    /// The share of `control`'s node; nothing is read until [`AcmeShare::run`].
    pub fn new(cfg: ClusterConfig, control: Arc<Control>, connect: Connector) -> Arc<AcmeShare> {
        let root = format!("{}/acme/v1/", cfg.prefix.trim_end_matches('/'));
        Arc::new(AcmeShare {
            cfg,
            root,
            control,
            connect,
            client: Mutex::new(None),
            ready: watch::channel(false).0,
            answering: Mutex::new(HashMap::new()),
        })
    }

    fn account_key(&self, directory: &str) -> String {
        format!("{}accounts/{}", self.root, super::keys::escape(directory))
    }

    fn key(&self, kind: &str, hostname: &str) -> String {
        key(&self.root, kind, hostname)
    }

    fn parse(&self, key: &str) -> Option<AcmeKey> {
        let rest = key.strip_prefix(&self.root)?;
        match rest.split_once('/')? {
            ("challenges", host) if !host.contains('/') => Some(AcmeKey::Challenge(host.into())),
            ("certs", host) if !host.contains('/') => Some(AcmeKey::Certificate(host.into())),
            _ => None,
        }
    }

    /// The connected client, or one connected now.
    async fn client(&self) -> Result<Client, String> {
        if let Some(client) = lock(&self.client).clone() {
            return Ok(client);
        }
        let client = (self.connect)().await?;
        *lock(&self.client) = Some(client.clone());
        Ok(client)
    }

    /// One request under the request timeout; a broken connection is dropped, so the next
    /// request connects again.
    async fn call<T, Fut>(&self, request: impl Fn(Client) -> Fut) -> Result<T, String>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client().await?;
        let result = super::client::call(&self.cfg, || request(client.clone())).await;
        result.map_err(|e| {
            if e.is_unreachable() {
                *lock(&self.client) = None;
            }
            e.to_string()
        })
    }

    /// Keeps this node in step with the fleet's ACME state until `shutdown`: reads the prefix,
    /// applies it, then watches it, reconnecting with backoff.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                result = self.follow() => result,
            };
            if let Err(e) = result {
                tracing::warn!(
                    retry_in_ms = backoff.as_millis() as u64,
                    "cluster ACME state: {e}"
                );
                *lock(&self.client) = None;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection's worth of [`AcmeShare::run`].
    async fn follow(&self) -> Result<(), String> {
        let root = self.root.clone();
        let resp = self
            .call(|mut c| {
                let root = root.clone();
                async move { c.get(root, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut present = Vec::new();
        for kv in resp.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            present.push(key.to_owned());
            self.put(key, kv.value()).await;
        }
        // Challenges answered here whose key went while this node was away.
        let gone: Vec<String> = lock(&self.answering)
            .keys()
            .filter(|host| !present.contains(&self.key("challenges", host)))
            .cloned()
            .collect();
        for host in gone {
            self.withdraw(&host);
        }
        self.ready.send_replace(true);
        let client = self.client().await?;
        let (_watcher, mut stream) = client
            .clone()
            .watch(
                self.root.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(|e| format!("watch: {e}"))?
            .split();
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => return Err("the watch ended".into()),
                Err(e) => return Err(format!("watch: {e}")),
            };
            if resp.compact_revision() > 0 || resp.canceled() {
                return Err("the watch was compacted or cancelled: reading again".into());
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                match event.event_type() {
                    EventType::Put => self.put(key, kv.value()).await,
                    EventType::Delete => {
                        if let Some(AcmeKey::Challenge(host)) = self.parse(key) {
                            self.withdraw(&host);
                        }
                    }
                }
            }
        }
    }

    /// Applies one key's value: another node's challenge answered here, a certificate this
    /// node lacks installed.
    async fn put(&self, key: &str, value: &[u8]) {
        let me = &self.cfg.name;
        match self.parse(key) {
            Some(AcmeKey::Challenge(host)) => {
                let Ok(doc) = serde_json::from_slice::<ChallengeDoc>(value) else {
                    tracing::warn!(
                        key,
                        "cluster ACME: a challenge that does not decode, skipped"
                    );
                    return;
                };
                if doc.node == *me {
                    return;
                }
                self.answer(&host, doc.challenge);
            }
            Some(AcmeKey::Certificate(host)) => {
                let Ok(doc) = serde_json::from_slice::<SharedCertificate>(value) else {
                    tracing::warn!(
                        key,
                        "cluster ACME: a certificate that does not decode, skipped"
                    );
                    return;
                };
                if doc.node == *me || doc.hostname != host {
                    return;
                }
                let control = Arc::clone(&self.control);
                let installed = tokio::task::spawn_blocking(move || {
                    control
                        .install_fleet_certificate(&doc)
                        .map(|installed| installed.then_some(doc.node))
                })
                .await;
                match installed {
                    Ok(Ok(Some(node))) => {
                        tracing::info!(route = %host, from = %node, "ACME certificate from the fleet installed and served");
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(route = %host, "cluster ACME: installing the fleet's certificate failed: {e}")
                    }
                    Err(e) => tracing::warn!(route = %host, "cluster ACME: {e}"),
                }
            }
            None => {}
        }
    }

    /// Answers another node's challenge for `host` here.
    fn answer(&self, host: &str, challenge: Pending) {
        let challenges = &self.control.state().acme;
        match challenge {
            Pending::TlsAlpn01 { digest, .. } => {
                match crate::model::acme::challenge_certificate(host, &digest) {
                    Ok(key) => challenges.insert(host, key),
                    Err(e) => {
                        tracing::warn!(route = %host, "cluster ACME: challenge certificate: {e}");
                        return;
                    }
                }
                lock(&self.answering).insert(host.to_owned(), None);
            }
            Pending::Http01 {
                token,
                key_authorization,
                ..
            } => {
                challenges.insert_token(host, &token, key_authorization);
                lock(&self.answering).insert(host.to_owned(), Some(token));
            }
        }
        tracing::info!(route = %host, "answering another node's ACME challenge here too");
    }

    /// Stops answering another node's challenge for `host`.
    fn withdraw(&self, host: &str) {
        let Some(token) = lock(&self.answering).remove(host) else {
            return;
        };
        let challenges = &self.control.state().acme;
        match token {
            None => challenges.remove(host),
            Some(token) => challenges.remove_token(&token),
        }
    }
}

/// A challenge as the fleet keeps it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ChallengeDoc {
    node: String,
    challenge: Pending,
}

impl Share for AcmeShare {
    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut ready = self.ready.subscribe();
            let _ = ready.wait_for(|r| *r).await;
        })
    }

    fn lock<'a>(
        &'a self,
        hostname: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Held>>, String>> {
        Box::pin(async move {
            let ttl = LOCK_TTL.as_secs() as i64;
            let lease = self
                .call(|mut c| async move { c.lease_grant(ttl, None).await })
                .await?
                .id();
            let key = self.key("locks", hostname);
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(
                    key,
                    self.cfg.name.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let won = self
                .call(|mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?
                .succeeded();
            let client = self.client().await?;
            if !won {
                let _ = client.clone().lease_revoke(lease).await;
                return Ok(None);
            }
            // Kept alive while the order runs (a third of the TTL), revoked at its end.
            let stop = CancellationToken::new();
            let keeper = tokio::spawn({
                let (client, stop) = (client.clone(), stop.clone());
                async move {
                    let Ok((mut keeper, _responses)) = client.clone().lease_keep_alive(lease).await
                    else {
                        return;
                    };
                    let mut tick = tokio::time::interval(LOCK_TTL / 3);
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            _ = tick.tick() => {
                                if keeper.keep_alive().await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
            Ok(Some(Box::new(Lock {
                share_root: self.root.clone(),
                node: self.cfg.name.clone(),
                cfg: self.cfg.clone(),
                client,
                lease,
                stop,
                keeper,
            }) as Box<dyn Held>))
        })
    }

    fn certificate<'a>(
        &'a self,
        hostname: &'a str,
    ) -> BoxFuture<'a, Result<Option<SharedCertificate>, String>> {
        Box::pin(async move {
            let key = self.key("certs", hostname);
            let resp = self
                .call(|mut c| {
                    let key = key.clone();
                    async move { c.get(key, None).await }
                })
                .await?;
            match resp.kvs().first() {
                None => Ok(None),
                Some(kv) => serde_json::from_slice(kv.value())
                    .map(Some)
                    .map_err(|e| format!("the fleet's certificate for {hostname}: {e}")),
            }
        })
    }

    fn account<'a>(&'a self, directory: &'a str) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            let key = self.account_key(directory);
            let resp = self
                .call(|mut c| {
                    let key = key.clone();
                    async move { c.get(key, None).await }
                })
                .await?;
            Ok(resp
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
        })
    }

    fn save_account<'a>(
        &'a self,
        directory: &'a str,
        credentials: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            let key = self.account_key(directory);
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(key.clone(), credentials, None)])
                .or_else(vec![TxnOp::get(key, None)]);
            let resp = self
                .call(|mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?;
            if resp.succeeded() {
                return Ok(None);
            }
            let theirs = resp.op_responses().into_iter().find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            });
            Ok(theirs)
        })
    }

    fn publish<'a>(
        &'a self,
        certificate: &'a SharedCertificate,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let doc = SharedCertificate {
                node: self.cfg.name.clone(),
                ..certificate.clone()
            };
            let value = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
            let key = self.key("certs", &certificate.hostname);
            self.call(|mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, None).await }
            })
            .await?;
            Ok(())
        })
    }
}

/// A name's lock, held by this node.
struct Lock {
    share_root: String,
    node: String,
    cfg: ClusterConfig,
    client: Client,
    lease: i64,
    stop: CancellationToken,
    keeper: tokio::task::JoinHandle<()>,
}

impl Held for Lock {
    fn put<'a>(&'a self, challenge: &'a Pending) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let hostname = match challenge {
                Pending::TlsAlpn01 { hostname, .. } | Pending::Http01 { hostname, .. } => hostname,
            };
            let key = key(&self.share_root, "challenges", hostname);
            let doc = ChallengeDoc {
                node: self.node.clone(),
                challenge: challenge.clone(),
            };
            let value = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
            let lease = self.lease;
            super::client::call(&self.cfg, || {
                let (mut c, key, value) = (self.client.clone(), key.clone(), value.clone());
                async move {
                    c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await
            .map_err(|e| e.to_string())?;
            Ok(())
        })
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.stop.cancel();
            let _ = self.keeper.await;
            // Revoking the lease deletes the lock and the challenge with it; if it fails,
            // they go when the lease runs out.
            let mut client = self.client.clone();
            let _ = tokio::time::timeout(self.cfg.request_timeout, client.lease_revoke(self.lease))
                .await;
        })
    }
}
