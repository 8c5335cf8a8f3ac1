//! Large downloads and uploads stream through an L7 route without the process growing by their
//! size. One test in its own binary, so the peak resident size it reads belongs to it alone:
//! client, proxy and backend all run here, and none of them may hold a whole body.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mc_proxy_tests::web::*;
use mc_proxy_tests::*;

const SIZE: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// (current resident KiB, peak resident KiB) of this process.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

type Body = BoxBody<Bytes, Infallible>;

fn empty() -> Body {
    Empty::new().boxed()
}

/// A body of `size` bytes made chunk by chunk as the connection takes them.
fn generated(size: u64) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![0xa5; CHUNK]);
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            if tx.send(Ok(Frame::data(chunk.slice(..n)))).await.is_err() {
                return;
            }
            left -= n as u64;
        }
    });
    BodyExt::boxed(StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tens_of_mib_each_way_stream_without_growing_memory_by_their_size() {
    let pki = Pki::new();
    let backend = H2Backend::start_with(H2Options {
        unrecorded: true,
        ..H2Options::default()
    })
    .await;
    let proxy = ProxyBuilder::new()
        .route("web.test", backend.addr)
        .l7(&pki)
        .start()
        .await;

    let tls = tls_to_proxy(proxy.addr(), "web.test", &pki, &[b"h2"])
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Body>(
        TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // Warm up: connections, TLS sessions and the allocator's first arenas.
    let warm = send
        .send_request(
            Request::get("https://web.test/download/1048576")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    warm.into_body().collect().await.unwrap();
    let (before, _) = rss_kib();

    let download = tokio::time::timeout(Duration::from_secs(120), async {
        let resp = send
            .send_request(
                Request::get(format!("https://web.test/download/{SIZE}"))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            total += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
        }
        total
    })
    .await
    .expect("download stalled");
    assert_eq!(download, SIZE);

    let upload = tokio::time::timeout(Duration::from_secs(120), async {
        let resp = send
            .send_request(
                Request::post("https://web.test/sink")
                    .body(generated(SIZE))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).parse::<u64>().unwrap()
    })
    .await
    .expect("upload stalled");
    assert_eq!(upload, SIZE, "backend counted a different upload size");

    let (_, peak) = rss_kib();
    let growth_mib = peak.saturating_sub(before) / 1024;
    // 128 MiB crossed the process (twice: client to proxy, proxy to backend, each way); a
    // proxy, client or backend that buffered a body would add at least 64 MiB.
    assert!(
        growth_mib < 32,
        "peak resident size grew by {growth_mib} MiB while moving 2 x {} MiB",
        SIZE >> 20
    );
    let stats = proxy.state.listeners()[0]
        .lookup("web.test")
        .unwrap()
        .stats
        .snapshot();
    assert!(
        stats.bytes_up > SIZE && stats.bytes_down > SIZE,
        "{stats:?}"
    );
}
