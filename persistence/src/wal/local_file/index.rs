//! A shard's index of its records, built by reading its segment files under the reader rule.
//!
//! # The reader rule (zero tails)
//! Segments are preallocated: a segment file is longer than its records, and the space after
//! the last record is zeros (see `writer`). A segment is read from its start, record after
//! record; at each position:
//! 1. A record that decodes and continues the shard's stream (its shard, LSN continuity, hash
//!    chain) is taken.
//! 2. A position where the record header is all zeros ends the records: the rest of the file
//!    is unused preallocated space, and it must be all zeros as well. A file that ends exactly
//!    after its last record (written before segments were preallocated) simply ends there.
//! 3. Anything else (bytes that do not decode, or non-zero bytes in the space after a zero
//!    header) is a torn write when it lies in the newest segment and no valid record starts
//!    after it: a crash cut short an append that was never acknowledged. Recovery zeroes those
//!    bytes (the file keeps its length, so the space stays preallocated) and appends resume
//!    where they began. Anywhere else it is [`WalError::Corrupted`], naming file and offset.
//!
//! So a shard's write position is the end of its last valid record, never the end of its file.
//! A read-only reader (an operator tool beside a live node) applies the same rule but changes
//! nothing: a record being written right now is the end, as of now.

use std::{
    fs::{self, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use super::io_err;
use crate::{
    record::{self, Lsn, MAGIC},
    wal::{Tail, WalError},
};

/// Where one record sits.
#[derive(Clone, Copy, Debug)]
pub(super) struct RecordLoc {
    pub(super) first_lsn: Lsn,
    pub(super) last_lsn: Lsn,
    /// Byte offset of the record in its segment file.
    pub(super) offset: u64,
    pub(super) len: u32,
}

/// One segment file and the records it holds.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) records: Vec<RecordLoc>,
    /// End of the last record: where the next record of this segment goes. The file may be
    /// longer (zero-filled, preallocated space).
    pub(super) data_end: u64,
}

/// The records of one shard, as readers see them: only durable records are in it (the writer
/// adds a record after its `fdatasync` returned).
pub(super) struct ShardIndex {
    /// The shard's directory (`<dir>/shard-00003`).
    pub(super) dir: PathBuf,
    /// Segments oldest first; the last one is the one the writer appends to. None is empty.
    pub(super) segments: Vec<Segment>,
    /// The last record, or `None` for an empty stream.
    pub(super) tail_opt: Option<Tail>,
}

/// What the bytes of a segment hold from a position where no record decodes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Rest {
    /// Zeros to the end of the file: unused preallocated space (or nothing at all).
    Unused,
    /// A write cut short by a crash: the bytes up to `nonzero_end` are zeroed on open.
    Torn {
        /// End of the last non-zero byte of the file.
        nonzero_end: usize,
    },
    /// Neither: a valid record starts further on, or the segment is not the newest.
    Corrupt,
}

/// Classifies the bytes of a segment from `offset`, where no record decodes (the reader rule,
/// steps 2 and 3). Does no IO.
pub(super) fn classify_rest(bytes: &[u8], offset: usize, is_last: bool) -> Rest {
    let nonzero_end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    if nonzero_end <= offset {
        return Rest::Unused;
    }
    if is_last && !valid_record_after(&bytes[..nonzero_end], offset + 1) {
        Rest::Torn { nonzero_end }
    } else {
        Rest::Corrupt
    }
}

/// Returns whether any valid record starts at or after `from` (used to tell a torn tail from
/// corruption in the middle).
fn valid_record_after(bytes: &[u8], from: usize) -> bool {
    let mut i = from;
    while i + MAGIC.len() <= bytes.len() {
        if bytes[i..i + MAGIC.len()] == MAGIC && record::decode_checked(&bytes[i..]).is_ok() {
            return true;
        }
        i += 1;
    }
    false
}

