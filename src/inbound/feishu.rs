//! Feishu (Lark) event subscription over HTTP: one callback, verified, decrypted and read
//! into a [`Verdict`] (event schema 2.0).
//!
//! - Size first: a body over [`MAX_BODY`] is refused (`413`) before anything is parsed.
//! - With `encryptKey` set, a signed request is checked before its body is read:
//!   `X-Lark-Signature` = hex SHA-256(`X-Lark-Request-Timestamp` + `X-Lark-Request-Nonce` +
//!   encryptKey + body), compared in constant time, the timestamp within [`MAX_AGE_S`] of the
//!   clock (a captured callback cannot be replayed later). A wrong or stale one: `401`.
//! - A body `{"encrypt": base64}` is decrypted: AES-256-CBC, key = SHA-256(encryptKey),
//!   IV = the first 16 bytes, PKCS#7 padding. One that does not decrypt: `401`.
//! - `url_verification` (plain or encrypted) is answered with its challenge once its
//!   `token` is the verification token; Feishu does not sign these.
//! - An event must carry the verification token (`header.token`), and with `encryptKey` set
//!   must be signed; one created more than [`MAX_AGE_S`] ago is refused. An
//!   `im.message.receive_v1` text message becomes an [`Inbound`]; every other event or
//!   message type is acknowledged and ignored.
//!
//! Feishu redelivers an event it got no `200` for with the same `header.event_id`; the
//! ingress recognises it by the message's `eventId`.

use super::event::{ChatKind, Inbound, MAX_NAME, MAX_TEXT};
use super::webhook::{MAX_BODY, Verdict, cut, digits, header, hex32};
use crate::config::inbound_webhooks::FeishuWebhook;
use serde::Deserialize;
use serde_json::Value;

/// How old an event (`header.create_time`) or a signed request
/// (`X-Lark-Request-Timestamp`, either way) may be.
pub const MAX_AGE_S: i64 = 60 * 60;

pub const TIMESTAMP_HEADER: &str = "X-Lark-Request-Timestamp";
pub const NONCE_HEADER: &str = "X-Lark-Request-Nonce";
pub const SIGNATURE_HEADER: &str = "X-Lark-Signature";

/// The event type that is a message to the bot.
const MESSAGE_RECEIVE: &str = "im.message.receive_v1";
/// Mentions read from one message; more are left as their placeholders.
const MAX_MENTIONS: usize = 64;

/// A callback body, before or after decryption: an encrypted envelope, a URL verification,
/// or an event.
#[derive(Deserialize)]
struct Callback {
    #[serde(default)]
    encrypt: Option<String>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    challenge: Option<String>,
    /// The verification token of a URL verification (and of schema 1.0 events).
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    header: Option<EventHeader>,
    /// Typed once the header says which event it is.
    #[serde(default)]
    event: Option<Value>,
}

#[derive(Deserialize)]
struct EventHeader {
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    event_type: Option<String>,
    /// Milliseconds since the epoch, as a string (a number is taken too).
    #[serde(default)]
    create_time: Option<Value>,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Deserialize)]
struct MessageReceive {
    sender: Sender,
    message: Message,
}

#[derive(Deserialize)]
struct Sender {
    #[serde(default)]
    sender_id: Option<UserId>,
    #[serde(default)]
    sender_type: Option<String>,
}

#[derive(Deserialize)]
struct UserId {
    #[serde(default)]
    open_id: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    chat_id: Option<String>,
    #[serde(default)]
    thread_id: Option<String>,
    #[serde(default)]
    chat_type: Option<String>,
    #[serde(default)]
    message_type: Option<String>,
    /// A JSON document in a string; for text, `{"text": …}`.
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    create_time: Option<Value>,
    #[serde(default)]
    mentions: Option<Vec<Mention>>,
}

