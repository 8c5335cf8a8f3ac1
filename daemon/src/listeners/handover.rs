//! The upgrade handover: how a running daemon (the *old* process) hands its listening sockets,
//! then its control, to a new binary (the *new* process) without refusing or losing a
//! connection; and the sockets a process starts with (`Inherited`: from the old process, or
//! from systemd socket activation).
//!
//! The sequence, on one Unix stream connection to the old process's upgrade socket
//! (`<admin socket>.upgrade`, mode 0600, see [`upgrade_path`]):
//!
//! 1. new → old `Hello { pid }`.
//! 2. old → new: one `Socket` message per listening socket, its descriptor attached
//!    (SCM_RIGHTS): every listener's per-worker `SO_REUSEPORT` sockets, the metrics listener,
//!    the admin socket's listener and the upgrade socket's own listener; then `SocketsEnd`.
//! 3. new: has loaded and checked its config → `Release`.
//! 4. old: refuses admin writes from now on (one in progress completes, is stored and
//!    acknowledged first; later ones get UNAVAILABLE with a clear message), closes its database
//!    → `Released`.
//! 5. new: opens the database, builds its data plane on the received sockets, serves the admin
//!    API, /metrics and the upgrade socket on them, tells systemd `MAINPID=<new>` and
//!    `READY=1` → `Drain`.
//! 6. old: stops accepting everywhere (its copies of the sockets close; the sockets live on in
//!    the new process, so no connection queued in a backlog is lost), drains its open
//!    connections with `[proxy] shutdown_timeout` as on SIGTERM, and exits.
//!
//! Invariants: the old process closes nothing before `Drain`, so whatever fails before it
//! (the new binary exits, its config does not load, the connection breaks or times out)
//! leaves the old process serving: untouched before `Released`; after it, the old process
//! reopens its database and takes admin writes again. Only one handover runs at a time. The
//! socket files (admin, upgrade) are never unlinked by a process that handed them over.
//!
//! I/O: the upgrade socket (bind, connect, sendmsg/recvmsg with SCM_RIGHTS through rustix's
//! safe wrappers), `dup` of listening sockets, and LISTEN_FDS (through `listenfd`).

use std::io::{Read as _, Write as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mc_proxy_shared::text::clip;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::model::state::ListenerState;

/// Why a handover (or taking inherited sockets) failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The upgrade socket could not be reached or used.
    #[error("upgrade socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Reading or writing a message failed (the peer went away, a timeout).
    #[error("upgrade handover: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("upgrade handover: the other process closed the connection")]
    Closed,
    /// The peer sent something this process does not understand (another version?).
    #[error("upgrade handover: unexpected message: {0}")]
    Protocol(String),
    /// The old process said no (another upgrade under way, its database cannot close).
    #[error("upgrade refused by the running daemon: {0}")]
    Refused(String),
}

/// The longest message accepted: every message is small (a socket's header, a reason).
const MAX_MESSAGE: usize = 64 * 1024;

/// How long a step of the handover may wait for the other process: the new process loads its
/// config and database in between, which takes well under this.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The upgrade socket of a daemon whose admin socket is `admin`: next to it, same directory
/// and permissions.
pub fn upgrade_path(admin: &Path) -> PathBuf {
    let mut name = admin.as_os_str().to_owned();
    name.push(".upgrade");
    PathBuf::from(name)
}

/// What a handed-over socket is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SocketKind {
    /// One worker's socket of a traffic listener.
    Listener {
        /// The configured address (port 0 possible).
        addr: SocketAddr,
        /// The address it is bound to.
        bound: SocketAddr,
        /// The listener's name.
        name: String,
        /// The old process's worker that accepted on it.
        worker: usize,
    },
    /// The `/metrics` listener.
    Metrics {
        /// Its bound address.
        addr: SocketAddr,
    },
    /// The admin API's Unix socket.
    Admin {
        /// Its path.
        path: PathBuf,
    },
    /// The upgrade socket itself.
    Upgrade {
        /// Its path.
        path: PathBuf,
    },
}

impl std::fmt::Display for SocketKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketKind::Listener {
                bound,
                name,
                worker,
                ..
            } => write!(f, "listener {name} ({bound}) of worker {worker}"),
            SocketKind::Metrics { addr } => write!(f, "metrics listener {addr}"),
            SocketKind::Admin { path } => write!(f, "admin socket {}", path.display()),
            SocketKind::Upgrade { path } => write!(f, "upgrade socket {}", path.display()),
        }
    }
}

