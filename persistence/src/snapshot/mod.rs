//! Shard snapshots: the [`SnapshotStore`] trait and its backends.
//!
//! A snapshot is an opaque blob (encoded by the engine) of one shard's state as of a stream
//! position, described by a [`SnapshotMeta`] manifest. Backends write the data first and the
//! manifest last, so a half-written snapshot is never listed; readers verify the checksum.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::record::{Lsn, RecordHash};

#[cfg(feature = "aws")]
pub mod dynamodb;
pub mod local_dir;
pub mod memory;

/// Describes a stored snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The shard.
    pub shard: u32,
    /// The snapshot holds the effect of every event up to and including this LSN.
    pub lsn: Lsn,
    /// Hash of the stream record whose last LSN is `lsn` (where the hash chain continues).
    pub record_hash: RecordHash,
    /// When it was taken, µs since the Unix epoch.
    pub taken_at_us: u64,
    /// Size of the data, bytes.
    pub size_bytes: u64,
    /// CRC32C of the data.
    pub crc32c: u32,
}

/// An infrastructure failure of a snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot of that shard at that position.
    #[error("snapshot of shard {shard} at lsn {lsn} not found")]
    NotFound {
        /// The shard.
        shard: u32,
        /// The position.
        lsn: Lsn,
    },
    /// The data does not match its manifest (size or checksum).
    #[error("snapshot of shard {shard} at lsn {lsn} is corrupt: {reason}")]
    Corrupted {
        /// The shard.
        shard: u32,
        /// The position.
        lsn: Lsn,
        /// What is wrong.
        reason: String,
    },
    /// The backend failed.
    #[error("snapshot store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl SnapshotError {
    /// Returns whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SnapshotError::Unavailable(_))
    }
}

/// Stores shard snapshots.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// Stores a snapshot: data first, durable, then the manifest. `meta.size_bytes` and
    /// `meta.crc32c` must describe `data`.
    async fn put(&self, meta: SnapshotMeta, data: Vec<u8>) -> Result<(), SnapshotError>;

    /// [`SnapshotStore::put`] for data in parts, stored as their concatenation (`meta`
    /// describes that: [`meta_for_parts`]): an encoder that wrote its sections into buffers of
    /// their own hands them over without copying them into one more. By default they are
    /// concatenated and put.
    async fn put_parts(
        &self,
        meta: SnapshotMeta,
        parts: Vec<Vec<u8>>,
    ) -> Result<(), SnapshotError> {
        self.put(meta, parts.concat()).await
    }

    /// Returns the manifests of a shard's complete snapshots, newest (highest LSN) first.
    async fn list(&self, shard: u32) -> Result<Vec<SnapshotMeta>, SnapshotError>;

    /// Returns a snapshot's data, verified against its manifest.
    async fn get(&self, meta: &SnapshotMeta) -> Result<Vec<u8>, SnapshotError>;

    /// Deletes all but the newest `keep` snapshots of a shard (manifest first, then data).
    async fn retain(&self, shard: u32, keep: usize) -> Result<(), SnapshotError>;

    /// Returns a human-readable name for logs.
    fn describe(&self) -> String;

    /// Returns the backend's figures for `/metrics`.
    fn metrics(&self) -> Vec<crate::metrics::MetricSample> {
        Vec::new()
    }
}

/// Returns the manifest describing `data` as a snapshot of `shard` at `lsn`.
pub fn meta_for(
    shard: u32,
    lsn: Lsn,
    record_hash: RecordHash,
    taken_at_us: u64,
    data: &[u8],
) -> SnapshotMeta {
    meta_for_parts(shard, lsn, record_hash, taken_at_us, &[data])
}

/// [`meta_for`] the concatenation of `parts`.
pub fn meta_for_parts(
    shard: u32,
    lsn: Lsn,
    record_hash: RecordHash,
    taken_at_us: u64,
    parts: &[impl AsRef<[u8]>],
) -> SnapshotMeta {
    let (size_bytes, crc32c) = size_and_crc(parts);
    SnapshotMeta {
        shard,
        lsn,
        record_hash,
        taken_at_us,
        size_bytes,
        crc32c,
    }
}

/// The length and CRC32C of the concatenation of `parts`.
fn size_and_crc(parts: &[impl AsRef<[u8]>]) -> (u64, u32) {
    parts.iter().fold((0, 0), |(size, crc), part| {
        let part = part.as_ref();
        (size + part.len() as u64, crc32c::crc32c_append(crc, part))
    })
}

/// Checks `data` against its manifest.
pub fn verify(meta: &SnapshotMeta, data: &[u8]) -> Result<(), SnapshotError> {
    verify_parts(meta, &[data])
}

/// [`verify`] the concatenation of `parts`.
pub fn verify_parts(meta: &SnapshotMeta, parts: &[impl AsRef<[u8]>]) -> Result<(), SnapshotError> {
    let corrupted = |reason: String| SnapshotError::Corrupted {
        shard: meta.shard,
        lsn: meta.lsn,
        reason,
    };
    let (size_bytes, crc32c) = size_and_crc(parts);
    if size_bytes != meta.size_bytes {
        return Err(corrupted(format!(
            "{size_bytes} bytes, manifest says {}",
            meta.size_bytes
        )));
    }
    if crc32c != meta.crc32c {
        return Err(corrupted("checksum mismatch".into()));
    }
    Ok(())
}
