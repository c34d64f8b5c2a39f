//! The ledger end to end in one process: accounts, entries, transfers within and across
//! shards, idempotency, reads, restart from the stream and from snapshots.

use std::{sync::Arc, time::Duration};

use saldo_engine::*;
use saldo_persistence::{snapshot::memory::MemorySnapshotStore, wal::memory::MemoryWal};

fn config(num_shards: u32) -> EngineConfig {
    EngineConfig {
        num_shards,
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

async fn open(wal: &MemoryWal, snaps: &MemorySnapshotStore, cfg: EngineConfig) -> Ledger {
    Ledger::open(cfg, Arc::new(wal.clone()), Arc::new(snaps.clone()))
        .await
        .unwrap()
}

fn id(s: &str) -> AccountId {
    AccountId::new(s).unwrap()
}
fn mid(s: &str) -> MovementId {
    MovementId::new(s).unwrap()
}
fn brl() -> Currency {
    Currency::new("BRL").unwrap()
}

async fn open_account(l: &Ledger, name: &str, overdraft: i64) {
    let cmd = OpenAccount {
        account_id: id(name),
        currency: brl(),
        overdraft_limit_minor: overdraft,
        metadata_opt: None,
    };
    l.open_account(cmd).await.unwrap();
}

async fn credit(
    l: &Ledger,
    entry_id: &str,
    account: &str,
    amount: i64,
) -> Result<Posted, LedgerError> {
    l.post_entry(Entry {
        entry_id: mid(entry_id),
        account_id: id(account),
        kind: EntryKind::Credit,
        amount_minor: amount,
        description_opt: None,
    })
    .await
}

fn transfer(tid: &str, from: &str, to: &str, amount: i64) -> Transfer {
    Transfer {
        transfer_id: mid(tid),
        debit_account_id: id(from),
        credit_account_id: id(to),
        amount_minor: amount,
        currency: brl(),
        description_opt: Some("rent".into()),
    }
}

async fn balance(l: &Ledger, a: &str) -> i64 {
    l.account(&id(a)).await.unwrap().balance_minor
}

/// Names two accounts that land on different shards (and two on the same one).
fn names(l: &Ledger) -> (String, String, String) {
    let a = "alice".to_string();
    let other = (0..)
        .map(|i| format!("bob-{i}"))
        .find(|b| l.shard_of(&id(b)) != l.shard_of(&id(&a)))
        .unwrap();
    let same = (0..)
        .map(|i| format!("carol-{i}"))
        .find(|c| l.shard_of(&id(c)) == l.shard_of(&id(&a)))
        .unwrap();
    (a, other, same)
}

#[tokio::test]
async fn opening_an_account_is_idempotent_and_conflicts_on_other_parameters() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(4)).await;
    let cmd = OpenAccount {
        account_id: id("m-1"),
        currency: brl(),
        overdraft_limit_minor: 0,
        metadata_opt: None,
    };
    assert!(l.open_account(cmd.clone()).await.unwrap().1, "created");
    assert!(
        !l.open_account(cmd.clone()).await.unwrap().1,
        "same again is not a new account"
    );
    let other = OpenAccount {
        currency: Currency::new("USD").unwrap(),
        ..cmd
    };
    assert_eq!(
        l.open_account(other).await.unwrap_err(),
        LedgerError::Rejected(Rejection::AccountExists)
    );
    assert_eq!(
        l.account(&id("nobody")).await.unwrap_err(),
        LedgerError::Rejected(Rejection::AccountNotFound)
    );
}

#[tokio::test]
async fn transfers_move_money_within_and_across_shards_and_replay_by_id() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(4)).await;
    let (a, b, c) = names(&l);
    for n in [&a, &b, &c] {
        open_account(&l, n, 0).await;
    }
    credit(&l, "e-1", &a, 10_000).await.unwrap();
    let first = l
        .transfer(transfer("t-cross", &a, &b, 2_500))
        .await
        .unwrap();
    assert_eq!(
        (first.movement.status, first.replayed),
        (MovementStatus::Committed, false)
    );
    let p = l.transfer(transfer("t-same", &a, &c, 500)).await.unwrap();
    assert_eq!(p.movement.status, MovementStatus::Committed);
    assert_eq!(
        (
            balance(&l, &a).await,
            balance(&l, &b).await,
            balance(&l, &c).await
        ),
        (7_000, 2_500, 500)
    );

    // A retry with the same content returns the original outcome and moves nothing.
    let again = l
        .transfer(transfer("t-cross", &a, &b, 2_500))
        .await
        .unwrap();
    assert!(again.replayed);
    // The replay of t-cross is the first answer of t-cross, field for field.
    assert_eq!(again.movement, first.movement);
    // The same ID with other content is a conflict naming the fields, and changes nothing.
    let err = l
        .transfer(transfer("t-cross", &a, &b, 9))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        LedgerError::Rejected(Rejection::IdConflict {
            fields: vec!["amount".into()]
        })
    );
    // Transfer and entry IDs share one namespace.
    assert!(matches!(
        credit(&l, "t-cross", &a, 1).await,
        Err(LedgerError::Rejected(Rejection::IdConflict { .. }))
    ));
    assert_eq!(
        (balance(&l, &a).await, balance(&l, &b).await),
        (7_000, 2_500)
    );

    let got = l.movement(&mid("t-cross")).await.unwrap();
    assert_eq!(got.status, MovementStatus::Committed);
}

#[tokio::test]
async fn rejections_are_values_recorded_once_and_change_nothing() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(2)).await;
    open_account(&l, "a", 0).await;
    open_account(&l, "b", 0).await;
    open_account(&l, "od", 1_000).await;
    l.open_account(OpenAccount {
        account_id: id("usd"),
        currency: Currency::new("USD").unwrap(),
        overdraft_limit_minor: 0,
        metadata_opt: None,
    })
    .await
    .unwrap();
    credit(&l, "seed", "a", 100).await.unwrap();
    let rej = |r| Err::<Posted, _>(LedgerError::Rejected(r));
    assert_eq!(
        l.transfer(transfer("t1", "a", "b", 101)).await,
        rej(Rejection::InsufficientFunds)
    );
    assert_eq!(
        l.transfer(transfer("t1", "a", "b", 101)).await.unwrap_err(),
        LedgerError::Rejected(Rejection::InsufficientFunds)
    );
    assert_eq!(
        l.transfer(transfer("t2", "a", "a", 1)).await,
        rej(Rejection::SameAccount)
    );
    assert_eq!(
        l.transfer(transfer("t3", "a", "usd", 1)).await,
        rej(Rejection::CurrencyMismatch)
    );
    assert_eq!(
        l.transfer(transfer("t4", "a", "ghost", 1)).await,
        rej(Rejection::AccountNotFound)
    );
    assert_eq!(
        l.transfer(transfer("t5", "ghost", "a", 1)).await,
        rej(Rejection::AccountNotFound)
    );
    assert_eq!(
        l.transfer(transfer("t6", "a", "b", 0)).await,
        rej(Rejection::InvalidAmount)
    );
    // Overdraft: may go down to -1000, not below.
    assert!(l.transfer(transfer("t7", "od", "b", 1_000)).await.is_ok());
    assert_eq!(
        l.transfer(transfer("t8", "od", "b", 1)).await,
        rej(Rejection::InsufficientFunds)
    );
    assert_eq!(balance(&l, "od").await, -1_000);
    assert_eq!(
        (balance(&l, "a").await, balance(&l, "b").await),
        (100, 1_000)
    );
    assert_eq!(
        l.movement(&mid("t1")).await.unwrap().status,
        MovementStatus::Rejected
    );
    // The insufficient-funds transfer keeps its outcome even once money arrives.
    credit(&l, "seed-2", "a", 1_000).await.unwrap();
    assert_eq!(
        l.transfer(transfer("t1", "a", "b", 101)).await.unwrap_err(),
        LedgerError::Rejected(Rejection::InsufficientFunds)
    );
}

