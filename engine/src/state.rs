//! The pure state of one shard — accounts, the transfers and entries whose home is the shard,
//! and the transfers credited on it — as the fold of the shard's stream. Restore, snapshots,
//! the snapshotter, the `saldo shard` tool and the simulator use it; the live node keeps the
//! same data spread over its actors and tables, changed by the same `AccountState::apply`.
//!
//! A movement's *home* is the shard of its debit account (transfers) or of its account
//! (entries): that shard's stream holds the hold, the commit or release, and the rejections.

use std::{ops::Range, sync::Arc};

use bytes::Bytes;

use hashbrown::{HashMap, HashSet};

use saldo_persistence::{record, Lsn, Record, RecordHash};
use serde::{Deserialize, Serialize};

use crate::{
    account::{AccountState, Unappliable},
    event::{self, Event},
    limits::SNAPSHOT_MAP_PRESIZE_MAX,
    records::MovementMap,
    table::{AccountTable, Slot},
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
        CreatedRecord::of(event).map(|(id, created)| (id.clone(), created.to_owned()))
    }
}

/// The home-shard record an event creates ([`MovementRecord::created_by`]), borrowing the
/// event: it encodes exactly as the [`MovementRecord`] it stands for, so a fold packs a settled
/// movement without copying its request into an owned record first.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct CreatedRecord<'e> {
    pub(crate) body: BodyRef<'e>,
    pub(crate) status: MovementStatus,
    pub(crate) rejection_opt: Option<&'e Rejection>,
    pub(crate) created_at: Timestamp,
    pub(crate) balance_after_minor_opt: Option<i64>,
}

/// A [`MovementBody`] borrowed (the same variants in the same order: the same encoding).
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) enum BodyRef<'e> {
    Transfer(&'e crate::types::Transfer),
    Entry(&'e crate::types::Entry),
}

impl<'e> CreatedRecord<'e> {
    /// The record an event creates and its movement's ID, if it creates one.
    pub(crate) fn of(event: &'e Event) -> Option<(&'e MovementId, CreatedRecord<'e>)> {
        let (id, body, status, rejection_opt, balance_after_minor_opt, at) = match event {
            Event::EntryApplied {
                entry,
                balance_after_minor,
                at,
            } => (
                &entry.entry_id,
                BodyRef::Entry(entry),
                MovementStatus::Committed,
                None,
                Some(*balance_after_minor),
                at,
            ),
            Event::EntryRejected { entry, reason, at } => (
                &entry.entry_id,
                BodyRef::Entry(entry),
                MovementStatus::Rejected,
                Some(reason),
                None,
                at,
            ),
            Event::HoldPlaced { transfer, at, .. } => (
                &transfer.transfer_id,
                BodyRef::Transfer(transfer),
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
                BodyRef::Transfer(transfer),
                MovementStatus::Rejected,
                Some(reason),
                None,
                at,
            ),
            Event::TransferPosted { transfer, at } => (
                &transfer.transfer_id,
                BodyRef::Transfer(transfer),
                MovementStatus::Committed,
                None,
                None,
                at,
            ),
            _ => return None,
        };
        Some((
            id,
            CreatedRecord {
                body,
                status,
                rejection_opt,
                created_at: *at,
                balance_after_minor_opt,
            },
        ))
    }

    /// The owned record.
    pub(crate) fn to_owned(self) -> MovementRecord {
        MovementRecord {
            body: match self.body {
                BodyRef::Transfer(t) => MovementBody::Transfer(t.clone()),
                BodyRef::Entry(e) => MovementBody::Entry(e.clone()),
            },
            status: self.status,
            rejection_opt: self.rejection_opt.cloned(),
            created_at: self.created_at,
            balance_after_minor_opt: self.balance_after_minor_opt,
        }
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
    /// The record does not continue the state's chain (gap, overlap, broken hash), as opposed
    /// to a record that continues it but holds something that cannot be folded.
    pub chain: bool,
}

/// The state of one shard as of a stream position. It decodes from snapshot format 1 (the
/// whole state as one postcard value); formats 3 and 4 go through [`ShardState::encode`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ShardState {
    /// The shard.
    pub shard: u32,
    /// Every event up to and including this LSN is folded in.
    pub lsn: Lsn,
    /// Hash of the record whose last LSN is `lsn` (zeros at the start).
    pub record_hash: RecordHash,
    /// The accounts of the shard.
    pub accounts: AccountTable,
    /// Movements whose home is this shard.
    #[serde(deserialize_with = "presized_movements")]
    pub movements: MovementMap,
    /// Transfers credited to accounts of this shard (phase 2 done), for recovery.
    pub credited: HashSet<MovementId>,
    /// Atomic batches decided on this shard (their holds are to be finished), for recovery.
    pub batches_committed: HashSet<MovementId>,
    /// Rows of history kept per account.
    pub movements_window: usize,
}

/// Decodes the movements of a snapshot of format 1 as [`presized_map`] does.
fn presized_movements<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<MovementMap, D::Error> {
    presized_map(deserializer).map(MovementMap::from_map)
}

/// Decodes a map presized to the count of entries its encoding announces, up to
/// [`SNAPSHOT_MAP_PRESIZE_MAX`] (a snapshot is checksummed before it is decoded, and past that
/// the map still grows as entries come): a map of a million accounts is built without
/// rehashing a dozen times on the way (serde's default presizes only a few thousand).
fn presized_map<'de, D, K, V>(deserializer: D) -> Result<HashMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de> + Eq + std::hash::Hash,
    V: Deserialize<'de>,
{
    serde::de::DeserializeSeed::deserialize(PresizedMap::<K, V>::with_room(0), deserializer)
}

/// Decodes a map presized to the count its encoding announces plus `room` more entries (each
/// up to [`SNAPSHOT_MAP_PRESIZE_MAX`]): a restore that will fold a stream tail onto the map
/// makes room for the tail's movements at once, instead of rehashing a map of millions into a
/// bigger table while it folds.
struct PresizedMap<K, V> {
    room: usize,
    _types: std::marker::PhantomData<(K, V)>,
}

impl<K, V> PresizedMap<K, V> {
    fn with_room(room: usize) -> Self {
        PresizedMap {
            room,
            _types: std::marker::PhantomData,
        }
    }

    /// Decodes one section of a format 2 snapshot: a postcard map on its own.
    fn decode<'de>(self, bytes: &'de [u8]) -> postcard::Result<HashMap<K, V>>
    where
        K: Deserialize<'de> + Eq + std::hash::Hash,
        V: Deserialize<'de>,
    {
        serde::de::DeserializeSeed::deserialize(
            self,
            &mut postcard::Deserializer::from_bytes(bytes),
        )
    }
}

