//! Channel adapters: how one queued message reaches a chat channel over HTTP, and how each
//! channel's failures are classified for the queue's retry decision.
//!
//! Configured under OpenClaw's `channels.<channel>` keys ([`parse_channels`]); every channel
//! takes a `baseUrl` override so self-hosted relays (and the loopback fakes of the tests) can
//! stand in for the real API. Supported ([`Kind`]): `telegram`, `slack`, `discord`, `feishu`,
//! `openclaw-weixin` and `webhook`. A channel's [`Credentials`] have one shape per kind, and
//! their variant is the kind a send dispatches on.
//!
//! Invariants:
//! - One [`send`] is one attempt: it never retries on its own (the queue does, with backoff),
//!   except for Feishu's single immediate retry after a fetched tenant token was rejected,
//!   which is a fresh credential rather than a second delivery.
//! - Every failure is [`ErrorClass::Permanent`] (retrying cannot help: bad address, revoked
//!   token, rejected content) or [`ErrorClass::Transient`] (timeouts, resets, 5xx, 429, a
//!   cancel). When a channel answers 2xx but its own status field cannot be read, the send is
//!   transient: delivery is at least once, so a possible duplicate beats a lost message.
//! - At most [`ANSWER_LIMIT`] bytes of any answer are read, and only a short message
//!   ([`MESSAGE_LIMIT`]) from it is kept.
//! - Credentials never appear in `Debug` output or error messages: [`Credentials`]' `Debug`
//!   names only their keys, and every [`SendError`] message is scrubbed of the configured
//!   secrets (the Telegram token travels in the URL path, which no `NetError` echoes).
//! - The key (the queue entry's [`channel_key`](super::queue::Entry::channel_key), the same on
//!   every attempt) goes wherever the channel can deduplicate on it: Feishu's `uuid`,
//!   Discord's `nonce` (with `enforce_nonce`), the weixin relay's and the webhook's
//!   `idempotencyKey`. Telegram and Slack have no such field, so a retry after a lost answer
//!   may post twice there ([`Kind::dedupes`]).
//! - Only requests that carry the message call `on_wire` before their first byte (a Feishu
//!   token fetch does not).
//! - Replies are split when they are queued; a Discord text still over 2000 characters (an
//!   entry an older version queued whole) is sent as several messages, each with its own nonce
//!   derived from the key. At most [`DISCORD_MAX_PARTS`] messages are sent; the rest is cut
//!   with a visible note.

use super::queue::{ErrorClass, Route};
use super::split;
use crate::cancel::CancelToken;
use crate::clock;
use crate::digest::{hex, hmac_sha256, sha256};
use crate::net::{self, Limits, NetError, Request, Url};
use crate::sync::lock;
use serde_json::{Value, json};
use std::fmt;
use std::time::{Duration, Instant};

/// The most of any answer that is read.
pub const ANSWER_LIMIT: usize = 64 * 1024;
/// The longest message kept from an answer.
pub const MESSAGE_LIMIT: usize = 300;
/// Discord's limit on `content`, in UTF-16 code units (what Discord counts).
pub const DISCORD_MAX_CHARS: usize = 2000;
/// The most Discord messages one send is split into.
pub const DISCORD_MAX_PARTS: usize = 10;
/// Feishu's limit on `uuid`; a longer idempotency key is replaced by its hash.
const FEISHU_UUID_MAX: usize = 50;
/// Feishu codes for a rejected or missing access token (answered with HTTP 200 or 400).
const FEISHU_TOKEN_INVALID: &[i64] = &[99991661, 99991663, 99991664, 99991671];
/// Feishu codes for "too many requests" (global frequency limit, per-chat limit).
const FEISHU_RATE_LIMITED: &[i64] = &[99991400, 230020];
/// A fetched tenant token is refreshed this long before Feishu says it expires (or at half
/// its life, when that is shorter).
const FEISHU_TOKEN_MARGIN: Duration = Duration::from_secs(300);

pub use crate::config::channels::*;
use crate::config::channels::{CachedToken, address_problem, feishu_id_type, shown};

/// What a successful send reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// The channel's id for the message (Telegram's `message_id`, Slack's `ts`, Discord's
    /// `id` of the first part, Feishu's `message_id`), when it said one.
    pub message_id: Option<String>,
}

/// Why a send failed, and whether another try may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub class: ErrorClass,
    /// Lowercase, names the channel, never holds a credential.
    pub message: String,
    /// How long the channel asked to wait (a 429's `retry_after` or `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl SendError {
    fn permanent(message: impl Into<String>) -> SendError {
        SendError {
            class: ErrorClass::Permanent,
            message: message.into(),
            retry_after: None,
        }
    }

    fn transient(message: impl Into<String>) -> SendError {
        SendError {
            class: ErrorClass::Transient,
            message: message.into(),
            retry_after: None,
        }
    }

    fn after(mut self, retry_after: Option<Duration>) -> SendError {
        self.retry_after = retry_after;
        self
    }

    pub fn is_permanent(&self) -> bool {
        self.class == ErrorClass::Permanent
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "delivery: {}", self.message)
    }
}

impl std::error::Error for SendError {}

/// Sends `text` to `route` over `cfg`'s channel: one attempt, classified. `limits` and
/// `cancel` cover the whole send (Feishu's token fetch and every part of a split Discord
/// message included). `on_wire` is called just before the first byte of each request that
/// carries the message is written (not before a token fetch); if it fails, that request is
/// not written and the send fails transient.
pub fn send(
    cfg: &ChannelConfig,
    route: &Route,
    text: &str,
    idempotency_key: &str,
    limits: &Limits,
    cancel: &CancelToken,
    on_wire: &dyn Fn() -> std::io::Result<()>,
) -> Result<Sent, SendError> {
    let kind = cfg.kind();
    if route.channel != kind.as_str() {
        return Err(SendError::permanent(format!(
            "channel {}: the route is for channel {:?}",
            kind.as_str(),
            shown(&route.channel)
        )));
    }
    if let Some(why) = address_problem(kind, &route.to) {
        return Err(SendError::permanent(why));
    }
    if let Some(key) = cfg.credentials.empty() {
        return Err(SendError::permanent(format!(
            "channel {}: no {key} is configured",
            kind.as_str()
        )));
    }
    let call = Call {
        cfg,
        kind,
        limits,
        cancel,
        on_wire,
    };
    let key = idempotency_key;
    let result = match &cfg.credentials {
        Credentials::Telegram { bot_token } => telegram(&call, bot_token, route, text),
        Credentials::Slack { bot_token } => slack(&call, bot_token, route, text),
        Credentials::Discord { token } => discord(&call, token, route, text, key),
        Credentials::Feishu(auth) => feishu(&call, auth, route, text, key),
        Credentials::Weixin { token } => weixin(&call, token, route, text, key),
        Credentials::Webhook { secret } => {
            let secret = secret.as_deref().filter(|s| !s.is_empty());
            webhook(&call, secret, route, text, key)
        }
    };
    result.map_err(|e| SendError {
        message: cfg.scrub(e.message),
        ..e
    })
}

/// What one send works with.
struct Call<'a> {
    cfg: &'a ChannelConfig,
    kind: Kind,
    limits: &'a Limits,
    cancel: &'a CancelToken,
    on_wire: &'a dyn Fn() -> std::io::Result<()>,
}

/// One HTTP answer, read up to [`ANSWER_LIMIT`].
struct Answer {
    status: u16,
    body: Vec<u8>,
    json: Option<Value>,
    retry_after_header: Option<Duration>,
    /// Feishu's gateway says when its rate limit window resets.
    ratelimit_reset_header: Option<Duration>,
}

impl Answer {
    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn field(&self, pointer: &str) -> Option<&Value> {
        self.json.as_ref()?.pointer(pointer)
    }

    fn str_field(&self, pointer: &str) -> Option<&str> {
        self.field(pointer).and_then(Value::as_str)
    }

    /// A short text for an error: the body as text, trimmed and cut.
    fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        let t = t.trim();
        if t.is_empty() {
            return "(empty answer)".to_string();
        }
        short(t)
    }
}

