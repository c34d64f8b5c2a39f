//! The load itself: workers that send the workload's operations and record what comes back.
//!
//! A *phase* is one open-loop run at a fixed rate (also each step of a sweep) or one
//! closed-loop run. It spawns one worker per connection (over HTTP/2, per stream, the streams
//! dealt out over a few shared connections); workers share a counter of operation
//! indices. In open loop a worker takes index `i`; if `i` is already due (every connection was
//! busy: a backlog) it sends at once and measures latency from the due time, so a stalled
//! server is charged for every request it delayed (no coordinated omission); otherwise it
//! sleeps until `i` is due and measures from the actual send, so the timer's lateness (tokio
//! timers tick every millisecond) is not charged to the server. Both lags are reported as
//! `send_lag`. In closed loop a worker sends as soon as its previous
//! response arrived and measures from the send. A reporter prints one progress line a second.
//!
//! Bounds: an open-loop phase issues at most `Timetable::num_requests` operations and stops
//! issuing one second after its duration (operations still unsent then are counted as
//! `num_unsent`, a sign the generator or server could not keep up); a closed-loop phase stops
//! issuing at its duration; every request has a timeout. So a phase ends by itself within
//! `duration + 1 s + timeout`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

use crate::client::{Client, TransportError};
use crate::http::{Endpoint, Method};
use crate::http2::H2Conn;
use crate::limits::{ACKS_REMEMBERED_MAX, IN_DOUBT_MAX};
use crate::model::{EntryAck, LedgerModel, Reservoir, TransferAck};
use crate::progress::{reporter, SecondSample};
use crate::stats::{Class, Recorder};
use crate::workload::{OpKind, Plan, Workload};

/// Pause after a failed connect before the worker goes on.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Everything workers share.
pub struct Context {
    /// Where requests go.
    pub endpoint: Endpoint,
    /// What to send.
    pub workload: Workload,
    /// What the server should hold afterwards.
    pub model: LedgerModel,
    /// Every account ID, the workload's followed by the treasury (model indices).
    pub account_ids_all: Vec<String>,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Runtime threads of the generator (recorders are striped by it).
    pub threads: usize,
    /// With `--http2`, the connections a phase spreads its workers' streams over (at most one
    /// per worker); unused over HTTP/1.1, where each worker has a connection of its own.
    pub h2_connections: usize,
    /// The server's process on this machine (`--server-pid`), whose CPU time each phase reads.
    pub server_pid_opt: Option<u32>,
}

/// How a phase paces its operations.
#[derive(Debug, Clone, Copy)]
pub enum Pacing {
    /// Open loop on a timetable.
    Open {
        /// Rate and duration.
        timetable: crate::schedule::Timetable,
        /// Operations due before this offset are not counted in the totals.
        warmup: Duration,
    },
    /// Closed loop: each worker sends its next operation when the previous one is answered.
    Closed {
        /// How long operations are issued.
        duration: Duration,
        /// Operations started before this offset are not counted in the totals.
        warmup: Duration,
    },
}

/// A write whose outcome is unknown, kept to be resolved by sending it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InDoubt {
    /// Operation index: the plan and the IDs are recomputed from it.
    pub index: u64,
    /// Positions inside a batch that are in doubt (`None`: the whole operation).
    pub positions_opt: Option<Vec<usize>>,
}

/// Acknowledgements and doubts collected by workers.
#[derive(Default)]
pub struct Acks {
    /// Transfers remembered for lookup (a sample beyond the limit).
    pub transfers: Vec<TransferAck>,
    /// Transfers acknowledged in total.
    pub num_transfers_seen: u64,
    /// Entries remembered for lookup (a sample beyond the limit).
    pub entries: Vec<EntryAck>,
    /// Entries acknowledged in total.
    pub num_entries_seen: u64,
    /// Writes of unknown outcome.
    pub in_doubt: Vec<InDoubt>,
    /// Writes of unknown outcome that did not fit under `IN_DOUBT_MAX`.
    pub num_in_doubt_dropped: u64,
}

