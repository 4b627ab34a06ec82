//! Ending a long model call early. A caller installs a check on its thread for the
//! length of a call ([`with_interrupt`]); the networks poll it between blocks and in
//! long attention loops, and end the call with [`Error::Interrupted`] once it says stop
//! (for example when every job in a batch was cancelled), so a cancel of a
//! 1024x1024 step does not wait for the step to finish.

use std::cell::RefCell;
use std::sync::Arc;

use crate::{Error, Result};

/// A check that says whether the call in progress should stop.
pub type InterruptCheck = Arc<dyn Fn() -> bool + Send + Sync>;

thread_local! {
    static CHECK: RefCell<Option<InterruptCheck>> = const { RefCell::new(None) };
}

/// Runs `f` with `check` installed on this thread (the previous one, if any, is put
/// back afterwards, also when `f` panics).
pub fn with_interrupt<R>(check: InterruptCheck, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<InterruptCheck>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CHECK.with(|c| *c.borrow_mut() = previous);
        }
    }
    let previous = CHECK.with(|c| c.borrow_mut().replace(check));
    let _restore = Restore(previous);
    f()
}

/// `Err(Error::Interrupted)` when the installed check says stop. Networks call it
/// between blocks; a model implemented elsewhere may call it in its own loops.
pub fn poll() -> Result<()> {
    let stop = CHECK.with(|c| c.borrow().as_ref().is_some_and(|check| check()));
    if stop {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn checks_apply_inside_and_are_restored_after() {
        assert!(poll().is_ok());
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        with_interrupt(Arc::new(move || f.load(Ordering::Relaxed)), || {
            assert!(poll().is_ok());
            flag.store(true, Ordering::Relaxed);
            assert!(matches!(poll(), Err(Error::Interrupted)));
            with_interrupt(Arc::new(|| false), || assert!(poll().is_ok()));
            assert!(poll().is_err());
        });
        assert!(poll().is_ok());
    }
}