fn short(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match s.char_indices().nth(MESSAGE_LIMIT) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Any id (number or string) as text.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Retry-After as delay-seconds, fractions tolerated (Discord sends them).
fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

fn retry_after_value(v: Option<&Value>) -> Option<Duration> {
    Duration::try_from_secs_f64(v?.as_f64()?).ok()
}

impl Call<'_> {
    fn name(&self) -> &'static str {
        self.kind.as_str()
    }

    fn base(&self) -> Result<Url, SendError> {
        // Not echoed: the parse error would quote the URL.
        Url::parse(&self.cfg.base_url).map_err(|_| {
            SendError::permanent(format!(
                "channel {}: the configured base url is not a valid http(s) url",
                self.name()
            ))
        })
    }

    fn post_json(&self, url: Url, body: &Value) -> Request {
        Request::new("POST", url)
            .header("Content-Type", "application/json; charset=utf-8")
            .header("Accept", "application/json")
            .header("User-Agent", &format!("keel/{}", crate::VERSION))
            .body(body.to_string().into_bytes())
    }

    /// Sends the request that carries the message, marking it on the wire first: see
    /// [`send`].
    fn deliver(&self, req: &Request) -> Result<Answer, SendError> {
        self.exchange_with(req, &mut || (self.on_wire)())
    }

    /// Sends a request that does not carry the message (a token fetch).
    fn exchange(&self, req: &Request) -> Result<Answer, SendError> {
        self.exchange_with(req, &mut || Ok(()))
    }

    /// Sends `req` and reads up to [`ANSWER_LIMIT`] of the answer; a transport failure is
    /// already classified.
    fn exchange_with(
        &self,
        req: &Request,
        before_write: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> Result<Answer, SendError> {
        let mut resp = net::send_with(req, self.limits, self.cancel, before_write)
            .map_err(|e| self.transport(e))?;
        let body = resp
            .read_up_to(ANSWER_LIMIT)
            .map_err(|e| self.transport(e))?;
        Ok(Answer {
            status: resp.status,
            json: serde_json::from_slice(&body).ok(),
            body,
            retry_after_header: resp.header("retry-after").and_then(parse_retry_after),
            ratelimit_reset_header: resp
                .header("x-ogw-ratelimit-reset")
                .and_then(parse_retry_after),
        })
    }

    fn transport(&self, e: NetError) -> SendError {
        match e {
            NetError::Cancelled => SendError::transient("cancelled"),
            // Never quoted: the URL may hold the Telegram token.
            NetError::InvalidUrl(_) => SendError::permanent(format!(
                "channel {}: the request url is not valid",
                self.name()
            )),
            e => SendError::transient(format!("channel {}: {e}", self.name())),
        }
    }

    /// The rule for answers that carry no status of their own: 2xx delivered, 408/429/5xx
    /// worth another try, any other status final.
    fn by_status(&self, a: &Answer, detail: &str) -> SendError {
        let msg = format!("channel {}: http {}: {detail}", self.name(), a.status);
        match a.status {
            429 => SendError::transient(msg).after(a.retry_after_header),
            408 | 500..=599 => SendError::transient(msg),
            _ => SendError::permanent(msg),
        }
    }

    /// A 2xx whose own status field is missing: the message may or may not have been taken.
    fn unreadable(&self, a: &Answer) -> SendError {
        SendError::transient(format!(
            "channel {}: http {} with an answer that is not the api's: {}",
            self.name(),
            a.status,
            a.text()
        ))
    }
}

/// Percent-encodes one path segment (everything but unreserved characters and `:`).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Telegram: POST {base}/bot{token}/sendMessage