impl<'de, K, V> serde::de::DeserializeSeed<'de> for PresizedMap<K, V>
where
    K: Deserialize<'de> + Eq + std::hash::Hash,
    V: Deserialize<'de>,
{
    type Value = HashMap<K, V>;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, K, V> serde::de::Visitor<'de> for PresizedMap<K, V>
where
    K: Deserialize<'de> + Eq + std::hash::Hash,
    V: Deserialize<'de>,
{
    type Value = HashMap<K, V>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut access: A,
    ) -> Result<Self::Value, A::Error> {
        let announced = access
            .size_hint()
            .unwrap_or(0)
            .min(SNAPSHOT_MAP_PRESIZE_MAX);
        let mut map = HashMap::with_capacity(announced + self.room.min(SNAPSHOT_MAP_PRESIZE_MAX));
        while let Some((k, v)) = access.next_entry()? {
            map.insert(k, v);
        }
        Ok(map)
    }
}

/// Version tag of the snapshot encoding written today.
/// - 1: the whole `ShardState` as one postcard value (still read).
/// - 2: a header (the state without its two maps, and the byte length of each map's
///   encoding), then the accounts map, then the movements map, each encoded as in format 1
///   (still read). Restore decodes the two maps on two threads.
/// - 3: a header as format 2's, plus the IDs of the accounts with an open hold, then the
///   accounts and the movements as sections of [`crate::packed`]: each value on its own,
///   behind its length. Restore indexes the sections without decoding them (the accounts
///   and movements stay packed until something changes them), and a snapshot copies the
///   entries nobody changed since the one it was folded from (still read: each account is
///   decoded and encoded again as format 4's, once).
/// - 4: as format 3, with each account's history as its rows' bytes
///   ([`crate::history::History`]) instead of a sequence of rows, so that changing or
///   writing an account never decodes its rows.
const SNAPSHOT_FORMAT: u32 = 4;

/// Loads the accounts' section of a snapshot of format 3 or 4 (a buffer, where the section
/// lies in it, the accounts with an open hold).
type LoadAccounts = fn(Bytes, Range<usize>, &[AccountId]) -> Result<AccountTable, String>;

/// The header of a format 3 snapshot: everything but the two sections, and where they lie.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader3<Ids, Held> {
    format: u32,
    shard: u32,
    lsn: Lsn,
    record_hash: RecordHash,
    credited: Ids,
    batches_committed: Ids,
    movements_window: usize,
    /// The accounts with an open hold: restore decodes them (a packed account has none).
    held_accounts: Held,
    accounts_bytes: u64,
    movements_bytes: u64,
}

#[derive(Deserialize)]
struct SnapshotV1 {
    _format: u32,
    state: ShardState,
}

/// The header of a format 2 snapshot: everything but the two maps, and where they lie.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader<Ids> {
    format: u32,
    shard: u32,
    lsn: Lsn,
    record_hash: RecordHash,
    credited: Ids,
    batches_committed: Ids,
    movements_window: usize,
    accounts_bytes: u64,
    movements_bytes: u64,
}

impl ShardState {
    /// Returns the empty state of a shard (before its first event).
    pub fn empty(shard: u32, movements_window: usize) -> ShardState {
        ShardState {
            shard,
            lsn: 0,
            record_hash: [0; 32],
            accounts: AccountTable::default(),
            movements: MovementMap::default(),
            credited: HashSet::new(),
            batches_committed: HashSet::new(),
            movements_window,
        }
    }

    /// Folds one event that the live node decided (simulations, benches, property tests).
    /// Panics on an event that contradicts the state: that is a bug, and a crash beats a wrong
    /// balance.
    pub fn apply(&mut self, event: &Event) {
        if let Err(e) = self.try_apply(event) {
            panic!("shard {}: event does not apply: {e}: {event:?}", self.shard);
        }
    }

    /// Folds one event read from the stream, or says why it cannot be folded (the stream holds
    /// something `decide` never produces: corruption or a bug). On `Err` the state may be
    /// half-changed and must be dropped.
    pub fn try_apply(&mut self, event: &Event) -> Result<(), Unappliable> {
        let (mut side, movements) = self.sides();
        apply_to_movements(movements, event)?;
        side.apply(event)
    }

    /// The two sides of the state an event changes: the accounts' side (everything but the
    /// movements) and the movements. They are independent, so a restore folds them on two
    /// threads ([`ShardState::fold_verifying`]).
    fn sides(&mut self) -> (AccountsSide<'_>, &mut MovementMap) {
        let side = AccountsSide {
            accounts: &mut self.accounts,
            credited: &mut self.credited,
            batches_committed: &mut self.batches_committed,
            window: self.movements_window,
        };
        (side, &mut self.movements)
    }

    /// Folds a verified stream record. Checks continuity and the hash chain: the record must
    /// start right after the state's position and chain onto its hash, or lie wholly at or
    /// below it (already folded; a reader may be handed it again). A record that straddles the
    /// position means that the stream's chain changed under the state (a newer owner epoch
    /// replaced records this state folded): folding it would mix two writers' histories, so it
    /// is refused, naming the epochs.
    pub fn apply_record(&mut self, rec: &Record) -> Result<(), FoldError> {
        let Some(events) = verify_record(self.shard, (self.lsn, self.record_hash), rec)? else {
            return Ok(());
        };
        for (lsn, ev) in (rec.first_lsn..).zip(&events) {
            self.try_apply(ev)
                .map_err(|e| unappliable(self.shard, lsn, ev, &e))?;
        }
        self.lsn = rec.last_lsn;
        self.record_hash = rec.hash;
        Ok(())
    }

