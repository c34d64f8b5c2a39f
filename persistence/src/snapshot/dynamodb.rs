//! Shard snapshots in one DynamoDB table (see `docs/dynamodb.md`).
//!
//! ## Layout
//! ```text
//! pk = shard#00003   sk = m#{lsn:020}                       manifest (written last, conditional)
//! pk = shard#00003   sk = c#{lsn:020}#{data_id}#{index:06}  chunk: ≤ 350 KiB of zstd data
//! ```
//! One Query (`begins_with(sk, "m#")`, newest first) lists a shard's manifests; another
//! (`sk BETWEEN` the first and last chunk key) reads a snapshot's chunks in order. `data_id` is
//! the first 8 bytes (hex) of the BLAKE3 of the compressed data: two puts at the same shard and
//! LSN with different data never write the same chunk items, so a second put can never corrupt
//! the first, and a repeated identical put rewrites identical items.
//!
//! ## Write protocol
//! Compress, split into chunks, write the chunks with BatchWriteItem (≤ 25 items, unprocessed
//! items retried), then put the manifest with `attribute_not_exists(sk)`. A crash before the
//! manifest leaves chunks that are never listed or read; `retain` deletes them once they are
//! older than [`DYNAMODB_ORPHAN_CHUNK_AGE_MIN_SECS`].
//!
//! ## Read verification
//! Strongly consistent reads; the chunk count, every chunk's index and size, the compressed size
//! and BLAKE3 are checked, decompression is bounded by the manifest's size, then
//! [`super::verify`] checks size and CRC32C. Any mismatch is [`SnapshotError::Corrupted`].
//!
//! ## Failure model
//! The SDK's retries are off: every call goes through [`Backoff`]. Throttling, 5xx, timeouts
//! and lost connections are retried; when the attempts run out the call is
//! [`SnapshotError::Unavailable`]. Every write is idempotent (chunks are content-addressed, the
//! manifest is conditional and compared on conflict), so retrying a request whose answer was
//! lost is safe.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use aws_sdk_dynamodb::{
    config::http::HttpResponse,
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    primitives::Blob,
    types::{
        AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, KeySchemaElement, KeyType,
        PutRequest, ScalarAttributeType, TableDescription, TableStatus, WriteRequest,
    },
    Client,
};
use tokio::task::JoinSet;

use super::{verify, SnapshotError, SnapshotMeta, SnapshotStore};
use crate::{
    aws::{compress, decompress, sdk_config, AwsSettings, Backoff},
    limits::{
        DYNAMODB_BATCH_WRITE_ITEMS_MAX, DYNAMODB_CHUNKS_MAX, DYNAMODB_CHUNK_BYTES,
        DYNAMODB_ORPHAN_CHUNK_AGE_MIN_SECS, DYNAMODB_QUERY_PAGES_MAX,
        DYNAMODB_TABLE_ACTIVE_TIMEOUT, DYNAMODB_TABLE_POLL_INTERVAL,
        DYNAMODB_WRITE_BATCHES_IN_FLIGHT_MAX, SNAPSHOT_BYTES_MAX,
    },
    metrics::{MetricKind, MetricSample},
    record::Lsn,
};

/// Partition key attribute: `shard#{shard:05}`.
const ATTR_PK: &str = "pk";
/// Sort key attribute: `m#…` (manifest) or `c#…` (chunk).
const ATTR_SK: &str = "sk";
/// A chunk's compressed bytes.
const ATTR_DATA: &str = "d";
/// When an item was written, seconds since the Unix epoch (for orphan cleanup).
const ATTR_WRITTEN_AT: &str = "t";
// Manifest attributes: the `SnapshotMeta` fields and how the data is stored.
const ATTR_FORMAT: &str = "format";
const ATTR_SHARD: &str = "shard";
const ATTR_LSN: &str = "lsn";
const ATTR_RECORD_HASH: &str = "record_hash";
const ATTR_TAKEN_AT_US: &str = "taken_at_us";
const ATTR_SIZE_BYTES: &str = "size_bytes";
const ATTR_CRC32C: &str = "crc32c";
const ATTR_NUM_CHUNKS: &str = "num_chunks";
const ATTR_COMPRESSED_BYTES: &str = "compressed_bytes";
const ATTR_COMPRESSED_BLAKE3: &str = "compressed_blake3";

/// Version of the manifest item; readers refuse others.
const MANIFEST_FORMAT: u64 = 1;

/// Error codes DynamoDB uses for throttling (retried, counted as throttles).
const THROTTLING_CODES: [&str; 3] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
];
/// Error codes of transient server-side failures (retried).
const TRANSIENT_CODES: [&str; 4] = [
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "TransactionInProgressException",
];

/// Shard snapshots in a DynamoDB table: content-addressed chunks, then a conditional manifest.
#[derive(Clone)]
pub struct DynamoDbSnapshotStore {
    /// Shared with the tasks that write a snapshot's chunk batches concurrently.
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DynamoDbSnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbSnapshotStore")
            .field("table", &self.inner.table)
            .finish()
    }
}

/// What the spawned batch writers share with the store.
struct Inner {
    /// One client (one connection pool) for every call.
    client: Client,
    /// The table name, for every request and for error messages.
    table: String,
    /// Counters behind [`SnapshotStore::metrics`].
    metrics: Counters,
}

/// Monotonic counters; latencies in microseconds.
#[derive(Default)]
struct Counters {
    puts: AtomicU64,
    put_us_sum: AtomicU64,
    put_us_max: AtomicU64,
    gets: AtomicU64,
    get_us_sum: AtomicU64,
    get_us_max: AtomicU64,
    retries: AtomicU64,
    throttles: AtomicU64,
    raw_bytes_written: AtomicU64,
    compressed_bytes_written: AtomicU64,
    items_written: AtomicU64,
    items_deleted: AtomicU64,
}

