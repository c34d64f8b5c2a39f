//! The public face of the engine: [`Ledger`], a cheap-to-clone handle over all shards of a node.
//!
//! Every write returns only once the records it produced are durable in the write-ahead stream
//! (rule I2). Business rejections come back as `Err(LedgerError::Rejected(_))`; overload and
//! stream failure as the other `LedgerError` variants.

use std::sync::Arc;

use saldo_persistence::{SnapshotStore, Wal};

use crate::types::*;

/// Engine settings. Durability-relevant settings have no hidden default: the binary passes them.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Number of logical shards (a power of two, at most [`crate::limits::SHARDS_MAX`]).
    pub num_shards: u32,
    /// Owner epoch written into every stream record; readers ignore records of older epochs
    /// once a newer one was seen.
    pub node_epoch: u64,
    /// Rows of movement history kept in memory per account (older rows are in the stream).
    pub movements_window: usize,
    /// Writes (transfers, entries, account openings) being coordinated at once; beyond this,
    /// calls fail `Overloaded`.
    pub in_flight_max: usize,
    /// How long a shard's group commit waits for more events before flushing, in microseconds
    /// (0: flush as soon as the previous flush is done).
    pub group_commit_linger_us: u64,
    /// A shard is snapshotted after this many events (or, once its newest snapshot holds
    /// more entries, after [`crate::limits::SNAPSHOT_GROWTH_PERCENT`] of them) …
    pub snapshot_every_events: u64,
    /// … or this often, whichever comes first (0: only on demand).
    pub snapshot_interval_ms: u64,
    /// Snapshots kept per shard; stream segments older than the oldest kept one are pruned.
    pub snapshots_keep: usize,
    /// Where the time stamped on events comes from ([`crate::Clock::system`] in production).
    pub clock: crate::Clock,
    /// How phase messages travel between shards ([`crate::Courier::direct`] in production;
    /// the node simulation reorders and loses them).
    pub courier: crate::Courier,
}

/// A handle to the ledger of this node. Cloning is cheap.
#[derive(Clone)]
pub struct Ledger {
    pub(crate) inner: Arc<crate::node::Node>,
}

/// Counters and gauges for metrics.
#[derive(Clone, Debug, Default)]
pub struct LedgerStats {
    /// Accounts known to this node.
    pub num_accounts: u64,
    /// Writes (transfers, entries, account openings) being coordinated now.
    pub in_flight: u64,
    /// Stream batches (group commits) written since start.
    pub wal_batches_total: u64,
    /// Events written since start.
    pub wal_events_total: u64,
    /// Cumulative histogram of stream append latency: `(upper bound in µs, count)`.
    pub wal_append_latency_us: Vec<(u64, u64)>,
    /// Cumulative histogram of batch sizes: `(upper bound in events, count)`.
    pub wal_batch_events: Vec<(u64, u64)>,
    /// Sum of append latencies, µs (for the Prometheus `_sum`).
    pub wal_append_latency_us_sum: u64,
    /// Sum of batch sizes (for the Prometheus `_sum`).
    pub wal_batch_events_sum: u64,
    /// Seconds since the oldest of the shards' newest snapshots was taken (None: no snapshot).
    pub snapshot_age_s_opt: Option<u64>,
    /// Snapshots written since start.
    pub snapshots_total: u64,
    /// The stream's and snapshot store's own figures (Kinesis put latency, retries, …).
    pub backend: Vec<saldo_persistence::metrics::MetricSample>,
    /// Shards whose stream failed (they take no writes until the process restarts), with
    /// the cause.
    pub failed_shards: Vec<(u32, String)>,
}

impl Ledger {
    /// Opens the ledger: restores every shard from its newest valid snapshot plus the stream
    /// after it, resolves open holds, and starts the group-commit and snapshot tasks.
    pub async fn open(
        config: EngineConfig,
        wal: Arc<dyn Wal>,
        snapshots: Arc<dyn SnapshotStore>,
    ) -> Result<Ledger, crate::EngineError> {
        crate::node::Node::open(config, wal, snapshots).await
    }

    /// Returns the number of shards.
    pub fn num_shards(&self) -> u32 {
        self.inner.num_shards()
    }

    /// Returns the shard an account belongs to (see [`crate::shard::shard_of`]).
    pub fn shard_of(&self, account_id: &AccountId) -> u32 {
        crate::shard::shard_of(account_id.as_str(), self.num_shards())
    }

    /// Opens an account. Returns the account and `true` when it was created now, `false` when an
    /// identical account already existed; `AccountExists` when it exists with other parameters.
    /// Once recorded, the opening is written whether or not the caller still waits.
    pub async fn open_account(&self, cmd: OpenAccount) -> Result<(AccountView, bool), LedgerError> {
        self.inner.open_account(cmd).await
    }