impl Acks {
    /// Adds the acknowledgements of a later phase.
    pub fn absorb_acks(&mut self, other: Acks) {
        self.transfers.extend(other.transfers);
        self.num_transfers_seen += other.num_transfers_seen;
        self.entries.extend(other.entries);
        self.num_entries_seen += other.num_entries_seen;
        let room = IN_DOUBT_MAX.saturating_sub(self.in_doubt.len());
        let dropped = other.in_doubt.len().saturating_sub(room);
        self.in_doubt.extend(other.in_doubt.into_iter().take(room));
        self.num_in_doubt_dropped += other.num_in_doubt_dropped + dropped as u64;
        self.transfers.truncate(ACKS_REMEMBERED_MAX);
        self.entries.truncate(ACKS_REMEMBERED_MAX);
    }

    fn absorb(&mut self, worker: WorkerAcks) {
        self.transfers.extend(worker.transfers.items);
        self.num_transfers_seen += worker.transfers.num_seen;
        self.entries.extend(worker.entries.items);
        self.num_entries_seen += worker.entries.num_seen;
        let room = IN_DOUBT_MAX.saturating_sub(self.in_doubt.len());
        let dropped = worker.in_doubt.len().saturating_sub(room);
        self.in_doubt.extend(worker.in_doubt.into_iter().take(room));
        self.num_in_doubt_dropped += worker.num_in_doubt_dropped + dropped as u64;
        // Across sweep steps the sample could outgrow the limit: keep the first part, which
        // is still a sample of every step.
        self.transfers.truncate(ACKS_REMEMBERED_MAX);
        self.entries.truncate(ACKS_REMEMBERED_MAX);
    }
}

/// What one phase measured.
pub struct PhaseResult {
    /// Merged statistics of every worker (warm-up excluded).
    pub recorder: Recorder,
    /// One sample per second of progress.
    pub seconds: Vec<SecondSample>,
    /// Time from the phase's start to its last response, warm-up included.
    pub elapsed: Duration,
    /// Length of the measured part (after warm-up).
    pub measured: Duration,
    /// Operations issued, warm-up included.
    pub num_issued: u64,
    /// Open loop: operations still unsent when issuing stopped.
    pub num_unsent: u64,
    /// Requests sent in the phase, warm-up included.
    pub num_requests_all: u64,
    /// CPU time the generator process used during the phase, s (`None` off Linux).
    pub generator_cpu_s_opt: Option<f64>,
    /// CPU time the server (`--server-pid`) used during the phase, s.
    pub server_cpu_s_opt: Option<f64>,
}

struct WorkerAcks {
    transfers: Reservoir<TransferAck>,
    entries: Reservoir<EntryAck>,
    in_doubt: Vec<InDoubt>,
    num_in_doubt_dropped: u64,
}