/// A DynamoDB call that failed for good (not retryable, or out of attempts).
#[derive(Debug, thiserror::Error)]
#[error("dynamodb {op} on table {table} failed after {attempts} attempt(s): {detail}")]
struct CallFailed {
    op: &'static str,
    table: String,
    attempts: u32,
    detail: String,
}

/// The table is missing, or not shaped for snapshots.
#[derive(Debug, thiserror::Error)]
enum TableError {
    #[error(
        "dynamodb table {table} does not exist: create it (see docs/dynamodb.md) or start with \
         --create-resources"
    )]
    Missing { table: String },
    #[error(
        "dynamodb table {table} has key schema [{found}]; the snapshot store needs partition \
         key pk (string) and sort key sk (string)"
    )]
    WrongKeySchema { table: String, found: String },
    #[error("dynamodb table {table} is not ACTIVE after {waited_secs} s (status {status})")]
    NotActive {
        table: String,
        waited_secs: u64,
        status: String,
    },
}

/// How a failed call is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Throttled: retried and counted.
    Throttled,
    /// 5xx, timeout, lost connection: retried.
    Transient,
    /// Anything else (validation, condition failed, access denied): returned at once.
    Fatal,
}

fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Fault {
    match err {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or_default();
            if THROTTLING_CODES.contains(&code) {
                Fault::Throttled
            } else if TRANSIENT_CODES.contains(&code) || ctx.raw().status().is_server_error() {
                Fault::Transient
            } else {
                Fault::Fatal
            }
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Fault::Transient,
        SdkError::DispatchFailure(failure) if !failure.is_user() => Fault::Transient,
        _ => Fault::Fatal,
    }
}

/// The primary key of an item.
type Key = HashMap<String, AttributeValue>;

fn pk(shard: u32) -> String {
    format!("shard#{shard:05}")
}

fn manifest_sk(lsn: Lsn) -> String {
    format!("m#{lsn:020}")
}

fn chunk_sk(lsn: Lsn, data_id: &str, index: usize) -> String {
    format!("c#{lsn:020}#{data_id}#{index:06}")
}

/// Returns `(lsn, data_id, index)` of a chunk sort key.
fn parse_chunk_sk(sk: &str) -> Option<(Lsn, &str, usize)> {
    let mut parts = sk.strip_prefix("c#")?.split('#');
    let lsn = parts.next()?.parse().ok()?;
    let data_id = parts.next()?;
    let index = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((lsn, data_id, index))
}

fn key(shard: u32, sk: String) -> Key {
    HashMap::from([
        (ATTR_PK.to_string(), AttributeValue::S(pk(shard))),
        (ATTR_SK.to_string(), AttributeValue::S(sk)),
    ])
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored manifest: the snapshot's metadata and how its data is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Manifest {
    meta: SnapshotMeta,
    num_chunks: usize,
    compressed_bytes: u64,
    compressed_blake3: [u8; 32],
}

impl Manifest {
    fn new(meta: SnapshotMeta, compressed: &[u8]) -> Manifest {
        Manifest {
            meta,
            num_chunks: compressed.len().div_ceil(DYNAMODB_CHUNK_BYTES).max(1),
            compressed_bytes: compressed.len() as u64,
            compressed_blake3: *blake3::hash(compressed).as_bytes(),
        }
    }

    /// Names the chunk items of this snapshot's data (two puts of different data at one LSN
    /// write different chunks).
    fn data_id(&self) -> String {
        hex(&self.compressed_blake3[..8])
    }

    /// Returns whether `other` stores the same data (a repeated put, perhaps taken again).
    fn same_data(&self, other: &Manifest) -> bool {
        let (a, b) = (&self.meta, &other.meta);
        (a.shard, a.lsn, a.record_hash, a.size_bytes, a.crc32c)
            == (b.shard, b.lsn, b.record_hash, b.size_bytes, b.crc32c)
            && self.compressed_blake3 == other.compressed_blake3
    }

    fn to_item(&self) -> HashMap<String, AttributeValue> {
        let n = |v: u64| AttributeValue::N(v.to_string());
        let m = &self.meta;
        let mut item = key(m.shard, manifest_sk(m.lsn));
        item.extend([
            (ATTR_FORMAT.to_string(), n(MANIFEST_FORMAT)),
            (ATTR_SHARD.to_string(), n(u64::from(m.shard))),
            (ATTR_LSN.to_string(), n(m.lsn)),
            (
                ATTR_RECORD_HASH.to_string(),
                AttributeValue::B(Blob::new(m.record_hash.to_vec())),
            ),
            (ATTR_TAKEN_AT_US.to_string(), n(m.taken_at_us)),
            (ATTR_SIZE_BYTES.to_string(), n(m.size_bytes)),
            (ATTR_CRC32C.to_string(), n(u64::from(m.crc32c))),
            (ATTR_NUM_CHUNKS.to_string(), n(self.num_chunks as u64)),
            (ATTR_COMPRESSED_BYTES.to_string(), n(self.compressed_bytes)),
            (
                ATTR_COMPRESSED_BLAKE3.to_string(),
                AttributeValue::B(Blob::new(self.compressed_blake3.to_vec())),
            ),
            (ATTR_WRITTEN_AT.to_string(), n(now_secs())),
        ]);
        item
    }

