//! Telegram long polling: one thread per configured bot account (the config refuses two
//! accounts with one token), calling `getUpdates` with the last offset and a long-poll
//! `timeout`, handing each message to [`Service::ingest`] and advancing the offset only once
//! every update of the batch is stored (the next `getUpdates` with the new offset is what
//! confirms them to Telegram).
//!
//! Invariants:
//! - Every call has a deadline (the poll timeout plus 10 s) and a stall limit (the poll
//!   timeout plus 5 s: the server is silent while it holds a long poll), and a cancel token
//!   that the drain fires: a drain never waits on a long poll.
//! - `409 Conflict` (another poller or a webhook on this token), 5xx, malformed answers and
//!   network errors back off exponentially with jitter (1 s up to 30 s); `429` waits its
//!   `retry_after`; `401`/`404` (a revoked or wrong token) waits a minute. Each is the
//!   account's `lastError`, and the account is not `connected` until a poll succeeds again.
//! - A panic in the poller is caught by its supervisor (the same thread), counted, and the
//!   poller restarted after a backoff.
//! - The bot token travels in the URL path only and is scrubbed from every error kept.

use super::event::{ChatKind, Inbound};
use super::service::{AccountHealth, Ingested, Service};
use crate::cancel::{CancelReason, CancelToken};
use crate::clock::Rng;
use crate::config::inbound::TelegramAccount;
use crate::net::{self, Limits, NetError, Request, Url};
use crate::sync::lock;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The most of a `getUpdates` answer read (100 updates of 4,096 characters fit many times).
const MAX_ANSWER: usize = 16 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
const AUTH_WAIT: Duration = Duration::from_secs(60);

/// How long a reload waits for a stopped poller's thread to end before it gives up starting
/// anything on that token (a cancel ends a long poll at once; this bounds the rest: a batch
/// being stored, a backoff's next check).
const STOP_BOUND: Duration = Duration::from_secs(15);

/// One account's running transport: the poller thread (or, in webhook mode, the thread that
/// registers the webhook and ends), and its own stop token (a child of the service's).
struct Transport {
    acct: TelegramAccount,
    stop: CancelToken,
    thread: std::thread::JoinHandle<()>,
}

/// The Telegram transports keel runs, by account id.
#[derive(Default)]
pub struct Transports {
    /// Set once the service first started transports: a reload before that changes nothing
    /// (the boot reads the config after it).
    started: bool,
    by_id: std::collections::BTreeMap<String, Transport>,
    /// Stopped but not yet ended (past [`STOP_BOUND`]): nothing starts on their tokens.
    stopping: Vec<Transport>,
}

/// Whether `a` and `b` are received the same way (everything but who may talk, which is read
/// from the live config on every message).
fn same_transport(a: &TelegramAccount, b: &TelegramAccount) -> bool {
    (
        &a.id,
        &a.bot_token,
        &a.base_url,
        a.poll_timeout,
        &a.webhook,
        a.receive,
    ) == (
        &b.id,
        &b.bot_token,
        &b.base_url,
        b.poll_timeout,
        &b.webhook,
        b.receive,
    )
}

