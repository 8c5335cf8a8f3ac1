//! `mcproxyctl diff -f FILE` and `mcproxyctl apply -f FILE [--prune] [--dry-run]`: the
//! daemon made to match a file of listeners, routes and firewall rules (`crate::declared`
//! reads it and plans the changes).
//!
//! I/O: the file, the admin socket (through the caller's client), stdout and stderr. The plan
//! is sent as one change set (`ApplyChanges`): the daemon checks every change before making
//! the first, so a refusal changes nothing and names the file, listener and route of the
//! change it refused; on a cluster node the set is one transaction in the fleet's store. The
//! one exception: a listener's `no_sni_route` naming a route the same plan adds goes in a
//! second set after the first (the daemon checks a set against what exists before it), and
//! the output says so.

use mc_proxy_shared::client::{AdminClient, SetChange};

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

/// `apply`: the plan made as one change set (two when a `no_sni_route` names a route it adds)
/// and printed once made; `dry_run` prints the plan and changes nothing.
pub(super) async fn apply(
    client: &mut AdminClient,
    args: &ApplyArgs,
    dry_run: bool,
) -> Result<(), CtlError> {
    let (declared, plan) = load_and_plan(client, args).await?;
    if dry_run || plan.changes.is_empty() {
        return emit(&plan.text());
    }
    let (first, second) = sets(&plan.changes);
    let mut applied = 0;
    for (n, set) in [first, second].into_iter().enumerate() {
        if set.is_empty() {
            continue;
        }
        let items = set.iter().map(|c| set_change(c)).collect();
        match client.apply_changes(items).await {
            Ok(warnings) => {
                for change in &set {
                    emit(&format!("{change}\n"))?;
                }
                print_warnings(&warnings)?;
                applied += set.len();
            }
            Err(e) => {
                // A refusal of the whole set (the store away) names its change when it has one.
                let index = e.change_index().or((set.len() == 1).then_some(1));
                match index.and_then(|i| set.get(i.wrapping_sub(1))) {
                    Some(change) => warn(&format!(
                        "mcproxyctl: {}: {} refused: {change}",
                        declared.file,
                        context(change)
                    )),
                    None => warn(&format!(
                        "mcproxyctl: {}: the change set was refused",
                        declared.file
                    )),
                }
                if n == 0 {
                    warn("nothing was applied: the set is all or nothing");
                } else {
                    warn(&format!(
                        "applied before it ({applied} change(s), kept): the first set; this one \
                         sets a no_sni_route to a route the first set added"
                    ));
                }
                return Err(e.into());
            }
        }
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
        "applied {applied} change(s) from {}\n",
        declared.file
    ))
}

/// The plan as change sets: everything, but a listener update whose `no_sni_route` names a
/// route the plan adds on that listener, which needs the route to exist when it is checked.
fn sets(changes: &[Change]) -> (Vec<&Change>, Vec<&Change>) {
    let added = |listener: &str, hostname: &str| {
        changes.iter().any(|c| {
            matches!(c, Change::AddRoute { listener: l, route, .. }
                if l == listener && route.hostname.eq_ignore_ascii_case(hostname))
        })
    };
    changes.iter().partition(|c| match c {
        Change::UpdateListener {
            listener, update, ..
        } => !update
            .no_sni_route
            .as_deref()
            .is_some_and(|h| added(listener, h.trim())),
        _ => true,
    })
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

/// A change of the plan as the admin API's change set takes it.
fn set_change(change: &Change) -> SetChange {
    match change.clone() {
        Change::AddRule(rule) => SetChange::AddRule(rule),
        Change::RemoveRule(rule) => SetChange::RemoveRule(rule),
        Change::AddRoute {
            listener, route, ..
        } => SetChange::AddRoute { listener, route },
        Change::UpdateRoute {
            listener,
            hostname,
            patch,
            ..
        } => SetChange::UpdateRoute {
            listener,
            hostname,
            patch,
        },
        Change::UpdateListener {
            listener, update, ..
        } => SetChange::UpdateListener { listener, update },
        Change::RemoveRoute {
            listener, hostname, ..
        } => SetChange::RemoveRoute { listener, hostname },
    }
}
