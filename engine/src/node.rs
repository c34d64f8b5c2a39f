//! A node: the shards it owns, their group-commit logs, the movement table, the transfer
//! coordinator, recovery and the background tasks (passivation, snapshots).
//!
//! ## The transfer protocol
//! 1. Validate the request; claim the transfer ID in the movement table (a second request
//!    with the same ID waits for the first one's outcome, or conflicts).
//! 2. Check that the credit account exists in the transfer's currency (accounts are never
//!    deleted and their currency never changes, so the credit phase cannot be refused later).
//! 3. **Hold** on the debit account. A refusal is recorded (`TransferRejected`) and answered.
//! 4. **Credit** on the credit account — across shards only once the hold is durable.
//! 5. **Commit** the hold — across shards only once the credit is durable.
//! 6. Answer once the commit is durable (within one shard, the stream's order makes every
//!    earlier phase durable too). Within one shard only the commit is awaited, so the group
//!    commit (see `log`) puts the hold, credit and commit in one record.
//!
//! Batches of independent transfers run the same phases for the whole batch at once: one
//! message per account per phase, durability awaited once per shard per phase
//! ([`Node::transfer_batch_independent`]).
//!
//! Nothing crosses a shard boundary on the strength of a record a crash could undo. After a
//! crash, recovery finds every open hold and finishes it (commit when the credit shard has the
//! credit, else credit then commit) or releases it when the credit account cannot take it.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use hashbrown::HashMap as FastMap;
use parking_lot::Mutex;
use saldo_persistence::{Lsn, SnapshotStore, Wal};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{
    account::{AccountCommand, AccountState},
    event::Event,
    host::{AccountMsg, AccountReply, Slot, Turn},
    ledger::{EngineConfig, Ledger, LedgerStats},
    limits::*,
    log::{ShardLog, StreamHealth, TryAppend},
    movements::{Claim, MovementCell, MovementTable, Settlement},
    recovery::{restore_shard, RestoreTarget},
    shard::shard_of,
    transfer::{self, Next, Phase},
    types::*,
    EngineError,
};

/// One shard of a node.
pub(crate) struct ShardCore {
    pub(crate) id: u32,
    /// Accounts of the shard (foldhash: fast, and seeded per process against flooding).
    pub(crate) slots: Mutex<FastMap<AccountId, Slot>>,
    pub(crate) log: Arc<ShardLog>,
    pub(crate) movements_window: usize,
    /// LSN and time of the newest snapshot.
    last_snapshot: Mutex<(Lsn, Option<Instant>)>,
}

/// What `try_open` found or did.
enum OpenStep {
    /// The account exists with the same parameters.
    Exists,
    /// A passive account with this ID exists with other parameters; its latest event is `lsn`.
    Differs { lsn: Lsn },
    /// The opening is recorded; durable once the ticket says so.
    Created(AccountView, crate::log::Ticket),
    /// The shard's group commit is full: wait for room and try again.
    Full,
}

/// What the turn of a transfer within one shard did.
enum InShard {
    /// Ran: the final status, and the ticket of the turn's last record.
    Done(Result<(), Rejection>, crate::log::Ticket),
    /// The group commit has no room for the turn's event: nothing happened.
    Full,
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
    snapshots_total: AtomicU64,
    /// Which shards' streams failed; fail-stop signals (see [`StreamHealth`]).
    health: Arc<StreamHealth>,
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

/// Raises `lsns[shard]` to the ticket's LSN (the LSN a shard must reach before the next step).
/// An overlong description is a malformed request.
fn check_description(d: &Option<String>) -> Result<(), Rejection> {
    match d {
        Some(d) if d.len() > DESCRIPTION_BYTES_MAX => Err(Rejection::InvalidField {
            field: "description".into(),
            problem: format!("longer than {DESCRIPTION_BYTES_MAX} bytes"),
        }),
        _ => Ok(()),
    }
}

/// Sets the nice value of the calling thread (Linux keeps one per thread). Lowering a
/// thread's priority needs no privilege; a failure leaves it as it was, which is only slower.
fn lower_this_threads_priority(nice: i32) {
    // SAFETY: plain system calls on the calling thread, no memory is shared with them.
    let failed = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) != 0
    };
    if failed {
        tracing::debug!(nice, "could not lower the snapshot thread's priority");
    }
}

impl ShardCore {
    /// Returns the account's currency.
    fn currency_of(&self, id: &AccountId) -> Option<Currency> {
        Some(self.slots.lock().get(id)?.state.currency())
    }

