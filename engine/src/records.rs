//! The movements whose home is a shard ([`ShardState::movements`]): decoded in a map, or packed
//! ([`crate::packed`]) after a restore, until something changes them.
//!
//! [`ShardState::movements`]: crate::state::ShardState::movements

use std::{borrow::Cow, fmt};

use hashbrown::HashMap;
use serde::{ser::SerializeMap, Serialize};

use crate::{
    packed::Packed,
    state::{CreatedRecord, MovementRecord},
    types::{MovementId, MovementStatus},
};

/// A packed movement: its ID and record, encoded as this pair.
pub type PackedMovement = (MovementId, MovementRecord);

/// The movements of a shard by ID. See the [module](self) documentation.
#[derive(Clone, Default)]
pub struct MovementMap {
    /// Boxed: a bucket is 32 bytes, and a table of a million records inline took 450 bytes
    /// a movement at half load.
    map: HashMap<MovementId, Box<MovementRecord>>,
    packed: Packed<PackedMovement>,
}

impl MovementMap {
    /// Returns the map of these movements, decoded.
    pub fn from_map(map: HashMap<MovementId, Box<MovementRecord>>) -> MovementMap {
        MovementMap {
            map,
            packed: Packed::default(),
        }
    }

    /// Returns a movement's record (decoded, if it is packed).
    pub fn get(&self, id: &MovementId) -> Option<Cow<'_, MovementRecord>> {
        match self.map.get(id) {
            Some(rec) => Some(Cow::Borrowed(&**rec)),
            None if self.packed.is_empty() => None,
            None => self.packed.get(id.as_str()).map(|(_, rec)| Cow::Owned(rec)),
        }
    }

    /// Returns a movement's record, to change it: a packed one is decoded into the map first.
    pub fn get_mut(&mut self, id: &MovementId) -> Option<&mut MovementRecord> {
        if !self.packed.is_empty() && !self.map.contains_key(id) {
            let (packed_id, rec) = self.packed.take(id.as_str())?;
            assert!(&packed_id == id, "a packed movement under another's ID");
            self.map.insert(packed_id, Box::new(rec));
        }
        self.map.get_mut(id).map(|rec| &mut **rec)
    }

    /// Returns whether the movement is known.
    pub fn contains_key(&self, id: &MovementId) -> bool {
        self.map.contains_key(id) || (!self.packed.is_empty() && self.packed.contains(id.as_str()))
    }

    /// Adds the movement an event creates (its record borrowed from the event), or returns
    /// `false` (and changes nothing) if its ID is known already. A settled movement
    /// (committed or rejected: nothing changes it any more) is encoded straight into the
    /// packed set, with one probe of the index for the check and the insert, so a fold never
    /// decodes, boxes and encodes it again; a pending one is made an owned record, as its
    /// commit or release will change it.
    pub(crate) fn insert_created(&mut self, id: &MovementId, record: CreatedRecord<'_>) -> bool {
        if !self.map.is_empty() && self.map.contains_key(id) {
            return false;
        }
        if record.status == MovementStatus::Pending {
            if !self.packed.is_empty() && self.packed.contains(id.as_str()) {
                return false;
            }
            self.map.insert(id.clone(), Box::new(record.to_owned()));
            true
        } else {
            self.packed.push_new(id.as_str(), &(id, record))
        }
    }

    /// Makes room for `more` movements (settled ones: they are packed as they come, see
    /// `MovementMap::insert_created`).
    pub fn reserve(&mut self, more: usize) {
        self.packed.reserve(more);
    }

    /// Returns how many settled movements there is room for.
    pub fn capacity(&self) -> usize {
        self.packed.capacity()
    }

    /// Returns the number of movements.
    pub fn len(&self) -> usize {
        self.map.len() + self.packed.len()
    }

    /// Returns whether there is no movement.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns every movement (the packed ones decoded), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Cow<'_, MovementId>, Cow<'_, MovementRecord>)> {
        self.map
            .iter()
            .map(|(id, rec)| (Cow::Borrowed(id), Cow::Borrowed(&**rec)))
            .chain(
                self.packed
                    .values()
                    .map(|(id, rec)| (Cow::Owned(id), Cow::Owned(rec))),
            )
    }

    /// Returns every record (the packed ones decoded), in no particular order.
    pub fn values(&self) -> impl Iterator<Item = Cow<'_, MovementRecord>> {
        self.iter().map(|(_, rec)| rec)
    }

    /// Packs every movement: the decoded ones are encoded and the packed ones copied, into
    /// buffers of their own.
    pub fn pack(&mut self) {
        let decoded = std::mem::take(&mut self.map);
        let records: Vec<(&MovementId, &MovementRecord)> =
            decoded.iter().map(|(id, rec)| (id, &**rec)).collect();
        let packed = Packed::pack(&records, &self.packed);
        self.packed = packed;
    }

    /// Copies the packed movements that are a section of a snapshot's buffer into buffers of
    /// their own ([`Packed::unshare`]).
    pub(crate) fn unshare(&mut self) {
        self.packed.unshare();
    }

    /// Takes the decoded map and the packed set apart (the node's movement table keeps both).
    pub(crate) fn into_parts(
        self,
    ) -> (
        HashMap<MovementId, Box<MovementRecord>>,
        Packed<PackedMovement>,
    ) {
        (self.map, self.packed)
    }

    /// Writes the movements as a section of snapshot format 3.
    pub(crate) fn write_section(&self, out: &mut Vec<u8>) {
        let decoded = self.map.iter().map(|(id, rec)| (id, &**rec));
        crate::packed::write_section(out, decoded, &self.packed);
    }

    /// Bytes the packed movements take (an estimate of a section's size).
    pub(crate) fn packed_bytes(&self) -> usize {
        self.packed.bytes()
    }

    /// Returns the movements of a section of snapshot format 3, every one packed, with room
    /// for `room` more.
    pub(crate) fn load_section(
        buf: bytes::Bytes,
        range: std::ops::Range<usize>,
        room: usize,
    ) -> Result<MovementMap, String> {
        let mut movements = MovementMap::default();
        movements.packed.load(buf, range)?;
        movements.packed.reserve(room);
        Ok(movements)
    }
}

/// Two maps are equal when they hold the same movements, packed or not.
impl PartialEq for MovementMap {
    fn eq(&self, other: &MovementMap) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(id, rec)| other.get(&id).is_some_and(|o| *o == *rec))
    }
}
impl Eq for MovementMap {}

impl fmt::Debug for MovementMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Encodes as a map from ID to record (snapshot formats 1 and 2).
impl Serialize for MovementMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (id, rec) in self.iter() {
            map.serialize_entry(&*id, &*rec)?;
        }
        map.end()
    }
}
