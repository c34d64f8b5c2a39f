//! Public domain types of the ledger: identifiers, currencies, time, commands, views and the
//! business rejections.
//!
//! Everything here is plain data. Amounts are integer minor units (`i64`), never floats; the API
//! edge (gateway) parses and formats decimal strings with [`Currency::scale`].

use std::fmt;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

/// Longest account, transfer or entry identifier, in bytes.
pub const ID_BYTES_MAX: usize = 64;
/// Longest description of a transfer or entry, in bytes.
pub const DESCRIPTION_BYTES_MAX: usize = 256;

/// Returns whether `id` is a valid client-chosen identifier: 1–64 bytes of `A-Za-z0-9._:-`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A client-chosen account identifier (validated, cheap to clone).
/// Up to [`ID_INLINE_BYTES_MAX`] bytes it is stored inline: no allocation, no reference count,
/// and a map compares its keys without a pointer to chase (an account's state, its history rows
/// and the movement table all hold IDs). A longer one is shared behind an `Arc`.
/// Serialized as a string; decoded from a borrowed string where the format allows.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(SmolStr);

/// A client-chosen transfer or entry identifier (one namespace for both, validated). Stored as
/// [`AccountId`] is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MovementId(SmolStr);

/// Longest identifier stored inline, in bytes (longer ones take an allocation of their own).
pub const ID_INLINE_BYTES_MAX: usize = 23;

macro_rules! id_type {
    ($name:ident) => {
        impl $name {
            /// Returns the identifier if `s` is 1–64 bytes of `A-Za-z0-9._:-`.
            pub fn new(s: &str) -> Result<Self, Rejection> {
                if is_valid_id(s) {
                    Ok(Self(SmolStr::new(s)))
                } else {
                    Err(Rejection::InvalidId)
                }
            }
            /// Returns the identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = Rejection;
            fn try_from(s: String) -> Result<Self, Rejection> {
                Self::new(&s)
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("an identifier of 1-64 bytes of A-Za-z0-9._:-")
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::new(v).map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(Visitor)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
    };
}
id_type!(AccountId);
id_type!(MovementId);

/// Microseconds since the Unix epoch (UTC). Time is injected: the state machine never reads a
/// clock.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The Unix epoch.
    pub const ZERO: Timestamp = Timestamp(0);
    /// Microseconds in one day.
    pub const DAY_MICROS: u64 = 86_400_000_000;

    /// Returns the UTC day (days since 1970-01-01) this instant falls in.
    pub fn day(self) -> Day {
        // Division by a non-zero constant cannot fail; u64 micros / day fits in i32 for
        // millions of years.
        Day((self.0 / Self::DAY_MICROS) as i32)
    }

    /// Returns the current wall-clock time. Only shells (actors, binaries) call this.
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970");
        Timestamp(d.as_micros() as u64)
    }
}

/// A UTC calendar day, as days since 1970-01-01.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Day(pub i32);

impl Day {
    /// Returns the (year, month, day) civil date of this day (proleptic Gregorian).
    pub fn to_ymd(self) -> (i32, u32, u32) {
        // Howard Hinnant's days_from_civil inverse.
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (if m <= 2 { y + 1 } else { y }, m, d)
    }

