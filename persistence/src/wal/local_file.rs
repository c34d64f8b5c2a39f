//! The default stream backend: one segmented log per shard under a directory.
//!
//! ```text
//! <dir>/layout.json                                    the shard count
//! <dir>/shard-00003/00000000000000000001.seg           records with LSNs from 1
//! <dir>/shard-00003/00000000000000052001.seg           the next segment, named by its first LSN
//! <dir>/shard-00003/next-segment.zeros                 zero-filled space: the segment after it
//! ```
//! Each segment is a concatenation of records (see [`crate::record`]) followed by zeros: its
//! space is zero-filled ahead of the records, so that an append's `fdatasync` need not update
//! the file's size. Readers stop at the first record header of all zeros (the reader rule, with
//! the handling of torn writes: [`index`]).
//!
//! # Writers
//! One writer thread per shard owns the shard's open segment file ([`writer`]): `append` hands
//! it the record over a channel and awaits its answer, so appends of different shards share no
//! lock and no blocking-pool hop, and each shard's records are written in order. It writes a
//! whole record with one positioned `write` at the end of the last record and then
//! `fdatasync`s (when `fsync` is on) before the append returns; between appends it zero-fills
//! the space ahead, in the open segment and then in a spare file that becomes the next segment
//! (named, and its directory synced, at rollover). The threads start when a shard is first
//! used by a writable handle, and are joined when the `LocalFileWal` is dropped.
//!
//! On open, every segment is read and verified (checksums, LSN continuity, hash chain). A torn
//! write at the end of the newest segment is zeroed; anything else that does not read is
//! [`WalError::Corrupted`] naming the file and byte offset; nothing is skipped silently.
//! Appends after a restart resume at the end of the last valid record, not at the end of the
//! file; data directories of releases that did not preallocate (a file ends at its last
//! record) read and append the same way.
//!
//! A failed write or fsync (also of the zero-filling, as when the disk is full) is reported as
//! `Unavailable` and the shard is then poisoned: after an fsync error the page cache can no
//! longer be trusted, so the only safe way on is a restart.
//!
//! `<dir>/layout.json` (`{"shards": 4}`) records the cluster's shard count
//! ([`Wal::claim_shard_count`]). Data directories written before it lived in the stream's
//! directory have it one level up (`<data-dir>/layout.json`, beside `wal/`): it is read from
//! there when the stream's own is missing, and copied into the stream's directory on the
//! next claim.

mod index;
mod writer;

use std::{
    fs::{self, File},
    io::Write,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use async_trait::async_trait;
use parking_lot::Mutex;

use self::{
    index::{zero_range, RecordLoc, ShardIndex},
    writer::{ShardFiles, ShardState, Writer, WriterConfig},
};
use super::{Tail, Wal, WalError};
use crate::{
    limits::{WAL_FILE_SHARDS_MAX, WAL_RECORD_BYTES_MAX, WAL_SEGMENT_BYTES_TARGET},
    record::{self, DecodeError, EncodedRecord, Lsn, Record},
};

/// One shard: its state and, for a writable handle, its writer thread.
struct Shard {
    state: Arc<ShardState>,
    /// `None` for a read-only handle.
    writer_opt: Option<Writer>,
}

/// Shards per chunk of [`ShardTable`].
const SHARD_TABLE_CHUNK: usize = 256;

/// [`SHARD_TABLE_CHUNK`] shards of [`ShardTable`], each set once when first used.
type ShardChunk = Box<[OnceLock<Shard>]>;

/// The shards a handle has opened, found without a lock: two levels of `OnceLock`s (chunks of
/// [`SHARD_TABLE_CHUNK`]), so an append of one shard never waits for another's.
struct ShardTable {
    chunks: Box<[OnceLock<ShardChunk>]>,
    /// Taken to open a shard (once per shard), never to find one.
    opening: Mutex<()>,
}

// The chunks cover the shards exactly.
const _: () = assert!(
    WAL_FILE_SHARDS_MAX as usize / SHARD_TABLE_CHUNK * SHARD_TABLE_CHUNK
        == WAL_FILE_SHARDS_MAX as usize
);

impl ShardTable {
    fn new() -> ShardTable {
        let num_chunks = WAL_FILE_SHARDS_MAX as usize / SHARD_TABLE_CHUNK;
        ShardTable {
            chunks: (0..num_chunks).map(|_| OnceLock::new()).collect(),
            opening: Mutex::new(()),
        }
    }

    fn get(&self, shard: u32) -> Option<&Shard> {
        let (chunk, slot) = (
            shard as usize / SHARD_TABLE_CHUNK,
            shard as usize % SHARD_TABLE_CHUNK,
        );
        self.chunks.get(chunk)?.get()?[slot].get()
    }

    /// Returns the shard, opening it with `open` on first use.
    fn get_or_open(
        &self,
        shard: u32,
        open: impl FnOnce() -> Result<Shard, WalError>,
    ) -> Result<&Shard, WalError> {
        if let Some(found) = self.get(shard) {
            return Ok(found);
        }
        if shard >= WAL_FILE_SHARDS_MAX {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("shard {shard} is over the file backend's {WAL_FILE_SHARDS_MAX} shards"),
            )));
        }
        let _opening = self.opening.lock();
        if let Some(found) = self.get(shard) {
            return Ok(found);
        }
        let chunk = self.chunks[shard as usize / SHARD_TABLE_CHUNK]
            .get_or_init(|| (0..SHARD_TABLE_CHUNK).map(|_| OnceLock::new()).collect());
        let opened = open()?;
        Ok(chunk[shard as usize % SHARD_TABLE_CHUNK].get_or_init(|| opened))
    }

    /// Takes every opened shard out of the table.
    fn drain(&mut self) -> Vec<Shard> {
        self.chunks
            .iter_mut()
            .filter_map(OnceLock::get_mut)
            .flat_map(|chunk| chunk.iter_mut().filter_map(OnceLock::take))
            .collect()
    }
}

