//! `saldo snapshotter`: follows the shared stream beside the nodes, folds it into each shard's
//! snapshots with [`Snapshotter`], and serves its progress at `/metrics`.

use std::{
    future::{Future, IntoFuture},
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::{bail, Context};
use saldo_persistence::Wal;
use tokio_util::sync::CancellationToken;

use super::StoreSettings;
use crate::{
    storage::{open_storage, Storage, WalBackend},
    FollowStats, Snapshotter, SnapshotterConfig,
};

/// Default address of `saldo snapshotter`'s `/metrics`.
pub const SNAPSHOTTER_METRICS_LISTEN_DEFAULT: &str = "127.0.0.1:9091";

/// What `saldo snapshotter` was asked for beyond the [`StoreSettings`] (its flags).
#[derive(Debug, Clone)]
pub struct FollowSettings {
    /// Shards to follow; empty = all.
    pub shard: Vec<u32>,
    /// Snapshot a shard after this many new events [default: the store's].
    pub every_events: Option<u64>,
    /// … or after this many ms when anything arrived [default: the store's].
    pub interval_ms: Option<u64>,
    /// Snapshots kept per shard [default: the store's].
    pub keep: Option<usize>,
    /// Address of its `/metrics` (lag, audit failures, backend figures).
    pub metrics_listen: SocketAddr,
}

/// `saldo snapshotter`: follows the stream until `shutdown` completes (SIGINT/SIGTERM in the
/// binary).
pub async fn follow(
    mut store: StoreSettings,
    args: &FollowSettings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if store.storage.wal == WalBackend::File {
        bail!(
            "saldo snapshotter follows a shared stream: use --wal kinesis (a file stream is private \
             to its node, which snapshots it itself: see --snapshot-every-events)"
        );
    }
    let storage = open_storage(&store.storage, &store.data_dir, store.fsync, false)
        .await
        .context("failed to open the stream and snapshot store")?;
    store.settle_shards(&*storage.wal).await?;
    let shards = if args.shard.is_empty() {
        (0..store.shards).collect()
    } else {
        for &s in &args.shard {
            if s >= store.shards {
                bail!(
                    "--shard {s}: the cluster has {} shards (0..{})",
                    store.shards,
                    store.shards
                );
            }
        }
        args.shard.clone()
    };
    let interval_ms = args.interval_ms.unwrap_or(store.snapshot_interval_ms);
    check_interval_within_retention(interval_ms, &*storage.wal).await?;
    let sconfig = SnapshotterConfig {
        shards: shards.clone(),
        every_events: args.every_events.unwrap_or(store.snapshot_every_events),
        interval: if interval_ms == 0 {
            Duration::MAX
        } else {
            Duration::from_millis(interval_ms)
        },
        keep: args.keep.unwrap_or(store.snapshots_keep).max(1),
        movements_window: store.movements_window,
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
        () = shutdown => tracing::info!("shutdown requested"),
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
    let interval_ms_max = retention_ms / crate::RETENTION_PER_SNAPSHOT_INTERVAL_MIN;
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
    saldo_persistence::metrics::render_samples(&mut out, &samples);
    out
}
