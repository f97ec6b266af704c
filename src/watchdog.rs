//! The watchdog thread: every 100 ms it measures the reactor (lag window, a stuck iteration),
//! memory (RSS), the queues (depth, oldest age) and every running job's progress; it cancels
//! jobs past their deadline or stall limit, drives the pressure level, enforces the drain
//! deadline and — only while the reactor's heartbeat is fresh — pings systemd.
//!
//! The decisions are pure functions of measurements and a `now` passed in ([`Pressure`],
//! [`LagWindow`], [`job_verdict`]), so their tests never sleep.
//!
//! Pressure rules: only measured signals; no level from a tiny sample (the lag p99 needs
//! [`MIN_LAG_SAMPLES`] reactor iterations in its window, RSS and queue age must hold for
//! [`STREAK`] consecutive samples); a level holds for `hold` after its last trigger, then steps
//! down one level at a time.

use crate::cancel::CancelReason;
use crate::clock;
use crate::config::PressureConfig;
use crate::jobs::periodic::Periodic;
use crate::jobs::{JobInfo, Lane, PoolKind};
use crate::metrics::{LAG_BUCKETS, quantile};
use crate::phase::Phase;
use crate::pressure::{Level, PressureView};
use crate::runtime::Shared;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TICK: Duration = Duration::from_millis(100);
/// Reactor iterations needed in the window before its p99 counts.
pub const MIN_LAG_SAMPLES: u64 = 50;
/// The lag window.
pub const LAG_WINDOW: Duration = Duration::from_secs(10);
/// Consecutive samples a level-raising RSS or queue-age reading must hold.
pub const STREAK: u32 = 5;
/// A reactor stuck in one iteration this long is critical on its own.
pub const STUCK_CRITICAL: Duration = Duration::from_secs(1);

/// One round of measurements.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Reactor lag p99 over the window; `None` with fewer than [`MIN_LAG_SAMPLES`].
    pub lag_p99: Option<Duration>,
    /// How long the reactor has been inside its current iteration.
    pub reactor_stuck: Duration,
    /// Age of the oldest queued job in the interactive lanes.
    pub interactive_age: Duration,
    pub rss_bytes: u64,
}

/// A change of level, to be logged once.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Level,
    pub to: Level,
    pub reasons: Vec<String>,
}

/// The pressure state machine.
#[derive(Debug)]
pub struct Pressure {
    cfg: PressureConfig,
    level: Level,
    reasons: Vec<String>,
    last_trigger: Option<Instant>,
    /// Consecutive samples at (elevated, critical) or above, per streak signal.
    rss_streak: [u32; 2],
    age_streak: [u32; 2],
    /// What the RSS signal alone says now (after its streak), with its reason.
    memory: (Level, Option<String>),
}

fn fmt_ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn fmt_mib(b: u64) -> String {
    format!("{} MiB", b >> 20)
}

impl Pressure {
    pub fn new(cfg: PressureConfig) -> Pressure {
        Pressure {
            cfg,
            level: Level::Normal,
            reasons: Vec::new(),
            last_trigger: None,
            rss_streak: [0; 2],
            age_streak: [0; 2],
            memory: (Level::Normal, None),
        }
    }

