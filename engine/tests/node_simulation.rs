//! The node under simulation: the real `Ledger` (its shards and their turns, group commit, the
//! coordinator that carries a transfer from shard to shard, the idempotency table, recovery)
//! over the real file stream, whose appends complete only when the simulation says so, and
//! crashes at random steps.
//!
//! Each life of the node runs on a current-thread runtime with paused time, so one seed is one
//! schedule. A step starts a client request (a transfer, an entry, a retry of an earlier ID
//! with the same or another body), completes one pending append (the record becomes durable) or fails it,
//! or a batch (independent or atomic), delivers one of the phase messages in flight between
//! shards (any of them: out of order, also between one pair of shards), lets time pass, or
//! crashes the node: the runtime is dropped with everything in flight (phase messages
//! included), and only the records the simulation completed survive; an append on its way may
//! leave a torn record (a prefix of its bytes where it would have gone), which the next
//! life's stream must find and drop on opening. The next life opens the node on them.
//! After every opening (recovery done, nothing in flight) the rules of the money are checked
//! against what clients were told:
//! - I1: the balances add up to the committed entries, and no hold is left open;
//! - I2: every answered outcome is there, unchanged;
//! - I3: on the durable streams, every ID is decided by one record at most, and a retry gets
//!   the original outcome or a conflict;
//! - I4: no balance below its allowance;
//! - a write refused by a node whose stream failed did nothing.
//!
//! `engine/tests/simulation.rs` explores the protocol's pure parts over more schedules (lost
//! tails per shard); this one runs the node's own code.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use rand::{rngs::SmallRng, Rng, SeedableRng};
use saldo_engine::*;
use saldo_persistence::{
    record::EncodedRecord,
    snapshot::memory::MemorySnapshotStore,
    wal::{local_file::LocalFileWal, Tail},
    Lsn, Record, Wal, WalError,
};

const NUM_SHARDS: u32 = 4;
const NUM_ACCOUNTS: usize = 8;
const FUNDING_MINOR: i64 = 5_000;
/// The one account allowed below zero, and by how much.
const OVERDRAFT_MINOR: i64 = 1_000;
const SEEDS_FROM: u64 = 0x70de;
const SEEDS: u64 = 300;
const STEPS: usize = 600;

/// Bytes of a segment of the simulated file stream: small, so that segments roll over.
const SEGMENT_BYTES: u64 = 4 * 1024;

/// What the completed records of each shard took, in order: first LSN and bytes.
type Written = Arc<Mutex<HashMap<u32, Vec<(Lsn, u64)>>>>;

/// A stream whose appends wait until the simulation completes them. Completed records are
/// the durable ones: they are written to the real file stream (`LocalFileWal`, in a directory
/// of the seed's, without fsync), and everything else dies with a crash. A crash may also
/// tear an append that was on its way: a prefix of its bytes lands where it would have been
/// written, and the next life's stream finds it on opening (its reader rule).
#[derive(Clone)]
struct SimWal {
    durable: Arc<Mutex<Option<Arc<LocalFileWal>>>>,
    /// Where the stream lives, and what the completed records of each shard took (first LSN
    /// and bytes, in order): where the next record of a shard would be written.
    dir: Arc<std::path::Path>,
    written: Written,
    pending: Arc<Mutex<Vec<Pending>>>,
}

struct Pending {
    shard: u32,
    record: EncodedRecord,
    /// `Ok`: durable; `Err`: the append failed (nothing written).
    done: tokio::sync::oneshot::Sender<Result<(), ()>>,
}

/// Records torn by a crash, in all lives of all seeds (the summary shows that it happens).
static TORN: AtomicU64 = AtomicU64::new(0);

