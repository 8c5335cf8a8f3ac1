//! PROXY protocol (haproxy `doc/proxy-protocol.txt`): parsing of v1 (text, spec §2.1, in
//! [`v1`]) and v2 (binary, spec §2.2, in [`v2`]) headers, and encoding of v2 headers
//! ([`encode`]). This module owns the shared types and the [`parse`] dispatch on the
//! signature; the layout follows sozu's `protocol/proxy_protocol/{header,parser}`.
//!
//! No I/O: [`parse`] and [`encode_v2`] are pure functions over byte slices. The async reader
//! and writer (`read_header`, `write_v2`) live in the daemon (`mc_proxy::proxyproto`).
//!
//! Invariants:
//! - [`parse`] is streaming: it is given every byte received so far and
//!   answers `Incomplete` only while the bytes are still a prefix of some valid
//!   header. Errors are reported as soon as the bytes seen rule out every valid
//!   header (spec §2.1: "abort the connection as soon as possible").
//! - Once `buf.len() >= MAX_HEADER_LEN`, [`parse`] never answers `Incomplete`,
//!   so a reader that keeps feeding it needs at most [`MAX_HEADER_LEN`] bytes of
//!   buffer before it gets a verdict.
//! - A `Complete` header's `len` is at most `buf.len()` and at most
//!   [`MAX_HEADER_LEN`], and is exactly the bytes the header declares: up to and
//!   including the CRLF for v1, 16 + the length field for v2 (checked by `debug_assert!`
//!   in debug and fuzz builds). Bytes after it are never inspected.
//! - [`parse`] never panics, whatever the input.

use std::net::SocketAddr;

pub mod encode;
pub mod v1;
pub mod v2;

pub use encode::encode_v2;

/// Longest v1 line, CRLF included (spec §2.1: the worst case is an `UNKNOWN`
/// line carrying two full IPv6 addresses and two 5-digit ports).
pub const V1_MAX_LEN: usize = 107;

/// Longest header of either version we accept: the 16 fixed v2 bytes plus up
/// to 520 bytes of addresses and TLVs (216 for AF_UNIX leaves room for TLVs).
pub const MAX_HEADER_LEN: usize = 16 + 520;

/// Spec §2.1: every v1 header starts with these six bytes.
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// Spec §2.2: the 12-byte v2 signature; its NUL and CRLFs make it invalid in
/// every common text protocol, including v1.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// PROXY protocol version a header was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Text format, spec §2.1.
    V1,
    /// Binary format, spec §2.2.
    V2,
}

/// What the sender asks the receiver to do with the connection (spec §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Relayed connection: the header describes the original endpoints. Every
    /// v1 header is a `Proxy` command.
    Proxy,
    /// Connection made by the proxy itself (health check): use the real
    /// endpoints.
    Local,
}

/// A successfully parsed PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Wire format the header used.
    pub version: Version,
    /// PROXY or LOCAL.
    pub command: Command,
    /// Original client endpoint.
    /// None for LOCAL, v1 UNKNOWN, and v2 AF_UNSPEC / AF_UNIX.
    pub source: Option<SocketAddr>,
    /// Endpoint the client connected to.
    /// None for LOCAL, v1 UNKNOWN, and v2 AF_UNSPEC / AF_UNIX.
    pub destination: Option<SocketAddr>,
    /// Total bytes the header occupies in the stream, TLVs included.
    pub len: usize,
}

/// Outcome of feeding the bytes received so far to [`parse`].
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes are a valid prefix of a header; read more and call again.
    Incomplete,
    /// A whole header is present at the start of the buffer.
    Complete(Header),
}

