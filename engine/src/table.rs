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
//! It encodes as a map from ID to state, as `HashMap<AccountId, AccountState>` did (snapshot
//! formats 1 and 2 are unchanged).
//!
//! [`ShardState`]: crate::state::ShardState

use std::fmt;

use saldo_persistence::Lsn;
use serde::{de, ser::SerializeMap, Deserialize, Serialize};

use crate::{account::AccountState, limits::SNAPSHOT_MAP_PRESIZE_MAX, types::AccountId};

/// The accounts of a shard, each in its [`Slot`].
#[derive(Default)]
pub struct AccountTable {
    table: hashbrown::HashTable<Slot>,
    hasher: hashbrown::DefaultHashBuilder,
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

impl AccountTable {
    /// Returns an empty table with room for `capacity` accounts.
    pub fn with_capacity(capacity: usize) -> AccountTable {
        AccountTable {
            table: hashbrown::HashTable::with_capacity(capacity),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    fn hash(&self, id: &AccountId) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, id)
    }

    pub(crate) fn get(&self, id: &AccountId) -> Option<&Slot> {
        self.table.find(self.hash(id), |slot| slot.state.id() == id)
    }

    pub(crate) fn get_mut(&mut self, id: &AccountId) -> Option<&mut Slot> {
        let hash = self.hash(id);
        self.table.find_mut(hash, |slot| slot.state.id() == id)
    }

    /// Returns the state of an account.
    pub fn state(&self, id: &AccountId) -> Option<&AccountState> {
        self.get(id).map(|slot| &*slot.state)
    }

    /// Returns the state of an account, to change it (the fold; a test that corrupts one).
    pub fn state_mut(&mut self, id: &AccountId) -> Option<&mut AccountState> {
        self.get_mut(id).map(|slot| &mut *slot.state)
    }

    /// Returns whether the account is in the table.
    pub fn contains_key(&self, id: &AccountId) -> bool {
        self.get(id).is_some()
    }

    /// Adds a new account. Panics if its ID is in the table already: callers look first.
    pub(crate) fn insert(&mut self, slot: Slot) {
        if let Err(slot) = self.try_insert(slot) {
            panic!("account {} is in the table already", slot.state.id())
        }
    }

    /// Adds a new account, or gives it back if its ID is in the table already.
    fn try_insert(&mut self, slot: Slot) -> Result<(), Slot> {
        let hash = self.hash(slot.state.id());
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |s| s.state.id() == slot.state.id(),
            |s| std::hash::BuildHasher::hash_one(hasher, s.state.id()),
        ) {
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(slot);
                Ok(())
            }
            hashbrown::hash_table::Entry::Occupied(_) => Err(slot),
        }
    }

    /// Returns the number of accounts.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Returns whether the table has no account.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Returns every account's state, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &AccountState> + '_ {
        self.table.iter().map(|slot| &*slot.state)
    }

    /// Returns every account's state, taking them out of the table.
    pub fn into_values(self) -> impl Iterator<Item = AccountState> {
        self.table.into_iter().map(|slot| *slot.state)
    }

    /// Returns the IDs of every account.
    pub(crate) fn ids(&self) -> Vec<AccountId> {
        self.values().map(|state| state.id().clone()).collect()
    }
}

impl Clone for AccountTable {
    fn clone(&self) -> AccountTable {
        AccountTable {
            table: self.table.clone(),
            hasher: self.hasher.clone(),
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
                .all(|a| other.state(a.id()).is_some_and(|b| a == b))
    }
}
impl Eq for AccountTable {}

impl fmt::Debug for AccountTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.values().map(|a| (a.id(), a)))
            .finish()
    }
}

impl std::ops::Index<&AccountId> for AccountTable {
    type Output = AccountState;
    fn index(&self, id: &AccountId) -> &AccountState {
        self.state(id)
            .unwrap_or_else(|| panic!("account {id} is not in the table"))
    }
}

impl Serialize for AccountTable {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for state in self.values() {
            map.serialize_entry(state.id(), state)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for AccountTable {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TableVisitor)
    }
}

/// Decodes a table presized to the count of accounts its encoding announces, up to
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
        while let Some((id, state)) = access.next_entry::<AccountId, AccountState>()? {
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
    fn a_table_encodes_as_a_map_and_refuses_an_id_that_is_not_its_states() {
        let mut table = AccountTable::default();
        table.insert(Slot::new(account("a"), 7));
        table.insert(Slot::new(account("b"), 0));
        // The encoding of a map from ID to state, as the snapshot formats have it.
        let as_map: std::collections::BTreeMap<AccountId, AccountState> = table
            .values()
            .map(|a| (a.id().clone(), a.clone()))
            .collect();
        let bytes = postcard::to_allocvec(&table).unwrap();
        let decoded: AccountTable = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, table);
        assert_eq!(postcard::to_allocvec(&as_map).unwrap().len(), bytes.len());
        assert_eq!(
            postcard::from_bytes::<AccountTable>(&postcard::to_allocvec(&as_map).unwrap()).unwrap(),
            table
        );
        // A key that is not the ID of its state, and an ID twice: errors, not a wrong table.
        let mut wrong = std::collections::BTreeMap::new();
        wrong.insert(AccountId::new("x").unwrap(), account("a"));
        let e = postcard::from_bytes::<AccountTable>(&postcard::to_allocvec(&wrong).unwrap())
            .unwrap_err();
        assert!(matches!(e, postcard::Error::SerdeDeCustom), "{e}");
        let twice = vec![(AccountId::new("a").unwrap(), account("a")); 2];
        let mut encoded = postcard::to_allocvec(&(twice.len() as u32)).unwrap();
        for (id, state) in &twice {
            encoded.extend(postcard::to_allocvec(&(id, state)).unwrap());
        }
        assert!(postcard::from_bytes::<AccountTable>(&encoded).is_err());
    }
}