#[tokio::test]
async fn state_survives_restart_from_the_stream_and_from_snapshots() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(4)).await;
    let (a, b, c) = names(&l);
    for n in [&a, &b, &c] {
        open_account(&l, n, 0).await;
    }
    credit(&l, "e-1", &a, 10_000).await.unwrap();
    for i in 0..20 {
        let to = if i % 2 == 0 { &b } else { &c };
        l.transfer(transfer(&format!("t-{i}"), &a, to, 100 + i))
            .await
            .unwrap();
    }
    let live = l.state_checksum().await.unwrap();
    let page = l.movements(&id(&a), 2, None).await.unwrap();
    assert_eq!(page.rows.len(), 2);
    l.shutdown().await;
    drop(l);

    let l = open(&wal, &snaps, config(4)).await;
    assert_eq!(
        l.state_checksum().await.unwrap(),
        live,
        "replay of the stream equals the live state"
    );
    assert_eq!(
        l.movements(&id(&a), 2, None).await.unwrap(),
        page,
        "history is rebuilt too"
    );
    assert!(
        l.transfer(transfer("t-3", &a, &c, 103))
            .await
            .unwrap()
            .replayed,
        "idempotency survives restarts"
    );
    l.snapshot_now().await.unwrap();
    l.transfer(transfer("t-after", &b, &c, 50)).await.unwrap();
    let live = l.state_checksum().await.unwrap();
    l.shutdown().await;
    drop(l);

    let l = open(&wal, &snaps, config(4)).await;
    assert_eq!(
        l.state_checksum().await.unwrap(),
        live,
        "snapshot + replay equals the live state"
    );
    let total: i64 = [&a, &b, &c].iter().map(|_| 0).sum::<i64>();
    let _ = total;
    let sum = balance(&l, &a).await + balance(&l, &b).await + balance(&l, &c).await;
    assert_eq!(sum, 10_000, "conservation");
}

#[tokio::test]
async fn movements_and_daily_report_are_consistent_with_the_balance() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(2)).await;
    open_account(&l, "m", 0).await;
    open_account(&l, "n", 0).await;
    credit(&l, "c1", "m", 1_000).await.unwrap();
    l.post_entry(Entry {
        entry_id: mid("d1"),
        account_id: id("m"),
        kind: EntryKind::Debit,
        amount_minor: 300,
        description_opt: Some("fee".into()),
    })
    .await
    .unwrap();
    l.transfer(transfer("t1", "m", "n", 200)).await.unwrap();
    l.transfer(transfer("t2", "n", "m", 50)).await.unwrap();
    let page = l.movements(&id("m"), 10, None).await.unwrap();
    let balances: Vec<i64> = page.rows.iter().map(|r| r.balance_after_minor).collect();
    assert_eq!(balances, vec![550, 500, 700], "newest first, window of 3");
    assert!(
        page.older_rows_in_stream,
        "the first row left the window of 3"
    );
    let page2 = l.movements(&id("m"), 2, None).await.unwrap();
    assert_eq!(page2.next_cursor_opt, Some(3));
    let rest = l.movements(&id("m"), 2, Some(3)).await.unwrap();
    assert_eq!(rest.rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2]);

    let today = Timestamp::now().day();
    let report = l.daily(&id("m"), Day(today.0 - 1), today).await.unwrap();
    assert_eq!(report.days.len(), 2);
    let (y, t) = (&report.days[0], &report.days[1]);
    assert_eq!(
        (y.opening_minor, y.closing_minor, y.num_movements),
        (0, 0, 0)
    );
    assert_eq!(
        (
            t.opening_minor,
            t.credits_minor,
            t.debits_minor,
            t.num_movements,
            t.closing_minor
        ),
        (0, 1_050, 500, 4, 550)
    );
    assert_eq!(t.closing_minor, balance(&l, "m").await);
    assert!(
        l.daily(&id("m"), today, Day(today.0 - 1)).await.is_err(),
        "an inverted range is refused"
    );
}

#[tokio::test]
async fn concurrent_retries_of_one_transfer_take_effect_once() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(4)).await;
    let (a, b, _) = names(&l);
    open_account(&l, &a, 0).await;
    open_account(&l, &b, 0).await;
    credit(&l, "seed", &a, 1_000).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (l, a, b) = (l.clone(), a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            l.transfer(transfer("dup", &a, &b, 100)).await
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        let p = t.await.unwrap().unwrap();
        assert_eq!(p.movement.status, MovementStatus::Committed);
        fresh += usize::from(!p.replayed);
    }
    assert_eq!(fresh, 1, "exactly one call did the work");
    assert_eq!((balance(&l, &a).await, balance(&l, &b).await), (900, 100));
}

#[tokio::test]
async fn an_atomic_batch_applies_all_or_nothing() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(4)).await;
    let (a, b, c) = names(&l);
    for n in [&a, &b, &c] {
        open_account(&l, n, 0).await;
    }
    credit(&l, "seed", &a, 1_000).await.unwrap();
    // The second transfer cannot be funded: nothing of the batch happens.
    let batch = vec![transfer("ab-1", &a, &b, 600), transfer("ab-2", &a, &c, 600)];
    let results = l.transfer_batch(batch.clone(), true).await;
    assert_eq!(
        results[1],
        Err(LedgerError::Rejected(Rejection::InsufficientFunds))
    );
    assert_eq!(
        results[0],
        Err(LedgerError::Rejected(Rejection::BatchAborted))
    );
    assert_eq!(
        (
            balance(&l, &a).await,
            balance(&l, &b).await,
            balance(&l, &c).await
        ),
        (1_000, 0, 0)
    );
    assert_eq!(
        l.account(&id(&a)).await.unwrap().held_minor,
        0,
        "the placed hold was released"
    );
    // A retry of the same batch answers the same.
    let again = l.transfer_batch(batch, true).await;
    assert_eq!(again, results);
    // A fundable batch commits entirely.
    let ok = l
        .transfer_batch(
            vec![transfer("ok-1", &a, &b, 600), transfer("ok-2", &a, &c, 400)],
            true,
        )
        .await;
    assert!(
        ok.iter().all(|r| r
            .as_ref()
            .is_ok_and(|p| p.movement.status == MovementStatus::Committed)),
        "{ok:?}"
    );
    assert_eq!(
        (
            balance(&l, &a).await,
            balance(&l, &b).await,
            balance(&l, &c).await
        ),
        (0, 600, 400)
    );
    // Duplicate IDs inside one batch are refused before anything is recorded.
    let dup = l
        .transfer_batch(
            vec![transfer("d", &b, &c, 1), transfer("d", &b, &c, 1)],
            true,
        )
        .await;
    assert!(dup.iter().all(Result::is_err));
    assert!(l.movement(&mid("d")).await.is_err(), "nothing recorded");
}

