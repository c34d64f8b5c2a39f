//! The default stream backend: one segmented log per shard under a directory.
//!
//! ```text
//! <dir>/shard-00003/00000000000000000001.seg   records with LSNs from 1
//! <dir>/shard-00003/00000000000000052001.seg   the next segment, named by its first LSN
//! ```
//! Each segment is a plain concatenation of records (see [`crate::record`]). An append writes
//! the whole record with one `write` and then `fdatasync`s (when `fsync` is on) before it
//! returns; a new segment is created, synced and its directory synced before it is used.
//!
//! On open, every segment is read and verified (checksums, LSN continuity, hash chain). A record
//! that fails to decode at the very end of the last segment, with no valid record after it, is
//! a torn write: it is truncated away. Anything else is [`WalError::Corrupted`] naming the file
//! and byte offset; nothing is skipped silently.
//!
//! A failed write or fsync is reported as `Unavailable` and the shard is then poisoned: after an
//! fsync error the page cache can no longer be trusted, so the only safe way on is a restart.
//!
//! `<dir>/layout.json` (`{"shards": 4}`) records the cluster's shard count
//! ([`Wal::claim_shard_count`]). Data directories written before it lived in the stream's
//! directory have it one level up (`<data-dir>/layout.json`, beside `wal/`): it is read from
//! there when the stream's own is missing, and copied into the stream's directory on the
//! next claim.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Tail, Wal, WalError};
use crate::{
    limits::{WAL_RECORD_BYTES_MAX, WAL_SEGMENT_BYTES_TARGET},
    record::{self, DecodeError, EncodedRecord, Lsn, Record, MAGIC},
};

/// Where one record sits.
#[derive(Clone, Copy, Debug)]
struct RecordLoc {
    first_lsn: Lsn,
    last_lsn: Lsn,
    offset: u64,
    len: u32,
}

/// One segment file and the records it holds.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    records: Vec<RecordLoc>,
    size_bytes: u64,
}

