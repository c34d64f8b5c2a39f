//! The operators' commands: `saldo snapshotter` ([`follow()`]: folds the stream into snapshots
//! beside the nodes) and `saldo shard list|snapshots|restore|verify|cut` ([`shard()`];
//! docs/runbook.md walks through them).
//!
//! They read the same settings as `saldo serve` (the gateway's command line layers the config
//! file < `SALDO_*` < flags into a [`StoreSettings`]) and open the same stream and snapshot
//! store, but never a node's memory: everything they know comes from the stream and the
//! snapshots, verified as it is read. Results go to stdout, progress to stderr.
//!
//! - this module: the settings, [`shard()`], `list`, `snapshots`, `cut`, [`parse_at`];
//! - [`follow`](mod@follow): `saldo snapshotter` and its `/metrics`;
//! - [`restore`]: `saldo shard restore` (rebuild, balances export, snapshot write-back) and the
//!   progress bar;
//! - [`verify`]: `saldo shard verify` (hash chain, snapshots, a live node's checksum).

use std::path::PathBuf;

use anyhow::{bail, Context};
use saldo_engine::{format::rfc3339, recovery::RestoreTarget};
use saldo_persistence::{Lsn, Wal};

use crate::storage::{open_storage, Storage, StorageError, StorageSettings, WalBackend};

pub mod follow;
pub mod restore;
pub mod verify;

pub use follow::{follow, FollowSettings, SNAPSHOTTER_METRICS_LISTEN_DEFAULT};
pub use restore::{ExportFormat, RestoreOptions};
pub use verify::VerifyOptions;

/// Where the stream and snapshots are, and the engine settings the tools fold with: what the
/// configuration (file, `SALDO_*`, flags) says.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Data directory of the file backends.
    pub data_dir: PathBuf,
    /// Whether a file stream opened for writing fsyncs.
    pub fsync: bool,
    /// The backends.
    pub storage: StorageSettings,
    /// Number of logical shards of the cluster, as configured.
    pub shards: u32,
    /// Whether `shards` was asked for on the command line (`--shards`, `SALDO_SHARDS`): then
    /// it must equal the count the stream records, else that count replaces it.
    pub shards_given: bool,
    /// Movement history rows per account (as the nodes use).
    pub movements_window: usize,
    /// Snapshot a shard after this many events (the snapshotter's default).
    pub snapshot_every_events: u64,
    /// … or this often, ms (the snapshotter's default).
    pub snapshot_interval_ms: u64,
    /// Snapshots kept per shard (the snapshotter's default).
    pub snapshots_keep: usize,
}

