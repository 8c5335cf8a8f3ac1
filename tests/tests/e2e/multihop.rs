//! The multi-hop deployment: an edge daemon (L4, sends PROXY v2) in front of an origin daemon
//! (PROXY listener with an L4 and an L7 route). The client connects from 127.0.0.2, so its
//! address is told apart from the edge's (127.0.0.1) at every step: the origin's firewall, its
//! connection events, and `X-Forwarded-For` at the L7 backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mc_proxy_shared::client::Event;
use mc_proxy_shared::{FirewallRule, FirewallRuleKind};
use mc_proxy_tests::web::*;
use mc_proxy_tests::*;
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

const CLIENT_IP: &str = "127.0.0.2";

/// A TCP connection to `addr` from 127.0.0.2.
async fn connect_from_client_ip(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{CLIENT_IP}:0").parse().unwrap())?;
    socket.connect(addr).await
}

async fn tls_from_client_ip(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_from_client_ip(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    TlsConnector::from(config).connect(name, tcp).await
}

#[tokio::test]
async fn the_real_client_address_crosses_the_edge_to_the_origin() {
    let pki = Pki::new();
    let l4_backend = TlsBackend::start(&pki, &["l4.test"]).await;
    let web_backend = H2Backend::start().await;
    let origin = ProxyBuilder::new()
        .proxy_protocol_from(&["127.0.0.1/32"])
        .route("l4.test", l4_backend.addr)
        .route("web.test", web_backend.addr)
        .l7(&pki)
        .start()
        .await;
    let edge = ProxyBuilder::new()
        .route("*.test", origin.addr())
        .send_proxy()
        .start()
        .await;
    let mut origin_admin = origin.admin().await;
    let mut events = Box::pin(origin_admin.watch_events().await.unwrap());
    origin.wait_for_watchers().await;

    // L4 through both hops; the origin's events name the real client.
    let mut c = tls_from_client_ip(edge.addr(), "l4.test", pki.client_config())
        .await
        .unwrap();
    let me = c.get_ref().0.local_addr().unwrap();
    assert_eq!(me.ip().to_string(), CLIENT_IP);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    c.write_all(b"hop").await.unwrap();
    c.shutdown().await.unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"hopbye from l4.test\n");
    let opened = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events.next().await.unwrap().unwrap().event;
            if let Event::ConnectionOpened { client, .. } = event {
                return client;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        opened,
        me.to_string(),
        "origin saw the edge, not the client"
    );

    // L7 through both hops: X-Forwarded-For and X-Real-IP carry the client.
    let tls = tls_from_client_ip(
        edge.addr(),
        "web.test",
        pki.client_config_with(|c| c.alpn_protocols = vec![b"h2".to_vec()]),
    )
    .await
    .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get("https://web.test/hello")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(answer_status(resp).await, 200);
    let seen = web_backend.seen(0);
    assert_eq!(seen.headers["x-forwarded-for"], CLIENT_IP);
    assert_eq!(seen.headers["x-real-ip"], CLIENT_IP);

    // A firewall rule at the origin for the client's address blocks it, though the origin's
    // TCP peer is the edge.
    origin_admin
        .add_firewall_rule(FirewallRule {
            kind: FirewallRuleKind::Ip,
            value: CLIENT_IP.into(),
        })
        .await
        .unwrap();
    let err = tls_from_client_ip(edge.addr(), "l4.test", pki.client_config())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        ),
        "{err}"
    );
    let blocked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events.next().await.unwrap().unwrap().event;
            if let Event::ConnectionBlocked { client, reason, .. } = event {
                return (client, reason);
            }
        }
    })
    .await
    .unwrap();
    assert!(
        blocked.0.starts_with(&format!("{CLIENT_IP}:")),
        "{blocked:?}"
    );
    assert_eq!(blocked.1, mc_proxy_shared::BlockedReason::Firewall);
    // The edge itself still gets through for other clients.
    let mut other = tls_connect(edge.addr(), "l4.test", pki.client_config())
        .await
        .unwrap();
    assert_eq!(
        send_and_finish(&mut other, b"").await.unwrap(),
        b"bye from l4.test\n"
    );
}

async fn answer_status(resp: http::Response<hyper::body::Incoming>) -> u16 {
    answer(resp).await.status.as_u16()
}
