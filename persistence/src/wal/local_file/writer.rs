//! A shard's writer: one OS thread per shard that owns the shard's open segment file.
//!
//! # Protocol
//! 1. `append` (async) sends the record to the shard's thread over a bounded channel, with a
//!    oneshot for the answer, and awaits the answer: no blocking-pool hop and no lock shared
//!    between shards on the way.
//! 2. The thread checks that the record continues the stream, writes it with one positioned
//!    `write` at the end of the last record, `fdatasync`s it (when `fsync` is on), and only
//!    then adds it to the index that readers see, and answers.
//! 3. Between appends (when its queue is empty, and after each append so that a steady stream
//!    of appends cannot starve it) the thread keeps [`WAL_FILE_ZEROED_AHEAD_BYTES`] of
//!    zero-filled, synced space ready after the write position, one step of
//!    [`WAL_FILE_ZERO_FILL_STEP_BYTES`] at a time: first by extending the open segment up to
//!    the segment size, then in a spare file that becomes the next segment. A record written
//!    there changes no file size, so its `fdatasync` writes no metadata.
//! 4. Rollover links the spare under the next segment's name (its first LSN) and syncs the
//!    directory; only the first record written in it makes it visible to readers.
//!
//! The thread stops when its channel closes (the `LocalFileWal` is dropped) and is joined.
//!
//! # Buffers
//! The record's bytes are written from the caller's buffer (moved, never copied); zeros come
//! from one static buffer. Per append the only allocation is the oneshot of the answer: small
//! next to an `fdatasync`, and it keeps an append whose caller went away harmless (the record
//! is written all the same, and nobody waits for the answer).
//!
//! # Failure model
//! Any failed write, sync or file operation (also of the zero-filling, as when the disk is
//! full) poisons the shard: every later append is refused, because after a failed sync the
//! page cache can no longer be trusted. The way on is a restart, which re-reads the files
//! under the reader rule (`index`).

use std::{
    fs::{self, File, OpenOptions},
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::Arc,
    thread::JoinHandle,
};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::{
    index::{RecordLoc, Segment, ShardIndex},
    io_err, sync_dir,
};
use crate::{
    limits::{
        WAL_FILE_WRITER_QUEUE_MAX, WAL_FILE_WRITER_STACK_BYTES, WAL_FILE_ZEROED_AHEAD_BYTES,
        WAL_FILE_ZERO_FILL_STEP_BYTES,
    },
    record::EncodedRecord,
    wal::{Tail, WalError},
};

/// Name of the spare file in a shard's directory: zero-filled space that becomes the next
/// segment. Not a segment name, so readers never look at it.
pub(super) const SPARE_FILE: &str = "next-segment.zeros";

/// Where zero-fill steps write from: never written, so it costs no memory until read.
static ZEROS: [u8; WAL_FILE_ZERO_FILL_STEP_BYTES] = [0; WAL_FILE_ZERO_FILL_STEP_BYTES];

/// How a shard's writer writes.
#[derive(Clone, Copy, Debug)]
pub(super) struct WriterConfig {
    pub(super) shard: u32,
    /// Whether records (and the zero-filled space) are synced before an append returns.
    pub(super) fsync: bool,
    /// Size at which a new segment starts.
    pub(super) segment_bytes_target: u64,
}

/// A shard's state, shared by its writer thread and the `LocalFileWal` handle.
pub(super) struct ShardState {
    /// What readers see. Locked briefly, never across a write or a sync.
    pub(super) index: Mutex<ShardIndex>,
    /// The writer's files. Locked by the writer thread for each append or fill step, and by
    /// `cut_after`, which changes the files under the writer.
    pub(super) files: Mutex<ShardFiles>,
}

/// The open segment: where records go.
struct OpenSegment {
    file: File,
    path: PathBuf,
    /// End of the last record: where the next one goes.
    data_end: u64,
    /// Length of the file; the bytes from `data_end` to here are zeros.
    file_len: u64,
}

/// The spare: zero-filled space under [`SPARE_FILE`], the next segment once named.
struct Spare {
    file: File,
    /// Zero-filled and synced length.
    len: u64,
}

/// The writer's view of the shard's files.
pub(super) struct ShardFiles {
    dir: PathBuf,
    /// Set at start and by `cut_after`: the open segment and the tail are reloaded from the
    /// index before the next write.
    stale: bool,
    /// `None` while the shard has no segment.
    current_opt: Option<OpenSegment>,
    spare_opt: Option<Spare>,
    /// The last durable record: what the next append must continue.
    tail_opt: Option<Tail>,
    /// Why the shard refuses appends, after a failed write or sync.
    poisoned_opt: Option<String>,
}

impl ShardFiles {
    /// Returns the files of a shard whose directory is `dir`. Unless `read_only`, a spare left
    /// by an earlier process is removed: how much of it is zero-filled and synced is unknown.
    pub(super) fn new(dir: PathBuf, read_only: bool) -> Result<ShardFiles, WalError> {
        if !read_only {
            match fs::remove_file(dir.join(SPARE_FILE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(e)),
                _ => {}
            }
        }
        Ok(ShardFiles {
            dir,
            stale: true,
            current_opt: None,
            spare_opt: None,
            tail_opt: None,
            poisoned_opt: None,
        })
    }

