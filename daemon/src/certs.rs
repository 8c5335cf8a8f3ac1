//! Loading a route's PEM certificate chain and private key into a rustls `CertifiedKey`.
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
    #[error("cannot read tls_cert {path}: {source}")]
    ReadCert {
        /// The file named in the route.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The key file could not be read.
    #[error("cannot read tls_key {path}: {source}")]
    ReadKey {
        /// The file named in the route.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or a broken one.
    #[error("tls_cert {path} holds no valid PEM certificate: {reason}")]
    ParseCert {
        /// The file named in the route.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The key file holds no PEM private key rustls can use.
    #[error("tls_key {path} holds no usable PEM private key: {reason}")]
    ParseKey {
        /// The file named in the route.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// Both load, but the key does not belong to the certificate.
    #[error("tls_key {key} does not match the certificate in tls_cert {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
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

    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::ParseCert {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::ParseCert {
            path: cert.to_owned(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::ParseKey {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;

    let provider = rustls::crypto::ring::default_provider();
    let signing_key =
        provider
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
