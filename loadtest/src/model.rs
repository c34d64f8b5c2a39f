//! What the generator believes the server holds: the oracle that verification checks.
//!
//! Every acknowledged write (a committed transfer, an accepted entry) is applied here as soon as
//! its answer arrives: expected balances are atomics indexed by account, so workers on any
//! thread update them without locks. Writes whose outcome is unknown (timeout, broken
//! connection, 5xx) are remembered as *in doubt* and resolved after the run by sending them
//! again with the same ID, which the API answers idempotently. Acknowledged IDs are remembered
//! for lookup (all of them up to `ACKS_REMEMBERED_MAX`, a uniform sample beyond).
//!
//! `State` is the serialisable form (`--save-state`, `verify --state`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Version of the `--save-state` file format.
pub const STATE_SCHEMA_VERSION: u32 = 1;

/// Expected balances and counters, shared by every worker.
pub struct LedgerModel {
    /// Expected balance of each account in minor units; the treasury is the last one.
    pub expected_minor: Vec<AtomicI64>,
    /// Money brought in by the set-up's credit entry on the treasury.
    pub funding_minor: AtomicI64,
    /// Sum of acknowledged credit entries of the workload.
    pub credits_minor: AtomicI64,
    /// Sum of acknowledged debit entries of the workload.
    pub debits_minor: AtomicI64,
    /// Transfers committed, set-up included.
    pub num_transfers_committed: AtomicU64,
    /// Entries acknowledged, set-up included.
    pub num_entries_acked: AtomicU64,
    /// Deliberately invalid requests that the server accepted with a 2xx.
    pub num_invalid_accepted: AtomicU64,
    /// Retries with the same ID answered 201 (created again) after a first 201.
    pub num_idempotency_violations: AtomicU64,
}

impl LedgerModel {
    /// Returns a model of `num_accounts` accounts (treasury included), all at zero.
    pub fn new(num_accounts: usize) -> LedgerModel {
        LedgerModel {
            expected_minor: (0..num_accounts).map(|_| AtomicI64::new(0)).collect(),
            funding_minor: AtomicI64::new(0),
            credits_minor: AtomicI64::new(0),
            debits_minor: AtomicI64::new(0),
            num_transfers_committed: AtomicU64::new(0),
            num_entries_acked: AtomicU64::new(0),
            num_invalid_accepted: AtomicU64::new(0),
            num_idempotency_violations: AtomicU64::new(0),
        }
    }

