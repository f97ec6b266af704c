//! Fixed worker pools fed by bounded crossbeam queues, one queue per lane.
//!
//! Admission never blocks: a full lane is refused at once. A worker takes from the highest
//! non-empty lane and blocks on all three when they are empty. Dropping every sender (the
//! [`Pools`] value) disconnects the queues, which is the workers' signal to exit.

use super::{Job, Lane, PoolKind};
use crate::config::QueueCaps;
use crossbeam_channel::{Receiver, Select, Sender, TrySendError, bounded};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How often a worker that is deferring background work looks at the flag again.
const DEFER_RECHECK: Duration = Duration::from_millis(100);

/// The sending side of one pool.
pub struct PoolHandle {
    pub kind: PoolKind,
    pub workers: usize,
    senders: [Sender<Job>; 3],
    caps: [usize; 3],
    /// Workers currently running a job.
    pub busy: Arc<AtomicUsize>,
}

/// Depth of one lane.
#[derive(Debug, Clone, Copy)]
pub struct QueueStats {
    pub lane: Lane,
    pub depth: usize,
    pub capacity: usize,
}

impl PoolHandle {
    /// Queues `job`, or hands it back if its lane is full.
    pub fn try_submit(&self, job: Job) -> Result<(), Job> {
        let lane = job.info.lane as usize;
        match self.senders[lane].try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => Err(job),
        }
    }

    pub fn capacity(&self, lane: Lane) -> usize {
        self.caps[lane as usize]
    }

    pub fn queues(&self) -> [QueueStats; 3] {
        Lane::ALL.map(|lane| QueueStats {
            lane,
            depth: self.senders[lane as usize].len(),
            capacity: self.caps[lane as usize],
        })
    }

    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }
}

/// Both pools' senders.
pub struct Pools {
    pub cpu: PoolHandle,
    pub io: PoolHandle,
    /// Set by the watchdog while pressure is elevated or worse.
    defer_background: Arc<AtomicBool>,
}

/// The receiving side, until the workers are spawned.
pub struct PoolReceivers {
    cpu: ([Receiver<Job>; 3], usize, Arc<AtomicUsize>),
    io: ([Receiver<Job>; 3], usize, Arc<AtomicUsize>),
    defer_background: Arc<AtomicBool>,
}

impl Pools {
    pub fn new(cpu_workers: usize, io_workers: usize, caps: QueueCaps) -> (Pools, PoolReceivers) {
        let caps = [caps.control, caps.interactive, caps.background];
        let make = |kind, workers| {
            let (s0, r0) = bounded(caps[0]);
            let (s1, r1) = bounded(caps[1]);
            let (s2, r2) = bounded(caps[2]);
            let busy = Arc::new(AtomicUsize::new(0));
            let handle = PoolHandle {
                kind,
                workers,
                senders: [s0, s1, s2],
                caps,
                busy: busy.clone(),
            };
            (handle, ([r0, r1, r2], workers, busy))
        };
        let (cpu, cpu_rx) = make(PoolKind::Cpu, cpu_workers);
        let (io, io_rx) = make(PoolKind::Io, io_workers);
        let defer_background = Arc::new(AtomicBool::new(false));
        (
            Pools {
                cpu,
                io,
                defer_background: defer_background.clone(),
            },
            PoolReceivers {
                cpu: cpu_rx,
                io: io_rx,
                defer_background,
            },
        )
    }

    /// Defers (or resumes) background work in both pools.
    pub fn defer_background(&self, defer: bool) {
        self.defer_background.store(defer, Ordering::Relaxed);
    }

    pub fn deferring_background(&self) -> bool {
        self.defer_background.load(Ordering::Relaxed)
    }

    pub fn get(&self, kind: PoolKind) -> &PoolHandle {
        match kind {
            PoolKind::Cpu => &self.cpu,
            PoolKind::Io => &self.io,
        }
    }
}

impl PoolReceivers {
    /// Spawns every worker at niceness `nice`; `run` executes one job (and must not panic: it
    /// catches the job's).
    pub fn spawn(self, nice: i32, run: Arc<dyn Fn(Job) + Send + Sync>) -> std::io::Result<()> {
        for (kind, (rx, workers, busy)) in [(PoolKind::Cpu, self.cpu), (PoolKind::Io, self.io)] {
            for n in 0..workers {
                let rx = rx.clone();
                let busy = busy.clone();
                let run = run.clone();
                let defer = self.defer_background.clone();
                std::thread::Builder::new()
                    .name(format!("keel-{}-{n}", kind.as_str()))
                    .spawn(move || {
                        lower_priority(nice);
                        while let Some(job) = next_job(&rx, &defer) {
                            busy.fetch_add(1, Ordering::Relaxed);
                            run(job);
                            busy.fetch_sub(1, Ordering::Relaxed);
                        }
                    })?;
            }
        }
        Ok(())
    }
}

