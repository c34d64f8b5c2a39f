//! The account table of a shard: one structure for the fold of its stream ([`ShardState`],
//! restore, snapshots, tools) and for the accounts the node hosts, so that a restored shard is
//! hosted by moving its table, not by rebuilding it account by account.
//!
//! A bucket is one [`Slot`] (16 bytes: the boxed state and an LSN), keyed by the ID the state
//! holds, so the ID is stored once. A map from ID to state would store it twice and move the
//! whole state (about 190 bytes) on every insert and rehash: decoding a snapshot of a million
//! accounts copied each state twice more, and a bucket of a map from ID to slot would take 40
//! bytes. The hash is foldhash, seeded per process against flooding.
//!
//! Snapshot formats 1 and 2 encoded it as a map from ID to state, as `HashMap<AccountId,
//! AccountState>` did, with each history as decoded rows: it decodes from that
//! ([`crate::account::LegacyAccountState`]). Formats 3 and 4 write it as a section of
//! [`crate::packed`] ([`AccountTable::write_section`]).
//!
//! [`ShardState`]: crate::state::ShardState

use std::{borrow::Cow, fmt};

use saldo_persistence::Lsn;
use serde::{de, Deserialize};

use crate::{
    account::{AccountState, LegacyAccountState},
    limits::SNAPSHOT_MAP_PRESIZE_MAX,
    packed::Packed,
    types::AccountId,
};

/// The accounts of a shard, each in its [`Slot`], or packed.
///
/// Two layers: the accounts decoded in their slots, and the passive ones, still encoded
/// ([`Packed`]): a restore packs every account without an open hold, so an idle account costs
/// its encoding and an 8-byte bucket. An account is taken out of the packed layer into a slot
/// the first time something changes it (`AccountTable::get_mut`); a read decodes it without
/// moving it ([`AccountTable::read`]). A packed account never has an open hold, so the holds
/// to resolve at start are all in slots ([`AccountTable::slotted`]).
#[derive(Default)]
pub struct AccountTable {
    table: hashbrown::HashTable<Slot>,
    hasher: hashbrown::DefaultHashBuilder,
    packed: Packed<AccountState>,
}

/// An account in its shard's table.
#[derive(Clone, Debug)]
pub struct Slot {
    /// Boxed: a bucket stays 16 bytes, and growing the table moves pointers, not states.
    pub(crate) state: Box<AccountState>,
    /// LSN of the latest event applied by the node hosting it (reads wait until it is
    /// durable); 0 in a fold and after a restore, where everything folded is durable.
    pub(crate) last_lsn: Lsn,
}

impl Slot {
    pub(crate) fn new(state: AccountState, last_lsn: Lsn) -> Slot {
        Slot {
            state: Box::new(state),
            last_lsn,
        }
    }
}