/// Waits (at most `bound`) for a thread to end.
fn ended(t: &Transport, bound: Duration) -> bool {
    let end = std::time::Instant::now() + bound;
    while !t.thread.is_finished() {
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Brings the running transports in line with the config: at boot every account that
/// receives starts; after a reload, the transports of removed accounts and of accounts whose
/// token, API root, poll timeout or webhook changed are stopped (their threads waited for,
/// within [`STOP_BOUND`]) before any new one starts, so one token never has two pollers;
/// unchanged accounts keep running untouched. Access rules are not a transport's: they are
/// read from the live config on every message. `boot`: the first call (the dispatcher's).
pub fn reconcile(svc: &Arc<Service>, boot: bool) {
    let mut t = lock(&svc.telegram);
    if boot {
        t.started = true;
    } else if !t.started {
        return;
    }
    if svc.stop.is_cancelled() {
        return;
    }
    let cfg = svc.h.config.get();
    let wanted: Vec<&TelegramAccount> = cfg.inbound.telegram.iter().filter(|a| a.receive).collect();
    t.stopping.retain(|x| !x.thread.is_finished());
    let stale: Vec<String> = t
        .by_id
        .iter()
        .filter(|(id, x)| {
            !wanted
                .iter()
                .any(|a| a.id == **id && same_transport(a, &x.acct))
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        let Some(x) = t.by_id.remove(&id) else {
            continue;
        };
        let removed = !wanted.iter().any(|a| a.id == id);
        x.stop.cancel(CancelReason::Client);
        if ended(&x, STOP_BOUND) {
            log::info!(
                "inbound telegram:{id}: {} by a config reload",
                if removed {
                    "removed"
                } else {
                    "stopped to restart with its new settings"
                }
            );
        } else {
            log::error!(
                "inbound telegram:{id}: its poller has not stopped within {} s; nothing else \
                 starts on its bot token until it has (the next reload retries)",
                STOP_BOUND.as_secs()
            );
            t.stopping.push(x);
        }
        if removed {
            svc.remove_account("telegram", &id);
        }
    }
    for acct in wanted {
        if t.by_id.contains_key(&acct.id) {
            continue;
        }
        if t.stopping
            .iter()
            .any(|x| x.acct.bot_token == acct.bot_token)
        {
            log::error!(
                "inbound telegram:{}: not started: a poller on its bot token is still stopping",
                acct.id
            );
            continue;
        }
        if let Some(x) = start(svc, acct) {
            t.by_id.insert(acct.id.clone(), x);
        }
    }
}

/// Starts one account's transport.
fn start(svc: &Arc<Service>, acct: &TelegramAccount) -> Option<Transport> {
    let transport = if acct.webhook.is_some() {
        "webhook"
    } else {
        "polling"
    };
    let health = Arc::new(AccountHealth::new(
        "telegram",
        &acct.id,
        transport,
        acct.poll_timeout,
    ));
    svc.add_account(health.clone());
    let stop = svc.stop.child();
    let (svc2, acct2, stop2) = (svc.clone(), acct.clone(), stop.clone());
    let short: String = acct.id.chars().take(11).collect();
    let spawned = if acct.webhook.is_some() {
        std::thread::Builder::new()
            .name(format!("tgw-{short}"))
            .spawn(move || register_webhook(&acct2, &health, &stop2))
    } else {
        std::thread::Builder::new()
            .name(format!("tg-{short}"))
            .spawn(move || supervise(&svc2, &acct2, &health, &stop2))
    };
    match spawned {
        Ok(thread) => Some(Transport {
            acct: acct.clone(),
            stop,
            thread,
        }),
        Err(e) => {
            log::error!(
                "inbound telegram:{}: cannot start its {transport} thread: {e}",
                acct.id
            );
            None
        }
    }
}

/// The request in flight, so that a drain can cancel it; one hook on the service's stop
/// token per poller (a token's hooks are never removed, so none is added per request).
struct Current(Arc<Mutex<Option<CancelToken>>>, CancelToken);

impl Current {
    fn new(stop: &CancelToken) -> Current {
        let slot: Arc<Mutex<Option<CancelToken>>> = Arc::default();
        let s = slot.clone();
        stop.on_cancel(move || {
            if let Some(t) = lock(&s).take() {
                t.cancel(CancelReason::Drain);
            }
        });
        Current(slot, stop.clone())
    }

    /// A token for the next request: already fired if the transport is stopping.
    fn next(&self) -> CancelToken {
        let t = CancelToken::new();
        *lock(&self.0) = Some(t.clone());
        if self.1.is_cancelled() {
            t.cancel(CancelReason::Drain);
        }
        t
    }
}

/// Sleeps `d`, waking early when the transport stops.
fn pause(stop: &CancelToken, d: Duration) {
    let end = std::time::Instant::now() + d;
    while !stop.is_cancelled() {
        let now = std::time::Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Exponential backoff with jitter: between half and all of `base × 2^n`, capped.
fn backoff(n: u32, rng: &mut Rng) -> Duration {
    let full = BACKOFF_BASE
        .saturating_mul(1 << n.min(10))
        .min(BACKOFF_CAP)
        .as_millis() as u64;
    Duration::from_millis(full / 2 + rng.next_u64() % (full / 2 + 1))
}

/// The poller's supervisor: runs it, and restarts it (after a backoff) if it panics.
fn supervise(
    svc: &Arc<Service>,
    acct: &TelegramAccount,
    health: &AccountHealth,
    stop: &CancelToken,
) {
    let current = Current::new(stop);
    let mut rng = Rng::from_os();
    let mut restarts = 0;
    while !stop.is_cancelled() {
        health.running.store(true, Ordering::Relaxed);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll(svc, acct, health, &current, &mut rng)
        }));
        health.running.store(false, Ordering::Relaxed);
        health.connected.store(false, Ordering::Relaxed);
        if stop.is_cancelled() {
            break;
        }
        if r.is_err() {
            health.restarts.fetch_add(1, Ordering::Relaxed);
            health.error("the poller failed unexpectedly and is restarted".into());
            log::error!(
                "inbound telegram:{}: the poller panicked; restarting",
                acct.id
            );
        }
        restarts += 1;
        pause(stop, backoff(restarts, &mut rng));
    }
    log::info!("inbound telegram:{}: poller stopped", acct.id);
}

/// Why a call failed.
#[derive(Debug, PartialEq)]
enum Failure {
    Conflict(String),
    RetryAfter(Duration, String),
    Auth(String),
    Other(String),
    Stopped,
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Conflict(m)
            | Failure::RetryAfter(_, m)
            | Failure::Auth(m)
            | Failure::Other(m) => m,
            Failure::Stopped => "stopped",
        }
    }
}