#[tokio::test]
async fn independent_batches_report_each_transfer_on_its_own() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(4)).await;
    let (a, b, _) = names(&l);
    open_account(&l, &a, 0).await;
    open_account(&l, &b, 0).await;
    credit(&l, "seed", &a, 1_000).await.unwrap();
    let batch: Vec<Transfer> = (0..30)
        .map(|i| transfer(&format!("ind-{i}"), &a, &b, 50))
        .collect();
    let results = l.transfer_batch(batch, false).await;
    let committed = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(committed, 20, "exactly the funded ones");
    assert!(results
        .iter()
        .filter(|r| r.is_err())
        .all(|r| *r == Err(LedgerError::Rejected(Rejection::InsufficientFunds))));
    assert_eq!((balance(&l, &a).await, balance(&l, &b).await), (0, 1_000));
}

/// Writes events straight into a shard's stream, as a crashed node would have left them.
async fn write_events(wal: &MemoryWal, shard: u32, events: &[saldo_engine::event::Event]) {
    use saldo_persistence::Wal;
    let tail = wal.tail(shard).await.unwrap();
    let (first, prev) = tail.map_or((1, [0; 32]), |t| (t.last_lsn + 1, t.hash));
    let mut payload = Vec::new();
    for ev in events {
        saldo_engine::event::encode_into(ev, &mut payload);
    }
    let rec = saldo_persistence::record::encode(
        shard,
        1,
        first,
        first + events.len() as u64 - 1,
        &prev,
        &payload,
    );
    wal.append(shard, rec).await.unwrap();
}

#[tokio::test]
async fn recovery_releases_an_undecided_atomic_batch_and_finishes_a_decided_one() {
    use saldo_engine::event::Event;
    let at = Timestamp(1_700_000_000_000_000);
    for decided in [false, true] {
        let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
        let cfg = config(1);
        let open_cmd = |n: &str| Event::AccountOpened {
            cmd: OpenAccount {
                account_id: id(n),
                currency: brl(),
                overdraft_limit_minor: 0,
                metadata_opt: None,
            },
            at,
        };
        let t1 = transfer("b-1", "x", "y", 100);
        let t2 = transfer("b-2", "x", "y", 200);
        let mut events = vec![
            open_cmd("x"),
            open_cmd("y"),
            Event::EntryApplied {
                entry: Entry {
                    entry_id: mid("seed"),
                    account_id: id("x"),
                    kind: EntryKind::Credit,
                    amount_minor: 1_000,
                    description_opt: None,
                },
                balance_after_minor: 1_000,
                at,
            },
            Event::HoldPlaced {
                transfer: t1.clone(),
                batch_opt: Some(mid("b-1")),
                at,
            },
            Event::HoldPlaced {
                transfer: t2.clone(),
                batch_opt: Some(mid("b-1")),
                at,
            },
        ];
        if decided {
            events.push(Event::BatchCommitted {
                batch_id: mid("b-1"),
                transfer_ids: vec![mid("b-1"), mid("b-2")],
                at,
            });
            // The crash hit after the first credit.
            events.push(Event::CreditApplied {
                transfer: t1.clone(),
                at,
            });
        }
        write_events(&wal, 0, &events).await;
        let l = open(&wal, &snaps, cfg).await;
        let (x, y) = (balance(&l, "x").await, balance(&l, "y").await);
        assert_eq!(
            l.account(&id("x")).await.unwrap().held_minor,
            0,
            "every hold resolved"
        );
        if decided {
            assert_eq!((x, y), (700, 300), "a decided batch is finished");
            assert_eq!(
                l.movement(&mid("b-2")).await.unwrap().status,
                MovementStatus::Committed
            );
        } else {
            assert_eq!((x, y), (1_000, 0), "an undecided batch is released");
            assert_eq!(
                l.movement(&mid("b-1")).await.unwrap().rejection_opt,
                Some(Rejection::BatchAborted)
            );
        }
    }
}

#[tokio::test]
async fn a_movement_answers_the_same_creation_time_before_and_after_a_restart() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(4)).await;
    let (a, b, _) = names(&l);
    open_account(&l, &a, 0).await;
    open_account(&l, &b, 0).await;
    let e = credit(&l, "seed", &a, 100).await.unwrap();
    let t = l.transfer(transfer("t", &a, &b, 10)).await.unwrap();
    let r = l.transfer(transfer("r", &a, &b, 1_000)).await.unwrap_err();
    assert_eq!(r, LedgerError::Rejected(Rejection::InsufficientFunds));
    let r_view = l.movement(&mid("r")).await.unwrap();
    l.shutdown().await;
    drop(l);
    let l = open(&wal, &snaps, config(4)).await;
    assert_eq!(
        l.movement(&mid("seed")).await.unwrap().created_at,
        e.movement.created_at
    );
    assert_eq!(
        l.movement(&mid("t")).await.unwrap().created_at,
        t.movement.created_at
    );
    assert_eq!(
        l.movement(&mid("r")).await.unwrap().created_at,
        r_view.created_at
    );
}

/// Compile-time check: every public future can be spawned (is `Send`).
#[allow(dead_code)]
fn public_futures_are_send(l: Ledger, cmd: OpenAccount, t: Transfer, e: Entry) {
    fn is_send<T: Send>(_: T) {}
    let (a, m) = (id("a"), mid("m"));
    is_send(l.open_account(cmd));
    is_send(l.account(&a));
    is_send(l.transfer(t.clone()));
    is_send(l.transfer_batch(vec![t], true));
    is_send(l.post_entry(e));
    is_send(l.movement(&m));
    is_send(l.movements(&a, 10, None));
    is_send(l.daily(&a, Day(0), Day(1)));
    is_send(l.snapshot_now());
    is_send(l.state_checksum());
    is_send(l.shutdown());
}

/// A stream whose appends can be held back: a record is durable only once the gate lets it
/// through, so a test sees what the ledger answers while its records are in flight, and a
/// ledger reopened on the inner stream is the node after a crash at that moment.
///
/// It can also fail on demand, as a full disk does: while `failing` is set, appends fail
/// (after a while, as a disk retrying: what is appended meanwhile waits in the next batch), and
/// so does the probe that asks whether the stream takes writes again.
///
/// And it can play a busy writer: while `writes_on_read` is above zero, each read first
/// appends one more record (an account opening), as a node under load does while a snapshot
/// reads its stream.
#[derive(Clone)]
struct GatedWal {
    inner: MemoryWal,
    open: Arc<tokio::sync::watch::Sender<bool>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    writes_on_read: Arc<std::sync::atomic::AtomicU32>,
}

impl GatedWal {
    fn new(inner: MemoryWal) -> GatedWal {
        GatedWal {
            inner,
            open: Arc::new(tokio::sync::watch::channel(true).0),
            failing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            writes_on_read: Arc::new(std::sync::atomic::AtomicU32::new(0)),
        }
    }

    fn refusal(&self) -> Option<saldo_persistence::WalError> {
        self.failing
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| {
                saldo_persistence::WalError::Unavailable(Box::new(std::io::Error::other(
                    "no space left on device",
                )))
            })
    }
}

