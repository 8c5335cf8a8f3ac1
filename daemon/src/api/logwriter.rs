//! The daemon's log writer: the lines that come with traffic (a request's line, a
//! connection's) go into one shared buffer, written to stderr in batches (when [`FLUSH_AT`]
//! bytes are waiting, else every [`FLUSH_EVERY`] from a thread of its own, and at exit),
//! instead of one `write(2)` per line: with a line per request that syscall was a tenth of the
//! request's cost (see docs/BENCHMARKS.md); HAProxy batches its `log stdout` likewise. Every
//! other line (start, changes, reloads, warnings, errors) is written at once, after what
//! waits, so what an operator or a supervisor watches for is never late.
//!
//! I/O: stderr. Invariants: a line is written whole and in order (one buffer, one lock); a
//! traffic line is on stderr at most [`FLUSH_EVERY`] after it was logged, so `journalctl -f`
//! and `tail -f` stay live; a write error (stderr closed: an SSH session gone) drops the
//! batch and never panics or blocks logging for longer than the write itself.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Bytes waiting that make the logging thread write them at once.
pub const FLUSH_AT: usize = 64 * 1024;

/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The `MakeWriter` for tracing-subscriber: each line appended to the shared buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Buffered;

/// The targets of the lines that come with traffic, batched.
const BATCHED: [&str; 2] = ["mc_proxy::request", "mc_proxy::access"];

/// One line's writer (tracing-subscriber formats a whole line, then writes it once).
#[derive(Debug)]
pub struct Line {
    /// Written at once (with what waits before it), not batched.
    now: bool,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buf = BUFFER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        buf.extend_from_slice(bytes);
        if self.now || buf.len() >= FLUSH_AT {
            write_out(&mut buf);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffered {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { now: true }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        Line {
            now: !BATCHED.contains(&meta.target()),
        }
    }
}

/// Appends a whole traffic line to the batch (the sink of `model::logline`, whose lines are
/// the request lines formatted without tracing-subscriber).
pub fn push_batched(line: &[u8]) {
    // Never fails: the buffer takes it, and a stderr error drops the batch.
    let _ = Line { now: false }.write(line);
}

/// Writes what waits (stderr errors drop it: logging must never stop the daemon).
fn write_out(buf: &mut Vec<u8>) {
    let _ = std::io::stderr().write_all(buf);
    buf.clear();
    // A burst's buffer does not stay large for the daemon's life.
    if buf.capacity() > 4 * FLUSH_AT {
        buf.shrink_to(FLUSH_AT);
    }
}

/// Writes every line logged so far: at exit, and before anything written to stderr directly.
pub fn flush() {
    let mut buf = BUFFER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !buf.is_empty() {
        write_out(&mut buf);
    }
}

/// Starts the thread that writes the buffer every [`FLUSH_EVERY`] (for the process's life).
pub fn start_flusher() {
    let started = std::thread::Builder::new().name("mc-log".into()).spawn(|| {
        loop {
            std::thread::sleep(FLUSH_EVERY);
            flush();
        }
    });
    if started.is_err() {
        // Without the thread a line waits for the next FLUSH_AT or the exit: still written.
        eprintln!("mc-proxy: cannot start the log writer thread; logs are written in batches");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_lines_wait_in_order_and_others_take_them_along() {
        // Only this test writes through `Line` in this test binary.
        let mut batched = Line { now: false };
        batched.write_all(b"one\n").unwrap();
        batched.write_all(b"two\n").unwrap();
        assert_eq!(&*BUFFER.lock().unwrap(), b"one\ntwo\n");
        // A line written at once goes with what waited before it, in order.
        Line { now: true }.write_all(b"three\n").unwrap();
        assert!(BUFFER.lock().unwrap().is_empty());
        batched.write_all(b"four\n").unwrap();
        flush();
        assert!(BUFFER.lock().unwrap().is_empty());
    }
}
