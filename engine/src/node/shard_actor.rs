//! A shard's actor: the kameo actor that hosts the shard's accounts and runs their turns.
//!
//! Writes reach a shard two ways, and both end in the actor's ticks:
//! - **Callers' commands queue at their shard** ([`Work`], [`Node::enqueue`]): a single
//!   transfer within the shard, an entry, a cross-shard transfer's first phase, an account's
//!   opening. A caller that
//!   queues when no tick is coming sends the actor a [`Tick`]; a tick takes everything queued
//!   and runs it in order, each command one turn of its accounts (decide, append to the shard's
//!   filling group commit, apply). The shard's log writer answers each caller once the
//!   command's record is durable (the movement's `Settlement`), so the next tick decides
//!   while this one's record is written. Once a command is queued the shard owns it: a caller
//!   that hangs up strands nothing, and no task is spawned per write.
//! - **Messages from other shards** ([`Phases`]): a cross-shard transfer's next phase, sent by
//!   the source shard's log writer once the record before it is durable, batched per shard
//!   pair (one kameo message per destination per durable record of the source,
//!   [`Node::flush_outbox`]).
//!
//! A turn that finds the group commit full waits, in the actor, for room (backpressure: the
//! queue and the mailbox grow meanwhile, bounded by the node's `in_flight_max`).
//!
//! - **A coordinator's messages** ([`Work::Ask`], [`Work::Record`]): an atomic batch's holds,
//!   credit reservations and shard-level records (its refusals and its commit point), each
//!   answered as soon as its turn ran; the coordinator waits for durability itself. Recovery's
//!   resumed holds and an atomic batch's later phases are cross-shard messages like any other
//!   (`Node::carry_on`).
//!
//! The host lock (`ShardCore::slots`) stays: readers look at durable state under it
//! (docs/engine.md, "Not there yet").
//!
//! A panic in a turn is a failed invariant: the process stops (a crash beats a wrong balance,
//! and a dead shard would answer 503 forever).

use std::sync::Weak;

use kameo::{
    actor::{Actor, ActorRef, Spawn, WeakActorRef},
    error::{ActorStopReason, Infallible, PanicError},
    mailbox,
    message::{Context, Message},
};

use super::{accounts::OpenStep, transfers::PhaseMsg, *};

