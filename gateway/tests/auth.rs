//! Authentication and authorization with real signed tokens (RS256 and ES256 keys under
//! `tests/fixtures`, HS256 with a test secret): valid, expired, not yet valid, wrong audience,
//! wrong issuer, unknown key, tampered, missing scope, another merchant's account; JWKS from a
//! file and from a URL; rate limiting by token subject.

mod common;

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use common::{test_config, Resp, TestServer};
use gateway::config::{AuthMode, Config};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const ISSUER: &str = "https://issuer.test/pool-1";
const AUDIENCE: &str = "saldo-test-client";
const HS256_SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now_s() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims of a valid token for `sub` with `scope`; tests then break one thing at a time.
fn claims(sub: &str, scope: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope,
           "iat": now_s(), "nbf": now_s() - 10, "exp": now_s() + 3600})
}

fn rs256(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-rsa".into());
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa_private.pem")).expect("key"))
        .expect("a valid RSA key");
    encode(&header, claims, &key).expect("token signs")
}

fn es256(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("test-ec".into());
    let key = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec_private.pem")).expect("key"))
        .expect("a valid EC key");
    encode(&header, claims, &key).expect("token signs")
}

fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )
    .expect("token signs")
}

fn jwt_config(dir: &std::path::Path) -> Config {
    let mut config = test_config(dir);
    config.auth = AuthMode::Jwt;
    config.jwt.issuer = Some(ISSUER.into());
    config.jwt.audience = Some(AUDIENCE.into());
    config.jwt.jwks_file = Some(fixture("jwks.json"));
    config
}

