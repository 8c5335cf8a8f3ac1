//! The per-client table under 100 000 distinct client addresses: its memory is fixed, it
//! evicts, and every connection is accounted for. One test in its own binary, so the resident
//! size it reads belongs to it alone (the daemon runs in this process, on its worker threads).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use mc_proxy::protocols::proxyproto;
use mc_proxy_shared::ResetReason;
use mc_proxy_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Current resident KiB of this process.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

const SOURCES: u32 = 100_000;
const TABLE: u64 = 4096;
const TASKS: u32 = 32;

/// The `n`-th client: 2001:db8:abcd:N::M, so that 100 000 addresses fall into the /48's
/// 65 536 /64s (every one of them used), far more clients than the table has slots.
fn source(n: u32) -> SocketAddr {
    let group = (n % 65_536) as u16;
    let host = (n / 65_536 + 1) as u16;
    let ip = Ipv6Addr::new(0x2001, 0xdb8, 0xabcd, group, 0, 0, 0, host);
    SocketAddr::new(IpAddr::V6(ip), 40_000)
}

/// One connection from the `n`-th client through a trusted PROXY header: the header and a
/// few bytes that are not a ClientHello, then waits for the proxy's reset (a limit's, or
/// `not_tls` once admitted). Every connection ends with the proxy's RST: no TIME_WAIT piles up.
async fn one(proxy: SocketAddr, n: u32) {
    let local = IpAddr::from([127, 0, 0, 10 + (n % 50) as u8]);
    let mut tcp = tcp_connect_from(local, proxy).await.unwrap();
    let mut bytes = proxyproto::encode_v2(source(n), "[2001:db8::1]:443".parse().unwrap());
    bytes.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
    // The proxy may reset before it read everything: either way it answers with a reset.
    let _ = tcp.write_all(&bytes).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink))
        .await
        .expect("the proxy neither reset nor closed within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_ipv6_clients_fit_a_fixed_table_that_evicts() {
    let proxy = ProxyBuilder::new()
        .workers(2)
        .route("a.test", "127.0.0.1:9")
        .proxy_protocol_from(&["127.0.0.0/8"])
        .listener_setting("new_conns_per_client", 1)
        .listener_setting("max_conns_per_client", 4)
        .proxy_setting("client_table_size", TABLE)
        .start()
        .await;
    let addr = proxy.addr();
    // Warm up (the runtime, the table itself) before measuring.
    one(addr, SOURCES + 1).await;
    let before = rss_kib();
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|k| {
            tokio::spawn(async move {
                let mut n = k;
                while n < SOURCES {
                    one(addr, n).await;
                    n += TASKS;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let after = rss_kib();
    let listener = &proxy.state.listeners()[0];
    // Let the last connections' ends be counted.
    let accounted = || {
        [
            ResetReason::ClientRateLimit,
            ResetReason::ClientConnLimit,
            ResetReason::NotTls,
        ]
        .iter()
        .map(|r| listener.counters.resets(*r))
        .sum::<u64>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while accounted() < u64::from(SOURCES) + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = listener.client_table_stats().expect("a limit is on");
    eprintln!(
        "{SOURCES} clients in {:.1}s; table {stats:?}; resets {:?}; RSS {before} KiB -> {after} KiB",
        started.elapsed().as_secs_f64(),
        listener.counters.resets_by_reason().collect::<Vec<_>>()
    );
    assert_eq!(
        accounted(),
        u64::from(SOURCES) + 1,
        "every connection ended by a reset"
    );
    assert_eq!(stats.capacity, TABLE);
    assert!(stats.entries <= TABLE, "{stats:?}");
    // 65 536 clients, each in debt for a second after its connection, through 4096 slots.
    assert!(stats.evictions > 10_000, "{stats:?}");
    // An evicted client starts over with a full bucket (see ARCHITECTURE.md): the second
    // address of each /64 comes long after its first was evicted, so nearly all are admitted;
    // a few meet a stranger's tag (a shared budget).
    let admitted = listener.counters.resets(ResetReason::NotTls);
    assert!(
        admitted > u64::from(SOURCES) * 99 / 100,
        "admitted {admitted}"
    );
    // Fixed memory: the table is 32 KiB; what the connections' tasks used is given back.
    assert!(
        after.saturating_sub(before) < 48 * 1024,
        "RSS grew by {} KiB",
        after - before
    );
}
