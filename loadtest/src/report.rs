//! The final report: printed for people, `--json` for machines (schema in docs/loadtest.md).
//!
//! The JSON schema is stable: fields are only ever added, and `schema_version` changes if a
//! field's meaning ever does. Latencies are milliseconds, rates are per second.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::progress::SecondSample;
use crate::stats::{Class, LatencySummary, OpStats, Outcomes, Recorder};
use crate::verify::Verification;
use crate::workload::OpKind;

/// Utilisation of the generator's threads above which the report warns that the client may
/// have been the bottleneck.
pub const GENERATOR_SATURATED: f64 = 0.9;

/// Returns the share of `threads` that `cpu_s` of CPU time kept busy over `elapsed_s`.
pub fn utilisation(cpu_s_opt: Option<f64>, elapsed_s: f64, threads: usize) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)]
    let capacity_s = elapsed_s * threads.max(1) as f64;
    cpu_s_opt
        .filter(|_| capacity_s > 0.0)
        .map(|cpu_s| crate::stats::round3(cpu_s / capacity_s))
}

/// Send lag p99 above which the report warns that requests waited for a free connection:
/// timer lateness alone stays around a millisecond.
pub const SEND_LAG_WARN_MS: f64 = 5.0;

/// Version of the JSON report's schema.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// Requests by class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// All requests.
    pub total: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Answered 4xx other than 429 (business rejections and invalid requests).
    pub rejected: u64,
    /// Answered 5xx or 429, or failed in transport.
    pub errors: u64,
}

impl Counts {
    fn of(outcomes: &Outcomes) -> Counts {
        Counts {
            total: outcomes.sum(),
            ok: outcomes.total(Class::Ok),
            rejected: outcomes.total(Class::Rejected),
            errors: outcomes.total(Class::Error),
        }
    }
}

/// Statistics of one operation (`operations.<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpReport {
    /// Requests of this operation by class.
    pub counts: Counts,
    /// Requests per second.
    pub rate_per_s: f64,
    /// Requests by outcome key: `ok`, a problem `code`, `http_NNN`, `timeout`, `connect`, `io`.
    pub outcomes: BTreeMap<String, u64>,
    /// Latency percentiles.
    pub latency_ms: LatencySummary,
    /// `transfer_batch` only: transfers inside the batches by outcome (`committed` or a code).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub items: Option<BTreeMap<String, u64>>,
}

/// A latency objective and whether the run met it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// The p99 bound, ms.
    pub p99_max_ms: f64,
    /// Measured p99, ms.
    pub p99_ms: f64,
    /// Whether p99 ≤ bound, errors ≤ 1% and the achieved rate ≥ 95% of the target.
    pub met: bool,
}

/// One step of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepStep {
    /// Rate the step was scheduled at.
    pub target_rate_per_s: u64,
    /// Rate achieved.
    pub achieved_rate_per_s: f64,
    /// Transfers committed per second (batch items included).
    pub transfers_committed_per_s: f64,
    /// Latency of the step.
    pub latency_ms: LatencySummary,
    /// Requests by class.
    pub counts: Counts,
    /// Share of the generator's threads the step kept busy (see `Report`).
    pub generator_utilisation: Option<f64>,
    /// Server CPU per request in the step, µs (with `--server-pid`).
    pub server_cpu_us_per_request: Option<f64>,
    /// Whether the step met the objective.
    pub passed: bool,
}

/// The curve of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    /// The objective each step was held to.
    pub p99_max_ms: f64,
    /// Highest rate that met it (`null` if even the first step failed).
    pub best_rate_per_s: Option<u64>,
    /// Every step, in the order run.
    pub steps: Vec<SweepStep>,
}

