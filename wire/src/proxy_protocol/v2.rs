//! PROXY protocol v2, the binary format (spec §2.2): the 16 fixed bytes (signature,
//! version/command, family/protocol, big-endian length), the address block, then TLVs
//! (spec §2.2.1), of which only `PP2_TYPE_CRC32C` (spec §2.2.3) is checked.
//!
//! No I/O. What it checks, each fixed byte as soon as it arrives: version 2; command LOCAL or
//! PROXY; for PROXY, a family/protocol of UNSPEC, TCP over IPv4/IPv6 or UNIX stream; a length
//! at least the family's address block (a minimum: TLVs follow) and a total within
//! [`MAX_HEADER_LEN`]. Then the TLV walk with bounds checks and the CRC32C (Castagnoli,
//! RFC 4960 Appendix B) over the whole header with the checksum field zeroed, computed by the
//! `crc32c` crate (hardware-accelerated where the CPU has it).
//!
//! Invariants: a `Complete` header is exactly 16 + the length field bytes; LOCAL skips exactly
//! that many bytes and ignores them (spec §2.2), whatever they hold; the TLV walk ends exactly
//! at the end of the header or fails.

use std::net::{Ipv6Addr, SocketAddr};

use super::{Command, Header, MAX_HEADER_LEN, ParseError, Parsed, V2_SIGNATURE, Version};

/// Signature + version/command + family/protocol + u16 length.
pub(super) const V2_FIXED_LEN: usize = 16;

pub(super) const V2_VERSION: u8 = 2;
const V2_CMD_LOCAL: u8 = 0x0;
pub(super) const V2_CMD_PROXY: u8 = 0x1;

const V2_FAM_UNSPEC: u8 = 0x00;
pub(super) const V2_FAM_TCP4: u8 = 0x11;
pub(super) const V2_FAM_TCP6: u8 = 0x21;
const V2_FAM_UNIX_STREAM: u8 = 0x31;

pub(super) const V2_ADDR_LEN_TCP4: u16 = 2 * 4 + 2 * 2;
pub(super) const V2_ADDR_LEN_TCP6: u16 = 2 * 16 + 2 * 2;
const V2_ADDR_LEN_UNIX: u16 = 2 * 108;

/// TLV header: type (1) + big-endian length (2).
const TLV_HEADER_LEN: usize = 3;
/// Spec §2.2.3.
pub(super) const PP2_TYPE_CRC32C: u8 = 0x03;
const CRC32C_LEN: usize = 4;

#[derive(Debug, Clone, Copy)]
enum V2Family {
    Unspec,
    Tcp4,
    Tcp6,
    Unix,
}

impl V2Family {
    fn from_byte(fam: u8) -> Result<Self, ParseError> {
        match fam {
            V2_FAM_UNSPEC => Ok(Self::Unspec),
            V2_FAM_TCP4 => Ok(Self::Tcp4),
            V2_FAM_TCP6 => Ok(Self::Tcp6),
            V2_FAM_UNIX_STREAM => Ok(Self::Unix),
            other => Err(ParseError::V2Family(other)),
        }
    }

    /// Spec §2.2: UNSPEC carries no address, so its TLVs start right after
    /// the fixed 16 bytes.
    fn addr_len(self) -> usize {
        usize::from(match self {
            Self::Unspec => 0,
            Self::Tcp4 => V2_ADDR_LEN_TCP4,
            Self::Tcp6 => V2_ADDR_LEN_TCP6,
            Self::Unix => V2_ADDR_LEN_UNIX,
        })
    }
}

