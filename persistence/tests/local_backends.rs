//! The conformance suites against the local backends, and the file backend's crash behaviour.

use std::fs;

use saldo_persistence::{
    record,
    snapshot::{local_dir::LocalDirSnapshotStore, memory::MemorySnapshotStore},
    testsuite,
    wal::{local_file::LocalFileWal, memory::MemoryWal, Wal, WalError},
};

#[tokio::test]
async fn local_file_wal_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    // In a subdirectory, as in a data directory: the parent is where a layout file of an older
    // data directory is looked for.
    let wal_dir = dir.path().join("wal");
    let wal = LocalFileWal::open(&wal_dir, true).unwrap();
    testsuite::wal_conformance(&wal).await;
    // Reopening reads the same stream back.
    drop(wal);
    let wal = LocalFileWal::open(&wal_dir, true).unwrap();
    assert_eq!(wal.tail(7).await.unwrap().map(|t| t.last_lsn), Some(61));
}

#[tokio::test]
async fn memory_wal_passes_the_conformance_suite() {
    testsuite::wal_conformance(&MemoryWal::new()).await;
}

#[tokio::test]
async fn local_file_wal_records_the_shard_count_in_the_stream_directory() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let (a, b) = (
        LocalFileWal::open(&wal_dir, true).unwrap(),
        LocalFileWal::open(&wal_dir, true).unwrap(),
    );
    testsuite::shard_count_conformance(&a, &b).await;
    assert!(wal_dir.join("layout.json").is_file());
    let race_dir = dir.path().join("race");
    let (a, b) = (
        LocalFileWal::open(&race_dir, true).unwrap(),
        LocalFileWal::open(&race_dir, true).unwrap(),
    );
    testsuite::shard_count_race_conformance(&a, &b).await;
}

#[tokio::test]
async fn memory_wal_records_the_shard_count() {
    let wal = MemoryWal::new();
    testsuite::shard_count_conformance(&wal, &wal.clone()).await;
    let wal = MemoryWal::new();
    testsuite::shard_count_race_conformance(&wal, &wal.clone()).await;
}

#[tokio::test]
async fn a_data_directory_from_before_the_move_keeps_its_shard_count() {
    // Written by main before the layout file moved into the stream's directory.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("layout.json"), "{\"shards\": 4}\n").unwrap();
    let wal_dir = dir.path().join("wal");
    let wal = LocalFileWal::open(&wal_dir, true).unwrap();
    testsuite::append_records(&wal, 3, 2, 1).await;
    assert_eq!(wal.recorded_shard_count().await.unwrap(), Some(4));
    match wal.claim_shard_count(2).await {
        Err(WalError::ShardCountMismatch {
            recorded: 4,
            configured: 2,
            location,
        }) => assert!(location.ends_with("layout.json"), "{location}"),
        other => panic!("another count must be refused: {other:?}"),
    }
    wal.claim_shard_count(4).await.unwrap();
    assert!(
        wal_dir.join("layout.json").is_file(),
        "copied into the stream's directory"
    );
    let read_only = LocalFileWal::open_read_only(&wal_dir).unwrap();
    assert_eq!(read_only.recorded_shard_count().await.unwrap(), Some(4));
}

#[tokio::test]
async fn snapshot_stores_pass_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    testsuite::snapshot_conformance(&LocalDirSnapshotStore::open(dir.path()).unwrap()).await;
    testsuite::snapshot_conformance(&MemorySnapshotStore::new()).await;
}

