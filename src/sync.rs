//! The one lock helper: every mutex in distq guards data that each method leaves whole, so a
//! panic elsewhere (a poisoned lock) is no reason to stop serving.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, carrying on if a thread panicked while holding it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