    /// Parses a manifest item; the error says which attribute is wrong.
    fn from_item(item: &HashMap<String, AttributeValue>) -> Result<Manifest, String> {
        let format: u64 = item_number(item, ATTR_FORMAT)?;
        if format != MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {format}, this reader knows {MANIFEST_FORMAT}"
            ));
        }
        let manifest = Manifest {
            meta: SnapshotMeta {
                shard: item_number(item, ATTR_SHARD)?,
                lsn: item_number(item, ATTR_LSN)?,
                record_hash: item_hash(item, ATTR_RECORD_HASH)?,
                taken_at_us: item_number(item, ATTR_TAKEN_AT_US)?,
                size_bytes: item_number(item, ATTR_SIZE_BYTES)?,
                crc32c: item_number(item, ATTR_CRC32C)?,
            },
            num_chunks: item_number(item, ATTR_NUM_CHUNKS)?,
            compressed_bytes: item_number(item, ATTR_COMPRESSED_BYTES)?,
            compressed_blake3: item_hash(item, ATTR_COMPRESSED_BLAKE3)?,
        };
        // The key must agree with the body: a manifest copied under another key is corrupt.
        let sk = match item.get(ATTR_SK) {
            Some(AttributeValue::S(sk)) => sk.as_str(),
            _ => "",
        };
        if sk != manifest_sk(manifest.meta.lsn) {
            return Err(format!(
                "manifest for lsn {} stored under {sk}",
                manifest.meta.lsn
            ));
        }
        let chunks_needed = usize::try_from(manifest.compressed_bytes)
            .map(|b| b.div_ceil(DYNAMODB_CHUNK_BYTES).max(1))
            .unwrap_or(usize::MAX);
        if manifest.num_chunks != chunks_needed || manifest.num_chunks > DYNAMODB_CHUNKS_MAX {
            return Err(format!(
                "{} chunks for {} compressed bytes",
                manifest.num_chunks, manifest.compressed_bytes
            ));
        }
        if manifest.meta.size_bytes > SNAPSHOT_BYTES_MAX as u64 {
            return Err(format!("size {} over the limit", manifest.meta.size_bytes));
        }
        Ok(manifest)
    }
}

fn item_number<T: std::str::FromStr>(
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Result<T, String> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| format!("bad {name}: {v}")),
        _ => Err(format!("manifest has no number {name}")),
    }
}

fn item_hash(item: &HashMap<String, AttributeValue>, name: &str) -> Result<[u8; 32], String> {
    match item.get(name) {
        Some(AttributeValue::B(b)) => b
            .as_ref()
            .try_into()
            .map_err(|_| format!("{name} is {} bytes, not 32", b.as_ref().len())),
        _ => Err(format!("manifest has no binary {name}")),
    }
}

impl DynamoDbSnapshotStore {
    /// Opens the store on `table`: checks that the table exists with the expected key schema
    /// (`pk` string partition key, `sk` string sort key). With `settings.create_resources` a
    /// missing table is created (on-demand billing) and awaited until ACTIVE; without it, a
    /// missing table is an error naming the table and `--create-resources`.
    pub async fn open(
        settings: &AwsSettings,
        table: &str,
    ) -> Result<DynamoDbSnapshotStore, SnapshotError> {
        let inner = Inner {
            client: Client::new(&sdk_config(settings).await),
            table: table.to_string(),
            metrics: Counters::default(),
        };
        inner.ensure_table(settings.create_resources).await?;
        Ok(DynamoDbSnapshotStore {
            inner: Arc::new(inner),
        })
    }

    /// Returns the table's name.
    pub fn table(&self) -> &str {
        &self.inner.table
    }
}

impl Inner {
    fn failed<E>(
        &self,
        op: &'static str,
        attempts: u32,
        err: &SdkError<E, HttpResponse>,
    ) -> SnapshotError
    where
        E: std::error::Error + 'static,
    {
        SnapshotError::Unavailable(Box::new(CallFailed {
            op,
            table: self.table.clone(),
            attempts,
            detail: DisplayErrorContext(err).to_string(),
        }))
    }

    /// Sends one request, retrying throttling and transient failures with [`Backoff`]. Returns
    /// the last error (and the attempts made) when it is fatal or the attempts are used up.
    async fn send<T, E, F, Fut>(
        &self,
        op: &'static str,
        mut attempt: F,
    ) -> Result<T, (SdkError<E, HttpResponse>, u32)>
    where
        E: ProvideErrorMetadata,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    {
        let mut backoff = Backoff::default();
        loop {
            let err = match attempt().await {
                Ok(out) => return Ok(out),
                Err(err) => err,
            };
            if !self.should_retry(op, &err, &mut backoff).await {
                return Err((err, backoff.attempts().max(1)));
            }
        }
    }

    /// Counts a failure and sleeps before the next attempt; returns false when the failure is
    /// fatal or the attempts are used up.
    async fn should_retry<E: ProvideErrorMetadata>(
        &self,
        op: &'static str,
        err: &SdkError<E, HttpResponse>,
        backoff: &mut Backoff,
    ) -> bool {
        let fault = classify(err);
        if fault == Fault::Fatal {
            return false;
        }
        if fault == Fault::Throttled {
            self.metrics.throttles.fetch_add(1, Ordering::Relaxed);
        }
        self.sleep_or_give_up(op, backoff, fault_name(fault)).await
    }

    /// Sleeps the backoff's next delay (counted as a retry); false when attempts are used up.
    async fn sleep_or_give_up(&self, op: &'static str, backoff: &mut Backoff, why: &str) -> bool {
        let Some(delay) = backoff.next_delay() else {
            tracing::warn!(table = %self.table, op, attempts = backoff.attempts(), why,
                "dynamodb call out of attempts");
            return false;
        };
        self.metrics.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(table = %self.table, op, attempt = backoff.attempts(), why,
            delay_ms = delay.as_millis() as u64, "retrying dynamodb call");
        tokio::time::sleep(delay).await;
        true
    }

    async fn describe(&self) -> Result<Option<TableDescription>, SnapshotError> {
        let out = self
            .send("DescribeTable", || {
                self.client.describe_table().table_name(&self.table).send()
            })
            .await;
        match out {
            Ok(out) => Ok(out.table),
            Err((err, _))
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err((err, attempts)) => Err(self.failed("DescribeTable", attempts, &err)),
        }
    }

