//! A route's recent past: counters over the last [`WINDOW`], from which the console derives the
//! request rate, the error share and the row colour.
//!
//! No I/O; time is passed in, so tests drive it. Invariants: a [`Window`] holds the newest
//! sample and at most one sample older than `WINDOW` before it (the baseline the deltas are taken
//! from), so it stays small however long the console runs, and an error older than the window
//! no longer colours anything.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mc_proxy_shared::Mode;
use mc_proxy_shared::client::RouteStats;

/// How far back the colour and the L7 columns look.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Error share above which a route is shown as a warning (yellow).
pub const WARN_SHARE: f64 = 0.05;
/// Error share above which a route is shown as failing (red): most requests fail.
pub const ERROR_SHARE: f64 = 0.5;

/// How a route is doing over the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// No errors worth a colour (or no traffic).
    Ok,
    /// More than [`WARN_SHARE`] of the recent requests (connections for L4) failed.
    Warning,
    /// More than [`ERROR_SHARE`] failed.
    Error,
}

/// Counter samples covering the last [`WINDOW`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    samples: VecDeque<(Instant, RouteStats)>,
}

/// What happened over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Recent {
    /// Seconds covered (0 with fewer than two samples).
    pub secs: f64,
    /// L7 requests.
    pub requests: u64,
    /// L7 5xx responses (502s for unreachable backends included).
    pub server_errors: u64,
    /// Connections routed.
    pub connections: u64,
    /// Backend dial failures and timeouts.
    pub backend_errors: u64,
    /// L7 request latency over the window (`None` without requests in it).
    pub latency: Option<Latency>,
}

/// L7 request latency percentiles over the window, from the daemon's request-duration
/// histogram (deltas, so old requests do not weigh in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: Quantile,
    /// 99th percentile.
    pub p99: Quantile,
}

/// One estimated quantile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantile {
    /// Interpolated within a bucket.
    Within(Duration),
    /// Past the histogram's highest bound: only "more than this" is known.
    Above(Duration),
}

impl Quantile {
    fn of(h: &mc_proxy_shared::client::Histogram, q: f64) -> Option<Quantile> {
        let secs = h.quantile(q)?;
        let d = Duration::try_from_secs_f64(secs).ok()?;
        Some(if h.quantile_beyond_bounds(q) {
            Quantile::Above(d)
        } else {
            Quantile::Within(d)
        })
    }
}

impl Window {
    /// Adds the counters read at `at` and forgets what the window no longer needs.
    pub fn push(&mut self, at: Instant, stats: RouteStats) {
        self.samples.push_back((at, stats));
        let Some(start) = at.checked_sub(WINDOW) else {
            return;
        };
        // Keep the newest sample taken at or before the window start as the baseline.
        while self.samples.len() > 2 && self.samples[1].0 <= start {
            self.samples.pop_front();
        }
    }

    /// Deltas between the baseline and the newest sample.
    pub fn recent(&self) -> Recent {
        let (Some((t0, a)), Some((t1, b))) = (self.samples.front(), self.samples.back()) else {
            return Recent::default();
        };
        let d = |new: u64, old: u64| new.saturating_sub(old);
        Recent {
            secs: t1.saturating_duration_since(*t0).as_secs_f64(),
            requests: d(b.requests, a.requests),
            server_errors: d(b.responses[4], a.responses[4]),
            connections: d(b.total_connections, a.total_connections),
            backend_errors: d(b.backend_errors, a.backend_errors),
            latency: {
                let h = b.request_duration.since(&a.request_duration);
                Quantile::of(&h, 0.5)
                    .zip(Quantile::of(&h, 0.99))
                    .map(|(p50, p99)| Latency { p50, p99 })
            },
        }
    }
}

