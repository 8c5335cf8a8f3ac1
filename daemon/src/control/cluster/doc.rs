//! The values stored under the fleet's keys ([`super::keys`]): JSON documents, one per
//! object, each carrying who wrote it.
//!
//! A route travels with its certificate and key as PEM text, not as paths (paths are per
//! machine); a node writes them to files of its own before serving the route. The
//! registry entry of a node ([`NodeDoc`]) is what `mcproxyctl cluster status` lists.
//!
//! No I/O. Invariants: decoding is bounded by etcd's own value limit (1.5 MiB by default);
//! a value that does not decode is reported with its key and skipped, never applied half.

use mc_proxy_shared::{FirewallRule, Route};
use serde::{Deserialize, Serialize};

/// Who made a change, as every node's events and logs name it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocOrigin {
    /// The node whose admin API took the change.
    pub node: String,
    /// Who asked it ("uid 1000 pid 42 (mcproxyctl)", "seed").
    pub by: String,
}

/// A route as the fleet shares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDoc {
    /// Every field; `tls_cert` and `tls_key` are empty (the PEM below is the certificate).
    pub route: Route,
    /// An L7 route's certificate chain, PEM.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert_pem: String,
    /// An L7 route's private key, PEM.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_pem: String,
    /// Who wrote this version.
    #[serde(default)]
    pub origin: DocOrigin,
}

impl RouteDoc {
    /// Whether two versions serve the same (who wrote them aside).
    pub fn same_content(&self, other: &RouteDoc) -> bool {
        self.route == other.route
            && self.cert_pem == other.cert_pem
            && self.key_pem == other.key_pem
    }
}

/// A firewall rule as the fleet shares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleDoc {
    /// The normalised rule (`203.0.113.7`, `10.0.0.0/8`).
    pub rule: FirewallRule,
    /// Who added it.
    #[serde(default)]
    pub origin: DocOrigin,
}

/// A listener's no-SNI route as the fleet shares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoSniDoc {
    /// The route's hostname; `None`: ClientHellos without SNI are reset.
    pub hostname: Option<String>,
    /// Who set it.
    #[serde(default)]
    pub origin: DocOrigin,
}

/// A node's registry entry: the model's [`NodeInfo`], stored as it is.
pub use crate::model::cluster::NodeInfo as NodeDoc;

/// Encodes a document for etcd.
pub fn encode<T: Serialize>(doc: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string keys).
    serde_json::to_vec(doc).unwrap_or_default()
}

/// Decodes a document read from etcd.
pub fn decode<T: for<'de> Deserialize<'de>>(value: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use mc_proxy_shared::RouteBackend;

    use super::*;

    #[test]
    fn a_route_round_trips_and_who_wrote_it_does_not_make_it_different() {
        let doc = RouteDoc {
            route: Route {
                hostname: "a.test".into(),
                backends: vec![RouteBackend::new("127.0.0.1:9000")],
                ..Route::default()
            },
            cert_pem: String::new(),
            key_pem: String::new(),
            origin: DocOrigin {
                node: "a".into(),
                by: "seed".into(),
            },
        };
        let back: RouteDoc = decode(&encode(&doc)).unwrap();
        assert_eq!(back, doc);
        let other = RouteDoc {
            origin: DocOrigin::default(),
            ..doc.clone()
        };
        assert!(doc.same_content(&other));
        let mut changed = other.clone();
        changed.route.backends[0].weight = 7;
        assert!(!doc.same_content(&changed));
        assert!(decode::<RouteDoc>(b"{not json").is_err());
    }

    /// A route's limits travel in its document; a document written before them (no
    /// `limits` key) still parses, with none.
    #[test]
    fn route_limits_round_trip_and_older_documents_have_none() {
        let mut doc = RouteDoc {
            route: Route {
                hostname: "a.test".into(),
                backends: vec![RouteBackend::new("127.0.0.1:9000")],
                ..Route::default()
            },
            cert_pem: String::new(),
            key_pem: String::new(),
            origin: DocOrigin::default(),
        };
        let old = String::from_utf8(encode(&doc)).unwrap();
        assert!(!old.contains("allow_from"), "{old}");
        let back: RouteDoc = decode(old.as_bytes()).unwrap();
        assert_eq!(back.route.limits, Default::default());
        doc.route.limits.allow_from = vec!["10.0.0.0/8".into()];
        doc.route.limits.deny_from = vec!["10.6.6.0/24".into()];
        let back: RouteDoc = decode(&encode(&doc)).unwrap();
        assert_eq!(back, doc);
        assert!(!doc.same_content(&RouteDoc {
            route: Route {
                limits: Default::default(),
                ..doc.route.clone()
            },
            ..doc.clone()
        }));
    }
}
