//! The gateway as one value: the handles every thread shares (configuration, lifecycle,
//! pressure, heartbeat, metrics, the job system and the reply path), the services, and the
//! views clients see (`health`, `status`, `/metrics`, the dump). Each handle lives in its own
//! module; `Shared` holds them and, for now, forwards to them, so callers move to the narrow
//! handle one at a time.
//!
//! Locks here are held for a copy or an insert, never across work, so the reactor can take
//! them without waiting on a worker.

use crate::cancel::CancelReason;
use crate::clock;
use crate::config::live::ConfigCell;
use crate::config::{Config, Overrides};
use crate::error::RpcError;
use crate::heartbeat::Heartbeat;
use crate::jobs::outbox::Outbox;
use crate::jobs::periodic::Periodic;
use crate::jobs::system::JobSystem;
use crate::jobs::{JobInfo, JobSpec, Lane, PoolKind, Pools, Work};
use crate::metrics::{Metrics, family};
use crate::phase::{Drain, LifecycleCell, Phase};
use crate::pressure::{Level, PressureCell, PressureView};
use crate::protocol::reply::{Outbound, ReplyTo};
use crate::sdnotify::Notifier;
use crossbeam_channel::Sender;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub struct Shared {
    pub started: Instant,
    pub started_wall_ms: u64,
    pub state_dir: PathBuf,
    pub overrides: Overrides,
    pub config_cell: Arc<ConfigCell>,
    pub lifecycle: Arc<LifecycleCell>,
    pub pressure_cell: Arc<PressureCell>,
    pub heartbeat: Arc<Heartbeat>,
    pub metrics: Arc<Metrics>,
    /// The job table, the pools and the reply path.
    pub jobs: Arc<JobSystem>,
    pub outbox: Arc<Outbox>,
    /// Session stores and the usage index.
    pub sessions: Arc<crate::sessions::Sessions>,
    /// Agent runs, session subscriptions and provider cooldowns.
    pub runs: Arc<crate::agent::runs::Runs>,
    /// The durable outbound queue and its dispatch.
    pub delivery: Arc<crate::delivery::service::Delivery>,
    /// OpenClaw's dashboard: its files, from a root on disk (`ui`).
    pub ui: Arc<crate::ui::ControlUi>,
    /// Chat channels in: the ingress queue, its dispatcher, the transports, pairing.
    pub inbound: Arc<crate::inbound::service::Service>,
    /// The scheduler: cron jobs, heartbeats, their receipts.
    pub cron: Arc<crate::cron::service::Cron>,
    pub notifier: Notifier,
    /// Hidden `keel.test.*` methods are served only when `KEEL_TEST_HOOKS=1` at boot.
    pub test_hooks: bool,
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
        let metrics = Arc::new(Metrics::default());
        // Sampled once here so the first /metrics is not a zero before the watchdog's tick.
        metrics.rss_bytes.set(crate::procfs::rss_bytes());
        let config_cell = Arc::new(ConfigCell::new(p.config));
        let lifecycle = Arc::new(LifecycleCell::default());
        let pressure_cell = Arc::new(PressureCell::new(clock::wall_ms()));
        let outbox = Arc::new(Outbox::new(p.completions, p.waker));
        let jobs = Arc::new(JobSystem::new(
            p.pools,
            outbox.clone(),
            lifecycle.clone(),
            pressure_cell.clone(),
            config_cell.clone(),
            metrics.clone(),
        ));
        let delivery = Arc::new(crate::delivery::service::Delivery::new(
            crate::delivery::service::Handles {
                jobs: jobs.clone(),
                config: config_cell.clone(),
                lifecycle: lifecycle.clone(),
                state_dir: p.state_dir.clone(),
                test_hooks: p.test_hooks,
            },
        ));
        let sessions = Arc::new(crate::sessions::Sessions::new(crate::sessions::Handles {
            jobs: jobs.clone(),
            config: config_cell.clone(),
            pressure: pressure_cell.clone(),
            state_dir: p.state_dir.clone(),
            test_hooks: p.test_hooks,
        }));
        let ui = Arc::new(crate::ui::ControlUi::new(crate::ui::Handles {
            jobs: jobs.clone(),
            config: config_cell.clone(),
            pressure: pressure_cell.clone(),
            state_dir: p.state_dir.clone(),
            test_hooks: p.test_hooks,
        }));
        let runs = Arc::new(crate::agent::runs::Runs::new(crate::agent::runs::Handles {
            jobs: jobs.clone(),
            outbox: outbox.clone(),
            config: config_cell.clone(),
            pressure: pressure_cell.clone(),
            metrics: metrics.clone(),
            delivery: delivery.clone(),
            state_dir: p.state_dir.clone(),
        }));
        let inbound = Arc::new(crate::inbound::service::Service::new(
            crate::inbound::service::Handles {
                jobs: jobs.clone(),
                config: config_cell.clone(),
                lifecycle: lifecycle.clone(),
                runs: runs.clone(),
                delivery: delivery.clone(),
                state_dir: p.state_dir.clone(),
                test_hooks: p.test_hooks,
            },
        ));
        let cron = Arc::new(crate::cron::service::Cron::new(
            crate::cron::service::Handles {
                config: config_cell.clone(),
                lifecycle: lifecycle.clone(),
                runs: runs.clone(),
                state_dir: p.state_dir.clone(),
            },
        ));
        Shared {
            started: now,
            started_wall_ms: clock::wall_ms(),
            state_dir: p.state_dir.clone(),
            overrides: p.overrides,
            config_cell,
            lifecycle,
            pressure_cell,
            heartbeat: Arc::new(Heartbeat::new(now)),
            metrics,
            jobs,
            outbox,
            sessions,
            runs,
            delivery,
            ui,
            inbound,
            cron,
            notifier: p.notifier,
            test_hooks: p.test_hooks,
            listen: OnceLock::new(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config_cell.get()
    }

    pub fn set_config(&self, c: Config) {
        self.config_cell.set(c);
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

    // ---- lifecycle -------------------------------------------------------------------------

    pub fn phase(&self) -> Phase {
        self.lifecycle.phase()
    }

    pub fn set_phase(&self, p: Phase) {
        self.lifecycle.set_phase(p);
    }

    pub fn drain(&self) -> Option<Drain> {
        self.lifecycle.drain()
    }

    /// Starts the drain; false if one is already under way.
    pub fn begin_drain(&self, now: Instant) -> bool {
        // Transports stop first: nothing new is received while the rest drains.
        self.inbound.begin_stop();
        self.cron.begin_stop();
        self.jobs.begin_drain(now)
    }

    /// A second signal: skip to the cancel step now (the grace still applies).
    pub fn hurry_drain(&self, now: Instant) {
        self.jobs.hurry_drain(now);
    }

    /// The cancel step: fire every job's token. Returns the jobs that were still in flight.
    pub fn cancel_all(&self) -> Vec<Arc<JobInfo>> {
        self.jobs.cancel_all()
    }

    /// 0 after a clean drain, 1 when work had to be aborted.
    pub fn exit_code(&self) -> i32 {
        self.lifecycle.exit_code()
    }

    // ---- reactor heartbeat -----------------------------------------------------------------

    pub fn reactor_busy(&self, now: Instant) {
        self.heartbeat.busy(now);
    }

    pub fn reactor_idle(&self, now: Instant) {
        self.heartbeat.idle(now);
    }

    /// How long the reactor has been inside its current iteration (zero while it waits).
    pub fn reactor_stuck_for(&self, now: Instant) -> Duration {
        self.heartbeat.stuck_for(now)
    }

    pub fn reactor_heartbeat_age(&self, now: Instant) -> Duration {
        self.heartbeat.age(now)
    }

    // ---- pressure --------------------------------------------------------------------------

    pub fn pressure(&self) -> PressureView {
        self.pressure_cell.get()
    }

    pub fn set_pressure(&self, v: PressureView) {
        self.pressure_cell.set(v);
    }

    // ---- jobs ------------------------------------------------------------------------------

    /// Admits a job without ever blocking (`JobSystem::submit`).
    pub fn submit(&self, spec: JobSpec, reply: ReplyTo, work: Work) -> Result<u64, RpcError> {
        self.jobs.submit(spec, reply, work)
    }

    /// Fires a job's token and answers its client at once (`JobSystem::cancel_job`).
    pub fn cancel_job(&self, info: &JobInfo, reason: CancelReason) -> bool {
        self.jobs.cancel_job(info, reason)
    }

    /// The reactor is about to drain the queue: the next item must wake it again.
    pub fn clear_wake_pending(&self) {
        self.outbox.clear_wake_pending();
    }

    /// The services' periodic work, for the watchdog.
    pub fn periodic(self: &Arc<Self>) -> Vec<Box<dyn Periodic>> {
        vec![
            Box::new(self.delivery.clone()),
            Box::new(self.runs.clone()),
            Box::new(self.sessions.clone()),
            Box::new(self.ui.clone()),
            Box::new(self.cron.clone()),
        ]
    }

    // ---- what clients see ------------------------------------------------------------------

    /// Pools and lanes: depth from the queues, oldest age as the watchdog last measured it
    /// (so the reactor never scans the job table for `health`).
    fn queues_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (pi, kind) in [PoolKind::Cpu, PoolKind::Io].into_iter().enumerate() {
            let pool = self.jobs.pools.get(kind);
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
        r.extend(self.inbound.readiness_notes());
        r.extend(self.cron.overdue_notes());
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
            for q in self.jobs.pools.get(kind).queues() {
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
                self.jobs.pools.get(kind).busy()
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
        self.ui.render_metrics(&mut out);
        self.inbound.render_metrics(&mut out);
        self.cron.render_metrics(&mut out);
        crate::idempotency::render_metrics(
            &mut out,
            &[
                ("send", &self.delivery.sent_keys),
                ("replies", &self.delivery.reply_keys),
                ("runs", &self.runs.run_keys),
                ("inbound", &self.inbound.finished),
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
            "controlUi": self.ui.status_json(),
            "inbound": self.inbound.status_json(),
            "cron": self.cron.status_json(),
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
