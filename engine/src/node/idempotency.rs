//! Idempotency at the node: a movement's ID is claimed in the movement table before anything
//! runs; a second request with the same ID waits for the first one's outcome and gets it
//! again, or conflicts (naming which fields differ, never those of another tenant).

use super::*;

/// Returns the names of the fields where two transfers differ.
pub(super) fn transfer_diff(a: &Transfer, b: &Transfer) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.debit_account_id != b.debit_account_id {
        out.push("from");
    }
    if a.credit_account_id != b.credit_account_id {
        out.push("to");
    }
    if a.amount_minor != b.amount_minor {
        out.push("amount");
    }
    if a.currency != b.currency {
        out.push("currency");
    }
    if a.description_opt != b.description_opt {
        out.push("description");
    }
    out
}

pub(super) fn entry_diff(a: &Entry, b: &Entry) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.account_id != b.account_id {
        out.push("account");
    }
    if a.kind != b.kind {
        out.push("type");
    }
    if a.amount_minor != b.amount_minor {
        out.push("amount");
    }
    if a.description_opt != b.description_opt {
        out.push("description");
    }
    out
}

/// Returns the account a movement's ID belongs to: the account money leaves (a transfer's
/// debit account) or the entry's account. A caller allowed to post the new request may act on
/// it, so the gateway has checked that the caller covers it.
pub(super) fn owner(body: &MovementBody) -> &AccountId {
    match body {
        MovementBody::Transfer(t) => &t.debit_account_id,
        MovementBody::Entry(e) => &e.account_id,
    }
}

/// Returns the names of the fields where a request differs from the original movement of its
/// ID — or none at all when the two belong to different accounts: the caller may be another
/// tenant, who must learn nothing of the original (not even which fields differ) by guessing
/// IDs. Either way the answer is a conflict and nothing changes (docs/api.md).
pub(super) fn body_diff(original: &MovementBody, new: &MovementBody) -> Vec<&'static str> {
    if owner(original) != owner(new) {
        return Vec::new();
    }
    match (original, new) {
        (MovementBody::Transfer(a), MovementBody::Transfer(b)) => transfer_diff(a, b),
        (MovementBody::Entry(a), MovementBody::Entry(b)) => entry_diff(a, b),
        _ => vec!["kind"],
    }
}

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
        if &cell.body != body {
            let fields = body_diff(&cell.body, body)
                .into_iter()
                .map(String::from)
                .collect();
            return Err(Rejection::IdConflict { fields }.into());
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
