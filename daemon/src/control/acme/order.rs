//! One ACME order, from `new-order` to the issued chain, for one hostname, validated by
//! tls-alpn-01 (RFC 8737) or http-01 (RFC 8555 §8.3), the first of the kinds it is given
//! that the CA offers: the challenge certificate or token goes into the shared
//! [`Challenges`] before the CA is told the challenge is ready and comes out when the order
//! ends, however it ends.
//!
//! I/O: HTTPS to the CA (through [`super::http::Client`]). The private key is generated
//! here (rcgen, of the `[acme] key_type`), and the CSR signed with it, so it never leaves the
//! node but in its database (and a fleet's etcd). Must-staple is never asked for (no OCSP
//! stapling here).

use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::settings::{ChallengeKind, KeyType};
use super::share::Pending;
use crate::model::acme::{Challenges, challenge_certificate};

/// Why an order did not give a certificate. Whose fault: [`AcmeError::Ca`] the CA's answer
/// (a refused name, a failed validation: its problem document says why), the others this
/// node's or the network's.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA said no (or its validation of this node failed).
    #[error("the CA refused: {0}")]
    Ca(String),
    /// The CA could not be reached or answered garbage.
    #[error("talking to the CA: {0}")]
    Transport(String),
    /// This node's side: a key or challenge certificate could not be made.
    #[error("{0}")]
    Local(String),
    /// The fleet's store (a cluster node's etcd) could not be reached or refused.
    #[error("the fleet's store: {0}")]
    Fleet(String),
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        match e {
            instant_acme::Error::Api(problem) => AcmeError::Ca(problem.to_string()),
            other => AcmeError::Transport(other.to_string()),
        }
    }
}

/// An issued certificate: the chain (leaf first) and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The chain as the CA sent it.
    pub chain_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
}

/// The CA's renewal information for a certificate (RFC 9773).
#[derive(Debug, Clone)]
pub struct Renewal {
    /// The suggested window, Unix seconds: renew at a random moment in it (at once if it
    /// has begun).
    pub start: u64,
    /// See `start`.
    pub end: u64,
    /// When to ask again (the answer's `Retry-After`).
    pub ask_again: Duration,
    /// The certificate, as a renewal order names what it replaces.
    pub id: instant_acme::CertificateIdentifier<'static>,
}

/// The account, ready to order.
pub struct Orderer {
    account: Account,
}

impl std::fmt::Debug for Orderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orderer")
            .field("account", &self.account.id())
            .finish()
    }
}

/// How long an order may wait for the CA to validate and to issue.
const RETRIES: Duration = Duration::from_secs(90);

