//! The Prometheus endpoint: `GET /metrics` on the `[metrics] addr` TCP listener.
//!
//! I/O: accepts HTTP/1.1 connections on the listener it is given and writes scrapes; reads
//! nothing but the live [`State`]. Invariants:
//! - Nothing on the data path knows this module exists. [`StateCollector`] reads, at scrape
//!   time, the same relaxed atomics the admin API reads (`ListenerCounters`, every route
//!   table's `RouteStats`), through the lock-free `ArcSwap` snapshots: a scrape never takes a
//!   lock a connection waits on, and routes added or removed at run time appear or disappear
//!   in the next scrape with no registration bookkeeping.
//! - The exposition is `prometheus-client`'s: the Prometheus text format (0.0.4) by default,
//!   which `promtool check metrics` checks, or OpenMetrics text when the scraper's `Accept`
//!   asks for it. Nothing here formats samples by hand.
//! - Connections are bounded: at most [`MAX_CONNECTIONS`] at once (further ones wait in the
//!   kernel's backlog), [`HEADER_READ_TIMEOUT`] to send each request head, and
//!   [`CONNECTION_LIFETIME`] in all. Every connection task belongs to one `TaskTracker`;
//!   [`serve`] returns once shutdown has fired and they have all ended (each gets
//!   [`SHUTDOWN_GRACE`] to finish the response it is writing).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use mc_proxy_shared::{BackendState, CloseReason, MemberStats, ResetReason};

use crate::model::state::{ListenerCounters, ListenerState, State};
use crate::model::stats::{
    BUCKET_BOUNDS_SECONDS, BUCKETS, BackendSnapshot, HistogramSnapshot, RouteStatsSnapshot,
};

/// Scrape connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send a request head (also ends idle keep-alive connections).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a scrape connection lives, so a client that stops reading cannot hold a slot.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// After shutdown fires, the time an open connection gets to finish its response.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The Prometheus text format (0.0.4): the default, what `promtool check metrics` checks and
/// every Prometheus-compatible scraper reads.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// OpenMetrics 1.0.0 text: served to a client whose `Accept` asks for it (Prometheus does).
/// Same families and values; adds `# UNIT` and the `# EOF` that tells a cut scrape apart.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The status classes, as the `class` label names them; index i counts statuses (i+1)xx.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The `[metrics] addr` could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Binds the `[metrics] addr` listener (before serving, so a taken port fails the start).
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Reads the live state at scrape time and encodes every mc-proxy metric.
#[derive(Debug)]
pub struct StateCollector {
    state: Arc<State>,
}

impl StateCollector {
    /// A collector over `state`.
    pub fn new(state: Arc<State>) -> Self {
        StateCollector { state }
    }
}

/// A registry holding only a [`StateCollector`] over `state`.
pub fn registry(state: Arc<State>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StateCollector::new(state)));
    registry
}

/// The two text formats a scrape can be encoded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4 ([`PROMETHEUS_TEXT`]).
    Prometheus,
    /// OpenMetrics 1.0.0 text ([`OPENMETRICS_TEXT`]).
    OpenMetrics,
}

impl Format {
    /// OpenMetrics if the `Accept` header lists it, else the Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => PROMETHEUS_TEXT,
            Format::OpenMetrics => OPENMETRICS_TEXT,
        }
    }
}

/// Encodes one scrape of `registry`.
pub fn encode(registry: &Registry, format: Format) -> String {
    let mut out = String::new();
    match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry),
    }
    .expect("writing to a String cannot fail");
    out
}

type Labels<'a> = [(&'static str, &'a str)];

/// Encodes one metric family: the descriptor, then a sample per label set from `samples`.
fn family<'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'static str, &'a str)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, metric) in samples {
        let labels: &Labels<'a> = &labels;
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram snapshot as an encodable metric with the fixed bounds.
#[derive(Debug)]
struct ConstHistogram(HistogramSnapshot);

impl EncodeMetric for ConstHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        // prometheus-client takes per-bucket counts and accumulates them; infinity is `+Inf`.
        let mut buckets = [(f64::INFINITY, 0u64); BUCKETS];
        for (i, slot) in buckets.iter_mut().enumerate() {
            *slot = (
                BUCKET_BOUNDS_SECONDS
                    .get(i)
                    .copied()
                    .unwrap_or(f64::INFINITY),
                self.0.counts[i],
            );
        }
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.0.sum_seconds(),
            self.0.count(),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The process's own figures (`process_*`, as the Prometheus client libraries name them);
