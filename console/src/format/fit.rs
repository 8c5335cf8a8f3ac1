//! Fitting values into table cells: text elided visibly with `…`, numbers with their unit in a
//! fixed width.
//!
//! No I/O, no state. Invariants: every function returns a string whose display width (as
//! `unicode-width` counts it, the way ratatui does) is at most the width asked for, and a value
//! that had to be shortened always shows `…` — the console never cuts silently, so two values
//! never look the same unless they are. Numbers always carry their unit and never exceed the
//! widths documented on each function, so a column sized for them cannot overflow.

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use crate::tui::health::Quantile;

/// The mark of an elided value (one column wide).
pub const ELLIPSIS: char = '…';

/// Display width of `s`, in terminal columns.
pub fn width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

fn char_width(c: char) -> usize {
    UnicodeWidthChar::width(c).unwrap_or(0)
}

/// The longest prefix of `s` at most `w` columns wide.
fn head(s: &str, w: usize) -> &str {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        let cw = char_width(c);
        if used + cw > w {
            return &s[..i];
        }
        used += cw;
    }
    s
}

/// The longest suffix of `s` at most `w` columns wide.
fn tail(s: &str, w: usize) -> &str {
    let mut used = 0;
    for (i, c) in s.char_indices().rev() {
        let cw = char_width(c);
        if used + cw > w {
            return &s[i + c.len_utf8()..];
        }
        used += cw;
    }
    s
}

/// `s` if it fits in `w` columns, else its start and `…`.
pub fn end(s: &str, w: usize) -> String {
    if width(s) <= w {
        return s.to_owned();
    }
    if w == 0 {
        return String::new();
    }
    format!("{}{ELLIPSIS}", head(s, w - 1))
}

/// `s` if it fits, else `…` and its end: for values whose end tells them apart.
pub fn start(s: &str, w: usize) -> String {
    if width(s) <= w {
        return s.to_owned();
    }
    if w == 0 {
        return String::new();
    }
    format!("{ELLIPSIS}{}", tail(s, w - 1))
}

/// A `host:port` address in `w` columns: the port is kept whole and the host is cut
/// (`127.0.0…:38943`); when not even the port fits, the end is kept (`…943`), since the last
/// digits are what tell neighbouring backends apart.
pub fn address(s: &str, w: usize) -> String {
    if width(s) <= w {
        return s.to_owned();
    }
    match s.rfind(':') {
        Some(i) if width(&s[i..]) + 2 <= w => {
            let (host, port) = s.split_at(i);
            let room = w - width(port) - 1;
            format!("{}{ELLIPSIS}{port}", head(host, room))
        }
        _ => start(s, w),
    }
}

/// A hostname in `w` columns: the first label is kept (it names the service), then `…`, then
/// as much of the end as fits (`svc12…example.com`). When the first label alone does not fit it
/// is cut at its end.
pub fn hostname(s: &str, w: usize) -> String {
    if width(s) <= w {
        return s.to_owned();
    }
    let first = s.split('.').next().unwrap_or(s);
    if width(first) + 1 >= w || first.len() == s.len() {
        return end(s, w);
    }
    let rest = &s[first.len()..];
    let room = w - width(first) - 1;
    format!("{first}{ELLIPSIS}{}", tail(rest, room))
}

/// Scales `v` by `base` until it is below 1000 and formats it with one decimal under 10 and
/// none above: at most 3 digits and a unit letter. Rounding is decided before formatting so that
/// 9.96 prints as `10`, never as `10.0`.
fn scaled(mut v: f64, base: f64, units: &[&str]) -> String {
    let mut i = 0;
    while v >= 999.5 && i + 1 < units.len() {
        v /= base;
        i += 1;
    }
    if v < 9.95 && (i > 0 || v.fract() != 0.0) {
        format!("{v:.1}{}", units[i])
    } else {
        format!("{v:.0}{}", units[i])
    }
}

/// Bytes, binary units, at most 4 columns: `999B`, `1.2K`, `12K`, `999K`, `1.5M`.
pub fn bytes(n: u64) -> String {
    if n < 1000 {
        return format!("{n}B");
    }
    scaled(n as f64, 1024.0, &["B", "K", "M", "G", "T", "P", "E"])
}

