//! Bounds of the persistence layer. The AWS knowledge stays here.

/// Largest encoded record any [`crate::Wal`] backend accepts in one append. A Kinesis record is
/// at most 1 MiB including a partition key of at most 256 bytes.
pub const WAL_RECORD_BYTES_MAX: usize = 1024 * 1024 - 256;

/// Size at which the file backend starts a new segment.
pub const WAL_SEGMENT_BYTES_TARGET: u64 = 64 * 1024 * 1024;

/// Most records one `Wal::read` call returns.
pub const WAL_READ_RECORDS_MAX: usize = 10_000;

/// Largest snapshot the local backends accept, in bytes (a sanity bound, not an AWS one).
pub const SNAPSHOT_BYTES_MAX: usize = 4 * 1024 * 1024 * 1024 - 1;

/// Largest DynamoDB item (400 KB); a snapshot stored there is split into chunks below it.
pub const DYNAMODB_ITEM_BYTES_MAX: usize = 400 * 1024;

const _: () = assert!(WAL_RECORD_BYTES_MAX < 1024 * 1024);
const _: () = assert!(WAL_SEGMENT_BYTES_TARGET as usize > WAL_RECORD_BYTES_MAX);
