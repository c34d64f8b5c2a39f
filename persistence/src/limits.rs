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

// ---- The file backend's writers (`wal::local_file`) ----

/// Zero-filled, synced bytes the file backend keeps ready ahead of a shard's write position
/// (in the open segment and, near its end, in the next one). A record written into space that
/// is already allocated and zero-filled is made durable by an `fdatasync` that need not update
/// the file's size: measured 35% faster here than appending (docs/BENCHMARKS.md). Small enough
/// that a filesystem that fills up is noticed after a few MiB of records (the zero-fill fails
/// and the shard stops taking writes), and that a quiet shard holds little unused space.
pub const WAL_FILE_ZEROED_AHEAD_BYTES: u64 = 4 * 1024 * 1024;

/// Bytes one zero-fill step writes and syncs. The writer fills between appends, one step at a
/// time, so an append that arrives meanwhile waits for one step at most.
pub const WAL_FILE_ZERO_FILL_STEP_BYTES: usize = 1024 * 1024;

/// Appends queued at one shard's writer thread before `append` waits for room. The engine
/// has one append in flight per shard; the bound holds any other caller back.
pub const WAL_FILE_WRITER_QUEUE_MAX: usize = 16;

/// Stack of a shard's writer thread: it writes, syncs and logs, and never recurses (the
/// default 2 MiB would reserve 8 GiB of address space at 4,096 shards).
pub const WAL_FILE_WRITER_STACK_BYTES: usize = 256 * 1024;

/// Shards the file backend serves: directories are named with five digits (`shard-00003`).
pub const WAL_FILE_SHARDS_MAX: u32 = 65_536;

const _: () = assert!(WAL_FILE_ZERO_FILL_STEP_BYTES as u64 <= WAL_FILE_ZEROED_AHEAD_BYTES);
// A record of the largest size fits the room kept ahead even just before a fill step, so
// while the writer keeps up no record has to extend a file.
const _: () = assert!(
    WAL_FILE_ZEROED_AHEAD_BYTES - WAL_FILE_ZERO_FILL_STEP_BYTES as u64
        >= WAL_RECORD_BYTES_MAX as u64
);
const _: () = assert!(WAL_FILE_ZEROED_AHEAD_BYTES <= WAL_SEGMENT_BYTES_TARGET);
const _: () = assert!(WAL_FILE_SHARDS_MAX <= 100_000);
const _: () = assert!(WAL_FILE_WRITER_QUEUE_MAX >= 1);

// ---- Kinesis write-ahead stream (`wal::kinesis`) ----

/// Largest Kinesis record: data blob plus partition key (AWS default 1 MiB; the emulators do
/// not check it, `wal::kinesis` does).
pub const KINESIS_RECORD_BYTES_MAX: usize = 1024 * 1024;
/// Longest Kinesis partition key (AWS: 256 Unicode characters; saldo's are ASCII).
pub const KINESIS_PARTITION_KEY_BYTES_MAX: usize = 256;
/// Longest partition key saldo writes (`saldo-shard-4294967295` is 22 bytes).
pub const KINESIS_SALDO_PARTITION_KEY_BYTES_MAX: usize = 32;
/// Records one Kinesis shard accepts per second (AWS write limit, provisioned and on-demand).
pub const KINESIS_SHARD_RECORDS_PER_SEC: u32 = 1_000;
/// Bytes (data + partition key) one Kinesis shard accepts per second (AWS write limit).
pub const KINESIS_SHARD_BYTES_PER_SEC: u32 = 1024 * 1024;
/// Records in one PutRecords call (AWS limit).
pub const KINESIS_PUT_RECORDS_MAX: usize = 500;
/// Bytes (data + partition keys) in one PutRecords call (AWS limit).
pub const KINESIS_PUT_RECORDS_BYTES_MAX: usize = 5 * 1024 * 1024;
/// Records one GetRecords call may return (AWS limit; the call also stops at 10 MiB).
pub const KINESIS_GET_RECORDS_MAX: usize = 10_000;
/// Smallest gap between two GetRecords calls on one Kinesis shard (AWS: 5 calls/s per shard).
pub const KINESIS_GET_RECORDS_INTERVAL_MS: u64 = 200;
/// Appends waiting for the put loop (beyond this `append` waits: back-pressure that fills the
/// engine's group-commit queue, which then answers 503).
pub const KINESIS_PUT_QUEUE_MAX: usize = 1_024;
/// Records the put loop holds (waiting for tokens or a retry); at most one per ledger shard.
pub const KINESIS_PUT_PENDING_MAX: usize = 4_096;
/// GetRecords calls one catch-up of a Kinesis shard makes before it returns (the next catch-up
/// goes on from there): bounds the time a `read` or `tail` can spend behind a fast writer.
pub const KINESIS_CATCH_UP_CALLS_MAX: u32 = 64;
/// GetRecords calls one `read` makes to fetch the bodies of indexed records.
pub const KINESIS_READ_CALLS_MAX: u32 = 64;
/// Decompressed bytes one `read` returns at most (at least one record is always returned).
pub const KINESIS_READ_BYTES_MAX: usize = 32 * 1024 * 1024;
/// How long to wait for a new or updating stream to become ACTIVE.
pub const KINESIS_STREAM_ACTIVE_TIMEOUT_MS: u64 = 300_000;
/// How often to ask whether the stream is ACTIVE (DescribeStreamSummary: 20 calls/s per
/// account on AWS).
pub const KINESIS_STREAM_POLL_INTERVAL_MS: u64 = 250;
/// Tags a Kinesis stream may have (AWS limit).
pub const KINESIS_STREAM_TAGS_MAX: usize = 50;
/// Tags asked for per ListTagsForStream call: AWS takes up to 50, kinesalite (an older API
/// model) up to 10.
pub const KINESIS_LIST_TAGS_PAGE: usize = 10;
/// Shards a stream may have (ListShards pages are bounded too): a sanity bound.
pub const KINESIS_SHARDS_MAX: usize = 10_000;

