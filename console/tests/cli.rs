//! `mcproxyctl` as built, against a live daemon: every subcommand's table, JSON and exit code.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mc_proxy_tests::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs mcproxyctl off the runtime thread (the daemon under test runs on it).
async fn ctl(proxy: &Proxy, args: &[&str]) -> Output {
    let socket = proxy.socket.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_mcproxyctl"))
            .arg("--socket")
            .arg(&socket)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        stderr(o)
    );
}

const L: &str = "127.0.0.1:0";

#[tokio::test]
async fn routes_and_status_as_tables_and_json() {
    let pki = Pki::new();
    let proxy = Proxy::start(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\nproxy_protocol = true\n\
         [[listeners.routes]]\nhostname = \"app.test\"\nbackend = \"127.0.0.1:9443\"",
    )
    .await;

    let o = ctl(&proxy, &["status"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("LISTENER") && out.contains(L), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with(L) && l.contains(" yes ")),
        "{out}"
    );

    let o = ctl(&proxy, &["status", "--json"]).await;
    assert_ok(&o);
    let status: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(status["listeners"][0]["addr"], L);
    assert_eq!(status["listeners"][0]["proxy_protocol"], true);
    assert_eq!(status["listeners"][0]["route_count"], 1);

    let o = ctl(
        &proxy,
        &[
            "routes",
            "add",
            "--listener",
            L,
            "--hostname",
            "New.Test",
            "--backend",
            "127.0.0.1:9444",
            "--send-proxy-protocol",
        ],
    )
    .await;
    assert_ok(&o);
    assert!(
        stdout(&o).contains("added route new.test"),
        "{}",
        stdout(&o)
    );

    let (cert, key) = pki.write_pem(proxy.dir.path(), &["web.test"]);
    let o = ctl(
        &proxy,
        &[
            "routes",
            "add",
            "--listener",
            L,
            "--hostname",
            "web.test",
            "--backend",
            "127.0.0.1:9080",
            "--mode",
            "l7",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--backend-tls",
            "--json",
        ],
    )
    .await;
    assert_ok(&o);
    let added: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(added["mode"], "l7");
    assert_eq!(added["backend_tls"], true);

    let o = ctl(&proxy, &["routes", "list"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let row = out.lines().find(|l| l.contains("new.test")).expect(&out);
    assert!(
        row.contains("l4") && row.contains("127.0.0.1:9444") && row.contains("send-proxy"),
        "{row}"
    );
    let row = out.lines().find(|l| l.contains("web.test")).expect(&out);
    assert!(
        row.contains("l7") && row.contains("backend-tls") && row.contains("0 req"),
        "{row}"
    );

    let o = ctl(
        &proxy,
        &[
            "routes",
            "update",
            "--listener",
            L,
            "--hostname",
            "new.test",
            "--backend",
            "127.0.0.1:9555",
            "--backend",
            "127.0.0.1:9556,weight=3",
            "--balance",
            "least_conn",
            "--send-proxy-protocol=false",
        ],
    )
    .await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        format!(
            "updated route new.test on listener {L}: l4 -> 127.0.0.1:9555, 127.0.0.1:9556 \
             least_conn\n"
        )
    );
    // One member drained: said, stored, and shown by `routes show` with its live state.
    let o = ctl(
        &proxy,
        &["routes", "backend", "drain", "new.test", "127.0.0.1:9556"],
    )
    .await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        format!("backend 127.0.0.1:9556 of route new.test on listener {L}: draining\n")
    );
    let o = ctl(&proxy, &["routes", "show", "New.Test"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.starts_with("BACKEND"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0][..8],
        [
            "BACKEND",
            "WEIGHT",
            "ADMIN",
            "STATE",
            "ACTIVE",
            "TOTAL",
            "FAILURES",
            "EJECTIONS"
        ],
        "{out}"
    );
    assert_eq!(
        rows[1][..4],
        // Never contacted, no check: nothing is known of it yet.
        ["127.0.0.1:9555", "1", "enabled", "unknown"],
        "{out}"
    );
    assert_eq!(
        rows[2][..4],
        ["127.0.0.1:9556", "3", "draining", "draining"],
        "{out}"
    );
    // Issue 28: `routes list` shows each member's weight and live state, before STATE (the
    // rest of the line: a reason holds spaces), the columns before it in their old order.
    let o = ctl(&proxy, &["routes", "list", "--listener", L]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "LISTENER", "HOSTNAME", "MODE", "BACKENDS", "PROTO", "FLAGS", "CONNS", "IN", "OUT",
            "L7", "MEMBERS", "STATE"
        ],
        "{out}"
    );
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.contains("new.test"))
        .expect(&out)
        .split_whitespace()
        .collect();
    assert_eq!(row[3], "127.0.0.1:9555,127.0.0.1:9556", "{out}");
    assert_eq!(
        row[10], "127.0.0.1:9555/w1/unknown,127.0.0.1:9556/w3/draining",
        "{out}"
    );
    assert_eq!(row[11], "served", "{out}");
    let o = ctl(
        &proxy,
        &["routes", "backend", "enable", "new.test", "127.0.0.1:9999"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let o = ctl(&proxy, &["routes", "list", "--listener", L, "--json"]).await;
    assert_ok(&o);
    let routes: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let new = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"]["hostname"] == "new.test")
        .unwrap();
    assert_eq!(new["route"]["backends"][0]["address"], "127.0.0.1:9555");
    assert_eq!(new["route"]["backends"][1]["weight"], 3);
    assert_eq!(new["route"]["backends"][1]["state"], "draining");
    assert_eq!(new["route"]["balance"], "least_conn");
    assert_eq!(new["stats"]["members"][1]["admin"], "draining");
    assert_eq!(new["stats"]["members"][1]["state"], "draining");
    assert_eq!(new["stats"]["members"][0]["state"], "unknown");
    assert_eq!(new["stats"]["members"][0]["weight"], 1);
    assert_eq!(new["route"]["send_proxy_protocol"], false);
    assert_eq!(new["stats"]["total_connections"], 0);

    let o = ctl(
        &proxy,
        &[
            "routes",
            "remove",
            "--listener",
            L,
            "--hostname",
            "new.test",
        ],
    )
    .await;
    assert_ok(&o);
    let o = ctl(&proxy, &["routes", "list", "--json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&o))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn backend_protocol_is_added_updated_listed_and_checked() {
    let pki = Pki::new();
    let proxy = Proxy::start(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nhostname = \"app.test\"\nbackend = \"127.0.0.1:9443\"",
    )
    .await;
    let (cert, key) = pki.write_pem(proxy.dir.path(), &["web.test"]);
    let o = ctl(
        &proxy,
        &[
            "routes",
            "add",
            "--listener",
            L,
            "--hostname",
            "web.test",
            "--backend",
            "127.0.0.1:9080",
            "--mode",
            "l7",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--backend-protocol",
            "http1",
        ],
    )
    .await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        format!("added route web.test on listener {L}: l7 -> 127.0.0.1:9080 (http1)\n")
    );

    // The table has a PROTO column after BACKEND: the L7 route's protocol, "-" on L4.
    let o = ctl(&proxy, &["routes", "list"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[3..6], ["BACKENDS", "PROTO", "FLAGS"], "{out}");
    let o = ctl(&proxy, &["routes", "list", "--no-headers"]).await;
    assert_ok(&o);
    let rows: Vec<Vec<String>> = stdout(&o)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(rows[0][1..5], ["app.test", "l4", "127.0.0.1:9443", "-"]);
    assert_eq!(rows[1][1..5], ["web.test", "l7", "127.0.0.1:9080", "http1"]);

    // auto without TLS to the backend: refused by the daemon, one line, nothing changed.
    let update = |extra: &[&'static str]| {
        let mut args = vec![
            "routes",
            "update",
            "--listener",
            L,
            "--hostname",
            "web.test",
        ];
        args.extend_from_slice(extra);
        args
    };
    let o = ctl(&proxy, &update(&["--backend-protocol", "auto"])).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("route \"web.test\": backend_protocol auto needs backend_tls"),
        "{err}"
    );
    let o = ctl(&proxy, &["routes", "list", "--no-headers"]).await;
    assert_eq!(
        stdout(&o).lines().nth(1).unwrap().split_whitespace().nth(4),
        Some("http1")
    );
    let o = ctl(
        &proxy,
        &update(&["--backend-protocol", "auto", "--backend-tls", "--json"]),
    )
    .await;
    assert_ok(&o);
    let updated: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(updated["backend_protocol"], "auto");
    assert_eq!(updated["backend_tls"], true);
    let o = ctl(&proxy, &["routes", "list", "--json"]).await;
    assert_ok(&o);
    let listed: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let protocols: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["route"]["hostname"].as_str().unwrap(),
                e["route"]["backend_protocol"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(protocols, [("app.test", "h2"), ("web.test", "auto")]);

    // A value clap does not know is a usage error that lists the three, before any call.
    let o = ctl(&proxy, &update(&["--backend-protocol", "h3"])).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("[possible values: h2, http1, auto]"),
        "{}",
        stderr(&o)
    );
    let o = ctl(
        &proxy,
        &[
            "routes",
            "update",
            "--listener",
            L,
            "--hostname",
            "web.test",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--backend-protocol"), "{}", stderr(&o));
    for sub in ["add", "update"] {
        let o = ctl(&proxy, &["routes", sub, "--help"]).await;
        assert_ok(&o);
        let help = stdout(&o);
        assert!(
            help.contains("--backend-protocol <h2|http1|auto>")
                && help.contains("[possible values: h2, http1, auto]"),
            "{sub}: {help}"
        );
    }
}

#[tokio::test]
async fn access_log_is_added_updated_shown_and_checked() {
    let pki = Pki::new();
    let proxy = Proxy::start("[[listeners]]\naddr = \"127.0.0.1:0\"").await;
    let (cert, key) = pki.write_pem(proxy.dir.path(), &["web.test"]);
    let o = ctl(
        &proxy,
        &[
            "routes",
            "add",
            "--listener",
            L,
            "--hostname",
            "web.test",
            "--backend",
            "127.0.0.1:9080",
            "--mode",
            "l7",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--access-log",
            "on",
        ],
    )
    .await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        format!("added route web.test on listener {L}: l7 -> 127.0.0.1:9080 (h2) [access-log]\n")
    );
    let o = ctl(&proxy, &["routes", "show", "web.test"]).await;
    assert_ok(&o);
    let shown = stdout(&o);
    assert!(
        shown
            .lines()
            .any(|l| l == "access    on (a log line per request)"),
        "{shown}"
    );

    let update = |value: &'static str| {
        vec![
            "routes",
            "update",
            "--listener",
            L,
            "--hostname",
            "web.test",
            "--access-log",
            value,
            "--json",
        ]
    };
    let o = ctl(&proxy, &update("off")).await;
    assert_ok(&o);
    let updated: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(updated["access_log"], false);
    let o = ctl(&proxy, &["routes", "show", "web.test"]).await;
    assert_ok(&o);
    assert!(
        stdout(&o).lines().any(|l| l == "access    off"),
        "{}",
        stdout(&o)
    );
    let o = ctl(&proxy, &update("on")).await;
    assert_ok(&o);
    let updated: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(updated["access_log"], true);

    // Only on and off: a usage error before any call.
    let o = ctl(&proxy, &update("yes")).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("[possible values: on, off]"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn firewall_subcommands() {
    let proxy = Proxy::start("[[listeners]]\naddr = \"127.0.0.1:0\"").await;
    let o = ctl(&proxy, &["firewall", "add", "--ip", "192.0.2.7"]).await;
    assert_ok(&o);
    let o = ctl(&proxy, &["firewall", "add", "--cidr", "198.51.100.9/24"]).await;
    assert_ok(&o);
    assert!(stdout(&o).contains("198.51.100.0/24"), "{}", stdout(&o));
    let o = ctl(&proxy, &["firewall", "list"]).await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "KIND  VALUE\nip    192.0.2.7\ncidr  198.51.100.0/24\n"
    );
    let o = ctl(&proxy, &["firewall", "remove", "--ip", "192.0.2.7"]).await;
    assert_ok(&o);
    let o = ctl(&proxy, &["firewall", "list", "--json"]).await;
    let rules: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        rules,
        serde_json::json!([{"kind": "cidr", "value": "198.51.100.0/24"}])
    );
}

#[tokio::test]
async fn errors_are_one_line_with_a_telling_exit_code() {
    let proxy = Proxy::start("[[listeners]]\naddr = \"127.0.0.1:0\"").await;
    let cases: [(&[&str], i32, &str); 5] = [
        (
            &[
                "routes",
                "add",
                "--listener",
                "127.0.0.1:1",
                "--hostname",
                "a.test",
                "--backend",
                "127.0.0.1:2",
            ],
            1,
            "no listener 127.0.0.1:1",
        ),
        (
            &[
                "routes",
                "add",
                "--listener",
                L,
                "--hostname",
                "a.test",
                "--backend",
                "127.0.0.1:2",
                "--mode",
                "l7",
            ],
            1,
            "needs tls_cert",
        ),
        (
            &[
                "routes",
                "remove",
                "--listener",
                L,
                "--hostname",
                "nope.test",
            ],
            1,
            "not found",
        ),
        (
            &["firewall", "add", "--ip", "not-an-ip"],
            1,
            "not an IP address",
        ),
        (
            &["routes", "update", "--listener", L, "--hostname", "a.test"],
            2,
            "nothing to change",
        ),
    ];
    for (args, code, needle) in cases {
        let o = ctl(&proxy, args).await;
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }

    // No daemon: exit 3, and the message names the socket.
    let o = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_mcproxyctl"))
            .args(["--socket", "/nonexistent/mc.sock", "status"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("/nonexistent/mc.sock"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("is it running"), "{}", stderr(&o));
}

#[tokio::test]
async fn events_follow_traffic_as_json_lines() {
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new()
        .route("a.test", backend.addr)
        .start()
        .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcproxyctl"))
        .arg("--socket")
        .arg(&proxy.socket)
        .args(["events", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    // Wait until the subscriber is attached, then make traffic.
    proxy.wait_for_watchers().await;
    let mut c = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    send_and_finish(&mut c, b"hello").await.unwrap();

    let mut kinds = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let line = rx.recv().await.expect("mcproxyctl events ended");
            let event: Value = serde_json::from_str(&line).unwrap();
            kinds.push(event["type"].as_str().unwrap().to_owned());
            if event["type"] == "connection_closed" {
                return event;
            }
        }
    })
    .await
    .expect("no connection_closed event");
    let _ = child.kill();
    let _ = child.wait();
    // The backend was `unknown` (never contacted): the connection made it `up`, which is
    // published too.
    let (changes, rest): (Vec<String>, Vec<String>) =
        kinds.into_iter().partition(|k| k == "backend_changed");
    assert_eq!(rest, ["connection_opened", "connection_closed"]);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(closed["hostname"], "a.test");
    assert_eq!(closed["outcome"], "closed");
    assert!(closed["bytes_in"].as_u64().unwrap() > 0);
}

/// Issue 28: `events --type backend_changed` prints a drain's event and nothing of the
/// connections and route changes around it; an unknown type is a usage error naming the
/// valid ones.
#[tokio::test]
async fn events_of_one_type_only() {
    let pki = Pki::new();
    let first = TlsBackend::start(&pki, &["a.test"]).await;
    let second = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new()
        .route("a.test", first.addr)
        .start()
        .await;
    let listener = L.to_owned();

    let o = ctl(&proxy, &["events", "--type", "backend_change"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    for t in [
        "connection_opened",
        "connection_closed",
        "connection_blocked",
        "route_changed",
        "firewall_changed",
        "backend_changed",
        "stats",
        "lagged",
    ] {
        assert!(stderr(&o).contains(t), "{t}: {}", stderr(&o));
    }
    assert!(stdout(&o).is_empty());

    let mut child = Command::new(env!("CARGO_BIN_EXE_mcproxyctl"))
        .arg("--socket")
        .arg(&proxy.socket)
        .args(["events", "--type", "backend_changed"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    proxy.wait_for_watchers().await;
    // What the filter leaves out: a route change and a whole connection, seen published.
    let mut published = proxy.state.events.subscribe();
    let o = ctl(
        &proxy,
        &[
            "routes",
            "update",
            "--listener",
            &listener,
            "--hostname",
            "a.test",
            "--backend",
            &first.addr.to_string(),
            "--backend",
            &second.addr.to_string(),
        ],
    )
    .await;
    assert_ok(&o);
    let mut c = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    send_and_finish(&mut c, b"hello").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let t = published.recv().await.unwrap();
            if format!("{:?}", t.event).starts_with("ConnectionClosed") {
                return;
            }
        }
    })
    .await
    .expect("no connection_closed published");

    let second_addr = second.addr.to_string();
    let o = ctl(
        &proxy,
        &["routes", "backend", "drain", "a.test", &second_addr],
    )
    .await;
    assert_ok(&o);
    // The connection's member was `unknown` (never contacted): its first connection made it
    // `up`, a backend change of its own that may come first.
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let line = rx.recv().await.expect("mcproxyctl events ended");
            if !line.contains(" up (the first connection went through)") {
                return line;
            }
        }
    })
    .await
    .expect("no backend_changed line");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.contains(&format!(
            " backend a.test on {listener}: {second_addr} draining"
        )),
        "{line}"
    );
    // Nothing else: the route change and the connection came before the drain's event.
    let mut rest = Vec::new();
    while let Ok(l) = rx.try_recv() {
        rest.push(l);
    }
    assert!(
        rest.iter().all(|l| l.contains(" backend a.test ")),
        "{rest:?}"
    );
}

