//! Reading and writing PROXY protocol headers (haproxy `doc/proxy-protocol.txt`) on
//! connections.
//!
//! The parser and the v2 encoder are pure and live in the `wire` crate
//! ([`mc_proxy_wire::proxy_protocol`]); their types are re-exported here. This module only
//! owns the async side: [`read_header`] reads from a stream until [`parse`] gives a verdict,
//! and [`write_v2`] hands [`encode_v2`]'s bytes to a writer.
//!
//! I/O: [`read_header`] reads the client stream; [`write_v2`] writes the backend stream.
//! Invariants: [`read_header`] returns every byte it read past the header so the next stage
//! (TLS ClientHello sniffing) sees an unaltered stream, and buffers at most
//! [`MAX_HEADER_LEN`] plus one read, because [`parse`] never answers `Incomplete` past that.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use mc_proxy_wire::proxy_protocol::{
    Command, Header, MAX_HEADER_LEN, ParseError, Parsed, V1_MAX_LEN, V2_SIGNATURE, Version,
    encode_v2, parse,
};

/// Default deadline for a peer to deliver its whole PROXY header.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Reads one header within `timeout`; returns the header and the bytes read past it (which
/// must be replayed to the next stage). Never loses bytes.
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
    use tokio::io::AsyncWriteExt;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address literal")
    }

    /// 192.0.2.1:50000 -> 198.51.100.7:443, PROXY over TCP/IPv4.
    #[rustfmt::skip] // one wire field per line
    const TCP4_HEADER: [u8; 28] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
        0x21,                   // version 2 (high nibble), command PROXY (low nibble)
        0x11,                   // AF_INET (high nibble), STREAM (low nibble)
        0x00, 0x0C,             // length of what follows: 12
        192, 0, 2, 1,           // source address 192.0.2.1
        198, 51, 100, 7,        // destination address 198.51.100.7
        0xC3, 0x50,             // source port 50000
        0x01, 0xBB,             // destination port 443
    ];

    /// The same endpoints with an ALPN TLV and a CRC32C TLV (spec §2.2.3).
    #[rustfmt::skip] // one wire field per line
    const TCP4_HEADER_WITH_CRC: [u8; 40] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
        0x21,                   // version 2, command PROXY
        0x11,                   // AF_INET, STREAM
        0x00, 0x18,             // length of what follows: 12 + 5 + 7 = 24
        192, 0, 2, 1,           // source address 192.0.2.1
        198, 51, 100, 7,        // destination address 198.51.100.7
        0xC3, 0x50,             // source port 50000
        0x01, 0xBB,             // destination port 443
        0x01, 0x00, 0x02,       // TLV PP2_TYPE_ALPN, length 2
        b'h', b'2',             //   "h2"
        0x03, 0x00, 0x04,       // TLV PP2_TYPE_CRC32C, length 4
        0xF5, 0xC7, 0xEF, 0xC9, // CRC32C of the header with these four bytes zeroed
    ];

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
        let mut stream = TCP4_HEADER.to_vec();
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
        let mut stream = TCP4_HEADER_WITH_CRC.to_vec();
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
}
