//! # saldo-snapshotter
//!
//! Folds the write-ahead stream into shard snapshots with the engine's own pure apply
//! function, so snapshots never read (or pause) a node's memory, and restores shards from the
//! newest valid snapshot plus the stream after it.
//!
//! ## Layout
//! - [`Snapshotter`]: snapshots every shard after N new events or T seconds, whichever comes
//!   first, and on demand ([`Snapshotter::snapshot_all`]).
//! - [`restore`]: a shard's state at the newest position or at a chosen LSN (the basis of the
//!   `saldo shard` operator tool).
//! - [`storage`]: opens the stream and snapshot store (files or Kinesis/DynamoDB) from plain
//!   settings, for the nodes and the tools alike; [`storage::StorageError`].
//! - [`tools`]: the logic of the operators' commands, `saldo snapshotter` (follow) and
//!   `saldo shard list|snapshots|restore|verify|cut` (the gateway's binary parses their flags
//!   and calls in here).
//!
//! ## Failure model
//! A failed snapshot is logged and retried at the next tick; the stream is pruned only below
//! the oldest snapshot kept, so a corrupt newest snapshot still leaves an older one plus the
//! stream to restore from.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use saldo_engine::{
    recovery::{restore_shard, write_snapshot, RestoreTarget},
    state::ShardState,
    EngineError,
};
use saldo_persistence::{snapshot::meta_for_parts, Lsn, SnapshotMeta, SnapshotStore, Wal};
use tokio_util::sync::CancellationToken;

pub mod storage;
pub mod tools;

/// A stream whose records expire (Kinesis retention: 24 h at least) needs every shard
/// snapshotted at least this many times per retention period. Four leaves three quarters of
/// the retention (18 h of Kinesis' minimum) for failed snapshots (a snapshot store outage) to
/// be retried before a record could expire uncovered.
pub const RETENTION_PER_SNAPSHOT_INTERVAL_MIN: u64 = 4;

/// When and how the snapshotter works.
#[derive(Clone, Debug)]
pub struct SnapshotterConfig {
    /// Shards to look after.
    pub shards: Vec<u32>,
    /// Snapshot a shard once this many events arrived since its last snapshot …
    pub every_events: u64,
    /// … or this often when anything arrived at all.
    pub interval: Duration,
    /// Snapshots kept per shard.
    pub keep: usize,
    /// Rows of history per account (as the nodes use).
    pub movements_window: usize,
}

/// Folds the stream into snapshots.
pub struct Snapshotter {
    wal: Arc<dyn Wal>,
    snapshots: Arc<dyn SnapshotStore>,
    config: SnapshotterConfig,
}

impl Snapshotter {
    /// Returns a snapshotter over a stream and a snapshot store.
    pub fn new(
        wal: Arc<dyn Wal>,
        snapshots: Arc<dyn SnapshotStore>,
        config: SnapshotterConfig,
    ) -> Snapshotter {
        Snapshotter {
            wal,
            snapshots,
            config,
        }
    }

    /// Snapshots every shard now; returns the manifests written.
    pub async fn snapshot_all(&self) -> Result<Vec<SnapshotMeta>, EngineError> {
        let mut out = Vec::new();
        for &shard in &self.config.shards {
            out.push(
                write_snapshot(
                    &*self.wal,
                    &*self.snapshots,
                    shard,
                    self.config.movements_window,
                    self.config.keep,
                )
                .await?
                .meta,
            );
        }
        Ok(out)
    }

    /// Runs until `stop`: follows every shard's stream (tailing it, not a node's memory),
    /// folds each record with the engine's own apply — which verifies LSN continuity and the
    /// hash chain, after the stream verified each record's checksum: a continuous audit — and
    /// writes a shard's snapshot from the folded state after `every_events` new events or
    /// `interval` (when anything arrived). A shard whose stream fails the audit stops being
    /// followed, is counted in [`FollowStats::audit_failures`] and logged as an error; the
    /// others go on.
    pub async fn run(&self, stop: CancellationToken) {
        self.run_with_stats(stop, Arc::new(FollowStats::new(&self.config.shards)))
            .await
    }

