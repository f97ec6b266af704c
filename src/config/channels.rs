//! Chat channels as configured: OpenClaw's `channels.<channel>` keys read into one
//! [`ChannelConfig`] per channel — its [`Kind`], base URL and [`Credentials`] (one shape per
//! kind, never printed) — and the address each kind accepts ([`validate_address`]), checked
//! before anything is queued. Sending is `delivery::channels`'.

use crate::sync::lock;
use crate::url::{Scheme, Url};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The channels keel can send to, as OpenClaw's config names them.
pub const CHANNELS: &[&str] = &[
    "telegram",
    "slack",
    "discord",
    "feishu",
    "openclaw-weixin",
    "webhook",
];
/// A kind of channel keel can send to; [`CHANNELS`] names them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Telegram,
    Slack,
    Discord,
    Feishu,
    /// `openclaw-weixin`: OpenClaw's WeChat relay.
    Weixin,
    Webhook,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Telegram,
        Kind::Slack,
        Kind::Discord,
        Kind::Feishu,
        Kind::Weixin,
        Kind::Webhook,
    ];

    /// The kind a config key or route names, if keel supports it.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "telegram" => Some(Kind::Telegram),
            "slack" => Some(Kind::Slack),
            "discord" => Some(Kind::Discord),
            "feishu" => Some(Kind::Feishu),
            "openclaw-weixin" => Some(Kind::Weixin),
            "webhook" => Some(Kind::Webhook),
            _ => None,
        }
    }

    /// The name OpenClaw's config and routes use.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Telegram => "telegram",
            Kind::Slack => "slack",
            Kind::Discord => "discord",
            Kind::Feishu => "feishu",
            Kind::Weixin => "openclaw-weixin",
            Kind::Webhook => "webhook",
        }
    }

    /// The public API's address; `None` where the operator must name one.
    fn default_base(self) -> Option<&'static str> {
        match self {
            Kind::Telegram => Some("https://api.telegram.org"),
            Kind::Slack => Some("https://slack.com/api"),
            Kind::Discord => Some("https://discord.com/api/v10"),
            Kind::Feishu => Some("https://open.feishu.cn"),
            Kind::Weixin | Kind::Webhook => None,
        }
    }

    /// Whether the receiver drops a second copy of a message by the key keel sends with it
    /// (the webhook's `idempotencyKey`, Discord's `nonce` with `enforce_nonce`, Feishu's
    /// `uuid`), so that a message that may have left before a crash can be sent again safely.
    /// Telegram, Slack and the WeChat relay have no such field.
    pub fn dedupes(self) -> bool {
        matches!(self, Kind::Webhook | Kind::Discord | Kind::Feishu)
    }

    /// The longest message the platform takes, in UTF-16 units; `None`: no limit keel knows.
    pub fn max_text(self) -> Option<usize> {
        match self {
            Kind::Telegram => Some(4096),
            Kind::Discord => Some(2000),
            // Slack truncates past 40,000 characters.
            Kind::Slack => Some(40_000),
            // Feishu takes a request of up to 150 KB: room for any text escaped as JSON twice.
            Kind::Feishu => Some(30_000),
            Kind::Weixin | Kind::Webhook => None,
        }
    }

    /// Where a long reply is split without `textChunkLimit`: the platform's limit, or for
    /// Slack its recommended 4,000 characters per message, and 4,000 for the WeChat relay as
    /// OpenClaw does. A webhook gets the whole text.
    fn default_chunk(self) -> Option<usize> {
        match self {
            Kind::Slack | Kind::Feishu | Kind::Weixin => Some(4000),
            Kind::Telegram | Kind::Discord => self.max_text(),
            Kind::Webhook => None,
        }
    }

    /// The config keys that hold credentials (resolved into [`Credentials`] and redacted
    /// everywhere).
    fn credential_keys(self) -> &'static [&'static str] {
        match self {
            Kind::Telegram | Kind::Slack => &["botToken"],
            Kind::Discord | Kind::Weixin => &["token"],
            Kind::Feishu => &["appId", "appSecret", "tenantAccessToken"],
            Kind::Webhook => &["secret"],
        }
    }
}

