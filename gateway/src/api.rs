//! The wire format: request and response bodies of the HTTP API (DTOs), and their conversion
//! from the engine's views.
//!
//! Field names are the public contract (`docs/api.md`, `/openapi.json`); amounts are decimal
//! strings in the currency's minor-unit scale, times are RFC 3339 UTC. Requests reject unknown
//! fields. The load generator may import these types.

use std::{borrow::Cow, fmt};

use saldo_engine::types::{
    AccountView, Currency, DailyReport, Direction, EntryKind, MovementBody, MovementRow,
    MovementStatus, MovementView, MovementsPage, Rejection,
};
use serde::{de, Deserialize, Deserializer, Serialize};

use crate::{
    error::{ApiError, Problem},
    format::{date, rfc3339, AmountText},
};

/// A string of a request body: borrowed from the body when the JSON string has no escape
/// sequence (the common case, so parsing copies nothing), owned when it had to be unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'a> From<&'a str> for Text<'a> {
    fn from(s: &'a str) -> Self {
        Text(Cow::Borrowed(s))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // "a string" is what serde says of `String`: the 400 answers read as before.
        deserializer
            .deserialize_str(CowVisitor("a string"))
            .map(Text)
    }
}

/// Deserializes a JSON string as a `Cow`, borrowed when it can be; `.0` is what a value of
/// another type is said to fall short of.
struct CowVisitor(&'static str);

impl<'de> de::Visitor<'de> for CowVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// An amount as the API carries it: a JSON string of decimal digits. A JSON number is refused
/// (400) so that no client ever loses a cent to binary floating point on its side. Borrowed
/// from the request body like [`Text`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct DecimalString<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for DecimalString<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_str(CowVisitor("a decimal string such as \"12.50\""))
            .map(DecimalString)
    }
}

impl<'a> From<&'a str> for DecimalString<'a> {
    fn from(s: &'a str) -> Self {
        DecimalString(Cow::Borrowed(s))
    }
}

/// Body of `POST /v1/accounts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAccountRequest<'a> {
    /// Client-chosen account ID: 1–64 characters of `A-Za-z0-9._:-`.
    #[serde(borrow)]
    pub id: Text<'a>,
    /// ISO 4217 code, upper case (`BRL`).
    #[serde(borrow)]
    pub currency: Text<'a>,
    /// How far below zero the available balance may go (default `"0"`).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub overdraft_limit: Option<DecimalString<'a>>,
    /// Opaque client data (a JSON object), stored and returned as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An account as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountResponse {
    /// The account ID.
    pub id: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Posted balance (held funds included).
    pub balance: AmountText,
    /// Balance minus open holds; what can be spent (down to `-overdraft_limit`).
    pub available: AmountText,
    /// Sum of open holds (transfers in progress).
    pub held: AmountText,
    /// How far below zero `available` may go.
    pub overdraft_limit: AmountText,
    /// Client metadata, `null` when none was given.
    pub metadata: Option<serde_json::Value>,
    /// Number of transfers and entries ever applied to the account.
    pub movement_count: u64,
    /// When the account was opened (RFC 3339 UTC).
    pub created_at: String,
}

impl From<&AccountView> for AccountResponse {
    fn from(v: &AccountView) -> Self {
        let scale = v.currency.scale();
        AccountResponse {
            id: v.account_id.to_string(),
            currency: v.currency.code().to_owned(),
            balance: AmountText::new(v.balance_minor, scale),
            available: AmountText::new(v.available_minor, scale),
            held: AmountText::new(v.held_minor, scale),
            overdraft_limit: AmountText::new(v.overdraft_limit_minor, scale),
            // The gateway stores only what it serialized itself, so it parses back.
            metadata: v
                .metadata_opt
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok()),
            movement_count: v.num_movements,
            created_at: rfc3339(v.created_at),
        }
    }
}

/// Body of `POST /v1/transfers` and one item of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest<'a> {
    /// Client-chosen transfer ID (the idempotency key). May be omitted when an
    /// `Idempotency-Key` header is sent (single transfers only).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub id: Option<Text<'a>>,
    /// The source account.
    #[serde(borrow)]
    pub from: Text<'a>,
    /// The destination account.
    #[serde(borrow)]
    pub to: Text<'a>,
    /// Decimal string, strictly positive, at most the currency's decimals.
    #[serde(borrow)]
    pub amount: DecimalString<'a>,
    /// ISO 4217 code; both accounts must hold this currency.
    #[serde(borrow)]
    pub currency: Text<'a>,
    /// Free text, at most 256 bytes.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub description: Option<Text<'a>>,
}

/// Status of a transfer or entry as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusDto {
    /// Applied for good.
    Committed,
    /// Being completed (a hold is placed).
    Pending,
    /// Not applied; `error` says why.
    Rejected,
}

