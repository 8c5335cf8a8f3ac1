//! The live event stream: connection opened/closed, blocks, route and firewall changes, route
//! members changing state, stats ticks.
//!
//! No I/O. Events are daemon types ([`Event`]: addresses, `Arc<RouteInfo>`, the shared enums),
//! so the data plane never builds a wire message; the admin API converts them to protobuf for
//! its watchers. They go into a bounded `tokio::sync::broadcast` ring. Publishing never waits:
//! with no subscriber nothing is even built, and a subscriber that reads too slowly loses the
//! oldest events and is told how many (`RecvError::Lagged`). Invariant: the data path never
//! blocks on an observer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mc_proxy_shared::{BlockedReason, ChangeAction, FirewallRule, MemberStats, Outcome, Route};
use tokio::sync::broadcast;

use crate::model::routes::RouteInfo;

/// Who made a change: what its events carry and its log lines say (`change{id=.. by=..}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Unique per daemon run, counted from 1: ties a change's events and log lines together.
    pub change: u64,
    /// Who asked for it.
    pub caller: Caller,
}

/// Who asked for a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A client of the admin socket, as the kernel names it (`SO_PEERCRED`): the socket is
    /// 0600, so this is the daemon's user or root, and the process tells which tool or script.
    Socket {
        /// The peer's user id.
        uid: u32,
        /// The peer's process id, where the kernel gives it.
        pid: Option<u32>,
        /// The peer process's name (`/proc/PID/comm`); empty if it could not be read.
        process: String,
    },
    /// A signal to the daemon (SIGHUP).
    Signal(&'static str),
    /// No caller known: an admin connection without credentials, the control plane's tests.
    Unknown,
    /// A change another node of the fleet (or this one, through its own admin API) wrote to
    /// the cluster store, applied here when the store's watch delivered it.
    Node {
        /// The node whose admin API took the change.
        node: String,
        /// Who asked it there, in that node's words.
        by: String,
    },
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Socket { uid, pid, process } => {
                write!(f, "uid {uid}")?;
                if let Some(pid) = pid {
                    write!(f, " pid {pid}")?;
                }
                if !process.is_empty() {
                    write!(f, " ({process})")?;
                }
                Ok(())
            }
            Caller::Signal(name) => f.write_str(name),
            Caller::Unknown => f.write_str("unknown"),
            Caller::Node { node, by } => write!(f, "node {node}: {by}"),
        }
    }
}

