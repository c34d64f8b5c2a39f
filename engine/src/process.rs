//! Process-wide settings that a binary hosting a node applies when it starts.

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`).
///
/// The allocator asks for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`), and with the
/// kernel's usual `defrag = madvise` a fault on such a page may compact memory on the spot:
/// the thread that touched it stalls for milliseconds, and every request queued on that
/// runtime worker waits with it. Measured on the 2-core machine, single transfers open loop at
/// 30,000/s over 30 s: p99 23–34 ms with huge pages, 5.5 ms without, at the same CPU per
/// transfer (`docs/BENCHMARKS.md`). Memory already mapped keeps its pages; call this first.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integer arguments and touches no
    // memory of this process.
    let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_off_once_disabled() {
        disable_transparent_huge_pages().expect("prctl(PR_SET_THP_DISABLE) is available on Linux");
        // SAFETY: as above, integer arguments only.
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(disabled, 1);
    }
}
