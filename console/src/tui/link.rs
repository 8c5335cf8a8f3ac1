//! The console's connection to the daemon: one background task that connects, subscribes to
//! events, fetches a snapshot, forwards events and carries out actions; when the daemon goes
//! away it tries once more at once (after a session that had lasted: an upgraded daemon is
//! already accepting on the same socket), then reports `Disconnected` and retries every
//! second until it is back.
//!
//! I/O: the admin socket. The event subscription starts before the snapshot is fetched, so no
//! change falls between the two (the app tolerates seeing one twice). While the connections
//! view is shown (`Action::Watch`), the open connections are polled once a second (the
//! talkers while the talkers view is);
//! the wish survives reconnects. `SwitchNode` ends the stretch and starts one with another
//! daemon at once; the fleet poll (`fleet_link`) is told which socket is shown now.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use mc_proxy_shared::Route;
use mc_proxy_shared::client::{AdminClient, ClientError, RoutePatch};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::app::{Action, DaemonMsg, View};
use super::fleet_link;
use crate::contexts::Context;

/// Starts the link to `socket`, and the fleet poll of `contexts` with it; returns their
/// messages, the way to send actions, and the link's task (the poll ends with the console).
pub fn spawn(
    socket: PathBuf,
    contexts: Vec<Context>,
) -> (
    mpsc::Receiver<DaemonMsg>,
    mpsc::Sender<Action>,
    JoinHandle<()>,
) {
    let (msg_tx, msg_rx) = mpsc::channel(1024);
    let (action_tx, action_rx) = mpsc::channel(8);
    let (current_tx, current_rx) = watch::channel(socket.clone());
    fleet_link::spawn(contexts, current_rx, msg_tx.clone());
    let task = tokio::spawn(run(socket, msg_tx, action_rx, current_tx));
    (msg_rx, action_tx, task)
}

/// How long a session must have lasted for its end to be retried at once.
const RECONNECT_AT_ONCE_AFTER: Duration = Duration::from_secs(1);

/// How many connections one poll asks for: more than a screen can show many times over, few
/// enough that a poll stays cheap for the daemon.
pub const POLL_LIMIT: u32 = 2000;

/// Why a connected stretch ended.
enum End {
    /// The console is gone.
    Gone,
    /// The operator switched to the node behind this socket.
    Switch(PathBuf),
}

