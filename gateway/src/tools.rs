//! The operators' commands: `saldo snapshotter` (folds the stream into snapshots beside the
//! nodes) and `saldo shard list|snapshots|restore|verify` (docs/runbook.md walks through them).
//!
//! They read the same settings as `saldo serve` (config file < `SALDO_*` < flags) and open the
//! same stream and snapshot store, but never a node's memory: everything they know comes from
//! the stream and the snapshots, verified as it is read.

use std::{
    future::IntoFuture,
    io::{IsTerminal, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use saldo_engine::{
    recovery::{restore_shard_with_progress, RestoreProgress, RestoreTarget},
    state::{digest, ShardState},
};
use saldo_persistence::{record::RecordHash, snapshot::meta_for, Lsn, SnapshotStore, Wal};
use saldo_snapshotter::{FollowStats, Snapshotter, SnapshotterConfig};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, ConfigError},
    format::{format_minor, rfc3339},
    storage::{open_storage, Storage, StorageArgs},
};

/// Default address of `saldo snapshotter`'s `/metrics`.
pub const SNAPSHOTTER_METRICS_LISTEN_DEFAULT: &str = "127.0.0.1:9091";
/// Records read per call while verifying a stream end to end.
const VERIFY_READ_RECORDS: usize = 1_000;

/// Where the stream and snapshots are: the settings every tool needs. Every flag is global, so
/// it may come before or after the subcommand (`saldo shard list --data-dir …`).
#[derive(Debug, Default, Clone, Args)]
pub struct StoreArgs {
    /// TOML config file, as for `saldo serve` (flags and SALDO_* variables override it).
    #[arg(long, global = true, env = "SALDO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory of the file backends [default: ./data].
    #[arg(long, global = true, env = "SALDO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of logical shards of the cluster, checked against the count the stream records
    /// [default: the count the stream records, else the config's, 1].
    #[arg(long, global = true, env = "SALDO_SHARDS")]
    pub shards: Option<u32>,
    /// Movement history rows per account (as the nodes use) [default: 100].
    #[arg(long, global = true, env = "SALDO_MOVEMENTS_WINDOW")]
    pub movements_window: Option<usize>,
    /// Where the stream and snapshots live.
    #[command(flatten)]
    pub storage: StorageArgs,
}

