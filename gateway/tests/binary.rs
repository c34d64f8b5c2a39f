//! The `saldo` binary itself: `saldo serve` starts on 127.0.0.1 with JSON logs, serves, and
//! exits 0 on SIGTERM after flushing; a bad configuration fails before listening (OTLP export
//! is tested in otlp.rs).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

/// Most stderr lines read while waiting for the "listening" line.
const LOG_LINES_MAX: usize = 200;

#[test]
fn saldo_serve_logs_json_serves_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_saldo"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--fsync",
            "false",
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("saldo starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut addr = None;
    let mut saw_auth_warning = false;
    let mut line = String::new();
    for _ in 0..LOG_LINES_MAX {
        line.clear();
        if stderr.read_line(&mut line).expect("read log") == 0 {
            break;
        }
        let event: serde_json::Value = serde_json::from_str(&line).expect("every log line is JSON");
        if event["level"] == "WARN" && line.contains("auth is off") {
            saw_auth_warning = true;
        }
        if let Some(listen) = event["fields"]["listen"].as_str() {
            if event["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("listening")
            {
                addr = Some(listen.to_owned());
                break;
            }
        }
    }
    let addr = addr.expect("saldo logs the address it listens on");
    assert!(saw_auth_warning, "--auth none warns at start");
    // Huge-page faults stalled the runtime's workers (the latency tail): saldo turns them off
    // for itself (saldo_engine::process).
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    assert!(
        status.contains("THP_enabled:\t0"),
        "transparent huge pages are off in saldo serve: {}",
        status
            .lines()
            .find(|l| l.starts_with("THP"))
            .unwrap_or("no THP_enabled line")
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..400 {
            if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await {
                if r.status() == 200 {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(ready, "saldo becomes ready");
        let r = client
            .post(format!("http://{addr}/v1/accounts"))
            .json(&serde_json::json!({"id": "bin-1", "currency": "BRL"}))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 201);
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    // Drain the log so the child never blocks on a full pipe while it shuts down.
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    let exit = child.wait().expect("saldo exits");
    let rest = drain.join().expect("drain joins");
    assert!(exit.success(), "exit status {exit:?}; log: {rest}");
    assert!(rest.contains("ledger flushed and stopped"), "{rest}");
}

#[test]
fn an_invalid_configuration_fails_before_listening() {
    let output = Command::new(env!("CARGO_BIN_EXE_saldo"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "3"])
        .output()
        .expect("saldo runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("power of two"), "{stderr}");
}
