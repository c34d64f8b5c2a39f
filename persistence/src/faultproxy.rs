//! A fault-injecting HTTP/1.1 proxy for the AWS backends' tests.
//!
//! [`FaultProxy`] listens on `127.0.0.1` between saldo's AWS SDK clients (Kinesis, DynamoDB:
//! the JSON-over-HTTP protocols awsJson1.1 / awsJson1.0, `POST /` with `X-Amz-Target`) and a
//! local emulator (kinesalite, DynamoDB Local). For each request it draws one fault from a
//! seeded RNG according to the current [`FaultPlan`]:
//!
//! - **throttle**: answers `400` with `{"__type":"<throttle_error_type>",...}` without
//!   forwarding, so the SDK reads it as that error code;
//! - **server error**: answers `500 InternalFailure` or `503 ServiceUnavailable` (even odds)
//!   without forwarding;
//! - **drop after forward**: forwards, reads the upstream answer, then closes the client's
//!   connection with no answer (the write happened; the client does not know);
//! - **delay**: forwards, then holds the answer for [`FaultPlan::delay`] (a delay above the
//!   client's timeout is a timeout);
//! - otherwise the request is forwarded and the answer returned unchanged.
//!
//! ## Layout
//! The decision is a pure function ([`FaultPlan`]'s `choose`) of two RNG draws; the async shell
//! (`serve` → one task per connection → `handle` → `forward`) only carries it out.
//!
//! ## Invariants
//! - Every request counts in exactly one [`FaultStats`] field, so the fields sum to the number
//!   of requests answered or dropped (upstream failures, answered `502`/`504`, count in none).
//! - The faults of a sequence of requests depend only on [`FaultPlan::seed`] and the order in
//!   which the requests arrive: requests sent one after the other get the same faults on
//!   every run. [`FaultProxy::set_plan`] reseeds.
//! - Requests are forwarded faithfully: method, path, body and every end-to-end header,
//!   including `Host` as the client sent it (SigV4 signs it); hop-by-hop headers are dropped.
//!
//! ## Failure model
//! This is a test helper: a bad plan or a failure to bind is a panic. An unreachable or hung
//! upstream is answered `502`/`504` and logged.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    body::Incoming,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Request, Response, StatusCode, Uri,
};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use parking_lot::Mutex;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use tokio::{
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

/// Largest request or response body the proxy buffers. The largest AWS JSON bodies saldo sends
/// are a Kinesis `PutRecords` (5 MiB of data, base64: ~6.7 MiB) and a DynamoDB
/// `BatchWriteItem` (16 MiB); 32 MiB covers both with room.
pub const FAULT_PROXY_BODY_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Client connections served at once; a further connection waits in the listener's backlog
/// until one ends.
pub const FAULT_PROXY_CONNECTIONS_MAX: usize = 1024;
/// How long the proxy waits for the upstream's whole answer before answering `504`: longer
/// than any client timeout saldo uses (`aws::AWS_ATTEMPT_TIMEOUT` is 10 s), so a hung
/// emulator looks to the client like a hung emulator.
pub const FAULT_PROXY_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// The content type of an AWS JSON request or answer when the request names none
/// (awsJson1.1, as Kinesis).
const JSON_CONTENT_TYPE_DEFAULT: &str = "application/x-amz-json-1.1";

/// Headers that belong to one connection, not to the message (RFC 9110 §7.6.1), and are
/// therefore not forwarded.
const HOP_BY_HOP_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Which faults to inject and how often. The four rates are fractions of requests in `[0, 1]`
/// and must add up to at most 1: a request gets at most one fault (throttle, then server
/// error, then drop, then delay share `[0, 1)` in that order) and the rest are forwarded
/// cleanly.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    /// Fraction of requests answered `400` with `{"__type":"<throttle_error_type>",
    /// "message":"Rate exceeded (injected)"}` without being forwarded.
    pub throttle_rate: f64,
    /// The `__type` of an injected throttle, e.g. `"ProvisionedThroughputExceededException"`
    /// (Kinesis and DynamoDB) or `"ThrottlingException"`.
    pub throttle_error_type: String,
    /// Fraction of requests answered `500 InternalFailure` or `503 ServiceUnavailable` (even
    /// odds) without being forwarded.
    pub server_error_rate: f64,
    /// Fraction of requests forwarded whose answer is read from the upstream and then thrown
    /// away: the client's connection is closed with no answer, so the write happened and the
    /// client does not know.
    pub drop_after_forward_rate: f64,
    /// Fraction of requests forwarded whose answer is held for [`FaultPlan::delay`] first.
    pub delay_rate: f64,
    /// How long a delayed answer is held; above the client's timeout this is a timeout.
    pub delay: Duration,
    /// Seed of the RNG that picks which requests get faults, so a run can be reproduced.
    pub seed: u64,
}

