//! Request extractors whose every failure is an [`ApiError`] (problem+json), never axum's
//! plain-text rejections.
//!
//! - [`JsonBody`]: reads the body up to a per-route limit (413 past it) and requires a JSON
//!   content type when one is declared (415 otherwise); [`JsonBody::parse`] then deserializes
//!   it strictly, borrowing strings from the body: malformed JSON, unknown fields, missing
//!   fields and wrong types are 400 `invalid_request` naming the field (`transfers[3].amount`).
//! - [`ApiPath`] and [`ApiQuery`]: path and query parameters, 400 naming the parameter.
//! - [`IdempotencyKey`]: the optional `Idempotency-Key` header, validated as an ID.
//!
//! On the hot path (`POST /v1/transfers`) nothing here copies the request: the body stays the
//! `Bytes` hyper read, its strings are borrowed from it, the idempotency key is the header's
//! own bytes, and `serde_path_to_error` runs only when parsing has already failed, to name the
//! field at fault.

use axum::{
    body::{Body, Bytes},
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{header, request::Parts, HeaderValue},
};
use serde::de::{Deserialize, DeserializeOwned};

use crate::{error::ApiError, state::AppState};

/// Name of the header that carries an idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A JSON body of at most `limits.body_bytes_max` bytes (or `limits.batch_body_bytes_max`
/// when `BATCH`), read whole but not parsed yet: [`JsonBody::parse`] borrows from it.
pub struct JsonBody<const BATCH: bool = false>(pub Bytes);

impl<const BATCH: bool> FromRequest<AppState> for JsonBody<BATCH> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            if !is_json(content_type.as_bytes()) {
                return Err(ApiError::UnsupportedMediaType);
            }
        }
        let limits = &state.shared().limits;
        let limit = if BATCH {
            limits.batch_body_bytes_max
        } else {
            limits.body_bytes_max
        };
        read_body(req.into_body(), limit).await.map(JsonBody)
    }
}

impl<const BATCH: bool> JsonBody<BATCH> {
    /// Returns the body deserialized strictly (see [`parse_json`]), its strings borrowed from
    /// the body where they have no escapes.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ApiError> {
        parse_json(&self.0)
    }
}

/// Returns whether a content type is JSON (`application/json`, `application/*+json`, with
/// parameters such as `; charset=utf-8`).
fn is_json(content_type: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(content_type) else {
        return false;
    };
    // Compared without lowering a copy: this runs on every request with a body.
    let essence = s.split(';').next().unwrap_or("").trim().as_bytes();
    let starts_with = |prefix: &[u8]| {
        essence.len() >= prefix.len() && essence[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    let ends_with = |suffix: &[u8]| {
        essence.len() >= suffix.len()
            && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    essence.eq_ignore_ascii_case(b"application/json")
        || (starts_with(b"application/") && ends_with(b"+json"))
}

/// Reads a body of at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // `to_bytes` fails either on the limit or on a broken connection; tell them apart by
        // the source error's type.
        let is_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if is_limit {
            ApiError::PayloadTooLarge { limit_bytes: limit }
        } else {
            ApiError::invalid("body", "failed to read the request body")
        }
    })
}

/// Deserializes a JSON document strictly (trailing characters are an error), naming the field
/// at fault on failure.
///
/// The document is parsed once with plain `serde_json`; only a failure parses it again, under
/// `serde_path_to_error`, whose path tracking would otherwise cost every request. Both parses
/// run the same `Deserialize` code over the same bytes, so the second fails where the first
/// did, with the same error.
pub fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| explain_json_error::<T>(bytes, &e))
}

/// Returns the answer to a document that failed to deserialize as `T` with `error`: the same
/// parse again with the path of the field at fault.
fn explain_json_error<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    error: &serde_json::Error,
) -> ApiError {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) => {
            let path = e.path().to_string();
            json_error(path, e.inner())
        }
        Ok(_) => match de.end() {
            Err(e) => json_error(".".to_owned(), &e),
            // Unreachable while both parses run the same code; the first error still answers.
            Ok(()) => json_error(".".to_owned(), error),
        },
    }
}

fn json_error(path: String, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let message = strip_position(&e.to_string());
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::InvalidRequest {
            field_opt: None,
            detail: format!("malformed JSON: {message}").into(),
        },
        Category::Data => {
            // Unknown and missing fields are reported at their parent; name the field itself.
            let field = match backticked(&message) {
                Some(name)
                    if message.starts_with("unknown field")
                        || message.starts_with("missing field") =>
                {
                    join_path(&path, name)
                }
                _ if path == "." => "body".to_owned(),
                _ => path,
            };
            ApiError::InvalidRequest {
                field_opt: Some(field.into()),
                detail: message.into(),
            }
        }
    }
}

/// Drops serde_json's " at line L column C" suffix: the field path says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Returns the first `name` between backticks in a serde message.
fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

fn join_path(parent: &str, name: &str) -> String {
    if parent == name || parent.ends_with(&format!(".{name}")) {
        // serde_path_to_error already points at the field (unknown fields).
        parent.to_owned()
    } else if parent == "." || parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// Path parameters, 400 `invalid_request` when they do not deserialize.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| ApiPath(t))
            .map_err(|e| ApiError::invalid("path", e.body_text()))
    }
}