/// nothing where `/proc` cannot be read.
fn encode_process(e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    let Some(p) = crate::api::procfs::read() else {
        return Ok(());
    };
    let none = || Vec::<(&'static str, &str)>::new();
    family(
        e,
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds.",
        None,
        MetricType::Counter,
        [(none(), ConstCounter::new(p.cpu_seconds))],
    )?;
    let gauges: [(&str, &str, Option<f64>); 5] = [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Some(p.resident_bytes as f64),
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Some(p.virtual_bytes as f64),
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            Some(p.open_fds as f64),
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors (the soft limit).",
            p.max_fds.map(|n| n as f64),
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
            Some(p.start_time_seconds),
        ),
    ];
    for (name, help, value) in gauges {
        // An unlimited descriptor limit has no number: the family is described, empty.
        family(
            e,
            name,
            help,
            None,
            MetricType::Gauge,
            value.map(|v| (none(), ConstGauge::new(v))),
        )?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        encode_build_info(e)?;
        encode_process(e)?;
        let all = self.state.listeners();
        let listeners: Vec<_> = all.iter().map(|l| (l.addr.to_string(), l)).collect();
        encode_listeners(e, &listeners)?;
        encode_routes(e, &listeners)?;
        encode_members(e, &listeners)?;
        encode_health_checks(e, &listeners)?;
        encode_pool(e, &self.state)?;
        encode_cluster(e, &self.state)?;
        encode_acme(e, &self.state)?;
        Ok(())
    }
}

/// With `[acme]`: its orders by outcome. Absent without.
fn encode_acme(e: &mut DescriptorEncoder<'_>, state: &State) -> Result<(), std::fmt::Error> {
    if !state.acme.enabled() {
        return Ok(());
    }
    let issued = state
        .acme
        .orders_issued
        .load(std::sync::atomic::Ordering::Relaxed);
    let failed = state
        .acme
        .orders_failed
        .load(std::sync::atomic::Ordering::Relaxed);
    family(
        e,
        "mcproxy_acme_orders",
        "ACME orders since start, by outcome: issued (a certificate, served), failed (the CA \
         refused, a validation failed, the CA was unreachable; retried after a back-off).",
        None,
        MetricType::Counter,
        [
            (vec![("outcome", "issued")], ConstCounter::new(issued)),
            (vec![("outcome", "failed")], ConstCounter::new(failed)),
        ],
    )
}

/// On a cluster node: its link to the fleet's store. Absent on a single node.
fn encode_cluster(e: &mut DescriptorEncoder<'_>, state: &State) -> Result<(), std::fmt::Error> {
    let Some(view) = state.cluster() else {
        return Ok(());
    };
    let node = || vec![("node", view.node.as_str())];
    let connected = i64::from(view.link == crate::model::cluster::Link::Connected);
    let since = view
        .since
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    family(
        e,
        "mcproxy_cluster_connected",
        "1 while this node is connected to the fleet's store (etcd) and watching it; 0 while \
         it serves its last applied state without it.",
        None,
        MetricType::Gauge,
        [(node(), ConstGauge::new(connected))],
    )?;
    family(
        e,
        "mcproxy_cluster_link_since_seconds",
        "When the link to the fleet's store entered its current state, since the Unix epoch.",
        None,
        MetricType::Gauge,
        [(node(), ConstGauge::new(since))],
    )?;
    family(
        e,
        "mcproxy_cluster_applied_revision",
        "The store revision this node has applied.",
        None,
        MetricType::Gauge,
        [(node(), ConstGauge::new(view.applied))],
    )?;
    family(
        e,
        "mcproxy_cluster_behind_revisions",
        "Store revisions this node has heard of but not applied yet.",
        None,
        MetricType::Gauge,
        [(node(), ConstGauge::new(view.behind()))],
    )?;
    family(
        e,
        "mcproxy_cluster_drift_repaired",
        "Objects a periodic comparison found different from the store and repaired, since \
         start (0 on a healthy node).",
        None,
        MetricType::Counter,
        [(node(), ConstCounter::new(view.drift_repaired))],
    )?;
    Ok(())
}

/// `mcproxy_build_info{version="..."} 1`.
fn encode_build_info(e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    // `mcproxy_build_info{version="..."} 1`: an OpenMetrics info, a gauge in the
    // Prometheus text format.
    Info::new([("version", env!("CARGO_PKG_VERSION"))]).encode(e.encode_descriptor(
        "mcproxy_build",
        "mc-proxy build information; always 1.",
        None,
        MetricType::Info,
    )?)?;
    Ok(())
}