/// A channel's resolved credentials, in the shape its kind needs; the variant is the kind.
/// Never printed: `Debug` shows only which config keys are set.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `botToken`.
    Telegram {
        bot_token: String,
    },
    /// `botToken`.
    Slack {
        bot_token: String,
    },
    /// `token`, the bot token, with or without its `Bot ` prefix.
    Discord {
        token: String,
    },
    Feishu(FeishuAuth),
    /// `token`, the relay's.
    Weixin {
        token: String,
    },
    /// `secret`, which signs each body; unsigned without one.
    Webhook {
        secret: Option<String>,
    },
}

/// How keel gets a Feishu tenant token.
#[derive(Clone, PartialEq, Eq)]
pub enum FeishuAuth {
    /// `tenantAccessToken`: used as is, never refreshed.
    Tenant(String),
    /// `appId` and `appSecret`: a tenant token is fetched with them and cached.
    App { app_id: String, app_secret: String },
}

impl Credentials {
    pub fn kind(&self) -> Kind {
        match self {
            Credentials::Telegram { .. } => Kind::Telegram,
            Credentials::Slack { .. } => Kind::Slack,
            Credentials::Discord { .. } => Kind::Discord,
            Credentials::Feishu(_) => Kind::Feishu,
            Credentials::Weixin { .. } => Kind::Weixin,
            Credentials::Webhook { .. } => Kind::Webhook,
        }
    }

    /// Builds a kind's credentials from the values resolved for its config keys; `None` when a
    /// required one is missing (reported as an issue by then).
    fn from_resolved(kind: Kind, mut resolved: BTreeMap<&str, String>) -> Option<Credentials> {
        let mut take = |key| resolved.remove(key);
        Some(match kind {
            Kind::Telegram => Credentials::Telegram {
                bot_token: take("botToken")?,
            },
            Kind::Slack => Credentials::Slack {
                bot_token: take("botToken")?,
            },
            Kind::Discord => Credentials::Discord {
                token: take("token")?,
            },
            Kind::Feishu => Credentials::Feishu(match take("tenantAccessToken") {
                Some(token) => FeishuAuth::Tenant(token),
                None => FeishuAuth::App {
                    app_id: take("appId")?,
                    app_secret: take("appSecret")?,
                },
            }),
            Kind::Weixin => Credentials::Weixin {
                token: take("token")?,
            },
            Kind::Webhook => Credentials::Webhook {
                secret: take("secret"),
            },
        })
    }

    /// Each credential with its config key.
    fn entries(&self) -> Vec<(&'static str, &str)> {
        match self {
            Credentials::Telegram { bot_token } | Credentials::Slack { bot_token } => {
                vec![("botToken", bot_token)]
            }
            Credentials::Discord { token } | Credentials::Weixin { token } => {
                vec![("token", token)]
            }
            Credentials::Feishu(FeishuAuth::Tenant(token)) => vec![("tenantAccessToken", token)],
            Credentials::Feishu(FeishuAuth::App { app_id, app_secret }) => {
                vec![("appId", app_id), ("appSecret", app_secret)]
            }
            Credentials::Webhook { secret } => secret.iter().map(|s| ("secret", &**s)).collect(),
        }
    }

    /// The secret values, for scrubbing them from what keel shows (config, logs).
    pub fn values(&self) -> Vec<&str> {
        self.entries().into_iter().map(|(_, v)| v).collect()
    }

    /// The config key of a required credential that is empty. A parsed config never has one
    /// (an empty value counts as missing there); one built by hand may.
    pub(crate) fn empty(&self) -> Option<&'static str> {
        match self {
            Credentials::Webhook { .. } => None,
            _ => self
                .entries()
                .into_iter()
                .find_map(|(key, v)| v.is_empty().then_some(key)),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries().into_iter().map(|(k, _)| (k, "<redacted>")))
            .finish()
    }
}

/// What to do at boot with a message that was on its way when keel stopped: its request had
/// started to reach the channel, and whether the channel took it is unknown
/// (`channels.<channel>.delivery.onUnknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnknown {
    /// Keep it as `unknown_after_send` for an operator: never a duplicate, but not delivered
    /// until someone looks.
    Hold,
    /// Send it again: never lost, but a channel that cannot drop the copy may show it twice.
    Resend,
}

impl OnUnknown {
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnknown::Hold => "hold",
            OnUnknown::Resend => "resend",
        }
    }
}

