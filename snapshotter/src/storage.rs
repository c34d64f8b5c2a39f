//! Where a node keeps its write-ahead stream and snapshots: the embedded default (files under
//! the data directory) or AWS (a Kinesis stream, a DynamoDB table). Shared by `saldo serve`,
//! `saldo snapshotter` and `saldo shard`, so all three open the same settings the same way.
//! The gateway reads them from the `[storage]` table of the config file < `SALDO_*` variables
//! < flags.
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

use saldo_persistence::{
    aws::AwsSettings, snapshot::local_dir::LocalDirSnapshotStore, wal::local_file::LocalFileWal,
    SnapshotError, SnapshotStore, Wal, WalError,
};
use serde::{Deserialize, Serialize};

/// Backend of the write-ahead stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum WalBackend {
    /// Segmented files under `<data-dir>/wal`, fsynced per group commit.
    #[default]
    File,
    /// An AWS Kinesis data stream (one per cluster).
    Kinesis,
}

/// Backend of the snapshot store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
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
    pub fn validate(&self) -> Result<(), StorageError> {
        if self.wal == WalBackend::Kinesis && self.kinesis_stream.is_none() {
            return Err(StorageError::Invalid(
                "--wal kinesis needs --kinesis-stream NAME (or kinesis_stream in [storage])".into(),
            ));
        }
        if self.snapshot_store == SnapshotBackend::Dynamodb && self.dynamodb_table.is_none() {
            return Err(StorageError::Invalid(
                "--snapshot-store dynamodb needs --dynamodb-table NAME (or dynamodb_table in \
                 [storage])"
                    .into(),
            ));
        }
        if self.kinesis_shards == 0 {
            return Err(StorageError::Invalid(
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

/// Why storage settings were refused, or the stream or snapshot store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A setting is missing or out of range (the caller says where it came from).
    #[error("{0}")]
    Invalid(String),
    /// A directory of the file backends could not be prepared.
    #[error("failed to prepare {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The write-ahead stream could not be opened.
    #[error("failed to open the stream: {0}")]
    Wal(#[source] WalError),
    /// The snapshot store could not be opened.
    #[error("failed to open the snapshot store: {0}")]
    Snapshots(#[source] SnapshotError),
    /// The stream was created with another shard count: routing would change, and accounts
    /// and IDs on the dropped shards would go missing.
    #[error(
        "{location} was created with {recorded} shards but --shards is {configured}; \
         start with --shards {recorded} (the shard count is fixed for the life of a stream)"
    )]
    ShardCountMismatch {
        /// Where the count is recorded (the stream's layout file, or its Kinesis stream).
        location: String,
        /// Shards recorded with the stream.
        recorded: u32,
        /// Shards asked for.
        configured: u32,
    },
}

/// Returns the storage error for a stream error, naming the fix of a shard count mismatch.
pub fn wal_error(e: WalError) -> StorageError {
    match e {
        WalError::ShardCountMismatch {
            location,
            recorded,
            configured,
        } => StorageError::ShardCountMismatch {
            location,
            recorded,
            configured,
        },
        e => StorageError::Wal(e),
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
) -> Result<Storage, StorageError> {
    let wal: Arc<dyn Wal> = match settings.wal {
        WalBackend::File if read_only => {
            Arc::new(LocalFileWal::open_read_only(data_dir.join("wal")).map_err(StorageError::Wal)?)
        }
        WalBackend::File => {
            let dir = data_dir.join("wal");
            let wal = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir).map_err(|source| StorageError::DataDir {
                    path: dir.clone(),
                    source,
                })?;
                LocalFileWal::open(dir, fsync).map_err(StorageError::Wal)
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
            .map_err(StorageError::Wal)?;
            Arc::new(wal)
        }
    };
    let snapshots: Arc<dyn SnapshotStore> = match settings.snapshot_store {
        SnapshotBackend::Dir => {
            let dir = data_dir.join("snapshots");
            Arc::new(
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir).map_err(|source| StorageError::DataDir {
                        path: dir.clone(),
                        source,
                    })?;
                    LocalDirSnapshotStore::open(dir).map_err(StorageError::Snapshots)
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
                .map_err(StorageError::Snapshots)?,
            )
        }
    };
    Ok(Storage { wal, snapshots })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_aws_backend_needs_its_resource_name() {
        StorageSettings::default()
            .validate()
            .expect("files need no name");
        let kinesis = StorageSettings {
            wal: WalBackend::Kinesis,
            ..StorageSettings::default()
        };
        let err = kinesis.validate().expect_err("no stream name");
        assert!(err.to_string().starts_with("--wal kinesis needs"), "{err}");
        let dynamodb = StorageSettings {
            snapshot_store: SnapshotBackend::Dynamodb,
            ..StorageSettings::default()
        };
        let err = dynamodb.validate().expect_err("no table name");
        assert!(err.to_string().contains("--dynamodb-table"), "{err}");
    }

    #[test]
    fn a_shard_count_mismatch_names_the_fix() {
        let e = wal_error(WalError::ShardCountMismatch {
            location: "file:/x".into(),
            recorded: 4,
            configured: 2,
        });
        assert_eq!(
            e.to_string(),
            "file:/x was created with 4 shards but --shards is 2; start with --shards 4 (the \
             shard count is fixed for the life of a stream)"
        );
    }
}
