//! The delivery service: the durable queue opened at boot (on a worker), enqueueing with
//! route validation, and dispatch. Each channel with something due gets one dispatch job on
//! the io pool at a time — started at once by an enqueue or a manual retry, and by the
//! watchdog's tick for retries that come due — so a slow or hanging endpoint holds up only its
//! own channel. The job sends that channel's entries oldest first, one at a time (so a
//! recipient sees them in order), marking each `sending` on disk before calling the channel
//! and recording the outcome after, until nothing of the channel is due or its time budget is
//! spent. Just before the first byte of each request the entry's wire mark is written
//! ([`queue::mark_on_wire`]), so the next boot knows whether it can have left. A drain stops
//! starting new sends; an entry in flight at the hard deadline stays `sending` on disk and is
//! settled at the next boot by its mark and its channel's `delivery.onUnknown`.
//!
//! Threads: the queue's lock is held across `fsync` by workers, so the reactor (`/metrics`)
//! and the watchdog (the tick, before its drain check) never take it. After every change the
//! holder publishes a [`Summary`] (counts, `unknown_after_send`, when the next entry is due):
//! readers that must not wait read that, and the watchdog's [`Periodic::tick`] compares the
//! due time with its clock and, when something is due, submits the job that looks at the queue.
//!
//! `send` remembers each idempotency key with its answer for `gateway.idempotency.windowMs`
//! (`<state>/idempotency/send.jsonl`, loaded by the same boot job, before the queue is
//! installed): a repeat inside the window gets the first answer and queues nothing, even after
//! the entry was sent and removed, or after a restart. The queue's own check (a key whose
//! entry is still queued) stays, for an entry that outlives the window while it retries.

use super::channels;
use super::queue::{self, Entry, ErrorClass, OnUnknown, Queue, RetryPolicy, Route, State, Summary};
use super::split;
use crate::clock::{self, Rng};
use crate::config::live::ConfigCell;
use crate::error::{Code, RpcError};
use crate::idempotency::{self, Lookup};
use crate::jobs::periodic::Periodic;
use crate::jobs::system::JobSystem;
use crate::jobs::{JobCtx, JobSpec, Lane, PoolKind, Work};
use crate::metrics::Counter;
use crate::net::Limits;
use crate::phase::{LifecycleCell, Phase};
use crate::pressure::Level;
use crate::protocol::reply::ReplyTo;
use crate::sync::lock;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most messages one reply is split into; the rest is cut with a note saying so.
const MAX_PARTS: usize = 20;
/// Entries taken from the queue at a time by a dispatch job.
const BATCH: usize = 32;
/// A dispatch job starts no new send after this long; the next tick continues its channel.
const RUN_BUDGET: Duration = Duration::from_secs(10);
/// One send's time limits.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
const SEND_STALL: Duration = Duration::from_secs(15);

#[derive(Default)]
pub struct DeliveryStats {
    pub sent: Counter,
    pub failed_transient: Counter,
    pub dead_letters: Counter,
    pub refused: Counter,
    /// What the boot found mid-send: sent again as never sent, sent again after reaching the
    /// wire, held.
    pub recovered_requeued: Counter,
    pub recovered_resent: Counter,
    pub recovered_held: Counter,
}

/// What the delivery service needs of the gateway, and nothing more.
pub struct Handles {
    pub jobs: Arc<JobSystem>,
    pub config: Arc<ConfigCell>,
    pub lifecycle: Arc<LifecycleCell>,
    pub state_dir: PathBuf,
    /// Test hooks (`KEEL_TEST_DELIVERY_*`) are honoured only with `KEEL_TEST_HOOKS=1`.
    pub test_hooks: bool,
}

/// What a channel's sends last did (since start), for `channels.status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelActivity {
    pub sent: u64,
    pub failed: u64,
    pub last_sent_ms: Option<u64>,
    /// The last failure's message (credentials scrubbed, as every channel error is).
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
}

