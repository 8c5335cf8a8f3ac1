//! The connection to etcd: `connect` builds an `etcd_client::Client` from `[cluster]` (TLS with
//! a CA and a client identity, user and password, timeouts, HTTP/2 keep-alive) and proves it
//! answers; `call` runs one request under the request timeout; `ClusterError` says whose fault a
//! failure is.
//!
//! I/O: the network to the etcd members. Invariants: no request waits longer than
//! `request_timeout` (etcd-client's own timeout covers a request sent to a member, not the wait
//! for a member to become reachable at all, so `call` bounds the whole); an error never echoes
//! more than a few endpoints.
//!
//! The client sets `require_leader`: a member cut off from quorum refuses requests ("no leader")
//! instead of holding them, and its watches end instead of hanging (REFERENCE.md section 5).
//! etcd-client neither reconnects watches nor retries: that belongs to the sync engine.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};

use super::settings::ClusterConfig;

/// HTTP/2 pings on an idle connection this often, so that a member that vanished without a
/// reset (a partition, a dead host) is noticed and the balancer stops using it.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// Endpoints named in an error before "and N more".
const ENDPOINTS_SHOWN: usize = 3;

/// Why talking to etcd failed, by whose fault.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No member answered in time, or none that has a leader: the store is away (down,
    /// partitioned, or without quorum). Traffic goes on; writes are refused until it is back.
    #[error("etcd unreachable or without quorum at {endpoints}: {source}")]
    Unreachable {
        /// The configured endpoints, clipped to a few.
        endpoints: String,
        /// What the transport or the member said, or that nothing answered in time.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// etcd refused the user name or password, or the user may not do this.
    #[error("etcd refused the credentials or the permission: {0}")]
    Auth(String),
    /// The TLS settings could not be used (a certificate or key etcd's TLS stack refuses), or
    /// the TLS handshake with a member failed.
    #[error("TLS to etcd: {0}")]
    Tls(String),
    /// etcd answered with an error about the request itself.
    #[error("etcd request failed: {0}")]
    Request(String),
}

/// Nothing answered within the request timeout.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {}", humantime::format_duration(*.0))]
pub struct NoAnswer(pub Duration);

impl ClusterError {
    /// Whether the store is away (as opposed to refusing this request): the sync engine
    /// retries these with backoff; the admin API answers UNAVAILABLE.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClusterError::Unreachable { .. })
    }
}