/// Asks the CPU to bring every cache line of `value` into its caches; a hint, which changes
/// nothing a program can see.
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = (value as *const T).cast::<i8>();
        for offset in (0..std::mem::size_of::<T>()).step_by(64) {
            // SAFETY: a prefetch reads nothing and cannot fault; SSE is part of x86_64. The
            // address is within `value`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    start.add(offset),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// The hash of a slot's account ID, to move the slot when the table grows (it reads the
/// boxed state).
fn slot_hash(hasher: &hashbrown::DefaultHashBuilder, slot: &Slot) -> u64 {
    std::hash::BuildHasher::hash_one(hasher, slot.state.id())
}

impl AccountTable {
    /// Returns an empty table with room for `capacity` accounts.
    pub fn with_capacity(capacity: usize) -> AccountTable {
        AccountTable {
            table: hashbrown::HashTable::with_capacity(capacity),
            hasher: hashbrown::DefaultHashBuilder::default(),
            packed: Packed::default(),
        }
    }

    fn hash(&self, id: &AccountId) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, id)
    }

    /// The slot of an account that is in one (not packed: see [`AccountTable::unpack`]).
    pub(crate) fn slot(&self, id: &AccountId) -> Option<&Slot> {
        self.table.find(self.hash(id), |slot| slot.state.id() == id)
    }

    /// Returns the slot of an account, to change it: a packed account is decoded into a slot
    /// first (its LSN 0: everything packed is durable).
    pub(crate) fn get_mut(&mut self, id: &AccountId) -> Option<&mut Slot> {
        let hash = self.hash(id);
        if !self.packed.is_empty()
            && self
                .table
                .find(hash, |slot| slot.state.id() == id)
                .is_none()
        {
            let state = self.packed.take(id.as_str())?;
            assert!(state.id() == id, "a packed account under another's ID");
            let hasher = &self.hasher;
            let entry = self
                .table
                .insert_unique(hash, Slot::new(state, 0), |s| slot_hash(hasher, s));
            return Some(entry.into_mut());
        }
        self.table.find_mut(hash, |slot| slot.state.id() == id)
    }

    /// Asks the CPU to fetch the state of an account in a slot ahead of its turn, for a caller
    /// that knows which accounts come next (a fold, a tick): finding an account compares the
    /// ID in its boxed state, a cache miss per account when states are many. Does nothing for
    /// an account that is packed or absent.
    pub(crate) fn prefetch(&self, id: &AccountId) {
        // Every slot whose tag matches: the account's, and rarely another one.
        let _ = self.table.find(self.hash(id), |slot| {
            prefetch(&*slot.state);
            false
        });
    }

    /// Decodes a packed account into its slot, if it is packed: a turn that may change it
    /// looks at its slot.
    pub(crate) fn unpack(&mut self, id: &AccountId) {
        if !self.packed.is_empty() {
            self.get_mut(id);
        }
    }

    /// Reads an account where it is (a packed one is decoded for the read, and stays packed),
    /// with the LSN of its latest event (0 for a packed one: it is durable).
    pub fn read<R>(&self, id: &AccountId, read: impl FnOnce(&AccountState, Lsn) -> R) -> Option<R> {
        if let Some(slot) = self.slot(id) {
            return Some(read(&slot.state, slot.last_lsn));
        }
        if self.packed.is_empty() {
            return None;
        }
        self.packed.get(id.as_str()).map(|state| read(&state, 0))
    }

    /// Returns the state of an account (decoded, if it is packed).
    pub fn state(&self, id: &AccountId) -> Option<Cow<'_, AccountState>> {
        match self.slot(id) {
            Some(slot) => Some(Cow::Borrowed(&*slot.state)),
            None => self.packed.get(id.as_str()).map(Cow::Owned),
        }
    }

    /// Returns the state of an account, to change it (the fold; a test that corrupts one).
    pub fn state_mut(&mut self, id: &AccountId) -> Option<&mut AccountState> {
        self.get_mut(id).map(|slot| &mut *slot.state)
    }

    /// Returns whether the account is in the table.
    pub fn contains_key(&self, id: &AccountId) -> bool {
        self.slot(id).is_some() || (!self.packed.is_empty() && self.packed.contains(id.as_str()))
    }

    /// Adds a new account. Panics if its ID is in the table already: callers look first.
    pub(crate) fn insert(&mut self, slot: Slot) {
        if let Err(slot) = self.try_insert(slot) {
            panic!("account {} is in the table already", slot.state.id())
        }
    }

    /// Adds a new account, or gives it back if its ID is in the table already.
    fn try_insert(&mut self, slot: Slot) -> Result<(), Slot> {
        if !self.packed.is_empty() && self.packed.contains(slot.state.id().as_str()) {
            return Err(slot);
        }
        let hash = self.hash(slot.state.id());
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |s| s.state.id() == slot.state.id(),
            |s| slot_hash(hasher, s),
        ) {
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(slot);
                Ok(())
            }
            hashbrown::hash_table::Entry::Occupied(_) => Err(slot),
        }
    }

    /// Makes room in the slots for `events` more changes: each may take a packed account out
    /// into a slot, so up to that many of them (at most every packed account) come. Growing
    /// the slots instead rehashes them, and rehashing reads every boxed state for its ID: a
    /// restore folding a million events read states it had just decoded a million times over.
    pub fn reserve_slots(&mut self, events: usize) {
        let more = events.min(self.packed.len());
        let hasher = &self.hasher;
        self.table.reserve(more, |s| slot_hash(hasher, s));
    }

    /// Returns the number of accounts.
    pub fn len(&self) -> usize {
        self.table.len() + self.packed.len()
    }

    /// Returns whether the table has no account.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the number of accounts that are packed.
    pub fn packed_len(&self) -> usize {
        self.packed.len()
    }

    /// Bytes the packed accounts take.
    pub(crate) fn packed_bytes(&self) -> usize {
        self.packed.bytes()
    }

    /// Returns every account's state (the packed ones decoded), in no particular order.
    pub fn values(&self) -> impl Iterator<Item = Cow<'_, AccountState>> + '_ {
        self.slotted()
            .map(Cow::Borrowed)
            .chain(self.packed.values().map(Cow::Owned))
    }

    /// Returns the state of every account in a slot (not packed): every account with an open
    /// hold is among them.
    pub fn slotted(&self) -> impl ExactSizeIterator<Item = &AccountState> + '_ {
        self.table.iter().map(|slot| &*slot.state)
    }

    /// Returns every account's state, taking them out of the table.
    pub fn into_values(mut self) -> impl Iterator<Item = AccountState> {
        let packed: Vec<AccountState> = self.packed.drain().collect();
        self.table.into_iter().map(|slot| *slot.state).chain(packed)
    }

    /// Returns the IDs of every account.
    pub(crate) fn ids(&self) -> Vec<AccountId> {
        self.slotted()
            .map(|state| state.id().clone())
            .chain(
                self.packed
                    .keys()
                    .map(|k| AccountId::new(k).expect("a packed account's ID")),
            )
            .collect()
    }

    /// Packs every account without an open hold (see [`AccountTable`]): the ones in slots are
    /// encoded and the packed ones copied, into buffers of their own.
    pub fn pack(&mut self) {
        let passive = self.take_passive();
        let states: Vec<&AccountState> = passive.iter().map(|slot| &*slot.state).collect();
        let packed = Packed::pack(&states, &self.packed);
        self.packed = packed;
    }

    /// Takes every account without an open hold out of its slot, to be packed with the
    /// packed ones ([`Packed::repack`] of [`AccountTable::packed`], then
    /// [`AccountTable::set_packed`]); the accounts with a hold stay in theirs.
    pub(crate) fn take_passive(&mut self) -> Vec<Slot> {
        let (held, passive): (Vec<Slot>, Vec<Slot>) = std::mem::take(&mut self.table)
            .into_iter()
            .partition(|slot| !slot.state.holds().is_empty());
        self.table = hashbrown::HashTable::with_capacity(held.len());
        for slot in held {
            self.insert(slot);
        }
        passive
    }

    /// The packed accounts.
    pub(crate) fn packed(&self) -> &Packed<AccountState> {
        &self.packed
    }

    /// Replaces the packed accounts by `packed`: the ones packed before, and those
    /// [`AccountTable::take_passive`] took out of their slots.
    pub(crate) fn set_packed(&mut self, packed: Packed<AccountState>) {
        self.packed = packed;
    }

    /// Writes the accounts as a section of snapshot format 3 (see [`crate::packed`]): the ones
    /// in slots encoded, the packed ones copied as they are.
    pub(crate) fn write_section(&self, out: &mut Vec<u8>) {
        crate::packed::write_section(out, self.slotted(), &self.packed);
    }

    /// Returns the table of a section of snapshot format 3 at `range` of `buf` (its states
    /// [`LegacyAccountState`]s), every account packed but those of `held`, which are decoded
    /// into slots. Every state is decoded and encoded again in today's encoding, once.
    pub(crate) fn load_legacy_section(
        buf: bytes::Bytes,
        range: std::ops::Range<usize>,
        held: &[AccountId],
    ) -> Result<AccountTable, String> {
        let mut legacy = Packed::<LegacyAccountState>::default();
        legacy.load(buf, range)?;
        let mut table = AccountTable::with_capacity(legacy.len());
        for state in legacy.drain() {
            let state = AccountState::from(state);
            let id = state.id().clone();
            if table.try_insert(Slot::new(state, 0)).is_err() {
                return Err(format!("account {id} twice"));
            }
        }
        for id in held {
            if table.state(id).is_none() {
                return Err(format!(
                    "account {id} with an open hold is not in the snapshot"
                ));
            }
        }
        table.pack();
        Ok(table)
    }

    /// Returns the table of a section of snapshot format 4 at `range` of `buf`, every account
    /// packed but those of `held` (the accounts with an open hold), which are decoded into
    /// slots.
    pub(crate) fn load_section(
        buf: bytes::Bytes,
        range: std::ops::Range<usize>,
        held: &[AccountId],
    ) -> Result<AccountTable, String> {
        let mut table = AccountTable::default();
        table.packed.load(buf, range)?;
        for id in held {
            if table.packed.is_empty() || table.get_mut(id).is_none() {
                return Err(format!(
                    "account {id} with an open hold is not in the snapshot"
                ));
            }
        }
        Ok(table)
    }
}

