//! Group commit: a shard's events wait in one buffer while the previous batch is written, and
//! the whole buffer becomes one stream record, made durable by one `Wal::append`.
//!
//! Appenders get a [`Ticket`] (their LSN and the batch's completion signal) and may apply the
//! event in memory at once; whoever must not act on a record a crash could undo (a reply to a
//! client, a phase message to another shard, a read) waits on the ticket first. At most two
//! batches exist per shard (one being written, one filling); a full filling batch makes
//! appenders wait: backpressure instead of unbounded memory.
//!
//! The writer writes a batch as soon as someone waits for it (the first `durable()` on one of
//! its tickets tells it), when it is full, or when it collected [`WAL_AMORTIZED_EVENTS`] while
//! the previous batch was written (they have waited one append already); any other batch
//! lingers up to
//! [`WAL_UNDEMANDED_FLUSH_US`]. So events appended microseconds apart with only the last one
//! awaited (the accounts of a batch's phase, say) share one record and one fsync instead of
//! paying one each in a row, and under load the writer never lingers.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use saldo_persistence::{record, Lsn, RecordHash, Wal};
use tokio::sync::Notify;

use crate::{
    event::{self, Event},
    limits::{
        STREAM_PROBE_INTERVAL_MS_MAX, STREAM_PROBE_INTERVAL_MS_MIN, WAL_AMORTIZED_EVENTS,
        WAL_BATCH_BYTES_MAX, WAL_BATCH_EVENTS_MAX, WAL_UNDEMANDED_FLUSH_US,
    },
    movements::Settlement,
    stats::Histogram,
    types::LedgerError,
};

/// The health of a node's streams, shared by its shard writers: which shards failed, and
/// whether a failed stream takes writes again.
///
/// A failed append leaves the shard's memory ahead of its stream (events applied but not
/// durable, claims pending) and, on a file, an unknown tail (after a failed fsync the page
/// cache cannot be trusted). Rebuilding that inside the running process would have to stop
/// the shard's actors, refold it and settle every claim and cross-shard phase in flight,
/// which is what a restart does, and better tested. So the node is fail-stop: a failed shard
/// refuses writes (503), `/readyz` says so, reads of durable state still answer; its writer
/// probes the stream with bounded backoff, and once the stream takes a record again
/// `restart_required` fires and the binary exits non-zero for its supervisor to restart it
/// (docs/runbook.md).
#[derive(Default)]
pub(crate) struct StreamHealth {
    /// Failed shards and the cause, in the order they failed.
    failed: Mutex<Vec<(u32, String)>>,
    /// Cancelled on the first failure: callers waiting on a movement whose outcome can no
    /// longer be known in this process stop waiting (503; a retry after the restart is safe).
    pub(crate) any_failed: tokio_util::sync::CancellationToken,
    /// Cancelled when a failed shard's stream takes writes again.
    pub(crate) restart_required: tokio_util::sync::CancellationToken,
}

impl StreamHealth {
    /// Returns the failed shards with their cause.
    pub(crate) fn failed(&self) -> Vec<(u32, String)> {
        self.failed.lock().clone()
    }

    fn mark_failed(&self, shard: u32, cause: String) {
        self.failed.lock().push((shard, cause));
        self.any_failed.cancel();
    }
}

const PENDING: u8 = 0;
const DURABLE: u8 = 1;
const FAILED: u8 = 2;

/// Completion of one batch.
pub(crate) struct BatchSignal {
    state: AtomicU8,
    notify: Notify,
    /// Someone waits for this batch: the writer must not linger on it.
    demanded: AtomicBool,
    /// The shard writer's wake-up.
    wake_writer: Arc<Notify>,
}

impl BatchSignal {
    fn new(wake_writer: &Arc<Notify>) -> Arc<BatchSignal> {
        Arc::new(BatchSignal {
            state: AtomicU8::new(PENDING),
            notify: Notify::new(),
            demanded: AtomicBool::new(false),
            wake_writer: wake_writer.clone(),
        })
    }

    fn is_demanded(&self) -> bool {
        self.demanded.load(Ordering::Acquire)
    }