/// Returns the segment files of a shard, oldest first (not the writer's spare).
fn segment_paths(dir: &std::path::Path, shard: u32) -> Vec<std::path::PathBuf> {
    let shard_dir = dir.join(format!("shard-{shard:05}"));
    let mut segs: Vec<_> = fs::read_dir(shard_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

fn segment_path(dir: &std::path::Path, shard: u32) -> std::path::PathBuf {
    segment_paths(dir, shard).pop().unwrap()
}

/// Writes five records of two events to shard 0 of a new stream and closes it; returns the
/// directory, the records and the segment file.
async fn five_records_on_disk() -> (
    tempfile::TempDir,
    Vec<record::EncodedRecord>,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let wal = LocalFileWal::open(dir.path(), true).unwrap();
    let written = testsuite::append_records(&wal, 0, 5, 2).await;
    drop(wal);
    let path = segment_path(dir.path(), 0);
    (dir, written, path)
}

/// Returns the bytes the records take.
fn data_bytes(written: &[record::EncodedRecord]) -> u64 {
    written.iter().map(|r| r.bytes.len() as u64).sum()
}

#[tokio::test]
async fn a_torn_tail_is_truncated_on_open_and_appends_continue() {
    let (dir, written, path) = five_records_on_disk().await;
    // Tear the last record: the file ends inside it, as a file of a release that did not
    // preallocate does after a crash.
    let len = data_bytes(&written);
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 7).unwrap();
    drop(f);
    // A read-only reader (an operator tool beside a live node) stops before the half-written
    // record and leaves the file as it is.
    let reader = LocalFileWal::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.tail(0).await.unwrap().map(|t| t.last_lsn), Some(8));
    assert!(
        reader.append(0, written[4].clone()).await.is_err(),
        "read-only refuses appends"
    );
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        len - 7,
        "nothing truncated"
    );
    assert_eq!(
        reader.tail(9).await.unwrap(),
        None,
        "an absent shard is empty, not created"
    );
    assert!(!dir.path().join("shard-00009").exists());
    let wal = LocalFileWal::open(dir.path(), true).unwrap();
    let tail = wal.tail(0).await.unwrap().unwrap();
    assert_eq!(
        (tail.last_lsn, tail.hash),
        (8, written[3].hash),
        "the torn record is gone"
    );
    testsuite::append_records(&wal, 0, 1, 1).await;
    assert_eq!(wal.read(0, 0, 100).await.unwrap().len(), 5);
}