/// A segmented, fsynced log per shard under one directory.
pub struct LocalFileWal {
    dir: PathBuf,
    /// Whether appends are synced to disk before they return. Off only for experiments.
    fsync: bool,
    /// Size at which a new segment starts.
    segment_bytes_target: u64,
    /// Opened by a tool beside a live node: never truncates, removes or appends.
    read_only: bool,
    shards: ShardTable,
}

impl Drop for LocalFileWal {
    /// Stops and joins every writer thread (each first writes what is queued).
    fn drop(&mut self) {
        for shard in self.shards.drain() {
            if let Some(writer) = shard.writer_opt {
                writer.stop();
            }
        }
    }
}

fn io_err(e: std::io::Error) -> WalError {
    WalError::Unavailable(Box::new(e))
}

/// Name of the file that records the stream's shard count.
const LAYOUT_FILE: &str = "layout.json";

/// Returns the shard count a layout file records, `None` when there is no file.
fn read_layout(path: &Path) -> Result<Option<u32>, WalError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("shards")?.as_u64())
        .and_then(|n| u32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| {
            io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unreadable layout file {}", path.display()),
            ))
        })
}

/// Writes a layout file unless one exists (a hard link is created atomically and never
/// replaces a file, so of two first starts only one records its count); returns the count
/// the file holds afterwards.
fn write_layout_once(path: &Path, num_shards: u32) -> Result<u32, WalError> {
    let dir = path
        .parent()
        .expect("a layout file sits in the stream's directory");
    // Unique per claim, also between two handles of one process.
    static CLAIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let claim = CLAIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{LAYOUT_FILE}.{}.{claim}.tmp", std::process::id()));
    let written = (|| {
        fs::write(&tmp, format!("{{\"shards\": {num_shards}}}\n"))?;
        File::open(&tmp)?.sync_all()?;
        match fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
            _ => sync_dir(dir),
        }
    })();
    let _ = fs::remove_file(&tmp);
    written.map_err(io_err)?;
    read_layout(path)?.ok_or_else(|| io_err(std::io::ErrorKind::NotFound.into()))
}

impl LocalFileWal {
    /// Opens (creating if needed) the log directory. Shards are opened and verified on first
    /// use.
    pub fn open(dir: impl Into<PathBuf>, fsync: bool) -> Result<LocalFileWal, WalError> {
        LocalFileWal::open_with_segment_bytes(dir, fsync, WAL_SEGMENT_BYTES_TARGET)
    }