    /// Returns the day of a civil date, or `None` when the date does not exist.
    pub fn from_ymd(y: i32, m: u32, d: u32) -> Option<Day> {
        if !(1..=12).contains(&m) || d == 0 || !(1..=9999).contains(&y) {
            return None;
        }
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let dim = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if d > dim[(m - 1) as usize] {
            return None;
        }
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = if m > 2 { m - 3 } else { m + 9 } as i32;
        let doy = (153 * mp + 2) / 5 + d as i32 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Some(Day(era * 146_097 + doe - 719_468))
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<Day> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let y = s[0..4].parse().ok()?;
        let m = s[5..7].parse().ok()?;
        let d = s[8..10].parse().ok()?;
        Day::from_ymd(y, m, d)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.to_ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// An ISO 4217 currency, stored as its three-letter code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Returns the currency for an ISO 4217 code (upper case), or `None` when it is unknown.
    pub fn new(code: &str) -> Option<Currency> {
        let b: [u8; 3] = code.as_bytes().try_into().ok()?;
        crate::currency::scale_of(&b).map(|_| Currency(b))
    }
    /// Returns the three-letter code.
    pub fn code(&self) -> &str {
        // Constructed only from a table of ASCII codes.
        std::str::from_utf8(&self.0).expect("currency codes are ASCII")
    }
    /// Returns the number of decimal places of the currency's minor unit (BRL 2, JPY 0, KWD 3).
    pub fn scale(&self) -> u32 {
        crate::currency::scale_of(&self.0).expect("constructed from the table")
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A business rejection: an expected outcome, returned as a value (never an actor failure).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The account does not exist.
    AccountNotFound,
    /// An account with this ID exists with other parameters (currency or overdraft limit).
    AccountExists,
    /// The transfer or entry does not exist.
    MovementNotFound,
    /// The source account's available balance plus overdraft does not cover the amount.
    InsufficientFunds,
    /// The currency differs between the request and an account, or between two accounts.
    CurrencyMismatch,
    /// A transfer names the same account as source and destination.
    SameAccount,
    /// The amount is zero, negative, too precise for the currency or too large.
    InvalidAmount,
    /// An identifier is not 1–64 bytes of `A-Za-z0-9._:-`.
    InvalidId,
    /// The ID was used before with other content; lists the fields that differ.
    IdConflict {
        /// Names of the request fields whose values differ from the original.
        fields: Vec<String>,
    },
    /// A transfer in an atomic batch was not applied because another one was rejected.
    BatchAborted,
    /// The movement would take a balance, or the sum of an account's holds, past the largest
    /// amount the ledger represents (`i64::MAX` minor units). Rejections are recorded in the
    /// stream by their index: new ones go last.
    BalanceOverflow,
    /// A request field other than an identifier or an amount is malformed or past its limit
    /// (API code `invalid_request`, as for identifiers). Never recorded: it is refused before
    /// anything is claimed.
    InvalidField {
        /// The request field (`description`, `metadata`, `from`…).
        field: String,
        /// What is wrong with it, with the limit.
        problem: String,
    },
}

impl Rejection {
    /// Returns the stable error code used by the API (`insufficient_funds`, …).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::AccountNotFound => "account_not_found",
            Rejection::AccountExists => "account_exists",
            Rejection::MovementNotFound => "transfer_not_found",
            Rejection::InsufficientFunds => "insufficient_funds",
            Rejection::CurrencyMismatch => "currency_mismatch",
            Rejection::SameAccount => "same_account",
            Rejection::InvalidAmount => "invalid_amount",
            Rejection::InvalidId | Rejection::InvalidField { .. } => "invalid_request",
            Rejection::IdConflict { .. } => "id_conflict",
            Rejection::BatchAborted => "batch_aborted",
            Rejection::BalanceOverflow => "balance_overflow",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::IdConflict { fields } => {
                write!(
                    f,
                    "id_conflict: fields differ from the original: {}",
                    fields.join(", ")
                )
            }
            Rejection::InvalidField { field, problem } => {
                write!(f, "invalid_request: {field}: {problem}")
            }
            other => f.write_str(other.code()),
        }
    }
}

/// Why a ledger call did not produce an outcome: a business rejection, or an infrastructure
/// condition the caller may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The request was rejected by the rules of the ledger; nothing changed.
    #[error("{0}")]
    Rejected(Rejection),
    /// The ledger is overloaded (in-flight bound reached, stream lagging); retry later.
    #[error("ledger overloaded: {reason}")]
    Overloaded {
        /// What bound was hit.
        reason: &'static str,
    },
    /// The ledger is not able to serve (starting, stopping or its stream failed).
    #[error("ledger unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: &'static str,
    },
}

