//! The webhook accounts of inbound chat channels, from OpenClaw's keys: the Slack Events API
//! (`channels.slack`: `mode: "http"`, `signingSecret`, `webhookPath`) and Feishu's event
//! subscription (`channels.feishu`: `connectionMode: "webhook"`, `verificationToken`,
//! `encryptKey`, `webhookPath`), each either one account (`default`) or one per entry of
//! `accounts`, which inherit the channel's own keys. What a request to one of these paths
//! means is `inbound::slack`'s and `inbound::feishu`'s.

use super::channels::resolve_secret;
use super::inbound::Access;
use serde_json::{Map, Value};
use std::fmt;

/// Where Slack posts events when `webhookPath` is not set.
pub const SLACK_DEFAULT_PATH: &str = "/slack/events";
/// Where Feishu posts events when `webhookPath` is not set.
pub const FEISHU_DEFAULT_PATH: &str = "/feishu/events";
/// The longest webhook path.
const MAX_PATH: usize = 256;
/// The longest account id.
const MAX_ACCOUNT: usize = 64;
/// Paths keel serves itself (a webhook may not take them, nor anything under them).
const RESERVED: &[&str] = &["/api", "/healthz", "/livez", "/readyz", "/metrics"];

/// One Slack app whose Events API requests keel verifies. Never printed with its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SlackWebhook {
    /// `default`, or the key under `channels.slack.accounts`.
    pub account_id: String,
    /// The app's Signing Secret (HMAC key of every request).
    pub signing_secret: String,
    /// The request path (and query, if any) Slack posts to, matched exactly.
    pub webhook_path: String,
    /// `botUserId`: the bot's Slack user id (`U…`), for mention detection and dropping the
    /// bot's own messages; without it, the id Slack names in each event's `authorizations`.
    pub bot_user_id: Option<String>,
    /// Who may talk to the agent here (`dmPolicy`, `allowFrom`, `groupPolicy`, …; OpenClaw's
    /// defaults: DMs by pairing, channels by allowlist).
    pub access: Access,
}

/// One Feishu (Lark) app whose event callbacks keel verifies. Never printed with its secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct FeishuWebhook {
    /// `default`, or the key under `channels.feishu.accounts`.
    pub account_id: String,
    /// `verificationToken`: every callback carries it (`header.token`, or `token`).
    pub verification_token: String,
    /// `encryptKey`: when set, callbacks are AES-256-CBC encrypted with its SHA-256 and
    /// signed (`X-Lark-Signature`), and an unsigned event is refused.
    pub encrypt_key: Option<String>,
    /// The request path (and query, if any) Feishu posts to, matched exactly.
    pub webhook_path: String,
    /// `botOpenId`: the bot's `open_id` (`ou_…`), for mention detection and dropping the
    /// bot's own messages. Feishu's events do not name it.
    pub bot_open_id: Option<String>,
    /// Who may talk to the agent here, as for Slack.
    pub access: Access,
}

/// Every inbound webhook account, each on its own path.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct InboundWebhooks {
    pub slack: Vec<SlackWebhook>,
    pub feishu: Vec<FeishuWebhook>,
}

/// The account a request path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Slack(&'a SlackWebhook),
    Feishu(&'a FeishuWebhook),
}

impl InboundWebhooks {
    /// The account whose `webhookPath` is exactly `target` (the request's path and query).
    pub fn route(&self, target: &str) -> Option<Route<'_>> {
        self.slack
            .iter()
            .find(|a| a.webhook_path == target)
            .map(Route::Slack)
            .or_else(|| {
                self.feishu
                    .iter()
                    .find(|a| a.webhook_path == target)
                    .map(Route::Feishu)
            })
    }

    /// The secret values, for scrubbing them from what keel shows (config, logs).
    pub fn secrets(&self) -> Vec<String> {
        let slack = self.slack.iter().map(|a| a.signing_secret.clone());
        let feishu = self.feishu.iter().flat_map(|a| {
            std::iter::once(a.verification_token.clone()).chain(a.encrypt_key.clone())
        });
        slack.chain(feishu).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.slack.is_empty() && self.feishu.is_empty()
    }

    /// The access rules of `channel`'s webhook account `account`, if keel receives on it.
    pub fn access(&self, channel: &str, account: &str) -> Option<&Access> {
        match channel {
            "slack" => self
                .slack
                .iter()
                .find(|a| a.account_id == account)
                .map(|a| &a.access),
            "feishu" => self
                .feishu
                .iter()
                .find(|a| a.account_id == account)
                .map(|a| &a.access),
            _ => None,
        }
    }
}