#[derive(Deserialize)]
struct Mention {
    /// The placeholder in the text: `@_user_1`.
    key: String,
    #[serde(default)]
    id: Option<UserId>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct TextContent {
    text: String,
}

/// Verifies and reads one callback to `account`'s path. `headers` are the request's (names
/// in any case), `now_ms` the wall clock in ms since the epoch.
pub fn handle(
    account: &FeishuWebhook,
    headers: &[(&str, &str)],
    body: &[u8],
    now_ms: i64,
) -> Verdict {
    if body.len() > MAX_BODY {
        return Verdict::refuse(413, "body too large");
    }
    let signed = match &account.encrypt_key {
        Some(key) => match verify(key, headers, body, now_ms) {
            Ok(signed) => signed,
            Err(reason) => return Verdict::refuse(401, reason),
        },
        None => false,
    };
    let Ok(mut cb) = serde_json::from_slice::<Callback>(body) else {
        return Verdict::refuse(400, "malformed JSON");
    };
    if let Some(sealed) = cb.encrypt.take() {
        let Some(key) = &account.encrypt_key else {
            return Verdict::refuse(401, "encrypted, and no key to decrypt it");
        };
        let Some(plain) = decrypt(key, &sealed) else {
            return Verdict::refuse(401, "does not decrypt");
        };
        // What decrypts with the key but is not JSON was not sealed by Feishu.
        cb = match serde_json::from_slice::<Callback>(&plain) {
            Ok(inner) if inner.encrypt.is_none() => inner,
            _ => return Verdict::refuse(401, "does not decrypt"),
        };
    }
    if cb.kind.as_deref() == Some("url_verification") {
        return match (&cb.token, cb.challenge) {
            (Some(t), _) if !token_ok(account, t) => {
                Verdict::refuse(401, "wrong verification token")
            }
            (None, _) => Verdict::refuse(401, "missing verification token"),
            (Some(_), Some(c)) if !c.is_empty() && c.len() <= 256 => Verdict::Challenge(c),
            (Some(_), _) => Verdict::refuse(400, "url_verification without a challenge"),
        };
    }
    if account.encrypt_key.is_some() && !signed {
        return Verdict::refuse(401, "missing signature");
    }
    let presented = cb
        .header
        .as_ref()
        .and_then(|h| h.token.as_deref())
        .or(cb.token.as_deref());
    match presented {
        None => return Verdict::refuse(401, "missing verification token"),
        Some(t) if !token_ok(account, t) => {
            return Verdict::refuse(401, "wrong verification token");
        }
        Some(_) => {}
    }
    let (Some("2.0"), Some(h)) = (cb.schema.as_deref(), cb.header) else {
        return Verdict::Ignore("event schema keel does not handle");
    };
    let Some(created) = h.create_time.as_ref().and_then(millis) else {
        return Verdict::refuse(400, "event without a create_time");
    };
    if now_ms.saturating_sub(created) > MAX_AGE_S * 1000 {
        return Verdict::refuse(400, "event older than one hour");
    }
    if h.event_type.as_deref() != Some(MESSAGE_RECEIVE) {
        return Verdict::Ignore("event type keel does not handle");
    }
    let Some(event_id) = h.event_id.filter(|e| !e.is_empty()) else {
        return Verdict::refuse(400, "event without an event_id");
    };
    let Some(Ok(ev)) = cb.event.map(serde_json::from_value::<MessageReceive>) else {
        return Verdict::refuse(400, "malformed message event");
    };
    message(account, event_id, created, ev)
}

/// The signature check when an encrypt key is set: `Ok(true)` signed and good, `Ok(false)`
/// unsigned (allowed for URL verification only), `Err` names what failed.
fn verify(
    key: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    now_ms: i64,
) -> Result<bool, &'static str> {
    let ts = header(headers, TIMESTAMP_HEADER);
    let nonce = header(headers, NONCE_HEADER);
    let sig = header(headers, SIGNATURE_HEADER);
    let (ts, nonce, sig) = match (ts, nonce, sig) {
        (None, None, None) => return Ok(false),
        (Some(ts), Some(nonce), Some(sig)) => (ts, nonce, sig),
        _ => return Err("incomplete signature headers"),
    };
    let secs = digits(ts).ok_or("malformed request timestamp")?;
    if (now_ms.div_euclid(1000) - secs).abs() > MAX_AGE_S {
        return Err("request timestamp too far from now");
    }
    let want = hex32(sig).ok_or("malformed signature")?;
    let got = crate::digest::sha256(&[ts.as_bytes(), nonce.as_bytes(), key.as_bytes(), body]);
    if crate::auth::constant_time_eq(&got, &want) {
        Ok(true)
    } else {
        Err("bad signature")
    }
}