#[tokio::test]
async fn corruption_in_the_middle_is_an_error_naming_file_and_offset() {
    let (dir, written, path) = five_records_on_disk().await;
    let mut bytes = fs::read(&path).unwrap();
    let second = written[0].bytes.len();
    bytes[second + record::HEADER_BYTES + 2] ^= 0xff; // a payload byte of record 2
    fs::write(&path, &bytes).unwrap();
    let wal = LocalFileWal::open(dir.path(), true).unwrap();
    match wal.tail(0).await {
        Err(WalError::Corrupted { location, .. }) => {
            assert!(
                location.contains(".seg") && location.contains(&format!("offset {second}")),
                "{location}"
            );
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[tokio::test]
async fn a_record_over_the_size_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = LocalFileWal::open(dir.path(), false).unwrap();
    let mut rec = record::encode(0, 1, 1, 1, &[0; 32], b"x");
    rec.bytes
        .resize(saldo_persistence::limits::WAL_RECORD_BYTES_MAX + 1, 0);
    assert!(matches!(
        wal.append(0, rec).await,
        Err(WalError::RecordTooLarge { .. })
    ));
}

#[tokio::test]
async fn a_memory_record_altered_after_the_fact_is_detected_by_readers() {
    let wal = MemoryWal::new();
    testsuite::append_records(&wal, 0, 3, 1).await;
    wal.tamper(0, 1, |bytes| *bytes.last_mut().unwrap() ^= 1);
    assert!(matches!(
        wal.read(0, 0, 10).await,
        Err(WalError::Corrupted { .. })
    ));
}

#[tokio::test]
async fn segments_rotate_reopen_and_prune_only_what_is_covered() {
    let dir = tempfile::tempdir().unwrap();
    let wal = LocalFileWal::open_with_segment_bytes(dir.path(), true, 400).unwrap();
    testsuite::append_records(&wal, 2, 30, 2).await;
    let count = || segment_paths(dir.path(), 2).len();
    let segments = count();
    assert!(segments >= 5, "small segments rotate: {segments}");
    drop(wal);
    let wal = LocalFileWal::open_with_segment_bytes(dir.path(), true, 400).unwrap();
    assert_eq!(
        wal.read(2, 0, 1_000).await.unwrap().len(),
        30,
        "every segment is read back in order"
    );
    wal.prune(2, 30).await.unwrap();
    assert!(count() < segments, "covered segments are deleted");
    let rest = wal.read(2, 30, 1_000).await.unwrap();
    assert_eq!(
        rest.first().map(|r| r.first_lsn),
        Some(31),
        "nothing above the pruned position is lost"
    );
    assert_eq!(rest.last().map(|r| r.last_lsn), Some(60));
    testsuite::append_records(&wal, 2, 1, 1).await;
}

/// Returns the names of this process's threads.
fn thread_names() -> Vec<String> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn a_preallocated_segments_zero_tail_is_read_as_the_end() {
    let (dir, written, path) = five_records_on_disk().await;
    let bytes = fs::read(&path).unwrap();
    let end = data_bytes(&written) as usize;
    assert!(
        bytes.len() > end,
        "the segment is preallocated past its records"
    );
    assert!(bytes[end..].iter().all(|b| *b == 0), "and zero-filled");
    let reader = LocalFileWal::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.read(0, 0, 100).await.unwrap().len(), 5);
    let wal = LocalFileWal::open(dir.path(), true).unwrap();
    let tail = wal.tail(0).await.unwrap().unwrap();
    assert_eq!((tail.last_lsn, tail.hash), (10, written[4].hash));
    assert_eq!(wal.read(0, 0, 100).await.unwrap().len(), 5);
    assert!(
        fs::metadata(&path).unwrap().len() >= bytes.len() as u64,
        "the zero tail is unused space, not a torn write to cut off"
    );
}

#[tokio::test]
async fn a_torn_record_followed_by_zeros_is_zeroed_and_appends_resume_after_the_last_valid_record()
{
    let (dir, written, path) = five_records_on_disk().await;
    let mut bytes = fs::read(&path).unwrap();
    let (torn_at, end) = (
        data_bytes(&written[..4]) as usize,
        data_bytes(&written) as usize,
    );
    // Only the first half of the last record reached the disk; zeros follow it.
    bytes[torn_at + (end - torn_at) / 2..end].fill(0);
    fs::write(&path, &bytes).unwrap();
    let wal = LocalFileWal::open(dir.path(), true).unwrap();
    let tail = wal.tail(0).await.unwrap().unwrap();
    assert_eq!((tail.last_lsn, tail.hash), (8, written[3].hash));
    let after_open = fs::read(&path).unwrap();
    assert_eq!(
        after_open.len(),
        bytes.len(),
        "the preallocated length stays"
    );
    assert!(
        after_open[torn_at..].iter().all(|b| *b == 0),
        "the torn record is zeroed"
    );
    let appended = testsuite::append_records(&wal, 0, 1, 1).await;
    drop(wal);
    let after_append = fs::read(&path).unwrap();
    let resumed_at = &after_append[torn_at..torn_at + appended[0].bytes.len()];
    assert_eq!(
        resumed_at,
        &appended[0].bytes[..],
        "the append lands right after the last valid record"
    );
    let wal = LocalFileWal::open(dir.path(), true).unwrap();
    let lsns: Vec<_> = wal
        .read(0, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.first_lsn, r.last_lsn))
        .collect();
    assert_eq!(lsns, vec![(1, 2), (3, 4), (5, 6), (7, 8), (9, 9)]);
}

#[tokio::test]
async fn a_restart_then_an_append_then_a_restore_gives_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut written = Vec::new();
    for _ in 0..3 {
        let wal = LocalFileWal::open(dir.path(), true).unwrap();
        written.extend(testsuite::append_records(&wal, 1, 3, 1).await);
    }
    let wal = LocalFileWal::open(dir.path(), true).unwrap();
    let read = wal.read(1, 0, 100).await.unwrap();
    assert_eq!(
        read.iter().map(|r| r.hash).collect::<Vec<_>>(),
        written.iter().map(|r| r.hash).collect::<Vec<_>>(),
        "every record once, in order"
    );
    assert_eq!(
        segment_paths(dir.path(), 1).len(),
        1,
        "one segment took them all"
    );
}

