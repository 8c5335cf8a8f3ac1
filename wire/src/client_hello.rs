//! The TLS ClientHello parser: finds the ClientHello in the first bytes of a connection and
//! extracts the SNI `host_name` (and the ALPN offer) so the router can pick a backend without
//! terminating TLS.
//!
//! What it owns: finding the ClientHello even when it spans many TCP segments and several TLS
//! records, and reading the `server_name` (RFC 6066 §3) and ALPN (RFC 7301) extensions from it.
//! Records are TLSPlaintext (RFC 8446 §5.1): a handshake message may be split across
//! consecutive handshake records, so fragments are joined until the declared handshake length
//! has arrived. The ClientHello body is read per RFC 8446 §4.1.2, which is wire-compatible with
//! TLS 1.2 (RFC 5246 §7.4.1.2), including old hellos that carry no extensions at all.
//!
//! No I/O: [`parse`] and [`Scanner`] are pure functions of the bytes given. The async reader
//! that fills the buffer from a socket lives in the daemon (`mc_proxy::sni`).
//!
//! Invariants:
//! - No input panics: every read goes through a checked cursor, never an index (the crate's
//!   lint block denies indexing, `unwrap` and `panic!`).
//! - Memory is capped: a hello whose records would exceed [`MAX_HELLO_LEN`]
//!   bytes is refused with [`ParseError::TooLarge`] as soon as that is known,
//!   so a peer cannot make us buffer without bound.
//! - Bytes are never consumed: the caller's buffer keeps everything read, and
//!   [`ClientHello::len`] says where the hello's records end, so the caller
//!   forwards exactly what the client sent (the backend terminates TLS and
//!   must see the original bytes).
//! - A `Complete` hello's records are exactly `len` bytes: the record headers walked from
//!   offset 0 end at `len`, and their handshake fragments hold at least the declared
//!   handshake length (checked by `debug_assert!` in debug and fuzz builds).
//! - Verdicts are final as early as possible and stable: once a prefix is
//!   rejected, no extension of it is accepted, so plain-text or oversized
//!   junk is dropped after its first telling byte.

use std::borrow::Cow;

/// Cap on the total record bytes (headers included) buffered for one hello.
///
/// Real hellos are well under 2 KiB, or a few KiB with post-quantum key
/// shares; 64 KiB leaves ample room while bounding per-connection memory.
pub const MAX_HELLO_LEN: usize = 64 * 1024;

/// TLSPlaintext header: type(1) + legacy_record_version(2) + length(2).
const RECORD_HEADER_LEN: usize = 5;
/// RFC 8446 §5.1: plaintext fragments are at most 2^14 bytes.
const MAX_FRAGMENT_LEN: usize = 1 << 14;
/// Handshake header: msg_type(1) + uint24 length.
const HANDSHAKE_HEADER_LEN: usize = 4;

const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_TYPE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// What the router needs from a complete ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The host_name entry of server_name: lowercased, one trailing dot
    /// stripped, validated as a DNS name. None when the hello has no SNI
    /// extension (or the extension carries no host_name entry).
    pub server_name: Option<String>,
    /// ALPN protocol names offered, in order (empty when no ALPN extension).
    /// Cheap to keep, and routing on it is a likely later need.
    pub alpn: Vec<Vec<u8>>,
    /// Bytes of the stream occupied by the records that carry the
    /// ClientHello (from offset 0 to the end of the record holding its last
    /// byte). Bytes after this are early data or pipelined records.
    pub len: usize,
}

/// Outcome of scanning a buffer that may hold only the start of a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Everything seen so far is valid, but the hello's last record has not
    /// fully arrived: read more and try again.
    Incomplete,
    /// The whole hello has arrived and parsed.
    Complete(ClientHello),
}

/// Why a byte stream cannot be routed as a TLS ClientHello. Every variant is
/// final: more bytes will not change the verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The stream does not start a TLS handshake record (first byte not 22,
    /// or record version major byte not 3): plain text, a PROXY header, etc.
    #[error("not a TLS handshake")]
    NotTls,
    /// legacy_record_version outside TLS 1.0..=1.2 (SSL 3.0 included).
    #[error("unsupported TLS record version {0:#06x}")]
    RecordVersion(u16),
    /// A record length of 0 or above 2^14 (RFC 8446 §5.1).
    #[error("invalid TLS record length {0}")]
    RecordLength(usize),
    /// A non-handshake record arrived before the ClientHello was complete.
    #[error("unexpected TLS record type {0} before the ClientHello completed")]
    UnexpectedRecord(u8),
    /// The first handshake message is not a client_hello.
    #[error("handshake message type {0} is not client_hello")]
    NotClientHello(u8),
    /// The hello's records would occupy at least this many bytes, more than
    /// [`MAX_HELLO_LEN`].
    #[error("ClientHello needs at least {0} bytes, over the {MAX_HELLO_LEN} byte cap")]
    TooLarge(usize),
    /// The ClientHello's structure is inconsistent; the text names the field.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The server_name extension is empty or its host_name is not a valid
    /// DNS name.
    #[error("invalid server_name")]
    InvalidServerName,
}

/// Stateless entry point: parses from scratch.
///
/// `buf` starts at the first byte of the connection; bytes after the hello's
/// records are ignored (see [`ClientHello::len`]).
pub fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    Scanner::new().feed(buf)
}

