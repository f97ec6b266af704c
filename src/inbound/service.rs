//! The inbound service: what every transport calls with a received message ([`Service::ingest`]),
//! the dispatcher that turns stored messages into runs, per-account health, and the pairing
//! methods.
//!
//! Invariants:
//! - `ingest` answers only once the message is durably in the queue (or is known: a
//!   duplicate, a refusal); a transport acknowledges or advances its offset only then. An
//!   error means "not stored": the transport must not acknowledge.
//! - Duplicates: a message whose id is queued, or whose run was started within the window
//!   (`<state>/idempotency/inbound.jsonl`, a day, 10,000 ids), is not stored again.
//! - The dispatcher (one thread) takes entries oldest first; an entry waits while a run it
//!   started for the same session is running, so a conversation's messages run one at a
//!   time and in order. A run is started through `agent::runs::start` with the entry's id as
//!   its idempotency key and the message's chat as its origin (`deliver: true`), and the entry
//!   is removed only once that run has ended (after its id is recorded): a run accepted but
//!   not yet begun when keel dies is started at the next boot, not lost. An entry found at
//!   boot is started with `resume` (`agent::runs::Request::resume`): a run an earlier life
//!   began (its user message carrying the key is in the session's transcript) is one run,
//!   continued — no second user message; it ends at once if its answer was written or its
//!   reply queued, and otherwise calls the model again from the transcript as written, its
//!   interrupted tool calls closed with an error result. So a crash at any point neither
//!   loses a message nor runs it twice, and its reply is queued once (`reply:<entry id>` in
//!   the delivery queue, remembered a day). A run resumed 3 times without finishing is given
//!   up: logged as an error, and the chat gets a short notice instead of an answer.
//! - Nothing here runs on the reactor except the reads of published health (atomics, and
//!   locks held for a copy).
//! - A config reload restarts only the transports whose account was removed or whose
//!   transport settings changed, each stopped (its thread ended) before anything starts on
//!   its token; access rules are read from the live config on every message.

