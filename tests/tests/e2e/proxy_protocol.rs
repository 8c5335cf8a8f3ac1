//! PROXY protocol end to end: receiving v1/v2 on listeners, sending v2 on L4 routes, the
//! firewall deciding on the header's address, and trusted upstreams.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use mc_proxy::protocols::proxyproto::{self, Command, Version};
use mc_proxy_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A proxy (`proxy`, its other settings made) whose listener expects PROXY headers, routing
/// `a.test` to a backend that itself expects a PROXY header from mc-proxy.
async fn proxied_setup(pki: &Pki, proxy: ProxyBuilder) -> (TlsBackend, Proxy) {
    let backend = TlsBackend::start_proxied(pki, &["a.test"]).await;
    let proxy = proxy
        .proxy_protocol()
        .route("a.test", backend.addr)
        .send_proxy()
        .start()
        .await;
    (backend, proxy)
}

#[tokio::test]
async fn v1_and_v2_headers_set_the_client_address_end_to_end() {
    let pki = Pki::new();
    let (backend, proxy) = proxied_setup(&pki, ProxyBuilder::new()).await;
    let (_guard, logs) = capture_logs();

    let v2_client = sa("203.0.113.7:4242");
    let v6_client = sa("[2001:db8::7]:4243");
    let preambles = [
        (
            proxyproto::encode_v2(v2_client, sa("198.51.100.1:443")),
            v2_client,
        ),
        (
            b"PROXY TCP4 192.0.2.9 198.51.100.1 5151 443\r\n".to_vec(),
            sa("192.0.2.9:5151"),
        ),
        (
            proxyproto::encode_v2(v6_client, sa("[2001:db8::1]:443")),
            v6_client,
        ),
    ];
    for (i, (preamble, client)) in preambles.into_iter().enumerate() {
        let mut c = tls_connect_after(proxy.addr(), &preamble, "a.test", pki.client_config())
            .await
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        let answer = send_and_finish(&mut c, b"hi").await.unwrap();
        assert_eq!(answer, b"hibye from a.test\n");

        // The header mc-proxy sent carries the real client and the listener's address.
        let header = backend.header(i);
        assert_eq!(header.version, Version::V2);
        assert_eq!(header.command, Command::Proxy);
        assert_eq!(header.source, Some(client), "case {i}");
        let dst = header.destination.unwrap();
        assert_eq!(dst.port(), proxy.addr().port(), "case {i}");
        assert!(
            wait_for_log(&logs, &format!("client={client}")).await,
            "case {i}: client address not in the log:\n{}",
            log_text(&logs)
        );
    }
}

#[tokio::test]
async fn local_and_unknown_headers_keep_the_peer_address() {
    let pki = Pki::new();
    let (backend, proxy) = proxied_setup(&pki, ProxyBuilder::new()).await;
    let mut local = proxyproto::encode_v2(sa("192.0.2.1:1"), sa("192.0.2.2:2"));
    local[12] = 0x20; // version 2, command LOCAL
    for (i, preamble) in [local, b"PROXY UNKNOWN\r\n".to_vec()]
        .into_iter()
        .enumerate()
    {
        let mut c = tls_connect_after(proxy.addr(), &preamble, "a.test", pki.client_config())
            .await
            .unwrap();
        let me = client_addr(&c);
        send_and_finish(&mut c, b"").await.unwrap();
        assert_eq!(backend.header(i).source, Some(me), "case {i}");
    }
}

#[tokio::test]
async fn header_and_hello_in_one_segment_lose_no_bytes() {
    // The hello bytes that arrive with the header must reach the ClientHello reader.
    let pki = Pki::new();
    let (backend, proxy) = proxied_setup(&pki, ProxyBuilder::new()).await;
    let mut hello = Vec::new();
    {
        let mut conn =
            rustls::ClientConnection::new(pki.client_config(), "a.test".try_into().unwrap())
                .unwrap();
        conn.write_tls(&mut hello).unwrap();
    }
    let mut segment = proxyproto::encode_v2(sa("192.0.2.44:1000"), sa("192.0.2.1:443"));
    segment.extend_from_slice(&hello);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(&segment).await.unwrap();
    // The backend answers with a ServerHello only if it got our hello intact.
    let mut server_hello = [0u8; 5];
    s.read_exact(&mut server_hello).await.unwrap();
    assert_eq!(
        server_hello[0], 0x16,
        "backend did not answer with a handshake"
    );
    assert_eq!(backend.header(0).source, Some(sa("192.0.2.44:1000")));
    let raw = backend.received(0);
    let header_len = 16 + 12;
    assert_eq!(&raw[header_len..header_len + hello.len()], &hello[..]);
}

