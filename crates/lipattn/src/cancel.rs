//! Cooperative cancellation. A caller that abandons a computation (the Python bindings on
//! Ctrl-C) raises a flag; long loops check it between iterations and return
//! [`Error::Cancelled`], so the abandoned work stops instead of running on in the background.
//! The flag belongs to the thread that runs the computation; loops inside rayon tasks do not see
//! it, so the checks sit in the sequential outer loops.

use crate::error::{Error, Result};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

thread_local! {
    static TOKEN: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread with `token` as its cancellation flag (the previous flag, if any, is
/// restored afterwards, also on panic).
pub fn with_token<T>(token: Arc<AtomicBool>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Arc<AtomicBool>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            TOKEN.with(|t| *t.borrow_mut() = prev);
        }
    }
    let _restore = Restore(TOKEN.with(|t| t.replace(Some(token))));
    f()
}

/// `Err(Error::Cancelled)` once this thread's flag is raised; Ok without a flag.
pub fn check() -> Result<()> {
    let raised = TOKEN.with(|t| {
        t.borrow()
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    });
    if raised {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_is_per_thread_and_restored() {
        assert!(check().is_ok());
        let raised = Arc::new(AtomicBool::new(true));
        let e = with_token(raised.clone(), check).unwrap_err();
        assert!(matches!(e, Error::Cancelled));
        assert!(check().is_ok(), "restored after the call");
        let lowered = Arc::new(AtomicBool::new(false));
        with_token(lowered.clone(), || {
            assert!(check().is_ok());
            assert!(std::thread::spawn(check).join().unwrap().is_ok());
            lowered.store(true, Ordering::Relaxed);
            assert!(check().is_err());
        });
    }
}
