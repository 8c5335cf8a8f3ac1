//! The plain-HTTP listener (`kind = "http"`, an edge router's usual `:80`): answers ACME
//! http-01 validations (RFC 8555 §8.3) for pending tokens and redirects every other request
//! to `https://` on the same host and path with 308 (which, unlike 301, keeps the method
//! and body: a form posted to `http://` is posted again to `https://`).
//!
//! I/O: the client's TCP stream (after any PROXY header, whose leftover bytes are replayed),
//! HTTP/1.1 through hyper's server. One request per connection: every answer says
//! `Connection: close`, since a client sent elsewhere (or a CA that got its token) has no
//! second request for this listener, and a connection that cannot be reused cannot be held
//! idle either.
//!
//! Invariants, so that bad input gets an answer and never a hang: the head must arrive
//! within `request_header_timeout` and fit [`MAX_HEAD`] (hyper answers 431 past it, 400 to
//! anything that does not parse as HTTP/1.x); a request without a usable host (a missing
//! or malformed `Host`, `OPTIONS *`) is answered 400; the whole connection ends within
//! [`LIFETIME`] after its head's deadline. No answer echoes the request's bytes but the
//! redirect's `Location`, which is a checked host and a path bounded by [`MAX_HEAD`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::model::acme::Challenges;
use crate::model::state::State;
use crate::protocols::io::Rewind;

/// The largest request head (hyper's smallest read buffer): a redirect needs a request line
/// and a `Host`, and browsers send a few KiB of cookies at most.
pub const MAX_HEAD: usize = 8 * 1024;

/// How long a connection may last past its head's deadline (writing the answer).
pub const LIFETIME: Duration = Duration::from_secs(10);

/// Where ACME http-01 validations ask for their token.
const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// How a plain-HTTP connection ended.
#[derive(Debug)]
pub enum RedirectEnd {
    /// It was answered (redirected, a challenge, or refused 400/404) and closed.
    Answered,
    /// Its request head did not arrive in time.
    HeaderTimeout,
    /// It broke: hyper's reason (a parse error was answered 400 or 431 first).
    Error(String),
}

/// Serves one plain-HTTP connection: `early` are bytes already read from it (after a PROXY
/// header); `redirect_port` is where the redirects send clients (443: no port in the URL);
/// `state` holds the pending challenges.
pub async fn serve(
    stream: TcpStream,
    early: Vec<u8>,
    redirect_port: u16,
    header_timeout: Duration,
    state: Arc<State>,
) -> RedirectEnd {
    let service = service_fn(move |req: Request<Incoming>| {
        let response = respond(&req, redirect_port, &state.acme);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(Rewind::new(early, stream)), service);
    match tokio::time::timeout(header_timeout + LIFETIME, conn).await {
        Ok(Ok(())) => RedirectEnd::Answered,
        Ok(Err(e)) if e.is_timeout() => RedirectEnd::HeaderTimeout,
        Ok(Err(e)) => RedirectEnd::Error(e.to_string()),
        Err(_) => RedirectEnd::Error("the answer was not taken within its time".into()),
    }
}

/// The answer to one request.
fn respond(
    req: &Request<Incoming>,
    redirect_port: u16,
    challenges: &Challenges,
) -> Response<Full<Bytes>> {
    // The absolute form's authority if the client used it (a proxy-style request), else
    // `Host`: RFC 9112 §3.2.2 gives the former precedence.
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()));
    let Some(host) = authority.and_then(checked_host) else {
        return text(
            StatusCode::BAD_REQUEST,
            "bad request: a Host header naming a host is required\n",
        );
    };
    // No path (`OPTIONS *`): nothing to redirect to.
    let Some(path) = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "bad request: no path to redirect\n",
        );
    };
    if let Some(token) = req.uri().path().strip_prefix(CHALLENGE_PATH) {
        return match challenges.answer_token(host, token) {
            Some(key_authorization) => {
                tracing::info!(host, "ACME http-01 challenge answered");
                let mut response = Response::new(Full::new(Bytes::from(key_authorization)));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    http::HeaderValue::from_static("application/octet-stream"),
                );
                response
            }
            None => text(
                StatusCode::NOT_FOUND,
                "not found: no ACME challenge is pending for this token\n",
            ),
        };
    }
    let location = match redirect_port {
        443 => format!("https://{host}{path}"),
        port => format!("https://{host}:{port}{path}"),
    };
    let Ok(location) = http::HeaderValue::from_str(&location) else {
        return text(
            StatusCode::BAD_REQUEST,
            "bad request: the path is not valid\n",
        );
    };
    let mut response = text(StatusCode::PERMANENT_REDIRECT, "redirecting to https\n");
    response.headers_mut().insert(LOCATION, location);
    response
}

/// The host of an authority (`host`, `host:port`, `[v6]:port`) when it is a DNS name or an
/// IP literal, without the port; `None` for anything else (userinfo, bad characters, an
/// empty or overlong name), so that nothing unchecked reaches a `Location`.
fn checked_host(authority: &str) -> Option<&str> {
    if authority.contains('@') {
        return None;
    }
    let host = match authority.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']')?;
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            if !(after.is_empty() || port_ok(after.strip_prefix(':')?)) {
                return None;
            }
            &authority[..v6.len() + 2]
        }
        None => {
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if port.is_some_and(|p| !port_ok(p)) {
                return None;
            }
            host
        }
    };
    // A DNS name as routes take them (`wire::dns`), or an IPv4 literal; kept as written.
    let name_ok = |h: &str| {
        mc_proxy_wire::dns::normalize_dns_name(h).is_some()
            || h.parse::<std::net::Ipv4Addr>().is_ok()
    };
    (host.starts_with('[') || name_ok(host)).then_some(host)
}

fn port_ok(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::checked_host;

    #[test]
    fn only_a_dns_name_or_an_ip_literal_is_a_host() {
        assert_eq!(checked_host("example.com"), Some("example.com"));
        assert_eq!(checked_host("Example.com:80"), Some("Example.com"));
        assert_eq!(checked_host("192.0.2.1:8080"), Some("192.0.2.1"));
        assert_eq!(checked_host("[2001:db8::1]:80"), Some("[2001:db8::1]"));
        assert_eq!(checked_host("[2001:db8::1]"), Some("[2001:db8::1]"));
        assert_eq!(checked_host("example.com."), Some("example.com."));
        for bad in [
            "",
            ":80",
            "a..b",
            "user@example.com",
            "exa mple.com",
            "example.com:http",
            "example.com:123456",
            "[not-v6]:80",
            "[::1]x",
            "a/b",
            "a\"b",
            "-a.test",
            "999.1.1.1",
        ] {
            assert_eq!(checked_host(bad), None, "{bad:?}");
        }
        assert_eq!(checked_host(&"a".repeat(64)), None, "a label of 64");
        let long = vec!["a".repeat(60); 5].join(".");
        assert_eq!(checked_host(&long), None, "over 253");
    }
}