impl From<Rejection> for LedgerError {
    fn from(r: Rejection) -> Self {
        LedgerError::Rejected(r)
    }
}

/// Command: open an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAccount {
    /// Client-chosen account ID.
    pub account_id: AccountId,
    /// Currency of every amount on the account.
    pub currency: Currency,
    /// How far below zero the available balance may go, in minor units (0: never negative).
    pub overdraft_limit_minor: i64,
    /// Opaque client metadata (a JSON string), stored and returned as given.
    pub metadata_opt: Option<String>,
}

/// Command: move `amount_minor` from `debit_account_id` to `credit_account_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Client-chosen transfer ID (idempotency key).
    pub transfer_id: MovementId,
    /// The source account.
    pub debit_account_id: AccountId,
    /// The destination account.
    pub credit_account_id: AccountId,
    /// Amount in minor units, strictly positive.
    pub amount_minor: i64,
    /// Currency the client expects both accounts to hold.
    pub currency: Currency,
    /// Free text, at most [`DESCRIPTION_BYTES_MAX`] bytes.
    pub description_opt: Option<String>,
}

/// Direction of an entry on one account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// Money enters the ledger on this account.
    Credit,
    /// Money leaves the ledger from this account.
    Debit,
}

/// Command: post an external credit or debit on one account (a merchant's cash flow).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Client-chosen entry ID (idempotency key, same namespace as transfer IDs).
    pub entry_id: MovementId,
    /// The account.
    pub account_id: AccountId,
    /// Credit or debit.
    pub kind: EntryKind,
    /// Amount in minor units, strictly positive.
    pub amount_minor: i64,
    /// Free text, at most [`DESCRIPTION_BYTES_MAX`] bytes.
    pub description_opt: Option<String>,
}

/// What a reader sees of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// The account ID.
    pub account_id: AccountId,
    /// The account's currency.
    pub currency: Currency,
    /// Posted balance in minor units (held funds still included).
    pub balance_minor: i64,
    /// Sum of open holds in minor units.
    pub held_minor: i64,
    /// `balance_minor - held_minor`: what is not reserved. May go down to
    /// `-overdraft_limit_minor`, never below.
    pub available_minor: i64,
    /// How far below zero `available_minor` may go.
    pub overdraft_limit_minor: i64,
    /// Opaque client metadata.
    pub metadata_opt: Option<String>,
    /// When the account was opened.
    pub created_at: Timestamp,
    /// Number of movements (transfers and entries) ever applied to the account.
    pub num_movements: u64,
}

/// Status of a transfer or entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MovementStatus {
    /// The hold is placed and the transfer is being completed.
    Pending,
    /// Applied for good.
    Committed,
    /// Not applied; `rejection` says why.
    Rejected,
}

/// A transfer or entry as recorded by the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MovementBody {
    /// A transfer between two accounts.
    Transfer(Transfer),
    /// An external entry on one account.
    Entry(Entry),
}

impl MovementBody {
    /// The movement's ID.
    pub fn id(&self) -> &MovementId {
        match self {
            MovementBody::Transfer(t) => &t.transfer_id,
            MovementBody::Entry(e) => &e.entry_id,
        }
    }
}

/// What a reader sees of a transfer or entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovementView {
    /// The original request.
    pub body: MovementBody,
    /// Where it stands.
    pub status: MovementStatus,
    /// Why it was not applied, when `status` is `Rejected`.
    pub rejection_opt: Option<Rejection>,
    /// When the ledger first accepted it.
    pub created_at: Timestamp,
    /// For an entry: the account's posted balance right after it.
    pub balance_after_minor_opt: Option<i64>,
}

/// The outcome of a write: the movement, and whether this call only replayed an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posted {
    /// The movement as recorded (committed, or rejected for good).
    pub movement: MovementView,
    /// True when the ID had been used before with the same content: nothing new happened.
    pub replayed: bool,
}

