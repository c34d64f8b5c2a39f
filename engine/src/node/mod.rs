//! A node: the shards it owns (each hosting its accounts, see `host`), their group-commit
//! logs, the movement table, and the coordinator that runs transfers between accounts.
//!
//! This module holds the node itself: opening it (restore of every shard, then recovery of
//! every open hold, resumed where [`crate::transfer::resume`] says), routing, and delivering a
//! message to an account. The rest is split along its seams:
//! - `idempotency`: claiming a movement's ID, replays and conflicts;
//! - `accounts`: opening accounts, external entries;
//! - `shard_actor`: each shard's kameo actor, which runs the writes queued at the shard in
//!   ticks and the messages of other shards;
//! - `transfers`: a single transfer (one turn within a shard; across shards, a message that
//!   the shard actors carry on from phase to phase once each record is durable, stepped by
//!   [`crate::transfer`]);
//! - `batches`: independent batches (rounds of the step machine) and atomic batches;
//! - `reads`: reads on durable state;
//! - `maintenance`: readiness, metrics, snapshots, checksums, shutdown.
//!
//! ## The transfer protocol
//! 1. Validate the request; claim the transfer ID in the movement table (a second request
//!    with the same ID waits for the first one's outcome, or conflicts).
//! 2. Check that the credit account exists in the transfer's currency (accounts are never
//!    deleted and their currency never changes, so the credit phase cannot be refused later
//!    except for lack of room).
//! 3. Within one shard: one turn, one event (`TransferPosted` or `TransferRejected`),
//!    answered once durable.
//! 4. Across shards: **hold** on the debit account (a refusal is recorded and answered), then
//!    **credit** once the hold is durable, then **commit** once the credit is durable (or
//!    **release** when the credit is refused); answered once the last record is durable.
//!
//! Nothing crosses a shard boundary on the strength of a record a crash could undo. After a
//! crash, recovery finds every open hold and finishes it (commit when the credit shard has the
//! credit, else credit then commit) or releases it (an undecided atomic batch, or a credit
//! the account cannot take).

mod accounts;
mod batches;
mod idempotency;
mod maintenance;
mod reads;
mod shard_actor;
mod transfers;

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use saldo_persistence::{Lsn, SnapshotStore, Wal};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{
    account::{AccountCommand, AccountState},
    event::Event,
    host::{AccountMsg, AccountReply, AccountTable, Slot, Turn},
    ledger::{EngineConfig, Ledger, LedgerStats},
    limits::*,
    log::{ShardLog, StreamHealth, TryAppend},
    movements::{Claim, MovementCell, MovementTable, Settlement},
    recovery::{restore_shard, RestoreTarget},
    shard::shard_of,
    transfer::{self, Phase, Step},
    types::*,
    EngineError,
};

/// A restored shard, made ready to host ([`Node::host_restored`]).
struct Hosted {
    state: crate::state::ShardState,
    /// The accounts, packed but those with an open hold.
    slots: AccountTable,
    /// The open holds to finish or release.
    holds: Vec<crate::account::Hold>,
    /// Accounts and movements the state holds (the snapshot triggers' baseline).
    entries: usize,
    /// What the restore decoded, being freed ([`crate::Ledger::restore_freed`]).
    freeing_opt: Option<tokio::task::JoinHandle<()>>,
}

/// One shard of a node.
pub(crate) struct ShardCore {
    pub(crate) id: u32,
    /// Accounts of the shard ([`AccountTable`]): the host lock.
    pub(crate) slots: Mutex<AccountTable>,
    /// The shard's actor, which runs its queued writes and the messages of other shards
    /// (`shard_actor`).
    actor: OnceLock<kameo::actor::ActorRef<shard_actor::ShardActor>>,
    /// Writes queued for the actor's next tick.
    queue: Mutex<shard_actor::Queue>,
    /// Messages to other shards whose record is durable, sent on by the log writer after its
    /// settlements (`Node::flush_outbox`).
    outbox: Mutex<Vec<transfers::PhaseMsg>>,
    pub(crate) log: Arc<ShardLog>,
    pub(crate) movements_window: usize,
    /// The newest snapshot (at start: the restored state), for the snapshot triggers.
    last_snapshot: Mutex<LastSnapshot>,
}

/// The newest snapshot of a shard, as the snapshot triggers see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LastSnapshot {
    /// Its position.
    lsn: Lsn,
    /// When it was written (`None`: not since start).
    at_opt: Option<Instant>,
    /// Accounts and movements it holds: what the next one costs to read and write.
    entries: usize,
}

