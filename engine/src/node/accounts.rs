//! Writes on one account: opening it, and external entries (credits and debits).

use super::{shard_actor::Work, *};

/// What `try_open` found or did.
pub(crate) enum OpenStep {
    /// The account exists with the same parameters.
    Exists,
    /// A passive account with this ID exists with other parameters; its latest event is `lsn`.
    Differs { lsn: Lsn },
    /// The opening is recorded; durable once the ticket says so.
    Created(AccountView, crate::log::Ticket),
    /// The shard's group commit is full: wait for room and try again.
    Full,
}

/// An overlong description is a malformed request.
pub(super) fn check_description(d: &Option<String>) -> Result<(), Rejection> {
    match d {
        Some(d) if d.len() > DESCRIPTION_BYTES_MAX => Err(Rejection::InvalidField {
            field: "description".into(),
            problem: format!("longer than {DESCRIPTION_BYTES_MAX} bytes"),
        }),
        _ => Ok(()),
    }
}

impl Node {
    pub(crate) async fn open_account(
        &self,
        cmd: OpenAccount,
    ) -> Result<(AccountView, bool), LedgerError> {
        self.check_writable()?;
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
        let permit = self.in_flight_permit()?;
        let (index, id) = (self.shard_index(&cmd.account_id), cmd.account_id.clone());
        let (reply, replied) = tokio::sync::oneshot::channel();
        let work = Work::Open {
            cmd,
            permit_opt: Some(permit),
            reply_opt: Some(reply),
        };
        self.enqueue(index, work)?;
        let stopping = LedgerError::Unavailable {
            reason: "shutting down",
        };
        match replied.await.map_err(|_| stopping)?? {
            OpenStep::Exists => Ok((self.account(&id).await?, false)),
            OpenStep::Differs { lsn } => {
                // `account_exists` only once the opening it refers to is durable.
                self.wait_durable_bounded(&self.shards[index], lsn).await?;
                Err(Rejection::AccountExists.into())
            }
            OpenStep::Created(view, ticket) => {
                ticket.durable().await?;
                Ok((view, true))
            }
            OpenStep::Full => unreachable!("the shard runs an opening again once it has room"),
        }
    }

    /// The turn of an opening, in its shard's actor (see [`Node::try_open`]): `false` (and
    /// nothing done) when the group commit has no room. A recorded opening is ended by the
    /// shard once durable (its in-flight permit goes with it), whether or not its caller
    /// still waits.
    pub(super) fn open_turn(
        &self,
        shard: &ShardCore,
        cmd: &OpenAccount,
        permit_opt: &mut Option<tokio::sync::OwnedSemaphorePermit>,
        reply_opt: &mut Option<super::shard_actor::OpenReply>,
    ) -> Result<bool, LedgerError> {
        let step = self.try_open(shard, cmd)?;
        if let OpenStep::Full = step {
            return Ok(false);
        }
        if let OpenStep::Created(_, ticket) = &step {
            shard.log.settle_at(
                ticket.lsn,
                Settlement {
                    movement_opt: None,
                    in_flight_opt: permit_opt.take(),
                    then_opt: None,
                },
            );
        }
        if let Some(reply) = reply_opt.take() {
            let _ = reply.send(Ok(step));
        }
        Ok(true)
    }

    /// The synchronous part of opening an account: under the shard lock, either finds the
    /// account (same parameters, or `AccountExists`) or records its opening.
    pub(super) fn try_open(
        &self,
        shard: &ShardCore,
        cmd: &OpenAccount,
    ) -> Result<OpenStep, LedgerError> {
        let mut slots = shard.slots.lock();
        let found_opt = slots.read(&cmd.account_id, |state, lsn| {
            if state.same_opening(cmd) {
                OpenStep::Exists
            } else {
                OpenStep::Differs { lsn }
            }
        });
        if let Some(found) = found_opt {
            return Ok(found);
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
                slots.insert(Slot::new(state, ticket.lsn));
                Ok(OpenStep::Created(view, ticket))
            }
            TryAppend::Full => Ok(OpenStep::Full),
        }
    }

    /// Posts an entry: queued at its account's shard ([`Work::Entry`]), whose actor runs its
    /// turn (one event: `EntryApplied`, or `EntryRejected`, a missing account included) and
    /// whose log writer settles it once the record is durable. The caller only waits on the
    /// movement's cell: once queued the shard owns it, a caller that hangs up strands nothing,
    /// and the entry needs no task of its own.
    pub(crate) async fn post_entry(&self, e: &Entry) -> Result<Posted, LedgerError> {
        self.check_writable()?;
        if e.amount_minor <= 0 {
            return Err(Rejection::InvalidAmount.into());
        }
        check_description(&e.description_opt)?;
        let permit = self.in_flight_permit()?;
        let cell = match self
            .claim(&e.entry_id, &MovementBody::Entry(e.clone()))
            .await
        {
            Ok(cell) => cell,
            Err(outcome) => return outcome,
        };
        let work = Work::Entry {
            e: e.clone(),
            cell: cell.clone(),
            permit_opt: Some(permit),
        };
        if let Err(err) = self.enqueue(self.shard_index(&e.account_id), work) {
            // Nothing ran: the node is stopping. The ID is free for a retry.
            self.movements.abandon(&e.entry_id, &cell);
            return Err(err);
        }
        self.settled(&cell).await
    }

    /// The turn of an entry on its account's shard, settled by the shard's log writer once
    /// its record is durable (the write's in-flight permit goes with it); `false` (and nothing
    /// done) when the group commit has no room.
    pub(super) fn entry_turn(
        &self,
        shard: &ShardCore,
        e: &Entry,
        cell: &Arc<MovementCell>,
        permit_opt: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<bool, LedgerError> {
        let mut slots = shard.slots.lock();
        // Under the host lock, so that no other turn takes the room between.
        if !shard.log.room_for(1) {
            return Ok(false);
        }
        let now = self.config.clock.now();
        let (at, ticket, outcome) = match slots.get_mut(&e.account_id) {
            Some(slot) => {
                let at = slot.turn_time(now);
                let cmd = AccountCommand::Entry(e.clone());
                let Turn::Done { result, ticket_opt } =
                    slot.exec(&shard.log, shard.movements_window, &cmd, at)?
                else {
                    unreachable!("the turn checked the log's room")
                };
                let ticket = ticket_opt.expect("an entry or its refusal is recorded");
                let outcome = result.map(|event| match event {
                    Event::EntryApplied {
                        balance_after_minor,
                        ..
                    } => Some(balance_after_minor),
                    _ => unreachable!("an entry records EntryApplied"),
                });
                (at, ticket, outcome)
            }
            None => {
                let event = Event::EntryRejected {
                    entry: e.clone(),
                    reason: Rejection::AccountNotFound,
                    at: now,
                };
                let TryAppend::Appended(ticket) = shard.log.try_append(&event)? else {
                    unreachable!("the turn checked the log's room")
                };
                (now, ticket, Err(Rejection::AccountNotFound))
            }
        };
        cell.recorded_at(at, shard.id as usize, ticket.lsn);
        shard.log.settle_at(
            ticket.lsn,
            Settlement {
                movement_opt: Some((cell.clone(), outcome)),
                in_flight_opt: permit_opt.take(),
                then_opt: None,
            },
        );
        Ok(true)
    }
}
