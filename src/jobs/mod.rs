//! Jobs: the unit of work the reactor hands to the worker pools.
//!
//! A job carries an id, a kind, a lane, a deadline, a cancel token, a progress stamp and where
//! its result goes. Its lifecycle:
//!
//! ```text
//! submitted ──▶ queued ──▶ running ──▶ finished (result delivered, removed from the table)
//!                  │          │
//!                  │          └─ cancelled (deadline, stall, drain): the token fires, the
//!                  │             client is answered at once; the job is expected to notice
//!                  └─ deadline passed while queued: answered, then dropped unrun
//! ```
//!
//! Exactly one reply per job: whoever flips [`JobInfo::replied`] first (the worker with the
//! result, or the watchdog with a deadline/cancel error) sends it.

pub mod outbox;
pub mod periodic;
mod pool;
pub mod system;

pub use pool::{PoolHandle, PoolReceivers, Pools, QueueStats};

use crate::cancel::{CancelReason, CancelToken};
use crate::clock;
use crate::error::{Code, RpcError};
use crate::protocol::reply::ReplyTo;
use crate::sync::lock;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Priority lanes, highest first. Workers always take from the highest non-empty lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Control = 0,
    Interactive = 1,
    Background = 2,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::Control, Lane::Interactive, Lane::Background];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Control => "control",
            Lane::Interactive => "interactive",
            Lane::Background => "background",
        }
    }

    pub fn parse(s: &str) -> Option<Lane> {
        Lane::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// The two worker pools: `cpu` for computation, `io` for anything that blocks on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    Cpu,
    Io,
}

impl PoolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Cpu => "cpu",
            PoolKind::Io => "io",
        }
    }

    pub fn parse(s: &str) -> Option<PoolKind> {
        match s {
            "cpu" => Some(PoolKind::Cpu),
            "io" => Some(PoolKind::Io),
            _ => None,
        }
    }
}

/// What the reactor (or a test) asks for.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub kind: String,
    pub pool: PoolKind,
    pub lane: Lane,
    /// From admission to the deadline, queue wait included.
    pub timeout: Duration,
    /// Cancel if the progress stamp is older than this.
    pub stall_limit: Option<Duration>,
}

/// The shared record of one job: read by the worker, the watchdog, `status` and the dump.
#[derive(Debug)]
pub struct JobInfo {
    pub id: u64,
    pub kind: String,
    pub pool: PoolKind,
    pub lane: Lane,
    pub enqueued: Instant,
    pub deadline: Instant,
    pub stall_limit: Option<Duration>,
    pub token: CancelToken,
    pub reply: ReplyTo,
    /// Monotonic ms (+1) when a worker picked it up; 0 while queued.
    started: AtomicU64,
    /// Monotonic ms of the last progress stamp.
    progress: AtomicU64,
    replied: AtomicBool,
    /// The job's reply is sent by another job (a shared computation), not by its worker.
    deferred: AtomicBool,
}

impl JobInfo {
    pub fn new(id: u64, spec: &JobSpec, reply: ReplyTo, now: Instant) -> JobInfo {
        JobInfo {
            id,
            kind: spec.kind.clone(),
            pool: spec.pool,
            lane: spec.lane,
            enqueued: now,
            deadline: now + spec.timeout,
            stall_limit: spec.stall_limit,
            token: CancelToken::new(),
            reply,
            started: AtomicU64::new(0),
            progress: AtomicU64::new(clock::mono_ms(now)),
            replied: AtomicBool::new(false),
            deferred: AtomicBool::new(false),
        }
    }

    /// Hands this job's reply to whoever calls [`crate::runtime::Shared::deliver`] for it
    /// later; its own worker will not send one.
    pub fn defer_reply(&self) {
        self.deferred.store(true, Ordering::Release);
    }

    pub fn reply_deferred(&self) -> bool {
        self.deferred.load(Ordering::Acquire)
    }

    pub fn started_at(&self) -> Option<Instant> {
        match self.started.load(Ordering::Acquire) {
            0 => None,
            ms => Some(clock::from_mono_ms(ms - 1)),
        }
    }

    pub fn mark_started(&self, now: Instant) {
        self.started
            .store(clock::mono_ms(now) + 1, Ordering::Release);
        self.stamp(now);
    }

    pub fn stamp(&self, now: Instant) {
        self.progress.store(clock::mono_ms(now), Ordering::Release);
    }

    pub fn last_progress(&self) -> Instant {
        clock::from_mono_ms(self.progress.load(Ordering::Acquire))
    }

    /// Claims the one reply; false if it was already sent.
    pub fn claim_reply(&self) -> bool {
        !self.replied.swap(true, Ordering::AcqRel)
    }

    pub fn replied(&self) -> bool {
        self.replied.load(Ordering::Acquire)
    }

    /// Time spent waiting in the queue (so far, if still queued).
    pub fn queue_wait(&self, now: Instant) -> Duration {
        self.started_at()
            .unwrap_or(now)
            .saturating_duration_since(self.enqueued)
    }

