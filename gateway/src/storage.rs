//! Where a node keeps its write-ahead stream and snapshots: the embedded default (files under
//! the data directory) or AWS (a Kinesis stream, a DynamoDB table). Shared by `saldo serve`,
//! `saldo snapshotter` and `saldo shard`, so all three read the same settings the same way:
//! the `[storage]` table of the config file < `SALDO_*` variables < flags.
//!
//! ```toml
//! [storage]
//! wal = "kinesis"                 # or "file" (default)
//! snapshot_store = "dynamodb"     # or "dir" (default)
//! kinesis_stream = "saldo-prod"
//! dynamodb_table = "saldo-snapshots"
//! # kinesis_endpoint / dynamodb_endpoint: local emulators; region and credentials come from
//! # the standard AWS provider chain (AWS_REGION, AWS_ACCESS_KEY_ID, profiles, IMDS, …).
//! ```

use std::{path::Path, sync::Arc};

use clap::Args;
use saldo_persistence::{
    aws::AwsSettings, snapshot::local_dir::LocalDirSnapshotStore, wal::local_file::LocalFileWal,
    SnapshotStore, Wal,
};
use serde::{Deserialize, Serialize};

use crate::{config::ConfigError, server::GatewayError};

/// Backend of the write-ahead stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WalBackend {
    /// Segmented files under `<data-dir>/wal`, fsynced per group commit.
    #[default]
    File,
    /// An AWS Kinesis data stream (one per cluster).
    Kinesis,
}

/// Backend of the snapshot store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotBackend {
    /// Files under `<data-dir>/snapshots`.
    #[default]
    Dir,
    /// An AWS DynamoDB table.
    Dynamodb,
}

/// Kinesis shards of a stream created by `--create-resources` when none is configured.
pub const KINESIS_CREATE_SHARDS_DEFAULT: u32 = 1;

/// The `[storage]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// Backend of the stream.
    pub wal: WalBackend,
    /// Backend of the snapshots.
    pub snapshot_store: SnapshotBackend,
    /// The Kinesis stream (with `wal = "kinesis"`).
    pub kinesis_stream: Option<String>,
    /// Kinesis endpoint override (an emulator); `None` = AWS.
    pub kinesis_endpoint: Option<String>,
    /// Shards of a stream created by `create_resources`.
    pub kinesis_shards: u32,
    /// The DynamoDB table (with `snapshot_store = "dynamodb"`).
    pub dynamodb_table: Option<String>,
    /// DynamoDB endpoint override (an emulator); `None` = AWS.
    pub dynamodb_endpoint: Option<String>,
    /// AWS region; `None` = the provider chain.
    pub aws_region: Option<String>,
    /// Create a missing stream or table (development, tests); without it a missing resource is
    /// an error at start.
    pub create_resources: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            wal: WalBackend::File,
            snapshot_store: SnapshotBackend::Dir,
            kinesis_stream: None,
            kinesis_endpoint: None,
            kinesis_shards: KINESIS_CREATE_SHARDS_DEFAULT,
            dynamodb_table: None,
            dynamodb_endpoint: None,
            aws_region: None,
            create_resources: false,
        }
    }
}

impl StorageSettings {
    /// Checks that each AWS backend has its resource name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.wal == WalBackend::Kinesis && self.kinesis_stream.is_none() {
            return Err(ConfigError::Invalid(
                "--wal kinesis needs --kinesis-stream NAME (or kinesis_stream in [storage])".into(),
            ));
        }
        if self.snapshot_store == SnapshotBackend::Dynamodb && self.dynamodb_table.is_none() {
            return Err(ConfigError::Invalid(
                "--snapshot-store dynamodb needs --dynamodb-table NAME (or dynamodb_table in \
                 [storage])"
                    .into(),
            ));
        }
        if self.kinesis_shards == 0 {
            return Err(ConfigError::Invalid(
                "kinesis_shards must be positive".into(),
            ));
        }
        Ok(())
    }

    fn aws(&self, endpoint: &Option<String>) -> AwsSettings {
        AwsSettings {
            region: self.aws_region.clone(),
            endpoint: endpoint.clone(),
            static_credentials: None,
            create_resources: self.create_resources,
        }
    }
}