    fn complete(&self, ok: bool) {
        self.state
            .store(if ok { DURABLE } else { FAILED }, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Someone needs this batch durable: the writer must not linger on it.
    fn demand(&self) {
        if self.state.load(Ordering::Acquire) == PENDING
            && !self.demanded.swap(true, Ordering::AcqRel)
        {
            // First demand: tell the writer (harmless if the batch is already being written).
            self.wake_writer.notify_one();
        }
    }

    async fn wait(&self) -> Result<(), LedgerError> {
        self.demand();
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.state.load(Ordering::Acquire) {
                DURABLE => return Ok(()),
                FAILED => {
                    return Err(LedgerError::Unavailable {
                        reason: "write-ahead stream failed",
                    })
                }
                _ => notified.await,
            }
        }
    }
}

/// Proof of an append: wait on it before acting on the event outside the shard.
#[derive(Clone)]
pub(crate) struct Ticket {
    pub(crate) lsn: Lsn,
    signal: Arc<BatchSignal>,
}

impl Ticket {
    /// Asks for the event's batch to be written without the linger, for someone who will not
    /// wait on the ticket but needs the record durable soon (a phase that crosses shards next).
    pub(crate) fn demand(&self) {
        self.signal.demand();
    }

    /// Returns once the event is durable.
    pub(crate) async fn durable(&self) -> Result<Lsn, LedgerError> {
        self.signal.wait().await.map(|()| self.lsn)
    }
}

struct Filling {
    next_lsn: Lsn,
    first_lsn: Lsn,
    num_events: usize,
    payload: Vec<u8>,
    signal: Arc<BatchSignal>,
    /// The batch being written: (last lsn, signal).
    writing_opt: Option<(Lsn, Arc<BatchSignal>)>,
    /// The previous batch's payload buffer, emptied, for the next batch (no allocation, and
    /// no growth, per batch).
    spare_payload: Vec<u8>,
    /// Movements settled once the filling batch is durable.
    settlements: Vec<Settlement>,
    /// Movements settled once the batch being written is durable.
    writing_settlements: Vec<Settlement>,
    failed: bool,
}

/// One shard's group-commit log.
pub(crate) struct ShardLog {
    shard: u32,
    epoch: u64,
    filling: Mutex<Filling>,
    durable_lsn: AtomicU64,
    /// Wakes the writer: the first event of a batch, the first waiter on it, a full batch.
    wake_writer: Arc<Notify>,
    /// Wakes appenders waiting for room.
    room: Notify,
    linger: Duration,
    /// Run after the settlements of a durable record: sends on, batched per destination, the
    /// messages that the settlements queued (`Node::flush_outbox`).
    after_settle: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    pub(crate) append_latency_us: Histogram,
    pub(crate) batch_events: Histogram,
}

/// Outcome of a non-waiting append.
pub(crate) enum TryAppend {
    Appended(Ticket),
    Full,
}

impl ShardLog {
    pub(crate) fn new(shard: u32, epoch: u64, tail_lsn: Lsn, linger: Duration) -> ShardLog {
        let wake_writer = Arc::new(Notify::new());
        ShardLog {
            shard,
            epoch,
            filling: Mutex::new(Filling {
                next_lsn: tail_lsn + 1,
                first_lsn: tail_lsn + 1,
                num_events: 0,
                payload: Vec::with_capacity(64 * 1024),
                signal: BatchSignal::new(&wake_writer),
                writing_opt: None,
                spare_payload: Vec::with_capacity(64 * 1024),
                settlements: Vec::new(),
                writing_settlements: Vec::new(),
                failed: false,
            }),
            durable_lsn: AtomicU64::new(tail_lsn),
            wake_writer,
            room: Notify::new(),
            linger,
            after_settle: std::sync::OnceLock::new(),
            append_latency_us: Histogram::latency_us(),
            batch_events: Histogram::counts(),
        }
    }

    /// Sets what runs after the settlements of each durable record (once, at start).
    pub(crate) fn set_after_settle(&self, hook: Box<dyn Fn() + Send + Sync>) {
        assert!(
            self.after_settle.set(hook).is_ok(),
            "after_settle is set once"
        );
    }

    fn run_after_settle(&self) {
        if let Some(hook) = self.after_settle.get() {
            hook();
        }
    }

    /// Returns the highest durable LSN.
    pub(crate) fn durable_lsn(&self) -> Lsn {
        self.durable_lsn.load(Ordering::Acquire)
    }

    /// Returns the highest LSN handed out (durable or not).
    pub(crate) fn assigned_lsn(&self) -> Lsn {
        self.filling.lock().next_lsn - 1
    }

