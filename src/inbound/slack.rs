//! The Slack Events API (HTTP mode): one request, verified and read into a [`Verdict`].
//!
//! - Size first: a body over [`MAX_BODY`] is refused (`413`) before anything is parsed.
//! - Then the signature: `X-Slack-Signature: v0=<hex HMAC-SHA256(signingSecret,
//!   "v0:" + X-Slack-Request-Timestamp + ":" + body)>`, compared in constant time, with the
//!   timestamp within [`MAX_SKEW_S`] of the clock (a captured request cannot be replayed
//!   later). Missing, stale or wrong: `401`. Nothing of the body is read before this passes.
//! - `url_verification` is answered with its challenge; `event_callback` with a `message` or
//!   `app_mention` event becomes an [`Inbound`]; anything else is acknowledged and ignored.
//!
//! Retries: Slack resends an event it got no `200` for within 3 s, with `X-Slack-Retry-Num`
//! and the same `event_id`. Nothing here remembers events: the ingress recognises a retry by
//! the message's `eventId`. One post can also arrive as two events with two event ids — a
//! `message` and an `app_mention` when the app subscribes to both — with the same channel and
//! `ts`; [`message_key`] names the post itself, for the ingress to run it once.

use super::event::{ChatKind, Inbound, MAX_NAME};
use super::webhook::{MAX_BODY, Verdict, cut, digits, header, hex32};
use crate::config::inbound_webhooks::SlackWebhook;
use serde::Deserialize;
use serde_json::Value;

/// How far `X-Slack-Request-Timestamp` may be from the clock, either way (Slack's advice).
pub const MAX_SKEW_S: i64 = 5 * 60;

pub const TIMESTAMP_HEADER: &str = "X-Slack-Request-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Slack-Signature";
/// Set on Slack's retries (1, 2, 3); informational, as retries are recognised by event id.
pub const RETRY_HEADER: &str = "X-Slack-Retry-Num";

/// The envelope of every Events API request.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    challenge: Option<String>,
    #[serde(default)]
    event_id: Option<String>,
    /// Read by hand: only its `type` and `subtype` are known before the event is typed.
    #[serde(default)]
    event: Option<Value>,
    /// Whose installation the event is for: `user_id` is the bot's user id for a bot token.
    #[serde(default)]
    authorizations: Option<Value>,
}

/// A `message` or `app_mention` event.
#[derive(Deserialize)]
struct MessageEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channel_type: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    bot_id: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    ts: Option<String>,
    #[serde(default)]
    thread_ts: Option<String>,
    #[serde(default)]
    user_profile: Option<UserProfile>,
}

#[derive(Deserialize)]
struct UserProfile {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    real_name: Option<String>,
}

/// Message subtypes that are someone writing to the channel; every other subtype (edits,
/// deletions, joins, topic changes, bots) is acknowledged and ignored.
const USER_SUBTYPES: &[&str] = &["thread_broadcast", "file_share"];

/// Verifies and reads one Events API request to `account`'s path. `headers` are the
/// request's (names in any case), `now_ms` the wall clock in ms since the epoch.
pub fn handle(
    account: &SlackWebhook,
    headers: &[(&str, &str)],
    body: &[u8],
    now_ms: i64,
) -> Verdict {
    if body.len() > MAX_BODY {
        return Verdict::refuse(413, "body too large");
    }
    if let Err(reason) = verify(account, headers, body, now_ms) {
        return Verdict::refuse(401, reason);
    }
    let Ok(env) = serde_json::from_slice::<Envelope>(body) else {
        return Verdict::refuse(400, "malformed JSON");
    };
    match env.kind.as_str() {
        "url_verification" => match env.challenge {
            Some(c) if !c.is_empty() && c.len() <= 256 => Verdict::Challenge(c),
            _ => Verdict::refuse(400, "url_verification without a challenge"),
        },
        "event_callback" => {
            let bot = bot_user_id(account, env.authorizations.as_ref());
            match env.event {
                Some(event) => message(account, env.event_id, event, bot.as_deref()),
                None => Verdict::refuse(400, "event_callback without an event"),
            }
        }
        _ => Verdict::Ignore("envelope type keel does not handle"),
    }
}

