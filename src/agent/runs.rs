//! Runs: the registry, the methods that start, wait on, abort and read them, and fan-out of
//! their events.
//!
//! A run is an io-pool job (interactive lane, `agents.defaults.timeoutSeconds`). It outlives
//! the socket that started it: its record stays here (finished runs for an hour), so a client
//! that reconnects can `agent.wait` on it or read its session's history.
//!
//! Idempotency keys: a key finds its run while the record is here (`by_idem`); a client's key
//! is also remembered with the run's final result when it finishes, for
//! `gateway.idempotency.windowMs` and across restarts (`<state>/idempotency/runs.jsonl`), so a
//! repeat after the record was pruned, or after a restart, gets the first run's answer and
//! nothing runs again. `start` runs on the reactor: it looks keys up in memory only; the line
//! is written by `finish`, on the run's worker. Until the boot job has loaded the keys, new
//! runs are refused with a retryable `UNAVAILABLE`.
//!
//! Fan-out: the connection that started a run and every `agent.wait`er get all its events,
//! never dropped (a client too slow for them is closed 1008 by the reactor). Session
//! subscribers get `session.tool` mirrors marked drop-if-slow; while pressure is elevated the
//! non-terminal ones (`start`, `update`) are not sent at all. Session *message* subscribers
//! (`sessions.messages.subscribe`, what the dashboard's chat page asks for) get a drop-if-slow
//! copy of every `chat` and `agent` event of the session's runs (unless they already get it as
//! a listener; non-terminal ones not under elevated pressure) and a `session.message` event
//! for each message written to the session's transcript.

