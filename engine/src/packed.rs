//! Values kept in their encoding until someone needs them: the passive accounts and movements
//! of a restored shard.
//!
//! A restored account that nobody touches is its compact state and nothing more (the execution
//! model of docs/engine.md: "a passive account is its compact state with no mailbox"). A
//! [`Packed`] set holds such values as they are encoded in a snapshot's section, back to back in
//! shared buffers, and finds them by key through an index of their positions: a bucket of
//! 8 bytes per value, against a boxed, decoded state of some 270 bytes (an account with its
//! history row) or a boxed record of 190 (a movement). A value is decoded when it is read, and
//! taken out (to live decoded in its table) when it is changed.
//!
//! A section is a count (postcard varint) and that many entries, each its length (varint) and
//! the value's postcard encoding, which starts with the value's key as a postcard string (an
//! account state starts with its ID; a movement entry is the pair of its ID and record). So a
//! snapshot's section is indexed without decoding a value, and written again by copying the
//! entries nobody changed.

use std::{fmt, marker::PhantomData, ops::Range};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::limits::SNAPSHOT_MAP_PRESIZE_MAX;

/// Bits of a location that hold the offset in its buffer (the rest number the buffer).
const OFFSET_BITS: u32 = 40;

/// Values encoded in shared buffers, found by key. See the [module](self) documentation.
pub struct Packed<V> {
    bufs: Bufs,
    /// Where each value's entry starts: its buffer's number above [`OFFSET_BITS`], then its
    /// offset in the buffer.
    index: hashbrown::HashTable<u64>,
    hasher: hashbrown::DefaultHashBuilder,
    /// Bytes the indexed entries take.
    bytes: usize,
    /// Where [`Packed::push_new`] encodes a value before it appends it.
    scratch: Vec<u8>,
    _values: PhantomData<fn() -> V>,
}

/// Bytes the open buffer of a set takes before [`Packed::push_new`] starts another.
const OPEN_BUFFER_BYTES: usize = 1 << 20;

/// The buffers of a set: shared ones, which never change, and the open one that
/// [`Packed::push_new`] appends to. The open one is numbered `frozen.len()`; it is frozen (moved
/// behind a `Bytes`, keeping its number) before any other buffer joins the set.
#[derive(Clone, Default)]
struct Bufs {
    frozen: Vec<Bytes>,
    open: Vec<u8>,
    /// The frozen buffers that are a section of a larger shared one (a snapshot's), which
    /// [`Packed::unshare`] copies into buffers of their own.
    shared: Vec<usize>,
}

impl Bufs {
    /// Buffer `number`.
    fn get(&self, number: usize) -> &[u8] {
        match self.frozen.get(number) {
            Some(buf) => buf,
            None => {
                debug_assert_eq!(number, self.frozen.len(), "a buffer that is not there");
                &self.open
            }
        }
    }

    /// Freezes the open buffer (its number stays), so that another buffer may join.
    fn freeze(&mut self) {
        if !self.open.is_empty() {
            let open = std::mem::take(&mut self.open);
            self.frozen.push(Bytes::from(open));
        }
    }

    fn is_empty(&self) -> bool {
        self.frozen.is_empty() && self.open.is_empty()
    }

    /// Appends the entry of an `encoded` value to the open buffer (adding its bytes to
    /// `bytes`) and returns its location.
    fn append(&mut self, encoded: &[u8], bytes: &mut usize) -> u64 {
        // An entry never spans two buffers: its length prefix takes at most 10 bytes.
        let need = encoded.len() + 10;
        if self.open.len() + need > self.open.capacity() {
            self.freeze();
            self.open.reserve(OPEN_BUFFER_BYTES.max(need));
        }
        let number = u64::try_from(self.frozen.len()).expect("a handful of buffers");
        let at = self.open.len();
        put_encoded(&mut self.open, encoded);
        *bytes += self.open.len() - at;
        (number << OFFSET_BITS) | at as u64
    }
}

impl<V> Default for Packed<V> {
    fn default() -> Self {
        Packed {
            bufs: Bufs::default(),
            index: hashbrown::HashTable::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            bytes: 0,
            scratch: Vec::new(),
            _values: PhantomData,
        }
    }
}

