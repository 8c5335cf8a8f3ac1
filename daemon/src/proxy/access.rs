//! The access record of one connection: what is known about it as the pipeline learns it, the
//! connection events, and the one log line at close.
//!
//! No I/O of its own (the log goes to `tracing`, events to the bus, which never waits). The
//! pipeline fills a [`Record`] step by step and ends with one call to [`closed`], fed a plain
//! [`Ending`]: this module knows nothing of the pipeline's error types.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mc_proxy_shared::{BlockedReason, Outcome};
use tracing::Level;

use crate::model::conns::Live;
use crate::model::events::Event;
use crate::model::routes::RouteInfo;
use crate::model::state::{ListenerState, State};

/// What is known about a connection, for its events and its log line.
#[derive(Debug)]
pub struct Record {
    /// Unique per daemon run; ties the events of one connection together.
    pub id: u64,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The address the connection was accepted on.
    pub local: Option<SocketAddr>,
    /// The real client: the peer, or the source of its PROXY header.
    pub client: SocketAddr,
    /// The SNI, once read.
    pub sni: Option<String>,
    /// The route, once matched.
    pub route: Option<Arc<RouteInfo>>,
    /// L4: the member dialled (the last one tried, if none answered).
    pub backend: Option<Arc<str>>,
    /// Bytes each way (shared with the relay or the L7 server, which count on the client
    /// stream) and an operator's close, shared with the connection registry.
    pub live: Arc<Live>,
}

impl Record {
    /// A connection just accepted from `peer`.
    pub fn new(id: u64, peer: SocketAddr, local: Option<SocketAddr>) -> Record {
        Record {
            id,
            peer,
            local,
            client: peer,
            sni: None,
            route: None,
            backend: None,
            live: Arc::default(),
        }
    }
}

/// How a connection ended, as the access record needs it.
#[derive(Debug)]
pub struct Ending {
    /// Reset or closed, and why.
    pub outcome: Outcome,
    /// What went wrong, if anything (the error's text).
    pub error: Option<String>,
    /// Whose fault it was decides the level: the operator's (backend, config) warn, everything
    /// else (clients, policy, normal closes) info; refusals by a client limit debug.
    pub level: Level,
}

/// Publishes `connection_opened`: an L7 connection once routed, an L4 one once its backend
/// answered the dial, so that the event names the member it went to.
pub fn opened(record: &Record, listener: SocketAddr, route: &Arc<RouteInfo>, state: &State) {
    state.events.publish(|| Event::ConnectionOpened {
        id: record.id,
        listener,
        client: record.client,
        sni: record.sni.clone().unwrap_or_default(),
        route: Arc::clone(route),
        backend: record.backend.clone(),
    });
}

/// Publishes `connection_blocked` for a connection refused by policy.
pub fn blocked(record: &Record, listener: &ListenerState, reason: BlockedReason, state: &State) {
    state.events.publish(|| Event::ConnectionBlocked {
        listener: listener.addr,
        // An untrusted PROXY sender is named by its TCP address: its header was never read.
        client: match reason {
            BlockedReason::UntrustedProxy => record.peer,
            _ => record.client,
        },
        reason,
    });
}

/// The end of a connection: the access log line and `connection_closed`.
pub fn closed(
    record: &Record,
    listener: &ListenerState,
    ending: &Ending,
    elapsed: Duration,
    state: &State,
) {
    log_close(record, ending, elapsed, state.node());
    if let Outcome::Closed(reason) = ending.outcome {
        listener.counters.count_close(reason);
    }
    state.events.publish(|| Event::ConnectionClosed {
        id: record.id,
        listener: listener.addr,
        client: record.client,
        sni: record.sni.clone(),
        route: record.route.clone(),
        backend: record.backend.clone(),
        bytes_in: record.live.bytes.up.load(Ordering::Relaxed),
        bytes_out: record.live.bytes.down.load(Ordering::Relaxed),
        duration: elapsed,
        outcome: ending.outcome,
        error: ending.error.clone(),
    });
}

/// The access log: one line per connection, at close. The connection's span carries its id,
/// listener, client and route; the event adds what happened.
fn log_close(record: &Record, ending: &Ending, elapsed: Duration, node: Option<&str>) {
    macro_rules! access_log {
        ($lvl:expr) => {
            tracing::event!(
                $lvl,
                sni = record.sni.as_deref().unwrap_or("-"),
                // A string field, so that it is quoted: the route's set (`a:1, b:2`) holds
                // spaces, which broke logfmt parsers as a bare value.
                backend = Backend(record).to_string().as_str(),
                bytes_up = record.live.bytes.up.load(Ordering::Relaxed),
                bytes_down = record.live.bytes.down.load(Ordering::Relaxed),
                duration_ms = elapsed.as_millis() as u64,
                outcome = ending.outcome.as_str(),
                // Left out when nothing failed (most lines): no `error=""`.
                error = ending.error.as_deref(),
                // A cluster node's name; absent on a single node.
                node,
                "connection closed"
            )
        };
    }
    // `tracing::event!` wants a constant level.
    match ending.level {
        Level::WARN => access_log!(Level::WARN),
        // Refusals by a client limit: a flood would write a line per connection; the pipeline
        // writes a rate-limited warning instead.
        Level::DEBUG => access_log!(Level::DEBUG),
        _ => access_log!(Level::INFO),
    }
}

/// The access log's `backend`: the member dialled (L4), else the route's set, else `-`.
struct Backend<'a>(&'a Record);

impl std::fmt::Display for Backend<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.0.backend, &self.0.route) {
            (Some(b), _) => f.write_str(b),
            (None, Some(r)) => f.write_str(&r.route.backend_list()),
            (None, None) => f.write_str("-"),
        }
    }
}
