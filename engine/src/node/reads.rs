//! Reads: an account, its movements, its days, a movement. A read answers only from durable
//! state: it waits (within a bound) until the record holding the last write it reflects is
//! durable.

use super::*;

impl Node {
    /// Returns the account's state and the LSN of its latest event (durable or not).
    pub(super) fn account_state(&self, id: &AccountId) -> Result<(AccountState, Lsn), LedgerError> {
        let slots = self.shard(id).slots.lock();
        Ok(slots
            .read(id, |state, lsn| (state.clone(), lsn))
            .ok_or(Rejection::AccountNotFound)?)
    }

    /// Reads an account, then waits until the latest event the answer reflects is durable.
    pub(super) async fn read<T>(
        &self,
        id: &AccountId,
        read: impl FnOnce(&AccountState) -> T,
    ) -> Result<T, LedgerError> {
        self.check_open()?;
        let shard = self.shard(id);
        let (value, lsn) = {
            let slots = shard.slots.lock();
            slots
                .read(id, |state, lsn| (read(state), lsn))
                .ok_or(Rejection::AccountNotFound)?
        };
        self.wait_durable_bounded(shard, lsn).await?;
        Ok(value)
    }

    pub(crate) async fn account(&self, id: &AccountId) -> Result<AccountView, LedgerError> {
        self.read(id, AccountState::view).await
    }

    pub(crate) async fn movements(
        &self,
        id: &AccountId,
        limit: usize,
        cursor_opt: Option<u64>,
    ) -> Result<MovementsPage, LedgerError> {
        let limit = limit.clamp(1, MOVEMENTS_PAGE_MAX);
        let window = self.config.movements_window;
        self.read(id, |s| s.movements(window, limit, cursor_opt))
            .await
    }

    pub(crate) async fn daily(
        &self,
        id: &AccountId,
        from: Day,
        to: Day,
    ) -> Result<DailyReport, LedgerError> {
        if to < from || to.0 - from.0 >= DAILY_RANGE_DAYS_MAX {
            return Err(Rejection::InvalidField {
                field: "to".into(),
                problem: format!(
                    "the range must not end before `from` nor span more than \
                     {DAILY_RANGE_DAYS_MAX} days"
                ),
            }
            .into());
        }
        let (days, currency) = self.read(id, |s| (s.daily(from, to), s.currency())).await?;
        Ok(DailyReport {
            account_id: id.clone(),
            currency,
            days,
        })
    }

    /// Returns a movement as durable state shows it. A settled movement is durable (its
    /// outcome is set after its last record is). A pending one is answered once its first
    /// record is durable; a bare claim (nothing recorded yet) is memory alone: not found.
    pub(crate) async fn movement(&self, id: &MovementId) -> Result<MovementView, LedgerError> {
        self.check_open()?;
        let cell = self
            .movements
            .get(id)
            .ok_or(LedgerError::Rejected(Rejection::MovementNotFound))?;
        let (status, recorded, first_record_opt) = {
            let s = cell.state.lock();
            (s.status, s.recorded, s.first_record_opt)
        };
        if status == MovementStatus::Pending {
            match first_record_opt {
                Some((shard, lsn)) => {
                    self.wait_durable_bounded(&self.shards[shard as usize], lsn)
                        .await?
                }
                None if recorded => {
                    return Err(LedgerError::Unavailable {
                        reason: "the movement's records are in doubt until the node restarts",
                    })
                }
                None => return Err(Rejection::MovementNotFound.into()),
            }
        }
        Ok(cell.view())
    }

    /// Waits until `shard` is durable up to `lsn`, at most [`READ_DURABLE_WAIT_MS_MAX`]: a read
    /// answers from durable state, and never hangs on a stalled stream.
    pub(super) async fn wait_durable_bounded(
        &self,
        shard: &ShardCore,
        lsn: Lsn,
    ) -> Result<(), LedgerError> {
        match tokio::time::timeout(
            Duration::from_millis(READ_DURABLE_WAIT_MS_MAX),
            shard.log.wait_durable(lsn),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(LedgerError::Unavailable {
                reason: "the state this read reflects is not durable yet",
            }),
        }
    }
}
