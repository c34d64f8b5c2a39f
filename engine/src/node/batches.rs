//! Batches of transfers. Independent ones run as rounds of the transfer step machine (one
//! message per account per round, durability awaited once per shard per round); those within
//! one shard are one turn each, many per host lock. An atomic batch places and makes durable
//! every hold, reserves every credit's room, records its decision, and only then finishes
//! each transfer with the step machine: all commit, or none does.

use super::{transfers::InShard, *};

impl Node {
    pub(crate) async fn transfer_batch(
        &self,
        cmds: Vec<Transfer>,
        atomic: bool,
    ) -> Vec<Result<Posted, LedgerError>> {
        if let Err(e) = self.check_writable() {
            return cmds.iter().map(|_| Err(e.clone())).collect();
        }
        if atomic {
            return self.transfer_batch_atomic(cmds).await;
        }
        self.transfer_batch_independent(cmds).await
    }

    /// Permits for `permits` of a batch's writes in flight, waited for (a batch queues
    /// behind other writes rather than failing); `Unavailable` once the node shuts down.
    pub(super) async fn batch_permits(
        &self,
        permits: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, LedgerError> {
        self.in_flight
            .clone()
            .acquire_many_owned(permits as u32)
            .await
            .map_err(|_| LedgerError::Unavailable {
                reason: "shutting down",
            })
    }

    /// Sends one phase of a batch to every account it touches: one `ExecMany` per account with
    /// that account's commands in batch order, at most [`BATCH_CONCURRENCY_MAX`] accounts at a
    /// time. Returns, per account, the transfers' indices and the reply.
    pub(super) async fn batch_phase(
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
    pub(super) async fn wait_shards_durable(&self, lsns: &[Lsn]) -> Vec<(usize, LedgerError)> {
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

    /// A batch of independent transfers, run phase by phase for the whole batch: the same
    /// protocol as [`Node::transfer`] (hold, credit, commit or release; nothing crosses a shard
    /// on a record a crash could undo), but each phase sends one message per account carrying
    /// all of that account's commands, and durability is awaited once per shard per phase
    /// instead of once per transfer.
    pub(super) async fn transfer_batch_independent(
        &self,
        cmds: Vec<Transfer>,
    ) -> Vec<Result<Posted, LedgerError>> {
        let n = cmds.len();
        let num_shards = self.shards.len();
        let mut out: Vec<Option<Result<Posted, LedgerError>>> = (0..n).map(|_| None).collect();
        let permits = n.clamp(1, BATCH_CONCURRENCY_MAX.min(self.config.in_flight_max));
        let _permits = match self.batch_permits(permits).await {
            Ok(p) => p,
            Err(e) => return cmds.iter().map(|_| Err(e.clone())).collect(),
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
                            Settle::ByCaller,
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
            match self.check_credit_account(t) {
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
                    match phase.step(t, result, recorded, self.config.num_shards) {
                        Step::Send(next) => phases[i] = Some(next),
                        Step::SendOnceDurable(next) => {
                            crossing_lsn[shard] = crossing_lsn[shard].max(last_lsn);
                            waits_on[i] = Some(shard);
                            phases[i] = Some(next);
                        }
                        Step::Done(result) => {
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
    pub(super) async fn record_refusal(
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
    pub(super) async fn transfer_batch_atomic(
        &self,
        cmds: Vec<Transfer>,
    ) -> Vec<Result<Posted, LedgerError>> {
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
        let _permits = match self.batch_permits(n.min(self.config.in_flight_max)).await {
            Ok(p) => p,
            Err(e) => return cmds.iter().map(|_| Err(e.clone())).collect(),
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
    pub(super) async fn run_atomic(
        &self,
        cmds: &[Transfer],
        cells: &[Arc<MovementCell>],
    ) -> Result<Vec<Result<(), Rejection>>, LedgerError> {
        let batch_id = cmds[0].transfer_id.clone();
        let now = self.config.clock.now();
        // Credit accounts must exist in the currency (they cannot change afterwards).
        let refusal_opt = cmds
            .iter()
            .enumerate()
            .find_map(|(i, t)| self.check_credit_account(t).err().map(|reason| (i, reason)));
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
    pub(super) async fn reserve_batch_credits(
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
    pub(super) async fn release_incoming(&self, t: &Transfer) {
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
}