    async fn ensure_table(&self, create: bool) -> Result<(), SnapshotError> {
        let table_error = |e: TableError| SnapshotError::Unavailable(Box::new(e));
        match self.describe().await? {
            Some(desc) => self.check_key_schema(&desc).map_err(table_error)?,
            None if create => self.create_table().await?,
            None => {
                return Err(table_error(TableError::Missing {
                    table: self.table.clone(),
                }))
            }
        }
        self.wait_active().await
    }

    fn check_key_schema(&self, desc: &TableDescription) -> Result<(), TableError> {
        let found: Vec<String> = desc
            .key_schema()
            .iter()
            .map(|k| format!("{} {}", k.attribute_name(), k.key_type().as_str()))
            .collect();
        let type_of = |name: &str| {
            desc.attribute_definitions()
                .iter()
                .find(|d| d.attribute_name() == name)
                .map(|d| d.attribute_type().clone())
        };
        let ok = found == [format!("{ATTR_PK} HASH"), format!("{ATTR_SK} RANGE")]
            && type_of(ATTR_PK) == Some(ScalarAttributeType::S)
            && type_of(ATTR_SK) == Some(ScalarAttributeType::S);
        if ok {
            Ok(())
        } else {
            Err(TableError::WrongKeySchema {
                table: self.table.clone(),
                found: found.join(", "),
            })
        }
    }