impl FaultPlan {
    /// Returns a plan that injects nothing: every request is forwarded and answered unchanged.
    pub fn none() -> FaultPlan {
        FaultPlan {
            throttle_rate: 0.0,
            throttle_error_type: "ProvisionedThroughputExceededException".into(),
            server_error_rate: 0.0,
            drop_after_forward_rate: 0.0,
            delay_rate: 0.0,
            delay: Duration::ZERO,
            seed: 0,
        }
    }

    /// Panics unless every rate is in `[0, 1]` and they add up to at most 1 (a plan is
    /// written by a test: a bad one is a programmer error).
    fn assert_valid(&self) {
        let rates = [
            ("throttle_rate", self.throttle_rate),
            ("server_error_rate", self.server_error_rate),
            ("drop_after_forward_rate", self.drop_after_forward_rate),
            ("delay_rate", self.delay_rate),
        ];
        for (name, rate) in rates {
            assert!(
                (0.0..=1.0).contains(&rate),
                "fault plan {name} is {rate}, must be in [0, 1]"
            );
        }
        let sum: f64 = rates.iter().map(|(_, rate)| rate).sum();
        // The epsilon lets rates such as 0.1 + 0.2 + 0.3 + 0.4 pass despite rounding.
        assert!(
            sum <= 1.0 + 1e-9,
            "fault plan rates add up to {sum}, must be at most 1: {self:?}"
        );
        assert!(
            HeaderValue::from_str(&self.throttle_error_type).is_ok(),
            "fault plan throttle_error_type {:?} is not a valid header value",
            self.throttle_error_type
        );
    }

    /// Chooses the fault of one request from a uniform `draw` in `[0, 1)` and a coin
    /// (`unavailable`: a server error is a 503 rather than a 500). Pure: the RNG lives in the
    /// caller.
    fn choose(&self, draw: f64, unavailable: bool) -> Fault {
        let mut bound = self.throttle_rate;
        if draw < bound {
            return Fault::Throttle {
                error_type: self.throttle_error_type.clone(),
            };
        }
        bound += self.server_error_rate;
        if draw < bound {
            return Fault::ServerError { unavailable };
        }
        bound += self.drop_after_forward_rate;
        if draw < bound {
            return Fault::DropAfterForward;
        }
        bound += self.delay_rate;
        if draw < bound {
            return Fault::Delay(self.delay);
        }
        Fault::None
    }
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan::none()
    }
}

/// What the proxy did, one count per request: the fields sum to the requests answered or
/// dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Requests forwarded and answered unchanged, without a fault.
    pub forwarded: u64,
    /// Requests answered with an injected throttle, never forwarded.
    pub throttled: u64,
    /// Requests answered with an injected 500/503, never forwarded.
    pub server_errors: u64,
    /// Requests forwarded whose answer was dropped with the client's connection.
    pub dropped_after_forward: u64,
    /// Requests forwarded whose answer was held for the plan's delay (counted when the
    /// upstream answered, before the hold, so a client that gave up still counts).
    pub delayed: u64,
}

