//! # saldo-persistence
//!
//! The write-ahead stream and the snapshot stores of saldo. This crate works in bytes and
//! [`Lsn`]s and knows nothing about accounts.
//!
//! ## Layout
//! - [`record`]: the public stream record format (version, shard, epoch, LSN range, CRC32C,
//!   hash chain) — documented in `docs/wal-format.md`.
//! - [`wal`]: the [`Wal`] trait and its backends (`wal::local_file`: preallocated segment files
//!   with fsync, one writer thread per shard; `wal::memory`: for simulation and tests).
//! - [`snapshot`]: the [`SnapshotStore`] trait and its backends (`snapshot::local_dir`,
//!   `snapshot::memory`).
//! - `aws` (feature `aws`): SDK configuration, bounded retry, compression shared by
//!   `wal::kinesis` and `snapshot::dynamodb`.
//! - `emulators` (feature `testsuite`): starts kinesalite / DynamoDB Local for a test.
//! - `faultproxy` (feature `testsuite`): an HTTP proxy that injects throttling, 5xx, lost
//!   answers and delays between a backend and its emulator.
//! - [`metrics`]: samples a backend exposes for the node's `/metrics`.
//! - [`limits`]: every bound of this crate, with the AWS limits that shape them.
//! - `testsuite` (feature `testsuite`): conformance suites every backend must pass.
//!
//! ## Invariants
//! - An `append` that returned `Ok` is durable (fsync for the file backend).
//! - Readers verify every record's checksum, the continuity of LSNs and the hash chain; they
//!   refuse gaps and never skip a corrupt record silently.
//! - A snapshot is visible only once its data is durable and its manifest written after it.
//!
//! ## Failure model
//! A torn tail (the last record half-written by a crash) is detected and zeroed on open (the
//! zeros after the last record of a preallocated segment are its end, not a torn write);
//! corruption anywhere else is an error naming the file and offset.

#![warn(missing_docs)]

#[cfg(feature = "aws")]
pub mod aws;
pub mod blocking;
#[cfg(feature = "testsuite")]
pub mod emulators;
#[cfg(feature = "testsuite")]
pub mod faultproxy;
pub mod limits;
pub mod metrics;
pub mod record;
pub mod snapshot;
pub mod wal;

#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

pub use record::{Lsn, Record, RecordHash};
pub use snapshot::{SnapshotError, SnapshotMeta, SnapshotStore};
pub use wal::{Wal, WalError};
