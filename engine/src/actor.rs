//! The async shell around the pure account: one kameo actor per *live* account.
//!
//! Accounts are virtual actors: a shard keeps every account's state compactly in a [`Slot`]
//! while it is passive; the first message activates an actor that takes the state over; an
//! actor idle for `passivate_after_ms` hands its state back and stops. A message that reaches
//! an actor after it passivated is answered [`AccountReply::Moved`] (or fails to send because the
//! actor stopped): the caller resolves the account again and resends, at most
//! [`crate::limits::ACTIVATION_RETRIES_MAX`] times.
//!
//! Handlers never `ask` another actor (two accounts asking each other would deadlock): the
//! transfer's phases are driven by the coordinator in [`crate::node`]. Business rejections are
//! reply values; a handler never fails, because an `Err` reply to a `tell` stops a kameo actor.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use kameo::{
    actor::ActorRef,
    error::Infallible,
    message::{Context, Message},
    Actor, Reply,
};
use saldo_persistence::Lsn;

use crate::{
    account::{AccountCommand, AccountState},
    event::Event,
    log::Ticket,
    node::ShardCore,
    types::{DailyRow, Day, LedgerError, MovementsPage, Rejection, Timestamp},
};

/// Where a shard keeps an account.
pub(crate) enum Slot {
    /// Not live: the state itself, and the LSN of its latest event.
    Passive(Box<AccountState>, Lsn),
    /// Live: the actor owns the state. The currency is kept here for routing checks, and the
    /// time of the actor's last message (ms, see [`coarse_now_ms`]) so that the reaper finds
    /// idle actors without messaging every live one.
    Active(
        ActorRef<AccountActor>,
        crate::types::Currency,
        Arc<AtomicU64>,
    ),
}

/// Returns milliseconds since the first call in this process (a monotonic, cheap clock for
/// idleness, never for money).
pub(crate) fn coarse_now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A live account.
pub(crate) struct AccountActor {
    /// `None` once passivated: the state went back to the shard.
    state_opt: Option<AccountState>,
    /// LSN of the latest event applied (reads wait until it is durable).
    last_lsn: Lsn,
    shard: Arc<ShardCore>,
    /// Shared with the shard's slot: when the actor last handled a message (ms).
    last_active_ms: Arc<AtomicU64>,
}

impl Actor for AccountActor {
    type Args = (AccountState, Lsn, Arc<ShardCore>, Arc<AtomicU64>);
    type Error = Infallible;

    async fn on_start(
        (state, last_lsn, shard, last_active_ms): Self::Args,
        _: ActorRef<Self>,
    ) -> Result<Self, Self::Error> {
        Ok(AccountActor {
            state_opt: Some(state),
            last_lsn,
            shard,
            last_active_ms,
        })
    }
}

/// A message to an account actor.
#[derive(Clone, Debug)]
pub(crate) enum AccountMsg {
    Exec(AccountCommand),
    /// Many commands in one turn (a batch's phase for this account), in order.
    ExecMany(Vec<AccountCommand>),
    View,
    Movements {
        limit: usize,
        cursor_opt: Option<u64>,
    },
    Daily {
        from: Day,
        to: Day,
    },
    State,
    /// Reserve room for an atomic batch's credit (records nothing).
    ReserveIncoming(crate::types::Transfer),
    /// Give back a reservation whose batch aborted.
    ReleaseIncoming(i64),
    Passivate {
        idle: Duration,
    },
}

/// The reply of an account actor.
#[derive(Reply)]
pub(crate) enum AccountReply {
    /// The actor passivated: resolve the account again and resend.
    Moved,
    /// A command ran: `Ok(event)` applied, or the rejection. The ticket (when something was
    /// recorded) says when it is durable.
    Executed {
        /// The time of the recorded event (when something was recorded).
        at: Timestamp,
        result: Result<Event, Rejection>,
        ticket_opt: Option<Ticket>,
    },
    /// Many commands ran, in order: each outcome, and whether it was recorded. The ticket of
    /// the last record covers every earlier one (a shard's records become durable in order).
    ExecutedMany {
        at: Timestamp,
        results: Vec<(Result<(), Rejection>, bool)>,
        last_ticket_opt: Option<Ticket>,
    },
    /// The stream failed.
    Failed(LedgerError),
    View(crate::types::AccountView, Lsn),
    Movements(MovementsPage, Lsn),
    Daily(Vec<DailyRow>, crate::types::Currency, Lsn),
    /// The state, and the LSN of its latest event.
    State(Box<AccountState>, Lsn),
    /// A reservation's outcome, and the LSN of the latest event of the state it was checked on.
    Reserved(Result<(), Rejection>, Lsn),
    Passivated(#[allow(dead_code)] bool),
}

impl AccountActor {
    /// Decides one command at `now`, records its event (or the refusal worth recording) and
    /// applies it. Returns the outcome and the ticket of the record, if one was made.
    async fn exec_one(
        state: &mut AccountState,
        shard: &ShardCore,
        cmd: &AccountCommand,
        now: Timestamp,
    ) -> Result<(Result<Event, Rejection>, Option<Ticket>), LedgerError> {
        let (event, result) = match state.decide(cmd, now) {
            Ok(ev) => (Some(ev.clone()), Ok(ev)),
            Err(reason) => {
                let record_opt = match cmd {
                    AccountCommand::Hold(t, _) => Some(Event::TransferRejected {
                        transfer: t.clone(),
                        reason: reason.clone(),
                        at: now,
                    }),
                    AccountCommand::Entry(e) => Some(Event::EntryRejected {
                        entry: e.clone(),
                        reason: reason.clone(),
                        at: now,
                    }),
                    _ => None,
                };
                (record_opt, Err(reason))
            }
        };
        let Some(event) = event else {
            return Ok((result, None));
        };
        let ticket = shard.log.append(&event).await?;
        if result.is_ok() {
            state.apply(&event, shard.movements_window);
            if let AccountCommand::CreditReserved(t) = cmd {
                state.release_incoming(t.amount_minor);
            }
        }
        Ok((result, Some(ticket)))
    }
}

impl Message<AccountMsg> for AccountActor {
    type Reply = AccountReply;

