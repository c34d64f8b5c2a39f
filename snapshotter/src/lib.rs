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
//!
//! ## Failure model
//! A failed snapshot is logged and retried at the next tick; the stream is pruned only below
//! the oldest snapshot kept, so a corrupt newest snapshot still leaves an older one plus the
//! stream to restore from.

use std::{sync::Arc, time::Duration};

use saldo_engine::{
    recovery::{restore_shard, write_snapshot, RestoreTarget},
    state::ShardState,
    EngineError,
};
use saldo_persistence::{Lsn, SnapshotMeta, SnapshotStore, Wal};
use tokio_util::sync::CancellationToken;

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
                .await?,
            );
        }
        Ok(out)
    }

    /// Runs until `stop`: each tick, snapshots the shards that are due.
    pub async fn run(&self, stop: CancellationToken) {
        let mut last: Vec<(Lsn, tokio::time::Instant)> = Vec::new();
        for &shard in &self.config.shards {
            let lsn = self
                .snapshots
                .list(shard)
                .await
                .ok()
                .and_then(|m| m.first().map(|m| m.lsn))
                .unwrap_or(0);
            last.push((lsn, tokio::time::Instant::now()));
        }
        let tick =
            (self.config.interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = stop.cancelled() => return,
            }
            for (i, &shard) in self.config.shards.iter().enumerate() {
                let tail = match self.wal.tail(shard).await {
                    Ok(t) => t.map_or(0, |t| t.last_lsn),
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "cannot read the stream tail");
                        continue;
                    }
                };
                let (lsn, at) = last[i];
                let due = tail.saturating_sub(lsn) >= self.config.every_events
                    || (tail > lsn && at.elapsed() >= self.config.interval);
                if !due {
                    continue;
                }
                match write_snapshot(
                    &*self.wal,
                    &*self.snapshots,
                    shard,
                    self.config.movements_window,
                    self.config.keep,
                )
                .await
                {
                    Ok(meta) => last[i] = (meta.lsn, tokio::time::Instant::now()),
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "snapshot failed; retrying next tick")
                    }
                }
            }
        }
    }
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
