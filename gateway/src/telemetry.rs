//! Logging and tracing set-up: `tracing` to stderr, as text or one JSON object per line,
//! filtered by `RUST_LOG` (default `info`), and, with `--otlp-endpoint URL`, the same spans
//! exported over OpenTelemetry (OTLP/HTTP with protobuf bodies) to a collector.
//!
//! # Layout
//! - [`init`] installs the global subscriber: the env filter, the fmt layer and, when an
//!   endpoint is given, the `tracing-opentelemetry` layer over a batch span processor. It
//!   returns a [`TelemetryGuard`] whose drop flushes the spans still queued.
//! - `traces_url` turns the endpoint into the URL the spans are POSTed to: a collector's base
//!   URL gets `/v1/traces` appended, a URL already ending in `/v1/traces` is used as it is.
//! - `NamedRequestSpans` wraps the OTLP exporter and names each request span
//!   (`server::admit` calls them all "request") after its method and route, as a server span.
//! - `ExportClient` is the exporter's HTTP client: the gateway's reqwest 0.12 (rustls) on a
//!   one-thread runtime of its own, so the SDK's batch thread can export whatever the state of
//!   the server's runtime, including while `main` returns.
//! - `not_exported_targets` keeps the spans of the HTTP libraries (the exporter's own among
//!   them) out of the export, whatever `RUST_LOG` lets through to the logs.
//! - [`set_remote_parent`] makes an incoming W3C `traceparent` the parent of a span.
//! - [`exports_traces`] tells `server::admit` whether spans are exported: its request span is
//!   at `info` then, at `debug` otherwise (so `RUST_LOG=info` formats nothing per request).
//!
//! # Failure model
//! Export never delays or fails a request: spans queue in a bounded buffer (2,048 spans, the
//! SDK's default; `OTEL_BSP_MAX_QUEUE_SIZE`) and a full buffer drops spans, counted and logged
//! at shutdown. A collector that is down or answers an error is retried with backoff within
//! [`EXPORT_TIMEOUT`], then the batch is dropped and the SDK logs an error. An endpoint that is
//! not an http(s) URL fails `init`, so `saldo serve` refuses to start.

use std::{
    future::Future,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use async_trait::async_trait;
use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{SpanKind, Status, TracerProvider as _},
    KeyValue, Value,
};
use opentelemetry_http::{Bytes, HeaderExtractor, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
    Resource,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    filter::{LevelFilter, Targets},
    fmt,
    prelude::*,
    EnvFilter,
};

use crate::config::LogFormat;

/// Longest one export may take, retries included; then the batch is dropped. Also the timeout
/// of each HTTP request, so a collector that accepts the connection and never answers cannot
/// hold the batch thread longer.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the guard's drop waits for the last batch at shutdown: one export and a margin.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(12);

/// Largest collector answer read; an OTLP answer is a few bytes (a partial-success count and
/// message), so more is a misconfigured endpoint.
const RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// Crates whose spans are never exported (see `not_exported_targets`).
const NOT_EXPORTED_TARGETS: [&str; 8] = [
    "h2",
    "hyper",
    "hyper_util",
    "reqwest",
    "opentelemetry",
    "opentelemetry_http",
    "opentelemetry_otlp",
    "opentelemetry_sdk",
];

/// The name `server::admit` gives every request span; renamed at export.
const REQUEST_SPAN_NAME: &str = "request";

const _: () = assert!(SHUTDOWN_TIMEOUT.as_secs() > EXPORT_TIMEOUT.as_secs());

/// Set by [`init`] when spans are exported (`--otlp-endpoint`); never cleared, as the
/// subscriber it describes is global and lives as long as the process.
static EXPORTS_TRACES: AtomicBool = AtomicBool::new(false);

/// Returns whether request spans are exported over OTLP (see [`init`]).
pub fn exports_traces() -> bool {
    EXPORTS_TRACES.load(Ordering::Relaxed)
}

/// Why logging or tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `--otlp-endpoint` is not an http(s) URL.
    #[error("--otlp-endpoint {endpoint}: {reason} (expected a URL such as http://127.0.0.1:4318)")]
    InvalidOtlpEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The OTLP exporter or its HTTP client could not be built.
    #[error("failed to set up the otlp exporter: {0}")]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("failed to install the log subscriber: {0}")]
    Install(String),
}