    async fn handle(
        &mut self,
        msg: AccountMsg,
        ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        let Some(state) = self.state_opt.as_mut() else {
            return AccountReply::Moved;
        };
        if !matches!(msg, AccountMsg::Passivate { .. }) {
            self.last_active_ms
                .store(coarse_now_ms(), Ordering::Relaxed);
        }
        match msg {
            AccountMsg::Exec(cmd) => {
                // Time never goes backwards on an account, whatever the wall clock does.
                let now = Timestamp::now().max(state.updated_at());
                match Self::exec_one(state, &self.shard, &cmd, now).await {
                    Ok((result, ticket_opt)) => {
                        if let Some(t) = &ticket_opt {
                            self.last_lsn = t.lsn;
                        }
                        AccountReply::Executed {
                            at: now,
                            result,
                            ticket_opt,
                        }
                    }
                    Err(e) => AccountReply::Failed(e),
                }
            }
            AccountMsg::ExecMany(cmds) => {
                let now = Timestamp::now().max(state.updated_at());
                let mut results = Vec::with_capacity(cmds.len());
                let mut last_opt = None;
                for cmd in &cmds {
                    match Self::exec_one(state, &self.shard, cmd, now).await {
                        Ok((result, ticket_opt)) => {
                            let recorded = ticket_opt.is_some();
                            if let Some(t) = ticket_opt {
                                self.last_lsn = t.lsn;
                                last_opt = Some(t);
                            }
                            results.push((result.map(|_| ()), recorded));
                        }
                        // The shard stopped taking writes: the whole message fails. Commands
                        // appended before may still have become durable; their movements were
                        // marked recorded by the caller's claim only if it saw them, so the
                        // caller keeps every ID of a failed message pending (never re-runs it).
                        Err(e) => return AccountReply::Failed(e),
                    }
                }
                AccountReply::ExecutedMany {
                    at: now,
                    results,
                    last_ticket_opt: last_opt,
                }
            }
            AccountMsg::View => AccountReply::View(state.view(), self.last_lsn),
            AccountMsg::Movements { limit, cursor_opt } => {
                AccountReply::Movements(state.movements(limit, cursor_opt), self.last_lsn)
            }
            AccountMsg::Daily { from, to } => {
                AccountReply::Daily(state.daily(from, to), state.currency(), self.last_lsn)
            }
            AccountMsg::State => AccountReply::State(Box::new(state.clone()), self.last_lsn),
            AccountMsg::ReserveIncoming(t) => {
                AccountReply::Reserved(state.reserve_incoming(&t), self.last_lsn)
            }
            AccountMsg::ReleaseIncoming(amount_minor) => {
                state.release_incoming(amount_minor);
                AccountReply::Reserved(Ok(()), self.last_lsn)
            }
            AccountMsg::Passivate { idle } => {
                let idle_ms =
                    coarse_now_ms().saturating_sub(self.last_active_ms.load(Ordering::Relaxed));
                if Duration::from_millis(idle_ms) < idle {
                    return AccountReply::Passivated(false);
                }
                let state = self.state_opt.take().expect("checked above");
                let mut slots = self.shard.slots.lock();
                let slot = slots
                    .get_mut(state.id())
                    .expect("a live account has a slot");
                *slot = Slot::Passive(Box::new(state), self.last_lsn);
                drop(slots);
                self.shard
                    .live_actors
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                ctx.stop();
                AccountReply::Passivated(true)
            }
        }
    }
}
