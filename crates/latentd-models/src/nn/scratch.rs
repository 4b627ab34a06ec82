//! Per-thread working buffers kept between calls (the CPU kernels' scratch memory).

use std::cell::RefCell;
use std::thread::LocalKey;

/// Runs `f` with this thread's buffer from `key`, grown to at least `len` elements
/// and kept for the thread's next call; a nested call on the same thread (a pool
/// thread picking up another task while it waits) gets a fresh buffer instead.
pub(crate) fn with_buffer<T: Copy + Default, R>(
    key: &'static LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    key.with(|cell| {
        let mut fresh = Vec::new();
        let mut held = cell.try_borrow_mut();
        let buffer: &mut Vec<T> = match held.as_mut() {
            Ok(held) => held,
            Err(_) => &mut fresh,
        };
        if buffer.len() < len {
            buffer.resize(len, T::default());
        }
        f(&mut buffer[..len])
    })
}
