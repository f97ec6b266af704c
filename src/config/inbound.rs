//! Inbound chat channels as configured: who may talk to the agent on each account
//! (`dmPolicy`, `allowFrom`, `groupPolicy`, `groupAllowFrom`, `groups`), the Telegram
//! accounts keel polls (`channels.telegram.botToken` / `tokenFile`, `accounts.<id>`), the
//! top-level `bindings` that choose an agent, and `session.dmScope`. OpenClaw's keys and
//! defaults (docs/channels/telegram.md, pairing.md, channel-routing.md).
//!
//! Invariants:
//! - A bot token is never printed (`Debug` shows its account only) and is in
//!   `Config::secrets`, so what keel shows of itself is scrubbed of it.
//! - One poller per bot token: two accounts with one token are a config error, and neither
//!   polls (Telegram answers a second poller `409 Conflict`, and both would lose updates).
//! - `receive: false` (keel's own key) leaves an account send-only: nothing polls it.
//! - `dmPolicy: "open"` needs `"*"` in `allowFrom`, and `"allowlist"` at least one entry, as
//!   OpenClaw requires; either mistake disables that account rather than opening it.

use crate::ids::AgentId;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The long-poll timeout Telegram is asked for, unless `pollTimeoutSeconds` says otherwise.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest long poll keel asks for (Telegram's own cap is 50 s).
pub const MAX_POLL_TIMEOUT: Duration = Duration::from_secs(50);

/// Who may send a direct message (`dmPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmPolicy {
    /// Senders in `allowFrom` and approved senders; an unknown one gets a pairing code.
    Pairing,
    /// Only senders in `allowFrom`.
    Allowlist,
    /// Anyone (`allowFrom` must hold `"*"`).
    Open,
    /// Nobody.
    Disabled,
}

impl DmPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DmPolicy::Pairing => "pairing",
            DmPolicy::Allowlist => "allowlist",
            DmPolicy::Open => "open",
            DmPolicy::Disabled => "disabled",
        }
    }

    fn parse(s: &str) -> Option<DmPolicy> {
        [
            DmPolicy::Pairing,
            DmPolicy::Allowlist,
            DmPolicy::Open,
            DmPolicy::Disabled,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// Who may talk in an allowed group (`groupPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupPolicy {
    /// Any member.
    Open,
    /// Senders in `groupAllowFrom` (else `allowFrom`); never DM pairing approvals.
    Allowlist,
    Disabled,
}

impl GroupPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupPolicy::Open => "open",
            GroupPolicy::Allowlist => "allowlist",
            GroupPolicy::Disabled => "disabled",
        }
    }

    fn parse(s: &str) -> Option<GroupPolicy> {
        [
            GroupPolicy::Open,
            GroupPolicy::Allowlist,
            GroupPolicy::Disabled,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// One entry of `groups`: a group (or `"*"`) that may talk, and how.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupRule {
    /// `requireMention` (default true): only messages that mention the bot (or reply to it).
    pub require_mention: Option<bool>,
    /// `groupPolicy` for this group, overriding the account's.
    pub group_policy: Option<GroupPolicy>,
}

/// An account's access rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub dm_policy: DmPolicy,
    /// Sender ids (normalized: no `telegram:`/`tg:` prefix), or `"*"`.
    pub allow_from: BTreeSet<String>,
    pub group_policy: GroupPolicy,
    /// `groupAllowFrom`; unset falls back to `allowFrom`.
    pub group_allow_from: Option<BTreeSet<String>>,
    /// `groups`: unset means no group passes unless `groupPolicy` is `open`.
    pub groups: Option<BTreeMap<String, GroupRule>>,
}

impl Default for Access {
    fn default() -> Access {
        Access {
            dm_policy: DmPolicy::Pairing,
            allow_from: BTreeSet::new(),
            group_policy: GroupPolicy::Allowlist,
            group_allow_from: None,
            groups: None,
        }
    }
}