/// The node.
pub(crate) struct Node {
    config: EngineConfig,
    shards: Vec<Arc<ShardCore>>,
    movements: MovementTable,
    in_flight: Arc<Semaphore>,
    ready: AtomicBool,
    stopping: AtomicBool,
    wal: Arc<dyn Wal>,
    snapshots: Arc<dyn SnapshotStore>,
    stop_background: CancellationToken,
    stop_writers: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// What the restore decoded and packed, being freed (see [`Ledger::restore_freed`]).
    pub(crate) freeing: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    snapshots_total: AtomicU64,
    /// Which shards' streams failed; fail-stop signals (see [`StreamHealth`]).
    health: Arc<StreamHealth>,
}

impl ShardCore {
    /// Returns the account's currency.
    fn currency_of(&self, id: &AccountId) -> Option<Currency> {
        self.slots.lock().read(id, |state, _| state.currency())
    }
}

impl Node {
    pub(crate) async fn open(
        config: EngineConfig,
        wal: Arc<dyn Wal>,
        snapshots: Arc<dyn SnapshotStore>,
    ) -> Result<Ledger, EngineError> {
        if !config.num_shards.is_power_of_two() || config.num_shards > SHARDS_MAX {
            return Err(EngineError::Config(format!(
                "shards must be a power of two between 1 and {SHARDS_MAX}, got {}",
                config.num_shards
            )));
        }
        if config.in_flight_max == 0 {
            return Err(EngineError::Config(
                "in_flight_max must be at least 1".into(),
            ));
        }
        let started = Instant::now();
        // Shards restore in parallel (one task each: the fold is CPU-bound).
        let restores: Vec<_> = (0..config.num_shards)
            .map(|shard| {
                let (wal, snapshots, window) =
                    (wal.clone(), snapshots.clone(), config.movements_window);
                tokio::spawn(async move {
                    let state =
                        restore_shard(&*wal, &*snapshots, shard, window, RestoreTarget::Latest)
                            .await?;
                    let tail_opt = wal.tail(shard).await?;
                    // A stream whose records expire (Kinesis retention) is empty for a shard
                    // quiet for longer than the retention: its snapshot is then the whole
                    // shard (the snapshot cadence covers every record before it can expire,
                    // docs/kinesis.md), and its log continues at the snapshot's LSN + 1 on the
                    // snapshot's hash. A stream that keeps its records has lost them when it is
                    // empty under a snapshot; a tail elsewhere than the restored position is a
                    // gap either way.
                    let expired = tail_opt.is_none() && wal.retention_ms().await?.is_some();
                    let tail_lsn = tail_opt.map_or(0, |t| t.last_lsn);
                    if tail_lsn != state.lsn && !expired {
                        return Err(EngineError::Restore(format!(
                            "shard {shard}: restored to lsn {}, stream tail is {tail_lsn}",
                            state.lsn
                        )));
                    }
                    Ok(Self::host_restored(state))
                })
            })
            .collect();
        let mut states = Vec::new();
        for r in restores {
            states.push(
                r.await
                    .map_err(|e| EngineError::Restore(format!("restore task failed: {e}")))??,
            );
        }
        let movements = MovementTable::restored(
            states
                .iter_mut()
                .map(|hosted| std::mem::take(&mut hosted.state.movements))
                .collect(),
        );
        let stop_writers = CancellationToken::new();
        let node = Arc::new(Node {
            shards: Vec::new(),
            movements,
            in_flight: Arc::new(Semaphore::new(config.in_flight_max)),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            wal: wal.clone(),
            snapshots,
            stop_background: CancellationToken::new(),
            stop_writers: stop_writers.clone(),
            tasks: Mutex::new(Vec::new()),
            freeing: Mutex::new(Vec::new()),
            snapshots_total: AtomicU64::new(0),
            health: Arc::new(StreamHealth::default()),
            config,
        });
        let mut node = Arc::try_unwrap(node).ok().expect("no other reference yet");
        let mut credited = HashSet::new();
        let mut batches_committed = HashSet::new();
        let mut open_holds = Vec::new();
        let mut writers = Vec::new();
        let num_accounts: usize = states.iter().map(|hosted| hosted.slots.len()).sum();
        for Hosted {
            state,
            slots,
            holds,
            entries,
            freeing_opt,
        } in states
        {
            node.freeing.get_mut().extend(freeing_opt);
            let log = Arc::new(ShardLog::new(
                state.shard,
                node.config.node_epoch,
                state.lsn,
                Duration::from_micros(node.config.group_commit_linger_us),
            ));
            writers.push((log.clone(), state.record_hash));
            open_holds.extend(holds);
            credited.extend(state.credited.iter().cloned());
            batches_committed.extend(state.batches_committed.iter().cloned());
            node.shards.push(Arc::new(ShardCore {
                id: state.shard,
                slots: Mutex::new(slots),
                actor: OnceLock::new(),
                queue: Mutex::default(),
                outbox: Mutex::new(Vec::new()),
                log,
                movements_window: node.config.movements_window,
                last_snapshot: Mutex::new(LastSnapshot {
                    lsn: state.lsn,
                    at_opt: None,
                    entries,
                }),
            }));
        }
        let node = Arc::new(node);
        for (index, shard) in node.shards.iter().enumerate() {
            let actor = shard_actor::ShardActor::spawn(Arc::downgrade(&node), index);
            assert!(shard.actor.set(actor).is_ok(), "one actor per shard");
            let weak = Arc::downgrade(&node);
            shard.log.set_after_settle(Box::new(move || {
                if let Some(node) = weak.upgrade() {
                    node.flush_outbox(index);
                }
            }));
        }
        {
            let mut tasks = node.tasks.lock();
            for (log, prev_hash) in writers {
                tasks.push(tokio::spawn(log.run_writer(
                    wal.clone(),
                    prev_hash,
                    stop_writers.clone(),
                    node.health.clone(),
                )));
            }
        }
        // Every open hold at once: each is carried on by the shard actors.
        let num_open = open_holds.len();
        let resolved = futures::future::join_all(
            open_holds
                .into_iter()
                .map(|hold| node.resolve_open_hold(hold, &credited, &batches_committed)),
        )
        .await;
        resolved.into_iter().collect::<Result<(), _>>()?;
        tracing::info!(
            shards = node.config.num_shards,
            accounts = num_accounts,
            open_holds_resolved = num_open,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "ledger restored"
        );
        node.ready.store(true, Ordering::Release);
        let background = {
            let n = node.clone();
            tokio::spawn(async move { n.run_background().await })
        };
        node.tasks.lock().push(background);
        Ok(Ledger { inner: node })
    }