    /// [`Snapshotter::run`], publishing its progress in `stats` (for `/metrics`).
    pub async fn run_with_stats(&self, stop: CancellationToken, stats: Arc<FollowStats>) {
        let mut followed: Vec<Followed> = Vec::new();
        for (i, &shard) in self.config.shards.iter().enumerate() {
            let mut failed = false;
            let state = loop {
                match restore(
                    &*self.wal,
                    &*self.snapshots,
                    shard,
                    self.config.movements_window,
                    RestoreTarget::Latest,
                )
                .await
                {
                    Ok(state) => break state,
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(shard, error = %e, "cannot restore yet; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = stop.cancelled() => return,
                        }
                    }
                    Err(e) => {
                        tracing::error!(shard, error = %e, "the stream fails the audit; not following this shard");
                        stats.shards[i]
                            .audit_failures
                            .fetch_add(1, Ordering::Relaxed);
                        failed = true;
                        break ShardState::empty(shard, self.config.movements_window);
                    }
                }
            };
            let snap_lsn = self
                .snapshots
                .list(shard)
                .await
                .ok()
                .and_then(|m| m.first().map(|m| m.lsn))
                .unwrap_or(0);
            stats.shards[i]
                .folded_lsn
                .store(state.lsn, Ordering::Relaxed);
            stats.shards[i]
                .snapshot_lsn
                .store(snap_lsn, Ordering::Relaxed);
            stats.shards[i].following.store(!failed, Ordering::Relaxed);
            followed.push(Followed {
                state,
                snapshot_lsn: snap_lsn,
                snapshot_at: tokio::time::Instant::now(),
                failed,
            });
        }
        let tick =
            (self.config.interval / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            let mut caught_up = true;
            for (i, f) in followed.iter_mut().enumerate() {
                if f.failed {
                    continue;
                }
                let st = &stats.shards[i];
                let shard = f.state.shard;
                match self.wal.tail(shard).await {
                    Ok(t) => st
                        .tail_lsn
                        .store(t.map_or(0, |t| t.last_lsn), Ordering::Relaxed),
                    Err(e) => tracing::warn!(shard, error = %e, "cannot read the stream tail"),
                }
                match self.wal.read(shard, f.state.lsn, FOLLOW_READ_RECORDS).await {
                    Ok(records) => {
                        if records.len() == FOLLOW_READ_RECORDS {
                            caught_up = false;
                        }
                        for rec in &records {
                            if let Err(e) = f.state.apply_record(rec) {
                                tracing::error!(shard, error = %e, "the stream fails the audit; not following this shard");
                                st.audit_failures.fetch_add(1, Ordering::Relaxed);
                                f.failed = true;
                                break;
                            }
                            st.records.fetch_add(1, Ordering::Relaxed);
                            if let Some(at) = last_event_time(rec) {
                                st.last_event_at_us.store(at, Ordering::Relaxed);
                            }
                        }
                        st.folded_lsn.store(f.state.lsn, Ordering::Relaxed);
                        let tail = st.tail_lsn.load(Ordering::Relaxed);
                        if tail < f.state.lsn {
                            st.tail_lsn.store(f.state.lsn, Ordering::Relaxed);
                        }
                    }
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(shard, error = %e, "cannot read the stream; retrying")
                    }
                    Err(e) => {
                        tracing::error!(shard, error = %e, "the stream fails the audit; not following this shard");
                        st.audit_failures.fetch_add(1, Ordering::Relaxed);
                        f.failed = true;
                    }
                }
                if f.failed {
                    continue;
                }
                let new_events = f.state.lsn.saturating_sub(f.snapshot_lsn);
                let due = (self.config.every_events > 0 && new_events >= self.config.every_events)
                    || (new_events > 0 && f.snapshot_at.elapsed() >= self.config.interval);
                if due {
                    match self.snapshot_folded(&f.state).await {
                        Ok(meta) => {
                            f.snapshot_lsn = meta.lsn;
                            f.snapshot_at = tokio::time::Instant::now();
                            st.snapshot_lsn.store(meta.lsn, Ordering::Relaxed);
                            st.snapshots_written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            st.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(shard, error = %e, "snapshot failed; retrying next tick")
                        }
                    }
                }
            }
            if caught_up {
                tokio::select! {
                    () = tokio::time::sleep(tick) => {}
                    () = stop.cancelled() => return,
                }
            } else if stop.is_cancelled() {
                return;
            }
        }
    }

    /// Writes `state` (folded from the stream) as a snapshot, keeps the newest `keep` and
    /// prunes the stream below the oldest kept one.
    async fn snapshot_folded(&self, state: &ShardState) -> Result<SnapshotMeta, EngineError> {
        let parts = state.encode_parts();
        let now_us = saldo_engine::Timestamp::now().0;
        let meta = meta_for_parts(state.shard, state.lsn, state.record_hash, now_us, &parts);
        self.snapshots.put_parts(meta.clone(), parts).await?;
        self.snapshots
            .retain(state.shard, self.config.keep.max(1))
            .await?;
        if let Some(oldest) = self.snapshots.list(state.shard).await?.last() {
            self.wal.prune(state.shard, oldest.lsn).await?;
        }
        tracing::info!(
            shard = state.shard,
            lsn = meta.lsn,
            size_bytes = meta.size_bytes,
            "snapshot written"
        );
        Ok(meta)
    }
}