/// The bot's own id and username, for mentions.
struct Me {
    id: i64,
    username: Option<String>,
}

/// Polls until the service stops.
fn poll(
    svc: &Service,
    acct: &TelegramAccount,
    health: &AccountHealth,
    current: &Current,
    rng: &mut Rng,
) {
    let mut failures: u32 = 0;
    let mut me: Option<Me> = None;
    let mut offset: Option<i64> = None;
    // OpenClaw's poller too: a webhook left set (by keel in webhook mode before a reload, or by
    // another program) makes Telegram refuse every `getUpdates` with 409.
    let mut webhook_cleared = false;
    while !current.1.is_cancelled() {
        if me.is_some() && !webhook_cleared {
            let body = json!({"drop_pending_updates": false});
            match call(acct, current, "deleteWebhook", &body, Duration::ZERO) {
                Ok(_) => {}
                Err(Failure::Stopped) => break,
                // Not fatal: `getUpdates` says whether a webhook is still in the way.
                Err(e) => log::info!(
                    "inbound telegram:{}: deleteWebhook before polling failed ({}); polling anyway",
                    acct.id,
                    e.message()
                ),
            }
            webhook_cleared = true;
        }
        let result = match &me {
            None => call(acct, current, "getMe", &json!({}), Duration::ZERO).map(|r| {
                me = Some(Me {
                    id: r["id"].as_i64().unwrap_or(0),
                    username: r["username"].as_str().map(str::to_string),
                });
                *lock(&health.bot_name) = r["username"].as_str().map(|u| format!("@{u}"));
                health
                    .bot_id
                    .store(r["id"].as_i64().unwrap_or(0), Ordering::Relaxed);
                Vec::new()
            }),
            Some(_) => {
                let mut body = json!({
                    "timeout": acct.poll_timeout.as_secs(),
                    "limit": 100,
                    "allowed_updates": ["message", "channel_post"],
                });
                if let Some(o) = offset {
                    body["offset"] = json!(o);
                }
                call(acct, current, "getUpdates", &body, acct.poll_timeout).and_then(|r| match r {
                    Value::Array(a) => Ok(a),
                    _ => Err(Failure::Other(
                        "getUpdates: an answer whose result is not a list of updates".into(),
                    )),
                })
            }
        };
        let wait = match result {
            Ok(updates) => {
                failures = 0;
                health.ok();
                let Some(me) = me.as_ref() else { continue };
                match take(svc, acct, me, &updates) {
                    Ok(next) => {
                        if next.is_some() {
                            offset = next;
                        }
                        continue;
                    }
                    Err(e) => {
                        health.error(e.clone());
                        log::warn!("inbound telegram:{}: {e}; the updates come again", acct.id);
                        failures += 1;
                        backoff(failures, rng)
                    }
                }
            }
            Err(Failure::Stopped) => break,
            Err(Failure::Conflict(d)) => {
                failures += 1;
                let msg = format!(
                    "409 Conflict: {d} (another getUpdates poller or a webhook uses this bot \
                     token; stop it, or delete the webhook)"
                );
                if health.last_error.lock().map_or(true, |e| {
                    e.as_ref().is_none_or(|(m, _)| !m.starts_with("409"))
                }) {
                    log::warn!("inbound telegram:{}: {msg}", acct.id);
                }
                health.error(msg);
                backoff(failures, rng)
            }
            Err(Failure::RetryAfter(d, msg)) => {
                health.error(msg);
                d
            }
            Err(Failure::Auth(msg)) => {
                log::warn!("inbound telegram:{}: {msg}", acct.id);
                health.error(msg);
                AUTH_WAIT
            }
            Err(Failure::Other(msg)) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    log::warn!("inbound telegram:{}: {msg} (failure {failures})", acct.id);
                }
                health.error(msg);
                backoff(failures, rng)
            }
        };
        pause(&current.1, wait);
    }
}