/// The listeners' families: accepted, active, resets, TLS failures, closes, blocked, over
/// capacity.
fn encode_listeners(
    e: &mut DescriptorEncoder<'_>,
    listeners: &[(String, &Arc<ListenerState>)],
) -> Result<(), std::fmt::Error> {
    let counter = |e: &mut DescriptorEncoder<'_>,
                   name: &str,
                   help: &str,
                   read: &dyn Fn(&ListenerCounters) -> u64| {
        family(
            e,
            name,
            help,
            None,
            MetricType::Counter,
            listeners.iter().map(|(name, l)| {
                (
                    vec![("listener", name.as_str())],
                    ConstCounter::new(read(&l.counters)),
                )
            }),
        )
    };
    counter(
        e,
        "mcproxy_listener_accepted_connections",
        "Connections accepted by the listener.",
        &|c| c.accepted.load(Relaxed),
    )?;
    family(
        e,
        "mcproxy_listener_active_connections",
        "Connections open on the listener now.",
        None,
        MetricType::Gauge,
        listeners.iter().map(|(name, l)| {
            (
                vec![("listener", name.as_str())],
                ConstGauge::new(l.counters.active.load(Relaxed)),
            )
        }),
    )?;
    family(
        e,
        "mcproxy_listener_resets",
        "Connections reset by the pipeline, by reason (blocked, not_tls, unknown_host, \
         backend_unreachable, ...).",
        None,
        MetricType::Counter,
        listeners.iter().flat_map(|(name, l)| {
            // Every reason, zeros included, so rate() works from the first reset.
            ResetReason::ALL.iter().map(move |&reason| {
                (
                    vec![("listener", name.as_str()), ("reason", reason.as_str())],
                    ConstCounter::new(l.counters.resets(reason)),
                )
            })
        }),
    )?;
    family(
        e,
        "mcproxy_listener_tls_handshake_failures",
        "L7 TLS handshakes that failed, by reason (certificate_rejected: the client's alert \
         refused the certificate; incompatible: no version, suite or group in common; \
         no_alpn; protocol_error; client_closed; timeout; alert_received; other).",
        None,
        MetricType::Counter,
        listeners.iter().flat_map(|(name, l)| {
            mc_proxy_shared::TlsFailure::ALL.iter().map(move |&reason| {
                (
                    vec![("listener", name.as_str()), ("reason", reason.as_str())],
                    ConstCounter::new(l.counters.tls_failures(reason)),
                )
            })
        }),
    )?;
    family(
        e,
        "mcproxy_listener_closes",
        "Served connections closed, by reason (closed, idle_timeout, keepalive_timeout, \
         request_header_timeout, route_gone, drained, ...).",
        None,
        MetricType::Counter,
        listeners.iter().flat_map(|(name, l)| {
            // Every reason, zeros included, as for resets.
            CloseReason::ALL.iter().map(move |&reason| {
                (
                    vec![("listener", name.as_str()), ("reason", reason.as_str())],
                    ConstCounter::new(l.counters.closes(reason)),
                )
            })
        }),
    )?;
    counter(
        e,
        "mcproxy_listener_blocked_connections",
        "Connections refused by policy: the firewall, or a PROXY header from a peer outside \
         proxy_protocol_from.",
        &|c| c.blocked.load(Relaxed),
    )?;
    counter(
        e,
        "mcproxy_listener_over_capacity_connections",
        "Connections closed at accept because [proxy] max_connections was reached.",
        &|c| c.over_capacity.load(Relaxed),
    )?;
    encode_client_tables(e, listeners)
}