#[async_trait::async_trait]
impl saldo_persistence::Wal for GatedWal {
    async fn append(
        &self,
        shard: u32,
        record: saldo_persistence::record::EncodedRecord,
    ) -> Result<(), saldo_persistence::WalError> {
        if let Some(e) = self.refusal() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Err(e);
        }
        let mut rx = self.open.subscribe();
        // A closed gate never opens again in these tests: the append hangs, as on a dead disk.
        let _ = rx.wait_for(|open| *open).await;
        self.inner.append(shard, record).await
    }
    async fn probe(&self, _shard: u32) -> Result<(), saldo_persistence::WalError> {
        self.refusal().map_or(Ok(()), Err)
    }
    async fn tail(
        &self,
        shard: u32,
    ) -> Result<Option<saldo_persistence::wal::Tail>, saldo_persistence::WalError> {
        self.inner.tail(shard).await
    }
    async fn read(
        &self,
        shard: u32,
        after_lsn: saldo_persistence::Lsn,
        max_records: usize,
    ) -> Result<Vec<saldo_persistence::Record>, saldo_persistence::WalError> {
        use std::sync::atomic::Ordering::SeqCst;
        let busy = self
            .writes_on_read
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
        if let Ok(left) = busy {
            let opening = saldo_engine::event::Event::AccountOpened {
                cmd: OpenAccount {
                    account_id: id(&format!("busy-{left}")),
                    currency: brl(),
                    overdraft_limit_minor: 0,
                    metadata_opt: None,
                },
                at: Timestamp(1_700_000_000_000_000),
            };
            write_events(&self.inner, shard, &[opening]).await;
        }
        self.inner.read(shard, after_lsn, max_records).await
    }
    async fn prune(
        &self,
        shard: u32,
        lsn: saldo_persistence::Lsn,
    ) -> Result<(), saldo_persistence::WalError> {
        self.inner.prune(shard, lsn).await
    }
    fn describe(&self) -> String {
        "gated".into()
    }
}

