//! `mc-proxy-test-node CONFIG_BODY_FILE`: one mc-proxy node in a process of its own, for the
//! end-to-end tests that must kill a node outright (SIGKILL), which an in-process node cannot
//! show: its sockets close only because the kernel closes them.
//!
//! It runs the same fixture as the in-process tests ([`mc_proxy_tests::Proxy`]: the daemon's
//! listeners, admin API, metrics and, with `[cluster]`, its sync) on the config body in the
//! file, prints `READY <listener address> <metrics address>` on stdout once serving, and
//! serves until it is killed or its stdin closes (the test that started it is gone).

use std::io::Write;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: mc-proxy-test-node CONFIG_BODY_FILE");
        std::process::exit(2);
    };
    let body = match std::fs::read_to_string(&path) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("mc-proxy-test-node: {path}: {e}");
            std::process::exit(2);
        }
    };
    let proxy = mc_proxy_tests::Proxy::start(&body).await;
    let line = format!("READY {} {}\n", proxy.addr(), proxy.metrics);
    let mut out = std::io::stdout();
    if out
        .write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(1);
    }
    // Until the parent goes: stdin reaches EOF when it closes its end.
    let _ =
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await;
    drop(proxy);
}
