//! `[cluster]`: the connection settings of the etcd cluster a node shares its state through.
//!
//! Owns the TOML section's file format (`FileCluster`), its validation and the typed result
//! (`ClusterConfig`). I/O: reads the TLS files and the password file named in the section, and
//! the kernel's host name (`/proc/sys/kernel/hostname`) when `name` is left out, so that a
//! `ClusterConfig` that exists holds everything a connection needs (PEM bytes, the password)
//! and `mc-proxy check` catches a missing or unreadable file before a start does.
//!
//! Invariants of a `ClusterConfig`: at least one endpoint, all of one scheme; `https://`
//! endpoints come with a CA (no system roots: see ARCHITECTURE.md "Cluster"); TLS files only
//! with `https://`; a client certificate only with its key; a password only with a user name.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mc_proxy_shared::text::clip;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `prefix` when the section leaves it out.
pub const DEFAULT_PREFIX: &str = "/mc-proxy/default";
/// The longest `prefix`: keys are the prefix plus an object's path, and etcd's requests have a
/// size limit; 128 characters leaves room for any object name.
pub const MAX_PREFIX_LEN: usize = 128;
/// The longest node `name` (the DNS label limit, 63, rounded up).
pub const MAX_NAME_LEN: usize = 64;
/// `connect_timeout` when left out.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// `request_timeout` when left out.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// `lease_ttl` when left out.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// The shortest `lease_ttl`: below it a node's registry key expires on one slow keep-alive.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
/// The longest `lease_ttl`: a dead node leaves the registry within five minutes.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(300);
/// `check_interval` when left out.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// The bounds of `check_interval`: each comparison reads the whole prefix.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// See [`MIN_CHECK_INTERVAL`].
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// The longest `connect_timeout` / `request_timeout`: a write an operator waits for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest endpoint URL accepted.
const MAX_ENDPOINT_LEN: usize = 256;

/// The validated `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd URLs, `http://host:port` or `https://host:port`, all of one scheme, in file order.
    pub endpoints: Vec<String>,
    /// The key prefix the fleet shares (`/mc-proxy/default`): starts with `/`, no trailing `/`.
    pub prefix: String,
    /// This node's name in the fleet (the registry key, events): the host name by default.
    pub name: String,
    /// TLS to etcd; `Some` exactly when the endpoints are `https://`.
    pub tls: Option<ClusterTls>,
    /// etcd authentication, if any.
    pub auth: Option<ClusterAuth>,
    /// How long connecting to an endpoint may take.
    pub connect_timeout: Duration,
    /// How long one etcd request may take once connected.
    pub request_timeout: Duration,
    /// The TTL of the lease that binds this node's registry key (whole seconds).
    pub lease_ttl: Duration,
    /// How often the node compares the whole prefix with what it serves, repairing (and
    /// counting) any difference.
    pub check_interval: Duration,
}

impl ClusterConfig {
    /// Whether the endpoints are `https://`.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// One line for `mc-proxy check` and the start-up log: endpoints, prefix, node name.
    pub fn summary(&self) -> String {
        format!(
            "cluster: etcd {} (prefix {}, node {}{}{})",
            self.endpoints.join(","),
            self.prefix,
            self.name,
            if self.uses_tls() { ", TLS" } else { "" },
            match &self.auth {
                Some(a) => format!(", user {}", a.username),
                None => String::new(),
            }
        )
    }
}

/// `[cluster.tls]`, loaded: the PEM text of each file, checked to parse.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// The CA certificates (PEM) etcd's server certificates must chain to.
    pub ca: Vec<u8>,
    /// The client certificate chain and its key (PEM), for etcd's `--client-cert-auth`.
    pub identity: Option<ClusterIdentity>,
}

/// A client certificate chain and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterIdentity {
    /// The certificate chain (PEM).
    pub cert: Vec<u8>,
    /// The private key (PEM).
    pub key: Vec<u8>,
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // PEM bytes are noise in a debug print, and a key is a secret.
        f.debug_struct("ClusterTls")
            .field("ca", &format_args!("{} bytes", self.ca.len()))
            .field("identity", &self.identity.as_ref().map(|_| "cert+key"))
            .finish()
    }
}

