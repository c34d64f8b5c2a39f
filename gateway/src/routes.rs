//! Handlers of the HTTP API: validate at the edge, call the ledger, shape the answer.
//!
//! Every handler validates the whole request before it calls the ledger, so bad input never
//! reaches it and never changes anything. Identifiers must be 1–64 characters of
//! `A-Za-z0-9._:-`; amounts are decimal strings in the currency's scale (see
//! [`crate::format`]). Writes are idempotent by ID (see `docs/api.md`): a replay answers 200
//! with the original outcome and the header `Idempotent-Replayed: true`.

use std::{borrow::Cow, sync::Arc};

use axum::{
    body::Body,
    extract::{FromRequestParts, State},
    http::{header, request::Parts, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use saldo_engine::types::{
    AccountId, Currency, Day, Entry, MovementBody, MovementId, MovementStatus, OpenAccount, Posted,
    Transfer, DESCRIPTION_BYTES_MAX,
};
use serde::{Deserialize, Serialize};
use tracing::Span;

use crate::{
    api::{self, *},
    auth::Principal,
    error::ApiError,
    extract::{ApiPath, ApiQuery, IdempotencyKey, JsonBody},
    format::{parse_amount_minor, parse_minor, AmountError},
    limits::{
        DAILY_RANGE_DAYS_MAX, JSON_ANSWER_BYTES_INITIAL, METADATA_BYTES_MAX,
        MOVEMENTS_PAGE_DEFAULT, MOVEMENTS_PAGE_MAX, TRANSFER_BATCH_MAX,
    },
    metrics::METRICS,
    state::AppState,
};

/// Header set on answers that replay an earlier outcome of the same ID.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The authenticated caller of a `/v1` request: under `--auth jwt` the principal the admission
/// middleware put in the request's extensions, under `--auth none` the one unrestricted
/// principal (the middleware inserts nothing then: one allocation less per request).
pub struct Caller(pub Arc<Principal>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let auth = &state.shared().auth;
        if !auth.is_enabled() {
            return Ok(Caller(auth.unrestricted()));
        }
        // The middleware inserts the principal on every matched /v1 route; its absence is a
        // wiring bug.
        parts
            .extensions
            .get::<Arc<Principal>>()
            .cloned()
            .map(Caller)
            .ok_or(ApiError::Internal)
    }
}

/// Returns a JSON answer: the body serialized once, straight into the buffer the response
/// sends (sized for a transfer's answer, so it rarely grows), and the content type set once.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut bytes = Vec::with_capacity(JSON_ANSWER_BYTES_INITIAL);
    match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => {
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "response failed to serialize");
            ApiError::Internal.into_response()
        }
    }
}

