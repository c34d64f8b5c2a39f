//! The snapshotter's snapshots plus the stream restore exactly the live state (I5), also at
//! an earlier position, and the stream is pruned below the oldest kept snapshot.

use std::{sync::Arc, time::Duration};

use saldo_engine::{recovery::RestoreTarget, state::digest, *};
use saldo_persistence::{
    snapshot::memory::MemorySnapshotStore, wal::memory::MemoryWal, SnapshotStore,
};
use saldo_snapshotter::{restore, Snapshotter, SnapshotterConfig};

fn config() -> EngineConfig {
    EngineConfig {
        num_shards: 2,
        node_epoch: 1,
        movements_window: 8,
        in_flight_max: 100,
        group_commit_linger_us: 0,
        snapshot_every_events: u64::MAX,
        snapshot_interval_ms: 0,
        snapshots_keep: 2,
        clock: saldo_engine::Clock::system(),
        courier: saldo_engine::Courier::direct(),
    }
}

#[tokio::test]
async fn snapshot_plus_replay_equals_the_live_state() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let ledger = Ledger::open(config(), Arc::new(wal.clone()), Arc::new(snaps.clone()))
        .await
        .unwrap();
    let brl = Currency::new("BRL").unwrap();
    for i in 0..10 {
        let cmd = OpenAccount {
            account_id: AccountId::new(&format!("a{i}")).unwrap(),
            currency: brl,
            overdraft_limit_minor: 0,
            metadata_opt: None,
        };
        ledger.open_account(cmd).await.unwrap();
        let e = Entry {
            entry_id: MovementId::new(&format!("s{i}")).unwrap(),
            account_id: AccountId::new(&format!("a{i}")).unwrap(),
            kind: EntryKind::Credit,
            amount_minor: 1_000,
            description_opt: None,
        };
        ledger.post_entry(e).await.unwrap();
    }
    let snapshotter = Snapshotter::new(
        Arc::new(wal.clone()),
        Arc::new(snaps.clone()),
        SnapshotterConfig {
            shards: vec![0, 1],
            every_events: 1,
            interval: Duration::from_secs(1),
            keep: 2,
            movements_window: 8,
        },
    );
    let first = snapshotter.snapshot_all().await.unwrap();
    let mut at_first = Vec::new();
    for shard in 0..2 {
        at_first.push(digest(
            restore(&wal, &snaps, shard, 8, RestoreTarget::Latest)
                .await
                .unwrap()
                .accounts
                .values(),
        ));
    }
    for n in 0..50 {
        let t = Transfer {
            transfer_id: MovementId::new(&format!("t{n}")).unwrap(),
            debit_account_id: AccountId::new(&format!("a{}", n % 10)).unwrap(),
            credit_account_id: AccountId::new(&format!("a{}", (n + 3) % 10)).unwrap(),
            amount_minor: 7,
            currency: brl,
            description_opt: None,
        };
        ledger.transfer(t).await.unwrap();
    }
    snapshotter.snapshot_all().await.unwrap();
    let live = ledger.state_checksum().await.unwrap();
    let mut restored = Vec::new();
    for shard in 0..2 {
        restored.extend(
            restore(&wal, &snaps, shard, 8, RestoreTarget::Latest)
                .await
                .unwrap()
                .accounts
                .into_values(),
        );
    }
    assert_eq!(
        digest(&restored),
        live,
        "snapshot + replay equals the live state"
    );
    // Restoring at the first snapshot's position gives the state of that moment.
    for (shard, meta) in first.iter().enumerate() {
        let s = restore(
            &wal,
            &snaps,
            shard as u32,
            8,
            RestoreTarget::AtLsn(meta.lsn),
        )
        .await
        .unwrap();
        assert_eq!(digest(s.accounts.values()), at_first[shard]);
    }
    assert_eq!(
        snaps.list(0).await.unwrap().len(),
        2,
        "keeps the newest two"
    );
}