/// A running fault-injecting proxy on `127.0.0.1`; dropping it stops the proxy (its listener
/// and every connection task are aborted).
pub struct FaultProxy {
    /// Where clients connect: `http://127.0.0.1:PORT`.
    endpoint: String,
    /// What the connection tasks share with this handle (plan, RNG, counters).
    shared: Arc<Shared>,
    /// The accept loop; it owns the connection tasks, so aborting it ends them all.
    accept_task: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("endpoint", &self.endpoint)
            .field("upstream", &self.shared.upstream_base)
            .field("stats", &self.stats())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `upstream_endpoint` (an `http://` URL
    /// such as `"http://127.0.0.1:4567"`) with `plan`.
    ///
    /// # Panics
    /// When the endpoint is not a plain `http://host:port` URL, the plan is invalid (see
    /// [`FaultPlan`]) or no port of 127.0.0.1 is free.
    pub async fn start(upstream_endpoint: &str, plan: FaultPlan) -> FaultProxy {
        let upstream: Uri = upstream_endpoint
            .parse()
            .unwrap_or_else(|e| panic!("fault proxy upstream {upstream_endpoint:?}: {e}"));
        assert_eq!(
            upstream.scheme_str(),
            Some("http"),
            "fault proxy upstream {upstream_endpoint:?} must be an http:// URL"
        );
        assert!(
            matches!(upstream.path(), "" | "/") && upstream.query().is_none(),
            "fault proxy upstream {upstream_endpoint:?} must have no path"
        );
        let authority = upstream
            .authority()
            .unwrap_or_else(|| panic!("fault proxy upstream {upstream_endpoint:?} has no host"));
        plan.assert_valid();

        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("binding the fault proxy to 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound listener has a local address");
        let shared = Arc::new(Shared {
            upstream_base: format!("http://{authority}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
            decider: Mutex::new(Decider::new(plan)),
            counters: Counters::default(),
            request_seq: AtomicU64::new(0),
        });
        let accept_task = tokio::spawn(serve(listener, shared.clone()));
        tracing::debug!(%addr, upstream = %shared.upstream_base, "fault proxy started");
        FaultProxy {
            endpoint: format!("http://{addr}"),
            shared,
            accept_task,
        }
    }

    /// Returns the URL clients use: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// Replaces the plan (and reseeds the RNG from `plan.seed`) for the requests that arrive
    /// from now on; requests already being handled keep the fault they drew.
    ///
    /// # Panics
    /// When the plan is invalid (see [`FaultPlan`]).
    pub fn set_plan(&self, plan: FaultPlan) {
        plan.assert_valid();
        *self.shared.decider.lock() = Decider::new(plan);
    }

    /// Returns what the proxy has done so far.
    pub fn stats(&self) -> FaultStats {
        let c = &self.shared.counters;
        FaultStats {
            forwarded: c.forwarded.load(Ordering::Relaxed),
            throttled: c.throttled.load(Ordering::Relaxed),
            server_errors: c.server_errors.load(Ordering::Relaxed),
            dropped_after_forward: c.dropped_after_forward.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// The fault of one request.
#[derive(Clone, Debug, PartialEq)]
enum Fault {
    /// Forward and answer unchanged.
    None,
    /// Answer 400 with this `__type` without forwarding.
    Throttle { error_type: String },
    /// Answer 500 (or 503 when `unavailable`) without forwarding.
    ServerError { unavailable: bool },
    /// Forward, read the answer, close the client connection without it.
    DropAfterForward,
    /// Forward, hold the answer this long.
    Delay(Duration),
}

/// The plan and the RNG drawing from it, under one lock so that a reseed and a plan change
/// are one step.
struct Decider {
    plan: FaultPlan,
    rng: SmallRng,
}

impl Decider {
    fn new(plan: FaultPlan) -> Decider {
        Decider {
            rng: SmallRng::seed_from_u64(plan.seed),
            plan,
        }
    }

    /// Draws the fault of the next request. Always two draws, so the sequence of faults does
    /// not depend on which faults came before.
    fn next_fault(&mut self) -> Fault {
        let draw: f64 = self.rng.gen();
        let unavailable: bool = self.rng.gen();
        self.plan.choose(draw, unavailable)
    }
}

/// One counter per [`FaultStats`] field.
#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    throttled: AtomicU64,
    server_errors: AtomicU64,
    dropped_after_forward: AtomicU64,
    delayed: AtomicU64,
}

/// What the handle and the connection tasks share.
struct Shared {
    /// `http://host:port` of the upstream; a request's path and query are appended.
    upstream_base: String,
    /// One pooled HTTP/1 client to the upstream for all client connections.
    client: Client<HttpConnector, Full<Bytes>>,
    /// The plan and its RNG.
    decider: Mutex<Decider>,
    /// What was done, read by [`FaultProxy::stats`].
    counters: Counters,
    /// Numbers the request IDs of injected answers.
    request_seq: AtomicU64,
}

/// The service's error for a dropped answer: hyper closes the connection without writing a
/// response when the service fails.
#[derive(Debug)]
struct AnswerDropped;

impl std::fmt::Display for AnswerDropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer dropped after forward by the fault plan")
    }
}

impl std::error::Error for AnswerDropped {}

/// Accepts connections until aborted, at most [`FAULT_PROXY_CONNECTIONS_MAX`] at once. The
/// connection tasks live in a `JoinSet` owned by this future, so aborting it aborts them.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= FAULT_PROXY_CONNECTIONS_MAX {
            connections.join_next().await;
            continue;
        }
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "fault proxy accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        connections.spawn(serve_connection(stream, shared.clone()));
    }
}