    /// A JSON description for `status` and the diagnostic dump.
    pub fn describe(&self, now: Instant) -> Value {
        let ms = |d: Duration| d.as_millis() as u64;
        let signed = |a: Instant, b: Instant| -> i64 {
            if a >= b {
                ms(a - b) as i64
            } else {
                -(ms(b - a) as i64)
            }
        };
        serde_json::json!({
            "id": self.id,
            "kind": self.kind,
            "pool": self.pool.as_str(),
            "lane": self.lane.as_str(),
            "state": if self.started_at().is_some() { "running" } else { "queued" },
            "ageMs": ms(now.saturating_duration_since(self.enqueued)),
            "queueWaitMs": ms(self.queue_wait(now)),
            "runningMs": self.started_at().map(|s| ms(now.saturating_duration_since(s))),
            "deadlineInMs": signed(self.deadline, now),
            "lastProgressMsAgo": ms(now.saturating_duration_since(self.last_progress())),
            "stallLimitMs": self.stall_limit.map(ms),
            "cancelled": self.token.reason().map(CancelReason::as_str),
            "replied": self.replied(),
        })
    }
}

/// What a job's code sees: its token, deadline and progress stamp.
pub struct JobCtx<'a> {
    pub info: &'a Arc<JobInfo>,
}

impl JobCtx<'_> {
    /// Stamps progress and returns an error if the job has been cancelled. Long loops call this
    /// at least every ~10 ms of work.
    pub fn check(&self) -> Result<(), RpcError> {
        self.info.stamp(Instant::now());
        match self.info.token.reason() {
            None => Ok(()),
            Some(reason) => Err(cancel_error(self.info, reason)),
        }
    }

    pub fn token(&self) -> &CancelToken {
        &self.info.token
    }

    pub fn deadline(&self) -> Instant {
        self.info.deadline
    }
}

/// The error a client gets for a job cancelled for `reason`.
pub fn cancel_error(info: &JobInfo, reason: CancelReason) -> RpcError {
    let timeout = info
        .deadline
        .saturating_duration_since(info.enqueued)
        .as_millis();
    match reason {
        CancelReason::Deadline => RpcError::new(
            Code::DeadlineExceeded,
            format!(
                "{} (job {}) exceeded its deadline of {timeout} ms",
                info.kind, info.id
            ),
        ),
        CancelReason::Stalled => RpcError::new(
            Code::DeadlineExceeded,
            format!(
                "{} (job {}) made no progress for {} ms and was aborted",
                info.kind,
                info.id,
                info.stall_limit.unwrap_or_default().as_millis()
            ),
        ),
        CancelReason::Drain => RpcError {
            retryable: Some(true),
            ..RpcError::new(
                Code::Cancelled,
                format!(
                    "{} (job {}) was cancelled: the gateway is shutting down",
                    info.kind, info.id
                ),
            )
        },
        CancelReason::Client => RpcError::new(
            Code::Cancelled,
            format!("{} (job {}) was cancelled by request", info.kind, info.id),
        ),
    }
}

/// The body of a job.
pub type Work = Box<dyn FnOnce(&JobCtx) -> crate::payload::Outcome + Send>;

pub struct Job {
    pub info: Arc<JobInfo>,
    pub work: Work,
}

/// Every job not yet finished, queued or running. Locked only for inserts, removals and
/// snapshots — never across a job's work.
#[derive(Default)]
pub struct JobTable {
    jobs: Mutex<HashMap<u64, Arc<JobInfo>>>,
}

impl JobTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<JobInfo>>> {
        lock(&self.jobs)
    }

    pub fn insert(&self, info: Arc<JobInfo>) {
        self.lock().insert(info.id, info);
    }

    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn get(&self, id: u64) -> Option<Arc<JobInfo>> {
        self.lock().get(&id).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All jobs, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<JobInfo>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by_key(|j| j.id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn token_fires_once_with_first_reason_and_runs_hooks() {
        let t = CancelToken::new();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        t.on_cancel(move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        assert!(t.cancel(CancelReason::Deadline));
        assert!(!t.cancel(CancelReason::Drain));
        assert_eq!(t.reason(), Some(CancelReason::Deadline));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let h = hits.clone();
        t.on_cancel(move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(hits.load(Ordering::SeqCst), 2, "a late hook runs at once");
    }

    #[test]
    fn one_reply_per_job() {
        let spec = JobSpec {
            kind: "t".into(),
            pool: PoolKind::Cpu,
            lane: Lane::Control,
            timeout: Duration::from_secs(1),
            stall_limit: None,
        };
        let info = JobInfo::new(1, &spec, ReplyTo::Internal, Instant::now());
        assert!(info.claim_reply());
        assert!(!info.claim_reply());
    }

    #[test]
    fn queue_wait_is_measured_apart() {
        let spec = JobSpec {
            kind: "t".into(),
            pool: PoolKind::Io,
            lane: Lane::Background,
            timeout: Duration::from_secs(10),
            stall_limit: None,
        };
        let t0 = clock::epoch() + Duration::from_secs(100);
        let info = JobInfo::new(1, &spec, ReplyTo::Internal, t0);
        assert_eq!(
            info.queue_wait(t0 + Duration::from_millis(30)),
            Duration::from_millis(30)
        );
        info.mark_started(t0 + Duration::from_millis(40));
        assert_eq!(
            info.queue_wait(t0 + Duration::from_secs(5)),
            Duration::from_millis(40)
        );
        let d = info.describe(t0 + Duration::from_millis(50));
        assert_eq!(d["state"], "running");
        assert_eq!(d["runningMs"], 10);
        assert_eq!(d["deadlineInMs"], 9950);
    }
}
