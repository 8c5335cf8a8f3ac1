//! splice(2) through a pipe: the L4 relay's bulk path on Linux (rustix's safe wrappers; the
//! workspace forbids `unsafe`).
//!
//! I/O: the two sockets and the pipes. Below the TCP relay, above nothing but `common`.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::common::{Burst, Moved};

/// Capacity asked for each pipe: one splice call moves up to this much. 256 KiB is within
/// the unprivileged `fs.pipe-max-size` (1 MiB by default); a refusal leaves the 64 KiB
/// default, which only costs more calls.
const PIPE_SIZE: usize = 256 * 1024;
/// Empty pipes kept for the next burst, per thread. A burst beyond this many at once opens a pipe and
/// closes it afterwards; idle connections hold none (a pipe is two descriptors and the
/// file table must fit 10 000s of idle connections).
const POOL_MAX: usize = 64;

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

/// A pipe, empty whenever it is in the pool.
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

/// The empty pipes kept for the next burst, one pool per thread: a data-plane worker's
/// connections all run on its thread, so the pool is never shared between workers and
/// takes no lock (a burst that ends on another thread, in a multi-threaded runtime, gives
/// its pipe to that thread's pool).
pub(super) static POOL: Pool = Pool;

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// This thread's pool of empty pipes ([`POOL`]).
pub(super) struct Pool;

impl Pool {
    /// How many pipes this thread has pooled now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        PIPES.with_borrow(Vec::len)
    }

    /// An empty pipe: a pooled one or a new one; `None` when no pipe can be opened (the
    /// caller copies through a buffer instead).
    pub(super) fn take(&self) -> Option<Lease> {
        let pooled = PIPES.with_borrow_mut(Vec::pop);
        let pipe = match pooled {
            Some(pipe) => pipe,
            None => {
                let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
                let size = fcntl_setpipe_size(&write, PIPE_SIZE).unwrap_or(64 * 1024);
                Pipe { read, write, size }
            }
        };
        Some(Lease {
            pipe: Some(pipe),
            pending: 0,
        })
    }
}

/// A pipe borrowed for one burst. Back to the pool on drop if it is empty; a pipe still
/// holding bytes (an error or a cancelled relay mid-write) is closed instead.
pub(super) struct Lease {
    pipe: Option<Pipe>,
    pending: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take()
            && self.pending == 0
        {
            // Dropped while the thread is going away (its pool already is): the pipe closes.
            let _ = PIPES.try_with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < POOL_MAX {
                    pool.push(pipe);
                }
            });
        }
    }
}

/// Moves what `from` has to `to` via the leased pipe, which is empty again when this
/// returns `Ok`. `moved` is told each chunk once it is written to `to`.
pub(super) async fn burst(
    from: &TcpStream,
    to: &TcpStream,
    lease: &mut Lease,
    moved: Moved<'_>,
) -> io::Result<Burst> {
    let pipe = lease
        .pipe
        .as_ref()
        .expect("a lease holds its pipe until dropped");
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read
        // (and `try_io` rightly clears its readiness).
        let n = match from.try_io(Interest::READABLE, || {
            Ok(splice(from, None, &pipe.write, None, pipe.size, FLAGS)?)
        }) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(e) => return Err(e),
        };
        lease.pending = n;
        while lease.pending > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                Ok(splice(&pipe.read, None, to, None, lease.pending, FLAGS)?)
            }) {
                Ok(m) => lease.pending -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        moved.chunk(n);
    }
}
