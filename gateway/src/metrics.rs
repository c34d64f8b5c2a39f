//! A small Prometheus registry: fixed tables of atomics, no lock, no allocation on the hot path.
//!
//! Routes, status codes, error codes and histogram buckets are known at compile time, so every
//! counter is a slot in a static array; recording a request is a handful of relaxed atomic
//! adds. `/metrics` renders the tables plus the engine's [`LedgerStats`] in the Prometheus text
//! format (version 0.0.4).

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use axum::http::Method;
use saldo_engine::LedgerStats;
/// The backends' samples, rendered as in `saldo snapshotter`'s `/metrics`.
pub use saldo_persistence::metrics::render_samples;

use crate::error::CODES;

/// Routes as labelled in metrics: `(method, route template)`. The last one collects everything
/// else (unknown routes, wrong methods, console assets).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/accounts"),
    ("GET", "/v1/accounts/{id}"),
    ("POST", "/v1/accounts/{id}/entries"),
    ("GET", "/v1/accounts/{id}/entries/{entry_id}"),
    ("GET", "/v1/accounts/{id}/movements"),
    ("GET", "/v1/accounts/{id}/daily"),
    ("POST", "/v1/transfers"),
    ("POST", "/v1/transfers/batch"),
    ("GET", "/v1/transfers/{id}"),
    ("GET", "/v1/admin/shards/{shard}/checksum"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("OTHER", "other"),
];
const NUM_ROUTES: usize = ROUTES.len();

/// Status codes counted one by one; any other lands in the last slot (`other`).
const STATUSES: [u16; 16] = [
    200, 201, 202, 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503, 0,
];
const NUM_STATUSES: usize = STATUSES.len();

/// Upper bounds of the request latency histogram, in microseconds (`+Inf` is implicit).
const LATENCY_BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    2_500_000, 10_000_000,
];
const NUM_BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

/// The process-wide registry.
pub static METRICS: Metrics = Metrics::new();

/// Counters and histograms of the gateway.
pub struct Metrics {
    /// Requests by route and status.
    requests: [[AtomicU64; NUM_STATUSES]; NUM_ROUTES],
    /// Request latency by route: per-bucket (not cumulative) counts.
    latency_buckets: [[AtomicU64; NUM_BUCKETS]; NUM_ROUTES],
    /// Sum of request latencies by route, µs.
    latency_sum_us: [AtomicU64; NUM_ROUTES],
    /// Error answers by code (batch item failures included).
    errors: [AtomicU64; CODES.len()],
    /// Transfers received through the batch route.
    batch_transfers: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Returns an empty registry.
    pub const fn new() -> Metrics {
        Metrics {
            requests: [const { [const { AtomicU64::new(0) }; NUM_STATUSES] }; NUM_ROUTES],
            latency_buckets: [const { [const { AtomicU64::new(0) }; NUM_BUCKETS] }; NUM_ROUTES],
            latency_sum_us: [const { AtomicU64::new(0) }; NUM_ROUTES],
            errors: [const { AtomicU64::new(0) }; CODES.len()],
            batch_transfers: AtomicU64::new(0),
        }
    }