use super::access::{self, Decision, PairingStore};
use super::event::Inbound;
use super::queue::{self, Entry, Queue};
use super::routing;
use crate::agent::runs::{self, Request, Run, Runs, Status};
use crate::cancel::{CancelReason, CancelToken};
use crate::clock;
use crate::config::live::ConfigCell;
use crate::delivery::service::Delivery;
use crate::error::{Code, RpcError};
use crate::idempotency::{self, Lookup};
use crate::ids::SessionKey;
use crate::metrics::family;
use crate::phase::{LifecycleCell, Phase};
use crate::protocol::reply::ReplyTo;
use crate::sync::lock;
use crossbeam_channel::{Receiver, Sender};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Started runs are remembered this long (a channel's redelivery comes within hours).
const FINISHED_WINDOW_MS: u64 = 24 * 3_600_000;
const FINISHED_KEYS: usize = 10_000;
const FINISHED_BYTES: usize = 4 << 20;
/// Entries looked at per dispatcher round.
const ROUND: usize = 256;
/// A refusal of one sender is logged at most this often.
const REFUSAL_LOG_EVERY_MS: u64 = 3_600_000;

/// The handles the inbound service needs.
pub struct Handles {
    /// For the webhook routes' jobs (`inbound::routes`).
    pub jobs: Arc<crate::jobs::system::JobSystem>,
    pub config: Arc<ConfigCell>,
    pub lifecycle: Arc<LifecycleCell>,
    pub runs: Arc<Runs>,
    pub delivery: Arc<Delivery>,
    pub state_dir: PathBuf,
    /// `KEEL_TEST_HOOKS=1` at boot: test-only settings are read.
    pub test_hooks: bool,
}

/// One account's health, published for `channels.status`, `status`, `/metrics`, `/readyz`.
#[derive(Debug, Default)]
pub struct AccountHealth {
    pub channel: String,
    pub account_id: String,
    /// `polling` or `webhook`.
    pub transport: String,
    pub poll_timeout_ms: u64,
    pub running: AtomicBool,
    pub connected: AtomicBool,
    pub started_ms: AtomicU64,
    /// The last successful poll or event (0: none yet).
    pub last_ok_ms: AtomicU64,
    pub last_inbound_ms: AtomicU64,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    pub runs: AtomicU64,
    pub refused: AtomicU64,
    pub errors: AtomicU64,
    pub restarts: AtomicU64,
    /// The last error and when (held for a copy).
    pub last_error: Mutex<Option<(String, u64)>>,
    /// The bot's own name (`getMe`), for mentions and status.
    pub bot_name: Mutex<Option<String>>,
    /// The bot's own user id (`getMe`; 0 until known), for mentions.
    pub bot_id: std::sync::atomic::AtomicI64,
}

impl AccountHealth {
    pub fn new(channel: &str, account_id: &str, transport: &str, poll_timeout: Duration) -> Self {
        AccountHealth {
            channel: channel.into(),
            account_id: account_id.into(),
            transport: transport.into(),
            poll_timeout_ms: poll_timeout.as_millis() as u64,
            started_ms: AtomicU64::new(clock::wall_ms()),
            ..AccountHealth::default()
        }
    }

    pub fn error(&self, msg: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.connected.store(false, Ordering::Relaxed);
        *lock(&self.last_error) = Some((msg, clock::wall_ms()));
    }

    pub fn ok(&self) {
        self.last_ok_ms.store(clock::wall_ms(), Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
    }

    /// Why this account is not ready: polling, and no successful poll for 3 × its timeout
    /// (counted from its start until the first one).
    pub fn stale(&self, now_ms: u64) -> Option<String> {
        if self.transport != "polling" {
            return None;
        }
        let limit = 3 * self.poll_timeout_ms.max(1000);
        let since = match self.last_ok_ms.load(Ordering::Relaxed) {
            0 => self.started_ms.load(Ordering::Relaxed),
            t => t,
        };
        let age = now_ms.saturating_sub(since);
        (age > limit).then(|| {
            let why = lock(&self.last_error)
                .as_ref()
                .map(|(m, _)| format!(": {m}"))
                .unwrap_or_default();
            format!(
                "inbound {}:{} has had no successful poll for {} s (limit {} s){why}",
                self.channel,
                self.account_id,
                age / 1000,
                limit / 1000
            )
        })
    }

    /// OpenClaw's account shape in `channels.status` (`channelAccounts`).
    pub fn status_json(&self, now_ms: u64) -> Value {
        let (err, err_at) = lock(&self.last_error).clone().unzip();
        let at = |v: u64| (v > 0).then_some(v);
        let last_ok = at(self.last_ok_ms.load(Ordering::Relaxed));
        json!({
            "accountId": self.account_id,
            "enabled": true,
            "configured": true,
            "running": self.running.load(Ordering::Relaxed),
            "connected": self.connected.load(Ordering::Relaxed),
            "mode": self.transport,
            "lastStartAt": at(self.started_ms.load(Ordering::Relaxed)),
            "lastInboundAt": at(self.last_inbound_ms.load(Ordering::Relaxed)),
            "lastPollAt": last_ok,
            "lastPollAgeMs": last_ok.map(|t| now_ms.saturating_sub(t)),
            "lastError": err,
            "lastErrorAt": err_at,
            "restartPending": false,
            "reconnectAttempts": self.restarts.load(Ordering::Relaxed),
            "botName": lock(&self.bot_name).clone(),
            "received": self.received.load(Ordering::Relaxed),
            "duplicates": self.duplicates.load(Ordering::Relaxed),
            "runsStarted": self.runs.load(Ordering::Relaxed),
            "refused": self.refused.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
        })
    }
}

/// What [`Service::ingest`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Durably queued; a run follows.
    Stored,
    /// Seen before (queued, or its run started within the window): nothing to do.
    Duplicate,
    /// Not for the agent (refused, a pairing request, not mentioned): nothing stored.
    Dropped,
}

/// The inbound service.
pub struct Service {
    pub h: Handles,
    queue: Mutex<Option<Queue>>,
    /// Ids of messages whose run was started (or that will never run), for the window.
    pub finished: idempotency::Store,
    pairing: Mutex<Option<PairingStore>>,
    accounts: Mutex<Vec<Arc<AccountHealth>>>,
    /// The Telegram transports running (their threads and stop tokens).
    pub(super) telegram: Mutex<super::telegram::Transports>,
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    /// Fired at drain start: pollers stop, the dispatcher starts nothing new.
    pub stop: CancelToken,
    refusals: Mutex<HashMap<String, u64>>,
    /// Entries waiting (published for readers that must not take the queue's lock).
    pending: AtomicU64,
    started: AtomicBool,
    /// [`OPENING`], [`OPEN`] or [`UNOPENED`]: whether the queue and stores are open, for
    /// readers that must not wait (readiness); `opened` wakes a message that came first.
    open_state: AtomicU8,
    opened: (Mutex<()>, Condvar),
}

const OPENING: u8 = 0;
const OPEN: u8 = 1;
const UNOPENED: u8 = 2;
/// How long a message that arrives while keel opens its queue waits for it (on its worker)
/// before it is answered "not stored, retry": less than Slack's 3 s to acknowledge.
const OPEN_WAIT: Duration = Duration::from_secs(2);

fn finished_limits() -> idempotency::Limits {
    idempotency::Limits {
        window_ms: FINISHED_WINDOW_MS,
        max_keys: FINISHED_KEYS,
        max_bytes: FINISHED_BYTES,
    }
}

impl Service {
    pub fn new(h: Handles) -> Service {
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        Service {
            h,
            queue: Mutex::new(None),
            finished: idempotency::Store::default(),
            pairing: Mutex::new(None),
            accounts: Mutex::default(),
            telegram: Mutex::default(),
            wake_tx,
            wake_rx,
            stop: CancelToken::new(),
            refusals: Mutex::default(),
            pending: AtomicU64::new(0),
            started: AtomicBool::new(false),
            open_state: AtomicU8::new(OPENING),
            opened: (Mutex::new(()), Condvar::new()),
        }
    }

    fn dir(&self) -> PathBuf {
        self.h.state_dir.join("inbound")
    }

    /// Boot: a thread opens the queue, the started-ids log and the pairing store, then
    /// starts the transports and becomes the dispatcher.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let svc = self.clone();
        let spawned = std::thread::Builder::new()
            .name("inbound".into())
            .spawn(move || svc.run_dispatcher());
        if let Err(e) = spawned {
            log::error!("inbound: cannot start the dispatcher thread: {e}; nothing is received");
        }
    }

    /// Registers an account's health (a transport calls it when it starts).
    pub fn add_account(&self, h: Arc<AccountHealth>) {
        let mut a = lock(&self.accounts);
        a.retain(|x| !(x.channel == h.channel && x.account_id == h.account_id));
        a.push(h);
    }

    /// Forgets an account whose transport was stopped for good (a reload removed it): status
    /// and `/metrics` no longer list it.
    pub fn remove_account(&self, channel: &str, account: &str) {
        lock(&self.accounts).retain(|x| !(x.channel == channel && x.account_id == account));
    }

    /// After a config reload: stops, starts and restarts transports to match the new config
    /// (see [`super::telegram::reconcile`]), on a thread of its own, since stopping a poller
    /// waits for its thread. Reloads are applied one at a time, each to the config current
    /// when it runs; before the transports first started, nothing (the boot reads the config
    /// after this one).
    pub fn reconfigure(self: &Arc<Self>) {
        let svc = self.clone();
        let spawned = std::thread::Builder::new()
            .name("inbound-reload".into())
            .spawn(move || super::telegram::reconcile(&svc, false));
        if let Err(e) = spawned {
            log::error!(
                "inbound: cannot apply the reload to the channel accounts: {e}; they keep \
                 their running settings"
            );
        }
    }

    /// The health of `channel`'s account `account`, once its transport has started.
    pub fn account_health(&self, channel: &str, account: &str) -> Option<Arc<AccountHealth>> {
        self.account(channel, account)
    }

    pub fn accounts(&self) -> Vec<Arc<AccountHealth>> {
        lock(&self.accounts).clone()
    }

    fn account(&self, channel: &str, account: &str) -> Option<Arc<AccountHealth>> {
        lock(&self.accounts)
            .iter()
            .find(|a| a.channel == channel && a.account_id == account)
            .cloned()
    }

    /// Drain: stop the transports and start nothing new.
    pub fn begin_stop(&self) {
        if self.stop.cancel(CancelReason::Drain) {
            log::info!("inbound: draining; transports stop receiving");
        }
        let _ = self.wake_tx.try_send(());
    }

    fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }

    fn log_refusal(&self, m: &Inbound, why: &str) {
        let key = format!("{}\u{1f}{}\u{1f}{}", m.channel, m.account_id, m.sender_id);
        let now = clock::wall_ms();
        let mut r = lock(&self.refusals);
        if r.len() > 10_000 {
            r.clear();
        }
        let last = r.get(&key).copied().unwrap_or(0);
        if last == 0 || now.saturating_sub(last) >= REFUSAL_LOG_EVERY_MS {
            r.insert(key, now);
            drop(r);
            log::info!(
                "inbound {}:{}: message from sender {} in {} chat {} refused: {why} \
                 (logged once an hour per sender)",
                m.channel,
                m.account_id,
                crate::config::channels::shown(&m.sender_id),
                match m.chat_kind {
                    super::event::ChatKind::Direct => "direct",
                    super::event::ChatKind::Group => "group",
                    super::event::ChatKind::Channel => "channel",
                },
                crate::config::channels::shown(&m.chat_id),
            );
        }
    }

    /// Takes one received message: checks it, decides whether its sender may talk, and
    /// stores it durably. `Err`: not stored (the transport must not acknowledge it; it will
    /// come again).
    pub fn ingest(&self, m: Inbound) -> Result<Ingested, String> {
        // A webhook can come in while the queue is still being opened at boot.
        if !self.wait_open(OPEN_WAIT) {
            return Err("keel is starting: the inbound queue is not open".into());
        }
        let health = self.account(&m.channel, &m.account_id);
        let count = |f: fn(&AccountHealth) -> &AtomicU64| {
            if let Some(h) = &health {
                f(h).fetch_add(1, Ordering::Relaxed);
            }
        };
        if let Err(why) = m.check() {
            count(|h| &h.refused);
            log::warn!(
                "inbound {}:{}: a message was refused: {why}",
                crate::config::channels::shown(&m.channel),
                crate::config::channels::shown(&m.account_id)
            );
            return Ok(Ingested::Dropped);
        }
        count(|h| &h.received);
        if let Some(h) = &health {
            h.last_inbound_ms.store(clock::wall_ms(), Ordering::Relaxed);
        }
        let id = queue::entry_id(&m.channel, &m.account_id, &m.event_id);
        match self.finished.get(&id, clock::wall_ms(), FINISHED_WINDOW_MS) {
            Lookup::Hit(_) => {
                count(|h| &h.duplicates);
                return Ok(Ingested::Duplicate);
            }
            Lookup::Loading => return Err("keel is starting: the inbound queue is not open".into()),
            Lookup::Miss => {}
        }
        if lock(&self.queue).as_ref().is_some_and(|q| q.contains(&id)) {
            count(|h| &h.duplicates);
            return Ok(Ingested::Duplicate);
        }
        let cfg = self.h.config.get();
        let access = cfg
            .inbound
            .access(&m.channel, &m.account_id)
            .or_else(|| cfg.inbound_webhooks.access(&m.channel, &m.account_id));
        let Some(access) = access else {
            count(|h| &h.refused);
            self.log_refusal(&m, "the account is not configured for receiving");
            return Ok(Ingested::Dropped);
        };
        let now = clock::wall_ms();
        let decision = {
            let mut p = lock(&self.pairing);
            let Some(store) = p.as_mut() else {
                return Err("keel is starting: the pairing store is not open".into());
            };
            access::decide(access, store, &m, now)
                .map_err(|e| format!("cannot write the pairing store: {e}"))?
        };
        match decision {
            Decision::Allow => {}
            Decision::Ignore => return Ok(Ingested::Dropped),
            Decision::Refuse(why) => {
                count(|h| &h.refused);
                self.log_refusal(&m, why);
                return Ok(Ingested::Dropped);
            }
            Decision::Pair(code) => {
                count(|h| &h.refused);
                self.log_refusal(&m, "unknown sender; pairing requested");
                if let Some(code) = code {
                    self.send_pairing_code(&m, &code);
                }
                return Ok(Ingested::Dropped);
            }
        }
        let session = routing::session_for(&cfg, &m);
        let mut q = lock(&self.queue);
        let Some(q) = q.as_mut() else {
            return Err("keel is starting: the inbound queue is not open".into());
        };
        if q.contains(&id) {
            count(|h| &h.duplicates);
            return Ok(Ingested::Duplicate);
        }
        q.store(id, session.key, m, now)
            .map_err(|e| format!("cannot store the message: {e}"))?;
        self.pending.store(q.len() as u64, Ordering::Relaxed);
        self.wake();
        Ok(Ingested::Stored)
    }

    fn send_pairing_code(&self, m: &Inbound, code: &str) {
        let text = format!(
            "keel: access not configured.\n\nYour {} user id: {}\nPairing code: {code}\n\n\
             Ask the bot owner to approve with:\nkeel pairing approve {} {code}",
            m.channel, m.sender_id, m.channel
        );
        let route = crate::delivery::queue::Route {
            account_id: Some(m.account_id.clone()),
            ..crate::delivery::queue::Route::new(m.channel.clone(), m.chat_id.clone())
        };
        let key = format!(
            "pairing:{}",
            queue::entry_id(&m.channel, &m.account_id, code)
        );
        match self
            .h
            .delivery
            .enqueue(route, &text, &key, json!({"pairing": true}))
        {
            Ok(_) => log::info!(
                "inbound {}:{}: pairing code sent to sender {}",
                m.channel,
                m.account_id,
                crate::config::channels::shown(&m.sender_id)
            ),
            Err(e) => log::warn!(
                "inbound {}:{}: cannot send the pairing code: {}",
                m.channel,
                m.account_id,
                e.message
            ),
        }
    }

    /// Waits up to `within` for the queue and stores to be open; whether they are.
    fn wait_open(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let mut g = lock(&self.opened.0);
        loop {
            match self.open_state.load(Ordering::Acquire) {
                OPEN => return true,
                UNOPENED => return false,
                _ => {}
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            g = match self.opened.1.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    fn set_open_state(&self, state: u8) {
        let _g = lock(&self.opened.0);
        self.open_state.store(state, Ordering::Release);
        self.opened.1.notify_all();
    }

    // ---- the dispatcher ----------------------------------------------------------------

    fn open(&self) -> bool {
        // `KEEL_TEST_INBOUND_OPEN_DELAY_MS` (with `KEEL_TEST_HOOKS=1`): a slow disk at boot.
        if let Some(ms) = self
            .h
            .test_hooks
            .then(|| {
                std::env::var("KEEL_TEST_INBOUND_OPEN_DELAY_MS")
                    .ok()?
                    .parse()
                    .ok()
            })
            .flatten()
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let open = self.open_stores();
        self.set_open_state(if open { OPEN } else { UNOPENED });
        open
    }

    fn open_stores(&self) -> bool {
        let dir = self.dir();
        let opened = Queue::open(&dir.join("queue"));
        let (q, rec) = match opened {
            Ok(x) => x,
            Err(e) => {
                log::error!(
                    "inbound: cannot open the queue in {}: {e}; nothing is received",
                    dir.display()
                );
                return false;
            }
        };
        if rec.entries > 0 || rec.set_aside > 0 {
            log::info!(
                "inbound: {} message(s) waiting from before, {} file(s) set aside",
                rec.entries,
                rec.set_aside
            );
        }
        let path = self.h.state_dir.join("idempotency").join("inbound.jsonl");
        let loaded = self
            .finished
            .open(&path, clock::wall_ms(), &finished_limits());
        idempotency::log_loaded("inbound", &path, &loaded);
        *lock(&self.pairing) = Some(PairingStore::open(&dir.join("pairing.json")));
        self.pending.store(q.len() as u64, Ordering::Relaxed);
        *lock(&self.queue) = Some(q);
        true
    }

    fn run_dispatcher(self: Arc<Self>) {
        if !self.open() {
            return;
        }
        // Entries from before the restart: their runs may have begun, and are resumed.
        let recovered = self.recover();
        super::telegram::reconcile(&self, true);
        super::routes::register_accounts(&self);
        let mut busy: HashMap<String, Arc<Run>> = HashMap::new();
        // Entries whose run was accepted and has not ended: removed from the queue only when
        // it ends, so a crash before the run has begun (its user message in the transcript)
        // runs the message at the next boot instead of losing it.
        let mut inflight: Vec<(Entry, Arc<Run>)> = Vec::new();
        let mut retry_at: u64 = 0;
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            busy.retain(|_, r| r.status() == Status::Running);
            inflight.retain(|(e, run)| {
                let running = run.status() == Status::Running;
                if !running {
                    self.done(e, json!({"runId": run.id, "sessionKey": e.session_key}));
                }
                running
            });
            let now = clock::wall_ms();
            let mut waiting = false;
            if now >= retry_at {
                let entries = lock(&self.queue)
                    .as_ref()
                    .map(|q| q.oldest(ROUND))
                    .unwrap_or_default();
                let mut blocked: HashSet<String> = HashSet::new();
                for e in entries {
                    if self.stop.is_cancelled() {
                        break;
                    }
                    if blocked.contains(&e.session_key) || busy.contains_key(&e.session_key) {
                        blocked.insert(e.session_key.clone());
                        waiting = true;
                        continue;
                    }
                    match self.dispatch(&e, recovered.contains(&e.id)) {
                        Ok(Some(run)) => {
                            busy.insert(e.session_key.clone(), run.clone());
                            blocked.insert(e.session_key.clone());
                            inflight.push((e, run));
                        }
                        Ok(None) => {}
                        Err(after_ms) => {
                            // Runs cannot be started now (starting, pressure, queue full):
                            // everything waits, in order.
                            retry_at = clock::wall_ms() + after_ms;
                            waiting = true;
                            break;
                        }
                    }
                }
            } else {
                waiting = true;
            }
            let wait = if waiting || !busy.is_empty() {
                Duration::from_millis(25)
            } else {
                Duration::from_secs(1)
            };
            let _ = self.wake_rx.recv_timeout(wait);
        }
        log::info!("inbound: dispatcher stopped");
    }

    /// At boot: entries recorded as done (the crash came before the file was removed) are
    /// removed; the ids of the others are returned, and their runs are started with
    /// `resume` — a run an earlier life began goes on from its transcript rather than
    /// starting over (`agent::engine`), one that never began starts.
    fn recover(&self) -> HashSet<String> {
        let entries = lock(&self.queue)
            .as_ref()
            .map(|q| q.oldest(usize::MAX))
            .unwrap_or_default();
        let mut waiting = HashSet::new();
        for e in entries {
            if matches!(
                self.finished
                    .get(&e.id, clock::wall_ms(), FINISHED_WINDOW_MS),
                Lookup::Hit(_)
            ) {
                self.done(&e, json!({"recovered": true}));
                continue;
            }
            waiting.insert(e.id);
        }
        waiting
    }

    /// Records that `e` is done (its run accepted, or never to run) and removes it.
    fn done(&self, e: &Entry, answer: Value) {
        self.finished
            .remember(&e.id, clock::wall_ms(), &answer, &finished_limits());
        let mut q = lock(&self.queue);
        if let Some(q) = q.as_mut() {
            if let Err(err) = q.remove(&e.id) {
                log::warn!("inbound: cannot remove entry {}: {err}", e.id);
            }
            self.pending.store(q.len() as u64, Ordering::Relaxed);
        }
    }

    /// Starts `e`'s run. `Ok(Some(run))`: started (or found running); `Ok(None)`: finished
    /// without a run to wait for; `Err(ms)`: retry the queue after that long.
    /// `resume`: the entry was found at boot (its run may have begun before the restart).
    fn dispatch(&self, e: &Entry, resume: bool) -> Result<Option<Arc<Run>>, u64> {
        let cfg = self.h.config.get();
        if self.h.lifecycle.phase() >= Phase::Draining {
            return Err(1000);
        }
        let health = self.account(&e.message.channel, &e.message.account_id);
        let session = match SessionKey::parse(&e.session_key, &cfg.agents.default_agent_id()) {
            Ok(s) => s,
            Err(err) => {
                log::warn!(
                    "inbound: entry {} has a bad session key ({err}); dropped",
                    e.id
                );
                self.done(e, json!({"error": "bad session key"}));
                return Ok(None);
            }
        };
        let mut request = Request::top(
            e.message.text.clone(),
            session,
            routing::origin_of(&e.message),
        );
        request.deliver = true;
        request.resume = resume;
        match runs::start(&self.h.runs, &e.id, request, ReplyTo::Internal, None) {
            Ok((run, new)) => {
                if new && let Some(h) = &health {
                    h.runs.fetch_add(1, Ordering::Relaxed);
                }
                if run.status() == Status::Running {
                    // Removed when it ends (the dispatcher's `inflight`).
                    return Ok(Some(run));
                }
                self.done(e, json!({"runId": run.id, "sessionKey": e.session_key}));
                Ok(None)
            }
            Err(err) if err.code == Code::Unavailable || err.code == Code::Draining => {
                Err(err.retry_after_ms.unwrap_or(500).clamp(50, 5_000))
            }
            Err(err) => {
                log::warn!(
                    "inbound: the run of message {} cannot start: {}; dropped",
                    e.id,
                    err.message
                );
                if let Some(h) = &health {
                    h.error(format!("a run could not start: {}", err.message));
                }
                self.done(e, json!({"error": err.message}));
                Ok(None)
            }
        }
    }

    // ---- views and methods -------------------------------------------------------------

    /// Why `/readyz` fails because of inbound accounts.
    pub fn readiness_notes(&self) -> Vec<String> {
        let now = clock::wall_ms();
        if self.stop.is_cancelled() {
            return Vec::new();
        }
        // (While it is being opened at boot, a message that comes waits for it: not a reason.)
        let mut notes: Vec<String> = match self.open_state.load(Ordering::Acquire) {
            UNOPENED => vec!["inbound: the queue could not be opened; nothing is received".into()],
            _ => Vec::new(),
        };
        notes.extend(self.accounts().iter().filter_map(|a| a.stale(now)));
        notes
    }

    /// `channels.status`' accounts of `channel`.
    pub fn channel_accounts(&self, channel: &str) -> Vec<Value> {
        let now = clock::wall_ms();
        self.accounts()
            .iter()
            .filter(|a| a.channel == channel)
            .map(|a| a.status_json(now))
            .collect()
    }

    pub fn status_json(&self) -> Value {
        let now = clock::wall_ms();
        json!({
            "queued": self.pending.load(Ordering::Relaxed),
            "accounts": self.accounts().iter().map(|a| {
                let mut v = a.status_json(now);
                v["channel"] = json!(a.channel);
                v
            }).collect::<Vec<_>>(),
        })
    }

    pub fn render_metrics(&self, out: &mut String) {
        family(
            out,
            "keel_inbound_queued",
            "gauge",
            "Received messages waiting for their run.",
            self.pending.load(Ordering::Relaxed),
        );
        let accounts = self.accounts();
        let now = clock::wall_ms();
        type Read = fn(&AccountHealth) -> u64;
        let series: [(&str, &str, &str, Read); 6] = [
            (
                "keel_inbound_received_total",
                "counter",
                "Messages received, by account.",
                |a| a.received.load(Ordering::Relaxed),
            ),
            (
                "keel_inbound_duplicates_total",
                "counter",
                "Redeliveries recognised, by account.",
                |a| a.duplicates.load(Ordering::Relaxed),
            ),
            (
                "keel_inbound_runs_total",
                "counter",
                "Runs started from received messages, by account.",
                |a| a.runs.load(Ordering::Relaxed),
            ),
            (
                "keel_inbound_refused_total",
                "counter",
                "Messages refused (access, pairing, malformed), by account.",
                |a| a.refused.load(Ordering::Relaxed),
            ),
            (
                "keel_inbound_errors_total",
                "counter",
                "Transport errors, by account.",
                |a| a.errors.load(Ordering::Relaxed),
            ),
            (
                "keel_inbound_connected",
                "gauge",
                "1 while the account's last poll or event succeeded.",
                |a| u64::from(a.connected.load(Ordering::Relaxed)),
            ),
        ];
        for (name, kind, help, read) in series {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for a in &accounts {
                let _ = writeln!(
                    out,
                    "{name}{{channel=\"{}\",account=\"{}\"}} {}",
                    a.channel,
                    a.account_id,
                    read(a)
                );
            }
        }
        let name = "keel_inbound_last_poll_age_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Seconds since the account's last successful poll or event (-1: none yet)."
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        for a in &accounts {
            let age = match a.last_ok_ms.load(Ordering::Relaxed) {
                0 => -1.0,
                t => now.saturating_sub(t) as f64 / 1000.0,
            };
            let _ = writeln!(
                out,
                "{name}{{channel=\"{}\",account=\"{}\"}} {age}",
                a.channel, a.account_id
            );
        }
    }

    /// `pairing.list {channel?}`.
    pub fn pairing_list(&self, channel: Option<&str>) -> Result<Value, RpcError> {
        let p = lock(&self.pairing);
        let Some(store) = p.as_ref() else {
            return Err(RpcError::unavailable(
                "keel is starting: the pairing store is not open; retry",
                1000,
            ));
        };
        let now = clock::wall_ms();
        let requests: Vec<Value> = store
            .pending(channel, now)
            .into_iter()
            .map(|r| {
                json!({
                    "channel": r.channel, "accountId": r.account_id, "id": r.sender_id,
                    "senderId": r.sender_id, "name": r.sender_name, "code": r.code,
                    "createdAt": clock::iso8601(r.created_ms),
                    "expiresAt": clock::iso8601(r.created_ms + access::REQUEST_TTL_MS),
                })
            })
            .collect();
        let approved: Vec<Value> = store
            .approved(channel)
            .into_iter()
            .map(|a| json!({"channel": a.channel, "accountId": a.account_id, "senderId": a.sender_id, "approvedAt": clock::iso8601(a.approved_ms)}))
            .collect();
        Ok(json!({"channel": channel, "requests": requests, "approved": approved}))
    }

    /// The accounts under `dmPolicy: "pairing"` (the dashboard's pairing accounts).
    fn pairing_accounts(&self, channel: Option<&str>, account: Option<&str>) -> Vec<Value> {
        let cfg = self.h.config.get();
        cfg.inbound
            .telegram
            .iter()
            .filter(|a| a.receive && a.access.dm_policy == crate::config::inbound::DmPolicy::Pairing)
            .filter(|_| channel.is_none_or(|c| c.eq_ignore_ascii_case("telegram")))
            .filter(|a| account.is_none_or(|x| x.eq_ignore_ascii_case(&a.id)))
            .map(|a| json!({"channel": "telegram", "channelLabel": "Telegram", "accountId": a.id, "notifySupported": true}))
            .collect()
    }

    /// `channels.pairing.list {channel?, accountId?}`: OpenClaw's shape — `accounts` under
    /// pairing, their pending `requests` (each with a `requestId`), `limits`.
    pub fn channels_pairing_list(
        &self,
        channel: Option<&str>,
        account: Option<&str>,
    ) -> Result<Value, RpcError> {
        if channel.is_some_and(|c| !c.eq_ignore_ascii_case("telegram")) {
            return Err(RpcError::invalid(format!(
                "unknown pairing channel: {}",
                crate::config::channels::shown(channel.unwrap_or(""))
            )));
        }
        let accounts = self.pairing_accounts(channel, account);
        let p = lock(&self.pairing);
        let Some(store) = p.as_ref() else {
            return Err(RpcError::unavailable(
                "keel is starting: the pairing store is not open; retry",
                1000,
            ));
        };
        let now = clock::wall_ms();
        let requests: Vec<Value> = store
            .pending(Some("telegram"), now)
            .into_iter()
            .filter(|r| {
                accounts
                    .iter()
                    .any(|a| a["accountId"] == r.account_id.as_str())
            })
            .map(|r| {
                let mut v = json!({
                    "requestId": access::request_id(&r),
                    "channel": r.channel, "channelLabel": "Telegram",
                    "accountId": r.account_id, "senderId": r.sender_id,
                    "senderLabel": "Telegram user id",
                    "createdAt": clock::iso8601(r.created_ms),
                    "lastSeenAt": clock::iso8601(r.created_ms),
                    "expiresAt": clock::iso8601(r.created_ms + access::REQUEST_TTL_MS),
                    "notifySupported": true,
                });
                if let Some(n) = &r.sender_name {
                    v["metadata"] = json!({"name": n});
                }
                v
            })
            .collect();
        Ok(json!({
            "accounts": accounts,
            "requests": requests,
            // keel has no command owners: the dashboard's offer to make one is answered
            // "unavailable".
            "commandOwnerConfigured": false,
            "limits": {"pendingPerAccount": access::MAX_PENDING, "ttlMs": access::REQUEST_TTL_MS},
        }))
    }

    /// `channels.pairing.approve {channel, accountId, requestId, notify?,
    /// bootstrapCommandOwner?}`: approves that request's sender; with `notify`, tells them
    /// through the delivery queue.
    pub fn channels_pairing_approve(
        &self,
        channel: &str,
        account: &str,
        request_id: &str,
        notify: bool,
        owner: bool,
    ) -> Result<Value, RpcError> {
        let (approved, chat) = self.by_request(channel, account, request_id, |store, r, now| {
            store
                .approve(&r.channel, Some(&r.account_id), &r.code, now)
                .map(|a| a.map(|a| (a, r.chat_id.clone())))
        })?;
        log::info!(
            "inbound {}:{}: sender {} approved from the dashboard",
            approved.channel,
            approved.account_id,
            approved.sender_id
        );
        let notification = if !notify {
            "not-requested"
        } else {
            let route = crate::delivery::queue::Route {
                account_id: Some(approved.account_id.clone()),
                ..crate::delivery::queue::Route::new(approved.channel.clone(), chat)
            };
            let key = format!("pairing-approved:{}", request_id);
            let text = "keel: your access was approved. You can talk to the agent now.";
            match self
                .h
                .delivery
                .enqueue(route, text, &key, json!({"pairing": true}))
            {
                Ok(_) => "sent",
                Err(e) => {
                    log::warn!("inbound: cannot tell the approved sender: {}", e.message);
                    "failed"
                }
            }
        };
        Ok(json!({
            "requestId": request_id, "senderId": approved.sender_id,
            "notification": notification,
            "commandOwnerBootstrap": if owner { "unavailable" } else { "not-requested" },
        }))
    }

    /// `channels.pairing.dismiss {channel, accountId, requestId}`: drops the request; its
    /// sender stays unknown, and their next message is a new request with a new code.
    pub fn channels_pairing_dismiss(
        &self,
        channel: &str,
        account: &str,
        request_id: &str,
    ) -> Result<Value, RpcError> {
        let r = self.by_request(channel, account, request_id, |store, r, now| {
            store.dismiss(&r.channel, &r.account_id, request_id, now)
        })?;
        Ok(json!({"requestId": request_id, "senderId": r.sender_id}))
    }

    /// Finds `request_id` of an account under pairing and applies `f` to it in the store.
    fn by_request<T>(
        &self,
        channel: &str,
        account: &str,
        request_id: &str,
        f: impl FnOnce(&mut PairingStore, &access::Request, u64) -> std::io::Result<Option<T>>,
    ) -> Result<T, RpcError> {
        if self
            .pairing_accounts(Some(channel), Some(account))
            .is_empty()
        {
            return Err(RpcError::invalid(format!(
                "channel account does not use DM pairing: {}:{}",
                crate::config::channels::shown(channel),
                crate::config::channels::shown(account)
            )));
        }
        let gone = || RpcError::invalid("pending DM access request no longer exists");
        let mut p = lock(&self.pairing);
        let Some(store) = p.as_mut() else {
            return Err(RpcError::unavailable(
                "keel is starting: the pairing store is not open; retry",
                1000,
            ));
        };
        let now = clock::wall_ms();
        let Some(r) = store.pending(Some("telegram"), now).into_iter().find(|r| {
            r.account_id.eq_ignore_ascii_case(account) && access::request_id(r) == request_id
        }) else {
            return Err(gone());
        };
        match f(store, &r, now) {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(gone()),
            Err(e) => Err(RpcError::new(
                Code::Internal,
                format!("cannot write the pairing store: {e}"),
            )),
        }
    }

    /// `pairing.approve {channel, code, accountId?}`.
    pub fn pairing_approve(
        &self,
        channel: &str,
        code: &str,
        account: Option<&str>,
    ) -> Result<Value, RpcError> {
        let mut p = lock(&self.pairing);
        let Some(store) = p.as_mut() else {
            return Err(RpcError::unavailable(
                "keel is starting: the pairing store is not open; retry",
                1000,
            ));
        };
        match store.approve(channel, account, code, clock::wall_ms()) {
            Ok(Some(a)) => {
                log::info!(
                    "inbound {}:{}: sender {} approved",
                    a.channel,
                    a.account_id,
                    a.sender_id
                );
                Ok(
                    json!({"ok": true, "approved": true, "channel": a.channel, "accountId": a.account_id, "id": a.sender_id, "senderId": a.sender_id}),
                )
            }
            Ok(None) => Err(RpcError::new(
                Code::NotFound,
                format!(
                    "no pending pairing request with that code on {channel} (codes expire after an hour)"
                ),
            )),
            Err(e) => Err(RpcError::new(
                Code::Internal,
                format!("cannot write the pairing store: {e}"),
            )),
        }
    }
}