/// etcd user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterAuth {
    /// The etcd user.
    pub username: String,
    /// Its password (from `password` or the first line of `password_file`).
    pub password: String,
}

impl fmt::Debug for ClusterAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The `[cluster]` table exactly as the TOML has it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileCluster {
    #[serde(default)]
    endpoints: Vec<String>,
    prefix: Option<String>,
    name: Option<String>,
    tls: Option<FileClusterTls>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    // Durations in `[proxy]`'s humantime syntax ("3s", "250ms"), parsed in `validate` so
    // that a bad one is a problem named by its key like the others.
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    lease_ttl: Option<String>,
    check_interval: Option<String>,
}

/// `[cluster.tls]` exactly as the TOML has it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClusterTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl FileCluster {
    /// The typed section, or `None` after reporting every problem through `problem(key,
    /// message)`; `key` is the TOML key (`cluster.prefix`).
    pub(crate) fn validate(
        self,
        problem: &mut impl FnMut(String, String),
    ) -> Option<ClusterConfig> {
        let mut ok = true;
        let mut bad = |key: &str, message: String| {
            ok = false;
            problem(format!("cluster.{key}"), message);
        };

        if self.endpoints.is_empty() {
            bad(
                "endpoints",
                "must list at least one etcd URL, such as \"http://127.0.0.1:2379\"".into(),
            );
        }
        let mut schemes = Vec::new();
        for (i, url) in self.endpoints.iter().enumerate() {
            match endpoint_scheme(url) {
                Ok(scheme) => schemes.push(scheme),
                Err(e) => bad(&format!("endpoints[{i}]"), e),
            }
        }
        let https = schemes.contains(&"https");
        if https && schemes.contains(&"http") {
            bad(
                "endpoints",
                "mixes http:// and https://: every member is reached the same way".into(),
            );
        }

        let prefix = self.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        if let Err(e) = check_prefix(&prefix) {
            bad("prefix", e);
        }

        let defaulted = self.name.is_none();
        let name = self.name.or_else(kernel_hostname);
        match &name {
            None => bad(
                "name",
                "not set and the host name cannot be read from /proc/sys/kernel/hostname: set it"
                    .into(),
            ),
            Some(n) => {
                if let Err(e) = check_node_name(n) {
                    let hint = if defaulted {
                        " (the host name, the default: set cluster.name)"
                    } else {
                        ""
                    };
                    bad("name", format!("{e}{hint}"));
                }
            }
        }

        let tls = match self.tls {
            None if https => {
                bad(
                    "tls.ca",
                    "required with https:// endpoints (the system roots are not used)".into(),
                );
                None
            }
            None => None,
            Some(_) if !https => {
                bad(
                    "tls",
                    "set, but the endpoints are http://: use https:// URLs or remove [cluster.tls]"
                        .into(),
                );
                None
            }
            Some(t) => load_tls(t, &mut bad),
        };

        let auth = match (self.username, self.password, self.password_file) {
            (None, None, None) => None,
            (None, _, _) => {
                bad("username", "required with password or password_file".into());
                None
            }
            (Some(_), Some(_), Some(_)) => {
                bad(
                    "password_file",
                    "set together with password: keep one".into(),
                );
                None
            }
            (Some(_), None, None) => {
                bad(
                    "password",
                    "username is set: set password or password_file too".into(),
                );
                None
            }
            (Some(username), Some(password), None) => Some(ClusterAuth { username, password }),
            (Some(username), None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let password = text.lines().next().unwrap_or("").to_owned();
                    if password.is_empty() {
                        bad(
                            "password_file",
                            format!("{}: the first line is empty", path.display()),
                        );
                        None
                    } else {
                        Some(ClusterAuth { username, password })
                    }
                }
                Err(e) => {
                    bad("password_file", format!("{}: {e}", path.display()));
                    None
                }
            },
        };
        if let Some(a) = &auth
            && a.username.is_empty()
        {
            bad("username", "must not be empty".into());
        }

        let mut duration = |key: &str, text: Option<String>, default: Duration| match text {
            None => default,
            Some(text) => humantime::parse_duration(&text).unwrap_or_else(|e| {
                bad(key, format!("invalid duration {}: {e}", clip(&text)));
                default
            }),
        };
        let connect_timeout = duration(
            "connect_timeout",
            self.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        );
        let request_timeout = duration(
            "request_timeout",
            self.request_timeout,
            DEFAULT_REQUEST_TIMEOUT,
        );
        let lease_ttl = duration("lease_ttl", self.lease_ttl, DEFAULT_LEASE_TTL);
        let check_interval = duration(
            "check_interval",
            self.check_interval,
            DEFAULT_CHECK_INTERVAL,
        );
        if !(MIN_CHECK_INTERVAL..=MAX_CHECK_INTERVAL).contains(&check_interval) {
            bad(
                "check_interval",
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(MIN_CHECK_INTERVAL),
                    humantime::format_duration(MAX_CHECK_INTERVAL)
                ),
            );
        }
        for (key, value) in [
            ("connect_timeout", connect_timeout),
            ("request_timeout", request_timeout),
        ] {
            if value.is_zero() || value > MAX_TIMEOUT {
                bad(
                    key,
                    format!(
                        "must be more than 0 and at most {}",
                        humantime::format_duration(MAX_TIMEOUT)
                    ),
                );
            }
        }
        if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&lease_ttl) {
            bad(
                "lease_ttl",
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(MIN_LEASE_TTL),
                    humantime::format_duration(MAX_LEASE_TTL)
                ),
            );
        } else if lease_ttl.subsec_nanos() != 0 {
            bad(
                "lease_ttl",
                "must be whole seconds (etcd leases count in seconds)".into(),
            );
        }

        ok.then_some(ClusterConfig {
            endpoints: self.endpoints,
            prefix,
            name: name.unwrap_or_default(),
            tls,
            auth,
            connect_timeout,
            request_timeout,
            lease_ttl,
            check_interval,
        })
    }
}

