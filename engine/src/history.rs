//! An account's newest movements, kept encoded.
//!
//! An account keeps its newest `movements_window` rows (100 by default) for the movements API.
//! Decoded, a row took about 100 bytes (two inline IDs of 24 bytes each, amounts, times), so a
//! busy account held 10 KB of rows. Every change to a packed account then decoded all of
//! them, and every snapshot encoded them all again and dropped them: in the in-process bench
//! (100,000 busy accounts) that was a gigabyte of rows, and most of a snapshot's fold.
//!
//! [`History`] keeps each row as its postcard encoding (about 45 bytes) behind its length,
//! oldest first, in one buffer. Posting a movement encodes one row; the oldest row is dropped
//! by skipping its bytes; an account is encoded and decoded by copying the buffer. Rows are
//! decoded only to be read, by [`History::rows_newest_first`]. Snapshot format 4 carries the
//! buffer as it is (format 3 and older carried decoded rows, see
//! [`crate::account::LegacyAccountState`]).
//!
//! The buffer is written by this process or comes from a checksummed snapshot, and its
//! framing (the length of each row) is checked when it is decoded; a row that then does not
//! decode is a broken invariant and stops the process.

#![deny(clippy::float_arithmetic)]

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::types::{AccountId, Direction, MovementId, Timestamp};

/// One row of history kept in memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// The account's count of movements once this one was posted (1 for its first).
    pub seq: u64,
    /// The transfer or entry.
    pub movement_id: MovementId,
    /// The other account of a transfer.
    pub counterparty_opt: Option<AccountId>,
    /// The movement's description.
    pub description_opt: Option<Arc<str>>,
    /// The amount, minor units (positive).
    pub amount_minor: i64,
    /// The account's balance right after the movement.
    pub balance_after_minor: i64,
    /// When it was posted.
    pub at: Timestamp,
    /// Into or out of the account.
    pub direction: Direction,
    /// A transfer (else an entry).
    pub is_transfer: bool,
}

/// The newest rows of an account, oldest first, each encoded behind its length. See the
/// [module](self) documentation.
#[derive(Clone, Default)]
pub struct History {
    /// The rows from `start` on: each a varint length, then the row's postcard encoding.
    bytes: Vec<u8>,
    /// Where the oldest row starts: the bytes before it are rows already dropped, removed
    /// once they are a quarter of the buffer ([`History::push`]).
    start: usize,
    /// How many rows there are.
    len: usize,
}

impl History {
    /// Returns how many rows there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The live rows' bytes.
    fn live(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// Appends `row` as the newest, first dropping the oldest rows past `window - 1` (so that
    /// `window` rows are left). `window` is at least 1.
    pub fn push(&mut self, row: &HistoryRow, window: usize) {
        debug_assert!(window >= 1);
        while self.len >= window {
            self.pop_oldest();
        }
        // Dropped rows are removed once they are a quarter of the buffer: a busy account's
        // buffer stays within a third of its rows' size, and the rows left are moved once
        // every few dozen posts.
        if self.start > 0 && self.start >= self.bytes.len() / 4 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        let mut on_stack = [0u8; ROW_STACK_BYTES];
        let on_heap;
        let encoded: &[u8] = match postcard::to_slice(row, &mut on_stack) {
            Ok(encoded) => encoded,
            // A long description: encoded on the heap.
            Err(_) => {
                on_heap = postcard::to_allocvec(row).expect("a row serializes");
                &on_heap
            }
        };
        self.reserve_for(encoded.len());
        put_varint(&mut self.bytes, encoded.len());
        self.bytes.extend_from_slice(encoded);
        self.len += 1;
    }

    /// Makes room for one more row of `encoded` bytes. Grows by half the live rows (at
    /// least 64 bytes) rather than doubling: most accounts are idle, and memory per idle
    /// account counts; a busy one reaches its window in a few moves of its rows.
    fn reserve_for(&mut self, encoded: usize) {
        let need = encoded + VARINT_BYTES_MAX;
        if self.bytes.capacity() - self.bytes.len() < need {
            let grow = (self.live().len() / 2).max(64);
            self.bytes.reserve_exact(need.max(grow));
        }
    }

    /// Drops the oldest row.
    fn pop_oldest(&mut self) {
        let (_, rest) = split_row(self.live()).expect("a history row behind its length");
        self.start = self.bytes.len() - rest.len();
        self.len -= 1;
        if self.len == 0 {
            self.bytes.clear();
            self.start = 0;
        }
    }

    /// Returns the encodings of the rows, oldest first.
    fn encoded(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut rest = self.live();
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let (row, after) = split_row(rest).expect("a history row behind its length");
            rest = after;
            Some(row)
        })
    }

    /// Returns the oldest row.
    pub fn oldest(&self) -> Option<HistoryRow> {
        self.encoded().next().map(decode_row)
    }

    /// Returns the rows, newest first, decoded one by one as the iterator goes.
    pub fn rows_newest_first(&self) -> impl Iterator<Item = HistoryRow> + '_ {
        let encoded: Vec<&[u8]> = self.encoded().collect();
        encoded.into_iter().rev().map(decode_row)
    }

    /// Returns the rows, oldest first.
    pub fn rows(&self) -> impl Iterator<Item = HistoryRow> + '_ {
        self.encoded().map(decode_row)
    }

    /// Returns the history of `rows`, oldest first (from a snapshot of format 3 or older).
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = &'a HistoryRow>) -> History {
        let mut history = History::default();
        for row in rows {
            history.push(row, usize::MAX);
        }
        history.bytes.shrink_to_fit();
        history
    }

    /// Returns the history whose live bytes are `bytes` (as [`History`] serializes), after
    /// checking its framing: every row's length within the bytes.
    fn from_bytes(bytes: &[u8]) -> Result<History, String> {
        let mut rest = bytes;
        let mut len = 0;
        while !rest.is_empty() {
            let (_, after) = split_row(rest)?;
            rest = after;
            len += 1;
        }
        Ok(History {
            bytes: bytes.to_vec(),
            start: 0,
            len,
        })
    }
}