/// Parses a v2 header from `buf`, which is a prefix of, or starts with, the v2 signature.
pub(super) fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    // Each fixed byte is checked the moment it arrives so garbage is rejected
    // without waiting for (possibly never-coming) further bytes.
    let Some(&ver_cmd) = buf.get(V2_SIGNATURE.len()) else {
        return Ok(Parsed::Incomplete);
    };
    let version = ver_cmd >> 4;
    if version != V2_VERSION {
        return Err(ParseError::V2Version(version));
    }
    let command = match ver_cmd & 0x0F {
        V2_CMD_LOCAL => Command::Local,
        V2_CMD_PROXY => Command::Proxy,
        other => return Err(ParseError::V2Command(other)),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // Spec §2.2: for LOCAL the family "is ignored", so any value passes.
    let family = match command {
        Command::Local => None,
        Command::Proxy => Some(V2Family::from_byte(fam)?),
    };
    let Some(&[len_hi, len_lo]) = buf.get(14..V2_FIXED_LEN) else {
        return Ok(Parsed::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let total = V2_FIXED_LEN + len;
    if total > MAX_HEADER_LEN {
        return Err(ParseError::V2TooLong(total));
    }
    if let Some(family) = family
        && len < family.addr_len()
    {
        return Err(ParseError::V2AddressTooShort {
            family_needs: family.addr_len(),
            len,
        });
    }
    let Some(header) = buf.get(..total) else {
        return Ok(Parsed::Incomplete);
    };

    let (source, destination) = match family {
        // Spec §2.2: LOCAL must skip exactly `len` bytes and ignore them.
        None => (None, None),
        Some(family) => {
            check_tlvs(header, V2_FIXED_LEN + family.addr_len())?;
            let block = header.get(V2_FIXED_LEN..).unwrap_or_default();
            match addresses(family, block) {
                Some((s, d)) => (Some(s), Some(d)),
                None => (None, None),
            }
        }
    };
    // Postcondition: the header is the fixed part plus exactly the declared length.
    debug_assert_eq!(header.len(), V2_FIXED_LEN + len, "v2 header length");
    Ok(Parsed::Complete(Header {
        version: Version::V2,
        command,
        source,
        destination,
        len: total,
    }))
}

/// Decodes a TCP address block. `block.len() >= family.addr_len()` has been
/// checked by the caller; `None` for families without socket addresses.
fn addresses(family: V2Family, block: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    match family {
        V2Family::Unspec | V2Family::Unix => None,
        V2Family::Tcp4 => {
            let (&[s0, s1, s2, s3, d0, d1, d2, d3, sp0, sp1, dp0, dp1], _) =
                block.split_first_chunk::<12>()?;
            Some((
                SocketAddr::from(([s0, s1, s2, s3], u16::from_be_bytes([sp0, sp1]))),
                SocketAddr::from(([d0, d1, d2, d3], u16::from_be_bytes([dp0, dp1]))),
            ))
        }
        V2Family::Tcp6 => {
            let (src, rest) = block.split_first_chunk::<16>()?;
            let (dst, rest) = rest.split_first_chunk::<16>()?;
            let (&[sp0, sp1, dp0, dp1], _) = rest.split_first_chunk::<4>()?;
            // IPv4-mapped addresses are reported as sent; normalising is the
            // caller's policy.
            Some((
                SocketAddr::from((Ipv6Addr::from(*src), u16::from_be_bytes([sp0, sp1]))),
                SocketAddr::from((Ipv6Addr::from(*dst), u16::from_be_bytes([dp0, dp1]))),
            ))
        }
    }
}

/// Walks the TLVs in `header[start..]` (spec §2.2) and verifies the CRC32C
/// TLV if there is one (spec §2.2.3). `header` is exactly the whole header.
fn check_tlvs(header: &[u8], start: usize) -> Result<(), ParseError> {
    let mut remaining = header
        .get(start..)
        .ok_or(ParseError::V2Tlv("address block overruns the header"))?;
    let mut walked = 0;
    let mut crc_at = None;
    while !remaining.is_empty() {
        let Some((&[kind, len_hi, len_lo], after_type)) =
            remaining.split_first_chunk::<TLV_HEADER_LEN>()
        else {
            return Err(ParseError::V2Tlv(
                "truncated TLV header at the end of the header",
            ));
        };
        let value_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        let Some((value, after)) = after_type.split_at_checked(value_len) else {
            return Err(ParseError::V2Tlv(
                "TLV length runs past the end of the header",
            ));
        };
        if kind == PP2_TYPE_CRC32C {
            if value.len() != CRC32C_LEN {
                return Err(ParseError::V2Tlv("CRC32C TLV must be exactly 4 bytes"));
            }
            // Two checksums could disagree about which field is zeroed.
            if crc_at.replace(header.len() - after_type.len()).is_some() {
                return Err(ParseError::V2Tlv("more than one CRC32C TLV"));
            }
        }
        // Everything else (ALPN, AUTHORITY, NOOP, SSL and its sub-TLVs,
        // custom ranges) is opaque to a router and skipped.
        walked += TLV_HEADER_LEN + value_len;
        remaining = after;
    }
    // Postcondition: the TLVs tile the rest of the header exactly.
    debug_assert_eq!(start + walked, header.len(), "TLV walk length");
    if let Some(at) = crc_at {
        let (before, from_crc) = header
            .split_at_checked(at)
            .ok_or(ParseError::V2Tlv("CRC32C TLV out of bounds"))?;
        let (stored, after) = from_crc
            .split_first_chunk::<CRC32C_LEN>()
            .ok_or(ParseError::V2Tlv("CRC32C TLV out of bounds"))?;
        // Over the header in three pieces, the checksum field as zeros, without a copy.
        let crc = crc32c::crc32c(before);
        let crc = crc32c::crc32c_append(crc, &[0; CRC32C_LEN]);
        let crc = crc32c::crc32c_append(crc, after);
        // Spec §2.2.3: the checksum is sent big-endian; compare as integers.
        if crc != u32::from_be_bytes(*stored) {
            return Err(ParseError::V2Crc32cMismatch);
        }
    }
    Ok(())
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
    use std::net::Ipv4Addr;

    use crate::proxy_protocol::fixtures::*;
    use crate::proxy_protocol::{MAX_HEADER_LEN, encode_v2, parse};

    #[test]
    fn v2_tcp4_golden_bytes() {
        #[rustfmt::skip] // one wire field per line
        let bytes = [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
            0x21,                   // version 2 (high nibble), command PROXY (low nibble)
            0x11,                   // AF_INET (high nibble), STREAM (low nibble)
            0x00, 0x0C,             // length of what follows: 12
            192, 0, 2, 1,           // source address 192.0.2.1
            198, 51, 100, 7,        // destination address 198.51.100.7
            0xC3, 0x50,             // source port 50000
            0x01, 0xBB,             // destination port 443
        ];
        let h = complete(&bytes);
        assert_eq!(
            h,
            Header {
                version: Version::V2,
                command: Command::Proxy,
                source: Some(sa("192.0.2.1:50000")),
                destination: Some(sa("198.51.100.7:443")),
                len: 28,
            }
        );
        assert_eq!(
            encode_v2(sa("192.0.2.1:50000"), sa("198.51.100.7:443")),
            bytes
        );
    }

    #[test]
    fn v2_tcp6_golden_bytes() {
        #[rustfmt::skip] // one wire field per line
        let bytes = [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
            0x21,                   // version 2 (high nibble), command PROXY (low nibble)
            0x21,                   // AF_INET6 (high nibble), STREAM (low nibble)
            0x00, 0x24,             // length of what follows: 36
            0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // source 2001:db8::1
            0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // destination 2001:db8::2
            0xC3, 0x50,             // source port 50000
            0x01, 0xBB,             // destination port 443
        ];
        let h = complete(&bytes);
        assert_eq!(h.source, Some(sa("[2001:db8::1]:50000")));
        assert_eq!(h.destination, Some(sa("[2001:db8::2]:443")));
        assert_eq!(h.len, 52);
        assert_eq!(
            encode_v2(sa("[2001:db8::1]:50000"), sa("[2001:db8::2]:443")),
            bytes
        );
    }

    #[test]
    fn v2_ipv4_mapped_ipv6_is_returned_as_sent() {
        let mut body = Ipv4Addr::new(192, 0, 2, 1)
            .to_ipv6_mapped()
            .octets()
            .to_vec();
        body.extend(Ipv6Addr::LOCALHOST.octets());
        body.extend([0, 1, 0, 2]);
        let h = complete(&v2(0x21, 0x21, &body));
        assert_eq!(h.source, Some(sa("[::ffff:192.0.2.1]:1")));
    }

    #[test]
    fn v2_local_without_address_block() {
        let h = complete(&v2(0x20, 0x00, &[]));
        assert_eq!(
            h,
            Header {
                version: Version::V2,
                command: Command::Local,
                source: None,
                destination: None,
                len: 16,
            }
        );
    }

    #[test]
    fn v2_local_skips_exactly_len_bytes_and_ignores_addresses() {
        let mut bytes = v2(0x20, 0x11, &TCP4_BLOCK);
        bytes.extend_from_slice(b"\x16\x03\x01"); // start of a ClientHello
        let h = complete(&bytes);
        assert_eq!(
            (h.command, h.source, h.destination),
            (Command::Local, None, None)
        );
        assert_eq!(h.len, 28);
        // The family is ignored for LOCAL, even one refused for PROXY, and the
        // skipped bytes need not hold TLVs.
        let h = complete(&v2(0x20, 0x12, &[0xFF; 5]));
        assert_eq!(h.len, 21);
    }

    #[test]
    fn v2_unspec_and_unix_have_no_addresses() {
        let h = complete(&v2(0x21, 0x00, &[]));
        assert_eq!(
            (h.command, h.source, h.destination),
            (Command::Proxy, None, None)
        );
        let h = complete(&v2(0x21, 0x31, &[b'/'; 216]));
        assert_eq!((h.source, h.destination, h.len), (None, None, 16 + 216));
    }

    #[test]
    fn v2_unsupported_family_is_rejected() {
        for fam in [0x12, 0x22, 0x32, 0x01, 0x10, 0x41, 0xFF] {
            let bytes = v2(0x21, fam, &[0; 36]);
            assert_eq!(parse(&bytes), Err(ParseError::V2Family(fam)));
            // Reported as soon as the family byte arrives.
            assert_eq!(parse(&bytes[..14]), Err(ParseError::V2Family(fam)));
        }
    }

    #[test]
    fn v2_bad_version_is_rejected() {
        for ver_cmd in [0x11, 0x31, 0x01, 0xF1] {
            let bytes = v2(ver_cmd, 0x11, &TCP4_BLOCK);
            assert_eq!(
                parse(&bytes[..13]),
                Err(ParseError::V2Version(ver_cmd >> 4))
            );
        }
    }

    #[test]
    fn v2_bad_command_is_rejected() {
        for ver_cmd in [0x22, 0x2F] {
            let bytes = v2(ver_cmd, 0x11, &TCP4_BLOCK);
            assert_eq!(
                parse(&bytes[..13]),
                Err(ParseError::V2Command(ver_cmd & 0xF))
            );
        }
    }

    #[test]
    fn v2_address_block_too_short_is_rejected_from_the_fixed_bytes() {
        let bytes = v2(0x21, 0x11, &[0; 11]);
        let err = Err(ParseError::V2AddressTooShort {
            family_needs: 12,
            len: 11,
        });
        assert_eq!(parse(&bytes[..16]), err);
        assert_eq!(parse(&bytes), err);
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 35])),
            Err(ParseError::V2AddressTooShort {
                family_needs: 36,
                len: 35
            })
        );
        assert_eq!(
            parse(&v2(0x21, 0x31, &[0; 215])),
            Err(ParseError::V2AddressTooShort {
                family_needs: 216,
                len: 215
            })
        );
    }

    #[test]
    fn v2_over_536_bytes_is_rejected_without_waiting() {
        let at_limit = v2(0x21, 0x00, &tlv(0x04, &[0; 520 - 3]));
        assert_eq!(at_limit.len(), MAX_HEADER_LEN);
        assert_eq!(complete(&at_limit).len, MAX_HEADER_LEN);

        let mut fixed = v2(0x21, 0x11, &[]);
        fixed[14..16].copy_from_slice(&521u16.to_be_bytes());
        assert_eq!(parse(&fixed), Err(ParseError::V2TooLong(537)));
        fixed[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&fixed), Err(ParseError::V2TooLong(16 + 65535)));
    }

    #[test]
    fn v2_tlv_walk_skips_alpn_ssl_with_sub_tlvs_noop_and_custom() {
        let mut ssl = vec![
            0x05, // client: PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS
            0, 0, 0, 0, // verify: certificate verified
        ];
        ssl.extend(tlv(0x21, b"TLSv1.3")); // PP2_SUBTYPE_SSL_VERSION
        ssl.extend(tlv(0x22, b"client.example")); // PP2_SUBTYPE_SSL_CN
        ssl.extend(tlv(0x23, b"TLS_AES_128_GCM_SHA256")); // PP2_SUBTYPE_SSL_CIPHER

        let mut body = TCP4_BLOCK.to_vec();
        body.extend(tlv(0x01, b"h2")); // PP2_TYPE_ALPN
        body.extend(tlv(0x02, b"mc.example")); // PP2_TYPE_AUTHORITY
        body.extend(tlv(0x20, &ssl)); // PP2_TYPE_SSL
        body.extend(tlv(0x04, &[0; 5])); // PP2_TYPE_NOOP padding
        body.extend(tlv(0x04, &[])); // empty NOOP
        body.extend(tlv(0xE0, b"\x01\x02\x03")); // custom application range
        let bytes = v2(0x21, 0x11, &body);
        let h = complete(&bytes);
        assert_eq!(h.source, Some(sa("192.0.2.1:50000")));
        assert_eq!(h.len, bytes.len());
    }

    #[test]
    fn v2_tlv_overrunning_the_header_is_rejected() {
        let mut body = TCP4_BLOCK.to_vec();
        body.extend([0xE0, 0x00, 0x05, 1, 2, 3]); // claims 5 value bytes, has 3
        assert!(matches!(
            parse(&v2(0x21, 0x11, &body)),
            Err(ParseError::V2Tlv(_))
        ));
    }

    #[test]
    fn v2_trailing_partial_tlv_header_is_rejected() {
        let mut body = TCP4_BLOCK.to_vec();
        body.extend(tlv(0x04, &[]));
        body.extend([0x01, 0x00]); // two of the three TLV header bytes
        assert!(matches!(
            parse(&v2(0x21, 0x11, &body)),
            Err(ParseError::V2Tlv(_))
        ));
    }

    #[test]
    fn crc32c_matches_known_vectors() {
        // The check value of CRC-32C (Castagnoli), not IEEE CRC-32 (0xCBF43926).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c::crc32c(b""), 0);
        // RFC 3720 Appendix B.4: 32 bytes of zeros, of ones, incrementing, decrementing.
        let incrementing: Vec<u8> = (0..32).collect();
        let decrementing: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c::crc32c(&[0; 32]), 0x8A91_36AA);
        assert_eq!(crc32c::crc32c(&[0xFF; 32]), 0x62A8_AB43);
        assert_eq!(crc32c::crc32c(&incrementing), 0x46DD_794E);
        assert_eq!(crc32c::crc32c(&decrementing), 0x113F_DB5C);
    }

    #[test]
    fn crc32c_over_pieces_equals_crc32c_over_the_whole() {
        // `check_tlvs` checksums the header in three pieces; that must equal one pass.
        let header = with_crc(&TCP4_BLOCK);
        for cut in 0..=header.len() {
            let (a, b) = header.split_at(cut);
            assert_eq!(
                crc32c::crc32c_append(crc32c::crc32c(a), b),
                crc32c::crc32c(&header),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn v2_crc32c_good_is_accepted() {
        let bytes = with_crc(&TCP4_BLOCK);
        let h = complete(&bytes);
        assert_eq!(h.len, bytes.len());
        assert_eq!(h.destination, Some(sa("198.51.100.7:443")));
    }

    #[test]
    fn v2_crc32c_bad_is_rejected() {
        let mut bytes = with_crc(&TCP4_BLOCK);
        bytes[20] ^= 1; // corrupt the destination address
        assert_eq!(parse(&bytes), Err(ParseError::V2Crc32cMismatch));
        let mut bytes = with_crc(&TCP4_BLOCK);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80; // corrupt the checksum itself
        assert_eq!(parse(&bytes), Err(ParseError::V2Crc32cMismatch));
    }

    #[test]
    fn v2_crc32c_with_wrong_length_or_twice_is_rejected() {
        let mut body = TCP4_BLOCK.to_vec();
        body.extend(tlv(PP2_TYPE_CRC32C, &[0; 3]));
        assert!(matches!(
            parse(&v2(0x21, 0x11, &body)),
            Err(ParseError::V2Tlv(_))
        ));
        let mut body = TCP4_BLOCK.to_vec();
        body.extend(tlv(PP2_TYPE_CRC32C, &[0; 4]));
        body.extend(tlv(PP2_TYPE_CRC32C, &[0; 4]));
        assert!(matches!(
            parse(&v2(0x21, 0x11, &body)),
            Err(ParseError::V2Tlv(_))
        ));
    }
}
