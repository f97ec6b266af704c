//! Work a service wants done on a clock, driven by the watchdog's tick.
//!
//! The watchdog owns one timer and calls every registered [`Periodic`] after its own duties
//! (the drain and hard-exit check first, then measuring and deciding pressure). A `tick` runs
//! on the watchdog thread, so it must return at once: it reads atomics or a published
//! snapshot, and at most submits a job that does the real work on a worker. It never takes a
//! lock a worker may hold and never touches the disk — a stalled disk must not be able to
//! hold up the drain deadline.

use crate::pressure::Level;
use std::time::Instant;

pub trait Periodic: Send + Sync {
    /// What the service is called in logs.
    fn name(&self) -> &'static str;

    /// One watchdog tick: `now`, and the pressure level just decided.
    fn tick(&self, now: Instant, level: Level);
}