async fn call(
    s: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Resp {
    let url = format!("{}{path}", s.base);
    let mut request = match method {
        "GET" => s.client.get(url),
        _ => s.client.post(url),
    };
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    s.send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_rs256_and_es256_tokens_are_accepted_and_bad_ones_get_401() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start(jwt_config(dir.path())).await;
    let admin = rs256(&claims("ops", "ledger:admin"));
    let r = call(
        &s,
        "POST",
        "/v1/accounts",
        Some(&admin),
        Some(json!({"id": "a1", "currency": "BRL"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = call(
        &s,
        "GET",
        "/v1/accounts/a1",
        Some(&es256(&claims("ops", "ledger:read"))),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let mut bad: Vec<(&str, String)> = Vec::new();
    let mut c = claims("x", "ledger:read");
    c["exp"] = json!(now_s() - 3600);
    bad.push(("expired", rs256(&c)));
    let mut c = claims("x", "ledger:read");
    c["nbf"] = json!(now_s() + 3600);
    bad.push(("not yet valid", rs256(&c)));
    let mut c = claims("x", "ledger:read");
    c["aud"] = json!("another-app");
    bad.push(("wrong audience", rs256(&c)));
    let mut c = claims("x", "ledger:read");
    c["iss"] = json!("https://evil.test");
    bad.push(("wrong issuer", rs256(&c)));
    let mut c = claims("x", "ledger:read");
    c.as_object_mut().expect("an object").remove("exp");
    bad.push(("no expiry", rs256(&c)));
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("unknown-kid".into());
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa_private.pem")).expect("key"))
        .expect("a valid RSA key");
    bad.push((
        "unknown kid",
        encode(&header, &claims("x", "ledger:read"), &key).expect("signs"),
    ));
    let good = rs256(&claims("x", "ledger:read"));
    let mut parts: Vec<&str> = good.split('.').collect();
    let tampered_claims = {
        let mut c = claims("x", "ledger:admin");
        c["sub"] = json!("someone-else");
        base64_url(&serde_json::to_vec(&c).expect("json"))
    };
    parts[1] = &tampered_claims;
    bad.push(("tampered payload", parts.join(".")));
    bad.push((
        "HS256 without a configured secret",
        hs256(&claims("x", "ledger:read")),
    ));
    bad.push(("garbage", "not.a.token".into()));
    for (what, token) in bad {
        let r = call(&s, "GET", "/v1/accounts/a1", Some(&token), None).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        r.assert_problem(401, "unauthenticated");
    }
    let r = call(&s, "GET", "/v1/accounts/a1", None, None).await;
    r.assert_problem(401, "unauthenticated");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"saldo\""));
    let r = s
        .send(
            s.client
                .get(format!("{}/v1/accounts/a1", s.base))
                .basic_auth("u", Some("p")),
        )
        .await;
    r.assert_problem(401, "unauthenticated");
    // Health, readiness, metrics and the OpenAPI document need no token.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(s.get(path).await.status, 200, "{path}");
    }
    s.stop().await;
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_gate_reads_and_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start(jwt_config(dir.path())).await;
    let read = rs256(&claims("r", "openid ledger:read"));
    let write = rs256(&claims("w", "ledger:write"));
    let none = rs256(&claims("n", "openid profile"));
    let r = call(
        &s,
        "POST",
        "/v1/accounts",
        Some(&read),
        Some(json!({"id": "s1", "currency": "BRL"})),
    )
    .await;
    r.assert_problem(403, "forbidden");
    assert!(r.body["detail"]
        .as_str()
        .unwrap_or("")
        .contains("ledger:write"));
    let r = call(
        &s,
        "POST",
        "/v1/accounts",
        Some(&write),
        Some(json!({"id": "s1", "currency": "BRL"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    call(&s, "GET", "/v1/accounts/s1", Some(&write), None)
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(
        call(&s, "GET", "/v1/accounts/s1", Some(&read), None)
            .await
            .status,
        200
    );
    call(&s, "GET", "/v1/accounts/s1", Some(&none), None)
        .await
        .assert_problem(403, "forbidden");
    s.get("/v1/accounts/s1")
        .await
        .assert_problem(401, "unauthenticated");
    // The operator route needs ledger:admin; reads and writes are not enough.
    for token in [&read, &write] {
        call(&s, "GET", "/v1/admin/shards/0/checksum", Some(token), None)
            .await
            .assert_problem(403, "forbidden");
    }
    let admin = rs256(&claims("ops", "ledger:admin"));
    let r = call(&s, "GET", "/v1/admin/shards/0/checksum", Some(&admin), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["checksum"].as_str().map(str::len), Some(64));
    call(
        &s,
        "GET",
        "/v1/admin/shards/99/checksum",
        Some(&admin),
        None,
    )
    .await
    .assert_problem(400, "invalid_request");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_token_sees_and_moves_only_its_own_accounts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start(jwt_config(dir.path())).await;
    let admin = rs256(&claims("ops", "ledger:admin"));
    for id in ["m1:main", "m1:fees", "m2:main"] {
        let r = call(
            &s,
            "POST",
            "/v1/accounts",
            Some(&admin),
            Some(json!({"id": id, "currency": "BRL"})),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    for id in ["m1:main", "m2:main"] {
        let body = json!({"id": format!("fund-{id}"), "type": "credit", "amount": "100"});
        let r = call(
            &s,
            "POST",
            &format!("/v1/accounts/{id}/entries"),
            Some(&admin),
            Some(body),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let mut c = claims("merchant-1", "ledger:read ledger:write");
    c["saldo:accounts"] = json!(["m1:*"]);
    let m1 = rs256(&c);

    assert_eq!(
        call(&s, "GET", "/v1/accounts/m1:main", Some(&m1), None)
            .await
            .status,
        200
    );
    call(&s, "GET", "/v1/accounts/m2:main", Some(&m1), None)
        .await
        .assert_problem(403, "forbidden");
    call(&s, "GET", "/v1/accounts/m2:main/movements", Some(&m1), None)
        .await
        .assert_problem(403, "forbidden");
    call(
        &s,
        "GET",
        "/v1/accounts/m2:main/daily?from=2026-01-01&to=2026-01-02",
        Some(&m1),
        None,
    )
    .await
    .assert_problem(403, "forbidden");
    let steal = json!({"id": "steal", "from": "m2:main", "to": "m1:main", "amount": "50", "currency": "BRL"});
    call(&s, "POST", "/v1/transfers", Some(&m1), Some(steal))
        .await
        .assert_problem(403, "forbidden");
    let entry = json!({"id": "e-steal", "type": "debit", "amount": "50"});
    call(
        &s,
        "POST",
        "/v1/accounts/m2:main/entries",
        Some(&m1),
        Some(entry),
    )
    .await
    .assert_problem(403, "forbidden");
    let open = json!({"id": "m2:new", "currency": "BRL"});
    call(&s, "POST", "/v1/accounts", Some(&m1), Some(open))
        .await
        .assert_problem(403, "forbidden");
    let batch = json!({"transfers": [
        {"id": "b-steal", "from": "m2:main", "to": "m1:main", "amount": "1", "currency": "BRL"}]});
    let r = call(&s, "POST", "/v1/transfers/batch", Some(&m1), Some(batch)).await;
    assert_eq!(
        r.body["results"][0]["error"]["code"], "forbidden",
        "{}",
        r.text
    );

    let pay =
        json!({"id": "pay", "from": "m1:main", "to": "m2:main", "amount": "10", "currency": "BRL"});
    let r = call(&s, "POST", "/v1/transfers", Some(&m1), Some(pay)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        call(&s, "GET", "/v1/transfers/pay", Some(&m1), None)
            .await
            .status,
        200
    );
    let r = call(&s, "GET", "/v1/accounts/m2:main", Some(&admin), None).await;
    assert_eq!(
        r.body["balance"], "110.00",
        "only the merchant's own payment moved money"
    );

    let mut c = claims("merchant-2", "ledger:read");
    c["saldo:accounts"] = json!("m2:main");
    let m2 = rs256(&c);
    call(&s, "GET", "/v1/transfers/fund-m1:main", Some(&m2), None)
        .await
        .assert_problem(404, "transfer_not_found");
    assert_eq!(
        call(&s, "GET", "/v1/transfers/pay", Some(&m2), None)
            .await
            .status,
        200
    );
    s.stop().await;
}

/// Issue 13, defect 7: a merchant who guesses another merchant's transfer or entry ID learns
/// nothing about it: the conflict names no fields, the transfer reads as not found, and the
/// other merchant still sees the differing fields of its own reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_learns_nothing_of_another_merchants_movement_by_guessing_its_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start(jwt_config(dir.path())).await;
    let admin = rs256(&claims("ops", "ledger:admin"));
    for id in ["m1:main", "m1:shop", "m2:main"] {
        let r = call(
            &s,
            "POST",
            "/v1/accounts",
            Some(&admin),
            Some(json!({"id": id, "currency": "BRL"})),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let body = json!({"id": format!("fund-{id}"), "type": "credit", "amount": "100"});
        let path = format!("/v1/accounts/{id}/entries");
        let r = call(&s, "POST", &path, Some(&admin), Some(body)).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let token = |sub: &str, accounts: &str| {
        let mut c = claims(sub, "ledger:read ledger:write");
        c["saldo:accounts"] = json!([accounts]);
        rs256(&c)
    };
    let (m1, m2) = (token("merchant-1", "m1:*"), token("merchant-2", "m2:*"));
    let secret = json!({"id": "m1-pay-77", "from": "m1:main", "to": "m1:shop",
        "amount": "42.17", "currency": "BRL", "description": "secret supplier"});
    let r = call(&s, "POST", "/v1/transfers", Some(&m1), Some(secret)).await;
    assert_eq!(r.status, 201, "{}", r.text);

    let guess = json!({"id": "m1-pay-77", "from": "m2:main", "to": "m1:shop",
        "amount": "1", "currency": "BRL"});
    let r = call(&s, "POST", "/v1/transfers", Some(&m2), Some(guess)).await;
    r.assert_problem(409, "id_conflict");
    assert!(r.body.get("fields").is_none(), "{}", r.text);
    for leak in ["42.17", "secret", "m1:main", "amount", "description"] {
        assert!(
            !r.text.contains(leak),
            "the conflict leaks {leak:?}: {}",
            r.text
        );
    }
    let entry = json!({"id": "m1-pay-77", "type": "credit", "amount": "1"});
    let r = call(
        &s,
        "POST",
        "/v1/accounts/m2:main/entries",
        Some(&m2),
        Some(entry),
    )
    .await;
    r.assert_problem(409, "id_conflict");
    assert!(r.body.get("fields").is_none(), "{}", r.text);
    call(&s, "GET", "/v1/transfers/m1-pay-77", Some(&m2), None)
        .await
        .assert_problem(404, "transfer_not_found");

    // The owner reusing its own ID with other content is told what differs.
    let reuse = json!({"id": "m1-pay-77", "from": "m1:main", "to": "m1:shop",
        "amount": "43.00", "currency": "BRL", "description": "secret supplier"});
    let r = call(&s, "POST", "/v1/transfers", Some(&m1), Some(reuse)).await;
    r.assert_problem(409, "id_conflict");
    assert_eq!(r.body["fields"], json!(["amount"]), "{}", r.text);
    let r = call(&s, "GET", "/v1/accounts/m2:main", Some(&admin), None).await;
    assert_eq!(r.body["balance"], "100.00", "nothing changed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cognito_access_tokens_match_the_audience_on_client_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start(jwt_config(dir.path())).await;
    // A Cognito access token: no `aud`, `client_id` instead, resource-server scopes.
    let token = rs256(&json!({
        "iss": ISSUER, "client_id": AUDIENCE, "token_use": "access", "sub": "svc",
        "scope": "https://ledger.example/ledger:read", "exp": now_s() + 600, "iat": now_s()
    }));
    let r = call(&s, "GET", "/v1/accounts/nobody", Some(&token), None).await;
    r.assert_problem(404, "account_not_found");
    let other = rs256(&json!({
        "iss": ISSUER, "client_id": "another-client", "scope": "ledger:read", "exp": now_s() + 600
    }));
    call(&s, "GET", "/v1/accounts/nobody", Some(&other), None)
        .await
        .assert_problem(401, "unauthenticated");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_tokens_work_with_a_development_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = jwt_config(dir.path());
    config.jwt.jwks_file = None;
    config.jwt.hs256_secret = Some(HS256_SECRET.into());
    let s = TestServer::start(config).await;
    let r = call(
        &s,
        "GET",
        "/v1/accounts/x",
        Some(&hs256(&claims("dev", "ledger:read"))),
        None,
    )
    .await;
    r.assert_problem(404, "account_not_found");
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims("dev", "ledger:read"),
        &EncodingKey::from_secret(b"wrong-secret-wrong-secret-wrong-secret"),
    )
    .expect("signs");
    call(&s, "GET", "/v1/accounts/x", Some(&forged), None)
        .await
        .assert_problem(401, "unauthenticated");
    // No JWKS configured: RS256 tokens are refused.
    call(
        &s,
        "GET",
        "/v1/accounts/x",
        Some(&rs256(&claims("dev", "ledger:read"))),
        None,
    )
    .await
    .assert_problem(401, "unauthenticated");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_from_a_url_is_fetched_when_a_key_is_unknown() {
    // A JWKS endpoint on 127.0.0.1 that fails until `up` is set.
    let up = Arc::new(AtomicBool::new(false));
    let jwks = std::fs::read_to_string(fixture("jwks.json")).expect("jwks");
    let app = {
        let up = up.clone();
        axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let up = up.load(Ordering::SeqCst);
                let jwks = jwks.clone();
                async move {
                    if up {
                        (axum::http::StatusCode::OK, jwks)
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new())
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let idp = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = jwt_config(dir.path());
    config.jwt.jwks_file = None;
    config.jwt.jwks_url = Some(format!("http://{addr}/.well-known/jwks.json"));
    let s = TestServer::start(config).await;
    up.store(true, Ordering::SeqCst);
    let r = call(
        &s,
        "GET",
        "/v1/accounts/x",
        Some(&es256(&claims("u", "ledger:read"))),
        None,
    )
    .await;
    r.assert_problem(404, "account_not_found");
    let r = call(
        &s,
        "GET",
        "/v1/accounts/x",
        Some(&rs256(&claims("u", "ledger:read"))),
        None,
    )
    .await;
    r.assert_problem(404, "account_not_found");
    s.stop().await;
    let _ = stop_tx.send(());
    idp.await.expect("idp joins").expect("idp stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_counts_each_token_subject_separately() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = jwt_config(dir.path());
    config.limits.rate_limit_per_s = 1;
    config.limits.rate_limit_burst = 1;
    let s = TestServer::start(config).await;
    let alice = rs256(&claims("alice", "ledger:read"));
    let bob = rs256(&claims("bob", "ledger:read"));
    let mut limited = None;
    for _ in 0..10 {
        let r = call(&s, "GET", "/v1/accounts/x", Some(&alice), None).await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("alice runs out of tokens");
    r.assert_problem(429, "rate_limited");
    assert!(r.header("retry-after").is_some());
    let r = call(&s, "GET", "/v1/accounts/x", Some(&bob), None).await;
    r.assert_problem(404, "account_not_found");
    s.stop().await;
}