/// The open state of one shard's log.
struct ShardLog {
    dir: PathBuf,
    /// Segments oldest first; the last one is open for appends.
    segments: Vec<Segment>,
    /// Append handle of the last segment (opened lazily).
    file_opt: Option<File>,
    tail_opt: Option<Tail>,
    /// Set after a failed write or sync: the shard refuses further appends.
    poisoned: bool,
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
    shards: Mutex<HashMap<u32, Arc<Mutex<ShardLog>>>>,
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
            shards: Mutex::new(HashMap::new()),
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
            shards: Mutex::new(HashMap::new()),
        })
    }

    fn shard(&self, shard: u32) -> Result<Arc<Mutex<ShardLog>>, WalError> {
        let mut shards = self.shards.lock();
        if let Some(log) = shards.get(&shard) {
            return Ok(log.clone());
        }
        let log = Arc::new(Mutex::new(ShardLog::open(
            &self.dir,
            shard,
            self.read_only,
        )?));
        shards.insert(shard, log.clone());
        Ok(log)
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
        let log = self.shard(shard)?;
        let mut log = log.lock();
        let not_a_boundary = || WalError::OutOfOrder {
            shard,
            reason: "the cut must be at a record boundary of the stream (or 0)",
        };
        // The first record to move: (segment, record) right after `lsn`.
        let mut start_opt = None;
        for (si, seg) in log.segments.iter().enumerate() {
            for (ri, rec) in seg.records.iter().enumerate() {
                if rec.first_lsn == lsn + 1 {
                    start_opt = Some((si, ri));
                } else if rec.first_lsn <= lsn && lsn < rec.last_lsn {
                    return Err(not_a_boundary());
                }
            }
        }
        let Some((si, ri)) = start_opt else {
            return match log.tail_opt {
                Some(t) if t.last_lsn == lsn => Ok(0),
                None if lsn == 0 => Ok(0),
                _ => Err(not_a_boundary()),
            };
        };
        fs::create_dir_all(quarantine).map_err(io_err)?;
        log.file_opt = None;
        let mut moved = 0;
        let later: Vec<Segment> = log.segments.drain(si + 1..).collect();
        for seg in later {
            moved += seg.records.len();
            let name = seg.path.file_name().expect("segments have names");
            let target = quarantine.join(name);
            fs::copy(&seg.path, &target).map_err(io_err)?;
            File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(io_err)?;
            fs::remove_file(&seg.path).map_err(io_err)?;
        }
        let seg = &mut log.segments[si];
        let cut = seg.records[ri].offset;
        let bytes = fs::read(&seg.path).map_err(io_err)?;
        let target = quarantine.join(format!("{:020}.seg", seg.records[ri].first_lsn));
        let mut f = File::create(&target).map_err(io_err)?;
        f.write_all(&bytes[cut as usize..]).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        sync_dir(quarantine).map_err(io_err)?;
        moved += seg.records.len() - ri;
        seg.records.truncate(ri);
        seg.size_bytes = cut;
        let file = OpenOptions::new()
            .write(true)
            .open(&seg.path)
            .map_err(io_err)?;
        file.set_len(cut).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        if seg.records.is_empty() {
            let path = seg.path.clone();
            log.segments.pop();
            fs::remove_file(&path).map_err(io_err)?;
        }
        sync_dir(&log.dir).map_err(io_err)?;
        // The new tail: the last record left, read back to learn its hash.
        log.tail_opt = match log
            .segments
            .last()
            .and_then(|s| s.records.last().map(|r| (s, r)))
        {
            None => None,
            Some((seg, loc)) => {
                let bytes = fs::read(&seg.path).map_err(io_err)?;
                let start = loc.offset as usize;
                let (rec, _) = record::decode(&bytes[start..start + loc.len as usize])
                    .map_err(|e| io_err(std::io::Error::other(e)))?;
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

impl ShardLog {
    fn open(root: &Path, shard: u32, read_only: bool) -> Result<ShardLog, WalError> {
        let dir = root.join(format!("shard-{shard:05}"));
        if !read_only {
            fs::create_dir_all(&dir).map_err(io_err)?;
        }
        let mut paths: Vec<(Lsn, PathBuf)> = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Err(e) if read_only && e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            other => other
                .map_err(io_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(io_err)?,
        };
        for entry in entries {
            let path = entry.path();
            let first_opt = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<Lsn>().ok());
            if let Some(first) = first_opt {
                paths.push((first, path));
            }
        }
        paths.sort_unstable_by_key(|(first, _)| *first);
        let mut log = ShardLog {
            dir,
            segments: Vec::new(),
            file_opt: None,
            tail_opt: None,
            poisoned: false,
        };
        let count = paths.len();
        for (i, (first, path)) in paths.into_iter().enumerate() {
            log.load_segment(shard, first, path, i + 1 == count, read_only)?;
        }
        Ok(log)
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
            match record::decode(&bytes[offset..]) {
                Ok((rec, len)) => {
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
                    record::check_follows(prev_opt, &rec)
                        .map_err(|r| corrupted(offset, r.to_string()))?;
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
                Err(err) => {
                    let torn = is_last && !valid_record_after(&bytes, offset + 1);
                    if !torn {
                        return Err(corrupted(offset, err.to_string()));
                    }
                    if read_only {
                        // A record being written by the node right now: the end, as of now.
                        break;
                    }
                    tracing::warn!(shard, file = %path.display(), offset, error = %err, "truncating torn tail of the stream");
                    let file = OpenOptions::new().write(true).open(&path).map_err(io_err)?;
                    file.set_len(offset as u64).map_err(io_err)?;
                    file.sync_all().map_err(io_err)?;
                    break;
                }
            }
        }
        if records.is_empty() && is_last {
            // An empty last segment (crash right after creating it): remove it.
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
            size_bytes: offset as u64,
        });
        Ok(())
    }

    fn append(
        &mut self,
        shard: u32,
        record: &EncodedRecord,
        fsync: bool,
        segment_bytes_target: u64,
    ) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Unavailable(
                "stream shard poisoned by an earlier write failure".into(),
            ));
        }
        if record.bytes.len() > WAL_RECORD_BYTES_MAX {
            return Err(WalError::RecordTooLarge {
                size_bytes: record.bytes.len(),
                limit_bytes: WAL_RECORD_BYTES_MAX,
            });
        }
        let expected_first = self.tail_opt.map_or(1, |t| t.last_lsn + 1);
        if record.first_lsn != expected_first {
            return Err(WalError::OutOfOrder {
                shard,
                reason: "first lsn does not follow the tail",
            });
        }
        if record.prev_hash != self.tail_opt.map_or([0; 32], |t| t.hash) {
            return Err(WalError::OutOfOrder {
                shard,
                reason: "prev hash is not the tail's hash",
            });
        }
        let result = self.write(record, fsync, segment_bytes_target);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn write(
        &mut self,
        record: &EncodedRecord,
        fsync: bool,
        segment_bytes_target: u64,
    ) -> Result<(), WalError> {
        let rotate = match self.segments.last() {
            None => true,
            Some(seg) => {
                seg.size_bytes > 0
                    && seg.size_bytes + record.bytes.len() as u64 > segment_bytes_target
            }
        };
        if rotate {
            if let Some(file) = self.file_opt.take() {
                file.sync_data().map_err(io_err)?;
            }
            let path = self.dir.join(format!("{:020}.seg", record.first_lsn));
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(io_err)?;
            if fsync {
                file.sync_all().map_err(io_err)?;
                sync_dir(&self.dir).map_err(io_err)?;
            }
            self.segments.push(Segment {
                path,
                records: Vec::new(),
                size_bytes: 0,
            });
            self.file_opt = Some(file);
        }
        let seg = self
            .segments
            .last_mut()
            .expect("a segment exists after rotation");
        if self.file_opt.is_none() {
            let mut file = OpenOptions::new()
                .append(true)
                .open(&seg.path)
                .map_err(io_err)?;
            file.seek(SeekFrom::End(0)).map_err(io_err)?;
            self.file_opt = Some(file);
        }
        let file = self.file_opt.as_mut().expect("opened above");
        file.write_all(&record.bytes).map_err(io_err)?;
        if fsync {
            file.sync_data().map_err(io_err)?;
        }
        seg.records.push(RecordLoc {
            first_lsn: record.first_lsn,
            last_lsn: record.last_lsn,
            offset: seg.size_bytes,
            len: record.bytes.len() as u32,
        });
        seg.size_bytes += record.bytes.len() as u64;
        self.tail_opt = Some(Tail {
            last_lsn: record.last_lsn,
            hash: record.hash,
        });
        Ok(())
    }

    /// Returns the (path, locations) of records with `last_lsn > after_lsn`, at most `max`.
    fn locate(&self, after_lsn: Lsn, max: usize) -> Vec<(PathBuf, Vec<RecordLoc>)> {
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

/// Returns whether any valid record starts at or after `from` (used to tell a torn tail from
/// corruption in the middle).
fn valid_record_after(bytes: &[u8], from: usize) -> bool {
    let mut i = from;
    while i + MAGIC.len() <= bytes.len() {
        if bytes[i..i + 4] == MAGIC && record::decode(&bytes[i..]).is_ok() {
            return true;
        }
        i += 1;
    }
    false
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
        let log = self.shard(shard)?;
        let (fsync, segment_bytes) = (self.fsync, self.segment_bytes_target);
        tokio::task::spawn_blocking(move || log.lock().append(shard, &record, fsync, segment_bytes))
            .await
            .map_err(|e| WalError::Unavailable(Box::new(e)))?
    }

    async fn tail(&self, shard: u32) -> Result<Option<Tail>, WalError> {
        Ok(self.shard(shard)?.lock().tail_opt)
    }

    async fn read(
        &self,
        shard: u32,
        after_lsn: Lsn,
        max_records: usize,
    ) -> Result<Vec<Record>, WalError> {
        let max = max_records.clamp(1, crate::limits::WAL_READ_RECORDS_MAX);
        let located = self.shard(shard)?.lock().locate(after_lsn, max);
        tokio::task::spawn_blocking(move || read_located(shard, located))
            .await
            .map_err(|e| WalError::Unavailable(Box::new(e)))?
    }

    async fn prune(&self, shard: u32, lsn: Lsn) -> Result<(), WalError> {
        if self.read_only {
            return Ok(());
        }
        let log = self.shard(shard)?;
        let mut log = log.lock();
        // Never remove the segment open for appends.
        while log.segments.len() > 1
            && log.segments[0]
                .records
                .last()
                .is_some_and(|r| r.last_lsn <= lsn)
        {
            let seg = log.segments.remove(0);
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
    let mut out = Vec::new();
    for (path, locs) in located {
        let mut file = File::open(&path).map_err(io_err)?;
        for loc in locs {
            let mut buf = vec![0u8; loc.len as usize];
            file.seek(SeekFrom::Start(loc.offset)).map_err(io_err)?;
            file.read_exact(&mut buf).map_err(io_err)?;
            let corrupted = |reason: String| WalError::Corrupted {
                shard,
                location: format!("{} offset {}", path.display(), loc.offset),
                reason,
            };
            let (rec, _) =
                record::decode(&buf).map_err(|e: DecodeError| corrupted(e.to_string()))?;
            if (rec.first_lsn, rec.last_lsn) != (loc.first_lsn, loc.last_lsn) {
                return Err(corrupted("record changed on disk".into()));
            }
            if let Some(prev) = out.last() {
                let prev: &Record = prev;
                record::check_follows(Some((prev.last_lsn, prev.hash)), &rec)
                    .map_err(|r| corrupted(r.into()))?;
            }
            out.push(rec);
        }
    }
    Ok(out)
}
