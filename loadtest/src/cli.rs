//! Command-line flags (clap). Every flag has an environment variable only where a secret or an
//! address is involved (`SALDO_TARGET`, `SALDO_TOKEN`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::limits::{
    ACCOUNTS_MAX, ACKS_REMEMBERED_MAX, BATCH_SIZE_MAX, CONNECTIONS_MAX, STREAMS_MAX,
    SWEEP_STEPS_MAX,
};

/// saldo's load generator: open loop, closed loop and sweep, with verification of the money.
#[derive(Debug, Parser)]
#[command(
    name = "saldo-loadtest",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// `verify`, or nothing to run load.
    #[command(subcommand)]
    pub command_opt: Option<Command>,
    /// Flags of a load run.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify a server against a state saved by `--save-state` (exit 1 on FAIL).
    Verify(VerifyArgs),
}

/// Flags of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// State file written by `--save-state`.
    #[arg(long)]
    pub state: PathBuf,
    /// Base URL of the server.
    #[arg(long, env = "SALDO_TARGET", default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Bearer token sent with every request.
    #[arg(long, env = "SALDO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA(s) trusted for an https:// target instead of the Mozilla roots
    /// (self-signed test certificates).
    #[arg(long, env = "SALDO_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Concurrent connections used for the reads.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Timeout of one request.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Write the verification result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Flags of a load run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Base URL of the server (`http://host:port` or `https://host:port`).
    #[arg(long, env = "SALDO_TARGET", default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Bearer token sent with every request.
    #[arg(long, env = "SALDO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA(s) trusted for an https:// target instead of the Mozilla roots
    /// (self-signed test certificates).
    #[arg(long, env = "SALDO_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Open loop: operations per second on a fixed timetable (the default mode, at 1000/s).
    #[arg(long, conflicts_with_all = ["concurrency", "sweep"])]
    pub rate: Option<u64>,
    /// Closed loop: this many workers, each sending as soon as its last answer arrived.
    #[arg(long, conflicts_with = "sweep")]
    pub concurrency: Option<usize>,
    /// Sweep: open-loop steps of growing rate, to find the highest rate meeting --p99-max.
    #[arg(long)]
    pub sweep: bool,
    /// Latency objective (p99), e.g. `10ms`; with it, a run that misses exits with 2.
    #[arg(long, value_parser = parse_duration)]
    pub p99_max: Option<Duration>,
    /// Sweep: first rate.
    #[arg(long, default_value_t = 1_000)]
    pub sweep_start: u64,
    /// Sweep: factor between passing steps.
    #[arg(long, default_value_t = 1.5)]
    pub sweep_growth: f64,
    /// Sweep: highest rate tried.
    #[arg(long, default_value_t = 2_000_000)]
    pub sweep_rate_max: u64,
    /// Sweep: bisection steps after the first failing step.
    #[arg(long, default_value_t = 3)]
    pub sweep_refine: u32,
    /// Sweep: most steps in total.
    #[arg(long, default_value_t = 20)]
    pub sweep_steps_max: u32,
    /// Sweep: measured length of each step (each also gets --warmup).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub sweep_step: Duration,

    /// Measured length of the run (after the warm-up).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Warm-up before measuring: load is sent but not counted in the totals.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Keep-alive connections (open loop and sweep); closed loop uses --concurrency. With
    /// --http2, the connections every mode spreads its streams over.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Speak HTTP/2: h2c with prior knowledge on http://, h2 by ALPN on https://. Requests in
    /// flight (--concurrency, or --streams in open loop and sweep) are streams spread evenly
    /// over --connections connections.
    #[arg(long)]
    pub http2: bool,
    /// With --http2, open loop and sweep: requests in flight at most, as streams over
    /// --connections (saldo serve allows 200 streams per connection) [default: 256].
    #[arg(long, requires = "http2")]
    pub streams: Option<usize>,
    /// Timeout of one request (connect + send + response).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Process ID of the server when it runs on this machine: its CPU time over the load
    /// (from /proc/PID/stat) is reported beside the generator's, in total and per request.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Runtime threads of the generator (1 = one core).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Accounts created (and funded) before the load.
    #[arg(long, default_value_t = 1_000)]
    pub accounts: usize,
    /// Money each account starts with (decimal string).
    #[arg(long, default_value = "1000.00")]
    pub funding: String,
    /// Overdraft limit of each account (decimal string).
    #[arg(long, default_value = "0")]
    pub overdraft_limit: String,
    /// Currency of every account (ISO 4217).
    #[arg(long, default_value = "BRL")]
    pub currency: String,
    /// Decimals of the currency's minor unit.
    #[arg(long, default_value_t = 2)]
    pub scale: u32,
    /// Operation weights: transfer, batch, balance, entry, daily, movements, healthz.
    #[arg(long, default_value = "transfer=1")]
    pub mix: String,
    /// Transfers per batch request (`batch` in --mix).
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Send batches with `"atomic": true` (every transfer commits or none does).
    #[arg(long)]
    pub batch_atomic: bool,
    /// Fraction of transfers whose accounts are on different shards (default: whatever the
    /// account choice gives). Needs the server's shard count, `--shards`.
    #[arg(long)]
    pub cross_shard_fraction: Option<f64>,
    /// The server's shard count (`saldo serve --shards`, a power of two; saldo's default is 1).
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// Account choice: `uniform`, `zipf:S` or `hot:FRACTION:PROBABILITY`.
    #[arg(long, default_value = "uniform")]
    pub distribution: String,
    /// Smallest amount of a transfer or entry (decimal string).
    #[arg(long, default_value = "0.01")]
    pub amount_min: String,
    /// Largest amount of a transfer or entry (decimal string).
    #[arg(long, default_value = "10.00")]
    pub amount_max: String,
    /// Fraction of single transfers sent again with the same ID (idempotency).
    #[arg(long, default_value_t = 0.0)]
    pub retry_fraction: f64,
    /// Fraction of operations replaced by deliberately invalid requests.
    #[arg(long, default_value_t = 0.0)]
    pub invalid_fraction: f64,
    /// Seed of the workload: the same seed sends the same operations.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Prefix of every ID the run creates (default: derived from the clock, so runs against
    /// the same server never collide).
    #[arg(long)]
    pub run_id: Option<String>,

    /// Write the report as JSON (schema in docs/loadtest.md).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HdrHistogram interval log (one histogram per second, microseconds).
    #[arg(long)]
    pub hdr_log: Option<PathBuf>,
    /// Write an SVG of the latency percentile curve and latency over time.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write what the run created and had acknowledged, for `verify --state`.
    #[arg(long)]
    pub save_state: Option<PathBuf>,
    /// Skip verification after the run.
    #[arg(long)]
    pub no_verify: bool,
    /// Acknowledged transfers and entries looked up by ID in verification (each kind); beyond
    /// it a uniform sample is checked, and the report says how many.
    #[arg(long, default_value_t = 1_000_000)]
    pub lookups_max: usize,
}

