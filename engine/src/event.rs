//! Events: the facts the ledger records in its stream, and their encoding.
//!
//! A stream record's payload is a sequence of events, each a little-endian `u32` length
//! followed by the postcard encoding of an [`Event`]. Every event names the accounts it changes
//! (one, or both accounts of a transfer within one shard), so a shard's state is the fold of
//! its events in stream order (see [`crate::state`]).

use serde::{Deserialize, Serialize};

use crate::types::{Entry, MovementId, OpenAccount, Rejection, Timestamp, Transfer};

/// A fact recorded in a shard's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// An account was opened (on the account's shard).
    AccountOpened {
        /// The command as accepted.
        cmd: OpenAccount,
        /// When.
        at: Timestamp,
    },
    /// An entry was applied to its account (on the account's shard).
    EntryApplied {
        /// The entry.
        entry: Entry,
        /// The account's posted balance right after it.
        balance_after_minor: i64,
        /// When.
        at: Timestamp,
    },
    /// An entry was refused; recorded so that a retry returns the same outcome.
    EntryRejected {
        /// The entry.
        entry: Entry,
        /// Why.
        reason: Rejection,
        /// When.
        at: Timestamp,
    },
    /// Phase 1 of a transfer: funds reserved on the debit account (on its shard).
    HoldPlaced {
        /// The transfer.
        transfer: Transfer,
        /// The atomic batch it belongs to (the batch's ID is its first transfer's ID).
        batch_opt: Option<MovementId>,
        /// When.
        at: Timestamp,
    },
    /// A transfer was refused before any hold (on the debit account's shard); recorded so that a
    /// retry returns the same outcome.
    TransferRejected {
        /// The transfer.
        transfer: Transfer,
        /// Why.
        reason: Rejection,
        /// When.
        at: Timestamp,
    },
    /// Phase 2: the credit account received the amount (on the credit account's shard).
    CreditApplied {
        /// The transfer.
        transfer: Transfer,
        /// When.
        at: Timestamp,
    },
    /// The commit point of an atomic batch: every hold is placed and durable, so recovery
    /// finishes them all (without this record, it releases them all). Recorded on the home
    /// shard of the batch's first transfer.
    BatchCommitted {
        /// The batch's ID (its first transfer's ID).
        batch_id: MovementId,
        /// Its transfers, in order.
        transfer_ids: Vec<MovementId>,
        /// When.
        at: Timestamp,
    },
    /// Phase 3: the hold became a debit (on the debit account's shard). The transfer is done.
    HoldCommitted {
        /// The transfer.
        transfer_id: MovementId,
        /// Its debit account.
        debit_account_id: crate::types::AccountId,
        /// When.
        at: Timestamp,
    },
    /// Phase 3 (failure path): the hold was released and the transfer refused.
    HoldReleased {
        /// The transfer.
        transfer_id: MovementId,
        /// Its debit account.
        debit_account_id: crate::types::AccountId,
        /// Why.
        reason: Rejection,
        /// When.
        at: Timestamp,
    },
    /// A transfer between two accounts of one shard, whole: the debit and the credit at once
    /// (its hold, credit and commit in one event; design decision 4). Neither account was
    /// ever short: `decide` checked both before it was recorded.
    TransferPosted {
        /// The transfer.
        transfer: Transfer,
        /// When.
        at: Timestamp,
    },
}

impl Event {
    /// Returns the instant the event happened.
    pub fn at(&self) -> Timestamp {
        match self {
            Event::AccountOpened { at, .. }
            | Event::EntryApplied { at, .. }
            | Event::EntryRejected { at, .. }
            | Event::HoldPlaced { at, .. }
            | Event::TransferRejected { at, .. }
            | Event::CreditApplied { at, .. }
            | Event::HoldCommitted { at, .. }
            | Event::HoldReleased { at, .. }
            | Event::BatchCommitted { at, .. }
            | Event::TransferPosted { at, .. } => *at,
        }
    }

    /// Returns the movement whose fate this event decides: the first record of a transfer
    /// (its hold, its one-event posting within a shard, or its refusal) or of an entry. A
    /// movement is decided by one such event at most (I3); the phases after a hold, and a
    /// batch's decision, decide nothing new.
    pub fn decided_id(&self) -> Option<&crate::types::MovementId> {
        match self {
            Event::HoldPlaced { transfer, .. }
            | Event::TransferPosted { transfer, .. }
            | Event::TransferRejected { transfer, .. } => Some(&transfer.transfer_id),
            Event::EntryApplied { entry, .. } | Event::EntryRejected { entry, .. } => {
                Some(&entry.entry_id)
            }
            Event::AccountOpened { .. }
            | Event::CreditApplied { .. }
            | Event::HoldCommitted { .. }
            | Event::HoldReleased { .. }
            | Event::BatchCommitted { .. } => None,
        }
    }
}

/// Appends the framed encoding of `event` to `buf` and returns the bytes added.
pub fn encode_into(event: &Event, buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let buf_taken = std::mem::take(buf);
    let mut out = postcard::to_extend(event, buf_taken).expect("events always serialize");
    let len = out.len() - start - 4;
    assert!(
        len <= crate::limits::EVENT_BYTES_MAX,
        "event of {len} bytes over the limit"
    );
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    *buf = out;
    len + 4
}

/// Why a payload does not decode into events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable event at payload offset {offset}: {reason}")]
pub struct EventDecodeError {
    /// Byte offset in the payload.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

/// Decodes a record payload into its events.
pub fn decode_all(payload: &[u8]) -> Result<Vec<Event>, EventDecodeError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < payload.len() {
        let err = |reason: String| EventDecodeError { offset, reason };
        let len_bytes = payload
            .get(offset..offset + 4)
            .ok_or_else(|| err("truncated length".into()))?;
        let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        let body = payload
            .get(offset + 4..offset + 4 + len)
            .ok_or_else(|| err("truncated event".into()))?;
        out.push(postcard::from_bytes(body).map_err(|e| err(e.to_string()))?);
        offset += 4 + len;
    }
    Ok(out)
}
