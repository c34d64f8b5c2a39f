//! Running two pieces of work at once: restore builds two large maps per shard, and a fold runs
//! the accounts' and the movements' sides of a stream tail side by side.

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

#[cfg(test)]
mod tests {
    #[test]
    fn both_run_and_return_in_order() {
        let (a, b) = super::join("test-join", || 1 + 1, || "two".to_string());
        assert_eq!((a, b.as_str()), (2, "two"));
    }
}
