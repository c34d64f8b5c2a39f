//! Writes on one account: opening it, and external entries (credits and debits).

use super::*;

/// What `try_open` found or did.
pub(super) enum OpenStep {
    /// The account exists with the same parameters.
    Exists,
    /// A passive account with this ID exists with other parameters; its latest event is `lsn`.
    Differs { lsn: Lsn },
    /// The opening is recorded; durable once the ticket says so.
    Created(AccountView, crate::log::Ticket),
    /// The shard's group commit is full: wait for room and try again.
    Full,
}

/// Raises `lsns[shard]` to the ticket's LSN (the LSN a shard must reach before the next step).
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
}
