//! Configuration of `saldo serve`: one struct, loaded from a TOML file, then overridden by
//! `SALDO_*` environment variables, then by flags (see [`crate::cli`]), then validated.
//!
//! The defaults are the embedded, no-cloud set-up: listen on 127.0.0.1:8080, keep the stream
//! and snapshots under `./data`, fsync on, `--auth none` (with a warning at start: the default
//! address is loopback-only, and a non-loopback address without auth gets a louder one).
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! data_dir = "./data"
//! fsync = true
//! log_format = "text"      # or "json"
//! auth = "jwt"             # or "none"
//!
//! [jwt]
//! issuer = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_XXXX"
//! audience = "my-app-client-id"
//! jwks_url = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_XXXX/.well-known/jwks.json"
//!
//! [tls]                   # HTTPS (docs/api.md "TLS"); or behind_tls_proxy + trusted_proxies
//! cert_file = "/etc/saldo/tls/tls.crt"
//! key_file = "/etc/saldo/tls/tls.key"
//!
//! [engine]
//! shards = 2
//!
//! [limits]
//! rate_limit_per_s = 1000
//! ```

use std::{net::SocketAddr, path::PathBuf};

use saldo_engine::EngineConfig;
use serde::{Deserialize, Serialize};

use crate::{
    auth::JwtConfig,
    limits::{
        BATCH_BODY_BYTES_MAX, BODY_BYTES_MAX, CONCURRENCY_MAX_DEFAULT, REQUEST_TIMEOUT_MS_DEFAULT,
        TRANSFER_BATCH_MAX,
    },
};

/// How requests are authenticated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication: every caller may do everything. Logged as a warning at start.
    #[default]
    None,
    /// OAuth2 bearer tokens (JWT) verified locally.
    Jwt,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything `saldo serve` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the stream (`wal/`) and snapshots (`snapshots/`).
    pub data_dir: PathBuf,
    /// Whether the stream fsyncs each group commit. On by default: an acknowledged transfer
    /// must survive a power cut (rule I2). Off only for throwaway benchmarks.
    pub fsync: bool,
    /// Log output format.
    pub log_format: LogFormat,
    /// OpenTelemetry collector (OTLP/HTTP base URL) to export request spans to; off when unset.
    pub otlp_endpoint: Option<String>,
    /// How requests are authenticated.
    pub auth: AuthMode,
    /// Token checks for `auth = "jwt"`.
    pub jwt: JwtConfig,
    /// Engine settings.
    pub engine: EngineSettings,
    /// Request limits.
    pub limits: LimitsConfig,
    /// The web console at `/console/`.
    pub console: ConsoleSettings,
    /// Where the stream and snapshots live (`[storage]`).
    pub storage: saldo_snapshotter::storage::StorageSettings,
    /// HTTPS, or the TLS-terminating proxy in front (`[tls]`).
    pub tls: TlsSettings,
}

/// Encryption in transit (`[tls]` in the file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first; with `key_file`, the gateway serves HTTPS only.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the leaf certificate.
    pub key_file: Option<PathBuf>,
    /// A proxy in front terminates TLS: `--auth jwt` may then listen on plain HTTP beyond
    /// loopback, and token-carrying requests must arrive through `trusted_proxies` with
    /// `X-Forwarded-Proto: https` (see [`crate::forwarded`]).
    pub behind_tls_proxy: bool,
    /// Networks whose `X-Forwarded-Proto` is believed (only with `behind_tls_proxy`).
    pub trusted_proxies: Vec<crate::forwarded::TrustedProxy>,
}