impl SimWal {
    /// Opens the stream in `dir` for a new life of the node (`written`: what earlier lives
    /// wrote there).
    fn open(dir: &std::path::Path, written: &Written) -> SimWal {
        SimWal {
            durable: Arc::new(Mutex::new(Some(Arc::new(
                LocalFileWal::open_with_segment_bytes(dir, false, SEGMENT_BYTES).unwrap(),
            )))),
            dir: dir.into(),
            written: written.clone(),
            pending: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The file stream of this life (until its crash).
    fn file(&self) -> Arc<LocalFileWal> {
        self.durable
            .lock()
            .unwrap()
            .clone()
            .expect("the stream is used before its crash")
    }

    /// Makes one pending append durable (the `pick`-th modulo their number), or fails it
    /// (`fail`: nothing is written); false when none is pending.
    async fn complete(&self, pick: usize, fail: bool) -> bool {
        let next_opt = {
            let mut pending = self.pending.lock().unwrap();
            (!pending.is_empty()).then(|| {
                let n = pending.len();
                pending.remove(pick % n)
            })
        };
        let Some(p) = next_opt else {
            return false;
        };
        if fail {
            let _ = p.done.send(Err(()));
            return true;
        }
        let (first_lsn, len) = (p.record.first_lsn, p.record.bytes.len() as u64);
        // Written here, the runtime waiting: the schedule does not depend on the writer's
        // thread.
        futures::executor::block_on(self.file().append(p.shard, p.record)).unwrap();
        let mut written = self.written.lock().unwrap();
        written.entry(p.shard).or_default().push((first_lsn, len));
        let _ = p.done.send(Ok(()));
        true
    }

    /// The crash, once the node's runtime is gone: the stream is closed (its writers
    /// stopped), and each append still on its way is lost whole or, half the time, torn: a
    /// prefix of its bytes is written where the record would have gone. (One append at most
    /// is on its way per shard: a shard writes one record at a time.)
    fn crash(&self, rng: &mut SmallRng) {
        let file = self
            .durable
            .lock()
            .unwrap()
            .take()
            .expect("one crash per life");
        assert!(
            Arc::into_inner(file).is_some(),
            "nothing of the crashed node holds its stream"
        );
        for p in self.pending.lock().unwrap().drain(..) {
            if rng.gen_bool(0.5) {
                let torn = rng.gen_range(1..p.record.bytes.len());
                if self.tear(p.shard, &p.record.bytes, torn) {
                    TORN.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Writes the first `torn` bytes of `record` where shard `shard`'s writer would have
    /// written it: after the last record of the newest segment. False (nothing written) when
    /// the record would start a new segment.
    fn tear(&self, shard: u32, record: &[u8], torn: usize) -> bool {
        use std::os::unix::fs::FileExt;
        let shard_dir = self.dir.join(format!("shard-{shard:05}"));
        let newest_opt = std::fs::read_dir(&shard_dir)
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse::<Lsn>().ok()
            })
            .max();
        let Some(segment_first_lsn) = newest_opt else {
            return false;
        };
        let end: u64 = self.written.lock().unwrap()[&shard]
            .iter()
            .filter(|(first_lsn, _)| *first_lsn >= segment_first_lsn)
            .map(|(_, len)| len)
            .sum();
        if end + record.len() as u64 > SEGMENT_BYTES {
            return false;
        }
        let path = shard_dir.join(format!("{segment_first_lsn:020}.seg"));
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(&record[..torn], end).unwrap();
        true
    }

    /// Every durable record of a shard.
    async fn read_all(&self, shard: u32) -> Vec<Record> {
        let mut out: Vec<Record> = Vec::new();
        loop {
            let after = out.last().map_or(0, |r| r.last_lsn);
            let more = self.file().read(shard, after, usize::MAX).await.unwrap();
            if more.is_empty() {
                return out;
            }
            out.extend(more);
        }
    }
}

#[async_trait::async_trait]
impl Wal for SimWal {
    async fn append(&self, shard: u32, record: EncodedRecord) -> Result<(), WalError> {
        let (done, completed) = tokio::sync::oneshot::channel();
        self.pending.lock().unwrap().push(Pending {
            shard,
            record,
            done,
        });
        match completed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(())) => Err(WalError::Unavailable(Box::new(std::io::Error::other(
                "simulated write failure",
            )))),
            // The simulation crashed the node: this append never completes.
            Err(_) => std::future::pending().await,
        }
    }
    async fn tail(&self, shard: u32) -> Result<Option<Tail>, WalError> {
        self.file().tail(shard).await
    }
    async fn read(
        &self,
        shard: u32,
        after_lsn: Lsn,
        max_records: usize,
    ) -> Result<Vec<Record>, WalError> {
        self.file().read(shard, after_lsn, max_records).await
    }
    async fn prune(&self, shard: u32, lsn: Lsn) -> Result<(), WalError> {
        self.file().prune(shard, lsn).await
    }
    async fn claim_shard_count(&self, num_shards: u32) -> Result<(), WalError> {
        self.file().claim_shard_count(num_shards).await
    }
    async fn recorded_shard_count(&self) -> Result<Option<u32>, WalError> {
        self.file().recorded_shard_count().await
    }
    fn describe(&self) -> String {
        "simulated".into()
    }
}

/// The messages between shards, held until the simulation delivers them (a [`Courier`] that
/// carries them here). A crash drops them with the rest of the node.
#[derive(Clone, Default)]
struct SimNet {
    in_flight: Arc<Mutex<Vec<Parcel>>>,
}

/// Messages delivered, and how many of them overtook an older one still in flight (all lives
/// of all seeds: the summary shows that reordering happens).
static DELIVERED: AtomicU64 = AtomicU64::new(0);
static OVERTOOK: AtomicU64 = AtomicU64::new(0);

impl SimNet {
    fn courier(&self) -> Courier {
        let in_flight = self.in_flight.clone();
        Courier::new(move |_to, parcel| in_flight.lock().unwrap().push(parcel))
    }

    /// Delivers one message in flight (the `pick`-th modulo their number); false when none is.
    fn deliver(&self, pick: usize) -> bool {
        let parcel_opt = {
            let mut in_flight = self.in_flight.lock().unwrap();
            (!in_flight.is_empty()).then(|| {
                let n = in_flight.len();
                DELIVERED.fetch_add(1, Ordering::Relaxed);
                let at = pick % n;
                if at > 0 {
                    OVERTOOK.fetch_add(1, Ordering::Relaxed);
                }
                // In order of sending, but for the one picked.
                in_flight.remove(at)
            })
        };
        parcel_opt.map(Parcel::deliver).is_some()
    }
}

/// The node's world: its stream and the network between its shards.
struct World {
    wal: SimWal,
    net: SimNet,
}

fn config(net: &SimNet) -> EngineConfig {
    EngineConfig {
        num_shards: NUM_SHARDS,
        node_epoch: 1,
        movements_window: 4,
        in_flight_max: 1_000,
        group_commit_linger_us: 0,
        // No snapshots: their threads would make a schedule depend on the machine.
        snapshot_every_events: 0,
        snapshot_interval_ms: 0,
        snapshots_keep: 2,
        clock: Clock::manual(Timestamp(1_800_000_000_000_000)).0,
        courier: net.courier(),
    }
}

fn account(i: usize) -> AccountId {
    AccountId::new(&format!("acct-{i}")).unwrap()
}

fn brl() -> Currency {
    Currency::new("BRL").unwrap()
}

fn id_of(body: &MovementBody) -> &MovementId {
    match body {
        MovementBody::Transfer(t) => &t.transfer_id,
        MovementBody::Entry(e) => &e.entry_id,
    }
}

/// What clients were told, and what they sent.
#[derive(Default)]
struct Model {
    /// Every ID answered with an outcome: its body and whether it committed.
    answered: HashMap<MovementId, (MovementBody, bool)>,
    /// Every request sent (for retries), in order.
    sent: Vec<MovementBody>,
    /// Every entry ID sent (its outcome is read back for conservation).
    entries: Vec<MovementId>,
    /// IDs refused by a node whose stream had failed (fail-stop): they must not take effect.
    refused: Vec<MovementId>,
    next_id: u64,
}

/// Each answer, with whether its request had a new ID and was sent to a node whose stream
/// had failed.
type Answers = Arc<Mutex<Vec<(MovementBody, Result<Posted, LedgerError>, bool)>>>;

impl Model {
    /// Takes in the answers clients got since the last call, checking each retry against
    /// the outcome answered before.
    fn take_answers(&mut self, answers: &Answers, seed: u64) {
        for (body, answer, after_failure) in answers.lock().unwrap().drain(..) {
            let id = id_of(&body).clone();
            if after_failure {
                assert!(
                    matches!(answer, Err(LedgerError::Unavailable { .. })),
                    "seed {seed}: {id} sent after a stream failure got {answer:?}"
                );
                self.refused.push(id);
                continue;
            }
            let outcome = match &answer {
                Ok(posted) => Some(posted.movement.status == MovementStatus::Committed),
                // (Against an answered body, or one still pending.)
                Err(LedgerError::Rejected(Rejection::IdConflict { .. })) => {
                    if let Some((first, _)) = self.answered.get(&id) {
                        assert_ne!(first, &body, "seed {seed}: {id} conflicts with itself");
                    }
                    None
                }
                // An atomic batch that reuses a known ID applies nothing new and records
                // nothing for its other IDs: they stay free (`transfer_batch_atomic`).
                Err(LedgerError::Rejected(Rejection::BatchAborted)) => None,
                Err(LedgerError::Rejected(_)) => Some(false),
                // Unknown: a retry by ID finds out.
                Err(_) => None,
            };
            let Some(committed) = outcome else { continue };
            match self.answered.get(&id) {
                Some((first, was)) => {
                    assert_eq!(first, &body, "seed {seed}: {id} answered for another body");
                    assert_eq!(
                        *was, committed,
                        "seed {seed}: I3 {id} answered twice, differently"
                    );
                }
                None => {
                    self.answered.insert(id, (body, committed));
                }
            }
        }
    }

    /// A new request, or a retry of an earlier one (the same body, or another under its ID);
    /// true for a new one.
    fn request(&mut self, rng: &mut SmallRng) -> (MovementBody, bool) {
        if !self.sent.is_empty() && rng.gen_bool(0.2) {
            let mut body = self.sent[rng.gen_range(0..self.sent.len())].clone();
            if rng.gen_bool(0.3) {
                match &mut body {
                    MovementBody::Transfer(t) => t.amount_minor += 1,
                    MovementBody::Entry(e) => e.amount_minor += 1,
                }
            }
            return (body, false);
        }
        self.next_id += 1;
        let n = self.next_id;
        let body = if rng.gen_bool(0.2) {
            let entry_id = MovementId::new(&format!("e-{n}")).unwrap();
            self.entries.push(entry_id.clone());
            MovementBody::Entry(Entry {
                entry_id,
                account_id: account(rng.gen_range(0..NUM_ACCOUNTS)),
                kind: if rng.gen_bool(0.5) {
                    EntryKind::Credit
                } else {
                    EntryKind::Debit
                },
                amount_minor: rng.gen_range(1..2_000),
                description_opt: None,
            })
        } else {
            let from = rng.gen_range(0..NUM_ACCOUNTS);
            let to = (from + rng.gen_range(1..NUM_ACCOUNTS)) % NUM_ACCOUNTS;
            let credit_account_id = if rng.gen_bool(0.05) {
                AccountId::new("acct-nobody").unwrap()
            } else {
                account(to)
            };
            MovementBody::Transfer(Transfer {
                transfer_id: MovementId::new(&format!("t-{n}")).unwrap(),
                debit_account_id: account(from),
                credit_account_id,
                amount_minor: rng.gen_range(1..3_000),
                currency: brl(),
                description_opt: None,
            })
        };
        self.sent.push(body.clone());
        (body, true)
    }
}

/// Runs `fut` while completing every pending append and delivering every message in flight
/// (nothing crashes meanwhile).
async fn settled<F: std::future::Future>(world: &World, fut: F) -> F::Output {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            () = tokio::time::sleep(Duration::from_micros(100)) => {
                while world.wal.complete(0, false).await {}
                while world.net.deliver(0) {}
            }
        }
    }
}

