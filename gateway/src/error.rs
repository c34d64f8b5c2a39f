//! Errors as the API shows them: `application/problem+json` (RFC 9457) with a stable `code`.
//!
//! [`ApiError`] is the only error type handlers return. Its one `IntoResponse` impl maps
//! business rejections ([`Rejection`]) to 4xx, request faults to 400/401/403/404/405/413/415/429
//! and infrastructure conditions to 503 (with `Retry-After`) or 500. Every answer that is not a
//! success goes through here, so every error body has the same shape:
//!
//! ```json
//! {"type":"urn:saldo:problem:insufficient_funds","title":"Insufficient funds","status":422,
//!  "detail":"…","code":"insufficient_funds"}
//! ```
//! plus `field` (400 and 422 answers about one request field) or `fields` (409 `id_conflict`).

use std::borrow::Cow;

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use saldo_engine::types::{LedgerError, Rejection};
use serde::{Deserialize, Serialize};

use crate::{limits::RETRY_AFTER_S_UNAVAILABLE, metrics};

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every `code` the API can answer with, in a fixed order (metrics index rejections by it, the
/// OpenAPI document lists it, a test checks both).
pub const CODES: &[&str] = &[
    "invalid_request",
    "unauthenticated",
    "forbidden",
    "tls_required",
    "not_found",
    "account_not_found",
    "transfer_not_found",
    "entry_not_found",
    "method_not_allowed",
    "id_conflict",
    "account_exists",
    "payload_too_large",
    "unsupported_media_type",
    "insufficient_funds",
    "currency_mismatch",
    "same_account",
    "invalid_amount",
    "batch_aborted",
    "balance_overflow",
    "rate_limited",
    "unavailable",
    "internal",
];

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the request is malformed (bad JSON, unknown field, wrong type, invalid ID, …).
    InvalidRequest {
        /// The request field at fault (`amount`, `transfers[3].id`, `Idempotency-Key`), if one.
        field_opt: Option<Cow<'static, str>>,
        /// What is wrong, in words.
        detail: Cow<'static, str>,
    },
    /// 422: an amount field is zero, negative, too precise, too large or not a number.
    InvalidAmount {
        /// The amount field at fault.
        field: Cow<'static, str>,
        /// What is wrong, in words.
        detail: Cow<'static, str>,
    },
    /// 401: no bearer token, or one that does not verify.
    Unauthenticated {
        /// Why the token was refused.
        detail: Cow<'static, str>,
    },
    /// 403: the token is valid but lacks a scope or the account is not one of its accounts.
    Forbidden {
        /// What was missing.
        detail: Cow<'static, str>,
    },
    /// 403 `tls_required`: with `--behind-tls-proxy`, the request did not come through a
    /// trusted proxy that says the client used HTTPS.
    TlsRequired,
    /// 404 `not_found`: no such route.
    RouteNotFound,
    /// 405: the route exists but not for this method.
    MethodNotAllowed,
    /// 404 `entry_not_found`: no entry with this ID on this account.
    EntryNotFound,
    /// 413: the body is over the route's limit.
    PayloadTooLarge {
        /// The limit of the route.
        limit_bytes: usize,
    },
    /// 415: the body is not declared as JSON.
    UnsupportedMediaType,
    /// 429: the client's token bucket is empty.
    RateLimited {
        /// Seconds until a request would be admitted.
        retry_after_s: u64,
    },
    /// A business rejection from the ledger (404, 409 or 422 by kind).
    Rejected(Rejection),
    /// 503: not ready, overloaded, timed out or the stream is failing; retry later.
    Unavailable {
        /// Why.
        detail: Cow<'static, str>,
    },
    /// 500: a bug. Logged with details; the client sees none.
    Internal,
}

