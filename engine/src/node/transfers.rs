//! A single transfer: validated, claimed, then run. Within one shard it is one turn of the
//! shard and one event ([`crate::transfer::decide_in_shard`]), settled by the shard's log
//! writer. Across shards it is a message from shard to shard ([`PhaseMsg`]) that the step
//! machine of [`crate::transfer`] moves on: each phase runs as a turn of its account's shard,
//! and the next one is sent by the shard's log writer once that turn's record is durable
//! (before it crosses to another shard), or at once (when it does not cross).

use super::{accounts::check_description, *};

/// What the turn of a transfer within one shard did.
pub(super) enum InShard {
    /// Ran: the final status, and the ticket of the turn's last record.
    Done(Result<(), Rejection>, crate::log::Ticket),
    /// The group commit has no room for the turn's event: nothing happened.
    Full,
}

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

    /// Runs a single transfer: within one shard, one turn ([`Node::try_transfer_in_shard`]);
    /// across shards, its hold runs here and the shards carry it on ([`Node::deliver`]). Either
    /// way the caller only waits for the movement's outcome: a caller that hangs up strands
    /// nothing, and the transfer needs no task of its own.
    pub(crate) async fn transfer(self: &Arc<Self>, t: Transfer) -> Result<Posted, LedgerError> {
        if let Some(posted) = self.try_transfer_in_shard(&t).await {
            return posted;
        }
        self.check_writable()?;
        Self::validate_transfer(&t)?;
        let permit = self.in_flight_permit()?;
        let cell = match self
            .claim(&t.transfer_id, &MovementBody::Transfer(t.clone()))
            .await
        {
            Ok(cell) => cell,
            Err(outcome) => return outcome,
        };
        let id = t.transfer_id.clone();
        let step = match self.check_credit_account(&t) {
            Ok(()) => Deliver::Phase(Phase::Hold),
            Err(reason) => Deliver::Refuse(reason),
        };
        let msg = PhaseMsg {
            t: Arc::new(t),
            step,
            cell: cell.clone(),
            permit_opt: Some(permit),
            first_record: true,
        };
        if let Err(e) = self.deliver(msg) {
            // Nothing was recorded: the stream failed. The ID is free for a retry.
            if cell.unrecorded() {
                self.movements.abandon(&id, &cell);
            }
            return Err(e);
        }
        self.settled(&cell).await
    }

    /// [`transfer::check_credit_account`] against the credit account as this node holds it.
    pub(super) fn check_credit_account(&self, t: &Transfer) -> Result<(), Rejection> {
        let credit = &t.credit_account_id;
        transfer::check_credit_account(t, self.shard(credit).currency_of(credit))
    }

    /// Records the refusal of a transfer decided before its hold, on its debit account's
    /// shard, and waits until it is durable.
    pub(super) async fn refuse_before_hold(
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
    pub(super) async fn run_phases(
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
            let recorded = ticket_opt.is_some();
            match phase.step(t, result.map(|_| ()), recorded, self.config.num_shards) {
                Step::Send(next) => phase = next,
                Step::SendOnceDurable(next) => {
                    if let Some(ticket) = ticket_opt {
                        ticket.durable().await?;
                    }
                    phase = next;
                }
                Step::Done(status) => {
                    if let Some(ticket) = ticket_opt {
                        ticket.durable().await?;
                    }
                    return Ok(status);
                }
            }
        }
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
        if let Err(e) = self.check_writable() {
            return Some(Err(e));
        }
        if let Err(r) = Self::validate_transfer(t) {
            return Some(Err(r.into()));
        }
        let shard = &self.shards[index];
        let mut permit_opt = match self.in_flight_permit() {
            Ok(p) => Some(p),
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
            match self.transfer_turn(shard, t, &cell, Settle::ByShard(&mut permit_opt)) {
                Ok(InShard::Full) => room.await,
                Ok(InShard::Done(..)) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        drop(unclaim);
        if let Err(e) = turn {
            return Some(Err(e));
        }
        Some(self.settled(&cell).await)
    }

    /// The turn of a transfer within one shard (one event, see
    /// [`Node::transfer_turn_locked`]): its status and the ticket of its record. With
    /// `settle`, the shard's log writer settles the movement once that record is durable.
    pub(super) fn transfer_turn(
        &self,
        shard: &ShardCore,
        t: &Transfer,
        cell: &Arc<MovementCell>,
        settle: Settle<'_>,
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
    pub(super) fn transfer_turn_locked(
        slots: &mut AccountTable,
        shard: &ShardCore,
        t: &Transfer,
        cell: &Arc<MovementCell>,
        settle: Settle<'_>,
        now: Timestamp,
    ) -> Result<InShard, LedgerError> {
        let (debit, credit) = (&t.debit_account_id, &t.credit_account_id);
        // Under the host lock, so that no other turn takes the room between.
        if !shard.log.room_for(1) {
            return Ok(InShard::Full);
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
        if let Settle::ByShard(permit_opt) = settle {
            shard.log.settle_at(
                ticket.lsn,
                Settlement {
                    movement_opt: Some((cell.clone(), status.clone().map(|()| None))),
                    in_flight_opt: permit_opt.take(),
                    then_opt: None,
                },
            );
        }
        Ok(InShard::Done(status, ticket))
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
pub(super) struct PhaseMsg {
    t: Arc<Transfer>,
    step: Deliver,
    cell: Arc<MovementCell>,
    permit_opt: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Nothing recorded yet: the next record is the movement's first (its time and position).
    first_record: bool,
}

impl Node {
    /// Delivers a cross-shard transfer's message: runs its turn on the account's shard (under
    /// the shard's host lock, as every turn), then hands what follows to that shard: the next
    /// phase goes on at once when it stays on the shard or nothing was recorded, and is sent
    /// by the shard's log writer once the record is durable when it crosses; the end settles
    /// the movement once durable. Never awaits: it runs in the caller's task for the first
    /// phase and in the log writers' tasks after that. A turn that finds the group commit full
    /// waits for room on a task of its own (backpressure, the rare case).
    ///
    /// `Err` only when the stream failed (nothing more can be recorded in this process; the
    /// movement's waiters learn it from `StreamHealth`).
    pub(super) fn deliver(self: &Arc<Self>, mut msg: PhaseMsg) -> Result<(), LedgerError> {
        loop {
            let (shard, turn) = match &msg.step {
                Deliver::Refuse(reason) => {
                    let shard = self.shard(&msg.t.debit_account_id);
                    let event = Event::TransferRejected {
                        transfer: (*msg.t).clone(),
                        reason: reason.clone(),
                        at: self.config.clock.now(),
                    };
                    let appended = {
                        let _host = shard.slots.lock();
                        shard.log.try_append(&event)?
                    };
                    let TryAppend::Appended(ticket) = appended else {
                        self.deliver_when_room(shard.clone(), msg);
                        return Ok(());
                    };
                    (shard, (Err(reason.clone()), Some((ticket, event.at()))))
                }
                Deliver::Phase(phase) => {
                    let account = phase.account(&msg.t);
                    let shard = self.shard(account);
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
                    let done = match turn {
                        Ok((Turn::Done { result, ticket_opt }, at)) => {
                            (result.map(|_| ()), ticket_opt.map(|t| (t, at)))
                        }
                        Ok((Turn::Full, _)) => {
                            self.deliver_when_room(shard.clone(), msg);
                            return Ok(());
                        }
                        // A hold on an account that does not exist: refused, and recorded as such.
                        Err(LedgerError::Rejected(Rejection::AccountNotFound))
                            if *phase == Phase::Hold =>
                        {
                            msg.step = Deliver::Refuse(Rejection::AccountNotFound);
                            continue;
                        }
                        // Accounts are never closed: any other phase on a missing account is
                        // refused like any refusal (the machine decides what follows).
                        Err(LedgerError::Rejected(reason)) => (Err(reason), None),
                        Err(e) => return Err(e),
                    };
                    (shard, done)
                }
            };
            let (outcome, recorded_opt) = turn;
            if let Some((ticket, at)) = &recorded_opt {
                if std::mem::take(&mut msg.first_record) {
                    msg.cell.recorded_at(*at, shard.id as usize, ticket.lsn);
                }
            }
            let step = match &msg.step {
                Deliver::Phase(phase) => phase.step(
                    &msg.t,
                    outcome,
                    recorded_opt.is_some(),
                    self.config.num_shards,
                ),
                Deliver::Refuse(_) => Step::Done(outcome),
            };
            let ticket_opt = recorded_opt.map(|(ticket, _)| ticket);
            let settlement = match step {
                Step::Send(next) => {
                    msg.step = Deliver::Phase(next);
                    continue;
                }
                Step::SendOnceDurable(next) => {
                    msg.step = Deliver::Phase(next);
                    let node = self.clone();
                    Settlement {
                        movement_opt: None,
                        in_flight_opt: None,
                        then_opt: Some(Box::new(move || {
                            // On a failed stream nothing settles: StreamHealth answers.
                            let _ = node.deliver(msg);
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
                None => settlement.settle(),
            }
            return Ok(());
        }
    }

    /// Delivers `msg` again once `shard`'s group commit has room, from a task of its own.
    fn deliver_when_room(self: &Arc<Self>, shard: Arc<ShardCore>, msg: PhaseMsg) {
        let node = self.clone();
        tokio::spawn(async move {
            loop {
                let room = shard.log.room();
                tokio::pin!(room);
                room.as_mut().enable();
                if shard.log.room_for(1) {
                    break;
                }
                room.await;
            }
            // On a failed stream nothing settles: StreamHealth answers the waiters.
            let _ = node.deliver(msg);
        });
    }
}
