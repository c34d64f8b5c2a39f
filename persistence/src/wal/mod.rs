//! The write-ahead stream: the [`Wal`] trait and its backends.
//!
//! One stream per shard, each a sequence of [`Record`]s with contiguous LSNs and a hash chain.
//! Appends are batch-oriented: the engine's group commit hands a whole batch of events to one
//! `append`, which returns once the record is durable.

use async_trait::async_trait;

use crate::record::{EncodedRecord, Lsn, Record, RecordHash};

#[cfg(feature = "aws")]
pub mod kinesis;
pub mod local_file;
pub mod memory;

/// An infrastructure failure of the stream.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The record is over the backend's size limit.
    #[error("wal record is {size_bytes} bytes, limit is {limit_bytes}")]
    RecordTooLarge {
        /// Size of the record.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// The append does not continue the shard's stream (LSN or hash chain).
    #[error("wal append out of order for shard {shard}: {reason}")]
    OutOfOrder {
        /// The shard.
        shard: u32,
        /// What did not follow.
        reason: &'static str,
    },
    /// A record is corrupt (bad checksum, broken chain, LSN gap) somewhere other than a torn
    /// tail. Never skipped silently.
    #[error("wal corrupted in shard {shard} at {location}: {reason}")]
    Corrupted {
        /// The shard.
        shard: u32,
        /// Where (file and byte offset, or stream position).
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The backend failed (I/O error, service unavailable). For the file backend a failed
    /// fsync is fatal: the engine stops rather than trust the page cache.
    #[error("wal backend unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl WalError {
    /// Returns whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WalError::Unavailable(_))
    }
}

/// The last durable record of a shard: where its stream ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    /// LSN of the last durable event.
    pub last_lsn: Lsn,
    /// Hash of the last durable record (the next record's `prev_hash`).
    pub hash: RecordHash,
}

/// A write-ahead stream partitioned by shard.
#[async_trait]
pub trait Wal: Send + Sync + 'static {
    /// Appends one encoded record (see [`crate::record::encode`]) to `shard`'s stream and
    /// returns once it is durable. The record must continue the shard's stream: its first LSN
    /// follows the tail and its `prev_hash` is the tail's hash.
    async fn append(&self, shard: u32, record: EncodedRecord) -> Result<(), WalError>;

    /// Returns the shard's tail, or `None` for an empty stream.
    async fn tail(&self, shard: u32) -> Result<Option<Tail>, WalError>;

    /// Returns up to `max_records` verified records of `shard` whose last LSN is above
    /// `after_lsn`, in order. An empty vector means the reader is at the tail.
    async fn read(
        &self,
        shard: u32,
        after_lsn: Lsn,
        max_records: usize,
    ) -> Result<Vec<Record>, WalError>;

    /// Drops whole segments whose records all have LSNs at or below `lsn` (covered by a
    /// retained snapshot). A backend that cannot prune (Kinesis: retention does it) does
    /// nothing.
    async fn prune(&self, shard: u32, lsn: Lsn) -> Result<(), WalError>;

    /// Returns a human-readable name for logs (`file:/data/wal`).
    fn describe(&self) -> String;

    /// Returns the backend's figures for `/metrics` (put latency, retries, bytes, …).
    fn metrics(&self) -> Vec<crate::metrics::MetricSample> {
        Vec::new()
    }

    /// Returns `Ok` once the backend takes writes again after an append of `shard` failed,
    /// without writing to the stream (a failed node asks it before restarting to recover).
    /// By default: the shard's tail can be read (the service answers again).
    async fn probe(&self, shard: u32) -> Result<(), WalError> {
        self.tail(shard).await.map(|_| ())
    }
}