impl TlsSettings {
    /// Returns the certificate files when HTTPS is configured.
    pub fn cert_files(&self) -> Option<crate::tls::CertFiles> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// Checks the settings against each other and the listen address and auth mode.
    fn validate(&self, listen: SocketAddr, auth: AuthMode) -> Result<(), ConfigError> {
        let invalid = |s: &str| Err(ConfigError::Invalid(s.to_owned()));
        if self.cert_file.is_some() != self.key_file.is_some() {
            return invalid("--tls-cert and --tls-key go together (tls.cert_file, tls.key_file)");
        }
        if self.behind_tls_proxy && self.trusted_proxies.is_empty() {
            return invalid(
                "--behind-tls-proxy needs at least one --trusted-proxy (the proxies' addresses, \
                 e.g. 10.0.0.0/8): X-Forwarded-Proto is believed only from them",
            );
        }
        if !self.behind_tls_proxy && !self.trusted_proxies.is_empty() {
            return invalid("--trusted-proxy is used only with --behind-tls-proxy");
        }
        if self.trusted_proxies.len() > crate::limits::TRUSTED_PROXIES_MAX {
            return invalid("too many trusted proxies (TRUSTED_PROXIES_MAX)");
        }
        if auth == AuthMode::Jwt
            && !listen.ip().is_loopback()
            && self.cert_files().is_none()
            && !self.behind_tls_proxy
        {
            return Err(ConfigError::Invalid(format!(
                "--auth jwt on {listen} without TLS would send bearer tokens in clear text; \
                 serve HTTPS with --tls-cert/--tls-key, or say that a TLS-terminating proxy \
                 is in front with --behind-tls-proxy (and --trusted-proxy)"
            )));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            fsync: true,
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            auth: AuthMode::None,
            jwt: JwtConfig::default(),
            engine: EngineSettings::default(),
            limits: LimitsConfig::default(),
            console: ConsoleSettings::default(),
            storage: saldo_snapshotter::storage::StorageSettings::default(),
            tls: TlsSettings::default(),
        }
    }
}

/// Settings of the web console (`[console]` in the file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    /// The OAuth2 issuer the console signs in with (`[console.oauth]`); without it the console
    /// offers only a pasted bearer token.
    pub oauth: Option<ConsoleOAuthSettings>,
}

/// A Cognito-compatible issuer for the console's sign-in (authorization code + PKCE).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleOAuthSettings {
    /// Authorization endpoint (`https://<domain>/oauth2/authorize`).
    pub authorize_url: String,
    /// Token endpoint (`https://<domain>/oauth2/token`).
    pub token_url: String,
    /// Public app client (no secret) registered for the console.
    pub client_id: String,
    /// Scopes to ask for.
    #[serde(default = "ConsoleOAuthSettings::default_scope")]
    pub scope: String,
}

impl ConsoleOAuthSettings {
    /// Returns the scopes asked for when none are configured.
    pub fn default_scope() -> String {
        "openid ledger:read ledger:write".to_owned()
    }
}

impl ConsoleSettings {
    /// Returns the console's configuration.
    pub fn console_config(&self) -> crate::console::ConsoleConfig {
        crate::console::ConsoleConfig {
            oauth_opt: self.oauth.as_ref().map(|o| crate::console::OAuthConfig {
                authorize_url: o.authorize_url.clone(),
                token_url: o.token_url.clone(),
                client_id: o.client_id.clone(),
                scope: o.scope.clone(),
            }),
        }
    }
}

/// Engine settings, as in [`EngineConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Number of logical shards (a power of two). Fixed for the life of a data directory.
    pub shards: u32,
    /// Owner epoch written into stream records.
    pub node_epoch: u64,
    /// Rows of movement history kept in memory per account.
    pub movements_window: usize,
    /// Transfers and entries coordinated at once; beyond it the gateway answers 503.
    pub in_flight_max: usize,
    /// Group-commit linger, µs (0: flush as soon as the previous flush is done).
    pub group_commit_linger_us: u64,
    /// Snapshot a shard after this many events …
    pub snapshot_every_events: u64,
    /// … or this often, ms (0: only on demand).
    pub snapshot_interval_ms: u64,
    /// Snapshots kept per shard.
    pub snapshots_keep: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            // One shard: on one small node every transfer then stays within a shard (one
            // durable wait instead of three, one group commit and one fsync stream instead of
            // several contending for the disk). Measured on 2 cores: p99 at 4,000 transfers/s
            // 2.1 ms against 15 ms with two shards, closed loop 14–18k/s against 12k/s
            // (docs/BENCHMARKS.md). The actors still use every core. A cluster that will
            // spread shards over nodes chooses more when it creates its data dir.
            shards: 1,
            node_epoch: 1,
            movements_window: 100,
            in_flight_max: 10_000,
            group_commit_linger_us: 0,
            snapshot_every_events: 1_000_000,
            snapshot_interval_ms: 60_000,
            snapshots_keep: 2,
        }
    }
}

