//! `mcproxyctl firewall ...`: list, block (add) and unblock (remove) an address or a
//! network; the rule order every listing (and `export`) uses.
//!
//! I/O: the admin socket (through the caller's client) and stdout.

use mc_proxy_shared::client::AdminClient;
use mc_proxy_shared::{FirewallRule, FirewallRuleKind};

use super::{CtlError, emit, print_out, table};
use crate::cli::{FirewallCommand, RuleArgs};

/// Runs one `firewall` subcommand.
pub(super) async fn run(
    client: &mut AdminClient,
    command: FirewallCommand,
) -> Result<(), CtlError> {
    match command {
        FirewallCommand::List { table } => {
            let mut rules = client.firewall_rules().await?;
            rules.sort_by_cached_key(rule_order);
            print_out(&table, &rules, |r, h| format_rules(r, h))
        }
        FirewallCommand::Add(args) => {
            let rule = client.add_firewall_rule(rule(args)).await?;
            emit(&format!("blocked {} {}\n", rule.kind, rule.value))
        }
        FirewallCommand::Remove(args) => {
            let rule = rule(args);
            client.remove_firewall_rule(rule.clone()).await?;
            emit(&format!("unblocked {} {}\n", rule.kind, rule.value))
        }
    }
}

/// Addresses before networks, each in address order (`10.0.0.9` before `10.0.0.10`).
pub(super) fn rule_order(rule: &FirewallRule) -> (bool, Option<ipnet::IpNet>, String) {
    let addr = rule
        .value
        .parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| rule.value.parse::<std::net::IpAddr>().ok().map(Into::into));
    (
        rule.kind == FirewallRuleKind::Cidr,
        addr,
        rule.value.clone(),
    )
}

fn rule(args: RuleArgs) -> FirewallRule {
    match (args.ip, args.cidr) {
        (Some(ip), _) => FirewallRule {
            kind: FirewallRuleKind::Ip,
            value: ip,
        },
        (None, cidr) => FirewallRule {
            kind: FirewallRuleKind::Cidr,
            value: cidr.unwrap_or_default(),
        },
    }
}

fn format_rules(rules: &[FirewallRule], headers: bool) -> String {
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| vec![r.kind.to_string(), r.value.clone()])
        .collect();
    table(headers.then_some(&["KIND", "VALUE"][..]), &rows)
}
