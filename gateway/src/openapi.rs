//! The OpenAPI 3.1 document of the API, served at `/openapi.json`.
//!
//! Written by hand next to the code it describes and built from the same constants (limits,
//! error codes, ID pattern); the tests check that every route of [`crate::metrics::ROUTES`] and
//! every code of [`crate::error::CODES`] is in it, and schemathesis checks real answers
//! against it.

use std::sync::OnceLock;

use axum::body::Bytes;
use serde_json::{json, Value};

use crate::{
    error::CODES,
    limits::{AMOUNT_CHARS_MAX, MOVEMENTS_PAGE_MAX, TRANSFER_BATCH_MAX},
};

/// Pattern of account, transfer and entry IDs.
const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,64}$";

/// Returns the serialized document (built once).
pub fn document_bytes() -> Bytes {
    static BYTES: OnceLock<Bytes> = OnceLock::new();
    BYTES
        .get_or_init(|| {
            Bytes::from(serde_json::to_vec(&document()).expect("a json! value serializes"))
        })
        .clone()
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": schema_ref("Problem") } }
    })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": schema_ref(schema) } }
    })
}

/// Returns `response` with OpenAPI links (they let stateful fuzzers chain calls).
fn linked(mut response: Value, links: Value) -> Value {
    response["links"] = links;
    response
}

fn account_links() -> Value {
    let id = json!({ "id": "$response.body#/id" });
    json!({
        "GetAccount": { "operationId": "getAccount", "parameters": id },
        "PostEntry": { "operationId": "postEntry", "parameters": id },
        "ListMovements": { "operationId": "listMovements", "parameters": id },
        "DailyReport": { "operationId": "dailyReport", "parameters": id },
    })
}

fn entry_links() -> Value {
    json!({
        "GetEntry": { "operationId": "getEntry", "parameters": {
            "id": "$response.body#/account", "entry_id": "$response.body#/id" } },
    })
}

fn transfer_links() -> Value {
    json!({
        "GetTransfer": { "operationId": "getTransfer",
                         "parameters": { "id": "$response.body#/id" } },
        "GetSourceAccount": { "operationId": "getAccount",
                              "parameters": { "id": "$response.body#/from" } },
    })
}

fn id_param(name: &str, description: &str) -> Value {
    json!({
        "name": name, "in": "path", "required": true, "description": description,
        "schema": { "type": "string", "pattern": ID_PATTERN }
    })
}

fn idempotency_header() -> Value {
    json!({
        "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "The write's ID when the body has none; must equal the body's id if both are sent.",
        "schema": { "type": "string", "pattern": ID_PATTERN }
    })
}

/// Error answers every `/v1` route may give.
fn common_errors(responses: &mut serde_json::Map<String, Value>, write: bool) {
    responses.insert(
        "400".into(),
        problem("invalid_request: malformed or invalid input"),
    );
    responses.insert("401".into(), problem("unauthenticated (with --auth jwt)"));
    responses.insert(
        "403".into(),
        problem(
            "forbidden: missing scope or another merchant's account; tls_required: \
             not through the trusted TLS proxy (--behind-tls-proxy)",
        ),
    );
    responses.insert("429".into(), problem("rate_limited (Retry-After)"));
    responses.insert(
        "503".into(),
        problem("unavailable: starting, overloaded or timed out (Retry-After)"),
    );
    if write {
        responses.insert("413".into(), problem("payload_too_large"));
        responses.insert("415".into(), problem("unsupported_media_type"));
    }
}

fn operation(
    summary: &str,
    op_id: &str,
    params: Vec<Value>,
    body_opt: Option<&str>,
    mut ok_responses: serde_json::Map<String, Value>,
    write: bool,
) -> Value {
    common_errors(&mut ok_responses, write);
    let mut op = json!({
        "summary": summary,
        "operationId": op_id,
        "parameters": params,
        "responses": ok_responses,
    });
    if let Some(body) = body_opt {
        op["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": schema_ref(body) } }
        });
    }
    op
}