/// Names a field of the request, or of batch item `index_opt`.
fn field(index_opt: Option<usize>, name: &'static str) -> Cow<'static, str> {
    match index_opt {
        None => Cow::Borrowed(name),
        Some(i) => Cow::Owned(format!("transfers[{i}].{name}")),
    }
}

fn account_id(
    index_opt: Option<usize>,
    name: &'static str,
    s: &str,
) -> Result<AccountId, ApiError> {
    AccountId::new(s).map_err(|_| {
        ApiError::invalid(
            field(index_opt, name),
            "must be 1-64 characters of A-Za-z0-9._:-",
        )
    })
}

fn movement_id(
    index_opt: Option<usize>,
    name: &'static str,
    s: &str,
) -> Result<MovementId, ApiError> {
    MovementId::new(s).map_err(|_| {
        ApiError::invalid(
            field(index_opt, name),
            "must be 1-64 characters of A-Za-z0-9._:-",
        )
    })
}

fn currency(index_opt: Option<usize>, s: &str) -> Result<Currency, ApiError> {
    Currency::new(s).ok_or_else(|| {
        ApiError::invalid(
            field(index_opt, "currency"),
            "must be an ISO 4217 code such as BRL",
        )
    })
}

fn amount_error(f: Cow<'static, str>, e: AmountError, scale: u32) -> ApiError {
    ApiError::InvalidAmount {
        detail: format!("{f} {}", e.describe(scale)).into(),
        field: f,
    }
}

fn description(index_opt: Option<usize>, d_opt: Option<&str>) -> Result<Option<String>, ApiError> {
    match d_opt {
        Some(s) if s.len() > DESCRIPTION_BYTES_MAX => Err(ApiError::invalid(
            field(index_opt, "description"),
            format!("must be at most {DESCRIPTION_BYTES_MAX} bytes"),
        )),
        _ => Ok(d_opt.map(str::to_owned)),
    }
}

/// Returns the ID of a write: the body's `id`, else the `Idempotency-Key` header; both must
/// agree when both are given.
fn write_id(
    index_opt: Option<usize>,
    body_id_opt: Option<&str>,
    key_opt: Option<&str>,
) -> Result<MovementId, ApiError> {
    match (body_id_opt, key_opt) {
        (Some(id), Some(key)) if id != key => Err(ApiError::invalid(
            field(index_opt, "id"),
            "differs from the Idempotency-Key header; send one or make them equal",
        )),
        (Some(id), _) => movement_id(index_opt, "id", id),
        (None, Some(key)) => movement_id(index_opt, "id", key),
        (None, None) => Err(ApiError::invalid(
            field(index_opt, "id"),
            "is required (or send an Idempotency-Key header)",
        )),
    }
}

/// Returns the engine command of a transfer request, fully validated.
fn transfer_command(
    req: &TransferRequest<'_>,
    key_opt: Option<&str>,
    index_opt: Option<usize>,
) -> Result<Transfer, ApiError> {
    let transfer_id = write_id(index_opt, req.id.as_deref(), key_opt)?;
    let debit_account_id = account_id(index_opt, "from", &req.from)?;
    let credit_account_id = account_id(index_opt, "to", &req.to)?;
    let currency = currency(index_opt, &req.currency)?;
    let scale = currency.scale();
    let amount_minor = parse_amount_minor(&req.amount.0, scale)
        .map_err(|e| amount_error(field(index_opt, "amount"), e, scale))?;
    let description_opt = description(index_opt, req.description.as_deref())?;
    Ok(Transfer {
        transfer_id,
        debit_account_id,
        credit_account_id,
        amount_minor,
        currency,
        description_opt,
    })
}

/// Returns the status and replay header of a write's outcome, or its rejection.
fn posted_status(posted: &Posted) -> Result<(StatusCode, bool), ApiError> {
    if let Some(e) = api::rejected_movement_error(&posted.movement) {
        return Err(e);
    }
    let status = match (posted.replayed, posted.movement.status) {
        (true, _) => StatusCode::OK,
        (false, MovementStatus::Pending) => StatusCode::ACCEPTED,
        (false, _) => StatusCode::CREATED,
    };
    Ok((status, posted.replayed))
}

fn with_replay_header(mut response: Response, replayed: bool) -> Response {
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// `POST /v1/accounts`: opens an account (201), or finds the identical one (200).
pub async fn open_account(
    State(state): State<AppState>,
    Caller(caller): Caller,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let req: OpenAccountRequest = body.parse()?;
    let account_id = account_id(None, "id", &req.id)?;
    Span::current().record("id", &*req.id);
    let currency = currency(None, &req.currency)?;
    let scale = currency.scale();
    let overdraft_limit_minor = match &req.overdraft_limit {
        None => 0,
        Some(s) => parse_minor(&s.0, scale)
            .map_err(|e| amount_error("overdraft_limit".into(), e, scale))?,
    };
    let metadata_opt = match &req.metadata {
        None => None,
        Some(m) => {
            let s = serde_json::to_string(m).map_err(|_| ApiError::Internal)?;
            if s.len() > METADATA_BYTES_MAX {
                return Err(ApiError::invalid(
                    "metadata",
                    format!("must be at most {METADATA_BYTES_MAX} bytes of JSON"),
                ));
            }
            Some(s)
        }
    };
    caller.require_account(&req.id)?;
    let cmd = OpenAccount {
        account_id,
        currency,
        overdraft_limit_minor,
        metadata_opt,
    };
    let (view, created) = open_account_on_ledger(state.ledger()?.clone(), cmd).await?;
    state.remember_currency(&view.account_id, view.currency);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = json(status, &AccountResponse::from(&view));
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/accounts/{}", view.account_id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Runs `Ledger::open_account`.
async fn open_account_on_ledger(
    ledger: saldo_engine::Ledger,
    cmd: OpenAccount,
) -> Result<(saldo_engine::types::AccountView, bool), ApiError> {
    Ok(ledger.open_account(cmd).await?)
}

/// `GET /v1/accounts/{id}`.
pub async fn get_account(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let account_id = account_id(None, "id", &id)?;
    Span::current().record("id", id.as_str());
    caller.require_account(&id)?;
    let view = state.ledger()?.account(&account_id).await?;
    state.remember_currency(&view.account_id, view.currency);
    Ok(json(StatusCode::OK, &AccountResponse::from(&view)))
}

/// `POST /v1/transfers`: moves money between two accounts, idempotent by ID.
pub async fn transfer(
    State(state): State<AppState>,
    Caller(caller): Caller,
    key: IdempotencyKey,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let req: TransferRequest = body.parse()?;
    let key_opt = key.get()?;
    let cmd = transfer_command(&req, key_opt, None)?;
    Span::current().record("id", cmd.transfer_id.as_str());
    caller.require_account(cmd.debit_account_id.as_str())?;
    let posted = state.ledger()?.transfer(cmd).await?;
    let (status, replayed) = posted_status(&posted)?;
    tracing::debug!(status = status.as_u16(), replayed, "transfer answered");
    let body = api::transfer_response(&posted.movement).ok_or(ApiError::Internal)?;
    Ok(with_replay_header(json(status, &body), replayed))
}

/// `POST /v1/transfers/batch`: many transfers, one result each, optionally atomic.
pub async fn transfer_batch(
    State(state): State<AppState>,
    Caller(caller): Caller,
    key: IdempotencyKey,
    body: JsonBody<true>,
) -> Result<Response, ApiError> {
    let req: BatchRequest = body.parse()?;
    if key.is_present() {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "is not accepted on batches: each transfer carries its own id",
        ));
    }
    let n = req.transfers.len();
    if n == 0 || n > TRANSFER_BATCH_MAX {
        return Err(ApiError::invalid(
            "transfers",
            format!("must hold 1 to {TRANSFER_BATCH_MAX} transfers, got {n}"),
        ));
    }
    METRICS.count_batch_transfers(n);
    let ledger = state.ledger()?;
    let mut results: Vec<Option<BatchResult>> = vec![None; n];
    let outcomes: Vec<Result<Posted, saldo_engine::types::LedgerError>>;
    let mut cmds = Vec::with_capacity(n);
    let mut positions = Vec::with_capacity(n);
    for (i, item) in req.transfers.iter().enumerate() {
        let checked = transfer_command(item, None, Some(i)).and_then(|cmd| {
            caller.require_account(cmd.debit_account_id.as_str())?;
            Ok(cmd)
        });
        match checked {
            Ok(cmd) => {
                positions.push(i);
                cmds.push(cmd);
            }
            Err(e) => results[i] = Some(error_result(item.id.as_deref(), e)),
        }
    }
    if req.atomic && positions.len() < n {
        // One item is invalid: an atomic batch applies nothing.
        for &i in &positions {
            let e = ApiError::Rejected(saldo_engine::types::Rejection::BatchAborted);
            results[i] = Some(error_result(req.transfers[i].id.as_deref(), e));
        }
    } else if !cmds.is_empty() {
        // Kept until the answer is serialized: the results borrow from it.
        outcomes = ledger.transfer_batch(cmds, req.atomic).await;
        assert_eq!(
            outcomes.len(),
            positions.len(),
            "the ledger answers once per transfer"
        );
        for (outcome, i) in outcomes.iter().zip(positions) {
            results[i] = Some(batch_result(req.transfers[i].id.as_deref(), outcome));
        }
    }
    let results = results
        .into_iter()
        .map(|r| r.expect("every position was filled above"))
        .collect();
    Ok(json(
        StatusCode::OK,
        &BatchResponse {
            atomic: req.atomic,
            results,
        },
    ))
}

fn error_result(id_opt: Option<&str>, e: ApiError) -> BatchResult<'_> {
    let problem = e.problem();
    METRICS.count_error(&problem.code);
    BatchResult {
        id: id_opt.map(Cow::Borrowed),
        status: problem.status,
        transfer: None,
        error: Some(problem),
    }
}