/// A write queued at a shard: what the shard's next tick runs.
pub(super) enum Work {
    /// A transfer whose two accounts are on this shard (one turn, one event).
    Transfer {
        t: Transfer,
        cell: Arc<MovementCell>,
        permit_opt: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// An entry on an account of this shard.
    Entry {
        e: Entry,
        cell: Arc<MovementCell>,
        permit_opt: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// A cross-shard transfer's message to this shard.
    Phase(PhaseMsg),
    /// The opening of an account of this shard; what the turn found or did goes back to the
    /// caller.
    Open {
        cmd: OpenAccount,
        permit_opt: Option<tokio::sync::OwnedSemaphorePermit>,
        reply_opt: Option<OpenReply>,
    },
    /// A message to one account of this shard from an atomic batch's coordinator (a hold, a
    /// credit's reservation or its return): the account's reply goes back as soon as its turn
    /// ran, with the record's ticket when it recorded one (the coordinator waits for
    /// durability itself).
    Ask {
        account: AccountId,
        msg: AccountMsg,
        reply_opt: Option<AskReply>,
    },
    /// A record of the shard itself, not of one account's turn: an atomic batch's refusals
    /// decided before any account acted, and its decision. Its ticket goes back once appended.
    Record {
        event: Event,
        reply_opt: Option<RecordReply>,
    },
}

/// Where an opening's turn answers.
pub(super) type OpenReply = tokio::sync::oneshot::Sender<Result<OpenStep, LedgerError>>;
/// Where an account's turn for a coordinator answers.
pub(super) type AskReply = tokio::sync::oneshot::Sender<Result<AccountReply, LedgerError>>;
/// Where a shard's own record answers.
pub(super) type RecordReply = tokio::sync::oneshot::Sender<Result<crate::log::Ticket, LedgerError>>;

impl Work {
    /// A write that the stream refused (it failed) did nothing: a movement's ID is freed (its
    /// caller learns of the failure from `StreamHealth`), an opening's caller is told.
    fn refused(mut self, node: &Node, e: LedgerError) {
        let (id, cell) = match &mut self {
            Work::Transfer { t, cell, .. } => (&t.transfer_id, &*cell),
            Work::Entry { e, cell, .. } => (&e.entry_id, &*cell),
            Work::Phase(msg) => msg.movement(),
            Work::Open { reply_opt, .. } => {
                if let Some(reply) = reply_opt.take() {
                    let _ = reply.send(Err(e));
                }
                return;
            }
            Work::Ask { reply_opt, .. } => {
                if let Some(reply) = reply_opt.take() {
                    let _ = reply.send(Err(e));
                }
                return;
            }
            Work::Record { reply_opt, .. } => {
                if let Some(reply) = reply_opt.take() {
                    let _ = reply.send(Err(e));
                }
                return;
            }
        };
        if cell.unrecorded() {
            node.movements.abandon(id, cell);
        }
    }
}

/// The writes queued at a shard, and whether its actor has a tick coming that will take them.
#[derive(Default)]
pub(super) struct Queue {
    works: Vec<Work>,
    /// A tick is on its way and has not taken the queue yet: writes queued meanwhile go with
    /// it. (A tick takes the queue once: the next one queues behind the messages of other
    /// shards that came meanwhile, so neither starves the other.)
    scheduled: bool,
}

/// The actor of one shard.
pub(crate) struct ShardActor {
    node: Weak<Node>,
    index: usize,
    /// The queue's previous buffer, emptied (no allocation per tick).
    spare: Vec<Work>,
}

/// Runs what the shard's queue holds.
pub(crate) struct Tick;

/// Cross-shard transfers' messages to this shard, in the order the sender's records became
/// durable.
pub(crate) struct Phases(pub(super) Vec<PhaseMsg>);

impl ShardActor {
    /// Spawns the actor of shard `index` (unbounded mailbox: what bounds the work in flight is
    /// the node's `in_flight_max`, taken before anything is queued).
    pub(super) fn spawn(node: Weak<Node>, index: usize) -> ActorRef<ShardActor> {
        <ShardActor as Spawn>::spawn_with_mailbox(
            ShardActor {
                node,
                index,
                spare: Vec::new(),
            },
            mailbox::unbounded(),
        )
    }
}

impl Actor for ShardActor {
    type Args = Self;
    type Error = Infallible;

    async fn on_start(args: Self, _: ActorRef<Self>) -> Result<Self, Self::Error> {
        Ok(args)
    }

    async fn on_panic(
        &mut self,
        _: WeakActorRef<Self>,
        err: PanicError,
    ) -> Result<std::ops::ControlFlow<ActorStopReason>, Self::Error> {
        tracing::error!(shard = self.index, error = %err, "a shard's turn failed an invariant; the process stops");
        std::process::abort();
    }
}

impl Message<Tick> for ShardActor {
    type Reply = ();

    async fn handle(&mut self, _: Tick, _: &mut Context<Self, ()>) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let shard = node.shards[self.index].clone();
        let mut queued = std::mem::take(&mut self.spare);
        {
            let mut queue = shard.queue.lock();
            std::mem::swap(&mut queue.works, &mut queued);
            queue.scheduled = false;
        }
        node.run_works(&shard, queued.drain(..)).await;
        self.spare = queued;
    }
}

impl Message<Phases> for ShardActor {
    type Reply = ();

    async fn handle(&mut self, Phases(msgs): Phases, _: &mut Context<Self, ()>) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let shard = node.shards[self.index].clone();
        node.run_works(&shard, msgs.into_iter().map(Work::Phase))
            .await;
    }
}

