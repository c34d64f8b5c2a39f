//! End to end on the AWS backends (issue #6): the `saldo` binary on a Kinesis stream and a
//! DynamoDB table served by local emulators (kinesalite, DynamoDB Local, started by
//! `saldo_persistence::emulators`), killed with SIGKILL under load and restarted, followed by
//! `saldo snapshotter`, restored at a stream position with `saldo shard restore`, verified with
//! `saldo shard verify`, and riding through throttling and lost answers injected by a
//! `FaultProxy` between the node and kinesalite.
//!
//! The money is checked exactly, not only summed: after every ID has a definite outcome
//! (acknowledged, or resolved by reading it back and retrying it), each account's balance must
//! equal its credits plus the committed transfers in minus the committed transfers out — a
//! transfer lost, or applied twice, shows up as a difference.
//!
//! Every child process is held by a [`Proc`] guard that kills it (by its handle) on drop, so a
//! failing assertion leaves nothing running; the emulators are shared by the tests that run at
//! the same time and stop when the last one ends.

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, Weak,
    },
    time::{Duration, Instant},
};

use saldo_persistence::{
    emulators::Emulator,
    faultproxy::{FaultPlan, FaultProxy},
};
use serde_json::{json, Value};

/// Shards of every cluster in this file.
const SHARDS: u32 = 4;
/// How long a node may take to log its address and then to answer `/readyz` 200.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a `saldo shard …` command may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long pending transfers and holds may take to settle after a restart.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the snapshotter may take to catch up once the load stopped.
const SNAPSHOTTER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the first node-side snapshot while faults are injected: the fold reads the stream
/// through the faulty proxy, and its retries back off up to 2 s each.
const NODE_SNAPSHOT_UNDER_FAULTS_TIMEOUT: Duration = Duration::from_secs(60);
/// Log lines kept per child (the newest are shown when a test fails).
const LOG_LINES_MAX: usize = 5_000;
/// Concurrent tasks checking transfers after a restart.
const CHECK_TASKS: usize = 8;

// ---------------------------------------------------------------------------------------------
// Emulators, shared by the tests running at the same time.

struct Emulators {
    kinesis: Emulator,
    dynamodb: Emulator,
}

static EMULATORS: Mutex<Weak<Emulators>> = Mutex::new(Weak::new());

/// Returns the running emulators, starting them when no test holds them.
/// The tests that run a node under load take turns: on two cores, three nodes, a snapshotter
/// and their load generators at once starve each other past the tests' bounded waits.
static UNDER_LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn emulators() -> Arc<Emulators> {
    let mut slot = EMULATORS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(running) = slot.upgrade() {
        return running;
    }
    let kinesis = std::thread::spawn(Emulator::kinesis);
    let dynamodb = Emulator::dynamodb();
    let kinesis = kinesis.join().expect("kinesalite starts");
    let running = Arc::new(Emulators { kinesis, dynamodb });
    *slot = Arc::downgrade(&running);
    running
}

/// Resource names unique to one test of one run.
fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!("saldo-{test}-{}-{nanos}", std::process::id())
}

/// Where a cluster keeps its stream and snapshots.
#[derive(Clone)]
struct Store {
    stream: String,
    kinesis_endpoint: String,
    /// `None`: snapshots in `<data-dir>/snapshots`.
    dynamodb: Option<(String, String)>,
}

impl Store {
    /// A Kinesis stream and a DynamoDB table, both named `name`, on the emulators.
    fn on(emu: &Emulators, name: &str) -> Store {
        Store {
            stream: name.to_owned(),
            kinesis_endpoint: emu.kinesis.endpoint().to_owned(),
            dynamodb: Some((name.to_owned(), emu.dynamodb.endpoint().to_owned())),
        }
    }

    /// The storage flags (every subcommand takes the same).
    fn flags(&self) -> Vec<String> {
        self.flags_with_shards(SHARDS)
    }

    /// The storage flags with another shard count than the file's [`SHARDS`].
    fn flags_with_shards(&self, shards: u32) -> Vec<String> {
        let mut f = vec![
            "--shards".into(),
            shards.to_string(),
            // Also in AWS_REGION: without the flag, an endpoint override makes saldo build
            // aws-config's default region chain, which panics (see
            // `a_region_from_the_environment_works_with_an_emulator_endpoint`).
            "--aws-region".into(),
            "us-east-1".into(),
            "--wal".into(),
            "kinesis".into(),
            "--kinesis-stream".into(),
            self.stream.clone(),
            "--kinesis-endpoint".into(),
            self.kinesis_endpoint.clone(),
        ];
        match &self.dynamodb {
            Some((table, endpoint)) => f.extend([
                "--snapshot-store".into(),
                "dynamodb".into(),
                "--dynamodb-table".into(),
                table.clone(),
                "--dynamodb-endpoint".into(),
                endpoint.clone(),
            ]),
            None => f.extend(["--snapshot-store".into(), "dir".into()]),
        }
        f
    }

    /// The same store reached through another Kinesis endpoint.
    fn via(&self, kinesis_endpoint: &str) -> Store {
        Store {
            kinesis_endpoint: kinesis_endpoint.to_owned(),
            ..self.clone()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// A child process killed (SIGKILL, by its handle) and reaped on drop; its stderr is kept.
struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    listening: mpsc::Receiver<String>,
}

/// The `saldo` binary with the AWS settings the emulators accept.
fn saldo(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_saldo"));
    c.args(args)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "saldotest")
        .env("AWS_SECRET_ACCESS_KEY", "saldotest")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("RUST_LOG");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SALDO_") {
            c.env_remove(key);
        }
    }
    c
}

impl Proc {
    fn spawn(name: &str, args: &[String]) -> Proc {
        let mut child = saldo(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: saldo does not start: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, listening) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    let message = event["fields"]["message"].as_str().unwrap_or("");
                    if let (true, Some(addr)) = (
                        message.contains("listening"),
                        event["fields"]["listen"].as_str(),
                    ) {
                        let _ = tx.send(addr.to_owned());
                    }
                }
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                if log.len() >= LOG_LINES_MAX {
                    log.remove(0);
                }
                log.push(line);
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            log,
            listening,
        }
    }

    /// The newest `n` lines of its stderr.
    fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let from = log.len().saturating_sub(n);
        format!(
            "--- {} stderr (last {n} lines) ---\n{}",
            self.name,
            log[from..].join("\n")
        )
    }

    fn log_contains(&self, needle: &str) -> bool {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().any(|l| l.contains(needle))
    }

    /// Panics with its log when it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited: {status}\n{}", self.name, self.log_tail(60));
        }
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; waits (bounded) for the exit, SIGKILL when it does not come.
    async fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {}", self.name);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(40));
        }
    }
}

/// A running node.
struct Node {
    proc: Proc,
    base: String,
}

