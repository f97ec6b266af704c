//! The lifecycle, `starting → serving → draining → stopped`, and the drain's deadlines: set by
//! the signal thread and the start-up, read by every thread (an atomic and a short lock, never
//! held across work).

use crate::sync::lock;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// `starting → serving → draining → stopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Starting = 0,
    Serving = 1,
    Draining = 2,
    Stopped = 3,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Stopped => "stopped",
        }
    }
}

/// The drain in progress.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub begun: Instant,
    /// When every token is cancelled.
    pub deadline: Instant,
    /// When the process exits whatever still runs.
    pub hard_deadline: Instant,
    pub cancelled: bool,
    /// Jobs that were still in flight when the tokens were cancelled.
    pub aborted: usize,
}

/// The phase and the drain, shared by every thread.
#[derive(Debug)]
pub struct LifecycleCell {
    phase: AtomicU8,
    drain: Mutex<Option<Drain>>,
}

impl Default for LifecycleCell {
    fn default() -> LifecycleCell {
        LifecycleCell {
            phase: AtomicU8::new(Phase::Starting as u8),
            drain: Mutex::new(None),
        }
    }
}

impl LifecycleCell {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            2 => Phase::Draining,
            _ => Phase::Stopped,
        }
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }

    pub fn drain(&self) -> Option<Drain> {
        *lock(&self.drain)
    }

    /// Starts the drain (cancel at `now + timeout`, exit at that + `grace`) and enters
    /// `draining`; false if a drain is already under way.
    pub fn begin_drain(&self, now: Instant, timeout: Duration, grace: Duration) -> bool {
        let mut d = lock(&self.drain);
        if d.is_some() {
            return false;
        }
        let deadline = now + timeout;
        *d = Some(Drain {
            begun: now,
            deadline,
            hard_deadline: deadline + grace,
            cancelled: false,
            aborted: 0,
        });
        drop(d);
        self.set_phase(Phase::Draining);
        true
    }

    /// A second signal: the cancel step is due now (the grace still applies).
    pub fn hurry_drain(&self, now: Instant, grace: Duration) {
        if let Some(d) = lock(&self.drain).as_mut()
            && d.deadline > now
        {
            d.deadline = now;
            d.hard_deadline = now + grace;
        }
    }

    /// The cancel step happened, with `aborted` jobs still in flight.
    pub fn mark_cancelled(&self, aborted: usize) {
        if let Some(d) = lock(&self.drain).as_mut() {
            d.cancelled = true;
            d.aborted = aborted;
        }
    }

    /// 0 after a clean drain, 1 when work had to be aborted.
    pub fn exit_code(&self) -> i32 {
        match self.drain() {
            Some(d) if d.aborted > 0 => 1,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_begins_once_and_a_second_signal_hurries_it() {
        let l = LifecycleCell::default();
        let t0 = Instant::now();
        let (timeout, grace) = (Duration::from_secs(30), Duration::from_secs(5));
        assert_eq!(l.phase(), Phase::Starting);
        assert!(l.begin_drain(t0, timeout, grace));
        assert!(!l.begin_drain(t0, timeout, grace));
        assert_eq!(l.phase(), Phase::Draining);
        let t1 = t0 + Duration::from_secs(1);
        l.hurry_drain(t1, grace);
        let d = l.drain().unwrap();
        assert_eq!((d.deadline, d.hard_deadline), (t1, t1 + grace));
        assert_eq!(l.exit_code(), 0);
        l.mark_cancelled(2);
        assert_eq!(l.exit_code(), 1);
    }
}