/// One configured channel.
#[derive(Clone)]
pub struct ChannelConfig {
    /// The API's base URL without a trailing `/` (for `webhook`, the URL posted to).
    pub base_url: String,
    /// What the channel authenticates with; its variant is the channel's [`Kind`] (kept only
    /// there, so the two cannot disagree). Never printed.
    pub credentials: Credentials,
    /// `delivery.onUnknown`, when set; see [`ChannelConfig::on_unknown`].
    pub on_unknown: Option<OnUnknown>,
    /// `textChunkLimit`, when set; see [`ChannelConfig::text_limit`].
    pub text_chunk_limit: Option<usize>,
    /// Feishu's tenant token fetched from `appId`/`appSecret`, shared by clones so that every
    /// worker reuses it until shortly before it expires.
    pub(crate) feishu_token: Arc<Mutex<Option<CachedToken>>>,
    /// Per-account credentials (Telegram's `accounts.<id>`, and `default` for the channel's
    /// own `botToken`/`tokenFile`), filled from the inbound config: a delivery whose route
    /// names an account goes out as that account ([`ChannelConfig::for_account`]).
    pub accounts: BTreeMap<String, AccountCredentials>,
}

/// One account's API root and credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountCredentials {
    pub base_url: String,
    pub credentials: Credentials,
}

#[derive(Clone)]
pub(crate) struct CachedToken {
    pub(crate) token: String,
    pub(crate) refresh_at: Instant,
}

impl ChannelConfig {
    /// A config built by hand (tests, other config sources); `base_url` is used as given.
    pub fn new(base_url: impl Into<String>, credentials: Credentials) -> ChannelConfig {
        ChannelConfig {
            base_url: base_url.into(),
            credentials,
            on_unknown: None,
            text_chunk_limit: None,
            feishu_token: Arc::default(),
            accounts: BTreeMap::new(),
        }
    }

