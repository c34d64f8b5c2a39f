//! The server: the router, the admission middleware and [`run`].
//!
//! Every request passes one middleware, `admit`, which in this order: sheds load past
//! `concurrency_max` (503), under `--behind-tls-proxy` refuses `/v1` and token-carrying
//! requests that did not come through a trusted proxy over HTTPS (403), authenticates `/v1`
//! requests and checks the method's scope (401/403), applies the per-client rate limit (429),
//! bounds the handling time (503), opens the request's tracing span and records the request's
//! metrics. It is one function rather than a stack of tower layers so that the hot path pays
//! for one boxed future, not five; and it is a [`tower_service::Service`] of its own
//! ([`Admit`]) rather than `axum::middleware::from_fn`, which boxes the rest of the stack again
//! on every request.
//!
//! Per request on the success path it allocates nothing of its own beyond that future: the
//! route is a metrics index, not a label string; under `--auth none` the principal is the one
//! shared `Arc` (not inserted into the request); the span is `debug` (off by default) unless
//! spans are exported, so nothing is formatted at `info`; skipped checks (no rate limit, no
//! trusted proxies) cost a branch.
//!
//! [`run`] serves immediately (`/healthz` answers, `/readyz` and `/v1` say 503) while the
//! ledger is restored, then serves everything. On shutdown it stops accepting, lets in-flight
//! requests finish (bounded by [`SHUTDOWN_GRACE_MS`]), then shuts the ledger down, which flushes
//! the stream.

use std::{
    convert::Infallible,
    future::{Future, IntoFuture},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, MatchedPath, Request},
    http::Method,
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use saldo_engine::Ledger;
use saldo_snapshotter::storage::{open_storage, wal_error, StorageError, WalBackend};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    auth::{AuthSetupError, Authenticator, Scope},
    config::{AuthMode, Config},
    error::ApiError,
    limits::{RETENTION_PER_SNAPSHOT_INTERVAL_MIN, SHUTDOWN_GRACE_MS},
    listener::PeerAddr,
    metrics::{self, METRICS, ROUTES},
    ratelimit::ClientKey,
    routes,
    state::AppState,
};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The authenticator could not be set up (JWKS file unreadable, …).
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    /// The TLS certificate or key could not be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The stream or snapshot store could not be opened (or its data directory prepared), or
    /// the stream was created with another shard count.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The engine could not restore the ledger.
    #[error("failed to open the ledger: {0}")]
    Engine(#[source] saldo_engine::EngineError),
    /// The HTTP server failed.
    #[error("http server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// A shard's stream failed and now takes writes again: the node is fail-stop, and a
    /// restart recovers the shard from what is durable.
    #[error(
        "the stream of shard(s) {shards} failed and takes writes again; exiting so that a \
         restart recovers them from what is durable (docs/runbook.md)"
    )]
    RestartRequired {
        /// The shards that failed.
        shards: String,
    },
    /// The snapshot settings cannot cover every record before the stream's retention expires
    /// it: a shard quiet for that long would restart without its newest records.
    #[error("{0}")]
    SnapshotCadence(String),
}