pub struct Delivery {
    queue: Mutex<Option<Queue>>,
    /// Per channel: what its sends last did. Held for an update or a copy.
    activity: Mutex<BTreeMap<String, ChannelActivity>>,
    /// The last [`Summary`] of the queue; its lock is held for a pointer swap or copy only.
    summary: Mutex<Arc<Summary>>,
    /// Wall ms when the earliest pending entry is due (`u64::MAX`: none, or not open yet).
    next_due_ms: AtomicU64,
    /// A job that schedules dispatch is queued or running.
    scheduling: AtomicBool,
    /// Channels with a dispatch job queued or running.
    dispatching: Mutex<BTreeSet<String>>,
    policy: RetryPolicy,
    pub stats: DeliveryStats,
    /// `send`'s idempotency keys and first answers.
    pub sent_keys: idempotency::Store,
    /// Keys of runs' replies queued by [`Delivery::enqueue_reply`], kept a day
    /// (`<state>/idempotency/replies.jsonl`): whether a run's reply was ever queued, after its
    /// entry was sent and removed, for a run resumed after a restart.
    pub reply_keys: idempotency::Store,
    h: Handles,
}

/// The keys [`Delivery::enqueue_reply`] takes begin with this: an entry found at boot with
/// one is a reply whose key must be remembered.
pub const REPLY_KEY_PREFIX: &str = "reply:";

/// How long, and how many, reply keys are remembered: a run interrupted by a restart is
/// resumed at the next boot, which may come hours later.
const REPLY_KEYS_WINDOW_MS: u64 = 24 * 3_600_000;

fn reply_limits() -> idempotency::Limits {
    idempotency::Limits {
        window_ms: REPLY_KEYS_WINDOW_MS,
        max_keys: 10_000,
        max_bytes: 4 << 20,
    }
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(Code::Internal, e.to_string())
}

impl Delivery {
    pub fn new(h: Handles) -> Delivery {
        Delivery {
            queue: Mutex::new(None),
            activity: Mutex::default(),
            summary: Mutex::new(Arc::new(Summary::default())),
            next_due_ms: AtomicU64::new(u64::MAX),
            scheduling: AtomicBool::new(false),
            dispatching: Mutex::new(BTreeSet::new()),
            policy: RetryPolicy::default(),
            stats: DeliveryStats::default(),
            sent_keys: idempotency::Store::default(),
            reply_keys: idempotency::Store::default(),
            h,
        }
    }

    /// Boot: open (and recover) the queue on a worker.
    pub fn start(self: &Arc<Self>) {
        let svc = self.clone();
        let work: Work = Box::new(move |_ctx: &JobCtx| {
            // Before the queue is installed: a send is only served once its key can be found.
            let keys = svc.h.state_dir.join("idempotency").join("send.jsonl");
            let limits = svc.h.config.get().idempotency.send_limits();
            let loaded = svc.sent_keys.open(&keys, clock::wall_ms(), &limits);
            idempotency::log_loaded("send", &keys, &loaded);
            let keys = svc.h.state_dir.join("idempotency").join("replies.jsonl");
            let loaded = svc
                .reply_keys
                .open(&keys, clock::wall_ms(), &reply_limits());
            idempotency::log_loaded("replies", &keys, &loaded);
            let dir = svc.queue_dir();
            // Decided per route from the config of the moment: a channel no longer configured
            // holds its message.
            let cfg = svc.h.config.get();
            let on_unknown = |route: &Route| {
                cfg.channels
                    .0
                    .get(&route.channel)
                    .map_or(OnUnknown::Hold, |c| c.on_unknown())
            };
            match Queue::open_with(&dir, &on_unknown) {
                Ok(mut q) => {
                    // Test hooks: every write fails as on a full disk, or stalls.
                    if svc.h.test_hooks {
                        if std::env::var("KEEL_TEST_DELIVERY_FULL_DISK").as_deref() == Ok("1") {
                            q.set_fail_writes(true);
                        }
                        if let Some(ms) = std::env::var("KEEL_TEST_DELIVERY_WRITE_STALL_MS")
                            .ok()
                            .and_then(|v| v.parse::<u64>().ok())
                        {
                            q.set_write_delay(Duration::from_millis(ms));
                        }
                    }
                    // A reply whose key did not reach the log (keel was killed between
                    // writing the entry and the key) is remembered now, before anything can
                    // send the entry and remove it: "queued" stays "held, or in the log".
                    let now = clock::wall_ms();
                    for e in q.list(None, usize::MAX) {
                        let key = &e.idempotency_key;
                        if key.starts_with(REPLY_KEY_PREFIX)
                            && svc.reply_keys.get(key, now, REPLY_KEYS_WINDOW_MS) == Lookup::Miss
                            && let Some(p) = svc.reply_keys.insert(
                                key,
                                now,
                                &json!({"id": e.id}),
                                &reply_limits(),
                            )
                        {
                            svc.reply_keys.append(p);
                        }
                    }
                    let r = q.recovery().clone();
                    svc.stats.recovered_requeued.add(r.requeued.len() as u64);
                    svc.stats.recovered_resent.add(r.resent.len() as u64);
                    svc.stats
                        .recovered_held
                        .add(r.unknown_after_send.len() as u64);
                    // Installed before it is logged: the line tells tests and operators sends work.
                    {
                        let mut slot = lock(&svc.queue);
                        svc.publish(&q);
                        *slot = Some(q);
                    }
                    log_recovery(&dir, &r);
                }
                Err(e) => log::error!(
                    "delivery queue {}: cannot open: {e}; sends are refused",
                    dir.display()
                ),
            }
            Ok(Value::Null.into())
        });
        let spec = JobSpec {
            kind: "delivery.open".into(),
            pool: PoolKind::Io,
            lane: Lane::Control,
            timeout: Duration::from_secs(60),
            stall_limit: None,
        };
        if let Err(e) = self.h.jobs.submit(spec, ReplyTo::Internal, work) {
            log::error!("delivery: cannot schedule opening the queue: {e}");
        }
    }