/// Resumable scanner for a reader that grows its buffer: remembers how far record headers
/// have been walked, so feeding a buffer that grows one byte at a time costs
/// O(total) instead of O(n^2).
///
/// Only fully received records are remembered; the record still arriving is
/// re-examined on each feed (a constant amount of work), which is what makes
/// the answer identical to [`parse`] on the same buffer.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Offset of the first record not yet fully received.
    pos: usize,
    /// Handshake bytes carried by the fully received records.
    handshake_seen: usize,
    /// The handshake header as far as the fully received records carry it
    /// (the first `min(handshake_seen, 4)` bytes are meaningful); it may
    /// itself be split across records.
    handshake_header: [u8; HANDSHAKE_HEADER_LEN],
}

impl Scanner {
    /// A scanner positioned at the start of a connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// `feed(buf)` takes the whole buffer read so far (always a
    /// prefix-extension of the previous one) and returns the same answer
    /// `parse(buf)` would.
    pub fn feed(&mut self, buf: &[u8]) -> Result<Parsed, ParseError> {
        if buf.len() < self.pos {
            // Contract broken (buffer shrank): start over rather than answer
            // from state that no longer describes `buf`.
            *self = Self::new();
        }
        loop {
            if let Some(msg_len) = self.complete_message_len() {
                return assemble(buf, self.pos, msg_len).map(Parsed::Complete);
            }
            let rest = buf.get(self.pos..).unwrap_or_default();
            let Some(fragment_len) = record_header(rest, self.pos == 0)? else {
                return Ok(Parsed::Incomplete);
            };
            let record_end = self.pos + RECORD_HEADER_LEN + fragment_len;
            if record_end > MAX_HELLO_LEN {
                return Err(ParseError::TooLarge(record_end));
            }
            let arrived = rest.get(RECORD_HEADER_LEN..).unwrap_or_default();
            let fragment = arrived.get(..fragment_len).unwrap_or(arrived);

            // Inspect the handshake header even from a partial record so a
            // wrong message type or an absurd length is refused before we
            // wait for (and buffer) the rest.
            let (header, known) = self.header_with(fragment);
            let [msg_type, l0, l1, l2] = header;
            if known >= 1 && msg_type != HANDSHAKE_TYPE_CLIENT_HELLO {
                return Err(ParseError::NotClientHello(msg_type));
            }
            if known == HANDSHAKE_HEADER_LEN {
                let msg_len = HANDSHAKE_HEADER_LEN + u24(l0, l1, l2);
                let remaining = msg_len.saturating_sub(self.handshake_seen);
                // Lower bound over every possible framing of what is left:
                // full-size records from here on.
                let min_end =
                    self.pos + remaining + RECORD_HEADER_LEN * remaining.div_ceil(MAX_FRAGMENT_LEN);
                if min_end > MAX_HELLO_LEN {
                    return Err(ParseError::TooLarge(min_end));
                }
            }

            if fragment.len() < fragment_len {
                return Ok(Parsed::Incomplete);
            }
            self.handshake_header = header;
            self.handshake_seen += fragment_len;
            self.pos = record_end;
        }
    }

    /// The handshake header combined from fully received records and the
    /// start of `fragment`, with how many of its bytes are known.
    fn header_with(&self, fragment: &[u8]) -> ([u8; HANDSHAKE_HEADER_LEN], usize) {
        let mut header = self.handshake_header;
        let known = self.handshake_seen.min(HANDSHAKE_HEADER_LEN);
        for (slot, &byte) in header.iter_mut().skip(known).zip(fragment) {
            *slot = byte;
        }
        let known = (known + fragment.len()).min(HANDSHAKE_HEADER_LEN);
        (header, known)
    }

    /// Length of the whole handshake message (header included) once the
    /// fully received records hold all of it.
    fn complete_message_len(&self) -> Option<usize> {
        if self.handshake_seen < HANDSHAKE_HEADER_LEN {
            return None;
        }
        let [_, l0, l1, l2] = self.handshake_header;
        let msg_len = HANDSHAKE_HEADER_LEN + u24(l0, l1, l2);
        (self.handshake_seen >= msg_len).then_some(msg_len)
    }
}

