//! Encoding PROXY protocol v2 headers (spec §2.2) for the headers we send to backends.
//!
//! No I/O: [`encode_v2`] builds the bytes; the daemon's `write_v2` hands them to the socket
//! in one write, as spec §2 requires.
//!
//! Invariants: the output is always a PROXY command over TCP with one address family (v2
//! has no mixed block) and no TLVs, [`parse`](super::parse) reads it back as `Complete` with
//! the same (normalised) endpoints and `len` equal to its length, and every strict prefix of
//! it is `Incomplete`.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use super::V2_SIGNATURE;
use super::v2::{
    V2_ADDR_LEN_TCP4, V2_ADDR_LEN_TCP6, V2_CMD_PROXY, V2_FAM_TCP4, V2_FAM_TCP6, V2_FIXED_LEN,
    V2_VERSION,
};

const V2_VER_CMD_PROXY: u8 = (V2_VERSION << 4) | V2_CMD_PROXY;

/// Encodes a v2 PROXY-command, TCP (STREAM) header without TLVs.
///
/// IPv4-mapped IPv6 addresses are written as IPv4. If one endpoint is IPv4 and
/// the other IPv6, the IPv4 one is written in its IPv4-mapped IPv6 form, since
/// a v2 address block has a single family. Flow info and scope ids are not
/// representable and are dropped.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = (unmap_v4(source), unmap_v4(destination));
    let mut out = Vec::with_capacity(V2_FIXED_LEN + usize::from(V2_ADDR_LEN_TCP6));
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(V2_VER_CMD_PROXY);
    let addr_len = match (source, destination) {
        (SocketAddr::V4(src), SocketAddr::V4(dst)) => {
            out.push(V2_FAM_TCP4);
            out.extend_from_slice(&V2_ADDR_LEN_TCP4.to_be_bytes());
            out.extend_from_slice(&src.ip().octets());
            out.extend_from_slice(&dst.ip().octets());
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
            V2_ADDR_LEN_TCP4
        }
        (src, dst) => {
            let (src, dst) = (as_v6(src), as_v6(dst));
            out.push(V2_FAM_TCP6);
            out.extend_from_slice(&V2_ADDR_LEN_TCP6.to_be_bytes());
            out.extend_from_slice(&src.ip().octets());
            out.extend_from_slice(&dst.ip().octets());
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
            V2_ADDR_LEN_TCP6
        }
    };
    // Postcondition: the length field written matches the bytes that follow it.
    debug_assert_eq!(out.len(), V2_FIXED_LEN + usize::from(addr_len));
    out
}

fn unmap_v4(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn as_v6(addr: SocketAddr) -> SocketAddrV6 {
    match addr {
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        SocketAddr::V6(v6) => v6,
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
    use super::*;
    use crate::proxy_protocol::fixtures::*;
    use crate::proxy_protocol::{Command, Header, Parsed, Version, parse};

    use proptest::prelude::*;

    #[test]
    fn encode_v2_round_trips_v4_v6_mapped_and_mixed_pairs() {
        let cases = [
            // (source, destination, expected source, expected destination, len)
            ("1.2.3.4:5", "6.7.8.9:10", "1.2.3.4:5", "6.7.8.9:10", 28),
            (
                "[2001:db8::1]:5",
                "[::1]:10",
                "[2001:db8::1]:5",
                "[::1]:10",
                52,
            ),
            (
                "[::ffff:1.2.3.4]:5",
                "[::ffff:6.7.8.9]:10",
                "1.2.3.4:5",
                "6.7.8.9:10",
                28,
            ),
            (
                "[::ffff:1.2.3.4]:5",
                "6.7.8.9:10",
                "1.2.3.4:5",
                "6.7.8.9:10",
                28,
            ),
            (
                "1.2.3.4:5",
                "[2001:db8::2]:10",
                "[::ffff:1.2.3.4]:5",
                "[2001:db8::2]:10",
                52,
            ),
            (
                "[2001:db8::1]:5",
                "[::ffff:6.7.8.9]:10",
                "[2001:db8::1]:5",
                "[::ffff:6.7.8.9]:10",
                52,
            ),
        ];
        for (src, dst, want_src, want_dst, len) in cases {
            let bytes = encode_v2(sa(src), sa(dst));
            assert_eq!(bytes.len(), len);
            let h = complete(&bytes);
            assert_eq!(h.source, Some(sa(want_src)), "{src} -> {dst}");
            assert_eq!(h.destination, Some(sa(want_dst)), "{src} -> {dst}");
            assert_eq!(
                (h.version, h.command, h.len),
                (Version::V2, Command::Proxy, len)
            );
        }
    }

    proptest! {
        #[test]
        fn encode_v2_output_parses_back_and_its_prefixes_are_incomplete(
            src in any_socket_addr(),
            dst in any_socket_addr(),
        ) {
            let bytes = encode_v2(src, dst);
            let (want_src, want_dst) = expected_pair(src, dst);
            prop_assert_eq!(
                parse(&bytes),
                Ok(Parsed::Complete(Header {
                    version: Version::V2,
                    command: Command::Proxy,
                    source: Some(want_src),
                    destination: Some(want_dst),
                    len: bytes.len(),
                }))
            );
            for k in 0..bytes.len() {
                prop_assert_eq!(parse(&bytes[..k]), Ok(Parsed::Incomplete));
            }
        }
    }
}