/// Why the bytes received cannot be a valid PROXY header. Every variant is final: more
/// bytes will not change the verdict.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The first bytes match neither the v1 nor the v2 signature.
    #[error(
        "not a PROXY protocol header (the peer must send a v1 `PROXY ` line or the v2 signature first; check that the upstream has PROXY protocol enabled)"
    )]
    NotProxy,
    /// The v1 line breaks the strict grammar of spec §2.1.
    #[error("malformed PROXY v1 line: {0}")]
    V1Syntax(&'static str),
    /// No CRLF within the first 107 bytes of a v1 header.
    #[error("PROXY v1 line has no CRLF within the first {max} bytes", max = V1_MAX_LEN)]
    V1TooLong,
    /// The v2 version nibble is not 2.
    #[error("unsupported PROXY v2 version {0} (only version 2 exists)")]
    V2Version(u8),
    /// The v2 command nibble is neither LOCAL (0) nor PROXY (1).
    #[error("unknown PROXY v2 command {0:#x} (expected 0x0 LOCAL or 0x1 PROXY)")]
    V2Command(u8),
    /// The v2 family/protocol byte is not one we accept for a PROXY command.
    #[error(
        "unsupported PROXY v2 family/protocol byte {0:#04x} (accepted: 0x00 UNSPEC, 0x11 TCP/IPv4, 0x21 TCP/IPv6, 0x31 UNIX stream)"
    )]
    V2Family(u8),
    /// The v2 length field is smaller than the address block of its family.
    #[error(
        "PROXY v2 length {len} is shorter than the {family_needs}-byte address block of its family"
    )]
    V2AddressTooShort {
        /// Bytes the announced family's address block needs.
        family_needs: usize,
        /// The header's length field.
        len: usize,
    },
    /// The v2 header (16 + length field) exceeds [`MAX_HEADER_LEN`].
    #[error("PROXY v2 header of {0} bytes exceeds the {max}-byte limit", max = MAX_HEADER_LEN)]
    V2TooLong(usize),
    /// The TLV area after the v2 address block is malformed.
    #[error("malformed PROXY v2 TLV: {0}")]
    V2Tlv(&'static str),
    /// The PP2_TYPE_CRC32C TLV does not match the header's checksum.
    #[error("PROXY v2 CRC32C checksum mismatch (header corrupted in transit)")]
    V2Crc32cMismatch,
}

/// Parses a PROXY v1 or v2 header from the start of `buf`, which holds all
/// bytes read from the connection so far.
///
/// Returns `Incomplete` while `buf` is a valid prefix of a header, and never
/// looks past the end of the header once it is complete.
pub fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    let parsed = if is_prefix_match(buf, V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Ok(Parsed::Incomplete);
        }
        v1::parse(buf)?
    } else if is_prefix_match(buf, &V2_SIGNATURE) {
        v2::parse(buf)?
    } else {
        return Err(ParseError::NotProxy);
    };
    if let Parsed::Complete(header) = &parsed {
        debug_assert!(
            header.len <= buf.len() && header.len <= MAX_HEADER_LEN,
            "header of {} bytes from a {}-byte buffer",
            header.len,
            buf.len()
        );
    }
    Ok(parsed)
}

/// True when the overlapping part of `buf` and `signature` agree, so `buf` may
/// still turn out to start with `signature`.
fn is_prefix_match(buf: &[u8], signature: &[u8]) -> bool {
    let n = buf.len().min(signature.len());
    buf.get(..n) == signature.get(..n)
}

