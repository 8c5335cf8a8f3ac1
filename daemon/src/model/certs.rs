//! A route's certificate: loading its PEM chain and private key into a rustls `CertifiedKey`,
//! checking them, and the rustls server configuration L7 termination serves it with.
//!
//! I/O: reads the two files. Invariant: a `CertifiedKey` returned from here has a non-empty
//! chain and a private key that belongs to the chain's first certificate (checked, not
//! assumed), so a mismatched pair is a load-time error and never a handshake-time surprise.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate/key pair could not be loaded. Always the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The certificate file could not be read.
    #[error("cannot read tls_cert {}: {source}", shown(path))]
    ReadCert {
        /// The file named in the route.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The key file could not be read.
    #[error("cannot read tls_key {}: {source}", shown(path))]
    ReadKey {
        /// The file named in the route.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or a broken one.
    #[error("tls_cert {} holds no valid PEM certificate: {reason}", shown(path))]
    ParseCert {
        /// The file named in the route.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The key file holds no PEM private key rustls can use.
    #[error("tls_key {} holds no usable PEM private key: {reason}", shown(path))]
    ParseKey {
        /// The file named in the route.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// Both load, but the key does not belong to the certificate.
    #[error(
        "tls_key {} does not match the certificate in tls_cert {}",
        shown(key),
        shown(cert)
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// A path as an error message shows it: whole when short, clipped when it is not (paths can
/// come from admin requests; see `mc_proxy_shared::text`).
fn shown(path: &Path) -> String {
    let text = path.display().to_string();
    if text.chars().count() <= mc_proxy_shared::text::ECHO_CHARS * 2 {
        text
    } else {
        mc_proxy_shared::text::clip(&text)
    }
}

/// What is wrong with a PEM file, in words: the parser's own text shows the marker lines as
/// byte arrays (`missing section end marker: [45, 45, ...]`).
fn pem_reason(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    let text = |bytes: &[u8]| mc_proxy_shared::text::clip(&String::from_utf8_lossy(bytes));
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "the file is cut short: its {} line is missing",
            mc_proxy_shared::text::clip(&format!(
                "-----END {}-----",
                String::from_utf8_lossy(end_marker)
            ))
        ),
        Error::IllegalSectionStart { line } => {
            format!("a malformed BEGIN line: {}", text(line))
        }
        Error::Base64Decode(e) => format!("the base64 between BEGIN and END is damaged: {e}"),
        Error::NoItemsFound => "no PEM block of the expected kind".to_owned(),
        other => other.to_string(),
    }
}

/// Reads and checks a PEM certificate chain and private key.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let cert_pem = std::fs::read(cert).map_err(|source| CertError::ReadCert {
        path: cert.to_owned(),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| CertError::ReadKey {
        path: key.to_owned(),
        source,
    })?;
    certified_key_from_pem(&cert_pem, &key_pem, cert, key)
}