impl StoreSettings {
    /// Settles the shard count with the one the stream records: `--shards` must equal it, and
    /// without the flag it is the count. A stream that records none (not yet written by a node
    /// of this release) leaves the configured count.
    pub async fn settle_shards(&mut self, wal: &dyn Wal) -> anyhow::Result<()> {
        let recorded_opt = wal
            .recorded_shard_count()
            .await
            .context("failed to read the shard count the stream records")?;
        match (self.shards_given.then_some(self.shards), recorded_opt) {
            (Some(configured), Some(recorded)) if configured != recorded => {
                Err(StorageError::ShardCountMismatch {
                    location: wal.describe(),
                    recorded,
                    configured,
                }
                .into())
            }
            (None, Some(recorded)) => {
                self.shards = recorded;
                Ok(())
            }
            (None, None) => {
                tracing::warn!(
                    shards = self.shards,
                    stream = %wal.describe(),
                    "the stream records no shard count: using the configured one (pass --shards N)"
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Opens the stream and snapshot store read-only and settles the shard count.
    async fn open(&mut self) -> anyhow::Result<Storage> {
        let storage = open_storage(&self.storage, &self.data_dir, self.fsync, true)
            .await
            .context("failed to open the stream and snapshot store")?;
        self.settle_shards(&*storage.wal).await?;
        Ok(storage)
    }
}

/// Output of the listing commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Text,
    /// One JSON document for scripts.
    Json,
}

/// `saldo shard` subcommands.
#[derive(Debug, Clone)]
pub enum ShardCommand {
    /// Lists the shards: stream tail, newest snapshot, snapshot count.
    List,
    /// Lists a shard's snapshots: stream position, time taken, size.
    Snapshots {
        /// The shard.
        shard: u32,
    },
    /// Rebuilds a shard from its newest (or chosen) snapshot plus the stream after it.
    Restore(RestoreOptions),
    /// Rebuilds a shard, checks the stream's hash chain end to end and every snapshot against
    /// it, and compares the state with a live node's.
    Verify(VerifyOptions),
    /// Cuts a shard's file stream after a record boundary (the LSN of the last record to
    /// keep), moving the records after it into `<data-dir>/quarantine/`.
    Cut {
        /// The shard.
        shard: u32,
        /// The LSN of the last record to keep.
        after: Lsn,
    },
}

/// `saldo shard …`. Returns the process exit code (0 = success, 1 = verification failed).
pub async fn shard(
    mut store: StoreSettings,
    output: Output,
    command: &ShardCommand,
) -> anyhow::Result<i32> {
    let storage = store.open().await?;
    let shards = store.shards;
    let check = |shard: u32| -> anyhow::Result<()> {
        if shard >= shards {
            bail!("shard {shard} does not exist: the cluster has {shards} shards (0..{shards}); pass --shards N if that is wrong");
        }
        Ok(())
    };
    let window = store.movements_window;
    match command {
        ShardCommand::List => list(&storage, shards, output).await,
        ShardCommand::Snapshots { shard } => {
            check(*shard)?;
            snapshots(&storage, *shard, output).await
        }
        ShardCommand::Restore(r) => {
            check(r.shard)?;
            restore::restore(&storage, r, window).await
        }
        ShardCommand::Verify(v) => {
            check(v.shard)?;
            verify::verify(&storage, v, window, output).await
        }
        ShardCommand::Cut { shard, after } => {
            check(*shard)?;
            drop(storage);
            cut(&store, *shard, *after)
        }
    }
}

/// `saldo shard cut`: the file stream only (a Kinesis stream's records cannot be removed).
fn cut(store: &StoreSettings, shard: u32, after: Lsn) -> anyhow::Result<i32> {
    if store.storage.wal != WalBackend::File {
        bail!(
            "saldo shard cut works on the file stream only: records of a Kinesis stream cannot \
             be removed; start the nodes on a new stream from snapshots (docs/runbook.md §6)"
        );
    }
    let wal =
        saldo_persistence::wal::local_file::LocalFileWal::open(store.data_dir.join("wal"), true)?;
    let quarantine = store
        .data_dir
        .join("quarantine")
        .join(format!("shard-{shard:05}-after-{after}"));
    let moved = wal
        .cut_after(shard, after, &quarantine)
        .with_context(|| format!("cannot cut shard {shard} after lsn {after}"))?;
    println!(
        "shard {shard}: the stream now ends at lsn {after}; {moved} record(s) moved to {}",
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
    let ts = saldo_engine::format::parse_rfc3339(at).ok_or_else(|| {
        anyhow::anyhow!(
            "--at {at:?}: expected a stream position (an LSN, e.g. 1200) or an RFC 3339 time \
             (e.g. 2026-11-23T10:00:00Z)"
        )
    })?;
    Ok(RestoreTarget::AtTime(ts.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_is_an_lsn_or_an_rfc3339_time() {
        assert!(matches!(parse_at("1200"), Ok(RestoreTarget::AtLsn(1200))));
        assert!(matches!(
            parse_at("2026-11-23T10:00:00Z"),
            Ok(RestoreTarget::AtTime(_))
        ));
        let err = parse_at("yesterday").expect_err("neither");
        assert!(err.to_string().starts_with("--at \"yesterday\""), "{err}");
    }
}
