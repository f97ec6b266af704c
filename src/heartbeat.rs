//! The reactor's heartbeat: the reactor stamps it every iteration (busy when it wakes, idle
//! before it polls); the watchdog reads how long ago that was and how long the current
//! iteration has lasted. Two atomics, no lock: the watchdog never waits on the reactor.

use crate::clock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Heartbeat {
    /// Monotonic ms (+1) since the reactor began its current iteration; 0 while it waits.
    busy_since: AtomicU64,
    /// Monotonic ms of the reactor's last stamp.
    beat: AtomicU64,
}

impl Heartbeat {
    pub fn new(now: Instant) -> Heartbeat {
        Heartbeat {
            busy_since: AtomicU64::new(0),
            beat: AtomicU64::new(clock::mono_ms(now)),
        }
    }

    /// The reactor woke up and is working.
    pub fn busy(&self, now: Instant) {
        self.busy_since
            .store(clock::mono_ms(now) + 1, Ordering::Release);
        self.beat.store(clock::mono_ms(now), Ordering::Release);
    }

    /// The reactor is about to wait in poll.
    pub fn idle(&self, now: Instant) {
        self.busy_since.store(0, Ordering::Release);
        self.beat.store(clock::mono_ms(now), Ordering::Release);
    }

    /// How long the reactor has been inside its current iteration (zero while it waits).
    pub fn stuck_for(&self, now: Instant) -> Duration {
        match self.busy_since.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            ms => now.saturating_duration_since(clock::from_mono_ms(ms - 1)),
        }
    }

    /// Time since the last stamp.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(clock::from_mono_ms(self.beat.load(Ordering::Acquire)))
    }
}