impl StoreArgs {
    /// Returns the configuration: file (or defaults) overridden by flags, validated. The shard
    /// count is settled once the stream is open ([`StoreArgs::settle_shards`]).
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::from_file(self.config.as_deref())?;
        if let Some(dir) = &self.data_dir {
            config.data_dir.clone_from(dir);
        }
        if let Some(n) = self.shards {
            config.engine.shards = n;
        }
        if let Some(n) = self.movements_window {
            config.engine.movements_window = n;
        }
        self.storage.apply(&mut config.storage);
        config.validate()?;
        Ok(config)
    }

    /// Settles the shard count with the one the stream records: `--shards` must equal it, and
    /// without the flag it is the count. A stream that records none (not yet written by a node
    /// of this release) leaves the configured count.
    pub async fn settle_shards(&self, config: &mut Config, wal: &dyn Wal) -> anyhow::Result<()> {
        let recorded_opt = wal
            .recorded_shard_count()
            .await
            .context("failed to read the shard count the stream records")?;
        match (self.shards, recorded_opt) {
            (Some(configured), Some(recorded)) if configured != recorded => {
                Err(crate::server::GatewayError::ShardCountMismatch {
                    location: wal.describe(),
                    recorded,
                    configured,
                }
                .into())
            }
            (None, Some(recorded)) => {
                config.engine.shards = recorded;
                Ok(())
            }
            (None, None) => {
                tracing::warn!(
                    shards = config.engine.shards,
                    stream = %wal.describe(),
                    "the stream records no shard count: using the configured one (pass --shards N)"
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn open(&self) -> anyhow::Result<(Config, Storage)> {
        let mut config = self.load().context("failed to load the configuration")?;
        let storage = open_storage(&config.storage, &config.data_dir, config.fsync, true)
            .await
            .context("failed to open the stream and snapshot store")?;
        self.settle_shards(&mut config, &*storage.wal).await?;
        Ok((config, storage))
    }
}

/// Flags of `saldo snapshotter`.
#[derive(Debug, Args)]
pub struct SnapshotterArgs {
    /// Where the stream and snapshots are.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Shards to follow (repeat the flag) [default: all].
    #[arg(long = "shard")]
    pub shard: Vec<u32>,
    /// Snapshot a shard after this many new events [default: the config's
    /// snapshot_every_events, 1000000].
    #[arg(long, env = "SALDO_SNAPSHOT_EVERY_EVENTS")]
    pub every_events: Option<u64>,
    /// … or after this many ms when anything arrived [default: snapshot_interval_ms, 60000].
    #[arg(long, env = "SALDO_SNAPSHOT_INTERVAL_MS")]
    pub interval_ms: Option<u64>,
    /// Snapshots kept per shard [default: snapshots_keep, 2].
    #[arg(long, env = "SALDO_SNAPSHOTS_KEEP")]
    pub keep: Option<usize>,
    /// Address of its `/metrics` (lag, audit failures, backend figures).
    #[arg(long, env = "SALDO_SNAPSHOTTER_METRICS_LISTEN", default_value = SNAPSHOTTER_METRICS_LISTEN_DEFAULT)]
    pub metrics_listen: SocketAddr,
}

/// `saldo snapshotter`: follows the stream until SIGINT/SIGTERM.
pub async fn snapshotter(args: &SnapshotterArgs) -> anyhow::Result<()> {
    let mut config = args
        .store
        .load()
        .context("failed to load the configuration")?;
    if config.storage.wal == crate::storage::WalBackend::File {
        bail!(
            "saldo snapshotter follows a shared stream: use --wal kinesis (a file stream is private \
             to its node, which snapshots it itself: see --snapshot-every-events)"
        );
    }
    let storage = open_storage(&config.storage, &config.data_dir, config.fsync, false)
        .await
        .context("failed to open the stream and snapshot store")?;
    args.store.settle_shards(&mut config, &*storage.wal).await?;
    let shards = if args.shard.is_empty() {
        (0..config.engine.shards).collect()
    } else {
        for &s in &args.shard {
            if s >= config.engine.shards {
                bail!(
                    "--shard {s}: the cluster has {} shards (0..{})",
                    config.engine.shards,
                    config.engine.shards
                );
            }
        }
        args.shard.clone()
    };
    let interval_ms = args
        .interval_ms
        .unwrap_or(config.engine.snapshot_interval_ms);
    check_interval_within_retention(interval_ms, &*storage.wal).await?;
    let sconfig = SnapshotterConfig {
        shards: shards.clone(),
        every_events: args
            .every_events
            .unwrap_or(config.engine.snapshot_every_events),
        interval: if interval_ms == 0 {
            Duration::MAX
        } else {
            Duration::from_millis(interval_ms)
        },
        keep: args.keep.unwrap_or(config.engine.snapshots_keep).max(1),
        movements_window: config.engine.movements_window,
    };
    let stats = Arc::new(FollowStats::new(&shards));
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.metrics_listen))?;
    let metrics_app = {
        let (stats, storage) = (stats.clone(), storage.clone());
        axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let text = render_snapshotter_metrics(&stats, &storage);
                    async move { text }
                }),
            )
    };
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        axum::serve(listener, metrics_app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    tracing::info!(
        wal = %storage.wal.describe(),
        snapshots = %storage.snapshots.describe(),
        shards = ?shards,
        metrics = %args.metrics_listen,
        "snapshotter following the stream"
    );
    let snapshotter = Snapshotter::new(storage.wal.clone(), storage.snapshots.clone(), sconfig);
    let runner = {
        let stop = stop.clone();
        async move { snapshotter.run_with_stats(stop, stats).await }
    };
    tokio::select! {
        () = runner => {}
        () = crate::shutdown_signal() => tracing::info!("shutdown requested"),
    }
    stop.cancel();
    let _ = server.await;
    Ok(())
}

/// Refuses a snapshot interval that lets a quiet shard's records expire before a snapshot
/// covers them (the snapshotter is what covers them when the nodes' snapshots are off).
async fn check_interval_within_retention(interval_ms: u64, wal: &dyn Wal) -> anyhow::Result<()> {
    let retention_opt = wal
        .retention_ms()
        .await
        .context("failed to read the stream's retention")?;
    let Some(retention_ms) = retention_opt else {
        return Ok(());
    };
    let interval_ms_max = retention_ms / crate::limits::RETENTION_PER_SNAPSHOT_INTERVAL_MIN;
    if interval_ms == 0 || interval_ms > interval_ms_max {
        bail!(
            "the stream keeps records for {retention_ms} ms, so every shard needs a snapshot at \
             least every {interval_ms_max} ms (a quarter of that), but --interval-ms is \
             {interval_ms}: pass --interval-ms at most {interval_ms_max}"
        );
    }
    Ok(())
}