    /// Turns a restored shard into what the node hosts: its account table is hosted as it is
    /// (and its movements are handed to the node's table with the other shards', see
    /// [`MovementTable::restored`]), both packed first (an idle account or movement is its
    /// encoding, see [`crate::packed`]; every account with an open hold stays decoded).
    fn host_restored(mut state: crate::state::ShardState) -> Hosted {
        let started = Instant::now();
        let holds = state.open_holds();
        let entries = state.accounts.len() + state.movements.len();
        // The accounts are packed anew, in pieces shared out between two threads (those the
        // tail decoded encoded, the rest copied), and what the tail decoded is freed on a
        // thread of its own (a million small allocations). The movements the tail settled
        // were packed as it folded them; their snapshot section is copied out of the
        // snapshot's buffer, so that the buffer is freed.
        let passive = state.accounts.take_passive();
        {
            let states: Vec<&AccountState> = passive.iter().map(|slot| &*slot.state).collect();
            let locs = state.accounts.packed().locations();
            let accounts = state.accounts.packed().repack(&states, &locs).run();
            state.accounts.set_packed(accounts);
        }
        state.movements.unshare();
        let freeing_opt = crate::threads::drop_later(passive);
        let slots = std::mem::take(&mut state.accounts);
        tracing::debug!(
            shard = state.shard,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shard packed"
        );
        Hosted {
            state,
            slots,
            holds,
            entries,
            freeing_opt,
        }
    }

    /// Finishes or releases a hold found open at start.
    /// A hold of an atomic batch whose decision record is missing is released: the batch did
    /// not reach its commit point, so none of it may take effect.
    async fn resolve_open_hold(
        &self,
        hold: crate::account::Hold,
        credited: &HashSet<MovementId>,
        batches_committed: &HashSet<MovementId>,
    ) -> Result<(), EngineError> {
        let t = &hold.transfer;
        let cell = self
            .movements
            .get(&t.transfer_id)
            .expect("an open hold has a pending record");
        let batch_decided = hold
            .batch_opt
            .as_ref()
            .is_some_and(|b| batches_committed.contains(b));
        let phase = transfer::resume(&hold, credited.contains(&t.transfer_id), batch_decided);
        match self.carry_on(t, phase, &cell).await {
            Ok(_) => Ok(()),
            Err(e) => Err(EngineError::Restore(format!(
                "resolving the open hold of transfer {}: {e}",
                t.transfer_id
            ))),
        }
    }

