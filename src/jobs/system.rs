//! The job system: admission, running, cancelling and answering jobs, and the drain's steps
//! that act on jobs. What every service uses to put work on the pools, and what the watchdog
//! uses to cancel it — without reaching anything else.
//!
//! Admission never blocks: a job is refused at once when draining, when its lane is full, or
//! (background work) under critical pressure. Exactly one reply per job ([`JobInfo::claim_reply`]).

use super::{Job, JobCtx, JobInfo, JobSpec, JobTable, Lane, Pools, Work, cancel_error};
use crate::cancel::CancelReason;
use crate::config::live::ConfigCell;
use crate::error::{Code, RpcError};
use crate::jobs::outbox::Outbox;
use crate::metrics::Metrics;
use crate::payload::Outcome;
use crate::phase::{LifecycleCell, Phase};
use crate::pressure::{Level, PressureCell};
use crate::protocol::reply::{Completion, CompletionBody, HttpAnswer, ReplyTo};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub struct JobSystem {
    table: JobTable,
    pub pools: Pools,
    next_id: AtomicU64,
    pub outbox: Arc<Outbox>,
    lifecycle: Arc<LifecycleCell>,
    pressure: Arc<PressureCell>,
    config: Arc<ConfigCell>,
    metrics: Arc<Metrics>,
}

impl JobSystem {
    pub fn new(
        pools: Pools,
        outbox: Arc<Outbox>,
        lifecycle: Arc<LifecycleCell>,
        pressure: Arc<PressureCell>,
        config: Arc<ConfigCell>,
        metrics: Arc<Metrics>,
    ) -> JobSystem {
        JobSystem {
            table: JobTable::default(),
            pools,
            next_id: AtomicU64::new(1),
            outbox,
            lifecycle,
            pressure,
            config,
            metrics,
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<JobInfo>> {
        self.table.get(id)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// All jobs, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<JobInfo>> {
        self.table.snapshot()
    }

    /// Admits a job without ever blocking: refused at once when draining, when the lane is
    /// full, or (background work) under critical pressure.
    pub fn submit(&self, spec: JobSpec, reply: ReplyTo, work: Work) -> Result<u64, RpcError> {
        if self.lifecycle.phase() >= Phase::Draining {
            self.metrics.rejected_draining.inc();
            return Err(RpcError::draining());
        }
        if spec.lane == Lane::Background && self.pressure.level() == Level::Critical {
            self.metrics.rejected_pressure.inc();
            return Err(RpcError::unavailable(
                "background work is shed while the gateway is under critical pressure",
                5_000,
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(JobInfo::new(id, &spec, reply, Instant::now()));
        self.table.insert(info.clone());
        let pool = self.pools.get(spec.pool);
        match pool.try_submit(Job { info, work }) {
            Ok(()) => Ok(id),
            Err(_job) => {
                self.table.remove(id);
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
        self.table.remove(info.id);
        self.outbox.wake();
    }

    /// Sends the job's one reply to the reactor.
    pub fn deliver(&self, info: &JobInfo, outcome: &Outcome) {
        if !info.claim_reply() {
            return;
        }
        match &info.reply {
            ReplyTo::Internal => match outcome {
                // A drain stopping maintenance is the plan, not a failure.
                Err(e) if e.code == Code::Cancelled => {
                    log::debug!("internal job {} ({}) stopped: {e}", info.id, info.kind)
                }
                Err(e) => log::warn!("internal job {} ({}) failed: {e}", info.id, info.kind),
                Ok(_) => {}
            },
            reply => self.outbox.reply(reply, outcome),
        }
    }

    /// Starts the drain; false if one is already under way. Background work is maintenance
    /// whose progress is already saved (index builds): it stops now instead of holding the
    /// drain open. Client work keeps its deadline.
    pub fn begin_drain(&self, now: Instant) -> bool {
        let cfg = self.config.get();
        if !self
            .lifecycle
            .begin_drain(now, cfg.drain_timeout, cfg.drain_grace)
        {
            return false;
        }
        for job in self.table.snapshot() {
            if job.lane == Lane::Background && self.cancel_job(&job, CancelReason::Drain) {
                log::info!("drain: cancelled background job {} ({})", job.id, job.kind);
            }
        }
        self.outbox.wake();
        true
    }

    /// A second signal: skip to the cancel step now (the grace still applies).
    pub fn hurry_drain(&self, now: Instant) {
        self.lifecycle
            .hurry_drain(now, self.config.get().drain_grace);
    }

    /// The cancel step: fire every job's token. Returns the jobs that were still in flight.
    pub fn cancel_all(&self) -> Vec<Arc<JobInfo>> {
        let jobs = self.table.snapshot();
        self.lifecycle.mark_cancelled(jobs.len());
        for j in &jobs {
            self.cancel_job(j, CancelReason::Drain);
        }
        jobs
    }
}

/// A job system for a service's unit tests, with no threads: jobs stay queued (the receivers
/// are kept so the queues stay connected) and replies collect in `outbound`.
#[cfg(test)]
pub struct Detached {
    pub jobs: Arc<JobSystem>,
    pub config: Arc<ConfigCell>,
    pub lifecycle: Arc<LifecycleCell>,
    pub pressure: Arc<PressureCell>,
    pub outbound: crossbeam_channel::Receiver<crate::protocol::reply::Outbound>,
    _receivers: super::PoolReceivers,
    _poll: mio::Poll,
}

#[cfg(test)]
impl Detached {
    pub fn new(config: crate::config::Config) -> Detached {
        let poll = mio::Poll::new().expect("a poll for the waker");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(1)).expect("waker"));
        let (tx, outbound) = crossbeam_channel::unbounded();
        let (pools, receivers) = Pools::new(1, 1, config.queues);
        let config = Arc::new(ConfigCell::new(config));
        let lifecycle = Arc::new(LifecycleCell::default());
        lifecycle.set_phase(Phase::Serving);
        let pressure = Arc::new(PressureCell::new(0));
        let jobs = Arc::new(JobSystem::new(
            pools,
            Arc::new(Outbox::new(tx, waker)),
            lifecycle.clone(),
            pressure.clone(),
            config.clone(),
            Arc::new(Metrics::default()),
        ));
        Detached {
            jobs,
            config,
            lifecycle,
            pressure,
            outbound,
            _receivers: receivers,
            _poll: poll,
        }
    }
}

/// Sends an HTTP job's whole answer (a dashboard file, a channel's webhook) exactly once:
/// claimed against the watchdog's deadline answer, and `fallback` (a 500) if the job ends
/// without one (a panic), so the client is answered and a channel retries.
pub struct Responder {
    info: Arc<JobInfo>,
    jobs: Arc<JobSystem>,
    conn: usize,
    generation: u64,
    fallback: Option<HttpAnswer>,
}

impl Responder {
    /// For the job `ctx` runs, answering connection `conn` (of `generation`). The job's own
    /// reply is deferred: this answer replaces it.
    pub fn new(
        ctx: &JobCtx,
        jobs: Arc<JobSystem>,
        conn: usize,
        generation: u64,
        fallback: HttpAnswer,
    ) -> Responder {
        ctx.info.defer_reply();
        Responder {
            info: ctx.info.clone(),
            jobs,
            conn,
            generation,
            fallback: Some(fallback),
        }
    }

    pub fn send(&mut self, answer: HttpAnswer) {
        self.fallback = None;
        if self.info.claim_reply() {
            self.jobs.outbox.push(Completion {
                conn: self.conn,
                generation: self.generation,
                body: CompletionBody::Answer(answer),
            });
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(f) = self.fallback.take() {
            self.send(f);
        }
    }
}