fn token_ok(account: &FeishuWebhook, presented: &str) -> bool {
    crate::auth::constant_time_eq(presented.as_bytes(), account.verification_token.as_bytes())
}

/// Feishu's `encrypt`: base64 of IV (16 bytes) + AES-256-CBC ciphertext under
/// SHA-256(`key`), PKCS#7-padded. `None` when it is not that (a wrong key shows as bad
/// padding, or as something that is not JSON once decrypted).
pub(crate) fn decrypt(key: &str, sealed: &str) -> Option<Vec<u8>> {
    use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .ok()?;
    if data.len() < 32 || data.len() % 16 != 0 {
        return None;
    }
    let (iv, sealed) = data.split_at(16);
    let key = crate::digest::sha256(&[key.as_bytes()]);
    let mut buf = sealed.to_vec();
    let dec = cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, iv).ok()?;
    let len = dec.decrypt_padded_mut::<Pkcs7>(&mut buf).ok()?.len();
    buf.truncate(len);
    Some(buf)
}

/// What Feishu does to a callback body with an encrypt key: base64(`iv` + AES-256-CBC of
/// `plain` under SHA-256(`key`), PKCS#7). For fake Feishu servers, tests and the fuzz target;
/// keel itself only decrypts.
pub fn seal(key: &str, iv: [u8; 16], plain: &[u8]) -> String {
    use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
    use base64::Engine as _;
    let key = crate::digest::sha256(&[key.as_bytes()]);
    let enc = cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into());
    let mut buf = iv.to_vec();
    buf.extend_from_slice(plain);
    buf.resize(16 + (plain.len() / 16 + 1) * 16, 0);
    // The buffer has room for the padding, so this cannot fail; the IV is left out.
    let n = enc
        .encrypt_padded_mut::<Pkcs7>(&mut buf[16..], plain.len())
        .map_or(0, <[u8]>::len);
    buf.truncate(16 + n);
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Milliseconds since the epoch from a string or a number.
fn millis(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => digits(s),
        Value::Number(n) => n.as_i64().filter(|n| *n >= 0),
        _ => None,
    }
}