impl RunArgs {
    /// Returns an error naming the first flag out of its bounds.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        ensure!(self.rate != Some(0), "--rate must be positive");
        ensure!(
            (1..=CONNECTIONS_MAX).contains(&self.connections),
            "--connections is 1..={CONNECTIONS_MAX}"
        );
        // Over HTTP/2 a worker costs a stream, not a connection, so more may run.
        let workers_max = if self.http2 {
            STREAMS_MAX
        } else {
            CONNECTIONS_MAX
        };
        if let Some(concurrency) = self.concurrency {
            ensure!(
                (1..=workers_max).contains(&concurrency),
                "--concurrency is 1..={workers_max}"
            );
        }
        if let Some(streams) = self.streams {
            ensure!(
                (1..=STREAMS_MAX).contains(&streams),
                "--streams is 1..={STREAMS_MAX}"
            );
        }
        ensure!((1..=64).contains(&self.threads), "--threads is 1..=64");
        ensure!(
            self.accounts <= ACCOUNTS_MAX,
            "--accounts is at most {ACCOUNTS_MAX}"
        );
        ensure!(
            (1..=BATCH_SIZE_MAX).contains(&self.batch_size),
            "--batch-size is 1..={BATCH_SIZE_MAX}"
        );
        ensure!(
            (0.0..=1.0).contains(&self.retry_fraction),
            "--retry-fraction is 0..=1"
        );
        ensure!(
            (0.0..=1.0).contains(&self.invalid_fraction),
            "--invalid-fraction is 0..=1"
        );
        ensure!(
            self.duration > Duration::ZERO,
            "--duration must be positive"
        );
        ensure!(
            self.duration <= Duration::from_secs(86_400),
            "--duration is at most a day"
        );
        ensure!(
            self.warmup <= Duration::from_secs(3_600),
            "--warmup is at most an hour"
        );
        ensure!(
            self.timeout > Duration::ZERO && self.timeout <= Duration::from_secs(60),
            "--timeout is (0, 60s]"
        );
        ensure!(
            self.sweep_growth > 1.0 && self.sweep_growth <= 10.0,
            "--sweep-growth is (1, 10]"
        );
        ensure!(
            self.sweep_start > 0 && self.sweep_start <= self.sweep_rate_max,
            "--sweep-start"
        );
        ensure!(
            (1..=SWEEP_STEPS_MAX).contains(&self.sweep_steps_max),
            "--sweep-steps-max is 1..={SWEEP_STEPS_MAX}"
        );
        ensure!(
            self.sweep_step > Duration::ZERO && self.sweep_step <= Duration::from_secs(3_600),
            "--sweep-step"
        );
        ensure!(self.scale <= 6, "--scale is at most 6");
        ensure!(
            self.shards.is_power_of_two() && self.shards <= 4_096,
            "--shards is a power of two up to 4096"
        );
        if let Some(fraction) = self.cross_shard_fraction {
            ensure!(
                (0.0..=1.0).contains(&fraction),
                "--cross-shard-fraction is 0..=1"
            );
            ensure!(
                fraction == 0.0 || self.shards >= 2,
                "--cross-shard-fraction needs the server's shard count: pass --shards N (N >= 2, \
                 as given to `saldo serve --shards`)"
            );
        }
        ensure!(
            self.lookups_max <= ACKS_REMEMBERED_MAX,
            "--lookups-max is at most {ACKS_REMEMBERED_MAX}"
        );
        ensure!(
            self.currency.len() == 3,
            "--currency is a 3-letter ISO 4217 code"
        );
        if let Some(run_id) = &self.run_id {
            let safe = run_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            ensure!(
                safe && !run_id.is_empty() && run_id.len() <= 32,
                "--run-id is 1-32 of [A-Za-z0-9_-]"
            );
        }
        if self.sweep {
            ensure!(self.p99_max.is_some(), "--sweep needs --p99-max");
        }
        Ok(())
    }

    /// Returns how many workers (requests in flight at most) a phase runs: `--concurrency` in
    /// closed loop; in open loop `--connections`, or `--streams` over HTTP/2.
    pub fn workers(&self) -> usize {
        match (self.concurrency, self.http2) {
            (Some(concurrency), _) => concurrency,
            (None, false) => self.connections,
            (None, true) => self.streams.unwrap_or(STREAMS_DEFAULT),
        }
    }

    /// Returns how many connections a phase opens: one per worker over HTTP/1.1; over HTTP/2
    /// `--connections`, but never more than there are workers.
    pub fn connections_open(&self) -> usize {
        match self.http2 {
            true => self.connections.min(self.workers()),
            false => self.workers(),
        }
    }
}

