//! Accounts hosted by their shard.
//!
//! An account is an actor: it alone owns its state, handles one message at a time and is
//! reached only through messages ([`AccountMsg`] in, [`AccountReply`] out). Its host is its
//! shard ([`crate::node::ShardCore`]): the shard keeps every account's state in one map, and
//! the shard's kameo actor (`node::shard_actor`) runs the accounts' turns in its ticks, under
//! the shard's host lock (as Orleans' silos and Akka's dispatchers run many actors on few
//! threads). There is no tokio task, mailbox or wake-up per account, and nothing to
//! activate or passivate: an idle account is its compact state.
//!
//! The host lock also guards the append side of the shard's group-commit log: every event of
//! a shard is appended inside an account's turn (or a shard-level turn, see
//! `node::shard_actor::Work::Record`), so a turn that checked the log's room for `n` events
//! appends them all without waiting, and a transfer within one shard (hold, credit, commit) is
//! one turn.
//!
//! A turn never awaits. A turn that finds the filling group commit full appends nothing and
//! answers [`Turn::Full`]: the deliverer waits for room and delivers again. Business
//! rejections are reply values.

use saldo_persistence::Lsn;

pub(crate) use crate::table::{AccountTable, Slot};
use crate::{
    account::AccountCommand,
    event::Event,
    log::{ShardLog, Ticket, TryAppend},
    types::{LedgerError, Rejection, Timestamp},
};

/// A message to an account.
#[derive(Clone, Debug)]
pub(crate) enum AccountMsg {
    Exec(AccountCommand),
    /// Reserve room for an atomic batch's credit (records nothing).
    ReserveIncoming(crate::types::Transfer),
    /// Give back a reservation whose batch aborted.
    ReleaseIncoming(i64),
}

/// The reply of an account.
pub(crate) enum AccountReply {
    /// A command ran: `Ok(event)` applied, or the rejection. The ticket (when something was
    /// recorded) says when it is durable.
    Executed {
        /// The time of the recorded event (when something was recorded).
        at: Timestamp,
        result: Result<Event, Rejection>,
        ticket_opt: Option<Ticket>,
    },
    /// A reservation's outcome, and the LSN of the latest event of the state it was checked on.
    Reserved(Result<(), Rejection>, Lsn),
}

/// The outcome of one command's turn.
pub(crate) enum Turn {
    /// Decided, recorded when worth recording, and applied when accepted.
    Done {
        result: Result<Event, Rejection>,
        ticket_opt: Option<Ticket>,
    },
    /// The shard's filling group commit has no room: nothing happened; deliver again once
    /// the log has room.
    Full,
}

impl Slot {
    /// The time of a turn: the wall clock, but never behind the account's latest event
    /// (time never goes backwards on an account, whatever the wall clock does).
    pub(crate) fn turn_time(&self, now: Timestamp) -> Timestamp {
        now.max(self.state.updated_at())
    }

    /// Decides one command at `at`, records its event (or the refusal worth recording) and
    /// applies it.
    pub(crate) fn exec(
        &mut self,
        log: &ShardLog,
        movements_window: usize,
        cmd: &AccountCommand,
        at: Timestamp,
    ) -> Result<Turn, LedgerError> {
        let decided = self.state.decide(cmd, at);
        let rejection_record_opt = match (&decided, cmd) {
            (Ok(_), _) => None,
            (Err(reason), AccountCommand::Hold(t, _)) => Some(Event::TransferRejected {
                transfer: t.clone(),
                reason: reason.clone(),
                at,
            }),
            (Err(reason), AccountCommand::Entry(e)) => Some(Event::EntryRejected {
                entry: e.clone(),
                reason: reason.clone(),
                at,
            }),
            (Err(_), _) => None,
        };
        let Some(record) = decided.as_ref().ok().or(rejection_record_opt.as_ref()) else {
            return Ok(Turn::Done {
                result: decided,
                ticket_opt: None,
            });
        };
        let ticket = match log.try_append(record)? {
            TryAppend::Appended(t) => t,
            TryAppend::Full => return Ok(Turn::Full),
        };
        self.last_lsn = ticket.lsn;
        if let Ok(event) = &decided {
            self.state.apply(event, movements_window);
            if let AccountCommand::CreditReserved(t) = cmd {
                self.state.release_incoming(t.amount_minor);
            }
        }
        Ok(Turn::Done {
            result: decided,
            ticket_opt: Some(ticket),
        })
    }

    /// Handles a message that records nothing. (Reads of an account's state need no turn:
    /// they look at the hosted state under the host lock, see `Node::read`.)
    pub(crate) fn read(&mut self, msg: AccountMsg) -> AccountReply {
        let lsn = self.last_lsn;
        match msg {
            AccountMsg::ReserveIncoming(t) => {
                AccountReply::Reserved(self.state.reserve_incoming(&t), lsn)
            }
            AccountMsg::ReleaseIncoming(amount_minor) => {
                self.state.release_incoming(amount_minor);
                AccountReply::Reserved(Ok(()), lsn)
            }
            AccountMsg::Exec(_) => {
                unreachable!("commands are delivered through exec")
            }
        }
    }
}