    /// Applies a committed transfer.
    pub fn apply_transfer(&self, from: usize, to: usize, amount_minor: i64) {
        assert!(amount_minor > 0, "only positive amounts are sent");
        self.expected_minor[from].fetch_sub(amount_minor, Ordering::Relaxed);
        self.expected_minor[to].fetch_add(amount_minor, Ordering::Relaxed);
        self.num_transfers_committed.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies an accepted entry of the workload.
    pub fn apply_entry(&self, account: usize, credit: bool, amount_minor: i64) {
        assert!(amount_minor > 0, "only positive amounts are sent");
        if credit {
            self.expected_minor[account].fetch_add(amount_minor, Ordering::Relaxed);
            self.credits_minor
                .fetch_add(amount_minor, Ordering::Relaxed);
        } else {
            self.expected_minor[account].fetch_sub(amount_minor, Ordering::Relaxed);
            self.debits_minor.fetch_add(amount_minor, Ordering::Relaxed);
        }
        self.num_entries_acked.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies the set-up's funding entry on the treasury.
    pub fn apply_funding(&self, treasury: usize, amount_minor: i64) {
        self.expected_minor[treasury].fetch_add(amount_minor, Ordering::Relaxed);
        self.funding_minor
            .fetch_add(amount_minor, Ordering::Relaxed);
        self.num_entries_acked.fetch_add(1, Ordering::Relaxed);
    }
}

/// A uniform sample of at most `capacity` items out of a stream (reservoir sampling).
pub struct Reservoir<T> {
    /// The sample.
    pub items: Vec<T>,
    /// Items offered so far.
    pub num_seen: u64,
    /// Largest sample kept.
    capacity: usize,
    /// Decides which items replace sampled ones; seeded so runs are reproducible.
    rng: SmallRng,
}

impl<T> Reservoir<T> {
    /// Returns an empty reservoir.
    pub fn new(capacity: usize, seed: u64) -> Reservoir<T> {
        Reservoir {
            items: Vec::new(),
            num_seen: 0,
            capacity,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// Offers an item, built only if it is kept.
    pub fn offer(&mut self, make: impl FnOnce() -> T) {
        self.num_seen += 1;
        if self.items.len() < self.capacity {
            self.items.push(make());
            return;
        }
        let slot = self.rng.gen_range(0..self.num_seen);
        if let Ok(slot) = usize::try_from(slot) {
            if slot < self.capacity {
                self.items[slot] = make();
            }
        }
    }
}

/// An acknowledged transfer remembered for lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferAck {
    /// The transfer's ID.
    pub id: String,
    /// Debited account ID.
    pub from: String,
    /// Credited account ID.
    pub to: String,
    /// Amount in minor units.
    pub amount_minor: i64,
}

/// An acknowledged entry remembered for lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryAck {
    /// The entry's ID.
    pub id: String,
    /// The account it was posted to.
    pub account: String,
    /// `credit` or `debit`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Amount in minor units.
    pub amount_minor: i64,
}

/// What verification expects of one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountExpectation {
    /// The account's ID.
    pub id: String,
    /// Overdraft allowance the account was created with, in minor units.
    pub overdraft_limit_minor: i64,
    /// Balance implied by every acknowledged write, in minor units.
    pub expected_balance_minor: i64,
}

/// Everything a run created and had acknowledged: the input of verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// `STATE_SCHEMA_VERSION`.
    pub schema_version: u32,
    /// Prefix of every ID of the run.
    pub run_id: String,
    /// Currency of every account.
    pub currency: String,
    /// Decimals of the currency's minor unit.
    pub scale: u32,
    /// Every account of the run, the treasury last.
    pub accounts: Vec<AccountExpectation>,
    /// Money brought in by the set-up's credit entry on the treasury.
    pub funding_minor: i64,
    /// Sum of acknowledged credit entries of the workload.
    pub credits_minor: i64,
    /// Sum of acknowledged debit entries of the workload.
    pub debits_minor: i64,
    /// Transfers committed (set-up included).
    pub num_transfers_committed: u64,
    /// Entries acknowledged (set-up included).
    pub num_entries_acked: u64,
    /// Transfers remembered for lookup: all of them, or a uniform sample beyond the limit.
    pub transfers: Vec<TransferAck>,
    /// Entries remembered for lookup, likewise.
    pub entries: Vec<EntryAck>,
    /// Writes whose outcome stayed unknown after resolution; non-zero fails verification.
    pub num_in_doubt_unresolved: u64,
    /// Invalid requests the server accepted; non-zero fails verification.
    pub num_invalid_accepted: u64,
    /// Same-ID retries answered as newly created; non-zero fails verification.
    pub num_idempotency_violations: u64,
}

impl State {
    /// Returns the sum every balance must add up to.
    pub fn expected_total_minor(&self) -> i64 {
        self.funding_minor + self.credits_minor - self.debits_minor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_conserves_money_across_transfers() {
        let model = LedgerModel::new(3);
        model.apply_funding(2, 1_000);
        model.apply_transfer(2, 0, 300);
        model.apply_transfer(0, 1, 100);
        model.apply_entry(1, true, 5);
        model.apply_entry(0, false, 7);
        let balances: Vec<i64> = model
            .expected_minor
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(balances, vec![193, 105, 700]);
        let total: i64 = balances.iter().sum();
        assert_eq!(total, 1_000 + 5 - 7);
    }

    #[test]
    fn a_reservoir_keeps_everything_below_capacity_and_a_sample_above() {
        let mut reservoir = Reservoir::new(10, 1);
        for i in 0..5 {
            reservoir.offer(|| i);
        }
        assert_eq!(reservoir.items, vec![0, 1, 2, 3, 4]);
        let mut reservoir = Reservoir::new(100, 1);
        for i in 0..10_000u32 {
            reservoir.offer(|| i);
        }
        assert_eq!(reservoir.items.len(), 100);
        assert_eq!(reservoir.num_seen, 10_000);
        // A uniform sample of 0..10,000 has about half its items above 5,000.
        let above = reservoir.items.iter().filter(|&&i| i >= 5_000).count();
        assert!((30..70).contains(&above), "{above}");
    }
}