    pub fn set_config(&mut self, cfg: PressureConfig) {
        self.cfg = cfg;
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn reasons(&self) -> &[String] {
        &self.reasons
    }

    /// The level the resident memory holds at by itself (no hold: it follows the samples,
    /// each change needing its streak), and why when above normal.
    pub fn memory(&self) -> (Level, Option<&str>) {
        (self.memory.0, self.memory.1.as_deref())
    }

    fn bump(streak: &mut [u32; 2], value: u64, warn: u64, crit: u64) -> Level {
        streak[0] = if value >= warn { streak[0] + 1 } else { 0 };
        streak[1] = if value >= crit { streak[1] + 1 } else { 0 };
        if streak[1] >= STREAK {
            Level::Critical
        } else if streak[0] >= STREAK {
            Level::Elevated
        } else {
            Level::Normal
        }
    }

    /// What the signals say on their own, with the reasons for anything above normal.
    fn assess(&mut self, s: &Sample) -> (Level, Vec<String>) {
        let c = self.cfg;
        let mut level = Level::Normal;
        let mut reasons = Vec::new();
        let mut raise = |l: Level, why: String| {
            if l > Level::Normal {
                level = level.max(l);
                reasons.push(why);
            }
        };
        if let Some(p99) = s.lag_p99 {
            let l = if p99 >= c.lag_critical {
                Level::Critical
            } else if p99 >= c.lag_warn {
                Level::Elevated
            } else {
                Level::Normal
            };
            let bound = if l == Level::Critical {
                c.lag_critical
            } else {
                c.lag_warn
            };
            raise(
                l,
                format!("reactor lag p99 {} >= {}", fmt_ms(p99), fmt_ms(bound)),
            );
        }
        if s.reactor_stuck >= STUCK_CRITICAL {
            raise(
                Level::Critical,
                format!(
                    "reactor stuck in one iteration for {}",
                    fmt_ms(s.reactor_stuck)
                ),
            );
        }
        let age = s.interactive_age.as_millis() as u64;
        let l = Self::bump(
            &mut self.age_streak,
            age,
            c.queue_age_warn.as_millis() as u64,
            c.queue_age_critical.as_millis() as u64,
        );
        let bound = if l == Level::Critical {
            c.queue_age_critical
        } else {
            c.queue_age_warn
        };
        raise(
            l,
            format!(
                "interactive queue: oldest job waiting {} >= {}",
                fmt_ms(s.interactive_age),
                fmt_ms(bound)
            ),
        );
        let l = Self::bump(
            &mut self.rss_streak,
            s.rss_bytes,
            c.rss_warn_bytes,
            c.rss_critical_bytes,
        );
        let bound = if l == Level::Critical {
            c.rss_critical_bytes
        } else {
            c.rss_warn_bytes
        };
        let why = format!("rss {} >= {}", fmt_mib(s.rss_bytes), fmt_mib(bound));
        self.memory = (l, (l > Level::Normal).then(|| why.clone()));
        raise(l, why);
        (level, reasons)
    }

    /// Feeds one sample; returns the transition if the level changed.
    pub fn observe(&mut self, now: Instant, s: &Sample) -> Option<Transition> {
        let (seen, reasons) = self.assess(s);
        let from = self.level;
        if seen >= self.level && seen > Level::Normal {
            self.level = seen;
            self.reasons = reasons;
            self.last_trigger = Some(now);
        } else if self.level > seen {
            let held = self
                .last_trigger
                .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.hold);
            if !held {
                self.level = self.level.down().max(seen);
                self.last_trigger = Some(now);
                self.reasons = if self.level > Level::Normal && !reasons.is_empty() {
                    reasons
                } else if self.level > Level::Normal {
                    vec![format!("holding after: {}", self.reasons.join("; "))]
                } else {
                    Vec::new()
                };
            }
        }
        (self.level != from).then(|| Transition {
            from,
            to: self.level,
            reasons: self.reasons.clone(),
        })
    }
}

/// Cumulative lag-histogram snapshots over the last [`LAG_WINDOW`].
#[derive(Default)]
pub struct LagWindow {
    snaps: VecDeque<(Instant, [u64; LAG_BUCKETS], Duration)>,
}

impl LagWindow {
    /// Adds a snapshot of the cumulative counts and the max since the last one; returns the
    /// window's p99 (if it has enough samples) and max.
    pub fn push(
        &mut self,
        now: Instant,
        counts: [u64; LAG_BUCKETS],
        recent_max: Duration,
    ) -> (Option<Duration>, Duration) {
        self.snaps.push_back((now, counts, recent_max));
        // The front is the baseline: the newest snapshot at least a window old (or the first).
        while self
            .snaps
            .get(1)
            .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) >= LAG_WINDOW)
        {
            self.snaps.pop_front();
        }
        let first = self.snaps.front().map(|s| s.1).unwrap_or([0; LAG_BUCKETS]);
        let diff: [u64; LAG_BUCKETS] = std::array::from_fn(|i| counts[i].saturating_sub(first[i]));
        let max = self
            .snaps
            .iter()
            .skip(1)
            .map(|s| s.2)
            .max()
            .unwrap_or_default();
        let total: u64 = diff.iter().sum();
        let p99 = if total >= MIN_LAG_SAMPLES {
            quantile(&diff, 0.99, max).map(|q| q.min(max.max(Duration::from_micros(1))))
        } else {
            None
        };
        (p99, max)
    }
}