/// The client tables of listeners with a client limit (made when one was first on): their
/// size, use, evictions and untracked admissions. Refusals are in `mcproxy_listener_resets`
/// (`client_conn_limit`, `client_rate_limit`).
fn encode_client_tables(
    e: &mut DescriptorEncoder<'_>,
    listeners: &[(String, &Arc<ListenerState>)],
) -> Result<(), std::fmt::Error> {
    let tables: Vec<(&str, crate::model::clients::TableStats)> = listeners
        .iter()
        .filter_map(|(name, l)| Some((name.as_str(), l.client_table_stats()?)))
        .collect();
    for (name, help, kind, read) in [
        (
            "mcproxy_listener_client_table_capacity",
            "Slots of the listener's client table ([proxy] client_table_size).",
            MetricType::Gauge,
            (|t| t.capacity) as fn(&crate::model::clients::TableStats) -> u64,
        ),
        (
            "mcproxy_listener_client_table_entries",
            "Slots of the listener's client table holding a client.",
            MetricType::Gauge,
            |t| t.entries,
        ),
        (
            "mcproxy_listener_client_table_evictions",
            "Clients dropped from the full client table while their new-connection bucket was \
             not full (they start over with a full one).",
            MetricType::Counter,
            |t| t.evictions,
        ),
        (
            "mcproxy_listener_client_table_untracked",
            "Connections admitted without per-client limits: every slot the client could take \
             held open connections.",
            MetricType::Counter,
            |t| t.untracked,
        ),
    ] {
        match kind {
            MetricType::Gauge => family(
                e,
                name,
                help,
                None,
                kind,
                tables.iter().map(|(listener, t)| {
                    (
                        vec![("listener", *listener)],
                        ConstGauge::new(read(t) as i64),
                    )
                }),
            )?,
            _ => family(
                e,
                name,
                help,
                None,
                kind,
                tables.iter().map(|(listener, t)| {
                    (vec![("listener", *listener)], ConstCounter::new(read(t)))
                }),
            )?,
        }
    }
    Ok(())
}

