//! The Kinesis write-ahead stream: one Kinesis data stream per cluster, every ledger shard's
//! records in order on one Kinesis shard. The rules are written down in `docs/kinesis.md`.
//!
//! ## Layout
//! - **Routing.** Ledger shard `s` writes with partition key `saldo-shard-{s}` and an explicit
//!   hash key inside the hash range of one open Kinesis shard (read with ListShards at open,
//!   never assumed): open shard `s mod n` (sorted by starting hash key), at a fraction of the
//!   range given by the bit-reversed `s / n`, so that a later split halves the ledger shards.
//! - **Framing.** Kinesis record data = one codec byte ([`CODEC_ZSTD`] or [`CODEC_RAW`]) + the
//!   v1 record (see [`crate::record`]), zstd-compressed unless that does not help. Readers
//!   decompress and verify the record's CRC32C, LSNs and hash chain as for any backend.
//! - **Put loop.** One task per [`KinesisWal`] gathers the pending record of each ledger shard
//!   (at most one in flight per ledger shard: that is what keeps their order) into PutRecords
//!   calls of at most 500 records / 5 MiB, taking tokens from a per-Kinesis-shard bucket
//!   (1,000 records/s, 1 MiB/s), and retries only the failed entries of a partial failure with
//!   [`Backoff`]. `append` returns once its record is acknowledged.
//! - **Index.** Kinesis cannot seek by LSN. At open every Kinesis shard is scanned from
//!   TRIM_HORIZON (parents before children) and a compact per-ledger-shard index is kept:
//!   LSN range, hash, epoch, Kinesis shard and sequence number, no bodies. `read` fetches bodies
//!   with AT_SEQUENCE_NUMBER; `read` past the end and `tail` first continue the scan from the
//!   last sequence number seen, so records of other processes become visible.
//!
//! ## Reader rules (duplicates, fencing, corruption)
//! A record is decoded and checked against its ledger shard's index in this order: a record
//! that does not decode, or whose header names another shard than its partition key, is
//! corruption; a record of an older epoch than the newest seen for the shard is fenced and
//! ignored; a record identical (LSN range and hash) to one already indexed is a duplicate left
//! by a retried put and skipped; a record of a newer epoch that overlaps the tail replaces the
//! older epoch's suffix when it chains onto what precedes it; anything else must continue the
//! chain, or it is [`WalError::Corrupted`] with the Kinesis shard and sequence number as
//! location. A corrupt ledger shard stays corrupt (every call on it reports it); the others go
//! on.
//!
//! ## The shard count
//! The cluster's shard count is a stream tag, `saldo-shards-{n}` = `{n}` (tags stay for the
//! life of the stream; records expire with its retention). One key per count rather than one
//! key whose value is the count: tags have no conditional write, so a second first start with
//! another count would overwrite a single key unseen, while with a key per count the two
//! starts cannot both see only their own (see [`KinesisWal::claim_shard_count`]).
//!
//! ## Failure model
//! Throttling, 5xx, timeouts and lost answers are retried with bounded [`Backoff`]; then the
//! append fails with `Unavailable`. A put whose answer was lost may have been stored: the
//! ledger shard is then *in doubt* and its next `append` or `tail` first waits until no attempt
//! can still land ([`AWS_ATTEMPT_TIMEOUT`]), then rescans to learn what the stream holds.
//! Resharding the stream while a node runs is not followed: restart the node (it reads parents
//! before children at open).

