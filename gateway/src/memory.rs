//! Handing freed memory back to the operating system after a restore, and not too eagerly
//! otherwise.
//!
//! By default mimalloc purges a page (gives it back to the OS) a second after it was freed,
//! and the next allocation there faults it in again, zeroed. Under load the request path frees
//! and reuses memory all the time: in the in-process bench, zeroing refaulted pages
//! (`clear_page_erms`) was 27% of the runtime workers' samples. [`purge_freed_memory_late`]
//! sets the delay to [`PURGE_DELAY_MS`]. Measured with `cargo bench --bench inproc` (1,024
//! callers of single transfers, runs alternated): 209-213k/s with the default second, 225-242k/s
//! with 10 or 60 s. With no purge at all it did 245-254k/s, but mimalloc 3 then never hands
//! memory back, not even when asked to collect, and an idle node would keep what its restore
//! freed.
//!
//! mimalloc keeps freed pages in the heap of the thread that allocated them, and purges them
//! (gives them back to the OS) only when that thread collects. `mi_collect` collects the calling
//! thread's heap alone. A restore allocates on every runtime worker (each shard folds on one)
//! and frees in the background, so one `mi_collect` left the other workers' freed pages
//! resident: about 20 bytes per idle account at 1,000,000 accounts, for as long as the node
//! stayed idle.
//!
//! The stream's reads run on the runtime's blocking threads, and their buffers are freed by the
//! workers that fold them: the pages stay with the blocking thread until it allocates again or
//! stops. So a blocking thread collects as it stops ([`on_thread_stop`]), and an idle one stops
//! after [`BLOCKING_THREAD_KEEP_ALIVE`] (tokio's default is 10 s).
//!
//! [`release_freed_memory`] collects here and asks every worker to collect the next time it
//! goes idle ([`on_worker_idle`], the runtime's park hook): a worker that goes idle has nothing
//! better to do, and an idle node is the one whose memory is measured.

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering},
};

/// mimalloc's `mi_option_purge_delay` (its index in `mi_option_t` of mimalloc 3, which
/// `libmimalloc-sys` does not export; a test checks it against the option's default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before mimalloc hands it back to the OS,
/// unless [`release_freed_memory`] collects it sooner.
pub const PURGE_DELAY_MS: i32 = 10_000;

/// How long after the memory a restore freed went back to the OS it is handed back once more
/// (what was freed meanwhile; see [`crate::server::run`]).
pub const RELEASE_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`]. Call it first thing, before the runtime
/// starts.
pub fn purge_freed_memory_late() {
    // SAFETY: sets an integer option; called before any other thread runs (mimalloc's options
    // are not synchronised).
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS.into());
    }
}

/// Bumped by every [`release_freed_memory`]; each worker collects once per value.
static ASKED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The value of [`ASKED`] this thread last collected for.
    static COLLECTED: Cell<u64> = const { Cell::new(0) };
}

/// Collects this thread's heap now, and every runtime worker's when it next goes idle.
pub fn release_freed_memory() {
    let asked = ASKED.fetch_add(1, Ordering::Relaxed) + 1;
    COLLECTED.with(|c| c.set(asked));
    collect();
}

/// The runtime's park hook (`tokio::runtime::Builder::on_thread_park`): collects this worker's
/// heap if [`release_freed_memory`] asked since it last did. Otherwise one atomic load.
pub fn on_worker_idle() {
    let asked = ASKED.load(Ordering::Relaxed);
    if COLLECTED.with(|c| c.replace(asked)) != asked {
        collect();
    }
}

/// How long an idle blocking thread of the runtime waits for work before it stops (and
/// collects, [`on_thread_stop`]). Spawning a thread again costs some 20 µs; the blocking pool
/// is used by restores, snapshots and stream reads, not per request.
pub const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_millis(300);

/// The runtime's thread-stop hook: collects the stopping thread's heap, so that what other
/// threads freed of its pages goes back to the OS now rather than never.
pub fn on_thread_stop() {
    collect();
}

fn collect() {
    // SAFETY: `mi_collect` takes no pointer and may be called from any thread at any time. It
    // only frees what is free: with another global allocator its heap is empty.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_mimallocs() {
        // SAFETY: reads an integer option.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc 3's default purge delay: 1000 ms (the neighbouring options are 0 or 1).
        assert_eq!(
            default, 1000,
            "option {MI_OPTION_PURGE_DELAY} is not the purge delay"
        );
    }
}
