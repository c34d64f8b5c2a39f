//! `saldo shard …` on the file backends, beside a live node: list, snapshots, restore at a
//! position equals what the node had there, verify against the node, exports, and corruption
//! reported with exit code 1. (The same tools on Kinesis + DynamoDB: aws.rs.)

mod common;

use std::process::{Command, Output};

use common::{test_config, TestServer};
use serde_json::{json, Value};

fn saldo(data_dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_saldo"))
        .arg("shard")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("saldo runs")
}

fn json_out(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn checksum(s: &TestServer, shard: u32) -> (u64, String) {
    let r = s.get(&format!("/v1/admin/shards/{shard}/checksum")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    (
        r.body["lsn"].as_u64().expect("lsn"),
        r.body["checksum"].as_str().expect("checksum").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_tools_list_restore_and_verify_beside_a_live_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.engine.shards = 2;
    config.engine.snapshot_every_events = 0;
    config.engine.snapshot_interval_ms = 0;
    let s = TestServer::start(config).await;
    for i in 0..8 {
        s.funded_account(&format!("tl-{i}"), "100.00").await;
    }
    let mut n = 0;
    let mut transfer = |from: usize, to: usize| {
        n += 1;
        json!({"id": format!("tl-t{n}"), "from": format!("tl-{from}"), "to": format!("tl-{to}"),
               "amount": "1.25", "currency": "BRL"})
    };
    for i in 0..8 {
        let r = s.post("/v1/transfers", transfer(i, (i + 3) % 8)).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // The position and state of each shard now; then more traffic moves it on.
    let before: Vec<(u64, String)> = vec![checksum(&s, 0).await, checksum(&s, 1).await];
    let balances_before: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..8 {
            v.push(s.balance(&format!("tl-{i}")).await);
        }
        v
    };
    for i in 0..8 {
        let r = s.post("/v1/transfers", transfer((i + 1) % 8, i)).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let after: Vec<(u64, String)> = vec![checksum(&s, 0).await, checksum(&s, 1).await];
    assert!(after[0].0 > before[0].0 || after[1].0 > before[1].0);

    let list = json_out(&saldo(dir.path(), &["--output", "json", "list"]));
    assert_eq!(list["shards"].as_array().expect("shards").len(), 2);
    for shard in 0..2u32 {
        assert_eq!(
            list["shards"][shard as usize]["tail_lsn"].as_u64(),
            Some(after[shard as usize].0)
        );

        // Restore at the earlier position: the state the node had then.
        let (lsn, sum) = &before[shard as usize];
        let restored = json_out(&saldo(
            dir.path(),
            &["restore", &shard.to_string(), "--at", &lsn.to_string()],
        ));
        assert_eq!(restored["lsn"].as_u64(), Some(*lsn));
        assert_eq!(restored["checksum"].as_str(), Some(sum.as_str()));

        // Verify: the stream's chain, the (absent) snapshots, and the live node now.
        let verified = json_out(&saldo(
            dir.path(),
            &[
                "--output",
                "json",
                "verify",
                &shard.to_string(),
                "--node",
                &s.base,
            ],
        ));
        assert_eq!(verified["ok"], true, "{verified}");
        assert_eq!(verified["node"]["matches"], true);
        assert_eq!(
            verified["node"]["checksum"].as_str(),
            Some(after[shard as usize].1.as_str())
        );
    }

    // The export at the earlier position holds the balances read then.
    let export = dir.path().join("balances.json");
    let mut exported = std::collections::HashMap::new();
    for shard in 0..2u32 {
        let out = saldo(
            dir.path(),
            &[
                "restore",
                &shard.to_string(),
                "--at",
                &before[shard as usize].0.to_string(),
                "--export",
                export.to_str().expect("utf-8 path"),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: Value =
            serde_json::from_slice(&std::fs::read(&export).expect("export written")).expect("JSON");
        for a in doc["accounts"].as_array().expect("accounts") {
            exported.insert(
                a["account"].as_str().expect("id").to_owned(),
                a["balance"].as_str().expect("balance").to_owned(),
            );
        }
    }
    for (i, b) in balances_before.iter().enumerate() {
        assert_eq!(exported.get(&format!("tl-{i}")), Some(b), "tl-{i}");
    }
    let csv = dir.path().join("balances.csv");
    let out = saldo(
        dir.path(),
        &["restore", "0", "--export", csv.to_str().expect("utf-8")],
    );
    assert!(out.status.success());
    let text = std::fs::read_to_string(&csv).expect("csv written");
    assert!(text.starts_with("account,currency,balance,held,available,overdraft_limit\n"));

    // A snapshot written by the tool is listed and verified against the stream.
    let out = saldo(dir.path(), &["restore", "0", "--write-snapshot"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snaps = json_out(&saldo(dir.path(), &["--output", "json", "snapshots", "0"]));
    assert_eq!(snaps["snapshots"][0]["lsn"].as_u64(), Some(after[0].0));
    let verified = json_out(&saldo(dir.path(), &["--output", "json", "verify", "0"]));
    assert_eq!(verified["snapshots"][0]["ok"], true, "{verified}");

    // Clear errors: an unknown shard, a bad --at.
    let out = saldo(dir.path(), &["snapshots", "7"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has 2 shards"));
    let out = saldo(dir.path(), &["restore", "0", "--at", "yesterday"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
    s.stop().await;

    // A corrupt snapshot: verify says so and exits 1; restore falls back to the stream.
    let snap_dir = dir.path().join("snapshots");
    let data_file = walk(&snap_dir)
        .into_iter()
        .find(|p| !p.to_string_lossy().contains("manifest") && p.is_file())
        .expect("a snapshot data file");
    let mut bytes = std::fs::read(&data_file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data_file, bytes).expect("write");
    let out = saldo(dir.path(), &["--output", "json", "verify", "0"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["ok"], false);
    assert!(report["problems"][0]
        .as_str()
        .expect("a problem")
        .contains("corrupt"));
    let restored = json_out(&saldo(dir.path(), &["restore", "0"]));
    assert_eq!(restored["checksum"].as_str(), Some(after[0].1.as_str()));
}

/// Runs `saldo ARGS` (no data dir added).
fn saldo_raw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_saldo"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("saldo runs")
}

/// Defect 8 of issue 13: the storage flags are global, so they may follow the subcommand
/// (`saldo shard list --data-dir …`) as well as precede it; without `--shards` the tools
/// learn the count from the stream, and another `--shards` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_flags_work_before_and_after_the_shard_subcommand() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.engine.shards = 2;
    let ledger = gateway::server::open_ledger(&config)
        .await
        .expect("a node records 2 shards");
    ledger.shutdown().await;
    drop(ledger);
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let before = saldo_raw(&[
        "shard",
        "--data-dir",
        data_dir,
        "--wal",
        "file",
        "--output",
        "json",
        "list",
    ]);
    let after = saldo_raw(&[
        "shard",
        "list",
        "--data-dir",
        data_dir,
        "--wal",
        "file",
        "--output",
        "json",
    ]);
    for out in [&before, &after] {
        let list = json_out(out);
        assert_eq!(list["shards"].as_array().map(Vec::len), Some(2), "{list}");
    }
    let snapshots_after = saldo_raw(&[
        "shard",
        "snapshots",
        "1",
        "--data-dir",
        data_dir,
        "--shards",
        "2",
    ]);
    assert!(
        snapshots_after.status.success(),
        "{}",
        String::from_utf8_lossy(&snapshots_after.stderr)
    );
    let wrong = saldo_raw(&["shard", "list", "--data-dir", data_dir, "--shards", "4"]);
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("created with 2 shards but --shards is 4") && stderr.contains("--shards 2"),
        "{stderr}"
    );
    // The snapshotter takes its flags after its name too (it refuses the file stream, which
    // proves the flags were parsed).
    let snapshotter = saldo_raw(&["snapshotter", "--data-dir", data_dir, "--wal", "file"]);
    assert_ne!(snapshotter.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&snapshotter.stderr).contains("--wal kinesis"));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Issue 13, defect 1: the way out of a stream holding an event the engine cannot apply.
/// `saldo serve` refuses to start, naming the shard, the LSN and the runbook; `saldo shard cut`
/// moves the record and what follows into the quarantine; the node then starts from the state
/// before it and takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unappliable_event_refuses_the_start_and_shard_cut_is_the_way_out() {
    use saldo_persistence::Wal;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.engine.shards = 1;
    config.engine.snapshot_every_events = 0;
    config.engine.snapshot_interval_ms = 0;
    let s = TestServer::start(config.clone()).await;
    s.funded_account("cut-a", "10.00").await;
    s.stop().await;

    // A record that passes its checksum and chain but holds a commit of a hold that never was.
    let wal_dir = dir.path().join("wal");
    let tail = {
        let wal = saldo_persistence::wal::local_file::LocalFileWal::open(&wal_dir, true).unwrap();
        let tail = wal.tail(0).await.unwrap().expect("a tail");
        let mut payload = Vec::new();
        saldo_engine::event::encode_into(
            &saldo_engine::event::Event::HoldCommitted {
                transfer_id: saldo_engine::MovementId::new("ghost").unwrap(),
                debit_account_id: saldo_engine::AccountId::new("cut-a").unwrap(),
                at: saldo_engine::Timestamp::now(),
            },
            &mut payload,
        );
        let rec = saldo_persistence::record::encode(
            0,
            1,
            tail.last_lsn + 1,
            tail.last_lsn + 1,
            &tail.hash,
            &payload,
        );
        wal.append(0, rec).await.unwrap();
        tail.last_lsn
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_saldo"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("saldo starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("saldo serve started on a stream it cannot fold");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    let lsn = tail + 1;
    assert!(
        stderr.contains(&format!("shard 0 at lsn {lsn}")) && stderr.contains("runbook"),
        "the refusal names the shard, the LSN and the way out: {stderr}"
    );

    let out = saldo(dir.path(), &["cut", "0", "--after", &tail.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let quarantine = dir
        .path()
        .join(format!("quarantine/shard-00000-after-{tail}"));
    assert_eq!(walk(&quarantine).len(), 1, "the cut record is kept");
    let s = TestServer::start(config).await;
    assert_eq!(s.balance("cut-a").await, "10.00");
    s.funded_account("cut-b", "1.00").await;
    s.stop().await;
}
