//! Values written for people, shared by the command line (`ctl`) and the console (`tui`), so
//! the two never say the same thing two ways: byte sizes, member states and how long they
//! have held, the last health check, times of day, uptimes, who made a change, a route's
//! limits.
//!
//! No I/O, no state; only [`now_ms`] reads the clock (callers that must not, such as drawing,
//! pass a time in). `fit` holds the fixed-width forms the console's tables use (and that the
//! CLI borrows to cut a long reason).

pub mod fit;

use std::time::Duration;

use mc_proxy_shared::client::{ChangeOrigin, ClusterLink};
use mc_proxy_shared::{AdminState, BackendState, MemberStats};

/// A listener's limits per client in words (`listeners`, the console's listener detail);
/// `None` when none is on.
pub fn client_limits(limits: &mc_proxy_shared::ClientLimits) -> Option<String> {
    if !limits.any() {
        return None;
    }
    let mut parts = Vec::new();
    if limits.max_conns_per_client > 0 {
        parts.push(format!("{} open", limits.max_conns_per_client));
    }
    if limits.new_conns_per_client > 0 {
        parts.push(format!(
            "{} new/s (burst {})",
            limits.new_conns_per_client,
            limits.burst()
        ));
    }
    Some(format!(
        "per client (IPv6 /{}): {}",
        limits.client_ipv6_prefix,
        parts.join(", ")
    ))
}

