//! Certificates in sight of their end: every served L7 route's certificate is looked at when
//! the daemon starts and every [`CHECK_EVERY`] after; one that ends within
//! [`EXPIRY_WARN_DAYS`] days, or has ended, is a warn log line and a `certificate_expiring`
//! event (the console shows it as a notice, `mcproxyctl events` as a line). `/metrics`,
//! `mcproxyctl certs list` and the console's route detail show every certificate's end at
//! any time; this is the push side for those who read logs and events.
//!
//! I/O: none but the log and the event stream; the dates were read when each route loaded
//! (`model::certs::summary`). A renewal (SIGHUP, `mcproxyctl reload`) swaps the route, so the
//! next look sees the new date.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mc_proxy_shared::client::EXPIRY_WARN_DAYS;
use tokio_util::sync::CancellationToken;

use crate::model::events::Event;
use crate::model::state::State;

/// How often certificates are looked at: a day has four looks, so a certificate entering
/// the window is reported within 6 hours, and one in it is reminded of four times a day.
pub const CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);

/// One certificate near or past its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiring {
    /// The listener's configured address.
    pub listener: std::net::SocketAddr,
    /// The route's hostname.
    pub route: String,
    /// Its end, seconds since the Unix epoch.
    pub not_after: u64,
}

/// Every served certificate of `state` that ends within [`EXPIRY_WARN_DAYS`] days of `now`
/// (seconds since the Unix epoch) or has ended, soonest first.
pub fn expiring(state: &State, now: u64) -> Vec<Expiring> {
    let horizon = now + EXPIRY_WARN_DAYS * 86_400;
    let mut out = Vec::new();
    for listener in state.listeners().iter() {
        for info in listener.routes().iter() {
            let Some(summary) = info.tls.as_ref().and_then(|t| t.summary.as_ref()) else {
                continue;
            };
            if summary.not_after <= horizon {
                out.push(Expiring {
                    listener: listener.addr,
                    route: info.route.hostname.clone(),
                    not_after: summary.not_after,
                });
            }
        }
    }
    out.sort_by_key(|e| e.not_after);
    out
}

/// Looks now and every [`CHECK_EVERY`] until `shutdown`.
pub async fn watch(state: Arc<State>, shutdown: CancellationToken) {
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for e in expiring(&state, now) {
            report(&state, &e, now);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

fn report(state: &State, e: &Expiring, now: u64) {
    let when = match e.not_after.checked_sub(now) {
        Some(left) => format!("expires in {}d {}h", left / 86_400, left % 86_400 / 3600),
        None => "has EXPIRED: clients refuse it".to_owned(),
    };
    tracing::warn!(
        listener = %e.listener,
        route = %e.route,
        not_after = e.not_after,
        "the route's certificate {when}: renew it (replace the files, then kill -HUP or \
         mcproxyctl reload)"
    );
    state.events.publish(|| Event::CertificateExpiring {
        listener: e.listener,
        route: e.route.clone(),
        not_after: e.not_after,
    });
}