    /// Checks and folds `records` in order, as [`ShardState::apply_record`] does one by one,
    /// on two threads: this one checks each record (continuity, hash chain), decodes its
    /// events, hands them over and folds their movements' side, while the other folds their
    /// accounts' side (balances, holds, credits, batches) as they come. The two sides share
    /// nothing. A restore of a large shard folds its tail in about two thirds of the time.
    /// On `Err` (the first failure by LSN: a record that does not check, or an event that
    /// cannot be applied) the state must be dropped.
    pub fn fold_verifying(&mut self, records: &[Record]) -> Result<(), FoldError> {
        let shard = self.shard;
        let mut at = (self.lsn, self.record_hash);
        let (mut side, movements) = self.sides();
        let (decoded, decoded_rx) = std::sync::mpsc::channel::<(Lsn, Arc<Vec<Event>>)>();
        let at_out = &mut at;
        // The checking side runs here and the accounts' side on the helper thread; without
        // one, the checking side runs first and queues everything (the channel is unbounded).
        let (checked, accounts_out) = crate::threads::join(
            "fold-accounts",
            move || {
                for rec in records {
                    let events = match verify_record(shard, *at_out, rec) {
                        Ok(Some(events)) => Arc::new(events),
                        Ok(None) => continue,
                        Err(e) => return Err((rec.first_lsn, e)),
                    };
                    *at_out = (rec.last_lsn, rec.hash);
                    // A closed channel: the accounts' side stopped at an error of its own.
                    let _ = decoded.send((rec.first_lsn, events.clone()));
                    for (lsn, ev) in (rec.first_lsn..).zip(events.iter()) {
                        apply_to_movements(movements, ev)
                            .map_err(|e| (lsn, unappliable(shard, lsn, ev, &e)))?;
                    }
                }
                Ok(())
            },
            move || {
                for (first_lsn, events) in decoded_rx {
                    for (i, ev) in events.iter().enumerate() {
                        // The states of the accounts a few events on, fetched while this one
                        // is applied.
                        if let Some(ahead) = events.get(i + FOLD_PREFETCH_EVENTS) {
                            side.prefetch(ahead);
                        }
                        let lsn = first_lsn + i as Lsn;
                        side.apply(ev)
                            .map_err(|e| (lsn, unappliable(shard, lsn, ev, &e)))?;
                    }
                }
                Ok::<(), (Lsn, FoldError)>(())
            },
        );
        match (accounts_out, checked) {
            (Ok(()), Ok(())) => {
                (self.lsn, self.record_hash) = at;
                Ok(())
            }
            (Err((a, e)), Err((c, _))) if a <= c => Err(e),
            (_, Err((_, e))) | (Err((_, e)), _) => Err(e),
        }
    }

    /// Returns the transfers with an open hold in this shard.
    pub fn open_holds(&self) -> Vec<crate::account::Hold> {
        let mut out: Vec<_> = self
            .accounts
            .slotted()
            .flat_map(|a| a.holds().iter().cloned())
            .collect();
        out.sort_unstable_by(|a, b| a.transfer.transfer_id.cmp(&b.transfer.transfer_id));
        out
    }