/// Checks that the snapshots cover every record well before the stream's retention (if its
/// records expire) can drop it: snapshots by time, at most every
/// `retention / RETENTION_PER_SNAPSHOT_INTERVAL_MIN`. A node with both triggers off relies on
/// a `saldo snapshotter`, which checks its own interval; it is warned about, not refused.
pub fn check_snapshot_cadence(
    snapshot_every_events: u64,
    snapshot_interval_ms: u64,
    retention_ms_opt: Option<u64>,
) -> Result<(), GatewayError> {
    let Some(retention_ms) = retention_ms_opt else {
        return Ok(());
    };
    let interval_ms_max = retention_ms / RETENTION_PER_SNAPSHOT_INTERVAL_MIN;
    if snapshot_every_events == 0 && snapshot_interval_ms == 0 {
        tracing::warn!(
            retention_ms,
            interval_ms_max,
            "node snapshots are off: a saldo snapshotter must snapshot every shard at least \
             every interval_ms_max, or a shard quiet for longer than the stream's retention \
             restarts without its newest records"
        );
        return Ok(());
    }
    if snapshot_interval_ms == 0 || snapshot_interval_ms > interval_ms_max {
        return Err(GatewayError::SnapshotCadence(format!(
            "the stream keeps records for {retention_ms} ms, so every shard needs a snapshot at \
             least every {interval_ms_max} ms (a quarter of that), but --snapshot-interval-ms is \
             {snapshot_interval_ms}{}: set --snapshot-interval-ms to at most {interval_ms_max}, \
             or turn node snapshots off (--snapshot-every-events 0 --snapshot-interval-ms 0) and \
             run saldo snapshotter with --interval-ms at most {interval_ms_max}",
            if snapshot_interval_ms == 0 {
                " (off)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// Returns the router of the API over `state`, with the console without single sign-on.
pub fn router(state: AppState) -> Router {
    router_with(state, crate::console::ConsoleConfig::default())
}

/// Returns the router of the API over `state`, with the console configured by `console`.
pub fn router_with(state: AppState, console: crate::console::ConsoleConfig) -> Router {
    Router::new()
        .route("/v1/accounts", post(routes::open_account))
        .route("/v1/accounts/{id}", get(routes::get_account))
        .route("/v1/accounts/{id}/entries", post(routes::post_entry))
        .route(
            "/v1/accounts/{id}/entries/{entry_id}",
            get(routes::get_entry),
        )
        .route("/v1/accounts/{id}/movements", get(routes::movements))
        .route("/v1/accounts/{id}/daily", get(routes::daily))
        .route("/v1/transfers", post(routes::transfer))
        .route(
            "/v1/transfers/batch",
            post(routes::transfer_batch).get(routes::get_transfer_named_batch),
        )
        .route("/v1/transfers/{id}", get(routes::get_transfer))
        .route(
            "/v1/admin/shards/{shard}/checksum",
            get(routes::shard_checksum),
        )
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(routes::openapi))
        .merge(crate::console::router_with(console))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(AdmitLayer(state.clone()))
        .with_state(state)
}

/// Wraps every route in [`Admit`].
#[derive(Clone)]
struct AdmitLayer(AppState);

impl<S> tower_layer::Layer<S> for AdmitLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Admit<S> {
        Admit {
            state: self.0.clone(),
            inner,
        }
    }
}

/// The admission middleware (see the module docs) around the route `inner`.
#[derive(Clone)]
pub struct Admit<S> {
    /// The shared state the checks read.
    state: AppState,
    /// The route: the handler, which runs once the request is admitted.
    inner: S,
}

impl<S> tower_service::Service<Request> for Admit<S>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The route polled ready handles this request; its clone waits for the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move { Ok(admit(state, req, inner).await) })
    }
}

/// Opens the `request` span, at `$level`.
macro_rules! request_span {
    ($level:expr, $method:expr, $route:expr) => {
        tracing::span!(
            $level,
            "request",
            method = %$method,
            route = $route,
            id = tracing::field::Empty,
            status = tracing::field::Empty,
        )
    };
}

/// Admits `req` or answers it (see the module docs), then records its metrics.
async fn admit<S>(state: AppState, req: Request, next: S) -> Response
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible>,
{
    let start = Instant::now();
    let matched_opt = req.extensions().get::<MatchedPath>();
    let route = metrics::route_index(req.method(), matched_opt.map(MatchedPath::as_str));
    let matched = matched_opt.is_some();
    // At `info` only when spans are exported: otherwise `RUST_LOG=info` would format the span's
    // fields on every request for logs that never show them (no event inside is at `info` on
    // the success path). `RUST_LOG=debug` shows them in the logs.
    let span = if crate::telemetry::exports_traces() {
        let span = request_span!(tracing::Level::INFO, req.method(), ROUTES[route].1);
        crate::telemetry::set_remote_parent(&span, req.headers());
        span
    } else {
        request_span!(tracing::Level::DEBUG, req.method(), ROUTES[route].1)
    };
    let response = match state.enter() {
        Some(_guard) => {
            admit_inner(&state, req, next, matched)
                .instrument(span.clone())
                .await
        }
        None => ApiError::Unavailable {
            detail: "too many requests in flight".into(),
        }
        .into_response(),
    };
    let status = response.status().as_u16();
    span.record("status", status);
    METRICS.record(route, status, start.elapsed().as_micros() as u64);
    response
}

async fn admit_inner<S>(state: &AppState, mut req: Request, mut next: S, matched: bool) -> Response
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible>,
{
    let shared = state.shared();
    let is_v1 = req.uri().path().starts_with("/v1/");
    if let Some(trusted) = &shared.tls_proxies_opt {
        if is_v1
            || req
                .headers()
                .contains_key(axum::http::header::AUTHORIZATION)
        {
            let peer_opt = req
                .extensions()
                .get::<ConnectInfo<PeerAddr>>()
                .map(|ConnectInfo(PeerAddr(addr))| addr.ip());
            if !crate::forwarded::came_over_https(trusted, peer_opt, req.headers()) {
                return ApiError::TlsRequired.into_response();
            }
        }
    }
    if matched && is_v1 {
        let principal = match shared.auth.authenticate(req.headers()).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let scope = match *req.method() {
            _ if req.uri().path().starts_with("/v1/admin/") => Scope::Admin,
            Method::GET | Method::HEAD => Scope::Read,
            _ => Scope::Write,
        };
        if let Err(e) = principal.require(scope) {
            return e.into_response();
        }
        if let Some(limiter) = &shared.rate_limiter_opt {
            let key_opt = match &principal.subject_opt {
                Some(subject) => Some(ClientKey::Subject(subject.clone())),
                None => req
                    .extensions()
                    .get::<ConnectInfo<PeerAddr>>()
                    .map(|ConnectInfo(PeerAddr(addr))| ClientKey::Ip(addr.ip())),
            };
            if let Some(key) = key_opt {
                if let Err(retry_after_s) = limiter.check(&key) {
                    return ApiError::RateLimited { retry_after_s }.into_response();
                }
            }
        }
        if shared.auth.is_enabled() {
            // Under `--auth none` the handlers' `Caller` is the shared unrestricted principal.
            req.extensions_mut()
                .insert::<Arc<crate::auth::Principal>>(principal);
        }
    }
    match tokio::time::timeout(shared.request_timeout, next.call(req)).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => ApiError::Unavailable {
            detail: "the request timed out; a write may still have been applied: retry it with \
                     the same id"
                .into(),
        }
        .into_response(),
    }
}

