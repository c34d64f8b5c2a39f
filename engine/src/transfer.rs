//! A transfer's protocol as a pure step machine: which phase runs next, on which account, and
//! whether the record of a phase must be durable before the next one is sent. No I/O, no
//! clock: the node's coordinator, its batches, its recovery and the crash simulation all drive
//! this one machine, each with its own way of delivering a phase and waiting for durability.
//!
//! ```text
//!            ok                 ok                 ok
//!   Hold ─────────► Credit ─────────► Commit ─────────► Done(committed)
//!     │ refused        │ refused
//!     ▼                ▼            ok
//!   Done(refused)   Release(r) ─────────► Done(refused: r)
//! ```
//!
//! Before any of this, the credit account must exist in the transfer's currency
//! ([`check_credit_account`]): accounts are never closed and never change currency, so a
//! credit is then refused only for lack of room (the balance type's limit).
//!
//! A transfer whose two accounts share a shard skips the messages: [`decide_in_shard`] checks
//! both accounts in one turn and records one event, which the stream's order makes durable
//! with everything before it.

use crate::{
    account::{AccountCommand, AccountState, Hold},
    event::Event,
    shard::shard_of,
    types::{AccountId, Currency, MovementId, Rejection, Timestamp, Transfer},
};

/// A phase of a transfer between accounts of two shards: a message to one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reserve the amount on the debit account (holds counted against its allowance).
    Hold,
    /// Credit the amount to the credit account; a refusal releases the hold.
    Credit,
    /// The credit of a transfer of a decided atomic batch. It cannot be refused: its room was
    /// reserved before the batch's commit point (`reserved`), or, at recovery, the restored
    /// balance still has it. A refusal would leave half a batch applied: a broken invariant.
    CreditDecided {
        /// The room was reserved on the credit account (the live path); the credit consumes
        /// the reservation.
        reserved: bool,
    },
    /// Turn the hold into a debit.
    Commit,
    /// Drop the hold; the transfer is refused for this reason.
    Release(Rejection),
}

/// What follows a phase's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send this phase.
    Phase(Phase),
    /// The transfer's final status (`Ok`: committed), answered once the record of the phase
    /// that ended it is durable.
    Done(Result<(), Rejection>),
}

impl Phase {
    /// The account that runs this phase.
    pub fn account<'t>(&self, t: &'t Transfer) -> &'t AccountId {
        match self {
            Phase::Credit | Phase::CreditDecided { .. } => &t.credit_account_id,
            Phase::Hold | Phase::Commit | Phase::Release(_) => &t.debit_account_id,
        }
    }

    /// The command this phase delivers to [`Phase::account`]; `batch_opt` is the atomic batch
    /// a hold belongs to.
    pub fn command(&self, t: &Transfer, batch_opt: Option<&MovementId>) -> AccountCommand {
        match self {
            Phase::Hold => AccountCommand::Hold(t.clone(), batch_opt.cloned()),
            Phase::Credit | Phase::CreditDecided { reserved: false } => {
                AccountCommand::Credit(t.clone())
            }
            Phase::CreditDecided { reserved: true } => AccountCommand::CreditReserved(t.clone()),
            Phase::Commit => AccountCommand::Commit(t.transfer_id.clone()),
            Phase::Release(reason) => {
                AccountCommand::Release(t.transfer_id.clone(), reason.clone())
            }
        }
    }

    /// What follows this phase's outcome (`Err`: the account refused it).
    ///
    /// # Panics
    /// When a commit or a release is refused (the hold is open until one of them), or a
    /// decided batch's credit is: each is a broken invariant, and a crash beats a wrong
    /// balance.
    pub fn then(&self, t: &Transfer, outcome: Result<(), Rejection>) -> Next {
        match (self, outcome) {
            (Phase::Hold, Ok(())) => Next::Phase(Phase::Credit),
            (Phase::Hold, Err(reason)) => Next::Done(Err(reason)),
            (Phase::Credit | Phase::CreditDecided { .. }, Ok(())) => Next::Phase(Phase::Commit),
            (Phase::Credit, Err(reason)) => Next::Phase(Phase::Release(reason)),
            (Phase::CreditDecided { .. }, Err(reason)) => panic!(
                "the credit of transfer {} of a decided atomic batch was refused ({reason})",
                t.transfer_id
            ),
            (Phase::Commit, Ok(())) => Next::Done(Ok(())),
            (Phase::Release(reason), Ok(())) => Next::Done(Err(reason.clone())),
            (phase @ (Phase::Commit | Phase::Release(_)), Err(reason)) => panic!(
                "the hold of transfer {} is open until its commit or release, yet {phase:?} \
                 was refused ({reason})",
                t.transfer_id
            ),
        }
    }

    /// Whether this phase's record must be durable before `next` is sent: when `next` runs on
    /// another shard (design decision 3: nothing crosses a shard on the strength of a record
    /// a crash could still undo). Within one shard the stream's order is enough.
    pub fn durable_before(&self, next: &Phase, t: &Transfer, num_shards: u32) -> bool {
        shard_of(self.account(t).as_str(), num_shards)
            != shard_of(next.account(t).as_str(), num_shards)
    }
}

