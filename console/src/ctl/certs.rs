//! `mcproxyctl certs list`: every served L7 route's certificate, where it comes from, who
//! issued it, when it ends and how near that is (expiring within
//! [`EXPIRY_WARN_DAYS`] days, or expired), and every L7 route that serves none with why.
//!
//! I/O: the admin socket (through the caller's client) and stdout. The state is computed
//! here from the daemon's dates and this machine's clock, with the rule the console uses
//! (`Certificate::expiry`).

use mc_proxy_shared::Mode;
#[cfg(doc)]
use mc_proxy_shared::client::EXPIRY_WARN_DAYS;
use mc_proxy_shared::client::{AdminClient, RouteEntry};
use serde::Serialize;

use super::{CtlError, print_out, table};
use crate::cli::{CertsCommand, TableArgs};
use crate::format::{date, now_ms};

/// `certs ...`.
pub(super) async fn run(client: &mut AdminClient, command: CertsCommand) -> Result<(), CtlError> {
    match command {
        CertsCommand::List { listener, table } => list(client, listener.as_deref(), &table).await,
        CertsCommand::Renew { hostname } => {
            client.renew_certificate(&hostname).await?;
            super::emit(&format!(
                "ordering a new certificate for {hostname}; mcproxyctl certs list shows it once \
                 it is served\n"
            ))
        }
    }
}

/// One line of `certs list` (and its JSON object).
#[derive(Debug, Serialize)]
struct CertLine {
    listener: String,
    hostname: String,
    /// `file`, or empty when the route serves no certificate.
    source: String,
    issuer: String,
    /// RFC 3339-like UTC, empty when unknown.
    not_after: String,
    not_after_ms: u64,
    /// ACME: when it is to be renewed (RFC 3339-like UTC), empty when unknown or a file's.
    renews: String,
    renews_at_ms: u64,
    /// `ok`, `expiring`, `expired`, `not valid yet`, `renew failed`, `pending`, `not served`.
    state: String,
    /// ACME: why the last order failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    last_error: String,
    /// `83d left`, `expires in 3d`, the reason a route is not served.
    detail: String,
}

async fn list(
    client: &mut AdminClient,
    listener: Option<&str>,
    how: &TableArgs,
) -> Result<(), CtlError> {
    let routes = client.list_routes(listener).await?;
    let now = now_ms();
    let lines: Vec<CertLine> = routes
        .iter()
        .filter(|r| r.route.mode == Mode::L7)
        .map(|r| line(r, now))
        .collect();
    print_out(how, &lines[..], format)
}

fn line(r: &RouteEntry, now: u64) -> CertLine {
    let renews_at_ms = r
        .certificate
        .as_ref()
        .and_then(|c| c.renews_at_ms)
        .unwrap_or(0);
    let last_error = r
        .certificate
        .as_ref()
        .and_then(|c| c.last_error.clone())
        .unwrap_or_default();
    let (source, issuer, not_after, not_after_ms, state, detail) =
        match (&r.certificate, &r.not_served) {
            (_, Some(reason)) => (
                if r.route.acme { "acme" } else { "" }.to_owned(),
                String::new(),
                String::new(),
                0,
                if r.route.acme {
                    "pending"
                } else {
                    "not served"
                },
                reason.clone(),
            ),
            (Some(c), None) => {
                let expiry = c.expiry(now);
                let state = c.state(now).as_str();
                (
                    c.source.clone(),
                    c.issuer.clone(),
                    date(c.not_after_ms),
                    c.not_after_ms,
                    state,
                    expiry.to_string(),
                )
            }
            (None, None) => (
                "file".into(),
                String::new(),
                String::new(),
                0,
                "unknown",
                "its validity could not be read".into(),
            ),
        };
    CertLine {
        listener: r.listener.clone(),
        hostname: r.route.hostname.clone(),
        source,
        issuer,
        not_after,
        not_after_ms,
        renews: if renews_at_ms == 0 {
            String::new()
        } else {
            date(renews_at_ms)
        },
        renews_at_ms,
        state: state.into(),
        detail: if last_error.is_empty() {
            detail
        } else {
            format!("{detail}; last order failed: {last_error}")
        },
        last_error,
    }
}

fn format(lines: &[CertLine], headers: bool) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                l.listener.clone(),
                l.hostname.clone(),
                dash(&l.source),
                dash(&l.issuer),
                dash(&l.not_after),
                dash(&l.renews),
                l.state.clone(),
                l.detail.clone(),
            ]
        })
        .collect();
    let header = [
        "LISTENER",
        "HOSTNAME",
        "SOURCE",
        "ISSUER",
        "NOT AFTER",
        "RENEWS",
        "STATE",
        "DETAIL",
    ];
    let mut out = table(headers.then_some(&header[..]), &rows);
    if headers && lines.is_empty() {
        out.push_str("(no L7 routes)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use mc_proxy_shared::client::{Certificate, RouteEntry};

    use super::*;

    #[test]
    fn a_served_acme_certificate_whose_renewal_failed_says_so_with_when_it_renews() {
        let day = 86_400_000;
        let now = 1_000 * day;
        let mut entry = RouteEntry {
            listener: "127.0.0.1:443".into(),
            route: mc_proxy_shared::Route {
                hostname: "a.test".into(),
                mode: Mode::L7,
                acme: true,
                ..Default::default()
            },
            stats: Default::default(),
            not_served: None,
            certificate: Some(Certificate {
                source: "acme".into(),
                issuer: "R10".into(),
                not_before_ms: now - 30 * day,
                not_after_ms: now + 60 * day,
                renews_at_ms: Some(now + 30 * day),
                renewal_by_ari: false,
                last_error: None,
            }),
        };
        let ok = line(&entry, now);
        assert_eq!(ok.state, "ok");
        assert_eq!(ok.renews, date(now + 30 * day));
        assert_eq!(ok.last_error, "");
        entry.certificate.as_mut().unwrap().last_error = Some("talking to the CA: down".into());
        let failed = line(&entry, now);
        assert_eq!(failed.state, "renew failed");
        assert!(
            failed
                .detail
                .ends_with("last order failed: talking to the CA: down"),
            "{}",
            failed.detail
        );
        let table = format(&[failed], true);
        assert!(
            table.contains("RENEWS") && table.contains("renew failed"),
            "{table}"
        );
    }
}
