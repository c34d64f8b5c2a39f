//! The pure state of one shard — accounts, the transfers and entries whose home is the shard,
//! and the transfers credited on it — as the fold of the shard's stream. Restore, snapshots,
//! the snapshotter, the `saldo shard` tool and the simulator use it; the live node keeps the
//! same data spread over its actors and tables, changed by the same `AccountState::apply`.
//!
//! A movement's *home* is the shard of its debit account (transfers) or of its account
//! (entries): that shard's stream holds the hold, the commit or release, and the rejections.

use std::collections::{HashMap, HashSet};

use saldo_persistence::{record, Lsn, Record, RecordHash};
use serde::{Deserialize, Serialize};

use crate::{
    account::AccountState,
    event::{self, Event},
    types::{
        AccountId, MovementBody, MovementId, MovementStatus, MovementView, Rejection, Timestamp,
    },
};

/// What the ledger knows of a transfer or entry at its home shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovementRecord {
    /// The original request.
    pub body: MovementBody,
    /// Where it stands.
    pub status: MovementStatus,
    /// Why it was refused.
    pub rejection_opt: Option<Rejection>,
    /// When it was first recorded.
    pub created_at: Timestamp,
    /// For an applied entry: the balance right after it.
    pub balance_after_minor_opt: Option<i64>,
}

impl MovementRecord {
    /// Returns the reader's view.
    pub fn view(&self) -> MovementView {
        MovementView {
            body: self.body.clone(),
            status: self.status,
            rejection_opt: self.rejection_opt.clone(),
            created_at: self.created_at,
            balance_after_minor_opt: self.balance_after_minor_opt,
        }
    }

    /// Returns the home-shard record an event creates, if it creates one.
    pub fn created_by(event: &Event) -> Option<(MovementId, MovementRecord)> {
        let (id, body, status, rejection_opt, balance_after_minor_opt, at) = match event {
            Event::EntryApplied {
                entry,
                balance_after_minor,
                at,
            } => (
                &entry.entry_id,
                MovementBody::Entry(entry.clone()),
                MovementStatus::Committed,
                None,
                Some(*balance_after_minor),
                at,
            ),
            Event::EntryRejected { entry, reason, at } => (
                &entry.entry_id,
                MovementBody::Entry(entry.clone()),
                MovementStatus::Rejected,
                Some(reason.clone()),
                None,
                at,
            ),
            Event::HoldPlaced { transfer, at, .. } => (
                &transfer.transfer_id,
                MovementBody::Transfer(transfer.clone()),
                MovementStatus::Pending,
                None,
                None,
                at,
            ),
            Event::TransferRejected {
                transfer,
                reason,
                at,
            } => (
                &transfer.transfer_id,
                MovementBody::Transfer(transfer.clone()),
                MovementStatus::Rejected,
                Some(reason.clone()),
                None,
                at,
            ),
            _ => return None,
        };
        Some((
            id.clone(),
            MovementRecord {
                body,
                status,
                rejection_opt,
                created_at: *at,
                balance_after_minor_opt,
            },
        ))
    }
}

/// Why a stream or snapshot cannot be folded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shard {shard} at lsn {lsn}: {reason}")]
pub struct FoldError {
    /// The shard.
    pub shard: u32,
    /// Where.
    pub lsn: Lsn,
    /// What is wrong.
    pub reason: String,
}

/// The state of one shard as of a stream position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    /// The shard.
    pub shard: u32,
    /// Every event up to and including this LSN is folded in.
    pub lsn: Lsn,
    /// Hash of the record whose last LSN is `lsn` (zeros at the start).
    pub record_hash: RecordHash,
    /// The accounts of the shard.
    pub accounts: HashMap<AccountId, AccountState>,
    /// Movements whose home is this shard.
    pub movements: HashMap<MovementId, MovementRecord>,
    /// Transfers credited to accounts of this shard (phase 2 done), for recovery.
    pub credited: HashSet<MovementId>,
    /// Atomic batches decided on this shard (their holds are to be finished), for recovery.
    pub batches_committed: HashSet<MovementId>,
    /// Rows of history kept per account.
    pub movements_window: usize,
}

/// Version tag of the snapshot encoding.
const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct SnapshotData {
    format: u32,
    state: ShardState,
}

impl ShardState {
    /// Returns the empty state of a shard (before its first event).
    pub fn empty(shard: u32, movements_window: usize) -> ShardState {
        ShardState {
            shard,
            lsn: 0,
            record_hash: [0; 32],
            accounts: HashMap::new(),
            movements: HashMap::new(),
            credited: HashSet::new(),
            batches_committed: HashSet::new(),
            movements_window,
        }
    }

