//! Real ClientHellos captured from a rustls client, for the parser's tests here and in the
//! daemon (feature `test-support`).
//!
//! No I/O: the rustls client writes into a buffer. Fixtures may panic (they are test code).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::client_hello::ClientHello;

/// One kind of real ClientHello.
#[derive(Debug, Clone)]
pub struct Case {
    /// What it exercises.
    pub name: &'static str,
    /// Offer TLS 1.2 only.
    pub tls12_only: bool,
    /// ALPN protocols offered.
    pub alpn: Vec<Vec<u8>>,
    /// The name the client asks for (an IP address sends no SNI).
    pub server: &'static str,
    /// What the parser must report as the server name.
    pub want_server_name: Option<&'static str>,
}

/// Plain, TLS 1.2 only, with ALPN, without SNI, and one larger than 2 KiB.
pub fn cases() -> Vec<Case> {
    // Long ALPN names stand in for a post-quantum key share: they push
    // the hello past 2 KiB without needing a PQ-capable provider.
    let long_alpn: Vec<Vec<u8>> = (0..12u8).map(|i| vec![b'a' + i; 200]).collect();
    vec![
        Case {
            name: "plain",
            tls12_only: false,
            alpn: vec![],
            server: "Example.COM",
            want_server_name: Some("example.com"),
        },
        Case {
            name: "tls12 only",
            tls12_only: true,
            alpn: vec![],
            server: "Example.COM",
            want_server_name: Some("example.com"),
        },
        Case {
            name: "alpn h2 + http/1.1",
            tls12_only: false,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            server: "Example.COM",
            want_server_name: Some("example.com"),
        },
        Case {
            name: "no sni (ip address)",
            tls12_only: false,
            alpn: vec![],
            server: "192.0.2.1",
            want_server_name: None,
        },
        Case {
            name: "large",
            tls12_only: false,
            alpn: long_alpn,
            server: "Example.COM",
            want_server_name: Some("example.com"),
        },
    ]
}

/// A rustls client config (AWS-LC, no roots: the handshake never gets past the hello).
pub fn config(tls12_only: bool) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider);
    let builder = if tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    builder
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

/// The bytes a rustls client with `cfg` sends first to `server`, in TLS records of at most
/// `max_fragment` bytes.
pub fn capture_with(mut cfg: ClientConfig, server: &str, max_fragment: Option<usize>) -> Vec<u8> {
    cfg.max_fragment_size = max_fragment;
    let server: ServerName<'static> = server.to_owned().try_into().unwrap();
    let mut conn = ClientConnection::new(Arc::new(cfg), server).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// The ClientHello of `case`, as it goes on the wire.
pub fn capture(case: &Case, max_fragment: Option<usize>) -> Vec<u8> {
    let mut cfg = config(case.tls12_only);
    cfg.alpn_protocols = case.alpn.clone();
    capture_with(cfg, case.server, max_fragment)
}

/// What parsing the hello of `case` must give, for a hello `len` bytes long.
pub fn expected(case: &Case, len: usize) -> ClientHello {
    ClientHello {
        server_name: case.want_server_name.map(str::to_owned),
        alpn: case.alpn.clone(),
        len,
    }
}