use std::{
    cmp::Ordering as CmpOrdering,
    collections::{HashMap, VecDeque},
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use aws_sdk_kinesis::{
    config::http::HttpResponse,
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    operation::get_records::GetRecordsOutput,
    primitives::Blob,
    types::{PutRecordsRequestEntry, Shard, ShardIteratorType, StreamStatus},
    Client,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::{Tail, Wal, WalError};
use crate::{
    aws::{self, AwsSettings, Backoff, AWS_ATTEMPT_TIMEOUT},
    limits::{
        KINESIS_CATCH_UP_CALLS_MAX, KINESIS_GET_RECORDS_INTERVAL_MS, KINESIS_GET_RECORDS_MAX,
        KINESIS_LIST_TAGS_PAGE, KINESIS_PUT_PENDING_MAX, KINESIS_PUT_QUEUE_MAX,
        KINESIS_PUT_RECORDS_BYTES_MAX, KINESIS_PUT_RECORDS_MAX, KINESIS_READ_BYTES_MAX,
        KINESIS_READ_CALLS_MAX, KINESIS_RECORD_BYTES_MAX, KINESIS_SHARDS_MAX,
        KINESIS_SHARD_BYTES_PER_SEC, KINESIS_SHARD_RECORDS_PER_SEC,
        KINESIS_STREAM_ACTIVE_TIMEOUT_MS, KINESIS_STREAM_POLL_INTERVAL_MS, KINESIS_STREAM_TAGS_MAX,
        WAL_READ_RECORDS_MAX, WAL_RECORD_BYTES_MAX,
    },
    metrics::{MetricKind, MetricSample},
    record::{self, EncodedRecord, Lsn, Record, RecordHash},
};

/// Codec byte: the rest of the Kinesis record is the v1 record as it is.
pub const CODEC_RAW: u8 = 0;
/// Codec byte: the rest of the Kinesis record is the zstd-compressed v1 record.
pub const CODEC_ZSTD: u8 = 1;
/// Upper bounds (seconds) of the put latency histogram's buckets.
const PUT_LATENCY_BUCKETS_S: [f64; 7] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// Offset of the shard number in a v1 record header.
const HEADER_SHARD_OFFSET: usize = 8;
/// Offset of the owner epoch in a v1 record header.
const HEADER_EPOCH_OFFSET: usize = 12;
/// Steps a Kinesis shard's hash range is divided into when placing ledger shards in it.
const HASH_KEY_SLOTS: u128 = 1 << 16;

/// Prefix of the stream tag that records the cluster's shard count: `saldo-shards-4` = `4`.
pub const SHARD_COUNT_TAG_PREFIX: &str = "saldo-shards-";

/// Returns the partition key of ledger shard `shard` (`saldo-shard-{shard}`).
pub fn partition_key(shard: u32) -> String {
    format!("saldo-shard-{shard}")
}

/// Returns the ledger shard a partition key names, if it is one of saldo's.
pub fn shard_of_partition_key(key: &str) -> Option<u32> {
    key.strip_prefix("saldo-shard-")?.parse().ok()
}

/// Returns the Kinesis record data for a v1 record's bytes: a codec byte, then the record
/// zstd-compressed, or as it is when compression does not make it smaller.
pub fn frame(record_bytes: &[u8]) -> Result<Vec<u8>, WalError> {
    let compressed = aws::compress(record_bytes).map_err(|e| WalError::Unavailable(Box::new(e)))?;
    let (codec, body) = if compressed.len() < record_bytes.len() {
        (CODEC_ZSTD, &compressed[..])
    } else {
        (CODEC_RAW, record_bytes)
    };
    let mut data = Vec::with_capacity(1 + body.len());
    data.push(codec);
    data.extend_from_slice(body);
    Ok(data)
}

/// Returns the v1 record bytes framed by [`frame`], or why they cannot be unframed.
pub fn unframe(data: &[u8]) -> Result<Vec<u8>, String> {
    match data.split_first() {
        Some((&CODEC_ZSTD, body)) => aws::decompress(body, WAL_RECORD_BYTES_MAX)
            .map_err(|e| format!("zstd frame does not decompress: {e}")),
        Some((&CODEC_RAW, body)) => Ok(body.to_vec()),
        Some((codec, _)) => Err(format!("unknown codec byte {codec}")),
        None => Err("empty kinesis record".into()),
    }
}

/// Checks the Kinesis record limit, which the emulators do not enforce: data plus partition
/// key at most [`KINESIS_RECORD_BYTES_MAX`].
fn check_kinesis_record_size(
    data_bytes: usize,
    partition_key_bytes: usize,
) -> Result<(), WalError> {
    let size_bytes = data_bytes.saturating_add(partition_key_bytes);
    if size_bytes > KINESIS_RECORD_BYTES_MAX {
        return Err(WalError::RecordTooLarge {
            size_bytes,
            limit_bytes: KINESIS_RECORD_BYTES_MAX,
        });
    }
    Ok(())
}

/// Compares two Kinesis sequence numbers (decimal strings without leading zeros).
fn cmp_sequence_numbers(a: &str, b: &str) -> CmpOrdering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Reverses the low 16 bits: slots 0, 1, 2, 3 land at 0, 1/2, 1/4, 3/4 of a range.
fn bit_reverse_16(n: u32) -> u128 {
    u128::from((n as u16).reverse_bits())
}

fn unavailable(message: String) -> WalError {
    WalError::Unavailable(message.into())
}

// ---------------------------------------------------------------------------------------------
// Errors of the SDK and how they are retried.

/// What a failed call means for a retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Throttled: nothing was stored; retry after a backoff.
    Throttled,
    /// A transient failure; `ambiguous` when the request may have been carried out.
    Transient { ambiguous: bool },
    /// Retrying cannot help (validation, access denied, missing resource).
    Fatal,
}

/// Classifies an error code (whole call or one PutRecords entry) and HTTP status.
fn classify_code(code_opt: Option<&str>, status: u16) -> Failure {
    match code_opt {
        Some(
            "ProvisionedThroughputExceededException"
            | "KMSThrottlingException"
            | "ThrottlingException"
            | "LimitExceededException",
        ) => Failure::Throttled,
        // Per PutRecords entry, InternalFailure means that entry was not stored; for a whole
        // call (with a 5xx) we cannot know, so it counts as ambiguous.
        Some("InternalFailure" | "InternalFailureException" | "ServiceUnavailable")
        | Some("ServiceUnavailableException") => Failure::Transient {
            ambiguous: status >= 500,
        },
        _ if status == 429 => Failure::Throttled,
        _ if status >= 500 => Failure::Transient { ambiguous: true },
        _ => Failure::Fatal,
    }
}

/// Classifies an SDK error. Timeouts, connection failures and unreadable answers are
/// ambiguous: the request may have reached Kinesis.
fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Failure {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Failure::Transient { ambiguous: true }
        }
        SdkError::ServiceError(ctx) => classify_code(err.code(), ctx.raw().status().as_u16()),
        _ => Failure::Fatal,
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// Counters of one Kinesis shard.
#[derive(Default)]
struct ShardCounters {
    /// Records acknowledged on this shard by this process.
    records: AtomicU64,
    /// Events (LSNs) in those records.
    events: AtomicU64,
    /// Bytes stored (framed data + partition key).
    bytes_stored: AtomicU64,
}

/// The backend's counters (lock-free; read by [`Wal::metrics`]).
#[derive(Default)]
struct Metrics {
    put_calls: AtomicU64,
    put_latency_micros_sum: AtomicU64,
    put_latency_buckets: [AtomicU64; PUT_LATENCY_BUCKETS_S.len()],
    /// Attempts after the first (puts and reads).
    retries: AtomicU64,
    /// Throttling answers (whole calls and single PutRecords entries).
    throttles: AtomicU64,
    /// Appends that failed after their attempts or at once.
    put_failures: AtomicU64,
    bytes_raw: AtomicU64,
    bytes_stored: AtomicU64,
    get_records_calls: AtomicU64,
    duplicates_skipped: AtomicU64,
    fenced_skipped: AtomicU64,
    foreign_skipped: AtomicU64,
    in_flight: AtomicU64,
}

impl Metrics {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn observe_put_latency(&self, elapsed: Duration) {
        Metrics::add(&self.put_calls, 1);
        Metrics::add(
            &self.put_latency_micros_sum,
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        );
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in PUT_LATENCY_BUCKETS_S.iter().zip(&self.put_latency_buckets) {
            if seconds <= *bound {
                Metrics::add(bucket, 1);
            }
        }
    }
}

/// Decrements the in-flight gauge when an append ends, however it ends.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a AtomicU64) -> InFlight<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Kinesis shards, token buckets, the index.

/// One Kinesis shard as ListShards described it at open.
struct KinesisShard {
    id: String,
    /// Parent and adjacent parent (when still listed): read to their end before this one.
    parents: Vec<usize>,
    starting_hash_key: u128,
    ending_hash_key: u128,
    /// Open for writes (no ending sequence number).
    open: bool,
    /// When the next GetRecords call on this shard may go (AWS: 5 calls/s per shard).
    next_get_at: tokio::sync::Mutex<Instant>,
    /// How far this process has scanned the shard.
    cursor: tokio::sync::Mutex<ScanCursor>,
    counters: ShardCounters,
}

/// How far a Kinesis shard has been scanned into the index.
#[derive(Default)]
struct ScanCursor {
    /// Sequence number of the last record ingested; `None` = not started (TRIM_HORIZON).
    last_seq_opt: Option<String>,
    /// A closed shard read to its end: nothing more will come.
    finished: bool,
}

/// Client-side rate limit of one Kinesis shard: records and bytes per second, with a burst of
/// one second.
struct TokenBucket {
    records: f64,
    bytes: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    fn new(now: Instant) -> TokenBucket {
        TokenBucket {
            records: f64::from(KINESIS_SHARD_RECORDS_PER_SEC),
            bytes: f64::from(KINESIS_SHARD_BYTES_PER_SEC),
            refilled_at: now,
        }
    }

    /// Takes one record of `bytes`, or returns when enough tokens will be there.
    fn take(&mut self, bytes: usize, now: Instant) -> Result<(), Instant> {
        let (records_per_s, bytes_per_s) = (
            f64::from(KINESIS_SHARD_RECORDS_PER_SEC),
            f64::from(KINESIS_SHARD_BYTES_PER_SEC),
        );
        let elapsed_s = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.records = (self.records + elapsed_s * records_per_s).min(records_per_s);
        self.bytes = (self.bytes + elapsed_s * bytes_per_s).min(bytes_per_s);
        self.refilled_at = now;
        let bytes = bytes as f64;
        if self.records >= 1.0 && self.bytes >= bytes {
            self.records -= 1.0;
            self.bytes -= bytes;
            return Ok(());
        }
        let wait_s = ((1.0 - self.records) / records_per_s).max((bytes - self.bytes) / bytes_per_s);
        Err(now + Duration::from_secs_f64(wait_s.max(0.0)))
    }
}

/// Where one record of a ledger shard is (no body).
#[derive(Clone, Debug)]
struct IndexEntry {
    first_lsn: Lsn,
    last_lsn: Lsn,
    hash: RecordHash,
    epoch: u64,
    /// Index of the Kinesis shard in [`Inner::shards`].
    kshard: usize,
    sequence_number: Box<str>,
}

/// What this process knows of one ledger shard's stream.
#[derive(Default)]
struct LedgerIndex {
    /// Records in order (those covered by `prune` dropped).
    entries: VecDeque<IndexEntry>,
    tail_opt: Option<Tail>,
    /// Newest owner epoch seen; older records are fenced.
    epoch_max: u64,
    /// Records at or below this LSN were dropped from the index by `prune`.
    pruned_through_lsn: Lsn,
    /// Set at the first break of continuity: `(location, reason)`.
    corrupt_opt: Option<(String, String)>,
}

/// What [`LedgerIndex::accept`] did with a record.
#[derive(Debug, PartialEq, Eq)]
enum Accepted {
    Appended,
    Duplicate,
    Fenced,
    /// A newer epoch replaced `n` records of an older one.
    Replaced(usize),
}

impl LedgerIndex {
    fn corrupted(&self, shard: u32) -> Option<WalError> {
        self.corrupt_opt
            .as_ref()
            .map(|(location, reason)| WalError::Corrupted {
                shard,
                location: location.clone(),
                reason: reason.clone(),
            })
    }

    fn is_known(&self, entry: &IndexEntry) -> bool {
        if entry.last_lsn <= self.pruned_through_lsn {
            return true;
        }
        let i = self
            .entries
            .partition_point(|e| e.first_lsn < entry.first_lsn);
        self.entries.get(i).is_some_and(|e| {
            (e.first_lsn, e.last_lsn, e.hash) == (entry.first_lsn, entry.last_lsn, entry.hash)
        })
    }

    /// Applies the reader rules to a verified record `entry` with previous hash `prev_hash`.
    fn accept(&mut self, entry: IndexEntry, prev_hash: &RecordHash) -> Result<Accepted, String> {
        if entry.epoch < self.epoch_max {
            return Ok(Accepted::Fenced);
        }
        if self.is_known(&entry) {
            return Ok(Accepted::Duplicate);
        }
        let mut replaced = 0;
        if let Some(tail) = self.tail_opt {
            if entry.first_lsn <= tail.last_lsn {
                // Only a newer epoch may take over an older epoch's suffix, and only whole
                // records that are still indexed.
                let keep = self
                    .entries
                    .partition_point(|e| e.last_lsn < entry.first_lsn);
                let suffix_older = self.entries.range(keep..).all(|e| e.epoch < entry.epoch);
                let starts_on_boundary = self
                    .entries
                    .get(keep)
                    .is_some_and(|e| e.first_lsn == entry.first_lsn);
                if !(suffix_older && starts_on_boundary) {
                    return Err(format!(
                        "lsns {}..={} overlap the stream (tail {}) with a different record",
                        entry.first_lsn, entry.last_lsn, tail.last_lsn
                    ));
                }
                replaced = self.entries.len() - keep;
                self.entries.truncate(keep);
                self.tail_opt = self.entries.back().map(|e| Tail {
                    last_lsn: e.last_lsn,
                    hash: e.hash,
                });
                if self.tail_opt.is_none() && entry.first_lsn > self.pruned_through_lsn + 1 {
                    return Err("newer epoch replaces records that are no longer indexed".into());
                }
            }
        }
        let prev_opt = self.tail_opt.map(|t| (t.last_lsn, t.hash));
        let probe = Record {
            shard: 0,
            epoch: entry.epoch,
            first_lsn: entry.first_lsn,
            last_lsn: entry.last_lsn,
            prev_hash: *prev_hash,
            hash: entry.hash,
            payload: Vec::new(),
        };
        record::check_follows(prev_opt, &probe).map_err(str::to_string)?;
        // The first record seen may start anywhere: retention trims the stream's beginning.
        self.epoch_max = self.epoch_max.max(entry.epoch);
        self.tail_opt = Some(Tail {
            last_lsn: entry.last_lsn,
            hash: entry.hash,
        });
        self.entries.push_back(entry);
        Ok(if replaced > 0 {
            Accepted::Replaced(replaced)
        } else {
            Accepted::Appended
        })
    }
}

/// Per ledger shard state of the writer side.
#[derive(Default)]
struct LedgerWriter {
    /// Held for the whole of an append: at most one record in flight per ledger shard, which
    /// is what keeps the shard's order on Kinesis.
    append_lock: tokio::sync::Mutex<()>,
    /// Set when a put may have been stored without this process knowing (lost answer,
    /// cancelled append): when. Resolved by a rescan once no attempt can still land.
    doubt_since_opt: Mutex<Option<Instant>>,
}

/// Sets the ledger shard in doubt if dropped armed (an append cancelled or failed ambiguously
/// after its record was handed to the put loop).
struct DoubtGuard<'a> {
    writer: &'a LedgerWriter,
    armed: bool,
}