impl ShardIndex {
    /// Reads and verifies every segment of `shard` under `root`. Unless `read_only`, creates
    /// the shard's directory, zeroes a torn tail and removes an empty newest segment.
    pub(super) fn open(root: &Path, shard: u32, read_only: bool) -> Result<ShardIndex, WalError> {
        let dir = root.join(format!("shard-{shard:05}"));
        if !read_only {
            fs::create_dir_all(&dir).map_err(io_err)?;
        }
        let entries = match fs::read_dir(&dir) {
            Err(e) if read_only && e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            other => other
                .map_err(io_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(io_err)?,
        };
        let mut paths: Vec<(Lsn, PathBuf)> = entries
            .into_iter()
            .filter_map(|entry| {
                let path = entry.path();
                let first = segment_first_lsn(&path)?;
                Some((first, path))
            })
            .collect();
        paths.sort_unstable_by_key(|(first, _)| *first);
        let mut index = ShardIndex {
            dir,
            segments: Vec::new(),
            tail_opt: None,
        };
        let count = paths.len();
        for (i, (first, path)) in paths.into_iter().enumerate() {
            index.load_segment(shard, first, path, i + 1 == count, read_only)?;
        }
        Ok(index)
    }

    /// Reads and verifies one segment, appending its records to the index.
    fn load_segment(
        &mut self,
        shard: u32,
        first: Lsn,
        path: PathBuf,
        is_last: bool,
        read_only: bool,
    ) -> Result<(), WalError> {
        let bytes = fs::read(&path).map_err(io_err)?;
        let corrupted = |offset: usize, reason: String| WalError::Corrupted {
            shard,
            location: format!("{} offset {offset}", path.display()),
            reason,
        };
        let mut records = Vec::new();
        let mut offset = 0usize;
        while offset < bytes.len() {
            let (rec, len) = match record::decode_checked(&bytes[offset..]) {
                Ok(decoded) => decoded,
                Err(err) => match classify_rest(&bytes, offset, is_last) {
                    Rest::Unused => break,
                    Rest::Corrupt => return Err(corrupted(offset, err.to_string())),
                    // A record being written by the node right now: the end, as of now.
                    Rest::Torn { .. } if read_only => break,
                    Rest::Torn { nonzero_end } => {
                        tracing::warn!(shard, file = %path.display(), offset, error = %err, "zeroing the torn tail of the stream");
                        zero_range(&path, offset, nonzero_end)?;
                        break;
                    }
                },
            };
            if records.is_empty() && rec.first_lsn != first {
                return Err(corrupted(
                    offset,
                    format!("segment named {first} starts at lsn {}", rec.first_lsn),
                ));
            }
            if rec.shard != shard {
                return Err(corrupted(offset, format!("record of shard {}", rec.shard)));
            }
            let prev_opt = self.tail_opt.map(|t| (t.last_lsn, t.hash));
            record::check_follows(prev_opt, &rec).map_err(|r| corrupted(offset, r.to_string()))?;
            self.tail_opt = Some(Tail {
                last_lsn: rec.last_lsn,
                hash: rec.hash,
            });
            records.push(RecordLoc {
                first_lsn: rec.first_lsn,
                last_lsn: rec.last_lsn,
                offset: offset as u64,
                len: len as u32,
            });
            offset += len;
        }
        if records.is_empty() && is_last {
            // An empty newest segment (a crash right after it was named, before its first
            // record was durable): remove it.
            if !read_only {
                fs::remove_file(&path).map_err(io_err)?;
            }
            return Ok(());
        }
        if records.is_empty() {
            return Err(corrupted(0, "empty segment before the last".into()));
        }
        self.segments.push(Segment {
            path,
            records,
            data_end: offset as u64,
        });
        Ok(())
    }

    /// Returns the (path, locations) of records with `last_lsn > after_lsn`, at most `max`.
    pub(super) fn locate(&self, after_lsn: Lsn, max: usize) -> Vec<(PathBuf, Vec<RecordLoc>)> {
        let mut out = Vec::new();
        let mut n = 0;
        let start = self
            .segments
            .partition_point(|s| s.records.last().is_some_and(|r| r.last_lsn <= after_lsn));
        for seg in &self.segments[start..] {
            let i = seg.records.partition_point(|r| r.last_lsn <= after_lsn);
            let take: Vec<RecordLoc> = seg.records[i..].iter().take(max - n).copied().collect();
            n += take.len();
            if !take.is_empty() {
                out.push((seg.path.clone(), take));
            }
            if n >= max {
                break;
            }
        }
        out
    }
}

/// Returns the first LSN a segment's file name announces (`00000000000000000001.seg`), or
/// `None` for any other file (the writer's spare, a probe).
pub(super) fn segment_first_lsn(path: &Path) -> Option<Lsn> {
    path.file_name()?
        .to_str()?
        .strip_suffix(".seg")?
        .parse::<Lsn>()
        .ok()
}

/// Overwrites bytes `start..end` of a file with zeros and syncs it: how a torn write or a
/// cut is undone without giving up the file's preallocated length.
pub(super) fn zero_range(path: &Path, start: usize, end: usize) -> Result<(), WalError> {
    if start >= end {
        return Ok(());
    }
    let file = OpenOptions::new().write(true).open(path).map_err(io_err)?;
    file.write_all_at(&vec![0u8; end - start], start as u64)
        .map_err(io_err)?;
    file.sync_data().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_records() -> Vec<u8> {
        let a = record::encode(0, 1, 1, 1, &[0; 32], b"first");
        let b = record::encode(0, 1, 2, 2, &a.hash, b"second");
        [a.bytes, b.bytes].concat()
    }

    #[test]
    fn zeros_after_the_last_record_are_unused_space() {
        let bytes = two_records();
        let end = bytes.len();
        let mut preallocated = bytes.clone();
        preallocated.resize(end + 4096, 0);
        assert_eq!(classify_rest(&preallocated, end, true), Rest::Unused);
        assert_eq!(classify_rest(&preallocated, end, false), Rest::Unused);
        assert_eq!(
            classify_rest(&bytes, end, true),
            Rest::Unused,
            "a file of the previous release ends at its last record"
        );
    }

    #[test]
    fn a_torn_record_followed_by_zeros_is_a_torn_tail_only_in_the_newest_segment() {
        let bytes = two_records();
        let first_len = record::decode(&bytes).unwrap().1;
        let mut torn = bytes[..bytes.len() - 3].to_vec();
        let nonzero_end = torn.len();
        torn.resize(bytes.len() + 4096, 0);
        assert_eq!(
            classify_rest(&torn, first_len, true),
            Rest::Torn { nonzero_end }
        );
        assert_eq!(classify_rest(&torn, first_len, false), Rest::Corrupt);
    }

    #[test]
    fn a_zero_header_with_a_valid_record_after_it_is_corruption() {
        let mut bytes = two_records();
        let first_len = record::decode(&bytes).unwrap().1;
        bytes[..first_len].fill(0);
        bytes.resize(bytes.len() + 100, 0);
        assert_eq!(classify_rest(&bytes, 0, true), Rest::Corrupt);
    }

    #[test]
    fn a_zero_header_with_junk_after_it_is_a_torn_tail() {
        // A record whose first page never reached the disk but a later one did.
        let mut bytes = two_records();
        let first_len = record::decode(&bytes).unwrap().1;
        let nonzero_end = bytes.len() - 2;
        bytes[first_len..first_len + record::HEADER_BYTES].fill(0);
        bytes.truncate(nonzero_end);
        bytes.resize(nonzero_end + 100, 0);
        assert_eq!(
            classify_rest(&bytes, first_len, true),
            Rest::Torn { nonzero_end }
        );
    }
}