/// One message of the handover (see the module docs for the order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Message {
    /// New → old: the first message of a handover.
    Hello {
        /// The new process's pid.
        pid: u32,
    },
    /// Operator (`mc-proxy upgrade`) → old: start the binary on disk and report.
    Upgrade {
        /// The binary to start instead of the daemon's own path on disk.
        #[serde(default)]
        binary: Option<PathBuf>,
    },
    /// Old → new: one socket, its descriptor attached.
    Socket(SocketKind),
    /// Old → new: every socket sent.
    SocketsEnd,
    /// New → old: stop writing and close the database.
    Release,
    /// Old → new: done; the database is yours.
    Released,
    /// New → old: serving; stop accepting and drain.
    Drain,
    /// Old → operator: the upgrade went through; the new process's pid.
    Upgraded {
        /// The new process's pid.
        pid: u32,
    },
    /// Old → new or operator: refused or failed, and why.
    Failed {
        /// What went wrong.
        reason: String,
    },
}

/// One end of a handover connection: length-prefixed JSON messages, at most one descriptor
/// each (SCM_RIGHTS on the message's first byte), every read and write bounded by a timeout.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
}

impl Channel {
    /// Wraps an accepted or connected stream (set blocking, with [`STEP_TIMEOUT`]).
    pub fn new(stream: UnixStream) -> Result<Channel, HandoverError> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(STEP_TIMEOUT))?;
        stream.set_write_timeout(Some(STEP_TIMEOUT))?;
        Ok(Channel { stream })
    }

    /// Bounds every later read and write by `timeout` instead of [`STEP_TIMEOUT`].
    pub fn set_timeout(&self, timeout: Duration) -> Result<(), HandoverError> {
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream.set_write_timeout(Some(timeout))?;
        Ok(())
    }

    /// Connects to the upgrade socket at `path`.
    pub fn connect(path: &Path) -> Result<Channel, HandoverError> {
        let stream = UnixStream::connect(path).map_err(|source| HandoverError::Socket {
            path: path.to_owned(),
            source,
        })?;
        Channel::new(stream)
    }

    /// Sends `msg`, with `fd` attached if given.
    pub fn send(&self, msg: &Message, fd: Option<BorrowedFd<'_>>) -> Result<(), HandoverError> {
        let body = serde_json::to_vec(msg).map_err(|e| HandoverError::Protocol(e.to_string()))?;
        let len = u32::try_from(body.len())
            .map_err(|_| HandoverError::Protocol("message too large".into()))?;
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut ancillary = SendAncillaryBuffer::new(&mut space);
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        if !fds.is_empty() {
            ancillary.push(SendAncillaryMessage::ScmRights(&fds));
        }
        let sent = rustix::net::sendmsg(
            &self.stream,
            &[std::io::IoSlice::new(&frame)],
            &mut ancillary,
            SendFlags::NOSIGNAL,
        )
        .map_err(std::io::Error::from)?;
        // The descriptor went with the first byte; the rest (if the kernel took part) follows.
        if sent < frame.len() {
            (&self.stream).write_all(&frame[sent..])?;
        }
        Ok(())
    }

    /// The next message and the descriptor that came with it.
    pub fn recv(&self) -> Result<(Message, Option<OwnedFd>), HandoverError> {
        let mut len = [0u8; 4];
        // Room for more than one descriptor: extra ones (a confused peer) are closed, not
        // left half-received.
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut ancillary = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &self.stream,
            &mut [std::io::IoSliceMut::new(&mut len)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        if got.bytes == 0 {
            return Err(HandoverError::Closed);
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in ancillary.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if got.bytes < len.len() {
            (&self.stream).read_exact(&mut len[got.bytes..])?;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_MESSAGE {
            return Err(HandoverError::Protocol(format!(
                "a message of {len} bytes; at most {MAX_MESSAGE} are accepted"
            )));
        }
        let mut body = vec![0u8; len];
        (&self.stream).read_exact(&mut body).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                HandoverError::Closed
            } else {
                e.into()
            }
        })?;
        let msg = serde_json::from_slice(&body)
            .map_err(|e| HandoverError::Protocol(clip(&e.to_string())))?;
        Ok((msg, fds.into_iter().next()))
    }

    /// The next message, which must be `expected`'s kind (by its name, for the error).
    fn expect(&self, expected: &Message) -> Result<(), HandoverError> {
        match self.recv()? {
            (msg, _) if msg == *expected => Ok(()),
            (Message::Failed { reason }, _) => Err(HandoverError::Refused(reason)),
            (other, _) => Err(HandoverError::Protocol(format!(
                "expected {expected:?}, got {}",
                clip(&format!("{other:?}"))
            ))),
        }
    }
}