impl Drop for DoubtGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            *self.writer.doubt_since_opt.lock() = Some(Instant::now());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The put loop.

/// One record for the put loop.
struct PutRequest {
    kshard: usize,
    partition_key: String,
    explicit_hash_key: String,
    data: Blob,
    /// Data + partition key: what counts against the Kinesis limits.
    size_bytes: usize,
    reply: oneshot::Sender<Result<PutAck, PutFailure>>,
}

/// Where Kinesis stored a record.
struct PutAck {
    kinesis_shard_id: String,
    sequence_number: String,
}

/// Why a put failed, and whether the record may be stored nonetheless.
struct PutFailure {
    error: WalError,
    maybe_stored: bool,
}

/// A request in the put loop with its retry state.
struct Pending {
    request: PutRequest,
    backoff: Backoff,
    not_before: Instant,
    maybe_stored: bool,
}

/// Moves the records that may go now (retry delay over, tokens available, call limits not
/// reached) from `pending` into a batch; returns it and when to look again otherwise.
fn pick_batch(
    pending: &mut Vec<Pending>,
    buckets: &mut [TokenBucket],
    now: Instant,
) -> (Vec<Pending>, Option<Instant>) {
    let mut batch = Vec::new();
    let mut batch_bytes = 0usize;
    let mut wake_at_opt: Option<Instant> = None;
    let mut blocked = vec![false; buckets.len()];
    let mut keep = Vec::with_capacity(pending.len());
    let mut wake = |at: Instant| wake_at_opt = Some(wake_at_opt.map_or(at, |w: Instant| w.min(at)));
    for p in pending.drain(..) {
        if p.request.reply.is_closed() {
            continue; // The append was cancelled: do not send (again); its shard is in doubt.
        }
        if p.not_before > now {
            wake(p.not_before);
            keep.push(p);
            continue;
        }
        let size = p.request.size_bytes;
        if batch.len() >= KINESIS_PUT_RECORDS_MAX
            || batch_bytes + size > KINESIS_PUT_RECORDS_BYTES_MAX
            || blocked[p.request.kshard]
        {
            keep.push(p);
            continue;
        }
        match buckets[p.request.kshard].take(size, now) {
            Ok(()) => {
                batch_bytes += size;
                batch.push(p);
            }
            Err(ready_at) => {
                // Later records of this Kinesis shard do not overtake this one.
                blocked[p.request.kshard] = true;
                wake(ready_at);
                keep.push(p);
            }
        }
    }
    *pending = keep;
    (batch, wake_at_opt)
}

async fn put_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<PutRequest>) {
    let mut buckets: Vec<TokenBucket> = inner
        .shards
        .iter()
        .map(|_| TokenBucket::new(Instant::now()))
        .collect();
    let mut pending: Vec<Pending> = Vec::new();
    let mut closed = false;
    let new_pending = |request| Pending {
        request,
        backoff: Backoff::default(),
        not_before: Instant::now(),
        maybe_stored: false,
    };
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(request) => pending.push(new_pending(request)),
                None => return,
            }
        }
        while !closed && pending.len() < KINESIS_PUT_PENDING_MAX {
            match rx.try_recv() {
                Ok(request) => pending.push(new_pending(request)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
            }
        }
        let now = Instant::now();
        let (batch, wake_at_opt) = pick_batch(&mut pending, &mut buckets, now);
        if batch.is_empty() {
            let Some(wake_at) = wake_at_opt else {
                continue; // Only cancelled requests were left; they are gone now.
            };
            let can_take = !closed && pending.len() < KINESIS_PUT_PENDING_MAX;
            tokio::select! {
                () = tokio::time::sleep_until(wake_at.into()) => {}
                request_opt = rx.recv(), if can_take => match request_opt {
                    Some(request) => pending.push(new_pending(request)),
                    None => closed = true,
                },
            }
            continue;
        }
        inner.put_batch(batch, &mut pending).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The backend.

/// State shared by the backend and its put loop.
struct Inner {
    client: Client,
    stream_name: String,
    /// Every listed shard (closed ones too, for reading).
    shards: Vec<KinesisShard>,
    /// Kinesis shard ID → index in `shards`.
    shard_by_id: HashMap<String, usize>,
    /// Open shards, sorted by starting hash key: the targets of writes.
    open_shards: Vec<usize>,
    /// Per ledger shard: what the stream holds.
    index: Mutex<HashMap<u32, LedgerIndex>>,
    metrics: Metrics,
}

/// The Kinesis write-ahead stream backend (see the module docs and `docs/kinesis.md`).
pub struct KinesisWal {
    inner: Arc<Inner>,
    /// To the put loop; bounded ([`KINESIS_PUT_QUEUE_MAX`]): a full queue makes `append` wait.
    put_tx: mpsc::Sender<PutRequest>,
    /// Per ledger shard writer state (created on first use; ledger shards are a fixed set).
    writers: Mutex<HashMap<u32, Arc<LedgerWriter>>>,
}

impl std::fmt::Debug for KinesisWal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisWal")
            .field("stream_name", &self.inner.stream_name)
            .field("num_shards", &self.inner.shards.len())
            .finish()
    }
}

/// Retries `call` with [`Backoff`] while it fails in a retryable way; returns the last error
/// otherwise.
async fn with_retry<T, E, F, Fut>(
    metrics: &Metrics,
    mut call: F,
) -> Result<T, SdkError<E, HttpResponse>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    let mut backoff = Backoff::default();
    loop {
        let err = match call().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let failure = classify(&err);
        if failure == Failure::Fatal {
            return Err(err);
        }
        if failure == Failure::Throttled {
            Metrics::add(&metrics.throttles, 1);
        }
        let Some(delay) = backoff.next_delay() else {
            return Err(err);
        };
        Metrics::add(&metrics.retries, 1);
        tracing::debug!(error = %DisplayErrorContext(&err), ?delay, "retrying kinesis call");
        tokio::time::sleep(delay).await;
    }
}

fn sdk_error<E>(what: &str, stream_name: &str, err: SdkError<E, HttpResponse>) -> WalError
where
    E: std::error::Error + 'static,
{
    unavailable(format!(
        "kinesis {what} on stream {stream_name}: {}",
        DisplayErrorContext(&err)
    ))
}

impl KinesisWal {
    /// Opens the stream `stream_name`: creates it with `create_shards` shards when it is missing
    /// and `settings.create_resources` is set (and waits until it is ACTIVE), reads its shards
    /// with ListShards, scans every shard from TRIM_HORIZON into the index (parents before
    /// children), and starts the put loop. Must be called inside a tokio runtime.
    pub async fn open(
        settings: &AwsSettings,
        stream_name: &str,
        create_shards: u32,
    ) -> Result<KinesisWal, WalError> {
        assert!(create_shards >= 1, "a stream needs at least one shard");
        let client = Client::new(&aws::sdk_config(settings).await);
        let metrics = Metrics::default();
        ensure_stream(
            &client,
            &metrics,
            stream_name,
            settings.create_resources,
            create_shards,
        )
        .await?;
        let listed = list_shards(&client, &metrics, stream_name).await?;
        let shards = build_shards(stream_name, &listed)?;
        let shard_by_id: HashMap<String, usize> = shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        let mut open_shards: Vec<usize> = (0..shards.len()).filter(|&i| shards[i].open).collect();
        open_shards.sort_by_key(|&i| shards[i].starting_hash_key);
        if open_shards.is_empty() {
            return Err(unavailable(format!(
                "kinesis stream {stream_name} has no open shard"
            )));
        }
        let inner = Arc::new(Inner {
            client,
            stream_name: stream_name.to_string(),
            shards,
            shard_by_id,
            open_shards,
            index: Mutex::new(HashMap::new()),
            metrics,
        });
        for k in 0..inner.shards.len() {
            inner.catch_up(k).await?;
        }
        let (put_tx, put_rx) = mpsc::channel(KINESIS_PUT_QUEUE_MAX);
        tokio::spawn(put_loop(inner.clone(), put_rx));
        tracing::info!(
            stream = stream_name,
            num_shards = inner.shards.len(),
            num_open_shards = inner.open_shards.len(),
            "kinesis write-ahead stream open"
        );
        Ok(KinesisWal {
            inner,
            put_tx,
            writers: Mutex::new(HashMap::new()),
        })
    }

