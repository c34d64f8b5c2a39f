//! Latency histograms and outcome counts, per operation, per worker, per second.
//!
//! Workers record every response into a `Recorder` behind a mutex (one recorder per runtime
//! thread, so the mutex is not contended), and once a second the progress reporter takes the
//! interval part (`Interval`) out of every recorder and merges it. Cumulative per-operation
//! statistics stay in the recorder until the run ends, when all recorders are merged. Latencies are recorded in
//! microseconds with three significant digits and reported in milliseconds.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::limits::LATENCY_US_MAX;
use crate::workload::OpKind;

/// How a response is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// A 2xx answer.
    Ok,
    /// A 4xx answer other than 429: a business rejection or an invalid request, an expected
    /// outcome.
    Rejected,
    /// A 5xx or 429 answer (the server shedding load), or a transport failure (connect,
    /// timeout, broken connection).
    Error,
}

/// Counts by outcome key (`ok`, a problem `code`, `http_503`, `timeout`…), in first-seen order.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    entries: Vec<(String, Class, u64)>,
}

impl Outcomes {
    /// Counts one outcome (`count` times).
    pub fn add(&mut self, key: &str, class: Class, count: u64) {
        if let Some(entry) = self.entries.iter_mut().find(|(k, _, _)| k == key) {
            entry.2 += count;
        } else {
            self.entries.push((key.to_string(), class, count));
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Outcomes) {
        for (key, class, count) in &other.entries {
            self.add(key, *class, *count);
        }
    }

    /// Returns the total of one class.
    pub fn total(&self, class: Class) -> u64 {
        self.entries
            .iter()
            .filter(|(_, c, _)| *c == class)
            .map(|(_, _, n)| n)
            .sum()
    }

    /// Returns the total of all outcomes.
    pub fn sum(&self) -> u64 {
        self.entries.iter().map(|(_, _, n)| n).sum()
    }

    /// Returns `(key, class, count)` sorted by count, largest first.
    pub fn sorted(&self) -> Vec<(String, Class, u64)> {
        let mut entries = self.entries.clone();
        entries.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        entries
    }
}

/// Returns an empty latency histogram (1 µs to `LATENCY_US_MAX`, three significant digits).
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; this cannot fail.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// Records a latency, clamping it into the histogram's range.
pub fn record_us(histogram: &mut Histogram<u64>, latency_us: u64) {
    // Saturating: a value outside the range is clamped rather than lost.
    histogram.saturating_record(latency_us.clamp(1, LATENCY_US_MAX));
}

/// Cumulative statistics of one operation.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Latency of each request, from its due time (open loop) or its send time (closed loop).
    pub latency: Histogram<u64>,
    /// Outcome of each request.
    pub outcomes: Outcomes,
    /// Outcome of each transfer inside batch requests (only for `transfer_batch`).
    pub items: Outcomes,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            latency: new_histogram(),
            outcomes: Outcomes::default(),
            items: Outcomes::default(),
        }
    }

    fn merge(&mut self, other: &OpStats) {
        // Both histograms have the same bounds, so adding cannot fail.
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
        self.outcomes.merge(&other.outcomes);
        self.items.merge(&other.items);
    }
}

/// What happened during one reporting interval (about a second).
#[derive(Debug, Clone)]
pub struct Interval {
    /// Latency of every request of every operation.
    pub latency: Histogram<u64>,
    /// Requests answered, by class.
    pub num_ok: u64,
    /// Requests rejected with a 4xx.
    pub num_rejected: u64,
    /// Requests that failed (5xx or transport).
    pub num_errors: u64,
    /// Operations completed (an operation may send a retry as a second request).
    pub num_ops: u64,
    /// Transfers committed, counting each transfer inside a batch.
    pub num_transfers_committed: u64,
}