/// A ledger on a [`GatedWal`] (gate open) with three empty accounts; on several shards the
/// first two are on different shards and the third on the first one's.
async fn gated_ledger(
    cfg: EngineConfig,
) -> (
    Ledger,
    MemoryWal,
    MemorySnapshotStore,
    Arc<tokio::sync::watch::Sender<bool>>,
    (String, String, String),
) {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let gated = GatedWal::new(wal.clone());
    let gate = gated.open.clone();
    let shards = cfg.num_shards;
    let l = Ledger::open(cfg, Arc::new(gated), Arc::new(snaps.clone()))
        .await
        .unwrap();
    let (a, b, c) = if shards > 1 {
        names(&l)
    } else {
        ("alice".into(), "bob".into(), "carol".into())
    };
    for x in [&a, &b, &c] {
        open_account(&l, x, 0).await;
    }
    (l, wal, snaps, gate, (a, b, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_answered_before_it_is_durable_and_a_crash_then_loses_nothing_answered() {
    for shards in [1, 4] {
        let (l, wal, snaps, gate, (a, b, c)) = gated_ledger(config(shards)).await;
        credit(&l, "fund-a", &a, 1_000).await.unwrap();
        credit(&l, "fund-b", &b, 1_000).await.unwrap();
        // From here on nothing becomes durable.
        gate.send_replace(false);
        let batch = vec![
            transfer("g-1", &a, &b, 100),
            transfer("g-2", &b, &c, 100),
            transfer("g-3", &a, &c, 5_000),
            transfer("g-4", &a, "nobody", 1),
            transfer("g-1", &a, &b, 100),
        ];
        let batch_task = {
            let (l, batch) = (l.clone(), batch.clone());
            tokio::spawn(async move { l.transfer_batch(batch, false).await })
        };
        let single_task = {
            let (l, t) = (l.clone(), transfer("g-5", &c, &a, 1));
            tokio::spawn(async move { l.transfer(t).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !batch_task.is_finished(),
            "{shards} shards: a batch was answered before its records were durable"
        );
        assert!(
            !single_task.is_finished(),
            "{shards} shards: a transfer was answered before its records were durable"
        );
        batch_task.abort();
        single_task.abort();
        // The crash: a new node on what reached the stream.
        let l = open(&wal, &snaps, config(shards)).await;
        assert_eq!(
            (
                balance(&l, &a).await,
                balance(&l, &b).await,
                balance(&l, &c).await
            ),
            (1_000, 1_000, 0),
            "{shards} shards: nothing after the gate closed took effect"
        );
        // The client retries: each transfer takes effect once, with its own outcome.
        let results = l.transfer_batch(batch, false).await;
        assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
        assert_eq!(
            results[2],
            Err(LedgerError::Rejected(Rejection::InsufficientFunds))
        );
        assert_eq!(
            results[3],
            Err(LedgerError::Rejected(Rejection::AccountNotFound))
        );
        assert!(
            results[4].as_ref().is_ok_and(|p| p.replayed),
            "a repeated ID replays the first: {:?}",
            results[4]
        );
        assert_eq!(
            (
                balance(&l, &a).await,
                balance(&l, &b).await,
                balance(&l, &c).await
            ),
            (900, 1_000, 100)
        );
        l.shutdown().await;
    }
}

/// A caller that stops waiting (an HTTP client that hangs up, a request timeout) must not
/// strand a movement half-way: the transfer, entry or batch still runs to its end, and a retry
/// with the same ID gets its outcome, instead of waiting on a claim nobody will finish while
/// the hold stays open until the next restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_waiting_does_not_strand_a_movement() {
    for shards in [1, 4] {
        let (l, wal, snaps, gate, (a, b, c)) = gated_ledger(config(shards)).await;
        credit(&l, "fund-a", &a, 1_000).await.unwrap();
        // The stream stalls; each caller gives up while its movement is in flight.
        gate.send_replace(false);
        let single = transfer("s-1", &a, &b, 100);
        let batch = vec![transfer("s-2", &a, &c, 200), transfer("s-3", &a, &b, 300)];
        let entry = || Entry {
            entry_id: mid("s-4"),
            account_id: id(&c),
            kind: EntryKind::Credit,
            amount_minor: 50,
            description_opt: None,
        };
        for give_up in [
            tokio::time::timeout(Duration::from_millis(100), l.transfer(single.clone()))
                .await
                .is_err(),
            tokio::time::timeout(
                Duration::from_millis(100),
                l.transfer_batch(batch.clone(), false),
            )
            .await
            .is_err(),
            tokio::time::timeout(Duration::from_millis(100), l.post_entry(entry()))
                .await
                .is_err(),
        ] {
            assert!(
                give_up,
                "{shards} shards: answered while the stream was stalled"
            );
        }
        // The stream recovers; the clients retry with the same IDs.
        gate.send_replace(true);
        let retries = async {
            (
                l.transfer(single.clone()).await,
                l.transfer_batch(batch.clone(), false).await,
                l.post_entry(entry()).await,
            )
        };
        let (t, bt, e) = tokio::time::timeout(Duration::from_secs(10), retries)
            .await
            .unwrap_or_else(|_| {
                panic!("{shards} shards: a retry waited on a movement its caller dropped")
            });
        assert!(t.is_ok_and(|p| p.replayed), "{shards} shards");
        assert!(
            bt.iter().all(|r| r.as_ref().is_ok_and(|p| p.replayed)),
            "{bt:?}"
        );
        assert!(e.is_ok_and(|p| p.replayed), "{shards} shards");
        // Each took effect once and no hold is left open.
        for (x, want) in [(&a, 400), (&b, 400), (&c, 250)] {
            let v = l.account(&id(x)).await.unwrap();
            assert_eq!(
                (v.balance_minor, v.held_minor),
                (want, 0),
                "{shards} shards: {x}"
            );
        }
        l.shutdown().await;
        // And the stream says the same after a restart.
        let l = open(&wal, &snaps, config(shards)).await;
        for (x, want) in [(&a, 400), (&b, 400), (&c, 250)] {
            assert_eq!(
                balance(&l, x).await,
                want,
                "{shards} shards: {x} after restart"
            );
        }
        l.shutdown().await;
    }
}

/// Writes left by their callers run on, and still count against `in_flight_max` until they
/// end: clients that send and hang up while the stream is stalled cannot pile up work without
/// bound; the next write is refused at once (`Overloaded`) instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_left_by_their_callers_still_count_against_the_in_flight_bound() {
    let (l, _, _, gate, _) = gated_ledger(EngineConfig {
        in_flight_max: 2,
        ..config(1)
    })
    .await;
    let opening = |name: &str| OpenAccount {
        account_id: id(name),
        currency: brl(),
        overdraft_limit_minor: 0,
        metadata_opt: None,
    };
    gate.send_replace(false);
    for name in ["left-1", "left-2"] {
        let gave_up =
            tokio::time::timeout(Duration::from_millis(50), l.open_account(opening(name)))
                .await
                .is_err();
        assert!(gave_up, "{name} was answered while the stream was stalled");
    }
    let third = tokio::time::timeout(Duration::from_secs(5), l.open_account(opening("third")))
        .await
        .expect("the third write is refused at once, not queued");
    assert!(
        matches!(third, Err(LedgerError::Overloaded { .. })),
        "{third:?}"
    );
    let entry = tokio::time::timeout(Duration::from_secs(5), credit(&l, "e-1", "left-1", 5))
        .await
        .expect("refused at once");
    assert!(
        matches!(entry, Err(LedgerError::Overloaded { .. })),
        "{entry:?}"
    );
    // The stream recovers: the two left-behind openings end, and their slots free up.
    gate.send_replace(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while l.stats().in_flight > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the left-behind writes never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, created) = l.open_account(opening("left-1")).await.unwrap();
    assert!(!created, "the left-behind opening took effect");
    let (_, created) = l.open_account(opening("third")).await.unwrap();
    assert!(created);
    l.shutdown().await;
}

/// The same for the movements their shard settles (entries, transfers within one shard): once
/// its turn ran, a movement whose caller left keeps its place among the writes in flight
/// until its record is durable and it settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movements_left_by_their_callers_count_against_the_in_flight_bound_until_settled() {
    let (l, _, _, gate, (a, b, _)) = gated_ledger(EngineConfig {
        in_flight_max: 2,
        ..config(1)
    })
    .await;
    credit(&l, "fund-a", &a, 1_000).await.unwrap();
    gate.send_replace(false);
    let left_entry = tokio::time::timeout(Duration::from_millis(50), credit(&l, "left-e", &a, 5));
    assert!(
        left_entry.await.is_err(),
        "answered while the stream was stalled"
    );
    let left_transfer = tokio::time::timeout(
        Duration::from_millis(50),
        l.transfer(transfer("left-t", &a, &b, 10)),
    );
    assert!(
        left_transfer.await.is_err(),
        "answered while the stream was stalled"
    );
    assert_eq!(
        l.stats().in_flight,
        2,
        "both left-behind movements still count"
    );
    let third = tokio::time::timeout(Duration::from_secs(5), credit(&l, "third", &b, 1))
        .await
        .expect("the third write is refused at once, not queued");
    assert!(
        matches!(third, Err(LedgerError::Overloaded { .. })),
        "{third:?}"
    );
    gate.send_replace(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while l.stats().in_flight > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the left-behind movements never settled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((balance(&l, &a).await, balance(&l, &b).await), (995, 10));
    l.shutdown().await;
}

// ------------------------------------------------------------------ issue 13: money safety

fn is_unavailable<T: std::fmt::Debug>(r: &Result<T, LedgerError>) -> bool {
    matches!(r, Err(LedgerError::Unavailable { .. }))
}

/// Defect 5 and issue 17: after a failed append every waiter gets an answer (no read, retry
/// or batch hangs), the node says it is not ready and which shard failed, reads of durable
/// state still answer, and once the stream takes writes again the node asks to be restarted;
/// the restart then settles every ID exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_stream_answers_every_waiter_and_asks_for_a_restart_once_writable() {
    let bound = Duration::from_secs(10);
    for shards in [1, 4] {
        let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
        let stream = GatedWal::new(wal.clone());
        let failing = stream.failing.clone();
        let l = Ledger::open(config(shards), Arc::new(stream), Arc::new(snaps.clone()))
            .await
            .unwrap();
        let (a, b, c) = if shards > 1 {
            names(&l)
        } else {
            ("alice".into(), "bob".into(), "carol".into())
        };
        for x in [&a, &b, &c, &"dora".to_string()] {
            open_account(&l, x, 0).await;
        }
        credit(&l, "fund-a", &a, 1_000).await.unwrap();
        credit(&l, "fund-c", &c, 50).await.unwrap();
        credit(&l, "fund-d", "dora", 7).await.unwrap();
        assert!(l.is_ready());

        failing.store(true, std::sync::atomic::Ordering::SeqCst);
        let first = {
            let (l, t) = (l.clone(), transfer("f-1", &a, &b, 100));
            tokio::spawn(async move { l.transfer(t).await })
        };
        // Appended while the failing record is written: in the batch after it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = {
            let (l, t) = (l.clone(), transfer("f-4", &c, &b, 10));
            tokio::spawn(async move { l.transfer(t).await })
        };
        for write in [first, second] {
            let answer = tokio::time::timeout(bound, write)
                .await
                .expect("a write on a failed stream is answered")
                .unwrap();
            assert!(is_unavailable(&answer), "{answer:?}");
        }
        assert!(
            !l.is_ready(),
            "not ready while a shard cannot make writes durable"
        );
        assert!(!l.failed_shards().is_empty());
        for (tid, from) in [("f-1", &a), ("f-4", &c)] {
            let amount = if tid == "f-1" { 100 } else { 10 };
            let retry = tokio::time::timeout(bound, l.transfer(transfer(tid, from, &b, amount)))
                .await
                .expect("a retry of a pending ID is answered, not left waiting");
            assert!(is_unavailable(&retry), "{retry:?}");
        }
        let read_c = tokio::time::timeout(bound, l.account(&id(&c)))
            .await
            .expect("a read of state appended after the failed record is answered");
        assert!(is_unavailable(&read_c), "{read_c:?}");
        let batch = tokio::time::timeout(
            bound,
            l.transfer_batch(vec![transfer("f-2", &c, &b, 10)], false),
        )
        .await
        .expect("a batch on a failed stream is answered");
        assert!(batch.iter().all(is_unavailable), "{batch:?}");
        let entry = tokio::time::timeout(bound, credit(&l, "f-3", &b, 1))
            .await
            .expect("an entry on a failed stream is answered");
        assert!(is_unavailable(&entry), "{entry:?}");
        let read_a = tokio::time::timeout(bound, l.account(&id(&a)))
            .await
            .expect("a read of state that is not durable is answered");
        assert!(is_unavailable(&read_a), "{read_a:?}");
        let read_d = tokio::time::timeout(bound, l.account(&id("dora")))
            .await
            .expect("a read of durable state is answered");
        assert_eq!(read_d.unwrap().balance_minor, 7);

        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::timeout(bound, l.restart_required())
            .await
            .expect("the node asks for a restart once the stream takes writes");
        l.shutdown().await;

        // The restart: what is durable, and every ID settles exactly once.
        let l = open(&wal, &snaps, config(shards)).await;
        assert!(l.is_ready());
        l.transfer(transfer("f-1", &a, &b, 100)).await.unwrap();
        l.transfer(transfer("f-1", &a, &b, 100)).await.unwrap();
        l.transfer(transfer("f-4", &c, &b, 10)).await.unwrap();
        let batch = l
            .transfer_batch(vec![transfer("f-2", &c, &b, 10)], false)
            .await;
        assert!(batch.iter().all(Result::is_ok), "{batch:?}");
        credit(&l, "f-3", &b, 1).await.unwrap();
        assert_eq!(balance(&l, &a).await, 900);
        assert_eq!(balance(&l, &b).await, 121);
        assert_eq!(balance(&l, &c).await, 30);
        assert_eq!(balance(&l, "dora").await, 7);
        for x in [&a, &b, &c] {
            assert_eq!(l.account(&id(x)).await.unwrap().held_minor, 0);
        }
        l.shutdown().await;
    }
}

/// Once a shard's stream failed, the node takes no new write on any shard until its restart,
/// and a write it refused did nothing. Here the debit account's shard is healthy and the
/// credit account's shard failed: a transfer accepted there would place its hold, answer 503
/// when the credit could not be recorded, and still take effect at the restart (recovery
/// finishes the hold), while its client took the 503 after readiness went off as "refused".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_stream_failure_a_write_is_refused_and_does_nothing() {
    let bound = Duration::from_secs(10);
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let stream = GatedWal::new(wal.clone());
    let failing = stream.failing.clone();
    let l = Ledger::open(config(4), Arc::new(stream), Arc::new(snaps.clone()))
        .await
        .unwrap();
    let (a, b, _) = names(&l);
    for x in [&a, &b] {
        open_account(&l, x, 0).await;
    }
    credit(&l, "fund-a", &a, 1_000).await.unwrap();
    // Only b's shard has a record to write while the stream fails: only it fails.
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let entry = tokio::time::timeout(bound, credit(&l, "on-b", &b, 5))
        .await
        .expect("an entry on a failed stream is answered");
    assert!(is_unavailable(&entry), "{entry:?}");
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(l.failed_shards().len(), 1, "{:?}", l.failed_shards());
    let late = tokio::time::timeout(bound, l.transfer(transfer("late", &a, &b, 100)))
        .await
        .expect("a write after the failure is answered");
    assert!(is_unavailable(&late), "{late:?}");
    let late_entry = tokio::time::timeout(bound, credit(&l, "late-e", &a, 1))
        .await
        .expect("answered");
    assert!(is_unavailable(&late_entry), "{late_entry:?}");
    tokio::time::timeout(bound, l.restart_required())
        .await
        .expect("the node asks for a restart once the stream takes writes");
    l.shutdown().await;

    let l = open(&wal, &snaps, config(4)).await;
    assert_eq!(
        (balance(&l, &a).await, balance(&l, &b).await),
        (1_000, 0),
        "a refused write took effect at the restart"
    );
    for x in [&a, &b] {
        assert_eq!(l.account(&id(x)).await.unwrap().held_minor, 0, "{x}");
    }
    assert!(
        l.movement(&mid("late")).await.is_err(),
        "the refused transfer is unknown"
    );
    l.shutdown().await;
}