/// `http` or `https` for a well-formed endpoint URL `scheme://host:port` (no path, no user
/// info); else why not, the URL clipped.
fn endpoint_scheme(url: &str) -> Result<&'static str, String> {
    let why = |what: &str| {
        format!(
            "invalid etcd URL {}: {what} (expected http://host:port or https://host:port)",
            clip(url)
        )
    };
    if url.len() > MAX_ENDPOINT_LEN {
        return Err(why(&format!("longer than {MAX_ENDPOINT_LEN} characters")));
    }
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        ("http", rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest)
    } else {
        return Err(why("the scheme must be http:// or https://"));
    };
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(why("no port"));
    };
    if !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
        return Err(why("the port must be a number from 1 to 65535"));
    }
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    if !host_ok {
        return Err(why(
            "the host must be a name, an IPv4 address or an [IPv6] address, with no path",
        ));
    }
    Ok(scheme)
}

/// The prefix rules: starts with `/`, no trailing `/`, no `//`, printable ASCII, at most
/// `MAX_PREFIX_LEN` characters.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(format!("longer than {MAX_PREFIX_LEN} characters"));
    }
    if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{}: only printable ASCII without spaces",
            clip(prefix)
        ));
    }
    if !prefix.starts_with('/') || prefix.len() < 2 {
        return Err(format!(
            "{}: must start with / and name something, such as /mc-proxy/prod",
            clip(prefix)
        ));
    }
    if prefix.ends_with('/') || prefix.contains("//") {
        return Err(format!(
            "{}: no trailing / and no empty segment (//)",
            clip(prefix)
        ));
    }
    Ok(())
}

/// The node name rules: 1 to `MAX_NAME_LEN` characters of `[A-Za-z0-9._-]`.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{}: must be 1 to {MAX_NAME_LEN} characters",
            clip(name)
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{}: only letters, digits, '.', '_' and '-'",
            clip(name)
        ));
    }
    Ok(())
}

/// The kernel's host name, the default node name; `None` when it cannot be read (not Linux).
pub fn kernel_hostname() -> Option<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let host = text.trim();
    (!host.is_empty()).then(|| host.to_owned())
}

