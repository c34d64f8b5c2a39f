//! The pure account state machine: `decide` turns a command into an event (or a rejection),
//! `apply` folds an event into the state. No I/O, no clock, no randomness: time comes in the
//! event. The live actors, recovery, the snapshotter, the simulator and the benches all call
//! these same two functions, so replay is deterministic by construction.
//!
//! Money moves only through `checked_*` arithmetic; the invariants (available never below
//! `-overdraft_limit`, holds sum to `held`, the daily closing equals the balance) are asserted
//! after every change and stay on in release: a crash beats a wrong balance.

#![deny(clippy::float_arithmetic, clippy::arithmetic_side_effects)]

use std::{collections::VecDeque, sync::Arc};

use crate::history::History;
pub use crate::history::HistoryRow;

use serde::{Deserialize, Serialize};

use crate::{
    event::Event,
    types::{
        AccountId, AccountView, Currency, DailyRow, Day, Direction, Entry, EntryKind, MovementId,
        MovementRow, MovementsPage, OpenAccount, Rejection, Timestamp, Transfer,
    },
};

/// A command addressed to one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountCommand {
    /// Phase 1: reserve the transfer's amount on its debit account; with the ID of its atomic
    /// batch, if it belongs to one.
    Hold(Transfer, Option<MovementId>),
    /// Phase 2: credit the transfer's amount to its credit account.
    Credit(Transfer),
    /// Phase 2 of an atomic batch: the credit whose room was reserved before the batch's
    /// commit point (see [`AccountState::reserve_incoming`]); it consumes the reservation.
    CreditReserved(Transfer),
    /// Phase 3: turn the hold into a debit.
    Commit(MovementId),
    /// Phase 3, failure path: drop the hold.
    Release(MovementId, Rejection),
    /// An external credit or debit.
    Entry(Entry),
}

/// One day with movements: what the daily report is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayTotals {
    day: Day,
    num_movements: u32,
    /// Report counter (saturating i128, see `post`); same postcard encoding as the i64 of
    /// snapshot format 1 (zigzag varint), so older snapshots decode unchanged.
    credits_minor: i128,
    /// As `credits_minor`.
    debits_minor: i128,
    closing_minor: i64,
}

/// An account's days with movements, oldest first. The latest is kept inline, in the
/// account's state: every movement updates it, and in a vector of its own it was a cache miss
/// per movement (92% of `AccountState::post`'s samples under the in-process bench). Encodes as
/// the sequence of every day, as a `Vec<DayTotals>` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Days {
    /// The days before the latest, oldest first.
    closed: Vec<DayTotals>,
    /// The latest day (`None`: no movement yet).
    latest_opt: Option<DayTotals>,
}

impl Days {
    fn from_vec(mut days: Vec<DayTotals>) -> Days {
        let latest_opt = days.pop();
        days.shrink_to_fit();
        Days {
            closed: days,
            latest_opt,
        }
    }

    fn get(&self, i: usize) -> Option<&DayTotals> {
        match i.cmp(&self.closed.len()) {
            std::cmp::Ordering::Less => self.closed.get(i),
            std::cmp::Ordering::Equal => self.latest_opt.as_ref(),
            std::cmp::Ordering::Greater => None,
        }
    }

    fn iter(&self) -> impl Iterator<Item = &DayTotals> + '_ {
        self.closed.iter().chain(&self.latest_opt)
    }

    /// Makes `day` the latest: the one before it joins the closed days. Grows one day at a
    /// time: most accounts are idle, and memory per idle account matters more than the
    /// amortised cost of a push.
    fn push(&mut self, day: DayTotals) {
        if let Some(before) = self.latest_opt.replace(day) {
            self.closed.reserve_exact(1);
            self.closed.push(before);
        }
    }

    /// Returns the index of the first day for which `pred` is false (as
    /// `slice::partition_point`; the days are in order).
    fn partition_point(&self, pred: impl Fn(&DayTotals) -> bool) -> usize {
        let i = self.closed.partition_point(&pred);
        if i == self.closed.len() && self.latest_opt.as_ref().is_some_and(pred) {
            i.wrapping_add(1)
        } else {
            i
        }
    }
}

impl Serialize for Days {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Days {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Days, D::Error> {
        Vec::<DayTotals>::deserialize(deserializer).map(Days::from_vec)
    }
}

/// An open hold: a transfer in flight from this account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The transfer.
    pub transfer: Transfer,
    /// The atomic batch it belongs to: recovery finishes it only if the batch was decided.
    pub batch_opt: Option<MovementId>,
}

/// Why an event cannot be folded into an account: the stream holds something `decide` would
/// never have produced (corruption or a bug). Restore reports it with the shard and LSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unappliable(pub &'static str);

/// Bytes an encoded state takes besides its history, days, holds and metadata, and what one
/// day and one hold add, at least ([`AccountState::encoded_bytes_hint`]).
const ENCODED_FIXED_BYTES_HINT: usize = 96;
const ENCODED_DAY_BYTES_HINT: usize = 24;
const ENCODED_HOLD_BYTES_HINT: usize = 48;

