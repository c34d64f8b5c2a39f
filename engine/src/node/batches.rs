//! Batches of transfers. Independent ones are split per shard into the shards' ticks, each
//! transfer run as a single one would be (`Node::transfer_work`). An atomic batch places and
//! makes durable
//! every hold, reserves every credit's room, records its decision, and only then finishes
//! each transfer with the step machine: all commit, or none does.

use super::{shard_actor::Work, *};

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

    /// A batch of independent transfers: split per shard into the shards' ticks. Each
    /// transfer is queued at its debit account's shard as a single transfer would be
    /// ([`Node::transfer_work`]: one turn within a shard; across shards, its hold, which the
    /// shard actors carry on), the whole share of a shard in one go. Each is settled by its
    /// shard once its last record is durable; the batch answers once every one is.
    pub(super) async fn transfer_batch_independent(
        &self,
        cmds: Vec<Transfer>,
    ) -> Vec<Result<Posted, LedgerError>> {
        let n = cmds.len();
        let mut out: Vec<Option<Result<Posted, LedgerError>>> = (0..n).map(|_| None).collect();
        let permits = n.clamp(1, BATCH_CONCURRENCY_MAX.min(self.config.in_flight_max));
        let _permits = match self.batch_permits(permits).await {
            Ok(p) => p,
            Err(e) => return cmds.iter().map(|_| Err(e.clone())).collect(),
        };
        // Claims. An ID seen before (also earlier in this batch) is answered at the end, once
        // this batch's own transfers are settled.
        let mut cells: Vec<(usize, usize, MovementId, Arc<MovementCell>)> = Vec::with_capacity(n);
        let mut replays = Vec::new();
        let mut works: Vec<Vec<Work>> = (0..self.shards.len()).map(|_| Vec::new()).collect();
        for (i, t) in cmds.into_iter().enumerate() {
            if let Err(r) = Self::validate_transfer(&t) {
                out[i] = Some(Err(r.into()));
                continue;
            }
            let body = MovementBody::Transfer(t);
            match self
                .movements
                .claim(body.id(), &body, self.config.clock.now())
            {
                Claim::New(cell) => {
                    let MovementBody::Transfer(t) = body else {
                        unreachable!("built above")
                    };
                    let home = self.shard_index(&t.debit_account_id);
                    cells.push((i, home, t.transfer_id.clone(), cell.clone()));
                    works[home].push(self.transfer_work(t, cell, None));
                }
                Claim::Existing(cell) => replays.push((i, cell, body)),
            }
        }
        let mut stopped = vec![false; works.len()];
        for (home, works) in works.into_iter().enumerate() {
            if !works.is_empty() {
                stopped[home] = self.enqueue_many(home, works).is_err();
            }
        }
        for (i, home, id, cell) in cells {
            out[i] = Some(if stopped[home] {
                // Nothing ran: the node is stopping. The ID is free for a retry.
                self.movements.abandon(&id, &cell);
                Err(LedgerError::Unavailable {
                    reason: "shutting down",
                })
            } else {
                self.settled(&cell).await
            });
        }
        for (i, cell, body) in replays {
            out[i] = Some(self.replay(&cell, &body).await);
        }
        out.into_iter()
            .map(|r| r.expect("every transfer of the batch is answered"))
            .collect()
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
            let released = futures::future::join_all(
                cmds.iter()
                    .zip(cells)
                    .zip(&placed)
                    .filter(|(_, placed)| **placed)
                    .map(|((t, cell), _)| {
                        self.carry_on(t, Phase::Release(Rejection::BatchAborted), cell)
                    }),
            )
            .await;
            let mut released = released.into_iter();
            let mut out = Vec::new();
            for (placed, refused) in placed.into_iter().zip(refused) {
                out.push(match placed {
                    true => released.next().expect("one release per placed hold")?,
                    false => Err(refused.unwrap_or(Rejection::BatchAborted)),
                });
            }
            return match failure_opt {
                Some(e) => Err(e),
                None => Ok(out),
            };
        }
        // Room for every credit, reserved on the credit accounts before the commit point, so
        // that no credit can be refused after it (a partial atomic batch).
        if let Some(out) = self.reserve_batch_credits(cmds, cells).await? {
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
                .zip(cells)
                .map(|(t, cell)| self.carry_on(t, Phase::CreditDecided { reserved: true }, cell)),
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
        cells: &[Arc<MovementCell>],
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
        let released =
            futures::future::join_all(cmds.iter().zip(cells).enumerate().map(|(i, (t, cell))| {
                let reason = if Some(i) == bad_opt {
                    reason.clone()
                } else {
                    Rejection::BatchAborted
                };
                self.carry_on(t, Phase::Release(reason), cell)
            }))
            .await;
        released.into_iter().collect::<Result<_, _>>().map(Some)
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