/// Defect 6: a transfer whose records are not durable is not shown as pending, and an
/// opening that is not durable is not the ground of `account_exists`: a crash could undo
/// both. The answers wait (within a bound) or say 503, never what memory alone holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_conflicts_answer_only_from_durable_state() {
    let (l, wal, snaps, gate, (a, b, _)) = gated_ledger(config(1)).await;
    credit(&l, "fund", &a, 100).await.unwrap();
    gate.send_replace(false);
    let _pending = {
        let (l, t) = (l.clone(), transfer("p-1", &a, &b, 10));
        tokio::spawn(async move { l.transfer(t).await })
    };
    let _opening = {
        let l = l.clone();
        tokio::spawn(async move {
            l.open_account(OpenAccount {
                account_id: id("newbie"),
                currency: brl(),
                overdraft_limit_minor: 0,
                metadata_opt: None,
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = tokio::time::timeout(Duration::from_secs(10), l.movement(&mid("p-1")))
        .await
        .expect("a read never hangs");
    assert!(
        seen.is_err(),
        "a transfer with no durable record is not shown: {seen:?}"
    );
    let other = tokio::time::timeout(
        Duration::from_secs(10),
        l.open_account(OpenAccount {
            account_id: id("newbie"),
            currency: Currency::new("USD").unwrap(),
            overdraft_limit_minor: 0,
            metadata_opt: None,
        }),
    )
    .await
    .expect("an opening never hangs");
    assert!(
        !matches!(other, Err(LedgerError::Rejected(Rejection::AccountExists))),
        "account_exists answered on an opening that is not durable: {other:?}"
    );
    // The crash at this moment: neither exists.
    let l = open(&wal, &snaps, config(1)).await;
    assert_eq!(
        l.movement(&mid("p-1")).await.unwrap_err(),
        LedgerError::Rejected(Rejection::MovementNotFound)
    );
    assert_eq!(
        l.account(&id("newbie")).await.unwrap_err(),
        LedgerError::Rejected(Rejection::AccountNotFound)
    );
}

/// Defect 7: an ID already used on another account conflicts without saying anything about
/// the original (the caller may be another tenant); on the same account the differing fields
/// are named.
#[tokio::test]
async fn an_id_taken_on_another_account_conflicts_without_naming_fields() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(2)).await;
    for x in ["ma", "mb", "other"] {
        open_account(&l, x, 0).await;
    }
    credit(&l, "fund-ma", "ma", 100).await.unwrap();
    credit(&l, "fund-other", "other", 100).await.unwrap();
    l.transfer(transfer("t-x", "ma", "mb", 10)).await.unwrap();
    let conflict = |fields: &[&str]| {
        Err::<(), _>(LedgerError::Rejected(Rejection::IdConflict {
            fields: fields.iter().map(|f| f.to_string()).collect(),
        }))
    };
    let probe = l.transfer(transfer("t-x", "other", "mb", 99)).await;
    assert_eq!(probe.map(|_| ()), conflict(&[]));
    let entry = credit(&l, "t-x", "other", 5).await;
    assert_eq!(entry.map(|_| ()), conflict(&[]));
    let same_owner = l.transfer(transfer("t-x", "ma", "mb", 11)).await;
    assert_eq!(same_owner.map(|_| ()), conflict(&["amount"]));
    assert_eq!(balance(&l, "other").await, 100);
}

/// Defect 1: a day of huge credits and debits on one account (the reproduced poison pill)
/// neither stops the account nor makes the ledger unable to restart.
#[tokio::test]
async fn a_day_of_huge_entries_leaves_the_ledger_able_to_restart() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(1)).await;
    open_account(&l, "merchant", 0).await;
    let amount = 10_000_000_000_000_000; // 100,000,000,000,000.00 BRL
    for i in 0..1_000 {
        credit(&l, &format!("c-{i}"), "merchant", amount)
            .await
            .unwrap();
        l.post_entry(Entry {
            entry_id: mid(&format!("d-{i}")),
            account_id: id("merchant"),
            kind: EntryKind::Debit,
            amount_minor: amount,
            description_opt: None,
        })
        .await
        .unwrap();
    }
    let today = Timestamp::now().day();
    let report = |l: Ledger| async move {
        let days = l.daily(&id("merchant"), today, today).await.unwrap().days;
        (days[0].credits_minor, days[0].debits_minor)
    };
    let expected = (1_000 * i128::from(amount), 1_000 * i128::from(amount));
    assert_eq!(report(l.clone()).await, expected);
    l.shutdown().await;
    let l = open(&wal, &snaps, config(1)).await;
    assert_eq!(report(l.clone()).await, expected);
    credit(&l, "after", "merchant", 1).await.unwrap();
    assert_eq!(balance(&l, "merchant").await, 1);
}