#[tokio::test]
async fn garbage_missing_or_slow_headers_are_reset() {
    let pki = Pki::new();
    let (backend, proxy) = proxied_setup(&pki, ProxyBuilder::new()).await;

    // Garbage instead of a header.
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"HELLO THERE\r\n").await.unwrap();
    assert_reset(&mut s).await;

    // A ClientHello without the header.
    let err = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");

    // Malformed v1 (leading zero in the port) and v2 with an unknown command.
    let mut bad_v2 = proxyproto::encode_v2(sa("192.0.2.1:1"), sa("192.0.2.2:2"));
    bad_v2[12] = 0x2F;
    for bad in [b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n".to_vec(), bad_v2] {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(&bad).await.unwrap();
        assert_reset(&mut s).await;
    }

    // Half a header, then silence: reset after the 5 s PROXY deadline, not before.
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let connected = std::time::Instant::now();
    s.write_all(b"PROXY TCP4 192.0").await.unwrap();
    assert_reset(&mut s).await;
    let waited = connected.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(4900),
        "reset after {waited:?}, before the 5 s deadline"
    );

    // The daemon is still serving good connections.
    let header = proxyproto::encode_v2(sa("192.0.2.5:5"), sa("192.0.2.1:443"));
    let mut c = tls_connect_after(proxy.addr(), &header, "a.test", pki.client_config())
        .await
        .unwrap();
    assert_eq!(
        send_and_finish(&mut c, b"").await.unwrap(),
        b"bye from a.test\n"
    );
    assert_eq!(backend.accepted(), 1);
    let counters = &proxy.state.listeners()[0].counters;
    assert_eq!(counters.resets.load(Ordering::Relaxed), 5);
    let by_reason: Vec<_> = counters
        .resets_by_reason()
        .map(|(reason, n)| (reason.as_str(), n))
        .collect();
    assert_eq!(
        by_reason,
        [("proxy_header_timeout", 1), ("bad_proxy_header", 4)]
    );
}

#[tokio::test]
async fn firewall_decides_on_the_header_address_not_the_tcp_peer() {
    let pki = Pki::new();
    // 127.0.0.1 (the TCP peer of every test connection) is blocked too: only the header's
    // address may count.
    let (backend, proxy) = proxied_setup(
        &pki,
        ProxyBuilder::new()
            .block_ip("203.0.113.66")
            .block_ip("127.0.0.1"),
    )
    .await;

    let blocked = proxyproto::encode_v2(sa("203.0.113.66:1"), sa("192.0.2.1:443"));
    let err = tls_connect_after(proxy.addr(), &blocked, "a.test", pki.client_config())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");

    let allowed = proxyproto::encode_v2(sa("203.0.113.67:1"), sa("192.0.2.1:443"));
    let mut c = tls_connect_after(proxy.addr(), &allowed, "a.test", pki.client_config())
        .await
        .unwrap();
    assert_eq!(
        send_and_finish(&mut c, b"").await.unwrap(),
        b"bye from a.test\n"
    );
    assert_eq!(backend.accepted(), 1);
    let counters = &proxy.state.listeners()[0].counters;
    assert_eq!(counters.blocked.load(Ordering::Relaxed), 1);
    let by_reason: Vec<_> = counters
        .resets_by_reason()
        .map(|(reason, n)| (reason.as_str(), n))
        .collect();
    assert_eq!(by_reason, [("blocked", 1)]);
}

