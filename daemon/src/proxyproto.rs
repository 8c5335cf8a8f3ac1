//! PROXY protocol (haproxy `doc/proxy-protocol.txt`): parsing of v1 (text,
//! spec §2.1) and v2 (binary, spec §2.2) headers, and writing of v2 headers.
//!
//! I/O: [`parse`] and [`encode_v2`] are pure functions over byte slices.
//! [`write_v2`] only hands the encoded bytes to a writer; [`read_header`] is
//! the only function that reads from a stream.
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
//!   [`MAX_HEADER_LEN`]; bytes after it are never inspected.
//! - [`parse`] never panics, whatever the input.
//! - [`read_header`] returns every byte it read past the header so the next
//!   stage (TLS ClientHello sniffing) sees an unaltered stream.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest v1 line, CRLF included (spec §2.1: the worst case is an `UNKNOWN`
/// line carrying two full IPv6 addresses and two 5-digit ports).
pub const V1_MAX_LEN: usize = 107;

/// Longest header of either version we accept: the 16 fixed v2 bytes plus up
/// to 520 bytes of addresses and TLVs (216 for AF_UNIX leaves room for TLVs).
pub const MAX_HEADER_LEN: usize = 16 + 520;

/// Default deadline for a peer to deliver its whole PROXY header.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// Spec §2.2: the 12-byte v2 signature; its NUL and CRLFs make it invalid in
/// every common text protocol, including v1.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature + version/command + family/protocol + u16 length.
const V2_FIXED_LEN: usize = 16;

const V2_VERSION: u8 = 2;
const V2_CMD_LOCAL: u8 = 0x0;
const V2_CMD_PROXY: u8 = 0x1;
const V2_VER_CMD_PROXY: u8 = (V2_VERSION << 4) | V2_CMD_PROXY;

const V2_FAM_UNSPEC: u8 = 0x00;
const V2_FAM_TCP4: u8 = 0x11;
const V2_FAM_TCP6: u8 = 0x21;
const V2_FAM_UNIX_STREAM: u8 = 0x31;

const V2_ADDR_LEN_TCP4: u16 = 2 * 4 + 2 * 2;
const V2_ADDR_LEN_TCP6: u16 = 2 * 16 + 2 * 2;
const V2_ADDR_LEN_UNIX: u16 = 2 * 108;

/// TLV header: type (1) + big-endian length (2).
const TLV_HEADER_LEN: usize = 3;
/// Spec §2.2.3.
const PP2_TYPE_CRC32C: u8 = 0x03;
const CRC32C_LEN: usize = 4;

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

/// Why the bytes received cannot be a valid PROXY header.
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

/// Failure of [`read_header`].
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The underlying stream failed.
    #[error("I/O error while reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection before sending a whole header.
    #[error("connection closed before a complete PROXY header was received")]
    Eof,
    /// The peer did not send a whole header within the deadline.
    #[error("timed out waiting for the PROXY header")]
    Timeout,
    /// The bytes received are not a valid header.
    #[error("invalid PROXY header: {0}")]
    Parse(#[from] ParseError),
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
    if is_prefix_match(buf, V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Ok(Parsed::Incomplete);
        }
        return parse_v1(buf);
    }
    if is_prefix_match(buf, &V2_SIGNATURE) {
        return parse_v2(buf);
    }
    Err(ParseError::NotProxy)
}

/// True when the overlapping part of `buf` and `signature` agree, so `buf` may
/// still turn out to start with `signature`.
fn is_prefix_match(buf: &[u8], signature: &[u8]) -> bool {
    let n = buf.len().min(signature.len());
    buf.get(..n) == signature.get(..n)
}

// ---------------------------------------------------------------------------
// v1 (spec §2.1)
// ---------------------------------------------------------------------------

