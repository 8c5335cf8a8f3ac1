//! PROXY protocol v1, the text format (spec §2.1): `PROXY TCP4|TCP6|UNKNOWN ...\r\n`.
//!
//! No I/O. Strict on what it accepts: fields separated by exactly one space, no leading
//! zeros on IPv4 octets or ports (spec §2.1, octal confusion), addresses of the stated
//! family, a CRLF within [`V1_MAX_LEN`] bytes and no lone CR or LF. `UNKNOWN` ignores the
//! rest of its line, as the receiver must.
//!
//! Invariants: a partial line is `Incomplete` only while it can still become a valid line,
//! and a prefix fails on the same field as the whole line would; a `Complete` header ends
//! exactly after the first CRLF, which lies within the first [`V1_MAX_LEN`] bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Command, Header, ParseError, Parsed, V1_MAX_LEN, Version};

/// Parses a v1 header from `buf`, which starts with `"PROXY "`.
pub(super) fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let Some(eol) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ParseError::V1TooLong);
        }
        v1_line(buf, false)?;
        return Ok(Parsed::Incomplete);
    };
    let line = buf.get(..eol).unwrap_or_default();
    let lf = match buf.get(eol..).unwrap_or_default() {
        [b'\n', ..] => {
            return Err(ParseError::V1Syntax(
                "line ends with LF without a preceding CR",
            ));
        }
        [_, rest @ ..] => rest.first().copied(),
        // `eol` indexes a byte of `buf`, so this arm is never taken.
        [] => None,
    };
    let len = eol + 2;
    if len > V1_MAX_LEN {
        return Err(ParseError::V1TooLong);
    }
    if lf.is_some_and(|b| b != b'\n') {
        return Err(ParseError::V1Syntax("CR not followed by LF"));
    }
    // A CR can only start the terminator, so the line before it must already
    // be whole, even while the LF is still in flight.
    let addresses = v1_line(line, true)?;
    if lf.is_none() {
        return Ok(Parsed::Incomplete);
    }
    // Postcondition: the header is the line and its CRLF, nothing more.
    debug_assert!(
        buf.get(..len).is_some_and(|h| h.ends_with(b"\r\n")
            && h.iter().position(|&b| b == b'\r' || b == b'\n') == Some(eol)),
        "v1 header does not end at its first CRLF"
    );
    let (source, destination) = match addresses {
        Some((s, d)) => (Some(s), Some(d)),
        None => (None, None),
    };
    Ok(Parsed::Complete(Header {
        version: Version::V1,
        command: Command::Proxy,
        source,
        destination,
        len,
    }))
}

const V1_PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];
const V1_MISSING: [&str; 4] = [
    "missing source address",
    "missing destination address",
    "missing source port",
    "missing destination port",
];
const V1_INVALID: [&str; 4] = [
    "invalid source address for the stated protocol",
    "invalid destination address for the stated protocol",
    "invalid source port (decimal 0-65535, no leading zeros)",
    "invalid destination port (decimal 0-65535, no leading zeros)",
];
const V1_DOUBLE_SPACE: &str = "fields must be separated by exactly one space";

