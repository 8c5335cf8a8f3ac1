//! Request and response header rewriting for the L7 proxy.
//!
//! No I/O; pure functions on `http` types, unit-tested below.
//!
//! Invariants: after [`rewrite_request`] a header map is valid for HTTP/2 (RFC 9113 §8.2.2: no
//! connection-specific fields; `te` only as `trailers`) and carries exactly one
//! `X-Forwarded-For` (the client's list with the client appended), one `X-Real-IP` and one
//! `X-Forwarded-Proto: https`. [`host_of`] is how the misrouting guard compares an authority
//! with the SNI.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// `X-Forwarded-For`: the chain of client addresses, each hop appending the one it saw.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Real-IP`: the address of the client that reached this proxy.
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `X-Forwarded-Proto`: the scheme the client used (always `https` here).
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes connection-specific fields (RFC 9110 §7.6.1, RFC 9113 §8.2.2): `Connection` and
/// every field it names, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`,
/// and `TE` unless it is exactly `trailers` (gRPC needs that one to reach the backend).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first: a map with none of these fields (nearly every request
    // and response) costs no hash lookups, where the removals below hash each name once.
    if !headers.keys().any(connection_specific) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        // `te: trailers` is end-to-end in HTTP/2 even when a client also lists it in Connection.
        if name != header::TE {
            headers.remove(&name);
        }
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
    let te_is_trailers = {
        let mut all = headers.get_all(header::TE).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => v.as_bytes().eq_ignore_ascii_case(b"trailers"),
            _ => false,
        }
    };
    if !te_is_trailers {
        headers.remove(header::TE);
    }
}

/// A field [`strip_hop_by_hop`] looks at: connection-specific, or `TE`.
fn connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// A client's address as the forwarding headers carry it, made once per client connection:
/// every request of the connection then shares the one value instead of formatting it again.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    /// The address in its canonical text (an IPv4-mapped IPv6 address as IPv4).
    text: String,
    value: HeaderValue,
}

impl ClientAddr {
    /// The forwarding form of `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let text = ip.to_canonical().to_string();
        let value = HeaderValue::from_str(&text).expect("an IP address is ASCII");
        ClientAddr { text, value }
    }
}

/// Rewrites a client's request headers for the backend: strips connection-specific fields,
/// appends `client` to `X-Forwarded-For` (joining every list the client sent, in order), and
/// sets `X-Real-IP` and `X-Forwarded-Proto: https`, replacing whatever the client sent.
pub fn rewrite_request(headers: &mut HeaderMap, client: &ClientAddr) {
    strip_hop_by_hop(headers);
    let mut chain = String::new();
    for value in headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        let value = value.trim();
        if !value.is_empty() {
            chain.push_str(value);
            chain.push_str(", ");
        }
    }
    let xff = if chain.is_empty() {
        client.value.clone()
    } else {
        chain.push_str(&client.text);
        // Built from visible ASCII (the client's values passed to_str) plus an address.
        HeaderValue::from_str(&chain).unwrap_or_else(|_| client.value.clone())
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(X_REAL_IP.clone(), client.value.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
}

/// The host part of an authority (`Host` header or `:authority`), as the misrouting guard
/// compares it with the SNI: userinfo and port stripped, lowercased, one trailing dot removed.
/// IPv6 literals keep their brackets stripped too. `None` if nothing is left. Borrowed when
/// already lowercase (the usual case: no allocation per request).
pub fn host_of(authority: &str) -> Option<Cow<'_, str>> {
    // The usual authority is a bare lowercase name: one pass over its bytes says so.
    if !authority.is_empty()
        && !authority.ends_with('.')
        && authority
            .bytes()
            .all(|b| !matches!(b, b'@' | b'[' | b':' | b'A'..=b'Z'))
    {
        return Some(Cow::Borrowed(authority));
    }
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split_once(']').map(|(h, _)| h)?
    } else {
        authority.split_once(':').map_or(authority, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        None
    } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn all(m: &HeaderMap, name: &str) -> Vec<String> {
        m.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn xff_appends_to_every_list_the_client_sent() {
        let mut m = map(&[
            ("x-forwarded-for", "203.0.113.1, 10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        rewrite_request(&mut m, &ClientAddr::new("192.0.2.7".parse().unwrap()));
        assert_eq!(
            all(&m, "x-forwarded-for"),
            ["203.0.113.1, 10.0.0.1, 10.0.0.2, 192.0.2.7"]
        );
    }

    #[test]
    fn real_ip_and_proto_overwrite_the_clients() {
        let mut m = map(&[
            ("x-real-ip", "1.1.1.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-proto", "gopher"),
        ]);
        rewrite_request(
            &mut m,
            &ClientAddr::new("::ffff:192.0.2.7".parse().unwrap()),
        );
        assert_eq!(all(&m, "x-real-ip"), ["192.0.2.7"]);
        assert_eq!(all(&m, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&m, "x-forwarded-for"), ["192.0.2.7"]);
    }

    #[test]
    fn connection_headers_and_what_they_name_are_removed() {
        let mut m = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "upgrade"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut m);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m.contains_key("x-kept"));
    }

    #[test]
    fn te_trailers_is_kept_and_other_te_values_are_not() {
        let mut m = map(&[("te", "trailers"), ("connection", "te")]);
        strip_hop_by_hop(&mut m);
        assert_eq!(all(&m, "te"), ["trailers"]);
        let mut m = map(&[("te", "gzip, trailers")]);
        strip_hop_by_hop(&mut m);
        assert!(!m.contains_key("te"));
    }

    #[test]
    fn host_of_strips_port_case_and_dot() {
        assert_eq!(host_of("Web.Test:8443").as_deref(), Some("web.test"));
        assert_eq!(host_of("web.test.").as_deref(), Some("web.test"));
        assert_eq!(host_of("user@web.test").as_deref(), Some("web.test"));
        assert_eq!(host_of("[::1]:443").as_deref(), Some("::1"));
        assert_eq!(host_of(":443"), None);
        assert_eq!(host_of(""), None);
        assert_eq!(host_of("web.test").as_deref(), Some("web.test"));
        assert_eq!(host_of("Web.test").as_deref(), Some("web.test"));
        assert_eq!(host_of("."), None);
    }
}