/// One Telegram bot keel receives messages for.
#[derive(Clone, PartialEq, Eq)]
pub struct TelegramAccount {
    /// `default` for the channel's own `botToken`, else the key under `accounts`.
    pub id: String,
    pub bot_token: String,
    /// The Bot API root (`apiRoot`, else `baseUrl`, else Telegram's), without a trailing `/`.
    pub base_url: String,
    /// How long one `getUpdates` long poll may wait for updates.
    pub poll_timeout: Duration,
    /// `webhookUrl` is set: Telegram pushes updates to keel's own port, nothing polls.
    pub webhook: Option<TelegramWebhook>,
    /// `receive: false` (keel's own key): a send-only account, used for replies only.
    pub receive: bool,
    pub access: Access,
}

/// Webhook mode of one Telegram account (`webhookUrl`, `webhookSecret`, `webhookPath`).
/// keel serves the path on its own HTTP port; `webhookHost`/`webhookPort` (OpenClaw's own
/// listener) are not used: a reverse proxy maps `webhookUrl` to keel's port.
#[derive(Clone, PartialEq, Eq)]
pub struct TelegramWebhook {
    /// The public URL Telegram posts to (given to `setWebhook`).
    pub url: String,
    /// `secret_token` of `setWebhook`, checked against `X-Telegram-Bot-Api-Secret-Token`.
    pub secret: String,
    /// The path keel serves (`webhookPath`, default [`DEFAULT_WEBHOOK_PATH`]).
    pub path: String,
}

/// OpenClaw's default `webhookPath`.
pub const DEFAULT_WEBHOOK_PATH: &str = "/telegram-webhook";

impl fmt::Debug for TelegramAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelegramAccount")
            .field("id", &self.id)
            .field("base_url", &self.base_url)
            .field("bot_token", &"<redacted>")
            .field("poll_timeout", &self.poll_timeout)
            .field("webhook", &self.webhook.as_ref().map(|w| &w.path))
            .field("receive", &self.receive)
            .field("access", &self.access)
            .finish()
    }
}

/// How direct messages are grouped into sessions (`session.dmScope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DmScope {
    /// Every DM in the agent's main session.
    #[default]
    Main,
    PerPeer,
    PerChannelPeer,
    PerAccountChannelPeer,
}

impl DmScope {
    fn parse(s: &str) -> Option<DmScope> {
        match s {
            "main" => Some(DmScope::Main),
            "per-peer" => Some(DmScope::PerPeer),
            "per-channel-peer" => Some(DmScope::PerChannelPeer),
            "per-account-channel-peer" => Some(DmScope::PerAccountChannelPeer),
            _ => None,
        }
    }
}

/// One top-level `bindings[]` entry: messages that match go to `agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub agent: AgentId,
    pub channel: String,
    /// `match.accountId`: `None` or `"*"` match any account.
    pub account_id: Option<String>,
    /// `match.peer`: (kind `direct`|`group`|`channel`, id or `"*"`).
    pub peer: Option<(String, String)>,
}

/// Everything inbound, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InboundConfig {
    pub telegram: Vec<TelegramAccount>,
    pub bindings: Vec<Binding>,
    pub dm_scope: DmScope,
}

impl InboundConfig {
    pub fn telegram_account(&self, id: &str) -> Option<&TelegramAccount> {
        self.telegram.iter().find(|a| a.id == id)
    }

    /// The Telegram account in webhook mode whose `webhookPath` is `path` (a query ignored).
    pub fn telegram_webhook(&self, path: &str) -> Option<&TelegramAccount> {
        let path = path.split('?').next().unwrap_or(path);
        self.telegram
            .iter()
            .find(|a| a.receive && a.webhook.as_ref().is_some_and(|w| w.path == path))
    }

    /// The access rules of `channel`'s account `account`, if keel receives on it.
    pub fn access(&self, channel: &str, account: &str) -> Option<&Access> {
        match channel {
            "telegram" => self
                .telegram_account(account)
                .filter(|a| a.receive)
                .map(|a| &a.access),
            _ => None,
        }
    }
}

type Issues = Vec<(String, String)>;