fn render_snapshotter_metrics(stats: &FollowStats, storage: &Storage) -> String {
    use saldo_persistence::metrics::{MetricKind, MetricSample};
    let mut samples = Vec::new();
    let now_us = saldo_engine::Timestamp::now().0;
    for s in &stats.shards {
        let label = vec![("shard", s.shard.to_string())];
        let mut push = |name, help, kind, value: f64| {
            samples.push(MetricSample {
                name,
                help,
                kind,
                labels: label.clone(),
                value,
            })
        };
        let lag = s.lag_events();
        push(
            "saldo_snapshotter_lag_events",
            "Events between the stream's tail and what the snapshotter folded.",
            MetricKind::Gauge,
            lag as f64,
        );
        let last_at = s.last_event_at_us.load(Ordering::Relaxed);
        let lag_s = if lag == 0 || last_at == 0 {
            0.0
        } else {
            now_us.saturating_sub(last_at) as f64 / 1e6
        };
        push(
            "saldo_snapshotter_lag_seconds",
            "Age of the newest folded event while behind the tail (0 when caught up).",
            MetricKind::Gauge,
            lag_s,
        );
        push(
            "saldo_snapshotter_folded_lsn",
            "Folded and audited up to this LSN.",
            MetricKind::Gauge,
            s.folded_lsn.load(Ordering::Relaxed) as f64,
        );
        push(
            "saldo_snapshotter_snapshot_lsn",
            "LSN of the newest snapshot.",
            MetricKind::Gauge,
            s.snapshot_lsn.load(Ordering::Relaxed) as f64,
        );
        push(
            "saldo_snapshotter_records_total",
            "Stream records folded.",
            MetricKind::Counter,
            s.records.load(Ordering::Relaxed) as f64,
        );
        push(
            "saldo_snapshotter_snapshots_total",
            "Snapshots written.",
            MetricKind::Counter,
            s.snapshots_written.load(Ordering::Relaxed) as f64,
        );
        push(
            "saldo_snapshotter_snapshot_failures_total",
            "Snapshots that failed (retried).",
            MetricKind::Counter,
            s.snapshot_failures.load(Ordering::Relaxed) as f64,
        );
        push(
            "saldo_snapshotter_following",
            "1 once the shard's initial restore is done and its stream is followed.",
            MetricKind::Gauge,
            f64::from(u8::from(s.following.load(Ordering::Relaxed))),
        );
        push(
            "saldo_snapshotter_audit_failures_total",
            "Stream records that failed the audit (gap, broken hash chain, undecodable).",
            MetricKind::Counter,
            s.audit_failures.load(Ordering::Relaxed) as f64,
        );
    }
    samples.extend(storage.wal.metrics());
    samples.extend(storage.snapshots.metrics());
    let mut out = String::new();
    crate::metrics::render_samples(&mut out, &samples);
    out
}

/// Output of the listing commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Text,
    /// One JSON document for scripts.
    Json,
}

/// Flags of `saldo shard`.
#[derive(Debug, Args)]
pub struct ShardArgs {
    /// Where the stream and snapshots are.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: ShardCommand,
}

/// `saldo shard` subcommands.
#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// Lists the shards: stream tail, newest snapshot, snapshot count.
    List,
    /// Lists a shard's snapshots: stream position, time taken, size.
    Snapshots {
        /// The shard.
        shard: u32,
    },
    /// Rebuilds a shard from its newest (or chosen) snapshot plus the stream after it.
    Restore(RestoreArgs),
    /// Rebuilds a shard, checks the stream's hash chain end to end and every snapshot against
    /// it, and compares the state with a live node's.
    Verify(VerifyArgs),
    /// Cuts a shard's file stream after a record boundary, moving the records after it into
    /// `<data-dir>/quarantine/`: the way out when restore refuses an event it cannot apply
    /// (docs/runbook.md §6). Stop the node first.
    Cut(CutArgs),
}

/// Flags of `saldo shard cut`.
#[derive(Debug, Args)]
pub struct CutArgs {
    /// The shard.
    pub shard: u32,
    /// The LSN of the last record to keep (a record boundary: the last LSN of a record).
    #[arg(long)]
    pub after: Lsn,
}