    /// Marks the files changed underneath the writer (a cut): the open segment is closed and
    /// reloaded from the index before the next write.
    pub(super) fn invalidate(&mut self) {
        self.stale = true;
        self.current_opt = None;
    }

    /// Reloads the open segment and the tail from the index: the write position is the end of
    /// the last record, not the end of the file.
    fn reload(&mut self, index: &Mutex<ShardIndex>) -> Result<(), WalError> {
        let index = index.lock();
        self.current_opt = match index.segments.last() {
            None => None,
            Some(seg) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&seg.path)
                    .map_err(io_err)?;
                let file_len = file.metadata().map_err(io_err)?.len();
                assert!(file_len >= seg.data_end, "a segment holds its records");
                Some(OpenSegment {
                    file,
                    path: seg.path.clone(),
                    data_end: seg.data_end,
                    file_len,
                })
            }
        };
        self.tail_opt = index.tail_opt;
        self.stale = false;
        Ok(())
    }

    /// Appends one record (protocol step 2). A failure poisons the shard.
    fn append(
        &mut self,
        index: &Mutex<ShardIndex>,
        config: &WriterConfig,
        record: &EncodedRecord,
    ) -> Result<(), WalError> {
        if let Some(cause) = &self.poisoned_opt {
            return Err(WalError::Unavailable(
                format!("stream shard poisoned by an earlier write failure: {cause}").into(),
            ));
        }
        if self.stale {
            self.reload(index).inspect_err(|e| self.poison(e))?;
        }
        let shard = config.shard;
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
        self.write(index, config, record)
            .inspect_err(|e| self.poison(e))
    }

    fn poison(&mut self, cause: &WalError) {
        self.poisoned_opt = Some(cause.to_string());
    }

    fn write(
        &mut self,
        index: &Mutex<ShardIndex>,
        config: &WriterConfig,
        record: &EncodedRecord,
    ) -> Result<(), WalError> {
        let len = record.bytes.len() as u64;
        let rollover = match &self.current_opt {
            None => true,
            Some(cur) => cur.data_end > 0 && cur.data_end + len > config.segment_bytes_target,
        };
        if rollover {
            self.roll_over(config, record.first_lsn)?;
        }
        let cur = self
            .current_opt
            .as_mut()
            .expect("a segment is open after a rollover");
        cur.file
            .write_all_at(&record.bytes, cur.data_end)
            .map_err(io_err)?;
        if config.fsync {
            cur.file.sync_data().map_err(io_err)?;
        }
        let loc = RecordLoc {
            first_lsn: record.first_lsn,
            last_lsn: record.last_lsn,
            offset: cur.data_end,
            len: record.bytes.len() as u32,
        };
        cur.data_end += len;
        cur.file_len = cur.file_len.max(cur.data_end);
        let tail = Tail {
            last_lsn: record.last_lsn,
            hash: record.hash,
        };
        self.tail_opt = Some(tail);
        // Durable now: readers may see it.
        let mut index = index.lock();
        if rollover {
            index.segments.push(Segment {
                path: cur.path.clone(),
                records: vec![loc],
                data_end: cur.data_end,
            });
        } else {
            let seg = index
                .segments
                .last_mut()
                .expect("the open segment is in the index");
            assert_eq!(
                seg.path, cur.path,
                "the writer appends to the newest segment"
            );
            seg.records.push(loc);
            seg.data_end = cur.data_end;
        }
        index.tail_opt = Some(tail);
        Ok(())
    }

    /// Starts the segment whose first record is `first_lsn` (protocol step 4): the spare
    /// (made now when there is none) is linked under the segment's name.
    fn roll_over(&mut self, config: &WriterConfig, first_lsn: u64) -> Result<(), WalError> {
        if let Some(cur) = self.current_opt.take() {
            // Already synced record by record when `fsync` is on; a sealed segment is made
            // durable either way.
            cur.file.sync_data().map_err(io_err)?;
        }
        if self.spare_opt.is_none() {
            self.fill_spare(config)?;
        }
        let spare = self.spare_opt.take().expect("made above");
        let spare_path = self.dir.join(SPARE_FILE);
        let path = self.dir.join(format!("{first_lsn:020}.seg"));
        // A link never replaces a file: an existing segment of that name is an error.
        fs::hard_link(&spare_path, &path).map_err(io_err)?;
        fs::remove_file(&spare_path).map_err(io_err)?;
        if config.fsync {
            sync_dir(&self.dir).map_err(io_err)?;
        }
        self.current_opt = Some(OpenSegment {
            file: spare.file,
            path,
            data_end: 0,
            file_len: spare.len,
        });
        Ok(())
    }

    /// Zero-fills one step of the space ahead of the write position when less than
    /// [`WAL_FILE_ZEROED_AHEAD_BYTES`] minus a step is ready (protocol step 3). Returns
    /// whether it wrote anything. A failure poisons the shard.
    fn fill_step(
        &mut self,
        index: &Mutex<ShardIndex>,
        config: &WriterConfig,
    ) -> Result<bool, WalError> {
        if self.poisoned_opt.is_some() {
            return Ok(false);
        }
        let filled = (|| {
            if self.stale {
                self.reload(index)?;
            }
            let room = self
                .current_opt
                .as_ref()
                .map_or(0, |c| c.file_len - c.data_end)
                + self.spare_opt.as_ref().map_or(0, |s| s.len);
            if room > WAL_FILE_ZEROED_AHEAD_BYTES - WAL_FILE_ZERO_FILL_STEP_BYTES as u64 {
                return Ok(false);
            }
            let target = config.segment_bytes_target;
            let Some(cur) = self.current_opt.as_mut().filter(|c| c.file_len < target) else {
                return self.fill_spare(config);
            };
            let step = step_bytes(cur.file_len, target);
            cur.file
                .write_all_at(&ZEROS[..step], cur.file_len)
                .map_err(io_err)?;
            if config.fsync {
                cur.file.sync_data().map_err(io_err)?;
            }
            cur.file_len += step as u64;
            Ok(true)
        })();
        filled.inspect_err(|e| {
            tracing::warn!(shard = config.shard, error = %e, "zero-filling the stream's next space failed; the shard refuses appends until the process restarts");
            self.poison(e);
        })
    }

    /// Zero-fills one step of the spare, creating it if needed. Returns whether it wrote
    /// anything (a spare of a whole segment is complete).
    fn fill_spare(&mut self, config: &WriterConfig) -> Result<bool, WalError> {
        let created = self.spare_opt.is_none();
        if created {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.dir.join(SPARE_FILE))
                .map_err(io_err)?;
            self.spare_opt = Some(Spare { file, len: 0 });
        }
        let spare = self.spare_opt.as_mut().expect("created above");
        if spare.len >= config.segment_bytes_target {
            return Ok(false);
        }
        let step = step_bytes(spare.len, config.segment_bytes_target);
        spare
            .file
            .write_all_at(&ZEROS[..step], spare.len)
            .map_err(io_err)?;
        if config.fsync {
            // The size is synced once per step; the whole inode once, at creation.
            if created {
                spare.file.sync_all().map_err(io_err)?;
            } else {
                spare.file.sync_data().map_err(io_err)?;
            }
        }
        spare.len += step as u64;
        Ok(true)
    }
}

