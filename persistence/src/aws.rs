//! What the AWS backends share: the SDK configuration (region and credentials from the
//! standard provider chain, an optional endpoint for the local emulators, timeouts, an HTTPS
//! client on rustls + ring), saldo's own bounded retry with exponential backoff and full jitter,
//! and the compression of stored bytes.
//!
//! The SDK's own retries are turned off: every call goes through [`Backoff`], so retries are
//! bounded by the named limits below, counted in the backends' metrics, and the same for
//! Kinesis and DynamoDB.

use std::time::Duration;

use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region};
use aws_sdk_kinesis::config::Credentials;
use rand::Rng;

/// Attempts of one AWS call before the backend reports `Unavailable` (first try included).
pub const AWS_ATTEMPTS_MAX: u32 = 8;
/// First retry delay; doubles each attempt (full jitter: a uniform draw below the bound).
pub const AWS_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Longest retry delay.
pub const AWS_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Connecting to the endpoint.
pub const AWS_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One attempt of a call, end to end (kinesalite can hang on some iterators: never wait
/// forever).
pub const AWS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// zstd level of stored bytes: fast enough for the hot path, ~3-5x on saldo's events.
pub const ZSTD_LEVEL: i32 = 3;

/// Where and how to reach AWS.
#[derive(Clone, Debug, Default)]
pub struct AwsSettings {
    /// Region; `None` = the provider chain (`AWS_REGION`, profile, IMDS), then `us-east-1`
    /// when an endpoint is given (the emulators ignore it).
    pub region: Option<String>,
    /// Endpoint override (`http://127.0.0.1:4567` for kinesalite); `None` = AWS.
    pub endpoint: Option<String>,
    /// Static credentials (tests against the emulators); `None` = the provider chain.
    pub static_credentials: Option<(String, String)>,
    /// Create a missing stream/table (development and tests); otherwise a missing resource is
    /// an error at start.
    pub create_resources: bool,
}

impl AwsSettings {
    /// Settings for a local emulator at `endpoint` with dummy credentials.
    pub fn emulator(endpoint: impl Into<String>) -> AwsSettings {
        AwsSettings {
            region: Some("us-east-1".into()),
            endpoint: Some(endpoint.into()),
            // DynamoDB Local accepts only letters and digits in the key ID.
            static_credentials: Some(("saldotest".into(), "saldotest".into())),
            create_resources: true,
        }
    }
}

/// Loads the SDK configuration for `settings`: one HTTPS client (rustls on ring), timeouts,
/// SDK retries off (see [`Backoff`]).
pub async fn sdk_config(settings: &AwsSettings) -> aws_config::SdkConfig {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(AWS_CONNECT_TIMEOUT)
                .operation_attempt_timeout(AWS_ATTEMPT_TIMEOUT)
                .build(),
        );
    match (&settings.region, &settings.endpoint) {
        (Some(region), _) => loader = loader.region(Region::new(region.clone())),
        (None, Some(_)) => {
            // An emulator: the environment's region if any, else us-east-1. Not the default
            // chain built here by hand: its instance-metadata provider would have no HTTP
            // client (the loader's own chain, used without an endpoint, gets one).
            loader = loader.region(
                aws_config::meta::region::RegionProviderChain::first_try(
                    aws_config::environment::region::EnvironmentVariableRegionProvider::new(),
                )
                .or_else(Region::new("us-east-1")),
            )
        }
        (None, None) => {}
    }
    if let Some(endpoint) = &settings.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    if let Some((key, secret)) = &settings.static_credentials {
        loader = loader.credentials_provider(Credentials::new(
            key.clone(),
            secret.clone(),
            None,
            None,
            "saldo-static",
        ));
    }
    loader.load().await
}

/// Bounded exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS
/// Architecture Blog): attempt `n` sleeps a uniform draw in `[0, min(max, base * 2^n))`.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
    attempts_max: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(AWS_ATTEMPTS_MAX)
    }
}

impl Backoff {
    /// A backoff allowing `attempts_max` attempts in all.
    pub fn new(attempts_max: u32) -> Backoff {
        Backoff {
            attempt: 0,
            attempts_max: attempts_max.max(1),
        }
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Records a failed attempt; returns the delay before the next one, or `None` when the
    /// attempts are used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.attempt += 1;
        if self.attempt >= self.attempts_max {
            return None;
        }
        let exp = AWS_BACKOFF_BASE.saturating_mul(1u32 << self.attempt.min(16));
        let bound = exp.min(AWS_BACKOFF_MAX);
        let micros = rand::thread_rng().gen_range(0..=bound.as_micros() as u64);
        Some(Duration::from_micros(micros))
    }
}

/// Compresses stored bytes (zstd, [`ZSTD_LEVEL`]).
pub fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::bulk::compress(data, ZSTD_LEVEL)
}

/// Decompresses bytes written by [`compress`], refusing output over `limit` bytes.
pub fn decompress(data: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    zstd::bulk::decompress(data, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_stops() {
        let mut b = Backoff::new(5);
        let mut delays = Vec::new();
        while let Some(d) = b.next_delay() {
            assert!(d <= AWS_BACKOFF_MAX);
            delays.push(d);
        }
        assert_eq!(delays.len(), 4, "5 attempts = 4 waits");
        assert_eq!(b.attempts(), 5);
    }

    #[test]
    fn compression_round_trips_and_bounds_output() {
        let data = b"saldo ".repeat(10_000);
        let c = compress(&data).unwrap();
        assert!(c.len() < data.len() / 10);
        assert_eq!(decompress(&c, data.len()).unwrap(), data);
        assert!(decompress(&c, data.len() - 1).is_err());
    }
}
