//! The access record of one connection: what is known about it as the pipeline learns it, the
//! connection events, and the one log line at close.
//!
//! No I/O of its own (the line goes to `logline`'s sink or `tracing`, events to the bus, which never waits). The
//! pipeline fills a [`Record`] step by step and ends with one call to [`closed`], fed a plain
//! [`Ending`]: this module knows nothing of the pipeline's error types.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mc_proxy_shared::{BlockedReason, Outcome};
use tracing::Level;

use crate::model::conns::Live;
use crate::model::events::Event;
use crate::model::logline::{self, Line};
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

/// The tracing target of the connection line: what `RUST_LOG` filters on
/// (`RUST_LOG=info,mc_proxy::access=off`).
pub const TARGET: &str = "mc_proxy::access";

/// The access log: one line per connection, at close. Written outside the connection's span
/// (whose `conn{...}:` prefix repeated the client and the route), with each thing said once;
/// formatted by `logline` when the binary installed it, else through `tracing`.
fn log_close(record: &Record, ending: &Ending, elapsed: Duration, node: Option<&str>) {
    // `tracing::enabled!` wants a constant level.
    let on = match ending.level {
        Level::WARN => tracing::enabled!(target: TARGET, Level::WARN),
        // Refusals by a client limit: a flood would write a line per connection; the
        // pipeline writes a rate-limited warning instead.
        Level::DEBUG => tracing::enabled!(target: TARGET, Level::DEBUG),
        _ => tracing::enabled!(target: TARGET, Level::INFO),
    };
    if !on {
        return;
    }
    let close = Close {
        record,
        ending,
        elapsed,
        node,
    };
    if logline::event(ending.level, TARGET, "connection closed", |line| {
        close.fields(line)
    }) {
        return;
    }
    close.through_tracing();
}

/// One connection line's values.
struct Close<'a> {
    record: &'a Record,
    ending: &'a Ending,
    elapsed: Duration,
    node: Option<&'a str>,
}

