//! Issue 13, defect 3, on kinesalite: a newer owner epoch replaces the suffix of a fenced
//! writer's records. A snapshot folded from the fenced records is not on the stream's chain
//! any more: restore does not mix it with the newer records (it falls back to an older
//! starting point), and a reader whose state is at the fenced position refuses the newer
//! record, naming the epochs.

use saldo_engine::{
    event::{encode_into, Event},
    recovery::{restore_shard, RestoreTarget},
    state::ShardState,
    AccountId, Currency, Entry, EntryKind, MovementId, OpenAccount, Timestamp,
};
use saldo_persistence::{
    aws::AwsSettings,
    emulators::Emulator,
    record::{self, EncodedRecord, RecordHash},
    snapshot::{local_dir::LocalDirSnapshotStore, meta_for},
    wal::kinesis::KinesisWal,
    SnapshotStore, Wal,
};

fn credit(id: &str, amount_minor: i64, balance_after_minor: i64) -> Event {
    Event::EntryApplied {
        entry: Entry {
            entry_id: MovementId::new(id).unwrap(),
            account_id: AccountId::new("a").unwrap(),
            kind: EntryKind::Credit,
            amount_minor,
            description_opt: None,
        },
        balance_after_minor,
        at: Timestamp(1_700_000_000_000_000),
    }
}

fn encode(epoch: u64, first_lsn: u64, prev: &RecordHash, events: &[Event]) -> EncodedRecord {
    let mut payload = Vec::new();
    for ev in events {
        encode_into(ev, &mut payload);
    }
    let last_lsn = first_lsn + events.len() as u64 - 1;
    record::encode(0, epoch, first_lsn, last_lsn, prev, &payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_fenced_records_is_never_mixed_with_a_newer_epochs_records() {
    let emulator = Emulator::kinesis();
    let settings = AwsSettings::emulator(emulator.endpoint());
    let old_owner = KinesisWal::open(&settings, "epochs", 1).await.unwrap();
    let opening = Event::AccountOpened {
        cmd: OpenAccount {
            account_id: AccountId::new("a").unwrap(),
            currency: Currency::new("BRL").unwrap(),
            overdraft_limit_minor: 0,
            metadata_opt: None,
        },
        at: Timestamp(1_700_000_000_000_000),
    };
    let r1 = encode(1, 1, &[0; 32], &[opening, credit("c1", 100, 100)]);
    old_owner.append(0, r1.clone()).await.unwrap();
    // The new owner takes over having seen r1 only; the old one, not yet fenced, writes r2.
    let new_owner = KinesisWal::open(&settings, "epochs", 1).await.unwrap();
    let r2 = encode(
        1,
        3,
        &r1.hash,
        &[credit("c2", 5, 105), credit("c3", 7, 112)],
    );
    old_owner.append(0, r2.clone()).await.unwrap();
    // A snapshot folded from the old owner's records, at lsn 4.
    let dir = tempfile::tempdir().unwrap();
    let snapshots = LocalDirSnapshotStore::open(dir.path()).unwrap();
    let stale = restore_shard(&old_owner, &snapshots, 0, 4, RestoreTarget::Latest)
        .await
        .unwrap();
    assert_eq!(
        (
            stale.lsn,
            stale
                .accounts
                .state(&AccountId::new("a").unwrap())
                .unwrap()
                .balance_minor()
        ),
        (4, 112)
    );
    let data = stale.encode();
    let meta = meta_for(0, stale.lsn, stale.record_hash, 1, &data);
    snapshots.put(meta, data).await.unwrap();
    // The new owner (epoch 2) writes from lsn 3 on, chaining onto r1: it replaces r2.
    let r3 = encode(
        2,
        3,
        &r1.hash,
        &[
            credit("n1", 1, 101),
            credit("n2", 2, 103),
            credit("n3", 3, 106),
        ],
    );
    new_owner.append(0, r3.clone()).await.unwrap();

    let reader = KinesisWal::open(&settings, "epochs", 1).await.unwrap();
    let chain: Vec<(u64, u64)> = reader
        .read(0, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.first_lsn, r.epoch))
        .collect();
    assert_eq!(
        chain,
        vec![(1, 1), (3, 2)],
        "the stream's rules select r1 then r3"
    );

    // Restore does not fold r3 onto the stale snapshot (that would give 112 + 6 = 118 at lsn
    // 5, a mix of both writers): it starts from an older point and gets the chain's state.
    let restored = restore_shard(&reader, &snapshots, 0, 4, RestoreTarget::Latest)
        .await
        .unwrap();
    let balance = restored
        .accounts
        .state(&AccountId::new("a").unwrap())
        .unwrap()
        .balance_minor();
    assert_eq!((restored.lsn, balance), (5, 106));
    let mut from_scratch = ShardState::empty(0, 4);
    for rec in reader.read(0, 0, 10).await.unwrap() {
        from_scratch.apply_record(&rec).unwrap();
    }
    assert_eq!(restored, from_scratch);

    // A reader whose state is the stale one refuses the newer record, naming the epochs.
    let mut follower = stale;
    let newer = reader.read(0, 2, 10).await.unwrap();
    let e = newer
        .iter()
        .try_for_each(|rec| follower.apply_record(rec))
        .unwrap_err();
    assert!(
        e.reason.contains("epoch 2") && e.reason.contains("straddles"),
        "{e}"
    );
}
