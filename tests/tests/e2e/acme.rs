//! ACME against a real ACME server (pebble): orders validated by tls-alpn-01 through the
//! proxy's own listener, certificates that chain to pebble's root.

use std::time::Duration;

use mc_proxy::control::acme::{Orderer, http};
use mc_proxy::model::acme::Challenges;
use mc_proxy_tests::pebble::{self, Pebble};
use mc_proxy_tests::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

#[tokio::test]
async fn an_order_is_validated_by_tls_alpn_01_on_the_listener_and_chains_to_the_cas_root() {
    if !pebble::available() {
        return;
    }
    let (_guard, logs) = capture_logs();
    let proxy = Proxy::start("[[listeners]]\naddr = \"127.0.0.1:0\"\n").await;
    let challenges: &Challenges = &proxy.state.acme;
    let ca = Pebble::start(proxy.addr().port(), 1).await;

    let client = http::Client::new(Some(&std::fs::read(&ca.api_ca).unwrap())).unwrap();
    let (orderer, created) = Orderer::connect(&ca.directory, &[], None, client.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", ca.log_tail()));
    let credentials = created.expect("a new account's credentials to keep");
    let issued = tokio::time::timeout(
        Duration::from_secs(60),
        orderer.order(
            "acme-a.test",
            challenges,
            &[mc_proxy::control::acme::settings::ChallengeKind::TlsAlpn01],
            None,
            None,
            mc_proxy::control::acme::settings::KeyType::EcdsaP384,
        ),
    )
    .await
    .expect("issued within 60 s")
    .unwrap_or_else(|e| panic!("{e}\n{}", ca.log_tail()));
    assert!(
        challenges
            .answer(Some("acme-a.test"), &[b"acme-tls/1".to_vec()])
            .is_none(),
        "the challenge is gone once the order is done"
    );
    // The listener showed the CA's validation the challenge and logged it as such.
    assert!(
        wait_for_log(&logs, "outcome=\"acme_challenge\"").await,
        "{}",
        log_text(&logs)
    );
    let line = log_text(&logs)
        .lines()
        .find(|l| l.contains("outcome=\"acme_challenge\""))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("sni=\"acme-a.test\"") && !line.contains("error="),
        "{line}"
    );

    // The chain is for the name and leads to pebble's root.
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    assert!(chain.len() >= 2, "leaf and intermediate");
    let root = CertificateDer::from_pem_slice(ca.issuer_root_pem().await.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let leaf = rustls::server::ParsedCertificate::try_from(&chain[0]).unwrap();
    let provider = mc_proxy::model::certs::provider();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &roots,
        &chain[1..],
        UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
    .unwrap();
    rustls::client::verify_server_name(&leaf, &ServerName::try_from("acme-a.test").unwrap())
        .unwrap();
    // The key type asked for: P-384, in the leaf as in the key.
    let key = rcgen::KeyPair::from_pem(&issued.key_pem).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P384_SHA384);
    const SECP384R1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    assert!(chain[0].windows(SECP384R1.len()).any(|w| w == SECP384R1));

    // The account comes back from its credentials: no second account.
    let (_, again) = Orderer::connect(&ca.directory, &[], Some(credentials), client)
        .await
        .unwrap();
    assert!(again.is_none());
}

