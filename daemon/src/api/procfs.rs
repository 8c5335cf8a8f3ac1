//! The daemon process's own figures for `/metrics`: CPU time, resident and virtual memory,
//! open and allowed file descriptors, start time, under the names the Prometheus client
//! libraries use (`process_*`), which dashboards and alerts expect.
//!
//! I/O: reads `/proc/self/stat`, `/proc/self/limits`, `/proc/stat` and lists `/proc/self/fd`
//! at scrape time (never on the data path). The parsers are pure and tested on fixed text;
//! where `/proc` is missing (not Linux) [`read`] returns `None` and the families are left out.

use std::time::Duration;

/// One reading of the process's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time since start, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// File descriptors open now.
    pub open_fds: u64,
    /// The soft limit on open file descriptors (`None`: unlimited).
    pub max_fds: Option<u64>,
    /// When the process started, as seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// Reads the figures from `/proc`; `None` where there is no `/proc/self` to read.
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let (ticks, page) = ticks_and_page()?;
    let fields = parse_stat(&stat)?;
    let boot_time = parse_boot_time(&boot)?;
    let tick = |n: u64| Duration::from_nanos(n.saturating_mul(1_000_000_000) / ticks);
    Some(ProcessStats {
        cpu_seconds: tick(fields.utime + fields.stime).as_secs_f64(),
        resident_bytes: fields.rss_pages.saturating_mul(page),
        virtual_bytes: fields.vsize,
        open_fds,
        max_fds: parse_max_open_files(&limits)?,
        start_time_seconds: boot_time as f64 + tick(fields.starttime).as_secs_f64(),
    })
}

/// Clock ticks per second and the page size, the units of `/proc/self/stat`.
#[cfg(target_os = "linux")]
fn ticks_and_page() -> Option<(u64, u64)> {
    Some((
        rustix::param::clock_ticks_per_second().max(1),
        rustix::param::page_size() as u64,
    ))
}

/// Not Linux: no `/proc` of this form to read.
#[cfg(not(target_os = "linux"))]
fn ticks_and_page() -> Option<(u64, u64)> {
    None
}

/// The fields of `/proc/self/stat` this module reads (man 5 proc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatFields {
    /// 14: user time, in clock ticks.
    utime: u64,
    /// 15: system time, in clock ticks.
    stime: u64,
    /// 22: start time after boot, in clock ticks.
    starttime: u64,
    /// 23: virtual memory, in bytes.
    vsize: u64,
    /// 24: resident set, in pages.
    rss_pages: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses and may hold spaces
/// and parentheses itself, so the numbered fields are counted from after its last `)`.
fn parse_stat(text: &str) -> Option<StatFields> {
    let (_, rest) = text.rsplit_once(')')?;
    // `rest` starts at field 3 (the state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(StatFields {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The `btime` line of `/proc/stat`: boot time in seconds since the epoch.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/PID/limits`: `Some(None)` when unlimited.
fn parse_max_open_files(text: &str) -> Option<Option<u64>> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .strip_prefix("Max open files")?
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(None);
    }
    soft.parse().ok().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name_whatever_it_holds() {
        // A command name with spaces and a `)` of its own.
        let text = "4242 (mc (proxy) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 75 0 0 20 0 3 0 123456 987654321 2048 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(StatFields {
                utime: 250,
                stime: 75,
                starttime: 123456,
                vsize: 987654321,
                rss_pages: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(parse_stat("no parentheses"), None);
    }

    #[test]
    fn boot_time_and_the_open_files_limit_are_read_from_their_lines() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1765000000\nprocesses 9\n"),
            Some(1_765_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            65536                524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(Some(65536)));
        let unlimited = "Max open files            unlimited            unlimited            files";
        assert_eq!(parse_max_open_files(unlimited), Some(None));
        assert_eq!(parse_max_open_files("Max processes 1 1 processes"), None);
    }

    #[test]
    fn this_process_reads_as_alive() {
        let Some(p) = read() else {
            // No /proc here (not Linux): nothing to check.
            return;
        };
        assert!(
            p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes,
            "{p:?}"
        );
        assert!(p.open_fds >= 3, "stdin, stdout, stderr at least: {p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 86_400.0 * 365.0,
            "{p:?}"
        );
    }
}