/// Reads the inbound parts of the config root. Every problem is an issue `(path, message)`;
/// an account with one is left out (it does not poll), the rest keep working.
pub fn parse(root: &Map<String, Value>, config_dir: Option<&Path>) -> (InboundConfig, Issues) {
    let mut issues = Vec::new();
    let mut out = InboundConfig::default();
    if let Some(s) = root.get("session") {
        match s.get("dmScope") {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_str().and_then(DmScope::parse) {
                Some(d) => out.dm_scope = d,
                None => issues.push((
                    "session.dmScope".into(),
                    format!(
                        "expected main, per-peer, per-channel-peer or per-account-channel-peer, got {v}"
                    ),
                )),
            },
        }
    }
    if let Some(b) = root.get("bindings") {
        out.bindings = bindings(b, &mut issues);
    }
    if let Some(Value::Object(tg)) = root.get("channels").and_then(|c| c.get("telegram"))
        && tg.get("enabled") != Some(&Value::Bool(false))
    {
        out.telegram = telegram(tg, config_dir, &mut issues);
    }
    (out, issues)
}

fn bindings(v: &Value, issues: &mut Issues) -> Vec<Binding> {
    let Some(list) = v.as_array() else {
        issues.push(("bindings".into(), "expected an array".into()));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, b) in list.iter().enumerate() {
        let path = format!("bindings[{i}]");
        // ACP bindings (`type: "acp"`) bind conversations to coding sessions: not keel's.
        if b.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "route")
        {
            continue;
        }
        let agent = match b
            .get("agentId")
            .and_then(Value::as_str)
            .map(AgentId::normalize)
        {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                issues.push((format!("{path}.agentId"), e.to_string()));
                continue;
            }
            None => {
                issues.push((format!("{path}.agentId"), "missing".into()));
                continue;
            }
        };
        let m = b.get("match");
        let Some(channel) = m.and_then(|m| m.get("channel")).and_then(Value::as_str) else {
            issues.push((format!("{path}.match.channel"), "missing".into()));
            continue;
        };
        let account_id = m
            .and_then(|m| m.get("accountId"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let peer = match m.and_then(|m| m.get("peer")) {
            None | Some(Value::Null) => None,
            Some(p) => {
                let kind = p.get("kind").and_then(Value::as_str);
                let id = p.get("id").and_then(id_text);
                match (kind, id) {
                    (Some(k @ ("direct" | "group" | "channel")), Some(id)) => {
                        Some((k.to_string(), id))
                    }
                    (Some("dm"), Some(id)) => Some(("direct".to_string(), id)),
                    _ => {
                        issues.push((
                            format!("{path}.match.peer"),
                            "expected {kind: direct|group|channel, id}".into(),
                        ));
                        continue;
                    }
                }
            }
        };
        out.push(Binding {
            agent,
            channel: channel.to_string(),
            account_id,
            peer,
        });
    }
    out
}

/// An id given as a string or a number (Telegram ids are numbers in JSON).
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A sender id as `allowFrom` holds it: `telegram:`/`tg:` prefixes dropped.
pub fn normalize_sender(s: &str) -> String {
    let s = s.trim();
    for p in ["telegram:", "tg:"] {
        if let Some(rest) = s
            .get(..p.len())
            .filter(|h| h.eq_ignore_ascii_case(p))
            .map(|_| &s[p.len()..])
        {
            return rest.trim().to_string();
        }
    }
    s.to_string()
}

fn id_list(v: &Value, path: &str, issues: &mut Issues) -> Option<BTreeSet<String>> {
    match v {
        Value::Null => None,
        Value::Array(a) => {
            let mut out = BTreeSet::new();
            for (i, x) in a.iter().enumerate() {
                match id_text(x) {
                    Some(s) => {
                        out.insert(normalize_sender(&s));
                    }
                    None => issues.push((format!("{path}[{i}]"), "expected an id".into())),
                }
            }
            Some(out)
        }
        _ => {
            issues.push((path.to_string(), "expected an array of ids".into()));
            None
        }
    }
}