/// The routes' families: connections, bytes, errors, retries, requests and responses,
/// durations (the request families for L7 routes only).
fn encode_routes(
    e: &mut DescriptorEncoder<'_>,
    listeners: &[(String, &Arc<ListenerState>)],
) -> Result<(), std::fmt::Error> {
    // One snapshot per route for the whole scrape: every family sees the same moment.
    // L4 routes carry no HTTP: the request families are for L7 routes only (an L4 route
    // exported 24 series that could never move).
    let mut routes = Vec::new();
    let mut l7_routes = Vec::new();
    let mut certificates = Vec::new();
    for (listener, l) in listeners {
        for info in l.routes().iter() {
            if let Some(summary) = info.tls.as_ref().and_then(|t| t.summary.as_ref()) {
                certificates.push((
                    listener.as_str(),
                    info.route.hostname.clone(),
                    summary.not_after,
                ));
            }
            let row = (
                listener.as_str(),
                info.route.hostname.clone(),
                info.stats.snapshot(),
            );
            if info.route.mode == mc_proxy_shared::Mode::L7 {
                l7_routes.push(row.clone());
            }
            routes.push(row);
        }
    }
    macro_rules! per_route {
        ($name:expr, $help:expr, $unit:expr, $type:expr, $metric:expr) => {
            per_route!(routes, $name, $help, $unit, $type, $metric)
        };
        ($rows:ident, $name:expr, $help:expr, $unit:expr, $type:expr, $metric:expr) => {
            family(
                e,
                $name,
                $help,
                $unit,
                $type,
                $rows.iter().map(|(listener, route, s)| {
                    (
                        vec![("listener", *listener), ("route", route.as_str())],
                        $metric(s),
                    )
                }),
            )?
        };
    }
    per_route!(
        "mcproxy_route_connections",
        "Connections routed by the route.",
        None,
        MetricType::Counter,
        |s: &RouteStatsSnapshot| ConstCounter::new(s.total)
    );
    per_route!(
        "mcproxy_route_active_connections",
        "Connections routed by the route and open now.",
        None,
        MetricType::Gauge,
        |s: &RouteStatsSnapshot| ConstGauge::new(s.active)
    );
    per_route!(
        "mcproxy_route_receive",
        "Bytes received from clients and sent toward the backend (TLS bytes on the client \
         connection, ClientHello included; admin API bytes_in).",
        Some(&Unit::Bytes),
        MetricType::Counter,
        |s: &RouteStatsSnapshot| ConstCounter::new(s.bytes_up)
    );
    per_route!(
        "mcproxy_route_transmit",
        "Bytes sent to clients from the backend (TLS bytes on the client connection; admin \
         API bytes_out).",
        Some(&Unit::Bytes),
        MetricType::Counter,
        |s: &RouteStatsSnapshot| ConstCounter::new(s.bytes_down)
    );
    per_route!(
        "mcproxy_route_backend_errors",
        "Failures the client saw because of the backend. L4: connections reset because no \
         member answered the dial. L7: requests answered 502/504 because of the backend.",
        None,
        MetricType::Counter,
        |s: &RouteStatsSnapshot| ConstCounter::new(s.backend_errors)
    );
    per_route!(
        "mcproxy_route_retries",
        "Tries the client did not see: L4 dials that went on to the next member, L7 \
         requests sent again (failover, lost connection, refused stream, graceful close).",
        None,
        MetricType::Counter,
        |s: &RouteStatsSnapshot| ConstCounter::new(s.retries)
    );
    per_route!(
        l7_routes,
        "mcproxy_route_requests",
        "L7 requests received.",
        None,
        MetricType::Counter,
        |s: &RouteStatsSnapshot| ConstCounter::new(s.requests)
    );
    family(
        e,
        "mcproxy_route_responses",
        "L7 responses sent, by status class (the proxy's own 421/502/504 included).",
        None,
        MetricType::Counter,
        l7_routes.iter().flat_map(|(listener, route, s)| {
            CLASSES.iter().zip(s.responses).map(move |(class, n)| {
                (
                    vec![
                        ("listener", *listener),
                        ("route", route.as_str()),
                        ("class", *class),
                    ],
                    ConstCounter::new(n),
                )
            })
        }),
    )?;
    per_route!(
        l7_routes,
        "mcproxy_route_request_duration",
        "L7: time from receiving a request's head to handing back the response head (the \
         backend's, or the proxy's own 421/502/504); body streaming excluded.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
        |s: &RouteStatsSnapshot| ConstHistogram(s.request_duration)
    );
    per_route!(
        "mcproxy_route_backend_connect_duration",
        "Successful backend connection setups. L7: TCP connect, PROXY header, TLS and \
         HTTP/2 handshake, once per backend connection. L4: the TCP connect.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
        |s: &RouteStatsSnapshot| ConstHistogram(s.connect_duration)
    );

    family(
        e,
        "mcproxy_route_certificate_expiry_timestamp",
        "L7: when the certificate the route serves ends (its notAfter), seconds since the \
         Unix epoch. Alert on `mcproxy_route_certificate_expiry_timestamp_seconds - time() < \
         14 * 86400`.",
        Some(&Unit::Seconds),
        MetricType::Gauge,
        certificates.iter().map(|(listener, route, not_after)| {
            (
                vec![("listener", *listener), ("route", route.as_str())],
                ConstGauge::new(i64::try_from(*not_after).unwrap_or(i64::MAX)),
            )
        }),
    )?;
    per_route!(
        "mcproxy_route_no_backend",
        "Connections (L4, reset no_backend) or requests (L7, answered 503) refused because \
         no member of the route could take them.",
        None,
        MetricType::Counter,
        |s: &RouteStatsSnapshot| ConstCounter::new(s.no_backend)
    );
    per_route!(
        "mcproxy_route_denied",
        "Connections (L4, reset route_denied) or requests (L7, answered 403) refused by the \
         route's allow_from / deny_from.",
        None,
        MetricType::Counter,
        |s: &RouteStatsSnapshot| ConstCounter::new(s.denied)
    );
    per_route!(
        l7_routes,
        "mcproxy_route_rate_limited",
        "L7 requests answered 429 (never forwarded) by the route's client_request_rate or \
         route_request_rate.",
        None,
        MetricType::Counter,
        |s: &RouteStatsSnapshot| ConstCounter::new(s.rate_limited)
    );
    per_route!(
        l7_routes,
        "mcproxy_route_overloaded",
        "L7 requests answered 503 by the route's max_requests: its queue full, or their wait \
         over queue_timeout (never forwarded).",
        None,
        MetricType::Counter,
        |s: &RouteStatsSnapshot| ConstCounter::new(s.overloaded)
    );
    per_route!(
        l7_routes,
        "mcproxy_route_queued",
        "L7 requests that waited in the route's max_requests queue (served or not).",
        None,
        MetricType::Counter,
        |s: &RouteStatsSnapshot| ConstCounter::new(s.queued)
    );
    per_route!(
        l7_routes,
        "mcproxy_route_h2_rapid_resets",
        "L7 HTTP/2 connections sent GOAWAY ENHANCE_YOUR_CALM for resetting more than \
         h2_max_client_resets accepted streams within h2_client_reset_window.",
        None,
        MetricType::Counter,
        |s: &RouteStatsSnapshot| ConstCounter::new(s.rapid_resets)
    );
    Ok(())
}

