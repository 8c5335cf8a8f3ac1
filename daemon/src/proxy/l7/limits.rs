//! What an L7 client connection may send: the request framing rules and the HTTP/2 abuse
//! policy, as numbers and as the hyper builder settings that enforce them.
//!
//! No I/O. Two layers enforce the same limits. hyper and h2 enforce them while parsing, so an
//! oversized or abusive input never becomes a request ([`configure`]: HTTP/1.1 `max_buf_size`,
//! HTTP/2 SETTINGS and reset budgets). [`check_request`] then checks every parsed request
//! before anything reaches the backend: `Host` rules (RFC 9112 3.2, 3.2.2; RFC 9113 8.3.1) and
//! an exact head-size and field-count measure, so a head that slipped under hyper's buffer
//! bound by a read's worth of bytes still gets 431, identically on HTTP/1.1 and HTTP/2.
//!
//! The HTTP/2 numbers follow sozu's and h2's documented limits (see ARCHITECTURE.md,
//! decisions); the constants below are their defaults, and `[proxy] h2_*` settings (read per
//! connection, [`Limits`]) change them. The head size is `[proxy] max_request_head`.

use http::{HeaderMap, Request, StatusCode, Version, header};
use hyper_util::server::conn::auto;

// The setting's bounds are the model's (`[proxy]` is validated there and here alike).
pub use crate::model::state::{
    DEFAULT_MAX_REQUEST_HEAD, MAX_MAX_REQUEST_HEAD, MIN_MAX_REQUEST_HEAD,
};

/// Header fields per request (HTTP/1.1 and HTTP/2 alike). Equal to hyper's HTTP/1.1 parser
/// limit (its `max_headers` default, left in place because setting it moves the parse buffer
/// to the heap); one more gets 431.
pub const MAX_HEADERS: usize = 100;

/// HTTP/2 streams one client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS,
/// sozu's and nginx's value). A stream past it is refused (RST_STREAM REFUSED_STREAM), and
/// refusals count against [`MAX_LOCAL_ERROR_RESET_STREAMS`]. Each stream is a task and a
/// backend stream, so this bounds one connection's work.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// HTTP/2 streams the client may reset before the server has accepted them (the 2023 "rapid
/// reset", CVE-2023-44487): past this many at once the connection gets GOAWAY
/// ENHANCE_YOUR_CALM. h2's default, stated here so it is a decision, not an accident.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// HTTP/2 streams the server may reset because of the client's protocol errors over the
/// connection's life (the 2025 "MadeYouReset", CVE-2025-8671: frames that provoke a server
/// reset cost the server the stream's work without counting as client resets); past this,
/// GOAWAY ENHANCE_YOUR_CALM. A well-behaved client provokes none; hyper's default is 1024.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 100;

/// Response bytes buffered per HTTP/2 stream towards the client before the backend is made
/// to wait (h2's default, 400 KiB): with [`MAX_CONCURRENT_STREAMS`], bounds a slow reader's
/// cost to 40 MiB per connection.
pub const MAX_SEND_BUF_SIZE: usize = 400 * 1024;

/// The per-connection limits that depend on configuration (`[proxy]`, read when the
/// connection starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `[proxy] max_request_head`, in bytes.
    pub max_request_head: usize,
    /// `[proxy] h2_max_concurrent_streams`.
    pub h2_max_concurrent_streams: u32,
    /// `[proxy] h2_max_pending_accept_reset_streams`.
    pub h2_max_pending_accept_reset_streams: usize,
    /// `[proxy] h2_max_local_error_reset_streams`.
    pub h2_max_local_error_reset_streams: usize,
    /// `[proxy] h2_max_send_buf_size`.
    pub h2_max_send_buf_size: usize,
    /// `[proxy] h2_max_client_resets` (0: no limit) within `h2_client_reset_window`.
    pub h2_max_client_resets: u32,
    /// `[proxy] h2_client_reset_window`.
    pub h2_client_reset_window: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
            h2_max_concurrent_streams: MAX_CONCURRENT_STREAMS,
            h2_max_pending_accept_reset_streams: MAX_PENDING_ACCEPT_RESET_STREAMS,
            h2_max_local_error_reset_streams: MAX_LOCAL_ERROR_RESET_STREAMS,
            h2_max_send_buf_size: MAX_SEND_BUF_SIZE,
            h2_max_client_resets: crate::model::state::DEFAULT_H2_MAX_CLIENT_RESETS,
            h2_client_reset_window: crate::model::state::DEFAULT_H2_CLIENT_RESET_WINDOW,
        }
    }
}