impl From<MovementStatus> for StatusDto {
    fn from(s: MovementStatus) -> Self {
        match s {
            MovementStatus::Committed => StatusDto::Committed,
            MovementStatus::Pending => StatusDto::Pending,
            MovementStatus::Rejected => StatusDto::Rejected,
        }
    }
}

/// A transfer as the API shows it. Its strings borrow from the engine's view, so an answer is
/// serialized without copying them first; `TransferResponse<'static>` deserializes (owned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferResponse<'a> {
    /// The transfer ID.
    pub id: Cow<'a, str>,
    /// `committed`, `pending` or `rejected`.
    pub status: StatusDto,
    /// The source account.
    pub from: Cow<'a, str>,
    /// The destination account.
    pub to: Cow<'a, str>,
    /// The amount.
    pub amount: AmountText,
    /// ISO 4217 code.
    pub currency: Cow<'a, str>,
    /// Free text, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Cow<'a, str>>,
    /// When the ledger accepted it (RFC 3339 UTC).
    pub created_at: String,
    /// For a rejected transfer: the stable code of the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<Cow<'a, str>>,
}

/// Entry direction as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    /// Money enters the ledger on the account.
    Credit,
    /// Money leaves the ledger from the account.
    Debit,
}

impl From<EntryType> for EntryKind {
    fn from(t: EntryType) -> Self {
        match t {
            EntryType::Credit => EntryKind::Credit,
            EntryType::Debit => EntryKind::Debit,
        }
    }
}

impl From<EntryKind> for EntryType {
    fn from(k: EntryKind) -> Self {
        match k {
            EntryKind::Credit => EntryType::Credit,
            EntryKind::Debit => EntryType::Debit,
        }
    }
}

/// Body of `POST /v1/accounts/{id}/entries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryRequest<'a> {
    /// Client-chosen entry ID (same namespace as transfer IDs). May be omitted when an
    /// `Idempotency-Key` header is sent.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub id: Option<Text<'a>>,
    /// `credit` or `debit`.
    #[serde(rename = "type")]
    pub entry_type: EntryType,
    /// Decimal string in the account's currency, strictly positive.
    #[serde(borrow)]
    pub amount: DecimalString<'a>,
    /// Free text, at most 256 bytes.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub description: Option<Text<'a>>,
}

/// An entry as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryResponse {
    /// The entry ID.
    pub id: String,
    /// The account.
    pub account: String,
    /// `credit` or `debit`.
    #[serde(rename = "type")]
    pub entry_type: EntryType,
    /// `committed`, `pending` or `rejected`.
    pub status: StatusDto,
    /// The amount.
    pub amount: AmountText,
    /// The account's currency.
    pub currency: String,
    /// Free text, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The account's posted balance right after this entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_after: Option<AmountText>,
    /// When the ledger accepted it (RFC 3339 UTC).
    pub created_at: String,
    /// For a rejected entry: the stable code of the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// Body of `POST /v1/transfers/batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest<'a> {
    /// The transfers, each with its own `id`; at most `TRANSFER_BATCH_MAX`.
    #[serde(borrow)]
    pub transfers: Vec<TransferRequest<'a>>,
    /// When true, either every transfer commits or none does.
    #[serde(default)]
    pub atomic: bool,
}

/// One result of a batch, in the order of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult<'a> {
    /// The transfer ID, when the item had a valid one.
    pub id: Option<Cow<'a, str>>,
    /// The HTTP status this transfer would have had on its own (201, 200 for a replay, 4xx).
    pub status: u16,
    /// The transfer, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferResponse<'a>>,
    /// The problem, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

/// Answer of `POST /v1/transfers/batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse<'a> {
    /// Whether the batch was atomic.
    pub atomic: bool,
    /// One result per transfer, in order.
    pub results: Vec<BatchResult<'a>>,
}

/// One row of an account's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovementDto {
    /// The transfer or entry ID.
    pub id: String,
    /// `transfer` or `entry`.
    pub kind: Cow<'static, str>,
    /// `in` (money came in) or `out`.
    pub direction: Cow<'static, str>,
    /// The other account of a transfer.
    pub counterparty: Option<String>,
    /// The amount (positive).
    pub amount: AmountText,
    /// The account's posted balance right after this movement.
    pub balance_after: AmountText,
    /// Free text, when given.
    pub description: Option<String>,
    /// When it was applied to this account (RFC 3339 UTC).
    pub created_at: String,
}

/// Answer of `GET /v1/accounts/{id}/movements`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovementsResponse {
    /// The account.
    pub account: String,
    /// Its currency.
    pub currency: String,
    /// Newest first.
    pub movements: Vec<MovementDto>,
    /// Pass as `cursor` to get the next (older) page; `null` on the last page in memory.
    pub next_cursor: Option<String>,
    /// True when older movements exist beyond the in-memory window (they are in the stream).
    pub older_movements_in_stream: bool,
}

