//! A stream whose records expire (Kinesis retention), simulated with `MemoryWal::expire`: a
//! shard quiet for longer than the retention has an empty stream, and the node restarts from
//! its snapshot alone; a stream that keeps its records and is empty under a snapshot, or a
//! stream whose surviving records do not continue the snapshot, is still refused. (The same
//! on kinesalite and DynamoDB Local: gateway/tests/aws.rs.)

use std::sync::Arc;

use saldo_engine::*;
use saldo_persistence::{
    snapshot::memory::MemorySnapshotStore,
    wal::{memory::MemoryWal, Wal},
};

/// A retention the memory stream reports (its records expire only when a test says so).
const RETENTION_MS: u64 = 24 * 3_600_000;

fn config() -> EngineConfig {
    EngineConfig {
        num_shards: 1,
        node_epoch: 1,
        movements_window: 3,
        in_flight_max: 1_000,
        group_commit_linger_us: 0,
        snapshot_every_events: u64::MAX,
        snapshot_interval_ms: 0,
        snapshots_keep: 2,
        clock: saldo_engine::Clock::system(),
        courier: saldo_engine::Courier::direct(),
    }
}

async fn open(wal: &MemoryWal, snaps: &MemorySnapshotStore) -> Result<Ledger, EngineError> {
    Ledger::open(config(), Arc::new(wal.clone()), Arc::new(snaps.clone())).await
}

fn id(s: &str) -> AccountId {
    AccountId::new(s).expect("valid id")
}

async fn funded(l: &Ledger, name: &str, amount_minor: i64) {
    l.open_account(OpenAccount {
        account_id: id(name),
        currency: Currency::new("BRL").expect("valid currency"),
        overdraft_limit_minor: 0,
        metadata_opt: None,
    })
    .await
    .expect("open account");
    if amount_minor == 0 {
        return;
    }
    l.post_entry(Entry {
        entry_id: MovementId::new(&format!("{name}-funding")).expect("valid id"),
        account_id: id(name),
        kind: EntryKind::Credit,
        amount_minor,
        description_opt: None,
    })
    .await
    .expect("fund account");
}

async fn transfer(l: &Ledger, tid: &str, from: &str, to: &str, amount_minor: i64) {
    l.transfer(Transfer {
        transfer_id: MovementId::new(tid).expect("valid id"),
        debit_account_id: id(from),
        credit_account_id: id(to),
        amount_minor,
        currency: Currency::new("BRL").expect("valid currency"),
        description_opt: None,
    })
    .await
    .expect("transfer");
}

async fn balance(l: &Ledger, a: &str) -> i64 {
    l.account(&id(a)).await.expect("account").balance_minor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_records_all_expired_restarts_from_its_snapshot() {
    let wal = MemoryWal::with_retention_ms(RETENTION_MS);
    let snaps = MemorySnapshotStore::new();
    let l = open(&wal, &snaps).await.expect("first start");
    funded(&l, "r-a", 10_000).await;
    funded(&l, "r-b", 0).await;
    transfer(&l, "r-t1", "r-a", "r-b", 2_500).await;
    l.snapshot_now().await.expect("snapshot at the tail");
    l.shutdown().await;
    drop(l);

    // The shard stays quiet past the retention: every record expires.
    wal.expire(0);
    assert_eq!(wal.tail(0).await.expect("tail"), None);
    let l = open(&wal, &snaps)
        .await
        .expect("restarts from the snapshot alone");
    assert_eq!(balance(&l, "r-a").await, 7_500);
    assert_eq!(balance(&l, "r-b").await, 2_500);
    // A retry of an ID the snapshot holds is a replay, not a second transfer.
    transfer(&l, "r-t1", "r-a", "r-b", 2_500).await;
    assert_eq!(balance(&l, "r-b").await, 2_500);
    // New writes continue the snapshot's chain, and a restart replays them on top of it.
    transfer(&l, "r-t2", "r-b", "r-a", 1_000).await;
    l.shutdown().await;
    drop(l);
    let l = open(&wal, &snaps)
        .await
        .expect("restarts after writing on the snapshot");
    assert_eq!(balance(&l, "r-a").await, 8_500);
    assert_eq!(balance(&l, "r-b").await, 1_500);
    l.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_keeps_its_records_and_lost_them_is_still_refused() {
    let kept = MemoryWal::new();
    let snaps = MemorySnapshotStore::new();
    let l = open(&kept, &snaps).await.expect("first start");
    funded(&l, "k-a", 10_000).await;
    l.snapshot_now().await.expect("snapshot");
    l.shutdown().await;
    drop(l);
    // The same snapshots over an empty stream that never expires records: the records after
    // the snapshot (if any) are lost, not expired; the node must not start on the snapshot.
    let err = open(&MemoryWal::new(), &snaps)
        .await
        .err()
        .expect("an empty non-expiring stream under a snapshot is refused");
    assert!(err.to_string().contains("stream tail is 0"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surviving_records_that_do_not_continue_the_snapshot_are_refused() {
    let wal = MemoryWal::with_retention_ms(RETENTION_MS);
    let snaps = MemorySnapshotStore::new();
    let l = open(&wal, &snaps).await.expect("first start");
    funded(&l, "g-a", 10_000).await;
    funded(&l, "g-b", 0).await;
    l.snapshot_now().await.expect("snapshot");
    let covered = wal.tail(0).await.expect("tail").expect("records");
    transfer(&l, "g-t1", "g-a", "g-b", 100).await;
    transfer(&l, "g-t2", "g-a", "g-b", 100).await;
    l.shutdown().await;
    drop(l);
    // Records after the snapshot expired while later ones survive: a gap, not a quiet shard.
    let records = wal.read(0, covered.last_lsn, 100).await.expect("read");
    assert!(records.len() >= 2, "two records after the snapshot");
    wal.expire(0);
    let survivor = records.last().expect("a record");
    let bytes = saldo_persistence::record::encode(
        0,
        survivor.epoch,
        survivor.first_lsn,
        survivor.last_lsn,
        &survivor.prev_hash,
        &survivor.payload,
    );
    wal.append(0, bytes).await.expect("the survivor alone");
    let err = open(&wal, &snaps)
        .await
        .err()
        .expect("a gap after the snapshot is refused");
    assert!(err.to_string().contains("gap"), "{err}");
}
