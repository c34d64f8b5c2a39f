//! The `saldo-loadtest` binary: parses flags, builds the runtime, runs the command.

use std::process::ExitCode;

use clap::Parser;
use saldo_loadtest::app::{run_load, run_verify, EXIT_ERROR};
use saldo_loadtest::cli::{Cli, Command};

/// The generator runs on the cores of the server it measures: the less CPU it spends, the
/// more the figures say about the server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`); a kernel
/// without it leaves them as they are, which costs latency, not correctness.
fn disable_transparent_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integer arguments and touches no
    // memory of this process.
    let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if done != 0 {
        eprintln!(
            "warning: transparent huge pages stay on ({}): latency figures may include the generator's page-fault stalls",
            std::io::Error::last_os_error()
        );
    }
}

fn main() -> ExitCode {
    // First, before the allocator maps anything: no transparent huge pages. mimalloc asks for
    // them on its arenas, and a fault on one may compact memory on the spot. The generator is
    // one thread, so a stall of its thread is a stall of every request it has scheduled, and
    // an open loop counts it as server latency: the remembered acknowledgements grow its heap
    // through the run, and at 35,000 transfers/s it stalled for 40-150 ms every few seconds
    // (the server's own request durations stayed under 25 ms). saldo serve does the same.
    disable_transparent_huge_pages();
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

#[cfg(test)]
mod tests {
    #[test]
    fn huge_pages_are_off_once_disabled() {
        super::disable_transparent_huge_pages();
        // SAFETY: prctl with PR_GET_THP_DISABLE takes plain integer arguments only.
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(
            disabled, 1,
            "the generator runs with transparent huge pages on"
        );
    }
}