/// Keeps the trace exporter alive; dropping it (or [`TelemetryGuard::shutdown`]) exports the
/// spans still queued, waiting at most [`SHUTDOWN_TIMEOUT`]. Holds nothing without OTLP.
#[must_use = "dropping the guard stops the trace export"]
#[derive(Debug)]
pub struct TelemetryGuard {
    /// The tracer provider, whose batch processor owns the exporter's thread; `None` without
    /// `--otlp-endpoint` or once shut down.
    provider_opt: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports the spans still queued and stops the exporter. Blocks the calling thread for at
    /// most [`SHUTDOWN_TIMEOUT`] (the export runs on threads of its own, never on the caller's
    /// runtime, so calling it from async code cannot deadlock).
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    fn shutdown_inner(&mut self) {
        let Some(provider) = self.provider_opt.take() else {
            return;
        };
        if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            // The global subscriber outlives the guard, so this still reaches the log.
            tracing::warn!(error = %e, "the last spans could not be exported");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

/// Installs the global subscriber: logs in `format` to stderr and, if `otlp_endpoint_opt` is
/// given, the spans exported to that collector. Returns the guard that flushes the export.
pub fn init(
    format: LogFormat,
    otlp_endpoint_opt: Option<&str>,
) -> Result<TelemetryGuard, TelemetryError> {
    let provider_opt = otlp_endpoint_opt.map(tracer_provider).transpose()?;
    let otel_layer_opt = provider_opt.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(env!("CARGO_PKG_NAME")))
            .with_filter(not_exported_targets())
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer_opt);
    let result = match format {
        // Colours only on a terminal: a log file or a collector gets plain text.
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| TelemetryError::Install(e.to_string()))?;
    if let Some(endpoint) = otlp_endpoint_opt {
        EXPORTS_TRACES.store(true, Ordering::Relaxed);
        tracing::info!(otlp_endpoint = endpoint, "exporting traces over otlp");
    }
    Ok(TelemetryGuard { provider_opt })
}

/// Returns the filter that keeps the spans of the exporter's own HTTP stack (and of the HTTP
/// libraries generally, at `RUST_LOG=debug` or finer) out of the export: exporting a span of
/// an export would feed the queue from itself.
fn not_exported_targets() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(NOT_EXPORTED_TARGETS.map(|target| (target, LevelFilter::OFF)))
}

/// Makes the W3C trace context in `headers` (`traceparent`, `tracestate`), if there is a valid
/// one, the parent of `span`, so the span joins the caller's trace. Does nothing without
/// `--otlp-endpoint` or without the header.
pub fn set_remote_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // An error only means no OpenTelemetry layer is installed: nothing to join then.
    let _ = span.set_parent(cx);
}

/// Returns the tracer provider exporting to `endpoint` in batches.
fn tracer_provider(endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let url = traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ExportClient::new()?)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.as_str())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name("saldo")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(NamedRequestSpans(exporter))
        .build())
}

/// Returns the URL spans are POSTed to: `endpoint` itself if its path ends in `/v1/traces`,
/// else `endpoint` taken as the collector's base URL with `/v1/traces` appended to its path.
fn traces_url(endpoint: &str) -> Result<reqwest::Url, TelemetryError> {
    let invalid = |reason: String| TelemetryError::InvalidOtlpEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let mut url = reqwest::Url::parse(endpoint).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "the scheme must be http or https, not {}",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("the URL must have no query or fragment".into()));
    }
    if !url.path().ends_with("/v1/traces") {
        let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    Ok(url)
}

/// The OTLP exporter, with each request span named after its method and route (such as
/// `POST /v1/transfers`), marked as a server span, and marked as an error when it answered 5xx.
#[derive(Debug)]
struct NamedRequestSpans<E>(E);

impl<E: SpanExporter> SpanExporter for NamedRequestSpans<E> {
    fn export(&self, mut batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        batch.iter_mut().for_each(name_request_span);
        self.0.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// Names `span` after its `method` and `route` fields if it is a request span, marks it as a
/// server span, and as an error if its `status` is 5xx.
fn name_request_span(span: &mut SpanData) {
    if span.name != REQUEST_SPAN_NAME {
        return;
    }
    let field = |name: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == name)
            .map(|kv| &kv.value)
    };
    let (Some(method), Some(route)) = (field("method"), field("route")) else {
        return;
    };
    span.name = format!("{method} {route}").into();
    span.span_kind = SpanKind::Server;
    // `tracing-opentelemetry` records a u16 through `Debug`, as a string: the status goes out
    // as the integer it is.
    let status_kv_opt = span
        .attributes
        .iter_mut()
        .find(|kv| kv.key.as_str() == "status");
    let Some(status_kv) = status_kv_opt else {
        return;
    };
    let status_opt = match &status_kv.value {
        Value::I64(status) => Some(*status),
        Value::String(status) => status.as_str().parse::<i64>().ok(),
        _ => None,
    };
    let Some(status) = status_opt else {
        return;
    };
    status_kv.value = Value::I64(status);
    if status >= 500 {
        span.status = Status::error("");
    }
}

/// The exporter's HTTP client: reqwest 0.12 (the gateway's, with rustls) on a runtime of its
/// own. The SDK's batch processor exports from a plain thread through `block_on`, where the
/// reqwest futures would find no reactor; here they run on the runtime's one worker and the
/// batch thread only awaits their result.
#[derive(Debug)]
struct ExportClient {
    /// Pooled connections to the collector; the timeouts bound each request.
    client: reqwest::Client,
    /// The runtime the requests run on; `None` only inside `drop`.
    runtime_opt: Option<tokio::runtime::Runtime>,
}