/// The arguments of `saldo serve` on 127.0.0.1:0 with JSON logs, `flags` and `extra`.
fn serve_args(flags: Vec<String>, data_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--log-format".into(),
        "json".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    args.extend(flags);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts `saldo serve` on 127.0.0.1:0 and waits until `/readyz` answers 200.
async fn start_node(name: &str, store: &Store, data_dir: &Path, extra: &[&str]) -> Node {
    start_serve(name, serve_args(store.flags(), data_dir, extra)).await
}

/// Starts `saldo ARGS` (a `serve`) and waits until `/readyz` answers 200.
async fn start_serve(name: &str, args: Vec<String>) -> Node {
    let mut proc = Proc::spawn(name, &args);
    let deadline = Instant::now() + NODE_START_TIMEOUT;
    let addr = loop {
        match proc.listening.try_recv() {
            Ok(addr) => break addr,
            Err(mpsc::TryRecvError::Disconnected) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                proc.assert_running();
                panic!(
                    "{name} closed its log before listening\n{}",
                    proc.log_tail(60)
                );
            }
            Err(mpsc::TryRecvError::Empty) => {}
        }
        proc.assert_running();
        assert!(
            Instant::now() < deadline,
            "{name} did not log its address in {NODE_START_TIMEOUT:?}\n{}",
            proc.log_tail(60)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        proc.assert_running();
        assert!(
            Instant::now() < deadline,
            "{name} not ready in {NODE_START_TIMEOUT:?}\n{}",
            proc.log_tail(60)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Node { proc, base }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The output of a finished `saldo shard …`.
struct ToolOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl ToolOutput {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\nstdout: {}\nstderr: {}",
            self.status, self.stdout, self.stderr
        )
    }

    /// The last stdout line as JSON.
    fn json(&self) -> Value {
        let line = self.stdout.lines().last().unwrap_or("");
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.describe()))
    }
}

/// Runs `saldo ARGS` to its end (killed after [`TOOL_TIMEOUT`]).
async fn run_saldo(args: Vec<String>) -> ToolOutput {
    let mut child = saldo(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("saldo starts");
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "saldo {args:?} did not finish in {TOOL_TIMEOUT:?}; stderr: {}",
                err.join().unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ToolOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `saldo shard --output json STORE… SUBCOMMAND…` (a data dir for the `dir` snapshot store).
fn shard_args(store: &Store, data_dir: &Path, sub: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "shard".into(),
        "--output".into(),
        "json".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    a.extend(store.flags());
    a.extend(sub.iter().map(|s| s.to_string()));
    a
}

/// Runs `saldo shard verify S --node URL` for every shard at once; asserts each passes.
async fn verify_every_shard(store: &Store, data_dir: &Path, node: &str) {
    let mut runs = Vec::new();
    for shard in 0..SHARDS {
        let args = shard_args(
            store,
            data_dir,
            &["verify", &shard.to_string(), "--node", node],
        );
        runs.push((shard, tokio::spawn(run_saldo(args))));
    }
    for (shard, run) in runs {
        let out = run.await.expect("verify task");
        assert!(out.status.success(), "verify {shard}: {}", out.describe());
        let report = out.json();
        assert_eq!(report["ok"], true, "verify {shard}: {}", out.describe());
        assert_eq!(
            report["node"]["matches"],
            true,
            "verify {shard}: {}",
            out.describe()
        );
        assert!(
            report["snapshots"]
                .as_array()
                .is_some_and(|s| s.iter().all(|row| row["ok"] == true)),
            "verify {shard}: {}",
            out.describe()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Money.

fn fmt_minor(m: i64) -> String {
    let sign = if m < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:02}",
        m.unsigned_abs() / 100,
        m.unsigned_abs() % 100
    )
}

fn parse_minor(s: &str) -> i64 {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (units, cents) = digits.split_once('.').unwrap_or((digits, "00"));
    assert_eq!(cents.len(), 2, "a BRL amount has 2 decimals: {s:?}");
    let v = units.parse::<i64>().expect("units") * 100 + cents.parse::<i64>().expect("cents");
    if neg {
        -v
    } else {
        v
    }
}

/// A small deterministic PRNG (xorshift64*), seeded per test and printed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    std::env::var("AWS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
        })
}

#[derive(Clone, Debug)]
struct Account {
    id: String,
    overdraft_minor: i64,
    credits_minor: i64,
}

#[derive(Clone, Debug)]
struct TransferReq {
    id: String,
    from: usize,
    to: usize,
    amount_minor: i64,
}

impl TransferReq {
    fn body(&self, accounts: &[Account]) -> Value {
        json!({
            "id": self.id,
            "from": accounts[self.from].id,
            "to": accounts[self.to].id,
            "amount": fmt_minor(self.amount_minor),
            "currency": "BRL",
        })
    }
}

/// What a client saw for one transfer during the load.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// 201 or 200 with status `committed`.
    Committed,
    /// 202: accepted, being completed.
    Pending,
    /// 422 with this code (recorded: a retry must get the same).
    Rejected(String),
    /// 503, a timeout or a connection lost after sending: it may or may not have happened.
    Unknown(String),
    /// The connection was refused: the request never left.
    NotSent,
    /// Anything else (a bug).
    Unexpected(String),
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("http client")
}

async fn post(client: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let r = client
        .post(&url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let r = client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Opens `n` BRL accounts (every fourth with a 50.00 overdraft) and credits each 100.00 + i.
async fn open_accounts(
    client: &reqwest::Client,
    base: &str,
    prefix: &str,
    n: usize,
) -> Vec<Account> {
    let mut accounts = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-a{i}");
        let overdraft_minor = if i % 4 == 0 { 5_000 } else { 0 };
        let (status, body) = post(
            client,
            format!("{base}/v1/accounts"),
            &json!({"id": id, "currency": "BRL", "overdraft_limit": fmt_minor(overdraft_minor)}),
        )
        .await;
        assert_eq!(status, 201, "open {id}: {body}");
        let credits_minor = 10_000 + 100 * i as i64;
        let (status, body) = post(
            client,
            format!("{base}/v1/accounts/{id}/entries"),
            &json!({"id": format!("{prefix}-fund-{i}"), "type": "credit", "amount": fmt_minor(credits_minor)}),
        )
        .await;
        assert_eq!(status, 201, "credit {id}: {body}");
        accounts.push(Account {
            id,
            overdraft_minor,
            credits_minor,
        });
    }
    accounts
}

/// Sends transfers between random pairs from `tasks` concurrent clients until `stop`.
async fn run_load(
    client: &reqwest::Client,
    base: &str,
    prefix: &str,
    accounts: &Arc<Vec<Account>>,
    tasks: usize,
    seed: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(TransferReq, Outcome)>>> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (client, accounts, stop) = (client.clone(), accounts.clone(), stop.clone());
        let url = format!("{base}/v1/transfers");
        let prefix = prefix.to_owned();
        handles.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut seen = Vec::new();
            let n = accounts.len() as u64;
            for k in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let from = rng.below(n) as usize;
                let to = (from + 1 + rng.below(n - 1) as usize) % n as usize;
                let req = TransferReq {
                    id: format!("{prefix}-t{t}-{k}"),
                    from,
                    to,
                    amount_minor: 1 + rng.below(2_500) as i64,
                };
                let outcome = match client.post(&url).json(&req.body(&accounts)).send().await {
                    Err(e) if e.is_connect() => Outcome::NotSent,
                    Err(e) => Outcome::Unknown(e.to_string()),
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: Value = match r.text().await {
                            Ok(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
                            Err(e) => {
                                seen.push((
                                    req,
                                    Outcome::Unknown(format!("{status}, body lost: {e}")),
                                ));
                                continue;
                            }
                        };
                        match status {
                            200 | 201 if body["status"] == "committed" => Outcome::Committed,
                            202 => Outcome::Pending,
                            422 => {
                                Outcome::Rejected(body["code"].as_str().unwrap_or("").to_owned())
                            }
                            503 => Outcome::Unknown(format!("503 {body}")),
                            _ => Outcome::Unexpected(format!("{status} {body}")),
                        }
                    }
                };
                if outcome == Outcome::NotSent {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                seen.push((req, outcome));
            }
            seen
        }));
    }
    handles
}