/// A route's access lists and request limits in words (`routes show`, the console's route
/// detail); `None` when it has none.
pub fn route_limits(l: &mc_proxy_shared::limits::RouteLimits) -> Option<String> {
    let mut parts = Vec::new();
    if !l.allow_from.is_empty() {
        parts.push(format!("allow from {}", l.allow_from.join(", ")));
    }
    if !l.deny_from.is_empty() {
        parts.push(format!("deny from {}", l.deny_from.join(", ")));
    }
    let burst = |burst: u32, rate: u32| if burst == 0 { rate } else { burst };
    if l.client_request_rate > 0 {
        parts.push(format!(
            "{} req/s per client (burst {})",
            l.client_request_rate,
            burst(l.client_request_burst, l.client_request_rate)
        ));
    }
    if l.route_request_rate > 0 {
        parts.push(format!(
            "{} req/s for the route (burst {})",
            l.route_request_rate,
            burst(l.route_request_burst, l.route_request_rate)
        ));
    }
    if l.max_requests > 0 {
        parts.push(format!(
            "{} requests at once, {} may wait {}",
            l.max_requests,
            l.max_queue,
            humantime::format_duration(l.queue_timeout())
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Where a plain-HTTP listener redirects: `https://HOST/`, with the port when not 443.
pub fn redirect_target(port: u16) -> String {
    match port {
        443 => "https://HOST/".to_owned(),
        port => format!("https://HOST:{port}/"),
    }
}

/// A talker's hits, `≤hits` when part of the count may be inherited (the daemon's bounded
/// table's estimate); `compact`: from a million on with a unit (`1.2M`), for a 7-column cell.
pub fn talker_hits(t: &mc_proxy_shared::client::Talker, compact: bool) -> String {
    let mark = if t.error == 0 { "" } else { "≤" };
    if compact && t.hits >= 1_000_000 {
        format!("{mark}{}", fit::count(t.hits))
    } else {
        format!("{mark}{}", t.hits)
    }
}

/// 1536 -> "1.5K" (the CLI's tables: one decimal, binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// What a member is doing, for people: the live state, with the admin state when they differ
/// in a way the live one does not say (an enabled member that is down shows `down`).
pub fn member_state(m: &MemberStats) -> String {
    match (m.admin, m.state) {
        (AdminState::Enabled, s) => s.to_string(),
        (admin, BackendState::Draining | BackendState::Disabled) => admin.to_string(),
        (admin, s) => format!("{admin},{s}"),
    }
}

/// `backend 10.0.0.1:80 down (3 failed checks)`-style tail: the member's state for people and
/// its reason in brackets when the daemon gave one.
pub fn member_state_reason(m: &MemberStats) -> String {
    match m.reason.as_str() {
        "" => member_state(m),
        reason => format!("{} ({reason})", member_state(m)),
    }
}

/// `for 2m`: how long the member has been in its state at `now_ms` (ms since the Unix
/// epoch); `-` from a daemon that does not say.
pub fn member_since(m: &MemberStats, now_ms: u64) -> String {
    if m.since_ms == 0 {
        return "-".into();
    }
    format!("for {}", fit::age(now_ms.saturating_sub(m.since_ms) / 1000))
}

/// The last active check at `now_ms`: `3s ago: ok in 2ms`, `1s ago: connect refused in
/// 150µs`; `-` when there is none (no check, or its settings just changed).
pub fn member_check(m: &MemberStats, now_ms: u64) -> String {
    match &m.last_check {
        None => "-".into(),
        Some(c) => format!(
            "{} ago: {} in {}",
            fit::age(now_ms.saturating_sub(c.at_ms) / 1000),
            c.error.as_deref().unwrap_or("ok"),
            fit::latency(c.latency)
        ),
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `HH:MM:SS` (UTC) of a Unix time in ms: the console's event pane and stale banner.
pub fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600 % 24, s / 60 % 60, s % 60)
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time in ms: a certificate's end (days from civil,
/// H. Hinnant, inverted).
pub fn date(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60
    )
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in ms: `mcproxyctl events`, where lines come faster.
pub fn clock_ms(ms: u64) -> String {
    format!("{}.{:03}", clock(ms), ms % 1000)
}

/// A cluster node's link to the fleet's store: `connected`, `connected, behind by 3`,
/// `DISCONNECTED since 12:03:04` (the node serves its last state meanwhile), `connecting`.
pub fn cluster_link(c: &ClusterLink) -> String {
    let behind = (c.store_revision - c.applied_revision).max(0);
    match c.state.as_str() {
        "connected" if behind > 0 => format!("connected, behind by {behind}"),
        "connected" => "connected".to_owned(),
        "disconnected" => format!("DISCONNECTED since {}", clock(c.since_ms)),
        other => other.to_owned(),
    }
}

/// [`cluster_link`] in the console's status line, where room is short: `cluster ok`,
/// `cluster behind 3`, `cluster DOWN since 12:03:04`, `cluster connecting`.
pub fn cluster_link_short(c: &ClusterLink) -> String {
    let behind = (c.store_revision - c.applied_revision).max(0);
    match c.state.as_str() {
        "connected" if behind > 0 => format!("cluster behind {behind}"),
        "connected" => "cluster ok".to_owned(),
        "disconnected" => format!("cluster DOWN since {}", clock(c.since_ms)),
        other => format!("cluster {other}"),
    }
}

/// `1h02m03s`: the daemon's uptime, in the status line and `mcproxyctl status`.
pub fn uptime(d: Duration) -> String {
    let secs = d.as_secs();
    format!("{}h{:02}m{:02}s", secs / 3600, secs / 60 % 60, secs % 60)
}

/// ` [change 7 by uid 1000 pid 4242 (mcproxyctl)]` for an operator's change, else nothing:
/// `mcproxyctl events`, which has the room for the whole origin.
pub fn origin_long(origin: Option<&ChangeOrigin>) -> String {
    origin.map_or_else(String::new, |o| {
        format!(" [change {} by {}]", o.change_id, o.by)
    })
}

/// ` by mcproxyctl` (the process, else the caller in words) for the console's event pane:
/// short, the pane is 80 columns at most.
pub fn origin_short(origin: Option<&ChangeOrigin>) -> String {
    match origin {
        Some(o) if !o.process.is_empty() => format!(" by {}", o.process),
        Some(o) => format!(" by {}", o.by),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(1_804_118_400_000), "2027-03-04 00:00 UTC");
        assert_eq!(date(951_782_400_000 + 3_723_000), "2000-02-29 01:02 UTC");
        assert_eq!(date(4_102_444_799_000), "2099-12-31 23:59 UTC");
    }

    #[test]
    fn times_of_day_and_uptimes_read_the_same_everywhere() {
        let ms = (13 * 3600 + 4 * 60 + 5) * 1000 + 42;
        assert_eq!(clock(ms), "13:04:05");
        assert_eq!(clock_ms(ms), "13:04:05.042");
        assert_eq!(uptime(Duration::from_secs(3723)), "1h02m03s");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(12), "12B");
    }
}