/// What a coordinator does after a phase ran: [`Phase::then`] with the durability rule
/// ([`Phase::durable_before`]) applied. The node's coordinator (single transfers, batches,
/// recovery) and the crash simulation all step transfers with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this phase now: it runs on the same shard, or nothing was recorded.
    Send(Phase),
    /// Send this phase once the record of the phase that ran is durable: it runs on another
    /// shard (design decision 3).
    SendOnceDurable(Phase),
    /// The transfer's final status (`Ok`: committed), answered once the record of the phase
    /// that ran (when it recorded one) is durable.
    Done(Result<(), Rejection>),
}

impl Phase {
    /// What follows this phase's `outcome`; `recorded`: whether the phase recorded an event
    /// (a refusal may record nothing). Panics as [`Phase::then`] does.
    pub fn step(
        &self,
        t: &Transfer,
        outcome: Result<(), Rejection>,
        recorded: bool,
        num_shards: u32,
    ) -> Step {
        match self.then(t, outcome) {
            Next::Phase(next) if recorded && self.durable_before(&next, t, num_shards) => {
                Step::SendOnceDurable(next)
            }
            Next::Phase(next) => Step::Send(next),
            Next::Done(status) => Step::Done(status),
        }
    }
}

/// Checks, before a transfer's first phase, that its credit account exists in its currency
/// (`credit_currency_opt`: the account's currency, `None` when it does not exist). Refusals
/// decided here are recorded on the debit account's shard, as a refused hold would be.
pub fn check_credit_account(
    t: &Transfer,
    credit_currency_opt: Option<Currency>,
) -> Result<(), Rejection> {
    match credit_currency_opt {
        None => Err(Rejection::AccountNotFound),
        Some(c) if c != t.currency => Err(Rejection::CurrencyMismatch),
        Some(_) => Ok(()),
    }
}

/// Where recovery resumes a transfer whose hold it found open: `credited` when the credit
/// account's shard holds its credit, `batch_decided` when it belongs to an atomic batch whose
/// decision record is durable. A hold of an undecided batch is released (the batch did not
/// reach its commit point, so none of it may take effect).
///
/// # Panics
/// When an undecided batch's transfer was credited: credits follow the decision.
pub fn resume(hold: &Hold, credited: bool, batch_decided: bool) -> Phase {
    let t = &hold.transfer;
    match (&hold.batch_opt, credited) {
        (Some(_), credited) if !batch_decided => {
            assert!(
                !credited,
                "transfer {} of an undecided atomic batch was credited",
                t.transfer_id
            );
            Phase::Release(Rejection::BatchAborted)
        }
        (_, true) => Phase::Commit,
        (Some(_), false) => Phase::CreditDecided { reserved: false },
        (None, false) => Phase::Credit,
    }
}