/// Reads and checks `[cluster.tls]`: the CA holds at least one certificate, the client
/// certificate and key come together and parse.
fn load_tls(t: FileClusterTls, bad: &mut impl FnMut(&str, String)) -> Option<ClusterTls> {
    let ca = match &t.ca {
        None => {
            bad(
                "tls.ca",
                "required with https:// endpoints (the system roots are not used)".into(),
            );
            None
        }
        Some(path) => read_pem(path, PemKind::Certs)
            .map_err(|e| bad("tls.ca", e))
            .ok(),
    };
    let identity = match (&t.cert, &t.key) {
        (None, None) => Some(None),
        (Some(_), None) => {
            bad("tls.key", "required with tls.cert".into());
            None
        }
        (None, Some(_)) => {
            bad("tls.cert", "required with tls.key".into());
            None
        }
        (Some(cert), Some(key)) => {
            let cert = read_pem(cert, PemKind::Certs).map_err(|e| bad("tls.cert", e));
            let key = read_pem(key, PemKind::Key).map_err(|e| bad("tls.key", e));
            match (cert, key) {
                (Ok(cert), Ok(key)) => Some(Some(ClusterIdentity { cert, key })),
                _ => None,
            }
        }
    };
    Some(ClusterTls {
        ca: ca?,
        identity: identity?,
    })
}

#[derive(Clone, Copy)]
enum PemKind {
    Certs,
    Key,
}