/// Flags of `saldo shard restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The shard.
    pub shard: u32,
    /// Stop at this stream position (an LSN: the state right after it, at a record boundary)
    /// or time (RFC 3339, e.g. 2026-11-23T10:00:00Z: the state after the last record whose
    /// events all happened by then). Default: everything durable.
    #[arg(long)]
    pub at: Option<String>,
    /// Write the accounts' balances to this file (JSON or CSV, by --format or extension).
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Format of --export [default: from the extension, else json].
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
    /// Store the rebuilt state as a snapshot in the configured snapshot store (a node
    /// restores from it on its next start: the same state as replaying the whole stream).
    #[arg(long)]
    pub write_snapshot: bool,
    /// Store the rebuilt state as a snapshot in this directory instead (a local snapshot
    /// folder, e.g. a node's `<data-dir>/snapshots`).
    #[arg(long)]
    pub into_dir: Option<PathBuf>,
}

/// Format of a balances export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON document.
    Json,
    /// Comma-separated values with a header row.
    Csv,
}

/// Flags of `saldo shard verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The shard.
    pub shard: u32,
    /// A live node's base URL (`http://127.0.0.1:8080`): compare its state checksum.
    #[arg(long)]
    pub node: Option<String>,
    /// Bearer token with the ledger:admin scope for --node (when it runs with --auth jwt).
    #[arg(long, env = "SALDO_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `saldo shard …`. Returns the process exit code (0 = success, 1 = verification failed).
pub async fn shard(args: &ShardArgs) -> anyhow::Result<i32> {
    let (config, storage) = args.store.open().await?;
    let shards = config.engine.shards;
    let check = |shard: u32| -> anyhow::Result<()> {
        if shard >= shards {
            bail!("shard {shard} does not exist: the cluster has {shards} shards (0..{shards}); pass --shards N if that is wrong");
        }
        Ok(())
    };
    let window = config.engine.movements_window;
    match &args.command {
        ShardCommand::List => list(&storage, shards, args.output).await,
        ShardCommand::Snapshots { shard } => {
            check(*shard)?;
            snapshots(&storage, *shard, args.output).await
        }
        ShardCommand::Restore(r) => {
            check(r.shard)?;
            restore(&storage, r, window).await
        }
        ShardCommand::Verify(v) => {
            check(v.shard)?;
            verify(&storage, v, window, args.output).await
        }
        ShardCommand::Cut(c) => {
            check(c.shard)?;
            drop(storage);
            cut(&config, c)
        }
    }
}

/// `saldo shard cut`: the file stream only (a Kinesis stream's records cannot be removed).
fn cut(config: &Config, c: &CutArgs) -> anyhow::Result<i32> {
    if config.storage.wal != crate::storage::WalBackend::File {
        bail!(
            "saldo shard cut works on the file stream only: records of a Kinesis stream cannot \
             be removed; start the nodes on a new stream from snapshots (docs/runbook.md §6)"
        );
    }
    let wal =
        saldo_persistence::wal::local_file::LocalFileWal::open(config.data_dir.join("wal"), true)?;
    let quarantine = config
        .data_dir
        .join("quarantine")
        .join(format!("shard-{:05}-after-{}", c.shard, c.after));
    let moved = wal
        .cut_after(c.shard, c.after, &quarantine)
        .with_context(|| format!("cannot cut shard {} after lsn {}", c.shard, c.after))?;
    println!(
        "shard {}: the stream now ends at lsn {}; {moved} record(s) moved to {}",
        c.shard,
        c.after,
        quarantine.display()
    );
    Ok(0)
}

async fn list(storage: &Storage, shards: u32, output: Output) -> anyhow::Result<i32> {
    let mut rows = Vec::new();
    for shard in 0..shards {
        let tail = storage.wal.tail(shard).await?;
        let snaps = storage.snapshots.list(shard).await?;
        rows.push(serde_json::json!({
            "shard": shard,
            "tail_lsn": tail.map_or(0, |t| t.last_lsn),
            "snapshots": snaps.len(),
            "newest_snapshot_lsn": snaps.first().map(|m| m.lsn),
            "newest_snapshot_at": snaps.first().map(|m| rfc3339(saldo_engine::Timestamp(m.taken_at_us))),
        }));
    }
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "stream": storage.wal.describe(),
                "snapshot_store": storage.snapshots.describe(),
                "shards": rows,
            })
        ),
        Output::Text => {
            println!(
                "stream: {}\nsnapshots: {}",
                storage.wal.describe(),
                storage.snapshots.describe()
            );
            println!(
                "{:>5}  {:>12}  {:>9}  {:>12}  NEWEST SNAPSHOT AT",
                "SHARD", "TAIL LSN", "SNAPSHOTS", "SNAPSHOT LSN"
            );
            for r in &rows {
                println!(
                    "{:>5}  {:>12}  {:>9}  {:>12}  {}",
                    r["shard"].as_u64().unwrap_or_default(),
                    r["tail_lsn"].as_u64().unwrap_or_default(),
                    r["snapshots"].as_u64().unwrap_or_default(),
                    r["newest_snapshot_lsn"]
                        .as_u64()
                        .map_or("-".into(), |l| l.to_string()),
                    r["newest_snapshot_at"].as_str().unwrap_or("-"),
                );
            }
        }
    }
    Ok(0)
}

