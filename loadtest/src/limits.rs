//! Every bound of the generator, in one place, with the reason for each.
//!
//! The generator runs against servers that may misbehave, so every buffer, list and loop is
//! bounded here; the relations between the limits are checked at compile time at the bottom.

/// Largest response the client reads; a bigger one is a transport error. A batch of 8,000
/// results is about 2 MiB of JSON, so 16 MiB leaves room without trusting the server blindly.
pub const HTTP_RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Headers parsed per response; saldo sends about ten.
pub const HTTP_HEADERS_MAX: usize = 32;

/// Connections one run may open (over HTTP/1.1 one per worker task). The server has a file
/// descriptor and a task per connection, and more than this measures its accept loop.
pub const CONNECTIONS_MAX: usize = 1_024;

/// Worker tasks (requests in flight) over HTTP/2, where a worker costs a stream and not a
/// connection. A worker holds its reused buffers (a few KiB) and shares the histograms of its
/// runtime thread, so 16,384 of them take tens of MiB; saldo serve allows 200 streams per
/// connection, so this many need at least 82 connections to run without queueing in the client.
pub const STREAMS_MAX: usize = 16_384;

/// Accounts one run may create; the expected balance of each is kept in memory.
pub const ACCOUNTS_MAX: usize = 10_000_000;

/// Transfers in one batch request of the workload: saldo's `TRANSFER_BATCH_MAX` (8,190, one
/// more than TigerBeetle's 8,189 per request, which the benchmarks compare with).
pub const BATCH_SIZE_MAX: usize = 8_190;

/// Transfers per batch request while funding the accounts during set-up.
pub const SETUP_BATCH_SIZE: usize = 1_000;

/// Acknowledged transfers and entries remembered for lookup by ID after the run. Beyond this
/// a uniform sample is kept (reservoir sampling), and the report says how many were checked.
pub const ACKS_REMEMBERED_MAX: usize = 1_000_000;

/// Writes of unknown outcome (timeout, transport error, 5xx) remembered for resolution after
/// the run. Beyond this the run cannot know its expected balances and verification fails.
pub const IN_DOUBT_MAX: usize = 100_000;

/// Times a write of unknown outcome is retried with the same ID after the run.
pub const RESOLVE_ATTEMPTS_MAX: u32 = 5;

/// Steps a sweep may take (geometric steps plus refinement).
pub const SWEEP_STEPS_MAX: u32 = 40;

/// Seconds of per-second samples kept for the progress plot and the HDR log (one day).
pub const SECONDS_RECORDED_MAX: usize = 86_400;

/// Highest latency a histogram records, in microseconds (100 s, ten times the largest useful
/// request timeout); larger values are clamped to it.
pub const LATENCY_US_MAX: u64 = 100_000_000;

/// Examples of each failed verification check printed in the report.
pub const FAILURE_EXAMPLES_MAX: usize = 5;

const _: () = assert!(SETUP_BATCH_SIZE <= BATCH_SIZE_MAX);
const _: () = assert!(CONNECTIONS_MAX <= STREAMS_MAX);
const _: () = assert!(IN_DOUBT_MAX <= ACKS_REMEMBERED_MAX);
const _: () = assert!(HTTP_RESPONSE_BYTES_MAX >= BATCH_SIZE_MAX * 1024);