impl Clone for AccountTable {
    fn clone(&self) -> AccountTable {
        AccountTable {
            table: self.table.clone(),
            hasher: self.hasher.clone(),
            packed: self.packed.clone(),
        }
    }
}

/// Two tables are equal when they hold equal states (the LSNs the node keeps are not part of
/// the state: a fold and the live node agree on states).
impl PartialEq for AccountTable {
    fn eq(&self, other: &AccountTable) -> bool {
        self.len() == other.len()
            && self
                .values()
                .all(|a| other.state(a.id()).is_some_and(|b| *a == *b))
    }
}
impl Eq for AccountTable {}

impl fmt::Debug for AccountTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.values().map(|a| (a.id().clone(), a)))
            .finish()
    }
}

impl<'de> Deserialize<'de> for AccountTable {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TableVisitor)
    }
}

/// Decodes a table of snapshot format 1 or 2 (a map from ID to [`LegacyAccountState`]),
/// presized to the count of accounts its encoding announces, up to
/// [`SNAPSHOT_MAP_PRESIZE_MAX`] (past that it grows as accounts come). An ID that is not the
/// ID of its state, or an ID twice, is an error: the table is keyed by the state's ID.
struct TableVisitor;

impl<'de> de::Visitor<'de> for TableVisitor {
    type Value = AccountTable;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map from account ID to account state")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut access: A) -> Result<AccountTable, A::Error> {
        let announced = access
            .size_hint()
            .unwrap_or(0)
            .min(SNAPSHOT_MAP_PRESIZE_MAX);
        let mut table = AccountTable::with_capacity(announced);
        while let Some((id, state)) = access.next_entry::<AccountId, LegacyAccountState>()? {
            let state = AccountState::from(state);
            if state.id() != &id {
                return Err(de::Error::custom(format!(
                    "account {id} holds the state of account {}",
                    state.id()
                )));
            }
            if table.try_insert(Slot::new(state, 0)).is_err() {
                return Err(de::Error::custom(format!("account {id} twice")));
            }
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Currency, OpenAccount, Timestamp};

