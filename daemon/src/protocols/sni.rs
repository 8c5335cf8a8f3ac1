//! Reading a TLS ClientHello off a connection so the router can pick a backend without
//! terminating TLS.
//!
//! The parser is pure and lives in the `wire` crate ([`mc_proxy_wire::client_hello`]); its
//! types are re-exported here. This module only owns the async reader: it fills a buffer
//! from the socket, feeds the resumable [`Scanner`], and stops at the first verdict, at EOF
//! or at the timeout.
//!
//! I/O: reads from the client stream; nothing is written. Invariants: every byte read stays
//! in the caller's buffer (the backend must see the original hello), and the buffer never
//! grows much past `mc_proxy_wire`'s `MAX_HELLO_LEN` because the scanner refuses an oversized hello as soon
//! as it is known.

#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo
)]

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

pub use mc_proxy_wire::client_hello::{ClientHello, ParseError, Parsed, Scanner};

/// Read granularity for [`read_client_hello`]: one read usually gets a whole
/// hello, and the buffer never outgrows the cap by more than this.
const READ_CHUNK: usize = 4096;

/// Why [`read_client_hello`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Reading from the peer failed.
    #[error("reading ClientHello: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream before a full hello arrived.
    #[error("peer closed before sending a full ClientHello")]
    Eof,
    /// The hello did not complete within the allowed time.
    #[error("timed out waiting for ClientHello")]
    Timeout,
    /// The bytes received are not an acceptable ClientHello.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Reads from `r` until a whole ClientHello has arrived or `timeout` passes.
/// `buf` may already hold bytes (e.g. left over after a PROXY protocol
/// header); every byte read is appended to `buf` and stays there, so the
/// caller can forward the exact bytes to a backend or replay them into a TLS
/// acceptor.
///
/// `buf` may end up holding bytes past [`ClientHello::len`] (whatever the
/// client sent after the hello in the same reads); they belong to the stream
/// too. On error `buf` still holds everything read.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<ClientHello, ReadError> {
    tokio::time::timeout(timeout, read_until_hello(r, buf))
        .await
        .unwrap_or(Err(ReadError::Timeout))
}

async fn read_until_hello<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<ClientHello, ReadError> {
    let mut scanner = Scanner::new();
    loop {
        if let Parsed::Complete(hello) = scanner.feed(buf)? {
            return Ok(hello);
        }
        // The scanner answers TooLarge once the buffer passes the cap, so
        // this loop never grows `buf` much beyond MAX_HELLO_LEN.
        buf.reserve(READ_CHUNK);
        if r.read_buf(buf).await? == 0 {
            return Err(ReadError::Eof);
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
    use super::*;
    use mc_proxy_wire::client_hello::MAX_HELLO_LEN;

    use tokio::io::AsyncWriteExt;

    use mc_proxy_wire::test_support::{capture, cases, expected};

    #[tokio::test]
    async fn truncated_hello_reports_eof() {
        for case in cases() {
            let hello = capture(&case, Some(512));
            let step = if hello.len() > 1024 { 29 } else { 1 };
            for cut in (0..hello.len()).filter(|c| c % step == 0 || *c == hello.len() - 1) {
                let mut reader = &hello[..cut];
                let mut buf = Vec::new();
                let res = read_client_hello(&mut reader, &mut buf, Duration::from_secs(5)).await;
                assert!(
                    matches!(res, Err(ReadError::Eof)),
                    "{} cut {cut}: {res:?}",
                    case.name
                );
                assert_eq!(buf, &hello[..cut]);
            }
        }
    }

    // ---- The async reader -------------------------------------------------

    #[tokio::test]
    async fn read_client_hello_continues_from_prefilled_bytes() {
        let hello = capture(&cases()[2], None);
        let mut buf = hello[..10].to_vec();
        let mut reader = &hello[10..];
        let got = read_client_hello(&mut reader, &mut buf, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, expected(&cases()[2], hello.len()));
        assert_eq!(buf, hello);
    }

    #[tokio::test]
    async fn read_client_hello_with_whole_hello_prefilled_does_not_read() {
        let hello = capture(&cases()[0], None);
        let mut buf = hello.clone();
        let mut reader = tokio::io::empty();
        let got = read_client_hello(&mut reader, &mut buf, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got.len, hello.len());
    }

    #[tokio::test]
    async fn read_client_hello_over_a_duplex_fed_in_small_chunks() {
        for case in cases() {
            let hello = capture(&case, Some(512));
            let (mut client, mut server) = tokio::io::duplex(64);
            let sent = {
                let mut s = hello.clone();
                s.extend_from_slice(&[23, 3, 3, 0, 2, 9, 9]);
                s
            };
            let to_send = sent.clone();
            let writer = tokio::spawn(async move {
                for chunk in to_send.chunks(7) {
                    client.write_all(chunk).await.unwrap();
                    tokio::task::yield_now().await;
                }
                client
            });
            let mut buf = Vec::new();
            let got = read_client_hello(&mut server, &mut buf, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(got, expected(&case, hello.len()), "{}", case.name);
            assert!(sent.starts_with(&buf));
            assert!(buf.len() >= hello.len());
            drop(writer.await.unwrap());
        }
    }

    #[tokio::test]
    async fn read_client_hello_reports_parse_errors_without_waiting() {
        let mut reader = &b"GET / HTTP/1.1\r\n\r\n"[..];
        let mut buf = Vec::new();
        let res = read_client_hello(&mut reader, &mut buf, Duration::from_secs(5)).await;
        assert!(matches!(res, Err(ReadError::Parse(ParseError::NotTls))));
        assert!(!buf.is_empty());
    }

    #[tokio::test]
    async fn read_client_hello_stops_near_the_cap() {
        // An endless stream of tiny handshake records that never completes.
        let mut hs = vec![22, 3, 1, 0, 4, 1, 0, 0xf0, 0x00];
        while hs.len() < 4 * MAX_HELLO_LEN {
            hs.extend_from_slice(&[22, 3, 1, 0, 1, 0]);
        }
        let mut reader = &hs[..];
        let mut buf = Vec::new();
        let res = read_client_hello(&mut reader, &mut buf, Duration::from_secs(5)).await;
        assert!(
            matches!(res, Err(ReadError::Parse(ParseError::TooLarge(_)))),
            "{res:?}"
        );
        assert!(buf.len() <= MAX_HELLO_LEN + READ_CHUNK * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn read_client_hello_times_out_on_a_stalled_peer() {
        let hello = capture(&cases()[0], None);
        let half = hello.len() / 2;
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&hello[..half]).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut buf = Vec::new();
        let res = read_client_hello(&mut server, &mut buf, Duration::from_secs(10)).await;
        assert!(matches!(res, Err(ReadError::Timeout)), "{res:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(buf, &hello[..half]);
        drop(client); // held open until here so the reader saw a live, silent peer
    }
}
