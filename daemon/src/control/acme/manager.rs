//! The ACME task: orders a certificate for every `acme = true` route that has none, and
//! again before one ends, one order at a time.
//!
//! I/O: HTTPS to the CA (through `order`), the database (through `Control`, on blocking
//! threads). When: at start, whenever an acme route is added or changed (`Challenges::wake`),
//! and at the earliest renewal due. The renewal time is the CA's when it offers renewal
//! information (ARI, RFC 9773: a random moment in its suggested window, asked again after
//! its `Retry-After`, and the renewal order names the certificate it replaces), else a third
//! of the certificate's lifetime before its end. A failed order is retried after a back-off
//! that doubles from 1 minute to 6 hours, with up to 10 % jitter so a fleet of names does
//! not come back at once, and never before the CA's `Retry-After` when it refused with one
//! (429, 503); the failure is a warn line and each route's last error (shown with its state).
//! The old certificate is served until the new one is in the database and loaded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::http;
use super::order::{AcmeError, Issued, Orderer};
use super::settings::{AcmeConfig, ChallengeKind};
use super::share::{Held, Share, SharedCertificate};
use crate::control::Control;
use crate::control::apply::AcmeDue;
use crate::model::events::Event;
use crate::model::state::State;

/// First back-off after a failed order.
const BACKOFF_MIN: Duration = Duration::from_secs(60);
/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// Longest sleep with nothing due: the task looks again at least this often.
const IDLE: Duration = Duration::from_secs(3600);
/// The bounds put on the CA's `Retry-After` for renewal information (RFC 9773 §4.3.2: a
/// client asks again no sooner than told, and at least daily would be reasonable).
const ARI_MIN: Duration = Duration::from_secs(60);
/// See [`ARI_MIN`].
const ARI_MAX: Duration = Duration::from_secs(24 * 3600);
/// How soon to look again at a name another node of the fleet is ordering.
const BUSY_RETRY: Duration = Duration::from_secs(10);
/// How long to wait before asking the CA's renewal information again after it failed.
const ARI_RETRY: Duration = Duration::from_secs(3600);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What ARI said of one certificate.
struct Ari {
    /// The certificate asked about.
    leaf: Vec<u8>,
    /// The window (Unix seconds) and the moment picked in it.
    window: (u64, u64),
    at: u64,
    /// Ask again from then.
    ask_after: u64,
    /// Named by the renewal order.
    id: Option<instant_acme::CertificateIdentifier<'static>>,
}

/// The task's memory between passes.
struct Task {
    settings: AcmeConfig,
    control: Arc<Control>,
    state: Arc<State>,
    http: http::Client,
    orderer: Option<Orderer>,
    /// Per hostname: no order before this time (Unix seconds), and the next back-off.
    backoff: HashMap<String, (u64, Duration)>,
    /// Per hostname: the CA's renewal information.
    ari: HashMap<String, Ari>,
    /// Cleared when the directory turns out to have no renewal information.
    ari_offered: bool,
}