    fn account(id: &str) -> AccountState {
        AccountState::open(
            &OpenAccount {
                account_id: AccountId::new(id).unwrap(),
                currency: Currency::new("BRL").unwrap(),
                overdraft_limit_minor: 0,
                metadata_opt: None,
            },
            Timestamp(1),
        )
    }

    #[test]
    fn a_table_decodes_from_a_map_and_refuses_an_id_that_is_not_its_states() {
        let mut table = AccountTable::default();
        table.insert(Slot::new(account("a"), 7));
        table.insert(Slot::new(account("b"), 0));
        // A map from ID to state, as snapshot formats 1 and 2 have it.
        let legacy = |a: &AccountState| LegacyAccountState::from(a);
        let as_map: std::collections::BTreeMap<AccountId, LegacyAccountState> = table
            .values()
            .map(|a| (a.id().clone(), legacy(&a)))
            .collect();
        assert_eq!(
            postcard::from_bytes::<AccountTable>(&postcard::to_allocvec(&as_map).unwrap()).unwrap(),
            table
        );
        // A key that is not the ID of its state, and an ID twice: errors, not a wrong table.
        let mut wrong = std::collections::BTreeMap::new();
        wrong.insert(AccountId::new("x").unwrap(), legacy(&account("a")));
        let e = postcard::from_bytes::<AccountTable>(&postcard::to_allocvec(&wrong).unwrap())
            .unwrap_err();
        assert!(matches!(e, postcard::Error::SerdeDeCustom), "{e}");
        let twice = vec![(AccountId::new("a").unwrap(), legacy(&account("a"))); 2];
        let mut encoded = postcard::to_allocvec(&(twice.len() as u32)).unwrap();
        for (id, state) in &twice {
            encoded.extend(postcard::to_allocvec(&(id, state)).unwrap());
        }
        assert!(postcard::from_bytes::<AccountTable>(&encoded).is_err());
    }
}
