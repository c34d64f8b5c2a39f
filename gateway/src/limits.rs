//! Every bound of the gateway, in one place, with the reason for its value.
//!
//! The relations between limits are checked at compile time at the bottom of this file.

use saldo_engine::types::{DESCRIPTION_BYTES_MAX, ID_BYTES_MAX};

/// Largest request body of every route but the batch one. A transfer or an entry is well under
/// 1 KiB; 64 KiB leaves room for account metadata and stops a client from making the gateway
/// buffer megabytes per request.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// Most transfers in one `POST /v1/transfers/batch`. The issue asks for at least 8,000; 8,190
/// keeps a full batch plus a little headroom under the engine's in-flight bound (10,000 by
/// default), so an atomic batch never trips the engine's overload answer on its own.
pub const TRANSFER_BATCH_MAX: usize = 8_190;

/// Longest amount string (digits, one point). `i64::MAX` has 19 digits; 32 leaves room for a
/// scale of up to 4 and leading zeros while keeping `rust_decimal` away from pathological input.
pub const AMOUNT_CHARS_MAX: usize = 32;

/// Upper bound of the JSON size of one batch item without escapes: three IDs, the longest
/// amount, the currency, the longest description, plus keys and punctuation (96 bytes).
pub const BATCH_ITEM_JSON_BYTES_MAX: usize =
    3 * ID_BYTES_MAX + AMOUNT_CHARS_MAX + 3 + DESCRIPTION_BYTES_MAX + 96;

/// Largest body of `POST /v1/transfers/batch`: a full batch of maximal items fits (checked
/// below), rounded up to 6 MiB.
pub const BATCH_BODY_BYTES_MAX: usize = 6 * 1024 * 1024;

/// Largest account metadata (a JSON object), in bytes once re-serialized: the engine's bound
/// (it stores metadata in every snapshot).
pub const METADATA_BYTES_MAX: usize = saldo_engine::limits::METADATA_BYTES_MAX;

/// Snapshots per retention period of a stream whose records expire (the snapshotter's bound,
/// which `saldo serve` checks too).
pub use saldo_snapshotter::RETENTION_PER_SNAPSHOT_INTERVAL_MIN;

/// First capacity of the buffer a JSON answer is serialized into. A transfer's answer with the
/// longest IDs and no description is under 400 bytes (three IDs, then
/// [`TRANSFER_ANSWER_BYTES_BUT_IDS_MAX`] of keys, status, amount, currency and time), so it is
/// written with one allocation and no copy; a longer answer grows the buffer as it goes.
pub const JSON_ANSWER_BYTES_INITIAL: usize = 512;

/// Bytes of a transfer's answer besides its three IDs and its description: keys and
/// punctuation (~110), the status, the longest amount (44), the currency and the time (27).
pub const TRANSFER_ANSWER_BYTES_BUT_IDS_MAX: usize = 200;

/// Rows returned by `GET …/movements` when the request names no `limit`.
pub const MOVEMENTS_PAGE_DEFAULT: usize = 50;

/// Most rows one page of `GET …/movements` returns: the engine's bound.
pub const MOVEMENTS_PAGE_MAX: usize = saldo_engine::limits::MOVEMENTS_PAGE_MAX;

/// Widest range of `GET …/daily`, in days (inclusive): the engine's bound (a leap year). The
/// answer has one row per day.
pub const DAILY_RANGE_DAYS_MAX: i32 = saldo_engine::limits::DAILY_RANGE_DAYS_MAX;

/// Default bound on one request's handling time. A write that times out may still complete in
/// the engine: the client retries with the same ID and gets the original outcome.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Default bound on requests being handled at once; beyond it the gateway sheds load with 503
/// instead of queueing. The engine bounds transfers in flight per node at 10,000 by default.
pub const CONCURRENCY_MAX_DEFAULT: usize = 8_192;

/// `Retry-After` seconds sent with 503 answers (overload, not ready, timeout).
pub const RETRY_AFTER_S_UNAVAILABLE: u64 = 1;

/// Clients the rate limiter remembers at once. Past this, idle clients are forgotten first,
/// then a whole shard of the table is reset (the limiter fails open rather than grow).
pub const RATE_LIMIT_CLIENTS_MAX: usize = 100_000;

/// Verified bearer tokens kept so that a token is checked cryptographically once, not on every
/// request (an RS256 verification costs tens of microseconds).
pub const TOKEN_CACHE_ENTRIES_MAX: usize = 50_000;

/// Longest `Authorization` header value accepted, in bytes (Cognito access tokens are ~1 KiB).
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;

/// Largest JWKS document accepted from a file or URL.
pub const JWKS_BYTES_MAX: usize = 1024 * 1024;

/// Shortest interval between two JWKS refreshes triggered by an unknown `kid`, so that tokens
/// with made-up key IDs cannot make the gateway hammer the identity provider.
pub const JWKS_REFRESH_INTERVAL_MS_MIN: u64 = 30_000;

/// Bound on one JWKS download.
pub const JWKS_FETCH_TIMEOUT_MS: u64 = 5_000;

/// Accounts whose currency the gateway remembers (to parse entry amounts and format histories
/// without asking the engine). Past this the cache shard is cleared; it refills on demand.
pub const CURRENCY_CACHE_ENTRIES_MAX: usize = 1_000_000;

/// Client connections open at once; past it the accept loop waits (new clients queue in the
/// kernel's backlog). Each connection costs a task and its read/write buffers (tens of KiB).
pub const CONNECTIONS_MAX: usize = 16_384;

/// How long a graceful shutdown waits for in-flight requests before dropping connections.
pub const SHUTDOWN_GRACE_MS: u64 = 30_000;

/// How often the TLS certificate and key files are read to see whether they changed. Reading
/// two files of a few KiB once a second costs nothing; a rotated certificate is then served
/// within a second or two, long before the old one expires (cert-manager renews days ahead).
pub const TLS_RELOAD_INTERVAL_MS: u64 = 1_000;

/// Longest a TLS handshake may take before the connection is closed and its permit returned.
/// A handshake is two round trips; ten seconds covers a slow mobile link, and a client that
/// connects and says nothing cannot hold one of the [`CONNECTIONS_MAX`] permits for longer.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Most `--trusted-proxy` networks: the check runs on every request, and a load balancer
/// fleet is a handful of subnets.
pub const TRUSTED_PROXIES_MAX: usize = 64;

const _: () = assert!(TRANSFER_BATCH_MAX >= 8_000);
const _: () = assert!(TRANSFER_BATCH_MAX * BATCH_ITEM_JSON_BYTES_MAX <= BATCH_BODY_BYTES_MAX);
const _: () = assert!(BODY_BYTES_MAX >= METADATA_BYTES_MAX + 1024);
const _: () = assert!(MOVEMENTS_PAGE_DEFAULT <= MOVEMENTS_PAGE_MAX);
const _: () = assert!(JWKS_FETCH_TIMEOUT_MS < JWKS_REFRESH_INTERVAL_MS_MIN);
const _: () = assert!(CONNECTIONS_MAX >= CONCURRENCY_MAX_DEFAULT);
const _: () = assert!(TLS_HANDSHAKE_TIMEOUT_MS < SHUTDOWN_GRACE_MS);
const _: () = assert!(TLS_RELOAD_INTERVAL_MS >= 1_000 && TLS_RELOAD_INTERVAL_MS <= 5_000);
const _: () =
    assert!(3 * ID_BYTES_MAX + TRANSFER_ANSWER_BYTES_BUT_IDS_MAX <= JSON_ANSWER_BYTES_INITIAL);