/// A byte rate, at most 6 columns: `0B/s`, `1.2K/s`, `999M/s`.
pub fn byte_rate(per_sec: f64) -> String {
    format!("{}/s", bytes(per_sec.max(0.0).round() as u64))
}

/// A count, decimal units, at most 4 columns: `999`, `1.2K`, `12K`, `1.5M`.
pub fn count(n: u64) -> String {
    if n < 1000 {
        return n.to_string();
    }
    scaled(n as f64, 1000.0, &["", "K", "M", "G", "T", "P", "E"])
}

/// An event rate, at most 6 columns: `0/s`, `0.5/s`, `12/s`, `2.0K/s`.
pub fn per_sec(v: f64) -> String {
    let v = v.max(0.0);
    if v == 0.0 {
        return "0/s".into();
    }
    format!(
        "{}/s",
        scaled(v, 1000.0, &["", "K", "M", "G", "T", "P", "E"])
    )
}

/// A share (0.0 to 1.0) as a percentage, at most 4 columns: `0%`, `0.5%`, `12%`, `100%`.
/// A share that is not zero never prints as `0%`.
pub fn percent(share: f64) -> String {
    let p = (share * 100.0).clamp(0.0, 100.0);
    if p == 0.0 {
        "0%".into()
    } else if p < 0.1 {
        "<.1%".into()
    } else if p < 9.95 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// A duration in seconds, at most 4 columns: `59s`, `12m`, `5h`, `3d`.
pub fn age(secs: u64) -> String {
    match secs {
        0..=99 => format!("{secs}s"),
        100..=5999 => format!("{}m", secs / 60),
        6000..=359_999 => format!("{}h", secs / 3600),
        _ => format!("{}d", (secs / 86_400).min(999)),
    }
}

/// A probe's latency, at most 5 columns: `850µs`, `12ms`, `1.2s`, `30s`.
pub fn latency(d: std::time::Duration) -> String {
    let micros = d.as_micros();
    match micros {
        0..=999 => format!("{micros}µs"),
        1_000..=999_999 => format!("{}ms", micros / 1000),
        1_000_000..=9_999_999 => format!("{:.1}s", d.as_secs_f64()),
        _ => format!("{}s", d.as_secs()),
    }
}

/// A latency estimate in at most 5 columns, always with its unit: `0.3ms`, `12ms`, `1.5s`;
/// past the histogram's top bucket only a lower bound is known: `>30s`.
pub fn quantile(q: Quantile) -> String {
    match q {
        Quantile::Within(d) => request_latency(d),
        Quantile::Above(d) => format!(">{}", request_latency(d)),
    }
}

fn request_latency(d: std::time::Duration) -> String {
    // Thresholds sit where rounding would add a digit (9.96 ms prints as 10ms, not 10.0ms).
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 9.95 {
        format!("{ms:.1}ms")
    } else if ms < 999.5 {
        format!("{ms:.0}ms")
    } else if ms < 9_950.0 {
        format!("{:.1}s", ms / 1000.0)
    } else {
        format!("{:.0}s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_keep_their_unit() {
        use std::time::Duration;
        assert_eq!(latency(Duration::from_micros(850)), "850µs");
        assert_eq!(latency(Duration::from_micros(12_345)), "12ms");
        assert_eq!(latency(Duration::from_millis(1_250)), "1.2s");
        assert_eq!(latency(Duration::from_secs(30)), "30s");
    }

    #[test]
    fn short_values_are_untouched() {
        assert_eq!(end("abc", 3), "abc");
        assert_eq!(address("127.0.0.1:1", 11), "127.0.0.1:1");
        assert_eq!(hostname("a.test", 6), "a.test");
    }

    #[test]
    fn generic_text_ends_with_an_ellipsis_within_the_width() {
        assert_eq!(end("abcdef", 4), "abc…");
        assert_eq!(end("abcdef", 1), "…");
        assert_eq!(end("abcdef", 2), "a…");
        assert_eq!(end("abcdef", 3), "ab…");
        assert_eq!(end("abcdef", 0), "");
        assert_eq!(start("abcdef", 3), "…ef");
    }

    #[test]
    fn addresses_keep_their_port() {
        let a = address("127.0.0.1:38943", 14);
        let b = address("127.0.0.1:38944", 14);
        assert_eq!(a, "127.0.0…:38943");
        assert_ne!(a, b);
        assert_eq!(width(&a), 14);
        assert_eq!(address("[2001:db8::1]:443", 10), "[2001…:443");
        // Too narrow for the port: the end survives.
        assert_eq!(address("127.0.0.1:38943", 4), "…943");
        assert_eq!(address("127.0.0.1:38943", 1), "…");
        assert_eq!(address("127.0.0.1:38943", 2), "…3");
        assert_eq!(address("127.0.0.1:38943", 3), "…43");
        assert_eq!(address("no-port-at-all", 5), "…-all");
    }

    #[test]
    fn hostnames_keep_their_first_label() {
        assert_eq!(
            hostname("svc123.prod.eu-west.example.com", 20),
            "svc123…t.example.com"
        );
        assert_eq!(width(&hostname("svc123.prod.eu-west.example.com", 20)), 20);
        assert_eq!(
            hostname("averyveryverylongfirstlabel.test", 10),
            "averyvery…"
        );
        assert_eq!(hostname("svc1.example.com", 1), "…");
        assert_eq!(hostname("svc1.example.com", 2), "s…");
        assert_eq!(hostname("svc1.example.com", 3), "sv…");
        assert_eq!(hostname("nodots", 4), "nod…");
    }

    #[test]
    fn wide_characters_are_counted_in_columns() {
        // Each CJK character is two columns; the ellipsis is one.
        let s = "日本語.example";
        let e = end(s, 4);
        assert_eq!(e, "日…");
        assert!(width(&e) <= 4);
        let h = hostname("日本語日本語.example.jp", 9);
        assert!(width(&h) <= 9, "{h}");
        assert!(h.contains(ELLIPSIS));
        assert_eq!(width("…"), 1);
        for w in 0..12 {
            assert!(width(&address("例え.jp:443", w)) <= w);
            assert!(width(&hostname("例え.例え.jp", w)) <= w);
        }
    }

    #[test]
    fn numbers_carry_units_and_stay_narrow() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(999), "999B");
        assert_eq!(bytes(1000), "1.0K");
        assert_eq!(bytes(1229), "1.2K");
        assert_eq!(bytes(12 * 1024), "12K");
        assert_eq!(bytes(10_188), "9.9K");
        assert_eq!(bytes(10_199), "10K");
        assert_eq!(bytes(1_023_487), "999K");
        assert_eq!(bytes(1_023_999), "1.0M");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5M");
        assert_eq!(byte_rate(1536.0 * 1024.0), "1.5M/s");
        assert_eq!(count(999), "999");
        assert_eq!(count(7000), "7.0K");
        assert_eq!(count(12_345), "12K");
        assert_eq!(per_sec(0.0), "0/s");
        assert_eq!(per_sec(0.5), "0.5/s");
        assert_eq!(per_sec(11.0), "11/s");
        assert_eq!(per_sec(114.6), "115/s");
        assert_eq!(per_sec(2000.0), "2.0K/s");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(0.0004), "<.1%");
        assert_eq!(percent(0.005), "0.5%");
        assert_eq!(percent(0.126), "13%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        for n in (0..64).map(|s| (1u64 << s).saturating_sub(1)) {
            assert!(width(&bytes(n)) <= 4, "{n} {}", bytes(n));
            assert!(width(&count(n)) <= 4, "{n} {}", count(n));
            assert!(width(&per_sec(n as f64)) <= 6, "{n}");
            assert!(width(&byte_rate(n as f64)) <= 6, "{n}");
            assert!(width(&age(n)) <= 4, "{n}");
        }
        for p in 0..=1000 {
            assert!(width(&percent(f64::from(p) / 1000.0)) <= 4);
        }
    }

    #[test]
    fn latencies_keep_their_unit_and_say_when_only_a_bound_is_known() {
        use std::time::Duration;
        let within = |ms: f64| quantile(Quantile::Within(Duration::from_secs_f64(ms / 1000.0)));
        assert_eq!(within(0.34), "0.3ms");
        assert_eq!(within(12.4), "12ms");
        assert_eq!(within(999.0), "999ms");
        assert_eq!(within(1500.0), "1.5s");
        assert_eq!(within(25_000.0), "25s");
        assert_eq!(quantile(Quantile::Above(Duration::from_secs(30))), ">30s");
        for ms in [0.01, 9.99, 10.0, 999.4, 9999.0, 29_999.0] {
            assert!(within(ms).len() <= 5, "{ms}: {}", within(ms));
        }
    }
}