/// Webhook mode: learns the bot (`getMe`) and registers the webhook (`setWebhook` with the
/// URL and the secret), retrying with backoff until it succeeds or keel stops; each failure
/// is the account's `lastError`. The thread ends once the webhook is set: Telegram pushes
/// from then on, and nothing polls.
fn register_webhook(acct: &TelegramAccount, health: &AccountHealth, stop: &CancelToken) {
    let Some(hook) = &acct.webhook else { return };
    let current = Current::new(stop);
    let mut rng = Rng::from_os();
    let mut failures = 0;
    health.running.store(true, Ordering::Relaxed);
    while !stop.is_cancelled() {
        let me = call(acct, &current, "getMe", &json!({}), Duration::ZERO);
        let result = me.and_then(|r| {
            *lock(&health.bot_name) = r["username"].as_str().map(|u| format!("@{u}"));
            health
                .bot_id
                .store(r["id"].as_i64().unwrap_or(0), Ordering::Relaxed);
            let body = json!({
                "url": hook.url,
                "secret_token": hook.secret,
                "allowed_updates": ["message", "channel_post"],
            });
            call(acct, &current, "setWebhook", &body, Duration::ZERO)
        });
        let wait = match result {
            Ok(_) => {
                health.ok();
                log::info!(
                    "inbound telegram:{}: webhook set; updates are received on {}",
                    acct.id,
                    hook.path
                );
                return;
            }
            Err(Failure::Stopped) => break,
            Err(Failure::RetryAfter(d, msg)) => {
                health.error(format!("setWebhook: {msg}"));
                d
            }
            Err(Failure::Conflict(m) | Failure::Auth(m) | Failure::Other(m)) => {
                failures += 1;
                if failures == 1 || u32::is_power_of_two(failures) {
                    log::warn!(
                        "inbound telegram:{}: cannot set the webhook: {m} (failure {failures})",
                        acct.id
                    );
                }
                health.error(format!("cannot set the webhook: {m}"));
                backoff(failures, &mut rng)
            }
        };
        pause(stop, wait);
    }
    health.running.store(false, Ordering::Relaxed);
}

