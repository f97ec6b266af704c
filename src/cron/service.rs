//! The scheduler service: the jobs (files in `<state>/cron/jobs/`), their receipts
//! (`<state>/cron/runs/`), the scheduler thread that starts due runs, and the published view
//! the watchdog judges for lateness.
//!
//! Invariants:
//! - A receipt is on disk, `running`, before a run starts; one run per job at a time.
//! - A job's next slot follows the newest scheduled receipt (or the time its schedule was set),
//!   never the clock alone: a restart or a clock step neither repeats a slot nor loses one.
//!   Slots that passed without a run (keel down, a long run, a clock step forward) are caught
//!   up once, the receipt saying how many were missed, or skipped (recorded) under
//!   `cron.skipMissedJobs` at boot. Catch-ups at boot are spread 2 s apart (at most 2 min).
//! - Nothing starts while draining or with `cron.enabled: false`.
//! - The reactor and the watchdog never take the jobs' lock: they read what the scheduler
//!   publishes (an `Arc` swapped under a lock held for the copy) and atomics.

use super::job::{self, HEARTBEAT_PREFIX, Job, JobDef, PayloadDef, ScheduleDef};
use super::receipts::{self, Owner, Receipt};
use super::schedule::{Decision, decide};
use crate::agent::runs::{self, Request, Run, Runs, Status};
use crate::cancel::{CancelReason, CancelToken};
use crate::clock;
use crate::config::live::ConfigCell;
use crate::error::{Code, RpcError};
use crate::jobs::periodic::Periodic;
use crate::metrics::family;
use crate::phase::{LifecycleCell, Phase};
use crate::pressure::Level;
use crate::protocol::reply::ReplyTo;
use crate::sync::lock;
use crossbeam_channel::{Receiver, Sender};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Boot catch-ups start this far apart.
const CATCH_UP_STEP_MS: i64 = 2_000;
/// … and all within this long after boot.
const CATCH_UP_SPREAD_MS: i64 = 120_000;
/// A late job's grace: one period, at most this.
const MAX_GRACE_MS: i64 = 300_000;
/// The scheduler's loop has not run for this long: it is reported as stalled.
const STALL_MS: u64 = 60_000;

pub struct Handles {
    pub config: Arc<ConfigCell>,
    pub lifecycle: Arc<LifecycleCell>,
    pub runs: Arc<Runs>,
    pub state_dir: PathBuf,
}

/// A job file that could not be used, and why.
#[derive(Debug, Clone)]
pub struct Broken {
    pub id: String,
    pub name: String,
    pub reason: String,
}

struct Running {
    receipt: Receipt,
    run: Arc<Run>,
    deadline_ms: u64,
    timed_out: bool,
}

struct Entry {
    job: Result<Job, Broken>,
    /// The newest slot decided (run or skipped), or the time the schedule was set.
    last_slot_ms: i64,
    /// The newest finished receipt.
    last: Option<Receipt>,
    running: Option<Running>,
    /// A boot catch-up's start time (spread).
    catch_up_at_ms: Option<i64>,
    /// A run that could not start now is tried again then.
    retry_at_ms: Option<i64>,
}

impl Entry {
    fn new(job: Result<Job, Broken>, last_slot_ms: i64) -> Entry {
        Entry {
            job,
            last_slot_ms,
            last: None,
            running: None,
            catch_up_at_ms: None,
            retry_at_ms: None,
        }
    }

    /// When the job should have run, for lateness: its natural slot (a catch-up spread at boot
    /// counts from its planned time; a retry after a failure does not move it).
    fn judged_due_ms(&self) -> Option<i64> {
        let job = self.job.as_ref().ok()?;
        if !job.def.enabled {
            return None;
        }
        let natural = job.schedule.next_after(self.last_slot_ms)?;
        Some(self.catch_up_at_ms.map_or(natural, |c| c.max(natural)))
    }

    fn next_due_ms(&self) -> Option<i64> {
        let job = self.job.as_ref().ok()?;
        if !job.def.enabled {
            return None;
        }
        let natural = job.schedule.next_after(self.last_slot_ms)?;
        Some(match (self.catch_up_at_ms, self.retry_at_ms) {
            (_, Some(r)) => r.max(natural),
            (Some(c), None) => c.max(natural),
            (None, None) => natural,
        })
    }
}

/// One enabled job as the watchdog judges it.
#[derive(Debug, Clone)]
struct Due {
    id: String,
    name: String,
    due_ms: i64,
    grace_ms: i64,
    /// While running: when its timeout passes.
    running_until_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct Published {
    dues: Vec<Due>,
}

pub struct Cron {
    h: Handles,
    jobs: Mutex<BTreeMap<String, Entry>>,
    /// Job-file writes, one at a time (workers and the scheduler thread only).
    writes: Mutex<()>,
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    /// Fired at drain start: nothing new starts.
    pub stop: CancelToken,
    started: AtomicBool,
    loaded: AtomicBool,
    owner: Owner,
    published: Mutex<Arc<Published>>,
    /// The scheduler loop's last pass (wall ms).
    loop_ms: AtomicU64,
    overdue: Mutex<Arc<Vec<String>>>,
    overdue_count: AtomicU64,
    /// Judged by the watchdog at most once a second (mono ms).
    judged_ms: AtomicU64,
    /// Jobs whose lateness was logged (the watchdog's own).
    logged: Mutex<HashSet<String>>,
    pub runs_started: AtomicU64,
    pub runs_ok: AtomicU64,
    pub runs_failed: AtomicU64,
    pub skipped: AtomicU64,
    pub interrupted: AtomicU64,
    jobs_count: AtomicU64,
    running_count: AtomicU64,
}

fn err(msg: impl Into<String>) -> RpcError {
    RpcError::invalid(format!("invalid params: {}", msg.into()))
}

impl Cron {
    pub fn new(h: Handles) -> Cron {
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        Cron {
            h,
            jobs: Mutex::default(),
            writes: Mutex::default(),
            wake_tx,
            wake_rx,
            stop: CancelToken::new(),
            started: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
            owner: Owner::current(),
            published: Mutex::default(),
            loop_ms: AtomicU64::new(0),
            overdue: Mutex::default(),
            overdue_count: AtomicU64::new(0),
            judged_ms: AtomicU64::new(0),
            logged: Mutex::default(),
            runs_started: AtomicU64::new(0),
            runs_ok: AtomicU64::new(0),
            runs_failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            interrupted: AtomicU64::new(0),
            jobs_count: AtomicU64::new(0),
            running_count: AtomicU64::new(0),
        }
    }

