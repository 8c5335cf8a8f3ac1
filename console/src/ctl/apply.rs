//! `mcproxyctl diff -f FILE` and `mcproxyctl apply -f FILE [--prune] [--dry-run]`: the
//! daemon made to match a file of listeners, routes and firewall rules (`crate::declared`
//! reads it and plans the changes).
//!
//! I/O: the file, the admin socket (through the caller's client), stdout and stderr. The
//! admin API has no multi-change transaction, so apply is change by change in the plan's safe
//! order: the first refusal stops it, naming the file, listener and route, and lists what was
//! applied before it (its exit status is the refusal's: 1, or 5/6 on a cluster node). On a
//! cluster node each change is fleet-wide as it is made (the daemon writes it through etcd).

use mc_proxy_shared::client::{AdminClient, ClientError};
use mc_proxy_shared::{AdminState, Route};

use super::{CtlError, emit, print_warnings, warn};
use crate::cli::ApplyArgs;
use crate::declared::{Change, Declared, Plan, plan};

/// `diff`: the plan, printed; exit status 1 when something differs (`kubectl diff`'s
/// convention), 0 with "no changes".
pub(super) async fn diff(client: &mut AdminClient, args: &ApplyArgs) -> Result<(), CtlError> {
    let (declared, plan) = load_and_plan(client, args).await?;
    emit(&plan.text())?;
    match plan.changes.len() {
        0 => Ok(()),
        n => Err(CtlError::Refused(format!(
            "{n} change(s) to make: mcproxyctl apply -f {} makes them",
            declared.file
        ))),
    }
}

/// `apply`: each change of the plan made and printed as it is made; `dry_run` prints the plan
/// and changes nothing.
pub(super) async fn apply(
    client: &mut AdminClient,
    args: &ApplyArgs,
    dry_run: bool,
) -> Result<(), CtlError> {
    let (declared, plan) = load_and_plan(client, args).await?;
    if dry_run || plan.changes.is_empty() {
        return emit(&plan.text());
    }
    let mut applied: Vec<String> = Vec::new();
    for change in &plan.changes {
        if let Err(e) = make(client, change).await {
            warn(&format!(
                "mcproxyctl: {}: {} refused: {change}",
                declared.file,
                context(change)
            ));
            if applied.is_empty() {
                warn("nothing was applied (apply is change by change, not one transaction)");
            } else {
                warn(&format!(
                    "applied before it ({} change(s), kept: apply is change by change, not one \
                     transaction):",
                    applied.len()
                ));
                for line in &applied {
                    warn(&format!("  {line}"));
                }
            }
            return Err(e);
        }
        let line = change.to_string();
        emit(&format!("{line}\n"))?;
        applied.push(line);
    }
    let kept = Plan {
        changes: Vec::new(),
        kept: plan.kept,
    };
    if !kept.kept.is_empty() {
        let text = kept.text();
        emit(text.trim_end_matches("no changes\n"))?;
    }
    emit(&format!(
        "applied {} change(s) from {}\n",
        applied.len(),
        declared.file
    ))
}

/// The file, checked, and the plan against what the daemon has now. A file refused, or one
/// naming a listener the daemon lacks, is a usage error (2): nothing was sent.
async fn load_and_plan(
    client: &mut AdminClient,
    args: &ApplyArgs,
) -> Result<(Declared, Plan), CtlError> {
    let declared = Declared::load(&args.file).map_err(|e| CtlError::Usage(e.to_string()))?;
    for note in &declared.notes {
        warn(&format!("{}: {note}", declared.file));
    }
    let status = client.status().await?;
    let routes = client.list_routes(None).await?;
    let rules = client.firewall_rules().await?;
    let plan = plan(&declared, &status.listeners, &routes, &rules, args.prune)
        .map_err(|e| CtlError::Usage(e.to_string()))?;
    Ok((declared, plan))
}

/// `listener L, route R` (or `firewall`): what a refusal names.
fn context(change: &Change) -> String {
    match change {
        Change::AddRule(_) | Change::RemoveRule(_) => "firewall:".into(),
        Change::AddRoute { label, route, .. } => {
            format!("listener {label}, route {}:", route.hostname)
        }
        Change::UpdateRoute {
            label, hostname, ..
        }
        | Change::RemoveRoute {
            label, hostname, ..
        } => format!("listener {label}, route {hostname}:"),
        Change::UpdateListener { label, .. } => format!("listener {label}:"),
    }
}

/// One change through the admin API (a route's member states one call each).
async fn make(client: &mut AdminClient, change: &Change) -> Result<(), CtlError> {
    match change {
        Change::AddRule(rule) => {
            client.add_firewall_rule(rule.clone()).await?;
        }
        Change::RemoveRule(rule) => client.remove_firewall_rule(rule.clone()).await?,
        Change::AddRoute {
            listener, route, ..
        } => {
            let (added, warnings) = client.add_route(listener, route.clone()).await?;
            print_warnings(&warnings)?;
            let states: Vec<(String, AdminState)> = route
                .backends
                .iter()
                .map(|b| (b.address.clone(), b.state))
                .collect();
            set_states(client, listener, &added, &states).await?;
        }
        Change::UpdateRoute {
            listener,
            hostname,
            patch,
            states,
            ..
        } => {
            let now = match patch {
                Some(patch) => {
                    let (route, warnings) = client
                        .update_route(listener, hostname, patch.clone())
                        .await?;
                    print_warnings(&warnings)?;
                    route
                }
                None => Route {
                    hostname: hostname.clone(),
                    ..Route::default()
                },
            };
            set_states(client, listener, &now, states).await?;
        }
        Change::UpdateListener {
            listener, update, ..
        } => {
            let (_, warnings) = client.update_listener(listener, update.clone()).await?;
            print_warnings(&warnings)?;
        }
        Change::RemoveRoute {
            listener, hostname, ..
        } => client.remove_route(listener, hostname).await?,
    }
    Ok(())
}

/// SetBackendState for each member of `route` (as the daemon answered) whose admin state is
/// not the file's; a member missing from the answer is set too.
async fn set_states(
    client: &mut AdminClient,
    listener: &str,
    route: &Route,
    states: &[(String, AdminState)],
) -> Result<(), ClientError> {
    for (address, state) in states {
        let now = route
            .backends
            .iter()
            .find(|b| b.address.eq_ignore_ascii_case(address))
            .map(|b| b.state);
        if now != Some(*state) {
            client
                .set_backend_state(listener, &route.hostname, address, *state)
                .await?;
        }
    }
    Ok(())
}