/// Streams in flight of an HTTP/2 open loop without `--streams`: room for a backlog of a few
/// milliseconds at tens of thousands of requests per second.
pub const STREAMS_DEFAULT: usize = 256;

/// Parses `250ms`, `10s`, `2m`, `1h`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?}"))?;
    let seconds = match unit.trim() {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3_600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (us, ms, s, m, h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn defaults_validate_and_bad_flags_do_not() {
        let cli = Cli::try_parse_from(["saldo-loadtest"]).unwrap();
        cli.run.validate().unwrap();
        let cli = Cli::try_parse_from(["saldo-loadtest", "--sweep"]).unwrap();
        assert!(cli.run.validate().is_err());
        assert!(
            Cli::try_parse_from(["saldo-loadtest", "--rate", "5", "--concurrency", "2"]).is_err()
        );
        let cli = Cli::try_parse_from(["saldo-loadtest", "verify", "--state", "s.json"]).unwrap();
        assert!(matches!(cli.command_opt, Some(Command::Verify(_))));
    }

    #[test]
    fn http2_spreads_the_workers_as_streams_over_few_connections() {
        let parse = |args: &[&str]| {
            let mut all = vec!["saldo-loadtest"];
            all.extend_from_slice(args);
            let cli = Cli::try_parse_from(all).unwrap();
            cli.run.validate().unwrap();
            (cli.run.workers(), cli.run.connections_open())
        };
        assert_eq!(parse(&["--concurrency", "8"]), (8, 8));
        assert_eq!(parse(&["--connections", "16"]), (16, 16));
        let many = ["--http2", "--connections", "4", "--concurrency", "2048"];
        assert_eq!(parse(&many), (2_048, 4));
        assert_eq!(
            parse(&["--http2", "--connections", "2"]),
            (STREAMS_DEFAULT, 2)
        );
        assert_eq!(parse(&["--http2", "--streams", "1"]), (1, 1));
        assert!(Cli::try_parse_from(["saldo-loadtest", "--streams", "8"]).is_err());
        let too_many = ["saldo-loadtest", "--concurrency", "2048"];
        assert!(Cli::try_parse_from(too_many)
            .unwrap()
            .run
            .validate()
            .is_err());
    }
}