#[tokio::test]
async fn proxy_protocol_from_rejects_headers_from_untrusted_peers() {
    let pki = Pki::new();
    let header = proxyproto::encode_v2(sa("192.0.2.8:8"), sa("192.0.2.1:443"));

    let (backend, proxy) = proxied_setup(
        &pki,
        ProxyBuilder::new().proxy_protocol_from(&["10.0.0.0/8"]),
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(&header).await.unwrap();
    assert_reset(&mut s).await;
    assert_eq!(backend.accepted(), 0);
    let by_reason: Vec<_> = proxy.state.listeners()[0]
        .counters
        .resets_by_reason()
        .map(|(reason, n)| (reason.as_str(), n))
        .collect();
    assert_eq!(by_reason, [("untrusted_proxy", 1)]);

    let (backend, proxy) = proxied_setup(
        &pki,
        ProxyBuilder::new().proxy_protocol_from(&["10.0.0.0/8", "127.0.0.0/8"]),
    )
    .await;
    let mut c = tls_connect_after(proxy.addr(), &header, "a.test", pki.client_config())
        .await
        .unwrap();
    assert_eq!(
        send_and_finish(&mut c, b"").await.unwrap(),
        b"bye from a.test\n"
    );
    assert_eq!(backend.header(0).source, Some(sa("192.0.2.8:8")));
}

#[tokio::test]
async fn route_without_send_proxy_protocol_sends_the_hello_first() {
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new()
        .route("a.test", backend.addr)
        .start()
        .await;
    let mut c = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    send_and_finish(&mut c, b"").await.unwrap();
    let raw = backend.received(0);
    assert_eq!(raw[0], 0x16, "first byte is not a TLS handshake record");
    let mut first = [0u8; 16];
    first.copy_from_slice(&raw[..16]);
    assert!(matches!(
        proxyproto::parse(&first),
        Err(proxyproto::ParseError::NotProxy)
    ));
}

#[tokio::test]
async fn two_hops_carry_the_original_client_address() {
    // client -> edge (plain listener, L4 route sending PROXY) -> origin (PROXY listener, L4
    // route sending PROXY) -> backend. The backend must see the client's own address.
    let pki = Pki::new();
    let (backend, origin) = proxied_setup(
        &pki,
        ProxyBuilder::new().proxy_protocol_from(&["127.0.0.1"]),
    )
    .await;
    let edge = ProxyBuilder::new()
        .route("*.test", origin.addr())
        .send_proxy()
        .start()
        .await;
    let mut c = tls_connect(edge.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    let me = client_addr(&c);
    c.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    c.read_exact(&mut one).await.unwrap();
    assert_eq!(
        send_and_finish(&mut c, b"").await.unwrap(),
        b"bye from a.test\n"
    );
    assert_eq!(backend.header(0).source, Some(me));
    assert_eq!(
        backend.header(0).destination.unwrap().port(),
        origin.addr().port()
    );
}

/// On a wildcard listener each connection has its own local address: the header sent to the
/// backend names the address the client reached (here 127.0.0.1), never `0.0.0.0`. (A
/// listener bound to one address takes its connections' local address from its own.)
#[tokio::test]
async fn a_wildcard_listener_sends_the_address_the_client_reached() {
    let pki = Pki::new();
    let backend = TlsBackend::start_proxied(&pki, &["a.test"]).await;
    let proxy = Proxy::start(&format!(
        "[[listeners]]\naddr = \"0.0.0.0:0\"\n\
         [[listeners.routes]]\nhostname = \"a.test\"\nbackend = \"{}\"\nsend_proxy_protocol = true\n",
        backend.addr
    ))
    .await;
    assert!(proxy.addr().ip().is_unspecified(), "{}", proxy.addr());
    let reached = sa(&format!("127.0.0.1:{}", proxy.addr().port()));
    let mut c = tls_connect(reached, "a.test", pki.client_config())
        .await
        .unwrap();
    let me = client_addr(&c);
    assert_eq!(
        send_and_finish(&mut c, b"hi").await.unwrap(),
        b"hibye from a.test\n"
    );
    let header = backend.header(0);
    assert_eq!(header.source, Some(me));
    assert_eq!(header.destination, Some(reached));
}
