//! The ACME client's HTTP: one HTTP/1.1 request per connection over rustls, to the directory
//! and the URLs it names, trusting the system's roots and the `[acme] ca` ones. ACME is a
//! few requests per certificate every few weeks, so no pool; what matters is that the roots
//! are the operator's (a private CA, pebble in tests) and that a slow CA never hangs an order
//! (every request has [`REQUEST_TIMEOUT`]).
//!
//! I/O: TCP and TLS to the CA.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// The longest one request to the CA may take, connect to last byte of the head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the system's trusted roots usually live (the same file backend TLS reads).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The client: a rustls configuration with the roots it trusts, and the CA's last
/// `Retry-After` on a refusal.
#[derive(Clone)]
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
    /// The latest `Retry-After` of a 429 or 503 answer (RFC 8555 §6.6: rate limits; the CA
    /// busy): instant-acme's errors carry the problem document, not the headers, so the
    /// manager takes it from here to wait at least that long before ordering again.
    retry_after: Arc<std::sync::Mutex<Option<std::time::SystemTime>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("acme::http::Client")
    }
}

impl Client {
    /// Trusting the system roots and the certificates in `extra` (PEM, `[acme] ca`).
    pub fn new(extra: Option<&[u8]>) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        if let Ok(pem) = std::fs::read(SYSTEM_ROOTS) {
            let certs = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
            roots.add_parsable_certificates(certs);
        }
        if let Some(pem) = extra {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("[acme] ca: {e}"))?;
            if certs.is_empty() {
                return Err("[acme] ca holds no certificate".into());
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("[acme] ca: {e}"))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::model::certs::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            tls: Arc::new(tls),
            retry_after: Arc::default(),
        })
    }

    /// The `Retry-After` of the CA's last 429 or 503 answer since the last call, if any.
    pub fn take_retry_after(&self) -> Option<std::time::SystemTime> {
        self.retry_after
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    async fn send(&self, req: Request<BodyWrapper<Bytes>>) -> Result<BytesResponse, String> {
        let uri = req.uri().clone();
        if uri.scheme_str() != Some("https") {
            return Err(format!("{uri}: the ACME CA is reached over https only"));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("{uri}: no host"))?
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
        let name = ServerName::try_from(host.trim_matches(|c| c == '[' || c == ']').to_owned())
            .map_err(|e| format!("{host}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS to {host}:{port}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP to {host}:{port}: {e}"))?;
        // The connection lives until the response body has been read (or dropped).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (mut parts, body) = req.into_parts();
        // HTTP/1.1 needs a Host header; the URI in the request line is its path only.
        if !parts.headers.contains_key(http::header::HOST) {
            let value = match uri.port_u16() {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                parts.headers.insert(http::header::HOST, value);
            }
        }
        parts.uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| format!("{uri}: {e}"))?;
        let response = sender
            .send_request(Request::from_parts(parts, body))
            .await
            .map_err(|e| format!("{uri}: {e}"))?;
        if matches!(
            response.status(),
            http::StatusCode::TOO_MANY_REQUESTS | http::StatusCode::SERVICE_UNAVAILABLE
        ) && let Some(at) = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after)
        {
            *self
                .retry_after
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(at);
        }
        Ok(BytesResponse::from(response))
    }
}

/// A `Retry-After` value (RFC 9110 §10.2.3: seconds or an HTTP date) as a moment.
pub fn retry_after(value: &str) -> Option<std::time::SystemTime> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(std::time::SystemTime::now() + Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

impl HttpClient for Client {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.clone();
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, client.send(req)).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) => Err(instant_acme::Error::Other(e.into())),
                Err(_) => Err(instant_acme::Error::Other(
                    "the ACME CA did not answer within 30 s".into(),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let at = retry_after(" 120 ").unwrap();
        let ahead = at.duration_since(SystemTime::now()).unwrap();
        assert!(ahead > Duration::from_secs(118) && ahead <= Duration::from_secs(120));
        let date = retry_after("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            date.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_445_412_480
        );
        assert_eq!(retry_after("soon"), None);
        assert_eq!(retry_after(""), None);
    }
}