/// The signature check; `Err` names what failed.
fn verify(
    account: &SlackWebhook,
    headers: &[(&str, &str)],
    body: &[u8],
    now_ms: i64,
) -> Result<(), &'static str> {
    let ts = header(headers, TIMESTAMP_HEADER).ok_or("missing request timestamp")?;
    let sig = header(headers, SIGNATURE_HEADER).ok_or("missing signature")?;
    let secs = digits(ts).ok_or("malformed request timestamp")?;
    if (now_ms.div_euclid(1000) - secs).abs() > MAX_SKEW_S {
        return Err("request timestamp too far from now");
    }
    let tag = sig
        .strip_prefix("v0=")
        .and_then(hex32)
        .ok_or("malformed signature")?;
    let ok = crate::digest::hmac_sha256_verify(
        account.signing_secret.as_bytes(),
        &[b"v0:", ts.as_bytes(), b":", body],
        &tag,
    );
    if ok { Ok(()) } else { Err("bad signature") }
}

/// The bot's user id: configured, else the first bot authorization Slack names.
fn bot_user_id(account: &SlackWebhook, authorizations: Option<&Value>) -> Option<String> {
    if let Some(id) = &account.bot_user_id {
        return Some(id.clone());
    }
    let list = authorizations?.as_array()?;
    let is_bot = |a: &&Value| a.get("is_bot").and_then(Value::as_bool) == Some(true);
    list.iter()
        .find(is_bot)
        .or(list.first())?
        .get("user_id")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn message(
    account: &SlackWebhook,
    event_id: Option<String>,
    event: Value,
    bot: Option<&str>,
) -> Verdict {
    let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "message" && kind != "app_mention" {
        return Verdict::Ignore("event type keel does not handle");
    }
    match event.get("subtype") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "bot_message" => return Verdict::Ignore("a bot's message"),
        Some(Value::String(s)) if USER_SUBTYPES.contains(&s.as_str()) => {}
        Some(_) => return Verdict::Ignore("message subtype keel does not handle"),
    }
    let Ok(ev) = serde_json::from_value::<MessageEvent>(event) else {
        return Verdict::refuse(400, "malformed message event");
    };
    let Some(user) = ev.user.filter(|u| !u.is_empty()) else {
        return Verdict::Ignore("a message without a user");
    };
    if bot == Some(user.as_str()) {
        return Verdict::Ignore("the bot's own message");
    }
    if ev.bot_id.is_some_and(|b| !b.is_empty()) {
        return Verdict::Ignore("a bot's message");
    }
    let Some(event_id) = event_id.filter(|e| !e.is_empty()) else {
        return Verdict::refuse(400, "event without an event_id");
    };
    let (Some(channel), Some(ts)) = (ev.channel, ev.ts) else {
        return Verdict::refuse(400, "message without a channel or ts");
    };
    let Some(ts_ms) = ts_ms(&ts) else {
        return Verdict::refuse(400, "malformed ts");
    };
    let chat_kind = match ev.channel_type.as_deref() {
        Some("im") => ChatKind::Direct,
        Some("mpim") => ChatKind::Group,
        Some("channel" | "group") => ChatKind::Channel,
        // `app_mention` has no channel_type: the id's prefix tells.
        _ => match channel.as_bytes().first() {
            Some(b'D') => ChatKind::Direct,
            Some(b'C' | b'G') => ChatKind::Channel,
            _ => return Verdict::Ignore("conversation type keel does not handle"),
        },
    };
    let raw = ev.text.unwrap_or_default();
    let (text, mentioned_in_text) = match bot {
        Some(bot) => strip_mention(&raw, bot),
        None => (raw, false),
    };
    let text = unescape(text.trim());
    if text.is_empty() {
        return Verdict::Ignore("a message without text");
    }
    let sender_name = ev.user_profile.and_then(|p| {
        [p.display_name, p.real_name]
            .into_iter()
            .flatten()
            .find(|n| !n.trim().is_empty())
            .map(|n| cut(n.trim(), MAX_NAME))
    });
    let m = Inbound {
        channel: "slack".into(),
        account_id: account.account_id.clone(),
        event_id,
        chat_kind,
        chat_id: channel,
        thread_id: ev.thread_ts.filter(|t| !t.is_empty()),
        sender_id: user,
        sender_name,
        message_id: Some(ts),
        text,
        mentioned: ev.kind == "app_mention" || mentioned_in_text,
        ts_ms,
    };
    match m.check() {
        Ok(()) => Verdict::Message(Box::new(m)),
        Err(_) => Verdict::refuse(400, "message out of bounds"),
    }
}

