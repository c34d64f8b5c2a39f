//! `saldo serve --otlp-endpoint URL` against a fake OTLP/HTTP collector that records the
//! protobuf bodies POSTed to it: the request spans arrive named after their route, with the
//! transfer/entry ID and the status, and the last ones are flushed at graceful shutdown;
//! without the flag nothing is sent; a collector that is down neither fails requests nor holds
//! the exit; an endpoint that is not a URL stops saldo at start.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    Router,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value, KeyValue},
    trace::v1::{span::SpanKind, Span},
};
use prost::Message;
use serde_json::json;

/// Longest wait for saldo to log that it listens, to become ready, or to exit.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// One request the fake collector received.
#[derive(Debug, Clone)]
struct Post {
    method: Method,
    path: String,
    content_type: String,
    body: Bytes,
}

/// A fake OTLP/HTTP collector on 127.0.0.1: answers 200 to everything and keeps what it got.
struct Collector {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    /// Runs the collector; the tests also drive their HTTP client on it.
    runtime: tokio::runtime::Runtime,
}

impl Collector {
    fn start() -> Collector {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let posts = Arc::new(Mutex::new(Vec::new()));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("collector binds");
        let addr = listener.local_addr().expect("local addr");
        let app = Router::new().fallback(record).with_state(posts.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Collector {
            addr,
            posts,
            runtime,
        }
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().expect("not poisoned").clone()
    }

    /// Returns every span received, each with its resource's attributes.
    fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        let mut spans = Vec::new();
        for post in self.posts() {
            let request = ExportTraceServiceRequest::decode(post.body).expect("an otlp body");
            for resource_spans in request.resource_spans {
                let resource = resource_spans.resource.expect("a resource").attributes;
                for scope_spans in resource_spans.scope_spans {
                    for span in scope_spans.spans {
                        spans.push((resource.clone(), span));
                    }
                }
            }
        }
        spans
    }
}

async fn record(
    State(posts): State<Arc<Mutex<Vec<Post>>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    posts.lock().expect("not poisoned").push(Post {
        method,
        path: uri.path().to_owned(),
        content_type,
        body,
    });
    StatusCode::OK
}

/// A running `saldo serve` with its stderr drained into `log`.
struct Saldo {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
    drain: JoinHandle<()>,
}

impl Saldo {
    /// Starts saldo with JSON logs and `args`, and returns once it logs its address.
    fn start(data_dir: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> Saldo {
        let mut command = saldo_command(data_dir, args);
        command.envs(envs.iter().copied());
        let mut child = command.spawn().expect("saldo starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines_rx) = mpsc::channel();
        let drain = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().expect("not poisoned").push_str(&line);
                    log.lock().expect("not poisoned").push('\n');
                    let _ = lines_tx.send(line);
                }
            })
        };
        let deadline = Instant::now() + WAIT_MAX;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines_rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "saldo never logged its address; log: {}",
                    log.lock().expect("log")
                );
            };
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let message = event["fields"]["message"].as_str().unwrap_or("");
            if let (true, Some(listen)) = (
                message.contains("listening"),
                event["fields"]["listen"].as_str(),
            ) {
                break listen.to_owned();
            }
        };
        Saldo {
            child,
            addr,
            log,
            drain,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM and returns the log once saldo has exited 0.
    fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let exit = wait_bounded(&mut self.child);
        self.drain.join().expect("drain joins");
        let log = self.log.lock().expect("not poisoned").clone();
        assert!(exit.success(), "exit status {exit:?}; log: {log}");
        log
    }
}

/// Returns the command running `saldo serve` on a free port of 127.0.0.1 over `data_dir`.
fn saldo_command(data_dir: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_saldo"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--fsync", "false"])
        .args(["--log-format", "json"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // The collector is on 127.0.0.1: no proxy may stand in between.
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        command.env_remove(var);
    }
    command
}

/// Waits for `child` to exit, killing it after `WAIT_MAX`.
fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("saldo did not exit within {WAIT_MAX:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `/readyz`, then opens two BRL accounts, credits the first with entry
/// `otlp-e-1` and moves 1.00 to the second with transfer `otlp-t-1`.
async fn post_a_transfer(saldo: &Saldo) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Ok(r) = client.get(saldo.url("/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "saldo becomes ready");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let posts = [
        (
            "/v1/accounts",
            json!({"id": "otlp-a", "currency": "BRL"}),
            201,
        ),
        (
            "/v1/accounts",
            json!({"id": "otlp-b", "currency": "BRL"}),
            201,
        ),
        (
            "/v1/accounts/otlp-a/entries",
            json!({"id": "otlp-e-1", "type": "credit", "amount": "10.00"}),
            201,
        ),
        (
            "/v1/transfers",
            json!({"id": "otlp-t-1", "from": "otlp-a", "to": "otlp-b", "amount": "1.00",
                   "currency": "BRL"}),
            201,
        ),
    ];
    for (path, body, status) in posts {
        let r = client
            .post(saldo.url(path))
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), status, "POST {path} {body}");
    }
}

