//! The DynamoDB snapshot store against DynamoDB Local (each test starts its own emulator):
//! the shared conformance suite, multi-chunk snapshots, crashes between chunks and manifest,
//! tampering, retention, table checks, and retries through the fault-injecting proxy.
#![cfg(feature = "aws")]

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_sdk_dynamodb::{
    primitives::Blob,
    types::{
        AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
        ScalarAttributeType,
    },
    Client,
};
use rand::{rngs::StdRng, RngCore, SeedableRng};
use saldo_persistence::{
    aws::{self, AwsSettings},
    emulators::Emulator,
    faultproxy::{FaultPlan, FaultProxy},
    limits::DYNAMODB_CHUNK_BYTES,
    snapshot::{dynamodb::DynamoDbSnapshotStore, meta_for},
    testsuite, SnapshotError, SnapshotStore,
};

const TABLE: &str = "saldo-snapshots";

async fn raw_client(endpoint: &str) -> Client {
    Client::new(&aws::sdk_config(&AwsSettings::emulator(endpoint)).await)
}

async fn open(endpoint: &str) -> DynamoDbSnapshotStore {
    DynamoDbSnapshotStore::open(&AwsSettings::emulator(endpoint), TABLE)
        .await
        .expect("open creates the table")
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn chunks_of(len: usize) -> usize {
    // Random bytes do not compress: zstd stores them with a few bytes of framing.
    (len + 1024).div_ceil(DYNAMODB_CHUNK_BYTES)
}

/// Returns the sort keys of a shard's items that start with `prefix`, in order.
async fn sort_keys(client: &Client, shard: u32, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut start = None;
    loop {
        let out = client
            .query()
            .table_name(TABLE)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
            .expression_attribute_values(":pk", AttributeValue::S(format!("shard#{shard:05}")))
            .expression_attribute_values(":p", AttributeValue::S(prefix.into()))
            .projection_expression("sk")
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("query");
        for item in out.items() {
            if let Some(AttributeValue::S(sk)) = item.get("sk") {
                keys.push(sk.clone());
            }
        }
        start = out.last_evaluated_key;
        if start.is_none() {
            return keys;
        }
    }
}

async fn put_chunk_item(client: &Client, shard: u32, sk: &str, data: Vec<u8>, written_at: u64) {
    let item = HashMap::from([
        (
            "pk".to_string(),
            AttributeValue::S(format!("shard#{shard:05}")),
        ),
        ("sk".to_string(), AttributeValue::S(sk.to_string())),
        ("d".to_string(), AttributeValue::B(Blob::new(data))),
        ("t".to_string(), AttributeValue::N(written_at.to_string())),
    ]);
    client
        .put_item()
        .table_name(TABLE)
        .set_item(Some(item))
        .send()
        .await
        .expect("raw put");
}

#[tokio::test]
async fn dynamodb_store_passes_the_snapshot_conformance_suite() {
    let emulator = Emulator::dynamodb();
    let store = open(emulator.endpoint()).await;
    testsuite::snapshot_conformance(&store).await;
    assert_eq!(store.describe(), format!("dynamodb:{TABLE}"));
    // Opening again finds the table as it is.
    open(emulator.endpoint()).await;
}

#[tokio::test]
async fn multi_chunk_snapshots_round_trip_and_retain_deletes_their_chunks() {
    let emulator = Emulator::dynamodb();
    let store = open(emulator.endpoint()).await;
    let client = raw_client(emulator.endpoint()).await;

    // 3 MB of incompressible bytes: 9 chunks each.
    let len = 3_000_000;
    let mut blobs = Vec::new();
    for lsn in [100u64, 200, 300] {
        let data = random_bytes(len, lsn);
        store
            .put(meta_for(1, lsn, [1; 32], lsn, &data), data.clone())
            .await
            .expect("put");
        blobs.push((lsn, data));
    }
    assert_eq!(sort_keys(&client, 1, "c#").await.len(), 3 * chunks_of(len));
    let metas = store.list(1).await.expect("list");
    assert_eq!(
        metas.iter().map(|m| m.lsn).collect::<Vec<_>>(),
        [300, 200, 100]
    );
    for meta in &metas {
        let want = &blobs
            .iter()
            .find(|(lsn, _)| *lsn == meta.lsn)
            .expect("written")
            .1;
        assert!(
            store.get(meta).await.expect("get") == *want,
            "lsn {} reads back",
            meta.lsn
        );
    }

    // A repeated identical put is a no-op; a different one at the same position is refused
    // and leaves the first intact.
    let (lsn, data) = &blobs[2];
    store
        .put(meta_for(1, *lsn, [1; 32], 1, data), data.clone())
        .await
        .expect("an identical put is accepted");
    let other = random_bytes(len, 999);
    let refused = store
        .put(meta_for(1, *lsn, [1; 32], 1, &other), other)
        .await;
    assert!(
        matches!(refused, Err(SnapshotError::Corrupted { lsn: 300, .. })),
        "{refused:?}"
    );
    assert!(store.get(&metas[0]).await.expect("still readable") == *data);

    store.retain(1, 1).await.expect("retain");
    assert_eq!(store.list(1).await.expect("list").len(), 1);
    let chunk_keys = sort_keys(&client, 1, "c#").await;
    assert_eq!(
        chunk_keys.len(),
        chunks_of(len),
        "only the kept snapshot's chunks remain"
    );
    assert!(chunk_keys
        .iter()
        .all(|k| k.starts_with(&format!("c#{:020}#", 300))));
    assert_eq!(sort_keys(&client, 1, "m#").await.len(), 1);
    store.retain(1, 0).await.expect("retain none");
    assert!(
        sort_keys(&client, 1, "c#").await.is_empty()
            && sort_keys(&client, 1, "m#").await.is_empty(),
        "nothing left of shard 1"
    );
    let written = store
        .metrics()
        .iter()
        .find(|s| s.name == "saldo_dynamodb_snapshot_items_deleted_total")
        .map(|s| s.value);
    assert_eq!(written, Some((3 * (chunks_of(len) + 1)) as f64));
}

#[tokio::test]
async fn a_snapshot_without_its_manifest_is_never_listed_and_its_chunks_are_collected() {
    let emulator = Emulator::dynamodb();
    let store = open(emulator.endpoint()).await;
    let client = raw_client(emulator.endpoint()).await;
    let kept = random_bytes(800_000, 1);
    store
        .put(meta_for(2, 50, [0; 32], 0, &kept), kept.clone())
        .await
        .expect("put");
    // A crash after the chunks of lsn 40 and of lsn 60 were written, before their manifests:
    // lsn 40 long ago, lsn 60 just now (a put that may still be running).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    for index in 0..3u64 {
        let sk40 = format!("c#{:020}#{}#{index:06}", 40, "00000000deadbeef");
        put_chunk_item(&client, 2, &sk40, random_bytes(1000, index), 0).await;
        let sk60 = format!("c#{:020}#{}#{index:06}", 60, "00000000deadbeef");
        put_chunk_item(&client, 2, &sk60, random_bytes(1000, index), now).await;
    }
    let metas = store.list(2).await.expect("list");
    assert_eq!(metas.iter().map(|m| m.lsn).collect::<Vec<_>>(), [50]);
    let ghost = meta_for(2, 40, [0; 32], 0, &random_bytes(1000, 0));
    assert!(matches!(
        store.get(&ghost).await,
        Err(SnapshotError::NotFound { shard: 2, lsn: 40 })
    ));
    assert!(store.get(&metas[0]).await.expect("get") == kept);

    // Below the newest manifest and old: collected. Above it: left alone (a put in progress).
    store.retain(2, 1).await.expect("retain");
    let chunk_keys = sort_keys(&client, 2, "c#").await;
    let at = |lsn: u64| {
        let prefix = format!("c#{lsn:020}#");
        chunk_keys
            .iter()
            .filter(|sk| sk.starts_with(&prefix))
            .count()
    };
    assert_eq!(
        at(40),
        0,
        "old orphans below the newest snapshot are deleted"
    );
    assert_eq!(at(60), 3, "chunks above the newest snapshot are left alone");
    assert_eq!(at(50), chunks_of(800_000));
    assert!(store.get(&metas[0]).await.expect("kept snapshot intact") == kept);
}

