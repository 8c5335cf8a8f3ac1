//! Running out of file descriptors must not end a listener: accept errors (EMFILE) back off and
//! retry, and the listener serves again once descriptors are free. Its own test binary, because
//! it lowers the process's descriptor limit.

use std::io::ErrorKind;
use std::time::Duration;

use mc_proxy_tests::*;
use rustix::process::{Resource, getrlimit, setrlimit};
use tokio::net::TcpStream;

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test]
async fn a_full_descriptor_table_pauses_accepting_without_ending_the_listener() {
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new()
        .route("a.test", backend.addr)
        .start()
        .await;
    let (_guard, logs) = capture_logs();

    // Leave room for a few dozen descriptors, then take them all with idle clients: the
    // kernel still completes their handshakes, but the proxy can no longer accept them.
    let saved = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(open_fds() + 40),
            maximum: saved.maximum,
        },
    )
    .unwrap();
    let mut clients = Vec::new();
    let exhausted = loop {
        match TcpStream::connect(proxy.addr()).await {
            Ok(s) => clients.push(s),
            Err(e) if e.raw_os_error() == Some(24) => break true, // EMFILE
            Err(e) => panic!("unexpected connect error: {e}"),
        }
        if clients.len() > 200 {
            break false;
        }
        tokio::task::yield_now().await;
    };
    assert!(exhausted, "never ran out of descriptors");
    assert!(
        wait_for_log(&logs, "accept failed, retrying").await,
        "the listener never hit EMFILE:\n{}",
        log_text(&logs)
    );

    // Free everything: the listener picks up again by itself.
    drop(clients);
    setrlimit(Resource::Nofile, saved).unwrap();
    let mut ok = None;
    for _ in 0..100 {
        match tls_connect(proxy.addr(), "a.test", pki.client_config()).await {
            Ok(mut c) => {
                ok = Some(send_and_finish(&mut c, b"back").await.unwrap());
                break;
            }
            // Connections queued while the table was full are being drained; try again.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok.as_deref(), Some(&b"backbye from a.test\n"[..]));
}