    /// Appends an event decided by the node rather than by one account (a refusal before any
    /// account acted, a batch decision): a turn of the shard itself, under the host lock like
    /// every append, waiting for room when the group commit is full.
    async fn append(&self, event: &Event) -> Result<crate::log::Ticket, LedgerError> {
        loop {
            let room = self.log.room();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let _host = self.slots.lock();
                if let TryAppend::Appended(ticket) = self.log.try_append(event)? {
                    return Ok(ticket);
                }
            }
            room.await;
        }
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
                    // Turn the accounts into slots here, on the task that built them, and
                    // free the fold's map at once: keeps the peak (and the heap) small.
                    let mut state = state;
                    let holds = state.open_holds();
                    let mut slots: FastMap<AccountId, Slot> =
                        FastMap::with_capacity(state.accounts.len());
                    for (id, a) in state.accounts.drain() {
                        slots.insert(id, Slot::new(a, 0));
                    }
                    state.accounts = FastMap::new();
                    Ok((state, slots, holds))
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
        let stop_writers = CancellationToken::new();
        let node = Arc::new(Node {
            shards: Vec::new(),
            movements: MovementTable::new(),
            in_flight: Arc::new(Semaphore::new(config.in_flight_max)),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            wal: wal.clone(),
            snapshots,
            stop_background: CancellationToken::new(),
            stop_writers: stop_writers.clone(),
            tasks: Mutex::new(Vec::new()),
            snapshots_total: AtomicU64::new(0),
            health: Arc::new(StreamHealth::default()),
            config,
        });
        let mut node = Arc::try_unwrap(node).ok().expect("no other reference yet");
        let mut credited = HashSet::new();
        let mut batches_committed = HashSet::new();
        let mut open_holds = Vec::new();
        let mut writers = Vec::new();
        let num_accounts: usize = states.iter().map(|(_, slots, _)| slots.len()).sum();
        for (state, slots, holds) in states {
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
            for (id, rec) in state.movements {
                node.movements.insert_restored(id, rec);
            }
            node.shards.push(Arc::new(ShardCore {
                id: state.shard,
                slots: Mutex::new(slots),
                log,
                movements_window: node.config.movements_window,
                last_snapshot: Mutex::new((state.lsn, None)),
            }));
        }
        let node = Arc::new(node);
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
        let num_open = open_holds.len();
        for hold in open_holds {
            node.resolve_open_hold(hold, &credited, &batches_committed)
                .await?;
        }
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
        let outcome = self.run_phases(t, phase, None).await;
        match outcome {
            Ok(status) => {
                self.finish_cell(&cell, status);
                Ok(())
            }
            Err(e) => Err(EngineError::Restore(format!(
                "resolving the open hold of transfer {}: {e}",
                t.transfer_id
            ))),
        }
    }

    fn finish_cell(&self, cell: &MovementCell, status: Result<(), Rejection>) {
        match status {
            Ok(()) => cell.finish(MovementStatus::Committed, None, None),
            Err(r) => cell.finish(MovementStatus::Rejected, Some(r), None),
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

    /// Delivers a message to an account and returns its reply: the account's turn runs here,
    /// under its shard's host lock (see `host`). A command that finds the shard's group commit
    /// full waits for room and is delivered again; commands of an `ExecMany` already run stay
    /// run, and the rest follow in order.
    async fn ask(&self, id: &AccountId, msg: AccountMsg) -> Result<AccountReply, LedgerError> {
        let shard = self.shard(id);
        let window = shard.movements_window;
        let cmds = match msg {
            AccountMsg::Exec(cmd) => loop {
                let room = shard.log.room();
                tokio::pin!(room);
                room.as_mut().enable();
                {
                    let mut slots = shard.slots.lock();
                    let slot = slots.get_mut(id).ok_or(Rejection::AccountNotFound)?;
                    let at = slot.turn_time(self.config.clock.now());
                    if let Turn::Done { result, ticket_opt } =
                        slot.exec(&shard.log, window, &cmd, at)?
                    {
                        return Ok(AccountReply::Executed {
                            at,
                            result,
                            ticket_opt,
                        });
                    }
                }
                room.await;
            },
            AccountMsg::ExecMany(cmds) => cmds,
            read => {
                let mut slots = shard.slots.lock();
                let slot = slots.get_mut(id).ok_or(Rejection::AccountNotFound)?;
                return Ok(slot.read(read));
            }
        };
        let mut results = Vec::with_capacity(cmds.len());
        let mut last_ticket_opt = None;
        let mut at_opt = None;
        let mut next = cmds.iter();
        let mut pending_opt = next.next();
        while pending_opt.is_some() {
            let room = shard.log.room();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut slots = shard.slots.lock();
                let slot = slots.get_mut(id).ok_or(Rejection::AccountNotFound)?;
                // The turn's time is taken at each (re)delivery: while this message waited for
                // room, other turns may have moved the account's clock on.
                let at = slot.turn_time(self.config.clock.now());
                at_opt.get_or_insert(at);
                while let Some(cmd) = pending_opt {
                    match slot.exec(&shard.log, window, cmd, at)? {
                        Turn::Done { result, ticket_opt } => {
                            let recorded = ticket_opt.is_some();
                            if ticket_opt.is_some() {
                                last_ticket_opt = ticket_opt;
                            }
                            results.push((result.map(|_| ()), recorded));
                            pending_opt = next.next();
                        }
                        Turn::Full => break,
                    }
                }
            }
            if pending_opt.is_some() {
                room.await;
            }
        }
        Ok(AccountReply::ExecutedMany {
            at: at_opt.unwrap_or_else(|| self.config.clock.now()),
            results,
            last_ticket_opt,
        })
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

    // ---------------------------------------------------------------- accounts

    pub(crate) async fn open_account(
        &self,
        cmd: OpenAccount,
    ) -> Result<(AccountView, bool), LedgerError> {
        self.check_open()?;
        if cmd.overdraft_limit_minor < 0 {
            return Err(Rejection::InvalidAmount.into());
        }
        if cmd
            .metadata_opt
            .as_ref()
            .is_some_and(|m| m.len() > METADATA_BYTES_MAX)
        {
            return Err(Rejection::InvalidField {
                field: "metadata".into(),
                problem: format!("longer than {METADATA_BYTES_MAX} bytes"),
            }
            .into());
        }
        let _permit = self.in_flight_permit()?;
        let shard = self.shard(&cmd.account_id);
        loop {
            let room = shard.log.room();
            tokio::pin!(room);
            room.as_mut().enable();
            // Decide under the lock, act (await) after it is released.
            match self.try_open(shard, &cmd)? {
                OpenStep::Exists => return Ok((self.account(&cmd.account_id).await?, false)),
                OpenStep::Differs { lsn } => {
                    // `account_exists` only once the opening it refers to is durable.
                    self.wait_durable_bounded(shard, lsn).await?;
                    return Err(Rejection::AccountExists.into());
                }
                OpenStep::Created(view, ticket) => {
                    ticket.durable().await?;
                    return Ok((view, true));
                }
                OpenStep::Full => room.await,
            }
        }
    }

    /// The synchronous part of opening an account: under the shard lock, either finds the
    /// account (same parameters, or `AccountExists`) or records its opening.
    fn try_open(&self, shard: &ShardCore, cmd: &OpenAccount) -> Result<OpenStep, LedgerError> {
        let mut slots = shard.slots.lock();
        if let Some(slot) = slots.get(&cmd.account_id) {
            return Ok(if slot.state.same_opening(cmd) {
                OpenStep::Exists
            } else {
                OpenStep::Differs { lsn: slot.last_lsn }
            });
        }
        let at = self.config.clock.now();
        let event = Event::AccountOpened {
            cmd: cmd.clone(),
            at,
        };
        match shard.log.try_append(&event)? {
            TryAppend::Appended(ticket) => {
                let state = AccountState::open(cmd, at);
                let view = state.view();
                slots.insert(cmd.account_id.clone(), Slot::new(state, ticket.lsn));
                Ok(OpenStep::Created(view, ticket))
            }
            TryAppend::Full => Ok(OpenStep::Full),
        }
    }

    /// Returns the account's state and the LSN of its latest event (durable or not).
    fn account_state(&self, id: &AccountId) -> Result<(AccountState, Lsn), LedgerError> {
        let slots = self.shard(id).slots.lock();
        let slot = slots.get(id).ok_or(Rejection::AccountNotFound)?;
        Ok(((*slot.state).clone(), slot.last_lsn))
    }

    /// Reads an account, then waits until the latest event the answer reflects is durable.
    async fn read<T>(
        &self,
        id: &AccountId,
        read: impl FnOnce(&AccountState) -> T,
    ) -> Result<T, LedgerError> {
        self.check_open()?;
        let shard = self.shard(id);
        let (value, lsn) = {
            let slots = shard.slots.lock();
            let slot = slots.get(id).ok_or(Rejection::AccountNotFound)?;
            (read(&slot.state), slot.last_lsn)
        };
        self.wait_durable_bounded(shard, lsn).await?;
        Ok(value)
    }

    pub(crate) async fn account(&self, id: &AccountId) -> Result<AccountView, LedgerError> {
        self.read(id, AccountState::view).await
    }

    pub(crate) async fn movements(
        &self,
        id: &AccountId,
        limit: usize,
        cursor_opt: Option<u64>,
    ) -> Result<MovementsPage, LedgerError> {
        let limit = limit.clamp(1, MOVEMENTS_PAGE_MAX);
        self.read(id, |s| s.movements(limit, cursor_opt)).await
    }

    pub(crate) async fn daily(
        &self,
        id: &AccountId,
        from: Day,
        to: Day,
    ) -> Result<DailyReport, LedgerError> {
        if to < from || to.0 - from.0 >= DAILY_RANGE_DAYS_MAX {
            return Err(Rejection::InvalidField {
                field: "to".into(),
                problem: format!(
                    "the range must not end before `from` nor span more than \
                     {DAILY_RANGE_DAYS_MAX} days"
                ),
            }
            .into());
        }
        let (days, currency) = self.read(id, |s| (s.daily(from, to), s.currency())).await?;
        Ok(DailyReport {
            account_id: id.clone(),
            currency,
            days,
        })
    }

    /// Returns a movement as durable state shows it. A settled movement is durable (its
    /// outcome is set after its last record is). A pending one is answered once its first
    /// record is durable; a bare claim (nothing recorded yet) is memory alone: not found.
    pub(crate) async fn movement(&self, id: &MovementId) -> Result<MovementView, LedgerError> {
        self.check_open()?;
        let cell = self
            .movements
            .get(id)
            .ok_or(LedgerError::Rejected(Rejection::MovementNotFound))?;
        let (status, recorded, first_record_opt) = {
            let s = cell.state.lock();
            (s.status, s.recorded, s.first_record_opt)
        };
        if status == MovementStatus::Pending {
            match first_record_opt {
                Some((shard, lsn)) => self.wait_durable_bounded(&self.shards[shard], lsn).await?,
                None if recorded => {
                    return Err(LedgerError::Unavailable {
                        reason: "the movement's records are in doubt until the node restarts",
                    })
                }
                None => return Err(Rejection::MovementNotFound.into()),
            }
        }
        Ok(cell.view())
    }

    /// Waits until `shard` is durable up to `lsn`, at most [`READ_DURABLE_WAIT_MS_MAX`]: a read
    /// answers from durable state, and never hangs on a stalled stream.
    async fn wait_durable_bounded(&self, shard: &ShardCore, lsn: Lsn) -> Result<(), LedgerError> {
        match tokio::time::timeout(
            Duration::from_millis(READ_DURABLE_WAIT_MS_MAX),
            shard.log.wait_durable(lsn),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(LedgerError::Unavailable {
                reason: "the state this read reflects is not durable yet",
            }),
        }
    }

    // ---------------------------------------------------------------- writes

    /// Claims an ID: `Ok(cell)` to go ahead, `Err(outcome)` when the ID was used before.
    async fn claim(
        &self,
        id: &MovementId,
        body: &MovementBody,
    ) -> Result<Arc<MovementCell>, Result<Posted, LedgerError>> {
        match self.movements.claim(id, body, self.config.clock.now()) {
            Claim::New(cell) => Ok(cell),
            Claim::Existing(cell) => Err(self.replay(&cell, body).await),
        }
    }

    /// Answers a request whose ID is already known: what the original answered (the movement,
    /// or its rejection) when the content is the same, else a conflict naming the fields.
    async fn replay(
        &self,
        cell: &MovementCell,
        body: &MovementBody,
    ) -> Result<Posted, LedgerError> {
        if &cell.body != body {
            let fields = body_diff(&cell.body, body)
                .into_iter()
                .map(String::from)
                .collect();
            return Err(Rejection::IdConflict { fields }.into());
        }
        let movement = cell.settled(&self.health.any_failed).await?;
        match (&movement.status, &movement.rejection_opt) {
            (MovementStatus::Rejected, Some(r)) => Err(LedgerError::Rejected(r.clone())),
            _ => Ok(Posted {
                movement,
                replayed: true,
            }),
        }
    }

    fn posted(cell: &MovementCell) -> Result<Posted, LedgerError> {
        let movement = cell.view();
        match (&movement.status, &movement.rejection_opt) {
            (MovementStatus::Rejected, Some(r)) => Err(LedgerError::Rejected(r.clone())),
            _ => Ok(Posted {
                movement,
                replayed: false,
            }),
        }
    }

    fn validate_transfer(t: &Transfer) -> Result<(), Rejection> {
        if t.amount_minor <= 0 {
            return Err(Rejection::InvalidAmount);
        }
        if t.debit_account_id == t.credit_account_id {
            return Err(Rejection::SameAccount);
        }
        check_description(&t.description_opt)
    }

    pub(crate) async fn transfer(&self, t: Transfer) -> Result<Posted, LedgerError> {
        self.check_open()?;
        Self::validate_transfer(&t)?;
        let _permit = self.in_flight_permit()?;
        self.run_transfer(t).await
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

    async fn run_transfer(&self, t: Transfer) -> Result<Posted, LedgerError> {
        let cell = match self
            .claim(&t.transfer_id, &MovementBody::Transfer(t.clone()))
            .await
        {
            Ok(cell) => cell,
            Err(outcome) => return outcome,
        };
        match self.drive_transfer(&t, &cell).await {
            Ok(status) => {
                self.finish_cell(&cell, status);
                Self::posted(&cell)
            }
            Err(e) => {
                // Nothing was recorded for this ID (the stream failed or was full before the
                // first record): free the ID for a retry. Once a record exists (a durable hold,
                // say) the ID stays pending: a retry must not place a second hold; recovery
                // settles it at the next start.
                if cell.unrecorded() {
                    self.movements.abandon(&t.transfer_id, &cell);
                }
                Err(e)
            }
        }
    }

    /// Records a node-level decision (a refusal decided before any account acted, or a batch
    /// decision) on an account's home shard and waits until it is durable.
    async fn record_rejection(
        &self,
        home: &AccountId,
        event: Event,
        cell_opt: Option<&MovementCell>,
    ) -> Result<(), LedgerError> {
        let ticket = self.shard(home).append(&event).await?;
        if let Some(cell) = cell_opt {
            cell.recorded_at(event.at(), self.shard_index(home), ticket.lsn);
        }
        ticket.durable().await?;
        Ok(())
    }

    /// Runs a transfer after its claim; returns the final status (Ok: committed). The credit
    /// account is checked first (a refusal is recorded on the debit account's shard); a
    /// transfer within one shard is one turn, one across shards runs the phases of
    /// [`transfer::Phase`] from the hold.
    async fn drive_transfer(
        &self,
        t: &Transfer,
        cell: &Arc<MovementCell>,
    ) -> Result<Result<(), Rejection>, LedgerError> {
        let credit_currency_opt = self
            .shard(&t.credit_account_id)
            .currency_of(&t.credit_account_id);
        if let Err(reason) = transfer::check_credit_account(t, credit_currency_opt) {
            return self.refuse_before_hold(t, reason, cell).await;
        }
        let debit_shard = self.shard_index(&t.debit_account_id);
        if debit_shard == self.shard_index(&t.credit_account_id) {
            return self
                .transfer_in_shard(&self.shards[debit_shard], t, cell)
                .await;
        }
        self.run_phases(t, Phase::Hold, Some(cell)).await
    }

    /// Records the refusal of a transfer decided before its hold, on its debit account's
    /// shard, and waits until it is durable.
    async fn refuse_before_hold(
        &self,
        t: &Transfer,
        reason: Rejection,
        cell: &MovementCell,
    ) -> Result<Result<(), Rejection>, LedgerError> {
        let event = Event::TransferRejected {
            transfer: t.clone(),
            reason: reason.clone(),
            at: self.config.clock.now(),
        };
        self.record_rejection(&t.debit_account_id, event, Some(cell))
            .await?;
        Ok(Err(reason))
    }

    /// Drives a transfer's step machine from `phase` to its end: each phase is a message to
    /// its account, and its record is durable before the next phase crosses to another shard
    /// and before the end is answered. With `cell_opt`, the first phase's record is the
    /// movement's first (its creation time and position).
    async fn run_phases(
        &self,
        t: &Transfer,
        mut phase: Phase,
        mut cell_opt: Option<&Arc<MovementCell>>,
    ) -> Result<Result<(), Rejection>, LedgerError> {
        loop {
            let account = phase.account(t);
            let (result, ticket_opt) = match self
                .exec_at(account, phase.command(t, None), cell_opt.map(|c| &**c))
                .await
            {
                // A hold on an account that does not exist: refused, and recorded as such.
                Err(LedgerError::Rejected(Rejection::AccountNotFound)) if phase == Phase::Hold => {
                    let cell = cell_opt.expect("a hold starts with its claim");
                    return self
                        .refuse_before_hold(t, Rejection::AccountNotFound, cell)
                        .await;
                }
                // Accounts are never closed: any other phase on a missing account is refused
                // like any refusal (the machine decides what follows).
                Err(LedgerError::Rejected(reason)) => (Err(reason), None),
                other => other?,
            };
            cell_opt = None;
            match phase.clone().then(t, result.map(|_| ())) {
                Next::Phase(next) => {
                    if phase.durable_before(&next, t, self.config.num_shards) {
                        if let Some(ticket) = ticket_opt {
                            ticket.durable().await?;
                        }
                    }
                    phase = next;
                }
                Next::Done(status) => {
                    if let Some(ticket) = ticket_opt {
                        ticket.durable().await?;
                    }
                    return Ok(status);
                }
            }
        }
    }

    /// A transfer whose accounts share a shard: hold, credit and commit (or release) in one
    /// turn of the shard, appended to one group commit, answered once the last is durable
    /// (within one shard the stream's order makes each earlier phase durable with it).
    async fn transfer_in_shard(
        &self,
        shard: &ShardCore,
        t: &Transfer,
        cell: &Arc<MovementCell>,
    ) -> Result<Result<(), Rejection>, LedgerError> {
        let (status, ticket) = loop {
            let room = shard.log.room();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.transfer_turn(shard, t, cell, false)? {
                InShard::Done(status, ticket) => break (status, ticket),
                InShard::Full => room.await,
            }
        };
        ticket.durable().await?;
        Ok(status)
    }

    /// A transfer whose accounts share a shard: claimed, then run in one turn of the shard
    /// (under one host lock) that also hands the movement to the shard: its log writer settles
    /// it once the turn's last record is durable. A refusal for a missing account or another
    /// currency is recorded in that same turn. The caller only waits for the outcome: the
    /// transfer needs no task of its own, and a caller that hangs up strands nothing. `None`
    /// (nothing claimed) when the accounts are on two shards: the coordinator runs it.
    pub(crate) async fn try_transfer_in_shard(
        &self,
        t: &Transfer,
    ) -> Option<Result<Posted, LedgerError>> {
        let index = self.shard_index(&t.debit_account_id);
        if index != self.shard_index(&t.credit_account_id) {
            return None;
        }
        if let Err(e) = self.check_open() {
            return Some(Err(e));
        }
        if let Err(r) = Self::validate_transfer(t) {
            return Some(Err(r.into()));
        }
        let shard = &self.shards[index];
        let _permit = match self.in_flight_permit() {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let cell = match self
            .claim(&t.transfer_id, &MovementBody::Transfer(t.clone()))
            .await
        {
            Ok(cell) => cell,
            Err(outcome) => return Some(outcome),
        };
        // A caller that stops waiting for room frees the ID it claimed (nothing is recorded).
        let unclaim = scopeguard::guard((), |()| {
            if cell.unrecorded() {
                self.movements.abandon(&t.transfer_id, &cell);
            }
        });
        let turn = loop {
            let room = shard.log.room();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.transfer_turn(shard, t, &cell, true) {
                Ok(InShard::Full) => room.await,
                Ok(InShard::Done(..)) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        drop(unclaim);
        if let Err(e) = turn {
            return Some(Err(e));
        }
        Some(match cell.settled(&self.health.any_failed).await {
            Ok(movement) => match (&movement.status, &movement.rejection_opt) {
                (MovementStatus::Rejected, Some(r)) => Err(LedgerError::Rejected(r.clone())),
                _ => Ok(Posted {
                    movement,
                    replayed: false,
                }),
            },
            Err(e) => Err(e),
        })
    }

    /// The turn of a transfer within one shard (one event, see
    /// [`Node::transfer_turn_locked`]): its status and the ticket of its record. With
    /// `settle`, the shard's log writer settles the movement once that record is durable.
    fn transfer_turn(
        &self,
        shard: &ShardCore,
        t: &Transfer,
        cell: &Arc<MovementCell>,
        settle: bool,
    ) -> Result<InShard, LedgerError> {
        Self::transfer_turn_locked(
            &mut shard.slots.lock(),
            shard,
            t,
            cell,
            settle,
            self.config.clock.now(),
        )
    }

    /// [`Node::transfer_turn`] under the host lock already taken (`slots`): `Full` when the
    /// group commit has no room. Both accounts are checked (the credit account first: it must
    /// exist in the transfer's currency; then the debit account as a hold would be, and the
    /// credit account as a credit would be) and the transfer is recorded as one event:
    /// `TransferPosted`, or `TransferRejected` with the first refusal. Its time is `now`, or
    /// the latest of both accounts' times if that is later.
    fn transfer_turn_locked(
        slots: &mut FastMap<AccountId, Slot>,
        shard: &ShardCore,
        t: &Transfer,
        cell: &Arc<MovementCell>,
        settle: bool,
        now: Timestamp,
    ) -> Result<InShard, LedgerError> {
        let (debit, credit) = (&t.debit_account_id, &t.credit_account_id);
        // Under the host lock, so that no other turn takes the room between.
        if !shard.log.room_for(1) {
            return Ok(InShard::Full);
        }
        let (debit_slot, credit_slot) = (slots.get(debit), slots.get(credit));
        let at = [debit_slot, credit_slot]
            .into_iter()
            .flatten()
            .fold(now, |at, slot| slot.turn_time(at));
        let (status, event) = transfer::decide_in_shard(
            t,
            debit_slot.map(|s| &*s.state),
            credit_slot.map(|s| &*s.state),
            at,
        );
        let TryAppend::Appended(ticket) = shard.log.try_append(&event)? else {
            unreachable!("the turn checked the log's room")
        };
        cell.recorded_at(at, shard.id as usize, ticket.lsn);
        if status.is_ok() {
            for id in [debit, credit] {
                let slot = slots.get_mut(id).expect("checked above");
                slot.state.apply(&event, shard.movements_window);
                slot.last_lsn = ticket.lsn;
            }
        }
        if settle {
            shard.log.settle_at(
                ticket.lsn,
                Settlement {
                    cell: cell.clone(),
                    outcome: status.clone().map(|()| None),
                },
            );
        }
        Ok(InShard::Done(status, ticket))
    }

    pub(crate) async fn transfer_batch(
        &self,
        cmds: Vec<Transfer>,
        atomic: bool,
    ) -> Vec<Result<Posted, LedgerError>> {
        if let Err(e) = self.check_open() {
            return cmds.iter().map(|_| Err(e.clone())).collect();
        }
        if atomic {
            return self.transfer_batch_atomic(cmds).await;
        }
        self.transfer_batch_independent(cmds).await
    }

    /// Sends one phase of a batch to every account it touches: one `ExecMany` per account with
    /// that account's commands in batch order, at most [`BATCH_CONCURRENCY_MAX`] accounts at a
    /// time. Returns, per account, the transfers' indices and the reply.
    async fn batch_phase(
        &self,
        groups: FastMap<AccountId, Vec<(usize, AccountCommand)>>,
    ) -> Vec<(AccountId, Vec<usize>, Result<AccountReply, LedgerError>)> {
        futures::stream::iter(groups)
            .map(|(account, items)| async move {
                let (idxs, cmds): (Vec<usize>, Vec<AccountCommand>) = items.into_iter().unzip();
                let reply = self.ask(&account, AccountMsg::ExecMany(cmds)).await;
                (account, idxs, reply)
            })
            .buffer_unordered(BATCH_CONCURRENCY_MAX)
            .collect()
            .await
    }

    /// Waits until each shard's stream is durable up to the LSN noted for it (0: nothing).
    /// Returns the shards whose stream failed, with the error.
    async fn wait_shards_durable(&self, lsns: &[Lsn]) -> Vec<(usize, LedgerError)> {
        // All at once: each wait tells its shard's writer that someone waits (log.rs).
        let waits =
            lsns.iter()
                .enumerate()
                .filter(|(_, &lsn)| lsn > 0)
                .map(|(shard, &lsn)| async move {
                    self.shards[shard]
                        .log
                        .wait_durable(lsn)
                        .await
                        .err()
                        .map(|e| (shard, e))
                });
        futures::future::join_all(waits)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    fn shard_index(&self, id: &AccountId) -> usize {
        shard_of(id.as_str(), self.config.num_shards) as usize
    }

    /// A batch of independent transfers, run phase by phase for the whole batch: the same
    /// protocol as [`Node::transfer`] (hold, credit, commit or release; nothing crosses a shard
    /// on a record a crash could undo), but each phase sends one message per account carrying
    /// all of that account's commands, and durability is awaited once per shard per phase
    /// instead of once per transfer.
    async fn transfer_batch_independent(
        &self,
        cmds: Vec<Transfer>,
    ) -> Vec<Result<Posted, LedgerError>> {
        let n = cmds.len();
        let num_shards = self.shards.len();
        let mut out: Vec<Option<Result<Posted, LedgerError>>> = (0..n).map(|_| None).collect();
        let Ok(_permits) = self
            .in_flight
            .clone()
            .acquire_many_owned(
                n.clamp(1, BATCH_CONCURRENCY_MAX.min(self.config.in_flight_max)) as u32,
            )
            .await
        else {
            return cmds
                .iter()
                .map(|_| {
                    Err(LedgerError::Unavailable {
                        reason: "shutting down",
                    })
                })
                .collect();
        };
        // Claims. An ID seen before (also earlier in this batch) is answered at the end, once
        // this batch's own transfers are settled.
        let mut cells: Vec<Option<Arc<MovementCell>>> = Vec::with_capacity(n);
        let mut replays = Vec::new();
        for (i, t) in cmds.iter().enumerate() {
            if let Err(r) = Self::validate_transfer(t) {
                out[i] = Some(Err(r.into()));
                cells.push(None);
                continue;
            }
            match self.movements.claim(
                &t.transfer_id,
                &MovementBody::Transfer(t.clone()),
                self.config.clock.now(),
            ) {
                Claim::New(cell) => cells.push(Some(cell)),
                Claim::Existing(cell) => {
                    replays.push((i, cell));
                    cells.push(None);
                }
            }
        }
        let mut status: Vec<Option<Result<Result<(), Rejection>, LedgerError>>> =
            (0..n).map(|_| None).collect();
        // The LSN each shard must reach before any answer (every transfer's last record is on
        // its debit account's shard).
        let mut final_lsn = vec![0; num_shards];
        let cross = |t: &Transfer| {
            self.shard_index(&t.debit_account_id) != self.shard_index(&t.credit_account_id)
        };
        // Transfers within one shard: one turn each (hold, credit, commit or release), as many
        // per host lock as the group commit has room for.
        let mut in_shard: Vec<Vec<usize>> = vec![Vec::new(); num_shards];
        for (i, t) in cmds.iter().enumerate() {
            if cells[i].is_some() && !cross(t) {
                in_shard[self.shard_index(&t.debit_account_id)].push(i);
            }
        }
        for (index, idxs) in in_shard.into_iter().enumerate() {
            let shard = &self.shards[index];
            let mut next = 0;
            while next < idxs.len() {
                let room = shard.log.room();
                tokio::pin!(room);
                room.as_mut().enable();
                {
                    let mut slots = shard.slots.lock();
                    while next < idxs.len() {
                        let i = idxs[next];
                        let cell = cells[i].as_ref().expect("claimed above");
                        match Self::transfer_turn_locked(
                            &mut slots,
                            shard,
                            &cmds[i],
                            cell,
                            false,
                            self.config.clock.now(),
                        ) {
                            Ok(InShard::Done(result, ticket)) => {
                                final_lsn[index] = final_lsn[index].max(ticket.lsn);
                                status[i] = Some(Ok(result));
                            }
                            Ok(InShard::Full) => break,
                            Err(e) => {
                                cell.maybe_recorded();
                                status[i] = Some(Err(e));
                            }
                        }
                        next += 1;
                    }
                }
                if next < idxs.len() {
                    room.await;
                }
            }
        }
        // Transfers across shards: the step machine of each, in rounds. A round sends every
        // transfer's current phase, one message per account carrying that account's phases in
        // batch order; before the next round, each shard whose record a next phase crosses on
        // is made durable (once per shard per round, not once per transfer).
        let mut phases: Vec<Option<Phase>> = (0..n).map(|_| None).collect();
        for (i, t) in cmds.iter().enumerate() {
            if cells[i].is_none() || status[i].is_some() {
                continue;
            }
            let credit_currency_opt = self
                .shard(&t.credit_account_id)
                .currency_of(&t.credit_account_id);
            match transfer::check_credit_account(t, credit_currency_opt) {
                Ok(()) => phases[i] = Some(Phase::Hold),
                Err(reason) => {
                    status[i] = Some(
                        self.record_refusal(t, reason, cells[i].as_deref(), &mut final_lsn)
                            .await,
                    );
                }
            }
        }
        loop {
            let mut groups: FastMap<AccountId, Vec<(usize, AccountCommand)>> = FastMap::new();
            for (i, phase_opt) in phases.iter().enumerate() {
                if let Some(phase) = phase_opt {
                    let t = &cmds[i];
                    groups
                        .entry(phase.account(t).clone())
                        .or_default()
                        .push((i, phase.command(t, None)));
                }
            }
            if groups.is_empty() {
                break;
            }
            // The LSN each shard must reach before the next round (a phase crossing from it).
            let mut crossing_lsn = vec![0; num_shards];
            // Per transfer, the shard whose durability its next phase waits for.
            let mut waits_on: Vec<Option<usize>> = (0..n).map(|_| None).collect();
            for (account, idxs, reply) in self.batch_phase(groups).await {
                let shard = self.shard_index(&account);
                let (at, results, last_ticket_opt) = match reply {
                    Ok(AccountReply::ExecutedMany {
                        at,
                        results,
                        last_ticket_opt,
                    }) => (at, results, last_ticket_opt),
                    Ok(_) => unreachable!("ExecMany replies ExecutedMany"),
                    // Accounts are never closed: a missing one refuses every phase sent to it.
                    Err(LedgerError::Rejected(reason)) => (
                        self.config.clock.now(),
                        idxs.iter().map(|_| (Err(reason.clone()), false)).collect(),
                        None,
                    ),
                    Err(e) => {
                        for i in idxs {
                            // Some of this account's phases may have been appended before the
                            // failure: their IDs stay pending (see `MovementCell::unrecorded`).
                            if let Some(cell) = &cells[i] {
                                cell.maybe_recorded();
                            }
                            phases[i] = None;
                            status[i] = Some(Err(e.clone()));
                        }
                        continue;
                    }
                };
                // The last record of this account's message covers each of its phases.
                let last_lsn = last_ticket_opt.as_ref().map_or(0, |t| t.lsn);
                for (i, (result, recorded)) in idxs.into_iter().zip(results) {
                    let t = &cmds[i];
                    let phase = phases[i].take().expect("sent this round");
                    if phase == Phase::Hold {
                        if result == Err(Rejection::AccountNotFound) && !recorded {
                            // A hold on an account that does not exist: recorded as refused.
                            status[i] = Some(
                                self.record_refusal(
                                    t,
                                    Rejection::AccountNotFound,
                                    cells[i].as_deref(),
                                    &mut final_lsn,
                                )
                                .await,
                            );
                            continue;
                        }
                        if recorded {
                            if let Some(cell) = &cells[i] {
                                cell.recorded_at(at, shard, last_lsn);
                            }
                        }
                    }
                    match phase.clone().then(t, result) {
                        Next::Phase(next) => {
                            if recorded && phase.durable_before(&next, t, self.config.num_shards) {
                                crossing_lsn[shard] = crossing_lsn[shard].max(last_lsn);
                                waits_on[i] = Some(shard);
                            }
                            phases[i] = Some(next);
                        }
                        Next::Done(result) => {
                            if recorded {
                                final_lsn[shard] = final_lsn[shard].max(last_lsn);
                            }
                            status[i] = Some(Ok(result));
                        }
                    }
                }
            }
            let failed = self.wait_shards_durable(&crossing_lsn).await;
            for (i, shard_opt) in waits_on.into_iter().enumerate() {
                let Some(shard) = shard_opt else { continue };
                if let Some((_, e)) = failed.iter().find(|(s, _)| *s == shard) {
                    phases[i] = None;
                    status[i] = Some(Err(e.clone()));
                }
            }
        }
        // Nothing is answered before its last record is durable.
        let failed = self.wait_shards_durable(&final_lsn).await;
        for (i, t) in cmds.iter().enumerate() {
            let Some(cell) = &cells[i] else { continue };
            let home = self.shard_index(&t.debit_account_id);
            let outcome = match status[i].take() {
                Some(Ok(result)) => match failed.iter().find(|(s, _)| *s == home) {
                    Some((_, e)) => Err(e.clone()),
                    None => Ok(result),
                },
                Some(Err(e)) => Err(e),
                None => unreachable!("every claimed transfer of the batch reaches an outcome"),
            };
            out[i] = Some(match outcome {
                Ok(result) => {
                    self.finish_cell(cell, result);
                    Self::posted(cell)
                }
                Err(e) => {
                    if cell.unrecorded() {
                        self.movements.abandon(&t.transfer_id, cell);
                    }
                    Err(e)
                }
            });
        }
        for (i, cell) in replays {
            out[i] = Some(
                self.replay(&cell, &MovementBody::Transfer(cmds[i].clone()))
                    .await,
            );
        }
        out.into_iter()
            .map(|r| r.expect("every transfer of the batch is answered"))
            .collect()
    }

    /// Records a refusal decided before any account acted (a missing account, another
    /// currency) on the transfer's home shard, noting the LSN to await before answering.
    async fn record_refusal(
        &self,
        t: &Transfer,
        reason: Rejection,
        cell_opt: Option<&MovementCell>,
        final_lsn: &mut [Lsn],
    ) -> Result<Result<(), Rejection>, LedgerError> {
        let event = Event::TransferRejected {
            transfer: t.clone(),
            reason: reason.clone(),
            at: self.config.clock.now(),
        };
        let shard = self.shard_index(&t.debit_account_id);
        let ticket = self.shards[shard].append(&event).await?;
        if let Some(cell) = cell_opt {
            cell.recorded_at(event.at(), shard, ticket.lsn);
        }
        final_lsn[shard] = final_lsn[shard].max(ticket.lsn);
        Ok(Err(reason))
    }

    /// An atomic batch: every transfer commits, or none does.
    ///
    /// Holds are placed for all and made durable; if any is refused, every placed hold is
    /// released (the others report `BatchAborted`). Otherwise a `BatchCommitted` record — the
    /// commit point — is made durable on the home shard of the first transfer, and only then
    /// do credits and commits run. Recovery releases the holds of a batch without that record
    /// and finishes those of a batch with it, so a crash never leaves half a batch applied.
    async fn transfer_batch_atomic(&self, cmds: Vec<Transfer>) -> Vec<Result<Posted, LedgerError>> {
        let n = cmds.len();
        let aborted = || Err(LedgerError::Rejected(Rejection::BatchAborted));
        if n == 0 {
            return Vec::new();
        }
        // Validation: nothing is claimed or recorded for a batch that is malformed.
        let mut ids = HashSet::new();
        let invalid: Vec<Option<Rejection>> = cmds
            .iter()
            .map(|t| {
                Self::validate_transfer(t).err().or_else(|| {
                    (!ids.insert(t.transfer_id.clone())).then(|| Rejection::IdConflict {
                        fields: vec!["id".into()],
                    })
                })
            })
            .collect();
        if invalid.iter().any(Option::is_some) {
            return invalid
                .into_iter()
                .map(|r| r.map_or_else(aborted, |r| Err(r.into())))
                .collect();
        }
        let Ok(_permits) = self
            .in_flight
            .clone()
            .acquire_many_owned(n.min(self.config.in_flight_max) as u32)
            .await
        else {
            return cmds
                .iter()
                .map(|_| {
                    Err(LedgerError::Unavailable {
                        reason: "shutting down",
                    })
                })
                .collect();
        };
        // Claims: a batch that reuses any known ID applies nothing new.
        let mut cells = Vec::with_capacity(n);
        let mut existing = Vec::new();
        for (i, t) in cmds.iter().enumerate() {
            match self.movements.claim(
                &t.transfer_id,
                &MovementBody::Transfer(t.clone()),
                self.config.clock.now(),
            ) {
                Claim::New(cell) => cells.push(Some(cell)),
                Claim::Existing(cell) => {
                    existing.push((i, cell));
                    cells.push(None);
                }
            }
        }
        if !existing.is_empty() {
            for (t, cell) in cmds.iter().zip(&cells) {
                if let Some(cell) = cell {
                    self.movements.abandon(&t.transfer_id, cell);
                }
            }
            let mut out: Vec<Result<Posted, LedgerError>> = (0..n).map(|_| aborted()).collect();
            for (i, cell) in existing {
                out[i] = self
                    .replay(&cell, &MovementBody::Transfer(cmds[i].clone()))
                    .await;
            }
            return out;
        }
        let cells: Vec<Arc<MovementCell>> =
            cells.into_iter().map(|c| c.expect("all new")).collect();
        match self.run_atomic(&cmds, &cells).await {
            Ok(statuses) => cmds
                .iter()
                .zip(&cells)
                .zip(statuses)
                .map(|((_, cell), status)| {
                    self.finish_cell(cell, status);
                    Self::posted(cell)
                })
                .collect(),
            Err(e) => {
                for (t, cell) in cmds.iter().zip(&cells) {
                    if cell.unrecorded() {
                        self.movements.abandon(&t.transfer_id, cell);
                    }
                }
                cmds.iter().map(|_| Err(e.clone())).collect()
            }
        }
    }

    /// Runs the phases of an atomic batch; returns each transfer's final status.
    async fn run_atomic(
        &self,
        cmds: &[Transfer],
        cells: &[Arc<MovementCell>],
    ) -> Result<Vec<Result<(), Rejection>>, LedgerError> {
        let batch_id = cmds[0].transfer_id.clone();
        let now = self.config.clock.now();
        // Credit accounts must exist in the currency (they cannot change afterwards).
        let refusal_opt = cmds.iter().enumerate().find_map(|(i, t)| {
            let credit_currency_opt = self
                .shard(&t.credit_account_id)
                .currency_of(&t.credit_account_id);
            transfer::check_credit_account(t, credit_currency_opt)
                .err()
                .map(|reason| (i, reason))
        });
        if let Some((bad, reason)) = refusal_opt {
            let mut out = Vec::new();
            for (i, t) in cmds.iter().enumerate() {
                let r = if i == bad {
                    reason.clone()
                } else {
                    Rejection::BatchAborted
                };
                let ev = Event::TransferRejected {
                    transfer: t.clone(),
                    reason: r.clone(),
                    at: now,
                };
                self.record_rejection(&t.debit_account_id, ev, Some(&cells[i]))
                    .await?;
                out.push(Err(r));
            }
            return Ok(out);
        }
        // Phase 1 for all, durable before anything else happens.
        let holds = futures::future::join_all(cmds.iter().zip(cells).map(|(t, cell)| {
            let cmd = AccountCommand::Hold(t.clone(), Some(batch_id.clone()));
            async move { self.exec_at(&t.debit_account_id, cmd, Some(cell)).await }
        }))
        .await;
        let mut placed = vec![false; cmds.len()];
        let mut refused: Vec<Option<Rejection>> = vec![None; cmds.len()];
        let mut failure_opt = None;
        for (i, (t, hold)) in cmds.iter().zip(holds).enumerate() {
            match hold {
                Ok((result, ticket_opt)) => {
                    ticket_opt
                        .expect("a hold or its refusal is recorded")
                        .durable()
                        .await?;
                    match result {
                        Ok(_) => placed[i] = true,
                        Err(r) => refused[i] = Some(r),
                    }
                }
                Err(LedgerError::Rejected(Rejection::AccountNotFound)) => {
                    let ev = Event::TransferRejected {
                        transfer: t.clone(),
                        reason: Rejection::AccountNotFound,
                        at: now,
                    };
                    self.record_rejection(&t.debit_account_id, ev, Some(&cells[i]))
                        .await?;
                    refused[i] = Some(Rejection::AccountNotFound);
                }
                Err(e) => failure_opt = Some(e),
            }
        }
        if failure_opt.is_some() || refused.iter().any(Option::is_some) {
            let mut out = Vec::new();
            for (i, t) in cmds.iter().enumerate() {
                if placed[i] {
                    out.push(
                        self.run_phases(t, Phase::Release(Rejection::BatchAborted), None)
                            .await?,
                    );
                } else {
                    out.push(Err(refused[i].clone().unwrap_or(Rejection::BatchAborted)));
                }
            }
            return match failure_opt {
                Some(e) => Err(e),
                None => Ok(out),
            };
        }
        // Room for every credit, reserved on the credit accounts before the commit point, so
        // that no credit can be refused after it (a partial atomic batch).
        if let Some(out) = self.reserve_batch_credits(cmds).await? {
            return Ok(out);
        }
        // The commit point.
        let decision = Event::BatchCommitted {
            batch_id: batch_id.clone(),
            transfer_ids: cmds.iter().map(|t| t.transfer_id.clone()).collect(),
            at: now,
        };
        let decided = self
            .record_rejection(&cmds[0].debit_account_id, decision, None)
            .await;
        if let Err(e) = decided {
            // Undecided: recovery (at the next start) releases the holds; the reservations
            // are given back now so that the accounts take credits again.
            for t in cmds {
                self.release_incoming(t).await;
            }
            return Err(e);
        }
        let finished = futures::future::join_all(
            cmds.iter()
                .map(|t| self.run_phases(t, Phase::CreditDecided { reserved: true }, None)),
        )
        .await;
        finished.into_iter().collect()
    }

    /// Reserves room for each credit of an atomic batch whose holds are all placed and
    /// durable. `Ok(None)`: every credit is reserved, and the state each reservation was
    /// checked on is durable (so that a crash cannot hand recovery a balance with less room).
    /// `Ok(Some(outcomes))`: a credit account has no room; the reservations are given back,
    /// the holds released, and the batch answered (`balance_overflow` for that transfer,
    /// `batch_aborted` for the others).
    async fn reserve_batch_credits(
        &self,
        cmds: &[Transfer],
    ) -> Result<Option<Vec<Result<(), Rejection>>>, LedgerError> {
        let replies = futures::future::join_all(
            cmds.iter()
                .map(|t| self.ask(&t.credit_account_id, AccountMsg::ReserveIncoming(t.clone()))),
        )
        .await;
        let mut reserved = Vec::with_capacity(cmds.len());
        let mut lsns = vec![0; self.shards.len()];
        let mut refusal_opt = None;
        for (i, (t, reply)) in cmds.iter().zip(replies).enumerate() {
            match reply {
                Ok(AccountReply::Reserved(Ok(()), lsn)) => {
                    reserved.push(t);
                    let shard = self.shard_index(&t.credit_account_id);
                    lsns[shard] = lsns[shard].max(lsn);
                }
                Ok(AccountReply::Reserved(Err(reason), _)) => {
                    refusal_opt.get_or_insert((Some(i), reason));
                }
                Ok(_) => unreachable!("ReserveIncoming replies Reserved"),
                // The batch is not decided: abort it rather than leave its holds open.
                Err(e) => {
                    tracing::warn!(error = %e, "reserving an atomic batch's credit failed; the batch aborts");
                    refusal_opt.get_or_insert((None, Rejection::BatchAborted));
                }
            }
        }
        let failed = if refusal_opt.is_none() {
            self.wait_shards_durable(&lsns).await
        } else {
            Vec::new()
        };
        if refusal_opt.is_none() && failed.is_empty() {
            return Ok(None);
        }
        for t in reserved {
            self.release_incoming(t).await;
        }
        if let Some((_, e)) = failed.into_iter().next() {
            return Err(e);
        }
        let (bad_opt, reason) = refusal_opt.expect("a refusal or a failure");
        let mut out = Vec::with_capacity(cmds.len());
        for (i, t) in cmds.iter().enumerate() {
            let reason = if Some(i) == bad_opt {
                reason.clone()
            } else {
                Rejection::BatchAborted
            };
            out.push(self.run_phases(t, Phase::Release(reason), None).await?);
        }
        Ok(Some(out))
    }

    /// Gives back the room reserved for a batch's credit.
    async fn release_incoming(&self, t: &Transfer) {
        let reply = self
            .ask(
                &t.credit_account_id,
                AccountMsg::ReleaseIncoming(t.amount_minor),
            )
            .await;
        if let Err(e) = reply {
            // Only room near the balance type's limit stays held back, until the restart
            // (reservations live in memory): not worth stopping the node for.
            tracing::warn!(account = %t.credit_account_id, error = %e, "a reservation was not given back");
        }
    }

    pub(crate) async fn post_entry(&self, e: Entry) -> Result<Posted, LedgerError> {
        self.check_open()?;
        if e.amount_minor <= 0 {
            return Err(Rejection::InvalidAmount.into());
        }
        check_description(&e.description_opt)?;
        let _permit = self.in_flight_permit()?;
        let cell = match self
            .claim(&e.entry_id, &MovementBody::Entry(e.clone()))
            .await
        {
            Ok(cell) => cell,
            Err(outcome) => return outcome,
        };
        let result = async {
            match self
                .exec_at(&e.account_id, AccountCommand::Entry(e.clone()), Some(&cell))
                .await
            {
                Err(LedgerError::Rejected(Rejection::AccountNotFound)) => {
                    let ev = Event::EntryRejected {
                        entry: e.clone(),
                        reason: Rejection::AccountNotFound,
                        at: self.config.clock.now(),
                    };
                    self.record_rejection(&e.account_id, ev, Some(&cell))
                        .await?;
                    Ok(Err(Rejection::AccountNotFound))
                }
                Err(other) => Err(other),
                Ok((result, ticket_opt)) => {
                    ticket_opt
                        .expect("an entry or its refusal is recorded")
                        .durable()
                        .await?;
                    Ok(result.map(|ev| match ev {
                        Event::EntryApplied {
                            balance_after_minor,
                            ..
                        } => balance_after_minor,
                        _ => unreachable!("an entry records EntryApplied"),
                    }))
                }
            }
        }
        .await;
        match result {
            Ok(Ok(balance_after)) => {
                cell.finish(MovementStatus::Committed, None, Some(balance_after))
            }
            Ok(Err(r)) => cell.finish(MovementStatus::Rejected, Some(r), None),
            Err(err) => {
                if cell.unrecorded() {
                    self.movements.abandon(&e.entry_id, &cell);
                }
                return Err(err);
            }
        }
        Self::posted(&cell)
    }

    // ---------------------------------------------------------------- operations

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && !self.stopping.load(Ordering::Acquire)
            && !self.health.any_failed.is_cancelled()
    }

    /// Returns the shards whose stream failed, with the cause.
    pub(crate) fn failed_shards(&self) -> Vec<(u32, String)> {
        self.health.failed()
    }

    /// Returns a token cancelled once a failed shard's stream takes writes again (the
    /// process must then restart to recover it).
    pub(crate) fn restart_required(&self) -> CancellationToken {
        self.health.restart_required.clone()
    }

    pub(crate) fn stats(&self) -> LedgerStats {
        let mut s = LedgerStats {
            in_flight: (self.config.in_flight_max - self.in_flight.available_permits()) as u64,
            snapshots_total: self.snapshots_total.load(Ordering::Relaxed),
            failed_shards: self.health.failed(),
            backend: {
                let mut b = self.wal.metrics();
                b.extend(self.snapshots.metrics());
                b
            },
            ..LedgerStats::default()
        };
        let mut oldest_opt: Option<Instant> = None;
        let mut all_snapshotted = true;
        for shard in &self.shards {
            s.num_accounts += shard.slots.lock().len() as u64;
            s.wal_append_latency_us_sum += shard
                .log
                .append_latency_us
                .add_cumulative(&mut s.wal_append_latency_us);
            s.wal_batch_events_sum += shard
                .log
                .batch_events
                .add_cumulative(&mut s.wal_batch_events);
            match shard.last_snapshot.lock().1 {
                Some(t) => oldest_opt = Some(oldest_opt.map_or(t, |o| o.min(t))),
                None => all_snapshotted = false,
            }
        }
        s.wal_batches_total = s.wal_batch_events.last().map_or(0, |b| b.1);
        s.wal_events_total = s.wal_batch_events_sum;
        if all_snapshotted {
            s.snapshot_age_s_opt = oldest_opt.map(|t| t.elapsed().as_secs());
        }
        s
    }

    async fn run_background(self: Arc<Self>) {
        let tick = Duration::from_millis(match self.config.snapshot_interval_ms {
            0 => SNAPSHOT_CHECK_MS_MAX,
            interval => (interval / 2).clamp(10, SNAPSHOT_CHECK_MS_MAX),
        });
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = self.stop_background.cancelled() => return,
            }
            for shard in &self.shards {
                let (lsn, at_opt) = *shard.last_snapshot.lock();
                let durable = shard.log.durable_lsn();
                // 0 turns a trigger off (both 0: a `saldo snapshotter` beside the node does it).
                let due_by_count = self.config.snapshot_every_events > 0
                    && durable.saturating_sub(lsn) >= self.config.snapshot_every_events;
                let due_by_time = self.config.snapshot_interval_ms > 0
                    && durable > lsn
                    && at_opt.is_none_or(|t| {
                        t.elapsed() >= Duration::from_millis(self.config.snapshot_interval_ms)
                    });
                if due_by_count || due_by_time {
                    match self.clone().snapshot_on_own_thread(shard.clone()).await {
                        Ok(()) => {}
                        Err(e) => {
                            tracing::warn!(shard = shard.id, error = %e, "snapshot failed; will retry")
                        }
                    }
                }
            }
        }
    }

    /// Runs [`Node::snapshot_shard`] on a thread of its own at [`SNAPSHOT_THREAD_NICE`]:
    /// folding a shard's stream is CPU-bound, so it must neither hold one of the runtime's
    /// workers (with two cores, that would stall half the request path for the whole fold) nor
    /// compete with them as an equal.
    async fn snapshot_on_own_thread(self: Arc<Self>, shard: Arc<ShardCore>) -> Result<(), String> {
        let handle = tokio::runtime::Handle::current();
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("snapshot-{}", shard.id))
            .spawn(move || {
                lower_this_threads_priority(SNAPSHOT_THREAD_NICE);
                let result = handle.block_on(self.snapshot_shard(&shard));
                let _ = done.send(result.map_err(|e| e.to_string()));
            })
            .map_err(|e| format!("the snapshot thread did not start: {e}"))?;
        finished
            .await
            .map_err(|_| "the snapshot thread stopped".to_string())?
    }

    /// Writes a snapshot of a shard folded from its durable stream (never from live memory,
    /// so the hot path is not paused), keeps the newest ones and prunes the stream below them.
    async fn snapshot_shard(&self, shard: &ShardCore) -> Result<(), EngineError> {
        let meta = crate::recovery::write_snapshot(
            &*self.wal,
            &*self.snapshots,
            shard.id,
            self.config.movements_window,
            self.config.snapshots_keep,
        )
        .await?;
        self.snapshots_total.fetch_add(1, Ordering::Relaxed);
        let state_lsn = meta.lsn;
        *shard.last_snapshot.lock() = (state_lsn, Some(Instant::now()));
        Ok(())
    }

    pub(crate) async fn snapshot_now(&self) -> Result<(), EngineError> {
        for shard in &self.shards {
            self.snapshot_shard(shard).await?;
        }
        Ok(())
    }

    pub(crate) async fn state_checksum(&self) -> Result<[u8; 32], EngineError> {
        let mut all = Vec::new();
        for shard in &self.shards {
            let ids: Vec<AccountId> = shard.slots.lock().keys().cloned().collect();
            for id in ids {
                all.push(
                    self.account_state(&id)
                        .map_err(|e| EngineError::Restore(e.to_string()))?
                        .0,
                );
            }
        }
        Ok(crate::state::digest(&all))
    }

    /// Returns `(lsn, digest)` of one shard's accounts at a quiet moment: nothing appended but
    /// not yet durable, and nothing appended while the states were read, so the digest is the
    /// fold of the stream up to `lsn` (what `saldo shard verify` rebuilds). `None` when the
    /// shard never went quiet within the attempts.
    pub(crate) async fn shard_checksum(
        &self,
        shard: u32,
    ) -> Result<Option<(Lsn, [u8; 32])>, EngineError> {
        let Some(s) = self.shards.get(shard as usize) else {
            return Err(EngineError::Restore(format!(
                "shard {shard} is not on this node ({} shards)",
                self.shards.len()
            )));
        };
        for _ in 0..SHARD_CHECKSUM_ATTEMPTS {
            let before = s.log.durable_lsn();
            if s.log.assigned_lsn() != before {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            let ids: Vec<AccountId> = s.slots.lock().keys().cloned().collect();
            let mut all = Vec::with_capacity(ids.len());
            for id in ids {
                all.push(
                    self.account_state(&id)
                        .map_err(|e| EngineError::Restore(e.to_string()))?
                        .0,
                );
            }
            if s.log.assigned_lsn() == before && s.log.durable_lsn() == before {
                return Ok(Some((before, crate::state::digest(&all))));
            }
        }
        Ok(None)
    }

    pub(crate) async fn shutdown(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wait for in-flight calls (bounded), then flush and stop the writers.
        let all = u32::try_from(self.config.in_flight_max).unwrap_or(u32::MAX);
        let _ =
            tokio::time::timeout(Duration::from_secs(10), self.in_flight.acquire_many(all)).await;
        self.stop_background.cancel();
        self.stop_writers.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        tracing::info!("ledger stopped; stream flushed");
    }
}
