//! The per-request access log: one `info` line per L7 request, target [`TARGET`], message
//! `request`, written when the response is over (its body finished, failed or abandoned).
//!
//! No I/O of its own: the line goes to the sink the binary installed (`model::logline`, which
//! formats it as tracing-subscriber would, at a fraction of the cost), else to `tracing`.
//! [`Trace`] is what `downstream` and `upstream` note about a request on its way (the member
//! asked, the retries, a request body counter) and costs nothing unless the line is on: a
//! `bool` decides, once per request, and
//! nothing is allocated or formatted when it is false (the trace is then a local of the
//! request's; on, it is the record's own). [`RequestLog`] is the record of a
//! logged request; it travels inside the response body (`downstream::ProxyBody`), which
//! counts the body's bytes into it, and writes the line when it is dropped, so the line comes
//! exactly once whatever ends the response (the last frame, a backend error mid-body, the
//! client going away, or the request's future dropped before any response).
//!
//! Fields that would carry nothing (`host` when it is the route's hostname, `backend` when
//! none was asked, `retries` when there was none, `error` when there was none) are left out,
//! not written empty.
//!
//! Invariants: the line is a root event (no parent span), so it carries the connection's id,
//! listener, client and route as fields of its own: with the text format a span's
//! `conn{...}:` prefix is not logfmt. Every text value the client controls (host, path,
//! method) goes through [`escape`] first: printable ASCII without `\`, so the text
//! formatter's quoting (`"..."`, `\"` inside) is the only escaping left and the line parses as
//! logfmt, and the JSON formatter's string is the same text.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{Method, Version};

pub use crate::model::logline::escape;
use crate::model::logline::{self, Line};

/// The tracing target of the per-request line: what `RUST_LOG` filters on
/// (`RUST_LOG=info,mc_proxy::request=off`).
pub const TARGET: &str = "mc_proxy::request";

/// Longest request target logged, in bytes of the request (before escaping).
pub const MAX_PATH: usize = 1024;

/// Longest `Host` / `:authority` logged, in bytes of the request (before escaping).
pub const MAX_HOST: usize = 256;

/// Whether the subscriber writes request lines at all: a flag that is on with
/// `RUST_LOG=...,mc_proxy::request=off` builds no record either. Asked only when a flag is on.
pub fn wanted() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// What a request's trip notes for its log line. `on` is decided once per request; the rest
/// is filled only when it is true (except `tries`, a plain counter).
#[derive(Debug, Default)]
pub struct Trace {
    /// The line is on for this request (its listener's or its route's `access_log`).
    pub on: bool,
    /// The member that answered, or the last one tried (`on` only).
    pub backend: Option<String>,
    /// Members asked so far, the first included.
    pub tries: u32,
    /// Request body bytes read from the client (`on` only; see `ReqBody::Counted`).
    pub bytes_in: Option<Arc<AtomicU64>>,
}

impl Trace {
    /// Notes that `backend` is being asked.
    pub fn asking(&mut self, backend: &str) {
        self.tries += 1;
        if self.on {
            self.backend = Some(backend.to_owned());
        }
    }
}

/// The connection a logged request came on, as its line names it.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The connection's id.
    pub conn: u64,
    /// The address the client connected to.
    pub local: std::net::SocketAddr,
    /// The real client.
    pub client: std::net::SocketAddr,
    /// The route the connection was routed by.
    pub route: Arc<crate::model::routes::RouteInfo>,
    /// A cluster node's name (`None` on a single node).
    pub node: Option<Arc<str>>,
}

/// The record of one logged request, written as its line when dropped.
#[derive(Debug)]
pub struct RequestLog {
    ctx: Conn,
    started: Instant,
    method: Method,
    target: Option<PathAndQuery>,
    host: String,
    version: Version,
    /// The status sent; 0 while none was (and in the line when none ever was).
    pub status: u16,
    /// What the request's trip notes, filled in place (so a request dropped on its way still
    /// names the backend it was waiting for).
    pub trace: Trace,
    /// Response body bytes handed to the client.
    pub bytes_out: u64,
    /// The response body reached its end.
    pub ended: bool,
    /// What the response body failed with, if it did.
    pub error: Option<String>,
}