/// The new process's side of steps 1 and 2: says hello and receives every socket.
pub fn join(path: &Path) -> Result<(Channel, Inherited), HandoverError> {
    let channel = Channel::connect(path)?;
    channel.send(
        &Message::Hello {
            pid: std::process::id(),
        },
        None,
    )?;
    let mut inherited = Inherited::default();
    loop {
        match channel.recv()? {
            (Message::Socket(kind), Some(fd)) => inherited.add(kind, fd),
            (Message::Socket(kind), None) => {
                return Err(HandoverError::Protocol(format!(
                    "{kind} came without its descriptor"
                )));
            }
            (Message::SocketsEnd, _) => break,
            (Message::Failed { reason }, _) => return Err(HandoverError::Refused(reason)),
            (other, _) => {
                return Err(HandoverError::Protocol(format!(
                    "expected a socket, got {}",
                    clip(&format!("{other:?}"))
                )));
            }
        }
    }
    Ok((channel, inherited))
}

impl Channel {
    /// The new process's step 3: asks the old process to stop writing and waits until it has.
    pub fn release(&self) -> Result<(), HandoverError> {
        self.send(&Message::Release, None)?;
        self.expect(&Message::Released)
    }

    /// The new process's step 5: serving; the old process drains.
    pub fn drain(&self) -> Result<(), HandoverError> {
        self.send(&Message::Drain, None)
    }
}

/// What the old process does at each step of a handover ([`serve_handover`]); implemented by
/// the daemon binary, which owns the control plane and the shutdown.
pub trait Owner {
    /// Every listening socket to hand over, duplicated (the old process keeps its own).
    fn sockets(&self) -> Vec<(SocketKind, OwnedFd)>;
    /// Step 4: stop admin writes (after the one in progress) and close the database.
    fn release(&self, to: u32) -> Result<(), String>;
    /// The new process went away after `release`: reopen the database and take writes again.
    fn resume(&self, why: &str);
    /// Step 6: the new process (`pid`) serves; stop accepting and drain.
    fn drain(&self, pid: u32);
    /// A handover that ended without `drain` (logged by the caller), for whoever waits on it.
    fn failed(&self, _pid: u32, _why: &str) {}
}

/// The old process's side of one handover whose `Hello` came from `pid`: steps 2, 4 and 6
/// (see the module docs). Blocking; run it off the async runtime. Returns the new process's
/// pid once it asked to drain, or what failed (the old process then serves as before:
/// `resume` was called if `release` had been).
pub fn serve_handover(
    channel: &Channel,
    pid: u32,
    owner: &dyn Owner,
) -> Result<u32, HandoverError> {
    for (kind, fd) in owner.sockets() {
        channel.send(&Message::Socket(kind), Some(fd.as_fd()))?;
    }
    channel.send(&Message::SocketsEnd, None)?;
    channel.expect(&Message::Release)?;
    if let Err(why) = owner.release(pid) {
        let _ = channel.send(
            &Message::Failed {
                reason: why.clone(),
            },
            None,
        );
        return Err(HandoverError::Refused(why));
    }
    channel.send(&Message::Released, None)?;
    match channel.expect(&Message::Drain) {
        Ok(()) => {
            owner.drain(pid);
            Ok(pid)
        }
        Err(e) => {
            owner.resume(&e.to_string());
            Err(e)
        }
    }
}

/// The data plane's listening sockets, from the moment they are bound: what a handover sends.
/// Each entry is a duplicate of a socket, held by a [`Registered`] guard that travels with the
/// socket (in `BoundListener`, then its accept loop) and removes the entry when the socket is
/// dropped: a removed listener's socket closes as before and is never handed over, and one
/// whose accept loop has not started yet is handed over all the same (closing it unsent
/// would reset what waits in its backlog).
#[derive(Debug, Default, Clone)]
pub struct Registry {
    entries: Arc<Mutex<Entries>>,
}

#[derive(Debug, Default)]
struct Entries {
    next: u64,
    live: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    listener: Arc<ListenerState>,
    worker: usize,
    socket: OwnedFd,
}

/// A socket's place in the [`Registry`]: dropped with the socket, it takes the entry out.
#[derive(Debug)]
pub struct Registered {
    registry: Registry,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let id = self.id;
        self.registry.lock().live.retain(|e| e.id != id);
    }
}

