//! An h2c origin written at the frame level, which ends its connections the way real servers
//! do: for the tests of how the proxy takes a backend that closes a connection gracefully,
//! answers slowly, or dies.
//!
//! - nginx's `keepalive_requests` ([`GoawayAt::Request`]): once a connection has taken N
//!   requests, nginx sends one GOAWAY (NO_ERROR) whose last stream id is the Nth request's, as
//!   that request's HEADERS arrives (`ngx_http_v2_state_headers`). Later streams are skipped,
//!   never answered: the GOAWAY told the client they were not processed. The connection closes
//!   (lingering) once the requests it took are answered. hyper's server cannot stand in for
//!   nginx: its graceful shutdown is the two-step one of RFC 9113 §6.8 (GOAWAY with the
//!   largest stream id and a PING, then the real last id), which refuses no stream.
//! - [`GoawayAt::Answer`]: the same single GOAWAY, sent only once the Nth request is answered
//!   (a server that decides at the end of a request). Streams that came meanwhile are left
//!   unanswered and refused by it: with slow answers, a client learns late that it must send
//!   them again.
//! - `refuse_every`: every k-th stream is refused at once with RST_STREAM REFUSED_STREAM, as
//!   nginx does past `http2_max_concurrent_streams`.
//! - `delay`: every answer waits that long.
//! - `answer_at_headers`: a request is answered as soon as its head is in, while its body
//!   may still be coming (an upload refused early, or a server that streams back while the
//!   client streams); the body is still read, and the stream's request half stays open.
//! - `silent_connections`: the first k connections are accepted and never answered (no
//!   SETTINGS), as by a backend still starting up: a dial to it waits until it gives up.
//! - [`H2Origin::kill`]: the listener closes and every connection is reset; the port is held
//!   (refusing) and the origin comes back on it with [`H2OriginOptions::listener`].
//!
//! Requests are not decoded (there is no HPACK decoder here, and none is needed: the header
//! blocks are skipped whole, and the answers use literal fields only). Every stream taken is
//! answered `200` with the body `{port} {n}` (the origin's port and the answer's number), so a
//! test knows which member answered. Request bodies are read and their window given back.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::ReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::DeadBackend;
use crate::h2raw::{
    ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, Frame, GOAWAY, HEADERS, NO_ERROR, PING,
    PREFACE, REFUSED_STREAM, RST_STREAM, SETTINGS, SETTINGS_MAX_CONCURRENT_STREAMS, frame,
    header_block, rst_stream, window_update,
};
use crate::web::ResetOnKill;

/// When a connection that reached its request limit sends its GOAWAY.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GoawayAt {
    /// As the last request it takes arrives (nginx).
    #[default]
    Request,
    /// Once the last request it takes is answered.
    Answer,
}