/// Returns the bytes of the next zero-fill step of a file of `len` bytes: a step, or what is
/// left up to the segment size.
fn step_bytes(len: u64, segment_bytes_target: u64) -> usize {
    let left = segment_bytes_target.saturating_sub(len);
    usize::try_from(left).map_or(WAL_FILE_ZERO_FILL_STEP_BYTES, |left| {
        left.min(WAL_FILE_ZERO_FILL_STEP_BYTES)
    })
}

/// One append, as the writer thread receives it.
struct Job {
    record: EncodedRecord,
    reply: oneshot::Sender<Result<(), WalError>>,
}

/// The handle of a shard's writer thread.
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
    thread: JoinHandle<()>,
}

impl Writer {
    /// Starts the writer thread of a shard.
    pub(super) fn spawn(state: Arc<ShardState>, config: WriterConfig) -> Result<Writer, WalError> {
        let (jobs, queue) = mpsc::channel(WAL_FILE_WRITER_QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name(format!("wal-shard-{}", config.shard))
            .stack_size(WAL_FILE_WRITER_STACK_BYTES)
            .spawn(move || run(&state, &config, queue))
            .map_err(io_err)?;
        Ok(Writer { jobs, thread })
    }

    /// Hands a record to the writer thread and returns its answer.
    pub(super) async fn append(&self, record: EncodedRecord) -> Result<(), WalError> {
        let stopped = || WalError::Unavailable("the stream shard's writer thread stopped".into());
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { record, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Closes the queue and joins the thread, which first writes what is queued.
    pub(super) fn stop(self) {
        drop(self.jobs);
        if self.thread.join().is_err() {
            // The panic was reported where it happened; its appends were answered with an
            // error (their oneshots dropped).
            tracing::error!("a stream writer thread panicked");
        }
    }
}

/// The writer thread's loop (protocol steps 2 and 3): appends in order, and zero-fill steps
/// between them. Returns when the queue closes.
fn run(state: &ShardState, config: &WriterConfig, mut queue: mpsc::Receiver<Job>) {
    loop {
        let job = match queue.try_recv() {
            Ok(job) => job,
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Idle: prepare space, one step at a time, looking for appends in between.
                if let Ok(true) = state.files.lock().fill_step(&state.index, config) {
                    continue;
                }
                match queue.blocking_recv() {
                    Some(job) => job,
                    None => return,
                }
            }
        };
        let mut files = state.files.lock();
        let result = files.append(&state.index, config, &job.record);
        // A caller that went away gets no answer; its record is written all the same.
        let _ = job.reply.send(result);
        // Under a steady stream of appends the queue is never empty: keep pace here. A
        // failure has poisoned the shard, and the next append reports it.
        let _ = files.fill_step(&state.index, config);
    }
}