/// Rows up to this size are encoded on the stack.
const ROW_STACK_BYTES: usize = 256;
/// The longest varint of a `u64`.
const VARINT_BYTES_MAX: usize = 10;

fn put_varint(out: &mut Vec<u8>, n: usize) {
    let mut buf = [0u8; VARINT_BYTES_MAX];
    out.extend_from_slice(postcard::to_slice(&(n as u64), &mut buf).expect("a varint fits"));
}

/// Splits the row at the start of `bytes` (its length, then its encoding) from what follows.
fn split_row(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (len, rest) =
        postcard::take_from_bytes::<u64>(bytes).map_err(|e| format!("a history row: {e}"))?;
    usize::try_from(len)
        .ok()
        .filter(|&len| len <= rest.len())
        .map(|len| rest.split_at(len))
        .ok_or_else(|| format!("a history row of {len} bytes past the end of its account"))
}

fn decode_row(encoded: &[u8]) -> HistoryRow {
    postcard::from_bytes(encoded).expect("a history row this process encoded or checked")
}

/// Two histories are equal when they hold the same rows (the encoding is deterministic).
impl PartialEq for History {
    fn eq(&self, other: &History) -> bool {
        self.len == other.len && self.live() == other.live()
    }
}
impl Eq for History {}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.rows()).finish()
    }
}

/// Encodes as the rows' bytes (snapshot format 4): a varint length, then the rows.
impl Serialize for History {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.live())
    }
}

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<History, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = History;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an account's history rows")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<History, E> {
                History::from_bytes(bytes).map_err(E::custom)
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, description_opt: Option<&str>) -> HistoryRow {
        HistoryRow {
            seq,
            movement_id: MovementId::new(&format!("m-{seq}")).unwrap(),
            counterparty_opt: seq
                .is_multiple_of(2)
                .then(|| AccountId::new("other").unwrap()),
            description_opt: description_opt.map(Arc::from),
            amount_minor: 10 * seq as i64,
            balance_after_minor: -(seq as i64),
            at: Timestamp(1_000 + seq),
            direction: if seq.is_multiple_of(3) {
                Direction::In
            } else {
                Direction::Out
            },
            is_transfer: seq.is_multiple_of(2),
        }
    }

    #[test]
    fn the_newest_rows_of_the_window_are_kept_in_order_and_read_back_equal() {
        let long = "d".repeat(2_000);
        let mut history = History::default();
        let mut all = Vec::new();
        for seq in 1..=300 {
            let r = row(seq, seq.is_multiple_of(50).then_some(long.as_str()));
            history.push(&r, 7);
            all.push(r);
            let kept = &all[all.len().saturating_sub(7)..];
            assert_eq!(history.len(), kept.len());
            assert_eq!(history.rows().collect::<Vec<_>>(), kept);
            let newest_first: Vec<_> = history.rows_newest_first().collect();
            assert!(newest_first.iter().rev().eq(kept.iter()));
            assert_eq!(history.oldest().as_ref(), kept.first());
            // Dropped rows never pile up past a quarter of the buffer and one row.
            assert!(history.start <= history.bytes.len() / 4 + 2_100, "{seq}");
        }
        // What serializes decodes to the same rows, and a history of the rows is equal.
        let bytes = postcard::to_allocvec(&history).unwrap();
        let back: History = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, history);
        assert_eq!(History::from_rows(&all[all.len() - 7..]), history);
        // A window that shrinks drops the oldest rows at the next push.
        history.push(&row(301, None), 3);
        assert_eq!(
            history.rows().map(|r| r.seq).collect::<Vec<_>>(),
            [299, 300, 301]
        );
    }

    #[test]
    fn a_history_whose_rows_overrun_its_bytes_is_refused_when_decoded() {
        let mut history = History::default();
        history.push(&row(1, None), 10);
        history.push(&row(2, None), 10);
        let mut live = history.live().to_vec();
        live.pop();
        let cut = postcard::to_allocvec(&serde_bytes_of(&live)).unwrap();
        assert!(postcard::from_bytes::<History>(&cut).is_err());
        let whole = postcard::to_allocvec(&serde_bytes_of(history.live())).unwrap();
        assert_eq!(postcard::from_bytes::<History>(&whole).unwrap(), history);
    }

    /// Serializes bytes as serde's bytes (what [`History`] writes).
    fn serde_bytes_of(bytes: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(bytes)
    }
}
