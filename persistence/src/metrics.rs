//! Figures a backend exposes for the `/metrics` of the node and of `saldo snapshotter`
//! (Prometheus): backends return [`MetricSample`]s, and [`render_samples`] writes them in the
//! text exposition format.

/// Whether a sample only grows (counter) or goes up and down (gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic (`_total`).
    Counter,
    /// A current value.
    Gauge,
}

/// One metric value with its labels.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricSample {
    /// Prometheus name (`saldo_kinesis_put_retries_total`).
    pub name: &'static str,
    /// One line of help.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// Labels (`("kinesis_shard", "shardId-000000000000")`).
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

/// Renders backend samples (Prometheus text), one `# HELP`/`# TYPE` per metric name.
pub fn render_samples(out: &mut String, samples: &[MetricSample]) {
    use std::fmt::Write;
    // The exposition format wants each metric's samples together.
    let mut sorted: Vec<&MetricSample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.name);
    let mut seen: Vec<&str> = Vec::new();
    for s in sorted {
        if !seen.contains(&s.name) {
            seen.push(s.name);
            let kind = match s.kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {} {}", s.name, s.help);
            let _ = writeln!(out, "# TYPE {} {kind}", s.name);
        }
        let _ = write!(out, "{}", s.name);
        if !s.labels.is_empty() {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let _ = write!(out, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(out, " {}", s.value);
    }
}