fn responses(pairs: &[(&str, Value)]) -> serde_json::Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Returns the OpenAPI document.
pub fn document() -> Value {
    let account_id = id_param("id", "Account ID");
    let paths = json!({
        "/v1/accounts": { "post": operation(
            "Open an account (201), or find the identical one (200)", "openAccount", vec![],
            Some("OpenAccountRequest"),
            responses(&[
                ("201", linked(ok("Opened", "Account"), account_links())),
                ("200", ok("The identical account already existed", "Account")),
                ("409", problem("account_exists: the ID is taken with other parameters")),
                ("422", problem("invalid_amount (overdraft_limit)")),
            ]), true) },
        "/v1/accounts/{id}": { "get": operation(
            "Get an account", "getAccount", vec![account_id.clone()], None,
            responses(&[
                ("200", ok("The account", "Account")),
                ("404", problem("account_not_found")),
            ]), false) },
        "/v1/accounts/{id}/entries": { "post": operation(
            "Post a credit or debit entry on an account, idempotent by ID", "postEntry",
            vec![account_id.clone(), idempotency_header()], Some("EntryRequest"),
            responses(&[
                ("201", linked(ok("Posted", "Entry"), entry_links())),
                ("200", ok("Replay of an earlier identical request", "Entry")),
                ("202", ok("Accepted, being completed", "Entry")),
                ("404", problem("account_not_found")),
                ("409", problem("id_conflict: the ID was used with other content; nothing changed")),
                ("422", problem("insufficient_funds, invalid_amount")),
            ]), true) },
        "/v1/accounts/{id}/entries/{entry_id}": { "get": operation(
            "Get an entry of an account", "getEntry",
            vec![account_id.clone(), id_param("entry_id", "Entry ID")], None,
            responses(&[
                ("200", ok("The entry", "Entry")),
                ("404", problem("account_not_found, entry_not_found")),
            ]), false) },
        "/v1/accounts/{id}/movements": { "get": operation(
            "An account's transfers and entries, newest first, with the running balance",
            "listMovements",
            vec![
                account_id.clone(),
                json!({ "name": "limit", "in": "query", "required": false,
                        "schema": { "type": "integer", "minimum": 1, "maximum": MOVEMENTS_PAGE_MAX } }),
                json!({ "name": "cursor", "in": "query", "required": false,
                        "description": "next_cursor of the previous page",
                        "schema": { "type": "string", "pattern": "^[0-9]{1,20}$" } }),
            ], None,
            responses(&[
                ("200", ok("A page of history", "Movements")),
                ("404", problem("account_not_found")),
            ]), false) },
        "/v1/accounts/{id}/daily": { "get": operation(
            "The daily consolidated report of an account", "dailyReport",
            vec![
                account_id,
                json!({ "name": "from", "in": "query", "required": true,
                        "schema": { "type": "string", "format": "date" } }),
                json!({ "name": "to", "in": "query", "required": true,
                        "schema": { "type": "string", "format": "date" } }),
            ], None,
            responses(&[
                ("200", ok("One row per day of the range", "Daily")),
                ("404", problem("account_not_found")),
            ]), false) },
        "/v1/transfers": { "post": operation(
            "Move money between two accounts, idempotent by ID", "createTransfer",
            vec![idempotency_header()], Some("TransferRequest"),
            responses(&[
                ("201", linked(ok("Committed", "Transfer"), transfer_links())),
                ("200", ok("Replay of an earlier identical request: the original answer", "Transfer")),
                ("202", ok("Accepted, being completed", "Transfer")),
                ("404", problem("account_not_found")),
                ("409", problem("id_conflict: the ID was used with other content; nothing changed")),
                ("422", problem("insufficient_funds, currency_mismatch, same_account, invalid_amount")),
            ]), true) },
        "/v1/transfers/batch": {
            "post": operation(
                "Many transfers, one result each; atomic on request", "createTransferBatch",
                vec![], Some("BatchRequest"),
                responses(&[("200", ok("One result per transfer, in order", "BatchResponse"))]),
                true),
            "get": operation(
                "Get the transfer whose ID is `batch`", "getTransferNamedBatch", vec![], None,
                responses(&[
                    ("200", ok("The transfer", "Transfer")),
                    ("404", problem("transfer_not_found")),
                ]), false),
        },
        "/v1/transfers/{id}": { "get": operation(
            "Get a transfer and its status", "getTransfer",
            vec![id_param("id", "Transfer ID")], None,
            responses(&[
                ("200", ok("The transfer", "Transfer")),
                ("404", problem("transfer_not_found")),
            ]), false) },
        "/v1/admin/shards/{shard}/checksum": { "get": operation(
            "A shard's durable position and state checksum (scope ledger:admin; for saldo shard verify)",
            "shardChecksum",
            vec![json!({
                "name": "shard", "in": "path", "required": true,
                "description": "Shard number, below the node's shard count",
                "schema": { "type": "string", "pattern": "^[0-9]{1,10}$" }
            })], None,
            responses(&[
                ("200", ok("Position and checksum", "ShardChecksum")),
            ]), false) },
        "/healthz": { "get": {
            "summary": "The process is alive", "operationId": "healthz",
            "responses": { "200": ok("Alive", "Status") } } },
        "/readyz": { "get": {
            "summary": "Every shard restored and the stream writable", "operationId": "readyz",
            "responses": { "200": ok("Ready", "Status"), "503": problem("unavailable") } } },
        "/metrics": { "get": {
            "summary": "Prometheus metrics", "operationId": "metrics",
            "responses": { "200": { "description": "Prometheus text format 0.0.4",
                "content": { "text/plain": { "schema": { "type": "string" } } } } } } },
        "/openapi.json": { "get": {
            "summary": "This document", "operationId": "openapi",
            "responses": { "200": { "description": "OpenAPI 3.1",
                "content": { "application/json": { "schema": { "type": "object" } } } } } } },
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "saldo",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "An in-memory ledger. Amounts are decimal strings in the currency's \
                minor-unit scale; errors are application/problem+json with a stable code. \
                See docs/api.md for the idempotency contract.",
        },
        "paths": paths,
        "components": { "schemas": schemas(), "securitySchemes": {
            "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } } },
        "security": [ {}, { "bearer": [] } ],
    })
}

/// Returns every currency code the engine knows (probing all three-letter codes once, so the
/// list cannot drift from the engine's table).
fn currency_codes() -> Vec<String> {
    let mut codes = Vec::new();
    for a in b'A'..=b'Z' {
        for b in b'A'..=b'Z' {
            for c in b'A'..=b'Z' {
                let code = String::from_utf8(vec![a, b, c]).expect("ASCII letters");
                if saldo_engine::types::Currency::new(&code).is_some() {
                    codes.push(code);
                }
            }
        }
    }
    codes
}

fn schemas() -> Value {
    let id = json!({ "type": "string", "pattern": ID_PATTERN });
    let amount_in = json!({ "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$", "maxLength": AMOUNT_CHARS_MAX });
    let amount_out = json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?$" });
    let currency =
        json!({ "type": "string", "enum": currency_codes(), "description": "ISO 4217 code" });
    let time = json!({ "type": "string", "format": "date-time" });
    let status = json!({ "type": "string", "enum": ["committed", "pending", "rejected"] });
    let description_in = json!({ "type": ["string", "null"], "maxLength": 256 });
    let transfer_request = json!({
        "type": "object", "additionalProperties": false,
        "required": ["from", "to", "amount", "currency"],
        "properties": {
            "id": id, "from": id, "to": id, "amount": amount_in, "currency": currency,
            "description": description_in,
        }
    });
    json!({
        "Problem": {
            "type": "object", "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": { "type": "string" }, "title": { "type": "string" },
                "status": { "type": "integer" }, "detail": { "type": "string" },
                "code": { "type": "string", "enum": CODES },
                "field": { "type": "string" },
                "fields": { "type": "array", "items": { "type": "string" } },
            }
        },
        "OpenAccountRequest": {
            "type": "object", "additionalProperties": false, "required": ["id", "currency"],
            "properties": {
                "id": id, "currency": currency,
                "overdraft_limit": { "type": ["string", "null"], "pattern": "^[0-9]+(\\.[0-9]+)?$", "maxLength": AMOUNT_CHARS_MAX },
                "metadata": { "type": ["object", "null"] },
            }
        },
        "Account": {
            "type": "object",
            "required": ["id", "currency", "balance", "available", "held", "overdraft_limit",
                         "metadata", "movement_count", "created_at"],
            "properties": {
                "id": id, "currency": currency, "balance": amount_out, "available": amount_out,
                "held": amount_out, "overdraft_limit": amount_out,
                "metadata": { "type": ["object", "null"] },
                "movement_count": { "type": "integer", "minimum": 0 },
                "created_at": time,
            }
        },
        "TransferRequest": transfer_request,
        "Transfer": {
            "type": "object",
            "required": ["id", "status", "from", "to", "amount", "currency", "created_at"],
            "properties": {
                "id": id, "status": status, "from": id, "to": id, "amount": amount_out,
                "currency": currency, "description": { "type": "string" }, "created_at": time,
                "error_code": { "type": "string" },
            }
        },
        "EntryRequest": {
            "type": "object", "additionalProperties": false, "required": ["type", "amount"],
            "properties": {
                "id": id, "type": { "type": "string", "enum": ["credit", "debit"] },
                "amount": amount_in, "description": description_in,
            }
        },
        "Entry": {
            "type": "object",
            "required": ["id", "account", "type", "status", "amount", "currency", "created_at"],
            "properties": {
                "id": id, "account": id, "type": { "type": "string", "enum": ["credit", "debit"] },
                "status": status, "amount": amount_out, "currency": currency,
                "description": { "type": "string" }, "balance_after": amount_out,
                "created_at": time, "error_code": { "type": "string" },
            }
        },
        "BatchRequest": {
            "type": "object", "additionalProperties": false, "required": ["transfers"],
            "properties": {
                "transfers": { "type": "array", "minItems": 1, "maxItems": TRANSFER_BATCH_MAX,
                               "items": schema_ref("TransferRequest") },
                "atomic": { "type": "boolean", "default": false },
            }
        },
        "BatchResult": {
            "type": "object", "required": ["id", "status"],
            "properties": {
                "id": { "type": ["string", "null"] },
                "status": { "type": "integer" },
                "transfer": schema_ref("Transfer"),
                "error": schema_ref("Problem"),
            }
        },
        "BatchResponse": {
            "type": "object", "required": ["atomic", "results"],
            "properties": {
                "atomic": { "type": "boolean" },
                "results": { "type": "array", "items": schema_ref("BatchResult") },
            }
        },
        "Movement": {
            "type": "object",
            "required": ["id", "kind", "direction", "counterparty", "amount", "balance_after",
                         "description", "created_at"],
            "properties": {
                "id": id, "kind": { "type": "string", "enum": ["transfer", "entry"] },
                "direction": { "type": "string", "enum": ["in", "out"] },
                "counterparty": { "type": ["string", "null"] },
                "amount": amount_out, "balance_after": amount_out,
                "description": { "type": ["string", "null"] }, "created_at": time,
            }
        },
        "Movements": {
            "type": "object",
            "required": ["account", "currency", "movements", "next_cursor", "older_movements_in_stream"],
            "properties": {
                "account": id, "currency": currency,
                "movements": { "type": "array", "items": schema_ref("Movement") },
                "next_cursor": { "type": ["string", "null"] },
                "older_movements_in_stream": { "type": "boolean" },
            }
        },
        "Day": {
            "type": "object",
            "required": ["date", "opening_balance", "credits", "debits", "movements", "closing_balance"],
            "properties": {
                "date": { "type": "string", "format": "date" },
                "opening_balance": amount_out, "credits": amount_out, "debits": amount_out,
                "movements": { "type": "integer", "minimum": 0 }, "closing_balance": amount_out,
            }
        },
        "Daily": {
            "type": "object", "required": ["account", "currency", "days"],
            "properties": {
                "account": id, "currency": currency,
                "days": { "type": "array", "items": schema_ref("Day") },
            }
        },
        "ShardChecksum": {
            "type": "object", "required": ["shard", "lsn", "checksum"],
            "properties": {
                "shard": { "type": "integer", "minimum": 0 },
                "lsn": { "type": "integer", "minimum": 0 },
                "checksum": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
            }
        },
        "Status": {
            "type": "object", "required": ["status"],
            "properties": { "status": { "type": "string" } }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ROUTES;

    #[test]
    fn every_route_is_in_the_document() {
        let doc = document();
        for (method, path) in ROUTES.iter().filter(|(m, _)| *m != "OTHER") {
            let op = &doc["paths"][path][method.to_ascii_lowercase()];
            assert!(
                op.is_object(),
                "{method} {path} is missing from openapi.json"
            );
        }
    }

    #[test]
    fn every_error_code_is_in_the_problem_schema() {
        let doc = document();
        let codes = doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
            .as_array()
            .expect("the code enum is an array")
            .clone();
        for code in CODES {
            assert!(codes.contains(&json!(code)), "{code} missing");
        }
    }

    #[test]
    fn the_currency_enum_lists_the_engines_currencies() {
        let codes = currency_codes();
        for code in ["BRL", "USD", "JPY", "KWD"] {
            assert!(codes.contains(&code.to_owned()), "{code}");
        }
        assert!(!codes.contains(&"XXX".to_owned()));
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').expect("a ref ends with a quote")];
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling $ref {name}"
            );
        }
    }
}