impl Node {
    /// Queues a write at shard `index`; when no tick is coming, sends the one that will run
    /// it. `Err` when the shard's actor is gone (the node is stopping): nothing ran.
    pub(super) fn enqueue(&self, index: usize, work: Work) -> Result<(), LedgerError> {
        self.enqueue_with(index, |works| works.push(work))
    }

    /// [`Node::enqueue`] for many writes, queued in order in one go (a batch's share of the
    /// shard).
    pub(super) fn enqueue_many(
        &self,
        index: usize,
        mut more: Vec<Work>,
    ) -> Result<(), LedgerError> {
        self.enqueue_with(index, |works| works.append(&mut more))
    }

    fn enqueue_with(
        &self,
        index: usize,
        push: impl FnOnce(&mut Vec<Work>),
    ) -> Result<(), LedgerError> {
        let shard = &self.shards[index];
        let send_tick = {
            let mut queue = shard.queue.lock();
            push(&mut queue.works);
            !std::mem::replace(&mut queue.scheduled, true)
        };
        if send_tick {
            let actor = shard.actor.get().expect("the shard's actor runs");
            if actor.tell(Tick).try_send().is_err() {
                return Err(LedgerError::Unavailable {
                    reason: "shutting down",
                });
            }
        }
        Ok(())
    }

    /// Sends the messages that shard `index`'s settlements queued, one kameo message per
    /// destination shard (in order per destination). Run by the shard's log writer after the
    /// settlements of each durable record.
    pub(super) fn flush_outbox(&self, index: usize) {
        let mut msgs = std::mem::take(&mut *self.shards[index].outbox.lock());
        if msgs.is_empty() {
            return;
        }
        let n = self.config.num_shards;
        // A stable sort: each destination gets its messages in the order they were queued.
        msgs.sort_by_key(|m| m.shard_index(n));
        let mut batch = Vec::new();
        let mut to_opt = None;
        for msg in msgs {
            let to = msg.shard_index(n);
            if let Some(before) = to_opt.filter(|&before| before != to) {
                self.send_phases(before, std::mem::take(&mut batch));
            }
            to_opt = Some(to);
            batch.push(msg);
        }
        if let Some(to) = to_opt {
            self.send_phases(to, batch);
        }
    }

    /// Sends phase messages to shard `to`'s actor. A stopped actor (the node is stopping)
    /// drops them: the phases they carry are not recorded yet, and recovery at the next start
    /// finishes or releases their holds.
    pub(super) fn send_phases(&self, to: usize, msgs: Vec<PhaseMsg>) {
        if let Some(actor) = self.shards[to].actor.get() {
            let actor = actor.clone();
            let to = u32::try_from(to).expect("a shard index fits in u32");
            self.config.courier.send(to, move || {
                let _ = actor.tell(Phases(msgs)).try_send();
            });
        }
    }

    /// Runs queued writes in order on `shard`. A write that finds the group commit full waits
    /// here for room (the shard's ticks wait with it). A write the stream refuses (it failed)
    /// did nothing: its ID is freed, and its caller learns of the failure from `StreamHealth`.
    async fn run_works(self: &Arc<Self>, shard: &ShardCore, works: impl Iterator<Item = Work>) {
        let mut works = works.peekable();
        while let Some(mut work) = works.next() {
            // The next write's accounts are fetched into the caches while this one runs.
            if let Some(next) = works.peek() {
                self.prefetch_accounts(shard, next);
            }
            loop {
                match self.run_work(shard, work) {
                    Ok(None) => break,
                    Ok(Some(full)) => {
                        work = full;
                        loop {
                            let room = shard.log.room();
                            tokio::pin!(room);
                            room.as_mut().enable();
                            if shard.log.room_for(1) {
                                break;
                            }
                            room.await;
                        }
                    }
                    Err((work, e)) => {
                        work.refused(self, e);
                        break;
                    }
                }
            }
        }
    }

