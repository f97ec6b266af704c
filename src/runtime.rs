//! The state every thread shares: configuration, lifecycle phase, drain, pressure, the job
//! table, the pools' queues and the metrics. Also where a job is admitted, run and answered.
//!
//! Locks here are held for a copy or an insert, never across work, so the reactor can take
//! them without waiting on a worker.

use crate::cancel::CancelReason;
use crate::clock;
use crate::config::{Config, Overrides};
use crate::error::{Code, RpcError};
use crate::jobs::{
    Job, JobCtx, JobInfo, JobSpec, JobTable, Lane, PoolKind, Pools, Work, cancel_error,
};
use crate::metrics::{Metrics, family};
use crate::pressure::{Level, PressureCell, PressureView};
use crate::protocol::reply::{Completion, Fanout, Outbound, ReplyTo};
use crate::sdnotify::Notifier;
use crate::sync::lock;
use crossbeam_channel::Sender;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

pub struct Shared {
    pub started: Instant,
    pub started_wall_ms: u64,
    pub state_dir: PathBuf,
    pub overrides: Overrides,
    config: Mutex<Arc<Config>>,
    phase: AtomicU8,
    drain: Mutex<Option<Drain>>,
    pub metrics: Metrics,
    pressure: PressureCell,
    pub jobs: JobTable,
    pub pools: Pools,
    /// Session stores and the usage index.
    pub sessions: crate::sessions::Sessions,
    /// Agent runs, session subscriptions and provider cooldowns.
    pub runs: crate::agent::runs::Runs,
    /// The durable outbound queue and its dispatch.
    pub delivery: crate::delivery::service::Delivery,
    next_job_id: AtomicU64,
    completions: Sender<Outbound>,
    waker: Arc<mio::Waker>,
    pub notifier: Notifier,
    /// Hidden `keel.test.*` methods are served only when `KEEL_TEST_HOOKS=1` at boot.
    pub test_hooks: bool,
    /// Monotonic ms (+1) since the reactor began its current iteration; 0 while it waits in poll.
    reactor_busy_since: AtomicU64,
    /// Monotonic ms of the reactor's last iteration.
    reactor_heartbeat: AtomicU64,
    /// A wake-up is on its way to the reactor (see `send_outbound`).
    wake_pending: std::sync::atomic::AtomicBool,
    /// The address actually bound (the config may say port 0).
    listen: OnceLock<SocketAddr>,
}

pub struct SharedParts {
    pub state_dir: PathBuf,
    pub overrides: Overrides,
    pub config: Config,
    pub pools: Pools,
    pub completions: Sender<Outbound>,
    pub waker: Arc<mio::Waker>,
    pub notifier: Notifier,
    pub test_hooks: bool,
}

impl Shared {
    pub fn new(p: SharedParts) -> Shared {
        let now = Instant::now();
        let metrics = Metrics::default();
        // Sampled once here so the first /metrics is not a zero before the watchdog's tick.
        metrics.rss_bytes.set(crate::procfs::rss_bytes());
        Shared {
            started: now,
            started_wall_ms: clock::wall_ms(),
            state_dir: p.state_dir.clone(),
            overrides: p.overrides,
            config: Mutex::new(Arc::new(p.config)),
            phase: AtomicU8::new(Phase::Starting as u8),
            drain: Mutex::new(None),
            metrics,
            pressure: PressureCell::new(clock::wall_ms()),
            jobs: JobTable::default(),
            pools: p.pools,
            sessions: crate::sessions::Sessions::new(&p.state_dir, p.test_hooks),
            runs: crate::agent::runs::Runs::default(),
            delivery: crate::delivery::service::Delivery::default(),
            next_job_id: AtomicU64::new(1),
            completions: p.completions,
            wake_pending: std::sync::atomic::AtomicBool::new(false),
            waker: p.waker,
            notifier: p.notifier,
            test_hooks: p.test_hooks,
            reactor_busy_since: AtomicU64::new(0),
            reactor_heartbeat: AtomicU64::new(clock::mono_ms(now)),
            listen: OnceLock::new(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        lock(&self.config).clone()
    }

    pub fn set_config(&self, c: Config) {
        *lock(&self.config) = Arc::new(c);
    }

    pub fn set_listen_addr(&self, addr: SocketAddr) {
        let _ = self.listen.set(addr);
    }

    /// The bound address (the configured one until the listener exists).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .get()
            .copied()
            .unwrap_or_else(|| self.config().listen_addr())
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake the reactor: {e}");
        }
    }

