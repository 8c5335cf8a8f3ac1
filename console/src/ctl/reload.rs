//! `mcproxyctl reload`: the daemon re-reads certificates and the config file's settings; the
//! per-route report, the settings applied or waiting for a restart, and an exit code that
//! says whether anything failed.
//!
//! I/O: the admin socket (through the caller's client), stdout and stderr.

use std::fmt::Write as _;

use mc_proxy_shared::client::{AdminClient, ReloadResult, RouteReload};

use super::{CtlError, emit, print_out, table, warn};
use crate::cli::TableArgs;

/// `reload`.
pub(super) async fn run(client: &mut AdminClient, table: &TableArgs) -> Result<(), CtlError> {
    let all = client.reload_all().await?;
    let report = all.routes;
    print_out(table, &report, |r, h| format_reload(r, h))?;
    // The settings part: said after the routes in the table form (`--json` keeps
    // printing the route list alone, as before settings were reloaded).
    if !table.json {
        for s in &all.settings_applied {
            emit(&format!("setting applied to new connections: {s}\n"))?;
        }
        for s in &all.settings_need_restart {
            warn(&format!(
                "warning: setting {s} changed in the config file; it keeps its running value until a restart"
            ));
        }
        for l in &all.listeners_not_applied {
            warn(&format!("warning: {l}"));
        }
    }
    if let Some(e) = &all.settings_error {
        warn(&format!("error: {e}"));
    }
    let failed = |kept: bool| {
        report
            .iter()
            .filter(|r| r.result == ReloadResult::Failed && r.kept == kept)
            .count()
    };
    match (failed(true), failed(false)) {
        (0, 0) if all.settings_error.is_none() => Ok(()),
        (kept, not_served) => Err(CtlError::ReloadFailed {
            kept,
            not_served,
            settings: all.settings_error.is_some(),
        }),
    }
}

fn format_reload(report: &[RouteReload], headers: bool) -> String {
    let rows: Vec<Vec<String>> = report
        .iter()
        .map(|r| {
            let detail = match r.result {
                ReloadResult::Failed if r.kept => format!("keeps its certificate: {}", r.error),
                ReloadResult::Failed => format!("not served: {}", r.error),
                _ if r.not_after.is_empty() => String::new(),
                _ => format!("valid until {}", r.not_after),
            };
            let mut detail = detail;
            for w in &r.warnings {
                let _ = write!(detail, "; warning: {w}");
            }
            vec![
                r.listener.clone(),
                r.hostname.clone(),
                r.result.as_str().to_owned(),
                detail,
            ]
        })
        .collect();
    let mut out = table(
        headers.then_some(&["LISTENER", "ROUTE", "RESULT", "DETAIL"][..]),
        &rows,
    );
    if headers && report.is_empty() {
        out.push_str("(no L7 routes: nothing to reload)\n");
    }
    out
}
