//! Sessions and usage: OpenClaw's file-based session stores and an incremental usage index,
//! so that `sessions.list`, `sessions.usage` and `usage.cost` never stall.
//!
//! - Stores (`store`) are immutable snapshots shared by `Arc`, reloaded when a file changes.
//! - The index (`index`) holds, per transcript file, its records and how far it was read.
//!   It is loaded from disk at boot and brought up to date by a *build*: background-lane jobs
//!   on the cpu pool that take files from a shared list, parse them in 1 MiB slices (checking
//!   their cancel token between slices), merge each file under a short write lock, and give
//!   the worker back every ~50 ms by re-queueing themselves. A drain cancels them at once.
//! - A query (an interactive job with a 2 s deadline) never waits for a build: if one is
//!   running it answers from what is indexed, marked `partial` (or `refreshing`); otherwise
//!   it reads what was appended since the last look itself when that is small, or starts a
//!   build for the rest and answers `partial`.
//! - Identical concurrent queries share one computation ([`Flights`]).

pub mod detail;
pub mod index;
pub mod json;
pub mod query;
pub mod sqlite;
pub mod store;
pub mod time;
pub mod transcript;
pub mod watch;

use crate::config::live::ConfigCell;
use crate::error::{Code, RpcError};
use crate::jobs::periodic::Periodic;
use crate::jobs::system::JobSystem;
use crate::jobs::{JobCtx, JobInfo, JobSpec, Lane, PoolKind, Work};
use crate::metrics::Counter;
use crate::payload::Payload;
use crate::pressure::PressureCell;
use crate::protocol::reply::ReplyTo;
use crate::sync::{lock, read, write};
use index::{Index, ParseError, Task};
use query::{IndexState, Query};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Appended bytes a query reads itself before handing the rest to a background build.
const INLINE_BYTES: u64 = 8 << 20;
/// How long one build job keeps its worker before re-queueing itself.
const BUILD_SLICE: Duration = Duration::from_millis(50);
/// The deadline of a usage query.
pub const QUERY_DEADLINE: Duration = Duration::from_secs(2);
/// Index saves after inline refreshes are at most this frequent.
const SAVE_EVERY: Duration = Duration::from_secs(60);
/// A full scan backs up change notification this often.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Build {
    running: bool,
    pending: VecDeque<Task>,
    /// Build jobs queued or running.
    jobs: usize,
    files_total: usize,
    files_done: usize,
    bytes: u64,
    started: Option<Instant>,
    cancelled: bool,
}

/// Counters of what usage queries cost, for `/metrics` and `status`.
#[derive(Default)]
pub struct UsageStats {
    pub queries: Counter,
    pub queries_partial: Counter,
    pub shared: Counter,
    pub files_read: Counter,
    pub bytes_parsed: Counter,
    pub query_ms_total: Counter,
    pub builds: Counter,
    pub builds_cancelled: Counter,
    pub malformed_lines: Counter,
}

/// What the sessions service needs of the gateway, and nothing more.
pub struct Handles {
    pub jobs: Arc<JobSystem>,
    pub config: Arc<ConfigCell>,
    pub pressure: Arc<PressureCell>,
    pub state_dir: PathBuf,
    /// Test hooks (`KEEL_TEST_*_DELAY_MS`) are honoured only with `KEEL_TEST_HOOKS=1`.
    pub test_hooks: bool,
}

/// The sessions and usage service, one per gateway.
pub struct Sessions {
    h: Handles,
    state_dir: PathBuf,
    /// `build.running`, published for `/metrics` (answered on the reactor, which must not wait
    /// for the build lock a worker may hold while it takes the index lock).
    building: AtomicBool,
    pub stores: store::Stores,
    index: RwLock<Index>,
    /// The index's (files, messages, usage records, malformed lines), published by every
    /// change: `/metrics` is answered on the reactor, which must never wait for the index lock
    /// (a worker may hold it through a query, a save or a merge).
    counts: [AtomicU64; 4],
    build: Mutex<Build>,
    /// True once a build (or a load of a saved index) has covered every file.
    complete_once: AtomicBool,
    /// Set once the boot-time load of the saved index is done: queries never build before,
    /// or the load would overwrite what they merged.
    loaded: AtomicBool,
    flights: Flights,
    last_save: Mutex<Option<Instant>>,
    dirty: AtomicBool,
    /// A save job is queued or running.
    saving: AtomicBool,
    /// Transcript-directory change notification, and when everything was last scanned.
    watcher: Mutex<(Option<watch::Watcher>, Option<Instant>)>,
    pub stats: UsageStats,
    /// Per-file results for the last range asked for (see [`query::FileAgg`]).
    files: Mutex<query::FileCache>,
    /// Bumped by every change of the index (under its write lock).
    generation: AtomicU64,
    /// Test hook (`KEEL_TEST_INDEX_DELAY_MS`, honoured only with `KEEL_TEST_HOOKS=1`): each
    /// file a build reads takes at least this long, so tests can query during a build.
    test_delay: Option<Duration>,
    /// The pressure level at the last watchdog tick (see the `Periodic` impl).
    last_level: std::sync::atomic::AtomicU8,
    /// Test hook (`KEEL_TEST_QUERY_DELAY_MS`, only with `KEEL_TEST_HOOKS=1`): a computation
    /// takes at least this long, so tests can make identical calls overlap.
    test_query_delay: Option<Duration>,
}