/// A member's labels: listener, route, backend.
fn member_labels<'a>(
    (listener, route, m): &'a (&'a str, String, MemberStats),
) -> Vec<(&'static str, &'a str)> {
    vec![
        ("listener", *listener),
        ("route", route.as_str()),
        ("backend", m.address.as_str()),
    ]
}

/// The route members' families: weight, state, since, traffic, failures, ejections.
fn encode_members(
    e: &mut DescriptorEncoder<'_>,
    listeners: &[(String, &Arc<ListenerState>)],
) -> Result<(), std::fmt::Error> {
    // Route members: one sample per (listener, route, member).
    let mut members = Vec::new();
    for (listener, l) in listeners {
        for info in l.routes().iter() {
            for m in info.members() {
                members.push((listener.as_str(), info.route.hostname.clone(), m));
            }
        }
    }
    family(
        e,
        "mcproxy_route_backend_state",
        "1 for the state each route member is in (up, down, ejected, draining, disabled, \
         unknown), 0 for the others.",
        None,
        MetricType::Gauge,
        members.iter().flat_map(|m| {
            BackendState::ALL.iter().map(move |&state| {
                let mut l = member_labels(m);
                l.push(("state", state.as_str()));
                (l, ConstGauge::new(u64::from(m.2.state == state)))
            })
        }),
    )?;
    family(
        e,
        "mcproxy_route_backend_active",
        "L4 connections or L7 requests open on the route member now.",
        None,
        MetricType::Gauge,
        members
            .iter()
            .map(|m| (member_labels(m), ConstGauge::new(m.2.active))),
    )?;
    family(
        e,
        "mcproxy_route_backend_selected",
        "L4 connections or L7 requests sent to the route member.",
        None,
        MetricType::Counter,
        members
            .iter()
            .map(|m| (member_labels(m), ConstCounter::new(m.2.total))),
    )?;
    family(
        e,
        "mcproxy_route_backend_failures",
        "Failed connects and L7 connection-level failures (lost before the response, \
         response timeout) of the route member.",
        None,
        MetricType::Counter,
        members
            .iter()
            .map(|m| (member_labels(m), ConstCounter::new(m.2.failures))),
    )?;
    family(
        e,
        "mcproxy_route_backend_ejections",
        "Times passive health ejected the route member.",
        None,
        MetricType::Counter,
        members
            .iter()
            .map(|m| (member_labels(m), ConstCounter::new(m.2.ejections))),
    )?;
    family(
        e,
        "mcproxy_route_backend_state_since",
        "When the route member entered its current state, in seconds since the Unix epoch.",
        Some(&Unit::Seconds),
        MetricType::Gauge,
        members.iter().map(|m| {
            // Millisecond precision: exact in an f64 for millions of years.
            let since = m.2.since_ms as f64 / 1000.0;
            (member_labels(m), ConstGauge::new(since))
        }),
    )?;
    Ok(())
}

/// The active health checks' families, for the members of routes that have one.
fn encode_health_checks(
    e: &mut DescriptorEncoder<'_>,
    listeners: &[(String, &Arc<ListenerState>)],
) -> Result<(), std::fmt::Error> {
    // Active health checks: only the members of routes that have one.
    let mut checked = Vec::new();
    for (listener, l) in listeners {
        for info in l.routes().iter() {
            if info.route.health_check.is_none() {
                continue;
            }
            for (stats, m) in info.members().into_iter().zip(info.backends.members()) {
                let duration = m.health.check_duration();
                checked.push((
                    (listener.as_str(), info.route.hostname.clone(), stats),
                    duration,
                ));
            }
        }
    }
    family(
        e,
        "mcproxy_health_checks",
        "Active health check probes of the route member, by result (ok, failed).",
        None,
        MetricType::Counter,
        checked.iter().flat_map(|(m, _)| {
            [("ok", m.2.checks_passed), ("failed", m.2.checks_failed)]
                .into_iter()
                .map(move |(result, n)| {
                    let mut l = member_labels(m);
                    l.push(("result", result));
                    (l, ConstCounter::new(n))
                })
        }),
    )?;
    family(
        e,
        "mcproxy_health_check_duration",
        "Active health check probe durations of the route member, passed or failed (a \
         failed one to its failure, a timeout at the check's timeout).",
        Some(&Unit::Seconds),
        MetricType::Histogram,
        checked
            .iter()
            .map(|(m, d)| (member_labels(m), ConstHistogram(*d))),
    )?;
    Ok(())
}