impl<V> Packed<V> {
    /// Returns where every entry is, in the order of the buffers (so a copy reads them in
    /// order).
    pub fn locations(&self) -> Vec<u64> {
        let mut locs: Vec<u64> = self.index.iter().copied().collect();
        locs.sort_unstable();
        locs
    }

    /// Returns the set of entries written apart in `pieces`, for a set hashing with `hasher`.
    /// Their keys are unique: they come from one table, or from one set and the values taken
    /// out of it.
    fn from_pieces(hasher: hashbrown::DefaultHashBuilder, pieces: Vec<Piece>) -> Packed<V> {
        let count = pieces.iter().map(|p| p.entries.len()).sum();
        let mut packed = Packed {
            hasher,
            index: hashbrown::HashTable::with_capacity(count),
            ..Packed::default()
        };
        let mut entries = Vec::with_capacity(pieces.len());
        for mut piece in pieces.into_iter().filter(|p| !p.entries.is_empty()) {
            piece.buf.shrink_to_fit();
            packed.bytes += piece.buf.len();
            packed.bufs.frozen.push(Bytes::from(piece.buf));
            entries.push(piece.entries);
        }
        assert!(
            (packed.bufs.frozen.len() as u64) < 1 << (64 - OFFSET_BITS),
            "too many buffers to index"
        );
        let (bufs, index, hasher) = (&packed.bufs, &mut packed.index, &packed.hasher);
        for (number, entries) in entries.into_iter().enumerate() {
            for (hash, offset) in entries {
                let loc = ((number as u64) << OFFSET_BITS) | offset;
                index.insert_unique(hash, loc, |&l| hash_of(hasher, key_at(bufs, l)));
            }
        }
        packed
    }
}

impl<V> Clone for Packed<V> {
    fn clone(&self) -> Self {
        Packed {
            bufs: self.bufs.clone(),
            index: self.index.clone(),
            hasher: self.hasher.clone(),
            bytes: self.bytes,
            scratch: Vec::new(),
            _values: PhantomData,
        }
    }
}

impl<V> fmt::Debug for Packed<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packed")
            .field("values", &self.index.len())
            .field("buffers", &(self.bufs.frozen.len() + 1))
            .finish()
    }
}

/// Splits an entry at `at` into its value's encoding and the rest of the buffer.
fn split_entry(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (len, rest) = postcard::take_from_bytes::<u64>(bytes).map_err(|e| e.to_string())?;
    match usize::try_from(len).ok().filter(|len| *len <= rest.len()) {
        Some(len) => Ok(rest.split_at(len)),
        None => Err(format!(
            "an entry of {len} bytes where {} are left",
            rest.len()
        )),
    }
}

/// The key an entry's value starts with.
fn key_of(value: &[u8]) -> Result<&str, String> {
    postcard::take_from_bytes::<&str>(value)
        .map(|(key, _)| key)
        .map_err(|e| format!("an entry that does not start with its key: {e}"))
}

