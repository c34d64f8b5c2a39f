//! Conformance suites that every backend must pass (the file and memory backends here; the
//! Kinesis and DynamoDB backends against their emulators). Each function panics with a message
//! naming the broken promise.

use crate::{
    record::{self, EncodedRecord, RecordHash},
    snapshot::{meta_for, meta_for_parts, SnapshotStore},
    wal::{Wal, WalError},
};

/// Appends `n` records of `events_per_record` LSNs each to `shard`, continuing the chain.
pub async fn append_records(
    wal: &dyn Wal,
    shard: u32,
    n: usize,
    events_per_record: u64,
) -> Vec<EncodedRecord> {
    let tail_opt = wal.tail(shard).await.expect("tail");
    let (mut next, mut prev): (u64, RecordHash) =
        tail_opt.map_or((1, [0; 32]), |t| (t.last_lsn + 1, t.hash));
    let mut out = Vec::new();
    for i in 0..n {
        let payload = format!("shard {shard} record {i} from {next}").into_bytes();
        let rec = record::encode(
            shard,
            1,
            next,
            next + events_per_record - 1,
            &prev,
            &payload,
        );
        wal.append(shard, rec.clone()).await.expect("append");
        next = rec.last_lsn + 1;
        prev = rec.hash;
        out.push(rec);
    }
    out
}

/// Checks the promises of [`Wal`]: order, tail, reads from any position, refusal of appends
/// that do not continue the stream, independence of shards, pruning keeps the tail readable.
pub async fn wal_conformance(wal: &dyn Wal) {
    assert_eq!(
        wal.tail(7).await.expect("tail"),
        None,
        "a new shard is empty"
    );
    assert!(wal.read(7, 0, 10).await.expect("read").is_empty());
    let written = append_records(wal, 7, 20, 3).await;
    append_records(wal, 8, 5, 1).await;
    let tail = wal.tail(7).await.expect("tail").expect("non-empty");
    assert_eq!(
        (tail.last_lsn, tail.hash),
        (60, written[19].hash),
        "tail is the last record"
    );

    let all = wal.read(7, 0, 1_000).await.expect("read all");
    assert_eq!(all.len(), 20, "every record is read back");
    for (got, want) in all.iter().zip(&written) {
        assert_eq!(
            (got.first_lsn, got.last_lsn, got.hash),
            (want.first_lsn, want.last_lsn, want.hash)
        );
    }
    // A position inside a record returns that record (the reader skips the covered events).
    let from_mid = wal.read(7, 31, 2).await.expect("read mid");
    assert_eq!(
        from_mid.iter().map(|r| r.first_lsn).collect::<Vec<_>>(),
        vec![31, 34]
    );
    assert!(wal.read(7, 60, 10).await.expect("read at tail").is_empty());

    // Out-of-order appends are refused and change nothing.
    let gap = record::encode(7, 1, 62, 62, &tail.hash, b"gap");
    assert!(wal.append(7, gap).await.is_err(), "an lsn gap is refused");
    let wrong_chain = record::encode(7, 1, 61, 61, &[1; 32], b"chain");
    assert!(
        wal.append(7, wrong_chain).await.is_err(),
        "a broken hash chain is refused"
    );
    assert_eq!(wal.tail(7).await.expect("tail"), Some(tail));

    // Shards are independent.
    assert_eq!(wal.read(8, 0, 100).await.expect("read 8").len(), 5);

    // Pruning never loses what is above the pruned position.
    wal.prune(7, 30).await.expect("prune");
    let after = wal.read(7, 30, 1_000).await.expect("read after prune");
    assert_eq!(after.first().map(|r| r.first_lsn), Some(31));
    assert_eq!(after.last().map(|r| r.last_lsn), Some(60));
    append_records(wal, 7, 1, 1).await;
    assert_eq!(
        wal.tail(7).await.expect("tail").map(|t| t.last_lsn),
        Some(61)
    );

    // A stream written before the shard count was recorded (shards 7 and 8 have records):
    // a count that would drop a shard is refused, one that keeps them all is recorded.
    assert_eq!(wal.recorded_shard_count().await.expect("recorded"), None);
    assert_mismatch(wal.claim_shard_count(4).await, 16, 4);
    wal.claim_shard_count(16)
        .await
        .expect("a count covering every shard");
    assert_eq!(
        wal.recorded_shard_count().await.expect("recorded"),
        Some(16)
    );
}

/// Asserts that a claim was refused as a shard count mismatch naming both counts.
fn assert_mismatch(result: Result<(), WalError>, recorded_want: u32, configured_want: u32) {
    match result {
        Err(WalError::ShardCountMismatch {
            recorded,
            configured,
            ..
        }) => assert_eq!(
            (recorded, configured),
            (recorded_want, configured_want),
            "the mismatch names the recorded and the configured count"
        ),
        other => panic!(
            "claiming {configured_want} shards on a stream of {recorded_want} must be refused, \
             got {other:?}"
        ),
    }
}

