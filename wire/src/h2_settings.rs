//! The first frame an HTTP/2 server sends: its SETTINGS (RFC 9113 §3.4, §6.5).
//!
//! The daemon's backend pool needs one number from it, `SETTINGS_MAX_CONCURRENT_STREAMS`, to
//! know how many requests one backend connection can carry before another must be opened; the
//! HTTP/2 library (hyper over h2) keeps that number to itself. The pool watches the bytes the
//! backend sends first and hands them here.
//!
//! Invariants: streaming like every parser of this crate: `Incomplete` while the bytes are a
//! prefix of a SETTINGS frame, an error once they cannot be one, and a `Complete` result says
//! how many bytes the frame took. The frame's length is capped at [`MAX_FRAME`] (the default
//! `SETTINGS_MAX_FRAME_SIZE` a peer may not exceed before we announced more), so a caller
//! never buffers more than `9 + MAX_FRAME` bytes.

/// The frame header: 3 bytes length, type, flags, 4 bytes stream id.
pub const FRAME_HEADER_LEN: usize = 9;
/// The largest frame payload a peer may send before settings say otherwise (RFC 9113 §4.2).
pub const MAX_FRAME: usize = 16_384;

const TYPE_SETTINGS: u8 = 0x4;
const FLAG_ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_ENABLE_CONNECT_PROTOCOL: u16 = 0x8;

/// What the server's first SETTINGS frame announced, of what the pool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerSettings {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`; `None` when absent (no limit, RFC 9113 §6.5.2).
    pub max_concurrent_streams: Option<u32>,
    /// `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1` (RFC 8441): extended CONNECT, for WebSocket.
    pub enable_connect_protocol: bool,
}

/// The outcome of [`parse`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a valid SETTINGS frame: read more.
    Incomplete,
    /// The frame, and how many bytes of the buffer it took.
    Complete {
        /// What it announced.
        settings: ServerSettings,
        /// Bytes the frame took (header and payload).
        consumed: usize,
    },
}

/// Why the bytes are not a server's opening SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The first frame is of another type (the peer does not speak HTTP/2, or broke §3.4).
    #[error("first frame is type {0:#x}, not SETTINGS")]
    NotSettings(u8),
    /// A SETTINGS frame with ACK set, on stream other than 0, or a length not a multiple of 6.
    #[error("malformed SETTINGS frame")]
    Malformed,
    /// The frame is longer than [`MAX_FRAME`].
    #[error("SETTINGS frame of {0} bytes exceeds the {MAX_FRAME}-byte frame limit")]
    TooLong(usize),
}