fn message(account: &FeishuWebhook, event_id: String, created: i64, ev: MessageReceive) -> Verdict {
    let sender = ev
        .sender
        .sender_id
        .and_then(|s| s.open_id)
        .filter(|s| !s.is_empty());
    let bot = account.bot_open_id.as_deref();
    if sender.is_some() && sender.as_deref() == bot {
        return Verdict::Ignore("the bot's own message");
    }
    if ev.sender.sender_type.as_deref() != Some("user") {
        return Verdict::Ignore("a bot's or app's message");
    }
    let Some(sender) = sender else {
        return Verdict::refuse(400, "message without a sender open_id");
    };
    let m = ev.message;
    let chat_kind = match m.chat_type.as_deref() {
        Some("p2p") => ChatKind::Direct,
        Some("group") => ChatKind::Group,
        _ => return Verdict::Ignore("chat type keel does not handle"),
    };
    if m.message_type.as_deref() != Some("text") {
        return Verdict::Ignore("message type keel does not handle");
    }
    let (Some(chat_id), Some(content)) = (m.chat_id.filter(|c| !c.is_empty()), m.content) else {
        return Verdict::refuse(400, "message without a chat_id or content");
    };
    if content.len() > MAX_TEXT * 2 {
        return Verdict::refuse(400, "message out of bounds");
    }
    let Ok(TextContent { text }) = serde_json::from_str(&content) else {
        return Verdict::refuse(400, "malformed message content");
    };
    if text.len() > MAX_TEXT {
        return Verdict::refuse(400, "message out of bounds");
    }
    let mentions = m.mentions.unwrap_or_default();
    let (text, mentioned) = resolve_mentions(&text, &mentions, bot);
    let text = text.trim().to_string();
    if text.is_empty() {
        return Verdict::Ignore("a message without text");
    }
    let msg = Inbound {
        channel: "feishu".into(),
        account_id: account.account_id.clone(),
        event_id,
        chat_kind,
        chat_id,
        thread_id: m.thread_id.filter(|t| !t.is_empty()),
        sender_id: sender,
        sender_name: None,
        message_id: m.message_id.filter(|t| !t.is_empty()),
        text,
        mentioned,
        ts_ms: m.create_time.as_ref().and_then(millis).unwrap_or(created),
    };
    match msg.check() {
        Ok(()) => Verdict::Message(Box::new(msg)),
        Err(_) => Verdict::refuse(400, "message out of bounds"),
    }
}

