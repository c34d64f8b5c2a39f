//! A restart keeps everything: stop the server gracefully, start a new one on the same data
//! directory (fsync on), and check balances, histories and idempotency.

mod common;

use common::{test_config, TestServer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_histories_and_idempotency_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.fsync = true;

    let s = TestServer::start(config.clone()).await;
    s.funded_account("rs-1", "100.00").await;
    s.funded_account("rs-2", "0").await;
    let t =
        json!({"id": "rs-t1", "from": "rs-1", "to": "rs-2", "amount": "25.00", "currency": "BRL"});
    let r = s.post("/v1/transfers", t.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let original = r.body.clone();
    let r = s
        .post_with(
            "/v1/accounts/rs-2/entries",
            json!({"type": "debit", "amount": "5.00"}),
            &[("Idempotency-Key", "rs-e1")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let entry = r.body.clone();
    let account_before = s.get("/v1/accounts/rs-1").await.body;
    let movements_before = s.get("/v1/accounts/rs-2/movements").await.body;
    s.stop().await;

    let s = TestServer::start(config).await;
    assert_eq!(s.get("/v1/accounts/rs-1").await.body, account_before);
    assert_eq!(
        s.get("/v1/accounts/rs-2/movements").await.body,
        movements_before
    );
    assert_eq!(s.balance("rs-2").await, "20.00");

    let r = s.post("/v1/transfers", t).await;
    assert_eq!(
        r.status, 200,
        "a retry after the restart replays: {}",
        r.text
    );
    assert_eq!(without_created_at(&r.body), without_created_at(&original));
    let r = s
        .post_with(
            "/v1/accounts/rs-2/entries",
            json!({"type": "debit", "amount": "5.00"}),
            &[("Idempotency-Key", "rs-e1")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(without_created_at(&r.body), without_created_at(&entry));
    let conflicting =
        json!({"id": "rs-t1", "from": "rs-1", "to": "rs-2", "amount": "26.00", "currency": "BRL"});
    s.post("/v1/transfers", conflicting)
        .await
        .assert_problem(409, "id_conflict");
    assert_eq!(s.balance("rs-1").await, "75.00");
    assert_eq!(s.balance("rs-2").await, "20.00");
    s.stop().await;
}

/// Returns the body without `created_at`: the engine restores a movement's creation time from
/// its stream event, a few microseconds after the time the live node answered with (see
/// `a_replay_after_a_restart_answers_the_original_created_at`).
fn without_created_at(body: &serde_json::Value) -> serde_json::Value {
    let mut body = body.clone();
    body.as_object_mut()
        .expect("an object")
        .remove("created_at");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_a_restart_answers_the_original_created_at() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = test_config(dir.path());
    let s = TestServer::start(config.clone()).await;
    s.funded_account("ca-1", "100.00").await;
    s.funded_account("ca-2", "0").await;
    let t =
        json!({"id": "ca-t1", "from": "ca-1", "to": "ca-2", "amount": "1.00", "currency": "BRL"});
    let original = s.post("/v1/transfers", t.clone()).await.body;
    s.stop().await;
    let s = TestServer::start(config).await;
    assert_eq!(s.post("/v1/transfers", t).await.body, original);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_refuses_another_shard_count() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = test_config(dir.path());
    let ledger = gateway::server::open_ledger(&config)
        .await
        .expect("first start records 4 shards");
    ledger.shutdown().await;
    drop(ledger);
    let mut other = test_config(dir.path());
    other.engine.shards = 2;
    let err = gateway::server::open_ledger(&other)
        .await
        .err()
        .expect("another count is refused");
    let text = err.to_string();
    assert!(
        text.contains("created with 4 shards") && text.contains("--shards 4"),
        "{text}"
    );
    // The original count still opens.
    let again = gateway::server::open_ledger(&config)
        .await
        .expect("same count opens");
    again.shutdown().await;
}