/// Raises this thread's nice value (Linux schedules threads individually). Failing is logged
/// once and harmless: the worker just competes at normal priority.
fn lower_priority(nice: i32) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if nice == 0 {
        return;
    }
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
        WARNED.call_once(|| log::warn!("cannot lower worker thread priority to nice {nice}: {e}"));
    }
}

/// The next job by lane priority; `None` once every lane is disconnected and empty. While
/// `defer` is set (pressure elevated or worse) the background lane is left alone: its jobs
/// wait, and are dropped with `DEADLINE_EXCEEDED` if their deadline passes first.
fn next_job(rx: &[Receiver<Job>; 3], defer: &AtomicBool) -> Option<Job> {
    loop {
        let deferring = defer.load(Ordering::Relaxed);
        let lanes = if deferring { &rx[..2] } else { &rx[..] };
        let mut open = 0;
        for r in lanes {
            match r.try_recv() {
                Ok(job) => return Some(job),
                Err(crossbeam_channel::TryRecvError::Empty) => open += 1,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {}
            }
        }
        if open == 0 {
            return None;
        }
        // Wait until a lane has something (or disconnects), then re-check in priority order.
        // While deferring, wake up now and then to see whether the deferral has ended.
        let mut sel = Select::new();
        for r in lanes {
            sel.recv(r);
        }
        if deferring {
            let _ = sel.ready_timeout(DEFER_RECHECK);
        } else {
            sel.ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobInfo, JobSpec};
    use crate::protocol::reply::ReplyTo;
    use std::time::{Duration, Instant};

    fn job(id: u64, lane: Lane) -> Job {
        let spec = JobSpec {
            kind: format!("j{id}"),
            pool: PoolKind::Cpu,
            lane,
            timeout: Duration::from_secs(5),
            stall_limit: None,
        };
        Job {
            info: Arc::new(JobInfo::new(id, &spec, ReplyTo::Internal, Instant::now())),
            work: Box::new(|_| Ok(serde_json::Value::Null.into())),
        }
    }

    #[test]
    fn full_lane_hands_the_job_back_without_blocking() {
        let caps = QueueCaps {
            control: 1,
            interactive: 1,
            background: 1,
        };
        let (pools, _rx) = Pools::new(1, 1, caps);
        assert!(pools.cpu.try_submit(job(1, Lane::Background)).is_ok());
        let back = pools.cpu.try_submit(job(2, Lane::Background)).unwrap_err();
        assert_eq!(back.info.id, 2);
        assert!(
            pools.cpu.try_submit(job(3, Lane::Control)).is_ok(),
            "lanes are separate"
        );
    }

    #[test]
    fn workers_take_the_highest_lane_first_and_exit_on_disconnect() {
        let caps = QueueCaps {
            control: 8,
            interactive: 8,
            background: 8,
        };
        let (pools, rx) = Pools::new(1, 1, caps);
        for (id, lane) in [
            (1, Lane::Background),
            (2, Lane::Interactive),
            (3, Lane::Control),
        ] {
            pools.cpu.try_submit(job(id, lane)).map_err(|_| ()).unwrap();
        }
        let no = AtomicBool::new(false);
        let order: Vec<u64> = std::iter::from_fn(|| next_job(&rx.cpu.0, &no))
            .take(3)
            .map(|j| j.info.id)
            .collect();
        assert_eq!(order, [3, 2, 1]);
        drop(pools);
        assert!(next_job(&rx.cpu.0, &no).is_none());
    }

    #[test]
    fn background_work_waits_while_deferred() {
        let caps = QueueCaps {
            control: 8,
            interactive: 8,
            background: 8,
        };
        let (pools, rx) = Pools::new(1, 1, caps);
        pools.defer_background(true);
        pools
            .cpu
            .try_submit(job(1, Lane::Background))
            .map_err(|_| ())
            .unwrap();
        let (tx, got) = std::sync::mpsc::channel();
        let defer = rx.defer_background.clone();
        let lanes = rx.cpu.0.clone();
        std::thread::spawn(move || {
            while let Some(j) = next_job(&lanes, &defer) {
                let _ = tx.send(j.info.id);
            }
        });
        pools
            .cpu
            .try_submit(job(2, Lane::Interactive))
            .map_err(|_| ())
            .unwrap();
        assert_eq!(
            got.recv_timeout(Duration::from_secs(5)),
            Ok(2),
            "other lanes still run"
        );
        assert!(
            got.recv_timeout(Duration::from_millis(300)).is_err(),
            "background waits"
        );
        pools.defer_background(false);
        assert_eq!(
            got.recv_timeout(Duration::from_secs(5)),
            Ok(1),
            "and runs once resumed"
        );
    }
}