/// Returns the authenticator the configuration asks for, warning loudly under `--auth none`.
pub async fn authenticator(config: &Config) -> Result<Authenticator, GatewayError> {
    match config.auth {
        AuthMode::None => {
            if config.listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %config.listen,
                    "auth is off (--auth none): every local client may read and move money"
                );
            } else {
                tracing::warn!(
                    listen = %config.listen,
                    "AUTH IS OFF (--auth none) ON A NON-LOOPBACK ADDRESS: anyone who reaches \
                     this port may read and move money; use --auth jwt"
                );
            }
            Ok(Authenticator::none())
        }
        AuthMode::Jwt => {
            if config.jwt.issuer.is_none() {
                tracing::warn!("no --jwt-issuer: tokens of any issuer signed by these keys pass");
            }
            if config.jwt.audience.is_none() {
                tracing::warn!("no --jwt-audience: tokens for any audience (app client) pass");
            }
            if config.jwt.hs256_secret.is_some() {
                tracing::warn!("HS256 tokens are accepted (--jwt-hs256-secret): development only");
            }
            Ok(Authenticator::jwt(config.jwt.clone()).await?)
        }
    }
}

/// Opens the configured stream and snapshot store and restores the ledger.
///
/// With the Kinesis stream the owner epoch is at least the start time in ms, so each restart
/// of a node writes with a higher epoch than any earlier run, and readers ignore a zombie
/// predecessor's late records (docs/kinesis.md).
pub async fn open_ledger(config: &Config) -> Result<Ledger, GatewayError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StorageError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let storage = open_storage(&config.storage, &config.data_dir, config.fsync, false).await?;
    storage
        .wal
        .claim_shard_count(config.engine.shards)
        .await
        .map_err(wal_error)?;
    check_snapshot_cadence(
        config.engine.snapshot_every_events,
        config.engine.snapshot_interval_ms,
        storage.wal.retention_ms().await.map_err(wal_error)?,
    )?;
    let mut engine = config.engine_config();
    if config.storage.wal == WalBackend::Kinesis {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        engine.node_epoch = engine.node_epoch.max(now_ms);
    }
    tracing::info!(wal = %storage.wal.describe(), snapshots = %storage.snapshots.describe(), epoch = engine.node_epoch, "storage opened");
    Ledger::open(engine, storage.wal, storage.snapshots)
        .await
        .map_err(GatewayError::Engine)
}

