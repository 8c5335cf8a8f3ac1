//! What the relays share: how a relay ends ([`RelayEnd`]), the copy buffer's size, the
//! counters a direction adds each chunk to, and how a burst of reads ended.
//!
//! No I/O.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Per-direction copy buffer while data moves. 16 KiB holds a full TLS record, so a record is
/// usually moved in one read and one write.
pub(super) const BUF_SIZE: usize = 16 * 1024;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed their write halves.
    Finished,
    /// No byte moved either way for the idle timeout.
    IdleTimeout,
    /// The daemon's shutdown grace period ran out (set by the caller, which drops the relay).
    Cancelled,
    /// A read or write failed (typically a reset from one side).
    Error(io::Error),
}

/// The counters a direction adds each chunk to once it is written: the connection's and the
/// route's.
#[derive(Clone, Copy)]
pub(super) struct Moved<'a>(pub(super) [&'a AtomicU64; 2]);

impl Moved<'_> {
    pub(super) fn chunk(&self, n: usize) {
        for count in self.0 {
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// How a burst of reads ended.
pub(super) enum Burst {
    /// `from` has nothing more to read for now.
    Drained,
    /// `from` sent its FIN.
    Eof,
}