    /// Opens the log directory with a chosen segment size (tests use small segments).
    pub fn open_with_segment_bytes(
        dir: impl Into<PathBuf>,
        fsync: bool,
        segment_bytes_target: u64,
    ) -> Result<LocalFileWal, WalError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err)?;
        Ok(LocalFileWal {
            dir,
            fsync,
            segment_bytes_target,
            read_only: false,
            shards: ShardTable::new(),
        })
    }

    /// Opens the log directory for reading only, as of now (the operator tools, beside a node
    /// that may be writing): a half-written last record is the end of the stream rather than
    /// something to truncate, nothing is created or removed, and `append`/`prune` are refused
    /// or skipped. Each shard is indexed on first use; later appends by the node are not seen.
    pub fn open_read_only(dir: impl Into<PathBuf>) -> Result<LocalFileWal, WalError> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not a stream directory", dir.display()),
            )));
        }
        Ok(LocalFileWal {
            dir,
            fsync: false,
            segment_bytes_target: WAL_SEGMENT_BYTES_TARGET,
            read_only: true,
            shards: ShardTable::new(),
        })
    }

    /// Returns the shard, opening it (reading and verifying its segments, and for a writable
    /// handle starting its writer thread) on first use.
    fn shard(&self, shard: u32) -> Result<&Shard, WalError> {
        self.shards.get_or_open(shard, || {
            let index = ShardIndex::open(&self.dir, shard, self.read_only)?;
            let files = ShardFiles::new(index.dir.clone(), self.read_only)?;
            let state = Arc::new(ShardState {
                index: Mutex::new(index),
                files: Mutex::new(files),
            });
            let writer_opt = if self.read_only {
                None
            } else {
                let config = WriterConfig {
                    shard,
                    fsync: self.fsync,
                    segment_bytes_target: self.segment_bytes_target,
                };
                Some(Writer::spawn(state.clone(), config)?)
            };
            Ok(Shard { state, writer_opt })
        })
    }

    /// Cuts a shard's stream after the record that ends at `lsn`: the records after it move,
    /// byte for byte, into `quarantine` (segment files named by their first LSN, readable by
    /// the same decoder), and the stream's tail becomes `lsn`. The operator's way out when the
    /// stream holds an event the engine cannot apply (docs/runbook.md): never run it on a
    /// stream a node has open. Returns how many records moved.
    pub fn cut_after(&self, shard: u32, lsn: Lsn, quarantine: &Path) -> Result<usize, WalError> {
        if self.read_only {
            return Err(io_err(std::io::Error::other(
                "the stream is open read-only",
            )));
        }
        let state = &self.shard(shard)?.state;
        // Files before index (the writer's order): the writer waits while the files change
        // under it, and reloads its open segment afterwards.
        let mut files = state.files.lock();
        let mut index = state.index.lock();
        let not_a_boundary = || WalError::OutOfOrder {
            shard,
            reason: "the cut must be at a record boundary of the stream (or 0)",
        };
        // The first record to move: (segment, record) right after `lsn`.
        let mut start_opt = None;
        for (si, seg) in index.segments.iter().enumerate() {
            for (ri, rec) in seg.records.iter().enumerate() {
                if rec.first_lsn == lsn + 1 {
                    start_opt = Some((si, ri));
                } else if rec.first_lsn <= lsn && lsn < rec.last_lsn {
                    return Err(not_a_boundary());
                }
            }
        }
        let Some((si, ri)) = start_opt else {
            return match index.tail_opt {
                Some(t) if t.last_lsn == lsn => Ok(0),
                None if lsn == 0 => Ok(0),
                _ => Err(not_a_boundary()),
            };
        };
        fs::create_dir_all(quarantine).map_err(io_err)?;
        files.invalidate();
        let mut moved = 0;
        // Records move byte for byte; the zero-filled space after them stays behind.
        let quarantine_records = |path: &Path, from: u64, to: u64, first_lsn: Lsn| {
            let bytes = fs::read(path).map_err(io_err)?;
            let target = quarantine.join(format!("{first_lsn:020}.seg"));
            let mut f = File::create(&target).map_err(io_err)?;
            f.write_all(&bytes[from as usize..to as usize])
                .map_err(io_err)?;
            f.sync_all().map_err(io_err)
        };
        let later: Vec<_> = index.segments.drain(si + 1..).collect();
        for seg in later {
            moved += seg.records.len();
            quarantine_records(&seg.path, 0, seg.data_end, seg.records[0].first_lsn)?;
            fs::remove_file(&seg.path).map_err(io_err)?;
        }
        let seg = &mut index.segments[si];
        let cut = seg.records[ri].offset;
        quarantine_records(&seg.path, cut, seg.data_end, seg.records[ri].first_lsn)?;
        sync_dir(quarantine).map_err(io_err)?;
        moved += seg.records.len() - ri;
        seg.records.truncate(ri);
        // Zeroed, not truncated: the space stays preallocated, and the reader rule ends the
        // segment at the cut.
        zero_range(&seg.path, cut as usize, seg.data_end as usize)?;
        seg.data_end = cut;
        if seg.records.is_empty() {
            let path = seg.path.clone();
            index.segments.pop();
            fs::remove_file(&path).map_err(io_err)?;
        }
        sync_dir(&index.dir).map_err(io_err)?;
        // The new tail: the last record left, read back to learn its hash.
        index.tail_opt = match index
            .segments
            .last()
            .and_then(|s| s.records.last().map(|r| (s, r)))
        {
            None => None,
            Some((seg, loc)) => {
                let file = File::open(&seg.path).map_err(io_err)?;
                let rec = read_record(shard, &seg.path, &file, loc, &mut Vec::new())?;
                Some(Tail {
                    last_lsn: rec.last_lsn,
                    hash: rec.hash,
                })
            }
        };
        Ok(moved)
    }

    /// Returns the shard directories present on disk (shard numbers), sorted.
    pub fn shards_on_disk(&self) -> Result<Vec<u32>, WalError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err)? {
            let name = entry.map_err(io_err)?.file_name();
            if let Some(n) = name.to_str().and_then(|n| n.strip_prefix("shard-")) {
                if let Ok(n) = n.parse() {
                    out.push(n);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Returns the stream's layout file and the one of a data directory written before the
    /// file moved into the stream's directory.
    fn layout_paths(&self) -> (PathBuf, Option<PathBuf>) {
        let legacy_opt = self.dir.parent().map(|p| p.join(LAYOUT_FILE));
        (self.dir.join(LAYOUT_FILE), legacy_opt)
    }

    fn recorded_layout(&self) -> Result<Option<(u32, PathBuf)>, WalError> {
        let (path, legacy_opt) = self.layout_paths();
        for p in std::iter::once(path).chain(legacy_opt) {
            if let Some(n) = read_layout(&p)? {
                return Ok(Some((n, p)));
            }
        }
        Ok(None)
    }

    fn claim_shard_count_blocking(&self, num_shards: u32) -> Result<(), WalError> {
        let (path, _) = self.layout_paths();
        let mismatch = |recorded: u32, at: &Path| WalError::ShardCountMismatch {
            location: format!("file:{}", at.display()),
            recorded,
            configured: num_shards,
        };
        let recorded_opt = self.recorded_layout()?;
        if let Some((recorded, at)) = &recorded_opt {
            if *recorded != num_shards {
                return Err(mismatch(*recorded, at));
            }
            if *at == path || self.read_only {
                return Ok(());
            }
        } else {
            super::check_unrecorded_shard_count(
                self.describe(),
                self.shards_on_disk()?,
                num_shards,
            )?;
            if self.read_only {
                return Ok(());
            }
        }
        match write_layout_once(&path, num_shards)? {
            n if n == num_shards => Ok(()),
            n => Err(mismatch(n, &path)),
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[async_trait]
impl Wal for LocalFileWal {
    async fn append(&self, shard: u32, record: EncodedRecord) -> Result<(), WalError> {
        if self.read_only {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the stream was opened read-only",
            )));
        }
        if record.bytes.len() > WAL_RECORD_BYTES_MAX {
            return Err(WalError::RecordTooLarge {
                size_bytes: record.bytes.len(),
                limit_bytes: WAL_RECORD_BYTES_MAX,
            });
        }
        let writer = self
            .shard(shard)?
            .writer_opt
            .as_ref()
            .expect("a writable handle starts a writer per shard");
        writer.append(record).await
    }

    async fn tail(&self, shard: u32) -> Result<Option<Tail>, WalError> {
        Ok(self.shard(shard)?.state.index.lock().tail_opt)
    }

    async fn read(
        &self,
        shard: u32,
        after_lsn: Lsn,
        max_records: usize,
    ) -> Result<Vec<Record>, WalError> {
        let max = max_records.clamp(1, crate::limits::WAL_READ_RECORDS_MAX);
        let located = self.shard(shard)?.state.index.lock().locate(after_lsn, max);
        crate::blocking::run(move || read_located(shard, located))
            .await
            .map_err(|e| WalError::Unavailable(Box::new(e)))?
    }

    async fn prune(&self, shard: u32, lsn: Lsn) -> Result<(), WalError> {
        if self.read_only {
            return Ok(());
        }
        // The segments leave the index under its lock, and their files are removed after it
        // is released: the writer takes the lock after every append, and a prune runs on a
        // snapshot's thread, at idle priority. Holding the lock through the removals stalled
        // every group commit until the busy node gave that thread the CPU back (p99 of 20-40
        // ms at the end of each snapshot, at 40,000 transfers/s).
        let pruned: Vec<_> = {
            let mut index = self.shard(shard)?.state.index.lock();
            // Never remove the segment open for appends (the writer touches no other).
            let covered = index
                .segments
                .iter()
                .take(index.segments.len().saturating_sub(1))
                .take_while(|seg| seg.records.last().is_some_and(|r| r.last_lsn <= lsn))
                .count();
            index.segments.drain(..covered).collect()
        };
        for seg in pruned {
            fs::remove_file(&seg.path).map_err(io_err)?;
            tracing::info!(shard, file = %seg.path.display(), "pruned stream segment covered by a snapshot");
        }
        Ok(())
    }

    async fn claim_shard_count(&self, num_shards: u32) -> Result<(), WalError> {
        // A few small file operations, once at start: not worth a blocking-pool hop (and
        // `block_in_place` would panic on a current-thread runtime).
        self.claim_shard_count_blocking(num_shards)
    }

    async fn recorded_shard_count(&self) -> Result<Option<u32>, WalError> {
        Ok(self.recorded_layout()?.map(|(n, _)| n))
    }

    fn describe(&self) -> String {
        format!("file:{}", self.dir.display())
    }

    /// Writes and syncs a scratch file of the largest record's size beside the shard
    /// directories, then removes it: the disk has room and syncs again.
    async fn probe(&self, shard: u32) -> Result<(), WalError> {
        if self.read_only {
            return Err(io_err(std::io::Error::other(
                "the stream is open read-only",
            )));
        }
        let path = self.dir.join(format!("probe-{shard:05}.tmp"));
        tokio::task::spawn_blocking(move || {
            let written = File::create(&path).and_then(|mut f| {
                f.write_all(&vec![0u8; WAL_RECORD_BYTES_MAX])?;
                f.sync_all()
            });
            // Removed whether or not the write worked: a probe never leaves a file behind.
            let removed = fs::remove_file(&path);
            written.and(removed)
        })
        .await
        .map_err(|e| io_err(std::io::Error::other(e)))?
        .map_err(io_err)
    }
}

fn read_located(
    shard: u32,
    located: Vec<(PathBuf, Vec<RecordLoc>)>,
) -> Result<Vec<Record>, WalError> {
    let mut out: Vec<Record> = Vec::new();
    // One buffer for every record of the call.
    let mut buf = Vec::new();
    for (path, locs) in located {
        let file = File::open(&path).map_err(io_err)?;
        for loc in locs {
            let rec = read_record(shard, &path, &file, &loc, &mut buf)?;
            if let Some(prev) = out.last() {
                record::check_follows(Some((prev.last_lsn, prev.hash)), &rec).map_err(|r| {
                    WalError::Corrupted {
                        shard,
                        location: format!("{} offset {}", path.display(), loc.offset),
                        reason: r.into(),
                    }
                })?;
            }
            out.push(rec);
        }
    }
    Ok(out)
}

/// Reads and verifies the record at `loc` of a segment, through `buf`.
fn read_record(
    shard: u32,
    path: &Path,
    file: &File,
    loc: &RecordLoc,
    buf: &mut Vec<u8>,
) -> Result<Record, WalError> {
    let corrupted = |reason: String| WalError::Corrupted {
        shard,
        location: format!("{} offset {}", path.display(), loc.offset),
        reason,
    };
    buf.resize(loc.len as usize, 0);
    file.read_exact_at(buf, loc.offset).map_err(io_err)?;
    let (rec, _) = record::decode(buf).map_err(|e: DecodeError| corrupted(e.to_string()))?;
    if (rec.first_lsn, rec.last_lsn) != (loc.first_lsn, loc.last_lsn) {
        return Err(corrupted("record changed on disk".into()));
    }
    Ok(rec)
}