/// Sends a request from a client task of its own; its answer goes to `answers`. `fresh`: its
/// ID was never sent before.
fn send(ledger: &Ledger, (body, fresh): (MovementBody, bool), answers: &Answers) {
    let (ledger, answers) = (ledger.clone(), answers.clone());
    let after_failure = fresh && !ledger.failed_shards().is_empty();
    tokio::spawn(async move {
        let answer = match &body {
            MovementBody::Transfer(t) => ledger.transfer(t.clone()).await,
            MovementBody::Entry(e) => ledger.post_entry(e.clone()).await,
        };
        answers.lock().unwrap().push((body, answer, after_failure));
    });
}

/// Sends a batch from a client task of its own; each transfer's answer goes to `answers`.
/// An atomic batch must be all or nothing.
fn send_batch(ledger: &Ledger, transfers: Vec<Transfer>, atomic: bool, answers: &Answers) {
    let (ledger, answers) = (ledger.clone(), answers.clone());
    tokio::spawn(async move {
        let results = ledger.transfer_batch(transfers.clone(), atomic).await;
        if atomic {
            let committed = results
                .iter()
                .filter(|r| r.as_ref().is_ok_and(|p| !p.replayed))
                .count();
            assert!(
                committed == 0 || committed == transfers.len(),
                "an atomic batch half committed: {results:?}"
            );
        }
        let mut answers = answers.lock().unwrap();
        for (t, r) in transfers.into_iter().zip(results) {
            answers.push((MovementBody::Transfer(t), r, false));
        }
    });
}