    /// Appends without waiting; `Full` when the filling batch has no room. Called only under
    /// the shard's host lock (`host`): appends of one shard never race, so a turn that saw
    /// [`ShardLog::room_for`] `n` events appends them without a `Full`.
    pub(crate) fn try_append(&self, ev: &Event) -> Result<TryAppend, LedgerError> {
        let mut f = self.filling.lock();
        if f.failed {
            return Err(LedgerError::Unavailable {
                reason: "write-ahead stream failed",
            });
        }
        if Self::is_full(&f) {
            drop(f);
            self.wake_writer.notify_one();
            return Ok(TryAppend::Full);
        }
        event::encode_into(ev, &mut f.payload);
        let lsn = f.next_lsn;
        f.next_lsn += 1;
        f.num_events += 1;
        let ticket = Ticket {
            lsn,
            signal: f.signal.clone(),
        };
        let first = f.num_events == 1;
        drop(f);
        if first {
            self.wake_writer.notify_one();
        }
        Ok(TryAppend::Appended(ticket))
    }

    /// Returns whether `n` more events, each at most [`crate::limits::EVENT_BYTES_MAX`], fit in
    /// the filling batch (the writer only ever empties it).
    pub(crate) fn room_for(&self, n: usize) -> bool {
        let f = self.filling.lock();
        f.num_events + n <= WAL_BATCH_EVENTS_MAX
            && f.payload.len() + n.saturating_sub(1) * crate::limits::EVENT_BYTES_MAX
                < WAL_BATCH_BYTES_MAX
    }

    fn is_full(f: &Filling) -> bool {
        f.num_events >= WAL_BATCH_EVENTS_MAX || f.payload.len() >= WAL_BATCH_BYTES_MAX
    }

    /// Returns a future that completes when the filling batch may have room again.
    pub(crate) fn room(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.notified()
    }

    /// Settles a movement once everything up to `lsn` (its deciding record) is durable: the
    /// writer does it after the append, so the movement needs no task of its own. On a failed
    /// stream the movement stays pending (its waiters learn of the failure, `StreamHealth`).
    pub(crate) fn settle_at(&self, lsn: Lsn, settlement: Settlement) {
        let mut f = self.filling.lock();
        if f.failed {
            return;
        }
        match &f.writing_opt {
            Some((last, _)) if lsn <= *last => f.writing_settlements.push(settlement),
            _ if lsn >= f.first_lsn => f.settlements.push(settlement),
            _ => {
                drop(f);
                debug_assert!(self.durable_lsn() >= lsn);
                settlement.settle();
                self.run_after_settle();
            }
        }
    }

    /// Returns once everything up to `lsn` is durable.
    pub(crate) async fn wait_durable(&self, lsn: Lsn) -> Result<(), LedgerError> {
        if self.durable_lsn() >= lsn {
            return Ok(());
        }
        let signal = {
            let f = self.filling.lock();
            if f.failed {
                // The LSN was handed out but will never be written by this process.
                return Err(LedgerError::Unavailable {
                    reason: "write-ahead stream failed",
                });
            }
            match &f.writing_opt {
                Some((last, s)) if lsn <= *last => s.clone(),
                _ if lsn >= f.first_lsn && lsn < f.next_lsn => f.signal.clone(),
                _ => {
                    // Written in between: durable now (or failed).
                    drop(f);
                    return if self.durable_lsn() >= lsn {
                        Ok(())
                    } else {
                        Err(LedgerError::Unavailable {
                            reason: "write-ahead stream failed",
                        })
                    };
                }
            }
        };
        signal.wait().await
    }