/// What names one Slack post whichever event brought it: `<channel>:<ts>`. A `message` and
/// an `app_mention` for the same post have different event ids and the same key.
pub fn message_key(m: &Inbound) -> String {
    format!(
        "{}:{}",
        m.chat_id,
        m.message_id.as_deref().unwrap_or(&m.event_id)
    )
}

/// Slack's `ts` (`"1700000000.000100"`: seconds, then microseconds) in ms.
fn ts_ms(ts: &str) -> Option<i64> {
    let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
    let secs = digits(secs)?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    secs.checked_mul(1000)?.checked_add(ms)
}

/// `text` without the bot's mentions (`<@BOT>`, `<@BOT|name>`), and whether there was one.
/// The space a removed mention leaves between two words stays single.
fn strip_mention(text: &str, bot: &str) -> (String, bool) {
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    let mut rest = text;
    while let Some(i) = rest.find("<@") {
        let after = &rest[i + 2..];
        let is_bot = after.strip_prefix(bot).and_then(|r| {
            if let Some(r) = r.strip_prefix('>') {
                Some(r)
            } else {
                r.strip_prefix('|')
                    .and_then(|r| r.find('>').map(|j| &r[j + 1..]))
            }
        });
        match is_bot {
            Some(r) => {
                found = true;
                out.push_str(&rest[..i]);
                rest = if out.ends_with(char::is_whitespace) {
                    r.trim_start()
                } else {
                    r
                };
            }
            None => {
                out.push_str(&rest[..i + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out, found)
}

/// Slack escapes `&`, `<` and `>` in message text.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{hex, hmac_sha256};
    use serde_json::json;

    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const NOW_MS: i64 = 1_531_420_618_000;

    fn account() -> SlackWebhook {
        SlackWebhook {
            account_id: "work".into(),
            signing_secret: SECRET.into(),
            webhook_path: "/slack/events".into(),
            bot_user_id: None,
            access: Default::default(),
        }
    }

    /// The headers Slack sends with `body` at `ts` (seconds), signed with `secret`.
    fn signed(secret: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
        let ts = ts.to_string();
        let mac = hmac_sha256(secret.as_bytes(), &[b"v0:", ts.as_bytes(), b":", body]);
        vec![
            ("X-Slack-Request-Timestamp".into(), ts),
            ("X-Slack-Signature".into(), format!("v0={}", hex(&mac))),
        ]
    }

    fn run(account: &SlackWebhook, headers: &[(String, String)], body: &[u8]) -> Verdict {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        handle(account, &h, body, NOW_MS)
    }

    fn deliver(body: &Value) -> Verdict {
        let body = body.to_string();
        run(
            &account(),
            &signed(SECRET, NOW_MS / 1000, body.as_bytes()),
            body.as_bytes(),
        )
    }

    fn callback(event: Value) -> Value {
        json!({
            "token": "legacy", "team_id": "T0001", "api_app_id": "A0001",
            "type": "event_callback", "event_id": "Ev0PV52K21", "event_time": 1_531_420_618,
            "authorizations": [{"team_id": "T0001", "user_id": "U0BOT", "is_bot": true, "enterprise_id": null}],
            "event": event,
        })
    }

    fn msg(v: Verdict) -> Inbound {
        match v {
            Verdict::Message(m) => *m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn slacks_published_signature_example_verifies() {
        // Slack's "Verifying requests from Slack" example: this body, timestamp and secret
        // give this signature.
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let h = [
            ("X-Slack-Request-Timestamp", "1531420618"),
            (
                "X-Slack-Signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            ),
        ];
        assert_eq!(verify(&account(), &h, body, NOW_MS), Ok(()));
        // The same body is not JSON: authentic, then refused as malformed.
        assert_eq!(
            handle(&account(), &h, body, NOW_MS),
            Verdict::refuse(400, "malformed JSON")
        );
    }

    #[test]
    fn url_verification_is_answered_with_its_challenge() {
        let v = deliver(
            &json!({"token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}),
        );
        assert_eq!(
            v,
            Verdict::Challenge("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P".into())
        );
        assert_eq!(
            v.answer().body,
            br#"{"challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}"#
        );
        // Unsigned, it is refused like anything else.
        let body = br#"{"type":"url_verification","challenge":"x"}"#;
        assert_eq!(
            run(&account(), &[], body),
            Verdict::refuse(401, "missing request timestamp")
        );
    }

    #[test]
    fn a_channel_message_becomes_an_inbound() {
        let m = msg(deliver(&callback(json!({
            "type": "message", "channel": "C2147483705", "channel_type": "channel",
            "user": "U2147483697", "text": "Hello &lt;world&gt; &amp; all",
            "ts": "1355517523.000005", "event_ts": "1355517523.000005",
            "user_profile": {"display_name": "", "real_name": "Ada Lovelace"},
        }))));
        assert_eq!(
            m,
            Inbound {
                channel: "slack".into(),
                account_id: "work".into(),
                event_id: "Ev0PV52K21".into(),
                chat_kind: ChatKind::Channel,
                chat_id: "C2147483705".into(),
                thread_id: None,
                sender_id: "U2147483697".into(),
                sender_name: Some("Ada Lovelace".into()),
                message_id: Some("1355517523.000005".into()),
                text: "Hello <world> & all".into(),
                mentioned: false,
                ts_ms: 1_355_517_523_000,
            }
        );
        assert_eq!(message_key(&m), "C2147483705:1355517523.000005");
    }

    #[test]
    fn dms_groups_and_threads() {
        let kind = |channel_type: Option<&str>, channel: &str| {
            let mut ev = json!({"type": "message", "channel": channel, "user": "U1", "text": "hi", "ts": "1.5"});
            if let Some(t) = channel_type {
                ev["channel_type"] = json!(t);
            }
            deliver(&callback(ev))
        };
        assert_eq!(
            msg(kind(Some("im"), "D024BE91L")).chat_kind,
            ChatKind::Direct
        );
        assert_eq!(
            msg(kind(Some("mpim"), "G024BE91L")).chat_kind,
            ChatKind::Group
        );
        assert_eq!(
            msg(kind(Some("group"), "G024BE91L")).chat_kind,
            ChatKind::Channel
        );
        assert_eq!(msg(kind(None, "D024BE91L")).chat_kind, ChatKind::Direct);
        assert_eq!(msg(kind(None, "C024BE91L")).chat_kind, ChatKind::Channel);
        assert_eq!(msg(kind(None, "C024BE91L")).ts_ms, 1_500);
        assert_eq!(
            kind(Some("app_home"), "X1"),
            Verdict::Ignore("conversation type keel does not handle")
        );
        let m = msg(deliver(&callback(json!({
            "type": "message", "subtype": "thread_broadcast", "channel": "C024BE91L", "channel_type": "channel",
            "user": "U1", "text": "in a thread", "ts": "1700000001.000200", "thread_ts": "1700000000.000100",
        }))));
        assert_eq!(m.thread_id.as_deref(), Some("1700000000.000100"));
        assert_eq!(m.ts_ms, 1_700_000_001_000);
    }

    #[test]
    fn the_bots_mention_is_detected_and_stripped() {
        let m = msg(deliver(&callback(json!({
            "type": "app_mention", "channel": "C024BE91L", "user": "U1",
            "text": "<@U0BOT> what is <@U2>'s plan?", "ts": "1.0",
        }))));
        assert!(m.mentioned);
        assert_eq!(m.text, "what is <@U2>'s plan?");
        assert_eq!(m.chat_kind, ChatKind::Channel);
        // In a message event, the bot named in authorizations; mid-sentence, with a label.
        let m = msg(deliver(&callback(json!({
            "type": "message", "channel": "C024BE91L", "channel_type": "channel", "user": "U1",
            "text": "hey <@U0BOT|keel> look", "ts": "1.0",
        }))));
        assert!(m.mentioned);
        assert_eq!(m.text, "hey look");
        // Someone else's mention is not the bot's.
        let m = msg(deliver(&callback(json!({
            "type": "message", "channel": "C024BE91L", "channel_type": "channel", "user": "U1",
            "text": "<@U0BOTX> hi", "ts": "1.0",
        }))));
        assert!(!m.mentioned);
        assert_eq!(m.text, "<@U0BOTX> hi");
        // The configured bot id wins over authorizations.
        let mut acc = account();
        acc.bot_user_id = Some("U0OTHER".into());
        let body = callback(
            json!({"type": "message", "channel": "C024BE91L", "channel_type": "channel",
            "user": "U1", "text": "<@U0OTHER> hi <@U0BOT>", "ts": "1.0"}),
        )
        .to_string();
        let m = msg(run(
            &acc,
            &signed(SECRET, NOW_MS / 1000, body.as_bytes()),
            body.as_bytes(),
        ));
        assert!(m.mentioned);
        assert_eq!(m.text, "hi <@U0BOT>");
        // Only a mention: nothing to run.
        assert_eq!(
            deliver(&callback(
                json!({"type": "app_mention", "channel": "C024BE91L", "user": "U1", "text": "<@U0BOT>", "ts": "1.0"})
            )),
            Verdict::Ignore("a message without text")
        );
    }

    #[test]
    fn bots_edits_and_other_events_are_ignored() {
        let ignored = |ev: Value| match deliver(&callback(ev)) {
            Verdict::Ignore(why) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            ignored(
                json!({"type": "message", "channel": "C024BE91L", "channel_type": "channel", "user": "U0BOT", "text": "my reply", "ts": "1.0"})
            ),
            "the bot's own message"
        );
        assert_eq!(
            ignored(
                json!({"type": "message", "channel": "C024BE91L", "channel_type": "channel", "user": "U9", "bot_id": "B1", "text": "x", "ts": "1.0"})
            ),
            "a bot's message"
        );
        assert_eq!(
            ignored(
                json!({"type": "message", "subtype": "bot_message", "channel": "C024BE91L", "bot_id": "B1", "text": "x", "ts": "1.0"})
            ),
            "a bot's message"
        );
        for sub in ["message_changed", "message_deleted", "channel_join"] {
            assert_eq!(
                ignored(
                    json!({"type": "message", "subtype": sub, "channel": "C024BE91L", "message": {"text": "x"}, "ts": "1.0"})
                ),
                "message subtype keel does not handle"
            );
        }
        assert_eq!(
            ignored(json!({"type": "team_join", "user": {"id": "U1"}})),
            "event type keel does not handle"
        );
        assert_eq!(
            deliver(&json!({"type": "app_rate_limited", "minute_rate_limited": 1})),
            Verdict::Ignore("envelope type keel does not handle")
        );
    }

    #[test]
    fn bad_signatures_and_stale_timestamps_are_refused() {
        let body = callback(
            json!({"type": "message", "channel": "C024BE91L", "channel_type": "im",
            "user": "U1", "text": "hi", "ts": "1.0"}),
        )
        .to_string();
        let body = body.as_bytes();
        let now = NOW_MS / 1000;
        assert!(matches!(
            run(&account(), &signed(SECRET, now, body), body),
            Verdict::Message(_)
        ));
        let refused = |h: &[(String, String)], b: &[u8]| match run(&account(), h, b) {
            Verdict::Refuse { status, reason } => (status, reason),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(&signed("other-secret", now, body), body),
            (401, "bad signature")
        );
        // The body changed after signing.
        let mut tampered = body.to_vec();
        tampered[body.len() - 3] ^= 1;
        assert_eq!(
            refused(&signed(SECRET, now, body), &tampered),
            (401, "bad signature")
        );
        // Signed with another timestamp than the one sent.
        let mut h = signed(SECRET, now, body);
        h[0].1 = (now - 1).to_string();
        assert_eq!(refused(&h, body), (401, "bad signature"));
        // 5 minutes is the limit, either way.
        assert!(matches!(
            run(&account(), &signed(SECRET, now - 300, body), body),
            Verdict::Message(_)
        ));
        assert_eq!(
            refused(&signed(SECRET, now - 301, body), body),
            (401, "request timestamp too far from now")
        );
        assert_eq!(
            refused(&signed(SECRET, now + 301, body), body),
            (401, "request timestamp too far from now")
        );
        let mut h = signed(SECRET, now, body);
        h[1].1 = h[1].1.replace("v0=", "v1=");
        assert_eq!(refused(&h, body), (401, "malformed signature"));
        h[1].1 = "v0=zz".into();
        assert_eq!(refused(&h, body), (401, "malformed signature"));
        assert_eq!(
            refused(&signed(SECRET, now, body)[..1], body),
            (401, "missing signature")
        );
        let mut h = signed(SECRET, now, body);
        h[0].1 = "-5".into();
        assert_eq!(refused(&h, body), (401, "malformed request timestamp"));
    }

    #[test]
    fn malformed_and_oversized_bodies_are_refused() {
        let now = NOW_MS / 1000;
        for (body, why) in [
            (&b"{\"type\": "[..], "malformed JSON"),
            (b"[1,2]", "malformed JSON"),
            (br#"{"type":"event_callback","event_id":"Ev1"}"#, "event_callback without an event"),
            (br#"{"type":"url_verification"}"#, "url_verification without a challenge"),
            (br#"{"type":"event_callback","event":{"type":"message","channel":"C024BE91L","user":"U1","text":5,"ts":"1.0"},"event_id":"E"}"#, "malformed message event"),
            (br#"{"type":"event_callback","event":{"type":"message","channel":"C024BE91L","user":"U1","text":"x","ts":"1.0"}}"#, "event without an event_id"),
            (br#"{"type":"event_callback","event":{"type":"message","channel":"C024BE91L","user":"U1","text":"x","ts":"soon"},"event_id":"E"}"#, "malformed ts"),
        ] {
            assert_eq!(
                run(&account(), &signed(SECRET, now, body), body),
                Verdict::refuse(400, why),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Too large: refused before the signature is even computed.
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(
            run(&account(), &[], &big),
            Verdict::refuse(413, "body too large")
        );
        // A text past the bound is refused, not cut.
        let text = "x".repeat(super::super::event::MAX_TEXT + 1);
        let v = deliver(&callback(
            json!({"type": "message", "channel": "C024BE91L", "channel_type": "im",
            "user": "U1", "text": text, "ts": "1.0"}),
        ));
        assert_eq!(v, Verdict::refuse(400, "message out of bounds"));
    }

    #[test]
    fn ts_and_mentions_edge_cases() {
        assert_eq!(ts_ms("1355517523.000005"), Some(1_355_517_523_000));
        assert_eq!(ts_ms("1355517523.9"), Some(1_355_517_523_900));
        assert_eq!(ts_ms("7"), Some(7_000));
        for bad in ["", ".5", "1.x", "1.5.5", "-1.0", "1.0123456789"] {
            assert_eq!(ts_ms(bad), None, "{bad}");
        }
        assert_eq!(strip_mention("<@B>", "B"), (String::new(), true));
        assert_eq!(strip_mention("a <@B|x", "B").0, "a <@B|x");
        assert_eq!(strip_mention("<@<@B>", "B"), ("<@".into(), true));
        assert_eq!(strip_mention("a<@B>b", "B"), ("ab".into(), true));
    }
}