/// The text with each mention placeholder (`@_user_1`) replaced: the bot's removed (and
/// whether it was there), anyone else's by `@<name>`. Placeholders are matched longest
/// first at each position, so `@_user_1` never eats the start of `@_user_10`.
fn resolve_mentions(text: &str, mentions: &[Mention], bot: Option<&str>) -> (String, bool) {
    let mentions: Vec<&Mention> = mentions
        .iter()
        .filter(|m| m.key.len() > 1 && m.key.starts_with('@'))
        .take(MAX_MENTIONS)
        .collect();
    let mut out = String::with_capacity(text.len());
    let mut mentioned = false;
    let mut rest = text;
    while let Some(i) = rest.find('@') {
        out.push_str(&rest[..i]);
        let here = &rest[i..];
        let hit = mentions
            .iter()
            .filter(|m| here.starts_with(m.key.as_str()))
            .max_by_key(|m| m.key.len());
        let Some(m) = hit else {
            out.push('@');
            rest = &here[1..];
            continue;
        };
        rest = &here[m.key.len()..];
        let open_id = m.id.as_ref().and_then(|id| id.open_id.as_deref());
        if bot.is_some() && open_id == bot {
            mentioned = true;
            if out.is_empty() || out.ends_with(char::is_whitespace) {
                rest = rest.trim_start();
            }
        } else {
            out.push('@');
            let name = m.name.as_deref().map(str::trim).filter(|n| !n.is_empty());
            out.push_str(&cut(name.unwrap_or(&m.key[1..]), MAX_NAME));
        }
    }
    out.push_str(rest);
    (out, mentioned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{hex, sha256};
    use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
    use base64::Engine as _;
    use serde_json::json;

    const TOKEN: &str = "v-token-5e1b3c";
    const KEY: &str = "kNZ8tT4vq7QxCfj3";
    const NOW_MS: i64 = 1_796_600_000_000;

    fn account(encrypt_key: Option<&str>) -> FeishuWebhook {
        FeishuWebhook {
            account_id: "default".into(),
            verification_token: TOKEN.into(),
            encrypt_key: encrypt_key.map(str::to_string),
            webhook_path: "/feishu/events".into(),
            bot_open_id: Some("ou_bot0001".into()),
            access: Default::default(),
        }
    }

    /// Feishu's encryption, done here with the `aes`/`cbc` encryptor: base64(IV + AES-256-CBC
    /// under SHA-256(key), PKCS#7).
    fn encrypt(key: &str, plain: &[u8], iv: [u8; 16]) -> String {
        let k = sha256(&[key.as_bytes()]);
        let enc = cbc::Encryptor::<aes::Aes256>::new_from_slices(&k, &iv).unwrap();
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + 16, 0);
        let n = enc
            .encrypt_padded_mut::<Pkcs7>(&mut buf, plain.len())
            .unwrap()
            .len();
        let mut all = iv.to_vec();
        all.extend_from_slice(&buf[..n]);
        base64::engine::general_purpose::STANDARD.encode(all)
    }

    fn signed(key: &str, ts_s: i64, nonce: &str, body: &[u8]) -> Vec<(String, String)> {
        let ts = ts_s.to_string();
        let sig = sha256(&[ts.as_bytes(), nonce.as_bytes(), key.as_bytes(), body]);
        vec![
            (TIMESTAMP_HEADER.into(), ts),
            (NONCE_HEADER.into(), nonce.into()),
            (SIGNATURE_HEADER.into(), hex(&sig)),
        ]
    }

    fn run(acc: &FeishuWebhook, headers: &[(String, String)], body: &[u8]) -> Verdict {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        handle(acc, &h, body, NOW_MS)
    }

    /// An event posted the way Feishu does with an encrypt key: encrypted and signed.
    fn sealed(event: &Value) -> Verdict {
        let body =
            json!({"encrypt": encrypt(KEY, event.to_string().as_bytes(), [7; 16])}).to_string();
        run(
            &account(Some(KEY)),
            &signed(KEY, NOW_MS / 1000, "n0nce", body.as_bytes()),
            body.as_bytes(),
        )
    }

    /// An event posted without an encrypt key: plain JSON, unsigned.
    fn plain(event: &Value) -> Verdict {
        let body = event.to_string();
        run(&account(None), &[], body.as_bytes())
    }

    fn receive(chat_type: &str, text: &str, mentions: Value) -> Value {
        json!({
            "schema": "2.0",
            "header": {
                "event_id": "5e3702a84e847582be8db7fb73283c02",
                "event_type": "im.message.receive_v1",
                "create_time": (NOW_MS - 2_000).to_string(),
                "token": TOKEN, "app_id": "cli_9f5343c580712544", "tenant_key": "2ca1d211f64f6438",
            },
            "event": {
                "sender": {
                    "sender_id": {"union_id": "on_8ed6aa67826108097d9ee143816345", "user_id": "e33ggbyz", "open_id": "ou_84aad35d084aa403a838cf73ee18467"},
                    "sender_type": "user", "tenant_key": "736588c9260f175e",
                },
                "message": {
                    "message_id": "om_5ce6d572455d361153b7cb51da133945",
                    "root_id": "om_5ce6d572455d361153b7cb5xxfsdfsdfdsf",
                    "parent_id": "om_5ce6d572455d361153b7cb5xxfsdfsdfdsf",
                    "create_time": (NOW_MS - 3_000).to_string(),
                    "chat_id": "oc_5ce6d572455d361153b7xx51da133945",
                    "chat_type": chat_type,
                    "message_type": "text",
                    "content": json!({"text": text}).to_string(),
                    "mentions": mentions,
                },
            },
        })
    }

    fn msg(v: Verdict) -> Inbound {
        match v {
            Verdict::Message(m) => *m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn feishus_published_decryption_example() {
        // Feishu's docs: "test key" decrypts this to "hello world".
        assert_eq!(
            decrypt("test key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=").as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(
            decrypt("wrong key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk="),
            None
        );
        for bad in ["", "!!!not base64!!!", "AAAA", "A".repeat(44).as_str()] {
            assert_eq!(decrypt("test key", bad), None, "{bad}");
        }
        // seal, given the example's IV (its first 16 bytes), gives the example back.
        let iv: [u8; 16] = base64::engine::general_purpose::STANDARD
            .decode("P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=")
            .unwrap()[..16]
            .try_into()
            .unwrap();
        assert_eq!(
            seal("test key", iv, b"hello world"),
            "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk="
        );
        // Round trip with the test's own encryptor, for lengths around a block.
        for n in [0, 1, 15, 16, 17, 100] {
            let plain = vec![b'x'; n];
            assert_eq!(
                decrypt(KEY, &encrypt(KEY, &plain, [n as u8; 16])),
                Some(plain)
            );
        }
    }

    #[test]
    fn a_direct_message_becomes_an_inbound_plain_and_sealed() {
        let ev = receive("p2p", "hello there", json!([]));
        let want = Inbound {
            channel: "feishu".into(),
            account_id: "default".into(),
            event_id: "5e3702a84e847582be8db7fb73283c02".into(),
            chat_kind: ChatKind::Direct,
            chat_id: "oc_5ce6d572455d361153b7xx51da133945".into(),
            thread_id: None,
            sender_id: "ou_84aad35d084aa403a838cf73ee18467".into(),
            sender_name: None,
            message_id: Some("om_5ce6d572455d361153b7cb51da133945".into()),
            text: "hello there".into(),
            mentioned: false,
            ts_ms: NOW_MS - 3_000,
        };
        assert_eq!(msg(plain(&ev)), want);
        assert_eq!(msg(sealed(&ev)), want);
    }

    #[test]
    fn group_mentions_and_threads() {
        let mentions = json!([
            {"key": "@_user_1", "id": {"open_id": "ou_bot0001"}, "name": "keel", "tenant_key": "t"},
            {"key": "@_user_2", "id": {"open_id": "ou_ada"}, "name": "Ada"},
            {"key": "@_user_10", "id": {"open_id": "ou_ten"}, "name": "Ten"},
        ]);
        let mut ev = receive(
            "group",
            "@_user_1 ask @_user_2 and @_user_10 @_all",
            mentions,
        );
        ev["event"]["message"]["thread_id"] = json!("omt_1a3b99f9d2cfd9fe");
        let m = msg(sealed(&ev));
        assert_eq!(m.chat_kind, ChatKind::Group);
        assert!(m.mentioned);
        assert_eq!(m.text, "ask @Ada and @Ten @_all");
        assert_eq!(m.thread_id.as_deref(), Some("omt_1a3b99f9d2cfd9fe"));
        // Mid-sentence, the bot's mention leaves one space.
        let ev = receive(
            "group",
            "hey @_user_1 look",
            json!([{"key": "@_user_1", "id": {"open_id": "ou_bot0001"}, "name": "keel"}]),
        );
        assert_eq!(msg(plain(&ev)).text, "hey look");
        // Someone else mentioned: not the bot.
        let ev = receive(
            "group",
            "@_user_1 hi",
            json!([{"key": "@_user_1", "id": {"open_id": "ou_ada"}, "name": "Ada"}]),
        );
        let m = msg(plain(&ev));
        assert!(!m.mentioned);
        assert_eq!(m.text, "@Ada hi");
        // The bot's id unknown: nothing counts as the bot.
        let mut acc = account(None);
        acc.bot_open_id = None;
        let ev = receive(
            "group",
            "@_user_1 hi",
            json!([{"key": "@_user_1", "id": {"open_id": "ou_bot0001"}, "name": "keel"}]),
        );
        let m = msg(run(&acc, &[], ev.to_string().as_bytes()));
        assert!(!m.mentioned);
        assert_eq!(m.text, "@keel hi");
        // Only a mention of the bot: nothing to run.
        let ev = receive(
            "group",
            "@_user_1",
            json!([{"key": "@_user_1", "id": {"open_id": "ou_bot0001"}}]),
        );
        assert_eq!(plain(&ev), Verdict::Ignore("a message without text"));
    }

    #[test]
    fn url_verification_plain_and_encrypted() {
        let challenge =
            json!({"challenge": "ajls384kdjx98XX", "token": TOKEN, "type": "url_verification"});
        let want = Verdict::Challenge("ajls384kdjx98XX".into());
        assert_eq!(plain(&challenge), want);
        assert_eq!(want.answer().body, br#"{"challenge":"ajls384kdjx98XX"}"#);
        // Encrypted, and (as Feishu sends it) unsigned.
        let body =
            json!({"encrypt": encrypt(KEY, challenge.to_string().as_bytes(), [1; 16])}).to_string();
        assert_eq!(run(&account(Some(KEY)), &[], body.as_bytes()), want);
        // With the wrong token, no challenge is answered.
        let wrong = json!({"challenge": "x", "token": "guess", "type": "url_verification"});
        assert_eq!(
            plain(&wrong),
            Verdict::refuse(401, "wrong verification token")
        );
        let none = json!({"challenge": "x", "type": "url_verification"});
        assert_eq!(
            plain(&none),
            Verdict::refuse(401, "missing verification token")
        );
    }

    #[test]
    fn wrong_keys_signatures_and_tokens_are_refused() {
        let ev = receive("p2p", "hi", json!([]));
        // Encrypted with another key (and signed with the right one: the body is what it is).
        let body = json!({"encrypt": encrypt("another key", ev.to_string().as_bytes(), [3; 16])})
            .to_string();
        let h = signed(KEY, NOW_MS / 1000, "n", body.as_bytes());
        let v = run(&account(Some(KEY)), &h, body.as_bytes());
        assert_eq!(v, Verdict::refuse(401, "does not decrypt"));
        // An encrypted body where no key is configured.
        assert_eq!(
            run(&account(None), &[], body.as_bytes()),
            Verdict::refuse(401, "encrypted, and no key to decrypt it")
        );
        let body = json!({"encrypt": encrypt(KEY, ev.to_string().as_bytes(), [3; 16])}).to_string();
        let b = body.as_bytes();
        let acc = account(Some(KEY));
        let now = NOW_MS / 1000;
        assert!(matches!(
            run(&acc, &signed(KEY, now, "n", b), b),
            Verdict::Message(_)
        ));
        let refused = |h: &[(String, String)], b: &[u8]| match run(&acc, h, b) {
            Verdict::Refuse { status, reason } => (status, reason),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(&signed("other", now, "n", b), b),
            (401, "bad signature")
        );
        let mut h = signed(KEY, now, "n", b);
        h[1].1 = "m".into();
        assert_eq!(refused(&h, b), (401, "bad signature"));
        // Unsigned events are refused when a key is set.
        assert_eq!(refused(&[], b), (401, "missing signature"));
        assert_eq!(
            refused(&signed(KEY, now, "n", b)[1..], b),
            (401, "incomplete signature headers")
        );
        // The request timestamp within an hour, either way.
        assert!(matches!(
            run(&acc, &signed(KEY, now - 3600, "n", b), b),
            Verdict::Message(_)
        ));
        assert_eq!(
            refused(&signed(KEY, now - 3601, "n", b), b),
            (401, "request timestamp too far from now")
        );
        assert_eq!(
            refused(&signed(KEY, now + 3601, "n", b), b),
            (401, "request timestamp too far from now")
        );
        let mut h = signed(KEY, now, "n", b);
        h[2].1 = "abc".into();
        assert_eq!(refused(&h, b), (401, "malformed signature"));
        // The verification token, plain and sealed.
        let mut wrong = ev.clone();
        wrong["header"]["token"] = json!("guess");
        assert_eq!(
            plain(&wrong),
            Verdict::refuse(401, "wrong verification token")
        );
        assert_eq!(
            sealed(&wrong),
            Verdict::refuse(401, "wrong verification token")
        );
        let mut none = ev.clone();
        none["header"].as_object_mut().unwrap().remove("token");
        assert_eq!(
            plain(&none),
            Verdict::refuse(401, "missing verification token")
        );
    }

    #[test]
    fn old_events_are_refused() {
        let mut ev = receive("p2p", "hi", json!([]));
        ev["header"]["create_time"] = json!((NOW_MS - 3_600_000).to_string());
        assert!(matches!(plain(&ev), Verdict::Message(_)));
        ev["header"]["create_time"] = json!((NOW_MS - 3_600_001).to_string());
        assert_eq!(
            plain(&ev),
            Verdict::refuse(400, "event older than one hour")
        );
        assert_eq!(
            sealed(&ev),
            Verdict::refuse(400, "event older than one hour")
        );
        ev["header"]["create_time"] = json!(NOW_MS - 10);
        assert!(matches!(plain(&ev), Verdict::Message(_)));
        ev["header"]["create_time"] = json!("yesterday");
        assert_eq!(
            plain(&ev),
            Verdict::refuse(400, "event without a create_time")
        );
    }

    #[test]
    fn other_events_senders_and_types_are_ignored() {
        let ignored = |ev: Value| match plain(&ev) {
            Verdict::Ignore(why) => why,
            other => panic!("{other:?}"),
        };
        let mut ev = receive("p2p", "hi", json!([]));
        ev["event"]["sender"]["sender_id"]["open_id"] = json!("ou_bot0001");
        assert_eq!(ignored(ev), "the bot's own message");
        let mut ev = receive("p2p", "hi", json!([]));
        ev["event"]["sender"]["sender_type"] = json!("app");
        assert_eq!(ignored(ev), "a bot's or app's message");
        let mut ev = receive("p2p", "hi", json!([]));
        ev["event"]["message"]["message_type"] = json!("image");
        ev["event"]["message"]["content"] = json!(r#"{"image_key":"img_v2_1"}"#);
        assert_eq!(ignored(ev), "message type keel does not handle");
        let mut ev = receive("p2p", "hi", json!([]));
        ev["event"]["message"]["chat_type"] = json!("meeting");
        assert_eq!(ignored(ev), "chat type keel does not handle");
        let mut ev = receive("p2p", "hi", json!([]));
        ev["header"]["event_type"] = json!("im.message.reaction.created_v1");
        assert_eq!(ignored(ev), "event type keel does not handle");
        // Schema 1.0 callbacks, with the right token.
        assert_eq!(
            ignored(
                json!({"uuid": "u", "token": TOKEN, "ts": "1", "type": "event_callback", "event": {}})
            ),
            "event schema keel does not handle"
        );
    }

    #[test]
    fn malformed_and_oversized_bodies_are_refused() {
        let acc = account(None);
        assert_eq!(
            run(&acc, &[], b"{\"schema\":"),
            Verdict::refuse(400, "malformed JSON")
        );
        assert_eq!(
            run(&acc, &[], b"\"encrypt\""),
            Verdict::refuse(400, "malformed JSON")
        );
        let big = vec![b'{'; MAX_BODY + 1];
        assert_eq!(run(&acc, &[], &big), Verdict::refuse(413, "body too large"));
        let mut ev = receive("p2p", "hi", json!([]));
        ev["event"]["message"]["content"] = json!("hi, not JSON");
        assert_eq!(
            plain(&ev),
            Verdict::refuse(400, "malformed message content")
        );
        let mut ev = receive("p2p", "hi", json!([]));
        ev["event"]["message"] = json!("nope");
        assert_eq!(plain(&ev), Verdict::refuse(400, "malformed message event"));
        let mut ev = receive("p2p", "hi", json!([]));
        ev["header"].as_object_mut().unwrap().remove("event_id");
        assert_eq!(
            plain(&ev),
            Verdict::refuse(400, "event without an event_id")
        );
        let ev = receive("p2p", &"x".repeat(MAX_TEXT + 1), json!([]));
        assert_eq!(plain(&ev), Verdict::refuse(400, "message out of bounds"));
        // Decrypts with the key, but is not a callback: not sealed by Feishu.
        let body = json!({"encrypt": encrypt(KEY, b"hello world", [0; 16])}).to_string();
        assert_eq!(
            run(&account(Some(KEY)), &[], body.as_bytes()),
            Verdict::refuse(401, "does not decrypt")
        );
    }
}