/// Queues internal maintenance work on the cpu pool's background lane.
fn background(
    jobs: &JobSystem,
    kind: &str,
    timeout: Duration,
    stall_limit: Option<Duration>,
    work: Work,
) -> Result<u64, RpcError> {
    let spec = JobSpec {
        kind: kind.into(),
        pool: PoolKind::Cpu,
        lane: Lane::Background,
        timeout,
        stall_limit,
    };
    jobs.submit(spec, ReplyTo::Internal, work)
}

impl Sessions {
    pub fn new(h: Handles) -> Sessions {
        let test_hooks = h.test_hooks;
        let state_dir = h.state_dir.clone();
        let hook = |name: &str| {
            test_hooks
                .then(|| std::env::var(name).ok()?.parse().ok())
                .flatten()
                .map(Duration::from_millis)
        };
        Sessions {
            test_delay: hook("KEEL_TEST_INDEX_DELAY_MS"),
            test_query_delay: hook("KEEL_TEST_QUERY_DELAY_MS"),
            state_dir,
            h,
            building: AtomicBool::new(false),
            last_level: std::sync::atomic::AtomicU8::new(crate::pressure::Level::Normal as u8),
            stores: store::Stores::default(),
            index: RwLock::new(Index::default()),
            counts: Default::default(),
            build: Mutex::new(Build::default()),
            complete_once: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
            flights: Flights::default(),
            last_save: Mutex::new(None),
            dirty: AtomicBool::new(false),
            saving: AtomicBool::new(false),
            watcher: Mutex::new((None, None)),
            stats: UsageStats::default(),
            files: Mutex::new(query::FileCache::default()),
            generation: AtomicU64::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        read(&self.index)
    }

    /// Changes the index and publishes its counts.
    fn modify<R>(&self, change: impl FnOnce(&mut Index) -> R) -> R {
        let mut index = write(&self.index);
        let r = change(&mut index);
        self.generation.fetch_add(1, Ordering::AcqRel);
        let (files, msgs, usage, malformed) = index.counts();
        for (slot, v) in
            self.counts
                .iter()
                .zip([files as u64, msgs as u64, usage as u64, malformed])
        {
            slot.store(v, Ordering::Relaxed);
        }
        r
    }

    /// (files indexed, messages, usage records, malformed lines), without taking the index lock.
    pub fn index_counts(&self) -> (usize, usize, usize, u64) {
        let c = |i: usize| self.counts[i].load(Ordering::Relaxed);
        (c(0) as usize, c(1) as usize, c(2) as usize, c(3))
    }

    /// The index's state for answers: `partial` until a build has covered every file once,
    /// then `refreshing` while a build runs and `fresh` otherwise.
    fn cache_status(&self) -> query::CacheStatus {
        let b = lock(&self.build);
        let indexed = self.index_counts().0;
        let pending = if b.running {
            b.files_total.saturating_sub(b.files_done)
        } else {
            0
        };
        let status = if !self.complete_once.load(Ordering::Acquire) {
            IndexState::Partial
        } else if b.running {
            IndexState::Refreshing
        } else {
            IndexState::Fresh
        };
        query::CacheStatus {
            status,
            files_indexed: indexed,
            files_total: indexed + pending,
        }
    }

    /// What changed on disk since the last look: from inotify when it is sure, else (and every
    /// [`FULL_SCAN_EVERY`], as a safety net) from a full scan, after a new watcher is in place
    /// so that nothing written during the scan is missed.
    fn changed(&self, full: bool) -> (Vec<Task>, Vec<PathBuf>) {
        let mut w = lock(&self.watcher);
        let due = full || w.1.is_none_or(|t| t.elapsed() >= FULL_SCAN_EVERY);
        let changes = match (&mut w.0, due) {
            (Some(watcher), false) => watcher.drain(&self.state_dir),
            _ => watch::Changes::All,
        };
        // Agent databases: each looked at (two stats and `PRAGMA data_version`), and listed
        // again only when it changed, or at the periodic full check.
        let views = self.stores.dbs.check_all(&self.state_dir, due);
        let (mut tasks, mut gone) = match changes {
            watch::Changes::All => {
                w.0 = watch::Watcher::new(&self.state_dir);
                w.1 = Some(Instant::now());
                drop(w);
                // Scanned before the lock is taken: a scan reads every directory.
                let seen = sqlite::files_beside(index::scan(&self.state_dir), &views);
                index::plan_where(&self.read(), &seen, |k| !sqlite::is_db_rel(k))
            }
            watch::Changes::Paths(paths) => {
                drop(w);
                let (tasks, gone) = index::plan_paths(&self.read(), &self.state_dir, &paths);
                let seen = tasks
                    .into_iter()
                    .map(|t| (t.seen.clone(), t))
                    .collect::<Vec<_>>();
                let keep: std::collections::HashSet<PathBuf> =
                    sqlite::files_beside(seen.iter().map(|(s, _)| s.clone()).collect(), &views)
                        .into_iter()
                        .map(|s| s.rel)
                        .collect();
                let tasks = seen
                    .into_iter()
                    .filter(|(s, _)| keep.contains(&s.rel))
                    .map(|(_, t)| t)
                    .collect();
                (tasks, gone)
            }
        };
        let seen: Vec<index::Seen> = views
            .iter()
            .filter_map(|(_, v)| v.as_ref())
            .flat_map(|v| v.listing.seen.iter().cloned())
            .collect();
        let (t, g) = index::plan_where(&self.read(), &seen, sqlite::is_db_rel);
        tasks.extend(t);
        gone.extend(g);
        (tasks, gone)
    }

    /// Boot: load the saved index (on a worker), then bring it up to date in the background.
    pub fn start(self: &Arc<Self>) {
        let svc = self.clone();
        let work: Work = Box::new(move |ctx: &JobCtx| {
            let t0 = Instant::now();
            match Index::load(&svc.state_dir) {
                Ok(Some(idx)) => {
                    let (files, msgs, usage, _) = idx.counts();
                    log::info!(
                        "usage index loaded: {files} files, {msgs} messages, {usage} usage records in {} ms",
                        t0.elapsed().as_millis()
                    );
                    svc.modify(|i| *i = idx);
                }
                Ok(None) => log::info!(
                    "usage index: none saved (or unusable); building from the transcripts"
                ),
                Err(e) => log::warn!("usage index: cannot read the saved index: {e}; rebuilding"),
            }
            svc.loaded.store(true, Ordering::Release);
            ctx.check()?;
            svc.start_build(None);
            Ok(Value::Null.into())
        });
        if let Err(e) = background(
            &self.h.jobs,
            "usage.load",
            Duration::from_secs(60),
            None,
            work,
        ) {
            log::warn!("usage index: cannot schedule the load: {e}");
        }
    }

    /// Starts a build for `tasks` (or for whatever a fresh scan finds) unless one is running.
    /// Returns true if a build is running afterwards.
    fn start_build(self: &Arc<Self>, tasks: Option<(Vec<Task>, Vec<PathBuf>)>) -> bool {
        let svc = self;
        let (tasks, gone) = match tasks {
            Some(t) => t,
            None => svc.changed(true),
        };
        svc.forget(&gone);
        {
            let mut b = lock(&svc.build);
            if b.running {
                return true;
            }
            if tasks.is_empty() {
                if !svc.complete_once.swap(true, Ordering::AcqRel) {
                    log::info!("usage index up to date: {} files", svc.read().files.len());
                    svc.prewarm();
                }
                drop(b);
                svc.save_if_due(true);
                return false;
            }
            svc.building.store(true, Ordering::Release);
            *b = Build {
                running: true,
                files_total: tasks.len(),
                pending: tasks.into(),
                started: Some(Instant::now()),
                ..Build::default()
            };
        }
        svc.stats.builds.inc();
        let workers = self.h.config.get().cpu_workers.max(1);
        for _ in 0..workers {
            self.spawn_build_job();
        }
        true
    }

    fn spawn_build_job(self: &Arc<Self>) {
        let ticket = BuildTicket::new(self);
        let work: Work = Box::new(move |ctx: &JobCtx| ticket.run(ctx));
        // Refused (queue full, draining): the work is dropped, and its ticket with it.
        if let Err(e) = background(
            &self.h.jobs,
            "usage.build",
            Duration::from_secs(120),
            Some(Duration::from_secs(30)),
            work,
        ) {
            log::debug!("usage index build job not queued: {e}");
        }
    }

    /// A build job has ended; the last one finishes (or abandons) the build.
    fn build_job_done(self: &Arc<Self>, cancelled: bool) {
        let mut b = lock(&self.build);
        b.jobs = b.jobs.saturating_sub(1);
        if cancelled && !b.cancelled {
            b.cancelled = true;
            b.pending.clear();
        }
        if b.jobs > 0 || !b.running {
            return;
        }
        b.running = false;
        self.building.store(false, Ordering::Release);
        let took = b.started.map_or(Duration::ZERO, |s| s.elapsed());
        let (done, total, bytes, was_cancelled) =
            (b.files_done, b.files_total, b.bytes, b.cancelled);
        drop(b);
        self.stats.files_read.add(done as u64);
        self.stats.bytes_parsed.add(bytes);
        if was_cancelled {
            self.stats.builds_cancelled.inc();
            log::info!(
                "usage index build cancelled after {done}/{total} files ({:.1} MB) in {} ms",
                bytes as f64 / 1e6,
                took.as_millis()
            );
            self.dirty.store(true, Ordering::Release);
            return;
        }
        self.complete_once.store(true, Ordering::Release);
        self.dirty.store(true, Ordering::Release);
        let (files, msgs, usage, malformed) = self.index_counts();
        log::info!(
            "usage index built: {done} files read ({:.1} MB) in {} ms; {files} files, {msgs} messages, {usage} usage records, {malformed} malformed lines indexed",
            bytes as f64 / 1e6,
            took.as_millis()
        );
        self.prewarm();
        self.save_if_due(true);
    }

    /// Drops the per-file results kept for the last range (pressure went up). Returns how
    /// many files' results were dropped.
    pub fn shrink_caches(&self) -> usize {
        let mut c = lock(&self.files);
        let n = c.files_kept();
        *c = query::FileCache::default();
        n
    }

    /// Computes the per-file results for the default range (the last 30 days, UTC) in the
    /// background, so the dashboard's first call after a build is already warm.
    fn prewarm(self: &Arc<Self>) {
        let svc = self.clone();
        let work: Work = Box::new(move |ctx: &JobCtx| {
            ctx.check()?;
            let cfg = svc.h.config.get();
            let range = query::RangeSpec::default().resolve(crate::clock::wall_ms() as i64, 30)?;
            let index = svc.read();
            query::prewarm(
                &index,
                &cfg.prices,
                Arc::as_ptr(&cfg) as usize,
                &range,
                &svc.files,
            );
            Ok(Value::Null.into())
        });
        let _ = background(
            &self.h.jobs,
            "usage.prewarm",
            Duration::from_secs(30),
            None,
            work,
        );
    }

    /// Saves the index if it changed (now, or when [`SAVE_EVERY`] has passed).
    fn save_if_due(self: &Arc<Self>, force: bool) {
        let due = {
            let last = lock(&self.last_save);
            force || last.is_none_or(|t| t.elapsed() >= SAVE_EVERY)
        };
        // One save at a time: two would write the same temporary file.
        if !due || self.saving.swap(true, Ordering::AcqRel) {
            return;
        }
        if !self.dirty.swap(false, Ordering::AcqRel) {
            self.saving.store(false, Ordering::Release);
            return;
        }
        /// Clears `saving` when the job ends, or is dropped without running.
        struct Saving(Arc<Sessions>);
        impl Drop for Saving {
            fn drop(&mut self) {
                self.0.saving.store(false, Ordering::Release);
            }
        }
        let saving = Saving(self.clone());
        let work: Work = Box::new(move |_ctx: &JobCtx| {
            let svc = &saving.0;
            let t0 = Instant::now();
            let saved = svc.read().save(&svc.state_dir);
            match saved {
                Ok(bytes) => {
                    *lock(&svc.last_save) = Some(Instant::now());
                    log::debug!(
                        "usage index saved: {bytes} bytes in {} ms",
                        t0.elapsed().as_millis()
                    );
                }
                Err(e) => {
                    svc.dirty.store(true, Ordering::Release);
                    log::warn!(
                        "usage index: cannot save {}: {e}",
                        index::index_path(&svc.state_dir).display()
                    );
                }
            }
            Ok(Value::Null.into())
        });
        if background(
            &self.h.jobs,
            "usage.save",
            Duration::from_secs(60),
            None,
            work,
        )
        .is_err()
        {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Brings the index up to date for a query without ever waiting on a build. Returns the
    /// files and bytes this call read itself.
    fn freshen(self: &Arc<Self>, ctx: &JobCtx) -> Result<(u64, u64), RpcError> {
        // Until the saved index is loaded (and while a build runs) the answer is what is there.
        if !self.loaded.load(Ordering::Acquire) || lock(&self.build).running {
            return Ok((0, 0));
        }
        let (tasks, gone) = self.changed(false);
        let bytes: u64 = tasks.iter().map(Task::bytes).sum();
        if bytes > INLINE_BYTES
            || (!self.complete_once.load(Ordering::Acquire) && !tasks.is_empty())
        {
            self.start_build(Some((tasks, gone)));
            return Ok((0, 0));
        }
        self.forget(&gone);
        let (mut files, mut read) = (0, 0);
        for task in tasks {
            if let Some(bytes) = self.ingest(task, ctx)? {
                files += 1;
                read += bytes;
            }
        }
        self.stats.files_read.add(files);
        self.stats.bytes_parsed.add(read);
        if files > 0 {
            self.save_if_due(false);
        }
        Ok((files, read))
    }

    /// Removes files that are gone from the index.
    fn forget(&self, gone: &[PathBuf]) {
        if !gone.is_empty() {
            self.modify(|i| i.remove(gone));
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Parses one file's new part into the index: `Some(bytes read)`, or `None` when the file
    /// could not be read (one that vanished between scan and read is simply not there any
    /// more; other errors are logged). Fails only when the job is cancelled.
    fn ingest(&self, task: Task, ctx: &JobCtx) -> Result<Option<u64>, RpcError> {
        match index::parse_task(&self.state_dir, task, || ctx.check().is_ok()) {
            Ok(chunk) => {
                let bytes = chunk.bytes;
                self.stats.malformed_lines.add(chunk.parsed.malformed);
                if !chunk.skips.is_empty() {
                    self.stores.dbs.count(&chunk.skips);
                    log::warn!(
                        "usage index: {}: skipped {}",
                        chunk.task.seen.rel.display(),
                        sqlite::Skip::ALL
                            .iter()
                            .filter(|s| chunk.skips.get(**s) > 0)
                            .map(|s| format!("{} {}", chunk.skips.get(*s), s.as_str()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                self.modify(|i| i.merge(chunk));
                self.dirty.store(true, Ordering::Release);
                Ok(Some(bytes))
            }
            Err(ParseError::Cancelled) => Err(ctx.check().err().unwrap_or_else(|| {
                crate::jobs::cancel_error(ctx.info, crate::cancel::CancelReason::Drain)
            })),
            Err(ParseError::Io(e)) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("usage index: cannot read a transcript: {e}");
                }
                Ok(None)
            }
            Err(ParseError::Db(e)) => {
                // Tried again at the next refresh (the index entry is unchanged).
                let mut s = sqlite::Skips::default();
                s.add(e.skip, 1);
                self.stores.dbs.count(&s);
                log::warn!("usage index: {e}");
                Ok(None)
            }
        }
    }

    /// Runs a usage query: fresh stores, a fresh-enough index, one computation shared by
    /// identical concurrent queries, and one log line saying what it cost.
    pub fn run(self: &Arc<Self>, query: &Query, ctx: &JobCtx) -> crate::payload::Outcome {
        let method = query.method();
        // Identical queries, not identical params: fields a method ignores do not matter.
        let key = format!("{query:?}");
        let Some(lead) = self.flights.join(&key, ctx.info, &self.h.jobs) else {
            self.stats.shared.inc();
            return Ok(Value::Null.into());
        };
        let t0 = Instant::now();
        if let Some(d) = self.test_query_delay {
            std::thread::sleep(d);
        }
        let outcome = self.compute(query, ctx);
        let outcome = outcome.map(|(v, line)| {
            log::info!("{method}: {line}, {} ms", t0.elapsed().as_millis());
            v
        });
        self.stats.queries.inc();
        self.stats
            .query_ms_total
            .add(t0.elapsed().as_millis() as u64);
        lead.finish(&outcome);
        outcome
    }

    fn compute(
        self: &Arc<Self>,
        query: &Query,
        ctx: &JobCtx,
    ) -> Result<(Payload, String), RpcError> {
        ctx.check()?;
        let stores = self.stores.refresh(&self.state_dir);
        let now_ms = crate::clock::wall_ms() as i64;
        match query {
            Query::List(q) => {
                let v = query::sessions_list(&stores, &self.state_dir, q, now_ms)?;
                let line = format!(
                    "{} stores ({} reloaded), {} sessions",
                    stores.snapshots.len(),
                    stores.reloaded,
                    v["count"]
                );
                Ok((v.into(), line))
            }
            Query::Usage(q) => {
                self.from_index(&stores, now_ms, ctx, |cx| query::sessions_usage(cx, q))
            }
            Query::Cost(q) => self.from_index(&stores, now_ms, ctx, |cx| query::usage_cost(cx, q)),
            Query::Timeseries(r) => {
                self.from_index(&stores, now_ms, ctx, |cx| detail::timeseries(cx, r))
            }
            Query::Logs(q) => self.logs(&stores, q, ctx),
        }
    }

    /// `sessions.usage.logs`: the session's transcripts are found in the index, and read
    /// without holding its lock.
    fn logs(
        self: &Arc<Self>,
        stores: &store::StoresView,
        q: &query::LogsQuery,
        ctx: &JobCtx,
    ) -> Result<(Payload, String), RpcError> {
        self.freshen(ctx)?;
        let files = {
            let index = self.read();
            let (agent, sid) = detail::resolve(&index, stores, &q.session).ok_or_else(|| {
                RpcError::invalid(format!("no session with key {:?}", q.session.key))
            })?;
            detail::files(&index, &agent, &sid)
        };
        let cfg = self.h.config.get();
        let entries = detail::logs(&self.state_dir, &files, q.limit, &cfg.prices, || {
            ctx.check().is_ok()
        })
        .map_err(|e| match e {
            Some(e) => RpcError::new(Code::Internal, format!("cannot read a transcript: {e}")),
            None => ctx.check().err().unwrap_or_else(|| {
                crate::jobs::cancel_error(ctx.info, crate::cancel::CancelReason::Drain)
            }),
        })?;
        let line = format!("{} files, {} messages", files.len(), entries.len());
        Ok((detail::logs_payload(&entries)?, line))
    }

    /// Answers a query from the usage index, brought up to date first as far as that is cheap.
    fn from_index(
        self: &Arc<Self>,
        stores: &store::StoresView,
        now_ms: i64,
        ctx: &JobCtx,
        answer: impl FnOnce(&query::Ctx<'_>) -> Result<(Payload, query::Summary), RpcError>,
    ) -> Result<(Payload, String), RpcError> {
        let t_refresh = Instant::now();
        let (files, bytes) = self.freshen(ctx)?;
        let refresh_ms = t_refresh.elapsed().as_secs_f64() * 1000.0;
        ctx.check()?;
        let cache = self.cache_status();
        match cache.status {
            IndexState::Fresh => {}
            IndexState::Partial | IndexState::Refreshing => self.stats.queries_partial.inc(),
        }
        let cfg = self.h.config.get();
        let index = self.read();
        let normal = self.h.pressure.level() < crate::pressure::Level::Elevated;
        let cx = query::Ctx {
            index: &index,
            stores,
            prices: &cfg.prices,
            now_ms,
            cache,
            // Under pressure the per-file results and rows are neither kept nor used (see
            // `shrink_caches`): a query computes what it needs and lets it go.
            files: normal.then_some(&self.files),
            prices_version: Arc::as_ptr(&cfg) as usize,
        };
        let (payload, summary) = answer(&cx)?;
        // Moved, not copied: an answer of megabytes is written to the wire from where it is.
        let payload = match payload {
            Payload::Raw(text) => Payload::Shared(Arc::new(text)),
            p => p,
        };
        let line = format!(
            "{} stores, {} sessions, {} files indexed, {files} files read ({:.2} MB parsed, refresh {refresh_ms:.1} ms), answered {}",
            stores.snapshots.len(),
            summary
                .sessions
                .map_or_else(|| "all".into(), |n| n.to_string()),
            index.files.len(),
            bytes as f64 / 1e6,
            match cache.status {
                IndexState::Fresh if files == 0 => "from the index (fresh)",
                IndexState::Fresh => "after an incremental refresh (fresh)",
                IndexState::Refreshing => "while a refresh runs (refreshing)",
                IndexState::Partial => "partially: the index is still building (partial)",
            }
        );
        let line = match summary.rows {
            Some((kept, computed)) => {
                format!("{line}; rows: {kept} as kept, {computed} computed")
            }
            None => line,
        };
        Ok((payload, line))
    }

    /// Appends the usage metrics.
    pub fn render_metrics(&self, out: &mut String) {
        use crate::metrics::family;
        let s = &self.stats;
        let c: [(&str, &str, u64); 8] = [
            (
                "keel_usage_queries_total",
                "Usage queries computed (sessions.list, sessions.usage, usage.cost).",
                s.queries.get(),
            ),
            (
                "keel_usage_queries_partial_total",
                "Usage queries answered while the index was building.",
                s.queries_partial.get(),
            ),
            (
                "keel_usage_queries_shared_total",
                "Usage queries answered by an identical concurrent computation.",
                s.shared.get(),
            ),
            (
                "keel_usage_query_milliseconds_total",
                "Time spent computing usage queries.",
                s.query_ms_total.get(),
            ),
            (
                "keel_usage_files_read_total",
                "Transcript files read (whole or appended part).",
                s.files_read.get(),
            ),
            (
                "keel_usage_bytes_parsed_total",
                "Transcript bytes parsed.",
                s.bytes_parsed.get(),
            ),
            (
                "keel_usage_index_builds_total",
                "Background index builds started.",
                s.builds.get(),
            ),
            (
                "keel_usage_malformed_lines_total",
                "Transcript lines skipped as malformed.",
                s.malformed_lines.get(),
            ),
        ];
        for (name, help, v) in c {
            family(out, name, "counter", help, v);
        }
        let (files, msgs, usage, _) = self.index_counts();
        family(
            out,
            "keel_usage_index_files",
            "gauge",
            "Transcript files in the usage index.",
            files,
        );
        family(
            out,
            "keel_usage_index_records",
            "gauge",
            "Message records in the usage index.",
            msgs + usage,
        );
        family(
            out,
            "keel_usage_index_building",
            "gauge",
            "1 while an index build runs.",
            u8::from(self.building.load(Ordering::Acquire)),
        );
        family(
            out,
            "keel_session_store_errors",
            "gauge",
            "Session stores whose last read failed (last good snapshot in use).",
            self.stores.errors().len(),
        );
        family(
            out,
            "keel_session_db_refused",
            "gauge",
            "Agents whose OpenClaw SQLite session store is not read (unknown schema version, damaged, gone); the reasons are in /readyz and status.",
            self.stores.dbs.notes().len(),
        );
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP keel_session_db_skipped_total Things skipped in OpenClaw SQLite session stores, by reason."
        );
        let _ = writeln!(out, "# TYPE keel_session_db_skipped_total counter");
        let skipped = self.stores.dbs.skipped();
        for s in sqlite::Skip::ALL {
            let _ = writeln!(
                out,
                "keel_session_db_skipped_total{{reason=\"{}\"}} {}",
                s.as_str(),
                skipped.get(s)
            );
        }
    }

    /// Notes for `/readyz`: agents whose SQLite session store is not read, and why. Read on
    /// the reactor: a pointer copy under a lock no one holds across I/O.
    pub fn readiness_notes(&self) -> Vec<String> {
        self.stores.dbs.notes().to_vec()
    }

    /// For `status` and the dump.
    pub fn status_json(&self) -> Value {
        let (files, msgs, usage, malformed) = self.index_counts();
        let cache = self.cache_status();
        serde_json::json!({
            "index": {"status": cache.status.as_str(), "files": files, "messages": msgs, "usageRecords": usage, "malformedLines": malformed},
            "storeErrors": self.stores.errors().iter().map(|(a, e)| serde_json::json!({"agentId": a, "error": e})).collect::<Vec<_>>(),
            "sqlite": {
                "refused": *self.stores.dbs.notes(),
                "skipped": sqlite::Skip::ALL.iter().map(|s| (s.as_str().to_string(), serde_json::json!(self.stores.dbs.skipped().get(*s)))).collect::<serde_json::Map<_, _>>(),
            },
            "queries": self.stats.queries.get(),
        })
    }
}

/// Cached usage results are dropped when pressure rises from normal — by a job, since a query
/// may hold the cache.
impl Periodic for Arc<Sessions> {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn tick(&self, _now: Instant, level: crate::pressure::Level) {
        use crate::pressure::Level;
        let before = self.last_level.swap(level as u8, Ordering::AcqRel);
        if before != Level::Normal as u8 || level == Level::Normal {
            return;
        }
        let svc = self.clone();
        let work: Work = Box::new(move |_ctx: &JobCtx| {
            let n = svc.shrink_caches();
            log::info!("pressure: dropped cached usage results of {n} file(s)");
            Ok(Value::Null.into())
        });
        let spec = JobSpec {
            kind: "usage.shrink".into(),
            pool: PoolKind::Cpu,
            lane: Lane::Control,
            timeout: Duration::from_secs(30),
            stall_limit: None,
        };
        if let Err(e) = self.h.jobs.submit(spec, ReplyTo::Internal, work) {
            log::debug!("usage: dropping cached results not queued: {e}");
        }
    }
}

/// One build job's share of the build. Every way a job can end — it runs out of files, it is
/// cancelled, it panics, or it is dropped unrun (refused at admission, or its deadline passed
/// in the queue) — ends in exactly one [`Sessions::build_job_done`], so a build can never be
/// left marked running with no job to finish it.
struct BuildTicket {
    svc: Arc<Sessions>,
    done: bool,
}

impl BuildTicket {
    fn new(svc: &Arc<Sessions>) -> BuildTicket {
        lock(&svc.build).jobs += 1;
        BuildTicket {
            svc: svc.clone(),
            done: false,
        }
    }

    fn finish(mut self, cancelled: bool) {
        self.done = true;
        self.svc.build_job_done(cancelled);
    }

    /// Parses pending files for about [`BUILD_SLICE`], then re-queues itself.
    fn run(self, ctx: &JobCtx) -> crate::payload::Outcome {
        let svc = &self.svc;
        let t0 = Instant::now();
        loop {
            if let Err(e) = ctx.check() {
                self.finish(true);
                return Err(e);
            }
            let Some(task) = lock(&svc.build).pending.pop_front() else {
                self.finish(false);
                return Ok(Value::Null.into());
            };
            match svc.ingest(task, ctx) {
                Ok(read) => {
                    let mut b = lock(&svc.build);
                    b.files_done += 1;
                    b.bytes += read.unwrap_or(0);
                    drop(b);
                    if let (Some(_), Some(delay)) = (read, svc.test_delay) {
                        let until = Instant::now() + delay;
                        while Instant::now() < until && ctx.token().reason().is_none() {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
                Err(e) => {
                    self.finish(true);
                    return Err(e);
                }
            }
            if t0.elapsed() >= BUILD_SLICE && !lock(&svc.build).pending.is_empty() {
                // Give the worker back: control and interactive work go first. The next job
                // takes its ticket before this one returns its own.
                svc.spawn_build_job();
                self.finish(false);
                return Ok(Value::Null.into());
            }
        }
    }
}

impl Drop for BuildTicket {
    fn drop(&mut self) {
        if !self.done {
            self.svc.build_job_done(true);
        }
    }
}

/// Identical concurrent computations, keyed by method and params. The first caller computes;
/// later ones hand their reply to it and free their worker.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<String, Vec<Arc<JobInfo>>>>,
}

/// Held by the computing job; if it is dropped without [`Flights::finish`] (a panic), the
/// followers get an error instead of waiting for their deadlines.
pub struct Lead<'a> {
    flights: &'a Flights,
    key: String,
    jobs: Arc<JobSystem>,
    done: bool,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if !self.done {
            let err = Err(RpcError::new(
                Code::Internal,
                "the shared computation failed",
            ));
            self.flights.finish(&self.key, &self.jobs, &err);
        }
    }
}

impl Flights {
    /// `Some(lead)` if the caller computes; `None` if it joined a computation in flight (its
    /// reply is deferred to the leader).
    pub fn join<'a>(
        &'a self,
        key: &str,
        me: &Arc<JobInfo>,
        jobs: &Arc<JobSystem>,
    ) -> Option<Lead<'a>> {
        let mut map = lock(&self.map);
        if let Some(followers) = map.get_mut(key) {
            me.defer_reply();
            followers.push(me.clone());
            return None;
        }
        map.insert(key.to_string(), Vec::new());
        Some(Lead {
            flights: self,
            key: key.to_string(),
            jobs: jobs.clone(),
            done: false,
        })
    }

    fn finish(&self, key: &str, jobs: &JobSystem, outcome: &crate::payload::Outcome) {
        let followers = lock(&self.map).remove(key).unwrap_or_default();
        for f in followers {
            jobs.deliver(&f, outcome);
        }
    }
}

impl Lead<'_> {
    /// Hands the outcome to every follower.
    fn finish(mut self, outcome: &crate::payload::Outcome) {
        self.done = true;
        self.flights.finish(&self.key, &self.jobs, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_state_follows_builds_and_answers_name_it() {
        let d = crate::jobs::system::Detached::new(crate::config::Config::default());
        let s = Sessions::new(Handles {
            jobs: d.jobs.clone(),
            config: d.config.clone(),
            pressure: d.pressure.clone(),
            state_dir: PathBuf::from("state"),
            test_hooks: false,
        });
        let state = |s: &Sessions| {
            let c = s.cache_status();
            assert_eq!(c.to_json()["status"], c.status.as_str());
            assert_eq!(s.status_json()["index"]["status"], c.status.as_str());
            (c.status, c.status.as_str(), c.files_total)
        };
        assert_eq!(state(&s), (IndexState::Partial, "partial", 0));
        {
            let mut b = lock(&s.build);
            b.running = true;
            b.files_total = 3;
            b.files_done = 1;
        }
        assert_eq!(
            state(&s),
            (IndexState::Partial, "partial", 2),
            "still partial until a build has covered every file once"
        );
        s.complete_once.store(true, Ordering::Release);
        assert_eq!(state(&s), (IndexState::Refreshing, "refreshing", 2));
        lock(&s.build).running = false;
        assert_eq!(state(&s), (IndexState::Fresh, "fresh", 0));
    }
}
