//! Once-a-second progress on stderr, the per-second samples behind the plot, and the HDR log.
//!
//! The reporter wakes every second, takes the interval statistics out of every recorder (one
//! per runtime thread, each behind its own mutex), prints one line and keeps a
//! `SecondSample`. When `--hdr-log` is given, each interval histogram is also handed to a
//! dedicated writer thread (`HdrLogSink`) that writes the HdrHistogram interval log, so file IO
//! never runs on the load's runtime.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::limits::SECONDS_RECORDED_MAX;
use crate::stats::{round3, us_to_ms, Interval, Recorder};

/// What one second of a phase looked like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondSample {
    /// Phase label (`run`, `sweep 6000/s`…).
    pub phase: String,
    /// Seconds since the phase started, at the end of the sample.
    pub t_s: f64,
    /// Operations completed per second.
    pub rate_per_s: f64,
    /// Transfers committed per second (batch items included).
    pub transfers_per_s: f64,
    /// Requests answered 2xx.
    pub num_ok: u64,
    /// Requests answered 4xx.
    pub num_rejected: u64,
    /// Requests failed (5xx, transport).
    pub num_errors: u64,
    /// Median latency of the second, ms.
    pub p50_ms: f64,
    /// 99th percentile latency of the second, ms.
    pub p99_ms: f64,
    /// Largest latency of the second, ms.
    pub max_ms: f64,
}

/// Collects intervals once a second until `done` is set; returns the samples.
pub async fn reporter(
    recorders: &[Arc<Mutex<Recorder>>],
    start: Instant,
    (target_opt, length): (Option<u64>, Duration),
    label: &str,
    done: Arc<AtomicBool>,
    hdr_log: Option<&HdrLogSink>,
) -> Vec<SecondSample> {
    let mut samples = Vec::new();
    let mut interval = Interval::new();
    let mut last = start;
    let mut ticker = tokio::time::interval_at(start.into(), Duration::from_secs(1));
    // The first tick of `interval_at` fires at `start` itself.
    ticker.tick().await;
    loop {
        let finished = tokio::select! {
            _ = ticker.tick() => done.load(Ordering::Acquire),
            () = wait_done(&done) => true,
        };
        interval.reset();
        for recorder in recorders {
            let mut recorder = recorder.lock();
            interval.merge(&recorder.interval);
            recorder.interval.reset();
        }
        let now = Instant::now();
        let seconds = now.duration_since(last).as_secs_f64().max(1e-3);
        if let Some(sink) = hdr_log {
            sink.send(&interval.latency, last, now.duration_since(last), label);
        }
        last = now;
        let sample = sample_of(&interval, label, now.duration_since(start), seconds);
        // The last interval of a phase is usually a sliver; its rate would only mislead.
        let whole = seconds >= 0.5;
        if whole {
            print_line(&sample, target_opt, length);
        }
        if whole && samples.len() < SECONDS_RECORDED_MAX && !interval.latency.is_empty() {
            samples.push(sample);
        }
        if finished {
            return samples;
        }
    }
}

async fn wait_done(done: &AtomicBool) {
    // Polled every 20 ms: the reporter needs to notice the end promptly, not instantly.
    while !done.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sample_of(
    interval: &Interval,
    label: &str,
    since_start: Duration,
    seconds: f64,
) -> SecondSample {
    #[allow(clippy::cast_precision_loss)]
    let per_s = |n: u64| round3(n as f64 / seconds);
    let at = |q: f64| {
        if interval.latency.is_empty() {
            0.0
        } else {
            round3(us_to_ms(interval.latency.value_at_quantile(q)))
        }
    };
    SecondSample {
        phase: label.to_string(),
        t_s: round3(since_start.as_secs_f64()),
        rate_per_s: per_s(interval.num_ops),
        transfers_per_s: per_s(interval.num_transfers_committed),
        num_ok: interval.num_ok,
        num_rejected: interval.num_rejected,
        num_errors: interval.num_errors,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: if interval.latency.is_empty() {
            0.0
        } else {
            round3(us_to_ms(interval.latency.max()))
        },
    }
}

/// Returns a text progress bar of `fraction` (clamped to 0..=1), 20 cells wide.
pub fn bar(fraction: f64) -> String {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let filled = (fraction.clamp(0.0, 1.0) * 20.0).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(20 - filled))
}