impl<V: DeserializeOwned> Packed<V> {
    /// Indexes the section of `buf` at `range` (a count and its entries; see the module
    /// documentation) and keeps the buffer. Checks that the entries fill the section and that
    /// no key comes twice (in the section or among the values already here); the values
    /// themselves are decoded when read (the buffer is a checksummed snapshot, or was encoded
    /// by this process).
    pub fn load(&mut self, buf: Bytes, range: Range<usize>) -> Result<(), String> {
        if buf.get(range.clone()).is_none() {
            return Err(format!(
                "a section at {range:?} of a {}-byte buffer",
                buf.len()
            ));
        }
        // The section alone is kept (sharing the buffer's memory); offsets are within it.
        let section = buf.slice(range);
        self.bufs.freeze();
        let number = u64::try_from(self.bufs.frozen.len()).expect("a handful of buffers");
        assert!(
            number < 1 << (64 - OFFSET_BITS) && (section.len() as u64) < 1 << OFFSET_BITS,
            "a buffer too large to index"
        );
        let (count, mut rest) =
            postcard::take_from_bytes::<u64>(&section).map_err(|e| e.to_string())?;
        let room = usize::try_from(count)
            .unwrap_or(usize::MAX)
            .min(SNAPSHOT_MAP_PRESIZE_MAX);
        let (bufs, hasher) = (&self.bufs, &self.hasher);
        self.index
            .reserve(room, |&loc| hash_of(hasher, key_at(bufs, loc)));
        for _ in 0..count {
            let offset = section.len() - rest.len();
            let (value, after) = split_entry(rest)?;
            let key = key_of(value)?;
            let loc = (number << OFFSET_BITS) | offset as u64;
            let hash = self.hash(key);
            let (bufs, hasher) = (&self.bufs, &self.hasher);
            match self.index.entry(
                hash,
                |&other| key_in(bufs, &section, number, other) == key,
                |&other| hash_of(hasher, key_in(bufs, &section, number, other)),
            ) {
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(loc);
                    self.bytes += rest.len() - after.len();
                }
                hashbrown::hash_table::Entry::Occupied(_) => return Err(format!("{key} twice")),
            }
            rest = after;
        }
        if !rest.is_empty() {
            return Err(format!(
                "{} bytes after the {count} entries of a section",
                rest.len()
            ));
        }
        self.bufs.shared.push(self.bufs.frozen.len());
        self.bufs.frozen.push(section);
        Ok(())
    }

    /// Adds `value`, whose key is `key`, unless a value here has that key: returns whether it
    /// was added. One hash and one probe of the index for both the check and the insert.
    pub fn push_new<S: Serialize>(&mut self, key: &str, value: &S) -> bool {
        let hash = self.hash(key);
        let (bufs, hasher) = (&self.bufs, &self.hasher);
        let vacant = match self.index.entry(
            hash,
            |&loc| is_key_at(bufs, loc, key),
            |&loc| hash_of(hasher, key_at(bufs, loc)),
        ) {
            hashbrown::hash_table::Entry::Occupied(_) => return false,
            hashbrown::hash_table::Entry::Vacant(vacant) => vacant,
        };
        encode(&mut self.scratch, value);
        debug_assert_eq!(
            key_of(&self.scratch),
            Ok(key),
            "a value starts with its key"
        );
        vacant.insert(self.bufs.append(&self.scratch, &mut self.bytes));
        true
    }

    /// Makes room in the index for `more` values.
    pub fn reserve(&mut self, more: usize) {
        let (bufs, hasher) = (&self.bufs, &self.hasher);
        self.index
            .reserve(more, |&loc| hash_of(hasher, key_at(bufs, loc)));
    }

    /// Returns how many values the index has room for.
    pub fn capacity(&self) -> usize {
        self.index.capacity()
    }

    /// Copies every section of a larger shared buffer (a snapshot's) into a buffer of its own,
    /// so that the larger one can be freed. Offsets do not change: the index stays as it is.
    pub fn unshare(&mut self) {
        for number in std::mem::take(&mut self.bufs.shared) {
            let own = Bytes::copy_from_slice(&self.bufs.frozen[number]);
            self.bufs.frozen[number] = own;
        }
    }

    /// Returns a set of `values`, encoded, with the entries of `carried` copied as they are,
    /// into buffers of their own (on two threads when there is enough to do, see [`Repack`]).
    pub fn pack<S: Serialize + Sync>(values: &[S], carried: &Packed<V>) -> Packed<V> {
        let locs = carried.locations();
        carried.repack(values, &locs).run()
    }

    /// Plans a set of `values` (encoded) and of this set's entries at `locs` (copied; see
    /// [`Packed::locations`]), in pieces of work that any thread can do.
    pub fn repack<'a, S: Serialize + Sync>(
        &'a self,
        values: &'a [S],
        locs: &'a [u64],
    ) -> Repack<'a, V> {
        let hasher = &self.hasher;
        let mut jobs: Vec<Job<'a>> = Vec::new();
        for chunk in values.chunks(PIECE_VALUES) {
            jobs.push(Box::new(move || encode_piece(hasher, chunk)));
        }
        for chunk in locs.chunks(PIECE_ENTRIES) {
            jobs.push(Box::new(move || copy_piece(hasher, &self.bufs, chunk)));
        }
        Repack {
            jobs,
            hasher: hasher.clone(),
            _values: PhantomData,
        }
    }

    /// Adds the values of `other`. Panics on a key in both: each value has one home.
    pub fn merge(&mut self, mut other: Packed<V>, what: &str) {
        if self.bufs.is_empty() {
            *self = other;
            return;
        }
        self.bufs.freeze();
        other.bufs.freeze();
        let first = u64::try_from(self.bufs.frozen.len()).expect("a handful of buffers");
        let (bufs, hasher) = (&self.bufs, &self.hasher);
        self.index
            .reserve(other.len(), |&loc| hash_of(hasher, key_at(bufs, loc)));
        let first_number = self.bufs.frozen.len();
        self.bufs.frozen.extend(other.bufs.frozen);
        self.bufs
            .shared
            .extend(other.bufs.shared.iter().map(|n| n + first_number));
        self.bytes += other.bytes;
        for loc in other.index {
            let loc = loc + (first << OFFSET_BITS);
            let key = self.key_at(loc);
            let hash = self.hash(key);
            assert!(
                self.find_hashed(hash, key).is_none(),
                "{what} {key} restored in two shards"
            );
            let (bufs, hasher) = (&self.bufs, &self.hasher);
            self.index
                .insert_unique(hash, loc, |&l| hash_of(hasher, key_at(bufs, l)));
        }
    }

    fn hash(&self, key: &str) -> u64 {
        hash_of(&self.hasher, key)
    }

    fn key_at(&self, loc: u64) -> &str {
        key_at(&self.bufs, loc)
    }

    fn find_hashed(&self, hash: u64, key: &str) -> Option<u64> {
        self.index
            .find(hash, |&loc| is_key_at(&self.bufs, loc, key))
            .copied()
    }

    /// Returns whether a value has this key.
    pub fn contains(&self, key: &str) -> bool {
        self.find_hashed(self.hash(key), key).is_some()
    }

    /// Returns the value with this key, decoded.
    pub fn get(&self, key: &str) -> Option<V> {
        self.find_hashed(self.hash(key), key)
            .map(|loc| self.decode_at(loc))
    }

    /// Takes the value with this key out of the set, decoded.
    pub fn take(&mut self, key: &str) -> Option<V> {
        let hash = self.hash(key);
        let bufs = &self.bufs;
        let entry = self
            .index
            .find_entry(hash, |&loc| is_key_at(bufs, loc, key))
            .ok()?;
        let (loc, _) = entry.remove();
        self.bytes -= entry_at(&self.bufs, loc).len();
        Some(self.decode_at(loc))
    }

    /// Decodes the value at `loc`. Panics if it does not decode: the buffer was checksummed or
    /// encoded here, so that is a bug, and a crash beats a wrong balance.
    fn decode_at(&self, loc: u64) -> V {
        let value = value_at(&self.bufs, loc);
        postcard::from_bytes(value).unwrap_or_else(|e| {
            panic!(
                "a packed value ({}) does not decode: {e}",
                key_of(value).unwrap_or("?")
            )
        })
    }

    /// Returns the number of values.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Returns whether there is no value.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Returns the bytes the values' entries take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Returns every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.index.iter().map(|&loc| self.key_at(loc))
    }

    /// Returns every value, decoded, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = V> + '_ {
        self.index.iter().map(|&loc| self.decode_at(loc))
    }

    /// Returns every value, decoded, emptying the set.
    pub fn drain(&mut self) -> impl Iterator<Item = V> + '_ {
        let locs: Vec<u64> = self.index.drain().collect();
        self.bytes = 0;
        locs.into_iter().map(|loc| self.decode_at(loc))
    }
}