// Even an incompressible record, stored raw behind its codec byte, fits one Kinesis record.
const _: () = assert!(
    WAL_RECORD_BYTES_MAX + 1 + KINESIS_SALDO_PARTITION_KEY_BYTES_MAX <= KINESIS_RECORD_BYTES_MAX
);
const _: () = assert!(KINESIS_SALDO_PARTITION_KEY_BYTES_MAX <= KINESIS_PARTITION_KEY_BYTES_MAX);
const _: () = assert!(KINESIS_RECORD_BYTES_MAX <= KINESIS_SHARD_BYTES_PER_SEC as usize);
const _: () = assert!(KINESIS_RECORD_BYTES_MAX <= KINESIS_PUT_RECORDS_BYTES_MAX);
const _: () = assert!(KINESIS_READ_BYTES_MAX >= WAL_RECORD_BYTES_MAX);
const _: () =
    assert!(KINESIS_LIST_TAGS_PAGE >= 1 && KINESIS_LIST_TAGS_PAGE <= KINESIS_STREAM_TAGS_MAX);

// ---- DynamoDB snapshot store (`snapshot::dynamodb`) ----

/// Compressed bytes in one DynamoDB snapshot chunk item: well under [`DYNAMODB_ITEM_BYTES_MAX`]
/// so that the item's attribute names, keys and timestamp (see
/// [`DYNAMODB_CHUNK_ITEM_OVERHEAD_BYTES_MAX`]) always fit, with a margin for future attributes.
pub const DYNAMODB_CHUNK_BYTES: usize = 350 * 1024;
/// Upper bound of everything in a chunk item but its data: DynamoDB counts attribute names and
/// values, so `pk` + `shard#NNNNN` (up to 10 digits), `sk` + `c#{lsn:020}#{id:16}#{index:06}`,
/// `d`, `t` + a number. About 100 bytes today; the bound leaves room.
pub const DYNAMODB_CHUNK_ITEM_OVERHEAD_BYTES_MAX: usize = 1024;
/// Items in one BatchWriteItem call (a DynamoDB limit).
pub const DYNAMODB_BATCH_WRITE_ITEMS_MAX: usize = 25;
/// Bytes of one BatchWriteItem request (a DynamoDB limit: 16 MB).
pub const DYNAMODB_BATCH_WRITE_BYTES_MAX: usize = 16 * 1000 * 1000;
/// BatchWriteItem calls of one snapshot in flight at once. Bounds the memory a put holds beyond
/// the snapshot (each call holds up to 25 chunks, twice while a retry is built). More does not
/// help on AWS: all chunks of a shard share one partition key (about 1,000 WCU/s).
pub const DYNAMODB_WRITE_BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Most chunks of one snapshot: the largest snapshot after zstd's worst-case expansion
/// (input + input/128 + a frame overhead). The chunk index is written with 6 digits.
pub const DYNAMODB_CHUNKS_MAX: usize =
    (SNAPSHOT_BYTES_MAX + SNAPSHOT_BYTES_MAX / 128 + 64 * 1024) / DYNAMODB_CHUNK_BYTES + 1;
/// Pages one DynamoDB Query loop reads before giving up (a page is at most 1 MB, so at least
/// one chunk; a shard's manifests are few): a bound on a loop, never reached in practice.
pub const DYNAMODB_QUERY_PAGES_MAX: usize = 4 * DYNAMODB_CHUNKS_MAX;
/// How long `open` waits for a table it created (or found being created) to become ACTIVE.
pub const DYNAMODB_TABLE_ACTIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Interval between DescribeTable polls while waiting for ACTIVE.
pub const DYNAMODB_TABLE_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
/// Age after which `retain` deletes a chunk that no manifest references (the leftover of a put
/// that crashed before its manifest): long enough that no put still in progress owns it.
pub const DYNAMODB_ORPHAN_CHUNK_AGE_MIN_SECS: u64 = 15 * 60;

const _: () = assert!(
    DYNAMODB_CHUNK_BYTES + DYNAMODB_CHUNK_ITEM_OVERHEAD_BYTES_MAX <= DYNAMODB_ITEM_BYTES_MAX
);
// Binary attributes travel base64-encoded (4/3) in the JSON request.
const _: () = assert!(
    DYNAMODB_BATCH_WRITE_ITEMS_MAX
        * (DYNAMODB_CHUNK_BYTES + DYNAMODB_CHUNK_ITEM_OVERHEAD_BYTES_MAX)
        / 3
        * 4
        <= DYNAMODB_BATCH_WRITE_BYTES_MAX
);
const _: () = assert!(DYNAMODB_CHUNKS_MAX < 1_000_000);

/// A local snapshot is written and synced in chunks of this size, so that the write-ahead
/// stream's fsyncs on the same disk queue behind at most one chunk, not behind the tens of
/// megabytes of a whole snapshot written in one burst.
pub const SNAPSHOT_WRITE_CHUNK_BYTES: usize = 1 << 20;
