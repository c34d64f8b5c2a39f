//! Lock-free histograms for metrics (fixed buckets, cumulative on read).

use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed-bucket histogram of `u64` samples.
pub(crate) struct Histogram {
    bounds: &'static [u64],
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
}

const LATENCY_US: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];
const COUNTS: &[u64] = &[
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096, 8_192,
];

impl Histogram {
    pub(crate) fn latency_us() -> Histogram {
        Histogram::with_bounds(LATENCY_US)
    }
    pub(crate) fn counts() -> Histogram {
        Histogram::with_bounds(COUNTS)
    }
    fn with_bounds(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }
    pub(crate) fn record(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }
    /// Adds this histogram's cumulative buckets (`u64::MAX` is +Inf) into `out`, and returns the sum.
    pub(crate) fn add_cumulative(&self, out: &mut Vec<(u64, u64)>) -> u64 {
        if out.is_empty() {
            out.extend(
                self.bounds
                    .iter()
                    .copied()
                    .chain([u64::MAX])
                    .map(|b| (b, 0)),
            );
        }
        let mut acc = 0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c.load(Ordering::Relaxed);
            out[i].1 += acc;
        }
        self.sum.load(Ordering::Relaxed)
    }
}
