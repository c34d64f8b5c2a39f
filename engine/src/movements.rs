//! The node's movement table: every transfer and entry ID it knows, one namespace, and each
//! movement's cell (its body, its status, and who waits for its outcome). Rule I3 (each ID
//! takes effect at most once) starts here: a second request with a known ID waits for the
//! first one's outcome, or conflicts.
//!
//! The table holds no clock and does no I/O: the node and the crash simulation drive it alike.

use std::sync::Arc;

use hashbrown::HashMap as FastMap;
use parking_lot::Mutex;
use saldo_persistence::Lsn;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    packed::Packed,
    records::{MovementMap, PackedMovement},
    state::MovementRecord,
    types::*,
};

/// A transfer or entry known to the node.
pub struct MovementCell {
    /// The request that claimed the ID (what a retry is compared with).
    pub body: MovementBody,
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
    fn new(body: MovementBody, state: CellState) -> Arc<MovementCell> {
        Arc::new(MovementCell {
            body,
            state: Mutex::new(state),
            done: Notify::new(),
        })
    }

    /// The movement as a read or a replay answers it.
    pub fn view(&self) -> MovementView {
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
    pub fn recorded_at(&self, at: Timestamp, shard: usize, lsn: Lsn) {
        let mut s = self.state.lock();
        s.created_at = at;
        s.recorded = true;
        let shard = u32::try_from(shard).expect("shards are at most SHARDS_MAX");
        s.first_record_opt.get_or_insert((shard, lsn));
    }

    /// Returns whether the movement is pending with nothing recorded (its ID may be freed).
    pub fn unrecorded(&self) -> bool {
        let s = self.state.lock();
        s.status == MovementStatus::Pending && !s.recorded
    }

    /// Whether a request that reuses this movement's ID conflicts with it: `None` when it is
    /// the same request (it gets the original's outcome), else the conflict.
    pub fn conflict_with(&self, body: &MovementBody) -> Option<Rejection> {
        (&self.body != body).then(|| Rejection::IdConflict {
            fields: body_diff(&self.body, body)
                .into_iter()
                .map(String::from)
                .collect(),
        })
    }

    /// Settles the movement (committed or rejected for good) and wakes its waiters.
    pub fn finish(
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
///
/// Two layers: the movements restored at start, kept as the restore left them (packed, see
/// [`crate::packed`], or decoded; nothing changes them once the node runs, so they are read
/// without a lock), and the cells of the movements the node has touched since, in the
/// stripes. A restored movement gets its cell the first time someone looks it up (a retry of
/// its ID, a read, the resolution of an open hold), under its stripe's lock, and the stripe is
/// looked at first from then on. So a restore hands its movements over instead of building a
/// cell per movement (a million cells took 340-490 ms on both cores), and an idle movement
/// costs its encoding and a bucket of 8 bytes, not a cell with a lock and a waiter list (nor a
/// boxed record of some 190 bytes, as before format 3).
pub struct MovementTable {
    stripes: Vec<Mutex<FastMap<MovementId, Arc<MovementCell>>>>,
    restored: FastMap<MovementId, Box<MovementRecord>>,
    packed: Packed<PackedMovement>,
}

/// What claiming an ID found.
pub enum Claim {
    /// The ID was free: it is now this movement's, pending.
    New(Arc<MovementCell>),
    /// The ID is known (pending or settled): the request is a retry, answered from the cell
    /// ([`MovementCell::conflict_with`]), never run again.
    Existing(Arc<MovementCell>),
}

impl MovementTable {
    /// Returns the table of a node whose shards restored these movements (one map per shard;
    /// IDs are unique across shards, each movement has one home shard).
    pub fn restored(shards: Vec<MovementMap>) -> MovementTable {
        let (mut maps, packs): (Vec<_>, Vec<_>) =
            shards.into_iter().map(MovementMap::into_parts).unzip();
        let mut packed = Packed::default();
        for pack in packs {
            packed.merge(pack, "a movement ID");
        }
        // The largest map is kept as it is and the others go into it.
        maps.sort_unstable_by_key(|m| std::cmp::Reverse(m.len()));
        let mut maps = maps.into_iter();
        let mut restored = maps.next().unwrap_or_default();
        for map in maps {
            restored.reserve(map.len());
            for (id, rec) in map {
                let twice = restored.insert(id, rec).is_some();
                assert!(!twice, "a movement ID restored in two shards");
            }
        }
        if !packed.is_empty() {
            for id in restored.keys() {
                assert!(
                    !packed.contains(id.as_str()),
                    "a movement ID {id} restored in two shards"
                );
            }
        }
        MovementTable {
            stripes: (0..MOVEMENT_STRIPES)
                .map(|_| Mutex::new(FastMap::new()))
                .collect(),
            restored,
            packed,
        }
    }
    fn stripe(&self, id: &MovementId) -> &Mutex<FastMap<MovementId, Arc<MovementCell>>> {
        &self.stripes
            [(crate::shard::fnv1a_64(id.as_str().as_bytes()) % MOVEMENT_STRIPES as u64) as usize]
    }
    /// Returns the cell of a movement in `stripe` (its stripe, locked), giving a restored
    /// movement its cell on first sight.
    fn cell_in(
        &self,
        stripe: &mut FastMap<MovementId, Arc<MovementCell>>,
        id: &MovementId,
    ) -> Option<Arc<MovementCell>> {
        if let Some(cell) = stripe.get(id) {
            return Some(cell.clone());
        }
        let decoded;
        let rec = match self.restored.get(id) {
            Some(rec) => &**rec,
            None if self.packed.is_empty() => return None,
            None => {
                decoded = self.packed.get(id.as_str())?.1;
                &decoded
            }
        };
        let cell = MovementCell::new(
            rec.body.clone(),
            CellState {
                created_at: rec.created_at,
                status: rec.status,
                rejection_opt: rec.rejection_opt.clone().map(Box::new),
                balance_after_minor_opt: rec.balance_after_minor_opt,
                abandoned: false,
                recorded: true,
                first_record_opt: None,
            },
        );
        stripe.insert(id.clone(), cell.clone());
        Some(cell)
    }
    /// The cell of a known movement (a restored one gets its cell on first sight).
    pub fn get(&self, id: &MovementId) -> Option<Arc<MovementCell>> {
        self.cell_in(&mut self.stripe(id).lock(), id)
    }
    /// Claims `id` for `body` at `now`: a new pending cell, or the existing one (pending or
    /// settled) when the ID is known.
    pub fn claim(&self, id: &MovementId, body: &MovementBody, now: Timestamp) -> Claim {
        let mut stripe = self.stripe(id).lock();
        if let Some(cell) = self.cell_in(&mut stripe, id) {
            return Claim::Existing(cell);
        }
        let cell = MovementCell::new(
            body.clone(),
            CellState {
                created_at: now,
                status: MovementStatus::Pending,
                rejection_opt: None,
                balance_after_minor_opt: None,
                abandoned: false,
                recorded: false,
                first_record_opt: None,
            },
        );
        stripe.insert(id.clone(), cell.clone());
        Claim::New(cell)
    }
    /// Drops a claim for which nothing was recorded, waking anyone waiting on it.
    pub fn abandon(&self, id: &MovementId, cell: &MovementCell) {
        cell.state.lock().abandoned = true;
        cell.done.notify_waiters();
        self.stripe(id).lock().remove(id);
    }
}

/// A movement's outcome: committed (with the balance after it, for an entry), or rejected.
pub(crate) type Outcome = Result<Option<i64>, Rejection>;

/// What a shard does once a record is durable, on behalf of a write whose turn appended it:
/// settle the movement the record decides, and end the write (its place among the node's
/// `in_flight_max`). Done by the shard's log writer ([`crate::log::ShardLog::settle_at`]), so
/// that a write whose turn ran is owned by its shard and ends even when its caller stopped
/// waiting: it still counts against `in_flight_max` until then.
pub(crate) struct Settlement {
    /// The movement the record decides and its outcome. None for a write that is not a
    /// movement (an opening).
    pub(crate) movement_opt: Option<(Arc<MovementCell>, Outcome)>,
    /// The write's in-flight permit.
    pub(crate) in_flight_opt: Option<tokio::sync::OwnedSemaphorePermit>,
    /// What the record lets go on: a cross-shard transfer's next phase, queued in the shard's
    /// outbox once the record before it is durable and sent on with the record's other
    /// messages (`Node::run_phase`, `Node::flush_outbox`).
    pub(crate) then_opt: Option<Box<dyn FnOnce() + Send>>,
}

impl Settlement {
    pub(crate) fn settle(self) {
        let Settlement {
            movement_opt,
            in_flight_opt,
            then_opt,
        } = self;
        if let Some(then) = then_opt {
            then();
        }
        match movement_opt {
            Some((cell, Ok(balance_after_opt))) => {
                cell.finish(MovementStatus::Committed, None, balance_after_opt)
            }
            Some((cell, Err(r))) => cell.finish(MovementStatus::Rejected, Some(r), None),
            None => {}
        }
        // The write has ended: its place among the writes in flight is free.
        drop(in_flight_opt);
    }
}

/// Returns the names of the fields where two transfers differ.
fn transfer_diff(a: &Transfer, b: &Transfer) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.debit_account_id != b.debit_account_id {
        out.push("from");
    }
    if a.credit_account_id != b.credit_account_id {
        out.push("to");
    }
    if a.amount_minor != b.amount_minor {
        out.push("amount");
    }
    if a.currency != b.currency {
        out.push("currency");
    }
    if a.description_opt != b.description_opt {
        out.push("description");
    }
    out
}

fn entry_diff(a: &Entry, b: &Entry) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.account_id != b.account_id {
        out.push("account");
    }
    if a.kind != b.kind {
        out.push("type");
    }
    if a.amount_minor != b.amount_minor {
        out.push("amount");
    }
    if a.description_opt != b.description_opt {
        out.push("description");
    }
    out
}

/// Returns the account a movement's ID belongs to: the account money leaves (a transfer's
/// debit account) or the entry's account. A caller allowed to post the new request may act on
/// it, so the gateway has checked that the caller covers it.
fn owner(body: &MovementBody) -> &AccountId {
    match body {
        MovementBody::Transfer(t) => &t.debit_account_id,
        MovementBody::Entry(e) => &e.account_id,
    }
}

/// Returns the names of the fields where a request differs from the original movement of its
/// ID — or none at all when the two belong to different accounts: the caller may be another
/// tenant, who must learn nothing of the original (not even which fields differ) by guessing
/// IDs. Either way the answer is a conflict and nothing changes (docs/api.md).
fn body_diff(original: &MovementBody, new: &MovementBody) -> Vec<&'static str> {
    if owner(original) != owner(new) {
        return Vec::new();
    }
    match (original, new) {
        (MovementBody::Transfer(a), MovementBody::Transfer(b)) => transfer_diff(a, b),
        (MovementBody::Entry(a), MovementBody::Entry(b)) => entry_diff(a, b),
        _ => vec!["kind"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> MovementBody {
        MovementBody::Entry(Entry {
            entry_id: MovementId::new(id).unwrap(),
            account_id: AccountId::new("a").unwrap(),
            kind: EntryKind::Credit,
            amount_minor: 5,
            description_opt: None,
        })
    }

    fn restored(ids: &[&str]) -> MovementMap {
        let map = ids
            .iter()
            .map(|id| {
                let rec = MovementRecord {
                    body: entry(id),
                    status: MovementStatus::Committed,
                    rejection_opt: None,
                    created_at: Timestamp(7),
                    balance_after_minor_opt: Some(5),
                };
                (MovementId::new(id).unwrap(), Box::new(rec))
            })
            .collect();
        MovementMap::from_map(map)
    }

    fn packed(ids: &[&str]) -> MovementMap {
        let mut map = restored(ids);
        map.pack();
        map
    }

    #[test]
    fn a_restored_movement_is_known_to_every_lookup_and_gets_one_cell() {
        // One shard's movements decoded, two shards' packed (as a restore leaves them).
        let table = MovementTable::restored(vec![
            restored(&["e1"]),
            packed(&["e2", "e3"]),
            packed(&["e5"]),
        ]);
        let e1 = MovementId::new("e1").unwrap();
        // A retry of a restored ID finds the original, with its outcome and time.
        let Claim::Existing(cell) = table.claim(&e1, &entry("e1"), Timestamp(99)) else {
            panic!("a restored ID was claimed as new");
        };
        let view = cell.view();
        assert_eq!(
            (view.status, view.created_at, view.balance_after_minor_opt),
            (MovementStatus::Committed, Timestamp(7), Some(5))
        );
        // One cell per movement, whoever looks first.
        assert!(Arc::ptr_eq(&cell, &table.get(&e1).unwrap()));
        let e3 = MovementId::new("e3").unwrap();
        assert!(Arc::ptr_eq(
            &table.get(&e3).unwrap(),
            &table.get(&e3).unwrap()
        ));
        let e5 = MovementId::new("e5").unwrap();
        assert_eq!(table.get(&e5).unwrap().view().body, entry("e5"));
        // An ID nobody knows is new, and known from then on.
        let e4 = MovementId::new("e4").unwrap();
        assert!(table.get(&e4).is_none());
        let Claim::New(new) = table.claim(&e4, &entry("e4"), Timestamp(99)) else {
            panic!("a new ID was found");
        };
        assert!(Arc::ptr_eq(&new, &table.get(&e4).unwrap()));
    }

    #[test]
    #[should_panic(expected = "restored in two shards")]
    fn an_id_restored_in_two_shards_stops_the_node() {
        MovementTable::restored(vec![restored(&["e1"]), restored(&["e1", "e2"])]);
    }

    #[test]
    #[should_panic(expected = "restored in two shards")]
    fn an_id_restored_packed_in_two_shards_stops_the_node() {
        MovementTable::restored(vec![packed(&["e1"]), packed(&["e2", "e1"])]);
    }

    #[test]
    #[should_panic(expected = "restored in two shards")]
    fn an_id_restored_packed_and_decoded_stops_the_node() {
        MovementTable::restored(vec![packed(&["e1"]), restored(&["e2", "e1"])]);
    }
}
