//! The in-process targets of issue #14 under criterion: the engine (`Ledger`) opened as
//! `saldo serve` opens it (the local file stream with fsync on, a snapshot directory, the
//! gateway's default engine settings) in a temporary directory, driven by
//! - `single_1024_callers`: single transfers from 1,024 concurrent callers (target ≥ 250,000/s
//!   with p99 ≤ 10 ms);
//! - `batch_8189`: batches of 8,189 transfers through `Ledger::transfer_batch` (target
//!   ≥ 400,000/s).
//!
//! Criterion times each sample with `iter_custom`, so its figures are elements (transfers) per
//! second. Criterion has no percentiles under concurrency, so every call's latency also goes
//! into an HDR histogram, and each bench ends by printing one line for `scripts/bench.sh`:
//! `inproc_single_tps=N p99_ms=M p50_ms=… max_ms=… transfers=…` and
//! `inproc_batch8189_tps=N batch_p99_ms=M transfers=…`. Those figures cover every call criterion
//! made, warm-up included.
//!
//! Bounds: ten samples each, a 3 s warm-up and a 20 s measurement by default (criterion's
//! `--warm-up-time` and `--measurement-time` change them), so each bench ends within about a
//! minute including its set-up; every caller's loop is bounded by the iterations it is given.
//!
//! `cargo bench -p saldo-benches --bench inproc` (`-- single` or `-- batch` for one of them).

/// The same allocator as the `saldo` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use hdrhistogram::Histogram;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use saldo_engine::*;
use saldo_persistence::{
    snapshot::local_dir::LocalDirSnapshotStore, wal::local_file::LocalFileWal,
};

/// Concurrent callers of the single-transfer bench (the figure).
const CALLERS: usize = 1_024;
/// Transfers per batch request: TigerBeetle's largest batch, which the HTTP figure is compared
/// with in `scripts/bench.sh`.
const BATCH_TRANSFERS: usize = 8_189;
/// Batches in flight at once: a few clients of the batch endpoint, so that one batch's fsync
/// overlaps the next one's work as it would behind the gateway.
const BATCHES_IN_FLIGHT: usize = 4;
/// Accounts the transfers move money between (uniform random pairs).
const ACCOUNTS: usize = 100_000;
/// Money each account starts with, minor units: enough that no transfer is refused.
const FUNDING_MINOR: i64 = 1_000_000_000_000;

/// `saldo serve`'s engine settings (`EngineSettings::default()` in gateway/src/config.rs, one
/// shard); benches depend on the engine only, so they are repeated here. `INPROC_SHARDS=N`
/// runs them on N shards instead (most transfers then cross shards); `INPROC_SNAPSHOTS=off`
/// turns the node's snapshots off (to see what they cost).
fn serve_config() -> EngineConfig {
    // As `saldo serve` does at start (saldo_engine::process).
    saldo_engine::process::disable_transparent_huge_pages().expect("huge pages off");
    let num_shards = std::env::var("INPROC_SHARDS").map_or(1, |v| {
        v.parse()
            .expect("INPROC_SHARDS: a power of two, at most the engine's SHARDS_MAX")
    });
    let snapshots = std::env::var("INPROC_SNAPSHOTS").map_or(true, |v| match v.as_str() {
        "on" => true,
        "off" => false,
        _ => panic!("INPROC_SNAPSHOTS: on or off"),
    });
    EngineConfig {
        num_shards,
        node_epoch: 1,
        movements_window: 100,
        in_flight_max: 10_000,
        group_commit_linger_us: 0,
        snapshot_every_events: if snapshots { 1_000_000 } else { 0 },
        snapshot_interval_ms: if snapshots { 60_000 } else { 0 },
        snapshots_keep: 2,
        clock: saldo_engine::Clock::system(),
        courier: saldo_engine::Courier::direct(),
    }
}

fn account_id(i: usize) -> AccountId {
    // Short ASCII IDs are always valid.
    AccountId::new(&format!("acct-{i}")).expect("a valid account id")
}

/// The ledger under test with its directory (deleted when dropped, after the ledger).
struct Bench {
    ledger: Ledger,
    _dir: tempfile::TempDir,
}

