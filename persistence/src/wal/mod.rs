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
    /// The stream records another shard count than the one asked for: routing by the count
    /// decides which shard holds each account and ID, so opening it with another count would
    /// lose shards (their IDs would run again, their holds' credits would stay).
    #[error("{location} records {recorded} shards, not {configured}")]
    ShardCountMismatch {
        /// Where the count is recorded (`file:/data/wal/layout.json`, `kinesis:saldo-prod`).
        location: String,
        /// The count the stream records (or, for a stream from before the record existed,
        /// the smallest count its shards allow).
        recorded: u32,
        /// The count asked for.
        configured: u32,
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

/// Checks a shard count against a stream that records none yet (written before the record
/// existed): no shard with records may lie at or above `configured`, or a count that small
/// would drop it. Returns the mismatch naming the smallest count the stream allows.
pub(crate) fn check_unrecorded_shard_count(
    location: String,
    shards_with_records: impl IntoIterator<Item = u32>,
    configured: u32,
) -> Result<(), WalError> {
    match shards_with_records.into_iter().max() {
        Some(highest) if highest >= configured => Err(WalError::ShardCountMismatch {
            location,
            recorded: (highest + 1).next_power_of_two(),
            configured,
        }),
        _ => Ok(()),
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
    /// follows the tail and its `prev_hash` is the tail's hash. An empty shard takes a record
    /// at LSN 1 after the all-zero hash; a backend whose records expire ([`Wal::retention_ms`])
    /// takes any first record, since a shard quiet for longer than the retention has an empty
    /// stream and continues its snapshot (at `snapshot.lsn + 1`, on the snapshot's hash).
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

    /// Records the cluster's shard count in the stream on its first use, or checks it against
    /// the recorded one: [`WalError::ShardCountMismatch`] when they differ. The record lives
    /// with the stream (a file beside the shard directories, a Kinesis stream tag), so every
    /// node and tool that reads the stream sees it, whatever its local disk holds. A stream
    /// written before the record existed must hold no shard at or above `num_shards`.
    ///
    /// The default refuses: every backend must decide where its record lives (a wrapper
    /// delegates to the backend it wraps).
    async fn claim_shard_count(&self, num_shards: u32) -> Result<(), WalError> {
        let _ = num_shards;
        Err(WalError::Unavailable(
            format!("{} does not record a shard count", self.describe()).into(),
        ))
    }

    /// Returns the shard count the stream records, or `None` when none is recorded yet.
    async fn recorded_shard_count(&self) -> Result<Option<u32>, WalError> {
        Err(WalError::Unavailable(
            format!("{} does not record a shard count", self.describe()).into(),
        ))
    }

    /// Returns how long the stream keeps a record before it expires on its own (Kinesis
    /// retention), or `None` when records stay until [`Wal::prune`] drops them.
    async fn retention_ms(&self) -> Result<Option<u64>, WalError> {
        Ok(None)
    }

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