fn telegram(call: &Call, token: &str, route: &Route, text: &str) -> Result<Sent, SendError> {
    let chat_id = match route.to.parse::<i64>() {
        Ok(n) => json!(n),
        Err(_) => json!(route.to),
    };
    let mut body = json!({"chat_id": chat_id, "text": text});
    if let Some(thread) = &route.thread_id {
        let Ok(n) = thread.parse::<i64>() else {
            return Err(SendError::permanent(format!(
                "channel telegram: thread id {:?} is not a number",
                shown(thread)
            )));
        };
        body["message_thread_id"] = json!(n);
    }
    let url = call
        .base()?
        .join(&format!("/bot{}/sendMessage", segment(token)));
    let a = call.deliver(&call.post_json(url, &body))?;
    if a.is_success() && a.field("/ok") == Some(&Value::Bool(true)) {
        return Ok(Sent {
            message_id: a.field("/result/message_id").and_then(id_text),
        });
    }
    let status = match a.field("/error_code").and_then(Value::as_u64) {
        Some(code) if a.is_success() => u16::try_from(code).unwrap_or(a.status),
        _ => a.status,
    };
    let Some(description) = a.str_field("/description") else {
        return Err(if a.is_success() {
            call.unreadable(&a)
        } else {
            call.by_status(&a, &a.text())
        });
    };
    let mut msg = format!("channel telegram: {status} {}", short(description));
    match status {
        429 => Err(SendError::transient(msg)
            .after(retry_after_value(a.field("/parameters/retry_after")).or(a.retry_after_header))),
        408 | 500..=599 => Err(SendError::transient(msg)),
        // "chat not found", "bot was blocked by the user", "Forbidden: ...", "message is too
        // long", a bad token (401/404): nothing a retry changes.
        _ => {
            if let Some(to) = a.field("/parameters/migrate_to_chat_id").and_then(id_text) {
                msg.push_str(&format!(" (the group is now chat {to})"));
            }
            Err(SendError::permanent(msg))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Slack: POST {base}/chat.postMessage

fn slack(call: &Call, token: &str, route: &Route, text: &str) -> Result<Sent, SendError> {
    let mut body = json!({"channel": route.to, "text": text});
    if let Some(ts) = &route.thread_id {
        body["thread_ts"] = json!(ts);
    }
    let req = call
        .post_json(call.base()?.join("/chat.postMessage"), &body)
        .header("Authorization", &format!("Bearer {token}"));
    let a = call.deliver(&req)?;
    let error = a.str_field("/error");
    if a.status == 429 {
        return Err(SendError::transient(format!(
            "channel slack: {}",
            error.unwrap_or("ratelimited")
        ))
        .after(a.retry_after_header));
    }
    if !a.is_success() {
        return Err(call.by_status(&a, &error.map_or_else(|| a.text(), short)));
    }
    match (a.field("/ok").and_then(Value::as_bool), error) {
        (Some(true), _) => Ok(Sent {
            message_id: a.str_field("/ts").map(str::to_string),
        }),
        (Some(false), Some(e)) => {
            let msg = format!("channel slack: {}", short(e));
            match e {
                "ratelimited" | "rate_limited" => {
                    Err(SendError::transient(msg).after(a.retry_after_header))
                }
                "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout" => {
                    Err(SendError::transient(msg))
                }
                // channel_not_found, not_in_channel, invalid_auth, account_inactive,
                // is_archived, msg_too_long, ...: the same request fails the same way.
                _ => Err(SendError::permanent(msg)),
            }
        }
        _ => Err(call.unreadable(&a)),
    }
}

// ---------------------------------------------------------------------------------------------
// Discord: POST {base}/channels/{id}/messages

fn discord(
    call: &Call,
    token: &str,
    route: &Route,
    text: &str,
    key: &str,
) -> Result<Sent, SendError> {
    let token = token.strip_prefix("Bot ").unwrap_or(token);
    // A Discord thread is a channel of its own: a reply in a thread goes to the thread's id.
    let target = match &route.thread_id {
        Some(t) if address_problem(Kind::Discord, t).is_none() => t.as_str(),
        Some(t) => {
            return Err(SendError::permanent(format!(
                "channel discord: thread id {:?} is not a snowflake",
                shown(t)
            )));
        }
        None => route.to.as_str(),
    };
    let url = call
        .base()?
        .join(&format!("/channels/{}/messages", segment(target)));
    let parts = discord_parts(text);
    let nonce_base = (!key.is_empty()).then(|| hex(&sha256(&[key.as_bytes()]))[..16].to_string());
    let mut first_id = None;
    for (i, part) in parts.iter().enumerate() {
        let mut body = json!({"content": part});
        if let Some(n) = &nonce_base {
            // At most 25 characters, as Discord requires.
            body["nonce"] = json!(format!("{n}.{i}"));
            body["enforce_nonce"] = json!(true);
        }
        let req = call
            .post_json(url.clone(), &body)
            .header("Authorization", &format!("Bot {token}"));
        let a = call.deliver(&req).map_err(|e| partial(e, i, parts.len()))?;
        if a.is_success() {
            if i == 0 {
                first_id = a.str_field("/id").map(str::to_string);
            }
            continue;
        }
        let detail = match (
            a.field("/code").and_then(Value::as_i64),
            a.str_field("/message"),
        ) {
            (Some(code), Some(m)) => format!("code {code}: {}", short(m)),
            (None, Some(m)) => short(m),
            _ => a.text(),
        };
        let e = if a.status == 429 {
            SendError::transient(format!("channel discord: http 429: {detail}"))
                .after(retry_after_value(a.field("/retry_after")).or(a.retry_after_header))
        } else {
            // 404 Unknown Channel (10003), 403 Missing Access (50001), 401, 400: permanent.
            call.by_status(&a, &detail)
        };
        return Err(partial(e, i, parts.len()));
    }
    Ok(Sent {
        message_id: first_id,
    })
}

/// Says how far a split message got before it failed.
fn partial(mut e: SendError, sent: usize, total: usize) -> SendError {
    if total > 1 && e.message != "cancelled" {
        e.message
            .push_str(&format!(" (after {sent} of {total} parts were sent)"));
    }
    e
}

/// Splits `text` into Discord-sized messages. Replies are split when they are queued, so this
/// only matters for an entry an older version queued whole.
fn discord_parts(text: &str) -> Vec<String> {
    split::split(text, DISCORD_MAX_CHARS, DISCORD_MAX_PARTS)
}

// ---------------------------------------------------------------------------------------------
// Feishu: POST {base}/open-apis/im/v1/messages?receive_id_type=...

fn feishu(
    call: &Call,
    auth: &FeishuAuth,
    route: &Route,
    text: &str,
    key: &str,
) -> Result<Sent, SendError> {
    let id_type = feishu_id_type(&route.to).unwrap_or("open_id");
    let url = call.base()?.join(&format!(
        "/open-apis/im/v1/messages?receive_id_type={id_type}"
    ));
    let mut body = json!({
        "receive_id": route.to,
        "msg_type": "text",
        "content": json!({"text": text}).to_string(),
    });
    if !key.is_empty() {
        // Feishu sends at most one message per uuid within an hour.
        body["uuid"] = json!(if key.len() <= FEISHU_UUID_MAX {
            key.to_string()
        } else {
            format!("keel-{}", &hex(&sha256(&[key.as_bytes()]))[..40])
        });
    }
    let mut refreshed = false;
    loop {
        let (token, fetched) = feishu_token(call, auth)?;
        let req = call
            .post_json(url.clone(), &body)
            .header("Authorization", &format!("Bearer {token}"));
        let a = call.deliver(&req)?;
        let code = a.field("/code").and_then(Value::as_i64);
        if a.is_success() && code == Some(0) {
            return Ok(Sent {
                message_id: a.str_field("/data/message_id").map(str::to_string),
            });
        }
        let token_rejected =
            a.status == 401 || code.is_some_and(|c| FEISHU_TOKEN_INVALID.contains(&c));
        if token_rejected && fetched {
            // Feishu can invalidate a tenant token before its announced expiry: fetch a new
            // one and try once more now (the uuid keeps this from ever posting twice).
            let mut cached = lock(&call.cfg.feishu_token);
            // Unless another worker has already put a newer one there.
            if cached.as_ref().is_some_and(|c| c.token == token) {
                *cached = None;
            }
            drop(cached);
            if !refreshed {
                refreshed = true;
                continue;
            }
        }
        let detail = match (code, a.str_field("/msg")) {
            (Some(c), Some(m)) => format!("code {c}: {}", short(m)),
            (Some(c), None) => format!("code {c}"),
            _ => a.text(),
        };
        let msg = format!("channel feishu: http {}: {detail}", a.status);
        return Err(match code {
            _ if a.status == 429 || code.is_some_and(|c| FEISHU_RATE_LIMITED.contains(&c)) => {
                SendError::transient(msg).after(a.retry_after_header.or(a.ratelimit_reset_header))
            }
            _ if token_rejected && fetched => SendError::transient(msg),
            _ if a.status == 408 || a.status >= 500 => SendError::transient(msg),
            None if a.is_success() => call.unreadable(&a),
            // 99992360 (invalid ids), 230001 (bad parameter), 230002 (bot not in the chat),
            // 99991672 (scope not granted), a rejected configured token, ...
            _ => SendError::permanent(msg),
        });
    }
}

/// The tenant token to use and whether it was fetched (and so may be refreshed).
fn feishu_token(call: &Call, auth: &FeishuAuth) -> Result<(String, bool), SendError> {
    let (app_id, app_secret) = match auth {
        FeishuAuth::Tenant(t) => return Ok((t.clone(), false)),
        FeishuAuth::App { app_id, app_secret } => (app_id, app_secret),
    };
    let now = Instant::now();
    if let Some(c) = lock(&call.cfg.feishu_token).as_ref()
        && now < c.refresh_at
    {
        return Ok((c.token.clone(), true));
    }
    // Not held across the fetch: two workers that both find the token stale both fetch, which
    // Feishu allows (the previous token stays valid meanwhile).
    let url = call
        .base()?
        .join("/open-apis/auth/v3/tenant_access_token/internal");
    let body = json!({"app_id": app_id, "app_secret": app_secret});
    let a = call.exchange(&call.post_json(url, &body))?;
    let code = a.field("/code").and_then(Value::as_i64);
    let token = a
        .str_field("/tenant_access_token")
        .filter(|t| !t.is_empty());
    if let (true, Some(0), Some(token)) = (a.is_success(), code, token) {
        let life = a
            .field("/expire")
            .and_then(Value::as_u64)
            .map_or(Duration::from_secs(7200), Duration::from_secs);
        let refresh_at = now + life.saturating_sub(FEISHU_TOKEN_MARGIN.min(life / 2));
        *lock(&call.cfg.feishu_token) = Some(CachedToken {
            token: token.to_string(),
            refresh_at,
        });
        return Ok((token.to_string(), true));
    }
    let detail = match (code, a.str_field("/msg")) {
        (Some(c), Some(m)) => format!("code {c}: {}", short(m)),
        _ => a.text(),
    };
    let msg = format!(
        "channel feishu: fetching a tenant token failed: http {}: {detail}",
        a.status
    );
    Err(match code {
        _ if a.status == 429 || code.is_some_and(|c| FEISHU_RATE_LIMITED.contains(&c)) => {
            SendError::transient(msg).after(a.retry_after_header.or(a.ratelimit_reset_header))
        }
        _ if a.status == 408 || a.status >= 500 => SendError::transient(msg),
        None | Some(0) => SendError::transient(msg),
        // A wrong appId/appSecret (10003, 10014, ...) stays wrong.
        Some(_) => SendError::permanent(msg),
    })
}

// ---------------------------------------------------------------------------------------------
// openclaw-weixin: POST {base}/send

fn weixin(
    call: &Call,
    token: &str,
    route: &Route,
    text: &str,
    key: &str,
) -> Result<Sent, SendError> {
    let body = json!({"to": route.to, "text": text, "idempotencyKey": key});
    let req = call
        .post_json(call.base()?.join("/send"), &body)
        .header("Authorization", &format!("Bearer {token}"));
    let a = call.deliver(&req)?;
    if a.is_success() {
        return Ok(Sent {
            message_id: ["/messageId", "/id", "/data/messageId"]
                .iter()
                .find_map(|p| a.field(p).and_then(id_text)),
        });
    }
    Err(call.by_status(&a, &error_detail(&a)))
}

/// The `error`/`message` of a JSON error body, or the body's text.
fn error_detail(a: &Answer) -> String {
    ["/error/message", "/error", "/message"]
        .iter()
        .find_map(|p| a.str_field(p))
        .map_or_else(|| a.text(), short)
}

// ---------------------------------------------------------------------------------------------
// webhook: POST {url}, signed

/// The `X-Keel-Signature` value for a webhook body: `sha256=` and the hex HMAC-SHA256, keyed
/// with the secret, of `"<timestamp>.<body>"` (the timestamp as sent in `X-Keel-Timestamp`).
/// A receiver recomputes it, compares in constant time and refuses stale timestamps.
pub fn webhook_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mac = hmac_sha256(secret.as_bytes(), &[timestamp.as_bytes(), b".", body]);
    format!("sha256={}", hex(&mac))
}

fn webhook(
    call: &Call,
    secret: Option<&str>,
    route: &Route,
    text: &str,
    key: &str,
) -> Result<Sent, SendError> {
    let ts_ms = clock::wall_ms();
    let mut body = json!({
        "channel": "webhook",
        "to": route.to,
        "text": text,
        "idempotencyKey": key,
        "ts": ts_ms,
    });
    if let Some(a) = &route.account_id {
        body["accountId"] = json!(a);
    }
    if let Some(t) = &route.thread_id {
        body["threadId"] = json!(t);
    }
    let timestamp = (ts_ms / 1000).to_string();
    let mut req = call
        .post_json(call.base()?, &body)
        .header("X-Keel-Timestamp", &timestamp);
    if let Some(secret) = secret {
        let sig = webhook_signature(secret, &timestamp, &req.body);
        req = req.header("X-Keel-Signature", &sig);
    }
    if !key.is_empty() {
        req = req.header("Idempotency-Key", key);
    }
    let a = call.deliver(&req)?;
    if a.is_success() {
        return Ok(Sent {
            message_id: ["/messageId", "/id"]
                .iter()
                .find_map(|p| a.field(p).and_then(id_text)),
        });
    }
    Err(call.by_status(&a, &error_detail(&a)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::CancelReason;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::thread;

    /// Fails the test instead of hanging it; a panic in `f` fails it with its own message.
    #[track_caller]
    fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        let h = thread::spawn(move || {
            let v = f();
            let _ = tx.send(());
            v
        });
        // Either the result arrives or the sender is dropped by a panic.
        match rx.recv_timeout(limit) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("test did not finish within {limit:?}"),
        }
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// One request as the fake server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        #[track_caller]
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("the request body is JSON")
        }
    }

    enum Reply {
        Http {
            status: u16,
            headers: Vec<(&'static str, String)>,
            body: String,
        },
        /// Read the request, then say nothing until the client gives up.
        Silent,
    }

    fn reply(status: u16, body: Value) -> Reply {
        Reply::Http {
            status,
            headers: vec![("Content-Type", "application/json".to_string())],
            body: body.to_string(),
        }
    }

    fn reply_with(status: u16, header: (&'static str, &str), body: Value) -> Reply {
        Reply::Http {
            status,
            headers: vec![
                ("Content-Type", "application/json".to_string()),
                (header.0, header.1.to_string()),
            ],
            body: body.to_string(),
        }
    }

    /// A loopback HTTP server answering each connection (on its own thread) with `handler`.
    struct Fake {
        addr: SocketAddr,
        seen: mpsc::Receiver<Seen>,
        stop: Arc<AtomicBool>,
    }

    impl Fake {
        fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Fake {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, seen) = mpsc::channel();
            let stop = Arc::new(AtomicBool::new(false));
            let stop2 = stop.clone();
            let handler = Arc::new(handler);
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(s) = conn else { break };
                    let (tx, handler) = (tx.clone(), handler.clone());
                    thread::spawn(move || serve_one(s, &tx, &*handler));
                }
            });
            Fake { addr, seen, stop }
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        #[track_caller]
        fn next(&self) -> Seen {
            self.seen
                .recv_timeout(Duration::from_secs(5))
                .expect("the fake server got a request")
        }

        fn count(&self) -> usize {
            self.seen.try_iter().count()
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            // Wakes the accept loop so it sees the flag and ends.
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
    }

    fn serve_one(mut s: TcpStream, tx: &mpsc::Sender<Seen>, handler: &dyn Fn(&Seen) -> Reply) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        let mut buf = Vec::new();
        let mut tmp = [0u8; 8192];
        let (head_end, len) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break (end, len);
                }
            }
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let seen = Seen {
            method: first.next().unwrap_or("").to_string(),
            path: first.next().unwrap_or("").to_string(),
            headers: lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
            body: buf[head_end + 4..head_end + 4 + len].to_vec(),
        };
        let r = handler(&seen);
        let _ = tx.send(seen);
        match r {
            Reply::Http {
                status,
                headers,
                body,
            } => {
                let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("Connection: close\r\n\r\n");
                out.push_str(&body);
                let _ = s.write_all(out.as_bytes());
                let _ = s.flush();
            }
            Reply::Silent => {
                // Until the client closes (or the 5 s read timeout): bounded either way.
                while matches!(s.read(&mut tmp), Ok(n) if n > 0) {}
            }
        }
    }

    fn limits() -> Limits {
        Limits::from_now(
            Duration::from_secs(5),
            Duration::from_secs(2),
            Duration::from_secs(2),
        )
    }

    #[track_caller]
    fn run(cfg: &ChannelConfig, route: Route, text: &str, key: &str) -> Result<Sent, SendError> {
        run_with(cfg, route, text, key, limits(), CancelToken::new())
    }

    #[track_caller]
    fn run_with(
        cfg: &ChannelConfig,
        route: Route,
        text: &str,
        key: &str,
        limits: Limits,
        cancel: CancelToken,
    ) -> Result<Sent, SendError> {
        let (cfg, text, key) = (cfg.clone(), text.to_string(), key.to_string());
        bounded(Duration::from_secs(10), move || {
            send(&cfg, &route, &text, &key, &limits, &cancel, &|| Ok(()))
        })
    }

    #[track_caller]
    fn assert_class(r: &Result<Sent, SendError>, class: ErrorClass) -> &SendError {
        match r {
            Err(e) => {
                assert_eq!(e.class, class, "{e}");
                e
            }
            Ok(s) => panic!("expected a {} error, got {s:?}", class.as_str()),
        }
    }

    #[test]
    fn address_validation() {
        let good = [
            ("telegram", "123456789"),
            ("telegram", "-1001234567890"),
            ("telegram", "@keel_bot"),
            ("telegram", "@abcde"),
            ("slack", "C0123456789"),
            ("slack", "U12345678"),
            ("slack", "D0ABCDEF12"),
            ("slack", "G98765432"),
            ("discord", "12345678901234567"),
            ("discord", "12345678901234567890"),
            ("feishu", "ou_7d8a6e6df7621556ce0d21922b676706"),
            ("feishu", "oc_a0553eda9014c201e6969b478895c230"),
            ("feishu", "on_0123456789"),
            ("openclaw-weixin", "o9x@im.wechat"),
            ("openclaw-weixin", "wxid_abc123@im.wechat"),
            ("webhook", "anything at all"),
        ];
        for (ch, to) in good {
            assert_eq!(validate_address(ch, to), Ok(()), "{ch} {to}");
        }
        let bad = [
            ("telegram", ""),
            ("telegram", "-"),
            ("telegram", "12a"),
            ("telegram", "+123"),
            ("telegram", "@abcd"),
            ("telegram", "@has-dash"),
            ("telegram", &format!("@{}", "a".repeat(33))),
            ("telegram", "99999999999999999999"),
            ("slack", "C1234567"),
            ("slack", "X12345678"),
            ("slack", "c12345678"),
            ("slack", "C1234abcd"),
            ("slack", "#general"),
            ("discord", "1234567890123456"),
            ("discord", "123456789012345678901"),
            ("discord", "1234567890123456a"),
            ("feishu", "o9x@im.wechat"),
            ("feishu", "ou_123456789"),
            ("feishu", "ox_0123456789"),
            ("feishu", "ou_0123456789-"),
            ("openclaw-weixin", "@im.wechat"),
            ("openclaw-weixin", "o9x"),
            ("openclaw-weixin", "o 9x@im.wechat"),
            ("openclaw-weixin", "ou_0123456789"),
            ("webhook", ""),
            ("webhook", "   "),
        ];
        for (ch, to) in bad {
            let Err(err) = validate_address(ch, to) else {
                panic!("{ch} {to:?} must fail");
            };
            assert!(
                err.starts_with(&format!("delivery: channel {ch} rejects address ")),
                "{err}"
            );
        }
        assert_eq!(
            validate_address("feishu", "o9x@im.wechat").unwrap_err(),
            "delivery: channel feishu rejects address \"o9x@im.wechat\" (expected an ou_/oc_/on_ id)"
        );
        let err = validate_address("carrier-pigeon", "coo").unwrap_err();
        assert!(
            err.contains("unknown channel")
                && err.contains("carrier-pigeon")
                && err.contains("coo"),
            "{err}"
        );
    }

    /// `textChunkLimit` and `delivery.onUnknown`: defaults by kind, a setting within the
    /// platform's limit, and a wrong value disabling the channel with the key named.
    #[test]
    fn split_limits_and_the_unknown_policy_follow_the_kind_and_the_config() {
        let (cfgs, issues) = parse_channels(&json!({
            "telegram": {"botToken": "1:a"},
            "discord": {"token": "t", "textChunkLimit": 5000, "delivery": {"onUnknown": "hold"}},
            "feishu": {"tenantAccessToken": "t", "textChunkLimit": 1000},
            "webhook": {"url": "http://127.0.0.1:9/h"},
            "slack": {"botToken": "x", "delivery": {"onUnknown": "resend"}},
        }));
        assert!(issues.is_empty(), "{issues:?}");
        let limit = |c: &str| cfgs[c].text_limit();
        assert_eq!(
            (
                limit("telegram"),
                limit("discord"),
                limit("feishu"),
                limit("webhook"),
                limit("slack")
            ),
            (Some(4096), Some(2000), Some(1000), None, Some(4000))
        );
        let policy = |c: &str| cfgs[c].on_unknown();
        assert_eq!(policy("telegram"), OnUnknown::Hold);
        assert_eq!(policy("slack"), OnUnknown::Resend);
        assert_eq!(policy("webhook"), OnUnknown::Resend);
        assert_eq!(policy("discord"), OnUnknown::Hold, "as configured");
        assert_eq!(policy("feishu"), OnUnknown::Resend);

        let (cfgs, issues) = parse_channels(&json!({
            "telegram": {"botToken": "1:a", "textChunkLimit": 0},
            "slack": {"botToken": "x", "delivery": {"onUnknown": "maybe"}},
            "discord": {"token": "t", "delivery": "hold"},
        }));
        assert!(cfgs.is_empty());
        let paths: Vec<&str> = issues.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "channels.discord.delivery",
                "channels.slack.delivery.onUnknown",
                "channels.telegram.textChunkLimit"
            ]
        );
    }

    #[test]
    fn parses_channels_with_defaults_and_reports_what_is_missing() {
        let (cfgs, issues) = parse_channels(&json!({
            "telegram": {"botToken": "123:abc_DEF-ghi", "dmPolicy": "pairing"},
            "slack": {"botToken": "xoxb-1", "baseUrl": "http://127.0.0.1:9/api/"},
            "discord": {},
            "feishu": {"appId": "cli_1"},
            "openclaw-weixin": {"token": "t"},
            "webhook": {"url": "http://10.0.0.5:8080/hook", "secret": "s3cret"},
            "whatsapp": {"enabled": true},
        }));
        let names: Vec<&str> = cfgs.keys().map(String::as_str).collect();
        assert_eq!(names, ["slack", "telegram", "webhook"], "{issues:?}");
        assert_eq!(cfgs["telegram"].base_url, "https://api.telegram.org");
        assert_eq!(cfgs["slack"].base_url, "http://127.0.0.1:9/api");
        assert_eq!(cfgs["webhook"].base_url, "http://10.0.0.5:8080/hook");
        let paths: Vec<&str> = issues.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "channels.discord.token",
                "channels.feishu.appSecret",
                "channels.openclaw-weixin.baseUrl",
                "channels.whatsapp",
            ],
            "{issues:?}"
        );
        assert!(issues[0].1.contains("missing"), "{issues:?}");

        let (cfgs, issues) = parse_channels(&json!({
            "telegram": {"enabled": false},
            "slack": {"botToken": "x", "baseUrl": "http://slack.example/api"},
            "discord": {"token": "x", "baseUrl": "http://10.1.1.1/api", "allowInsecureHttp": true},
            "feishu": {"tenantAccessToken": "t-1"},
            "webhook": {"secret": "s"},
        }));
        let names: Vec<&str> = cfgs.keys().map(String::as_str).collect();
        assert_eq!(names, ["discord", "feishu"], "{issues:?}");
        assert_eq!(cfgs["feishu"].base_url, "https://open.feishu.cn");
        assert_eq!(issues.len(), 2, "{issues:?}");
        assert!(issues[0].0 == "channels.slack.baseUrl" && issues[0].1.contains("plain http"));
        assert_eq!(issues[1].0, "channels.webhook.url");

        let (cfgs, issues) = parse_channels(&json!({
            "telegram": {"botToken": "${KEEL_TEST_SURELY_UNSET_TOKEN}"},
            "slack": "yes",
        }));
        assert!(cfgs.is_empty());
        assert_eq!(issues.len(), 2, "{issues:?}");
        assert_eq!(issues[0].0, "channels.slack");
        assert_eq!(issues[1].0, "channels.telegram.botToken");
        assert!(
            issues[1]
                .1
                .contains("KEEL_TEST_SURELY_UNSET_TOKEN is not set")
        );

        let (cfgs, issues) = parse_channels(&Value::Null);
        assert!(cfgs.is_empty() && issues.is_empty());
        let (_, issues) = parse_channels(&json!([1]));
        assert_eq!(
            issues,
            [("channels".to_string(), "expected an object".to_string())]
        );
    }

    #[test]
    fn every_kind_is_named_once() {
        assert_eq!(Kind::ALL.map(Kind::as_str), CHANNELS);
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("weixin"), None, "only as OpenClaw names it");
    }

    #[test]
    fn parsed_credentials_take_their_kind_s_shape() {
        let (cfgs, issues) = parse_channels(&json!({
            "telegram": {"botToken": "1:a"},
            "slack": {"botToken": "xoxb-1"},
            "discord": {"token": "Bot d"},
            "feishu": {"appId": "cli_1", "appSecret": "sec", "tenantAccessToken": "t-1"},
            "openclaw-weixin": {"token": "w", "baseUrl": "https://relay.example"},
            "webhook": {"url": "https://hooks.example/h"},
        }));
        assert!(issues.is_empty(), "{issues:?}");
        let s = |v: &str| v.to_string();
        let want = [
            ("discord", Credentials::Discord { token: s("Bot d") }),
            ("feishu", Credentials::Feishu(FeishuAuth::Tenant(s("t-1")))),
            ("openclaw-weixin", Credentials::Weixin { token: s("w") }),
            (
                "slack",
                Credentials::Slack {
                    bot_token: s("xoxb-1"),
                },
            ),
            (
                "telegram",
                Credentials::Telegram {
                    bot_token: s("1:a"),
                },
            ),
            ("webhook", Credentials::Webhook { secret: None }),
        ];
        assert_eq!(cfgs.len(), want.len());
        for (name, creds) in want {
            assert_eq!(cfgs[name].credentials, creds, "{name}");
            assert_eq!(cfgs[name].kind().as_str(), name);
        }
        let (cfgs, _) = parse_channels(&json!({
            "feishu": {"appId": "cli_1", "appSecret": "sec"},
            "webhook": {"url": "https://hooks.example/h", "secret": "whsec"},
        }));
        assert_eq!(
            cfgs["feishu"].credentials,
            Credentials::Feishu(FeishuAuth::App {
                app_id: s("cli_1"),
                app_secret: s("sec")
            })
        );
        assert_eq!(
            cfgs["webhook"].credentials,
            Credentials::Webhook {
                secret: Some(s("whsec"))
            }
        );
        assert_eq!(
            format!("{:?}", cfgs["feishu"].credentials),
            r#"{"appId": "<redacted>", "appSecret": "<redacted>"}"#
        );
    }

    #[test]
    fn a_hand_built_config_with_an_empty_token_is_refused() {
        let cfg = ChannelConfig::new(
            "http://127.0.0.1:9",
            Credentials::Telegram {
                bot_token: String::new(),
            },
        );
        let r = run(&cfg, Route::new("telegram", "42"), "hi", "k");
        assert_eq!(
            assert_class(&r, ErrorClass::Permanent).message,
            "channel telegram: no botToken is configured"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let (cfgs, _) = parse_channels(&json!({
            "telegram": {"botToken": "123:SEKRET_tg"},
            "webhook": {"url": "https://hooks.example/T0/SEKRET_path", "secret": "SEKRET_wh"},
        }));
        let dbg = format!("{cfgs:?}");
        assert!(!dbg.contains("SEKRET"), "{dbg}");
        assert!(
            dbg.contains("<redacted>") && dbg.contains("botToken"),
            "{dbg}"
        );

        // A server that echoes the token back in its error.
        let fake = Fake::start(|_| {
            reply(
                400,
                json!({"ok": false, "error_code": 400, "description": "bad token 123:SEKRET_tg"}),
            )
        });
        let cfg = ChannelConfig::new(
            fake.url(),
            Credentials::Telegram {
                bot_token: "123:SEKRET_tg".into(),
            },
        );
        let r = run(&cfg, Route::new("telegram", "42"), "hi", "k");
        let e = assert_class(&r, ErrorClass::Permanent);
        assert!(!e.message.contains("SEKRET"), "{e}");
        assert!(e.message.contains("<redacted>"), "{e}");
    }

    #[test]
    fn telegram_sends_and_classifies() {
        let fake = Fake::start(|seen| {
            let body = seen.json();
            match body["chat_id"].as_i64() {
                Some(42) => reply(200, json!({"ok": true, "result": {"message_id": 777}})),
                Some(-1001) => reply(
                    400,
                    json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"}),
                ),
                Some(-1002) => reply(
                    403,
                    json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}),
                ),
                Some(-1003) => reply(
                    429,
                    json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 7", "parameters": {"retry_after": 7}}),
                ),
                Some(-1004) => reply_with(429, ("Retry-After", "3"), json!({"ok": false})),
                _ => reply(
                    502,
                    json!({"ok": false, "error_code": 502, "description": "Bad Gateway"}),
                ),
            }
        });
        let cfg = ChannelConfig::new(
            fake.url(),
            Credentials::Telegram {
                bot_token: "123:abc".into(),
            },
        );
        let mut route = Route::new("telegram", "42");
        route.thread_id = Some("9".into());
        let sent = run(&cfg, route, "hello", "k1").unwrap();
        assert_eq!(sent.message_id.as_deref(), Some("777"));
        let seen = fake.next();
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("POST", "/bot123:abc/sendMessage")
        );
        assert_eq!(
            seen.json(),
            json!({"chat_id": 42, "text": "hello", "message_thread_id": 9})
        );
        assert!(
            seen.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );

        let r = run(&cfg, Route::new("telegram", "-1001"), "x", "k");
        let e = assert_class(&r, ErrorClass::Permanent);
        assert!(e.message.contains("chat not found"), "{e}");
        assert_class(
            &run(&cfg, Route::new("telegram", "-1002"), "x", "k"),
            ErrorClass::Permanent,
        );
        let r = run(&cfg, Route::new("telegram", "-1003"), "x", "k");
        let e = assert_class(&r, ErrorClass::Transient);
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        let r = run(&cfg, Route::new("telegram", "-1004"), "x", "k");
        let e = assert_class(&r, ErrorClass::Transient);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        assert_class(
            &run(&cfg, Route::new("telegram", "-1005"), "x", "k"),
            ErrorClass::Transient,
        );

        // Refused before anything is sent.
        let mut route = Route::new("telegram", "42");
        route.thread_id = Some("general".into());
        assert_class(&run(&cfg, route, "x", "k"), ErrorClass::Permanent);
        assert_class(
            &run(&cfg, Route::new("telegram", "#x"), "x", "k"),
            ErrorClass::Permanent,
        );
        assert_class(
            &run(&cfg, Route::new("slack", "C12345678"), "x", "k"),
            ErrorClass::Permanent,
        );
    }

    #[test]
    fn slack_sends_and_classifies() {
        let fake = Fake::start(|seen| match seen.json()["channel"].as_str() {
            Some("C00000001") => reply(
                200,
                json!({"ok": true, "channel": "C00000001", "ts": "1700000000.000100"}),
            ),
            Some("C00000002") => reply(200, json!({"ok": false, "error": "channel_not_found"})),
            Some("C00000003") => reply_with(
                429,
                ("Retry-After", "30"),
                json!({"ok": false, "error": "ratelimited"}),
            ),
            Some("C00000004") => reply(200, json!({"ok": false, "error": "ratelimited"})),
            Some("C00000005") => reply(200, json!({"ok": false, "error": "internal_error"})),
            Some("C00000006") => reply(200, json!({"ok": false, "error": "invalid_auth"})),
            _ => Reply::Http {
                status: 200,
                headers: vec![],
                body: "<html>proxy</html>".into(),
            },
        });
        let cfg = ChannelConfig::new(
            format!("{}/api", fake.url()),
            Credentials::Slack {
                bot_token: "xoxb-1".into(),
            },
        );
        let mut route = Route::new("slack", "C00000001");
        route.thread_id = Some("1699999999.000200".into());
        let sent = run(&cfg, route, "hi", "k").unwrap();
        assert_eq!(sent.message_id.as_deref(), Some("1700000000.000100"));
        let seen = fake.next();
        assert_eq!(seen.path, "/api/chat.postMessage");
        assert_eq!(seen.header("authorization"), Some("Bearer xoxb-1"));
        assert_eq!(
            seen.json(),
            json!({"channel": "C00000001", "text": "hi", "thread_ts": "1699999999.000200"})
        );

        let r = run(&cfg, Route::new("slack", "C00000002"), "x", "k");
        assert!(
            assert_class(&r, ErrorClass::Permanent)
                .message
                .contains("channel_not_found")
        );
        let r = run(&cfg, Route::new("slack", "C00000003"), "x", "k");
        assert_eq!(
            assert_class(&r, ErrorClass::Transient).retry_after,
            Some(Duration::from_secs(30))
        );
        assert_class(
            &run(&cfg, Route::new("slack", "C00000004"), "x", "k"),
            ErrorClass::Transient,
        );
        assert_class(
            &run(&cfg, Route::new("slack", "C00000005"), "x", "k"),
            ErrorClass::Transient,
        );
        assert_class(
            &run(&cfg, Route::new("slack", "C00000006"), "x", "k"),
            ErrorClass::Permanent,
        );
        // A 200 that is not Slack's answer may or may not have posted: try again.
        assert_class(
            &run(&cfg, Route::new("slack", "C00000007"), "x", "k"),
            ErrorClass::Transient,
        );
    }

    #[test]
    fn discord_sends_splits_and_classifies() {
        let fake = Fake::start(|seen| {
            let content = seen.json()["content"].as_str().unwrap_or("").to_string();
            if seen.path.contains("/11111111111111111/") {
                reply(404, json!({"message": "Unknown Channel", "code": 10003}))
            } else if seen.path.contains("/22222222222222222/") {
                reply(403, json!({"message": "Missing Access", "code": 50001}))
            } else if seen.path.contains("/33333333333333333/") {
                reply_with(
                    429,
                    ("Retry-After", "2"),
                    json!({"message": "You are being rate limited.", "retry_after": 1.5, "global": false}),
                )
            } else if seen.path.contains("/44444444444444444/") {
                reply(503, json!({"message": "upstream"}))
            } else {
                reply(
                    200,
                    json!({"id": format!("m{}", content.len()), "content": content}),
                )
            }
        });
        let cfg = ChannelConfig::new(
            fake.url(),
            Credentials::Discord {
                token: "Bot tok.en".into(),
            },
        );
        let sent = run(
            &cfg,
            Route::new("discord", "123456789012345678"),
            "hello",
            "key-1",
        )
        .unwrap();
        assert_eq!(sent.message_id.as_deref(), Some("m5"));
        let seen = fake.next();
        assert_eq!(seen.path, "/channels/123456789012345678/messages");
        assert_eq!(seen.header("authorization"), Some("Bot tok.en"));
        let body = seen.json();
        assert_eq!(body["content"], "hello");
        assert_eq!(body["enforce_nonce"], true);
        let nonce = body["nonce"].as_str().unwrap().to_string();
        assert!(nonce.len() <= 25 && nonce.ends_with(".0"), "{nonce}");

        // Over 2000 characters: split at the line break, each part its own nonce.
        let text = format!("{}\n{}", "a".repeat(1500), "b".repeat(1000));
        let sent = run(
            &cfg,
            Route::new("discord", "123456789012345678"),
            &text,
            "key-1",
        )
        .unwrap();
        assert_eq!(sent.message_id.as_deref(), Some("m1501"));
        let (p1, p2) = (fake.next().json(), fake.next().json());
        assert_eq!(p1["content"].as_str().unwrap().len(), 1501);
        assert_eq!(p2["content"].as_str().unwrap(), "b".repeat(1000));
        assert_eq!(p1["nonce"], json!(nonce));
        assert_ne!(p1["nonce"], p2["nonce"]);

        // A thread is its own channel.
        let mut route = Route::new("discord", "123456789012345678");
        route.thread_id = Some("98765432109876543".into());
        run(&cfg, route, "in thread", "").unwrap();
        let seen = fake.next();
        assert_eq!(seen.path, "/channels/98765432109876543/messages");
        assert!(seen.json().get("nonce").is_none(), "no key, no nonce");

        let r = run(&cfg, Route::new("discord", "11111111111111111"), "x", "k");
        assert!(
            assert_class(&r, ErrorClass::Permanent)
                .message
                .contains("10003")
        );
        assert_class(
            &run(&cfg, Route::new("discord", "22222222222222222"), "x", "k"),
            ErrorClass::Permanent,
        );
        let r = run(&cfg, Route::new("discord", "33333333333333333"), "x", "k");
        assert_eq!(
            assert_class(&r, ErrorClass::Transient).retry_after,
            Some(Duration::from_millis(1500))
        );
        assert_class(
            &run(&cfg, Route::new("discord", "44444444444444444"), "x", "k"),
            ErrorClass::Transient,
        );
    }

    #[test]
    fn feishu_with_a_configured_token() {
        let fake = Fake::start(|seen| match seen.json()["receive_id"].as_str() {
            Some("ou_0000000001") => reply(
                200,
                json!({"code": 0, "msg": "success", "data": {"message_id": "om_1"}}),
            ),
            Some("oc_0000000002") => reply(
                400,
                json!({"code": 99992360, "msg": "The request you send is not a valid {open_id}"}),
            ),
            Some("on_0000000003") => reply(
                200,
                json!({"code": 230002, "msg": "Bot is not in the chat"}),
            ),
            Some("ou_0000000004") => reply_with(
                400,
                ("x-ogw-ratelimit-reset", "4"),
                json!({"code": 99991400, "msg": "request trigger frequency limit"}),
            ),
            Some("ou_0000000005") => reply(
                400,
                json!({"code": 99991663, "msg": "Invalid access token for authorization"}),
            ),
            _ => reply(500, json!({"code": 1, "msg": "internal"})),
        });
        let cfg = ChannelConfig::new(
            fake.url(),
            Credentials::Feishu(FeishuAuth::Tenant("t-static".into())),
        );
        let sent = run(
            &cfg,
            Route::new("feishu", "ou_0000000001"),
            "你好 \"q\"",
            "idem-1",
        )
        .unwrap();
        assert_eq!(sent.message_id.as_deref(), Some("om_1"));
        let seen = fake.next();
        assert_eq!(
            seen.path,
            "/open-apis/im/v1/messages?receive_id_type=open_id"
        );
        assert_eq!(seen.header("authorization"), Some("Bearer t-static"));
        let body = seen.json();
        assert_eq!(body["msg_type"], "text");
        assert_eq!(body["uuid"], "idem-1");
        let content: Value = serde_json::from_str(body["content"].as_str().unwrap()).unwrap();
        assert_eq!(content, json!({"text": "你好 \"q\""}));

        let r = run(&cfg, Route::new("feishu", "oc_0000000002"), "x", "k");
        assert!(
            assert_class(&r, ErrorClass::Permanent)
                .message
                .contains("99992360")
        );
        assert!(fake.next().path.ends_with("receive_id_type=chat_id"));
        assert_class(
            &run(&cfg, Route::new("feishu", "on_0000000003"), "x", "k"),
            ErrorClass::Permanent,
        );
        assert!(fake.next().path.ends_with("receive_id_type=union_id"));
        let r = run(&cfg, Route::new("feishu", "ou_0000000004"), "x", "k");
        assert_eq!(
            assert_class(&r, ErrorClass::Transient).retry_after,
            Some(Duration::from_secs(4))
        );
        // A configured token that is rejected stays rejected.
        assert_class(
            &run(&cfg, Route::new("feishu", "ou_0000000005"), "x", "k"),
            ErrorClass::Permanent,
        );
        assert_class(
            &run(&cfg, Route::new("feishu", "ou_0000000006"), "x", "k"),
            ErrorClass::Transient,
        );

        // A key longer than Feishu's 50 characters becomes a stable hash.
        let _ = fake.count();
        let long = "k".repeat(80);
        run(&cfg, Route::new("feishu", "ou_0000000001"), "x", &long).unwrap();
        run(&cfg, Route::new("feishu", "ou_0000000001"), "x", &long).unwrap();
        let (a, b) = (fake.next().json(), fake.next().json());
        let uuid = a["uuid"].as_str().unwrap();
        assert!(uuid.starts_with("keel-") && uuid.len() <= 50, "{uuid}");
        assert_eq!(a["uuid"], b["uuid"]);
    }

    #[test]
    fn feishu_fetches_caches_and_refreshes_the_tenant_token() {
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let f2 = fetches.clone();
        let fake = Fake::start(move |seen| {
            if seen.path == "/open-apis/auth/v3/tenant_access_token/internal" {
                let n = f2.fetch_add(1, Ordering::SeqCst) + 1;
                let body = seen.json();
                if body != json!({"app_id": "cli_1", "app_secret": "sec"}) {
                    return reply(400, json!({"code": 10014, "msg": "app secret invalid"}));
                }
                return reply(
                    200,
                    json!({"code": 0, "msg": "ok", "tenant_access_token": format!("t-{n}"), "expire": 7200}),
                );
            }
            let auth = seen.header("authorization").unwrap_or("").to_string();
            match (seen.json()["receive_id"].as_str(), auth.as_str()) {
                // The first token is revoked early for this one recipient.
                (Some("ou_0000000009"), "Bearer t-1") => reply(
                    400,
                    json!({"code": 99991663, "msg": "Invalid access token for authorization"}),
                ),
                _ => reply(200, json!({"code": 0, "data": {"message_id": auth}})),
            }
        });
        let cfg = ChannelConfig::new(
            fake.url(),
            Credentials::Feishu(FeishuAuth::App {
                app_id: "cli_1".into(),
                app_secret: "sec".into(),
            }),
        );
        let a = run(&cfg, Route::new("feishu", "ou_0000000001"), "x", "k").unwrap();
        let b = run(
            &cfg.clone(),
            Route::new("feishu", "ou_0000000001"),
            "x",
            "k",
        )
        .unwrap();
        assert_eq!(a.message_id.as_deref(), Some("Bearer t-1"));
        assert_eq!(b.message_id.as_deref(), Some("Bearer t-1"));
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            1,
            "the token is cached across sends and clones"
        );

        // Rejected: fetched again and the send retried once, at once.
        let c = run(&cfg, Route::new("feishu", "ou_0000000009"), "x", "k").unwrap();
        assert_eq!(c.message_id.as_deref(), Some("Bearer t-2"));
        assert_eq!(fetches.load(Ordering::SeqCst), 2);

        let wrong = ChannelConfig::new(
            fake.url(),
            Credentials::Feishu(FeishuAuth::App {
                app_id: "cli_1".into(),
                app_secret: "nope".into(),
            }),
        );
        let r = run(&wrong, Route::new("feishu", "ou_0000000001"), "x", "k");
        let e = assert_class(&r, ErrorClass::Permanent);
        assert!(
            e.message.contains("tenant token") && e.message.contains("10014"),
            "{e}"
        );
    }

    #[test]
    fn feishu_token_expiry_is_honoured() {
        let cfg = ChannelConfig::new(
            "http://127.0.0.1:9",
            Credentials::Feishu(FeishuAuth::App {
                app_id: "a".into(),
                app_secret: "b".into(),
            }),
        );
        *lock(&cfg.feishu_token) = Some(CachedToken {
            token: "t-old".into(),
            refresh_at: Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now),
        });
        let fake = Fake::start(|seen| {
            if seen.path.contains("tenant_access_token") {
                reply(
                    200,
                    json!({"code": 0, "tenant_access_token": "t-new", "expire": 7200}),
                )
            } else {
                reply(
                    200,
                    json!({"code": 0, "data": {"message_id": seen.header("authorization")}}),
                )
            }
        });
        let cfg = ChannelConfig {
            base_url: fake.url(),
            ..cfg
        };
        let sent = run(&cfg, Route::new("feishu", "ou_0000000001"), "x", "k").unwrap();
        assert_eq!(sent.message_id.as_deref(), Some("Bearer t-new"));
        let cached = lock(&cfg.feishu_token).clone().unwrap();
        let left = cached.refresh_at - Instant::now();
        assert!(
            left > Duration::from_secs(6800) && left <= Duration::from_secs(6900),
            "{left:?}"
        );
    }

    #[test]
    fn weixin_sends_and_classifies() {
        let fake = Fake::start(|seen| match seen.json()["to"].as_str() {
            Some("ok@im.wechat") => reply(200, json!({"messageId": "w1"})),
            Some("gone@im.wechat") => reply(404, json!({"error": "unknown recipient"})),
            Some("slow@im.wechat") => reply(408, json!({})),
            _ => reply(500, json!({"error": "relay down"})),
        });
        let cfg = ChannelConfig::new(
            format!("{}/relay/", fake.url()).trim_end_matches('/'),
            Credentials::Weixin {
                token: "wx-t".into(),
            },
        );
        let sent = run(
            &cfg,
            Route::new("openclaw-weixin", "ok@im.wechat"),
            "hi",
            "idem-9",
        )
        .unwrap();
        assert_eq!(sent.message_id.as_deref(), Some("w1"));
        let seen = fake.next();
        assert_eq!(seen.path, "/relay/send");
        assert_eq!(seen.header("authorization"), Some("Bearer wx-t"));
        assert_eq!(
            seen.json(),
            json!({"to": "ok@im.wechat", "text": "hi", "idempotencyKey": "idem-9"})
        );

        let r = run(
            &cfg,
            Route::new("openclaw-weixin", "gone@im.wechat"),
            "x",
            "k",
        );
        assert!(
            assert_class(&r, ErrorClass::Permanent)
                .message
                .contains("unknown recipient")
        );
        assert_class(
            &run(
                &cfg,
                Route::new("openclaw-weixin", "slow@im.wechat"),
                "x",
                "k",
            ),
            ErrorClass::Transient,
        );
        let r = run(
            &cfg,
            Route::new("openclaw-weixin", "down@im.wechat"),
            "x",
            "k",
        );
        assert!(
            assert_class(&r, ErrorClass::Transient)
                .message
                .contains("http 500")
        );
    }

    #[test]
    fn webhook_is_signed_and_classified() {
        let fake = Fake::start(|seen| match seen.json()["to"].as_str() {
            Some("ok") => reply(202, json!({"id": "h1"})),
            Some("gone") => reply(410, json!({"message": "gone"})),
            Some("busy") => reply_with(429, ("Retry-After", "12"), json!({})),
            _ => reply(503, json!({})),
        });
        let cfg = ChannelConfig::new(
            format!("{}/hook?x=1", fake.url()),
            Credentials::Webhook {
                secret: Some("whsec".into()),
            },
        );
        let mut route = Route::new("webhook", "ok");
        route.account_id = Some("acct".into());
        route.thread_id = Some("th".into());
        let before = clock::wall_ms();
        let sent = run(&cfg, route, "hello", "idem-w").unwrap();
        assert_eq!(sent.message_id.as_deref(), Some("h1"));
        let seen = fake.next();
        assert_eq!(seen.path, "/hook?x=1");
        assert_eq!(seen.header("idempotency-key"), Some("idem-w"));
        let ts = seen.header("x-keel-timestamp").unwrap().to_string();
        let ts_secs: u64 = ts.parse().unwrap();
        assert!(ts_secs >= before / 1000 && ts_secs <= clock::wall_ms() / 1000 + 1);
        // What a receiver does: recompute over the raw body with the shared secret.
        let expected = format!(
            "sha256={}",
            hex(&hmac_sha256(
                b"whsec",
                &[format!("{ts}.").as_bytes(), &seen.body]
            ))
        );
        assert_eq!(seen.header("x-keel-signature"), Some(expected.as_str()));
        assert_eq!(webhook_signature("whsec", &ts, &seen.body), expected);
        assert_ne!(webhook_signature("other", &ts, &seen.body), expected);
        let body = seen.json();
        assert_eq!(
            (
                &body["channel"],
                &body["to"],
                &body["accountId"],
                &body["threadId"],
                &body["text"],
                &body["idempotencyKey"]
            ),
            (
                &json!("webhook"),
                &json!("ok"),
                &json!("acct"),
                &json!("th"),
                &json!("hello"),
                &json!("idem-w")
            )
        );
        assert!(body["ts"].as_u64().unwrap() / 1000 == ts_secs);

        let r = run(&cfg, Route::new("webhook", "gone"), "x", "k");
        assert_class(&r, ErrorClass::Permanent);
        let r = run(&cfg, Route::new("webhook", "busy"), "x", "k");
        assert_eq!(
            assert_class(&r, ErrorClass::Transient).retry_after,
            Some(Duration::from_secs(12))
        );
        assert_class(
            &run(&cfg, Route::new("webhook", "down"), "x", "k"),
            ErrorClass::Transient,
        );

        // No secret: no signature.
        let unsigned = ChannelConfig::new(fake.url(), Credentials::Webhook { secret: None });
        let _ = fake.count();
        run(&unsigned, Route::new("webhook", "ok"), "x", "").unwrap();
        let seen = fake.next();
        assert!(
            seen.header("x-keel-signature").is_none() && seen.header("idempotency-key").is_none()
        );
        assert!(seen.header("x-keel-timestamp").is_some());
    }

    #[test]
    fn transport_failures_are_transient() {
        // A server that never answers: the stall limit ends the call.
        let fake = Fake::start(|_| Reply::Silent);
        let cfg = ChannelConfig::new(fake.url(), Credentials::Weixin { token: "t".into() });
        let quick = Limits::from_now(
            Duration::from_secs(5),
            Duration::from_secs(2),
            Duration::from_millis(300),
        );
        let t = Instant::now();
        let r = run_with(
            &cfg,
            Route::new("openclaw-weixin", "a@im.wechat"),
            "x",
            "k",
            quick,
            CancelToken::new(),
        );
        assert!(
            assert_class(&r, ErrorClass::Transient)
                .message
                .contains("sent nothing"),
            "{r:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

        // The deadline, too: it ends the call, not the 2 s connect or 5 s stall limit.
        let short = Limits::from_now(
            Duration::from_millis(300),
            Duration::from_secs(2),
            Duration::from_secs(5),
        );
        let t = Instant::now();
        let r = run_with(
            &cfg,
            Route::new("openclaw-weixin", "a@im.wechat"),
            "x",
            "k",
            short,
            CancelToken::new(),
        );
        assert_class(&r, ErrorClass::Transient);
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );

        // Nobody listening.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refused = ChannelConfig::new(
            format!("http://127.0.0.1:{port}"),
            Credentials::Telegram {
                bot_token: "1:a".into(),
            },
        );
        assert_class(
            &run(&refused, Route::new("telegram", "1"), "x", "k"),
            ErrorClass::Transient,
        );

        // Cancelled mid-wait (once the request is at the server): transient, says so, and
        // returns at once rather than at the 2 s stall limit. A fake of its own, so the
        // request it reports is this one.
        let waiting = Fake::start(|_| Reply::Silent);
        let cfg = ChannelConfig::new(waiting.url(), Credentials::Weixin { token: "t".into() });
        let token = CancelToken::new();
        let t2 = token.clone();
        let canceller = thread::spawn(move || {
            waiting.next();
            t2.cancel(CancelReason::Drain);
            (Instant::now(), waiting)
        });
        let r = run_with(
            &cfg,
            Route::new("openclaw-weixin", "a@im.wechat"),
            "x",
            "k",
            limits(),
            token,
        );
        let returned = Instant::now();
        let (cancelled, _waiting) = canceller.join().unwrap();
        assert_eq!(assert_class(&r, ErrorClass::Transient).message, "cancelled");
        let took = returned.saturating_duration_since(cancelled);
        assert!(took < Duration::from_millis(1500), "{took:?} after cancel");
    }
}