/// Validates a v1 line without its CRLF. When `complete` is false the line
/// may still grow, so its last field only has to be a valid prefix.
///
/// Returns the addresses for a complete TCP4/TCP6 line, `None` otherwise.
fn v1_line(line: &[u8], complete: bool) -> Result<Option<(SocketAddr, SocketAddr)>, ParseError> {
    let mut fields = line.split(|&b| b == b' ');
    if fields.next() != Some(b"PROXY".as_slice()) {
        return Err(ParseError::NotProxy);
    }
    let proto = fields.next().unwrap_or_default();
    // [src, dst, sport, dport, anything extra]
    let [src, dst, sport, dport, extra]: [Option<&[u8]>; 5] =
        std::array::from_fn(|_| fields.next());
    let proto_growing = !complete && src.is_none();

    let v6 = match proto {
        // Spec §2.1: the receiver must ignore anything up to the CRLF.
        b"UNKNOWN" => return Ok(None),
        b"TCP4" => false,
        b"TCP6" => true,
        p if proto_growing && V1_PROTOCOLS.iter().any(|k| k.starts_with(p)) => return Ok(None),
        b"" => return Err(ParseError::V1Syntax(V1_DOUBLE_SPACE)),
        _ => {
            return Err(ParseError::V1Syntax(
                "protocol must be TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    if extra.is_some() {
        return Err(ParseError::V1Syntax(
            "unexpected data after the destination port",
        ));
    }

    let fields = [src, dst, sport, dport];
    let next = [dst, sport, dport, extra];
    let mut ips: [Option<IpAddr>; 2] = [None; 2];
    let mut ports: [Option<u16>; 2] = [None; 2];
    // Left to right, so a partial line fails on the same field as the whole line.
    for (i, ((field, next), (missing, invalid))) in fields
        .into_iter()
        .zip(next)
        .zip(V1_MISSING.into_iter().zip(V1_INVALID))
        .enumerate()
    {
        let Some(tok) = field else {
            return if complete {
                Err(ParseError::V1Syntax(missing))
            } else {
                Ok(None)
            };
        };
        let growing = !complete && next.is_none();
        let ok = match (i, growing) {
            (0 | 1, true) => v1_ip_prefix_ok(tok, v6),
            (0 | 1, false) => {
                let ip = v1_ip(tok, v6);
                if let Some(slot) = ips.get_mut(i) {
                    *slot = ip;
                }
                ip.is_some()
            }
            // Any digit string ≤ 65535 without a leading zero is itself a valid
            // port, so a valid prefix is either empty or already a port.
            (_, true) => tok.is_empty() || v1_port(tok).is_some(),
            (_, false) => {
                let port = v1_port(tok);
                if let Some(slot) = ports.get_mut(i - 2) {
                    *slot = port;
                }
                port.is_some()
            }
        };
        if !ok {
            let why = if tok.is_empty() {
                V1_DOUBLE_SPACE
            } else {
                invalid
            };
            return Err(ParseError::V1Syntax(why));
        }
    }
    // Only a complete line stores all four fields (a partial line's last field
    // is still growing and left unparsed).
    match (ips, ports) {
        ([Some(src), Some(dst)], [Some(sport), Some(dport)]) => Ok(Some((
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, dport),
        ))),
        _ => Ok(None),
    }
}

fn v1_ip(tok: &[u8], v6: bool) -> Option<IpAddr> {
    if v6 {
        // std accepts exactly the RFC 4291 text forms; a zone id is rejected.
        let text = std::str::from_utf8(tok).ok()?;
        text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        v1_ipv4(tok).map(IpAddr::V4)
    }
}

fn v1_ip_prefix_ok(tok: &[u8], v6: bool) -> bool {
    if v6 {
        // A cheap character-class check; the full parse runs once the field ends.
        tok.iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        let mut parts = tok.split(|&b| b == b'.').peekable();
        let mut count = 0;
        while let Some(part) = parts.next() {
            count += 1;
            let last = parts.peek().is_none();
            if count > 4 || !(v1_octet(part).is_some() || (last && part.is_empty())) {
                return false;
            }
        }
        true
    }
}

/// Spec §2.1: exactly four decimal octets, no leading zeros (octal confusion).
fn v1_ipv4(tok: &[u8]) -> Option<Ipv4Addr> {
    let mut parts = tok.split(|&b| b == b'.');
    let mut octets = [0u8; 4];
    for octet in &mut octets {
        *octet = v1_octet(parts.next()?)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

fn v1_octet(tok: &[u8]) -> Option<u8> {
    u8::try_from(v1_decimal(tok, 3)?).ok()
}

fn v1_port(tok: &[u8]) -> Option<u16> {
    u16::try_from(v1_decimal(tok, 5)?).ok()
}

/// A non-empty decimal of at most `max_digits` digits with no leading zero
/// (except `0` itself).
fn v1_decimal(tok: &[u8], max_digits: usize) -> Option<u32> {
    if tok.is_empty() || tok.len() > max_digits || (tok.len() > 1 && tok.first() == Some(&b'0')) {
        return None;
    }
    tok.iter().try_fold(0u32, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
mod tests {
    use super::*;
    use crate::proxy_protocol::fixtures::*;
    use crate::proxy_protocol::parse;

    use proptest::prelude::*;

    #[test]
    fn v1_tcp4_parses_addresses_and_length() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.7 50000 443\r\n";
        let h = complete(line);
        assert_eq!(h.version, Version::V1);
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.source, Some(sa("192.0.2.1:50000")));
        assert_eq!(h.destination, Some(sa("198.51.100.7:443")));
        assert_eq!(h.len, line.len());
    }

    #[test]
    fn v1_tcp6_parses_addresses_and_length() {
        let line = b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.9 0 65535\r\n";
        let h = complete(line);
        assert_eq!(h.source, Some(sa("[2001:db8::1]:0")));
        assert_eq!(h.destination, Some(sa("[::ffff:192.0.2.9]:65535")));
        assert_eq!(h.len, line.len());
    }

    #[test]
    fn v1_unknown_short_form_has_no_addresses() {
        let h = complete(b"PROXY UNKNOWN\r\n");
        assert_eq!((h.source, h.destination, h.len), (None, None, 15));
        assert_eq!(h.command, Command::Proxy);
    }

    #[test]
    fn v1_unknown_long_form_ignores_rest_of_line_up_to_107_bytes() {
        let line = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(line.len(), V1_MAX_LEN);
        let h = complete(line);
        assert_eq!((h.source, h.destination, h.len), (None, None, 107));
        assert_eq!(h.version, Version::V1);
        let h = complete(b"PROXY UNKNOWN garbage that is ignored\r\n");
        assert_eq!(h.source, None);
    }

    #[test]
    fn v1_unknown_must_be_the_whole_keyword() {
        assert!(matches!(
            parse(b"PROXY UNKNOWNX\r\n"),
            Err(ParseError::V1Syntax(_))
        ));
    }

    #[test]
    fn v1_107_bytes_without_crlf_is_too_long_not_incomplete() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN - 1, b'a');
        assert_eq!(parse(&line), Ok(Parsed::Incomplete));
        line.push(b'a');
        assert_eq!(parse(&line), Err(ParseError::V1TooLong));
        // A CR as byte 107 would make the line 108 bytes long.
        line.pop();
        line.push(b'\r');
        assert_eq!(parse(&line), Err(ParseError::V1TooLong));
    }

    #[test]
    fn v1_leading_zeros_in_port_or_octet_are_rejected() {
        for line in [
            &b"PROXY TCP4 192.0.2.01 198.51.100.7 50000 443\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.051.100.7 50000 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 050000 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 50000 0443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 00 443\r\n",
        ] {
            assert!(
                matches!(parse(line), Err(ParseError::V1Syntax(_))),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        // "0" itself is not a leading zero.
        let h = complete(b"PROXY TCP4 0.0.0.0 10.0.0.0 0 0\r\n");
        assert_eq!(h.source, Some(sa("0.0.0.0:0")));
    }

    #[test]
    fn v1_leading_zero_is_rejected_before_the_line_ends() {
        assert!(matches!(
            parse(b"PROXY TCP4 192.0.2.1 198.51.100.7 05"),
            Err(ParseError::V1Syntax(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 01"),
            Err(ParseError::V1Syntax(_))
        ));
    }

    #[test]
    fn v1_out_of_range_values_are_rejected() {
        for line in [
            &b"PROXY TCP4 256.0.0.1 198.51.100.7 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3 198.51.100.7 1 2\r\n",
            b"PROXY TCP4 1.2.3.4.5 198.51.100.7 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        ] {
            assert!(
                matches!(parse(line), Err(ParseError::V1Syntax(_))),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn v1_address_must_match_stated_family() {
        assert!(matches!(
            parse(b"PROXY TCP4 2001:db8::1 198.51.100.7 1 2\r\n"),
            Err(ParseError::V1Syntax(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n"),
            Err(ParseError::V1Syntax(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n"),
            Err(ParseError::V1Syntax(_))
        ));
    }

    #[test]
    fn v1_double_space_is_rejected() {
        for line in [
            &b"PROXY  TCP4 192.0.2.1 198.51.100.7 1 2\r\n"[..],
            b"PROXY TCP4  192.0.2.1 198.51.100.7 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7  1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 \r\n",
        ] {
            assert!(
                matches!(parse(line), Err(ParseError::V1Syntax(_))),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        // Detected before the line is finished.
        assert_eq!(
            parse(b"PROXY TCP4  "),
            Err(ParseError::V1Syntax(V1_DOUBLE_SPACE))
        );
    }

    #[test]
    fn v1_lone_lf_or_lone_cr_is_rejected() {
        assert!(matches!(
            parse(b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\n"),
            Err(ParseError::V1Syntax(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\rX"),
            Err(ParseError::V1Syntax(_))
        ));
        assert!(matches!(
            parse(b"PROXY UNKNOWN\n"),
            Err(ParseError::V1Syntax(_))
        ));
    }

    #[test]
    fn v1_missing_or_extra_fields_are_rejected() {
        assert!(matches!(
            parse(b"PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n"),
            Err(ParseError::V1Syntax(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 3\r\n"),
            Err(ParseError::V1Syntax(_))
        ));
        assert!(matches!(
            parse(b"PROXY UDP4 192.0.2.1 198.51.100.7 1 2\r\n"),
            Err(ParseError::V1Syntax(_))
        ));
        assert!(matches!(parse(b"PROXY \r\n"), Err(ParseError::V1Syntax(_))));
    }

    #[test]
    fn v1_complete_line_waits_for_lf_after_cr() {
        assert_eq!(
            parse(b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\r"),
            Ok(Parsed::Incomplete)
        );
        // ... but a CR after an unfinished line is already an error.
        assert!(matches!(
            parse(b"PROXY TCP4 192.0.2.1\r"),
            Err(ParseError::V1Syntax(_))
        ));
    }

    proptest! {
        #[test]
        fn v1_lines_from_socket_addrs_parse_back(
            src in any_socket_addr(),
            dst in any_socket_addr(),
        ) {
            let (src, dst) = expected_pair(src, dst);
            let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            let line = format!(
                "PROXY {proto} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            );
            let h = complete(line.as_bytes());
            prop_assert_eq!((h.source, h.destination, h.len), (Some(src), Some(dst), line.len()));
            for k in 0..line.len() {
                prop_assert_eq!(parse(&line.as_bytes()[..k]), Ok(Parsed::Incomplete));
            }
        }
    }
}
