//! Pending ACME challenges. tls-alpn-01 (RFC 8737): for each name being validated, the
//! self-signed certificate carrying the `acmeIdentifier` extension that the CA's validation
//! connection must be shown; the data plane answers a ClientHello that offers only ALPN
//! `acme-tls/1` for such a name with it, and nothing else changes for any other client.
//! http-01 (RFC 8555 §8.3): for each token, its name and key authorization, which the plain
//! HTTP listeners serve at `/.well-known/acme-challenge/TOKEN`. The control plane
//! (`control::acme`) puts a challenge in before it tells the CA it is ready and takes it out
//! when the order is done, however it ends.
//!
//! No I/O. Invariant: the data plane's look-up costs one atomic load while no challenge is
//! pending (the usual case); the maps' locks are never held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocol of tls-alpn-01 validations.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The pending challenges, by hostname (lowercase); how the ACME task is woken when an ACME
/// route is added; and each name's last order error, for the operator.
#[derive(Debug, Default)]
pub struct Challenges {
    pending: AtomicUsize,
    certs: RwLock<HashMap<String, Arc<rustls::ServerConfig>>>,
    /// http-01: token → (hostname, lowercase; key authorization).
    tokens: RwLock<HashMap<String, (String, String)>>,
    tokens_pending: AtomicUsize,
    wake: tokio::sync::Notify,
    errors: RwLock<HashMap<String, String>>,
    /// Per hostname: when its certificate is to be renewed (Unix seconds), and whether the
    /// CA's renewal information (ARI) says so.
    renewals: RwLock<HashMap<String, (u64, bool)>>,
    enabled: std::sync::atomic::AtomicBool,
    /// This daemon's own ACME task runs (a fleet node without `[acme]` takes acme routes,
    /// but orders nothing).
    ordering: std::sync::atomic::AtomicBool,
    /// Names an operator asked to renew now (`mcproxyctl certs renew`).
    forced: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Orders that issued a certificate, and orders that failed, since start.
    pub orders_issued: std::sync::atomic::AtomicU64,
    /// See `orders_issued`.
    pub orders_failed: std::sync::atomic::AtomicU64,
}

impl Challenges {
    /// The daemon has `[acme]` and its ACME task runs: acme routes may be added.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    /// Whether [`Challenges::enable`] was called.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// This daemon's ACME task runs (and acme routes may be added).
    pub fn start_ordering(&self) {
        self.ordering.store(true, Ordering::Release);
        self.enable();
    }

    /// Whether this daemon orders certificates itself ([`Challenges::start_ordering`]): what
    /// a forced renewal needs.
    pub fn orders_here(&self) -> bool {
        self.ordering.load(Ordering::Acquire)
    }

    /// Tells the ACME task to look at the routes now (one was added or changed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until [`Challenges::wake`] is called (a call made meanwhile counts).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Asks the ACME task to order `hostname` now, whatever its renewal time or back-off.
    pub fn force(&self, hostname: &str) {
        self.forced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(hostname.to_owned());
        self.wake();
    }

    /// Whether `hostname` was asked to be renewed now; the ask is taken (consumed).
    pub fn take_forced(&self, hostname: &str) -> bool {
        self.forced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(hostname)
    }

    /// Records (or, `None`, clears) `hostname`'s last order error.
    pub fn set_error(&self, hostname: &str, error: Option<String>) {
        let mut errors = self.errors.write().unwrap_or_else(|e| e.into_inner());
        match error {
            Some(e) => errors.insert(hostname.to_owned(), e),
            None => errors.remove(hostname),
        };
    }

    /// Records when `hostname`'s certificate is to be renewed, and whether the CA's renewal
    /// information chose the time.
    pub fn set_renewal(&self, hostname: &str, at: u64, by_ari: bool) {
        let mut renewals = self.renewals.write().unwrap_or_else(|e| e.into_inner());
        renewals.insert(hostname.to_owned(), (at, by_ari));
    }

    /// When `hostname`'s certificate is to be renewed (Unix seconds), and whether ARI chose
    /// it; `None` before the ACME task has looked at it.
    pub fn renewal(&self, hostname: &str) -> Option<(u64, bool)> {
        let renewals = self.renewals.read().unwrap_or_else(|e| e.into_inner());
        renewals.get(hostname).copied()
    }

    /// `hostname`'s last order error, if its last order failed.
    pub fn error(&self, hostname: &str) -> Option<String> {
        let errors = self.errors.read().unwrap_or_else(|e| e.into_inner());
        errors.get(hostname).cloned()
    }