fn print_line(sample: &SecondSample, target_opt: Option<u64>, length: Duration) {
    let target = target_opt.map_or(String::new(), |t| format!(" (target {t})"));
    let transfers = if sample.transfers_per_s > sample.rate_per_s * 1.5 {
        format!(" transfers {:.0}/s", sample.transfers_per_s)
    } else {
        String::new()
    };
    let length_s = length.as_secs_f64();
    eprintln!(
        "[{} {:>6.1}s/{length_s:.0}s] {} {:>8.0} ops/s{target}{transfers}  ok {} rej {} err {}  \
         p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        sample.phase,
        sample.t_s,
        bar(sample.t_s / length_s.max(1e-3)),
        sample.rate_per_s,
        sample.num_ok,
        sample.num_rejected,
        sample.num_errors,
        sample.p50_ms,
        sample.p99_ms,
        sample.max_ms,
    );
}

/// Prints `label: done/total` once a second until `finished` is set, for set-up and
/// verification.
pub async fn count_progress(label: &str, done: &AtomicU64, total: u64, finished: &AtomicBool) {
    let start = Instant::now();
    let mut next_print = start + Duration::from_secs(1);
    // Polled every 50 ms so the final line follows the end promptly.
    while !finished.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if Instant::now() >= next_print {
            next_print += Duration::from_secs(1);
            let count = done.load(Ordering::Relaxed);
            #[allow(clippy::cast_precision_loss)]
            let fraction = count as f64 / total.max(1) as f64;
            let seconds = start.elapsed().as_secs_f64();
            eprintln!("{label}: {} {count}/{total} ({seconds:.0}s)", bar(fraction));
        }
    }
    let count = done.load(Ordering::Relaxed);
    eprintln!(
        "{label}: {count}/{total} in {:.2}s",
        start.elapsed().as_secs_f64()
    );
}

/// Hands interval histograms to a writer thread that keeps the HdrHistogram interval log.
pub struct HdrLogSink {
    /// Bounded queue to the writer thread; a full queue drops the interval (and says so).
    sender: SyncSender<(Histogram<u64>, Duration, Duration, String)>,
    /// When the log's time base was taken.
    base_instant: Instant,
    /// The writer thread, joined by `finish`.
    thread: JoinHandle<anyhow::Result<()>>,
    /// Intervals dropped because the writer fell behind.
    num_dropped: AtomicU64,
}

impl HdrLogSink {
    /// Creates the log file and starts the writer thread.
    pub fn create(path: &std::path::Path) -> anyhow::Result<HdrLogSink> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let (sender, receiver) = sync_channel::<(Histogram<u64>, Duration, Duration, String)>(64);
        let base_time = SystemTime::now();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
            let mut serializer = hdrhistogram::serialization::V2DeflateSerializer::new();
            let mut writer = IntervalLogWriterBuilder::new()
                .add_comment("saldo-loadtest latency log, values in microseconds")
                .with_start_time(base_time)
                .with_base_time(base_time)
                .with_max_value_divisor(1_000.0)
                .begin_log_with(&mut file, &mut serializer)?;
            for (histogram, start, duration, tag) in receiver {
                let tag = tag.replace([' ', ',', '/'], "_");
                writer
                    .write_histogram(&histogram, start, duration, Tag::new(&tag))
                    .map_err(|e| anyhow::anyhow!("hdr log: {e}"))?;
            }
            drop(writer);
            file.flush()?;
            Ok(())
        });
        Ok(HdrLogSink {
            sender,
            base_instant: Instant::now(),
            thread,
            num_dropped: AtomicU64::new(0),
        })
    }

    fn send(&self, histogram: &Histogram<u64>, from: Instant, duration: Duration, tag: &str) {
        let start = from.saturating_duration_since(self.base_instant);
        let message = (histogram.clone(), start, duration, tag.to_string());
        if self.sender.try_send(message).is_err() {
            self.num_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes the log and waits for the writer; returns the number of dropped intervals.
    pub fn finish(self) -> anyhow::Result<u64> {
        drop(self.sender);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("hdr log writer panicked"))??;
        Ok(self.num_dropped.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_fraction() {
        assert_eq!(bar(0.0), "[....................]");
        assert_eq!(bar(0.5), "[##########..........]");
        assert_eq!(bar(2.0), "[####################]");
    }
}