/// The whole report (`--json FILE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `REPORT_SCHEMA_VERSION`.
    pub schema_version: u32,
    /// The generator's version.
    pub tool_version: String,
    /// When the load started, RFC 3339 UTC.
    pub started_at: String,
    /// `--target`.
    pub target: String,
    /// `open`, `closed` or `sweep`.
    pub mode: String,
    /// Seed of the workload.
    pub seed: u64,
    /// Prefix of every ID the run created.
    pub run_id: String,
    /// Connections opened by a phase: one per worker over HTTP/1.1, `--connections` (at most
    /// one per worker) over HTTP/2.
    pub connections: usize,
    /// `http/1.1` or `h2` (`--http2`).
    pub protocol: String,
    /// Requests in flight at most (`--concurrency`; in open loop `--connections`, or `--streams`
    /// over HTTP/2).
    pub workers: usize,
    /// Responses that came over HTTP/1.x in the phase reported, warm-up included.
    pub num_responses_http1: u64,
    /// Responses that came over HTTP/2 in the phase reported, warm-up included.
    pub num_responses_http2: u64,
    /// Runtime threads of the generator.
    pub threads: usize,
    /// Length of the measured window, s (warm-up excluded).
    pub duration_s: f64,
    /// Warm-up, s.
    pub warmup_s: f64,
    /// Scheduled rate (open loop; best passing rate of a sweep); `null` in closed loop.
    pub target_rate_per_s: Option<f64>,
    /// Operations completed per second in the measured window.
    pub achieved_rate_per_s: f64,
    /// Transfers committed per second, counting each transfer inside a batch.
    pub transfers_committed_per_s: f64,
    /// Operations completed in the measured window.
    pub num_ops: u64,
    /// Open loop: operations never sent because issuing stopped (server or generator behind).
    pub num_unsent: u64,
    /// Requests by class, all operations.
    pub requests: Counts,
    /// Latency of all requests (from the due time in open loop, the send in closed loop).
    pub latency_ms: LatencySummary,
    /// Open loop: how late requests left after their due time (the generator's own lag).
    pub send_lag_ms: Option<LatencySummary>,
    /// Per operation, only those that ran.
    pub operations: BTreeMap<String, OpReport>,
    /// Rejections and errors of all operations by code.
    pub outcomes: BTreeMap<String, u64>,
    /// The latency objective, when one was given.
    pub objective: Option<Objective>,
    /// The sweep's curve, in sweep mode.
    pub sweep: Option<SweepReport>,
    /// One sample per second.
    pub seconds: Vec<SecondSample>,
    /// CPU time the generator used during the load (set-up and verification excluded), s.
    pub generator_cpu_s: Option<f64>,
    /// `generator_cpu_s / (elapsed × threads)`: near 1.0 the generator itself was the limit and
    /// the figures describe the client, not the server.
    pub generator_utilisation: Option<f64>,
    /// Generator CPU per request, µs: `1e6 / this` is the rate one core of this machine can
    /// drive, whatever else the machine was doing during the run.
    pub generator_cpu_us_per_request: Option<f64>,
    /// CPU time the server (`--server-pid`) used during the load, s.
    pub server_cpu_s: Option<f64>,
    /// Server CPU per request, µs (the whole phase's CPU over its requests, warm-up included).
    pub server_cpu_us_per_request: Option<f64>,
    /// Result of verification.
    pub verification: Verification,
}

/// Returns the per-operation reports of a recorder over a window of `seconds`.
pub fn operations_of(recorder: &Recorder, seconds: f64) -> BTreeMap<String, OpReport> {
    let mut operations = BTreeMap::new();
    for op in OpKind::ALL {
        let stats: &OpStats = &recorder.ops[op as usize];
        let counts = Counts::of(&stats.outcomes);
        if counts.total == 0 {
            continue;
        }
        let items = (op == OpKind::TransferBatch).then(|| to_map(&stats.items));
        operations.insert(
            op.name().to_string(),
            OpReport {
                counts,
                rate_per_s: per_s(counts.total, seconds),
                outcomes: to_map(&stats.outcomes),
                latency_ms: LatencySummary::of(&stats.latency),
                items,
            },
        );
    }
    operations
}

/// Returns the outcome counts as a sorted map.
pub fn to_map(outcomes: &Outcomes) -> BTreeMap<String, u64> {
    outcomes
        .sorted()
        .into_iter()
        .map(|(key, _, count)| (key, count))
        .collect()
}

/// Returns the requests by class of a recorder.
pub fn counts_of(recorder: &Recorder) -> Counts {
    Counts::of(&recorder.overall_outcomes())
}

/// Returns `count / seconds`, rounded to three decimals (zero for an empty window).
pub fn per_s(count: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let count = count as f64;
    crate::stats::round3(count / seconds)
}