async fn snapshots(storage: &Storage, shard: u32, output: Output) -> anyhow::Result<i32> {
    let metas = storage.snapshots.list(shard).await?;
    match output {
        Output::Json => {
            let rows: Vec<_> = metas
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "shard": m.shard,
                        "lsn": m.lsn,
                        "taken_at": rfc3339(saldo_engine::Timestamp(m.taken_at_us)),
                        "size_bytes": m.size_bytes,
                        "crc32c": format!("{:08x}", m.crc32c),
                        "record_hash": hex::encode(m.record_hash),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({ "shard": shard, "snapshots": rows })
            );
        }
        Output::Text => {
            if metas.is_empty() {
                println!("shard {shard} has no snapshot (a restore replays its whole stream)");
            }
            println!("{:>12}  {:<27}  {:>12}  CRC32C", "LSN", "TAKEN AT", "BYTES");
            for m in &metas {
                println!(
                    "{:>12}  {:<27}  {:>12}  {:08x}",
                    m.lsn,
                    rfc3339(saldo_engine::Timestamp(m.taken_at_us)),
                    m.size_bytes,
                    m.crc32c
                );
            }
        }
    }
    Ok(0)
}

/// Parses `--at`: an LSN (digits) or an RFC 3339 instant.
pub fn parse_at(at: &str) -> anyhow::Result<RestoreTarget> {
    if let Ok(lsn) = at.parse::<u64>() {
        return Ok(RestoreTarget::AtLsn(lsn));
    }
    let ts = crate::format::parse_rfc3339(at).ok_or_else(|| {
        anyhow::anyhow!(
            "--at {at:?}: expected a stream position (an LSN, e.g. 1200) or an RFC 3339 time \
             (e.g. 2026-11-23T10:00:00Z)"
        )
    })?;
    Ok(RestoreTarget::AtTime(ts.0))
}

/// A progress bar on a terminal, plain lines every few seconds otherwise.
struct Progress {
    bar_opt: Option<indicatif::ProgressBar>,
    last_line: std::time::Instant,
    label: String,
}