fn batch_result<'a>(
    id_opt: Option<&'a str>,
    outcome: &'a Result<Posted, saldo_engine::types::LedgerError>,
) -> BatchResult<'a> {
    let checked = match outcome {
        Ok(posted) => posted_status(posted).and_then(|(status, _)| {
            let body = api::transfer_response(&posted.movement).ok_or(ApiError::Internal)?;
            Ok((status, body))
        }),
        Err(e) => Err(ApiError::from(e.clone())),
    };
    match checked {
        Ok((status, body)) => BatchResult {
            id: id_opt.map(Cow::Borrowed),
            status: status.as_u16(),
            transfer: Some(body),
            error: None,
        },
        Err(e) => error_result(id_opt, e),
    }
}

/// `GET /v1/transfers/{id}`.
pub async fn get_transfer(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    get_transfer_by_id(&state, &caller, &id).await
}

/// `GET /v1/transfers/batch`: the transfer whose ID is `batch` (the path is shadowed by the
/// batch route).
pub async fn get_transfer_named_batch(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    get_transfer_by_id(&state, &caller, "batch").await
}

async fn get_transfer_by_id(
    state: &AppState,
    caller: &Principal,
    id: &str,
) -> Result<Response, ApiError> {
    let movement_id = movement_id(None, "id", id)?;
    Span::current().record("id", id);
    let view = state.ledger()?.movement(&movement_id).await?;
    let MovementBody::Transfer(t) = &view.body else {
        return Err(saldo_engine::types::Rejection::MovementNotFound.into());
    };
    if !caller.may_access(t.debit_account_id.as_str())
        && !caller.may_access(t.credit_account_id.as_str())
    {
        // Another tenant's transfer: the caller learns nothing of it, not even that the ID
        // is in use (a 403 would say so).
        return Err(saldo_engine::types::Rejection::MovementNotFound.into());
    }
    let body = api::transfer_response(&view).ok_or(ApiError::Internal)?;
    Ok(json(StatusCode::OK, &body))
}

