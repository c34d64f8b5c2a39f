//! The node's movement table: every transfer and entry ID it knows, one namespace, and each
//! movement's cell (its body, its status, and who waits for its outcome). Rule I3 (each ID
//! takes effect at most once) starts here: a second request with a known ID waits for the
//! first one's outcome, or conflicts.

use std::sync::Arc;

use hashbrown::HashMap as FastMap;
use parking_lot::Mutex;
use saldo_persistence::Lsn;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{state::MovementRecord, types::*};

/// A transfer or entry known to the node.
pub(crate) struct MovementCell {
    pub(crate) body: MovementBody,
    pub(crate) state: Mutex<CellState>,
    done: Notify,
}

/// Kept small: a node holds one per movement it knows (56 bytes; a rejection, rare, is boxed).
#[derive(Clone)]
pub(crate) struct CellState {
    pub(crate) status: MovementStatus,
    pub(crate) rejection_opt: Option<Box<Rejection>>,
    pub(crate) balance_after_minor_opt: Option<i64>,
    /// Time of the first record of the movement (the claim's time until then), so that the
    /// answer is the same before and after a restart.
    pub(crate) created_at: Timestamp,
    /// The claim was dropped before anything was recorded (infrastructure failure).
    pub(crate) abandoned: bool,
    /// A record of the movement was appended (it may be durable): the ID is never freed for a
    /// retry after that; a failure leaves it pending until recovery settles it.
    pub(crate) recorded: bool,
    /// Shard and LSN of the movement's first record, once appended: a read answers `pending`
    /// only once that record is durable (before, the movement exists in memory alone).
    pub(crate) first_record_opt: Option<(u32, Lsn)>,
}

impl MovementCell {
    pub(crate) fn view(&self) -> MovementView {
        let s = self.state.lock().clone();
        MovementView {
            body: self.body.clone(),
            status: s.status,
            rejection_opt: s.rejection_opt.map(|r| *r),
            created_at: s.created_at,
            balance_after_minor_opt: s.balance_after_minor_opt,
        }
    }

    /// Sets the creation time and place to those of the movement's first record.
    pub(crate) fn recorded_at(&self, at: Timestamp, shard: usize, lsn: Lsn) {
        let mut s = self.state.lock();
        s.created_at = at;
        s.recorded = true;
        let shard = u32::try_from(shard).expect("shards are at most SHARDS_MAX");
        s.first_record_opt.get_or_insert((shard, lsn));
    }

    /// Marks the movement as possibly recorded, keeping its creation time.
    pub(crate) fn maybe_recorded(&self) {
        self.state.lock().recorded = true;
    }

    /// Returns whether the movement is pending with nothing recorded (its ID may be freed).
    pub(crate) fn unrecorded(&self) -> bool {
        let s = self.state.lock();
        s.status == MovementStatus::Pending && !s.recorded
    }

    pub(crate) fn finish(
        &self,
        status: MovementStatus,
        rejection_opt: Option<Rejection>,
        balance_after_minor_opt: Option<i64>,
    ) {
        let mut s = self.state.lock();
        s.status = status;
        s.rejection_opt = rejection_opt.map(Box::new);
        s.balance_after_minor_opt = balance_after_minor_opt;
        drop(s);
        self.done.notify_waiters();
    }

    /// Waits until the movement is committed or rejected for good. Once a shard's stream has
    /// failed (`stream_failed`), a movement still pending may stay so until the restart that
    /// recovers the shard: the wait ends with `Unavailable` (a retry after it is safe).
    pub(crate) async fn settled(
        &self,
        stream_failed: &CancellationToken,
    ) -> Result<MovementView, LedgerError> {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.state.lock();
                if s.abandoned {
                    return Err(LedgerError::Unavailable {
                        reason: "the original request failed; retry",
                    });
                }
                if s.status != MovementStatus::Pending {
                    drop(s);
                    return Ok(self.view());
                }
            }
            tokio::select! {
                () = &mut notified => {}
                () = stream_failed.cancelled() => {
                    if self.state.lock().status == MovementStatus::Pending {
                        return Err(LedgerError::Unavailable {
                            reason: "a stream failed; the outcome is known after the node restarts",
                        });
                    }
                }
            }
        }
    }
}

const MOVEMENT_STRIPES: usize = 64;

/// Every transfer and entry ID the node knows: one namespace, striped to spread contention.
pub(crate) struct MovementTable {
    stripes: Vec<Mutex<FastMap<MovementId, Arc<MovementCell>>>>,
}