    /// The config a message for `account` is sent with: that account's credentials and API
    /// root (as OpenClaw does, a reply goes out from the bot it came to). No account, or
    /// `default`, is the channel's own (its `default` account where one is configured); a
    /// channel without accounts sends everything as itself; an account the channel does not
    /// have is an error, never another bot.
    pub fn for_account(
        &self,
        account: Option<&str>,
    ) -> Result<std::borrow::Cow<'_, ChannelConfig>, String> {
        use std::borrow::Cow;
        let id = account.unwrap_or("default");
        match self.accounts.get(id) {
            Some(a) => Ok(Cow::Owned(ChannelConfig {
                base_url: a.base_url.clone(),
                credentials: a.credentials.clone(),
                accounts: BTreeMap::new(),
                ..self.clone()
            })),
            None if id == "default" || self.accounts.is_empty() => Ok(Cow::Borrowed(self)),
            None => Err(format!(
                "channel {}: account {:?} is not configured (or is disabled by a config issue)",
                self.kind().as_str(),
                shown(id)
            )),
        }
    }

    /// The policy for a message found mid-send at boot: as configured, else `resend` where
    /// the channel deduplicates ([`Kind::dedupes`]) and `hold` where it cannot.
    pub fn on_unknown(&self) -> OnUnknown {
        self.on_unknown.unwrap_or(if self.kind().dedupes() {
            OnUnknown::Resend
        } else {
            OnUnknown::Hold
        })
    }

    /// The longest part a reply is split into, in UTF-16 units: `textChunkLimit` (never past
    /// the platform's limit), else the kind's default; `None`: sent whole.
    pub fn text_limit(&self) -> Option<usize> {
        let kind = self.kind();
        match (self.text_chunk_limit, kind.max_text()) {
            (Some(n), Some(max)) => Some(n.min(max)),
            (Some(n), None) => Some(n),
            (None, _) => kind.default_chunk(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.credentials.kind()
    }

    /// Replaces every configured secret in `msg`, so nothing an API echoes back leaks one.
    pub(crate) fn scrub(&self, msg: String) -> String {
        let fetched = lock(&self.feishu_token).as_ref().map(|c| c.token.clone());
        let mut msg = msg;
        // A webhook's URL path is as secret as its credentials (see the Debug impl): the
        // whole path, and each long segment of it on its own.
        let path = (self.kind() == Kind::Webhook)
            .then(|| Url::parse(&self.base_url).ok())
            .flatten()
            .map(|u| u.path_and_query().to_string())
            .filter(|p| p != "/");
        let segments = path.iter().flat_map(|p| {
            p.split(['/', '?', '&', '='])
                .filter(|seg| seg.len() >= 8)
                .map(str::to_string)
                .collect::<Vec<_>>()
        });
        let url_parts: Vec<String> = path.iter().cloned().chain(segments).collect();
        let secrets = self.credentials.entries().into_iter().map(|(_, v)| v);
        let url_parts = url_parts.iter().map(String::as_str);
        for s in secrets.chain(fetched.as_deref()).chain(url_parts) {
            if s.len() >= 4 && msg.contains(s) {
                msg = msg.replace(s, "<redacted>");
            }
        }
        msg
    }
}

impl fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A webhook URL often carries its own secret in the path (as Slack's and Discord's
        // incoming webhooks do), so only its origin is shown.
        let base_url = if self.kind() == Kind::Webhook {
            match Url::parse(&self.base_url) {
                Ok(u) if u.path_and_query() != "/" => {
                    format!("{}://{}/<redacted>", u.scheme().as_str(), u.authority())
                }
                Ok(u) => u.to_string(),
                Err(_) => "<redacted>".to_string(),
            }
        } else {
            self.base_url.clone()
        };
        f.debug_struct("ChannelConfig")
            .field("channel", &self.kind().as_str())
            .field("base_url", &base_url)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// Reads OpenClaw's `channels` object. Every problem is an issue `(path, message)`; a channel
/// with an issue that makes it unusable (missing credentials, a bad URL) is left out of the
/// map, so the caller disables just that channel. `enabled: false` leaves a channel out
/// silently.
///
/// Per channel: `baseUrl` (optional except for `openclaw-weixin`; plain `http://` only to
/// this machine unless `allowInsecureHttp: true`, since a token rides on every call), and
/// credentials, each either the value itself or `${NAME}` to read it from the environment:
/// - `telegram`: `botToken`; `slack`: `botToken`; `discord`: `token` (the bot token, with or
///   without its `Bot ` prefix); `openclaw-weixin`: `token`.
/// - `feishu`: `tenantAccessToken` (used as is, never refreshed), or `appId` and `appSecret`,
///   from which a tenant token is fetched with
///   `POST {base}/open-apis/auth/v3/tenant_access_token/internal` and cached until shortly
///   before it expires. `tenantAccessToken` wins when both are set.
/// - `webhook`: `url` (required; plain http is allowed anywhere, as no credential travels:
///   the body is signed, not authenticated by a bearer token) and an optional `secret`.
///
/// And for every channel: `textChunkLimit` (where long replies are split, capped at the
/// platform's limit: [`ChannelConfig::text_limit`]) and `delivery.onUnknown` (`"hold"` or
/// `"resend"`: [`ChannelConfig::on_unknown`]).
pub fn parse_channels(
    channels: &Value,
) -> (BTreeMap<String, ChannelConfig>, Vec<(String, String)>) {
    let mut out = BTreeMap::new();
    let mut issues = Vec::new();
    let map = match channels {
        Value::Null => return (out, issues),
        Value::Object(m) => m,
        _ => {
            issues.push(("channels".to_string(), "expected an object".to_string()));
            return (out, issues);
        }
    };
    for (name, v) in map {
        let path = format!("channels.{name}");
        let Some(kind) = Kind::parse(name) else {
            issues.push((
                path,
                format!(
                    "channel not supported by keel (supported: {}); messages to it fail",
                    CHANNELS.join(", ")
                ),
            ));
            continue;
        };
        let Value::Object(c) = v else {
            issues.push((path, "expected an object".to_string()));
            continue;
        };
        match c.get("enabled") {
            None | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => continue,
            Some(other) => {
                issues.push((
                    format!("{path}.enabled"),
                    format!("expected true or false, got {other}; the channel is disabled"),
                ));
                continue;
            }
        }
        if let Some(cfg) = parse_one(kind, &path, c, &mut issues) {
            out.insert(name.clone(), cfg);
        }
    }
    (out, issues)
}

fn parse_one(
    kind: Kind,
    path: &str,
    c: &Map<String, Value>,
    issues: &mut Vec<(String, String)>,
) -> Option<ChannelConfig> {
    let before = issues.len();
    let url_key = match kind {
        Kind::Webhook if c.contains_key("url") || !c.contains_key("baseUrl") => "url",
        _ => "baseUrl",
    };
    let base_url = match (c.get(url_key), kind.default_base()) {
        (None | Some(Value::Null), Some(default)) => Some(default.to_string()),
        (None | Some(Value::Null), None) => {
            issues.push((
                format!("{path}.{url_key}"),
                format!("missing; the {} channel needs it", kind.as_str()),
            ));
            None
        }
        (Some(Value::String(u)), _) => check_url(kind, u, c, &format!("{path}.{url_key}"), issues),
        (Some(_), _) => {
            issues.push((
                format!("{path}.{url_key}"),
                "expected an http:// or https:// URL".to_string(),
            ));
            None
        }
    };
    let mut resolved = BTreeMap::new();
    for key in kind.credential_keys() {
        let at = format!("{path}.{key}");
        match c.get(*key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                if let Some(v) = resolve_secret(s, &at, issues) {
                    resolved.insert(*key, v);
                }
            }
            Some(_) => issues.push((at, "expected a string".to_string())),
        }
    }
    // Telegram's token may come from `tokenFile` or only from `accounts.<id>`: the inbound
    // config reads those and fills the channel's accounts (`ChannelConfig::for_account`).
    let telegram_elsewhere = kind == Kind::Telegram
        && !c.contains_key("botToken")
        && (c.contains_key("tokenFile") || c.contains_key("accounts"));
    if telegram_elsewhere {
        resolved.insert("botToken", String::new());
    }
    let has = |k: &str| resolved.contains_key(k);
    let missing: Vec<&str> = match kind {
        Kind::Telegram | Kind::Slack if !has("botToken") => vec!["botToken"],
        Kind::Discord | Kind::Weixin if !has("token") => vec!["token"],
        Kind::Feishu if !has("tenantAccessToken") => ["appId", "appSecret"]
            .into_iter()
            .filter(|k| !has(k))
            .collect(),
        _ => Vec::new(),
    };
    let what = match kind {
        Kind::Feishu => "appId and appSecret (or tenantAccessToken)",
        Kind::Weixin => "the relay's token",
        _ => "a bot token",
    };
    for key in missing {
        // A secret that failed to resolve has its issue already.
        if !issues.iter().skip(before).any(|(p, _)| p.ends_with(key)) {
            issues.push((
                format!("{path}.{key}"),
                format!("missing; the {} channel needs {what}", kind.as_str()),
            ));
        }
    }
    if kind == Kind::Telegram
        && let Some(t) = resolved.get("botToken")
        && !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
    {
        issues.push((
            format!("{path}.botToken"),
            "does not look like a Telegram bot token (digits, ':', then letters, digits, '_' or '-')"
                .to_string(),
        ));
    }
    let text_chunk_limit = match c.get("textChunkLimit") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().filter(|&n| n >= 1) {
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => {
                issues.push((
                    format!("{path}.textChunkLimit"),
                    "expected a whole number of characters, at least 1".to_string(),
                ));
                None
            }
        },
    };
    let on_unknown = match c.get("delivery").map(|d| (d, d.get("onUnknown"))) {
        None | Some((Value::Null, _)) | Some((Value::Object(_), None | Some(Value::Null))) => None,
        Some((Value::Object(_), Some(v))) => match v.as_str() {
            Some("hold") => Some(OnUnknown::Hold),
            Some("resend") => Some(OnUnknown::Resend),
            _ => {
                issues.push((
                    format!("{path}.delivery.onUnknown"),
                    format!("expected \"hold\" or \"resend\", got {v}"),
                ));
                None
            }
        },
        Some(_) => {
            issues.push((format!("{path}.delivery"), "expected an object".to_string()));
            None
        }
    };
    // Any issue disables the channel: even an optional setting that is wrong (a webhook
    // secret that did not resolve) must not quietly change what is sent.
    if issues.len() > before {
        return None;
    }
    let creds = Credentials::from_resolved(kind, resolved)?;
    let mut cfg = ChannelConfig::new(base_url?, creds);
    cfg.on_unknown = on_unknown;
    cfg.text_chunk_limit = text_chunk_limit;
    Some(cfg)
}

