//! Runs the generator against a real `saldo serve` and proves its oracle can fail.
//!
//! The server binary is `$SALDO_BIN`, or else the `saldo` built beside this test (in
//! `<workspace>/target/debug/` for `cargo test --workspace`, which builds every binary of the
//! workspace before running tests). A missing binary fails the test with
//! the command that builds it: this test is never skipped silently. The server listens on
//! 127.0.0.1 on a free port with a temporary data dir and is killed by PID when the test ends.
//! Every load is bounded (a few seconds); nothing here asserts on timing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to become ready.
const READY_WAIT: Duration = Duration::from_secs(60);
/// Shards of the server under test (saldo's default is one: more, so that transfers cross).
const SERVER_SHARDS: u32 = 4;

struct Server {
    child: Child,
    port: u16,
    _data_dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only the process this test started, by its handle (its PID).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn saldo_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SALDO_BIN") {
        return PathBuf::from(path);
    }
    // This test runs from `<target>/<profile>/deps/`; the workspace's binaries of the same
    // build sit in `<target>/<profile>/`, whatever the profile or CARGO_TARGET_DIR.
    let beside_opt = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("saldo")));
    if let Some(beside) = beside_opt.filter(|path| path.exists()) {
        return beside;
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        },
        PathBuf::from,
    );
    target_dir.join("debug").join("saldo")
}

fn start_server() -> Server {
    start_server_with(&[])
}

