//! Command line of the `saldo` binary.
//!
//! `saldo serve` runs the node; `saldo snapshotter` and `saldo shard …` are the operators'
//! tools, whose flags and dispatch are in [`tools`] (their logic is
//! [`saldo_snapshotter::tools`]). Every flag can also come from a `SALDO_*` environment
//! variable; both override the config file (`--config`).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use saldo_snapshotter::storage::{SnapshotBackend, StorageSettings, WalBackend};

use crate::config::{AuthMode, Config, ConfigError, ConsoleOAuthSettings, LogFormat};

pub mod tools;

/// The `saldo` command line.
#[derive(Debug, Parser)]
#[command(name = "saldo", version, about = "saldo: an in-memory ledger engine")]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a ledger node with its HTTP API.
    Serve(Box<ServeArgs>),
    /// Follows the stream beside the nodes and writes each shard's snapshots (and audits the
    /// stream as it reads it).
    Snapshotter(Box<tools::SnapshotterArgs>),
    /// Operator tools: list shards and snapshots, restore or verify a shard.
    Shard(Box<tools::ShardArgs>),
}

/// Flags of `saldo serve`; each overrides the config file.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (flags and SALDO_* variables override it).
    #[arg(long, env = "SALDO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SALDO_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the stream and snapshots [default: ./data].
    #[arg(long, env = "SALDO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of logical shards, a power of two, fixed for the life of the stream
    /// [default: 1].
    #[arg(long, env = "SALDO_SHARDS")]
    pub shards: Option<u32>,
    /// fsync each group commit [default: true].
    #[arg(long, env = "SALDO_FSYNC", action = clap::ArgAction::Set)]
    pub fsync: Option<bool>,
    /// Authentication of /v1 requests [default: none].
    #[arg(long, env = "SALDO_AUTH", value_enum)]
    pub auth: Option<AuthMode>,
    /// Log format [default: text].
    #[arg(long, env = "SALDO_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Export request spans to this OpenTelemetry collector (OTLP/HTTP, e.g.
    /// http://127.0.0.1:4318) [default: off].
    #[arg(long, env = "SALDO_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Expected token issuer (`iss`).
    #[arg(long, env = "SALDO_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Expected token audience (`aud` or Cognito's `client_id`).
    #[arg(long, env = "SALDO_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// JWKS file with the token signing keys.
    #[arg(long, env = "SALDO_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL with the token signing keys.
    #[arg(long, env = "SALDO_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Shared secret accepting HS256 tokens (development only, >= 32 bytes).
    #[arg(long, env = "SALDO_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// Claim listing the accounts a token may touch [default: saldo:accounts].
    #[arg(long, env = "SALDO_JWT_ACCOUNTS_CLAIM")]
    pub jwt_accounts_claim: Option<String>,
    /// Largest request body, bytes [default: 65536].
    #[arg(long, env = "SALDO_BODY_BYTES_MAX")]
    pub body_bytes_max: Option<usize>,
    /// Largest batch request body, bytes [default: 6291456].
    #[arg(long, env = "SALDO_BATCH_BODY_BYTES_MAX")]
    pub batch_body_bytes_max: Option<usize>,
    /// Bound on handling one request, ms [default: 10000].
    #[arg(long, env = "SALDO_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Requests handled at once before shedding with 503 [default: 8192].
    #[arg(long, env = "SALDO_CONCURRENCY_MAX")]
    pub concurrency_max: Option<usize>,
    /// Requests per second per client, 0 for none [default: 0].
    #[arg(long, env = "SALDO_RATE_LIMIT_PER_S")]
    pub rate_limit_per_s: Option<u32>,
    /// Burst per client [default: one second's worth].
    #[arg(long, env = "SALDO_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// Owner epoch of this node's stream records [default: 1].
    #[arg(long, env = "SALDO_NODE_EPOCH")]
    pub node_epoch: Option<u64>,
    /// Movement history rows kept in memory per account [default: 100].
    #[arg(long, env = "SALDO_MOVEMENTS_WINDOW")]
    pub movements_window: Option<usize>,
    /// Transfers coordinated at once [default: 10000].
    #[arg(long, env = "SALDO_IN_FLIGHT_MAX")]
    pub in_flight_max: Option<usize>,
    /// Group-commit linger, µs [default: 0].
    #[arg(long, env = "SALDO_GROUP_COMMIT_LINGER_US")]
    pub group_commit_linger_us: Option<u64>,
    /// Snapshot a shard every N events [default: 1000000].
    #[arg(long, env = "SALDO_SNAPSHOT_EVERY_EVENTS")]
    pub snapshot_every_events: Option<u64>,
    /// Snapshot a shard every N ms [default: 60000].
    #[arg(long, env = "SALDO_SNAPSHOT_INTERVAL_MS")]
    pub snapshot_interval_ms: Option<u64>,
    /// Snapshots kept per shard [default: 2].
    #[arg(long, env = "SALDO_SNAPSHOTS_KEEP")]
    pub snapshots_keep: Option<usize>,
    /// Console sign-in: the issuer's authorization endpoint (with the three below).
    #[arg(long, env = "SALDO_CONSOLE_OAUTH_AUTHORIZE_URL")]
    pub console_oauth_authorize_url: Option<String>,
    /// Console sign-in: the issuer's token endpoint.
    #[arg(long, env = "SALDO_CONSOLE_OAUTH_TOKEN_URL")]
    pub console_oauth_token_url: Option<String>,
    /// Console sign-in: the public app client ID.
    #[arg(long, env = "SALDO_CONSOLE_OAUTH_CLIENT_ID")]
    pub console_oauth_client_id: Option<String>,
    /// Console sign-in: scopes [default: openid ledger:read ledger:write].
    #[arg(long, env = "SALDO_CONSOLE_OAUTH_SCOPE")]
    pub console_oauth_scope: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (leaf first; reloaded when it changes).
    #[arg(long, env = "SALDO_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "SALDO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A TLS-terminating proxy is in front: allows --auth jwt on plain HTTP, and token-carrying
    /// requests must come from a --trusted-proxy with X-Forwarded-Proto: https.
    #[arg(long, env = "SALDO_BEHIND_TLS_PROXY")]
    pub behind_tls_proxy: bool,
    /// Address or network of the TLS proxy (e.g. 10.0.0.0/8); repeatable, or comma-separated
    /// in SALDO_TRUSTED_PROXIES.
    #[arg(
        long = "trusted-proxy",
        env = "SALDO_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<crate::forwarded::TrustedProxy>,
    /// Where the stream and snapshots live.
    #[command(flatten)]
    pub storage: StorageArgs,
}