/// Checks a configured URL: it must parse, and plain http carries a bearer token only to this
/// machine unless the operator vouches for the network.
fn check_url(
    kind: Kind,
    u: &str,
    c: &Map<String, Value>,
    path: &str,
    issues: &mut Vec<(String, String)>,
) -> Option<String> {
    let Ok(url) = Url::parse(u) else {
        // The URL itself is not echoed: a webhook URL may hold a secret.
        issues.push((
            path.to_string(),
            "expected an http:// or https:// URL".to_string(),
        ));
        return None;
    };
    let insecure_ok = c
        .get("allowInsecureHttp")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if url.scheme() == Scheme::Http
        && kind != Kind::Webhook
        && !insecure_ok
        && !is_loopback(url.host())
    {
        issues.push((
            path.to_string(),
            format!(
                "{} is plain http to another host; use https, or set allowInsecureHttp: true for a trusted network",
                url.authority()
            ),
        ));
        return None;
    }
    Some(u.trim().trim_end_matches('/').to_string())
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `${NAME}` reads the value from the environment, so it need not sit in the file.
pub(super) fn resolve_secret(
    v: &str,
    path: &str,
    issues: &mut Vec<(String, String)>,
) -> Option<String> {
    match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        Some(name) => match std::env::var(name) {
            Ok(s) if !s.is_empty() => Some(s),
            _ => {
                issues.push((
                    path.to_string(),
                    format!("environment variable {name} is not set"),
                ));
                None
            }
        },
        None if v.is_empty() => None,
        None => Some(v.to_string()),
    }
}