    fn queue_dir(&self) -> PathBuf {
        self.h.state_dir.join("delivery")
    }

    /// Publishes what readers that must not wait are shown; called by whoever just changed
    /// the queue, under its lock.
    fn publish(&self, q: &Queue) {
        let s = q.summary();
        self.next_due_ms
            .store(s.next_due_ms.unwrap_or(u64::MAX), Ordering::Release);
        *lock(&self.summary) = Arc::new(s);
    }

    /// The last published summary (never the queue's lock).
    pub fn summary(&self) -> Arc<Summary> {
        lock(&self.summary).clone()
    }

    /// Per channel, what its sends last did (channels that sent nothing yet are absent).
    pub fn activity(&self) -> BTreeMap<String, ChannelActivity> {
        lock(&self.activity).clone()
    }

    /// Whether a dispatch job of `channel` is queued or running.
    pub fn dispatching(&self, channel: &str) -> bool {
        lock(&self.dispatching).contains(channel)
    }

    /// Runs `f` on the open queue, then publishes its summary.
    fn with_queue<R>(&self, f: impl FnOnce(&mut Queue) -> R) -> Result<R, RpcError> {
        let mut guard = self.queue()?;
        let q = guard.as_mut().ok_or_else(|| internal("queue vanished"))?;
        let r = f(q);
        self.publish(q);
        Ok(r)
    }

