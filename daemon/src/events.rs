//! The live event stream: connection opened/closed, blocks, route and firewall changes, stats.
//!
//! No I/O. Events go into a bounded `tokio::sync::broadcast` ring. Publishing never waits: with
//! no subscriber nothing is even built, and a subscriber that reads too slowly loses the oldest
//! events and is told how many (`RecvError::Lagged`, turned into a `Lagged` event by the admin
//! API). Invariant: the data path never blocks on an observer.

use std::time::{SystemTime, UNIX_EPOCH};

use mc_proxy_shared::pb;
use tokio::sync::broadcast;

/// Default events buffered per subscriber before it lags.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Fan-out of daemon events to admin API subscribers.
#[derive(Debug)]
pub struct EventBus {
    tx: broadcast::Sender<pb::Event>,
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
    pub fn subscribe(&self) -> broadcast::Receiver<pb::Event> {
        self.tx.subscribe()
    }

    /// True when someone is listening (so building an event is worth it).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes the event `build` makes, building it only if someone listens.
    pub fn publish(&self, build: impl FnOnce() -> pb::event::Kind) {
        if !self.has_subscribers() {
            return;
        }
        let timestamp_ms = now_ms();
        // An error only means the last subscriber left in between: nothing to do.
        let _ = self.tx.send(pb::Event {
            timestamp_ms,
            kind: Some(build()),
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

    fn lagged_kind(n: u64) -> pb::event::Kind {
        pb::event::Kind::Lagged(pb::Lagged { dropped: n })
    }

    #[test]
    fn nothing_is_built_without_subscribers() {
        let bus = EventBus::new(4);
        let mut built = false;
        bus.publish(|| {
            built = true;
            lagged_kind(0)
        });
        assert!(!built);
    }

    #[tokio::test]
    async fn slow_subscriber_loses_the_oldest_events_and_learns_how_many() {
        let bus = EventBus::new(4);
        let mut rx = bus.subscribe();
        for n in 0..10 {
            bus.publish(|| lagged_kind(n));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(6))
        ));
        let next = rx.recv().await.unwrap();
        assert_eq!(next.kind, Some(lagged_kind(6)));
    }
}