/// Counts per outcome kind, for the messages.
fn tally(attempts: &[(TransferReq, Outcome)]) -> BTreeMap<&'static str, usize> {
    let mut t = BTreeMap::new();
    for (_, o) in attempts {
        let k = match o {
            Outcome::Committed => "committed",
            Outcome::Pending => "pending",
            Outcome::Rejected(_) => "rejected",
            Outcome::Unknown(_) => "unknown",
            Outcome::NotSent => "not_sent",
            Outcome::Unexpected(_) => "unexpected",
        };
        *t.entry(k).or_insert(0) += 1;
    }
    t
}

/// A transfer's settled status read back: `Some("committed" | "rejected")`, or `None` when the
/// node does not know the ID. Waits (bounded) while it is `pending`.
async fn settled_status(
    client: &reqwest::Client,
    base: &str,
    req: &TransferReq,
    accounts: &[Account],
) -> Result<Option<String>, String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let (status, body) = get(client, format!("{base}/v1/transfers/{}", req.id)).await;
        match status {
            404 => return Ok(None),
            200 => {
                let want = req.body(accounts);
                for field in ["from", "to", "amount", "currency"] {
                    if body[field] != want[field] {
                        return Err(format!("{}: read back {body}, sent {want}", req.id));
                    }
                }
                match body["status"].as_str() {
                    Some(s @ ("committed" | "rejected")) => return Ok(Some(s.to_owned())),
                    Some("pending") if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => return Err(format!("{}: unsettled or odd: {body}", req.id)),
                }
            }
            _ => return Err(format!("{}: GET answered {status} {body}", req.id)),
        }
    }
}

/// Retries a transfer with its original body; returns `"committed"` or `"rejected"` (with
/// whether it was a replay), or an error for any other answer.
async fn retry(
    client: &reqwest::Client,
    base: &str,
    req: &TransferReq,
    accounts: &[Account],
) -> Result<(String, u16, Value), String> {
    let (status, body) = post(client, format!("{base}/v1/transfers"), &req.body(accounts)).await;
    match status {
        200..=202 => Ok(("committed".into(), status, body)),
        422 => Ok(("rejected".into(), status, body)),
        _ => Err(format!("{}: retry answered {status} {body}", req.id)),
    }
}

/// Checks one transfer after the restart against what its client saw; returns whether it is
/// committed in the end.
async fn check_one(
    client: &reqwest::Client,
    base: &str,
    req: &TransferReq,
    outcome: &Outcome,
    accounts: &[Account],
) -> Result<bool, String> {
    let id = &req.id;
    let before = settled_status(client, base, req, accounts).await?;
    match outcome {
        Outcome::Unexpected(what) => Err(format!("{id}: unexpected answer under load: {what}")),
        Outcome::NotSent => match before {
            None => Ok(false),
            Some(s) => Err(format!("{id}: never sent, yet {s}")),
        },
        Outcome::Committed | Outcome::Pending => {
            if before.as_deref() != Some("committed") {
                return Err(format!(
                    "{id}: acknowledged ({outcome:?}) but after the restart {before:?}"
                ));
            }
            let (s, status, body) = retry(client, base, req, accounts).await?;
            if s != "committed" || status != 200 {
                return Err(format!(
                    "{id}: the retry of a committed transfer answered {status} {body}"
                ));
            }
            Ok(true)
        }
        Outcome::Rejected(code) => {
            if before.as_deref() != Some("rejected") {
                return Err(format!(
                    "{id}: rejected ({code}) but after the restart {before:?}"
                ));
            }
            let (_, status, body) = retry(client, base, req, accounts).await?;
            if status != 422 || body["code"].as_str() != Some(code.as_str()) {
                return Err(format!(
                    "{id}: rejected with {code}, the retry answered {status} {body}"
                ));
            }
            Ok(false)
        }
        Outcome::Unknown(_) => {
            let (first, status, body) = retry(client, base, req, accounts).await?;
            match before.as_deref() {
                Some("committed") if first != "committed" || status != 200 => {
                    return Err(format!(
                        "{id}: committed, yet the retry answered {status} {body}"
                    ))
                }
                Some("rejected") if first != "rejected" => {
                    return Err(format!(
                        "{id}: rejected, yet the retry answered {status} {body}"
                    ))
                }
                None if status == 200 => {
                    return Err(format!(
                        "{id}: unknown to the node, yet the retry replayed: {body}"
                    ))
                }
                _ => {}
            }
            let after = settled_status(client, base, req, accounts).await?;
            if after.as_deref() != Some(first.as_str()) {
                return Err(format!(
                    "{id}: the retry said {first}, reading it back {after:?}"
                ));
            }
            let (second, status, body) = retry(client, base, req, accounts).await?;
            let replayed = if second == "committed" {
                status == 200
            } else {
                status == 422
            };
            if second != first || !replayed {
                return Err(format!(
                    "{id}: the second retry answered {status} {body} after {first}"
                ));
            }
            Ok(first == "committed")
        }
    }
}