/// What a webhook request to an account's `webhookPath` is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookAnswer {
    pub status: u16,
    /// The update was stored durably by this request (OpenClaw's
    /// `x-openclaw-delivery-accepted: durable`).
    pub durable: bool,
    pub error: Option<&'static str>,
}

impl HookAnswer {
    fn refuse(status: u16, why: &'static str) -> HookAnswer {
        HookAnswer {
            status,
            durable: false,
            error: Some(why),
        }
    }

    fn ok(durable: bool) -> HookAnswer {
        HookAnswer {
            status: 200,
            durable,
            error: None,
        }
    }
}

/// Takes one webhook update (on a worker, never the reactor): the secret checked in
/// constant time against `X-Telegram-Bot-Api-Secret-Token`, the body parsed, the message
/// stored durably by [`Service::ingest`] before `200` (a repeated `update_id` is a
/// duplicate: `200`, nothing runs). `401` for a missing or wrong secret, `400` for a body
/// that is not an update, `503` when the message could not be stored (Telegram retries).
pub fn webhook_update(
    svc: &Service,
    acct: &TelegramAccount,
    secret: Option<&str>,
    body: &[u8],
) -> HookAnswer {
    let Some(hook) = &acct.webhook else {
        return HookAnswer::refuse(404, "not a webhook account");
    };
    let health = svc.account_health("telegram", &acct.id);
    let count = |f: fn(&AccountHealth) -> &std::sync::atomic::AtomicU64| {
        if let Some(h) = &health {
            f(h).fetch_add(1, Ordering::Relaxed);
        }
    };
    let authentic =
        secret.is_some_and(|s| crate::auth::constant_time_eq(s.as_bytes(), hook.secret.as_bytes()));
    if !authentic {
        count(|h| &h.refused);
        log::debug!(
            "inbound telegram:{}: a webhook request without the right secret token was refused",
            acct.id
        );
        return HookAnswer::refuse(401, "missing or wrong secret token");
    }
    if body.len() > super::webhook::MAX_BODY {
        count(|h| &h.refused);
        return HookAnswer::refuse(413, "body too large");
    }
    let update: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            count(|h| &h.refused);
            log::warn!(
                "inbound telegram:{}: a webhook body that is not a JSON update was refused",
                acct.id
            );
            return HookAnswer::refuse(400, "the body is not a Telegram update");
        }
    };
    let Some(id) = update["update_id"].as_i64() else {
        count(|h| &h.refused);
        return HookAnswer::refuse(400, "an update without update_id");
    };
    if let Some(h) = &health {
        h.ok();
    }
    let me = Me {
        id: health
            .as_ref()
            .map_or(0, |h| h.bot_id.load(Ordering::Relaxed)),
        username: health.as_ref().and_then(|h| {
            lock(&h.bot_name)
                .as_deref()
                .map(|n| n.trim_start_matches('@').to_string())
        }),
    };
    let Some(m) = to_inbound(acct, &me, id, &update) else {
        // Authentic but nothing to run (an edit, a sticker): acknowledged.
        return HookAnswer::ok(false);
    };
    match svc.ingest(m) {
        Ok(Ingested::Stored) => HookAnswer::ok(true),
        Ok(_) => HookAnswer::ok(false),
        Err(e) => {
            if let Some(h) = &health {
                h.error(format!("a webhook update could not be stored: {e}"));
            }
            log::warn!("inbound telegram:{}: {e}; Telegram sends it again", acct.id);
            HookAnswer::refuse(503, "the update could not be stored; retry")
        }
    }
}

