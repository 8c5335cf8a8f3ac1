//! The global blocklist: addresses and networks whose connections are reset before their
//! ClientHello is read.
//!
//! No I/O. A `Firewall` is an immutable snapshot, swapped whole when rules change. Invariant:
//! addresses are compared in canonical form, so an IPv4 client accepted on a dual-stack socket
//! (`::ffff:192.0.2.10`) matches the rule `192.0.2.10`, and a rule written as an IPv4-mapped
//! IPv6 address matches the plain IPv4 client.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use mc_proxy_shared::{FirewallRule, FirewallRuleKind};

/// A rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is not {}", mc_proxy_shared::text::clip(.value), match .kind {
    FirewallRuleKind::Ip => "an IP address",
    FirewallRuleKind::Cidr => "a network in CIDR notation such as 198.51.100.0/24",
})]
pub struct InvalidRule {
    /// The rule's kind.
    pub kind: FirewallRuleKind,
    /// What it held.
    pub value: String,
}

/// Parses a rule: the one parser for rules from the TOML, the admin API and the store.
/// Returns it normalised as it is stored and shown: an address in its canonical text
/// (`2001:db8::1`), a network truncated to its prefix (`10.1.2.3/8` is `10.0.0.0/8`);
/// surrounding whitespace is ignored.
pub fn parse_rule(kind: FirewallRuleKind, value: &str) -> Result<FirewallRule, InvalidRule> {
    let trimmed = value.trim();
    let invalid = || InvalidRule {
        kind,
        value: value.to_owned(),
    };
    let value = match kind {
        FirewallRuleKind::Ip => trimmed
            .parse::<IpAddr>()
            .map_err(|_| invalid())?
            .to_string(),
        FirewallRuleKind::Cidr => trimmed
            .parse::<IpNet>()
            .map_err(|_| invalid())?
            .trunc()
            .to_string(),
    };
    Ok(FirewallRule { kind, value })
}

/// Blocked addresses and networks.
#[derive(Debug, Default, Clone)]
pub struct Firewall {
    ips: HashSet<IpAddr>,
    nets: Vec<IpNet>,
}

impl Firewall {
    /// Builds a firewall from addresses and networks.
    pub fn new(
        ips: impl IntoIterator<Item = IpAddr>,
        nets: impl IntoIterator<Item = IpNet>,
    ) -> Self {
        Firewall {
            ips: ips.into_iter().map(|ip| ip.to_canonical()).collect(),
            nets: nets.into_iter().map(canonical_net).collect(),
        }
    }

    /// Builds a firewall from stored rules; fails on the first rule that does not parse.
    pub fn from_rules<'a>(
        rules: impl IntoIterator<Item = &'a FirewallRule>,
    ) -> Result<Self, InvalidRule> {
        let mut ips = Vec::new();
        let mut nets = Vec::new();
        for rule in rules {
            let parsed = parse_rule(rule.kind, &rule.value)?;
            // parse_rule's text always parses back.
            match rule.kind {
                FirewallRuleKind::Ip => ips.extend(parsed.value.parse::<IpAddr>()),
                FirewallRuleKind::Cidr => nets.extend(parsed.value.parse::<IpNet>()),
            }
        }
        Ok(Firewall::new(ips, nets))
    }

    /// True when connections from `ip` must be reset.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.ips.contains(&ip) || self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.ips.len() + self.nets.len()
    }

    /// True when nothing is blocked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `::ffff:0:0/96`-style networks written for IPv4 clients become plain IPv4 networks.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        return IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
            .expect("prefix_len - 96 is at most 32")
            .trunc();
    }
    net.trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw(ips: &[&str], nets: &[&str]) -> Firewall {
        Firewall::new(
            ips.iter().map(|s| s.parse().unwrap()),
            nets.iter().map(|s| s.parse().unwrap()),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_listed_addresses_and_networks_only() {
        let fw = fw(
            &["192.0.2.10", "2001:db8::1"],
            &["198.51.100.0/24", "2001:db8:1::/48"],
        );
        assert!(fw.is_blocked(ip("192.0.2.10")));
        assert!(!fw.is_blocked(ip("192.0.2.11")));
        assert!(fw.is_blocked(ip("198.51.100.200")));
        assert!(!fw.is_blocked(ip("198.51.101.1")));
        assert!(fw.is_blocked(ip("2001:db8::1")));
        assert!(fw.is_blocked(ip("2001:db8:1:ffff::9")));
        assert!(!fw.is_blocked(ip("2001:db8:2::1")));
    }

    #[test]
    fn ipv4_mapped_peer_matches_its_ipv4_rule() {
        let fw = fw(&["192.0.2.10"], &["198.51.100.0/24"]);
        assert!(fw.is_blocked(ip("::ffff:192.0.2.10")));
        assert!(fw.is_blocked(ip("::ffff:198.51.100.7")));
        assert!(!fw.is_blocked(ip("::ffff:192.0.2.11")));
    }

    #[test]
    fn ipv4_mapped_rule_matches_plain_ipv4_peer() {
        let fw = fw(&["::ffff:192.0.2.10"], &["::ffff:198.51.100.0/120"]);
        assert!(fw.is_blocked(ip("192.0.2.10")));
        assert!(fw.is_blocked(ip("198.51.100.9")));
        assert!(!fw.is_blocked(ip("198.51.101.9")));
    }

    #[test]
    fn stored_rules_that_do_not_parse_are_reported() {
        let rules = [FirewallRule {
            kind: FirewallRuleKind::Cidr,
            value: "10.0.0.0/33".into(),
        }];
        let err = Firewall::from_rules(&rules).unwrap_err();
        assert_eq!(err.value, "10.0.0.0/33");
    }
}