    /// Returns the Kinesis shard ID ledger shard `shard` writes to and the explicit hash key
    /// it uses (tools and tests that write beside saldo use the same).
    pub fn route(&self, shard: u32) -> (String, String) {
        let (k, key) = self.inner.route(shard);
        (self.inner.shards[k].id.clone(), key)
    }

    /// Returns the name of the stream.
    pub fn stream_name(&self) -> &str {
        &self.inner.stream_name
    }

    /// Returns the shard counts the stream's tags record (sorted; more than one only after two
    /// first starts with different counts raced, or a hand-made tag).
    async fn shard_count_tags(&self) -> Result<Vec<u32>, WalError> {
        let (client, stream_name) = (&self.inner.client, &self.inner.stream_name);
        let mut counts = Vec::new();
        let mut start_opt: Option<String> = None;
        // One more page than the tags can fill: a bound on the loop, never reached.
        for _ in 0..=KINESIS_STREAM_TAGS_MAX / KINESIS_LIST_TAGS_PAGE {
            let out = with_retry(&self.inner.metrics, || {
                let call = client
                    .list_tags_for_stream()
                    .stream_name(stream_name)
                    .limit(KINESIS_LIST_TAGS_PAGE as i32);
                match &start_opt {
                    Some(key) => call.exclusive_start_tag_key(key.clone()),
                    None => call,
                }
                .send()
            })
            .await
            .map_err(|e| sdk_error("ListTagsForStream", stream_name, e))?;
            counts.extend(out.tags().iter().filter_map(|tag| {
                tag.key()
                    .strip_prefix(SHARD_COUNT_TAG_PREFIX)?
                    .parse::<u32>()
                    .ok()
            }));
            match out.tags().last() {
                Some(last) if out.has_more_tags() => start_opt = Some(last.key().to_string()),
                _ => break,
            }
        }
        counts.sort_unstable();
        counts.dedup();
        Ok(counts)
    }

    /// Adds (`add`) or removes the shard count tag of `num_shards`.
    async fn set_shard_count_tag(&self, num_shards: u32, add: bool) -> Result<(), WalError> {
        let (client, stream_name) = (&self.inner.client, &self.inner.stream_name);
        let key = format!("{SHARD_COUNT_TAG_PREFIX}{num_shards}");
        if add {
            with_retry(&self.inner.metrics, || {
                client
                    .add_tags_to_stream()
                    .stream_name(stream_name)
                    .tags(key.clone(), num_shards.to_string())
                    .send()
            })
            .await
            .map_err(|e| sdk_error("AddTagsToStream", stream_name, e))?;
        } else {
            with_retry(&self.inner.metrics, || {
                client
                    .remove_tags_from_stream()
                    .stream_name(stream_name)
                    .tag_keys(key.clone())
                    .send()
            })
            .await
            .map_err(|e| sdk_error("RemoveTagsFromStream", stream_name, e))?;
        }
        Ok(())
    }

    fn writer(&self, shard: u32) -> Arc<LedgerWriter> {
        self.writers.lock().entry(shard).or_default().clone()
    }

    /// Waits until an in-doubt put can no longer land, then rescans so the index holds what
    /// the stream holds; clears the doubt.
    async fn resolve_doubt(&self, shard: u32, writer: &LedgerWriter) -> Result<(), WalError> {
        let Some(since) = *writer.doubt_since_opt.lock() else {
            return Ok(());
        };
        let settled_at = since + AWS_ATTEMPT_TIMEOUT + AWS_ATTEMPT_TIMEOUT / 2;
        tracing::warn!(
            shard,
            "kinesis put in doubt: waiting, then rescanning the stream"
        );
        tokio::time::sleep_until(settled_at.into()).await;
        let (k, _) = self.inner.route(shard);
        self.inner.catch_up(k).await?;
        *writer.doubt_since_opt.lock() = None;
        Ok(())
    }

    async fn append_inner(
        &self,
        shard: u32,
        record: EncodedRecord,
        writer: &LedgerWriter,
    ) -> Result<(), WalError> {
        let epoch = header_u64(&record.bytes, HEADER_EPOCH_OFFSET)
            .ok_or_else(|| unavailable("record shorter than its header".into()))?;
        if header_u32(&record.bytes, HEADER_SHARD_OFFSET) != Some(shard) {
            return Err(WalError::OutOfOrder {
                shard,
                reason: "record header names another shard",
            });
        }
        self.inner.check_append(shard, &record, epoch)?;
        let partition_key = partition_key(shard);
        let (kshard, explicit_hash_key) = self.inner.route(shard);
        let raw_bytes = record.bytes.len();
        let data = if raw_bytes > 64 * 1024 {
            let bytes = record.bytes.clone();
            tokio::task::spawn_blocking(move || frame(&bytes))
                .await
                .map_err(|e| WalError::Unavailable(Box::new(e)))??
        } else {
            frame(&record.bytes)?
        };
        check_kinesis_record_size(data.len(), partition_key.len())?;
        let size_bytes = data.len() + partition_key.len();
        let (reply, reply_rx) = oneshot::channel();
        let request = PutRequest {
            kshard,
            partition_key,
            explicit_hash_key,
            data: Blob::new(data),
            size_bytes,
            reply,
        };
        let _in_flight = InFlight::new(&self.inner.metrics.in_flight);
        let mut doubt = DoubtGuard {
            writer,
            armed: false,
        };
        // Waiting here for room in the queue is the back-pressure of a lagging stream.
        self.put_tx
            .send(request)
            .await
            .map_err(|_| unavailable("kinesis put loop stopped".into()))?;
        doubt.armed = true; // From here a cancelled append leaves the outcome unknown.
        let outcome = reply_rx
            .await
            .map_err(|_| unavailable("kinesis put loop stopped".into()))?;
        match outcome {
            Ok(ack) => {
                doubt.armed = false;
                Metrics::add(&self.inner.metrics.bytes_raw, raw_bytes as u64);
                Metrics::add(&self.inner.metrics.bytes_stored, size_bytes as u64);
                self.inner
                    .accept_own(shard, &record, epoch, size_bytes, ack)
            }
            Err(failure) => {
                doubt.armed = failure.maybe_stored;
                Metrics::add(&self.inner.metrics.put_failures, 1);
                Err(failure.error)
            }
        }
    }
}

fn header_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn header_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

/// Makes sure the stream exists and is ACTIVE (or UPDATING, which still takes reads and
/// writes), creating it when allowed.
async fn ensure_stream(
    client: &Client,
    metrics: &Metrics,
    stream_name: &str,
    create: bool,
    create_shards: u32,
) -> Result<(), WalError> {
    let deadline = Instant::now() + Duration::from_millis(KINESIS_STREAM_ACTIVE_TIMEOUT_MS);
    let mut created = false;
    loop {
        let described = with_retry(metrics, || {
            client
                .describe_stream_summary()
                .stream_name(stream_name)
                .send()
        })
        .await;
        match described {
            Ok(out) => {
                let status = out
                    .stream_description_summary()
                    .map(|s| s.stream_status().clone());
                match status {
                    Some(StreamStatus::Active | StreamStatus::Updating) => return Ok(()),
                    Some(StreamStatus::Deleting) => {
                        return Err(unavailable(format!(
                            "kinesis stream {stream_name} is being deleted"
                        )))
                    }
                    _ => {} // CREATING: wait.
                }
            }
            Err(err) if err.code() == Some("ResourceNotFoundException") => {
                if !create {
                    return Err(unavailable(format!(
                        "kinesis stream {stream_name} does not exist: create it, or start with \
                         --create-resources to let saldo create it"
                    )));
                }
                if !created {
                    let shard_count = i32::try_from(create_shards).unwrap_or(i32::MAX);
                    let result = with_retry(metrics, || {
                        client
                            .create_stream()
                            .stream_name(stream_name)
                            .shard_count(shard_count)
                            .send()
                    })
                    .await;
                    match result {
                        Ok(_) => tracing::info!(
                            stream = stream_name,
                            shard_count,
                            "created kinesis stream"
                        ),
                        Err(err) if err.code() == Some("ResourceInUseException") => {}
                        Err(err) => return Err(sdk_error("CreateStream", stream_name, err)),
                    }
                    created = true;
                }
            }
            Err(err) => return Err(sdk_error("DescribeStreamSummary", stream_name, err)),
        }
        if Instant::now() > deadline {
            return Err(unavailable(format!(
                "kinesis stream {stream_name} not ACTIVE after {KINESIS_STREAM_ACTIVE_TIMEOUT_MS} ms"
            )));
        }
        tokio::time::sleep(Duration::from_millis(KINESIS_STREAM_POLL_INTERVAL_MS)).await;
    }
}

