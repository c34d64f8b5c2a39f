//! Figures a backend exposes for the node's `/metrics` (Prometheus) without this crate knowing
//! about Prometheus: the gateway renders [`MetricSample`]s as they come.

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
