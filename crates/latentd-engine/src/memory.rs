//! Handing the heap's free memory back to the system when a worker goes idle.
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
