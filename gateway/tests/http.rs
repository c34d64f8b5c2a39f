//! HTTP integration tests: every route and every error code of the API, against a real ledger
//! on a temporary data directory, with the server on 127.0.0.1:0.

mod common;

use common::{test_config, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    (TestServer::start(test_config(dir.path())).await, dir)
}

fn transfer(id: &str, from: &str, to: &str, amount: &str) -> Value {
    json!({"id": id, "from": from, "to": to, "amount": amount, "currency": "BRL"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_openapi_answer() {
    let (s, _dir) = server().await;
    let r = s.get("/healthz").await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("ok")));
    let r = s.get("/readyz").await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("ready")));
    let r = s.get("/openapi.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["openapi"], "3.1.0");
    assert!(r.body["paths"]["/v1/transfers"]["post"].is_object());
    s.funded_account("m-a", "10.00").await;
    let r = s.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/plain"));
    for needle in [
        "saldo_http_requests_total{method=\"POST\",route=\"/v1/accounts\",status=\"201\"}",
        "saldo_http_request_duration_seconds_bucket{method=\"GET\",route=\"/readyz\"",
        "saldo_http_errors_total{code=\"insufficient_funds\"}",
        "saldo_wal_append_duration_seconds_bucket",
        "saldo_wal_batch_events_bucket",
        "saldo_transfers_in_flight",
    ] {
        assert!(r.text.contains(needle), "metrics lack {needle}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_an_account_is_idempotent_and_other_parameters_conflict() {
    let (s, _dir) = server().await;
    let body = json!({"id": "acc-1", "currency": "BRL", "overdraft_limit": "50.00",
                      "metadata": {"merchant": "m1", "tier": 2}});
    let r = s.post("/v1/accounts", body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.header("location"), Some("/v1/accounts/acc-1"));
    let created = r.body.clone();
    assert_eq!(created["id"], "acc-1");
    assert_eq!(created["currency"], "BRL");
    assert_eq!(created["balance"], "0.00");
    assert_eq!(created["available"], "0.00");
    assert_eq!(created["held"], "0.00");
    assert_eq!(created["overdraft_limit"], "50.00");
    assert_eq!(created["metadata"], json!({"merchant": "m1", "tier": 2}));
    assert!(created["created_at"]
        .as_str()
        .expect("a string")
        .ends_with('Z'));

    let r = s.post("/v1/accounts", body).await;
    assert_eq!(
        r.status, 200,
        "the same request again finds the same account"
    );
    assert_eq!(r.body, created);

    let r = s
        .post("/v1/accounts", json!({"id": "acc-1", "currency": "USD"}))
        .await;
    r.assert_problem(409, "account_exists");

    let r = s.get("/v1/accounts/acc-1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, created);
    s.get("/v1/accounts/nobody")
        .await
        .assert_problem(404, "account_not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_moves_money_and_a_retry_answers_the_original() {
    let (s, _dir) = server().await;
    s.funded_account("src", "100.00").await;
    s.funded_account("dst", "0").await;
    let body = json!({"id": "t-1", "from": "src", "to": "dst", "amount": "12.5",
                      "currency": "BRL", "description": "order 42"});
    let r = s.post("/v1/transfers", body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let original = r.body.clone();
    assert_eq!(original["id"], "t-1");
    assert_eq!(original["status"], "committed");
    assert_eq!(original["from"], "src");
    assert_eq!(original["to"], "dst");
    assert_eq!(original["amount"], "12.50");
    assert_eq!(original["currency"], "BRL");
    assert_eq!(original["description"], "order 42");
    assert!(original["created_at"].is_string());
    assert_eq!(r.header("idempotent-replayed"), None);

    let r = s.post("/v1/transfers", body).await;
    assert_eq!(r.status, 200, "a retry answers 200");
    assert_eq!(r.body, original, "with the original response");
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(s.balance("src").await, "87.50", "money moved once");
    assert_eq!(s.balance("dst").await, "12.50");

    let r = s.get("/v1/transfers/t-1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, original);
    s.get("/v1/transfers/t-404")
        .await
        .assert_problem(404, "transfer_not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_retry_answers_409_naming_the_fields_and_changes_nothing() {
    let (s, _dir) = server().await;
    s.funded_account("c-src", "100.00").await;
    s.funded_account("c-dst", "0").await;
    s.funded_account("c-other", "0").await;
    let r = s
        .post("/v1/transfers", transfer("c-1", "c-src", "c-dst", "10.00"))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let before: Vec<Value> = futures_accounts(&s, &["c-src", "c-dst", "c-other"]).await;

    let r = s
        .post(
            "/v1/transfers",
            transfer("c-1", "c-src", "c-other", "99.00"),
        )
        .await;
    r.assert_problem(409, "id_conflict");
    let mut fields: Vec<String> = serde_json::from_value(r.body["fields"].clone()).expect("fields");
    fields.sort();
    assert_eq!(fields, vec!["amount".to_owned(), "to".to_owned()]);

    // The same ID as an entry conflicts too (one namespace for transfers and entries).
    let r = s
        .post(
            "/v1/accounts/c-src/entries",
            json!({"id": "c-1", "type": "debit", "amount": "1.00"}),
        )
        .await;
    r.assert_problem(409, "id_conflict");

    let after = futures_accounts(&s, &["c-src", "c-dst", "c-other"]).await;
    assert_eq!(before, after, "balances and histories did not change");
    let r = s.get("/v1/transfers/c-1").await;
    assert_eq!(r.body["to"], "c-dst");
    assert_eq!(r.body["amount"], "10.00");
    s.stop().await;
}

async fn futures_accounts(s: &TestServer, ids: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        out.push(s.get(&format!("/v1/accounts/{id}")).await.body);
        out.push(s.get(&format!("/v1/accounts/{id}/movements")).await.body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_key_header_is_the_id_when_the_body_has_none() {
    let (s, _dir) = server().await;
    s.funded_account("k-src", "100.00").await;
    s.funded_account("k-dst", "0").await;
    let body = json!({"from": "k-src", "to": "k-dst", "amount": "1.00", "currency": "BRL"});
    let r = s
        .post_with(
            "/v1/transfers",
            body.clone(),
            &[("Idempotency-Key", "key-1")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["id"], "key-1");
    let r = s
        .post_with(
            "/v1/transfers",
            body.clone(),
            &[("Idempotency-Key", "key-1")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.balance("k-src").await, "99.00");

    // Body id and header agree: fine. Disagree: 400, nothing moves.
    let mut with_id = body.clone();
    with_id["id"] = json!("key-1");
    let r = s
        .post_with(
            "/v1/transfers",
            with_id.clone(),
            &[("Idempotency-Key", "key-1")],
        )
        .await;
    assert_eq!(r.status, 200);
    let r = s
        .post_with("/v1/transfers", with_id, &[("Idempotency-Key", "key-2")])
        .await;
    r.assert_problem(400, "invalid_request");
    assert_eq!(r.body["field"], "id");
    let r = s
        .post_with(
            "/v1/transfers",
            body.clone(),
            &[("Idempotency-Key", "bad key!")],
        )
        .await;
    r.assert_problem(400, "invalid_request");
    assert_eq!(r.body["field"], "Idempotency-Key");
    let r = s.post("/v1/transfers", body).await;
    r.assert_problem(400, "invalid_request");
    assert_eq!(r.body["field"], "id");

    // Entries take the header too.
    let r = s
        .post_with(
            "/v1/accounts/k-dst/entries",
            json!({"type": "credit", "amount": "5"}),
            &[("Idempotency-Key", "entry-key")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["id"], "entry-key");
    assert_eq!(s.balance("k-src").await, "99.00");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_rejections_have_their_codes_and_change_nothing() {
    let (s, _dir) = server().await;
    s.funded_account("r-src", "10.00").await;
    s.funded_account("r-dst", "0").await;
    let r = s
        .post("/v1/accounts", json!({"id": "r-usd", "currency": "USD"}))
        .await;
    assert_eq!(r.status, 201);

    s.post("/v1/transfers", transfer("r-1", "r-src", "r-dst", "10.01"))
        .await
        .assert_problem(422, "insufficient_funds");
    s.post("/v1/transfers", transfer("r-2", "r-src", "r-usd", "1.00"))
        .await
        .assert_problem(422, "currency_mismatch");
    s.post("/v1/transfers", transfer("r-3", "r-src", "r-src", "1.00"))
        .await
        .assert_problem(422, "same_account");
    s.post("/v1/transfers", transfer("r-4", "r-src", "nobody", "1.00"))
        .await
        .assert_problem(404, "account_not_found");
    for (i, amount) in [
        "0",
        "0.00",
        "-1.00",
        "1.001",
        "92233720368547758.08",
        "1e3",
        "",
        "abc",
    ]
    .iter()
    .enumerate()
    {
        let r = s
            .post(
                "/v1/transfers",
                transfer(&format!("r-a{i}"), "r-src", "r-dst", amount),
            )
            .await;
        r.assert_problem(422, "invalid_amount");
        assert_eq!(r.body["field"], "amount", "{amount}");
    }
    // A rejected transfer keeps its outcome: the same request again is the same rejection.
    s.post("/v1/transfers", transfer("r-1", "r-src", "r-dst", "10.01"))
        .await
        .assert_problem(422, "insufficient_funds");
    assert_eq!(s.balance("r-src").await, "10.00");
    assert_eq!(s.balance("r-dst").await, "0.00");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_400_naming_the_field_and_changes_nothing() {
    let (s, _dir) = server().await;
    s.funded_account("b-src", "10.00").await;
    s.funded_account("b-dst", "0").await;
    let long_id = "x".repeat(65);
    let cases: Vec<(String, Option<&str>)> = vec![
        (r#"{"id":"b1","from":"b-src","to":"b-dst","amount":"1.00""#.into(), None),
        ("not json".into(), None),
        (r#"{"id":"b1","from":"b-src","to":"b-dst","amount":"1.00","currency":"BRL","x":1}"#.into(), Some("x")),
        (r#"{"id":"b1","from":"b-src","to":"b-dst","amount":1.00,"currency":"BRL"}"#.into(), Some("amount")),
        (r#"{"id":"b1","from":"b-src","to":"b-dst","amount":100000000000000000000000000000,"currency":"BRL"}"#.into(), Some("amount")),
        (r#"{"id":7,"from":"b-src","to":"b-dst","amount":"1.00","currency":"BRL"}"#.into(), Some("id")),
        (format!(r#"{{"id":"{long_id}","from":"b-src","to":"b-dst","amount":"1.00","currency":"BRL"}}"#), Some("id")),
        (r#"{"id":"b1","from":"b src","to":"b-dst","amount":"1.00","currency":"BRL"}"#.into(), Some("from")),
        (r#"{"id":"b1","from":"b-src","amount":"1.00","currency":"BRL"}"#.into(), Some("to")),
        (r#"{"id":"b1","from":"b-src","to":"b-dst","amount":"1.00","currency":"XYZ"}"#.into(), Some("currency")),
        (format!(r#"{{"id":"b1","from":"b-src","to":"b-dst","amount":"1.00","currency":"BRL","description":"{}"}}"#, "d".repeat(257)), Some("description")),
        (r#"[]"#.into(), Some("body")),
    ];
    for (body, field) in cases {
        let r = s
            .post_raw("/v1/transfers", body.clone(), "application/json")
            .await;
        r.assert_problem(400, "invalid_request");
        assert_eq!(r.body["field"].as_str(), field, "{body}");
    }
    let r = s
        .post(
            "/v1/accounts",
            json!({"id": "o", "currency": "BRL", "overdraft_limit": "-5"}),
        )
        .await;
    r.assert_problem(422, "invalid_amount");
    assert_eq!(r.body["field"], "overdraft_limit");
    let r = s
        .post("/v1/accounts", json!({"id": "o", "currency": "brl"}))
        .await;
    r.assert_problem(400, "invalid_request");
    assert_eq!(r.body["field"], "currency");
    s.get("/v1/accounts/o")
        .await
        .assert_problem(404, "account_not_found");
    assert_eq!(s.balance("b-src").await, "10.00");
    s.get("/v1/transfers/b1")
        .await
        .assert_problem(404, "transfer_not_found");
    s.get(&format!("/v1/accounts/{long_id}"))
        .await
        .assert_problem(400, "invalid_request");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_wrong_media_types_unknown_routes_and_methods_are_problems() {
    let (s, _dir) = server().await;
    let big = format!(
        r#"{{"id":"big","currency":"BRL","metadata":{{"x":"{}"}}}}"#,
        "a".repeat(70_000)
    );
    s.post_raw("/v1/accounts", big, "application/json")
        .await
        .assert_problem(413, "payload_too_large");
    s.post_raw(
        "/v1/accounts",
        r#"{"id":"t","currency":"BRL"}"#,
        "text/plain",
    )
    .await
    .assert_problem(415, "unsupported_media_type");
    s.get("/v1/nothing-here")
        .await
        .assert_problem(404, "not_found");
    s.get("/").await.assert_problem(404, "not_found");
    let r = s
        .send(s.client.delete(format!("{}/v1/accounts/x", s.base)))
        .await;
    r.assert_problem(405, "method_not_allowed");
    let r = s
        .send(s.client.get(format!("{}/v1/transfers", s.base)))
        .await;
    r.assert_problem(405, "method_not_allowed");
    s.get("/v1/accounts/big")
        .await
        .assert_problem(404, "account_not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_credit_and_debit_an_account_with_the_balance_after() {
    let (s, _dir) = server().await;
    let r = s
        .post("/v1/accounts", json!({"id": "e-1", "currency": "JPY"}))
        .await;
    assert_eq!(r.status, 201);
    let r = s
        .post(
            "/v1/accounts/e-1/entries",
            json!({"id": "e-c1", "type": "credit", "amount": "1000", "description": "sale"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["id"], "e-c1");
    assert_eq!(r.body["account"], "e-1");
    assert_eq!(r.body["type"], "credit");
    assert_eq!(r.body["status"], "committed");
    assert_eq!(r.body["amount"], "1000");
    assert_eq!(r.body["currency"], "JPY");
    assert_eq!(r.body["balance_after"], "1000");
    let original = r.body.clone();
    let r = s
        .post(
            "/v1/accounts/e-1/entries",
            json!({"id": "e-c1", "type": "credit", "amount": "1000", "description": "sale"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, original);
    let r = s
        .post(
            "/v1/accounts/e-1/entries",
            json!({"id": "e-d1", "type": "debit", "amount": "300"}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["balance_after"], "700");
    s.post(
        "/v1/accounts/e-1/entries",
        json!({"id": "e-d2", "type": "debit", "amount": "701"}),
    )
    .await
    .assert_problem(422, "insufficient_funds");
    let r = s
        .post(
            "/v1/accounts/e-1/entries",
            json!({"id": "e-d3", "type": "debit", "amount": "1.5"}),
        )
        .await;
    r.assert_problem(422, "invalid_amount");
    let r = s
        .post(
            "/v1/accounts/e-1/entries",
            json!({"id": "e-d4", "type": "refund", "amount": "1"}),
        )
        .await;
    r.assert_problem(400, "invalid_request");
    assert_eq!(r.body["field"], "type");
    s.post(
        "/v1/accounts/nobody/entries",
        json!({"id": "e-x", "type": "credit", "amount": "1"}),
    )
    .await
    .assert_problem(404, "account_not_found");

    let r = s.get("/v1/accounts/e-1/entries/e-c1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, original);
    s.get("/v1/accounts/e-1/entries/e-none")
        .await
        .assert_problem(404, "entry_not_found");
    assert_eq!(s.balance("e-1").await, "700");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movements_are_newest_first_with_running_balances_and_paginate() {
    let (s, _dir) = server().await;
    s.funded_account("h-1", "100.00").await;
    s.funded_account("h-2", "0").await;
    for i in 0..5 {
        let r = s
            .post(
                "/v1/transfers",
                transfer(&format!("h-t{i}"), "h-1", "h-2", "1.00"),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    let r = s.get("/v1/accounts/h-1/movements?limit=4").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["account"], "h-1");
    assert_eq!(r.body["currency"], "BRL");
    let rows = r.body["movements"].as_array().expect("an array").clone();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0]["id"], "h-t4");
    assert_eq!(rows[0]["kind"], "transfer");
    assert_eq!(rows[0]["direction"], "out");
    assert_eq!(rows[0]["counterparty"], "h-2");
    assert_eq!(rows[0]["amount"], "1.00");
    assert_eq!(rows[0]["balance_after"], "95.00");
    assert_eq!(rows[3]["balance_after"], "98.00");
    let cursor = r.body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let r = s
        .get(&format!(
            "/v1/accounts/h-1/movements?limit=4&cursor={cursor}"
        ))
        .await;
    let rows = r.body["movements"].as_array().expect("an array").clone();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], "h-t0");
    assert_eq!(rows[1]["id"], "fund-h-1");
    assert_eq!(rows[1]["kind"], "entry");
    assert_eq!(rows[1]["direction"], "in");
    assert_eq!(rows[1]["balance_after"], "100.00");
    assert!(r.body["next_cursor"].is_null());

    let r = s.get("/v1/accounts/h-1/movements?limit=0").await;
    r.assert_problem(400, "invalid_request");
    assert_eq!(r.body["field"], "limit");
    let r = s.get("/v1/accounts/h-1/movements?cursor=abc").await;
    assert_eq!(r.body["field"], "cursor");
    let r = s.get("/v1/accounts/h-1/movements?colour=red").await;
    r.assert_problem(400, "invalid_request");
    assert_eq!(r.body["field"], "colour");
    s.get("/v1/accounts/nobody/movements")
        .await
        .assert_problem(404, "account_not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_report_consolidates_each_day() {
    let (s, _dir) = server().await;
    s.funded_account("d-1", "100.00").await;
    s.funded_account("d-2", "0").await;
    let r = s
        .post("/v1/transfers", transfer("d-t1", "d-1", "d-2", "30.00"))
        .await;
    assert_eq!(r.status, 201);
    let today = r.body["created_at"].as_str().expect("a timestamp")[..10].to_owned();
    let r = s
        .get(&format!("/v1/accounts/d-1/daily?from={today}&to={today}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["account"], "d-1");
    assert_eq!(r.body["currency"], "BRL");
    assert_eq!(
        r.body["days"],
        json!([{"date": today, "opening_balance": "0.00", "credits": "100.00", "debits": "30.00",
                "movements": 2, "closing_balance": "70.00"}])
    );
    let r = s
        .get("/v1/accounts/d-1/daily?from=2026-02-01&to=2026-01-01")
        .await;
    r.assert_problem(400, "invalid_request");
    assert_eq!(r.body["field"], "to");
    let r = s
        .get("/v1/accounts/d-1/daily?from=2026-02-30&to=2026-03-01")
        .await;
    assert_eq!(r.body["field"], "from");
    let r = s
        .get("/v1/accounts/d-1/daily?from=2020-01-01&to=2026-01-01")
        .await;
    r.assert_problem(400, "invalid_request");
    let r = s.get("/v1/accounts/d-1/daily?from=2026-01-01").await;
    r.assert_problem(400, "invalid_request");
    assert_eq!(r.body["field"], "to");
    s.get("/v1/accounts/nobody/daily?from=2026-01-01&to=2026-01-02")
        .await
        .assert_problem(404, "account_not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_one_result_per_transfer_in_order() {
    let (s, _dir) = server().await;
    s.funded_account("bt-1", "10.00").await;
    s.funded_account("bt-2", "0").await;
    let body = json!({"transfers": [
        transfer("bt-a", "bt-1", "bt-2", "4.00"),
        transfer("bt-b", "bt-1", "bt-2", "100.00"),
        transfer("bt-c", "bt-1", "bt-2", "0.001"),
        transfer("bt-d", "bt-1", "nobody", "1.00"),
        transfer("bt-e", "bt-1", "bt-2", "1.00"),
    ]});
    let r = s.post("/v1/transfers/batch", body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["atomic"], false);
    let results = r.body["results"].as_array().expect("results").clone();
    let summary: Vec<(String, u64, String)> = results
        .iter()
        .map(|x| {
            let code = x["error"]["code"]
                .as_str()
                .or(x["transfer"]["status"].as_str())
                .unwrap_or("");
            (
                x["id"].as_str().unwrap_or("").to_owned(),
                x["status"].as_u64().unwrap_or(0),
                code.to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("bt-a".into(), 201, "committed".into()),
            ("bt-b".into(), 422, "insufficient_funds".into()),
            ("bt-c".into(), 422, "invalid_amount".into()),
            ("bt-d".into(), 404, "account_not_found".into()),
            ("bt-e".into(), 201, "committed".into()),
        ]
    );
    assert_eq!(s.balance("bt-1").await, "5.00");
    // The same batch again replays: the committed ones answer 200, nothing moves twice.
    let r = s.post("/v1/transfers/batch", body).await;
    assert_eq!(r.body["results"][0]["status"], 200);
    assert_eq!(r.body["results"][4]["status"], 200);
    assert_eq!(s.balance("bt-1").await, "5.00");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_batch_applies_everything_or_nothing() {
    let (s, _dir) = server().await;
    s.funded_account("at-1", "10.00").await;
    s.funded_account("at-2", "0").await;
    let all_good = json!({"atomic": true, "transfers": [
        transfer("at-a", "at-1", "at-2", "1.00"), transfer("at-b", "at-1", "at-2", "2.00"),
    ]});
    let r = s.post("/v1/transfers/batch", all_good).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["atomic"], true);
    assert_eq!(r.body["results"][0]["status"], 201, "{}", r.text);
    assert_eq!(r.body["results"][1]["status"], 201);
    assert_eq!(s.balance("at-1").await, "7.00");

    let one_bad = json!({"atomic": true, "transfers": [
        transfer("at-c", "at-1", "at-2", "1.00"), transfer("at-d", "at-1", "at-2", "50.00"),
    ]});
    let r = s.post("/v1/transfers/batch", one_bad).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["results"][0]["error"]["code"], "batch_aborted");
    assert_eq!(r.body["results"][1]["error"]["code"], "insufficient_funds");
    assert_eq!(
        s.balance("at-1").await,
        "7.00",
        "nothing of the failed batch applied"
    );

    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_bounds_are_enforced() {
    let (s, _dir) = server().await;
    s.post("/v1/transfers/batch", json!({"transfers": []}))
        .await
        .assert_problem(400, "invalid_request");
    let too_many: Vec<Value> = (0..gateway::limits::TRANSFER_BATCH_MAX + 1)
        .map(|i| transfer(&format!("x{i}"), "a", "b", "1"))
        .collect();
    let r = s
        .post("/v1/transfers/batch", json!({"transfers": too_many}))
        .await;
    r.assert_problem(400, "invalid_request");
    assert_eq!(r.body["field"], "transfers");
    let r = s
        .post_with(
            "/v1/transfers/batch",
            json!({"transfers": [transfer("x", "a", "b", "1")]}),
            &[("Idempotency-Key", "k")],
        )
        .await;
    r.assert_problem(400, "invalid_request");
    let r = s
        .post(
            "/v1/transfers/batch",
            json!({"transfers": [{"id": "x", "from": "a"}]}),
        )
        .await;
    r.assert_problem(400, "invalid_request");
    assert_eq!(r.body["field"], "transfers[0].to");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_fits_the_body_limit() {
    let (s, _dir) = server().await;
    s.funded_account("fb-1", "100000.00").await;
    s.funded_account("fb-2", "0").await;
    let n = gateway::limits::TRANSFER_BATCH_MAX;
    let transfers: Vec<Value> = (0..n)
        .map(|i| {
            json!({"id": format!("fb-{i:060}"), "from": "fb-1", "to": "fb-2", "amount": "0.01",
                        "currency": "BRL", "description": "d".repeat(100)})
        })
        .collect();
    let r = s
        .post("/v1/transfers/batch", json!({"transfers": transfers}))
        .await;
    assert_eq!(r.status, 200, "{}", &r.text[..r.text.len().min(500)]);
    let results = r.body["results"].as_array().expect("results");
    assert_eq!(results.len(), n);
    assert!(results.iter().all(|x| x["status"] == 201));
    assert_eq!(
        s.balance("fb-2").await,
        format!("{}.{:02}", n / 100, n % 100)
    );
    s.stop().await;
}

/// Opens a connection and sends a request whose body never completes, so it stays in flight.
async fn stalled_request(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"POST /v1/accounts HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"id\":",
        )
        .await
        .expect("write");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_concurrency_limit_requests_are_shed_with_503() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.limits.concurrency_max = 1;
    let s = TestServer::start(config).await;
    let stalled = stalled_request(s.addr).await;
    // The stalled request holds the only slot once the server has read its headers; poll
    // (bounded) until the shedding shows.
    let mut shed = None;
    for _ in 0..200 {
        let r = s.get("/healthz").await;
        if r.status == 503 {
            shed = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = shed.expect("a request past the limit is shed");
    r.assert_problem(503, "unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    drop(stalled);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_answers_503() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.limits.request_timeout_ms = 200;
    let s = TestServer::start(config).await;
    let mut stalled = stalled_request(s.addr).await;
    let mut answer = vec![0_u8; 4096];
    let n = stalled.read(&mut answer).await.expect("an answer comes");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("\"code\":\"unavailable\""), "{answer}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_rate_gets_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.limits.rate_limit_per_s = 1;
    config.limits.rate_limit_burst = 2;
    let s = TestServer::start(config).await;
    let mut limited = None;
    for _ in 0..10 {
        let r = s.get("/v1/accounts/someone").await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 404);
    }
    let r = limited.expect("the bucket runs dry");
    r.assert_problem(429, "rate_limited");
    assert!(r.header("retry-after").is_some());
    // Health and metrics are not rate limited.
    assert_eq!(s.get("/healthz").await.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_batch_with_an_invalid_item_applies_nothing() {
    let (s, _dir) = server().await;
    s.funded_account("ai-1", "10.00").await;
    s.funded_account("ai-2", "0").await;
    let one_invalid = json!({"atomic": true, "transfers": [
        transfer("ai-e", "ai-1", "ai-2", "1.00"), transfer("ai-f", "ai-1", "ai-2", "-1"),
    ]});
    let r = s.post("/v1/transfers/batch", one_invalid).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["results"][0]["status"], 422);
    assert_eq!(r.body["results"][0]["error"]["code"], "batch_aborted");
    assert_eq!(r.body["results"][1]["error"]["code"], "invalid_amount");
    assert_eq!(
        r.body["results"][1]["error"]["field"],
        "transfers[1].amount"
    );
    assert_eq!(s.balance("ai-1").await, "10.00");
    s.get("/v1/transfers/ai-e")
        .await
        .assert_problem(404, "transfer_not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_speaks_http2_with_prior_knowledge() {
    let (s, _dir) = server().await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let r = client
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .expect("h2c request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{}/v1/accounts", s.base))
        .json(&json!({"id": "h2", "currency": "EUR"}))
        .send()
        .await
        .expect("h2c request");
    assert_eq!(r.status(), 201);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_route_is_served() {
    let (s, _dir) = server().await;
    for (method, template) in gateway::metrics::ROUTES
        .iter()
        .filter(|(m, _)| *m != "OTHER")
    {
        let path = template
            .replace("{entry_id}", "some-entry")
            .replace("{id}", "some-id");
        let r = match *method {
            "GET" => s.get(&path).await,
            _ => s.post(&path, json!({})).await,
        };
        assert_ne!(r.code(), "not_found", "{method} {template}");
        assert_ne!(r.code(), "method_not_allowed", "{method} {template}");
        assert!(r.status < 500, "{method} {template}: {}", r.text);
    }
    // The batch route shadows the transfer whose ID is `batch`; GET still finds it.
    s.get("/v1/transfers/batch")
        .await
        .assert_problem(404, "transfer_not_found");
    s.funded_account("nb-1", "5.00").await;
    s.funded_account("nb-2", "0").await;
    let r = s
        .post("/v1/transfers", transfer("batch", "nb-1", "nb-2", "1.00"))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s.get("/v1/transfers/batch").await;
    assert_eq!((r.status, r.body["id"].as_str()), (200, Some("batch")));
    s.stop().await;
}