/// Defect 1: an atomic batch whose credit would overflow its account applies nothing (the
/// credit's room is reserved before the commit point), on one shard and across shards.
#[tokio::test]
async fn an_atomic_batch_whose_credit_would_overflow_applies_nothing() {
    for shards in [1, 4] {
        let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
        let l = open(&wal, &snaps, config(shards)).await;
        let (a, b, _) = if shards > 1 {
            names(&l)
        } else {
            ("alice".into(), "bob".into(), "carol".into())
        };
        open_account(&l, &a, 0).await;
        open_account(&l, &b, 0).await;
        credit(&l, "fund-a", &a, 100).await.unwrap();
        credit(&l, "fund-b", &b, i64::MAX - 10).await.unwrap();
        let results = l
            .transfer_batch(
                vec![transfer("at-1", &a, &b, 5), transfer("at-2", &a, &b, 6)],
                true,
            )
            .await;
        let results: Vec<_> = results.into_iter().map(|r| r.map(|_| ())).collect();
        assert_eq!(
            results,
            vec![
                Err(LedgerError::Rejected(Rejection::BatchAborted)),
                Err(LedgerError::Rejected(Rejection::BalanceOverflow)),
            ]
        );
        for l in [l.clone(), open(&wal, &snaps, config(shards)).await] {
            assert_eq!(balance(&l, &a).await, 100);
            assert_eq!(balance(&l, &b).await, i64::MAX - 10);
            assert_eq!(l.account(&id(&a)).await.unwrap().held_minor, 0);
        }
        // The room given back: a credit that fits goes through.
        l.transfer(transfer("at-3", &a, &b, 10)).await.unwrap();
    }
}

/// Defect 1: an event that cannot be applied (here: a commit of a hold that does not exist)
/// makes restore refuse the shard with an error naming the shard, the LSN and the event,
/// instead of a panic.
#[tokio::test]
async fn an_unappliable_event_refuses_restore_naming_shard_lsn_and_event() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(1)).await;
    open_account(&l, "a", 0).await;
    l.shutdown().await;
    write_events(
        &wal,
        0,
        &[saldo_engine::event::Event::HoldCommitted {
            transfer_id: mid("ghost"),
            debit_account_id: id("a"),
            at: Timestamp::now(),
        }],
    )
    .await;
    let e = Ledger::open(config(1), Arc::new(wal.clone()), Arc::new(snaps.clone()))
        .await
        .err()
        .expect("restore refuses the shard");
    let text = e.to_string();
    assert!(
        text.contains("shard 0 at lsn 2") && text.contains("HoldCommitted"),
        "{text}"
    );
    assert!(text.contains("runbook"), "{text}");
}

/// Every event of a shard's stream, in order.
async fn stream_events(wal: &MemoryWal, shard: u32) -> Vec<saldo_engine::event::Event> {
    use saldo_persistence::Wal;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let records = wal.read(shard, after, 100).await.unwrap();
        let Some(last) = records.last() else {
            return out;
        };
        after = last.last_lsn;
        for rec in &records {
            out.extend(saldo_engine::event::decode_all(&rec.payload).unwrap());
        }
    }
}

/// Issue #14 (design decision 4): a transfer whose accounts share a shard is one event,
/// `TransferPosted` applied to both accounts, or one `TransferRejected` (a refused debit, a
/// refused credit, a missing account or another currency); a restart folds them to the same
/// balances, movements and histories.
#[tokio::test]
async fn a_transfer_within_one_shard_is_one_event_that_both_accounts_fold() {
    use saldo_engine::event::Event;
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(1)).await;
    open_account(&l, "a", 0).await;
    open_account(&l, "b", 0).await;
    credit(&l, "fund-a", "a", 100).await.unwrap();
    credit(&l, "fund-b", "b", i64::MAX - 10).await.unwrap();
    let before = stream_events(&wal, 0).await.len();

    l.transfer(transfer("t-ok", "a", "b", 5)).await.unwrap();
    let refused = [
        (
            transfer("t-short", "a", "b", 1_000),
            Rejection::InsufficientFunds,
        ),
        (
            transfer("t-overflow", "a", "b", 50),
            Rejection::BalanceOverflow,
        ),
        (
            transfer("t-ghost", "a", "ghost", 1),
            Rejection::AccountNotFound,
        ),
        (
            transfer("t-from-ghost", "ghost", "b", 1),
            Rejection::AccountNotFound,
        ),
    ];
    for (t, reason) in &refused {
        assert_eq!(
            l.transfer(t.clone()).await.map(|_| ()),
            Err(LedgerError::Rejected(reason.clone())),
            "{}",
            t.transfer_id
        );
    }
    let events = stream_events(&wal, 0).await;
    let new = &events[before..];
    assert_eq!(
        new.len(),
        1 + refused.len(),
        "one event per transfer: {new:#?}"
    );
    assert!(
        matches!(&new[0], Event::TransferPosted { transfer, .. } if transfer.transfer_id == mid("t-ok")),
        "{:?}",
        new[0]
    );
    for (ev, (t, reason)) in new[1..].iter().zip(&refused) {
        assert!(
            matches!(ev, Event::TransferRejected { transfer, reason: r, .. }
                if transfer.transfer_id == t.transfer_id && r == reason),
            "{ev:?}"
        );
    }

    let live = (
        l.account(&id("a")).await.unwrap(),
        l.account(&id("b")).await.unwrap(),
        l.movements(&id("a"), 10, None).await.unwrap(),
        l.movements(&id("b"), 10, None).await.unwrap(),
        l.movement(&mid("t-ok")).await.unwrap(),
        l.movement(&mid("t-short")).await.unwrap(),
    );
    assert_eq!(live.0.balance_minor, 95);
    assert_eq!(live.1.balance_minor, i64::MAX - 5);
    assert_eq!(live.4.status, MovementStatus::Committed);
    assert_eq!(live.5.status, MovementStatus::Rejected);
    l.shutdown().await;
    let l = open(&wal, &snaps, config(1)).await;
    let restored = (
        l.account(&id("a")).await.unwrap(),
        l.account(&id("b")).await.unwrap(),
        l.movements(&id("a"), 10, None).await.unwrap(),
        l.movements(&id("b"), 10, None).await.unwrap(),
        l.movement(&mid("t-ok")).await.unwrap(),
        l.movement(&mid("t-short")).await.unwrap(),
    );
    assert_eq!(format!("{live:?}"), format!("{restored:?}"));
    // A retry after the restart answers the original outcome and records nothing.
    let retried = l.transfer(transfer("t-ok", "a", "b", 5)).await.unwrap();
    assert!(retried.replayed);
    assert_eq!(stream_events(&wal, 0).await.len(), events.len());
}