/// The access keys of one scope (`channels.telegram` or one of its `accounts`), over
/// `base` (what the account inherits from the channel root).
pub(crate) fn access(
    c: &Map<String, Value>,
    path: &str,
    base: &Access,
    issues: &mut Issues,
) -> Access {
    let mut a = base.clone();
    if let Some(v) = c.get("dmPolicy").filter(|v| !v.is_null()) {
        match v.as_str().and_then(DmPolicy::parse) {
            Some(p) => a.dm_policy = p,
            None => issues.push((
                format!("{path}.dmPolicy"),
                format!("expected pairing, allowlist, open or disabled, got {v}"),
            )),
        }
    }
    if let Some(v) = c.get("allowFrom")
        && let Some(list) = id_list(v, &format!("{path}.allowFrom"), issues)
    {
        a.allow_from = list;
    }
    if let Some(v) = c.get("groupPolicy").filter(|v| !v.is_null()) {
        match v.as_str().and_then(GroupPolicy::parse) {
            Some(p) => a.group_policy = p,
            None => issues.push((
                format!("{path}.groupPolicy"),
                format!("expected open, allowlist or disabled, got {v}"),
            )),
        }
    }
    if let Some(v) = c.get("groupAllowFrom")
        && let Some(list) = id_list(v, &format!("{path}.groupAllowFrom"), issues)
    {
        a.group_allow_from = Some(list);
    }
    match c.get("groups") {
        None | Some(Value::Null) => {}
        Some(Value::Object(g)) => {
            let mut groups = BTreeMap::new();
            for (id, rule) in g {
                let mut r = GroupRule::default();
                if let Some(m) = rule.get("requireMention") {
                    match m.as_bool() {
                        Some(b) => r.require_mention = Some(b),
                        None => issues.push((
                            format!("{path}.groups.{id}.requireMention"),
                            "expected true or false".into(),
                        )),
                    }
                }
                if let Some(p) = rule.get("groupPolicy") {
                    match p.as_str().and_then(GroupPolicy::parse) {
                        Some(p) => r.group_policy = Some(p),
                        None => issues.push((
                            format!("{path}.groups.{id}.groupPolicy"),
                            "expected open, allowlist or disabled".into(),
                        )),
                    }
                }
                groups.insert(id.trim().to_string(), r);
            }
            a.groups = Some(groups);
        }
        Some(_) => issues.push((format!("{path}.groups"), "expected an object".into())),
    }
    match a.dm_policy {
        DmPolicy::Open if !a.allow_from.contains("*") => issues.push((
            format!("{path}.dmPolicy"),
            "\"open\" needs \"*\" in allowFrom (anyone who finds the bot could use the agent \
             and its tools); add it to mean that, or use \"pairing\""
                .into(),
        )),
        DmPolicy::Allowlist if a.allow_from.is_empty() => issues.push((
            format!("{path}.dmPolicy"),
            "\"allowlist\" with an empty allowFrom blocks every direct message; list the \
             sender ids"
                .into(),
        )),
        _ => {}
    }
    a
}

/// A token from `botToken` (the value or `${ENV}`) or `tokenFile` (a regular file, not a
/// link).
fn token(
    c: &Map<String, Value>,
    path: &str,
    config_dir: Option<&Path>,
    issues: &mut Issues,
) -> Option<String> {
    if let Some(v) = c.get("botToken").and_then(Value::as_str) {
        let t = match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            Some(name) => match std::env::var(name) {
                Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
                _ => {
                    issues.push((
                        format!("{path}.botToken"),
                        format!("environment variable {name} is not set"),
                    ));
                    return None;
                }
            },
            None => v.trim().to_string(),
        };
        return (!t.is_empty()).then_some(t);
    }
    let file = c.get("tokenFile").and_then(Value::as_str)?;
    let p = Path::new(file);
    let p = match (p.is_relative(), config_dir) {
        (true, Some(d)) => d.join(p),
        _ => p.to_path_buf(),
    };
    let at = format!("{path}.tokenFile");
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.file_type().is_file() && m.len() <= 4096 => {}
        Ok(_) => {
            issues.push((
                at,
                "must be a regular file (not a link) of at most 4 KiB".into(),
            ));
            return None;
        }
        Err(e) => {
            issues.push((at, format!("cannot read it: {}", e.kind())));
            return None;
        }
    }
    match std::fs::read_to_string(&p) {
        Ok(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Ok(_) => {
            issues.push((at, "is empty".into()));
            None
        }
        Err(e) => {
            issues.push((at, format!("cannot read it: {}", e.kind())));
            None
        }
    }
}