    fn queue(&self) -> Result<MutexGuard<'_, Option<Queue>>, RpcError> {
        let q = lock(&self.queue);
        if q.is_none() {
            return Err(RpcError::unavailable(
                "the delivery queue is not open (starting, or it failed to open: see the log)",
                1000,
            ));
        }
        Ok(q)
    }

    /// Validates the route against its channel and queues the message durably, split into
    /// parts at the channel's length limit; returns the first part's entry.
    pub fn enqueue(
        self: &Arc<Self>,
        route: Route,
        text: &str,
        idempotency_key: &str,
        extra: Value,
    ) -> Result<Entry, RpcError> {
        let payloads = self.payloads(&route, text, extra)?;
        let mut entries = self
            .with_queue(|q| q.enqueue_parts(route, payloads, idempotency_key, clock::wall_ms()))?
            .map_err(not_queued)?;
        // Dispatch starts now rather than at the watchdog's next tick.
        self.schedule();
        Ok(entries.swap_remove(0))
    }

    /// Queues a run's reply once per `key` (which begins with [`REPLY_KEY_PREFIX`]): `Ok(None)`
    /// when a reply with that key was queued
    /// before (still queued, or remembered for a day), nothing queued then. The key is
    /// remembered under the queue's lock, after the entry is on disk and before any dispatch
    /// can see it — and at boot for an entry whose key a kill kept from the log, before the
    /// queue is installed — so "a reply was queued" is exactly "the queue holds the key, or
    /// the replies' log has it" ([`Delivery::reply_queued`]), whenever keel is killed. (The
    /// line is appended without fsync, like every idempotency log: a power loss can take it.)
    pub fn enqueue_reply(
        self: &Arc<Self>,
        route: Route,
        text: &str,
        key: &str,
        extra: Value,
    ) -> Result<Option<Entry>, RpcError> {
        if !key.starts_with(REPLY_KEY_PREFIX) {
            return Err(internal(format!(
                "a reply's key must begin with {REPLY_KEY_PREFIX:?}"
            )));
        }
        let payloads = self.payloads(&route, text, extra)?;
        let entry = self.with_queue(|q| {
            let now = clock::wall_ms();
            match self.reply_keys.get(key, now, REPLY_KEYS_WINDOW_MS) {
                Lookup::Hit(_) => return Ok(None),
                Lookup::Loading => {
                    return Err(RpcError::unavailable(
                        "the delivery queue is not open (starting)",
                        1000,
                    ));
                }
                Lookup::Miss => {}
            }
            if q.has_key(key) {
                return Ok(None);
            }
            let mut parts = q
                .enqueue_parts(route, payloads, key, now)
                .map_err(not_queued)?;
            let first = parts.swap_remove(0);
            let answer = json!({"id": first.id});
            if let Some(p) = self.reply_keys.insert(key, now, &answer, &reply_limits()) {
                self.reply_keys.append(p);
            }
            Ok(Some(first))
        })??;
        if entry.is_some() {
            self.schedule();
        }
        Ok(entry)
    }

    /// Whether the queue is open (at boot it opens on a worker; the reply keys are loaded
    /// before it is installed). Takes the queue's lock: not for the reactor.
    pub fn is_open(&self) -> bool {
        lock(&self.queue).is_some()
    }

    /// Whether a reply with `key` was queued by [`Delivery::enqueue_reply`] (the queue holds
    /// it, in any state, or it was sent within the last day). `Err`: not known yet (the
    /// queue is opening).
    pub fn reply_queued(&self, key: &str) -> Result<bool, RpcError> {
        let q = self.queue()?;
        let held = q.as_ref().is_some_and(|q| q.has_key(key));
        match self
            .reply_keys
            .get(key, clock::wall_ms(), REPLY_KEYS_WINDOW_MS)
        {
            Lookup::Hit(_) => Ok(true),
            Lookup::Miss => Ok(held),
            Lookup::Loading => Err(RpcError::unavailable(
                "the delivery queue is not open (starting)",
                1000,
            )),
        }
    }

    /// `send`: the first answer for `key` if it was given within the window (nothing is
    /// queued then); otherwise [`Delivery::enqueue`], and the answer is remembered once the
    /// entry is on disk (a failed enqueue stays retryable).
    pub fn send(self: &Arc<Self>, route: Route, text: &str, key: &str) -> Result<Value, RpcError> {
        let limits = self.h.config.get().idempotency.send_limits();
        if let Lookup::Hit(first) = self.sent_keys.get(key, clock::wall_ms(), limits.window_ms) {
            return Ok(first);
        }
        let payloads = self.payloads(&route, text, json!({}))?;
        let first = self.with_queue(|q| {
            let now = clock::wall_ms();
            // Again under the queue's lock, which orders sends: one with the same key may have
            // been queued (and remembered) since the look above.
            if let Lookup::Hit(first) = self.sent_keys.get(key, now, limits.window_ms) {
                return Ok(Err(first));
            }
            let parts = q
                .enqueue_parts(route, payloads, key, now)
                .map_err(not_queued)?;
            let e = &parts[0];
            let mut answer = json!({"messageId": e.id, "id": e.id, "status": e.state.as_str(), "channel": e.route.channel, "to": e.route.to});
            if parts.len() > 1 {
                answer["parts"] = json!(parts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>());
            }
            let pending = self.sent_keys.insert(key, now, &answer, &limits);
            Ok(Ok((answer, pending)))
        })??;
        let (answer, pending) = match first {
            Err(repeat) => return Ok(repeat),
            Ok(new) => new,
        };
        // The line is written after the queue's lock is released; the key is already found
        // in memory.
        if let Some(p) = pending {
            self.sent_keys.append(p);
        }
        self.schedule();
        Ok(answer)
    }

    /// The route checked against its channel, and the message as the queue stores it: one
    /// payload per part of the text split at the channel's limit.
    fn payloads(&self, route: &Route, text: &str, extra: Value) -> Result<Vec<Value>, RpcError> {
        let cfg = self.h.config.get();
        if !cfg.channels.0.contains_key(&route.channel) {
            self.stats.refused.inc();
            return Err(RpcError::new(
                Code::ConfigError,
                format!(
                    "delivery: channel {} is not configured (channels.{})",
                    route.channel, route.channel
                ),
            ));
        }
        if let Some(Err(e)) = cfg
            .channels
            .0
            .get(&route.channel)
            .map(|c| c.for_account(route.account_id.as_deref()).map(|_| ()))
        {
            self.stats.refused.inc();
            return Err(RpcError::new(Code::ConfigError, format!("delivery: {e}")));
        }
        if let Err(e) = channels::validate_address(&route.channel, &route.to) {
            self.stats.refused.inc();
            return Err(RpcError::invalid(e));
        }
        let limit = cfg
            .channels
            .0
            .get(&route.channel)
            .and_then(|c| c.text_limit());
        let texts = match limit {
            Some(limit) => split::split(text, limit, MAX_PARTS),
            None => vec![text.to_string()],
        };
        Ok(texts
            .into_iter()
            .map(|text| {
                let mut payload = json!({"text": text});
                if let (Value::Object(p), Value::Object(x)) = (&mut payload, &extra) {
                    p.extend(x.clone());
                }
                payload
            })
            .collect())
    }

    pub fn list(&self, state: Option<State>, limit: usize) -> Result<Vec<Entry>, RpcError> {
        let q = self.queue()?;
        Ok(q.as_ref().map(|q| q.list(state, limit)).unwrap_or_default())
    }

    pub fn retry(self: &Arc<Self>, id: &str) -> Result<Entry, RpcError> {
        let entry = self
            .with_queue(|q| q.retry(id, clock::wall_ms()))?
            .map_err(|e| RpcError::new(Code::NotFound, e.to_string()))?;
        self.schedule();
        Ok(entry)
    }

    pub fn drop_entry(&self, id: &str) -> Result<Entry, RpcError> {
        self.with_queue(|q| q.drop_entry(id))?
            .map_err(|e| RpcError::new(Code::NotFound, e.to_string()))
    }

    /// Entries by state, as last published (empty until the queue is open).
    pub fn counts(&self) -> BTreeMap<State, usize> {
        self.summary().counts.clone()
    }

    /// Queues a dispatch job for each channel that has something due and no job yet. Called
    /// after an enqueue or retry, by a dispatch job that made progress, and by the job the
    /// watchdog's tick submits when the published due time has come. Takes the queue's lock:
    /// never on the reactor or the watchdog.
    pub fn schedule(self: &Arc<Self>) {
        if self.h.lifecycle.phase() != Phase::Serving {
            return;
        }
        let due = match lock(&self.queue).as_ref() {
            Some(q) => q.due_channels(clock::wall_ms()),
            None => return,
        };
        for channel in due {
            if !lock(&self.dispatching).insert(channel.clone()) {
                continue;
            }
            let svc = self.clone();
            let ch = channel.clone();
            let work: Work = Box::new(move |ctx: &JobCtx| {
                let (r, progress) = svc.dispatch(&ch, ctx);
                lock(&svc.dispatching).remove(&ch);
                // Something may have been enqueued while the job was finishing.
                if progress {
                    svc.schedule();
                }
                r
            });
            let spec = JobSpec {
                kind: "delivery.dispatch".into(),
                pool: PoolKind::Io,
                lane: Lane::Interactive,
                timeout: RUN_BUDGET + SEND_TIMEOUT + Duration::from_secs(10),
                stall_limit: Some(SEND_TIMEOUT + Duration::from_secs(5)),
            };
            if let Err(e) = self.h.jobs.submit(spec, ReplyTo::Internal, work) {
                log::debug!("delivery {channel}: dispatch not queued ({e}); next tick");
                lock(&self.dispatching).remove(&channel);
            }
        }
    }

    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP keel_delivery_queue Outbound messages, by state."
        );
        let _ = writeln!(out, "# TYPE keel_delivery_queue gauge");
        let counts = self.counts();
        for s in State::ALL {
            let _ = writeln!(
                out,
                "keel_delivery_queue{{state=\"{}\"}} {}",
                s.as_str(),
                counts.get(&s).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "# HELP keel_delivery_attempts_total Send attempts, by result."
        );
        let _ = writeln!(out, "# TYPE keel_delivery_attempts_total counter");
        for (r, c) in [
            ("sent", &self.stats.sent),
            ("transient", &self.stats.failed_transient),
            ("dead_letter", &self.stats.dead_letters),
        ] {
            let _ = writeln!(
                out,
                "keel_delivery_attempts_total{{result=\"{r}\"}} {}",
                c.get()
            );
        }
        let _ = writeln!(
            out,
            "# HELP keel_delivery_recovered_total Messages found mid-send at boot, by what was done: requeued (never sent), resent, held (unknown_after_send)."
        );
        let _ = writeln!(out, "# TYPE keel_delivery_recovered_total counter");
        for (how, c) in [
            ("requeued", &self.stats.recovered_requeued),
            ("resent", &self.stats.recovered_resent),
            ("held", &self.stats.recovered_held),
        ] {
            let _ = writeln!(
                out,
                "keel_delivery_recovered_total{{how=\"{how}\"}} {}",
                c.get()
            );
        }
        crate::metrics::family(
            out,
            "keel_delivery_held",
            "gauge",
            "Messages held as unknown_after_send until an operator retries or drops them.",
            counts.get(&State::UnknownAfterSend).copied().unwrap_or(0) as u64,
        );
        crate::metrics::family(
            out,
            "keel_delivery_refused_total",
            "counter",
            "Messages refused at enqueue (channel or address).",
            self.stats.refused.get(),
        );
    }

    /// For `status` and the dump, from the published summary (never the queue's lock).
    pub fn status_json(&self) -> Value {
        let summary = self.summary();
        let counts: serde_json::Map<String, Value> = summary
            .counts
            .iter()
            .map(|(s, n)| (s.as_str().to_string(), json!(n)))
            .collect();
        let held = summary
            .counts
            .get(&State::UnknownAfterSend)
            .copied()
            .unwrap_or(0);
        json!({
            "queue": counts,
            "held": held,
            "unknownAfterSend": summary.unknown_after_send,
            "sent": self.stats.sent.get(),
            "deadLetters": self.stats.dead_letters.get(),
            "recoveredAtBoot": {
                "requeued": self.stats.recovered_requeued.get(),
                "resent": self.stats.recovered_resent.get(),
                "held": self.stats.recovered_held.get(),
            },
        })
    }

    /// What `/readyz` says while messages are held (not a failure: keel serves, but a person
    /// has something to decide). From the published summary.
    pub fn readiness_notes(&self) -> Vec<String> {
        let summary = self.summary();
        match summary.counts.get(&State::UnknownAfterSend).copied() {
            Some(n) if n > 0 => vec![format!(
                "delivery: {n} message(s) held as unknown_after_send (may or may not have been \
                 delivered before a crash): delivery.list {{\"state\": \"unknown_after_send\"}}, \
                 then delivery.retry or delivery.drop each"
            )],
            _ => Vec::new(),
        }
    }
}