/// Storage flags, shared by every subcommand. Global: `saldo shard list --wal kinesis …` and
/// `saldo shard --wal kinesis … list` both work.
#[derive(Debug, Default, Clone, Args)]
pub struct StorageArgs {
    /// Write-ahead stream backend [default: file].
    #[arg(long, global = true, env = "SALDO_WAL", value_enum)]
    pub wal: Option<WalBackend>,
    /// Snapshot store backend [default: dir].
    #[arg(long, global = true, env = "SALDO_SNAPSHOT_STORE", value_enum)]
    pub snapshot_store: Option<SnapshotBackend>,
    /// Kinesis stream name (with --wal kinesis).
    #[arg(long, global = true, env = "SALDO_KINESIS_STREAM")]
    pub kinesis_stream: Option<String>,
    /// Kinesis endpoint URL (an emulator; default: AWS).
    #[arg(long, global = true, env = "SALDO_KINESIS_ENDPOINT")]
    pub kinesis_endpoint: Option<String>,
    /// Shards of a stream made by --create-resources [default: 1].
    #[arg(long, global = true, env = "SALDO_KINESIS_SHARDS")]
    pub kinesis_shards: Option<u32>,
    /// DynamoDB table name (with --snapshot-store dynamodb).
    #[arg(long, global = true, env = "SALDO_DYNAMODB_TABLE")]
    pub dynamodb_table: Option<String>,
    /// DynamoDB endpoint URL (an emulator; default: AWS).
    #[arg(long, global = true, env = "SALDO_DYNAMODB_ENDPOINT")]
    pub dynamodb_endpoint: Option<String>,
    /// AWS region (default: the provider chain, AWS_REGION).
    #[arg(long, global = true, env = "SALDO_AWS_REGION")]
    pub aws_region: Option<String>,
    /// Create a missing Kinesis stream / DynamoDB table (development and tests).
    #[arg(long, global = true, env = "SALDO_CREATE_RESOURCES", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub create_resources: Option<bool>,
}

impl StorageArgs {
    /// Overrides `s` with every flag that was given.
    pub fn apply(&self, s: &mut StorageSettings) {
        if let Some(v) = self.wal {
            s.wal = v;
        }
        if let Some(v) = self.snapshot_store {
            s.snapshot_store = v;
        }
        let strings = [
            (&mut s.kinesis_stream, &self.kinesis_stream),
            (&mut s.kinesis_endpoint, &self.kinesis_endpoint),
            (&mut s.dynamodb_table, &self.dynamodb_table),
            (&mut s.dynamodb_endpoint, &self.dynamodb_endpoint),
            (&mut s.aws_region, &self.aws_region),
        ];
        for (target, value) in strings {
            if value.is_some() {
                target.clone_from(value);
            }
        }
        if let Some(v) = self.kinesis_shards {
            s.kinesis_shards = v;
        }
        if let Some(v) = self.create_resources {
            s.create_resources = v;
        }
    }
}

/// An opened stream and snapshot store.
#[derive(Clone)]
pub struct Storage {
    /// The stream.
    pub wal: Arc<dyn Wal>,
    /// The snapshots.
    pub snapshots: Arc<dyn SnapshotStore>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("wal", &self.wal.describe())
            .field("snapshots", &self.snapshots.describe())
            .finish()
    }
}

/// Opens the configured stream and snapshot store (`data_dir` holds the file backends). With
/// `read_only` (the operator tools, beside a node that may be writing) a file stream is opened
/// without truncating or creating anything.
pub async fn open_storage(
    settings: &StorageSettings,
    data_dir: &Path,
    fsync: bool,
    read_only: bool,
) -> Result<Storage, GatewayError> {
    let wal: Arc<dyn Wal> = match settings.wal {
        WalBackend::File if read_only => {
            Arc::new(LocalFileWal::open_read_only(data_dir.join("wal")).map_err(GatewayError::Wal)?)
        }
        WalBackend::File => {
            let dir = data_dir.join("wal");
            let wal = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir).map_err(|source| GatewayError::DataDir {
                    path: dir.clone(),
                    source,
                })?;
                LocalFileWal::open(dir, fsync).map_err(GatewayError::Wal)
            })
            .await
            .expect("opening the stream does not panic")?;
            Arc::new(wal)
        }
        WalBackend::Kinesis => {
            let stream = settings.kinesis_stream.as_deref().unwrap_or_default();
            let wal = saldo_persistence::wal::kinesis::KinesisWal::open(
                &settings.aws(&settings.kinesis_endpoint),
                stream,
                settings.kinesis_shards,
            )
            .await
            .map_err(GatewayError::Wal)?;
            Arc::new(wal)
        }
    };
    let snapshots: Arc<dyn SnapshotStore> = match settings.snapshot_store {
        SnapshotBackend::Dir => {
            let dir = data_dir.join("snapshots");
            Arc::new(
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir).map_err(|source| GatewayError::DataDir {
                        path: dir.clone(),
                        source,
                    })?;
                    LocalDirSnapshotStore::open(dir).map_err(GatewayError::Snapshots)
                })
                .await
                .expect("opening the snapshot store does not panic")?,
            )
        }
        SnapshotBackend::Dynamodb => {
            let table = settings.dynamodb_table.as_deref().unwrap_or_default();
            Arc::new(
                saldo_persistence::snapshot::dynamodb::DynamoDbSnapshotStore::open(
                    &settings.aws(&settings.dynamodb_endpoint),
                    table,
                )
                .await
                .map_err(GatewayError::Snapshots)?,
            )
        }
    };
    Ok(Storage { wal, snapshots })
}
