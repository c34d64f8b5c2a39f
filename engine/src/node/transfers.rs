//! A single transfer: validated, claimed, then run. Within one shard it is one turn of the
//! shard and one event ([`crate::transfer::decide_in_shard`]), settled by the shard's log
//! writer; across shards the coordinator drives the step machine of [`crate::transfer`],
//! each phase durable before the next one crosses.

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

    pub(crate) async fn transfer(&self, t: Transfer) -> Result<Posted, LedgerError> {
        self.check_open()?;
        Self::validate_transfer(&t)?;
        let _permit = self.in_flight_permit()?;
        self.run_transfer(t).await
    }

    pub(super) async fn run_transfer(&self, t: Transfer) -> Result<Posted, LedgerError> {
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

    /// Runs a transfer after its claim; returns the final status (Ok: committed). The credit
    /// account is checked first (a refusal is recorded on the debit account's shard); a
    /// transfer within one shard is one turn, one across shards runs the phases of
    /// [`transfer::Phase`] from the hold.
    pub(super) async fn drive_transfer(
        &self,
        t: &Transfer,
        cell: &Arc<MovementCell>,
    ) -> Result<Result<(), Rejection>, LedgerError> {
        if let Err(reason) = self.check_credit_account(t) {
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

    /// A transfer whose accounts share a shard: hold, credit and commit (or release) in one
    /// turn of the shard, appended to one group commit, answered once the last is durable
    /// (within one shard the stream's order makes each earlier phase durable with it).
    pub(super) async fn transfer_in_shard(
        &self,
        shard: &ShardCore,
        t: &Transfer,
        cell: &Arc<MovementCell>,
    ) -> Result<Result<(), Rejection>, LedgerError> {
        let (status, ticket) = loop {
            let room = shard.log.room();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.transfer_turn(shard, t, cell, Settle::ByCaller)? {
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
                },
            );
        }
        Ok(InShard::Done(status, ticket))
    }
}
