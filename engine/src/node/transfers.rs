//! A single transfer: validated, claimed, then run. Within one shard it is one turn of the
//! shard and one event ([`crate::transfer::decide_in_shard`]), settled by the shard's log
//! writer. Across shards it is a message from shard to shard ([`PhaseMsg`]) that the step
//! machine of [`crate::transfer`] moves on: each phase runs as a turn of its account's shard,
//! and the next one is sent by the shard's log writer once that turn's record is durable
//! (before it crosses to another shard), or at once (when it does not cross).

use super::{accounts::check_description, shard_actor::Work, *};

impl Node {
    pub(super) fn validate_transfer(t: &Transfer) -> Result<(), Rejection> {
        if t.amount_minor <= 0 {
            return Err(Rejection::InvalidAmount);
        }
        if t.debit_account_id == t.credit_account_id {
            return Err(Rejection::SameAccount);
        }
        check_description(&t.description_opt)
    }

    /// Runs a single transfer: it is queued at its debit account's shard (within one shard, as
    /// one turn, [`Work::Transfer`]; across shards, as its hold, which the shards carry on,
    /// [`Node::run_phase`]). Either way the caller only waits for the movement's outcome: once
    /// queued the shard owns it, a caller that hangs up strands nothing, and the transfer
    /// needs no task of its own.
    pub(crate) async fn transfer(self: &Arc<Self>, t: Transfer) -> Result<Posted, LedgerError> {
        self.check_writable()?;
        Self::validate_transfer(&t)?;
        let index = self.shard_index(&t.debit_account_id);
        let permit = self.in_flight_permit()?;
        let cell = match self
            .claim(&t.transfer_id, &MovementBody::Transfer(t.clone()))
            .await
        {
            Ok(cell) => cell,
            Err(outcome) => return outcome,
        };
        let id = t.transfer_id.clone();
        let work = self.transfer_work(t, cell.clone(), Some(permit));
        if let Err(e) = self.enqueue(index, work) {
            // Nothing ran: the node is stopping. The ID is free for a retry.
            self.movements.abandon(&id, &cell);
            return Err(e);
        }
        self.settled(&cell).await
    }