/// `POST /v1/accounts/{id}/entries`: a credit or debit on one account, idempotent by ID.
pub async fn post_entry(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath(account): ApiPath<String>,
    key: IdempotencyKey,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let req: EntryRequest = body.parse()?;
    let account_id = account_id(None, "account_id", &account)?;
    let key_opt = key.get()?;
    let entry_id = write_id(None, req.id.as_deref(), key_opt)?;
    Span::current().record("id", entry_id.as_str());
    // The grammar, sign and zero checks need no currency; the scale check does.
    parse_amount_minor(&req.amount.0, 4).map_err(|e| amount_error("amount".into(), e, 4))?;
    let description_opt = description(None, req.description.as_deref())?;
    caller.require_account(&account)?;
    let currency = state.currency_of(&account_id).await?;
    let scale = currency.scale();
    let amount_minor = parse_amount_minor(&req.amount.0, scale)
        .map_err(|e| amount_error("amount".into(), e, scale))?;
    let cmd = Entry {
        entry_id,
        account_id,
        kind: req.entry_type.into(),
        amount_minor,
        description_opt,
    };
    let posted = state.ledger()?.post_entry(cmd).await?;
    let (status, replayed) = posted_status(&posted)?;
    tracing::debug!(status = status.as_u16(), replayed, "entry answered");
    let body = api::entry_response(&posted.movement, currency).ok_or(ApiError::Internal)?;
    Ok(with_replay_header(json(status, &body), replayed))
}