    // ---- lifecycle -------------------------------------------------------------------------

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

    /// Starts the drain; false if one is already under way.
    pub fn begin_drain(&self, now: Instant) -> bool {
        let mut d = lock(&self.drain);
        if d.is_some() {
            return false;
        }
        let cfg = self.config();
        let deadline = now + cfg.drain_timeout;
        *d = Some(Drain {
            begun: now,
            deadline,
            hard_deadline: deadline + cfg.drain_grace,
            cancelled: false,
            aborted: 0,
        });
        drop(d);
        self.set_phase(Phase::Draining);
        // Background work is maintenance whose progress is already saved (index builds): it
        // stops now instead of holding the drain open. Client work keeps its deadline.
        for job in self.jobs.snapshot() {
            if job.lane == Lane::Background && self.cancel_job(&job, CancelReason::Drain) {
                log::info!("drain: cancelled background job {} ({})", job.id, job.kind);
            }
        }
        self.wake();
        true
    }

    /// A second signal: skip to the cancel step now (the grace still applies).
    pub fn hurry_drain(&self, now: Instant) {
        let grace = self.config().drain_grace;
        if let Some(d) = lock(&self.drain).as_mut()
            && d.deadline > now
        {
            d.deadline = now;
            d.hard_deadline = now + grace;
        }
    }

    /// The cancel step: fire every job's token. Returns the jobs that were still in flight.
    pub fn cancel_all(&self) -> Vec<Arc<JobInfo>> {
        let jobs = self.jobs.snapshot();
        if let Some(d) = lock(&self.drain).as_mut() {
            d.cancelled = true;
            d.aborted = jobs.len();
        }
        for j in &jobs {
            self.cancel_job(j, CancelReason::Drain);
        }
        jobs
    }

    /// 0 after a clean drain, 1 when work had to be aborted.
    pub fn exit_code(&self) -> i32 {
        match self.drain() {
            Some(d) if d.aborted > 0 => 1,
            _ => 0,
        }
    }

    // ---- reactor heartbeat -----------------------------------------------------------------

    pub fn reactor_busy(&self, now: Instant) {
        self.reactor_busy_since
            .store(clock::mono_ms(now) + 1, Ordering::Release);
        self.reactor_heartbeat
            .store(clock::mono_ms(now), Ordering::Release);
    }

    pub fn reactor_idle(&self, now: Instant) {
        self.reactor_busy_since.store(0, Ordering::Release);
        self.reactor_heartbeat
            .store(clock::mono_ms(now), Ordering::Release);
    }

