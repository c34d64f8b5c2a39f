//! Idempotency at the node: a movement's ID is claimed in the movement table before anything
//! runs; a second request with the same ID waits for the first one's outcome and gets it
//! again, or conflicts (naming which fields differ, never those of another tenant).

use super::*;

impl Node {
    /// Claims an ID: `Ok(cell)` to go ahead, `Err(outcome)` when the ID was used before.
    pub(super) async fn claim(
        &self,
        id: &MovementId,
        body: &MovementBody,
    ) -> Result<Arc<MovementCell>, Result<Posted, LedgerError>> {
        match self.movements.claim(id, body, self.config.clock.now()) {
            Claim::New(cell) => Ok(cell),
            Claim::Existing(cell) => Err(self.replay(&cell, body).await),
        }
    }

    /// Answers a request whose ID is already known: what the original answered (the movement,
    /// or its rejection) when the content is the same, else a conflict naming the fields.
    pub(super) async fn replay(
        &self,
        cell: &MovementCell,
        body: &MovementBody,
    ) -> Result<Posted, LedgerError> {
        if let Some(conflict) = cell.conflict_with(body) {
            return Err(conflict.into());
        }
        outcome(cell.settled(&self.health.any_failed).await?, true)
    }

    pub(super) fn posted(cell: &MovementCell) -> Result<Posted, LedgerError> {
        outcome(cell.view(), false)
    }

    /// Waits until a movement its shard settles (see `ShardLog::settle_at`) is settled, and
    /// answers with its outcome.
    pub(super) async fn settled(&self, cell: &MovementCell) -> Result<Posted, LedgerError> {
        outcome(cell.settled(&self.health.any_failed).await?, false)
    }

    pub(super) fn finish_cell(&self, cell: &MovementCell, status: Result<(), Rejection>) {
        match status {
            Ok(()) => cell.finish(MovementStatus::Committed, None, None),
            Err(r) => cell.finish(MovementStatus::Rejected, Some(r), None),
        }
    }
}

/// A settled movement as its caller's answer: a rejection is the rejection.
fn outcome(movement: MovementView, replayed: bool) -> Result<Posted, LedgerError> {
    match (&movement.status, &movement.rejection_opt) {
        (MovementStatus::Rejected, Some(r)) => Err(LedgerError::Rejected(r.clone())),
        _ => Ok(Posted { movement, replayed }),
    }
}