/// `GET /v1/accounts/{id}/entries/{entry_id}`.
pub async fn get_entry(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath((account, entry)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let account_id = account_id(None, "account_id", &account)?;
    let entry_id = movement_id(None, "entry_id", &entry)?;
    Span::current().record("id", entry.as_str());
    caller.require_account(&account)?;
    let currency = state.currency_of(&account_id).await?;
    let view = match state.ledger()?.movement(&entry_id).await {
        Ok(view) => view,
        Err(saldo_engine::types::LedgerError::Rejected(_)) => return Err(ApiError::EntryNotFound),
        Err(e) => return Err(e.into()),
    };
    match &view.body {
        MovementBody::Entry(e) if e.account_id == account_id => {
            let body = api::entry_response(&view, currency).ok_or(ApiError::Internal)?;
            Ok(json(StatusCode::OK, &body))
        }
        _ => Err(ApiError::EntryNotFound),
    }
}

/// Query of `GET /v1/accounts/{id}/movements`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovementsQuery {
    /// Rows per page, 1 to `MOVEMENTS_PAGE_MAX`.
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/accounts/{id}/movements?limit=&cursor=`: newest first.
pub async fn movements(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath(account): ApiPath<String>,
    ApiQuery(query): ApiQuery<MovementsQuery>,
) -> Result<Response, ApiError> {
    let account_id = account_id(None, "account_id", &account)?;
    let limit = match query.limit.as_deref() {
        None => MOVEMENTS_PAGE_DEFAULT,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MOVEMENTS_PAGE_MAX).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format!("must be an integer from 1 to {MOVEMENTS_PAGE_MAX}"),
                ))
            }
        },
    };
    let cursor_opt = match query.cursor.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::invalid("cursor", "must be a next_cursor value from a previous page")
        })?),
    };
    caller.require_account(&account)?;
    let ledger = state.ledger()?;
    let page = ledger.movements(&account_id, limit, cursor_opt).await?;
    let currency = state.currency_of(&account_id).await?;
    Ok(json(
        StatusCode::OK,
        &api::movements_response(&account, currency, &page),
    ))
}

/// Query of `GET /v1/accounts/{id}/daily`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailyQuery {
    /// First day, `YYYY-MM-DD`.
    from: String,
    /// Last day (inclusive), `YYYY-MM-DD`.
    to: String,
}

/// `GET /v1/accounts/{id}/daily?from=&to=`: the daily consolidated report.
pub async fn daily(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiPath(account): ApiPath<String>,
    ApiQuery(query): ApiQuery<DailyQuery>,
) -> Result<Response, ApiError> {
    let account_id = account_id(None, "account_id", &account)?;
    let day = |name: &'static str, s: &str| {
        Day::parse(s).ok_or_else(|| ApiError::invalid(name, "must be a date YYYY-MM-DD"))
    };
    let from = day("from", &query.from)?;
    let to = day("to", &query.to)?;
    if to < from {
        return Err(ApiError::invalid("to", "must not be before from"));
    }
    if to.0 - from.0 >= DAILY_RANGE_DAYS_MAX {
        return Err(ApiError::invalid(
            "to",
            format!("the range is at most {DAILY_RANGE_DAYS_MAX} days"),
        ));
    }
    caller.require_account(&account)?;
    let report = state.ledger()?.daily(&account_id, from, to).await?;
    state.remember_currency(&account_id, report.currency);
    Ok(json(StatusCode::OK, &api::daily_response(&report)))
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> Response {
    json(
        StatusCode::OK,
        &StatusResponse {
            status: "ok".into(),
        },
    )
}

/// `GET /readyz`: every shard restored and the stream writable.
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.ledger_opt() {
        Some(ledger) if ledger.is_ready() => Ok(json(
            StatusCode::OK,
            &StatusResponse {
                status: "ready".into(),
            },
        )),
        Some(ledger) => Err(ApiError::Unavailable {
            detail: match ledger.failed_shards().first() {
                Some((shard, cause)) => format!(
                    "shard {shard} cannot make writes durable: {cause}; the node exits for a \
                     restart once its stream takes writes again (docs/runbook.md)"
                )
                .into(),
                None => "the ledger is not ready".into(),
            },
        }),
        None => Err(ApiError::Unavailable {
            detail: "the ledger is starting".into(),
        }),
    }
}

/// `GET /v1/admin/shards/{shard}/checksum` (scope `ledger:admin`): the shard's durable
/// position and a digest of its accounts at that position, for `saldo shard verify --node`.
pub async fn shard_checksum(
    State(state): State<AppState>,
    axum::extract::Path(shard): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let ledger = state.ledger()?;
    let shard: u32 = shard
        .parse()
        .ok()
        .filter(|&s| s < ledger.num_shards())
        .ok_or_else(|| {
            ApiError::invalid(
                "shard",
                format!(
                    "shard must be an integer below {} (this node's shard count)",
                    ledger.num_shards()
                ),
            )
        })?;
    match ledger.shard_checksum(shard).await {
        Ok(Some((lsn, digest))) => Ok(axum::Json(serde_json::json!({
            "shard": shard,
            "lsn": lsn,
            "checksum": hex::encode(digest),
        }))
        .into_response()),
        Ok(None) => Err(ApiError::Unavailable {
            detail: "the shard stayed busy; retry".into(),
        }),
        Err(e) => Err(ApiError::Unavailable {
            detail: format!("checksum failed: {e}").into(),
        }),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let stats_opt = state.ledger_opt().map(|l| l.stats());
    let text = METRICS.render(stats_opt.as_ref(), state.in_flight());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        crate::openapi::document_bytes(),
    )
        .into_response()
}

/// Fallback of unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}

/// Fallback of known routes called with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
