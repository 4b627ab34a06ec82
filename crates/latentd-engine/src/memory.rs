//! Handing the heap's free memory back to the system when a worker goes idle.
//!
//! glibc keeps memory freed by a burst of requests in its arenas (one per thread that
//! allocated), so a server's RSS stays at its peak long after the burst; a long-running
//! server should not look like it leaks. A trim when a worker runs out of work gives
//! those pages back; it costs a walk over the free lists, nothing while busy.

/// Returns the allocator's free pages to the operating system (glibc's `malloc_trim`;
/// nothing elsewhere).
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only walks and releases the allocator's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