/// Serves the HTTP/1.1 requests of one client connection.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // Small JSON requests: do not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { handle(&shared, request).await }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        // A dropped answer ends here, as does a client that hung up.
        tracing::debug!(error = %e, "fault proxy connection ended");
    }
}

/// Handles one request: reads it whole, draws its fault, answers or forwards.
async fn handle(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, AnswerDropped> {
    let (parts, body) = request.into_parts();
    // Read the body before answering even an injected error, as AWS does, so the connection
    // stays usable for the next request.
    let body = match Limited::new(body, FAULT_PROXY_BODY_BYTES_MAX)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::warn!(error = %e, "fault proxy could not read a request body");
            return Ok(proxy_error(
                StatusCode::BAD_REQUEST,
                "request body unreadable",
            ));
        }
    };
    let fault = shared.decider.lock().next_fault();
    let content_type = json_content_type(&parts.headers);
    let counters = &shared.counters;
    match &fault {
        Fault::Throttle { error_type } => {
            counters.throttled.fetch_add(1, Ordering::Relaxed);
            return Ok(aws_error(
                shared,
                StatusCode::BAD_REQUEST,
                error_type,
                "Rate exceeded (injected)",
                &content_type,
            ));
        }
        Fault::ServerError { unavailable } => {
            counters.server_errors.fetch_add(1, Ordering::Relaxed);
            let (status, error_type, message) = if *unavailable {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "Service unavailable (injected)",
                )
            } else {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalFailure",
                    "Internal failure (injected)",
                )
            };
            return Ok(aws_error(
                shared,
                status,
                error_type,
                message,
                &content_type,
            ));
        }
        Fault::None | Fault::DropAfterForward | Fault::Delay(_) => {}
    }

    let response = match tokio::time::timeout(
        FAULT_PROXY_UPSTREAM_TIMEOUT,
        forward(shared, parts, body),
    )
    .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, upstream = %shared.upstream_base, "fault proxy upstream failed");
            return Ok(proxy_error(StatusCode::BAD_GATEWAY, "upstream failed"));
        }
        Err(_) => {
            tracing::warn!(upstream = %shared.upstream_base, "fault proxy upstream timed out");
            return Ok(proxy_error(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream timed out",
            ));
        }
    };
    match fault {
        Fault::DropAfterForward => {
            counters
                .dropped_after_forward
                .fetch_add(1, Ordering::Relaxed);
            Err(AnswerDropped)
        }
        Fault::Delay(delay) => {
            counters.delayed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
            Ok(response)
        }
        Fault::None => {
            counters.forwarded.fetch_add(1, Ordering::Relaxed);
            Ok(response)
        }
        Fault::Throttle { .. } | Fault::ServerError { .. } => {
            unreachable!("answered above without forwarding")
        }
    }
}

/// Sends the request to the upstream (same method, path, end-to-end headers including `Host`,
/// body) and reads its whole answer.
async fn forward(
    shared: &Shared,
    parts: hyper::http::request::Parts,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = format!("{}{}", shared.upstream_base, path_and_query).parse()?;
    let mut request = Request::builder()
        .method(parts.method)
        .uri(uri)
        .body(Full::new(body))?;
    // The client adds a Host header only when there is none: the client's own is kept.
    copy_end_to_end_headers(&parts.headers, request.headers_mut());

    let response = shared.client.request(request).await?;
    let (upstream_parts, upstream_body) = response.into_parts();
    let upstream_body = Limited::new(upstream_body, FAULT_PROXY_BODY_BYTES_MAX)
        .collect()
        .await?
        .to_bytes();
    let mut answer = Response::new(Full::new(upstream_body));
    *answer.status_mut() = upstream_parts.status;
    copy_end_to_end_headers(&upstream_parts.headers, answer.headers_mut());
    Ok(answer)
}

/// Copies every header of `from` except the hop-by-hop ones (the fixed list and those the
/// `Connection` header names).
fn copy_end_to_end_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let named_by_connection: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in from {
        let name_str = name.as_str();
        if HOP_BY_HOP_HEADERS.contains(&name_str)
            || name == header::UPGRADE
            || named_by_connection.iter().any(|n| n == name_str)
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// Returns the request's content type when it is an AWS JSON one (`application/x-amz-json-1.1`
/// for Kinesis, `-1.0` for DynamoDB), so an injected answer mirrors it; otherwise awsJson1.1.
fn json_content_type(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(header::CONTENT_TYPE)
        .filter(|v| {
            v.to_str()
                .is_ok_and(|s| s.starts_with("application/x-amz-json"))
        })
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(JSON_CONTENT_TYPE_DEFAULT))
}