    /// Folds one event. Panics on an event that contradicts the state: the stream was verified,
    /// so that is a bug, and a crash beats a wrong balance.
    pub fn apply(&mut self, event: &Event) {
        let window = self.movements_window;
        match event {
            Event::AccountOpened { cmd, at } => {
                let prev = self
                    .accounts
                    .insert(cmd.account_id.clone(), AccountState::open(cmd, *at));
                assert!(prev.is_none(), "account {} opened twice", cmd.account_id);
            }
            Event::EntryApplied { entry, .. } => {
                self.account(&entry.account_id).apply(event, window)
            }
            Event::HoldPlaced { transfer, .. } => self
                .account(&transfer.debit_account_id)
                .apply(event, window),
            Event::CreditApplied { transfer, .. } => {
                self.account(&transfer.credit_account_id)
                    .apply(event, window);
                assert!(
                    self.credited.insert(transfer.transfer_id.clone()),
                    "credited twice"
                );
            }
            Event::HoldCommitted {
                transfer_id,
                debit_account_id,
                ..
            } => {
                self.account(debit_account_id).apply(event, window);
                let m = self
                    .movements
                    .get_mut(transfer_id)
                    .expect("commit of a known transfer");
                assert_eq!(m.status, MovementStatus::Pending);
                m.status = MovementStatus::Committed;
            }
            Event::HoldReleased {
                transfer_id,
                debit_account_id,
                reason,
                ..
            } => {
                self.account(debit_account_id).apply(event, window);
                let m = self
                    .movements
                    .get_mut(transfer_id)
                    .expect("release of a known transfer");
                assert_eq!(m.status, MovementStatus::Pending);
                m.status = MovementStatus::Rejected;
                m.rejection_opt = Some(reason.clone());
            }
            Event::BatchCommitted { batch_id, .. } => {
                assert!(
                    self.batches_committed.insert(batch_id.clone()),
                    "batch decided twice"
                );
            }
            Event::EntryRejected { .. } | Event::TransferRejected { .. } => {}
        }
        if let Some((id, record)) = MovementRecord::created_by(event) {
            let prev = self.movements.insert(id.clone(), record);
            assert!(prev.is_none(), "movement {id} took effect twice");
        }
    }

    fn account(&mut self, id: &AccountId) -> &mut AccountState {
        self.accounts
            .get_mut(id)
            .unwrap_or_else(|| panic!("event for unknown account {id}"))
    }

    /// Folds a verified stream record, skipping events at or below `self.lsn` (a record may
    /// straddle the position). Checks continuity and the hash chain.
    pub fn apply_record(&mut self, rec: &Record) -> Result<(), FoldError> {
        let err = |reason: String| FoldError {
            shard: self.shard,
            lsn: rec.first_lsn,
            reason,
        };
        if rec.shard != self.shard {
            return Err(err(format!("record of shard {}", rec.shard)));
        }
        if rec.last_lsn <= self.lsn {
            return Ok(());
        }
        if rec.first_lsn > self.lsn + 1 {
            return Err(err(format!(
                "gap: state at {}, record starts at {}",
                self.lsn, rec.first_lsn
            )));
        }
        if rec.first_lsn == self.lsn + 1 {
            // The first record of a shard follows the all-zero hash at LSN 0.
            record::check_follows(Some((self.lsn, self.record_hash)), rec)
                .map_err(|r| err(r.into()))?;
        }
        let events = event::decode_all(&rec.payload).map_err(|e| err(e.to_string()))?;
        if events.len() as u64 != rec.last_lsn - rec.first_lsn + 1 {
            return Err(err(format!(
                "{} events for lsns {}..={}",
                events.len(),
                rec.first_lsn,
                rec.last_lsn
            )));
        }
        for (lsn, ev) in (rec.first_lsn..).zip(&events) {
            if lsn > self.lsn {
                self.apply(ev);
            }
        }
        self.lsn = rec.last_lsn;
        self.record_hash = rec.hash;
        Ok(())
    }

    /// Returns the transfers with an open hold in this shard.
    pub fn open_holds(&self) -> Vec<crate::account::Hold> {
        let mut out: Vec<_> = self
            .accounts
            .values()
            .flat_map(|a| a.holds().iter().cloned())
            .collect();
        out.sort_unstable_by(|a, b| a.transfer.transfer_id.cmp(&b.transfer.transfer_id));
        out
    }

    /// Encodes the state as a snapshot blob (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(&SnapshotData {
            format: SNAPSHOT_FORMAT,
            state: self.clone(),
        })
        .expect("state serializes")
    }

    /// Decodes a snapshot blob.
    pub fn decode(bytes: &[u8]) -> Result<ShardState, String> {
        let data: SnapshotData = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        if data.format != SNAPSHOT_FORMAT {
            return Err(format!("unknown snapshot format {}", data.format));
        }
        Ok(data.state)
    }

    /// Returns the sum of balances of the accounts in `currency`.
    pub fn total_minor(&self, currency: &str) -> i128 {
        self.accounts
            .values()
            .filter(|a| a.currency().code() == currency)
            .map(|a| i128::from(a.balance_minor()))
            .sum()
    }
}

/// Returns a digest of account states, independent of their order.
pub fn digest<'a>(accounts: impl IntoIterator<Item = &'a AccountState>) -> [u8; 32] {
    let mut all: Vec<&AccountState> = accounts.into_iter().collect();
    all.sort_unstable_by(|a, b| a.id().cmp(b.id()));
    let mut hasher = blake3::Hasher::new();
    for a in all {
        a.digest_into(&mut hasher);
    }
    *hasher.finalize().as_bytes()
}