    /// Encodes the state as a snapshot blob (postcard, format 3, see docs/wal-format.md). The two
    /// sections are written on two threads, the entries still packed copied as they are.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_parts().concat()
    }

    /// [`ShardState::encode`] in three parts whose concatenation is the blob: the header and
    /// the two sections, each written into a buffer of its own (a snapshot store writes them
    /// one after the other, `SnapshotStore::put_parts`, without a copy into one more buffer of
    /// the snapshot's size).
    pub fn encode_parts(&self) -> Vec<Vec<u8>> {
        let (accounts, movements) = crate::threads::join(
            "snapshot-encode",
            || {
                let slotted: usize = self
                    .accounts
                    .slotted()
                    .map(AccountState::encoded_bytes_hint)
                    .sum();
                let mut out = Vec::with_capacity(self.accounts.packed_bytes() + slotted + 10);
                self.accounts.write_section(&mut out);
                out
            },
            || {
                let mut out = Vec::with_capacity(
                    self.movements.packed_bytes() + (self.movements.len()) * 8 + 10,
                );
                self.movements.write_section(&mut out);
                out
            },
        );
        let held: Vec<&AccountId> = self
            .accounts
            .slotted()
            .filter(|a| !a.holds().is_empty())
            .map(|a| a.id())
            .collect();
        let header = SnapshotHeader3 {
            format: SNAPSHOT_FORMAT,
            shard: self.shard,
            lsn: self.lsn,
            record_hash: self.record_hash,
            credited: &self.credited,
            batches_committed: &self.batches_committed,
            movements_window: self.movements_window,
            held_accounts: held,
            accounts_bytes: accounts.len() as u64,
            movements_bytes: movements.len() as u64,
        };
        let header = postcard::to_allocvec(&header).expect("header serializes");
        vec![header, accounts, movements]
    }

    /// Decodes a snapshot blob of any known format.
    pub fn decode(bytes: &[u8]) -> Result<ShardState, String> {
        Self::decode_with_room(Bytes::copy_from_slice(bytes), 0)
    }

    /// Decodes a snapshot blob of any known format, with room in the movements map for
    /// `movements_room` more decoded (format 1 presizes to its own count only). A format 3
    /// state keeps the blob: its accounts and movements stay packed in it.
    pub fn decode_with_room(bytes: Bytes, movements_room: usize) -> Result<ShardState, String> {
        let (format, _) = postcard::take_from_bytes::<u32>(&bytes).map_err(|e| e.to_string())?;
        match format {
            1 => Ok(postcard::from_bytes::<SnapshotV1>(&bytes)
                .map_err(|e| e.to_string())?
                .state),
            2 => Self::decode_sections(&bytes, movements_room),
            3 => Self::decode_packed(bytes, movements_room, AccountTable::load_legacy_section),
            SNAPSHOT_FORMAT => {
                Self::decode_packed(bytes, movements_room, AccountTable::load_section)
            }
            other => Err(format!("unknown snapshot format {other}")),
        }
    }

    /// Decodes a format 3 or 4 snapshot: its header, and an index of each section, on two
    /// threads. `load_accounts` loads the accounts' section of the format.
    fn decode_packed(
        bytes: Bytes,
        movements_room: usize,
        load_accounts: LoadAccounts,
    ) -> Result<ShardState, String> {
        let (header, rest) = postcard::take_from_bytes::<
            SnapshotHeader3<HashSet<MovementId>, Vec<AccountId>>,
        >(&bytes)
        .map_err(|e| e.to_string())?;
        let start = bytes.len() - rest.len();
        let accounts_len =
            accounts_section_len(header.accounts_bytes, header.movements_bytes, rest.len())?;
        let (accounts, movements) = crate::threads::join(
            "snapshot-decode",
            || {
                load_accounts(
                    bytes.clone(),
                    start..start + accounts_len,
                    &header.held_accounts,
                )
                .map_err(|e| format!("accounts: {e}"))
            },
            || {
                MovementMap::load_section(
                    bytes.clone(),
                    start + accounts_len..bytes.len(),
                    movements_room.min(SNAPSHOT_MAP_PRESIZE_MAX),
                )
                .map_err(|e| format!("movements: {e}"))
            },
        );
        Ok(ShardState {
            shard: header.shard,
            lsn: header.lsn,
            record_hash: header.record_hash,
            accounts: accounts?,
            movements: movements?,
            credited: header.credited,
            batches_committed: header.batches_committed,
            movements_window: header.movements_window,
        })
    }

    /// Decodes a format 2 snapshot: its two maps on two threads.
    fn decode_sections(bytes: &[u8], movements_room: usize) -> Result<ShardState, String> {
        let (header, rest) =
            postcard::take_from_bytes::<SnapshotHeader<HashSet<MovementId>>>(bytes)
                .map_err(|e| e.to_string())?;
        let accounts_len =
            accounts_section_len(header.accounts_bytes, header.movements_bytes, rest.len())?;
        let (accounts_bytes, movements_bytes) = rest.split_at(accounts_len);
        let (accounts, movements) = crate::threads::join(
            "snapshot-decode",
            || {
                AccountTable::deserialize(&mut postcard::Deserializer::from_bytes(accounts_bytes))
                    .map_err(|e| format!("accounts: {e}"))
            },
            || {
                PresizedMap::<MovementId, Box<MovementRecord>>::with_room(movements_room)
                    .decode(movements_bytes)
                    .map_err(|e| format!("movements: {e}"))
            },
        );
        Ok(ShardState {
            shard: header.shard,
            lsn: header.lsn,
            record_hash: header.record_hash,
            accounts: accounts?,
            movements: MovementMap::from_map(movements?),
            credited: header.credited,
            batches_committed: header.batches_committed,
            movements_window: header.movements_window,
        })
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

/// Returns the length of a snapshot's accounts section, if its two sections (as its header
/// gives them) fill the `rest` bytes after the header.
fn accounts_section_len(accounts: u64, movements: u64, rest: usize) -> Result<usize, String> {
    usize::try_from(accounts)
        .ok()
        .zip(usize::try_from(movements).ok())
        .filter(|(a, m)| a.checked_add(*m) == Some(rest))
        .map(|(a, _)| a)
        .ok_or_else(|| {
            format!(
                "snapshot sections of {accounts} and {movements} bytes do not fill the {rest} \
                 bytes after the header"
            )
        })
}

/// Checks that `rec` of `shard` is the record after `at` (the LSN and hash of the record
/// before it, as [`ShardState::apply_record`] checks against the state's own) and decodes its
/// events. `Ok(None)`: the record lies wholly at or below `at` (already folded).
fn verify_record(
    shard: u32,
    at: (Lsn, RecordHash),
    rec: &Record,
) -> Result<Option<Vec<Event>>, FoldError> {
    let (at_lsn, at_hash) = at;
    let chain_err = |reason: String| FoldError {
        shard,
        lsn: rec.first_lsn,
        reason,
        chain: true,
    };
    let err = |reason: String| FoldError {
        chain: false,
        ..chain_err(reason)
    };
    if rec.shard != shard {
        return Err(err(format!("record of shard {}", rec.shard)));
    }
    if rec.last_lsn <= at_lsn {
        return Ok(None);
    }
    if rec.first_lsn > at_lsn + 1 {
        return Err(chain_err(format!(
            "gap: state at {at_lsn}, record starts at {}",
            rec.first_lsn
        )));
    }
    if rec.first_lsn <= at_lsn {
        return Err(chain_err(format!(
            "record {}..={} of epoch {} straddles the state's position {at_lsn}: the \
             stream's chain changed under the state (another owner epoch rewrote it); fold \
             from an older snapshot",
            rec.first_lsn, rec.last_lsn, rec.epoch
        )));
    }
    // The first record of a shard follows the all-zero hash at LSN 0.
    record::check_follows(Some((at_lsn, at_hash)), rec).map_err(|r| {
        chain_err(format!(
            "{r}: record {}..={} of epoch {} does not chain onto the state at lsn {at_lsn}",
            rec.first_lsn, rec.last_lsn, rec.epoch
        ))
    })?;
    let events = event::decode_all(&rec.payload).map_err(|e| err(e.to_string()))?;
    if events.len() as u64 != rec.last_lsn - rec.first_lsn + 1 {
        return Err(err(format!(
            "{} events for lsns {}..={}",
            events.len(),
            rec.first_lsn,
            rec.last_lsn
        )));
    }
    Ok(Some(events))
}

/// The error of an event that does not apply.
fn unappliable(shard: u32, lsn: Lsn, ev: &Event, e: &Unappliable) -> FoldError {
    FoldError {
        shard,
        lsn,
        reason: format!(
            "event cannot be applied ({e}): {ev:?}; see docs/runbook.md, \
             \"A shard refuses to restore\""
        ),
        chain: false,
    }
}

/// Folds the movements' side of an event: the record it creates, and the outcome it gives a
/// pending transfer.
fn apply_to_movements(movements: &mut MovementMap, event: &Event) -> Result<(), Unappliable> {
    if let Event::HoldCommitted { transfer_id, .. } | Event::HoldReleased { transfer_id, .. } =
        event
    {
        let m = movements
            .get_mut(transfer_id)
            .filter(|m| m.status == MovementStatus::Pending)
            .ok_or(Unappliable("a commit or release of no pending transfer"))?;
        if let Event::HoldReleased { reason, .. } = event {
            m.status = MovementStatus::Rejected;
            m.rejection_opt = Some(reason.clone());
        } else {
            m.status = MovementStatus::Committed;
        }
    }
    if let Some((id, record)) = CreatedRecord::of(event) {
        if !movements.insert_created(id, record) {
            return Err(Unappliable("a movement ID took effect twice"));
        }
    }
    Ok(())
}

/// How many events ahead of its turn a fold fetches the states of an event's accounts
/// ([`AccountTable::prefetch`]).
const FOLD_PREFETCH_EVENTS: usize = 8;

/// Everything of a shard's state but its movements (see [`ShardState::sides`]).
struct AccountsSide<'a> {
    accounts: &'a mut AccountTable,
    credited: &'a mut HashSet<MovementId>,
    batches_committed: &'a mut HashSet<MovementId>,
    window: usize,
}

