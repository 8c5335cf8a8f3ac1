//! Where the fleet's shared objects live in etcd: one key per object under
//! `<prefix>/v1/`, the whole object as the value.
//!
//! - `routes/<listener>/<hostname>`: a route, named by its listener's name;
//! - `firewall/<rule>`: a firewall rule (its normalised text);
//! - `listeners/<listener>/no-sni`: a listener's route for ClientHellos without SNI;
//! - `<prefix>/nodes/v1/<name>` (outside `v1/`, so no node watches it): a node's registry
//!   entry, bound to its lease. Its writes must not look like changes of the table: a node
//!   that rewrote its entry whenever the store moved would keep every other node rewriting.
//! - `seeded`: written once, by the node that seeded an empty prefix;
//! - `last-change`: who made the latest change, written in each change's transaction, so that
//!   a deletion (whose event carries no value) is still told apart by who made it.
//!
//! No I/O. Invariants: a segment never contains `/` (escaped as `%2F`, `%` as `%25`), so
//! [`Keys::parse`] reads back exactly what the builders wrote; a key that does not parse is
//! not the daemon's and is ignored by the sync.

/// The key builder and parser for one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `<prefix>/v1/`.
    root: String,
    /// `<prefix>/nodes/v1/`.
    nodes: String,
}

/// What a key under the prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A route: its listener's name and its hostname.
    Route {
        /// The listener's name.
        listener: String,
        /// The route's hostname (normalised).
        hostname: String,
    },
    /// A firewall rule.
    Rule(String),
    /// A listener's no-SNI route.
    NoSni {
        /// The listener's name.
        listener: String,
    },
    /// The seeding guard.
    Seeded,
    /// Who made the latest change.
    LastChange,
}

/// A key segment that may hold `/` (a listener's name, a rule, a directory URL), escaped so
/// it stays one segment.
pub(super) fn escape(segment: &str) -> String {
    segment.replace('%', "%25").replace('/', "%2F")
}

fn unescape(segment: &str) -> String {
    segment.replace("%2F", "/").replace("%25", "%")
}

impl Keys {
    /// The keys under `prefix` (`/mc-proxy/default`).
    pub fn new(prefix: &str) -> Keys {
        let prefix = prefix.trim_end_matches('/');
        Keys {
            root: format!("{prefix}/v1/"),
            nodes: format!("{prefix}/nodes/v1/"),
        }
    }

    /// Every key of the fleet starts with this (`<prefix>/v1/`).
    pub fn root(&self) -> &str {
        &self.root
    }

    /// A route's key.
    pub fn route(&self, listener: &str, hostname: &str) -> String {
        format!(
            "{}routes/{}/{}",
            self.root,
            escape(listener),
            escape(hostname)
        )
    }

    /// A firewall rule's key.
    pub fn rule(&self, rule: &str) -> String {
        format!("{}firewall/{}", self.root, escape(rule))
    }

    /// A listener's no-SNI route key.
    pub fn no_sni(&self, listener: &str) -> String {
        format!("{}listeners/{}/no-sni", self.root, escape(listener))
    }

    /// A node's registry key.
    pub fn node(&self, name: &str) -> String {
        format!("{}{}", self.nodes(), escape(name))
    }

    /// The prefix of every node's registry key.
    pub fn nodes(&self) -> String {
        self.nodes.clone()
    }

    /// The seeding guard's key.
    pub fn seeded(&self) -> String {
        format!("{}seeded", self.root)
    }

    /// The key naming who made the latest change.
    pub fn last_change(&self) -> String {
        format!("{}last-change", self.root)
    }

    /// What `key` names, or `None` for a key the daemon does not write.
    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.root)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["routes", listener, hostname] => Some(Key::Route {
                listener: unescape(listener),
                hostname: unescape(hostname),
            }),
            ["firewall", rule] => Some(Key::Rule(unescape(rule))),
            ["listeners", listener, "no-sni"] => Some(Key::NoSni {
                listener: unescape(listener),
            }),
            ["seeded"] => Some(Key::Seeded),
            ["last-change"] => Some(Key::LastChange),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_back_to_what_built_it_slashes_and_percents_included() {
        let keys = Keys::new("/mc-proxy/default/");
        assert_eq!(keys.root(), "/mc-proxy/default/v1/");
        let cases = [
            (
                keys.route("[::]:443", "*.a.test"),
                Key::Route {
                    listener: "[::]:443".into(),
                    hostname: "*.a.test".into(),
                },
            ),
            (keys.rule("10.0.0.0/8"), Key::Rule("10.0.0.0/8".into())),
            (keys.rule("a%2Fb"), Key::Rule("a%2Fb".into())),
            (
                keys.no_sni("public"),
                Key::NoSni {
                    listener: "public".into(),
                },
            ),
            (keys.seeded(), Key::Seeded),
            (keys.last_change(), Key::LastChange),
        ];
        for (key, want) in cases {
            assert_eq!(keys.parse(&key), Some(want), "{key}");
        }
        assert_eq!(
            keys.rule("10.0.0.0/8"),
            "/mc-proxy/default/v1/firewall/10.0.0.0%2F8"
        );
        assert_eq!(keys.parse("/mc-proxy/default/v1/routes/only-one"), None);
        assert_eq!(keys.parse("/mc-proxy/other/v1/seeded"), None);
        assert_eq!(keys.parse("/mc-proxy/default/v2/seeded"), None);
        // Registry entries are outside the watched table.
        assert_eq!(keys.node("edge-1"), "/mc-proxy/default/nodes/v1/edge-1");
        assert!(!keys.node("edge-1").starts_with(keys.root()));
    }
}
