//! Real-process crash test: a child process applies transfers to a ledger on the file stream
//! (fsync on) and prints every acknowledged ID; the parent kills it with SIGKILL at a random
//! moment, reopens the ledger from disk and checks that every acknowledged transfer is there
//! and that money is conserved — over several cycles, each restarting from the last crash.
//!
//! The child is this same test binary, re-run with `CRASH_WORKER_DIR` set (the `worker` test
//! does nothing without it).

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng};
use saldo_engine::*;
use saldo_persistence::{
    snapshot::local_dir::LocalDirSnapshotStore, wal::local_file::LocalFileWal,
};

const ACCOUNTS: usize = 40;
const FUNDING_MINOR: i64 = 1_000_000;

fn config() -> EngineConfig {
    EngineConfig {
        num_shards: 4,
        node_epoch: 1,
        movements_window: 10,
        in_flight_max: 1_000,
        group_commit_linger_us: 0,
        snapshot_every_events: 2_000,
        snapshot_interval_ms: 300,
        snapshots_keep: 2,
        clock: saldo_engine::Clock::system(),
        courier: saldo_engine::Courier::direct(),
    }
}

async fn open(dir: &std::path::Path) -> Ledger {
    let wal = LocalFileWal::open(dir.join("wal"), true).unwrap();
    let snaps = LocalDirSnapshotStore::open(dir.join("snapshots")).unwrap();
    Ledger::open(config(), Arc::new(wal), Arc::new(snaps))
        .await
        .unwrap()
}

fn account(i: usize) -> AccountId {
    AccountId::new(&format!("acct-{i}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker() {
    let Ok(dir) = std::env::var("CRASH_WORKER_DIR") else {
        return;
    };
    let cycle: u32 = std::env::var("CRASH_CYCLE").unwrap().parse().unwrap();
    let ledger = open(std::path::Path::new(&dir)).await;
    let brl = Currency::new("BRL").unwrap();
    for i in 0..ACCOUNTS {
        let cmd = OpenAccount {
            account_id: account(i),
            currency: brl,
            overdraft_limit_minor: 0,
            metadata_opt: None,
        };
        ledger.open_account(cmd).await.unwrap();
        let seed = Entry {
            entry_id: MovementId::new(&format!("seed-{i}")).unwrap(),
            account_id: account(i),
            kind: EntryKind::Credit,
            amount_minor: FUNDING_MINOR,
            description_opt: None,
        };
        ledger.post_entry(seed).await.unwrap();
    }
    println!("READY");
    let mut tasks = Vec::new();
    // Batch workers: independent batches of 20, each with a transfer to an account that does
    // not exist and a repeat of an ID from earlier in the same batch.
    for w in 32..40u64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(u64::from(cycle) * 1_000 + w);
            for n in 0..10_000u64 {
                let mut batch = Vec::new();
                for k in 0..20u64 {
                    let a = rng.gen_range(0..ACCOUNTS);
                    let b = (a + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
                    let credit = if k == 7 {
                        AccountId::new("acct-nobody").unwrap()
                    } else {
                        account(b)
                    };
                    batch.push(Transfer {
                        transfer_id: MovementId::new(&format!("c{cycle}-w{w}-{n}-{k}")).unwrap(),
                        debit_account_id: account(a),
                        credit_account_id: credit,
                        amount_minor: rng.gen_range(1..5_000),
                        currency: brl,
                        description_opt: None,
                    });
                }
                batch.push(batch[3].clone());
                let ids: Vec<String> = batch
                    .iter()
                    .map(|t| t.transfer_id.as_str().to_string())
                    .collect();
                for (id, r) in ids.iter().zip(ledger.transfer_batch(batch, false).await) {
                    match r {
                        Ok(_) => drop(writeln!(std::io::stdout(), "ACK {id}")),
                        Err(LedgerError::Rejected(_)) => {
                            drop(writeln!(std::io::stdout(), "REJ {id}"))
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    for w in 0..32u64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(u64::from(cycle) * 1_000 + w);
            for n in 0..100_000u64 {
                let a = rng.gen_range(0..ACCOUNTS);
                let b = (a + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
                let id = format!("c{cycle}-w{w}-{n}");
                let t = Transfer {
                    transfer_id: MovementId::new(&id).unwrap(),
                    debit_account_id: account(a),
                    credit_account_id: account(b),
                    amount_minor: rng.gen_range(1..5_000),
                    currency: brl,
                    description_opt: None,
                };
                match ledger.transfer(t).await {
                    // The parent stops reading before it kills us: ignore a closed pipe.
                    Ok(_) => drop(writeln!(std::io::stdout(), "ACK {id}")),
                    Err(LedgerError::Rejected(_)) => drop(writeln!(std::io::stdout(), "REJ {id}")),
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_transfers_survive_sigkill_and_money_is_conserved() {
    if std::env::var("CRASH_WORKER_DIR").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let mut acked: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for cycle in 0..5u32 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "worker", "--nocapture", "--test-threads", "1"])
            .env("CRASH_WORKER_DIR", dir.path())
            .env("CRASH_CYCLE", cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = Duration::from_millis(rng.gen_range(100..700));
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut started_opt: Option<Instant> = None;
            let spawned = Instant::now();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness prints "test worker ... " without a newline before our output.
                if line.ends_with("READY") {
                    started_opt = Some(Instant::now());
                }
                if spawned.elapsed() > Duration::from_secs(120) {
                    break; // bounded: the assertion below reports a worker that never started
                }
                lines.push(line);
                if started_opt.is_some_and(|s| s.elapsed() >= kill_after) {
                    break;
                }
            }
            lines
        });
        let lines = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        // SIGKILL, at whatever point the child is.
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            lines.iter().any(|l| l.ends_with("READY")),
            "cycle {cycle}: the worker did not start"
        );
        let this_cycle: Vec<String> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("ACK ").map(String::from))
            .collect();
        assert!(
            !this_cycle.is_empty(),
            "cycle {cycle}: no transfer acknowledged before the kill"
        );
        acked.extend(this_cycle);
        refused.extend(
            lines
                .iter()
                .filter_map(|l| l.strip_prefix("REJ ").map(String::from)),
        );

        let ledger = open(dir.path()).await;
        for id in &acked {
            let m = ledger
                .movement(&MovementId::new(id).unwrap())
                .await
                .unwrap_or_else(|e| panic!("acknowledged {id} lost: {e}"));
            assert_eq!(m.status, MovementStatus::Committed, "{id}");
        }
        // A refusal that was answered is durable too, and stays a refusal.
        for id in &refused {
            let m = ledger
                .movement(&MovementId::new(id).unwrap())
                .await
                .unwrap_or_else(|e| panic!("answered refusal {id} lost: {e}"));
            assert_eq!(m.status, MovementStatus::Rejected, "{id}");
        }
        let mut total = 0i64;
        for i in 0..ACCOUNTS {
            let a = ledger.account(&account(i)).await.unwrap();
            assert_eq!(a.held_minor, 0, "recovery resolved every hold");
            assert!(a.available_minor >= 0);
            total += a.balance_minor;
        }
        assert_eq!(
            total,
            FUNDING_MINOR * ACCOUNTS as i64,
            "cycle {cycle}: money conserved"
        );
        ledger.shutdown().await;
    }
}