impl Registry {
    /// Records `socket`, worker `worker`'s socket of `listener`, until the guard drops.
    pub(crate) fn add(
        &self,
        listener: &Arc<ListenerState>,
        worker: usize,
        socket: &impl AsFd,
    ) -> std::io::Result<Registered> {
        let socket = socket.as_fd().try_clone_to_owned()?;
        let mut entries = self.lock();
        entries.next += 1;
        let id = entries.next;
        entries.live.push(Entry {
            id,
            listener: Arc::clone(listener),
            worker,
            socket,
        });
        Ok(Registered {
            registry: self.clone(),
            id,
        })
    }

    /// A duplicate of every registered socket of a listener not removed, with what it is, by
    /// listener then worker.
    pub fn sockets(&self) -> Vec<(SocketKind, OwnedFd)> {
        let mut out = Vec::new();
        for e in self.lock().live.iter() {
            if e.listener.closed().is_cancelled() {
                continue;
            }
            let bound = std::net::TcpListener::from(match e.socket.try_clone() {
                Ok(fd) => fd,
                Err(err) => {
                    tracing::warn!(listener = %e.listener.addr, "cannot duplicate a socket: {err}");
                    continue;
                }
            });
            let addr = bound.local_addr().unwrap_or(e.listener.addr);
            out.push((
                SocketKind::Listener {
                    addr: e.listener.addr,
                    bound: addr,
                    name: e.listener.name.clone(),
                    worker: e.worker,
                },
                OwnedFd::from(bound),
            ));
        }
        out.sort_by_key(|(kind, _)| match kind {
            SocketKind::Listener { bound, worker, .. } => (*bound, *worker),
            _ => (SocketAddr::from(([0, 0, 0, 0], 0)), 0),
        });
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Only pushed to and filtered: a poisoned list is still a good one.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One inherited traffic socket, waiting for the listener it belongs to.
#[derive(Debug)]
struct InheritedListener {
    /// The configured address it was bound for (the old process's), if known.
    addr: Option<SocketAddr>,
    /// The address it is bound to.
    bound: SocketAddr,
    /// The name it came with (the old process's listener name, or FileDescriptorName).
    name: Option<String>,
    /// Order among the sockets of the same listener.
    worker: usize,
    socket: std::net::TcpListener,
}

/// Listening sockets this process starts with instead of binding: received from the old
/// process ([`join`]) or from systemd ([`Inherited::from_listen_fds`]). Each `take_*` hands
/// out what matches; [`Inherited::leftover`] names what nothing took.
#[derive(Debug, Default)]
pub struct Inherited {
    listeners: Vec<InheritedListener>,
    metrics: Option<std::net::TcpListener>,
    admin: Option<(PathBuf, UnixListener)>,
    upgrade: Option<(PathBuf, UnixListener)>,
    /// Unix sockets or other descriptors nobody asked for (socket activation).
    other: Vec<String>,
}

impl Inherited {
    fn add(&mut self, kind: SocketKind, fd: OwnedFd) {
        match kind {
            SocketKind::Listener {
                addr,
                bound,
                name,
                worker,
            } => self.listeners.push(InheritedListener {
                addr: Some(addr),
                bound,
                name: Some(name),
                worker,
                socket: std::net::TcpListener::from(fd),
            }),
            SocketKind::Metrics { .. } => self.metrics = Some(std::net::TcpListener::from(fd)),
            SocketKind::Admin { path } => self.admin = Some((path, UnixListener::from(fd))),
            SocketKind::Upgrade { path } => self.upgrade = Some((path, UnixListener::from(fd))),
        }
    }

    /// How many sockets are left to take.
    pub fn len(&self) -> usize {
        self.listeners.len()
            + usize::from(self.metrics.is_some())
            + usize::from(self.admin.is_some())
            + usize::from(self.upgrade.is_some())
    }

    /// True when nothing was inherited (or everything has been taken).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every inherited socket of `listener` (matched by the configured address the old
    /// process had, by name, or by a bound address equal to a configured non-zero port), in
    /// the old process's worker order; empty when none matches (it is then bound anew).
    pub fn take_listener(&mut self, listener: &ListenerState) -> Vec<std::net::TcpListener> {
        let matches = |l: &InheritedListener| {
            l.name.as_deref() == Some(listener.name.as_str())
                || l.addr == Some(listener.addr)
                || (listener.addr.port() != 0 && l.bound == listener.addr)
        };
        let (mut mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(matches);
        self.listeners = rest;
        mine.sort_by_key(|l| l.worker);
        mine.into_iter().map(|l| l.socket).collect()
    }

    /// The inherited metrics listener, if its address is `addr` (or `addr` asks for port 0).
    pub fn take_metrics(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let bound = self.metrics.as_ref()?.local_addr().ok()?;
        let fits = bound == addr || (addr.port() == 0 && bound.ip() == addr.ip());
        if fits { self.metrics.take() } else { None }
    }

    /// The inherited admin socket listener, if it was bound at `path`.
    pub fn take_admin(&mut self, path: &Path) -> Option<UnixListener> {
        match &self.admin {
            Some((p, _)) if p == path => self.admin.take().map(|(_, l)| l),
            _ => None,
        }
    }

    /// The inherited upgrade socket listener, if it was bound at `path`.
    pub fn take_upgrade(&mut self, path: &Path) -> Option<UnixListener> {
        match &self.upgrade {
            Some((p, _)) if p == path => self.upgrade.take().map(|(_, l)| l),
            _ => None,
        }
    }

    /// What nothing took, one line each (the sockets close when `self` drops).
    pub fn leftover(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .listeners
            .iter()
            .map(|l| match &l.name {
                Some(name) => format!("listening socket {} (name {name})", l.bound),
                None => format!("listening socket {}", l.bound),
            })
            .collect();
        if let Some(m) = &self.metrics {
            out.push(format!(
                "metrics listener {}",
                m.local_addr()
                    .map_or_else(|_| "?".to_owned(), |a| a.to_string())
            ));
        }
        for (what, s) in [("admin", &self.admin), ("upgrade", &self.upgrade)] {
            if let Some((path, _)) = s {
                out.push(format!("{what} socket {}", path.display()));
            }
        }
        out.extend(self.other.iter().cloned());
        out
    }

    /// The sockets systemd passed (`LISTEN_FDS`, `LISTEN_PID` this process,
    /// `LISTEN_FDNAMES`): each TCP listening socket, named by its FileDescriptorName unless
    /// that is systemd's default (`unknown`, or the socket unit's name ending in `.socket`).
    /// None passed: empty.
    pub fn from_listen_fds() -> Result<Inherited, HandoverError> {
        let mut fds = listenfd::ListenFd::from_env();
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|v| v.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        let mut inherited = Inherited::default();
        for index in 0..fds.len() {
            let name = names
                .get(index)
                .filter(|n| !n.is_empty() && *n != "unknown" && !n.ends_with(".socket"))
                .cloned();
            let socket = match fds.take_tcp_listener(index) {
                Ok(Some(socket)) => socket,
                Ok(None) => continue,
                Err(e) => {
                    inherited.other.push(format!(
                        "descriptor {} (LISTEN_FDS, {}): not a TCP listening socket ({e})",
                        index + 3,
                        name.as_deref().unwrap_or("no name")
                    ));
                    continue;
                }
            };
            socket.set_nonblocking(true)?;
            let bound = socket.local_addr()?;
            inherited.listeners.push(InheritedListener {
                addr: None,
                bound,
                name,
                worker: index,
                socket,
            });
        }
        Ok(inherited)
    }
}

/// The upgrade socket a running daemon listens on (mode 0600, next to the admin socket);
/// the file is removed on drop unless the socket was handed over ([`UpgradeSocket::keep_file`]).
#[derive(Debug)]
pub struct UpgradeSocket {
    /// The listener, blocking: accepted connections are served on a thread of their own.
    pub listener: UnixListener,
    path: PathBuf,
    keep: Arc<std::sync::atomic::AtomicBool>,
}

impl UpgradeSocket {
    /// Creates the socket at `path` (a leftover file nobody answers on is replaced), or takes
    /// `inherited`, the one the old process handed over.
    pub fn bind(path: &Path, inherited: Option<UnixListener>) -> Result<Self, HandoverError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |source| HandoverError::Socket {
            path: path.to_owned(),
            source,
        };
        let listener = match inherited {
            Some(l) => l,
            None => {
                if path.exists() {
                    if UnixStream::connect(path).is_ok() {
                        return Err(err(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            "a running daemon answers on it",
                        )));
                    }
                    std::fs::remove_file(path).map_err(err)?;
                }
                let l = UnixListener::bind(path).map_err(err)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(err)?;
                l
            }
        };
        listener.set_nonblocking(true).map_err(err)?;
        Ok(UpgradeSocket {
            listener,
            path: path.to_owned(),
            keep: Arc::default(),
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A switch that, once set, leaves the file in place on drop (it belongs to the new
    /// process now).
    pub fn keep_file(&self) -> Arc<std::sync::atomic::AtomicBool> {
        Arc::clone(&self.keep)
    }
}

impl Drop for UpgradeSocket {
    fn drop(&mut self) {
        if !self.keep.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor crosses the channel and is the same socket on the other side; messages
    /// keep their order and boundaries.
    #[test]
    fn a_socket_crosses_with_its_header() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let kind = SocketKind::Metrics { addr };
        a.send(&Message::Socket(kind.clone()), Some(listener.as_fd()))
            .unwrap();
        a.send(&Message::SocketsEnd, None).unwrap();
        drop(listener);
        let (msg, fd) = b.recv().unwrap();
        assert_eq!(msg, Message::Socket(kind));
        let received = std::net::TcpListener::from(fd.unwrap());
        assert_eq!(received.local_addr().unwrap(), addr);
        // Still listening: the sender's copy is closed, the socket lives on in the receiver.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        assert!(received.accept().is_ok());
        assert_eq!(b.recv().unwrap().0, Message::SocketsEnd);
        drop(a);
        assert!(matches!(b.recv(), Err(HandoverError::Closed)));
    }

    fn listener(addr: &str, name: Option<&str>) -> ListenerState {
        use crate::model::routes::RouteTable;
        use crate::model::state::ListenerSettings;
        let l = ListenerState::new(
            1,
            addr.parse().unwrap(),
            ListenerSettings::default(),
            RouteTable::with_stats(Vec::new(), |_| Arc::default()),
        );
        match name {
            Some(n) => l.with_name(n.to_owned()),
            None => l,
        }
    }

    fn socket() -> (SocketAddr, OwnedFd) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (l.local_addr().unwrap(), OwnedFd::from(l))
    }

    /// An old process's sockets go to the listener it had them for (configured address,
    /// port 0 included), in worker order; a name or a bound address equal to a configured
    /// one matches too; what nothing takes is named.
    #[test]
    fn inherited_sockets_are_matched_by_address_name_or_bound_address() {
        let mut inherited = Inherited::default();
        let (a, fd_a1) = socket();
        let (a0, fd_a0) = socket();
        let configured: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for (worker, fd) in [(1, fd_a1), (0, fd_a0)] {
            let kind = SocketKind::Listener {
                addr: configured,
                bound: a,
                name: "127.0.0.1:0".into(),
                worker,
            };
            inherited.add(kind, fd);
        }
        let (b, fd_b) = socket();
        inherited.listeners.push(InheritedListener {
            addr: None,
            bound: b,
            name: Some("web".into()),
            worker: 0,
            socket: std::net::TcpListener::from(fd_b),
        });
        let (c, fd_c) = socket();
        inherited.listeners.push(InheritedListener {
            addr: None,
            bound: c,
            name: None,
            worker: 0,
            socket: std::net::TcpListener::from(fd_c),
        });
        assert_eq!(inherited.len(), 4);

        let taken = inherited.take_listener(&listener("127.0.0.1:0", None));
        // Worker 0's first (here two ports stand for one port's two sockets).
        let order: Vec<SocketAddr> = taken.iter().map(|s| s.local_addr().unwrap()).collect();
        assert_eq!(order, [a0, a]);
        let web = inherited.take_listener(&listener("127.0.0.2:0", Some("web")));
        assert_eq!(web[0].local_addr().unwrap(), b);
        assert!(
            inherited
                .take_listener(&listener("127.0.0.3:443", None))
                .is_empty()
        );
        let by_bound = inherited.take_listener(&listener(&c.to_string(), None));
        assert_eq!(by_bound.len(), 1);
        assert!(inherited.is_empty(), "{:?}", inherited.leftover());

        let (d, fd_d) = socket();
        inherited.listeners.push(InheritedListener {
            addr: None,
            bound: d,
            name: Some("stray".into()),
            worker: 0,
            socket: std::net::TcpListener::from(fd_d),
        });
        assert_eq!(
            inherited.leftover(),
            vec![format!("listening socket {d} (name stray)")]
        );
    }

    #[test]
    fn the_upgrade_socket_sits_next_to_the_admin_socket() {
        assert_eq!(
            upgrade_path(Path::new("/run/mc-proxy/admin.sock")),
            Path::new("/run/mc-proxy/admin.sock.upgrade")
        );
    }
}