/// Parses and checks a PEM certificate chain and private key held in memory (an ACME
/// certificate from the database); `cert` and `key` name them in errors.
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::ParseCert {
            path: cert.to_owned(),
            reason: pem_reason(&e),
        })?;
    if chain.is_empty() {
        return Err(CertError::ParseCert {
            path: cert.to_owned(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::ParseKey {
        path: key.to_owned(),
        reason: pem_reason(&e),
    })?;

    let signing_key =
        provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| CertError::ParseKey {
                path: key.to_owned(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        // A key type that cannot report its public key cannot be checked here; the handshake
        // will still fail loudly if it is wrong, so accept it rather than refuse a valid pair.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(CertError::Mismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            });
        }
    }
    Ok(Arc::new(certified))
}

/// The crypto behind every TLS connection the daemon makes or terminates: rustls's AWS-LC
/// provider. Over `ring` it brings the post-quantum hybrid key exchange X25519MLKEM768 (what
/// Chrome and Firefox offer first): a client that offers it gets it, since a rustls server
/// follows the client's order of groups; X25519, P-256 and P-384 for the rest. Its handshake
/// and AES-GCM cost are in docs/BENCHMARKS.md.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())))
}

/// The rustls server configuration of an L7 route: its certificate, ALPN `h2` then
/// `http/1.1`. Built once when the route is loaded, shared by its connections.
pub fn server_config(key: Arc<CertifiedKey>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the AWS-LC provider supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The hostname of a catch-all route (see `routes::RouteTable::lookup`).
pub const CATCH_ALL: &str = mc_proxy_shared::route_check::CATCH_ALL;

/// Problems with a loaded certificate that do not stop its route but will break clients: the
/// leaf has expired (or is not valid yet), or does not cover `hostname` (for a wildcard
/// route `*.rest`, a name one label under `rest`). `now` is seconds since the Unix epoch.
pub fn leaf_warnings(key: &CertifiedKey, hostname: &str, now: u64) -> Vec<String> {
    let mut warnings = Vec::new();
    let Some(leaf) = key.cert.first() else {
        return warnings;
    };
    match validity(leaf) {
        Some((not_before, not_after)) => {
            if now > not_after.unix() {
                warnings.push(format!("the certificate expired on {not_after}"));
            } else if now < not_before.unix() {
                warnings.push(format!("the certificate is not valid until {not_before}"));
            }
        }
        None => warnings.push("the certificate's validity period could not be read".into()),
    }
    if hostname == CATCH_ALL {
        // A catch-all answers whatever name a client asks for: no one name to check.
        return warnings;
    }
    let name = match hostname.strip_prefix("*.") {
        Some(rest) => format!("wildcard-check.{rest}"),
        None => hostname.to_owned(),
    };
    let covered = rustls_pki_types::ServerName::try_from(name.as_str())
        .ok()
        .zip(rustls::server::ParsedCertificate::try_from(leaf).ok())
        .is_some_and(|(name, parsed)| rustls::client::verify_server_name(&parsed, &name).is_ok());
    if !covered {
        warnings.push(format!(
            "the certificate does not cover {hostname}: clients will refuse it"
        ));
    }
    warnings
}

/// The leaf certificate's `notAfter` as `YYYY-MM-DD HH:MM:SS UTC`, if it can be read: what an
/// operator checks after renewing a certificate.
pub fn not_after(key: &CertifiedKey) -> Option<String> {
    let (_, not_after) = validity(key.cert.first()?)?;
    Some(not_after.to_string())
}

/// What an operator needs to know of a served certificate: when it is valid and who issued
/// it. Read once when the route loads (a small DER walk, no X.509 library).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// Valid from, seconds since the Unix epoch.
    pub not_before: u64,
    /// Valid until, seconds since the Unix epoch.
    pub not_after: u64,
    /// The issuer's common name, else its organisation, else empty.
    pub issuer: String,
}

/// The leaf certificate's [`CertSummary`], if its validity can be read.
pub fn summary(key: &CertifiedKey) -> Option<CertSummary> {
    let leaf = key.cert.first()?;
    let (not_before, not_after) = validity(leaf)?;
    Some(CertSummary {
        not_before: not_before.unix(),
        not_after: not_after.unix(),
        issuer: issuer(leaf).unwrap_or_default(),
    })
}

/// The issuer's CN, else its O (RFC 5280 §4.1.2.4): tbsCertificate → [version], serial,
/// signature → issuer, a SEQUENCE of SETs of (OID, value), at most 64 characters.
fn issuer(der: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    let (cert, _) = tlv(der, 0x30)?;
    let (tbs, _) = tlv(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = skip(rest)?;
    }
    rest = skip(rest)?; // serialNumber
    rest = skip(rest)?; // signature
    let (mut name, _) = tlv(rest, 0x30)?;
    let (mut cn, mut o) = (None, None);
    while !name.is_empty() {
        let (set, after) = tlv(name, 0x31)?;
        name = after;
        let mut set = set;
        while !set.is_empty() {
            let (atv, after) = tlv(set, 0x30)?;
            set = after;
            let (oid, value) = tlv(atv, 0x06)?;
            let tag = *value.first()?;
            // UTF8String, PrintableString, T61String, IA5String, BMPString is left out.
            if ![0x0c, 0x13, 0x14, 0x16].contains(&tag) {
                continue;
            }
            let (text, _) = tlv(value, tag)?;
            let text = String::from_utf8_lossy(text).chars().take(64).collect();
            match oid {
                _ if oid == CN => cn = Some(text),
                _ if oid == O => o = Some(text),
                _ => {}
            }
        }
    }
    cn.or(o)
}

/// A UTC time from a certificate (RFC 5280 §4.1.2.5), to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CertTime {
    year: u64,
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
}

impl CertTime {
    /// Seconds since the Unix epoch (proleptic Gregorian; days from civil, H. Hinnant).
    fn unix(&self) -> u64 {
        let (y, m) = if self.month <= 2 {
            (self.year - 1, self.month + 9)
        } else {
            (self.year, self.month - 3)
        };
        let era = y / 400;
        let yoe = y - era * 400;
        let doy = (153 * m + 2) / 5 + self.day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = (era * 146_097 + doe).saturating_sub(719_468);
        days * 86_400 + self.hour * 3600 + self.minute * 60 + self.second
    }
}