impl RequestLog {
    /// A request just received, with its head's method, target, host (`:authority` or
    /// `Host`, raw) and version.
    pub fn new(
        ctx: Conn,
        started: Instant,
        method: Method,
        target: Option<PathAndQuery>,
        host: Option<&[u8]>,
        version: Version,
    ) -> Self {
        RequestLog {
            ctx,
            started,
            method,
            target,
            host: host.map_or_else(String::new, |h| escape(h, MAX_HOST)),
            version,
            status: 0,
            trace: Trace {
                on: true,
                ..Trace::default()
            },
            bytes_out: 0,
            ended: false,
            error: None,
        }
    }

    /// How the response ended, as the line's `outcome`.
    fn outcome(&self) -> &'static str {
        if self.error.is_some() {
            "failed"
        } else if self.ended {
            "complete"
        } else {
            // Dropped before its end: the client reset the stream or closed the connection
            // (or, with status 0, gave up before the response head).
            "client_closed"
        }
    }

    /// The line's fields, in the order the `tracing` event below has them.
    fn fields(&self, line: &mut Line<'_>) {
        let ctx = &self.ctx;
        let retries = self.trace.tries.saturating_sub(1);
        line.u64("conn", ctx.conn)
            .addr("listener", ctx.local)
            .addr("client", ctx.client)
            .str("route", &ctx.route.route.hostname)
            .opt_str("host", self.host())
            .escaped("method", self.method.as_str().as_bytes(), MAX_HOST)
            .escaped(
                "path",
                self.target
                    .as_ref()
                    .map_or(&[][..], |t| t.as_str().as_bytes()),
                MAX_PATH,
            )
            .str("protocol", protocol(self.version))
            .u64("status", u64::from(self.status))
            .opt_str("backend", self.trace.backend.as_deref())
            .opt_u64("retries", (retries > 0).then_some(u64::from(retries)))
            .opt_str("node", ctx.node.as_deref())
            .u64("duration_ms", self.started.elapsed().as_millis() as u64)
            .u64("bytes_in", self.bytes_in())
            .u64("bytes_out", self.bytes_out)
            .str("outcome", self.outcome());
        if let Some(error) = &self.error {
            line.escaped("error", error.as_bytes(), MAX_HOST);
        }
    }

    /// The request's host when the route's name does not say it already (another case, a
    /// port, a wildcard route's name, a misdirected request): left out otherwise.
    fn host(&self) -> Option<&str> {
        (self.host != self.ctx.route.route.hostname).then_some(self.host.as_str())
    }

    fn bytes_in(&self) -> u64 {
        self.trace
            .bytes_in
            .as_ref()
            .map_or(0, |b| b.load(Ordering::Relaxed))
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        if logline::event(tracing::Level::INFO, TARGET, "request", |line| {
            self.fields(line)
        }) {
            return;
        }
        // No sink installed (a library user's or a test's process): through `tracing`.
        let ctx = &self.ctx;
        let path = self
            .target
            .as_ref()
            .map_or_else(String::new, |t| escape(t.as_str().as_bytes(), MAX_PATH));
        // Fields that would say nothing are left out (a `None` is not written): no backend
        // asked, no retry, no error. A line is written per request; HAProxy's is 130 bytes.
        let error = self
            .error
            .as_deref()
            .map(|e| escape(e.as_bytes(), MAX_HOST));
        let retries = self.trace.tries.saturating_sub(1);
        tracing::info!(
            target: TARGET,
            parent: None,
            conn = ctx.conn,
            listener = %ctx.local,
            client = %ctx.client,
            route = ctx.route.route.hostname.as_str(),
            host = self.host(),
            method = escape(self.method.as_str().as_bytes(), MAX_HOST).as_str(),
            path = path.as_str(),
            protocol = protocol(self.version),
            status = self.status,
            backend = self.trace.backend.as_deref(),
            retries = (retries > 0).then_some(retries),
            node = ctx.node.as_deref(),
            duration_ms = self.started.elapsed().as_millis() as u64,
            bytes_in = self.bytes_in(),
            bytes_out = self.bytes_out,
            outcome = self.outcome(),
            error = error.as_deref(),
            "request"
        );
    }
}

/// The client's HTTP version as the line names it.
fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}