/// Which way a movement touched an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// Money came in (transfer received or credit entry).
    In,
    /// Money went out (transfer sent or debit entry).
    Out,
}

/// One row of an account's movement history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovementRow {
    /// Position of this movement on the account, from 1; the pagination cursor.
    pub seq: u64,
    /// The transfer or entry ID.
    pub movement_id: MovementId,
    /// True for a transfer, false for an entry.
    pub is_transfer: bool,
    /// In or out.
    pub direction: Direction,
    /// The other account of a transfer.
    pub counterparty_opt: Option<AccountId>,
    /// Amount in minor units (positive).
    pub amount_minor: i64,
    /// Posted balance right after this movement.
    pub balance_after_minor: i64,
    /// When it was applied to this account.
    pub at: Timestamp,
    /// The movement's description.
    pub description_opt: Option<String>,
}

/// A page of an account's history, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovementsPage {
    /// Rows, newest first.
    pub rows: Vec<MovementRow>,
    /// Cursor for the next (older) page, when there is one in memory.
    pub next_cursor_opt: Option<u64>,
    /// True when older rows exist but have left the in-memory window (they are in the stream).
    pub older_rows_in_stream: bool,
}

/// One day of the daily consolidated report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyRow {
    /// The UTC day.
    pub day: Day,
    /// Posted balance at the start of the day.
    pub opening_minor: i64,
    /// Sum of money in (transfers received, credit entries); i128 because a client can drive
    /// a day's total past any balance.
    pub credits_minor: i128,
    /// Sum of money out (transfers sent, debit entries); i128 as `credits_minor`.
    pub debits_minor: i128,
    /// Number of movements that day.
    pub num_movements: u64,
    /// Posted balance at the end of the day (`opening + credits - debits`).
    pub closing_minor: i64,
}

/// The daily consolidated report of an account over a range of days (every day of the range).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyReport {
    /// The account.
    pub account_id: AccountId,
    /// Its currency.
    pub currency: Currency,
    /// One row per day of the range, oldest first.
    pub days: Vec<DailyRow>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_encoded_as_its_string_was_and_an_invalid_one_is_refused_when_decoded() {
        // Streams and snapshots written when IDs went through `String` decode unchanged.
        let as_string = postcard::to_allocvec(&"acct-1".to_string()).unwrap();
        let id = AccountId::new("acct-1").unwrap();
        assert_eq!(postcard::to_allocvec(&id).unwrap(), as_string);
        assert_eq!(postcard::from_bytes::<AccountId>(&as_string).unwrap(), id);
        let movement: MovementId = postcard::from_bytes(&as_string).unwrap();
        assert_eq!(movement.as_str(), "acct-1");
        let bad = postcard::to_allocvec(&"not an id".to_string()).unwrap();
        let refused = postcard::from_bytes::<AccountId>(&bad).unwrap_err();
        assert!(refused.to_string().contains("Deserialization"), "{refused}");
        assert!(postcard::from_bytes::<MovementId>(
            &postcard::to_allocvec(&String::new()).unwrap()
        )
        .is_err());
    }

    #[test]
    fn short_ids_are_inline_and_long_ones_round_trip_through_the_heap() {
        // A map bucket, a history row and a transfer hold IDs by value: 24 bytes each, with or
        // without `Option`.
        assert_eq!(std::mem::size_of::<AccountId>(), 24);
        assert_eq!(std::mem::size_of::<Option<MovementId>>(), 24);
        let short = "a".repeat(ID_INLINE_BYTES_MAX);
        assert!(!AccountId::new(&short).unwrap().0.is_heap_allocated());
        let long = "b".repeat(ID_BYTES_MAX);
        let id = MovementId::new(&long).unwrap();
        assert!(id.0.is_heap_allocated());
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(
            postcard::from_bytes::<MovementId>(&bytes).unwrap().as_str(),
            long
        );
        assert_eq!(id.clone(), id);
        assert!(AccountId::new(&short).unwrap() < AccountId::new(&long).unwrap());
    }
}