/// Runs one phase with `num_workers` requests in flight at most; `index_base` is the index of
/// its first operation.
pub async fn run_phase(
    ctx: Arc<Context>,
    pacing: Pacing,
    num_workers: usize,
    index_base: u64,
    label: &str,
    hdr_log: Option<&crate::progress::HdrLogSink>,
) -> (PhaseResult, Acks) {
    let cpu_before_opt = process_cpu_s();
    let server_cpu_before_opt = ctx.server_pid_opt.and_then(server_cpu_s);
    let start = Instant::now() + Duration::from_millis(10);
    let next = Arc::new(AtomicU64::new(0));
    // Operations actually sent; `next` also counts indices taken after issuing stopped.
    let sent = Arc::new(AtomicU64::new(0));
    // Workers share one recorder per runtime thread: a recorder holds a dozen histograms of
    // ~140 KiB, and one per connection made resetting and merging them the generator's main
    // cost at a few hundred connections. On one thread the mutex is never contended.
    let num_stripes = ctx.threads.clamp(1, num_workers.max(1));
    let recorders: Vec<Arc<Mutex<Recorder>>> = (0..num_stripes)
        .map(|_| Arc::new(Mutex::new(Recorder::new())))
        .collect();
    let acks_per_worker = (ACKS_REMEMBERED_MAX / num_workers.max(1)).max(1);
    // Over HTTP/2 the workers' requests are streams on a few shared connections, dealt out
    // round robin; they close once the phase's last worker has dropped its client.
    let h2_conns: Vec<Arc<H2Conn>> = match ctx.endpoint.http2 {
        true => (0..ctx.h2_connections.clamp(1, num_workers.max(1)))
            .map(|_| Arc::new(H2Conn::new(ctx.endpoint.clone())))
            .collect(),
        false => Vec::new(),
    };
    let mut handles = Vec::with_capacity(num_workers);
    for n in 0..num_workers {
        let client = match h2_conns.is_empty() {
            true => Client::new(ctx.endpoint.clone(), ctx.timeout),
            false => Client::over(
                h2_conns[n % h2_conns.len()].clone(),
                ctx.endpoint.clone(),
                ctx.timeout,
            ),
        };
        let worker = Worker {
            ctx: ctx.clone(),
            client,
            recorder: recorders[n % num_stripes].clone(),
            acks: WorkerAcks {
                transfers: Reservoir::new(acks_per_worker, index_base ^ n as u64),
                entries: Reservoir::new(acks_per_worker, !index_base ^ n as u64),
                in_doubt: Vec::new(),
                num_in_doubt_dropped: 0,
            },
            body: String::with_capacity(256),
            path: String::with_capacity(128),
            response: Vec::with_capacity(1024),
        };
        let counters = (next.clone(), sent.clone());
        handles.push(tokio::spawn(
            worker.run(pacing, start, counters, index_base),
        ));
    }
    let done = Arc::new(AtomicBool::new(false));
    let target = match pacing {
        Pacing::Open { timetable, .. } => (Some(timetable.rate_per_s), timetable.duration),
        Pacing::Closed { duration, .. } => (None, duration),
    };
    let report = reporter(&recorders, start, target, label, done.clone(), hdr_log);
    let join = async {
        let mut outputs = Vec::with_capacity(handles.len());
        for handle in handles {
            // A worker panics only on a broken invariant; propagate it.
            outputs.push(handle.await.expect("worker panicked"));
        }
        done.store(true, Ordering::Release);
        outputs
    };
    let (outputs, seconds) = tokio::join!(join, report);
    let elapsed = start.elapsed();
    let mut merged = Recorder::new();
    for recorder in &recorders {
        merged.merge(&recorder.lock());
    }
    let mut acks = Acks::default();
    for worker_acks in outputs {
        acks.absorb(worker_acks);
    }
    let (issued, num_unsent, warmup) = match pacing {
        Pacing::Open { timetable, warmup } => {
            let issued = sent.load(Ordering::Relaxed);
            (
                issued,
                timetable.num_requests().saturating_sub(issued),
                warmup,
            )
        }
        Pacing::Closed { warmup, .. } => (sent.load(Ordering::Relaxed), 0, warmup),
    };
    let measured = elapsed.saturating_sub(warmup);
    let generator_cpu_s_opt = cpu_before_opt.zip(process_cpu_s()).map(|(a, b)| b - a);
    let server_cpu_after_opt = ctx.server_pid_opt.and_then(server_cpu_s);
    let server_cpu_s_opt = server_cpu_before_opt
        .zip(server_cpu_after_opt)
        .map(|(a, b)| b - a);
    let num_requests_all = merged.num_requests_all;
    let result = PhaseResult {
        num_requests_all,
        recorder: merged,
        seconds,
        elapsed,
        measured,
        num_issued: issued,
        num_unsent,
        generator_cpu_s_opt,
        server_cpu_s_opt,
    };
    (result, acks)
}

/// How a write ended, as far as the generator can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Acknowledged: the money moved.
    Committed,
    /// Definitively refused (4xx): nothing moved.
    Refused,
    /// Unknown (timeout, broken connection, 5xx): resolved after the run.
    InDoubt,
}

impl Fate {
    fn combine(self, other: Fate) -> Fate {
        match (self, other) {
            (Fate::Committed, _) | (_, Fate::Committed) => Fate::Committed,
            (Fate::InDoubt, _) | (_, Fate::InDoubt) => Fate::InDoubt,
            _ => Fate::Refused,
        }
    }
}