impl Recent {
    /// L7 requests per second over the window.
    pub fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.requests as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Failed share of the recent requests (L7: 5xx responses; L4: backend errors per
    /// connection); `None` without traffic. Errors with no counted request still count as all
    /// failing, since counters are read at slightly different moments.
    pub fn error_share(&self, mode: Mode) -> Option<f64> {
        let (bad, all) = match mode {
            Mode::L7 => (self.server_errors, self.requests),
            Mode::L4 => (self.backend_errors, self.connections),
        };
        match (bad, all) {
            (0, 0) => None,
            (bad, all) => Some((bad as f64 / all.max(bad) as f64).min(1.0)),
        }
    }

    /// The colour class for the share.
    pub fn health(&self, mode: Mode) -> Health {
        match self.error_share(mode) {
            Some(s) if s > ERROR_SHARE => Health::Error,
            Some(s) if s > WARN_SHARE => Health::Warning,
            _ => Health::Ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l7(requests: u64, errors: u64) -> RouteStats {
        RouteStats {
            requests,
            responses: [0, requests - errors, 0, 0, errors],
            ..RouteStats::default()
        }
    }

    /// L7 counters after `fast` requests of 0.2 ms and `slow` ones of 2 s, all time.
    fn timed(fast: u64, slow: u64) -> RouteStats {
        let bounds = vec![0.0005, 0.001, 1.0, 2.5, 30.0];
        let mut stats = l7(fast + slow, 0);
        stats.request_duration = mc_proxy_shared::client::Histogram {
            counts: vec![fast, 0, 0, slow, 0, 0],
            upper_bounds_seconds: bounds,
            sum_seconds: fast as f64 * 0.0002 + slow as f64 * 2.0,
            count: fast + slow,
        };
        stats
    }

    #[test]
    fn latency_comes_from_the_window_not_from_all_time() {
        let t0 = Instant::now();
        let mut w = Window::default();
        // A slow past: 1000 requests of 2 s, then only fast ones for 20 s.
        w.push(t0, timed(0, 1000));
        for s in 1..=20 {
            w.push(t0 + Duration::from_secs(s), timed(100 * s, 1000));
        }
        let lat = w.recent().latency.expect("requests in the window");
        let Quantile::Within(p99) = lat.p99 else {
            panic!("{lat:?}")
        };
        assert!(p99 <= Duration::from_micros(500), "{p99:?}");
        // Nothing in the window: no estimate rather than a stale one.
        let mut idle = Window::default();
        idle.push(t0, timed(5, 5));
        idle.push(t0 + Duration::from_secs(1), timed(5, 5));
        assert_eq!(idle.recent().latency, None);
    }

    #[test]
    fn a_quantile_past_the_top_bucket_is_only_a_lower_bound() {
        let t0 = Instant::now();
        let mut w = Window::default();
        let mut before = timed(0, 0);
        before.request_duration.counts = vec![0; 6];
        let mut after = before.clone();
        after.request_duration.counts = vec![90, 0, 0, 0, 0, 10];
        after.request_duration.count = 100;
        after.requests = 100;
        w.push(t0, before);
        w.push(t0 + Duration::from_secs(1), after);
        let lat = w.recent().latency.unwrap();
        assert!(matches!(lat.p50, Quantile::Within(_)), "{lat:?}");
        assert_eq!(lat.p99, Quantile::Above(Duration::from_secs(30)));
    }

    #[test]
    fn an_error_outside_the_window_no_longer_colours() {
        let t0 = Instant::now();
        let mut w = Window::default();
        w.push(t0, l7(100, 0));
        w.push(t0 + Duration::from_secs(1), l7(101, 1));
        assert_eq!(w.recent().health(Mode::L7), Health::Error);
        // Quiet traffic for a long time afterwards.
        for s in 2..1000 {
            w.push(t0 + Duration::from_secs(s), l7(100 + s, 1));
        }
        assert_eq!(w.recent().server_errors, 0);
        assert_eq!(w.recent().health(Mode::L7), Health::Ok);
        assert!(w.samples.len() <= 12, "{}", w.samples.len());
    }

    #[test]
    fn shares_pick_the_colour() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut w = Window::default();
        w.push(at(0), l7(1000, 0));
        w.push(at(5), l7(1100, 4)); // 4 %: below the warning threshold
        assert_eq!(w.recent().health(Mode::L7), Health::Ok);
        w.push(at(6), l7(1200, 20)); // 20 of 200
        assert_eq!(w.recent().health(Mode::L7), Health::Warning);
        w.push(at(7), l7(1400, 220)); // 220 of 400
        assert_eq!(w.recent().health(Mode::L7), Health::Error);
        assert_eq!(w.recent().rps(), 400.0 / 7.0);
        // All failing is an error too (the old code stopped at yellow).
        let mut w = Window::default();
        w.push(at(0), l7(0, 0));
        w.push(at(1), l7(50, 50));
        assert_eq!(w.recent().error_share(Mode::L7), Some(1.0));
        assert_eq!(w.recent().health(Mode::L7), Health::Error);
    }

    #[test]
    fn l4_counts_backend_errors_per_connection() {
        let t0 = Instant::now();
        let s = |conns, errs| RouteStats {
            total_connections: conns,
            backend_errors: errs,
            ..RouteStats::default()
        };
        let mut w = Window::default();
        w.push(t0, s(10, 0));
        assert_eq!(w.recent().error_share(Mode::L4), None);
        w.push(t0 + Duration::from_secs(1), s(20, 1));
        assert_eq!(w.recent().health(Mode::L4), Health::Warning);
        w.push(t0 + Duration::from_secs(2), s(30, 16));
        assert_eq!(w.recent().health(Mode::L4), Health::Error);
    }
}
