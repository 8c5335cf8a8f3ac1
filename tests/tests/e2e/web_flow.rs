//! A browser-like flow through an L7 route: a page, its stylesheet and script, then a
//! server-sent event stream, over HTTP/2 and HTTP/1.1 clients alike.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mc_proxy_tests::web::*;
use mc_proxy_tests::*;

/// Sends GET requests over either HTTP version.
enum Client {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Client {
    async fn connect(proxy: &Proxy, pki: &Pki, h2: bool) -> Client {
        let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        let tls = tls_to_proxy(proxy.addr(), "web.test", pki, &[alpn])
            .await
            .unwrap();
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Client::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Client::H1(send)
        }
    }

    async fn get(&mut self, path: &str) -> http::Response<Incoming> {
        let fut = match self {
            Client::H1(send) => {
                let req = Request::get(path)
                    .header("host", "web.test")
                    .body(Empty::new())
                    .unwrap();
                send.ready().await.unwrap();
                futures_util::future::Either::Left(send.send_request(req))
            }
            Client::H2(send) => {
                let req = Request::get(format!("https://web.test{path}"))
                    .body(Empty::new())
                    .unwrap();
                futures_util::future::Either::Right(send.send_request(req))
            }
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("no response")
            .unwrap()
    }
}

#[tokio::test]
async fn page_assets_and_event_stream_over_h2_and_http11() {
    let pki = Pki::new();
    let backend = H2Backend::start().await;
    let proxy = ProxyBuilder::new()
        .route("web.test", backend.addr)
        .l7(&pki)
        .start()
        .await;

    for h2 in [true, false] {
        let mut client = Client::connect(&proxy, &pki, h2).await;
        // The page and its assets, one connection, as a browser would.
        for (path, content_type, text) in STATIC_FILES {
            let a = answer(client.get(path).await).await;
            assert_eq!(a.status, 200, "{path} over h2={h2}");
            assert_eq!(a.header("content-type"), *content_type, "{path}");
            assert_eq!(a.body, *text, "{path}");
        }

        // The event stream: the first event arrives while the backend holds the stream open.
        let resp = client.get("/sse").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("first event held back by the proxy")
            .unwrap()
            .unwrap();
        assert_eq!(first.data_ref().unwrap(), &b"data: one\n\n"[..], "h2={h2}");
        backend.release.notify_one();
        let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(&rest[..], b"data: two\n\n", "h2={h2}");
    }
}