/// Default events buffered per subscriber before it lags.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Something that happened, as the daemon knows it.
#[derive(Debug, Clone)]
pub enum Event {
    /// A connection was routed.
    ConnectionOpened {
        /// Connection id (unique per daemon run).
        id: u64,
        /// The listener's configured address.
        listener: SocketAddr,
        /// The real client (from the PROXY header when there was one).
        client: SocketAddr,
        /// The SNI it sent.
        sni: String,
        /// The route it matched.
        route: Arc<RouteInfo>,
        /// The member chosen, if one is by now (`None`: see the route's set).
        backend: Option<Arc<str>>,
    },
    /// A connection ended, routed or not.
    ConnectionClosed {
        /// Connection id.
        id: u64,
        /// The listener's configured address.
        listener: SocketAddr,
        /// The real client.
        client: SocketAddr,
        /// The SNI, when it got that far.
        sni: Option<String>,
        /// The route, when it got that far.
        route: Option<Arc<RouteInfo>>,
        /// L4: the member it went to (or last tried). L7: `None` (each request picks one).
        backend: Option<Arc<str>>,
        /// Client to backend bytes.
        bytes_in: u64,
        /// Backend to client bytes.
        bytes_out: u64,
        /// Lifetime.
        duration: Duration,
        /// How it ended.
        outcome: Outcome,
        /// What went wrong, if anything.
        error: Option<String>,
    },
    /// A connection was refused by policy.
    ConnectionBlocked {
        /// The listener's configured address.
        listener: SocketAddr,
        /// The client (for an untrusted PROXY sender: the TCP peer).
        client: SocketAddr,
        /// Which policy.
        reason: BlockedReason,
    },
    /// A route was added, updated or removed.
    RouteChanged {
        /// The listener's configured address.
        listener: SocketAddr,
        /// What happened.
        action: ChangeAction,
        /// The route after the change (before it, for a removal).
        route: Route,
        /// For an update: the hostname before the change.
        previous_hostname: Option<String>,
        /// Who changed it.
        origin: Origin,
    },
    /// A firewall rule was added or removed.
    FirewallChanged {
        /// What happened.
        action: ChangeAction,
        /// The rule, normalised.
        rule: FirewallRule,
        /// Who changed it.
        origin: Origin,
    },
    /// A listener was added, its settings updated, or it was removed.
    ListenerChanged {
        /// The listener's configured address.
        listener: SocketAddr,
        /// What happened.
        action: ChangeAction,
        /// Who changed it.
        origin: Origin,
    },
    /// A route member changed state (up, down, ejected, draining, disabled).
    BackendChanged {
        /// The listener's configured address.
        listener: SocketAddr,
        /// The route's hostname.
        route: String,
        /// The member's figures after the change.
        member: MemberStats,
        /// An operator's change (drain, weight, ...); `None` for what health checking found.
        origin: Option<Origin>,
    },
    /// An L7 route's certificate ends within `EXPIRY_WARN_DAYS` days or has ended
    /// (`control::expiry`: at start and every 6 hours).
    CertificateExpiring {
        /// The listener's configured address.
        listener: SocketAddr,
        /// The route's hostname.
        route: String,
        /// The certificate's end, seconds since the Unix epoch.
        not_after: u64,
    },
    /// An ACME order ended: a certificate issued (and served), or why it failed.
    AcmeOrder {
        /// The route's hostname.
        route: String,
        /// The new certificate's end, seconds since the Unix epoch; `None`: it failed.
        not_after: Option<u64>,
        /// Why it failed.
        error: Option<String>,
    },
    /// A cluster node's link to the fleet's store changed state (connected, lost, back).
    ClusterLink(crate::model::cluster::ClusterView),
    /// About a second passed: watchers send a snapshot of the counters as they read this.
    StatsTick,
}

/// An event and when it was published.
#[derive(Debug, Clone)]
pub struct Timed {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// What happened.
    pub event: Event,
}

/// Fan-out of daemon events to admin API subscribers.
#[derive(Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Timed>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(DEFAULT_CAPACITY)
    }
}

impl EventBus {
    /// A bus keeping up to `capacity` events for a subscriber that has not read them yet.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventBus { tx }
    }

    /// A new subscriber; it sees events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Timed> {
        self.tx.subscribe()
    }

    /// True when someone is listening (so building an event is worth it).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes the event `build` makes, building it only if someone listens.
    pub fn publish(&self, build: impl FnOnce() -> Event) {
        if !self.has_subscribers() {
            return;
        }
        // An error only means the last subscriber left in between: nothing to do.
        let _ = self.tx.send(Timed {
            timestamp_ms: now_ms(),
            event: build(),
        });
    }
}

/// Milliseconds since the Unix epoch: the `timestamp_ms` of every event.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(n: u8) -> Event {
        Event::FirewallChanged {
            action: ChangeAction::Added,
            rule: FirewallRule {
                kind: mc_proxy_shared::FirewallRuleKind::Ip,
                value: format!("192.0.2.{n}"),
            },
            origin: Origin {
                change: 1,
                caller: Caller::Unknown,
            },
        }
    }

    #[test]
    fn nothing_is_built_without_subscribers() {
        let bus = EventBus::new(4);
        let mut built = false;
        bus.publish(|| {
            built = true;
            Event::StatsTick
        });
        assert!(!built);
    }

    #[tokio::test]
    async fn slow_subscriber_loses_the_oldest_events_and_learns_how_many() {
        let bus = EventBus::new(4);
        let mut rx = bus.subscribe();
        for n in 0..10 {
            bus.publish(|| changed(n));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(6))
        ));
        let next = rx.recv().await.unwrap();
        assert!(
            matches!(&next.event, Event::FirewallChanged { rule, .. } if rule.value == "192.0.2.6"),
            "{next:?}"
        );
    }
}
