//! Every bound of the engine, with why it has the value it has.

use saldo_persistence::limits::WAL_RECORD_BYTES_MAX;

/// Most shards a node can be configured with.
pub const SHARDS_MAX: u32 = 4_096;

/// Most events one group commit puts in one stream record.
pub const WAL_BATCH_EVENTS_MAX: usize = 8_192;
/// Longest a group commit waits for more events while nobody waits for it, µs (tokio's timer
/// rounds up to whole milliseconds). A batch is written at once when someone waits for one of
/// its events (a reply, a read, a phase crossing shards) or when it is full; otherwise it lingers
/// this long, so that events appended together with only the last awaited share one record and
/// one fsync.
pub const WAL_UNDEMANDED_FLUSH_US: u64 = 1_000;
/// Events a batch must have collected while the previous one was written to go out at once,
/// without the linger of [`WAL_UNDEMANDED_FLUSH_US`]. The linger is there to share an fsync
/// among many events; a batch this large already shares it well, and waiting would only add
/// latency. A smaller one lingers: writing every few events would pay an fsync each (measured
/// at 6,000 transfers/s over HTTP: 1.5 times the appends when every batch that filled during a
/// write went at once, docs/engine.md).
pub const WAL_AMORTIZED_EVENTS: usize = 64;

/// Largest encoded event (an account opening with maximal metadata, a transfer with maximal
/// IDs and description stay far below it).
pub const EVENT_BYTES_MAX: usize = 16 * 1024;

/// Most payload bytes of one group commit: a record must fit the stream's record limit
/// (Kinesis: 1 MiB including the partition key), with room for one more maximal event.
pub const WAL_BATCH_BYTES_MAX: usize = WAL_RECORD_BYTES_MAX - 1024 - EVENT_BYTES_MAX;

/// Largest account metadata (opaque JSON text), bytes.
pub const METADATA_BYTES_MAX: usize = 4 * 1024;

/// Longest date range of one daily report, days.
pub const DAILY_RANGE_DAYS_MAX: i32 = 366;

/// Most rows of one page of movements.
pub const MOVEMENTS_PAGE_MAX: usize = 1_000;

/// Most open holds one account may have at once (bounds the account's memory).
pub const HOLDS_PER_ACCOUNT_MAX: usize = 4_096;

/// Most transfers of one batch call coordinated at once (the rest wait for a slot).
pub const BATCH_CONCURRENCY_MAX: usize = 2_048;

/// Most records a snapshot or restore reads from the stream per call.
pub const RESTORE_READ_RECORDS: usize = 1_024;

const _: () = assert!(WAL_BATCH_BYTES_MAX + EVENT_BYTES_MAX + 1024 <= WAL_RECORD_BYTES_MAX);
const _: () = assert!(SHARDS_MAX.is_power_of_two());
const _: () = assert!(METADATA_BYTES_MAX + 1024 < EVENT_BYTES_MAX);

/// Tries of `Ledger::shard_checksum` to find its shard quiet (2 ms apart) before giving up.
pub const SHARD_CHECKSUM_ATTEMPTS: usize = 500;

/// Nice value of a snapshot's threads when the shard's snapshot is overdue (0 is the request
/// path's, 19 the lowest; see `SnapshotPriority`). Usually a snapshot runs at `SCHED_IDLE`
/// instead: on CPU time the request path leaves, preempted as soon as a request-path thread
/// wakes. At nice 10 the scheduler gives it about a tenth of the share of a request-path thread
/// when both want a core, so an overdue snapshot still finishes under full load.
pub const SNAPSHOT_THREAD_NICE: i32 = 10;

/// A shard's snapshot is overdue, and runs at [`SNAPSHOT_THREAD_NICE`] rather than on idle
/// time, once its stream has grown by this many times the events it is due after. Measured
/// in process on 2 cores (single transfers from 1,024 callers, batches of 8,189), snapshots on
/// idle time instead of at nice 10 took single transfers from about 223k/s to 247k/s and their
/// p99 from 12.6 to 9.4 ms, and batches from about 452k/s to 527k/s.
pub const SNAPSHOT_OVERDUE_FACTOR: u64 = 2;

/// A snapshot that started on idle time and is still folding after this long (the node had
/// no idle time) goes on at [`SNAPSHOT_THREAD_NICE`], where the process may raise a thread's
/// priority (`CAP_SYS_NICE` or `RLIMIT_NICE`), ms.
pub const SNAPSHOT_IDLE_MS_MAX: u64 = 30_000;

/// A shard whose newest snapshot holds `n` entries (accounts and movements) is due for the
/// next one by count only once its stream has grown by this percent of `n` events, when that
/// is more than `EngineConfig::snapshot_every_events`: the cost of snapshots per event stays
/// bounded however large the shard grows, and a restore folds a tail of at most half its
/// state on top of the snapshot.
pub const SNAPSHOT_GROWTH_PERCENT: u64 = 50;

/// Longest pause between two looks of the background task at whether a shard's snapshot is
/// due (shorter when the snapshot interval is shorter).
pub const SNAPSHOT_CHECK_MS_MAX: u64 = 1_000;

/// First pause before a failed shard asks its stream again whether it takes writes, ms; it
/// doubles after each refusal.
pub const STREAM_PROBE_INTERVAL_MS_MIN: u64 = 250;
/// Longest pause between two such probes, ms: a stream that comes back is noticed within it.
pub const STREAM_PROBE_INTERVAL_MS_MAX: u64 = 2_000;

/// Longest a read waits for the state it would answer from to become durable, ms; then it
/// answers 503 (a read never hangs on a stalled stream).
pub const READ_DURABLE_WAIT_MS_MAX: u64 = 2_000;

const _: () = assert!(STREAM_PROBE_INTERVAL_MS_MIN <= STREAM_PROBE_INTERVAL_MS_MAX);

/// Most entries a snapshot's map (accounts, movements) is presized for when decoded: the
/// count its encoding announces (and the movements map of a restore, for the events of the
/// stream tail it folds), up to this (4 Mi: a restore of a few million accounts builds
/// its maps without rehashing, and a count that a damaged snapshot inflates cannot reserve
/// more than a few hundred MiB; past it a map grows as its entries come).
pub const SNAPSHOT_MAP_PRESIZE_MAX: usize = 4 << 20;