/// What the watchdog does about one job now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    Cancel(CancelReason),
}

pub fn job_verdict(job: &JobInfo, now: Instant) -> Verdict {
    if job.token.is_cancelled() {
        return Verdict::Fine;
    }
    if now >= job.deadline {
        return Verdict::Cancel(CancelReason::Deadline);
    }
    if job.started_at().is_some()
        && let Some(limit) = job.stall_limit
        && now.saturating_duration_since(job.last_progress()) >= limit
    {
        return Verdict::Cancel(CancelReason::Stalled);
    }
    Verdict::Fine
}

/// Runs the watchdog loop until the process exits.
pub fn spawn(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("keel-watchdog".into())
        .spawn(move || Watchdog::new(shared).run())?;
    Ok(())
}

struct Watchdog {
    shared: Arc<Shared>,
    /// The services' periodic work, called after the watchdog's own duties each tick.
    periodic: Vec<Box<dyn Periodic>>,
    pressure: Pressure,
    lag: LagWindow,
    last_systemd_ping: Option<Instant>,
    last_drain_log: Option<Instant>,
}

impl Watchdog {
    fn new(shared: Arc<Shared>) -> Watchdog {
        let cfg = shared.config().pressure;
        Watchdog {
            periodic: shared.periodic(),
            shared,
            pressure: Pressure::new(cfg),
            lag: LagWindow::default(),
            last_systemd_ping: None,
            last_drain_log: None,
        }
    }

    fn run(mut self) {
        loop {
            let started = Instant::now();
            self.tick(started);
            std::thread::sleep(TICK.saturating_sub(started.elapsed()));
        }
    }

    fn tick(&mut self, now: Instant) {
        // First, and never behind anything a worker holds: the drain deadlines and the exit.
        self.drain(now);
        let sh = &self.shared;
        let m = &sh.metrics;
        let (lag_p99, lag_max) = self.lag.push(now, m.lag.counts(), m.lag.take_recent_max());
        let rss = crate::procfs::rss_bytes();
        m.rss_bytes.set(rss);
        m.watchdog_ticks.inc();

        // Jobs: queue ages, deadlines, stalls.
        let mut oldest = [[Duration::ZERO; 3]; 2];
        for job in sh.jobs.snapshot() {
            if job.started_at().is_none() {
                let slot = &mut oldest[job.pool as usize][job.lane as usize];
                *slot = (*slot).max(now.saturating_duration_since(job.enqueued));
            }
            if let Verdict::Cancel(reason) = job_verdict(&job, now)
                && sh.cancel_job(&job, reason)
            {
                log::warn!(
                    "cancelled job {} ({}, {} lane): {}",
                    job.id,
                    job.kind,
                    job.lane.as_str(),
                    crate::jobs::cancel_error(&job, reason).message
                );
            }
        }
        for (p, pool) in [PoolKind::Cpu, PoolKind::Io].into_iter().enumerate() {
            let _ = pool;
            for lane in Lane::ALL {
                m.oldest_queued_ms[p][lane as usize]
                    .set(oldest[p][lane as usize].as_millis() as u64);
            }
        }

        // Pressure.
        self.pressure.set_config(sh.config().pressure);
        let sample = Sample {
            lag_p99,
            reactor_stuck: sh.reactor_stuck_for(now),
            interactive_age: oldest[0][Lane::Interactive as usize]
                .max(oldest[1][Lane::Interactive as usize]),
            rss_bytes: rss,
        };
        let previous = sh.pressure();
        let transition = self.pressure.observe(now, &sample);
        if let Some(t) = &transition {
            let msg = format!(
                "pressure {} -> {}: {}",
                t.from.as_str(),
                t.to.as_str(),
                if t.reasons.is_empty() {
                    "signals back to normal".into()
                } else {
                    t.reasons.join("; ")
                }
            );
            if t.to > t.from {
                log::warn!("{msg}");
            } else {
                log::info!("{msg}");
            }
            sh.notifier.notify(&format!("STATUS={msg}"));
        }
        let level = self.pressure.level();
        if sh.jobs.pools.deferring_background() != (level >= Level::Elevated) {
            sh.jobs.pools.defer_background(level >= Level::Elevated);
        }
        sh.set_pressure(PressureView {
            level: self.pressure.level(),
            since_wall_ms: if transition.is_some() {
                clock::wall_ms()
            } else {
                previous.since_wall_ms
            },
            reasons: self.pressure.reasons().to_vec(),
            memory_critical: match self.pressure.memory() {
                (Level::Critical, why) => why.map(str::to_string),
                _ => None,
            },
            lag_p99,
            lag_max,
        });

        for p in &self.periodic {
            p.tick(now, level);
        }
        self.systemd(now);
    }