    /// Answers validations of `hostname` with `key` from now on.
    pub fn insert(&self, hostname: &str, key: Arc<CertifiedKey>) {
        let mut config =
            rustls::ServerConfig::builder_with_provider(crate::model::certs::provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .expect("the AWS-LC provider supports TLS 1.2 and 1.3")
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        let mut certs = self.certs.write().unwrap_or_else(|e| e.into_inner());
        certs.insert(hostname.to_ascii_lowercase(), Arc::new(config));
        self.pending.store(certs.len(), Ordering::Release);
    }

    /// Stops answering validations of `hostname`.
    pub fn remove(&self, hostname: &str) {
        let mut certs = self.certs.write().unwrap_or_else(|e| e.into_inner());
        certs.remove(&hostname.to_ascii_lowercase());
        self.pending.store(certs.len(), Ordering::Release);
    }

    /// The TLS configuration that answers a validation of `sni` when `alpn` is exactly
    /// `acme-tls/1` (RFC 8737 §3: the validation offers that protocol alone) and a challenge
    /// for it is pending; `None` otherwise, and then the connection goes on as any other.
    pub fn answer(&self, sni: Option<&str>, alpn: &[Vec<u8>]) -> Option<Arc<rustls::ServerConfig>> {
        if self.pending.load(Ordering::Acquire) == 0 || alpn.len() != 1 || alpn[0] != ACME_TLS_ALPN
        {
            return None;
        }
        let certs = self.certs.read().unwrap_or_else(|e| e.into_inner());
        certs.get(&sni?.to_ascii_lowercase()).cloned()
    }
}

impl Challenges {
    /// Answers http-01 validations of `hostname` asking for `token` with
    /// `key_authorization` from now on.
    pub fn insert_token(&self, hostname: &str, token: &str, key_authorization: String) {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        tokens.insert(
            token.to_owned(),
            (hostname.to_ascii_lowercase(), key_authorization),
        );
        self.tokens_pending.store(tokens.len(), Ordering::Release);
    }

    /// Stops answering `token`.
    pub fn remove_token(&self, token: &str) {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        tokens.remove(token);
        self.tokens_pending.store(tokens.len(), Ordering::Release);
    }

    /// The key authorization to answer `GET /.well-known/acme-challenge/{token}` with, when
    /// that token is pending for `host` (the request's, without its port; the CA names the
    /// identifier it validates); `None` otherwise.
    pub fn answer_token(&self, host: &str, token: &str) -> Option<String> {
        if self.tokens_pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        let (name, key_authorization) = tokens.get(token)?;
        name.eq_ignore_ascii_case(host)
            .then(|| key_authorization.clone())
    }
}

/// The tls-alpn-01 certificate for `hostname`: self-signed, P-256, with the critical
/// `acmeIdentifier` extension holding `digest` (SHA-256 of the key authorization).
pub fn challenge_certificate(hostname: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![hostname.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
    let signing = crate::model::certs::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| e.to_string())?;
    // `CertifiedKey::new`, not `from_der`: the latter parses the certificate with webpki to
    // check the key matches, and webpki refuses the critical acmeIdentifier extension that
    // is the point of this certificate (the key is the one just generated for it).
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_acme_tls_hello_for_a_pending_name_is_answered() {
        let challenges = Challenges::default();
        let alpn = vec![ACME_TLS_ALPN.to_vec()];
        assert!(
            challenges.answer(Some("a.test"), &alpn).is_none(),
            "none pending"
        );
        let key = challenge_certificate("a.test", &[7; 32]).unwrap();
        challenges.insert("A.test", key);
        assert!(challenges.answer(Some("a.test"), &alpn).is_some());
        assert!(
            challenges.answer(Some("b.test"), &alpn).is_none(),
            "another name"
        );
        assert!(challenges.answer(None, &alpn).is_none(), "no SNI");
        let browser = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        assert!(
            challenges.answer(Some("a.test"), &browser).is_none(),
            "a client"
        );
        let mixed = vec![b"h2".to_vec(), ACME_TLS_ALPN.to_vec()];
        assert!(
            challenges.answer(Some("a.test"), &mixed).is_none(),
            "not alone"
        );
        challenges.remove("a.test");
        assert!(challenges.answer(Some("a.test"), &alpn).is_none(), "done");
    }

    #[test]
    fn an_http_token_is_answered_for_its_own_name_only_while_pending() {
        let challenges = Challenges::default();
        assert_eq!(
            challenges.answer_token("a.test", "tok"),
            None,
            "none pending"
        );
        challenges.insert_token("A.test", "tok", "tok.thumb".into());
        assert_eq!(
            challenges.answer_token("a.TEST", "tok").as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(
            challenges.answer_token("b.test", "tok"),
            None,
            "another name"
        );
        assert_eq!(
            challenges.answer_token("a.test", "other"),
            None,
            "another token"
        );
        challenges.remove_token("tok");
        assert_eq!(challenges.answer_token("a.test", "tok"), None, "done");
    }
}
