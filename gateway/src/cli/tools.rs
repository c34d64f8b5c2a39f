//! The flags of the operators' commands, `saldo snapshotter` and `saldo shard …`, and their
//! dispatch: each is layered with the config file (as for `saldo serve`) into the plain
//! settings of [`saldo_snapshotter::tools`], which holds the commands' logic.

use std::{future::Future, net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use saldo_persistence::Lsn;
use saldo_snapshotter::tools::{
    self as ops, ExportFormat, FollowSettings, Output, RestoreOptions, StoreSettings,
    VerifyOptions, SNAPSHOTTER_METRICS_LISTEN_DEFAULT,
};

use super::StorageArgs;
use crate::config::{Config, ConfigError};

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
    /// count is settled once the stream is open ([`StoreSettings::settle_shards`]).
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

    /// Returns the tools' settings: [`StoreArgs::load`], with the context the tools report.
    pub fn settings(&self) -> anyhow::Result<StoreSettings> {
        let config = self.load().context("failed to load the configuration")?;
        let engine = config.engine;
        Ok(StoreSettings {
            data_dir: config.data_dir,
            fsync: config.fsync,
            storage: config.storage,
            shards: engine.shards,
            shards_given: self.shards.is_some(),
            movements_window: engine.movements_window,
            snapshot_every_events: engine.snapshot_every_events,
            snapshot_interval_ms: engine.snapshot_interval_ms,
            snapshots_keep: engine.snapshots_keep,
        })
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

/// `saldo snapshotter`: follows the stream until `shutdown` completes.
pub async fn snapshotter(
    args: &SnapshotterArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let store = args.store.settings()?;
    let follow = FollowSettings {
        shard: args.shard.clone(),
        every_events: args.every_events,
        interval_ms: args.interval_ms,
        keep: args.keep,
        metrics_listen: args.metrics_listen,
    };
    ops::follow(store, &follow, shutdown).await
}

/// `saldo shard …`. Returns the process exit code (0 = success, 1 = verification failed).
pub async fn shard(args: &ShardArgs) -> anyhow::Result<i32> {
    let store = args.store.settings()?;
    let command = match &args.command {
        ShardCommand::List => ops::ShardCommand::List,
        ShardCommand::Snapshots { shard } => ops::ShardCommand::Snapshots { shard: *shard },
        ShardCommand::Restore(r) => ops::ShardCommand::Restore(RestoreOptions {
            shard: r.shard,
            at: r.at.clone(),
            export: r.export.clone(),
            format: r.format,
            write_snapshot: r.write_snapshot,
            into_dir: r.into_dir.clone(),
        }),
        ShardCommand::Verify(v) => ops::ShardCommand::Verify(VerifyOptions {
            shard: v.shard,
            node: v.node.clone(),
            token: v.token.clone(),
        }),
        ShardCommand::Cut(c) => ops::ShardCommand::Cut {
            shard: c.shard,
            after: c.after,
        },
    };
    ops::shard(store, args.output, &command).await
}
