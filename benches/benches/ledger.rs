//! The engine in-process on the file stream with fsync on: transfers/s and latency percentiles
//! at several bounds of transfers in flight, within one shard and across shards; the batch
//! path; memory per idle account at 1,000,000 accounts; restore time of 1,000,000 accounts +
//! 1,000,000 events. Prints a markdown table. Every loop is bounded in time.
//!
//! `cargo bench -p saldo-benches --bench ledger` (add `-- --seconds N` to change the duration of
//! each point, `-- --accounts-restore N` for the restore/memory part).
//!
//! `-- --wal kinesis --snapshot-store dynamodb` runs the same on the AWS backends against the
//! local emulators (kinesalite, DynamoDB Local; `scripts/install-test-deps.sh`), started on
//! 127.0.0.1 by this process and stopped when it ends. In that mode the bench also measures the
//! emulator's own put latency (`--put-probe N` sequential appends of one small record, 200 by
//! default), and the restore is from a DynamoDB snapshot of the accounts + the entries after it
//! on Kinesis (the file mode restores the whole stream, no snapshot). `--accounts N` changes the
//! accounts of the transfer part, `--in-flight N` runs only the uniform-pairs point at N in
//! flight (no batches), `--batches-in-flight N` only the batch point with N batches of 8,190
//! in flight at once.

/// The same allocator as the `saldo` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use saldo_engine::{event::Event, *};
use saldo_persistence::{
    aws::AwsSettings,
    emulators::Emulator,
    record,
    snapshot::{dynamodb::DynamoDbSnapshotStore, local_dir::LocalDirSnapshotStore, SnapshotStore},
    wal::{kinesis::KinesisWal, local_file::LocalFileWal, Wal},
};

const ACCOUNTS_DEFAULT: u64 = 100_000;
const SHARDS_DEFAULT: u32 = 8;

/// Accounts of the transfer part (`-- --accounts N`).
fn accounts() -> usize {
    arg("--accounts", ACCOUNTS_DEFAULT) as usize
}

fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// `--wal kinesis` (with `--snapshot-store dynamodb`): the AWS backends on the emulators.
fn aws_mode() -> bool {
    let wal = arg_str("--wal").unwrap_or_else(|| "file".into());
    let snaps = arg_str("--snapshot-store").unwrap_or_else(|| "file".into());
    match (wal.as_str(), snaps.as_str()) {
        ("file", "file") => false,
        ("kinesis", "dynamodb") => true,
        other => panic!("unsupported backends {other:?}: file/file or kinesis/dynamodb"),
    }
}

/// The running emulators of the AWS mode (stopped when dropped, at the end of the process).
struct Emulators {
    kinesis: Emulator,
    dynamodb: Emulator,
}

impl Emulators {
    fn start() -> Emulators {
        Emulators {
            kinesis: Emulator::kinesis(),
            dynamodb: Emulator::dynamodb(),
        }
    }

    async fn wal(&self, stream: &str) -> KinesisWal {
        KinesisWal::open(&AwsSettings::emulator(self.kinesis.endpoint()), stream, 1)
            .await
            .unwrap()
    }

    async fn snapshots(&self, table: &str) -> DynamoDbSnapshotStore {
        DynamoDbSnapshotStore::open(&AwsSettings::emulator(self.dynamodb.endpoint()), table)
            .await
            .unwrap()
    }
}

/// Opens the backends of the mode: file stream (fsync) + snapshot directory under `dir`, or
/// Kinesis + DynamoDB on the emulators.
async fn backends(
    dir: &std::path::Path,
    emulators_opt: Option<&Emulators>,
) -> (Arc<dyn Wal>, Arc<dyn SnapshotStore>) {
    match emulators_opt {
        None => (
            Arc::new(LocalFileWal::open(dir.join("wal"), true).unwrap()),
            Arc::new(LocalDirSnapshotStore::open(dir.join("snapshots")).unwrap()),
        ),
        Some(emu) => (
            Arc::new(emu.wal("bench-stream").await),
            Arc::new(emu.snapshots("bench-table").await),
        ),
    }
}