impl Limits {
    /// The limits `proxy` sets.
    pub fn of(proxy: &crate::model::state::ProxyConfig) -> Self {
        Limits {
            max_request_head: proxy.max_request_head,
            h2_max_concurrent_streams: proxy.h2_max_concurrent_streams,
            h2_max_pending_accept_reset_streams: proxy.h2_max_pending_accept_reset_streams,
            h2_max_local_error_reset_streams: proxy.h2_max_local_error_reset_streams,
            h2_max_send_buf_size: proxy.h2_max_send_buf_size,
            h2_max_client_resets: proxy.h2_max_client_resets,
            h2_client_reset_window: proxy.h2_client_reset_window,
        }
    }
}

/// The HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE` advertised and enforced by h2: twice the head
/// limit. A header block between the two becomes a request that [`check_request`] answers 431
/// itself, counted in the route's requests and 4xx like every other refusal; h2's own 431 (a
/// block past twice the limit) tells the server nothing and stays uncounted, so it is kept for
/// blocks no client sends by mistake. One block is decoded at a time per connection, so the
/// larger bound costs at most one head's worth of memory more per connection.
fn h2_header_list_size(head: usize) -> u32 {
    u32::try_from(head.saturating_mul(2)).unwrap_or(u32::MAX)
}

/// Applies the limits to hyper's server builder: the HTTP/1.1 read buffer (a head that does
/// not fit gets hyper's own 431 and the connection closes) and the HTTP/2 abuse policy.
/// Timeouts and keep-alive are configured elsewhere (`l7::serve`).
pub fn configure<E>(builder: &mut auto::Builder<E>, limits: Limits) {
    // Clamped so that no configuration value can reach hyper's panic below 8 KiB (config
    // validation refuses such values already).
    let head = limits
        .max_request_head
        .clamp(MIN_MAX_REQUEST_HEAD, MAX_MAX_REQUEST_HEAD);
    builder.http1().max_buf_size(head);
    builder
        .http2()
        .max_header_list_size(h2_header_list_size(head))
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        .max_send_buf_size(limits.h2_max_send_buf_size);
}

/// Applies the same limits to the `h2` crate's server builder, for the HTTP/2 connections
/// that `l7::h2_server` serves: both servers announce and enforce one policy.
pub fn configure_h2(builder: &mut h2::server::Builder, limits: Limits) {
    let head = limits
        .max_request_head
        .clamp(MIN_MAX_REQUEST_HEAD, MAX_MAX_REQUEST_HEAD);
    builder
        .max_header_list_size(h2_header_list_size(head))
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(limits.h2_max_local_error_reset_streams))
        .max_send_buffer_size(limits.h2_max_send_buf_size);
}

/// Why a parsed request is refused before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Client fault: more than one `Host` field (RFC 9112 3.2: 400).
    #[error("{0} Host header fields")]
    DuplicateHost(usize),
    /// Client fault: an HTTP/1.1 request without `Host` (RFC 9112 3.2: 400).
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    /// Client fault: `Host` names another authority than the request target (absolute-form
    /// HTTP/1.1, RFC 9112 3.2.2) or `:authority` (HTTP/2, RFC 9113 8.3.1). Forwarding either
    /// would let two hops disagree on the host.
    #[error("Host {host:?} disagrees with the target authority {authority:?}")]
    HostMismatch {
        /// The `Host` field.
        host: String,
        /// The target's authority.
        authority: String,
    },
    /// Client fault: the head is larger than `max_request_head`.
    #[error("request head of {size} bytes exceeds {max}")]
    HeadTooLarge {
        /// The head's size as [`head_size`] measures it.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Client fault: more than [`MAX_HEADERS`] fields.
    #[error("{0} header fields exceed {MAX_HEADERS}")]
    TooManyHeaders(usize),
}

impl Violation {
    /// The status the proxy answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Violation::DuplicateHost(_)
            | Violation::MissingHost
            | Violation::HostMismatch { .. } => StatusCode::BAD_REQUEST,
            Violation::HeadTooLarge { .. } | Violation::TooManyHeaders(_) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
        }
    }

    /// The short text body sent with the status.
    pub fn text(&self) -> &'static str {
        match self {
            Violation::DuplicateHost(_)
            | Violation::MissingHost
            | Violation::HostMismatch { .. } => {
                "bad request: exactly one Host, matching the request target, is required\n"
            }
            Violation::HeadTooLarge { .. } | Violation::TooManyHeaders(_) => {
                "request header fields too large\n"
            }
        }
    }
}

/// The size of a request head as this proxy counts it: method, target and every field's name
/// and value, plus 4 bytes per field (`": "` and CRLF on HTTP/1.1). For HTTP/1.1 this is the
/// wire size less the request line's fixed punctuation; for HTTP/2 it is below h2's
/// SETTINGS_MAX_HEADER_LIST_SIZE measure (32 bytes per field), so h2 refuses first and this
/// check never contradicts it.
pub fn head_size<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    req.method().as_str().len() + target + fields_size(req.headers())
}

