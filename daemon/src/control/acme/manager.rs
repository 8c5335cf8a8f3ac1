//! The ACME task: orders a certificate for every `acme = true` route that has none, and
//! again before one ends, one order at a time.
//!
//! I/O: HTTPS to the CA (through `order`), the database (through `Control`, on blocking
//! threads). When: at start, whenever an acme route is added or changed (`Challenges::wake`),
//! and at the earliest renewal due (a third of a certificate's lifetime before its end). A
//! failed order is retried after a back-off that doubles from 1 minute to 6 hours, with up
//! to 10 % jitter so a fleet of names does not come back at once; the failure is a warn line
//! and each route's last error (shown with its pending state). The old certificate is served
//! until the new one is in the database and loaded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::http;
use super::order::{AcmeError, Orderer};
use super::settings::AcmeConfig;
use crate::control::Control;

/// First back-off after a failed order.
const BACKOFF_MIN: Duration = Duration::from_secs(60);
/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// Longest sleep with nothing due: the task looks again at least this often.
const IDLE: Duration = Duration::from_secs(3600);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    let mut orderer: Option<Orderer> = None;
    // Per hostname: no order before this time (Unix seconds), and the next back-off.
    let mut backoff: HashMap<String, (u64, Duration)> = HashMap::new();
    loop {
        let due = blocking(&control, |c| c.acme_due())
            .await
            .unwrap_or_else(|e| {
                tracing::error!("ACME: reading the routes failed: {e}");
                Vec::new()
            });
        let mut next = now() + IDLE.as_secs();
        // An order made: look again at once (its renewal time is due from the database).
        let mut issued_any = false;
        for (hostname, renew_at) in due {
            let t = now();
            // An operator's `certs renew`: now, whatever the renewal time or the back-off.
            let forced = state.acme.take_forced(&hostname);
            if let Some(at) = renew_at.filter(|at| *at > t && !forced) {
                next = next.min(at);
                continue;
            }
            if let Some((after, _)) = backoff
                .get(&hostname)
                .filter(|(after, _)| *after > t && !forced)
            {
                next = next.min(*after);
                continue;
            }
            let result = match &orderer {
                Some(o) => order(o, &control, &hostname).await,
                None => match account(&settings, &control, http.clone()).await {
                    Ok(o) => {
                        let result = order(&o, &control, &hostname).await;
                        orderer = Some(o);
                        result
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(not_after) => {
                    issued_any = true;
                    state
                        .acme
                        .orders_issued
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    backoff.remove(&hostname);
                    state.acme.set_error(&hostname, None);
                    tracing::info!(route = %hostname, not_after, "ACME certificate issued and served");
                }
                Err(e) => {
                    state
                        .acme
                        .orders_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let wait = backoff.get(&hostname).map_or(BACKOFF_MIN, |(_, d)| *d);
                    let jitter = wait.as_secs() * u64::from(rand_percent()) / 100;
                    let after = now() + wait.as_secs() + jitter;
                    backoff.insert(hostname.clone(), (after, (wait * 2).min(BACKOFF_MAX)));
                    next = next.min(after);
                    tracing::warn!(route = %hostname, retry_in_s = wait.as_secs() + jitter, "ACME order failed: {e}");
                    state.acme.set_error(&hostname, Some(e.to_string()));
                }
            }
        }
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

/// The account: from the database's credentials, else created and kept.
async fn account(
    settings: &AcmeConfig,
    control: &Arc<Control>,
    http: http::Client,
) -> Result<Orderer, AcmeError> {
    let directory = settings.directory.clone();
    let stored = blocking(control, {
        let directory = directory.clone();
        move |c| c.acme_account(&directory)
    })
    .await
    .map_err(|e| AcmeError::Local(e.to_string()))?;
    let credentials = stored
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| AcmeError::Local(format!("stored ACME account: {e}")))?;
    let (orderer, created) =
        Orderer::connect(&directory, &settings.contact, credentials, http).await?;
    if let Some(created) = created {
        let json = serde_json::to_string(&created)
            .map_err(|e| AcmeError::Local(format!("ACME account: {e}")))?;
        blocking(control, move |c| c.save_acme_account(&directory, &json))
            .await
            .map_err(|e| AcmeError::Local(e.to_string()))?;
        tracing::info!("ACME account created at {}", settings.directory);
    }
    Ok(orderer)
}

/// One order: issued, kept and served; its end (Unix seconds).
async fn order(
    orderer: &Orderer,
    control: &Arc<Control>,
    hostname: &str,
) -> Result<u64, AcmeError> {
    tracing::info!(route = %hostname, "ordering an ACME certificate");
    let issued = orderer.order(hostname, &control.state().acme).await?;
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
    let hostname = hostname.to_owned();
    blocking(control, move |c| {
        c.install_acme_certificate(&hostname, &issued.chain_pem, &issued.key_pem, not_after)
    })
    .await
    .map_err(|e| AcmeError::Local(e.to_string()))?;
    Ok(not_after)
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

/// 0 to 10, from std's per-process random hash keys.
fn rand_percent() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now());
    (h.finish() % 11) as u8
}