/// Accepts any server certificate and keeps it: what a CA's validation does (it checks the
/// acmeIdentifier, not a chain).
#[derive(Debug)]
struct Keep(std::sync::Mutex<Option<CertificateDer<'static>>>);

impl rustls::client::danger::ServerCertVerifier for Keep {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        mc_proxy::model::certs::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The certificate `addr` shows a client asking for `sni` with `alpn`.
async fn shown(
    addr: std::net::SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> Option<CertificateDer<'static>> {
    let keep = std::sync::Arc::new(Keep(std::sync::Mutex::new(None)));
    let mut config =
        rustls::ClientConfig::builder_with_provider(mc_proxy::model::certs::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::clone(&keep) as _)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let _ = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await;
    keep.0.lock().unwrap().take()
}

#[tokio::test]
async fn a_pending_challenge_changes_nothing_for_other_clients() {
    let pki = Pki::new();
    let backend = mc_proxy_tests::web::H1Backend::start().await;
    let proxy = mc_proxy_tests::web::web_proxy(&pki, backend.addr)
        .start()
        .await;
    let challenge = mc_proxy::model::acme::challenge_certificate("web.test", &[9; 32]).unwrap();
    let challenge_der = challenge.cert[0].clone();
    proxy.state.acme.insert("web.test", challenge);

    // The validation (acme-tls/1 alone) sees the challenge; a browser sees the route's own.
    let validation = shown(proxy.addr(), "web.test", &[b"acme-tls/1"]).await;
    assert_eq!(validation.as_ref(), Some(&challenge_der));
    let browser = shown(proxy.addr(), "web.test", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_ne!(browser, challenge_der);
    let mixed = shown(proxy.addr(), "web.test", &[b"h2", b"acme-tls/1"])
        .await
        .unwrap();
    assert_ne!(
        mixed, challenge_der,
        "acme-tls/1 among others is not a validation"
    );
    // Another name: no challenge, and no route: refused, no certificate shown.
    assert_eq!(
        shown(proxy.addr(), "other.test", &[b"acme-tls/1"]).await,
        None
    );
    proxy.state.acme.remove("web.test");
    // No challenge pending: a validation-looking hello is refused, and shown no certificate
    // at all (the route speaks h2 and HTTP/1.1 only: no ALPN in common, so the handshake
    // fails before any certificate is sent).
    let after = shown(proxy.addr(), "web.test", &[b"acme-tls/1"]).await;
    assert_eq!(after, None, "done: nothing leaked");
}

/// The proxy config of the ACME tests: `[acme]` on `ca`, a listener on `port`, `routes`.
fn acme_config(ca: &Pebble, port: u16, routes: &str) -> String {
    format!(
        "[acme]\ndirectory = {:?}\nca = {:?}\nterms_of_service_agreed = true\n\
         contact = [\"mailto:ops@acme.test\"]\n\
         [[listeners]]\naddr = \"127.0.0.1:{port}\"\n{routes}",
        ca.directory,
        ca.api_ca.display().to_string()
    )
}

/// An L7 acme route to an HTTP/1.1 `backend`, as the API takes it.
fn acme_route(hostname: &str, backend: std::net::SocketAddr) -> mc_proxy_shared::Route {
    mc_proxy_shared::Route {
        hostname: hostname.into(),
        backends: vec![mc_proxy_shared::RouteBackend::new(backend.to_string())],
        mode: mc_proxy_shared::Mode::L7,
        backend_protocol: mc_proxy_shared::BackendProtocol::Http1,
        acme: true,
        ..Default::default()
    }
}

/// A client config trusting only pebble's issuing root.
async fn trusting(ca: &Pebble) -> std::sync::Arc<rustls::ClientConfig> {
    let root = CertificateDer::from_pem_slice(ca.issuer_root_pem().await.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(mc_proxy::model::certs::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The status of `GET /` on `hostname` through `addr` (HTTP/1.1 over TLS, checked with
/// `config`).
async fn get(
    addr: std::net::SocketAddr,
    hostname: &str,
    path: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> u16 {
    let tls = tls_connect(addr, hostname, config)
        .await
        .expect("TLS to the route");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = ::http::Request::builder()
        .uri(path)
        .header("host", hostname)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    sender.send_request(req).await.unwrap().status().as_u16()
}

/// Waits (30 s at most) until `hostname` is served on the proxy's first listener.
async fn served(proxy: &Proxy, hostname: &str) {
    for _ in 0..3000 {
        if proxy.state.listeners()[0].lookup(hostname).is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{hostname} not served within 30 s");
}

#[tokio::test]
async fn an_acme_route_waits_then_serves_a_certificate_kept_across_a_restart() {
    if !pebble::available() {
        return;
    }
    let (_guard, logs) = capture_logs();
    let reserved = mc_proxy_tests::ReservedPort::new();
    let port = reserved.port;
    let ca = Pebble::start(port, 1).await;
    let backend = mc_proxy_tests::web::H1Backend::start().await;
    let route = |hostname: &str| {
        format!(
            "[[listeners.routes]]\nhostname = {hostname:?}\nbackend = \"{}\"\nmode = \"l7\"\n\
             backend_protocol = \"http1\"\nacme = true\n",
            backend.addr
        )
    };
    drop(reserved);
    let proxy = Proxy::start(&acme_config(&ca, port, &route("acme.test"))).await;

    // Served once issued; a client that trusts the CA's root gets through to the backend.
    served(&proxy, "acme.test").await;
    let client = trusting(&ca).await;
    let answer = get(proxy.addr(), "acme.test", "/", client.clone()).await;
    assert_eq!(answer, 200);

    // A route added through the API waits (the answer says so), then is served too.
    let mut admin = proxy.admin().await;
    let o = admin
        .add_route(
            &proxy.addr().to_string(),
            acme_route("api.acme.test", backend.addr),
        )
        .await
        .unwrap();
    assert!(
        o.1.iter()
            .any(|w| w.contains("waiting for its ACME certificate")),
        "{:?}",
        o.1
    );
    served(&proxy, "api.acme.test").await;
    let answer = get(proxy.addr(), "api.acme.test", "/", client.clone()).await;
    assert_eq!(answer, 200);
    let orders = log_text(&logs)
        .matches("ordering an ACME certificate")
        .count();
    assert_eq!(orders, 2, "one order per route");
    // Listed with where it comes from and who issued it.
    let routes = admin.list_routes(None).await.unwrap();
    let cert = routes
        .iter()
        .find(|r| r.route.hostname == "acme.test")
        .and_then(|r| r.certificate.clone())
        .unwrap();
    assert_eq!(cert.source, "acme");
    assert!(
        cert.issuer.starts_with("Pebble Intermediate CA"),
        "{}",
        cert.issuer
    );

    // A restart serves both from the database at once, with no new order.
    let dir = proxy.stop_and_keep_dir().await;
    let proxy = Proxy::start_in(dir, &acme_config(&ca, port, &route("acme.test"))).await;
    assert!(proxy.state.listeners()[0].lookup("acme.test").is_some());
    assert!(proxy.state.listeners()[0].lookup("api.acme.test").is_some());
    let answer = get(proxy.addr(), "acme.test", "/", client).await;
    assert_eq!(answer, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log_text(&logs)
            .matches("ordering an ACME certificate")
            .count(),
        orders,
        "nothing ordered again"
    );

    // `certs renew`: a new certificate now, long before its renewal time, served in place
    // of the first.
    let first = served_leaf(proxy.addr(), "acme.test", trusting(&ca).await)
        .await
        .unwrap();
    let mut admin = proxy.admin().await;
    admin.renew_certificate("acme.test").await.unwrap();
    let mut renewed = false;
    for _ in 0..300 {
        let leaf = served_leaf(proxy.addr(), "acme.test", trusting(&ca).await)
            .await
            .expect("served all along");
        if leaf != first {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(renewed, "renewed on demand");
    // Refused with why for a name that has no acme route.
    let e = admin.renew_certificate("nowhere.test").await.unwrap_err();
    assert!(e.to_string().contains("no route nowhere.test"), "{e}");
}

#[tokio::test]
async fn a_certificate_is_renewed_before_its_end_and_a_refused_order_is_shown_and_retried_later() {
    if !pebble::available() {
        return;
    }
    let (_guard, logs) = capture_logs();
    let reserved = mc_proxy_tests::ReservedPort::new();
    let port = reserved.port;
    // Certificates for 9 s: renewed when a third is left, 3 s before the end.
    let ca = Pebble::start_with(port, 1, Some(9)).await;
    let backend = mc_proxy_tests::web::H1Backend::start().await;
    let route = |hostname: &str| {
        format!(
            "[[listeners.routes]]\nhostname = {hostname:?}\nbackend = \"{}\"\nmode = \"l7\"\n\
             backend_protocol = \"http1\"\nacme = true\n",
            backend.addr
        )
    };
    drop(reserved);
    let config = acme_config(&ca, port, &(route("short.test") + &route("blocked.test")));
    let proxy = Proxy::start(&config).await;
    served(&proxy, "short.test").await;
    let client = trusting(&ca).await;
    let first = served_leaf(proxy.addr(), "short.test", client.clone())
        .await
        .unwrap();
    let issued = std::time::Instant::now();

    // The refused name waits, says why, and is not asked again at once (back-off).
    let mut admin = proxy.admin().await;
    let mut reason = String::new();
    for _ in 0..300 {
        let routes = admin.list_routes(None).await.unwrap();
        let blocked = routes
            .iter()
            .find(|r| r.route.hostname == "blocked.test")
            .unwrap();
        reason = blocked.not_served.clone().unwrap_or_default();
        if reason.contains("last order failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reason.starts_with("waiting for its ACME certificate") && reason.contains("blocked.test"),
        "{reason}"
    );
    assert!(log_text(&logs).contains("ACME order failed"), "a warn line");
    // Its handshakes are reset, and the log says why.
    assert!(
        served_leaf(proxy.addr(), "blocked.test", client.clone())
            .await
            .is_err()
    );
    assert!(
        wait_for_log(
            &logs,
            "route blocked.test is not served: waiting for its ACME certificate"
        )
        .await,
        "{}",
        log_text(&logs)
    );
    let metrics = mc_proxy_tests::web::http1_request(proxy.metrics, "GET", "/metrics", &[]).await;
    assert!(
        metrics
            .body
            .contains("mcproxy_acme_orders_total{outcome=\"failed\"} 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("mcproxy_acme_orders_total{outcome=\"issued\"} 1")
    );

    // Renewed: a new certificate before the first one ends, served without a gap: a client
    // handshaking back to back meanwhile never fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = tokio::spawn({
        let (stop, client, addr) = (stop.clone(), client.clone(), proxy.addr());
        async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match served_leaf(addr, "short.test", client.clone()).await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        }
    });
    let mut renewed = None;
    while issued.elapsed() < Duration::from_secs(9) {
        let leaf = served_leaf(proxy.addr(), "short.test", client.clone())
            .await
            .expect("served all along");
        if leaf != first {
            renewed = Some(issued.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = hammer.await.unwrap();
    assert_eq!(
        failed, 0,
        "no failed handshake across the swap ({ok} succeeded)"
    );
    assert!(ok > 20, "handshakes went on: {ok}");
    let renewed = renewed.expect("renewed before the first certificate ended");
    assert!(
        renewed >= Duration::from_secs(5),
        "not before a third was left: {renewed:?}"
    );
    let blocked_orders = log_text(&logs)
        .lines()
        .filter(|l| l.contains("ordering an ACME certificate") && l.contains("blocked.test"))
        .count();
    assert_eq!(
        blocked_orders, 1,
        "the refused name waits its back-off (a minute)"
    );
}

#[tokio::test]
async fn without_acme_settings_an_acme_route_is_refused_and_nothing_is_stored() {
    let proxy = Proxy::start("[[listeners]]\naddr = \"127.0.0.1:0\"\n").await;
    let mut admin = proxy.admin().await;
    let refused = admin
        .add_route(
            &proxy.addr().to_string(),
            mc_proxy_shared::Route {
                hostname: "acme.test".into(),
                backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9")],
                mode: mc_proxy_shared::Mode::L7,
                acme: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("no [acme] section"),
        "{refused}"
    );
    assert!(admin.list_routes(None).await.unwrap().is_empty());
    // Nothing to renew either: a route of files (here an l4 one) says what renews it.
    admin
        .add_route(
            "127.0.0.1:0",
            mc_proxy_shared::Route {
                hostname: "files.test".into(),
                backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9")],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let e = admin.renew_certificate("files.test").await.unwrap_err();
    assert!(e.to_string().contains("not an acme route"), "{e}");
}

/// A plain-HTTP listener of the proxy: its bound address (the second listener).
fn http_listener(proxy: &Proxy) -> std::net::SocketAddr {
    let l = &proxy.state.listeners()[1];
    assert_eq!(l.kind, mc_proxy_shared::ListenerKind::Http);
    l.bound().expect("bound")
}

/// Sends `request` raw to `addr` and reads to EOF (10 s at most): the answer and how long
/// the connection lasted.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was not closed within 10 s");
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn the_http_listener_redirects_to_https_and_answers_bad_input_with_an_error_never_a_hang() {
    let (_guard, logs) = capture_logs();
    let proxy = Proxy::start(
        "[proxy]\nrequest_header_timeout = \"1s\"\n\
         [[listeners]]\naddr = \"127.0.0.1:0\"\n\
         [[listeners]]\naddr = \"127.0.0.2:0\"\nkind = \"http\"\nredirect_port = 8443\n",
    )
    .await;
    let addr = http_listener(&proxy);

    // Same host (its port dropped), path and query, on https and the redirect port; 308
    // keeps the method, so a POST is redirected too; one request per connection.
    let (answer, _) = raw(
        addr,
        b"GET /a/b?c=d HTTP/1.1\r\nHost: Example.test:80\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 308 "), "{answer}");
    assert!(
        answer.contains("\r\nlocation: https://Example.test:8443/a/b?c=d\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    let (answer, _) = raw(
        addr,
        b"POST /form HTTP/1.1\r\nHost: [2001:db8::1]\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 308 "), "{answer}");
    assert!(
        answer.contains("\r\nlocation: https://[2001:db8::1]:8443/form\r\n"),
        "{answer}"
    );
    // A proxy-style absolute URI names the host.
    let (answer, _) = raw(
        addr,
        b"GET http://abs.test/x HTTP/1.1\r\nHost: other.test\r\n\r\n",
    )
    .await;
    assert!(
        answer.contains("\r\nlocation: https://abs.test:8443/x\r\n"),
        "{answer}"
    );

    // No pending challenge: 404, not a redirect (a CA must not follow one to nowhere).
    let (answer, _) = raw(
        addr,
        b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    // A pending one: its key authorization, for its own name only.
    proxy
        .state
        .acme
        .insert_token("a.test", "tok", "tok.thumbprint".into());
    let (answer, _) = raw(
        addr,
        b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\ntok.thumbprint"), "{answer}");
    let (answer, _) = raw(
        addr,
        b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: b.test\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    proxy.state.acme.remove_token("tok");

    // Bad input: an answer saying so, then the close; nothing of it echoed back.
    let huge_host = format!("GET / HTTP/1.1\r\nHost: a{}b\r\n\r\n", " ".repeat(1000));
    let oversized = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "x".repeat(16 * 1024)
    );
    let cases: [(&str, &[u8], &str); 6] = [
        ("no Host", b"GET / HTTP/1.0\r\n\r\n", "400"),
        ("a bad Host", huge_host.as_bytes(), "400"),
        (
            "userinfo",
            b"GET / HTTP/1.1\r\nHost: u@a.test\r\n\r\n",
            "400",
        ),
        (
            "OPTIONS *",
            b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "400",
        ),
        (
            "a TLS ClientHello",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n",
            "400",
        ),
        ("a head past 8 KiB", oversized.as_bytes(), "431"),
    ];
    for (what, request, status) in cases {
        let (answer, took) = raw(addr, request).await;
        assert_eq!(answer.split(' ').nth(1), Some(status), "{what}: {answer}");
        assert!(answer.len() < 1024, "{what}: nothing echoed: {answer}");
        assert!(took < Duration::from_secs(1), "{what}: at once: {took:?}");
    }

    // A head that never ends: closed after request_header_timeout (1 s), not before.
    let (answer, took) = raw(addr, b"GET / HTTP/1.1\r\nHost: a.te").await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}: {answer}"
    );
    assert!(
        wait_for_log(&logs, "outcome=\"request_header_timeout\"").await,
        "{}",
        log_text(&logs)
    );

    // It holds no routes, by the API or the file; redirect_port is for it alone.
    let mut admin = proxy.admin().await;
    let refused = admin
        .add_route(
            "127.0.0.2:0",
            mc_proxy_shared::Route {
                hostname: "app.test".into(),
                backends: vec![mc_proxy_shared::RouteBackend::new("127.0.0.1:9")],
                ..Default::default()
            },
        )
        .await;
    let e = refused.unwrap_err().to_string();
    assert!(e.contains("is an http listener: it holds no routes"), "{e}");
    let before = admin.list_routes(None).await.unwrap().len();
    let e = admin
        .add_listener_with(
            "127.0.0.3:0",
            mc_proxy_shared::client::NewListener {
                redirect_port: Some(8443),
                ..Default::default()
            },
            mc_proxy_shared::client::ListenerUpdate::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("redirect_port is for http listeners"), "{e}");
    assert_eq!(admin.status().await.unwrap().listeners.len(), 2);
    assert_eq!(admin.list_routes(None).await.unwrap().len(), before);
    let listed = admin.status().await.unwrap().listeners;
    assert_eq!(listed[1].kind, mc_proxy_shared::ListenerKind::Http);
    assert_eq!(listed[1].redirect_port, 8443);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mc-proxy.toml");
    std::fs::write(
        &file,
        "[database]\npath = \"/tmp/unused.db\"\n[admin]\nsocket = \"/tmp/unused.sock\"\n\
         [[listeners]]\naddr = \"127.0.0.1:80\"\nkind = \"http\"\n\
         [[listeners.routes]]\nhostname = \"app.test\"\nbackend = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    let problems = mc_proxy::control::config::Config::load(&file)
        .unwrap_err()
        .to_string();
    assert!(
        problems.contains("listener 127.0.0.1:80, route \"app.test\"")
            && problems.contains("an http listener holds no routes"),
        "{problems}"
    );
}

#[tokio::test]
async fn an_order_is_validated_by_http_01_on_the_http_listener_and_served() {
    if !pebble::available() {
        return;
    }
    let (_guard, logs) = capture_logs();
    let (tls, http) = (
        mc_proxy_tests::ReservedPort::new(),
        mc_proxy_tests::ReservedPort::new(),
    );
    let (tls_port, http_port) = (tls.port, http.port);
    let ca = Pebble::start(tls_port, http_port).await;
    let backend = mc_proxy_tests::web::H1Backend::start().await;
    let config = acme_config(
        &ca,
        tls_port,
        &format!(
            "[[listeners.routes]]\nhostname = \"web.acme.test\"\nbackend = \"{}\"\n\
             mode = \"l7\"\nbackend_protocol = \"http1\"\nacme = true\n\
             [[listeners]]\naddr = \"127.0.0.1:{http_port}\"\nkind = \"http\"\n",
            backend.addr
        ),
    )
    .replace(
        "terms_of_service_agreed = true\n",
        "terms_of_service_agreed = true\nchallenges = [\"http-01\"]\nkey_type = \"rsa-2048\"\n",
    );
    drop((tls, http));
    let proxy = Proxy::start(&config).await;
    served(&proxy, "web.acme.test").await;
    let answer = get(proxy.addr(), "web.acme.test", "/", trusting(&ca).await).await;
    assert_eq!(answer, 200);
    // An RSA key, as key_type asked (rsaEncryption in the leaf's public key).
    const RSA: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    let leaf = served_leaf(proxy.addr(), "web.acme.test", trusting(&ca).await)
        .await
        .unwrap();
    assert!(leaf.windows(RSA.len()).any(|w| w == RSA), "an RSA leaf");
    let text = log_text(&logs);
    assert!(text.contains("challenge=\"http-01\""), "{text}");
    assert!(text.contains("ACME http-01 challenge answered"), "{text}");
    assert!(
        !text.contains("outcome=\"acme_challenge\""),
        "no tls-alpn-01"
    );
    // Listed with when it renews (this pebble has no renewal information: a third of its
    // five-year lifetime before its end).
    let mut admin = proxy.admin().await;
    let cert = admin
        .list_routes(None)
        .await
        .unwrap()
        .into_iter()
        .find_map(|r| r.certificate)
        .expect("served with a certificate");
    let renews = cert.renews_at_ms.expect("a renewal time");
    let lifetime = cert.not_after_ms - cert.not_before_ms;
    let expected = cert.not_after_ms - lifetime / 3;
    assert!(
        renews.abs_diff(expected) < 5_000,
        "{renews} against {expected}"
    );
    assert!(!cert.renewal_by_ari);
    assert_eq!(cert.last_error, None);
}

#[tokio::test]
async fn with_the_ca_down_at_renewal_the_old_certificate_is_served_and_the_failure_shown() {
    if !pebble::available() {
        return;
    }
    let (_guard, logs) = capture_logs();
    let reserved = mc_proxy_tests::ReservedPort::new();
    let port = reserved.port;
    // Certificates for 9 s: renewal due 6 s after issue.
    let mut ca = Pebble::start_with(port, 1, Some(9)).await;
    let backend = mc_proxy_tests::web::H1Backend::start().await;
    drop(reserved);
    let proxy = Proxy::start(&acme_config(
        &ca,
        port,
        &format!(
            "[[listeners.routes]]\nhostname = \"down.test\"\nbackend = \"{}\"\nmode = \"l7\"\n\
             backend_protocol = \"http1\"\nacme = true\n",
            backend.addr
        ),
    ))
    .await;
    served(&proxy, "down.test").await;
    let issued = std::time::Instant::now();
    let client = trusting(&ca).await;
    let first = served_leaf(proxy.addr(), "down.test", client.clone())
        .await
        .unwrap();
    ca.stop();
    let mut admin = proxy.admin().await;
    let mut events = Box::pin(admin.watch_events().await.unwrap());

    // At renewal time the order fails; the route keeps its certificate and says why.
    let mut failed = None;
    while issued.elapsed() < Duration::from_millis(8500) {
        let cert = admin
            .list_routes(None)
            .await
            .unwrap()
            .into_iter()
            .find_map(|r| r.certificate)
            .expect("still served");
        if cert.last_error.is_some() {
            failed = Some((cert, issued.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (cert, when) = failed.expect("the failed renewal is shown before the end");
    assert!(
        when >= Duration::from_secs(5),
        "not before it was due: {when:?}"
    );
    assert!(
        cert.last_error
            .as_deref()
            .unwrap()
            .contains("talking to the CA"),
        "{:?}",
        cert.last_error
    );
    let leaf = served_leaf(proxy.addr(), "down.test", client)
        .await
        .expect("served all along");
    assert_eq!(leaf, first, "the old certificate");
    assert!(log_text(&logs).contains("ACME order failed"));
    // And an event says so.
    let failed = tokio::time::timeout(Duration::from_secs(5), async {
        use futures_util::StreamExt;
        while let Some(event) = events.next().await {
            if let Ok(mc_proxy_shared::client::TimedEvent {
                event:
                    mc_proxy_shared::client::Event::AcmeOrder {
                        route,
                        not_after_ms: None,
                        error: Some(error),
                    },
                ..
            }) = event
            {
                return (route, error);
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("an acme_order event within 5 s");
    assert_eq!(failed.0, "down.test");
    assert!(failed.1.contains("talking to the CA"), "{}", failed.1);
    // Retried after a back-off (a minute), not at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let orders = log_text(&logs)
        .matches("ordering an ACME certificate")
        .count();
    assert_eq!(orders, 2, "the first order and one renewal");
}

#[tokio::test]
async fn on_a_fleet_one_node_orders_any_node_answers_the_ca_and_every_node_serves_it() {
    if !pebble::available() || !mc_proxy_tests::etcd::available() {
        return;
    }
    let (_guard, logs) = capture_logs();
    let store = mc_proxy_tests::etcd::EtcdCluster::start(1).await;
    let reserved = mc_proxy_tests::ReservedPort::new();
    let port = reserved.port;
    let ca = Pebble::start(port, 1).await;
    let backend = mc_proxy_tests::web::H1Backend::start().await;
    let endpoints: Vec<String> = store.endpoints().iter().map(|e| format!("{e:?}")).collect();
    let node = |name: &str, addr: &str, acme: bool| {
        let acme = if acme {
            format!(
                "[acme]\ndirectory = {:?}\nca = {:?}\nterms_of_service_agreed = true\n",
                ca.directory,
                ca.api_ca.display().to_string()
            )
        } else {
            String::new()
        };
        format!(
            "{acme}[cluster]\nendpoints = [{}]\nprefix = \"/mc-proxy/acme\"\nname = {name:?}\n\
             request_timeout = \"4s\"\nconnect_timeout = \"1s\"\nlease_ttl = \"4s\"\n\
             [[listeners]]\naddr = {addr:?}\nname = \"public\"\n",
            endpoints.join(", ")
        )
    };
    drop(reserved);
    // A has no [acme] and is what the CA reaches; B and C may order.
    let a = Proxy::start(&node("a", &format!("127.0.0.1:{port}"), false)).await;
    let b = Proxy::start(&node("b", "127.0.0.1:0", true)).await;
    let c = Proxy::start(&node("c", "127.0.0.1:0", true)).await;
    for p in [&a, &b, &c] {
        for _ in 0..1000 {
            if p.state
                .cluster()
                .is_some_and(|v| v.link == mc_proxy::model::cluster::Link::Connected)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Added through A, which orders nothing itself: waiting, then served by every node.
    let mut admin = a.admin().await;
    let (_, warnings) = admin
        .add_route("public", acme_route("fleet.acme.test", backend.addr))
        .await
        .unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("waiting for its ACME certificate")),
        "{warnings:?}"
    );
    for p in [&a, &b, &c] {
        served(p, "fleet.acme.test").await;
    }
    let client = trusting(&ca).await;
    for p in [&a, &b, &c] {
        assert_eq!(
            get(p.addr(), "fleet.acme.test", "/", client.clone()).await,
            200
        );
    }
    // One order in the fleet; its challenge answered by A for the node that ordered.
    let text = log_text(&logs);
    assert_eq!(
        text.matches("ordering an ACME certificate").count(),
        1,
        "one node orders:\n{text}"
    );
    assert!(
        text.contains("answering another node's ACME challenge here too"),
        "{text}"
    );
    assert!(
        text.contains("outcome=\"acme_challenge\""),
        "A showed the CA"
    );
    assert!(
        text.contains("ACME certificate from the fleet installed and served"),
        "{text}"
    );
    // The same certificate everywhere.
    let leaf = |p: &Proxy| {
        let (addr, client) = (p.addr(), client.clone());
        async move {
            served_leaf(addr, "fleet.acme.test", client)
                .await
                .expect("served")
        }
    };
    let (la, lb, lc) = (leaf(&a).await, leaf(&b).await, leaf(&c).await);
    assert!(la == lb && lb == lc, "one certificate");
    // A renewal asked of A, which orders nothing, is refused, not answered and dropped.
    let refused = admin
        .renew_certificate("fleet.acme.test")
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("nothing orders certificates here"),
        "{refused}"
    );

    // A node that joins later takes the fleet's certificate: no second order.
    let d = Proxy::start(&node("d", "127.0.0.1:0", true)).await;
    served(&d, "fleet.acme.test").await;
    assert_eq!(leaf(&d).await, la);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = log_text(&logs);
    assert_eq!(text.matches("ordering an ACME certificate").count(), 1);
    // One ACME account for the fleet: the nodes that look for one later take it.
    assert_eq!(text.matches("ACME account created").count(), 1, "{text}");
}
