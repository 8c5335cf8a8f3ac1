//! What a fleet's nodes share of ACME work, as the ACME task sees it: one account, a lock per
//! name (one node orders), the pending challenges (any node can answer the CA's validation)
//! and the issued certificates (every node serves them). The cluster's etcd implements it
//! (`control::cluster::acme`); a single node has none and keeps all of it to itself.
//!
//! No I/O here: the trait and the values that cross it.

use std::future::Future;
use std::pin::Pin;

/// A boxed future, as the trait's methods return (no async-trait dependency).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A pending challenge, as every node needs it to answer the CA.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Pending {
    /// tls-alpn-01: the SHA-256 digest of the key authorization (each node builds its own
    /// self-signed challenge certificate carrying it).
    TlsAlpn01 {
        /// The name validated.
        hostname: String,
        /// The digest (kept as hex text in the fleet's document).
        #[serde(rename = "digest_hex", with = "hex_digest")]
        digest: [u8; 32],
    },
    /// http-01: the token and its key authorization.
    Http01 {
        /// The name validated.
        hostname: String,
        /// The token of the URL.
        token: String,
        /// The answer.
        key_authorization: String,
    },
}

/// A SHA-256 digest as lowercase hex text, the one place it is written and read.
mod hex_digest {
    use serde::de::Error as _;

    const HEX: &[u8; 16] = b"0123456789abcdef";

    pub fn serialize<S: serde::Serializer>(digest: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let text: String = digest
            .iter()
            .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
            .map(char::from)
            .collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        let bad = || D::Error::custom("a digest is 64 hex digits");
        if text.len() != 64 {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(digest)
    }
}

/// An issued certificate as the fleet keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedCertificate {
    /// The name it is for.
    pub hostname: String,
    /// The chain, PEM, leaf first.
    pub chain_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// Its end, Unix seconds.
    pub not_after: u64,
    /// The node that ordered it.
    pub node: String,
}

/// The fleet's side of ACME.
pub trait Share: Send + Sync + std::fmt::Debug {
    /// Resolves once the fleet's certificates and challenges have been read (and the ones
    /// this node lacks installed): before that, a name without a certificate here may have
    /// one in the fleet, and ordering it would be a wasted order.
    fn ready(&self) -> BoxFuture<'_, ()>;

    /// Takes the fleet-wide lock on `hostname` for one order. `Ok(None)`: another node holds
    /// it (it is ordering that name now).
    fn lock<'a>(
        &'a self,
        hostname: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Held>>, String>>;

    /// The fleet's certificate for `hostname`, if it has one.
    fn certificate<'a>(
        &'a self,
        hostname: &'a str,
    ) -> BoxFuture<'a, Result<Option<SharedCertificate>, String>>;

    /// The fleet's ACME account at `directory` (instant-acme's credentials, JSON), if one
    /// node made it.
    fn account<'a>(&'a self, directory: &'a str) -> BoxFuture<'a, Result<Option<String>, String>>;

    /// Keeps the account this node made as the fleet's, unless another node's came first:
    /// then that one (`Some`) is the fleet's, to be used instead.
    fn save_account<'a>(
        &'a self,
        directory: &'a str,
        credentials: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>>;

    /// Gives every node a certificate issued here.
    fn publish<'a>(
        &'a self,
        certificate: &'a SharedCertificate,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// A lock held on a name: what its order publishes goes with it.
pub trait Held: Send + Sync {
    /// Publishes a pending challenge for every node to answer; it disappears when the lock is
    /// released (or this node dies and its lease ends).
    fn put<'a>(&'a self, challenge: &'a Pending) -> BoxFuture<'a, Result<(), String>>;

    /// Releases the lock and its challenges.
    fn release(self: Box<Self>) -> BoxFuture<'static, ()>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_alpn_challenge_keeps_its_digest_as_hex_text_and_refuses_a_bad_one() {
        let mut digest = [0u8; 32];
        digest[0] = 0xab;
        digest[31] = 0x07;
        let pending = Pending::TlsAlpn01 {
            hostname: "a.test".into(),
            digest,
        };
        let text = serde_json::to_string(&pending).unwrap();
        let hex = format!("ab{}07", "00".repeat(30));
        assert_eq!(
            text,
            format!(r#"{{"kind":"tls-alpn01","hostname":"a.test","digest_hex":"{hex}"}}"#)
        );
        assert_eq!(serde_json::from_str::<Pending>(&text).unwrap(), pending);
        for bad in [&hex[..62], &format!("zz{}", &hex[2..]), &format!("{hex}00")] {
            let doc =
                format!(r#"{{"kind":"tls-alpn01","hostname":"a.test","digest_hex":"{bad}"}}"#);
            let err = serde_json::from_str::<Pending>(&doc).unwrap_err();
            assert!(err.to_string().contains("64 hex digits"), "{err}");
        }
    }
}
