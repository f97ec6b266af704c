//! Bounded waiting: whatever is waited for, the wait ends by a deadline.

use std::thread;
use std::time::{Duration, Instant};

/// Calls `f` until it gives `Some`, every `every`, and at least once: None once `deadline` has
/// passed without it.
pub fn poll<T>(deadline: Instant, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(every);
    }
}