/// Checks the rules of the money on a node just opened (recovery done, nothing in flight).
async fn check_rules(ledger: &Ledger, world: &World, model: &mut Model, seed: u64) {
    // What a failed node refused did nothing (a retry runs it anew in a later life).
    for id in std::mem::take(&mut model.refused) {
        let found = settled(world, ledger.movement(&id)).await;
        assert!(
            matches!(found, Err(LedgerError::Rejected(_))),
            "seed {seed}: {id}, refused after a stream failure, took effect: {found:?}"
        );
    }
    // I2: every answered outcome is there, unchanged.
    for (id, (body, committed)) in &model.answered {
        let view = settled(world, ledger.movement(id))
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: I2 answered {id} lost: {e}"));
        assert_eq!(&view.body, body, "seed {seed}: I2 {id} changed body");
        assert_eq!(
            view.status == MovementStatus::Committed,
            *committed,
            "seed {seed}: I2 {id} changed outcome: {view:?}"
        );
    }
    // I1 and I4.
    let mut external = 0i64;
    for id in &model.entries {
        if let Ok(view) = settled(world, ledger.movement(id)).await {
            if let (MovementStatus::Committed, MovementBody::Entry(e)) = (&view.status, &view.body)
            {
                external += match e.kind {
                    EntryKind::Credit => e.amount_minor,
                    EntryKind::Debit => -e.amount_minor,
                };
            }
        }
    }
    let mut total = 0i64;
    for i in 0..NUM_ACCOUNTS {
        let view = settled(world, ledger.account(&account(i))).await.unwrap();
        assert_eq!(view.held_minor, 0, "seed {seed}: a hold left open on {i}");
        let allowed = if i == 0 { OVERDRAFT_MINOR } else { 0 };
        assert!(
            view.balance_minor >= -allowed,
            "seed {seed}: I4 account {i} at {}",
            view.balance_minor
        );
        total += view.balance_minor;
    }
    assert_eq!(
        total,
        external + FUNDING_MINOR * NUM_ACCOUNTS as i64,
        "seed {seed}: I1 conservation"
    );
    // I3 on the durable streams: one deciding record per ID at most.
    let mut decided: HashMap<MovementId, u32> = HashMap::new();
    for shard in 0..NUM_SHARDS {
        for rec in world.wal.read_all(shard).await {
            for ev in event::decode_all(&rec.payload).unwrap() {
                let Some(id) = ev.decided_id() else { continue };
                if let Some(first) = decided.insert(id.clone(), shard) {
                    panic!("seed {seed}: I3 {id} decided twice (shards {first} and {shard})");
                }
            }
        }
    }
}