/// Hands every message of a batch to the service; the next offset once all are stored.
fn take(
    svc: &Service,
    acct: &TelegramAccount,
    me: &Me,
    updates: &[Value],
) -> Result<Option<i64>, String> {
    let mut next = None;
    for u in updates {
        let Some(id) = u["update_id"].as_i64() else {
            // Without an id it cannot be confirmed or skipped; nothing after it is safe.
            return Err("an update without update_id".into());
        };
        if let Some(m) = to_inbound(acct, me, id, u) {
            svc.ingest(m)?;
        }
        next = Some(id.saturating_add(1));
    }
    Ok(next)
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// One update as a message for the agent; `None` for anything that is not a text message.
fn to_inbound(acct: &TelegramAccount, me: &Me, update_id: i64, u: &Value) -> Option<Inbound> {
    let m = u.get("message").or_else(|| u.get("channel_post"))?;
    let text = m["text"].as_str().or_else(|| m["caption"].as_str())?;
    let chat = &m["chat"];
    let chat_kind = match chat["type"].as_str()? {
        "private" => ChatKind::Direct,
        "group" | "supergroup" => ChatKind::Group,
        "channel" => ChatKind::Channel,
        _ => return None,
    };
    let chat_id = id_text(&chat["id"])?;
    let from = &m["from"];
    let sender_id = id_text(&from["id"])
        .or_else(|| id_text(&m["sender_chat"]["id"]))
        .unwrap_or_else(|| chat_id.clone());
    let sender_name = match (from["first_name"].as_str(), from["last_name"].as_str()) {
        (Some(f), Some(l)) => Some(format!("{f} {l}")),
        (Some(f), None) => Some(f.to_string()),
        _ => from["username"].as_str().map(str::to_string),
    }
    .map(|n| cut(&n, super::event::MAX_NAME));
    let thread_id = (m["is_topic_message"] == true)
        .then(|| id_text(&m["message_thread_id"]))
        .flatten();
    let lower = text.to_lowercase();
    let mentioned = me
        .username
        .as_ref()
        .is_some_and(|u| lower.contains(&format!("@{}", u.to_lowercase())))
        || (me.id != 0 && m["reply_to_message"]["from"]["id"].as_i64() == Some(me.id))
        || m["entities"].as_array().is_some_and(|es| {
            es.iter()
                .any(|e| e["type"] == "text_mention" && e["user"]["id"].as_i64() == Some(me.id))
        });
    Some(Inbound {
        channel: "telegram".into(),
        account_id: acct.id.clone(),
        event_id: update_id.to_string(),
        chat_kind,
        chat_id,
        thread_id,
        sender_id,
        sender_name,
        message_id: id_text(&m["message_id"]),
        text: text.to_string(),
        mentioned,
        ts_ms: m["date"].as_i64().unwrap_or(0).saturating_mul(1000),
    })
}

fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn scrub(acct: &TelegramAccount, s: String) -> String {
    if acct.bot_token.len() >= 4 {
        s.replace(&acct.bot_token, "<redacted>")
    } else {
        s
    }
}

/// One Bot API call: its `result`, or why not.
fn call(
    acct: &TelegramAccount,
    current: &Current,
    method: &str,
    body: &Value,
    long_poll: Duration,
) -> Result<Value, Failure> {
    let base = Url::parse(&acct.base_url)
        .map_err(|_| Failure::Auth("the configured Telegram API root is not a valid URL".into()))?;
    let url = base.join(&format!("/bot{}/{method}", acct.bot_token));
    let req = Request::new("POST", url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .header("User-Agent", &format!("keel/{}", crate::VERSION))
        .body(body.to_string().into_bytes());
    let limits = Limits::from_now(
        long_poll + Duration::from_secs(10),
        CONNECT_TIMEOUT,
        long_poll + Duration::from_secs(5),
    );
    let token = current.next();
    let net_err = |e: NetError| match e {
        NetError::Cancelled => Failure::Stopped,
        // Never quoted: a URL error would hold the token.
        NetError::InvalidUrl(_) => {
            Failure::Other(format!("{method}: the request URL is not valid"))
        }
        e => Failure::Other(scrub(acct, format!("{method}: {e}"))),
    };
    let mut resp = net::send(&req, &limits, &token).map_err(net_err)?;
    let bytes = resp.read_to_end(MAX_ANSWER).map_err(net_err)?;
    let status = resp.status;
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => {
            return Err(match status {
                409 => Failure::Conflict("terminated by other getUpdates request".into()),
                401 | 404 => {
                    Failure::Auth(format!("{method}: http {status}: the bot token is refused"))
                }
                _ => Failure::Other(format!(
                    "{method}: http {status} with an answer that is not JSON"
                )),
            });
        }
    };
    if status == 200 && v["ok"] == true {
        return Ok(v["result"].clone());
    }
    let desc = scrub(
        acct,
        crate::config::channels::shown(v["description"].as_str().unwrap_or("no description")),
    );
    let code = v["error_code"].as_u64().map_or(status, |c| c as u16);
    Err(match code {
        409 => Failure::Conflict(desc),
        429 => {
            let s = v["parameters"]["retry_after"]
                .as_u64()
                .unwrap_or(5)
                .min(3600);
            Failure::RetryAfter(
                Duration::from_secs(s),
                format!("{method}: 429 {desc} (retry after {s} s)"),
            )
        }
        401 | 404 => Failure::Auth(format!("{method}: {code} {desc}: the bot token is refused")),
        _ if status == 200 => Failure::Other(format!("{method}: an answer without ok: true")),
        _ => Failure::Other(format!("{method}: {code} {desc}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct() -> TelegramAccount {
        TelegramAccount {
            id: "default".into(),
            bot_token: "1:secret".into(),
            base_url: "http://127.0.0.1:9".into(),
            poll_timeout: Duration::from_secs(1),
            webhook: None,
            receive: true,
            access: Default::default(),
        }
    }

    #[test]
    fn updates_become_messages() {
        let me = Me {
            id: 99,
            username: Some("keel_bot".into()),
        };
        let u = json!({"update_id": 5, "message": {"message_id": 7, "date": 1700000000,
            "chat": {"id": -100, "type": "supergroup"}, "from": {"id": 42, "first_name": "Ada"},
            "is_topic_message": true, "message_thread_id": 3, "text": "hi @Keel_Bot"}});
        let m = to_inbound(&acct(), &me, 5, &u).unwrap();
        assert_eq!(m.chat_kind, ChatKind::Group);
        assert_eq!((m.chat_id.as_str(), m.sender_id.as_str()), ("-100", "42"));
        assert_eq!(m.thread_id.as_deref(), Some("3"));
        assert!(m.mentioned);
        assert_eq!(m.ts_ms, 1_700_000_000_000);
        assert_eq!(m.check(), Ok(()));
        let reply = json!({"update_id": 6, "message": {"message_id": 8, "date": 1,
            "chat": {"id": 42, "type": "private"}, "from": {"id": 42},
            "reply_to_message": {"from": {"id": 99}}, "text": "yes"}});
        let m = to_inbound(&acct(), &me, 6, &reply).unwrap();
        assert!(m.mentioned && m.chat_kind == ChatKind::Direct);
        // Not text: skipped.
        let sticker = json!({"update_id": 7, "message": {"chat": {"id": 1, "type": "private"}, "sticker": {}}});
        assert!(to_inbound(&acct(), &me, 7, &sticker).is_none());
        assert!(
            to_inbound(
                &acct(),
                &me,
                8,
                &json!({"update_id": 8, "edited_message": {}})
            )
            .is_none()
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut rng = Rng::new(1);
        for n in 0..20 {
            let d = backoff(n, &mut rng);
            let full = BACKOFF_BASE.saturating_mul(1 << n.min(10)).min(BACKOFF_CAP);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?}");
        }
    }
}
