//! `[acme]`: where certificates for `acme = true` routes come from.
//!
//! ```toml
//! [acme]
//! directory = "https://acme-v02.api.letsencrypt.org/directory"   # the default
//! contact = ["mailto:ops@example.com"]
//! terms_of_service_agreed = true    # required: the CA's terms, read and agreed
//! ca = "/etc/mc-proxy/private-ca.pem"   # extra roots to trust for the directory
//! challenges = ["tls-alpn-01", "http-01"]   # the default: in this order of preference
//! key_type = "ecdsa-p256"           # the default; or "ecdsa-p384", "rsa-2048"
//! ```
//!
//! No I/O but reading `ca` when the settings are checked (so `mc-proxy check` names a bad
//! file). Challenges: tls-alpn-01 on the route's own listener, http-01 on the node's
//! `kind = "http"` listeners (an order uses the first kind in `challenges` that the CA offers
//! and this node can answer); DNS-01 is not offered. Keys: ECDSA P-256 unless `key_type` says
//! otherwise (P-384, or RSA 2048 for the rare client without ECDSA).

use std::path::PathBuf;

use serde::Deserialize;

/// Let's Encrypt's production directory: the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[acme]` as the file has it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAcme {
    #[serde(default)]
    directory: Option<String>,
    #[serde(default)]
    contact: Vec<String>,
    #[serde(default)]
    terms_of_service_agreed: bool,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    challenges: Option<Vec<String>>,
    #[serde(default)]
    key_type: Option<String>,
}

/// The key type of the certificates ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA on P-256: small, fast, what every current client takes (the default).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// RSA, 2048 bits: for old clients without ECDSA; slower handshakes.
    Rsa2048,
}

impl KeyType {
    /// Every key type, as `[acme] key_type` names them.
    const ALL: [KeyType; 3] = [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048];