impl Periodic for Arc<Delivery> {
    fn name(&self) -> &'static str {
        "delivery"
    }

    /// Retries that come due: compared with the published due time, and looked at by a job.
    fn tick(&self, _now: Instant, _level: Level) {
        if self.h.lifecycle.phase() != Phase::Serving
            || clock::wall_ms() < self.next_due_ms.load(Ordering::Acquire)
            || self.scheduling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let svc = self.clone();
        let work: Work = Box::new(move |_ctx: &JobCtx| {
            svc.scheduling.store(false, Ordering::Release);
            svc.schedule();
            Ok(Value::Null.into())
        });
        let spec = JobSpec {
            kind: "delivery.schedule".into(),
            pool: PoolKind::Io,
            lane: Lane::Control,
            timeout: Duration::from_secs(30),
            stall_limit: None,
        };
        if let Err(e) = self.h.jobs.submit(spec, ReplyTo::Internal, work) {
            self.scheduling.store(false, Ordering::Release);
            log::debug!("delivery: scheduling not queued ({e}); next tick");
        }
    }
}

/// The boot's line on what the queue held (tests and operators wait for it: sends work once it
/// is out), and once, a warning naming each held message and what to do about it.
fn log_recovery(dir: &std::path::Path, r: &queue::Recovery) {
    let ids = |list: &[String]| {
        const SHOWN: usize = 20;
        match list.len() {
            0 => String::new(),
            n if n <= SHOWN => format!(" ({})", list.join(", ")),
            n => format!(" ({}, … {} more)", list[..SHOWN].join(", "), n - SHOWN),
        }
    };
    log::info!(
        "delivery queue {}: {} pending resumed, {} requeued (never sent){}, {} resent{}, {} unknown after send{}, {} corrupt, {} temp files removed",
        dir.display(),
        r.resumed,
        r.requeued.len(),
        ids(&r.requeued),
        r.resent.len(),
        ids(&r.resent),
        r.unknown_after_send.len(),
        ids(&r.unknown_after_send),
        r.corrupt.len(),
        r.temp_removed
    );
    if !r.unknown_after_send.is_empty() {
        log::warn!(
            "delivery: {} message(s) had reached their channel's connection when keel stopped, \
             and whether the channel took them is unknown; they are held as unknown_after_send \
             (delivery.onUnknown: hold){}. See them with delivery.list {{\"state\": \
             \"unknown_after_send\"}}, then delivery.retry {{\"id\"}} to send one again or \
             delivery.drop {{\"id\"}} to discard it; channels.<channel>.delivery.onUnknown: \
             \"resend\" sends such messages again by itself (a rare duplicate instead of a held \
             reply)",
            r.unknown_after_send.len(),
            ids(&r.unknown_after_send)
        );
    }
}