/// Returns the string or integer value of attribute `key`, as a string.
fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let kv = attributes.iter().find(|kv| kv.key == key)?;
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[test]
fn the_request_spans_reach_the_collector_with_route_status_and_id_by_graceful_exit() {
    let collector = Collector::start();
    let dir = tempfile::tempdir().expect("temp dir");
    // The collector's base URL: saldo appends /v1/traces.
    let endpoint = format!("http://{}", collector.addr);
    let saldo = Saldo::start(dir.path(), &["--otlp-endpoint", &endpoint], &[]);
    collector.runtime.block_on(post_a_transfer(&saldo));
    // The batch processor exports every 5 s: the spans of these requests are still queued, and
    // only the flush at shutdown can deliver them before saldo exits.
    let log = saldo.stop();
    assert!(log.contains("exporting traces over otlp"), "{log}");
    assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
    assert!(
        !log.contains("AfterShutdown"),
        "no span ends after the flush: {log}"
    );

    let posts = collector.posts();
    assert!(
        !posts.is_empty(),
        "the collector received nothing; log: {log}"
    );
    for post in &posts {
        assert_eq!(post.method, Method::POST);
        assert_eq!(post.path, "/v1/traces");
        assert_eq!(post.content_type, "application/x-protobuf");
    }
    let spans = collector.spans();
    let find = |id: &str| {
        spans
            .iter()
            .find(|(_, span)| attribute(&span.attributes, "id").as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no span with id {id} in {spans:#?}"))
    };

    let (resource, transfer) = find("otlp-t-1");
    assert_eq!(
        attribute(resource, "service.name").as_deref(),
        Some("saldo")
    );
    assert_eq!(
        attribute(resource, "service.version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(transfer.name, "POST /v1/transfers");
    assert_eq!(transfer.kind, SpanKind::Server as i32);
    let attributes = &transfer.attributes;
    assert_eq!(attribute(attributes, "method").as_deref(), Some("POST"));
    assert_eq!(
        attribute(attributes, "route").as_deref(),
        Some("/v1/transfers")
    );
    let status = attributes
        .iter()
        .find(|kv| kv.key == "status")
        .and_then(|kv| kv.value.clone());
    assert_eq!(
        status.and_then(|v| v.value),
        Some(any_value::Value::IntValue(201))
    );
    assert_eq!(transfer.trace_id.len(), 16);
    assert!(transfer.end_time_unix_nano >= transfer.start_time_unix_nano);

    let (_, entry) = find("otlp-e-1");
    assert_eq!(entry.name, "POST /v1/accounts/{id}/entries");
    assert_eq!(
        attribute(&entry.attributes, "status").as_deref(),
        Some("201")
    );
    assert_ne!(
        entry.trace_id, transfer.trace_id,
        "each request is a trace of its own"
    );
}

#[test]
fn without_the_flag_no_span_is_sent_even_with_the_otel_environment_set() {
    let collector = Collector::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = format!("http://{}", collector.addr);
    let saldo = Saldo::start(
        dir.path(),
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    );
    collector.runtime.block_on(post_a_transfer(&saldo));
    let log = saldo.stop();
    assert!(!log.contains("exporting traces"), "{log}");
    assert_eq!(collector.posts().len(), 0);
}

#[test]
fn a_collector_that_is_down_neither_fails_requests_nor_holds_the_exit() {
    // A port that was free a moment ago: connections to it are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let collector = Collector::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let saldo = Saldo::start(dir.path(), &["--otlp-endpoint", &endpoint], &[]);
    collector.runtime.block_on(post_a_transfer(&saldo));
    let started = Instant::now();
    let log = saldo.stop();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "exit took {:?}",
        started.elapsed()
    );
    assert!(log.contains("ledger flushed and stopped"), "{log}");
}

#[test]
fn an_otlp_endpoint_that_is_not_an_http_url_stops_saldo_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    for endpoint in ["127.0.0.1:4318", "ftp://127.0.0.1:4318", "http://"] {
        let mut child = saldo_command(dir.path(), &["--otlp-endpoint", endpoint])
            .spawn()
            .expect("saldo runs");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let drain = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let exit = wait_bounded(&mut child);
        let stderr = drain.join().expect("drain joins");
        assert!(!exit.success(), "{endpoint}: {stderr}");
        assert!(
            stderr.contains(&format!("--otlp-endpoint {endpoint}: "))
                && stderr.contains("expected a URL such as http://127.0.0.1:4318"),
            "{endpoint}: {stderr}"
        );
        assert!(!stderr.contains("listening"), "{endpoint}: {stderr}");
    }
}