/// `buf` starts with `"PROXY "`.
fn parse_v1(buf: &[u8]) -> Result<Parsed, ParseError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(eol) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ParseError::V1TooLong);
        }
        v1_line(buf, false)?;
        return Ok(Parsed::Incomplete);
    };
    if window[eol] == b'\n' {
        return Err(ParseError::V1Syntax(
            "line ends with LF without a preceding CR",
        ));
    }
    let len = eol + 2;
    if len > V1_MAX_LEN {
        return Err(ParseError::V1TooLong);
    }
    let lf = buf.get(eol + 1).copied();
    if lf.is_some_and(|b| b != b'\n') {
        return Err(ParseError::V1Syntax("CR not followed by LF"));
    }
    // A CR can only start the terminator, so the line before it must already
    // be whole, even while the LF is still in flight.
    let addresses = v1_line(&buf[..eol], true)?;
    if lf.is_none() {
        return Ok(Parsed::Incomplete);
    }
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
    let rest: [Option<&[u8]>; 5] = std::array::from_fn(|_| fields.next());
    let proto_growing = !complete && rest[0].is_none();

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
    if rest[4].is_some() {
        return Err(ParseError::V1Syntax(
            "unexpected data after the destination port",
        ));
    }

    let mut ips: [Option<IpAddr>; 2] = [None; 2];
    let mut ports: [Option<u16>; 2] = [None; 2];
    // Left to right, so a partial line fails on the same field as the whole line.
    for (i, field) in rest[..4].iter().enumerate() {
        let Some(tok) = *field else {
            return if complete {
                Err(ParseError::V1Syntax(V1_MISSING[i]))
            } else {
                Ok(None)
            };
        };
        let growing = !complete && rest[i + 1].is_none();
        let ok = if i < 2 {
            if growing {
                v1_ip_prefix_ok(tok, v6)
            } else {
                ips[i] = v1_ip(tok, v6);
                ips[i].is_some()
            }
        } else if growing {
            // Any digit string ≤ 65535 without a leading zero is itself a valid
            // port, so a valid prefix is either empty or already a port.
            tok.is_empty() || v1_port(tok).is_some()
        } else {
            ports[i - 2] = v1_port(tok);
            ports[i - 2].is_some()
        };
        if !ok {
            let why = if tok.is_empty() {
                V1_DOUBLE_SPACE
            } else {
                V1_INVALID[i]
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
    if tok.is_empty() || tok.len() > max_digits || (tok.len() > 1 && tok[0] == b'0') {
        return None;
    }
    tok.iter().try_fold(0u32, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

// ---------------------------------------------------------------------------
// v2 (spec §2.2)
// ---------------------------------------------------------------------------

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

/// `buf` is a prefix of, or starts with, the v2 signature.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ParseError> {
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
            v2_check_tlvs(header, V2_FIXED_LEN + family.addr_len())?;
            let block = &header[V2_FIXED_LEN..];
            match v2_addresses(family, block) {
                Some((s, d)) => (Some(s), Some(d)),
                None => (None, None),
            }
        }
    };
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
fn v2_addresses(family: V2Family, block: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
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
fn v2_check_tlvs(header: &[u8], start: usize) -> Result<(), ParseError> {
    let mut remaining = header
        .get(start..)
        .ok_or(ParseError::V2Tlv("address block overruns the header"))?;
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
        remaining = after;
    }
    if let Some(at) = crc_at {
        let (before, from_crc) = header
            .split_at_checked(at)
            .ok_or(ParseError::V2Tlv("CRC32C TLV out of bounds"))?;
        let (stored, after) = from_crc
            .split_first_chunk::<CRC32C_LEN>()
            .ok_or(ParseError::V2Tlv("CRC32C TLV out of bounds"))?;
        let mut crc = crc32c_update(!0, before);
        crc = crc32c_update(crc, &[0; CRC32C_LEN]);
        crc = crc32c_update(crc, after);
        if !crc != u32::from_be_bytes(*stored) {
            return Err(ParseError::V2Crc32cMismatch);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// CRC32C (Castagnoli, RFC 4960 Appendix B), as required by spec §2.2.3
// ---------------------------------------------------------------------------

/// Reflected Castagnoli polynomial.
const CRC32C_POLY: u32 = 0x82F6_3B78;
const CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ CRC32C_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// Feeds `data` into a running (pre-inversion) CRC32C state, so a checksum
/// can be computed over discontiguous pieces without copying.
fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC32C_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

// ---------------------------------------------------------------------------
// v2 writer
// ---------------------------------------------------------------------------

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
    match (source, destination) {
        (SocketAddr::V4(src), SocketAddr::V4(dst)) => {
            out.push(V2_FAM_TCP4);
            out.extend_from_slice(&V2_ADDR_LEN_TCP4.to_be_bytes());
            out.extend_from_slice(&src.ip().octets());
            out.extend_from_slice(&dst.ip().octets());
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
        }
        (src, dst) => {
            let (src, dst) = (as_v6(src), as_v6(dst));
            out.push(V2_FAM_TCP6);
            out.extend_from_slice(&V2_ADDR_LEN_TCP6.to_be_bytes());
            out.extend_from_slice(&src.ip().octets());
            out.extend_from_slice(&dst.ip().octets());
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
        }
    }
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

/// Writes the [`encode_v2`] header for `source`/`destination` with a single
/// `write_all`, so it leaves in one segment (spec §2.2: "the sender must
/// ensure that all the protocol header is sent at once"). Does not flush; a
/// buffered writer must be flushed by the caller.
pub async fn write_v2<W: AsyncWrite + Unpin>(
    w: &mut W,
    source: SocketAddr,
    destination: SocketAddr,
) -> std::io::Result<()> {
    w.write_all(&encode_v2(source, destination)).await
}

// ---------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------

/// Reads one header within `timeout`; returns the header and the bytes read past it (which must be replayed to the next stage). Never loses bytes.
///
/// Reads in chunks and may read beyond the header; whatever follows it is
/// returned untouched. Fails fast: an invalid prefix is reported after the
/// read that delivered it, without waiting for more data.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    timeout: Duration,
) -> Result<(Header, Vec<u8>), ReadError> {
    tokio::time::timeout(timeout, read_header_unbounded(r))
        .await
        .unwrap_or(Err(ReadError::Timeout))
}

async fn read_header_unbounded<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(Header, Vec<u8>), ReadError> {
    // `parse` decides by MAX_HEADER_LEN bytes, so the buffer stays bounded by
    // that plus one chunk.
    let mut buf = Vec::with_capacity(2 * MAX_HEADER_LEN);
    let mut chunk = [0u8; MAX_HEADER_LEN];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(ReadError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Parsed::Complete(header) = parse(&buf)? {
            let leftover = buf.split_off(header.len);
            return Ok((header, leftover));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    fn complete(buf: &[u8]) -> Header {
        match parse(buf) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address literal")
    }

    /// Builds a v2 header from its parts, computing the length field.
    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        let len = u16::try_from(body.len()).expect("test body fits u16");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        let len = u16::try_from(value.len()).expect("test TLV fits u16");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    /// 192.0.2.1:50000 -> 198.51.100.7:443 as a 12-byte AF_INET block.
    #[rustfmt::skip] // one wire field per line
    const TCP4_BLOCK: [u8; 12] = [
        192, 0, 2, 1,    // source address
        198, 51, 100, 7, // destination address
        0xC3, 0x50,      // source port 50000
        0x01, 0xBB,      // destination port 443
    ];

    /// Valid headers of every shape, used by the prefix tests.
    fn valid_headers() -> Vec<Vec<u8>> {
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
    fn with_crc(block: &[u8]) -> Vec<u8> {
        let mut body = block.to_vec();
        body.extend(tlv(0x01, b"h2"));
        body.extend(tlv(PP2_TYPE_CRC32C, &[0; 4]));
        let mut header = v2(0x21, 0x11, &body);
        let crc = crc32c(&header);
        let at = header.len() - 4;
        header[at..].copy_from_slice(&crc.to_be_bytes());
        header
    }

    // ---- v1 ----

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

    // ---- v2 ----

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
    fn crc32c_matches_known_vector() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
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

    #[test]
    fn bytes_after_the_header_are_not_part_of_len() {
        let mut bytes = v2(0x21, 0x11, &TCP4_BLOCK);
        bytes.extend_from_slice(b"\x16\x03\x01\x00\x05hello");
        assert_eq!(complete(&bytes).len, 28);
        let mut line = b"PROXY UNKNOWN\r\n".to_vec();
        line.extend_from_slice(b"\r\nQUIT");
        assert_eq!(complete(&line).len, 15);
    }

    // ---- writer ----

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

    #[tokio::test]
    async fn write_v2_writes_the_encoded_header() {
        let mut out = Vec::new();
        write_v2(&mut out, sa("1.2.3.4:5"), sa("6.7.8.9:10"))
            .await
            .expect("writing to a Vec cannot fail");
        assert_eq!(out, encode_v2(sa("1.2.3.4:5"), sa("6.7.8.9:10")));
    }

    // ---- reader ----

    #[tokio::test]
    async fn read_header_returns_bytes_after_the_header_as_leftovers() {
        let mut stream = v2(0x21, 0x11, &TCP4_BLOCK);
        stream.extend_from_slice(b"\x16\x03\x01 rest of the hello");
        let mut reader = stream.as_slice();
        let (h, leftover) = read_header(&mut reader, READ_TIMEOUT)
            .await
            .expect("valid header");
        assert_eq!(h.len, 28);
        assert_eq!(leftover, b"\x16\x03\x01 rest of the hello");

        let mut reader = &b"PROXY UNKNOWN\r\nGET /"[..];
        let (h, leftover) = read_header(&mut reader, READ_TIMEOUT)
            .await
            .expect("valid header");
        assert_eq!((h.len, leftover.as_slice()), (15, &b"GET /"[..]));
    }

    #[tokio::test]
    async fn read_header_assembles_a_header_delivered_one_byte_at_a_time() {
        // A 1-byte duplex forces one read per byte.
        let (mut reader, mut writer) = tokio::io::duplex(1);
        let mut stream = with_crc(&TCP4_BLOCK);
        stream.extend_from_slice(b"tail");
        let expected_len = stream.len() - 4;
        let send = tokio::spawn(async move {
            writer.write_all(&stream).await.expect("duplex write");
            writer
        });
        let (h, mut leftover) = read_header(&mut reader, READ_TIMEOUT)
            .await
            .expect("valid header");
        assert_eq!(h.len, expected_len);
        // Drain the tail before joining: the writer blocks until it is read.
        let mut rest = vec![0; 4 - leftover.len()];
        reader.read_exact(&mut rest).await.expect("tail bytes");
        leftover.extend(rest);
        assert_eq!(leftover, b"tail");
        drop(send.await.expect("writer task"));
    }

    #[tokio::test(start_paused = true)]
    async fn read_header_times_out_when_the_peer_sends_nothing() {
        let (mut reader, _writer) = tokio::io::duplex(64);
        let err = read_header(&mut reader, READ_TIMEOUT).await;
        assert!(matches!(err, Err(ReadError::Timeout)), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn read_header_times_out_on_a_stalled_partial_header() {
        let (mut reader, mut writer) = tokio::io::duplex(64);
        writer
            .write_all(b"PROXY TCP4 ")
            .await
            .expect("duplex write");
        let err = read_header(&mut reader, READ_TIMEOUT).await;
        assert!(matches!(err, Err(ReadError::Timeout)), "{err:?}");
    }

    #[tokio::test]
    async fn read_header_returns_eof_when_the_peer_closes_mid_header() {
        let (mut reader, mut writer) = tokio::io::duplex(64);
        writer.write_all(&V2_SIGNATURE).await.expect("duplex write");
        drop(writer);
        let err = read_header(&mut reader, READ_TIMEOUT).await;
        assert!(matches!(err, Err(ReadError::Eof)), "{err:?}");
    }

    #[tokio::test]
    async fn read_header_reports_garbage_without_waiting_for_more() {
        let (mut reader, mut writer) = tokio::io::duplex(64);
        writer.write_all(b"\x16\x03").await.expect("duplex write");
        // The writer stays open: an answer proves no further read was awaited.
        let err = read_header(&mut reader, READ_TIMEOUT).await;
        assert!(
            matches!(err, Err(ReadError::Parse(ParseError::NotProxy))),
            "{err:?}"
        );
        drop(writer);
    }

    // ---- properties ----

    fn any_socket_addr() -> impl Strategy<Value = SocketAddr> {
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
    fn expected_pair(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
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
    fn check_parse_invariants(data: &[u8]) {
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