    fn dir(&self) -> PathBuf {
        self.h.state_dir.join("cron")
    }

    fn jobs_dir(&self) -> PathBuf {
        self.dir().join("jobs")
    }

    fn runs_dir(&self) -> PathBuf {
        self.dir().join("runs")
    }

    /// Boot: the scheduler thread loads the jobs and receipts, then runs.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let svc = self.clone();
        let spawned = std::thread::Builder::new()
            .name("cron".into())
            .spawn(move || svc.run_thread());
        if let Err(e) = spawned {
            log::error!("cron: cannot start the scheduler thread: {e}; no job runs");
        }
    }

    /// Drain: nothing new starts (runs under way are still recorded when they end).
    pub fn begin_stop(&self) {
        if self.stop.cancel(CancelReason::Drain) {
            log::info!("cron: draining; no job starts");
        }
        self.wake();
    }

    /// After a config reload: the heartbeat jobs follow the new config.
    pub fn reconfigure(&self) {
        self.wake();
    }

    fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }

    fn draining(&self) -> bool {
        self.stop.is_cancelled() || self.h.lifecycle.phase() >= Phase::Draining
    }

    // ---- loading ---------------------------------------------------------------------------

    fn read_job(&self, file: &std::path::Path) -> Result<Job, Broken> {
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let broken = |name: String, reason: String| Broken {
            id: stem.clone(),
            name,
            reason,
        };
        let bytes =
            std::fs::read(file).map_err(|e| broken(stem.clone(), format!("cannot read: {e}")))?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| broken(stem.clone(), format!("not valid JSON: {e}")))?;
        let name = v["name"].as_str().unwrap_or(&stem).to_string();
        let def = job::from_json(&v).map_err(|e| broken(name.clone(), e))?;
        if def.id != stem {
            return Err(broken(
                name,
                format!("id {:?} does not match the file name", def.id),
            ));
        }
        job::check(def, &self.h.config.get()).map_err(|e| broken(name, e))
    }

    /// Reads every job and its receipts; settles `running` receipts whose owner is gone.
    fn load(&self) {
        let jobs_dir = self.jobs_dir();
        if let Err(e) = crate::state::ensure_dir(&jobs_dir) {
            log::error!("cron: cannot create {}: {e}", jobs_dir.display());
        }
        let mut names: Vec<PathBuf> = std::fs::read_dir(&jobs_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.extension().is_some_and(|x| x == "json")
                            && !p
                                .file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let mut map = BTreeMap::new();
        let (mut broken, mut interrupted) = (0, 0);
        for path in names {
            let job = self.read_job(&path);
            let (id, since) = match &job {
                Ok(j) => (
                    j.def.id.clone(),
                    j.def.schedule_since_ms.max(j.def.created_at_ms) as i64,
                ),
                Err(b) => {
                    broken += 1;
                    log::warn!("cron: job file {} disabled: {}", path.display(), b.reason);
                    (b.id.clone(), 0)
                }
            };
            let mut e = Entry::new(job, since);
            interrupted += self.load_receipts(&id, &mut e);
            map.insert(id, e);
        }
        if !map.is_empty() {
            log::info!(
                "cron: {} job(s) loaded, {broken} broken, {interrupted} run(s) found interrupted",
                map.len()
            );
        }
        *lock(&self.jobs) = map;
    }

    /// A job's newest receipts: the last slot, the last result; a `running` one whose owner is
    /// gone is finished `interrupted`. Returns how many were.
    fn load_receipts(&self, id: &str, e: &mut Entry) -> usize {
        let root = self.runs_dir();
        let files = receipts::files(&root, id);
        let mut n = 0;
        let mut found_slot = false;
        for (i, f) in files.iter().enumerate().rev() {
            let Some(mut r) = receipts::read(&root, id, f) else {
                continue;
            };
            if r.status == "running" && r.owner.is_none_or(|o| !o.alive()) {
                r.status = "interrupted".into();
                r.error = Some("keel stopped during the run (the process that started it is gone); not run again".into());
                r.finished_at_ms = Some(clock::wall_ms());
                if let Err(err) = receipts::write(&root, &r) {
                    log::warn!("cron: cannot settle receipt {id}/{f}: {err}");
                }
                log::warn!(
                    "cron: job {id}: run {} (slot {}) was interrupted by a restart; recorded, not run again",
                    r.run_id,
                    clock::iso8601(r.scheduled_at_ms.max(0) as u64)
                );
                self.interrupted.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            if e.last.is_none() && r.is_final() {
                e.last = Some(r.clone());
            }
            if !found_slot && !r.manual {
                e.last_slot_ms = e.last_slot_ms.max(r.scheduled_at_ms);
                found_slot = true;
            }
            if e.last.is_some() && found_slot && i + 8 < files.len() {
                break;
            }
        }
        n
    }

    /// Boot: decides for every job whose slots passed while keel was down — one catch-up
    /// (spread), or a skip recorded under `cron.skipMissedJobs`.
    fn plan_catch_up(&self) {
        let now = clock::wall_ms() as i64;
        let skip = self.h.config.get().cron.skip_missed;
        let mut jobs = lock(&self.jobs);
        let mut k = 0i64;
        for (id, e) in jobs.iter_mut() {
            let Ok(job) = e.job.clone() else { continue };
            if !job.def.enabled {
                continue;
            }
            let missed = match decide(&job.schedule, e.last_slot_ms, now, true, skip) {
                Decision::Wait(_) => continue,
                Decision::Skip { slot, missed } => {
                    let reason = format!(
                        "missed: {missed} slot(s) passed while keel was down; skipped \
                         (cron.skipMissedJobs)"
                    );
                    self.record_skip(id, &job, e, slot, &reason);
                    continue;
                }
                Decision::Run { missed, .. } => missed,
            };
            e.catch_up_at_ms = Some(now + (k * CATCH_UP_STEP_MS).min(CATCH_UP_SPREAD_MS));
            k += 1;
            log::info!(
                "cron: job {id}: {missed} slot(s) missed while keel was down; one catch-up run"
            );
        }
    }

    fn record_skip(&self, id: &str, job: &Job, e: &mut Entry, slot: i64, reason: &str) {
        let now = clock::wall_ms();
        let run_id = clock::Rng::from_os().uuid();
        let r = Receipt {
            run_id: run_id.clone(),
            job_id: id.to_string(),
            job_name: job.def.name.clone(),
            status: "skipped".into(),
            reason: reason.to_string(),
            scheduled_at_ms: slot,
            manual: false,
            started_at_ms: None,
            finished_at_ms: Some(now),
            owner: None,
            session_key: None,
            agent_run_id: None,
            error: None,
            summary: None,
            delivered: None,
            file: receipts::file_name(now, &run_id),
        };
        if let Err(err) = receipts::write(&self.runs_dir(), &r) {
            log::warn!("cron: job {id}: cannot write a receipt: {err}");
        }
        log::info!("cron: job {id}: {reason}");
        self.skipped.fetch_add(1, Ordering::Relaxed);
        e.last_slot_ms = e.last_slot_ms.max(slot);
        e.last = Some(r);
    }

    // ---- the scheduler thread --------------------------------------------------------------

    fn run_thread(self: Arc<Self>) {
        self.load();
        self.converge_heartbeats();
        self.plan_catch_up();
        self.loaded.store(true, Ordering::Release);
        let mut hb_config = self.h.config.get();
        loop {
            let cfg = self.h.config.get();
            if !Arc::ptr_eq(&cfg, &hb_config) {
                hb_config = cfg.clone();
                self.converge_heartbeats();
            }
            let now = clock::wall_ms() as i64;
            self.reap(now);
            if !self.draining() && cfg.cron.enabled {
                self.start_due(now);
            }
            let next = self.publish(cfg.cron.enabled);
            self.loop_ms.store(clock::wall_ms(), Ordering::Relaxed);
            let running = self.running_count.load(Ordering::Relaxed) > 0;
            let now = clock::wall_ms() as i64;
            let mut wait = Duration::from_secs(1);
            if let Some(n) = next {
                wait = wait.min(Duration::from_millis((n - now).clamp(5, 1000) as u64));
            }
            if running {
                wait = wait.min(Duration::from_millis(100));
            }
            let _ = self.wake_rx.recv_timeout(wait);
        }
    }

    /// Starts every due job that is not running.
    fn start_due(&self, now: i64) {
        let mut jobs = lock(&self.jobs);
        let ids: Vec<String> = jobs
            .iter()
            .filter(|(_, e)| e.running.is_none() && e.next_due_ms().is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if self.draining() {
                break;
            }
            let Some(e) = jobs.get_mut(&id) else { continue };
            let Ok(job) = e.job.clone() else { continue };
            let Decision::Run { slot, missed } =
                decide(&job.schedule, e.last_slot_ms, now, false, false)
            else {
                continue;
            };
            let reason = if e.catch_up_at_ms.is_some() {
                format!("catch-up: {missed} slot(s) missed while keel was down; run once")
            } else if missed > 1 {
                format!(
                    "catch-up: {missed} slot(s) passed without a run (a long run, a stall or a clock step); run once"
                )
            } else {
                "scheduled".to_string()
            };
            e.catch_up_at_ms = None;
            let _ = self.start_run(e, &job, slot, &reason, false);
        }
    }

    /// Writes the `running` receipt, then starts the run. Called with the jobs' lock held.
    fn start_run(
        &self,
        e: &mut Entry,
        job: &Job,
        slot: i64,
        reason: &str,
        manual: bool,
    ) -> Result<String, RpcError> {
        let now = clock::wall_ms();
        let run_id = clock::Rng::from_os().uuid();
        let session = job.session(&run_id);
        let mut r = Receipt {
            run_id: run_id.clone(),
            job_id: job.def.id.clone(),
            job_name: job.def.name.clone(),
            status: "running".into(),
            reason: reason.to_string(),
            scheduled_at_ms: slot,
            manual,
            started_at_ms: Some(now),
            finished_at_ms: None,
            owner: Some(self.owner),
            session_key: Some(session.key.clone()),
            agent_run_id: None,
            error: None,
            summary: None,
            delivered: None,
            file: receipts::file_name(now, &run_id),
        };
        let root = self.runs_dir();
        if let Err(err) = receipts::write(&root, &r) {
            // Nothing runs without its receipt: tried again in a while.
            log::error!(
                "cron: job {}: cannot write the run's receipt ({err}); not started",
                job.def.id
            );
            e.retry_at_ms = Some(now as i64 + 5_000);
            return Err(RpcError::new(
                Code::Internal,
                format!("cannot write the run's receipt: {err}"),
            ));
        }
        if self.draining() {
            // The drain began while the receipt was written: nothing starts.
            let _ = std::fs::remove_file(receipts::job_dir(&root, &job.def.id).join(&r.file));
            return Err(RpcError::new(
                Code::Draining,
                "keel is draining: no job starts",
            ));
        }
        let idem = if manual {
            format!("cron:{}:manual:{run_id}", job.def.id)
        } else {
            format!("cron:{}:{slot}", job.def.id)
        };
        let mut request = Request::top(
            job.message.clone(),
            session,
            job.origin.clone().unwrap_or_default(),
        );
        request.deliver = job.deliver;
        match runs::start(&self.h.runs, &idem, request, ReplyTo::Internal, None) {
            Ok((run, true)) => {
                r.agent_run_id = Some(run.id.clone());
                e.retry_at_ms = None;
                if !manual {
                    e.last_slot_ms = e.last_slot_ms.max(slot);
                }
                e.running = Some(Running {
                    receipt: r,
                    deadline_ms: now + job.timeout.as_millis() as u64,
                    run,
                    timed_out: false,
                });
                self.runs_started.fetch_add(1, Ordering::Relaxed);
                // The receipt is the record; the log only says what was unusual.
                if reason == "scheduled" {
                    log::debug!("cron: job {} run {run_id} started", job.def.id);
                } else {
                    log::info!("cron: job {} run {run_id} started ({reason})", job.def.id);
                }
                Ok(run_id)
            }
            Ok((run, false)) => {
                // This slot's run was started before (its key is remembered): not again.
                r.agent_run_id = Some(run.id.clone());
                self.finish_receipt(
                    e,
                    r,
                    "skipped",
                    Some("this slot already ran (its run's key is remembered)".into()),
                    None,
                );
                Err(RpcError::invalid("this slot already ran"))
            }
            Err(err) if err.code == Code::Unavailable || err.code == Code::Draining => {
                // Nothing started: the receipt goes, and the slot is tried again.
                let _ = std::fs::remove_file(receipts::job_dir(&root, &job.def.id).join(&r.file));
                e.retry_at_ms =
                    Some(now as i64 + err.retry_after_ms.unwrap_or(1000).clamp(200, 10_000) as i64);
                Err(err)
            }
            Err(err) => {
                if !manual {
                    e.last_slot_ms = e.last_slot_ms.max(slot);
                }
                self.finish_receipt(e, r, "error", Some(err.message.clone()), None);
                Err(err)
            }
        }
    }

    fn finish_receipt(
        &self,
        e: &mut Entry,
        mut r: Receipt,
        status: &str,
        error: Option<String>,
        summary: Option<String>,
    ) {
        r.status = status.to_string();
        r.error = error;
        r.summary = summary;
        r.finished_at_ms = Some(clock::wall_ms());
        match status {
            "ok" => self.runs_ok.fetch_add(1, Ordering::Relaxed),
            "skipped" => self.skipped.fetch_add(1, Ordering::Relaxed),
            "interrupted" => self.interrupted.fetch_add(1, Ordering::Relaxed),
            _ => self.runs_failed.fetch_add(1, Ordering::Relaxed),
        };
        let root = self.runs_dir();
        if let Err(err) = receipts::write(&root, &r) {
            log::warn!(
                "cron: job {}: cannot finish receipt {}: {err}",
                r.job_id,
                r.run_id
            );
        }
        receipts::prune(&root, &r.job_id);
        e.last = Some(r);
    }

    /// Finishes the receipts of ended runs; cancels runs past their job's timeout.
    fn reap(&self, now: i64) {
        let mut jobs = lock(&self.jobs);
        let mut delete = Vec::new();
        for (id, e) in jobs.iter_mut() {
            let Some(running) = e.running.as_mut() else {
                continue;
            };
            let status = running.run.status();
            if status == Status::Running {
                if now as u64 >= running.deadline_ms && !running.timed_out {
                    running.timed_out = true;
                    log::warn!(
                        "cron: job {id}: run {} passed its timeout; cancelled",
                        running.receipt.run_id
                    );
                    self.h.runs.abort(&running.run);
                }
                continue;
            }
            let Some(running) = e.running.take() else {
                continue;
            };
            let result = running.run.result();
            let text = result["summary"].as_str().map(str::to_string);
            let error = result["error"].as_str().map(str::to_string);
            let (st, error) = match status {
                Status::Ok => ("ok", None),
                Status::Timeout => (
                    "timeout",
                    error.or(Some("the run passed its timeout".into())),
                ),
                Status::Aborted if running.timed_out => (
                    "timeout",
                    Some("the run passed the job's timeout and was cancelled".into()),
                ),
                Status::Aborted if self.draining() => (
                    "interrupted",
                    Some("keel was draining; the run was cancelled".into()),
                ),
                Status::Aborted => ("interrupted", error.or(Some("the run was aborted".into()))),
                _ => ("error", error),
            };
            let mut r = running.receipt;
            if running.run.request.deliver {
                r.delivered = Some(st == "ok");
            }
            if st == "ok" {
                log::debug!("cron: job {id} run {} finished ok", r.run_id);
            } else {
                log::warn!(
                    "cron: job {id} run {} finished {st}: {}",
                    r.run_id,
                    error.as_deref().unwrap_or("")
                );
            }
            self.finish_receipt(e, r, st, error, text);
            if let Ok(job) = &e.job
                && job.def.delete_after_run
                && job.def.schedule.is_at()
                && st == "ok"
            {
                delete.push(id.clone());
            }
        }
        drop(jobs);
        for id in delete {
            if let Err(e) = self.remove_job(&id, true) {
                log::warn!("cron: job {id}: cannot delete after its run: {}", e.message);
            }
        }
    }

    /// Publishes what the watchdog judges; returns the nearest due time.
    fn publish(&self, enabled: bool) -> Option<i64> {
        let jobs = lock(&self.jobs);
        let mut dues = Vec::new();
        let mut nearest: Option<i64> = None;
        let mut running = 0;
        for (id, e) in jobs.iter() {
            if e.running.is_some() {
                running += 1;
            }
            let Ok(job) = &e.job else { continue };
            let Some(due) = e.next_due_ms() else { continue };
            nearest = Some(nearest.map_or(due, |n: i64| n.min(due)));
            let due = e.judged_due_ms().unwrap_or(due);
            let period = job
                .schedule
                .period_ms(e.last_slot_ms)
                .map_or(MAX_GRACE_MS, |p| p as i64);
            dues.push(Due {
                id: id.clone(),
                name: job.def.name.clone(),
                due_ms: due,
                grace_ms: period.min(MAX_GRACE_MS),
                running_until_ms: e
                    .running
                    .as_ref()
                    .map(|r| r.deadline_ms as i64 + MAX_GRACE_MS.min(60_000)),
            });
        }
        self.jobs_count.store(jobs.len() as u64, Ordering::Relaxed);
        self.running_count.store(running, Ordering::Relaxed);
        drop(jobs);
        *lock(&self.published) = Arc::new(Published {
            dues: if enabled { dues } else { Vec::new() },
        });
        nearest
    }

    // ---- heartbeats --------------------------------------------------------------------------

    /// Makes the heartbeat jobs match `agents.*.heartbeat.every`: one system-owned job per
    /// agent with a heartbeat, none for the others.
    fn converge_heartbeats(&self) {
        let cfg = self.h.config.get();
        let want: BTreeMap<String, (crate::ids::AgentId, Duration)> = cfg
            .cron
            .heartbeats
            .iter()
            .map(|(a, d)| (format!("heartbeat-{a}"), (a.clone(), *d)))
            .collect();
        let existing: Vec<(String, Option<u64>)> = lock(&self.jobs)
            .iter()
            .filter_map(|(id, e)| {
                let j = e.job.as_ref().ok()?;
                j.def
                    .declaration_key
                    .as_deref()?
                    .starts_with(HEARTBEAT_PREFIX)
                    .then(|| {
                        let every = j.def.schedule.every_ms;
                        (id.clone(), every)
                    })
            })
            .collect();
        for (id, every) in &existing {
            match want.get(id) {
                None => {
                    log::info!("cron: heartbeat job {id} removed (no heartbeat configured)");
                    let _ = self.remove_job(id, true);
                }
                Some((_, d)) if *every == Some(d.as_millis() as u64) => {}
                Some(_) => {} // rewritten below
            }
        }
        let now = clock::wall_ms();
        for (id, (agent, every)) in want {
            let same = existing
                .iter()
                .any(|(e, ev)| *e == id && *ev == Some(every.as_millis() as u64));
            if same {
                continue;
            }
            let def = JobDef {
                id: id.clone(),
                name: format!("heartbeat-{agent}"),
                description: Some(format!("Heartbeat ({agent})")),
                agent_id: Some(agent.to_string()),
                enabled: true,
                created_at_ms: now,
                updated_at_ms: now,
                schedule: ScheduleDef::every(every.as_millis() as u64, now as i64),
                session_target: "main".into(),
                wake_mode: "now".into(),
                payload: PayloadDef {
                    kind: "heartbeat".into(),
                    ..PayloadDef::default()
                },
                delivery: None,
                delete_after_run: false,
                declaration_key: Some(format!("{HEARTBEAT_PREFIX}{agent}")),
                schedule_since_ms: now,
            };
            match job::check(def, &cfg).and_then(|j| self.save(j, true).map_err(|e| e.message)) {
                Ok(_) => log::info!("cron: heartbeat job {id} every {} s", every.as_secs()),
                Err(e) => log::warn!("cron: heartbeat job {id} cannot be set up: {e}"),
            }
        }
    }

    // ---- job files and methods -----------------------------------------------------------------

    /// Methods run on workers: a call that comes while the jobs are still being read at boot
    /// waits for them a little, then is refused (retryable).
    fn ready(&self) -> Result<(), RpcError> {
        let until = Instant::now() + Duration::from_secs(5);
        while !self.loaded.load(Ordering::Acquire) {
            if Instant::now() >= until {
                return Err(RpcError::unavailable(
                    "keel is starting: the scheduler's jobs are not loaded yet; retry",
                    500,
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Writes a job's file and puts it in memory (its receipts kept).
    fn save(&self, job: Job, system: bool) -> Result<Value, RpcError> {
        let _w = lock(&self.writes);
        let id = job.def.id.clone();
        if !system
            && lock(&self.jobs)
                .get(&id)
                .is_some_and(|e| e.job.as_ref().is_ok_and(Job::is_system))
        {
            return Err(err(
                "heartbeat jobs follow agents.*.heartbeat in the config; edit that instead",
            ));
        }
        let dir = self.jobs_dir();
        let bytes = serde_json::to_vec_pretty(&job.def)
            .map_err(|e| RpcError::new(Code::Internal, e.to_string()))?;
        crate::state::ensure_dir(&dir)
            .and_then(|_| crate::state::write_atomic(&dir.join(format!("{id}.json")), &bytes))
            .map_err(|e| {
                RpcError::new(Code::Internal, format!("cannot write the job's file: {e}"))
            })?;
        let since = job.def.schedule_since_ms.max(job.def.created_at_ms) as i64;
        let mut jobs = lock(&self.jobs);
        match jobs.get_mut(&id) {
            Some(e) => {
                e.last_slot_ms = e.last_slot_ms.max(since);
                e.job = Ok(job);
                e.catch_up_at_ms = None;
            }
            None => {
                jobs.insert(id.clone(), Entry::new(Ok(job), since));
            }
        }
        let v = jobs
            .get(&id)
            .map(|e| job_json(&id, e, false))
            .unwrap_or(Value::Null);
        drop(jobs);
        self.wake();
        Ok(v)
    }

    fn remove_job(&self, id: &str, system: bool) -> Result<(), RpcError> {
        let _w = lock(&self.writes);
        {
            let jobs = lock(&self.jobs);
            match jobs.get(id) {
                None => return Err(RpcError::new(Code::NotFound, format!("no cron job {id:?}"))),
                Some(e) if !system && e.job.as_ref().is_ok_and(Job::is_system) => {
                    return Err(err(
                        "heartbeat jobs follow agents.*.heartbeat in the config; edit that instead",
                    ));
                }
                _ => {}
            }
        }
        let path = self.jobs_dir().join(format!("{id}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RpcError::new(
                    Code::Internal,
                    format!("cannot remove the job's file: {e}"),
                ));
            }
        }
        if let Ok(d) = std::fs::File::open(self.jobs_dir()) {
            let _ = d.sync_all();
        }
        let mut jobs = lock(&self.jobs);
        // A run under way is left to end; its receipt stays with the job's history.
        jobs.remove(id);
        Ok(())
    }

    /// `cron.add`: a new job from OpenClaw's create params.
    pub fn add(&self, p: &Value) -> Result<Value, RpcError> {
        self.ready()?;
        let now = clock::wall_ms();
        let mut v = p.clone();
        let Some(o) = v.as_object_mut() else {
            return Err(err("expected an object"));
        };
        if o.get("payload")
            .and_then(|p| p.get("kind"))
            .and_then(Value::as_str)
            == Some("heartbeat")
            || o.contains_key("declarationKey")
        {
            return Err(err("payload.kind: heartbeat jobs are system-owned"));
        }
        for k in [
            "id",
            "createdAtMs",
            "updatedAtMs",
            "scheduleSinceMs",
            "state",
        ] {
            o.remove(k);
        }
        o.retain(|_, v| !v.is_null());
        let id = clock::Rng::from_os().uuid();
        o.insert("id".into(), json!(id));
        o.insert("createdAtMs".into(), json!(now));
        o.insert("updatedAtMs".into(), json!(now));
        o.insert("scheduleSinceMs".into(), json!(now));
        if let Some(s) = o.get_mut("schedule").and_then(Value::as_object_mut)
            && s.get("kind").and_then(Value::as_str) == Some("at")
            && !s.contains_key("at")
            && let Some(ms) = s.remove("atMs")
        {
            s.insert("at".into(), ms);
        }
        let is_at = o
            .get("schedule")
            .and_then(|s| s.get("kind"))
            .and_then(Value::as_str)
            == Some("at");
        if is_at && !o.contains_key("deleteAfterRun") {
            o.insert("deleteAfterRun".into(), json!(true));
        }
        let def = job::from_json(&v).map_err(err)?;
        let j = job::check(def, &self.h.config.get()).map_err(err)?;
        if j.def.schedule.is_at() && j.schedule.next_after(now as i64 - 1).is_none() {
            return Err(err("schedule.at: that time has passed"));
        }
        log::info!("cron: job {} ({}) added", j.def.id, j.def.name);
        self.save(j, false)
    }

    /// `cron.update {id, patch}`.
    pub fn update(&self, id: &str, patch: &Value) -> Result<Value, RpcError> {
        self.ready()?;
        if !patch.is_object() {
            return Err(err("patch must be an object"));
        }
        let current = {
            let jobs = lock(&self.jobs);
            let e = jobs
                .get(id)
                .ok_or_else(|| RpcError::new(Code::NotFound, format!("no cron job {id:?}")))?;
            match &e.job {
                Ok(j) => serde_json::to_value(&j.def).unwrap_or(Value::Null),
                // A broken file is replaced by what the patch makes of nothing.
                Err(_) => json!({"id": id}),
            }
        };
        let now = clock::wall_ms();
        let mut v = current.clone();
        let mut patch = patch.clone();
        if let Some(o) = patch.as_object_mut() {
            for k in [
                "id",
                "createdAtMs",
                "updatedAtMs",
                "scheduleSinceMs",
                "declarationKey",
                "state",
            ] {
                o.remove(k);
            }
        }
        job::merge_patch(&mut v, &patch);
        v["updatedAtMs"] = json!(now);
        if v.get("createdAtMs").is_none_or(Value::is_null) {
            v["createdAtMs"] = json!(now);
        }
        if v.get("schedule") != current.get("schedule")
            || v.get("enabled") != current.get("enabled")
        {
            // New slots count from now: an edit never triggers a catch-up of old ones.
            v["scheduleSinceMs"] = json!(now);
        }
        let def = job::from_json(&v).map_err(err)?;
        let j = job::check(def, &self.h.config.get()).map_err(err)?;
        log::info!("cron: job {id} updated");
        self.save(j, false)
    }

    /// `cron.remove {id}`.
    pub fn remove(&self, id: &str) -> Result<Value, RpcError> {
        self.ready()?;
        self.remove_job(id, false)?;
        log::info!("cron: job {id} removed");
        Ok(json!({"ok": true, "removed": true, "id": id}))
    }

    /// `cron.run {id, mode?}`: runs the job now (`mode: "due"`: only if it is due). A manual run
    /// leaves the job's schedule as it was.
    pub fn run_now(&self, id: &str, due_only: bool) -> Result<Value, RpcError> {
        self.ready()?;
        if self.draining() {
            return Err(RpcError::new(
                Code::Draining,
                "keel is draining: no job starts",
            ));
        }
        let mut jobs = lock(&self.jobs);
        let e = jobs
            .get_mut(id)
            .ok_or_else(|| RpcError::new(Code::NotFound, format!("no cron job {id:?}")))?;
        let job = match &e.job {
            Ok(j) => j.clone(),
            Err(b) => return Err(err(format!("job {id} is disabled: {}", b.reason))),
        };
        if e.running.is_some() {
            return Ok(json!({"ok": true, "ran": false, "reason": "already-running"}));
        }
        let now = clock::wall_ms() as i64;
        if due_only && e.next_due_ms().is_none_or(|d| d > now) {
            return Ok(json!({"ok": true, "ran": false, "reason": "not-due"}));
        }
        let run_id = self.start_run(e, &job, now, "manual", true)?;
        drop(jobs);
        self.wake();
        Ok(json!({"ok": true, "ran": true, "runId": run_id}))
    }

    /// `cron.get {id}`.
    pub fn get(&self, id: &str) -> Result<Value, RpcError> {
        self.ready()?;
        let jobs = lock(&self.jobs);
        let e = jobs
            .get(id)
            .ok_or_else(|| RpcError::new(Code::NotFound, format!("no cron job {id:?}")))?;
        Ok(job_json(id, e, false))
    }

    /// `cron.list`.
    pub fn list(&self, q: &ListQuery) -> Result<Value, RpcError> {
        self.ready()?;
        let jobs = lock(&self.jobs);
        let mut rows: Vec<(Value, i64, String, u64)> = jobs
            .iter()
            .filter(|(_, e)| {
                let enabled = e.job.as_ref().is_ok_and(|j| j.def.enabled);
                match q.enabled.as_deref() {
                    Some("enabled") => enabled,
                    Some("disabled") => !enabled,
                    Some("all") => true,
                    _ => enabled || q.include_disabled,
                }
            })
            .filter(|(_, e)| match (&q.agent, &e.job) {
                (Some(a), Ok(j)) => j.agent == *a,
                _ => true,
            })
            .filter(|(_, e)| {
                q.query.as_deref().is_none_or(|s| {
                    let name = match &e.job {
                        Ok(j) => &j.def.name,
                        Err(b) => &b.name,
                    };
                    name.to_lowercase().contains(&s.to_lowercase())
                })
            })
            .map(|(id, e)| {
                let name = match &e.job {
                    Ok(j) => j.def.name.clone(),
                    Err(b) => b.name.clone(),
                };
                let updated = e.job.as_ref().map_or(0, |j| j.def.updated_at_ms);
                (
                    job_json(id, e, q.compact),
                    e.next_due_ms().unwrap_or(i64::MAX),
                    name,
                    updated,
                )
            })
            .collect();
        drop(jobs);
        match q.sort_by.as_deref() {
            Some("name") => rows.sort_by(|a, b| a.2.cmp(&b.2)),
            Some("updatedAtMs") => rows.sort_by_key(|r| r.3),
            _ => rows.sort_by_key(|r| r.1),
        }
        if q.sort_dir.as_deref() == Some("desc") {
            rows.reverse();
        }
        let total = rows.len();
        let page: Vec<Value> = rows
            .into_iter()
            .skip(q.offset)
            .take(q.limit)
            .map(|r| r.0)
            .collect();
        let end = q.offset + page.len();
        let revision = {
            let mut h = 0u64;
            for j in &page {
                for b in j.to_string().bytes() {
                    h = h.wrapping_mul(0x100000001b3).wrapping_add(u64::from(b));
                }
            }
            format!("keel:{h:016x}")
        };
        Ok(json!({
            "jobs": page,
            "snapshotRevision": revision,
            "total": total,
            "offset": q.offset,
            "limit": q.limit,
            "hasMore": end < total,
            "nextOffset": if end < total { Some(end) } else { None },
        }))
    }

    /// `cron.status`.
    pub fn status(&self) -> Result<Value, RpcError> {
        self.ready()?;
        let cfg = self.h.config.get();
        let jobs = lock(&self.jobs);
        let enabled_jobs = jobs
            .values()
            .filter(|e| e.job.as_ref().is_ok_and(|j| j.def.enabled))
            .count();
        let broken = jobs.values().filter(|e| e.job.is_err()).count();
        let next = jobs.values().filter_map(Entry::next_due_ms).min();
        let running = jobs.values().filter(|e| e.running.is_some()).count();
        drop(jobs);
        Ok(json!({
            "enabled": cfg.cron.enabled,
            "triggersEnabled": false,
            "storePath": self.jobs_dir(),
            "storage": "files",
            "jobs": self.jobs_count.load(Ordering::Relaxed),
            "enabledJobs": enabled_jobs,
            "brokenJobs": broken,
            "running": running,
            "nextWakeAtMs": next,
            "skipMissedJobs": cfg.cron.skip_missed,
            "overdue": self.overdue_notes(),
        }))
    }

    /// `cron.runs`: receipts, newest first (or oldest with `sortDir: "asc"`).
    pub fn runs(&self, q: &RunsQuery) -> Result<Value, RpcError> {
        self.ready()?;
        let (ids, next): (Vec<String>, BTreeMap<String, Option<i64>>) = {
            let jobs = lock(&self.jobs);
            let ids: Vec<String> = match &q.id {
                Some(id) if crate::ids::SafeName::new(id).is_err() => {
                    return Err(RpcError::new(Code::NotFound, format!("no cron job {id:?}")));
                }
                Some(id) => {
                    if !jobs.contains_key(id) && receipts::files(&self.runs_dir(), id).is_empty() {
                        return Err(RpcError::new(Code::NotFound, format!("no cron job {id:?}")));
                    }
                    vec![id.clone()]
                }
                None => jobs
                    .iter()
                    .filter(|(_, e)| match (&q.agent, &e.job) {
                        (Some(a), Ok(j)) => j.agent == *a,
                        (Some(_), Err(_)) => false,
                        _ => true,
                    })
                    .map(|(id, _)| id.clone())
                    .collect(),
            };
            let next = ids
                .iter()
                .map(|id| (id.clone(), jobs.get(id).and_then(Entry::next_due_ms)))
                .collect();
            (ids, next)
        };
        let root = self.runs_dir();
        let mut all: Vec<(String, String)> = Vec::new();
        for id in &ids {
            if crate::ids::SafeName::new(id).is_err() {
                continue;
            }
            for f in receipts::files(&root, id) {
                all.push((f, id.clone()));
            }
        }
        all.sort();
        if q.sort_dir.as_deref() != Some("asc") {
            all.reverse();
        }
        let mut entries = Vec::new();
        for (f, id) in &all {
            let Some(r) = receipts::read(&root, id, f) else {
                continue;
            };
            let e = r.entry(next.get(id).copied().flatten());
            if !q.statuses.is_empty()
                && !q
                    .statuses
                    .iter()
                    .any(|s| e["status"] == s.as_str() || e["outcome"] == s.as_str())
            {
                continue;
            }
            if let Some(s) = &q.query
                && !r.job_name.to_lowercase().contains(&s.to_lowercase())
                && !r
                    .summary
                    .as_deref()
                    .unwrap_or("")
                    .to_lowercase()
                    .contains(&s.to_lowercase())
            {
                continue;
            }
            entries.push(e);
        }
        let total = entries.len();
        let page: Vec<Value> = entries.into_iter().skip(q.offset).take(q.limit).collect();
        let end = q.offset + page.len();
        Ok(json!({
            "entries": page,
            "total": total,
            "offset": q.offset,
            "limit": q.limit,
            "hasMore": end < total,
            "nextOffset": if end < total { Some(end) } else { None },
        }))
    }

    // ---- views ---------------------------------------------------------------------------------

    /// Late jobs, as the watchdog last judged them (for `/readyz` and `status`).
    pub fn overdue_notes(&self) -> Vec<String> {
        let notes = lock(&self.overdue).clone();
        notes.as_ref().clone()
    }

    pub fn status_json(&self) -> Value {
        json!({
            "jobs": self.jobs_count.load(Ordering::Relaxed),
            "running": self.running_count.load(Ordering::Relaxed),
            "overdue": self.overdue_notes(),
            "runsStarted": self.runs_started.load(Ordering::Relaxed),
            "runsOk": self.runs_ok.load(Ordering::Relaxed),
            "runsFailed": self.runs_failed.load(Ordering::Relaxed),
            "skipped": self.skipped.load(Ordering::Relaxed),
            "interrupted": self.interrupted.load(Ordering::Relaxed),
        })
    }

    pub fn render_metrics(&self, out: &mut String) {
        family(
            out,
            "keel_cron_jobs",
            "gauge",
            "Scheduled jobs (enabled, disabled and broken).",
            self.jobs_count.load(Ordering::Relaxed),
        );
        family(
            out,
            "keel_cron_running",
            "gauge",
            "Scheduled runs under way.",
            self.running_count.load(Ordering::Relaxed),
        );
        family(
            out,
            "keel_cron_overdue_jobs",
            "gauge",
            "Enabled jobs more than a period (at most 5 min) past their due time.",
            self.overdue_count.load(Ordering::Relaxed),
        );
        let name = "keel_cron_runs_total";
        let _ = writeln!(out, "# HELP {name} Scheduled run decisions, by outcome.");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (outcome, n) in [
            ("started", &self.runs_started),
            ("ok", &self.runs_ok),
            ("failed", &self.runs_failed),
            ("skipped", &self.skipped),
            ("interrupted", &self.interrupted),
        ] {
            let _ = writeln!(
                out,
                "{name}{{outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }

    /// Compares every enabled job's due time with the clock (the watchdog's tick, once a
    /// second): no lock but the published snapshot's pointer copy and the watchdog's own.
    fn judge(&self, now_ms: i64) {
        let p = lock(&self.published).clone();
        // (job id, note); the id is what "logged once" is kept by.
        let mut late: Vec<(String, String)> = Vec::new();
        if !self.draining() {
            for d in &p.dues {
                let note = match d.running_until_ms {
                    Some(until) if now_ms > until => Some(format!(
                        "cron job {:?} ({}) has been running {} s past its timeout",
                        d.name,
                        d.id,
                        (now_ms - until) / 1000
                    )),
                    Some(_) => None,
                    None if now_ms - d.due_ms > d.grace_ms => Some(format!(
                        "cron job {:?} ({}) is {} s overdue (due {})",
                        d.name,
                        d.id,
                        (now_ms - d.due_ms) / 1000,
                        clock::iso8601(d.due_ms.max(0) as u64)
                    )),
                    None => None,
                };
                if let Some(n) = note {
                    late.push((d.id.clone(), n));
                }
            }
            let loop_ms = self.loop_ms.load(Ordering::Relaxed);
            if self.started.load(Ordering::Relaxed)
                && loop_ms > 0
                && (now_ms as u64).saturating_sub(loop_ms) > STALL_MS
            {
                late.push((
                    String::new(),
                    format!(
                        "the cron scheduler thread has not run for {} s",
                        (now_ms as u64 - loop_ms) / 1000
                    ),
                ));
            }
        }
        {
            let mut logged = lock(&self.logged);
            for (id, n) in &late {
                if logged.insert(id.clone()) {
                    log::warn!("cron: {n}");
                }
            }
            logged.retain(|k| late.iter().any(|(id, _)| id == k));
        }
        self.overdue_count
            .store(late.len() as u64, Ordering::Relaxed);
        *lock(&self.overdue) = Arc::new(late.into_iter().map(|(_, n)| n).collect());
    }
}

impl Periodic for Arc<Cron> {
    fn name(&self) -> &'static str {
        "cron"
    }

    fn tick(&self, now: Instant, _level: Level) {
        let mono = clock::mono_ms(now);
        let last = self.judged_ms.load(Ordering::Relaxed);
        if last != 0 && mono.saturating_sub(last) < 1000 {
            return;
        }
        self.judged_ms.store(mono.max(1), Ordering::Relaxed);
        self.judge(clock::wall_ms() as i64);
    }
}

/// `cron.list` filters.
#[derive(Debug, Default)]
pub struct ListQuery {
    pub agent: Option<crate::ids::AgentId>,
    pub include_disabled: bool,
    /// `all`, `enabled` or `disabled`.
    pub enabled: Option<String>,
    pub query: Option<String>,
    pub sort_by: Option<String>,
    pub sort_dir: Option<String>,
    pub limit: usize,
    pub offset: usize,
    pub compact: bool,
}

/// `cron.runs` filters.
#[derive(Debug, Default)]
pub struct RunsQuery {
    pub id: Option<String>,
    pub agent: Option<crate::ids::AgentId>,
    pub statuses: Vec<String>,
    pub query: Option<String>,
    pub sort_dir: Option<String>,
    pub limit: usize,
    pub offset: usize,
}

/// A job as OpenClaw answers it: its definition, `state`, and the summary fields its list shows.
fn job_json(id: &str, e: &Entry, compact: bool) -> Value {
    let next = e.next_due_ms();
    let iso = |ms: Option<i64>| ms.map(|m| clock::iso8601(m.max(0) as u64));
    let last = e.last.as_ref();
    let last_ms = last
        .and_then(|r| r.started_at_ms.or(r.finished_at_ms))
        .map(|m| m as i64);
    let last_status = last.map(|r| match r.status.as_str() {
        "ok" => "ok",
        "skipped" => "skipped",
        _ => "error",
    });
    let last_error = last.and_then(|r| r.error.clone());
    let mut v = match &e.job {
        Ok(j) => {
            let mut v = if compact {
                json!({"id": id, "name": j.def.name, "agentId": j.agent.as_str(), "enabled": j.def.enabled,
                       "updatedAtMs": j.def.updated_at_ms, "schedule": j.def.schedule})
            } else {
                let mut v = serde_json::to_value(&j.def).unwrap_or(Value::Null);
                v["agentId"] = json!(j.agent.as_str());
                v
            };
            v["scheduleKind"] = json!(j.def.schedule.kind());
            v["effectiveAgentId"] = json!(j.agent.as_str());
            v["displayName"] = json!(
                j.def
                    .description
                    .as_deref()
                    .filter(|_| j.is_system())
                    .unwrap_or(&j.def.name)
            );
            if let Some(k) = &j.def.declaration_key {
                v["declarationKey"] = json!(k);
                v["systemOwned"] = json!(true);
            }
            v
        }
        Err(b) => json!({
            "id": id, "name": b.name, "displayName": b.name, "enabled": false,
            "broken": true, "disabledReason": b.reason, "scheduleKind": null,
            "effectiveAgentId": null,
        }),
    };
    v["nextRunAt"] = json!(iso(next));
    v["nextRunAtMs"] = json!(next);
    v["lastRunAt"] = json!(iso(last_ms));
    v["lastRunAtMs"] = json!(last_ms);
    v["lastRunStatus"] = json!(last_status);
    v["lastRunError"] = json!(
        last_error
            .clone()
            .or_else(|| e.job.as_ref().err().map(|b| b.reason.clone()))
    );
    v["state"] = json!({
        "nextRunAtMs": next,
        "lastRunAtMs": last_ms,
        "lastRunStatus": last_status,
        "lastStatus": last_status,
        "lastOutcome": last.map(|r| r.status.clone()),
        "lastError": last_error.or_else(|| e.job.as_ref().err().map(|b| b.reason.clone())),
        "lastDurationMs": last.and_then(|r| Some(r.finished_at_ms?.saturating_sub(r.started_at_ms?))),
        "runningAtMs": e.running.as_ref().and_then(|r| r.receipt.started_at_ms),
        "runningRunId": e.running.as_ref().map(|r| r.receipt.run_id.clone()),
    });
    v
}