    async fn create_table(&self) -> Result<(), SnapshotError> {
        tracing::info!(table = %self.table, "creating dynamodb snapshot table (on-demand)");
        // The builders fail only when a required field is missing; all are set here.
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("name and type are set")
        };
        let key_element = |name: &str, key_type: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
                .expect("name and key type are set")
        };
        let out = self
            .send("CreateTable", || {
                self.client
                    .create_table()
                    .table_name(&self.table)
                    .billing_mode(BillingMode::PayPerRequest)
                    .attribute_definitions(attr(ATTR_PK))
                    .attribute_definitions(attr(ATTR_SK))
                    .key_schema(key_element(ATTR_PK, KeyType::Hash))
                    .key_schema(key_element(ATTR_SK, KeyType::Range))
                    .send()
            })
            .await;
        match out {
            Ok(_) => Ok(()),
            // Someone else is creating it (or a retried request already did): wait for it.
            Err((err, _))
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err((err, attempts)) => Err(self.failed("CreateTable", attempts, &err)),
        }
    }

    async fn wait_active(&self) -> Result<(), SnapshotError> {
        let started = Instant::now();
        let mut status = String::from("missing");
        while started.elapsed() < DYNAMODB_TABLE_ACTIVE_TIMEOUT {
            if let Some(desc) = self.describe().await? {
                self.check_key_schema(&desc)
                    .map_err(|e| SnapshotError::Unavailable(Box::new(e)))?;
                if desc.table_status() == Some(&TableStatus::Active) {
                    return Ok(());
                }
                status = desc
                    .table_status()
                    .map_or("unknown", |s| s.as_str())
                    .to_string();
            }
            tokio::time::sleep(DYNAMODB_TABLE_POLL_INTERVAL).await;
        }
        Err(SnapshotError::Unavailable(Box::new(
            TableError::NotActive {
                table: self.table.clone(),
                waited_secs: DYNAMODB_TABLE_ACTIVE_TIMEOUT.as_secs(),
                status,
            },
        )))
    }

    /// Reads a manifest (strongly consistent). `Ok(None)` when there is none.
    async fn get_manifest(&self, shard: u32, lsn: Lsn) -> Result<Option<Manifest>, SnapshotError> {
        let out = self
            .send("GetItem", || {
                self.client
                    .get_item()
                    .table_name(&self.table)
                    .set_key(Some(key(shard, manifest_sk(lsn))))
                    .consistent_read(true)
                    .send()
            })
            .await
            .map_err(|(err, attempts)| self.failed("GetItem", attempts, &err))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let manifest = Manifest::from_item(&item).map_err(|reason| SnapshotError::Corrupted {
            shard,
            lsn,
            reason: format!("unreadable manifest: {reason}"),
        })?;
        if (manifest.meta.shard, manifest.meta.lsn) != (shard, lsn) {
            return Err(SnapshotError::Corrupted {
                shard,
                lsn,
                reason: format!(
                    "manifest describes shard {} lsn {}",
                    manifest.meta.shard, manifest.meta.lsn
                ),
            });
        }
        Ok(Some(manifest))
    }

    /// Runs a Query of `shard`'s items in `sk_range` to the end (strongly consistent, at most
    /// [`DYNAMODB_QUERY_PAGES_MAX`] pages), handing each page's items to `each`. `keys_only`
    /// projects the keys and the written-at time (it saves bandwidth, not read units).
    async fn query_pages(
        &self,
        shard: u32,
        sk_range: SkRange,
        newest_first: bool,
        keys_only: bool,
        mut each: impl FnMut(Vec<HashMap<String, AttributeValue>>) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let (condition, values) = match &sk_range {
            SkRange::Prefix(prefix) => (
                "#pk = :pk AND begins_with(#sk, :lo)",
                vec![(":lo", prefix.clone())],
            ),
            SkRange::Between(lo, hi) => (
                "#pk = :pk AND #sk BETWEEN :lo AND :hi",
                vec![(":lo", lo.clone()), (":hi", hi.clone())],
            ),
        };
        let mut start_key: Option<Key> = None;
        for _page in 0..DYNAMODB_QUERY_PAGES_MAX {
            let out = self
                .send("Query", || {
                    let mut q = self
                        .client
                        .query()
                        .table_name(&self.table)
                        .consistent_read(true)
                        .scan_index_forward(!newest_first)
                        .key_condition_expression(condition)
                        .expression_attribute_names("#pk", ATTR_PK)
                        .expression_attribute_names("#sk", ATTR_SK)
                        .expression_attribute_values(":pk", AttributeValue::S(pk(shard)))
                        .set_exclusive_start_key(start_key.clone());
                    for (name, value) in &values {
                        q = q.expression_attribute_values(*name, AttributeValue::S(value.clone()));
                    }
                    if keys_only {
                        q = q
                            .projection_expression("#pk, #sk, #t")
                            .expression_attribute_names("#t", ATTR_WRITTEN_AT);
                    }
                    q.send()
                })
                .await
                .map_err(|(err, attempts)| self.failed("Query", attempts, &err))?;
            start_key = out.last_evaluated_key;
            each(out.items.unwrap_or_default())?;
            if start_key.is_none() {
                return Ok(());
            }
        }
        Err(SnapshotError::Unavailable(
            format!(
                "dynamodb query of shard {shard} on table {} still paging after {} pages",
                self.table, DYNAMODB_QUERY_PAGES_MAX
            )
            .into(),
        ))
    }

    /// Returns the shard's readable manifests, newest first (unreadable ones are logged and
    /// skipped, as the folder backend does).
    async fn list_manifests(&self, shard: u32) -> Result<Vec<Manifest>, SnapshotError> {
        let mut manifests = Vec::new();
        self.query_pages(shard, SkRange::Prefix("m#".into()), true, false, |items| {
            for item in items {
                match Manifest::from_item(&item) {
                    Ok(m) if m.meta.shard == shard => manifests.push(m),
                    Ok(_) | Err(_) => tracing::warn!(table = %self.table, shard,
                        sk = ?item.get(ATTR_SK), "ignoring unreadable snapshot manifest"),
                }
            }
            Ok(())
        })
        .await?;
        manifests.sort_unstable_by_key(|m| std::cmp::Reverse(m.meta.lsn));
        Ok(manifests)
    }

    /// Writes (or deletes) items with one BatchWriteItem request of at most 25, retrying
    /// unprocessed items and failures with [`Backoff`]. The backoff starts over whenever a call
    /// makes progress, so the loop ends after at most 25 × `AWS_ATTEMPTS_MAX` calls.
    async fn batch_write(
        &self,
        requests: Vec<WriteRequest>,
        deleting: bool,
    ) -> Result<(), SnapshotError> {
        assert!(requests.len() <= DYNAMODB_BATCH_WRITE_ITEMS_MAX);
        let counter = if deleting {
            &self.metrics.items_deleted
        } else {
            &self.metrics.items_written
        };
        let mut pending = requests;
        let mut backoff = Backoff::default();
        while !pending.is_empty() {
            let result = self
                .client
                .batch_write_item()
                .request_items(&self.table, pending.clone())
                .send()
                .await;
            let out = match result {
                Ok(out) => out,
                Err(err) => {
                    if !self
                        .should_retry("BatchWriteItem", &err, &mut backoff)
                        .await
                    {
                        let attempts = backoff.attempts().max(1);
                        return Err(self.failed("BatchWriteItem", attempts, &err));
                    }
                    continue;
                }
            };
            let unprocessed = out
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            let done = pending.len().saturating_sub(unprocessed.len());
            counter.fetch_add(done as u64, Ordering::Relaxed);
            if unprocessed.is_empty() {
                return Ok(());
            }
            // Unprocessed items are how DynamoDB throttles a batch.
            self.metrics.throttles.fetch_add(1, Ordering::Relaxed);
            if done > 0 {
                backoff = Backoff::default();
            }
            pending = unprocessed;
            if !self
                .sleep_or_give_up("BatchWriteItem", &mut backoff, "unprocessed items")
                .await
            {
                return Err(SnapshotError::Unavailable(Box::new(CallFailed {
                    op: "BatchWriteItem",
                    table: self.table.clone(),
                    attempts: backoff.attempts(),
                    detail: format!("{} items still unprocessed", pending.len()),
                })));
            }
        }
        Ok(())
    }

    /// Deletes items by key, 25 per call.
    async fn delete_keys(&self, keys: Vec<Key>) -> Result<(), SnapshotError> {
        let mut requests: Vec<WriteRequest> = Vec::with_capacity(keys.len());
        for k in keys {
            let delete = DeleteRequest::builder()
                .set_key(Some(k))
                .build()
                .expect("the key, the only required field, is set");
            requests.push(WriteRequest::builder().delete_request(delete).build());
        }
        while !requests.is_empty() {
            let rest = requests.split_off(requests.len().min(DYNAMODB_BATCH_WRITE_ITEMS_MAX));
            self.batch_write(std::mem::replace(&mut requests, rest), true)
                .await?;
        }
        Ok(())
    }

    /// Writes the chunks of `compressed`, at most [`DYNAMODB_WRITE_BATCHES_IN_FLIGHT_MAX`]
    /// BatchWriteItem requests at once (a batch's items are copied only when it is sent).
    async fn write_chunks(
        self: &Arc<Self>,
        manifest: &Manifest,
        compressed: &[u8],
    ) -> Result<(), SnapshotError> {
        // zstd output is never empty, so there is at least one chunk.
        assert!(!compressed.is_empty());
        let written_at = AttributeValue::N(now_secs().to_string());
        let data_id = manifest.data_id();
        let (shard, lsn) = (manifest.meta.shard, manifest.meta.lsn);
        let mut tasks: JoinSet<Result<(), SnapshotError>> = JoinSet::new();
        let batch_bytes = DYNAMODB_CHUNK_BYTES * DYNAMODB_BATCH_WRITE_ITEMS_MAX;
        for (batch_index, batch) in compressed.chunks(batch_bytes).enumerate() {
            while tasks.len() >= DYNAMODB_WRITE_BATCHES_IN_FLIGHT_MAX {
                join_one(&mut tasks).await?;
            }
            let mut requests = Vec::with_capacity(DYNAMODB_BATCH_WRITE_ITEMS_MAX);
            for (i, chunk) in batch.chunks(DYNAMODB_CHUNK_BYTES).enumerate() {
                let index = batch_index * DYNAMODB_BATCH_WRITE_ITEMS_MAX + i;
                let mut item = key(shard, chunk_sk(lsn, &data_id, index));
                item.insert(
                    ATTR_DATA.into(),
                    AttributeValue::B(Blob::new(chunk.to_vec())),
                );
                item.insert(ATTR_WRITTEN_AT.into(), written_at.clone());
                let put = PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .expect("the item, the only required field, is set");
                requests.push(WriteRequest::builder().put_request(put).build());
            }
            let inner = Arc::clone(self);
            tasks.spawn(async move { inner.batch_write(requests, false).await });
        }
        while !tasks.is_empty() {
            join_one(&mut tasks).await?;
        }
        Ok(())
    }

    /// Puts the manifest unless one exists. Returns `Ok(false)` when one already did.
    async fn put_manifest(&self, manifest: &Manifest) -> Result<bool, SnapshotError> {
        let item = manifest.to_item();
        let out = self
            .send("PutItem", || {
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item.clone()))
                    .condition_expression("attribute_not_exists(#sk)")
                    .expression_attribute_names("#sk", ATTR_SK)
                    .send()
            })
            .await;
        match out {
            Ok(_) => {
                self.metrics.items_written.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err((err, _))
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err((err, attempts)) => Err(self.failed("PutItem", attempts, &err)),
        }
    }

    /// Returns the compressed data of a snapshot, checking every chunk's index and size, the
    /// chunk count and the BLAKE3 of the whole.
    async fn read_chunks(&self, manifest: &Manifest) -> Result<Vec<u8>, SnapshotError> {
        let meta = &manifest.meta;
        let corrupted = |reason: String| SnapshotError::Corrupted {
            shard: meta.shard,
            lsn: meta.lsn,
            reason,
        };
        let data_id = manifest.data_id();
        // `Manifest::from_item` checked that the size matches the chunk count (≤ the maximum).
        let total = usize::try_from(manifest.compressed_bytes)
            .map_err(|_| corrupted("compressed size over the address space".into()))?;
        let mut compressed = Vec::with_capacity(total);
        let mut next_index = 0usize;
        let range = SkRange::Between(
            chunk_sk(meta.lsn, &data_id, 0),
            chunk_sk(meta.lsn, &data_id, manifest.num_chunks - 1),
        );
        self.query_pages(meta.shard, range, false, false, |items| {
            for item in items {
                let index = match item.get(ATTR_SK) {
                    Some(AttributeValue::S(sk)) => parse_chunk_sk(sk).map(|(_, _, i)| i),
                    _ => None,
                };
                if index != Some(next_index) {
                    return Err(corrupted(format!(
                        "chunk {next_index} missing (found {index:?})"
                    )));
                }
                let Some(AttributeValue::B(data)) = item.get(ATTR_DATA) else {
                    return Err(corrupted(format!("chunk {next_index} has no data")));
                };
                let expected = if next_index + 1 == manifest.num_chunks {
                    total - (manifest.num_chunks - 1) * DYNAMODB_CHUNK_BYTES
                } else {
                    DYNAMODB_CHUNK_BYTES
                };
                if data.as_ref().len() != expected {
                    return Err(corrupted(format!(
                        "chunk {next_index} is {} bytes, expected {expected}",
                        data.as_ref().len()
                    )));
                }
                compressed.extend_from_slice(data.as_ref());
                next_index += 1;
            }
            Ok(())
        })
        .await?;
        if next_index != manifest.num_chunks {
            return Err(corrupted(format!(
                "chunk {next_index} missing: {next_index} of {} chunks present",
                manifest.num_chunks
            )));
        }
        if blake3::hash(&compressed).as_bytes() != &manifest.compressed_blake3 {
            return Err(corrupted(
                "compressed data checksum (blake3) mismatch".into(),
            ));
        }
        Ok(compressed)
    }

    /// Deletes the chunk items of `shard` with an LSN in `lo..=hi` that belong to a dropped
    /// snapshot, or that no manifest references and are older than the orphan age. The caller
    /// passes ranges that hold no kept snapshot.
    async fn delete_chunks_in(
        &self,
        shard: u32,
        lo: Lsn,
        hi: Lsn,
        dropped: &HashSet<Lsn>,
    ) -> Result<(), SnapshotError> {
        let now = now_secs();
        let mut doomed: Vec<Key> = Vec::new();
        // '~' sorts after the hex digits of a data id: the bound covers every chunk of `hi`.
        let range = SkRange::Between(format!("c#{lo:020}"), format!("c#{hi:020}#~"));
        self.query_pages(shard, range, false, true, |items| {
            for item in items {
                let Some(AttributeValue::S(sk)) = item.get(ATTR_SK) else {
                    continue;
                };
                let Some((lsn, _, _)) = parse_chunk_sk(sk) else {
                    continue;
                };
                let written_at = match item.get(ATTR_WRITTEN_AT) {
                    Some(AttributeValue::N(t)) => t.parse().unwrap_or(0),
                    _ => 0,
                };
                let old = now.saturating_sub(written_at) >= DYNAMODB_ORPHAN_CHUNK_AGE_MIN_SECS;
                if dropped.contains(&lsn) || old {
                    doomed.push(key(shard, sk.clone()));
                }
            }
            Ok(())
        })
        .await?;
        // Keys only (~100 bytes each), bounded by the chunks of the dropped snapshots.
        self.delete_keys(doomed).await
    }
}