impl ExportClient {
    fn new() -> Result<Self, TelemetryError> {
        let client = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .connect_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .thread_name("saldo-otlp-export")
            .enable_all()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        Ok(Self {
            client,
            runtime_opt: Some(runtime),
        })
    }
}

impl Drop for ExportClient {
    fn drop(&mut self) {
        // A runtime dropped inside another runtime's task panics; this one has no work left
        // that matters once the exporter is gone, so it stops without waiting.
        if let Some(runtime) = self.runtime_opt.take() {
            runtime.shutdown_background();
        }
    }
}

#[async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let runtime = self
            .runtime_opt
            .as_ref()
            .expect("the runtime is only taken by drop");
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        runtime.spawn(send(client, request)).await?
    }
}

/// Sends `request` and returns the answer, whatever its status, with its body read whole.
async fn send(
    client: reqwest::Client,
    request: reqwest::Request,
) -> Result<Response<Bytes>, HttpError> {
    let mut response = client.execute(request).await?;
    let mut answer = Response::builder().status(response.status());
    if let Some(headers) = answer.headers_mut() {
        *headers = std::mem::take(response.headers_mut());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len().saturating_add(chunk.len()) > RESPONSE_BYTES_MAX {
            return Err(
                format!("the collector answered more than {RESPONSE_BYTES_MAX} bytes").into(),
            );
        }
        body.extend_from_slice(&chunk);
    }
    Ok(answer.body(Bytes::from(body))?)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TraceId;

    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_and_a_full_url_is_kept() {
        let url = |s: &str| traces_url(s).expect("valid").to_string();
        assert_eq!(
            url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("https://otel.example/otlp/"),
            "https://otel.example/otlp/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn an_endpoint_that_is_not_an_http_url_is_refused() {
        for endpoint in [
            "localhost:4318",
            "127.0.0.1:4318",
            "ftp://x",
            "http://",
            "http://h/?a=1",
        ] {
            let e = traces_url(endpoint).expect_err(endpoint).to_string();
            assert!(
                e.starts_with(&format!("--otlp-endpoint {endpoint}: ")),
                "{e}"
            );
        }
    }

    /// Keeps every exported span.
    #[derive(Debug, Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Recorder {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().expect("not poisoned").extend(batch);
            Ok(())
        }
    }

    /// Runs `f` under a subscriber that exports to a recorder; returns the spans exported.
    fn record_spans(f: impl FnOnce()) -> Vec<SpanData> {
        let recorder = Recorder::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(NamedRequestSpans(recorder.clone()))
            .build();
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(not_exported_targets()),
        );
        tracing::subscriber::with_default(subscriber, f);
        provider.shutdown().expect("shuts down");
        let spans = recorder.0.lock().expect("not poisoned").clone();
        spans
    }

    /// Returns a span shaped like the one `server::admit` opens.
    fn request_span() -> tracing::Span {
        tracing::info_span!(
            "request",
            method = "POST",
            route = "/v1/transfers",
            id = tracing::field::Empty,
            status = tracing::field::Empty,
        )
    }

    #[test]
    fn a_request_span_is_named_after_its_route_and_keeps_the_id_recorded_later() {
        let spans = record_spans(|| {
            let span = request_span();
            span.in_scope(|| {
                tracing::Span::current().record("id", "t-1");
            });
            span.record("status", 503_u16);
        });
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.name, "POST /v1/transfers");
        assert_eq!(span.span_kind, SpanKind::Server);
        assert!(
            matches!(span.status, Status::Error { .. }),
            "{:?}",
            span.status
        );
        let attribute = |key: &str| {
            let kv = span.attributes.iter().find(|kv| kv.key.as_str() == key);
            kv.map(|kv| kv.value.clone())
        };
        assert_eq!(attribute("id"), Some(Value::from("t-1")));
        assert_eq!(attribute("status"), Some(Value::I64(503)));
    }

    #[test]
    fn the_spans_of_the_http_libraries_are_not_exported() {
        let spans = record_spans(|| {
            tracing::debug_span!(target: "hyper_util::client", "connect").in_scope(|| {});
            tracing::trace_span!(target: "h2::proto", "poll").in_scope(|| {});
            tracing::debug_span!(target: "saldo_engine::node", "restore").in_scope(|| {});
        });
        let names: Vec<_> = spans.iter().map(|span| span.name.as_ref()).collect();
        assert_eq!(names, ["restore"]);
    }

    #[test]
    fn a_traceparent_header_makes_the_request_span_join_the_callers_trace() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .expect("ascii"),
        );
        let spans = record_spans(|| {
            let span = request_span();
            set_remote_parent(&span, &headers);
        });
        assert_eq!(spans.len(), 1);
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex");
        assert_eq!(spans[0].span_context.trace_id(), trace_id);
        assert_eq!(spans[0].parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(spans[0].parent_span_is_remote);
    }
}