impl Progress {
    fn new(label: String) -> Progress {
        let bar_opt = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(label.clone());
            bar
        });
        Progress {
            bar_opt,
            last_line: std::time::Instant::now(),
            label,
        }
    }

    fn update(&mut self, p: RestoreProgress) {
        let total = p.tail_lsn.saturating_sub(p.snapshot_lsn);
        let done = p.lsn.saturating_sub(p.snapshot_lsn).min(total);
        match &self.bar_opt {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            None if self.last_line.elapsed() >= Duration::from_secs(2) => {
                self.last_line = std::time::Instant::now();
                eprintln!("{}: {done}/{total} events after the snapshot", self.label);
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar_opt {
            bar.finish_and_clear();
        }
    }
}

async fn rebuild(
    storage: &Storage,
    shard: u32,
    window: usize,
    target: RestoreTarget,
) -> anyhow::Result<ShardState> {
    let mut progress = Progress::new(format!("restoring shard {shard}"));
    let state = restore_shard_with_progress(
        &*storage.wal,
        &*storage.snapshots,
        shard,
        window,
        target,
        &mut |p| progress.update(p),
    )
    .await;
    progress.finish();
    state.with_context(|| format!("failed to rebuild shard {shard}"))
}

async fn restore(storage: &Storage, r: &RestoreArgs, window: usize) -> anyhow::Result<i32> {
    let target = match &r.at {
        Some(at) => parse_at(at)?,
        None => RestoreTarget::Latest,
    };
    let started = std::time::Instant::now();
    let state = rebuild(storage, r.shard, window, target).await?;
    let checksum = hex::encode(digest(state.accounts.values()));
    eprintln!(
        "shard {} rebuilt at lsn {} ({} accounts) in {:.2} s; checksum {checksum}",
        state.shard,
        state.lsn,
        state.accounts.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &r.export {
        let format = r
            .format
            .unwrap_or_else(|| match path.extension().and_then(|e| e.to_str()) {
                Some(e) if e.eq_ignore_ascii_case("csv") => ExportFormat::Csv,
                _ => ExportFormat::Json,
            });
        export(&state, path, format)
            .with_context(|| format!("failed to write {}", path.display()))?;
        eprintln!("balances written to {}", path.display());
    }
    let snapshot_data = (r.write_snapshot || r.into_dir.is_some()).then(|| {
        let data = state.encode();
        let meta = meta_for(
            state.shard,
            state.lsn,
            state.record_hash,
            saldo_engine::Timestamp::now().0,
            &data,
        );
        (meta, data)
    });
    if let Some((meta, data)) = &snapshot_data {
        if r.write_snapshot {
            storage
                .snapshots
                .put(meta.clone(), data.clone())
                .await
                .context("failed to store the snapshot")?;
            eprintln!(
                "snapshot at lsn {} stored in {}",
                meta.lsn,
                storage.snapshots.describe()
            );
        }
        if let Some(dir) = &r.into_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
            let store =
                saldo_persistence::snapshot::local_dir::LocalDirSnapshotStore::open(dir.clone())
                    .with_context(|| format!("failed to open {}", dir.display()))?;
            store
                .put(meta.clone(), data.clone())
                .await
                .context("failed to store the snapshot")?;
            eprintln!("snapshot at lsn {} stored in {}", meta.lsn, dir.display());
        }
    }
    if r.export.is_none() && snapshot_data.is_none() {
        println!(
            "{}",
            serde_json::json!({
                "shard": state.shard,
                "lsn": state.lsn,
                "accounts": state.accounts.len(),
                "checksum": checksum,
            })
        );
    }
    Ok(0)
}

fn export(state: &ShardState, path: &Path, format: ExportFormat) -> anyhow::Result<()> {
    let mut accounts: Vec<_> = state.accounts.values().collect();
    accounts.sort_unstable_by(|a, b| a.id().cmp(b.id()));
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    match format {
        ExportFormat::Csv => {
            writeln!(
                out,
                "account,currency,balance,held,available,overdraft_limit"
            )?;
            for a in accounts {
                let v = a.view();
                let scale = v.currency.scale();
                writeln!(
                    out,
                    "{},{},{},{},{},{}",
                    csv_field(v.account_id.as_str()),
                    v.currency.code(),
                    format_minor(v.balance_minor, scale),
                    format_minor(v.held_minor, scale),
                    format_minor(v.available_minor, scale),
                    format_minor(v.overdraft_limit_minor, scale),
                )?;
            }
        }
        ExportFormat::Json => {
            let rows: Vec<_> = accounts
                .iter()
                .map(|a| {
                    let v = a.view();
                    let scale = v.currency.scale();
                    serde_json::json!({
                        "account": v.account_id.as_str(),
                        "currency": v.currency.code(),
                        "balance": format_minor(v.balance_minor, scale),
                        "held": format_minor(v.held_minor, scale),
                        "available": format_minor(v.available_minor, scale),
                        "overdraft_limit": format_minor(v.overdraft_limit_minor, scale),
                    })
                })
                .collect();
            serde_json::to_writer_pretty(
                &mut out,
                &serde_json::json!({
                    "shard": state.shard,
                    "lsn": state.lsn,
                    "checksum": hex::encode(digest(state.accounts.values())),
                    "accounts": rows,
                }),
            )?;
            writeln!(out)?;
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn csv_field(s: &str) -> String {
    // Account IDs are [A-Za-z0-9._:-]: nothing to quote, but stay safe if that ever widens.
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Reads the whole retained stream of `shard` and checks every record's checksum (the
/// backend does), LSN continuity and the hash chain. Returns `(first_lsn, last_lsn, records)`;
/// the first record is checked against the zero hash when the stream starts at LSN 1.
async fn verify_chain(wal: &dyn Wal, shard: u32) -> anyhow::Result<(Lsn, Lsn, u64)> {
    let mut prev_opt: Option<(Lsn, RecordHash)> = None;
    let (mut first, mut records) = (0, 0u64);
    let mut progress = Progress::new(format!("checking the stream of shard {shard}"));
    let tail = wal.tail(shard).await?.map_or(0, |t| t.last_lsn);
    loop {
        let after = prev_opt.map_or(0, |(lsn, _)| lsn);
        let batch = wal.read(shard, after, VERIFY_READ_RECORDS).await?;
        if batch.is_empty() {
            break;
        }
        for rec in &batch {
            match prev_opt {
                None if rec.first_lsn == 1 => {
                    saldo_persistence::record::check_follows(Some((0, [0; 32])), rec)
                        .map_err(|r| anyhow::anyhow!("shard {shard}: first record (lsn 1): {r}"))?;
                }
                None => {}
                Some(prev) => {
                    saldo_persistence::record::check_follows(Some(prev), rec).map_err(|r| {
                        anyhow::anyhow!(
                            "shard {shard}: record {}..={} does not follow lsn {}: {r}",
                            rec.first_lsn,
                            rec.last_lsn,
                            prev.0
                        )
                    })?;
                }
            }
            if prev_opt.is_none() {
                first = rec.first_lsn;
            }
            prev_opt = Some((rec.last_lsn, rec.hash));
            records += 1;
        }
        progress.update(RestoreProgress {
            snapshot_lsn: 0,
            lsn: prev_opt.map_or(0, |p| p.0),
            tail_lsn: tail,
        });
    }
    progress.finish();
    Ok((first, prev_opt.map_or(0, |p| p.0), records))
}

async fn verify(
    storage: &Storage,
    v: &VerifyArgs,
    window: usize,
    output: Output,
) -> anyhow::Result<i32> {
    let shard = v.shard;
    let mut problems: Vec<String> = Vec::new();
    let mut report = serde_json::Map::new();
    report.insert("shard".into(), shard.into());

    // 1. The stream: checksums, continuity and the hash chain, end to end.
    let (first, last, records) = verify_chain(&*storage.wal, shard).await?;
    report.insert(
        "stream".into(),
        serde_json::json!({ "first_lsn": first, "last_lsn": last, "records": records }),
    );
    eprintln!("stream: {records} records, lsn {first}..={last}: checksums and hash chain OK");

    // 2. Every snapshot against the stream: a snapshot must equal the fold of the stream up to
    // its position (when the stream still starts at lsn 1; otherwise, against the older
    // snapshot + stream).
    let metas = storage.snapshots.list(shard).await?;
    let mut snap_rows = Vec::new();
    for meta in &metas {
        let stored = storage
            .snapshots
            .get(meta)
            .await
            .map_err(anyhow::Error::from)
            .and_then(|bytes| {
                ShardState::decode(&bytes).map_err(|e| anyhow::anyhow!("undecodable: {e}"))
            });
        let ok = match stored {
            Err(e) => {
                problems.push(format!("snapshot at lsn {} is corrupt: {e}", meta.lsn));
                false
            }
            Ok(stored) => {
                let rebuilt = if first == 1 {
                    fold_stream(&*storage.wal, shard, window, meta.lsn).await
                } else {
                    rebuild_below(storage, shard, window, meta.lsn).await
                };
                match rebuilt {
                    Ok(Some(rebuilt)) => {
                        let same = digest(rebuilt.accounts.values())
                            == digest(stored.accounts.values())
                            && rebuilt.record_hash == meta.record_hash;
                        if !same {
                            problems.push(format!(
                                "snapshot at lsn {} differs from the stream folded to that position",
                                meta.lsn
                            ));
                        }
                        same
                    }
                    Ok(None) => {
                        eprintln!(
                            "snapshot at lsn {}: nothing older to check it against (stream pruned below it)",
                            meta.lsn
                        );
                        true
                    }
                    Err(e) => {
                        problems.push(format!("snapshot at lsn {}: {e:#}", meta.lsn));
                        false
                    }
                }
            }
        };
        snap_rows.push(serde_json::json!({ "lsn": meta.lsn, "ok": ok }));
    }
    report.insert("snapshots".into(), snap_rows.into());

    // 3. The newest state: snapshot + stream.
    let state = rebuild(storage, shard, window, RestoreTarget::Latest).await?;
    let checksum = hex::encode(digest(state.accounts.values()));
    report.insert(
        "rebuilt".into(),
        serde_json::json!({ "lsn": state.lsn, "accounts": state.accounts.len(), "checksum": checksum }),
    );
    eprintln!(
        "rebuilt at lsn {} ({} accounts): checksum {checksum}",
        state.lsn,
        state.accounts.len()
    );

    // 4. A live node's state at its durable position, rebuilt at the same position.
    if let Some(node) = &v.node {
        let (lsn, live) = node_checksum(node, shard, v.token.as_deref()).await?;
        let at = rebuild(storage, shard, window, RestoreTarget::AtLsn(lsn)).await?;
        let rebuilt = hex::encode(digest(at.accounts.values()));
        let same = rebuilt == live;
        if !same {
            problems.push(format!(
                "the node's state at lsn {lsn} ({live}) differs from the rebuilt one ({rebuilt})"
            ));
        }
        eprintln!(
            "node {node}: lsn {lsn}, checksum {live}: {}",
            if same { "matches" } else { "DIFFERS" }
        );
        report.insert(
            "node".into(),
            serde_json::json!({ "url": node, "lsn": lsn, "checksum": live, "matches": same }),
        );
    }
    report.insert("ok".into(), problems.is_empty().into());
    report.insert("problems".into(), problems.clone().into());
    match output {
        Output::Json => println!("{}", serde_json::Value::Object(report)),
        Output::Text => {
            if problems.is_empty() {
                println!("shard {shard}: verified");
            } else {
                for p in &problems {
                    println!("shard {shard}: {p}");
                }
            }
        }
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
}

/// Folds the stream from lsn 1 up to `lsn` (no snapshot).
async fn fold_stream(
    wal: &dyn Wal,
    shard: u32,
    window: usize,
    lsn: Lsn,
) -> anyhow::Result<Option<ShardState>> {
    let mut state = ShardState::empty(shard, window);
    while state.lsn < lsn {
        let batch = wal.read(shard, state.lsn, VERIFY_READ_RECORDS).await?;
        if batch.is_empty() {
            bail!("the stream ends at lsn {}, before {lsn}", state.lsn);
        }
        for rec in &batch {
            if rec.last_lsn > lsn {
                bail!(
                    "lsn {lsn} is inside record {}..={}",
                    rec.first_lsn,
                    rec.last_lsn
                );
            }
            state.apply_record(rec)?;
            if state.lsn == lsn {
                break;
            }
        }
    }
    Ok(Some(state))
}

/// Rebuilds the state at `lsn` from an older snapshot + the stream; `None` if there is none.
async fn rebuild_below(
    storage: &Storage,
    shard: u32,
    window: usize,
    lsn: Lsn,
) -> anyhow::Result<Option<ShardState>> {
    let older = storage
        .snapshots
        .list(shard)
        .await?
        .into_iter()
        .any(|m| m.lsn < lsn);
    if !older {
        return Ok(None);
    }
    let only_older = OlderThan {
        inner: storage.snapshots.clone(),
        lsn,
    };
    let state = restore_shard_with_progress(
        &*storage.wal,
        &only_older,
        shard,
        window,
        RestoreTarget::AtLsn(lsn),
        &mut |_| {},
    )
    .await?;
    Ok(Some(state))
}

/// A view of a snapshot store that hides the snapshots at or above an LSN.
struct OlderThan {
    inner: Arc<dyn SnapshotStore>,
    lsn: Lsn,
}

#[async_trait::async_trait]
impl SnapshotStore for OlderThan {
    async fn put(
        &self,
        _meta: saldo_persistence::SnapshotMeta,
        _data: Vec<u8>,
    ) -> Result<(), saldo_persistence::SnapshotError> {
        unreachable!("verification never writes")
    }
    async fn list(
        &self,
        shard: u32,
    ) -> Result<Vec<saldo_persistence::SnapshotMeta>, saldo_persistence::SnapshotError> {
        let mut all = self.inner.list(shard).await?;
        all.retain(|m| m.lsn < self.lsn);
        Ok(all)
    }
    async fn get(
        &self,
        meta: &saldo_persistence::SnapshotMeta,
    ) -> Result<Vec<u8>, saldo_persistence::SnapshotError> {
        self.inner.get(meta).await
    }
    async fn retain(
        &self,
        _shard: u32,
        _keep: usize,
    ) -> Result<(), saldo_persistence::SnapshotError> {
        unreachable!("verification never deletes")
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

async fn node_checksum(
    node: &str,
    shard: u32,
    token_opt: Option<&str>,
) -> anyhow::Result<(Lsn, String)> {
    let url = format!(
        "{}/v1/admin/shards/{shard}/checksum",
        node.trim_end_matches('/')
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("http client")?;
    let mut req = client.get(&url);
    if let Some(token) = token_opt {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("GET {url} failed"))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))?;
    if !status.is_success() {
        bail!(
            "GET {url}: {status}: {}",
            body.get("detail").and_then(|d| d.as_str()).unwrap_or("")
        );
    }
    let lsn = body["lsn"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("GET {url}: no lsn"))?;
    let checksum = body["checksum"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("GET {url}: no checksum"))?
        .to_owned();
    Ok((lsn, checksum))
}
