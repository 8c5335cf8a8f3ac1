//! A hand-written HTTP/2 client at the frame level, for the abuse tests: real clients (hyper,
//! h2) refuse to send what these tests must send (resets in bulk, zero window updates,
//! CONTINUATION floods). Frames are built by hand (RFC 9113 4.1) and header blocks are HPACK
//! literals without indexing or Huffman coding (RFC 7541 6.2.2), which every decoder accepts.
//! Reading decodes frame headers only; payloads are returned raw.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Pki;
use crate::web::tls_to_proxy;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// Error codes (RFC 9113 7).
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// SETTINGS identifiers.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// One frame as read: header fields and the raw payload.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM, or of a GOAWAY (after its last stream id).
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A GOAWAY's debug data, as text (h2 names the limit hit there).
    pub fn debug_data(&self) -> String {
        match self.kind {
            GOAWAY => {
                String::from_utf8_lossy(self.payload.get(8..).unwrap_or_default()).into_owned()
            }
            _ => String::new(),
        }
    }

    /// The settings of a SETTINGS frame, in order.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }
}

/// A frame's bytes: the 9-byte header and `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24, "frame payload too long");
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first` (RFC 7541 5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// A header block of literal fields (pseudo-headers first, as given).
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00); // literal without indexing, new name
        hpack_str(&mut out, name.as_bytes());
        hpack_str(&mut out, value.as_bytes());
    }
    out
}

/// The header block of `GET https://{authority}{path}`.
pub fn get(authority: &str, path: &str) -> Vec<u8> {
    header_block(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", authority),
        (":path", path),
    ])
}

/// A RST_STREAM frame.
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// A WINDOW_UPDATE frame.
pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// A raw HTTP/2 connection to the proxy over TLS (ALPN h2).
pub struct RawH2 {
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl RawH2 {
    /// Connects, negotiates h2 and sends the preface and an empty SETTINGS frame.
    pub async fn connect(addr: std::net::SocketAddr, sni: &str, pki: &Pki) -> RawH2 {
        let tls = tls_to_proxy(addr, sni, pki, &[b"h2"]).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut raw = RawH2 {
            tls,
            buf: Vec::new(),
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        raw.send(&hello).await.unwrap();
        raw
    }

    /// Writes bytes (one or many frames) and flushes.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(bytes).await?;
        self.tls.flush().await
    }

    /// The next frame; `None` once the connection ends. Answers the server's SETTINGS with
    /// an ACK (the frame is still returned).
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let f = Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]])
                            & 0x7fff_ffff,
                        payload: head[9..].to_vec(),
                    };
                    if f.kind == SETTINGS && f.flags & ACK == 0 {
                        // The peer may already be gone; the frame is what matters.
                        let _ = self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                    }
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Every frame until the connection ends (bounded to 10 s): the tests' record of what the
    /// server said.
    pub async fn frames_until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        let read = async {
            while let Some(f) = self.next_frame().await {
                frames.push(f);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the server did not close the connection within 10 s");
        frames
    }

    /// Frames until (and including) the first GOAWAY (bounded to 10 s); panics if the
    /// connection ends without one.
    pub async fn frames_until_goaway(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        let read = async {
            while let Some(f) = self.next_frame().await {
                let done = f.kind == GOAWAY;
                frames.push(f);
                if done {
                    return true;
                }
            }
            false
        };
        let got = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("no GOAWAY within 10 s");
        assert!(got, "connection closed without GOAWAY: {frames:?}");
        frames
    }
}