impl ApiError {
    /// Returns a 400 `invalid_request` about `field`.
    pub fn invalid(
        field: impl Into<Cow<'static, str>>,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        ApiError::InvalidRequest {
            field_opt: Some(field.into()),
            detail: detail.into(),
        }
    }

    /// Returns the HTTP status, the stable code and the title of this error.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::InvalidRequest { .. } => {
                (S::BAD_REQUEST, "invalid_request", "Invalid request")
            }
            ApiError::InvalidAmount { .. } => {
                (S::UNPROCESSABLE_ENTITY, "invalid_amount", "Invalid amount")
            }
            ApiError::Unauthenticated { .. } => {
                (S::UNAUTHORIZED, "unauthenticated", "Unauthenticated")
            }
            ApiError::Forbidden { .. } => (S::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::TlsRequired => (S::FORBIDDEN, "tls_required", "TLS required"),
            ApiError::RouteNotFound => (S::NOT_FOUND, "not_found", "Not found"),
            ApiError::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            ),
            ApiError::EntryNotFound => (S::NOT_FOUND, "entry_not_found", "Entry not found"),
            ApiError::PayloadTooLarge { .. } => (
                S::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
            ),
            ApiError::UnsupportedMediaType => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            ApiError::RateLimited { .. } => (S::TOO_MANY_REQUESTS, "rate_limited", "Rate limited"),
            ApiError::Rejected(r) => rejection_parts(r),
            ApiError::Unavailable { .. } => (S::SERVICE_UNAVAILABLE, "unavailable", "Unavailable"),
            ApiError::Internal => (S::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        }
    }

    /// Returns the problem document of this error.
    pub fn problem(&self) -> Problem {
        let (status, code, title) = self.parts();
        let mut problem = Problem {
            problem_type: format!("urn:saldo:problem:{code}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: String::new(),
            code: code.to_owned(),
            field: None,
            fields: None,
        };
        problem.detail = match self {
            ApiError::InvalidRequest { field_opt, detail } => {
                problem.field = field_opt.as_ref().map(|f| f.to_string());
                detail.to_string()
            }
            ApiError::InvalidAmount { field, detail } => {
                problem.field = Some(field.to_string());
                detail.to_string()
            }
            ApiError::Unauthenticated { detail }
            | ApiError::Forbidden { detail }
            | ApiError::Unavailable { detail } => detail.to_string(),
            ApiError::TlsRequired => "this gateway is behind a TLS proxy (--behind-tls-proxy): \
                                      send requests through it over https"
                .to_owned(),
            ApiError::RouteNotFound => "no such route".to_owned(),
            ApiError::MethodNotAllowed => "the route does not accept this method".to_owned(),
            ApiError::EntryNotFound => "no entry with this id on this account".to_owned(),
            ApiError::PayloadTooLarge { limit_bytes } => {
                format!("the request body is over this route's limit of {limit_bytes} bytes")
            }
            ApiError::UnsupportedMediaType => {
                "the request body must be sent as content-type application/json".to_owned()
            }
            ApiError::RateLimited { retry_after_s } => {
                format!("too many requests from this client; retry in {retry_after_s} s")
            }
            ApiError::Rejected(r) => {
                if let Rejection::IdConflict { fields } = r {
                    problem.fields = (!fields.is_empty()).then(|| fields.clone());
                }
                rejection_detail(r)
            }
            ApiError::Internal => "an internal error occurred; it has been logged".to_owned(),
        };
        problem
    }

    /// Returns the `Retry-After` seconds this error carries, if any.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after_s } => Some(*retry_after_s),
            ApiError::Unavailable { .. } => Some(RETRY_AFTER_S_UNAVAILABLE),
            _ => None,
        }
    }
}

fn rejection_parts(r: &Rejection) -> (StatusCode, &'static str, &'static str) {
    use StatusCode as S;
    let code = r.code();
    match r {
        Rejection::AccountNotFound => (S::NOT_FOUND, code, "Account not found"),
        Rejection::MovementNotFound => (S::NOT_FOUND, code, "Transfer not found"),
        Rejection::AccountExists => (S::CONFLICT, code, "Account exists"),
        Rejection::IdConflict { .. } => (S::CONFLICT, code, "Id conflict"),
        Rejection::InsufficientFunds => (S::UNPROCESSABLE_ENTITY, code, "Insufficient funds"),
        Rejection::CurrencyMismatch => (S::UNPROCESSABLE_ENTITY, code, "Currency mismatch"),
        Rejection::SameAccount => (S::UNPROCESSABLE_ENTITY, code, "Same account"),
        Rejection::InvalidAmount => (S::UNPROCESSABLE_ENTITY, code, "Invalid amount"),
        Rejection::InvalidId | Rejection::InvalidField { .. } => {
            (S::BAD_REQUEST, code, "Invalid request")
        }
        Rejection::BatchAborted => (S::UNPROCESSABLE_ENTITY, code, "Batch aborted"),
        Rejection::BalanceOverflow => (S::UNPROCESSABLE_ENTITY, code, "Balance overflow"),
    }
}