/// The L7 backend connection pool's families, per backend (address, protocol, TLS).
fn encode_pool(e: &mut DescriptorEncoder<'_>, state: &State) -> Result<(), std::fmt::Error> {
    // The L7 backend connection pool, per backend (address, protocol, TLS).
    let backends: Vec<_> = state
        .backends
        .snapshot()
        .into_iter()
        .map(|b| {
            let tls = if b.key.tls { "true" } else { "false" };
            (b.key.backend.clone(), b.key.protocol.as_str(), tls, b)
        })
        .collect();
    fn labels<'a>(
        (backend, protocol, tls, _): &'a (String, &'static str, &'static str, BackendSnapshot),
    ) -> Vec<(&'static str, &'a str)> {
        vec![
            ("backend", backend.as_str()),
            ("protocol", *protocol),
            ("tls", *tls),
        ]
    }
    family(
        e,
        "mcproxy_backend_connections",
        "L7 pooled backend connections open now, by state: in_use (carrying a request) or \
         idle.",
        None,
        MetricType::Gauge,
        backends.iter().flat_map(|b| {
            let s = &b.3;
            [("in_use", s.in_use), ("idle", s.idle)].map(|(state, n)| {
                let mut l = labels(b);
                l.push(("state", state));
                (l, ConstGauge::new(n))
            })
        }),
    )?;
    family(
        e,
        "mcproxy_backend_requests_in_flight",
        "L7 requests on pooled backend connections now (HTTP/2 streams, HTTP/1.1 requests).",
        None,
        MetricType::Gauge,
        backends
            .iter()
            .map(|b| (labels(b), ConstGauge::new(b.3.requests))),
    )?;
    family(
        e,
        "mcproxy_backend_connections_opened",
        "L7 backend connections opened by the pool.",
        None,
        MetricType::Counter,
        backends
            .iter()
            .map(|b| (labels(b), ConstCounter::new(b.3.opened))),
    )?;
    family(
        e,
        "mcproxy_backend_connect_failures",
        "L7 backend connection attempts that failed (refused, TLS, handshake, timeout).",
        None,
        MetricType::Counter,
        backends
            .iter()
            .map(|b| (labels(b), ConstCounter::new(b.3.failed))),
    )?;
    Ok(())
}