/// Checks the (possibly partial) record header at the start of `rest`.
/// Returns the fragment length once all five header bytes are present;
/// rejects as soon as the bytes present are enough to tell.
fn record_header(rest: &[u8], first_record: bool) -> Result<Option<usize>, ParseError> {
    let Some(&content_type) = rest.first() else {
        return Ok(None);
    };
    if content_type != CONTENT_TYPE_HANDSHAKE {
        // Only the connection's first byte tells "not TLS at all" apart from
        // a TLS peer misbehaving mid-hello.
        return Err(if first_record {
            ParseError::NotTls
        } else {
            ParseError::UnexpectedRecord(content_type)
        });
    }
    let Some(&major) = rest.get(1) else {
        return Ok(None);
    };
    if first_record && major != 3 {
        return Err(ParseError::NotTls);
    }
    let Some(&minor) = rest.get(2) else {
        return Ok(None);
    };
    let version = u16::from_be_bytes([major, minor]);
    // Clients put 0x0301 in the first record for compatibility and 0x0303
    // later (RFC 8446 §5.1); 0x0300 would be SSL 3.0, which we refuse.
    if !(0x0301..=0x0303).contains(&version) {
        return Err(ParseError::RecordVersion(version));
    }
    let Some(&[hi, lo]) = rest.get(3..RECORD_HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    // Zero-length handshake fragments are forbidden (RFC 8446 §5.1).
    if len == 0 || len > MAX_FRAGMENT_LEN {
        return Err(ParseError::RecordLength(len));
    }
    Ok(Some(len))
}

fn u24(b0: u8, b1: u8, b2: u8) -> usize {
    usize::from(b0) << 16 | usize::from(b1) << 8 | usize::from(b2)
}

/// Joins the handshake message from the records in `buf[..end]` and parses it.
fn assemble(buf: &[u8], end: usize, msg_len: usize) -> Result<ClientHello, ParseError> {
    let records = buf
        .get(..end)
        .ok_or(ParseError::Malformed("record bytes"))?;
    let mut reader = Reader::new(records);
    reader.take(3, "record header")?;
    let first = reader.vec16("record fragment")?;
    // The common case is a hello in one record: borrow it rather than copy.
    let message = match first.get(..msg_len) {
        Some(whole) => Cow::Borrowed(whole),
        None => {
            let mut joined = Vec::with_capacity(msg_len);
            joined.extend_from_slice(first);
            while joined.len() < msg_len {
                reader.take(3, "record header")?;
                joined.extend_from_slice(reader.vec16("record fragment")?);
            }
            joined.truncate(msg_len);
            Cow::Owned(joined)
        }
    };
    // Postconditions: the records walked are exactly the `end` bytes the scanner reported
    // (so `len` never covers a byte the hello does not own), and the message is exactly the
    // declared handshake length.
    debug_assert!(
        reader.is_empty(),
        "ClientHello records end {} bytes before len {end}",
        reader.rest.len()
    );
    debug_assert_eq!(message.len(), msg_len, "handshake message length");
    debug_assert_eq!(
        message
            .get(1..HANDSHAKE_HEADER_LEN)
            .map(|l| HANDSHAKE_HEADER_LEN + l.iter().fold(0, |n, &b| n << 8 | usize::from(b))),
        Some(msg_len),
        "handshake length field"
    );
    let body = message
        .get(HANDSHAKE_HEADER_LEN..)
        .ok_or(ParseError::Malformed("handshake header"))?;
    let (server_name, alpn) = parse_client_hello_body(body)?;
    Ok(ClientHello {
        server_name,
        alpn,
        len: end,
    })
}

type HelloFields = (Option<String>, Vec<Vec<u8>>);

/// RFC 8446 §4.1.2 ClientHello (same layout as TLS 1.2's).
fn parse_client_hello_body(body: &[u8]) -> Result<HelloFields, ParseError> {
    let mut r = Reader::new(body);
    // legacy_version is not checked: version negotiation is the backend's
    // business, and TLS 1.3 pins it to 0x0303 anyway.
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    if r.vec8("legacy_session_id")?.len() > 32 {
        return Err(ParseError::Malformed(
            "legacy_session_id longer than 32 bytes",
        ));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || !suites.len().is_multiple_of(2) {
        return Err(ParseError::Malformed("cipher_suites"));
    }
    if r.vec8("legacy_compression_methods")?.is_empty() {
        return Err(ParseError::Malformed("legacy_compression_methods empty"));
    }
    if r.is_empty() {
        // Pre-extension hellos (RFC 5246 §7.4.1.2 allows omitting the block).
        return Ok((None, Vec::new()));
    }
    let extensions = r.vec16("extensions")?;
    if !r.is_empty() {
        return Err(ParseError::Malformed("bytes after extensions"));
    }

    let mut server_name = None;
    let mut seen_server_name = false;
    let mut alpn = None;
    let mut exts = Reader::new(extensions);
    while !exts.is_empty() {
        let ext_type = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        match ext_type {
            EXT_SERVER_NAME => {
                // RFC 8446 §4.2: no extension type may repeat; two SNIs
                // would let us and the backend pick different names.
                if seen_server_name {
                    return Err(ParseError::Malformed("duplicate server_name extension"));
                }
                seen_server_name = true;
                server_name = parse_server_name(data)?;
            }
            EXT_ALPN => {
                if alpn.is_some() {
                    return Err(ParseError::Malformed("duplicate ALPN extension"));
                }
                alpn = Some(parse_alpn(data)?);
            }
            // Unknown and GREASE (RFC 8701) types carry nothing we route on.
            _ => {}
        }
    }
    Ok((server_name, alpn.unwrap_or_default()))
}

/// RFC 6066 §3 ServerNameList; only the host_name entry matters.
fn parse_server_name(data: &[u8]) -> Result<Option<String>, ParseError> {
    let mut r = Reader::new(data);
    let list = r.vec16("server_name list")?;
    if !r.is_empty() {
        return Err(ParseError::Malformed("bytes after server_name list"));
    }
    if list.is_empty() {
        return Err(ParseError::InvalidServerName);
    }
    let mut host_name = None;
    let mut entries = Reader::new(list);
    while !entries.is_empty() {
        let name_type = entries.u8("server_name name_type")?;
        let name = entries.vec16("server_name entry")?;
        if name_type != NAME_TYPE_HOST_NAME {
            continue;
        }
        // RFC 6066 §3: at most one name per name_type.
        if host_name.is_some() {
            return Err(ParseError::Malformed("duplicate host_name"));
        }
        host_name = Some(validate_host_name(name)?);
    }
    Ok(host_name)
}

/// RFC 7301 §3.1 ProtocolNameList.
fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, ParseError> {
    let mut r = Reader::new(data);
    let list = r.vec16("ALPN list")?;
    if !r.is_empty() {
        return Err(ParseError::Malformed("bytes after ALPN list"));
    }
    if list.is_empty() {
        return Err(ParseError::Malformed("empty ALPN list"));
    }
    let mut protocols = Vec::new();
    let mut names = Reader::new(list);
    while !names.is_empty() {
        let name = names.vec8("ALPN protocol name")?;
        if name.is_empty() {
            return Err(ParseError::Malformed("empty ALPN protocol name"));
        }
        protocols.push(name.to_vec());
    }
    Ok(protocols)
}

/// Normalises a host_name so route lookups compare equal, refusing anything that is not a
/// plain DNS name (RFC 6066 §3: ASCII, no IP literals). The rules are the route table's
/// ([`crate::dns::normalize_dns_name`]), so a name that parses here can match a route.
fn validate_host_name(name: &[u8]) -> Result<String, ParseError> {
    std::str::from_utf8(name)
        .ok()
        .and_then(crate::dns::normalize_dns_name)
        .ok_or(ParseError::InvalidServerName)
}

/// Checked big-endian reads over a byte slice: running past the end is a
/// `Malformed` error naming the field, never a panic.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or(ParseError::Malformed(what))?;
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ParseError> {
        let (&byte, tail) = self.rest.split_first().ok_or(ParseError::Malformed(what))?;
        self.rest = tail;
        Ok(byte)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ParseError> {
        let (bytes, tail) = self
            .rest
            .split_first_chunk::<2>()
            .ok_or(ParseError::Malformed(what))?;
        self.rest = tail;
        Ok(u16::from_be_bytes(*bytes))
    }

    /// An opaque vector with a one-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], ParseError> {
        let len = self.u8(what)?;
        self.take(usize::from(len), what)
    }

    /// An opaque vector with a two-byte length prefix.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], ParseError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
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

    use std::sync::LazyLock;

    use proptest::prelude::*;

    use crate::test_support::{capture, capture_with, cases, config, expected};

    fn complete(buf: &[u8]) -> ClientHello {
        match parse(buf) {
            Ok(Parsed::Complete(hello)) => hello,
            other => panic!("expected a complete hello, got {other:?}"),
        }
    }

    /// Counts the records in a buffer made of whole records.
    fn record_count(buf: &[u8]) -> usize {
        let mut pos = 0;
        let mut n = 0;
        while pos < buf.len() {
            pos +=
                RECORD_HEADER_LEN + usize::from(u16::from_be_bytes([buf[pos + 3], buf[pos + 4]]));
            n += 1;
        }
        n
    }

    /// The handshake message carried by a buffer of whole records.
    fn handshake_bytes(records: &[u8]) -> Vec<u8> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < records.len() {
            let len = usize::from(u16::from_be_bytes([records[pos + 3], records[pos + 4]]));
            out.extend_from_slice(&records[pos + 5..pos + 5 + len]);
            pos += 5 + len;
        }
        out
    }

    /// Frames `msg` as handshake records with the given fragment sizes
    /// (cycled; the last record takes whatever is left).
    fn frame(msg: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = msg;
        let mut sizes = sizes.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes
                .next()
                .unwrap_or(MAX_FRAGMENT_LEN)
                .clamp(1, MAX_FRAGMENT_LEN);
            let (frag, tail) = rest.split_at(n.min(rest.len()));
            out.extend_from_slice(&[CONTENT_TYPE_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(frag.len() as u16).to_be_bytes());
            out.extend_from_slice(frag);
            rest = tail;
        }
        out
    }

    fn assert_byte_by_byte(buf: &[u8], want: &ClientHello) {
        let mut scanner = Scanner::new();
        for end in 0..buf.len() {
            assert_eq!(
                scanner.feed(&buf[..end]),
                Ok(Parsed::Incomplete),
                "scanner at {end}"
            );
            assert_eq!(parse(&buf[..end]), Ok(Parsed::Incomplete), "parse at {end}");
        }
        assert_eq!(scanner.feed(buf), Ok(Parsed::Complete(want.clone())));
    }

    #[test]
    fn real_hellos_parse_to_their_server_name_and_alpn() {
        for case in cases() {
            let hello = capture(&case, None);
            assert_eq!(record_count(&hello), 1, "{}", case.name);
            assert_eq!(
                complete(&hello),
                expected(&case, hello.len()),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn large_hello_case_really_is_over_2_kib() {
        let case = cases().into_iter().find(|c| c.name == "large").unwrap();
        assert!(capture(&case, None).len() > 2048);
    }

    #[test]
    fn real_hellos_are_incomplete_at_every_prefix_until_the_last_byte() {
        for case in cases() {
            let hello = capture(&case, None);
            assert_byte_by_byte(&hello, &expected(&case, hello.len()));
        }
    }

    #[test]
    fn real_hellos_split_into_small_records_by_rustls_parse_the_same() {
        for case in cases() {
            for max_fragment in [64, 512] {
                let hello = capture(&case, Some(max_fragment));
                if max_fragment == 64 {
                    assert!(record_count(&hello) >= 3, "{}", case.name);
                }
                let want = expected(&case, hello.len());
                assert_eq!(complete(&hello), want, "{} / {max_fragment}", case.name);
                assert_byte_by_byte(&hello, &want);
            }
        }
    }

    #[test]
    fn hello_reframed_into_two_records_parses_at_every_split_point() {
        for case in cases() {
            let msg = handshake_bytes(&capture(&case, None));
            // Stepping keeps the large case quick while still covering splits
            // inside the 4-byte handshake header.
            let step = if msg.len() > 1024 { 37 } else { 1 };
            for split in (1..msg.len()).filter(|s| *s < 6 || s % step == 0) {
                let two = frame(&msg, &[split, MAX_FRAGMENT_LEN]);
                assert_eq!(record_count(&two), 2);
                assert_eq!(
                    complete(&two),
                    expected(&case, two.len()),
                    "{} split {split}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn hello_in_one_byte_records_parses() {
        let case = &cases()[0];
        let one_byte = frame(&handshake_bytes(&capture(case, None)), &[1]);
        assert_eq!(complete(&one_byte), expected(case, one_byte.len()));
    }

    #[test]
    fn declared_length_over_cap_is_too_large_as_soon_as_it_is_known() {
        // 1 MiB declared in the first nine bytes.
        let start = [22, 3, 1, 0x40, 0x00, 1, 0x10, 0x00, 0x00];
        assert!(matches!(parse(&start), Err(ParseError::TooLarge(n)) if n > MAX_HELLO_LEN));
        assert_eq!(parse(&start[..8]), Ok(Parsed::Incomplete));
        // Same, with the handshake header itself split across records.
        let split = [22, 3, 1, 0, 2, 1, 0x10, 22, 3, 1, 0, 2, 0x00, 0x00];
        assert_eq!(parse(&split[..13]), Ok(Parsed::Incomplete));
        assert!(matches!(parse(&split), Err(ParseError::TooLarge(_))));
    }

    #[test]
    fn hello_exactly_filling_the_cap_is_accepted_and_one_byte_more_is_not() {
        // Four full-size records: the densest framing of a 64 KiB stream.
        let sni = sni_ext(&[(0, b"big.example")]);
        let fixed = 4 * RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + body_with(Some(&[])).len();
        let padding = MAX_HELLO_LEN - fixed - sni.len() - 4;
        let build = |padding: usize| {
            let mut exts = ext(0x1234, &vec![0; padding]);
            exts.extend_from_slice(&sni);
            frame(&handshake(&body_with(Some(&exts))), &[MAX_FRAGMENT_LEN])
        };
        let records = build(padding);
        assert_eq!(records.len(), MAX_HELLO_LEN);
        assert_eq!(record_count(&records), 4);
        assert_eq!(
            complete(&records).server_name.as_deref(),
            Some("big.example")
        );
        // Refused from the handshake header alone.
        let records = build(padding + 1);
        assert_eq!(
            parse(&records[..9]),
            Err(ParseError::TooLarge(MAX_HELLO_LEN + 1))
        );
    }

    #[test]
    fn tiny_records_pushing_past_cap_are_too_large_before_the_cap_is_buffered() {
        // 12 000 handshake bytes in 1-byte records would need 72 000 bytes.
        let body = body_with(Some(&ext(0x1234, &vec![0; 11_900])));
        let records = frame(&handshake(&body), &[1]);
        let mut scanner = Scanner::new();
        let mut verdict_at = None;
        for end in 0..=records.len() {
            match scanner.feed(&records[..end]) {
                Ok(Parsed::Incomplete) => {}
                Err(ParseError::TooLarge(_)) => {
                    verdict_at = Some(end);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(verdict_at.unwrap() <= MAX_HELLO_LEN);
    }

    #[test]
    fn plain_text_is_not_tls_from_the_first_byte() {
        let http = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
        assert_eq!(parse(b"G"), Err(ParseError::NotTls));
        for end in 1..=http.len() {
            assert_eq!(parse(&http[..end]), Err(ParseError::NotTls));
        }
        assert_eq!(parse(b""), Ok(Parsed::Incomplete));
    }

    #[test]
    fn proxy_protocol_headers_are_not_tls() {
        let v1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 51234 443\r\n";
        assert_eq!(parse(v1), Err(ParseError::NotTls));
        let v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c";
        assert_eq!(parse(v2), Err(ParseError::NotTls));
    }

    #[test]
    fn record_header_is_judged_byte_by_byte() {
        // Major version 2 (e.g. an SSLv2-looking stream) is not TLS.
        assert_eq!(parse(&[22, 2]), Err(ParseError::NotTls));
        assert_eq!(parse(&[22, 3]), Ok(Parsed::Incomplete));
        assert_eq!(parse(&[22, 3, 0]), Err(ParseError::RecordVersion(0x0300)));
        assert_eq!(parse(&[22, 3, 4]), Err(ParseError::RecordVersion(0x0304)));
        for minor in 1..=3 {
            assert_eq!(parse(&[22, 3, minor, 0]), Ok(Parsed::Incomplete));
        }
        assert_eq!(parse(&[22, 3, 1, 0, 0]), Err(ParseError::RecordLength(0)));
        assert_eq!(
            parse(&[22, 3, 3, 0x40, 0x01]),
            Err(ParseError::RecordLength(16385))
        );
        assert_eq!(parse(&[22, 3, 3, 0x40, 0x00]), Ok(Parsed::Incomplete));
        assert_eq!(
            parse(&[22, 3, 1, 0, 4, 2]),
            Err(ParseError::NotClientHello(2))
        );
    }

    #[test]
    fn later_records_are_checked_too() {
        let hello = capture(&cases()[0], Some(64));
        let first_end = RECORD_HEADER_LEN + usize::from(hello[4]);
        let mut bad = hello[..first_end].to_vec();
        bad.extend_from_slice(&[22, 3, 0]);
        assert_eq!(parse(&bad), Err(ParseError::RecordVersion(0x0300)));
        let mut bad = hello[..first_end].to_vec();
        bad.extend_from_slice(&[22, 3, 3, 0, 0]);
        assert_eq!(parse(&bad), Err(ParseError::RecordLength(0)));
    }

    #[test]
    fn non_handshake_record_before_the_hello_completes_is_unexpected() {
        let hello = capture(&cases()[0], Some(64));
        let first_end = RECORD_HEADER_LEN + usize::from(hello[4]);
        for (content_type, name) in [
            (20, "change_cipher_spec"),
            (21, "alert"),
            (23, "application_data"),
        ] {
            let mut bad = hello[..first_end].to_vec();
            bad.push(content_type);
            // Refused on its type byte alone.
            assert_eq!(
                parse(&bad),
                Err(ParseError::UnexpectedRecord(content_type)),
                "{name}"
            );
            bad.extend_from_slice(&[3, 3, 0, 1, 1]);
            bad.extend_from_slice(&hello[first_end..]);
            assert_eq!(
                parse(&bad),
                Err(ParseError::UnexpectedRecord(content_type)),
                "{name}"
            );
        }
    }

    #[test]
    fn bytes_after_the_hello_are_not_counted_in_len() {
        for case in cases() {
            let hello = capture(&case, None);
            let mut stream = hello.clone();
            stream.extend_from_slice(&[23, 3, 3, 0, 3, 1, 2, 3]);
            stream.extend_from_slice(b"and some junk");
            let want = expected(&case, hello.len());
            assert_eq!(complete(&stream), want);
            let mut scanner = Scanner::new();
            for end in hello.len()..=stream.len() {
                assert_eq!(
                    scanner.feed(&stream[..end]),
                    Ok(Parsed::Complete(want.clone()))
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_inside_the_hellos_last_record_count_in_len() {
        let msg = handshake_bytes(&capture(&cases()[0], None));
        let mut padded = msg.clone();
        padded.extend_from_slice(&[0xAB; 3]);
        let records = frame(&padded, &[MAX_FRAGMENT_LEN]);
        let hello = complete(&records);
        assert_eq!(hello.len, records.len());
        assert_eq!(hello.server_name.as_deref(), Some("example.com"));
    }

    // ---- Host names, patched into real hellos ----------------------------

    /// A valid placeholder name exactly `len` bytes long.
    fn placeholder(len: usize) -> String {
        (0..len)
            .map(|i| if i % 10 == 9 && i + 1 < len { '.' } else { 'q' })
            .collect()
    }

    /// A real rustls hello whose host_name bytes are replaced by `name`.
    fn hello_with_raw_name(name: &[u8]) -> Vec<u8> {
        let stand_in = placeholder(name.len());
        let mut hello = capture_with(config(false), &stand_in, None);
        let at = hello
            .windows(name.len())
            .position(|w| w == stand_in.as_bytes())
            .unwrap();
        hello[at..at + name.len()].copy_from_slice(name);
        hello
    }

    #[test]
    fn invalid_host_names_in_real_hellos_are_rejected() {
        let long_label = format!("{}.co", "a".repeat(64));
        let bad: [&[u8]; 10] = [
            b"exa mple.com",
            b"exam\xc3\xa9le.com",
            b"a..b",
            b"example.com..",
            long_label.as_bytes(),
            b"exa\0ple.com",
            b"*.example.com",
            b"-example.com",
            b"example-.com",
            b"192.0.2.1",
        ];
        for name in bad {
            assert_eq!(
                parse(&hello_with_raw_name(name)),
                Err(ParseError::InvalidServerName),
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn host_name_is_lowercased_and_one_trailing_dot_stripped() {
        for (raw, want) in [
            (&b"example.com."[..], "example.com"),
            (b"ExAmPlE.CoM", "example.com"),
            (b"WWW.Example.COM.", "www.example.com"),
            (b"_srv.example-1.com", "_srv.example-1.com"),
            (b"localhost", "localhost"),
        ] {
            let hello = complete(&hello_with_raw_name(raw));
            assert_eq!(hello.server_name.as_deref(), Some(want));
        }
    }

    #[test]
    fn host_name_validation_table() {
        let max_label = "a".repeat(63);
        let max_name = [&*max_label, &*max_label, &*max_label, &"a".repeat(61)].join(".");
        assert_eq!(max_name.len(), 253);
        let ok: [&[u8]; 6] = [
            b"a",
            b"x.y",
            max_label.as_bytes(),
            max_name.as_bytes(),
            b"1.example",
            b"a-b.c_d",
        ];
        for name in ok {
            assert!(
                validate_host_name(name).is_ok(),
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
        let too_long = format!("{max_name}a");
        let bad: [&[u8]; 10] = [
            b"",
            b".",
            b"..",
            b"a..b",
            b".a",
            too_long.as_bytes(),
            b"a/b",
            b"a:b",
            b"127.1",
            b"a.b..",
        ];
        for name in bad {
            assert_eq!(validate_host_name(name), Err(ParseError::InvalidServerName));
        }
        // The trailing dot does not count towards the 253.
        assert!(validate_host_name(format!("{max_name}.").as_bytes()).is_ok());
    }

    // ---- Hand-built hellos for structure edge cases ----------------------

    fn ext(ext_type: u16, data: &[u8]) -> Vec<u8> {
        let mut out = ext_type.to_be_bytes().to_vec();
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn sni_ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (name_type, name) in entries {
            list.push(*name_type);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        ext(EXT_SERVER_NAME, &data)
    }

    fn alpn_ext(names: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for name in names {
            list.push(name.len() as u8);
            list.extend_from_slice(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        ext(EXT_ALPN, &data)
    }

    fn body(session_id: &[u8], suites: &[u8], compression: &[u8], exts: Option<&[u8]>) -> Vec<u8> {
        let mut out = vec![3, 3];
        out.extend_from_slice(&[7; 32]);
        out.push(session_id.len() as u8);
        out.extend_from_slice(session_id);
        out.extend_from_slice(&(suites.len() as u16).to_be_bytes());
        out.extend_from_slice(suites);
        out.push(compression.len() as u8);
        out.extend_from_slice(compression);
        if let Some(exts) = exts {
            out.extend_from_slice(&(exts.len() as u16).to_be_bytes());
            out.extend_from_slice(exts);
        }
        out
    }

    fn body_with(exts: Option<&[u8]>) -> Vec<u8> {
        body(&[1; 32], &[0x13, 0x01], &[0], exts)
    }

    fn handshake(body: &[u8]) -> Vec<u8> {
        let len = body.len() as u32;
        let mut out = vec![HANDSHAKE_TYPE_CLIENT_HELLO];
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    }

    fn one_record(body: &[u8]) -> Vec<u8> {
        frame(&handshake(body), &[MAX_FRAGMENT_LEN])
    }

    fn parse_exts(exts: &[u8]) -> Result<Parsed, ParseError> {
        parse(&one_record(&body_with(Some(exts))))
    }

    #[test]
    fn hello_without_extensions_has_no_server_name() {
        let records = one_record(&body(&[], &[0x00, 0x2f], &[0], None));
        let want = ClientHello {
            server_name: None,
            alpn: vec![],
            len: records.len(),
        };
        assert_eq!(complete(&records), want);
        let empty_block = one_record(&body_with(Some(&[])));
        assert_eq!(complete(&empty_block).server_name, None);
    }

    #[test]
    fn malformed_hello_bodies_are_rejected() {
        let table: Vec<(&str, Vec<u8>)> = vec![
            (
                "session id over 32",
                body(&[0; 33], &[0x13, 0x01], &[0], None),
            ),
            (
                "odd cipher_suites",
                body(&[], &[0x13, 0x01, 0x13], &[0], None),
            ),
            ("no cipher_suites", body(&[], &[], &[0], None)),
            ("no compression", body(&[], &[0x13, 0x01], &[], None)),
            ("truncated random", vec![3, 3, 0, 0]),
            ("empty body", vec![]),
            ("one stray byte for the extensions length", {
                let mut b = body_with(None);
                b.push(0);
                b
            }),
            ("bytes after extensions", {
                let mut b = body_with(Some(&sni_ext(&[(0, b"example.com")])));
                b.push(0);
                b
            }),
            ("extensions length overruns", {
                let mut b = body_with(Some(&sni_ext(&[(0, b"example.com")])));
                b.pop();
                b
            }),
        ];
        for (name, body) in table {
            assert!(
                matches!(parse(&one_record(&body)), Err(ParseError::Malformed(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn extensions_that_do_not_fill_their_block_are_malformed() {
        let mut exts = sni_ext(&[(0, b"example.com")]);
        exts.push(0); // half an extension type
        assert!(matches!(parse_exts(&exts), Err(ParseError::Malformed(_))));
        let mut exts = ext(0x1234, &[1, 2, 3]);
        exts.truncate(exts.len() - 1);
        exts[3] = 3; // declared 3, only 2 present
        assert!(matches!(parse_exts(&exts), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn unknown_and_grease_extensions_are_ignored() {
        let mut exts = ext(0x0a0a, &[]);
        exts.extend(ext(0xfafa, &[0]));
        exts.extend(ext(0x4469, &[1, 2, 3]));
        exts.extend(sni_ext(&[(0, b"Example.org")]));
        exts.extend(ext(0x1a1a, &[]));
        exts.extend(alpn_ext(&[b"h2"]));
        let hello = complete(&one_record(&body_with(Some(&exts))));
        assert_eq!(hello.server_name.as_deref(), Some("example.org"));
        assert_eq!(hello.alpn, vec![b"h2".to_vec()]);
    }

    #[test]
    fn server_name_list_edge_cases() {
        let ok = |exts: Vec<u8>| complete(&one_record(&body_with(Some(&exts)))).server_name;
        // Only non-host_name entries: extension present, but no host to route on.
        assert_eq!(ok(sni_ext(&[(1, b"whatever")])), None);
        assert_eq!(
            ok(sni_ext(&[(7, b""), (0, b"a.example")])).as_deref(),
            Some("a.example")
        );
        assert_eq!(
            parse_exts(&sni_ext(&[])),
            Err(ParseError::InvalidServerName)
        );
        assert_eq!(
            parse_exts(&sni_ext(&[(0, b"")])),
            Err(ParseError::InvalidServerName)
        );
        assert!(matches!(
            parse_exts(&sni_ext(&[(0, b"a.example"), (0, b"b.example")])),
            Err(ParseError::Malformed(_))
        ));
        let mut twice = sni_ext(&[(0, b"a.example")]);
        twice.extend(sni_ext(&[(0, b"a.example")]));
        assert!(matches!(parse_exts(&twice), Err(ParseError::Malformed(_))));
        // Empty extension data: not even a list length.
        assert!(matches!(
            parse_exts(&ext(EXT_SERVER_NAME, &[])),
            Err(ParseError::Malformed(_))
        ));
        // List length shorter than the extension.
        let mut data = sni_ext(&[(0, b"a.example")]);
        data.push(0);
        data[3] += 1;
        assert!(matches!(parse_exts(&data), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn alpn_edge_cases() {
        let got = complete(&one_record(&body_with(Some(&alpn_ext(&[
            b"http/1.1",
            b"h2",
            b"acme-tls/1",
        ])))));
        assert_eq!(
            got.alpn,
            vec![b"http/1.1".to_vec(), b"h2".to_vec(), b"acme-tls/1".to_vec()]
        );
        assert!(matches!(
            parse_exts(&alpn_ext(&[b"h2", b""])),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            parse_exts(&alpn_ext(&[])),
            Err(ParseError::Malformed(_))
        ));
        let mut twice = alpn_ext(&[b"h2"]);
        twice.extend(alpn_ext(&[b"h2"]));
        assert!(matches!(parse_exts(&twice), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn zero_length_handshake_message_is_malformed() {
        assert!(matches!(
            parse(&[22, 3, 1, 0, 4, 1, 0, 0, 0]),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn scanner_keeps_answering_after_completion_and_survives_a_shrunk_buffer() {
        let case = &cases()[2];
        let hello = capture(case, Some(64));
        let want = expected(case, hello.len());
        let mut scanner = Scanner::new();
        assert_eq!(scanner.feed(&hello), Ok(Parsed::Complete(want.clone())));
        assert_eq!(scanner.feed(&hello), Ok(Parsed::Complete(want)));
        assert_eq!(scanner.feed(&hello[..10]), Ok(Parsed::Incomplete));
    }

    // ---- Properties ------------------------------------------------------

    static REAL_HELLO: LazyLock<Vec<u8>> = LazyLock::new(|| capture(&cases()[2], None));
    static REAL_HELLO_SPLIT: LazyLock<Vec<u8>> = LazyLock::new(|| capture(&cases()[2], Some(64)));

    /// Feeds `buf` in the given chunk sizes, checking the scanner against
    /// `parse` at every step; returns the final answer.
    fn feed_in_chunks(buf: &[u8], chunks: &[usize]) -> Result<Parsed, ParseError> {
        let mut scanner = Scanner::new();
        let mut end = 0;
        for &chunk in chunks {
            end = (end + chunk).min(buf.len());
            let got = scanner.feed(&buf[..end]);
            assert_eq!(got, parse(&buf[..end]), "at {end}");
            // Verdicts are final, so stop at the first error.
            got?;
        }
        let got = scanner.feed(buf);
        assert_eq!(got, parse(buf));
        got
    }

    /// Checks what every `parse` answer must satisfy, whatever the input, and returns it:
    /// a complete hello lies within the input, is found again from exactly its own bytes
    /// (and every shorter prefix is still incomplete), and ignores whatever follows it;
    /// an incomplete input never exceeds the cap; an error stays an error when more bytes
    /// arrive.
    fn check_parse_invariants(data: &[u8]) -> Result<Parsed, ParseError> {
        let verdict = parse(data);
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[22, 3, 3, 0, 1, 1]);
        match &verdict {
            Ok(Parsed::Complete(hello)) => {
                assert!(hello.len <= data.len(), "hello longer than its input");
                assert!(hello.len <= MAX_HELLO_LEN);
                assert_eq!(parse(&data[..hello.len]), verdict, "from its own bytes");
                assert_eq!(parse(&data[..hello.len - 1]), Ok(Parsed::Incomplete));
                assert_eq!(parse(&longer), verdict, "bytes after the hello");
            }
            Ok(Parsed::Incomplete) => {
                assert!(data.len() <= MAX_HELLO_LEN);
                if let Some(last) = data.len().checked_sub(1) {
                    assert_eq!(parse(&data[..last]), Ok(Parsed::Incomplete));
                }
            }
            Err(e) => assert!(parse(&longer).is_err(), "{e:?} then ok"),
        }
        verdict
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let verdict = check_parse_invariants(&bytes);
            prop_assert_eq!(Scanner::new().feed(&bytes), verdict);
        }

        #[test]
        fn arbitrary_hello_bodies_get_a_consistent_verdict(
            body in proptest::collection::vec(any::<u8>(), 0..4096),
            declared_slack in -8i64..8,
        ) {
            let declared = (body.len() as i64 + declared_slack).max(0) as u32;
            let mut records = vec![22, 3, 1];
            records.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
            records.push(HANDSHAKE_TYPE_CLIENT_HELLO);
            records.extend_from_slice(&declared.to_be_bytes()[1..]);
            records.extend_from_slice(&body);
            let verdict = check_parse_invariants(&records);
            // The one record always arrives whole, so only a handshake that declares more
            // than the record carries can still be waiting, and a complete hello owns the
            // whole record.
            match verdict {
                Ok(Parsed::Incomplete) => prop_assert!(declared as usize > body.len()),
                Ok(Parsed::Complete(hello)) => {
                    prop_assert!(declared as usize <= body.len());
                    prop_assert_eq!(hello.len, records.len());
                }
                Err(_) => {}
            }
        }

        #[test]
        fn mutating_one_byte_of_a_real_hello_never_panics(
            at in any::<prop::sample::Index>(),
            value in any::<u8>(),
            split in any::<bool>(),
        ) {
            let mut hello = if split { REAL_HELLO_SPLIT.clone() } else { REAL_HELLO.clone() };
            let i = at.index(hello.len());
            hello[i] = value;
            let verdict = parse(&hello);
            prop_assert_eq!(feed_in_chunks(&hello, &[1; 16]), verdict);
        }

        #[test]
        fn scanner_matches_parse_for_any_chunking(
            chunks in proptest::collection::vec(1usize..80, 1..100),
            split in any::<bool>(),
        ) {
            let hello = if split { &*REAL_HELLO_SPLIT } else { &*REAL_HELLO };
            let got = feed_in_chunks(hello, &chunks);
            prop_assert_eq!(got, Ok(Parsed::Complete(expected(&cases()[2], hello.len()))));
        }

        #[test]
        fn any_record_framing_of_a_real_hello_parses_the_same(
            sizes in proptest::collection::vec(1usize..400, 1..20),
        ) {
            let reframed = frame(&handshake_bytes(&REAL_HELLO), &sizes);
            prop_assert_eq!(
                parse(&reframed),
                Ok(Parsed::Complete(expected(&cases()[2], reframed.len())))
            );
        }
    }
}