pub(crate) enum Claim {
    New(Arc<MovementCell>),
    Existing(Arc<MovementCell>),
}

impl MovementTable {
    pub(crate) fn new() -> MovementTable {
        MovementTable {
            stripes: (0..MOVEMENT_STRIPES)
                .map(|_| Mutex::new(FastMap::new()))
                .collect(),
        }
    }
    fn stripe_index(&self, id: &MovementId) -> usize {
        (crate::shard::fnv1a_64(id.as_str().as_bytes()) % MOVEMENT_STRIPES as u64) as usize
    }
    fn stripe(&self, id: &MovementId) -> &Mutex<FastMap<MovementId, Arc<MovementCell>>> {
        &self.stripes[self.stripe_index(id)]
    }
    pub(crate) fn get(&self, id: &MovementId) -> Option<Arc<MovementCell>> {
        self.stripe(id).lock().get(id).cloned()
    }
    pub(crate) fn claim(&self, id: &MovementId, body: &MovementBody, now: Timestamp) -> Claim {
        let mut stripe = self.stripe(id).lock();
        if let Some(cell) = stripe.get(id) {
            return Claim::Existing(cell.clone());
        }
        let cell = Arc::new(MovementCell {
            body: body.clone(),
            state: Mutex::new(CellState {
                created_at: now,
                status: MovementStatus::Pending,
                rejection_opt: None,
                balance_after_minor_opt: None,
                abandoned: false,
                recorded: false,
                first_record_opt: None,
            }),
            done: Notify::new(),
        });
        stripe.insert(id.clone(), cell.clone());
        Claim::New(cell)
    }
    /// Makes room for `additional` more movements (restore knows how many it brings): the
    /// stripes grow once instead of rehashing all the way up.
    pub(crate) fn reserve(&self, additional: usize) {
        // FNV spreads IDs evenly; a little slack covers the unevenness.
        let per_stripe = additional / MOVEMENT_STRIPES + additional / (MOVEMENT_STRIPES * 8) + 1;
        for stripe in &self.stripes {
            stripe.lock().reserve(per_stripe);
        }
    }
    /// Hosts a restored shard's movements, on two threads: each takes the stripes of one
    /// parity, so neither waits for the other's locks (a million movements took 650 ms on
    /// one thread).
    pub(crate) fn host_restored(&self, records: &FastMap<MovementId, MovementRecord>) {
        self.reserve(records.len());
        let half = |parity: usize| {
            for (id, rec) in records {
                if self.stripe_index(id) % 2 == parity {
                    self.insert_restored(id.clone(), rec.clone());
                }
            }
        };
        crate::threads::join("restore-movements", || half(0), || half(1));
    }

    fn insert_restored(&self, id: MovementId, rec: MovementRecord) {
        let cell = Arc::new(MovementCell {
            body: rec.body,
            state: Mutex::new(CellState {
                created_at: rec.created_at,
                status: rec.status,
                rejection_opt: rec.rejection_opt.map(Box::new),
                balance_after_minor_opt: rec.balance_after_minor_opt,
                abandoned: false,
                recorded: true,
                first_record_opt: None,
            }),
            done: Notify::new(),
        });
        self.stripe(&id).lock().insert(id, cell);
    }
    /// Drops a claim for which nothing was recorded, waking anyone waiting on it.
    pub(crate) fn abandon(&self, id: &MovementId, cell: &MovementCell) {
        cell.state.lock().abandoned = true;
        cell.done.notify_waiters();
        self.stripe(id).lock().remove(id);
    }
}

/// A movement's outcome, set once the record that decides it is durable: by the shard's log
/// writer ([`crate::log::ShardLog::settle_at`]), so that a movement whose turn ran is owned by
/// its shard and settles even when its caller stopped waiting.
pub(crate) struct Settlement {
    pub(crate) cell: Arc<MovementCell>,
    /// Committed (with the balance after it, for an entry), or rejected.
    pub(crate) outcome: Result<Option<i64>, Rejection>,
}

impl Settlement {
    pub(crate) fn settle(self) {
        match self.outcome {
            Ok(balance_after_opt) => {
                self.cell
                    .finish(MovementStatus::Committed, None, balance_after_opt)
            }
            Err(r) => self.cell.finish(MovementStatus::Rejected, Some(r), None),
        }
    }
}