struct Worker {
    ctx: Arc<Context>,
    client: Client,
    recorder: Arc<Mutex<Recorder>>,
    acks: WorkerAcks,
    /// Request body, reused.
    body: String,
    /// Request path, reused.
    path: String,
    /// Response body, reused.
    response: Vec<u8>,
}

impl Worker {
    async fn run(
        mut self,
        pacing: Pacing,
        start: Instant,
        (next, sent): (Arc<AtomicU64>, Arc<AtomicU64>),
        index_base: u64,
    ) -> WorkerAcks {
        match pacing {
            Pacing::Open { timetable, warmup } => {
                let num_requests = timetable.num_requests();
                let first_measured = timetable.first_index_at(warmup);
                let issue_until = start + timetable.duration + Duration::from_secs(1);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= num_requests {
                        break;
                    }
                    let due = start + timetable.due_offset(i);
                    let now = Instant::now();
                    if now >= issue_until {
                        break;
                    }
                    // Latency is charged from the due time when the request was already due as
                    // this connection freed up (a backlog the server caused, or coordinated
                    // omission would hide it); when the worker had to sleep, from the actual
                    // send, so that the timer's 1 ms granularity is not charged to the server.
                    let origin = if due > now {
                        tokio::time::sleep_until(due.into()).await;
                        Instant::now().max(due)
                    } else {
                        due
                    };
                    let measured = i >= first_measured;
                    if measured {
                        let lag_us = micros(due.elapsed());
                        crate::stats::record_us(&mut self.recorder.lock().send_lag, lag_us);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    self.execute(index_base + i, origin, measured).await;
                }
            }
            Pacing::Closed { duration, warmup } => {
                let deadline = start + duration;
                let measure_from = start + warmup;
                let now = Instant::now();
                if now < start {
                    tokio::time::sleep_until(start.into()).await;
                }
                loop {
                    let origin = Instant::now();
                    if origin >= deadline {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    self.execute(index_base + i, origin, origin >= measure_from)
                        .await;
                }
            }
        }
        let mut recorder = self.recorder.lock();
        recorder.num_responses_http1 += self.client.num_responses_http1;
        recorder.num_responses_http2 += self.client.num_responses_http2;
        drop(recorder);
        self.acks
    }

    async fn send(&mut self, method: Method, path_in_self: bool) -> Result<u16, TransportError> {
        let path = if path_in_self {
            self.path.as_str()
        } else {
            "/v1/transfers"
        };
        let reply = self
            .client
            .call_into(method, path, self.body.as_bytes(), &mut self.response)
            .await;
        if reply == Err("connect") {
            // A server that refuses connections would otherwise turn a closed loop into a
            // busy loop of connect calls; the pause is part of the failed request's latency.
            tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
        }
        reply
    }

    fn record(
        &self,
        op: OpKind,
        started: Instant,
        reply: Result<u16, TransportError>,
        measured: bool,
    ) {
        let (key, class) = classify(reply, &self.response);
        self.recorder
            .lock()
            .record(op, micros(started.elapsed()), &key, class, measured);
    }

    async fn execute(&mut self, index: u64, origin: Instant, measured: bool) {
        let ctx = self.ctx.clone();
        match ctx.workload.plan(index) {
            Plan::Transfer {
                from,
                to,
                amount_minor,
                retry,
            } => {
                self.transfer(index, (from, to, amount_minor), retry, origin, measured)
                    .await;
            }
            Plan::Batch { transfers } => self.batch(index, &transfers, origin, measured).await,
            Plan::Entry {
                account,
                credit,
                amount_minor,
            } => {
                let id = ctx.workload.entry_id(index);
                ctx.workload
                    .render_entry(&mut self.body, &id, credit, amount_minor);
                set_path(
                    &mut self.path,
                    &[
                        "/v1/accounts/",
                        &ctx.workload.account_ids[account],
                        "/entries",
                    ],
                );
                let reply = self.send(Method::Post, true).await;
                self.record(OpKind::Entry, origin, reply, measured);
                match transfer_fate(reply, &self.response) {
                    Fate::Committed => {
                        ctx.model.apply_entry(account, credit, amount_minor);
                        let kind = if credit { "credit" } else { "debit" };
                        let account_id = &ctx.workload.account_ids[account];
                        self.acks.entries.offer(|| EntryAck {
                            id,
                            account: account_id.clone(),
                            kind: kind.to_string(),
                            amount_minor,
                        });
                    }
                    Fate::InDoubt => self.doubt(index, None),
                    Fate::Refused => {}
                }
            }
            Plan::Balance { account } => {
                set_path(
                    &mut self.path,
                    &["/v1/accounts/", &ctx.workload.account_ids[account]],
                );
                self.read(OpKind::Balance, origin, measured).await;
            }
            Plan::Daily { account } => {
                let (from, to) = &ctx.workload.daily_range;
                let id = &ctx.workload.account_ids[account];
                set_path(
                    &mut self.path,
                    &["/v1/accounts/", id, "/daily?from=", from, "&to=", to],
                );
                self.read(OpKind::Daily, origin, measured).await;
            }
            Plan::Movements { account } => {
                let id = &ctx.workload.account_ids[account];
                set_path(
                    &mut self.path,
                    &["/v1/accounts/", id, "/movements?limit=20"],
                );
                self.read(OpKind::Movements, origin, measured).await;
            }
            Plan::Healthz => {
                set_path(&mut self.path, &["/healthz"]);
                self.read(OpKind::Healthz, origin, measured).await;
            }
            Plan::Invalid { kind, from, to } => {
                ctx.workload
                    .render_invalid(&mut self.body, index, kind, from, to);
                let reply = self.send(Method::Post, false).await;
                if matches!(reply, Ok(status) if (200..300).contains(&status)) {
                    ctx.model
                        .num_invalid_accepted
                        .fetch_add(1, Ordering::Relaxed);
                    let micros = micros(origin.elapsed());
                    let mut recorder = self.recorder.lock();
                    recorder.record(OpKind::Invalid, micros, "accepted", Class::Error, measured);
                } else {
                    self.record(OpKind::Invalid, origin, reply, measured);
                }
            }
        }
        self.recorder.lock().record_op_done(measured);
    }

    async fn read(&mut self, op: OpKind, origin: Instant, measured: bool) {
        self.body.clear();
        let reply = self.send(Method::Get, true).await;
        self.record(op, origin, reply, measured);
    }

    async fn transfer(
        &mut self,
        index: u64,
        (from, to, amount_minor): (usize, usize, i64),
        retry: bool,
        origin: Instant,
        measured: bool,
    ) {
        let ctx = self.ctx.clone();
        let id = ctx.workload.transfer_id(index);
        ctx.workload
            .render_transfer(&mut self.body, &id, from, to, amount_minor);
        let reply = self.send(Method::Post, false).await;
        self.record(OpKind::Transfer, origin, reply, measured);
        let mut fate = transfer_fate(reply, &self.response);
        if retry {
            let sent = Instant::now();
            let again = self.send(Method::Post, false).await;
            self.record(OpKind::TransferRetry, sent, again, measured);
            if reply == Ok(201) && again == Ok(201) {
                ctx.model
                    .num_idempotency_violations
                    .fetch_add(1, Ordering::Relaxed);
            }
            fate = fate.combine(transfer_fate(again, &self.response));
        }
        match fate {
            Fate::Committed => {
                ctx.model.apply_transfer(from, to, amount_minor);
                self.recorder.lock().record_committed(1, measured);
                let ids = &ctx.workload.account_ids;
                self.acks.transfers.offer(|| TransferAck {
                    id,
                    from: ids[from].clone(),
                    to: ids[to].clone(),
                    amount_minor,
                });
            }
            Fate::InDoubt => self.doubt(index, None),
            Fate::Refused => {}
        }
    }

    async fn batch(
        &mut self,
        index: u64,
        transfers: &[(usize, usize, i64)],
        origin: Instant,
        measured: bool,
    ) {
        let ctx = self.ctx.clone();
        ctx.workload.render_batch(&mut self.body, index, transfers);
        set_path(&mut self.path, &["/v1/transfers/batch"]);
        let reply = self.send(Method::Post, true).await;
        self.record(OpKind::TransferBatch, origin, reply, measured);
        let fates = match reply {
            Ok(200) => batch_fates(&self.response, transfers.len()),
            other => vec![(write_fate(other), Cow::Borrowed("request_failed")); transfers.len()],
        };
        let mut num_committed = 0;
        let mut doubtful = Vec::new();
        let mut recorder = self.recorder.lock();
        for (position, (fate, key)) in fates.into_iter().enumerate() {
            let (from, to, amount_minor) = transfers[position];
            match fate {
                Fate::Committed => {
                    num_committed += 1;
                    ctx.model.apply_transfer(from, to, amount_minor);
                    let ids = &ctx.workload.account_ids;
                    self.acks.transfers.offer(|| TransferAck {
                        id: ctx.workload.batch_transfer_id(index, position),
                        from: ids[from].clone(),
                        to: ids[to].clone(),
                        amount_minor,
                    });
                    recorder.record_items("committed", Class::Ok, 1, measured);
                }
                Fate::Refused => recorder.record_items(&key, Class::Rejected, 1, measured),
                Fate::InDoubt => {
                    doubtful.push(position);
                    recorder.record_items(&key, Class::Error, 1, measured);
                }
            }
        }
        recorder.record_committed(num_committed, measured);
        drop(recorder);
        if !doubtful.is_empty() {
            self.doubt(index, Some(doubtful));
        }
    }

    fn doubt(&mut self, index: u64, positions_opt: Option<Vec<usize>>) {
        if self.acks.in_doubt.len() < IN_DOUBT_MAX {
            self.acks.in_doubt.push(InDoubt {
                index,
                positions_opt,
            });
        } else {
            self.acks.num_in_doubt_dropped += 1;
        }
    }
}

fn set_path(path: &mut String, parts: &[&str]) {
    path.clear();
    for part in parts {
        path.push_str(part);
    }
}

/// Returns the CPU time (user + system) this process has used, in seconds, read from
/// `/proc/self/stat`; `None` where that file does not exist.
pub fn process_cpu_s() -> Option<f64> {
    cpu_s_of("/proc/self/stat")
}

/// Returns the CPU time (user + system) process `pid` of this machine has used, in seconds
/// (`--server-pid`); `None` when it cannot be read.
pub fn server_cpu_s(pid: u32) -> Option<f64> {
    cpu_s_of(&format!("/proc/{pid}/stat"))
}

fn cpu_s_of(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux that saldo targets.
    #[allow(clippy::cast_precision_loss)]
    let seconds = (utime + stime) as f64 / 100.0;
    Some(seconds)
}

/// Returns microseconds, saturating.
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[derive(Deserialize)]
struct ProblemCode<'a> {
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StatusField<'a> {
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
}

