//! The `saldo` binary: parses flags, loads the configuration, sets up logging and runs the
//! gateway until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use gateway::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.load().context("failed to load the configuration")?;
            gateway::telemetry::init(config.log_format, config.otlp_endpoint.as_deref())?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("failed to listen on {}", config.listen))?;
            gateway::run(listener, config, gateway::shutdown_signal()).await?;
            Ok(())
        }
    }
}
