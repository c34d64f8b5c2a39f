//! Running two pieces of work at once: restore builds two large maps per shard, and a fold runs
//! the accounts' and the movements' sides of a stream tail side by side; and work done after
//! the fact (freeing what a restore decoded).

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

/// Runs `a` on this thread and `b` on a scoped thread named `name`, and returns both results.
/// When no thread can be spawned, `b` runs here after `a`: the work is the same, only slower.
pub(crate) fn join<A, B>(name: &str, a: impl FnOnce() -> A, b: impl FnOnce() -> B + Send) -> (A, B)
where
    B: Send,
{
    // `b` stays reachable from here until the thread takes it, so a failed spawn loses nothing.
    let b_slot = Mutex::new(Some(b));
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn_scoped(scope, || {
                let b_opt = b_slot.lock().take();
                b_opt.map(|b| b())
            });
        let a_out = a();
        let b_out = spawned
            .ok()
            .and_then(|handle| handle.join().expect("the other half of the work panicked"));
        let b_out = b_out.unwrap_or_else(|| {
            let b = b_slot.lock().take().expect("no thread took it");
            b()
        });
        (a_out, b_out)
    })
}

/// Runs `jobs` on this thread and one more (each takes the next job not yet taken), and
/// returns their results in the order of the jobs.
pub(crate) fn run_all<'a, T: Send>(
    name: &str,
    jobs: Vec<Box<dyn FnOnce() -> T + Send + 'a>>,
) -> Vec<T> {
    if jobs.len() <= 1 {
        return jobs.into_iter().map(|job| job()).collect();
    }
    let results: Vec<Mutex<Option<T>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    let jobs: Vec<Mutex<Option<_>>> = jobs.into_iter().map(|job| Mutex::new(Some(job))).collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = jobs.get(i) else { break };
        let job = job.lock().take().expect("each job is taken once");
        *results[i].lock() = Some(job());
    };
    join(name, work, work);
    results
        .into_iter()
        .map(|r| r.into_inner().expect("every job ran"))
        .collect()
}

/// Drops `value` on a blocking thread of the runtime, and returns the task doing it: freeing
/// millions of small allocations need not hold up what comes next. Without a runtime, it is
/// dropped here.
pub(crate) fn drop_later<T: Send + 'static>(value: T) -> Option<tokio::task::JoinHandle<()>> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => Some(runtime.spawn_blocking(move || drop(value))),
        Err(_) => {
            drop(value);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_run_and_return_in_order() {
        let (a, b) = super::join("test-join", || 1 + 1, || "two".to_string());
        assert_eq!((a, b.as_str()), (2, "two"));
    }

    #[test]
    fn every_job_runs_once_and_results_come_in_order() {
        let jobs: Vec<Box<dyn FnOnce() -> usize + Send>> = (0..100usize)
            .map(|i| Box::new(move || i * i) as Box<dyn FnOnce() -> usize + Send>)
            .collect();
        let out = super::run_all("test-run-all", jobs);
        assert_eq!(out, (0..100).map(|i| i * i).collect::<Vec<_>>());
    }
}