/// Starts `saldo serve` with `extra` flags; with `--tls-cert` among them it is ready once its
/// port accepts connections (the generator then waits for `/healthz` itself).
fn start_server_with(extra: &[&str]) -> Server {
    let tls = extra.contains(&"--tls-cert");
    let bin = saldo_bin();
    assert!(
        bin.exists(),
        "the saldo server binary is missing at {}: build it with `cargo build -p saldo-gateway \
         --bin saldo` (or run `cargo test --workspace`), or point SALDO_BIN at it",
        bin.display()
    );
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    // Bound then released: a race with another process taking the port is possible but rare.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&bin)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--auth",
            "none",
            // Several shards, so that cross-shard transfers happen (the default is one).
            "--shards",
            &SERVER_SHARDS.to_string(),
        ])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut server = Server {
        child,
        port,
        _data_dir: data_dir,
    };
    let deadline = Instant::now() + READY_WAIT;
    loop {
        if tls && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        if let Ok((200, _)) = http(port, "GET", "/readyz", "") {
            return server;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("saldo serve exited before it was ready: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "saldo serve not ready after {READY_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One request on its own connection; returns the status and body.
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

fn loadtest(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_saldo-loadtest"))
        .args(args)
        .output()
        .expect("the generator runs");
    eprintln!("--- stdout\n{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("--- stderr\n{}", String::from_utf8_lossy(&output.stderr));
    output
}

#[test]
fn a_mixed_open_loop_run_verifies_and_tampering_makes_verification_fail() {
    let server = start_server();
    let target = format!("http://127.0.0.1:{}", server.port);
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("report.json");
    let state_path = dir.path().join("state.json");
    let plot_path = dir.path().join("plot.svg");
    let hdr_path = dir.path().join("latency.hlog");
    let output = loadtest(&[
        "--target",
        &target,
        "--rate",
        "200",
        "--duration",
        "3s",
        "--warmup",
        "1s",
        "--connections",
        "8",
        "--accounts",
        "40",
        "--mix",
        "transfer=6,batch=1,balance=1,entry=1,daily=1,movements=1",
        "--batch-size",
        "20",
        "--distribution",
        "zipf:1.1",
        "--cross-shard-fraction",
        "0.5",
        "--shards",
        &SERVER_SHARDS.to_string(),
        "--retry-fraction",
        "0.1",
        "--invalid-fraction",
        "0.05",
        "--seed",
        "7",
        "--run-id",
        "itest",
        "--json",
        json_path.to_str().unwrap(),
        "--save-state",
        state_path.to_str().unwrap(),
        "--plot",
        plot_path.to_str().unwrap(),
        "--hdr-log",
        hdr_path.to_str().unwrap(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "the run should pass verification"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("verification: PASS"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).expect("the report is JSON");
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["target_rate_per_s"], 200.0);
    assert!(report["achieved_rate_per_s"].as_f64().unwrap() > 0.0);
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report["latency_ms"][key].is_number(), "latency_ms.{key}");
        assert!(report["operations"]["transfer"]["latency_ms"][key].is_number());
    }
    assert!(
        report["operations"]["transfer"]["counts"]["ok"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        report["operations"]["invalid"]["counts"]["rejected"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(report["operations"]["invalid"]["counts"]["ok"], 0);
    assert!(
        report["operations"]["transfer_batch"]["items"]["committed"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(report["verification"]["passed"], true);
    let svg = std::fs::read_to_string(&plot_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let hdr = std::fs::read_to_string(&hdr_path).unwrap();
    assert!(
        hdr.contains("#[StartTime") && hdr.lines().any(|l| l.starts_with("Tag=run,")),
        "{hdr}"
    );

    // The same state still verifies: nothing changed in between.
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--target",
            &target,
            "--state",
            state_path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        loadtest(&args)
    };
    assert_eq!(verify(&[]).status.code(), Some(0));

    // Tamper through the public API: a credit the generator never made.
    let tamper = r#"{"id":"tamper-1","type":"credit","amount":"1.00"}"#;
    let (status, body) =
        http(server.port, "POST", "/v1/accounts/itest-a0/entries", tamper).unwrap();
    assert_eq!(status, 201, "{body}");
    let output = verify(&[]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "verification must FAIL after tampering"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("verification: FAIL"), "{stdout}");
    assert!(stdout.contains("FAIL money_conserved"), "{stdout}");
    assert!(stdout.contains("itest-a0: balance"), "{stdout}");
}

#[test]
fn a_closed_loop_run_against_healthz_needs_no_accounts() {
    let server = start_server();
    let target = format!("http://127.0.0.1:{}", server.port);
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("report.json");
    let output = loadtest(&[
        "--target",
        &target,
        "--concurrency",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--mix",
        "healthz",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(report["mode"], "closed");
    assert!(report["target_rate_per_s"].is_null());
    assert!(
        report["operations"]["healthz"]["counts"]["ok"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(report["verification"]["passed"], serde_json::Value::Null);
}

#[test]
fn a_closed_loop_run_over_https_with_a_test_ca_verifies_over_http1_and_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = ["ca.pem", "tls.crt", "tls.key"].map(|name| dir.path().join(name));
    for (path, pem) in paths
        .iter()
        .zip([ca.pem(), cert.pem(), key.serialize_pem()])
    {
        std::fs::write(path, pem).unwrap();
    }
    let [ca_file, cert_file, key_file] = paths.map(|p| p.to_str().unwrap().to_owned());
    let server = start_server_with(&["--tls-cert", &cert_file, "--tls-key", &key_file]);
    // The certificate names localhost, so the target does too (and SNI and the check use it).
    let target = format!("https://localhost:{}", server.port);
    let json_path = dir.path().join("report.json");
    let run = |ca_file_opt: Option<&str>, http2: bool| {
        let mut args = vec![
            "--target",
            &target,
            "--concurrency",
            "4",
            "--duration",
            "1s",
        ];
        args.extend(["--warmup", "0s", "--accounts", "8", "--mix", "transfer"]);
        args.extend(["--json", json_path.to_str().unwrap()]);
        args.extend(ca_file_opt.map(|ca| ["--ca-file", ca]).iter().flatten());
        args.extend(http2.then_some("--http2"));
        loadtest(&args)
    };
    let output = run(Some(&ca_file), false);
    assert_eq!(output.status.code(), Some(0), "the run passes verification");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("verification: PASS"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let ok = &report["operations"]["transfer"]["counts"]["ok"];
    assert!(ok.as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["num_responses_http2"], 0, "{report}");
    // The same over HTTP/2, chosen by ALPN.
    let output = run(Some(&ca_file), true);
    assert_eq!(
        output.status.code(),
        Some(0),
        "the h2 run passes verification"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert!(
        report["num_responses_http2"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["num_responses_http1"], 0, "{report}");
    let untrusted = run(None, false);
    assert_ne!(
        untrusted.status.code(),
        Some(0),
        "the Mozilla roots do not trust a test CA"
    );
}

#[test]
fn an_open_loop_run_over_http2_multiplexes_streams_and_verifies() {
    let server = start_server();
    let target = format!("http://127.0.0.1:{}", server.port);
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("report.json");
    // 32 requests in flight as streams on 2 connections: h2c with prior knowledge.
    let mut args = vec!["--target", &target, "--http2", "--connections", "2"];
    args.extend(["--streams", "32", "--rate", "300", "--duration", "2s"]);
    args.extend(["--warmup", "0s", "--accounts", "20", "--batch-size", "10"]);
    args.extend(["--mix", "transfer=4,batch=1,balance=1", "--seed", "3"]);
    args.extend(["--json", json_path.to_str().unwrap()]);
    let output = loadtest(&args);
    assert_eq!(output.status.code(), Some(0), "the run passes verification");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("verification: PASS"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(report["protocol"], "h2");
    assert_eq!(report["connections"], 2);
    assert_eq!(report["workers"], 32);
    let http2 = report["num_responses_http2"].as_u64().unwrap();
    assert!(http2 > 0, "responses came over HTTP/2: {report}");
    assert_eq!(report["num_responses_http1"], 0, "and none over HTTP/1.1");
    let ok = &report["operations"]["transfer"]["counts"]["ok"];
    assert!(ok.as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["verification"]["passed"], true);
}
