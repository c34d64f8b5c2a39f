//! The `saldo` binary: `saldo serve` runs a node until SIGINT or SIGTERM; `saldo snapshotter`
//! follows the stream and writes snapshots; `saldo shard …` are the operators' tools.

use anyhow::Context;
use clap::Parser;
use gateway::cli::{Cli, Command};

/// mimalloc: the request path allocates small, short-lived buffers on every worker; glibc
/// malloc took ~18% of the server's CPU under load (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Freed memory is reused for a while before it goes back to the OS (gateway::memory).
    gateway::memory::purge_freed_memory_late();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Freed memory goes back to the OS when a worker idles, and when an idle blocking
        // thread (a restore reads the stream on them) stops (gateway::memory).
        .on_thread_park(gateway::memory::on_worker_idle)
        .on_thread_stop(gateway::memory::on_thread_stop)
        .thread_keep_alive(gateway::memory::BLOCKING_THREAD_KEEP_ALIVE)
        .build()
        .context("failed to start the async runtime")?
        .block_on(run(Cli::parse()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            // A failed invariant stops the process: a crash beats a wrong balance, and a dead
            // actor that answers 503 forever is neither. The restart restores from what is
            // durable (a panic in a task would otherwise only stop that task).
            let default_hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                default_hook(info);
                std::process::abort();
            }));
            // Huge-page faults stalled runtime workers (saldo_engine::process).
            let huge_pages = saldo_engine::process::disable_transparent_huge_pages();
            let config = args.load().context("failed to load the configuration")?;
            let _telemetry =
                gateway::telemetry::init(config.log_format, config.otlp_endpoint.as_deref())?;
            if let Err(e) = huge_pages {
                tracing::warn!(error = %e, "transparent huge pages could not be turned off; the latency tail may grow");
            }
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("failed to listen on {}", config.listen))?;
            gateway::run(listener, config, gateway::shutdown_signal()).await?;
            Ok(())
        }
        Command::Snapshotter(args) => {
            let _telemetry = gateway::telemetry::init(gateway::config::LogFormat::Text, None)?;
            gateway::cli::tools::snapshotter(&args, gateway::shutdown_signal()).await
        }
        Command::Shard(args) => {
            // Warnings only: the tool's own output goes to stdout (results) and stderr
            // (progress).
            if std::env::var_os("RUST_LOG").is_none() {
                std::env::set_var("RUST_LOG", "warn");
            }
            let _telemetry = gateway::telemetry::init(gateway::config::LogFormat::Text, None)?;
            let code = gateway::cli::tools::shard(&args).await?;
            std::process::exit(code);
        }
    }
}