/// Returns the value of the backend metric `name` (summed over its label sets).
fn metric(samples: &[saldo_persistence::metrics::MetricSample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|m| m.name == name)
        .map(|m| m.value)
        .sum()
}

/// Appends `n` records of one small event, one after the other, on ledger shard 0 of a fresh
/// stream: the emulator's put latency alone (no engine, no group commit).
async fn put_probe(
    emu: &Emulators,
    n: usize,
) -> (
    Histogram<u64>,
    Vec<saldo_persistence::metrics::MetricSample>,
) {
    let wal = emu.wal("bench-put-probe").await;
    let brl = Currency::new("BRL").unwrap();
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let (mut lsn, mut prev) = (0u64, [0u8; 32]);
    for i in 0..n {
        let ev = Event::AccountOpened {
            cmd: OpenAccount {
                account_id: aid(i),
                currency: brl,
                overdraft_limit_minor: 0,
                metadata_opt: None,
            },
            at: Timestamp(1_700_000_000_000_000),
        };
        let mut payload = Vec::new();
        saldo_engine::event::encode_into(&ev, &mut payload);
        let rec = record::encode(0, 1, lsn + 1, lsn + 1, &prev, &payload);
        (lsn, prev) = (rec.last_lsn, rec.hash);
        let started = Instant::now();
        wal.append(0, rec).await.unwrap();
        hist.record(started.elapsed().as_micros() as u64).unwrap();
    }
    (hist, wal.metrics())
}

/// Shards of the node under test (`-- --shards N`).
fn shards() -> u32 {
    arg("--shards", u64::from(SHARDS_DEFAULT)) as u32
}