/// Query parameters, 400 `invalid_request` naming the parameter when they do not deserialize.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(t)| ApiQuery(t))
            .map_err(|e| {
                let text = e.body_text();
                let message = text.trim_start_matches("Failed to deserialize query string: ");
                let field = backticked(message).unwrap_or("query").to_owned();
                ApiError::invalid(field, message.to_owned())
            })
    }
}

/// The `Idempotency-Key` header of a request, if it has one: the header's own bytes (no copy
/// of the header map), checked by [`IdempotencyKey::get`].
pub struct IdempotencyKey(pub Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // A header value is a view of hyper's read buffer: cloning it copies no bytes.
        Ok(IdempotencyKey(parts.headers.get(IDEMPOTENCY_KEY).cloned()))
    }
}

impl IdempotencyKey {
    /// Returns the key, if present, after checking it is a valid ID.
    pub fn get(&self) -> Result<Option<&str>, ApiError> {
        let Some(value) = &self.0 else {
            return Ok(None);
        };
        match value.to_str() {
            Ok(key) if saldo_engine::types::is_valid_id(key) => Ok(Some(key)),
            _ => Err(ApiError::invalid(
                "Idempotency-Key",
                "must be 1-64 characters of A-Za-z0-9._:-",
            )),
        }
    }

    /// Returns whether the request carries the header at all.
    pub fn is_present(&self) -> bool {
        self.0.is_some()
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        id: String,
        n: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Item>,
    }

    fn field_of(json: &str) -> Option<String> {
        match parse_json::<Outer>(json.as_bytes()) {
            Err(ApiError::InvalidRequest { field_opt, .. }) => field_opt.map(|f| f.to_string()),
            other => panic!("expected invalid_request, got {other:?}"),
        }
    }

    #[test]
    fn json_errors_name_the_field_at_fault() {
        assert_eq!(
            field_of(r#"{"items":[{"id":"a","n":"x"}]}"#).as_deref(),
            Some("items[0].n")
        );
        assert_eq!(
            field_of(r#"{"items":[{"id":"a","n":1,"zz":1}]}"#).as_deref(),
            Some("items[0].zz")
        );
        assert_eq!(
            field_of(r#"{"items":[{"id":"a"}]}"#).as_deref(),
            Some("items[0].n")
        );
        assert_eq!(
            field_of(r#"{"items":[], "extra":true}"#).as_deref(),
            Some("extra")
        );
        assert_eq!(field_of(r#""x""#).as_deref(), Some("body"));
        assert_eq!(
            field_of(r#"{"items":[{"id":"a","n":99999999999999999999999}]}"#).as_deref(),
            Some("items[0].n")
        );
    }

    #[test]
    fn malformed_json_is_invalid_request_without_a_field() {
        assert_eq!(field_of(r#"{"items":["#), None);
        assert_eq!(field_of(r#"{"items":[]} trailing"#), None);
    }

    #[test]
    fn strings_borrow_from_the_body_unless_they_had_escapes() {
        use std::borrow::Cow;

        use crate::api::TransferRequest;
        let body = br#"{"from":"alice","to":"b\u006fb","amount":"1.00","currency":"BRL"}"#;
        let req: TransferRequest = parse_json(body).expect("valid");
        assert!(matches!(req.from.0, Cow::Borrowed("alice")));
        assert!(matches!(&req.to.0, Cow::Owned(s) if s == "bob"));
    }

    #[test]
    fn a_failed_parse_answers_as_the_path_tracking_parse_does() {
        use crate::api::TransferRequest;
        let cases: [&[u8]; 5] = [
            br#"{"from":"a","to":"b","amount":5,"currency":"BRL"}"#,
            br#"{"from":"a","to":"b","currency":"BRL"}"#,
            br#"{"from":"a","to":"b","amount":"1","currency":"BRL","x":1}"#,
            br#"{"from":"a","to":"b","amount":"1","currency":"BRL"} {}"#,
            br#"{"from":"a""#,
        ];
        for body in cases {
            let fast = parse_json::<TransferRequest>(body).expect_err("invalid");
            // The answer before the fast path existed: path tracking on every parse.
            let mut de = serde_json::Deserializer::from_slice(body);
            let slow = match serde_path_to_error::deserialize::<_, TransferRequest>(&mut de) {
                Err(e) => json_error(e.path().to_string(), e.inner()),
                Ok(_) => json_error(".".to_owned(), &de.end().expect_err("trailing")),
            };
            assert_eq!(fast, slow, "{}", String::from_utf8_lossy(body));
        }
        let amount = parse_json::<TransferRequest>(cases[0]).expect_err("a number");
        assert_eq!(
            amount,
            ApiError::invalid(
                "amount",
                "invalid type: integer `5`, expected a decimal string such as \"12.50\""
            )
        );
    }

    #[test]
    fn json_content_types_are_recognised() {
        assert!(is_json(b"Application/JSON; charset=utf-8"));
        assert!(is_json(b"application/Problem+JSON"));
        assert!(!is_json(b"application/"));
        assert!(!is_json(b"+json"));
        assert!(is_json(b"application/json"));
        assert!(is_json(b"application/json; charset=utf-8"));
        assert!(is_json(b"application/merge-patch+json"));
        assert!(!is_json(b"text/plain"));
        assert!(!is_json(b"application/x-www-form-urlencoded"));
    }
}