/// Lists every shard of the stream (open and closed), following NextToken.
async fn list_shards(
    client: &Client,
    metrics: &Metrics,
    stream_name: &str,
) -> Result<Vec<Shard>, WalError> {
    let mut shards = Vec::new();
    let mut next_token_opt: Option<String> = None;
    loop {
        let out = with_retry(metrics, || {
            let call = client.list_shards();
            match &next_token_opt {
                // With a token, the stream name must not be given.
                Some(token) => call.next_token(token.clone()),
                None => call.stream_name(stream_name),
            }
            .send()
        })
        .await
        .map_err(|e| sdk_error("ListShards", stream_name, e))?;
        shards.extend_from_slice(out.shards());
        if shards.len() > KINESIS_SHARDS_MAX {
            return Err(unavailable(format!(
                "kinesis stream {stream_name} has more than {KINESIS_SHARDS_MAX} shards"
            )));
        }
        match out.next_token() {
            Some(token) => next_token_opt = Some(token.to_string()),
            None => return Ok(shards),
        }
    }
}

fn build_shards(stream_name: &str, listed: &[Shard]) -> Result<Vec<KinesisShard>, WalError> {
    let ids: HashMap<&str, usize> = listed
        .iter()
        .enumerate()
        .map(|(i, s)| (s.shard_id(), i))
        .collect();
    let mut shards = Vec::with_capacity(listed.len());
    for s in listed {
        let range = s.hash_key_range().ok_or_else(|| {
            unavailable(format!(
                "kinesis shard {} of {stream_name} has no hash key range",
                s.shard_id()
            ))
        })?;
        let parse = |key: &str| {
            key.parse::<u128>().map_err(|_| {
                unavailable(format!(
                    "kinesis shard {} has a bad hash key {key}",
                    s.shard_id()
                ))
            })
        };
        let parents = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
            .into_iter()
            .flatten()
            .filter_map(|id| ids.get(id).copied())
            .collect();
        shards.push(KinesisShard {
            id: s.shard_id().to_string(),
            parents,
            starting_hash_key: parse(range.starting_hash_key())?,
            ending_hash_key: parse(range.ending_hash_key())?,
            open: s
                .sequence_number_range()
                .is_none_or(|r| r.ending_sequence_number().is_none()),
            next_get_at: tokio::sync::Mutex::new(Instant::now()),
            cursor: tokio::sync::Mutex::new(ScanCursor::default()),
            counters: ShardCounters::default(),
        });
    }
    Ok(shards)
}

impl Inner {
    /// Returns the Kinesis shard (index) and explicit hash key of ledger shard `shard`.
    fn route(&self, shard: u32) -> (usize, String) {
        let n = u32::try_from(self.open_shards.len()).unwrap_or(u32::MAX);
        let k = self.open_shards[(shard % n) as usize];
        let s = &self.shards[k];
        let span = s.ending_hash_key - s.starting_hash_key;
        let key = s.starting_hash_key + span / HASH_KEY_SLOTS * bit_reverse_16(shard / n);
        (k, key.to_string())
    }

    fn location(&self, kshard: usize, sequence_number: &str) -> String {
        format!(
            "kinesis:{}/{} sequence number {sequence_number}",
            self.stream_name, self.shards[kshard].id
        )
    }

    /// Checks that `record` continues the shard's stream as this process knows it.
    fn check_append(&self, shard: u32, record: &EncodedRecord, epoch: u64) -> Result<(), WalError> {
        let index = self.index.lock();
        let Some(ledger) = index.get(&shard) else {
            // Nothing of this shard in the stream (new, or trimmed by retention after a
            // snapshot): the record starts it.
            return Ok(());
        };
        if let Some(err) = ledger.corrupted(shard) {
            return Err(err);
        }
        let Some(tail) = ledger.tail_opt else {
            return Ok(());
        };
        if epoch < ledger.epoch_max {
            return Err(WalError::OutOfOrder {
                shard,
                reason: "epoch older than the stream's newest: this writer is fenced",
            });
        }
        if record.first_lsn != tail.last_lsn + 1 {
            return Err(WalError::OutOfOrder {
                shard,
                reason: "first lsn does not follow the tail",
            });
        }
        if record.prev_hash != tail.hash {
            return Err(WalError::OutOfOrder {
                shard,
                reason: "prev hash is not the tail's hash",
            });
        }
        Ok(())
    }

    /// Records an acknowledged append of this process in the index.
    fn accept_own(
        &self,
        shard: u32,
        record: &EncodedRecord,
        epoch: u64,
        size_bytes: usize,
        ack: PutAck,
    ) -> Result<(), WalError> {
        let Some(&kshard) = self.shard_by_id.get(&ack.kinesis_shard_id) else {
            return Err(unavailable(format!(
                "kinesis stream {} was resharded while this node ran (record stored on unknown \
                 shard {}): restart to re-read its shards",
                self.stream_name, ack.kinesis_shard_id
            )));
        };
        let counters = &self.shards[kshard].counters;
        Metrics::add(&counters.records, 1);
        Metrics::add(&counters.events, record.last_lsn - record.first_lsn + 1);
        Metrics::add(&counters.bytes_stored, size_bytes as u64);
        let entry = IndexEntry {
            first_lsn: record.first_lsn,
            last_lsn: record.last_lsn,
            hash: record.hash,
            epoch,
            kshard,
            sequence_number: ack.sequence_number.into(),
        };
        let location = self.location(kshard, &entry.sequence_number);
        let mut index = self.index.lock();
        let ledger = index.entry(shard).or_default();
        match ledger.accept(entry, &record.prev_hash) {
            Ok(Accepted::Fenced) => Err(WalError::OutOfOrder {
                shard,
                reason: "a newer owner epoch wrote this shard meanwhile: this writer is fenced",
            }),
            Ok(_) => Ok(()),
            Err(reason) => {
                ledger.corrupt_opt = Some((location, reason));
                Err(ledger.corrupted(shard).expect("just set"))
            }
        }
    }

    /// Applies the reader rules to one record read from Kinesis shard `kshard`.
    fn ingest(
        &self,
        kshard: usize,
        sequence_number: &str,
        partition_key_opt: Option<&str>,
        data: &[u8],
    ) {
        let Some(shard) = partition_key_opt.and_then(shard_of_partition_key) else {
            Metrics::add(&self.metrics.foreign_skipped, 1);
            tracing::warn!(
                location = %self.location(kshard, sequence_number),
                partition_key = ?partition_key_opt,
                "skipping a kinesis record that is not saldo's"
            );
            return;
        };
        let decoded = unframe(data).and_then(|bytes| {
            let (rec, len) = record::decode(&bytes).map_err(|e| e.to_string())?;
            if len != bytes.len() {
                return Err(format!("{} bytes after the record", bytes.len() - len));
            }
            if rec.shard != shard {
                return Err(format!(
                    "record of shard {} under the partition key of {shard}",
                    rec.shard
                ));
            }
            Ok(rec)
        });
        let mut index = self.index.lock();
        let ledger = index.entry(shard).or_default();
        if ledger.corrupt_opt.is_some() {
            return; // Reported already; nothing after a break can be trusted.
        }
        let result = decoded.and_then(|rec| {
            let entry = IndexEntry {
                first_lsn: rec.first_lsn,
                last_lsn: rec.last_lsn,
                hash: rec.hash,
                epoch: rec.epoch,
                kshard,
                sequence_number: sequence_number.into(),
            };
            ledger.accept(entry, &rec.prev_hash)
        });
        match result {
            Ok(Accepted::Appended) => {}
            Ok(Accepted::Duplicate) => Metrics::add(&self.metrics.duplicates_skipped, 1),
            Ok(Accepted::Fenced) => Metrics::add(&self.metrics.fenced_skipped, 1),
            Ok(Accepted::Replaced(n)) => tracing::warn!(
                shard,
                replaced = n,
                location = %self.location(kshard, sequence_number),
                "a newer owner epoch replaced records of a fenced writer"
            ),
            Err(reason) => {
                let location = self.location(kshard, sequence_number);
                tracing::error!(shard, %location, %reason, "kinesis stream corrupted");
                ledger.corrupt_opt = Some((location, reason));
            }
        }
    }