    /// Returns an account as of durable state.
    pub async fn account(&self, account_id: &AccountId) -> Result<AccountView, LedgerError> {
        self.inner.account(account_id).await
    }

    /// Runs a transfer (two-phase between the account actors) and returns once its outcome is
    /// durable. A repeated ID with the same content returns the original outcome (`replayed`);
    /// with other content, `IdConflict` and nothing changes.
    pub async fn transfer(&self, cmd: Transfer) -> Result<Posted, LedgerError> {
        self.inner.transfer(cmd).await
    }

    /// Runs many transfers concurrently; one result per transfer, in order. With `atomic`,
    /// either all commit or none does (the others report `BatchAborted`).
    pub async fn transfer_batch(
        &self,
        cmds: Vec<Transfer>,
        atomic: bool,
    ) -> Vec<Result<Posted, LedgerError>> {
        let (node, n) = (self.inner.clone(), cmds.len());
        detached(
            async move { node.transfer_batch(cmds, atomic).await },
            |e| vec![Err(e); n],
        )
        .await
    }

    /// Posts a credit or debit entry on one account; idempotent by entry ID like transfers.
    /// Its shard settles it once recorded, so a caller that stops waiting strands nothing.
    pub async fn post_entry(&self, cmd: Entry) -> Result<Posted, LedgerError> {
        self.inner.post_entry(&cmd).await
    }

    /// Returns a transfer or entry by ID.
    pub async fn movement(&self, id: &MovementId) -> Result<MovementView, LedgerError> {
        self.inner.movement(id).await
    }

    /// Returns an account's movements, newest first, starting below `cursor_opt` (exclusive).
    pub async fn movements(
        &self,
        account_id: &AccountId,
        limit: usize,
        cursor_opt: Option<u64>,
    ) -> Result<MovementsPage, LedgerError> {
        self.inner.movements(account_id, limit, cursor_opt).await
    }

    /// Returns the daily consolidated report for every day in `from..=to` (UTC).
    pub async fn daily(
        &self,
        account_id: &AccountId,
        from: Day,
        to: Day,
    ) -> Result<DailyReport, LedgerError> {
        self.inner.daily(account_id, from, to).await
    }

    /// Returns whether every shard is restored and its stream writable.
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// Returns the shards whose write-ahead stream failed, with the cause. Such a shard
    /// refuses writes (`Unavailable`) and still answers reads of durable state; the node is
    /// not ready while any is listed.
    pub fn failed_shards(&self) -> Vec<(u32, String)> {
        self.inner.failed_shards()
    }

    /// Completes once a failed shard's stream takes writes again. The node is fail-stop: the
    /// binary then exits non-zero so that its supervisor restarts it, and the restart
    /// recovers the shard from what is durable (docs/runbook.md).
    pub async fn restart_required(&self) {
        self.inner.restart_required().cancelled_owned().await
    }

    /// Completes once what the restore decoded and then packed has been freed (it is freed
    /// in the background, so that the ledger serves sooner). The binary then hands the freed
    /// memory back to the operating system.
    pub async fn restore_freed(&self) {
        let freeing = std::mem::take(&mut *self.inner.freeing.lock());
        for task in freeing {
            // A drop that panicked has nothing left to free.
            let _ = task.await;
        }
    }

    /// Returns counters and gauges for metrics.
    pub fn stats(&self) -> LedgerStats {
        self.inner.stats()
    }

    /// Snapshots every shard now (consistent cuts at the current durable position).
    pub async fn snapshot_now(&self) -> Result<(), crate::EngineError> {
        self.inner.snapshot_now().await
    }

    /// Returns a checksum over every account's state (for snapshot + replay ≡ live checks).
    pub async fn state_checksum(&self) -> Result<[u8; 32], crate::EngineError> {
        self.inner.state_checksum().await
    }

    /// Returns `(lsn, digest)` of one shard's accounts at a moment when its memory equals the
    /// fold of its durable stream up to `lsn`; `None` when the shard stayed busy (retry).
    pub async fn shard_checksum(
        &self,
        shard: u32,
    ) -> Result<Option<(saldo_persistence::Lsn, [u8; 32])>, crate::EngineError> {
        self.inner.shard_checksum(shard).await
    }

    /// Stops accepting work, waits for in-flight calls, flushes every shard's stream and stops
    /// the background tasks.
    pub async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

/// Runs a write as a task of its own, so that it runs to its end even when the caller stops
/// waiting: an HTTP handler is dropped when its client hangs up or its request times out, and
/// a transfer dropped between its phases would keep its hold open and its ID pending (a retry
/// would wait for it) until the next restart's recovery. A panic in the write resumes in the
/// caller; `on_cancel` answers if the runtime is shutting down under it.
async fn detached<T, F>(write: F, on_cancel: impl FnOnce(LedgerError) -> T) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    match tokio::spawn(write).await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => on_cancel(LedgerError::Unavailable {
            reason: "shutting down",
        }),
    }
}
