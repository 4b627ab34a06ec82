//! The job store's janitor: a thread that drops finished jobs past their TTL (or over
//! the caps) even when no request comes to look one up, and hands the freed memory
//! (their PNGs) back to the system. Without it an idle server would hold a burst's
//! results until the next request.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::store::JobStore;

/// How often the janitor looks.
pub(crate) const PERIOD: Duration = Duration::from_secs(1);

/// Starts the janitor; it ends by itself within `period` of the store being dropped.
pub(crate) fn spawn(store: &Arc<JobStore>, period: Duration) -> std::io::Result<()> {
    let store: Weak<JobStore> = Arc::downgrade(store);
    std::thread::Builder::new()
        .name("latentd-janitor".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            let Some(store) = store.upgrade() else {
                return;
            };
            if store.evict_expired() > 0 {
                drop(store);
                crate::memory::release_free_memory();
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{finish, job};
    use std::time::Instant;

    #[test]
    fn expired_jobs_go_without_a_lookup() {
        let store = Arc::new(JobStore::new(Duration::from_millis(1), 10, usize::MAX));
        let done = job("a");
        // Inserted unfinished, so the insert's own eviction cannot take it.
        store.insert(done.clone());
        finish(&done);
        drop(done);
        spawn(&store, Duration::from_millis(5)).expect("thread starts");
        let started = Instant::now();
        // len() never evicts: only the janitor can empty the store.
        while !store.is_empty() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(store.len(), 0);
    }
}