/// Request limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body of every route but the batch one, bytes.
    pub body_bytes_max: usize,
    /// Largest body of `POST /v1/transfers/batch`, bytes.
    pub batch_body_bytes_max: usize,
    /// Bound on handling one request, ms; past it the answer is 503.
    pub request_timeout_ms: u64,
    /// Requests handled at once; past it the answer is 503 (no queueing).
    pub concurrency_max: usize,
    /// Requests per second per client (0: no rate limit).
    pub rate_limit_per_s: u32,
    /// Burst per client (0: one second's worth of `rate_limit_per_s`).
    pub rate_limit_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            body_bytes_max: BODY_BYTES_MAX,
            batch_body_bytes_max: BATCH_BODY_BYTES_MAX,
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            concurrency_max: CONCURRENCY_MAX_DEFAULT,
            rate_limit_per_s: 0,
            rate_limit_burst: 0,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this struct (unknown keys included).
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Returns the configuration in `path`, or the defaults when there is no file.
    pub fn from_file(path_opt: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let Some(path) = path_opt else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks every value and the relations between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: String| Err(ConfigError::Invalid(s));
        self.storage
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let e = &self.engine;
        if e.shards == 0 || !e.shards.is_power_of_two() {
            return invalid(format!("shards must be a power of two, got {}", e.shards));
        }
        if e.in_flight_max < TRANSFER_BATCH_MAX {
            return invalid(format!(
                "in_flight_max ({}) must hold a full batch ({TRANSFER_BATCH_MAX})",
                e.in_flight_max
            ));
        }
        if e.movements_window == 0 || e.snapshots_keep == 0 {
            return invalid("movements_window and snapshots_keep must be positive".into());
        }
        let l = &self.limits;
        if l.body_bytes_max < 1024 || l.batch_body_bytes_max < l.body_bytes_max {
            return invalid("body_bytes_max must be >= 1024 and <= batch_body_bytes_max".into());
        }
        if l.request_timeout_ms == 0 || l.concurrency_max == 0 {
            return invalid("request_timeout_ms and concurrency_max must be positive".into());
        }
        if self.auth == AuthMode::Jwt
            && self.jwt.jwks_file.is_none()
            && self.jwt.jwks_url.is_none()
            && self.jwt.hs256_secret.is_none()
        {
            return invalid("auth = jwt needs jwks_file, jwks_url or hs256_secret".into());
        }
        if self.jwt.hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return invalid("the hs256 secret must be at least 32 bytes".into());
        }
        self.tls.validate(self.listen, self.auth)?;
        if let Some(oauth) = self.console.console_config().oauth_opt {
            if let Err(e) = oauth.validate() {
                return invalid(e.to_string());
            }
        }
        Ok(())
    }

    /// Returns the engine's configuration.
    pub fn engine_config(&self) -> EngineConfig {
        let e = &self.engine;
        EngineConfig {
            num_shards: e.shards,
            node_epoch: e.node_epoch,
            movements_window: e.movements_window,
            in_flight_max: e.in_flight_max,
            group_commit_linger_us: e.group_commit_linger_us,
            snapshot_every_events: e.snapshot_every_events,
            snapshot_interval_ms: e.snapshot_interval_ms,
            snapshots_keep: e.snapshots_keep,
            clock: saldo_engine::Clock::system(),
            courier: saldo_engine::Courier::direct(),
        }
    }

    /// Returns the directory of the write-ahead stream.
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("wal")
    }

    /// Returns the directory of the snapshots.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.data_dir.join("snapshots")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_embedded() {
        let c = Config::default();
        c.validate().expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.fsync);
        assert_eq!(c.auth, AuthMode::None);
    }

    #[test]
    fn a_config_file_overrides_the_defaults_and_refuses_unknown_keys() {
        let c: Config = toml::from_str("listen = \"0.0.0.0:9000\"\n[engine]\nshards = 16\n")
            .expect("valid toml");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.engine.shards, 16);
        assert_eq!(c.engine.movements_window, 100);
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
        assert!(toml::from_str::<Config>("[engine]\nshard = 3").is_err());
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let mut c = Config::default();
        c.engine.shards = 6;
        assert!(c.validate().is_err());
        let mut c = Config {
            auth: AuthMode::Jwt,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        c.jwt.hs256_secret = Some("short".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_console_oauth_table_is_read_and_validated() {
        let c: Config = toml::from_str(
            "[console.oauth]\nauthorize_url = \"https://id.example/oauth2/authorize\"\n\
             token_url = \"https://id.example/oauth2/token\"\nclient_id = \"console\"\n",
        )
        .expect("valid toml");
        c.validate().expect("valid oauth settings");
        let oauth = c.console.oauth.clone().expect("oauth present");
        assert_eq!(oauth.scope, "openid ledger:read ledger:write");
        let mut bad = c;
        bad.console.oauth.as_mut().expect("oauth present").token_url = "ftp://x".into();
        assert!(bad.validate().is_err());
    }
}