/// The state of one account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    id: AccountId,
    currency: Currency,
    overdraft_limit_minor: i64,
    metadata_opt: Option<Box<str>>,
    created_at: Timestamp,
    /// Time of the latest event; events are applied in non-decreasing time.
    updated_at: Timestamp,
    /// Posted balance, held funds included.
    balance_minor: i64,
    /// Sum of `holds`.
    held_minor: i64,
    /// Open holds (transfers in flight from this account), oldest first.
    holds: Vec<Hold>,
    num_movements: u64,
    /// The newest `movements_window` rows, oldest first, encoded ([`History`]).
    history: History,
    /// One entry per day with movements, oldest first.
    days: Days,
    /// Credits promised to atomic batches past their commit point and not yet applied.
    #[serde(skip)]
    incoming: Incoming,
}

/// An account's state as snapshot formats 1 to 3 encoded it: its history as decoded rows.
/// A restore from such a snapshot converts it ([`History::from_rows`]).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Clone, Serialize))]
pub(crate) struct LegacyAccountState {
    id: AccountId,
    currency: Currency,
    overdraft_limit_minor: i64,
    metadata_opt: Option<Box<str>>,
    created_at: Timestamp,
    updated_at: Timestamp,
    balance_minor: i64,
    held_minor: i64,
    holds: Vec<Hold>,
    num_movements: u64,
    history: VecDeque<HistoryRow>,
    days: Vec<DayTotals>,
}

impl From<LegacyAccountState> for AccountState {
    fn from(s: LegacyAccountState) -> AccountState {
        AccountState {
            id: s.id,
            currency: s.currency,
            overdraft_limit_minor: s.overdraft_limit_minor,
            metadata_opt: s.metadata_opt,
            created_at: s.created_at,
            updated_at: s.updated_at,
            balance_minor: s.balance_minor,
            held_minor: s.held_minor,
            holds: s.holds,
            num_movements: s.num_movements,
            history: History::from_rows(&s.history),
            days: Days::from_vec(s.days),
            incoming: Incoming(0),
        }
    }
}

/// The state as snapshot formats 1 to 3 encoded it (tests write such snapshots).
#[cfg(test)]
impl From<&AccountState> for LegacyAccountState {
    fn from(s: &AccountState) -> LegacyAccountState {
        LegacyAccountState {
            id: s.id.clone(),
            currency: s.currency,
            overdraft_limit_minor: s.overdraft_limit_minor,
            metadata_opt: s.metadata_opt.clone(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            balance_minor: s.balance_minor,
            held_minor: s.held_minor,
            holds: s.holds.clone(),
            num_movements: s.num_movements,
            history: s.history.rows().collect(),
            days: s.days.iter().copied().collect(),
        }
    }
}

/// Room reserved for credits that must not be refused later: an atomic batch reserves its
/// credits before its commit point, and every other credit is checked against balance +
/// reservations, so a decided batch's credit can never overflow the balance (a partial atomic
/// batch). Memory only: it is not in the stream or in snapshots, and is not part of the
/// state's identity. After a crash none is needed: recovery finishes decided batches before
/// the node takes commands, and the coordinator makes the reserving account's state durable
/// before the commit point, so the restored balance leaves the room the reservation saw.
#[derive(Clone, Copy, Debug, Default)]
struct Incoming(i64);

impl PartialEq for Incoming {
    fn eq(&self, _: &Incoming) -> bool {
        true
    }
}
impl Eq for Incoming {}

impl AccountState {
    /// Returns the state of a just-opened account.
    pub fn open(cmd: &OpenAccount, at: Timestamp) -> AccountState {
        assert!(cmd.overdraft_limit_minor >= 0, "validated by the caller");
        AccountState {
            id: cmd.account_id.clone(),
            currency: cmd.currency,
            overdraft_limit_minor: cmd.overdraft_limit_minor,
            metadata_opt: cmd.metadata_opt.as_deref().map(Box::from),
            created_at: at,
            updated_at: at,
            balance_minor: 0,
            held_minor: 0,
            holds: Vec::new(),
            num_movements: 0,
            history: History::default(),
            days: Days::default(),
            incoming: Incoming(0),
        }
    }