    /// Records one answered request.
    pub fn record(&self, route: usize, status: u16, latency_us: u64) {
        assert!(route < NUM_ROUTES);
        let status_slot = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(NUM_STATUSES - 1);
        self.requests[route][status_slot].fetch_add(1, Relaxed);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| latency_us <= b)
            .unwrap_or(NUM_BUCKETS - 1);
        self.latency_buckets[route][bucket].fetch_add(1, Relaxed);
        self.latency_sum_us[route].fetch_add(latency_us, Relaxed);
    }

    /// Counts one error answer (or batch item failure) by its code.
    pub fn count_error(&self, code: &str) {
        if let Some(i) = CODES.iter().position(|&c| c == code) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts transfers received through the batch route.
    pub fn count_batch_transfers(&self, n: usize) {
        self.batch_transfers.fetch_add(n as u64, Relaxed);
    }

    /// Returns the Prometheus text exposition of the gateway's metrics and the engine's stats.
    pub fn render(&self, stats_opt: Option<&LedgerStats>, http_in_flight: usize) -> String {
        let mut out = String::with_capacity(32 * 1024);
        self.render_requests(&mut out);
        let _ = writeln!(
            out,
            "# HELP saldo_http_errors_total Error answers by stable code."
        );
        let _ = writeln!(out, "# TYPE saldo_http_errors_total counter");
        for (i, code) in CODES.iter().enumerate() {
            let n = self.errors[i].load(Relaxed);
            let _ = writeln!(out, "saldo_http_errors_total{{code=\"{code}\"}} {n}");
        }
        gauge(
            &mut out,
            "saldo_http_in_flight",
            "Requests being handled now.",
            http_in_flight as u64,
        );
        counter(
            &mut out,
            "saldo_batch_transfers_total",
            "Transfers received through POST /v1/transfers/batch.",
            self.batch_transfers.load(Relaxed),
        );
        if let Some(stats) = stats_opt {
            render_engine(&mut out, stats);
            render_samples(&mut out, &stats.backend);
        }
        out
    }

    fn render_requests(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP saldo_http_requests_total Requests answered, by route and status."
        );
        let _ = writeln!(out, "# TYPE saldo_http_requests_total counter");
        for (r, (method, route)) in ROUTES.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let n = self.requests[r][s].load(Relaxed);
                if n == 0 {
                    continue;
                }
                let status = if *status == 0 {
                    "other".to_owned()
                } else {
                    status.to_string()
                };
                let _ = writeln!(
                    out,
                    "saldo_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP saldo_http_request_duration_seconds Request latency, by route."
        );
        let _ = writeln!(out, "# TYPE saldo_http_request_duration_seconds histogram");
        for (r, (method, route)) in ROUTES.iter().enumerate() {
            let labels = format!("method=\"{method}\",route=\"{route}\"");
            let mut cumulative = 0;
            for (b, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
                cumulative += self.latency_buckets[r][b].load(Relaxed);
                let le = seconds(*bound);
                let _ = writeln!(
                    out,
                    "saldo_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            cumulative += self.latency_buckets[r][NUM_BUCKETS - 1].load(Relaxed);
            let sum = seconds(self.latency_sum_us[r].load(Relaxed));
            let _ = writeln!(
                out,
                "saldo_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}\n\
                 saldo_http_request_duration_seconds_sum{{{labels}}} {sum}\n\
                 saldo_http_request_duration_seconds_count{{{labels}}} {cumulative}"
            );
        }
    }
}

/// Returns the route index of a matched route template and method (`ROUTES.len() - 1` for
/// anything unknown).
pub fn route_index(method: &Method, matched_path_opt: Option<&str>) -> usize {
    let other = NUM_ROUTES - 1;
    let Some(path) = matched_path_opt else {
        return other;
    };
    // `GET /v1/transfers/batch` reads the transfer whose ID is `batch`.
    let path = if path == "/v1/transfers/batch" && method == Method::GET {
        "/v1/transfers/{id}"
    } else {
        path
    };
    ROUTES
        .iter()
        .position(|(m, p)| *p == path && *m == method.as_str())
        .unwrap_or(other)
}

/// Formats microseconds as decimal seconds without floating point (`2500` → `0.0025`).
fn seconds(us: u64) -> String {
    let frac = format!("{:06}", us % 1_000_000);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{}", us / 1_000_000)
    } else {
        format!("{}.{frac}", us / 1_000_000)
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

/// Renders a cumulative `(upper bound, count)` histogram whose bounds are in `unit_div` units
/// per exposed unit (1_000_000 to expose µs as seconds, 1 to expose counts as they are).
fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    buckets: &[(u64, u64)],
    sum: u64,
    as_seconds: bool,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let fmt = |v: u64| {
        if as_seconds {
            seconds(v)
        } else {
            v.to_string()
        }
    };
    let mut count = 0;
    for &(bound, cumulative) in buckets {
        if bound == u64::MAX {
            continue;
        }
        count = cumulative;
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", fmt(bound));
    }
    // The last bucket of the engine's table may be `u64::MAX` (its +Inf); take its count.
    if let Some(&(u64::MAX, cumulative)) = buckets.last() {
        count = cumulative;
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {count}", fmt(sum));
}

fn render_engine(out: &mut String, s: &LedgerStats) {
    gauge(
        out,
        "saldo_accounts",
        "Accounts known to this node.",
        s.num_accounts,
    );
    gauge(
        out,
        "saldo_transfers_in_flight",
        "Transfers and entries being coordinated now.",
        s.in_flight,
    );
    counter(
        out,
        "saldo_wal_batches_total",
        "Stream batches (group commits) written.",
        s.wal_batches_total,
    );
    counter(
        out,
        "saldo_wal_events_total",
        "Events written to the stream.",
        s.wal_events_total,
    );
    histogram(
        out,
        "saldo_wal_append_duration_seconds",
        "Stream append latency (one group commit, fsync included).",
        &s.wal_append_latency_us,
        s.wal_append_latency_us_sum,
        true,
    );
    histogram(
        out,
        "saldo_wal_batch_events",
        "Events per stream batch (group commit size).",
        &s.wal_batch_events,
        s.wal_batch_events_sum,
        false,
    );
    if let Some(age) = s.snapshot_age_s_opt {
        gauge(
            out,
            "saldo_snapshot_age_seconds",
            "Age of the oldest of the shards' newest snapshots.",
            age,
        );
    }
    counter(
        out,
        "saldo_snapshots_total",
        "Snapshots written.",
        s.snapshots_total,
    );
    gauge(
        out,
        "saldo_shards_failed",
        "Shards whose stream failed: they refuse writes until the process restarts.",
        s.failed_shards.len() as u64,
    );
    if !s.failed_shards.is_empty() {
        use std::fmt::Write as _;
        out.push_str("# HELP saldo_shard_failed A shard whose stream failed, with the cause.\n");
        out.push_str("# TYPE saldo_shard_failed gauge\n");
        for (shard, cause) in &s.failed_shards {
            let cause: String = cause
                .chars()
                .take(200)
                .map(|c| {
                    if c == '"' || c == '\\' || c == '\n' {
                        ' '
                    } else {
                        c
                    }
                })
                .collect();
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "saldo_shard_failed{{shard=\"{shard}\",cause=\"{cause}\"}} 1"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microseconds_render_as_decimal_seconds() {
        assert_eq!(seconds(2_500), "0.0025");
        assert_eq!(seconds(1_000_000), "1");
        assert_eq!(seconds(1_500_000), "1.5");
        assert_eq!(seconds(0), "0");
    }

    #[test]
    fn recorded_requests_show_in_the_exposition() {
        let m = Metrics::new();
        let r = route_index(&Method::POST, Some("/v1/transfers"));
        assert_eq!(ROUTES[r], ("POST", "/v1/transfers"));
        m.record(r, 201, 300);
        m.record(r, 599, 20_000_000);
        m.count_error("insufficient_funds");
        let text = m.render(None, 0);
        assert!(text.contains(
            "saldo_http_requests_total{method=\"POST\",route=\"/v1/transfers\",status=\"201\"} 1"
        ));
        assert!(text.contains("status=\"other\"} 1"));
        assert!(text.contains(
            "saldo_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/transfers\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "saldo_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/transfers\"} 2"
        ));
        assert!(text.contains("saldo_http_errors_total{code=\"insufficient_funds\"} 1"));
    }

    #[test]
    fn unknown_routes_fall_in_other() {
        assert_eq!(route_index(&Method::GET, None), ROUTES.len() - 1);
        assert_eq!(
            route_index(&Method::DELETE, Some("/v1/accounts")),
            ROUTES.len() - 1
        );
        let r = route_index(&Method::GET, Some("/v1/transfers/batch"));
        assert_eq!(ROUTES[r].1, "/v1/transfers/{id}");
    }
}