fn fields_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// Checks a parsed request against the framing rules and `limits`; `Ok` means it may be
/// forwarded.
pub fn check_request<B>(req: &Request<B>, limits: Limits) -> Result<(), Violation> {
    let fields = req.headers().len();
    if fields > MAX_HEADERS {
        return Err(Violation::TooManyHeaders(fields));
    }
    let size = head_size(req);
    if size > limits.max_request_head {
        return Err(Violation::HeadTooLarge {
            size,
            max: limits.max_request_head,
        });
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    let more = hosts.count();
    if more > 0 {
        return Err(Violation::DuplicateHost(more + 1));
    }
    match (host, req.uri().authority()) {
        (None, _) if req.version() == Version::HTTP_11 => Err(Violation::MissingHost),
        (Some(host), Some(authority))
            // Both are authorities; hosts compare case-insensitively, the rest exactly.
            if !host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
        {
            Err(Violation::HostMismatch {
                host: String::from_utf8_lossy(host.as_bytes()).into_owned(),
                authority: authority.as_str().to_owned(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const L: Limits = Limits {
        max_request_head: DEFAULT_MAX_REQUEST_HEAD,
        h2_max_concurrent_streams: MAX_CONCURRENT_STREAMS,
        h2_max_pending_accept_reset_streams: MAX_PENDING_ACCEPT_RESET_STREAMS,
        h2_max_local_error_reset_streams: MAX_LOCAL_ERROR_RESET_STREAMS,
        h2_max_send_buf_size: MAX_SEND_BUF_SIZE,
        h2_max_client_resets: 100,
        h2_client_reset_window: std::time::Duration::from_secs(10),
    };

    #[test]
    fn one_host_matching_the_target_passes() {
        let r = req(Version::HTTP_11, "/", &[("host", "web.test")]);
        assert_eq!(check_request(&r, L), Ok(()));
        let r = req(
            Version::HTTP_11,
            "https://web.test/",
            &[("host", "WEB.test")],
        );
        assert_eq!(check_request(&r, L), Ok(()));
        // HTTP/2 without Host: the authority is :authority alone.
        let r = req(Version::HTTP_2, "https://web.test/", &[]);
        assert_eq!(check_request(&r, L), Ok(()));
        // HTTP/1.0 need not send Host.
        let r = req(Version::HTTP_10, "/", &[]);
        assert_eq!(check_request(&r, L), Ok(()));
    }

    #[test]
    fn two_hosts_are_a_bad_request() {
        let r = req(
            Version::HTTP_11,
            "/",
            &[("host", "web.test"), ("host", "web.test")],
        );
        assert_eq!(check_request(&r, L), Err(Violation::DuplicateHost(2)));
        assert_eq!(Violation::DuplicateHost(2).status(), 400);
    }

    #[test]
    fn http11_without_host_is_a_bad_request() {
        let r = req(Version::HTTP_11, "/", &[]);
        assert_eq!(check_request(&r, L), Err(Violation::MissingHost));
    }

    #[test]
    fn host_disagreeing_with_the_target_is_a_bad_request() {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let r = req(version, "https://web.test/", &[("host", "other.test")]);
            assert!(matches!(
                check_request(&r, L),
                Err(Violation::HostMismatch { .. })
            ));
        }
        // A port is part of the authority.
        let r = req(
            Version::HTTP_11,
            "https://web.test:8443/",
            &[("host", "web.test")],
        );
        assert!(check_request(&r, L).is_err());
    }

    #[test]
    fn a_head_over_the_limit_is_too_large() {
        let small = Limits {
            max_request_head: MIN_MAX_REQUEST_HEAD,
            ..L
        };
        let big = "a".repeat(MIN_MAX_REQUEST_HEAD);
        let r = req(
            Version::HTTP_11,
            "/",
            &[("host", "web.test"), ("x-big", &big)],
        );
        let err = check_request(&r, small).unwrap_err();
        assert!(matches!(err, Violation::HeadTooLarge { .. }), "{err:?}");
        assert_eq!(err.status(), 431);
        assert_eq!(check_request(&r, L), Ok(()));
    }

    #[test]
    fn head_size_counts_target_and_fields() {
        let r = req(Version::HTTP_11, "/abc?d", &[("host", "web.test")]);
        assert_eq!(
            head_size(&r),
            "GET".len() + "/abc?d".len() + "host".len() + 8 + 4
        );
    }

    #[test]
    fn more_than_max_headers_fields_are_too_large() {
        let names: Vec<String> = (0..MAX_HEADERS).map(|i| format!("x-{i}")).collect();
        let mut fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        fields[0] = ("host", "web.test");
        let r = req(Version::HTTP_11, "/", &fields);
        assert_eq!(check_request(&r, L), Ok(()));
        fields.push(("x-one-more", "v"));
        let r = req(Version::HTTP_11, "/", &fields);
        assert_eq!(
            check_request(&r, L),
            Err(Violation::TooManyHeaders(MAX_HEADERS + 1))
        );
    }
}
