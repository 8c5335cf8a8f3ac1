//! The fleet poll: every [`INTERVAL`], each context's daemon is asked for its status and its
//! routes' counters, and the node the console shows for the cluster registry; the round goes
//! to the app as one [`DaemonMsg::Fleet`].
//!
//! I/O: the admin sockets of every context (SSH-forwarded ones included), at most
//! [`TIMEOUT`] each and all at once, so one slow node delays a round by that much at most and
//! never stops the others. A client is kept per socket between rounds and dropped on error.
//! The node the console shows is always polled, as "(socket)" when no context names its
//! socket. The task ends when the console does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mc_proxy_shared::client::AdminClient;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::app::DaemonMsg;
use super::fleet::{Poll, Reading, Sample};
use crate::contexts::Context;

/// Time between two rounds, and so the window of the fleet view's rates.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Longest wait for one node in a round.
pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// The name of the console's own socket when no context names it.
pub const OWN_SOCKET: &str = "(socket)";

/// Starts the poll of `contexts`; `current` is the socket the console shows (it changes when
/// the operator switches nodes).
pub fn spawn(
    contexts: Vec<Context>,
    current: watch::Receiver<PathBuf>,
    msgs: mpsc::Sender<DaemonMsg>,
) -> JoinHandle<()> {
    tokio::spawn(run(contexts, current, msgs))
}

async fn run(
    contexts: Vec<Context>,
    current: watch::Receiver<PathBuf>,
    msgs: mpsc::Sender<DaemonMsg>,
) {
    let mut clients: HashMap<PathBuf, AdminClient> = HashMap::new();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let own = current.borrow().clone();
        let mut targets = contexts.clone();
        if !targets.iter().any(|c| c.socket == own) {
            targets.insert(
                0,
                Context {
                    name: OWN_SOCKET.into(),
                    socket: own.clone(),
                },
            );
        }
        let rounds = targets.into_iter().map(|c| {
            let client = clients.remove(&c.socket);
            async move {
                let (reading, client) = read(&c.socket, client).await;
                (c, reading, client)
            }
        });
        let mut samples = Vec::new();
        let mut own_is_cluster = false;
        for (context, reading, client) in futures_util::future::join_all(rounds).await {
            if let Some(client) = client {
                clients.insert(context.socket.clone(), client);
            }
            if context.socket == own
                && let Ok(r) = &reading
            {
                own_is_cluster = r.status.cluster.is_some();
            }
            samples.push(Sample {
                context: context.name,
                socket: context.socket,
                reading,
            });
        }
        let registry = match clients.get_mut(&own) {
            Some(client) if own_is_cluster => Some(
                match tokio::time::timeout(TIMEOUT, client.cluster_status()).await {
                    Ok(Ok(status)) => Ok(status),
                    Ok(Err(e)) => Err(short(&e.to_string())),
                    Err(_) => Err(format!("no answer in {}ms", TIMEOUT.as_millis())),
                },
            ),
            _ => None,
        };
        let poll = Poll {
            at: Instant::now(),
            current: own,
            samples,
            registry,
        };
        if msgs.send(DaemonMsg::Fleet(poll)).await.is_err() {
            return;
        }
    }
}

/// One node's status and routes; the client back when it is still good.
async fn read(
    socket: &std::path::Path,
    client: Option<AdminClient>,
) -> (Result<Reading, String>, Option<AdminClient>) {
    let work = async {
        let mut client = match client {
            Some(client) => client,
            None => AdminClient::connect(socket)
                .await
                .map_err(|e| e.to_string())?,
        };
        let status = client.status().await.map_err(|e| e.to_string())?;
        let routes = client.list_routes(None).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((Reading { status, routes }, client))
    };
    match tokio::time::timeout(TIMEOUT, work).await {
        Ok(Ok((reading, client))) => (Ok(reading), Some(client)),
        Ok(Err(e)) => (Err(short(&e)), None),
        Err(_) => (Err(format!("no answer in {}ms", TIMEOUT.as_millis())), None),
    }
}

/// An error for one line of the view: its first line, at most 200 characters.
fn short(e: &str) -> String {
    crate::format::fit::end(e.lines().next().unwrap_or_default(), 200)
}