/// Parses the server's first frame from the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        // A type byte already seen can already be wrong.
        return match buf.get(3) {
            Some(&t) if t != TYPE_SETTINGS => Err(ParseError::NotSettings(t)),
            _ => Ok(Parsed::Incomplete),
        };
    };
    let [l0, l1, l2, kind, flags, s0, s1, s2, s3] =
        <[u8; FRAME_HEADER_LEN]>::try_from(header).map_err(|_| ParseError::Malformed)?;
    if kind != TYPE_SETTINGS {
        return Err(ParseError::NotSettings(kind));
    }
    let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
    let stream = u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]);
    if flags & FLAG_ACK != 0 || stream != 0 || len % 6 != 0 {
        return Err(ParseError::Malformed);
    }
    if len > MAX_FRAME {
        return Err(ParseError::TooLong(len));
    }
    let Some(payload) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Ok(Parsed::Incomplete);
    };
    let mut settings = ServerSettings::default();
    for entry in payload.chunks_exact(6) {
        let [i0, i1, v0, v1, v2, v3] =
            <[u8; 6]>::try_from(entry).map_err(|_| ParseError::Malformed)?;
        let value = u32::from_be_bytes([v0, v1, v2, v3]);
        // Later entries override earlier ones (§6.5.3: processed in order).
        match u16::from_be_bytes([i0, i1]) {
            SETTINGS_MAX_CONCURRENT_STREAMS => settings.max_concurrent_streams = Some(value),
            SETTINGS_ENABLE_CONNECT_PROTOCOL => settings.enable_connect_protocol = value == 1,
            _ => {}
        }
    }
    Ok(Parsed::Complete {
        settings,
        consumed: FRAME_HEADER_LEN + len,
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
    use proptest::prelude::*;

    fn frame(kind: u8, flags: u8, stream: u32, entries: &[(u16, u32)]) -> Vec<u8> {
        let len = entries.len() * 6;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        for (id, value) in entries {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&value.to_be_bytes());
        }
        out
    }

    #[test]
    fn reads_max_concurrent_streams_and_connect_protocol() {
        let mut bytes = frame(4, 0, 0, &[(0x4, 65_535), (0x3, 1), (0x8, 1)]);
        let consumed = bytes.len();
        bytes.extend_from_slice(b"next frame");
        assert_eq!(
            parse(&bytes),
            Ok(Parsed::Complete {
                settings: ServerSettings {
                    max_concurrent_streams: Some(1),
                    enable_connect_protocol: true,
                },
                consumed,
            })
        );
    }

    #[test]
    fn an_empty_settings_frame_means_no_limit() {
        assert_eq!(
            parse(&frame(4, 0, 0, &[])),
            Ok(Parsed::Complete {
                settings: ServerSettings::default(),
                consumed: 9
            })
        );
    }

    #[test]
    fn a_later_entry_overrides_an_earlier_one() {
        let Ok(Parsed::Complete { settings, .. }) =
            parse(&frame(4, 0, 0, &[(0x3, 10), (0x3, 250)]))
        else {
            panic!("not complete");
        };
        assert_eq!(settings.max_concurrent_streams, Some(250));
    }

    #[test]
    fn an_http1_answer_is_not_settings_as_soon_as_its_fourth_byte_is_seen() {
        assert_eq!(parse(b"HTT"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"HTTP"), Err(ParseError::NotSettings(b'P')));
        assert_eq!(
            parse(b"HTTP/1.1 400 Bad Request\r\n"),
            Err(ParseError::NotSettings(b'P'))
        );
    }

    #[test]
    fn ack_stream_and_length_rules_are_enforced() {
        assert_eq!(parse(&frame(4, 1, 0, &[])), Err(ParseError::Malformed));
        assert_eq!(parse(&frame(4, 0, 1, &[])), Err(ParseError::Malformed));
        let mut odd = frame(4, 0, 0, &[(0x3, 1)]);
        odd[2] = 5;
        assert_eq!(parse(&odd), Err(ParseError::Malformed));
        let huge = [0x00, 0x40, 0x02, 4, 0, 0, 0, 0, 0];
        assert_eq!(parse(&huge), Err(ParseError::TooLong(16_386)));
    }

    proptest! {
        /// Every strict prefix of a valid frame is `Incomplete`; the whole frame is complete
        /// with the same settings whatever follows it.
        #[test]
        fn prefixes_are_incomplete(
            entries in proptest::collection::vec((any::<u16>(), any::<u32>()), 0..20),
            tail in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let bytes = frame(4, 0, 0, &entries);
            for k in 0..bytes.len() {
                prop_assert_eq!(parse(&bytes[..k]), Ok(Parsed::Incomplete));
            }
            let whole = parse(&bytes);
            let mut longer = bytes.clone();
            longer.extend_from_slice(&tail);
            prop_assert_eq!(parse(&longer), whole);
            let is_complete = matches!(whole, Ok(Parsed::Complete { consumed, .. }) if consumed == bytes.len());
            prop_assert!(is_complete);
        }

        /// Arbitrary bytes never panic, and a complete answer never claims more than it has.
        #[test]
        fn arbitrary_bytes_are_answered(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            match parse(&bytes) {
                Ok(Parsed::Complete { consumed, .. }) => prop_assert!(consumed <= bytes.len()),
                // Incomplete only while the declared frame is longer than what is there.
                Ok(Parsed::Incomplete) => if bytes.len() >= FRAME_HEADER_LEN {
                    let declared = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
                    prop_assert!(FRAME_HEADER_LEN + declared > bytes.len());
                },
                Err(_) => {}
            }
        }
    }
}