/// Records one [`Snapshotter::run`] call reads per shard and tick.
pub const FOLLOW_READ_RECORDS: usize = 1_000;

struct Followed {
    state: ShardState,
    snapshot_lsn: Lsn,
    snapshot_at: tokio::time::Instant,
    failed: bool,
}

/// What the snapshotter has done, per shard (lock-free, read by `/metrics`).
#[derive(Debug)]
pub struct FollowStats {
    /// One entry per followed shard, in [`SnapshotterConfig::shards`] order.
    pub shards: Vec<ShardFollowStats>,
}

impl FollowStats {
    /// Zeroed stats for `shards`.
    pub fn new(shards: &[u32]) -> FollowStats {
        FollowStats {
            shards: shards
                .iter()
                .map(|&shard| ShardFollowStats {
                    shard,
                    ..ShardFollowStats::default()
                })
                .collect(),
        }
    }
}

/// Progress of one followed shard.
#[derive(Debug, Default)]
pub struct ShardFollowStats {
    /// The shard.
    pub shard: u32,
    /// Folded (and audited) up to this LSN.
    pub folded_lsn: AtomicU64,
    /// The stream's tail as last seen.
    pub tail_lsn: AtomicU64,
    /// The newest snapshot's LSN.
    pub snapshot_lsn: AtomicU64,
    /// When the last folded event happened, µs since the epoch.
    pub last_event_at_us: AtomicU64,
    /// Records folded while following (the initial restore's are not counted).
    pub records: AtomicU64,
    /// Whether the shard's initial restore is done and the stream is being followed.
    pub following: std::sync::atomic::AtomicBool,
    /// Snapshots written.
    pub snapshots_written: AtomicU64,
    /// Snapshots that failed (retried).
    pub snapshot_failures: AtomicU64,
    /// Audit failures (a record that does not follow: gap, broken chain, undecodable).
    pub audit_failures: AtomicU64,
}

impl ShardFollowStats {
    /// Events the snapshotter is behind the stream's tail.
    pub fn lag_events(&self) -> u64 {
        self.tail_lsn
            .load(Ordering::Relaxed)
            .saturating_sub(self.folded_lsn.load(Ordering::Relaxed))
    }
}

fn last_event_time(rec: &saldo_persistence::Record) -> Option<u64> {
    saldo_engine::event::decode_all(&rec.payload)
        .ok()
        .and_then(|events| events.last().map(|e| e.at().0))
}

/// Restores a shard: the newest valid snapshot at or below the target plus the stream after it.
pub async fn restore(
    wal: &dyn Wal,
    snapshots: &dyn SnapshotStore,
    shard: u32,
    movements_window: usize,
    target: RestoreTarget,
) -> Result<ShardState, EngineError> {
    restore_shard(wal, snapshots, shard, movements_window, target).await
}