/// Returns the outcome key and class of a reply: `ok`, the problem `code`, `http_NNN`, or the
/// transport failure's key.
pub fn classify(reply: Result<u16, TransportError>, body: &[u8]) -> (Cow<'static, str>, Class) {
    let status = match reply {
        Ok(status) => status,
        Err(key) => return (Cow::Borrowed(key), Class::Error),
    };
    let class = match status {
        200..=299 => return (Cow::Borrowed("ok"), Class::Ok),
        // Load shedding is an error, not a business answer: it must count against objectives.
        429 => Class::Error,
        400..=499 => Class::Rejected,
        _ => Class::Error,
    };
    let code = serde_json::from_slice::<ProblemCode>(body)
        .ok()
        .and_then(|p| p.code);
    match code {
        Some(code) => (Cow::Owned(code.into_owned()), class),
        None => (Cow::Owned(format!("http_{status}")), class),
    }
}

fn write_fate(reply: Result<u16, TransportError>) -> Fate {
    match reply {
        Ok(200..=299) => Fate::Committed,
        Ok(400..=499) => Fate::Refused,
        _ => Fate::InDoubt,
    }
}

/// Returns the fate of a single transfer or entry from its reply: committed only on a 2xx
/// whose `status` is `committed` (or absent); `pending` (202) is in doubt until resolved.
pub(crate) fn transfer_fate(reply: Result<u16, TransportError>, body: &[u8]) -> Fate {
    match write_fate(reply) {
        Fate::Committed => {
            let status = serde_json::from_slice::<StatusField>(body)
                .ok()
                .and_then(|s| s.status);
            match status.as_deref() {
                None | Some("committed") => Fate::Committed,
                Some(_) => Fate::InDoubt,
            }
        }
        other => other,
    }
}