fn account(
    id: &str,
    c: &Map<String, Value>,
    path: &str,
    root: &Map<String, Value>,
    base: &Access,
    config_dir: Option<&Path>,
    issues: &mut Issues,
) -> Option<TelegramAccount> {
    let before = issues.len();
    let bot_token = token(c, path, config_dir, issues);
    if bot_token.as_ref().is_some_and(|t| {
        !t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
    }) {
        issues.push((
            format!("{path}.botToken"),
            "does not look like a Telegram bot token".into(),
        ));
    }
    let access = access(c, path, base, issues);
    let get = |k: &str| c.get(k).or_else(|| root.get(k)).filter(|v| !v.is_null());
    let base_url = match get("apiRoot").or_else(|| get("baseUrl")) {
        None => "https://api.telegram.org".to_string(),
        Some(Value::String(u)) => match crate::url::Url::parse(u) {
            Ok(_) => u.trim().trim_end_matches('/').to_string(),
            Err(_) => {
                issues.push((format!("{path}.apiRoot"), "expected an http(s) URL".into()));
                String::new()
            }
        },
        Some(_) => {
            issues.push((format!("{path}.apiRoot"), "expected an http(s) URL".into()));
            String::new()
        }
    };
    let poll_timeout = match get("pollTimeoutSeconds") {
        None => DEFAULT_POLL_TIMEOUT,
        Some(v) => match v.as_u64() {
            Some(s) if Duration::from_secs(s) <= MAX_POLL_TIMEOUT => Duration::from_secs(s),
            _ => {
                issues.push((
                    format!("{path}.pollTimeoutSeconds"),
                    format!(
                        "expected whole seconds from 0 to {}",
                        MAX_POLL_TIMEOUT.as_secs()
                    ),
                ));
                DEFAULT_POLL_TIMEOUT
            }
        },
    };
    // keel's own key: `receive: false` makes a send-only account (replies and `send` only),
    // e.g. while another program still polls this bot during a migration.
    let receive = get("receive") != Some(&Value::Bool(false));
    let webhook = match get("webhookUrl").and_then(Value::as_str).map(str::trim) {
        Some(u) if receive && !u.is_empty() => webhook(u, path, &get, issues),
        _ => None,
    };
    if issues.len() > before {
        return None;
    }
    Some(TelegramAccount {
        id: id.to_string(),
        bot_token: bot_token?,
        base_url,
        poll_timeout,
        webhook,
        receive,
        access,
    })
}

/// The webhook keys of an account whose `webhookUrl` is `url`.
fn webhook<'a>(
    url: &str,
    path: &str,
    get: &dyn Fn(&str) -> Option<&'a Value>,
    issues: &mut Issues,
) -> Option<TelegramWebhook> {
    if crate::url::Url::parse(url).is_err() {
        issues.push((
            format!("{path}.webhookUrl"),
            "expected an http(s) URL".into(),
        ));
        return None;
    }
    let secret = match get("webhookSecret").and_then(Value::as_str).map(str::trim) {
        Some(s) if !s.is_empty() => {
            let mut v = Vec::new();
            match super::channels::resolve_secret(s, &format!("{path}.webhookSecret"), &mut v) {
                Some(s) if valid_secret(&s) => s,
                Some(_) => {
                    issues.push((
                        format!("{path}.webhookSecret"),
                        "expected 1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's \
                         secret_token)"
                            .into(),
                    ));
                    return None;
                }
                None => {
                    issues.extend(v);
                    return None;
                }
            }
        }
        _ => {
            issues.push((
                format!("{path}.webhookSecret"),
                "missing; webhook mode needs a secret, or anyone who finds the URL could post \
                 updates"
                    .into(),
            ));
            return None;
        }
    };
    let hook_path = match get("webhookPath") {
        None => DEFAULT_WEBHOOK_PATH.to_string(),
        Some(Value::String(p)) if valid_path(p.trim()) => p.trim().to_string(),
        Some(_) => {
            issues.push((
                format!("{path}.webhookPath"),
                "expected a path like /telegram-webhook (not /healthz, /readyz, /metrics or \
                 /api/...)"
                    .into(),
            ));
            return None;
        }
    };
    Some(TelegramWebhook {
        url: url.to_string(),
        secret,
        path: hook_path,
    })
}