impl ServeArgs {
    /// Returns the configuration: file (or defaults), overridden by environment and flags,
    /// validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::from_file(self.config.as_deref())?;
        self.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Overrides `config` with every flag (or environment variable) that was given.
    pub fn apply(&self, config: &mut Config) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *target = v.clone();
            }
        }
        fn set_opt<T: Clone>(target: &mut Option<T>, value: &Option<T>) {
            if value.is_some() {
                target.clone_from(value);
            }
        }
        set(&mut config.listen, &self.listen);
        set(&mut config.data_dir, &self.data_dir);
        set(&mut config.fsync, &self.fsync);
        set(&mut config.auth, &self.auth);
        set(&mut config.log_format, &self.log_format);
        set_opt(&mut config.otlp_endpoint, &self.otlp_endpoint);
        let tls = &mut config.tls;
        set_opt(&mut tls.cert_file, &self.tls_cert);
        set_opt(&mut tls.key_file, &self.tls_key);
        // A bare flag can only turn the proxy mode on; the file's `true` stays.
        tls.behind_tls_proxy |= self.behind_tls_proxy;
        if !self.trusted_proxies.is_empty() {
            tls.trusted_proxies.clone_from(&self.trusted_proxies);
        }
        let jwt = &mut config.jwt;
        set_opt(&mut jwt.issuer, &self.jwt_issuer);
        set_opt(&mut jwt.audience, &self.jwt_audience);
        set_opt(&mut jwt.jwks_file, &self.jwks_file);
        set_opt(&mut jwt.jwks_url, &self.jwks_url);
        set_opt(&mut jwt.hs256_secret, &self.jwt_hs256_secret);
        set_opt(&mut jwt.accounts_claim, &self.jwt_accounts_claim);
        let limits = &mut config.limits;
        set(&mut limits.body_bytes_max, &self.body_bytes_max);
        set(&mut limits.batch_body_bytes_max, &self.batch_body_bytes_max);
        set(&mut limits.request_timeout_ms, &self.request_timeout_ms);
        set(&mut limits.concurrency_max, &self.concurrency_max);
        set(&mut limits.rate_limit_per_s, &self.rate_limit_per_s);
        set(&mut limits.rate_limit_burst, &self.rate_limit_burst);
        let engine = &mut config.engine;
        set(&mut engine.shards, &self.shards);
        set(&mut engine.node_epoch, &self.node_epoch);
        self.storage.apply(&mut config.storage);
        set(&mut engine.movements_window, &self.movements_window);
        set(&mut engine.in_flight_max, &self.in_flight_max);
        set(
            &mut engine.group_commit_linger_us,
            &self.group_commit_linger_us,
        );
        set(
            &mut engine.snapshot_every_events,
            &self.snapshot_every_events,
        );
        set(&mut engine.snapshot_interval_ms, &self.snapshot_interval_ms);
        set(&mut engine.snapshots_keep, &self.snapshots_keep);
        let console_flags = [
            &self.console_oauth_authorize_url,
            &self.console_oauth_token_url,
            &self.console_oauth_client_id,
            &self.console_oauth_scope,
        ];
        if console_flags.iter().any(|f| f.is_some()) {
            // A flag completes or overrides the file's `[console.oauth]`; whatever is still
            // missing stays empty and `validate()` names it.
            let oauth = config
                .console
                .oauth
                .get_or_insert_with(|| ConsoleOAuthSettings {
                    scope: ConsoleOAuthSettings::default_scope(),
                    ..ConsoleOAuthSettings::default()
                });
            set(&mut oauth.authorize_url, &self.console_oauth_authorize_url);
            set(&mut oauth.token_url, &self.console_oauth_token_url);
            set(&mut oauth.client_id, &self.console_oauth_client_id);
            set(&mut oauth.scope, &self.console_oauth_scope);
        }
    }
}