impl Interval {
    /// Returns an empty interval.
    pub fn new() -> Interval {
        Interval {
            latency: new_histogram(),
            num_ok: 0,
            num_rejected: 0,
            num_errors: 0,
            num_ops: 0,
            num_transfers_committed: 0,
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Interval) {
        // Both histograms have the same bounds, so adding cannot fail.
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
        self.num_ok += other.num_ok;
        self.num_rejected += other.num_rejected;
        self.num_errors += other.num_errors;
        self.num_ops += other.num_ops;
        self.num_transfers_committed += other.num_transfers_committed;
    }

    /// Empties the interval, keeping the histogram's allocation.
    pub fn reset(&mut self) {
        self.latency.reset();
        self.num_ok = 0;
        self.num_rejected = 0;
        self.num_errors = 0;
        self.num_ops = 0;
        self.num_transfers_committed = 0;
    }
}

impl Default for Interval {
    fn default() -> Self {
        Interval::new()
    }
}

/// Everything one worker measured.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Cumulative statistics per operation, indexed by `OpKind as usize`; warm-up excluded.
    pub ops: Vec<OpStats>,
    /// The current interval, taken by the progress reporter once a second.
    pub interval: Interval,
    /// How late requests left compared with their due time (open loop only): the generator's
    /// own timer lateness and backlog, shown so nobody mistakes it for server latency.
    pub send_lag: Histogram<u64>,
    /// Operations completed after warm-up.
    pub num_ops: u64,
    /// Transfers committed after warm-up, counting each transfer inside a batch.
    pub num_transfers_committed: u64,
    /// Requests answered or failed, warm-up included (for the generator's CPU per request).
    pub num_requests_all: u64,
    /// Responses that came over HTTP/1.x, warm-up included.
    pub num_responses_http1: u64,
    /// Responses that came over HTTP/2, warm-up included: the proof that `--http2` spoke it.
    pub num_responses_http2: u64,
}

impl Recorder {
    /// Returns an empty recorder.
    pub fn new() -> Recorder {
        Recorder {
            ops: OpKind::ALL.iter().map(|_| OpStats::new()).collect(),
            interval: Interval::new(),
            send_lag: new_histogram(),
            num_ops: 0,
            num_transfers_committed: 0,
            num_requests_all: 0,
            num_responses_http1: 0,
            num_responses_http2: 0,
        }
    }

    /// Records one response of `op`; `measured` is false during warm-up.
    pub fn record(&mut self, op: OpKind, latency_us: u64, key: &str, class: Class, measured: bool) {
        record_us(&mut self.interval.latency, latency_us);
        self.num_requests_all += 1;
        match class {
            Class::Ok => self.interval.num_ok += 1,
            Class::Rejected => self.interval.num_rejected += 1,
            Class::Error => self.interval.num_errors += 1,
        }
        if measured {
            let stats = &mut self.ops[op as usize];
            record_us(&mut stats.latency, latency_us);
            stats.outcomes.add(key, class, 1);
        }
    }

    /// Counts the outcome of transfers inside a batch.
    pub fn record_items(&mut self, key: &str, class: Class, count: u64, measured: bool) {
        if measured {
            self.ops[OpKind::TransferBatch as usize]
                .items
                .add(key, class, count);
        }
    }

    /// Counts committed transfers (single or inside a batch).
    pub fn record_committed(&mut self, count: u64, measured: bool) {
        self.interval.num_transfers_committed += count;
        if measured {
            self.num_transfers_committed += count;
        }
    }

    /// Counts one completed operation.
    pub fn record_op_done(&mut self, measured: bool) {
        self.interval.num_ops += 1;
        if measured {
            self.num_ops += 1;
        }
    }

    /// Adds everything of `other` except its interval.
    pub fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in self.ops.iter_mut().zip(&other.ops) {
            mine.merge(theirs);
        }
        // Same bounds, so adding cannot fail.
        self.send_lag
            .add(&other.send_lag)
            .expect("same histogram bounds");
        self.num_ops += other.num_ops;
        self.num_transfers_committed += other.num_transfers_committed;
        self.num_requests_all += other.num_requests_all;
        self.num_responses_http1 += other.num_responses_http1;
        self.num_responses_http2 += other.num_responses_http2;
    }

    /// Returns the latency of all operations together.
    pub fn overall_latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for stats in &self.ops {
            // Same bounds, so adding cannot fail.
            all.add(&stats.latency).expect("same histogram bounds");
        }
        all
    }

    /// Returns the outcomes of all operations together.
    pub fn overall_outcomes(&self) -> Outcomes {
        let mut all = Outcomes::default();
        for stats in &self.ops {
            all.merge(&stats.outcomes);
        }
        all
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// Latency percentiles in milliseconds, as they appear in the JSON report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value recorded.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl LatencySummary {
    /// Returns the summary of a histogram in microseconds (all zero when it is empty).
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        let ms = |us: u64| round3(us_to_ms(us));
        LatencySummary {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: round3(histogram.mean() / 1_000.0),
        }
    }
}

