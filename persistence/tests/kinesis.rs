//! The Kinesis write-ahead stream against kinesalite: the conformance suite, restarts and other
//! processes, the reader rules (duplicates, fenced epochs, corruption), limits, concurrency,
//! resharding, and faults injected by `faultproxy` (throttling, 5xx, lost answers, delays).
#![cfg(feature = "aws")]

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use aws_sdk_kinesis::{primitives::Blob, Client};
use saldo_persistence::{
    aws::{self, AwsSettings},
    emulators::Emulator,
    faultproxy::{FaultPlan, FaultProxy},
    limits::{KINESIS_SHARD_BYTES_PER_SEC, WAL_RECORD_BYTES_MAX},
    metrics::MetricSample,
    record::{self, EncodedRecord, RecordHash},
    testsuite,
    wal::kinesis::{frame, partition_key, KinesisWal},
    Wal, WalError,
};

async fn open(endpoint: &str, stream: &str, shards: u32) -> KinesisWal {
    KinesisWal::open(&AwsSettings::emulator(endpoint), stream, shards)
        .await
        .expect("open kinesis wal")
}

async fn sdk_client(endpoint: &str) -> Client {
    Client::new(&aws::sdk_config(&AwsSettings::emulator(endpoint)).await)
}

fn metric(samples: &[MetricSample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// Puts `bytes` (already framed) for `shard` straight into the stream, where saldo would.
async fn put_raw(client: &Client, wal: &KinesisWal, shard: u32, data: Vec<u8>) {
    let (_, hash_key) = wal.route(shard);
    client
        .put_record()
        .stream_name(wal.stream_name())
        .partition_key(partition_key(shard))
        .explicit_hash_key(hash_key)
        .data(Blob::new(data))
        .send()
        .await
        .expect("put_record");
}

#[tokio::test]
async fn kinesis_passes_the_wal_conformance_suite() {
    let emulator = Emulator::kinesis();
    let wal = open(emulator.endpoint(), "conformance", 2).await;
    assert_eq!(wal.describe(), "kinesis:conformance");
    testsuite::wal_conformance(&wal).await;
    let samples = wal.metrics();
    assert_eq!(metric(&samples, "saldo_kinesis_shard_records_total"), 26.0);
    assert!(metric(&samples, "saldo_kinesis_put_calls_total") >= 1.0);
    assert_eq!(metric(&samples, "saldo_kinesis_appends_in_flight"), 0.0);
}

#[tokio::test]
async fn kinesis_records_the_shard_count_as_a_stream_tag() {
    let emulator = Emulator::kinesis();
    let first = open(emulator.endpoint(), "layout", 2).await;
    // A second handle opened later: another node on a fresh data directory.
    let second = open(emulator.endpoint(), "layout", 2).await;
    testsuite::shard_count_conformance(&first, &second).await;
    let tags = sdk_client(emulator.endpoint())
        .await
        .list_tags_for_stream()
        .stream_name("layout")
        .send()
        .await
        .expect("list tags");
    assert_eq!(
        tags.tags()
            .iter()
            .map(|t| (t.key(), t.value()))
            .collect::<Vec<_>>(),
        vec![("saldo-shards-4", Some("4"))]
    );
    let (a, b) = (
        open(emulator.endpoint(), "layout-race", 1).await,
        open(emulator.endpoint(), "layout-race", 1).await,
    );
    testsuite::shard_count_race_conformance(&a, &b).await;
}

#[tokio::test]
async fn kinesis_reports_its_retention() {
    let emulator = Emulator::kinesis();
    let wal = open(emulator.endpoint(), "retention", 1).await;
    // kinesalite creates streams with AWS's default (and minimum) retention, 24 h.
    assert_eq!(wal.retention_ms().await.unwrap(), Some(24 * 3_600_000));
}

#[tokio::test]
async fn a_missing_stream_is_an_error_naming_it_and_the_flag() {
    let emulator = Emulator::kinesis();
    let mut settings = AwsSettings::emulator(emulator.endpoint());
    settings.create_resources = false;
    let err = KinesisWal::open(&settings, "nowhere", 1).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("nowhere") && message.contains("--create-resources"),
        "{message}"
    );
}

#[tokio::test]
async fn a_second_handle_sees_the_same_tails_and_records_and_later_appends() {
    let emulator = Emulator::kinesis();
    let first = open(emulator.endpoint(), "restart", 3).await;
    let written: Vec<_> = {
        let mut all = Vec::new();
        for shard in 0..4 {
            all.push(testsuite::append_records(&first, shard, 5, 2).await);
        }
        all
    };
    let second = open(emulator.endpoint(), "restart", 3).await;
    for shard in 0..4u32 {
        assert_eq!(
            first.tail(shard).await.unwrap(),
            second.tail(shard).await.unwrap()
        );
        let got = second.read(shard, 0, 100).await.unwrap();
        let want = &written[shard as usize];
        assert_eq!(
            got.iter().map(|r| r.hash).collect::<Vec<_>>(),
            want.iter().map(|r| r.hash).collect::<Vec<_>>()
        );
    }
    // Appended by the first after the second opened: the second reads past its end.
    let more = testsuite::append_records(&first, 2, 3, 1).await;
    let got = second.read(2, 10, 100).await.unwrap();
    assert_eq!(
        got.iter().map(|r| r.hash).collect::<Vec<_>>(),
        more.iter().map(|r| r.hash).collect::<Vec<_>>()
    );
    assert_eq!(second.tail(2).await.unwrap().map(|t| t.last_lsn), Some(13));
    // The second can now continue the stream itself (a new owner after a restart).
    testsuite::append_records(&second, 2, 1, 1).await;
    assert_eq!(first.read(2, 13, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn readers_skip_duplicates_ignore_fenced_epochs_and_report_corruption() {
    let emulator = Emulator::kinesis();
    let wal = open(emulator.endpoint(), "rules", 2).await;
    let client = sdk_client(emulator.endpoint()).await;

    // A duplicate (a retried put whose first answer was lost) is skipped.
    let r1 = record::encode(0, 1, 1, 2, &[0; 32], b"one");
    wal.append(0, r1.clone()).await.unwrap();
    put_raw(&client, &wal, 0, frame(&r1.bytes).unwrap()).await;
    let r2 = record::encode(0, 1, 3, 3, &r1.hash, b"two");
    wal.append(0, r2.clone()).await.unwrap();

    // A new owner (epoch 2) continues; then the fenced owner (epoch 1) writes once more.
    let r3 = record::encode(0, 2, 4, 4, &r2.hash, b"three");
    wal.append(0, r3.clone()).await.unwrap();
    let zombie = record::encode(0, 1, 5, 5, &r3.hash, b"zombie");
    put_raw(&client, &wal, 0, frame(&zombie.bytes).unwrap()).await;
    let refused = wal
        .append(0, record::encode(0, 1, 5, 5, &r3.hash, b"zombie"))
        .await;
    assert!(
        matches!(refused, Err(WalError::OutOfOrder { .. })),
        "{refused:?}"
    );

    let reader = open(emulator.endpoint(), "rules", 2).await;
    let got = reader.read(0, 0, 100).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|r| (r.first_lsn, r.epoch))
            .collect::<Vec<_>>(),
        vec![(1, 1), (3, 1), (4, 2)]
    );
    let samples = reader.metrics();
    assert_eq!(
        metric(&samples, "saldo_kinesis_duplicates_skipped_total"),
        1.0
    );
    assert_eq!(metric(&samples, "saldo_kinesis_fenced_skipped_total"), 1.0);
    // The writer sees the same when it catches up, and can go on.
    assert_eq!(wal.tail(0).await.unwrap().map(|t| t.last_lsn), Some(4));
    wal.append(0, record::encode(0, 2, 5, 5, &r3.hash, b"four"))
        .await
        .unwrap();

    // A record with a bad CRC on shard 1: shard 1 is corrupted, named by its location.
    let good = record::encode(1, 1, 1, 1, &[0; 32], b"good");
    wal.append(1, good.clone()).await.unwrap();
    let mut bad = record::encode(1, 1, 2, 2, &good.hash, b"flipped").bytes;
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    put_raw(&client, &wal, 1, frame(&bad).unwrap()).await;
    let (kinesis_shard_id, _) = wal.route(1);
    for handle in [&wal, &open(emulator.endpoint(), "rules", 2).await] {
        match handle.read(1, 1, 10).await {
            Err(WalError::Corrupted {
                shard,
                location,
                reason,
            }) => {
                assert_eq!(shard, 1);
                assert!(location.contains(&kinesis_shard_id), "{location}");
                assert!(location.contains("sequence number"), "{location}");
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected Corrupted, got {other:?}"),
        }
        assert!(matches!(
            handle.tail(1).await,
            Err(WalError::Corrupted { .. })
        ));
    }
    // The other shard goes on.
    assert_eq!(wal.read(0, 0, 100).await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_record_over_the_limit_is_refused_before_it_is_sent() {
    let emulator = Emulator::kinesis();
    let wal = open(emulator.endpoint(), "limits", 1).await;
    let small = record::encode(0, 1, 1, 1, &[0; 32], b"x");
    let too_large = EncodedRecord {
        bytes: vec![0; WAL_RECORD_BYTES_MAX + 1],
        ..small
    };
    match wal.append(0, too_large).await {
        Err(WalError::RecordTooLarge { size_bytes, .. }) => {
            assert_eq!(size_bytes, WAL_RECORD_BYTES_MAX + 1)
        }
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert_eq!(wal.tail(0).await.unwrap(), None);
}

#[tokio::test]
async fn sixteen_shards_appending_concurrently_keep_their_order() {
    let emulator = Emulator::kinesis();
    let wal = Arc::new(open(emulator.endpoint(), "concurrent", 4).await);
    let mut tasks = Vec::new();
    for shard in 0..16u32 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let (mut next, mut prev) = (1u64, [0u8; 32]);
            let mut hashes = Vec::new();
            let mut latencies = Vec::new();
            for i in 0..40u64 {
                let n = 1 + (i % 5);
                let payload = format!("shard {shard} record {i}").repeat(20).into_bytes();
                let rec = record::encode(shard, 1, next, next + n - 1, &prev, &payload);
                let started = Instant::now();
                wal.append(shard, rec.clone()).await.expect("append");
                latencies.push(started.elapsed());
                next = rec.last_lsn + 1;
                prev = rec.hash;
                hashes.push(rec.hash);
            }
            (shard, hashes, latencies)
        }));
    }
    let mut latencies = Vec::new();
    let mut written: HashMap<u32, Vec<RecordHash>> = HashMap::new();
    for task in tasks {
        let (shard, hashes, l) = task.await.unwrap();
        written.insert(shard, hashes);
        latencies.extend(l);
    }
    let reader = open(emulator.endpoint(), "concurrent", 4).await;
    for (shard, hashes) in &written {
        for handle in [&*wal, &reader] {
            let got = handle.read(*shard, 0, 1_000).await.unwrap();
            assert_eq!(
                &got.iter().map(|r| r.hash).collect::<Vec<_>>(),
                hashes,
                "shard {shard}"
            );
        }
    }
    latencies.sort();
    let samples = wal.metrics();
    let calls = metric(&samples, "saldo_kinesis_put_calls_total");
    let mean_ms = metric(&samples, "saldo_kinesis_put_latency_seconds_sum") * 1e3 / calls;
    println!(
        "640 appends by 16 shards: median append {:?}, p99 {:?}; {calls} PutRecords calls \
         ({:.1} records per call), mean PutRecords {mean_ms:.1} ms",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        640.0 / calls
    );
    assert!(
        calls < 640.0,
        "appends of several shards share PutRecords calls"
    );
}

#[tokio::test]
async fn a_resharded_stream_is_read_parents_before_children() {
    let emulator = Emulator::kinesis();
    let wal = open(emulator.endpoint(), "reshard", 1).await;
    let before: Vec<_> = {
        let mut v = Vec::new();
        for shard in 0..4 {
            v.push(testsuite::append_records(&wal, shard, 3, 1).await);
        }
        v
    };
    let client = sdk_client(emulator.endpoint()).await;
    let (parent, _) = wal.route(0);
    client
        .split_shard()
        .stream_name("reshard")
        .shard_to_split(&parent)
        .new_starting_hash_key((u128::MAX / 2).to_string())
        .send()
        .await
        .expect("split_shard");
    drop(wal);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A restarted node writes to the children and reads the parent first.
    let wal = open(emulator.endpoint(), "reshard", 1).await;
    let (child0, _) = wal.route(0);
    assert_ne!(child0, parent);
    for shard in 0..4u32 {
        let after = testsuite::append_records(&wal, shard, 2, 1).await;
        let reader = open(emulator.endpoint(), "reshard", 1).await;
        let got = reader.read(shard, 0, 100).await.unwrap();
        let want: Vec<_> = before[shard as usize]
            .iter()
            .chain(&after)
            .map(|r| r.hash)
            .collect();
        assert_eq!(got.iter().map(|r| r.hash).collect::<Vec<_>>(), want);
    }
}

/// Writes `n` as a postcard varint.
fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends one event framed as `engine::event::encode_into` does: `u32` length, then the
/// postcard encoding (variant index, fields in order).
fn event(payload: &mut Vec<u8>, body: Vec<u8>) {
    payload.extend_from_slice(&(body.len() as u32).to_le_bytes());
    payload.extend_from_slice(&body);
}

/// A transfer's fields as postcard writes `engine::types::Transfer`.
fn transfer(out: &mut Vec<u8>, id: &str, debit: &str, credit: &str, amount_minor: i64) {
    string(out, id);
    string(out, debit);
    string(out, credit);
    varint(out, ((amount_minor << 1) ^ (amount_minor >> 63)) as u64); // zig-zag
    out.extend_from_slice(b"BRL");
    out.push(0); // description_opt: None
}

/// The events of `n` transfers the way a shard records them under load: HoldPlaced and
/// HoldCommitted of a transfer homed here, and the CreditApplied of another transfer, with
/// loadtest-style IDs, random accounts among 10,000 and amounts, microsecond times.
fn realistic_payload(n: usize, seed: &mut u64) -> Vec<u8> {
    let mut rnd = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let mut payload = Vec::new();
    let mut at = 1_763_880_000_000_000u64 + rnd() % 1_000_000;
    for _ in 0..n {
        let index = rnd() % 10_000_000;
        let id = format!("lt7f3a9c-t{index}");
        let debit = format!("acct-{:06}", rnd() % 10_000);
        let credit = format!("acct-{:06}", rnd() % 10_000);
        let amount = (rnd() % 100_000) as i64 + 1;
        at += rnd() % 200;
        let mut hold = Vec::new();
        varint(&mut hold, 3); // HoldPlaced
        transfer(&mut hold, &id, &debit, &credit, amount);
        hold.push(0); // batch_opt: None
        varint(&mut hold, at);
        event(&mut payload, hold);
        // The credit of another transfer, coming from another shard (with 2+ shards most
        // transfers cross shards, so a record rarely repeats its own transfers' fields).
        let mut credit_ev = Vec::new();
        varint(&mut credit_ev, 5); // CreditApplied
        let other_id = format!("lt7f3a9c-t{}", rnd() % 10_000_000);
        let other_debit = format!("acct-{:06}", rnd() % 10_000);
        let other_credit = format!("acct-{:06}", rnd() % 10_000);
        transfer(
            &mut credit_ev,
            &other_id,
            &other_debit,
            &other_credit,
            (rnd() % 100_000) as i64 + 1,
        );
        varint(&mut credit_ev, at + 150);
        event(&mut payload, credit_ev);
        let mut commit = Vec::new();
        varint(&mut commit, 7); // HoldCommitted
        string(&mut commit, &id);
        string(&mut commit, &debit);
        varint(&mut commit, at + 300);
        event(&mut payload, commit);
    }
    payload
}

#[test]
fn compression_of_realistic_records_sets_the_events_per_kinesis_shard() {
    let mut seed = 0x5eed_1234_abcd_0001u64;
    println!("transfers/record events/record raw B/event stored B/event ratio events/s/kshard");
    for transfers in [1usize, 10, 100, 1_000] {
        let payload = realistic_payload(transfers, &mut seed);
        let events = 3 * transfers as u64;
        let rec = record::encode(5, 1, 1, events, &[7; 32], &payload);
        let stored = frame(&rec.bytes).unwrap().len() + partition_key(5).len();
        let raw_per_event = rec.bytes.len() as f64 / events as f64;
        let stored_per_event = stored as f64 / events as f64;
        let by_bytes = f64::from(KINESIS_SHARD_BYTES_PER_SEC) / stored_per_event;
        // One record per group commit: 1,000 records/s also binds small groups.
        let by_records = 1_000.0 * events as f64;
        println!(
            "{transfers:>16} {events:>17} {raw_per_event:>10.1} {stored_per_event:>13.1} \
             {:>5.2} {:>14.0}",
            rec.bytes.len() as f64 / stored as f64,
            by_bytes.min(by_records)
        );
        if transfers >= 100 {
            assert!(
                stored * 2 < rec.bytes.len(),
                "zstd at least halves large groups"
            );
        }
    }
}

#[tokio::test]
async fn appends_survive_throttling_server_errors_lost_answers_and_delays() {
    let emulator = Emulator::kinesis();
    let proxy = FaultProxy::start(emulator.endpoint(), FaultPlan::none()).await;
    let wal = Arc::new(open(&proxy.endpoint(), "faults", 2).await);
    proxy.set_plan(FaultPlan {
        throttle_rate: 0.20,
        throttle_error_type: "ProvisionedThroughputExceededException".into(),
        server_error_rate: 0.05,
        drop_after_forward_rate: 0.05,
        delay_rate: 0.10,
        delay: Duration::from_millis(40),
        seed: 42,
    });
    const SHARDS: u32 = 6;
    const RECORDS: usize = 50;
    let mut tasks = Vec::new();
    for shard in 0..SHARDS {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked: Vec<EncodedRecord> = Vec::new();
            let mut failures = 0;
            let (mut next, mut prev) = (1u64, [0u8; 32]);
            let mut i = 0;
            while acked.len() < RECORDS && i < 4 * RECORDS {
                i += 1;
                let payload = format!("shard {shard} attempt {i}").into_bytes();
                let rec = record::encode(shard, 1, next, next + 1, &prev, &payload);
                match wal.append(shard, rec.clone()).await {
                    Ok(()) => {
                        next = rec.last_lsn + 1;
                        prev = rec.hash;
                        acked.push(rec);
                    }
                    Err(err) => {
                        // As the engine would: learn the tail (the record may be stored).
                        failures += 1;
                        eprintln!("shard {shard}: append failed: {err}");
                        let mut tail_result = wal.tail(shard).await;
                        for _ in 0..10 {
                            match &tail_result {
                                Ok(_) => break,
                                Err(err) => eprintln!("shard {shard}: tail failed: {err}"),
                            }
                            tail_result = wal.tail(shard).await;
                        }
                        let tail = tail_result.expect("tail after retries");
                        (next, prev) = tail.map_or((1, [0; 32]), |t| (t.last_lsn + 1, t.hash));
                    }
                }
            }
            (shard, acked, failures)
        }));
    }
    let mut acked_by_shard = HashMap::new();
    let mut failures_total = 0;
    for task in tasks {
        let (shard, acked, failures) = task.await.unwrap();
        failures_total += failures;
        acked_by_shard.insert(shard, acked);
    }
    let stats = proxy.stats();
    proxy.set_plan(FaultPlan::none());
    let samples = wal.metrics();
    println!(
        "proxy {stats:?}; retries {}, throttles {}, put failures {failures_total}",
        metric(&samples, "saldo_kinesis_retries_total"),
        metric(&samples, "saldo_kinesis_throttles_total")
    );
    assert!(stats.throttled > 0, "{stats:?}");
    assert!(stats.server_errors > 0, "{stats:?}");
    assert!(stats.dropped_after_forward > 0, "{stats:?}");
    assert!(stats.delayed > 0, "{stats:?}");
    assert!(metric(&samples, "saldo_kinesis_retries_total") > 0.0);
    assert!(metric(&samples, "saldo_kinesis_throttles_total") > 0.0);

    // A fresh reader straight on the emulator, and the writer itself, read every acknowledged
    // record exactly once, in order; duplicates left by retried puts are skipped.
    let reader = open(emulator.endpoint(), "faults", 2).await;
    for (shard, acked) in &acked_by_shard {
        assert_eq!(acked.len(), RECORDS, "shard {shard} reached its count");
        for handle in [&*wal, &reader] {
            let mut got = Vec::new();
            let mut after = 0;
            loop {
                let page = handle.read(*shard, after, 1_000).await.unwrap();
                let Some(last) = page.last() else { break };
                after = last.last_lsn;
                got.extend(page);
            }
            for pair in got.windows(2) {
                assert_eq!(pair[1].first_lsn, pair[0].last_lsn + 1, "contiguous");
                assert_eq!(pair[1].prev_hash, pair[0].hash, "chained");
            }
            let position: HashMap<RecordHash, usize> =
                got.iter().enumerate().map(|(i, r)| (r.hash, i)).collect();
            let mut last_pos = None;
            for rec in acked {
                let pos = *position.get(&rec.hash).unwrap_or_else(|| {
                    panic!("acked record lsn {} of shard {shard} lost", rec.first_lsn)
                });
                assert!(last_pos < Some(pos), "in order");
                last_pos = Some(pos);
            }
            // Each record once (a record whose append failed may be there too: it was stored
            // and the writer went on from it).
            assert_eq!(position.len(), got.len(), "shard {shard}: no record twice");
            assert!(got.len() >= acked.len());
        }
    }
    println!(
        "reader skipped {} duplicates",
        metric(&reader.metrics(), "saldo_kinesis_duplicates_skipped_total")
    );
}
