//! `mcproxyctl` as built, against a live daemon: every subcommand's table, JSON and exit code.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mc_proxy_tests::*;
use serde_json::Value;

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
            "--send-proxy-protocol=false",
        ],
    )
    .await;
    assert_ok(&o);
    let o = ctl(&proxy, &["routes", "list", "--listener", L, "--json"]).await;
    assert_ok(&o);
    let routes: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let new = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"]["hostname"] == "new.test")
        .unwrap();
    assert_eq!(new["route"]["backend"], "127.0.0.1:9555");
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
    let proxy = Proxy::start(&format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[[listeners.routes]]\nhostname = \"a.test\"\nbackend = \"{}\"",
        backend.addr
    ))
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
    assert_eq!(kinds, ["connection_opened", "connection_closed"]);
    assert_eq!(closed["hostname"], "a.test");
    assert_eq!(closed["outcome"], "closed");
    assert!(closed["bytes_in"].as_u64().unwrap() > 0);
}