/// The message could not be written: retryable.
fn not_queued(e: super::queue::EnqueueError) -> RpcError {
    RpcError {
        retryable: Some(true),
        retry_after_ms: Some(5000),
        ..RpcError::new(Code::Unavailable, e.to_string())
    }
}

impl Delivery {
    /// Sends what is due on one channel, one entry at a time, until nothing is due, the budget,
    /// the drain or the token ends it. Also says whether any entry left `pending` (a queue that
    /// cannot be written makes none, and must not be retried in a tight loop).
    fn dispatch(&self, channel_name: &str, ctx: &JobCtx) -> (crate::payload::Outcome, bool) {
        let mut rng = Rng::from_os();
        let started = Instant::now();
        let mut progress = false;
        let dir = self.queue_dir();
        'batches: loop {
            let due = lock(&self.queue)
                .as_ref()
                .map(|q| q.due_on(Some(channel_name), clock::wall_ms(), BATCH))
                .unwrap_or_default();
            if due.is_empty() {
                break;
            }
            let mut batch_progress = false;
            for entry in due {
                if ctx.token().is_cancelled()
                    || self.h.lifecycle.phase() != Phase::Serving
                    || started.elapsed() >= RUN_BUDGET
                {
                    break 'batches;
                }
                // Each send is bounded by its own limits; the stall limit applies per send.
                ctx.info.stamp(Instant::now());
                let cfg = self.h.config.get();
                let Some(channel) = cfg.channels.0.get(channel_name).cloned() else {
                    self.record(
                        channel_name,
                        &entry.id,
                        Err(channels::SendError {
                            class: ErrorClass::Permanent,
                            message: format!("channel {channel_name} is not configured"),
                            retry_after: None,
                        }),
                        &mut rng,
                    );
                    batch_progress = true;
                    continue;
                };
                // On disk as `sending` before the channel is called.
                let attempt = match self.with_queue(|q| q.begin_send(&entry.id, clock::wall_ms())) {
                    Ok(Ok(started)) => {
                        batch_progress = true;
                        started.attempts
                    }
                    Ok(Err(e)) => {
                        log::warn!("delivery {}: cannot start: {e}", entry.id);
                        continue;
                    }
                    Err(_) => break 'batches,
                };
                let text = entry
                    .payload
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let limits = Limits {
                    connect_timeout: Duration::from_secs(10),
                    deadline: (Instant::now() + SEND_TIMEOUT).min(ctx.deadline()),
                    stall: SEND_STALL,
                };
                // This attempt is marked just before its first request byte: a boot that finds
                // the entry `sending` knows whether it can have left.
                let on_wire = || queue::mark_on_wire(&dir, &entry.id, attempt);
                // The account the message came to sends the reply (its own bot).
                let channel = match channel.for_account(entry.route.account_id.as_deref()) {
                    Ok(c) => c.into_owned(),
                    Err(message) => {
                        self.record(
                            channel_name,
                            &entry.id,
                            Err(channels::SendError {
                                class: ErrorClass::Permanent,
                                message,
                                retry_after: None,
                            }),
                            &mut rng,
                        );
                        continue;
                    }
                };
                let result = channels::send(
                    &channel,
                    &entry.route,
                    text,
                    entry.channel_key(),
                    &limits,
                    ctx.token(),
                    &on_wire,
                );
                self.record(channel_name, &entry.id, result.map(|_| ()), &mut rng);
            }
            if !batch_progress {
                break;
            }
            progress = true;
        }
        (Ok(Value::Null.into()), progress)
    }

    fn record(
        &self,
        channel: &str,
        id: &str,
        result: Result<(), channels::SendError>,
        rng: &mut Rng,
    ) {
        let svc = self;
        {
            let now = clock::wall_ms();
            let mut all = lock(&self.activity);
            let a = all.entry(channel.to_string()).or_default();
            match &result {
                Ok(()) => {
                    a.sent += 1;
                    a.last_sent_ms = Some(now);
                }
                Err(e) => {
                    a.failed += 1;
                    a.last_error = Some(e.message.clone());
                    a.last_error_ms = Some(now);
                }
            }
        }
        let mut guard = lock(&self.queue);
        let Some(q) = guard.as_mut() else { return };
        let now = clock::wall_ms();
        match result {
            Ok(()) => {
                svc.stats.sent.inc();
                if let Err(e) = q.sent(id, now) {
                    log::warn!("delivery {id}: sent, but cannot record it: {e}");
                }
            }
            Err(e) => match q.failed(
                id,
                &e.message,
                e.class,
                e.retry_after,
                now,
                &svc.policy,
                rng,
            ) {
                Ok(entry) if entry.state == State::Failed => {
                    svc.stats.dead_letters.inc();
                    log::warn!(
                        "delivery {id} to {}:{} is a dead letter: {}",
                        entry.route.channel,
                        entry.route.to,
                        entry.last_error.unwrap_or_default()
                    );
                }
                Ok(entry) => {
                    svc.stats.failed_transient.inc();
                    log::info!(
                        "delivery {id}: {} (attempt {}, retry in {} s)",
                        e.message,
                        entry.attempts,
                        entry.next_attempt_ms.saturating_sub(now) / 1000
                    );
                }
                Err(err) => log::warn!(
                    "delivery {id}: cannot record the failure ({}): {err}",
                    e.message
                ),
            },
        }
        self.publish(q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::system::Detached;

    /// The service on a detached job system (no workers), its queue opened in `dir`.
    fn service(dir: &std::path::Path) -> (Arc<Delivery>, Detached) {
        let cfg = crate::config::parse(
            r#"{"channels": {"openclaw-weixin": {"baseUrl": "http://127.0.0.1:9", "token": "t"}}}"#,
            None,
        );
        assert!(cfg.problems.is_empty(), "{:?}", cfg.problems);
        let d = Detached::new(cfg.config);
        let svc = Arc::new(Delivery::new(Handles {
            jobs: d.jobs.clone(),
            config: d.config.clone(),
            lifecycle: d.lifecycle.clone(),
            state_dir: dir.to_path_buf(),
            test_hooks: false,
        }));
        let q = Queue::open(&dir.join("delivery")).unwrap();
        svc.publish(&q);
        *lock(&svc.queue) = Some(q);
        (svc, d)
    }

    #[test]
    fn every_change_publishes_what_readers_that_must_not_wait_see() {
        let tmp = tempfile::tempdir().unwrap();
        let (svc, _d) = service(tmp.path());
        assert_eq!(svc.counts()[&State::Pending], 0);
        let e = svc
            .enqueue(
                Route::new("openclaw-weixin", "a@im.wechat"),
                "hi",
                "k1",
                json!({}),
            )
            .unwrap();
        let s = svc.summary();
        assert_eq!(s.counts[&State::Pending], 1);
        assert_eq!(s.next_due_ms, Some(e.next_attempt_ms));
        assert_eq!(svc.status_json()["queue"]["pending"], 1);
        svc.drop_entry(&e.id).unwrap();
        assert_eq!(svc.counts()[&State::Pending], 0);
        assert_eq!(svc.summary().next_due_ms, None);
    }

    /// The watchdog's tick reads the published due time and submits a job; it never takes
    /// the queue's lock, which a worker may hold across a stalled fsync.
    #[test]
    fn the_tick_never_waits_for_the_queue() {
        let tmp = tempfile::tempdir().unwrap();
        let (svc, d) = service(tmp.path());
        svc.enqueue(
            Route::new("openclaw-weixin", "a@im.wechat"),
            "hi",
            "k1",
            json!({}),
        )
        .unwrap();
        let before = d.jobs.len();
        // A worker holds the queue (as across a stalled write) while the watchdog ticks.
        let held = lock(&svc.queue);
        let (done, ticked) = std::sync::mpsc::channel();
        let ticker = {
            let svc = svc.clone();
            std::thread::spawn(move || {
                svc.tick(Instant::now(), Level::Normal);
                let _ = done.send(());
            })
        };
        let waited = ticked.recv_timeout(Duration::from_secs(20));
        drop(held);
        assert!(waited.is_ok(), "the tick waited for the queue");
        ticker.join().unwrap();
        assert_eq!(d.jobs.len(), before + 1, "one scheduling job submitted");
        // A second tick while that job is queued submits no other.
        svc.tick(Instant::now(), Level::Normal);
        assert_eq!(d.jobs.len(), before + 1);
    }
}