/// Runs mcproxyctl with `args` and its stdout a pipe whose reader is already gone, so the
/// first write fails with EPIPE whatever the timing.
fn run_into_closed_pipe(socket: &std::path::Path, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_mcproxyctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_closed_pipe_ends_the_command_quietly() {
    let proxy = Proxy::start(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nhostname = \"app.test\"\nbackend = \"127.0.0.1:9443\"",
    )
    .await;
    for args in [
        &["routes", "list", "--json"][..],
        &["routes", "list"],
        &["status"],
        &["firewall", "list"],
        &["completions", "bash"],
    ] {
        let socket = proxy.socket.clone();
        let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let o = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = owned.iter().map(String::as_str).collect();
            run_into_closed_pipe(&socket, &args)
        })
        .await
        .unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?}");
    }

    // `events | head -1`: the reader leaves after one line; the next event ends the command.
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki, &["a.test"]).await;
    let mut admin = proxy.admin().await;
    admin
        .add_route(
            L,
            mc_proxy_shared::Route {
                hostname: "a.test".into(),
                backends: vec![mc_proxy_shared::RouteBackend::new(backend.addr.to_string())],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcproxyctl"))
        .arg("--socket")
        .arg(&proxy.socket)
        .args(["events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    proxy.wait_for_watchers().await;
    let traffic = || async {
        let mut c = tls_connect(proxy.addr(), "a.test", pki.client_config())
            .await
            .unwrap();
        send_and_finish(&mut c, b"x").await.unwrap();
    };
    traffic().await;
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    // The first line is the connection's, or the backend change it made (unknown to up).
    assert!(
        first.contains("open") || first.contains(" up (the first connection went through)"),
        "{first}"
    );
    // The reader (moved into the closure) is gone now; keep making events until it notices.
    let exited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            traffic().await;
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("mcproxyctl events kept running after its reader left");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(exited.code(), Some(0), "{err}");
    assert_eq!(err, "");
}

#[tokio::test]
async fn relative_certificate_paths_are_sent_absolute() {
    let pki = Pki::new();
    let proxy = Proxy::start("[[listeners]]\naddr = \"127.0.0.1:0\"").await;
    let cwd = tempfile::tempdir().unwrap();
    pki.write_pem(cwd.path(), &["web.test"]);
    let names: Vec<String> = std::fs::read_dir(cwd.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let cert = names.iter().find(|n| n.ends_with(".pem")).unwrap().clone();
    let key = names.iter().find(|n| n.ends_with(".key")).unwrap().clone();

    let socket = proxy.socket.clone();
    let dir = cwd.path().to_owned();
    let (c, k) = (cert.clone(), key.clone());
    let o = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_mcproxyctl"))
            .current_dir(&dir)
            .arg("--socket")
            .arg(&socket)
            .args(["routes", "add", "--listener", L, "--hostname", "web.test"])
            .args(["--backend", "127.0.0.1:9080", "--mode", "l7"])
            .args(["--tls-cert", &c, "--tls-key", &k, "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_ok(&o);
    let stored: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let want = |name: &str| cwd.path().join(name).display().to_string();
    assert_eq!(stored["tls_cert"], want(&cert));
    assert_eq!(stored["tls_key"], want(&key));

    // The API itself refuses a relative path, and the refused write changes nothing.
    let mut admin = proxy.admin().await;
    let err = admin
        .add_route(
            L,
            mc_proxy_shared::Route {
                hostname: "rel.test".into(),
                backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9080")],
                mode: mc_proxy_shared::Mode::L7,
                tls_cert: cert.clone(),
                tls_key: key.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("relative path"), "{err}");
    let routes = admin.list_routes(None).await.unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
}

#[tokio::test]
async fn permission_denied_on_the_socket_is_its_own_exit_code() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let proxy = Proxy::start("[[listeners]]\naddr = \"127.0.0.1:0\"").await;
    let as_root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let o = if as_root {
        // Root passes every permission check: run the CLI as nobody instead, from a copy it
        // may execute.
        if Command::new("setpriv").arg("--version").output().is_err() {
            // Past the harness's capture, so that a passing run still says what it skipped.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: running as root and setpriv is not installed (apt-get install util-linux)"
            );
            return;
        }
        let bin = tempfile::tempdir().unwrap();
        std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ctl = bin.path().join("mcproxyctl");
        std::fs::copy(env!("CARGO_BIN_EXE_mcproxyctl"), &ctl).unwrap();
        let socket = proxy.socket.clone();
        tokio::task::spawn_blocking(move || {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&ctl)
                .arg("--socket")
                .arg(&socket)
                .arg("status")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    } else {
        std::fs::set_permissions(&proxy.socket, std::fs::Permissions::from_mode(0o000)).unwrap();
        ctl(&proxy, &["status"]).await
    };
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("not accessible to this user"), "{err}");
    assert!(!err.contains("is it running"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// An admin socket whose "daemon" speaks HTTP/2, takes the first request and then drops the
/// connection without answering: a daemon that died in the middle of a call.
fn daemon_that_dies_mid_call(path: &std::path::Path) -> tokio::task::JoinHandle<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (died, on_death) = tokio::sync::mpsc::unbounded_channel::<()>();
        let service = hyper::service::service_fn(move |_req| {
            let _ = died.send(());
            std::future::pending::<
                Result<hyper::Response<http_body_util::Empty<bytes::Bytes>>, std::io::Error>,
            >()
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service);
        let mut on_death = on_death;
        tokio::select! {
            _ = conn => {}
            _ = on_death.recv() => {}
        }
    })
}

#[tokio::test]
async fn a_daemon_that_goes_away_mid_call_says_the_change_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let fake = daemon_that_dies_mid_call(&socket);
    let o = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_mcproxyctl"))
            .arg("--socket")
            .arg(&socket)
            .args(["routes", "add", "--listener", L, "--hostname", "a.test"])
            .args(["--backend", "127.0.0.1:9"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    fake.await.unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("went away during the call"), "{err}");
    assert!(err.contains("may or may not have been applied"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn huge_values_are_refused_with_a_short_message() {
    let proxy = Proxy::start("[[listeners]]\naddr = \"127.0.0.1:0\"").await;
    // 100 KB: about the longest argument Linux passes to a program (128 KiB).
    let name = format!("{}.test", "a".repeat(100_000));
    let o = ctl(
        &proxy,
        &[
            "routes",
            "add",
            "--listener",
            L,
            "--hostname",
            &name,
            "--backend",
            "127.0.0.1:9",
        ],
    )
    .await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{}", &err[..err.len().min(300)]);
    assert!(err.len() < 200, "{} bytes: {}", err.len(), &err[..300]);
    assert!(err.contains("at most 255"), "{err}");
    assert!(err.contains("invalid argument"), "{err}");
}

#[tokio::test]
async fn tables_without_headers_in_a_stable_order() {
    let proxy = Proxy::start(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nhostname = \"b.test\"\nbackend = \"127.0.0.1:9443\"\n\
         [[listeners.routes]]\nhostname = \"*.svc.test\"\nbackend = \"127.0.0.1:9444\"\n\
         [[listeners.routes]]\nhostname = \"a.test\"\nbackend = \"127.0.0.1:9445\"",
    )
    .await;
    let o = ctl(&proxy, &["routes", "list", "--no-headers"]).await;
    assert_ok(&o);
    let hosts: Vec<String> = stdout(&o)
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(hosts, ["*.svc.test", "a.test", "b.test"]);

    for rule in ["10.0.0.10", "10.0.0.9"] {
        assert_ok(&ctl(&proxy, &["firewall", "add", "--ip", rule]).await);
    }
    assert_ok(&ctl(&proxy, &["firewall", "add", "--cidr", "192.0.2.0/24"]).await);
    let o = ctl(&proxy, &["firewall", "list", "--no-headers"]).await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "ip    10.0.0.9\nip    10.0.0.10\ncidr  192.0.2.0/24\n"
    );
    let o = ctl(&proxy, &["status", "--no-headers"]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    assert!(stdout(&o).starts_with(L), "{}", stdout(&o));

    let o = ctl(&proxy, &["routes", "list", "--no-headers", "--json"]).await;
    assert_eq!(o.status.code(), Some(2), "--no-headers and --json conflict");
}

#[tokio::test]
async fn zeros_are_refused_in_the_tomls_words_and_change_nothing() {
    let proxy = Proxy::start(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nhostname = \"app.test\"\n\
         backends = [\"127.0.0.1:9443 weight=2\"]\n\
         [listeners.routes.health_check]\ninterval = \"3s\"\nrise = 4\nfall = 5",
    )
    .await;
    let listed = || async {
        let o = ctl(&proxy, &["routes", "list", "--json"]).await;
        assert_ok(&o);
        let all: Value = serde_json::from_str(&stdout(&o)).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .map(|e| e["route"].clone())
            .collect::<Vec<Value>>()
    };
    let before = listed().await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["backends"][0]["weight"], 2);
    assert_eq!(before[0]["health_check"]["rise"], 4);

    let weight = "backend \"127.0.0.1:9443\": weight 0 is not from 1 to 256";
    let rise_fall = "health_check: rise and fall must be at least 1";
    let interval = "health_check: interval must be at least 100ms";
    let timeout = "health_check: timeout must be more than 0 and at most the interval";
    let update = [
        "routes",
        "update",
        "--listener",
        L,
        "--hostname",
        "app.test",
    ];
    let add = [
        "routes",
        "add",
        "--listener",
        L,
        "--hostname",
        "new.test",
        "--backend",
        "127.0.0.1:9444",
    ];
    let most = "health_check: rise and fall must be at most 100";
    let longest = "health_check: interval must be at most 1h";
    let cases: [(&[&str], &[&str], &str); 13] = [
        (&update, &["--backend", "127.0.0.1:9443,weight=0"], weight),
        (&update, &["--backend", "127.0.0.1:9443 weight=0"], weight),
        (&add[..6], &["--backend", "127.0.0.1:9443,weight=0"], weight),
        // The case: it printed "updated" and changed nothing.
        (
            &update,
            &[
                "--check-rise",
                "0",
                "--check-fall",
                "0",
                "--check-interval",
                "0s",
            ],
            rise_fall,
        ),
        (&update, &["--check-fall", "0"], rise_fall),
        (&update, &["--check-interval", "0s"], interval),
        (&update, &["--check-timeout", "0s"], timeout),
        (&add, &["--check-rise", "0"], rise_fall),
        (&add, &["--check-interval", "0s"], interval),
        // The upper bounds, in the same words.
        (&update, &["--check-rise", "101"], most),
        (&add, &["--check-fall", "1000"], most),
        (&update, &["--check-interval", "2h"], longest),
        (&add, &["--check-interval", "61m"], longest),
    ];
    for (command, flags, needle) in cases {
        let args = [command, flags].concat();
        let o = ctl(&proxy, &args).await;
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("invalid argument") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
    }

    // Misspelt options and stray separators: usage errors that name them, never "port".
    let unknown = "unknown option \"wieght\": expected weight=N";
    let stray = "stray \",\": expected host:port or host:port,weight=N";
    let split = "unexpected argument \"weight=3\": a backend's options go in the same word";
    let cases: [(&[&str], &str); 6] = [
        (&["--backend", "127.0.0.1:9443,wieght=3"], unknown),
        (&["--backend", "127.0.0.1:9443 wieght=3"], unknown),
        (&["--backend", "127.0.0.1:9443, weight=3"], stray),
        (&["--backend", "127.0.0.1:9443,", "weight=3"], stray),
        (&["--backend", ", weight=3"], stray),
        (&["--backend", "127.0.0.1:9443", "weight=3"], split),
    ];
    for (flags, needle) in cases {
        for command in [&update[..], &add[..6]] {
            let args = [command, flags].concat();
            let o = ctl(&proxy, &args).await;
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(!err.contains("port must"), "{args:?}: {err}");
        }
    }
    // `--check-expect` goes through the one parser of `expect`, the TOML's and the API's:
    // refused before any call, in its words.
    let expect = "invalid expected status \"2xx-3xx\": expected status codes from 100 to 599, \
                  classes or ranges";
    for (value, needle) in [
        ("2xx-3xx", expect),
        ("200,600", "invalid expected status \"200,600\""),
    ] {
        for command in [&update[..], &add[..]] {
            let args = [command, &["--check-expect", value][..]].concat();
            let o = ctl(&proxy, &args).await;
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
    // A huge misspelt option or count is quoted cut short.
    let huge = format!("127.0.0.1:9443,{}=3", "w".repeat(100_000));
    let many = "9".repeat(100_000);
    for flags in [
        ["--backend", huge.as_str()],
        ["--check-rise", many.as_str()],
        ["--check-interval", many.as_str()],
    ] {
        let args = [&update[..], &flags[..]].concat();
        let o = ctl(&proxy, &args).await;
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{}", &err[..err.len().min(300)]);
        assert!(err.len() < 600, "{} bytes: {}", err.len(), &err[..600]);
    }

    // Nothing was added or changed.
    assert_eq!(listed().await, before);
}

#[tokio::test]
async fn the_completions_help_shows_lines_that_paste_as_they_are() {
    let o = Command::new(env!("CARGO_BIN_EXE_mcproxyctl"))
        .args(["completions", "--help"])
        .output()
        .unwrap();
    assert_ok(&o);
    let help = stdout(&o);
    let lines: Vec<&str> = help.lines().map(str::trim).collect();
    for line in [
        "mcproxyctl completions bash > /etc/bash_completion.d/mcproxyctl",
        "mcproxyctl completions zsh > \"${fpath[1]}/_mcproxyctl\"",
        "mcproxyctl completions fish > ~/.config/fish/completions/mcproxyctl.fish",
    ] {
        assert!(lines.contains(&line), "{line} is not a line of:\n{help}");
    }
    assert!(
        !help.contains('\\'),
        "no line continuation to paste:\n{help}"
    );
}

#[tokio::test]
async fn completions_for_each_shell() {
    for (shell, needle) in [
        ("bash", "complete -F _mcproxyctl"),
        ("zsh", "#compdef mcproxyctl"),
        ("fish", "complete -c mcproxyctl"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_mcproxyctl"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_ok(&o);
        let script = stdout(&o);
        assert!(script.contains(needle), "{shell}: {script}");
        assert!(script.contains("reload"), "{shell}: no subcommands in it");
        assert!(
            script.contains("backend-protocol") && script.contains("http1"),
            "{shell}: no backend protocol values in it"
        );
    }
}

#[tokio::test]
async fn reload_serves_renewed_certificates_and_keeps_the_last_good_one() {
    let pki = Pki::new();
    let certs = tempfile::tempdir().unwrap();
    let backend = "127.0.0.1:9".parse().unwrap();
    let body = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n{}{}",
        l7_route_toml(&pki, certs.path(), "a.test", backend),
        l7_route_toml(&pki, certs.path(), "b.test", backend)
    );
    let proxy = Proxy::start(&body).await;
    let (a_cert, a_key) = pki.write_pem(certs.path(), &["a.test"]);
    let served = |sni: &'static str| served_leaf(proxy.addr(), sni, pki.client_config());
    let first_b = served("b.test").await.unwrap();
    assert_eq!(
        first_b,
        pem_leaf(&certs.path().join("b.test.pem").display().to_string())
    );

    // a.test renewed on disk (write_pem wrote a new pair); b.test's certificate broken.
    std::fs::write(certs.path().join("b.test.pem"), "not a certificate").unwrap();
    assert_ne!(
        served("a.test").await.unwrap(),
        pem_leaf(&a_cert),
        "served before reload"
    );

    let o = ctl(&proxy, &["reload"]).await;
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
    let row = |host: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(host))
            .unwrap_or_else(|| panic!("no row for {host}: {out}"))
            .to_owned()
    };
    assert!(row("a.test").contains("renewed"), "{out}");
    assert!(row("a.test").contains("valid until"), "{out}");
    let b = row("b.test");
    assert!(
        b.contains("failed") && b.contains("keeps its certificate"),
        "{out}"
    );
    assert!(b.contains("b.test.pem"), "the error names the file: {out}");
    assert!(stderr(&o).contains("1 route(s) failed"), "{}", stderr(&o));

    // New handshakes: a.test gets the renewed certificate, b.test still the old one.
    assert_eq!(served("a.test").await.unwrap(), pem_leaf(&a_cert));
    assert_eq!(served("b.test").await.unwrap(), first_b);

    // Fixed: the next reload serves it; a.test is now unchanged.
    let (b_cert, _) = pki.write_pem(certs.path(), &["b.test"]);
    let o = ctl(&proxy, &["reload", "--json"]).await;
    assert_ok(&o);
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let result = |host: &str| {
        report
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["hostname"] == host)
            .unwrap()["result"]
            .clone()
    };
    assert_eq!(result("a.test"), "unchanged");
    assert_eq!(result("b.test"), "renewed");
    assert_eq!(served("b.test").await.unwrap(), pem_leaf(&b_cert));
    drop(a_key);
}

#[tokio::test]
async fn connections_lists_what_is_open() {
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new()
        .route("a.test", backend.addr)
        .start()
        .await;
    let o = ctl(&proxy, &["connections", "--no-headers"]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o), "");

    let client = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    let mine = client_addr(&client).to_string();
    let o = ctl(&proxy, &["connections", "--no-headers"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let row: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(row.len(), 9, "{out}");
    assert_eq!(
        (row[1], row[3], row[4]),
        (mine.as_str(), "a.test", "l4"),
        "{out}"
    );
    assert_eq!(row[5], backend.addr.to_string());

    let o = ctl(&proxy, &["connections", "--json", "--limit", "1"]).await;
    assert_ok(&o);
    let list: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(list["total"], 1);
    assert_eq!(list["connections"][0]["client"], mine);
    drop(client);
}

#[tokio::test]
async fn backends_shows_the_pool_per_backend() {
    use mc_proxy_tests::web::*;
    let pki = Pki::new();
    let backend = H1Backend::start().await;
    let proxy = web_proxy(&pki, backend.addr)
        .backend_protocol(mc_proxy_shared::BackendProtocol::Http1)
        .start()
        .await;
    // Nothing dialled yet: no backend listed.
    let o = ctl(&proxy, &["backends", "--no-headers"]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o), "");

    let mut client = h1_client(proxy.addr(), "web.test", &pki).await;
    for _ in 0..3 {
        let req = http::Request::builder()
            .uri("/b")
            .header("host", "web.test");
        let resp = answer(
            timed(client.send_request(with_body(req, "")))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status, 200);
    }
    let o = ctl(&proxy, &["backends"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "BACKEND", "PROTO", "TLS", "OPEN", "IDLE", "IN_USE", "REQUESTS", "OPENED", "FAILED"
        ]
    );
    let addr = backend.addr.to_string();
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [addr.as_str(), "http1", "no", "1", "1", "0", "0", "1", "0"],
        "{out}"
    );
    let o = ctl(&proxy, &["backends", "--json"]).await;
    assert_ok(&o);
    let list: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(list[0]["backend"], addr);
    assert_eq!(list[0]["protocol"], "http1");
    assert_eq!(list[0]["opened"], 1);
}

/// Issue 28: a stored L7 route left out at start (its certificate broke) is listed with its
/// state, `show` works, `add` says why the name is taken, `reload` says "not served" (not
/// "keeps its certificate"), `remove` works.
#[tokio::test]
async fn a_route_not_served_is_listed_shown_and_removable() {
    let pki = Pki::new();
    let certs = tempfile::tempdir().unwrap();
    let backend = "127.0.0.1:9".parse().unwrap();
    let body = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n{}{}",
        l7_route_toml(&pki, certs.path(), "a.test", backend),
        l7_route_toml(&pki, certs.path(), "b.test", backend)
    );
    let proxy = Proxy::start(&body).await;
    let dir = proxy.stop_and_keep_dir().await;
    // The reason names the file by its (temporary, long) path: the table cuts it.
    std::fs::write(certs.path().join("b.test.pem"), "not a certificate").unwrap();
    let proxy = Proxy::start_in(dir, &body).await;

    let o = ctl(&proxy, &["routes", "list"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let header = out.lines().next().unwrap();
    // MEMBERS, then STATE last (the rest of the line).
    assert!(
        header
            .split_whitespace()
            .rev()
            .take(2)
            .eq(["STATE", "MEMBERS"]),
        "{out}"
    );
    let row = |host: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(host))
            .unwrap_or_else(|| panic!("no row for {host}: {out}"))
            .to_owned()
    };
    assert!(
        row("a.test")
            .split_whitespace()
            .rev()
            .take(2)
            .eq(["served", "127.0.0.1:9/w1/unknown"]),
        "{out}"
    );
    // A route not served has no live member state.
    let b = row("b.test");
    // MEMBERS without a live state, then STATE.
    let members = "127.0.0.1:9/w1/-";
    let after = &b[b.find(members).expect(&out) + members.len()..];
    assert!(after.trim_start().starts_with("not served: "), "{out}");
    let state = b.trim_end();
    let state = &state[state.find("not served: ").expect(&out)..];
    assert!(
        state.chars().count() <= "not served: ".len() + 60 && state.ends_with('…'),
        "the reason is cut: {state}"
    );

    let o = ctl(&proxy, &["routes", "list", "--json"]).await;
    assert_ok(&o);
    let list: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let entry = |host: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["route"]["hostname"] == host)
            .unwrap()
            .clone()
    };
    assert!(entry("a.test").get("not_served").is_none(), "{list}");
    let reason = entry("b.test")["not_served"].as_str().unwrap().to_owned();
    assert!(reason.contains("b.test.pem"), "the whole reason: {reason}");

    let o = ctl(&proxy, &["status"]).await;
    assert_ok(&o);
    assert!(
        stdout(&o).contains(&format!("listener {L}: 1 stored route(s) not served")),
        "{}",
        stdout(&o)
    );

    let o = ctl(&proxy, &["routes", "show", "b.test"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains(&format!("state     not served: {reason}")),
        "{out}"
    );
    assert!(out.contains("127.0.0.1:9"), "the stored fields: {out}");

    let o = ctl(
        &proxy,
        &[
            "routes",
            "add",
            "--listener",
            L,
            "--hostname",
            "b.test",
            "--backend",
            "127.0.0.1:9",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("already exists") && err.contains("not served") && err.contains("b.test.pem"),
        "{err}"
    );

    let o = ctl(&proxy, &["reload"]).await;
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let b = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("b.test"))
        .expect(&out);
    assert!(b.contains("failed") && b.contains("not served"), "{out}");
    assert!(!out.contains("keeps its certificate"), "{out}");
    let err = stderr(&o);
    assert!(
        err.contains("1 route(s) failed to reload and are not served"),
        "{err}"
    );
    assert!(!err.contains("keep the certificate"), "{err}");

    let o = ctl(
        &proxy,
        &["routes", "remove", "--listener", L, "--hostname", "b.test"],
    )
    .await;
    assert_ok(&o);
    let o = ctl(&proxy, &["routes", "list", "--no-headers"]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
}

#[tokio::test]
async fn listeners_are_listed_added_updated_and_removed() {
    let proxy = ProxyBuilder::new()
        .route("a.test", "127.0.0.1:9")
        .start()
        .await;

    let o = ctl(
        &proxy,
        &["listeners", "add", "127.0.0.6:0", "--proxy-protocol"],
    )
    .await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.starts_with("listener 127.0.0.6:0 added (bound to 127.0.0.6:"),
        "{out}"
    );
    assert!(out.contains("PROXY header expected from any peer"), "{out}");
    assert!(
        out.contains("mcproxyctl routes add --listener 127.0.0.6:0"),
        "{out}"
    );

    // Listed with the port it got, in the table and as JSON.
    let o = ctl(&proxy, &["listeners", "list", "--no-headers"]).await;
    assert_ok(&o);
    let rows: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[1].starts_with("127.0.0.6:0 (127.0.0.6:"), "{rows:?}");
    let o = ctl(&proxy, &["listeners", "list", "--json"]).await;
    let list: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(list[1]["addr"], "127.0.0.6:0");
    assert_eq!(list[1]["proxy_protocol"], true);

    // Updated; nothing to change is a usage error; a bad network the daemon's refusal.
    let o = ctl(
        &proxy,
        &[
            "listeners",
            "update",
            "--listener",
            "127.0.0.6:0",
            "--proxy-protocol-from",
            "10.0.0.0/8",
            "--proxy-protocol-from",
            "192.0.2.7",
        ],
    )
    .await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "listener 127.0.0.6:0 updated: PROXY header expected from 10.0.0.0/8, 192.0.2.7/32; \
         hellos without SNI are reset\n"
    );
    let o = ctl(
        &proxy,
        &["listeners", "update", "--listener", "127.0.0.6:0"],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing to change"), "{}", stderr(&o));
    let o = ctl(
        &proxy,
        &[
            "listeners",
            "update",
            "--listener",
            "127.0.0.6:0",
            "--proxy-protocol-from",
            "lb.example",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("proxy_protocol_from[0]"),
        "{}",
        stderr(&o)
    );

    // Per-client limits: set (the others keep their value), refused by the shared rules.
    let o = ctl(
        &proxy,
        &[
            "listeners",
            "update",
            "--listener",
            "127.0.0.6:0",
            "--max-conns-per-client",
            "20",
            "--new-conns-per-client",
            "10",
            "--client-ipv6-prefix",
            "56",
        ],
    )
    .await;
    assert_ok(&o);
    assert!(
        stdout(&o).ends_with("; per client (IPv6 /56): 20 open, 10 new/s (burst 10)\n"),
        "{}",
        stdout(&o)
    );
    let o = ctl(
        &proxy,
        &[
            "listeners",
            "update",
            "--listener",
            "127.0.0.6:0",
            "--new-conns-per-client",
            "0",
        ],
    )
    .await;
    assert_ok(&o);
    assert!(
        stdout(&o).ends_with("; per client (IPv6 /56): 20 open\n"),
        "{}",
        stdout(&o)
    );
    let o = ctl(
        &proxy,
        &[
            "listeners",
            "update",
            "--listener",
            "127.0.0.6:0",
            "--new-conns-burst",
            "5",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no rate applies"), "{}", stderr(&o));
    let o = ctl(
        &proxy,
        &[
            "listeners",
            "add",
            "127.0.0.7:0",
            "--client-ipv6-prefix",
            "8",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("client_ipv6_prefix 8"),
        "{}",
        stderr(&o)
    );

    // The same address twice is refused; removed, it is gone.
    let o = ctl(&proxy, &["listeners", "add", "127.0.0.6:0"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    let o = ctl(&proxy, &["listeners", "remove", "127.0.0.6:0"]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o), "listener 127.0.0.6:0 removed\n");
    // The TOML's listener has a route: refused without --with-routes.
    let o = ctl(&proxy, &["listeners", "remove", L]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--with-routes"), "{}", stderr(&o));
    let o = ctl(&proxy, &["listeners", "list", "--no-headers"]).await;
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
}

#[tokio::test]
async fn reload_reports_the_settings_it_applied_and_those_that_wait() {
    let proxy = ProxyBuilder::new()
        .route("a.test", "127.0.0.1:9")
        .idle_timeout(Duration::from_secs(300))
        .start()
        .await;
    let path = proxy.dir.path().join("mc-proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace(
        "idle_timeout = \"300000ms\"",
        "idle_timeout = \"2m\"\nworkers = 2",
    );
    assert_ne!(edited, text);
    std::fs::write(&path, edited).unwrap();

    let o = ctl(&proxy, &["reload"]).await;
    assert_ok(&o);
    assert!(
        stdout(&o).contains("setting applied to new connections: idle_timeout: 300s -> 120s"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("warning: setting workers changed in the config file"),
        "{}",
        stderr(&o)
    );

    // A file that does not load: exit 1, the settings unchanged.
    std::fs::write(&path, "[proxy\n").unwrap();
    let o = ctl(&proxy, &["reload"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the config file did not load: settings unchanged"),
        "{}",
        stderr(&o)
    );
    assert_eq!(proxy.state.proxy().idle_timeout, Duration::from_secs(120));
}

/// `listeners add --name`: the name is shown, every `--listener` takes it, and the listeners
/// table grows a NAME column only once some listener has a name other than its address.
#[tokio::test]
async fn a_listener_added_with_a_name_is_named_by_it_in_every_command() {
    let proxy = ProxyBuilder::new()
        .route("a.test", "127.0.0.1:9")
        .start()
        .await;
    let o = ctl(&proxy, &["listeners", "list"]).await;
    assert!(!stdout(&o).contains("NAME"), "{}", stdout(&o));

    let o = ctl(
        &proxy,
        &["listeners", "add", "127.0.0.7:0", "--name", "edge-7"],
    )
    .await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.starts_with("listener 127.0.0.7:0 (name edge-7) added"),
        "{out}"
    );
    assert!(
        out.contains("mcproxyctl routes add --listener edge-7"),
        "{out}"
    );

    let o = ctl(
        &proxy,
        &[
            "routes",
            "add",
            "--listener",
            "edge-7",
            "--hostname",
            "b.test",
            "--backend",
            "127.0.0.1:9",
        ],
    )
    .await;
    assert_ok(&o);
    let o = ctl(
        &proxy,
        &["routes", "list", "--listener", "edge-7", "--json"],
    )
    .await;
    assert_ok(&o);
    let routes: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(routes.as_array().unwrap().len(), 1, "{routes}");
    assert_eq!(routes[0]["route"]["hostname"], "b.test");

    let o = ctl(&proxy, &["listeners", "list"]).await;
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("LISTENER") && lines[0].contains("NAME"),
        "{out}"
    );
    assert!(lines.iter().any(|l| l.contains("edge-7")), "{out}");

    // A bad name is the daemon's refusal, exit 1; removed by its name.
    let o = ctl(
        &proxy,
        &["listeners", "add", "127.0.0.8:0", "--name", "a b"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("listener name"), "{}", stderr(&o));
    let o = ctl(&proxy, &["listeners", "remove", "edge-7", "--with-routes"]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o), "listener edge-7 removed\n");
}

/// Every route and listener field the export writes, as a comparable value.
async fn state_of(proxy: &Proxy) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let mut admin = proxy.admin().await;
    let status = admin.status().await.unwrap();
    let listeners = status
        .listeners
        .iter()
        .map(|l| {
            serde_json::json!([
                l.addr,
                l.name,
                l.proxy_protocol,
                l.proxy_protocol_from,
                l.no_sni_route,
                l.access_log
            ])
        })
        .collect();
    let routes = admin
        .list_routes(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| serde_json::json!([r.listener, r.route]))
        .collect();
    let rules = admin
        .firewall_rules()
        .await
        .unwrap()
        .into_iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    (listeners, routes, rules)
}

#[tokio::test]
async fn export_writes_a_config_that_seeds_the_same_state() {
    let pki = Pki::new();
    let certs = tempfile::tempdir().unwrap();
    let backend = "127.0.0.1:9".parse().unwrap();
    // A certificate path with a quote and a backslash in it: the TOML must still parse.
    let odd = certs.path().join("we\"ird\\dir");
    std::fs::create_dir(&odd).unwrap();
    let body = format!(
        "[firewall]\nblocked_cidrs = [\"198.51.100.0/24\"]\n\
         [[listeners]]\naddr = \"127.0.0.1:0\"\nproxy_protocol = true\n\
         proxy_protocol_from = [\"10.0.0.0/8\"]\n\
         [[listeners.routes]]\nhostname = \"a.test\"\n\
         backends = [\"127.0.0.1:9001\", \"127.0.0.1:9002 weight=3\"]\nbalance = \"least_conn\"\n\
         [listeners.routes.health_check]\ninterval = \"1500ms\"\nfall = 4\n\
         [[listeners]]\naddr = \"127.0.0.2:0\"\nname = \"edge-2\"\naccess_log = true\n\
         {}access_log = true\n",
        l7_route_toml(&pki, &odd, "web.test", backend)
    );
    let proxy = Proxy::start(&body).await;
    // Changes made at run time are part of what is exported.
    let mut admin = proxy.admin().await;
    admin
        .set_backend_state(
            L,
            "a.test",
            "127.0.0.1:9002",
            mc_proxy_shared::AdminState::Draining,
        )
        .await
        .unwrap();
    admin.set_no_sni_route("edge-2", "web.test").await.unwrap();
    admin
        .add_firewall_rule(mc_proxy_shared::FirewallRule {
            kind: mc_proxy_shared::FirewallRuleKind::Ip,
            value: "192.0.2.7".into(),
        })
        .await
        .unwrap();

    let o = ctl(&proxy, &["export"]).await;
    assert_ok(&o);
    let text = stdout(&o);
    assert!(text.contains("state = \"draining\""), "{text}");
    assert!(text.contains("interval = \"1500ms\""), "{text}");
    assert_eq!(text.matches("access_log = true").count(), 2, "{text}");
    assert_eq!(text.matches("\nname = ").count(), 1, "{text}");
    assert!(text.contains("name = \"edge-2\""), "{text}");
    // A config `check` accepts, and a fresh daemon seeded from it holds the same state.
    let seeded = Proxy::start(&text).await;
    assert_eq!(state_of(&seeded).await, state_of(&proxy).await, "{text}");
}

#[tokio::test]
async fn one_backends_weight_is_set_without_restating_the_set() {
    let proxy = ProxyBuilder::new()
        .route_to("a.test", &[("127.0.0.1:9001", 1), ("127.0.0.1:9002", 2)])
        .start()
        .await;
    let o = ctl(
        &proxy,
        &[
            "routes",
            "backend",
            "weight",
            "a.test",
            "127.0.0.1:9002",
            "7",
        ],
    )
    .await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "backend 127.0.0.1:9002 of route a.test on listener 127.0.0.1:0: weight 7\n"
    );
    let o = ctl(&proxy, &["routes", "show", "a.test", "--json"]).await;
    let entry: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let weights: Vec<_> = entry["route"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [1, 7]);
    // Out of range: the daemon's refusal in the TOML's words, exit 1, nothing changed.
    let o = ctl(
        &proxy,
        &[
            "routes",
            "backend",
            "weight",
            "a.test",
            "127.0.0.1:9002",
            "0",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("weight 0"), "{}", stderr(&o));
}

/// Issue 28: `routes show` says per backend how long it has been in its state and what its
/// last check found (time ago, result, latency); the JSON carries the same figures.
#[tokio::test]
async fn routes_show_says_since_when_and_the_last_check() {
    let pki = Pki::new();
    let live = TlsBackend::start(&pki, &["a.test"]).await;
    let dead = DeadBackend::new();
    let proxy = ProxyBuilder::new()
        .route_to("a.test", &[(live.addr, 1), (dead.addr, 1)])
        .health_check(Duration::from_millis(100), 1, 1, None)
        .start()
        .await;
    let members = || async {
        let o = ctl(&proxy, &["routes", "show", "a.test", "--json"]).await;
        assert_ok(&o);
        let entry: Value = serde_json::from_str(&stdout(&o)).unwrap();
        entry["stats"]["members"].clone()
    };
    let started = std::time::Instant::now();
    let m = loop {
        let m = members().await;
        if m[0]["state"] == "up" && m[1]["state"] == "down" {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(m[1]["last_check"]["error"], "connect refused", "{m}");
    assert_eq!(m[0]["last_check"]["error"], Value::Null, "{m}");
    assert!(m[0]["last_check"]["at_ms"].as_u64().unwrap() > 0, "{m}");
    assert!(m[1]["since_ms"].as_u64().unwrap() > 0, "{m}");
    assert!(m[1]["checks_failed"].as_u64().unwrap() >= 1, "{m}");

    let o = ctl(&proxy, &["routes", "show", "a.test"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains("check     tcp connect + tls handshake every 100ms"),
        "{out}"
    );
    let lines: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("BACKEND"))
        .collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header[8..],
        ["SINCE", "CHECK", "REASON"],
        "after the counters: {out}"
    );
    let row = |addr: String| {
        lines
            .iter()
            .find(|l| l.starts_with(&addr))
            .unwrap_or_else(|| panic!("no row for {addr}: {out}"))
            .to_string()
    };
    let up = row(live.addr.to_string());
    let cells: Vec<&str> = up.split_whitespace().collect();
    assert_eq!(cells[3], "up", "{out}");
    assert_eq!(cells[8], "for", "{out}");
    assert!(cells[9].ends_with('s'), "{out}");
    assert!(up.contains(" ago: ok in "), "{out}");
    let down = row(dead.addr.to_string());
    assert!(down.split_whitespace().nth(3) == Some("down"), "{out}");
    assert!(down.contains(" ago: connect refused in "), "{out}");
    assert!(down.ends_with("a check failed: connect refused"), "{out}");
}

#[tokio::test]
async fn connections_close_cuts_the_ones_named_and_says_which_were_not_open() {
    let pki = Pki::new();
    let a = TlsBackend::start(&pki, &["a.test"]).await;
    let proxy = ProxyBuilder::new().route("a.test", a.addr).start().await;
    let mut c = tls_connect(proxy.addr(), "a.test", pki.client_config())
        .await
        .unwrap();
    c.write_all(b"hi").await.unwrap();
    let mut echo = [0u8; 2];
    c.read_exact(&mut echo).await.unwrap();
    let o = ctl(&proxy, &["connections", "--json"]).await;
    let list: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let id = list["connections"][0]["id"].as_u64().unwrap().to_string();

    let o = ctl(&proxy, &["connections", "close", &id, "999999"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("connection {id} closed\n"));
    assert!(
        stderr(&o).contains("no open connection 999999"),
        "{}",
        stderr(&o)
    );
    let mut rest = Vec::new();
    assert!(c.read_to_end(&mut rest).await.is_err(), "the relay went on");
    // No id is a usage error.
    let o = ctl(&proxy, &["connections", "close"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Runs mcproxyctl with the contexts file `file`, no socket flag, and `env` set.
async fn ctl_in(file: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let file = file.to_owned();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_mcproxyctl"))
            .env("MCPROXYCTL_CONFIG", &file)
            .env_remove("MCPROXY_SOCKET")
            .env_remove("MCPROXY_CONTEXT")
            .envs(env)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn contexts_name_each_nodes_socket_and_commands_reach_the_one_named() {
    let one = Proxy::start("[[listeners]]\naddr = \"127.0.0.1:0\"\n[[listeners.routes]]\nhostname = \"one.test\"\nbackend = \"127.0.0.1:9\"").await;
    let two = Proxy::start("[[listeners]]\naddr = \"127.0.0.1:0\"\n[[listeners.routes]]\nhostname = \"two.test\"\nbackend = \"127.0.0.1:9\"").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ctl/contexts.toml");
    let s1 = one.socket.display().to_string();
    let s2 = two.socket.display().to_string();

    let o = ctl_in(
        &file,
        &[],
        &["config", "add-context", "edge-1", "--socket", &s1, "--use"],
    )
    .await;
    assert_ok(&o);
    assert_eq!(stdout(&o), format!("context edge-1 is {s1} (current)\n"));
    assert_ok(
        &ctl_in(
            &file,
            &[],
            &["config", "add-context", "edge-2", "--socket", &s2],
        )
        .await,
    );
    let o = ctl_in(&file, &[], &["config", "get-contexts"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[1].starts_with('*') && lines[1].contains("edge-1"),
        "{out}"
    );
    assert!(
        lines[2].contains("edge-2") && lines[2].contains(&s2),
        "{out}"
    );

    // The current context, then --context, then $MCPROXY_CONTEXT: each reaches its node.
    let routes = |o: &Output| stdout(o);
    let o = ctl_in(&file, &[], &["routes", "list", "--no-headers"]).await;
    assert_ok(&o);
    assert!(routes(&o).contains("one.test"), "{}", routes(&o));
    let o = ctl_in(
        &file,
        &[],
        &["--context", "edge-2", "routes", "list", "--no-headers"],
    )
    .await;
    assert_ok(&o);
    assert!(routes(&o).contains("two.test"), "{}", routes(&o));
    let o = ctl_in(&file, &[("MCPROXY_CONTEXT", "edge-2")], &["routes", "list"]).await;
    assert!(routes(&o).contains("two.test"), "{}", routes(&o));
    assert_ok(&ctl_in(&file, &[], &["config", "use-context", "edge-2"]).await);
    let o = ctl_in(&file, &[], &["config", "current-context"]).await;
    assert_eq!(stdout(&o), "edge-2\n");

    // Mistakes are usage errors that say what there is.
    let o = ctl_in(&file, &[], &["--context", "nope", "status"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no context \"nope\"") && stderr(&o).contains("edge-1, edge-2"),
        "{}",
        stderr(&o)
    );
    let o = ctl_in(
        &file,
        &[],
        &["--context", "edge-1", "--socket", &s2, "status"],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = ctl_in(
        &file,
        &[],
        &["config", "add-context", "bad name", "--socket", &s1],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_ok(&ctl_in(&file, &[], &["config", "delete-context", "edge-2"]).await);
    let o = ctl_in(&file, &[], &["config", "get-contexts", "--json"]).await;
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
}

#[tokio::test]
async fn apply_makes_the_daemon_match_a_file_and_a_second_apply_changes_nothing() {
    let proxy = Proxy::start(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nhostname = \"api.test\"\nbackend = \"127.0.0.1:9001\"\n\
         [[listeners.routes]]\nhostname = \"old.test\"\nbackend = \"127.0.0.1:9003\"\n",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    };

    // The daemon's own export, with a [database] section: nothing to change.
    let o = ctl(&proxy, &["export"]).await;
    assert_ok(&o);
    let exported = file(
        "exported.toml",
        &format!("[database]\npath = \"x.db\"\n{}", stdout(&o)),
    );
    let o = ctl(&proxy, &["apply", "-f", &exported]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o), "no changes\n");
    assert!(
        stderr(&o).contains("[database] is a daemon setting"),
        "{}",
        stderr(&o)
    );
    let o = ctl(&proxy, &["diff", "-f", &exported]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "no changes\n");

    let routes = file(
        "routes.toml",
        "[firewall]\nblocked_ips = [\"192.0.2.7\"]\n\
         [[listeners]]\naddr = \"127.0.0.1:0\"\n\
         [[listeners.routes]]\nhostname = \"web.test\"\nbackend = \"127.0.0.1:9002\"\n\
         [[listeners.routes]]\nhostname = \"api.test\"\nbalance = \"least_conn\"\n\
         backends = [\"127.0.0.1:9001\", { address = \"127.0.0.1:9004\", state = \"draining\" }]\n",
    );
    let o = ctl(&proxy, &["diff", "-f", &routes]).await;
    assert_eq!(o.status.code(), Some(1), "differences: diff's 1");
    assert_eq!(
        stdout(&o),
        "+ firewall ip 192.0.2.7\n\
         + route web.test on 127.0.0.1:0: l4 -> 127.0.0.1:9002\n\
         ~ route api.test on 127.0.0.1:0: backends 127.0.0.1:9001 -> \
         127.0.0.1:9001,127.0.0.1:9004; state of 127.0.0.1:9004 enabled -> draining; \
         balance round_robin -> least_conn\n  \
         route old.test on 127.0.0.1:0: not in the file (kept; --prune removes)\n"
    );

    // --dry-run prints the same and changes nothing.
    let before = state_of(&proxy).await;
    let o = ctl(&proxy, &["apply", "-f", &routes, "--dry-run"]).await;
    assert_ok(&o);
    assert!(stdout(&o).contains("+ route web.test"), "{}", stdout(&o));
    assert_eq!(state_of(&proxy).await, before);

    let o = ctl(&proxy, &["apply", "-f", &routes]).await;
    assert_ok(&o);
    assert!(
        stdout(&o).ends_with(&format!("applied 3 change(s) from {routes}\n")),
        "{}",
        stdout(&o)
    );
    let o = ctl(&proxy, &["routes", "list", "--no-headers"]).await;
    assert_ok(&o);
    let list = stdout(&o);
    assert!(list.contains(" web.test "), "{list}");
    assert!(list.contains(" old.test "), "kept without --prune: {list}");
    let o = ctl(&proxy, &["routes", "show", "api.test"]).await;
    assert!(stdout(&o).contains("least_conn"), "{}", stdout(&o));
    let api = proxy.admin().await.list_routes(None).await.unwrap();
    let api = api.iter().find(|e| e.route.hostname == "api.test").unwrap();
    assert_eq!(
        api.route.backends[1].state,
        mc_proxy_shared::AdminState::Draining
    );
    let o = ctl(&proxy, &["firewall", "list", "--no-headers"]).await;
    assert!(stdout(&o).contains("192.0.2.7"), "{}", stdout(&o));

    let o = ctl(&proxy, &["apply", "-f", &routes]).await;
    assert_ok(&o);
    assert!(stdout(&o).ends_with("no changes\n"), "{}", stdout(&o));

    // --prune removes what the file lacks; then nothing is left to change.
    let o = ctl(&proxy, &["apply", "-f", &routes, "--prune"]).await;
    assert_ok(&o);
    assert!(
        stdout(&o).starts_with("- route old.test on 127.0.0.1:0\n"),
        "{}",
        stdout(&o)
    );
    let o = ctl(&proxy, &["apply", "-f", &routes, "--prune"]).await;
    assert_eq!(stdout(&o), "no changes\n");
    let o = ctl(&proxy, &["routes", "list", "--no-headers"]).await;
    assert!(!stdout(&o).contains("old.test"), "{}", stdout(&o));

    // A file with an error sends nothing, and says where the error is.
    let before = state_of(&proxy).await;
    let route = "[[listeners]]\naddr = \"127.0.0.1:0\"\n\
                 [[listeners.routes]]\nhostname = \"new.test\"\n";
    for (name, body, said) in [
        (
            "weight.toml",
            format!("{route}backends = [{{ address = \"127.0.0.1:9005\", weight = 0 }}]\n"),
            "listener 127.0.0.1:0, route new.test: backend \"127.0.0.1:9005\": weight 0 is not \
             from 1 to 256",
        ),
        (
            "key.toml",
            format!("{route}backend = \"127.0.0.1:9005\"\nbackend_tsl = true\n"),
            "backend_tsl",
        ),
        (
            "listener.toml",
            "[[listeners]]\nname = \"edge\"\n[[listeners.routes]]\nhostname = \"new.test\"\n\
             backend = \"127.0.0.1:9005\"\n"
                .to_owned(),
            "listener edge is not on the daemon: add it first with mcproxyctl listeners add edge",
        ),
    ] {
        let path = file(name, &body);
        for command in ["apply", "diff"] {
            let o = ctl(&proxy, &[command, "-f", &path]).await;
            assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
            let err = stderr(&o);
            assert!(err.contains(&format!("{path}: ")), "{name}: {err}");
            assert!(err.contains(said), "{name}: {err}");
        }
    }
    assert_eq!(state_of(&proxy).await, before, "nothing was sent");
}

#[tokio::test]
async fn a_refused_change_refuses_the_whole_set_naming_the_file_listener_and_route() {
    let proxy = Proxy::start("[[listeners]]\naddr = \"127.0.0.1:0\"\nname = \"public\"\n").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    // The certificate is the daemon's to load: the file passes the checks made before sending,
    // and the daemon refuses the route. Its relative paths are sent from the file's directory.
    std::fs::write(
        &path,
        "[firewall]\nblocked_ips = [\"192.0.2.7\"]\n\
         [[listeners]]\nname = \"public\"\n\
         [[listeners.routes]]\nhostname = \"bad.test\"\nbackend = \"127.0.0.1:9001\"\n\
         mode = \"l7\"\ntls_cert = \"missing.pem\"\ntls_key = \"missing.key\"\n",
    )
    .unwrap();
    let path = path.display().to_string();
    let o = ctl(&proxy, &["apply", "-f", &path]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stdout(&o), "", "nothing reported as made");
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{path}: listener public, route bad.test: refused: + route bad.test on public"
        )),
        "{err}"
    );
    assert!(
        err.contains("change 2: ") && err.contains("nothing was applied"),
        "the daemon names the change's place in the set: {err}"
    );
    let o = ctl(&proxy, &["firewall", "list", "--no-headers"]).await;
    assert_eq!(
        stdout(&o),
        "",
        "the rule before it in the set is not made either"
    );
    let missing = dir.path().join("missing.pem").display().to_string();
    assert!(
        err.contains(&missing),
        "the path from the file's directory: {err}"
    );
    let o = ctl(&proxy, &["routes", "list", "--no-headers"]).await;
    assert_eq!(stdout(&o), "", "the refused route is not there");
}

#[tokio::test]
async fn a_no_sni_route_naming_a_route_the_file_adds_is_set_after_it() {
    let proxy = Proxy::start("[[listeners]]\naddr = \"127.0.0.1:0\"\nname = \"public\"\n").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nname = \"public\"\nno_sni_route = \"default.test\"\n\
         [[listeners.routes]]\nhostname = \"default.test\"\nbackend = \"127.0.0.1:9001\"\n",
    )
    .unwrap();
    let path = path.display().to_string();
    let o = ctl(&proxy, &["apply", "-f", &path]).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains("+ route default.test on public")
            && out.contains("~ listener public: no_sni_route")
            && out.contains("applied 2 change(s)"),
        "{out}"
    );
    let o = ctl(&proxy, &["diff", "-f", &path]).await;
    assert_eq!(
        (o.status.code(), stdout(&o)),
        (Some(0), "no changes\n".into())
    );
}

#[tokio::test]
async fn apply_on_a_cluster_node_changes_the_fleet_and_stops_when_the_store_is_away() {
    use mc_proxy::model::cluster::Link;
    use mc_proxy_tests::etcd::{self, EtcdCluster};
    if !etcd::available() {
        return;
    }
    let mut store = EtcdCluster::start(1).await;
    let endpoints: Vec<String> = store.endpoints().iter().map(|e| format!("{e:?}")).collect();
    let config = |name: &str| {
        format!(
            "[cluster]\nendpoints = [{}]\nprefix = \"/mc-proxy/apply\"\nname = {name:?}\n\
             request_timeout = \"2s\"\nconnect_timeout = \"1s\"\nlease_ttl = \"4s\"\n\
             [[listeners]]\naddr = \"127.0.0.1:0\"\n",
            endpoints.join(", ")
        )
    };
    let a = Proxy::start(&config("a")).await;
    let b = Proxy::start(&config("b")).await;
    for p in [&a, &b] {
        let start = std::time::Instant::now();
        while p.state.cluster().map(|v| v.link.clone()) != Some(Link::Connected) {
            assert!(start.elapsed() < Duration::from_secs(20), "node connected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let route = |hostname: &str| {
        format!("[[listeners.routes]]\nhostname = {hostname:?}\nbackend = \"127.0.0.1:9001\"\n")
    };
    let head = "[firewall]\nblocked_ips = [\"192.0.2.7\"]\n[[listeners]]\naddr = \"127.0.0.1:0\"\n";
    std::fs::write(&path, format!("{head}{}", route("fleet.test"))).unwrap();
    let path = path.display().to_string();

    // Applied through A: the fleet's change, one transaction (one store revision for the
    // rule and the route), which B serves and then has nothing to change.
    let applied = |p: &Proxy| p.state.cluster().map(|v| v.applied).unwrap_or_default();
    let before = applied(&a);
    let o = ctl(&a, &["apply", "-f", &path]).await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "+ firewall ip 192.0.2.7\n+ route fleet.test on 127.0.0.1:0: l4 -> 127.0.0.1:9001\n\
         applied 2 change(s) from "
            .to_owned()
            + &path
            + "\n"
    );
    // The rule and the route were written by one transaction: one revision, which A applied.
    let written: Vec<(String, i64)> = store
        .mod_revisions("/mc-proxy/apply/v1/")
        .await
        .into_iter()
        .filter(|(key, _)| key.contains("/firewall/") || key.contains("/routes/"))
        .collect();
    assert_eq!(written.len(), 2, "{written:?}");
    assert_eq!(written[0].1, written[1].1, "one transaction: {written:?}");
    assert!(applied(&a) >= written[0].1, "answered once applied here");
    assert!(before < written[0].1);
    let start = std::time::Instant::now();
    loop {
        let o = ctl(&b, &["diff", "-f", &path]).await;
        if o.status.code() == Some(0) {
            assert_eq!(stdout(&o), "no changes\n");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{}", stdout(&o));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let o = ctl(&b, &["apply", "-f", &path]).await;
    assert_eq!(stdout(&o), "no changes\n");
    assert!(applied(&b) >= written[0].1, "B applied that revision");

    // The store away: the first change is refused with the cluster's exit status, naming the
    // file, listener and route; nothing changed.
    store.kill(0);
    std::fs::write(
        &path,
        format!("{head}{}{}", route("fleet.test"), route("more.test")),
    )
    .unwrap();
    let o = ctl(&a, &["apply", "-f", &path]).await;
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{path}: listener 127.0.0.1:0, route more.test: refused"
        )),
        "{err}"
    );
    assert!(err.contains("nothing was applied"), "{err}");
    let o = ctl(&a, &["routes", "list", "--no-headers"]).await;
    assert!(!stdout(&o).contains("more.test"), "{}", stdout(&o));
}

#[tokio::test]
async fn certificates_near_their_end_are_listed_exported_and_logged() {
    let (_guard, logs) = capture_logs();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (soon_cert, soon_key) = pki.write_pem_valid(dir.path(), &["soon.test"], -80, 5);
    let (later_cert, later_key) = pki.write_pem_valid(dir.path(), &["later.test"], -1, 90);
    let route = |hostname: &str, cert: &str, key: &str| {
        format!(
            "[[listeners.routes]]\nhostname = {hostname:?}\nbackend = \"127.0.0.1:9\"\n\
             mode = \"l7\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
        )
    };
    let gone = dir.path().join("gone.pem").display().to_string();
    let proxy = Proxy::start(&format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n{}{}{}\
         [[listeners.routes]]\nhostname = \"plain.test\"\nbackend = \"127.0.0.1:9\"\n",
        route("soon.test", &soon_cert, &soon_key),
        route("later.test", &later_cert, &later_key),
        route("gone.test", &gone, &gone),
    ))
    .await;

    // The table: one line per L7 route (the L4 one has no certificate), its state by the
    // days left, the route not served with why.
    let o = ctl(&proxy, &["certs", "list"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let line = |host: &str| {
        out.lines()
            .find(|l| l.contains(host))
            .unwrap_or_else(|| panic!("no {host}:\n{out}"))
            .to_owned()
    };
    assert!(out.starts_with("LISTENER"), "{out}");
    assert!(!out.contains("plain.test"), "{out}");
    let soon = line("soon.test");
    assert!(
        soon.contains("file") && soon.contains("mc-proxy test CA") && soon.contains("expiring"),
        "{soon}"
    );
    assert!(
        soon.contains("expires in 4d") || soon.contains("expires in 5d"),
        "{soon}"
    );
    let later = line("later.test");
    assert!(
        later.contains(" ok ") && later.contains("89d left"),
        "{later}"
    );
    let gone_line = line("gone.test");
    assert!(
        gone_line.contains("not served") && gone_line.contains("gone.pem"),
        "{gone_line}"
    );

    // JSON: the exact end, as the daemon read it from the certificate.
    let o = ctl(&proxy, &["certs", "list", "--json"]).await;
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{json}");
    let soon_json = rows.iter().find(|r| r["hostname"] == "soon.test").unwrap();
    assert_eq!(soon_json["state"], "expiring");
    let not_after = soon_json["not_after_ms"].as_u64().unwrap() / 1000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = not_after as i64 - now as i64;
    assert!((5 * 86_400 - 120..=5 * 86_400).contains(&left), "{left}");

    // /metrics: each certificate's end as a timestamp, for an alert rule.
    let metrics = mc_proxy_tests::web::http1_request(proxy.metrics, "GET", "/metrics", &[]).await;
    let body = metrics.body;
    let series = format!(
        "mcproxy_route_certificate_expiry_timestamp_seconds{{listener=\"127.0.0.1:0\",route=\"soon.test\"}} {not_after}"
    );
    assert!(body.contains(&series), "{series} not in:\n{body}");
    assert!(!body.contains("route=\"plain.test\"} 0\nmcproxy_route_certificate"));

    // The log warns of the one near its end, not of the other.
    assert!(wait_for_log(&logs, "soon.test").await);
    let text = log_text(&logs);
    let warned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("certificate expires in"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("route=soon.test")
            && (warned[0].contains("expires in 5d 0h") || warned[0].contains("expires in 4d 23h")),
        "{}",
        warned[0]
    );
}

#[tokio::test]
async fn route_access_lists_are_set_replaced_cleared_and_shown() {
    let proxy = ProxyBuilder::new()
        .route("a.test", "127.0.0.1:9")
        .start()
        .await;
    let o = ctl(
        &proxy,
        &[
            "routes",
            "add",
            "--listener",
            L,
            "--hostname",
            "b.test",
            "--backend",
            "127.0.0.1:9",
            "--allow-from",
            "10.1.2.3/8",
            "--allow-from",
            "192.0.2.7",
            "--json",
        ],
    )
    .await;
    assert_ok(&o);
    let added: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        added["limits"]["allow_from"],
        serde_json::json!(["10.0.0.0/8", "192.0.2.7/32"])
    );
    let o = ctl(
        &proxy,
        &[
            "routes",
            "update",
            "--listener",
            L,
            "--hostname",
            "b.test",
            "--deny-from",
            "10.6.6.0/24",
        ],
    )
    .await;
    assert_ok(&o);
    let o = ctl(&proxy, &["routes", "show", "b.test"]).await;
    assert_ok(&o);
    assert!(
        stdout(&o)
            .contains("limits    allow from 10.0.0.0/8, 192.0.2.7/32; deny from 10.6.6.0/24\n"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("refused   0 denied (reset)"),
        "{}",
        stdout(&o)
    );
    let o = ctl(
        &proxy,
        &[
            "routes",
            "update",
            "--listener",
            L,
            "--hostname",
            "b.test",
            "--allow-any",
        ],
    )
    .await;
    assert_ok(&o);
    let o = ctl(&proxy, &["routes", "show", "b.test"]).await;
    assert!(
        stdout(&o).contains("limits    deny from 10.6.6.0/24\n"),
        "{}",
        stdout(&o)
    );
    let o = ctl(
        &proxy,
        &[
            "routes",
            "update",
            "--listener",
            L,
            "--hostname",
            "b.test",
            "--deny-from",
            "office",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("deny_from[0]: \"office\" is not an address or network"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn talkers_lists_the_addresses_limits_refused_most_first() {
    let proxy = Proxy::start(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\nmax_conns_per_client = 1\n\
         [[listeners.routes]]\nhostname = \"a.test\"\nbackend = \"127.0.0.1:9\"\n",
    )
    .await;
    let o = ctl(&proxy, &["talkers"]).await;
    assert_ok(&o);
    assert!(
        stdout(&o).contains("(no client hit a limit since start)"),
        "{}",
        stdout(&o)
    );
    // 127.0.0.4 holds its one connection, then is refused three times; 127.0.0.5 once.
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let _held = tcp_connect_from(ip("127.0.0.4"), proxy.addr())
        .await
        .unwrap();
    let _other = tcp_connect_from(ip("127.0.0.5"), proxy.addr())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (source, times) in [("127.0.0.4", 3), ("127.0.0.5", 1)] {
        for _ in 0..times {
            let mut c = tcp_connect_from(ip(source), proxy.addr()).await.unwrap();
            assert_reset(&mut c).await;
        }
    }
    let o = ctl(&proxy, &["talkers", "--no-headers"]).await;
    assert_ok(&o);
    let lines: Vec<Vec<String>> = stdout(&o)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0][..4], ["127.0.0.4", "3", "client_conn_limit", "-"]);
    assert_eq!(lines[1][..2], ["127.0.0.5", "1"]);
    let o = ctl(&proxy, &["talkers", "--limit", "1", "--json"]).await;
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["client"], "127.0.0.4");
    assert_eq!(json[0]["hits"], 3);
}

#[tokio::test]
async fn an_http_listener_is_added_with_its_kind_and_listed_as_a_redirect() {
    let proxy = ProxyBuilder::new()
        .route("a.test", "127.0.0.1:9")
        .start()
        .await;
    let o = ctl(
        &proxy,
        &[
            "listeners",
            "add",
            "127.0.0.8:0",
            "--kind",
            "http",
            "--redirect-port",
            "8443",
        ],
    )
    .await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.starts_with("http listener 127.0.0.8:0 added")
            && out.contains("redirects everything else to https:// port 8443"),
        "{out}"
    );
    let o = ctl(&proxy, &["listeners", "list"]).await;
    let out = stdout(&o);
    let row = out.lines().find(|l| l.starts_with("127.0.0.8:0")).unwrap();
    assert!(row.split_whitespace().any(|c| c == "http"), "{out}");
    assert!(
        out.contains("listener 127.0.0.8:0: plain HTTP, answers ACME http-01 and redirects to https://HOST:8443/"),
        "{out}"
    );
    let o = ctl(&proxy, &["listeners", "list", "--json"]).await;
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    let http = json
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["addr"] == "127.0.0.8:0")
        .unwrap();
    assert_eq!(http["kind"], "http");
    assert_eq!(http["redirect_port"], 8443);

    // Refused with why, and nothing added: a kind it does not know, a redirect port on a
    // tls listener, a route on the http one.
    let o = ctl(
        &proxy,
        &["listeners", "add", "127.0.0.9:0", "--kind", "udp"],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "usage");
    assert!(
        stderr(&o).contains("invalid listener kind \"udp\""),
        "{}",
        stderr(&o)
    );
    let o = ctl(
        &proxy,
        &["listeners", "add", "127.0.0.9:0", "--redirect-port", "8443"],
    )
    .await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("redirect_port is for http listeners"),
        "{}",
        stderr(&o)
    );
    let o = ctl(
        &proxy,
        &[
            "routes",
            "add",
            "--listener",
            "127.0.0.8:0",
            "--hostname",
            "b.test",
            "--backend",
            "127.0.0.1:9",
        ],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("holds no routes"), "{}", stderr(&o));
    let o = ctl(&proxy, &["listeners", "list", "--json"]).await;
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
}