fn fault_name(fault: Fault) -> &'static str {
    match fault {
        Fault::Throttled => "throttled",
        Fault::Transient => "transient",
        Fault::Fatal => "fatal",
    }
}

/// A sort-key condition of a Query.
enum SkRange {
    /// `begins_with(sk, prefix)`.
    Prefix(String),
    /// `sk BETWEEN lo AND hi` (inclusive).
    Between(String, String),
}

async fn join_one(tasks: &mut JoinSet<Result<(), SnapshotError>>) -> Result<(), SnapshotError> {
    match tasks.join_next().await {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(join)) => Err(SnapshotError::Unavailable(Box::new(join))),
    }
}

fn record_latency(count: &AtomicU64, sum: &AtomicU64, max: &AtomicU64, started: Instant) {
    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    count.fetch_add(1, Ordering::Relaxed);
    sum.fetch_add(us, Ordering::Relaxed);
    max.fetch_max(us, Ordering::Relaxed);
}

#[async_trait]
impl SnapshotStore for DynamoDbSnapshotStore {
    async fn put(&self, meta: SnapshotMeta, data: Vec<u8>) -> Result<(), SnapshotError> {
        let started = Instant::now();
        verify(&meta, &data)?;
        let (shard, lsn) = (meta.shard, meta.lsn);
        if data.len() > SNAPSHOT_BYTES_MAX {
            return Err(SnapshotError::Corrupted {
                shard,
                lsn,
                reason: format!("{} bytes, over the limit {SNAPSHOT_BYTES_MAX}", data.len()),
            });
        }
        let raw_bytes = data.len() as u64;
        let compressed = crate::blocking::run(move || compress(&data))
            .await
            .map_err(|e| SnapshotError::Unavailable(Box::new(e)))?
            .map_err(|e| SnapshotError::Unavailable(Box::new(e)))?;
        let manifest = Manifest::new(meta, &compressed);
        let conflict = |existing: &Manifest| SnapshotError::Corrupted {
            shard,
            lsn,
            reason: format!(
                "a different snapshot is already stored at this position ({} bytes, crc32c \
                 {:08x})",
                existing.meta.size_bytes, existing.meta.crc32c
            ),
        };
        // A repeated put (a retry of the caller) finds the manifest and writes nothing.
        if let Some(existing) = self.inner.get_manifest(shard, lsn).await? {
            return if existing.same_data(&manifest) {
                Ok(())
            } else {
                Err(conflict(&existing))
            };
        }
        self.inner.write_chunks(&manifest, &compressed).await?;
        drop(compressed);
        if !self.inner.put_manifest(&manifest).await? {
            // Another put (or our own request whose answer was lost) got there first.
            let existing = self.inner.get_manifest(shard, lsn).await?.ok_or_else(|| {
                SnapshotError::Unavailable(
                    format!("manifest of shard {shard} lsn {lsn} vanished after a conflict").into(),
                )
            })?;
            if !existing.same_data(&manifest) {
                // Our chunks are content-addressed, so they never overwrote the winner's.
                let data_id = manifest.data_id();
                let ours = (0..manifest.num_chunks)
                    .map(|i| key(shard, chunk_sk(lsn, &data_id, i)))
                    .collect();
                if let Err(e) = self.inner.delete_keys(ours).await {
                    tracing::warn!(shard, lsn, error = %e, "could not delete chunks of a lost put");
                }
                return Err(conflict(&existing));
            }
        }
        let m = &self.inner.metrics;
        m.raw_bytes_written.fetch_add(raw_bytes, Ordering::Relaxed);
        m.compressed_bytes_written
            .fetch_add(manifest.compressed_bytes, Ordering::Relaxed);
        record_latency(&m.puts, &m.put_us_sum, &m.put_us_max, started);
        tracing::debug!(table = %self.inner.table, shard, lsn, raw_bytes,
            compressed_bytes = manifest.compressed_bytes, chunks = manifest.num_chunks,
            "snapshot stored");
        Ok(())
    }