/// Checks that `to` is an address `channel` can deliver to, before anything is queued or sent.
pub fn validate_address(channel: &str, to: &str) -> Result<(), String> {
    match Kind::parse(channel) {
        Some(kind) => match address_problem(kind, to) {
            None => Ok(()),
            Some(why) => Err(format!("delivery: {why}")),
        },
        None => Err(format!(
            "delivery: unknown channel {:?} for address {:?}",
            shown(channel),
            shown(to)
        )),
    }
}

pub(crate) fn address_problem(kind: Kind, to: &str) -> Option<String> {
    let all = |s: &str, f: fn(&u8) -> bool| !s.is_empty() && s.bytes().all(|b| f(&b));
    let (ok, expected) = match kind {
        Kind::Telegram => {
            let ok = match to.strip_prefix('@') {
                Some(name) => {
                    (5..=32).contains(&name.len())
                        && all(name, |b| b.is_ascii_alphanumeric() || *b == b'_')
                }
                None => {
                    let digits = to.strip_prefix('-').unwrap_or(to);
                    all(digits, u8::is_ascii_digit) && to.parse::<i64>().is_ok()
                }
            };
            (ok, "a numeric chat id or @username")
        }
        Kind::Slack => {
            let ok = to.len() >= 9
                && matches!(to.as_bytes()[0], b'C' | b'U' | b'D' | b'G')
                && all(&to[1..], |b| b.is_ascii_uppercase() || b.is_ascii_digit());
            (ok, "a C/U/D/G id")
        }
        Kind::Discord => {
            let ok = (17..=20).contains(&to.len()) && all(to, u8::is_ascii_digit);
            (ok, "a 17-20 digit snowflake")
        }
        Kind::Feishu => {
            let ok = feishu_id_type(to).is_some()
                && to.len() >= 13
                && all(&to[3..], u8::is_ascii_alphanumeric);
            (ok, "an ou_/oc_/on_ id")
        }
        Kind::Weixin => {
            let ok = to.strip_suffix("@im.wechat").is_some_and(|local| {
                !local.is_empty() && !local.chars().any(|c| c.is_whitespace() || c.is_control())
            });
            (ok, "an id ending in @im.wechat")
        }
        Kind::Webhook => (!to.trim().is_empty(), "a non-empty address"),
    };
    (!ok).then(|| {
        format!(
            "channel {} rejects address {:?} (expected {expected})",
            kind.as_str(),
            shown(to)
        )
    })
}

/// Feishu's `receive_id_type` for an id, by its prefix.
pub(crate) fn feishu_id_type(to: &str) -> Option<&'static str> {
    match to.get(..3)? {
        "ou_" => Some("open_id"),
        "oc_" => Some("chat_id"),
        "on_" => Some("union_id"),
        _ => None,
    }
}

/// At most 64 characters of something from outside, for a message.
pub(crate) fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Configured channels, compared by what they are (for config reloads).
#[derive(Clone, Default, Debug)]
pub struct Channels(pub BTreeMap<String, ChannelConfig>);

impl PartialEq for Channels {
    fn eq(&self, other: &Channels) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|((a, x), (b, y))| {
                a == b
                    && x.base_url == y.base_url
                    && x.credentials == y.credentials
                    && x.accounts == y.accounts
            })
    }
}