/// Telegram's `secret_token`: 1-256 characters `A-Z a-z 0-9 _ -`.
fn valid_secret(s: &str) -> bool {
    (1..=256).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A webhook path keel can serve: absolute, plain, and none of its own routes.
fn valid_path(p: &str) -> bool {
    p.len() > 1
        && p.len() <= 200
        && p.starts_with('/')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        && !matches!(p, "/healthz" | "/livez" | "/readyz" | "/metrics")
        && !p.starts_with("/api/")
}

fn telegram(
    tg: &Map<String, Value>,
    config_dir: Option<&Path>,
    issues: &mut Issues,
) -> Vec<TelegramAccount> {
    let path = "channels.telegram";
    let mut root_issues = Vec::new();
    let base = access(tg, path, &Access::default(), &mut root_issues);
    let root_ok = root_issues.is_empty();
    issues.extend(root_issues);
    let mut out = Vec::new();
    let has_token = tg.get("botToken").is_some() || tg.get("tokenFile").is_some();
    if has_token && root_ok {
        out.extend(account(
            "default",
            tg,
            path,
            tg,
            &Access::default(),
            config_dir,
            issues,
        ));
    }
    match tg.get("accounts") {
        None | Some(Value::Null) => {}
        Some(Value::Object(accounts)) => {
            for (id, a) in accounts {
                let at = format!("{path}.accounts.{id}");
                let Value::Object(a) = a else {
                    issues.push((at, "expected an object".into()));
                    continue;
                };
                if a.get("enabled") == Some(&Value::Bool(false)) || !root_ok {
                    continue;
                }
                if id == "default" && out.iter().any(|x: &TelegramAccount| x.id == "default") {
                    issues.push((
                        at,
                        "the channel's own botToken is already the default account".into(),
                    ));
                    continue;
                }
                if let Some(acc) = account(id, a, &at, tg, &base, config_dir, issues) {
                    out.push(acc);
                }
            }
        }
        Some(_) => issues.push((format!("{path}.accounts"), "expected an object".into())),
    }
    // One poller per token: every account sharing a token is refused.
    let mut by_token: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut by_path: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for a in out.iter().filter(|a| a.receive) {
        by_token.entry(&a.bot_token).or_default().push(&a.id);
        if let Some(w) = &a.webhook {
            by_path.entry(&w.path).or_default().push(&a.id);
        }
    }
    for ids in by_path.values().filter(|ids| ids.len() > 1) {
        issues.push((
            format!("{path}.accounts"),
            format!(
                "accounts {} use the same webhookPath; give each its own, so an update is \
                 read with its own bot's secret",
                ids.join(", ")
            ),
        ));
    }
    let shared_path: BTreeSet<String> = by_path
        .values()
        .filter(|ids| ids.len() > 1)
        .flatten()
        .map(|s| s.to_string())
        .collect();
    let shared: BTreeSet<String> = by_token
        .values()
        .filter(|ids| ids.len() > 1)
        .flat_map(|ids| {
            issues.push((
                format!("{path}.accounts"),
                format!(
                    "accounts {} use the same bot token; Telegram lets one poller per token \
                     (a second gets 409 Conflict), so none of them is polled",
                    ids.join(", ")
                ),
            ));
            ids.iter().map(|s| s.to_string())
        })
        .collect();
    out.retain(|a| !shared.contains(&a.id) && !shared_path.contains(&a.id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(v: Value) -> (InboundConfig, Issues) {
        parse(v.as_object().unwrap(), None)
    }

    #[test]
    fn a_token_makes_the_default_account_with_openclaw_defaults() {
        let (c, issues) = parsed(json!({"channels": {"telegram": {"botToken": "1:a"}}}));
        assert!(issues.is_empty(), "{issues:?}");
        let a = &c.telegram[0];
        assert_eq!(a.id, "default");
        assert_eq!(a.access.dm_policy, DmPolicy::Pairing);
        assert_eq!(a.access.group_policy, GroupPolicy::Allowlist);
        assert_eq!(a.poll_timeout, DEFAULT_POLL_TIMEOUT);
        assert!(a.webhook.is_none() && a.receive);
        assert!(
            !format!("{a:?}").contains("1:a"),
            "the token is never printed"
        );
    }

    #[test]
    fn two_accounts_with_one_token_are_refused() {
        let (c, issues) = parsed(json!({"channels": {"telegram": {"botToken": "1:a",
            "accounts": {"ops": {"botToken": "1:a"}, "other": {"botToken": "2:b"}}}}}));
        assert_eq!(c.telegram.len(), 1);
        assert_eq!(c.telegram[0].id, "other");
        assert!(issues[0].1.contains("same bot token"), "{issues:?}");
    }

    #[test]
    fn open_needs_a_wildcard_and_allowlist_needs_ids() {
        let (c, issues) =
            parsed(json!({"channels": {"telegram": {"botToken": "1:a", "dmPolicy": "open"}}}));
        assert!(c.telegram.is_empty());
        assert!(issues[0].1.contains("\"*\""), "{issues:?}");
        let (c, _) = parsed(json!({"channels": {"telegram": {"botToken": "1:a",
            "dmPolicy": "open", "allowFrom": ["*"]}}}));
        assert_eq!(c.telegram[0].access.dm_policy, DmPolicy::Open);
        let (c, issues) =
            parsed(json!({"channels": {"telegram": {"botToken": "1:a", "dmPolicy": "allowlist"}}}));
        assert!(c.telegram.is_empty() && !issues.is_empty());
    }

    #[test]
    fn accounts_inherit_the_root_policy_and_ids_are_normalized() {
        let (c, issues) = parsed(json!({"channels": {"telegram": {
            "allowFrom": ["tg:42", 7], "dmPolicy": "allowlist",
            "accounts": {"ops": {"botToken": "3:c", "webhookUrl": "https://x/y",
                                 "webhookSecret": "s3cret"}}}},
            "session": {"dmScope": "per-channel-peer"},
            "bindings": [{"agentId": "Ops", "match": {"channel": "telegram", "accountId": "ops",
                          "peer": {"kind": "group", "id": -100}}}]}));
        assert!(issues.is_empty(), "{issues:?}");
        let a = c.telegram_account("ops").unwrap();
        assert_eq!(a.access.dm_policy, DmPolicy::Allowlist);
        assert!(a.access.allow_from.contains("42") && a.access.allow_from.contains("7"));
        let w = a.webhook.as_ref().unwrap();
        assert_eq!(
            (w.secret.as_str(), w.path.as_str()),
            ("s3cret", DEFAULT_WEBHOOK_PATH)
        );
        assert_eq!(
            c.telegram_webhook("/telegram-webhook?x=1").unwrap().id,
            "ops"
        );
        assert_eq!(c.dm_scope, DmScope::PerChannelPeer);
        assert_eq!(c.bindings[0].agent.as_str(), "ops");
        assert_eq!(c.bindings[0].peer, Some(("group".into(), "-100".into())));
    }

    #[test]
    fn webhook_mode_needs_a_secret_and_a_path_of_its_own() {
        let (c, issues) = parsed(json!({"channels": {"telegram": {"botToken": "1:a",
            "webhookUrl": "https://x/hook"}}}));
        assert!(c.telegram.is_empty() && issues[0].0.ends_with("webhookSecret"));
        let (c, issues) = parsed(json!({"channels": {"telegram": {"botToken": "1:a",
            "webhookUrl": "https://x/hook", "webhookSecret": "s", "webhookPath": "/healthz"}}}));
        assert!(c.telegram.is_empty() && issues[0].0.ends_with("webhookPath"));
        let (c, issues) = parsed(json!({"channels": {"telegram": {"webhookSecret": "s",
            "webhookUrl": "https://x/hook", "accounts": {"a": {"botToken": "1:a"},
            "b": {"botToken": "2:b"}, "c": {"botToken": "3:c", "receive": false}}}}}));
        assert!(issues[0].1.contains("same webhookPath"), "{issues:?}");
        assert_eq!(c.telegram.len(), 1, "only the send-only account is left");
        assert!(!c.telegram[0].receive && c.telegram[0].webhook.is_none());
        assert!(c.access("telegram", "c").is_none());
    }

    #[test]
    fn a_token_file_must_be_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "5:e\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("tok"), dir.path().join("link")).unwrap();
        let root = json!({"channels": {"telegram": {"tokenFile": "tok"}}});
        let (c, issues) = parse(root.as_object().unwrap(), Some(dir.path()));
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(c.telegram[0].bot_token, "5:e");
        let root = json!({"channels": {"telegram": {"tokenFile": "link"}}});
        let (c, issues) = parse(root.as_object().unwrap(), Some(dir.path()));
        assert!(c.telegram.is_empty() && issues[0].1.contains("regular file"));
    }
}
