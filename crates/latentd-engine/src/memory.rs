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

/// Caps glibc's heap arenas at one per core, unless the environment already sets them
/// (`MALLOC_ARENA_MAX`, or `arena_max` in `GLIBC_TUNABLES`). Call it first in `main`,
/// before other threads start.
///
/// glibc's default is up to eight arenas per core, one for each thread that finds the
/// others busy; a server's many short-lived allocations spread over them, and each keeps
/// its own freed memory, so RSS climbs with every burst (BENCHMARKS.md, "Soak"). More
/// arenas than cores buy little: no more threads than cores allocate at the same instant.
/// Returns the cap it set, if any.
pub fn cap_heap_arenas() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cap = arena_cap(
            std::env::var_os("MALLOC_ARENA_MAX").is_some(),
            &std::env::var("GLIBC_TUNABLES").unwrap_or_default(),
            std::thread::available_parallelism().map_or(1, |n| n.get()),
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

/// The arena cap for `cores` cores, or `None` where the environment sets one itself.
#[cfg(any(test, all(target_os = "linux", target_env = "gnu")))]
fn arena_cap(env_max_set: bool, glibc_tunables: &str, cores: usize) -> Option<usize> {
    let tunable_set = glibc_tunables
        .split(':')
        .any(|t| t.starts_with("glibc.malloc.arena_max="));
    (!env_max_set && !tunable_set).then_some(cores.clamp(2, 64))
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
    fn the_arena_cap_is_one_per_core_unless_the_environment_sets_it() {
        assert_eq!(arena_cap(false, "", 1), Some(2));
        assert_eq!(arena_cap(false, "", 16), Some(16));
        assert_eq!(arena_cap(false, "glibc.malloc.tcache_count=0", 8), Some(8));
        assert_eq!(arena_cap(true, "", 8), None);
        assert_eq!(
            arena_cap(
                false,
                "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=4",
                8
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