    /// Waits for this Kinesis shard's GetRecords pace (AWS: 5 calls/s per shard).
    async fn pace(&self, kshard: usize) {
        let mut next_get_at = self.shards[kshard].next_get_at.lock().await;
        tokio::time::sleep_until((*next_get_at).into()).await;
        *next_get_at = Instant::now() + Duration::from_millis(KINESIS_GET_RECORDS_INTERVAL_MS);
    }

    async fn shard_iterator(
        &self,
        kshard: usize,
        kind: ShardIteratorType,
        sequence_number_opt: Option<&str>,
    ) -> Result<Option<String>, WalError> {
        let out = with_retry(&self.metrics, || {
            self.client
                .get_shard_iterator()
                .stream_name(&self.stream_name)
                .shard_id(&self.shards[kshard].id)
                .shard_iterator_type(kind.clone())
                .set_starting_sequence_number(sequence_number_opt.map(str::to_string))
                .send()
        })
        .await
        .map_err(|e| sdk_error("GetShardIterator", &self.stream_name, e))?;
        Ok(out.shard_iterator().map(str::to_string))
    }

    async fn get_records(
        &self,
        kshard: usize,
        iterator: &str,
    ) -> Result<GetRecordsOutput, WalError> {
        with_retry(&self.metrics, || async {
            self.pace(kshard).await;
            Metrics::add(&self.metrics.get_records_calls, 1);
            self.client
                .get_records()
                .shard_iterator(iterator)
                .limit(KINESIS_GET_RECORDS_MAX as i32)
                .send()
                .await
        })
        .await
        .map_err(|e| sdk_error("GetRecords", &self.stream_name, e))
    }

    /// Continues the scan of Kinesis shard `kshard` (its ancestors first) into the index.
    async fn catch_up(&self, kshard: usize) -> Result<(), WalError> {
        // Ancestors in order, oldest first, bounded by the number of shards.
        let mut chain = vec![kshard];
        let mut i = 0;
        while i < chain.len() && chain.len() <= self.shards.len() {
            for &p in &self.shards[chain[i]].parents {
                if !chain.contains(&p) {
                    chain.push(p);
                }
            }
            i += 1;
        }
        for &k in chain.iter().rev() {
            let finished = self.catch_up_one(k).await?;
            if k != kshard && !finished {
                return Ok(()); // A parent is not read to its end yet: children must wait.
            }
        }
        Ok(())
    }

    /// Scans one Kinesis shard from where the last scan stopped; returns whether the shard is
    /// closed and read to its end.
    async fn catch_up_one(&self, kshard: usize) -> Result<bool, WalError> {
        let mut cursor = self.shards[kshard].cursor.lock().await;
        if cursor.finished {
            return Ok(true);
        }
        let mut iterator_opt = match &cursor.last_seq_opt {
            Some(seq) => {
                self.shard_iterator(kshard, ShardIteratorType::AfterSequenceNumber, Some(seq))
                    .await?
            }
            None => {
                self.shard_iterator(kshard, ShardIteratorType::TrimHorizon, None)
                    .await?
            }
        };
        for _ in 0..KINESIS_CATCH_UP_CALLS_MAX {
            let Some(iterator) = iterator_opt else {
                cursor.finished = true;
                return Ok(true);
            };
            let out = self.get_records(kshard, &iterator).await?;
            for r in out.records() {
                self.ingest(
                    kshard,
                    r.sequence_number(),
                    r.partition_key(),
                    r.data().as_ref(),
                );
                cursor.last_seq_opt = Some(r.sequence_number().to_string());
            }
            iterator_opt = out.next_shard_iterator().map(str::to_string);
            let caught_up = out.millis_behind_latest() == Some(0)
                && out.records().len() < KINESIS_GET_RECORDS_MAX;
            if iterator_opt.is_some() && caught_up {
                return Ok(false);
            }
        }
        Ok(false)
    }

    /// Returns up to `max` index entries of `shard` with `last_lsn > after_lsn`.
    fn locate(&self, shard: u32, after_lsn: Lsn, max: usize) -> Result<Vec<IndexEntry>, WalError> {
        let index = self.index.lock();
        let Some(ledger) = index.get(&shard) else {
            return Ok(Vec::new());
        };
        if let Some(err) = ledger.corrupted(shard) {
            return Err(err);
        }
        let start = ledger.entries.partition_point(|e| e.last_lsn <= after_lsn);
        Ok(ledger.entries.range(start..).take(max).cloned().collect())
    }

