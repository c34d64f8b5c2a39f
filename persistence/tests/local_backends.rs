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

fn segment_path(dir: &std::path::Path, shard: u32) -> std::path::PathBuf {
    let shard_dir = dir.join(format!("shard-{shard:05}"));
    let mut segs: Vec<_> = fs::read_dir(shard_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[tokio::test]
async fn a_torn_tail_is_truncated_on_open_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let wal = LocalFileWal::open(dir.path(), true).unwrap();
    let written = testsuite::append_records(&wal, 0, 5, 2).await;
    drop(wal);
    let path = segment_path(dir.path(), 0);
    let len = fs::metadata(&path).unwrap().len();
    // Tear the last record: keep only part of it.
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
    let dir = tempfile::tempdir().unwrap();
    let wal = LocalFileWal::open(dir.path(), true).unwrap();
    let written = testsuite::append_records(&wal, 0, 5, 2).await;
    drop(wal);
    let path = segment_path(dir.path(), 0);
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
    let shard_dir = dir.path().join("shard-00002");
    let count = || fs::read_dir(&shard_dir).unwrap().count();
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
