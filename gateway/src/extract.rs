//! Request extractors whose every failure is an [`ApiError`] (problem+json), never axum's
//! plain-text rejections.
//!
//! - [`ApiJson`]: reads the body up to a per-route limit (413 past it), requires a JSON content
//!   type when one is declared (415 otherwise), and deserializes strictly: malformed JSON,
//!   unknown fields, missing fields and wrong types are 400 `invalid_request` naming the field
//!   (`transfers[3].amount`).
//! - [`ApiPath`] and [`ApiQuery`]: path and query parameters, 400 naming the parameter.
//! - [`idempotency_key`]: the optional `Idempotency-Key` header, validated as an ID.

use axum::{
    body::Body,
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{header, request::Parts, HeaderMap},
};
use serde::de::DeserializeOwned;

use crate::{error::ApiError, state::AppState};

/// Name of the header that carries an idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A JSON body, deserialized strictly, of at most `limits.body_bytes_max` bytes (or
/// `limits.batch_body_bytes_max` when `BATCH`).
pub struct ApiJson<T, const BATCH: bool = false>(pub T);

impl<T, const BATCH: bool> FromRequest<AppState> for ApiJson<T, BATCH>
where
    T: DeserializeOwned,
{
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
        let bytes = read_body(req.into_body(), limit).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Returns whether a content type is JSON (`application/json`, `application/*+json`, with
/// parameters such as `; charset=utf-8`).
fn is_json(content_type: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(content_type) else {
        return false;
    };
    let essence = s
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
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

/// Deserializes a JSON document strictly, naming the field at fault on failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(path, &inner)
    })?;
    de.end().map_err(|e| json_error(".".to_owned(), &e))?;
    Ok(value)
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

/// Returns the `Idempotency-Key` header, if present, after checking it is a valid ID.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
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
    fn json_content_types_are_recognised() {
        assert!(is_json(b"application/json"));
        assert!(is_json(b"application/json; charset=utf-8"));
        assert!(is_json(b"application/merge-patch+json"));
        assert!(!is_json(b"text/plain"));
        assert!(!is_json(b"application/x-www-form-urlencoded"));
    }
}