    /// The writer loop: one record per batch, one durable append each. Runs until `stop` is
    /// cancelled and the buffer is empty.
    pub(crate) async fn run_writer(
        self: Arc<Self>,
        wal: Arc<dyn Wal>,
        mut prev_hash: RecordHash,
        stop: tokio_util::sync::CancellationToken,
        health: Arc<StreamHealth>,
    ) {
        // When the current batch's undemanded linger ends (set by its first look).
        let mut linger_until_opt: Option<tokio::time::Instant> = None;
        // The filling batch collected enough events while the previous one was written to
        // share an fsync well (WAL_AMORTIZED_EVENTS): they have waited an append already, and
        // the linger would only add to it.
        let mut filled_while_writing = false;
        loop {
            let wake = self.wake_writer.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let (empty, urgent) = {
                let f = self.filling.lock();
                (
                    f.num_events == 0,
                    f.signal.is_demanded() || Self::is_full(&f),
                )
            };
            if empty {
                if stop.is_cancelled() {
                    return;
                }
                tokio::select! {
                    () = &mut wake => {}
                    () = stop.cancelled() => {}
                }
                continue;
            }
            // Nobody waits for this batch yet: let it grow (a transfer's next phases are a few
            // microseconds away), up to WAL_UNDEMANDED_FLUSH_US.
            if !urgent && !filled_while_writing && !stop.is_cancelled() {
                let until = *linger_until_opt.get_or_insert_with(|| {
                    tokio::time::Instant::now() + Duration::from_micros(WAL_UNDEMANDED_FLUSH_US)
                });
                if tokio::time::Instant::now() < until {
                    tokio::select! {
                        () = &mut wake => continue,
                        () = stop.cancelled() => continue,
                        () = tokio::time::sleep_until(until) => {}
                    }
                }
            }
            linger_until_opt = None;
            if !self.linger.is_zero() {
                tokio::time::sleep(self.linger).await;
            }
            let (first_lsn, last_lsn, payload, signal) = {
                let mut f = self.filling.lock();
                let spare = std::mem::take(&mut f.spare_payload);
                let payload = std::mem::replace(&mut f.payload, spare);
                let signal = std::mem::replace(&mut f.signal, BatchSignal::new(&self.wake_writer));
                let (first, last) = (f.first_lsn, f.next_lsn - 1);
                f.first_lsn = f.next_lsn;
                self.batch_events.record(f.num_events as u64);
                f.num_events = 0;
                f.writing_opt = Some((last, signal.clone()));
                f.writing_settlements = std::mem::take(&mut f.settlements);
                (first, last, payload, signal)
            };
            self.room.notify_waiters();
            let rec = record::encode(
                self.shard, self.epoch, first_lsn, last_lsn, &prev_hash, &payload,
            );
            let mut payload = payload;
            payload.clear();
            self.filling.lock().spare_payload = payload;
            let hash = rec.hash;
            let started = Instant::now();
            match wal.append(self.shard, rec).await {
                Ok(()) => {
                    self.append_latency_us
                        .record(started.elapsed().as_micros() as u64);
                    prev_hash = hash;
                    self.durable_lsn.store(last_lsn, Ordering::Release);
                    let settlements = {
                        let mut f = self.filling.lock();
                        f.writing_opt = None;
                        filled_while_writing = f.num_events >= WAL_AMORTIZED_EVENTS;
                        std::mem::take(&mut f.writing_settlements)
                    };
                    signal.complete(true);
                    for s in settlements {
                        s.settle();
                    }
                    self.run_after_settle();
                }
                Err(e) => {
                    // After a failed append nothing later may be trusted: the shard stops
                    // taking writes and every waiter learns it at once (StreamHealth).
                    tracing::error!(shard = self.shard, error = %e, "write-ahead stream append failed; the shard stops taking writes until the process restarts");
                    let filling_signal = {
                        let mut f = self.filling.lock();
                        f.failed = true;
                        f.writing_opt = None;
                        f.settlements.clear();
                        f.writing_settlements.clear();
                        f.signal.clone()
                    };
                    health.mark_failed(self.shard, e.to_string());
                    signal.complete(false);
                    filling_signal.complete(false);
                    self.room.notify_waiters();
                    self.probe_until_writable(&*wal, &stop, &health).await;
                    return;
                }
            }
        }
    }
}

impl ShardLog {
    /// After a failure: asks the stream with bounded, jittered backoff whether it takes a
    /// record again, and when it does, fires `restart_required` (fail-stop, see
    /// [`StreamHealth`]). Returns when that happens or when the node stops.
    async fn probe_until_writable(
        &self,
        wal: &dyn Wal,
        stop: &tokio_util::sync::CancellationToken,
        health: &StreamHealth,
    ) {
        let mut delay_ms = STREAM_PROBE_INTERVAL_MS_MIN;
        loop {
            let jitter_ms = u64::from(std::process::id() ^ self.shard) % (delay_ms / 4 + 1);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(delay_ms + jitter_ms)) => {}
            }
            match wal.probe(self.shard).await {
                Ok(()) => {
                    tracing::error!(
                        shard = self.shard,
                        "the failed stream takes writes again; the process must restart to recover the shard (fail-stop)"
                    );
                    health.restart_required.cancel();
                    return;
                }
                Err(e) => {
                    tracing::warn!(shard = self.shard, error = %e, "the failed stream still refuses writes")
                }
            }
            delay_ms = (delay_ms * 2).min(STREAM_PROBE_INTERVAL_MS_MAX);
        }
    }
}