/// Builds an injected AWS JSON error answer, as the services send them: the code in the body's
/// `__type` and in `x-amzn-ErrorType`, and a request ID.
fn aws_error(
    shared: &Shared,
    status: StatusCode,
    error_type: &str,
    message: &str,
    content_type: &HeaderValue,
) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "__type": error_type, "message": message }).to_string();
    let seq = shared.request_seq.fetch_add(1, Ordering::Relaxed);
    let request_id = format!("00000000-0000-4000-8000-{:012x}", seq & 0xffff_ffff_ffff);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type.clone());
    headers.insert(
        HeaderName::from_static("x-amzn-errortype"),
        // The plan was checked to be a valid header value; the others are constants.
        HeaderValue::from_str(error_type).expect("checked by FaultPlan::assert_valid"),
    );
    headers.insert(
        HeaderName::from_static("x-amzn-requestid"),
        HeaderValue::from_str(&request_id).expect("hex digits and dashes are a valid header"),
    );
    response
}

/// Builds the proxy's own error answer (not an injected fault: the upstream failed).
fn proxy_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "__type": "FaultProxyError", "message": message }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A tiny upstream: answers every request 200, echoing its body, with the number of
    /// requests seen so far and the `Host` it got in headers.
    struct TestUpstream {
        endpoint: String,
        seen: Arc<AtomicU64>,
        task: JoinHandle<()>,
    }

    impl TestUpstream {
        async fn start() -> TestUpstream {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let endpoint = format!("http://{}", listener.local_addr().unwrap());
            let seen = Arc::new(AtomicU64::new(0));
            let counter = seen.clone();
            let task = tokio::spawn(async move {
                let mut connections = JoinSet::new();
                loop {
                    while connections.try_join_next().is_some() {}
                    let (stream, _) = listener.accept().await.unwrap();
                    let counter = counter.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |request: Request<Incoming>| {
                            let counter = counter.clone();
                            async move {
                                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                                let host = request.headers().get(header::HOST).cloned();
                                let target = request.headers().get("x-amz-target").cloned();
                                let body = request.into_body().collect().await?.to_bytes();
                                let mut response = Response::new(Full::new(body));
                                let headers = response.headers_mut();
                                headers.insert("x-upstream-count", n.into());
                                if let Some(host) = host {
                                    headers.insert("x-upstream-host", host);
                                }
                                if let Some(target) = target {
                                    headers.insert("x-upstream-target", target);
                                }
                                Ok::<_, hyper::Error>(response)
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            TestUpstream {
                endpoint,
                seen,
                task,
            }
        }

        fn seen(&self) -> u64 {
            self.seen.load(Ordering::SeqCst)
        }
    }

    impl Drop for TestUpstream {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn client() -> Client<HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new()).build_http()
    }

    fn kinesis_request(endpoint: &str, body: &'static str) -> Request<Full<Bytes>> {
        Request::post(format!("{endpoint}/"))
            .header(header::CONTENT_TYPE, "application/x-amz-json-1.1")
            .header("x-amz-target", "Kinesis_20131202.ListStreams")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    async fn send(
        client: &Client<HttpConnector, Full<Bytes>>,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), hyper_util::client::legacy::Error> {
        let response = client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    fn sum(stats: FaultStats) -> u64 {
        stats.forwarded
            + stats.throttled
            + stats.server_errors
            + stats.dropped_after_forward
            + stats.delayed
    }

    #[tokio::test]
    async fn a_plan_without_faults_forwards_every_request_unchanged() {
        let upstream = TestUpstream::start().await;
        let proxy = FaultProxy::start(&upstream.endpoint, FaultPlan::none()).await;
        let endpoint = proxy.endpoint();
        let host = endpoint.trim_start_matches("http://").to_string();
        let client = client();
        for i in 1..=20u64 {
            let (status, headers, body) =
                send(&client, kinesis_request(&endpoint, r#"{"Limit":7}"#))
                    .await
                    .unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                body,
                Bytes::from_static(br#"{"Limit":7}"#),
                "body unchanged"
            );
            assert_eq!(headers["x-upstream-count"], i.to_string().as_str());
            assert_eq!(
                headers["x-upstream-host"],
                host.as_str(),
                "Host as the client sent it"
            );
            assert_eq!(headers["x-upstream-target"], "Kinesis_20131202.ListStreams");
        }
        assert_eq!(upstream.seen(), 20);
        assert_eq!(
            proxy.stats(),
            FaultStats {
                forwarded: 20,
                ..FaultStats::default()
            }
        );
    }

    #[tokio::test]
    async fn a_throttled_request_gets_the_json_error_and_never_reaches_the_upstream() {
        let upstream = TestUpstream::start().await;
        let plan = FaultPlan {
            throttle_rate: 1.0,
            ..FaultPlan::none()
        };
        let proxy = FaultProxy::start(&upstream.endpoint, plan).await;
        let client = client();
        for _ in 0..3 {
            let (status, headers, body) = send(&client, kinesis_request(&proxy.endpoint(), "{}"))
                .await
                .unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(headers[header::CONTENT_TYPE], "application/x-amz-json-1.1");
            assert_eq!(
                headers["x-amzn-errortype"],
                "ProvisionedThroughputExceededException"
            );
            assert!(headers.contains_key("x-amzn-requestid"));
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["__type"], "ProvisionedThroughputExceededException");
            assert_eq!(json["message"], "Rate exceeded (injected)");
        }
        // DynamoDB's content type is mirrored, and the error type is the plan's.
        proxy.set_plan(FaultPlan {
            throttle_rate: 1.0,
            throttle_error_type: "ThrottlingException".into(),
            ..FaultPlan::none()
        });
        let request = Request::post(format!("{}/", proxy.endpoint()))
            .header(header::CONTENT_TYPE, "application/x-amz-json-1.0")
            .header("x-amz-target", "DynamoDB_20120810.GetItem")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let (status, headers, body) = send(&client, request).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers[header::CONTENT_TYPE], "application/x-amz-json-1.0");
        assert_eq!(headers["x-amzn-errortype"], "ThrottlingException");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["__type"], "ThrottlingException");

        assert_eq!(upstream.seen(), 0, "nothing was forwarded");
        assert_eq!(
            proxy.stats(),
            FaultStats {
                throttled: 4,
                ..FaultStats::default()
            }
        );
    }

    #[tokio::test]
    async fn a_server_error_is_a_500_or_503_and_never_reaches_the_upstream() {
        let upstream = TestUpstream::start().await;
        let plan = FaultPlan {
            server_error_rate: 1.0,
            seed: 3,
            ..FaultPlan::none()
        };
        let proxy = FaultProxy::start(&upstream.endpoint, plan).await;
        let client = client();
        let mut statuses = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let (status, headers, body) = send(&client, kinesis_request(&proxy.endpoint(), "{}"))
                .await
                .unwrap();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let expected = match status {
                StatusCode::INTERNAL_SERVER_ERROR => "InternalFailure",
                StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
                other => panic!("unexpected status {other}"),
            };
            assert_eq!(json["__type"], expected);
            assert_eq!(headers["x-amzn-errortype"], expected);
            statuses.insert(status.as_u16());
        }
        assert_eq!(statuses.len(), 2, "both 500 and 503 in 40 draws");
        assert_eq!(upstream.seen(), 0);
        assert_eq!(proxy.stats().server_errors, 40);
    }

    #[tokio::test]
    async fn a_dropped_answer_reaches_the_upstream_but_the_client_sees_a_connection_error() {
        let upstream = TestUpstream::start().await;
        let plan = FaultPlan {
            drop_after_forward_rate: 1.0,
            ..FaultPlan::none()
        };
        let proxy = FaultProxy::start(&upstream.endpoint, plan).await;
        let client = client();
        let result = send(&client, kinesis_request(&proxy.endpoint(), "{}")).await;
        assert!(result.is_err(), "no answer: {result:?}");
        assert_eq!(upstream.seen(), 1, "the write happened");
        assert_eq!(
            proxy.stats(),
            FaultStats {
                dropped_after_forward: 1,
                ..FaultStats::default()
            }
        );
        // The proxy still serves new connections.
        proxy.set_plan(FaultPlan::none());
        let (status, _, _) = send(&client, kinesis_request(&proxy.endpoint(), "{}"))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(upstream.seen(), 2);
    }

    #[tokio::test]
    async fn a_delayed_answer_arrives_after_the_delay() {
        let upstream = TestUpstream::start().await;
        let delay = Duration::from_millis(300);
        let plan = FaultPlan {
            delay_rate: 1.0,
            delay,
            ..FaultPlan::none()
        };
        let proxy = FaultProxy::start(&upstream.endpoint, plan).await;
        let client = client();
        let started = Instant::now();
        let (status, _, body) = send(&client, kinesis_request(&proxy.endpoint(), "{\"a\":1}"))
            .await
            .unwrap();
        assert!(
            started.elapsed() >= delay,
            "answered after {:?}",
            started.elapsed()
        );
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(proxy.stats().delayed, 1);
    }

    #[tokio::test]
    async fn a_delay_longer_than_the_client_timeout_is_a_timeout_after_the_write() {
        let upstream = TestUpstream::start().await;
        let plan = FaultPlan {
            delay_rate: 1.0,
            delay: Duration::from_secs(30),
            ..FaultPlan::none()
        };
        let proxy = FaultProxy::start(&upstream.endpoint, plan).await;
        let client = client();
        let result = tokio::time::timeout(
            Duration::from_millis(200),
            send(&client, kinesis_request(&proxy.endpoint(), "{}")),
        )
        .await;
        assert!(result.is_err(), "the client timed out");
        assert_eq!(upstream.seen(), 1);
        assert_eq!(proxy.stats().delayed, 1);
    }

    /// Sends `n` requests one after the other and returns the proxy's stats.
    async fn run_mixed(upstream: &TestUpstream, plan: FaultPlan, n: u64) -> FaultStats {
        let proxy = FaultProxy::start(&upstream.endpoint, plan).await;
        let client = client();
        for _ in 0..n {
            // Drops are errors; every other fault is an answer.
            let _ = send(&client, kinesis_request(&proxy.endpoint(), "{}")).await;
        }
        proxy.stats()
    }

    fn mixed_plan(seed: u64) -> FaultPlan {
        FaultPlan {
            throttle_rate: 0.3,
            server_error_rate: 0.3,
            drop_after_forward_rate: 0.1,
            delay_rate: 0.1,
            delay: Duration::from_millis(1),
            seed,
            ..FaultPlan::none()
        }
    }

    #[tokio::test]
    async fn mixed_rates_give_plausible_counts_that_sum_to_the_requests() {
        let upstream = TestUpstream::start().await;
        let stats = run_mixed(&upstream, mixed_plan(42), 200).await;
        assert_eq!(sum(stats), 200, "{stats:?}");
        // Expected 60/60/20/20/40; the bounds are about four standard deviations wide.
        assert!((35..=85).contains(&stats.throttled), "{stats:?}");
        assert!((35..=85).contains(&stats.server_errors), "{stats:?}");
        assert!((5..=40).contains(&stats.dropped_after_forward), "{stats:?}");
        assert!((5..=40).contains(&stats.delayed), "{stats:?}");
        assert!((18..=65).contains(&stats.forwarded), "{stats:?}");
        assert_eq!(
            upstream.seen(),
            stats.forwarded + stats.dropped_after_forward + stats.delayed,
            "only forwarded requests reach the upstream"
        );
    }

    #[tokio::test]
    async fn the_same_seed_gives_the_same_faults() {
        let upstream = TestUpstream::start().await;
        let first = run_mixed(&upstream, mixed_plan(7), 60).await;
        let second = run_mixed(&upstream, mixed_plan(7), 60).await;
        assert_eq!(first, second);
        // And the decisions, not only their counts, repeat.
        let sequence = |seed| {
            let mut decider = Decider::new(mixed_plan(seed));
            (0..100).map(|_| decider.next_fault()).collect::<Vec<_>>()
        };
        assert_eq!(sequence(7), sequence(7));
        assert_ne!(sequence(7), sequence(8));
    }

    #[tokio::test]
    async fn many_concurrent_connections_are_all_served() {
        let upstream = TestUpstream::start().await;
        let proxy = FaultProxy::start(&upstream.endpoint, FaultPlan::none()).await;
        let mut tasks = JoinSet::new();
        for _ in 0..64 {
            let endpoint = proxy.endpoint();
            tasks.spawn(async move {
                // One client each: separate connections.
                let client = client();
                for _ in 0..5 {
                    let (status, _, _) = send(&client, kinesis_request(&endpoint, "{}"))
                        .await
                        .unwrap();
                    assert_eq!(status, StatusCode::OK);
                }
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap();
        }
        assert_eq!(proxy.stats().forwarded, 320);
        assert_eq!(upstream.seen(), 320);
    }

    #[tokio::test]
    async fn dropping_the_proxy_stops_it() {
        let upstream = TestUpstream::start().await;
        let proxy = FaultProxy::start(&upstream.endpoint, FaultPlan::none()).await;
        let endpoint = proxy.endpoint();
        drop(proxy);
        // The abort takes effect when the runtime next polls the accept task: give it a
        // bounded while.
        let addr = endpoint.trim_start_matches("http://");
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the proxy at {addr} still listens after being dropped");
    }

    #[test]
    fn the_plan_splits_the_unit_interval_in_order() {
        let plan = FaultPlan {
            throttle_rate: 0.1,
            server_error_rate: 0.2,
            drop_after_forward_rate: 0.3,
            delay_rate: 0.4,
            delay: Duration::from_millis(5),
            ..FaultPlan::none()
        };
        plan.assert_valid();
        assert!(matches!(plan.choose(0.05, false), Fault::Throttle { .. }));
        assert_eq!(
            plan.choose(0.15, true),
            Fault::ServerError { unavailable: true }
        );
        assert_eq!(plan.choose(0.45, false), Fault::DropAfterForward);
        assert_eq!(
            plan.choose(0.65, false),
            Fault::Delay(Duration::from_millis(5))
        );
        assert_eq!(FaultPlan::none().choose(0.0, false), Fault::None);
    }

    #[test]
    #[should_panic(expected = "must be at most 1")]
    fn rates_adding_up_to_more_than_one_are_refused() {
        FaultPlan {
            throttle_rate: 0.6,
            server_error_rate: 0.6,
            ..FaultPlan::none()
        }
        .assert_valid();
    }

    #[test]
    #[should_panic(expected = "must be in [0, 1]")]
    fn a_rate_outside_zero_to_one_is_refused() {
        FaultPlan {
            delay_rate: f64::NAN,
            ..FaultPlan::none()
        }
        .assert_valid();
    }

    #[cfg(feature = "aws")]
    #[tokio::test]
    async fn the_kinesis_sdk_reads_an_injected_throttle_as_the_named_error() {
        use aws_sdk_kinesis::error::ProvideErrorMetadata;

        use crate::{
            aws::{sdk_config, AwsSettings},
            emulators::Emulator,
        };

        let emulator = Emulator::kinesis();
        let proxy = FaultProxy::start(emulator.endpoint(), FaultPlan::none()).await;
        let config = sdk_config(&AwsSettings::emulator(proxy.endpoint())).await;
        let kinesis = aws_sdk_kinesis::Client::new(&config);

        kinesis
            .list_streams()
            .send()
            .await
            .expect("list_streams through a proxy without faults");
        assert_eq!(proxy.stats().forwarded, 1);

        proxy.set_plan(FaultPlan {
            throttle_rate: 1.0,
            ..FaultPlan::none()
        });
        let err = kinesis.list_streams().send().await.unwrap_err();
        assert_eq!(
            err.code(),
            Some("ProvisionedThroughputExceededException"),
            "{err:?}"
        );
        assert_eq!(err.message(), Some("Rate exceeded (injected)"));
        // Where the error is modelled, the SDK gives the typed variant. The stream need not
        // exist: the request never reaches kinesalite.
        let err = kinesis
            .put_record()
            .stream_name("no-such-stream")
            .partition_key("k")
            .data(aws_sdk_kinesis::primitives::Blob::new(b"x".to_vec()))
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert!(
            err.is_provisioned_throughput_exceeded_exception(),
            "{err:?}"
        );
        assert_eq!(proxy.stats().throttled, 2);

        proxy.set_plan(FaultPlan::none());
        kinesis
            .list_streams()
            .send()
            .await
            .expect("list_streams after the faults stop");
    }

    #[cfg(feature = "aws")]
    #[tokio::test]
    async fn the_dynamodb_sdk_reads_an_injected_throttle_as_the_named_error() {
        use aws_sdk_dynamodb::{error::ProvideErrorMetadata, types::AttributeValue};

        use crate::aws::{sdk_config, AwsSettings};

        // The throttle is answered without forwarding, so the test upstream suffices.
        let upstream = TestUpstream::start().await;
        let plan = FaultPlan {
            throttle_rate: 1.0,
            ..FaultPlan::none()
        };
        let proxy = FaultProxy::start(&upstream.endpoint, plan).await;
        let config = sdk_config(&AwsSettings::emulator(proxy.endpoint())).await;
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let err = dynamodb
            .get_item()
            .table_name("snapshots")
            .key("pk", AttributeValue::S("k".into()))
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some("ProvisionedThroughputExceededException"),
            "{err:?}"
        );
        assert!(err
            .into_service_error()
            .is_provisioned_throughput_exceeded_exception());
        assert_eq!(upstream.seen(), 0);
    }
}