impl Orderer {
    /// The account at `directory`: restored from `credentials` when given (the database's),
    /// else created (with `contact`, the terms of service agreed); returns the credentials
    /// to keep when it was created.
    pub async fn connect(
        directory: &str,
        contact: &[String],
        credentials: Option<AccountCredentials>,
        http: super::http::Client,
    ) -> Result<(Orderer, Option<AccountCredentials>), AcmeError> {
        let builder = Account::builder_with_http(Box::new(http));
        if let Some(credentials) = credentials {
            let account = builder.from_credentials(credentials).await?;
            return Ok((Orderer { account }, None));
        }
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.to_owned(),
                None,
            )
            .await?;
        Ok((Orderer { account }, Some(credentials)))
    }

    /// The CA's renewal window for `leaf` (DER), or `None` when its directory offers no
    /// renewal information.
    pub async fn renewal(
        &self,
        leaf: &rustls_pki_types::CertificateDer<'_>,
    ) -> Result<Option<Renewal>, AcmeError> {
        let id = instant_acme::CertificateIdentifier::try_from(leaf)
            .map_err(|e| AcmeError::Local(format!("the certificate's identifier: {e}")))?
            .into_owned();
        match self.account.renewal_info(&id).await {
            Ok((info, ask_again)) => {
                let window = &info.suggested_window;
                Ok(Some(Renewal {
                    start: u64::try_from(window.start.unix_timestamp()).unwrap_or(0),
                    end: u64::try_from(window.end.unix_timestamp()).unwrap_or(0),
                    ask_again,
                    id,
                }))
            }
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Orders a certificate for `hostname`, answering its challenge through `challenges`
    /// with the first of `kinds` the CA offers (`kinds`: what this node can answer, in the
    /// operator's order of preference). `replaces`: the certificate it renews, when the CA
    /// has renewal information (RFC 9773 §5), so the CA may exempt it from rate limits.
    /// `fleet`: on a cluster node, the name's lock, through which each challenge is given to
    /// every node before the CA is told it is ready (the CA may reach any of them).
    pub async fn order(
        &self,
        hostname: &str,
        challenges: &Challenges,
        kinds: &[ChallengeKind],
        replaces: Option<instant_acme::CertificateIdentifier<'static>>,
        fleet: Option<&dyn super::share::Held>,
        key_type: KeyType,
    ) -> Result<Issued, AcmeError> {
        let identifiers = [Identifier::Dns(hostname.to_owned())];
        let mut new_order = NewOrder::new(&identifiers);
        if let Some(replaces) = replaces {
            new_order = new_order.replaces(replaces);
        }
        let mut order = self.account.new_order(&new_order).await?;
        let mut answered = Answered {
            challenges,
            names: Vec::new(),
            tokens: Vec::new(),
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AcmeError::Ca(format!(
                        "authorization for {hostname} is {other:?}"
                    )));
                }
            }
            let offered: Vec<ChallengeType> =
                authz.challenges.iter().map(|c| c.r#type.clone()).collect();
            let kind = kinds
                .iter()
                .copied()
                .find(|k| offered.contains(&challenge_type(*k)))
                .ok_or_else(|| {
                    let wanted: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                    AcmeError::Ca(format!(
                        "the CA offers none of the challenges this node can answer ({}) for \
                         {hostname}",
                        wanted.join(", ")
                    ))
                })?;
            let mut challenge = authz
                .challenge(challenge_type(kind))
                .expect("the kind was found among the offered challenges");
            let name = challenge.identifier().to_string();
            let pending = match kind {
                ChallengeKind::TlsAlpn01 => {
                    let digest = challenge.key_authorization().digest();
                    let key =
                        challenge_certificate(&name, digest.as_ref()).map_err(AcmeError::Local)?;
                    answered.challenges.insert(&name, key);
                    answered.names.push(name.clone());
                    Pending::TlsAlpn01 {
                        hostname: name,
                        digest: digest.as_ref().try_into().map_err(|_| {
                            AcmeError::Local("a key authorization digest is not SHA-256".into())
                        })?,
                    }
                }
                ChallengeKind::Http01 => {
                    let token = challenge.token.clone();
                    let key_authorization = challenge.key_authorization().as_str().to_owned();
                    answered
                        .challenges
                        .insert_token(&name, &token, key_authorization.clone());
                    answered.tokens.push(token.clone());
                    Pending::Http01 {
                        hostname: name,
                        token,
                        key_authorization,
                    }
                }
            };
            if let Some(fleet) = fleet {
                fleet.put(&pending).await.map_err(|e| {
                    AcmeError::Local(format!("giving the challenge to the fleet: {e}"))
                })?;
            }
            tracing::info!(route = %hostname, challenge = kind.as_str(), "ACME challenge ready");
            challenge.set_ready().await?;
        }
        let retries = RetryPolicy::new().timeout(RETRIES);
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            let why = order
                .state()
                .error
                .as_ref()
                .map_or_else(|| format!("{status:?}"), ToString::to_string);
            return Err(AcmeError::Ca(format!(
                "order for {hostname} is not ready: {why}"
            )));
        }
        let key_pem = finalize(&mut order, hostname, key_type).await?;
        let chain_pem = order.poll_certificate(&retries).await?;
        drop(answered);
        Ok(Issued { chain_pem, key_pem })
    }
}

/// Sends the CSR for `hostname` signed by a new key of `key_type`; returns the key (PEM).
async fn finalize(
    order: &mut instant_acme::Order,
    hostname: &str,
    key_type: KeyType,
) -> Result<String, AcmeError> {
    let local = |e: rcgen::Error| AcmeError::Local(format!("the certificate request: {e}"));
    let key = match key_type {
        KeyType::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 => {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
    }
    .map_err(local)?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_owned()]).map_err(local)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(local)?;
    order.finalize_csr(csr.der()).await?;
    Ok(key.serialize_pem())
}

/// The protocol's name for a kind.
fn challenge_type(kind: ChallengeKind) -> ChallengeType {
    match kind {
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        ChallengeKind::Http01 => ChallengeType::Http01,
    }
}

/// The challenges an order put in, taken out when it ends, however it ends.
struct Answered<'a> {
    challenges: &'a Challenges,
    /// tls-alpn-01, by name.
    names: Vec<String>,
    /// http-01, by token.
    tokens: Vec<String>,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            self.challenges.remove(name);
        }
        for token in &self.tokens {
            self.challenges.remove_token(token);
        }
    }
}