    /// The key type `[acme] key_type` names `name`.
    fn named(name: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Its name in `[acme] key_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Rsa2048 => "rsa-2048",
        }
    }
}

/// An ACME challenge kind this node can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// RFC 8737: a TLS handshake on the route's own listener.
    TlsAlpn01,
    /// RFC 8555 §8.3: `GET /.well-known/acme-challenge/TOKEN` on port 80 (an http listener).
    Http01,
}

impl ChallengeKind {
    /// The kind `[acme] challenges` names `name`.
    fn named(name: &str) -> Option<ChallengeKind> {
        [ChallengeKind::TlsAlpn01, ChallengeKind::Http01]
            .into_iter()
            .find(|k| k.as_str() == name)
    }

    /// Its name in `[acme] challenges` and in the ACME protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Http01 => "http-01",
        }
    }
}

/// `[acme]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The CA's directory URL (https).
    pub directory: String,
    /// `mailto:` addresses the CA may write to (expiry, incidents).
    pub contact: Vec<String>,
    /// Extra roots (PEM) to trust for the directory, read from `ca`.
    pub ca_pem: Option<Vec<u8>>,
    /// The challenge kinds to use, in order of preference (not empty, no repeats).
    pub challenges: Vec<ChallengeKind>,
    /// The certificates' key type.
    pub key_type: KeyType,
}

impl FileAcme {
    /// The settings, or `None` with every problem reported as `acme.KEY`.
    pub fn validate(self, problem: &mut impl FnMut(String, String)) -> Option<AcmeConfig> {
        let mut ok = true;
        let directory = self.directory.unwrap_or_else(|| LETS_ENCRYPT.to_owned());
        if !directory.starts_with("https://") || directory.len() > 512 {
            problem(
                "acme.directory".into(),
                format!(
                    "must be an https:// URL (at most 512 characters), not {}",
                    mc_proxy_shared::text::clip(&directory)
                ),
            );
            ok = false;
        }
        for (i, c) in self.contact.iter().enumerate() {
            if !c.starts_with("mailto:") || c.len() > 256 || c.len() <= "mailto:".len() {
                problem(
                    format!("acme.contact[{i}]"),
                    format!(
                        "must be mailto:ADDRESS, not {}",
                        mc_proxy_shared::text::clip(c)
                    ),
                );
                ok = false;
            }
        }
        if !self.terms_of_service_agreed {
            problem(
                "acme.terms_of_service_agreed".into(),
                "must be true: ordering certificates means agreeing to the CA's terms of \
                 service (read them at the directory's meta.termsOfService)"
                    .into(),
            );
            ok = false;
        }
        let ca_pem = match &self.ca {
            None => None,
            Some(path) => match std::fs::read(path) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    problem(
                        "acme.ca".into(),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    ok = false;
                    None
                }
            },
        };
        let mut challenges = Vec::new();
        match self.challenges {
            None => challenges = vec![ChallengeKind::TlsAlpn01, ChallengeKind::Http01],
            Some(names) => {
                for (i, name) in names.iter().enumerate() {
                    let kind = match ChallengeKind::named(name) {
                        Some(kind) => kind,
                        None => {
                            let other = name.as_str();
                            problem(
                                format!("acme.challenges[{i}]"),
                                format!(
                                    "unknown challenge {}: expected \"tls-alpn-01\" or \
                                     \"http-01\" (DNS-01 is not offered)",
                                    mc_proxy_shared::text::clip(other)
                                ),
                            );
                            ok = false;
                            continue;
                        }
                    };
                    if challenges.contains(&kind) {
                        problem(
                            format!("acme.challenges[{i}]"),
                            format!("{} is listed twice", kind.as_str()),
                        );
                        ok = false;
                    }
                    challenges.push(kind);
                }
                if names.is_empty() {
                    problem(
                        "acme.challenges".into(),
                        "must name at least one challenge (tls-alpn-01, http-01)".into(),
                    );
                    ok = false;
                }
            }
        }
        let key_type = match self.key_type.as_deref() {
            None => KeyType::EcdsaP256,
            Some(name) if let Some(key_type) = KeyType::named(name) => key_type,
            Some(other) => {
                problem(
                    "acme.key_type".into(),
                    format!(
                        "unknown key type {}: expected \"ecdsa-p256\", \"ecdsa-p384\" or \
                         \"rsa-2048\"",
                        mc_proxy_shared::text::clip(other)
                    ),
                );
                ok = false;
                KeyType::default()
            }
        };
        ok.then_some(AcmeConfig {
            directory,
            contact: self.contact,
            ca_pem,
            challenges,
            key_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> Result<AcmeConfig, Vec<(String, String)>> {
        let file: FileAcme = toml::from_str(toml_text).unwrap();
        let mut problems = Vec::new();
        let config = file.validate(&mut |k, m| problems.push((k, m)));
        config.ok_or(problems)
    }

    #[test]
    fn the_terms_must_be_agreed_and_the_directory_is_lets_encrypt_by_default() {
        let c = check("terms_of_service_agreed = true").unwrap();
        assert_eq!(c.directory, LETS_ENCRYPT);
        assert_eq!(
            c.challenges,
            [ChallengeKind::TlsAlpn01, ChallengeKind::Http01]
        );
        let c = check("terms_of_service_agreed = true\nchallenges = [\"http-01\"]").unwrap();
        assert_eq!(c.challenges, [ChallengeKind::Http01]);
        let e = check(
            "terms_of_service_agreed = true\nchallenges = [\"dns-01\", \"http-01\", \"http-01\"]",
        )
        .unwrap_err();
        let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["acme.challenges[0]", "acme.challenges[2]"]);
        let e = check("terms_of_service_agreed = true\nchallenges = []").unwrap_err();
        assert_eq!(e[0].0, "acme.challenges");
        assert_eq!(c.key_type, KeyType::EcdsaP256);
        let c = check("terms_of_service_agreed = true\nkey_type = \"rsa-2048\"").unwrap();
        assert_eq!(c.key_type, KeyType::Rsa2048);
        let e = check("terms_of_service_agreed = true\nkey_type = \"dsa\"").unwrap_err();
        assert_eq!(e[0].0, "acme.key_type");
        let e = check("").unwrap_err();
        assert_eq!(e[0].0, "acme.terms_of_service_agreed");
        let e = check(
            "terms_of_service_agreed = true\ndirectory = \"http://ca.test/dir\"\n\
             contact = [\"ops@example.com\"]\nca = \"/nonexistent/ca.pem\"",
        )
        .unwrap_err();
        let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["acme.directory", "acme.contact[0]", "acme.ca"]);
    }
}
