//! The `saldo-loadtest` binary: parses flags, builds the runtime, runs the command.

use std::process::ExitCode;

use clap::Parser;
use saldo_loadtest::app::{run_load, run_verify, EXIT_ERROR};
use saldo_loadtest::cli::{Cli, Command};

/// The generator runs on the cores of the server it measures: the less CPU it spends, the
/// more the figures say about the server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli.run.threads.max(1);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async {
        match cli.command_opt {
            Some(Command::Verify(args)) => run_verify(args).await,
            None => run_load(cli.run).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
