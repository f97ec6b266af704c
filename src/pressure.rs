//! The pressure level, as the watchdog publishes it and everyone else reads it. The watchdog
//! computes it (`watchdog::Pressure`); services read the published [`PressureView`] through a
//! [`PressureCell`] to shed or defer work. The cell's lock is held for a copy, never across
//! work, so the reactor may read it.

use crate::sync::lock;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Normal = 0,
    Elevated = 1,
    Critical = 2,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Elevated => "elevated",
            Level::Critical => "critical",
        }
    }

    /// One level lower (a level steps down one at a time).
    pub fn down(self) -> Level {
        match self {
            Level::Critical => Level::Elevated,
            _ => Level::Normal,
        }
    }
}

/// The pressure level as the watchdog last published it.
#[derive(Debug, Clone)]
pub struct PressureView {
    pub level: Level,
    pub since_wall_ms: u64,
    pub reasons: Vec<String>,
    /// Why resident memory is at the critical threshold (held for the sample streak), if it
    /// is: new agent runs are refused then.
    pub memory_critical: Option<String>,
    /// Reactor lag over the watchdog's window.
    pub lag_p99: Option<Duration>,
    pub lag_max: Duration,
}

impl PressureView {
    /// Normal since `wall_ms`, nothing measured yet.
    pub fn normal(wall_ms: u64) -> PressureView {
        PressureView {
            level: Level::Normal,
            since_wall_ms: wall_ms,
            reasons: Vec::new(),
            memory_critical: None,
            lag_p99: None,
            lag_max: Duration::ZERO,
        }
    }
}

/// Where the watchdog publishes the view and everyone reads it.
#[derive(Debug)]
pub struct PressureCell(Mutex<PressureView>);

impl PressureCell {
    pub fn new(wall_ms: u64) -> PressureCell {
        PressureCell(Mutex::new(PressureView::normal(wall_ms)))
    }

    pub fn get(&self) -> PressureView {
        lock(&self.0).clone()
    }

    /// The level alone, without copying the reasons.
    pub fn level(&self) -> Level {
        lock(&self.0).level
    }

    pub fn set(&self, v: PressureView) {
        *lock(&self.0) = v;
    }
}
