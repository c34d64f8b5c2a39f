//! # saldo-gateway
//!
//! The HTTP gateway of saldo (axum) and the library behind the `saldo` binary. Clients reach
//! the ledger only through here: it authenticates, validates, applies idempotency and limits,
//! and maps the engine's outcomes to JSON and `application/problem+json`.
//!
//! ## Layout (in the order a request flows)
//! - [`cli`] and [`config`]: the `saldo` flags, `SALDO_*` variables and the TOML file;
//!   [`cli::tools`]: the flags of `saldo snapshotter` and `saldo shard …`, whose logic (and the
//!   opening of the stream and snapshot backends) is in `saldo_snapshotter`.
//! - [`listener`]: the accept loop's bound on open connections (and `TCP_NODELAY`), and the
//!   TLS handshake of each connection.
//! - [`tls`]: HTTPS (rustls, HTTP/2 by ALPN) and the certificate reloaded when its files
//!   change; [`forwarded`]: `--behind-tls-proxy` and the proxies trusted for
//!   `X-Forwarded-Proto`.
//! - [`server`]: [`run`] (serve, restore the ledger, graceful shutdown), [`router`] and the
//!   admission middleware (load shedding, auth, rate limit, timeout, span, metrics).
//! - [`auth`]: bearer tokens (JWKS / HS256), scopes, per-merchant account restriction.
//! - [`ratelimit`]: per-client token buckets.
//! - [`extract`]: body, path and query extractors whose every failure is problem+json.
//! - [`routes`]: the handlers; [`api`]: the wire DTOs; [`format`]: amounts and timestamps.
//! - [`error`]: [`ApiError`], the one error type, and its problem+json rendering.
//! - [`metrics`]: lock-free Prometheus registry; [`openapi`]: the OpenAPI 3.1 document.
//! - [`state`]: shared state; [`limits`]: every bound, with its reason; [`telemetry`]: logs.
//! - [`console`]: the merchant web console at `/console/` (embedded static files).
//!
//! ## Invariants
//! - Bad input never reaches the ledger: every request is validated whole before the call.
//! - Every error answer is `application/problem+json` with a stable `code`.
//! - Every body, batch, queue and cache is bounded (see [`limits`]).
//!
//! ## Failure model
//! Engine overload and unavailability become 503 with `Retry-After`; a request that times out
//! is answered 503 while its write may still complete, which is safe because writes are
//! idempotent by ID and the client retries with the same ID.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod error;
pub mod extract;
pub mod format;
pub mod forwarded;
pub mod limits;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use error::ApiError;
pub use server::{open_ledger, router, router_with, run, shutdown_signal, GatewayError};
pub use state::AppState;
