//! A fixed-bucket latency histogram: recording is two relaxed atomic adds (the bucket and the
//! sum), no allocation and no lock. Its bounds ([`BUCKET_BOUNDS_SECONDS`]) are fixed at compile
//! time so that every route, every scrape and every admin API client sees the same buckets and
//! deltas between two reads are meaningful.
//!
//! No I/O. Used by route counters (`stats`) and health checks (`backends`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds, from 0.5 ms to 30 s in roughly
/// ×2-×2.5 steps (the Prometheus 1-2.5-5 series). A sample lands in the first bucket whose
/// bound it does not exceed (`le`, as Prometheus has it); anything above 30 s lands in the
/// implicit last bucket, `+Inf`.
pub const BUCKET_BOUNDS_SECONDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// [`BUCKET_BOUNDS_SECONDS`] in nanoseconds: placement compares integers, exactly.
const BUCKET_BOUNDS_NANOS: [u64; 15] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Buckets of a [`LatencyHistogram`]: one per bound plus `+Inf`.
pub const BUCKETS: usize = BUCKET_BOUNDS_SECONDS.len() + 1;

/// A lock-free latency histogram with the fixed buckets of [`BUCKET_BOUNDS_SECONDS`].
///
/// There is no separate sample counter: the count is the sum of the buckets, so a snapshot is
/// always self-consistent (`count` equals the `+Inf` cumulative bucket) even when it races a
/// recording. The sum is kept in microseconds: a `u64` of them overflows after 584,000 years of
/// summed latency.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Samples per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS],
    /// Sum of every sample, in microseconds (each sample rounded down).
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    /// Records one sample: two relaxed atomic adds.
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // The first bound >= the sample; past the last bound, `+Inf`.
        let i = BUCKET_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Reads every bucket and the sum.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.buckets.each_ref().map(|b| b.load(Ordering::Relaxed)),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// A plain copy of a [`LatencyHistogram`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Samples per bucket, not cumulative, in the order of [`BUCKET_BOUNDS_SECONDS`]; the last
    /// one is `+Inf`.
    pub counts: [u64; BUCKETS],
    /// Sum of the samples, in microseconds.
    pub sum_micros: u64,
}

impl HistogramSnapshot {
    /// Number of samples (the sum of the buckets).
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the samples, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_in_seconds_and_nanos_agree() {
        for (s, ns) in BUCKET_BOUNDS_SECONDS.iter().zip(BUCKET_BOUNDS_NANOS) {
            assert_eq!(Duration::from_secs_f64(*s), Duration::from_nanos(ns));
        }
        assert!(BUCKET_BOUNDS_NANOS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn samples_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let h = LatencyHistogram::default();
        let us = Duration::from_micros;
        for d in [
            Duration::ZERO,                                    // 0: le 0.0005
            us(500),                                           // exactly on the bound: le 0.0005
            us(500) + Duration::from_nanos(1),                 // just above: le 0.001
            us(1000),                                          // le 0.001
            Duration::from_secs(30),                           // le 30
            Duration::from_secs(30) + Duration::from_nanos(1), // +Inf
            Duration::MAX, // +Inf, without overflowing the placement
        ] {
            h.record(d);
        }
        let snap = h.snapshot();
        let mut want = [0u64; BUCKETS];
        want[0] = 2;
        want[1] = 2;
        want[14] = 1;
        want[15] = 2;
        assert_eq!(snap.counts, want);
        assert_eq!(snap.count(), 7);
    }

    #[test]
    fn sum_is_kept_in_microseconds() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_millis(3));
        h.record(Duration::from_micros(1500));
        h.record(Duration::from_nanos(999)); // rounds down to 0 µs
        let snap = h.snapshot();
        assert_eq!(snap.sum_micros, 4500);
        assert_eq!(snap.sum_seconds(), 0.0045);
        assert_eq!(snap.count(), 3);
        assert_eq!(snap.counts[2], 1); // 1.5 ms: le 0.0025
        assert_eq!(snap.counts[3], 1); // 3 ms: le 0.005
    }
}