/// Checks [`Wal::claim_shard_count`] on a new stream seen through two handles (`other`: another
/// node or a later start on the same stream, whatever its local disk holds): the first claim
/// records the count, the same count passes on both handles, another count is refused naming
/// both, and the record outlives the records of the stream.
pub async fn shard_count_conformance(wal: &dyn Wal, other: &dyn Wal) {
    assert_eq!(wal.recorded_shard_count().await.expect("recorded"), None);
    wal.claim_shard_count(4)
        .await
        .expect("the first claim records");
    wal.claim_shard_count(4)
        .await
        .expect("the same count again");
    other
        .claim_shard_count(4)
        .await
        .expect("the same count elsewhere");
    assert_eq!(
        other.recorded_shard_count().await.expect("recorded"),
        Some(4)
    );
    assert_mismatch(other.claim_shard_count(2).await, 4, 2);
    assert_mismatch(wal.claim_shard_count(8).await, 4, 8);
    append_records(wal, 3, 2, 1).await;
    assert_mismatch(other.claim_shard_count(1).await, 4, 1);
    assert_eq!(wal.recorded_shard_count().await.expect("recorded"), Some(4));
}

/// Checks that of two first claims with different counts racing on a new stream (two nodes
/// started at once), at most one succeeds, and that the count recorded afterwards (if any) is
/// the one that did.
pub async fn shard_count_race_conformance(wal: &dyn Wal, other: &dyn Wal) {
    let (a, b) = tokio::join!(wal.claim_shard_count(2), other.claim_shard_count(4));
    assert!(
        a.is_err() || b.is_err(),
        "two different shard counts were both accepted on one stream"
    );
    let winner_opt = match (&a, &b) {
        (Ok(()), _) => Some(2),
        (_, Ok(())) => Some(4),
        _ => None,
    };
    for (result, n) in [(a, 2u32), (b, 4)] {
        if let Err(e) = result {
            assert!(
                matches!(e, WalError::ShardCountMismatch { configured, .. } if configured == n),
                "a lost race is a mismatch: {e}"
            );
        }
    }
    if let Some(n) = winner_opt {
        for handle in [wal, other] {
            assert_eq!(
                handle.recorded_shard_count().await.expect("recorded"),
                Some(n)
            );
        }
    }
}

/// Checks the promises of [`SnapshotStore`]: newest first, verified reads, retention.
pub async fn snapshot_conformance(store: &dyn SnapshotStore) {
    assert!(store.list(3).await.expect("list").is_empty());
    for lsn in [10u64, 30, 20] {
        let data = vec![lsn as u8; 1000 + lsn as usize];
        store
            .put(meta_for(3, lsn, [lsn as u8; 32], lsn * 1000, &data), data)
            .await
            .expect("put");
    }
    let metas = store.list(3).await.expect("list");
    assert_eq!(
        metas.iter().map(|m| m.lsn).collect::<Vec<_>>(),
        vec![30, 20, 10],
        "newest first"
    );
    let data = store.get(&metas[0]).await.expect("get");
    assert_eq!(data, vec![30u8; 1030]);
    let mut lying = metas[0].clone();
    lying.crc32c ^= 1;
    assert!(
        store.get(&lying).await.is_err(),
        "a checksum mismatch is an error"
    );
    store.retain(3, 2).await.expect("retain");
    assert_eq!(
        store
            .list(3)
            .await
            .expect("list")
            .iter()
            .map(|m| m.lsn)
            .collect::<Vec<_>>(),
        vec![30, 20]
    );
    assert!(
        store.list(4).await.expect("list").is_empty(),
        "shards are independent"
    );
    // A snapshot put in parts reads back as their concatenation.
    let parts = vec![vec![1u8; 10], Vec::new(), vec![2u8; 3000], vec![3u8; 1]];
    let meta = meta_for_parts(5, 40, [4; 32], 40_000, &parts);
    assert_eq!(meta, meta_for(5, 40, [4; 32], 40_000, &parts.concat()));
    store.put_parts(meta, parts.clone()).await.expect("put");
    let metas = store.list(5).await.expect("list");
    assert_eq!(
        store.get(&metas[0]).await.expect("get"),
        parts.concat(),
        "parts are stored in order"
    );
    let mut lying = metas[0].clone();
    lying.crc32c ^= 1;
    assert!(
        store.put_parts(lying, parts).await.is_err(),
        "parts that do not match their manifest are refused"
    );
}