    /// How long the reactor has been inside its current iteration (zero while it waits).
    pub fn reactor_stuck_for(&self, now: Instant) -> Duration {
        match self.reactor_busy_since.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            ms => now.saturating_duration_since(clock::from_mono_ms(ms - 1)),
        }
    }

    pub fn reactor_heartbeat_age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(clock::from_mono_ms(
            self.reactor_heartbeat.load(Ordering::Acquire),
        ))
    }

    // ---- pressure --------------------------------------------------------------------------

    pub fn pressure(&self) -> PressureView {
        self.pressure.get()
    }

    pub fn set_pressure(&self, v: PressureView) {
        self.pressure.set(v);
    }

    // ---- jobs ------------------------------------------------------------------------------

    /// Admits a job without ever blocking: refused at once when draining, when the lane is
    /// full, or (background work) under critical pressure.
    pub fn submit(&self, spec: JobSpec, reply: ReplyTo, work: Work) -> Result<u64, RpcError> {
        if self.phase() >= Phase::Draining {
            self.metrics.rejected_draining.inc();
            return Err(RpcError::draining());
        }
        if spec.lane == Lane::Background && self.pressure().level == Level::Critical {
            self.metrics.rejected_pressure.inc();
            return Err(RpcError::unavailable(
                "background work is shed while the gateway is under critical pressure",
                5_000,
            ));
        }
        let id = self.next_job_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(JobInfo::new(id, &spec, reply, Instant::now()));
        self.jobs.insert(info.clone());
        let pool = self.pools.get(spec.pool);
        match pool.try_submit(Job { info, work }) {
            Ok(()) => Ok(id),
            Err(_job) => {
                self.jobs.remove(id);
                self.metrics.rejected_queue_full.inc();
                Err(RpcError::unavailable(
                    format!(
                        "the {} pool's {} queue is full ({} jobs waiting); retry shortly",
                        spec.pool.as_str(),
                        spec.lane.as_str(),
                        pool.capacity(spec.lane)
                    ),
                    1_000,
                ))
            }
        }
    }

    /// Fires a job's token for `reason` and answers its client at once (if not yet answered).
    /// Counted once, by the call that fired the token.
    pub fn cancel_job(&self, info: &JobInfo, reason: CancelReason) -> bool {
        if !info.token.cancel(reason) {
            return false;
        }
        match reason {
            CancelReason::Deadline | CancelReason::Stalled => {
                self.metrics.jobs_deadline_exceeded.inc()
            }
            CancelReason::Drain | CancelReason::Client => self.metrics.jobs_cancelled.inc(),
        }
        self.deliver(info, &Err(cancel_error(info, reason)));
        true
    }

    /// Runs one job on the calling worker thread. Never panics: the job's panic is caught.
    pub fn run_job(&self, job: Job) {
        let Job { info, work } = job;
        let now = Instant::now();
        if info.token.is_cancelled() {
            // Cancelled while queued; its client has been answered. The work is dropped here,
            // before the job leaves the table, so whatever it owned is released first.
            drop(work);
            self.metrics.jobs_dropped_expired.inc();
        } else if now >= info.deadline {
            drop(work);
            self.metrics.jobs_dropped_expired.inc();
            self.cancel_job(&info, CancelReason::Deadline);
        } else {
            info.mark_started(now);
            let result = catch_unwind(AssertUnwindSafe(|| work(&JobCtx { info: &info })));
            let outcome = match result {
                Ok(r) => r,
                Err(panic) => {
                    self.metrics.jobs_panicked.inc();
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    log::error!("job {} ({}) panicked: {what}", info.id, info.kind);
                    Err(RpcError::new(
                        Code::Internal,
                        format!(
                            "{} failed: internal error (job {} panicked)",
                            info.kind, info.id
                        ),
                    ))
                }
            };
            match &outcome {
                Ok(_) => self.metrics.jobs_ok.inc(),
                Err(_) if info.token.is_cancelled() => {}
                Err(_) => self.metrics.jobs_failed.inc(),
            }
            if !info.reply_deferred() {
                self.deliver(&info, &outcome);
            }
        }
        // Removed only after the reply is in the channel: an empty table with an empty channel
        // means every answer has reached the reactor.
        self.jobs.remove(info.id);
        self.wake();
    }

    /// Hands a completion (a reply, an event) to the reactor.
    pub fn push(&self, c: Completion) {
        self.send_outbound(Outbound::Reply(c));
    }

    /// Hands an event for several connections to the reactor.
    pub fn fanout(&self, f: Fanout) {
        if !f.targets.is_empty() {
            self.send_outbound(Outbound::Event(f));
        }
    }

    /// Queues for the reactor and wakes it — once: while a wake-up is pending, more items
    /// ride along (a run streaming to 100 listeners must not mean a wake-up per event).
    fn send_outbound(&self, o: Outbound) {
        if self.completions.send(o).is_ok() && !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.wake();
        }
    }

    /// The reactor is about to drain the queue: the next item must wake it again.
    pub fn clear_wake_pending(&self) {
        self.wake_pending.store(false, Ordering::Release);
    }

    /// Sends the job's one reply to the reactor.
    pub fn deliver(&self, info: &JobInfo, outcome: &crate::payload::Outcome) {
        if !info.claim_reply() {
            return;
        }
        match crate::protocol::reply::encode_reply(&info.reply, outcome) {
            Some(c) => self.push(c),
            None => {
                match outcome {
                    // A drain stopping maintenance is the plan, not a failure.
                    Err(e) if e.code == Code::Cancelled => {
                        log::debug!("internal job {} ({}) stopped: {e}", info.id, info.kind)
                    }
                    Err(e) => log::warn!("internal job {} ({}) failed: {e}", info.id, info.kind),
                    Ok(_) => {}
                }
            }
        }
    }

    // ---- what clients see ------------------------------------------------------------------

    /// Pools and lanes: depth from the queues, oldest age as the watchdog last measured it
    /// (so the reactor never scans the job table for `health`).
    fn queues_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (pi, kind) in [PoolKind::Cpu, PoolKind::Io].into_iter().enumerate() {
            let pool = self.pools.get(kind);
            let mut lanes = serde_json::Map::new();
            for q in pool.queues() {
                let oldest = self.metrics.oldest_queued_ms[pi][q.lane as usize].get();
                lanes.insert(
                    q.lane.as_str().into(),
                    json!({"depth": q.depth, "capacity": q.capacity, "oldestMs": oldest}),
                );
            }
            out.insert(
                kind.as_str().into(),
                json!({"workers": pool.workers, "busy": pool.busy(), "lanes": lanes}),
            );
        }
        Value::Object(out)
    }

    fn pressure_json(&self) -> Value {
        let p = self.pressure();
        json!({
            "level": p.level.as_str(),
            "reasons": p.reasons,
            "since": clock::iso8601(p.since_wall_ms),
        })
    }

    /// `/healthz` and `/livez`: the reactor runs. Tiny and lock-light, for probes at any rate.
    pub fn liveness_json(&self) -> Value {
        let phase = self.phase();
        json!({
            "ok": true,
            "status": "live",
            "phase": phase.as_str(),
            "draining": phase >= Phase::Draining,
            "pressure": self.pressure().level.as_str(),
            "uptimeMs": self.uptime().as_millis() as u64,
        })
    }

    /// The `health` method and the snapshot in `hello-ok`: from memory, cheap, on the reactor.
    pub fn health_json(&self) -> Value {
        let t0 = Instant::now();
        let p = self.pressure();
        let phase = self.phase();
        let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0;
        let m = &self.metrics;
        let in_flight = self.jobs.len();
        json!({
            "ok": true,
            "ts": clock::wall_ms(),
            "durationMs": t0.elapsed().as_millis() as u64,
            "version": crate::VERSION,
            "uptimeMs": self.uptime().as_millis() as u64,
            "phase": phase.as_str(),
            "draining": phase >= Phase::Draining,
            "pressure": {"level": p.level.as_str(), "reasons": p.reasons},
            "eventLoop": {
                "degraded": p.level != Level::Normal,
                "degradedSinceMs": if p.level != Level::Normal { Some(p.since_wall_ms) } else { None },
                "reasons": p.reasons,
                "delayP99Ms": p.lag_p99.map(ms),
                "delayMaxMs": ms(p.lag_max),
            },
            "reactor": {"lagP99Ms": p.lag_p99.map(ms), "lagMaxMs": ms(p.lag_max)},
            "queues": self.queues_json(),
            "jobs": {"inFlight": in_flight},
            "rssBytes": m.rss_bytes.get(),
            "connections": {
                "http": m.conns_http.get(),
                "wsHandshake": m.conns_ws_handshake.get(),
                "ws": m.conns_ws_open.get(),
            },
            "channels": {},
            "channelOrder": [],
            "channelLabels": {},
            "heartbeatSeconds": 0,
            "defaultAgentId": "main",
            "agents": [],
            "sessions": {"path": null, "count": 0, "recent": []},
        })
    }

    /// Why the gateway is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut r = Vec::new();
        match self.phase() {
            Phase::Starting => r.push("starting".to_string()),
            Phase::Draining | Phase::Stopped => r.push("draining".to_string()),
            Phase::Serving => {}
        }
        let p = self.pressure();
        if p.level == Level::Critical {
            r.push(format!("pressure critical: {}", p.reasons.join("; ")));
        }
        r.extend(self.config().readiness_reasons());
        r
    }

    /// `/metrics` in Prometheus text format 0.0.4.
    pub fn prometheus(&self) -> String {
        let now = Instant::now();
        let mut out = String::with_capacity(8 << 10);
        let _ = writeln!(out, "# HELP keel_build_info keel's version.");
        let _ = writeln!(out, "# TYPE keel_build_info gauge");
        let _ = writeln!(out, "keel_build_info{{version=\"{}\"}} 1", crate::VERSION);
        family(
            &mut out,
            "keel_uptime_seconds",
            "gauge",
            "Seconds since start.",
            self.uptime().as_secs_f64(),
        );
        self.metrics.render(&mut out);
        let _ = writeln!(
            out,
            "# HELP keel_queue_depth Jobs waiting, by pool and lane."
        );
        let _ = writeln!(out, "# TYPE keel_queue_depth gauge");
        for kind in [PoolKind::Cpu, PoolKind::Io] {
            for q in self.pools.get(kind).queues() {
                let _ = writeln!(
                    out,
                    "keel_queue_depth{{pool=\"{}\",lane=\"{}\"}} {}",
                    kind.as_str(),
                    q.lane.as_str(),
                    q.depth
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP keel_queue_oldest_age_seconds Age of the oldest queued job, by pool and lane."
        );
        let _ = writeln!(out, "# TYPE keel_queue_oldest_age_seconds gauge");
        for (pi, kind) in [PoolKind::Cpu, PoolKind::Io].into_iter().enumerate() {
            for lane in Lane::ALL {
                let age = self.metrics.oldest_queued_ms[pi][lane as usize].get() as f64 / 1000.0;
                let _ = writeln!(
                    out,
                    "keel_queue_oldest_age_seconds{{pool=\"{}\",lane=\"{}\"}} {age}",
                    kind.as_str(),
                    lane.as_str()
                );
            }
        }
        let _ = writeln!(out, "# HELP keel_jobs_in_flight Jobs running, by pool.");
        let _ = writeln!(out, "# TYPE keel_jobs_in_flight gauge");
        for kind in [PoolKind::Cpu, PoolKind::Io] {
            let _ = writeln!(
                out,
                "keel_jobs_in_flight{{pool=\"{}\"}} {}",
                kind.as_str(),
                self.pools.get(kind).busy()
            );
        }
        let p = self.pressure();
        family(
            &mut out,
            "keel_pressure_level",
            "gauge",
            "0 normal, 1 elevated, 2 critical.",
            p.level as u8,
        );
        family(
            &mut out,
            "keel_draining",
            "gauge",
            "1 while draining for shutdown.",
            u8::from(self.phase() >= Phase::Draining),
        );
        family(
            &mut out,
            "keel_reactor_stuck_seconds",
            "gauge",
            "How long the reactor has been inside its current iteration.",
            self.reactor_stuck_for(now).as_secs_f64(),
        );
        self.sessions.render_metrics(&mut out);
        self.delivery.render_metrics(&mut out);
        crate::idempotency::render_metrics(
            &mut out,
            &[
                ("send", &self.delivery.sent_keys),
                ("runs", &self.runs.run_keys),
            ],
        );
        family(
            &mut out,
            "keel_config_disabled_features",
            "gauge",
            "Features disabled by a bad config.",
            self.config().disabled.len(),
        );
        out
    }

    /// Pools, queues and every job, for `status` and the dump.
    fn jobs_json(&self, now: Instant) -> Value {
        Value::Array(
            self.jobs
                .snapshot()
                .iter()
                .map(|j| j.describe(now))
                .collect(),
        )
    }

    /// The `status` method (runs as a job).
    pub fn status_json(&self) -> Value {
        let now = Instant::now();
        let cfg = self.config();
        let m = &self.metrics;
        json!({
            "runtimeVersion": crate::VERSION,
            "version": crate::VERSION,
            "pid": std::process::id(),
            "startedAt": clock::iso8601(self.started_wall_ms),
            "uptimeMs": self.uptime().as_millis() as u64,
            "phase": self.phase().as_str(),
            "ready": self.not_ready_reasons().is_empty(),
            "notReadyReasons": self.not_ready_reasons(),
            "pressure": self.pressure_json(),
            "listen": self.listen_addr().to_string(),
            "stateDir": self.state_dir,
            "config": {
                "source": cfg.source,
                "disabled": cfg.disabled.iter().map(|d| json!({"feature": d.feature, "reason": d.reason})).collect::<Vec<_>>(),
            },
            "pools": self.queues_json(),
            "jobs": self.jobs_json(now),
            "rssBytes": m.rss_bytes.get(),
            "connections": {
                "http": m.conns_http.get(),
                "wsHandshake": m.conns_ws_handshake.get(),
                "ws": m.conns_ws_open.get(),
            },
            "counters": {
                "jobsOk": m.jobs_ok.get(),
                "jobsFailed": m.jobs_failed.get(),
                "deadlineExceeded": m.jobs_deadline_exceeded.get(),
                "cancelled": m.jobs_cancelled.get(),
                "panicked": m.jobs_panicked.get(),
                "rejectedQueueFull": m.rejected_queue_full.get(),
            },
            "usage": self.sessions.status_json(),
            "delivery": self.delivery.status_json(),
            "heartbeat": {"defaultAgentId": "main", "agents": []},
            "channelSummary": [],
            "queuedSystemEvents": [],
            "tasks": {},
            "sessions": {"count": 0, "recent": []},
        })
    }

    /// The SIGUSR1 diagnostic dump.
    pub fn dump_json(&self) -> Value {
        let now = Instant::now();
        let p = self.pressure();
        let lag = self.metrics.lag.counts();
        let drain = self.drain().map(|d| {
            json!({
                "elapsedMs": now.saturating_duration_since(d.begun).as_millis() as u64,
                "cancelInMs": d.deadline.saturating_duration_since(now).as_millis() as u64,
                "exitInMs": d.hard_deadline.saturating_duration_since(now).as_millis() as u64,
                "cancelled": d.cancelled,
            })
        });
        json!({
            "ts": clock::iso8601(clock::wall_ms()),
            "version": crate::VERSION,
            "pid": std::process::id(),
            "uptimeMs": self.uptime().as_millis() as u64,
            "phase": self.phase().as_str(),
            "drain": drain,
            "pressure": self.pressure_json(),
            "reactor": {
                "lagP99Ms": p.lag_p99.map(|d| d.as_secs_f64() * 1000.0),
                "lagMaxMs": p.lag_max.as_secs_f64() * 1000.0,
                "lagMaxSinceStartMs": self.metrics.lag.max().as_secs_f64() * 1000.0,
                "stuckForMs": self.reactor_stuck_for(now).as_millis() as u64,
                "lagHistogram": {"boundsUs": crate::metrics::LAG_BOUNDS_US, "counts": lag},
            },
            "rssBytes": self.metrics.rss_bytes.get(),
            "fds": crate::procfs::fd_count(),
            "threads": crate::procfs::thread_count(),
            "connections": {
                "http": self.metrics.conns_http.get(),
                "wsHandshake": self.metrics.conns_ws_handshake.get(),
                "ws": self.metrics.conns_ws_open.get(),
            },
            "delivery": self.delivery.status_json(),
            "pools": self.queues_json(),
            "jobs": self.jobs_json(now),
            "config": {
                "source": self.config().source,
                "disabled": self.config().readiness_reasons(),
            },
        })
    }
}