    /// Asks the CPU to fetch the states of the accounts a queued write changes first
    /// (`AccountTable::prefetch`).
    fn prefetch_accounts(&self, shard: &ShardCore, work: &Work) {
        let slots = shard.slots.lock();
        match work {
            Work::Transfer { t, .. } => {
                slots.prefetch(&t.debit_account_id);
                slots.prefetch(&t.credit_account_id);
            }
            Work::Entry { e, .. } => slots.prefetch(&e.account_id),
            Work::Phase(msg) => slots.prefetch(msg.account()),
            Work::Ask { account, .. } => slots.prefetch(account),
            Work::Open { .. } | Work::Record { .. } => {}
        }
    }

    /// One turn: `Ok(Some(work))` back when the group commit is full (nothing happened).
    #[allow(clippy::result_large_err)]
    fn run_work(
        self: &Arc<Self>,
        shard: &ShardCore,
        work: Work,
    ) -> Result<Option<Work>, (Work, LedgerError)> {
        let mut work = match work {
            Work::Phase(msg) => {
                return match self.run_phase(msg) {
                    Ok(full_opt) => Ok(full_opt.map(Work::Phase)),
                    Err((msg, e)) => Err((Work::Phase(msg), e)),
                };
            }
            work => work,
        };
        let ran = match &mut work {
            Work::Transfer {
                t,
                cell,
                permit_opt,
            } => self.transfer_turn(shard, t, cell, permit_opt),
            Work::Entry {
                e,
                cell,
                permit_opt,
            } => self.entry_turn(shard, e, cell, permit_opt),
            Work::Open {
                cmd,
                permit_opt,
                reply_opt,
            } => self.open_turn(shard, cmd, permit_opt, reply_opt),
            Work::Ask {
                account,
                msg,
                reply_opt,
            } => self.ask_turn(shard, account, msg, reply_opt),
            Work::Record { event, reply_opt } => Self::record_turn(shard, event, reply_opt),
            Work::Phase(_) => unreachable!("run above"),
        };
        match ran {
            Ok(true) => Ok(None),
            Ok(false) => Ok(Some(work)),
            Err(e) => Err((work, e)),
        }
    }

    /// An account's turn for a coordinator ([`Work::Ask`]): `false` (and nothing done) when
    /// the group commit has no room for a command's record.
    fn ask_turn(
        &self,
        shard: &ShardCore,
        account: &AccountId,
        msg: &AccountMsg,
        reply_opt: &mut Option<AskReply>,
    ) -> Result<bool, LedgerError> {
        let reply = {
            let mut slots = shard.slots.lock();
            match (slots.get_mut(account), msg) {
                (None, _) => Err(Rejection::AccountNotFound.into()),
                (Some(slot), AccountMsg::Exec(cmd)) => {
                    // The turn's time is taken at each (re)delivery: while this message waited
                    // for room, other turns may have moved the account's clock on.
                    let at = slot.turn_time(self.config.clock.now());
                    match slot.exec(&shard.log, shard.movements_window, cmd, at)? {
                        Turn::Full => return Ok(false),
                        Turn::Done { result, ticket_opt } => Ok(AccountReply::Executed {
                            at,
                            result,
                            ticket_opt,
                        }),
                    }
                }
                (Some(slot), msg) => Ok(slot.read(msg.clone())),
            }
        };
        if let Some(reply_to) = reply_opt.take() {
            let _ = reply_to.send(reply);
        }
        Ok(true)
    }

    /// A shard's own record ([`Work::Record`]): `false` (and nothing done) when the group
    /// commit has no room for it.
    fn record_turn(
        shard: &ShardCore,
        event: &Event,
        reply_opt: &mut Option<RecordReply>,
    ) -> Result<bool, LedgerError> {
        let appended = {
            let _host = shard.slots.lock();
            shard.log.try_append(event)?
        };
        let TryAppend::Appended(ticket) = appended else {
            return Ok(false);
        };
        if let Some(reply) = reply_opt.take() {
            let _ = reply.send(Ok(ticket));
        }
        Ok(true)
    }
}