/// Storage flags, shared by every subcommand. Global: `saldo shard list --wal kinesis …` and
/// `saldo shard --wal kinesis … list` both work.
#[derive(Debug, Default, Clone, Args)]
pub struct StorageArgs {
    /// Write-ahead stream backend [default: file].
    #[arg(long, global = true, env = "SALDO_WAL", value_enum)]
    pub wal: Option<WalBackend>,
    /// Snapshot store backend [default: dir].
    #[arg(long, global = true, env = "SALDO_SNAPSHOT_STORE", value_enum)]
    pub snapshot_store: Option<SnapshotBackend>,
    /// Kinesis stream name (with --wal kinesis).
    #[arg(long, global = true, env = "SALDO_KINESIS_STREAM")]
    pub kinesis_stream: Option<String>,
    /// Kinesis endpoint URL (an emulator; default: AWS).
    #[arg(long, global = true, env = "SALDO_KINESIS_ENDPOINT")]
    pub kinesis_endpoint: Option<String>,
    /// Shards of a stream made by --create-resources [default: 1].
    #[arg(long, global = true, env = "SALDO_KINESIS_SHARDS")]
    pub kinesis_shards: Option<u32>,
    /// DynamoDB table name (with --snapshot-store dynamodb).
    #[arg(long, global = true, env = "SALDO_DYNAMODB_TABLE")]
    pub dynamodb_table: Option<String>,
    /// DynamoDB endpoint URL (an emulator; default: AWS).
    #[arg(long, global = true, env = "SALDO_DYNAMODB_ENDPOINT")]
    pub dynamodb_endpoint: Option<String>,
    /// AWS region (default: the provider chain, AWS_REGION).
    #[arg(long, global = true, env = "SALDO_AWS_REGION")]
    pub aws_region: Option<String>,
    /// Create a missing Kinesis stream / DynamoDB table (development and tests).
    #[arg(long, global = true, env = "SALDO_CREATE_RESOURCES", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub create_resources: Option<bool>,
}