/// Opens the ledger on the fsynced file stream and opens and funds `ACCOUNTS` accounts.
async fn open_funded() -> Bench {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let wal = LocalFileWal::open(dir.path().join("wal"), true).expect("the file stream opens");
    let snapshots =
        LocalDirSnapshotStore::open(dir.path().join("snapshots")).expect("the snapshot dir opens");
    let ledger = Ledger::open(serve_config(), Arc::new(wal), Arc::new(snapshots))
        .await
        .expect("an empty ledger opens");
    let brl = Currency::new("BRL").expect("a valid currency");
    let openers = (0..CALLERS).map(|w| {
        let ledger = ledger.clone();
        async move {
            for i in (w..ACCOUNTS).step_by(CALLERS) {
                let open = OpenAccount {
                    account_id: account_id(i),
                    currency: brl,
                    overdraft_limit_minor: 0,
                    metadata_opt: None,
                };
                ledger
                    .open_account(open)
                    .await
                    .expect("set-up: account opens");
                let funding = Entry {
                    entry_id: MovementId::new(&format!("fund-{i}")).expect("a valid id"),
                    account_id: account_id(i),
                    kind: EntryKind::Credit,
                    amount_minor: FUNDING_MINOR,
                    description_opt: None,
                };
                ledger
                    .post_entry(funding)
                    .await
                    .expect("set-up: funding posts");
            }
        }
    });
    futures::future::join_all(openers).await;
    Bench { ledger, _dir: dir }
}

/// Returns `n` transfers between uniform random pairs, with IDs unique to `tag`.
fn transfers(rng: &mut SmallRng, tag: u64, n: usize) -> Vec<Transfer> {
    let brl = Currency::new("BRL").expect("a valid currency");
    (0..n)
        .map(|k| {
            let from = rng.gen_range(0..ACCOUNTS);
            let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
            Transfer {
                transfer_id: MovementId::new(&format!("t{tag}-{k}")).expect("a valid id"),
                debit_account_id: account_id(from),
                credit_account_id: account_id(to),
                amount_minor: rng.gen_range(1..100),
                currency: brl,
                description_opt: None,
            }
        })
        .collect()
}

/// Returns how many of `iters` calls party `index` of `parties` makes: exactly `iters` in all,
/// so that criterion's count of elements is the true one.
fn share(iters: u64, parties: usize, index: usize) -> usize {
    let (each, rest) = (iters / parties as u64, iters % parties as u64);
    (each + u64::from((index as u64) < rest)) as usize
}

/// Returns a histogram of 1 µs to 100 s with three significant digits. Fixed bounds, because
/// `saturating_record` clamps to the current bounds instead of growing an auto-resizing one.
fn latency_histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// What every timed call added up to, warm-up included.
struct Totals {
    /// Latency of each call (a transfer, or a whole batch), µs.
    latency_us: Histogram<u64>,
    /// Transfers committed.
    num_transfers: u64,
    /// Time the calls were timed for.
    elapsed: Duration,
}

impl Totals {
    fn new() -> Totals {
        Totals {
            latency_us: latency_histogram(),
            num_transfers: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn per_s(&self) -> f64 {
        self.num_transfers as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1e3
    }
}

/// Runs `iters` single transfers spread over `CALLERS` concurrent callers (fewer when `iters`
/// is smaller, as in criterion's first warm-up calls); returns the time they took, building
/// the commands left out.
async fn single_round(
    ledger: Ledger,
    tag: u64,
    iters: u64,
    totals: Arc<Mutex<Totals>>,
) -> Duration {
    let mut rng = SmallRng::seed_from_u64(tag);
    let work: Vec<Vec<Transfer>> = (0..CALLERS)
        .map(|c| {
            let mine = share(iters, CALLERS, c);
            transfers(&mut rng, tag * CALLERS as u64 + c as u64, mine)
        })
        .collect();
    // Each caller notes its latencies in a vector allocated before the clock starts (a
    // histogram per caller would zero hundreds of KiB each inside the timed region); they go
    // into the histogram once the round is timed.
    let work: Vec<(Vec<Transfer>, Vec<u32>)> = work
        .into_iter()
        .map(|mine| {
            let latencies = Vec::with_capacity(mine.len());
            (mine, latencies)
        })
        .collect();
    let started = Instant::now();
    let callers = work.into_iter().map(|(mine, mut latencies_us)| {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            for transfer in mine {
                let sent = Instant::now();
                let posted = ledger.transfer(transfer).await;
                assert!(posted.is_ok(), "a funded transfer commits: {posted:?}");
                latencies_us.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            }
            latencies_us
        })
    });
    let latencies = futures::future::join_all(callers).await;
    let elapsed = started.elapsed();
    let mut totals = totals.lock().expect("no bench thread panicked");
    for latencies_us in latencies {
        for latency_us in latencies_us.expect("a caller does not panic") {
            totals.num_transfers += 1;
            totals.latency_us.saturating_record(u64::from(latency_us));
        }
    }
    totals.elapsed += elapsed;
    elapsed
}