impl AccountsSide<'_> {
    /// Folds the accounts' side of an event.
    fn apply(&mut self, event: &Event) -> Result<(), Unappliable> {
        let window = self.window;
        match event {
            Event::AccountOpened { cmd, at } => {
                if cmd.overdraft_limit_minor < 0 {
                    return Err(Unappliable("an account opened with a negative overdraft"));
                }
                if self.accounts.contains_key(&cmd.account_id) {
                    return Err(Unappliable("an account opened twice"));
                }
                self.accounts
                    .insert(Slot::new(AccountState::open(cmd, *at), 0));
            }
            Event::EntryApplied { entry, .. } => {
                self.account(&entry.account_id)?.try_apply(event, window)?
            }
            Event::HoldPlaced { transfer, .. } => self
                .account(&transfer.debit_account_id)?
                .try_apply(event, window)?,
            Event::CreditApplied { transfer, .. } => {
                if self.credited.contains(&transfer.transfer_id) {
                    return Err(Unappliable("a transfer credited twice"));
                }
                self.account(&transfer.credit_account_id)?
                    .try_apply(event, window)?;
                self.credited.insert(transfer.transfer_id.clone());
            }
            Event::HoldCommitted {
                debit_account_id, ..
            }
            | Event::HoldReleased {
                debit_account_id, ..
            } => self.account(debit_account_id)?.try_apply(event, window)?,
            Event::TransferPosted { transfer, .. } => {
                if transfer.debit_account_id == transfer.credit_account_id {
                    return Err(Unappliable("a transfer from an account to itself"));
                }
                self.account(&transfer.debit_account_id)?
                    .try_apply(event, window)?;
                self.account(&transfer.credit_account_id)?
                    .try_apply(event, window)?;
            }
            Event::BatchCommitted { batch_id, .. } => {
                if !self.batches_committed.insert(batch_id.clone()) {
                    return Err(Unappliable("a batch decided twice"));
                }
            }
            Event::EntryRejected { .. } | Event::TransferRejected { .. } => {}
        }
        Ok(())
    }

    /// Asks the CPU to fetch the states of the accounts an event changes, ahead of its turn
    /// ([`AccountTable::prefetch`]).
    fn prefetch(&self, event: &Event) {
        match event {
            Event::EntryApplied { entry, .. } => self.accounts.prefetch(&entry.account_id),
            Event::HoldPlaced { transfer, .. } => {
                self.accounts.prefetch(&transfer.debit_account_id)
            }
            Event::CreditApplied { transfer, .. } => {
                self.accounts.prefetch(&transfer.credit_account_id)
            }
            Event::HoldCommitted {
                debit_account_id, ..
            }
            | Event::HoldReleased {
                debit_account_id, ..
            } => self.accounts.prefetch(debit_account_id),
            Event::TransferPosted { transfer, .. } => {
                self.accounts.prefetch(&transfer.debit_account_id);
                self.accounts.prefetch(&transfer.credit_account_id);
            }
            _ => {}
        }
    }

    fn account(&mut self, id: &AccountId) -> Result<&mut AccountState, Unappliable> {
        self.accounts
            .state_mut(id)
            .ok_or(Unappliable("an event for an unknown account"))
    }
}

