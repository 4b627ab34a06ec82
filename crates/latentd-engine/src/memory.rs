//! The heap: how many arenas glibc may keep, handing free memory back to the system
//! when a worker goes idle, and what it holds (for `/metrics`).
//!
//! glibc keeps memory freed by a burst of requests in its arenas (one per thread that
//! allocated), so a server's RSS stays at its peak long after the burst; a long-running
//! server should not look like it leaks. A trim once a worker has been out of work for
//! [`TRIM_AFTER_IDLE`] gives those pages back (by then the decoder, the PNG encoder and
//! the connections have freed their share of the burst too); it costs a walk over the
//! free lists, nothing while busy.

use std::time::Duration;

/// How long a worker waits, idle after work, before it hands free memory back.
pub(crate) const TRIM_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Returns the allocator's free pages to the operating system (glibc's `malloc_trim`;
/// nothing elsewhere).
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only walks and releases the allocator's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps glibc to one heap arena, unless the environment already sets a limit
/// (`MALLOC_ARENA_MAX`, or `arena_max` in `GLIBC_TUNABLES`). Call it first in `main`,
/// before other threads start.
///
/// glibc's default is up to eight arenas per core, one for each thread that finds the
/// others busy; a server's short-lived allocations spread over them and each keeps its
/// own freed memory. [`release_free_memory`] cannot give all of it back either: glibc's
/// trim returns the main arena's top but only the free-list pages of the others, whose
/// tops stay as large as the trim threshold lets them, so RSS after a burst stays high
/// (BENCHMARKS.md, "Soak"). With one arena the idle trim returns it all. Each thread
/// still has its own cache of small blocks, and the models' large buffers are
/// allocated by the one thread that runs the step: the shared lock costs nothing
/// measurable on SD1.5-size steps and about 5% of the tiny model's serving throughput
/// (BENCHMARKS.md). Returns the limit it set, if any.
pub fn cap_heap_arenas() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cap = arena_cap(
            std::env::var_os("MALLOC_ARENA_MAX").is_some(),
            &std::env::var("GLIBC_TUNABLES").unwrap_or_default(),
        )?;
        // SAFETY: a plain setting of the allocator, made before other threads allocate.
        let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, cap as libc::c_int) };
        (set == 1).then_some(cap)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// The arena limit to set, or `None` where the environment sets one itself.
#[cfg(any(test, all(target_os = "linux", target_env = "gnu")))]
fn arena_cap(env_max_set: bool, glibc_tunables: &str) -> Option<usize> {
    let tunable_set = glibc_tunables
        .split(':')
        .any(|t| t.starts_with("glibc.malloc.arena_max="));
    (!env_max_set && !tunable_set).then_some(1)
}

/// What the heap allocator holds, in bytes (glibc's `mallinfo2`, over all arenas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapUsage {
    /// Handed out to the program and not yet freed (mapped blocks included).
    pub in_use: u64,
    /// Freed by the program but still held by the allocator (part of it may already be
    /// handed back to the system page by page, so this is an upper bound on what a trim
    /// can return).
    pub free: u64,
}

/// The heap's current usage, where the allocator can tell (glibc); `None` elsewhere.
pub fn heap_usage() -> Option<HeapUsage> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallinfo2` only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        Some(HeapUsage {
            in_use: (info.uordblks + info.hblkhd) as u64,
            free: info.fordblks as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_arena_unless_the_environment_sets_a_limit() {
        assert_eq!(arena_cap(false, ""), Some(1));
        assert_eq!(arena_cap(false, "glibc.malloc.tcache_count=0"), Some(1));
        assert_eq!(arena_cap(true, ""), None);
        assert_eq!(
            arena_cap(
                false,
                "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=4"
            ),
            None
        );
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_usage_counts_a_live_allocation() {
        let before = heap_usage().expect("glibc reports its heap");
        // A mapped block, untouched (calloc'd), so it costs no RAM; other test threads
        // allocate and free too, but far less than 64 MiB at a time.
        let block = vec![0u8; 64 << 20];
        let during = heap_usage().expect("glibc reports its heap");
        assert!(
            during.in_use >= before.in_use + (32 << 20),
            "{before:?} -> {during:?}"
        );
        drop(std::hint::black_box(block));
    }
}