/// How an [`H2Origin`] behaves.
#[derive(Debug, Default)]
pub struct H2OriginOptions {
    /// Each connection takes this many requests, then sends GOAWAY NO_ERROR (at
    /// [`Self::goaway_at`]) and closes once they are answered.
    pub requests_per_connection: Option<usize>,
    pub goaway_at: GoawayAt,
    /// Every k-th stream of a connection is refused with RST_STREAM REFUSED_STREAM.
    pub refuse_every: Option<usize>,
    /// Every answer waits this long.
    pub delay: Option<Duration>,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` (nginx's default: 128).
    pub max_concurrent_streams: Option<u32>,
    /// The first this many connections are accepted and never answered.
    pub silent_connections: usize,
    /// Answer each request once its head is in, without waiting for its body's end.
    pub answer_at_headers: bool,
    /// Serve on this listener (a [`DeadBackend`] brought back with [`DeadBackend::listen`]).
    pub listener: Option<std::net::TcpListener>,
}

/// What an origin counts, across its connections.
#[derive(Debug, Default)]
pub struct OriginCounters {
    /// Connections accepted.
    pub connections: AtomicUsize,
    /// Requests answered.
    pub answered: AtomicUsize,
    /// GOAWAY frames sent.
    pub goaways: AtomicUsize,
    /// Streams left unanswered because a GOAWAY excluded them.
    pub ignored: AtomicUsize,
    /// Streams refused with RST_STREAM REFUSED_STREAM.
    pub refused: AtomicUsize,
}

/// A running origin; stops (connections aborted) when dropped.
pub struct H2Origin {
    pub addr: SocketAddr,
    pub counters: Arc<OriginCounters>,
    killed: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Debug, Clone, Copy)]
struct Behaviour {
    port: u16,
    limit: Option<usize>,
    goaway_at: GoawayAt,
    refuse_every: Option<usize>,
    delay: Option<Duration>,
    max_streams: u32,
    silent: usize,
    early: bool,
}

impl H2Origin {
    /// An origin on a fresh port (or `opts.listener`).
    pub async fn start(opts: H2OriginOptions) -> H2Origin {
        let listener = match opts.listener {
            Some(listener) => {
                listener.set_nonblocking(true).unwrap();
                TcpListener::from_std(listener).unwrap()
            }
            None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listener.local_addr().unwrap();
        let behaviour = Behaviour {
            port: addr.port(),
            limit: opts.requests_per_connection,
            goaway_at: opts.goaway_at,
            refuse_every: opts.refuse_every,
            delay: opts.delay,
            max_streams: opts.max_concurrent_streams.unwrap_or(128),
            silent: opts.silent_connections,
            early: opts.answer_at_headers,
        };
        let counters = Arc::new(OriginCounters::default());
        let killed = CancellationToken::new();
        let task = tokio::spawn({
            let (counters, killed) = (Arc::clone(&counters), killed.clone());
            async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let accepted = tokio::select! {
                        res = listener.accept() => res,
                        () = killed.cancelled() => break,
                    };
                    let Ok((tcp, _)) = accepted else {
                        return;
                    };
                    let n = counters.connections.fetch_add(1, Ordering::SeqCst) + 1;
                    let reset = ResetOnKill::of(&tcp);
                    let counters = Arc::clone(&counters);
                    let serve = async move {
                        if n <= behaviour.silent {
                            // Read (and drop) whatever comes, answer nothing, until the
                            // client gives up.
                            let mut tcp = tcp;
                            let mut sink = [0u8; 4096];
                            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                            return;
                        }
                        let _ = serve(tcp, behaviour, &counters).await;
                    };
                    conns.spawn(reset.serve(serve, killed.clone()));
                }
                drop(listener);
                while conns.join_next().await.is_some() {}
            }
        });
        H2Origin {
            addr,
            counters,
            killed,
            task,
        }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.counters.answered.load(Ordering::SeqCst)
    }

    /// Kills the origin: the listener closes and every open connection is reset (its streams
    /// in flight are never answered). The port is held, refusing, in the [`DeadBackend`].
    pub async fn kill(mut self) -> DeadBackend {
        self.killed.cancel();
        let _ = (&mut self.task).await;
        DeadBackend::hold(self.addr)
    }
}

impl Drop for H2Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads frames; `next` is cancel-safe (the bytes read stay in `buf`).
#[derive(Default)]
struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    fn parse(&mut self) -> Option<Frame> {
        if self.buf.len() < 9 {
            return None;
        }
        let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
        if self.buf.len() < 9 + len {
            return None;
        }
        let head: Vec<u8> = self.buf.drain(..9 + len).collect();
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload: head[9..].to_vec(),
        })
    }

    async fn preface(&mut self, rd: &mut ReadHalf<'_>) -> io::Result<()> {
        while self.buf.len() < PREFACE.len() {
            if rd.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        if &self.buf[..PREFACE.len()] != PREFACE {
            return Err(io::Error::other("not an HTTP/2 preface"));
        }
        self.buf.drain(..PREFACE.len());
        Ok(())
    }

    async fn next(&mut self, rd: &mut ReadHalf<'_>) -> io::Result<Option<Frame>> {
        loop {
            if let Some(f) = self.parse() {
                return Ok(Some(f));
            }
            if rd.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// A stream the origin took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The request is still coming (header block or body).
    Receiving,
    /// Its answer is scheduled.
    Answering,
}

type Answer = Pin<Box<dyn Future<Output = u32> + Send>>;

/// One connection, until it closes (or fails).
async fn serve(mut tcp: TcpStream, b: Behaviour, counters: &OriginCounters) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let (mut rd, mut wr) = tcp.split();
    let mut reader = Reader::default();
    reader.preface(&mut rd).await?;
    let mut settings = Vec::new();
    settings.extend_from_slice(&SETTINGS_MAX_CONCURRENT_STREAMS.to_be_bytes());
    settings.extend_from_slice(&b.max_streams.to_be_bytes());
    wr.write_all(&frame(SETTINGS, 0, 0, &settings)).await?;

    let mut streams: HashMap<u32, Phase> = HashMap::new();
    let mut answers: FuturesUnordered<Answer> = FuturesUnordered::new();
    // Streams seen (taken or refused), and taken.
    let (mut seen, mut taken) = (0usize, 0usize);
    // The last stream id a GOAWAY announced.
    let mut goaway: Option<u32> = None;
    // With `GoawayAt::Answer`: the stream whose answer sends the GOAWAY.
    let mut last_taken: Option<u32> = None;
    // A header block that goes on in CONTINUATION frames: its stream, and whether the request
    // ends with it.
    let mut block: Option<(u32, bool)> = None;
    loop {
        if goaway.is_some() && streams.is_empty() {
            // Lingering close, as nginx: FIN, then read (and drop) what the client still
            // sends until it closes too, so that nothing unread turns the close into a reset.
            wr.shutdown().await?;
            let linger = async {
                while reader.next(&mut rd).await?.is_some() {}
                Ok::<_, io::Error>(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), linger).await;
            return Ok(());
        }
        let f = tokio::select! {
            Some(id) = answers.next(), if !answers.is_empty() => {
                if streams.remove(&id).is_none() {
                    continue; // reset by the client meanwhile
                }
                let n = counters.answered.fetch_add(1, Ordering::SeqCst) + 1;
                let body = format!("{} {n}\n", b.port);
                let length = body.len().to_string();
                let mut head = vec![0x88]; // :status 200, from the static table
                head.extend(header_block(&[
                    ("content-type", "text/plain"),
                    ("content-length", &length),
                ]));
                let mut out = frame(HEADERS, END_HEADERS, id, &head);
                out.extend(frame(DATA, END_STREAM, id, body.as_bytes()));
                if last_taken == Some(id) {
                    out.extend(go_away(id));
                    counters.goaways.fetch_add(1, Ordering::SeqCst);
                    goaway = Some(id);
                }
                wr.write_all(&out).await?;
                continue;
            }
            f = reader.next(&mut rd) => f?,
        };
        let Some(f) = f else {
            return Ok(());
        };
        let mut complete: Option<u32> = None;
        match f.kind {
            SETTINGS if f.flags & ACK == 0 => wr.write_all(&frame(SETTINGS, ACK, 0, &[])).await?,
            PING if f.flags & ACK == 0 => {
                wr.write_all(&frame(PING, ACK, 0, &f.payload)).await?;
            }
            GOAWAY => return Ok(()),
            RST_STREAM => {
                streams.remove(&f.stream);
                if last_taken == Some(f.stream) && goaway.is_none() {
                    // The stream whose answer was to carry the GOAWAY is gone: send it now.
                    wr.write_all(&go_away(f.stream)).await?;
                    counters.goaways.fetch_add(1, Ordering::SeqCst);
                    goaway = Some(f.stream);
                }
            }
            HEADERS => {
                let ends = f.flags & END_STREAM != 0;
                if f.flags & END_HEADERS == 0 {
                    block = Some((f.stream, ends));
                }
                let excluded = goaway.is_some_and(|last| f.stream > last)
                    || b.limit.is_some_and(|limit| taken >= limit);
                if excluded {
                    // Not processed: the GOAWAY (sent, or to come) says so.
                    counters.ignored.fetch_add(1, Ordering::SeqCst);
                } else {
                    seen += 1;
                    if b.refuse_every.is_some_and(|k| seen % k == 0) {
                        counters.refused.fetch_add(1, Ordering::SeqCst);
                        wr.write_all(&rst_stream(f.stream, REFUSED_STREAM)).await?;
                    } else {
                        taken += 1;
                        streams.insert(f.stream, Phase::Receiving);
                        if b.limit == Some(taken) {
                            match b.goaway_at {
                                GoawayAt::Request => {
                                    wr.write_all(&go_away(f.stream)).await?;
                                    counters.goaways.fetch_add(1, Ordering::SeqCst);
                                    goaway = Some(f.stream);
                                }
                                GoawayAt::Answer => last_taken = Some(f.stream),
                            }
                        }
                        if (ends || b.early) && block.is_none() {
                            complete = Some(f.stream);
                        }
                    }
                }
            }
            CONTINUATION if f.flags & END_HEADERS != 0 => {
                if let Some((id, ends)) = block.take()
                    && (ends || b.early)
                    && streams.get(&id) == Some(&Phase::Receiving)
                {
                    complete = Some(id);
                }
            }
            DATA => {
                let len = f.payload.len() as u32;
                let ends = f.flags & END_STREAM != 0;
                let mut out = Vec::new();
                if len > 0 {
                    out.extend(window_update(0, len));
                    if !ends && streams.contains_key(&f.stream) {
                        out.extend(window_update(f.stream, len));
                    }
                }
                if !out.is_empty() {
                    wr.write_all(&out).await?;
                }
                if ends && streams.get(&f.stream) == Some(&Phase::Receiving) {
                    complete = Some(f.stream);
                }
            }
            _ => {}
        }
        if let Some(id) = complete {
            streams.insert(id, Phase::Answering);
            let delay = b.delay;
            answers.push(Box::pin(async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                id
            }));
        }
    }
}

/// GOAWAY NO_ERROR with `last` as the last stream id.
fn go_away(last: u32) -> Vec<u8> {
    let mut payload = last.to_be_bytes().to_vec();
    payload.extend_from_slice(&NO_ERROR.to_be_bytes());
    frame(GOAWAY, 0, 0, &payload)
}