/// Values a piece of work encodes when a set is packed ([`Packed::repack`]).
const PIECE_VALUES: usize = 32 * 1024;
/// Entries a piece of work copies when a set is packed.
const PIECE_ENTRIES: usize = 64 * 1024;

/// A piece of a set, written apart: its entries back to back, and each one's key hash and
/// offset.
struct Piece {
    buf: Vec<u8>,
    entries: Vec<(u64, u64)>,
}

type Job<'a> = Box<dyn FnOnce() -> Piece + Send + 'a>;

/// The work of packing a set anew ([`Packed::repack`]), in pieces shared out between two
/// threads.
pub struct Repack<'a, V> {
    jobs: Vec<Job<'a>>,
    hasher: hashbrown::DefaultHashBuilder,
    _values: PhantomData<fn() -> V>,
}

impl<'a, V> Repack<'a, V> {
    /// Returns the set.
    pub fn run(self) -> Packed<V> {
        let pieces = crate::threads::run_all("pack", self.jobs);
        Packed::from_pieces(self.hasher, pieces)
    }
}

/// Encodes `values` into a piece.
fn encode_piece<S: Serialize>(hasher: &hashbrown::DefaultHashBuilder, values: &[S]) -> Piece {
    let mut piece = Piece {
        buf: Vec::with_capacity(values.len() * 96),
        entries: Vec::with_capacity(values.len()),
    };
    let mut scratch = Vec::new();
    for value in values {
        let at = piece.buf.len();
        put_entry(&mut piece.buf, &mut scratch, value);
        let key = key_of(&scratch).expect("a value starts with its key");
        piece.entries.push((hash_of(hasher, key), at as u64));
    }
    piece
}