    fn drain(&mut self, now: Instant) {
        let sh = &self.shared;
        let Some(d) = sh.drain() else { return };
        let in_flight = sh.jobs.len();
        if now >= d.hard_deadline {
            let jobs = sh.jobs.snapshot();
            log::error!(
                "drain grace expired; exiting with {} job(s) still running: {}",
                jobs.len(),
                jobs.iter()
                    .map(|j| format!("{} ({})", j.id, j.kind))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            sh.notifier
                .notify("STATUS=drain grace expired; exiting with work aborted");
            // A tool's process group would outlive the exit (its token may never have fired,
            // or its worker is wedged).
            let tools = crate::procgroup::kill_all();
            if tools > 0 {
                log::warn!("killed the process groups of {tools} running tool(s)");
            }
            std::process::exit(1);
        }
        if now >= d.deadline && !d.cancelled {
            let jobs = sh.cancel_all();
            if jobs.is_empty() {
                log::info!("drain deadline reached with nothing in flight");
            }
            for j in &jobs {
                log::warn!(
                    "drain deadline reached: aborting job {} ({}, running {} ms)",
                    j.id,
                    j.kind,
                    j.started_at()
                        .map_or(0, |s| now.saturating_duration_since(s).as_millis())
                );
            }
            if !jobs.is_empty() {
                log::warn!(
                    "cancelled {} job(s); exiting in at most {} ms",
                    jobs.len(),
                    d.hard_deadline.saturating_duration_since(now).as_millis()
                );
            }
        }
        if self
            .last_drain_log
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(5))
            && sh.phase() == Phase::Draining
        {
            self.last_drain_log = Some(now);
            let (step, at) = if now < d.deadline {
                ("cancel", d.deadline)
            } else {
                ("exit", d.hard_deadline)
            };
            let remaining = at.saturating_duration_since(now);
            log::info!(
                "draining: {in_flight} job(s) in flight; {step} in {:.1} s",
                remaining.as_secs_f64()
            );
            let until_exit =
                d.hard_deadline.saturating_duration_since(now) + Duration::from_secs(5);
            sh.notifier.notify(&format!(
                "EXTEND_TIMEOUT_USEC={}\nSTATUS=draining: {in_flight} job(s) in flight",
                until_exit.as_micros()
            ));
        }
    }