#[tokio::test]
async fn a_tampered_or_missing_chunk_is_reported_as_corrupted() {
    let emulator = Emulator::dynamodb();
    let store = open(emulator.endpoint()).await;
    let client = raw_client(emulator.endpoint()).await;
    let data = random_bytes(1_000_000, 7);
    let meta = meta_for(5, 77, [7; 32], 0, &data);
    store.put(meta.clone(), data).await.expect("put");
    let chunk_keys = sort_keys(&client, 5, "c#").await;
    assert_eq!(chunk_keys.len(), chunks_of(1_000_000));

    // Same length, other bytes: only the checksum can tell.
    put_chunk_item(
        &client,
        5,
        &chunk_keys[1],
        random_bytes(DYNAMODB_CHUNK_BYTES, 8),
        1,
    )
    .await;
    match store.get(&meta).await {
        Err(SnapshotError::Corrupted {
            shard: 5,
            lsn: 77,
            reason,
        }) => assert!(reason.contains("checksum"), "{reason}"),
        other => panic!("expected corrupted, got {other:?}"),
    }
    // A missing chunk is named.
    client
        .delete_item()
        .table_name(TABLE)
        .key("pk", AttributeValue::S("shard#00005".into()))
        .key("sk", AttributeValue::S(chunk_keys[2].clone()))
        .send()
        .await
        .expect("delete");
    match store.get(&meta).await {
        Err(SnapshotError::Corrupted { reason, .. }) => {
            assert!(reason.contains("chunk 2"), "{reason}")
        }
        other => panic!("expected corrupted, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_or_misshapen_table_is_a_clear_error() {
    let emulator = Emulator::dynamodb();
    let settings = AwsSettings {
        create_resources: false,
        ..AwsSettings::emulator(emulator.endpoint())
    };
    let err = DynamoDbSnapshotStore::open(&settings, "no-such-table")
        .await
        .expect_err("missing table");
    let message = err.to_string();
    assert!(
        message.contains("no-such-table") && message.contains("--create-resources"),
        "{message}"
    );

    // A table keyed differently (only a partition key `id`) is refused, even when creating.
    let client = raw_client(emulator.endpoint()).await;
    client
        .create_table()
        .table_name("wrong-keys")
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("definition"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .send()
        .await
        .expect("create wrong table");
    let err =
        DynamoDbSnapshotStore::open(&AwsSettings::emulator(emulator.endpoint()), "wrong-keys")
            .await
            .expect_err("wrong key schema");
    let message = err.to_string();
    assert!(
        message.contains("wrong-keys") && message.contains("key schema"),
        "{message}"
    );
}

#[tokio::test]
async fn snapshots_survive_throttling_server_errors_lost_answers_and_delays() {
    let emulator = Emulator::dynamodb();
    let proxy = FaultProxy::start(emulator.endpoint(), FaultPlan::none()).await;
    let store = open(&proxy.endpoint()).await;
    proxy.set_plan(FaultPlan {
        throttle_rate: 0.15,
        throttle_error_type: "ProvisionedThroughputExceededException".into(),
        server_error_rate: 0.1,
        drop_after_forward_rate: 0.08,
        delay_rate: 0.05,
        delay: Duration::from_millis(300),
        seed: 6,
    });
    let len = 1_500_000;
    let mut stored = Vec::new();
    let mut failed = 0;
    for i in 1..=6u64 {
        let data = random_bytes(len, i);
        match store
            .put(meta_for(9, i * 10, [2; 32], i, &data), data.clone())
            .await
        {
            Ok(()) => stored.push((i * 10, data)),
            Err(e) => {
                assert!(
                    e.is_retryable(),
                    "only exhausted retries may fail a put: {e}"
                );
                failed += 1;
            }
        }
    }
    assert!(
        stored.len() >= 4,
        "{failed} of 6 puts failed despite retries"
    );
    let metas = store.list(9).await.expect("list under faults");
    for (lsn, data) in &stored {
        let meta = metas
            .iter()
            .find(|m| m.lsn == *lsn)
            .expect("every Ok put is listed");
        assert!(store.get(meta).await.expect("get under faults") == *data);
    }
    store.retain(9, 2).await.expect("retain under faults");
    let kept = store.list(9).await.expect("list");
    assert_eq!(kept.len(), 2.min(metas.len()));

    let stats = proxy.stats();
    assert!(stats.throttled > 0 && stats.server_errors > 0, "{stats:?}");
    assert!(
        stats.dropped_after_forward > 0 && stats.delayed > 0,
        "{stats:?}"
    );
    let metric = |name: &str| {
        store
            .metrics()
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum::<f64>()
    };
    println!(
        "proxy {stats:?}; store retries {} throttles {}; {failed} of 6 puts failed",
        metric("saldo_dynamodb_snapshot_retries_total"),
        metric("saldo_dynamodb_snapshot_throttles_total")
    );
    assert!(metric("saldo_dynamodb_snapshot_retries_total") > 0.0);
    assert!(metric("saldo_dynamodb_snapshot_throttles_total") > 0.0);
    assert_eq!(
        metric("saldo_dynamodb_snapshot_puts_total"),
        stored.len() as f64
    );

    // Without faults: the kept snapshots are whole, and the dropped ones left no chunks.
    proxy.set_plan(FaultPlan::none());
    let client = raw_client(emulator.endpoint()).await;
    let keys = sort_keys(&client, 9, "c#").await;
    for meta in &kept {
        let prefix = format!("c#{:020}#", meta.lsn);
        assert_eq!(
            keys.iter().filter(|k| k.starts_with(&prefix)).count(),
            chunks_of(len)
        );
        assert!(store.get(meta).await.is_ok());
    }
    for meta in metas.iter().skip(2) {
        let prefix = format!("c#{:020}#", meta.lsn);
        assert!(
            !keys.iter().any(|k| k.starts_with(&prefix)),
            "lsn {}",
            meta.lsn
        );
    }
}
