//! The cluster's link to etcd against a real etcd (`mc_proxy_tests::etcd`): the connection
//! survives one member of three lost, fails in bounded time naming the endpoints when quorum is
//! lost, and works again once the members are back; TLS with a client certificate, and
//! etcd's users, with their failures told apart from an outage.
//!
//! `.ci/run` installs etcd and sets `MCPROXY_REQUIRE_ETCD=1`, so in CI a missing etcd fails.
//! Elsewhere these tests skip with a message when `etcd` is not on the PATH.

use std::time::{Duration, Instant};

use mc_proxy::control::cluster::client::{ClusterError, call, connect};
use mc_proxy::control::cluster::settings::{
    ClusterAuth, ClusterConfig, ClusterIdentity, ClusterTls,
};
use mc_proxy_tests::Pki;
use mc_proxy_tests::etcd::{self, EtcdCluster, EtcdTls};

/// Short enough for a test, long enough for a loaded CI machine to answer a healthy put.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

fn config(endpoints: Vec<String>) -> ClusterConfig {
    ClusterConfig {
        endpoints,
        prefix: "/mc-proxy/test".into(),
        name: "node-a".into(),
        tls: None,
        auth: None,
        connect_timeout: Duration::from_secs(1),
        request_timeout: REQUEST_TIMEOUT,
        lease_ttl: Duration::from_secs(10),
        check_interval: Duration::from_secs(30),
    }
}

/// Puts `key` = `value` and reads it back.
async fn put_and_get(
    cfg: &ClusterConfig,
    client: &etcd_client::Client,
    key: &str,
    value: &str,
) -> Result<(), ClusterError> {
    let kv = client.kv_client();
    call(cfg, || {
        let mut kv = kv.clone();
        async move { kv.put(key, value, None).await }
    })
    .await?;
    let got = call(cfg, || {
        let mut kv = kv.clone();
        async move { kv.get(key, None).await }
    })
    .await?;
    let values: Vec<&[u8]> = got.kvs().iter().map(|kv| kv.value()).collect();
    assert_eq!(values, [value.as_bytes()], "{key}");
    Ok(())
}

#[tokio::test]
async fn etcd_survives_one_member_lost_and_refuses_writes_in_bounded_time_without_quorum() {
    if !etcd::available() {
        return;
    }
    let mut etcd = EtcdCluster::start(3).await;
    let cfg = config(etcd.endpoints());
    let client = connect(&cfg).await.expect("connect to a healthy cluster");
    put_and_get(&cfg, &client, "/mc-proxy/test/a", "1")
        .await
        .unwrap();

    // One member lost, a follower: nothing noticed. (Losing the leader stalls writes for an
    // election, and a write in flight then times out: the sync engine's to retry.)
    let leader = etcd.leader().await.expect("a leader");
    let follower = (leader + 1) % 3;
    etcd.kill(follower);
    for i in 0..5 {
        put_and_get(&cfg, &client, "/mc-proxy/test/a", &format!("one-down-{i}"))
            .await
            .unwrap_or_else(|e| panic!("put {i} with one member down: {e}"));
    }

    // Quorum lost (the leader killed too): a put fails within the request timeout, naming the
    // endpoints. The survivor still believes in its leader for an election timeout and
    // forwards the put to it, where it is lost: only the timeout ends the wait.
    etcd.kill(leader);
    let started = Instant::now();
    let err = put_and_get(&cfg, &client, "/mc-proxy/test/a", "no-quorum")
        .await
        .expect_err("a put without quorum");
    let took = started.elapsed();
    eprintln!("without quorum, after {took:?}: {err}");
    assert!(err.is_unreachable(), "{err}");
    let text = err.to_string();
    for endpoint in etcd.endpoints() {
        assert!(text.contains(&endpoint), "{text}");
    }
    assert!(
        took <= REQUEST_TIMEOUT + Duration::from_millis(500),
        "failed after {took:?}, past the request timeout"
    );
    // A timeout never comes early ("no leader", once the survivor knows, may come at once).
    if text.contains("no answer within") {
        assert!(
            took >= REQUEST_TIMEOUT - Duration::from_millis(10),
            "timed out early, after {took:?}"
        );
    }
    // Connecting while quorum is lost fails the same way, in bounded time.
    let started = Instant::now();
    let Err(err) = connect(&cfg).await else {
        panic!("connected without quorum")
    };
    assert!(err.is_unreachable(), "{err}");
    assert!(
        started.elapsed() <= cfg.connect_timeout + REQUEST_TIMEOUT + Duration::from_millis(500),
        "connect failed after {:?}",
        started.elapsed()
    );

    // Back: the same client works again, the value from before the loss intact.
    etcd.restart(follower);
    etcd.restart(leader);
    etcd.wait_healthy().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match put_and_get(&cfg, &client, "/mc-proxy/test/b", "back").await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("etcd is back but the client is not: {e}"),
        }
    }
    let kv = client.kv_client();
    let got = call(&cfg, || {
        let mut kv = kv.clone();
        async move { kv.get("/mc-proxy/test/a", None).await }
    })
    .await
    .unwrap();
    // A write that timed out may still be applied later (etcd makes no promise either way):
    // why a node applies changes from the watch, never from its own request's answer.
    let value = got.kvs()[0].value();
    assert!(
        value == b"one-down-4" || value == b"no-quorum",
        "{:?}",
        String::from_utf8_lossy(value)
    );

    // A clean stop and restart of a member: nothing noticed either.
    etcd.stop(follower);
    put_and_get(&cfg, &client, "/mc-proxy/test/c", "stopped")
        .await
        .unwrap();
    etcd.restart(follower);
    etcd.wait_healthy().await;
    put_and_get(&cfg, &client, "/mc-proxy/test/c", "restarted")
        .await
        .unwrap();

    // The fixture's compaction: older revisions are gone.
    let revision = etcd.compact_to_latest().await;
    let old = call(&cfg, || {
        let mut kv = kv.clone();
        let options = etcd_client::GetOptions::new().with_revision(revision - 1);
        async move { kv.get("/mc-proxy/test/a", Some(options)).await }
    })
    .await
    .expect_err("a read below the compacted revision");
    assert!(old.to_string().contains("compacted"), "{old}");
}