impl Close<'_> {
    /// The TCP peer, when a PROXY header made the client another address (the balancer).
    fn peer(&self) -> Option<SocketAddr> {
        (self.record.peer != self.record.client).then_some(self.record.peer)
    }

    fn route(&self) -> Option<&str> {
        self.record.route.as_deref().map(RouteInfo::hostname)
    }

    /// The SNI when the route's name does not say it already (a wildcard route, no route).
    fn sni(&self) -> Option<&str> {
        let sni = self.record.sni.as_deref()?;
        (Some(sni) != self.route()).then_some(sni)
    }

    /// The member dialled (L4), else the route's set (L7: each request line names its own).
    fn backend(&self) -> Option<Cow<'_, str>> {
        match (&self.record.backend, &self.record.route) {
            (Some(b), _) => Some(Cow::Borrowed(&**b)),
            (None, Some(r)) => Some(Cow::Owned(r.route.backend_list())),
            (None, None) => None,
        }
    }

    fn bytes(&self) -> (u64, u64) {
        let bytes = &self.record.live.bytes;
        (
            bytes.up.load(Ordering::Relaxed),
            bytes.down.load(Ordering::Relaxed),
        )
    }

    /// The fields, in the order [`Close::through_tracing`] has them.
    fn fields(&self, line: &mut Line<'_>) {
        let (up, down) = self.bytes();
        line.u64("conn", self.record.id);
        if let Some(local) = self.record.local {
            line.addr("listener", local);
        }
        line.addr("client", self.record.client);
        if let Some(peer) = self.peer() {
            line.addr("peer", peer);
        }
        line.opt_str("route", self.route())
            .opt_str("sni", self.sni())
            .opt_str("backend", self.backend().as_deref())
            .u64("bytes_up", up)
            .u64("bytes_down", down)
            .u64("duration_ms", self.elapsed.as_millis() as u64)
            .str("outcome", self.ending.outcome.as_str())
            // Left out when nothing failed (most lines): no `error=""`.
            .opt_str("error", self.ending.error.as_deref())
            // A cluster node's name; absent on a single node.
            .opt_str("node", self.node);
    }

    /// The same line through `tracing` (no `logline` sink: a library user's or a test's
    /// process).
    fn through_tracing(&self) {
        let (up, down) = self.bytes();
        let backend = self.backend();
        macro_rules! line {
            ($lvl:expr) => {
                tracing::event!(
                    target: TARGET,
                    parent: None,
                    $lvl,
                    conn = self.record.id,
                    listener = self.record.local.map(tracing::field::display),
                    client = %self.record.client,
                    peer = self.peer().map(tracing::field::display),
                    route = self.route(),
                    sni = self.sni(),
                    backend = backend.as_deref(),
                    bytes_up = up,
                    bytes_down = down,
                    duration_ms = self.elapsed.as_millis() as u64,
                    outcome = self.ending.outcome.as_str(),
                    error = self.ending.error.as_deref(),
                    node = self.node,
                    "connection closed"
                )
            };
        }
        match self.ending.level {
            Level::WARN => line!(Level::WARN),
            Level::DEBUG => line!(Level::DEBUG),
            _ => line!(Level::INFO),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use mc_proxy_shared::{CloseReason, Route, RouteBackend};

    use super::*;
    use crate::model::logline::{LineFormat, after_stamp, render, through_subscriber};
    use crate::model::routes::validate_route;

    fn route(hostname: &str) -> Arc<RouteInfo> {
        let valid = validate_route(&Route {
            hostname: hostname.into(),
            backends: vec![
                RouteBackend::new("127.0.0.1:1"),
                RouteBackend::new("127.0.0.1:2"),
            ],
            ..Route::default()
        })
        .unwrap();
        Arc::new(RouteInfo::new(valid, Arc::default()))
    }

    fn ending(level: Level, error: Option<&str>) -> Ending {
        Ending {
            outcome: Outcome::Closed(CloseReason::Closed),
            error: error.map(str::to_owned),
            level,
        }
    }

    /// The line `logline` writes and the one tracing-subscriber writes for the fallback event,
    /// checked equal after the timestamp; the text one is returned.
    fn both_ways(close: &Close<'_>) -> String {
        let mut text = String::new();
        for format in [LineFormat::Text, LineFormat::Json] {
            let ours = render(
                format,
                close.ending.level,
                TARGET,
                "connection closed",
                |line| close.fields(line),
            );
            let theirs = through_subscriber(format, || close.through_tracing());
            assert_eq!(after_stamp(&ours), after_stamp(&theirs), "{format:?}");
            if format == LineFormat::Text {
                text = ours;
            }
        }
        text
    }

    #[test]
    fn a_connection_line_says_each_thing_once_as_tracing_would_write_it() {
        let listener: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        // A direct L4 client on an exact route: the peer is the client, the SNI the route.
        let mut direct = Record::new(7, "192.0.2.7:40000".parse().unwrap(), Some(listener));
        direct.sni = Some("web.test".into());
        direct.route = Some(route("web.test"));
        direct.backend = Some(Arc::from("127.0.0.1:1"));
        direct.live.bytes.up.store(517, Ordering::Relaxed);
        direct.live.bytes.down.store(3000, Ordering::Relaxed);
        let ok = ending(Level::INFO, None);
        let line = both_ways(&Close {
            record: &direct,
            ending: &ok,
            elapsed: Duration::from_millis(12),
            node: None,
        });
        assert!(
            line.ends_with(
                "  INFO mc_proxy::access: connection closed conn=7 listener=127.0.0.1:8443 \
                 client=192.0.2.7:40000 route=\"web.test\" backend=\"127.0.0.1:1\" \
                 bytes_up=517 bytes_down=3000 duration_ms=12 outcome=\"closed\"\n"
            ),
            "{line}"
        );

        // Behind a balancer, on a wildcard route, a backend fault, on a fleet node: the peer,
        // the SNI, the error and the node are each written, once.
        let mut proxied = Record::new(8, "10.0.0.1:5000".parse().unwrap(), Some(listener));
        proxied.client = "[2001:db8::7]:40000".parse().unwrap();
        proxied.sni = Some("a.wild.test".into());
        proxied.route = Some(route("*.wild.test"));
        let failed = ending(Level::WARN, Some("backend \"x\" refused"));
        let line = both_ways(&Close {
            record: &proxied,
            ending: &failed,
            elapsed: Duration::ZERO,
            node: Some("edge-a"),
        });
        assert!(
            line.contains("  WARN mc_proxy::access: connection closed conn=8 "),
            "{line}"
        );
        for field in [
            " client=[2001:db8::7]:40000 peer=10.0.0.1:5000 ",
            " route=\"*.wild.test\" sni=\"a.wild.test\" ",
            // L7 or no member dialled: the route's set.
            " backend=\"127.0.0.1:1, 127.0.0.1:2\" ",
            " error=\"backend \\\"x\\\" refused\" node=\"edge-a\"\n",
        ] {
            assert!(line.contains(field), "{line} lacks {field}");
        }

        // Refused before any route, on a socket whose address was not known: what is known.
        let mut unknown = Record::new(9, "192.0.2.8:1".parse().unwrap(), None);
        unknown.sni = Some("nobody.test".into());
        let refused = ending(Level::DEBUG, None);
        let line = both_ways(&Close {
            record: &unknown,
            ending: &refused,
            elapsed: Duration::ZERO,
            node: None,
        });
        assert!(
            line.ends_with(
                " DEBUG mc_proxy::access: connection closed conn=9 client=192.0.2.8:1 \
                 sni=\"nobody.test\" bytes_up=0 bytes_down=0 duration_ms=0 outcome=\"closed\"\n"
            ),
            "{line}"
        );
    }
}