/// Returns the fate and outcome key of every transfer of a 200 batch response. Results
/// missing from the response are in doubt.
///
/// The body is read into borrowed fields, skipping what the fates do not need: a batch of
/// 8,189 results as a `serde_json::Value` tree cost the generator more CPU than the server
/// spent on the transfers themselves.
pub(crate) fn batch_fates(body: &[u8], num_transfers: usize) -> Vec<(Fate, Cow<'static, str>)> {
    let mut fates = vec![(Fate::InDoubt, Cow::Borrowed("missing_result")); num_transfers];
    let Ok(response) = serde_json::from_slice::<BatchBody>(body) else {
        return fates;
    };
    for (fate, result) in fates.iter_mut().zip(&response.results) {
        *fate = item_fate(result);
    }
    fates
}

/// What [`batch_fates`] reads of a batch response; other fields are skipped.
#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow, default)]
    results: Vec<ItemBody<'a>>,
}

/// One result: the gateway's shape is `{"id","status": <HTTP status>, "transfer"?: {...},
/// "error"?: {...}}`; a flat `{"status": "committed"}` or `{"code": …}` is understood as well.
#[derive(Deserialize)]
struct ItemBody<'a> {
    #[serde(borrow, default)]
    status: Option<StatusValue<'a>>,
    #[serde(borrow, default)]
    transfer: Option<TransferPart<'a>>,
    #[serde(borrow, default)]
    error: Option<ErrorPart<'a>>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct TransferPart<'a> {
    #[serde(borrow, default)]
    status: Option<StatusValue<'a>>,
}