/// After a restart: checks every transfer against what its client saw (resolving the unknown
/// ones by retrying them), waits for every hold to settle, then checks each account's balance
/// exactly against its credits and committed transfers, conservation and the overdraft limits.
async fn check_money(
    client: &reqwest::Client,
    base: &str,
    accounts: &Arc<Vec<Account>>,
    attempts: Vec<(TransferReq, Outcome)>,
) {
    let attempts = Arc::new(attempts);
    let mut tasks = Vec::new();
    for t in 0..CHECK_TASKS {
        let (client, base, accounts, attempts) = (
            client.clone(),
            base.to_owned(),
            accounts.clone(),
            attempts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            let mut problems = Vec::new();
            for (i, (req, outcome)) in attempts.iter().enumerate() {
                if i % CHECK_TASKS != t {
                    continue;
                }
                match check_one(&client, &base, req, outcome, &accounts).await {
                    Ok(true) => committed.push(req.clone()),
                    Ok(false) => {}
                    Err(p) => problems.push(p),
                }
            }
            (committed, problems)
        }));
    }
    let mut committed = Vec::new();
    let mut problems = Vec::new();
    for task in tasks {
        let (c, p) = task.await.expect("check task");
        committed.extend(c);
        problems.extend(p);
    }
    assert!(
        problems.is_empty(),
        "{} transfers are wrong after the restart, e.g.:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );

    let mut expected: Vec<i64> = accounts.iter().map(|a| a.credits_minor).collect();
    for t in &committed {
        expected[t.from] -= t.amount_minor;
        expected[t.to] += t.amount_minor;
    }
    let credits: i64 = accounts.iter().map(|a| a.credits_minor).sum();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut views = Vec::new();
        for a in accounts.iter() {
            let (status, body) = get(client, format!("{base}/v1/accounts/{}", a.id)).await;
            assert_eq!(status, 200, "{}: {body}", a.id);
            views.push(body);
        }
        let held: Vec<i64> = views
            .iter()
            .map(|v| parse_minor(v["held"].as_str().expect("held")))
            .collect();
        if held.iter().any(|&h| h != 0) {
            assert!(
                Instant::now() < deadline,
                "holds still open {SETTLE_TIMEOUT:?} after the restart: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let balances: Vec<i64> = views
            .iter()
            .map(|v| parse_minor(v["balance"].as_str().expect("balance")))
            .collect();
        let total: i64 = balances.iter().sum();
        assert_eq!(
            total,
            credits,
            "conservation: the balances add up to {} but {} was credited",
            fmt_minor(total),
            fmt_minor(credits)
        );
        for (i, a) in accounts.iter().enumerate() {
            assert_eq!(
                balances[i],
                expected[i],
                "{}: balance {} but its credits and {} committed transfers make {} (a transfer \
                 lost or applied twice)",
                a.id,
                fmt_minor(balances[i]),
                committed.len(),
                fmt_minor(expected[i])
            );
            assert!(
                balances[i] >= -a.overdraft_minor,
                "{}: balance {} below -{}",
                a.id,
                fmt_minor(balances[i]),
                fmt_minor(a.overdraft_minor)
            );
        }
        return;
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// The values of a metric in Prometheus text, by label set.
fn metric(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (metric_name, labels) = match key.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            if metric_name != name {
                return None;
            }
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn metric_sum(text: &str, name: &str) -> f64 {
    metric(text, name).iter().map(|(_, v)| v).sum()
}

async fn scrape(client: &reqwest::Client, url: &str) -> String {
    let r = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(r.status(), 200, "GET {url}");
    r.text().await.expect("metrics text")
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// A node on Kinesis + DynamoDB, SIGKILLed under load, restarted on the same stream and table
/// (without `--create-resources`: they persist) and a fresh data directory: every acknowledged
/// transfer is there, every unknown one resolves consistently, the money is exact; the
/// snapshotter beside it follows, catches up (lag 0, no audit failure) and wrote snapshots, and
/// `saldo shard verify` passes for every shard against the live node
/// (`the_snapshotter_follows_and_reports_its_lag` is folded in here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_kinesis_and_dynamodb_survives_sigkill_under_load() {
    let _one_at_a_time = UNDER_LOAD.lock().await;
    let started = Instant::now();
    let emu = emulators();
    let name = unique("sigkill");
    let store = Store {
        stream: name.clone(),
        kinesis_endpoint: emu.kinesis.endpoint().to_owned(),
        dynamodb: Some((name.clone(), emu.dynamodb.endpoint().to_owned())),
    };
    let no_snapshots = [
        "--snapshot-every-events",
        "0",
        "--snapshot-interval-ms",
        "0",
    ];
    let dir1 = tempfile::tempdir().expect("temp dir");
    let mut node = start_node(
        "node",
        &store,
        dir1.path(),
        &[&no_snapshots[..], &["--create-resources"]].concat(),
    )
    .await;

    let tools_dir = tempfile::tempdir().expect("temp dir");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut snapshotter_args: Vec<String> = vec![
        "snapshotter".into(),
        "--data-dir".into(),
        tools_dir.path().display().to_string(),
    ];
    snapshotter_args.extend(store.flags());
    snapshotter_args.extend(
        [
            "--every-events",
            "200",
            "--interval-ms",
            "500",
            "--metrics-listen",
            &metrics_addr,
        ]
        .map(String::from),
    );
    let mut snapshotter = Proc::spawn("snapshotter", &snapshotter_args);

    let client = http_client();
    // The snapshotter follows every shard before the load starts, so that the records of the
    // load are folded by following (a snapshotter still restoring would fold them in its
    // initial restore instead).
    let metrics_url = format!("http://{metrics_addr}/metrics");
    let deadline = Instant::now() + SNAPSHOTTER_CATCH_UP_TIMEOUT;
    loop {
        let following = match client.get(&metrics_url).send().await {
            Ok(r) => metric(
                &r.text().await.unwrap_or_default(),
                "saldo_snapshotter_following",
            ),
            Err(_) => Vec::new(),
        };
        if following.len() == SHARDS as usize && following.iter().all(|(_, v)| *v == 1.0) {
            break;
        }
        snapshotter.assert_running();
        assert!(
            Instant::now() < deadline,
            "the snapshotter did not start following in {SNAPSHOTTER_CATCH_UP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accounts = Arc::new(open_accounts(&client, &node.base, &name, 20).await);
    let seed = seed();
    eprintln!("AWS_TEST_SEED={seed}");
    let stop = Arc::new(AtomicBool::new(false));
    let load = run_load(&client, &node.base, &name, &accounts, 8, seed, &stop).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    node.proc.assert_running();
    node.proc.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut attempts = Vec::new();
    for task in load {
        attempts.extend(task.await.expect("load task"));
    }
    let counts = tally(&attempts);
    eprintln!("load before the SIGKILL: {counts:?}");
    assert!(
        counts.get("committed").copied().unwrap_or(0) >= 100,
        "too little load ran to prove anything: {counts:?}"
    );

    let dir2 = tempfile::tempdir().expect("temp dir");
    let node = start_node("node after SIGKILL", &store, dir2.path(), &no_snapshots).await;
    check_money(&client, &node.base, &accounts, attempts).await;

    // The snapshotter followed the stream across the kill: it catches up, audits clean and wrote
    // snapshots.
    snapshotter.assert_running();
    let deadline = Instant::now() + SNAPSHOTTER_CATCH_UP_TIMEOUT;
    let text = loop {
        let text = scrape(&client, &metrics_url).await;
        let lag = metric(&text, "saldo_snapshotter_lag_events");
        assert_eq!(lag.len(), SHARDS as usize, "one lag per shard: {text}");
        if lag.iter().all(|(_, v)| *v == 0.0)
            && metric_sum(&text, "saldo_snapshotter_snapshots_total") > 0.0
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the snapshotter did not catch up in {SNAPSHOTTER_CATCH_UP_TIMEOUT:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        metric_sum(&text, "saldo_snapshotter_audit_failures_total"),
        0.0,
        "{text}"
    );
    assert!(
        metric_sum(&text, "saldo_snapshotter_records_total") > 0.0,
        "{text}"
    );

    let out = run_saldo(shard_args(&store, tools_dir.path(), &["list"])).await;
    assert!(out.status.success(), "list: {}", out.describe());
    let listing = out.json();
    let rows = listing["shards"].as_array().expect("shards");
    assert_eq!(rows.len(), SHARDS as usize, "{listing}");
    for (shard, row) in rows.iter().enumerate() {
        let traffic = accounts
            .iter()
            .any(|a| saldo_engine::shard::shard_of(&a.id, SHARDS) == shard as u32);
        assert_eq!(
            row["tail_lsn"].as_u64().unwrap_or(0) > 0,
            traffic,
            "shard {shard} has a stream exactly when it has accounts: {listing}"
        );
        assert!(
            !traffic || row["snapshots"].as_u64().unwrap_or(0) > 0,
            "the snapshotter wrote no snapshot of shard {shard}, which had traffic: {listing}"
        );
    }
    verify_every_shard(&store, tools_dir.path(), &node.base).await;

    let status = snapshotter.terminate(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the snapshotter stops on SIGTERM: {status:?}\n{}",
        snapshotter.log_tail(30)
    );
    let mut node = node;
    let status = node.proc.terminate(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the node stops cleanly on SIGTERM: {status:?}\n{}",
        node.proc.log_tail(30)
    );
    eprintln!("sigkill test took {:?}", started.elapsed());
}

/// Reads the node's checksum of one shard (retrying while it is busy).
async fn node_checksum(client: &reqwest::Client, base: &str, shard: u32) -> (u64, String) {
    for _ in 0..100 {
        let (status, body) = get(client, format!("{base}/v1/admin/shards/{shard}/checksum")).await;
        if status == 200 {
            assert_eq!(body["shard"], shard, "{body}");
            return (
                body["lsn"].as_u64().expect("lsn"),
                body["checksum"].as_str().expect("checksum").to_owned(),
            );
        }
        assert_eq!(status, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the checksum of shard {shard} stayed busy");
}

/// Sends `n` transfers one after the other from accounts of `from_pool` to random others;
/// asserts each is committed or rejected.
async fn sequential_transfers(
    client: &reqwest::Client,
    base: &str,
    accounts: &[Account],
    from_pool: &[usize],
    label: &str,
    n: usize,
    rng: &mut Rng,
) {
    for k in 0..n {
        let from = from_pool[rng.below(from_pool.len() as u64) as usize];
        let to = (from + 1 + rng.below(accounts.len() as u64 - 1) as usize) % accounts.len();
        let req = TransferReq {
            id: format!("{label}-{k}"),
            from,
            to,
            amount_minor: 1 + rng.below(1_500) as i64,
        };
        let (status, body) =
            post(client, format!("{base}/v1/transfers"), &req.body(accounts)).await;
        assert!(
            matches!(status, 201 | 202 | 422),
            "{}: {status} {body}",
            req.id
        );
    }
}

/// `saldo shard restore S --at L` (LSN or time) rebuilds exactly the state the node had at L:
/// the checksum the node reported then, and the balances read then; `--at` a time between the
/// two phases gives the same; without `--at` it gives the node's state now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_restore_at_a_position_gives_the_balances_the_node_had_then() {
    let _one_at_a_time = UNDER_LOAD.lock().await;
    let emu = emulators();
    let name = unique("restore");
    let store = Store {
        stream: name.clone(),
        kinesis_endpoint: emu.kinesis.endpoint().to_owned(),
        dynamodb: Some((name.clone(), emu.dynamodb.endpoint().to_owned())),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    // Node snapshots off: the test writes them with `restore --write-snapshot`, so their
    // positions are known (node-written snapshots are covered by the fault test).
    let node = start_node(
        "node",
        &store,
        dir.path(),
        &[
            "--snapshot-every-events",
            "0",
            "--snapshot-interval-ms",
            "0",
            "--create-resources",
        ],
    )
    .await;
    let client = http_client();
    let accounts = open_accounts(&client, &node.base, &name, 12).await;
    let seed = seed();
    eprintln!("AWS_TEST_SEED={seed}");
    let mut rng = Rng::new(seed);
    let shard = saldo_engine::shard::shard_of(&accounts[0].id, SHARDS);
    let in_shard: Vec<usize> = (0..accounts.len())
        .filter(|&i| saldo_engine::shard::shard_of(&accounts[i].id, SHARDS) == shard)
        .collect();
    let all: Vec<usize> = (0..accounts.len()).collect();
    let s = shard.to_string();

    // Phase 1: transfers from the shard's accounts and among all; a snapshot at its end (L0);
    // a few more transfers from the shard; then the node's position L1 and its checksum C1.
    sequential_transfers(
        &client,
        &node.base,
        &accounts,
        &in_shard,
        &format!("{name}-p1a"),
        20,
        &mut rng,
    )
    .await;
    sequential_transfers(
        &client,
        &node.base,
        &accounts,
        &all,
        &format!("{name}-p1b"),
        20,
        &mut rng,
    )
    .await;
    let (l0, c0) = node_checksum(&client, &node.base, shard).await;
    let out = run_saldo(shard_args(
        &store,
        dir.path(),
        &["restore", &s, "--write-snapshot"],
    ))
    .await;
    assert!(
        out.status.success(),
        "restore --write-snapshot: {}",
        out.describe()
    );
    sequential_transfers(
        &client,
        &node.base,
        &accounts,
        &in_shard,
        &format!("{name}-p1c"),
        10,
        &mut rng,
    )
    .await;
    let (l1, c1) = node_checksum(&client, &node.base, shard).await;
    assert!(l1 > l0, "phase 1c moved shard {shard}: {l0} / {l1}");
    let mut then = HashMap::new();
    for &i in &in_shard {
        let (status, body) = get(
            &client,
            format!("{}/v1/accounts/{}", node.base, accounts[i].id),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        then.insert(accounts[i].id.clone(), body);
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t1 = gateway::format::rfc3339(saldo_engine::Timestamp::now());
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        node_checksum(&client, &node.base, shard).await,
        (l1, c1.clone()),
        "the shard moved while the test read it"
    );

    // Phase 2: more transfers from the shard, and a snapshot at its end (L2 > L1): the restore
    // at L1 must start from the snapshot at L0 and replay the stream up to L1.
    sequential_transfers(
        &client,
        &node.base,
        &accounts,
        &in_shard,
        &format!("{name}-p2"),
        40,
        &mut rng,
    )
    .await;
    let (l2, c2) = node_checksum(&client, &node.base, shard).await;
    assert!(
        l2 > l1 && c2 != c1,
        "the second phase changed shard {shard}: {l1} {c1} / {l2} {c2}"
    );
    let out = run_saldo(shard_args(
        &store,
        dir.path(),
        &["restore", &s, "--write-snapshot"],
    ))
    .await;
    assert!(
        out.status.success(),
        "restore --write-snapshot: {}",
        out.describe()
    );
    let out = run_saldo(shard_args(&store, dir.path(), &["snapshots", &s])).await;
    assert!(out.status.success(), "snapshots: {}", out.describe());
    let snaps = out.json();
    let mut at: Vec<u64> = snaps["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|r| r["lsn"].as_u64().expect("lsn"))
        .collect();
    at.sort_unstable();
    assert_eq!(
        at,
        vec![l0, l2],
        "the snapshots written to DynamoDB: {snaps}"
    );

    let export = dir.path().join("at-l1.json");
    let out = run_saldo(shard_args(
        &store,
        dir.path(),
        &[
            "restore",
            &s,
            "--at",
            &l1.to_string(),
            "--export",
            &export.display().to_string(),
        ],
    ))
    .await;
    assert!(out.status.success(), "restore --export: {}", out.describe());
    let exported: Value = serde_json::from_slice(&std::fs::read(&export).expect("export written"))
        .expect("export is JSON");
    assert_eq!(exported["shard"], shard, "{exported}");
    assert_eq!(exported["lsn"], l1, "{exported}");
    assert_eq!(
        exported["checksum"],
        c1.as_str(),
        "restore at {l1} vs the node then: {exported}"
    );
    let rows = exported["accounts"].as_array().expect("accounts");
    assert_eq!(
        rows.len(),
        in_shard.len(),
        "the shard's accounts: {exported}"
    );
    for row in rows {
        let id = row["account"].as_str().expect("account");
        let view = then
            .get(id)
            .unwrap_or_else(|| panic!("{id} is not on shard {shard}"));
        for field in [
            "balance",
            "held",
            "available",
            "overdraft_limit",
            "currency",
        ] {
            assert_eq!(
                row[field], view[field],
                "{id} {field}: restored {row}, node then {view}"
            );
        }
    }

    for (at, want_lsn, want) in [
        (l1.to_string(), l1, &c1),
        (t1.clone(), l1, &c1),
        (l0.to_string(), l0, &c0),
    ] {
        let out = run_saldo(shard_args(
            &store,
            dir.path(),
            &["restore", &s, "--at", &at],
        ))
        .await;
        assert!(
            out.status.success(),
            "restore --at {at}: {}",
            out.describe()
        );
        let line = out.json();
        assert_eq!(line["lsn"], want_lsn, "restore --at {at}: {line}");
        assert_eq!(line["checksum"], want.as_str(), "restore --at {at}: {line}");
    }
    let out = run_saldo(shard_args(&store, dir.path(), &["restore", &s])).await;
    assert!(out.status.success(), "restore: {}", out.describe());
    let line = out.json();
    assert_eq!(
        (line["lsn"].as_u64(), line["checksum"].as_str()),
        (Some(l2), Some(c2.as_str())),
        "{line}"
    );
    drop(node);
}

/// Returns the emulators (hold them: they stop when the last holder lets go), a test's unique
/// name, its store straight on the emulators, a fault proxy (no faults yet) in front of
/// kinesalite, and the same store through the proxy.
async fn behind_fault_proxy(test: &str) -> (Arc<Emulators>, String, Store, FaultProxy, Store) {
    let emu = emulators();
    let name = unique(test);
    let direct = Store {
        stream: name.clone(),
        kinesis_endpoint: emu.kinesis.endpoint().to_owned(),
        dynamodb: Some((name.clone(), emu.dynamodb.endpoint().to_owned())),
    };
    let proxy = FaultProxy::start(emu.kinesis.endpoint(), FaultPlan::none()).await;
    let proxied = direct.via(&proxy.endpoint());
    (emu, name, direct, proxy, proxied)
}

/// A node whose Kinesis calls go through a fault proxy (20% throttled, 5% 5xx, 5% answers lost
/// after the write) keeps every acknowledgement: after a clean restart straight on kinesalite
/// every acknowledged transfer is there, the money is exact, and `saldo shard verify` passes
/// (the lost answers' retries left duplicates in the stream that readers skip).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rides_through_throttling_and_lost_answers() {
    let _one_at_a_time = UNDER_LOAD.lock().await;
    let (_emu, name, direct, proxy, proxied) = behind_fault_proxy("faults").await;
    // The node writes its own snapshots to DynamoDB (straight, not through the proxy): the
    // restart starts from them and `verify` checks them against the stream. Every 20 events,
    // so that a snapshot is due even when the faults let little load through.
    // The interval is there because a Kinesis stream's records expire: the node refuses
    // snapshot settings that could leave a quiet shard uncovered (see docs/kinesis.md).
    let snapshots = [
        "--snapshot-every-events",
        "20",
        "--snapshot-interval-ms",
        "3600000",
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = start_node(
        "node behind the fault proxy",
        &proxied,
        dir.path(),
        &[&snapshots[..], &["--create-resources"]].concat(),
    )
    .await;
    let client = http_client();
    let accounts = Arc::new(open_accounts(&client, &node.base, &name, 16).await);
    let seed = seed();
    eprintln!("AWS_TEST_SEED={seed}");
    proxy.set_plan(FaultPlan {
        throttle_rate: 0.20,
        server_error_rate: 0.05,
        drop_after_forward_rate: 0.05,
        seed,
        ..FaultPlan::none()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let load = run_load(&client, &node.base, &name, &accounts, 6, seed, &stop).await;
    // At least 3 s of load, and on until enough transfers went through the faults to prove
    // something (a busy CI machine lets fewer through per second), within 30 s.
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let text = scrape(&client, &format!("{}/metrics", node.base)).await;
        let committed: f64 = metric(&text, "saldo_http_requests_total")
            .iter()
            .filter(|(labels, _)| {
                labels.contains("route=\"/v1/transfers\"") && labels.contains("status=\"201\"")
            })
            .map(|(_, v)| v)
            .sum();
        let elapsed = started.elapsed();
        if elapsed >= Duration::from_secs(30)
            || (elapsed >= Duration::from_secs(3) && committed >= 100.0)
        {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut attempts = Vec::new();
    for task in load {
        attempts.extend(task.await.expect("load task"));
    }
    let stats = proxy.stats();
    proxy.set_plan(FaultPlan::none());
    let counts = tally(&attempts);
    eprintln!("load through the fault proxy: {counts:?}; proxy: {stats:?}");
    assert!(
        counts.get("committed").copied().unwrap_or(0) >= 50,
        "too little load ran to prove anything: {counts:?}"
    );
    assert!(
        stats.throttled > 0 && stats.server_errors > 0 && stats.dropped_after_forward > 0,
        "the proxy injected every kind of fault: {stats:?}"
    );
    let node_metrics = scrape(&client, &format!("{}/metrics", node.base)).await;
    let retries = metric_sum(&node_metrics, "saldo_kinesis_retries_total");
    let throttles = metric_sum(&node_metrics, "saldo_kinesis_throttles_total");
    assert!(
        retries > 0.0 && throttles > 0.0,
        "the node retried: retries {retries}, throttles {throttles}"
    );

    // Its snapshots (every 20 events, checked every second) reach DynamoDB.
    let deadline = Instant::now() + NODE_SNAPSHOT_UNDER_FAULTS_TIMEOUT;
    while metric_sum(
        &scrape(&client, &format!("{}/metrics", node.base)).await,
        "saldo_snapshots_total",
    ) == 0.0
    {
        assert!(
            Instant::now() < deadline,
            "the node wrote no snapshot in {NODE_SNAPSHOT_UNDER_FAULTS_TIMEOUT:?}\n{}",
            node.proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let status = node.proc.terminate(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the node stops cleanly on SIGTERM: {status:?}\n{}",
        node.proc.log_tail(30)
    );
    assert!(
        node.proc.log_contains("ledger flushed and stopped"),
        "{}",
        node.proc.log_tail(30)
    );

    let node = start_node(
        "node restarted on kinesalite",
        &direct,
        dir.path(),
        &snapshots,
    )
    .await;
    check_money(&client, &node.base, &accounts, attempts).await;
    verify_every_shard(&direct, dir.path(), &node.base).await;
    let node_metrics = scrape(&client, &format!("{}/metrics", node.base)).await;
    eprintln!(
        "duplicates skipped after the restart: {}",
        metric_sum(&node_metrics, "saldo_kinesis_duplicates_skipped_total")
    );
    drop(node);
    drop(proxy);
}

/// The region may come from `AWS_REGION` alone (as storage.rs documents: "region and
/// credentials come from the standard AWS provider chain") while the endpoint points at an
/// emulator.
///
/// FAILS at the time of writing: saldo panics at start ("a http_client is required. Enable the
/// `default-https-client` crate feature or configure an HTTP client") because
/// `persistence/src/aws.rs` `sdk_config`, for `(region: None, endpoint: Some)`, builds
/// `RegionProviderChain::default_provider()`, whose IMDS region provider is built with a
/// provider config that has no HTTP client (the SDK's default client feature is off). The
/// other tests here pass `--aws-region` to get past it.
/// `saldo serve` expected to refuse to start: returns its output once it exited.
async fn serve_refused(store: &Store, data_dir: &Path, shards: u32, extra: &[&str]) -> ToolOutput {
    let out = run_saldo(serve_args(store.flags_with_shards(shards), data_dir, extra)).await;
    assert!(
        !out.status.success(),
        "serve must refuse: {}",
        out.describe()
    );
    out
}

/// Defect 2 of issue 13: the shard count is recorded with the stream (a Kinesis tag), so a node
/// on a fresh data directory (a stateless container) with another `--shards` is refused,
/// and the operator tools learn the count from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_fresh_data_dir_with_another_shard_count_is_refused_on_kinesis() {
    let emu = emulators();
    let name = unique("layout");
    let store = Store::on(&emu, &name);
    let first_dir = tempfile::tempdir().expect("temp dir");
    let args = serve_args(
        store.flags_with_shards(2),
        first_dir.path(),
        &["--create-resources"],
    );
    let mut node = start_serve("node with 2 shards", args).await;
    node.proc.terminate(Duration::from_secs(30)).await;

    let fresh = tempfile::tempdir().expect("temp dir");
    let out = serve_refused(&store, fresh.path(), 4, &[]).await;
    assert!(
        out.stderr
            .contains("was created with 2 shards but --shards is 4")
            && out.stderr.contains("start with --shards 2"),
        "the refusal names both counts and the fix: {}",
        out.describe()
    );
    assert!(
        out.stderr.contains(&format!("kinesis:{name}")),
        "{}",
        out.describe()
    );

    // The tools learn the count from the stream without --shards, and refuse another.
    let mut list_args: Vec<String> = vec![
        "shard".into(),
        "list".into(),
        "--output".into(),
        "json".into(),
    ];
    list_args.extend(store.flags().into_iter().skip(2)); // without --shards
    let out = run_saldo(list_args).await;
    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(
        out.json()["shards"].as_array().map(Vec::len),
        Some(2),
        "{}",
        out.describe()
    );
    let out = run_saldo(shard_args(&store, fresh.path(), &["list"])).await;
    assert!(
        !out.status.success(),
        "--shards 4 on a 2-shard stream: {}",
        out.describe()
    );
    assert!(
        out.stderr.contains("start with --shards 2"),
        "{}",
        out.describe()
    );
}

/// Defect 4 of issue 13: a shard quiet for longer than the stream's retention has no record
/// left on Kinesis. Simulated with two streams: a node on stream A writes snapshots covering
/// everything to the DynamoDB table; a node with the same table on an empty stream B (every
/// record "expired") starts from the snapshots alone, serves the balances, takes new writes
/// and restarts again on top of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_stream_expired_restarts_from_its_snapshots_on_kinesis() {
    let _one_at_a_time = UNDER_LOAD.lock().await;
    let emu = emulators();
    let name = unique("expiry");
    let store_a = Store {
        stream: format!("{name}-a"),
        ..Store::on(&emu, &name)
    };
    let store_b = Store {
        stream: format!("{name}-b"),
        ..store_a.clone()
    };
    let snapshots = [
        "--snapshot-every-events",
        "0",
        "--snapshot-interval-ms",
        "200",
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_node(
        "node on stream A",
        &store_a,
        dir.path(),
        &[&snapshots[..], &["--create-resources"]].concat(),
    )
    .await;
    let client = http_client();
    let accounts = open_accounts(&client, &node.base, &name, 8).await;
    let mut rng = Rng::new(seed());
    let all: Vec<usize> = (0..accounts.len()).collect();
    sequential_transfers(
        &client,
        &node.base,
        &accounts,
        &all,
        &format!("{name}-a"),
        20,
        &mut rng,
    )
    .await;
    let balances = |base: String| {
        let client = client.clone();
        let ids: Vec<String> = accounts.iter().map(|a| a.id.clone()).collect();
        async move {
            let mut out = Vec::new();
            for id in ids {
                let (status, body) = get(&client, format!("{base}/v1/accounts/{id}")).await;
                assert_eq!(status, 200, "{id}: {body}");
                out.push(body["balance"].clone());
            }
            out
        }
    };
    let before = balances(node.base.clone()).await;
    // Wait until every shard's newest snapshot is at its stream's tail.
    let deadline = Instant::now() + SNAPSHOTTER_CATCH_UP_TIMEOUT;
    loop {
        let out = run_saldo(shard_args(&store_a, dir.path(), &["list"])).await;
        assert!(out.status.success(), "{}", out.describe());
        let list = out.json();
        let covered = list["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .all(|row| {
                row["tail_lsn"].as_u64() == Some(0)
                    || row["newest_snapshot_lsn"].as_u64() == row["tail_lsn"].as_u64()
            });
        if covered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "snapshots did not reach the tails: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut node = node;
    node.proc.terminate(Duration::from_secs(30)).await;

    // Stream B holds nothing: the records "expired". The node starts on the snapshots alone.
    let fresh = tempfile::tempdir().expect("temp dir");
    let node = start_node(
        "node on empty stream B",
        &store_b,
        fresh.path(),
        &[&snapshots[..], &["--create-resources"]].concat(),
    )
    .await;
    assert_eq!(
        balances(node.base.clone()).await,
        before,
        "the snapshots' balances"
    );
    sequential_transfers(
        &client,
        &node.base,
        &accounts,
        &all,
        &format!("{name}-b"),
        20,
        &mut rng,
    )
    .await;
    let after = balances(node.base.clone()).await;
    assert_ne!(after, before, "new writes moved money");
    let mut node = node;
    node.proc.terminate(Duration::from_secs(30)).await;
    let node = start_node(
        "node restarted on stream B",
        &store_b,
        fresh.path(),
        &snapshots,
    )
    .await;
    assert_eq!(
        balances(node.base.clone()).await,
        after,
        "restored after the new writes"
    );
    verify_every_shard(&store_b, fresh.path(), &node.base).await;
}

/// A stream whose records expire needs snapshots that cover every record before it can:
/// `saldo serve` refuses snapshot settings that cannot (only a count, or an interval past a
/// quarter of the retention), and so does `saldo snapshotter`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_settings_that_let_records_expire_uncovered_are_refused_on_kinesis() {
    let emu = emulators();
    let name = unique("cadence");
    let store = Store::on(&emu, &name);
    let dir = tempfile::tempdir().expect("temp dir");
    for interval in ["0", "21600001"] {
        let out = serve_refused(
            &store,
            dir.path(),
            SHARDS,
            &[
                "--snapshot-every-events",
                "1000",
                "--snapshot-interval-ms",
                interval,
                "--create-resources",
            ],
        )
        .await;
        assert!(
            out.stderr
                .contains("--snapshot-interval-ms to at most 21600000"),
            "{}",
            out.describe()
        );
    }
    let mut args: Vec<String> = vec![
        "snapshotter".into(),
        "--data-dir".into(),
        dir.path().display().to_string(),
    ];
    args.extend(store.flags());
    args.extend(
        [
            "--interval-ms",
            "0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--create-resources",
        ]
        .map(String::from),
    );
    let out = run_saldo(args).await;
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("--interval-ms at most 21600000"),
        "{}",
        out.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_from_the_environment_works_with_an_emulator_endpoint() {
    let emu = emulators();
    let name = unique("envregion");
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--log-format".into(),
        "json".into(),
        "--shards".into(),
        SHARDS.to_string(),
        "--wal".into(),
        "kinesis".into(),
        "--kinesis-stream".into(),
        name.clone(),
        "--kinesis-endpoint".into(),
        emu.kinesis.endpoint().to_owned(),
        "--create-resources".into(),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    args.extend(["--data-dir".into(), dir.path().display().to_string()]);
    let mut proc = Proc::spawn("node with AWS_REGION only", &args);
    let deadline = Instant::now() + NODE_START_TIMEOUT;
    let addr = loop {
        if let Ok(addr) = proc.listening.try_recv() {
            break addr;
        }
        proc.assert_running();
        assert!(
            Instant::now() < deadline,
            "no address\n{}",
            proc.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let client = http_client();
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        proc.assert_running();
        assert!(
            Instant::now() < deadline,
            "not ready\n{}",
            proc.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn amounts_format_and_parse() {
    for m in [0, 1, 99, 100, 12_345, -1, -5_000] {
        assert_eq!(parse_minor(&fmt_minor(m)), m);
    }
    assert_eq!(fmt_minor(-5), "-0.05");
    assert_eq!(
        metric("a{shard=\"0\"} 3\na{shard=\"1\"} 4\n# HELP a x\nab 9", "a"),
        vec![
            ("shard=\"0\"".to_owned(), 3.0),
            ("shard=\"1\"".to_owned(), 4.0)
        ]
    );
}

/// Issue 17 on Kinesis: the stream answers every call with a server error for longer than
/// the retry budget. The node's appends fail, `/readyz` turns 503 naming the shard, writes are
/// refused; once the stream answers again the node exits non-zero (fail-stop), and restarted,
/// every acknowledged transfer is there exactly once with the money exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinesis_stream_down_past_the_retry_budget_turns_readiness_off_until_a_restart() {
    let _one_at_a_time = UNDER_LOAD.lock().await;
    let (_emu, name, direct, proxy, proxied) = behind_fault_proxy("down").await;
    let no_snapshots = [
        "--snapshot-every-events",
        "0",
        "--snapshot-interval-ms",
        "0",
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = start_node(
        "node whose stream goes down",
        &proxied,
        dir.path(),
        &[&no_snapshots[..], &["--create-resources"]].concat(),
    )
    .await;
    let client = http_client();
    let accounts = Arc::new(open_accounts(&client, &node.base, &name, 8).await);
    let seed = seed();
    eprintln!("AWS_TEST_SEED={seed}");
    let stop = Arc::new(AtomicBool::new(false));
    let load = run_load(&client, &node.base, &name, &accounts, 4, seed, &stop).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set_plan(FaultPlan {
        server_error_rate: 1.0,
        seed,
        ..FaultPlan::none()
    });
    // The retry budget (AWS_ATTEMPTS_MAX attempts, backing off to 2 s) runs out: not ready.
    let deadline = Instant::now() + Duration::from_secs(90);
    let detail = loop {
        let (status, body) = get(&client, format!("{}/readyz", node.base)).await;
        if status == 503 {
            break body["detail"].as_str().unwrap_or_default().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "still ready with the stream down\n{}",
            node.proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(detail.contains("shard"), "readyz names the shard: {detail}");
    let (status, body) = post(
        &client,
        format!("{}/v1/transfers", node.base),
        &json!({"id": format!("{name}-late"), "from": accounts[0].id, "to": accounts[1].id,
            "amount": "0.01", "currency": "BRL"}),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (503, &json!("unavailable")),
        "{body}"
    );
    stop.store(true, Ordering::Relaxed);
    let mut attempts = Vec::new();
    for task in load {
        attempts.extend(task.await.expect("load task"));
    }
    eprintln!("load while the stream went down: {:?}", tally(&attempts));
    assert!(
        tally(&attempts).get("committed").copied().unwrap_or(0) > 0,
        "some load was acknowledged before the stream went down"
    );

    // The stream answers again: the node exits non-zero for its supervisor to restart it.
    proxy.set_plan(FaultPlan::none());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Ok(Some(status)) = node.proc.child.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the node neither exits nor writes again\n{}",
            node.proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(exit.code(), Some(1), "{}", node.proc.log_tail(30));
    assert!(
        node.proc.log_contains("takes writes again"),
        "{}",
        node.proc.log_tail(30)
    );
    drop(node);
    let node = start_node(
        "node restarted after the outage",
        &direct,
        dir.path(),
        &no_snapshots,
    )
    .await;
    check_money(&client, &node.base, &accounts, attempts).await;
    drop(node);
    drop(proxy);
}