    /// What a claimed transfer queues at its debit account's shard: within one shard, its
    /// turn; across shards, its hold (or its refusal, when the credit account is missing or
    /// in another currency), which the shard actors carry on.
    pub(super) fn transfer_work(
        &self,
        t: Transfer,
        cell: Arc<MovementCell>,
        permit_opt: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Work {
        if self.shard_index(&t.debit_account_id) == self.shard_index(&t.credit_account_id) {
            return Work::Transfer {
                t,
                cell,
                permit_opt,
            };
        }
        let step = match self.check_credit_account(&t) {
            Ok(()) => Deliver::Phase(Phase::Hold),
            Err(reason) => Deliver::Refuse(reason),
        };
        Work::Phase(PhaseMsg {
            t: Arc::new(t),
            step,
            cell,
            permit_opt,
            first_record: true,
        })
    }

    /// [`transfer::check_credit_account`] against the credit account as this node holds it.
    pub(super) fn check_credit_account(&self, t: &Transfer) -> Result<(), Rejection> {
        let credit = &t.credit_account_id;
        transfer::check_credit_account(t, self.shard(credit).currency_of(credit))
    }

    /// Carries a transfer on from `phase` to its end through the shard actors, as a
    /// cross-shard transfer's messages are ([`Node::run_phase`]: each phase a turn of its
    /// account's shard, durable before it crosses), and returns its final status once the
    /// record that ends it is durable: the movement's `cell` is settled then. Recovery
    /// resumes the holds it finds open with it, and an atomic batch finishes or releases its
    /// holds with it (their first record, the hold, is behind them).
    pub(super) async fn carry_on(
        &self,
        t: &Transfer,
        phase: Phase,
        cell: &Arc<MovementCell>,
    ) -> Result<Result<(), Rejection>, LedgerError> {
        let msg = PhaseMsg {
            t: Arc::new(t.clone()),
            step: Deliver::Phase(phase),
            cell: cell.clone(),
            permit_opt: None,
            first_record: false,
        };
        self.enqueue(msg.shard_index(self.config.num_shards), Work::Phase(msg))?;
        let view = cell.settled(&self.health.any_failed).await?;
        Ok(match (view.status, view.rejection_opt) {
            (MovementStatus::Rejected, Some(reason)) => Err(reason),
            (MovementStatus::Committed, None) => Ok(()),
            (status, reason_opt) => {
                unreachable!("a settled transfer is {status:?} with rejection {reason_opt:?}")
            }
        })
    }

    /// The turn of a transfer within one shard, in the shard's actor: `false` (and nothing
    /// done) when the group commit has no room. Both accounts are checked (the credit account
    /// first: it must exist in the transfer's currency; then the debit account as a hold would
    /// be, and the credit account as a credit would be) and the transfer is recorded as one
    /// event: `TransferPosted`, or `TransferRejected` with the first refusal. Its time is now,
    /// or the latest of both accounts' times if that is later. The shard's log writer settles
    /// the movement once that record is durable (the write's in-flight permit goes with it).
    pub(super) fn transfer_turn(
        &self,
        shard: &ShardCore,
        t: &Transfer,
        cell: &Arc<MovementCell>,
        permit_opt: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<bool, LedgerError> {
        let slots = &mut *shard.slots.lock();
        let now = self.config.clock.now();
        let (debit, credit) = (&t.debit_account_id, &t.credit_account_id);
        // Under the host lock, so that no other turn takes the room between.
        if !shard.log.room_for(1) {
            return Ok(false);
        }
        slots.unpack(debit);
        slots.unpack(credit);
        let (debit_slot, credit_slot) = (slots.slot(debit), slots.slot(credit));
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
        shard.log.settle_at(
            ticket.lsn,
            Settlement {
                movement_opt: Some((cell.clone(), status.map(|()| None))),
                in_flight_opt: permit_opt.take(),
                then_opt: None,
            },
        );
        Ok(true)
    }
}

/// What a cross-shard transfer's message asks of a shard.
pub(super) enum Deliver {
    /// Run this phase on its account.
    Phase(Phase),
    /// Record the transfer's refusal on its debit account's shard (decided before the hold:
    /// the credit account is missing or in another currency, or the debit account is missing).
    Refuse(Rejection),
}

/// A cross-shard transfer on its way between shards: the message, and everything the
/// transfer carries with it until it settles (its movement cell and in-flight permit).
pub(crate) struct PhaseMsg {
    t: Arc<Transfer>,
    step: Deliver,
    cell: Arc<MovementCell>,
    permit_opt: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Nothing recorded yet: the next record is the movement's first (its time and position).
    first_record: bool,
}

impl PhaseMsg {
    /// The shard this message goes to: its phase's account's, or the debit account's for a
    /// refusal.
    pub(super) fn shard_index(&self, num_shards: u32) -> usize {
        shard_of(self.account().as_str(), num_shards) as usize
    }

    /// The account this message goes to: its phase's, or the debit account for a refusal.
    pub(super) fn account(&self) -> &AccountId {
        match &self.step {
            Deliver::Phase(phase) => phase.account(&self.t),
            Deliver::Refuse(_) => &self.t.debit_account_id,
        }
    }

    /// The movement's ID and cell.
    pub(super) fn movement(&self) -> (&MovementId, &Arc<MovementCell>) {
        (&self.t.transfer_id, &self.cell)
    }
}

impl Node {
    /// Runs a cross-shard transfer's message on its shard, in that shard's actor: its turn
    /// (under the host lock, as every turn), then what follows, as [`Phase::step`] says:
    /// - a next phase on the same shard runs at once;
    /// - a next phase on another shard is sent to that shard's actor: at once when nothing
    ///   was recorded, else queued in this shard's outbox once the record is durable (the log
    ///   writer's settlement) and sent with the record's other messages
    ///   ([`Node::flush_outbox`]);
    /// - the end settles the movement once its record is durable.
    ///
    /// Never awaits. `Ok(Some(msg))` back when the group commit is full (nothing happened);
    /// `Err` only when the stream failed (nothing more can be recorded in this process; the
    /// movement's waiters learn it from `StreamHealth`).
    #[allow(clippy::result_large_err)]
    pub(super) fn run_phase(
        self: &Arc<Self>,
        mut msg: PhaseMsg,
    ) -> Result<Option<PhaseMsg>, (PhaseMsg, LedgerError)> {
        let n = self.config.num_shards;
        loop {
            let shard = &self.shards[msg.shard_index(n)];
            let (outcome, recorded_opt) = match &msg.step {
                Deliver::Refuse(reason) => {
                    let reason = reason.clone();
                    let event = Event::TransferRejected {
                        transfer: (*msg.t).clone(),
                        reason: reason.clone(),
                        at: self.config.clock.now(),
                    };
                    let appended = {
                        let _host = shard.slots.lock();
                        shard.log.try_append(&event)
                    };
                    match appended {
                        Ok(TryAppend::Appended(ticket)) => {
                            (Err(reason), Some((ticket, event.at())))
                        }
                        Ok(TryAppend::Full) => return Ok(Some(msg)),
                        Err(e) => return Err((msg, e)),
                    }
                }
                Deliver::Phase(phase) => {
                    let phase = phase.clone();
                    let account = phase.account(&msg.t);
                    let turn = {
                        let mut slots = shard.slots.lock();
                        match slots.get_mut(account) {
                            None => Err(LedgerError::Rejected(Rejection::AccountNotFound)),
                            Some(slot) => {
                                let at = slot.turn_time(self.config.clock.now());
                                let cmd = phase.command(&msg.t, None);
                                slot.exec(&shard.log, shard.movements_window, &cmd, at)
                                    .map(|turn| (turn, at))
                            }
                        }
                    };
                    match turn {
                        Ok((Turn::Done { result, ticket_opt }, at)) => {
                            (result.map(|_| ()), ticket_opt.map(|t| (t, at)))
                        }
                        Ok((Turn::Full, _)) => return Ok(Some(msg)),
                        // A hold on an account that does not exist: refused, and recorded as such.
                        Err(LedgerError::Rejected(Rejection::AccountNotFound))
                            if phase == Phase::Hold =>
                        {
                            msg.step = Deliver::Refuse(Rejection::AccountNotFound);
                            continue;
                        }
                        // Accounts are never closed: any other phase on a missing account is
                        // refused like any refusal (the machine decides what follows).
                        Err(LedgerError::Rejected(reason)) => (Err(reason), None),
                        Err(e) => return Err((msg, e)),
                    }
                }
            };
            if let Some((ticket, at)) = &recorded_opt {
                if std::mem::take(&mut msg.first_record) {
                    msg.cell.recorded_at(*at, shard.id as usize, ticket.lsn);
                }
            }
            let step = match &msg.step {
                Deliver::Phase(phase) => phase.step(&msg.t, outcome, recorded_opt.is_some(), n),
                Deliver::Refuse(_) => Step::Done(outcome),
            };
            let ticket_opt = recorded_opt.map(|(ticket, _)| ticket);
            let from = shard.id as usize;
            let settlement = match step {
                Step::Send(next) => {
                    msg.step = Deliver::Phase(next);
                    let to = msg.shard_index(n);
                    if to == from {
                        continue;
                    }
                    // Nothing this phase recorded needs to be durable first.
                    self.send_phases(to, vec![msg]);
                    return Ok(None);
                }
                Step::SendOnceDurable(next) => {
                    msg.step = Deliver::Phase(next);
                    let node = self.clone();
                    Settlement {
                        movement_opt: None,
                        in_flight_opt: None,
                        then_opt: Some(Box::new(move || {
                            node.shards[from].outbox.lock().push(msg);
                        })),
                    }
                }
                Step::Done(status) => Settlement {
                    movement_opt: Some((msg.cell, status.map(|()| None))),
                    in_flight_opt: msg.permit_opt,
                    then_opt: None,
                },
            };
            match ticket_opt {
                Some(ticket) => {
                    // Someone needs this record soon (the next phase, or the caller): no linger.
                    ticket.demand();
                    shard.log.settle_at(ticket.lsn, settlement);
                }
                // Nothing recorded: every earlier record was durable before this phase ran
                // (the machine waits before each crossing).
                None => {
                    settlement.settle();
                    self.flush_outbox(from);
                }
            }
            return Ok(None);
        }
    }
}