impl fmt::Debug for SlackWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackWebhook")
            .field("account_id", &self.account_id)
            .field("signing_secret", &"<redacted>")
            .field("webhook_path", &self.webhook_path)
            .field("bot_user_id", &self.bot_user_id)
            .field("access", &self.access)
            .finish()
    }
}

impl fmt::Debug for FeishuWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeishuWebhook")
            .field("account_id", &self.account_id)
            .field("verification_token", &"<redacted>")
            .field(
                "encrypt_key",
                &self.encrypt_key.as_ref().map(|_| "<redacted>"),
            )
            .field("webhook_path", &self.webhook_path)
            .field("bot_open_id", &self.bot_open_id)
            .field("access", &self.access)
            .finish()
    }
}

impl fmt::Debug for InboundWebhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundWebhooks")
            .field("slack", &self.slack)
            .field("feishu", &self.feishu)
            .finish()
    }
}

/// Reads the webhook accounts from OpenClaw's `channels` object. Every problem is an issue
/// `(path, message)` and leaves out just the account it concerns; two accounts (of any
/// channel) on one path leave out both, since which one a request is for would be a guess.
///
/// - Slack: an account receives over HTTP with `mode: "http"` (then `signingSecret` is
///   required), or with no `mode` and a `signingSecret` (keel has no Socket Mode yet);
///   `mode: "socket"` or `"relay"` leaves it out silently. Optional `botUserId`.
/// - Feishu: with `connectionMode: "webhook"` (then `verificationToken` is required), or with
///   no `connectionMode` and a `verificationToken`; `"websocket"` leaves it out silently.
///   Optional `encryptKey` and `botOpenId`.
/// - Both: `webhookPath` (default `/slack/events`, `/feishu/events`), a path starting with
///   `/` with an optional query, matched exactly; secrets as the value or `${NAME}`.
pub fn parse(channels: &Value) -> (InboundWebhooks, Vec<(String, String)>) {
    let mut out = InboundWebhooks::default();
    let mut issues = Vec::new();
    let Value::Object(map) = channels else {
        // `channels` that is not an object is reported by the delivery channels' parser.
        return (out, issues);
    };
    let mut paths: Vec<(String, String)> = Vec::new(); // (webhook path, config path)
    if let Some(Value::Object(c)) = map.get("slack") {
        for (at, acc) in accounts(c, "channels.slack", &mut issues) {
            if let Some(a) = slack_account(&acc, &at, &mut issues) {
                paths.push((a.webhook_path.clone(), at));
                out.slack.push(a);
            }
        }
    }
    if let Some(Value::Object(c)) = map.get("feishu") {
        for (at, acc) in accounts(c, "channels.feishu", &mut issues) {
            if let Some(a) = feishu_account(&acc, &at, &mut issues) {
                paths.push((a.webhook_path.clone(), at));
                out.feishu.push(a);
            }
        }
    }
    let mut taken: Vec<&str> = Vec::new();
    for (i, (p, _)) in paths.iter().enumerate() {
        if paths[..i].iter().any(|(q, _)| q == p) && !taken.contains(&p.as_str()) {
            taken.push(p);
        }
    }
    for p in &taken {
        let users: Vec<&str> = paths
            .iter()
            .filter(|(q, _)| q == p)
            .map(|(_, at)| at.as_str())
            .collect();
        for at in &users {
            issues.push((
                format!("{at}.webhookPath"),
                format!(
                    "{p:?} is also the webhook path of {}; give each account its own",
                    users
                        .iter()
                        .filter(|u| *u != at)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    out.slack
        .retain(|a| !taken.contains(&a.webhook_path.as_str()));
    out.feishu
        .retain(|a| !taken.contains(&a.webhook_path.as_str()));
    (out, issues)
}

/// One account's settings: `(config path, the channel's keys overlaid with the account's)`.
/// Without `accounts`, the channel itself is the `default` account.
fn accounts(
    c: &Map<String, Value>,
    path: &str,
    issues: &mut Vec<(String, String)>,
) -> Vec<(String, Map<String, Value>)> {
    if c.get("enabled") == Some(&Value::Bool(false)) {
        return Vec::new();
    }
    let mut base = c.clone();
    base.remove("accounts");
    let list = match c.get("accounts") {
        None | Some(Value::Null) => return vec![(path.to_string(), with_id(base, "default"))],
        Some(Value::Object(list)) if list.is_empty() => {
            return vec![(path.to_string(), with_id(base, "default"))];
        }
        Some(Value::Object(list)) => list,
        Some(_) => {
            issues.push((format!("{path}.accounts"), "expected an object".to_string()));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (id, v) in list {
        let at = format!("{path}.accounts.{id}");
        let Value::Object(acc) = v else {
            issues.push((at, "expected an object".to_string()));
            continue;
        };
        if acc.get("enabled") == Some(&Value::Bool(false)) {
            continue;
        }
        if id.is_empty()
            || id.len() > MAX_ACCOUNT
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            issues.push((
                at,
                format!("account id must be 1-{MAX_ACCOUNT} letters, digits, '_' or '-'"),
            ));
            continue;
        }
        let mut merged = base.clone();
        for (k, v) in acc {
            merged.insert(k.clone(), v.clone());
        }
        out.push((at, with_id(merged, id)));
    }
    out
}

fn with_id(mut m: Map<String, Value>, id: &str) -> Map<String, Value> {
    m.insert("\u{0}id".to_string(), Value::String(id.to_string()));
    m
}

fn id_of(m: &Map<String, Value>) -> String {
    m.get("\u{0}id")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string()
}

fn slack_account(
    c: &Map<String, Value>,
    at: &str,
    issues: &mut Vec<(String, String)>,
) -> Option<SlackWebhook> {
    let before = issues.len();
    let secret = secret(c, "signingSecret", at, issues);
    match c.get("mode") {
        None | Some(Value::Null) if secret.is_none() => return None,
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if m == "http" => {
            if secret.is_none() && issues.len() == before {
                issues.push((
                    format!("{at}.signingSecret"),
                    "missing; mode \"http\" needs the app's Signing Secret".to_string(),
                ));
            }
        }
        Some(Value::String(m)) if m == "socket" || m == "relay" => return None,
        Some(other) => {
            issues.push((
                format!("{at}.mode"),
                format!("expected \"http\", \"socket\" or \"relay\", got {other}"),
            ));
            return None;
        }
    }
    let webhook_path = webhook_path(c, SLACK_DEFAULT_PATH, at, issues);
    let bot_user_id = plain_id(c, "botUserId", at, issues, |s| {
        s.len() >= 2
            && matches!(s.as_bytes()[0], b'U' | b'W' | b'B')
            && s[1..]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    });
    let access = super::inbound::access(c, at, &Access::default(), issues);
    if issues.len() > before {
        return None;
    }
    Some(SlackWebhook {
        account_id: id_of(c),
        signing_secret: secret?,
        webhook_path: webhook_path?,
        bot_user_id,
        access,
    })
}

fn feishu_account(
    c: &Map<String, Value>,
    at: &str,
    issues: &mut Vec<(String, String)>,
) -> Option<FeishuWebhook> {
    let before = issues.len();
    let token = secret(c, "verificationToken", at, issues);
    match c.get("connectionMode") {
        None | Some(Value::Null) if token.is_none() => return None,
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if m == "webhook" => {
            if token.is_none() && issues.len() == before {
                issues.push((
                    format!("{at}.verificationToken"),
                    "missing; connectionMode \"webhook\" needs the app's Verification Token"
                        .to_string(),
                ));
            }
        }
        Some(Value::String(m)) if m == "websocket" => return None,
        Some(other) => {
            issues.push((
                format!("{at}.connectionMode"),
                format!("expected \"webhook\" or \"websocket\", got {other}"),
            ));
            return None;
        }
    }
    let encrypt_key = secret(c, "encryptKey", at, issues);
    let webhook_path = webhook_path(c, FEISHU_DEFAULT_PATH, at, issues);
    let bot_open_id = plain_id(c, "botOpenId", at, issues, |s| {
        s.len() > 3 && s.starts_with("ou_") && s[3..].bytes().all(|b| b.is_ascii_alphanumeric())
    });
    let access = super::inbound::access(c, at, &Access::default(), issues);
    if issues.len() > before {
        return None;
    }
    Some(FeishuWebhook {
        account_id: id_of(c),
        verification_token: token?,
        encrypt_key,
        webhook_path: webhook_path?,
        bot_open_id,
        access,
    })
}

/// A secret: a non-empty string, or `${NAME}` read from the environment.
fn secret(
    c: &Map<String, Value>,
    key: &str,
    at: &str,
    issues: &mut Vec<(String, String)>,
) -> Option<String> {
    let path = format!("{at}.{key}");
    match c.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => resolve_secret(s, &path, issues),
        Some(_) => {
            issues.push((path, "expected a string".to_string()));
            None
        }
    }
}

fn plain_id(
    c: &Map<String, Value>,
    key: &str,
    at: &str,
    issues: &mut Vec<(String, String)>,
    ok: fn(&str) -> bool,
) -> Option<String> {
    match c.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= MAX_ACCOUNT && ok(s) => Some(s.clone()),
        Some(_) => {
            issues.push((
                format!("{at}.{key}"),
                "does not look like the bot's id".to_string(),
            ));
            None
        }
    }
}

fn webhook_path(
    c: &Map<String, Value>,
    default: &str,
    at: &str,
    issues: &mut Vec<(String, String)>,
) -> Option<String> {
    let p = match c.get("webhookPath") {
        None | Some(Value::Null) => return Some(default.to_string()),
        Some(Value::String(p)) => p,
        Some(_) => {
            issues.push((
                format!("{at}.webhookPath"),
                "expected a path like /slack/events".to_string(),
            ));
            return None;
        }
    };
    match path_problem(p) {
        None => Some(p.clone()),
        Some(why) => {
            issues.push((format!("{at}.webhookPath"), why));
            None
        }
    }
}

/// Why `p` is not a canonical request path (with an optional query), if it is not.
fn path_problem(p: &str) -> Option<String> {
    let (path, _query) = p.split_once('?').unwrap_or((p, ""));
    if !path.starts_with('/') || path == "/" {
        return Some("must be a path starting with '/', like /slack/events".to_string());
    }
    if p.len() > MAX_PATH {
        return Some(format!("longer than {MAX_PATH} bytes"));
    }
    if !p.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return Some("spaces, control characters, '#' and non-ASCII must be %-encoded".to_string());
    }
    if path
        .split('/')
        .skip(1)
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Some("empty, '.' and '..' segments are not allowed".to_string());
    }
    if RESERVED
        .iter()
        .any(|r| path == *r || path.starts_with(&format!("{r}/")))
    {
        return Some("is a path keel serves itself".to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(v: Value) -> (InboundWebhooks, Vec<(String, String)>) {
        parse(&v)
    }

    #[test]
    fn one_account_per_channel_with_openclaw_defaults() {
        let (w, issues) = parsed(json!({
            "slack": {"mode": "http", "botToken": "xoxb-1", "signingSecret": "sig-secret"},
            "feishu": {"connectionMode": "webhook", "appId": "cli_1", "appSecret": "s",
                "verificationToken": "vtok", "encryptKey": "ekey", "botOpenId": "ou_abc123"},
        }));
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(w.slack.len(), 1);
        let s = &w.slack[0];
        assert_eq!(s.account_id, "default");
        assert_eq!(s.webhook_path, "/slack/events");
        assert_eq!(s.signing_secret, "sig-secret");
        assert_eq!(s.bot_user_id, None);
        let f = &w.feishu[0];
        assert_eq!(f.webhook_path, "/feishu/events");
        assert_eq!(f.encrypt_key.as_deref(), Some("ekey"));
        assert_eq!(f.bot_open_id.as_deref(), Some("ou_abc123"));
        assert!(
            matches!(w.route("/slack/events"), Some(Route::Slack(a)) if a.account_id == "default")
        );
        assert!(matches!(w.route("/feishu/events"), Some(Route::Feishu(_))));
        assert_eq!(w.route("/slack/events/"), None);
        let shown = format!("{w:?}");
        for secret in ["sig-secret", "vtok", "ekey"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let mut secrets = w.secrets();
        secrets.sort();
        assert_eq!(secrets, ["ekey", "sig-secret", "vtok"]);
    }

    #[test]
    fn socket_and_websocket_modes_are_not_webhooks() {
        let (w, issues) = parsed(json!({
            "slack": {"botToken": "xoxb", "appToken": "xapp"},
            "feishu": {"appId": "a", "appSecret": "b"},
        }));
        assert!(w.is_empty() && issues.is_empty());
        let (w, issues) = parsed(json!({
            "slack": {"mode": "socket", "signingSecret": "s"},
            "feishu": {"connectionMode": "websocket", "verificationToken": "t"},
        }));
        assert!(w.is_empty() && issues.is_empty());
    }

    #[test]
    fn http_mode_without_its_secret_is_an_issue() {
        let (w, issues) = parsed(json!({
            "slack": {"mode": "http"},
            "feishu": {"connectionMode": "webhook", "encryptKey": "k"},
        }));
        assert!(w.is_empty());
        let paths: Vec<&str> = issues.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "channels.slack.signingSecret",
                "channels.feishu.verificationToken"
            ]
        );
        let (_, issues) = parsed(json!({"slack": {"mode": "carrier-pigeon"}}));
        assert_eq!(issues[0].0, "channels.slack.mode");
    }

    #[test]
    fn accounts_inherit_the_channel_keys() {
        let (w, issues) = parsed(json!({"slack": {
            "mode": "http", "signingSecret": "shared",
            "accounts": {
                "work": {"webhookPath": "/slack/work", "botUserId": "U0BOT"},
                "home": {"webhookPath": "/slack/home", "signingSecret": "own"},
                "off": {"enabled": false},
            }
        }}));
        assert!(issues.is_empty(), "{issues:?}");
        let by_id = |id: &str| w.slack.iter().find(|a| a.account_id == id).unwrap();
        assert_eq!(w.slack.len(), 2);
        assert_eq!(by_id("work").signing_secret, "shared");
        assert_eq!(by_id("work").bot_user_id.as_deref(), Some("U0BOT"));
        assert_eq!(by_id("home").signing_secret, "own");
        assert!(matches!(w.route("/slack/home"), Some(Route::Slack(a)) if a.account_id == "home"));
    }

    #[test]
    fn two_accounts_on_one_path_are_both_left_out() {
        // Two Slack accounts both on the default path, and a Feishu account on a Slack path.
        let (w, issues) = parsed(json!({
            "slack": {"signingSecret": "s", "accounts": {"a": {}, "b": {}, "c": {"webhookPath": "/hooks-in"}}},
            "feishu": {"verificationToken": "t", "webhookPath": "/hooks-in"},
        }));
        assert!(w.slack.is_empty() && w.feishu.is_empty(), "{w:?}");
        let paths: Vec<&str> = issues.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths.len(), 4, "{issues:?}");
        assert!(paths.contains(&"channels.slack.accounts.a.webhookPath"));
        assert!(paths.contains(&"channels.feishu.webhookPath"));
        assert!(issues[0].1.contains("give each account its own"));
    }

    #[test]
    fn bad_paths_and_ids_are_issues() {
        for p in [
            "slack/events",
            "/",
            "/a//b",
            "/a/../b",
            "/a b",
            "/ü",
            "/a#f",
            "/healthz",
            "/api/x",
        ] {
            let (w, issues) = parsed(json!({"slack": {"signingSecret": "s", "webhookPath": p}}));
            assert!(w.is_empty(), "{p}");
            assert_eq!(issues[0].0, "channels.slack.webhookPath", "{p}");
        }
        let (w, _) =
            parsed(json!({"slack": {"signingSecret": "s", "webhookPath": "/in/slack?team=1"}}));
        assert_eq!(w.slack[0].webhook_path, "/in/slack?team=1");
        let (w, issues) = parsed(json!({"slack": {"signingSecret": "s", "botUserId": "<@U1>"}}));
        assert!(w.is_empty());
        assert_eq!(issues[0].0, "channels.slack.botUserId");
        let (_, issues) =
            parsed(json!({"feishu": {"verificationToken": "t", "accounts": {"a b": {}}}}));
        assert_eq!(issues[0].0, "channels.feishu.accounts.a b");
        let (_, issues) = parsed(json!({"feishu": {"verificationToken": 5}}));
        assert_eq!(issues[0].0, "channels.feishu.verificationToken");
    }

    #[test]
    fn secrets_come_from_the_environment() {
        let (_, issues) =
            parsed(json!({"slack": {"signingSecret": "${KEEL_TEST_UNSET_SLACK_SIG}"}}));
        assert_eq!(issues[0].0, "channels.slack.signingSecret");
        assert!(issues[0].1.contains("KEEL_TEST_UNSET_SLACK_SIG"));
    }
}