async fn run(
    mut socket: PathBuf,
    msgs: mpsc::Sender<DaemonMsg>,
    mut actions: mpsc::Receiver<Action>,
    current: watch::Sender<PathBuf>,
) {
    // What the view on show needs polled (the connections, the talkers), if anything.
    let mut watch = View::Routes;
    loop {
        let began = tokio::time::Instant::now();
        let reason = match session(&socket, &msgs, &mut actions, &mut watch).await {
            Ok(End::Gone) => return,
            Ok(End::Switch(to)) => {
                socket = to;
                current.send_replace(socket.clone());
                continue;
            }
            Err(reason) => reason,
        };
        // A session that had been working ended (`mc-proxy upgrade` hands the socket to a new
        // process that already accepts): one attempt at once, with no `Disconnected` flash if
        // it works. One that fails fast is reported and retried after the wait below, so a
        // daemon that keeps closing connections is not hammered.
        if began.elapsed() >= RECONNECT_AT_ONCE_AFTER {
            continue;
        }
        if msgs.send(DaemonMsg::Disconnected(reason)).await.is_err() {
            return;
        }
        // Wait a second before retrying; refuse actions meanwhile (a switch goes at once).
        let retry = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(retry);
        loop {
            tokio::select! {
                () = &mut retry => break,
                action = actions.recv() => {
                    let Some(action) = action else { return };
                    match action {
                        Action::Watch(view) => {
                            watch = view;
                            continue;
                        }
                        Action::SwitchNode { socket: to, .. } => {
                            socket = to;
                            current.send_replace(socket.clone());
                            break;
                        }
                        _ => {}
                    }
                    let refused = DaemonMsg::ActionDone(Err("not connected to the daemon".into()));
                    if msgs.send(refused).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// One connected stretch, until the console goes or the operator switches (`Ok`), or the
/// daemon goes (`Err`, why).
async fn session(
    socket: &PathBuf,
    msgs: &mpsc::Sender<DaemonMsg>,
    actions: &mut mpsc::Receiver<Action>,
    watch: &mut View,
) -> Result<End, String> {
    let short = |e: ClientError| match e {
        ClientError::Connect { reason, .. } => reason,
        other => other.to_string(),
    };
    let mut client = AdminClient::connect(socket).await.map_err(short)?;
    let mut events = Box::pin(client.watch_events().await.map_err(short)?);
    let status = client.status().await.map_err(short)?;
    let routes = client.list_routes(None).await.map_err(short)?;
    let rules = client.firewall_rules().await.map_err(short)?;
    if msgs
        .send(DaemonMsg::Snapshot {
            status,
            routes,
            rules,
        })
        .await
        .is_err()
    {
        return Ok(End::Gone);
    }
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            _ = poll.tick(), if matches!(*watch, View::Connections | View::Talkers) => {
                let polled = if *watch == View::Connections {
                    client.list_connections(POLL_LIMIT).await.map(DaemonMsg::Connections)
                } else {
                    client.talkers(0).await.map(DaemonMsg::Talkers)
                };
                match polled {
                    Ok(msg) => msg,
                    Err(e) => return Err(short(e)),
                }
            }
            event = events.next() => match event {
                Some(Ok(event)) => DaemonMsg::Event(event),
                Some(Err(e)) => return Err(short(e)),
                None => return Err("the daemon closed the event stream".into()),
            },
            action = actions.recv() => match action {
                Some(Action::Watch(view)) => {
                    *watch = view;
                    // Poll at once rather than up to a second later.
                    poll.reset_immediately();
                    continue;
                }
                Some(Action::SwitchNode { socket, .. }) => return Ok(End::Switch(socket)),
                Some(action) => DaemonMsg::ActionDone(perform(&mut client, action).await),
                None => return Ok(End::Gone),
            },
        };
        if msgs.send(msg).await.is_err() {
            return Ok(End::Gone);
        }
    }
}

/// A certificate path typed into a form, made absolute against the console's working
/// directory as `mcproxyctl routes add` does (the daemon refuses relative ones).
fn absolute(path: String) -> Result<String, String> {
    crate::paths::absolute_path(&path).map_err(|e| e.to_string())
}

/// The fields an edit changed, paths typed anew made absolute. A path left as it was (say a
/// relative one from the TOML) is not sent, so it keeps its meaning.
fn patch(before: &Route, after: Route) -> Result<RoutePatch, String> {
    fn changed<T: PartialEq>(old: &T, new: T) -> Option<T> {
        (*old != new).then_some(new)
    }
    Ok(RoutePatch {
        hostname: changed(&before.hostname, after.hostname),
        backends: changed(&before.backends, after.backends),
        balance: changed(&before.balance, after.balance),
        health_check: changed(&before.health_check, after.health_check),
        mode: changed(&before.mode, after.mode),
        tls_cert: changed(&before.tls_cert, after.tls_cert)
            .map(absolute)
            .transpose()?,
        tls_key: changed(&before.tls_key, after.tls_key)
            .map(absolute)
            .transpose()?,
        backend_tls: changed(&before.backend_tls, after.backend_tls),
        send_proxy_protocol: changed(&before.send_proxy_protocol, after.send_proxy_protocol),
        backend_protocol: changed(&before.backend_protocol, after.backend_protocol),
        access_log: changed(&before.access_log, after.access_log),
        // The form does not edit them: left as the route has them.
        limits: Default::default(),
        acme: changed(&before.acme, after.acme),
    })
}

/// Carries out one action; the text is shown to the operator either way.
async fn perform(client: &mut AdminClient, action: Action) -> Result<String, String> {
    let result = match action {
        Action::AddRoute {
            listener,
            mut route,
        } => {
            route.tls_cert = absolute(route.tls_cert)?;
            route.tls_key = absolute(route.tls_key)?;
            client
                .add_route(&listener, route)
                .await
                .map(|(r, w)| with_warnings(format!("added route {}", r.hostname), &w))
        }
        Action::UpdateRoute {
            listener,
            before,
            route,
        } => {
            let patch = patch(&before, route)?;
            client
                .update_route(&listener, &before.hostname, patch)
                .await
                .map(|(r, w)| with_warnings(format!("updated route {}", r.hostname), &w))
        }
        Action::SetBackendState {
            listener,
            hostname,
            address,
            state,
        } => client
            .set_backend_state(&listener, &hostname, &address, state)
            .await
            .map(|r| format!("backend {address} of route {}: {state}", r.hostname)),
        Action::SetBackendWeight {
            listener,
            hostname,
            address,
            weight,
        } => client
            .set_backend(&listener, &hostname, &address, None, Some(weight))
            .await
            .map(|r| format!("backend {address} of route {}: weight {weight}", r.hostname)),
        Action::CloseConnection { id } => client
            .close_connection(id)
            .await
            .map(|()| format!("closed connection #{id}")),
        Action::RemoveRoute { listener, hostname } => client
            .remove_route(&listener, &hostname)
            .await
            .map(|()| format!("deleted route {hostname}")),
        Action::AddRule(rule) => client
            .add_firewall_rule(rule)
            .await
            .map(|r| format!("blocked {} {}", r.kind, r.value)),
        Action::RemoveRule(rule) => {
            let text = format!("unblocked {} {}", rule.kind, rule.value);
            client.remove_firewall_rule(rule).await.map(|()| text)
        }
        Action::Quit | Action::Watch(_) | Action::SwitchNode { .. } => Ok(String::new()),
    };
    result.map_err(|e| match e {
        ClientError::Rpc(status) => status.message().to_owned(),
        other => other.to_string(),
    })
}

fn with_warnings(text: String, warnings: &[String]) -> String {
    if warnings.is_empty() {
        text
    } else {
        format!("{text} (warning: {})", warnings.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mc_proxy_shared::Mode;

    #[test]
    fn an_edit_sends_only_what_changed_and_new_paths_absolute() {
        let before = Route {
            hostname: "web.test".into(),
            backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9080")],
            mode: Mode::L7,
            tls_cert: "srv/certs/web.test.pem".into(),
            tls_key: "srv/certs/web.test.key".into(),
            ..Route::default()
        };
        let mut after = before.clone();
        after.backends = vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9081")];
        let p = patch(&before, after.clone()).unwrap();
        assert_eq!(
            p,
            RoutePatch {
                backends: Some(vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9081")]),
                ..RoutePatch::default()
            },
            "an untouched relative path is not sent"
        );
        after.tls_cert = "new.pem".into();
        let p = patch(&before, after).unwrap();
        let cert = p.tls_cert.expect("changed path sent");
        assert!(std::path::Path::new(&cert).is_absolute(), "{cert}");
        assert!(cert.ends_with("/new.pem"), "{cert}");
        assert_eq!(p.tls_key, None);

        let after = Route {
            backend_protocol: mc_proxy_shared::BackendProtocol::Http1,
            ..before.clone()
        };
        assert_eq!(
            patch(&before, after).unwrap(),
            RoutePatch {
                backend_protocol: Some(mc_proxy_shared::BackendProtocol::Http1),
                ..RoutePatch::default()
            },
            "a changed protocol alone is sent alone"
        );
    }
}