impl Report {
    /// Prints the human report to stdout.
    pub fn print(&self) {
        println!();
        let target = self
            .target_rate_per_s
            .map_or("-".to_string(), |t| format!("{t:.0}/s"));
        println!(
            "saldo-loadtest {} · {} · {} · {} connections · {} in flight · seed {} · run {}",
            self.mode,
            self.target,
            self.protocol,
            self.connections,
            self.workers,
            self.seed,
            self.run_id
        );
        println!(
            "measured {:.1}s (after {:.1}s warm-up) · target {target} · achieved {:.1} ops/s · \
             transfers committed {:.1}/s",
            self.duration_s,
            self.warmup_s,
            self.achieved_rate_per_s,
            self.transfers_committed_per_s
        );
        let r = &self.requests;
        println!(
            "requests {} · ok {} · rejected {} · errors {}{}",
            r.total,
            r.ok,
            r.rejected,
            r.errors,
            if self.num_unsent > 0 {
                format!(" · UNSENT {}", self.num_unsent)
            } else {
                String::new()
            }
        );
        println!();
        println!(
            "{:<16} {:>10} {:>10} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "operation",
            "requests",
            "ok",
            "rejected",
            "errors",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        let row = |name: &str, c: &Counts, l: &LatencySummary| {
            println!(
                "{name:<16} {:>10} {:>10} {:>9} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                c.total, c.ok, c.rejected, c.errors, l.p50, l.p90, l.p99, l.p999, l.max
            );
        };
        for (name, op) in &self.operations {
            row(name, &op.counts, &op.latency_ms);
        }
        row("all", &self.requests, &self.latency_ms);
        if let Some(lag) = &self.send_lag_ms {
            println!(
                "send lag (generator timer + backlog): p50 {:.3} ms · p99 {:.3} ms · max {:.3} ms",
                lag.p50, lag.p99, lag.max
            );
            if lag.p99 > SEND_LAG_WARN_MS || self.num_unsent > 0 {
                println!(
                    "warning: requests waited for one of the {} workers (or for the \
                     generator); the latency above includes that wait, as it should, but more \
                     --connections (--streams over HTTP/2) may reach a higher rate",
                    self.workers
                );
            }
        }
        let not_ok: Vec<String> = self
            .outcomes
            .iter()
            .filter(|(k, _)| k.as_str() != "ok")
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if !not_ok.is_empty() {
            println!("rejections and errors by code: {}", not_ok.join(", "));
        }
        if let Some(batch) = self
            .operations
            .get("transfer_batch")
            .and_then(|o| o.items.as_ref())
        {
            let items: Vec<String> = batch.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("transfers inside batches: {}", items.join(", "));
        }
        if let Some(sweep) = &self.sweep {
            println!();
            println!("sweep (objective p99 <= {} ms):", sweep.p99_max_ms);
            println!(
                "{:>12} {:>12} {:>9} {:>9} {:>8} {:>9}  result",
                "target/s", "achieved/s", "p50 ms", "p99 ms", "errors", "gen. cpu"
            );
            for step in &sweep.steps {
                println!(
                    "{:>12} {:>12.1} {:>9.3} {:>9.3} {:>8} {:>9}  {}",
                    step.target_rate_per_s,
                    step.achieved_rate_per_s,
                    step.latency_ms.p50,
                    step.latency_ms.p99,
                    step.counts.errors,
                    step.generator_utilisation
                        .map_or("-".into(), |u| format!("{:.0}%", u * 100.0)),
                    if step.passed { "pass" } else { "FAIL" }
                );
            }
            match sweep.best_rate_per_s {
                Some(best) => println!("highest rate meeting the objective: {best}/s"),
                None => println!("no rate met the objective"),
            }
        }
        if let (Some(cpu_s), Some(utilisation)) = (self.generator_cpu_s, self.generator_utilisation)
        {
            let per_request = self.generator_cpu_us_per_request.unwrap_or(0.0);
            println!(
                "generator: {cpu_s:.2} CPU-s, {per_request:.1} µs per request, {:.0}% of its {} \
                 thread(s){}",
                utilisation * 100.0,
                self.threads,
                if utilisation >= GENERATOR_SATURATED {
                    " - SATURATED: these figures may describe the generator, not the server"
                } else {
                    ""
                }
            );
        }
        if let (Some(cpu_s), Some(per_request)) =
            (self.server_cpu_s, self.server_cpu_us_per_request)
        {
            println!("server: {cpu_s:.2} CPU-s, {per_request:.1} µs per request");
        }
        if let Some(objective) = &self.objective {
            println!(
                "objective p99 <= {} ms: {} (p99 {:.3} ms)",
                objective.p99_max_ms,
                if objective.met { "MET" } else { "NOT MET" },
                objective.p99_ms
            );
        }
        println!();
        self.verification.print();
    }
}

/// Returns whether a window met the objective: p99 within bound, at most 1% errors, and (for
/// a scheduled rate) at least 95% of the rate achieved with nothing left unsent.
pub fn objective_met(
    p99_ms: f64,
    p99_max_ms: f64,
    counts: &Counts,
    target_opt: Option<f64>,
    achieved: f64,
    num_unsent: u64,
) -> bool {
    let errors_ok = counts.errors * 100 <= counts.total;
    let rate_ok = target_opt.is_none_or(|target| achieved >= target * 0.95 && num_unsent == 0);
    p99_ms <= p99_max_ms && errors_ok && rate_ok && counts.total > 0
}

/// Returns the current time as RFC 3339 UTC (`2026-01-31T12:00:00Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (date, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(date).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// Returns `YYYY-MM-DD` of the UTC day `days_ago` days before today.
pub fn utc_date(days_ago: i64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0) - days_ago;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Returns the civil date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_right_around_leap_years() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn the_objective_needs_latency_errors_and_rate() {
        let counts = Counts {
            total: 1_000,
            ok: 995,
            rejected: 0,
            errors: 5,
        };
        assert!(objective_met(9.0, 10.0, &counts, Some(100.0), 99.0, 0));
        assert!(!objective_met(11.0, 10.0, &counts, Some(100.0), 99.0, 0));
        assert!(!objective_met(9.0, 10.0, &counts, Some(100.0), 90.0, 0));
        assert!(!objective_met(9.0, 10.0, &counts, Some(100.0), 99.0, 3));
        let failing = Counts {
            errors: 20,
            ..counts
        };
        assert!(!objective_met(9.0, 10.0, &failing, None, 0.0, 0));
        let empty = Counts {
            total: 0,
            ok: 0,
            rejected: 0,
            errors: 0,
        };
        assert!(!objective_met(0.0, 10.0, &empty, None, 0.0, 0));
    }

    #[test]
    fn rates_are_per_second_of_the_window() {
        assert_eq!(per_s(500, 2.0), 250.0);
        assert_eq!(per_s(1, 0.0), 0.0);
    }
}