fn config(in_flight_max: usize) -> EngineConfig {
    EngineConfig {
        num_shards: shards(),
        node_epoch: 1,
        movements_window: 16,
        in_flight_max,
        group_commit_linger_us: 0,
        snapshot_every_events: u64::MAX,
        snapshot_interval_ms: 0,
        snapshots_keep: 2,
        clock: saldo_engine::Clock::system(),
        courier: saldo_engine::Courier::direct(),
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn aid(i: usize) -> AccountId {
    AccountId::new(&format!("acct-{i}")).unwrap()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

async fn setup(dir: &std::path::Path, emulators_opt: Option<&Emulators>) -> Ledger {
    let (wal, snaps) = backends(dir, emulators_opt).await;
    let ledger = Ledger::open(config(100_000), wal, snaps).await.unwrap();
    let accounts = accounts();
    let brl = Currency::new("BRL").unwrap();
    futures::future::join_all((0..64).map(|w| {
        let ledger = ledger.clone();
        async move {
            for i in (w..accounts).step_by(64) {
                let cmd = OpenAccount {
                    account_id: aid(i),
                    currency: brl,
                    overdraft_limit_minor: 0,
                    metadata_opt: None,
                };
                ledger.open_account(cmd).await.unwrap();
                let e = Entry {
                    entry_id: MovementId::new(&format!("seed-{i}")).unwrap(),
                    account_id: aid(i),
                    kind: EntryKind::Credit,
                    amount_minor: 1_000_000_000,
                    description_opt: None,
                };
                ledger.post_entry(e).await.unwrap();
            }
        }
    }))
    .await;
    ledger
}

#[derive(Clone, Copy, PartialEq)]
enum Pairs {
    Uniform,
    SameShard,
    CrossShard,
}

struct Point {
    label: String,
    rate_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

async fn run_point(
    ledger: &Ledger,
    by_shard: &Arc<Vec<Vec<usize>>>,
    pairs: Pairs,
    in_flight: usize,
    seconds: u64,
    tag: u64,
) -> Point {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let brl = Currency::new("BRL").unwrap();
    let accounts = accounts();
    let results = futures::future::join_all((0..in_flight).map(|w| {
        let (ledger, by_shard) = (ledger.clone(), by_shard.clone());
        tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(tag * 100_000 + w as u64);
            let mut hist = Histogram::<u64>::new(3).unwrap();
            let mut n = 0u64;
            while Instant::now() < deadline && n < 10_000_000 {
                let (a, b) = match pairs {
                    Pairs::Uniform => {
                        let a = rng.gen_range(0..accounts);
                        (a, (a + rng.gen_range(1..accounts)) % accounts)
                    }
                    Pairs::SameShard => {
                        let s = &by_shard[rng.gen_range(0..by_shard.len())];
                        let i = rng.gen_range(0..s.len());
                        (s[i], s[(i + rng.gen_range(1..s.len())) % s.len()])
                    }
                    Pairs::CrossShard => {
                        let sa = rng.gen_range(0..by_shard.len());
                        let sb = (sa + rng.gen_range(1..by_shard.len())) % by_shard.len();
                        (
                            by_shard[sa][rng.gen_range(0..by_shard[sa].len())],
                            by_shard[sb][rng.gen_range(0..by_shard[sb].len())],
                        )
                    }
                };
                let t = Transfer {
                    transfer_id: MovementId::new(&format!("b{tag}-{w}-{n}")).unwrap(),
                    debit_account_id: aid(a),
                    credit_account_id: aid(b),
                    amount_minor: rng.gen_range(1..100),
                    currency: brl,
                    description_opt: None,
                };
                let started = Instant::now();
                ledger.transfer(t).await.unwrap();
                hist.record(started.elapsed().as_micros() as u64).unwrap();
                n += 1;
            }
            hist
        })
    }))
    .await;
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for h in results {
        hist.add(h.unwrap()).unwrap();
    }
    let label = match pairs {
        Pairs::Uniform => "uniform random pairs",
        Pairs::SameShard => "within one shard",
        Pairs::CrossShard => "across shards",
    };
    Point {
        label: format!("{label}, {in_flight} in flight"),
        rate_per_s: hist.len() as f64 / seconds as f64,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
    }
}

async fn run_batches(ledger: &Ledger, seconds: u64, concurrency: u64) -> Point {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started_all = Instant::now();
    let brl = Currency::new("BRL").unwrap();
    let accounts = accounts();
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(7 + w);
                let mut hist = Histogram::<u64>::new(3).unwrap();
                let (mut done, mut k) = (0u64, 0u64);
                while Instant::now() < deadline && k < 10_000 {
                    let batch: Vec<Transfer> = (0..8_190)
                        .map(|i| {
                            let a = rng.gen_range(0..accounts);
                            Transfer {
                                transfer_id: MovementId::new(&format!("batch{w}-{k}-{i}")).unwrap(),
                                debit_account_id: aid(a),
                                credit_account_id: aid((a + rng.gen_range(1..accounts)) % accounts),
                                amount_minor: 1,
                                currency: brl,
                                description_opt: None,
                            }
                        })
                        .collect();
                    let started = Instant::now();
                    let results = ledger.transfer_batch(batch, false).await;
                    hist.record(started.elapsed().as_micros() as u64).unwrap();
                    done += results.iter().filter(|r| r.is_ok()).count() as u64;
                    k += 1;
                }
                (done, hist)
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let mut done = 0;
    for t in tasks {
        let (d, h) = t.await.unwrap();
        done += d;
        hist.add(h).unwrap();
    }
    Point {
        label: format!("batches of 8,190, {concurrency} in flight (latency per batch)"),
        rate_per_s: done as f64 / started_all.elapsed().as_secs_f64(),
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
    }
}

/// Appends `per_shard[s]` to shard `s`'s stream in records of 4,000 events, continuing the
/// shard's tail, as a node would have written them.
async fn append_events(wal: &dyn Wal, per_shard: Vec<Vec<Event>>) {
    for (s, events) in per_shard.into_iter().enumerate() {
        let (mut lsn, mut prev) = match wal.tail(s as u32).await.unwrap() {
            Some(tail) => (tail.last_lsn, tail.hash),
            None => (0u64, [0u8; 32]),
        };
        for chunk in events.chunks(4_000) {
            let mut payload = Vec::new();
            for ev in chunk {
                saldo_engine::event::encode_into(ev, &mut payload);
            }
            let rec = record::encode(
                s as u32,
                1,
                lsn + 1,
                lsn + chunk.len() as u64,
                &prev,
                &payload,
            );
            (lsn, prev) = (rec.last_lsn, rec.hash);
            wal.append(s as u32, rec).await.unwrap();
        }
    }
}

/// `n` account openings (and with `with_entries` `n` entries, one per account), by shard.
fn events(n: usize, openings: bool, entries: bool) -> Vec<Vec<Event>> {
    let brl = Currency::new("BRL").unwrap();
    let at = Timestamp(1_700_000_000_000_000);
    let mut per_shard: Vec<Vec<Event>> = vec![Vec::new(); shards() as usize];
    for i in 0..n {
        let id = aid(i);
        let s = saldo_engine::shard::shard_of(id.as_str(), shards()) as usize;
        if openings {
            per_shard[s].push(Event::AccountOpened {
                cmd: OpenAccount {
                    account_id: id.clone(),
                    currency: brl,
                    overdraft_limit_minor: 0,
                    metadata_opt: None,
                },
                at,
            });
        }
        if !entries {
            continue;
        }
        let entry = Entry {
            entry_id: MovementId::new(&format!("e-{i}")).unwrap(),
            account_id: id,
            kind: EntryKind::Credit,
            amount_minor: 100,
            description_opt: None,
        };
        per_shard[s].push(Event::EntryApplied {
            entry,
            balance_after_minor: 100,
            at,
        });
    }
    per_shard
}

/// Writes `n` account openings and `n` entries straight into the stream (as a node would
/// have), then measures `Ledger::open` (restore) and the memory it takes.
async fn restore_and_memory(n: usize, with_entries: bool) -> (Duration, f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = LocalFileWal::open(dir.path().join("wal"), false).unwrap();
        append_events(&wal, events(n, true, with_entries)).await;
    }
    let rss_before = rss_bytes();
    let started = Instant::now();
    let wal = LocalFileWal::open(dir.path().join("wal"), true).unwrap();
    let snaps = LocalDirSnapshotStore::open(dir.path().join("snapshots")).unwrap();
    let ledger = Ledger::open(config(1_000), Arc::new(wal), Arc::new(snaps))
        .await
        .unwrap();
    let restore = started.elapsed();
    let rss_after = rss_bytes();
    assert_eq!(ledger.stats().num_accounts, n as u64);
    let per_account = (rss_after.saturating_sub(rss_before)) as f64 / n as f64;
    ledger.shutdown().await;
    (restore, per_account, rss_after)
}

/// The AWS restore: `n` account openings on Kinesis, restored once and snapshotted to
/// DynamoDB, then `n` entries on Kinesis after the snapshot; measures a cold open (new
/// `KinesisWal` that scans the stream into its index, new store, `Ledger::open` from the
/// snapshot + the events after it) and the memory it takes.
async fn restore_aws(n: usize) -> (Duration, f64, u64) {
    let emu = Emulators::start();
    let started = Instant::now();
    {
        let wal: Arc<dyn Wal> = Arc::new(emu.wal("bench-stream").await);
        let snaps: Arc<dyn SnapshotStore> = Arc::new(emu.snapshots("bench-table").await);
        append_events(wal.as_ref(), events(n, true, false)).await;
        eprintln!(
            "{n} openings on kinesis in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let ledger = Ledger::open(config(1_000), wal.clone(), snaps.clone())
            .await
            .unwrap();
        eprintln!(
            "restore of the openings (stream only) in {:.2} s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        ledger.snapshot_now().await.unwrap();
        eprintln!("snapshot_now in {:.2} s", t.elapsed().as_secs_f64());
        ledger.shutdown().await;
        drop(ledger);
        for s in 0..shards() {
            let metas = snaps.list(s).await.unwrap();
            let m = &metas[0];
            eprintln!(
                "shard {s}: snapshot at lsn {}, {} bytes",
                m.lsn, m.size_bytes
            );
        }
        let t = Instant::now();
        append_events(wal.as_ref(), events(n, false, true)).await;
        eprintln!(
            "{n} entries on kinesis in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    eprintln!("set-up {:.1} s", started.elapsed().as_secs_f64());
    let rss_before = rss_bytes();
    let started = Instant::now();
    let wal = emu.wal("bench-stream").await;
    let wal_open = started.elapsed();
    let snaps = emu.snapshots("bench-table").await;
    let ledger = Ledger::open(config(1_000), Arc::new(wal), Arc::new(snaps))
        .await
        .unwrap();
    let restore = started.elapsed();
    let rss_after = rss_bytes();
    eprintln!(
        "cold restore {:.2} s, of which KinesisWal::open (stream scan into the index) {:.2} s",
        restore.as_secs_f64(),
        wal_open.as_secs_f64()
    );
    assert_eq!(ledger.stats().num_accounts, n as u64);
    let per_account = (rss_after.saturating_sub(rss_before)) as f64 / n as f64;
    ledger.shutdown().await;
    (restore, per_account, rss_after)
}

fn main() {
    let seconds = arg("--seconds", 5);
    let restore_accounts = arg("--accounts-restore", 1_000_000) as usize;
    let aws = aws_mode();
    // `--workers 0` runs everything on one thread (a current-thread runtime).
    let workers = arg("--workers", 2) as usize;
    let rt = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    }
    .enable_all()
    .build()
    .unwrap();
    rt.block_on(async {
        let backend = if aws {
            "Kinesis (kinesalite) + DynamoDB Local on 127.0.0.1"
        } else {
            "file stream with fsync on"
        };
        println!("# saldo engine bench — {} cores, {backend}, {} accounts, {} shards\n", std::thread::available_parallelism().map_or(0, |n| n.get()), accounts(), shards());
        if let Some(i) = std::env::args().position(|a| a == "--probe") {
            // Child mode: one measurement in a fresh process, so that no freed heap of an
            // earlier measurement hides what this one takes.
            let with_entries = std::env::args().nth(i + 1).as_deref() == Some("entries");
            let (restore, per_account, rss) = if aws {
                restore_aws(restore_accounts).await
            } else {
                restore_and_memory(restore_accounts, with_entries).await
            };
            println!("{} {per_account} {rss}", restore.as_secs_f64());
            return;
        }
        let probe = |kind: &str| {
            // The child gets this process's arguments (backends, shards) after its own.
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--probe", kind, "--accounts-restore", &restore_accounts.to_string()])
                .args(std::env::args().skip(1))
                .stderr(std::process::Stdio::inherit())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let last = text.lines().last().unwrap_or_default();
            let v: Vec<f64> = last.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            assert_eq!(v.len(), 3, "probe output: {text}");
            (Duration::from_secs_f64(v[0]), v[1], v[2] as u64)
        };
        if arg("--skip-restore", 0) != 1 {
            if aws {
                let (restore, per_account, rss) = probe("entries");
                println!("memory per idle account with one movement (its entry record and the stream index included): {per_account:.0} bytes");
                println!("restore of {restore_accounts} accounts (DynamoDB snapshot) + {restore_accounts} events after it (Kinesis), cold open: {:.2} s (RSS {:.0} MiB)\n", restore.as_secs_f64(), rss as f64 / 1_048_576.0);
            } else {
                let (_, per_bare_account, _) = probe("bare");
                let (restore, per_account, rss) = probe("entries");
                println!("memory per idle account, opened and never used: {per_bare_account:.0} bytes");
                println!("memory per idle account with one movement (its entry record included): {per_account:.0} bytes");
                println!("restore of {restore_accounts} accounts + {restore_accounts} events (whole stream, no snapshot): {:.2} s (RSS {:.0} MiB)\n", restore.as_secs_f64(), rss as f64 / 1_048_576.0);
            }
        }
        if arg("--restore-only", 0) == 1 {
            return;
        }
        let emulators_opt = aws.then(Emulators::start);
        if let Some(emu) = &emulators_opt {
            let n = arg("--put-probe", 200) as usize;
            let (hist, samples) = put_probe(emu, n).await;
            let calls = metric(&samples, "saldo_kinesis_put_latency_seconds_count");
            let sum_s = metric(&samples, "saldo_kinesis_put_latency_seconds_sum");
            println!(
                "kinesalite put latency alone ({n} sequential appends of one event on one shard): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; backend metric: {calls:.0} PutRecords calls, mean {:.2} ms\n",
                hist.value_at_quantile(0.5) as f64 / 1e3,
                hist.value_at_quantile(0.99) as f64 / 1e3,
                hist.max() as f64 / 1e3,
                sum_s * 1e3 / calls.max(1.0)
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let ledger = setup(dir.path(), emulators_opt.as_ref()).await;
        println!("set-up: {} accounts opened and funded in {:.1} s\n", accounts(), started.elapsed().as_secs_f64());
        let mut by_shard = vec![Vec::new(); shards() as usize];
        for i in 0..accounts() {
            by_shard[ledger.shard_of(&aid(i)) as usize].push(i);
        }
        let by_shard = Arc::new(by_shard);
        let backend_before = ledger.stats().backend;
        let mut points = Vec::new();
        let mut tag = 0;
        if let Some(concurrency) = arg_str("--batches-in-flight").and_then(|v| v.parse().ok()) {
            points.push(run_batches(&ledger, seconds, concurrency).await);
        } else if let Some(in_flight) = arg_str("--in-flight").and_then(|v| v.parse().ok()) {
            tag += 1;
            let p = run_point(&ledger, &by_shard, Pairs::Uniform, in_flight, seconds, tag).await;
            eprintln!("{}: {:.0}/s p99 {} µs", p.label, p.rate_per_s, p.p99_us);
            points.push(p);
        } else {
            for pairs in [Pairs::Uniform, Pairs::SameShard, Pairs::CrossShard] {
                for in_flight in [64, 256, 1_024] {
                    tag += 1;
                    let p = run_point(&ledger, &by_shard, pairs, in_flight, seconds, tag).await;
                    eprintln!("{}: {:.0}/s p99 {} µs", p.label, p.rate_per_s, p.p99_us);
                    points.push(p);
                }
            }
            points.push(run_batches(&ledger, seconds, 1).await);
            points.push(run_batches(&ledger, seconds, 4).await);
        }
        let stats = ledger.stats();
        println!("| scenario | transfers/s | p50 | p99 | max |\n|---|---:|---:|---:|---:|");
        for p in &points {
            println!("| {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |", p.label, p.rate_per_s, p.p50_us as f64 / 1e3, p.p99_us as f64 / 1e3, p.max_us as f64 / 1e3);
        }
        let batches = stats.wal_batches_total.max(1);
        println!("\nstream: {} records, {:.1} events per record on average, {:.0} µs per append on average", stats.wal_batches_total, stats.wal_events_total as f64 / batches as f64, stats.wal_append_latency_us_sum as f64 / batches as f64);
        if aws {
            let delta = |name| metric(&stats.backend, name) - metric(&backend_before, name);
            let calls = delta("saldo_kinesis_put_latency_seconds_count");
            println!(
                "kinesis during the measured points: {calls:.0} PutRecords calls, mean put latency {:.2} ms, {:.0} retries, {:.0} throttles",
                delta("saldo_kinesis_put_latency_seconds_sum") * 1e3 / calls.max(1.0),
                delta("saldo_kinesis_retries_total"),
                delta("saldo_kinesis_throttles_total"),
            );
        }
        ledger.shutdown().await;
    });
}