/// Returns a digest of account states, independent of their order.
pub fn digest<A: std::borrow::Borrow<AccountState>>(
    accounts: impl IntoIterator<Item = A>,
) -> [u8; 32] {
    let mut all: Vec<A> = accounts.into_iter().collect();
    all.sort_unstable_by(|a, b| a.borrow().id().cmp(b.borrow().id()));
    let mut hasher = blake3::Hasher::new();
    for a in all {
        a.borrow().digest_into(&mut hasher);
    }
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use saldo_persistence::record;

    use super::*;
    use crate::{
        account::LegacyAccountState,
        types::{Currency, Entry, EntryKind, OpenAccount},
    };

    fn opening(id: &str) -> Event {
        Event::AccountOpened {
            cmd: OpenAccount {
                account_id: AccountId::new(id).unwrap(),
                currency: Currency::new("BRL").unwrap(),
                overdraft_limit_minor: 0,
                metadata_opt: None,
            },
            at: Timestamp(1),
        }
    }

    fn credit(id: &str, amount_minor: i64, balance_after_minor: i64) -> Event {
        Event::EntryApplied {
            entry: Entry {
                entry_id: MovementId::new(id).unwrap(),
                account_id: AccountId::new("a").unwrap(),
                kind: EntryKind::Credit,
                amount_minor,
                description_opt: None,
            },
            balance_after_minor,
            at: Timestamp(2),
        }
    }

    fn rec(epoch: u64, first: Lsn, prev: &RecordHash, events: &[Event]) -> Record {
        let mut payload = Vec::new();
        for ev in events {
            event::encode_into(ev, &mut payload);
        }
        let last = first + events.len() as u64 - 1;
        let bytes = record::encode(0, epoch, first, last, prev, &payload).bytes;
        record::decode(&bytes).unwrap().0
    }

    #[test]
    fn a_record_that_straddles_the_position_is_refused_not_mixed_in() {
        let r1 = rec(1, 1, &[0; 32], &[opening("a"), opening("b")]);
        let r2 = rec(1, 3, &r1.hash, &[opening("c"), opening("d")]);
        let mut state = ShardState::empty(0, 4);
        state.apply_record(&r1).unwrap();
        state.apply_record(&r2).unwrap();
        // A newer epoch rewrote the stream from lsn 2 on: its record overlaps what the state
        // folded from the older epoch.
        let newer = rec(
            2,
            2,
            &r1.hash,
            &[opening("x"), opening("y"), opening("v"), opening("z")],
        );
        let e = state.apply_record(&newer).unwrap_err();
        assert!(e.chain, "{e}");
        assert!(
            e.reason.contains("straddles") && e.reason.contains("epoch 2"),
            "{e}"
        );
        assert!(!state.accounts.contains_key(&AccountId::new("z").unwrap()));
        // A record that starts right after the state must chain onto its hash.
        let forked = rec(2, 5, &r1.hash, &[opening("w")]);
        let e = state.apply_record(&forked).unwrap_err();
        assert!(e.chain && e.reason.contains("hash chain"), "{e}");
    }

    #[test]
    fn an_event_that_cannot_be_applied_is_reported_with_shard_and_lsn() {
        let r1 = rec(1, 1, &[0; 32], &[opening("a"), credit("c1", 5, 5)]);
        // Credited twice under one ID: a second movement with the same ID.
        let r2 = rec(1, 3, &r1.hash, &[credit("c2", 5, 10), credit("c1", 5, 15)]);
        let mut state = ShardState::empty(0, 4);
        state.apply_record(&r1).unwrap();
        let e = state.apply_record(&r2).unwrap_err();
        assert_eq!((e.shard, e.lsn, e.chain), (0, 4, false));
        assert!(e.reason.contains("cannot be applied"), "{e}");
    }

    /// Folds `records` on two threads, as a restore does.
    fn fold_verified(state: &mut ShardState, records: &[Record]) -> Result<(), FoldError> {
        state.fold_verifying(records)
    }

    fn commit(transfer: &str, debit: &str) -> Event {
        Event::HoldCommitted {
            transfer_id: MovementId::new(transfer).unwrap(),
            debit_account_id: AccountId::new(debit).unwrap(),
            at: Timestamp(3),
        }
    }

    /// A hold on "a" for a transfer to `credit`.
    fn hold(id: &str, credit: &str, amount_minor: i64) -> Event {
        Event::HoldPlaced {
            transfer: crate::types::Transfer {
                transfer_id: MovementId::new(id).unwrap(),
                debit_account_id: AccountId::new("a").unwrap(),
                credit_account_id: AccountId::new(credit).unwrap(),
                amount_minor,
                currency: Currency::new("BRL").unwrap(),
                description_opt: None,
            },
            batch_opt: None,
            at: Timestamp(3),
        }
    }

    #[test]
    fn a_record_borrowed_from_its_event_encodes_as_the_owned_record() {
        let transfer = |description_opt: Option<&str>| crate::types::Transfer {
            transfer_id: MovementId::new("t-1").unwrap(),
            debit_account_id: AccountId::new("a").unwrap(),
            credit_account_id: AccountId::new("an-account-id-longer-than-inline").unwrap(),
            amount_minor: i64::MAX,
            currency: Currency::new("BRL").unwrap(),
            description_opt: description_opt.map(Into::into),
        };
        let entry = |kind| crate::types::Entry {
            entry_id: MovementId::new("e-1").unwrap(),
            account_id: AccountId::new("a").unwrap(),
            kind,
            amount_minor: 1,
            description_opt: Some("a description".into()),
        };
        let reason = Rejection::IdConflict {
            fields: vec!["amount".into()],
        };
        let events = [
            Event::TransferPosted {
                transfer: transfer(None),
                at: Timestamp(u64::MAX),
            },
            Event::TransferPosted {
                transfer: transfer(Some("rent")),
                at: Timestamp(1),
            },
            Event::TransferRejected {
                transfer: transfer(None),
                reason: reason.clone(),
                at: Timestamp(2),
            },
            hold("t-2", "b", 5),
            Event::EntryApplied {
                entry: entry(crate::types::EntryKind::Credit),
                balance_after_minor: i64::MIN,
                at: Timestamp(3),
            },
            Event::EntryRejected {
                entry: entry(crate::types::EntryKind::Debit),
                reason: Rejection::InsufficientFunds,
                at: Timestamp(4),
            },
        ];
        for event in &events {
            let (id, borrowed) = CreatedRecord::of(event).unwrap();
            let owned = borrowed.to_owned();
            assert_eq!(
                postcard::to_allocvec(&(id, borrowed)).unwrap(),
                postcard::to_allocvec(&(id, &owned)).unwrap(),
                "{event:?}"
            );
            assert_eq!(owned.created_at, event.at());
            assert_eq!(MovementRecord::created_by(event), Some((id.clone(), owned)));
        }
        assert!(CreatedRecord::of(&opening("a")).is_none());
    }

    #[test]
    fn a_movement_is_added_once_whether_packed_or_decoded() {
        let mut movements = MovementMap::default();
        let posted = Event::TransferPosted {
            transfer: crate::types::Transfer {
                transfer_id: MovementId::new("t-9").unwrap(),
                debit_account_id: AccountId::new("a").unwrap(),
                credit_account_id: AccountId::new("b").unwrap(),
                amount_minor: 1,
                currency: Currency::new("BRL").unwrap(),
                description_opt: None,
            },
            at: Timestamp(1),
        };
        let pending = hold("t-8", "b", 5);
        for event in [&posted, &pending] {
            let (id, record) = CreatedRecord::of(event).unwrap();
            assert!(movements.insert_created(id, record));
            // Again, as a settled record and as a pending one: known either way.
            assert!(!movements.insert_created(id, record));
            let other_status = CreatedRecord {
                status: if record.status == MovementStatus::Pending {
                    MovementStatus::Committed
                } else {
                    MovementStatus::Pending
                },
                ..record
            };
            assert!(!movements.insert_created(id, other_status));
            assert_eq!(movements.get(id).unwrap().into_owned(), record.to_owned());
        }
        assert_eq!(movements.len(), 2);
    }

    #[test]
    fn a_fold_on_two_threads_gives_the_state_of_a_fold_on_one() {
        let hold = |id: &str, amount_minor: i64| hold(id, "b", amount_minor);
        let r1 = rec(
            1,
            1,
            &[0; 32],
            &[opening("a"), opening("b"), credit("e1", 900, 900)],
        );
        let r2 = rec(1, 4, &r1.hash, &[hold("t1", 300), hold("t2", 100)]);
        let r3 = rec(1, 6, &r2.hash, &[commit("t1", "a")]);
        let records = [r1, r2, r3];
        let mut one = ShardState::empty(0, 4);
        for r in &records {
            one.apply_record(r).unwrap();
        }
        let mut two = ShardState::empty(0, 4);
        fold_verified(&mut two, &records).unwrap();
        assert_eq!(two, one);
        assert_eq!((two.lsn, two.record_hash), (6, records[2].hash));
        let t1 = two.movements.get(&MovementId::new("t1").unwrap()).unwrap();
        assert_eq!(t1.status, MovementStatus::Committed);
        // Folding the same records again changes nothing: they lie at or below the position.
        fold_verified(&mut two, &records).unwrap();
        assert_eq!(two, one);
    }

    #[test]
    fn a_packed_state_folds_on_and_snapshots_as_the_decoded_one() {
        let hold = |id: &str, amount_minor: i64| hold(id, "c", amount_minor);
        let mut decoded = ShardState::empty(0, 4);
        for ev in [
            opening("a"),
            opening("b"),
            opening("c"),
            credit("e1", 900, 900),
            hold("t1", 300),
            hold("t2", 100),
            commit("t1", "a"),
        ] {
            decoded.apply(&ev);
        }
        // Packed as a restore leaves it: every account but the one with an open hold ("a").
        let mut packed = decoded.clone();
        packed.accounts.pack();
        packed.movements.pack();
        assert_eq!(packed, decoded);
        assert_eq!(packed.accounts.packed_len(), 2);
        assert_eq!(packed.open_holds(), decoded.open_holds());
        // Folding on changes the packed state as it does the decoded one: a packed account or
        // movement is decoded where an event changes it, and an ID packed is still taken.
        let tail = [
            commit("t2", "a"),
            Event::EntryApplied {
                entry: Entry {
                    entry_id: MovementId::new("e2").unwrap(),
                    account_id: AccountId::new("b").unwrap(),
                    kind: EntryKind::Credit,
                    amount_minor: 7,
                    description_opt: None,
                },
                balance_after_minor: 7,
                at: Timestamp(4),
            },
        ];
        for ev in &tail {
            decoded.apply(ev);
            packed.apply(ev);
        }
        assert_eq!(packed, decoded);
        assert_eq!(
            packed.accounts.packed_len(),
            1,
            "b was decoded to change it"
        );
        assert_eq!(
            packed.try_apply(&credit("e1", 1, 901)),
            Err(Unappliable("a movement ID took effect twice"))
        );
        // A snapshot of a state with packed entries decodes to the same state, with the
        // accounts that hold funds decoded (their holds are resolved at start).
        let mut held = decoded.clone();
        held.apply(&hold("t3", 50));
        held.accounts.pack();
        held.movements.pack();
        let blob = held.encode();
        let back = ShardState::decode(&blob).unwrap();
        assert_eq!(back, held);
        assert_eq!(back.open_holds().len(), 1);
        assert_eq!(back.accounts.packed_len(), 2);
        assert_eq!(ShardState::decode(&back.encode()).unwrap(), held);
    }

    #[test]
    fn a_fold_on_two_threads_reports_the_first_event_that_cannot_be_applied() {
        let r1 = rec(1, 1, &[0; 32], &[opening("a"), credit("e1", 5, 5)]);
        // An entry whose ID took effect already fails on the movements' side only; an entry
        // to an unknown account on the accounts' side only.
        let unknown_account = Event::EntryApplied {
            entry: Entry {
                entry_id: MovementId::new("e9").unwrap(),
                account_id: AccountId::new("nobody").unwrap(),
                kind: EntryKind::Credit,
                amount_minor: 1,
                description_opt: None,
            },
            balance_after_minor: 1,
            at: Timestamp(2),
        };
        let again = credit("e1", 5, 10);
        let movements_first = rec(1, 3, &r1.hash, &[again.clone(), unknown_account.clone()]);
        let mut state = ShardState::empty(0, 4);
        let e = fold_verified(&mut state, &[r1.clone(), movements_first]).unwrap_err();
        assert_eq!(e.lsn, 3, "{e}");
        assert!(e.reason.contains("took effect twice"), "{e}");
        let accounts_first = rec(1, 3, &r1.hash, &[unknown_account, again]);
        let mut state = ShardState::empty(0, 4);
        let e = fold_verified(&mut state, &[r1, accounts_first]).unwrap_err();
        assert_eq!(e.lsn, 3, "{e}");
        assert!(e.reason.contains("unknown account"), "{e}");
    }

    /// The accounts as snapshot formats 1 and 2 encoded them: a map from ID to
    /// [`LegacyAccountState`] (histories as decoded rows).
    struct LegacyTable<'a>(&'a AccountTable);

    impl Serialize for LegacyTable<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = serializer.serialize_map(Some(self.0.len()))?;
            for state in self.0.values() {
                map.serialize_entry(state.id(), &LegacyAccountState::from(&*state))?;
            }
            map.end()
        }
    }

    #[test]
    fn a_snapshot_decodes_in_every_format_and_a_section_length_that_lies_is_refused() {
        let mut state = ShardState::empty(0, 100);
        state.apply(&opening("a"));
        state.apply(&opening("b"));
        state.apply(&credit("e1", 500, 500));
        state.apply(&credit("e2", 250, 750));
        state.lsn = 4;
        state.credited.insert(MovementId::new("t9").unwrap());
        let v4 = state.encode();
        assert_eq!(ShardState::decode(&v4).unwrap(), state);
        // Format 3, as the previous release wrote it: format 4's layout, each account's
        // history as decoded rows.
        let (mut accounts, mut movements) = (Vec::new(), Vec::new());
        let legacy: Vec<LegacyAccountState> = state
            .accounts
            .values()
            .map(|a| LegacyAccountState::from(&*a))
            .collect();
        crate::packed::write_section(
            &mut accounts,
            legacy.iter(),
            &crate::packed::Packed::<LegacyAccountState>::default(),
        );
        state.movements.write_section(&mut movements);
        let mut v3 = postcard::to_allocvec(&SnapshotHeader3 {
            format: 3,
            shard: state.shard,
            lsn: state.lsn,
            record_hash: state.record_hash,
            credited: &state.credited,
            batches_committed: &state.batches_committed,
            movements_window: state.movements_window,
            held_accounts: Vec::<AccountId>::new(),
            accounts_bytes: accounts.len() as u64,
            movements_bytes: movements.len() as u64,
        })
        .unwrap();
        v3.extend(accounts);
        v3.extend(movements);
        let from_v3 = ShardState::decode(&v3).unwrap();
        assert_eq!(from_v3, state);
        assert_eq!(
            from_v3
                .accounts
                .state(&AccountId::new("a").unwrap())
                .unwrap()
                .movements(100, 10, None),
            state
                .accounts
                .state(&AccountId::new("a").unwrap())
                .unwrap()
                .movements(100, 10, None),
        );
        // Format 2, as the release before wrote it: a header, then the two maps whole.
        let (accounts, movements) = (
            postcard::to_allocvec(&LegacyTable(&state.accounts)).unwrap(),
            postcard::to_allocvec(&state.movements).unwrap(),
        );
        let mut v2 = postcard::to_allocvec(&SnapshotHeader {
            format: 2,
            shard: state.shard,
            lsn: state.lsn,
            record_hash: state.record_hash,
            credited: &state.credited,
            batches_committed: &state.batches_committed,
            movements_window: state.movements_window,
            accounts_bytes: accounts.len() as u64,
            movements_bytes: movements.len() as u64,
        })
        .unwrap();
        v2.extend(accounts);
        v2.extend(movements);
        assert_eq!(ShardState::decode(&v2).unwrap(), state);
        // Format 1, as the first release wrote it: the whole state as one value.
        #[derive(Serialize)]
        struct V1<'a> {
            format: u32,
            shard: u32,
            lsn: Lsn,
            record_hash: RecordHash,
            accounts: LegacyTable<'a>,
            movements: &'a MovementMap,
            credited: &'a HashSet<MovementId>,
            batches_committed: &'a HashSet<MovementId>,
            movements_window: usize,
        }
        let v1_of = |format| {
            postcard::to_allocvec(&V1 {
                format,
                shard: state.shard,
                lsn: state.lsn,
                record_hash: state.record_hash,
                accounts: LegacyTable(&state.accounts),
                movements: &state.movements,
                credited: &state.credited,
                batches_committed: &state.batches_committed,
                movements_window: state.movements_window,
            })
            .unwrap()
        };
        assert_eq!(ShardState::decode(&v1_of(1)).unwrap(), state);
        // A header whose lengths do not match what follows: an error, not a panic.
        for blob in [v2, v3, v4] {
            let mut cut = blob.clone();
            cut.pop();
            let e = ShardState::decode(&cut).unwrap_err();
            assert!(e.contains("do not fill"), "{e}");
        }
        assert!(ShardState::decode(&v1_of(7))
            .unwrap_err()
            .contains("unknown snapshot format 7"));
    }

    #[test]
    fn a_snapshot_decoded_with_room_holds_the_tail_movements_without_growing() {
        let mut state = ShardState::empty(0, 100);
        state.apply(&opening("a"));
        state.apply(&credit("e1", 500, 500));
        let blob = state.encode();
        let mut decoded = ShardState::decode_with_room(blob.clone().into(), 10_000).unwrap();
        assert_eq!(decoded, state);
        let capacity = decoded.movements.capacity();
        assert!(capacity >= decoded.movements.len() + 10_000, "{capacity}");
        for i in 0..10_000 {
            let balance = 500 + 500 * (i + 1);
            decoded.apply(&credit(&format!("tail{i}"), 500, balance));
        }
        assert_eq!(decoded.movements.capacity(), capacity, "the map grew");
        // The room is bounded: a tail length the stream misreports cannot reserve without end.
        let bounded = ShardState::decode_with_room(blob.into(), usize::MAX).unwrap();
        assert!(bounded.movements.capacity() < 2 * SNAPSHOT_MAP_PRESIZE_MAX + 64);
    }
}