/// One day of the daily consolidated report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayDto {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Posted balance at the start of the day.
    pub opening_balance: AmountText,
    /// Money in that day.
    pub credits: AmountText,
    /// Money out that day.
    pub debits: AmountText,
    /// Number of movements that day.
    pub movements: u64,
    /// Posted balance at the end of the day.
    pub closing_balance: AmountText,
}

/// Answer of `GET /v1/accounts/{id}/daily`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyResponse {
    /// The account.
    pub account: String,
    /// Its currency.
    pub currency: String,
    /// One row per day of the range, oldest first.
    pub days: Vec<DayDto>,
}

/// Answer of `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// `ok` or `ready`.
    pub status: String,
}

/// Returns the transfer view of a movement, or `None` when it is an entry.
pub fn transfer_response(m: &MovementView) -> Option<TransferResponse<'_>> {
    let MovementBody::Transfer(t) = &m.body else {
        return None;
    };
    Some(TransferResponse {
        id: Cow::Borrowed(t.transfer_id.as_str()),
        status: m.status.into(),
        from: Cow::Borrowed(t.debit_account_id.as_str()),
        to: Cow::Borrowed(t.credit_account_id.as_str()),
        amount: AmountText::new(t.amount_minor, t.currency.scale()),
        currency: Cow::Borrowed(t.currency.code()),
        description: t.description_opt.as_deref().map(Cow::Borrowed),
        created_at: rfc3339(m.created_at),
        error_code: m.rejection_opt.as_ref().map(|r| Cow::Borrowed(r.code())),
    })
}

/// Returns the entry view of a movement in its account's `currency`, or `None` for a transfer.
pub fn entry_response(m: &MovementView, currency: Currency) -> Option<EntryResponse> {
    let MovementBody::Entry(e) = &m.body else {
        return None;
    };
    let scale = currency.scale();
    Some(EntryResponse {
        id: e.entry_id.to_string(),
        account: e.account_id.to_string(),
        entry_type: e.kind.into(),
        status: m.status.into(),
        amount: AmountText::new(e.amount_minor, scale),
        currency: currency.code().to_owned(),
        description: e.description_opt.clone(),
        balance_after: m.balance_after_minor_opt.map(|b| AmountText::new(b, scale)),
        created_at: rfc3339(m.created_at),
        error_code: m.rejection_opt.as_ref().map(|r| r.code().to_owned()),
    })
}

/// Returns the rejection of a movement recorded as rejected, as an error answer.
pub fn rejected_movement_error(m: &MovementView) -> Option<ApiError> {
    match m.status {
        MovementStatus::Rejected => Some(ApiError::Rejected(
            m.rejection_opt.clone().unwrap_or(Rejection::InvalidAmount),
        )),
        _ => None,
    }
}

/// Returns the API form of one history row.
pub fn movement_dto(row: &MovementRow, scale: u32) -> MovementDto {
    MovementDto {
        id: row.movement_id.to_string(),
        kind: Cow::Borrowed(if row.is_transfer { "transfer" } else { "entry" }),
        direction: match row.direction {
            Direction::In => "in",
            Direction::Out => "out",
        }
        .into(),
        counterparty: row.counterparty_opt.as_ref().map(|a| a.to_string()),
        amount: AmountText::new(row.amount_minor, scale),
        balance_after: AmountText::new(row.balance_after_minor, scale),
        description: row.description_opt.clone(),
        created_at: rfc3339(row.at),
    }
}

/// Returns the API form of a page of history.
pub fn movements_response(
    account: &str,
    currency: Currency,
    page: &MovementsPage,
) -> MovementsResponse {
    let scale = currency.scale();
    MovementsResponse {
        account: account.to_owned(),
        currency: currency.code().to_owned(),
        movements: page.rows.iter().map(|r| movement_dto(r, scale)).collect(),
        next_cursor: page.next_cursor_opt.map(|c| c.to_string()),
        older_movements_in_stream: page.older_rows_in_stream,
    }
}

/// Returns the API form of a daily report.
pub fn daily_response(report: &DailyReport) -> DailyResponse {
    let scale = report.currency.scale();
    DailyResponse {
        account: report.account_id.to_string(),
        currency: report.currency.code().to_owned(),
        days: report
            .days
            .iter()
            .map(|d| DayDto {
                date: date(d.day),
                opening_balance: AmountText::new(d.opening_minor, scale),
                credits: AmountText::new(d.credits_minor, scale),
                debits: AmountText::new(d.debits_minor, scale),
                movements: d.num_movements,
                closing_balance: AmountText::new(d.closing_minor, scale),
            })
            .collect(),
    }
}
