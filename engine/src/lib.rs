//! # saldo-engine
//!
//! The ledger engine: accounts as actors that own their balances, two-phase transfers between
//! them, every change logged to a write-ahead stream before anyone is told it happened.
//!
//! ## Layout
//! - [`types`]: identifiers, currencies, time, commands, views, [`Rejection`] (public API types).
//! - [`account`]: the pure account state machine (`decide` / `apply`), no I/O, no clock.
//! - [`clock`]: where the time stamped on events comes from (injected; a test moves it).
//! - [`event`]: the events recorded in the stream and their encoding.
//! - [`state`]: the pure state of a shard as the fold of its stream (restore, snapshots, tools).
//! - [`table`]: the account table of a shard, for the fold and for the node alike.
//! - [`shard`]: routing of accounts to shards (FNV-1a 64, documented).
//! - [`transfer`]: a transfer's protocol as a pure step machine (phases, durability between
//!   them, recovery's resumption, the one-turn transfer within a shard).
//! - `host`: accounts hosted by their shard: an account's turn, and its messages.
//! - `log`: group commit of a shard's events into stream records.
//! - `movements`: the movement table (idempotency: every ID the node knows, each one's cell).
//! - `node`: shards, the transfer coordinator (single transfers, batches), idempotency,
//!   reads, recovery, maintenance (snapshots, checksums, shutdown).
//! - [`process`]: process-wide settings a node's binary applies at start (huge pages off).
//! - [`recovery`]: newest valid snapshot + stream tail.
//! - [`limits`]: every bound, with compile-time checks of how they relate.
//! - [`ledger`]: [`Ledger`], the public handle.
//!
//! ## Invariants (the rules of the money)
//! I1 conservation per currency; I2 acknowledged ⇒ durable; I3 each ID takes effect at most
//! once; I4 no balance below its allowance, holds counted; I5 snapshot + replay ≡ live state.
//! The account state machine asserts I4 after every event; the coordinator enforces I2 and the
//! cross-shard rule (nothing crosses a shard on the strength of a non-durable record).
//!
//! ## Failure model
//! A stream append that fails (fsync error, backend down) stops the shard from taking writes:
//! every waiter gets `Unavailable`, nothing is acknowledged, and a restart recovers from what is
//! durable. A crash at any point is recovered by restore + resolution of open holds.

#![warn(missing_docs)]

pub mod account;
pub mod clock;
mod courier;
pub mod currency;
pub mod event;
pub mod format;
pub mod history;
mod host;
pub mod ledger;
pub mod limits;
mod log;
/// The node's idempotency table. Public so that the crash simulation (`engine/tests/
/// simulation.rs`) claims, settles and restores IDs through the same code as the node.
pub mod movements;
mod node;
pub mod packed;
pub mod process;
pub mod records;
pub mod recovery;
pub mod shard;
pub mod state;
mod stats;
pub mod table;
mod threads;
pub mod transfer;
pub mod types;

pub use clock::{Clock, ManualClock};
pub use courier::{Courier, Parcel};
pub use ledger::{EngineConfig, Ledger, LedgerStats};
pub use types::*;

/// An infrastructure failure of the engine (start-up, restore, snapshots).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The configuration is invalid.
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// The stream failed.
    #[error(transparent)]
    Wal(#[from] saldo_persistence::WalError),
    /// The snapshot store failed.
    #[error(transparent)]
    Snapshot(#[from] saldo_persistence::SnapshotError),
    /// The stream or a snapshot cannot be folded into a state.
    #[error("restore failed: {0}")]
    Restore(String),
}

impl EngineError {
    /// Returns whether retrying may succeed (the backend was unavailable).
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Wal(e) => e.is_retryable(),
            EngineError::Snapshot(e) => e.is_retryable(),
            EngineError::Config(_) | EngineError::Restore(_) => false,
        }
    }
}