#[derive(Deserialize)]
struct ErrorPart<'a> {
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
}

/// A `status` field: an HTTP status, a transfer's status text, or anything else (ignored).
enum StatusValue<'a> {
    Http(u64),
    Text(Cow<'a, str>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for StatusValue<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = StatusValue<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a status number or text")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(StatusValue::Http(v))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(StatusValue::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(StatusValue::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(StatusValue::Other)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(StatusValue::Other)
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StatusValue::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StatusValue::Text(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

impl StatusValue<'_> {
    fn text(&self) -> Option<&str> {
        match self {
            StatusValue::Text(text) => Some(text),
            _ => None,
        }
    }
}

fn item_fate(result: &ItemBody) -> (Fate, Cow<'static, str>) {
    let transfer_status = result
        .transfer
        .as_ref()
        .and_then(|t| t.status.as_ref())
        .or(result.status.as_ref())
        .and_then(StatusValue::text);
    match transfer_status {
        Some("committed") => return (Fate::Committed, Cow::Borrowed("committed")),
        Some("pending") => return (Fate::InDoubt, Cow::Borrowed("pending")),
        _ => {}
    }
    let code = result
        .error
        .as_ref()
        .and_then(|e| e.code.as_deref())
        .or(result.code.as_deref());
    let server_side = matches!(result.status, Some(StatusValue::Http(s)) if s >= 500);
    match code {
        Some(code) if !server_side => (Fate::Refused, Cow::Owned(code.to_string())),
        Some(code) => (Fate::InDoubt, Cow::Owned(code.to_string())),
        None => (Fate::InDoubt, Cow::Borrowed("unknown_result")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_classified_by_status_and_problem_code() {
        assert_eq!(classify(Ok(201), b"{}"), (Cow::Borrowed("ok"), Class::Ok));
        let problem = br#"{"type":"about:blank","code":"insufficient_funds","status":422}"#;
        assert_eq!(classify(Ok(422), problem).0, "insufficient_funds");
        assert_eq!(classify(Ok(422), problem).1, Class::Rejected);
        assert_eq!(
            classify(Ok(503), br#"{"code":"unavailable"}"#).1,
            Class::Error
        );
        let shed = classify(Ok(429), br#"{"code":"rate_limited"}"#);
        assert_eq!(shed, (Cow::Borrowed("rate_limited"), Class::Error));
        assert_eq!(classify(Ok(404), b"not json").0, "http_404");
        assert_eq!(classify(Err("timeout"), b"").0, "timeout");
    }

    #[test]
    fn a_transfer_is_committed_only_when_the_server_says_so() {
        assert_eq!(
            transfer_fate(Ok(201), br#"{"status":"committed"}"#),
            Fate::Committed
        );
        assert_eq!(
            transfer_fate(Ok(200), br#"{"status":"committed"}"#),
            Fate::Committed
        );
        assert_eq!(
            transfer_fate(Ok(201), br#"{"status":"held"}"#),
            Fate::InDoubt
        );
        assert_eq!(transfer_fate(Ok(422), b"{}"), Fate::Refused);
        assert_eq!(transfer_fate(Ok(503), b"{}"), Fate::InDoubt);
        assert_eq!(transfer_fate(Err("io"), b""), Fate::InDoubt);
    }

    #[test]
    fn process_cpu_time_is_readable_and_monotonic() {
        let Some(before) = process_cpu_s() else {
            return;
        };
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(process_cpu_s().unwrap() >= before);
    }

    #[test]
    fn a_retry_commits_if_either_attempt_committed() {
        assert_eq!(Fate::Refused.combine(Fate::Committed), Fate::Committed);
        assert_eq!(Fate::InDoubt.combine(Fate::Refused), Fate::InDoubt);
        assert_eq!(Fate::Refused.combine(Fate::Refused), Fate::Refused);
    }

    #[test]
    fn batch_results_are_read_in_order_and_missing_ones_are_in_doubt() {
        let body = br#"{"results":[{"id":"a","status":"committed"},
            {"id":"b","code":"insufficient_funds","status":422},
            {"id":"c","error":{"code":"same_account"}}]}"#;
        let fates = batch_fates(body, 4);
        assert_eq!(fates[0].0, Fate::Committed);
        assert_eq!(
            fates[1],
            (Fate::Refused, Cow::Borrowed("insufficient_funds"))
        );
        assert_eq!(fates[2].0, Fate::Refused);
        assert_eq!(fates[3].0, Fate::InDoubt);
    }

    #[test]
    fn batch_results_in_the_gateway_shape_are_read_and_server_errors_are_in_doubt() {
        let body = br#"{"atomic":false,"results":[
            {"id":"a","status":201,"transfer":{"id":"a","status":"committed","amount":"1.00",
             "meta":{"nested":[1,2,{"x":null}]}}},
            {"id":"b","status":422,"error":{"type":"about:blank","code":"insufficient_funds","status":422}},
            {"id":"c","status":503,"error":{"code":"unavailable","status":503}},
            {"id":"d\u0041","status":200,"transfer":{"status":"pending"}},
            {"id":"e","status":201,"transfer":{"status":"committed"}}]}"#;
        let fates = batch_fates(body, 5);
        assert_eq!(fates[0], (Fate::Committed, Cow::Borrowed("committed")));
        assert_eq!(
            fates[1],
            (Fate::Refused, Cow::Borrowed("insufficient_funds"))
        );
        assert_eq!(fates[2], (Fate::InDoubt, Cow::Borrowed("unavailable")));
        assert_eq!(fates[3], (Fate::InDoubt, Cow::Borrowed("pending")));
        assert_eq!(fates[4].0, Fate::Committed);
        let truncated = &body[..body.len() - 10];
        assert!(batch_fates(truncated, 5)
            .iter()
            .all(|f| f.0 == Fate::InDoubt));
    }
}