/// Copies the entries at `locs` of `bufs` into a piece.
fn copy_piece(hasher: &hashbrown::DefaultHashBuilder, bufs: &Bufs, locs: &[u64]) -> Piece {
    let size = locs.iter().map(|&loc| entry_at(bufs, loc).len()).sum();
    let mut piece = Piece {
        buf: Vec::with_capacity(size),
        entries: Vec::with_capacity(locs.len()),
    };
    for &loc in locs {
        let at = piece.buf.len();
        piece.buf.extend_from_slice(entry_at(bufs, loc));
        piece
            .entries
            .push((hash_of(hasher, key_at(bufs, loc)), at as u64));
    }
    piece
}

/// Writes a section of `values` (encoded here) and of the entries of `carried` (copied).
pub fn write_section<S: Serialize, V>(
    out: &mut Vec<u8>,
    values: impl ExactSizeIterator<Item = S>,
    carried: &Packed<V>,
) {
    put_varint(out, (values.len() + carried.index.len()) as u64);
    let mut scratch = Vec::new();
    for value in values {
        put_entry(out, &mut scratch, &value);
    }
    // In the order of the buffers: the copy reads them from start to end.
    for loc in carried.locations() {
        out.extend_from_slice(entry_at(&carried.bufs, loc));
    }
}

/// Appends `value`'s entry (its length, then its encoding) to `out`, encoding it in
/// `scratch`, which holds the encoding afterwards.
fn put_entry<S: Serialize>(out: &mut Vec<u8>, scratch: &mut Vec<u8>, value: &S) {
    encode(scratch, value);
    put_encoded(out, scratch);
}

/// Encodes `value` into `scratch`, replacing what it held.
fn encode<S: Serialize>(scratch: &mut Vec<u8>, value: &S) {
    scratch.clear();
    *scratch = postcard::to_extend(value, std::mem::take(scratch)).expect("a value serializes");
}

/// Appends the entry of an encoded value: its length, then the encoding.
fn put_encoded(out: &mut Vec<u8>, encoded: &[u8]) {
    put_varint(out, encoded.len() as u64);
    out.extend_from_slice(encoded);
}

fn put_varint(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 10];
    out.extend_from_slice(postcard::to_slice(&n, &mut buf).expect("a varint fits 10 bytes"));
}

fn hash_of(hasher: &hashbrown::DefaultHashBuilder, key: &str) -> u64 {
    std::hash::BuildHasher::hash_one(hasher, key)
}

/// The entry at `loc`: its length prefix and its value.
fn entry_at(bufs: &Bufs, loc: u64) -> &[u8] {
    let buf = bufs.get((loc >> OFFSET_BITS) as usize);
    let at = &buf[(loc & ((1 << OFFSET_BITS) - 1)) as usize..];
    let (_, rest) = split_entry(at).expect("an indexed entry");
    &at[..at.len() - rest.len()]
}