/// A PEM file's bytes once they are known to hold at least one certificate, or a private key.
fn read_pem(path: &Path, kind: PemKind) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match kind {
        PemKind::Certs => {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
            match certs {
                Ok(c) if !c.is_empty() => Ok(pem),
                Ok(_) => Err(format!("{}: no PEM certificate in it", path.display())),
                Err(e) => Err(format!("{}: not PEM certificates: {e}", path.display())),
            }
        }
        PemKind::Key => match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(_) => Ok(pem),
            Err(e) => Err(format!("{}: no PEM private key: {e}", path.display())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document with only `[cluster]`, as the config file's parser sees the section.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        cluster: FileCluster,
    }

    /// The section, or every problem as `key: message` (or the parser's error). The config
    /// file's own tests check that the file is named in front.
    fn cluster(_dir: &Path, text: &str) -> Result<ClusterConfig, Vec<String>> {
        let doc: Doc = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        let config = doc
            .cluster
            .validate(&mut |key, message| problems.push(format!("{key}: {message}")));
        match config {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(problems),
        }
    }

    fn problems(dir: &Path, text: &str) -> Vec<String> {
        cluster(dir, text).expect_err("a bad section")
    }

    /// A temp dir with a CA, a client certificate and its key, and a password file.
    fn pki() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["node.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not pem\n").unwrap();
        std::fs::write(dir.path().join("password"), "s3cret\nignored\n").unwrap();
        dir
    }

    #[test]
    fn defaults_fill_everything_but_the_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(
            dir.path(),
            "[cluster]\nendpoints = [\"http://127.0.0.1:2379\", \"http://etcd-2.lan:2379\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.endpoints,
            ["http://127.0.0.1:2379", "http://etcd-2.lan:2379"]
        );
        assert_eq!(c.prefix, DEFAULT_PREFIX);
        assert_eq!(Some(c.name.clone()), kernel_hostname());
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.request_timeout, Duration::from_secs(5));
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert!(c.tls.is_none() && c.auth.is_none());
        assert!(c.summary().contains("prefix /mc-proxy/default"));
    }

    #[test]
    fn every_key_set() {
        let dir = pki();
        let d = dir.path().display();
        let c = cluster(
            dir.path(),
            &format!(
                "[cluster]\nendpoints = [\"https://[::1]:23790\"]\nprefix = \"/mc/prod-1\"\n\
                 name = \"edge-1.par_2\"\nusername = \"mc\"\npassword_file = \"{d}/password\"\n\
                 connect_timeout = \"500ms\"\nrequest_timeout = \"2s\"\nlease_ttl = \"300s\"\n\
                 [cluster.tls]\nca = \"{d}/ca.pem\"\ncert = \"{d}/client.pem\"\n\
                 key = \"{d}/client.key\"\n"
            ),
        )
        .unwrap();
        assert_eq!(c.prefix, "/mc/prod-1");
        assert_eq!(c.name, "edge-1.par_2");
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.request_timeout, Duration::from_secs(2));
        assert_eq!(c.lease_ttl, Duration::from_secs(300));
        let auth = c.auth.as_ref().unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("mc", "s3cret")
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the password is never printed"
        );
        let tls = c.tls.as_ref().unwrap();
        assert!(tls.identity.is_some() && !tls.ca.is_empty());
    }

    #[test]
    fn endpoints_must_be_http_urls_with_a_port() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            problems(dir.path(), "[cluster]\nendpoints = []\nname = \"n\"\n"),
            [
                "cluster.endpoints: must list at least one etcd URL, such as \"http://127.0.0.1:2379\""
            ]
        );
        for bad in [
            "127.0.0.1:2379",
            "grpc://h:2379",
            "http://h",
            "http://h:0",
            "http://h:99999",
            "http://:2379",
            "http://h/x:2379",
            "http://u@h:2379",
            "http://[zz]:2379",
        ] {
            let p = problems(
                dir.path(),
                &format!("[cluster]\nendpoints = [\"{bad}\"]\nname = \"n\"\n"),
            );
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert!(
                p[0].starts_with("cluster.endpoints[0]: invalid etcd URL"),
                "{p:?}"
            );
        }
        let p = problems(
            dir.path(),
            "[cluster]\nendpoints = [\"http://a:1\", \"https://b:1\"]\nname = \"n\"\n\
             [cluster.tls]\nca = \"/nonexistent\"\n",
        );
        assert!(
            p.iter().any(|l| l.contains("mixes http:// and https://")),
            "{p:?}"
        );
    }

    #[test]
    fn prefix_rules() {
        for good in ["/a", "/mc-proxy/default", "/x.y_z/1"] {
            assert_eq!(check_prefix(good), Ok(()), "{good}");
        }
        let long = format!("/{}", "a".repeat(MAX_PREFIX_LEN));
        for bad in ["", "/", "mc", "/mc/", "/a//b", "/a b", "/é", long.as_str()] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = problems(
            dir.path(),
            "[cluster]\nendpoints = [\"http://h:1\"]\nname = \"n\"\nprefix = \"/x/\"\n",
        );
        assert_eq!(
            p,
            ["cluster.prefix: \"/x/\": no trailing / and no empty segment (//)"]
        );
    }

    #[test]
    fn node_name_rules() {
        for good in ["a", "edge-1", "Edge_1.par", &"n".repeat(MAX_NAME_LEN)] {
            assert_eq!(check_node_name(good), Ok(()), "{good}");
        }
        for bad in ["", "a b", "a/b", "é", "a:b", &"n".repeat(MAX_NAME_LEN + 1)] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = problems(
            dir.path(),
            "[cluster]\nendpoints = [\"http://h:1\"]\nname = \"a/b\"\n",
        );
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("cluster.name: "), "{p:?}");
    }

    #[test]
    fn timeouts_and_lease_ttl_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let base = "[cluster]\nendpoints = [\"http://h:1\"]\nname = \"n\"\n";
        let p = problems(
            dir.path(),
            &format!(
                "{base}connect_timeout = \"0s\"\nrequest_timeout = \"10m\"\nlease_ttl = \"1s\"\n"
            ),
        );
        assert_eq!(
            p,
            [
                "cluster.connect_timeout: must be more than 0 and at most 5m",
                "cluster.request_timeout: must be more than 0 and at most 5m",
                "cluster.lease_ttl: must be between 2s and 5m",
            ]
        );
        let p = problems(dir.path(), &format!("{base}lease_ttl = \"2500ms\"\n"));
        assert_eq!(
            p,
            ["cluster.lease_ttl: must be whole seconds (etcd leases count in seconds)"]
        );
        let p = problems(dir.path(), &format!("{base}lease_ttl = \"soon\"\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("cluster.lease_ttl: invalid duration \"soon\""),
            "{p:?}"
        );
        for ok in ["2s", "300s", "1m"] {
            assert!(cluster(dir.path(), &format!("{base}lease_ttl = \"{ok}\"\n")).is_ok());
        }
        for bad in ["0s", "500ms", "2h"] {
            let p = problems(dir.path(), &format!("{base}check_interval = \"{bad}\"\n"));
            assert_eq!(
                p,
                ["cluster.check_interval: must be between 1s and 1h"],
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = problems(
            dir.path(),
            "[cluster]\nendpoints = [\"http://h:1\"]\nttl = \"5s\"\n",
        );
        assert!(p[0].contains("unknown field `ttl`"), "{p:?}");
        let p = problems(
            dir.path(),
            "[cluster]\nendpoints = [\"http://h:1\"]\n[cluster.tls]\ncafile = \"x\"\n",
        );
        assert!(p[0].contains("unknown field `cafile`"), "{p:?}");
    }

    #[test]
    fn tls_rules() {
        let dir = pki();
        let d = dir.path().display();
        let https = "[cluster]\nendpoints = [\"https://h:1\"]\nname = \"n\"\n";
        assert_eq!(
            problems(dir.path(), https),
            ["cluster.tls.ca: required with https:// endpoints (the system roots are not used)"]
        );
        // A CA alone is enough: no client certificate.
        let c = cluster(
            dir.path(),
            &format!("{https}[cluster.tls]\nca = \"{d}/ca.pem\"\n"),
        )
        .unwrap();
        assert!(c.tls.unwrap().identity.is_none());
        assert_eq!(
            problems(
                dir.path(),
                &format!("{https}[cluster.tls]\nca = \"{d}/ca.pem\"\ncert = \"{d}/client.pem\"\n")
            ),
            ["cluster.tls.key: required with tls.cert"]
        );
        assert_eq!(
            problems(
                dir.path(),
                &format!("{https}[cluster.tls]\nca = \"{d}/ca.pem\"\nkey = \"{d}/client.key\"\n")
            ),
            ["cluster.tls.cert: required with tls.key"]
        );
        let p = problems(
            dir.path(),
            &format!(
                "{https}[cluster.tls]\nca = \"{d}/junk.pem\"\ncert = \"{d}/missing.pem\"\n\
                 key = \"{d}/ca.pem\"\n"
            ),
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("cluster.tls.ca: ") && p[0].contains("no PEM certificate"));
        assert!(p[1].starts_with("cluster.tls.cert: ") && p[1].contains("missing.pem"));
        assert!(p[2].starts_with("cluster.tls.key: ") && p[2].contains("no PEM private key"));
        let p = problems(
            dir.path(),
            &format!(
                "[cluster]\nendpoints = [\"http://h:1\"]\nname = \"n\"\n[cluster.tls]\n\
                 ca = \"{d}/ca.pem\"\n"
            ),
        );
        assert!(
            p[0].starts_with("cluster.tls: set, but the endpoints are http://"),
            "{p:?}"
        );
    }

    #[test]
    fn auth_rules() {
        let dir = pki();
        let d = dir.path().display();
        let base = "[cluster]\nendpoints = [\"http://h:1\"]\nname = \"n\"\n";
        let c = cluster(
            dir.path(),
            &format!("{base}username = \"u\"\npassword = \"p\"\n"),
        )
        .unwrap();
        assert_eq!(c.auth.unwrap().password, "p");
        for (keys, want) in [
            (
                "password = \"p\"\n",
                "cluster.username: required with password or password_file",
            ),
            (
                "username = \"u\"\n",
                "cluster.password: username is set: set password or password_file too",
            ),
            (
                "username = \"u\"\npassword = \"p\"\npassword_file = \"/x\"\n",
                "cluster.password_file: set together with password: keep one",
            ),
            (
                "username = \"\"\npassword = \"p\"\n",
                "cluster.username: must not be empty",
            ),
        ] {
            assert_eq!(
                problems(dir.path(), &format!("{base}{keys}")),
                [want],
                "{keys}"
            );
        }
        let p = problems(
            dir.path(),
            &format!("{base}username = \"u\"\npassword_file = \"{d}/missing\"\n"),
        );
        assert!(
            p[0].starts_with("cluster.password_file: ") && p[0].contains("missing"),
            "{p:?}"
        );
    }
}
