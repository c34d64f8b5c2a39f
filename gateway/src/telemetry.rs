//! Logging set-up: `tracing` to stderr, as text or one JSON object per line, filtered by
//! `RUST_LOG` (default `info`).
//!
//! OpenTelemetry export (`--otlp-endpoint`) is not built into this binary: asking for it is an
//! error at start rather than a silent no-op.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::LogFormat;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `--otlp-endpoint` was given, but this build has no OTLP exporter.
    #[error("--otlp-endpoint {0}: saldo was not built with otlp support")]
    OtlpUnsupported(String),
    /// A global subscriber was already installed.
    #[error("failed to install the log subscriber: {0}")]
    Install(String),
}

/// Installs the global subscriber.
pub fn init(format: LogFormat, otlp_endpoint_opt: Option<&str>) -> Result<(), TelemetryError> {
    if let Some(endpoint) = otlp_endpoint_opt {
        return Err(TelemetryError::OtlpUnsupported(endpoint.to_owned()));
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
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
    result.map_err(|e| TelemetryError::Install(e.to_string()))
}