/// Runs `iters` batches of `BATCH_TRANSFERS`, `BATCHES_IN_FLIGHT` at a time; returns the time
/// they took (building the commands is left out).
async fn batch_round(ledger: Ledger, tag: u64, iters: u64, totals: Arc<Mutex<Totals>>) -> Duration {
    let mut rng = SmallRng::seed_from_u64(tag);
    let work: Vec<Vec<Vec<Transfer>>> = (0..BATCHES_IN_FLIGHT)
        .map(|c| {
            (0..share(iters, BATCHES_IN_FLIGHT, c))
                .map(|b| {
                    let batch_tag = (tag * 1_000 + c as u64) * 1_000_000 + b as u64;
                    transfers(&mut rng, batch_tag, BATCH_TRANSFERS)
                })
                .collect()
        })
        .collect();
    let work: Vec<_> = work.into_iter().map(|b| (b, latency_histogram())).collect();
    let started = Instant::now();
    let clients = work.into_iter().map(|(batches, mut latency_us)| {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let mut num_committed = 0;
            for batch in batches {
                let sent = Instant::now();
                let results = ledger.transfer_batch(batch, false).await;
                latency_us.saturating_record(sent.elapsed().as_micros() as u64);
                assert!(results.iter().all(Result::is_ok), "funded transfers commit");
                num_committed += results.len() as u64;
            }
            (num_committed, latency_us)
        })
    });
    let outputs = futures::future::join_all(clients).await;
    let elapsed = started.elapsed();
    let mut totals = totals.lock().expect("no bench thread panicked");
    for output in outputs {
        let (num_committed, histogram) = output.expect("a client does not panic");
        totals.num_transfers += num_committed;
        totals.latency_us.add(histogram).expect("same bounds");
    }
    totals.elapsed += elapsed;
    elapsed
}

fn runtime() -> tokio::runtime::Runtime {
    // As `saldo serve`'s (gateway/src/main.rs): its allocator setting first (no other thread
    // allocates yet), one worker thread per core, and its memory hooks.
    gateway::memory::purge_freed_memory_late();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(gateway::memory::on_worker_idle)
        .on_thread_stop(gateway::memory::on_thread_stop)
        .thread_keep_alive(gateway::memory::BLOCKING_THREAD_KEEP_ALIVE)
        .build()
        .expect("the runtime starts")
}

/// Runs one bench of the group `inproc` on a freshly opened and funded ledger: criterion times
/// `round(ledger, tag, iters, totals)`, a future that makes `iters` calls of `elements`
/// transfers each. Returns what every call added up to, or `None` when the filter skipped it.
fn measure<Fut>(
    c: &mut Criterion,
    name: &str,
    elements: u64,
    round: impl Fn(Ledger, u64, u64, Arc<Mutex<Totals>>) -> Fut,
) -> Option<Totals>
where
    Fut: Future<Output = Duration>,
{
    let rt = runtime();
    // Opened on the first call: criterion calls the routine only when the filter selects it.
    let mut bench_opt: Option<Bench> = None;
    let totals = Arc::new(Mutex::new(Totals::new()));
    let mut tag = 0;
    let mut group = c.benchmark_group("inproc");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(elements));
    group.bench_function(name, |b| {
        let bench = bench_opt.get_or_insert_with(|| rt.block_on(open_funded()));
        b.iter_custom(|iters| {
            tag += 1;
            let ledger = bench.ledger.clone();
            rt.block_on(round(ledger, tag, iters, totals.clone()))
        });
    });
    group.finish();
    let bench = bench_opt?;
    // Where a caller's time goes: how large the group commits were and how long their
    // appends (write + fdatasync) took.
    let stats = bench.ledger.stats();
    let batches = stats.wal_batches_total.max(1);
    println!(
        "inproc_{name}_group_commits={} events_per_group={:.0} append_us_mean={:.0} snapshots={}",
        stats.wal_batches_total,
        stats.wal_events_total as f64 / batches as f64,
        stats.wal_append_latency_us_sum as f64 / batches as f64,
        stats.snapshots_total
    );
    rt.block_on(bench.ledger.shutdown());
    let totals = std::mem::replace(
        &mut *totals.lock().expect("no bench thread panicked"),
        Totals::new(),
    );
    Some(totals)
}

fn single(c: &mut Criterion) {
    let Some(totals) = measure(c, "single_1024_callers", 1, single_round) else {
        return;
    };
    println!(
        "inproc_single_tps={:.0} p99_ms={:.3} p50_ms={:.3} max_ms={:.3} transfers={}",
        totals.per_s(),
        totals.ms(0.99),
        totals.ms(0.5),
        totals.latency_us.max() as f64 / 1e3,
        totals.num_transfers
    );
}

fn batch(c: &mut Criterion) {
    let elements = BATCH_TRANSFERS as u64;
    let Some(totals) = measure(c, "batch_8189", elements, batch_round) else {
        return;
    };
    println!(
        "inproc_batch8189_tps={:.0} batch_p99_ms={:.3} transfers={}",
        totals.per_s(),
        totals.ms(0.99),
        totals.num_transfers
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(3))
        .measurement_time(Duration::from_secs(20));
    targets = single, batch
}
criterion_main!(benches);
