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
        orderer.order("acme-a.test", challenges),
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
        line.contains("sni=\"acme-a.test\"") && line.contains("error=\"\""),
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
    assert!(issued.key_pem.contains("PRIVATE KEY"));

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
    // Another name: no challenge, routed (or refused) as ever.
    assert_ne!(
        shown(proxy.addr(), "other.test", &[b"acme-tls/1"])
            .await
            .as_ref(),
        Some(&challenge_der)
    );
    proxy.state.acme.remove("web.test");
    let after = shown(proxy.addr(), "web.test", &[b"acme-tls/1"]).await;
    assert_ne!(
        after.as_ref(),
        Some(&challenge_der),
        "done: back to the route"
    );
}
