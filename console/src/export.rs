//! `mcproxyctl export`: the daemon's listeners, routes and firewall rules (what its database
//! holds) written as the config file's TOML, so that they can be kept in version control,
//! diffed, or used to seed another node's empty database.
//!
//! No I/O: [`to_toml`] turns what the admin API listed into text. Invariants: every key is one
//! the config file takes, spelled as the README's reference spells it; every string is a TOML
//! basic string with `"`, `\` and control characters escaped, so no stored value can break the
//! file; a field at its default is left out, so an export reads like a hand-written file.

use std::fmt::Write as _;

use mc_proxy_shared::client::{ListenerStatus, RouteEntry};
use mc_proxy_shared::{
    AdminState, BackendProtocol, Balance, FirewallRule, FirewallRuleKind, HealthCheck, Mode,
    RouteBackend,
};

/// The state as config TOML: a header comment, `[firewall]`, then each listener with its
/// routes (`listeners` in the daemon's order, `routes` by hostname within each).
pub fn to_toml(
    listeners: &[ListenerStatus],
    routes: &[RouteEntry],
    rules: &[FirewallRule],
    source: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# mc-proxy listeners, routes and firewall rules, exported by mcproxyctl from {source}.\n\
         # To use it as a config file, add [database] (and [admin], [metrics], [proxy]): a\n\
         # daemon seeds an empty database from it."
    );
    let of = |kind| -> Vec<&str> {
        rules
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.value.as_str())
            .collect()
    };
    let (ips, cidrs) = (of(FirewallRuleKind::Ip), of(FirewallRuleKind::Cidr));
    if !ips.is_empty() || !cidrs.is_empty() {
        out.push_str("\n[firewall]\n");
        if !ips.is_empty() {
            let _ = writeln!(out, "blocked_ips = {}", array(&ips));
        }
        if !cidrs.is_empty() {
            let _ = writeln!(out, "blocked_cidrs = {}", array(&cidrs));
        }
    }
    for l in listeners {
        out.push_str("\n[[listeners]]\n");
        let _ = writeln!(out, "addr = {}", quote(&l.addr));
        if l.name != l.addr {
            let _ = writeln!(out, "name = {}", quote(&l.name));
        }
        if l.proxy_protocol {
            out.push_str("proxy_protocol = true\n");
        }
        if !l.proxy_protocol_from.is_empty() {
            let from: Vec<&str> = l.proxy_protocol_from.iter().map(String::as_str).collect();
            let _ = writeln!(out, "proxy_protocol_from = {}", array(&from));
        }
        if !l.no_sni_route.is_empty() {
            let _ = writeln!(out, "no_sni_route = {}", quote(&l.no_sni_route));
        }
        if l.access_log {
            out.push_str("access_log = true\n");
        }
        let (limits, default) = (&l.client_limits, mc_proxy_shared::ClientLimits::default());
        for (key, value, default) in [
            (
                "max_conns_per_client",
                limits.max_conns_per_client,
                default.max_conns_per_client,
            ),
            (
                "new_conns_per_client",
                limits.new_conns_per_client,
                default.new_conns_per_client,
            ),
            (
                "new_conns_burst",
                limits.new_conns_burst,
                default.new_conns_burst,
            ),
            (
                "client_ipv6_prefix",
                u32::from(limits.client_ipv6_prefix),
                u32::from(default.client_ipv6_prefix),
            ),
        ] {
            if value != default {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        let mut mine: Vec<&RouteEntry> = routes.iter().filter(|r| r.listener == l.addr).collect();
        mine.sort_by(|a, b| a.route.hostname.cmp(&b.route.hostname));
        for entry in mine {
            write_route(&mut out, entry);
        }
    }
    out
}

fn write_route(out: &mut String, entry: &RouteEntry) {
    let r = &entry.route;
    out.push_str("\n[[listeners.routes]]\n");
    if let Some(reason) = &entry.not_served {
        // One line: a reason naming a file could hold anything.
        let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
        let _ = writeln!(out, "# not served when exported: {reason}");
    }
    let _ = writeln!(out, "hostname = {}", quote(&r.hostname));
    write_backends(out, &r.backends);
    if r.balance != Balance::default() {
        let _ = writeln!(out, "balance = {}", quote(&r.balance.to_string()));
    }
    if r.mode != Mode::default() {
        let _ = writeln!(out, "mode = {}", quote(&r.mode.to_string()));
    }
    for (key, value) in [("tls_cert", &r.tls_cert), ("tls_key", &r.tls_key)] {
        if !value.is_empty() {
            let _ = writeln!(out, "{key} = {}", quote(value));
        }
    }
    if r.backend_tls {
        out.push_str("backend_tls = true\n");
    }
    if r.mode == Mode::L7 && r.backend_protocol != BackendProtocol::default() {
        let _ = writeln!(
            out,
            "backend_protocol = {}",
            quote(&r.backend_protocol.to_string())
        );
    }
    if r.send_proxy_protocol {
        out.push_str("send_proxy_protocol = true\n");
    }
    if r.acme {
        out.push_str("acme = true\n");
    }
    if r.access_log {
        out.push_str("access_log = true\n");
    }
    for (key, list) in [
        ("allow_from", &r.limits.allow_from),
        ("deny_from", &r.limits.deny_from),
    ] {
        if !list.is_empty() {
            let list: Vec<&str> = list.iter().map(String::as_str).collect();
            let _ = writeln!(out, "{key} = {}", array(&list));
        }
    }
    for (key, value) in [
        ("client_request_rate", r.limits.client_request_rate),
        ("client_request_burst", r.limits.client_request_burst),
        ("route_request_rate", r.limits.route_request_rate),
        ("route_request_burst", r.limits.route_request_burst),
        ("max_requests", r.limits.max_requests),
        ("max_queue", r.limits.max_queue),
    ] {
        if value > 0 {
            let _ = writeln!(out, "{key} = {value}");
        }
    }
    if r.limits.queue_timeout_ms > 0 {
        let _ = writeln!(out, "queue_timeout = \"{}ms\"", r.limits.queue_timeout_ms);
    }
    if let Some(check) = &r.health_check {
        write_check(out, check);
    }
}

/// `backend = "..."` for one enabled member of weight 1 (the short form), else `backends`
/// with a table per member.
fn write_backends(out: &mut String, backends: &[RouteBackend]) {
    if let [one] = backends
        && one.weight == RouteBackend::default_weight()
        && one.state == AdminState::Enabled
    {
        let _ = writeln!(out, "backend = {}", quote(&one.address));
        return;
    }
    out.push_str("backends = [\n");
    for b in backends {
        let _ = write!(out, "  {{ address = {}", quote(&b.address));
        if b.weight != RouteBackend::default_weight() {
            let _ = write!(out, ", weight = {}", b.weight);
        }
        if b.state != AdminState::Enabled {
            let _ = write!(out, ", state = {}", quote(b.state.as_str()));
        }
        out.push_str(" },\n");
    }
    out.push_str("]\n");
}

/// `[listeners.routes.health_check]` with every key, so the file says what runs.
fn write_check(out: &mut String, check: &HealthCheck) {
    out.push_str("[listeners.routes.health_check]\n");
    let _ = writeln!(out, "interval = {}", quote(&duration(check.interval)));
    let _ = writeln!(out, "timeout = {}", quote(&duration(check.timeout)));
    let _ = writeln!(out, "rise = {}", check.rise);
    let _ = writeln!(out, "fall = {}", check.fall);
    if !check.path.is_empty() {
        let _ = writeln!(out, "path = {}", quote(&check.path));
        let _ = writeln!(out, "expect = {}", quote(&check.expect.to_string()));
    }
}

/// A duration as the config takes it: whole seconds as `"2s"`, anything else in `"ms"`.
fn duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn array(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| quote(v)).collect();
    format!("[{}]", quoted.join(", "))
}

/// A TOML basic string: `"` and `\` escaped, control characters as `\uXXXX` (`\n`, `\t` by
/// name).
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_so_no_value_can_break_the_file() {
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(quote("a\"b\\c\nd\u{7}"), "\"a\\\"b\\\\c\\nd\\u0007\"");
    }

    #[test]
    fn durations_are_written_as_the_config_reads_them() {
        assert_eq!(duration(std::time::Duration::from_secs(2)), "2s");
        assert_eq!(duration(std::time::Duration::from_millis(1500)), "1500ms");
    }
}