/// A cluster nobody listens on: `connect` fails within its bound, naming the endpoints.
#[tokio::test]
async fn connecting_to_no_etcd_fails_in_bounded_time_naming_the_endpoints() {
    // Loopback ports nothing listens on: bound, then closed.
    let endpoints: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        })
        .collect();
    let cfg = config(endpoints.clone());
    let started = Instant::now();
    let Err(err) = connect(&cfg).await else {
        panic!("connected where nothing listens")
    };
    let took = started.elapsed();
    assert!(err.is_unreachable(), "{err}");
    for e in &endpoints {
        assert!(err.to_string().contains(e.as_str()), "{err}");
    }
    assert!(
        took <= cfg.connect_timeout + REQUEST_TIMEOUT + Duration::from_millis(500),
        "{took:?}"
    );
}

/// TLS to etcd with a client certificate (`--client-cert-auth`): `connect` with the CA and the
/// identity works; a CA that did not sign the members' certificate is a TLS error, not an
/// outage; no client certificate is refused.
#[tokio::test]
async fn etcd_over_tls_needs_the_ca_and_takes_a_client_certificate() {
    if !etcd::available() {
        return;
    }
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = pki.write_pem(files.path(), &["127.0.0.1"]);
    let (client_cert, client_key) = pki.write_pem(files.path(), &["mc-proxy-node"]);
    let ca = files.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let etcd = EtcdCluster::start_tls(
        1,
        EtcdTls {
            ca: ca.clone(),
            cert: cert.into(),
            key: key.into(),
            client_cert: client_cert.clone().into(),
            client_key: client_key.clone().into(),
        },
    )
    .await;
    let identity = ClusterIdentity {
        cert: std::fs::read(&client_cert).unwrap(),
        key: std::fs::read(&client_key).unwrap(),
    };
    let mut cfg = config(etcd.endpoints());
    cfg.tls = Some(ClusterTls {
        ca: pki.ca_pem().into_bytes(),
        identity: Some(identity.clone()),
    });
    let client = connect(&cfg).await.expect("connect over TLS");
    put_and_get(&cfg, &client, "/mc-proxy/test/tls", "1")
        .await
        .unwrap();

    // Another CA: the members' certificate does not chain to it.
    let mut wrong = cfg.clone();
    wrong.tls = Some(ClusterTls {
        ca: Pki::new().ca_pem().into_bytes(),
        identity: Some(identity),
    });
    let started = Instant::now();
    let Err(err) = connect(&wrong).await else {
        panic!("connected with the wrong CA")
    };
    eprintln!("wrong CA, after {:?}: {err}", started.elapsed());
    assert!(matches!(err, ClusterError::Tls(_)), "{err}");

    // No client certificate: etcd ends the handshake.
    let mut anonymous = cfg.clone();
    anonymous.tls = Some(ClusterTls {
        ca: pki.ca_pem().into_bytes(),
        identity: None,
    });
    let Err(err) = connect(&anonymous).await else {
        panic!("connected without a client certificate")
    };
    eprintln!("no client certificate: {err}");
    assert!(
        matches!(err, ClusterError::Tls(_) | ClusterError::Unreachable { .. }),
        "{err}"
    );
}

/// etcd authentication: the right user and password connect; a wrong password is an `Auth`
/// error, at once, not an outage.
#[tokio::test]
async fn etcd_auth_takes_the_user_and_refuses_a_wrong_password() {
    if !etcd::available() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let mut admin = etcd.client().await;
    admin.user_add("root", "root-pw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let mut cfg = config(etcd.endpoints());
    cfg.auth = Some(ClusterAuth {
        username: "root".into(),
        password: "root-pw".into(),
    });
    let client = connect(&cfg).await.expect("connect with the password");
    put_and_get(&cfg, &client, "/mc-proxy/test/auth", "1")
        .await
        .unwrap();

    cfg.auth = Some(ClusterAuth {
        username: "root".into(),
        password: "wrong".into(),
    });
    let started = Instant::now();
    let Err(err) = connect(&cfg).await else {
        panic!("connected with a wrong password")
    };
    eprintln!("wrong password, after {:?}: {err}", started.elapsed());
    assert!(matches!(err, ClusterError::Auth(_)), "{err}");
    assert!(
        started.elapsed() < REQUEST_TIMEOUT,
        "{:?}",
        started.elapsed()
    );

    // No credentials at all: the read of the prefix is refused.
    cfg.auth = None;
    let Err(err) = connect(&cfg).await else {
        panic!("connected without credentials to an etcd with auth")
    };
    eprintln!("no credentials: {err}");
    assert!(matches!(err, ClusterError::Auth(_)), "{err}");
}