use super::failover::Cooldowns;
use super::transcript::Origin;
use crate::cancel::CancelReason;
use crate::clock;
use crate::config::live::ConfigCell;
use crate::delivery::service::Delivery;
use crate::error::RpcError;
use crate::idempotency::{self, Lookup};
use crate::ids::SessionKey;
use crate::jobs::outbox::Outbox;
use crate::jobs::periodic::Periodic;
use crate::jobs::system::JobSystem;
use crate::jobs::{JobSpec, Lane, PoolKind, Work};
use crate::metrics::Metrics;
use crate::pressure::Level;
use crate::pressure::PressureCell;
use crate::protocol::Event;
use crate::protocol::reply::{Fanout, ReplyTo};
use crate::sync::lock;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Finished runs are kept this long for `agent.wait` and reconnecting clients.
const KEEP_FINISHED: Duration = Duration::from_secs(3600);
const MAX_RUNS: usize = 2000;
/// Below [`MAX_RUNS`], finished runs are swept at most this often: a sweep visits every run, and
/// `start` (which sweeps) may run on the reactor.
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// `agent.wait` without `timeoutMs`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// A remembered result keeps this much of the run's text (the transcript has all of it) and
/// of its error, so that the keys' file and memory stay small.
const REMEMBERED_TEXT: usize = 16 << 10;
const REMEMBERED_ERROR: usize = 4 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Ok,
    Error,
    Aborted,
    Timeout,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Aborted => "aborted",
            Status::Timeout => "timeout",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        [
            Status::Running,
            Status::Ok,
            Status::Error,
            Status::Aborted,
            Status::Timeout,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// What a run was asked to do.
#[derive(Debug, Clone)]
pub struct Request {
    pub message: String,
    /// The session, and through it the agent (its canonical id).
    pub session: SessionKey,
    pub origin: Origin,
    pub parent: Option<String>,
    pub depth: u32,
    /// Deliver the final reply to the origin (or the agent's bound channel). Sub-agents
    /// always do: their completion goes back to whoever asked for the parent run.
    pub deliver: bool,
    /// Continue the run of this idempotency key if an earlier life of keel began it (its
    /// user message is in the session's transcript) instead of starting over: the engine
    /// writes no second user message and goes on from the transcript as written (see
    /// `engine::resume`). Without such a message the run starts as usual.
    pub resume: bool,
}

impl Request {
    /// A run asked for by a client (not a sub-agent).
    pub fn top(message: String, session: SessionKey, origin: Origin) -> Request {
        Request {
            message,
            session,
            origin,
            parent: None,
            depth: 0,
            deliver: false,
            resume: false,
        }
    }
}

struct Waiter {
    reply: ReplyTo,
    deadline: Instant,
}

struct Inner {
    status: Status,
    text: String,
    error: Option<String>,
    ended_ms: Option<u64>,
    ended: Option<Instant>,
    job: Option<u64>,
    /// (conn, generation) getting every event.
    listeners: Vec<(usize, u64)>,
    waiters: Vec<Waiter>,
    seq: u64,
    /// Extra result fields (model used, usage, failures) for the final answer.
    meta: Value,
}

pub struct Run {
    pub id: String,
    pub idempotency_key: String,
    pub request: Request,
    pub created_ms: u64,
    inner: Mutex<Inner>,
}

impl Run {
    pub fn status(&self) -> Status {
        lock(&self.inner).status
    }

    /// The final answer (`agent`'s second `res`, `agent.wait`).
    pub fn result(&self) -> Value {
        let i = lock(&self.inner);
        self.result_json(i.status, &i.text, i.error.as_deref(), i.ended_ms, &i.meta)
    }

    /// The final result as remembered for a repeated key, once the run has ended with these:
    /// [`Run::result`], its text and error cut short (with a marker; the summary is the
    /// same). Built before the run is marked ended, so a pruned record always has it.
    fn remembered_result(
        &self,
        status: Status,
        text: &str,
        error: Option<&str>,
        ended_ms: u64,
    ) -> Value {
        let meta = lock(&self.inner).meta.clone();
        let text = idempotency::clip(text, REMEMBERED_TEXT);
        let error = error.map(|e| idempotency::clip(e, REMEMBERED_ERROR));
        self.result_json(status, &text, error.as_deref(), Some(ended_ms), &meta)
    }

    fn result_json(
        &self,
        status: Status,
        text: &str,
        error: Option<&str>,
        ended_ms: Option<u64>,
        meta: &Value,
    ) -> Value {
        json!({
            "runId": self.id,
            "status": status.as_str(),
            "sessionKey": self.request.session.key,
            "agentId": self.request.session.agent,
            "startedAt": self.created_ms,
            "endedAt": ended_ms,
            "summary": text.chars().take(200).collect::<String>(),
            "result": {"payloads": [{"text": text}], "meta": meta},
            "error": error,
        })
    }

    fn next_seq(&self) -> u64 {
        let mut i = lock(&self.inner);
        i.seq += 1;
        i.seq
    }

    pub fn set_meta(&self, meta: Value) {
        lock(&self.inner).meta = meta;
    }

    /// A finished run rebuilt from its remembered result (`result` gives that result back), to
    /// answer a repeated key the way a live run's record would. `None` if it is not one.
    fn remembered(idem: &str, r: &Value) -> Option<Run> {
        let status = Status::parse(r["status"].as_str()?).filter(|s| *s != Status::Running)?;
        let text = r["result"]["payloads"][0]["text"].as_str().unwrap_or("");
        // The log may have been written by another program: its ids are checked like any.
        let agent = crate::ids::AgentId::normalize(r["agentId"].as_str()?).ok()?;
        let session = SessionKey::parse(r["sessionKey"].as_str()?, &agent).ok()?;
        Some(Run {
            id: r["runId"].as_str()?.to_string(),
            idempotency_key: idem.to_string(),
            request: Request {
                message: String::new(),
                session,
                origin: Origin::default(),
                parent: None,
                depth: 0,
                deliver: false,
                resume: false,
            },
            created_ms: r["startedAt"].as_u64().unwrap_or(0),
            inner: Mutex::new(Inner {
                status,
                text: text.to_string(),
                error: r["error"].as_str().map(str::to_string),
                ended_ms: r["endedAt"].as_u64(),
                ended: Some(Instant::now()),
                job: None,
                listeners: Vec::new(),
                waiters: Vec::new(),
                seq: 0,
                meta: r["result"]["meta"].clone(),
            }),
        })
    }
}

/// What the agent service needs of the gateway, and nothing more.
pub struct Handles {
    pub jobs: Arc<JobSystem>,
    pub outbox: Arc<Outbox>,
    pub config: Arc<ConfigCell>,
    pub pressure: Arc<PressureCell>,
    pub metrics: Arc<Metrics>,
    /// Replies go out through the delivery service.
    pub delivery: Arc<Delivery>,
    pub state_dir: PathBuf,
}

/// The agent service: every run, idempotency keys, session subscriptions, and provider
/// cooldowns, with the handles runs need.
pub struct Runs {
    pub h: Handles,
    runs: Mutex<HashMap<String, Arc<Run>>>,
    by_idem: Mutex<HashMap<String, String>>,
    subs: Mutex<HashMap<String, Vec<(usize, u64)>>>,
    /// Connections subscribed to every session's `sessions.changed` (`sessions.subscribe {}`).
    all_subs: Mutex<Vec<(usize, u64)>>,
    /// `sessions.messages.subscribe`: session key → connections watching its messages.
    msg_subs: Mutex<HashMap<String, Vec<(usize, u64)>>>,
    pub cooldowns: Mutex<Cooldowns>,
    session_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    last_prune: Mutex<Option<Instant>>,
    /// Clients' keys of finished runs and their final results, kept for the idempotency window.
    pub run_keys: idempotency::Store,
    /// The earliest `agent.wait` deadline (monotonic ms; `u64::MAX`: none): what the
    /// watchdog's tick compares with its clock, without a lock.
    next_wait_deadline: AtomicU64,
    /// A job expiring waiters is queued or running: the tick submits no other.
    expiring: Arc<AtomicBool>,
}

impl Runs {
    pub fn new(h: Handles) -> Runs {
        Runs {
            h,
            runs: Mutex::default(),
            by_idem: Mutex::default(),
            subs: Mutex::default(),
            all_subs: Mutex::default(),
            msg_subs: Mutex::default(),
            cooldowns: Mutex::default(),
            session_locks: Mutex::default(),
            last_prune: Mutex::default(),
            run_keys: idempotency::Store::default(),
            next_wait_deadline: AtomicU64::new(u64::MAX),
            expiring: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Run>> {
        lock(&self.runs).get(id).cloned()
    }

    pub fn active(&self) -> usize {
        lock(&self.runs)
            .values()
            .filter(|r| r.status() == Status::Running)
            .count()
    }

    /// The lock that serializes runs of one session (transcript order).
    pub fn session_lock(&self, key: &str) -> Arc<Mutex<()>> {
        lock(&self.session_locks)
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    fn prune(&self, now: Instant) {
        let mut runs = lock(&self.runs);
        if runs.len() < MAX_RUNS / 2 {
            return;
        }
        if runs.len() < MAX_RUNS {
            let mut last = lock(&self.last_prune);
            if last.is_some_and(|t| now.saturating_duration_since(t) < PRUNE_EVERY) {
                return;
            }
            *last = Some(now);
        }
        runs.retain(|_, r| {
            lock(&r.inner)
                .ended
                .is_none_or(|e| now.saturating_duration_since(e) < KEEP_FINISHED)
        });
        if runs.len() >= MAX_RUNS {
            // Still full of recent runs: forget the oldest finished ones.
            let mut finished: Vec<(u64, String)> = runs
                .values()
                .filter(|r| r.status() != Status::Running)
                .map(|r| (r.created_ms, r.id.clone()))
                .collect();
            finished.sort();
            for (_, id) in finished.iter().take(runs.len() + 1 - MAX_RUNS) {
                runs.remove(id);
            }
        }
        let live: std::collections::HashSet<String> = runs.keys().cloned().collect();
        drop(runs);
        lock(&self.by_idem).retain(|_, id| live.contains(id));
        lock(&self.session_locks).retain(|_, l| Arc::strong_count(l) > 1);
    }

    /// Forgets a closed connection's subscriptions.
    pub fn forget_conn(&self, conn: usize, generation: u64) {
        for registry in [&self.subs, &self.msg_subs] {
            let mut subs = lock(registry);
            for v in subs.values_mut() {
                v.retain(|c| *c != (conn, generation));
            }
            subs.retain(|_, v| !v.is_empty());
        }
        lock(&self.all_subs).retain(|c| *c != (conn, generation));
    }

    /// The runs of a session in the registry: those running (oldest first), and the newest
    /// that has ended with its status. A scan of the registry (at most [`MAX_RUNS`]).
    pub fn session_runs(&self, key: &str) -> SessionRuns {
        let runs: Vec<Arc<Run>> = lock(&self.runs)
            .values()
            .filter(|r| r.request.session.key == key)
            .cloned()
            .collect();
        let mut active: Vec<(u64, String)> = Vec::new();
        let mut last: Option<(u64, String, Status)> = None;
        for r in runs {
            match r.status() {
                Status::Running => active.push((r.created_ms, r.id.clone())),
                st => {
                    if last.as_ref().is_none_or(|(t, _, _)| r.created_ms >= *t) {
                        last = Some((r.created_ms, r.id.clone(), st));
                    }
                }
            }
        }
        active.sort();
        SessionRuns {
            active: active.into_iter().map(|(_, id)| id).collect(),
            last: last.map(|(_, id, st)| (id, st)),
        }
    }

    /// Registers a waiter's deadline for the watchdog to see (see `waiter_due`).
    fn add_waiter(&self, run: &Run, w: Waiter) {
        self.note_deadline(w.deadline);
        lock(&run.inner).waiters.push(w);
    }

    fn note_deadline(&self, deadline: Instant) {
        self.next_wait_deadline
            .fetch_min(clock::mono_ms(deadline), Ordering::AcqRel);
    }

    /// Whether an `agent.wait`er's time may be up: one atomic, for the watchdog's tick.
    pub fn waiter_due(&self, now: Instant) -> bool {
        self.next_wait_deadline.load(Ordering::Acquire) <= clock::mono_ms(now)
    }

    /// Answers `agent.wait`ers whose time is up (a job the watchdog's tick submits).
    pub fn expire_waiters(&self, now: Instant) {
        let svc = self;
        // Taken before the scan: a waiter added meanwhile lowers it again, so none is missed.
        self.next_wait_deadline.store(u64::MAX, Ordering::Release);
        let runs: Vec<Arc<Run>> = lock(&self.runs).values().cloned().collect();
        for r in runs {
            let expired: Vec<Waiter> = {
                let mut i = lock(&r.inner);
                let (gone, keep): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut i.waiters)
                    .into_iter()
                    .partition(|w| w.deadline <= now);
                for w in &keep {
                    self.note_deadline(w.deadline);
                }
                i.waiters = keep;
                gone
            };
            for w in expired {
                send_reply(svc, &w.reply, &Ok(json!({"runId": r.id, "status": "timeout", "runStatus": r.status().as_str()}).into()));
            }
        }
    }
}

/// What the registry knows of one session's runs ([`Runs::session_runs`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionRuns {
    /// Running (or waiting for the session), oldest first.
    pub active: Vec<String>,
    /// The newest run that has ended, and how.
    pub last: Option<(String, Status)>,
}

/// The provider cooldowns.
pub fn cooldowns(svc: &Runs) -> MutexGuard<'_, Cooldowns> {
    lock(&svc.cooldowns)
}

fn send_reply(svc: &Runs, reply: &ReplyTo, outcome: &crate::payload::Outcome) {
    if let Some(c) = crate::protocol::reply::encode_reply(reply, outcome) {
        svc.h.outbox.push(c);
    }
}

/// Sends `event` to every listener of the run (never dropped), and a copy to the session's
/// message subscribers that are not listeners (drop-if-slow; a non-terminal one — a delta, a
/// stream chunk — not at all while pressure is elevated).
pub fn emit(svc: &Runs, run: &Run, event: Event, mut payload: Value) {
    payload["runId"] = json!(run.id);
    payload["sessionKey"] = json!(run.request.session.key);
    payload["agentId"] = json!(run.request.session.agent);
    payload["seq"] = json!(run.next_seq());
    let terminal = payload["state"].as_str().is_some_and(|s| s != "delta")
        || matches!(payload["stream"].as_str(), Some("lifecycle" | "error"));
    let targets = lock(&run.inner).listeners.clone();
    let watchers: Vec<(usize, u64)> = lock(&svc.msg_subs)
        .get(&run.request.session.key)
        .map(|w| w.iter().filter(|c| !targets.contains(c)).copied().collect())
        .unwrap_or_default();
    let name = event;
    let payload: Arc<str> = Arc::from(payload.to_string());
    if !watchers.is_empty() {
        if !terminal && svc.h.pressure.get().level >= Level::Elevated {
            svc.h.metrics.events_suppressed_pressure.inc();
        } else {
            svc.h.outbox.fanout(Fanout {
                targets: watchers,
                name,
                payload: payload.clone(),
                drop_if_slow: true,
            });
        }
    }
    svc.h.outbox.fanout(Fanout {
        targets,
        name,
        payload,
        drop_if_slow: false,
    });
}

/// Tells the session's message subscribers (`sessions.messages.subscribe`) that a message was
/// written to its transcript: a `session.message` event in OpenClaw's shape, with the
/// message's transcript id and position (`seq`), drop-if-slow. Nothing is read or counted
/// when nobody watches the session.
pub fn session_message(
    svc: &Runs,
    run: &Run,
    session: &mut super::transcript::SessionFile,
    id: &str,
    mut message: Value,
) {
    let key = &run.request.session.key;
    let watchers = lock(&svc.msg_subs).get(key).cloned().unwrap_or_default();
    if watchers.is_empty() {
        return;
    }
    let seq = match session.message_count() {
        Ok(n) => n,
        Err(e) => {
            log::warn!("run {}: cannot count the messages of {key}: {e}", run.id);
            return;
        }
    };
    let mut meta = json!({"id": id, "seq": seq});
    if let Some(k) = message.get("idempotencyKey").cloned() {
        meta["idempotencyKey"] = k;
    }
    message["__openclaw"] = meta;
    let agent = &run.request.session.agent;
    let active = svc.session_runs(key).active;
    let now = clock::wall_ms();
    let payload = json!({
        "sessionKey": key, "agentId": agent, "message": message, "messageId": id,
        "messageSeq": seq, "runId": run.id,
        "sessionId": session.session_id, "updatedAt": now,
        "hasActiveRun": !active.is_empty(), "activeRunIds": active,
        "session": {
            "key": key, "agentId": agent, "sessionId": session.session_id, "updatedAt": now,
            "hasActiveRun": !active.is_empty(), "status": "running",
        },
    });
    svc.h.outbox.fanout(Fanout {
        targets: watchers,
        name: Event::SessionMessage,
        payload: Arc::from(payload.to_string()),
        drop_if_slow: true,
    });
}

/// Mirrors a tool event to the session's subscribers: drop-if-slow, and while pressure is
/// elevated only the terminal ones (`result`, `error`) go out.
pub fn mirror_tool(svc: &Runs, run: &Run, phase: &str, data: &Value) {
    let terminal = matches!(phase, "result" | "error" | "end");
    if !terminal && svc.h.pressure.get().level >= Level::Elevated {
        svc.h.metrics.events_suppressed_pressure.inc();
        return;
    }
    let subs = lock(&svc.subs)
        .get(&run.request.session.key)
        .cloned()
        .unwrap_or_default();
    if subs.is_empty() {
        return;
    }
    let payload = json!({"runId": run.id, "sessionKey": run.request.session.key, "phase": phase, "data": data, "ts": clock::wall_ms()});
    svc.h.outbox.fanout(Fanout {
        targets: subs,
        name: Event::SessionTool,
        payload: Arc::from(payload.to_string()),
        drop_if_slow: true,
    });
}

/// Tells `sessions.changed` subscribers — of every session, or of this run's — that its
/// session changed: `phase` `start` (with `reason` `create` when the run made the session)
/// and `end`. Drop-if-slow, as OpenClaw sends it: a client that misses one lists the sessions
/// again on the next.
pub fn session_changed(svc: &Runs, run: &Run, phase: &str, mut extra: Value) {
    let mut targets = lock(&svc.all_subs).clone();
    if let Some(key_subs) = lock(&svc.subs).get(&run.request.session.key) {
        for c in key_subs {
            if !targets.contains(c) {
                targets.push(*c);
            }
        }
    }
    if targets.is_empty() {
        return;
    }
    let now = clock::wall_ms();
    let mut payload = json!({
        "sessionKey": run.request.session.key,
        "agentId": run.request.session.agent,
        "phase": phase,
        "runId": run.id,
        "ts": now,
        "updatedAt": now,
        "hasActiveRun": phase == "start",
    });
    if let (Value::Object(p), Value::Object(e)) = (&mut payload, &mut extra) {
        p.append(e);
    }
    svc.h.outbox.fanout(Fanout {
        targets,
        name: Event::SessionsChanged,
        payload: Arc::from(payload.to_string()),
        drop_if_slow: true,
    });
}

/// Ends a run: remembers a client's key with the result, records the outcome, and answers
/// every waiter.
pub fn finish(svc: &Runs, run: &Run, status: Status, text: &str, error: Option<String>) {
    let ended_ms = clock::wall_ms();
    // In memory before the run is marked ended (only ended runs are pruned), so a repeat finds
    // the live record or the remembered result, never neither.
    let limits = svc.h.config.get().idempotency.run_limits();
    let pending = if remembers_key(run) {
        let r = run.remembered_result(status, text, error.as_deref(), ended_ms);
        let keys = &svc.run_keys;
        keys.insert(&run.idempotency_key, ended_ms, &r, &limits)
    } else {
        None
    };
    let waiters = {
        let mut i = lock(&run.inner);
        i.status = status;
        i.text = text.to_string();
        i.error = error;
        i.ended_ms = Some(ended_ms);
        i.ended = Some(Instant::now());
        std::mem::take(&mut i.waiters)
    };
    if let Some(p) = pending {
        svc.run_keys.append(p);
    }
    let result = run.result();
    for w in waiters {
        send_reply(svc, &w.reply, &Ok(result.clone().into()));
    }
}

/// A client's key (not a sub-agent's, not an empty one) is remembered when its run ends.
fn remembers_key(run: &Run) -> bool {
    !run.idempotency_key.is_empty() && run.request.parent.is_none()
}

/// Loads the remembered keys of finished runs (`<state>/idempotency/runs.jsonl`); until then,
/// new runs are refused (retryable).
pub fn open_keys(svc: &Runs) {
    let path = svc.h.state_dir.join("idempotency").join("runs.jsonl");
    let limits = svc.h.config.get().idempotency.run_limits();
    let loaded = svc.run_keys.open(&path, clock::wall_ms(), &limits);
    idempotency::log_loaded("runs", &path, &loaded);
}

/// Boot: [`open_keys`] on a worker (in place if it cannot be queued).
pub fn start_keys(svc: &Arc<Runs>) {
    let sh = svc.clone();
    let work: Work = Box::new(move |_ctx| {
        open_keys(&sh);
        Ok(Value::Null.into())
    });
    let spec = JobSpec {
        kind: "runs.keys.open".into(),
        pool: PoolKind::Io,
        lane: Lane::Control,
        timeout: Duration::from_secs(60),
        stall_limit: None,
    };
    if let Err(e) = svc.h.jobs.submit(spec, ReplyTo::Internal, work) {
        log::warn!("runs: cannot queue loading the idempotency keys ({e}); loading them now");
        open_keys(svc);
    }
}

// ---- methods -------------------------------------------------------------------------------

/// Registers and queues a run, or finds the one this idempotency key already started: its live
/// record, or the run rebuilt from its remembered result. An empty key is never deduplicated.
/// Returns the run and whether it is new.
pub fn start(
    svc: &Arc<Runs>,
    idem: &str,
    request: Request,
    reply: ReplyTo,
    listener: Option<(usize, u64)>,
) -> Result<(Arc<Run>, bool), RpcError> {
    if request.parent.is_none()
        && let Some(why) = idempotency::key_problem(idem)
    {
        return Err(RpcError::invalid(why));
    }
    if !idem.is_empty()
        && let Some(id) = lock(&svc.by_idem).get(idem).cloned()
        && let Some(run) = svc.get(&id)
    {
        if let Some(l) = listener {
            let mut i = lock(&run.inner);
            if !i.listeners.contains(&l) {
                i.listeners.push(l);
            }
        }
        return Ok((run, false));
    }
    // A run that finished within the window, whose record is gone (pruned, or a restart).
    if !idem.is_empty() {
        let window_ms = svc.h.config.get().idempotency.run_limits().window_ms;
        match svc.run_keys.get(idem, clock::wall_ms(), window_ms) {
            Lookup::Hit(first) => match Run::remembered(idem, &first) {
                Some(run) => return Ok((Arc::new(run), false)),
                None => log::warn!("runs: a remembered result is not a finished run; ignored"),
            },
            Lookup::Loading => {
                return Err(RpcError::unavailable(
                    "keel is starting: new agent runs wait until its idempotency keys are \
                     loaded; retry",
                    1_000,
                ));
            }
            Lookup::Miss => {}
        }
    }
    // Memory past the critical threshold: a new run (a transcript, a provider stream, its
    // events) would only add to it. Everything already running continues.
    if let Some(why) = svc.h.pressure.get().memory_critical {
        svc.h.metrics.rejected_pressure.inc();
        return Err(RpcError::unavailable(
            format!("new agent runs are refused while memory is critical ({why}); retry later"),
            5_000,
        ));
    }
    svc.prune(Instant::now());
    let cfg = svc.h.config.get();
    let run = Arc::new(Run {
        id: clock::Rng::from_os().uuid(),
        idempotency_key: idem.to_string(),
        request,
        created_ms: clock::wall_ms(),
        inner: Mutex::new(Inner {
            status: Status::Running,
            text: String::new(),
            error: None,
            ended_ms: None,
            ended: None,
            job: None,
            listeners: listener.into_iter().collect(),
            waiters: Vec::new(),
            seq: 0,
            meta: json!({}),
        }),
    });
    let sh = svc.clone();
    let r = run.clone();
    let work: Work = Box::new(move |ctx| super::engine::execute(&sh, &r, ctx));
    let spec = JobSpec {
        kind: "agent.run".into(),
        pool: PoolKind::Io,
        lane: Lane::Interactive,
        timeout: cfg.agents.run_timeout + Duration::from_secs(5),
        stall_limit: None,
    };
    let job = svc.h.jobs.submit(spec, reply, work)?;
    lock(&run.inner).job = Some(job);
    lock(&svc.runs).insert(run.id.clone(), run.clone());
    if !idem.is_empty() {
        lock(&svc.by_idem).insert(idem.to_string(), run.id.clone());
    }
    Ok((run, true))
}

impl Runs {
    /// Answers `reply` (a waiter's, or a repeated `agent` call's) through the outbox.
    pub fn reply(&self, reply: &ReplyTo, outcome: &crate::payload::Outcome) {
        send_reply(self, reply, outcome);
    }

    /// `agent`'s second `res` for a run that is still running: sent when it ends, or after
    /// [`MAX_WAIT`].
    pub fn answer_when_done(&self, run: &Run, reply: ReplyTo) {
        self.add_waiter(
            run,
            Waiter {
                reply,
                deadline: Instant::now() + MAX_WAIT,
            },
        );
    }

    /// `agent.wait`: the run's final result if it has ended or `timeout` is zero (`status:
    /// "timeout"`); otherwise `None`, and `reply` is answered when it ends or the wait times
    /// out. `listener` (a WebSocket) also gets the run's events meanwhile.
    pub fn wait(
        &self,
        run: &Arc<Run>,
        timeout: Duration,
        listener: Option<(usize, u64)>,
        reply: ReplyTo,
    ) -> Option<Value> {
        let mut i = lock(&run.inner);
        if i.status != Status::Running {
            drop(i);
            return Some(run.result());
        }
        if timeout.is_zero() {
            return Some(json!({"runId": run.id, "status": "timeout", "runStatus": "running"}));
        }
        if let Some(l) = listener
            && !i.listeners.contains(&l)
        {
            i.listeners.push(l);
        }
        let deadline = Instant::now() + timeout;
        self.note_deadline(deadline);
        i.waiters.push(Waiter { reply, deadline });
        None
    }

    /// Cancels a run's job (its provider socket is shut at once); false if it was not running.
    pub fn abort(&self, run: &Run) -> bool {
        let job = lock(&run.inner).job;
        match job.and_then(|j| self.h.jobs.get(j)) {
            Some(info) => self.h.jobs.cancel_job(&info, CancelReason::Client),
            None => false,
        }
    }

    /// Adds (`on`) or removes a connection's `sessions.changed` events of every session.
    pub fn subscribe_all(&self, conn: (usize, u64), on: bool) {
        let mut all = lock(&self.all_subs);
        all.retain(|c| *c != conn);
        if on {
            all.push(conn);
        }
    }

    /// Adds (`on`) or removes a connection's watch on a session's messages
    /// (`sessions.messages.subscribe`): its runs' `chat` and `agent` events and its
    /// `session.message` events.
    pub fn subscribe_messages(&self, key: &str, conn: (usize, u64), on: bool) {
        let mut subs = lock(&self.msg_subs);
        let list = subs.entry(key.to_string()).or_default();
        list.retain(|c| *c != conn);
        if on {
            list.push(conn);
        }
        if list.is_empty() {
            subs.remove(key);
        }
    }

    /// Cancels every running run of a session; returns their ids.
    pub fn abort_session(&self, key: &str) -> Vec<String> {
        let active = self.session_runs(key).active;
        active
            .into_iter()
            .filter(|id| self.get(id).is_some_and(|r| self.abort(&r)))
            .collect()
    }

    /// Adds (`on`) or removes a connection's `session.tool` mirrors of a session.
    pub fn subscribe(&self, key: &str, conn: (usize, u64), on: bool) {
        let mut subs = lock(&self.subs);
        let list = subs.entry(key.to_string()).or_default();
        list.retain(|c| *c != conn);
        if on {
            list.push(conn);
        }
        if list.is_empty() {
            subs.remove(key);
        }
    }
}

/// `agent.wait` timeouts: the tick compares one atomic; a job answers the waiters.
impl Periodic for Arc<Runs> {
    fn name(&self) -> &'static str {
        "runs"
    }

    fn tick(&self, now: Instant, _level: crate::pressure::Level) {
        if !self.waiter_due(now) || self.expiring.swap(true, Ordering::AcqRel) {
            return;
        }
        let svc = self.clone();
        let work: Work = Box::new(move |_ctx| {
            svc.expiring.store(false, Ordering::Release);
            svc.expire_waiters(Instant::now());
            Ok(Value::Null.into())
        });
        let spec = JobSpec {
            kind: "agent.wait.expire".into(),
            pool: PoolKind::Cpu,
            lane: Lane::Control,
            timeout: Duration::from_secs(30),
            stall_limit: None,
        };
        if let Err(e) = self.h.jobs.submit(spec, ReplyTo::Internal, work) {
            self.expiring.store(false, Ordering::Release);
            log::debug!("agent.wait expiry not queued ({e}); next tick");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AgentId;
    use crate::jobs::system::Detached;

    /// The agent service with no gateway around it (jobs stay queued).
    fn test_runs() -> (Runs, Detached) {
        let d = Detached::new(crate::config::Config::default());
        let delivery = Arc::new(Delivery::new(crate::delivery::service::Handles {
            jobs: d.jobs.clone(),
            config: d.config.clone(),
            lifecycle: d.lifecycle.clone(),
            state_dir: PathBuf::from("state"),
            test_hooks: false,
        }));
        let runs = Runs::new(Handles {
            jobs: d.jobs.clone(),
            outbox: d.jobs.outbox.clone(),
            config: d.config.clone(),
            pressure: d.pressure.clone(),
            metrics: Arc::new(Metrics::default()),
            delivery,
            state_dir: PathBuf::from("state"),
        });
        (runs, d)
    }

    fn finished(runs: &Runs, n: usize, ended: Instant) {
        let mut map = lock(&runs.runs);
        for _ in 0..n {
            let id = clock::Rng::from_os().uuid();
            let request = Request::top(
                "m".into(),
                SessionKey::of(&AgentId::main(), "main"),
                Origin::default(),
            );
            let run = Arc::new(Run {
                id: id.clone(),
                idempotency_key: format!("k-{id}"),
                request,
                created_ms: clock::wall_ms(),
                inner: Mutex::new(Inner {
                    status: Status::Ok,
                    text: String::new(),
                    error: None,
                    ended_ms: Some(clock::wall_ms()),
                    ended: Some(ended),
                    job: None,
                    listeners: Vec::new(),
                    waiters: Vec::new(),
                    seq: 0,
                    meta: json!({}),
                }),
            });
            lock(&runs.by_idem).insert(run.idempotency_key.clone(), id.clone());
            map.insert(id, run);
        }
    }

    #[test]
    fn finished_runs_are_swept_at_most_every_second_below_the_cap() {
        let runs = test_runs().0;
        let t0 = Instant::now() + KEEP_FINISHED + Duration::from_secs(10);
        finished(&runs, 1200, Instant::now());
        runs.prune(t0);
        assert_eq!(lock(&runs.runs).len(), 0, "all expired");
        assert!(lock(&runs.by_idem).is_empty(), "their keys too");
        finished(&runs, 1200, Instant::now());
        runs.prune(t0 + Duration::from_millis(500));
        assert_eq!(lock(&runs.runs).len(), 1200, "swept less than a second ago");
        runs.prune(t0 + PRUNE_EVERY);
        assert_eq!(lock(&runs.runs).len(), 0);
    }

    #[test]
    fn the_cap_holds_whenever_it_is_reached() {
        let runs = test_runs().0;
        let now = Instant::now();
        finished(&runs, MAX_RUNS / 2, now);
        runs.prune(now); // sweeps (nothing expired) and starts the 1 s spacing
        finished(&runs, MAX_RUNS / 2, now);
        runs.prune(now);
        assert_eq!(
            lock(&runs.runs).len(),
            MAX_RUNS - 1,
            "room for the run being started"
        );
        assert_eq!(lock(&runs.by_idem).len(), MAX_RUNS - 1);
    }

    #[test]
    fn a_remembered_result_rebuilds_the_run_that_gives_it_back() {
        let runs = test_runs().0;
        finished(&runs, 1, Instant::now());
        let run = lock(&runs.runs).values().next().unwrap().clone();
        lock(&run.inner).meta = json!({"model": "m", "usage": {"input": 3}});
        let ended = lock(&run.inner).ended_ms.unwrap();
        // Nothing to cut: exactly what the live record answers.
        let stored = run.remembered_result(Status::Ok, "", None, ended);
        assert_eq!(stored, run.result());

        let text = "é".repeat(REMEMBERED_TEXT); // twice the cap, in bytes
        let error = "x".repeat(REMEMBERED_ERROR + 1);
        let stored = run.remembered_result(Status::Error, &text, Some(&error), ended);
        let kept = stored["result"]["payloads"][0]["text"].as_str().unwrap();
        assert!(kept.len() < REMEMBERED_TEXT + 100, "{}", kept.len());
        assert!(kept.ends_with(" bytes kept]"), "the cut is marked");
        assert!(stored["error"].as_str().unwrap().len() < REMEMBERED_ERROR + 100);
        assert_eq!(stored["summary"], "é".repeat(200), "from the whole text");
        let again = Run::remembered(&run.idempotency_key, &stored).unwrap();
        assert_eq!(again.result(), stored);
        assert_eq!(again.status(), Status::Error);
        // Not a finished run: not rebuilt.
        let mut running = stored.clone();
        running["status"] = json!("running");
        assert!(Run::remembered("k", &running).is_none());
        assert!(Run::remembered("k", &json!({"status": "ok"})).is_none());
        assert!(Run::remembered("k", &json!("ok")).is_none());
    }
}