/// Connects to the cluster `cfg` names and proves it answers: one read (a count of the keys
/// under the prefix, which also proves the user may read them) within the request timeout.
/// The client balances requests over every endpoint and reconnects to a member by itself.
pub async fn connect(cfg: &ClusterConfig) -> Result<Client, ClusterError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(cfg.connect_timeout)
        .with_timeout(cfg.request_timeout)
        .with_keep_alive(KEEPALIVE_INTERVAL, cfg.request_timeout)
        .with_keep_alive_while_idle(true)
        .with_tcp_keepalive(KEEPALIVE_INTERVAL)
        .with_require_leader(true);
    if let Some(tls) = &cfg.tls {
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
        if let Some(id) = &tls.identity {
            t = t.identity(Identity::from_pem(&id.cert, &id.key));
        }
        options = options.with_tls(t);
    }
    if let Some(auth) = &cfg.auth {
        options = options.with_user(auth.username.clone(), auth.password.clone());
    }
    // With a user, `Client::connect` authenticates at once (a request); without one it only
    // builds the channel. Either way under the timeout: a member that accepts the TCP
    // connection and never answers must not hold the caller.
    // Reaching a member is part of the first requests' wait.
    let limit = cfg.connect_timeout + cfg.request_timeout;
    let client = call_within(cfg, limit, || {
        Client::connect(&cfg.endpoints, Some(options.clone()))
    })
    .await?;
    let kv = client.kv_client();
    call_within(cfg, limit, || {
        let mut kv = kv.clone();
        async move {
            kv.get(
                cfg.prefix.as_bytes(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
        }
    })
    .await?;
    Ok(client)
}

/// Runs one etcd request, bounded by `request_timeout` as a whole, its error classified.
/// `request` makes the request's future; it is made again when a try fails on the way to a
/// member (`is_transport`): the balancer had picked a connection that just broke (a member
/// killed a moment ago), and another member will answer. What a member answered is never
/// retried. A request that may have reached the member before its connection broke can run
/// twice: etcd writes compare revisions (the sync engine's transactions), so a second run of
/// an applied one fails its compare instead of applying twice.
pub async fn call<T, F, Fut>(cfg: &ClusterConfig, request: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    call_within(cfg, cfg.request_timeout, request).await
}

/// A pause between tries on a broken connection: the balancer needs a moment to see it.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

async fn call_within<T, F, Fut>(
    cfg: &ClusterConfig,
    limit: Duration,
    mut request: F,
) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let tries = async {
        loop {
            match request().await {
                // A certificate refused fails the same way every time: not retried.
                Err(e) if is_transport(&e) && !looks_like_tls(&e.to_string()) => {
                    tracing::debug!(error = %e, "etcd: a connection broke, trying again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    };
    match tokio::time::timeout(limit, tries).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(classify(e, cfg)),
        Err(_) => Err(ClusterError::Unreachable {
            endpoints: endpoints_text(&cfg.endpoints),
            source: Box::new(NoAnswer(limit)),
        }),
    }
}

/// A failure on the way to a member, before any member answered: a connection refused,
/// reset or closed under the request.
pub fn is_transport(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        // A member stopping cleanly (GOAWAY) cancels what is on its connection; hyper's
        // words for it. Seen in the client test right after a member's SIGTERM.
        E::GRpcStatus(status)
            if status.code() == tonic::Code::Cancelled
                && status.message().contains("operation was canceled") =>
        {
            true
        }
        E::GRpcStatus(status) => {
            let m = status.message();
            !m.starts_with("etcdserver:")
                && matches!(
                    status.code(),
                    tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Internal
                )
                && (m.contains("transport error")
                    || m.contains("connect")
                    || m.contains("broken pipe")
                    || m.contains("connection"))
        }
        _ => false,
    }
}

/// Whose fault an etcd-client error is.
pub fn classify(e: etcd_client::Error, cfg: &ClusterConfig) -> ClusterError {
    use etcd_client::Error as E;
    use tonic::Code;
    let unreachable =
        |source: Box<dyn std::error::Error + Send + Sync>| ClusterError::Unreachable {
            endpoints: endpoints_text(&cfg.endpoints),
            source,
        };
    if is_transport(&e) {
        let text = match &e {
            E::TransportError(t) => error_chain(t),
            // The status's own text repeats its code and debug-prints its source; the
            // message and the sources' messages say it all.
            E::GRpcStatus(status) => status_text(status),
            other => other.to_string(),
        };
        return if looks_like_tls(&text) {
            ClusterError::Tls(text)
        } else {
            unreachable(Box::new(e))
        };
    }
    match e {
        E::GRpcStatus(status) => {
            let message = status.message().to_owned();
            match status.code() {
                Code::Unauthenticated | Code::PermissionDenied => ClusterError::Auth(message),
                // etcd sends "authentication failed, invalid user ID or password" and "user
                // name is empty" (auth on, no user given) as INVALID_ARGUMENT.
                Code::InvalidArgument | Code::FailedPrecondition if is_auth_message(&message) => {
                    ClusterError::Auth(message)
                }
                // A TLS alert ending the connection shows only in the status's sources.
                _ if looks_like_tls(&status_text(&status)) => {
                    ClusterError::Tls(status_text(&status))
                }
                // No leader, a member going away, the client's own timeout (Cancelled):
                // the store is away, not the request wrong.
                // tonic's own end of a request at `request_timeout`.
                Code::Cancelled if message == "Timeout expired" => {
                    unreachable(Box::new(NoAnswer(cfg.request_timeout)))
                }
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                    unreachable(message.into())
                }
                _ if is_quorum_message(&message) => unreachable(message.into()),
                _ => ClusterError::Request(message),
            }
        }
        E::InvalidArgs(m) | E::EndpointError(m) => ClusterError::Tls(m),
        other => ClusterError::Request(other.to_string()),
    }
}

/// A status's message and its sources' messages: the status's own text repeats its code and
/// debug-prints its source.
fn status_text(status: &tonic::Status) -> String {
    with_sources(
        status.message().to_owned(),
        std::error::Error::source(status),
    )
}

/// `text`, then each source's message not already in it ("transport error" wrappers repeat
/// what they wrap).
fn with_sources(
    mut text: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// etcd's messages for a refused user, password or token.
fn is_auth_message(message: &str) -> bool {
    [
        "authentication failed",
        "user name is empty",
        "invalid auth token",
        "permission denied",
        "user name not found",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// etcd's messages for a cluster without quorum or a leader.
fn is_quorum_message(message: &str) -> bool {
    [
        "no leader",
        "timed out",
        "leader changed",
        "not capable",
        "too many requests",
    ]
    .iter()
    .any(|m| message.contains(m))
}

fn looks_like_tls(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "certificate",
        "tls",
        "handshake",
        "unknownissuer",
        "badsignature",
    ]
    .iter()
    .any(|w| m.contains(w))
}

/// The error and its sources on one line: tonic's transport error says only "transport
/// error" at the top.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    with_sources(e.to_string(), e.source())
}

/// The endpoints for a message: the first few, then how many more.
pub fn endpoints_text(endpoints: &[String]) -> String {
    let shown: Vec<&str> = endpoints
        .iter()
        .take(ENDPOINTS_SHOWN)
        .map(String::as_str)
        .collect();
    match endpoints.len().saturating_sub(ENDPOINTS_SHOWN) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ClusterConfig {
        ClusterConfig {
            endpoints: vec!["http://10.0.0.1:2379".into(), "http://10.0.0.2:2379".into()],
            prefix: "/mc-proxy/default".into(),
            name: "n".into(),
            tls: None,
            auth: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(10),
            check_interval: Duration::from_secs(30),
        }
    }

    /// etcd's answers as etcd 3.4 sends them, each to the fault it is.
    #[test]
    fn etcd_answers_are_classified_by_whose_fault() {
        let classify =
            |status: tonic::Status| classify(etcd_client::Error::GRpcStatus(status), &cfg());
        let auth = [
            tonic::Status::invalid_argument(
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            tonic::Status::invalid_argument("etcdserver: user name is empty"),
            tonic::Status::permission_denied("etcdserver: permission denied"),
            tonic::Status::unauthenticated("etcdserver: invalid auth token"),
        ];
        for status in auth {
            let e = classify(status);
            assert!(matches!(e, ClusterError::Auth(_)), "{e}");
        }
        for status in [
            tonic::Status::unavailable("etcdserver: no leader"),
            tonic::Status::unavailable("etcdserver: request timed out"),
            tonic::Status::unknown("etcdserver: leader changed"),
            tonic::Status::cancelled("Timeout expired"),
        ] {
            let e = classify(status);
            assert!(e.is_unreachable(), "{e}");
            assert!(
                e.to_string()
                    .starts_with("etcd unreachable or without quorum at http://10.0.0.1:2379, http://10.0.0.2:2379: "),
                "{e}"
            );
        }
        let e = classify(tonic::Status::cancelled("Timeout expired"));
        assert!(e.to_string().ends_with("no answer within 5s"), "{e}");
        let e = classify(tonic::Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted",
        ));
        assert!(matches!(e, ClusterError::Request(_)), "{e}");
        assert!(!is_transport(&etcd_client::Error::GRpcStatus(
            tonic::Status::unavailable("etcdserver: no leader")
        )));
        assert!(is_transport(&etcd_client::Error::GRpcStatus(
            tonic::Status::unknown("transport error")
        )));
        // A member's clean stop cancels its connection's requests: tried on another.
        assert!(is_transport(&etcd_client::Error::GRpcStatus(
            tonic::Status::cancelled("operation was canceled")
        )));
        assert!(!is_transport(&etcd_client::Error::GRpcStatus(
            tonic::Status::cancelled("etcdserver: request cancelled")
        )));
    }

    #[test]
    fn endpoints_are_clipped_to_a_few() {
        let eps: Vec<String> = (1..=5).map(|i| format!("http://10.0.0.{i}:2379")).collect();
        assert_eq!(endpoints_text(&eps[..1]), "http://10.0.0.1:2379");
        assert_eq!(
            endpoints_text(&eps),
            "http://10.0.0.1:2379, http://10.0.0.2:2379, http://10.0.0.3:2379 and 2 more"
        );
    }
}