    pub(crate) fn num_shards(&self) -> u32 {
        self.config.num_shards
    }

    fn shard(&self, id: &AccountId) -> &Arc<ShardCore> {
        &self.shards[shard_of(id.as_str(), self.config.num_shards) as usize]
    }

    fn check_open(&self) -> Result<(), LedgerError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(LedgerError::Unavailable {
                reason: "shutting down",
            });
        }
        if !self.ready.load(Ordering::Acquire) {
            return Err(LedgerError::Unavailable {
                reason: "restoring",
            });
        }
        Ok(())
    }

    /// [`Node::check_open`] for a write, which a failed stream also refuses: once a shard's
    /// stream failed the node takes no new write on any shard until its restart (fail-stop,
    /// see `StreamHealth`). A write refused here did nothing. Without this, a transfer whose
    /// hold went to a healthy shard and whose credit then found its shard failed would be
    /// answered 503 at once and yet take effect at the restart, when recovery finishes its
    /// hold; clients that read a 503 after readiness went off as "refused" would count it
    /// wrong.
    fn check_writable(&self) -> Result<(), LedgerError> {
        self.check_open()?;
        if self.health.any_failed.is_cancelled() {
            return Err(LedgerError::Unavailable {
                reason: "write-ahead stream failed",
            });
        }
        Ok(())
    }

    /// Delivers a message to an account and returns its reply: the message queues at the
    /// account's shard ([`shard_actor::Work::Ask`]) and its turn runs in the shard's actor,
    /// which answers as soon as the turn ran (an atomic batch's coordinator waits for
    /// durability itself). A command that finds the shard's group commit full waits there for
    /// room.
    async fn ask(&self, id: &AccountId, msg: AccountMsg) -> Result<AccountReply, LedgerError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let work = shard_actor::Work::Ask {
            account: id.clone(),
            msg,
            reply_opt: Some(reply),
        };
        self.enqueue(self.shard_index(id), work)?;
        answer.await.unwrap_or(Err(LedgerError::Unavailable {
            reason: "shutting down",
        }))
    }

    /// Runs one phase; when it records the movement's first event, sets the cell's creation
    /// time to that event's time.
    async fn exec_at(
        &self,
        id: &AccountId,
        cmd: AccountCommand,
        first_record_of_opt: Option<&MovementCell>,
    ) -> Result<(Result<Event, Rejection>, Option<crate::log::Ticket>), LedgerError> {
        match self.ask(id, AccountMsg::Exec(cmd)).await? {
            AccountReply::Executed {
                result,
                ticket_opt,
                at,
            } => {
                if let (Some(cell), Some(ticket)) = (first_record_of_opt, &ticket_opt) {
                    cell.recorded_at(at, self.shard_index(id), ticket.lsn);
                }
                Ok((result, ticket_opt))
            }
            _ => unreachable!("exec replies Executed"),
        }
    }

    /// One of the `in_flight_max` permits of the writes being coordinated; `Overloaded` when
    /// none is left. Writes run on to their end when their caller hangs up (see `Ledger`), so
    /// this, not the gateway's request limit, is what bounds them.
    fn in_flight_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, LedgerError> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| LedgerError::Overloaded {
                reason: "too many writes in flight",
            })
    }

    /// Records a node-level decision (a refusal decided before any account acted, or a batch
    /// decision) on an account's home shard and waits until it is durable.
    async fn record_rejection(
        &self,
        home: &AccountId,
        event: Event,
        cell_opt: Option<&MovementCell>,
    ) -> Result<(), LedgerError> {
        let at = event.at();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let work = shard_actor::Work::Record {
            event,
            reply_opt: Some(reply),
        };
        self.enqueue(self.shard_index(home), work)?;
        let ticket = answer.await.unwrap_or(Err(LedgerError::Unavailable {
            reason: "shutting down",
        }))?;
        if let Some(cell) = cell_opt {
            cell.recorded_at(at, self.shard_index(home), ticket.lsn);
        }
        ticket.durable().await?;
        Ok(())
    }

    fn shard_index(&self, id: &AccountId) -> usize {
        shard_of(id.as_str(), self.config.num_shards) as usize
    }
}