#[tokio::test]
async fn records_roll_over_into_the_preallocated_next_segment() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = 400;
    let wal = LocalFileWal::open_with_segment_bytes(dir.path(), true, segment_bytes).unwrap();
    let written = testsuite::append_records(&wal, 2, 12, 1).await;
    // Dropping the stream joins its writer, which prepares the next segment after each append.
    drop(wal);
    let spare = dir.path().join("shard-00002/next-segment.zeros");
    let spare_bytes = fs::read(&spare).unwrap();
    assert_eq!(
        spare_bytes.len() as u64,
        segment_bytes,
        "the next segment is ready"
    );
    assert!(spare_bytes.iter().all(|b| *b == 0));
    let segments = segment_paths(dir.path(), 2);
    assert!(segments.len() >= 3, "{segments:?}");
    for path in &segments {
        assert_eq!(
            fs::metadata(path).unwrap().len(),
            segment_bytes,
            "{} was preallocated whole",
            path.display()
        );
    }
    let wal = LocalFileWal::open_with_segment_bytes(dir.path(), true, segment_bytes).unwrap();
    let read = wal.read(2, 0, 100).await.unwrap();
    assert_eq!(read.len(), written.len());
    assert_eq!(read.last().map(|r| r.hash), written.last().map(|r| r.hash));
    testsuite::append_records(&wal, 2, 1, 1).await;
}

#[tokio::test]
async fn cut_after_on_a_preallocated_segment_moves_only_records_and_appends_follow_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let wal = LocalFileWal::open(&wal_dir, true).unwrap();
    let written = testsuite::append_records(&wal, 0, 10, 1).await;
    let path = segment_path(&wal_dir, 0);
    let len_before = fs::metadata(&path).unwrap().len();
    let quarantine = dir.path().join("quarantine");
    assert_eq!(wal.cut_after(0, 6, &quarantine).unwrap(), 4);
    let moved = fs::read(quarantine.join(format!("{:020}.seg", 7))).unwrap();
    assert_eq!(
        moved,
        written[6..]
            .iter()
            .flat_map(|r| r.bytes.clone())
            .collect::<Vec<_>>()
    );
    let bytes = fs::read(&path).unwrap();
    assert_eq!(
        bytes.len() as u64,
        len_before,
        "the segment stays preallocated"
    );
    let cut = data_bytes(&written[..6]) as usize;
    assert!(bytes[cut..].iter().all(|b| *b == 0), "the cut is zeroed");
    let tail = wal.tail(0).await.unwrap().unwrap();
    assert_eq!((tail.last_lsn, tail.hash), (6, written[5].hash));
    // The writer follows the cut: the next record goes right after record 6.
    let appended = testsuite::append_records(&wal, 0, 1, 1).await;
    drop(wal);
    let bytes = fs::read(&path).unwrap();
    assert_eq!(
        &bytes[cut..cut + appended[0].bytes.len()],
        &appended[0].bytes[..]
    );
    let wal = LocalFileWal::open(&wal_dir, true).unwrap();
    assert_eq!(wal.read(0, 0, 100).await.unwrap().len(), 7);
}

#[tokio::test]
async fn dropping_the_stream_joins_its_writer_threads() {
    let dir = tempfile::tempdir().unwrap();
    let wal = LocalFileWal::open(dir.path(), true).unwrap();
    // Shard numbers no other test uses: the threads are named after them.
    for shard in [4321, 4322] {
        testsuite::append_records(&wal, shard, 1, 1).await;
    }
    let names = thread_names();
    assert!(names.iter().any(|n| n == "wal-shard-4321"), "{names:?}");
    drop(wal);
    let names = thread_names();
    assert!(
        !names
            .iter()
            .any(|n| n == "wal-shard-4321" || n == "wal-shard-4322"),
        "{names:?}"
    );
}
