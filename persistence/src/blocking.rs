//! Blocking work of the backends (file I/O, compression), kept off the runtime's workers.
//!
//! On a runtime worker it goes to the runtime's blocking pool. A background thread that drives
//! a backend from its own thread (a node's snapshot thread, at a lower priority) marks itself
//! with [`do_blocking_work_here`], and its blocking work then runs on it: at its priority, not
//! at the pool's, so writing a snapshot of a gigabyte does not compete with the request path
//! as an equal.

use std::cell::Cell;

thread_local! {
    static HERE: Cell<bool> = const { Cell::new(false) };
}

/// Makes the backends' blocking work called from this thread run on it. For threads of their
/// own that drive a backend with `Handle::block_on`; never for a runtime worker.
pub fn do_blocking_work_here() {
    HERE.with(|here| here.set(true));
}

/// Runs `work` on this thread if it asked for it ([`do_blocking_work_here`]), else on the
/// runtime's blocking pool.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if HERE.with(Cell::get) {
        Ok(work())
    } else {
        tokio::task::spawn_blocking(work).await
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn work_runs_on_the_thread_that_asked_and_on_the_pool_otherwise() {
        let here = std::thread::current().id();
        let elsewhere = super::run(|| std::thread::current().id()).await.unwrap();
        assert_ne!(elsewhere, here, "a worker's blocking work goes to the pool");
        let handle = tokio::runtime::Handle::current();
        let (caller, ran_on) = std::thread::spawn(move || {
            super::do_blocking_work_here();
            let ran_on = handle
                .block_on(super::run(|| std::thread::current().id()))
                .unwrap();
            (std::thread::current().id(), ran_on)
        })
        .join()
        .unwrap();
        assert_eq!(ran_on, caller);
    }
}