/// Serves `GET /metrics` on `listener` until `shutdown` fires and every connection has ended.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!("metrics listening on http://{addr}/metrics"),
        Err(e) => tracing::warn!("metrics listener without a local address: {e}"),
    }
    let registry = Arc::new(registry(Arc::clone(&state)));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        // Take a slot before accepting: past the cap, clients wait in the backlog.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            res = listener.accept() => match res {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: back off briefly rather than spin.
                    tracing::warn!("metrics accept failed: {e}");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let (registry, state, shutdown) =
            (Arc::clone(&registry), Arc::clone(&state), shutdown.clone());
        tracker.spawn(async move {
            serve_connection(stream, registry, state, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    registry: Arc<Registry>,
    state: Arc<State>,
    shutdown: CancellationToken,
) {
    let service = service_fn(move |req| {
        let (registry, state) = (Arc::clone(&registry), Arc::clone(&state));
        async move { Ok::<_, Infallible>(respond(&req, &registry, &state)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        res = tokio::time::timeout(CONNECTION_LIFETIME, conn.as_mut()) => res.ok(),
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await.ok()
        }
    };
    if let Some(Err(e)) = result {
        tracing::debug!("metrics connection: {e}");
    }
}

/// The answer to one request: the scrape, the readiness answer, 404 or 405.
fn respond(req: &Request<Incoming>, registry: &Registry, state: &State) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {}
        // For a load balancer's health check: 503 once shutdown has begun, while the
        // listeners still accept for [proxy] shutdown_delay.
        "/ready" if state.is_draining() => {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        "/ready" => return text(StatusCode::OK, "ready\n"),
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "not found: metrics are at /metrics, readiness at /ready\n",
            );
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET\n",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let format = Format::negotiate(
        req.headers()
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok()),
    );
    // For HEAD hyper sends the headers (Content-Length included) and leaves the body out.
    let mut resp = Response::new(Full::new(Bytes::from(encode(registry, format))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::ProxyConfig;
    use crate::model::firewall::Firewall;
    use crate::model::routes::RouteTable;
    use crate::model::routes::ValidRoute;
    use crate::model::state::ListenerState;
    use mc_proxy_shared::Route;

    fn state_with_one_route() -> Arc<State> {
        let route = Route {
            hostname: "a.test".into(),
            backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9")],
            ..Route::default()
        };
        let table = RouteTable::with_stats([ValidRoute::unchecked(route)], |_| Arc::default());
        let listener = ListenerState::new(
            1,
            "127.0.0.1:8443".parse().unwrap(),
            crate::model::state::ListenerSettings::default(),
            table,
        );
        Arc::new(State::new(
            ProxyConfig::default(),
            vec![Arc::new(listener)],
            Firewall::default(),
        ))
    }

    #[test]
    fn a_scrape_reads_the_live_counters_in_both_formats() {
        let state = state_with_one_route();
        let listener = &state.listeners()[0];
        listener.counters.count_reset(ResetReason::NotTls);
        ListenerCounters::bump(&listener.counters.accepted);
        let route = listener.lookup("a.test").unwrap();
        route.stats.total.fetch_add(3, Relaxed);
        route.stats.count_response(200);
        route
            .stats
            .connect_duration
            .record(Duration::from_millis(2));
        route.stats.connect_duration.record(Duration::from_secs(60));
        let registry = registry(Arc::clone(&state));

        let text = encode(&registry, Format::Prometheus);
        let labels = r#"{listener="127.0.0.1:8443",route="a.test""#;
        for line in [
            r#"mcproxy_build_info{version="0.1.0"} 1"#.replace("0.1.0", env!("CARGO_PKG_VERSION")),
            r#"mcproxy_listener_accepted_connections_total{listener="127.0.0.1:8443"} 1"#.into(),
            r#"mcproxy_listener_resets_total{listener="127.0.0.1:8443",reason="not_tls"} 1"#.into(),
            r#"mcproxy_listener_resets_total{listener="127.0.0.1:8443",reason="blocked"} 0"#.into(),
            format!("mcproxy_route_connections_total{labels}}} 3"),
            format!(
                r#"mcproxy_route_backend_connect_duration_seconds_bucket{labels},le="0.001"}} 0"#
            ),
            format!(
                r#"mcproxy_route_backend_connect_duration_seconds_bucket{labels},le="0.0025"}} 1"#
            ),
            format!(r#"mcproxy_route_backend_connect_duration_seconds_bucket{labels},le="30"}} 1"#),
            format!(
                r#"mcproxy_route_backend_connect_duration_seconds_bucket{labels},le="+Inf"}} 2"#
            ),
            format!("mcproxy_route_backend_connect_duration_seconds_count{labels}}} 2"),
            format!("mcproxy_route_backend_connect_duration_seconds_sum{labels}}} 60.002"),
            "# TYPE mcproxy_route_receive_bytes_total counter".into(),
            // Described for the L7 routes there may be, with no series for this L4 one.
            "# TYPE mcproxy_route_requests_total counter".into(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains("# EOF"));
        // The process's own figures, under the client libraries' names (Linux: /proc).
        if std::path::Path::new("/proc/self/stat").exists() {
            for family in [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_start_time_seconds",
            ] {
                let value = text
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{family} ")))
                    .unwrap_or_else(|| panic!("no {family} in:\n{text}"));
                let value: f64 = value.parse().unwrap();
                // CPU time counts in clock ticks: a young process may not have one yet.
                let floor = if family == "process_cpu_seconds_total" {
                    0.0
                } else {
                    1.0
                };
                assert!(value >= floor, "{family} {value}");
            }
        }
        // An L4 route has no HTTP series (they could never move), even with a count in them.
        for family in [
            "mcproxy_route_responses_total{",
            "mcproxy_route_request_duration",
        ] {
            assert!(
                !text.lines().any(|l| l.starts_with(family)),
                "{family} in:\n{text}"
            );
        }

        let open = encode(&registry, Format::OpenMetrics);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE mcproxy_build info\n"), "{open}");
        assert!(open.contains("# UNIT mcproxy_route_request_duration_seconds seconds\n"));
    }

    #[test]
    fn routes_come_and_go_with_the_table() {
        let state = state_with_one_route();
        let registry = registry(Arc::clone(&state));
        assert!(encode(&registry, Format::Prometheus).contains(r#"route="a.test""#));
        state.listeners()[0].replace_routes(state.build_table(1, Vec::new()));
        let text = encode(&registry, Format::Prometheus);
        assert!(!text.contains("route="), "{text}");
        // The families stay, described, with no samples.
        assert!(text.contains("# TYPE mcproxy_route_connections_total counter"));
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }
}