impl StorageArgs {
    /// Overrides `s` with every flag that was given.
    pub fn apply(&self, s: &mut StorageSettings) {
        if let Some(v) = self.wal {
            s.wal = v;
        }
        if let Some(v) = self.snapshot_store {
            s.snapshot_store = v;
        }
        let strings = [
            (&mut s.kinesis_stream, &self.kinesis_stream),
            (&mut s.kinesis_endpoint, &self.kinesis_endpoint),
            (&mut s.dynamodb_table, &self.dynamodb_table),
            (&mut s.dynamodb_endpoint, &self.dynamodb_endpoint),
            (&mut s.aws_region, &self.aws_region),
        ];
        for (target, value) in strings {
            if value.is_some() {
                target.clone_from(value);
            }
        }
        if let Some(v) = self.kinesis_shards {
            s.kinesis_shards = v;
        }
        if let Some(v) = self.create_resources {
            s.create_resources = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn flags_override_the_config_file() {
        let dir = std::env::temp_dir().join(format!("saldo-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("saldo.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\nfsync = false\n[engine]\nshards = 4\n",
        )
        .expect("write config");
        let cli = Cli::try_parse_from([
            "saldo",
            "serve",
            "--config",
            file.to_str().expect("utf-8 path"),
            "--shards",
            "16",
            "--fsync",
            "true",
            "--auth",
            "none",
        ])
        .expect("valid flags");
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let config = args.load().expect("valid config");
        assert_eq!(config.listen.port(), 7000, "from the file");
        assert_eq!(config.engine.shards, 16, "the flag wins over the file");
        assert!(config.fsync, "the flag wins over the file");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// Parses `saldo serve EXTRA…` and loads its configuration.
    fn parse_serve(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["saldo", "serve"];
        argv.extend_from_slice(extra);
        let Command::Serve(args) = Cli::try_parse_from(argv).expect("valid flags").command else {
            panic!("serve")
        };
        args.load()
    }

    #[test]
    fn storage_flags_select_the_aws_backends_and_need_their_names() {
        let parse = parse_serve;
        let config = parse(&[
            "--wal",
            "kinesis",
            "--kinesis-stream",
            "s",
            "--snapshot-store",
            "dynamodb",
            "--dynamodb-table",
            "t",
            "--create-resources",
        ])
        .expect("valid");
        assert_eq!(config.storage.wal, WalBackend::Kinesis);
        assert_eq!(config.storage.dynamodb_table.as_deref(), Some("t"));
        assert!(config.storage.create_resources);
        let err = parse(&["--wal", "kinesis"]).expect_err("no stream name");
        assert!(err.to_string().contains("--kinesis-stream"), "{err}");
        let err = parse(&["--snapshot-store", "dynamodb"]).expect_err("no table");
        assert!(err.to_string().contains("--dynamodb-table"), "{err}");
        assert!(Cli::try_parse_from(["saldo", "serve", "--wal", "s3"]).is_err());
        let shard = Cli::try_parse_from(["saldo", "shard", "restore", "3", "--at", "120"])
            .expect("valid shard flags");
        assert!(matches!(shard.command, Command::Shard(_)));
    }

    #[test]
    fn console_oauth_flags_must_come_together() {
        let parse = parse_serve;
        let config = parse(&[
            "--console-oauth-authorize-url",
            "https://id.example/oauth2/authorize",
            "--console-oauth-token-url",
            "https://id.example/oauth2/token",
            "--console-oauth-client-id",
            "console",
        ])
        .expect("complete oauth flags");
        assert_eq!(
            config.console.oauth.expect("oauth set").scope,
            "openid ledger:read ledger:write"
        );
        assert!(parse(&["--console-oauth-client-id", "console"]).is_err());
    }

    #[test]
    fn storage_flags_parse_before_and_after_the_shard_subcommand() {
        let flags = ["--wal", "kinesis", "--kinesis-stream", "s", "--shards", "8"];
        let before = [&["saldo", "shard"][..], &flags[..], &["list"][..]].concat();
        let after = [&["saldo", "shard", "list"][..], &flags[..]].concat();
        for argv in [before, after] {
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let Command::Shard(args) = cli.command else {
                panic!("shard")
            };
            assert_eq!(args.store.shards, Some(8), "{argv:?}");
            assert_eq!(args.store.storage.kinesis_stream.as_deref(), Some("s"));
        }
    }

    #[test]
    fn no_help_text_says_the_shard_count_defaults_to_two() {
        use clap::CommandFactory;
        let cli = Cli::command();
        for name in ["serve", "shard", "snapshotter"] {
            let sub = cli.find_subcommand(name).expect("subcommand");
            let shards = sub
                .get_arguments()
                .find(|a| a.get_id() == "shards")
                .unwrap_or_else(|| panic!("{name} takes --shards"));
            let help = shards.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.contains("1]"), "{name}: {help}");
            assert!(!help.contains("2]"), "{name}: {help}");
        }
    }

    #[test]
    fn jwt_beyond_loopback_without_tls_is_refused_naming_both_ways_out() {
        let secret = "0123456789abcdef0123456789abcdef";
        let jwt = ["--auth", "jwt", "--jwt-hs256-secret", secret];
        let wide = [&jwt[..], &["--listen", "0.0.0.0:8080"]].concat();
        let err = parse_serve(&wide).expect_err("clear-text tokens");
        let message = err.to_string();
        assert!(message.contains("--tls-cert/--tls-key"), "{message}");
        assert!(message.contains("--behind-tls-proxy"), "{message}");
        parse_serve(&jwt).expect("loopback is fine");
        let proxied = [
            &wide[..],
            &["--behind-tls-proxy", "--trusted-proxy", "10.0.0.0/8"],
        ];
        let config = parse_serve(&proxied.concat()).expect("proxy in front");
        assert_eq!(config.tls.trusted_proxies.len(), 1);
        let tls = [&wide[..], &["--tls-cert", "c.pem", "--tls-key", "k.pem"]].concat();
        let config = parse_serve(&tls).expect("https");
        assert!(config.tls.cert_files().is_some());
    }

    #[test]
    fn tls_settings_come_from_the_config_file_and_flags_override_them() {
        let dir = tempfile_dir("tls");
        let file = dir.join("saldo.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:8443\"\nauth = \"jwt\"\n\
             [jwt]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n\
             [tls]\ncert_file = \"/etc/tls.crt\"\nkey_file = \"/etc/tls.key\"\n\
             behind_tls_proxy = true\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]\n",
        )
        .expect("write config");
        let path = file.to_str().expect("utf-8 path");
        let config = parse_serve(&["--config", path]).expect("valid file");
        assert_eq!(
            config.tls.key_file.as_deref(),
            Some(Path::new("/etc/tls.key"))
        );
        assert_eq!(config.tls.trusted_proxies.len(), 2);
        let flags = [
            "--config",
            path,
            "--tls-cert",
            "/a.crt",
            "--tls-key",
            "/a.key",
        ];
        let config = parse_serve(&[&flags[..], &["--trusted-proxy", "192.0.2.0/24"]].concat())
            .expect("flags over the file");
        assert_eq!(config.tls.cert_file.as_deref(), Some(Path::new("/a.crt")));
        assert_eq!(
            config.tls.trusted_proxies.len(),
            1,
            "the flag replaces the list"
        );
        std::fs::write(&file, "[tls]\ncert = \"x\"\n").expect("write config");
        assert!(
            parse_serve(&["--config", path]).is_err(),
            "unknown keys are refused"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// Returns a fresh directory for one test's files.
    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("saldo-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn the_proxy_flag_needs_trusted_proxies_and_they_need_the_flag() {
        let err = parse_serve(&["--behind-tls-proxy"]).expect_err("no proxies");
        assert!(err.to_string().contains("--trusted-proxy"), "{err}");
        let err = parse_serve(&["--trusted-proxy", "10.0.0.1"]).expect_err("no flag");
        assert!(err.to_string().contains("--behind-tls-proxy"), "{err}");
        assert!(Cli::try_parse_from(["saldo", "serve", "--trusted-proxy", "ten"]).is_err());
        assert!(
            Cli::try_parse_from(["saldo", "serve", "--tls-cert", "c.pem"]).is_err(),
            "the key goes with the certificate"
        );
    }

    #[test]
    fn unknown_auth_modes_are_refused() {
        assert!(Cli::try_parse_from(["saldo", "serve", "--auth", "maybe"]).is_err());
    }
}