/// A transfer whose accounts share a shard, decided in one turn: the credit account must
/// exist in the currency, the debit account must exist and be able to spend the amount, and
/// the credit account must have room for it. Returns the status and the one event that
/// records it (`TransferPosted`, or `TransferRejected` with the first refusal), at `at`.
pub fn decide_in_shard(
    t: &Transfer,
    debit_opt: Option<&AccountState>,
    credit_opt: Option<&AccountState>,
    at: Timestamp,
) -> (Result<(), Rejection>, Event) {
    let status = check_credit_account(t, credit_opt.map(AccountState::currency)).and_then(|()| {
        match (debit_opt, credit_opt) {
            (Some(debit), Some(credit)) => {
                debit.check_debit(t).and_then(|()| credit.check_credit(t))
            }
            _ => Err(Rejection::AccountNotFound),
        }
    });
    let event = match &status {
        Ok(()) => Event::TransferPosted {
            transfer: t.clone(),
            at,
        },
        Err(reason) => Event::TransferRejected {
            transfer: t.clone(),
            reason: reason.clone(),
            at,
        },
    };
    (status, event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer() -> Transfer {
        Transfer {
            transfer_id: MovementId::new("t-1").unwrap(),
            debit_account_id: AccountId::new("payer").unwrap(),
            credit_account_id: AccountId::new("payee").unwrap(),
            amount_minor: 100,
            currency: Currency::new("BRL").unwrap(),
            description_opt: None,
        }
    }

    /// Runs the machine from `phase` with the accounts' answers in order; returns the phases
    /// sent and the final status.
    fn run(mut phase: Phase, answers: &[Result<(), Rejection>]) -> (Vec<Phase>, Next) {
        let t = transfer();
        let mut sent = Vec::new();
        for answer in answers {
            sent.push(phase.clone());
            match phase.then(&t, answer.clone()) {
                Next::Phase(next) => phase = next,
                done => return (sent, done),
            }
        }
        panic!("the machine did not finish: {sent:?}");
    }

    #[test]
    fn a_step_waits_for_durability_only_before_a_recorded_phase_that_crosses_shards() {
        let t = transfer();
        // Find a shard count that puts the two accounts apart, and one that keeps them
        // together (one shard).
        let apart = (1..8)
            .map(|bits| 1u32 << bits)
            .find(|&n| {
                shard_of(t.debit_account_id.as_str(), n)
                    != shard_of(t.credit_account_id.as_str(), n)
            })
            .expect("two accounts fall apart under some shard count");
        let credit = || Phase::Credit;
        assert_eq!(
            Phase::Hold.step(&t, Ok(()), true, apart),
            Step::SendOnceDurable(credit())
        );
        assert_eq!(
            Phase::Hold.step(&t, Ok(()), false, apart),
            Step::Send(credit())
        );
        assert_eq!(Phase::Hold.step(&t, Ok(()), true, 1), Step::Send(credit()));
        assert_eq!(
            Phase::Credit.step(&t, Err(Rejection::InsufficientFunds), true, apart),
            Step::SendOnceDurable(Phase::Release(Rejection::InsufficientFunds))
        );
        assert_eq!(
            Phase::Commit.step(&t, Ok(()), true, apart),
            Step::Done(Ok(()))
        );
        assert_eq!(
            Phase::Hold.step(&t, Err(Rejection::InsufficientFunds), true, apart),
            Step::Done(Err(Rejection::InsufficientFunds))
        );
    }

    #[test]
    fn a_transfer_holds_credits_then_commits() {
        let (sent, done) = run(Phase::Hold, &[Ok(()), Ok(()), Ok(())]);
        assert_eq!(sent, [Phase::Hold, Phase::Credit, Phase::Commit]);
        assert_eq!(done, Next::Done(Ok(())));
    }

    #[test]
    fn a_refused_hold_ends_the_transfer_and_a_refused_credit_releases_the_hold() {
        let (sent, done) = run(Phase::Hold, &[Err(Rejection::InsufficientFunds)]);
        assert_eq!(sent, [Phase::Hold]);
        assert_eq!(done, Next::Done(Err(Rejection::InsufficientFunds)));
        let (sent, done) = run(
            Phase::Hold,
            &[Ok(()), Err(Rejection::BalanceOverflow), Ok(())],
        );
        assert_eq!(
            sent,
            [
                Phase::Hold,
                Phase::Credit,
                Phase::Release(Rejection::BalanceOverflow)
            ]
        );
        assert_eq!(done, Next::Done(Err(Rejection::BalanceOverflow)));
    }

    #[test]
    #[should_panic(expected = "open until its commit or release")]
    fn a_refused_commit_is_a_broken_invariant() {
        run(Phase::Commit, &[Err(Rejection::AccountNotFound)]);
    }

    #[test]
    #[should_panic(expected = "decided atomic batch was refused")]
    fn a_refused_credit_of_a_decided_batch_is_a_broken_invariant() {
        run(
            Phase::CreditDecided { reserved: true },
            &[Err(Rejection::BalanceOverflow)],
        );
    }

    #[test]
    fn each_phase_runs_on_its_account_and_crossing_shards_needs_durability() {
        let t = transfer();
        assert_eq!(Phase::Hold.account(&t), &t.debit_account_id);
        assert_eq!(Phase::Credit.account(&t), &t.credit_account_id);
        assert_eq!(Phase::Commit.account(&t), &t.debit_account_id);
        let shards = (1..=64)
            .map(|n: u32| n.next_power_of_two())
            .find(|&n| {
                shard_of(t.debit_account_id.as_str(), n)
                    != shard_of(t.credit_account_id.as_str(), n)
            })
            .expect("some shard count splits the two accounts");
        assert!(Phase::Hold.durable_before(&Phase::Credit, &t, shards));
        assert!(Phase::Credit.durable_before(&Phase::Commit, &t, shards));
        assert!(!Phase::Hold.durable_before(&Phase::Credit, &t, 1));
        assert_eq!(
            Phase::CreditDecided { reserved: true }.command(&t, None),
            AccountCommand::CreditReserved(t.clone())
        );
    }

    #[test]
    fn recovery_resumes_where_the_stream_stopped() {
        let t = transfer();
        let plain = Hold {
            transfer: t.clone(),
            batch_opt: None,
        };
        let batched = Hold {
            transfer: t.clone(),
            batch_opt: Some(MovementId::new("b-1").unwrap()),
        };
        assert_eq!(resume(&plain, false, false), Phase::Credit);
        assert_eq!(resume(&plain, true, false), Phase::Commit);
        assert_eq!(
            resume(&batched, false, false),
            Phase::Release(Rejection::BatchAborted)
        );
        assert_eq!(
            resume(&batched, false, true),
            Phase::CreditDecided { reserved: false }
        );
        assert_eq!(resume(&batched, true, true), Phase::Commit);
    }

    #[test]
    fn a_transfer_within_a_shard_is_refused_for_the_first_reason() {
        let t = transfer();
        let at = Timestamp(1);
        let (status, event) = decide_in_shard(&t, None, None, at);
        assert_eq!(status, Err(Rejection::AccountNotFound));
        assert!(matches!(event, Event::TransferRejected { .. }));
    }
}