fn rejection_detail(r: &Rejection) -> String {
    match r {
        Rejection::AccountNotFound => "the account does not exist".to_owned(),
        Rejection::MovementNotFound => "no transfer with this id".to_owned(),
        Rejection::AccountExists => {
            "an account with this id exists with other parameters".to_owned()
        }
        // No fields: the caller may not see the original movement (see routes::hide_foreign).
        Rejection::IdConflict { fields } if fields.is_empty() => {
            "this id was used before with other content; nothing changed".to_owned()
        }
        Rejection::IdConflict { fields } => format!(
            "this id was used before with other content; differing fields: {}; nothing changed",
            fields.join(", ")
        ),
        Rejection::InsufficientFunds => {
            "the source account's available balance and overdraft do not cover the amount"
                .to_owned()
        }
        Rejection::CurrencyMismatch => {
            "the currency differs from the account's currency".to_owned()
        }
        Rejection::SameAccount => "from and to name the same account".to_owned(),
        Rejection::InvalidAmount => "the amount is not valid for this currency".to_owned(),
        Rejection::InvalidId => "an identifier is not 1-64 characters of A-Za-z0-9._:-".to_owned(),
        Rejection::InvalidField { field, problem } => format!("{field}: {problem}"),
        Rejection::BatchAborted => {
            "not applied: another transfer of this atomic batch was rejected".to_owned()
        }
        Rejection::BalanceOverflow => "the movement would take a balance or the account's holds \
            past the largest amount the ledger represents (9223372036854775807 minor units); \
            nothing changed"
            .to_owned(),
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Rejected(r) => r.into(),
            LedgerError::Overloaded { reason } => ApiError::Unavailable {
                detail: format!("ledger overloaded: {reason}").into(),
            },
            LedgerError::Unavailable { reason } => ApiError::Unavailable {
                detail: format!("ledger unavailable: {reason}").into(),
            },
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r {
            // The same problem as the gateway's own checks of a field: it names the field.
            Rejection::InvalidField { field, problem } => ApiError::invalid(field, problem),
            r => ApiError::Rejected(r),
        }
    }
}

/// An RFC 9457 problem document, as serialized in error bodies and batch results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:saldo:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence.
    pub detail: String,
    /// The stable error code clients branch on.
    pub code: String,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `id_conflict`: the fields whose values differ from the original request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, _) = self.parts();
        metrics::METRICS.count_error(code);
        if matches!(self, ApiError::Internal) {
            tracing::error!("internal error answered with 500");
        }
        let body = serde_json::to_vec(&self.problem())
            .expect("a problem document has only strings and integers, it always serializes");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(s) = self.retry_after_s() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if matches!(self, ApiError::Unauthenticated { .. }) {
            // RFC 6750: a 401 names the scheme the client should use.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"saldo\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_is_listed_in_codes() {
        let samples = [
            ApiError::invalid("id", "x"),
            ApiError::InvalidAmount {
                field: "amount".into(),
                detail: "x".into(),
            },
            ApiError::Unauthenticated { detail: "x".into() },
            ApiError::Forbidden { detail: "x".into() },
            ApiError::TlsRequired,
            ApiError::RouteNotFound,
            ApiError::MethodNotAllowed,
            ApiError::EntryNotFound,
            ApiError::PayloadTooLarge { limit_bytes: 1 },
            ApiError::UnsupportedMediaType,
            ApiError::RateLimited { retry_after_s: 1 },
            ApiError::Unavailable { detail: "x".into() },
            ApiError::Internal,
            Rejection::AccountNotFound.into(),
            Rejection::AccountExists.into(),
            Rejection::MovementNotFound.into(),
            Rejection::InsufficientFunds.into(),
            Rejection::CurrencyMismatch.into(),
            Rejection::SameAccount.into(),
            Rejection::InvalidAmount.into(),
            Rejection::InvalidId.into(),
            Rejection::IdConflict {
                fields: vec!["amount".into()],
            }
            .into(),
            Rejection::BatchAborted.into(),
        ];
        for e in samples {
            let (_, code, _) = e.parts();
            assert!(CODES.contains(&code), "{code} missing from CODES");
        }
    }

    #[test]
    fn a_field_the_engine_refuses_is_named_like_the_gateways_own_checks() {
        let p = ApiError::from(LedgerError::Rejected(Rejection::InvalidField {
            field: "description".into(),
            problem: "longer than 140 bytes".into(),
        }))
        .problem();
        assert_eq!(p.status, 400);
        assert_eq!(p.code, "invalid_request");
        assert_eq!(p.field.as_deref(), Some("description"));
        assert_eq!(p.detail, "longer than 140 bytes");
    }

    #[test]
    fn id_conflict_names_the_differing_fields() {
        let p = ApiError::from(Rejection::IdConflict {
            fields: vec!["amount".into(), "to".into()],
        })
        .problem();
        assert_eq!(p.status, 409);
        assert_eq!(p.fields, Some(vec!["amount".to_owned(), "to".to_owned()]));
        assert!(p.detail.contains("amount, to"));
    }
}
