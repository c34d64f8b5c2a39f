//! An account's newest movements, kept encoded.
//!
//! An account keeps its newest `movements_window` rows (100 by default) for the movements API.
//! Decoded, a row took about 100 bytes (two inline IDs of 24 bytes each, amounts, times), so a
//! busy account held 10 KB of rows. Every change to a packed account then decoded all of
//! them, and every snapshot encoded them all again and dropped them: in the in-process bench
//! (100,000 busy accounts) that was a gigabyte of rows, and most of a snapshot's fold.
//!
//! [`History`] keeps each row as its postcard encoding (about 45 bytes) behind its length,
//! oldest first, in one buffer. Posting a movement encodes one row; an account is encoded and
//! decoded by copying the buffer. Rows are decoded only to be read, by
//! [`History::rows_newest_first`]. Snapshot format 4 carries the buffer as it is (format 3 and
//! older carried decoded rows, see [`crate::account::LegacyAccountState`]).
//!
//! Rows past the window are dropped in bulk: the buffer holds up to a quarter of the window
//! more ([`slack`]), readers see only the newest `window` rows, and the push that finds the
//! buffer full drops the oldest rows down to the window in one pass. Dropping the oldest row
//! on every push read the length of a row the account had written a hundred posts ago: with
//! many busy accounts that line was never in the cache, and the miss was 8% of the node's
//! CPU under the batch load. Which rows are stored depends only on the pushes and the
//! windows they were made with, so a fold and a live node that see the same events keep the
//! same bytes.
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
    /// The rows: each a varint length, then the row's postcard encoding.
    bytes: Vec<u8>,
    /// How many rows there are (up to a window and its [`slack`]).
    len: usize,
}

/// How many rows past `window` an account keeps before the next push drops them all.
fn slack(window: usize) -> usize {
    window / 4
}

impl History {
    /// Returns how many rows are stored (readers see the newest `window` of them).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the bytes the rows take encoded (about what they add to a snapshot).
    pub fn encoded_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Appends `row` as the newest. A history already at `window` rows and its [`slack`]
    /// first drops its oldest rows down to `window - 1`. `window` is at least 1.
    pub fn push(&mut self, row: &HistoryRow, window: usize) {
        debug_assert!(window >= 1);
        if self.len >= window.saturating_add(slack(window)) {
            self.drop_oldest(self.len - (window - 1));
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
            let grow = (self.bytes.len() / 2).max(64);
            self.bytes.reserve_exact(need.max(grow));
        }
    }

    /// Drops the `n` oldest rows, in one pass over their lengths and one move of the rest.
    fn drop_oldest(&mut self, n: usize) {
        let mut rest = self.bytes.as_slice();
        for _ in 0..n {
            rest = split_row(rest).expect("a history row behind its length").1;
        }
        let cut = self.bytes.len() - rest.len();
        self.bytes.drain(..cut);
        self.len -= n;
    }

    /// Returns the encodings of the rows, oldest first.
    fn encoded(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut rest = self.bytes.as_slice();
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let (row, after) = split_row(rest).expect("a history row behind its length");
            rest = after;
            Some(row)
        })
    }

    /// Returns the oldest of the newest `window` rows.
    pub fn oldest(&self, window: usize) -> Option<HistoryRow> {
        self.encoded()
            .nth(self.len.saturating_sub(window))
            .map(decode_row)
    }

    /// Returns the newest `window` rows, newest first, decoded one by one as the iterator goes.
    pub fn rows_newest_first(&self, window: usize) -> impl Iterator<Item = HistoryRow> + '_ {
        let encoded: Vec<&[u8]> = self
            .encoded()
            .skip(self.len.saturating_sub(window))
            .collect();
        encoded.into_iter().rev().map(decode_row)
    }

    /// Returns every stored row, oldest first.
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
        self.len == other.len && self.bytes == other.bytes
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
        serializer.serialize_bytes(&self.bytes)
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
        let window = 8;
        let mut history = History::default();
        let mut all = Vec::new();
        let mut bulk_drops = 0;
        for seq in 1..=300 {
            let r = row(seq, seq.is_multiple_of(50).then_some(long.as_str()));
            let before = history.len();
            history.push(&r, window);
            bulk_drops += usize::from(history.len() < before);
            all.push(r);
            let visible = &all[all.len().saturating_sub(window)..];
            let newest_first: Vec<_> = history.rows_newest_first(window).collect();
            assert!(newest_first.iter().rev().eq(visible.iter()), "{seq}");
            assert_eq!(history.oldest(window).as_ref(), visible.first());
            // What is stored is the newest rows, at most the window and its slack, with no
            // bytes of dropped rows left behind.
            let stored: Vec<_> = history.rows().collect();
            assert!(stored.len() <= window + slack(window), "{seq}");
            assert_eq!(stored, all[all.len() - stored.len()..]);
            let framed: usize = all[all.len() - stored.len()..]
                .iter()
                .map(|r| {
                    let n = postcard::to_allocvec(r).unwrap().len();
                    n + postcard::to_allocvec(&(n as u64)).unwrap().len()
                })
                .sum();
            assert_eq!(history.bytes.len(), framed, "{seq}");
        }
        // Rows are dropped in bulk: one drop every slack + 1 pushes once the window is full.
        assert_eq!(
            bulk_drops,
            (300 - window - slack(window)).div_ceil(slack(window) + 1)
        );
        // What serializes decodes to the same rows, and a history of the rows is equal.
        let bytes = postcard::to_allocvec(&history).unwrap();
        let back: History = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, history);
        assert_eq!(
            History::from_rows(&all[all.len() - history.len()..]),
            history
        );
        // A window that shrinks drops the oldest rows at the next push, and readers see the
        // window they ask for.
        history.push(&row(301, None), 3);
        assert_eq!(
            history.rows().map(|r| r.seq).collect::<Vec<_>>(),
            [299, 300, 301]
        );
        assert_eq!(
            history
                .rows_newest_first(2)
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [301, 300]
        );
        assert_eq!(history.oldest(2).map(|r| r.seq), Some(300));
        assert_eq!(history.oldest(0), None);
    }

    #[test]
    fn a_history_whose_rows_overrun_its_bytes_is_refused_when_decoded() {
        let mut history = History::default();
        history.push(&row(1, None), 10);
        history.push(&row(2, None), 10);
        let mut live = history.bytes.clone();
        live.pop();
        let cut = postcard::to_allocvec(&serde_bytes_of(&live)).unwrap();
        assert!(postcard::from_bytes::<History>(&cut).is_err());
        let whole = postcard::to_allocvec(&serde_bytes_of(&history.bytes)).unwrap();
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