/// The value's encoding of the entry at `loc`.
fn value_at(bufs: &Bufs, loc: u64) -> &[u8] {
    let buf = bufs.get((loc >> OFFSET_BITS) as usize);
    split_entry(&buf[(loc & ((1 << OFFSET_BITS) - 1)) as usize..])
        .expect("an indexed entry")
        .0
}

fn key_at(bufs: &Bufs, loc: u64) -> &str {
    key_of(value_at(bufs, loc)).expect("an indexed entry")
}

/// Whether the entry at `loc` is `key`'s. Its key's bytes are compared as they are: they were
/// checked to be a string when the entry was indexed (or written here).
fn is_key_at(bufs: &Bufs, loc: u64, key: &str) -> bool {
    postcard::take_from_bytes::<u64>(value_at(bufs, loc)).is_ok_and(|(len, rest)| {
        usize::try_from(len).is_ok_and(|len| rest.get(..len) == Some(key.as_bytes()))
    })
}

/// The key at `loc`, where buffer `number` may be `pending` (not yet in `bufs`).
fn key_in<'a>(bufs: &'a Bufs, pending: &'a Bytes, number: u64, loc: u64) -> &'a str {
    if loc >> OFFSET_BITS == number {
        let at = &pending[(loc & ((1 << OFFSET_BITS) - 1)) as usize..];
        key_of(split_entry(at).expect("an indexed entry").0).expect("an indexed entry")
    } else {
        key_at(bufs, loc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pair = (String, u64);

    fn section(pairs: &[(&str, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        write_section(&mut out, pairs.iter(), &Packed::<Pair>::default());
        out
    }

    #[test]
    fn a_section_is_indexed_read_taken_and_written_again_by_copy() {
        let bytes = section(&[("a", 1), ("b", 2), ("c", 300)]);
        let len = bytes.len();
        let mut p = Packed::<Pair>::default();
        p.load(Bytes::from(bytes), 0..len).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p.get("c"), Some(("c".into(), 300)));
        assert!(p.contains("a") && !p.contains("d"));
        let bytes = p.bytes();
        assert_eq!(p.take("a"), Some(("a".into(), 1)));
        assert_eq!(p.bytes(), bytes - 4, "an entry of 4 bytes taken out");
        assert!(!p.contains("a") && p.get("a").is_none() && p.len() == 2);
        // Written again: the new value encoded, the carried ones copied.
        let again = Packed::pack(&[("z", 9u64)], &p);
        let mut all: Vec<Pair> = again.values().collect();
        all.sort();
        assert_eq!(
            all,
            vec![("b".into(), 2), ("c".into(), 300), ("z".into(), 9)]
        );
        let mut keys: Vec<&str> = again.keys().collect();
        keys.sort_unstable();
        assert_eq!(keys, ["b", "c", "z"]);
    }

    #[test]
    fn a_section_with_a_key_twice_or_bytes_left_over_or_cut_is_refused() {
        let twice = section(&[("a", 1), ("a", 2)]);
        let e = Packed::<Pair>::default()
            .load(Bytes::from(twice.clone()), 0..twice.len())
            .unwrap_err();
        assert!(e.contains("a twice"), "{e}");
        let mut more = section(&[("a", 1)]);
        more.push(0);
        let e = Packed::<Pair>::default()
            .load(Bytes::from(more.clone()), 0..more.len())
            .unwrap_err();
        assert!(e.contains("after the 1 entries"), "{e}");
        let cut = section(&[("a", 1), ("b", 2)]);
        assert!(Packed::<Pair>::default()
            .load(Bytes::from(cut.clone()), 0..cut.len() - 1)
            .is_err());
    }

    #[test]
    fn a_set_packed_in_many_pieces_finds_every_value_and_keeps_no_taken_one() {
        // More values and carried entries than one piece of work holds, so that both threads
        // write pieces and the index spans many buffers.
        let n = PIECE_VALUES + PIECE_ENTRIES + 7;
        let values: Vec<Pair> = (0..n).map(|i| (format!("v{i}"), i as u64)).collect();
        let mut carried = Packed::<Pair>::pack(&values, &Packed::default());
        for i in (0..n).step_by(3) {
            assert_eq!(
                carried.take(&format!("v{i}")),
                Some((format!("v{i}"), i as u64))
            );
        }
        let decoded: Vec<Pair> = (0..PIECE_VALUES + 5)
            .map(|i| (format!("d{i}"), i as u64 * 7))
            .collect();
        let packed = Packed::pack(&decoded, &carried);
        assert!(
            packed.bufs.frozen.len() > 2,
            "{} buffers",
            packed.bufs.frozen.len()
        );
        assert_eq!(packed.len(), carried.len() + decoded.len());
        assert_eq!(
            packed.bytes(),
            packed.bufs.frozen.iter().map(Bytes::len).sum::<usize>(),
            "the buffers hold the entries and nothing else"
        );
        for (i, (key, value)) in values.iter().enumerate() {
            let expected = (i % 3 != 0).then(|| (key.clone(), *value));
            assert_eq!(packed.get(key), expected, "{key}");
        }
        for (key, value) in &decoded {
            assert_eq!(packed.get(key), Some((key.clone(), *value)));
        }
    }

    #[test]
    fn values_pushed_past_many_open_buffers_and_a_shared_section_are_all_found() {
        // A section inside a larger buffer (a snapshot's), then enough values pushed to fill
        // several open buffers, some of them taken out again.
        let mut snapshot = vec![0xAB; 100];
        snapshot.extend(section(&[("s1", 1), ("s2", 2)]));
        let end = snapshot.len();
        snapshot.extend([0xCD; 50]);
        let snapshot = Bytes::from(snapshot);
        let mut p = Packed::<Pair>::default();
        p.load(snapshot.clone(), 100..end).unwrap();
        let n = 3 * OPEN_BUFFER_BYTES / 8;
        for i in 0..n {
            let key = format!("p{i}");
            p.push_new(&key, &(key.clone(), i as u64));
            if i == 0 {
                // Read from the open buffer before it is frozen.
                assert_eq!(p.get("p0"), Some(("p0".into(), 0)));
            }
        }
        assert!(p.bufs.frozen.len() >= 3, "{} buffers", p.bufs.frozen.len());
        assert_eq!(p.take("p7"), Some(("p7".into(), 7)));
        assert_eq!(p.take("s2"), Some(("s2".into(), 2)));
        p.merge(Packed::pack(&[("m", 5u64)], &Packed::default()), "movement");
        p.unshare();
        let inside = snapshot.as_ptr_range();
        assert!(
            p.bufs.frozen.iter().all(|b| !inside.contains(&b.as_ptr())),
            "a buffer still shares the snapshot's memory"
        );
        assert_eq!(p.len(), 1 + n - 1 + 1);
        assert_eq!(p.get("s1"), Some(("s1".into(), 1)));
        assert_eq!(p.get("m"), Some(("m".into(), 5)));
        for i in (0..n).filter(|&i| i != 7) {
            assert_eq!(p.get(&format!("p{i}")), Some((format!("p{i}"), i as u64)));
        }
        assert!(!p.contains("p7") && !p.contains("s2"));
        // Written again by copy: every value survives.
        let again = Packed::pack::<Pair>(&[], &p);
        assert_eq!(again.len(), p.len());
        assert_eq!(
            again.get(&format!("p{}", n - 1)),
            Some((format!("p{}", n - 1), n as u64 - 1))
        );
    }

    #[test]
    #[should_panic(expected = "restored in two shards")]
    fn merging_a_key_held_by_both_sets_stops_the_node() {
        let mut a = Packed::<Pair>::pack(&[("x", 1u64), ("y", 2)], &Packed::default());
        let b = Packed::<Pair>::pack(&[("y", 3u64)], &Packed::default());
        a.merge(b, "movement");
    }

    #[test]
    fn merged_sets_find_every_value() {
        let mut a = Packed::<Pair>::pack(&[("x", 1u64)], &Packed::default());
        a.merge(
            Packed::pack(&[("y", 2u64), ("w", 4)], &Packed::default()),
            "movement",
        );
        assert_eq!(a.len(), 3);
        assert_eq!(a.get("y"), Some(("y".into(), 2)));
        assert_eq!(a.get("x"), Some(("x".into(), 1)));
        assert_eq!(a.take("w"), Some(("w".into(), 4)));
        assert_eq!(a.len(), 2);
    }
}