    async fn list(&self, shard: u32) -> Result<Vec<SnapshotMeta>, SnapshotError> {
        Ok(self
            .inner
            .list_manifests(shard)
            .await?
            .into_iter()
            .map(|m| m.meta)
            .collect())
    }

    async fn get(&self, meta: &SnapshotMeta) -> Result<Vec<u8>, SnapshotError> {
        let started = Instant::now();
        let manifest = self.inner.get_manifest(meta.shard, meta.lsn).await?.ok_or(
            SnapshotError::NotFound {
                shard: meta.shard,
                lsn: meta.lsn,
            },
        )?;
        let compressed = self.inner.read_chunks(&manifest).await?;
        let stored = manifest.meta.clone();
        // `Manifest::from_item` bounded the size by SNAPSHOT_BYTES_MAX.
        let size_bytes = usize::try_from(stored.size_bytes).unwrap_or(usize::MAX);
        let data = crate::blocking::run(move || decompress(&compressed, size_bytes))
            .await
            .map_err(|e| SnapshotError::Unavailable(Box::new(e)))?
            .map_err(|e| SnapshotError::Corrupted {
                shard: meta.shard,
                lsn: meta.lsn,
                reason: format!("zstd: {e}"),
            })?;
        // Against the stored manifest, then against what the caller believes it asked for.
        verify(&stored, &data)?;
        verify(meta, &data)?;
        let m = &self.inner.metrics;
        record_latency(&m.gets, &m.get_us_sum, &m.get_us_max, started);
        Ok(data)
    }