/// Runs until `shutdown`.
pub async fn run(settings: AcmeConfig, control: Arc<Control>, shutdown: CancellationToken) {
    let state = Arc::clone(control.state());
    state.acme.enable();
    let http = match http::Client::new(settings.ca_pem.as_deref()) {
        Ok(http) => http,
        Err(e) => {
            tracing::error!("ACME is off: {e}");
            return;
        }
    };
    state.acme.start_ordering();
    let mut task = Task {
        settings,
        control,
        state: Arc::clone(&state),
        http,
        orderer: None,
        backoff: HashMap::new(),
        ari: HashMap::new(),
        ari_offered: true,
    };
    // On a cluster node: not before the fleet's certificates are here (a name without one
    // on this node may have one in the fleet).
    if let Some(share) = task.control.acme_share().cloned() {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = share.ready() => {}
        }
    }
    loop {
        let (next, issued_any) = task.pass().await;
        if issued_any {
            continue;
        }
        let sleep = Duration::from_secs(next.saturating_sub(now()).max(1));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = state.acme.woken() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

impl Task {
    /// Looks at every acme route once, ordering what is due; returns when to look again
    /// (Unix seconds) and whether a certificate was issued (then look again at once: its
    /// renewal time is due from the database).
    async fn pass(&mut self) -> (u64, bool) {
        let due = blocking(&self.control, |c| c.acme_due())
            .await
            .unwrap_or_else(|e| {
                tracing::error!("ACME: reading the routes failed: {e}");
                Vec::new()
            });
        let mut next = now() + IDLE.as_secs();
        let mut issued_any = false;
        for AcmeDue {
            hostname,
            renew_at,
            not_after,
            leaf,
        } in due
        {
            // An operator's `certs renew`: now, whatever the renewal time or the back-off.
            let forced = self.state.acme.take_forced(&hostname);
            let (renew_at, replaces) = match (renew_at, leaf) {
                (Some(default), Some(leaf)) => self.renewal_time(&hostname, default, leaf).await,
                (renew_at, _) => (renew_at, None),
            };
            if let Some(ari) = self.ari.get(&hostname) {
                next = next.min(ari.ask_after);
            }
            let t = now();
            if let Some(at) = renew_at.filter(|at| *at > t && !forced) {
                next = next.min(at);
                continue;
            }
            if let Some((after, _)) = self
                .backoff
                .get(&hostname)
                .filter(|(after, _)| *after > t && !forced)
            {
                next = next.min(*after);
                continue;
            }
            match self.order(&hostname, replaces, not_after).await {
                Ok(got @ (Ordered::Issued(not_after) | Ordered::FromFleet(not_after))) => {
                    issued_any = true;
                    self.backoff.remove(&hostname);
                    self.ari.remove(&hostname);
                    self.state.acme.set_error(&hostname, None);
                    if matches!(got, Ordered::FromFleet(_)) {
                        tracing::info!(route = %hostname, not_after, "ACME certificate taken from the fleet (another node ordered it)");
                    } else {
                        self.state
                            .acme
                            .orders_issued
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(route = %hostname, not_after, "ACME certificate issued and served");
                        self.state.events.publish(|| Event::AcmeOrder {
                            route: hostname.clone(),
                            not_after: Some(not_after),
                            error: None,
                        });
                    }
                }
                Ok(Ordered::Busy) => {
                    // Another node orders it now: its certificate comes through the fleet.
                    next = next.min(now() + BUSY_RETRY.as_secs());
                    tracing::debug!(route = %hostname, "another node is ordering this name");
                }
                Err(e) => {
                    self.state
                        .acme
                        .orders_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let wait = self.backoff.get(&hostname).map_or(BACKOFF_MIN, |(_, d)| *d);
                    let jitter = wait.as_secs() * rand_below(11) / 100;
                    let mut after = now() + wait.as_secs() + jitter;
                    // The CA said when it would take another order: not before.
                    if let Some(told) = self.http.take_retry_after() {
                        let told = told
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs())
                            .min(now() + BACKOFF_MAX.as_secs());
                        after = after.max(told);
                    }
                    self.backoff
                        .insert(hostname.clone(), (after, (wait * 2).min(BACKOFF_MAX)));
                    next = next.min(after);
                    tracing::warn!(route = %hostname, retry_in_s = after.saturating_sub(now()), "ACME order failed: {e}");
                    self.state.acme.set_error(&hostname, Some(e.to_string()));
                    self.state.events.publish(|| Event::AcmeOrder {
                        route: hostname.clone(),
                        not_after: None,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
        (next, issued_any)
    }

    /// When to renew `hostname`'s certificate `leaf`: ARI's pick when the CA offers it (and
    /// the identifier a renewal order names), else `default`. Recorded for `certs list`.
    async fn renewal_time(
        &mut self,
        hostname: &str,
        default: u64,
        leaf: Vec<u8>,
    ) -> (
        Option<u64>,
        Option<instant_acme::CertificateIdentifier<'static>>,
    ) {
        let t = now();
        let fresh = self
            .ari
            .get(hostname)
            .is_some_and(|a| a.leaf == leaf && a.ask_after > t);
        if self.ari_offered && !fresh && self.account().await.is_ok() {
            let orderer = self.orderer.as_ref().expect("account() made it");
            let der = rustls_pki_types::CertificateDer::from(leaf.clone());
            match orderer.renewal(&der).await {
                Ok(Some(r)) => {
                    let before = self
                        .ari
                        .get(hostname)
                        .filter(|a| a.leaf == leaf)
                        .map(|a| (a.window, a.at));
                    let at = pick((r.start, r.end), before, t, rand_below);
                    let ask = r.ask_again.clamp(ARI_MIN, ARI_MAX);
                    self.ari.insert(
                        hostname.to_owned(),
                        Ari {
                            leaf,
                            window: (r.start, r.end),
                            at,
                            ask_after: t + ask.as_secs(),
                            id: Some(r.id),
                        },
                    );
                }
                Ok(None) => {
                    tracing::info!(
                        "the ACME directory offers no renewal information (ARI): renewing \
                         with a third of each certificate's lifetime left"
                    );
                    self.ari_offered = false;
                }
                Err(e) => {
                    tracing::warn!(route = %hostname, "ACME renewal information failed (renewing by the default time meanwhile): {e}");
                    self.ari.insert(
                        hostname.to_owned(),
                        Ari {
                            leaf,
                            window: (0, 0),
                            at: default,
                            ask_after: t + ARI_RETRY.as_secs(),
                            id: None,
                        },
                    );
                }
            }
        }
        let (at, by_ari, id) = match self.ari.get(hostname).filter(|_| self.ari_offered) {
            Some(a) => (a.at, a.id.is_some(), a.id.clone()),
            None => (default, false, None),
        };
        self.state.acme.set_renewal(hostname, at, by_ari);
        (Some(at), id)
    }

    /// The account, made (or restored) once.
    async fn account(&mut self) -> Result<&Orderer, AcmeError> {
        if self.orderer.is_none() {
            self.orderer = Some(account(&self.settings, &self.control, self.http.clone()).await?);
        }
        Ok(self.orderer.as_ref().expect("just made"))
    }

    /// One order: issued, kept and served; its end (Unix seconds). On a cluster node, under
    /// the fleet's lock on the name, and not when the fleet already has a newer certificate
    /// than `not_after` (this node's): that one is installed instead.
    async fn order(
        &mut self,
        hostname: &str,
        replaces: Option<instant_acme::CertificateIdentifier<'static>>,
        not_after: Option<u64>,
    ) -> Result<Ordered, AcmeError> {
        let kinds = usable_kinds(&self.settings, &self.state)?;
        let control = Arc::clone(&self.control);
        let share = control.acme_share().cloned();
        let held = match &share {
            None => None,
            Some(share) => match share.lock(hostname).await.map_err(AcmeError::Fleet)? {
                None => return Ok(Ordered::Busy),
                Some(held) => Some(held),
            },
        };
        let result = self
            .order_held(
                hostname,
                replaces,
                not_after,
                &kinds,
                share.as_deref(),
                held.as_deref(),
            )
            .await;
        if let Some(held) = held {
            held.release().await;
        }
        result
    }

    async fn order_held(
        &mut self,
        hostname: &str,
        replaces: Option<instant_acme::CertificateIdentifier<'static>>,
        not_after: Option<u64>,
        kinds: &[ChallengeKind],
        share: Option<&dyn Share>,
        held: Option<&dyn Held>,
    ) -> Result<Ordered, AcmeError> {
        let control = Arc::clone(&self.control);
        if let Some(share) = share
            && let Some(theirs) = share
                .certificate(hostname)
                .await
                .map_err(AcmeError::Fleet)?
            && not_after.is_none_or(|ours| theirs.not_after > ours)
        {
            let end = theirs.not_after;
            blocking(&control, move |c| c.install_fleet_certificate(&theirs))
                .await
                .map_err(|e| AcmeError::Local(e.to_string()))?;
            return Ok(Ordered::FromFleet(end));
        }
        let key_type = self.settings.key_type;
        let orderer = self.account().await?;
        let result = match order(
            orderer,
            &control,
            hostname,
            kinds,
            replaces.clone(),
            held,
            key_type,
        )
        .await
        {
            // A CA may refuse the `replaces` it cannot match (the certificate was replaced
            // already, by another order): the renewal goes on without it.
            Err(AcmeError::Ca(e)) if replaces.is_some() => {
                tracing::info!(route = %hostname, "the CA refused the renewal's replaces ({e}): ordering without it");
                order(orderer, &control, hostname, kinds, None, held, key_type).await
            }
            other => other,
        };
        let (not_after, issued) = result?;
        if let Some(share) = share {
            let certificate = SharedCertificate {
                hostname: hostname.to_owned(),
                chain_pem: issued.chain_pem,
                key_pem: issued.key_pem,
                not_after,
                node: String::new(),
            };
            if let Err(e) = share.publish(&certificate).await {
                tracing::warn!(route = %hostname, "the certificate is served here but could not be given to the fleet (its nodes will take it at their next look, or order): {e}");
            }
        }
        Ok(Ordered::Issued(not_after))
    }
}

/// What an order came to.
enum Ordered {
    /// Issued here: its end.
    Issued(u64),
    /// The fleet had a newer one, now installed here: its end.
    FromFleet(u64),
    /// Another node of the fleet holds the name's lock.
    Busy,
}

/// The moment to renew in ARI's `window` (Unix seconds) at `now`: the one picked `before`
/// for the same window (asking again must not move it), else now if the window has begun,
/// else a random moment in it (`random(n)`: below `n`), so a fleet's renewals spread out.
fn pick(
    window: (u64, u64),
    before: Option<((u64, u64), u64)>,
    now: u64,
    random: impl FnOnce(u64) -> u64,
) -> u64 {
    match before {
        Some((w, at)) if w == window => at,
        _ if window.0 <= now => now,
        _ => window.0 + random(window.1.saturating_sub(window.0).max(1)),
    }
}

/// The challenge kinds this node can answer now, in the operator's order: http-01 needs one
/// of its `kind = "http"` listeners.
fn usable_kinds(settings: &AcmeConfig, state: &State) -> Result<Vec<ChallengeKind>, AcmeError> {
    let http = state
        .listeners()
        .iter()
        .any(|l| l.kind == mc_proxy_shared::ListenerKind::Http);
    let kinds: Vec<ChallengeKind> = settings
        .challenges
        .iter()
        .copied()
        .filter(|k| *k != ChallengeKind::Http01 || http)
        .collect();
    if kinds.is_empty() {
        return Err(AcmeError::Local(
            "no challenge can be answered: [acme] challenges allows only http-01, which needs \
             a kind = \"http\" listener (on port 80 for a public CA)"
                .into(),
        ));
    }
    Ok(kinds)
}

/// The account: on a fleet the fleet's, else from the database's credentials, else created
/// and kept (in the database, and as the fleet's unless another node's came first).
async fn account(
    settings: &AcmeConfig,
    control: &Arc<Control>,
    http: http::Client,
) -> Result<Orderer, AcmeError> {
    let directory = settings.directory.clone();
    let share = control.acme_share().cloned();
    let fleets = match &share {
        Some(share) => share.account(&directory).await.map_err(AcmeError::Fleet)?,
        None => None,
    };
    let from_fleet = fleets.is_some();
    let stored = match fleets {
        Some(json) => Some(json),
        None => blocking(control, {
            let directory = directory.clone();
            move |c| c.acme_account(&directory)
        })
        .await
        .map_err(|e| AcmeError::Local(e.to_string()))?,
    };
    let credentials = |json: &str| {
        serde_json::from_str(json)
            .map_err(|e| AcmeError::Local(format!("stored ACME account: {e}")))
    };
    let (orderer, created) = Orderer::connect(
        &directory,
        &settings.contact,
        stored.as_deref().map(credentials).transpose()?,
        http.clone(),
    )
    .await?;
    // The fleet's account, when another node's came first: every node orders with one.
    let at = &directory;
    let fleets_instead = |theirs: String| async move {
        let (orderer, _) =
            Orderer::connect(at, &settings.contact, Some(credentials(&theirs)?), http).await?;
        tracing::info!("ACME: using the fleet's account at {at}");
        Ok(orderer)
    };
    let Some(created) = created else {
        // Known already. This node's own (from its database): on a fleet, made the fleet's,
        // unless another node's was saved meanwhile, which is then used. A fleet that cannot
        // be written to does not stop this node ordering with its own.
        if let (Some(share), Some(json), false) = (&share, &stored, from_fleet)
            && let Some(theirs) = fleet_won(json, share.save_account(&directory, json).await)
        {
            return fleets_instead(theirs).await;
        }
        return Ok(orderer);
    };
    let json = serde_json::to_string(&created)
        .map_err(|e| AcmeError::Local(format!("ACME account: {e}")))?;
    // Another node's account came first: that one is the fleet's.
    if let Some(share) = &share
        && let Some(theirs) = share
            .save_account(&directory, &json)
            .await
            .map_err(AcmeError::Fleet)?
    {
        return fleets_instead(theirs).await;
    }
    blocking(control, {
        let directory = directory.clone();
        move |c| c.save_acme_account(&directory, &json)
    })
    .await
    .map_err(|e| AcmeError::Local(e.to_string()))?;
    tracing::info!("ACME account created at {directory}");
    Ok(orderer)
}

/// After a node offered its own account (`ours`) as the fleet's: the fleet's, when another
/// node's was there first and is to be used instead. A fleet that could not be written to
/// keeps the node on its own account (warned): ordering does not wait for the store.
fn fleet_won(ours: &str, saved: Result<Option<String>, String>) -> Option<String> {
    match saved {
        Ok(Some(theirs)) if theirs != ours => Some(theirs),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("ACME: the account not shared with the fleet: {e}");
            None
        }
    }
}

/// One order: issued, kept and served; its end (Unix seconds) and the certificate.
async fn order(
    orderer: &Orderer,
    control: &Arc<Control>,
    hostname: &str,
    kinds: &[ChallengeKind],
    replaces: Option<instant_acme::CertificateIdentifier<'static>>,
    fleet: Option<&dyn Held>,
    key_type: super::settings::KeyType,
) -> Result<(u64, Issued), AcmeError> {
    tracing::info!(route = %hostname, "ordering an ACME certificate");
    let issued = orderer
        .order(
            hostname,
            &control.state().acme,
            kinds,
            replaces,
            fleet,
            key_type,
        )
        .await?;
    let label = std::path::Path::new("acme:").join(hostname);
    let key = crate::model::certs::certified_key_from_pem(
        issued.chain_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        &label,
        &label,
    )
    .map_err(|e| AcmeError::Ca(format!("the issued certificate does not load: {e}")))?;
    let not_after = crate::model::certs::summary(&key)
        .map(|s| s.not_after)
        .ok_or_else(|| AcmeError::Ca("the issued certificate's validity does not parse".into()))?;
    let (name, chain, key_pem) = (
        hostname.to_owned(),
        issued.chain_pem.clone(),
        issued.key_pem.clone(),
    );
    blocking(control, move |c| {
        c.install_acme_certificate(&name, &chain, &key_pem, not_after)
    })
    .await
    .map_err(|e| AcmeError::Local(e.to_string()))?;
    Ok((not_after, issued))
}

/// Runs a blocking control-plane call off the runtime.
async fn blocking<T: Send + 'static>(
    control: &Arc<Control>,
    f: impl FnOnce(&Control) -> Result<T, crate::control::ChangeError> + Send + 'static,
) -> Result<T, crate::control::ChangeError> {
    let control = Arc::clone(control);
    tokio::task::spawn_blocking(move || f(&control))
        .await
        .map_err(|e| crate::control::ChangeError::Internal(format!("ACME task: {e}")))?
}

/// A number below `n` (at least 1), from std's per-process random hash keys.
fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now());
    h.finish() % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ari_picks_a_moment_in_the_window_and_keeps_it_while_the_window_stays() {
        let window = (1_000, 2_000);
        // Not begun: somewhere in it, as the random number says.
        assert_eq!(pick(window, None, 500, |n| n - 1), 1_999);
        assert_eq!(pick(window, None, 500, |_| 0), 1_000);
        // Asked again, the same window: the same moment, whatever the dice say now.
        assert_eq!(pick(window, Some((window, 1_234)), 900, |_| 0), 1_234);
        // The CA moved the window (an incident: renew early): a new pick.
        assert_eq!(pick((600, 700), Some((window, 1_234)), 500, |_| 50), 650);
        // Begun: now.
        assert_eq!(pick(window, None, 1_500, |_| 0), 1_500);
        // An empty or inverted window does not divide by zero.
        assert_eq!(pick((900, 900), None, 500, |n| n - 1), 900);
    }

    #[test]
    fn a_node_offering_its_own_account_switches_to_the_fleets_when_another_came_first() {
        // Saved as the fleet's, or already the fleet's: this node's stays.
        assert_eq!(fleet_won("{a}", Ok(None)), None);
        assert_eq!(fleet_won("{a}", Ok(Some("{a}".into()))), None);
        // Another node's was there first: that one, so the fleet orders with one account.
        assert_eq!(
            fleet_won("{a}", Ok(Some("{b}".into()))),
            Some("{b}".to_owned())
        );
        // The store away: ordering goes on with this node's own.
        assert_eq!(fleet_won("{a}", Err("unavailable".into())), None);
    }
}