/// Issue #14 (outcomes apart from failures): a malformed field other than an ID is refused
/// with a rejection that names it, not as a bad ID, and nothing is recorded.
#[tokio::test]
async fn a_bad_field_is_refused_by_name_and_changes_nothing() {
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    let l = open(&wal, &snaps, config(1)).await;
    open_account(&l, "a", 0).await;
    open_account(&l, "b", 0).await;
    credit(&l, "fund", "a", 100).await.unwrap();
    let field_of = |e: LedgerError| match e {
        LedgerError::Rejected(Rejection::InvalidField { field, .. }) => field,
        other => panic!("not a field's rejection: {other:?}"),
    };
    let before = stream_events(&wal, 0).await.len();
    let mut long = transfer("t-long", "a", "b", 1);
    long.description_opt = Some("x".repeat(DESCRIPTION_BYTES_MAX + 1));
    assert_eq!(field_of(l.transfer(long).await.unwrap_err()), "description");
    let opening = OpenAccount {
        account_id: id("c"),
        currency: brl(),
        overdraft_limit_minor: 0,
        metadata_opt: Some("x".repeat(limits::METADATA_BYTES_MAX + 1)),
    };
    assert_eq!(
        field_of(l.open_account(opening).await.unwrap_err()),
        "metadata"
    );
    let day = Timestamp::now().day();
    let backwards = l.daily(&id("a"), day, Day(day.0 - 1)).await.unwrap_err();
    assert_eq!(field_of(backwards), "to");
    assert_eq!(
        stream_events(&wal, 0).await.len(),
        before,
        "nothing recorded"
    );
    assert_eq!(balance(&l, "a").await, 100);
}

// ------------------------------------------------------------------ issue 14: hosted accounts

/// A batch's phase that finds the group commit full waits for room and then resumes; other
/// turns on the same account may run meanwhile and move its clock on. The resumed turn must
/// take the account's time again: a stale one would be an event in the past, which `apply`
/// refuses by stopping the process (found by the batch-8,189 benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_phase_that_waits_for_room_resumes_at_the_accounts_time() {
    let (l, _, _, gate, (a, b, c)) = gated_ledger(EngineConfig {
        in_flight_max: 10_000,
        ..config(1)
    })
    .await;
    credit(&l, "fund-a", &a, 100_000_000).await.unwrap();
    credit(&l, "fund-b", &b, 100_000_000).await.unwrap();
    // The stream stalls: holds and credits of the batches fill the group commit past its
    // room, many times over; single transfers on the credit account queue for room beside
    // them, and win the lock now and then while a batch's phase waits.
    gate.send_replace(false);
    let mut tasks = Vec::new();
    for k in 0..4 {
        let batch: Vec<_> = (0..4_000)
            .map(|i| transfer(&format!("b-{k}-{i}"), &a, &b, 1))
            .collect();
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            l.transfer_batch(batch, false)
                .await
                .iter()
                .all(Result::is_ok)
        }));
    }
    for i in 0..256 {
        let (l, t) = (l.clone(), transfer(&format!("s-{i}"), &b, &c, 1));
        tasks.push(tokio::spawn(async move { l.transfer(t).await.is_ok() }));
        if i % 64 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.send_replace(true);
    for t in tasks {
        let ok = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("every transfer ends")
            .expect("no transfer stopped the process");
        assert!(ok, "every transfer commits");
    }
    assert_eq!(balance(&l, &a).await, 100_000_000 - 16_000);
    assert_eq!(balance(&l, &b).await, 100_000_000 + 16_000 - 256);
    assert_eq!(balance(&l, &c).await, 256);
    l.shutdown().await;
}

/// Time is injected into the node (`EngineConfig::clock`): events carry the clock's time, the
/// daily report splits days where the clock says, and an account's time never goes backwards
/// when the clock does. All of it on a clock moved by hand: no sleep, no midnight to wait for.
#[tokio::test]
async fn events_take_the_injected_clocks_time_and_an_account_never_goes_back_in_time() {
    let day_us = Timestamp::DAY_MICROS;
    let day = 20_000; // 2024-10-04
    let before_midnight = Timestamp(day * day_us + day_us - 1_000_000);
    let (clock, hand) = Clock::manual(before_midnight);
    for shards in [1, 4] {
        hand.set(before_midnight);
        let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
        let l = open(
            &wal,
            &snaps,
            EngineConfig {
                clock: clock.clone(),
                courier: saldo_engine::Courier::direct(),
                ..config(shards)
            },
        )
        .await;
        // Within one shard with 1 shard, across two with 4.
        assert_eq!(l.shard_of(&id("a")) != l.shard_of(&id("b")), shards == 4);
        open_account(&l, "a", 0).await;
        open_account(&l, "b", 0).await;
        credit(&l, "fund", "a", 1_000).await.unwrap();
        let t1 = l.transfer(transfer("t-1", "a", "b", 100)).await.unwrap();
        assert_eq!(t1.movement.created_at, before_midnight, "{shards} shards");
        hand.advance(Duration::from_secs(2));
        let t2 = l.transfer(transfer("t-2", "a", "b", 100)).await.unwrap();
        assert_eq!(
            t2.movement.created_at,
            Timestamp((day + 1) * day_us + 1_000_000)
        );
        let report = l
            .daily(&id("b"), Day(day as i32), Day(day as i32 + 1))
            .await
            .unwrap();
        let per_day: Vec<(Day, u64, i128)> = report
            .days
            .iter()
            .map(|d| (d.day, d.num_movements, d.credits_minor))
            .collect();
        assert_eq!(
            per_day,
            [(Day(day as i32), 1, 100), (Day(day as i32 + 1), 1, 100)]
        );
        // The clock goes back a day: the accounts' time does not.
        hand.set(Timestamp(day * day_us));
        let t3 = l.transfer(transfer("t-3", "a", "b", 100)).await.unwrap();
        assert!(
            t3.movement.created_at >= t2.movement.created_at,
            "{:?} before {:?}",
            t3.movement.created_at,
            t2.movement.created_at
        );
        assert_eq!(balance(&l, "b").await, 300);
        l.shutdown().await;
    }
}

/// A snapshot is a cut at the stream's tail as it starts: records a busy node appends while
/// the snapshot folds are left to the next one (a fold to the end chased the writers, and
/// under a sustained load one snapshot took minutes and the tail to replay grew with it).
#[tokio::test]
async fn a_snapshot_stops_at_the_tail_it_started_from_while_writers_go_on() {
    use saldo_persistence::{SnapshotStore, Wal};
    let (wal, snaps) = (MemoryWal::new(), MemorySnapshotStore::new());
    for n in 0..5 {
        write_events(
            &wal,
            0,
            &[saldo_engine::event::Event::AccountOpened {
                cmd: OpenAccount {
                    account_id: id(&format!("early-{n}")),
                    currency: brl(),
                    overdraft_limit_minor: 0,
                    metadata_opt: None,
                },
                at: Timestamp(1_700_000_000_000_000),
            }],
        )
        .await;
    }
    let busy = GatedWal::new(wal.clone());
    busy.writes_on_read
        .store(20, std::sync::atomic::Ordering::SeqCst);
    let written = saldo_engine::recovery::write_snapshot(&busy, &snaps, 0, 100, 2)
        .await
        .unwrap();
    let meta = written.meta;
    assert_eq!(written.entries, 5, "five accounts, no movement");
    assert_eq!(meta.lsn, 5, "the cut is the tail when the snapshot started");
    let written = wal.tail(0).await.unwrap().unwrap().last_lsn;
    assert!(written > 5, "the writer went on meanwhile ({written})");
    let state = saldo_engine::state::ShardState::decode(&snaps.get(&meta).await.unwrap()).unwrap();
    assert_eq!((state.lsn, state.accounts.len()), (5, 5));
}