    /// Returns the account ID.
    pub fn id(&self) -> &AccountId {
        &self.id
    }
    /// Returns the currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }
    /// Returns the posted balance (held funds included).
    pub fn balance_minor(&self) -> i64 {
        self.balance_minor
    }
    /// Returns the sum of open holds.
    pub fn held_minor(&self) -> i64 {
        self.held_minor
    }
    /// Returns about how many bytes the state takes encoded, at least: what a snapshot
    /// reserves for it, so that its buffer does not grow by doubling (and copying) as it fills.
    pub(crate) fn encoded_bytes_hint(&self) -> usize {
        [
            ENCODED_FIXED_BYTES_HINT,
            self.history.encoded_bytes(),
            self.days
                .closed
                .len()
                .saturating_mul(ENCODED_DAY_BYTES_HINT),
            self.holds.len().saturating_mul(ENCODED_HOLD_BYTES_HINT),
            self.metadata_opt.as_ref().map_or(0, |m| m.len()),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }

    /// Returns the open holds (transfers in flight from this account).
    pub fn holds(&self) -> &[Hold] {
        &self.holds
    }
    /// Returns the time of the latest event.
    pub fn updated_at(&self) -> Timestamp {
        self.updated_at
    }

    /// Returns whether `cmd` would open exactly this account.
    pub fn same_opening(&self, cmd: &OpenAccount) -> bool {
        self.currency == cmd.currency
            && self.overdraft_limit_minor == cmd.overdraft_limit_minor
            && self.metadata_opt.as_deref() == cmd.metadata_opt.as_deref()
    }

    /// Returns what `cmd` records: the event to append and apply, or the rejection. A rejected
    /// hold or entry is still recorded by the caller (as `TransferRejected` / `EntryRejected`) so
    /// that retries see the same outcome.
    pub fn decide(&self, cmd: &AccountCommand, at: Timestamp) -> Result<Event, Rejection> {
        match cmd {
            AccountCommand::Hold(t, batch_opt) => {
                assert_eq!(t.debit_account_id, self.id, "routing bug");
                self.check_amount(t.amount_minor, t.currency)?;
                self.check_can_spend(t.amount_minor)?;
                Ok(Event::HoldPlaced {
                    transfer: t.clone(),
                    batch_opt: batch_opt.clone(),
                    at,
                })
            }
            AccountCommand::Credit(t) => {
                assert_eq!(t.credit_account_id, self.id, "routing bug");
                self.check_amount(t.amount_minor, t.currency)?;
                self.check_can_receive(t.amount_minor)?;
                Ok(Event::CreditApplied {
                    transfer: t.clone(),
                    at,
                })
            }
            AccountCommand::CreditReserved(t) => {
                assert_eq!(t.credit_account_id, self.id, "routing bug");
                self.check_amount(t.amount_minor, t.currency)?;
                assert!(
                    self.incoming.0 >= t.amount_minor,
                    "a reserved credit has its reservation"
                );
                // The reservation is part of `incoming` already: balance + incoming fits.
                self.check_can_receive(0)?;
                Ok(Event::CreditApplied {
                    transfer: t.clone(),
                    at,
                })
            }
            AccountCommand::Commit(id) => {
                self.hold(id).ok_or(Rejection::MovementNotFound)?;
                Ok(Event::HoldCommitted {
                    transfer_id: id.clone(),
                    debit_account_id: self.id.clone(),
                    at,
                })
            }
            AccountCommand::Release(id, reason) => {
                self.hold(id).ok_or(Rejection::MovementNotFound)?;
                Ok(Event::HoldReleased {
                    transfer_id: id.clone(),
                    debit_account_id: self.id.clone(),
                    reason: reason.clone(),
                    at,
                })
            }
            AccountCommand::Entry(e) => {
                assert_eq!(e.account_id, self.id, "routing bug");
                self.check_amount(e.amount_minor, self.currency)?;
                let balance_after_minor = match e.kind {
                    EntryKind::Credit => {
                        self.check_can_receive(e.amount_minor)?;
                        self.balance_minor
                            .checked_add(e.amount_minor)
                            .ok_or(Rejection::BalanceOverflow)?
                    }
                    EntryKind::Debit => {
                        self.check_can_spend(e.amount_minor)?;
                        self.balance_minor
                            .checked_sub(e.amount_minor)
                            .ok_or(Rejection::BalanceOverflow)?
                    }
                };
                Ok(Event::EntryApplied {
                    entry: e.clone(),
                    balance_after_minor,
                    at,
                })
            }
        }
    }

    /// Checks that the debit of transfer `t` can leave this account (its debit account) now:
    /// the check of a hold, for a transfer within one shard that posts in one event.
    pub fn check_debit(&self, t: &Transfer) -> Result<(), Rejection> {
        assert_eq!(t.debit_account_id, self.id, "routing bug");
        self.check_amount(t.amount_minor, t.currency)?;
        self.check_can_spend(t.amount_minor)
    }

    /// Checks that the credit of transfer `t` can arrive on this account (its credit account).
    pub fn check_credit(&self, t: &Transfer) -> Result<(), Rejection> {
        assert_eq!(t.credit_account_id, self.id, "routing bug");
        self.check_amount(t.amount_minor, t.currency)?;
        self.check_can_receive(t.amount_minor)
    }

    fn check_amount(&self, amount_minor: i64, currency: Currency) -> Result<(), Rejection> {
        if currency != self.currency {
            return Err(Rejection::CurrencyMismatch);
        }
        if amount_minor <= 0 {
            return Err(Rejection::InvalidAmount);
        }
        Ok(())
    }

    /// Checks that `amount_minor` more can arrive: balance + reserved credits + amount fits
    /// the balance type. Refused in `decide`, so that `apply` never meets an overflow.
    fn check_can_receive(&self, amount_minor: i64) -> Result<(), Rejection> {
        self.balance_minor
            .checked_add(self.incoming.0)
            .and_then(|b| b.checked_add(amount_minor))
            .map(|_| ())
            .ok_or(Rejection::BalanceOverflow)
    }

    /// Reserves room for an atomic batch's credit to this account (before the batch's commit
    /// point): later credits are checked against it, so this one cannot be refused for
    /// overflow. Records nothing.
    pub fn reserve_incoming(&mut self, t: &Transfer) -> Result<(), Rejection> {
        assert_eq!(t.credit_account_id, self.id, "routing bug");
        self.check_amount(t.amount_minor, t.currency)?;
        self.check_can_receive(t.amount_minor)?;
        self.incoming.0 = self
            .incoming
            .0
            .checked_add(t.amount_minor)
            .expect("checked by check_can_receive above");
        Ok(())
    }

    /// Gives back a reservation: its credit was applied, or its batch aborted.
    pub fn release_incoming(&mut self, amount_minor: i64) {
        self.incoming.0 = self
            .incoming
            .0
            .checked_sub(amount_minor)
            .filter(|&left| left >= 0)
            .expect("a reservation is released once");
    }

    /// Checks that `amount_minor` more can leave: available − amount ≥ −overdraft limit, and
    /// the holds still sum within the balance type.
    fn check_can_spend(&self, amount_minor: i64) -> Result<(), Rejection> {
        self.held_minor
            .checked_add(amount_minor)
            .ok_or(Rejection::BalanceOverflow)?;
        let available_after = self
            .balance_minor
            .checked_sub(self.held_minor)
            .and_then(|a| a.checked_sub(amount_minor))
            .ok_or(Rejection::InsufficientFunds)?;
        let floor = self
            .overdraft_limit_minor
            .checked_neg()
            .expect("overdraft limit is >= 0");
        if available_after < floor {
            return Err(Rejection::InsufficientFunds);
        }
        Ok(())
    }

    fn hold(&self, id: &MovementId) -> Option<&Transfer> {
        self.holds
            .iter()
            .map(|h| &h.transfer)
            .find(|t| &t.transfer_id == id)
    }

    /// Folds an event that `decide` produced on this very state (the live path): `decide`
    /// proved that it applies, so a failure here is a bug and stops the process.
    pub fn apply(&mut self, event: &Event, movements_window: usize) {
        if let Err(e) = self.try_apply(event, movements_window) {
            panic!(
                "account {}: an event decide accepted does not apply: {e}",
                self.id
            );
        }
    }

    /// Folds an event about this account into the state, or says why it cannot (the replay
    /// path: restore, snapshots and tools fold events they did not decide, and an event that
    /// contradicts the state is corruption or a bug to report, never a reason to panic).
    /// `movements_window` bounds the history kept in memory. Events that do not change the
    /// account (rejections) are no-ops. On `Err` the state may be half-changed and must be
    /// dropped.
    pub fn try_apply(&mut self, event: &Event, movements_window: usize) -> Result<(), Unappliable> {
        let at = event.at();
        if at < self.updated_at {
            return Err(Unappliable("time goes backwards on the account"));
        }
        match event {
            Event::AccountOpened { .. } => return Err(Unappliable("the account is already open")),
            Event::EntryRejected { .. }
            | Event::TransferRejected { .. }
            | Event::BatchCommitted { .. } => return Ok(()),
            Event::HoldPlaced {
                transfer,
                batch_opt,
                ..
            } => {
                if transfer.debit_account_id != self.id {
                    return Err(Unappliable("a hold routed to another account"));
                }
                if self.hold(&transfer.transfer_id).is_some() {
                    return Err(Unappliable("a second hold for one transfer"));
                }
                self.held_minor = self
                    .held_minor
                    .checked_add(transfer.amount_minor)
                    .ok_or(Unappliable("held funds overflow"))?;
                self.holds.push(Hold {
                    transfer: transfer.clone(),
                    batch_opt: batch_opt.clone(),
                });
            }
            Event::CreditApplied { transfer, .. } => {
                if transfer.credit_account_id != self.id {
                    return Err(Unappliable("a credit routed to another account"));
                }
                self.post(
                    at,
                    transfer.amount_minor,
                    Direction::In,
                    movements_window,
                    || {
                        (
                            transfer.transfer_id.clone(),
                            Some(transfer.debit_account_id.clone()),
                            transfer.description_opt.as_deref().map(Arc::from),
                            true,
                        )
                    },
                )?;
            }
            Event::HoldCommitted { transfer_id, .. } => {
                let t = self.take_hold(transfer_id)?;
                self.post(at, t.amount_minor, Direction::Out, movements_window, || {
                    (
                        t.transfer_id.clone(),
                        Some(t.credit_account_id.clone()),
                        t.description_opt.as_deref().map(Arc::from),
                        true,
                    )
                })?;
            }
            Event::HoldReleased { transfer_id, .. } => {
                self.take_hold(transfer_id)?;
            }
            Event::TransferPosted { transfer: t, .. } => {
                let (direction, counterparty) = if t.debit_account_id == self.id {
                    (Direction::Out, &t.credit_account_id)
                } else if t.credit_account_id == self.id {
                    (Direction::In, &t.debit_account_id)
                } else {
                    return Err(Unappliable("a transfer routed to another account"));
                };
                if t.debit_account_id == t.credit_account_id {
                    return Err(Unappliable("a transfer from an account to itself"));
                }
                self.post(at, t.amount_minor, direction, movements_window, || {
                    (
                        t.transfer_id.clone(),
                        Some(counterparty.clone()),
                        t.description_opt.as_deref().map(Arc::from),
                        true,
                    )
                })?;
            }
            Event::EntryApplied {
                entry,
                balance_after_minor,
                ..
            } => {
                if entry.account_id != self.id {
                    return Err(Unappliable("an entry routed to another account"));
                }
                let direction = match entry.kind {
                    EntryKind::Credit => Direction::In,
                    EntryKind::Debit => Direction::Out,
                };
                self.post(at, entry.amount_minor, direction, movements_window, || {
                    (
                        entry.entry_id.clone(),
                        None,
                        entry.description_opt.as_deref().map(Arc::from),
                        false,
                    )
                })?;
                // Check in pairs: the balance decide computed is the balance apply reached.
                if self.balance_minor != *balance_after_minor {
                    return Err(Unappliable(
                        "the entry's recorded balance differs from the fold",
                    ));
                }
            }
        }
        self.updated_at = at;
        self.check_invariants()
    }

    /// Removes an open hold, returning its transfer.
    fn take_hold(&mut self, transfer_id: &MovementId) -> Result<Transfer, Unappliable> {
        let i = self
            .holds
            .iter()
            .position(|h| &h.transfer.transfer_id == transfer_id)
            .ok_or(Unappliable("no open hold for the transfer"))?;
        let t = self.holds.remove(i).transfer;
        self.held_minor = self
            .held_minor
            .checked_sub(t.amount_minor)
            .ok_or(Unappliable("held funds below the hold"))?;
        Ok(t)
    }

    /// Changes the posted balance by one movement and records it in the history and the day.
    fn post(
        &mut self,
        at: Timestamp,
        amount_minor: i64,
        direction: Direction,
        movements_window: usize,
        row: impl FnOnce() -> (MovementId, Option<AccountId>, Option<Arc<str>>, bool),
    ) -> Result<(), Unappliable> {
        if amount_minor <= 0 {
            return Err(Unappliable("an amount that is not positive"));
        }
        self.balance_minor = match direction {
            Direction::In => self.balance_minor.checked_add(amount_minor),
            Direction::Out => self.balance_minor.checked_sub(amount_minor),
        }
        .ok_or(Unappliable("the balance overflows"))?;
        // A count of events: 2^64 of them cannot happen, saturating is only for form.
        self.num_movements = self.num_movements.saturating_add(1);
        let day = at.day();
        if self.days.latest_opt.is_some_and(|last| last.day > day) {
            return Err(Unappliable("days go backwards on the account"));
        }
        if self.days.latest_opt.is_none_or(|last| last.day != day) {
            self.days.push(DayTotals {
                day,
                num_movements: 0,
                credits_minor: 0,
                debits_minor: 0,
                closing_minor: 0,
            });
        }
        let today = self.days.latest_opt.as_mut().expect("pushed above");
        // Report counters, not money: a client can drive them past any balance (credit and
        // debit the same amount all day), so they are i128 and saturate. Reaching the bound
        // takes 2^64 movements of the largest amount in one day: it cannot happen.
        today.num_movements = today.num_movements.saturating_add(1);
        match direction {
            Direction::In => {
                today.credits_minor = today.credits_minor.saturating_add(i128::from(amount_minor))
            }
            Direction::Out => {
                today.debits_minor = today.debits_minor.saturating_add(i128::from(amount_minor))
            }
        }
        today.closing_minor = self.balance_minor;
        if movements_window > 0 {
            let (movement_id, counterparty_opt, description_opt, is_transfer) = row();
            self.history.push(
                &HistoryRow {
                    seq: self.num_movements,
                    movement_id,
                    counterparty_opt,
                    description_opt,
                    amount_minor,
                    balance_after_minor: self.balance_minor,
                    at,
                    direction,
                    is_transfer,
                },
                movements_window,
            );
        }
        Ok(())
    }

    /// Checks I4 and the bookkeeping after every change: holds sum to `held`, available never
    /// below the overdraft floor, the day closes on the balance.
    fn check_invariants(&self) -> Result<(), Unappliable> {
        let held = self
            .holds
            .iter()
            .try_fold(0i64, |a, h| a.checked_add(h.transfer.amount_minor))
            .ok_or(Unappliable("held funds overflow"))?;
        if held != self.held_minor {
            return Err(Unappliable("holds do not sum to held"));
        }
        let floor = self
            .overdraft_limit_minor
            .checked_neg()
            .ok_or(Unappliable("overdraft limit out of range"))?;
        let available = self
            .balance_minor
            .checked_sub(self.held_minor)
            .ok_or(Unappliable("available balance overflows"))?;
        if available < floor {
            return Err(Unappliable("the account is below its allowance (I4)"));
        }
        if self
            .days
            .latest_opt
            .is_some_and(|last| last.closing_minor != self.balance_minor)
        {
            return Err(Unappliable("the day does not close on the balance"));
        }
        Ok(())
    }

    /// Returns the reader's view of the account.
    pub fn view(&self) -> AccountView {
        AccountView {
            account_id: self.id.clone(),
            currency: self.currency,
            balance_minor: self.balance_minor,
            held_minor: self.held_minor,
            available_minor: self
                .balance_minor
                .checked_sub(self.held_minor)
                .expect("I4, checked after every event: available >= -overdraft >= -i64::MAX"),
            overdraft_limit_minor: self.overdraft_limit_minor,
            metadata_opt: self.metadata_opt.as_deref().map(String::from),
            created_at: self.created_at,
            num_movements: self.num_movements,
        }
    }

    /// Returns up to `limit` rows older than `cursor_opt` (exclusive), newest first, from the
    /// newest `window` movements (the ledger's `movements_window`).
    pub fn movements(&self, window: usize, limit: usize, cursor_opt: Option<u64>) -> MovementsPage {
        let below = cursor_opt.unwrap_or(u64::MAX);
        let rows: Vec<MovementRow> = self
            .history
            .rows_newest_first(window)
            .filter(|r| r.seq < below)
            .take(limit)
            .map(|r| MovementRow {
                seq: r.seq,
                movement_id: r.movement_id,
                is_transfer: r.is_transfer,
                direction: r.direction,
                counterparty_opt: r.counterparty_opt,
                amount_minor: r.amount_minor,
                balance_after_minor: r.balance_after_minor,
                at: r.at,
                description_opt: r.description_opt.as_deref().map(String::from),
            })
            .collect();
        let oldest_in_memory = self
            .history
            .oldest(window)
            .map_or(self.num_movements.saturating_add(1), |r| r.seq);
        let next_cursor_opt = match rows.last() {
            Some(last) if rows.len() == limit && last.seq > oldest_in_memory => Some(last.seq),
            _ => None,
        };
        MovementsPage {
            // The page reached the bottom of the in-memory window and older rows exist.
            older_rows_in_stream: next_cursor_opt.is_none() && oldest_in_memory > 1,
            next_cursor_opt,
            rows,
        }
    }

    /// Returns the daily consolidated rows for every day of `from..=to`.
    pub fn daily(&self, from: Day, to: Day) -> Vec<DailyRow> {
        let mut i = self.days.partition_point(|d| d.day < from);
        let mut opening = if i == 0 {
            0
        } else {
            self.days
                .get(i.wrapping_sub(1))
                .expect("a day before the first at or after from")
                .closing_minor
        };
        let mut out = Vec::new();
        let mut day = from;
        while day <= to {
            let row = match self.days.get(i) {
                Some(t) if t.day == day => {
                    i = i.wrapping_add(1);
                    DailyRow {
                        day,
                        opening_minor: opening,
                        credits_minor: t.credits_minor,
                        debits_minor: t.debits_minor,
                        num_movements: u64::from(t.num_movements),
                        closing_minor: t.closing_minor,
                    }
                }
                _ => DailyRow {
                    day,
                    opening_minor: opening,
                    credits_minor: 0,
                    debits_minor: 0,
                    num_movements: 0,
                    closing_minor: opening,
                },
            };
            opening = row.closing_minor;
            out.push(row);
            day = Day(day.0.checked_add(1).expect("bounded range"));
        }
        out
    }

    /// Feeds a canonical digest of the account's money state into `hasher` (for the
    /// snapshot + replay ≡ live checks).
    pub fn digest_into(&self, hasher: &mut blake3::Hasher) {
        hasher.update(self.id.as_str().as_bytes());
        hasher.update(&[0]);
        hasher.update(self.currency.code().as_bytes());
        for v in [
            self.balance_minor,
            self.held_minor,
            self.overdraft_limit_minor,
        ] {
            hasher.update(&v.to_le_bytes());
        }
        hasher.update(&self.num_movements.to_le_bytes());
        hasher.update(&self.created_at.0.to_le_bytes());
        let mut holds: Vec<&str> = self
            .holds
            .iter()
            .map(|h| h.transfer.transfer_id.as_str())
            .collect();
        holds.sort_unstable();
        for h in holds {
            hasher.update(h.as_bytes());
            hasher.update(&[0]);
        }
        for d in self.days.iter() {
            hasher.update(&d.day.0.to_le_bytes());
            hasher.update(&d.credits_minor.to_le_bytes());
            hasher.update(&d.debits_minor.to_le_bytes());
            hasher.update(&d.closing_minor.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::arithmetic_side_effects)]

    use super::*;

    fn account(overdraft: i64) -> AccountState {
        let cmd = OpenAccount {
            account_id: AccountId::new("a").unwrap(),
            currency: Currency::new("BRL").unwrap(),
            overdraft_limit_minor: overdraft,
            metadata_opt: None,
        };
        AccountState::open(&cmd, Timestamp(10))
    }

    fn entry(id: &str, kind: EntryKind, amount: i64) -> AccountCommand {
        AccountCommand::Entry(Entry {
            entry_id: MovementId::new(id).unwrap(),
            account_id: AccountId::new("a").unwrap(),
            kind,
            amount_minor: amount,
            description_opt: None,
        })
    }

    fn transfer(id: &str, amount: i64) -> Transfer {
        Transfer {
            transfer_id: MovementId::new(id).unwrap(),
            debit_account_id: AccountId::new("a").unwrap(),
            credit_account_id: AccountId::new("b").unwrap(),
            amount_minor: amount,
            currency: Currency::new("BRL").unwrap(),
            description_opt: None,
        }
    }

    fn run(a: &mut AccountState, cmd: AccountCommand, at: u64) -> Result<(), Rejection> {
        let ev = a.decide(&cmd, Timestamp(at))?;
        a.apply(&ev, 8);
        Ok(())
    }

    #[test]
    fn a_hold_reserves_funds_until_commit_or_release() {
        let mut a = account(0);
        run(&mut a, entry("c", EntryKind::Credit, 100), 20).unwrap();
        run(&mut a, AccountCommand::Hold(transfer("t1", 70), None), 30).unwrap();
        assert_eq!((a.balance_minor(), a.held_minor()), (100, 70));
        assert_eq!(
            run(&mut a, AccountCommand::Hold(transfer("t2", 31), None), 31),
            Err(Rejection::InsufficientFunds)
        );
        assert_eq!(
            run(&mut a, entry("d", EntryKind::Debit, 31), 32),
            Err(Rejection::InsufficientFunds)
        );
        run(
            &mut a,
            AccountCommand::Commit(MovementId::new("t1").unwrap()),
            40,
        )
        .unwrap();
        assert_eq!((a.balance_minor(), a.held_minor()), (30, 0));
        run(&mut a, AccountCommand::Hold(transfer("t3", 30), None), 50).unwrap();
        run(
            &mut a,
            AccountCommand::Release(MovementId::new("t3").unwrap(), Rejection::AccountNotFound),
            60,
        )
        .unwrap();
        assert_eq!((a.balance_minor(), a.held_minor()), (30, 0));
        assert_eq!(
            run(
                &mut a,
                AccountCommand::Commit(MovementId::new("t3").unwrap()),
                70
            ),
            Err(Rejection::MovementNotFound),
            "a released hold cannot be committed"
        );
    }

    #[test]
    fn the_overdraft_limit_is_the_floor_of_the_available_balance() {
        let mut a = account(50);
        run(&mut a, entry("d1", EntryKind::Debit, 50), 20).unwrap();
        assert_eq!(a.balance_minor(), -50);
        assert_eq!(
            run(&mut a, entry("d2", EntryKind::Debit, 1), 30),
            Err(Rejection::InsufficientFunds)
        );
    }

    #[test]
    fn amounts_must_be_positive_in_the_account_currency_and_not_overflow() {
        let mut a = account(0);
        assert_eq!(
            run(&mut a, entry("z", EntryKind::Credit, 0), 20),
            Err(Rejection::InvalidAmount)
        );
        assert_eq!(
            run(&mut a, entry("n", EntryKind::Credit, -5), 20),
            Err(Rejection::InvalidAmount)
        );
        run(&mut a, entry("max", EntryKind::Credit, i64::MAX), 20).unwrap();
        assert_eq!(
            run(&mut a, entry("over", EntryKind::Credit, 1), 20),
            Err(Rejection::BalanceOverflow)
        );
        let mut usd = transfer("u", 1);
        usd.currency = Currency::new("USD").unwrap();
        assert_eq!(
            run(&mut a, AccountCommand::Hold(usd, None), 30),
            Err(Rejection::CurrencyMismatch)
        );
    }

    #[test]
    fn daily_rows_cover_every_day_and_close_on_the_balance() {
        let mut a = account(0);
        let day = Timestamp::DAY_MICROS;
        run(&mut a, entry("c1", EntryKind::Credit, 100), day * 10 + 5).unwrap();
        run(&mut a, entry("d1", EntryKind::Debit, 30), day * 10 + 6).unwrap();
        run(&mut a, entry("c2", EntryKind::Credit, 5), day * 12 + 1).unwrap();
        let rows = a.daily(Day(9), Day(13));
        let summary: Vec<(i32, i64, i128, i128, u64, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r.day.0,
                    r.opening_minor,
                    r.credits_minor,
                    r.debits_minor,
                    r.num_movements,
                    r.closing_minor,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (9, 0, 0, 0, 0, 0),
                (10, 0, 100, 30, 2, 70),
                (11, 70, 0, 0, 0, 70),
                (12, 70, 5, 0, 1, 75),
                (13, 75, 0, 0, 0, 75)
            ]
        );
        assert_eq!(rows.last().unwrap().closing_minor, a.balance_minor());
    }

    #[test]
    fn history_keeps_the_newest_window_with_running_balances() {
        let mut a = account(0);
        for i in 0..12 {
            run(
                &mut a,
                entry(&format!("c{i}"), EntryKind::Credit, 10),
                20 + i,
            )
            .unwrap();
        }
        let page = a.movements(8, 100, None);
        assert_eq!(page.rows.len(), 8, "the window is 8");
        assert_eq!(page.rows[0].balance_after_minor, 120);
        assert_eq!(page.rows[0].seq, 12);
        assert!(page.older_rows_in_stream);
    }

    #[test]
    fn holds_that_would_overflow_held_funds_are_refused_in_decide() {
        // Balance + overdraft limit above i64::MAX: the available check alone lets a second
        // hold through whose sum overflows `held` in apply.
        let mut a = account(i64::MAX);
        run(&mut a, entry("c", EntryKind::Credit, i64::MAX), 10).unwrap();
        run(
            &mut a,
            AccountCommand::Hold(transfer("t1", i64::MAX), None),
            20,
        )
        .unwrap();
        assert_eq!(
            run(&mut a, AccountCommand::Hold(transfer("t2", 1), None), 30),
            Err(Rejection::BalanceOverflow)
        );
        assert_eq!(a.held_minor(), i64::MAX);
    }

    #[test]
    fn day_totals_past_the_balance_type_saturate_instead_of_stopping_the_account() {
        // The reproduced poison pill: credit and debit 100,000,000,000,000.00 on one day.
        let mut a = account(0);
        let amount = 10_000_000_000_000_000;
        for i in 0..1_000 {
            run(
                &mut a,
                entry(&format!("c{i}"), EntryKind::Credit, amount),
                20,
            )
            .unwrap();
            run(
                &mut a,
                entry(&format!("d{i}"), EntryKind::Debit, amount),
                20,
            )
            .unwrap();
        }
        let day = a.daily(Timestamp(20).day(), Timestamp(20).day());
        assert_eq!(day[0].credits_minor, 1_000 * i128::from(amount));
        assert_eq!(day[0].debits_minor, 1_000 * i128::from(amount));
        assert_eq!(day[0].num_movements, 2_000);
        assert_eq!(a.balance_minor(), 0);
    }

    #[test]
    fn a_reserved_credit_keeps_its_room_against_later_credits() {
        let mut a = account(0);
        run(&mut a, entry("c", EntryKind::Credit, i64::MAX - 10), 10).unwrap();
        let mut incoming = transfer("in", 6);
        incoming.debit_account_id = AccountId::new("x").unwrap();
        incoming.credit_account_id = AccountId::new("a").unwrap();
        a.reserve_incoming(&incoming).unwrap();
        let mut second = incoming.clone();
        second.transfer_id = MovementId::new("in2").unwrap();
        assert_eq!(
            a.reserve_incoming(&second),
            Err(Rejection::BalanceOverflow),
            "6 + 6 past the room of 10"
        );
        assert_eq!(
            run(&mut a, entry("late", EntryKind::Credit, 5), 20),
            Err(Rejection::BalanceOverflow),
            "a later credit cannot take the reserved room"
        );
        run(&mut a, AccountCommand::CreditReserved(incoming), 30).unwrap();
        a.release_incoming(6);
        assert_eq!(a.balance_minor(), i64::MAX - 4);
        run(&mut a, entry("fits", EntryKind::Credit, 4), 40).unwrap();
    }

    #[test]
    fn an_event_that_contradicts_the_state_is_an_error_of_the_fold_not_a_panic() {
        let mut a = account(0);
        let commit = Event::HoldCommitted {
            transfer_id: MovementId::new("ghost").unwrap(),
            debit_account_id: AccountId::new("a").unwrap(),
            at: Timestamp(20),
        };
        assert_eq!(
            a.try_apply(&commit, 8),
            Err(Unappliable("no open hold for the transfer"))
        );
        let overflow = Event::EntryApplied {
            entry: Entry {
                entry_id: MovementId::new("e").unwrap(),
                account_id: AccountId::new("a").unwrap(),
                kind: EntryKind::Debit,
                amount_minor: 5,
                description_opt: None,
            },
            balance_after_minor: -5,
            at: Timestamp(30),
        };
        assert_eq!(
            a.try_apply(&overflow, 8),
            Err(Unappliable("the account is below its allowance (I4)"))
        );
        // A transfer within one shard that the account could not pay, or that names neither
        // side as this account.
        let mut a = account(0);
        let overdrawn = Event::TransferPosted {
            transfer: transfer("t1", 5),
            at: Timestamp(40),
        };
        assert_eq!(
            a.try_apply(&overdrawn, 8),
            Err(Unappliable("the account is below its allowance (I4)"))
        );
        let mut elsewhere = transfer("t2", 5);
        elsewhere.debit_account_id = AccountId::new("x").unwrap();
        let elsewhere = Event::TransferPosted {
            transfer: elsewhere,
            at: Timestamp(50),
        };
        assert_eq!(
            account(0).try_apply(&elsewhere, 8),
            Err(Unappliable("a transfer routed to another account"))
        );
    }

    #[test]
    fn a_transfer_within_one_shard_debits_one_account_and_credits_the_other() {
        let mut a = account(0);
        run(&mut a, entry("c1", EntryKind::Credit, 10), 10).unwrap();
        let t = transfer("t1", 4);
        assert_eq!(a.check_debit(&t), Ok(()));
        assert_eq!(
            a.check_debit(&transfer("t2", 11)),
            Err(Rejection::InsufficientFunds)
        );
        let mut b = AccountState::open(
            &OpenAccount {
                account_id: t.credit_account_id.clone(),
                currency: t.currency,
                overdraft_limit_minor: 0,
                metadata_opt: None,
            },
            Timestamp(1),
        );
        assert_eq!(b.check_credit(&t), Ok(()));
        let posted = Event::TransferPosted {
            transfer: t,
            at: Timestamp(20),
        };
        a.apply(&posted, 8);
        b.apply(&posted, 8);
        assert_eq!((a.balance_minor(), b.balance_minor()), (6, 4));
        assert_eq!(a.held_minor(), 0);
        let (out, inn) = (
            &a.movements(8, 8, None).rows[0],
            &b.movements(8, 8, None).rows[0],
        );
        assert_eq!(
            (out.direction, inn.direction),
            (Direction::Out, Direction::In)
        );
        assert_eq!(out.counterparty_opt, Some(b.id().clone()));
        assert_eq!(inn.counterparty_opt, Some(a.id().clone()));
    }

    #[test]
    #[should_panic(expected = "time goes backwards")]
    fn time_going_backwards_is_a_bug() {
        let mut a = account(0);
        run(&mut a, entry("c1", EntryKind::Credit, 10), 100).unwrap();
        run(&mut a, entry("c2", EntryKind::Credit, 10), 50).unwrap();
    }

    #[test]
    fn days_encode_as_the_sequence_of_every_day_and_find_them_in_order() {
        let day = |d: i32| DayTotals {
            day: Day(d),
            num_movements: 1,
            credits_minor: i128::from(d),
            debits_minor: 0,
            closing_minor: i64::from(d),
        };
        for n in 0..4 {
            let all: Vec<DayTotals> = (0..n).map(|i| day(10 + 2 * i)).collect();
            let mut days = Days::default();
            for d in &all {
                days.push(*d);
            }
            assert_eq!(days.iter().copied().collect::<Vec<_>>(), all);
            let bytes = postcard::to_allocvec(&days).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&all).unwrap());
            assert_eq!(postcard::from_bytes::<Days>(&bytes).unwrap(), days);
            for from in 8..20 {
                assert_eq!(
                    days.partition_point(|d| d.day < Day(from)),
                    all.partition_point(|d| d.day < Day(from)),
                    "{n} days, from {from}"
                );
            }
            for i in 0..5 {
                assert_eq!(days.get(i), all.get(i));
            }
        }
    }
}