/// Runs the gateway on `listener` until `shutdown` completes, then shuts down gracefully.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let local_addr = listener.local_addr().map_err(GatewayError::Serve)?;
    let tls_opt = match config.tls.cert_files() {
        Some(files) => Some(crate::tls::ServerTls::load(files)?),
        None => None,
    };
    let auth = authenticator(&config).await?;
    let mut state = AppState::new(auth, config.limits.clone());
    if config.tls.behind_tls_proxy {
        state = state.behind_tls_proxy(config.tls.trusted_proxies.clone());
    }
    let app = router_with(state.clone(), config.console.console_config());
    let stop = CancellationToken::new();
    let mut listener = crate::listener::BoundedListener::new(listener);
    let mut reloader_opt = None;
    if let Some(tls) = &tls_opt {
        listener = listener.with_tls(tls.acceptor.clone());
        // Ends with `stop`, when the server stops accepting; joined below.
        reloader_opt = Some(tls.spawn_reloader(stop.clone()));
    }
    let scheme = if tls_opt.is_some() { "https" } else { "http" };
    // The peer address is read only by the rate limiter (a client without a token is its IP)
    // and the trusted-proxy check; without them it is not put into every request.
    let shared = state.shared();
    let needs_peer = shared.rate_limiter_opt.is_some() || shared.tls_proxies_opt.is_some();
    let stopped = stop.clone().cancelled_owned();
    let mut server = if needs_peer {
        let app = app.into_make_service_with_connect_info::<PeerAddr>();
        tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .into_future(),
        )
    } else {
        tokio::spawn(
            axum::serve(listener, app.into_make_service())
                .with_graceful_shutdown(stopped)
                .into_future(),
        )
    };
    let mut shutdown = std::pin::pin!(shutdown);
    tracing::info!(listen = %local_addr, scheme, data_dir = %config.data_dir.display(), "listening; restoring the ledger");
    let opened = tokio::select! {
        result = open_ledger(&config) => Some(result),
        _ = &mut shutdown => None,
    };
    let mut outcome = Ok(());
    match opened {
        Some(Ok(ledger)) => {
            // What the restore decoded is freed in the background, while the ledger serves;
            // the memory goes back to the operating system once it is.
            let freeing = ledger.clone();
            tokio::spawn(async move {
                freeing.restore_freed().await;
                crate::memory::release_freed_memory();
                // What is freed just after (buffers of blocking threads as they stop, a
                // worker's late frees) goes back then too, not after the purge delay.
                tokio::time::sleep(crate::memory::RELEASE_AGAIN_AFTER).await;
                crate::memory::release_freed_memory();
            });
            state.set_ledger(ledger);
            crate::memory::release_freed_memory();
            tracing::info!(shards = config.engine.shards, "ledger restored; serving");
            let ledger = state.ledger_opt().expect("set above");
            tokio::select! {
                _ = &mut shutdown => tracing::info!("shutdown requested"),
                () = ledger.restart_required() => {
                    let failed = ledger.failed_shards();
                    tracing::error!(?failed, "a failed stream takes writes again; exiting so that a restart recovers the shard");
                    outcome = Err(GatewayError::RestartRequired {
                        shards: failed.iter().map(|(s, _)| s.to_string()).collect::<Vec<_>>().join(", "),
                    });
                }
                joined = &mut server => {
                    outcome = flatten_serve(joined);
                    tracing::error!("http server stopped on its own");
                }
            }
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "the ledger could not be opened");
            outcome = Err(e);
        }
        None => tracing::info!("shutdown requested during restore"),
    }
    stop.cancel();
    if let Some(reloader) = reloader_opt {
        // It only sleeps and reads two files: it stops at its next poll of `stop`.
        let _ = reloader.await;
    }
    if !server.is_finished() {
        match tokio::time::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), &mut server).await {
            Ok(joined) => outcome = outcome.and(flatten_serve(joined)),
            Err(_) => {
                tracing::warn!("in-flight requests did not finish in time; dropping them");
                server.abort();
            }
        }
    }
    if let Some(ledger) = state.ledger_opt() {
        ledger.shutdown().await;
        tracing::info!("ledger flushed and stopped");
    }
    outcome
}

fn flatten_serve(
    joined: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> Result<(), GatewayError> {
    match joined {
        Ok(result) => result.map_err(GatewayError::Serve),
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        // Installing a handler fails only if the runtime has no signal driver; then the other
        // signal still works.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