    fn systemd(&mut self, now: Instant) {
        let sh = &self.shared;
        let Some(interval) = sh.notifier.watchdog else {
            return;
        };
        // Keep-alives start with READY=1 (sent before the phase leaves `starting`).
        if sh.phase() == Phase::Starting {
            return;
        }
        let half = interval / 2;
        let fresh = sh.reactor_heartbeat_age(now) < half.max(Duration::from_millis(500));
        if fresh
            && self
                .last_systemd_ping
                .is_none_or(|t| now.saturating_duration_since(t) >= half)
        {
            self.last_systemd_ping = Some(now);
            sh.notifier.notify("WATCHDOG=1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::jobs::JobSpec;
    use crate::protocol::reply::ReplyTo;

    fn cfg() -> PressureConfig {
        Config::default().pressure
    }

    fn t(ms: u64) -> Instant {
        clock::epoch() + Duration::from_millis(ms)
    }

    #[test]
    fn lag_needs_enough_samples() {
        let mut w = LagWindow::default();
        let mut counts = [0u64; LAG_BUCKETS];
        counts[12] = 10; // ten 1 s iterations: too few to judge
        let (p99, max) = w.push(t(0), [0; LAG_BUCKETS], Duration::ZERO);
        assert_eq!(p99, None);
        assert_eq!(max, Duration::ZERO);
        let (p99, _) = w.push(t(100), counts, Duration::from_secs(1));
        assert_eq!(p99, None);
        let mut p = Pressure::new(cfg());
        let s = Sample {
            lag_p99: p99,
            ..Sample::default()
        };
        assert_eq!(p.observe(t(100), &s), None);
        counts[0] = 1000;
        counts[12] = 20;
        let (p99, max) = w.push(t(200), counts, Duration::from_secs(1));
        assert_eq!(p99, Some(Duration::from_secs(1)));
        assert_eq!(max, Duration::from_secs(1));
    }

    #[test]
    fn lag_window_forgets_old_samples() {
        let mut w = LagWindow::default();
        let mut counts = [0u64; LAG_BUCKETS];
        counts[12] = 100;
        w.push(t(0), [0; LAG_BUCKETS], Duration::ZERO);
        assert_eq!(
            w.push(t(100), counts, Duration::from_secs(1)).0,
            Some(Duration::from_secs(1))
        );
        counts[0] = 10_000;
        // Eleven seconds later the slow iterations have left the window.
        assert_eq!(
            w.push(t(11_000), counts, Duration::from_micros(90)).0,
            Some(Duration::from_micros(90))
        );
    }

    #[test]
    fn rss_must_hold_for_a_streak_and_levels_hold_then_step_down() {
        let c = cfg();
        let mut p = Pressure::new(c);
        let high = Sample {
            rss_bytes: c.rss_critical_bytes + 1,
            ..Sample::default()
        };
        let low = Sample::default();
        for i in 0..STREAK - 1 {
            assert_eq!(
                p.observe(t(u64::from(i) * 100), &high),
                None,
                "a short spike is ignored"
            );
        }
        let tr = p.observe(t(500), &high).expect("critical after the streak");
        assert_eq!((tr.from, tr.to), (Level::Normal, Level::Critical));
        assert!(tr.reasons[0].starts_with("rss "), "{:?}", tr.reasons);
        // Holds while the hold window runs, then steps down one level at a time.
        assert_eq!(p.observe(t(600), &low), None);
        assert_eq!(
            p.observe(t(500) + c.hold - Duration::from_millis(1), &low),
            None
        );
        let tr = p.observe(t(500) + c.hold, &low).unwrap();
        assert_eq!(tr.to, Level::Elevated);
        let tr = p.observe(t(500) + c.hold * 2, &low).unwrap();
        assert_eq!(tr.to, Level::Normal);
        assert!(p.reasons().is_empty());
    }

    /// Feeds `samples` 100 ms apart from `start` ms; returns every transition.
    fn feed(p: &mut Pressure, start: u64, samples: &[Sample]) -> Vec<Transition> {
        samples
            .iter()
            .enumerate()
            .filter_map(|(i, s)| p.observe(t(start + i as u64 * 100), s))
            .collect()
    }

    #[test]
    fn a_single_high_sample_or_alternating_ones_never_raise_a_level() {
        let c = cfg();
        let high = Sample {
            rss_bytes: c.rss_critical_bytes * 2,
            interactive_age: c.queue_age_critical * 2,
            ..Sample::default()
        };
        let low = Sample::default();
        let mut p = Pressure::new(c);
        assert!(
            feed(&mut p, 0, &[low, high, low, low]).is_empty(),
            "one spike"
        );
        // High, low, high, ... for a long time: never STREAK in a row.
        let alternating: Vec<Sample> = (0..100)
            .map(|i| if i % 2 == 0 { high } else { low })
            .collect();
        assert!(feed(&mut p, 1_000, &alternating).is_empty());
        // STREAK - 1 high, one low, STREAK - 1 high: the low sample resets the streak.
        let mut broken = vec![high; STREAK as usize - 1];
        broken.push(low);
        broken.extend(vec![high; STREAK as usize - 1]);
        assert!(feed(&mut p, 20_000, &broken).is_empty());
        assert_eq!(p.memory(), (Level::Normal, None));
        // The same readings held for STREAK samples do raise it, naming both signals.
        let tr = feed(&mut p, 30_000, &[high; STREAK as usize]);
        assert_eq!(tr.len(), 1);
        assert_eq!(tr[0].to, Level::Critical);
        assert_eq!(tr[0].reasons.len(), 2, "{:?}", tr[0].reasons);
        assert_eq!(p.memory().0, Level::Critical);
        assert!(p.memory().1.unwrap().starts_with("rss "));
    }

    #[test]
    fn memory_follows_the_rss_streak_without_the_hold() {
        let c = cfg();
        let mut p = Pressure::new(c);
        let warn = Sample {
            rss_bytes: c.rss_warn_bytes,
            ..Sample::default()
        };
        let tr = feed(&mut p, 0, &[warn; STREAK as usize]);
        assert_eq!(tr[0].to, Level::Elevated);
        assert_eq!(p.memory().0, Level::Elevated);
        // One sample back under the threshold: memory says normal at once, the level holds.
        assert_eq!(p.observe(t(600), &Sample::default()), None);
        assert_eq!(p.memory(), (Level::Normal, None));
        assert_eq!(p.level(), Level::Elevated);
    }

    #[test]
    fn lag_from_too_few_iterations_is_not_judged() {
        let mut w = LagWindow::default();
        let mut p = Pressure::new(cfg());
        let mut counts = [0u64; LAG_BUCKETS];
        w.push(t(0), counts, Duration::ZERO);
        // MIN_LAG_SAMPLES - 1 iterations, each a whole second: still no verdict, for as many
        // ticks as the window lasts.
        counts[12] = MIN_LAG_SAMPLES - 1;
        for i in 1..100 {
            let (p99, _) = w.push(t(i * 100), counts, Duration::from_secs(1));
            assert_eq!(p99, None);
            let s = Sample {
                lag_p99: p99,
                ..Sample::default()
            };
            assert_eq!(p.observe(t(i * 100), &s), None);
        }
        // One more iteration makes the sample big enough, and it is judged at once.
        counts[12] += 1;
        let (p99, _) = w.push(t(10_000), counts, Duration::from_secs(1));
        let s = Sample {
            lag_p99: p99,
            ..Sample::default()
        };
        assert_eq!(p.observe(t(10_000), &s).unwrap().to, Level::Critical);
    }

    #[test]
    fn a_stuck_reactor_is_critical_at_once() {
        let mut p = Pressure::new(cfg());
        let s = Sample {
            reactor_stuck: Duration::from_secs(2),
            ..Sample::default()
        };
        assert_eq!(p.observe(t(0), &s).unwrap().to, Level::Critical);
    }

    #[test]
    fn verdicts() {
        let spec = JobSpec {
            kind: "k".into(),
            pool: PoolKind::Cpu,
            lane: Lane::Interactive,
            timeout: Duration::from_secs(10),
            stall_limit: Some(Duration::from_secs(2)),
        };
        let j = JobInfo::new(1, &spec, ReplyTo::Internal, t(0));
        assert_eq!(
            job_verdict(&j, t(5_000)),
            Verdict::Fine,
            "queued jobs do not stall"
        );
        j.mark_started(t(5_000));
        assert_eq!(job_verdict(&j, t(6_000)), Verdict::Fine);
        assert_eq!(
            job_verdict(&j, t(7_000)),
            Verdict::Cancel(CancelReason::Stalled)
        );
        j.stamp(t(6_900));
        assert_eq!(job_verdict(&j, t(7_000)), Verdict::Fine);
        assert_eq!(
            job_verdict(&j, t(10_000)),
            Verdict::Cancel(CancelReason::Deadline)
        );
        j.token.cancel(CancelReason::Deadline);
        assert_eq!(job_verdict(&j, t(10_000)), Verdict::Fine, "acted on once");
    }

    #[test]
    fn rss_reads() {}
}