/// One seed: lives of the node until `steps` steps ran, each ended by a crash, then a last
/// opening and its checks.
fn run_seed(seed: u64, steps: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    // The file stream's reads run here, not on a blocking pool: one thread, one schedule.
    saldo_persistence::blocking::do_blocking_work_here();
    let dir = tempfile::tempdir().unwrap();
    let written = Arc::default();
    let snapshots = MemorySnapshotStore::new();
    let mut model = Model::default();
    let mut step = 0;
    let mut life = 0;
    loop {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let world = World {
            wal: SimWal::open(dir.path(), &written),
            net: SimNet::default(),
        };
        let last = step >= steps;
        rt.block_on(async {
            let ledger = settled(
                &world,
                Ledger::open(
                    config(&world.net),
                    Arc::new(world.wal.clone()),
                    Arc::new(snapshots.clone()),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: life {life} does not open: {e}"));
            if life == 0 {
                for i in 0..NUM_ACCOUNTS {
                    let cmd = OpenAccount {
                        account_id: account(i),
                        currency: brl(),
                        overdraft_limit_minor: if i == 0 { OVERDRAFT_MINOR } else { 0 },
                        metadata_opt: None,
                    };
                    settled(&world, ledger.open_account(cmd)).await.unwrap();
                    let funding = Entry {
                        entry_id: MovementId::new(&format!("fund-{i}")).unwrap(),
                        account_id: account(i),
                        kind: EntryKind::Credit,
                        amount_minor: FUNDING_MINOR,
                        description_opt: None,
                    };
                    settled(&world, ledger.post_entry(funding)).await.unwrap();
                }
            }
            check_rules(&ledger, &world, &mut model, seed).await;
            if last {
                return;
            }
            let answers: Answers = Arc::default();
            loop {
                step += 1;
                match rng.gen_range(0..100) {
                    0..=29 => send(&ledger, model.request(&mut rng), &answers),
                    30..=34 => {
                        // (An ID twice in one batch is a malformed batch: not sent here.)
                        let mut transfers: Vec<Transfer> = Vec::new();
                        for _ in 0..rng.gen_range(2..6) {
                            if let (MovementBody::Transfer(t), _) = model.request(&mut rng) {
                                if transfers.iter().all(|u| u.transfer_id != t.transfer_id) {
                                    transfers.push(t);
                                }
                            }
                        }
                        send_batch(&ledger, transfers, rng.gen_bool(0.5), &answers);
                    }
                    35..=64 => {
                        world
                            .wal
                            .complete(rng.gen(), rng.gen_range(0..100) < 2)
                            .await;
                    }
                    65..=74 => {
                        world.net.deliver(rng.gen());
                    }
                    75..=96 => {
                        tokio::time::sleep(Duration::from_micros(rng.gen_range(1..3_000))).await
                    }
                    _ => {}
                }
                // Let the tasks run up to their next wait.
                for _ in 0..rng.gen_range(0..8) {
                    tokio::task::yield_now().await;
                }
                model.take_answers(&answers, seed);
                // A failed stream: the node waits for its restart (fail-stop).
                let failed = !ledger.failed_shards().is_empty();
                if step >= steps || rng.gen_range(0..100) < if failed { 30 } else { 3 } {
                    break;
                }
            }
        });
        // The crash: every task dies where it stands; only completed appends survive, and an
        // append on its way may leave a torn record.
        rt.shutdown_background();
        world.wal.crash(&mut rng);
        if last {
            let committed = model.answered.values().filter(|(_, c)| *c).count();
            let segments: usize = (0..NUM_SHARDS)
                .map(|shard| {
                    let shard_dir = dir.path().join(format!("shard-{shard:05}"));
                    std::fs::read_dir(shard_dir).map_or(0, |d| d.count())
                })
                .sum();
            eprintln!(
                "seed {seed}: {life} crashes, {} requests, {} answered ({committed} committed), \
                 {segments} stream files",
                model.sent.len(),
                model.answered.len()
            );
            return;
        }
        life += 1;
    }
}

#[test]
fn the_node_keeps_the_rules_of_the_money_through_random_crashes() {
    if let Ok(seed) = std::env::var("NODE_SIM_SEED") {
        run_seed(seed.parse().expect("NODE_SIM_SEED: a number"), STEPS);
        return;
    }
    // The seeds spread over the cores (each seed is one thread's schedule).
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for seed in (SEEDS_FROM..SEEDS_FROM + SEEDS).filter(|seed| seed % threads == t) {
                    run_seed(seed, STEPS);
                }
            });
        }
    });
    let (delivered, overtook) = (
        DELIVERED.load(Ordering::Relaxed),
        OVERTOOK.load(Ordering::Relaxed),
    );
    let torn = TORN.load(Ordering::Relaxed);
    eprintln!(
        "{delivered} phase messages delivered, {overtook} of them ahead of an older one; \
         {torn} records torn by a crash"
    );
    assert!(
        overtook > SEEDS,
        "the schedules hardly reorder messages between shards: {overtook} of {delivered}"
    );
    assert!(
        torn > SEEDS,
        "the crashes hardly tear a record: {torn} over {SEEDS} seeds"
    );
}