impl std::fmt::Display for CertTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// One DER TLV with the expected tag: its contents and what follows it. Definite lengths of
/// up to 4 bytes only (a certificate never needs more); anything else is `None`.
fn tlv(buf: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = buf.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Skips one TLV whatever its tag.
fn skip(buf: &[u8]) -> Option<&[u8]> {
    let tag = *buf.first()?;
    tlv(buf, tag).map(|(_, rest)| rest)
}

/// UTCTime (`YYMMDDHHMMSSZ`, RFC 5280: years 50-99 are 19xx) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`).
fn cert_time(buf: &[u8]) -> Option<(CertTime, &[u8])> {
    let (digits, year, rest) = if let Some((v, rest)) = tlv(buf, 0x17) {
        let yy = two(v.get(..2)?)?;
        (
            v.get(2..)?,
            if yy >= 50 { 1900 + yy } else { 2000 + yy },
            rest,
        )
    } else {
        let (v, rest) = tlv(buf, 0x18)?;
        (
            v.get(4..)?,
            two(v.get(..2)?)? * 100 + two(v.get(2..4)?)?,
            rest,
        )
    };
    if digits.len() != 11 || digits[10] != b'Z' {
        return None;
    }
    let t = CertTime {
        year,
        month: two(&digits[0..2])?,
        day: two(&digits[2..4])?,
        hour: two(&digits[4..6])?,
        minute: two(&digits[6..8])?,
        second: two(&digits[8..10])?,
    };
    ((1..=12).contains(&t.month) && (1..=31).contains(&t.day)).then_some((t, rest))
}

fn two(b: &[u8]) -> Option<u64> {
    match b {
        [a @ b'0'..=b'9', c @ b'0'..=b'9'] => Some(u64::from(a - b'0') * 10 + u64::from(c - b'0')),
        _ => None,
    }
}

/// notBefore and notAfter of an X.509 certificate (RFC 5280 §4.1): a small DER walk through
/// Certificate → tbsCertificate → [version], serial, signature, issuer → validity.
fn validity(der: &[u8]) -> Option<(CertTime, CertTime)> {
    let (cert, _) = tlv(der, 0x30)?;
    let (tbs, _) = tlv(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = skip(rest)?;
    }
    for _ in 0..3 {
        rest = skip(rest)?; // serialNumber, signature, issuer
    }
    let (validity, _) = tlv(rest, 0x30)?;
    let (not_before, after) = cert_time(validity)?;
    let (not_after, _) = cert_time(after)?;
    Some((not_before, not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certified(
        names: &[&str],
        tweak: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> CertifiedKey {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        tweak(&mut params);
        let cert = params.self_signed(&key).unwrap();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let signing = provider().key_provider.load_private_key(der).unwrap();
        CertifiedKey::new(vec![cert.der().clone()], signing)
    }

    const NOW_2026: u64 = 1_780_000_000;

    #[test]
    fn a_truncated_pem_is_reported_in_words_not_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let (c, k) = (dir.path().join("a.pem"), dir.path().join("a.key"));
        std::fs::write(&c, &cert[..cert.len() / 2]).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let err = load_certified_key(&c, &k).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "holds no valid PEM certificate: the file is cut short: its \
                 \"-----END CERTIFICATE-----\" line is missing"
            ),
            "{err}"
        );
        assert!(!err.contains("[45, 45"), "{err}");
    }

    #[test]
    fn validity_is_read_from_the_der() {
        let ck = certified(&["a.test"], |p| {
            p.not_before = rcgen::date_time_ymd(2001, 2, 3);
            p.not_after = rcgen::date_time_ymd(2060, 12, 31);
        });
        let (nb, na) = validity(&ck.cert[0]).unwrap();
        assert_eq!(nb.to_string(), "2001-02-03 00:00:00 UTC");
        assert_eq!(nb.unix(), 981_158_400);
        assert_eq!(na.to_string(), "2060-12-31 00:00:00 UTC");
    }

    #[test]
    fn a_good_certificate_has_no_warnings() {
        let ck = certified(&["a.test", "*.w.test"], |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2090, 1, 1);
        });
        assert!(leaf_warnings(&ck, "a.test", NOW_2026).is_empty());
        assert!(leaf_warnings(&ck, "*.w.test", NOW_2026).is_empty());
    }

    #[test]
    fn a_summary_has_the_validity_and_the_issuers_common_name() {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Test Org");
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Test Issuing CA R7");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["app.test".into()]).unwrap();
        leaf.not_before = rcgen::date_time_ymd(2026, 1, 2);
        leaf.not_after = rcgen::date_time_ymd(2027, 3, 4);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let key = CertifiedKey::from_der(
            vec![cert.der().clone(), ca_cert.der().clone()],
            PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
            &provider(),
        )
        .unwrap();
        let s = summary(&key).unwrap();
        assert_eq!(s.issuer, "Test Issuing CA R7");
        assert_eq!(s.not_before, 1_767_312_000, "2026-01-02T00:00:00Z");
        assert_eq!(s.not_after, 1_804_118_400, "2027-03-04T00:00:00Z");
    }

    #[test]
    fn expired_and_uncovered_certificates_are_warned_about() {
        let ck = certified(&["a.test"], |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
        let w = leaf_warnings(&ck, "b.test", NOW_2026);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("expired on 2001-01-01"), "{w:?}");
        assert!(w[1].contains("does not cover b.test"), "{w:?}");
        assert_eq!(leaf_warnings(&ck, "*.a.test", NOW_2026).len(), 2);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(validity(b"").is_none());
        assert!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(validity(&[0x30, 0x03, 0x30, 0x01, 0x02]).is_none());
    }
}
