//! `[acme]`: where certificates for `acme = true` routes come from.
//!
//! ```toml
//! [acme]
//! directory = "https://acme-v02.api.letsencrypt.org/directory"   # the default
//! contact = ["mailto:ops@example.com"]
//! terms_of_service_agreed = true    # required: the CA's terms, read and agreed
//! ca = "/etc/mc-proxy/private-ca.pem"   # extra roots to trust for the directory
//! ```
//!
//! No I/O but reading `ca` when the settings are checked (so `mc-proxy check` names a bad
//! file). Challenges: tls-alpn-01 on the route's own listener (http-01 and DNS-01 are not
//! offered yet); keys: ECDSA P-256.

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
        ok.then_some(AcmeConfig {
            directory,
            contact: self.contact,
            ca_pem,
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