    async fn retain(&self, shard: u32, keep: usize) -> Result<(), SnapshotError> {
        let manifests = self.inner.list_manifests(shard).await?;
        let Some(newest_lsn) = manifests.first().map(|m| m.meta.lsn) else {
            return Ok(());
        };
        let (kept, dropped) = manifests.split_at(keep.min(manifests.len()));
        // Manifests first: a snapshot stops being listed before its data goes.
        let manifest_keys = dropped
            .iter()
            .map(|m| key(shard, manifest_sk(m.meta.lsn)))
            .collect();
        self.inner.delete_keys(manifest_keys).await?;
        let dropped_lsns: HashSet<Lsn> = dropped.iter().map(|m| m.meta.lsn).collect();
        // Chunks are deleted in the LSN ranges between kept snapshots: below the oldest kept
        // one lie the dropped snapshots and old orphans, between two kept ones only orphans.
        // Nothing above the newest manifest is touched: a put may be writing there.
        let mut kept_lsns: Vec<Lsn> = kept.iter().map(|m| m.meta.lsn).collect();
        kept_lsns.sort_unstable();
        let mut lo: Lsn = 0;
        for &kept_lsn in &kept_lsns {
            if kept_lsn > lo {
                self.inner
                    .delete_chunks_in(shard, lo, kept_lsn - 1, &dropped_lsns)
                    .await?;
            }
            lo = kept_lsn.saturating_add(1);
        }
        if kept_lsns.is_empty() {
            self.inner
                .delete_chunks_in(shard, 0, newest_lsn, &dropped_lsns)
                .await?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("dynamodb:{}", self.inner.table)
    }

    fn metrics(&self) -> Vec<MetricSample> {
        use MetricKind::{Counter, Gauge};
        let m = &self.inner.metrics;
        let count = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e6;
        let sample = |name, help, kind, value| MetricSample {
            name,
            help,
            kind,
            labels: vec![("table", self.inner.table.clone())],
            value,
        };
        let mut out = vec![
            sample(
                "saldo_dynamodb_snapshot_puts_total",
                "Snapshots stored.",
                Counter,
                count(&m.puts),
            ),
            sample(
                "saldo_dynamodb_snapshot_put_seconds_sum",
                "Time spent storing snapshots.",
                Counter,
                secs(&m.put_us_sum),
            ),
            sample(
                "saldo_dynamodb_snapshot_put_seconds_max",
                "Slowest snapshot put.",
                Gauge,
                secs(&m.put_us_max),
            ),
            sample(
                "saldo_dynamodb_snapshot_gets_total",
                "Snapshots read and verified.",
                Counter,
                count(&m.gets),
            ),
            sample(
                "saldo_dynamodb_snapshot_get_seconds_sum",
                "Time spent reading snapshots.",
                Counter,
                secs(&m.get_us_sum),
            ),
            sample(
                "saldo_dynamodb_snapshot_get_seconds_max",
                "Slowest snapshot get.",
                Gauge,
                secs(&m.get_us_max),
            ),
            sample(
                "saldo_dynamodb_snapshot_retries_total",
                "DynamoDB calls retried after a backoff.",
                Counter,
                count(&m.retries),
            ),
            sample(
                "saldo_dynamodb_snapshot_throttles_total",
                "Throttling errors and batches with unprocessed items.",
                Counter,
                count(&m.throttles),
            ),
            sample(
                "saldo_dynamodb_snapshot_items_written_total",
                "Chunk and manifest items put.",
                Counter,
                count(&m.items_written),
            ),
            sample(
                "saldo_dynamodb_snapshot_items_deleted_total",
                "Items deleted by retention.",
                Counter,
                count(&m.items_deleted),
            ),
        ];
        for (kind, value) in [
            ("raw", &m.raw_bytes_written),
            ("compressed", &m.compressed_bytes_written),
        ] {
            let mut s = sample(
                "saldo_dynamodb_snapshot_bytes_written_total",
                "Snapshot bytes stored, before (raw) and after (compressed) zstd.",
                Counter,
                count(value),
            );
            s.labels.push(("kind", kind.to_string()));
            out.push(s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_round_trip_and_sort_by_lsn_then_index() {
        let sk = chunk_sk(1234, "00ff00ff00ff00ff", 7);
        assert_eq!(parse_chunk_sk(&sk), Some((1234, "00ff00ff00ff00ff", 7)));
        assert!(chunk_sk(9, "ffffffffffffffff", 999_999) < chunk_sk(10, "0000000000000000", 0));
        assert!(chunk_sk(9, "aa", 1) < chunk_sk(9, "aa", 2));
        // The range upper bound of `retain` covers every chunk of its LSN.
        assert!(chunk_sk(9, "ffffffffffffffff", 999_999) < format!("c#{:020}#~", 9));
        assert!(parse_chunk_sk(&manifest_sk(3)).is_none());
    }

    #[test]
    fn manifest_item_round_trips_and_detects_damage() {
        let data = vec![7u8; 1000];
        let meta = super::super::meta_for(3, 42, [9; 32], 5, &data);
        let compressed = compress(&data).expect("compresses");
        let manifest = Manifest::new(meta, &compressed);
        let mut item = manifest.to_item();
        assert_eq!(Manifest::from_item(&item), Ok(manifest.clone()));
        item.insert(ATTR_NUM_CHUNKS.into(), AttributeValue::N("2".into()));
        assert!(
            Manifest::from_item(&item).is_err(),
            "chunk count must match the size"
        );
        let mut moved = manifest.to_item();
        moved.insert(ATTR_SK.into(), AttributeValue::S(manifest_sk(43)));
        assert!(
            Manifest::from_item(&moved).is_err(),
            "key and body must agree"
        );
    }

    #[test]
    fn chunk_items_fit_dynamodb_with_the_longest_keys() {
        let sk = chunk_sk(u64::MAX, "ffffffffffffffff", DYNAMODB_CHUNKS_MAX);
        let overhead = ATTR_PK.len()
            + pk(u32::MAX).len()
            + ATTR_SK.len()
            + sk.len()
            + ATTR_DATA.len()
            + ATTR_WRITTEN_AT.len()
            + 21;
        assert!(overhead <= crate::limits::DYNAMODB_CHUNK_ITEM_OVERHEAD_BYTES_MAX);
    }

    #[test]
    fn throttling_codes_are_the_ones_dynamodb_sends() {
        assert!(THROTTLING_CODES.contains(&"ProvisionedThroughputExceededException"));
        assert!(THROTTLING_CODES.contains(&"RequestLimitExceeded"));
        assert_eq!(fault_name(Fault::Throttled), "throttled");
    }
}