    /// Fetches and verifies the bodies of `wanted` (in order), up to [`KINESIS_READ_BYTES_MAX`].
    async fn fetch(&self, shard: u32, wanted: &[IndexEntry]) -> Result<Vec<Record>, WalError> {
        let mut out: Vec<Record> = Vec::with_capacity(wanted.len());
        let mut bytes_total = 0usize;
        let mut i = 0;
        while i < wanted.len() {
            let k = wanted[i].kshard;
            let start = i;
            let mut iterator_opt = self
                .shard_iterator(
                    k,
                    ShardIteratorType::AtSequenceNumber,
                    Some(&wanted[i].sequence_number),
                )
                .await?;
            'calls: for _ in 0..KINESIS_READ_CALLS_MAX {
                let Some(iterator) = iterator_opt else { break };
                let resp = self.get_records(k, &iterator).await?;
                for r in resp.records() {
                    let Some(want) = wanted.get(i).filter(|w| w.kshard == k) else {
                        break 'calls;
                    };
                    match cmp_sequence_numbers(r.sequence_number(), &want.sequence_number) {
                        CmpOrdering::Less => continue,
                        CmpOrdering::Greater => break 'calls,
                        CmpOrdering::Equal => {}
                    }
                    let corrupted = |reason: String| WalError::Corrupted {
                        shard,
                        location: self.location(k, r.sequence_number()),
                        reason,
                    };
                    let bytes = unframe(r.data().as_ref()).map_err(corrupted)?;
                    let (rec, _) = record::decode(&bytes).map_err(|e| corrupted(e.to_string()))?;
                    if rec.hash != want.hash {
                        return Err(corrupted("record differs from the one indexed".into()));
                    }
                    if let Some(prev) = out.last() {
                        record::check_follows(Some((prev.last_lsn, prev.hash)), &rec)
                            .map_err(|reason| corrupted(reason.into()))?;
                    }
                    bytes_total += bytes.len();
                    out.push(rec);
                    i += 1;
                    if bytes_total >= KINESIS_READ_BYTES_MAX {
                        return Ok(out);
                    }
                }
                if wanted.get(i).is_none_or(|w| w.kshard != k) {
                    break;
                }
                let at_end = resp.records().is_empty() && resp.millis_behind_latest() == Some(0);
                if at_end {
                    break;
                }
                iterator_opt = resp.next_shard_iterator().map(str::to_string);
            }
            if i == start {
                return Err(WalError::Corrupted {
                    shard,
                    location: self.location(k, &wanted[i].sequence_number),
                    reason: "indexed record is no longer in the stream (trimmed by retention?)"
                        .into(),
                });
            }
            if wanted.get(i).is_some_and(|w| w.kshard == k) {
                break; // Out of calls: return what we have; the caller reads on.
            }
        }
        Ok(out)
    }

    /// Sends one PutRecords call; acknowledges, retries or fails each entry.
    async fn put_batch(&self, batch: Vec<Pending>, pending: &mut Vec<Pending>) {
        let mut entries = Vec::with_capacity(batch.len());
        for p in &batch {
            let built = PutRecordsRequestEntry::builder()
                .data(p.request.data.clone())
                .partition_key(p.request.partition_key.clone())
                .explicit_hash_key(p.request.explicit_hash_key.clone())
                .build();
            match built {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    // Data and partition key are always set: cannot happen, but fail cleanly.
                    for p in batch {
                        self.fail(p, unavailable(format!("building PutRecords entry: {e}")));
                    }
                    return;
                }
            }
        }
        let started = Instant::now();
        let result = self
            .client
            .put_records()
            .stream_name(&self.stream_name)
            .set_records(Some(entries))
            .send()
            .await;
        self.metrics.observe_put_latency(started.elapsed());
        match result {
            Ok(out) if out.records().len() == batch.len() => {
                for (p, r) in batch.into_iter().zip(out.records()) {
                    match (r.error_code(), r.shard_id(), r.sequence_number()) {
                        (None, Some(shard_id), Some(seq)) => {
                            let ack = PutAck {
                                kinesis_shard_id: shard_id.to_string(),
                                sequence_number: seq.to_string(),
                            };
                            let _ = p.request.reply.send(Ok(ack)); // The caller may be gone.
                        }
                        (code_opt, _, _) => {
                            // Per entry, only throttling and InternalFailure (not stored) come
                            // back; KMS errors other than throttling are fatal.
                            let failure = classify_code(code_opt, 200);
                            let failure = match (code_opt, failure) {
                                (Some("InternalFailure"), _) => {
                                    Failure::Transient { ambiguous: false }
                                }
                                (None, _) => Failure::Transient { ambiguous: true },
                                (_, f) => f,
                            };
                            let message = format!(
                                "{}: {}",
                                code_opt.unwrap_or("no sequence number"),
                                r.error_message().unwrap_or("")
                            );
                            self.retry_or_fail(p, failure, message, pending);
                        }
                    }
                }
            }
            Ok(out) => {
                let message = format!(
                    "PutRecords answered {} entries for {}",
                    out.records().len(),
                    batch.len()
                );
                for p in batch {
                    self.retry_or_fail(
                        p,
                        Failure::Transient { ambiguous: true },
                        message.clone(),
                        pending,
                    );
                }
            }
            Err(err) => {
                let failure = classify(&err);
                let message = DisplayErrorContext(&err).to_string();
                for p in batch {
                    self.retry_or_fail(p, failure, message.clone(), pending);
                }
            }
        }
    }

    fn fail(&self, p: Pending, error: WalError) {
        let failure = PutFailure {
            error,
            maybe_stored: p.maybe_stored,
        };
        let _ = p.request.reply.send(Err(failure)); // The caller may be gone.
    }

    fn retry_or_fail(
        &self,
        mut p: Pending,
        failure: Failure,
        message: String,
        pending: &mut Vec<Pending>,
    ) {
        match failure {
            Failure::Fatal => {
                let error = unavailable(format!(
                    "kinesis PutRecords on stream {} refused the record: {message}",
                    self.stream_name
                ));
                self.fail(p, error);
            }
            Failure::Throttled | Failure::Transient { .. } => {
                if failure == Failure::Throttled {
                    Metrics::add(&self.metrics.throttles, 1);
                }
                if let Failure::Transient { ambiguous: true } = failure {
                    p.maybe_stored = true;
                }
                match p.backoff.next_delay() {
                    Some(delay) => {
                        Metrics::add(&self.metrics.retries, 1);
                        p.not_before = Instant::now() + delay;
                        pending.push(p);
                    }
                    None => {
                        let error = unavailable(format!(
                            "kinesis PutRecords on stream {} failed after {} attempts: {message}",
                            self.stream_name,
                            p.backoff.attempts()
                        ));
                        self.fail(p, error);
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Wal for KinesisWal {
    async fn append(&self, shard: u32, record: EncodedRecord) -> Result<(), WalError> {
        if record.bytes.len() > WAL_RECORD_BYTES_MAX {
            return Err(WalError::RecordTooLarge {
                size_bytes: record.bytes.len(),
                limit_bytes: WAL_RECORD_BYTES_MAX,
            });
        }
        let writer = self.writer(shard);
        let _one_in_flight = writer.append_lock.lock().await;
        self.resolve_doubt(shard, &writer).await?;
        self.append_inner(shard, record, &writer).await
    }

    async fn tail(&self, shard: u32) -> Result<Option<Tail>, WalError> {
        let writer = self.writer(shard);
        {
            let _one_in_flight = writer.append_lock.lock().await;
            self.resolve_doubt(shard, &writer).await?;
        }
        let (k, _) = self.inner.route(shard);
        self.inner.catch_up(k).await?;
        let index = self.inner.index.lock();
        match index.get(&shard) {
            None => Ok(None),
            Some(ledger) => match ledger.corrupted(shard) {
                Some(err) => Err(err),
                None => Ok(ledger.tail_opt),
            },
        }
    }

    async fn read(
        &self,
        shard: u32,
        after_lsn: Lsn,
        max_records: usize,
    ) -> Result<Vec<Record>, WalError> {
        let max = max_records.clamp(1, WAL_READ_RECORDS_MAX);
        let mut wanted = self.inner.locate(shard, after_lsn, max)?;
        if wanted.is_empty() {
            let (k, _) = self.inner.route(shard);
            self.inner.catch_up(k).await?;
            wanted = self.inner.locate(shard, after_lsn, max)?;
            if wanted.is_empty() {
                return Ok(Vec::new());
            }
        }
        self.inner.fetch(shard, &wanted).await
    }

    async fn prune(&self, shard: u32, lsn: Lsn) -> Result<(), WalError> {
        // Kinesis retention trims the stream; only the index forgets what a snapshot covers.
        let mut index = self.inner.index.lock();
        if let Some(ledger) = index.get_mut(&shard) {
            while ledger.entries.front().is_some_and(|e| e.last_lsn <= lsn) {
                if let Some(e) = ledger.entries.pop_front() {
                    ledger.pruned_through_lsn = e.last_lsn;
                }
            }
        }
        Ok(())
    }

    /// Reads the stream's tags; on a stream without a count tag (new, or written before the
    /// tag existed: then no ledger shard with records may lie at or above `num_shards`) adds
    /// `saldo-shards-{num_shards}` and reads the tags again. Of two first starts with different
    /// counts, the one that reads second sees both tags: it takes its own back and refuses.
    /// Both may refuse (both read after both wrote, and both take theirs back); the next start
    /// then finds no tag. Neither can go on beside the other.
    async fn claim_shard_count(&self, num_shards: u32) -> Result<(), WalError> {
        let mismatch = |recorded: u32| WalError::ShardCountMismatch {
            location: self.describe(),
            recorded,
            configured: num_shards,
        };
        let counts = self.shard_count_tags().await?;
        if let Some(&other) = counts.iter().find(|&&n| n != num_shards) {
            return Err(mismatch(other));
        }
        if !counts.is_empty() {
            return Ok(());
        }
        let with_records: Vec<u32> = self
            .inner
            .index
            .lock()
            .iter()
            .filter(|(_, ledger)| ledger.tail_opt.is_some())
            .map(|(&shard, _)| shard)
            .collect();
        super::check_unrecorded_shard_count(self.describe(), with_records, num_shards)?;
        self.set_shard_count_tag(num_shards, true).await?;
        let counts = self.shard_count_tags().await?;
        if let Some(&other) = counts.iter().find(|&&n| n != num_shards) {
            if let Err(e) = self.set_shard_count_tag(num_shards, false).await {
                tracing::warn!(error = %e, num_shards, "could not take back a shard count tag");
            }
            return Err(mismatch(other));
        }
        tracing::info!(
            stream = %self.inner.stream_name,
            num_shards,
            "recorded the shard count as a stream tag"
        );
        Ok(())
    }

    async fn recorded_shard_count(&self) -> Result<Option<u32>, WalError> {
        match self.shard_count_tags().await?[..] {
            [] => Ok(None),
            [n] => Ok(Some(n)),
            ref several => Err(unavailable(format!(
                "kinesis stream {} records several shard counts {several:?} (tags \
                 {SHARD_COUNT_TAG_PREFIX}N): remove the tags that are not the cluster's",
                self.inner.stream_name
            ))),
        }
    }

    async fn retention_ms(&self) -> Result<Option<u64>, WalError> {
        let (client, stream_name) = (&self.inner.client, &self.inner.stream_name);
        let out = with_retry(&self.inner.metrics, || {
            client
                .describe_stream_summary()
                .stream_name(stream_name)
                .send()
        })
        .await
        .map_err(|e| sdk_error("DescribeStreamSummary", stream_name, e))?;
        let hours = out
            .stream_description_summary()
            .map(|s| s.retention_period_hours())
            .ok_or_else(|| unavailable(format!("kinesis stream {stream_name} has no summary")))?;
        let hours = u64::try_from(hours).unwrap_or(0).max(1);
        Ok(Some(hours * 3_600_000))
    }

    fn describe(&self) -> String {
        format!("kinesis:{}", self.inner.stream_name)
    }

    fn metrics(&self) -> Vec<MetricSample> {
        self.inner.samples()
    }
}

impl Inner {
    fn samples(&self) -> Vec<MetricSample> {
        let m = &self.metrics;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let counter = |name, help, value| MetricSample {
            name,
            help,
            kind: MetricKind::Counter,
            labels: Vec::new(),
            value,
        };
        let mut out = vec![
            counter(
                "saldo_kinesis_put_calls_total",
                "PutRecords calls",
                get(&m.put_calls),
            ),
            counter(
                "saldo_kinesis_put_latency_seconds_sum",
                "Time spent in PutRecords calls",
                get(&m.put_latency_micros_sum) / 1e6,
            ),
            counter(
                "saldo_kinesis_put_latency_seconds_count",
                "PutRecords calls timed",
                get(&m.put_calls),
            ),
            counter(
                "saldo_kinesis_retries_total",
                "Kinesis attempts after the first",
                get(&m.retries),
            ),
            counter(
                "saldo_kinesis_throttles_total",
                "Throttling answers from Kinesis",
                get(&m.throttles),
            ),
            counter(
                "saldo_kinesis_put_failures_total",
                "Appends that failed",
                get(&m.put_failures),
            ),
            counter(
                "saldo_kinesis_bytes_raw_total",
                "Record bytes appended before compression",
                get(&m.bytes_raw),
            ),
            counter(
                "saldo_kinesis_bytes_stored_total",
                "Bytes stored in Kinesis (framed data and partition key)",
                get(&m.bytes_stored),
            ),
            counter(
                "saldo_kinesis_get_records_calls_total",
                "GetRecords calls",
                get(&m.get_records_calls),
            ),
            counter(
                "saldo_kinesis_duplicates_skipped_total",
                "Duplicate records (retried puts) skipped by the reader",
                get(&m.duplicates_skipped),
            ),
            counter(
                "saldo_kinesis_fenced_skipped_total",
                "Records of a fenced (older) epoch ignored by the reader",
                get(&m.fenced_skipped),
            ),
            counter(
                "saldo_kinesis_foreign_skipped_total",
                "Records without a saldo partition key skipped by the reader",
                get(&m.foreign_skipped),
            ),
            MetricSample {
                name: "saldo_kinesis_appends_in_flight",
                help: "Appends waiting for Kinesis",
                kind: MetricKind::Gauge,
                labels: Vec::new(),
                value: get(&m.in_flight),
            },
        ];
        for (bound, bucket) in PUT_LATENCY_BUCKETS_S.iter().zip(&m.put_latency_buckets) {
            out.push(MetricSample {
                name: "saldo_kinesis_put_latency_seconds_bucket",
                help: "PutRecords latency",
                kind: MetricKind::Counter,
                labels: vec![("le", bound.to_string())],
                value: get(bucket),
            });
        }
        out.push(MetricSample {
            name: "saldo_kinesis_put_latency_seconds_bucket",
            help: "PutRecords latency",
            kind: MetricKind::Counter,
            labels: vec![("le", "+Inf".into())],
            value: get(&m.put_calls),
        });
        for s in &self.shards {
            let per_shard = |name, help, value| MetricSample {
                name,
                help,
                kind: MetricKind::Counter,
                labels: vec![("kinesis_shard", s.id.clone())],
                value,
            };
            out.push(per_shard(
                "saldo_kinesis_shard_records_total",
                "Records stored per Kinesis shard",
                get(&s.counters.records),
            ));
            out.push(per_shard(
                "saldo_kinesis_shard_events_total",
                "Events (LSNs) stored per Kinesis shard",
                get(&s.counters.events),
            ));
            out.push(per_shard(
                "saldo_kinesis_shard_bytes_total",
                "Bytes stored per Kinesis shard",
                get(&s.counters.bytes_stored),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kinesis_record_limit_counts_data_and_partition_key() {
        assert!(check_kinesis_record_size(KINESIS_RECORD_BYTES_MAX - 20, 20).is_ok());
        match check_kinesis_record_size(KINESIS_RECORD_BYTES_MAX - 19, 20) {
            Err(WalError::RecordTooLarge {
                size_bytes,
                limit_bytes,
            }) => assert_eq!(
                (size_bytes, limit_bytes),
                (KINESIS_RECORD_BYTES_MAX + 1, KINESIS_RECORD_BYTES_MAX)
            ),
            other => panic!("expected RecordTooLarge, got {other:?}"),
        }
        assert!(
            check_kinesis_record_size(usize::MAX, 1).is_err(),
            "no overflow"
        );
    }

    #[test]
    fn a_largest_incompressible_record_still_fits_one_kinesis_record() {
        let payload_bytes = WAL_RECORD_BYTES_MAX - record::HEADER_BYTES;
        // A xorshift stream does not compress: the frame falls back to raw.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let payload: Vec<u8> = (0..payload_bytes)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let rec = record::encode(u32::MAX, 1, 1, 1, &[0; 32], &payload);
        let data = frame(&rec.bytes).unwrap();
        assert_eq!(data[0], CODEC_RAW);
        assert!(check_kinesis_record_size(data.len(), partition_key(u32::MAX).len()).is_ok());
        assert_eq!(unframe(&data).unwrap(), rec.bytes);
    }

    #[test]
    fn frames_round_trip_and_bad_frames_are_refused() {
        let rec = record::encode(3, 1, 1, 10, &[0; 32], &b"event ".repeat(500));
        let data = frame(&rec.bytes).unwrap();
        assert_eq!(data[0], CODEC_ZSTD);
        assert!(data.len() < rec.bytes.len() / 4);
        assert_eq!(unframe(&data).unwrap(), rec.bytes);
        assert!(unframe(&[]).is_err());
        assert!(unframe(&[7, 1, 2]).is_err());
        assert!(unframe(&[CODEC_ZSTD, 1, 2, 3]).is_err());
    }

    #[test]
    fn partition_keys_name_their_shard() {
        assert_eq!(partition_key(12), "saldo-shard-12");
        assert_eq!(shard_of_partition_key("saldo-shard-12"), Some(12));
        assert_eq!(shard_of_partition_key("other-12"), None);
        assert!(
            partition_key(u32::MAX).len() <= crate::limits::KINESIS_SALDO_PARTITION_KEY_BYTES_MAX
        );
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        assert_eq!(cmp_sequence_numbers("9", "10"), CmpOrdering::Less);
        assert_eq!(cmp_sequence_numbers("495", "495"), CmpOrdering::Equal);
        assert_eq!(cmp_sequence_numbers("496", "495"), CmpOrdering::Greater);
    }

    #[test]
    fn a_token_bucket_holds_a_shard_to_its_limits() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(t0);
        for _ in 0..KINESIS_SHARD_RECORDS_PER_SEC {
            assert!(bucket.take(10, t0).is_ok());
        }
        let ready_at = bucket.take(10, t0).unwrap_err();
        assert!(ready_at > t0 && ready_at <= t0 + Duration::from_millis(2));
        let mut bucket = TokenBucket::new(t0);
        assert!(bucket
            .take(KINESIS_SHARD_BYTES_PER_SEC as usize, t0)
            .is_ok());
        let ready_at = bucket.take(512 * 1024, t0).unwrap_err();
        assert!(ready_at >= t0 + Duration::from_millis(499));
        assert!(bucket
            .take(512 * 1024, t0 + Duration::from_millis(501))
            .is_ok());
    }

    fn entry(first_lsn: Lsn, last_lsn: Lsn, hash: u8, epoch: u64) -> IndexEntry {
        IndexEntry {
            first_lsn,
            last_lsn,
            hash: [hash; 32],
            epoch,
            kshard: 0,
            sequence_number: "1".into(),
        }
    }

    #[test]
    fn the_reader_skips_duplicates_fences_old_epochs_and_refuses_gaps() {
        let mut ledger = LedgerIndex::default();
        assert_eq!(
            ledger.accept(entry(1, 2, 1, 1), &[0; 32]),
            Ok(Accepted::Appended)
        );
        assert_eq!(
            ledger.accept(entry(3, 3, 2, 1), &[1; 32]),
            Ok(Accepted::Appended)
        );
        assert_eq!(
            ledger.accept(entry(1, 2, 1, 1), &[0; 32]),
            Ok(Accepted::Duplicate)
        );
        assert_eq!(
            ledger.accept(entry(3, 3, 2, 1), &[1; 32]),
            Ok(Accepted::Duplicate)
        );
        assert_eq!(
            ledger.accept(entry(4, 4, 3, 2), &[2; 32]),
            Ok(Accepted::Appended)
        );
        assert_eq!(
            ledger.accept(entry(5, 5, 9, 1), &[3; 32]),
            Ok(Accepted::Fenced)
        );
        assert!(ledger.accept(entry(6, 6, 4, 2), &[3; 32]).is_err(), "gap");
        assert!(
            ledger.accept(entry(5, 5, 4, 2), &[8; 32]).is_err(),
            "broken chain"
        );
        assert!(
            ledger.accept(entry(4, 4, 7, 2), &[2; 32]).is_err(),
            "same epoch rewrites"
        );
        assert_eq!(ledger.tail_opt.map(|t| t.last_lsn), Some(4));
    }

    #[test]
    fn a_newer_epoch_replaces_a_fenced_writers_suffix() {
        let mut ledger = LedgerIndex::default();
        ledger.accept(entry(1, 1, 1, 1), &[0; 32]).unwrap();
        ledger.accept(entry(2, 2, 2, 1), &[1; 32]).unwrap(); // The zombie's record.
        assert_eq!(
            ledger.accept(entry(2, 3, 5, 2), &[1; 32]),
            Ok(Accepted::Replaced(1))
        );
        assert_eq!(
            ledger.tail_opt.map(|t| (t.last_lsn, t.hash)),
            Some((3, [5; 32]))
        );
        assert_eq!(
            ledger.accept(entry(3, 3, 2, 1), &[2; 32]),
            Ok(Accepted::Fenced)
        );
    }

    #[test]
    fn ledger_shards_spread_over_open_kinesis_shards_inside_their_ranges() {
        assert_eq!(bit_reverse_16(0), 0);
        assert_eq!(bit_reverse_16(1), 1 << 15);
        assert_eq!(bit_reverse_16(2), 1 << 14);
        let span = u128::MAX / 3;
        assert!(span / HASH_KEY_SLOTS * bit_reverse_16(u32::MAX) <= span);
    }
}