/// Converts microseconds to milliseconds.
pub fn us_to_ms(us: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let us = us as f64;
    us / 1_000.0
}

/// Rounds to three decimals, for readable JSON.
pub fn round3(value: f64) -> f64 {
    (value * 1_000.0).round() / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution_are_within_histogram_precision() {
        let mut histogram = new_histogram();
        for us in 1..=10_000u64 {
            record_us(&mut histogram, us);
        }
        let summary = LatencySummary::of(&histogram);
        let close = |actual: f64, expected: f64| (actual - expected).abs() <= expected * 0.001;
        assert!(close(summary.p50, 5.0), "{summary:?}");
        assert!(close(summary.p90, 9.0), "{summary:?}");
        assert!(close(summary.p99, 9.9), "{summary:?}");
        assert!(close(summary.p999, 9.99), "{summary:?}");
        assert!(close(summary.max, 10.0), "{summary:?}");
        assert!(close(summary.mean, 5.0005), "{summary:?}");
    }

    #[test]
    fn an_empty_histogram_summarises_to_zeros() {
        assert_eq!(LatencySummary::of(&new_histogram()).max, 0.0);
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut histogram = new_histogram();
        record_us(&mut histogram, 0);
        record_us(&mut histogram, u64::MAX);
        assert_eq!(histogram.len(), 2);
        assert_eq!(histogram.min(), 1);
        assert!(histogram.max() >= LATENCY_US_MAX);
    }

    #[test]
    fn outcomes_are_counted_by_key_and_class() {
        let mut outcomes = Outcomes::default();
        outcomes.add("ok", Class::Ok, 3);
        outcomes.add("insufficient_funds", Class::Rejected, 1);
        outcomes.add("ok", Class::Ok, 2);
        outcomes.add("timeout", Class::Error, 4);
        assert_eq!(outcomes.total(Class::Ok), 5);
        assert_eq!(outcomes.total(Class::Rejected), 1);
        assert_eq!(outcomes.total(Class::Error), 4);
        assert_eq!(outcomes.sum(), 10);
        assert_eq!(outcomes.sorted()[0].0, "ok");
    }

    #[test]
    fn warmup_responses_show_in_progress_but_not_in_the_totals() {
        let mut recorder = Recorder::new();
        recorder.record(OpKind::Transfer, 500, "ok", Class::Ok, false);
        recorder.record(OpKind::Transfer, 700, "ok", Class::Ok, true);
        recorder.record(OpKind::Balance, 900, "http_503", Class::Error, true);
        assert_eq!(recorder.interval.latency.len(), 3);
        assert_eq!(recorder.interval.num_errors, 1);
        assert_eq!(recorder.ops[OpKind::Transfer as usize].latency.len(), 1);
        let mut merged = Recorder::new();
        merged.merge(&recorder);
        merged.merge(&recorder);
        assert_eq!(merged.overall_latency().len(), 4);
        assert_eq!(merged.overall_outcomes().total(Class::Error), 2);
    }

    #[test]
    fn intervals_merge_and_reset() {
        let mut a = Interval::new();
        record_us(&mut a.latency, 100);
        a.num_ok = 1;
        let mut b = Interval::new();
        b.merge(&a);
        b.merge(&a);
        assert_eq!(b.latency.len(), 2);
        assert_eq!(b.num_ok, 2);
        b.reset();
        assert_eq!(b.latency.len(), 0);
        assert_eq!(b.num_ok, 0);
    }
}
