//! A snapshot's CPU work under criterion, without I/O: what the snapshot thread of a node does
//! for one shard (`recovery::write_snapshot`) between reading the previous snapshot and
//! writing the new one. Decode the previous snapshot, fold the stream's tail onto it and
//! encode the result.
//!
//! The shard is the in-process bench's (`inproc`) after a long run: 100,000 accounts with full
//! 100-row histories and 2,000,000 transfers in the snapshot, then a tail of 1,000,000 more
//! (the count that makes a shard due, `snapshot_every_events`). Set-up takes about a minute.
//!
//! `cargo bench -p saldo-benches --bench snapshot`

/// The same allocator as the `saldo` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use saldo_engine::{event::Event, state::ShardState, *};
use saldo_persistence::record::{self, Record};

/// Accounts of the shard.
const ACCOUNTS: usize = 100_000;
/// History rows kept per account (`saldo serve`'s default).
const WINDOW: usize = 100;
/// Transfers the previous snapshot holds.
const IN_SNAPSHOT: usize = 2_000_000;
/// Transfers of the tail the snapshot folds.
const TAIL: usize = 1_000_000;
/// Events per stream record (a busy group commit's).
const EVENTS_PER_RECORD: usize = 1_000;

fn account_id(i: usize) -> AccountId {
    AccountId::new(&format!("acct-{i}")).expect("a valid account id")
}

/// Cuts `events` into chained records after `(lsn, hash)`.
fn records(events: &[Event], lsn: &mut u64, hash: &mut [u8; 32]) -> Vec<Record> {
    events
        .chunks(EVENTS_PER_RECORD)
        .map(|chunk| {
            let mut payload = Vec::new();
            for ev in chunk {
                event::encode_into(ev, &mut payload);
            }
            let first = *lsn + 1;
            let last = *lsn + chunk.len() as u64;
            let encoded = record::encode(0, 1, first, last, hash, &payload);
            let (rec, _) = record::decode(&encoded.bytes).expect("a record just encoded");
            (*lsn, *hash) = (last, rec.hash);
            rec
        })
        .collect()
}

/// Returns the previous snapshot's bytes and the tail after it.
fn setup() -> (Vec<u8>, Vec<Record>) {
    let brl = Currency::new("BRL").expect("a valid currency");
    let mut events = Vec::with_capacity(2 * ACCOUNTS);
    for i in 0..ACCOUNTS {
        events.push(Event::AccountOpened {
            cmd: OpenAccount {
                account_id: account_id(i),
                currency: brl,
                overdraft_limit_minor: 0,
                metadata_opt: None,
            },
            at: Timestamp(1),
        });
    }
    let mut rng = SmallRng::seed_from_u64(14);
    let mut transfers = |from_n: usize, n: usize| -> Vec<Event> {
        (from_n..from_n + n)
            .map(|k| {
                let from = rng.gen_range(0..ACCOUNTS);
                let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
                Event::TransferPosted {
                    transfer: Transfer {
                        transfer_id: MovementId::new(&format!("t{k}")).expect("a valid id"),
                        debit_account_id: account_id(from),
                        credit_account_id: account_id(to),
                        amount_minor: 1,
                        currency: brl,
                        description_opt: None,
                    },
                    at: Timestamp(2 + k as u64),
                }
            })
            .collect()
    };
    // Every account may overdraw: the transfers are uniform and need no funding.
    for ev in &mut events {
        if let Event::AccountOpened { cmd, .. } = ev {
            cmd.overdraft_limit_minor = i64::MAX / 2;
        }
    }
    events.extend(transfers(0, IN_SNAPSHOT));
    let (mut lsn, mut hash) = (0, [0; 32]);
    let head = records(&events, &mut lsn, &mut hash);
    let mut state = ShardState::empty(0, WINDOW);
    state.fold_verifying(&head).expect("the head folds");
    let snapshot = state.encode();
    drop(state);
    let tail = records(&transfers(IN_SNAPSHOT, TAIL), &mut lsn, &mut hash);
    (snapshot, tail)
}

/// CPU time the process has used, all threads (what a snapshot takes from the request path
/// on a machine whose cores are not independent; see docs/engine.md).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "the process CPU clock reads");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn snapshot(c: &mut Criterion) {
    let (snapshot, tail) = setup();
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(40));
    group.throughput(Throughput::Elements(TAIL as u64));
    group.bench_function("decode_fold_1m_encode", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let bytes = bytes::Bytes::from(snapshot.clone());
                let started = Instant::now();
                let cpu_started = process_cpu();
                let mut state =
                    ShardState::decode_with_room(bytes, TAIL).expect("the snapshot decodes");
                let (decoded, cpu_decoded) = (started.elapsed(), process_cpu());
                state.fold_verifying(&tail).expect("the tail folds");
                let (folded, cpu_folded) = (started.elapsed(), process_cpu());
                // As the snapshot thread does: the parts go to the store as they are.
                let parts = state.encode_parts();
                let out_len: usize = parts.iter().map(Vec::len).sum();
                took += started.elapsed();
                eprintln!(
                    "snapshot phases (wall, cpu of all threads): decode {:?} {:?} fold {:?} {:?} \
                     encode {:?} {:?} ({} bytes)",
                    decoded,
                    cpu_decoded - cpu_started,
                    folded - decoded,
                    cpu_folded - cpu_decoded,
                    started.elapsed() - folded,
                    process_cpu() - cpu_folded,
                    out_len
                );
                assert!(out_len > snapshot.len());
                drop((state, parts));
            }
            took
        })
    });
    group.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