/// Builders and checks shared by the v1, v2 and encoder tests.
#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub(crate) mod fixtures {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

    use proptest::prelude::*;

    use super::v2::PP2_TYPE_CRC32C;
    use super::*;

    pub(crate) fn complete(buf: &[u8]) -> Header {
        match parse(buf) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    pub(crate) fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address literal")
    }

    /// Builds a v2 header from its parts, computing the length field.
    pub(crate) fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        let len = u16::try_from(body.len()).expect("test body fits u16");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    pub(crate) fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        let len = u16::try_from(value.len()).expect("test TLV fits u16");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    /// 192.0.2.1:50000 -> 198.51.100.7:443 as a 12-byte AF_INET block.
    #[rustfmt::skip] // one wire field per line
    pub(crate) const TCP4_BLOCK: [u8; 12] = [
        192, 0, 2, 1,    // source address
        198, 51, 100, 7, // destination address
        0xC3, 0x50,      // source port 50000
        0x01, 0xBB,      // destination port 443
    ];

    /// Valid headers of every shape, used by the prefix tests.
    pub(crate) fn valid_headers() -> Vec<Vec<u8>> {
        vec![
            b"PROXY TCP4 192.0.2.1 198.51.100.7 50000 443\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n".to_vec(),
            v2(0x21, 0x11, &TCP4_BLOCK),
            encode_v2(sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2")),
            v2(0x20, 0x00, &[]),
            v2(0x20, 0x11, &TCP4_BLOCK),
            v2(0x21, 0x00, &[]),
            v2(0x21, 0x31, &[0u8; 216]),
            with_crc(&TCP4_BLOCK),
        ]
    }

    /// A TCP4 header whose TLVs are an ALPN and a correct CRC32C.
    pub(crate) fn with_crc(block: &[u8]) -> Vec<u8> {
        let mut body = block.to_vec();
        body.extend(tlv(0x01, b"h2"));
        body.extend(tlv(PP2_TYPE_CRC32C, &[0; 4]));
        let mut header = v2(0x21, 0x11, &body);
        let crc = crc32c::crc32c(&header);
        let at = header.len() - 4;
        header[at..].copy_from_slice(&crc.to_be_bytes());
        header
    }

    pub(crate) fn any_socket_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<u32>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::from((Ipv4Addr::from(ip), port))),
            (any::<u128>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
                |(ip, port, flow, scope)| {
                    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope))
                }
            ),
            (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| {
                SocketAddr::from((Ipv4Addr::from(ip).to_ipv6_mapped(), port))
            }),
        ]
    }

    /// What a receiver should see for an `encode_v2(src, dst)` header.
    pub(crate) fn expected_pair(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
        let v4 = |a: SocketAddr| match a.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(ip) => ip.to_ipv4_mapped(),
        };
        let v6 = |a: SocketAddr| match a.ip() {
            IpAddr::V4(ip) => ip.to_ipv6_mapped(),
            IpAddr::V6(ip) => ip,
        };
        match (v4(src), v4(dst)) {
            (Some(s), Some(d)) => (
                SocketAddr::from((s, src.port())),
                SocketAddr::from((d, dst.port())),
            ),
            _ => (
                SocketAddr::from((v6(src), src.port())),
                SocketAddr::from((v6(dst), dst.port())),
            ),
        }
    }

    /// Invariants every `parse` answer must satisfy.
    pub(crate) fn check_parse_invariants(data: &[u8]) {
        match parse(data) {
            Ok(Parsed::Complete(h)) => {
                assert!(h.len <= data.len() && h.len <= MAX_HEADER_LEN);
                // Bytes after the header never change the verdict.
                assert_eq!(parse(&data[..h.len]), Ok(Parsed::Complete(h)));
            }
            Ok(Parsed::Incomplete) => assert!(data.len() < MAX_HEADER_LEN),
            Err(e) => {
                // Streaming: an error never turns back into success with more bytes.
                let mut longer = data.to_vec();
                longer.extend_from_slice(b"\r\n\0\0");
                assert!(parse(&longer).is_err(), "{e:?} then ok for {data:?}");
            }
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
mod tests {
    use super::fixtures::*;
    use super::*;

    use proptest::prelude::*;

    #[test]
    fn bad_signature_is_not_proxy_immediately() {
        assert_eq!(parse(b"\x16\x03\x01"), Err(ParseError::NotProxy));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ParseError::NotProxy));
        assert_eq!(parse(b"PROXX"), Err(ParseError::NotProxy));
        assert_eq!(parse(b"proxy "), Err(ParseError::NotProxy));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(ParseError::NotProxy));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIT\r"), Err(ParseError::NotProxy));
        assert_eq!(parse(b""), Ok(Parsed::Incomplete));
    }

    #[test]
    fn every_strict_prefix_of_a_valid_header_is_incomplete() {
        for header in valid_headers() {
            let h = complete(&header);
            assert_eq!(h.len, header.len());
            for k in 0..header.len() {
                assert_eq!(
                    parse(&header[..k]),
                    Ok(Parsed::Incomplete),
                    "prefix {k} of {header:?}"
                );
            }
        }
    }

    #[test]
    fn bytes_after_the_header_are_not_part_of_len() {
        let mut bytes = v2(0x21, 0x11, &TCP4_BLOCK);
        bytes.extend_from_slice(b"\x16\x03\x01\x00\x05hello");
        assert_eq!(complete(&bytes).len, 28);
        let mut line = b"PROXY UNKNOWN\r\n".to_vec();
        line.extend_from_slice(b"\r\nQUIT");
        assert_eq!(complete(&line).len, 15);
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            check_parse_invariants(&data);
        }

        #[test]
        fn parse_never_panics_after_a_v2_signature(
            head in proptest::collection::vec(any::<u8>(), 0..4),
            data in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut bytes = V2_SIGNATURE.to_vec();
            bytes.extend(head);
            bytes.extend(data);
            check_parse_invariants(&bytes);
        }

        #[test]
        fn parse_never_panics_after_a_plausible_v2_fixed_header(
            ver_cmd in prop::sample::select(vec![0x20u8, 0x21]),
            fam in prop::sample::select(vec![0x00u8, 0x11, 0x21, 0x31]),
            len in 0u16..=520,
            data in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut bytes = V2_SIGNATURE.to_vec();
            bytes.push(ver_cmd);
            bytes.push(fam);
            bytes.extend(len.to_be_bytes());
            bytes.extend(data);
            check_parse_invariants(&bytes);
        }

        #[test]
        fn parse_never_panics_after_proxy_space(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut bytes = b"PROXY ".to_vec();
            bytes.extend(data);
            check_parse_invariants(&bytes);
        }

        #[test]
        fn parse_never_panics_on_v1_like_text(text in "PROXY (TCP4|TCP6|UNKNOWN)[ 0-9a-f.:]{0,110}(\r\n)?") {
            check_parse_invariants(text.as_bytes());
        }
    }
}
